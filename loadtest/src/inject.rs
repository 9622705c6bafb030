//! `spate-loadtest inject`: the SMTP submission gateway's figures, all in one run, every
//! address on loopback:
//!
//! 1. **Postfix, accept only**: a private Postfix instance's smtpd on the same disk, every
//!    message put on hold as it is accepted (`check_client_access static:HOLD`), so its queue
//!    manager never delivers; Postfix's `smtp-source` as the client.
//! 2. **Spate, accept only**: the gateway with delivery paused, `smtp-source` as the client
//!    (the same sessions, messages and size).
//! 3. **Spate, accept only, this harness's client**: the same in plaintext, as a check of
//!    the client written here against `smtp-source` (same lockstep dialogue: one command,
//!    one reply).
//! 4. **Spate, accept only, STARTTLS + AUTH PLAIN** with this harness's client (smtp-source
//!    has no TLS): one handshake and one password check per session.
//! 5. **Spate, end to end, submission**: `smtp-source` in, Postfix's `smtp-sink` out; until
//!    the sink has every message.
//! 6. **Spate, end to end, spool**: the same messages as one campaign batch dropped in the
//!    spool, to the same `smtp-sink`; the figure the gateway is held to (60%).
//!
//! Each row: messages, seconds, messages per second, and CPU per message: the engine's own
//! (Spate rows), the client's (smtp-source, or this harness's threads), and the whole
//! machine's (busy time from `/proc/stat`, everything included: the only figure that covers
//! Postfix's many processes, so the one to compare). Each Spate row starts a fresh engine
//! (its own data directory) and stops it by its process id.

use crate::fresh;
use serde::Serialize;
use spate_sim::postfix::{Postfix, SmtpSinks, SMTP_SOURCE};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What `inject` is asked for.
pub struct InjectOptions {
    pub messages: u64,
    pub size: usize,
    pub sessions: u32,
    pub shards: usize,
    pub out: PathBuf,
    pub bin: PathBuf,
    pub postfix: bool,
    pub timeout: Duration,
}

#[derive(Debug, Serialize)]
pub struct Row {
    pub what: String,
    pub messages: u64,
    pub elapsed_s: f64,
    pub per_s: f64,
    /// The engine's CPU (user + system) per message, in µs; none for Postfix.
    pub cpu_us_per_message: Option<f64>,
    /// The client's CPU per message, in µs.
    pub client_cpu_us_per_message: f64,
    /// The whole machine's busy CPU per message, in µs (every process, the kernel's work
    /// included).
    pub machine_cpu_us_per_message: f64,
}

/// CPU seconds used so far: the machine's busy time, this process's children's (smtp-source)
/// and this process's own (the harness client's threads).
#[derive(Clone, Copy)]
struct Cpu {
    machine_s: f64,
    client_s: f64,
}

impl Cpu {
    fn now() -> Cpu {
        // SAFETY: sysconf has no preconditions; getrusage fills the structs we pass.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let f: Vec<f64> = stat
            .lines()
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
        let busy = f.iter().sum::<f64>() - f.get(3).unwrap_or(&0.0) - f.get(4).unwrap_or(&0.0);
        let rusage = |who| {
            let mut u: libc::rusage = unsafe { std::mem::zeroed() };
            unsafe { libc::getrusage(who, &mut u) };
            let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
            tv(u.ru_utime) + tv(u.ru_stime)
        };
        Cpu {
            machine_s: busy / hz,
            client_s: rusage(libc::RUSAGE_CHILDREN) + rusage(libc::RUSAGE_SELF),
        }
    }
}

const PASSWORD: &str = "harness-password";
const GATEWAY_USER: &str = "inject";

