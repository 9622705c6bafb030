//! `spate demo`: runs a campaign on this machine with no setup, on the embedded defaults in a
//! temporary directory.
//!
//! What it shows today is durable intake: a 100,000-recipient campaign (a realistic mix of
//! large providers and a long tail, with a few bad recipients) dropped into the spool, queued
//! by every shard with group commit, then the queue summary and the delivery log's counts.
//! Delivery to simulated ISPs is not implemented yet, and the demo says so.

use crate::config::Config;
use crate::engine::{self, EngineError};
use crate::summary;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub const DEFAULT_RECIPIENTS: u64 = 100_000;
/// The demo gives up rather than hang if intake stalls.
pub const DEMO_TIMEOUT: Duration = Duration::from_secs(300);

pub struct Options {
    pub recipients: u64,
    pub keep: bool,
}

impl Options {
    pub fn parse(args: &[&str]) -> Result<Options, String> {
        let mut o = Options {
            recipients: DEFAULT_RECIPIENTS,
            keep: false,
        };
        let mut it = args.iter();
        while let Some(&a) = it.next() {
            match a {
                "--recipients" => {
                    o.recipients = it
                        .next()
                        .and_then(|n| n.parse().ok())
                        .filter(|&n| n > 0)
                        .ok_or("--recipients needs a positive number")?;
                }
                "--keep" => o.keep = true,
                other => return Err(format!("unknown option {other:?}")),
            }
        }
        Ok(o)
    }
}

/// Domains with their share of a typical consumer list (percent), then a long tail.
const DOMAIN_MIX: &[(&str, u64)] = &[
    ("gmail.com", 32),
    ("yahoo.com", 12),
    ("outlook.com", 9),
    ("hotmail.com", 8),
    ("icloud.com", 6),
    ("aol.com", 3),
    ("comcast.net", 2),
];
const LONG_TAIL_DOMAINS: u64 = 200;

/// Writes a campaign batch of `n` recipients; every 1000th recipient is invalid (a bad
/// address or a header-injection attempt) to show per-recipient refusal.
pub fn write_campaign(path: &Path, n: u64) -> std::io::Result<u64> {
    let file = std::fs::File::create(path)?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
    // About 10 KiB: the size of a typical marketing message's text part.
    let body =
        "We picked these for you, {{ first_name }}: new arrivals, spring prices.\r\n".repeat(140);
    let template = format!(
        "From: Acme News <news@acme.example>\r\nTo: {{{{ to }}}}\r\nSubject: {{{{ first_name }}}}, your spring offer (code {{{{ code }}}})\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello {{{{ first_name }}}},\r\n\r\n{body}\r\nYour code: {{{{ code }}}}\r\n"
    );
    let header = serde_json::json!({
        "campaign": "spring-sale",
        "tenant": "acme",
        "from": "bounces@acme.example",
        "template": template,
    });
    writeln!(w, "{header}")?;
    let mut bad = 0;
    for i in 0..n {
        let bucket = (i * 7919) % 100;
        let mut acc = 0;
        let domain = DOMAIN_MIX
            .iter()
            .find(|(_, share)| {
                acc += share;
                bucket < acc
            })
            .map(|(d, _)| d.to_string())
            .unwrap_or_else(|| format!("tail{}.example", i % LONG_TAIL_DOMAINS));
        if i % 1000 == 999 {
            bad += 1;
            if i % 2000 == 1999 {
                writeln!(
                    w,
                    r#"{{"to":"user{i}.at.{domain}","vars":{{"first_name":"X"}}}}"#
                )?;
            } else {
                writeln!(
                    w,
                    r#"{{"to":"user{i}@{domain}","vars":{{"first_name":"Eve\r\nBcc: list@evil.example"}}}}"#
                )?;
            }
            continue;
        }
        writeln!(
            w,
            r#"{{"to":"user{i}@{domain}","vars":{{"first_name":"Name{i}","code":"C{:06}"}}}}"#,
            i * 31 % 1_000_000
        )?;
    }
    w.flush()?;
    Ok(bad)
}

pub fn run(options: &Options) -> Result<(), EngineError> {
    let base = std::env::temp_dir().join(format!("spate-demo-{}", std::process::id()));
    let result = run_in(&base, options);
    if options.keep {
        eprintln!("demo files kept in {}", base.display());
    } else {
        let _ = std::fs::remove_dir_all(&base);
    }
    result
}

