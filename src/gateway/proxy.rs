//! The PROXY protocol header (HAProxy's, versions 1 and 2), sans I/O: a load balancer in
//! front of the listeners sends it before anything else, naming the client it connected
//! for. It is read only from the addresses in a listener's `proxy_protocol_from`: from
//! anyone else, the same bytes would let a client choose the address that `relay_networks`,
//! the lockout and the session limits judge it by.
//!
//! Fed the bytes read so far, `parse` answers: more needed, the header (with how many bytes
//! it took), or a one-line reason to close the connection. Version 1 is one text line of at
//! most 107 octets; version 2 a 16-octet binary prefix and at most `V2_BODY_BYTES_MAX` more
//! (addresses, then TLVs, which are skipped).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Version 2's signature.
const V2_SIGNATURE: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Version 1's longest line, CRLF included (the specification's bound).
pub const V1_LINE_BYTES_MAX: usize = 107;
/// Version 2's address block and TLVs: the addresses take at most 216 octets; TLVs that
/// balancers add (AWS, Azure, GCP, SSL details) fit well within this.
pub const V2_BODY_BYTES_MAX: usize = 2048;

/// Whom a header says the connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// A client, by its address and port.
    Client(SocketAddr),
    /// The balancer's own connection (v2 LOCAL: health checks): its own address stands.
    Balancer,
    /// A client the balancer could not name (v1 UNKNOWN, or v2 over UDP, UNIX sockets or
    /// an unspecified family): it keeps the balancer's address for the session limits, but
    /// may relay only with AUTH.
    Unnamed,
}

/// What a complete header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub source: Source,
    /// Octets of input the header took.
    pub used: usize,
}

/// `Ok(None)`: not complete yet, read more.
pub fn parse(buf: &[u8]) -> Result<Option<Header>, &'static str> {
    match buf.first() {
        None => Ok(None),
        Some(b'P') => v1(buf),
        Some(b'\r') => v2(buf),
        Some(_) => Err("no PROXY protocol header"),
    }
}

fn v1(buf: &[u8]) -> Result<Option<Header>, &'static str> {
    const PREFIX: &[u8] = b"PROXY ";
    let n = buf.len().min(PREFIX.len());
    if buf[..n] != PREFIX[..n] {
        return Err("no PROXY protocol header");
    }
    let Some(end) = memchr::memmem::find(&buf[..buf.len().min(V1_LINE_BYTES_MAX)], b"\r\n") else {
        return if buf.len() >= V1_LINE_BYTES_MAX {
            Err("PROXY v1 line too long")
        } else {
            Ok(None)
        };
    };
    let line = std::str::from_utf8(&buf[PREFIX.len()..end]).map_err(|_| "PROXY v1 not ASCII")?;
    let used = end + 2;
    let fields: Vec<&str> = line.split(' ').collect();
    match fields.as_slice() {
        ["UNKNOWN", ..] => Ok(Some(Header {
            source: Source::Unnamed,
            used,
        })),
        [proto @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let (src, dst): (IpAddr, IpAddr) = (
                src.parse().map_err(|_| "PROXY v1 bad source address")?,
                dst.parse()
                    .map_err(|_| "PROXY v1 bad destination address")?,
            );
            let v4 = *proto == "TCP4";
            if src.is_ipv4() != v4 || dst.is_ipv4() != v4 {
                return Err("PROXY v1 address of the wrong family");
            }
            let port = |p: &str| {
                let ok = !p.is_empty()
                    && p.len() <= 5
                    && p.bytes().all(|b| b.is_ascii_digit())
                    && (p == "0" || !p.starts_with('0'));
                ok.then(|| p.parse::<u16>().ok()).flatten()
            };
            let sport = port(sport).ok_or("PROXY v1 bad source port")?;
            port(dport).ok_or("PROXY v1 bad destination port")?;
            Ok(Some(Header {
                source: Source::Client(SocketAddr::new(src, sport)),
                used,
            }))
        }
        _ => Err("PROXY v1 malformed"),
    }
}

