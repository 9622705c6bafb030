//! The simulated-ISP SMTP receiver: one glommio executor on its own thread serving every
//! provider of a [`SinkProfile`].
//!
//! The protocol is the engine's sans-I/O SMTP server core (`smtp::server`); this module
//! decides what each provider answers. It is built never to be what limits a run: replies to
//! pipelined commands go out in one write, message bodies are scanned in place and discarded
//! (never copied), and nothing is allocated per message beyond the recipients' addresses. Every
//! accepted recipient is counted, and appended to the receipt log when there is one, so a run
//! can prove that nothing was lost and count duplicates.

use super::profile::{ProviderProfile, SinkProfile};
use futures_lite::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use spate::smtp::server::{Event, Server, ServerConfig};
use std::cell::RefCell;
use std::collections::HashMap;
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const READ_BUFFER: usize = 64 << 10;
const IO_MEMORY: usize = 2 << 20;

/// What one provider has seen, read by whoever runs the sink while it runs.
#[derive(Debug, Default)]
pub struct ProviderStats {
    /// Recipients whose message was accepted (250 after DATA).
    pub accepted: AtomicU64,
    pub messages: AtomicU64,
    /// Replies beyond the accepted rate (421/450/451 with the provider's text).
    pub throttled: AtomicU64,
    /// Other temporary refusals: 451 failures, greylisting, 421 at the greeting.
    pub deferred: AtomicU64,
    /// 5xx answers to recipients.
    pub rejected: AtomicU64,
    pub connections: AtomicU64,
    pub connections_refused: AtomicU64,
    /// Connections dropped mid-DATA on purpose.
    pub dropped: AtomicU64,
    pub open_connections: AtomicU64,
    /// Per sending IP (receivers count per IP): recipients accepted, and replies beyond the
    /// rate. One entry per address that connected.
    pub by_ip: std::sync::Mutex<std::collections::BTreeMap<IpAddr, IpStats>>,
}

/// What one sending IP got from a provider.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct IpStats {
    pub accepted: u64,
    pub throttled: u64,
}

impl ProviderStats {
    pub fn get(v: &AtomicU64) -> u64 {
        v.load(Ordering::Relaxed)
    }

