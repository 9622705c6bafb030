//! The DATA writer (RFC 5321 4.5.2, 4.1.1.4): turns any message bytes into a valid DATA
//! stream, incrementally, so a message can be fed in pieces of any size.
//!
//! In one pass it: canonicalises every bare CR and every bare LF to CRLF (before anything
//! else, so a stray LF can never form an end-of-data sequence); doubles a dot at the start of a
//! line (dot-stuffing, across buffer boundaries); keeps every line within 998 octets by
//! breaking longer ones; and `finish` ends the stream with CRLF.CRLF exactly once.
//!
//! How a long line is broken depends on where it is. In the header section (up to the first
//! empty line of the output) a break is a fold, CRLF followed by a space (RFC 5322 2.2.3): the
//! continuation can never start a new header field, so a long value cannot smuggle in a
//! `Bcc:` or `Reply-To:`. Templates fold their long header lines at existing whitespace
//! before they get here (`template::fold_header_section`), so this is the defence in depth
//! for anything that did not. In the body a break is a bare CRLF, as there are no fields to
//! protect.

/// RFC 5321 4.5.3.1.6: 1000 octets per line including CRLF.
pub const LINE_OCTETS_MAX: usize = 998;

/// What breaks a header line over the limit: a fold, so the rest continues the same field.
const HEADER_BREAK: &[u8] = b"\r\n ";
/// What breaks a body line over the limit.
const BODY_BREAK: &[u8] = b"\r\n";

#[derive(Debug)]
pub struct DataWriter {
    /// Octets on the current output line (dot-stuffing included).
    line_len: usize,
    /// The last input byte was a CR whose line break is already written; an LF right after
    /// it belongs to the same break.
    pending_cr: bool,
    /// No empty line has been written yet: long lines are folded, not split.
    in_header: bool,
    /// Dots added by dot-stuffing so far (not part of the message's size, RFC 1870).
    stuffed: u64,
    /// An octet above 127 was written (the message needs 8BITMIME).
    eight_bit: bool,
}

impl Default for DataWriter {
    fn default() -> Self {
        Self {
            line_len: 0,
            pending_cr: false,
            in_header: true,
            stuffed: 0,
            eight_bit: false,
        }
    }
}

