//! Hostile receivers through the real binary: a server that misbehaves costs only its own
//! destination. Whatever bytes it sends, the engine never exits, its recipients are retried
//! (each failure a `TransientFailure` in the log), and the other destinations of the same run
//! are delivered.

mod common;

use common::hostile::{assert_received_exactly, polite, send, unstuff, Act, Event, Hostile};
use common::sink::Sink;
use common::*;
use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
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

/// A pickup for `rcpt` whose message is `body_bytes` long, and the message itself.
fn pickup_for(rcpt: &str, body_bytes: usize) -> (Vec<u8>, Vec<u8>) {
    let mut message =
        format!("From: news@acme.example\r\nTo: {rcpt}\r\nSubject: whole or nothing\r\n\r\n")
            .into_bytes();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz.0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ\r\n";
    while message.len() < body_bytes {
        message.extend_from_slice(line);
    }
    let mut file =
        format!("x-sender: <bounces@acme.example>\r\nx-receiver: <{rcpt}>\r\n").into_bytes();
    file.extend_from_slice(&message);
    (file, message)
}

fn records_for(env: &Env, rcpt: &str) -> Vec<serde_json::Value> {
    env.log_records()
        .into_iter()
        .filter(|r| r["recipient"] == rcpt)
        .collect()
}

/// Waits until `rcpt` has a `TransientFailure` with attempt 2, and returns its records.
fn failed_twice(env: &Env, engine: &EngineProcess, rcpt: &str) -> Vec<serde_json::Value> {
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    loop {
        let records = records_for(env, rcpt);
        if records
            .iter()
            .any(|r| r["type"] == "TransientFailure" && r["attempt"] == 2)
        {
            return records;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{rcpt}: no second failure: {records:#?}\n{}",
            engine.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every misbehaviour of the corpus at its own destination, in one run beside a good one:
/// replies that never end (fast, dribbled, one endless line), a greeting dribbled slower than
/// its timeout, a reset in the middle of the content, garbage or a 2xx where 354 belongs,
/// and a reset during the TLS handshake. Each costs only its own destination: the good one
/// is delivered, the engine never exits, the failures are `TransientFailure`s naming why,
/// each counted as an attempt, and nothing is counted delivered without a 2xx after the
/// final dot.
#[test]
fn hostile_replies_cost_only_their_own_destination() {
    let lines_fast = Hostile::start(|e: &Event<'_>| match e {
        Event::Command(c) if c.starts_with("EHLO") => vec![
            Act::Send("250-x\r\n".repeat(10_000).into_bytes()),
            Act::Stall(Duration::from_secs(60)),
        ],
        other => polite(other),
    });
    let lines_dribbled = Hostile::start(|e: &Event<'_>| match e {
        Event::Command(c) if c.starts_with("EHLO") => vec![Act::Dribble(
            "250-x\r\n".repeat(2_000).into_bytes(),
            Duration::from_millis(1),
        )],
        other => polite(other),
    });
    let long_line = Hostile::start(|e: &Event<'_>| match e {
        Event::Command(c) if c.starts_with("EHLO") => vec![
            Act::Send(format!("250-{}", "x".repeat(1 << 20)).into_bytes()),
            Act::Stall(Duration::from_secs(60)),
        ],
        other => polite(other),
    });
    // 600 bytes, one every 200 ms: two minutes for the whole greeting.
    let slow_greeting = Hostile::start(|e: &Event<'_>| match e {
        Event::Connected => vec![Act::Dribble(
            format!("220 {}\r\n", "s".repeat(594)).into_bytes(),
            Duration::from_millis(200),
        )],
        other => polite(other),
    });
    // The first DATA: 354, then 20,000 bytes of the content read, then hang up. Later
    // connections behave.
    let datas = Arc::new(AtomicUsize::new(0));
    let datas2 = Arc::clone(&datas);
    let reset_mid_data = Hostile::start(move |e: &Event<'_>| match e {
        Event::Command(c) if c.eq_ignore_ascii_case("DATA") => {
            if datas2.fetch_add(1, Ordering::SeqCst) == 0 {
                vec![send("354 go\r\n"), Act::Swallow(20_000), Act::Close]
            } else {
                polite(e)
            }
        }
        other => polite(other),
    });
    let garbage_after_354 = Hostile::start(|e: &Event<'_>| match e {
        Event::Command(c) if c.eq_ignore_ascii_case("DATA") => vec![send("354 go\r\nblah\r\n")],
        other => polite(other),
    });
    let ok_for_data = Hostile::start(|e: &Event<'_>| match e {
        Event::Command(c) if c.eq_ignore_ascii_case("DATA") => vec![send("250 ok\r\n")],
        other => polite(other),
    });
    let tls_reset = Hostile::start(|e: &Event<'_>| match e {
        Event::Command(c) if c.starts_with("EHLO") => vec![send(
            "250-hostile.test\r\n250-STARTTLS\r\n250 PIPELINING\r\n",
        )],
        Event::Command(c) if c.eq_ignore_ascii_case("STARTTLS") => {
            vec![send("220 2.0.0 go ahead\r\n"), Act::Close]
        }
        other => polite(other),
    });
    let sink = Sink::start(HashMap::new());
    let extra = format!(
        "[delivery]\nretry_first = \"1s\"\nretry_max_interval = \"2s\"\nmax_age = \"1h\"\ngreeting_timeout = \"1s\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n{}",
        routes(&[
            ("lines-fast.test", lines_fast.addr),
            ("lines-dribbled.test", lines_dribbled.addr),
            ("long-line.test", long_line.addr),
            ("slow-greeting.test", slow_greeting.addr),
            ("reset.test", reset_mid_data.addr),
            ("garbage.test", garbage_after_354.addr),
            ("ok-for-data.test", ok_for_data.addr),
            ("tls-reset.test", tls_reset.addr),
            ("good.test", sink.addr),
        ])
    );
    let env = Env::new(2, "", &extra);
    let mut engine = env.start();
    env.drop_input(
        "c.jsonl",
        &campaign_for(
            &[
                "lines-fast.test",
                "lines-dribbled.test",
                "long-line.test",
                "slow-greeting.test",
                "garbage.test",
                "ok-for-data.test",
                "good.test",
            ],
            1,
        ),
    );
    // Big enough that the reset comes while the content is on its way.
    let (reset_file, reset_message) = pickup_for("r@reset.test", 300_000);
    env.drop_input("reset.eml", &reset_file);
    let (tls_file, tls_message) = pickup_for("t@tls-reset.test", 2_000);
    env.drop_input("tls.eml", &tls_file);

    // The good destination, and the two that recover, are delivered.
    wait_final(&env, &engine, 3, Duration::from_secs(45));
    assert_eq!(engine.exited(), None, "the engine is still running");
    let why = |rcpt: &str, needle: &str| {
        let records = failed_twice(&env, &engine, rcpt);
        assert!(
            records
                .iter()
                .all(|r| matches!(r["type"].as_str(), Some("Reception" | "TransientFailure"))),
            "{rcpt}: never delivered nor bounced: {records:#?}"
        );
        for r in records.iter().filter(|r| r["type"] == "TransientFailure") {
            assert_eq!(r["code"], 0, "{r}");
            let text = r["response"].as_str().unwrap();
            assert!(text.contains(needle), "{rcpt}: {needle:?} in {text:?}");
        }
    };
    why("user0@lines-fast.test", "reply has too many lines");
    why("user0@lines-dribbled.test", "reply has too many lines");
    why("user0@long-line.test", "reply line too long");
    // Not after the whole two-minute dribble: the failures come within the wait above.
    why("user0@slow-greeting.test", "timed out");
    why(
        "user0@garbage.test",
        "the server replied before the message was sent",
    );
    why(
        "user0@ok-for-data.test",
        "DATA answered with 250 ok instead of 354",
    );
    assert_eq!(engine.exited(), None, "the engine is still running");
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));

    let got = sink.received.lock().unwrap();
    assert_eq!(got.deliveries.get("user0@good.test"), Some(&1));
    drop(got);

    // The reset in the middle of the content: a counted attempt, then delivered whole on the
    // next connection. The server took part of one copy and exactly one complete copy.
    let records = records_for(&env, "r@reset.test");
    let types: Vec<&str> = records
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    let failures = &records[1..records.len() - 1];
    assert!(
        types.first() == Some(&"Reception")
            && types.last() == Some(&"Delivery")
            && !failures.is_empty()
            && failures.iter().all(|r| r["type"] == "TransientFailure"),
        "{records:#?}"
    );
    assert_eq!(failures[0]["attempt"], 1, "{}", failures[0]);
    assert_eq!(failures[0]["code"], 0, "{}", failures[0]);
    let delivery = records.last().unwrap();
    assert_eq!(
        delivery["attempt"],
        failures.len() + 1,
        "counted: {delivery}"
    );
    let seen = reset_mid_data.seen.lock().unwrap();
    assert!(
        seen.swallowed > 0 && seen.swallowed <= 20_000,
        "{}",
        seen.swallowed
    );
    assert_eq!(seen.data.len(), 1, "one complete copy");
    assert_received_exactly(
        &unstuff(&seen.data[0], "reset.test"),
        &reset_message,
        &["From", "To", "Subject"],
        "reset.test",
    );
    drop(seen);

    // The reset during the TLS handshake: retried in plaintext at once, and delivered.
    let records = records_for(&env, "t@tls-reset.test");
    let delivery = records
        .iter()
        .find(|r| r["type"] == "Delivery")
        .unwrap_or_else(|| panic!("{records:#?}"));
    let failures = records
        .iter()
        .filter(|r| r["type"] == "TransientFailure")
        .count();
    assert_eq!(delivery["attempt"], failures + 1, "{delivery}");
    let seen = tls_reset.seen.lock().unwrap();
    assert_eq!(seen.data.len(), 1, "one copy");
    assert_received_exactly(
        &unstuff(&seen.data[0], "tls-reset.test"),
        &tls_message,
        &["From", "To", "Subject"],
        "tls-reset.test",
    );
    drop(seen);
    assert!(engine_stderr_mentions(&env, "plaintext for"));

    // The garbage after 354 and the 250 instead of 354: never a Delivery.
    for d in ["garbage.test", "ok-for-data.test"] {
        assert!(
            !env.log_records()
                .iter()
                .any(|r| r["domain"] == d && r["type"] == "Delivery"),
            "{d}"
        );
    }
    for h in [
        lines_fast,
        lines_dribbled,
        long_line,
        slow_greeting,
        reset_mid_data,
        garbage_after_354,
        ok_for_data,
        tls_reset,
    ] {
        h.stop();
    }
    sink.stop();
}

