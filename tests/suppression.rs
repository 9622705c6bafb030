//! Suppression end to end, read from the delivery log and the receiving sink's receipts: a
//! listed address and a listed domain are refused at intake, naming the list; a receiver's
//! 550 5.1.1 suppresses the address for the next campaign, across a restart; an address
//! listed while its mail waits is bounced before it is sent again.

mod common;

use common::sink::{Behaviour, Sink};
use common::*;
use std::collections::HashMap;
use std::time::Duration;

fn batch(campaign: &str, recipients: &[&str]) -> Vec<u8> {
    let header = serde_json::json!({
        "campaign": campaign, "tenant": "acme", "from": "bounces@acme.example",
        "template": "From: Acme <news@acme.example>\r\nTo: {{ to }}\r\nSubject: hi\r\n\r\nHello\r\n"
    });
    let mut s = format!("{header}\n");
    for r in recipients {
        s.push_str(&format!("{}\n", serde_json::json!({ "to": r })));
    }
    s.into_bytes()
}

fn record<'a>(
    records: &'a [serde_json::Value],
    kind: &str,
    rcpt: &str,
) -> Option<&'a serde_json::Value> {
    records
        .iter()
        .find(|r| r["type"] == kind && r["recipient"] == rcpt)
}

fn wait_for(env: &Env, engine: &EngineProcess, kind: &str, rcpt: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(r) = record(&env.log_records(), kind, rcpt) {
            return r.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {kind} for {rcpt}; log: {:#?}\nstderr: {}",
            env.log_records(),
            engine.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn suppressed_and_hard_bounced_addresses_receive_nothing() {
    let sink = Sink::start(HashMap::from([
        ("gone.test".to_string(), Behaviour::UnknownUser),
        ("slow.test".to_string(), Behaviour::AlwaysDefer),
    ]));
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "blocked@x.test\n@blocked.test\n").unwrap();
    let extra = format!(
        "[delivery]\nallow_private_destinations = true\nretry_first = \"1s\"\n\
         [[routes]]\ndomain = \"*.test\"\nhosts = [\"{}\"]\n\
         [suppression]\nfiles = [{list:?}]\n",
        sink.addr
    );
    let env = Env::new(2, "", &extra);
    let engine = env.start();
    env.drop_input(
        "first.jsonl",
        &batch(
            "first",
            &[
                "ok1@x.test",
                "Blocked@x.test",
                "anyone@blocked.test",
                "a@gone.test",
                "late@slow.test",
            ],
        ),
    );
    wait_for(&env, &engine, "Delivery", "ok1@x.test");
    let bounce = wait_for(&env, &engine, "Bounce", "a@gone.test");
    assert_eq!(bounce["bounce_category"], "bad-mailbox");
    wait_for(&env, &engine, "TransientFailure", "late@slow.test");
    let records = env.log_records();
    let listed = record(&records, "Rejected", "Blocked@x.test").expect("refused at intake");
    assert_eq!(
        listed["response"],
        format!(
            "line 3: suppressed: blocked@x.test is listed in {}",
            list.display()
        )
    );
    let domain = record(&records, "Rejected", "anyone@blocked.test").expect("refused at intake");
    assert!(
        domain["response"]
            .as_str()
            .unwrap()
            .starts_with("line 4: suppressed: @blocked.test is listed in"),
        "{domain}"
    );
    assert!(record(&records, "Reception", "Blocked@x.test").is_none());

    // Listed while its mail waits: bounced at its next turn, not sent.
    std::fs::write(&list, "blocked@x.test\n@blocked.test\nlate@slow.test\n").unwrap();
    engine.signal(libc::SIGHUP);
    let late = wait_for(&env, &engine, "Bounce", "late@slow.test");
    assert_eq!(late["bounce_category"], "suppressed");
    assert_eq!(late["code"], 0);
    assert!(
        late["response"]
            .as_str()
            .unwrap()
            .contains("late@slow.test is listed in"),
        "{late}"
    );
    let attempts_late = sink.received.lock().unwrap().rcpt_attempts["late@slow.test"];
    assert_eq!(engine.stop(Duration::from_secs(20)).code(), Some(0));

    // The bad mailbox was learnt durably: after a restart, the next campaign does not
    // send to it.
    let engine = env.start();
    env.drop_input(
        "second.jsonl",
        &batch("second", &["ok2@x.test", "a@gone.test"]),
    );
    wait_for(&env, &engine, "Delivery", "ok2@x.test");
    let again = wait_for(&env, &engine, "Rejected", "a@gone.test");
    assert!(
        again["response"].as_str().unwrap().starts_with(
            "line 3: suppressed: a@gone.test was refused as a mailbox that does not exist on "
        ),
        "{again}"
    );
    assert_eq!(engine.stop(Duration::from_secs(20)).code(), Some(0));

    // The sink's receipts: only the two unsuppressed recipients got mail, the bad mailbox
    // was tried once (by the first campaign), the late one no more after it was listed.
    let got = sink.received.lock().unwrap();
    let mut delivered: Vec<&str> = got.deliveries.keys().map(String::as_str).collect();
    delivered.sort();
    assert_eq!(delivered, ["ok1@x.test", "ok2@x.test"]);
    assert_eq!(got.rcpt_attempts["a@gone.test"], 1);
    assert_eq!(got.rcpt_attempts["late@slow.test"], attempts_late);
    for never in ["blocked@x.test", "Blocked@x.test", "anyone@blocked.test"] {
        assert!(!got.rcpt_attempts.contains_key(never), "{never} was tried");
    }
}
