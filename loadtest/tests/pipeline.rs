//! The harness end to end on a short scenario: simulated providers with throttling, unknown
//! users, temporary failures, greylisting and dropped connections, the engine as a child
//! process, the report. Counts, not speed.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_spate-loadtest");

const SCENARIO: &str = r#"
name = "pipeline"
recipients = 3000
template_bytes = 2048
shards = 2
bad_every = 500
retry_first = "1s"
site_connections = 2

[[provider]]
name = "gmail"
style = "gmail"
domains = ["gmail.test"]
mx = "gmail-smtp-in.l.google.test"
listen = ["127.0.0.2"]
share = 0.4
connections = 8
drop_mid_data = 0.01

[[provider]]
name = "yahoo"
style = "yahoo"
domains = ["yahoo.test", "aol.test"]
mx = "mta5.am0.yahoodns.test"
listen = ["127.0.0.3"]
share = 0.2
connections = 8
rate = 400
connection_limit = 4

[[provider]]
name = "microsoft"
style = "microsoft"
domains = ["outlook.test"]
mx = "mail.protection.outlook.test"
listen = ["127.0.0.4"]
share = 0.2
connections = 8
unknown_user = 0.02
temp_fail = 0.02

[[provider]]
name = "tail"
domains = []
tail = 10
listen = ["127.0.0.5"]
share = 0.2
greylist_s = 1
"#;

fn engine_built() -> bool {
    let exe = Path::new(BIN);
    exe.parent().is_some_and(|d| d.join("spate").is_file())
}

