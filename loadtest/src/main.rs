//! `spate-loadtest`: Spate's benchmark harness (see docs/benchmarks.md).

mod against;
mod blast;
mod dkim;
mod inject;
mod observe;
mod plot;
mod postfix;

use clap::error::ErrorKind;
use clap::{Args, Parser};
use serde::Serialize;
use spate_sim::dns::{DnsResponder, Zone};
use spate_sim::profile::SinkProfile;
use spate_sim::run::{self, EngineMode, RunOptions, RunReport};
use spate_sim::scenario::Scenario;
use spate_sim::sink::Sink;
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

#[derive(Parser)]
#[command(
    name = "spate-loadtest",
    version,
    about = "Spate's benchmark harness (docs/benchmarks.md)",
    after_help = "SCENARIO: a file, or a name in loadtest/scenarios/ (standard, small, throttle, ...).\n\
                  Exit codes: 0 success; 1 a run failed or its receipts did not add up; 64 usage error."
)]
enum Cli {
    /// The engine through a scenario: report.md, report.json, plots
    Run(ScenarioArgs),
    /// The no-queue limit of this machine for the same messages
    Blast(ScenarioArgs),
    /// Blast, Spate and Postfix in one run, side by side
    Compare {
        #[command(flatten)]
        args: ScenarioArgs,
        /// Leave Postfix out
        #[arg(long)]
        no_postfix: bool,
    },
    /// smtp-source, then Spate with 1 shard and with the scenario's, against Postfix's smtp-sink
    SmtpSink(ScenarioArgs),
    /// What DKIM signing costs end to end: unsigned, Ed25519, RSA-2048 and both, in one run
    Dkim(ScenarioArgs),
    /// The SMTP gateway: accepted rate against Postfix's smtpd, STARTTLS+AUTH, end to end
    Inject {
        /// Messages per figure
        #[arg(long, value_name = "N", default_value_t = 20000)]
        messages: u64,
        /// Message size in bytes
        #[arg(long, value_name = "BYTES", default_value_t = 10240)]
        size: usize,
        /// Client sessions at once (each keeps its connection)
        #[arg(long, value_name = "N", default_value_t = 20)]
        sessions: u32,
        /// Engine shards
        #[arg(long, value_name = "N", default_value_t = 2)]
        shards: usize,
        /// Leave Postfix out
        #[arg(long)]
        no_postfix: bool,
        /// Output directory (default target/loadtest/inject)
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
        /// The spate binary (default: the one next to this binary)
        #[arg(long = "bin", value_name = "PATH")]
        bin: Option<PathBuf>,
        /// Give up on a figure after this long
        #[arg(long, value_name = "SECS", default_value_t = 600)]
        timeout: u64,
    },
    /// What watching costs: runs with and without a scrape of /metrics and the status page's
    /// poll every second, interleaved
    Observe {
        #[command(flatten)]
        args: ScenarioArgs,
        /// Runs of each kind
        #[arg(long, value_name = "N", default_value_t = 5)]
        runs: u32,
    },
    /// Simulated providers and their DNS, standalone
    Sink {
        /// A provider profile (TOML)
        profile: PathBuf,
        /// Serve this many seconds
        #[arg(long = "for", value_name = "SECS", default_value_t = 3600)]
        seconds: u64,
    },
}

#[derive(Args)]
struct ScenarioArgs {
    /// A scenario file, or a name in loadtest/scenarios/
    scenario: String,
    /// Recipients in the campaign (the scenario's own count otherwise)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    recipients: Option<u64>,
    /// Template size in bytes
    #[arg(long, value_name = "N")]
    template_bytes: Option<usize>,
    /// Engine shards (0: one per CPU)
    #[arg(long, value_name = "N")]
    shards: Option<usize>,
    /// Extra engine configuration lines, appended (repeatable)
    #[arg(long, value_name = "TOML")]
    engine_keys: Vec<String>,
    /// Extra lines for the engine's [delivery] section (repeatable)
    #[arg(long, value_name = "TOML")]
    delivery_keys: Vec<String>,
    /// Output directory (default target/loadtest/<scenario>)
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// The spate binary (default: the one next to this binary)
    #[arg(long = "bin", value_name = "PATH")]
    bin: Option<PathBuf>,
    /// Give up on a run after this long
    #[arg(long, value_name = "SECS", default_value_t = 1800)]
    timeout: u64,
}

