//! What a node reads from Redis besides RESP itself: other nodes' cut messages, firings,
//! holds, and suppression entries in stream replies. All of it is another process's word.
//!
//! Input: a selector byte, then the bytes of the chosen kind:
//! - 0: a pub/sub message (`cluster::Cut::decode`);
//! - 1: a scope line, then a firing's value (`cluster::state::decode_firing`);
//! - 2: hash fields, one `FIELD\tVALUE` a line (`cluster::state::merge_holds`);
//! - 3: a Redis server's bytes, as replies to XREAD (`cluster::sync::stream_entries`,
//!   `remote_entry`).
//!
//! Properties: it never panics; a decoded cut has a factor in (0.1, 1) and re-encodes to
//! itself; a firing's reply and rule are bounded and it ends no sooner than it began; merged
//! holds are the cluster's kind only (no source, no scope at a source), each from a field that
//! names its target, within `RULES_MAX`; a suppression entry taken is a valid address or
//! `@domain` with a valid tenant.

use spate::admin::holds::{Holds, RULES_MAX};
use spate::cluster::state::{decode_firing, merge_holds, shared_holds, shared_target};
use spate::cluster::{resp, sync, Cut};
use std::collections::BTreeMap;

pub fn check(input: &[u8]) {
    let Some((&selector, rest)) = input.split_first() else {
        return;
    };
    match selector % 4 {
        0 => {
            if let Some(cut) = Cut::decode(rest) {
                assert!(cut.factor >= 0.1 && cut.factor < 1.0, "{cut:?}");
                assert_eq!(Cut::decode(cut.encode().as_bytes()), Some(cut));
            }
        }
        1 => {
            let text = String::from_utf8_lossy(rest);
            let (scope, value) = text.split_once('\n').unwrap_or((&text, ""));
            if let Some(f) = decode_firing(scope, value) {
                assert!(f.until_unix_ms >= f.since_unix_ms);
                assert!(f.reply.chars().count() <= 300 && f.rule.chars().count() <= 200);
                assert!(!f.scope.contains('@'));
            }
        }
        2 => {
            let text = String::from_utf8_lossy(rest);
            let remote: BTreeMap<String, String> = text
                .lines()
                .filter_map(|l| l.split_once('\t'))
                .map(|(f, v)| (f.to_string(), v.to_string()))
                .collect();
            let merged = merge_holds(&Holds::default(), &remote, 0);
            assert!(merged.suspended.len() <= RULES_MAX && merged.bounces.len() <= RULES_MAX);
            for r in merged.suspended.iter().chain(&merged.bounces) {
                assert!(shared_target(&r.target), "{r:?}");
            }
            for field in shared_holds(&merged).keys() {
                assert!(remote.contains_key(field), "{field} came from nowhere");
            }
        }
        _ => {
            let mut parser = resp::Parser::new();
            parser.push(rest);
            while let Ok(Some(reply)) = parser.next_reply() {
                for (_, _, line) in sync::stream_entries(&reply) {
                    if let Some(e) = sync::remote_entry(&line) {
                        assert!(spate::suppression::manage::parse_entry(&e.entry).is_ok());
                        assert!(spate::suppression::manage::check_tenant(&e.tenant).is_ok());
                    }
                }
            }
        }
    }
}
