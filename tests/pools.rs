//! Egress sources and pools (`[sources]`, `[pools]`, `[tenants]`), checked by what receivers
//! see: which local address each connection came from, the EHLO name it gave, and how the
//! recipients spread. Sources are loopback addresses (127.0.0.61-63); every engine and sink
//! a test starts is stopped by it.

mod common;

use common::sink::Sink;
use common::*;
use serde_json::Value;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

fn batch(header: Value, recipients: &[String]) -> Vec<u8> {
    let mut s = format!("{header}\n");
    for r in recipients {
        s.push_str(&format!("{}\n", serde_json::json!({ "to": r })));
    }
    s.into_bytes()
}

fn header(campaign: &str, tenant: &str, pool: Option<&str>) -> Value {
    let mut h = serde_json::json!({
        "campaign": campaign, "tenant": tenant, "from": "bounces@acme.example",
        "template": "From: Acme <news@acme.example>\r\nTo: {{ to }}\r\nSubject: hi\r\n\r\nHello\r\n"
    });
    if let Some(p) = pool {
        h["pool"] = p.into();
    }
    h
}

fn addrs(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}@pool.test")).collect()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn config(sink: &Sink) -> String {
    format!(
        "[delivery]\nallow_private_destinations = true\n\
         [[routes]]\ndomain = \"pool.test\"\nhosts = [\"{}\"]\n\
         [sources.s1]\naddress = \"127.0.0.61\"\nhelo_name = \"s1.mta.test\"\n\
         [sources.s2]\naddress = \"127.0.0.62\"\nhelo_name = \"s2.mta.test\"\n\
         [sources.s3]\naddress = \"127.0.0.63\"\nhelo_name = \"s3.mta.test\"\n\
         [pools.default]\nsources = [\"s1\", \"s2\", \"s3\"]\nweights = [2, 1, 1]\n\
         [pools.solo]\nsources = [\"s3\"]\n\
         [tenants.beta]\npool = \"solo\"\n",
        sink.addr
    )
}

/// Each connection binds its source's address and says its EHLO name; recipients spread
/// over the pool by weight; a tenant's default pool and a batch's own pool are followed; a
/// batch naming an unknown pool is refused whole; the log names each attempt's source.
#[test]
fn connections_leave_from_their_pool_sources_by_weight() {
    let sink = Sink::start(HashMap::new());
    let env = Env::new(2, "", &config(&sink));
    let engine = env.start();
    env.drop_input(
        "a.jsonl",
        &batch(header("spread", "acme", None), &addrs("a", 800)),
    );
    env.drop_input(
        "b.jsonl",
        &batch(header("tenant-pool", "beta", None), &addrs("b", 100)),
    );
    env.drop_input(
        "c.jsonl",
        &batch(header("own-pool", "acme", Some("solo")), &addrs("c", 100)),
    );
    env.drop_input(
        "d.jsonl",
        &batch(header("no-pool", "acme", Some("nope")), &addrs("d", 5)),
    );
    wait_final(&env, &engine, 1000, Duration::from_secs(60));
    let got = sink.received.lock().unwrap();
    let by_client = got.by_client.clone();
    drop(got);
    let count = |a: &str| by_client.get(&ip(a)).map_or(0, |c| c.0);
    assert_eq!(
        by_client
            .keys()
            .copied()
            .collect::<std::collections::BTreeSet<_>>(),
        [ip("127.0.0.61"), ip("127.0.0.62"), ip("127.0.0.63")].into(),
        "connections came only from the sources: {by_client:?}"
    );
    for (a, helo) in [
        ("127.0.0.61", "s1.mta.test"),
        ("127.0.0.62", "s2.mta.test"),
        ("127.0.0.63", "s3.mta.test"),
    ] {
        assert_eq!(
            by_client[&ip(a)].1,
            [helo.to_string()].into(),
            "{a} said its own EHLO name"
        );
    }
    // 800 spread 2:1:1 (400, 200, 200 expected; a hash spreads them within a few percent),
    // and s3 also sends the 200 of the tenant's and the batch's pool.
    let (s1, s2, s3) = (
        count("127.0.0.61"),
        count("127.0.0.62"),
        count("127.0.0.63"),
    );
    assert_eq!(s1 + s2 + s3, 1000);
    assert!((340..=460).contains(&s1), "s1 {s1}");
    assert!((150..=250).contains(&s2), "s2 {s2}");
    assert!((350..=450).contains(&s3), "s3 {s3}");

    let records = env.log_records();
    let deliveries: Vec<&Value> = records.iter().filter(|r| r["type"] == "Delivery").collect();
    assert_eq!(deliveries.len(), 1000);
    for r in &deliveries {
        assert_eq!(r["provider"], "route:pool.test", "{r}");
        let source = r["source"].as_str().unwrap_or_default();
        assert!(source.starts_with("127.0.0.6"), "{r}");
        if r["campaign"] == "tenant-pool" || r["campaign"] == "own-pool" {
            assert_eq!(source, "127.0.0.63", "{r}");
        }
    }
    let bad = env.spool_files("bad");
    assert!(bad.iter().any(|f| f.ends_with("d.jsonl")), "{bad:?}");
    let reason = bad
        .iter()
        .find(|f| f.contains("d.jsonl") && f.ends_with(".err"))
        .map(|f| std::fs::read_to_string(env.path(&format!("spool/bad/{f}"))).unwrap())
        .unwrap_or_default();
    assert!(
        reason.contains("unknown pool \"nope\""),
        "{bad:?}: {reason}"
    );
    engine.stop(Duration::from_secs(20));
    sink.stop();
}

