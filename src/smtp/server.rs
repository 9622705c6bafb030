//! The SMTP server's protocol, sans I/O: commands in, replies and events out.
//!
//! The shell reads bytes and hands them to [`Server::advance`], which works through every
//! complete command line (PIPELINING: the replies pile up in one buffer, written when the
//! input runs dry), answers what the protocol alone decides (EHLO, sequence and syntax
//! errors, limits, DATA's 354, RSET, NOOP, QUIT) and stops at each point where the shell
//! decides: a sender, a recipient, the end of a message, STARTTLS. Message bodies come out
//! as slices of the input, dot-unstuffed, never copied; a shell that discards them (a sink)
//! pays for nothing but the scan.
//!
//! Bounds: a command line is at most `COMMAND_LINE_MAX` octets (longer: 500 and close, no
//! buffering beyond it), recipients per transaction at most `ServerConfig::max_recipients`
//! (452 beyond), a message at most `ServerConfig::max_message_bytes` (552, counted as it
//! streams; the body is still read to its end so the session stays in step).
//!
//! For a server that relays (the gateway), `ServerConfig::auth` offers AUTH PLAIN and LOGIN
//! (RFC 4954; inside TLS only unless `auth_needs_tls` is off): the credentials come out as
//! an event for the shell to check, and its answer ends the exchange. `strict_lines`
//! refuses a message with a bare CR or LF or a line over 998 octets (550 5.5.2, once it has
//! ended), which is what SMTP smuggling needs. `dsn` offers DSN (RFC 3461): its MAIL and
//! RCPT parameters come out checked (`params`).
//!
//! With `ServerConfig::chunking`, CHUNKING (RFC 3030) is offered: `BDAT n [LAST]` is followed
//! by exactly n octets of message, handed out as they come (no unstuffing, no scan). A chunk
//! the server refuses (no transaction, no recipient, DATA's sequence) is read and discarded
//! before its refusal, so the session stays in step; a count that does not parse closes the
//! session, since where the chunk ends is then unknown.

use std::fmt::Write as _;

mod auth;
mod lines;
mod params;

use auth::AuthStep;
use lines::LineCheck;
pub use lines::LINE_MAX;
pub use params::{MailParams, Notify, RcptParams};

/// Longest command line read, CRLF included (RFC 5321 allows 512; extension parameters make
/// real ones longer, and a client that sends more is not speaking SMTP).
pub const COMMAND_LINE_MAX: usize = 4096;

/// What the server offers and allows.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The name in the greeting and the EHLO reply.
    pub hostname: String,
    /// Advertised with SIZE; a bigger message is refused with 552.
    pub max_message_bytes: usize,
    pub max_recipients: usize,
    /// Whether STARTTLS is offered (the shell has a certificate).
    pub starttls: bool,
    /// Whether CHUNKING (BDAT) is offered.
    pub chunking: bool,
    /// Whether AUTH PLAIN and LOGIN are offered.
    pub auth: bool,
    /// AUTH only inside TLS: not offered before, and 538 5.7.11 if tried.
    pub auth_needs_tls: bool,
    /// Refuse messages with a bare CR or LF or a line over `LINE_MAX` octets.
    pub strict_lines: bool,
    /// Whether DSN (RFC 3461) is offered: RET, ENVID, NOTIFY and ORCPT are accepted.
    pub dsn: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hostname: "localhost".into(),
            max_message_bytes: 50 << 20,
            max_recipients: 1000,
            starttls: false,
            chunking: true,
            auth: false,
            auth_needs_tls: true,
            strict_lines: true,
            dsn: false,
        }
    }
}

