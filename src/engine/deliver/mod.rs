//! The delivery runtime: home shards schedule, route and render their recipients; the owner
//! shard of each throttle scope holds its connections and limits and pulls rendered messages
//! from the homes with bounded credit (DESIGN.md, "Home shards store and prepare; owner shards
//! send").
//!
//! Home side: due recipients are routed (static route, else MX through the shard's resolver)
//! to a scope; the home tells the scope's owner how many it has waiting (`Demand`). Owner side:
//! the owner grants `Credit` while its window (`connection_limit` x `WINDOW_PER_CONNECTION`
//! messages ready or promised) has room; the home renders that many messages and sends them
//! (`Prepared`). Owner workers, at most `connection_limit` per scope, each keep one persistent
//! connection, pace sends to `max_message_rate` and reconnect after
//! `max_deliveries_per_connection`. Every result goes back to the home (`Outcomes`), which
//! appends it to its queue (group-committed) and to the delivery log, and schedules retries.
//!
//! Control handlers never wait: anything they send goes into the destination's outbox, which
//! a sender task per destination and mesh drains in order.
//!
//! Files: this one is the owner's shell (demand, grants, prepared messages, connection
//! workers, connecting); `schedule` the home's (ticks, routing, demand, rendering on credit);
//! `outcome` the outcome stage's (`finish`); `outbox` the per-destination outboxes.

mod outbox;
mod outcome;
mod schedule;

pub(super) use outbox::{ctl_sender, data_sender, Outbox};
pub(super) use schedule::scheduler;

use super::{CtlMsg, DataMsg, Shard};
use crate::config::Config;
use crate::delivery::connection::{ConnectError, Connection};
use crate::delivery::owner::{Recipients, Refusal, ScopeLimits, Take};
use crate::delivery::policy::{
    classify, classify_destination, decide, no_host_address, refused_destination, Attempted,
    BounceCategory, Decision, Fault, Outcome, RetryPolicy, Verdict,
};
use crate::delivery::scope::{
    owner_shard, scope_for_mx, scope_for_route, static_route, NextHop, Scope,
};
use crate::delivery::throttle::Change;
use crate::delivery::tls::TLS_BROKEN_FOR;
use crate::delivery_log::LogRecord;
use crate::dns::resolver::Destination;
use crate::message::Rendering;
use crate::queue::record::{MessagePayload, OutcomePayload, OutcomeState, RecipientPayload};
use crate::queue::store::EntryState;
use crate::schedule::{Route, Taken, Tick};
use crate::smtp::reply::printable;
use crate::smtp::session::TlsPolicy;
use crate::smtp::session::{CloseReason, RcptResult, Transaction};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::timer::{sleep, timeout};
use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the scheduler looks for due recipients.
pub const SCHEDULE_TICK: Duration = Duration::from_millis(10);
/// An idle connection worker closes its connection after this long.
pub const IDLE_CLOSE: Duration = Duration::from_secs(2);
/// Addresses one delivery attempt tries at most, across its hosts (Postfix's
/// `smtp_mx_address_limit` default).
pub const ADDRESSES_TRIED_MAX: usize = 5;
/// Servers that answered but refused (a 4xx/5xx greeting, EHLO or TLS failure) after which an
/// attempt gives up (Postfix's `smtp_mx_session_limit` default).
pub const SESSIONS_TRIED_MAX: usize = 2;
/// After failing to connect to every host of a scope, a worker waits this long.
pub const CONNECT_FAILURE_PAUSE: Duration = Duration::from_secs(1);
/// Longest the connection opened ahead of the first message may take.
pub const PRECONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// At shutdown, in-flight transactions get this long to finish.
pub const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// A rendered message for one recipient, on its way from home to owner.
pub struct Prepared {
    /// (sequence number, address) per recipient: several only for one verbatim message to
    /// one domain, which share a transaction.
    pub rcpts: Vec<(u64, String)>,
    pub home: usize,
    pub mail_from: String,
    pub message: Vec<u8>,
    pub message_id: String,
    /// (message record, domain) when more recipients may join this transaction.
    group: Option<(u64, u32)>,
    /// The destination's hosts (MX or route), in the order to try; shared, not copied,
    /// per message.
    pub hosts: Arc<[NextHop]>,
}

