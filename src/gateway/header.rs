//! Reading a message's header section as receivers do, shared by the gateway's policy
//! (From, Sender) and its additions (Message-ID, Date, X-Campaign).

/// Where the header section ends: the offset of its blank line (0 for a message that starts
/// with one), or `None` when there is no blank line.
pub fn header_end(message: &[u8]) -> Option<usize> {
    if message.starts_with(b"\r\n") || message.starts_with(b"\n") {
        return Some(0);
    }
    let crlf = memchr::memmem::find(message, b"\r\n\r\n").map(|i| i + 2);
    let lf = memchr::memmem::find(message, b"\n\n").map(|i| i + 1);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// When `line` starts the field `name` (`Name:`, or `Name :` in the obsolete syntax RFC
/// 5322 4.5 still asks receivers to read), what follows the colon.
pub fn field_start<'a>(line: &'a [u8], name: &str) -> Option<&'a [u8]> {
    let head = line.get(..name.len())?;
    if !head.eq_ignore_ascii_case(name.as_bytes()) {
        return None;
    }
    let rest = &line[name.len()..];
    let spaces = rest
        .iter()
        .take_while(|b| **b == b' ' || **b == b'\t')
        .count();
    rest[spaces..].strip_prefix(b":")
}
