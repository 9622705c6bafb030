//! The SMTP submission gateway's shell on each shard: every shard binds every
//! `[[listeners]]` address (SO_REUSEPORT, so the kernel spreads connections over the
//! shards), and each connection runs the protocol core (`smtp::server`) with the policy of
//! `crate::gateway`. A message is queued through the same path as a pickup file
//! (`intake::Parser::submission`, then this shard's group commit), and the client gets its
//! 250 only once the message is durable.

use super::intake::feed_chunks;
use super::*;
use crate::config::{Listener, ListenerTls};
use crate::delivery_log::EventType;
use crate::gateway::counts::{CountsFile, DayCount};
use crate::gateway::limits::{self, AuthLockout, Connections, LockoutRule, UserCounter};
use crate::gateway::proxy::Source;
use crate::gateway::{password, policy, submission};
use crate::queue::record::{MESSAGE_RETURN, MESSAGE_RET_HDRS};
use crate::smtp::server::{Event as SmtpEvent, Server, ServerConfig, COMMAND_LINE_MAX};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use std::net::{IpAddr, SocketAddr};

/// How long a client may stay silent, whatever it is in the middle of: RFC 5321 4.5.3.2
/// asks a server for at least 5 minutes for a command and 3 for a block of message data.
/// It is the TCP stream's own read timeout (armed only while a read waits, and under TLS
/// too), not a timer raced with every read.
pub const READ_TIMEOUT: Duration = Duration::from_secs(300);
/// How long a failed AUTH waits before its 535, so a password is not guessed at line speed.
pub const AUTH_FAILURE_DELAY: Duration = Duration::from_secs(1);
/// Bytes read from a client at once.
const READ_BYTES: usize = 16 << 10;
/// Failed AUTH attempts a session may make; the next failure closes it (421). Across
/// sessions, the listener's `auth_failures_max` locks the client address out.
pub const AUTH_FAILURES_PER_SESSION_MAX: u32 = 3;
/// Room kept under the queue's message limit for what the gateway adds (trace, Message-ID,
/// Date), so a message accepted at its size limit is never refused when it is queued.
const ADDED_HEADER_ROOM: usize = 8 << 10;

/// How long a load balancer in `proxy_protocol_from` may take to send its PROXY header.
pub const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// One listener as this shard serves it.
pub(super) struct Gateway {
    /// Its place in `[[listeners]]` (which a reload cannot change).
    index: usize,
    listener: Listener,
    tls: Option<Arc<rustls::ServerConfig>>,
    server: ServerConfig,
}

/// A listener's certificate chain and key, read again on SIGHUP: every shard's TLS
/// configuration asks it at each handshake, so a renewed certificate is served from the
/// next connection on, with no restart.
#[derive(Debug)]
pub struct Certificates {
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
}

impl Certificates {
    /// Reads `l`'s files; `None` for a listener without TLS.
    pub fn load(l: &Listener) -> Result<Option<Certificates>, String> {
        let (Some(cert), Some(key)) = (&l.cert, &l.key) else {
            return Ok(None);
        };
        let current = certified_key(cert, key)?;
        Ok(Some(Certificates {
            cert: cert.clone(),
            key: key.clone(),
            current: std::sync::RwLock::new(Arc::new(current)),
        }))
    }

    /// Reads the files again; on any error the certificate in use stays.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = certified_key(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(fresh);
        Ok(())
    }
}

impl rustls::server::ResolvesServerCert for Certificates {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}

/// A chain and its key from PEM files, checked to belong together.
fn certified_key(
    cert: &std::path::Path,
    key: &std::path::Path,
) -> Result<rustls::sign::CertifiedKey, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no certificate in it", cert.display()));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    rustls::sign::CertifiedKey::from_der(certs, key_der, &provider())
        .map_err(|e| format!("{}: {e}", key.display()))
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

/// What the gateways of every shard share: each user's counts (atomics, so the limits hold
/// for the engine, with no lock per recipient), the failed-AUTH lockout and the sessions per
/// listener (locked once per connection or AUTH attempt).
pub struct GatewayShared {
    users: Mutex<HashMap<String, Arc<UserCounter>>>,
    lockout: Mutex<AuthLockout>,
    connections: Vec<Mutex<Connections>>,
    /// Per listener, its certificate (none without TLS).
    certificates: Vec<Option<Arc<Certificates>>>,
}

