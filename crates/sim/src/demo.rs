//! `spate demo`: runs a campaign on this machine with no setup, on the embedded defaults in a
//! temporary directory.
//!
//! A 100,000-recipient campaign (a realistic mix of large providers and a long tail, with a
//! few bad recipients) is delivered to simulated Gmail-, Yahoo- and Microsoft-like providers
//! and a long tail of small sites, all on loopback addresses, resolved through a simulated DNS
//! server on loopback (see the crate's root); the Yahoo-like provider accepts fewer messages per
//! second than the engine would send and answers the excess with its `421 4.7.0 [TSS04]`.
//! Progress is shown per provider; the report checks every recipient against the receipts the
//! simulated providers wrote. The engine runs on this process's threads.

use crate::run::{self, EngineMode, RunOptions};
use crate::scenario::Scenario;
use spate::engine::EngineError;
use std::io::IsTerminal;
use std::time::Duration;

pub const DEFAULT_RECIPIENTS: u64 = 100_000;
/// The demo gives up rather than hang if intake stalls.
pub const DEMO_TIMEOUT: Duration = Duration::from_secs(600);

pub struct Options {
    pub recipients: u64,
    pub keep: bool,
    /// Queue only (delivery paused): how fast a campaign becomes durable.
    pub queue_only: bool,
    /// With `queue_only`: a suppression file every recipient is checked against.
    pub suppression: Option<std::path::PathBuf>,
}

pub fn run(options: &Options) -> Result<(), EngineError> {
    let base = std::env::temp_dir().join(format!("spate-demo-{}", std::process::id()));
    let result = if options.queue_only {
        queue_only(&base, options)
    } else {
        run_in(&base, options)
    };
    if options.keep {
        eprintln!("demo files kept in {}", base.display());
    } else {
        let _ = std::fs::remove_dir_all(&base);
    }
    result
}

fn run_in(base: &std::path::Path, options: &Options) -> Result<(), EngineError> {
    let mut scenario = Scenario::demo();
    scenario.recipients = options.recipients;
    let shards = spate::config::Config::defaults_under(base).engine.shards;
    println!(
        "Spate demo: {} recipients, {} B personalised template, {} domains, {} shards, everything under {}",
        scenario.recipients,
        scenario.template_bytes,
        scenario.domain_count(),
        shards,
        base.display()
    );
    println!("Simulated providers on loopback (DNS too): gmail 127.0.0.2, yahoo 127.0.0.3 (accepts 1,500/s, then 421 TSS04), microsoft 127.0.0.4, a long tail on 127.0.0.5.\n");
    let stdout = std::io::stdout();
    let live = stdout.is_terminal();
    let report = run::run(
        RunOptions {
            external: None,
            scenario,
            base: base.to_path_buf(),
            engine: EngineMode::InProcess,
            live,
            timeout: DEMO_TIMEOUT,
        },
        &mut stdout.lock(),
    )
    .map_err(EngineError::Storage)?;
    println!("\n{}", report.markdown());
    if options.keep {
        let _ = std::fs::write(base.join("report.md"), report.markdown());
        if let Ok(json) = serde_json::to_string_pretty(&report) {
            let _ = std::fs::write(base.join("report.json"), json);
        }
    }
    if report.complete() {
        Ok(())
    } else {
        Err(EngineError::Storage(format!(
            "demo check failed: {} of {} valid recipients unaccounted for, {} duplicates{}",
            report.missing,
            report.valid,
            report.duplicates,
            if report.timed_out { ", timed out" } else { "" }
        )))
    }
}

fn storage(what: &std::path::Path, e: std::io::Error) -> EngineError {
    EngineError::Storage(format!("{}: {e}", what.display()))
}