/// What the shell does next.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// Every complete command was handled: write the replies, read more.
    NeedMore,
    /// `MAIL FROM:<from>`: answer with [`Server::reply`] (2xx opens the transaction).
    Mail {
        from: &'a str,
        params: MailParams<'a>,
    },
    /// `RCPT TO:<to>`: answer with [`Server::reply`] (2xx adds the recipient).
    Rcpt { to: &'a str, params: RcptParams<'a> },
    /// AUTH's credentials (PLAIN or LOGIN, decoded): answer with [`Server::reply`], 235
    /// (2.7.0) if they are good, which authenticates the session; 535 (5.7.8) if not.
    Auth { user: String, password: Secret },
    /// Message bytes, dot-unstuffed (the message's own line endings, its last CRLF too).
    Body(&'a [u8]),
    /// The final dot: answer with [`Server::reply`]; the transaction ends either way.
    MessageEnd,
    /// The final dot of a message over `max_message_bytes`: 552 was written; discard what
    /// was collected.
    MessageTooBig,
    /// The final dot (or last chunk) of a message whose lines are not what SMTP allows
    /// (`strict_lines`): 550 was written; discard what was collected.
    MessageRefused,
    /// RSET, EHLO or HELO ended a transaction (MAIL accepted, or a message that had come
    /// in part in BDAT chunks before the LAST one): its reply was written; forget the
    /// transaction and discard what was collected, so none of it ends up in the next one.
    MessageAbandoned,
    /// 220 was written for STARTTLS: write it, discard any input after the command (RFC
    /// 3207: it was sent in the clear and must not count) and any transaction in progress
    /// with what was collected of it, run the handshake, then call [`Server::tls_started`].
    StartTls,
    /// Write what is pending and close (QUIT, a 421, or a line too long).
    Close,
}

/// A password, kept out of `Debug` output (and so out of logs).
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Before EHLO/HELO.
    Fresh,
    Greeted,
    /// MAIL accepted.
    Mail,
    /// Reading the message; the scanner's state (see `scan_body`).
    Data(u8),
    /// Reading a BDAT chunk (`Chunk` says how much is left and what comes after).
    Chunk,
    /// In an AUTH exchange (always from `Greeted`, and back to it).
    Auth(AuthStep),
    Closing,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    Nothing,
    Mail,
    Rcpt,
    MessageEnd,
    Auth,
}

/// One SMTP server session.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    phase: Phase,
    awaiting: Awaiting,
    tls: bool,
    /// Recipients accepted in this transaction.
    rcpts: usize,
    /// Octets of the current message so far.
    size: usize,
    commands: u64,
    /// The BDAT chunk being read.
    chunk: Chunk,
    /// A BDAT chunk was accepted in this transaction: DATA may not follow (RFC 3030).
    chunked: bool,
    /// The message's lines, checked as they come (`strict_lines`).
    lines: LineCheck,
    /// AUTH succeeded in this session.
    authenticated: bool,
    /// LOGIN's user name, between its two steps.
    login_user: String,
    /// The name the client gave in its last EHLO or HELO (at most 255 octets of it).
    helo: String,
}

/// A BDAT chunk being read.
#[derive(Debug, Clone, Copy)]
struct Chunk {
    /// Octets still to read.
    left: u64,
    last: bool,
    /// Refused: read and discard it, then give this reply and go back to `after`.
    refusal: Option<(u16, &'static str)>,
    after: Phase,
}

impl Server {
    pub fn new(config: ServerConfig) -> Server {
        Server {
            config,
            phase: Phase::Fresh,
            awaiting: Awaiting::Nothing,
            tls: false,
            rcpts: 0,
            size: 0,
            commands: 0,
            chunk: Chunk {
                left: 0,
                last: false,
                refusal: None,
                after: Phase::Fresh,
            },
            chunked: false,
            lines: LineCheck::default(),
            authenticated: false,
            login_user: String::new(),
            helo: String::new(),
        }
    }

    /// A session that starts inside TLS (implicit TLS, port 465).
    pub fn new_tls(config: ServerConfig) -> Server {
        Server {
            tls: true,
            ..Server::new(config)
        }
    }

    /// The 220 greeting.
    pub fn greeting(&self, out: &mut Vec<u8>) {
        let _ = write!(Line(out), "220 {} ESMTP\r\n", self.config.hostname);
    }

