//! SMTP replies (RFC 5321 4.2) and a streaming parser for them.
//!
//! The parser is fed whatever bytes arrived and answers "need more" until a whole (possibly
//! multi-line) reply is in; bytes past that reply stay buffered for the next one, which is what
//! pipelining needs. Every input is bounded: a line longer than `LINE_BYTES_MAX` or a reply of
//! more than `REPLY_LINES_MAX` lines is a protocol error, not an allocation.

use std::fmt;

/// RFC 5321 allows 512 octets per reply line; real servers exceed it, so allow 8x.
pub const LINE_BYTES_MAX: usize = 4096;
/// EHLO replies run to a few dozen lines at most.
pub const REPLY_LINES_MAX: usize = 128;

/// An enhanced status code (RFC 3463), e.g. `5.1.1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnhancedCode {
    pub class: u8,
    pub subject: u16,
    pub detail: u16,
}

impl fmt::Display for EnhancedCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.class, self.subject, self.detail)
    }
}

impl EnhancedCode {
    pub const fn new(class: u8, subject: u16, detail: u16) -> Self {
        EnhancedCode {
            class,
            subject,
            detail,
        }
    }

    /// Parses `X.Y.Z` at the start of `text`; returns it and the rest of the text.
    pub fn parse_prefix(text: &str) -> Option<(EnhancedCode, &str)> {
        let end = text.find(' ').unwrap_or(text.len());
        let mut parts = text[..end].split('.');
        let class: u8 = parts.next()?.parse().ok()?;
        let subject: u16 = parts.next()?.parse().ok()?;
        let detail: u16 = parts.next()?.parse().ok()?;
        if parts.next().is_some() || !(2..=5).contains(&class) || subject > 999 || detail > 999 {
            return None;
        }
        Some((
            EnhancedCode::new(class, subject, detail),
            text[end..].trim_start(),
        ))
    }
}

/// One complete reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub code: u16,
    /// From the first line, when the server sent one.
    pub enhanced: Option<EnhancedCode>,
    /// Text of each line, without code and separator (enhanced code kept).
    pub lines: Vec<String>,
}

impl Reply {
    pub fn new(code: u16, text: &str) -> Reply {
        Reply {
            code,
            enhanced: EnhancedCode::parse_prefix(text).map(|(e, _)| e),
            lines: vec![text.to_string()],
        }
    }

    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    pub fn is_intermediate(&self) -> bool {
        (300..400).contains(&self.code)
    }

    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }

    /// All lines joined with a space, as logged.
    pub fn text(&self) -> String {
        self.lines.join(" ")
    }

    /// `code text`, as it appears in the delivery log's `response`.
    pub fn to_log_string(&self) -> String {
        format!("{} {}", self.code, self.text())
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.text())
    }
}

/// A reply that breaks the protocol; the connection cannot continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyError(pub &'static str);

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0)
    }
}

/// Streaming reply parser; keeps surplus bytes between calls.
#[derive(Debug, Default)]
pub struct ReplyParser {
    buf: Vec<u8>,
    /// Where the next unparsed line starts in `buf`.
    start: usize,
    partial: Option<Reply>,
}

impl ReplyParser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes received but not yet part of a returned reply.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete reply, `Ok(None)` if more bytes are needed.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, ReplyError> {
        loop {
            let rest = &self.buf[self.start..];
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                if rest.len() > LINE_BYTES_MAX {
                    return Err(ReplyError("reply line too long"));
                }
                self.compact();
                return Ok(None);
            };
            if nl > LINE_BYTES_MAX {
                return Err(ReplyError("reply line too long"));
            }
            let line = &rest[..nl];
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            let (code, last, text) = parse_line(line)?;
            let text = text.into_owned();
            self.start += nl + 1;
            let reply = self.partial.get_or_insert_with(|| Reply {
                code,
                enhanced: None,
                lines: Vec::new(),
            });
            if reply.code != code {
                return Err(ReplyError("reply lines carry different codes"));
            }
            if reply.lines.len() == REPLY_LINES_MAX {
                return Err(ReplyError("reply has too many lines"));
            }
            if reply.lines.is_empty() {
                reply.enhanced = EnhancedCode::parse_prefix(&text)
                    .filter(|(e, _)| u16::from(e.class) == code / 100)
                    .map(|(e, _)| e);
            }
            reply.lines.push(text);
            if last {
                return Ok(self.partial.take());
            }
        }
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

/// `NNN-text` (continued) or `NNN text` / `NNN` (last line). Text that is not UTF-8 is kept
/// with its invalid bytes replaced (U+FFFD), so its enhanced code and words still count.
fn parse_line(line: &[u8]) -> Result<(u16, bool, std::borrow::Cow<'_, str>), ReplyError> {
    if line.len() < 3 || !line[..3].iter().all(u8::is_ascii_digit) {
        return Err(ReplyError("reply line does not start with a 3-digit code"));
    }
    let code = u16::from(line[0] - b'0') * 100
        + u16::from(line[1] - b'0') * 10
        + u16::from(line[2] - b'0');
    if !(200..600).contains(&code) {
        return Err(ReplyError("reply code out of range"));
    }
    let (last, text) = match line.get(3) {
        None => (true, &line[3..]),
        Some(b' ') => (true, &line[4..]),
        Some(b'-') => (false, &line[4..]),
        Some(_) => return Err(ReplyError("reply code not followed by space or hyphen")),
    };
    Ok((code, last, String::from_utf8_lossy(text)))
}