impl DataWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes `input` onto `out`. Whole lines that need nothing but their line ending made
    /// canonical (almost all of a message) are copied in spans; only the lines that need
    /// more (a dot to stuff, a bare CR, over the limit) and the piece's unfinished end go
    /// through `step`, a run and a break at a time.
    pub fn write(&mut self, mut input: &[u8], out: &mut Vec<u8>) {
        out.reserve(input.len() + input.len() / 64 + 8);
        // Once per piece, word at a time: per line it cost more than the copy.
        self.eight_bit = self.eight_bit || !input.is_ascii();
        while !input.is_empty() {
            if !self.pending_cr {
                input = self.whole_lines(input, out);
                if input.is_empty() {
                    break;
                }
            }
            input = self.step(input, out);
        }
    }

    /// Copies the whole lines at the start of `input` that end in CRLF or a bare LF (made
    /// CRLF), fit within the limit with what the current output line holds, and need no
    /// dot-stuffing; returns the rest. What it copies is what `step` would write for them.
    fn whole_lines<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> &'a [u8] {
        // `input[..copied]` is written; the line being looked at starts at `at`.
        let (mut copied, mut at) = (0, 0);
        let mut line_len = self.line_len;
        loop {
            if line_len == 0 && input.get(at) == Some(&b'.') {
                break;
            }
            let Some(brk) = memchr::memchr2(b'\r', b'\n', &input[at..]) else {
                break;
            };
            let end = at + brk;
            let len = line_len + brk;
            let crlf = input[end] == b'\r';
            // A bare CR, or a CR that may pair with an LF in the next piece: `step`'s.
            if len > LINE_OCTETS_MAX || (crlf && input.get(end + 1) != Some(&b'\n')) {
                break;
            }
            // An empty line ends the header section.
            self.in_header &= len > 0;
            line_len = 0;
            if crlf {
                at = end + 2;
            } else {
                out.extend_from_slice(&input[copied..end]);
                out.extend_from_slice(b"\r\n");
                at = end + 1;
                copied = at;
            }
        }
        out.extend_from_slice(&input[copied..at]);
        if at > 0 {
            self.line_len = 0;
        }
        &input[at..]
    }

    /// Encodes one run of ordinary octets and the line break after it (or the piece's end),
    /// an octet at a time where it must: stuffing, breaking long lines, pairing CR and LF
    /// across pieces. Returns the rest of `input`.
    fn step<'a>(&mut self, mut input: &'a [u8], out: &mut Vec<u8>) -> &'a [u8] {
        if self.pending_cr {
            self.pending_cr = false;
            if input.first() == Some(&b'\n') {
                input = &input[1..];
            }
            return input;
        }
        let end = memchr::memchr2(b'\r', b'\n', input).unwrap_or(input.len());
        let mut run = &input[..end];
        while let Some(&b) = run.first() {
            if self.line_len == LINE_OCTETS_MAX {
                self.break_long_line(out);
            }
            if self.line_len == 0 && b == b'.' {
                out.push(b'.');
                self.stuffed += 1;
                self.line_len += 1;
            }
            let take = (LINE_OCTETS_MAX - self.line_len).min(run.len());
            out.extend_from_slice(&run[..take]);
            self.line_len += take;
            run = &run[take..];
        }
        let Some(&brk) = input.get(end) else {
            return &[];
        };
        // An empty line ends the header section.
        self.in_header &= self.line_len > 0;
        self.newline(out);
        self.pending_cr = brk == b'\r';
        &input[end + 1..]
    }

    /// Ends the data: a CRLF if the last line is unfinished, then `.` CRLF.
    pub fn finish(mut self, out: &mut Vec<u8>) {
        if self.line_len > 0 {
            self.newline(out);
        }
        out.extend_from_slice(b".\r\n");
    }

    /// Ends the data in `out`, which holds exactly what this writer wrote (the buffer it was
    /// given may have been reused, but it started empty), and returns it as `Data`.
    pub fn finish_data(self, mut out: Vec<u8>) -> Data {
        let (stuffed, eight_bit) = (self.stuffed, self.eight_bit);
        self.finish(&mut out);
        let size = out.len() as u64 - stuffed - b".\r\n".len() as u64;
        Data {
            bytes: out,
            size,
            eight_bit,
            signed: false,
        }
    }

    fn newline(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"\r\n");
        self.line_len = 0;
    }

    /// Breaks a line that reached the limit with more to come: a fold in the header (the
    /// space counts towards the next line, and means that line needs no dot-stuffing), a
    /// plain line break in the body.
    fn break_long_line(&mut self, out: &mut Vec<u8>) {
        let brk = if self.in_header {
            HEADER_BREAK
        } else {
            BODY_BREAK
        };
        out.extend_from_slice(brk);
        self.line_len = brk.len() - b"\r\n".len();
    }
}

/// The lines of a message as the DATA writer sends them: CRLF, a bare CR and a bare LF each
/// end one (the terminator is not part of the line); an unfinished last line counts.
pub fn message_lines(message: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = message;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let Some(end) = rest.iter().position(|&b| b == b'\r' || b == b'\n') else {
            return Some(std::mem::take(&mut rest));
        };
        let line = &rest[..end];
        let terminator = if rest[end..].starts_with(b"\r\n") {
            2
        } else {
            1
        };
        rest = &rest[end + terminator..];
        Some(line)
    })
}

/// A message in DATA form, ready for the wire: what `DataWriter` made of it, terminator
/// included, with what the MAIL command must declare about it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Data {
    bytes: Vec<u8>,
    /// The message's size as RFC 1870 counts it for `SIZE=`: the octets as transmitted
    /// (line endings canonical, folds included) without the dots of dot-stuffing and without
    /// the terminator.
    size: u64,
    eight_bit: bool,
    /// DKIM-signed: these exact octets must arrive (no 8-bit to 7-bit conversion anywhere).
    signed: bool,
}

impl Data {
    /// Encodes a whole message.
    pub fn encode(message: &[u8]) -> Data {
        let mut out = Vec::with_capacity(message.len() + message.len() / 64 + 16);
        let mut w = DataWriter::new();
        w.write(message, &mut out);
        w.finish_data(out)
    }

