//! The SMTP submission gateway's shell on each shard: every shard binds every
//! `[[listeners]]` address (SO_REUSEPORT, so the kernel spreads connections over the
//! shards), and each connection runs the protocol core (`smtp::server`) with the policy of
//! `crate::gateway`. A message is queued through the same path as a pickup file
//! (`intake::Parser::submission`, then this shard's group commit), and the client gets its
//! 250 only once the message is durable.
//!
//! Files: this one holds what every shard shares (users' counts, the lockout, sessions per
//! listener, certificates), the accept loop and a connection's start; `stream` what comes
//! before SMTP on a connection (the PROXY header, TLS certificates); `session` a client's
//! session and the queueing of its messages.

mod session;
mod stream;

pub use stream::Certificates;

use super::*;
use crate::config::{Listener, ListenerTls};
use crate::gateway::counts::{CountsFile, DayCount};
use crate::gateway::limits::{self, AuthLockout, Connections, UserCounter};
use crate::gateway::policy;
use crate::gateway::proxy::Source;
use crate::smtp::server::{Server, ServerConfig};
use futures_lite::AsyncWriteExt;
use glommio::net::{TcpListener, TcpStream};
use session::Session;
use std::net::IpAddr;
pub(in crate::engine) use stream::server_tls;
use stream::{read_proxy_header, Prefixed};

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
    /// For the configured listeners, with today's counts read back from the data
    /// directory: a counts file that cannot be read is a storage error, a certificate that
    /// cannot be read a configuration error naming its file.
    pub fn open(config: &Config) -> Result<GatewayShared, EngineError> {
        let today = limits::utc_day(crate::clock::system().unix_ms());
        let dir = crate::gateway::counts::dir(&config.engine.data_dir);
        let counts = crate::gateway::counts::read_all(&dir, today)
            .map_err(|e| EngineError::Storage(e.to_string()))?;
        GatewayShared::new(&config.listeners, counts, today)
            .map_err(|e| EngineError::Config(ConfigError(e)))
    }

    /// For `listeners`, with the counts of `day` (`gateway::counts`); a certificate that
    /// cannot be read is an error naming its file.
    fn new(
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
    pub fn user(&self, user: &str) -> Arc<UserCounter> {
        let mut users = self.users.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(users.entry(user.to_string()).or_default())
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
    Session::new(shard, gateway, peer, named).run(stream).await;
}
