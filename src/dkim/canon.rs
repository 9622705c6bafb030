//! DKIM's relaxed canonicalisation (RFC 6376 3.4.2 and 3.4.4), sans I/O: what a verifier
//! computes from the message it receives, computed here from the message as it is sent.

use ring::digest::{Context, Digest, SHA256};

fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Appends the relaxed form of one header field to `out`: the name in lower case, the colon,
/// the value unfolded, its runs of white space made one space and its ends trimmed, then CRLF.
/// `field` is the field as it stands in the message (name, colon, value and folds) without its
/// final CRLF. A field without a colon is not a field: nothing is written, false returned.
pub fn relaxed_header(field: &[u8], out: &mut Vec<u8>) -> bool {
    let Some(colon) = memchr::memchr(b':', field) else {
        return false;
    };
    let name = &field[..colon];
    let name = match name.iter().rposition(|&b| !is_wsp(b)) {
        Some(end) => &name[..=end],
        None => name,
    };
    out.extend(name.iter().map(u8::to_ascii_lowercase));
    out.push(b':');
    let (mut started, mut space) = (false, false);
    for &b in &field[colon + 1..] {
        match b {
            // Unfolding removes the line breaks; the white space after them stays a space.
            b'\r' | b'\n' => {}
            b' ' | b'\t' => space = started,
            _ => {
                if space {
                    out.push(b' ');
                    space = false;
                }
                out.push(b);
                started = true;
            }
        }
    }
    out.extend_from_slice(b"\r\n");
    true
}

/// The body hash under relaxed canonicalisation, fed a line at a time: white space runs made
/// one space, white space at line ends removed, empty lines at the end of the body dropped.
pub struct RelaxedBody {
    hash: Context,
    /// Empty lines seen since the last line with content: written only if content follows.
    empty_lines: usize,
    line: Vec<u8>,
}

impl Default for RelaxedBody {
    fn default() -> Self {
        Self {
            hash: Context::new(&SHA256),
            empty_lines: 0,
            line: Vec::new(),
        }
    }
}

impl RelaxedBody {
    /// One body line, without its CRLF.
    pub fn line(&mut self, line: &[u8]) {
        self.line.clear();
        let mut space = false;
        for &b in line {
            if is_wsp(b) {
                space = true;
                continue;
            }
            if space {
                self.line.push(b' ');
                space = false;
            }
            self.line.push(b);
        }
        if self.line.is_empty() {
            self.empty_lines += 1;
            return;
        }
        for _ in 0..self.empty_lines {
            self.hash.update(b"\r\n");
        }
        self.empty_lines = 0;
        self.line.extend_from_slice(b"\r\n");
        self.hash.update(&self.line);
    }

    /// The SHA-256 of the canonical body (of nothing, for an empty body).
    pub fn finish(self) -> Digest {
        self.hash.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(field: &str) -> String {
        let mut out = Vec::new();
        assert!(relaxed_header(field.as_bytes(), &mut out));
        String::from_utf8(out).unwrap()
    }

    fn body(lines: &[&str]) -> Vec<u8> {
        let mut b = RelaxedBody::default();
        for l in lines {
            b.line(l.as_bytes());
        }
        b.finish().as_ref().to_vec()
    }

    fn sha256(bytes: &[u8]) -> Vec<u8> {
        ring::digest::digest(&SHA256, bytes).as_ref().to_vec()
    }

    #[test]
    fn header_fields_as_rfc_6376_relaxes_them() {
        // RFC 6376 3.4.5's example.
        assert_eq!(header("A: X"), "a:X\r\n");
        assert_eq!(header("B : Y\t\r\n\tZ  "), "b:Y Z\r\n");
        assert_eq!(
            header("Subject:  \t lots   of\t space \r\n  "),
            "subject:lots of space\r\n"
        );
        assert_eq!(header("X-Empty:"), "x-empty:\r\n");
        let mut out = Vec::new();
        assert!(!relaxed_header(b"no colon", &mut out));
        assert!(out.is_empty());
    }

    #[test]
    fn body_lines_as_rfc_6376_relaxes_them() {
        // RFC 6376 3.4.5's example: " C \r\nD \t E\r\n\r\n\r\n" becomes " C\r\nD E\r\n".
        assert_eq!(body(&[" C ", "D \t E", "", ""]), sha256(b" C\r\nD E\r\n"));
        // Empty lines inside the body stay; only the trailing ones go.
        assert_eq!(
            body(&["a", "", "  ", "b", ""]),
            sha256(b"a\r\n\r\n\r\nb\r\n")
        );
        // An empty body (or one of empty lines) hashes nothing.
        assert_eq!(body(&[]), sha256(b""));
        assert_eq!(body(&["", " "]), sha256(b""));
    }
}