    /// The DATA content, dot-stuffed, ending with CRLF.CRLF.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }

    /// The message as one BDAT chunk (RFC 3030): the same octets without the terminator and
    /// without the dots of dot-stuffing, in the same buffer. A message with no line starting
    /// with a dot (nearly all) only loses its last three octets; otherwise each stuffed line
    /// gives its first dot back, in one pass.
    pub fn into_chunk(self) -> Vec<u8> {
        let mut b = self.bytes;
        b.truncate(b.len().saturating_sub(b".\r\n".len()));
        if b.len() as u64 == self.size {
            return b;
        }
        // Every line of the stuffed form that starts with a dot was stuffed: a dot that
        // starts a line of the message became two, and a header fold starts with a space.
        let (mut read, mut write) = (0, 0);
        while read < b.len() {
            if b[read] == b'.' {
                read += 1;
            }
            let end = memchr::memmem::find(&b[read..], b"\r\n").map_or(b.len(), |p| read + p + 2);
            b.copy_within(read..end, write);
            write += end - read;
            read = end;
        }
        b.truncate(write);
        b
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether the message has octets above 127 (BODY=8BITMIME where offered).
    pub fn eight_bit(&self) -> bool {
        self.eight_bit
    }

    /// Puts DKIM-Signature fields (`dkim::sign`'s: ASCII, folded, each ending in CRLF, no
    /// line starting with a dot) on top of the message, which from now on must not change.
    pub fn add_signatures(&mut self, fields: &[u8]) {
        if fields.is_empty() {
            return;
        }
        let mut bytes = crate::buffers::take();
        bytes.reserve(fields.len() + self.bytes.len());
        bytes.extend_from_slice(fields);
        bytes.extend_from_slice(&self.bytes);
        crate::buffers::give(std::mem::replace(&mut self.bytes, bytes));
        self.size += fields.len() as u64;
        self.signed = true;
    }

    /// Whether the message carries a signature that any change would break.
    pub fn signed(&self) -> bool {
        self.signed
    }
}

/// Encodes a whole message as DATA content, terminator included.
pub fn encode_data(message: &[u8]) -> Vec<u8> {
    Data::encode(message).into_bytes()
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
    fn long_header_lines_are_folded_and_long_body_lines_broken() {
        let subject = format!("Subject: {}", "a".repeat(2500 - 9));
        let out = encode_data(format!("{subject}\r\n\r\n{}", "b".repeat(2500)).as_bytes());
        let lines: Vec<&[u8]> = out.split(|&b| b == b'\n').collect();
        // The header line: a fold (CRLF SP) every 998 octets, so no new field can start.
        assert_eq!(lines[0].len(), LINE_OCTETS_MAX + 1);
        assert_eq!(lines[1].len(), LINE_OCTETS_MAX + 1);
        assert!(lines[1].starts_with(b" a"));
        assert_eq!(
            lines[2].len(),
            1 + (2500 - LINE_OCTETS_MAX - (LINE_OCTETS_MAX - 1)) + 1
        );
        assert!(lines[2].starts_with(b" a"));
        assert_eq!(lines[3], b"\r");
        // The body line: broken with a bare CRLF, as before.
        assert_eq!(lines[4].len(), LINE_OCTETS_MAX + 1);
        assert!(lines[5].starts_with(b"b"));
        assert_eq!(lines[5].len(), LINE_OCTETS_MAX + 1);
        assert_eq!(lines[6].len(), 2500 - 2 * LINE_OCTETS_MAX + 1);
        assert_eq!(&lines[7..], [&b".\r"[..], b""]);
    }

    #[test]
    fn size_counts_canonical_line_endings_but_not_dot_stuffing() {
        // 5 lines with bare LF: 5 octets more once canonical; two stuffed dots do not count.
        let data = Data::encode(b"a\n.b\nc\n..\ne\n");
        assert_eq!(data.bytes(), b"a\r\n..b\r\nc\r\n...\r\ne\r\n.\r\n");
        assert_eq!(data.size(), 12 + 5);
        assert_eq!(
            Data::encode(b"no newline").size(),
            12,
            "the CRLF the writer adds counts"
        );
    }

    #[test]
    fn eight_bit_content_is_noticed_wherever_it_is() {
        assert!(!Data::encode(b"Subject: plain\r\n\r\nascii only\r\n").eight_bit());
        assert!(Data::encode("Subject: caf\u{e9}\r\n\r\nx".as_bytes()).eight_bit());
        // In a piece of its own, after a line break, and at the very end.
        let mut out = Vec::new();
        let mut w = DataWriter::new();
        for piece in [&b"a\r\n"[..], b"\r\n", b"b\xff"] {
            w.write(piece, &mut out);
        }
        assert!(w.finish_data(out).eight_bit());
    }

    #[test]
    fn long_lines_are_broken() {
        // A message that opens with an empty line has no header section: all body.
        let out = encode_data(format!("\r\n{}", "a".repeat(2500)).as_bytes());
        let out = &out[2..];
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

    /// The byte-at-a-time writer `write` replaced, kept as the specification it must match.
    fn reference_encode(input: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut line_len, mut pending_cr, mut in_header) = (0usize, false, true);
        for &b in input {
            if std::mem::take(&mut pending_cr) && b == b'\n' {
                continue;
            }
            match b {
                b'\r' | b'\n' => {
                    in_header &= line_len > 0;
                    out.extend_from_slice(b"\r\n");
                    line_len = 0;
                    pending_cr = b == b'\r';
                }
                _ => {
                    if line_len == LINE_OCTETS_MAX && in_header {
                        out.extend_from_slice(b"\r\n ");
                        line_len = 1;
                    } else if line_len == LINE_OCTETS_MAX {
                        out.extend_from_slice(b"\r\n");
                        line_len = 0;
                    }
                    if line_len == 0 && b == b'.' {
                        out.push(b'.');
                        line_len += 1;
                    }
                    out.push(b);
                    line_len += 1;
                }
            }
        }
        if line_len > 0 {
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(b".\r\n");
        out
    }

    #[test]
    fn message_lines_end_at_crlf_lf_and_bare_cr() {
        let lines: Vec<&[u8]> = message_lines(b"a\r\nb\nc\rd\r\re").collect();
        assert_eq!(lines, [&b"a"[..], b"b", b"c", b"d", b"", b"e"]);
        assert_eq!(message_lines(b"").count(), 0);
        assert_eq!(message_lines(b"x\r\n").collect::<Vec<_>>(), [&b"x"[..]]);
    }

    /// The field name (text before `:`) of every line that starts a header field, in order;
    /// `None` for a field line with no colon. Continuation lines (leading SP or HT) and
    /// everything from the first empty line on are skipped.
    fn field_names<'a>(lines: impl IntoIterator<Item = &'a [u8]>) -> Vec<Option<&'a [u8]>> {
        lines
            .into_iter()
            .take_while(|l| !l.is_empty())
            .filter(|l| !l.starts_with(b" ") && !l.starts_with(b"\t"))
            .map(|l| l.iter().position(|&b| b == b':').map(|i| &l[..i]))
            .collect()
    }

