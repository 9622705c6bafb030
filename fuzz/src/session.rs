//! The SMTP client `smtp::session::Session` against a hostile server and an erratic shell.
//!
//! Input: the first byte picks the TLS policy (low two bits), whether messages carry 8-bit
//! text (bit 2) and whether the session may use BDAT where the server offers CHUNKING (bit 3). Every later byte is either server output or a shell action:
//!
//! | byte | what the shell does                                                         |
//! |------|-----------------------------------------------------------------------------|
//! | 0x00 | delivers the server bytes gathered so far (one `receive`, one socket read)  |
//! | 0x01 | `start` with 1 recipient                                                    |
//! | 0x02 | `start` with 2 recipients                                                   |
//! | 0x03 | `start` with 3 recipients                                                   |
//! | 0x04 | `tls_established` (whether or not the session asked for a handshake)        |
//! | 0x05 | `quit`                                                                      |
//! | 0x06 | `connection_lost`                                                           |
//! | 0x07 | `start` with 2 recipients, one of them non-ASCII (SMTPUTF8)                 |
//! | 0x08 | `start` with 1 recipient and a 3000-octet message (SIZE, long lines)        |
//! | else | a byte the server sends                                                     |
//!
//! Server bytes are also delivered before every shell action and at the end, where the
//! connection is lost (as the shell's timeout would end it). After each step the shell
//! performs every queued action, as `delivery::connection` does. So seeds read as a
//! transcript: `220 hi\r\n\x00250 ok\r\n\x01...`.
//!
//! Properties:
//! - it never panics, whatever the order of calls;
//! - every started transaction yields exactly one `Done`, with one result per recipient; a
//!   `start` on a session that is not ready yields it at once, every recipient
//!   `ConnectionLost`, and nothing else;
//! - no recipient is reported delivered (a 2xx reply) unless the message content was sent
//!   (a `Send` of exactly the encoded DATA content, or one holding `BDAT n LAST` and the
//!   unstuffed chunk right behind it) before that `Done`;
//! - after `Close` (or a lost connection) nothing is sent, and there is no second `Close`;
//! - between `StartTls` and `tls_established` nothing is sent in plaintext;
//! - after `quit` the session sends nothing but `QUIT` and never becomes ready again;
//! - at most two transactions are in progress, the second only where `can_pipeline` allowed
//!   it; their `Done`s come in the order started, and `Ready` is never reported while one is.

use spate::smtp::data::Data;
use spate::smtp::session::{Action, RcptResult, Session, Timeouts, TlsPolicy, Transaction};

const DELIVER: u8 = 0x00;
const START_1: u8 = 0x01;
const START_2: u8 = 0x02;
const START_3: u8 = 0x03;
const TLS_ESTABLISHED: u8 = 0x04;
const QUIT: u8 = 0x05;
const CONNECTION_LOST: u8 = 0x06;
const START_UTF8: u8 = 0x07;
const START_LARGE: u8 = 0x08;

pub fn check(input: &[u8]) {
    let Some((&flags, script)) = input.split_first() else {
        return;
    };
    let policy = [
        TlsPolicy::Disabled,
        TlsPolicy::Opportunistic,
        TlsPolicy::Required,
        TlsPolicy::Verify,
    ][usize::from(flags & 3)];
    let eight_bit = flags & 4 != 0;
    let mut shell = Shell::new(policy);
    shell.chunking = flags & 8 != 0;
    shell.session.set_chunking(shell.chunking);
    let mut server = Vec::new();
    for &b in script {
        if b > START_LARGE {
            server.push(b);
            continue;
        }
        shell.deliver(&mut server);
        match b {
            DELIVER => {}
            START_1 => shell.start(transaction(1, false, false, eight_bit)),
            START_2 => shell.start(transaction(2, false, false, eight_bit)),
            START_3 => shell.start(transaction(3, false, false, eight_bit)),
            START_UTF8 => shell.start(transaction(2, true, false, eight_bit)),
            START_LARGE => shell.start(transaction(1, false, true, eight_bit)),
            TLS_ESTABLISHED => {
                shell.session.tls_established();
                shell.awaiting_tls = false;
                shell.drain();
            }
            QUIT => {
                shell.session.quit();
                shell.quit_called = true;
                shell.drain();
            }
            CONNECTION_LOST => shell.lose("fuzz: connection lost"),
            _ => unreachable!("every byte up to START_LARGE is an action"),
        }
    }
    shell.deliver(&mut server);
    shell.lose("fuzz: end of input");
    assert!(
        shell.active.is_empty(),
        "a transaction never got its results"
    );
}

fn transaction(rcpts: usize, utf8: bool, large: bool, eight_bit: bool) -> Transaction {
    let mut message = b"From: a@acme.example\r\nSubject: hi\r\n\r\n.dot\r\nbody\n".to_vec();
    if eight_bit {
        message.extend_from_slice("caf\u{e9}\r\n".as_bytes());
    }
    if large {
        message.extend_from_slice(&[b'x'; 1500]);
        message.extend_from_slice(b"\r\n.\r\n");
        message.extend_from_slice(&[b'y'; 1500]);
    }
    let mut to: Vec<String> = (0..rcpts).map(|i| format!("r{i}@x.example")).collect();
    if utf8 {
        to[0] = "\u{7528}\u{6237}@x.example".into();
    }
    Transaction {
        mail_from: "bounces@acme.example".into(),
        rcpts: to,
        data: Data::encode(&message),
    }
}

