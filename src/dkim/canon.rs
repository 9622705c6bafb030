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

/// What makes a line of a body in DATA form need canonicalising, and where in the pattern
/// the line in question is: a tab, two spaces in a row, a space before the line break, an
/// empty line, a stuffed dot.
const DIRTY: [(&[u8], usize); 5] = [
    (b"\t", 0),
    (b"  ", 0),
    (b" \r\n", 0),
    (b"\n\r\n", 1),
    (b"\n.", 1),
];

/// The SHA-256 of a body under relaxed canonicalisation. `body` is in DATA form: every line
/// ends in CRLF, a line starting with a dot has it doubled, no terminator. Lines that
/// canonicalise to themselves (nearly all) are hashed in spans as they stand, found between
/// the others with one SIMD search per pattern over the whole body; the others go a line at
/// a time through `RelaxedBody`.
pub fn relaxed_body_hash(body: &[u8]) -> Digest {
    let mut b = RelaxedBody::default();
    let finders: Vec<(memchr::memmem::Finder<'_>, usize)> = DIRTY
        .iter()
        .map(|&(p, offset)| (memchr::memmem::Finder::new(p), offset))
        .collect();
    // Per pattern, the next line start or position at or after `at` it marks.
    let mut next = [0usize; DIRTY.len()];
    let mut found = [false; DIRTY.len()];
    let (mut span, mut at) = (0, 0);
    // The first line has no line break before it to mark it.
    let first_dirty = body.starts_with(b"\r\n") || body.starts_with(b".");
    while at < body.len() {
        let pos = if at == 0 && first_dirty {
            0
        } else {
            let mut pos = body.len();
            for (i, (finder, offset)) in finders.iter().enumerate() {
                if !found[i] || next[i] < at {
                    let from = at.saturating_sub(*offset);
                    next[i] = finder
                        .find(&body[from..])
                        .map_or(body.len(), |p| from + p + offset);
                    found[i] = true;
                }
                pos = pos.min(next[i]);
            }
            pos
        };
        if pos >= body.len() {
            break;
        }
        let start = memchr::memrchr(b'\n', &body[at..pos]).map_or(at, |p| at + p + 1);
        let end = memchr::memchr(b'\n', &body[pos..]).map_or(body.len(), |p| pos + p + 1);
        if start > span {
            b.flush_empty_lines();
            b.hash.update(&body[span..start]);
        }
        let line = &body[start..end];
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        b.line(line.strip_prefix(b".").unwrap_or(line));
        (span, at) = (end, end);
    }
    if body.len() > span {
        b.flush_empty_lines();
        b.hash.update(&body[span..]);
    }
    b.finish()
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
        self.flush_empty_lines();
        self.line.extend_from_slice(b"\r\n");
        self.hash.update(&self.line);
    }

    /// Content follows the empty lines seen last: they are part of the body after all.
    fn flush_empty_lines(&mut self) {
        for _ in 0..self.empty_lines {
            self.hash.update(b"\r\n");
        }
        self.empty_lines = 0;
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

    /// The reference: every line of the DATA form through `RelaxedBody`.
    fn line_by_line(body: &[u8]) -> Vec<u8> {
        let mut lines = RelaxedBody::default();
        for l in crate::smtp::data::message_lines(body) {
            lines.line(l.strip_prefix(b".").unwrap_or(l));
        }
        lines.finish().as_ref().to_vec()
    }

    /// A body as the DATA writer makes it (header, then body, minus the terminator).
    fn data_body(body: &[u8]) -> Vec<u8> {
        let mut m = b"A: b\r\n\r\n".to_vec();
        m.extend_from_slice(body);
        let data = crate::smtp::data::Data::encode(&m).into_bytes();
        data[b"A: b\r\n\r\n".len()..data.len() - 3].to_vec()
    }

    #[test]
    fn the_span_hash_agrees_with_the_line_hash() {
        let cases: &[&[u8]] = &[
            b"",
            b"a\r\n",
            b"a\r\nb\r\n\r\n\r\n",
            b"\r\n\r\na\r\n",
            b"one two\r\nthree  four\r\n\tfive\r\nsix \r\n\r\nseven\r\n",
            b".dot\r\nplain\r\n..\r\n",
            b"no final line break",
            b" \r\n \r\n",
        ];
        for &body in cases {
            let body = data_body(body);
            assert_eq!(
                relaxed_body_hash(&body).as_ref(),
                line_by_line(&body),
                "{:?}",
                String::from_utf8_lossy(&body)
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn any_body_hashes_as_line_by_line(
            pieces in proptest::collection::vec(
                proptest::sample::select(vec!["a", "bc", " ", "\t", ".", "\r\n", "\n", "  x"]),
                0..60,
            )
        ) {
            let body = data_body(pieces.concat().as_bytes());
            let spans = relaxed_body_hash(&body).as_ref().to_vec();
            proptest::prop_assert_eq!(spans, line_by_line(&body));
        }
    }
}