/// `text` with control characters (terminal escapes among them) and bidirectional overrides
/// written as escapes, for stderr: a peer's or a producer's words are shown to the operator,
/// never interpreted by the operator's terminal.
pub fn printable(text: &str) -> std::borrow::Cow<'_, str> {
    let unsafe_char =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn non_utf8_text_keeps_its_enhanced_code_and_words() {
        let mut p = ReplyParser::new();
        p.push(b"550 5.1.1 unknown user \xff\xfe here\r\n");
        let r = p.next_reply().unwrap().unwrap();
        assert_eq!(r.enhanced, Some(EnhancedCode::new(5, 1, 1)));
        assert!(
            r.text().contains("unknown user") && r.text().contains('\u{fffd}'),
            "{r}"
        );
    }

    #[test]
    fn printable_escapes_terminal_controls() {
        assert_eq!(printable("421 4.7.0 busy"), "421 4.7.0 busy");
        let shown = printable("421 \u{1b}[2J\u{1b}]0;owned\u{7}bye\u{202e}");
        assert!(
            !shown.chars().any(|c| c.is_control() || c == '\u{202e}'),
            "{shown}"
        );
        assert!(shown.contains("\\u{1b}[2J"), "{shown}");
    }

    #[test]
    fn multi_line_reply_and_pipelined_surplus() {
        let mut p = ReplyParser::new();
        p.push(b"250-mx.example.com Hello\r\n250-PIPELINING\r\n250-SIZE 3500");
        assert_eq!(p.next_reply().unwrap(), None);
        p.push(b"0000\r\n250 ENHANCEDSTATUSCODES\r\n250 2.1.0 Ok\r\n550 5.1.1 <a@b>: no such user\r\n35");
        let ehlo = p.next_reply().unwrap().unwrap();
        assert_eq!(ehlo.code, 250);
        assert_eq!(
            ehlo.lines,
            [
                "mx.example.com Hello",
                "PIPELINING",
                "SIZE 35000000",
                "ENHANCEDSTATUSCODES"
            ]
        );
        let ok = p.next_reply().unwrap().unwrap();
        assert_eq!(ok.enhanced, Some(EnhancedCode::new(2, 1, 0)));
        let bad = p.next_reply().unwrap().unwrap();
        assert!(bad.is_permanent());
        assert_eq!(bad.enhanced.unwrap().to_string(), "5.1.1");
        assert_eq!(p.next_reply().unwrap(), None);
        p.push(b"4 go ahead\n");
        let data = p.next_reply().unwrap().unwrap();
        assert_eq!((data.code, data.text().as_str()), (354, "go ahead"));
        assert_eq!(p.buffered(), 0);
    }

    #[test]
    fn real_isp_deferrals_parse() {
        let mut p = ReplyParser::new();
        p.push(b"421-4.7.28 Gmail has detected an unusual rate of unsolicited mail.\r\n421 4.7.28 To protect our users, mail has been temporarily rate limited.\r\n");
        let r = p.next_reply().unwrap().unwrap();
        assert!(r.is_transient());
        assert_eq!(r.enhanced, Some(EnhancedCode::new(4, 7, 28)));
        p.push(b"421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints\r\n");
        assert_eq!(
            p.next_reply().unwrap().unwrap().enhanced,
            Some(EnhancedCode::new(4, 7, 0))
        );
        p.push(b"250\r\n");
        assert_eq!(p.next_reply().unwrap().unwrap().lines, [""]);
    }

    #[test]
    fn protocol_errors() {
        for bad in [
            &b"hello\r\n"[..],
            b"250-a\r\n251 b\r\n",
            b"25x ok\r\n",
            b"250_ok\r\n",
            b"999 x\r\n",
        ] {
            let mut p = ReplyParser::new();
            p.push(bad);
            assert!(
                p.next_reply().is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut p = ReplyParser::new();
        p.push(&vec![b'2'; LINE_BYTES_MAX + 10]);
        assert!(p.next_reply().is_err());
        let mut p = ReplyParser::new();
        p.push(&b"250-x\r\n".repeat(REPLY_LINES_MAX + 1));
        assert!(p.next_reply().is_err());
    }

    proptest! {
        /// Feeding the same bytes in any split gives the same replies.
        #[test]
        fn split_points_do_not_matter(codes in proptest::collection::vec(200u16..600, 1..6), cut in any::<prop::sample::Index>()) {
            let mut wire = Vec::new();
            for (i, c) in codes.iter().enumerate() {
                wire.extend_from_slice(format!("{c}-first {i}\r\n{c} last {i}\r\n").as_bytes());
            }
            let at = cut.index(wire.len());
            let mut p = ReplyParser::new();
            p.push(&wire[..at]);
            let mut got = Vec::new();
            while let Some(r) = p.next_reply().unwrap() { got.push(r); }
            p.push(&wire[at..]);
            while let Some(r) = p.next_reply().unwrap() { got.push(r); }
            prop_assert_eq!(got.len(), codes.len());
            for (r, c) in got.iter().zip(&codes) {
                prop_assert_eq!(r.code, *c);
                prop_assert_eq!(r.lines.len(), 2);
            }
        }

        /// Arbitrary bytes never panic and never grow the buffer past the line bound.
        #[test]
        fn garbage_is_bounded(chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..2000), 0..8)) {
            let mut p = ReplyParser::new();
            for c in chunks {
                p.push(&c);
                loop {
                    match p.next_reply() {
                        Ok(Some(_)) => continue,
                        Ok(None) => { prop_assert!(p.buffered() <= LINE_BYTES_MAX); break }
                        Err(_) => return Ok(()),
                    }
                }
            }
        }
    }
}