pub fn cmd_inject(o: &InjectOptions) -> Result<(), String> {
    if !Path::new(SMTP_SOURCE).exists() {
        return Err(format!(
            "{SMTP_SOURCE} not found (Debian's postfix package has it)"
        ));
    }
    let out = fresh(&o.out)?;
    let mut rows = Vec::new();
    println!(
        "{:<46} {:>7} {:>7} {:>7}  CPU µs per message: {:>6} {:>6} {:>7}",
        "", "msgs", "s", "msg/s", "engine", "client", "machine"
    );
    let mut report = |row: Row| {
        println!(
            "{:<46} {:>7} {:>7.2} {:>7.0}  {:>26} {:>6.0} {:>7.0}",
            row.what,
            row.messages,
            row.elapsed_s,
            row.per_s,
            row.cpu_us_per_message
                .map_or("-".to_string(), |c| format!("{c:.0}")),
            row.client_cpu_us_per_message,
            row.machine_cpu_us_per_message,
        );
        rows.push(row);
    };
    if o.postfix {
        report(postfix_accept(o, &fresh(&out.join("postfix"))?)?);
    }
    report(spate_accept(
        o,
        &fresh(&out.join("spate-smtp-source"))?,
        Client::SmtpSource,
    )?);
    report(spate_accept(
        o,
        &fresh(&out.join("spate-client"))?,
        Client::Plain,
    )?);
    report(spate_accept(
        o,
        &fresh(&out.join("spate-tls-auth"))?,
        Client::TlsAuth,
    )?);
    let sink_dir = fresh(&out.join("smtp-sink"))?;
    report(spate_end_to_end(
        o,
        &fresh(&out.join("spate-e2e-submission"))?,
        &sink_dir,
        false,
    )?);
    report(spate_end_to_end(
        o,
        &fresh(&out.join("spate-e2e-spool"))?,
        &sink_dir,
        true,
    )?);
    let json = serde_json::to_string_pretty(&rows).map_err(|e| e.to_string())?;
    let path = out.join("inject.json");
    std::fs::write(&path, json).map_err(|e| format!("{}: {e}", path.display()))?;
    let rate = |what: &str| {
        rows.iter()
            .find(|r| r.what.starts_with(what))
            .map(|r| r.per_s)
    };
    if let (Some(p), Some(s)) = (rate("postfix"), rate("spate accept, smtp-source")) {
        println!("spate / postfix accepted: {:.1}x", s / p);
    }
    if let (Some(g), Some(s)) = (
        rate("spate end to end, submission"),
        rate("spate end to end, spool"),
    ) {
        println!(
            "submission end to end / spool end to end: {:.0}%",
            100.0 * g / s
        );
    }
    println!("rows in {}", path.display());
    Ok(())
}

