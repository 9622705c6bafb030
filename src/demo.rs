//! `spate demo`: runs a campaign on this machine with no setup, on the embedded defaults in a
//! temporary directory.
//!
//! A 100,000-recipient campaign (a realistic mix of large providers and a long tail, with a
//! few bad recipients) is delivered to simulated Gmail-, Yahoo- and Microsoft-like providers
//! and a long tail of small sites, all on loopback addresses, resolved through a simulated DNS
//! server on loopback (see [`crate::sim`]); the Yahoo-like provider accepts fewer messages per
//! second than the engine would send and answers the excess with its `421 4.7.0 [TSS04]`.
//! Progress is shown per provider; the report checks every recipient against the receipts the
//! simulated providers wrote. The engine runs on this process's threads.

use crate::engine::EngineError;
use crate::sim::run::{self, EngineMode, RunOptions};
use crate::sim::scenario::Scenario;
use std::io::IsTerminal;
use std::time::Duration;

pub const DEFAULT_RECIPIENTS: u64 = 100_000;
/// The demo gives up rather than hang if intake stalls.
pub const DEMO_TIMEOUT: Duration = Duration::from_secs(600);

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

fn run_in(base: &std::path::Path, options: &Options) -> Result<(), EngineError> {
    let mut scenario = Scenario::demo();
    scenario.recipients = options.recipients;
    let shards = crate::config::Config::defaults_under(base).engine.shards;
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