impl GatewayShared {
    /// For `listeners`, with the counts of `day` read back from the data directory
    /// (`gateway::counts`); a certificate that cannot be read is an error naming its file.
    pub fn new(
        listeners: &[Listener],
        counts: HashMap<String, u64>,
        day: u64,
    ) -> Result<GatewayShared, String> {
        let certificates = listeners
            .iter()
            .map(|l| {
                Certificates::load(l)
                    .map(|c| c.map(Arc::new))
                    .map_err(|e| format!("listener {}: {e}", l.listen))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let users = counts
            .into_iter()
            .map(|(user, n)| {
                let c = UserCounter::default();
                c.add(day, n);
                (user, Arc::new(c))
            })
            .collect();
        Ok(GatewayShared {
            users: Mutex::new(users),
            lockout: Mutex::new(AuthLockout::default()),
            connections: listeners.iter().map(|_| Mutex::default()).collect(),
            certificates,
        })
    }

    /// Listener `i`'s certificate, if it serves TLS.
    pub(super) fn certificates(&self, i: usize) -> Option<Arc<Certificates>> {
        self.certificates.get(i).cloned().flatten()
    }

    /// SIGHUP: every listener's certificate and key are read again. One that cannot be
    /// read (a renewal half written) keeps serving the previous pair, and says so.
    pub fn reload_certificates(&self) {
        for c in self.certificates.iter().flatten() {
            match c.reload() {
                Ok(()) => tracing::info!("listener certificate reloaded from {}", c.cert.display()),
                Err(e) => {
                    tracing::warn!("listener certificate not reloaded, the previous one stays: {e}")
                }
            }
        }
    }

    /// `user`'s counter (one per name that ever authenticated: bounded by `[[users]]`).
    fn user(&self, user: &str) -> Arc<UserCounter> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(users.entry(user.to_string()).or_default())
    }

    /// Recipients `user` had accepted today (for tests and status).
    pub fn accepted_today(&self, user: &str, now_unix_ms: u64) -> u64 {
        let users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        users
            .get(user)
            .map_or(0, |c| c.accepted_on(limits::utc_day(now_unix_ms)))
    }

    fn enter(self: &Arc<Self>, listener: usize, l: &Listener, ip: IpAddr) -> Option<SessionSlot> {
        let mut c = self.connections[listener]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        c.enter(ip, l.max_connections, l.max_connections_per_ip)
            .then(|| SessionSlot(Arc::clone(self), listener, ip))
    }

    fn lockout(&self) -> std::sync::MutexGuard<'_, AuthLockout> {
        self.lockout.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The daily counts this shard accepted since its last group commit, and the file they go
/// to with it (`gateway::counts`).
pub(super) struct DailyCounts {
    file: Option<CountsFile>,
    pending: Vec<DayCount>,
}

impl DailyCounts {
    pub(super) fn open(config: &Config, shard: usize) -> Result<DailyCounts, String> {
        let file = if config.listeners.is_empty() {
            None
        } else {
            let dir = crate::gateway::counts::dir(&config.engine.data_dir);
            let day = limits::utc_day(crate::clock::system().unix_ms());
            Some(CountsFile::open_durably(&dir, shard, day).map_err(|e| e.to_string())?)
        };
        Ok(DailyCounts {
            file,
            pending: Vec::new(),
        })
    }

    fn add(&mut self, day: u64, user: &str, n: u64) {
        match self
            .pending
            .iter_mut()
            .find(|(d, u, _)| *d == day && u == user)
        {
            Some(entry) => entry.2 += n,
            None => self.pending.push((day, user.to_string(), n)),
        }
    }

    /// What the next group commit must sync, if anything was counted: the file goes with
    /// it (to the blocking thread) and comes back through `put_back`.
    pub(super) fn take(&mut self) -> Option<(CountsFile, Vec<DayCount>)> {
        if self.pending.is_empty() {
            return None;
        }
        let file = self.file.take()?;
        Some((file, std::mem::take(&mut self.pending)))
    }

    pub(super) fn put_back(&mut self, file: CountsFile) {
        self.file = Some(file);
    }
}

/// The TLS settings of a listener, serving whatever `certificates` holds now.
fn server_tls(certificates: Arc<Certificates>) -> Result<Arc<rustls::ServerConfig>, String> {
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(certificates);
    Ok(Arc::new(config))
}

impl Gateway {
    pub(super) fn new(
        index: usize,
        listener: &Listener,
        helo_name: &str,
        certificates: Option<Arc<Certificates>>,
    ) -> Result<Gateway, String> {
        let tls = certificates
            .map(server_tls)
            .transpose()
            .map_err(|e| format!("listener {}: {e}", listener.listen))?;
        let max = (listener.max_message_size_bytes as usize)
            .min(crate::intake::MESSAGE_BYTES_MAX - ADDED_HEADER_ROOM);
        let server = ServerConfig {
            hostname: helo_name.to_string(),
            max_message_bytes: max,
            max_recipients: listener.max_recipients,
            starttls: listener.tls == ListenerTls::Starttls && tls.is_some(),
            chunking: true,
            auth: true,
            // tls = "none" is allowed on loopback only, and there AUTH goes in the clear.
            auth_needs_tls: listener.tls != ListenerTls::None,
            strict_lines: true,
            dsn: true,
        };
        Ok(Gateway {
            index,
            listener: listener.clone(),
            tls,
            server,
        })
    }
}

/// Binds and serves one listener until the engine stops. A bind failure stops the engine:
/// an operator who configured a listener expects it served.
pub(super) async fn serve(shard: Rc<Shard>, gateway: Rc<Gateway>) {
    let listener = match TcpListener::bind(gateway.listener.listen) {
        Ok(l) => l,
        Err(e) => {
            shard.shared.fail(format!(
                "listener {}: cannot listen: {e}",
                gateway.listener.listen
            ));
            return;
        }
    };
    // The accept is never raced with a timer (glommio keeps a waker per poll of a pending
    // accept): a watcher connects to the listener once the engine stops, to wake it.
    let addr = listener.local_addr().ok();
    let watcher = addr.map(|addr| {
        let shared = Arc::clone(&shard.shared);
        glommio::spawn_local(async move {
            while !shared.stopping() {
                sleep(Duration::from_millis(20)).await;
            }
            let _ = TcpStream::connect(addr).await;
        })
    });
    loop {
        let accepted = listener.accept().await;
        if shard.shared.stopping() {
            break;
        }
        match accepted {
            Ok(stream) => {
                let (shard, gateway) = (Rc::clone(&shard), Rc::clone(&gateway));
                glommio::spawn_local(async move { connection(shard, gateway, stream).await })
                    .detach();
            }
            Err(e) => {
                tracing::warn!("listener {}: accept: {e}", gateway.listener.listen);
                sleep(Duration::from_millis(10)).await;
            }
        }
    }
    if let Some(w) = watcher {
        w.await;
    }
}

/// Counts a session on its listener for as long as it lives.
struct SessionSlot(Arc<GatewayShared>, usize, IpAddr);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        let mut c = self.0.connections[self.1]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        c.leave(self.2);
    }
}