struct Shell {
    session: Session,
    /// The transactions in progress, oldest first: each one's recipient count, its DATA
    /// content, and whether that content has been sent.
    active: std::collections::VecDeque<Active>,
    /// A `Close` was performed, or the connection was lost.
    closed: bool,
    /// The session asked for a TLS handshake and `tls_established` was not called yet.
    awaiting_tls: bool,
    quit_called: bool,
    /// BDAT allowed.
    chunking: bool,
}

struct Active {
    rcpts: usize,
    content: Vec<u8>,
    content_sent: bool,
}

impl Shell {
    fn new(policy: TlsPolicy) -> Shell {
        Shell {
            session: Session::new("mta.example", policy, Timeouts::default()),
            active: std::collections::VecDeque::new(),
            closed: false,
            awaiting_tls: false,
            quit_called: false,
            chunking: false,
        }
    }

    fn deliver(&mut self, server: &mut Vec<u8>) {
        if !server.is_empty() {
            self.session.receive(server);
            server.clear();
            self.drain();
        }
    }

    fn start(&mut self, tx: Transaction) {
        let rcpts = tx.rcpts.len();
        // What carries the content on the wire: the DATA form alone, or the BDAT command with
        // the chunk behind it, inside a larger write.
        let content = if self.chunking && self.session.capabilities().chunking {
            let chunk = tx.data.clone().into_chunk();
            let mut bdat = format!("BDAT {} LAST\r\n", chunk.len()).into_bytes();
            bdat.extend_from_slice(&chunk);
            bdat
        } else {
            tx.data.bytes().to_vec()
        };
        let behind = self.session.can_pipeline();
        if !self.session.is_ready() && !behind {
            self.session.start(tx);
            let action = self.session.next_action();
            match &action {
                Some(Action::Done(results)) => {
                    assert_eq!(results.len(), rcpts, "one result per recipient");
                    assert!(
                        results
                            .iter()
                            .all(|r| matches!(r, RcptResult::ConnectionLost(_))),
                        "a transaction on a session that is not ready: {results:?}"
                    );
                }
                other => panic!("start on a session that is not ready: {other:?}"),
            }
            let more = self.session.next_action();
            assert!(
                more.is_none(),
                "start on a session that is not ready: {more:?}"
            );
            return;
        }
        assert!(!self.closed, "a closed session takes a transaction");
        assert_eq!(
            self.active.len(),
            usize::from(behind),
            "ready with a transaction in progress, or pipelining without one"
        );
        self.active.push_back(Active {
            rcpts,
            content,
            content_sent: false,
        });
        self.session.start(tx);
        self.drain();
    }

    fn lose(&mut self, why: &str) {
        self.session.connection_lost(why);
        self.drain();
        assert!(self.session.is_closed(), "a lost connection is closed");
        self.closed = true;
    }

    /// Performs every action the session queued, checking each.
    fn drain(&mut self) {
        let _ = self.session.timeout();
        while let Some(action) = self.session.next_action() {
            match action {
                Action::Send(bytes) => {
                    assert!(!self.closed, "sent after the session closed: {bytes:?}");
                    assert!(!bytes.is_empty(), "an empty Send");
                    assert!(
                        !self.awaiting_tls,
                        "sent in plaintext during the TLS handshake: {bytes:?}"
                    );
                    if self.quit_called {
                        assert_eq!(bytes, b"QUIT\r\n", "sent after quit");
                    }
                    // Content goes out in the order transactions started.
                    for a in self.active.iter_mut().filter(|a| !a.content_sent) {
                        a.content_sent |= bytes == a.content
                            || (a.content.starts_with(b"BDAT ")
                                && bytes.windows(a.content.len()).any(|w| w == a.content));
                    }
                }
                Action::StartTls => {
                    assert!(!self.closed, "StartTls after the session closed");
                    assert!(!self.quit_called, "StartTls after quit");
                    self.awaiting_tls = true;
                }
                Action::Ready => {
                    assert!(!self.closed, "Ready after the session closed");
                    assert!(!self.quit_called, "Ready after quit");
                    assert!(
                        self.active.is_empty(),
                        "Ready with a transaction in progress"
                    );
                }
                Action::Done(results) => {
                    let a = self.active.pop_front().expect("Done without a transaction");
                    assert_eq!(results.len(), a.rcpts, "one result per recipient");
                    for r in &results {
                        let code = match r {
                            RcptResult::Reply(reply) | RcptResult::ServiceClosing(reply) => {
                                reply.code
                            }
                            RcptResult::ConnectionLost(_) => continue,
                        };
                        assert!((200..=599).contains(&code), "{r:?}");
                        if matches!(r, RcptResult::Reply(reply) if reply.is_positive()) {
                            assert!(a.content_sent, "delivered without the content sent: {r:?}");
                        }
                    }
                }
                Action::Close(reason) => {
                    assert!(!self.closed, "a second Close: {reason:?}");
                    self.closed = true;
                    assert!(
                        self.session.is_closed(),
                        "Close but the session is not closed"
                    );
                }
            }
        }
        if self.session.is_closed() {
            self.closed = true;
            assert!(
                self.active.is_empty(),
                "closed with a transaction in progress"
            );
        }
    }
}