    /// The output's lines up to the terminator, CRLF removed and dot-stuffing undone.
    fn received_lines(out: &[u8]) -> Vec<&[u8]> {
        let body = &out[..out.len() - b".\r\n".len()];
        let mut lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
        lines.pop();
        lines
            .into_iter()
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            .map(|l| l.strip_prefix(b".").unwrap_or(l))
            .collect()
    }

    /// Header-like input: fields with short names and values of any length, some spaces,
    /// dots and colons, in a mix of line endings, then a body.
    fn header_like_input() -> impl Strategy<Value = Vec<u8>> {
        let value = proptest::collection::vec(
            prop_oneof![
                400 => Just(b'x'),
                8 => Just(b' '),
                4 => Just(b':'),
                4 => Just(b'.'),
                2 => Just(b'\t'),
            ],
            0..2500,
        );
        let field =
            ("[A-Za-z.][A-Za-z-]{0,10}", value, 0..3usize).prop_map(|(name, value, end)| {
                let mut line = name.into_bytes();
                line.push(b':');
                line.extend(value);
                line.extend_from_slice([&b"\r\n"[..], b"\n", b"\r"][end]);
                line
            });
        (proptest::collection::vec(field, 0..5), input_bytes())
            .prop_map(|(fields, body)| [fields.concat(), b"\r\n".to_vec(), body].concat())
    }

