//! The owner's side of sending, sans I/O. Every shard runs one, for its own recipients, over
//! its share of each scope's connections (`delivery::shares`); per scope it keeps the demand, the credit granted against it (a window of
//! `WINDOW_PER_CONNECTION` messages per allowed connection, so nothing piles up when a
//! receiver slows down), the prepared messages waiting for a connection, the connection cap
//! that follows the receiver's refusals, and the pacing of the scope's throttle.
//!
//! Across its scopes, an owner keeps two budgets, so that a long tail of destinations (tens
//! of thousands of sites, each wanting its own connections and window) costs a bounded number
//! of descriptors and bytes: at most `connections_max` workers (connections) at once, and at
//! most `connections_max x WINDOW_PER_CONNECTION` messages ready or promised. A scope that
//! wants a worker when none is free waits in line for the next one that leaves (and while
//! scopes wait, a worker with nothing to send leaves at once instead of idling); a scope
//! whose credit the shared window cannot cover waits in line for room.
//!
//! The shard's core (`crate::shard`) turns its answers into messages to homes and into
//! connection workers, which the engine's shell runs. Every method takes `now`; nothing here
//! reads a clock or does I/O.

use crate::delivery::scope::{NextHop, Scope};
use crate::delivery::throttle::{Change, Throttle};
use crate::delivery::tls::TLS_BROKEN_FOR;
use crate::smtp::session::TlsPolicy;
use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Messages an owner keeps ready or promised per allowed connection. Enough to cover a
/// credit round trip (within the shard now, through its outbox); every one is a rendered message in memory, so more only
/// costs memory (16 held 540 MiB of 100 KiB messages in the standard scenario, 4 hold 200).
pub const WINDOW_PER_CONNECTION: u32 = 4;
/// A paced scope keeps at most this long of its pace ready or promised (`room`).
pub const PACED_WINDOW: Duration = Duration::from_millis(250);
/// A paced scope's window is never below this many messages, however slow its pace.
pub const PACED_WINDOW_MIN: u32 = 4;
/// Most messages granted to one home at once (recipients of one pickup message that share a
/// transaction must come in one grant).
pub const CREDIT_BATCH_MAX: u32 = 16;
/// While a scope holds below its connection limit after a refusal, one more connection is
/// allowed after this long without another.
pub const CONN_CAP_RAISE: Duration = Duration::from_secs(30);
/// An owner forgets a scope idle this long (its adaptive state included: a minute without
/// pushback lifts that anyway), so the map holds the scopes in use, not every site ever seen.
pub const SCOPE_IDLE_FORGET: Duration = Duration::from_secs(600);
/// Idle scopes an owner keeps at most, whatever their age; beyond it the longest idle go.
pub const IDLE_SCOPES_MAX: usize = 10_000;
/// Hosts remembered as TLS-broken at most (a name each, so a few MB). Beyond it the entry that
/// lapses first goes: forgetting one costs one failed handshake, retried in plaintext at once.
pub const TLS_BROKEN_HOSTS_MAX: usize = 10_000;

/// What the owner needs to know of a message: how many recipients it carries (the rate
/// counts recipients, so a shared transaction uses one slot each).
pub trait Recipients {
    fn recipients(&self) -> u32;
}

/// A scope's limits, from the configuration in force.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScopeLimits {
    pub connection_limit: u32,
    pub max_per_connection: u32,
    pub tls: TlsPolicy,
    /// `max_message_rate` in messages per second, if configured.
    pub max_rate: Option<f64>,
    /// The adaptive throttle's parameters.
    pub controller: crate::delivery::throttle::Controller,
    /// `provider_max_message_rate` in messages per second: a pace every scope of the
    /// provider (one per egress source) shares, across shards (`Owner::set_paces`).
    pub provider_rate: Option<f64>,
}

/// A reply rule's cap on a scope (`delivery::rules`), while in force.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct RuleCap {
    pub rate: Option<f64>,
    pub connections: Option<u32>,
}

/// Owner-side state of one scope.
struct OwnerScope<M> {
    limits: ScopeLimits,
    /// Connections the receiver currently accepts (<= `connection_limit`): lowered when it
    /// refuses one with 421 at the greeting, raised again one at a time while it does not.
    conn_cap: u32,
    conn_cap_at: Instant,
    /// Pacing: `max_message_rate` as the ceiling, the receiver's pushback beneath it.
    throttle: Throttle,
    /// Per home: recipients waiting there (as last announced, less credit granted since),
    /// and credit granted whose messages have not arrived.
    demand: Vec<u32>,
    credit_out: Vec<u32>,
    ready: VecDeque<M>,
    workers: u32,
    /// Connections of this scope's workers that left, still closing: the receiver counts
    /// them, so the scope's cap does too.
    closing: u32,
    /// Connections this scope's workers parked (`delivery::endpoints`), until another
    /// scope's worker takes them or they close: the receiver counts them too.
    parked: u32,
    next_send: Instant,
    /// A reply rule's cap in force (`set_rule_cap`).
    rule_cap: RuleCap,
    /// The home the next grant starts with.
    rr: usize,
    /// Last time this scope had demand, messages or workers; idle scopes are forgotten.
    last_busy: Instant,
    /// In the owner's line for a worker (`Owner::starved`) or for window room
    /// (`Owner::blocked`).
    starved: bool,
    blocked: bool,
    /// The hosts of the scope's latest demand, for a connection opened before messages
    /// arrive.
    hosts: Option<Arc<[NextHop]>>,
    /// In `Owner::touched` since the last `take_touched`.
    touched: bool,
    /// What operators are told of its recent trouble (boxed: most scopes never have any).
    notes: Option<Box<ScopeNotes>>,
}