/// Suspending a source moves its share to the pool's other sources, with none of its mail
/// lost; resuming brings it back.
#[test]
fn a_suspended_source_hands_its_share_to_the_others() {
    let sink = Sink::start(HashMap::new());
    let env = Env::new(2, "", &config(&sink));
    let engine = env.start();
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["-c", env.config.to_str().unwrap()]);
        env.run_cli(&all)
    };
    let (code, out, err) = cli(&["queue", "suspend", "source:s1", "--reason", "listed"]);
    assert_eq!(code, 0, "{out}{err}");
    // An unknown source, and a bounce of a source, are refused with a reason.
    let (code, _, err) = cli(&["queue", "suspend", "source:s9", "--reason", "x"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("not a [sources] entry"), "{err}");
    let (code, _, err) = cli(&["queue", "bounce", "source:s2", "--reason", "x"]);
    assert_ne!(code, 0);
    assert!(err.contains("suspended or resumed"), "{err}");
    env.drop_input(
        "a.jsonl",
        &batch(header("spread", "acme", None), &addrs("a", 400)),
    );
    wait_final(&env, &engine, 400, Duration::from_secs(60));
    {
        let got = sink.received.lock().unwrap();
        assert!(
            !got.by_client.contains_key(&ip("127.0.0.61")),
            "a suspended source sent: {:?}",
            got.by_client
        );
        let total: usize = got.by_client.values().map(|c| c.0).sum();
        assert_eq!(total, 400);
        assert_eq!(got.deliveries.len(), 400, "every recipient once");
    }
    let (code, out, err) = cli(&["queue", "resume", "source:s1"]);
    assert_eq!(code, 0, "{out}{err}");
    env.drop_input(
        "b.jsonl",
        &batch(header("back", "acme", None), &addrs("b", 400)),
    );
    wait_final(&env, &engine, 800, Duration::from_secs(60));
    let got = sink.received.lock().unwrap();
    let s1 = got.by_client.get(&ip("127.0.0.61")).map_or(0, |c| c.0);
    assert!(s1 > 100, "resumed s1 sent {s1} of 400");
    drop(got);
    engine.stop(Duration::from_secs(20));
    sink.stop();
}

