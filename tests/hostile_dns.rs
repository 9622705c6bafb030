//! Hostile DNS through the real binary: DNS may not choose where Spate connects. An MX
//! target with a port or that is an IP literal is never used; an MX whose address is on
//! loopback (or any non-public range) is refused unless `[delivery]
//! allow_private_destinations = true`; a domain with no MX and no address bounces instead of
//! being retried for days. Each refusal is a `Bounce` naming why, and the operator's own
//! `[[routes]]` are never refused.

mod common;

use common::sink::Sink;
use common::*;
use spate_sim::dns::{DnsResponder, Zone};
use std::collections::HashMap;
use std::time::Duration;

fn recipients(domains: &[&str]) -> Vec<u8> {
    let mut s = format!("{HEADER}\n");
    for d in domains {
        s.push_str(&format!(
            "{{\"to\":\"user@{d}\",\"vars\":{{\"first_name\":\"N\"}}}}\n"
        ));
    }
    s.into_bytes()
}

/// The zone: every hostile case points at the sink's port on loopback, so a wrong decision
/// would show as a delivery.
fn zone(sink_port: u16) -> Zone {
    let mut z = Zone::default();
    let loopback: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    z.mx.insert(
        "port.test".into(),
        vec![(10, format!("mx.port.test:{sink_port}"))],
    );
    z.hosts
        .insert(format!("mx.port.test:{sink_port}"), vec![loopback]);
    z.mx.insert("literal.test".into(), vec![(10, "127.0.0.1".into())]);
    z.mx.insert("private.test".into(), vec![(10, "mx.private.test".into())]);
    z.hosts.insert("mx.private.test".into(), vec![loopback]);
    // Known to the zone (so not NXDOMAIN) but with no MX and no address.
    z.hosts.insert("noaddr.test".into(), vec![]);
    z
}

fn bounce_of(records: &[serde_json::Value], domain: &str) -> serde_json::Value {
    records
        .iter()
        .find(|r| r["domain"] == domain && r["type"] == "Bounce")
        .unwrap_or_else(|| panic!("no Bounce for {domain}: {records:#?}"))
        .clone()
}

#[test]
fn dns_cannot_choose_the_port_an_ip_literal_or_a_private_address() {
    let sink = Sink::start(HashMap::new());
    let dns = DnsResponder::start("127.0.0.1:0".parse().unwrap(), zone(sink.addr.port())).unwrap();
    let extra = format!(
        "[delivery]\nretry_first = \"1s\"\n[dns]\nnameservers = [\"{}\"]\n[smtp]\nport = {}\n[[routes]]\ndomain = \"routed.test\"\nhosts = [\"{}\"]\n",
        dns.addr,
        sink.addr.port(),
        sink.addr
    );
    let env = Env::new(2, "", &extra);
    let engine = env.start();
    let domains = [
        "port.test",
        "literal.test",
        "private.test",
        "noaddr.test",
        "routed.test",
    ];
    env.drop_input("c.jsonl", &recipients(&domains));
    wait_final(&env, &engine, domains.len(), Duration::from_secs(60));
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));

    let got = sink.received.lock().unwrap();
    assert_eq!(
        got.deliveries.keys().collect::<Vec<_>>(),
        ["user@routed.test"],
        "only the operator's route was delivered"
    );
    drop(got);
    let records = env.log_records();
    for d in ["port.test", "literal.test", "private.test"] {
        let b = bounce_of(&records, d);
        assert_eq!(b["enhanced"], "5.4.4", "{b}");
        assert_eq!(b["bounce_category"], "policy", "{b}");
        assert_eq!(b["code"], 0, "{b}");
    }
    let private = bounce_of(&records, "private.test");
    let text = private["response"].as_str().unwrap();
    assert!(
        text.contains("127.0.0.1") && text.contains("allow_private_destinations"),
        "names the address and the key: {text}"
    );
    let port = bounce_of(&records, "port.test");
    assert!(
        port["response"]
            .as_str()
            .unwrap()
            .contains("not a host name"),
        "{port}"
    );
    let noaddr = bounce_of(&records, "noaddr.test");
    assert_eq!(noaddr["enhanced"], "5.1.2", "{noaddr}");
    assert_eq!(noaddr["bounce_category"], "bad-domain", "{noaddr}");
    assert_eq!(noaddr["attempt"], 1, "bounced at once, not retried");
    sink.stop();
}

#[test]
fn allow_private_destinations_lets_tests_deliver_to_loopback_but_never_to_a_port_from_dns() {
    let sink = Sink::start(HashMap::new());
    let dns = DnsResponder::start("127.0.0.1:0".parse().unwrap(), zone(sink.addr.port())).unwrap();
    // The sink listens on a high port; `[smtp] port` points there, as the tests do.
    let extra = format!(
        "[delivery]\nallow_private_destinations = true\nretry_first = \"1s\"\n[dns]\nnameservers = [\"{}\"]\n[smtp]\nport = {}\n",
        dns.addr,
        sink.addr.port()
    );
    let env = Env::new(1, "", &extra);
    let engine = env.start();
    env.drop_input(
        "c.jsonl",
        &recipients(&["private.test", "port.test", "literal.test"]),
    );
    wait_final(&env, &engine, 3, Duration::from_secs(60));
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let got = sink.received.lock().unwrap();
    assert_eq!(
        got.deliveries.keys().collect::<Vec<_>>(),
        ["user@private.test"]
    );
    drop(got);
    let records = env.log_records();
    for d in ["port.test", "literal.test"] {
        assert_eq!(bounce_of(&records, d)["enhanced"], "5.4.4");
    }
    sink.stop();
}
