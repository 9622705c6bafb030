//! The DATA writer (RFC 5321 4.5.2, 4.1.1.4): turns any message bytes into a valid DATA
//! stream, incrementally, so a message can be fed in pieces of any size.
//!
//! In one pass it: canonicalises every bare CR and every bare LF to CRLF (before anything
//! else, so a stray LF can never form an end-of-data sequence); doubles a dot at the start of a
//! line (dot-stuffing, across buffer boundaries); keeps every line within 998 octets by
//! breaking longer ones; and `finish` ends the stream with CRLF.CRLF exactly once.

/// RFC 5321 4.5.3.1.6: 1000 octets per line including CRLF.
pub const LINE_OCTETS_MAX: usize = 998;

#[derive(Debug, Default)]
pub struct DataWriter {
    /// Octets on the current output line (dot-stuffing included).
    line_len: usize,
    /// The last input byte was a CR whose line break is already written; an LF right after
    /// it belongs to the same break.
    pending_cr: bool,
}

impl DataWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes `input` onto `out`.
    pub fn write(&mut self, input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 64 + 8);
        for &b in input {
            if self.pending_cr {
                self.pending_cr = false;
                if b == b'\n' {
                    continue;
                }
            }
            match b {
                b'\r' => {
                    self.newline(out);
                    self.pending_cr = true;
                }
                b'\n' => self.newline(out),
                _ => {
                    if self.line_len == LINE_OCTETS_MAX {
                        self.newline(out);
                    }
                    if self.line_len == 0 && b == b'.' {
                        out.push(b'.');
                        self.line_len += 1;
                    }
                    out.push(b);
                    self.line_len += 1;
                }
            }
        }
    }

    /// Ends the data: a CRLF if the last line is unfinished, then `.` CRLF.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        if self.line_len > 0 {
            self.newline(out);
        }
        out.extend_from_slice(b".\r\n");
    }

    fn newline(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\n");
        self.line_len = 0;
    }
}

/// Encodes a whole message as DATA content, terminator included.
pub fn encode_data(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 64);
    let mut w = DataWriter::new();
    w.write(message, &mut out);
    w.finish(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn canonicalises_and_stuffs() {
        assert_eq!(
            encode_data(b"a\nb\rc\r\n.d\n.\n"),
            b"a\r\nb\r\nc\r\n..d\r\n..\r\n.\r\n"
        );
        assert_eq!(encode_data(b"no newline"), b"no newline\r\n.\r\n");
        assert_eq!(encode_data(b""), b".\r\n");
        assert_eq!(encode_data(b"x\r\n"), b"x\r\n.\r\n");
        assert_eq!(encode_data(b"\r\r\n"), b"\r\n\r\n.\r\n");
    }

    #[test]
    fn long_lines_are_broken() {
        let out = encode_data(&vec![b'a'; 2500]);
        let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').collect();
        assert_eq!(lines[0].len(), LINE_OCTETS_MAX + 1);
        assert_eq!(lines[1].len(), LINE_OCTETS_MAX + 1);
        assert_eq!(lines[2].len(), 2500 - 2 * LINE_OCTETS_MAX + 1);
    }

    /// Splits into pieces at the given cut points and encodes piece by piece.
    fn encode_in_pieces(input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.sort();
        let mut out = Vec::new();
        let mut w = DataWriter::new();
        let mut prev = 0;
        for c in cuts {
            w.write(&input[prev..c], &mut out);
            prev = c;
        }
        w.write(&input[prev..], &mut out);
        w.finish(&mut out);
        out
    }

    fn input_bytes() -> impl Strategy<Value = Vec<u8>> {
        // Mostly the bytes that matter (CR, LF, dot), some of everything else.
        proptest::collection::vec(
            prop_oneof![
                Just(b'\r'),
                Just(b'\n'),
                Just(b'.'),
                Just(b'a'),
                any::<u8>()
            ],
            0..3000,
        )
    }

    proptest! {
        #[test]
        fn any_input_yields_exactly_one_end_of_data(input in input_bytes(), cuts in proptest::collection::vec(any::<usize>(), 0..5)) {
            let out = encode_in_pieces(&input, &cuts);
            prop_assert_eq!(&out, &encode_data(&input), "split points change nothing");
            // The server reads from just after the DATA command's CRLF.
            let mut stream = b"\r\n".to_vec();
            stream.extend_from_slice(&out);
            let ends = stream.windows(5).filter(|w| w == b"\r\n.\r\n").count();
            prop_assert_eq!(ends, 1);
            prop_assert!(stream.ends_with(b"\r\n.\r\n"));
            for (i, &b) in out.iter().enumerate() {
                if b == b'\n' { prop_assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {}", i); }
                if b == b'\r' { prop_assert!(out.get(i + 1) == Some(&b'\n'), "bare CR at {}", i); }
            }
            for line in out.split(|&b| b == b'\n') {
                prop_assert!(line.len() <= LINE_OCTETS_MAX + 1);
            }
        }

        #[test]
        fn content_survives_unstuffing(input in proptest::collection::vec(prop_oneof![Just(b'.'), Just(b'x'), Just(b'\n')], 0..500)) {
            // For LF-only input with short lines, the receiver's view is the input with CRLF.
            let out = encode_data(&input);
            let body = &out[..out.len() - 3];
            let mut received = Vec::new();
            for line in body.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let line = line.strip_suffix(b"\r").unwrap();
                received.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
                received.push(b'\n');
            }
            let mut want = input.clone();
            if !want.is_empty() && !want.ends_with(b"\n") { want.push(b'\n'); }
            prop_assert_eq!(received, want);
        }
    }
}
