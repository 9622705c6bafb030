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
    /// Read and discard up to this many bytes of what the client sends next (bounded by the
    /// server's stop and the connection's lifetime): a server that takes part of a message
    /// and then hangs up. What was read is added to `Seen::swallowed`.
    Swallow(usize),
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
    /// Bytes read and discarded by `Act::Swallow`.
    pub swallowed: usize,
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
fn perform(conn: &mut TcpStream, acts: Vec<Act>, stop: &AtomicBool, seen: &Mutex<Seen>) -> bool {
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
            Act::Swallow(n) => {
                let until = Instant::now() + CONNECTION_LIFETIME_MAX;
                let mut chunk = [0u8; 4096];
                let mut left = n;
                while left > 0 && Instant::now() < until {
                    if stop.load(Ordering::SeqCst) {
                        return false;
                    }
                    let want = left.min(chunk.len());
                    match conn.read(&mut chunk[..want]) {
                        Ok(0) => return false,
                        Ok(got) => {
                            left -= got;
                            seen.lock().unwrap().swallowed += got;
                        }
                        Err(e)
                            if e.kind() == std::io::ErrorKind::WouldBlock
                                || e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => return false,
                    }
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
    if !perform(&mut conn, script(&Event::Connected), stop, seen) {
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
            if !perform(&mut conn, acts, stop, seen) {
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

/// RFC 5321 4.5.3.1.6: 1000 octets per line including CRLF.
pub const LINE_OCTETS_MAX: usize = 998;

/// The lines a receiver should see for `message` once dot-stuffing is undone, as a mail
/// system is expected to send it: every CRLF, bare CR and bare LF ends one line (RFC 5321
/// 2.3.8), an unfinished last line is ended, and a line over 998 octets (counting the dot
/// that stuffing adds to a line that starts with one) is broken there, with a fold (CRLF SP)
/// in the header section and a plain line break in the body.
pub fn expected_lines(message: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut in_header = true;
    for line in spate::smtp::data::message_lines(message) {
        if line.is_empty() {
            in_header = false;
            out.push(Vec::new());
            continue;
        }
        let (mut current, mut octets) = (Vec::new(), 0);
        for &b in line {
            if octets == LINE_OCTETS_MAX {
                out.push(std::mem::take(&mut current));
                octets = 0;
                if in_header {
                    current.push(b' ');
                    octets = 1;
                }
            }
            if octets == 0 && b == b'.' {
                octets += 1;
            }
            current.push(b);
            octets += 1;
        }
        out.push(current);
    }
    out
}

/// The DATA content as sent (dot-stuffed, the final `.` line excluded, as `Seen::data` holds
/// it) as the recipient gets it: no line may be a lone dot (that would have ended the data
/// early), and each line's leading dot is stuffing.
pub fn unstuff(wire: &[u8], what: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(wire.len());
    for (n, line) in wire.split_inclusive(|&b| b == b'\n').enumerate() {
        assert!(
            line != b".\r\n" && line != b".",
            "{what}: an unstuffed lone dot on line {}",
            n + 1
        );
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

/// Checks one message as a recipient got it (`received`: dot-stuffing undone, by the sink's
/// SMTP server or by `unstuff`). It must be well-formed (CRLF line endings only, no line over
/// 998 octets on the wire, where a leading dot was doubled), carry exactly the header fields
/// `fields` in order, and be exactly `meant` as `expected_lines` cuts it.
pub fn assert_received_exactly(received: &[u8], meant: &[u8], fields: &[&str], what: &str) {
    for (i, &b) in received.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && received[i - 1] == b'\r', "{what}: bare LF at {i}");
        }
        if b == b'\r' {
            assert!(
                received.get(i + 1) == Some(&b'\n'),
                "{what}: bare CR at {i}"
            );
        }
    }
    assert!(
        received.ends_with(b"\r\n"),
        "{what}: does not end with CRLF"
    );
    let mut lines: Vec<&[u8]> = received.split(|&b| b == b'\n').collect();
    lines.pop();
    let mut got = Vec::with_capacity(lines.len());
    for (n, line) in lines.iter().enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let on_wire = line.len() + usize::from(line.starts_with(b"."));
        assert!(
            on_wire <= LINE_OCTETS_MAX,
            "{what}: line {} is {} octets on the wire",
            n + 1,
            on_wire
        );
        got.push(line);
    }
    let want = expected_lines(meant);
    let shown = |l: &[u8]| {
        let text = String::from_utf8_lossy(&l[..l.len().min(120)]).into_owned();
        format!("{text:?} ({} octets)", l.len())
    };
    for (n, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            *g == &w[..],
            "{what}: line {} differs: received {}, meant {}",
            n + 1,
            shown(g),
            shown(w)
        );
    }
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: {} lines received, {} meant (the message was cut short or extended)",
        got.len(),
        want.len()
    );
    let names: Vec<String> = got
        .iter()
        .take_while(|l| !l.is_empty())
        .filter(|l| !l.starts_with(b" ") && !l.starts_with(b"\t"))
        .map(|l| {
            let end = l.iter().position(|&b| b == b':').unwrap_or(l.len());
            String::from_utf8_lossy(&l[..end]).into_owned()
        })
        .collect();
    assert_eq!(names, fields, "{what}: header field names");
}