    /// Per sending IP, so far.
    pub fn by_ip(&self) -> std::collections::BTreeMap<IpAddr, IpStats> {
        self.by_ip.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn count_ip(&self, ip: IpAddr, f: impl FnOnce(&mut IpStats)) {
        let mut m = self.by_ip.lock().unwrap_or_else(|p| p.into_inner());
        f(m.entry(ip).or_default());
    }
}

fn bump(v: &AtomicU64) {
    v.fetch_add(1, Ordering::Relaxed);
}

pub struct Sink {
    pub port: u16,
    pub stats: Vec<(String, Arc<ProviderStats>)>,
    stop: Arc<AtomicBool>,
    thread: Option<glommio::ExecutorJoinHandle<Result<(), String>>>,
}

impl Sink {
    /// Binds every listener and starts serving; returns when the sink accepts connections.
    pub fn start(profile: SinkProfile) -> Result<Sink, String> {
        profile.validate()?;
        let tls = match (&profile.tls_cert, &profile.tls_key) {
            (Some(c), Some(k)) if profile.providers.iter().any(|p| p.tls) => {
                Some(Arc::new(server_tls(c, k)?))
            }
            _ => None,
        };
        let receipts = match &profile.receipts {
            Some(path) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?,
            ),
            None => None,
        };
        let stats: Vec<(String, Arc<ProviderStats>)> = profile
            .providers
            .iter()
            .map(|p| (p.name.clone(), Arc::new(ProviderStats::default())))
            .collect();
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<u16, String>>();
        let task_stats = stats.clone();
        let task_stop = Arc::clone(&stop);
        let thread = LocalExecutorBuilder::new(Placement::Unbound)
            .name("spate-sink")
            .io_memory(IO_MEMORY)
            .spawn(move || async move {
                let bound = bind_all(&profile);
                let listeners = match bound {
                    Ok((port, listeners)) => {
                        let _ = ready_tx.send(Ok(port));
                        listeners
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e.clone()));
                        return Err(e);
                    }
                };
                let receipts = Rc::new(RefCell::new(
                    receipts.map(|f| std::io::BufWriter::with_capacity(256 << 10, f)),
                ));
                let started = Instant::now();
                let mut tasks = Vec::new();
                for ((provider, (_, stats)), ls) in
                    profile.providers.into_iter().zip(task_stats).zip(listeners)
                {
                    let state = Rc::new(ProviderState {
                        profile: provider,
                        stats,
                        started,
                        buckets: RefCell::new(HashMap::new()),
                        per_ip: RefCell::new(HashMap::new()),
                        greylist: RefCell::new(HashMap::new()),
                        receipts: Rc::clone(&receipts),
                        tls: tls.clone(),
                    });
                    for l in ls {
                        tasks.push(
                            glommio::spawn_local(accept_loop(
                                l,
                                Rc::clone(&state),
                                Arc::clone(&task_stop),
                            ))
                            .detach(),
                        );
                    }
                }
                for t in tasks {
                    t.await;
                }
                if let Some(w) = receipts.borrow_mut().as_mut() {
                    w.flush().map_err(|e| format!("receipt log: {e}"))?;
                }
                Ok(())
            })
            .map_err(|e| format!("cannot start the sink's executor: {e}"))?;
        match ready_rx.recv() {
            Ok(Ok(port)) => Ok(Sink {
                port,
                stats,
                stop,
                thread: Some(thread),
            }),
            Ok(Err(e)) => {
                let _ = thread.join();
                Err(e)
            }
            Err(_) => Err("the sink's executor ended before it was ready".into()),
        }
    }

    pub fn provider(&self, name: &str) -> Option<&ProviderStats> {
        self.stats
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, s)| s.as_ref())
    }

    pub fn accepted(&self) -> u64 {
        self.stats
            .iter()
            .map(|(_, s)| ProviderStats::get(&s.accepted))
            .sum()
    }

    /// Stops accepting, drops the open connections, flushes the receipt log.
    pub fn stop(mut self) -> Result<(), String> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        match self.thread.take() {
            Some(t) => t
                .join()
                .map_err(|e| format!("sink thread: {e}"))
                .and_then(|r| r),
            None => Ok(()),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

fn server_tls(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::ServerConfig, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key))
        .map_err(|e| format!("sink TLS: {e}"))
}

/// Binds every provider's addresses on one port (a free one when the profile says 0).
fn bind_all(profile: &SinkProfile) -> Result<(u16, Vec<Vec<TcpListener>>), String> {
    let addrs: Vec<&IpAddr> = profile.providers.iter().flat_map(|p| &p.listen).collect();
    for attempt in 0..20 {
        let mut port = profile.port;
        let mut all = Vec::new();
        let mut failed = None;
        'providers: for p in &profile.providers {
            let mut ls = Vec::new();
            for ip in &p.listen {
                match TcpListener::bind(SocketAddr::new(*ip, port)) {
                    Ok(l) => {
                        if port == 0 {
                            port = l.local_addr().map_err(|e| e.to_string())?.port();
                        }
                        ls.push(l);
                    }
                    Err(e) => {
                        failed = Some(format!("sink cannot listen on {ip}:{port}: {e}"));
                        break 'providers;
                    }
                }
            }
            all.push(ls);
        }
        match failed {
            None => return Ok((port, all)),
            // A chosen port taken on another address: pick again.
            Some(_) if profile.port == 0 && attempt < 19 && addrs.len() > 1 => continue,
            Some(e) => return Err(e),
        }
    }
    Err("sink: no free port".into())
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

