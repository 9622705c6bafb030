//! Operating a running engine through its admin API and the `spate queue` and `spate
//! suppression` commands, checked by their effect: what the receivers got, the delivery
//! log, `/metrics`, the audit file. Every address here is loopback; every engine, sink and
//! DNS responder a test starts is stopped by it.

mod common;

use common::sink::{Behaviour, Sink};
use common::*;
use serde_json::Value;
use spate::config::Config;
use std::collections::HashMap;
use std::time::{Duration, Instant};

fn batch(campaign: &str, tenant: &str, recipients: &[String]) -> Vec<u8> {
    let header = serde_json::json!({
        "campaign": campaign, "tenant": tenant, "from": "bounces@acme.example",
        "template": "From: Acme <news@acme.example>\r\nTo: {{ to }}\r\nSubject: hi\r\n\r\nHello\r\n"
    });
    let mut s = format!("{header}\n");
    for r in recipients {
        s.push_str(&format!("{}\n", serde_json::json!({ "to": r })));
    }
    s.into_bytes()
}

fn addrs(prefix: &str, domain: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}@{domain}")).collect()
}

/// `spate ARGS -c CONFIG`: exit code, stdout, stderr.
fn cli(env: &Env, args: &[&str]) -> (i32, String, String) {
    let mut all: Vec<&str> = args.to_vec();
    let config = env.config.to_str().unwrap();
    all.extend(["-c", config]);
    env.run_cli(&all)
}

fn cli_json(env: &Env, args: &[&str]) -> (i32, Value) {
    let mut all = args.to_vec();
    all.push("--json");
    let (code, out, err) = cli(env, &all);
    let v = serde_json::from_str(out.trim()).unwrap_or_else(|_| panic!("{args:?}: {out} {err}"));
    (code, v)
}

