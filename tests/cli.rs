//! The `spate` command line: help, version, and the exit codes of usage and configuration
//! errors (INTERFACE.md, "Binary and commands").

mod common;

use common::BIN;
use std::process::Command;

/// Runs `spate ARGS` (never an engine: these all end at once) and returns its exit code,
/// stdout and stderr.
fn spate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run spate");
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn help_and_version_exit_0() {
    let (code, out, _) = spate(&["--help"]);
    assert_eq!(code, 0);
    for command in ["run", "check-config", "queue", "demo", "hash-password"] {
        assert!(out.contains(command), "{command} missing from:\n{out}");
    }
    assert!(
        out.contains("64 usage error"),
        "exit codes documented:\n{out}"
    );
    let (code, out, _) = spate(&["--version"]);
    assert_eq!(
        (code, out.trim()),
        (0, concat!("spate ", env!("CARGO_PKG_VERSION")))
    );
    let (code, out, _) = spate(&["queue", "summary", "--help"]);
    assert_eq!(code, 0);
    assert!(out.contains("--offline") && out.contains("--json"), "{out}");
}

#[test]
fn usage_errors_exit_64_and_say_what_is_wrong() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "Usage"),
        (&["bogus"], "bogus"),
        (&["run"], "--config"),
        (&["queue", "summary", "-c", "x.toml", "--jsn"], "--jsn"),
        (&["demo", "--recipients", "0"], "--recipients"),
        (&["demo", "--recipients", "many"], "many"),
    ];
    for (args, named) in cases {
        let (code, _, err) = spate(args);
        assert_eq!(code, 64, "{args:?}: {err}");
        assert!(err.contains(named), "{args:?}: {err}");
    }
}

#[test]
fn a_configuration_error_exits_78_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.toml");
    let (code, _, err) = spate(&["check-config", "-c", missing.to_str().unwrap()]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("missing.toml"), "{err}");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[engine]\nshards = \"two\"\n").unwrap();
    let (code, _, err) = spate(&["check-config", "-c", bad.to_str().unwrap()]);
    assert_eq!(code, 78, "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
}

#[test]
fn diagnostics_are_human_lines_or_json_objects() {
    let env = common::Env::new(1, "", "");
    // Human lines: time, level, message.
    let engine = env.start();
    let path = engine.stderr_path.clone();
    assert!(engine.stop(std::time::Duration::from_secs(30)).success());
    let text = std::fs::read_to_string(path).unwrap();
    let running = text
        .lines()
        .find(|l| l.contains("running: 1 shards"))
        .unwrap();
    assert!(
        running.contains(" INFO ") && running.starts_with("20"),
        "{running}"
    );
    let engine = env.start_with(&["--log-format", "json"]);
    let path = engine.stderr_path.clone();
    let status = engine.stop(std::time::Duration::from_secs(30));
    assert!(status.success());
    let text = std::fs::read_to_string(path).unwrap();
    let events: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let messages: Vec<&str> = events
        .iter()
        .map(|e| e["fields"]["message"].as_str().unwrap_or(""))
        .collect();
    assert!(
        messages.iter().any(|m| m.starts_with("running: 1 shards")),
        "{messages:?}"
    );
    assert!(
        messages.iter().any(|m| m.starts_with("stopping")),
        "{messages:?}"
    );
    assert!(events
        .iter()
        .all(|e| e["level"].is_string() && e["timestamp"].is_string()));
}

