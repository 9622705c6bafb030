//! A scriptable SMTP receiver on loopback for tests: the engine's sans-I/O SMTP server core
//! (`smtp::server`) on blocking sockets, one thread per connection (PIPELINING, optional
//! STARTTLS), answering recipients per domain as scripted and recording what it accepted
//! (bodies as the recipient gets them, dot-stuffing undone). Stopped (and its threads joined) by `stop` or on drop; every wait
//! is bounded.

use spate::smtp::server::{Event, Server, ServerConfig};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How the sink answers RCPT for a domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Behaviour {
    Accept,
    /// 550 5.1.1 for every recipient.
    UnknownUser,
    /// 450 4.7.1 the first time a recipient is tried, then accept.
    DeferOnce,
    /// 451 4.3.0 every time.
    AlwaysDefer,
    /// The first time a recipient is tried: 421 and hang up (an ISP shedding load).
    CloseOnce,
}

/// Whether and how the sink offers STARTTLS.
#[derive(Clone)]
pub enum SinkTls {
    None,
    /// Offers STARTTLS with this (self-signed) certificate.
    Offer(Arc<rustls::ServerConfig>),
    /// Offers STARTTLS, then answers the handshake with garbage and hangs up.
    Broken,
}

impl SinkTls {
    /// A self-signed certificate for `names`, made now.
    pub fn self_signed(names: &[&str]) -> SinkTls {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let cert = rcgen::generate_simple_self_signed(names).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        SinkTls::Offer(Arc::new(config))
    }
}

#[derive(Default)]
pub struct Received {
    /// Accepted deliveries per recipient (more than 1 is a duplicate).
    pub deliveries: HashMap<String, usize>,
    /// Deliveries made over TLS.
    pub tls_deliveries: usize,
    /// Message bodies, by recipient (the last one).
    pub bodies: HashMap<String, String>,
    pub rcpt_attempts: HashMap<String, usize>,
    pub connections: usize,
    /// Connections open now, and the most open at once.
    pub open: usize,
    pub open_max: usize,
    /// Recipients of each accepted transaction, in order.
    pub transactions: Vec<usize>,
    /// Accepted transactions whose message came in BDAT chunks (the sink offers CHUNKING).
    pub chunked: usize,
    /// Per client address: recipients accepted, and the EHLO names it gave.
    pub by_client: HashMap<std::net::IpAddr, (usize, std::collections::BTreeSet<String>)>,
    /// Client addresses whose recipients get Microsoft's "banned sending IP" (550 5.7.606).
    pub blocked: std::collections::HashSet<std::net::IpAddr>,
    /// Clients whose recipients get a rate-limit deferral (450 4.7.28, pushback) for now.
    pub pushback: std::collections::HashSet<std::net::IpAddr>,
    /// When each RCPT was answered, from which client (the first `RCPT_TIMES_MAX`).
    pub rcpt_times: Vec<(std::time::Instant, Option<std::net::IpAddr>)>,
}

pub struct Sink {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Received>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Sink {
    pub fn start(script: HashMap<String, Behaviour>) -> Sink {
        Sink::start_full(script, Duration::ZERO, SinkTls::None)
    }

    /// Like `start`, but every message takes `delay` to be accepted (a slow receiver).
    pub fn start_with_delay(script: HashMap<String, Behaviour>, delay: Duration) -> Sink {
        Sink::start_full(script, delay, SinkTls::None)
    }

    pub fn start_tls(script: HashMap<String, Behaviour>, tls: SinkTls) -> Sink {
        Sink::start_full(script, Duration::ZERO, tls)
    }

    /// An accepting sink on a given loopback address (e.g. 127.0.0.2 with another sink's port).
    pub fn start_on(addr: SocketAddr) -> Sink {
        Sink::start_at(addr, HashMap::new(), Duration::ZERO, SinkTls::None)
    }

    fn start_full(script: HashMap<String, Behaviour>, delay: Duration, tls: SinkTls) -> Sink {
        Sink::start_at("127.0.0.1:0".parse().unwrap(), script, delay, tls)
    }

