//! The SMTP client session as a state machine, sans I/O.
//!
//! The shell feeds it received bytes (`receive`) and performs the `Action`s it returns: send
//! these bytes, run the TLS handshake now, the session is ready for a transaction, a
//! transaction is done (one result per recipient), close the connection. Timeouts are the
//! shell's too; `timeout` says how long the current wait may last (RFC 5321 4.5.3.2).
//!
//! Commands are queued with the reply each expects. With PIPELINING, MAIL, every RCPT and DATA
//! go out in one write and the replies are matched in order; without it, one command at a
//! time. A `421` at any point means the server is closing: every recipient in flight gets
//! `RcptResult::ServiceClosing` (retry elsewhere; not a failure of the message) and the session
//! closes.
//!
//! Where the server offers CHUNKING (RFC 3030) and the shell allows it (`set_chunking`), the
//! message goes as one `BDAT n LAST` chunk instead: its count, then its octets unstuffed,
//! right behind MAIL and RCPT in the same write. There is no 354 to wait for, so a message
//! costs one round trip even alone, and the server need not scan the content for the final
//! dot.

use super::data::Data;
use super::reply::{Reply, ReplyError, ReplyParser};
use std::collections::VecDeque;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// Never STARTTLS.
    Disabled,
    /// STARTTLS when offered; any certificate; plaintext if not offered.
    Opportunistic,
    /// STARTTLS must succeed; any certificate.
    Required,
    /// STARTTLS must succeed with a certificate valid for the MX host.
    Verify,
}

/// Per-phase timeouts; defaults from RFC 5321 4.5.3.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub greeting: Duration,
    pub ehlo: Duration,
    pub mail: Duration,
    pub rcpt: Duration,
    pub data_init: Duration,
    pub data_block: Duration,
    pub data_done: Duration,
    pub other: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            greeting: Duration::from_secs(300),
            ehlo: Duration::from_secs(300),
            mail: Duration::from_secs(300),
            rcpt: Duration::from_secs(300),
            data_init: Duration::from_secs(120),
            data_block: Duration::from_secs(180),
            data_done: Duration::from_secs(600),
            other: Duration::from_secs(120),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    pub pipelining: bool,
    pub size: Option<u64>,
    pub eight_bit_mime: bool,
    pub smtputf8: bool,
    pub enhanced_status_codes: bool,
    pub starttls: bool,
    /// RFC 3030: BDAT may carry the message.
    pub chunking: bool,
}

impl Capabilities {
    /// Reads an EHLO reply: the first line is the greeting, each later line a keyword.
    pub fn from_ehlo(reply: &Reply) -> Capabilities {
        let mut caps = Capabilities::default();
        for line in reply.lines.iter().skip(1) {
            let mut words = line.split_ascii_whitespace();
            let Some(keyword) = words.next() else {
                continue;
            };
            match keyword.to_ascii_uppercase().as_str() {
                "PIPELINING" => caps.pipelining = true,
                "SIZE" => caps.size = words.next().and_then(|n| n.parse().ok()).filter(|&n| n > 0),
                "8BITMIME" => caps.eight_bit_mime = true,
                "SMTPUTF8" => caps.smtputf8 = true,
                "ENHANCEDSTATUSCODES" => caps.enhanced_status_codes = true,
                "STARTTLS" => caps.starttls = true,
                "CHUNKING" => caps.chunking = true,
                _ => {}
            }
        }
        caps
    }
}

/// One message for one or more recipients.
#[derive(Debug, Clone)]
pub struct Transaction {
    pub mail_from: String,
    pub rcpts: Vec<String>,
    /// The message in DATA form (`Data::encode`, or rendered straight into it).
    pub data: Data,
}

