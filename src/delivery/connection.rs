//! One outbound SMTP connection: a glommio TCP stream driving the sans-I/O `smtp::Session`.
//!
//! The shell only moves bytes, applies the session's per-phase timeouts and runs the TLS
//! handshake when the session asks for it (STARTTLS); every protocol decision is the
//! session's.

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
use std::net::SocketAddr;
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
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
    /// During the handshake, or after it failed.
    Gone,
}

impl Stream {
    /// The TCP stream, under TLS or not.
    fn tcp(&self) -> Option<&TcpStream> {
        match self {
            Stream::Plain(s) => Some(s),
            Stream::Tls(s) => Some(s.get_ref().0),
            Stream::Gone => None,
        }
    }

    /// Bounds the reads (then the writes) from now on: glommio arms the stream's one timer
    /// only when an operation has to wait for the socket, and only then, so a read whose
    /// bytes are already there costs no timer at all. `None` (or zero) lifts the bound.
    fn set_read_timeout(&self, t: Option<Duration>) {
        if let Some(tcp) = self.tcp() {
            let _ = tcp.set_read_timeout(t.filter(|t| !t.is_zero()));
        }
    }

    fn set_write_timeout(&self, t: Option<Duration>) {
        if let Some(tcp) = self.tcp() {
            let _ = tcp.set_write_timeout(t.filter(|t| !t.is_zero()));
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

impl Connection {
    /// Connects and runs the session up to "ready for a transaction".
    #[allow(clippy::too_many_arguments)]
    pub async fn open(
        mx: &str,
        addr: SocketAddr,
        helo_name: &str,
        policy: TlsPolicy,
        tls: &Rc<TlsClients>,
        timeouts: Timeouts,
        connect_timeout: Duration,
    ) -> Result<Connection, ConnectError> {
        let stream = timeout(connect_timeout, async { TcpStream::connect(addr).await })
            .await
            .map_err(|e| ConnectError::Unreachable(format!("connect to {addr}: {e}")))?;
        let _ = stream.set_nodelay(true);
        let mut c = Connection {
            stream: Stream::Plain(stream),
            session: Session::new(helo_name, policy, timeouts),
            tls_clients: Rc::clone(tls),
            tls_config: tls.config_for(policy),
            tls: None,
            tls_session: String::new(),
            tls_failed: false,
            lost_why: None,
            mx: mx.to_string(),
            addr,
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

    /// Starts a transaction (behind the one in progress, if pipelining); its results come
    /// from `next_done`, in the order started. On a connection that cannot take it, its
    /// recipients get `ConnectionLost` there.
    pub fn start(&mut self, tx: Transaction) {
        self.started.push_back(tx.rcpts.len());
        self.session.start(tx);
    }

    /// The results of the oldest transaction started and not yet handed out, one per
    /// recipient, in order.
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
        let Stream::Plain(tcp) = std::mem::replace(&mut self.stream, Stream::Gone) else {
            return Err("TLS requested twice".into());
        };
        let name = ServerName::try_from(self.mx.clone())
            .or_else(|_| ServerName::try_from(self.addr.ip().to_string()))
            .map_err(|e| format!("TLS: bad server name {}: {e}", self.mx))?;
        let connector = TlsConnector::from(Arc::clone(&self.tls_config));
        // The handshake has its own bound, not what is left of the last reply's.
        let _ = tcp.set_read_timeout(None);
        let _ = tcp.set_write_timeout(None);
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
            // The reply's deadline, not a fresh timeout per read: one Cell set, no timer
            // unless the read has to wait.
            self.stream.set_read_timeout(Some(left));
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
        self.stream.set_write_timeout(Some(t));
        match self.stream.write_all(&bytes).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                self.lose(format!("write to {} timed out after {t:?}", self.addr));
            }
            Err(e) => self.lose(format!("write to {}: {e}", self.addr)),
        }
        // The buffer is kept for the next write.
        self.out = bytes;
        self.out.clear();
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
mod tests {
    use super::*;
    use crate::smtp::data::Data;
    use std::io::{BufRead, BufReader, Write};

    /// A one-connection scripted SMTP server on loopback; returns what it received.
    fn server(
        script: fn(&str) -> Option<&'static str>,
    ) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut w = conn.try_clone().unwrap();
            let mut r = BufReader::new(conn);
            w.write_all(b"220 test ESMTP\r\n").unwrap();
            let mut seen = String::new();
            let mut in_data = false;
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                seen.push_str(&line);
                let cmd = line.trim_end().to_string();
                line.clear();
                if in_data {
                    if cmd == "." {
                        in_data = false;
                        w.write_all(b"250 2.0.0 queued\r\n").unwrap();
                    }
                    continue;
                }
                if let Some(answer) = script(&cmd) {
                    w.write_all(answer.as_bytes()).unwrap();
                    if cmd == "DATA" && answer.starts_with("354") {
                        in_data = true;
                    }
                    if cmd == "QUIT" {
                        break;
                    }
                }
            }
            seen
        });
        (addr, handle)
    }

