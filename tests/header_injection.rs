//! Header injection through long values, end to end through the real binary and a sink on
//! loopback: a value that would have pushed a `Reply-To:` to the start of a line is refused
//! at intake, a long value that can be folded arrives folded in the one field it belongs to,
//! and a pickup message with a header line over the limit goes to `bad/` with the line named.

mod common;

use common::sink::Sink;
use common::*;
use std::collections::HashMap;
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(30);

const TEMPLATE_HEADER: &str = r#"{"campaign":"c","from":"bounces@acme.example","template":"From: news@acme.example\r\nTo: {{ to }}\r\nSubject: {{ s }}\r\n\r\nHello\r\n"}"#;

/// The field names of a received message's header section, continuation lines skipped.
fn field_names(message: &str) -> Vec<String> {
    let header = message.split("\r\n\r\n").next().unwrap_or_default();
    header
        .split("\r\n")
        .filter(|l| !l.starts_with([' ', '\t']))
        .map(|l| l.split(':').next().unwrap_or_default().to_string())
        .collect()
}

/// A header's value as a reader sees it: folds removed (RFC 5322 2.2.3).
fn unfolded_value(message: &str, name: &str) -> String {
    let unfolded = message.replace("\r\n ", " ").replace("\r\n\t", "\t");
    let prefix = format!("{name}: ");
    let line = unfolded
        .split("\r\n")
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no {name} field in {message:?}"));
    line[prefix.len()..].to_string()
}

#[test]
fn long_values_cannot_add_header_fields() {
    let sink = Sink::start(HashMap::new());
    let extra = format!(
        "[delivery]\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[[routes]]\ndomain = \"*.test\"\nhosts = [\"{}\"]\n",
        sink.addr
    );
    let env = Env::new(1, "", &extra);
    let engine = env.start();

    // 989 octets after "Subject: " used to put "Reply-To:" at the start of a line.
    let attack = format!("{}Reply-To: evil@attacker.example", "A".repeat(989));
    // The same with a space early on: it can be folded, so it is sent, folded.
    let foldable = format!("hello {}Reply-To: evil@attacker.example", "A".repeat(983));
    let batch = format!(
        "{TEMPLATE_HEADER}\n\
         {{\"to\":\"eve@a.test\",\"vars\":{{\"s\":\"{attack}\"}}}}\n\
         {{\"to\":\"fold@a.test\",\"vars\":{{\"s\":\"{foldable}\"}}}}\n\
         {{\"to\":\"short@a.test\",\"vars\":{{\"s\":\"hi\"}}}}\n"
    );
    env.drop_input("batch.jsonl", batch.as_bytes());
    let eml = format!(
        "x-sender: <bounces@acme.example>\r\nx-receiver: <p@a.test>\r\n\r\nFrom: news@acme.example\r\nSubject: {}\r\n\r\nHello\r\n",
        "x".repeat(1191)
    );
    env.drop_input("long.eml", eml.as_bytes());

    wait_final(&env, &engine, 2, SETTLE);
    wait_until(SETTLE, "the pickup refused", || {
        env.spool_files("bad").contains(&"long.eml.err".to_string())
    });
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));

    let rejected: Vec<serde_json::Value> = env
        .log_records()
        .into_iter()
        .filter(|r| r["type"] == "Rejected")
        .collect();
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert_eq!(rejected[0]["recipient"], "eve@a.test");
    assert_eq!(
        rejected[0]["response"],
        "line 2: variable \"s\" makes header line \"Subject\" 1029 octets long with no space to fold at (limit 998)"
    );
    let err = std::fs::read_to_string(env.path("spool/bad/long.eml.err")).unwrap();
    assert_eq!(
        err.trim_end(),
        "line 5: header line is 1200 octets, over the 998-octet limit of RFC 5322 \
         (pickup messages are sent as they are, not rewritten)"
    );

    let got = sink.received.lock().unwrap();
    let mut delivered: Vec<&String> = got.deliveries.keys().collect();
    delivered.sort();
    assert_eq!(delivered, ["fold@a.test", "short@a.test"]);
    let message = &got.bodies["fold@a.test"];
    let names = field_names(message);
    assert!(!names.iter().any(|n| n == "Reply-To"), "{names:?}");
    assert_eq!(names.iter().filter(|n| *n == "Subject").count(), 1);
    assert_eq!(unfolded_value(message, "Subject"), foldable);
    assert!(message.split("\r\n").all(|l| l.len() <= 998), "{message:?}");
    drop(got);
    sink.stop();
}