fn storage(what: &Path, e: std::io::Error) -> EngineError {
    EngineError::Storage(format!("{}: {e}", what.display()))
}

fn run_in(base: &Path, options: &Options) -> Result<(), EngineError> {
    let config = Config::defaults_under(base);
    println!(
        "Spate demo: {} recipients, {} shards, everything under {}",
        options.recipients,
        config.engine.shards,
        base.display()
    );
    println!("Delivery to simulated ISPs is not implemented yet: this demo shows durable intake.");
    let tmp = config.spool.dir.join("tmp");
    std::fs::create_dir_all(&tmp).map_err(|e| storage(&tmp, e))?;
    let staged = tmp.join("spring-sale.jsonl");
    let bad = write_campaign(&staged, options.recipients).map_err(|e| storage(&staged, e))?;
    let incoming: PathBuf = config.spool.dir.join("incoming");
    std::fs::create_dir_all(&incoming).map_err(|e| storage(&incoming, e))?;

    let log_path = config.log.dir.join(crate::delivery_log::LOG_FILE_NAME);
    let data_dir = config.engine.data_dir.clone();
    let engine = engine::start(config, None)?;
    while !engine.is_ready() && !engine.has_exited() {
        std::thread::sleep(Duration::from_millis(5));
    }
    let started = Instant::now();
    std::fs::rename(&staged, incoming.join("spring-sale.jsonl"))
        .map_err(|e| storage(&incoming, e))?;
    let counters = &engine.shared().counters;
    let mut last_print = Instant::now();
    let mut first_durable = None;
    let expected = options.recipients - bad;
    loop {
        std::thread::sleep(Duration::from_millis(1));
        let queued = counters.queued.load(Ordering::Relaxed);
        if queued > 0 && first_durable.is_none() {
            first_durable = Some(started.elapsed());
        }
        let done = counters.inputs_done.load(Ordering::Relaxed)
            + counters.inputs_bad.load(Ordering::Relaxed);
        if last_print.elapsed() >= Duration::from_millis(250) || done > 0 {
            last_print = Instant::now();
            print!(
                "\r  queued {queued:>9} / {expected}  rejected {:>5}  {:>6.1} s",
                counters.rejected.load(Ordering::Relaxed),
                started.elapsed().as_secs_f64()
            );
            let _ = std::io::stdout().flush();
        }
        if done > 0 || engine.has_exited() || started.elapsed() > DEMO_TIMEOUT {
            break;
        }
    }
    let elapsed = started.elapsed();
    println!();
    engine.request_stop();
    engine.wait()?;

    let queued = counters_total(&log_path, "Reception");
    let rejected = counters_total(&log_path, "Rejected");
    let rate = queued as f64 / elapsed.as_secs_f64().max(1e-9);
    println!(
        "\nQueued {queued} recipients durably in {:.2} s ({rate:.0}/s), rejected {rejected} at intake.",
        elapsed.as_secs_f64()
    );
    if let Some(first) = first_durable {
        println!(
            "First recipients durable {:.1} ms after the file landed in incoming/.",
            first.as_secs_f64() * 1000.0
        );
    }
    let s = summary::read_queue(&data_dir).map_err(|e| storage(&data_dir, e))?;
    println!("\nQueue summary (spate queue summary), top domains:");
    let text = s.to_text(crate::queue::store::unix_ms(), false);
    for line in text.lines().take(12) {
        println!("  {line}");
    }
    println!("  ... {} domains in all", s.domains.len());
    if queued != expected || s.live_recipients() != expected {
        return Err(EngineError::Storage(format!(
            "demo check failed: expected {expected} queued, log shows {queued}, queue holds {}",
            s.live_recipients()
        )));
    }
    println!("\nEvery valid recipient is in the queue exactly once; each refusal is in the delivery log.");
    Ok(())
}

/// Counts delivery-log lines of one event type.
fn counters_total(log: &Path, event: &str) -> u64 {
    let needle = format!("\"type\":\"{event}\"");
    std::fs::read_to_string(log)
        .map(|t| t.lines().filter(|l| l.contains(&needle)).count() as u64)
        .unwrap_or(0)
}