    fn start_at(
        addr: SocketAddr,
        script: HashMap<String, Behaviour>,
        delay: Duration,
        tls: SinkTls,
    ) -> Sink {
        assert!(addr.ip().is_loopback());
        let listener = TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Received::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let script = Arc::new(script);
        let (r, s) = (Arc::clone(&received), Arc::clone(&stop));
        let acceptor = std::thread::spawn(move || {
            let mut handlers = Vec::new();
            while !s.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        {
                            let mut r = r.lock().unwrap();
                            r.connections += 1;
                            r.open += 1;
                            r.open_max = r.open_max.max(r.open);
                        }
                        let (r, s, script, tls) = (
                            Arc::clone(&r),
                            Arc::clone(&s),
                            Arc::clone(&script),
                            tls.clone(),
                        );
                        handlers.push(std::thread::spawn(move || {
                            if !serve(conn, &script, &r, &s, delay, tls) {
                                r.lock().unwrap().open -= 1;
                            }
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            for h in handlers {
                let _ = h.join();
            }
        });
        Sink {
            addr,
            received,
            stop,
            acceptor: Some(acceptor),
        }
    }

    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(a) = self.acceptor.take() {
            let _ = a.join();
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.shutdown();
    }
}

enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ServerConnection, TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// Serves one connection until it ends. True when the session ended with QUIT and was
/// counted closed before its 221 went out: the client may open its next connection as soon
/// as it has the 221, and that must not find this one still counted (`open_max`).
fn serve(
    conn: TcpStream,
    script: &HashMap<String, Behaviour>,
    received: &Mutex<Received>,
    stop: &AtomicBool,
    delay: Duration,
    tls: SinkTls,
) -> bool {
    // Replies to pipelined commands go out in one write; without NODELAY, Nagle would hold
    // a lone reply back until the client's delayed ACK (40 ms).
    let _ = conn.set_nodelay(true);
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let client = conn.peer_addr().map(|a| a.ip()).ok();
    let mut conn = Conn::Plain(conn);
    let mut server = Server::new(ServerConfig {
        hostname: "sink.test".into(),
        starttls: !matches!(tls, SinkTls::None),
        ..ServerConfig::default()
    });
    let mut out = Vec::new();
    server.greeting(&mut out);
    let mut input: Vec<u8> = Vec::new();
    let mut read = vec![0u8; 16 << 10];
    let mut rcpts: Vec<String> = Vec::new();
    let mut body: Vec<u8> = Vec::new();
    loop {
        // Everything complete in the input first; the replies then go out together.
        loop {
            let (used, event) = server.advance(&input, &mut out);
            let mut starttls = false;
            let mut close = false;
            let need_more = event == Event::NeedMore;
            match event {
                Event::NeedMore => {}
                Event::Mail { .. } => {
                    rcpts.clear();
                    server.reply(250, "2.1.0 ok", &mut out);
                }
                Event::Rcpt { to, .. } => {
                    let (code, text) = rcpt(to, client, script, received);
                    if code == 250 {
                        rcpts.push(to.to_string());
                    }
                    server.reply(code, text, &mut out);
                }
                Event::Body(b) => body.extend_from_slice(b),
                Event::MessageEnd => {
                    std::thread::sleep(delay);
                    let text = String::from_utf8_lossy(&std::mem::take(&mut body)).into_owned();
                    let mut got = received.lock().unwrap();
                    got.transactions.push(rcpts.len());
                    if let Some(ip) = client {
                        let c = got.by_client.entry(ip).or_default();
                        c.0 += rcpts.len();
                        c.1.insert(server.helo().to_string());
                    }
                    got.chunked += usize::from(server.is_chunked());
                    for rcpt in rcpts.drain(..) {
                        *got.deliveries.entry(rcpt.clone()).or_default() += 1;
                        if server.is_tls() {
                            got.tls_deliveries += 1;
                        }
                        got.bodies.insert(rcpt, text.clone());
                    }
                    drop(got);
                    server.reply(250, "2.0.0 queued", &mut out);
                }
                Event::MessageTooBig | Event::MessageRefused | Event::MessageAbandoned => {
                    body.clear()
                }
                // Not offered here: the core refuses AUTH before any credentials.
                Event::Auth { .. } => server.reply(535, "5.7.8 no AUTH here", &mut out),
                Event::StartTls => starttls = true,
                Event::Close => close = true,
            }
            input.drain(..used);
            if close {
                received.lock().unwrap().open -= 1;
                let _ = conn.write_all(&out);
                let _ = conn.flush();
                return true;
            }
            if starttls {
                let _ = conn.write_all(&std::mem::take(&mut out));
                // Bytes pipelined behind STARTTLS were sent in the clear: dropped (RFC 3207).
                input.clear();
                let Conn::Plain(tcp) = conn else {
                    return false;
                };
                match &tls {
                    SinkTls::Offer(config) => {
                        let session = rustls::ServerConnection::new(Arc::clone(config)).unwrap();
                        conn = Conn::Tls(Box::new(rustls::StreamOwned::new(session, tcp)));
                        server.tls_started();
                        rcpts.clear();
                        continue;
                    }
                    SinkTls::Broken | SinkTls::None => {
                        // Read the client's hello, answer with something that is not TLS.
                        let mut tcp = tcp;
                        let mut hello = [0u8; 512];
                        let _ = tcp.read(&mut hello);
                        let _ = tcp.write_all(b"this is not a TLS server hello\r\n");
                        return false;
                    }
                }
            }
            if need_more {
                break;
            }
        }
        if !out.is_empty() {
            if conn.write_all(&out).is_err() || conn.flush().is_err() {
                return false;
            }
            out.clear();
        }
        loop {
            if stop.load(Ordering::SeqCst) {
                return false;
            }
            match conn.read(&mut read) {
                Ok(0) => return false,
                Ok(n) => {
                    input.extend_from_slice(&read[..n]);
                    break;
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut =>
                {
                    continue
                }
                Err(_) => return false,
            }
        }
    }
}

/// RCPT times a sink keeps at most (a test's memory stays bounded).
pub const RCPT_TIMES_MAX: usize = 1_000_000;

/// The scripted answer to `RCPT TO:<to>`, counting the attempt.
fn rcpt(
    to: &str,
    client: Option<std::net::IpAddr>,
    script: &HashMap<String, Behaviour>,
    received: &Mutex<Received>,
) -> (u16, &'static str) {
    let domain = to.rsplit_once('@').map_or("", |(_, d)| d);
    let attempts = {
        let mut got = received.lock().unwrap();
        if client.is_some_and(|c| got.blocked.contains(&c)) {
            return (
                550,
                "5.7.606 Access denied, banned sending IP. To request removal from this list please visit https://sender.office.com/",
            );
        }
        if got.rcpt_times.len() < RCPT_TIMES_MAX {
            got.rcpt_times.push((std::time::Instant::now(), client));
        }
        if client.is_some_and(|c| got.pushback.contains(&c)) {
            return (
                450,
                "4.7.28 Our system has detected an unusual rate of mail from your IP; rate limited",
            );
        }
        let n = got.rcpt_attempts.entry(to.to_string()).or_default();
        *n += 1;
        *n
    };
    match script.get(domain).copied().unwrap_or(Behaviour::Accept) {
        Behaviour::UnknownUser => (
            550,
            "5.1.1 <rcpt>: Recipient address rejected: User unknown",
        ),
        Behaviour::DeferOnce if attempts == 1 => (450, "4.7.1 try again later"),
        Behaviour::AlwaysDefer => (451, "4.3.0 mailbox temporarily unavailable"),
        // An ISP shedding load: 421 and hang up.
        Behaviour::CloseOnce if attempts == 1 => (
            421,
            "4.7.0 [TSS04] Messages temporarily deferred due to unexpected volume",
        ),
        Behaviour::Accept | Behaviour::DeferOnce | Behaviour::CloseOnce => (250, "2.1.5 ok"),
    }
}
