//! One client's session on a gateway listener: the decisions the protocol core asks for
//! (relay, senders, limits, AUTH off the executor), and the queueing of its messages
//! through the shard's group commit before the 250.

use super::super::intake::feed_chunks;
use super::*;
use crate::delivery_log::EventType;
use crate::gateway::limits::LockoutRule;
use crate::gateway::{password, submission};
use crate::queue::record::{MESSAGE_RETURN, MESSAGE_RET_HDRS};
use crate::smtp::server::{Event as SmtpEvent, COMMAND_LINE_MAX};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite};
use std::net::SocketAddr;

/// One client's session: the core, and what the shell decided so far.
pub(super) struct Session {
    shard: Rc<Shard>,
    gateway: Rc<Gateway>,
    server: Server,
    peer: SocketAddr,
    /// False for a client a balancer could not name (`gateway::proxy::Source::Unnamed`):
    /// `relay_networks` does not apply to it.
    named: bool,
    /// The user AUTH authenticated, by name: looked up in the configuration in force each
    /// time (a reload may change or remove it; a removed user is no longer authenticated).
    user: Option<String>,
    /// The user's counts, and the recipients of this transaction taken from its limits.
    counter: Option<Arc<UserCounter>>,
    reserved: u64,
    auth_failures: u32,
    from: Option<String>,
    /// The transaction's DSN parameters (RFC 3461): RET=HDRS, ENVID, and per recipient
    /// (in step with `rcpts`) NOTIFY and ORCPT.
    dsn_headers_only: bool,
    dsn_envid: String,
    rcpts: Vec<String>,
    rcpt_dsn: Vec<(String, String)>,
    message: Vec<u8>,
    /// Suppression, checked at RCPT.
    suppressed: crate::suppression::Reader,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.end_transaction();
    }
}

impl Session {
    pub(super) fn new(
        shard: Rc<Shard>,
        gateway: Rc<Gateway>,
        peer: SocketAddr,
        named: bool,
    ) -> Session {
        Session {
            server: Server::new(gateway.server.clone()),
            gateway,
            peer,
            named,
            user: None,
            counter: None,
            reserved: 0,
            auth_failures: 0,
            from: None,
            dsn_headers_only: false,
            dsn_envid: String::new(),
            rcpts: Vec::new(),
            rcpt_dsn: Vec::new(),
            message: Vec::new(),
            suppressed: shard.shared.suppressions.reader(),
            shard,
        }
    }

    /// Serves the client on `stream` until it leaves: TLS at once (implicit), or after
    /// STARTTLS with the session reset (RFC 3207).
    pub(super) async fn run(mut self, mut stream: Prefixed<TcpStream>) {
        if self.gateway.listener.tls == ListenerTls::Implicit {
            let Some(cfg) = self.gateway.tls.clone() else {
                return;
            };
            let Ok(mut tls) = futures_rustls::TlsAcceptor::from(cfg).accept(stream).await else {
                return;
            };
            self.server = Server::new_tls(self.gateway.server.clone());
            let _ = self.serve(&mut tls, true).await;
            let _ = tls.close().await;
            return;
        }
        match self.serve(&mut stream, true).await {
            Ok(true) => {
                let Some(cfg) = self.gateway.tls.clone() else {
                    return;
                };
                let Ok(mut tls) = futures_rustls::TlsAcceptor::from(cfg).accept(stream).await
                else {
                    return;
                };
                self.server.tls_started();
                self.reset();
                let _ = self.serve(&mut tls, false).await;
                let _ = tls.close().await;
            }
            Ok(false) | Err(_) => {
                let _ = stream.close().await;
            }
        }
    }

