//! The delivery runtime: the shells around the shard core's delivery stages
//! (`crate::shard`). Each shard schedules, routes, renders and sends its own recipients, over
//! its share of each throttle scope's connections (`delivery::shares`), pulling rendered
//! messages from its home side with bounded credit. What to send whom, when to start a worker, what a result means: the core decides.
//! Here: the scheduler's ticks, DNS lookups, the connection workers (connecting, pacing
//! waits, SMTP transactions), and the outboxes that carry the core's messages to shards.
//!
//! Control handlers never wait: anything they send goes into the destination's outbox, which
//! a sender task per destination and mesh drains in order.
//!
//! Files: this one is the owner's shell (connection workers, connecting); `schedule` the
//! home's (ticks, route lookups); `outbox` the per-destination outboxes.

mod outbox;
mod schedule;

pub(super) use outbox::{ctl_sender, data_sender, Outbox};
pub(super) use schedule::{resolve, scheduler};

use super::Shard;
use crate::delivery::connection::{ConnectError, Connection};
use crate::delivery::endpoints::{reusable_policy, Acquire, Peer};
use crate::delivery::owner::Take;
use crate::delivery::policy::{no_host_address, refused_destination, Outcome};
use crate::delivery::scope::NextHop;
use crate::delivery::tls::TLS_BROKEN_FOR;
use crate::shard::{Held, ItemResult, Prepared};
use crate::smtp::reply::printable;
use crate::smtp::session::TlsPolicy;
use crate::smtp::session::{CloseReason, RcptResult, Transaction};
use glommio::channels::local_channel::{self, LocalSender};
use glommio::timer::{sleep, timeout};
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
/// At shutdown, parked connections get this long for their QUIT.
pub const QUIT_WAIT_MAX: Duration = Duration::from_secs(5);
/// How often parked connections idle for `IDLE_CLOSE` are looked for and closed.
pub const PARK_SWEEP: Duration = Duration::from_millis(250);

/// A shard's connections by remote address; a worker in line waits on its wake-up channel.
pub type Endpoints = crate::delivery::endpoints::Endpoints<Connection, Rc<LocalSender<()>>>;

impl Shard {
    /// Starts a connection worker for `scope` (the owner counted it already).
    pub(super) fn spawn_worker(self: &Rc<Self>, scope: String, preconnect: Option<Arc<[NextHop]>>) {
        self.shared.delivery_workers.fetch_add(1, Ordering::SeqCst);
        // Placed explicitly: the call may come from a data receiver (the intake queue).
        let w = worker(Rc::clone(self), scope, preconnect);
        self.spawn_into(self.queues.delivery, w).detach();
    }

