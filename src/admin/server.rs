//! A small blocking HTTP/1.1 server on threads of its own, for the admin API and the
//! one-click endpoint: nothing it does runs on, or waits for, a shard. One thread accepts;
//! each connection gets a thread, at most `CONNECTIONS_MAX` at once (one more is answered 503
//! and closed). Requests on a connection are served one after another (keep-alive), each
//! within `IO_TIMEOUT`.

use super::http::{parse_head, Method, Request, Response, HEAD_BYTES_MAX};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

/// Connections served at once; each holds a thread and at most `HEAD_BYTES_MAX` of buffer.
pub const CONNECTIONS_MAX: usize = 64;
/// A connection that sends nothing, or takes nothing, for this long is closed.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests served on one connection before it is closed.
pub const REQUESTS_PER_CONNECTION_MAX: u32 = 1000;

/// What serves the requests. `body` yields exactly the request's Content-Length bytes (or
/// fewer if the client goes); what the handler leaves unread is read and dropped.
pub trait Handler: Send + Sync + 'static {
    fn handle(&self, req: &Request, body: &mut dyn Read, peer: SocketAddr) -> Response;
    /// Called by the accepting thread every `ACCEPT_POLL` or so, for housekeeping.
    fn tick(&self) {}
}

trait Stream: Read + Write + Send {}
impl<T: Read + Write + Send> Stream for T {}

/// A running server; it stops when `stop` is set (within `ACCEPT_POLL`).
pub struct Server {
    pub local_addr: SocketAddr,
    accept: Option<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
}

const ACCEPT_POLL: Duration = Duration::from_millis(200);

impl Server {
    /// Binds `listen` and serves on a thread named `name`.
    pub fn start(
        name: &str,
        listen: SocketAddr,
        tls: Option<Arc<rustls::ServerConfig>>,
        handler: Arc<dyn Handler>,
    ) -> io::Result<Server> {
        let listener = TcpListener::bind(listen)?;
        let local_addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread_name = name.to_string();
        let accept = std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || accept_loop(listener, tls, handler, flag, thread_name))?;
        Ok(Server {
            local_addr,
            accept: Some(accept),
            stop,
        })
    }

    /// Stops accepting; connections being served finish on their own threads.
    pub fn stop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: Arc<dyn Handler>,
    stop: Arc<AtomicBool>,
    name: String,
) {
    let open = Arc::new(AtomicUsize::new(0));
    while !stop.load(Ordering::Relaxed) {
        handler.tick();
        if !readable(&listener, ACCEPT_POLL) {
            continue;
        }
        let (stream, peer) = match listener.accept() {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: wait a little rather than spin.
                tracing::warn!("{name}: accept: {e}");
                std::thread::sleep(ACCEPT_POLL);
                continue;
            }
        };
        let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_write_timeout(Some(IO_TIMEOUT));
        let _ = stream.set_nodelay(true);
        if open.fetch_add(1, Ordering::SeqCst) >= CONNECTIONS_MAX {
            open.fetch_sub(1, Ordering::SeqCst);
            let mut out = Vec::new();
            Response::text(503, "too many connections").write(false, true, &mut out);
            let mut s = stream;
            let _ = s.write_all(&out);
            continue;
        }
        let (tls, handler, open2) = (tls.clone(), Arc::clone(&handler), Arc::clone(&open));
        let spawned = std::thread::Builder::new()
            .name(format!("{name}-conn"))
            .spawn(move || {
                let _ = serve(stream, peer, tls, &*handler);
                open2.fetch_sub(1, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            open.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!("{name}: cannot start a connection thread: {e}");
        }
    }
}

/// Waits up to `timeout` for a connection to accept.
fn readable(listener: &TcpListener, timeout: Duration) -> bool {
    let mut fds = [libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: one valid pollfd for the length given; the descriptor outlives the call.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, timeout.as_millis() as libc::c_int) };
    n > 0 && fds[0].revents & libc::POLLIN != 0
}

fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<rustls::ServerConfig>>,
    handler: &dyn Handler,
) -> io::Result<()> {
    let mut stream: Box<dyn Stream> = match tls {
        Some(config) => {
            let conn = rustls::ServerConnection::new(config).map_err(io::Error::other)?;
            Box::new(rustls::StreamOwned::new(conn, tcp))
        }
        None => Box::new(tcp),
    };
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut out = Vec::new();
    for _ in 0..REQUESTS_PER_CONNECTION_MAX {
        // Read until a whole head is in.
        let (req, used) = loop {
            match parse_head(&buf) {
                Ok(Some(done)) => break done,
                Ok(None) => {}
                Err(e) => {
                    out.clear();
                    e.response().write(false, true, &mut out);
                    return stream.write_all(&out);
                }
            }
            let mut chunk = [0u8; 4096];
            let want = chunk
                .len()
                .min(HEAD_BYTES_MAX + 1 - buf.len().min(HEAD_BYTES_MAX));
            let n = stream.read(&mut chunk[..want])?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        buf.drain(..used);
        // The body: what is already buffered first, then the stream, never past its length.
        let mut body = Body {
            buffered: &mut buf,
            stream: &mut *stream,
            left: req.content_length,
        };
        let response = handler.handle(&req, &mut body, peer);
        // Whatever the handler did not read goes, within a bound; a client that sent far
        // more than it will wait for gets the connection closed instead.
        let unread = body.left;
        let mut close = req.close;
        if unread > 0 {
            if unread <= 1 << 20 {
                io::copy(&mut body, &mut io::sink())?;
            } else {
                close = true;
            }
        }
        out.clear();
        response.write(req.method == Method::Head, close, &mut out);
        stream.write_all(&out)?;
        stream.flush()?;
        if close {
            return Ok(());
        }
    }
    Ok(())
}

/// A request body: the bytes read with the head first, then the stream.
struct Body<'a> {
    buffered: &'a mut Vec<u8>,
    stream: &'a mut dyn Stream,
    left: u64,
}

impl Read for Body<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 || out.is_empty() {
            return Ok(0);
        }
        let cap = out.len().min(self.left.min(usize::MAX as u64) as usize);
        let n = if !self.buffered.is_empty() {
            let n = cap.min(self.buffered.len());
            out[..n].copy_from_slice(&self.buffered[..n]);
            self.buffered.drain(..n);
            n
        } else {
            self.stream.read(&mut out[..cap])?
        };
        self.left -= n as u64;
        Ok(n)
    }
}