    /// The authenticated user as the configuration in force has it, if it still does.
    fn current_user<'c>(&self, config: &'c Config) -> Option<&'c crate::config::User> {
        let name = self.user.as_deref()?;
        config.users.iter().find(|u| u.name == name)
    }

    fn reset(&mut self) {
        self.end_transaction();
        self.user = None;
        self.counter = None;
        self.auth_failures = 0;
        self.message.clear();
    }

    /// Forgets the transaction; recipients it took from the user's limits are given back.
    fn end_transaction(&mut self) {
        if let Some(c) = &self.counter {
            c.release(self.reserved);
        }
        self.reserved = 0;
        self.from = None;
        self.dsn_headers_only = false;
        self.dsn_envid.clear();
        self.rcpts.clear();
        self.rcpt_dsn.clear();
    }

    /// Runs the session on `stream` until it ends; `Ok(true)` when the client asked for
    /// STARTTLS (the 220 was written, and any bytes it sent after the command dropped).
    async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        stream: &mut S,
        greet: bool,
    ) -> std::io::Result<bool> {
        let mut out = Vec::new();
        if greet {
            self.server.greeting(&mut out);
            stream.write_all(&out).await?;
            out.clear();
        }
        let mut input: Vec<u8> = Vec::new();
        let mut read = vec![0u8; READ_BYTES];
        loop {
            let mut used_total = 0;
            loop {
                let (used, event) = self.server.advance(&input[used_total..], &mut out);
                used_total += used;
                match event {
                    SmtpEvent::NeedMore => break,
                    SmtpEvent::Close => {
                        stream.write_all(&out).await?;
                        let _ = stream.flush().await;
                        return Ok(false);
                    }
                    SmtpEvent::StartTls => {
                        stream.write_all(&out).await?;
                        stream.flush().await?;
                        return Ok(true);
                    }
                    event => self.decide(event, &mut out).await,
                }
            }
            input.drain(..used_total);
            if !out.is_empty() {
                stream.write_all(&out).await?;
                out.clear();
            }
            if self.shard.shared.stopping() {
                let _ = stream
                    .write_all(b"421 4.3.2 Shutting down, try again later\r\n")
                    .await;
                return Ok(false);
            }
            // What is left is less than one command line (the core's bound), or message
            // bytes it will take once more come.
            debug_assert!(input.len() <= COMMAND_LINE_MAX + READ_BYTES);
            let n = match stream.read(&mut read).await {
                Ok(0) => return Ok(false),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    let _ = stream
                        .write_all(b"421 4.4.2 Timeout, closing the connection\r\n")
                        .await;
                    return Ok(false);
                }
                Err(e) => return Err(e),
            };
            input.extend_from_slice(&read[..n]);
        }
    }

    /// Answers one decision the core asked for.
    async fn decide(&mut self, event: SmtpEvent<'_>, out: &mut Vec<u8>) {
        match event {
            SmtpEvent::Mail { from, params } => {
                let (code, text) = self.mail(from);
                if code == 250 {
                    self.dsn_headers_only = params.ret_full == Some(false);
                    self.dsn_envid = params.envid.unwrap_or("").to_string();
                }
                self.server.reply(code, &text, out);
            }
            SmtpEvent::Rcpt { to, params } => {
                let (code, text) = self.rcpt(to);
                if code == 250 && self.rcpt_dsn.len() < self.rcpts.len() {
                    self.rcpt_dsn.push((
                        params.notify.map_or(String::new(), notify_text),
                        params.orcpt.unwrap_or("").to_string(),
                    ));
                }
                self.server.reply(code, &text, out);
            }
            SmtpEvent::Body(b) => self.message.extend_from_slice(b),
            SmtpEvent::MessageEnd => {
                let (code, text) = self.message_end().await;
                self.server.reply(code, &text, out);
                self.end_transaction();
                // Not `clear`: an idle session keeps no message-sized buffer.
                self.message = Vec::new();
            }
            SmtpEvent::MessageTooBig | SmtpEvent::MessageRefused | SmtpEvent::MessageAbandoned => {
                self.message = Vec::new();
                self.end_transaction();
            }
            SmtpEvent::Auth { user, password } => {
                let (code, text) = self.auth(&user, password.0).await;
                self.server.reply(code, text, out);
            }
            SmtpEvent::NeedMore | SmtpEvent::Close | SmtpEvent::StartTls => {}
        }
    }

    fn mail(&mut self, from: &str) -> (u16, String) {
        let sender = if from.is_empty() {
            String::new()
        } else {
            match crate::address::parse_address(from) {
                Ok(a) => a.to_addr_string(),
                Err(e) => return (553, format!("5.1.7 Bad sender address: {}", e.0)),
            }
        };
        let config = self.shard.config.borrow().clone();
        if self.user.is_some() {
            let allowed = self
                .current_user(&config)
                .is_some_and(|u| policy::sender_allowed(&u.allowed_from, &sender));
            if !allowed {
                return (
                    553,
                    "5.7.1 Sender address not allowed for this user".to_string(),
                );
            }
        }
        self.end_transaction();
        self.from = Some(sender);
        (250, "2.1.0 OK".into())
    }

    fn rcpt(&mut self, to: &str) -> (u16, String) {
        let config = self.shard.config.borrow().clone();
        let networks: &[ipnet::IpNet] = if self.named {
            &self.gateway.listener.relay_networks
        } else {
            &[]
        };
        let relay = policy::may_relay(
            self.peer.ip(),
            self.current_user(&config).is_some(),
            networks,
            self.gateway.server.auth
                && (self.server.is_tls() || !self.gateway.server.auth_needs_tls),
        );
        if let Err((code, text)) = relay {
            return (code, text.to_string());
        }
        let rcpt = match crate::address::parse_address(to) {
            Ok(a) => a.to_addr_string(),
            Err(e) => return (553, format!("5.1.3 Bad recipient address: {}", e.0)),
        };
        if self.rcpts.contains(&rcpt) {
            // Twice in one transaction would be delivered twice; once is what was meant.
            return (250, "2.1.5 OK (duplicate)".into());
        }
        // A suppressed recipient is refused here, where its client still hears of it; the
        // entry and its source go to the delivery log only.
        let tenant = self
            .current_user(&config)
            .map_or_else(|| self.peer.ip().to_string(), |u| u.name.clone());
        let today = crate::suppression::day_of(self.shard.shared.clock.unix_ms());
        if let Some(hit) = self.suppressed.check(&rcpt, &tenant, today) {
            let text = "5.7.1 Recipient is on a suppression list";
            self.log_rejected(&rcpt, &tenant, 550, &format!("5.7.1 {hit}"));
            return (550, text.into());
        }
        if let (Some(user), Some(counter)) = (self.current_user(&config), &self.counter) {
            let now = self.shard.shared.clock.unix_ms();
            if let Err(hit) = counter.reserve(user.daily_limit, user.rate_limit, now) {
                let text = hit.reply_text();
                self.log_rejected(&rcpt, &user.name, 452, &text);
                return (452, text);
            }
            self.reserved += 1;
        }
        self.rcpts.push(rcpt);
        (250, "2.1.5 OK".into())
    }

    /// A `Rejected` record for a recipient refused at RCPT (its user's limits, suppression).
    fn log_rejected(&self, rcpt: &str, user: &str, code: u16, text: &str) {
        let enhanced = text.split(' ').next().unwrap_or("");
        let response = format!("{code} {text}");
        let record = crate::delivery_log::LogRecord {
            ts_unix_ms: self.shard.shared.clock.unix_ms(),
            event: Some(EventType::Rejected),
            recipient: rcpt,
            sender: self.from.as_deref().unwrap_or(""),
            tenant: user,
            domain: rcpt.rsplit_once('@').map_or("", |(_, d)| d),
            code: Some(code),
            enhanced,
            response: &response,
            ..Default::default()
        };
        let mut core = self.shard.core.borrow_mut();
        let logged = core.log.append(&record).and_then(|()| core.log.flush());
        drop(core);
        match logged {
            Ok(()) => {
                self.shard
                    .shared
                    .counters
                    .rejected
                    .fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => self.shard.shared.fail(format!("delivery log: {e}")),
        }
    }

    /// The final dot: the From header checked for an authenticated user, then the message
    /// queued durably.
    async fn message_end(&mut self) -> (u16, String) {
        let config = self.shard.config.borrow().clone();
        let user = self.current_user(&config);
        if self.user.is_some() && user.is_none() {
            return (550, "5.7.1 The authenticated user no longer exists".into());
        }
        if let Some(user) = user {
            let senders = policy::from_addresses(&self.message).and_then(|mut from| {
                from.extend(policy::sender_addresses(&self.message)?.unwrap_or_default());
                Ok(from)
            });
            match senders {
                Ok(addresses) => {
                    if let Some(bad) = addresses
                        .iter()
                        .find(|a| !policy::sender_allowed(&user.allowed_from, a))
                    {
                        return (
                            550,
                            format!("5.7.1 From/Sender address {bad} not allowed for this user"),
                        );
                    }
                }
                Err(why) => return (550, format!("5.6.0 {why}")),
            }
        }
        let (Some(sender), false) = (self.from.clone(), self.rcpts.is_empty()) else {
            return (503, "5.5.1 No transaction".into());
        };
        let tenant = match &user {
            Some(u) => u.name.clone(),
            None => self.peer.ip().to_string(),
        };
        if let Err(why) = self.check_before_sending(&config, &sender, &tenant) {
            return (550, format!("5.7.1 refused by [checks]: {why}"));
        }
        let batch_id = self.shard.next_batch_id();
        let id = format!("{batch_id:x}");
        let now = self.shard.shared.clock.unix_ms();
        let prepared = submission::prepare(
            &self.message,
            &submission::Trace {
                client_ip: self.peer.ip(),
                helo: self.server.helo(),
                host: &config.smtp.helo_name,
                tls: self.server.is_tls(),
                authenticated: user.is_some(),
                id: &id,
            },
            now,
        );
        // Failures go back to the sender as DSNs; never for a message from <> (no loops).
        let returned = !sender.is_empty();
        let (flags, var_names, values) = if returned {
            let flags = MESSAGE_RETURN
                | if self.dsn_headers_only {
                    MESSAGE_RET_HDRS
                } else {
                    0
                };
            let values = std::mem::take(&mut self.rcpt_dsn)
                .into_iter()
                .map(|(notify, orcpt)| vec![notify, orcpt, self.dsn_envid.clone()])
                .collect();
            let names = crate::dsn::VAR_NAMES.map(String::from).to_vec();
            (flags, names, values)
        } else {
            (0, Vec::new(), Vec::new())
        };
        // Transactional: ahead of campaign mail in its scope, unless the configuration says
        // otherwise.
        let flags = if self.shard.config.borrow().delivery.gateway_priority {
            flags | crate::queue::record::MESSAGE_PRIORITY
        } else {
            flags
        };
        // The user's pool, else its tenant's, else the default (validated with the
        // configuration, so a pool named here exists).
        let explicit = user.and_then(|u| u.pool.as_deref());
        let pool = config
            .egress
            .pool_for(explicit, &tenant)
            .ok()
            .flatten()
            .unwrap_or_default()
            .to_string();
        let spec = MessageSpec {
            batch_id,
            created_unix_ms: now,
            flags,
            sender,
            campaign: prepared.campaign,
            tenant,
            var_names,
            body: prepared.message,
            pool,
        };
        let rcpts = std::mem::take(&mut self.rcpts);
        let n = rcpts.len() as u64;
        // A user with a daily limit: its count goes to disk with the commit that makes the
        // message durable, so a restart never forgets a message that got its 250.
        let counted = user
            .filter(|u| u.daily_limit.is_some())
            .map(|u| (u.name.as_str(), n));
        match queue_submission(&self.shard, spec, rcpts, values, counted).await {
            Ok(()) => {
                if let Some(c) = &self.counter {
                    c.accept(self.reserved, now);
                    self.reserved = 0;
                }
                (250, format!("2.0.0 OK: queued as {id}"))
            }
            Err(Refused::Permanent(why)) => (554, format!("5.3.4 {why}")),
            Err(Refused::Temporary(why)) => (451, format!("4.3.0 {why}")),
        }
    }

    /// `[checks]` for a submitted message: a From of one valid address with a `[[dkim]]` key
    /// aligned with it. `Err` is the reason of a check set to `refuse`; one set to `warn`
    /// writes a `Check` record and lets the message through.
    fn check_before_sending(
        &self,
        config: &Config,
        sender: &str,
        tenant: &str,
    ) -> Result<(), String> {
        use crate::config::CheckAction;
        use crate::dkim::FromField;
        let failed = match crate::dkim::from_field(&self.message) {
            FromField::Missing => Some((config.checks.from, "no From header".to_string())),
            FromField::Invalid(why) => Some((config.checks.from, why)),
            FromField::Domain(d) if config.signers.aligned(&d).is_empty() => Some((
                config.checks.dkim,
                format!("no [[dkim]] key is aligned with the From domain {d}"),
            )),
            FromField::Domain(_) => None,
        };
        match failed {
            Some((CheckAction::Refuse, why)) => Err(why),
            Some((CheckAction::Warn, why)) => {
                let record = crate::delivery_log::LogRecord {
                    ts_unix_ms: self.shard.shared.clock.unix_ms(),
                    event: Some(EventType::Check),
                    sender,
                    tenant,
                    response: &why,
                    ..Default::default()
                };
                let logged = self.shard.core.borrow_mut().log.append(&record);
                if let Err(e) = logged {
                    self.shard.shared.fail(format!("delivery log: {e}"));
                }
                Ok(())
            }
            Some((CheckAction::Off, _)) | None => Ok(()),
        }
    }

    /// The reply to an AUTH: a locked-out address is not asked for a password; a failure
    /// waits `AUTH_FAILURE_DELAY` and counts for the address and the session.
    async fn auth(&mut self, user: &str, password: String) -> (u16, &'static str) {
        let shared = Arc::clone(&self.shard.shared);
        let ip = self.peer.ip();
        let gateway = Rc::clone(&self.gateway);
        let l = &gateway.listener;
        let rule = LockoutRule {
            failures_max: l.auth_failures_max,
            window_ms: l.auth_lockout.as_millis() as u64,
        };
        const LOCKED: (u16, &str) = (
            421,
            "4.7.0 Too many failed authentications from your address; try again later",
        );
        if shared
            .gateway
            .lockout()
            .locked_until(ip, shared.clock.unix_ms())
            .is_some()
        {
            return LOCKED;
        }
        if self.authenticate(user, password).await {
            return (235, "2.7.0 Authentication successful");
        }
        sleep(AUTH_FAILURE_DELAY).await;
        self.auth_failures += 1;
        let locked = shared
            .gateway
            .lockout()
            .failed(ip, shared.clock.unix_ms(), rule);
        if locked {
            tracing::warn!(
                "gateway: {ip} locked out for {} s after {} failed AUTH attempts",
                l.auth_lockout.as_secs(),
                l.auth_failures_max
            );
            return LOCKED;
        }
        if self.auth_failures >= AUTH_FAILURES_PER_SESSION_MAX {
            // 421 closes the session (the core's rule).
            return (421, "4.7.0 Too many failed authentications");
        }
        (535, "5.7.8 Authentication credentials invalid")
    }

    /// Checks `user`'s password off the executor (a hash takes tens of milliseconds).
    async fn authenticate(&mut self, user: &str, password: String) -> bool {
        let config = self.shard.config.borrow().clone();
        let found = config.users.iter().position(|u| u.name == user);
        // An unknown user costs a hash too, so the answer's timing does not say who exists.
        let hash = found.map_or(UNKNOWN_USER_HASH.to_string(), |i| {
            config.users[i].password_hash.clone()
        });
        // One check at a time per shard: the blocking thread also runs the group commit's
        // fdatasync, which then waits behind one hash at most, however many clients AUTH.
        let ok = {
            let _permit = self.shard.password_checks.acquire_permit(1).await;
            glommio::executor()
                .spawn_blocking(move || password::verify(&password, &hash))
                .await
        };
        if ok && found.is_some() {
            self.user = Some(user.to_string());
            self.counter = Some(self.shard.shared.gateway.user(user));
            tracing::info!(
                "gateway: {} authenticated as {}",
                self.peer.ip(),
                printable(user)
            );
            return true;
        }
        tracing::warn!(
            "gateway: failed AUTH from {} as {}",
            self.peer.ip(),
            printable(user)
        );
        false
    }
}

