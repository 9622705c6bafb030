//! Delivery through real DNS: dnsmasq (installed by .ci/run) on a loopback port serves an MX,
//! an implicit MX (A only), a null MX and an NXDOMAIN; the engine resolves with its own
//! resolver and delivers to the scripted sink on loopback. dnsmasq never forwards anywhere
//! (`no-resolv`, `local=/test/`).

mod common;

use common::dnsmasq::Dnsmasq;
use common::sink::Sink;
use common::*;
use std::collections::HashMap;
use std::time::Duration;

#[test]
fn mx_implicit_mx_null_mx_and_nxdomain_through_dnsmasq() {
    let dns_dir = tempfile::tempdir().unwrap();
    let Some(dns) = Dnsmasq::start(dns_dir.path()) else {
        return;
    };
    let sink = Sink::start(HashMap::new());
    let extra = format!(
        "[delivery]\nallow_private_destinations = true\nretry_first = \"1s\"\n[dns]\nnameservers = [\"127.0.0.1:{}\"]\n[smtp]\nport = {}\n[providers.mxprov]\nmx_suffixes = [\".mx.test\"]\n",
        dns.port,
        sink.addr.port()
    );
    let env = Env::new(2, "", &extra);
    let engine = env.start();
    let mut s = format!("{HEADER}\n");
    for d in ["mx.test", "implicit.test", "nullmx.test", "nx.test"] {
        for i in 0..10 {
            s.push_str(&format!("{{\"to\":\"u{i}@{d}\"}}\n"));
        }
    }
    env.drop_input("c.jsonl", s.as_bytes());
    wait_final(&env, &engine, 40, Duration::from_secs(20));
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let records = env.log_records();
    let last = |rcpt: &str| {
        records
            .iter()
            .rev()
            .find(|r| r["recipient"] == rcpt)
            .unwrap()
            .clone()
    };
    let mx = last("u1@mx.test");
    assert_eq!(
        (mx["type"].as_str(), mx["mx"].as_str()),
        (Some("Delivery"), Some("mx1.mx.test"))
    );
    assert_eq!(mx["provider"], "mxprov", "rolled up by MX suffix");
    let implicit = last("u1@implicit.test");
    assert_eq!(
        (implicit["type"].as_str(), implicit["mx"].as_str()),
        (Some("Delivery"), Some("implicit.test"))
    );
    assert_eq!(implicit["provider"], "site:implicit.test");
    let null = last("u1@nullmx.test");
    assert_eq!(null["type"], "Bounce");
    assert_eq!(null["enhanced"], "5.1.10");
    assert_eq!(null["bounce_category"], "bad-domain");
    let nx = last("u1@nx.test");
    assert_eq!(nx["type"], "Bounce");
    assert_eq!(nx["enhanced"], "5.1.2");
    let got = sink.received.lock().unwrap();
    assert_eq!(got.deliveries.len(), 20);
    assert!(got.deliveries.values().all(|&n| n == 1));
    drop(got);
    sink.stop();
    drop(dns);
}