/// A free port on 127.0.0.1.
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn wait_listening(port: u16, within: Duration) -> Result<(), String> {
    let until = Instant::now() + within;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > until {
            return Err(format!("nothing listens on 127.0.0.1:{port}"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// `smtp-source` with the run's sessions, messages and size, each session keeping its
/// connection (-d); the elapsed time.
fn smtp_source(o: &InjectOptions, port: u16) -> Result<Duration, String> {
    let started = Instant::now();
    let status = Command::new(SMTP_SOURCE)
        .args([
            "-d",
            "-s",
            &o.sessions.to_string(),
            "-m",
            &o.messages.to_string(),
        ])
        .args(["-l", &o.size.to_string()])
        .args(["-f", "sender@acme.example", "-t", "rcpt@one.test"])
        .arg(format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .status()
        .map_err(|e| format!("{SMTP_SOURCE}: {e}"))?;
    if !status.success() {
        return Err(format!("{SMTP_SOURCE} failed: {status}"));
    }
    Ok(started.elapsed())
}

fn row(what: &str, messages: u64, elapsed: Duration, cpu_s: Option<f64>, since: Cpu) -> Row {
    let s = elapsed.as_secs_f64();
    let now = Cpu::now();
    let per = |seconds: f64| seconds * 1e6 / messages as f64;
    Row {
        what: what.to_string(),
        messages,
        elapsed_s: s,
        per_s: messages as f64 / s,
        cpu_us_per_message: cpu_s.map(per),
        client_cpu_us_per_message: per(now.client_s - since.client_s),
        machine_cpu_us_per_message: per(now.machine_s - since.machine_s),
    }
}

fn postfix_accept(o: &InjectOptions, dir: &Path) -> Result<Row, String> {
    let postfix = Postfix::start(
        dir,
        &format!(
            // one.test has a transport (no one ever uses it: every message is held).
            "smtpd_client_restrictions = check_client_access static:HOLD\n\
             transport_maps = inline:{{ one.test=smtp:[127.0.0.1]:9 }}\n{}",
            crate::postfix::TUNING
        ),
    )
    .map_err(|e| e.to_string())?;
    let cpu = Cpu::now();
    let elapsed = smtp_source(o, postfix.port)?;
    let row = row(
        "postfix accept (smtpd, held)",
        o.messages,
        elapsed,
        None,
        cpu,
    );
    // Every message is on hold, none anywhere else.
    let held = count_files(&dir.join("spool/hold"));
    if held != o.messages {
        return Err(format!(
            "postfix: {held} of {} messages on hold; see {}",
            o.messages,
            dir.display()
        ));
    }
    drop(postfix);
    Ok(row)
}

fn count_files(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(_) => 1,
            Err(_) => 0,
        })
        .sum()
}

/// A running engine, stopped (SIGTERM, by its pid) when dropped.
struct Engine {
    child: Child,
    dir: PathBuf,
}

impl Engine {
    fn start(o: &InjectOptions, dir: &Path, extra: &str) -> Result<Engine, String> {
        let config = format!(
            "[engine]\nshards = {}\ndata_dir = \"{d}/data\"\n[spool]\ndir = \"{d}/spool\"\n[log]\ndir = \"{d}/log\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n{admin}{extra}",
            o.shards,
            admin = if extra.contains("[admin]") { "" } else { "[admin]\nlisten = \"127.0.0.1:0\"\n" },
            d = dir.display()
        );
        let path = dir.join("spate.toml");
        std::fs::write(&path, config).map_err(|e| format!("{}: {e}", path.display()))?;
        let log = std::fs::File::create(dir.join("engine.log")).map_err(|e| e.to_string())?;
        let child = Command::new(&o.bin)
            .args(["run", "-c"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("{}: {e}", o.bin.display()))?;
        Ok(Engine {
            child,
            dir: dir.to_path_buf(),
        })
    }

    /// User plus system CPU seconds so far.
    fn cpu_s(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name (which may hold spaces) in its parentheses.
        let after = stat.rsplit_once(") ").map_or("", |(_, r)| r);
        let f: Vec<&str> = after.split(' ').collect();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) / hz
    }

    fn stop(mut self) -> Result<(), String> {
        // SAFETY: signalling the child we started, by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let status = self.child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!(
                "the engine exited with {status}; see {}",
                self.dir.join("engine.log").display()
            ));
        }
        Ok(())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Client {
    SmtpSource,
    Plain,
    TlsAuth,
}

fn spate_accept(o: &InjectOptions, dir: &Path, client: Client) -> Result<Row, String> {
    let port = free_port()?;
    let tls = if client == Client::TlsAuth {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])
            .map_err(|e| e.to_string())?;
        std::fs::write(dir.join("cert.pem"), cert.cert.pem()).map_err(|e| e.to_string())?;
        std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem())
            .map_err(|e| e.to_string())?;
        let hash = spate::gateway::password::hash(PASSWORD)?;
        format!(
            "tls = \"starttls\"\ncert = \"{d}/cert.pem\"\nkey = \"{d}/key.pem\"\n[[users]]\nname = \"{GATEWAY_USER}\"\npassword_hash = \"{hash}\"\nallowed_from = [\"@acme.example\"]\n",
            d = dir.display()
        )
    } else {
        "tls = \"none\"\nrelay_networks = [\"127.0.0.1\"]\n".to_string()
    };
    let extra = format!(
        "[delivery]\npaused = true\n[[listeners]]\nlisten = \"127.0.0.1:{port}\"\nmax_connections = {}\nmax_connections_per_ip = {}\n{tls}",
        o.sessions + 10,
        o.sessions + 10
    );
    let engine = Engine::start(o, dir, &extra)?;
    wait_listening(port, Duration::from_secs(20))?;
    let cpu0 = engine.cpu_s();
    let since = Cpu::now();
    let (elapsed, what) = match client {
        Client::SmtpSource => (smtp_source(o, port)?, "spate accept, smtp-source"),
        Client::Plain => (
            own_client(o, port, false)?,
            "spate accept, harness client (check)",
        ),
        Client::TlsAuth => (
            own_client(o, port, true)?,
            "spate accept, harness client, STARTTLS+AUTH",
        ),
    };
    let cpu = engine.cpu_s() - cpu0;
    let row = row(what, o.messages, elapsed, Some(cpu), since);
    engine.stop_checked(o.messages, "Reception")?;
    Ok(row)
}

