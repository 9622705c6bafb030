//! The gateway's parsers of outside bytes: `gateway::proxy::parse` (a PROXY protocol header
//! from a load balancer) and what `dsn::build` makes of a client's DSN parameters and a
//! receiver's reply.
//!
//! Input: a chunking spec (`chunks`), then the bytes. The PROXY header is fed as it would
//! arrive, growing piece by piece; the same bytes, split in three at fixed points, are a
//! DSN's ENVID, ORCPT and diagnostic.
//!
//! Properties:
//! - neither panics;
//! - the parser's answer for a prefix is "need more", or the same header or error as for
//!   the whole input: more bytes never change a decided answer; it decides within its
//!   bounds (107 octets for v1, 16 + `V2_BODY_BYTES_MAX` for v2) and a header never claims
//!   more bytes than it was given;
//! - a report's lines are at most 998 octets, all ASCII, and it has exactly one
//!   Final-Recipient and one Original-Envelope-Id at most: no parameter adds a line.

use crate::chunks;
use spate::dsn::{build, Action, RecipientReport, Report};
use spate::gateway::proxy::{parse, V1_LINE_BYTES_MAX, V2_BODY_BYTES_MAX};

pub fn check(input: &[u8]) {
    let (sizes, payload) = chunks::split_spec(input);
    check_proxy(sizes, payload);
    check_dsn(payload);
}

fn check_proxy(sizes: &[u8], payload: &[u8]) {
    let whole = parse(payload);
    let mut seen = 0;
    for piece in chunks::pieces(sizes, payload) {
        seen += piece.len();
        match parse(&payload[..seen]) {
            Ok(None) => {
                let bound = if payload.first() == Some(&b'P') {
                    V1_LINE_BYTES_MAX
                } else {
                    16 + V2_BODY_BYTES_MAX
                };
                assert!(seen < bound, "undecided after {seen} bytes");
            }
            decided => {
                assert_eq!(decided, whole, "a decided prefix changed its answer");
                if let Ok(Some(h)) = decided {
                    assert!(h.used <= seen, "the header claims bytes it was not given");
                }
                return;
            }
        }
    }
}

fn check_dsn(payload: &[u8]) {
    let text = String::from_utf8_lossy(payload);
    let cut = |i: usize| text.char_indices().nth(i).map_or(text.len(), |(b, _)| b);
    let (a, b) = (
        cut(text.chars().count() / 3),
        cut(2 * text.chars().count() / 3),
    );
    let recipients = [RecipientReport {
        recipient: "r@one.example".into(),
        orcpt: text[a..b].to_string(),
        action: Action::Failed,
        status: "5.1.1".into(),
        remote_mta: "mx.one.example".into(),
        diagnostic: text[b..].to_string(),
        reason: text[b..].to_string(),
    }];
    let report = build(&Report {
        reporting_mta: "mta.example",
        to: "sender@acme.example",
        envid: &text[..a],
        arrival_unix_ms: 1_700_000_000_000,
        recipients: &recipients,
        original: b"Subject: x\r\n\r\nbody\r\n",
        headers_only: false,
        now_unix_ms: 1_700_000_100_000,
        unique: 7,
    });
    assert!(report.is_ascii(), "a report with non-ASCII bytes");
    let report = String::from_utf8(report).unwrap();
    for line in report.split("\r\n") {
        assert!(line.len() <= 998, "a line of {} octets", line.len());
        assert!(
            !line.contains('\n') && !line.contains('\r'),
            "a bare line ending"
        );
    }
    assert_eq!(report.matches("\r\nFinal-Recipient:").count(), 1);
    assert!(report.matches("\r\nOriginal-Envelope-Id:").count() <= 1);
    assert!(report.matches("\r\nOriginal-Recipient:").count() <= 1);
}
