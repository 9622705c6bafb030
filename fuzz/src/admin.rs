//! The admin API's parsers of outside bytes: `admin::http::parse_head` (a request head from
//! any client that reaches the admin or the one-click listener), `percent_decode`, and
//! `admin::holds::Target::parse` (the target of an operator command, from the API's JSON).
//!
//! Input: a chunking spec (`chunks`), then the bytes, fed as a socket would deliver them.
//!
//! Properties:
//! - nothing panics;
//! - `parse_head` answers "need more" only below `HEAD_BYTES_MAX`; once it decides (a head,
//!   or an error), more bytes never change the answer, and a head never claims bytes it was
//!   not given; a parsed path starts with `/`; an error's response is a whole HTTP reply;
//! - `percent_decode` never yields more characters than it was given;
//! - a target that parses prints as text that parses back to the same target.

use crate::chunks;
use spate::admin::holds::Target;
use spate::admin::http::{parse_head, percent_decode, HEAD_BYTES_MAX};

pub fn check(input: &[u8]) {
    let (sizes, payload) = chunks::split_spec(input);
    let whole = parse_head(payload);
    let mut seen = 0;
    for piece in chunks::pieces(sizes, payload) {
        seen += piece.len();
        match parse_head(&payload[..seen]) {
            Ok(None) => assert!(seen < HEAD_BYTES_MAX, "undecided after {seen} bytes"),
            decided => {
                assert_eq!(decided, whole, "a decided prefix changed its answer");
                match decided {
                    Ok(Some((req, used))) => {
                        assert!(used <= seen, "the head claims bytes it was not given");
                        assert!(req.path.starts_with('/'), "path {:?}", req.path);
                        let _ = req.query_value("target");
                    }
                    Err(e) => {
                        let mut out = Vec::new();
                        e.response().write(false, true, &mut out);
                        assert!(out.starts_with(b"HTTP/1.1 4"), "not a 4xx reply");
                    }
                    Ok(None) => unreachable!("matched above"),
                }
                break;
            }
        }
    }
    let text = String::from_utf8_lossy(payload);
    let decoded = percent_decode(&text);
    assert!(decoded.chars().count() <= text.chars().count());
    if let Ok(t) = Target::parse(&text) {
        assert_eq!(
            Target::parse(&t.to_string()),
            Ok(t),
            "a target's text reads back"
        );
    }
}
