//! A message's lines as RFC 5321 and 5322 require them, checked as its bytes stream by:
//! every line ends in CRLF, and no line is longer than `LINE_MAX` octets before it. A bare
//! CR or LF is what SMTP smuggling hides a second message behind (`<LF>.<LF>` read as the end
//! by one server and not by the next), so a server that relays refuses the message rather
//! than guess.

/// Longest line, in octets before its CRLF (RFC 5321 4.5.3.1.6: 1,000 with it).
pub const LINE_MAX: usize = 998;

/// The streaming check. Feed it the message's bytes (unstuffed) in any split; `finish` at
/// the message's end says what was wrong, if anything.
#[derive(Debug, Clone, Copy, Default)]
pub struct LineCheck {
    after_cr: bool,
    line: usize,
    fault: Option<&'static str>,
}

impl LineCheck {
    /// True once something was wrong (the rest need not be looked at).
    pub fn failed(&self) -> bool {
        self.fault.is_some()
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        let mut i = 0;
        while i < bytes.len() && self.fault.is_none() {
            if self.after_cr {
                if bytes[i] != b'\n' {
                    self.fault = Some("5.5.2 Message contains a bare CR");
                    return;
                }
                self.after_cr = false;
                self.line = 0;
                i += 1;
                continue;
            }
            let Some(p) = memchr::memchr2(b'\r', b'\n', &bytes[i..]) else {
                self.line += bytes.len() - i;
                break;
            };
            self.line += p;
            if self.line > LINE_MAX {
                break;
            }
            if bytes[i + p] == b'\n' {
                self.fault = Some("5.5.2 Message contains a bare LF");
                return;
            }
            self.after_cr = true;
            i += p + 1;
        }
        if self.line > LINE_MAX && self.fault.is_none() {
            self.fault = Some("5.5.2 Message has a line over 998 octets");
        }
    }

    /// The message ended: what was wrong with it (a CR left hanging at its end is bare),
    /// and a fresh check for the next.
    pub fn finish(&mut self) -> Option<&'static str> {
        let fault = match self.fault {
            None if self.after_cr => Some("5.5.2 Message contains a bare CR"),
            other => other,
        };
        *self = LineCheck::default();
        fault
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(pieces: &[&[u8]]) -> Option<&'static str> {
        let mut c = LineCheck::default();
        for p in pieces {
            c.feed(p);
        }
        c.finish()
    }

    #[test]
    fn clean_messages_pass_in_any_split() {
        let message = b"Subject: hi\r\n\r\nbody\r\n\r\n";
        for at in 0..message.len() {
            assert_eq!(
                check(&[&message[..at], &message[at..]]),
                None,
                "split at {at}"
            );
        }
        let longest = [b"x".repeat(LINE_MAX), b"\r\n".to_vec()].concat();
        assert_eq!(check(&[&longest[..500], &longest[500..]]), None);
        assert_eq!(check(&[b"no final line ending"]), None);
    }

    #[test]
    fn bare_line_endings_and_long_lines_are_named() {
        assert!(check(&[b"a\nb\r\n"]).unwrap().contains("bare LF"));
        // The smuggling payloads: an end of data with bare line endings.
        assert!(check(&[b"x\r\n.\nMAIL FROM:<a@b>\r\n"])
            .unwrap()
            .contains("bare LF"));
        assert!(check(&[b"x\n.\r\nMAIL FROM:<a@b>\r\n"])
            .unwrap()
            .contains("bare LF"));
        assert!(check(&[b"x\r.\r\nok\r\n"]).unwrap().contains("bare CR"));
        assert!(check(&[b"ends in CR\r"]).unwrap().contains("bare CR"));
        assert!(check(&[b"split CR\r", b"x\r\n"])
            .unwrap()
            .contains("bare CR"));
        let long = [b"y".repeat(LINE_MAX + 1), b"\r\n".to_vec()].concat();
        assert!(check(&[&long[..10], &long[10..]]).unwrap().contains("998"));
        assert!(check(&[&b"z".repeat(LINE_MAX + 1)])
            .unwrap()
            .contains("998"));
    }

    #[test]
    fn finish_starts_the_next_message_clean() {
        let mut c = LineCheck::default();
        c.feed(b"bad\n");
        assert!(c.failed());
        assert!(c.finish().is_some());
        c.feed(b"good\r\n");
        assert_eq!(c.finish(), None);
    }
}
