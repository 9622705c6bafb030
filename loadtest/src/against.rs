//! `spate-loadtest smtp-sink`: the figures that do not rest on a receiver written here. Postfix's
//! `smtp-sink` receives; Postfix's `smtp-source` over the same connections is the raw limit of
//! the machine for that receiver; then Spate with one shard and with the scenario's shards,
//! each against a fresh `smtp-sink`. Every address is loopback.

use crate::{fresh, Options};
use serde::Serialize;
use spate_sim::postfix::{SmtpSinks, SMTP_SOURCE};
use spate_sim::run::{self, EngineMode, External, RunOptions, RunReport};
use std::io::IsTerminal;
use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::rc::Rc;
use std::time::Instant;

#[derive(Debug, Serialize)]
pub struct SourceReport {
    pub messages: u64,
    pub received: u64,
    pub elapsed_s: f64,
    pub per_s: f64,
    pub cpu_us_per_message: f64,
}

/// The providers' listening addresses, one per provider (the first of each).
fn addresses(o: &Options) -> Vec<IpAddr> {
    o.scenario.providers.iter().map(|p| p.listen[0]).collect()
}

fn children_cpu_s() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// `smtp-source` to each provider's address at once, each with the provider's connections
/// and its share of the campaign's messages (the scenario's size, one recipient each).
fn source_run(o: &Options) -> Result<SourceReport, String> {
    let s = &o.scenario;
    if s.providers.iter().any(|p| p.mx.is_none()) {
        return Err(
            "smtp-sink runs need providers with an mx each (no long tail): see loadtest/scenarios/sinkpair.toml"
                .into(),
        );
    }
    let campaign = s.campaign();
    let mut per_provider = vec![0u64; s.providers.len()];
    for i in 0..s.recipients {
        per_provider[campaign.domains[campaign.domain_of(i)].1] += 1;
    }
    let sinks = SmtpSinks::start(&fresh(&o.out.join("smtp-source"))?, &addresses(o))?;
    let cpu0 = children_cpu_s();
    let started = Instant::now();
    let mut children = Vec::new();
    for (p, &n) in s
        .providers
        .iter()
        .zip(&per_provider)
        .filter(|(_, &n)| n > 0)
    {
        let child = Command::new(SMTP_SOURCE)
            // -d: the next message over the same connection; -s: sessions at once; -m:
            // messages in all; -l: message size.
            .arg("-d")
            .args(["-s", &p.connections.to_string()])
            .args(["-m", &n.to_string()])
            .args(["-l", &s.template_bytes.to_string()])
            .args(["-f", "bounces@acme.example"])
            .args(["-t", &format!("user@{}", p.domains[0])])
            .arg(format!("{}:{}", p.listen[0], sinks.port))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("{SMTP_SOURCE}: {e}"))?;
        children.push(child);
    }
    for c in children {
        let out = c.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "smtp-source failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    let elapsed_s = started.elapsed().as_secs_f64();
    let cpu = children_cpu_s() - cpu0;
    // smtp-sink counts a message when it answers its final dot: wait for the last counts.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let received = sinks.messages().iter().sum();
    Ok(SourceReport {
        messages: s.recipients,
        received,
        elapsed_s,
        per_s: s.recipients as f64 / elapsed_s.max(1e-9),
        cpu_us_per_message: cpu * 1e6 / s.recipients.max(1) as f64,
    })
}

/// Spate with `shards` against a fresh `smtp-sink` on every provider's address.
fn spate_run(o: &Options, shards: usize) -> Result<RunReport, String> {
    let dir = fresh(&o.out.join(format!("spate-{shards}")))?;
    let sinks = Rc::new(SmtpSinks::start(&dir.join("smtp-sink"), &addresses(o))?);
    let counted = Rc::clone(&sinks);
    let mut scenario = o.scenario.clone();
    scenario.shards = shards;
    let stdout = std::io::stdout();
    let live = stdout.is_terminal();
    run::run(
        RunOptions {
            external: Some(External {
                port: sinks.port,
                received: Box::new(move || counted.messages().iter().sum()),
            }),
            scenario,
            base: dir.join("run"),
            engine: EngineMode::Binary(o.bin.clone()),
            live,
            timeout: o.timeout,
        },
        &mut stdout.lock(),
    )
}

pub fn cmd_smtp_sink(o: &Options) -> Result<(), String> {
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    let s = &o.scenario;
    let shards = crate::shards_of(s);
    println!(
        "smtp-sink {}: {} messages, {} B, {} domains; Postfix's smtp-sink receives",
        s.name,
        s.recipients,
        s.template_bytes,
        s.domain_count()
    );
    println!("1/3 smtp-source (the limit over the same connections)");
    let src = source_run(o)?;
    println!("    {:.0} messages/s", src.per_s);
    println!("2/3 spate, 1 shard");
    let one = spate_run(o, 1)?;
    println!("\n    {:.0} messages/s", one.delivered_per_s);
    println!("3/3 spate, {shards} shards");
    let many = spate_run(o, shards)?;
    println!("\n    {:.0} messages/s", many.delivered_per_s);

    let mut md = format!(
        "## smtp-sink {}: {} messages of {} B, {} domains, Postfix's smtp-sink receiving\n\n| | smtp-source (limit) | spate, 1 shard | spate, {shards} shards |\n| --- | ---: | ---: | ---: |\n",
        s.name,
        s.recipients,
        s.template_bytes,
        s.domain_count()
    );
    md.push_str(&format!(
        "| received by smtp-sink | {} | {} | {} |\n",
        src.received, one.received_unique, many.received_unique
    ));
    md.push_str(&format!(
        "| seconds | {:.2} | {:.2} | {:.2} |\n",
        src.elapsed_s, one.elapsed_s, many.elapsed_s
    ));
    md.push_str(&format!(
        "| messages per second | {:.0} | {:.0} | {:.0} |\n",
        src.per_s, one.delivered_per_s, many.delivered_per_s
    ));
    md.push_str(&format!(
        "| CPU per message (sender only) | {:.1} µs | {:.1} µs | {:.1} µs |\n",
        src.cpu_us_per_message, one.engine_cpu_us_per_message, many.engine_cpu_us_per_message
    ));
    md.push_str(&format!(
        "\nspate {shards} shards / smtp-source = {:.2}; {shards} shards / 1 shard = {:.2} (throughput), {:.2} (CPU per message)\n",
        many.delivered_per_s / src.per_s.max(1e-9),
        many.delivered_per_s / one.delivered_per_s.max(1e-9),
        many.engine_cpu_us_per_message / one.engine_cpu_us_per_message.max(1e-9),
    ));
    println!("\n{md}");
    let path = o.out.join("smtp-sink.md");
    std::fs::write(&path, &md).map_err(|e| format!("{}: {e}", path.display()))?;
    let json = serde_json::json!({ "smtp_source": src, "spate_1": one, "spate_n": many });
    let path = o.out.join("smtp-sink.json");
    std::fs::write(&path, json.to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
    let complete = |r: &RunReport| !r.timed_out && r.delivered == r.received_unique;
    if src.received == src.messages && complete(&one) && complete(&many) {
        Ok(())
    } else {
        Err("a run is incomplete: smtp-sink's counts and the delivery logs disagree (see the report)".into())
    }
}
