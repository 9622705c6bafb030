//! One blocking connection to Redis: TCP or TLS (`rediss://`), AUTH and SELECT, commands out
//! and replies in through the bounded codec of `resp`. Only the cluster's own threads use it
//! (never a shard's executor), so a slow or dead Redis costs them time and the shards none.

use super::resp::{encode_command, Parser, Value, REPLY_BYTES_MAX};
use crate::config::cluster::Cluster;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// A connection attempt gives up after this long; so does a command waiting for its reply.
pub const IO_TIMEOUT: Duration = Duration::from_secs(1);

/// Commands and bytes exchanged with Redis by this node, both ways (for `/metrics` and the
/// cost per delivered message in docs/cluster.md).
#[derive(Debug, Default)]
pub struct Traffic {
    pub commands: AtomicU64,
    pub bytes_out: AtomicU64,
    pub bytes_in: AtomicU64,
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

pub struct Conn {
    stream: Box<dyn Stream>,
    tcp: TcpStream,
    parser: Parser,
    traffic: Arc<Traffic>,
    out: Vec<u8>,
}

impl Conn {
    /// Connects to the first server that answers as the master (`cluster.redis`, then
    /// `cluster.failover` in order), authenticated, its database selected.
    pub fn open_master(c: &Cluster, traffic: &Arc<Traffic>) -> Result<Conn, String> {
        let mut why = Vec::new();
        for (host, port) in c.servers() {
            match Conn::open(c, host, port, traffic).and_then(|mut conn| {
                if c.failover.is_empty() {
                    return Ok(conn);
                }
                match conn.call(&[b"ROLE"])? {
                    Value::Array(items)
                        if matches!(items.first(), Some(Value::Bulk(r)) if r == b"master") =>
                    {
                        Ok(conn)
                    }
                    _ => Err(format!("redis {host}:{port}: not the master")),
                }
            }) {
                Ok(conn) => return Ok(conn),
                Err(e) => why.push(e),
            }
        }
        Err(why.join("; "))
    }

    /// Connects to `host:port`, authenticates and selects the configured database.
    pub fn open(
        c: &Cluster,
        host: &str,
        port: u16,
        traffic: &Arc<Traffic>,
    ) -> Result<Conn, String> {
        let addrs = (host, port)
            .to_socket_addrs()
            .map_err(|e| format!("redis {host}:{port}: {e}"))?;
        let mut last = format!("redis {host}:{port}: no address");
        let mut tcp = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, IO_TIMEOUT) {
                Ok(s) => {
                    tcp = Some(s);
                    break;
                }
                Err(e) => last = format!("redis {a}: {e}"),
            }
        }
        let tcp = tcp.ok_or(last)?;
        tcp.set_nodelay(true).ok();
        tcp.set_read_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        tcp.set_write_timeout(Some(IO_TIMEOUT))
            .map_err(|e| e.to_string())?;
        let plain = tcp.try_clone().map_err(|e| e.to_string())?;
        let stream: Box<dyn Stream> = if c.tls {
            let config = tls_config(c)?;
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| format!("redis host {host:?}: {e}"))?;
            let session = rustls::ClientConnection::new(config, name)
                .map_err(|e| format!("redis TLS: {e}"))?;
            Box::new(rustls::StreamOwned::new(session, plain))
        } else {
            Box::new(plain)
        };
        let mut conn = Conn {
            stream,
            tcp,
            parser: Parser::new(),
            traffic: Arc::clone(traffic),
            out: Vec::new(),
        };
        if let Some(password) = &c.password {
            let reply = match &c.username {
                Some(user) => conn.call(&[b"AUTH", user.as_bytes(), password.as_bytes()])?,
                None => conn.call(&[b"AUTH", password.as_bytes()])?,
            };
            if let Value::Error(e) = reply {
                return Err(format!("redis AUTH refused: {}", printable(&e)));
            }
        }
        if c.db != 0 {
            let db = c.db.to_string();
            if let Value::Error(e) = conn.call(&[b"SELECT", db.as_bytes()])? {
                return Err(format!("redis SELECT {db}: {}", printable(&e)));
            }
        }
        Ok(conn)
    }

    /// Sends one command and waits for its reply (an error reply is a `Value::Error`, the
    /// caller's to judge; a transport or protocol failure is `Err`: drop the connection).
    pub fn call(&mut self, args: &[&[u8]]) -> Result<Value, String> {
        self.send(args)?;
        self.read_reply()
    }

    /// Sends `commands` in one write and reads their replies, in order (pipelining: one
    /// round trip for all of them).
    pub fn pipeline(&mut self, commands: &[Vec<Vec<u8>>]) -> Result<Vec<Value>, String> {
        self.out.clear();
        for c in commands {
            let args: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
            encode_command(&args, &mut self.out);
        }
        self.stream
            .write_all(&self.out)
            .and_then(|_| self.stream.flush())
            .map_err(|e| format!("redis write: {e}"))?;
        self.traffic
            .commands
            .fetch_add(commands.len() as u64, Ordering::Relaxed);
        self.traffic
            .bytes_out
            .fetch_add(self.out.len() as u64, Ordering::Relaxed);
        let mut replies = Vec::with_capacity(commands.len());
        for _ in commands {
            replies.push(self.read_reply()?);
        }
        Ok(replies)
    }

    /// Sends one command without waiting (SUBSCRIBE's confirmations arrive as replies).
    pub fn send(&mut self, args: &[&[u8]]) -> Result<(), String> {
        self.out.clear();
        encode_command(args, &mut self.out);
        self.stream
            .write_all(&self.out)
            .and_then(|_| self.stream.flush())
            .map_err(|e| format!("redis write: {e}"))?;
        self.traffic.commands.fetch_add(1, Ordering::Relaxed);
        self.traffic
            .bytes_out
            .fetch_add(self.out.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    /// The next reply, waiting at most `IO_TIMEOUT` for each read.
    pub fn read_reply(&mut self) -> Result<Value, String> {
        self.read_reply_within(IO_TIMEOUT)?
            .ok_or_else(|| "redis: no reply within the timeout".to_string())
    }

    /// The next reply if one arrives within `wait` (a subscriber's poll); `Ok(None)` if not.
    pub fn read_reply_within(&mut self, wait: Duration) -> Result<Option<Value>, String> {
        let mut buf = [0u8; 16 * 1024];
        self.tcp
            .set_read_timeout(Some(wait.max(Duration::from_millis(1))))
            .map_err(|e| e.to_string())?;
        loop {
            if let Some(v) = self.parser.next_reply().map_err(|e| e.to_string())? {
                return Ok(Some(v));
            }
            if self.parser.buffered() > REPLY_BYTES_MAX {
                return Err(format!("redis: a reply past {REPLY_BYTES_MAX} bytes"));
            }
            match self.stream.read(&mut buf) {
                Ok(0) => return Err("redis closed the connection".into()),
                Ok(n) => {
                    self.traffic.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
                    self.parser.push(&buf[..n]);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    return Ok(None)
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("redis read: {e}")),
            }
        }
    }
}

/// A reply's text for a log line: printable ASCII, at most 200 characters.
pub fn printable(s: &str) -> String {
    s.chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(200)
        .collect()
}

fn tls_config(c: &Cluster) -> Result<Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let mut roots = rustls::RootCertStore::empty();
    match &c.tls_ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
                roots
                    .add(cert)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            if roots.is_empty() {
                return Err(format!("{}: no certificate in it", path.display()));
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}
