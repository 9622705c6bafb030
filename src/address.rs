//! Envelope address validation: RFC 5321 syntax and lengths, domains converted to A-labels
//! (IDNA, UTS 46) so that everything after intake sees ASCII domains.
//!
//! Pure functions; no I/O.

use std::fmt;

/// RFC 5321 4.5.3.1.1: local-part at most 64 octets.
pub const LOCAL_PART_BYTES_MAX: usize = 64;
/// RFC 5321 4.5.3.1.2: domain at most 255 octets (we use the DNS limit of 253 for names).
pub const DOMAIN_BYTES_MAX: usize = 253;
/// RFC 5321 4.5.3.1.3: a path is at most 256 octets including the angle brackets.
pub const ADDRESS_BYTES_MAX: usize = 254;
/// RFC 1035: a label is at most 63 octets.
pub const LABEL_BYTES_MAX: usize = 63;

/// A validated address: the local part as given, the domain as lowercase A-labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub local: String,
    pub domain: String,
}

impl Address {
    /// `local@domain`, the form used on the wire and in the logs.
    pub fn to_addr_string(&self) -> String {
        let mut s = String::with_capacity(self.local.len() + 1 + self.domain.len());
        s.push_str(&self.local);
        s.push('@');
        s.push_str(&self.domain);
        s
    }

    /// True when the local part needs SMTPUTF8 (non-ASCII).
    pub fn needs_smtputf8(&self) -> bool {
        !self.local.is_ascii()
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.local, self.domain)
    }
}

/// Why an address was refused; the message names the address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressError(pub String);

impl fmt::Display for AddressError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Validates an envelope address such as `alice@example.com` (angle brackets allowed).
pub fn parse_address(input: &str) -> Result<Address, AddressError> {
    let bad = |why: &str| AddressError(format!("invalid address {input:?}: {why}"));
    let s = input.trim();
    let s = s
        .strip_prefix('<')
        .and_then(|t| t.strip_suffix('>'))
        .unwrap_or(s);
    if s.is_empty() {
        return Err(bad("empty"));
    }
    if s.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Err(bad("contains a control character"));
    }
    let at = s.rfind('@').ok_or_else(|| bad("no @"))?;
    let (local, domain) = (&s[..at], &s[at + 1..]);
    validate_local_part(local).map_err(|w| bad(&w))?;
    let domain = domain_to_ascii(domain).map_err(|w| bad(&w))?;
    if local.len() + 1 + domain.len() > ADDRESS_BYTES_MAX {
        return Err(bad(&format!(
            "longer than {ADDRESS_BYTES_MAX} octets (RFC 5321)"
        )));
    }
    Ok(Address {
        local: local.to_string(),
        domain,
    })
}

fn validate_local_part(local: &str) -> Result<(), String> {
    if local.is_empty() {
        return Err("empty local part".into());
    }
    if local.len() > LOCAL_PART_BYTES_MAX {
        return Err(format!(
            "local part longer than {LOCAL_PART_BYTES_MAX} octets (RFC 5321)"
        ));
    }
    if let Some(inner) = local.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        // Quoted-string: printable characters, with backslash escapes.
        let mut escaped = false;
        for c in inner.chars() {
            match (escaped, c) {
                (true, _) => escaped = false,
                (false, '\\') => escaped = true,
                (false, '"') => return Err("unescaped quote in quoted local part".into()),
                _ => {}
            }
        }
        return if escaped {
            Err("quoted local part ends in a backslash".into())
        } else {
            Ok(())
        };
    }
    // Dot-atom: atext runs separated by single dots; UTF-8 allowed (RFC 6531).
    if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
        return Err("misplaced dot in local part".into());
    }
    for c in local.chars() {
        let ok = c.is_ascii_alphanumeric() || "!#$%&'*+-/=?^_`{|}~.".contains(c) || !c.is_ascii();
        if !ok {
            return Err(format!("character {c:?} not allowed in local part"));
        }
    }
    Ok(())
}