/// One recipient's result, on its way from owner to home.
pub struct OutcomeItem {
    pub seq: u64,
    pub rcpt: String,
    pub message_id: String,
    pub result: ItemResult,
    pub mx: String,
    pub ip: String,
    pub tls: String,
}

/// What happened to one recipient on the owner: the receiver's answer, or a decision made
/// before any connection (a destination refused by `delivery::guard`).
pub enum ItemResult {
    Smtp(RcptResult),
    Decided(Outcome),
}

/// How often the scheduler looks for idle scopes to forget.
pub const SCOPE_SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The owner's core, holding the messages prepared for its scopes.
pub type Owner = crate::delivery::owner::Owner<Prepared>;

impl Recipients for Prepared {
    fn recipients(&self) -> u32 {
        self.rcpts.len() as u32
    }
}

impl Shard {
    /// Owner: a home's demand changed.
    pub(super) fn on_demand(self: &Rc<Self>, scope: Scope, home: usize, count: u32) {
        let scope_key = scope.key.clone();
        let limits = scope_limits(&self.config.borrow(), &scope.key);
        let preconnect = self.owner.borrow_mut().demand(
            scope,
            limits,
            home,
            count,
            self.shared.clock.now(),
            self.closing.get(),
        );
        if let Some(hosts) = preconnect {
            self.shared.delivery_workers.fetch_add(1, Ordering::SeqCst);
            self.spawn_into(
                self.queues.delivery,
                worker(Rc::clone(self), scope_key.clone(), Some(hosts)),
            )
            .detach();
        }
        self.grant(&scope_key);
    }

    /// Owner: hands out `scope`'s credit where its window has room, round-robin over homes.
    fn grant(self: &Rc<Self>, scope: &str) {
        if self.closing.get() {
            // Draining: nothing new starts; what is promised comes back or waits.
            return;
        }
        let mut credits = Vec::new();
        self.owner.borrow_mut().grant(scope, &mut credits);
        for (home, n) in credits {
            let scope = scope.to_string();
            self.send_ctl(home, CtlMsg::Credit { scope, n });
        }
    }

    /// Owner: rendered messages arrived from a home.
    pub(super) fn on_prepared(
        self: &Rc<Self>,
        scope: String,
        home: usize,
        granted: u32,
        msgs: Vec<Prepared>,
    ) {
        let prepared =
            self.owner
                .borrow_mut()
                .prepared(&scope, home, granted, msgs, self.shared.clock.now());
        // Credit is out for a scope until its messages arrive, and a scope with credit out
        // is never forgotten: there is always one to take them. Should that ever fail, say
        // so rather than lose track silently.
        let spawn = match prepared {
            Ok(spawn) => spawn,
            Err(msgs) => {
                tracing::error!(
                    "shard {}: {} messages arrived for scope {} after it was forgotten (a bug); their recipients stay in flight until a restart",
                    self.id,
                    msgs.len(),
                    printable(&scope)
                );
                return;
            }
        };
        for _ in 0..spawn {
            self.shared.delivery_workers.fetch_add(1, Ordering::SeqCst);
            // `on_prepared` runs in a data receiver (the intake queue): place the worker
            // explicitly.
            self.spawn_into(
                self.queues.delivery,
                worker(Rc::clone(self), scope.clone(), None),
            )
            .detach();
        }
        self.wake_workers(&scope);
        self.grant(&scope);
    }

    /// Wakes the workers of `scope` waiting for a message.
    fn wake_workers(&self, scope: &str) {
        let waiting = self.idle_workers.borrow_mut().remove(scope);
        for w in waiting.into_iter().flatten() {
            let _ = w.try_send(());
        }
    }

    /// Wakes every waiting worker (the shard is draining: they leave).
    pub(super) fn wake_all_workers(&self) {
        let waiting = std::mem::take(&mut *self.idle_workers.borrow_mut());
        for w in waiting.into_values().flatten() {
            let _ = w.try_send(());
        }
    }