fn v2(buf: &[u8]) -> Result<Option<Header>, &'static str> {
    let n = buf.len().min(V2_SIGNATURE.len());
    if buf[..n] != V2_SIGNATURE[..n] {
        return Err("no PROXY protocol header");
    }
    if buf.len() < 16 {
        return Ok(None);
    }
    let (ver_cmd, family) = (buf[12], buf[13]);
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if ver_cmd >> 4 != 2 {
        return Err("PROXY v2 bad version");
    }
    if len > V2_BODY_BYTES_MAX {
        return Err("PROXY v2 header too long");
    }
    if buf.len() < 16 + len {
        return Ok(None);
    }
    let body = &buf[16..16 + len];
    let used = 16 + len;
    let source = match (ver_cmd & 0x0f, family) {
        // LOCAL: the balancer's own connection (health checks).
        (0, _) => Source::Balancer,
        // PROXY over TCP/IPv4 and TCP/IPv6.
        (1, 0x11) => {
            let a = body.get(..12).ok_or("PROXY v2 address block too short")?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            Source::Client(SocketAddr::new(ip.into(), u16::from_be_bytes([a[8], a[9]])))
        }
        (1, 0x21) => {
            let a = body.get(..36).ok_or("PROXY v2 address block too short")?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            let ip = Ipv6Addr::from(octets);
            Source::Client(SocketAddr::new(
                ip.into(),
                u16::from_be_bytes([a[32], a[33]]),
            ))
        }
        // UDP, UNIX sockets or unspecified: nothing an SMTP client's address can be.
        (1, _) => Source::Unnamed,
        _ => return Err("PROXY v2 bad command"),
    };
    Ok(Some(Header { source, used }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_header(cmd: u8, family: u8, body: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[0x20 | cmd, family]);
        h.extend_from_slice(&(body.len() as u16).to_be_bytes());
        h.extend_from_slice(body);
        h
    }

    #[test]
    fn v1_lines_name_the_client_and_every_prefix_asks_for_more() {
        let line = b"PROXY TCP4 192.0.2.7 198.51.100.1 51234 587\r\nEHLO";
        for i in 0..line.len() - 4 - 1 {
            assert_eq!(parse(&line[..i]), Ok(None), "{i}");
        }
        let h = parse(line).unwrap().unwrap();
        assert_eq!(h.source, Source::Client("192.0.2.7:51234".parse().unwrap()));
        assert_eq!(&line[h.used..], b"EHLO");
        let h = parse(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 25\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.source, Source::Client("[2001:db8::1]:1".parse().unwrap()));
        let h = parse(b"PROXY UNKNOWN\r\n").unwrap().unwrap();
        assert_eq!((h.source, h.used), (Source::Unnamed, 15));
    }

    #[test]
    fn bad_v1_lines_are_refused() {
        for bad in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 51234\r\n"[..],
            b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 065535 25\r\n",
            b"PROXY TCP4 192.0.2.7 198.51.100.1 65536 25\r\n",
            b"PROXY TCP4  192.0.2.7 198.51.100.1 1 25\r\n",
            b"PROXY UDP4 192.0.2.7 198.51.100.1 1 25\r\n",
            b"EHLO client\r\n",
            b"PROXX",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let long = [b"PROXY TCP4 ".as_slice(), &[b'1'; 200]].concat();
        assert_eq!(parse(&long), Err("PROXY v1 line too long"));
    }

    #[test]
    fn v2_headers_name_the_client_and_skip_their_tlvs() {
        let mut body = vec![192, 0, 2, 7, 198, 51, 100, 1, 0xc8, 0x22, 0x02, 0x4b];
        body.extend_from_slice(&[0x01, 0x00, 0x02, b'h', b'2']); // an ALPN TLV
        let mut h = v2_header(1, 0x11, &body);
        h.extend_from_slice(b"\x16\x03\x01"); // a TLS ClientHello follows
        for i in 0..h.len() - 3 {
            assert_eq!(parse(&h[..i]), Ok(None), "{i}");
        }
        let got = parse(&h).unwrap().unwrap();
        assert_eq!(
            got.source,
            Source::Client("192.0.2.7:51234".parse().unwrap())
        );
        assert_eq!(&h[got.used..], b"\x16\x03\x01");
        let mut v6 = vec![0u8; 36];
        v6[0] = 0x20;
        v6[1] = 0x01;
        v6[15] = 1;
        v6[33] = 25;
        let got = parse(&v2_header(1, 0x21, &v6)).unwrap().unwrap();
        assert_eq!(got.source, Source::Client("[2001::1]:25".parse().unwrap()));
        // LOCAL (a health check): the balancer itself; UNIX sockets: a client unnamed.
        assert_eq!(
            parse(&v2_header(0, 0x00, &[])).unwrap().unwrap().source,
            Source::Balancer
        );
        assert_eq!(
            parse(&v2_header(1, 0x31, &[0; 216]))
                .unwrap()
                .unwrap()
                .source,
            Source::Unnamed
        );
    }

    #[test]
    fn bad_v2_headers_are_refused() {
        assert!(parse(&v2_header(1, 0x11, &[1, 2, 3])).is_err());
        assert!(parse(&v2_header(2, 0x11, &[0; 12])).is_err());
        let mut wrong_version = v2_header(1, 0x11, &[0; 12]);
        wrong_version[12] = 0x11;
        assert!(parse(&wrong_version).is_err());
        let mut long = v2_header(1, 0x11, &[]);
        long[14..16].copy_from_slice(&((V2_BODY_BYTES_MAX + 1) as u16).to_be_bytes());
        assert_eq!(parse(&long), Err("PROXY v2 header too long"));
        assert!(parse(b"\r\n\r\n\0\r\nQUIX\n").is_err());
    }
}
