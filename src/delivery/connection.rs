//! One outbound SMTP connection: a glommio TCP stream driving the sans-I/O `smtp::Session`.
//!
//! The shell only moves bytes, applies the session's per-phase timeouts and runs the TLS
//! handshake when the session asks for it (STARTTLS); every protocol decision is the
//! session's.

use super::deadline::Deadlined;
use super::tls::TlsClients;
use crate::buffers;
use crate::smtp::session::{
    Action, CloseReason, RcptResult, Session, Timeouts, TlsPolicy, Transaction,
};
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use futures_rustls::client::TlsStream;
use futures_rustls::TlsConnector;
use glommio::net::TcpStream;
use glommio::timer::timeout;
use rustls::pki_types::ServerName;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Bytes read from the socket at a time.
pub const READ_CHUNK_BYTES: usize = 16 << 10;

/// Why a connection could not be set up (or ended): the text goes to the delivery log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectError {
    /// TCP failed or timed out.
    Unreachable(String),
    /// The server answered but refused us (greeting, EHLO) or broke the protocol.
    Refused(CloseReason),
    /// The STARTTLS handshake failed.
    Tls(String),
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnectError::Unreachable(why) | ConnectError::Tls(why) => f.write_str(why),
            ConnectError::Refused(CloseReason::ServiceClosing(r) | CloseReason::Refused(r)) => {
                write!(f, "{r}")
            }
            ConnectError::Refused(other) => write!(f, "{other:?}"),
        }
    }
}

enum Stream {
    Plain(Deadlined),
    Tls(Box<TlsStream<Deadlined>>),
    /// During the handshake, or after it failed.
    Gone,
}

impl Stream {
    /// The TCP stream, under TLS or not.
    fn tcp(&mut self) -> Option<&mut Deadlined> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(s) => Some(s.get_mut().0),
            Stream::Gone => None,
        }
    }

    /// Reads from now on must complete by `by`, however the peer trickles its bytes (under
    /// TLS too: the bound is on every read of the TCP stream, not on a decrypted record).
    fn read_by(&mut self, by: Instant) {
        if let Some(tcp) = self.tcp() {
            tcp.read_by(Some(by));
        }
    }

    /// Writes from now on must complete by `by`, however slowly the peer reads.
    fn write_by(&mut self, by: Instant) {
        if let Some(tcp) = self.tcp() {
            tcp.write_by(Some(by));
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf).await,
            Stream::Tls(s) => s.read(buf).await,
            Stream::Gone => Ok(0),
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Stream::Plain(s) => s.write_all(bytes).await,
            Stream::Tls(s) => {
                s.write_all(bytes).await?;
                s.flush().await
            }
            Stream::Gone => Err(std::io::Error::from(std::io::ErrorKind::NotConnected)),
        }
    }

    async fn close(&mut self) {
        match self {
            Stream::Plain(s) => {
                let _ = s.close().await;
            }
            Stream::Tls(s) => {
                let _ = s.close().await;
            }
            Stream::Gone => {}
        }
    }
}

/// Handshakes get this long.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Connection {
    stream: Stream,
    session: Session,
    tls_clients: Rc<TlsClients>,
    tls_config: Arc<rustls::ClientConfig>,
    /// What TLS negotiated and whether the certificate verified, for the delivery log.
    pub tls: Option<String>,
    /// What TLS negotiated: protocol version and cipher suite.
    tls_session: String,
    /// The TLS handshake failed (the caller may retry in plaintext).
    pub tls_failed: bool,
    /// Why the connection was lost, for the delivery log.
    lost_why: Option<String>,
    pub mx: String,
    pub addr: SocketAddr,
    /// The egress source's address it is bound to (none: the system's choice).
    pub local: Option<IpAddr>,
    /// The TLS policy the connection was made under (the cache key of a parked one).
    pub policy: TlsPolicy,
    pub deliveries: u32,
    buf: Vec<u8>,
    /// Bytes the session asked to send in one pass, written together: a message's content
    /// and the next transaction's commands behind it go out in one write.
    out: Vec<u8>,
    /// Results of transactions done and not yet handed out, oldest first; and the recipient
    /// count of each transaction started and not yet handed out.
    done: std::collections::VecDeque<Vec<RcptResult>>,
    started: std::collections::VecDeque<usize>,
    closed: Option<CloseReason>,
    /// The scope whose worker parked this connection (`delivery::endpoints`): it counts
    /// among that scope's connections until another scope's worker takes it or it closes.
    pub parked_by: Option<String>,
}

