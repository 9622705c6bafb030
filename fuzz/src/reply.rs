//! `smtp::reply::ReplyParser` fed a server's bytes in any chunking.
//!
//! Input: a chunking spec (`chunks`), then the bytes the server sends. `check_alphabet`
//! first maps every payload byte into the SMTP reply alphabet (digits, space, hyphen, CR, LF,
//! dot and a few letters), as stalwartlabs/smtp-proto's fuzzer does, so that most inputs are
//! nearly valid replies and reach multi-line, pipelined and bound-hitting states.
//!
//! Properties:
//! - it never panics;
//! - between calls it buffers at most `LINE_BYTES_MAX` bytes (a reply's lines are bounded by
//!   `REPLY_LINES_MAX`, each line by `LINE_BYTES_MAX`);
//! - every reply has a code in 200..=599, 1 to `REPLY_LINES_MAX` lines, and an enhanced code
//!   only of its own class;
//! - the chunking changes nothing: the same replies, then the same error (if any), as when
//!   every byte arrives at once.

use crate::chunks;
use spate::smtp::reply::{Reply, ReplyParser, LINE_BYTES_MAX, REPLY_LINES_MAX};

/// What the fuzzer's bytes are mapped to. Digits 2 to 5 come twice (they start every valid
/// reply), so do CR and LF.
const ALPHABET: &[u8] = b"0123456789234522334455 --\r\n\r\n\r\n.ESMTPok";

pub fn check_raw(input: &[u8]) {
    let (sizes, payload) = chunks::split_spec(input);
    check_stream(sizes, payload);
}

pub fn check_alphabet(input: &[u8]) {
    let (sizes, payload) = chunks::split_spec(input);
    let mapped: Vec<u8> = payload
        .iter()
        .map(|&b| ALPHABET[usize::from(b) % ALPHABET.len()])
        .collect();
    check_stream(sizes, &mapped);
}

/// The replies parsed, then the error that stopped the parser, if one did.
type Outcome = (Vec<Reply>, Option<String>);

fn check_stream(sizes: &[u8], payload: &[u8]) {
    let mut parser = ReplyParser::new();
    let mut replies = Vec::new();
    let mut error = None;
    'pieces: for piece in chunks::pieces(sizes, payload) {
        parser.push(piece);
        loop {
            match parser.next_reply() {
                Ok(Some(reply)) => {
                    check_reply(&reply);
                    replies.push(reply);
                }
                Ok(None) => {
                    assert!(
                        parser.buffered() <= LINE_BYTES_MAX,
                        "{} bytes buffered waiting for a line end",
                        parser.buffered()
                    );
                    break;
                }
                Err(e) => {
                    error = Some(e.to_string());
                    break 'pieces;
                }
            }
        }
    }
    let whole = parse_at_once(payload);
    assert_eq!(
        (replies, error),
        whole,
        "the chunking changed what was parsed"
    );
}

fn parse_at_once(payload: &[u8]) -> Outcome {
    let mut parser = ReplyParser::new();
    parser.push(payload);
    let mut replies = Vec::new();
    loop {
        match parser.next_reply() {
            Ok(Some(reply)) => replies.push(reply),
            Ok(None) => return (replies, None),
            Err(e) => return (replies, Some(e.to_string())),
        }
    }
}

fn check_reply(reply: &Reply) {
    assert!((200..=599).contains(&reply.code), "code {}", reply.code);
    assert!(
        (1..=REPLY_LINES_MAX).contains(&reply.lines.len()),
        "{} lines",
        reply.lines.len()
    );
    for line in &reply.lines {
        // Each invalid UTF-8 byte becomes U+FFFD, 3 bytes.
        assert!(
            line.len() <= 3 * LINE_BYTES_MAX,
            "line of {} bytes",
            line.len()
        );
    }
    if let Some(e) = reply.enhanced {
        assert_eq!(u16::from(e.class), reply.code / 100, "{reply:?}");
    }
    let classes = [
        reply.is_positive(),
        reply.is_intermediate(),
        reply.is_transient(),
        reply.is_permanent(),
    ];
    assert_eq!(classes.iter().filter(|&&c| c).count(), 1, "{reply:?}");
    let _ = reply.to_log_string();
}