impl Engine {
    /// Stops the engine, then checks that `event` was logged for every message.
    fn stop_checked(self, messages: u64, event: &str) -> Result<(), String> {
        let dir = self.dir.clone();
        self.stop()?;
        let n = Engine::count_in(&dir, event);
        if n != messages {
            return Err(format!(
                "{n} {event} records for {messages} messages; see {}",
                dir.display()
            ));
        }
        Ok(())
    }

    fn count_in(dir: &Path, event: &str) -> u64 {
        let path = dir.join("log/deliveries.jsonl");
        let Ok(f) = std::fs::File::open(path) else {
            return 0;
        };
        let needle = format!("\"type\":\"{event}\"");
        BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter(|l| l.contains(&needle))
            .count() as u64
    }
}

/// The message this harness's client sends: about `size` bytes, lines of 78 octets.
fn message(size: usize) -> Vec<u8> {
    let mut m =
        b"From: <sender@acme.example>\r\nTo: <rcpt@one.test>\r\nSubject: inject\r\n\r\n".to_vec();
    while m.len() + 80 <= size {
        m.extend_from_slice(&[b'x'; 78]);
        m.extend_from_slice(b"\r\n");
    }
    m
}

/// Sessions in parallel (threads), each keeping its connection, in lockstep like
/// `smtp-source`: MAIL, RCPT, DATA, the message, each answered before the next.
fn own_client(o: &InjectOptions, port: u16, tls: bool) -> Result<Duration, String> {
    let body = Arc::new(message(o.size));
    // The engine's own lenient client configuration: the certificate is the engine's
    // self-signed one on loopback, and the figure is the cost of the handshake and the
    // encryption, not of trust.
    let tls_config = tls.then(|| spate::delivery::tls::TlsClients::new().lenient);
    let started = Instant::now();
    let per = o.messages / u64::from(o.sessions);
    let extra = o.messages % u64::from(o.sessions);
    let threads: Vec<_> = (0..u64::from(o.sessions))
        .map(|i| {
            let n = per + u64::from(i < extra);
            let (body, tls_config) = (Arc::clone(&body), tls_config.clone());
            std::thread::spawn(move || session(port, n, &body, tls_config))
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| "a client session panicked".to_string())??;
    }
    Ok(started.elapsed())
}

trait Stream: Read + Write {}
impl<T: Read + Write> Stream for T {}

