//! `smtp::data::DataWriter` on any message bytes, written in any chunking.
//!
//! Input: a chunking spec (`chunks`), then the message.
//!
//! Properties of the DATA stream (as the server reads it, from just after `DATA` CRLF):
//! - the chunking changes nothing: the output equals `encode_data` of the whole message;
//! - CRLF line endings only (no bare CR, no bare LF);
//! - every line at most 998 octets before its CRLF;
//! - exactly one `CRLF.CRLF`, at the very end;
//! - dot-stuffed: every line that starts with a dot starts with two, so no line the server
//!   unstuffs is a lone dot;
//! - the header is never split into more fields: the header field names (lines before the
//!   first empty line that do not start with SP or HT; text before `:`) the server reads are
//!   those of the input with its line endings made canonical (a name too long to fit on one
//!   998-octet line compares as "long");
//! - `Data`'s size is the output less the stuffed dots and the terminator, and it is 8-bit
//!   exactly when the input has an octet above 127.

use crate::chunks;
use spate::smtp::data::{message_lines, Data, DataWriter, LINE_OCTETS_MAX};

pub fn check(input: &[u8]) {
    let (sizes, message) = chunks::split_spec(input);
    let mut out = Vec::new();
    let mut writer = DataWriter::new();
    for piece in chunks::pieces(sizes, message) {
        writer.write(piece, &mut out);
    }
    let data = writer.finish_data(out);
    let whole = Data::encode(message);
    assert!(data == whole, "the chunking changed the output");
    assert_eq!(data.eight_bit(), !message.is_ascii(), "8-bit flag");
    let size = data.size();
    let out = data.into_bytes();

    let mut stream = b"\r\n".to_vec();
    stream.extend_from_slice(&out);
    let ends = stream.windows(5).filter(|w| w == b"\r\n.\r\n").count();
    assert_eq!(ends, 1, "end-of-data sequences in the stream");
    assert!(
        stream.ends_with(b"\r\n.\r\n"),
        "the stream does not end with CRLF.CRLF"
    );
    for (i, &b) in out.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && out[i - 1] == b'\r', "bare LF at {i}");
        }
        if b == b'\r' {
            assert_eq!(out.get(i + 1), Some(&b'\n'), "bare CR at {i}");
        }
    }
    let lines = output_lines(&out);
    let mut stuffed = 0;
    for line in &lines {
        assert!(
            line.len() <= LINE_OCTETS_MAX,
            "line of {} octets",
            line.len()
        );
        if line.starts_with(b".") {
            assert!(line.starts_with(b".."), "unstuffed dot");
            stuffed += 1;
        }
    }
    assert_eq!(
        size,
        (out.len() - b".\r\n".len() - stuffed) as u64,
        "SIZE counts the message as transmitted, without stuffing"
    );
    let received: Vec<&[u8]> = lines
        .iter()
        .map(|l| l.strip_prefix(b".").unwrap_or(l))
        .collect();
    assert_eq!(
        field_names(&received),
        field_names(&message_lines(message).collect::<Vec<_>>()),
        "the header fields changed"
    );
}

/// The output's lines before the terminator, without their CRLF (dot-stuffing kept).
fn output_lines(out: &[u8]) -> Vec<&[u8]> {
    let body = &out[..out.len() - b".\r\n".len()];
    let mut lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    lines.pop();
    lines
        .into_iter()
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .collect()
}

/// A header field's name as it can be compared before and after the writer.
#[derive(Debug, PartialEq, Eq)]
pub enum FieldName<'a> {
    /// The text before the colon.
    Name(&'a [u8]),
    /// A line with no colon.
    NoColon,
    /// The colon (if any) is not within the first line's 997 octets, so a fold may come
    /// before it: the name cannot be read off the first line.
    Long,
}

/// The names of the header fields in `lines` (unstuffed, without line endings), in order:
/// lines before the first empty one that do not start with SP or HT.
pub fn field_names<'a>(lines: &[&'a [u8]]) -> Vec<FieldName<'a>> {
    // A dot-started line takes one octet more on the wire, so 997 octets always fit.
    const FITS: usize = LINE_OCTETS_MAX - 1;
    lines
        .iter()
        .take_while(|l| !l.is_empty())
        .filter(|l| !l.starts_with(b" ") && !l.starts_with(b"\t"))
        .map(|l| match l.iter().position(|&b| b == b':') {
            Some(i) if i < FITS => FieldName::Name(&l[..i]),
            _ if l.len() >= FITS => FieldName::Long,
            _ => FieldName::NoColon,
        })
        .collect()
}