/// A scope's recent trouble, for `queue why`, the status page and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScopeNotes {
    /// The last temporary failure: (Unix ms, reply text).
    pub last_failure: Option<(u64, String)>,
    /// The last pushback reply: (Unix ms, reply text).
    pub last_pushback: Option<(u64, String)>,
    /// Since when the receiver's pushback holds it beneath its ceiling (Unix ms).
    pub throttled_since: Option<u64>,
    /// Connections the receiver refused at the greeting.
    pub refused: u64,
}

/// A note's reply text is cut to this many bytes.
pub const NOTE_TEXT_MAX: usize = 300;

fn note_text(text: &str) -> String {
    let mut end = text.len().min(NOTE_TEXT_MAX);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

impl<M> OwnerScope<M> {
    fn new(limits: ScopeLimits, homes: usize, now: Instant) -> Self {
        OwnerScope {
            throttle: Throttle::with_controller(limits.max_rate, limits.controller, now),
            limits,
            conn_cap: limits.connection_limit,
            conn_cap_at: now,
            demand: vec![0; homes],
            credit_out: vec![0; homes],
            ready: VecDeque::new(),
            workers: 0,
            closing: 0,
            parked: 0,
            next_send: now,
            rule_cap: RuleCap::default(),
            notes: None,
            rr: 0,
            last_busy: now,
            starved: false,
            blocked: false,
            hosts: None,
            touched: false,
        }
    }

    /// Notes `key` in `touched` (once until taken): something changed that may have left
    /// the scope idle.
    fn touch(&mut self, key: &str, touched: &mut Vec<String>) {
        if !self.touched {
            self.touched = true;
            touched.push(key.to_string());
        }
    }

    /// Workers this scope could use now: one per message waiting, within its cap less the
    /// connections still closing or parked.
    fn workers_wanted(&self) -> u32 {
        let held = self.closing + self.parked;
        (self.ready.len() as u32).min(self.conn_cap.saturating_sub(held))
    }

    /// The limits of the configuration in force. A cap that stood at the old connection
    /// limit follows the new one (up or down); one the receiver's refusals lowered stays,
    /// within the new limit.
    /// When the new rate is faster, the next send is paced from it: the slot reserved at
    /// the slower old pace is brought forward.
    fn set_limits(&mut self, limits: ScopeLimits, now: Instant) {
        self.conn_cap = if self.conn_cap == self.limits.connection_limit {
            limits.connection_limit
        } else {
            self.conn_cap.min(limits.connection_limit)
        };
        if let Some(n) = self.rule_cap.connections {
            self.conn_cap = self.conn_cap.min(n).max(1);
        }
        self.limits = limits;
        let before = self.throttle.interval().unwrap_or(Duration::ZERO);
        self.throttle
            .set_configured(capped(limits.max_rate, self.rule_cap.rate));
        self.throttle.set_controller(limits.controller);
        let after = self.throttle.interval().unwrap_or(Duration::ZERO);
        if after < before {
            self.next_send = self.next_send.min(now + after);
        }
    }

    /// A reply rule's cap from now on (`RuleCap::default()`: none). A rate cap that ends
    /// leaves the throttle at it, climbing from there at its step; a connection cap that ends
    /// leaves the cap where it was, raised one at a time as after refusals.
    fn set_rule_cap(&mut self, cap: RuleCap, now: Instant) {
        if cap == self.rule_cap {
            return;
        }
        let ended = self.rule_cap;
        self.rule_cap = cap;
        if let (Some(rate), None) = (ended.rate, cap.rate) {
            self.throttle.resume_from(rate, now);
        }
        if cap.connections.is_none() && ended.connections.is_some() {
            self.conn_cap_at = now;
        }
        self.set_limits(self.limits, now);
    }

    /// Paced at nothing: this node's lease of a cluster-wide rate is empty for now
    /// (`crate::cluster`); messages wait here until it is not.
    fn shut(&self) -> bool {
        self.throttle.rate().is_some_and(|r| r <= 0.0)
            || self.limits.provider_rate.is_some_and(|r| r <= 0.0)
    }

    /// Nothing wanted, promised, waiting or sending.
    fn is_idle(&self) -> bool {
        self.workers == 0
            && self.closing == 0
            && self.parked == 0
            && self.ready.is_empty()
            && self.demand.iter().all(|&d| d == 0)
            && self.credit_out.iter().all(|&c| c == 0)
    }

    /// Credit this scope can still give: its window less what waits here or is promised.
    /// A paced scope's window is also at most `PACED_WINDOW` of its pace: what is rendered
    /// here has left its home's lanes, so a deeper window would only delay mail that comes
    /// first there (transactional mail, a tenant's fair share) behind it.
    fn room(&self) -> u32 {
        let mut window = self.limits.connection_limit * WINDOW_PER_CONNECTION;
        if let Some(interval) = self.throttle.interval() {
            let paced = PACED_WINDOW.as_secs_f64() / interval.as_secs_f64().max(1e-9);
            window = window.min((paced as u32).max(PACED_WINDOW_MIN));
        }
        let promised: u32 = self.credit_out.iter().sum();
        window.saturating_sub(self.ready.len() as u32 + promised)
    }
}

/// One scope as its owner sees it, for a status snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct ScopeStatus {
    pub key: String,
    pub limits: ScopeLimits,
    /// Connections the receiver accepts now (`connection_limit` unless refusals lowered it).
    pub connection_cap: u32,
    pub workers: u32,
    /// Connections its workers parked for reuse, and connections still closing: both count
    /// against its cap (a scope with messages, no workers and a full cap of these waits for
    /// them to go).
    pub parked: u32,
    pub closing: u32,
    /// Rendered messages here, waiting for a worker.
    pub ready: u32,
    /// Credit granted whose messages have not arrived.
    pub credit_out: u32,
    /// Recipients the homes said are waiting (less the credit granted since).
    pub demand: u32,
    /// The rate in force (messages a second), if any: the configured ceiling or the
    /// receiver's pushback beneath it.
    pub rate: Option<f64>,
    /// The adaptive limit alone, while the receiver's pushback holds the scope back.
    pub adaptive_limit: Option<f64>,
    pub pushbacks: u64,
    pub notes: ScopeNotes,
}

