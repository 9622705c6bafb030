//! Crash safety through the real binary: `kill -9` in the middle of intake, twice, then a
//! restart; every recipient must be queued exactly once.

mod common;

use common::*;
use std::collections::HashSet;
use std::time::Duration;

const RECIPIENTS: usize = 200_000;

#[test]
fn kill_9_during_intake_then_restart_queues_every_recipient_exactly_once() {
    // Slow group commits (200 ms windows, no early commit) stretch intake over several
    // windows, so the kill lands while the batch is part-way in.
    let slow = "commit_interval_ms = 200\ncommit_records_max = 100000000";
    let env = Env::new(2, slow, "");
    env.drop_input("big.jsonl", &campaign(RECIPIENTS));
    let mut mid_batch_kills = 0;
    for round in 0..2 {
        let engine = env.start();
        let before = env.count_events("Reception");
        // Wait for at least one new group commit of this run, then kill without warning.
        wait_until(Duration::from_secs(60), "a group commit", || {
            env.count_events("Reception") > before
                || (env.spool_files("incoming/.claimed").is_empty()
                    && env.spool_files("incoming").is_empty())
        });
        engine.kill9();
        let claimed = env.spool_files("incoming/.claimed");
        if claimed.len() == 1 {
            mid_batch_kills += 1;
            assert!(claimed[0].ends_with(".big.jsonl"), "{claimed:?}");
        }
        let queued = env.queued_recipients().len();
        assert!(queued <= RECIPIENTS, "round {round}: {queued} queued");
    }
    assert!(
        mid_batch_kills >= 1,
        "no kill landed mid-batch; the test proved nothing"
    );

    // Restart with normal settings: the interrupted input is replayed and released.
    env.write_config(2, "", "");
    let engine = env.start();
    wait_until(Duration::from_secs(120), "input released", || {
        env.spool_files("incoming/.claimed").is_empty() && env.spool_files("incoming").is_empty()
    });
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));

    let queued = env.queued_recipients();
    assert_eq!(queued.len(), RECIPIENTS, "each recipient once, none lost");
    let distinct: HashSet<&str> = queued.iter().map(String::as_str).collect();
    assert_eq!(distinct.len(), RECIPIENTS, "no recipient queued twice");
    for i in (0..RECIPIENTS).step_by(997) {
        assert!(distinct.contains(format!("user{i}@d{}.example", i % 20).as_str()));
    }
    // Both shards hold about half.
    let per_shard: Vec<usize> = spate::summary::read_shards(&env.data_dir())
        .unwrap()
        .iter()
        .map(|v| v.live_recipients().count())
        .collect();
    assert_eq!(per_shard.len(), 2);
    assert!(per_shard[0].abs_diff(per_shard[1]) <= 1, "{per_shard:?}");
}

#[test]
fn sigterm_during_intake_drains_with_exit_0_and_the_restart_finishes_exactly_once() {
    let slow = "commit_interval_ms = 200\ncommit_records_max = 100000000";
    let env = Env::new(2, slow, "");
    let engine = env.start();
    env.drop_input("big.jsonl", &campaign(RECIPIENTS));
    wait_until(Duration::from_secs(60), "a group commit", || {
        env.count_events("Reception") > 0
    });
    let status = engine.stop(Duration::from_secs(30));
    assert_eq!(status.code(), Some(0));
    let after_stop = env.queued_recipients().len();
    assert!(after_stop > 0 && after_stop <= RECIPIENTS);
    // Drained, not lost: whatever was not finished is still claimed for the next start.
    if after_stop < RECIPIENTS {
        assert_eq!(env.spool_files("incoming/.claimed").len(), 1);
    }

    env.write_config(2, "", "");
    let engine = env.start();
    wait_until(Duration::from_secs(120), "input released", || {
        env.spool_files("incoming/.claimed").is_empty() && env.spool_files("incoming").is_empty()
    });
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let queued = env.queued_recipients();
    let distinct: HashSet<&str> = queued.iter().map(String::as_str).collect();
    assert_eq!(queued.len(), RECIPIENTS);
    assert_eq!(distinct.len(), RECIPIENTS);
}
