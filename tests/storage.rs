//! Storage and runtime failures through the real binary: running out of disk stops intake
//! loudly (exit 74) and loses nothing; a memlock limit that cannot be raised exits 69.
//!
//! These need root (to mount a small tmpfs, to drop a capability). CI runs as root, so there
//! they always run; elsewhere they say why they did nothing.

mod common;

use common::tmpfs::{privileged, Tmpfs};
use common::*;
use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

/// A batch whose template is about 1 MiB, so a few dozen fill a 32 MiB segment.
fn heavy_batch(n: usize, recipients: usize) -> Vec<u8> {
    let body = format!("{}\r\n", "y".repeat(998)).repeat(1024);
    let header = serde_json::json!({
        "campaign": format!("heavy-{n}"),
        "from": "bounces@acme.example",
        "template": format!("Subject: heavy {n}\r\nTo: {{{{ to }}}}\r\n\r\n{body}"),
    });
    let mut out = format!("{header}\n");
    for r in 0..recipients {
        out.push_str(&format!("{{\"to\":\"b{n}r{r}@example.com\"}}\n"));
    }
    out.into_bytes()
}

#[test]
fn disk_full_stops_intake_with_exit_74_and_loses_nothing() {
    if !privileged() {
        return;
    }
    const BATCHES: usize = 40;
    const PER_BATCH: usize = 5;
    let env = Env::new(1, "", "");
    // One 32 MiB segment fits; the second cannot be preallocated.
    let tmpfs = Tmpfs::mount(&env.data_dir(), "40m");
    for n in 0..BATCHES {
        env.drop_input(&format!("heavy-{n:02}.jsonl"), &heavy_batch(n, PER_BATCH));
    }
    let mut engine = env.start();
    let status = engine.wait(Duration::from_secs(60));
    assert_eq!(status.code(), Some(74), "{}", engine.stderr());
    let stderr = engine.stderr();
    let fatal = stderr
        .lines()
        .find(|l| l.contains("create segment failed"))
        .unwrap_or_else(|| panic!("{stderr}"));
    assert!(fatal.contains("create segment"), "{fatal}");

    // Nothing was lost: every input is either released with all its recipients queued, or
    // still in incoming/ (claimed or not) to be read again.
    let waiting = env.spool_files("incoming").len() + env.spool_files("incoming/.claimed").len();
    let released = BATCHES - waiting;
    assert!(
        released > 0 && waiting > 0,
        "released {released}, waiting {waiting}"
    );
    assert_eq!(env.queued_recipients().len(), released * PER_BATCH);

    // With space again, a restart finishes the job, and nothing is queued twice.
    tmpfs.resize("400m");
    let engine = env.start();
    wait_until(Duration::from_secs(60), "all inputs released", || {
        env.spool_files("incoming").is_empty() && env.spool_files("incoming/.claimed").is_empty()
    });
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let queued = env.queued_recipients();
    let distinct: HashSet<&String> = queued.iter().collect();
    assert_eq!(queued.len(), BATCHES * PER_BATCH);
    assert_eq!(distinct.len(), BATCHES * PER_BATCH);
    drop(tmpfs);
}

#[test]
fn a_memlock_limit_that_cannot_be_raised_exits_69_with_what_to_change() {
    if !privileged() {
        return;
    }
    let env = Env::new(2, "", "");
    // Without CAP_SYS_RESOURCE even root cannot raise its hard limit.
    let out = Command::new("setpriv")
        .args([
            "--bounding-set=-sys_resource",
            "prlimit",
            "--memlock=1024:1024",
            BIN,
            "run",
            "-c",
        ])
        .arg(&env.config)
        .output()
        .expect("setpriv and prlimit (util-linux) are installed");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("locked-memory limit is 1 KiB"), "{stderr}");
    assert!(stderr.contains("ulimit -l"), "{stderr}");
}