    /// True once STARTTLS completed (or the session began in TLS).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// Command lines handled so far (a shell that adds latency per command counts them).
    pub fn commands(&self) -> u64 {
        self.commands
    }

    /// The name the client gave in its last EHLO or HELO, as sent (lossily decoded), for
    /// trace fields; empty before one.
    pub fn helo(&self) -> &str {
        &self.helo
    }

    /// True once AUTH succeeded (the shell answered its `Event::Auth` with 235).
    pub fn is_authenticated(&self) -> bool {
        self.authenticated
    }

    /// Whether the current message came in BDAT chunks (until the next MAIL).
    pub fn is_chunked(&self) -> bool {
        self.chunked
    }

    /// Recipients accepted in the current transaction.
    pub fn recipients(&self) -> usize {
        self.rcpts
    }

    /// The handshake after STARTTLS succeeded: the session starts over (RFC 3207: the
    /// client must send EHLO again).
    pub fn tls_started(&mut self) {
        self.tls = true;
        self.phase = Phase::Fresh;
        self.awaiting = Awaiting::Nothing;
        self.rcpts = 0;
        self.chunked = false;
        self.lines = LineCheck::default();
        // RFC 3207 4.2: nothing learnt before the handshake counts after it.
        self.authenticated = false;
        self.login_user.clear();
    }

    /// Answers the decision the last event asked for: `code` (200-599) and `text` (an
    /// enhanced code first, by convention), one line. A 421 closes the session. With no
    /// decision pending it writes nothing: a reply nobody asked for would put every
    /// pipelined reply after it out of step.
    pub fn reply(&mut self, code: u16, text: &str, out: &mut Vec<u8>) {
        if self.awaiting == Awaiting::Nothing {
            return;
        }
        let code = code.clamp(200, 599);
        let positive = (200..300).contains(&code);
        match self.awaiting {
            Awaiting::Mail if positive => {
                self.phase = Phase::Mail;
                self.rcpts = 0;
                self.chunked = false;
            }
            Awaiting::Rcpt if positive => self.rcpts += 1,
            Awaiting::MessageEnd => {
                self.phase = Phase::Greeted;
                self.rcpts = 0;
                self.chunked = false;
            }
            Awaiting::Auth => {
                self.phase = Phase::Greeted;
                self.authenticated = positive;
            }
            Awaiting::Mail | Awaiting::Rcpt | Awaiting::Nothing => {}
        }
        self.awaiting = Awaiting::Nothing;
        out.extend_from_slice(code.to_string().as_bytes());
        out.push(b' ');
        // One line, whatever the text holds.
        out.extend(text.bytes().filter(|b| *b != b'\r' && *b != b'\n'));
        out.extend_from_slice(b"\r\n");
        if code == 421 {
            self.phase = Phase::Closing;
        }
    }

    /// Works through `input`: returns how many bytes were used and what the shell does
    /// next. Replies the protocol decides are appended to `out`. Bytes not used (an
    /// incomplete line) are offered again with more behind them.
    pub fn advance<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> (usize, Event<'a>) {
        if self.awaiting != Awaiting::Nothing {
            // The shell did not answer the last decision (a bug in it): refuse for now
            // rather than accept what nobody decided to take, and keep the replies in step.
            self.reply(451, "4.3.0 Not decided, try again later", out);
        }
        let mut used = 0;
        loop {
            if self.phase == Phase::Closing {
                return (used, Event::Close);
            }
            if self.phase == Phase::Chunk {
                let (n, event) = self.read_chunk(&input[used..], out);
                used += n;
                match event {
                    Some(event) => return (used, event),
                    None if used == input.len() && self.phase == Phase::Chunk => {
                        return (used, Event::NeedMore)
                    }
                    None => continue,
                }
            }
            if let Phase::Data(state) = self.phase {
                let (n, event) = self.body(state, &input[used..], out);
                used += n;
                match event {
                    Some(event) => return (used, event),
                    None if used == input.len() => return (used, Event::NeedMore),
                    None => continue,
                }
            }
            let rest = &input[used..];
            let Some(nl) = memchr::memchr(b'\n', rest) else {
                if rest.len() >= COMMAND_LINE_MAX {
                    self.line(500, "5.5.2 Line too long", out);
                    self.phase = Phase::Closing;
                    continue;
                }
                return (used, Event::NeedMore);
            };
            let line = &rest[..nl + 1];
            used += nl + 1;
            if line.len() > COMMAND_LINE_MAX {
                self.line(500, "5.5.2 Line too long", out);
                self.phase = Phase::Closing;
                continue;
            }
            self.commands += 1;
            let line = trim_crlf(line);
            let event = match self.phase {
                Phase::Auth(step) => self.auth_response(step, line, out),
                _ => self.command(line, out),
            };
            if let Some(event) = event {
                return (used, event);
            }
        }
    }