/// Reads one (possibly multi-line) reply; its code.
fn reply(s: &mut dyn Stream, buf: &mut Vec<u8>) -> Result<u16, String> {
    loop {
        if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = buf.drain(..end + 2).collect();
            if line.len() >= 4 && line[3] == b' ' {
                let code = std::str::from_utf8(&line[..3])
                    .ok()
                    .and_then(|c| c.parse().ok())
                    .ok_or("a reply without a code")?;
                return Ok(code);
            }
            continue;
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the server closed the connection".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

fn expect(s: &mut dyn Stream, buf: &mut Vec<u8>, send: &[u8], code: u16) -> Result<(), String> {
    if !send.is_empty() {
        s.write_all(send).map_err(|e| e.to_string())?;
    }
    let got = reply(s, buf)?;
    if got != code {
        return Err(format!(
            "{} answered {got}, not {code}",
            String::from_utf8_lossy(send).trim_end()
        ));
    }
    Ok(())
}

fn session(
    port: u16,
    messages: u64,
    body: &[u8],
    tls: Option<Arc<rustls::ClientConfig>>,
) -> Result<(), String> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    let mut plain = tcp;
    expect(&mut plain, &mut buf, b"", 220)?;
    expect(&mut plain, &mut buf, b"EHLO harness.test\r\n", 250)?;
    let mut stream: Box<dyn Stream> = match tls {
        None => Box::new(plain),
        Some(config) => {
            expect(&mut plain, &mut buf, b"STARTTLS\r\n", 220)?;
            let name =
                rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
            let conn = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
            let mut s = rustls::StreamOwned::new(conn, plain);
            expect(&mut s, &mut buf, b"EHLO harness.test\r\n", 250)?;
            let token = base64(format!("\0{GATEWAY_USER}\0{PASSWORD}").as_bytes());
            expect(
                &mut s,
                &mut buf,
                format!("AUTH PLAIN {token}\r\n").as_bytes(),
                235,
            )?;
            Box::new(s)
        }
    };
    let s = stream.as_mut();
    for _ in 0..messages {
        expect(s, &mut buf, b"MAIL FROM:<sender@acme.example>\r\n", 250)?;
        expect(s, &mut buf, b"RCPT TO:<rcpt@one.test>\r\n", 250)?;
        expect(s, &mut buf, b"DATA\r\n", 354)?;
        s.write_all(body).map_err(|e| e.to_string())?;
        expect(s, &mut buf, b".\r\n", 250)?;
    }
    let _ = s.write_all(b"QUIT\r\n");
    Ok(())
}

/// Standard base64 with padding (RFC 4648), for AUTH PLAIN.
fn base64(input: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in input.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Spate delivering to Postfix's `smtp-sink`: the messages go in by `smtp-source`
/// (submission) or as one campaign batch in the spool; the time until the sink has them all.
fn spate_end_to_end(
    o: &InjectOptions,
    dir: &Path,
    sink_dir: &Path,
    spool: bool,
) -> Result<Row, String> {
    let sinks = SmtpSinks::start(
        &fresh(&sink_dir.join(if spool { "spool" } else { "submission" }))?,
        &["127.0.0.1".parse().map_err(|_| "loopback")?],
    )?;
    let port = free_port()?;
    let extra = format!(
        "[delivery]\nallow_private_destinations = true\n[[routes]]\ndomain = \"*.test\"\nhosts = [\"127.0.0.1:{}\"]\n[[listeners]]\nlisten = \"127.0.0.1:{port}\"\ntls = \"none\"\nrelay_networks = [\"127.0.0.1\"]\nmax_connections = {}\nmax_connections_per_ip = {}\n",
        sinks.port,
        o.sessions + 10,
        o.sessions + 10
    );
    let engine = Engine::start(o, dir, &extra)?;
    wait_listening(port, Duration::from_secs(20))?;
    let cpu0 = engine.cpu_s();
    let since = Cpu::now();
    let started = Instant::now();
    if spool {
        drop_batch(o, dir)?;
    } else {
        smtp_source(o, port)?;
    }
    let deadline = started + o.timeout;
    loop {
        let got: u64 = sinks.messages().iter().sum();
        if got >= o.messages {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the sink has {got} of {} messages after {} s; see {}",
                o.messages,
                o.timeout.as_secs(),
                dir.display()
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    let cpu = engine.cpu_s() - cpu0;
    let what = if spool {
        "spate end to end, spool (batch)"
    } else {
        "spate end to end, submission (smtp-source)"
    };
    let row = row(what, o.messages, elapsed, Some(cpu), since);
    engine.stop_checked(o.messages, "Delivery")?;
    Ok(row)
}

/// One campaign batch of the run's messages, each to its own recipient at one.test, its
/// template of the run's size, renamed into the spool's incoming/.
fn drop_batch(o: &InjectOptions, dir: &Path) -> Result<(), String> {
    let template = String::from_utf8(message(o.size))
        .map_err(|e| e.to_string())?
        .replace("To: <rcpt@one.test>", "To: {{ to }}");
    let header = serde_json::json!({
        "campaign": "inject",
        "from": "sender@acme.example",
        "template": template,
    });
    let mut batch = format!("{header}\n");
    for i in 0..o.messages {
        batch.push_str(&format!("{{\"to\":\"r{i}@one.test\"}}\n"));
    }
    let spool = dir.join("spool");
    for sub in ["tmp", "incoming"] {
        std::fs::create_dir_all(spool.join(sub)).map_err(|e| e.to_string())?;
    }
    let tmp = spool.join("tmp/inject.jsonl");
    std::fs::write(&tmp, batch).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, spool.join("incoming/inject.jsonl")).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_matches_rfc_4648() {
        assert_eq!(super::base64(b"\0app\0s3cret"), "AGFwcABzM2NyZXQ=");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
    }

    #[test]
    fn messages_are_the_size_asked_within_a_line() {
        let m = super::message(10240);
        assert!(m.len() <= 10240 && m.len() > 10240 - 80, "{}", m.len());
        assert!(m.split(|b| *b == b'\n').all(|l| l.len() <= 80));
    }
}