/// Whether any engine stderr file of this environment contains `needle`.
fn engine_stderr_mentions(env: &Env, needle: &str) -> bool {
    std::fs::read_dir(env.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".stderr"))
        .any(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .contains(needle)
        })
}

/// docs/ARCHITECTURE.md: "A 421 in answer to the final dot is that message's reply (counted,
/// usual retry schedule)". The server received the message whole and refused it: attempt 1,
/// then attempt 2 on the retry, not the same uncounted attempt again and again.
#[test]
fn a_421_after_the_final_dot_is_a_counted_attempt() {
    let server = Hostile::start(|e: &Event<'_>| match e {
        Event::Data(_) => vec![send("421 4.3.2 shutting down\r\n"), Act::Close],
        other => polite(other),
    });
    let extra = format!(
        "[delivery]\nretry_first = \"1s\"\nretry_max_interval = \"2s\"\nmax_age = \"1h\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n{}",
        routes(&[("closing.test", server.addr)])
    );
    let env = Env::new(1, "", &extra);
    let mut engine = env.start();
    env.drop_input("c.jsonl", &campaign_for(&["closing.test"], 1));
    let deadline = std::time::Instant::now() + Duration::from_secs(45);
    let failures = loop {
        let failures: Vec<serde_json::Value> = transient_failures(&env, "closing.test");
        if failures.len() >= 2 {
            break failures;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{failures:#?}\n{}",
            engine.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(engine.exited(), None, "the engine is still running");
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    for f in &failures[..2] {
        assert_eq!(f["code"], 421, "{f}");
        assert_eq!(f["enhanced"], "4.3.2", "{f}");
    }
    assert!(
        server.seen.lock().unwrap().data.len() >= 2,
        "the message was sent whole each time"
    );
    assert_eq!(failures[0]["attempt"], 1, "{}", failures[0]);
    assert_eq!(failures[1]["attempt"], 2, "{}", failures[1]);
    server.stop();
}

/// A 2xx that the server sends in the same packet as its 354, before the content was sent,
/// cannot be the answer to the final dot: the message is not counted delivered (here the
/// server goes on to refuse the content it then receives).
#[test]
fn a_2xx_sent_before_the_content_is_not_a_delivery() {
    let server = Hostile::start(|e: &Event<'_>| match e {
        Event::Command(c) if c.eq_ignore_ascii_case("DATA") => vec![send(
            "354 go\r\n250 2.0.0 accepted before the message was sent\r\n",
        )],
        Event::Data(_) => vec![send("554 5.6.0 refused\r\n")],
        other => polite(other),
    });
    let extra = format!(
        "[delivery]\nretry_first = \"1s\"\nretry_max_interval = \"2s\"\nmax_age = \"1h\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n{}",
        routes(&[("early.test", server.addr)])
    );
    let env = Env::new(1, "", &extra);
    let mut engine = env.start();
    env.drop_input("c.jsonl", &campaign_for(&["early.test"], 1));
    wait_until(Duration::from_secs(45), "an outcome for early.test", || {
        env.log_records()
            .iter()
            .any(|r| r["domain"] == "early.test" && r["type"] != "Reception")
    });
    assert_eq!(engine.exited(), None, "the engine is still running");
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let records = env.log_records();
    assert!(
        !records.iter().any(|r| r["type"] == "Delivery"),
        "{records:#?}"
    );
    server.stop();
}

/// Garbage right behind the 354 ends the session (a protocol error, `TransientFailure`):
/// the message is then not sent anyway, since a server that took it whole would deliver it
/// while the log says it was not, and the retry would deliver it again.
#[test]
fn garbage_after_354_ends_the_session_before_the_content() {
    let server = Hostile::start(|e: &Event<'_>| match e {
        Event::Command(c) if c.eq_ignore_ascii_case("DATA") => vec![send("354 go\r\nblah\r\n")],
        other => polite(other),
    });
    let extra = format!(
        "[delivery]\nretry_first = \"1s\"\nretry_max_interval = \"2s\"\nmax_age = \"1h\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n{}",
        routes(&[("garbage.test", server.addr)])
    );
    let env = Env::new(1, "", &extra);
    let mut engine = env.start();
    env.drop_input("c.jsonl", &campaign_for(&["garbage.test"], 1));
    let records = failed_twice(&env, &engine, "user0@garbage.test");
    assert_eq!(engine.exited(), None, "the engine is still running");
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    assert!(
        !records.iter().any(|r| r["type"] == "Delivery"),
        "{records:#?}"
    );
    let seen = server.seen.lock().unwrap();
    assert!(
        seen.data.is_empty(),
        "{} complete copies sent after the session failed",
        seen.data.len()
    );
    drop(seen);
    server.stop();
}