    /// A worker of `scope` leaves: its wake-up registrations go with it.
    fn forget_idle_worker(&self, scope: &str, wake: &Rc<LocalSender<()>>) {
        let mut idle = self.idle_workers.borrow_mut();
        if let Some(waiting) = idle.get_mut(scope) {
            waiting.retain(|w| !Rc::ptr_eq(w, wake));
            if waiting.is_empty() {
                idle.remove(scope);
            }
        }
    }
}

/// A scope's limits in the configuration in force.
pub(super) fn scope_limits(config: &Config, scope_key: &str) -> ScopeLimits {
    let provider = config.providers.get(scope_key);
    let (connection_limit, max_per_connection, tls) = match provider {
        Some(p) => (p.connection_limit, p.max_deliveries_per_connection, p.tls),
        None => (
            config.delivery.site_connection_limit,
            crate::config::DEFAULT_MAX_DELIVERIES_PER_CONNECTION,
            config.delivery.tls,
        ),
    };
    ScopeLimits {
        connection_limit,
        max_per_connection,
        tls,
        max_rate: configured_rate(config, scope_key),
    }
}

/// A provider's `max_message_rate` in messages per second.
fn configured_rate(config: &Config, scope_key: &str) -> Option<f64> {
    let r = config.providers.get(scope_key)?.max_message_rate?;
    Some(r.messages as f64 / r.per.as_secs_f64().max(1e-9))
}

/// Feeds one transaction's results to its scope's throttle and says when it changes course.
fn throttle_results(shard: &Shard, key: &str, results: &[RcptResult], paced_at: Instant) {
    let mut accepted = 0;
    let mut pushback = None;
    for r in results {
        match r {
            RcptResult::Reply(reply) if reply.code / 100 == 2 => accepted += 1,
            RcptResult::ConnectionLost(_) => {}
            other => {
                let o = classify(other);
                if o.pushback && pushback.is_none() {
                    pushback = Some(o.response);
                }
            }
        }
    }
    let change = shard.owner.borrow_mut().record_results(
        key,
        accepted,
        pushback.is_some(),
        paced_at,
        shard.shared.clock.now(),
    );
    match change {
        Change::Decreased(rate) => tracing::warn!(
            "{key}: receiver pushed back ({}); easing off to {rate:.0} messages/s",
            printable(&pushback.unwrap_or_default())
        ),
        Change::Cleared => tracing::info!(
            "{key}: no pushback for {} s; adaptive limit lifted",
            crate::delivery::throttle::CLEAR_AFTER.as_secs()
        ),
        Change::None => {}
    }
}

/// A worker of `key` was refused a connection with 421: lowers the scope's connection cap to
/// the workers still open and counts this one out. False (the worker stays) when it is the
/// last one.
fn fewer_connections(shard: &Shard, key: &str, reply: &crate::smtp::reply::Reply) -> bool {
    let refusal = shard
        .owner
        .borrow_mut()
        .connection_refused(key, shard.shared.clock.now());
    match refusal {
        Refusal::Stay => false,
        Refusal::Leave { lowered_to } => {
            if let Some(cap) = lowered_to {
                tracing::warn!(
                    "{key}: connection refused ({}); holding at {cap} connections",
                    printable(&reply.to_log_string()),
                );
            }
            shard.shared.delivery_workers.fetch_sub(1, Ordering::SeqCst);
            true
        }
    }
}