    fn line(&self, code: u16, text: &str, out: &mut Vec<u8>) {
        let _ = write!(Line(out), "{code} {text}\r\n");
    }

    /// One command line (without its line ending): replies to what the protocol decides,
    /// or the event for the shell.
    fn command<'a>(&mut self, line: &'a [u8], out: &mut Vec<u8>) -> Option<Event<'a>> {
        let verb_end = line.iter().position(|b| *b == b' ').unwrap_or(line.len());
        let verb = &line[..verb_end];
        let arg = line.get(verb_end + 1..).unwrap_or_default();
        let is = |name: &str| verb.eq_ignore_ascii_case(name.as_bytes());
        if is("EHLO") || is("HELO") {
            if arg.is_empty() {
                self.line(501, "5.5.4 Syntax: EHLO hostname", out);
                return None;
            }
            let open = self.phase == Phase::Mail;
            self.phase = Phase::Greeted;
            self.rcpts = 0;
            self.helo = String::from_utf8_lossy(&arg[..arg.len().min(255)]).into_owned();
            let abandoned =
                (std::mem::take(&mut self.chunked) || open).then_some(Event::MessageAbandoned);
            if is("HELO") {
                self.line(250, &self.config.hostname, out);
                return abandoned;
            }
            let c = &self.config;
            let mut w = Line(out);
            let _ = write!(w, "250-{}\r\n250-PIPELINING\r\n", c.hostname);
            let _ = write!(w, "250-SIZE {}\r\n250-8BITMIME\r\n", c.max_message_bytes);
            let _ = write!(w, "250-ENHANCEDSTATUSCODES\r\n");
            if c.auth && (self.tls || !c.auth_needs_tls) {
                let _ = write!(w, "250-AUTH PLAIN LOGIN\r\n");
            }
            if c.dsn {
                let _ = write!(w, "250-DSN\r\n");
            }
            if c.starttls && !self.tls {
                let _ = write!(w, "250-STARTTLS\r\n");
            }
            if c.chunking {
                let _ = write!(w, "250-CHUNKING\r\n");
            }
            let _ = write!(w, "250 SMTPUTF8\r\n");
            return abandoned;
        }
        if is("QUIT") {
            self.line(221, "2.0.0 Bye", out);
            self.phase = Phase::Closing;
            return Some(Event::Close);
        }
        if is("NOOP") {
            self.line(250, "2.0.0 OK", out);
            return None;
        }
        if is("RSET") {
            let open = self.phase == Phase::Mail;
            if self.phase != Phase::Fresh {
                self.phase = Phase::Greeted;
            }
            self.rcpts = 0;
            self.line(250, "2.0.0 OK", out);
            return (std::mem::take(&mut self.chunked) || open).then_some(Event::MessageAbandoned);
        }
        if is("VRFY") {
            self.line(252, "2.5.2 Cannot VRFY user", out);
            return None;
        }
        if is("STARTTLS") {
            if !self.config.starttls || self.tls {
                self.line(502, "5.5.1 STARTTLS not offered", out);
                return None;
            }
            if !arg.is_empty() {
                self.line(501, "5.5.4 Syntax: STARTTLS", out);
                return None;
            }
            self.line(220, "2.0.0 Ready to start TLS", out);
            return Some(Event::StartTls);
        }
        if is("MAIL") {
            if self.phase == Phase::Fresh {
                self.line(503, "5.5.1 EHLO first", out);
                return None;
            }
            if self.phase == Phase::Mail {
                self.line(503, "5.5.1 Nested MAIL command", out);
                return None;
            }
            let Some((from, params)) = path(arg, b"FROM:") else {
                self.line(501, "5.5.4 Syntax: MAIL FROM:<address>", out);
                return None;
            };
            let params = match params::mail(params, self.config.dsn) {
                Ok(p) => p,
                Err((code, text)) => {
                    self.line(code, text, out);
                    return None;
                }
            };
            if params
                .size
                .is_some_and(|s| s > self.config.max_message_bytes as u64)
            {
                self.line(552, "5.3.4 Message size exceeds fixed limit", out);
                return None;
            }
            let Ok(from) = std::str::from_utf8(from) else {
                self.line(501, "5.6.7 Address is not UTF-8", out);
                return None;
            };
            self.awaiting = Awaiting::Mail;
            return Some(Event::Mail { from, params });
        }
        if is("RCPT") {
            if self.phase != Phase::Mail {
                self.line(503, "5.5.1 MAIL first", out);
                return None;
            }
            let Some((to, params)) = path(arg, b"TO:").filter(|(to, _)| !to.is_empty()) else {
                self.line(501, "5.5.4 Syntax: RCPT TO:<address>", out);
                return None;
            };
            if self.rcpts >= self.config.max_recipients {
                self.line(452, "4.5.3 Too many recipients", out);
                return None;
            }
            let Ok(to) = std::str::from_utf8(to) else {
                self.line(501, "5.6.7 Address is not UTF-8", out);
                return None;
            };
            let params = match params::rcpt(params, self.config.dsn) {
                Ok(p) => p,
                Err((code, text)) => {
                    self.line(code, text, out);
                    return None;
                }
            };
            self.awaiting = Awaiting::Rcpt;
            return Some(Event::Rcpt { to, params });
        }
        if is("AUTH") {
            return self.auth(arg, out);
        }
        if is("BDAT") && self.config.chunking {
            return self.bdat(arg, out);
        }
        if is("DATA") {
            if self.phase != Phase::Mail {
                self.line(503, "5.5.1 MAIL first", out);
            } else if self.chunked {
                self.line(503, "5.5.1 DATA after BDAT", out);
            } else if self.rcpts == 0 {
                self.line(554, "5.5.1 No valid recipients", out);
            } else {
                self.size = 0;
                self.lines = LineCheck::default();
                // The body starts at a line start.
                self.phase = Phase::Data(2);
                self.line(354, "End data with <CR><LF>.<CR><LF>", out);
            }
            return None;
        }
        self.line(500, "5.5.2 Command not recognized", out);
        None
    }

    /// `BDAT n [LAST]`: starts reading the chunk, accepted or to be discarded.
    fn bdat<'a>(&mut self, arg: &[u8], out: &mut Vec<u8>) -> Option<Event<'a>> {
        let mut words = arg.split(|b| *b == b' ').filter(|w| !w.is_empty());
        let count = words.next().filter(|w| w.iter().all(u8::is_ascii_digit));
        let count = count.and_then(|w| std::str::from_utf8(w).ok()?.parse::<u64>().ok());
        let last = match words.next() {
            None => Some(false),
            Some(w) if w.eq_ignore_ascii_case(b"LAST") => Some(true),
            Some(_) => None,
        };
        let (Some(left), Some(last), None) = (count, last, words.next()) else {
            // Where the chunk ends is unknown: its octets would be read as commands.
            self.line(501, "5.5.4 Syntax: BDAT count [LAST]", out);
            self.phase = Phase::Closing;
            return Some(Event::Close);
        };
        let refusal = if self.phase != Phase::Mail {
            Some((503, "5.5.1 MAIL first"))
        } else if self.rcpts == 0 {
            Some((554, "5.5.1 No valid recipients"))
        } else {
            None
        };
        if refusal.is_none() && !self.chunked {
            self.chunked = true;
            self.size = 0;
            self.lines = LineCheck::default();
        }
        self.chunk = Chunk {
            left,
            last,
            refusal,
            after: self.phase,
        };
        self.phase = Phase::Chunk;
        None
    }

    /// Reads chunk octets: the next run of them for the shell, the message's end, or `None`
    /// when the bytes used held neither (discarded, past the size limit, a chunk's end).
    fn read_chunk<'a>(&mut self, input: &'a [u8], out: &mut Vec<u8>) -> (usize, Option<Event<'a>>) {
        let take = input
            .len()
            .min(usize::try_from(self.chunk.left).unwrap_or(usize::MAX));
        self.chunk.left -= take as u64;
        let run = &input[..take];
        if self.chunk.refusal.is_none() && !run.is_empty() {
            self.size = self.size.saturating_add(take);
            if self.config.strict_lines {
                self.lines.feed(run);
            }
            if self.size <= self.config.max_message_bytes && !self.lines.failed() {
                return (take, Some(Event::Body(run)));
            }
        }
        if self.chunk.left > 0 {
            return (take, None);
        }
        if let Some((code, text)) = self.chunk.refusal {
            self.phase = self.chunk.after;
            self.line(code, text, out);
            return (take, None);
        }
        if self.size > self.config.max_message_bytes {
            self.rcpts = 0;
            self.chunked = false;
            self.phase = Phase::Greeted;
            self.line(552, "5.3.4 Message size exceeds fixed limit", out);
            return (take, Some(Event::MessageTooBig));
        }
        self.phase = Phase::Mail;
        if !self.chunk.last {
            self.line(250, "2.0.0 Chunk received", out);
            return (take, None);
        }
        if let Some(event) = self.refuse_lines(out) {
            return (take, Some(event));
        }
        self.awaiting = Awaiting::MessageEnd;
        (take, Some(Event::MessageEnd))
    }

    /// Scans message bytes: the next run of body bytes, or the end of the message; `None`
    /// when the bytes used held neither (a stuffing dot, or bytes past the size limit).
    fn body<'a>(
        &mut self,
        mut state: u8,
        input: &'a [u8],
        out: &mut Vec<u8>,
    ) -> (usize, Option<Event<'a>>) {
        if state == HELD_CR {
            // A line-start dot, then CR, then not LF: the dot was stuffing, the CR is the
            // message's.
            self.phase = Phase::Data(1);
            self.size = self.size.saturating_add(1);
            if self.config.strict_lines {
                self.lines.feed(b"\r");
            }
            let within = self.size <= self.config.max_message_bytes && !self.lines.failed();
            return (0, within.then_some(Event::Body(b"\r")));
        }
        let (used, run, end) = scan_body(&mut state, input);
        self.phase = Phase::Data(state);
        let run = &input[run.0..run.1];
        if !run.is_empty() {
            self.size = self.size.saturating_add(run.len());
            if self.config.strict_lines {
                self.lines.feed(run);
            }
            // Past the limit (or a bad line) nothing more is handed out; the end still has
            // to be found.
            if self.size <= self.config.max_message_bytes && !self.lines.failed() {
                return (used, Some(Event::Body(run)));
            }
        }
        if !end {
            return (used, None);
        }
        if self.size > self.config.max_message_bytes {
            self.rcpts = 0;
            self.phase = Phase::Greeted;
            self.line(552, "5.3.4 Message size exceeds fixed limit", out);
            return (used, Some(Event::MessageTooBig));
        }
        self.phase = Phase::Mail;
        if let Some(event) = self.refuse_lines(out) {
            return (used, Some(event));
        }
        self.awaiting = Awaiting::MessageEnd;
        (used, Some(Event::MessageEnd))
    }

    /// At a message's end: with `strict_lines`, a message whose lines were not clean is
    /// refused here (550, the transaction ends), and nothing of it is kept.
    fn refuse_lines<'a>(&mut self, out: &mut Vec<u8>) -> Option<Event<'a>> {
        let fault = self.lines.finish()?;
        self.rcpts = 0;
        self.chunked = false;
        self.phase = Phase::Greeted;
        self.line(550, fault, out);
        Some(Event::MessageRefused)
    }
}