/// `--queue-only`: the demo's campaign queued with delivery paused (DNS on a closed loopback
/// port, nothing sent anywhere), timed from the file landing in `incoming/` to its release.
fn queue_only(base: &std::path::Path, options: &Options) -> Result<(), EngineError> {
    use std::io::Write;
    use std::sync::atomic::Ordering;
    use std::time::Instant;
    let mut config = spate::config::Config::defaults_under(base);
    println!(
        "Spate demo, queue only: {} recipients, {} shards, delivery paused, everything under {}",
        options.recipients,
        config.engine.shards,
        base.display()
    );
    let rss_before = rss_mib();
    if let Some(list) = &options.suppression {
        config.suppression.files = vec![list.clone()];
    }
    let mut scenario = Scenario::demo();
    scenario.recipients = options.recipients;
    let tmp = config.spool.dir.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| storage(&tmp, e))?;
    let staged = tmp.join("demo.jsonl");
    let expected = scenario
        .campaign()
        .write(&staged, "demo")
        .map_err(|e| storage(&staged, e))?;
    let incoming = config.spool.dir.join("incoming");
    std::fs::create_dir_all(&incoming).map_err(|e| storage(&incoming, e))?;
    let data_dir = config.engine.data_dir.clone();
    let loading = Instant::now();
    let engine = spate::engine::start(config, None)?;
    while !engine.is_ready() && !engine.has_exited() {
        std::thread::sleep(Duration::from_millis(5));
    }
    if options.suppression.is_some() {
        let s = &engine.shared().suppressions;
        println!(
            "Suppression: {} entries, table {:.1} MiB, process RSS {:.1} MiB more than before; engine ready {:.2} s after start",
            s.len(),
            s.table_bytes() as f64 / (1 << 20) as f64,
            rss_mib() - rss_before,
            loading.elapsed().as_secs_f64()
        );
    }
    let clock = std::sync::Arc::clone(&engine.shared().clock);
    let since = |t: Instant| clock.now().duration_since(t);
    let started = clock.now();
    std::fs::rename(&staged, incoming.join("demo.jsonl")).map_err(|e| storage(&incoming, e))?;
    let counters = &engine.shared().counters;
    let mut first_durable = None;
    let mut last_print = clock.now();
    loop {
        std::thread::sleep(Duration::from_millis(1));
        let queued = counters.queued.load(Ordering::Relaxed);
        if queued > 0 && first_durable.is_none() {
            first_durable = Some(since(started));
        }
        let done = counters.inputs_done.load(Ordering::Relaxed)
            + counters.inputs_bad.load(Ordering::Relaxed);
        if since(last_print) >= Duration::from_millis(250) || done > 0 {
            last_print = clock.now();
            print!(
                "\r  queued {queued:>9} / {expected}  {:>6.1} s",
                since(started).as_secs_f64()
            );
            let _ = std::io::stdout().flush();
        }
        if done > 0 || engine.has_exited() || since(started) > DEMO_TIMEOUT {
            break;
        }
    }
    let elapsed = since(started);
    let queued = counters.queued.load(Ordering::Relaxed);
    engine.request_stop();
    engine.wait()?;
    println!(
        "\n\nQueued {queued} recipients durably in {:.2} s ({:.0}/s), rejected {} at intake.",
        elapsed.as_secs_f64(),
        queued as f64 / elapsed.as_secs_f64().max(1e-9),
        options.recipients - expected
    );
    if let Some(first) = first_durable {
        println!(
            "First recipients durable {:.1} ms after the file landed in incoming/.",
            first.as_secs_f64() * 1000.0
        );
    }
    let s = spate::summary::read_queue(&data_dir).map_err(|e| storage(&data_dir, e))?;
    if queued != expected || s.live_recipients() != expected {
        return Err(EngineError::Storage(format!(
            "demo check failed: expected {expected} queued, counted {queued}, the queue holds {}",
            s.live_recipients()
        )));
    }
    println!("Every valid recipient is in the queue exactly once.");
    Ok(())
}

/// This process's resident memory (VmRSS), in MiB; 0 where /proc cannot tell.
fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
            line.split_whitespace().nth(1)?.parse::<f64>().ok()
        })
        .map_or(0.0, |kib| kib / 1024.0)
}