/// What happened to one recipient of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RcptResult {
    /// The server's answer for this recipient: MAIL's, RCPT's, DATA's or the final one,
    /// whichever decided its fate. A local decision (SIZE, SMTPUTF8) is a reply too.
    Reply(Reply),
    /// The server closed with 421 (or the session did); retry elsewhere without blame.
    ServiceClosing(Reply),
    /// The connection failed before an answer; the shell says why.
    ConnectionLost(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// We sent QUIT.
    Quit,
    /// 421 from the server.
    ServiceClosing(Reply),
    /// Greeting, EHLO/HELO or STARTTLS refused.
    Refused(Reply),
    /// The TLS policy requires STARTTLS and the server does not offer it or refused it.
    TlsUnavailable(String),
    /// The server broke the protocol.
    Protocol(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Send(Vec<u8>),
    /// Run the TLS handshake on the connection now, then call `tls_established`.
    StartTls,
    /// Idle and ready for `start`.
    Ready,
    Done(Vec<RcptResult>),
    Close(CloseReason),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    Greeting,
    Ehlo,
    Helo,
    StartTls,
    Mail,
    Rcpt(usize),
    Data,
    /// `BDAT n LAST` with the message: its reply is the final one, as after DATA's dot.
    Bdat,
    /// The dot after DATA with no accepted recipient; its reply is ignored.
    EmptyDataEnd,
    DataEnd,
    Rset,
    Quit,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Opening,
    TlsHandshake,
    Ready,
    Transaction,
    Closing,
    Closed,
}

struct Active {
    /// The message as DATA content (canonical, dot-stuffed, terminated), as `start` got it;
    /// empty once sent, or when it went as a BDAT chunk.
    data: Vec<u8>,
    results: Vec<Option<RcptResult>>,
    mail_failed: Option<Reply>,
    /// Decided here (SIZE, SMTPUTF8) when started behind another: nothing is sent for it,
    /// and its results come when the one before it is done, in order.
    decided: bool,
    /// Its content and final dot (or its last chunk) have been handed on: a transaction
    /// started behind it now may send its commands at once.
    content_sent: bool,
}

pub struct Session {
    helo_name: String,
    policy: TlsPolicy,
    timeouts: Timeouts,
    parser: ReplyParser,
    phase: Phase,
    caps: Capabilities,
    tls_active: bool,
    /// Commands written and waiting for their replies, oldest first.
    in_flight: VecDeque<Expect>,
    /// Commands not yet written (without PIPELINING they go one at a time).
    queued: VecDeque<(Vec<u8>, Expect)>,
    /// The content of each `Expect::Bdat` command queued or held, in their order: it goes
    /// out right behind its command.
    chunks: VecDeque<Vec<u8>>,
    /// Send messages with BDAT where the server offers CHUNKING. A transaction pipelined
    /// behind one whose outcome is not known yet goes behind an RSET.
    chunking: bool,
    /// Transactions in progress, oldest first: the replies being read are the front one's.
    /// A second one only with PIPELINING (`can_pipeline`).
    actives: VecDeque<Active>,
    /// The second transaction's commands, held until the first one's content goes out
    /// (after its 354) or it ends: MAIL must never reach a server that may still hold the
    /// first transaction open.
    held: VecDeque<(Vec<u8>, Expect)>,
    actions: VecDeque<Action>,
    /// The last transaction did not end cleanly; RSET before the next.
    needs_rset: bool,
    /// Complete replies received so far: the shell starts a new deadline when it changes.
    replies_received: u64,
    /// The reply just handled queued the message content (a 354): nothing may follow it
    /// before the content is sent.
    data_queued: bool,
}

impl Session {
    /// A session on a freshly connected socket, waiting for the greeting.
    pub fn new(helo_name: &str, policy: TlsPolicy, timeouts: Timeouts) -> Session {
        Session {
            helo_name: helo_name.to_string(),
            policy,
            timeouts,
            parser: ReplyParser::new(),
            phase: Phase::Opening,
            caps: Capabilities::default(),
            tls_active: false,
            in_flight: VecDeque::from([Expect::Greeting]),
            queued: VecDeque::new(),
            chunks: VecDeque::new(),
            chunking: false,
            actives: VecDeque::new(),
            held: VecDeque::new(),
            actions: VecDeque::new(),
            needs_rset: false,
            replies_received: 0,
            data_queued: false,
        }
    }

    /// Whether messages started from now on go as BDAT chunks where the server offers
    /// CHUNKING (off until the shell says so). Transactions already started keep their way.
    pub fn set_chunking(&mut self, on: bool) {
        self.chunking = on;
    }

    pub fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    pub fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// True when `start` may add a second transaction behind the one in progress (RFC 2920:
    /// its MAIL, RCPT and DATA go out right behind the first one's content and final dot,
    /// saving a round trip per message). The server offers PIPELINING, and one transaction
    /// only is in progress.
    pub fn can_pipeline(&self) -> bool {
        self.phase == Phase::Transaction && self.caps.pipelining && self.actives.len() == 1
    }

    /// Transactions started and not done.
    pub fn in_progress(&self) -> usize {
        self.actives.len()
    }

    /// The next thing for the shell to do, if any.
    pub fn next_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Complete replies received so far. A shell bounds each reply as a whole: the wait for
    /// the next one starts when this changes, and bytes that trickle in do not extend it.
    pub fn replies_received(&self) -> u64 {
        self.replies_received
    }

    /// How long the shell may wait for what the session waits for now.
    pub fn timeout(&self) -> Duration {
        let t = &self.timeouts;
        match self.in_flight.front() {
            Some(Expect::Greeting) => t.greeting,
            Some(Expect::Ehlo | Expect::Helo) => t.ehlo,
            Some(Expect::Mail) => t.mail,
            Some(Expect::Rcpt(_)) => t.rcpt,
            Some(Expect::Data) => t.data_init,
            Some(Expect::DataEnd | Expect::EmptyDataEnd | Expect::Bdat) => t.data_done,
            Some(Expect::StartTls | Expect::Rset | Expect::Quit) | None => t.other,
        }
    }

    /// Feeds received bytes.
    pub fn receive(&mut self, bytes: &[u8]) {
        if self.phase == Phase::Closed {
            return;
        }
        self.parser.push(bytes);
        loop {
            match self.parser.next_reply() {
                Ok(Some(reply)) => self.on_reply(reply),
                Ok(None) => break,
                Err(ReplyError(why)) => {
                    self.close_with(CloseReason::Protocol(why.to_string()), None);
                    break;
                }
            }
            if self.phase == Phase::Closed {
                break;
            }
            if std::mem::take(&mut self.data_queued) && self.parser.buffered() > 0 {
                // A reply to content not sent yet (a 250 in the packet with the 354, or
                // garbage): never read as the message's answer; the content is not sent.
                self.close_with(
                    CloseReason::Protocol("the server replied before the message was sent".into()),
                    None,
                );
                break;
            }
            if self.phase == Phase::TlsHandshake {
                // Anything after STARTTLS's 220 and before the handshake is injected plaintext
                // (the attack behind CVE-2011-0411): discard it, never interpret it.
                self.parser = ReplyParser::new();
                break;
            }
        }
    }

    /// The TLS handshake the session asked for succeeded: greet again over TLS. Ignored
    /// unless the session asked for one (no call order may panic the session).
    pub fn tls_established(&mut self) {
        if self.phase != Phase::TlsHandshake {
            return;
        }
        self.tls_active = true;
        self.caps = Capabilities::default();
        self.phase = Phase::Opening;
        let ehlo = format!("EHLO {}\r\n", self.helo_name).into_bytes();
        self.send(ehlo, Expect::Ehlo);
    }

    /// Starts a transaction. On a session that is not ready (the server closed it, perhaps in
    /// the same packet that made it ready), nothing is sent and every recipient gets
    /// `ConnectionLost` at once: what a peer sends can end a session, never panic it.
    pub fn start(&mut self, tx: Transaction) {
        let n = tx.rcpts.len();
        let behind = self.can_pipeline();
        if (self.phase != Phase::Ready && !behind) || n == 0 {
            let why = format!(
                "the session is not ready for a transaction ({:?})",
                self.phase
            );
            let results = vec![RcptResult::ConnectionLost(why); n];
            self.actions.push_back(Action::Done(results));
            return;
        }
        let needs_utf8 = !tx.mail_from.is_ascii() || tx.rcpts.iter().any(|r| !r.is_ascii());
        let (eight_bit, size) = (tx.data.eight_bit(), tx.data.size());
        let bdat = self.chunking && self.caps.chunking;
        let local = if needs_utf8 && !self.caps.smtputf8 {
            Some(Reply::new(
                553,
                "5.6.7 the server does not support SMTPUTF8, which these addresses need",
            ))
        } else if eight_bit && tx.data.signed() && !self.caps.eight_bit_mime {
            // Sent anyway, it would arrive converted or mangled and its signature broken;
            // another host or a later attempt may offer 8BITMIME, and at expiry it bounces
            // with this reason.
            Some(Reply::new(
                450,
                "4.6.3 the message is DKIM-signed 8-bit content and the server does not offer 8BITMIME",
            ))
        } else if self.caps.size.is_some_and(|max| size > max) {
            Some(Reply::new(
                552,
                "5.3.4 message exceeds the server's SIZE limit",
            ))
        } else {
            None
        };
        if let Some(reply) = local {
            // Decided here: nothing is sent, and the session stays as it was. Behind another
            // transaction, its results wait for that one's, so results come in order.
            if behind {
                crate::buffers::give(tx.data.into_bytes());
                self.actives.push_back(Active {
                    data: Vec::new(),
                    results: vec![Some(RcptResult::Reply(reply)); n],
                    mail_failed: None,
                    decided: true,
                    content_sent: false,
                });
            } else {
                crate::buffers::give(tx.data.into_bytes());
                self.actions
                    .push_back(Action::Done(vec![RcptResult::Reply(reply); n]));
                self.actions.push_back(Action::Ready);
            }
            return;
        }
        let mut commands = Vec::with_capacity(n + 2);
        let mut mail = format!("MAIL FROM:<{}>", tx.mail_from);
        if self.caps.size.is_some() {
            mail.push_str(&format!(" SIZE={size}"));
        }
        if eight_bit && self.caps.eight_bit_mime {
            mail.push_str(" BODY=8BITMIME");
        }
        if needs_utf8 {
            mail.push_str(" SMTPUTF8");
        }
        mail.push_str("\r\n");
        commands.push((mail.into_bytes(), Expect::Mail));
        for (i, rcpt) in tx.rcpts.iter().enumerate() {
            commands.push((
                format!("RCPT TO:<{rcpt}>\r\n").into_bytes(),
                Expect::Rcpt(i),
            ));
        }
        let data = if bdat {
            // The chunk goes right behind its command, whatever MAIL and RCPT are answered:
            // a server reads a BDAT's octets even when it refuses it, so they stay in step.
            let chunk = tx.data.into_chunk();
            let command = format!("BDAT {} LAST\r\n", chunk.len());
            commands.push((command.into_bytes(), Expect::Bdat));
            self.chunks.push_back(chunk);
            Vec::new()
        } else {
            commands.push((b"DATA\r\n".to_vec(), Expect::Data));
            tx.data.into_bytes()
        };
        self.actives.push_back(Active {
            data,
            results: vec![None; n],
            mail_failed: None,
            decided: false,
            content_sent: bdat,
        });
        if behind {
            if bdat && self.actives.front().is_some_and(|a| a.content_sent) {
                // Whether the one ahead opened a transaction it will not close (every
                // recipient refused, its chunk refused) is not known yet, and a MAIL inside
                // an open one would be refused with 503, a permanent failure for a message
                // that did nothing wrong: an RSET first makes it safe whatever happens.
                self.needs_rset = true;
            }
            self.held.extend(commands);
            // Started after the first one's 354 was answered with its content: nothing is
            // left to wait for, so they go now (in the same write as that content, if the
            // shell has not written it yet).
            if self.actives.front().is_some_and(|a| a.content_sent) {
                self.release_held();
            }
            return;
        }
        self.phase = Phase::Transaction;
        if self.needs_rset {
            self.needs_rset = false;
            self.queue(b"RSET\r\n".to_vec(), Expect::Rset);
        }
        self.queued.extend(commands);
        self.flush();
    }

    /// The held second transaction's commands go out (behind an RSET if the first one left
    /// the server's transaction open).
    fn release_held(&mut self) {
        if self.held.is_empty() {
            return;
        }
        if self.needs_rset {
            self.needs_rset = false;
            self.queue(b"RSET\r\n".to_vec(), Expect::Rset);
        }
        let held = std::mem::take(&mut self.held);
        self.queued.extend(held);
        self.flush();
    }

    /// Ends the session politely.
    pub fn quit(&mut self) {
        if matches!(self.phase, Phase::Ready | Phase::Opening) {
            self.phase = Phase::Closing;
            self.queued.clear();
            self.queue(b"QUIT\r\n".to_vec(), Expect::Quit);
            self.flush();
        } else if self.phase != Phase::Closed {
            self.close_with(CloseReason::Quit, None);
        }
    }

    /// The connection failed (timeout, reset, EOF, TLS error): recipients in flight get
    /// `ConnectionLost`, and the session is over.
    pub fn connection_lost(&mut self, why: &str) {
        if self.phase == Phase::Closed {
            return;
        }
        self.fail_in_flight(|| RcptResult::ConnectionLost(why.to_string()));
        self.phase = Phase::Closed;
    }

    fn on_reply(&mut self, reply: Reply) {
        self.replies_received += 1;
        let Some(expect) = self.in_flight.pop_front() else {
            // Unsolicited: only a 421 (the server going away) is legitimate.
            if reply.code == 421 {
                self.close_with(CloseReason::ServiceClosing(reply.clone()), Some(reply));
            } else {
                self.close_with(
                    CloseReason::Protocol(format!("unexpected reply: {reply}")),
                    None,
                );
            }
            return;
        };
        if reply.code == 421 && matches!(expect, Expect::DataEnd | Expect::Bdat) {
            // The server received the whole message and answered it with 421: that is this
            // message's reply (an attempt, retried on the usual schedule), not load shed
            // before it. Otherwise a server that 421s every message would have it resent
            // every few seconds, uncounted, until it expires.
            if let Some(a) = self.actives.front_mut() {
                for r in a.results.iter_mut().filter(|r| r.is_none()) {
                    *r = Some(RcptResult::Reply(reply.clone()));
                }
            }
            self.finish_transaction();
            // A transaction pipelined behind it was not reached: retried without blame.
            self.close_with(CloseReason::ServiceClosing(reply.clone()), Some(reply));
            return;
        }
        if reply.code == 421 && expect != Expect::Quit {
            self.close_with(CloseReason::ServiceClosing(reply.clone()), Some(reply));
            return;
        }
        if self.phase == Phase::Closing && expect != Expect::Quit {
            // `quit` came while the greeting, EHLO or STARTTLS was in flight: its reply moves
            // the session nowhere (no EHLO, no STARTTLS, never ready). QUIT goes out once
            // nothing else is in flight.
            self.flush();
            return;
        }
        match expect {
            Expect::Greeting => {
                if reply.code == 220 {
                    let ehlo = format!("EHLO {}\r\n", self.helo_name).into_bytes();
                    self.send(ehlo, Expect::Ehlo);
                } else {
                    self.close_with(CloseReason::Refused(reply), None);
                }
            }
            Expect::Ehlo if reply.is_positive() => {
                self.caps = Capabilities::from_ehlo(&reply);
                self.after_greeting();
            }
            Expect::Ehlo if reply.is_permanent() => {
                let helo = format!("HELO {}\r\n", self.helo_name).into_bytes();
                self.send(helo, Expect::Helo);
            }
            Expect::Ehlo | Expect::Helo if !reply.is_positive() => {
                self.close_with(CloseReason::Refused(reply), None);
            }
            Expect::Ehlo | Expect::Helo => {
                self.caps = Capabilities::default();
                self.after_greeting();
            }
            Expect::StartTls => {
                if reply.code == 220 {
                    self.phase = Phase::TlsHandshake;
                    self.actions.push_back(Action::StartTls);
                } else if self.policy == TlsPolicy::Opportunistic {
                    self.become_ready();
                } else {
                    self.close_with(
                        CloseReason::TlsUnavailable(format!("STARTTLS refused: {reply}")),
                        None,
                    );
                }
            }
            Expect::Rset => {
                if !reply.is_positive() {
                    self.close_with(
                        CloseReason::Protocol(format!("RSET refused: {reply}")),
                        None,
                    );
                }
            }
            Expect::Mail => {
                if !reply.is_positive() {
                    self.needs_rset = true;
                    if let Some(a) = self.actives.front_mut() {
                        a.mail_failed = Some(reply);
                    }
                }
            }
            Expect::Rcpt(i) => {
                if let Some(a) = self.actives.front_mut() {
                    if let Some(mail) = &a.mail_failed {
                        a.results[i] = Some(RcptResult::Reply(mail.clone()));
                    } else if !reply.is_positive() {
                        a.results[i] = Some(RcptResult::Reply(reply));
                    }
                }
            }
            Expect::Data => self.on_data_reply(reply),
            Expect::EmptyDataEnd => self.finish_transaction(),
            // With no recipient accepted, the reply to BDAT is a refusal that decides
            // nobody's fate: each one already has its own.
            Expect::DataEnd | Expect::Bdat if (300..400).contains(&reply.code) => {
                // Neither "delivered" nor "refused": the server is not speaking SMTP.
                self.close_with(
                    CloseReason::Protocol(format!("the message was answered with {reply}")),
                    None,
                );
            }
            Expect::DataEnd | Expect::Bdat => {
                if let Some(a) = self.actives.front_mut() {
                    for r in a.results.iter_mut().filter(|r| r.is_none()) {
                        *r = Some(RcptResult::Reply(reply.clone()));
                    }
                }
                if !reply.is_positive() {
                    self.needs_rset = true;
                }
                self.finish_transaction();
            }
            Expect::Quit => self.close_with(CloseReason::Quit, None),
        }
        self.flush();
    }

    fn on_data_reply(&mut self, reply: Reply) {
        let Some(a) = self.actives.front_mut() else {
            return;
        };
        let accepted = a.results.iter().filter(|r| r.is_none()).count();
        if reply.code == 354 {
            if accepted == 0 {
                // Pipelined DATA was accepted though no recipient was: end it empty.
                self.needs_rset = true;
                self.send(b".\r\n".to_vec(), Expect::EmptyDataEnd);
            } else {
                let data = std::mem::take(&mut a.data);
                a.content_sent = true;
                self.send(data, Expect::DataEnd);
                self.data_queued = true;
                // The content ends the server's transaction: the next one's commands can go
                // right behind it.
                self.release_held();
            }
            return;
        }
        if reply.is_positive() {
            // A 2xx to DATA would read as "delivered" though no content was sent.
            self.close_with(
                CloseReason::Protocol(format!("DATA answered with {reply} instead of 354")),
                None,
            );
            return;
        }
        for r in a.results.iter_mut().filter(|r| r.is_none()) {
            *r = Some(RcptResult::Reply(reply.clone()));
        }
        self.needs_rset = true;
        self.finish_transaction();
    }

    fn after_greeting(&mut self) {
        let offer = self.caps.starttls && !self.tls_active;
        match self.policy {
            TlsPolicy::Disabled => self.become_ready(),
            _ if offer => self.send(b"STARTTLS\r\n".to_vec(), Expect::StartTls),
            TlsPolicy::Opportunistic => self.become_ready(),
            TlsPolicy::Required | TlsPolicy::Verify if self.tls_active => self.become_ready(),
            TlsPolicy::Required | TlsPolicy::Verify => self.close_with(
                CloseReason::TlsUnavailable("the server does not offer STARTTLS".into()),
                None,
            ),
        }
    }

    fn become_ready(&mut self) {
        self.phase = Phase::Ready;
        self.actions.push_back(Action::Ready);
    }

    fn finish_transaction(&mut self) {
        let Some(a) = self.actives.pop_front() else {
            return;
        };
        // Every recipient has a result by now; should one not, it is retried, not lost.
        let results = a
            .results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| RcptResult::ConnectionLost("no reply".into())))
            .collect();
        self.actions.push_back(Action::Done(results));
        if self.actives.front().is_some_and(|a| a.decided) {
            self.finish_transaction();
        } else if self.actives.is_empty() {
            self.become_ready();
        } else {
            // The next transaction is in flight (or held until now).
            self.release_held();
        }
    }

    /// Gives every recipient without a result one, and drops the transaction.
    fn fail_in_flight(&mut self, result: impl Fn() -> RcptResult) {
        while let Some(a) = self.actives.pop_front() {
            let results = a
                .results
                .into_iter()
                .map(|r| match r {
                    // A decided recipient keeps its answer unless its acceptance was pending
                    // on DATA; rejected ones stay rejected.
                    Some(RcptResult::Reply(rep)) if !rep.is_positive() => RcptResult::Reply(rep),
                    _ => result(),
                })
                .collect();
            self.actions.push_back(Action::Done(results));
        }
        self.in_flight.clear();
        self.queued.clear();
        self.held.clear();
        for chunk in self.chunks.drain(..) {
            crate::buffers::give(chunk);
        }
    }

    fn close_with(&mut self, reason: CloseReason, service_closing: Option<Reply>) {
        match service_closing {
            Some(reply) => self.fail_in_flight(|| RcptResult::ServiceClosing(reply.clone())),
            None => {
                let why = format!("{reason:?}");
                self.fail_in_flight(|| RcptResult::ConnectionLost(why.clone()));
            }
        }
        self.phase = Phase::Closed;
        self.actions.push_back(Action::Close(reason));
    }

    fn queue(&mut self, line: Vec<u8>, expect: Expect) {
        self.queued.push_back((line, expect));
    }

    fn send(&mut self, bytes: Vec<u8>, expect: Expect) {
        self.in_flight.push_back(expect);
        self.actions.push_back(Action::Send(bytes));
    }

    /// Writes queued commands: all of them with PIPELINING, else one once nothing is in
    /// flight.
    fn flush(&mut self) {
        if self.phase == Phase::Closed {
            return;
        }
        let mut batch = Vec::new();
        while let Some((line, _)) = self.queued.front() {
            let idle = self.in_flight.is_empty() && batch.is_empty();
            if !self.caps.pipelining && !idle {
                break;
            }
            if batch.is_empty() {
                // A pooled buffer: a message's chunk joins its commands in it.
                batch = crate::buffers::take();
            }
            batch.extend_from_slice(line);
            let (_, expect) = self.queued.pop_front().expect("front exists");
            if expect == Expect::Bdat {
                let chunk = self.chunks.pop_front().unwrap_or_default();
                batch.extend_from_slice(&chunk);
                crate::buffers::give(chunk);
            }
            self.in_flight.push_back(expect);
            if !self.caps.pipelining {
                break;
            }
        }
        if !batch.is_empty() {
            self.actions.push_back(Action::Send(batch));
        }
    }
}

#[cfg(test)]
mod tests;
