//! `spate-loadtest dkim SCENARIO`: what DKIM signing costs end to end, in one run. The
//! scenario four times against the simulated providers: unsigned, Ed25519-signed,
//! RSA-2048-signed and dual-signed (the keys of tests/fixtures/dkim, for the campaign's From
//! domain acme.example). Beside them, the signing time per message measured here on the
//! scenario's message size, and the bound the machine sets for each signed run:
//! 1 / (1 / unsigned rate + signing time per message / shards).

use crate::{shards_of, spate_run, Options};
use spate::dkim::{sign, Signer, Signers};
use spate::smtp::data::Data;
use spate_sim::run::RunReport;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

/// Signatures timed per variant for the per-message figure.
const SIGNING_SAMPLES: u32 = 300;

fn key(file: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/dkim")
        .join(file)
        .display()
        .to_string()
}

fn entry(selector: &str, file: &str) -> String {
    format!(
        "[[dkim]]\ndomain = \"acme.example\"\nselector = \"{selector}\"\nkey = {:?}\n",
        key(file)
    )
}

/// Seconds per message for `signers` over a message of `bytes`, signed as the home shard
/// signs it.
fn signing_time(signers: &Signers, bytes: usize) -> f64 {
    let line = "We picked these for you: new arrivals, spring prices and more.\r\n";
    let body = line.repeat(bytes / line.len() + 1);
    let m = format!(
        "From: Acme News <news@acme.example>\r\nTo: a@example.com\r\nSubject: spring\r\n\r\n{}",
        &body[..bytes.min(body.len())]
    );
    let data = Data::encode(m.as_bytes());
    let started = Instant::now();
    for _ in 0..SIGNING_SAMPLES {
        let fields = sign(data.bytes(), signers, 1_700_000_000).unwrap_or_default();
        std::hint::black_box(fields);
    }
    started.elapsed().as_secs_f64() / f64::from(SIGNING_SAMPLES)
}

pub fn cmd_dkim(o: &Options) -> Result<(), String> {
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    let s = &o.scenario;
    let shards = shards_of(s);
    let load = |file: &str| {
        Signer::load("acme.example", "s", Path::new(&key(file)), None)
            .map(Arc::new)
            .map_err(|e| e.to_string())
    };
    let (ed, rsa) = (load("ed25519.pem")?, load("rsa2048.pem")?);
    let variants = [
        ("unsigned", String::new(), Signers::default()),
        (
            "ed25519",
            entry("ed", "ed25519.pem"),
            Signers::new([Arc::clone(&ed)]),
        ),
        (
            "rsa2048",
            entry("rsa", "rsa2048.pem"),
            Signers::new([Arc::clone(&rsa)]),
        ),
        (
            "rsa2048+ed25519",
            entry("rsa", "rsa2048.pem") + &entry("ed", "ed25519.pem"),
            Signers::new([rsa, ed]),
        ),
    ];
    println!(
        "dkim {}: {} recipients, {} B template, {shards} shards; unsigned, Ed25519, RSA-2048, both",
        s.name, s.recipients, s.template_bytes
    );
    let mut rows: Vec<(&str, RunReport, f64)> = Vec::new();
    for (i, (name, keys, signers)) in variants.iter().enumerate() {
        let per_message = signing_time(signers, s.template_bytes);
        println!(
            "{}/4 {name} (signing {:.1} µs a message here)",
            i + 1,
            per_message * 1e6
        );
        let mut run = Options {
            scenario: s.clone(),
            out: o.out.clone(),
            bin: o.bin.clone(),
            timeout: o.timeout,
            postfix: false,
        };
        run.scenario.engine_keys = format!("{}\n{keys}", s.engine_keys);
        let report = spate_run(&run, &o.out.join(name))?;
        println!("\n    {:.0} messages/s", report.delivered_per_s);
        if !report.complete() {
            return Err(format!(
                "the {name} run is incomplete: {}",
                report.markdown()
            ));
        }
        rows.push((name, report, per_message));
    }
    let unsigned = rows[0].1.delivered_per_s;
    let mut md = format!(
        "## dkim {}: {} recipients, {} B template, {shards} shards\n\n| variant | messages/s | of unsigned | signing µs/msg (here) | bound msg/s | of bound | engine CPU µs/msg |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n",
        s.name, s.recipients, s.template_bytes
    );
    let mut json = Vec::new();
    for (name, r, t) in &rows {
        let bound = 1.0 / (1.0 / unsigned.max(1e-9) + t / shards as f64);
        md.push_str(&format!(
            "| {name} | {:.0} | {:.2} | {:.1} | {:.0} | {:.2} | {:.1} |\n",
            r.delivered_per_s,
            r.delivered_per_s / unsigned.max(1e-9),
            t * 1e6,
            bound,
            r.delivered_per_s / bound,
            r.engine_cpu_us_per_message
        ));
        json.push(serde_json::json!({
            "variant": name, "per_s": r.delivered_per_s, "signing_s": t, "bound_per_s": bound,
            "engine_cpu_us_per_message": r.engine_cpu_us_per_message,
        }));
    }
    println!("\n{md}");
    let path = o.out.join("dkim.md");
    std::fs::write(&path, &md).map_err(|e| format!("{}: {e}", path.display()))?;
    let path = o.out.join("dkim.json");
    std::fs::write(&path, serde_json::Value::from(json).to_string())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}
