//! A scriptable SMTP receiver on loopback for tests: accepts mail (PIPELINING-capable, one
//! thread per connection, optional STARTTLS), answers per recipient domain as scripted, and
//! records what it accepted. Stopped (and its threads joined) by `stop` or on drop; every wait
//! is bounded.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
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
    /// Recipients of each accepted transaction, in order.
    pub transactions: Vec<usize>,
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
                        r.lock().unwrap().connections += 1;
                        let (r, s, script, tls) = (
                            Arc::clone(&r),
                            Arc::clone(&s),
                            Arc::clone(&script),
                            tls.clone(),
                        );
                        handlers.push(std::thread::spawn(move || {
                            serve(conn, &script, &r, &s, delay, tls)
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

fn serve(
    conn: TcpStream,
    script: &HashMap<String, Behaviour>,
    received: &Mutex<Received>,
    stop: &AtomicBool,
    delay: Duration,
    tls: SinkTls,
) {
    // Replies go out one write each; without this, Nagle holds each one back until the
    // client's delayed ACK (40 ms), which real servers avoid by batching pipelined replies.
    let _ = conn.set_nodelay(true);
    conn.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut r = BufReader::new(Conn::Plain(conn));
    let _ = r.get_mut().write_all(b"220 sink.test ESMTP\r\n");
    let mut secure = false;
    let mut rcpts: Vec<String> = Vec::new();
    let mut data: Option<String> = None;
    let mut line = String::new();
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        match r.read_line(&mut line) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue;
            }
            Err(_) => return,
        }
        if !line.ends_with('\n') {
            continue;
        }
        let cmd = std::mem::take(&mut line);
        if let Some(body) = data.as_mut() {
            if cmd == ".\r\n" {
                std::thread::sleep(delay);
                let mut got = received.lock().unwrap();
                got.transactions.push(rcpts.len());
                for rcpt in rcpts.drain(..) {
                    *got.deliveries.entry(rcpt.clone()).or_default() += 1;
                    if secure {
                        got.tls_deliveries += 1;
                    }
                    got.bodies.insert(rcpt, body.clone());
                }
                data = None;
                let _ = r.get_mut().write_all(b"250 2.0.0 queued\r\n");
            } else {
                body.push_str(&cmd);
            }
            continue;
        }
        let upper = cmd.to_ascii_uppercase();
        let offers_tls = !secure && !matches!(tls, SinkTls::None);
        let answer: String = if upper.starts_with("EHLO") {
            let starttls = if offers_tls { "250-STARTTLS\r\n" } else { "" };
            format!("250-sink.test\r\n{starttls}250-PIPELINING\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n")
        } else if upper.starts_with("STARTTLS") && offers_tls {
            let _ = r.get_mut().write_all(b"220 2.0.0 ready to start TLS\r\n");
            let Conn::Plain(tcp) = r.into_inner() else {
                return;
            };
            match &tls {
                SinkTls::Offer(config) => {
                    let server = rustls::ServerConnection::new(Arc::clone(config)).unwrap();
                    r = BufReader::new(Conn::Tls(Box::new(rustls::StreamOwned::new(server, tcp))));
                    secure = true;
                    rcpts.clear();
                    continue;
                }
                SinkTls::Broken | SinkTls::None => {
                    // Read the client's hello, answer with something that is not TLS.
                    let mut tcp = tcp;
                    let mut hello = [0u8; 512];
                    let _ = tcp.read(&mut hello);
                    let _ = tcp.write_all(b"this is not a TLS server hello\r\n");
                    return;
                }
            }
        } else if upper.starts_with("MAIL FROM") {
            rcpts.clear();
            "250 2.1.0 ok\r\n".into()
        } else if upper.starts_with("RCPT TO:<") {
            let rcpt = cmd[9..].trim_end().trim_end_matches('>').to_string();
            let domain = rcpt.rsplit_once('@').map_or("", |(_, d)| d).to_string();
            let attempts = {
                let mut got = received.lock().unwrap();
                let n = got.rcpt_attempts.entry(rcpt.clone()).or_default();
                *n += 1;
                *n
            };
            match script.get(&domain).copied().unwrap_or(Behaviour::Accept) {
                Behaviour::UnknownUser => {
                    "550 5.1.1 <rcpt>: Recipient address rejected: User unknown\r\n".into()
                }
                Behaviour::DeferOnce if attempts == 1 => "450 4.7.1 try again later\r\n".into(),
                Behaviour::AlwaysDefer => "451 4.3.0 mailbox temporarily unavailable\r\n".into(),
                Behaviour::CloseOnce if attempts == 1 => {
                    let _ = r.get_mut().write_all(
                        b"421 4.7.0 [TSS04] Messages temporarily deferred due to unexpected volume\r\n",
                    );
                    return;
                }
                Behaviour::Accept | Behaviour::DeferOnce | Behaviour::CloseOnce => {
                    rcpts.push(rcpt);
                    "250 2.1.5 ok\r\n".into()
                }
            }
        } else if upper.starts_with("DATA") {
            if rcpts.is_empty() {
                "554 5.5.1 no valid recipients\r\n".into()
            } else {
                data = Some(String::new());
                "354 end with .\r\n".into()
            }
        } else if upper.starts_with("RSET") {
            rcpts.clear();
            "250 2.0.0 ok\r\n".into()
        } else if upper.starts_with("QUIT") {
            let _ = r.get_mut().write_all(b"221 2.0.0 bye\r\n");
            let _ = r.get_mut().flush();
            return;
        } else if upper.starts_with("NOOP") {
            "250 2.0.0 ok\r\n".into()
        } else {
            "502 5.5.2 not implemented\r\n".into()
        };
        let _ = r.get_mut().write_all(answer.as_bytes());
        let _ = r.get_mut().flush();
    }
}