    fn script(cmd: &str) -> Option<&'static str> {
        Some(match cmd {
            c if c.starts_with("EHLO") => "250-test\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
            c if c.starts_with("MAIL") => "250 2.1.0 ok\r\n",
            "RCPT TO:<nobody@x.test>" => "550 5.1.1 no such user\r\n",
            c if c.starts_with("RCPT") => "250 2.1.5 ok\r\n",
            "DATA" => "354 go ahead\r\n",
            "RSET" => "250 2.0.0 reset\r\n",
            "QUIT" => "221 bye\r\n",
            _ => "500 what\r\n",
        })
    }

    fn run<T>(f: impl std::future::Future<Output = T>) -> T {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .make()
            .unwrap()
            .run(f)
    }

    #[test]
    fn delivers_two_transactions_on_one_connection() {
        let (addr, server) = server(script);
        let results = run(async move {
            let mut c = Connection::open(
                "mx.x.test",
                addr,
                "mta.test",
                TlsPolicy::Opportunistic,
                &Rc::new(TlsClients::new()),
                Timeouts::default(),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
            let first = c
                .send(Transaction {
                    mail_from: "b@acme.test".into(),
                    rcpts: vec!["a@x.test".into(), "nobody@x.test".into()],
                    data: Data::encode(b"Subject: one\r\n\r\nbody\r\n"),
                })
                .await;
            let second = c
                .send(Transaction {
                    mail_from: "b@acme.test".into(),
                    rcpts: vec!["c@x.test".into()],
                    data: Data::encode(b"Subject: two\n\n.leading dot\n"),
                })
                .await;
            assert_eq!(c.deliveries, 2);
            c.quit().await;
            (first, second)
        });
        let seen = server.join().unwrap();
        let codes = |r: &[RcptResult]| -> Vec<u16> {
            r.iter()
                .map(|x| match x {
                    RcptResult::Reply(r) => r.code,
                    _ => 0,
                })
                .collect()
        };
        assert_eq!(codes(&results.0), vec![250, 550]);
        assert_eq!(codes(&results.1), vec![250]);
        assert!(
            seen.contains("Subject: two\r\n\r\n..leading dot\r\n.\r\n"),
            "{seen}"
        );
        assert!(seen.ends_with("QUIT\r\n"));
    }

    /// Two transactions in flight on one connection: the second's commands go out behind the
    /// first's content, and the results come back in order.
    #[test]
    fn pipelines_the_next_transaction_behind_the_final_dot() {
        let (addr, server) = server(script);
        let (first, second, third) = run(async move {
            let mut c = Connection::open(
                "mx.x.test",
                addr,
                "mta.test",
                TlsPolicy::Disabled,
                &Rc::new(TlsClients::new()),
                Timeouts::default(),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
            let tx = |to: &str, body: &str| Transaction {
                mail_from: "b@acme.test".into(),
                rcpts: vec![to.into()],
                data: Data::encode(body.as_bytes()),
            };
            assert!(c.can_start());
            c.start(tx("a@x.test", "Subject: one\r\n\r\n1\r\n"));
            assert!(c.can_start(), "the server offers PIPELINING");
            c.start(tx("nobody@x.test", "Subject: two\r\n\r\n2\r\n"));
            assert!(!c.can_start(), "two at most");
            let first = c.next_done().await;
            c.start(tx("c@x.test", "Subject: three\r\n\r\n3\r\n"));
            let second = c.next_done().await;
            let third = c.next_done().await;
            assert_eq!((c.deliveries, c.in_progress()), (3, 0));
            assert!(c.is_usable());
            c.quit().await;
            (first, second, third)
        });
        let seen = server.join().unwrap();
        let code = |r: &[RcptResult]| match &r[0] {
            RcptResult::Reply(r) => r.code,
            other => panic!("{other:?}"),
        };
        assert_eq!((code(&first), code(&second), code(&third)), (250, 550, 250));
        let one = seen.find("Subject: one").unwrap();
        let two = seen
            .find("MAIL FROM:<b@acme.test>\r\nRCPT TO:<nobody@x.test>")
            .unwrap();
        assert!(one < two, "{seen}");
        assert!(seen.contains("Subject: three\r\n\r\n3\r\n.\r\n"), "{seen}");
    }

    /// The remote crash of the hostile-input review, through real sockets: EHLO answered
    /// with `250` and, in the same write, another line. The connection is refused, never
    /// handed out as ready.
    #[test]
    fn a_session_closed_in_the_packet_that_made_it_ready_is_not_handed_out() {
        fn answer_with_421(cmd: &str) -> Option<&'static str> {
            cmd.starts_with("EHLO")
                .then_some("250 t\r\n421 4.7.0 bye\r\n")
        }
        fn answer_with_220(cmd: &str) -> Option<&'static str> {
            cmd.starts_with("EHLO").then_some("250 t\r\n220 t\r\n")
        }
        for script in [answer_with_421, answer_with_220] {
            let (addr, server) = server(script);
            let opened = run(async move {
                let tls = Rc::new(TlsClients::new());
                let c = Connection::open(
                    "mx",
                    addr,
                    "mta.test",
                    TlsPolicy::Opportunistic,
                    &tls,
                    Timeouts::default(),
                    Duration::from_secs(2),
                )
                .await;
                c.map(|c| c.is_usable())
            });
            assert!(
                matches!(opened, Err(ConnectError::Refused(_))),
                "{opened:?}"
            );
            drop(server);
        }
    }

    /// A server that dribbles its greeting a byte at a time: each byte arrives well within
    /// the greeting timeout, but the whole reply does not, so the connection gives up at the
    /// timeout instead of whenever the server pleases.
    #[test]
    fn a_reply_is_bounded_as_a_whole_not_per_byte() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            // 200 bytes, 20 ms apart: the whole greeting takes 4 s.
            let greeting = format!("220 {}\r\n", "x".repeat(194));
            for b in greeting.bytes() {
                if conn.write_all(&[b]).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let opened = run(async move {
            let timeouts = Timeouts {
                greeting: Duration::from_millis(500),
                ..Timeouts::default()
            };
            let tls = Rc::new(TlsClients::new());
            Connection::open(
                "mx",
                addr,
                "mta.test",
                TlsPolicy::Disabled,
                &tls,
                timeouts,
                Duration::from_secs(2),
            )
            .await
            .map(|c| c.is_usable())
        });
        let Err(ConnectError::Unreachable(why)) = &opened else {
            panic!("{opened:?}")
        };
        assert!(why.contains("no complete reply"), "{why}");
        server.join().unwrap();
    }

    /// A server that accepts and then says nothing: the read waits on the socket and the
    /// stream's one timer, set to the greeting's deadline, ends it.
    #[test]
    fn a_silent_server_is_given_up_at_the_greeting_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            // Held open, silent, far longer than the timeout; then closed, so a timeout
            // that never fires shows as "closed the connection", not as a hang.
            let _ = done_rx.recv_timeout(Duration::from_secs(10));
            drop(conn);
        });
        let opened = run(async move {
            let timeouts = Timeouts {
                greeting: Duration::from_millis(300),
                ..Timeouts::default()
            };
            let tls = Rc::new(TlsClients::new());
            let c = Connection::open(
                "mx",
                addr,
                "mta.test",
                TlsPolicy::Disabled,
                &tls,
                timeouts,
                Duration::from_secs(2),
            );
            c.await.map(|c| c.is_usable())
        });
        drop(done_tx);
        let Err(ConnectError::Unreachable(why)) = &opened else {
            panic!("{opened:?}")
        };
        assert!(
            why.contains("no complete reply") && why.contains("300ms"),
            "{why}"
        );
        server.join().unwrap();
    }

    /// A receiver that takes the message's DATA and then stops reading: the write fills the
    /// socket's buffers and waits, and the phase's timeout ends it. Every recipient learns
    /// the connection was lost (retried elsewhere), none is marked delivered.
    #[test]
    fn a_receiver_that_stops_reading_is_given_up_at_the_phase_timeout() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut w = conn.try_clone().unwrap();
            let mut r = BufReader::new(conn);
            w.write_all(b"220 test ESMTP\r\n").unwrap();
            let mut line = String::new();
            while r.read_line(&mut line).unwrap_or(0) > 0 {
                let cmd = line.trim_end().to_string();
                line.clear();
                let answer = match cmd.as_str() {
                    c if c.starts_with("EHLO") => "250-test\r\n250 PIPELINING\r\n",
                    "DATA" => "354 go ahead\r\n",
                    _ => "250 ok\r\n",
                };
                w.write_all(answer.as_bytes()).unwrap();
                if cmd == "DATA" {
                    break;
                }
            }
            // Reads nothing more for far longer than the timeout.
            let _ = done_rx.recv_timeout(Duration::from_secs(10));
        });
        let results = run(async move {
            let timeouts = Timeouts {
                data_done: Duration::from_millis(300),
                ..Timeouts::default()
            };
            let tls = Rc::new(TlsClients::new());
            let mut c = Connection::open(
                "mx",
                addr,
                "mta.test",
                TlsPolicy::Disabled,
                &tls,
                timeouts,
                Duration::from_secs(2),
            )
            .await
            .unwrap();
            // Far more than loopback's socket buffers hold.
            let mut message = b"Subject: big\r\n\r\n".to_vec();
            for _ in 0..(64 << 20) / 64 {
                message.extend_from_slice(&[b'x'; 62]);
                message.extend_from_slice(b"\r\n");
            }
            c.send(Transaction {
                mail_from: "b@acme.test".into(),
                rcpts: vec!["a@x.test".into()],
                data: Data::encode(&message),
            })
            .await
        });
        drop(done_tx);
        let [RcptResult::ConnectionLost(why)] = &results[..] else {
            panic!("{results:?}")
        };
        assert!(
            why.contains("write to") && why.contains("timed out"),
            "{why}"
        );
        server.join().unwrap();
    }

    #[test]
    fn unreachable_and_refused() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let (addr2, server2) = server(|_| Some("554 5.7.1 go away\r\n"));
        let (a, b) = run(async move {
            let tls = Rc::new(TlsClients::new());
            let open = |addr| {
                Connection::open(
                    "mx",
                    addr,
                    "mta.test",
                    TlsPolicy::Opportunistic,
                    &tls,
                    Timeouts::default(),
                    Duration::from_secs(2),
                )
            };
            (open(addr).await.err(), open(addr2).await.err())
        });
        assert!(matches!(a, Some(ConnectError::Unreachable(_))), "{a:?}");
        // EHLO refused falls back to HELO, refused too.
        assert!(matches!(b, Some(ConnectError::Refused(_))), "{b:?}");
        server2.join().unwrap();
    }
}