struct Options {
    scenario: Scenario,
    out: PathBuf,
    bin: PathBuf,
    timeout: Duration,
    postfix: bool,
}

/// EX_USAGE from sysexits.h.
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(EXIT_USAGE),
            };
        }
    };
    let result = match cli {
        Cli::Run(a) => options(a, true).and_then(|o| cmd_run(&o)),
        Cli::Blast(a) => options(a, true).and_then(|o| cmd_blast(&o)),
        Cli::Compare { args, no_postfix } => {
            options(args, !no_postfix).and_then(|o| cmd_compare(&o))
        }
        Cli::SmtpSink(a) => options(a, false).and_then(|o| against::cmd_smtp_sink(&o)),
        Cli::Dkim(a) => options(a, false).and_then(|o| dkim::cmd_dkim(&o)),
        Cli::Observe { args, runs } => {
            options(args, false).and_then(|o| observe::cmd_observe(&o, runs))
        }
        Cli::Sink { profile, seconds } => cmd_sink(&profile, seconds),
        Cli::Inject {
            messages,
            size,
            sessions,
            shards,
            no_postfix,
            out,
            bin,
            timeout,
        } => inject_options(
            messages, size, sessions, shards, no_postfix, out, bin, timeout,
        )
        .and_then(|o| inject::cmd_inject(&o)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("spate-loadtest: {e}");
            ExitCode::FAILURE
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn inject_options(
    messages: u64,
    size: usize,
    sessions: u32,
    shards: usize,
    no_postfix: bool,
    out: Option<PathBuf>,
    bin: Option<PathBuf>,
    timeout: u64,
) -> Result<inject::InjectOptions, String> {
    if messages == 0 || sessions == 0 || shards == 0 {
        return Err("--messages, --sessions and --shards must be at least 1".into());
    }
    let out = out
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/loadtest/inject"));
    // Absolute: Postfix refuses relative paths in its configuration.
    let out = std::path::absolute(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(inject::InjectOptions {
        messages,
        size,
        sessions,
        shards,
        out,
        bin: match bin {
            Some(b) => b,
            None => engine_binary()?,
        },
        postfix: !no_postfix,
        timeout: Duration::from_secs(timeout),
    })
}

fn scenario_path(name: &str) -> PathBuf {
    let p = PathBuf::from(name);
    if p.exists() || name.contains('/') || name.ends_with(".toml") {
        return p;
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"))
}

fn options(a: ScenarioArgs, postfix: bool) -> Result<Options, String> {
    let mut scenario = Scenario::load(&scenario_path(&a.scenario))?;
    if let Some(n) = a.recipients {
        scenario.recipients = n;
    }
    if let Some(n) = a.template_bytes {
        scenario.template_bytes = n;
    }
    if let Some(n) = a.shards {
        scenario.shards = n;
    }
    for keys in &a.delivery_keys {
        scenario.delivery_keys = format!("{}\n{}\n", scenario.delivery_keys, keys);
    }
    for keys in &a.engine_keys {
        scenario.engine_keys = format!("{}\n{}\n", scenario.engine_keys, keys);
    }
    let bin = match a.bin {
        Some(b) => b,
        None => engine_binary()?,
    };
    let out = a.out.unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/loadtest")
            .join(&scenario.name)
    });
    // Absolute: Postfix refuses relative paths in its configuration.
    let out = std::path::absolute(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok(Options {
        scenario,
        out,
        bin,
        timeout: Duration::from_secs(a.timeout),
        postfix,
    })
}

/// `spate` in the directory of this binary (or its parent, for test binaries in deps/).
pub fn engine_binary() -> Result<PathBuf, String> {
    let me = std::env::current_exe().map_err(|e| e.to_string())?;
    me.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("spate"))
        .find(|p| p.is_file())
        .ok_or_else(|| "no spate binary next to spate-loadtest: cargo build --release --workspace, or --bin PATH".into())
}

fn shards_of(s: &Scenario) -> usize {
    if s.shards > 0 {
        s.shards
    } else {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }
}

/// A fresh directory for one part of a run.
fn fresh(dir: &Path) -> Result<PathBuf, String> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(dir.to_path_buf())
}

fn spate_run(o: &Options, dir: &Path) -> Result<RunReport, String> {
    let stdout = std::io::stdout();
    let live = stdout.is_terminal();
    run::run(
        RunOptions {
            external: None,
            scenario: o.scenario.clone(),
            base: fresh(dir)?,
            engine: EngineMode::Binary(o.bin.clone()),
            live,
            timeout: o.timeout,
        },
        &mut stdout.lock(),
    )
}

fn write_report(o: &Options, report: &RunReport) -> Result<(), String> {
    let w = |name: &str, text: String| {
        let p = o.out.join(name);
        std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))
    };
    w(
        "report.json",
        serde_json::to_string_pretty(report).map_err(|e| e.to_string())?,
    )?;
    let names: Vec<&str> = report.providers.iter().map(|p| p.name.as_str()).collect();
    let per_provider = |f: &dyn Fn(&run::Sample, usize) -> f64| -> Vec<plot::Series> {
        names
            .iter()
            .enumerate()
            .map(|(i, n)| plot::Series {
                name: n.to_string(),
                points: plot::rates(
                    &report
                        .samples
                        .iter()
                        .map(|s| (s.t_s, f(s, i)))
                        .collect::<Vec<_>>(),
                ),
            })
            .collect()
    };
    w(
        "delivered.svg",
        plot::chart(
            "Delivered per second, per provider",
            "recipients / s",
            &per_provider(&|s, i| s.accepted[i] as f64),
        ),
    )?;
    w(
        "deferrals.svg",
        plot::chart(
            "4xx replies per second, per provider",
            "replies / s",
            &per_provider(&|s, i| s.deferred[i] as f64),
        ),
    )?;
    let cpu = plot::Series {
        name: "CPU %".into(),
        points: plot::rates(
            &report
                .samples
                .iter()
                .map(|s| (s.t_s, s.engine_cpu_s * 100.0))
                .collect::<Vec<_>>(),
        ),
    };
    let rss = plot::Series {
        name: "RSS MiB".into(),
        points: report
            .samples
            .iter()
            .map(|s| (s.t_s, s.engine_rss_bytes as f64 / (1 << 20) as f64))
            .collect(),
    };
    w(
        "engine.svg",
        plot::chart("Engine CPU (% of one core) and memory", "", &[cpu, rss]),
    )?;
    let mut md = format!(
        "# spate-loadtest run {}\n\n{}\n![delivered](delivered.svg)\n\n![deferrals](deferrals.svg)\n\n![engine](engine.svg)\n",
        o.scenario.name,
        report.markdown()
    );
    md.push_str(&format!(
        "\nEngine configuration: `{}`.\n",
        o.out.join("spate/spate.toml").display()
    ));
    w("report.md", md)
}