/// One request to the engine's API, as the commands make it.
fn api(env: &Env, method: &str, path: &str, body: Option<&str>) -> (u16, Vec<u8>) {
    let config = Config::load(&env.config).unwrap();
    spate::admin::client::request(&config, method, path, body.map(str::as_bytes))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn count(env: &Env, kind: &str, pred: impl Fn(&Value) -> bool) -> usize {
    env.log_records()
        .iter()
        .filter(|r| r["type"] == kind && pred(r))
        .count()
}

/// The sum of a metric's samples whose labels contain every `labels` pair.
fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
            .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

fn routed(sink: &Sink, extra: &str) -> String {
    format!(
        "[delivery]\nallow_private_destinations = true\nretry_first = \"60s\"\n\
         [[routes]]\ndomain = \"*.test\"\nhosts = [\"{}\"]\n{extra}",
        sink.addr
    )
}

#[test]
fn a_suspended_campaign_waits_a_bounced_domain_bounces_and_the_metrics_agree() {
    let sink = Sink::start(HashMap::from([(
        "temp.test".to_string(),
        Behaviour::AlwaysDefer,
    )]));
    let env = Env::new(2, "", &routed(&sink, ""));
    let engine = env.start();

    // Suspended before its mail arrives.
    let (code, out, err) = cli(
        &env,
        &[
            "queue",
            "suspend",
            "campaign:held",
            "--reason",
            "legal review",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(out, "suspended campaign:held\n");
    let held = addrs("h", "fast.test", 5);
    let free = addrs("f", "fast.test", 5);
    let temps = addrs("t", "temp.test", 4);
    env.drop_input("held.jsonl", &batch("held", "acme", &held));
    env.drop_input("free.jsonl", &batch("free", "acme", &free));
    env.drop_input("temp.jsonl", &batch("temps", "acme", &temps));
    wait_until(
        Duration::from_secs(30),
        "free delivered, temps deferred",
        || {
            count(&env, "Delivery", |r| r["campaign"] == "free") == 5
                && count(&env, "TransientFailure", |_| true) >= 4
        },
    );

    // Why is h0 not moving? The suspension, with its reason.
    let (code, why) = cli_json(&env, &["queue", "why", "h0@fast.test"]);
    assert_eq!(code, 0, "{why}");
    assert_eq!(why["constraint"], "suspended", "{why}");
    assert!(
        why["why"].as_str().unwrap().contains("legal review"),
        "{why}"
    );
    assert_eq!(why["recipient"]["state"], "held", "{why}");
    // The live summary counts them held, and says why.
    let (_, summary) = cli_json(&env, &["queue", "summary"]);
    let held_row = summary["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["held"] == 5)
        .unwrap_or_else(|| panic!("no row with the 5 held: {summary}"));
    assert_eq!(held_row["constraint"], "suspended", "{held_row}");
    assert!(
        held_row["why"].as_str().unwrap().contains("campaign:held"),
        "{held_row}"
    );
    // A deferred one waits for its retry time, and says until when.
    let (_, why) = cli_json(&env, &["queue", "why", "t0@temp.test"]);
    assert_eq!(why["constraint"], "retry_times", "{why}");
    assert!(why["until"].as_u64().unwrap() > why["recipient"]["queued_at"].as_u64().unwrap());
    std::thread::sleep(Duration::from_millis(500));
    {
        let got = sink.received.lock().unwrap();
        for r in &held {
            assert!(
                !got.deliveries.contains_key(r),
                "{r} was sent while suspended"
            );
        }
    }
    assert_eq!(count(&env, "Delivery", |r| r["campaign"] == "held"), 0);

    // Bounced with a reason: every queued recipient of the domain, category admin.
    let (code, _, err) = cli(&env, &["queue", "bounce", "domain:temp.test"]);
    assert_eq!(code, 64, "a bounce needs a reason: {err}");
    let (code, out, err) = cli(
        &env,
        &[
            "queue",
            "bounce",
            "domain:temp.test",
            "--reason",
            "customer left",
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
    wait_until(Duration::from_secs(10), "temp.test bounced", || {
        count(&env, "Bounce", |r| r["domain"] == "temp.test") == 4
    });
    for r in env.log_records().iter().filter(|r| r["type"] == "Bounce") {
        assert_eq!(r["bounce_category"], "admin", "{r}");
        assert!(
            r["response"].as_str().unwrap().contains("customer left"),
            "{r}"
        );
    }

    // Resumed: sent now.
    let (code, out, _) = cli(&env, &["queue", "resume", "campaign:held"]);
    assert_eq!((code, out.as_str()), (0, "resumed campaign:held\n"));
    wait_final(&env, &engine, 14, Duration::from_secs(30));
    {
        let got = sink.received.lock().unwrap();
        for r in held.iter().chain(&free) {
            assert_eq!(got.deliveries.get(r), Some(&1), "{r}");
        }
    }

    // Unknown targets are exit 1 and change nothing.
    let (code, _, err) = cli(&env, &["queue", "suspend", "nosuchprovider"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("unknown target"), "{err}");
    let (code, _, _) = cli(&env, &["queue", "suspend", "source:mta9"]);
    assert_eq!(code, 1);

    // The counters equal the delivery log's counts once the shards have published.
    std::thread::sleep(Duration::from_millis(1500));
    let (status, body) = api(&env, "GET", "/metrics", None);
    assert_eq!(status, 200);
    let m = String::from_utf8(body).unwrap();
    for (name, kind) in [
        ("spate_delivered_total", "Delivery"),
        ("spate_deferred_total", "TransientFailure"),
        ("spate_received_total", "Reception"),
        ("spate_rejected_total", "Rejected"),
        ("spate_bounced_total", "Bounce"),
    ] {
        assert_eq!(
            metric(&m, name, &[]) as usize,
            count(&env, kind, |_| true),
            "{name}\n{m}"
        );
    }
    assert_eq!(
        metric(&m, "spate_bounced_total", &[("category", "admin")]),
        4.0
    );
    assert_eq!(
        metric(
            &m,
            "spate_scope_delivered_total",
            &[("scope", "route:*.test")]
        ),
        14.0 - 4.0
    );
    assert!(metric(&m, "spate_group_commit_duration_seconds_count", &[]) > 0.0);
    // Every recipient final: none in flight, none queued.
    assert_eq!(metric(&m, "spate_queue_in_flight", &[]), 0.0, "{m}");
    assert_eq!(metric(&m, "spate_queue_recipients", &[]), 0.0, "{m}");

    // Every action is in the audit file, with the client's address.
    let audit = std::fs::read_to_string(env.path("log/admin.jsonl")).unwrap();
    let lines: Vec<Value> = audit
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let actions: Vec<&str> = lines
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    for a in ["suspend", "bounce", "resume"] {
        assert!(actions.contains(&a), "{audit}");
    }
    assert!(
        lines
            .iter()
            .all(|l| l["client"].as_str().unwrap().starts_with("127.0.0.1:")),
        "{audit}"
    );
    assert!(lines
        .iter()
        .any(|l| l["action"] == "bounce" && l["reason"] == "customer left"));

    // Suspensions survive a restart.
    let (code, _, _) = cli(&env, &["queue", "suspend", "tenant:later"]);
    assert_eq!(code, 0);
    assert_eq!(engine.stop(Duration::from_secs(20)).code(), Some(0));
    let (code, _, err) = cli(&env, &["queue", "why", "x.test"]);
    assert_eq!(code, 69, "engine stopped: {err}");
    let engine = env.start();
    let later = addrs("l", "fast.test", 3);
    env.drop_input("later.jsonl", &batch("later", "later", &later));
    wait_until(Duration::from_secs(10), "later queued", || {
        count(&env, "Reception", |r| r["tenant"] == "later") == 3
    });
    std::thread::sleep(Duration::from_millis(700));
    assert_eq!(count(&env, "Delivery", |r| r["tenant"] == "later"), 0);
    let (_, why) = cli_json(&env, &["queue", "why", "l1@fast.test"]);
    assert_eq!(why["constraint"], "suspended", "{why}");
    let (code, _, _) = cli(&env, &["queue", "resume", "tenant:later"]);
    assert_eq!(code, 0);
    wait_until(Duration::from_secs(15), "later delivered", || {
        count(&env, "Delivery", |r| r["tenant"] == "later") == 3
    });
    assert_eq!(engine.stop(Duration::from_secs(20)).code(), Some(0));
    sink.stop();
}

/// A receiver that takes 20 messages a second and answers more with 421, one the engine
/// caps at 10 a second, and one that greylists: `queue why` names each one's constraint,
/// and `queue retry` sends the greylisted mail before its retry time.
#[test]
fn why_names_pushback_the_rate_ceiling_and_retry_sends_at_once() {
    use spate_sim::dns::{DnsResponder, Zone};
    use spate_sim::profile::SinkProfile;
    let profile = SinkProfile::parse(
        r#"
[[provider]]
name = "slow"
domains = ["slow.test"]
mx = "mx.slow.test"
listen = ["127.0.0.1"]
rate = 20
[[provider]]
name = "capped"
domains = ["capped.test"]
mx = "mx.capped.test"
listen = ["127.0.0.2"]
[[provider]]
name = "grey"
domains = ["grey.test"]
mx = "mx.grey.test"
listen = ["127.0.0.3"]
greylist_s = 2
"#,
        "ops",
    )
    .unwrap();
    let zone = Zone::for_sink(&profile);
    let sink = spate_sim::sink::Sink::start(profile).unwrap();
    let dns = DnsResponder::start("127.0.0.1:0".parse().unwrap(), zone).unwrap();
    let extra = format!(
        "[delivery]\nallow_private_destinations = true\nretry_first = \"60s\"\n\
         [dns]\nnameservers = [\"{}\"]\n[smtp]\nport = {}\n\
         [providers.slowp]\nmx_suffixes = [\"mx.slow.test\"]\nconnection_limit = 4\n\
         [providers.cappedp]\nmx_suffixes = [\"mx.capped.test\"]\nmax_message_rate = \"10/s\"\n\
         [providers.greyp]\nmx_suffixes = [\"mx.grey.test\"]\n",
        dns.addr, sink.port
    );
    let env = Env::new(2, "", &extra);
    let engine = env.start();
    env.drop_input(
        "grey.jsonl",
        &batch("grey", "acme", &addrs("g", "grey.test", 3)),
    );
    env.drop_input(
        "slow.jsonl",
        &batch("slow", "acme", &addrs("s", "slow.test", 600)),
    );
    env.drop_input(
        "capped.jsonl",
        &batch("capped", "acme", &addrs("c", "capped.test", 200)),
    );

    let until = |what: &str, target: &str, want: &str| -> Value {
        let deadline = Instant::now() + Duration::from_secs(25);
        loop {
            let (_, v) = cli_json(&env, &["queue", "why", target]);
            if v["constraint"] == want {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: {v}\n{}",
                engine.stderr()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    let slow = until("pushback", "slow.test", "pushback");
    assert_eq!(slow["scope"], "slowp", "{slow}");
    assert!(
        slow["why"].as_str().unwrap().contains("last reply"),
        "{slow}"
    );
    let capped = until("ceiling", "capped.test", "rate_ceiling");
    assert!(capped["why"].as_str().unwrap().contains("10.0"), "{capped}");

    // The live summary has every scope, with its constraint.
    let (code, summary) = cli_json(&env, &["queue", "summary"]);
    assert_eq!(code, 0);
    let scopes: Vec<&str> = summary["scopes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["scope"].as_str().unwrap())
        .collect();
    assert!(
        scopes.contains(&"slowp") && scopes.contains(&"cappedp"),
        "{summary}"
    );
    let (code, text, _) = cli(&env, &["queue", "summary"]);
    assert_eq!(code, 0);
    assert!(
        text.contains("slowp") && text.contains("slow.test"),
        "{text}"
    );

    // Greylisted on the first attempt, with a minute to wait: retried now instead.
    wait_until(Duration::from_secs(15), "greylisted", || {
        count(&env, "TransientFailure", |r| r["domain"] == "grey.test") == 3
    });
    std::thread::sleep(Duration::from_millis(2100));
    let (code, out, err) = cli(&env, &["queue", "retry", "domain:grey.test"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        out,
        "3 deferred recipients of domain:grey.test are due now\n"
    );
    wait_until(Duration::from_secs(10), "retried at once", || {
        count(&env, "Delivery", |r| r["domain"] == "grey.test") == 3
    });
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    drop(dns);
    sink.stop().unwrap();
}

#[test]
fn off_loopback_the_api_wants_its_token() {
    let env = Env::new(1, "", "[admin]\nlisten = \"0.0.0.0:0\"\n");
    let (code, _, err) = env.run_cli(&["check-config", "-c", env.config.to_str().unwrap()]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("admin.token"), "{err}");
    let token = "k3y-0f-the-4dmin-api";
    env.write_config(
        1,
        "",
        &format!("[admin]\nlisten = \"0.0.0.0:0\"\ntoken = \"{token}\"\n"),
    );
    let engine = env.start();
    let url = std::fs::read_to_string(env.path("data/admin/listen")).unwrap();
    let port: u16 = url
        .trim()
        .trim_end_matches('/')
        .rsplit(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let raw = |auth: Option<&str>, path: &str| -> u16 {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let auth = auth
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\n{auth}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply[9..12].parse().unwrap()
    };
    assert_eq!(raw(None, "/metrics"), 401);
    assert_eq!(raw(Some("Bearer wrong-token-wrong-token"), "/metrics"), 401);
    assert_eq!(raw(Some(&format!("Bearer {token}")), "/metrics"), 200);
    assert_eq!(raw(None, "/api/v1/status"), 401);
    // The page holds no data; it asks the API with the token.
    assert_eq!(raw(None, "/"), 200);
    // The commands carry the configured token.
    let (code, _, err) = env.run_cli(&["queue", "summary", "-c", env.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(engine.stop(Duration::from_secs(20)).code(), Some(0));
}

#[test]
fn http_injection_answers_once_the_batch_is_queued() {
    let env = Env::new(2, "", "");
    let engine = env.start();
    let rcpts = addrs("i", "inject.test", 300);
    let (status, body) = api(
        &env,
        "POST",
        "/api/v1/inject",
        Some(std::str::from_utf8(&batch("api", "acme", &rcpts)).unwrap()),
    );
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["queued"], true);
    // Durable when answered: the queue files hold every recipient.
    let mut queued = env.queued_recipients();
    queued.sort();
    let mut want = rcpts.clone();
    want.sort();
    assert_eq!(queued, want);
    // A batch the spool would refuse is refused with the same reason, and nothing queued.
    let (status, body) = api(
        &env,
        "POST",
        "/api/v1/inject",
        Some("{\"campaign\":\"x\"}\n{\"to\":\"a@b.test\"}\n"),
    );
    assert_eq!(status, 422, "{}", String::from_utf8_lossy(&body));
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("line 1"), "{v}");
    assert_eq!(env.queued_recipients().len(), 300);
    let audit = std::fs::read_to_string(env.path("log/admin.jsonl")).unwrap();
    assert!(
        audit.contains("\"action\":\"inject\"") && audit.contains("\"result\":\"queued\""),
        "{audit}"
    );
    assert_eq!(engine.stop(Duration::from_secs(20)).code(), Some(0));
}

#[test]
fn one_click_unsubscribes_for_the_next_campaign_and_a_get_or_a_forgery_changes_nothing() {
    let sink = Sink::start(HashMap::new());
    let secret = "an-unsubscribe-secret-of-some-length";
    let extra = routed(
        &sink,
        &format!(
            "[unsubscribe]\nurl = \"https://unsub.acme.example/u/{{{{ token }}}}\"\nsecret = \"{secret}\"\nlisten = \"127.0.0.1:0\"\n"
        ),
    );
    let env = Env::new(2, "", &extra);
    let engine = env.start();
    let rcpts = vec!["bob@fast.test".to_string(), "carol@fast.test".to_string()];
    env.drop_input("c1.jsonl", &batch("c1", "acme", &rcpts));
    wait_final(&env, &engine, 2, Duration::from_secs(30));
    // The URL as bob received it.
    let body = sink.received.lock().unwrap().bodies["bob@fast.test"].clone();
    let url = body
        .split("\r\n")
        .find_map(|l| l.strip_prefix("List-Unsubscribe: "))
        .and_then(|v| v.split(['<', '>']).find(|p| p.starts_with("https://")))
        .unwrap_or_else(|| panic!("no https List-Unsubscribe in {body}"))
        .to_string();
    let path = &url["https://unsub.acme.example".len()..];
    let addr = std::fs::read_to_string(env.path("data/admin/unsubscribe-listen")).unwrap();
    let send = |method: &str, path: &str| -> (u16, String) {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr.trim()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let body = if method == "POST" {
            "List-Unsubscribe=One-Click"
        } else {
            ""
        };
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: unsub.acme.example\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        (reply[9..12].parse().unwrap(), reply)
    };
    let suppressed = || {
        let (code, v) = cli_json(
            &env,
            &["suppression", "check", "bob@fast.test", "--tenant", "acme"],
        );
        assert_eq!(code, 0);
        v["suppressed"] == true
    };
    // A link scanner's GET: a page, nothing changed.
    let (status, page) = send("GET", path);
    assert_eq!(status, 200);
    assert!(page.contains("<form method=\"post\""), "{page}");
    assert!(!suppressed());
    // A forged token (one character of its MAC changed): 404, nothing changed.
    let mut forged = path.to_string();
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    assert_eq!(send("POST", &forged).0, 404);
    assert_eq!(send("POST", "/u/v1.bm90aGluZw.AAAA").0, 404);
    assert!(!suppressed());
    // The real one: suppressed for the tenant, durably.
    let (status, page) = send("POST", path);
    assert_eq!(status, 200, "{page}");
    assert!(suppressed());
    let (_, v) = cli_json(
        &env,
        &["suppression", "check", "bob@fast.test", "--tenant", "other"],
    );
    assert_eq!(v["suppressed"], false, "another tenant's mail still goes");
    assert_eq!(engine.stop(Duration::from_secs(20)).code(), Some(0));

    // After a restart, the next campaign reaches carol only.
    let engine = env.start();
    env.drop_input("c2.jsonl", &batch("c2", "acme", &rcpts));
    wait_until(Duration::from_secs(30), "c2 done", || {
        count(&env, "Delivery", |r| r["campaign"] == "c2") == 1
            && count(&env, "Rejected", |r| r["campaign"] == "c2") == 1
    });
    let got = sink.received.lock().unwrap();
    assert_eq!(got.deliveries["carol@fast.test"], 2);
    assert_eq!(
        got.deliveries["bob@fast.test"], 1,
        "bob unsubscribed after c1"
    );
    drop(got);
    let rejected = env
        .log_records()
        .into_iter()
        .find(|r| r["type"] == "Rejected" && r["campaign"] == "c2")
        .unwrap();
    assert!(
        rejected["response"]
            .as_str()
            .unwrap()
            .contains("unsubscribed from acme"),
        "{rejected}"
    );
    assert_eq!(engine.stop(Duration::from_secs(20)).code(), Some(0));
    sink.stop();
}

#[test]
fn suppression_commands_work_with_the_engine_stopped_and_running() {
    let env = Env::new(1, "", "");
    let run = |args: &[&str]| cli(&env, args);
    let (code, out, err) = run(&["suppression", "add", "Ann@Example.test", "--tenant", "acme"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.starts_with("suppressed"), "{out}");
    let (_, out, _) = run(&[
        "suppression",
        "check",
        "ann@example.test",
        "--tenant",
        "acme",
    ]);
    assert!(out.contains("added by an operator"), "{out}");
    let (_, out, _) = run(&["suppression", "check", "ann@example.test"]);
    assert!(out.contains("is not suppressed"), "{out}");
    let (code, _, err) = run(&["suppression", "add", "not an address"]);
    assert_eq!(code, 1, "{err}");
    let engine = env.start();
    // Running: the engine's table changes at once.
    let (_, out, _) = run(&[
        "suppression",
        "check",
        "ann@example.test",
        "--tenant",
        "acme",
    ]);
    assert!(out.contains("added by an operator"), "{out}");
    let (code, out, _) = run(&[
        "suppression",
        "remove",
        "ann@example.test",
        "--tenant",
        "acme",
    ]);
    assert_eq!((code, out.contains("removed")), (0, true), "{out}");
    run(&["suppression", "add", "@blocked.test"]);
    let (_, v) = cli_json(&env, &["suppression", "list"]);
    let entries: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["entry"].as_str().unwrap())
        .collect();
    assert_eq!(entries, ["@blocked.test"]);
    // Without a token, another web page cannot steer the engine through the operator's
    // browser: a cross-site form, or a name of its own resolving to 127.0.0.1.
    let addr = std::fs::read_to_string(env.path("data/admin/listen")).unwrap();
    let addr = addr
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .to_string();
    let raw = |fields: &str| -> u16 {
        use std::io::{Read, Write};
        let body = "{\"target\":\"domain:blocked.test\",\"reason\":\"x\"}";
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "POST /api/v1/bounce HTTP/1.1\r\n{fields}Content-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply[9..12].parse().unwrap()
    };
    assert_eq!(
        raw(&format!("Host: {addr}\r\nOrigin: https://evil.example\r\n")),
        403
    );
    assert_eq!(raw("Host: evil.example:8025\r\n"), 403);
    assert_eq!(
        raw(&format!("Host: {addr}\r\n")),
        200,
        "the same request from a tool"
    );
    let (_, holds) = api(&env, "GET", "/api/v1/holds", None);
    let holds: Value = serde_json::from_slice(&holds).unwrap();
    assert_eq!(holds["bounces"].as_array().unwrap().len(), 1, "{holds}");
    env.drop_input(
        "b.jsonl",
        &batch("b", "acme", &["x@blocked.test".to_string()]),
    );
    wait_until(Duration::from_secs(10), "refused at intake", || {
        count(&env, "Rejected", |_| true) == 1
    });
    assert_eq!(engine.stop(Duration::from_secs(20)).code(), Some(0));
    // Stopped again: the removal held.
    let (_, out, _) = run(&[
        "suppression",
        "check",
        "ann@example.test",
        "--tenant",
        "acme",
    ]);
    assert!(out.contains("is not suppressed"), "{out}");
}

/// Under systemd (`Type=notify`): READY=1 once recovery is done and intake is live,
/// STOPPING=1 when the drain begins.
#[test]
fn systemd_hears_ready_after_recovery_and_stopping_on_drain() {
    let env = Env::new(2, "", "");
    // Something queued from before, so readiness comes after a real recovery.
    let engine = env.start();
    env.drop_input("a.jsonl", &batch("a", "acme", &addrs("r", "x.test", 50)));
    wait_until(Duration::from_secs(10), "queued", || {
        env.queued_recipients().len() == 50
    });
    assert_eq!(engine.stop(Duration::from_secs(20)).code(), Some(0));

    let socket_path = env.path("notify.sock");
    let socket = std::os::unix::net::UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let engine = env.start_with_env(&[], &[("NOTIFY_SOCKET", socket_path.to_str().unwrap())]);
    let mut buf = [0u8; 512];
    let n = socket.recv(&mut buf).expect("READY=1 within 20 s");
    let ready = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(ready.starts_with("READY=1\n"), "{ready}");
    assert!(
        ready.contains("50 recipients queued from before"),
        "{ready}"
    );
    engine.signal(libc::SIGTERM);
    let n = socket.recv(&mut buf).expect("STOPPING=1 on SIGTERM");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("STOPPING=1"));
    let mut engine = engine;
    assert_eq!(engine.wait(Duration::from_secs(20)).code(), Some(0));
}

/// `[admin] cert` and `key`: the API speaks HTTPS only, and the commands reach it, accepting
/// only the engine's own certificate.
#[test]
fn the_api_over_https_is_reached_by_the_commands_with_its_own_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let env = Env::new(
        1,
        "",
        &format!(
            "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"a-token-for-https-only\"\ncert = {cert_path:?}\nkey = {key_path:?}\n"
        ),
    );
    let engine = env.start();
    let url = std::fs::read_to_string(env.path("data/admin/listen")).unwrap();
    assert!(url.starts_with("https://127.0.0.1:"), "{url}");
    let (code, out, err) = cli(&env, &["queue", "suspend", "domain:x.test"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, v) = cli_json(&env, &["queue", "summary"]);
    assert_eq!((code, &v["engine_running"]), (0, &Value::Bool(true)));
    // Plain HTTP on that port gets no HTTP answer.
    {
        use std::io::{Read, Write};
        let addr = url
            .trim()
            .trim_start_matches("https://")
            .trim_end_matches('/');
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let mut reply = Vec::new();
        let _ = s.read_to_end(&mut reply);
        assert!(!reply.starts_with(b"HTTP/1.1 200"), "plaintext was served");
    }
    // Another certificate in the configuration: the command refuses the engine's.
    let other = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(&cert_path, other.cert.pem()).unwrap();
    std::fs::write(&key_path, other.signing_key.serialize_pem()).unwrap();
    let (code, _, err) = cli(&env, &["queue", "summary"]);
    assert_ne!(
        code, 0,
        "a certificate other than the configured one was accepted"
    );
    assert!(err.contains("certificate"), "{err}");
    assert_eq!(engine.stop(Duration::from_secs(20)).code(), Some(0));
}