async fn connection(shard: Rc<Shard>, gateway: Rc<Gateway>, mut stream: TcpStream) {
    let Ok(connected) = stream.peer_addr() else {
        return;
    };
    let _ = stream.set_nodelay(true);
    // A client that stops reading (its replies pile up) is cut off as one that stops
    // writing is.
    if stream.set_write_timeout(Some(READ_TIMEOUT)).is_err() {
        return;
    }
    // Only a configured load balancer may say whom it connects for. A client it cannot
    // name keeps the balancer's address but is never inside `relay_networks`.
    let (peer, named, early) =
        if policy::in_networks(connected.ip(), &gateway.listener.proxy_protocol_from) {
            match read_proxy_header(&mut stream).await {
                Ok((Source::Client(client), early)) => (client, true, early),
                Ok((Source::Balancer, early)) => (connected, true, early),
                Ok((Source::Unnamed, early)) => (connected, false, early),
                Err(why) => {
                    tracing::debug!("listener {}: {connected}: {why}", gateway.listener.listen);
                    let _ = stream.close().await;
                    return;
                }
            }
        } else {
            (connected, true, Vec::new())
        };
    if stream.set_read_timeout(Some(READ_TIMEOUT)).is_err() {
        return;
    }
    let mut stream = Prefixed {
        early,
        inner: stream,
    };
    let slot = shard
        .shared
        .gateway
        .enter(gateway.index, &gateway.listener, peer.ip());
    let Some(_slot) = slot else {
        // In plaintext only: on an implicit-TLS port, a client expects a handshake.
        if gateway.listener.tls != ListenerTls::Implicit {
            let _ = stream
                .write_all(b"421 4.7.0 Too many connections, try again later\r\n")
                .await;
        }
        let _ = stream.close().await;
        return;
    };
    let mut session = Session {
        shard,
        server: Server::new(gateway.server.clone()),
        gateway,
        peer,
        named,
        user: None,
        counter: None,
        reserved: 0,
        auth_failures: 0,
        from: None,
        dsn_headers_only: false,
        dsn_envid: String::new(),
        rcpts: Vec::new(),
        rcpt_dsn: Vec::new(),
        message: Vec::new(),
    };
    if session.gateway.listener.tls == ListenerTls::Implicit {
        let Some(cfg) = session.gateway.tls.clone() else {
            return;
        };
        let Ok(mut tls) = futures_rustls::TlsAcceptor::from(cfg).accept(stream).await else {
            return;
        };
        session.server = Server::new_tls(session.gateway.server.clone());
        let _ = session.serve(&mut tls, true).await;
        let _ = tls.close().await;
        return;
    }
    match session.serve(&mut stream, true).await {
        Ok(true) => {
            let Some(cfg) = session.gateway.tls.clone() else {
                return;
            };
            let Ok(mut tls) = futures_rustls::TlsAcceptor::from(cfg).accept(stream).await else {
                return;
            };
            session.server.tls_started();
            session.reset();
            let _ = session.serve(&mut tls, false).await;
            let _ = tls.close().await;
        }
        Ok(false) | Err(_) => {
            let _ = stream.close().await;
        }
    }
}