/// How long `connect_from` sleeps between looks at a connect in progress, first and at most:
/// a loopback or LAN connect is seen at once, a remote one within a round trip or so.
const CONNECT_POLL_FIRST: Duration = Duration::from_micros(200);
const CONNECT_POLL_MAX: Duration = Duration::from_millis(20);

/// A TCP connection to `addr` from `local` (an egress source's address). glommio connects
/// only from the address the kernel picks, so the socket is made here: bound to `local`
/// with `IP_BIND_ADDRESS_NO_PORT` (the port is picked at connect, per destination, so a
/// source's ports last as long as the system address's), its connect started without
/// blocking and looked at (writable, then its error) with short sleeps until `wait`, and then
/// handed to glommio as a stream.
async fn connect_from(
    local: IpAddr,
    addr: SocketAddr,
    wait: Duration,
) -> std::io::Result<TcpStream> {
    use socket2::{Domain, Protocol, SockAddr, Socket, Type};
    use std::io::{Error, ErrorKind};
    use std::os::fd::AsRawFd;
    if local.is_ipv4() != addr.is_ipv4() {
        return Err(Error::new(
            ErrorKind::InvalidInput,
            "the source and the destination are of different address families",
        ));
    }
    let domain = if addr.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let socket = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?;
    let fd = socket.as_raw_fd();
    let one: libc::c_int = 1;
    // Best effort: without it, bind picks the port (fine, only fewer ports in all).
    // SAFETY: a valid socket, an int option of the size given.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    socket.bind(&SockAddr::from(SocketAddr::new(local, 0)))?;
    socket.set_nonblocking(true)?;
    match socket.connect(&SockAddr::from(addr)) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let deadline = Instant::now() + wait;
    let mut pause = CONNECT_POLL_FIRST;
    loop {
        let mut pfd = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one pollfd, no wait.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        if n < 0 {
            let e = Error::last_os_error();
            if e.kind() != ErrorKind::Interrupted {
                return Err(e);
            }
        } else if n > 0 {
            break;
        }
        if Instant::now() >= deadline {
            return Err(Error::new(ErrorKind::TimedOut, "connection timed out"));
        }
        glommio::timer::sleep(pause).await;
        pause = (pause * 2).min(CONNECT_POLL_MAX);
    }
    if let Some(e) = socket.take_error()? {
        return Err(e);
    }
    // As glommio's own sockets are: its reads and writes go through io_uring.
    socket.set_nonblocking(false)?;
    Ok(TcpStream::from(socket))
}