/// One connection's worth of sending for a scope, on its owner shard.
/// `preconnect`: connect to these hosts before the first message arrives.
async fn worker(shard: Rc<Shard>, key: String, preconnect: Option<Arc<[NextHop]>>) {
    let mut conn: Option<(Connection, Arc<[NextHop]>)> = None;
    if let Some(hosts) = preconnect {
        let settings = shard.owner.borrow().tls_policy(&key);
        if let Some(tls) = settings {
            // A failure here is not a message's: the first message connects again and
            // records what happens then. Bounded, so a dead host cannot hold the worker (and
            // with it the scope's only connection slot) for the whole connect timeout.
            if let Ok(Ok(c)) = timeout(PRECONNECT_TIMEOUT, async {
                Ok(connect_contained(&shard, &hosts, tls).await)
            })
            .await
            {
                conn = Some((c, hosts));
            }
        }
    }
    // Woken when messages arrive for the scope or the shard starts draining; no polling.
    let (wake_tx, wake_rx) = local_channel::new_bounded(1);
    let wake_tx = Rc::new(wake_tx);
    let mut idle_since = shard.shared.clock.now();
    loop {
        // Taking a message and deciding to exit happen in one borrow, so a message that
        // arrives as this worker leaves always finds the worker count already lowered (and
        // `on_prepared` starts another).
        let stop = shard.shared.failed() || shard.closing.get();
        let idle = shard.shared.clock.now().duration_since(idle_since) >= IDLE_CLOSE;
        let next = shard
            .owner
            .borrow_mut()
            .take(&key, shard.shared.clock.now(), stop, idle);
        let (mut msg, wait, max_per_connection, tls) = match next {
            Take::Send {
                msg,
                wait,
                max_per_connection,
                tls,
            } => (msg, wait, max_per_connection, tls),
            Take::Wait => {
                shard
                    .idle_workers
                    .borrow_mut()
                    .entry(key.clone())
                    .or_default()
                    .push(Rc::clone(&wake_tx));
                let waited = shard.shared.clock.now().duration_since(idle_since);
                let until_idle = IDLE_CLOSE.saturating_sub(waited);
                futures_lite::future::or(sleep(until_idle), async {
                    let _ = wake_rx.recv().await;
                })
                .await;
                continue;
            }
            Take::Exit => {
                shard.forget_idle_worker(&key, &wake_tx);
                shard.shared.delivery_workers.fetch_sub(1, Ordering::SeqCst);
                break;
            }
        };
        // The pace this message was sent at was set now: pushback on it is judged against
        // the rate in force now (`Throttle::record`).
        let paced_at = shard.shared.clock.now();
        shard.grant(&key);
        if !wait.is_zero() {
            sleep(wait).await;
        }
        // A connection serves one destination's hosts: a provider's domains can have MX
        // hosts of their own, and mail for one must not go to another's.
        let reusable = conn.as_ref().is_some_and(|(c, hosts)| {
            let same = Arc::ptr_eq(hosts, &msg.hosts) || **hosts == *msg.hosts;
            c.is_usable() && c.deliveries < max_per_connection && same
        });
        if !reusable {
            if let Some((c, _)) = conn.take() {
                c.quit().await;
            }
            match connect_contained(&shard, &msg.hosts, tls).await {
                Ok(c) => conn = Some((c, Arc::clone(&msg.hosts))),
                Err(failure) => {
                    let refused = failure.closing.clone();
                    let n = msg.rcpts.len();
                    let lost = match (failure.decided, failure.closing) {
                        // Nothing to connect to, for good: every recipient has its outcome.
                        (Some(o), _) => (0..n).map(|_| ItemResult::Decided(o.clone())).collect(),
                        // Retried soon, without counting an attempt.
                        (None, Some(reply)) => vec![RcptResult::ServiceClosing(reply); n]
                            .into_iter()
                            .map(ItemResult::Smtp)
                            .collect(),
                        (None, None) => vec![RcptResult::ConnectionLost(failure.why); n]
                            .into_iter()
                            .map(ItemResult::Smtp)
                            .collect(),
                    };
                    send_outcomes(
                        &shard,
                        &key,
                        msg.home,
                        outcome_items(&msg, lost, "", "", ""),
                    );
                    // Refused at the greeting: the receiver takes no more connections than
                    // are open, so this worker leaves and the scope holds at that count.
                    if let Some(reply) = refused {
                        if fewer_connections(&shard, &key, &reply) {
                            break;
                        }
                    }
                    sleep(CONNECT_FAILURE_PAUSE).await;
                    idle_since = shard.shared.clock.now();
                    continue;
                }
            }
        }
        let (c, _) = conn.as_mut().expect("connected above");
        let (mx, ip) = (c.mx.clone(), c.addr.ip().to_string());
        let tls_info = c.tls.clone().unwrap_or_default();
        let tx = Transaction {
            mail_from: msg.mail_from.clone(),
            rcpts: msg.rcpts.iter().map(|(_, r)| r.clone()).collect(),
            message: std::mem::take(&mut msg.message),
        };
        let mut results = match contained(c.send(tx)).await {
            Ok(results) => results,
            Err(why) => {
                // The connection's state is unknown after a bug: drop it, never reuse it.
                conn = None;
                let why = format!("internal error while sending (a bug, reported): {why}");
                vec![RcptResult::ConnectionLost(why); msg.rcpts.len()]
            }
        };
        if results.len() != msg.rcpts.len() {
            results = vec![RcptResult::ConnectionLost("no result".into()); msg.rcpts.len()];
        }
        throttle_results(&shard, &key, &results, paced_at);
        let results = results.into_iter().map(ItemResult::Smtp).collect();
        let items = outcome_items(&msg, results, &mx, &ip, &tls_info);
        send_outcomes(&shard, &key, msg.home, items);
        idle_since = shard.shared.clock.now();
    }
    if let Some((c, _)) = conn.take() {
        c.quit().await;
    }
}