fn cmd_run(o: &Options) -> Result<(), String> {
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    println!(
        "run {}: {} recipients, {} B template, {} domains, {} shards",
        o.scenario.name,
        o.scenario.recipients,
        o.scenario.template_bytes,
        o.scenario.domain_count(),
        shards_of(&o.scenario)
    );
    let report = spate_run(o, &o.out.join("spate"))?;
    println!("\n{}", report.markdown());
    write_report(o, &report)?;
    println!("report: {}", o.out.join("report.md").display());
    if report.complete() {
        Ok(())
    } else {
        Err("the run is incomplete (see the report)".into())
    }
}

/// blast against a fresh sink for the scenario.
fn blast_run(o: &Options) -> Result<blast::BlastReport, String> {
    let sink = Sink::start(o.scenario.sink_profile(None))?;
    let groups = blast::groups_for(&o.scenario, sink.port);
    let report = blast::blast(&o.scenario, groups, shards_of(&o.scenario))?;
    let accepted = sink.accepted();
    sink.stop()?;
    if accepted != report.delivered {
        return Err(format!(
            "blast counted {} delivered, the sink {accepted}",
            report.delivered
        ));
    }
    Ok(report)
}

fn cmd_blast(o: &Options) -> Result<(), String> {
    let r = blast_run(o)?;
    println!(
        "{}",
        serde_json::to_string_pretty(&r).map_err(|e| e.to_string())?
    );
    Ok(())
}