/// What a connection worker does next.
#[derive(Debug, PartialEq)]
pub enum Take<M> {
    /// Send `msg` after `wait` (the throttle's pacing).
    Send {
        msg: M,
        wait: Duration,
        max_per_connection: u32,
        tls: TlsPolicy,
    },
    /// Nothing to send yet; ask again shortly.
    Wait,
    /// Leave: stopping, idle for long enough, or the scope is gone. The worker is counted out.
    Exit,
}

/// A worker refused a connection with 421 at the greeting.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// It is the scope's last worker: it stays, and tries again after a pause.
    Stay,
    /// It leaves (counted out); the cap now holds at the workers still open, `Some(cap)` if
    /// that lowered it.
    Leave { lowered_to: Option<u32> },
}

/// Everything one shard owns of sending.
pub struct Owner<M> {
    homes: usize,
    scopes: HashMap<String, OwnerScope<M>>,
    /// Workers (connections) this shard may run at once, across its scopes.
    connections_max: u32,
    /// Workers running, across scopes.
    workers_total: u32,
    /// Connections of workers that left, still closing (QUIT sent, socket open): they count
    /// against the budget until closed.
    closing: u32,
    /// Connections parked for any scope to reuse (`delivery::endpoints`): they count against
    /// the budget, and are the first closed when it needs room.
    parked: u32,
    /// Messages ready or promised (credit out), across scopes.
    window_used: u32,
    /// Scopes that want a worker the budget could not give, in the order they asked.
    starved: VecDeque<String>,
    /// Scopes with demand the shared window could not cover, in the order they asked.
    blocked: VecDeque<String>,
    /// Hosts whose opportunistic TLS handshake failed, until when they get plaintext.
    tls_broken: HashMap<String, Instant>,
    /// Scopes whose demand, credit, workers or held connections went down since the last
    /// `take_touched`: the only ones that can have become idle, so the shard asks about
    /// these instead of every scope it wants.
    touched: Vec<String>,
    /// Providers' paces across sources and shards (`provider_max_message_rate`).
    paces: Arc<crate::delivery::pace::SharedPaces>,
}

impl<M: Recipients> Owner<M> {
    /// An owner for an engine of `homes` shards, running at most `connections_max`
    /// connections at once (at least one).
    pub fn new(homes: usize, connections_max: u32) -> Self {
        Owner {
            homes,
            scopes: HashMap::new(),
            connections_max: connections_max.max(1),
            workers_total: 0,
            closing: 0,
            parked: 0,
            window_used: 0,
            starved: VecDeque::new(),
            blocked: VecDeque::new(),
            tls_broken: HashMap::new(),
            touched: Vec::new(),
            paces: Arc::default(),
        }
    }

    /// The scopes that may have become idle since the last call (each once), in the order
    /// they were touched.
    /// A reply rule's cap on `key` from now on (`RuleCap::default()`: none).
    pub fn set_rule_cap(&mut self, key: &str, cap: RuleCap, now: Instant) {
        if let Some(s) = self.scopes.get_mut(key) {
            s.set_rule_cap(cap, now);
        }
    }

