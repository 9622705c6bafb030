//! Hostile receivers through the real binary: a server that misbehaves costs only its own
//! destination. Whatever bytes it sends, the engine never exits, its recipients are retried
//! (each failure a `TransientFailure` in the log), and the other destinations of the same run
//! are delivered.

mod common;

use common::hostile::{polite, send, Event, Hostile};
use common::sink::Sink;
use common::*;
use std::collections::HashMap;
use std::time::Duration;

/// A campaign of `per_domain` recipients at each of `domains`.
fn campaign_for(domains: &[&str], per_domain: usize) -> Vec<u8> {
    let mut s = format!("{HEADER}\n");
    for d in domains {
        for i in 0..per_domain {
            s.push_str(&format!(
                "{{\"to\":\"user{i}@{d}\",\"vars\":{{\"first_name\":\"N{i}\"}}}}\n"
            ));
        }
    }
    s.into_bytes()
}

fn routes(pairs: &[(&str, std::net::SocketAddr)]) -> String {
    pairs
        .iter()
        .map(|(d, a)| format!("[[routes]]\ndomain = \"{d}\"\nhosts = [\"{a}\"]\n"))
        .collect()
}

fn transient_failures(env: &Env, domain: &str) -> Vec<serde_json::Value> {
    env.log_records()
        .into_iter()
        .filter(|r| r["type"] == "TransientFailure" && r["domain"] == domain)
        .collect()
}

/// The remote crash of the hostile-input review: EHLO answered with `250` and, in the same
/// write, a 421 or an unexpected line. Before the fix the shard panicked on the first
/// transaction (exit 70), and again at every restart since the recipient stayed queued.
#[test]
fn a_reply_behind_the_ehlo_answer_costs_only_its_own_destination() {
    let closing = Hostile::start(|e: &Event<'_>| match e {
        Event::Command(c) if c.starts_with("EHLO") => {
            vec![send("250 t\r\n421 4.7.0 bye\r\n")]
        }
        other => polite(other),
    });
    let garbled = Hostile::start(|e: &Event<'_>| match e {
        Event::Command(c) if c.starts_with("EHLO") => vec![send("250 t\r\n220 t\r\n")],
        other => polite(other),
    });
    let sink = Sink::start(HashMap::new());
    let extra = format!(
        "[delivery]\nretry_first = \"1s\"\nretry_max_interval = \"2s\"\nmax_age = \"1h\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n{}",
        routes(&[
            ("closing.test", closing.addr),
            ("garbled.test", garbled.addr),
            ("good.test", sink.addr),
        ])
    );
    let env = Env::new(2, "", &extra);
    let mut engine = env.start();
    env.drop_input(
        "c.jsonl",
        &campaign_for(&["closing.test", "garbled.test", "good.test"], 10),
    );
    wait_final(&env, &engine, 10, Duration::from_secs(60));
    // The garbled server is retried every second or two: wait for a second round of failures,
    // each counted as an attempt.
    wait_until(Duration::from_secs(30), "retries of garbled.test", || {
        transient_failures(&env, "garbled.test")
            .iter()
            .any(|r| r["attempt"] == 2)
    });
    wait_until(Duration::from_secs(30), "a failure of closing.test", || {
        transient_failures(&env, "closing.test").len() >= 10
    });
    assert_eq!(engine.exited(), None, "the engine is still running");
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));

    let got = sink.received.lock().unwrap();
    assert_eq!(
        got.deliveries.len(),
        10,
        "every good.test recipient delivered"
    );
    assert!(got.deliveries.values().all(|&n| n == 1));
    drop(got);
    let records = env.log_records();
    for r in &records {
        let domain = r["domain"].as_str().unwrap_or("");
        if domain != "good.test" {
            assert!(
                matches!(r["type"].as_str(), Some("Reception" | "TransientFailure")),
                "{r}"
            );
        }
    }
    let garbled_failure = &transient_failures(&env, "garbled.test")[0];
    assert_eq!(garbled_failure["code"], 0, "{garbled_failure}");
    let closing_failure = &transient_failures(&env, "closing.test")[0];
    assert_eq!(closing_failure["code"], 421, "{closing_failure}");
    assert_eq!(closing_failure["attempt"], 1, "{closing_failure}");
    closing.stop();
    garbled.stop();
    sink.stop();
    // The queue holds exactly the recipients of the two hostile destinations, and a restart
    // does not crash either.
    let mut queued = env.queued_recipients();
    queued.sort();
    assert_eq!(queued.len(), 20, "{queued:?}");
    assert!(queued.iter().all(|r| !r.ends_with("@good.test")));
}