struct ProviderState {
    profile: ProviderProfile,
    stats: Arc<ProviderStats>,
    started: Instant,
    buckets: RefCell<HashMap<IpAddr, Bucket>>,
    per_ip: RefCell<HashMap<IpAddr, u32>>,
    greylist: RefCell<HashMap<u64, Instant>>,
    receipts: Rc<RefCell<Option<std::io::BufWriter<std::fs::File>>>>,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl ProviderState {
    /// Takes one token from the sending IP's bucket; false when over the rate.
    fn admit(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let rate = self
            .profile
            .rate_at(now.duration_since(self.started).as_secs_f64());
        if rate <= 0.0 {
            return true;
        }
        // A tenth of a second's worth of burst, at least one.
        let capacity = (rate / 10.0).max(1.0);
        let mut buckets = self.buckets.borrow_mut();
        let b = buckets.entry(ip).or_insert(Bucket {
            tokens: capacity,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * rate).min(capacity);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn greylisted(&self, key: u64) -> bool {
        let wait = Duration::from_secs(self.profile.greylist_s);
        if wait.is_zero() {
            return false;
        }
        let now = Instant::now();
        let mut g = self.greylist.borrow_mut();
        let first = *g.entry(key).or_insert(now);
        now.duration_since(first) < wait
    }

    fn receipt(&self, rcpts: &[String]) {
        if let Some(w) = self.receipts.borrow_mut().as_mut() {
            let us = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_micros());
            for r in rcpts {
                // A full disk here shows as missing receipts; the run reports the count.
                let _ = writeln!(w, "{us} {} {r}", self.profile.name);
            }
        }
    }
}

/// Accepts until `stop`. The accept is never raced with a timer: glommio keeps a waker for
/// every poll of a pending accept, so one polled on every tick of a stop check overflows the
/// task's waker count after some 32,000 ticks of an idle listener (11 minutes at 20 ms). A
/// watcher task connects to the listener instead, once `stop` is set.
async fn accept_loop(listener: TcpListener, state: Rc<ProviderState>, stop: Arc<AtomicBool>) {
    let watcher = listener.local_addr().ok().map(|addr| {
        let stop = Arc::clone(&stop);
        glommio::spawn_local(async move {
            while !stop.load(Ordering::Relaxed) {
                glommio::timer::sleep(Duration::from_millis(20)).await;
            }
            let _ = TcpStream::connect(addr).await;
        })
    });
    loop {
        let accepted = listener.accept().await;
        if stop.load(Ordering::Relaxed) {
            break;
        }
        match accepted {
            Ok(stream) => {
                glommio::spawn_local(connection(stream, Rc::clone(&state))).detach();
            }
            Err(_) => glommio::timer::sleep(Duration::from_millis(10)).await,
        }
    }
    if let Some(w) = watcher {
        w.await;
    }
}

/// Counts a connection per sending IP for as long as it lives.
struct IpSlot {
    state: Rc<ProviderState>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some(n) = self.state.per_ip.borrow_mut().get_mut(&self.ip) {
            *n = n.saturating_sub(1);
        }
        self.state
            .stats
            .open_connections
            .fetch_sub(1, Ordering::Relaxed);
    }
}

async fn connection(stream: TcpStream, state: Rc<ProviderState>) {
    let _ = stream.set_nodelay(true);
    let ip = match stream.peer_addr() {
        Ok(a) => a.ip(),
        Err(_) => return,
    };
    bump(&state.stats.connections);
    state.stats.open_connections.fetch_add(1, Ordering::Relaxed);
    let over = {
        let mut per_ip = state.per_ip.borrow_mut();
        let n = per_ip.entry(ip).or_insert(0);
        *n += 1;
        state.profile.connection_limit > 0 && *n > state.profile.connection_limit
    };
    let _slot = IpSlot {
        state: Rc::clone(&state),
        ip,
    };
    let mut stream = stream;
    if over {
        bump(&state.stats.connections_refused);
        let _ = stream
            .write_all(
                b"421 4.7.0 Too many concurrent connections from your IP, try again later\r\n",
            )
            .await;
        return;
    }
    let seed = ProviderStats::get(&state.stats.connections).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut conv = Conversation::new(Rc::clone(&state), ip, seed);
    match conv.serve(&mut stream, true).await {
        Ok(true) => {
            let Some(cfg) = state.tls.clone() else { return };
            let acceptor = futures_rustls::TlsAcceptor::from(cfg);
            if let Ok(mut tls) = acceptor.accept(stream).await {
                conv.reset_after_tls();
                let _ = conv.serve(&mut tls, false).await;
                let _ = tls.close().await;
            }
        }
        Ok(false) | Err(_) => {
            let _ = stream.close().await;
        }
    }
}

struct Conversation {
    state: Rc<ProviderState>,
    ip: IpAddr,
    rng: u64,
    /// The protocol (`smtp::server`); this conversation decides senders, recipients and
    /// message ends as the provider's profile says.
    server: Server,
    from: Vec<u8>,
    rcpts: Vec<String>,
    /// Inside a message's body (whether to drop the connection there is decided once).
    in_message: bool,
    /// Recipients accepted on this connection (tarpitting starts after a number of them).
    conn_rcpts: u32,
    messages: u64,
    /// This connection's number at its provider, for the queue ids in replies.
    id: u64,
}

enum Next {
    Continue,
    Close,
    StartTls,
}

impl Conversation {
    fn new(state: Rc<ProviderState>, ip: IpAddr, seed: u64) -> Self {
        let server = Server::new(ServerConfig {
            hostname: "sink.test".into(),
            starttls: state.profile.tls && state.tls.is_some(),
            chunking: state.profile.chunking,
            ..ServerConfig::default()
        });
        Conversation {
            id: ProviderStats::get(&state.stats.connections),
            state,
            ip,
            rng: seed,
            server,
            from: Vec::new(),
            rcpts: Vec::new(),
            in_message: false,
            conn_rcpts: 0,
            messages: 0,
        }
    }