#[test]
fn ten_thousand_recipients_over_twenty_domains_each_end_once_with_the_right_record() {
    use common::sink::Behaviour;
    const PER_DOMAIN: usize = 500;
    // d0..d15 accept, d16 and d17 answer 450 at first, d18 has unknown users, d19 a null MX.
    let domains: Vec<String> = (0..20).map(|i| format!("d{i}.test")).collect();
    let mut zone = String::new();
    for (i, d) in domains.iter().enumerate() {
        if i == 19 {
            zone.push_str(&format!("dns-rr={d},15,000000\n"));
        } else {
            // Sites share MX hosts in pairs, so some scopes hold two domains.
            zone.push_str(&format!("mx-host={d},mx{}.sites.test,10\n", i / 2));
        }
    }
    for i in 0..10 {
        zone.push_str(&format!("address=/mx{i}.sites.test/127.0.0.1\n"));
    }
    let dns_dir = tempfile::tempdir().unwrap();
    let Some(dns) = Dnsmasq::start_with(dns_dir.path(), &zone) else {
        return;
    };
    let sink = Sink::start(HashMap::from([
        ("d16.test".to_string(), Behaviour::DeferOnce),
        ("d17.test".to_string(), Behaviour::DeferOnce),
        ("d18.test".to_string(), Behaviour::UnknownUser),
    ]));
    let extra = format!(
        "[delivery]\nallow_private_destinations = true\nretry_first = \"1s\"\nretry_max_interval = \"1s\"\nsite_connection_limit = 4\n[dns]\nnameservers = [\"127.0.0.1:{}\"]\n[smtp]\nport = {}\n",
        dns.port,
        sink.addr.port()
    );
    let env = Env::new(2, "", &extra);
    let engine = env.start();
    let mut s = format!("{HEADER}\n");
    for i in 0..PER_DOMAIN {
        for d in &domains {
            s.push_str(&format!(
                "{{\"to\":\"u{i}@{d}\",\"vars\":{{\"first_name\":\"N{i}\"}}}}\n"
            ));
        }
    }
    env.drop_input("big.jsonl", s.as_bytes());
    let total = domains.len() * PER_DOMAIN;
    wait_final(&env, &engine, total, Duration::from_secs(120));
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));

    let mut finals: HashMap<String, Vec<serde_json::Value>> = HashMap::new();
    let mut transient = 0;
    for r in env.log_records() {
        match r["type"].as_str().unwrap() {
            "Delivery" | "Bounce" | "Expiration" => finals
                .entry(r["recipient"].as_str().unwrap().to_string())
                .or_default()
                .push(r),
            "TransientFailure" => transient += 1,
            _ => {}
        }
    }
    assert_eq!(finals.len(), total);
    assert!(
        finals.values().all(|v| v.len() == 1),
        "exactly one final record per recipient"
    );
    for (rcpt, v) in &finals {
        let r = &v[0];
        match rcpt.rsplit_once('@').unwrap().1 {
            "d18.test" => assert_eq!(
                (r["type"].as_str(), r["bounce_category"].as_str()),
                (Some("Bounce"), Some("bad-mailbox")),
                "{rcpt}"
            ),
            "d19.test" => assert_eq!(
                (r["type"].as_str(), r["enhanced"].as_str()),
                (Some("Bounce"), Some("5.1.10")),
                "{rcpt}"
            ),
            _ => assert_eq!(r["type"], "Delivery", "{rcpt}"),
        }
    }
    assert_eq!(
        transient,
        2 * PER_DOMAIN,
        "each deferred-once recipient failed once, then arrived"
    );
    let got = sink.received.lock().unwrap();
    assert_eq!(
        got.deliveries.len(),
        18 * PER_DOMAIN,
        "everything deliverable arrived"
    );
    assert!(got.deliveries.values().all(|&n| n == 1), "no duplicates");
    drop(got);
    sink.stop();
    drop(dns);
}

#[test]
fn a_provider_scope_sends_each_domain_to_its_own_mx_hosts() {
    // One provider (one throttle scope) spans two domains whose MX hosts differ.
    let sink_a = Sink::start(HashMap::new());
    let port = sink_a.addr.port();
    let sink_b = Sink::start_on(format!("127.0.0.2:{port}").parse().unwrap());
    let zone = "mx-host=a.test,mxa.prov.test,10\naddress=/mxa.prov.test/127.0.0.1\n\
                mx-host=b.test,mxb.prov.test,10\naddress=/mxb.prov.test/127.0.0.2\n";
    let dns_dir = tempfile::tempdir().unwrap();
    let Some(dns) = Dnsmasq::start_with(dns_dir.path(), zone) else {
        return;
    };
    let extra = format!(
        "[delivery]\nallow_private_destinations = true\nsite_connection_limit = 1\n[dns]\nnameservers = [\"127.0.0.1:{}\"]\n[smtp]\nport = {port}\n[providers.prov]\nmx_suffixes = [\".prov.test\"]\nconnection_limit = 1\n",
        dns.port
    );
    // One shard: its home holds both domains in one pending scope.
    let env = Env::new(1, "", &extra);
    let engine = env.start();
    let mut s = format!("{HEADER}\n");
    for i in 0..10 {
        s.push_str(&format!(
            "{{\"to\":\"u{i}@a.test\"}}\n{{\"to\":\"u{i}@b.test\"}}\n"
        ));
    }
    env.drop_input("p.jsonl", s.as_bytes());
    wait_final(&env, &engine, 20, Duration::from_secs(60));
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let a = sink_a.received.lock().unwrap().deliveries.clone();
    let b = sink_b.received.lock().unwrap().deliveries.clone();
    assert_eq!(a.len(), 10, "{a:?}");
    assert_eq!(b.len(), 10, "{b:?}");
    assert!(a.keys().all(|r| r.ends_with("@a.test")), "{a:?}");
    assert!(b.keys().all(|r| r.ends_with("@b.test")), "{b:?}");
    let records = env.log_records();
    let d: Vec<&serde_json::Value> = records.iter().filter(|r| r["type"] == "Delivery").collect();
    assert!(d.iter().all(|r| r["provider"] == "prov"));
    assert!(d
        .iter()
        .filter(|r| r["domain"] == "b.test")
        .all(|r| r["mx"] == "mxb.prov.test"));
    sink_a.stop();
    sink_b.stop();
    drop(dns);
}