    /// Wakes the workers of `scope` waiting for a message.
    pub(super) fn wake_workers(&self, scope: &str) {
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

    /// A connection to `peer` is closed: its slot frees for the first worker in line.
    fn endpoint_closed(&self, peer: Peer) {
        let waiter = self.endpoints.borrow_mut().closed(peer);
        if let Some(w) = waiter {
            let _ = w.try_send(());
        }
    }

    /// Closes connections taken out of the parked set (counted as closing from now until
    /// each is closed); returns the tasks closing them, which a dropped handle would cancel:
    /// detach or await each.
    #[must_use = "a dropped task is cancelled, and its connection never counted closed"]
    pub(super) fn close_parked(
        self: &Rc<Self>,
        conns: Vec<(Peer, Connection)>,
    ) -> Vec<glommio::Task<()>> {
        if conns.is_empty() {
            return Vec::new();
        }
        self.with_core(|core| {
            for (_, c) in &conns {
                core.parked_closing(c.parked_by.as_deref());
            }
        });
        conns
            .into_iter()
            .map(|(peer, c)| self.quit_parked(peer, c))
            .collect()
    }

    /// The task that QUITs a parked connection counted as closing, then frees its slot and
    /// its place in the budget.
    pub(super) fn quit_parked(self: &Rc<Self>, peer: Peer, c: Connection) -> glommio::Task<()> {
        let shard = Rc::clone(self);
        self.spawn_into(self.queues.delivery, async move {
            let parked_by = c.parked_by.clone();
            c.quit().await;
            shard.endpoint_closed(peer);
            shard.with_core(|core| core.parked_closed(parked_by.as_deref()));
        })
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

/// Closes parked connections idle for `IDLE_CLOSE`, until the shard stops (the drain closes
/// the rest).
pub(super) async fn park_sweeper(shard: Rc<Shard>) {
    while !shard.core.borrow().is_closing() && !shard.shared.failed() {
        sleep(PARK_SWEEP).await;
        let expired = shard
            .endpoints
            .borrow_mut()
            .expired(shard.shared.clock.now());
        for task in shard.close_parked(expired) {
            task.detach();
        }
    }
}

/// Closes a worker's connection (QUIT, bounded) and frees its slot at the address.
async fn close(shard: &Shard, c: Connection) {
    let peer = c.peer();
    c.quit().await;
    shard.endpoint_closed(peer);
}

/// One connection's worth of sending for a scope, within this shard's share of it.
/// `preconnect`: connect to these hosts before the first message arrives.
async fn worker(shard: Rc<Shard>, key: String, preconnect: Option<Arc<[NextHop]>>) {
    let mut conn: Option<(Connection, Arc<[NextHop]>)> = None;
    if let Some(hosts) = preconnect {
        let settings = shard.core.borrow().owner.tls_policy(&key);
        if let Some(tls) = settings {
            // A failure here is not a message's: the first message connects again and
            // records what happens then. Bounded, so a dead host cannot hold the worker (and
            // with it the scope's only connection slot) for the whole connect timeout.
            if let Ok(Ok(c)) = timeout(PRECONNECT_TIMEOUT, async {
                // The first message checks the connection against its scope's deliveries
                // per connection (`reusable`, below).
                Ok(connect_contained(&shard, &key, &hosts, tls, u32::MAX).await)
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
    // A message taken to pipeline that could not go on this connection (another host set):
    // it goes next, after what is in flight.
    let mut later: Option<(Prepared, u32, TlsPolicy)> = None;
    loop {
        let next = match later.take() {
            Some((msg, max_per_connection, tls)) => Take::Send {
                msg,
                wait: Duration::ZERO,
                max_per_connection,
                tls,
            },
            None => take(&shard, &key, &mut conn, idle_since),
        };
        let (msg, wait, max_per_connection, tls) = match next {
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
                close(&shard, c).await;
            }
            match connect_contained(&shard, &key, &msg.hosts, tls, max_per_connection).await {
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
                    // Refused at the greeting: the receiver takes no more connections than
                    // are open, so this worker leaves and the scope holds at that count.
                    let leave = shard
                        .with_core(|core| core.connect_failed(&key, &msg, lost, refused.as_ref()));
                    if leave {
                        shard.shared.delivery_workers.fetch_sub(1, Ordering::SeqCst);
                        break;
                    }
                    sleep(CONNECT_FAILURE_PAUSE).await;
                    idle_since = shard.shared.clock.now();
                    continue;
                }
            }
        }
        send(
            &shard,
            &key,
            &mut conn,
            msg,
            paced_at,
            max_per_connection,
            tls,
            &mut later,
        )
        .await;
        idle_since = shard.shared.clock.now();
    }
    // Leaving with a connection it did not park (`Take::Exit`): the budget counts it until
    // it is closed.
    if let Some((c, _)) = conn.take() {
        close(&shard, c).await;
        shard.with_core(|core| core.connection_closed(&key));
    }
}

/// Sends `msg` (paced at `paced_at`) on the worker's connection and, while the receiver
/// offers PIPELINING and the scope has messages that may go now, the next ones behind it
/// (RFC 2920: each one's MAIL, RCPT and DATA right behind the previous one's final dot, one
/// round trip a message instead of two; with BDAT where `[delivery] chunking` allows it, each
/// one whole behind the previous), at most two in flight. Reports each transaction's
/// results as they come, in order. A message taken for another host set waits in `later`.
#[allow(clippy::too_many_arguments)]
async fn send(
    shard: &Rc<Shard>,
    key: &str,
    conn: &mut Option<(Connection, Arc<[NextHop]>)>,
    msg: Prepared,
    paced_at: Instant,
    max_per_connection: u32,
    tls: TlsPolicy,
    later: &mut Option<(Prepared, u32, TlsPolicy)>,
) {
    let Some((c, _)) = conn.as_ref() else {
        return;
    };
    let (mx, ip) = (c.mx.clone(), c.addr.ip().to_string());
    let tls_info = c.tls.clone().unwrap_or_default();
    let via = (mx.as_str(), ip.as_str(), tls_info.as_str());
    let mut in_flight: VecDeque<(Prepared, Instant)> = VecDeque::new();
    let mut first = Some((msg, paced_at));
    // Once per call, not per message: a reload applies from the worker's next call.
    let (pipelining, chunking) = {
        let config = shard.config.borrow();
        let provider = config.providers.get(key);
        let pipelining = provider
            .and_then(|p| p.pipeline_transactions)
            .unwrap_or(config.delivery.pipeline_transactions);
        let chunking = provider
            .and_then(|p| p.chunking)
            .unwrap_or(config.delivery.chunking);
        (pipelining, chunking)
    };
    if let Some((c, _)) = conn.as_mut() {
        c.set_chunking(chunking);
    }
    while let Some((c, hosts)) = conn.as_mut() {
        if let Some((mut m, at)) = first.take() {
            c.start(transaction(&mut m));
            in_flight.push_back((m, at));
        }
        while pipelining
            && !shard.shared.failed()
            && later.is_none()
            && in_flight.len() < 2
            && c.can_start()
            && c.deliveries + (in_flight.len() as u32) < max_per_connection
        {
            let Some(mut next) = shard.with_core(|core| core.take_now(key)) else {
                break;
            };
            if !(Arc::ptr_eq(hosts, &next.hosts) || **hosts == *next.hosts) {
                *later = Some((next, max_per_connection, tls));
                break;
            }
            c.start(transaction(&mut next));
            in_flight.push_back((next, shard.shared.clock.now()));
        }
        let Some((m, at)) = in_flight.pop_front() else {
            break;
        };
        let n = m.rcpts.len();
        match contained(c.next_done()).await {
            Ok(mut results) => {
                if results.len() != n {
                    results = vec![RcptResult::ConnectionLost("no result".into()); n];
                }
                shard.with_core(|core| core.sent(key, &m, results, at, via));
            }
            Err(why) => {
                // The connection's state is unknown after a bug: drop it, never reuse it;
                // whatever was in flight on it is retried.
                if let Some((c, _)) = conn.take() {
                    let addr = c.peer();
                    drop(c);
                    shard.endpoint_closed(addr);
                }
                let why = format!("internal error while sending (a bug, reported): {why}");
                for (m, at) in std::iter::once((m, at)).chain(in_flight.drain(..)) {
                    let lost = vec![RcptResult::ConnectionLost(why.clone()); m.rcpts.len()];
                    shard.with_core(|core| core.sent(key, &m, lost, at, via));
                }
                break;
            }
        }
    }
}

/// The transaction for `msg`; its rendered content moves into it.
fn transaction(msg: &mut Prepared) -> Transaction {
    Transaction {
        mail_from: msg.mail_from.clone(),
        rcpts: msg.rcpts.iter().map(|(_, r)| r.clone()).collect(),
        data: std::mem::take(&mut msg.data),
    }
}

/// A worker's next step (`Core::take`), with what becomes of its connection should it leave.
fn take(
    shard: &Rc<Shard>,
    key: &str,
    conn: &mut Option<(Connection, Arc<[NextHop]>)>,
    idle_since: Instant,
) -> Take<Prepared> {
    // Taking a message and deciding to exit happen in one borrow, so a message that
    // arrives as this worker leaves always finds the worker count already lowered (and
    // `on_prepared` starts another).
    let stop = shard.shared.failed();
    let mut idle = shard.shared.clock.now().duration_since(idle_since) >= IDLE_CLOSE;
    // Should this worker leave, its connection is parked for any scope to reuse if it
    // can serve another; it leaves at once when workers wait in line for its address.
    let held = match &*conn {
        None => Held::Nothing,
        Some((c, _)) => {
            idle |= shard.endpoints.borrow().has_waiters(c.peer());
            let reusable = c.is_usable()
                && reusable_policy(c.policy)
                && c.deliveries < crate::config::DEFAULT_MAX_DELIVERIES_PER_CONNECTION;
            let core = shard.core.borrow();
            if reusable && !stop && !core.is_closing() && !core.over_share(key) {
                Held::Parking
            } else {
                Held::Closing
            }
        }
    };
    // Taking, leaving and parking happen in one call: the budget counts the parked
    // connection before any effect of the call is applied.
    let next = shard.with_core(|core| {
        let next = core.take(key, stop, idle, held);
        if matches!(next, Take::Exit) && held == Held::Parking {
            if let Some((mut c, _)) = conn.take() {
                c.parked_by = Some(key.to_string());
                let (addr, policy) = (c.peer(), c.policy);
                let now = shard.shared.clock.now();
                let released = shard.endpoints.borrow_mut().release(addr, c, policy, now);
                match released {
                    Ok(Some(w)) => {
                        let _ = w.try_send(());
                    }
                    Ok(None) => {}
                    // Counted as parked already: closed as a parked one is (inside the
                    // core's borrow here, so told directly).
                    Err(c) => {
                        core.parked_closing(Some(key));
                        shard.quit_parked(addr, c).detach();
                    }
                }
            }
        }
        next
    });
    next
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
    key: &str,
    hosts: &[NextHop],
    policy: TlsPolicy,
    max_deliveries: u32,
) -> Result<Connection, ConnectFailure> {
    contained(connect(shard, key, hosts, policy, max_deliveries))
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
/// host gets plaintext for `TLS_BROKEN_FOR`. A scope at an egress source (`key`
/// `yahoo@mta1`) connects from the source's address with its EHLO name, to addresses of its
/// family only.
async fn connect(
    shard: &Rc<Shard>,
    key: &str,
    hosts: &[NextHop],
    policy: TlsPolicy,
    max_deliveries: u32,
) -> Result<Connection, ConnectFailure> {
    let config = shard.config.borrow().clone();
    let source = crate::delivery::scope::source_of(&config, key);
    let local = source.map(|s| s.address);
    let helo = source.map_or(config.smtp.helo_name.as_str(), |s| s.helo_name.as_str());
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
            if local.is_some_and(|l| l.is_ipv4() != ip.is_ipv4()) {
                last = format!(
                    "{} [{ip}]: not of the address family of source {}",
                    hop.name,
                    source.map_or("", |s| s.name.as_str())
                );
                continue;
            }
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
            let peer = Peer {
                local,
                remote: addr,
            };
            let name = &hop.name;
            let broken = shard
                .core
                .borrow()
                .owner
                .is_tls_broken(name, shard.shared.clock.now());
            let effective = match policy {
                TlsPolicy::Opportunistic if broken => TlsPolicy::Disabled,
                other => other,
            };
            let wait = config.delivery.connect_timeout;
            let mut c = match endpoint(shard, peer, effective, max_deliveries, wait).await {
                Slot::Parked(c) => *c,
                Slot::Open => {
                    // The slot frees if the connect fails, or if this future is dropped
                    // while connecting (the preconnect's bound).
                    let mut slot = SlotGuard {
                        shard,
                        peer,
                        armed: true,
                    };
                    match open(shard, &config, hop, peer, helo, effective).await {
                        Ok(c) => {
                            slot.armed = false;
                            c
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
                            last = format!("{} [{peer}]: {e}", hop.name);
                            continue;
                        }
                    }
                }
                Slot::Full => {
                    last = format!(
                        "{} [{peer}]: {} connections to the address already (ip_connection_limit); none came free within {:?}",
                        hop.name,
                        shard.endpoints.borrow().open(peer),
                        config.delivery.connect_timeout
                    );
                    continue;
                }
            };
            c.retarget(&hop.name);
            return Ok(c);
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

/// What a worker gets at an address.
enum Slot {
    /// A connection another worker parked there.
    Parked(Box<Connection>),
    /// A slot to open a connection in (`endpoint_closed` if it fails).
    Open,
    /// None within the wait: the address stayed at its cap.
    Full,
}

/// A slot at an address, freed when dropped armed.
struct SlotGuard<'a> {
    shard: &'a Shard,
    peer: Peer,
    armed: bool,
}

impl Drop for SlotGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.shard.endpoint_closed(self.peer);
        }
    }
}

/// A place in line at an address, left when dropped (also when the waiting future is). A
/// worker that leaves may have been woken for a slot it did not take: the next in line gets
/// it.
struct InLine<'a> {
    shard: &'a Shard,
    peer: Peer,
    wake: Rc<LocalSender<()>>,
}

impl Drop for InLine<'_> {
    fn drop(&mut self) {
        let wake = &self.wake;
        let next = {
            let mut endpoints = self.shard.endpoints.borrow_mut();
            endpoints.unwait(self.peer, |w| Rc::ptr_eq(w, wake));
            endpoints.wake_if_room(self.peer)
        };
        if let Some(w) = next {
            let _ = w.try_send(());
        }
    }
}

/// A parked connection to `addr` made under `policy` with fewer than `max_deliveries`
/// deliveries, else a slot to open one, waiting in line up to `wait` while the address is at
/// its cap.
async fn endpoint(
    shard: &Rc<Shard>,
    peer: Peer,
    policy: TlsPolicy,
    max_deliveries: u32,
    wait: Duration,
) -> Slot {
    let started = shard.shared.clock.now();
    let (wake_tx, wake_rx) = local_channel::new_bounded(1);
    let line = InLine {
        shard,
        peer,
        wake: Rc::new(wake_tx),
    };
    loop {
        let got = shard.endpoints.borrow_mut().acquire(peer, policy);
        match got {
            Acquire::Parked(mut c) if c.is_usable() && c.deliveries < max_deliveries => {
                let parked_by = c.parked_by.take();
                shard.with_core(|core| core.unparked(parked_by.as_deref()));
                // Woken for a slot, perhaps, and took this instead: the slot goes on.
                let next = shard.endpoints.borrow_mut().wake_if_room(peer);
                if let Some(w) = next {
                    let _ = w.try_send(());
                }
                return Slot::Parked(Box::new(c));
            }
            Acquire::Parked(c) => {
                // Closed while parked, or past this scope's deliveries per connection: closed
                // as a parked one is (counted in the budget until its QUIT is done, by a task
                // of its own, so even a dropped future frees its slot); then the worker
                // tries again.
                shard.with_core(|core| core.parked_closing(c.parked_by.as_deref()));
                shard.quit_parked(peer, c).detach();
                continue;
            }
            Acquire::Open => return Slot::Open,
            Acquire::Full => {}
        }
        let left = wait.saturating_sub(shard.shared.clock.now().duration_since(started));
        if left.is_zero() || shard.shared.failed() || shard.core.borrow().is_closing() {
            return Slot::Full;
        }
        // In line once: a wake-up takes the entry out, a timeout leaves it for `line`'s drop.
        let wake = Rc::clone(&line.wake);
        shard
            .endpoints
            .borrow_mut()
            .unwait(peer, |w| Rc::ptr_eq(w, &wake));
        shard.endpoints.borrow_mut().wait(peer, policy, wake);
        futures_lite::future::or(
            async {
                let _ = wake_rx.recv().await;
            },
            sleep(left),
        )
        .await;
    }
}

/// Opens a connection to `hop` at `peer`, saying `helo`. An opportunistic handshake that
/// fails is retried in plaintext at once (in the same slot), and the host gets plaintext for
/// `TLS_BROKEN_FOR`.
async fn open(
    shard: &Rc<Shard>,
    config: &crate::config::Config,
    hop: &NextHop,
    peer: Peer,
    helo: &str,
    policy: TlsPolicy,
) -> Result<Connection, ConnectError> {
    let name = &hop.name;
    let addr = peer.remote;
    let open = |p| {
        Connection::open(
            name,
            addr,
            peer.local,
            helo,
            p,
            &shard.tls,
            config.delivery.timeouts,
            config.delivery.connect_timeout,
        )
    };
    match open(policy).await {
        Err(ConnectError::Tls(why)) if policy == TlsPolicy::Opportunistic => {
            tracing::warn!(
                "{name} [{addr}]: {}; plaintext for {} s",
                printable(&why),
                TLS_BROKEN_FOR.as_secs()
            );
            shard.with_core(|core| core.tls_broken(name));
            open(TlsPolicy::Disabled).await
        }
        other => other,
    }
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