/// Converts a domain to lowercase A-labels and checks DNS name rules.
pub fn domain_to_ascii(domain: &str) -> Result<String, String> {
    if domain.is_empty() {
        return Err("empty domain".into());
    }
    if domain.starts_with('[') {
        return Err("address literals are not accepted for bulk mail".into());
    }
    let ascii = if domain.is_ascii() {
        domain.to_ascii_lowercase()
    } else {
        idna::domain_to_ascii(domain).map_err(|_| "domain is not valid IDNA".to_string())?
    };
    let ascii = ascii.strip_suffix('.').unwrap_or(&ascii).to_string();
    check_host_name(&ascii)?;
    Ok(ascii)
}

/// Checks an ASCII name against the rules of a mail domain or an MX host: at most 253
/// octets, at least two labels, each 1 to 63 letters, digits and hyphens (LDH, no hyphen at
/// either end), and a top label that is not all digits, so that no IP address (`1.2.3.4`)
/// passes as a name (RFC 3696 2, RFC 1123 2.1).
pub fn check_host_name(ascii: &str) -> Result<(), String> {
    if ascii.is_empty() {
        return Err("empty domain".into());
    }
    if ascii.len() > DOMAIN_BYTES_MAX {
        return Err(format!("domain longer than {DOMAIN_BYTES_MAX} octets"));
    }
    if !ascii.contains('.') {
        return Err("domain has no dot".into());
    }
    for label in ascii.split('.') {
        if label.is_empty() {
            return Err("empty label in domain".into());
        }
        if label.len() > LABEL_BYTES_MAX {
            return Err(format!("domain label longer than {LABEL_BYTES_MAX} octets"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("domain label starts or ends with a hyphen".into());
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err("domain has a character other than letters, digits, hyphens".into());
        }
    }
    let top = ascii.rsplit('.').next().unwrap_or_default();
    if top.bytes().all(|b| b.is_ascii_digit()) {
        return Err(
            "domain's top-level label is all digits (an IP address is not a domain)".into(),
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_numeric_domains_are_not_domains() {
        for a in ["u@1.2.3.4", "u@10.0.0.1", "u@example.123"] {
            let e = parse_address(a).unwrap_err();
            assert!(e.0.contains("all digits"), "{a}: {e}");
        }
        assert!(parse_address("u@123.example").is_ok());
        assert!(parse_address("u@a1.b2c").is_ok());
        assert!(check_host_name("mx.evil.example:2525").is_err());
        assert!(check_host_name("localhost").is_err());
    }

    #[test]
    fn accepts_ordinary_and_converts_idna() {
        let a = parse_address("Alice.B+tag@Example.COM").unwrap();
        assert_eq!(a.local, "Alice.B+tag");
        assert_eq!(a.domain, "example.com");
        let b = parse_address("<x@bücher.example>").unwrap();
        assert_eq!(b.domain, "xn--bcher-kva.example");
        let c = parse_address("\"john doe\"@example.org").unwrap();
        assert_eq!(c.local, "\"john doe\"");
        let d = parse_address("用户@例子.广告").unwrap();
        assert!(d.needs_smtputf8());
        assert!(d.domain.starts_with("xn--"));
    }

    #[test]
    fn refuses_bad_addresses_with_a_reason() {
        let cases = [
            ("", "empty"),
            ("alice", "no @"),
            ("@example.com", "empty local part"),
            ("a..b@example.com", "misplaced dot"),
            ("a b@example.com", "not allowed"),
            ("alice@localhost", "no dot"),
            ("alice@-x.example", "hyphen"),
            ("alice@ex_ample.com", "character other than"),
            ("alice@[127.0.0.1]", "literals"),
            ("al\rice@example.com", "control"),
        ];
        for (input, why) in cases {
            let e = parse_address(input).unwrap_err();
            assert!(e.0.contains(why), "{input:?}: {e}");
        }
    }

    #[test]
    fn enforces_rfc5321_lengths() {
        let local64 = "a".repeat(64);
        assert!(parse_address(&format!("{local64}@example.com")).is_ok());
        let e = parse_address(&format!("{}@example.com", "a".repeat(65))).unwrap_err();
        assert!(e.0.contains("64 octets"));
        let label = "b".repeat(64);
        assert!(parse_address(&format!("a@{label}.com")).is_err());
        let long_domain = vec!["c".repeat(60); 4].join(".") + ".com";
        let e = parse_address(&format!("{local64}@{long_domain}")).unwrap_err();
        assert!(e.0.contains("254 octets"), "{e}");
    }
}
