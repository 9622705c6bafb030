//! One whole run of a scenario: simulated providers and DNS on loopback, the engine (in this
//! process for `spate demo`, or the `spate` binary as a child for the harness, so its CPU and
//! memory are its own), the campaign dropped into `incoming/`, progress followed through the
//! sink's counters and the delivery log, and a report checked against the sink's receipts.

use super::dns::{DnsResponder, Zone};
use super::scenario::Scenario;
use super::sink::{ProviderStats, Sink};
use serde::Serialize;
use std::collections::HashMap;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How often progress is sampled (and the time series' resolution).
pub const SAMPLE_EVERY: Duration = Duration::from_millis(250);

pub enum EngineMode {
    /// The engine runs on this process's threads (the demo).
    InProcess,
    /// `spate run -c` of this binary, as a child process (the harness).
    Binary(PathBuf),
}

/// A receiver not written here (Postfix's `smtp-sink`, `crate::postfix::SmtpSinks`) in place
/// of the simulated providers: the engine sends to `port` on the providers' addresses, and
/// `received` counts the messages it accepted. The simulated providers still answer DNS's
/// questions; the receipts (and so latencies) are theirs alone, so such a run has none.
pub struct External {
    pub port: u16,
    pub received: Box<dyn Fn() -> u64>,
}

pub struct RunOptions {
    pub scenario: Scenario,
    /// Send to this receiver instead of the simulated providers.
    pub external: Option<External>,
    /// Everything the run writes goes under here.
    pub base: PathBuf,
    pub engine: EngineMode,
    /// Redraw a progress display on the terminal (else a line every few seconds).
    pub live: bool,
    pub timeout: Duration,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ProviderReport {
    pub name: String,
    pub domains: usize,
    /// Valid recipients of the campaign at this provider's domains.
    pub recipients: u64,
    pub accepted: u64,
    pub throttled: u64,
    pub deferred: u64,
    pub rejected: u64,
    pub connections: u64,
    pub connections_refused: u64,
    pub dropped: u64,
    /// Per sending IP, when more than one sent (egress sources): accepted and throttled.
    pub sending_ips: Vec<IpReport>,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct IpReport {
    pub ip: String,
    pub accepted: u64,
    pub throttled: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Sample {
    pub t_s: f64,
    /// Per provider, in report order: recipients accepted so far.
    pub accepted: Vec<u64>,
    /// Per provider: throttling and other 4xx replies so far.
    pub deferred: Vec<u64>,
    pub engine_cpu_s: f64,
    pub engine_rss_bytes: u64,
    /// Anonymous memory only (the heap), without the queue's file-backed mapped pages.
    pub engine_rss_anon_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Latency {
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct RunReport {
    pub scenario: String,
    pub recipients: u64,
    pub valid: u64,
    pub template_bytes: usize,
    pub domains: usize,
    pub shards: usize,
    /// From the batch landing in `incoming/` to the last recipient's final outcome.
    pub elapsed_s: f64,
    pub delivered: u64,
    pub bounced: u64,
    pub expired: u64,
    pub rejected: u64,
    pub transient_failures: u64,
    /// Distinct recipients in the sink's receipt log, and receipts beyond one per recipient.
    pub received_unique: u64,
    pub duplicates: u64,
    /// Valid recipients neither received nor bounced/expired.
    pub missing: u64,
    pub delivered_per_s: f64,
    pub first_delivery_ms: f64,
    /// From the batch landing to each recipient's acceptance at the sink.
    pub latency: Latency,
    /// Engine CPU time (user + system); in-process runs include the simulated providers.
    pub engine_cpu_s: f64,
    pub engine_cpu_us_per_message: f64,
    pub engine_peak_rss_bytes: u64,
    /// The largest anonymous RSS sampled (every 250 ms): memory the engine allocated, not
    /// the page cache of its queue files.
    pub engine_peak_rss_anon_bytes: u64,
    pub engine_in_process: bool,
    /// Questions the simulated DNS server answered (MX, A, AAAA).
    pub dns_queries: u64,
    pub timed_out: bool,
    pub providers: Vec<ProviderReport>,
    /// Later campaigns (`[[arrival]]`) and gateway mail (`[gateway]`), if the scenario has
    /// them.
    pub arrivals: Vec<crate::arrivals::ArrivalReport>,
    pub gateway: Option<crate::arrivals::GatewayReport>,
    pub samples: Vec<Sample>,
}

impl RunReport {
    /// Every valid recipient has its outcome, delivered ones exactly as often as the receipts
    /// say, nothing missing.
    pub fn complete(&self) -> bool {
        !self.timed_out && self.missing == 0 && self.delivered == self.received_unique
    }
}

/// The engine being measured.
enum Running {
    InProcess(spate::engine::Engine),
    Child(std::process::Child),
}

impl Running {
    fn pid(&self) -> String {
        match self {
            Running::InProcess(_) => "self".into(),
            Running::Child(c) => c.id().to_string(),
        }
    }

    /// CPU seconds, RSS and anonymous RSS in bytes.
    fn usage(&self) -> (f64, u64, u64) {
        let pid = self.pid();
        let cpu = match self {
            Running::InProcess(_) => self_cpu_s(),
            Running::Child(_) => proc_cpu_s(&pid),
        };
        (
            cpu,
            proc_status_kb(&pid, "VmRSS") * 1024,
            proc_status_kb(&pid, "RssAnon") * 1024,
        )
    }

    fn peak_rss(&self) -> u64 {
        proc_status_kb(&self.pid(), "VmHWM") * 1024
    }

    fn exited(&mut self) -> bool {
        match self {
            Running::InProcess(e) => e.has_exited(),
            Running::Child(c) => matches!(c.try_wait(), Ok(Some(_))),
        }
    }

    fn stop(self) -> Result<(), String> {
        match self {
            Running::InProcess(e) => {
                e.request_stop();
                e.wait().map_err(|e| e.to_string())
            }
            Running::Child(mut c) => {
                // SAFETY: kill(2) on our own child's pid, which we have not reaped yet.
                unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
                let deadline = Instant::now() + Duration::from_secs(60);
                loop {
                    match c.try_wait() {
                        Ok(Some(s)) if s.success() => return Ok(()),
                        Ok(Some(s)) => return Err(format!("engine exited with {s}")),
                        Ok(None) if Instant::now() < deadline => {
                            std::thread::sleep(Duration::from_millis(20))
                        }
                        _ => {
                            let _ = c.kill();
                            let _ = c.wait();
                            return Err("engine did not stop within 60 s of SIGTERM".into());
                        }
                    }
                }
            }
        }
    }
}

fn self_cpu_s() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// utime + stime of a process, from /proc/PID/stat.
pub fn proc_cpu_s(pid: &str) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name (which may hold spaces) start at state (field 3).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / hz
}

pub fn proc_status_kb(pid: &str, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Counts delivery-log events as the log grows.
struct LogFollower {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
    counts: HashMap<String, u64>,
}

impl LogFollower {
    fn poll(&mut self) {
        let Ok(mut f) = std::fs::File::open(&self.path) else {
            return;
        };
        if f.seek(std::io::SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = Vec::new();
        if f.read_to_end(&mut buf).is_err() {
            return;
        }
        self.offset += buf.len() as u64;
        self.partial.extend_from_slice(&buf);
        let Some(last_nl) = memchr::memrchr(b'\n', &self.partial) else {
            return;
        };
        for line in self.partial[..last_nl].split(|&b| b == b'\n') {
            let Some(at) = memchr::memmem::find(line, b"\"type\":\"") else {
                continue;
            };
            let rest = &line[at + 8..];
            if let Some(end) = memchr::memchr(b'"', rest) {
                let t = String::from_utf8_lossy(&rest[..end]).into_owned();
                *self.counts.entry(t).or_insert(0) += 1;
            }
        }
        self.partial.drain(..=last_nl);
    }

    fn count(&self, t: &str) -> u64 {
        self.counts.get(t).copied().unwrap_or(0)
    }
}

fn io(what: &Path, e: impl std::fmt::Display) -> String {
    format!("{}: {e}", what.display())
}

/// Runs `options.scenario` and reports; the sink and DNS responder are stopped on return.
pub fn run(options: RunOptions, out: &mut dyn Write) -> Result<RunReport, String> {
    let s = &options.scenario;
    let base = &options.base;
    std::fs::create_dir_all(base).map_err(|e| io(base, e))?;
    let receipts = base.join("receipts.log");
    let _ = std::fs::remove_file(&receipts);
    let profile = s.sink_profile(Some(&receipts));
    let zone = Zone::for_sink(&profile);
    let sink = Sink::start(profile)?;
    let dns = DnsResponder::start("127.0.0.1:0".parse().expect("address"), zone)?;
    let port = options.external.as_ref().map_or(sink.port, |e| e.port);
    let mut config_text = s.engine_config(base, dns.addr, port);
    // Gateway mail: a loopback listener relaying for loopback clients, on a free port.
    let gateway_addr = match &s.gateway {
        Some(_) => {
            let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            let addr = l.local_addr().map_err(|e| e.to_string())?;
            drop(l);
            config_text.push_str(&format!(
                "\n[[listeners]]\nlisten = \"{addr}\"\ntls = \"none\"\nrelay_networks = [\"127.0.0.0/8\"]\n"
            ));
            Some(addr)
        }
        None => None,
    };
    let config_path = base.join("spate.toml");
    std::fs::write(&config_path, &config_text).map_err(|e| io(&config_path, e))?;
    let config = spate::config::Config::parse(&config_text, &config_path.display().to_string())
        .map_err(|e| e.0)?;
    stays_on_loopback(&config)?;
    let shards = config.engine.shards;
    let log_path = config.log.dir.join(spate::delivery_log::LOG_FILE_NAME);
    let tmp = config.spool.dir.join("tmp");
    let incoming = config.spool.dir.join("incoming");
    for d in [&tmp, &incoming] {
        std::fs::create_dir_all(d).map_err(|e| io(d, e))?;
    }
    let campaign = s.campaign();
    let staged = tmp.join(format!("{}.jsonl", s.name));
    let valid = campaign
        .write(&staged, &s.name)
        .map_err(|e| io(&staged, e))?;
    let mut expected = vec![0u64; s.providers.len()];
    for i in (0..s.recipients).filter(|&i| !campaign.is_bad(i)) {
        expected[campaign.domains[campaign.domain_of(i)].1] += 1;
    }

    let mut engine = match &options.engine {
        EngineMode::InProcess => Running::InProcess(
            spate::engine::start(config, Some(config_path.clone())).map_err(|e| e.to_string())?,
        ),
        EngineMode::Binary(bin) => {
            let stderr = std::fs::File::create(base.join("engine.stderr"))
                .map_err(|e| io(&base.join("engine.stderr"), e))?;
            Running::Child(
                std::process::Command::new(bin)
                    .arg("run")
                    .arg("-c")
                    .arg(&config_path)
                    .stdout(std::process::Stdio::null())
                    .stderr(stderr)
                    .spawn()
                    .map_err(|e| io(bin, e))?,
            )
        }
    };
    // Ready: the engine has claimed its data directory and created its spool and log.
    let ready_by = Instant::now() + Duration::from_secs(30);
    while !(log_path.exists() && spate::engine::engine_running(&base.join("data"))) {
        if engine.exited() || Instant::now() > ready_by {
            let err = std::fs::read_to_string(base.join("engine.stderr")).unwrap_or_default();
            let _ = engine.stop();
            return Err(format!("the engine did not start: {}", err.trim()));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    if let Running::InProcess(e) = &engine {
        while !e.is_ready() && !e.has_exited() {
            std::thread::sleep(Duration::from_millis(2));
        }
    } else {
        // The child's shards get the same head start the in-process engine is given.
        std::thread::sleep(Duration::from_millis(200));
    }

    let (cpu0, _, _) = engine.usage();
    let landed_us = unix_us();
    let started = Instant::now();
    if let Err(e) = std::fs::rename(&staged, incoming.join(staged.file_name().expect("name"))) {
        let _ = engine.stop();
        return Err(io(&incoming, e));
    }

    let gateway = match (&s.gateway, gateway_addr) {
        (Some(g), Some(addr)) => Some(crate::arrivals::start_gateway(g.clone(), addr)),
        _ => None,
    };
    let mut arrivals: Vec<(crate::arrivals::Arrival, u64)> = Vec::new();
    let mut follower = LogFollower {
        path: log_path,
        offset: 0,
        partial: Vec::new(),
        counts: HashMap::new(),
    };
    let mut samples = Vec::new();
    let mut shown_lines = 0;
    // An engine in this process writes its notes to our stderr: on a live display they are
    // caught and drawn above it instead of through it.
    let capture = match (&engine, options.live) {
        (Running::InProcess(_), true) => StderrCapture::start(),
        _ => None,
    };
    let mut last_line = Instant::now();
    let timed_out = loop {
        std::thread::sleep(SAMPLE_EVERY);
        follower.poll();
        let (cpu, rss, anon) = engine.usage();
        let sample = Sample {
            t_s: started.elapsed().as_secs_f64(),
            accepted: sink
                .stats
                .iter()
                .map(|(_, p)| ProviderStats::get(&p.accepted))
                .collect(),
            deferred: sink
                .stats
                .iter()
                .map(|(_, p)| ProviderStats::get(&p.throttled) + ProviderStats::get(&p.deferred))
                .collect(),
            engine_cpu_s: cpu - cpu0,
            engine_rss_bytes: rss,
            engine_rss_anon_bytes: anon,
        };
        let now_s = started.elapsed().as_secs_f64();
        crate::arrivals::drop_due(&s.arrivals, now_s, (&tmp, &incoming), &mut arrivals)?;
        // Later batches and gateway mail count once all of them are in.
        let gateway_done = gateway.as_ref().is_none_or(|(h, _)| h.is_finished());
        let extra = if arrivals.len() == s.arrivals.len() && gateway_done {
            let sent = gateway.as_ref().map_or(0, |(_, sent)| {
                sent.lock().expect("gateway log").len() as u64
            });
            arrivals.iter().map(|(a, _)| a.recipients).sum::<u64>() + sent
        } else {
            u64::MAX / 2
        };
        let finals = ["Delivery", "Bounce", "Expiration"]
            .iter()
            .map(|t| follower.count(t))
            .sum::<u64>()
            .saturating_sub(extra.min(u64::MAX / 2));
        if options.live {
            let notes = capture
                .as_ref()
                .map(StderrCapture::take)
                .unwrap_or_default();
            shown_lines = draw(
                out,
                &sink,
                &expected,
                &sample,
                finals,
                valid,
                shown_lines,
                &notes,
            );
        } else if last_line.elapsed() >= Duration::from_secs(5) {
            last_line = Instant::now();
            let _ = writeln!(out, "  {:>6.1} s  final {finals} / {valid}", sample.t_s);
        }
        samples.push(sample);
        if finals >= valid {
            break false;
        }
        if engine.exited() {
            let _ = engine.stop();
            return Err("the engine stopped during the run".into());
        }
        if started.elapsed() > options.timeout {
            break true;
        }
    };
    if let Some(c) = capture {
        for n in c.finish() {
            let _ = writeln!(out, "\x1b[2K{n}");
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (cpu, _, _) = engine.usage();
    let peak_rss = engine.peak_rss();
    let peak_anon = samples
        .iter()
        .map(|s: &Sample| s.engine_rss_anon_bytes)
        .max()
        .unwrap_or(0);
    let in_process = matches!(engine, Running::InProcess(_));
    engine.stop()?;
    follower.poll();
    let providers: Vec<ProviderReport> = s
        .providers
        .iter()
        .zip(&sink.stats)
        .zip(&expected)
        .map(|((p, (_, st)), &recipients)| ProviderReport {
            name: p.name.clone(),
            domains: p.domains.len(),
            recipients,
            accepted: ProviderStats::get(&st.accepted),
            throttled: ProviderStats::get(&st.throttled),
            deferred: ProviderStats::get(&st.deferred),
            rejected: ProviderStats::get(&st.rejected),
            connections: ProviderStats::get(&st.connections),
            connections_refused: ProviderStats::get(&st.connections_refused),
            dropped: ProviderStats::get(&st.dropped),
            sending_ips: {
                let by_ip = st.by_ip();
                if by_ip.len() > 1 {
                    by_ip
                        .into_iter()
                        .map(|(ip, s)| IpReport {
                            ip: ip.to_string(),
                            accepted: s.accepted,
                            throttled: s.throttled,
                        })
                        .collect()
                } else {
                    Vec::new()
                }
            },
        })
        .collect();
    sink.stop()?;
    let dns_queries = dns.queries.load(std::sync::atomic::Ordering::Relaxed);
    drop(dns);

    let (unique, duplicates, mut latencies) = match &options.external {
        Some(e) => ((e.received)(), 0, Vec::new()),
        None => read_receipts(&receipts, landed_us)?,
    };
    latencies.sort_unstable();
    let pct = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .map_or(0.0, |&us| us as f64 / 1000.0)
    };
    let sent = gateway.map(|(h, sent)| {
        let _ = h.join();
        std::mem::take(&mut *sent.lock().expect("gateway log"))
    });
    let extras = arrivals.iter().map(|(a, _)| a.recipients).sum::<u64>()
        + sent.as_ref().map_or(0, |s| s.len() as u64);
    let (arrival_reports, gateway_report) = if arrivals.is_empty() && sent.is_none() {
        (Vec::new(), None)
    } else {
        crate::arrivals::analyse(&follower.path, &arrivals, sent.as_deref())?
    };
    let delivered = follower.count("Delivery");
    let bounced = follower.count("Bounce");
    let expired = follower.count("Expiration");
    let engine_cpu_s = cpu - cpu0;
    Ok(RunReport {
        scenario: s.name.clone(),
        recipients: s.recipients,
        valid,
        template_bytes: s.template_bytes,
        domains: s.domain_count(),
        shards,
        elapsed_s: elapsed,
        delivered,
        bounced,
        expired,
        rejected: follower.count("Rejected"),
        transient_failures: follower.count("TransientFailure"),
        received_unique: unique,
        duplicates,
        missing: (valid + extras).saturating_sub(unique + bounced + expired),
        delivered_per_s: delivered as f64 / elapsed.max(1e-9),
        first_delivery_ms: latencies.first().map_or(0.0, |&us| us as f64 / 1000.0),
        latency: Latency {
            p50_ms: pct(0.5),
            p90_ms: pct(0.9),
            p99_ms: pct(0.99),
            max_ms: latencies.last().map_or(0.0, |&us| us as f64 / 1000.0),
        },
        engine_cpu_s,
        engine_cpu_us_per_message: engine_cpu_s * 1e6 / delivered.max(1) as f64,
        engine_peak_rss_bytes: peak_rss,
        engine_peak_rss_anon_bytes: peak_anon,
        engine_in_process: in_process,
        dns_queries,
        timed_out,
        providers,
        arrivals: arrival_reports,
        gateway: gateway_report,
        samples,
    })
}

/// Distinct recipients, receipts beyond the first per recipient, and each first receipt's
/// microseconds after `since_us`.
pub fn read_receipts(path: &Path, since_us: u64) -> Result<(u64, u64, Vec<u64>), String> {
    let text = std::fs::read(path).map_err(|e| io(path, e))?;
    let mut seen: HashMap<&[u8], ()> = HashMap::new();
    let mut latencies = Vec::new();
    let mut duplicates = 0;
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let mut f = line.splitn(3, |&b| b == b' ');
        let (Some(us), Some(_provider), Some(rcpt)) = (f.next(), f.next(), f.next()) else {
            return Err(format!("{}: malformed receipt line", path.display()));
        };
        if seen.insert(rcpt, ()).is_some() {
            duplicates += 1;
            continue;
        }
        let us: u64 = std::str::from_utf8(us)
            .ok()
            .and_then(|u| u.parse().ok())
            .ok_or_else(|| format!("{}: malformed receipt time", path.display()))?;
        latencies.push(us.saturating_sub(since_us));
    }
    Ok((seen.len() as u64, duplicates, latencies))
}

/// Redraws the live progress display; returns how many lines it occupies.
#[allow(clippy::too_many_arguments)]
fn draw(
    out: &mut dyn Write,
    sink: &Sink,
    expected: &[u64],
    sample: &Sample,
    finals: u64,
    valid: u64,
    shown: usize,
    notes: &[String],
) -> usize {
    let mut text = String::new();
    if shown > 0 {
        text.push_str(&format!("\x1b[{shown}A"));
    }
    // The engine's notes (throttle changes) go above the display, which moves down.
    for n in notes {
        text.push_str(&format!("\x1b[2K{n}\n"));
    }
    let bar = |done: u64, of: u64| {
        let width = 30;
        let filled = (done.min(of) as usize * width)
            .checked_div(of as usize)
            .unwrap_or(width);
        format!("{}{}", "#".repeat(filled), ".".repeat(width - filled))
    };
    text.push_str(&format!(
        "\x1b[2K  {:>6.1} s  [{}] {finals:>8} / {valid} final\n",
        sample.t_s,
        bar(finals, valid)
    ));
    for (i, (name, _)) in sink.stats.iter().enumerate() {
        text.push_str(&format!(
            "\x1b[2K  {name:<10} [{}] {:>8} / {:<8} 4xx {:>6}\n",
            bar(sample.accepted[i], expected[i]),
            sample.accepted[i],
            expected[i],
            sample.deferred[i]
        ));
    }
    let _ = out.write_all(text.as_bytes());
    let _ = out.flush();
    1 + sink.stats.len()
}

impl RunReport {
    /// The report as markdown.
    pub fn markdown(&self) -> String {
        let mut m = String::new();
        let mb = |b: u64| b as f64 / (1 << 20) as f64;
        m.push_str(&format!(
            "## {}: {} recipients ({} valid), {} B template, {} domains, {} shards\n\n",
            self.scenario,
            self.recipients,
            self.valid,
            self.template_bytes,
            self.domains,
            self.shards
        ));
        m.push_str("| figure | value |\n| --- | --- |\n");
        let rows = [
            (
                "elapsed (batch landed to last final outcome)",
                format!("{:.2} s", self.elapsed_s),
            ),
            ("delivered", format!("{}", self.delivered)),
            (
                "delivered per second",
                format!("{:.0}", self.delivered_per_s),
            ),
            (
                "bounced / expired / rejected at intake",
                format!("{} / {} / {}", self.bounced, self.expired, self.rejected),
            ),
            (
                "transient failures (retried)",
                format!("{}", self.transient_failures),
            ),
            (
                "first delivery after landing",
                format!("{:.1} ms", self.first_delivery_ms),
            ),
            (
                "latency to acceptance p50 / p90 / p99 / max",
                format!(
                    "{:.0} / {:.0} / {:.0} / {:.0} ms",
                    self.latency.p50_ms,
                    self.latency.p90_ms,
                    self.latency.p99_ms,
                    self.latency.max_ms
                ),
            ),
            (
                if self.engine_in_process {
                    "CPU (engine and simulated ISPs, one process)"
                } else {
                    "engine CPU"
                },
                format!(
                    "{:.2} s, {:.1} µs per delivered message",
                    self.engine_cpu_s, self.engine_cpu_us_per_message
                ),
            ),
            (
                "peak RSS (anonymous, sampled every 250 ms)",
                format!(
                    "{:.1} MiB ({:.1} MiB)",
                    mb(self.engine_peak_rss_bytes),
                    mb(self.engine_peak_rss_anon_bytes)
                ),
            ),
            (
                "receipts: distinct / duplicates / missing",
                format!(
                    "{} / {} / {}",
                    self.received_unique, self.duplicates, self.missing
                ),
            ),
        ];
        for (k, v) in rows {
            m.push_str(&format!("| {k} | {v} |\n"));
        }
        m.push_str("\n| provider | domains | recipients | accepted | throttled | other 4xx | 5xx | connections | refused |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for p in &self.providers {
            m.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |\n",
                p.name,
                p.domains,
                p.recipients,
                p.accepted,
                p.throttled,
                p.deferred,
                p.rejected,
                p.connections,
                p.connections_refused
            ));
        }
        for p in self.providers.iter().filter(|p| !p.sending_ips.is_empty()) {
            m.push_str(&format!(
                "\n| {} from | accepted | throttled |\n| --- | ---: | ---: |\n",
                p.name
            ));
            for s in &p.sending_ips {
                m.push_str(&format!(
                    "| {} | {} | {} |\n",
                    s.ip, s.accepted, s.throttled
                ));
            }
        }
        m.push_str(&crate::arrivals::markdown(
            &self.arrivals,
            self.gateway.as_ref(),
        ));
        m.push_str(if self.complete() {
            "\nEvery valid recipient reached its final outcome; the receipt log shows each delivered one exactly as often as the delivery log.\n"
        } else {
            "\nINCOMPLETE: see missing, duplicates and timed_out.\n"
        });
        m
    }
}

/// Redirects this process's stderr into a pipe whose lines a thread collects, until
/// `finish` puts stderr back.
struct StderrCapture {
    saved: libc::c_int,
    lines: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl StderrCapture {
    fn start() -> Option<StderrCapture> {
        use std::io::BufRead;
        use std::os::unix::io::FromRawFd;
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: pipe fills the two descriptors; dup/dup2 act on descriptors we own or on
        // fd 2, which this process owns; each is checked.
        unsafe {
            if libc::pipe(fds.as_mut_ptr()) != 0 {
                return None;
            }
            let saved = libc::dup(2);
            if saved < 0 || libc::dup2(fds[1], 2) < 0 {
                libc::close(fds[0]);
                libc::close(fds[1]);
                if saved >= 0 {
                    libc::close(saved);
                }
                return None;
            }
            libc::close(fds[1]);
            let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = std::sync::Arc::clone(&lines);
            let pipe = std::fs::File::from_raw_fd(fds[0]);
            let reader = std::thread::spawn(move || {
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut l) = sink.lock() {
                        l.push(line);
                    }
                }
            });
            Some(StderrCapture {
                saved,
                lines,
                reader: Some(reader),
            })
        }
    }

    fn take(&self) -> Vec<String> {
        self.lines
            .lock()
            .map(|mut l| std::mem::take(&mut *l))
            .unwrap_or_default()
    }

    /// Puts stderr back; returns what was caught since the last `take`.
    fn finish(mut self) -> Vec<String> {
        self.restore();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        self.take()
    }

    fn restore(&mut self) {
        if self.saved >= 0 {
            // SAFETY: puts the saved descriptor back on fd 2 (closing the pipe's write end,
            // so the reader thread ends) and closes the saved copy.
            unsafe {
                libc::dup2(self.saved, 2);
                libc::close(self.saved);
            }
            self.saved = -1;
        }
    }
}

impl Drop for StderrCapture {
    fn drop(&mut self) {
        self.restore();
    }
}

/// Refuses an engine configuration that could send anything off this machine: every
/// nameserver and every static route must be a loopback address (extra keys given to a
/// scenario could add either).
fn stays_on_loopback(config: &spate::config::Config) -> Result<(), String> {
    if let Some(ns) = config
        .dns
        .nameservers
        .iter()
        .find(|a| !a.ip().is_loopback())
    {
        return Err(format!("nameserver {ns} is not a loopback address"));
    }
    for r in &config.routes {
        for h in &r.hosts {
            let (host, _) = spate::delivery::scope::host_port(h, config.smtp.port);
            let ip: Option<std::net::IpAddr> = host.trim_matches(['[', ']']).parse().ok();
            if !ip.is_some_and(|ip| ip.is_loopback()) {
                return Err(format!(
                    "route {} -> {h} is not a loopback address",
                    r.domain
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> spate::config::Config {
        let text =
            format!("[dns]\nnameservers = [\"127.0.0.1:5353\"]\n[smtp]\nport = 2525\n{extra}");
        spate::config::Config::parse(&text, "t").unwrap()
    }

    #[test]
    fn an_engine_configuration_that_could_leave_this_machine_is_refused() {
        assert!(stays_on_loopback(&config("")).is_ok());
        let ok = "[[routes]]\ndomain = \"a.test\"\nhosts = [\"127.0.0.9:25\", \"[::1]:25\"]\n";
        assert!(stays_on_loopback(&config(ok)).is_ok());
        let far = "[[routes]]\ndomain = \"a.test\"\nhosts = [\"192.0.2.1:25\"]\n";
        let e = stays_on_loopback(&config(far)).unwrap_err();
        assert!(e.contains("192.0.2.1"), "{e}");
        let named = "[[routes]]\ndomain = \"a.test\"\nhosts = [\"mx.example.com\"]\n";
        assert!(
            stays_on_loopback(&config(named)).is_err(),
            "a name could resolve anywhere"
        );
        let text = "[dns]\nnameservers = [\"10.0.0.53:53\"]\n";
        let c = spate::config::Config::parse(text, "t").unwrap();
        assert!(stays_on_loopback(&c).unwrap_err().contains("nameserver"));
    }
}