/// `scan_body`'s state for a CR held back after a line-start dot.
const HELD_CR: u8 = 5;

/// Scans message bytes from `state` (0 mid-line, 1 after CR, 2 at a line start, 3 after a
/// line-start dot, 4 after a line-start dot and CR; 5 is a CR held back, handled by the
/// caller). Returns how many bytes were used, the run of body bytes among them (start,
/// end), and whether the terminating line was found. A run stops before a line-start dot
/// (the dot is stuffing or the terminator's, never the message's).
fn scan_body(state: &mut u8, input: &[u8]) -> (usize, (usize, usize), bool) {
    let mut i = 0;
    // A run cannot begin with a dot at a line start: skip it.
    if *state == 2 {
        match input.first() {
            Some(b'.') => {
                *state = 3;
                i = 1;
            }
            Some(_) => {}
            None => return (0, (0, 0), false),
        }
    }
    if *state == 3 {
        match input.get(i) {
            Some(b'\r') => {
                *state = 4;
                i += 1;
            }
            // A stuffed dot: the line goes on from here.
            Some(_) => *state = 0,
            None => return (i, (i, i), false),
        }
    }
    if *state == 4 {
        match input.get(i) {
            Some(b'\n') => {
                *state = 2;
                return (i + 1, (i + 1, i + 1), true);
            }
            // ".\r" then something else: the dot was stuffing, the CR is the message's.
            Some(_) => {
                *state = HELD_CR;
                return (i, (i, i), false);
            }
            None => return (i, (i, i), false),
        }
    }
    let start = i;
    while i < input.len() {
        if *state == 0 {
            match memchr::memchr(b'\r', &input[i..]) {
                Some(p) => {
                    i += p + 1;
                    *state = 1;
                    continue;
                }
                None => {
                    i = input.len();
                    break;
                }
            }
        }
        let b = input[i];
        match (*state, b) {
            (1, b'\n') => {
                *state = 2;
                i += 1;
                // Stop before a line-start dot so it never reaches a run.
                if input.get(i) == Some(&b'.') {
                    return (i, (start, i), false);
                }
            }
            (_, b'\r') => {
                *state = 1;
                i += 1;
            }
            _ => {
                *state = 0;
                i += 1;
            }
        }
    }
    (i, (start, i), false)
}

/// The address in `FROM:<addr> params` (or `TO:`), and the parameters after it. The
/// keyword is matched without case; a space after the colon is tolerated.
fn path<'a>(arg: &'a [u8], keyword: &[u8]) -> Option<(&'a [u8], &'a [u8])> {
    let head = arg.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let rest = arg[keyword.len()..]
        .strip_prefix(b" ")
        .unwrap_or(&arg[keyword.len()..]);
    let rest = rest.strip_prefix(b"<")?;
    let close = memchr::memchr(b'>', rest)?;
    let addr = &rest[..close];
    let params = rest[close + 1..]
        .strip_prefix(b" ")
        .unwrap_or(&rest[close + 1..]);
    if addr.iter().any(|b| *b == b'<' || b.is_ascii_control()) {
        return None;
    }
    Some((addr, params))
}

fn trim_crlf(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// `fmt::Write` into a byte buffer (replies are ASCII).
struct Line<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Line<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests;