fn run(dir: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("spate-loadtest runs");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn a_short_scenario_delivers_every_recipient_exactly_once() {
    assert!(
        engine_built(),
        "the spate binary must be built next to spate-loadtest (cargo test --workspace)"
    );
    let dir = tempfile::tempdir().unwrap();
    // The Gmail-like provider offers STARTTLS with a certificate made here.
    let cert =
        rcgen::generate_simple_self_signed(vec!["gmail-smtp-in.l.google.test".into()]).unwrap();
    let (cert_pem, key_pem) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_pem, cert.cert.pem()).unwrap();
    std::fs::write(&key_pem, cert.signing_key.serialize_pem()).unwrap();
    let text = format!(
        "tls_cert = {cert_pem:?}\ntls_key = {key_pem:?}\n{}",
        SCENARIO.replace("drop_mid_data = 0.01", "drop_mid_data = 0.01\ntls = true")
    );
    let scenario = dir.path().join("pipeline.toml");
    std::fs::write(&scenario, text).unwrap();
    let out = dir.path().join("out");
    let (ok, text) = run(
        dir.path(),
        &[
            "run",
            scenario.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--timeout",
            "240",
        ],
    );
    assert!(ok, "{text}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).unwrap()).unwrap();
    let n = |k: &str| report[k].as_u64().unwrap();
    assert_eq!(n("recipients"), 3000);
    assert_eq!(n("valid"), 3000 - 6, "every 500th recipient is invalid");
    assert_eq!(n("rejected"), 6);
    // Unknown users bounce; everyone else arrives exactly once.
    let unknown = report["providers"][2]["rejected"].as_u64().unwrap();
    assert!(unknown > 0, "some microsoft addresses do not exist");
    assert_eq!(n("bounced"), unknown);
    assert_eq!(n("delivered") + n("bounced"), n("valid"));
    assert_eq!(n("received_unique"), n("delivered"));
    assert_eq!(n("duplicates"), 0);
    assert_eq!(n("missing"), 0);
    let providers = report["providers"].as_array().unwrap();
    for p in providers {
        let (recipients, accepted) = (
            p["recipients"].as_u64().unwrap(),
            p["accepted"].as_u64().unwrap(),
        );
        if p["name"] != "microsoft" {
            assert_eq!(accepted, recipients, "{p}");
        }
    }
    // The scenario's trouble happened and was survived.
    assert!(
        providers[1]["throttled"].as_u64().unwrap() > 0,
        "yahoo throttled"
    );
    assert!(
        providers[3]["deferred"].as_u64().unwrap() > 0,
        "greylisting deferred"
    );
    assert!(n("transient_failures") > 0);
    // Yahoo-like takes 4 connections of the engine's 8: the others meet 421 at the
    // greeting, which defers (retried soon) rather than fails.
    assert!(providers[1]["connections_refused"].as_u64().unwrap() > 0);
    assert!(
        providers[0]["dropped"].as_u64().unwrap() > 0,
        "connections dropped mid-DATA"
    );
    let log = std::fs::read_to_string(out.join("spate/log/deliveries.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(
        records.iter().any(|r| r["type"] == "TransientFailure"
            && r["code"] == 421
            && r["response"]
                .as_str()
                .unwrap()
                .contains("Too many concurrent")),
        "421 at the greeting is logged as a transient failure"
    );
    // Every Gmail-like delivery went over STARTTLS; no other provider offered it.
    for d in records.iter().filter(|r| r["type"] == "Delivery") {
        let tls = d["tls"].as_str().unwrap_or("");
        if d["provider"] == "gmail" {
            assert!(tls.starts_with("TLSv1_3"), "{d}");
        } else {
            assert!(tls.is_empty(), "{d}");
        }
    }
    for f in ["report.md", "delivered.svg", "deferrals.svg", "engine.svg"] {
        assert!(out.join(f).is_file(), "{f}");
    }
    assert!(std::fs::read_to_string(out.join("report.md"))
        .unwrap()
        .contains("Every valid recipient reached its final outcome"));
}

#[test]
fn blast_delivers_the_same_messages() {
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("pipeline.toml");
    // Without the trouble: blast has no queue to retry with.
    let plain: String = SCENARIO
        .lines()
        .filter(|l| {
            ![
                "rate",
                "drop_mid_data",
                "unknown_user",
                "temp_fail",
                "greylist_s",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&scenario, plain).unwrap();
    let (ok, text) = run(dir.path(), &["blast", scenario.to_str().unwrap()]);
    assert!(ok, "{text}");
    let report: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
    assert_eq!(report["messages"], 3000 - 6);
    assert_eq!(report["delivered"], 3000 - 6);
    assert_eq!(report["failed"], 0);
}

/// A long tail under a low open-files limit: 600 sites of 10 connections each would want
/// 6,000 connections from a process allowed 3,000 descriptors. The engine once opened them
/// until a group commit's `dup` failed with EMFILE (exit 74); its connection budget now keeps
/// them within its share of the limit, and every recipient arrives once.
#[test]
fn a_long_tail_stays_within_the_open_files_limit() {
    assert!(
        engine_built(),
        "the spate binary must be built next to spate-loadtest (cargo test --workspace)"
    );
    if Command::new("prlimit").arg("--version").output().is_err() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must have prlimit (util-linux)"
        );
        eprintln!("prlimit is not installed: skipping");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let scenario = dir.path().join("tail.toml");
    std::fs::write(
        &scenario,
        r#"
name = "tail"
recipients = 6000
template_bytes = 1024
shards = 2
site_connections = 10

[[provider]]
name = "tail"
domains = []
tail = 600
listen = ["127.0.0.5"]
share = 1.0
"#,
    )
    .unwrap();
    let out_dir = dir.path().join("out");
    // The harness, its simulated receiver and the engine it starts all live under the limit.
    let out = Command::new("prlimit")
        .arg("--nofile=3000")
        .arg(BIN)
        .args([
            "run",
            scenario.to_str().unwrap(),
            "--out",
            out_dir.to_str().unwrap(),
            "--timeout",
            "240",
        ])
        .current_dir(dir.path())
        .output()
        .expect("prlimit runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("report.json")).unwrap()).unwrap();
    let n = |k: &str| report[k].as_u64().unwrap();
    assert_eq!(n("delivered"), 6000);
    assert_eq!(n("duplicates"), 0);
    assert_eq!(n("missing"), 0);
}