    /// The scopes with a reply rule's cap in force.
    pub fn rule_capped(&self) -> Vec<String> {
        self.scopes
            .iter()
            .filter(|(_, s)| s.rule_cap != RuleCap::default())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The paces shared with the other shards' owners (a new owner has its own).
    pub fn share_paces(&mut self, paces: Arc<crate::delivery::pace::SharedPaces>) {
        self.paces = paces;
    }

    pub fn take_touched(&mut self) -> Vec<String> {
        let touched = std::mem::take(&mut self.touched);
        for key in &touched {
            if let Some(s) = self.scopes.get_mut(key) {
                s.touched = false;
            }
        }
        touched
    }

    /// Workers running across scopes, and the most allowed.
    pub fn workers(&self) -> (u32, u32) {
        (self.workers_total, self.connections_max)
    }

    /// Connections counted against the budget: workers running, connections parked, and
    /// connections of workers that left still closing.
    pub fn connections(&self) -> u32 {
        self.workers_total + self.closing + self.parked
    }

    /// Connections parked now.
    pub fn parked(&self) -> u32 {
        self.parked
    }

    /// A worker of `key` that left (`Take::Exit`) parked its connection for any scope to
    /// reuse; it counts for `key` until taken or closed.
    pub fn park(&mut self, key: &str) {
        self.parked += 1;
        if let Some(s) = self.scopes.get_mut(key) {
            s.parked += 1;
        }
    }

    /// A worker (counted already) took a connection `parked_by` a scope's worker. True
    /// when that scope's messages waited for it (its parked connections filled its cap): a
    /// worker is counted in for them, to start.
    pub fn unpark(&mut self, parked_by: Option<&str>) -> bool {
        self.parked = self.parked.saturating_sub(1);
        let Some(key) = parked_by else {
            return false;
        };
        match self.scopes.get_mut(key) {
            Some(s) => {
                s.parked = s.parked.saturating_sub(1);
                s.touch(key, &mut self.touched);
            }
            None => return false,
        }
        self.held_released(key)
    }

    /// A parked connection taken out to close (`parked_closing`) is closed. True when a
    /// worker is counted in for the messages of the scope that parked it, as in `unpark`.
    pub fn parked_closed(&mut self, parked_by: Option<&str>) -> bool {
        self.closing = self.closing.saturating_sub(1);
        let Some(key) = parked_by else {
            return false;
        };
        match self.scopes.get_mut(key) {
            Some(s) => {
                s.closing = s.closing.saturating_sub(1);
                s.touch(key, &mut self.touched);
            }
            None => return false,
        }
        self.held_released(key)
    }

    /// One of `key`'s connections held against its cap (closing or parked) went: if its
    /// messages waited for that, a worker is counted in for them (true: start it), or the
    /// scope waits in line for a slot. Every way a held connection goes must come here,
    /// or a message can wait with no worker and nothing to wake it.
    fn held_released(&mut self, key: &str) -> bool {
        let free = self.connections_free();
        let Some(s) = self.scopes.get_mut(key) else {
            return false;
        };
        if s.workers >= s.workers_wanted() {
            return false;
        }
        if free > 0 {
            s.workers += 1;
            self.workers_total += 1;
            return true;
        }
        if !s.starved {
            s.starved = true;
            self.starved.push_back(key.to_string());
        }
        false
    }

    /// A parked connection is closing (idle too long, the budget needs its room, its scope's
    /// share went down, or the shard stops): it counts until `parked_closed`.
    pub fn parked_closing(&mut self, parked_by: Option<&str>) {
        if self.parked == 0 {
            return;
        }
        self.parked -= 1;
        self.closing += 1;
        if let Some(s) = parked_by.and_then(|k| self.scopes.get_mut(k)) {
            s.parked = s.parked.saturating_sub(1);
            s.closing += 1;
        }
    }

    /// Parked connections to close so that scopes in line for a worker get one, when the
    /// budget has no other room: one per scope in line beyond the connections already
    /// closing. The shell closes what it can and says so (`parked_closing`).
    pub fn parked_to_evict(&self) -> u32 {
        if self.connections_free() > 0 {
            return 0;
        }
        let short = (self.starved.len() as u32).saturating_sub(self.closing);
        self.parked.min(short)
    }

    /// A worker of `key` that left (`Take::Exit`) is closing its connection: it still holds
    /// a descriptor and the receiver still counts it, so the budget and the scope's cap
    /// count it until `connection_closed`.
    pub fn connection_closing(&mut self, key: &str) {
        self.closing += 1;
        if let Some(s) = self.scopes.get_mut(key) {
            s.closing += 1;
        }
    }

    /// A connection counted by `connection_closing` (or `parked_closing`, with no scope) is
    /// closed. True when `key` has messages its closing connections held a worker back from:
    /// one is started for it (counted in); if the budget has no room, the scope waits in
    /// line.
    pub fn connection_closed(&mut self, key: &str) -> bool {
        self.closing = self.closing.saturating_sub(1);
        match self.scopes.get_mut(key) {
            Some(s) => {
                s.closing = s.closing.saturating_sub(1);
                s.touch(key, &mut self.touched);
            }
            None => return false,
        }
        self.held_released(key)
    }

    /// True when `key` has messages here waiting for a worker.
    pub fn has_ready(&self, key: &str) -> bool {
        self.scopes.get(key).is_some_and(|s| !s.ready.is_empty())
    }

    /// Slots left in the connection budget.
    fn connections_free(&self) -> u32 {
        self.connections_max.saturating_sub(self.connections())
    }

    /// Messages ready or promised across scopes, and the most allowed.
    pub fn window(&self) -> (u32, u32) {
        (
            self.window_used,
            self.connections_max * WINDOW_PER_CONNECTION,
        )
    }

    /// Room left in the shared window.
    fn window_room(&self) -> u32 {
        (self.connections_max * WINDOW_PER_CONNECTION).saturating_sub(self.window_used)
    }

    /// Scopes known (busy or idle within the bounds).
    pub fn scopes(&self) -> usize {
        self.scopes.len()
    }

    /// `home` now has `count` recipients waiting for `scope`; `limits` are the configuration
    /// in force (a reload takes effect scope by scope, here). When this demand wakes an idle
    /// scope, returns the hosts to open a connection to at once, while the homes render (a
    /// worker is counted for it); not while `draining`.
    pub fn demand(
        &mut self,
        scope: Scope,
        limits: ScopeLimits,
        home: usize,
        count: u32,
        now: Instant,
        draining: bool,
    ) -> Option<Arc<[NextHop]>> {
        let homes = self.homes;
        let free = self.connections_free();
        let Scope { key, hosts } = scope;
        let s = self
            .scopes
            .entry(key.clone())
            .or_insert_with(|| OwnerScope::new(limits, homes, now));
        s.set_limits(limits, now);
        if count < s.demand[home] {
            s.touch(&key, &mut self.touched);
        }
        s.demand[home] = count;
        s.last_busy = now;
        // This demand's hosts: those of the scope's first demand may be stale (an MX change,
        // or a provider whose domains have MX hosts of their own).
        s.hosts = Some(hosts);
        self.warm_up(&key, free, draining)
    }

    /// New limits for `key` (its share of connections changed): when they let an idle scope
    /// with demand open a connection, returns the hosts to open it to (a worker is counted
    /// for it), as `demand` does; with messages waiting here, how many workers to start for
    /// them (counted in), as `prepared` does.
    pub fn relimit(
        &mut self,
        key: &str,
        limits: ScopeLimits,
        now: Instant,
        draining: bool,
    ) -> (Option<Arc<[NextHop]>>, u32) {
        let free = self.connections_free();
        let Some(s) = self.scopes.get_mut(key) else {
            return (None, 0);
        };
        s.set_limits(limits, now);
        if s.ready.is_empty() || draining {
            return (self.warm_up(key, free, draining), 0);
        }
        // Messages that waited for a share (a turn that moved away and back): workers for
        // them, as when messages arrive.
        (None, self.start_workers(key, free))
    }

    /// Counts in the workers `key`'s waiting messages want, as many as `free` slots allow;
    /// if that is fewer, the scope waits in line for the rest. Returns how many to start.
    fn start_workers(&mut self, key: &str, free: u32) -> u32 {
        let Some(s) = self.scopes.get_mut(key) else {
            return 0;
        };
        let wanted = s.workers_wanted().saturating_sub(s.workers);
        let spawn = wanted.min(free);
        s.workers += spawn;
        self.workers_total += spawn;
        if spawn < wanted && !s.starved {
            s.starved = true;
            self.starved.push_back(key.to_string());
        }
        spawn
    }

    /// A worker for `key` to connect before its messages arrive, if it has demand, no worker
    /// and room for one.
    fn warm_up(&mut self, key: &str, free: u32, draining: bool) -> Option<Arc<[NextHop]>> {
        let s = self.scopes.get_mut(key)?;
        let warm = s.demand.iter().any(|&d| d > 0)
            && s.workers == 0
            && s.closing + s.parked < s.conn_cap
            && s.ready.is_empty()
            && !draining;
        if !warm || free == 0 {
            return None;
        }
        s.workers += 1;
        self.workers_total += 1;
        s.hosts.clone()
    }

    /// True while `key` has recipients here or on their way: demand, credit out, messages
    /// ready, or workers.
    pub fn is_busy(&self, key: &str) -> bool {
        self.scopes.get(key).is_some_and(|s| !s.is_idle())
    }

    /// True while `key` has mail to send here: demand, credit out or messages ready (its
    /// workers aside, which may only be finishing or waiting).
    pub fn has_mail(&self, key: &str) -> bool {
        self.scopes.get(key).is_some_and(|s| {
            !s.ready.is_empty()
                || s.demand.iter().any(|&d| d > 0)
                || s.credit_out.iter().any(|&c| c > 0)
        })
    }

    /// True when `key` runs more workers than its cap (a lowered share or limit).
    pub fn over_cap(&self, key: &str) -> bool {
        self.scopes.get(key).is_some_and(|s| s.workers > s.conn_cap)
    }

    /// `key`'s pace (its throttle and next send), for the shard whose turn comes next.
    pub fn pace(&self, key: &str) -> Option<crate::delivery::shares::Pace> {
        let s = self.scopes.get(key)?;
        Some(crate::delivery::shares::Pace {
            throttle: s.throttle.clone(),
            next_send: s.next_send,
        })
    }

    /// Follows the pace another shard's turn ended with: its throttle (the adaptive limit
    /// included; the ceiling stays this configuration's) and no send before its next slot.
    pub fn adopt_pace(&mut self, key: &str, pace: crate::delivery::shares::Pace) {
        if let Some(s) = self.scopes.get_mut(key) {
            s.throttle = pace.throttle;
            s.throttle
                .set_configured(capped(s.limits.max_rate, s.rule_cap.rate));
            s.throttle.set_controller(s.limits.controller);
            s.next_send = s.next_send.max(pace.next_send);
        }
    }

    /// Connections of `key` held now: its workers', those it parked and those still
    /// closing.
    pub fn holding(&self, key: &str) -> u32 {
        self.scopes
            .get(key)
            .map_or(0, |s| s.workers + s.closing + s.parked)
    }

    /// A reload: every known scope takes its limits from the new configuration at once
    /// (a scope whose messages are all here would otherwise keep the old ones until its next
    /// demand: the simulation found one sending at a lowered `max_message_rate`'s old pace).
    pub fn reconfigure(&mut self, limits_of: impl Fn(&str) -> ScopeLimits, now: Instant) {
        for (key, s) in &mut self.scopes {
            s.set_limits(limits_of(key), now);
        }
    }

    /// Credit where `key`'s window has room, round-robin over the homes that want some, at
    /// most `CREDIT_BATCH_MAX` at a time: appends (home, n) to `out`. Only the scope whose
    /// demand, messages or workers changed can have new room, so a grant costs that scope's
    /// homes, not every scope the owner knows.
    pub fn grant(&mut self, key: &str, out: &mut Vec<(usize, u32)>) {
        let shared_room = self.window_room();
        let Some(s) = self.scopes.get_mut(key) else {
            return;
        };
        let own_room = s.room();
        let mut room = own_room.min(shared_room);
        let granted_before = out.len();
        let homes = s.demand.len();
        let mut idle_rounds = 0;
        while room > 0 && idle_rounds < homes {
            let h = s.rr % homes;
            s.rr += 1;
            let want = s.demand[h];
            if want == 0 {
                idle_rounds += 1;
                continue;
            }
            idle_rounds = 0;
            let n = want.min(room).min(CREDIT_BATCH_MAX);
            s.demand[h] -= n;
            s.credit_out[h] += n;
            room -= n;
            out.push((h, n));
        }
        let granted: u32 = out[granted_before..].iter().map(|(_, n)| n).sum();
        self.window_used += granted;
        // Demand left that the scope's own window had room for: the shared window held it
        // back, and this scope waits in line for room.
        let wants_more = s.demand.iter().any(|&d| d > 0);
        if wants_more && own_room > granted && !s.blocked {
            s.blocked = true;
            self.blocked.push_back(key.to_string());
        }
    }

    /// Credit for the scopes waiting in line for window room, while there is room: appends
    /// (scope, home, n) to `out`. Call when messages leave the window (taken or handed back).
    pub fn grant_waiting(&mut self, out: &mut Vec<(String, usize, u32)>) {
        let mut credits = Vec::new();
        while self.window_room() > 0 {
            let Some(key) = self.blocked.pop_front() else {
                break;
            };
            if let Some(s) = self.scopes.get_mut(&key) {
                s.blocked = false;
            }
            credits.clear();
            self.grant(&key, &mut credits);
            out.extend(credits.iter().map(|&(home, n)| (key.clone(), home, n)));
        }
    }

    /// Messages prepared by `home` with `granted` credit of `key` arrived (fewer than
    /// granted when some were no longer due, none when the home handed the credit back).
    /// Returns how many workers to start. Messages for a scope forgotten meanwhile (it
    /// cannot be, while credit is out) are handed back.
    pub fn prepared(
        &mut self,
        key: &str,
        home: usize,
        granted: u32,
        msgs: Vec<M>,
        now: Instant,
    ) -> Result<u32, Vec<M>> {
        let free = self.connections_free();
        let Some(s) = self.scopes.get_mut(key) else {
            return Err(msgs);
        };
        let returned = s.credit_out[home].min(granted);
        s.credit_out[home] -= returned;
        let arrived = msgs.len() as u32;
        if arrived < returned {
            s.touch(key, &mut self.touched);
        }
        s.ready.extend(msgs);
        s.last_busy = now;
        self.window_used = self.window_used.saturating_sub(returned) + arrived;
        if s.conn_cap < s.limits.connection_limit
            && now.duration_since(s.conn_cap_at) >= CONN_CAP_RAISE
        {
            s.conn_cap += 1;
            s.conn_cap_at = now;
        }
        Ok(self.start_workers(key, free))
    }

    /// Scopes waiting in line for a worker, one worker each while the budget allows: the
    /// scopes to start a worker for (counted in). Call when a worker leaves.
    pub fn spawn_starved(&mut self) -> Vec<String> {
        let mut out = Vec::new();
        while self.connections_free() > 0 {
            let Some(key) = self.starved.pop_front() else {
                break;
            };
            let Some(s) = self.scopes.get_mut(&key) else {
                continue;
            };
            s.starved = false;
            if s.workers >= s.workers_wanted() {
                continue;
            }
            s.workers += 1;
            self.workers_total += 1;
            // Still short: back in line behind the others.
            if s.workers < s.workers_wanted() {
                s.starved = true;
                self.starved.push_back(key.clone());
            }
            out.push(key);
        }
        out
    }

    /// A worker of `key` asks for its next message. `stop`: the engine stops or failed;
    /// `idle`: the worker has had nothing to send for long enough to close. Taking a message
    /// and counting a worker out happen in one call, so a message that arrives as a worker
    /// leaves always finds the count lowered (and `prepared` starts another).
    pub fn take(&mut self, key: &str, now: Instant, stop: bool, idle: bool) -> Take<M> {
        let Some(s) = self.scopes.get_mut(key) else {
            return Take::Exit;
        };
        s.last_busy = now;
        // More workers than the cap (a reload lowered `connection_limit`): this one leaves
        // before taking another message, so the scope comes down to its limit as the
        // connections finish what they are sending.
        let excess = s.workers > s.conn_cap;
        let msg = if stop || excess || s.shut() {
            None
        } else {
            s.ready.pop_front()
        };
        let Some(msg) = msg else {
            // With other scopes in line for a worker, one with nothing to send and nothing on
            // its way gives its connection up at once rather than idling on it.
            let coming = s.credit_out.iter().any(|&c| c > 0);
            let give_up = !self.starved.is_empty() && !coming;
            if stop || idle || excess || give_up {
                s.workers = s.workers.saturating_sub(1);
                self.workers_total = self.workers_total.saturating_sub(1);
                s.touch(key, &mut self.touched);
                return Take::Exit;
            }
            return Take::Wait;
        };
        self.window_used = self.window_used.saturating_sub(1);
        if s.ready.is_empty() {
            // Perhaps its last message: a paced scope's turn may go to another shard.
            s.touch(key, &mut self.touched);
        }
        let mut at = now;
        if let Some(interval) = s.throttle.interval() {
            at = s.next_send.max(now);
            s.next_send = at + interval * msg.recipients();
        }
        if let Some(rate) = s.limits.provider_rate {
            let provider = crate::delivery::scope::split_key(key).0;
            at = self.paces.reserve(provider, rate, msg.recipients(), at);
        }
        let wait = at - now;
        Take::Send {
            msg,
            wait,
            max_per_connection: s.limits.max_per_connection,
            tls: s.limits.tls,
        }
    }

    /// A worker of `key` with a transaction in flight asks for one more to pipeline behind
    /// it: the next message if one is here and may go now (no pacing wait, the scope within
    /// its cap). Never counts the worker out; `take` does that once nothing is in flight.
    pub fn take_now(&mut self, key: &str, now: Instant) -> Option<M> {
        let s = self.scopes.get_mut(key)?;
        if s.workers > s.conn_cap || s.shut() {
            return None;
        }
        let interval = s.throttle.interval();
        if interval.is_some() && s.next_send > now {
            return None;
        }
        let n = s.ready.front()?.recipients();
        if let Some(rate) = s.limits.provider_rate {
            let provider = crate::delivery::scope::split_key(key).0;
            if !self.paces.try_reserve(provider, rate, n, now) {
                return None;
            }
        }
        let msg = s.ready.pop_front()?;
        s.last_busy = now;
        if let Some(interval) = interval {
            s.next_send = s.next_send.max(now) + interval * msg.recipients();
        }
        self.window_used = self.window_used.saturating_sub(1);
        Some(msg)
    }

    /// A worker of `key` was refused a connection with 421 at the greeting: the receiver
    /// takes no more connections than are open, so the cap holds at the other workers'
    /// count and this one leaves, unless it is the last.
    pub fn connection_refused(&mut self, key: &str, now: Instant) -> Refusal {
        let Some(s) = self.scopes.get_mut(key) else {
            return Refusal::Stay;
        };
        s.notes.get_or_insert_with(Default::default).refused += 1;
        if s.workers <= 1 {
            return Refusal::Stay;
        }
        s.workers -= 1;
        self.workers_total = self.workers_total.saturating_sub(1);
        s.touch(key, &mut self.touched);
        let before = s.conn_cap;
        s.conn_cap = s.conn_cap.min(s.workers).max(1);
        s.conn_cap_at = now;
        Refusal::Leave {
            lowered_to: (s.conn_cap < before).then_some(s.conn_cap),
        }
    }

    /// One transaction's results for `key`, paced at `paced_at` (when `take` handed it out):
    /// Notes a transaction's trouble at `unix_ms`: a temporary failure's reply, whether it
    /// was pushback, and what the throttle made of it.
    pub fn note(
        &mut self,
        key: &str,
        unix_ms: u64,
        failure: Option<&str>,
        pushback: bool,
        change: Change,
    ) {
        let Some(s) = self.scopes.get_mut(key) else {
            return;
        };
        if failure.is_none() && change == Change::None {
            return;
        }
        let n = s.notes.get_or_insert_with(Default::default);
        if let Some(text) = failure {
            n.last_failure = Some((unix_ms, note_text(text)));
            if pushback {
                n.last_pushback = Some((unix_ms, note_text(text)));
            }
        }
        match change {
            Change::Decreased(_) if n.throttled_since.is_none() => {
                n.throttled_since = Some(unix_ms)
            }
            Change::Cleared => n.throttled_since = None,
            _ => {}
        }
    }

    /// The rate `key` is paced at now, if it is paced.
    pub fn rate(&self, key: &str) -> Option<f64> {
        self.scopes.get(key)?.throttle.rate()
    }

    /// Another node's cut on `key`'s provider (`Throttle::follow`).
    pub fn follow_cut(&mut self, key: &str, factor: f64, now: Instant) -> Change {
        match self.scopes.get_mut(key) {
            Some(s) => s.throttle.follow(factor, now),
            None => Change::None,
        }
    }

    /// Every scope here with the recipients it has here or on their way (demand announced,
    /// credit out, messages ready).
    pub fn loads(&self) -> impl Iterator<Item = (&str, u64)> {
        self.scopes.iter().map(|(k, s)| {
            let n = s.ready.len() as u64
                + s.credit_out.iter().map(|&c| u64::from(c)).sum::<u64>()
                + s.demand.iter().map(|&d| u64::from(d)).sum::<u64>();
            (k.as_str(), n)
        })
    }

    /// `accepted` recipients, and whether the receiver pushed back. Says when the throttle
    /// changes course.
    pub fn record_results(
        &mut self,
        key: &str,
        accepted: u32,
        pushback: bool,
        paced_at: Instant,
        now: Instant,
    ) -> Change {
        match self.scopes.get_mut(key) {
            Some(s) => s.throttle.record(accepted, pushback, paced_at, now),
            None => Change::None,
        }
    }

    /// The state of the `max` busiest scopes (by messages here and promised, then key),
    /// busiest first, and how many scopes are busy in all. Idle scopes are not listed, and
    /// only the listed ones are copied: a snapshot of a long tail costs its top, not every
    /// site.
    pub fn status(&self, max: usize) -> (Vec<ScopeStatus>, usize) {
        let load = |s: &OwnerScope<M>| {
            s.ready.len() as u32 + s.credit_out.iter().sum::<u32>() + s.demand.iter().sum::<u32>()
        };
        let mut busy: Vec<(u32, &String, &OwnerScope<M>)> = self
            .scopes
            .iter()
            .filter(|(_, s)| !s.is_idle())
            .map(|(key, s)| (load(s), key, s))
            .collect();
        let count = busy.len();
        let order = |a: &(u32, &String, &OwnerScope<M>), b: &(u32, &String, &OwnerScope<M>)| {
            b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1))
        };
        if busy.len() > max && max > 0 {
            busy.select_nth_unstable_by(max - 1, order);
        }
        busy.truncate(max);
        busy.sort_unstable_by(order);
        let listed = busy
            .into_iter()
            .map(|(_, key, s)| ScopeStatus {
                key: key.clone(),
                limits: s.limits,
                connection_cap: s.conn_cap,
                workers: s.workers,
                parked: s.parked,
                closing: s.closing,
                ready: s.ready.len() as u32,
                credit_out: s.credit_out.iter().sum(),
                demand: s.demand.iter().sum(),
                rate: s.throttle.rate(),
                adaptive_limit: s.throttle.adaptive_limit(),
                pushbacks: s.throttle.pushbacks,
                notes: s.notes.as_deref().cloned().unwrap_or_default(),
            })
            .collect();
        (listed, count)
    }

    /// The TLS policy of `key`, if the scope is known.
    pub fn tls_policy(&self, key: &str) -> Option<TlsPolicy> {
        self.scopes.get(key).map(|s| s.limits.tls)
    }

    /// True while `host` gets plaintext after a failed opportunistic handshake.
    pub fn is_tls_broken(&self, host: &str, now: Instant) -> bool {
        self.tls_broken.get(host).is_some_and(|until| *until > now)
    }

    /// Remembers `host` as TLS-broken for `TLS_BROKEN_FOR`, within `TLS_BROKEN_HOSTS_MAX`.
    pub fn mark_tls_broken(&mut self, host: &str, now: Instant) {
        if self.tls_broken.len() >= TLS_BROKEN_HOSTS_MAX {
            self.tls_broken.retain(|_, until| *until > now);
        }
        if self.tls_broken.len() >= TLS_BROKEN_HOSTS_MAX {
            let first = self.tls_broken.iter().min_by_key(|(_, until)| **until);
            if let Some(host) = first.map(|(h, _)| h.clone()) {
                self.tls_broken.remove(&host);
            }
        }
        self.tls_broken
            .insert(host.to_string(), now + TLS_BROKEN_FOR);
    }

    /// Forgets scopes idle for `SCOPE_IDLE_FORGET`, and the longest idle beyond
    /// `IDLE_SCOPES_MAX`. A scope in use (demand, credit out, messages, workers) is never
    /// forgotten; one that is forgotten is made again by its next demand.
    /// Returns the scopes forgotten.
    pub fn forget_idle_scopes(&mut self, now: Instant) -> Vec<String> {
        let mut forgotten = Vec::new();
        self.scopes.retain(|key, s| {
            let keep = !(s.is_idle() && now.duration_since(s.last_busy) >= SCOPE_IDLE_FORGET);
            if !keep {
                forgotten.push(key.clone());
            }
            keep
        });
        let mut idle: Vec<(Instant, String)> = self
            .scopes
            .iter()
            .filter(|(_, s)| s.is_idle())
            .map(|(k, s)| (s.last_busy, k.clone()))
            .collect();
        let excess = idle.len().saturating_sub(IDLE_SCOPES_MAX);
        if excess > 0 {
            idle.sort_unstable();
            for (_, key) in idle.into_iter().take(excess) {
                self.scopes.remove(&key);
                forgotten.push(key);
            }
        }
        // The lines hold each known scope once at most; a forgotten one leaves them too.
        let scopes = &self.scopes;
        self.starved.retain(|k| scopes.contains_key(k));
        self.blocked.retain(|k| scopes.contains_key(k));
        forgotten
    }
}

#[cfg(test)]
mod tests;

/// A configured ceiling under a rule's cap: the lower of them.
fn capped(configured: Option<f64>, cap: Option<f64>) -> Option<f64> {
    match (configured, cap) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}