/// One outcome per recipient of `msg`, `results` aligned with `msg.rcpts`.
fn outcome_items(
    msg: &Prepared,
    results: Vec<ItemResult>,
    mx: &str,
    ip: &str,
    tls: &str,
) -> Vec<OutcomeItem> {
    msg.rcpts
        .iter()
        .zip(results)
        .map(|((seq, rcpt), result)| OutcomeItem {
            seq: *seq,
            rcpt: rcpt.clone(),
            message_id: msg.message_id.clone(),
            result,
            mx: mx.to_string(),
            ip: ip.to_string(),
            tls: tls.to_string(),
        })
        .collect()
}

fn send_outcomes(shard: &Rc<Shard>, scope: &str, home: usize, items: Vec<OutcomeItem>) {
    shard.send_ctl(
        home,
        CtlMsg::Outcomes {
            scope: scope.to_string(),
            items,
        },
    );
}

/// Runs a future that handles a peer's bytes (SMTP replies, DNS answers). No byte sequence
/// may panic it, and the fuzz targets look for one; should one still be found in the field, the
/// panic ends this future with `Err(message)` (the caller fails that one transaction or lookup,
/// counted as an attempt) instead of taking the shard, and the engine, down with it. Each
/// panic is one line on stderr (after the panic hook's own report).
async fn contained<T>(f: impl std::future::Future<Output = T>) -> Result<T, String> {
    use futures_lite::FutureExt;
    std::panic::AssertUnwindSafe(f)
        .catch_unwind()
        .await
        .map_err(|payload| {
            let why = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "panic".into());
            tracing::error!("internal error contained: {}", printable(&why));
            why
        })
}

/// `connect`, with a panic in it turned into a failure to connect.
async fn connect_contained(
    shard: &Rc<Shard>,
    hosts: &[NextHop],
    policy: TlsPolicy,
) -> Result<Connection, ConnectFailure> {
    contained(connect(shard, hosts, policy))
        .await
        .unwrap_or_else(|why| {
            Err(ConnectFailure {
                why: format!("internal error while connecting (a bug, reported): {why}"),
                closing: None,
                decided: None,
            })
        })
}