#[derive(Serialize)]
struct PostfixReport {
    delivered: u64,
    duplicates: u64,
    elapsed_s: f64,
    delivered_per_s: f64,
    first_delivery_ms: f64,
    injected_in_s: f64,
}

/// The scenario through a private Postfix relaying to a fresh sink: injected over SMTP by
/// blast's client, timed from the first injection to the last receipt at the sink.
fn postfix_run(o: &Options, dir: &Path) -> Result<PostfixReport, String> {
    let dir = fresh(dir)?;
    let receipts = dir.join("receipts.log");
    let sink = Sink::start(o.scenario.sink_profile(Some(&receipts)))?;
    let pf = postfix::start(&dir.join("postfix"), &o.scenario, sink.port)?;
    let mut groups = blast::groups_for(&o.scenario, sink.port);
    let all: Vec<u64> = groups.drain(..).flat_map(|g| g.recipients).collect();
    let valid = all.len() as u64;
    let target = blast::Group {
        addr: ([127, 0, 0, 1], pf.port).into(),
        connections: 20,
        recipients: all,
    };
    let landed = run::unix_us();
    let started = Instant::now();
    let injected = blast::blast(&o.scenario, vec![target], shards_of(&o.scenario))?;
    let injected_in_s = started.elapsed().as_secs_f64();
    if injected.delivered != valid {
        return Err(format!(
            "postfix accepted {} of {valid} messages at injection",
            injected.delivered
        ));
    }
    // Recipients the providers refuse for good (unknown users, policy) end there too.
    let settled = |sink: &Sink| {
        sink.accepted()
            + sink
                .stats
                .iter()
                .map(|(_, p)| spate_sim::sink::ProviderStats::get(&p.rejected))
                .sum::<u64>()
    };
    while settled(&sink) < valid {
        if started.elapsed() > o.timeout {
            return Err(format!(
                "postfix delivered {} of {valid} within the timeout: {}",
                sink.accepted(),
                pf.maillog_tail(5)
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(pf);
    sink.stop()?;
    let (unique, duplicates, lat) = run::read_receipts(&receipts, landed)?;
    let last_us = lat.iter().copied().max().unwrap_or(0);
    let elapsed_s = last_us as f64 / 1e6;
    Ok(PostfixReport {
        delivered: unique,
        duplicates,
        elapsed_s,
        delivered_per_s: unique as f64 / elapsed_s.max(1e-9),
        first_delivery_ms: lat.iter().copied().min().unwrap_or(0) as f64 / 1000.0,
        injected_in_s,
    })
}

fn cmd_compare(o: &Options) -> Result<(), String> {
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    println!(
        "compare {}: {} recipients, {} B template, {} domains, {} shards",
        o.scenario.name,
        o.scenario.recipients,
        o.scenario.template_bytes,
        o.scenario.domain_count(),
        shards_of(&o.scenario)
    );
    println!("1/3 blast (no queue, straight to the simulated providers)");
    let b = blast_run(o)?;
    println!("    {:.0} messages/s", b.delivered_per_s);
    println!("2/3 spate");
    let s = spate_run(o, &o.out.join("spate"))?;
    println!("\n    {:.0} messages/s", s.delivered_per_s);
    write_report(o, &s)?;
    let p = if o.postfix {
        println!("3/3 postfix");
        let p = postfix_run(o, &o.out.join("postfix"))?;
        println!("    {:.0} messages/s", p.delivered_per_s);
        Some(p)
    } else {
        None
    };
    let mut md = format!(
        "## compare {}: {} recipients, {} B template, {} domains, {} shards\n\n| | blast (limit) | spate | postfix |\n| --- | ---: | ---: | ---: |\n",
        o.scenario.name,
        o.scenario.recipients,
        o.scenario.template_bytes,
        o.scenario.domain_count(),
        shards_of(&o.scenario)
    );
    let pf = |f: &dyn Fn(&PostfixReport) -> String| p.as_ref().map_or("-".into(), f);
    md.push_str(&format!(
        "| delivered | {} | {} | {} |\n",
        b.delivered,
        s.delivered,
        pf(&|p| p.delivered.to_string())
    ));
    md.push_str(&format!(
        "| seconds | {:.2} | {:.2} | {} |\n",
        b.elapsed_s,
        s.elapsed_s,
        pf(&|p| format!("{:.2}", p.elapsed_s))
    ));
    md.push_str(&format!(
        "| messages per second | {:.0} | {:.0} | {} |\n",
        b.delivered_per_s,
        s.delivered_per_s,
        pf(&|p| format!("{:.0}", p.delivered_per_s))
    ));
    md.push_str(&format!(
        "| first delivery | - | {:.1} ms | {} |\n",
        s.first_delivery_ms,
        pf(&|p| format!("{:.1} ms", p.first_delivery_ms))
    ));
    md.push_str(&format!(
        "| duplicates | - | {} | {} |\n",
        s.duplicates,
        pf(&|p| p.duplicates.to_string())
    ));
    md.push_str(&format!(
        "| CPU per message (sender only) | {:.1} µs | {:.1} µs | - |\n",
        b.cpu_us_per_message, s.engine_cpu_us_per_message
    ));
    md.push_str(&format!(
        "\nspate / blast = {:.2}",
        s.delivered_per_s / b.delivered_per_s.max(1e-9)
    ));
    if let Some(p) = &p {
        md.push_str(&format!(
            "; spate / postfix = {:.1}",
            s.delivered_per_s / p.delivered_per_s.max(1e-9)
        ));
    }
    md.push('\n');
    println!("\n{md}");
    let path = o.out.join("compare.md");
    std::fs::write(&path, &md).map_err(|e| format!("{}: {e}", path.display()))?;
    let json = serde_json::json!({ "blast": b, "spate": s, "postfix": p });
    let path = o.out.join("compare.json");
    std::fs::write(&path, json.to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
    if s.complete() {
        Ok(())
    } else {
        Err("the spate run is incomplete (see the report)".into())
    }
}

fn cmd_sink(path: &Path, seconds: u64) -> Result<(), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let profile = SinkProfile::parse(&text, &path.display().to_string())?;
    let zone = Zone::for_sink(&profile);
    let sink = Sink::start(profile)?;
    let dns = DnsResponder::start("127.0.0.1:0".parse().expect("address"), zone)?;
    println!(
        "sink on port {} (DNS on {}); serving for {seconds} s",
        sink.port, dns.addr
    );
    let _ = std::io::stdout().flush();
    let until = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < until {
        std::thread::sleep(Duration::from_secs(1));
    }
    for (name, st) in &sink.stats {
        println!("{name}: {st:?}");
    }
    sink.stop()
}
