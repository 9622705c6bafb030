//! End-to-end delivery through the real binary to a scripted SMTP sink on loopback: every
//! recipient ends with exactly one final delivery-log record of the right type, the sink gets
//! each deliverable recipient exactly once, and the queue ends empty.

mod common;

use common::sink::{Behaviour, Sink};
use common::*;
use std::collections::HashMap;
use std::time::Duration;

const DOMAINS: [&str; 4] = ["a.test", "b.test", "bounce.test", "slow.test"];
const PER_DOMAIN: usize = 75;

fn campaign_over_domains() -> Vec<u8> {
    let mut s = format!("{HEADER}\n");
    for d in DOMAINS {
        for i in 0..PER_DOMAIN {
            s.push_str(&format!(
                "{{\"to\":\"user{i}@{d}\",\"vars\":{{\"first_name\":\"N{i}\"}}}}\n"
            ));
        }
    }
    s.into_bytes()
}

#[test]
fn campaign_is_delivered_bounced_and_retried_with_one_final_record_each() {
    let sink = Sink::start(HashMap::from([
        ("bounce.test".to_string(), Behaviour::UnknownUser),
        ("slow.test".to_string(), Behaviour::DeferOnce),
    ]));
    let routes: String = DOMAINS
        .iter()
        .map(|d| {
            format!(
                "[[routes]]\ndomain = \"{d}\"\nhosts = [\"{}\"]\n",
                sink.addr
            )
        })
        .collect();
    let extra = format!(
        "[delivery]\nretry_first = \"1s\"\nretry_max_interval = \"2s\"\nmax_age = \"1h\"\nsite_connection_limit = 4\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n{routes}"
    );
    let env = Env::new(2, "", &extra);
    let engine = env.start();
    env.drop_input("c.jsonl", &campaign_over_domains());

    let total = DOMAINS.len() * PER_DOMAIN;
    wait_final(&env, &engine, total, Duration::from_secs(60));
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));

    let records = env.log_records();
    let mut finals: HashMap<String, Vec<String>> = HashMap::new();
    for r in &records {
        let t = r["type"].as_str().unwrap();
        if matches!(t, "Delivery" | "Bounce" | "Expiration") {
            finals
                .entry(r["recipient"].as_str().unwrap().to_string())
                .or_default()
                .push(t.to_string());
        }
    }
    assert_eq!(finals.len(), total, "every recipient has a final record");
    assert!(
        finals.values().all(|v| v.len() == 1),
        "exactly one final record each"
    );
    for d in DOMAINS {
        let want = if d == "bounce.test" {
            "Bounce"
        } else {
            "Delivery"
        };
        for i in 0..PER_DOMAIN {
            assert_eq!(finals[&format!("user{i}@{d}")], [want], "user{i}@{d}");
        }
    }
    let bounce = records.iter().find(|r| r["type"] == "Bounce").unwrap();
    assert_eq!(bounce["bounce_category"], "bad-mailbox");
    assert_eq!(bounce["code"], 550);
    assert_eq!(bounce["enhanced"], "5.1.1");
    assert_eq!(bounce["provider"], "route:bounce.test");
    let delivery = records.iter().find(|r| r["type"] == "Delivery").unwrap();
    assert_eq!(delivery["code"], 250);
    assert_eq!(delivery["ip"], "127.0.0.1");
    assert_eq!(delivery["attempt"], 1);
    assert!(delivery["message_id"].as_str().unwrap().starts_with('<'));
    // slow.test: one TransientFailure, then a Delivery on attempt 2.
    let slow: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["recipient"] == "user7@slow.test")
        .collect();
    let kinds: Vec<&str> = slow.iter().map(|r| r["type"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Reception", "TransientFailure", "Delivery"]);
    assert_eq!(slow[1]["code"], 450);
    assert_eq!(slow[2]["attempt"], 2);

    let got = sink.received.lock().unwrap();
    let delivered: usize = got.deliveries.values().sum();
    assert_eq!(delivered, 3 * PER_DOMAIN, "no duplicates, none missing");
    assert!(got.deliveries.values().all(|&n| n == 1));
    assert_eq!(got.chunked, got.transactions.len(), "BDAT wherever offered");
    let body = &got.bodies["user3@a.test"];
    assert!(body.contains("Subject: Hi N3\r\n"), "{body}");
    assert!(body.contains("Message-ID: <"), "{body}");
    assert!(body.contains("To: user3@a.test\r\n"), "{body}");
    assert!(
        got.connections < 3 * PER_DOMAIN,
        "connections are reused: {}",
        got.connections
    );
    drop(got);
    sink.stop();

    assert!(
        env.queued_recipients().is_empty(),
        "nothing left in the queue"
    );
}

#[test]
fn kill_9_mid_campaign_then_restart_delivers_everyone_at_least_once() {
    const N: usize = 2000;
    // A slow receiver keeps the campaign in flight long enough to kill it midway.
    let sink = Sink::start_with_delay(HashMap::new(), Duration::from_millis(2));
    let extra = format!(
        "[delivery]\nsite_connection_limit = 4\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[[routes]]\ndomain = \"*.test\"\nhosts = [\"{}\"]\n",
        sink.addr
    );
    let env = Env::new(2, "", &extra);
    let mut s = format!("{HEADER}\n");
    for i in 0..N {
        s.push_str(&format!(
            "{{\"to\":\"user{i}@d{}.test\",\"vars\":{{\"first_name\":\"N{i}\"}}}}\n",
            i % 20
        ));
    }
    env.drop_input("c.jsonl", s.as_bytes());
    let engine = env.start();
    wait_until(Duration::from_secs(60), "some deliveries", || {
        sink.received.lock().unwrap().deliveries.len() >= N / 4
    });
    engine.kill9();
    let delivered_before = sink.received.lock().unwrap().deliveries.len();
    assert!(
        delivered_before < N,
        "the kill landed mid-campaign ({delivered_before} of {N})"
    );

    let engine = env.start();
    wait_until(
        Duration::from_secs(120),
        "every recipient delivered",
        || sink.received.lock().unwrap().deliveries.len() == N,
    );
    // The last outcomes reach the queue within a group commit or two.
    wait_until(Duration::from_secs(30), "an empty queue", || {
        std::thread::sleep(Duration::from_millis(50));
        env.queued_recipients().is_empty()
    });
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let got = sink.received.lock().unwrap();
    let duplicates: usize = got.deliveries.values().map(|n| n - 1).sum();
    eprintln!("kill -9 mid-campaign: {delivered_before} delivered before the kill, {duplicates} duplicates after the restart");
    // Duplicates are the transactions in flight at the kill (two a connection, pipelined)
    // plus those completed since the last group commit began: outcome records reach the
    // segment only then. That window is at most two fdatasyncs (assumed at most 100 ms each
    // on a loaded shared disk, as in tests/crash_loop.rs) and one commit interval (4 ms),
    // and a connection completes at most one transaction per 2 ms, the sink's delay. A bound
    // of 64 (the in-flight window alone) was exceeded in CI (96) when an fsync was slow.
    let per_connection = 2 + (2 * 100 + 4) / 2;
    let bound = 4 * per_connection;
    assert!(
        duplicates <= bound,
        "{duplicates} duplicates, bound {bound}"
    );
    drop(got);
    sink.stop();
}

#[test]
fn recipients_of_one_pickup_message_share_transactions_per_domain() {
    let sink = Sink::start(HashMap::new());
    let extra = format!(
        "[delivery]\nrecipients_per_transaction = 10\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[[routes]]\ndomain = \"*.test\"\nhosts = [\"{}\"]\n",
        sink.addr
    );
    let env = Env::new(2, "", &extra);
    let engine = env.start();
    let mut eml = String::from("x-sender: <bounces@acme.example>\r\n");
    for i in 0..30 {
        eml.push_str(&format!("x-receiver: <g{i}@group.test>\r\n"));
    }
    for i in 0..5 {
        eml.push_str(&format!("x-receiver: <o{i}@other.test>\r\n"));
    }
    eml.push_str("From: news@acme.example\r\nSubject: same for everyone\r\n\r\nHello all\r\n");
    env.drop_input("p.eml", eml.as_bytes());
    wait_final(&env, &engine, 35, Duration::from_secs(60));
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let got = sink.received.lock().unwrap();
    assert_eq!(got.deliveries.len(), 35);
    assert!(got.deliveries.values().all(|&n| n == 1));
    let sizes = &got.transactions;
    assert_eq!(sizes.iter().sum::<usize>(), 35);
    assert!(sizes.iter().all(|&n| n <= 10), "{sizes:?}");
    assert!(
        sizes.len() <= 12,
        "recipients shared transactions: {sizes:?}"
    );
    assert!(sizes.iter().any(|&n| n > 1), "{sizes:?}");
    // The message went as it was: no Message-ID or Date added to a pickup message.
    assert!(!got.bodies["g3@group.test"].contains("Message-ID"));
    drop(got);
    sink.stop();
}

#[test]
fn a_recipient_deferred_past_max_age_expires_once_with_a_category() {
    let sink = Sink::start(HashMap::from([(
        "later.test".to_string(),
        Behaviour::AlwaysDefer,
    )]));
    let extra = format!(
        "[delivery]\nretry_first = \"300ms\"\nretry_max_interval = \"300ms\"\nmax_age = \"2s\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[[routes]]\ndomain = \"later.test\"\nhosts = [\"{}\"]\n",
        sink.addr
    );
    let env = Env::new(1, "", &extra);
    let engine = env.start();
    env.drop_input(
        "l.jsonl",
        format!("{HEADER}\n{{\"to\":\"a@later.test\"}}\n{{\"to\":\"b@later.test\"}}\n").as_bytes(),
    );
    wait_until(Duration::from_secs(30), "expirations", || {
        env.count_events("Expiration") == 2
    });
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let records = env.log_records();
    let exp: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["type"] == "Expiration")
        .collect();
    assert_eq!(exp.len(), 2);
    assert_eq!(exp[0]["code"], 451);
    assert_eq!(exp[0]["bounce_category"], "other");
    let tries = records
        .iter()
        .filter(|r| r["recipient"] == "a@later.test" && r["type"] == "TransientFailure")
        .count();
    assert!(tries >= 2, "retried before expiring: {tries}");
    assert!(records
        .iter()
        .all(|r| r["type"] != "Delivery" && r["type"] != "Bounce"));
    assert!(
        env.queued_recipients().is_empty(),
        "expired recipients leave the queue"
    );
    sink.stop();
}