/// Reads a PROXY protocol header (`gateway::proxy`) within `PROXY_HEADER_TIMEOUT`: the
/// client it names (none for the balancer's own connections), and any bytes read past it.
async fn read_proxy_header(stream: &mut TcpStream) -> Result<(Source, Vec<u8>), String> {
    stream
        .set_read_timeout(Some(PROXY_HEADER_TIMEOUT))
        .map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let mut input = Vec::new();
    let mut read = [0u8; 512];
    loop {
        if let Some(h) = crate::gateway::proxy::parse(&input)? {
            return Ok((h.source, input.split_off(h.used)));
        }
        if started.elapsed() > PROXY_HEADER_TIMEOUT {
            return Err("PROXY header too slow".into());
        }
        match stream.read(&mut read).await {
            Ok(0) => return Err("closed before its PROXY header".into()),
            Ok(n) => input.extend_from_slice(&read[..n]),
            Err(e) => return Err(format!("PROXY header: {e}")),
        }
    }
}

/// A stream whose first bytes were read already (behind a PROXY header): they come first.
struct Prefixed<S> {
    early: Vec<u8>,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if !self.early.is_empty() {
            let n = buf.len().min(self.early.len());
            buf[..n].copy_from_slice(&self.early[..n]);
            self.early.drain(..n);
            return std::task::Poll::Ready(Ok(n));
        }
        std::pin::Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_close(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// One client's session: the core, and what the shell decided so far.
struct Session {
    shard: Rc<Shard>,
    gateway: Rc<Gateway>,
    server: Server,
    peer: SocketAddr,
    /// False for a client a balancer could not name (`gateway::proxy::Source::Unnamed`):
    /// `relay_networks` does not apply to it.
    named: bool,
    /// The user AUTH authenticated, by name: looked up in the configuration in force each
    /// time (a reload may change or remove it; a removed user is no longer authenticated).
    user: Option<String>,
    /// The user's counts, and the recipients of this transaction taken from its limits.
    counter: Option<Arc<UserCounter>>,
    reserved: u64,
    auth_failures: u32,
    from: Option<String>,
    /// The transaction's DSN parameters (RFC 3461): RET=HDRS, ENVID, and per recipient
    /// (in step with `rcpts`) NOTIFY and ORCPT.
    dsn_headers_only: bool,
    dsn_envid: String,
    rcpts: Vec<String>,
    rcpt_dsn: Vec<(String, String)>,
    message: Vec<u8>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.end_transaction();
    }
}

impl Session {
    /// The authenticated user as the configuration in force has it, if it still does.
    fn current_user<'c>(&self, config: &'c Config) -> Option<&'c crate::config::User> {
        let name = self.user.as_deref()?;
        config.users.iter().find(|u| u.name == name)
    }

    fn reset(&mut self) {
        self.end_transaction();
        self.user = None;
        self.counter = None;
        self.auth_failures = 0;
        self.message.clear();
    }

    /// Forgets the transaction; recipients it took from the user's limits are given back.
    fn end_transaction(&mut self) {
        if let Some(c) = &self.counter {
            c.release(self.reserved);
        }
        self.reserved = 0;
        self.from = None;
        self.dsn_headers_only = false;
        self.dsn_envid.clear();
        self.rcpts.clear();
        self.rcpt_dsn.clear();
    }

    /// Runs the session on `stream` until it ends; `Ok(true)` when the client asked for
    /// STARTTLS (the 220 was written, and any bytes it sent after the command dropped).
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        greet: bool,
    ) -> std::io::Result<bool> {
        let mut out = Vec::new();
        if greet {
            self.server.greeting(&mut out);
            stream.write_all(&out).await?;
            out.clear();
        }
        let mut input: Vec<u8> = Vec::new();
        let mut read = vec![0u8; READ_BYTES];
        loop {
            let mut used_total = 0;
            loop {
                let (used, event) = self.server.advance(&input[used_total..], &mut out);
                used_total += used;
                match event {
                    SmtpEvent::NeedMore => break,
                    SmtpEvent::Close => {
                        stream.write_all(&out).await?;
                        let _ = stream.flush().await;
                        return Ok(false);
                    }
                    SmtpEvent::StartTls => {
                        stream.write_all(&out).await?;
                        stream.flush().await?;
                        return Ok(true);
                    }
                    event => self.decide(event, &mut out).await,
                }
            }
            input.drain(..used_total);
            if !out.is_empty() {
                stream.write_all(&out).await?;
                out.clear();
            }
            if self.shard.shared.stopping() {
                let _ = stream
                    .write_all(b"421 4.3.2 Shutting down, try again later\r\n")
                    .await;
                return Ok(false);
            }
            // What is left is less than one command line (the core's bound), or message
            // bytes it will take once more come.
            debug_assert!(input.len() <= COMMAND_LINE_MAX + READ_BYTES);
            let n = match stream.read(&mut read).await {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    let _ = stream
                        .write_all(b"421 4.4.2 Timeout, closing the connection\r\n")
                        .await;
                    return Ok(false);
                }
                Err(e) => return Err(e),
            };
            input.extend_from_slice(&read[..n]);
        }
    }

    /// Answers one decision the core asked for.
    async fn decide(&mut self, event: SmtpEvent<'_>, out: &mut Vec<u8>) {
        match event {
            SmtpEvent::Mail { from, params } => {
                let (code, text) = self.mail(from);
                if code == 250 {
                    self.dsn_headers_only = params.ret_full == Some(false);
                    self.dsn_envid = params.envid.unwrap_or("").to_string();
                }
                self.server.reply(code, &text, out);
            }
            SmtpEvent::Rcpt { to, params } => {
                let (code, text) = self.rcpt(to);
                if code == 250 && self.rcpt_dsn.len() < self.rcpts.len() {
                    self.rcpt_dsn.push((
                        params.notify.map_or(String::new(), notify_text),
                        params.orcpt.unwrap_or("").to_string(),
                    ));
                }
                self.server.reply(code, &text, out);
            }
            SmtpEvent::Body(b) => self.message.extend_from_slice(b),
            SmtpEvent::MessageEnd => {
                let (code, text) = self.message_end().await;
                self.server.reply(code, &text, out);
                self.end_transaction();
                // Not `clear`: an idle session keeps no message-sized buffer.
                self.message = Vec::new();
            }
            SmtpEvent::MessageTooBig | SmtpEvent::MessageRefused | SmtpEvent::MessageAbandoned => {
                self.message = Vec::new();
                self.end_transaction();
            }
            SmtpEvent::Auth { user, password } => {
                let (code, text) = self.auth(&user, password.0).await;
                self.server.reply(code, text, out);
            }
            SmtpEvent::NeedMore | SmtpEvent::Close | SmtpEvent::StartTls => {}
        }
    }

    fn mail(&mut self, from: &str) -> (u16, String) {
        let sender = if from.is_empty() {
            String::new()
        } else {
            match crate::address::parse_address(from) {
                Ok(a) => a.to_addr_string(),
                Err(e) => return (553, format!("5.1.7 Bad sender address: {}", e.0)),
            }
        };
        let config = self.shard.config.borrow().clone();
        if self.user.is_some() {
            let allowed = self
                .current_user(&config)
                .is_some_and(|u| policy::sender_allowed(&u.allowed_from, &sender));
            if !allowed {
                return (
                    553,
                    "5.7.1 Sender address not allowed for this user".to_string(),
                );
            }
        }
        self.end_transaction();
        self.from = Some(sender);
        (250, "2.1.0 OK".into())
    }

    fn rcpt(&mut self, to: &str) -> (u16, String) {
        let config = self.shard.config.borrow().clone();
        let networks: &[ipnet::IpNet] = if self.named {
            &self.gateway.listener.relay_networks
        } else {
            &[]
        };
        let relay = policy::may_relay(
            self.peer.ip(),
            self.current_user(&config).is_some(),
            networks,
            self.gateway.server.auth
                && (self.server.is_tls() || !self.gateway.server.auth_needs_tls),
        );
        if let Err((code, text)) = relay {
            return (code, text.to_string());
        }
        let rcpt = match crate::address::parse_address(to) {
            Ok(a) => a.to_addr_string(),
            Err(e) => return (553, format!("5.1.3 Bad recipient address: {}", e.0)),
        };
        if self.rcpts.contains(&rcpt) {
            // Twice in one transaction would be delivered twice; once is what was meant.
            return (250, "2.1.5 OK (duplicate)".into());
        }
        if let (Some(user), Some(counter)) = (self.current_user(&config), &self.counter) {
            let now = self.shard.shared.clock.unix_ms();
            if let Err(hit) = counter.reserve(user.daily_limit, user.rate_limit, now) {
                let text = hit.reply_text();
                self.log_rejected(&rcpt, &user.name, 452, &text);
                return (452, text);
            }
            self.reserved += 1;
        }
        self.rcpts.push(rcpt);
        (250, "2.1.5 OK".into())
    }

    /// A `Rejected` record for a recipient refused at RCPT for its user's limits.
    fn log_rejected(&self, rcpt: &str, user: &str, code: u16, text: &str) {
        let enhanced = text.split(' ').next().unwrap_or("");
        let response = format!("{code} {text}");
        let record = crate::delivery_log::LogRecord {
            ts_unix_ms: self.shard.shared.clock.unix_ms(),
            event: Some(EventType::Rejected),
            recipient: rcpt,
            sender: self.from.as_deref().unwrap_or(""),
            tenant: user,
            domain: rcpt.rsplit_once('@').map_or("", |(_, d)| d),
            code: Some(code),
            enhanced,
            response: &response,
            ..Default::default()
        };
        let mut core = self.shard.core.borrow_mut();
        let logged = core.log.append(&record).and_then(|()| core.log.flush());
        drop(core);
        match logged {
            Ok(()) => {
                self.shard
                    .shared
                    .counters
                    .rejected
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.shard.shared.fail(format!("delivery log: {e}")),
        }
    }

    /// The final dot: the From header checked for an authenticated user, then the message
    /// queued durably.
    async fn message_end(&mut self) -> (u16, String) {
        let config = self.shard.config.borrow().clone();
        let user = self.current_user(&config);
        if self.user.is_some() && user.is_none() {
            return (550, "5.7.1 The authenticated user no longer exists".into());
        }
        if let Some(user) = user {
            let senders = policy::from_addresses(&self.message).and_then(|mut from| {
                from.extend(policy::sender_addresses(&self.message)?.unwrap_or_default());
                Ok(from)
            });
            match senders {
                Ok(addresses) => {
                    if let Some(bad) = addresses
                        .iter()
                        .find(|a| !policy::sender_allowed(&user.allowed_from, a))
                    {
                        return (
                            550,
                            format!("5.7.1 From/Sender address {bad} not allowed for this user"),
                        );
                    }
                }
                Err(why) => return (550, format!("5.6.0 {why}")),
            }
        }
        let (Some(sender), false) = (self.from.clone(), self.rcpts.is_empty()) else {
            return (503, "5.5.1 No transaction".into());
        };
        let batch_id = self.shard.next_batch_id();
        let id = format!("{batch_id:x}");
        let now = self.shard.shared.clock.unix_ms();
        let prepared = submission::prepare(
            &self.message,
            &submission::Trace {
                client_ip: self.peer.ip(),
                helo: self.server.helo(),
                host: &config.smtp.helo_name,
                tls: self.server.is_tls(),
                authenticated: user.is_some(),
                id: &id,
            },
            now,
        );
        let tenant = match &user {
            Some(u) => u.name.clone(),
            None => self.peer.ip().to_string(),
        };
        // Failures go back to the sender as DSNs; never for a message from <> (no loops).
        let returned = !sender.is_empty();
        let (flags, var_names, values) = if returned {
            let flags = MESSAGE_RETURN
                | if self.dsn_headers_only {
                    MESSAGE_RET_HDRS
                } else {
                    0
                };
            let values = std::mem::take(&mut self.rcpt_dsn)
                .into_iter()
                .map(|(notify, orcpt)| vec![notify, orcpt, self.dsn_envid.clone()])
                .collect();
            let names = crate::dsn::VAR_NAMES.map(String::from).to_vec();
            (flags, names, values)
        } else {
            (0, Vec::new(), Vec::new())
        };
        let spec = MessageSpec {
            batch_id,
            created_unix_ms: now,
            flags,
            sender,
            campaign: prepared.campaign,
            tenant,
            var_names,
            body: prepared.message,
        };
        let rcpts = std::mem::take(&mut self.rcpts);
        let n = rcpts.len() as u64;
        // A user with a daily limit: its count goes to disk with the commit that makes the
        // message durable, so a restart never forgets a message that got its 250.
        let counted = user
            .filter(|u| u.daily_limit.is_some())
            .map(|u| (u.name.as_str(), n));
        match queue_submission(&self.shard, spec, rcpts, values, counted).await {
            Ok(()) => {
                if let Some(c) = &self.counter {
                    c.accept(self.reserved, now);
                    self.reserved = 0;
                }
                (250, format!("2.0.0 OK: queued as {id}"))
            }
            Err(Refused::Permanent(why)) => (554, format!("5.3.4 {why}")),
            Err(Refused::Temporary(why)) => (451, format!("4.3.0 {why}")),
        }
    }

    /// The reply to an AUTH: a locked-out address is not asked for a password; a failure
    /// waits `AUTH_FAILURE_DELAY` and counts for the address and the session.
    async fn auth(&mut self, user: &str, password: String) -> (u16, &'static str) {
        let shared = Arc::clone(&self.shard.shared);
        let ip = self.peer.ip();
        let gateway = Rc::clone(&self.gateway);
        let l = &gateway.listener;
        let rule = LockoutRule {
            failures_max: l.auth_failures_max,
            window_ms: l.auth_lockout.as_millis() as u64,
        };
        const LOCKED: (u16, &str) = (
            421,
            "4.7.0 Too many failed authentications from your address; try again later",
        );
        if shared
            .gateway
            .lockout()
            .locked_until(ip, shared.clock.unix_ms())
            .is_some()
        {
            return LOCKED;
        }
        if self.authenticate(user, password).await {
            return (235, "2.7.0 Authentication successful");
        }
        sleep(AUTH_FAILURE_DELAY).await;
        self.auth_failures += 1;
        let locked = shared
            .gateway
            .lockout()
            .failed(ip, shared.clock.unix_ms(), rule);
        if locked {
            tracing::warn!(
                "gateway: {ip} locked out for {} s after {} failed AUTH attempts",
                l.auth_lockout.as_secs(),
                l.auth_failures_max
            );
            return LOCKED;
        }
        if self.auth_failures >= AUTH_FAILURES_PER_SESSION_MAX {
            // 421 closes the session (the core's rule).
            return (421, "4.7.0 Too many failed authentications");
        }
        (535, "5.7.8 Authentication credentials invalid")
    }

    /// Checks `user`'s password off the executor (a hash takes tens of milliseconds).
    async fn authenticate(&mut self, user: &str, password: String) -> bool {
        let config = self.shard.config.borrow().clone();
        let found = config.users.iter().position(|u| u.name == user);
        // An unknown user costs a hash too, so the answer's timing does not say who exists.
        let hash = found.map_or(UNKNOWN_USER_HASH.to_string(), |i| {
            config.users[i].password_hash.clone()
        });
        // One check at a time per shard: the blocking thread also runs the group commit's
        // fdatasync, which then waits behind one hash at most, however many clients AUTH.
        let ok = {
            let _permit = self.shard.password_checks.acquire_permit(1).await;
            glommio::executor()
                .spawn_blocking(move || password::verify(&password, &hash))
                .await
        };
        if ok && found.is_some() {
            self.user = Some(user.to_string());
            self.counter = Some(self.shard.shared.gateway.user(user));
            tracing::info!(
                "gateway: {} authenticated as {}",
                self.peer.ip(),
                printable(user)
            );
            return true;
        }
        tracing::warn!(
            "gateway: failed AUTH from {} as {}",
            self.peer.ip(),
            printable(user)
        );
        false
    }
}