    fn reset_after_tls(&mut self) {
        self.server.tls_started();
        self.from.clear();
        self.rcpts.clear();
        self.in_message = false;
    }

    fn chance(&mut self, fraction: f64) -> bool {
        if fraction <= 0.0 {
            return false;
        }
        // xorshift64*
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_F491_4F6C_DD1D);
        ((x >> 11) as f64 / (1u64 << 53) as f64) < fraction
    }

    fn delay(&self) -> Duration {
        let p = &self.state.profile;
        let mut d = Duration::from_millis(p.latency_ms);
        if p.tarpit_after > 0 && self.conn_rcpts >= p.tarpit_after {
            d += Duration::from_millis(p.tarpit_ms);
        }
        d
    }

    /// Serves until the client quits (false) or asks for STARTTLS (true).
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        s: &mut S,
        greet: bool,
    ) -> std::io::Result<bool> {
        let mut buf = vec![0u8; READ_BUFFER];
        let (mut start, mut end) = (0usize, 0usize);
        let mut out: Vec<u8> = Vec::with_capacity(4096);
        let mut pending = Duration::ZERO;
        if greet {
            pending += self.delay();
            self.server.greeting(&mut out);
        }
        loop {
            // Everything complete in the buffer is handled before replies go out together.
            let mut next = Next::Continue;
            loop {
                let commands = self.server.commands();
                let (used, event) = self.server.advance(&buf[start..end], &mut out);
                let handled = self.server.commands() - commands;
                pending += self.delay() * handled as u32;
                match event {
                    Event::NeedMore => {
                        start += used;
                        break;
                    }
                    Event::Mail { from, .. } => {
                        self.from.clear();
                        self.from.extend_from_slice(from.as_bytes());
                        self.rcpts.clear();
                        self.server.reply(250, "2.1.0 OK", &mut out);
                    }
                    Event::Rcpt { to, .. } => {
                        let (code, text) = self.rcpt(to);
                        self.server.reply(code, &text, &mut out);
                    }
                    Event::Body(_) => {
                        if !self.in_message {
                            self.in_message = true;
                            if self.chance(self.state.profile.drop_mid_data) {
                                bump(&self.state.stats.dropped);
                                // The replies before this message's (one pipelined ahead
                                // of it, with BDAT) were sent: only this one is cut off.
                                if !out.is_empty() {
                                    s.write_all(&out).await?;
                                }
                                return Ok(false);
                            }
                        }
                    }
                    Event::MessageEnd => {
                        pending += self.delay();
                        self.end_of_data(&mut out);
                    }
                    Event::MessageTooBig | Event::MessageRefused | Event::MessageAbandoned => {
                        self.in_message = false
                    }
                    // AUTH is not offered here: the core refuses it before any credentials.
                    Event::Auth { .. } => self.server.reply(535, "5.7.8 No AUTH here", &mut out),
                    Event::StartTls => next = Next::StartTls,
                    Event::Close => next = Next::Close,
                }
                start += used;
                if !matches!(next, Next::Continue) {
                    break;
                }
            }
            if !out.is_empty() {
                if !pending.is_zero() {
                    glommio::timer::sleep(pending).await;
                    pending = Duration::ZERO;
                }
                s.write_all(&out).await?;
                out.clear();
            }
            match next {
                Next::Continue => {}
                Next::Close => return Ok(false),
                // Anything pipelined after STARTTLS is discarded (RFC 3207).
                Next::StartTls => return Ok(true),
            }
            if start == end {
                start = 0;
                end = 0;
            } else if start > 0 && end == buf.len() {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            }
            let n = s.read(&mut buf[end..]).await?;
            if n == 0 {
                return Ok(false);
            }
            end += n;
        }
    }

    /// The provider's answer to `RCPT TO:<addr>`.
    fn rcpt(&mut self, addr: &str) -> (u16, String) {
        let state = Rc::clone(&self.state);
        let (p, stats) = (&state.profile, &state.stats);
        let elapsed = Instant::now().duration_since(state.started).as_secs_f64();
        if p.bans.iter().any(|b| b.ip == self.ip && elapsed >= b.at_s) {
            bump(&stats.rejected);
            return (
                550,
                format!("5.7.606 Access denied, banned sending IP [{}]. To request removal from this list please visit https://sender.office.com/", self.ip),
            );
        }
        if !state.admit(self.ip) {
            bump(&stats.throttled);
            stats.count_ip(self.ip, |s| s.throttled += 1);
            let code = p.throttle_code();
            return (code, p.style.throttle_text(code, self.ip));
        }
        let key = greylist_key(self.ip, &self.from, addr.as_bytes());
        if p.greylist_s > 0 && state.greylisted(key) {
            bump(&stats.deferred);
            return (451, "4.7.1 Greylisted, please try again later".into());
        }
        let unknown = (fnv(addr.as_bytes()) % 10_000) < (p.unknown_user * 10_000.0) as u64;
        if p.unknown_user > 0.0 && unknown {
            bump(&stats.rejected);
            return (550, p.style.unknown_user_text().to_string());
        }
        let (temp, perm) = (p.temp_fail, p.perm_fail);
        if self.chance(temp) {
            bump(&stats.deferred);
            return (451, "4.3.0 Temporary local problem, try again later".into());
        }
        if self.chance(perm) {
            bump(&stats.rejected);
            return (550, "5.7.1 Message rejected by policy".into());
        }
        // The address is only kept for the receipt log; without one it is only counted.
        let keep = state.receipts.borrow().is_some();
        self.rcpts.push(if keep {
            addr.to_string()
        } else {
            String::new()
        });
        self.conn_rcpts += 1;
        (250, "2.1.5 OK".into())
    }

    fn end_of_data(&mut self, out: &mut Vec<u8>) {
        self.in_message = false;
        let stats = &self.state.stats;
        stats
            .accepted
            .fetch_add(self.rcpts.len() as u64, Ordering::Relaxed);
        let n = self.rcpts.len() as u64;
        stats.count_ip(self.ip, |s| s.accepted += n);
        bump(&stats.messages);
        self.state.receipt(&self.rcpts);
        self.rcpts.clear();
        self.messages += 1;
        let text = format!("2.0.0 OK {:x}.{}", self.id, self.messages);
        self.server.reply(250, &text, out);
    }
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b.to_ascii_lowercase() as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

