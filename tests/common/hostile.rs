//! A hostile SMTP receiver on loopback for tests: every connection is answered by a script
//! that sees each event (the connection, each command line, each message's data) and says
//! exactly which bytes go back, in which pieces, and whether to hang up or stall. It records
//! what it received, so a test can check that what reached it is well-formed and what was
//! meant. Stopped (threads joined) by `stop` or on drop; every wait is bounded.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the server reacts to.
#[derive(Debug)]
pub enum Event<'a> {
    /// A client connected: time for a greeting.
    Connected,
    /// One command line, without its CRLF.
    Command(&'a str),
    /// A message's DATA content up to (not including) the final `.` line, as sent.
    Data(&'a [u8]),
}

/// What the server does, in order.
#[derive(Debug, Clone)]
pub enum Act {
    /// These bytes in one write.
    Send(Vec<u8>),
    /// These bytes one at a time, `gap` apart.
    Dribble(Vec<u8>, Duration),
    /// Wait (bounded by the server's stop).
    Stall(Duration),
    /// Hang up.
    Close,
}

pub fn send(s: &str) -> Act {
    Act::Send(s.as_bytes().to_vec())
}

pub type Script = Arc<dyn Fn(&Event<'_>) -> Vec<Act> + Send + Sync>;

/// What the server saw.
#[derive(Default, Debug)]
pub struct Seen {
    pub connections: usize,
    pub commands: Vec<String>,
    /// Every DATA content received, as sent (still dot-stuffed).
    pub data: Vec<Vec<u8>>,
}

pub struct Hostile {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Seen>>,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

/// Longest a connection thread runs: bounds every test that forgets to stop the server.
pub const CONNECTION_LIFETIME_MAX: Duration = Duration::from_secs(120);
/// Longest a single line (or DATA) the server buffers.
pub const BUFFER_BYTES_MAX: usize = 64 << 20;

impl Hostile {
    /// A server on 127.0.0.1 (any port) answering with `script`.
    pub fn start(script: impl Fn(&Event<'_>) -> Vec<Act> + Send + Sync + 'static) -> Hostile {
        Hostile::start_on("127.0.0.1:0".parse().unwrap(), Arc::new(script))
    }

    pub fn start_on(addr: SocketAddr, script: Script) -> Hostile {
        assert!(addr.ip().is_loopback(), "tests talk to loopback only");
        let listener = TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Seen::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, stop2) = (Arc::clone(&seen), Arc::clone(&stop));
        let acceptor = std::thread::spawn(move || {
            let mut handlers = Vec::new();
            while !stop2.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        seen2.lock().unwrap().connections += 1;
                        let (seen, stop, script) =
                            (Arc::clone(&seen2), Arc::clone(&stop2), Arc::clone(&script));
                        handlers.push(std::thread::spawn(move || {
                            serve(conn, &*script, &seen, &stop)
                        }));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
            for h in handlers {
                let _ = h.join();
            }
        });
        Hostile {
            addr,
            seen,
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

impl Drop for Hostile {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Performs `acts`; false once the connection is to end.
fn perform(conn: &mut TcpStream, acts: Vec<Act>, stop: &AtomicBool) -> bool {
    for act in acts {
        match act {
            Act::Send(bytes) => {
                if conn.write_all(&bytes).is_err() {
                    return false;
                }
            }
            Act::Dribble(bytes, gap) => {
                for b in bytes {
                    if stop.load(Ordering::SeqCst) || conn.write_all(&[b]).is_err() {
                        return false;
                    }
                    std::thread::sleep(gap);
                }
            }
            Act::Stall(d) => {
                let until = Instant::now() + d;
                while Instant::now() < until {
                    if stop.load(Ordering::SeqCst) {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
            Act::Close => return false,
        }
    }
    true
}

fn serve(
    mut conn: TcpStream,
    script: &(dyn Fn(&Event<'_>) -> Vec<Act> + Send + Sync),
    seen: &Mutex<Seen>,
    stop: &AtomicBool,
) {
    let _ = conn.set_nodelay(true);
    conn.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    let started = Instant::now();
    if !perform(&mut conn, script(&Event::Connected), stop) {
        return;
    }
    let mut buf = Vec::new();
    let mut in_data = false;
    let mut chunk = [0u8; 16 << 10];
    while !stop.load(Ordering::SeqCst) && started.elapsed() < CONNECTION_LIFETIME_MAX {
        match conn.read(&mut chunk) {
            Ok(0) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                continue
            }
            Err(_) => return,
        }
        if buf.len() > BUFFER_BYTES_MAX {
            return;
        }
        loop {
            let acts = if in_data {
                // The content ends at CRLF . CRLF (the CRLF before the dot belongs to it).
                let end = if buf.starts_with(b".\r\n") {
                    Some(0)
                } else {
                    find(&buf, b"\r\n.\r\n").map(|p| p + 2)
                };
                let Some(end) = end else { break };
                let content = buf[..end].to_vec();
                buf.drain(..end + 3);
                in_data = false;
                seen.lock().unwrap().data.push(content.clone());
                script(&Event::Data(&content))
            } else {
                let Some(eol) = find(&buf, b"\r\n") else {
                    break;
                };
                let line = String::from_utf8_lossy(&buf[..eol]).into_owned();
                buf.drain(..eol + 2);
                seen.lock().unwrap().commands.push(line.clone());
                let acts = script(&Event::Command(&line));
                let starts_data = line.eq_ignore_ascii_case("DATA")
                    && acts.iter().any(
                        |a| matches!(a, Act::Send(b) | Act::Dribble(b, _) if b.starts_with(b"354")),
                    );
                in_data = starts_data;
                acts
            };
            if !perform(&mut conn, acts, stop) {
                return;
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A well-behaved answer to everything, for scripts that misbehave at one point only:
/// greeting, EHLO with PIPELINING, 250 to MAIL/RCPT/RSET/NOOP, 354 to DATA, 250 after the
/// data, 221 to QUIT.
pub fn polite(event: &Event<'_>) -> Vec<Act> {
    match event {
        Event::Connected => vec![send("220 hostile.test ESMTP\r\n")],
        Event::Data(_) => vec![send("250 2.0.0 queued\r\n")],
        Event::Command(c) => {
            let upper = c.to_ascii_uppercase();
            if upper.starts_with("EHLO") {
                vec![send(
                    "250-hostile.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
                )]
            } else if upper.starts_with("HELO") {
                vec![send("250 hostile.test\r\n")]
            } else if upper == "DATA" {
                vec![send("354 go ahead\r\n")]
            } else if upper == "QUIT" {
                vec![send("221 bye\r\n"), Act::Close]
            } else {
                vec![send("250 ok\r\n")]
            }
        }
    }
}