/// NOTIFY as the queue keeps it (`dsn::wanted` reads it).
fn notify_text(n: crate::smtp::server::Notify) -> String {
    if n.never {
        return "NEVER".into();
    }
    let words = [
        (n.success, "SUCCESS"),
        (n.failure, "FAILURE"),
        (n.delay, "DELAY"),
    ];
    let on: Vec<&str> = words.iter().filter(|w| w.0).map(|w| w.1).collect();
    on.join(",")
}

/// A well-formed argon2id hash nobody's password matches, checked for unknown users.
const UNKNOWN_USER_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c3BhdGUtbm8tdXNlcg$2oTpbvJW7zl0mTgkqGd1Wv7sTqVg3pVmuWdoh2uFVyA";

/// Why a message was not queued.
enum Refused {
    /// It never will be (5xx).
    Permanent(String),
    /// Try again later (4xx): the engine is stopping or failed.
    Temporary(String),
}

/// Queues one submitted message on this shard (its home) and waits for the group commit.
/// Once the engine stops, nothing new is appended: a message appended then might be made
/// durable by the last commit with no 250 sent, and come again from the client's retry.
async fn queue_submission(
    shard: &Rc<Shard>,
    spec: MessageSpec,
    rcpts: Vec<String>,
    values: Vec<Vec<String>>,
    counted: Option<(&str, u64)>,
) -> Result<(), Refused> {
    if shard.shared.stopping() {
        return Err(Refused::Temporary(
            "the engine is stopping; try again later".into(),
        ));
    }
    let batch_id = spec.batch_id;
    let mut parser = Parser::submission(spec, rcpts, values, shard.shards)
        .map_err(|e| Refused::Permanent(format!("cannot queue: {e}")))?;
    let message = Arc::clone(parser.message());
    // `next_batch_id` makes this shard the message's home: its chunk, its group commit and
    // the user's count all stay here.
    debug_assert_eq!((batch_id % shard.shards as u64) as usize, shard.id);
    if let Some((user, n)) = counted {
        // Before the append, so the commit that makes the message durable syncs it too.
        let day = limits::utc_day(message.created_unix_ms);
        shard.gateway_counts.borrow_mut().add(day, user, n);
    }
    let (ack_tx, ack_rx) = local_channel::new_unbounded();
    shard.acks.borrow_mut().insert(batch_id, ack_tx);
    // The client waits for this commit: it starts without the usual window.
    let _ = shard.commit_urgent.try_send(());
    let result = feed_chunks(shard, &mut parser, &message, &ack_rx).await;
    shard.acks.borrow_mut().remove(&batch_id);
    // The batch's de-duplication state (for a resumed input; a submission is never
    // resumed) is released, or it would grow with every message.
    shard.core.borrow_mut().queue.release_batch(batch_id);
    match result {
        Ok(_) => Ok(()),
        // Appended here before the stop: `feed_chunks` waited for its acknowledgement, so
        // it is durable.
        Err(super::intake::Interrupted::Stopping) => Ok(()),
        Err(super::intake::Interrupted::Failed) => Err(Refused::Temporary(
            "the engine failed; try again later".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_unknown_user_hash_is_checked_like_any_other_and_matches_nothing() {
        assert_eq!(
            super::password::check_hash(super::UNKNOWN_USER_HASH),
            Ok(())
        );
        assert!(!super::password::verify("", super::UNKNOWN_USER_HASH));
    }
}
