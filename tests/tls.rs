//! Outbound STARTTLS through the real binary against the loopback sink: opportunistic TLS
//! upgrades with any certificate and logs that it did not verify; `verify` refuses a
//! self-signed certificate; a broken handshake falls back to plaintext; `required` defers
//! when the receiver offers no STARTTLS.

mod common;

use common::sink::{Sink, SinkTls};
use common::*;
use std::collections::HashMap;
use std::time::Duration;

const N: usize = 20;

fn run(sink: &Sink, tls: &str) -> (Env, EngineProcess) {
    let extra = format!(
        "[delivery]\ntls = \"{tls}\"\nretry_first = \"1h\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[[routes]]\ndomain = \"tls.test\"\nhosts = [\"{}\"]\n",
        sink.addr
    );
    let env = Env::new(2, "", &extra);
    let engine = env.start();
    let mut s = format!("{HEADER}\n");
    for i in 0..N {
        s.push_str(&format!("{{\"to\":\"u{i}@tls.test\"}}\n"));
    }
    env.drop_input("t.jsonl", s.as_bytes());
    (env, engine)
}

fn wait_events(env: &Env, event: &str, n: usize) {
    wait_until(Duration::from_secs(60), event, || {
        env.count_events(event) >= n
    });
}

#[test]
fn opportunistic_tls_encrypts_and_logs_an_unverified_certificate() {
    let sink = Sink::start_tls(HashMap::new(), SinkTls::self_signed(&["localhost"]));
    let (env, engine) = run(&sink, "opportunistic");
    wait_final(&env, &engine, N, Duration::from_secs(60));
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let got = sink.received.lock().unwrap();
    assert_eq!(
        (got.deliveries.len(), got.tls_deliveries),
        (N, N),
        "all over TLS"
    );
    drop(got);
    let d = env.first_record("Delivery");
    let tls = d["tls"].as_str().unwrap();
    assert!(tls.starts_with("TLSv1_3"), "{tls}");
    assert!(tls.contains("certificate not verified"), "{tls}");
    sink.stop();
}

#[test]
fn verify_refuses_a_self_signed_certificate() {
    let sink = Sink::start_tls(HashMap::new(), SinkTls::self_signed(&["localhost"]));
    let (env, engine) = run(&sink, "verify");
    wait_events(&env, "TransientFailure", N);
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let t = env.first_record("TransientFailure");
    assert!(
        t["response"].as_str().unwrap().contains("TLS handshake"),
        "{t}"
    );
    assert_eq!(
        sink.received.lock().unwrap().deliveries.len(),
        0,
        "nothing sent in the clear"
    );
    sink.stop();
}

#[test]
fn a_broken_handshake_falls_back_to_plaintext_and_is_remembered() {
    let sink = Sink::start_tls(HashMap::new(), SinkTls::Broken);
    let (env, engine) = run(&sink, "opportunistic");
    wait_final(&env, &engine, N, Duration::from_secs(60));
    let stderr = engine.stderr();
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let got = sink.received.lock().unwrap();
    assert_eq!((got.deliveries.len(), got.tls_deliveries), (N, 0));
    // Remembered: at most the first connection of each concurrent worker (the site
    // connection limit, 10 by default) tries TLS; every later one goes straight to plaintext.
    let fallbacks = stderr.matches("plaintext for 3600 s").count();
    assert!(
        (1..=10).contains(&fallbacks),
        "{fallbacks} fallbacks\n{stderr}"
    );
    drop(got);
    sink.stop();
}

#[test]
fn required_tls_defers_when_starttls_is_not_offered() {
    let sink = Sink::start(HashMap::new());
    let (env, engine) = run(&sink, "required");
    wait_events(&env, "TransientFailure", N);
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let t = env.first_record("TransientFailure");
    assert!(t["response"].as_str().unwrap().contains("STARTTLS"), "{t}");
    assert_eq!(sink.received.lock().unwrap().deliveries.len(), 0);
    sink.stop();
}