#[test]
fn a_silent_server_hits_the_configured_reply_timeout() {
    // Greets, then never answers: the EHLO timeout must end the wait.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = std::sync::Arc::clone(&stop);
    let silent = std::thread::spawn(move || {
        use std::io::Write;
        let mut held = Vec::new();
        while !stop2.load(std::sync::atomic::Ordering::SeqCst) {
            if let Ok((mut c, _)) = listener.accept() {
                let _ = c.write_all(b"220 silent.test\r\n");
                held.push(c);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });
    let extra = format!(
        "[delivery]\nehlo_timeout = \"1s\"\nretry_first = \"1h\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[[routes]]\ndomain = \"silent.test\"\nhosts = [\"{addr}\"]\n"
    );
    let env = Env::new(1, "", &extra);
    let engine = env.start();
    let started = std::time::Instant::now();
    env.drop_input(
        "s.jsonl",
        format!("{HEADER}\n{{\"to\":\"a@silent.test\"}}\n").as_bytes(),
    );
    wait_until(Duration::from_secs(30), "a transient failure", || {
        env.count_events("TransientFailure") == 1
    });
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let t = env.first_record("TransientFailure");
    assert!(
        t["response"].as_str().unwrap().contains("timed out")
            || t["response"].as_str().unwrap().contains("Timed out"),
        "{t}"
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    silent.join().unwrap();
}

#[test]
fn a_slow_receiver_does_not_hold_back_another_scope() {
    let slow = Sink::start_with_delay(HashMap::new(), Duration::from_millis(150));
    let fast = Sink::start(HashMap::new());
    let extra = format!(
        "[delivery]\nsite_connection_limit = 2\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[[routes]]\ndomain = \"slow.test\"\nhosts = [\"{}\"]\n[[routes]]\ndomain = \"fast.test\"\nhosts = [\"{}\"]\n",
        slow.addr, fast.addr
    );
    let env = Env::new(2, "", &extra);
    let engine = env.start();
    let mut s = format!("{HEADER}\n");
    for i in 0..40 {
        s.push_str(&format!(
            "{{\"to\":\"s{i}@slow.test\"}}\n{{\"to\":\"f{i}@fast.test\"}}\n"
        ));
    }
    env.drop_input("mix.jsonl", s.as_bytes());
    wait_until(Duration::from_secs(30), "the fast scope done", || {
        fast.received.lock().unwrap().deliveries.len() == 40
    });
    // 40 messages at 150 ms over 2 connections take about 3 s; the fast scope did not wait.
    let slow_done = slow.received.lock().unwrap().deliveries.len();
    assert!(
        slow_done < 30,
        "slow scope had {slow_done} of 40 when the fast one finished"
    );
    wait_final(&env, &engine, 80, Duration::from_secs(60));
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    slow.stop();
    fast.stop();
}

#[test]
fn a_unilateral_421_closes_the_connection_and_retries_without_counting_an_attempt() {
    let sink = Sink::start(HashMap::from([(
        "busy.test".to_string(),
        Behaviour::CloseOnce,
    )]));
    let extra = format!(
        "[delivery]\nretry_first = \"1h\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[[routes]]\ndomain = \"busy.test\"\nhosts = [\"{}\"]\n",
        sink.addr
    );
    let env = Env::new(1, "", &extra);
    let engine = env.start();
    env.drop_input(
        "b.jsonl",
        format!("{HEADER}\n{{\"to\":\"a@busy.test\"}}\n").as_bytes(),
    );
    // A 421 is retried at once at its scope's pace, not on the (here one-hour) schedule.
    wait_final(&env, &engine, 1, Duration::from_secs(40));
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let records = env.log_records();
    let kinds: Vec<&str> = records
        .iter()
        .map(|r| r["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["Reception", "TransientFailure", "Delivery"]);
    assert_eq!(records[1]["code"], 421);
    assert!(records[1]["response"].as_str().unwrap().contains("TSS04"));
    assert_eq!(
        records[2]["attempt"], 1,
        "the 421 did not count as an attempt"
    );
    assert!(
        sink.received.lock().unwrap().connections >= 2,
        "a new connection after the 421"
    );
    sink.stop();
}

/// Thirty sites behind one address (as the customer domains of one hosted-mail provider
/// are), each allowed two connections: together they get no more than `ip_connection_limit`
/// connections to the address, and a connection one site's worker is done with serves the
/// next site instead of closing.
#[test]
fn sites_behind_one_address_share_its_connections_within_the_cap() {
    let sink = Sink::start(HashMap::new());
    const SITES: usize = 30;
    const PER_SITE: usize = 6;
    let routes: String = (0..SITES)
        .map(|i| {
            format!(
                "[[routes]]\ndomain = \"d{i}.test\"\nhosts = [\"{}\"]\n",
                sink.addr
            )
        })
        .collect();
    let extra = format!(
        "[delivery]\nsite_connection_limit = 2\nip_connection_limit = 2\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n{routes}"
    );
    let env = Env::new(2, "", &extra);
    let engine = env.start();
    let mut s = format!("{HEADER}\n");
    for i in 0..SITES {
        for j in 0..PER_SITE {
            s.push_str(&format!("{{\"to\":\"u{j}@d{i}.test\"}}\n"));
        }
    }
    env.drop_input("tail.jsonl", s.as_bytes());
    wait_final(&env, &engine, SITES * PER_SITE, Duration::from_secs(60));
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    assert_eq!(env.count_events("Delivery"), SITES * PER_SITE);
    assert_eq!(env.count_events("TransientFailure"), 0);
    let got = sink.received.lock().unwrap();
    assert!(got.deliveries.values().all(|&n| n == 1));
    assert!(got.open_max <= 2, "{} open at once", got.open_max);
    assert!(
        got.connections < SITES / 2,
        "{} connections for {SITES} sites",
        got.connections
    );
    drop(got);
    sink.stop();
}

/// One scope (a route to one receiver, three connections) with recipients on both shards:
/// each shard sends its own over its share of the three, so the receiver never sees more
/// than three at once, every recipient arrives once, and the messages themselves never
/// cross between shards (each shard says at exit how many messages it sent the others).
#[test]
fn a_scope_with_recipients_on_both_shards_shares_its_connection_limit() {
    const N: usize = 1200;
    let sink = Sink::start_with_delay(HashMap::new(), Duration::from_millis(1));
    let extra = format!(
        "[delivery]\nsite_connection_limit = 3\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[[routes]]\ndomain = \"*.test\"\nhosts = [\"{}\"]\n",
        sink.addr
    );
    let env = Env::new(2, "", &extra);
    let engine = env.start();
    let mut s = format!("{HEADER}\n");
    for i in 0..N {
        s.push_str(&format!("{{\"to\":\"user{i}@d{}.test\"}}\n", i % 40));
    }
    env.drop_input("c.jsonl", s.as_bytes());
    wait_final(&env, &engine, N, Duration::from_secs(120));
    let stderr_path = engine.stderr_path.clone();
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let stderr = std::fs::read_to_string(stderr_path).unwrap_or_default();
    assert_eq!(env.count_events("Delivery"), N);
    let got = sink.received.lock().unwrap();
    assert_eq!(got.deliveries.len(), N);
    assert!(got.deliveries.values().all(|&n| n == 1));
    assert!(got.open_max <= 3, "{} open at once, limit 3", got.open_max);
    drop(got);
    // Shares and acknowledgements cross, a few per scope; 1,200 messages do not.
    let crossed: usize = stderr
        .lines()
        .filter(|l| l.contains("messages to other shards"))
        .filter_map(|l| {
            l.split("shard ")
                .nth(1)?
                .split_whitespace()
                .nth(1)?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert!(
        crossed < N / 10,
        "{crossed} messages crossed shards\n{stderr}"
    );
    sink.stop();
}

/// `[delivery] chunking = false`: the same receiver offers CHUNKING and gets DATA, the same
/// bodies byte for byte.
#[test]
fn with_chunking_off_messages_go_with_data_and_arrive_the_same() {
    let mut bodies = Vec::new();
    for chunking in [true, false] {
        let sink = Sink::start(HashMap::new());
        let extra = format!(
            "[delivery]\nchunking = {chunking}\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[[routes]]\ndomain = \"a.test\"\nhosts = [\"{}\"]\n",
            sink.addr
        );
        let env = Env::new(1, "", &extra);
        let engine = env.start();
        // A body line that starts with the value, a dot: stuffed for DATA, not for BDAT.
        let header = HEADER.replace("Hello {{ first_name }}!", "{{ first_name }} said hello");
        let mut s = format!("{header}\n");
        for i in 0..20 {
            s.push_str(&format!(
                "{{\"to\":\"user{i}@a.test\",\"vars\":{{\"first_name\":\".N{i}\"}}}}\n"
            ));
        }
        env.drop_input("c.jsonl", s.as_bytes());
        wait_final(&env, &engine, 20, Duration::from_secs(60));
        assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
        let got = sink.received.lock().unwrap();
        assert_eq!(got.deliveries.len(), 20);
        let chunked = if chunking { got.transactions.len() } else { 0 };
        assert_eq!(got.chunked, chunked, "chunking = {chunking}");
        let mut b: Vec<(String, String)> = got
            .bodies
            .iter()
            .map(|(r, b)| {
                // The Message-ID and Date differ from run to run; the rest may not.
                let lines: Vec<&str> = b
                    .split("\r\n")
                    .filter(|l| !l.starts_with("Message-ID:") && !l.starts_with("Date:"))
                    .collect();
                (r.clone(), lines.join("\r\n"))
            })
            .collect();
        b.sort();
        bodies.push(b);
        drop(got);
        sink.stop();
    }
    assert_eq!(bodies[0], bodies[1]);
    assert!(bodies[0][0].1.contains("\r\n.N"), "{}", bodies[0][0].1);
}
