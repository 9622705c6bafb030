//! What the gateway allows, sans I/O: who may relay, and whom an authenticated user may send
//! as, on the envelope and in the From header. No open relay. Without AUTH, only
//! `relay_networks` may relay (554 5.7.1 at RCPT otherwise). One customer cannot send as
//! another's domain (5.7.1 at MAIL for the envelope, after the message for its From).

use super::header::{field_start, header_end};
use ipnet::IpNet;
use std::net::IpAddr;

/// Most From addresses looked at in one header (a group of more is refused whole).
pub const FROM_ADDRESSES_MAX: usize = 16;
/// Most octets of header read looking for From (a longer header block is refused).
pub const HEADER_BYTES_MAX: usize = 256 << 10;

/// A refusal: the reply to give.
pub type Refusal = (u16, &'static str);

/// Whether a client may hand over mail for `rcpt`'s domain: an authenticated session or a
/// client inside `relay_networks` may; anything else is refused. `auth_offered`: the
/// listener offers AUTH (its refusal then says to authenticate, 530 5.7.0).
pub fn may_relay(
    client: IpAddr,
    authenticated: bool,
    relay_networks: &[IpNet],
    auth_offered: bool,
) -> Result<(), Refusal> {
    if authenticated || in_networks(client, relay_networks) {
        return Ok(());
    }
    if auth_offered {
        Err((530, "5.7.0 Authentication required"))
    } else {
        Err((554, "5.7.1 Relay access denied"))
    }
}

/// True when `ip` is in one of `networks` (an IPv4-mapped IPv6 client counts as IPv4).
pub fn in_networks(ip: IpAddr, networks: &[IpNet]) -> bool {
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    networks.iter().any(|n| n.contains(&ip))
}

/// True when `address` is one of `allowed`: an exact address, or `@domain` for any address
/// at that domain (not its subdomains). Compared without case, as receivers do.
pub fn sender_allowed(allowed: &[String], address: &str) -> bool {
    let Some((_, domain)) = address.rsplit_once('@') else {
        return false;
    };
    allowed.iter().any(|a| match a.strip_prefix('@') {
        Some(d) => d.eq_ignore_ascii_case(domain),
        None => a.eq_ignore_ascii_case(address),
    })
}

/// The addresses of the message's From header (RFC 5322 3.6.2: one or more mailboxes),
/// lowercased; an error when there is none, more than one From header, or a From that
/// cannot be read. Folded lines are unfolded; display names, quoted strings and comments
/// are skipped; each address must be one `address::parse_address` takes (so
/// `a@victim.example@acme.example` is refused, not read as acme's).
pub fn from_addresses(message: &[u8]) -> Result<Vec<String>, &'static str> {
    field_addresses(message, "from")?.ok_or("the message has no From header")
}

/// The addresses of the message's Sender header, if it has one (the header an agent
/// sending for the From uses; a user may not use it to send as others either).
pub fn sender_addresses(message: &[u8]) -> Result<Option<Vec<String>>, &'static str> {
    field_addresses(message, "sender")
}

/// The addresses of the field `name` (lowercase): `None` when absent, an error when it is
/// there twice or cannot be read.
fn field_addresses(message: &[u8], name: &str) -> Result<Option<Vec<String>>, &'static str> {
    let header_end = header_end(message).ok_or("the message has no header")?;
    if header_end > HEADER_BYTES_MAX {
        return Err("the message header is too long");
    }
    let header = &message[..header_end];
    let mut from: Option<Vec<u8>> = None;
    let mut current: Option<Vec<u8>> = None;
    for line in header.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            // A continuation of the field above.
            if let Some(c) = current.as_mut() {
                c.push(b' ');
                c.extend_from_slice(line);
            }
            continue;
        }
        if let Some(done) = current.take() {
            if from.replace(done).is_some() {
                return Err("the message has more than one From or Sender header");
            }
        }
        if let Some(value) = field_start(line, name) {
            current = Some(value.to_vec());
        }
    }
    if let Some(done) = current.take() {
        if from.replace(done).is_some() {
            return Err("the message has more than one From or Sender header");
        }
    }
    let Some(from) = from else { return Ok(None) };
    let text = std::str::from_utf8(&from).map_err(|_| "the From header is not UTF-8")?;
    let addresses = mailboxes(text)?;
    if addresses.is_empty() {
        return Err("the From header holds no address");
    }
    Ok(Some(addresses))
}