impl Connection {
    /// Connects (from `local`, an egress source's address, if given) and runs the session up
    /// to "ready for a transaction".
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        mx: &str,
        addr: SocketAddr,
        local: Option<IpAddr>,
        helo_name: &str,
        policy: TlsPolicy,
        tls: &Rc<TlsClients>,
        timeouts: Timeouts,
        connect_timeout: Duration,
    ) -> Result<Connection, ConnectError> {
        let stream = match local {
            None => timeout(connect_timeout, async { TcpStream::connect(addr).await })
                .await
                .map_err(|e| ConnectError::Unreachable(format!("connect to {addr}: {e}")))?,
            Some(local) => connect_from(local, addr, connect_timeout)
                .await
                .map_err(|e| {
                    ConnectError::Unreachable(format!("connect to {addr} from {local}: {e}"))
                })?,
        };
        let _ = stream.set_nodelay(true);
        let mut c = Connection {
            stream: Stream::Plain(Deadlined::new(stream)),
            session: Session::new(helo_name, policy, timeouts),
            tls_clients: Rc::clone(tls),
            tls_config: tls.config_for(policy),
            tls: None,
            tls_session: String::new(),
            tls_failed: false,
            lost_why: None,
            mx: mx.to_string(),
            addr,
            local,
            policy,
            deliveries: 0,
            buf: vec![0u8; READ_CHUNK_BYTES],
            out: Vec::new(),
            done: std::collections::VecDeque::new(),
            started: std::collections::VecDeque::new(),
            closed: None,
            parked_by: None,
        };
        match c.drive().await {
            Step::Ready => Ok(c),
            Step::Closed(reason) => Err(ConnectError::Refused(reason)),
            Step::Lost(why) if c.tls_failed => Err(ConnectError::Tls(why)),
            Step::Lost(why) => Err(ConnectError::Unreachable(why)),
            Step::Done => Err(ConnectError::Unreachable(
                "transaction before one was started".into(),
            )),
        }
    }

    /// Where it goes from and to (`delivery::endpoints`).
    pub fn peer(&self) -> crate::delivery::endpoints::Peer {
        crate::delivery::endpoints::Peer {
            local: self.local,
            remote: self.addr,
        }
    }

    /// True while the connection can take another transaction.
    pub fn is_usable(&self) -> bool {
        self.closed.is_none() && self.session.is_ready()
    }

    /// True when another transaction can start now: the connection is idle, or the server
    /// offers PIPELINING and one transaction is in progress (`Session::can_pipeline`).
    pub fn can_start(&self) -> bool {
        self.closed.is_none() && (self.session.is_ready() || self.session.can_pipeline())
    }

    /// Transactions started and not yet handed out by `next_done`.
    pub fn in_progress(&self) -> usize {
        self.started.len()
    }

    /// Whether transactions started from now on go with BDAT where the receiver offers
    /// CHUNKING (`[delivery] chunking`).
    pub fn set_chunking(&mut self, on: bool) {
        self.session.set_chunking(on);
    }

    /// Starts a transaction (behind the one in progress, if pipelining); its results come
    /// from `next_done`, in the order started. On a connection that cannot take it, its
    /// recipients get `ConnectionLost` there.
    pub fn start(&mut self, tx: Transaction) {
        self.started.push_back(tx.rcpts.len());
        self.session.start(tx);
    }

    /// The results of the oldest transaction started and not yet handed out, one per
    /// recipient, in order. Bytes of a later transaction may still wait to be written when
    /// it returns (so that the next transaction started joins their write): callers go on
    /// calling it until nothing is in progress, as the worker does before it parks, quits
    /// or drops a connection.
    pub async fn next_done(&mut self) -> Vec<RcptResult> {
        let Some(&n) = self.started.front() else {
            return Vec::new();
        };
        loop {
            if let Some(results) = self.done.pop_front() {
                self.started.pop_front();
                self.deliveries += 1;
                if results.len() != n {
                    return vec![RcptResult::ConnectionLost("no result".into()); n];
                }
                return results;
            }
            match self.drive().await {
                Step::Done => {}
                // The session reports a transaction's results before it closes; if we get
                // here without them, nothing was decided.
                Step::Ready | Step::Closed(_) | Step::Lost(_) => {
                    if self.done.is_empty() {
                        self.started.pop_front();
                        return vec![RcptResult::ConnectionLost("connection closed".into()); n];
                    }
                }
            }
        }
    }

    /// Sends one transaction and waits for its results (nothing else in progress).
    pub async fn send(&mut self, tx: Transaction) -> Vec<RcptResult> {
        let n = tx.rcpts.len();
        if !self.is_usable() || !self.started.is_empty() {
            return vec![RcptResult::ConnectionLost("connection not usable".into()); n];
        }
        self.start(tx);
        self.next_done().await
    }

    /// The connection, parked by another site's worker, now serves `mx` (another name for
    /// the same address): the delivery log names it, and a certificate is judged against it.
    pub fn retarget(&mut self, mx: &str) {
        if self.mx == mx {
            return;
        }
        self.mx = mx.to_string();
        if let Stream::Tls(tls) = &self.stream {
            let (_, conn) = tls.get_ref();
            let verified = self.verified(conn.peer_certificates());
            self.tls = Some(format!("{} {verified}", self.tls_session));
        }
    }

    /// QUIT, best effort and bounded.
    pub async fn quit(mut self) {
        // Callers collect every result first (`next_done` until nothing is in progress):
        // results still here would make `drive` return before QUIT is written.
        debug_assert!(self.done.is_empty(), "quit with results not collected");
        self.done.clear();
        if self.is_usable() {
            self.session.quit();
            let _ = timeout(Duration::from_secs(5), async {
                let _ = self.drive().await;
                Ok(())
            })
            .await;
        }
        let _ = self.stream.close().await;
    }

    /// Upgrades the plaintext stream after STARTTLS's 220.
    async fn handshake(&mut self) -> Result<(), String> {
        let Stream::Plain(mut tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err("TLS requested twice".into());
        };
        let name = ServerName::try_from(self.mx.clone())
            .or_else(|_| ServerName::try_from(self.addr.ip().to_string()))
            .map_err(|e| format!("TLS: bad server name {}: {e}", self.mx))?;
        let connector = TlsConnector::from(Arc::clone(&self.tls_config));
        // The handshake has its own bound, not what is left of the last reply's.
        tcp.read_by(None);
        tcp.write_by(None);
        let tls = timeout(TLS_HANDSHAKE_TIMEOUT, async {
            connector.connect(name, tcp).await.map_err(Into::into)
        })
        .await
        .map_err(|e| format!("TLS handshake with {} failed: {e}", self.addr))?;
        let (_, conn) = tls.get_ref();
        let version = conn
            .protocol_version()
            .map_or("TLS".into(), |v| format!("{v:?}"));
        let suite = conn
            .negotiated_cipher_suite()
            .map_or(String::new(), |c| format!("{:?}", c.suite()));
        self.tls_session = format!("{version} {suite}");
        let verified = self.verified(conn.peer_certificates());
        self.tls = Some(format!("{} {verified}", self.tls_session));
        self.stream = Stream::Tls(Box::new(tls));
        Ok(())
    }

    /// Whether the server's certificate verifies for the MX name served now, as the delivery
    /// log says it.
    fn verified(&self, certs: Option<&[rustls::pki_types::CertificateDer<'_>]>) -> String {
        match certs {
            Some(certs) => match self.tls_clients.verification(&self.mx, certs) {
                Ok(()) => "certificate verified".to_string(),
                Err(why) => format!("certificate not verified: {why}"),
            },
            None => "no certificate".to_string(),
        }
    }

    /// Performs the session's actions until something the caller must know happens. Every
    /// action the session has queued is performed before deciding, so a server that makes the
    /// session ready and closes it in the same packet yields `Closed`, never `Ready`.
    async fn drive(&mut self) -> Step {
        let mut ready = false;
        // The deadline of the reply awaited now, and which reply that is: a server that
        // dribbles bytes cannot stretch one reply past its phase's timeout.
        let mut awaiting: Option<(u64, Instant)> = None;
        loop {
            while let Some(action) = self.session.next_action() {
                match action {
                    // A session that closed since it queued these bytes (a protocol error
                    // behind a 354) must not have them sent: the content above all.
                    Action::Send(_) if self.session.is_closed() => {}
                    // A message's content is written from the buffer it was rendered into;
                    // whichever buffer is left over goes back to the pool.
                    Action::Send(bytes) if self.out.is_empty() => {
                        buffers::give(std::mem::replace(&mut self.out, bytes));
                    }
                    Action::Send(bytes) => {
                        self.out.extend_from_slice(&bytes);
                        buffers::give(bytes);
                    }
                    Action::StartTls => {
                        // Nothing is queued behind STARTTLS (the session sends it alone),
                        // but what is pending goes first should that ever change.
                        self.flush_out().await;
                        match self.handshake().await {
                            Ok(()) => self.session.tls_established(),
                            Err(why) => {
                                self.tls_failed = true;
                                self.lose(why);
                            }
                        }
                    }
                    Action::Ready => ready = true,
                    Action::Done(results) => self.done.push_back(results),
                    Action::Close(reason) => {
                        self.closed.get_or_insert(reason);
                    }
                }
            }
            if self.session.is_closed() {
                self.out.clear();
            }
            // A transaction's results come first: the session reports them before it closes.
            // They also go back before the bytes queued with them (the next transaction's
            // content, after its 354 came in the same packet) are written: the worker may
            // start the one after now, and its commands then leave in the same write, one
            // write and one reply packet a message instead of two. What waits in `out`
            // belongs to a transaction still in progress, so the next call writes it.
            if !self.done.is_empty() {
                return Step::Done;
            }
            if !self.out.is_empty() {
                self.flush_out().await;
                // A failed write has consequences queued in the session: handle them first.
                continue;
            }
            if let Some(reason) = &self.closed {
                return Step::Closed(reason.clone());
            }
            if self.session.is_closed() {
                self.closed
                    .get_or_insert(CloseReason::Protocol("connection lost".into()));
                let why = self.lost_why.take();
                return Step::Lost(
                    why.unwrap_or_else(|| format!("connection to {} lost", self.addr)),
                );
            }
            if ready && self.session.is_ready() {
                return Step::Ready;
            }
            let seen = self.session.replies_received();
            let deadline = match awaiting {
                Some((n, deadline)) if n == seen => deadline,
                _ => {
                    let deadline = Instant::now() + self.session.timeout();
                    awaiting = Some((seen, deadline));
                    deadline
                }
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                let t = self.session.timeout();
                self.lose(format!(
                    "timed out: no complete reply from {} within {t:?}",
                    self.addr
                ));
                continue;
            }
            // The reply's deadline, not a fresh timeout per read: no timer unless the read
            // has to wait, and then one for what is left.
            self.stream.read_by(deadline);
            let read = self.stream.read(&mut self.buf).await;
            match read {
                Ok(0) => self.lose(format!("{} closed the connection", self.addr)),
                Ok(n) => {
                    let (session, buf) = (&mut self.session, &self.buf);
                    session.receive(&buf[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    let t = self.session.timeout();
                    self.lose(format!(
                        "timed out: no complete reply from {} within {t:?}",
                        self.addr
                    ));
                }
                Err(e) => self.lose(format!("read from {}: {e}", self.addr)),
            }
        }
    }

    /// Writes what the session asked to send, bounded by the current phase's timeout.
    async fn flush_out(&mut self) {
        if self.out.is_empty() {
            return;
        }
        let bytes = std::mem::take(&mut self.out);
        let t = self.session.timeout();
        self.stream.write_by(Instant::now() + t);
        match self.stream.write_all(&bytes).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                self.lose(format!("write to {} timed out after {t:?}", self.addr));
            }
            Err(e) => self.lose(format!("write to {}: {e}", self.addr)),
        }
        // Written: the buffer goes back to the pool, so a connection between writes (idle,
        // parked) holds none.
        buffers::give(bytes);
    }

    /// The connection is gone: the session learns why, and so does the caller.
    fn lose(&mut self, why: String) {
        self.session.connection_lost(&why);
        self.lost_why = Some(why);
    }
}

enum Step {
    Ready,
    /// Results are waiting in `done`.
    Done,
    Closed(CloseReason),
    Lost(String),
}

#[cfg(test)]
mod tests;
