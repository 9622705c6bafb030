//! `spate-loadtest observe SCENARIO`: what watching the engine costs. The scenario `runs`
//! times without anyone watching and `runs` times with a Prometheus-like scrape of
//! `/metrics` and an open status page (`/api/v1/status`) every second, plus `queue
//! summary`'s call (`/api/v1/summary`) every 5 s, interleaved (without, with; with,
//! without; ...), so drift on a shared machine falls on both. Reports each run, the median
//! of each side, their spread, and the ratio of the medians.

use crate::{spate_run, Options};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What the watcher did in one run.
#[derive(Default)]
struct Watched {
    requests: AtomicU64,
    failures: AtomicU64,
    bytes: AtomicU64,
    /// Microseconds spent waiting for replies, all requests.
    wait_us: AtomicU64,
}

fn get(addr: &str, path: &str, w: &Watched) {
    let started = Instant::now();
    let ok = (|| -> std::io::Result<u64> {
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut reply = Vec::new();
        s.read_to_end(&mut reply)?;
        if !reply.starts_with(b"HTTP/1.1 200") {
            return Err(std::io::Error::other("not 200"));
        }
        Ok(reply.len() as u64)
    })();
    w.requests.fetch_add(1, Ordering::Relaxed);
    w.wait_us
        .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
    match ok {
        Ok(n) => {
            w.bytes.fetch_add(n, Ordering::Relaxed);
        }
        Err(_) => {
            w.failures.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Watches the engine of the run under `base` until `stop`: each second /metrics and
/// /api/v1/status, every fifth /api/v1/summary.
fn watch(base: PathBuf, stop: Arc<AtomicBool>, w: Arc<Watched>) {
    let listen = base.join("data/admin/listen");
    let mut addr = None;
    let mut tick = 0u64;
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if addr.is_none() {
            addr = std::fs::read_to_string(&listen).ok().and_then(|u| {
                let u = u.trim().strip_prefix("http://")?.trim_end_matches('/');
                Some(u.to_string())
            });
            if addr.is_none() {
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
        }
        let a = addr.as_deref().expect("known");
        get(a, "/metrics", &w);
        get(a, "/api/v1/status", &w);
        if tick % 5 == 0 {
            get(a, "/api/v1/summary", &w);
        }
        tick += 1;
        next += Duration::from_secs(1);
        while Instant::now() < next && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

pub fn cmd_observe(o: &Options, runs: u32) -> Result<(), String> {
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    let s = &o.scenario;
    println!(
        "observe {}: {} recipients, {runs} runs unwatched and {runs} watched, interleaved",
        s.name, s.recipients
    );
    let mut rows: Vec<(u32, bool, f64, f64, u64, u64, f64)> = Vec::new();
    for i in 0..runs {
        let order = if i % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for watched in order {
            let dir = o
                .out
                .join(format!("{}-{i}", if watched { "watched" } else { "plain" }));
            let stop = Arc::new(AtomicBool::new(false));
            let w = Arc::new(Watched::default());
            let watcher = watched.then(|| {
                let (base, stop, w) = (dir.clone(), Arc::clone(&stop), Arc::clone(&w));
                std::thread::spawn(move || watch(base, stop, w))
            });
            let report = spate_run(o, Path::new(&dir));
            stop.store(true, Ordering::Relaxed);
            if let Some(t) = watcher {
                let _ = t.join();
            }
            let report = report?;
            if !report.complete() {
                return Err(format!("run {i} is incomplete: {}", report.markdown()));
            }
            let requests = w.requests.load(Ordering::Relaxed);
            let failures = w.failures.load(Ordering::Relaxed);
            let wait_ms =
                w.wait_us.load(Ordering::Relaxed) as f64 / 1000.0 / requests.max(1) as f64;
            println!(
                "\n  run {i} {}: {:.0} messages/s, engine CPU {:.1} µs a message{}",
                if watched { "watched" } else { "plain  " },
                report.delivered_per_s,
                report.engine_cpu_us_per_message,
                if watched {
                    format!(", {requests} requests ({failures} failed), {wait_ms:.1} ms each")
                } else {
                    String::new()
                }
            );
            if failures > 0 {
                return Err(format!("run {i}: {failures} of {requests} requests failed"));
            }
            rows.push((
                i,
                watched,
                report.delivered_per_s,
                report.engine_cpu_us_per_message,
                requests,
                w.bytes.load(Ordering::Relaxed),
                wait_ms,
            ));
        }
    }
    let side = |watched: bool| -> Vec<f64> {
        rows.iter()
            .filter(|r| r.1 == watched)
            .map(|r| r.2)
            .collect()
    };
    let cpu = |watched: bool| -> Vec<f64> {
        rows.iter()
            .filter(|r| r.1 == watched)
            .map(|r| r.3)
            .collect()
    };
    let (plain, watched) = (side(false), side(true));
    let spread = |v: &[f64]| {
        let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = v.iter().copied().fold(0.0, f64::max);
        (lo, hi)
    };
    let (mp, mw) = (median(&plain), median(&watched));
    let (pl, ph) = spread(&plain);
    let (wl, wh) = spread(&watched);
    let mut md = format!(
        "## observe {}: {} recipients, {runs} + {runs} runs interleaved\n\n| run | watched | messages/s | engine CPU µs/msg | requests | bytes | ms/request |\n| ---: | --- | ---: | ---: | ---: | ---: | ---: |\n",
        s.name, s.recipients
    );
    for (i, w, r, c, n, b, ms) in &rows {
        md.push_str(&format!(
            "| {i} | {} | {r:.0} | {c:.1} | {n} | {b} | {ms:.1} |\n",
            if *w { "yes" } else { "no" }
        ));
    }
    md.push_str(&format!(
        "\nunwatched: median {mp:.0} messages/s (runs {pl:.0} to {ph:.0}), engine CPU median {:.1} µs/msg\n\
         watched: median {mw:.0} messages/s (runs {wl:.0} to {wh:.0}), engine CPU median {:.1} µs/msg\n\
         watched / unwatched (medians): {:.3}\n",
        median(&cpu(false)),
        median(&cpu(true)),
        mw / mp.max(1e-9)
    ));
    println!("\n{md}");
    let path = o.out.join("observe.md");
    std::fs::write(&path, &md).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(())
}
