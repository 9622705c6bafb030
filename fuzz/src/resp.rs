//! `cluster::resp::Parser` fed a Redis server's bytes in any chunking.
//!
//! Input: a chunking spec (`chunks`), then the bytes the server sends.
//!
//! Properties:
//! - it never panics;
//! - while waiting for the rest of a reply it holds at most `REPLY_BYTES_MAX` bytes (past
//!   that it gives up with an error);
//! - every reply re-encodes to bytes that parse to the same reply;
//! - the chunking changes nothing: the same replies, then the same error (if any), as when
//!   every byte arrives at once.

use crate::chunks;
use spate::cluster::resp::{Parser, Value, REPLY_BYTES_MAX};

type Outcome = (Vec<Value>, Option<String>);

pub fn check(input: &[u8]) {
    let (sizes, payload) = chunks::split_spec(input);
    let chunked = run(chunks::pieces(sizes, payload).into_iter());
    let whole = run(std::iter::once(payload));
    assert_eq!(chunked, whole, "the chunking changed the replies");
    for v in &chunked.0 {
        let mut wire = Vec::new();
        v.encode(&mut wire);
        let (again, err) = run(std::iter::once(&wire[..]));
        assert_eq!(err, None, "a reply's own encoding does not parse: {v:?}");
        assert_eq!(
            again,
            std::slice::from_ref(v),
            "a reply does not survive its encoding"
        );
    }
}

fn run<'a>(pieces: impl Iterator<Item = &'a [u8]>) -> Outcome {
    let mut parser = Parser::new();
    let mut replies = Vec::new();
    for piece in pieces {
        parser.push(piece);
        loop {
            match parser.next_reply() {
                Ok(Some(v)) => replies.push(v),
                Ok(None) => {
                    assert!(
                        parser.buffered() <= REPLY_BYTES_MAX,
                        "{} bytes buffered",
                        parser.buffered()
                    );
                    break;
                }
                Err(e) => return (replies, Some(e.0)),
            }
        }
    }
    (replies, None)
}