fn greylist_key(ip: IpAddr, from: &[u8], rcpt: &[u8]) -> u64 {
    let mut h = fnv(ip.to_string().as_bytes());
    h ^= fnv(from).rotate_left(17);
    h ^ fnv(rcpt).rotate_left(41)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::SinkProfile;
    use std::io::{BufRead, BufReader, Read as _};
    use std::net::TcpStream as StdStream;

    fn sink(extra: &str, receipts: Option<&std::path::Path>) -> Sink {
        let text = format!(
            "[[provider]]\nname = \"yahoo\"\nstyle = \"yahoo\"\ndomains = [\"yahoo.test\"]\nmx = \"mx.yahoo.test\"\nlisten = [\"127.0.0.3\"]\n{extra}\n"
        );
        let mut p = SinkProfile::parse(&text, "t").unwrap();
        p.receipts = receipts.map(|r| r.to_path_buf());
        Sink::start(p).unwrap()
    }

    /// Reads one whole reply (its last line).
    fn reply(r: &mut BufReader<StdStream>) -> String {
        loop {
            let mut line = String::new();
            assert!(r.read_line(&mut line).unwrap() > 0, "connection closed");
            if line.as_bytes().get(3) != Some(&b'-') {
                return line.trim_end().to_string();
            }
        }
    }

    fn connect(s: &Sink) -> BufReader<StdStream> {
        let c = StdStream::connect(("127.0.0.3", s.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        BufReader::new(c)
    }

    #[test]
    fn pipelined_transactions_are_counted_and_receipted() {
        let dir = tempfile::tempdir().unwrap();
        let receipts = dir.path().join("receipts.log");
        let s = sink("", Some(&receipts));
        let mut r = connect(&s);
        assert!(reply(&mut r).starts_with("220"));
        r.get_mut()
            .write_all(b"EHLO me\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<x@yahoo.test>\r\nRCPT TO:<y@yahoo.test>\r\nDATA\r\n")
            .unwrap();
        let ehlo = reply(&mut r);
        assert!(ehlo.starts_with("250 "), "{ehlo}");
        for want in ["250 2.1.0", "250 2.1.5", "250 2.1.5", "354"] {
            let got = reply(&mut r);
            assert!(got.starts_with(want), "{got}");
        }
        r.get_mut()
            .write_all(b"Subject: hi\r\n\r\n..a stuffed line\r\n.\r\nQUIT\r\n")
            .unwrap();
        assert!(reply(&mut r).starts_with("250 2.0.0"));
        assert!(reply(&mut r).starts_with("221"));
        s.stop().unwrap();
        let text = std::fs::read_to_string(&receipts).unwrap();
        let rcpts: Vec<&str> = text
            .lines()
            .map(|l| l.rsplit(' ').next().unwrap())
            .collect();
        assert_eq!(rcpts, ["x@yahoo.test", "y@yahoo.test"]);
        assert!(text.lines().all(|l| l.split(' ').nth(1) == Some("yahoo")));
    }

    #[test]
    fn throttles_beyond_the_rate_with_the_providers_text_and_refuses_extra_connections() {
        let s = sink("rate = 5\nthrottle_code = 450\nconnection_limit = 1", None);
        let mut r = connect(&s);
        assert!(reply(&mut r).starts_with("220"));
        // A second connection from the same IP is over the limit.
        let mut second = connect(&s);
        let refused = reply(&mut second);
        assert!(refused.starts_with("421 4.7.0"), "{refused}");
        r.get_mut()
            .write_all(b"HELO me\r\nMAIL FROM:<a@b.test>\r\n")
            .unwrap();
        reply(&mut r);
        reply(&mut r);
        let mut throttled = 0;
        for i in 0..20 {
            r.get_mut()
                .write_all(format!("RCPT TO:<u{i}@yahoo.test>\r\n").as_bytes())
                .unwrap();
            let got = reply(&mut r);
            if got.starts_with("450 4.7.1 [TSS04]") {
                throttled += 1;
            } else {
                assert!(got.starts_with("250"), "{got}");
            }
        }
        // A burst of a tenth of a second's worth (at least one), then 5 per second.
        assert!(throttled >= 10, "{throttled} of 20 throttled");
        assert_eq!(ProviderStats::get(&s.stats[0].1.throttled), throttled);
        assert_eq!(ProviderStats::get(&s.stats[0].1.connections_refused), 1);
    }

    #[test]
    fn latency_and_tarpitting_delay_replies() {
        let s = sink("latency_ms = 30\ntarpit_after = 2\ntarpit_ms = 60", None);
        let mut r = connect(&s);
        reply(&mut r);
        let timed = |r: &mut BufReader<StdStream>, line: &str| {
            let t = Instant::now();
            r.get_mut().write_all(line.as_bytes()).unwrap();
            let got = reply(r);
            (t.elapsed(), got)
        };
        let (d, _) = timed(&mut r, "HELO me\r\n");
        assert!(d >= Duration::from_millis(30), "latency {d:?}");
        timed(&mut r, "MAIL FROM:<a@b.test>\r\n");
        let (_, got) = timed(&mut r, "RCPT TO:<u1@yahoo.test>\r\n");
        assert!(got.starts_with("250"), "{got}");
        timed(&mut r, "RCPT TO:<u2@yahoo.test>\r\n");
        // Two recipients accepted on this connection: from now on every reply is tarpitted
        // (latency and tarpit add up; only lower bounds are checked, a slow machine only adds).
        let (d, _) = timed(&mut r, "RCPT TO:<u3@yahoo.test>\r\n");
        assert!(d >= Duration::from_millis(90), "tarpit {d:?}");
    }

    #[test]
    fn unknown_users_are_the_same_every_time_and_drops_close_mid_data() {
        let s = sink("unknown_user = 0.5\ndrop_mid_data = 1.0", None);
        let verdicts = |s: &Sink| -> Vec<bool> {
            let mut r = connect(s);
            reply(&mut r);
            r.get_mut()
                .write_all(b"HELO me\r\nMAIL FROM:<a@b.test>\r\n")
                .unwrap();
            reply(&mut r);
            reply(&mut r);
            (0..40)
                .map(|i| {
                    r.get_mut()
                        .write_all(format!("RCPT TO:<u{i}@yahoo.test>\r\n").as_bytes())
                        .unwrap();
                    reply(&mut r).starts_with("250")
                })
                .collect()
        };
        let first = verdicts(&s);
        assert_eq!(first, verdicts(&s), "the same addresses exist each time");
        assert!(first.iter().any(|&ok| ok) && first.iter().any(|&ok| !ok));
        let mut r = connect(&s);
        reply(&mut r);
        let ok = first.iter().position(|&ok| ok).unwrap();
        r.get_mut()
            .write_all(
                format!(
                    "HELO me\r\nMAIL FROM:<a@b.test>\r\nRCPT TO:<u{ok}@yahoo.test>\r\nDATA\r\n"
                )
                .as_bytes(),
            )
            .unwrap();
        for _ in 0..4 {
            reply(&mut r);
        }
        r.get_mut().write_all(b"Subject: x\r\n\r\nbody").unwrap();
        let mut rest = Vec::new();
        let _ = r.read_to_end(&mut rest);
        assert!(rest.is_empty(), "closed without a reply");
        assert_eq!(ProviderStats::get(&s.stats[0].1.dropped), 1);
        assert_eq!(s.accepted(), 0);
    }
}