/// A source whose reverse DNS does not name its EHLO name (or names it, but the name does
/// not lead back) gets a loud warning at start; one that passes does not.
#[test]
fn sources_failing_forward_confirmed_reverse_dns_are_warned_about() {
    use spate_sim::dns::{DnsResponder, Zone};
    let mut zone = Zone::default();
    zone.ptr
        .insert(ip("127.0.0.61"), vec!["s1.mta.test".into()]);
    zone.hosts
        .insert("s1.mta.test".into(), vec![ip("127.0.0.61")]);
    zone.ptr
        .insert(ip("127.0.0.62"), vec!["wrong.example".into()]);
    zone.ptr
        .insert(ip("127.0.0.63"), vec!["s3.mta.test".into()]);
    zone.hosts
        .insert("s3.mta.test".into(), vec![ip("127.0.0.99")]);
    let dns = DnsResponder::start("127.0.0.1:0".parse().unwrap(), zone).unwrap();
    let sink = Sink::start(HashMap::new());
    let extra = format!("{}[dns]\nnameservers = [\"{}\"]\n", config(&sink), dns.addr);
    let env = Env::new(1, "", &extra);
    let engine = env.start();
    wait_until(Duration::from_secs(20), "the source checks", || {
        let e = engine.stderr();
        e.contains("source s1") && e.contains("source s2") && e.contains("source s3")
    });
    let stderr = engine.stderr();
    let line = |name: &str| {
        stderr
            .lines()
            .find(|l| l.contains(&format!("source {name} ")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(!line("s1").contains("WARNING"), "{}", line("s1"));
    assert!(line("s2").contains("WARNING"), "{stderr}");
    assert!(line("s2").contains("wrong.example"), "{}", line("s2"));
    assert!(line("s3").contains("WARNING"), "{stderr}");
    assert!(line("s3").contains("127.0.0.99"), "{}", line("s3"));
    engine.stop(Duration::from_secs(20));
    sink.stop();
    drop(dns);
}

/// Milliseconds of the day from a log record's RFC 3339 `ts` (the runs here last seconds).
fn ms_of_day(ts: &str) -> u64 {
    // 2026-12-02T14:03:57.123Z
    let t = &ts[11..];
    let h: u64 = t[0..2].parse().unwrap();
    let m: u64 = t[3..5].parse().unwrap();
    let s: u64 = t[6..8].parse().unwrap();
    let ms: u64 = t[9..12].parse().unwrap();
    ((h * 60 + m) * 60 + s) * 1000 + ms
}

/// A provider's limits apply per source, and `provider_connection_limit` and
/// `provider_max_message_rate` cap it across them; `queue summary` shows the provider as one
/// row with each source under it.
#[test]
fn provider_limits_cap_the_sources_together() {
    use spate_sim::dns::{DnsResponder, Zone};
    let mut zone = Zone::default();
    zone.mx
        .insert("capped.test".into(), vec![(10, "mx.capped.test".into())]);
    zone.hosts
        .insert("mx.capped.test".into(), vec![ip("127.0.0.1")]);
    let dns = DnsResponder::start("127.0.0.1:0".parse().unwrap(), zone).unwrap();
    // Each message takes 50 ms to be accepted: connections stay open.
    let sink = Sink::start_with_delay(HashMap::new(), Duration::from_millis(50));
    let extra = format!(
        "[delivery]\nallow_private_destinations = true\n\
         [dns]\nnameservers = [\"{}\"]\n[smtp]\nport = {}\n\
         [providers.capped]\nmx_suffixes = [\"mx.capped.test\"]\nconnection_limit = 2\n\
         provider_connection_limit = 3\nprovider_max_message_rate = \"40/s\"\n\
         [sources.s1]\naddress = \"127.0.0.61\"\n[sources.s2]\naddress = \"127.0.0.62\"\n\
         [pools.default]\nsources = [\"s1\", \"s2\"]\n",
        dns.addr,
        sink.addr.port()
    );
    let env = Env::new(2, "", &extra);
    let engine = env.start();
    let rcpts: Vec<String> = (0..200).map(|i| format!("c{i}@capped.test")).collect();
    env.drop_input("c.jsonl", &batch(header("capped", "acme", None), &rcpts));
    // While it sends: one row for the provider, each source under it.
    let mut seen_sources = 0;
    for _ in 0..100 {
        let (code, out, _) = env.run_cli(&[
            "queue",
            "summary",
            "--json",
            "-c",
            env.config.to_str().unwrap(),
        ]);
        assert_eq!(code, 0);
        let v: Value = serde_json::from_str(out.trim()).unwrap();
        if let Some(row) = v["scopes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["scope"] == "capped")
        {
            seen_sources = seen_sources.max(row["sources"].as_array().map_or(0, Vec::len));
            if seen_sources == 2 {
                // Two sources of 2 each, capped at 3 together.
                assert_eq!(row["connection_limit"], 3, "{row}");
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(seen_sources, 2, "the summary lists both sources");
    wait_final(&env, &engine, 200, Duration::from_secs(60));
    let got = sink.received.lock().unwrap();
    assert!(got.open_max <= 3, "{} connections at once", got.open_max);
    assert!(got.by_client.contains_key(&ip("127.0.0.61")));
    assert!(got.by_client.contains_key(&ip("127.0.0.62")));
    drop(got);
    // Never more than the provider's 40 a second, whichever source sent them (a second's
    // window over the log's delivery times; the pace starts with one message at once).
    let mut times: Vec<u64> = env
        .log_records()
        .iter()
        .filter(|r| r["type"] == "Delivery")
        .map(|r| ms_of_day(r["ts"].as_str().unwrap()))
        .collect();
    times.sort_unstable();
    let busiest = (0..times.len())
        .map(|i| {
            times[i..]
                .iter()
                .take_while(|&&t| t < times[i] + 1000)
                .count()
        })
        .max()
        .unwrap();
    assert!(busiest <= 42, "{busiest} deliveries within one second");
    engine.stop(Duration::from_secs(20));
    sink.stop();
    drop(dns);
}

/// A receiver that bans one source's address: the shipped rule suspends that source at it,
/// its mail goes to the pool's other source and none of it bounces; the firing shows in
/// `queue rules` and `/metrics`; lifted, the source comes back gradually. A
/// configured bounce rule bounces what it matches at once.
#[test]
fn a_banned_source_is_suspended_by_its_rule_and_comes_back_gradually() {
    let sink = Sink::start(HashMap::from([(
        "gone.test".to_string(),
        common::sink::Behaviour::AlwaysDefer,
    )]));
    sink.received
        .lock()
        .unwrap()
        .blocked
        .insert(ip("127.0.0.62"));
    let extra = format!(
        "[delivery]\nallow_private_destinations = true\n\
         [[routes]]\ndomain = \"pool.test\"\nhosts = [\"{0}\"]\n\
         [[routes]]\ndomain = \"gone.test\"\nhosts = [\"{0}\"]\n\
         [sources.s1]\naddress = \"127.0.0.61\"\n[sources.s2]\naddress = \"127.0.0.62\"\n\
         [pools.default]\nsources = [\"s1\", \"s2\"]\n\
         [[rules]]\nname = \"gone-mailbox\"\nmatch = \"mailbox temporarily unavailable\"\naction = \"bounce\"\n",
        sink.addr
    );
    let env = Env::new(2, "", &extra);
    let engine = env.start();
    let cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["-c", env.config.to_str().unwrap()]);
        env.run_cli(&all)
    };
    env.drop_input(
        "a.jsonl",
        &batch(header("first", "acme", None), &addrs("a", 300)),
    );
    env.drop_input(
        "g.jsonl",
        &batch(
            header("gone", "acme", None),
            &["x@gone.test".to_string(), "y@gone.test".to_string()],
        ),
    );
    wait_final(&env, &engine, 302, Duration::from_secs(60));
    let records = env.log_records();
    let count = |kind: &str| records.iter().filter(|r| r["type"] == kind).count();
    // None of the banned source's mail bounced: all 300 delivered, from the other source.
    assert_eq!(count("Delivery"), 300);
    let bounces: Vec<&Value> = records.iter().filter(|r| r["type"] == "Bounce").collect();
    assert_eq!(bounces.len(), 2, "{bounces:?}");
    for b in &bounces {
        assert!(
            b["recipient"].as_str().unwrap().ends_with("@gone.test"),
            "{b}"
        );
        assert!(
            b["response"]
                .as_str()
                .unwrap()
                .contains("rule gone-mailbox: bounced"),
            "{b}"
        );
        assert_eq!(b["attempt"], 1, "bounced at its first answer: {b}");
    }
    let deferred_by_rule = records
        .iter()
        .filter(|r| {
            r["type"] == "TransientFailure"
                && r["response"]
                    .as_str()
                    .unwrap_or("")
                    .contains("rule microsoft-banned-ip")
        })
        .count();
    assert!(deferred_by_rule >= 1, "the ban was answered by its rule");
    {
        let got = sink.received.lock().unwrap();
        assert!(!got.by_client.contains_key(&ip("127.0.0.62")));
        assert_eq!(got.by_client[&ip("127.0.0.61")].0, 300);
    }
    // queue rules and /metrics name it.
    let (code, out, err) = cli(&["queue", "rules", "--json"]);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let firing = v["firings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["scope"] == "route:pool.test@s2")
        .cloned()
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(firing["rule"], "microsoft-banned-ip");
    assert_eq!(firing["in_force"], true);
    let config = spate::config::Config::load(&env.config).unwrap();
    let (status, metrics) =
        spate::admin::client::request(&config, "GET", "/metrics", None).unwrap();
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    // Once per scope it fired on (gone.test's mail may have met the ban from s2 too).
    let fired: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("spate_rule_fired_total{rule=\"microsoft-banned-ip\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!((1..=2).contains(&fired), "{fired}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("spate_rule_in_force{")
                && l.contains("scope=\"route:pool.test@s2\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    // Lifted (and the receiver unbans it): the source comes back over the rule's ramp, a
    // small share at first, not half the mail at once.
    sink.received.lock().unwrap().blocked.clear();
    let (code, out, err) = cli(&["queue", "lift", "route:pool.test@s2"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, _, _) = cli(&["queue", "lift", "route:pool.test@s2"]);
    assert_ne!(code, 0, "nothing left to lift");
    env.drop_input(
        "b.jsonl",
        &batch(header("second", "acme", None), &addrs("b", 1000)),
    );
    wait_final(&env, &engine, 1302, Duration::from_secs(60));
    let got = sink.received.lock().unwrap();
    let s2 = got.by_client.get(&ip("127.0.0.62")).map_or(0, |c| c.0);
    assert!(
        (1..200).contains(&s2),
        "the lifted source took {s2} of 1000 (ramping from 5% of its half)"
    );
    drop(got);
    engine.stop(Duration::from_secs(20));
    sink.stop();
}

/// Mail from the system's address (no pool) has no other source: a rule's suspension of its
/// scope holds it, and the end of the suspension's duration releases it (not the end of its
/// ramp).
#[test]
fn a_suspension_of_the_system_address_holds_mail_until_its_duration_ends() {
    let sink = Sink::start(HashMap::new());
    sink.received
        .lock()
        .unwrap()
        .blocked
        .insert(ip("127.0.0.1"));
    let extra = format!(
        "[delivery]\nallow_private_destinations = true\ndefault_rules = false\n\
         [[routes]]\ndomain = \"sys.test\"\nhosts = [\"{}\"]\n\
         [sources.s1]\naddress = \"127.0.0.61\"\n\
         [[rules]]\nname = \"ban\"\nmatch = \"banned sending IP\"\naction = \"suspend\"\n\
         duration = \"3s\"\nramp = \"10m\"\n",
        sink.addr
    );
    let env = Env::new(1, "", &extra);
    let engine = env.start();
    env.drop_input(
        "s.jsonl",
        &batch(
            header("sys", "acme", None),
            &(0..20)
                .map(|i| format!("u{i}@sys.test"))
                .collect::<Vec<_>>(),
        ),
    );
    // The first reply fires the rule; the receiver lifts its ban at once.
    wait_until(Duration::from_secs(20), "the rule to fire", || {
        engine.stderr().contains("rule ban fired on route:sys.test")
    });
    sink.received.lock().unwrap().blocked.clear();
    wait_final(&env, &engine, 20, Duration::from_secs(30));
    let records = env.log_records();
    assert_eq!(
        records.iter().filter(|r| r["type"] == "Delivery").count(),
        20
    );
    assert_eq!(records.iter().filter(|r| r["type"] == "Bounce").count(), 0);
    engine.stop(Duration::from_secs(20));
    sink.stop();
}

/// A source under a warm-up schedule sends its day's cap to the provider and no more, the
/// rest of the pool's mail going to the warm source; the counts show in `queue warmup` and
/// `/metrics`, survive a restart, and mail whose only source is full waits (and `queue why`
/// says why).
#[test]
fn a_warming_source_sends_its_days_cap_and_the_rest_goes_to_the_warm_one() {
    use spate_sim::dns::{DnsResponder, Zone};
    let mut zone = Zone::default();
    zone.mx
        .insert("fresh.test".into(), vec![(10, "mx.fresh.test".into())]);
    zone.hosts
        .insert("mx.fresh.test".into(), vec![ip("127.0.0.1")]);
    let dns = DnsResponder::start("127.0.0.1:0".parse().unwrap(), zone).unwrap();
    let sink = Sink::start(HashMap::new());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let today = spate::config::date_text(now_ms / 86_400_000);
    let extra = format!(
        "[delivery]\nallow_private_destinations = true\n\
         [dns]\nnameservers = [\"{}\"]\n[smtp]\nport = {}\n\
         [providers.fresh]\nmx_suffixes = [\"mx.fresh.test\"]\n\
         [warmup.new-ip]\ndaily = [30, 60]\n\
         [sources.s1]\naddress = \"127.0.0.61\"\n\
         [sources.s2]\naddress = \"127.0.0.62\"\nwarmup = \"new-ip\"\nwarmup_start = \"{today}\"\n\
         [pools.default]\nsources = [\"s1\", \"s2\"]\n\
         [pools.only-new]\nsources = [\"s2\"]\n",
        dns.addr,
        sink.addr.port()
    );
    let env = Env::new(2, "", &extra);
    let engine = env.start();
    let rcpts: Vec<String> = (0..200).map(|i| format!("w{i}@fresh.test")).collect();
    env.drop_input("w.jsonl", &batch(header("warm", "acme", None), &rcpts));
    wait_final(&env, &engine, 200, Duration::from_secs(60));
    let got = sink.received.lock().unwrap();
    let from = |a: &str| got.by_client.get(&ip(a)).map_or(0, |c| c.0);
    // Exactly the day's cap from the new address; the rest from the warm one.
    assert_eq!(from("127.0.0.62"), 30);
    assert_eq!(from("127.0.0.61"), 170);
    drop(got);
    let cfg = env.config.to_str().unwrap();
    let (code, out, _) = env.run_cli(&["queue", "warmup", "--json", "-c", cfg]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(out.trim()).unwrap();
    let w = &v["sources"][0];
    assert_eq!(
        (
            &w["source"],
            &w["provider"],
            &w["state"],
            &w["cap"],
            &w["delivered_today"]
        ),
        (
            &Value::from("s2"),
            &Value::from("fresh"),
            &Value::from("full"),
            &Value::from(30),
            &Value::from(30)
        ),
        "{v}"
    );
    let (code, text, _) = env.run_cli(&["queue", "warmup", "-c", cfg]);
    assert_eq!(code, 0);
    assert!(text.contains("s2") && text.contains("full"), "{text}");
    let config = spate::config::Config::load(&env.config).unwrap();
    let (status, metrics) =
        spate::admin::client::request(&config, "GET", "/metrics", None).unwrap();
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics).unwrap();
    assert!(
        metrics.contains("spate_warmup_cap{source=\"s2\",provider=\"fresh\"} 30")
            && metrics
                .contains("spate_warmup_delivered_today{source=\"s2\",provider=\"fresh\"} 30"),
        "{metrics}"
    );
    engine.stop(Duration::from_secs(20));
    // The day's counts survive the restart: mail whose only source is the full one waits.
    let engine = env.start();
    let later: Vec<String> = (0..5).map(|i| format!("later{i}@fresh.test")).collect();
    env.drop_input(
        "later.jsonl",
        &batch(header("later", "acme", Some("only-new")), &later),
    );
    wait_until(Duration::from_secs(20), "the batch to be queued", || {
        env.queued_recipients().len() == 5
    });
    let mut why = String::new();
    wait_until(
        Duration::from_secs(20),
        "queue why to name the warm-up",
        || {
            let (_, out, _) = env.run_cli(&["queue", "why", "later0@fresh.test", "-c", cfg]);
            why = out;
            why.contains("warm-up cap")
        },
    );
    assert!(why.contains("s2"), "{why}");
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        sink.received.lock().unwrap().by_client[&ip("127.0.0.62")].0,
        30,
        "nothing more from the full source after the restart"
    );
    engine.stop(Duration::from_secs(20));
    sink.stop();
    drop(dns);
}
