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
