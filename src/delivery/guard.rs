//! What DNS may make Spate connect to. Whoever owns a recipient domain writes its MX and
//! A/AAAA records, so without a guard DNS could point Spate at the engine's own machine, the
//! operator's private network, or a port of the domain owner's choosing. So:
//!
//! - an MX target must be an LDH host name (`address::check_host_name`): never an IP literal,
//!   never a `host:port`; the port is always `[smtp] port`;
//! - an address in a range that is not the public internet (`address_refusal`) is skipped,
//!   and when no address remains the recipient bounces with 5.4.4 (category `policy`), unless
//!   `[delivery] allow_private_destinations = true` (tests and the demo, whose simulated
//!   providers live on loopback);
//! - static `[[routes]]` are the operator's own next hops and are never checked.
//!
//! Pure code.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why an MX target from DNS is not used, or `None` when it is a host name.
pub fn mx_target_refusal(name: &str) -> Option<String> {
    if name.parse::<IpAddr>().is_ok() {
        return Some("an IP address, not a host name".into());
    }
    crate::address::check_host_name(name).err()
}

/// The non-public range `ip` is in (named for the log), or `None` for a public unicast
/// address. IPv6 addresses that embed an IPv4 one (mapped, compatible, NAT64, 6to4) are
/// judged by the IPv4 address they lead to.
pub fn address_refusal(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => v4_refusal(v4),
        IpAddr::V6(v6) => v6_refusal(v6),
    }
}

fn v4_refusal(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    Some(match (a, b) {
        (0, _) => "unspecified (0.0.0.0/8)",
        (10, _) => "private (10.0.0.0/8)",
        (100, 64..=127) => "shared address space (100.64.0.0/10)",
        (127, _) => "loopback (127.0.0.0/8)",
        (169, 254) => "link-local (169.254.0.0/16)",
        (172, 16..=31) => "private (172.16.0.0/12)",
        (192, 168) => "private (192.168.0.0/16)",
        (224..=239, _) => "multicast (224.0.0.0/4)",
        (240..=255, _) => "reserved or broadcast (240.0.0.0/4)",
        _ => return None,
    })
}

fn v6_refusal(ip: Ipv6Addr) -> Option<&'static str> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some("unspecified (::)");
    }
    if ip.is_loopback() {
        return Some("loopback (::1)");
    }
    if s[..5] == [0; 5] && s[5] == 0xffff {
        return Some("IPv4-mapped (::ffff:0:0/96)");
    }
    if s[..6] == [0; 6] {
        return Some("IPv4-compatible (::/96)");
    }
    let embedded_v4 = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    // NAT64 (RFC 6052) and 6to4 (RFC 3056) lead to the IPv4 address inside.
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return v4_refusal(embedded_v4(s[6], s[7])).map(|_| "NAT64 of a non-public IPv4 address");
    }
    if s[0] == 0x2002 {
        return v4_refusal(embedded_v4(s[1], s[2])).map(|_| "6to4 of a non-public IPv4 address");
    }
    match s[0] {
        0xfe80..=0xfebf => Some("link-local (fe80::/10)"),
        0xfc00..=0xfdff => Some("unique local (fc00::/7)"),
        0xff00..=0xffff => Some("multicast (ff00::/8)"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(ip: &str) -> bool {
        address_refusal(ip.parse().unwrap()).is_some()
    }

    #[test]
    fn non_public_ranges_are_refused_public_ones_are_not() {
        for ip in [
            "127.0.0.1",
            "127.255.0.9",
            "0.0.0.0",
            "10.1.2.3",
            "100.64.0.1",
            "100.127.255.255",
            "169.254.169.254",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "224.0.0.1",
            "255.255.255.255",
            "::",
            "::1",
            "::ffff:8.8.8.8",
            "::127.0.0.1",
            "fe80::1",
            "fc00::1",
            "fd12:3456::1",
            "ff02::1",
            "64:ff9b::10.0.0.1",
            "2002:c0a8:0101::1",
        ] {
            assert!(refused(ip), "{ip}");
        }
        for ip in [
            "8.8.8.8",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.0.1",
            "172.32.0.1",
            "192.0.2.10",
            "2001:4860:4860::8888",
            "64:ff9b::8.8.8.8",
            "2002:0808:0808::1",
        ] {
            assert!(!refused(ip), "{ip}");
        }
        assert_eq!(
            address_refusal("169.254.169.254".parse().unwrap()),
            Some("link-local (169.254.0.0/16)")
        );
    }

    #[test]
    fn mx_targets_are_host_names_only() {
        assert_eq!(mx_target_refusal("mx1.example.com"), None);
        for bad in [
            "mx.evil.example:2525",
            "mx.evil.example\\:2525",
            "127.0.0.1",
            "::1",
            "1.2.3.4",
            "localhost",
            "mx_1.example.com",
            "-mx.example.com",
            "",
        ] {
            assert!(mx_target_refusal(bad).is_some(), "{bad:?}");
        }
    }
}
