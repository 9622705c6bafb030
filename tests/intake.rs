//! Spool intake through the real binary: every malformed input gets its documented outcome
//! while the good inputs around it proceed; signals; exit codes.

mod common;

use common::*;
use std::time::Duration;

const SETTLE: Duration = Duration::from_secs(30);

#[test]
fn malformed_inputs_get_documented_outcomes_while_good_ones_proceed() {
    let env = Env::new(2, "", "");
    // Files the engine must never touch: still being written, hidden, temporary.
    std::fs::create_dir_all(env.path("spool/tmp")).unwrap();
    std::fs::create_dir_all(env.path("spool/incoming")).unwrap();
    std::fs::write(env.path("spool/tmp/half-written.jsonl"), &campaign(3)[..40]).unwrap();
    std::fs::write(env.path("spool/incoming/upload.jsonl.tmp"), campaign(2)).unwrap();
    std::fs::write(env.path("spool/incoming/.partial.jsonl"), campaign(2)).unwrap();

    let engine = env.start();

    // One good batch holding four bad recipients among 50 lines.
    let mut good = String::from(HEADER);
    good.push('\n');
    for i in 0..46 {
        good.push_str(&format!(
            "{{\"to\":\"ok{i}@example.com\",\"vars\":{{\"first_name\":\"A{i}\"}}}}\n"
        ));
    }
    good.push_str("{\"to\":\"no-at-sign.example.com\"}\n"); // line 48
    good.push_str("{\"to\":\"eve@example.com\",\"vars\":{\"first_name\":\"Eve\\r\\nBcc: all@example.com\"}}\n"); // 49
    good.push_str(&format!(
        "{{\"to\":\"big@example.com\",\"vars\":{{\"first_name\":\"{}\"}}}}\n",
        "x".repeat(10 << 20)
    )); // 50
    good.push_str("\u{0}\u{1}\u{2}\u{7f}garbage\n"); // 51
    env.drop_input("good.jsonl", good.as_bytes());

    env.drop_input(
        "bad-json.jsonl",
        b"{\"campaign\": nope}\n{\"to\":\"a@example.com\"}\n",
    );
    env.drop_input(
        "missing-from.jsonl",
        b"{\"campaign\":\"c\",\"template\":\"Subject: x\\r\\n\\r\\nbody\"}\n{\"to\":\"a@example.com\"}\n",
    );
    env.drop_input(
        "binary.jsonl",
        &[0x89, b'P', b'N', b'G', 0, 0, 0xff, b'\n', 1, 2, 3],
    );
    env.drop_input("empty.jsonl", b"");
    env.drop_input("list.csv", b"to\na@example.com\n");
    env.drop_input(
        "pickup.eml",
        b"x-sender: <bounces@acme.example>\r\nx-receiver: <p1@example.org>\r\nx-receiver: broken@\r\nx-job: july\r\nFrom: news@acme.example\r\nSubject: pickup\r\n\r\nHello\r\n",
    );

    wait_until(SETTLE, "every input processed", || {
        env.spool_files("incoming") == [".partial.jsonl", "upload.jsonl.tmp"]
            && env.spool_files("incoming/.claimed").is_empty()
            && env.spool_files("bad").len() == 10
    });
    // Every input handled: good ones queued and released, bad ones in bad/ with a reason.
    let err =
        |name: &str| std::fs::read_to_string(env.path(&format!("spool/bad/{name}.err"))).unwrap();
    assert!(
        err("bad-json.jsonl").starts_with("line 1: header: invalid JSON"),
        "{}",
        err("bad-json.jsonl")
    );
    assert!(
        err("missing-from.jsonl").contains("missing field `from`"),
        "{}",
        err("missing-from.jsonl")
    );
    assert!(
        err("binary.jsonl").starts_with("line 1: header: invalid JSON"),
        "{}",
        err("binary.jsonl")
    );
    assert_eq!(err("empty.jsonl"), "empty file\n");
    assert!(err("list.csv").contains("unknown input type"));
    for name in [
        "bad-json.jsonl",
        "missing-from.jsonl",
        "binary.jsonl",
        "empty.jsonl",
        "list.csv",
    ] {
        assert_eq!(err(name).lines().count(), 1, "{name}: one line");
        assert!(env.path(&format!("spool/bad/{name}")).is_file());
    }
    // Untouched: the producer's tmp/ and ignored names in incoming/.
    assert!(env.path("spool/tmp/half-written.jsonl").is_file());
    assert!(env.path("spool/incoming/.partial.jsonl").is_file());

    let records = env.log_records();
    let receptions: Vec<&serde_json::Value> = records
        .iter()
        .filter(|r| r["type"] == "Reception")
        .collect();
    assert_eq!(receptions.len(), 46 + 1);
    assert!(receptions
        .iter()
        .any(|r| r["recipient"] == "p1@example.org" && r["campaign"] == "july"));
    let r0 = receptions
        .iter()
        .find(|r| r["recipient"] == "ok0@example.com")
        .unwrap();
    assert_eq!(r0["sender"], "bounces@acme.example");
    assert_eq!(r0["campaign"], "spring-sale");
    assert_eq!(r0["tenant"], "acme");
    assert_eq!(r0["domain"], "example.com");
    let mut rejected: Vec<String> = records
        .iter()
        .filter(|r| r["type"] == "Rejected")
        .map(|r| r["response"].as_str().unwrap().to_string())
        .collect();
    rejected.sort();
    assert_eq!(rejected.len(), 5, "{rejected:?}");
    assert!(
        rejected[0].starts_with("line 3: invalid address \"broken@\""),
        "{rejected:?}"
    );
    assert!(
        rejected[1].starts_with("line 48: invalid address"),
        "{rejected:?}"
    );
    assert!(
        rejected[2]
            .starts_with("line 49: variable \"first_name\" would put CR or LF into a header"),
        "{rejected:?}"
    );
    assert!(
        rejected[3].starts_with("line 50: recipient line is 10485"),
        "{rejected:?}"
    );
    assert!(
        rejected[4].starts_with("line 51: invalid JSON"),
        "{rejected:?}"
    );

    // The queue holds exactly the accepted recipients.
    let mut queued = env.queued_recipients();
    queued.sort();
    let mut want: Vec<String> = (0..46).map(|i| format!("ok{i}@example.com")).collect();
    want.push("p1@example.org".into());
    want.sort();
    assert_eq!(queued, want);

    let (code, out, _) = env.run_cli(&[
        "queue",
        "summary",
        "-c",
        env.config.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["engine_running"], true);
    assert_eq!(v["queued"], 47);

    let status = engine.stop(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0));

    let (code, _, err) = env.run_cli(&["queue", "summary", "-c", env.config.to_str().unwrap()]);
    assert_eq!(code, 69, "{err}");
    assert!(err.contains("--offline"));
    let (code, out, _) = env.run_cli(&[
        "queue",
        "summary",
        "-c",
        env.config.to_str().unwrap(),
        "--offline",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("example.com"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("total") && l.ends_with(" 47")),
        "{out}"
    );
}

#[test]
fn sighup_reloads_and_refuses_an_invalid_configuration() {
    let env = Env::new(1, "", "");
    let engine = env.start();

    std::fs::write(&env.config, "[engine]\nshards = \"many\"\n").unwrap();
    engine.signal(libc::SIGHUP);
    wait_until(SETTLE, "reload refused", || {
        engine.stderr().contains("reload refused")
    });
    let line = engine
        .stderr()
        .lines()
        .find(|l| l.contains("reload refused"))
        .unwrap()
        .to_string();
    assert!(line.contains("line 2"), "{line}");

    // The old configuration still works: a batch is processed and deleted.
    env.drop_input("one.jsonl", &campaign(3));
    wait_until(SETTLE, "batch one released", || {
        env.spool_files("incoming").is_empty() && env.count_events("Reception") == 3
    });
    assert!(env.spool_files("done").is_empty());

    // A valid new configuration takes effect: processed inputs are now kept in done/.
    env.write_config(1, "", "");
    let text = std::fs::read_to_string(&env.config)
        .unwrap()
        .replace("[spool]\n", "[spool]\nkeep_done = true\n");
    std::fs::write(&env.config, text).unwrap();
    // logrotate moves the log away before the HUP; the engine must write a new one.
    std::fs::rename(
        env.path("log/deliveries.jsonl"),
        env.path("log/deliveries-1.jsonl"),
    )
    .unwrap();
    engine.signal(libc::SIGHUP);
    wait_until(SETTLE, "reloaded", || {
        engine.stderr().contains("configuration reloaded")
    });
    env.drop_input("two.jsonl", &campaign(2));
    wait_until(SETTLE, "batch two in done/", || {
        env.spool_files("done") == ["two.jsonl"]
    });
    wait_until(SETTLE, "batch two logged in the new file", || {
        env.count_events("Reception") == 2
    });

    assert_eq!(engine.stop(Duration::from_secs(20)).code(), Some(0));
}

#[test]
fn a_second_engine_on_the_same_data_dir_is_refused() {
    let env = Env::new(1, "", "");
    let first = env.start();
    let (code, _, err) = env.run_cli(&["run", "-c", env.config.to_str().unwrap()]);
    assert_eq!(code, 69);
    assert!(err.contains("another spate engine is running"), "{err}");
    assert_eq!(first.stop(Duration::from_secs(20)).code(), Some(0));
}

#[test]
fn check_config_reports_and_refuses_with_exit_codes() {
    let env = Env::new(
        2,
        "",
        "[providers.yahoo]\nmx_suffixes = [\".yahoodns.net\"]\nmax_message_rate = \"300/s\"\n",
    );
    let cfg = env.config.to_str().unwrap();
    let (code, out, _) = env.run_cli(&["check-config", "-c", cfg]);
    assert_eq!(code, 0);
    assert!(out.contains("shards: 2"), "{out}");
    assert!(out.contains("provider yahoo"), "{out}");

    std::fs::write(
        &env.config,
        "[engine]\nshards = 1\n[spool]\ndirr = \"/x\"\n",
    )
    .unwrap();
    let (code, _, err) = env.run_cli(&["check-config", "-c", cfg]);
    assert_eq!(code, 78);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("line 4") && err.contains("dirr"), "{err}");

    let (code, _, err) = env.run_cli(&["run", "-c", cfg]);
    assert_eq!(code, 78, "{err}");
    let (code, _, err) = env.run_cli(&["check-config", "-c", "/nonexistent/spate.toml"]);
    assert_eq!(code, 78);
    assert!(
        err.contains("/nonexistent/spate.toml: cannot read"),
        "{err}"
    );
}

#[test]
fn changing_shards_with_a_non_empty_queue_is_refused() {
    let env = Env::new(2, "", "");
    let engine = env.start();
    env.drop_input("a.jsonl", &campaign(10));
    wait_until(SETTLE, "queued", || env.count_events("Reception") == 10);
    assert_eq!(engine.stop(Duration::from_secs(20)).code(), Some(0));
    env.write_config(1, "", "");
    let (code, _, err) = env.run_cli(&["run", "-c", env.config.to_str().unwrap()]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("written by 2 shards"), "{err}");
}