    proptest! {
        #[test]
        fn matches_the_byte_at_a_time_reference(input in proptest::collection::vec(prop_oneof![Just(b'.'), Just(b'x'), Just(b'\n'), Just(b'\r')], 0..3000), cuts in proptest::collection::vec(any::<usize>(), 0..5)) {
            prop_assert_eq!(encode_in_pieces(&input, &cuts), reference_encode(&input));
        }

        #[test]
        fn matches_the_reference_on_long_lines(input in proptest::collection::vec(prop_oneof![600 => Just(b'x'), 2 => Just(b'.'), 1 => Just(b'\n'), 1 => Just(b'\r')], 0..6000), cuts in proptest::collection::vec(any::<usize>(), 0..5)) {
            prop_assert_eq!(encode_in_pieces(&input, &cuts), reference_encode(&input));
        }

        #[test]
        fn any_input_yields_exactly_one_end_of_data(input in input_bytes(), cuts in proptest::collection::vec(any::<usize>(), 0..5)) {
            check_stream_properties(&input, &cuts)?;
        }

        #[test]
        fn header_fields_survive_long_lines(input in header_like_input(), cuts in proptest::collection::vec(any::<usize>(), 0..5)) {
            prop_assert_eq!(encode_in_pieces(&input, &cuts), reference_encode(&input));
            check_stream_properties(&input, &cuts)?;
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

        #[test]
        fn a_chunk_is_the_data_unstuffed_without_its_terminator(input in input_bytes()) {
            let data = Data::encode(&input);
            let size = data.size();
            let stuffed = data.bytes().to_vec();
            let chunk = data.into_chunk();
            // What a receiver makes of the DATA form: each line's stuffing dot removed.
            let mut want = Vec::new();
            for line in stuffed[..stuffed.len() - 3].split_inclusive(|&b| b == b'\n') {
                want.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
            }
            prop_assert_eq!(&chunk, &want);
            prop_assert_eq!(chunk.len() as u64, size, "BDAT's count is SIZE's");
        }
    }

    #[test]
    fn a_chunk_unstuffs_lines_in_place() {
        let chunk = Data::encode(b"a\n.b\n..\n.").into_chunk();
        assert_eq!(chunk, b"a\r\n.b\r\n..\r\n.\r\n");
        let plain = Data::encode(b"Subject: x\n\nbody\n");
        assert_eq!(plain.into_chunk(), b"Subject: x\r\n\r\nbody\r\n");
        assert_eq!(Data::encode(b"").into_chunk(), b"");
    }

    /// What must hold for any input and any chunking: the same output as one `write`;
    /// CRLF line endings only; every line within the limit; exactly one end-of-data; every
    /// line that starts with a dot stuffed; and the header fields of the input, no more:
    /// a long header line is folded, never split into a new field.
    fn check_stream_properties(input: &[u8], cuts: &[usize]) -> Result<(), TestCaseError> {
        let out = encode_in_pieces(input, cuts);
        prop_assert_eq!(&out, &encode_data(input), "split points change nothing");
        // The server reads from just after the DATA command's CRLF.
        let mut stream = b"\r\n".to_vec();
        stream.extend_from_slice(&out);
        let ends = stream.windows(5).filter(|w| w == b"\r\n.\r\n").count();
        prop_assert_eq!(ends, 1);
        prop_assert!(stream.ends_with(b"\r\n.\r\n"));
        for (i, &b) in out.iter().enumerate() {
            if b == b'\n' {
                prop_assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {}", i);
            }
            if b == b'\r' {
                prop_assert!(out.get(i + 1) == Some(&b'\n'), "bare CR at {}", i);
            }
        }
        for line in out.split(|&b| b == b'\n') {
            prop_assert!(line.len() <= LINE_OCTETS_MAX + 1);
        }
        let data = &out[..out.len() - b".\r\n".len()];
        for line in data.split(|&b| b == b'\n') {
            prop_assert!(
                !line.starts_with(b".") || line.starts_with(b".."),
                "unstuffed dot"
            );
        }
        prop_assert_eq!(
            field_names(received_lines(&out)),
            field_names(message_lines(input))
        );
        Ok(())
    }
}