/// The addr-specs of a mailbox-list (or group): `<...>` where there is one, the bare
/// address otherwise; comments and quoted display names skipped.
fn mailboxes(text: &str) -> Result<Vec<String>, &'static str> {
    let mut out = Vec::new();
    let mut item = String::new();
    let mut angle: Option<String> = None;
    let (mut in_quote, mut depth, mut in_angle, mut escaped) = (false, 0u32, false, false);
    let mut finish = |item: &mut String, angle: &mut Option<String>| -> Result<(), &'static str> {
        let addr = match angle.take() {
            Some(a) => a,
            None => item.trim().to_string(),
        };
        item.clear();
        let addr = addr.trim();
        if addr.is_empty() {
            return Ok(());
        }
        if addr.contains(char::is_whitespace) || !addr.contains('@') {
            return Err("the From header holds something that is not an address");
        }
        let Ok(parsed) = crate::address::parse_address(addr) else {
            return Err("the From header holds something that is not an address");
        };
        if out.len() == FROM_ADDRESSES_MAX {
            return Err("the From header holds too many addresses");
        }
        out.push(parsed.to_addr_string().to_ascii_lowercase());
        Ok(())
    };
    for c in text.chars() {
        if escaped {
            escaped = false;
            if in_angle {
                angle.get_or_insert_with(String::new).push(c);
            }
            continue;
        }
        match c {
            '\\' if in_quote || depth > 0 => escaped = true,
            '"' if depth == 0 && !in_angle => in_quote = !in_quote,
            _ if in_quote => {}
            '(' if !in_angle => depth += 1,
            ')' if depth > 0 => depth -= 1,
            _ if depth > 0 => {}
            '<' if !in_angle => {
                in_angle = true;
                angle = Some(String::new());
            }
            '>' if in_angle => in_angle = false,
            _ if in_angle => angle.get_or_insert_with(String::new).push(c),
            // A group's name ends at ':'; what came before was its display name.
            ':' => item.clear(),
            ',' | ';' => finish(&mut item, &mut angle)?,
            _ => item.push(c),
        }
    }
    if in_quote || depth > 0 || in_angle {
        return Err("the From header is not closed (a quote, comment or <)");
    }
    finish(&mut item, &mut angle)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap()).collect()
    }

    #[test]
    fn only_authenticated_clients_and_relay_networks_relay() {
        let networks = nets(&["10.0.0.0/8", "2001:db8::/32"]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(may_relay(ip("10.1.2.3"), false, &networks, false), Ok(()));
        assert_eq!(
            may_relay(ip("::ffff:10.1.2.3"), false, &networks, false),
            Ok(())
        );
        assert_eq!(may_relay(ip("2001:db8::5"), false, &networks, true), Ok(()));
        assert_eq!(may_relay(ip("192.0.2.1"), true, &networks, true), Ok(()));
        assert_eq!(
            may_relay(ip("192.0.2.1"), false, &networks, false),
            Err((554, "5.7.1 Relay access denied"))
        );
        assert_eq!(
            may_relay(ip("192.0.2.1"), false, &networks, true)
                .unwrap_err()
                .0,
            530
        );
        assert!(
            may_relay(ip("127.0.0.1"), false, &[], false).is_err(),
            "no default trust"
        );
    }

    #[test]
    fn users_send_as_their_addresses_and_domains_only() {
        let allowed = vec![
            "@acme.example".to_string(),
            "billing@other.example".to_string(),
        ];
        assert!(sender_allowed(&allowed, "news@acme.example"));
        assert!(sender_allowed(&allowed, "News@ACME.example"));
        assert!(sender_allowed(&allowed, "billing@other.example"));
        assert!(!sender_allowed(&allowed, "ceo@other.example"));
        assert!(
            !sender_allowed(&allowed, "x@sub.acme.example"),
            "not subdomains"
        );
        assert!(!sender_allowed(&allowed, "x@acme.example.evil"));
        assert!(
            !sender_allowed(&allowed, ""),
            "the null sender is not a user's address"
        );
        assert!(!sender_allowed(&[], "news@acme.example"));
    }

    #[test]
    fn from_addresses_are_found_in_the_forms_clients_write() {
        let cases: &[(&str, &[&str])] = &[
            ("From: a@b.example\r\n\r\nbody", &["a@b.example"]),
            (
                "Subject: x\r\nFROM: \"Acme, Inc\" <News@Acme.example>\r\n\r\n",
                &["news@acme.example"],
            ),
            (
                "From: Acme\r\n <a@acme.example>\r\nTo: y\r\n\r\n",
                &["a@acme.example"],
            ),
            (
                "From: a@x.example (Alice <fake@evil.example>), b@y.example\n\nbody",
                &["a@x.example", "b@y.example"],
            ),
            (
                "From: Team: a@x.example, <b@y.example>;\r\n\r\n",
                &["a@x.example", "b@y.example"],
            ),
            (
                "From: \"quoted \\\" <evil@e.example>\" <real@r.example>\r\n\r\n",
                &["real@r.example"],
            ),
        ];
        for (message, want) in cases {
            assert_eq!(
                from_addresses(message.as_bytes()).unwrap(),
                *want,
                "{message:?}"
            );
        }
    }

    #[test]
    fn unreadable_missing_or_doubled_from_headers_are_named() {
        for (message, why) in [
            ("Subject: x\r\n\r\n", "no From"),
            (
                "From: a@x.example\r\nFrom: b@y.example\r\n\r\n",
                "more than one",
            ),
            (
                "From: a@x.example\r\nFROM : b@y.example\r\n\r\n",
                "more than one",
            ),
            (
                "From: ceo@victim.example@acme.example\r\n\r\n",
                "not an address",
            ),
            (
                "From: ceo@victim.example(x)@acme.example\r\n\r\n",
                "not an address",
            ),
            ("From: <a@x.example\r\n\r\n", "not closed"),
            ("From: not an address\r\n\r\n", "not an address"),
            ("From: \r\n\r\n", "no address"),
            ("no header at all", "no header"),
        ] {
            let e = from_addresses(message.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{message:?}: {e}");
        }
        assert_eq!(
            sender_addresses(b"From: a@x.example\r\nSender : Bob <B@y.example>\r\n\r\n"),
            Ok(Some(vec!["b@y.example".to_string()]))
        );
        assert_eq!(sender_addresses(b"From: a@x.example\r\n\r\n"), Ok(None));
        let many = format!(
            "From: {}\r\n\r\n",
            vec!["a@x.example"; FROM_ADDRESSES_MAX + 1].join(",")
        );
        assert!(from_addresses(many.as_bytes())
            .unwrap_err()
            .contains("too many"));
    }
}