/// Runs `spate hash-password` with `stdin` piped in.
fn hash_password(stdin: &[u8]) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .arg("hash-password")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run spate");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().expect("exited"),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn hash_password_prints_a_hash_the_configuration_takes_and_refuses_bad_ones() {
    let (code, hash, err) = hash_password(b"s3cret pass\r\n");
    assert_eq!(code, 0, "{err}");
    let hash = hash.trim();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(
        spate::gateway::password::verify("s3cret pass", hash),
        "the line ending is not part of the password"
    );
    let (code, _, err) = hash_password(b"\n");
    assert_eq!(code, 1);
    assert!(err.contains("empty"), "{err}");

    // The hash goes into [[users]] as it is; a made-up one is a configuration error
    // naming the user's entry.
    let dir = tempfile::tempdir().unwrap();
    let config = |hash: &str| {
        format!(
            "[engine]\ndata_dir = \"{0}/data\"\n[spool]\ndir = \"{0}/spool\"\n[log]\ndir = \"{0}/log\"\n[[users]]\nname = \"app\"\npassword_hash = \"{hash}\"\n",
            dir.path().display()
        )
    };
    let path = dir.path().join("spate.toml");
    std::fs::write(&path, config(hash)).unwrap();
    let (code, _, err) = spate(&["check-config", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    std::fs::write(&path, config("$argon2id$...")).unwrap();
    let (code, _, err) = spate(&["check-config", "-c", path.to_str().unwrap()]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("users[0].password_hash"), "{err}");
}

/// The packaging in docs/packaging holds together: the example configuration is valid, the
/// systemd unit waits longer than the drain and never restarts on a configuration error
/// (and `systemd-analyze verify` accepts it where systemd is installed), and logrotate
/// (where installed) keeps the delivery log's deliveries*.jsonl naming.
#[test]
fn the_packaged_unit_logrotate_and_example_configuration_hold_together() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/packaging");
    let (code, out, err) = spate(&[
        "check-config",
        "-c",
        root.join("spate.toml").to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("provider gmail: mx_suffixes [.google.com"),
        "{out}"
    );

    let unit = std::fs::read_to_string(root.join("spate.service")).unwrap();
    let key = |k: &str| {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing"))
            .to_string()
    };
    assert_eq!(key("Type"), "notify");
    assert_eq!(key("RestartPreventExitStatus"), "78");
    assert_eq!(key("ExecReload"), "/bin/kill -HUP $MAINPID");
    assert!(!key("LimitMEMLOCK").is_empty());
    let stop: u64 = key("TimeoutStopSec").parse().unwrap();
    assert!(
        stop > spate::engine::DRAIN_DEADLINE.as_secs() * 2,
        "TimeoutStopSec {stop}"
    );
    if std::path::Path::new("/usr/bin/systemd-analyze").exists() {
        let dir = tempfile::tempdir().unwrap();
        let local = dir.path().join("spate.service");
        std::fs::write(&local, unit.replace("/usr/bin/spate", BIN)).unwrap();
        let out = Command::new("/usr/bin/systemd-analyze")
            .arg("verify")
            .arg(&local)
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{said}");
        assert!(!said.contains("spate.service:"), "{said}");
    }
    if std::path::Path::new("/usr/sbin/logrotate").exists() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        std::fs::create_dir(&log).unwrap();
        let conf = std::fs::read_to_string(root.join("spate.logrotate"))
            .unwrap()
            .replace("/var/log/spate", log.to_str().unwrap())
            .replace("create 0640 spate spate", "create 0640")
            .replace("systemctl reload spate.service", "true");
        std::fs::write(dir.path().join("conf"), conf).unwrap();
        std::fs::write(log.join("deliveries.jsonl"), "{}\n").unwrap();
        let out = Command::new("/usr/sbin/logrotate")
            .arg("-f")
            .arg("-s")
            .arg(dir.path().join("state"))
            .arg(dir.path().join("conf"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let names: Vec<String> = std::fs::read_dir(&log)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            names
                .iter()
                .any(|n| n.starts_with("deliveries-") && n.ends_with(".jsonl")),
            "{names:?}"
        );
    }
}

/// `spate drain` refuses what it cannot do, one line each, before it touches anything: no
/// cluster (78), no secret (78), a name that is no node's (64), this node itself (78).
#[test]
fn drain_refuses_what_it_cannot_do() {
    let plain = common::Env::new(1, "", "");
    let config = plain.config.to_str().unwrap().to_string();
    let (code, _, err) = spate(&["drain", "--to", "b", "-c", &config]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("needs [cluster]"), "{err}");
    // Redis on a closed loopback port: every refusal below comes before any connection.
    let cluster = "[cluster]\nredis = \"redis://127.0.0.1:9\"\nnode = \"a\"\n";
    let no_secret = common::Env::new(1, "", cluster);
    let config = no_secret.config.to_str().unwrap().to_string();
    let (code, _, err) = spate(&["drain", "--to", "b", "-c", &config]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("cluster.secret is not set"), "{err}");
    let env = common::Env::new(1, "", &format!("{cluster}secret = \"0123456789abcdef0\"\n"));
    let config = env.config.to_str().unwrap().to_string();
    let (code, _, err) = spate(&["drain", "--to", "b c", "-c", &config]);
    assert_eq!(code, 64, "{err}");
    assert!(err.contains("not a node name"), "{err}");
    let (code, _, err) = spate(&["drain", "--to", "a", "-c", &config]);
    assert_eq!(code, 78, "{err}");
    assert!(err.contains("that is this node"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// A node whose drain did not finish does not start (it would send what the other node may
/// have), and says how to go on.
#[test]
fn an_unfinished_drain_keeps_the_engine_from_starting() {
    let env = common::Env::new(1, "", "");
    std::fs::create_dir_all(env.data_dir()).unwrap();
    std::fs::write(env.data_dir().join("drain-unfinished"), "mta2\n").unwrap();
    let mut child = Command::new(BIN)
        .args(["run", "-c"])
        .arg(&env.config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut status = child.try_wait().unwrap();
    while status.is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        status = child.try_wait().unwrap();
    }
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the engine started with an unfinished drain");
    }
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.unwrap().code(), Some(78), "{err}");
    assert!(err.contains("spate drain --to mta2"), "{err}");
}