/// NOTIFY as the queue keeps it (`dsn::wanted` reads it).
fn notify_text(n: crate::smtp::server::Notify) -> String {
    if n.never {
        return "NEVER".into();
    }
    let words = [
        (n.success, "SUCCESS"),
        (n.failure, "FAILURE"),
        (n.delay, "DELAY"),
    ];
    let on: Vec<&str> = words.iter().filter(|w| w.0).map(|w| w.1).collect();
    on.join(",")
}

/// A well-formed argon2id hash nobody's password matches, checked for unknown users.
const UNKNOWN_USER_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$c3BhdGUtbm8tdXNlcg$2oTpbvJW7zl0mTgkqGd1Wv7sTqVg3pVmuWdoh2uFVyA";

/// Why a message was not queued.
enum Refused {
    /// It never will be (5xx).
    Permanent(String),
    /// Try again later (4xx): the engine is stopping or failed.
    Temporary(String),
}

/// Queues one submitted message on this shard (its home) and waits for the group commit.
/// Once the engine stops, nothing new is appended: a message appended then might be made
/// durable by the last commit with no 250 sent, and come again from the client's retry.
async fn queue_submission(
    shard: &Rc<Shard>,
    spec: MessageSpec,
    rcpts: Vec<String>,
    values: Vec<Vec<String>>,
    counted: Option<(&str, u64)>,
) -> Result<(), Refused> {
    if shard.shared.stopping() {
        return Err(Refused::Temporary(
            "the engine is stopping; try again later".into(),
        ));
    }
    let batch_id = spec.batch_id;
    let mut parser = Parser::submission(spec, rcpts, values, shard.shards)
        .map_err(|e| Refused::Permanent(format!("cannot queue: {e}")))?;
    let message = Arc::clone(parser.message());
    // `next_batch_id` makes this shard the message's home: its chunk, its group commit and
    // the user's count all stay here.
    debug_assert_eq!((batch_id % shard.shards as u64) as usize, shard.id);
    if let Some((user, n)) = counted {
        // Before the append, so the commit that makes the message durable syncs it too.
        let day = limits::utc_day(message.created_unix_ms);
        shard.gateway_counts.borrow_mut().add(day, user, n);
    }
    let (ack_tx, ack_rx) = local_channel::new_unbounded();
    shard.acks.borrow_mut().insert(batch_id, ack_tx);
    // The client waits for this commit: it starts without the usual window.
    let _ = shard.commit_urgent.try_send(());
    let result = feed_chunks(shard, &mut parser, &message, &ack_rx).await;
    shard.acks.borrow_mut().remove(&batch_id);
    // The batch's de-duplication state (for a resumed input; a submission is never
    // resumed) is released, or it would grow with every message.
    shard.core.borrow_mut().queue.release_batch(batch_id);
    match result {
        Ok(_) => Ok(()),
        // Appended here before the stop: `feed_chunks` waited for its acknowledgement, so
        // it is durable.
        Err(super::intake::Interrupted::Stopping) => Ok(()),
        Err(super::intake::Interrupted::Failed) => Err(Refused::Temporary(
            "the engine failed; try again later".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_unknown_user_hash_is_checked_like_any_other_and_matches_nothing() {
        assert_eq!(
            super::password::check_hash(super::UNKNOWN_USER_HASH),
            Ok(())
        );
        assert!(!super::password::verify("", super::UNKNOWN_USER_HASH));
    }
}