/// Opens a connection to the first host of the destination that answers, trying at most
/// `ADDRESSES_TRIED_MAX` addresses and giving up after `SESSIONS_TRIED_MAX` servers that
/// answered but would not take mail (Postfix's `smtp_mx_address_limit` and
/// `smtp_mx_session_limit`), so a destination with many dead or refusing hosts costs a
/// worker a bounded time. Addresses from DNS in non-public ranges are skipped
/// (`delivery::guard`) unless `[delivery] allow_private_destinations`; static routes are not
/// checked. An opportunistic handshake that fails is retried in plaintext at once, and the
/// host gets plaintext for `TLS_BROKEN_FOR`.
async fn connect(
    shard: &Rc<Shard>,
    hosts: &[NextHop],
    policy: TlsPolicy,
) -> Result<Connection, ConnectFailure> {
    let config = shard.config.borrow().clone();
    let allow_private = config.delivery.allow_private_destinations;
    let mut last = String::from("no hosts");
    let mut closing = None;
    let (mut tried, mut sessions) = (0, 0);
    let mut refused = Vec::new();
    let mut no_address = Vec::new();
    'hosts: for hop in hosts {
        let addrs = match shard.resolver.addresses(&hop.name).await {
            Ok(a) => a,
            Err(e) => {
                if e.permanent {
                    no_address.push(e.why.clone());
                }
                last = e.why;
                continue;
            }
        };
        for ip in addrs {
            if !hop.from_route && !allow_private {
                if let Some(range) = crate::delivery::guard::address_refusal(ip) {
                    refused.push(format!("{} [{ip}] is {range}", hop.name));
                    continue;
                }
            }
            if tried == ADDRESSES_TRIED_MAX || sessions == SESSIONS_TRIED_MAX {
                break 'hosts;
            }
            tried += 1;
            let addr = SocketAddr::new(ip, hop.port);
            let name = &hop.name;
            let broken = shard
                .owner
                .borrow()
                .is_tls_broken(name, shard.shared.clock.now());
            let effective = match policy {
                TlsPolicy::Opportunistic if broken => TlsPolicy::Disabled,
                other => other,
            };
            let open = |p| {
                Connection::open(
                    name,
                    addr,
                    &config.smtp.helo_name,
                    p,
                    &shard.tls,
                    config.delivery.timeouts,
                    config.delivery.connect_timeout,
                )
            };
            match open(effective).await {
                Ok(c) => return Ok(c),
                Err(ConnectError::Tls(why)) if effective == TlsPolicy::Opportunistic => {
                    tracing::warn!(
                        "{name} [{addr}]: {}; plaintext for {} s",
                        printable(&why),
                        TLS_BROKEN_FOR.as_secs()
                    );
                    shard
                        .owner
                        .borrow_mut()
                        .mark_tls_broken(name, shard.shared.clock.now());
                    match open(TlsPolicy::Disabled).await {
                        Ok(c) => return Ok(c),
                        Err(e) => last = format!("{name} [{addr}]: {e}"),
                    }
                }
                Err(e) => {
                    match &e {
                        ConnectError::Refused(CloseReason::ServiceClosing(reply)) => {
                            closing = Some(reply.clone());
                            sessions += 1;
                        }
                        ConnectError::Refused(_) | ConnectError::Tls(_) => sessions += 1,
                        ConnectError::Unreachable(_) => {}
                    }
                    last = format!("{name} [{addr}]: {e}");
                }
            }
        }
    }
    // Nothing was tried: say why for good when DNS or the guard decided it.
    let decided = if tried > 0 {
        None
    } else if !refused.is_empty() {
        let shown: Vec<&str> = refused.iter().take(3).map(String::as_str).collect();
        Some(refused_destination(format!(
            "refusing to connect to a non-public address from DNS: {} (set [delivery] allow_private_destinations = true to allow)",
            shown.join("; ")
        )))
    } else if !hosts.is_empty() && no_address.len() == hosts.len() {
        let shown: Vec<&str> = no_address.iter().take(3).map(String::as_str).collect();
        Some(no_host_address(format!(
            "no host of the destination has an address: {}",
            shown.join("; ")
        )))
    } else {
        None
    };
    Err(ConnectFailure {
        why: last,
        closing,
        decided,
    })
}

/// Why no connection could be made, and the 421 a host answered with, if one did (a
/// receiver refusing at the greeting is pushing back, as much as one closing later).
struct ConnectFailure {
    why: String,
    closing: Option<crate::smtp::reply::Reply>,
    /// Nothing can be connected to, for good: the recipients' outcome.
    decided: Option<Outcome>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A panic in a future that handles a peer's bytes ends that future with its message;
    /// the executor (the shard) goes on running other work.
    #[test]
    fn a_panic_in_a_contained_future_is_an_error_not_a_crash() {
        let (caught, after) = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .make()
            .unwrap()
            .run(async {
                let caught = contained(async {
                    let reply: &[u8] = b"";
                    if reply.is_empty() {
                        panic!("bad reply from a peer");
                    }
                    1
                })
                .await;
                let after = contained(async { 2 }).await;
                (caught, after)
            });
        assert_eq!(caught, Err("bad reply from a peer".to_string()));
        assert_eq!(after, Ok(2));
    }
}
