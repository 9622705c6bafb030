//! The `spate queue` and `spate suppression` commands' side of the admin API: one request
//! to the running engine, found through `<data_dir>/admin/listen` (the address it bound,
//! which may differ from `[admin] listen` when that says port 0), with the configured token.
//! Over HTTPS the engine's own certificate (`[admin] cert`) is the only one accepted.

use super::http::HEAD_BYTES_MAX;
use crate::config::Config;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

/// A reply body may take this much.
pub const REPLY_BYTES_MAX: usize = 64 << 20;
/// The engine answers within its shards' deadline (10 s) plus some.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug)]
pub enum ClientError {
    /// Nothing listens: the engine is not running (or not yet).
    NotRunning(String),
    Other(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::NotRunning(m) | ClientError::Other(m) => write!(f, "{m}"),
        }
    }
}

/// Where the running engine's API is: the address it wrote at start, else the configured
/// one. An unspecified address (0.0.0.0, ::) is reached on loopback.
pub fn endpoint(config: &Config) -> (SocketAddr, bool) {
    let written = std::fs::read_to_string(
        config
            .engine
            .data_dir
            .join("admin")
            .join(crate::engine::admin::LISTEN_FILE),
    )
    .ok()
    .and_then(|url| {
        let url = url.trim();
        let (https, rest) = match url.strip_prefix("https://") {
            Some(r) => (true, r),
            None => (false, url.strip_prefix("http://")?),
        };
        let addr: SocketAddr = rest.trim_end_matches('/').parse().ok()?;
        Some((addr, https))
    });
    let (mut addr, https) = written.unwrap_or((config.admin.listen, config.admin.cert.is_some()));
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    (addr, https)
}

/// One request; the reply's status and body.
pub fn request(
    config: &Config,
    method: &str,
    path_and_query: &str,
    body: Option<&[u8]>,
) -> Result<(u16, Vec<u8>), ClientError> {
    let (addr, https) = endpoint(config);
    let cert = if https {
        Some(config.admin.cert.as_deref().ok_or_else(|| {
            ClientError::Other("the engine serves HTTPS but [admin] cert is not set here".into())
        })?)
    } else {
        None
    };
    let to = Peer {
        addr,
        host: &addr.to_string(),
        pinned: cert,
        token: config.admin.token.as_deref(),
        what: "the engine's admin API",
    };
    request_at(&to, method, path_and_query, body, "application/json")
}

/// Where `request_at` goes, and as whom.
pub struct Peer<'a> {
    pub addr: SocketAddr,
    /// The `Host` field.
    pub host: &'a str,
    /// HTTPS, accepting exactly this certificate; plain HTTP without it.
    pub pinned: Option<&'a std::path::Path>,
    pub token: Option<&'a str>,
    /// What it is, for error messages.
    pub what: &'a str,
}

/// One request to an admin API (this engine's or, for `spate drain`, another node's).
pub fn request_at(
    to: &Peer<'_>,
    method: &str,
    path_and_query: &str,
    body: Option<&[u8]>,
    content_type: &str,
) -> Result<(u16, Vec<u8>), ClientError> {
    let addr = to.addr;
    let what = to.what;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| ClientError::NotRunning(format!("{what} on {addr}: {e}")))?;
    let _ = tcp.set_read_timeout(Some(CLIENT_TIMEOUT));
    let _ = tcp.set_write_timeout(Some(CLIENT_TIMEOUT));
    let mut head = format!(
        "{method} {path_and_query} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
        to.host
    );
    if let Some(t) = to.token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or_default();
    head.push_str(&format!(
        "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    ));
    let mut stream: Box<dyn ReadWrite> = match to.pinned {
        Some(cert) => {
            let tls = pinned_client(cert).map_err(ClientError::Other)?;
            let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
            let conn = rustls::ClientConnection::new(tls, name)
                .map_err(|e| ClientError::Other(e.to_string()))?;
            Box::new(rustls::StreamOwned::new(conn, tcp))
        }
        None => Box::new(tcp),
    };
    let io = |e: std::io::Error| ClientError::Other(format!("{what} on {addr}: {e}"));
    stream.write_all(head.as_bytes()).map_err(io)?;
    stream.write_all(body).map_err(io)?;
    stream.flush().map_err(io)?;
    let mut reply = Vec::new();
    stream
        .take(REPLY_BYTES_MAX as u64 + HEAD_BYTES_MAX as u64)
        .read_to_end(&mut reply)
        .or_else(|e| {
            // A TLS peer that closes without close_notify still sent a whole reply.
            if e.kind() == std::io::ErrorKind::UnexpectedEof && !reply.is_empty() {
                Ok(0)
            } else {
                Err(e)
            }
        })
        .map_err(io)?;
    parse_reply(&reply).ok_or_else(|| ClientError::Other(format!("{addr}: not an HTTP reply")))
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// The status and the body (by Content-Length, else to the end).
fn parse_reply(reply: &[u8]) -> Option<(u16, Vec<u8>)> {
    let end = reply.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut r = httparse::Response::new(&mut fields);
    r.parse(&reply[..end]).ok()?;
    let status = r.code?;
    let length = r
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| {
            std::str::from_utf8(h.value)
                .ok()?
                .trim()
                .parse::<usize>()
                .ok()
        });
    let body = &reply[end..];
    let body = match length {
        Some(n) if n <= body.len() => &body[..n],
        _ => body,
    };
    Some((status, body.to_vec()))
}

/// A TLS client that accepts exactly the certificate in `cert` (the engine's own).
fn pinned_client(cert: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let pinned = CertificateDer::pem_file_iter(cert)
        .and_then(|mut i| i.next().transpose())
        .map_err(|e| format!("{}: {e}", cert.display()))?
        .ok_or_else(|| format!("{}: no certificate in it", cert.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = Arc::new(Pinned {
        der: pinned.to_vec(),
        algorithms: provider.signature_verification_algorithms,
    });
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct Pinned {
    der: Vec<u8>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.der.as_slice() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "not the pinned certificate ([admin] cert)".into(),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_are_read_by_their_length() {
        let r = b"HTTP/1.1 404 Not Found\r\nContent-Length: 5\r\n\r\nhello trailing";
        assert_eq!(parse_reply(r), Some((404, b"hello".to_vec())));
        assert_eq!(parse_reply(b"garbage"), None);
    }
}
