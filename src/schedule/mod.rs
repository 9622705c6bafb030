//! The home shard's scheduling, sans I/O: which of its recipients are ready, which wait for a
//! retry time, which wait for their domain's route, and which wait for credit from their
//! scope's owner; and what to tell each owner of that demand.
//!
//! The shard's core (`crate::shard`) runs `tick` every few milliseconds and when recipients
//! become ready, asks its shell to resolve the domains it is asked to, renders what credit
//! allows and sends the demand messages. Every method takes `now`; the queue's index is read, never changed.

mod egress;
pub mod lanes;
pub mod operator;
mod owners;

pub use operator::{admin_bounce, Matched};
pub use owners::ScopeOwners;

use crate::admin::holds::{Holds, Verdict as HoldVerdict};
use crate::bounded::ExpiringMap;
use crate::delivery::policy::{Outcome, Verdict};
use crate::delivery::scope::{NextHop, Scope};
use crate::queue::store::{EntryState, Index};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Demand is re-announced this often while recipients wait, whatever the owner's view.
pub const DEMAND_REFRESH: Duration = Duration::from_secs(1);
/// Recipients routed per tick at most, so one tick stays short.
pub const ROUTE_PER_TICK_MAX: usize = 8192;
/// A route (scope, or a routing failure) is reused this long before resolving again.
pub const ROUTE_TTL: Duration = Duration::from_secs(60);
/// A temporary routing failure is reused this long.
pub const ROUTE_FAILURE_TTL: Duration = Duration::from_secs(5);
/// Domains whose route a home remembers at most (a scope key and its hosts each, some
/// 200 bytes: 20 MB at most). Expired routes stay until the map fills, because recipients
/// waiting for credit still need their hosts; beyond the bound the soonest to expire go, and
/// a recipient whose route went is sent to its scope's first hosts.
pub const ROUTES_MAX: usize = 100_000;
/// DNS lookups a home runs at once. Each is a task with its own socket; a burst of new
/// domains waits its turn instead of opening thousands of sockets.
pub const RESOLVING_MAX: usize = 256;
/// A lookup that fails for now (a timeout, SERVFAIL) is tried again this many times, after
/// `QUIET_RETRY_FIRST` and then twice as long each time, while its recipients stay parked:
/// no outcome, no log line, no attempt counted. A nameserver that dropped a burst of queries
/// costs seconds, not a retry interval. Only then is the failure their outcome (deferred).
pub const QUIET_RETRIES: u32 = 3;
/// Just past the resolver's memory of a failure (`dns::cache::FAILURE_TTL_S`), so that the
/// first retry asks the nameserver again rather than the cache.
pub const QUIET_RETRY_FIRST: Duration =
    Duration::from_secs(crate::dns::cache::FAILURE_TTL_S as u64 + 1);
/// Domains waiting for a quiet retry at most (they hold no socket, so they do not count
/// against `RESOLVING_MAX`); beyond it a failure is the recipients' outcome at once.
pub const QUIET_DOMAINS_MAX: usize = 4 * RESOLVING_MAX;

/// Where a domain's recipients go.
#[derive(Clone, Debug)]
pub enum Route {
    /// To this scope, owned by this shard.
    Scope(Scope, usize),
    /// Nowhere: routing decided the outcome (a bounce for a null MX or NXDOMAIN, or a
    /// temporary DNS failure).
    Decided(Outcome),
}

impl Route {
    /// How long this route is reused before the domain is resolved again.
    pub fn ttl(&self) -> Duration {
        match self {
            Route::Decided(o) if o.verdict == Verdict::Deferred => ROUTE_FAILURE_TTL,
            Route::Scope(..) | Route::Decided(_) => ROUTE_TTL,
        }
    }
}

/// What a tick found for the shell to do.
#[derive(Default, Debug)]
pub struct Tick {
    /// Recipients whose outcome routing decided, for the outcome stage.
    pub decided: Vec<(u64, Outcome)>,
    /// Domains to resolve (each once; their recipients are parked until `resolved`).
    pub to_resolve: Vec<String>,
}

/// Credit taken: the recipients to render, for whom and to which hosts by default.
#[derive(Debug)]
pub struct Taken {
    pub owner: usize,
    /// The scope's hosts, for a recipient whose own route has gone from the cache.
    pub fallback_hosts: Arc<[NextHop]>,
    pub seqs: Vec<u64>,
    /// Of them, counted against the scope's warm-up cap (`delivery::warmup`): those not
    /// sent go back to the book (`WarmBook::settle`).
    pub reserved: u64,
}

/// A home's queues, for a status snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HomeStatus {
    /// Recipients ready to be routed.
    pub ready: u64,
    /// Recipients waiting for a retry time.
    pub deferred: u64,
    /// Domains being resolved, and the recipients waiting for them.
    pub resolving_domains: u64,
    pub resolving: u64,
    /// Recipients routed and waiting for their scope's credit, and in how many scopes.
    pub pending: u64,
    pub pending_scopes: u64,
    /// Domains whose route is remembered.
    pub routes: u64,
    /// Recipients an operator's suspension holds.
    pub held: u64,
}

/// A home shard's scheduling state.
pub struct Home {
    ready: SeqRuns,
    /// (due Unix ms, sequence number), soonest first.
    deferred: BinaryHeap<Reverse<(u64, u64)>>,
    routes: ExpiringMap<Box<str>, Route>,
    /// Domains being resolved, with the recipients waiting for them.
    resolving: HashMap<Box<str>, Vec<u64>>,
    /// Domains whose lookup failed for now, their recipients still parked in `resolving`:
    /// (when to look again, domain), soonest first; and the failures so far per domain.
    /// Both hold only domains in `resolving`, so `RESOLVING_MAX` bounds them.
    quiet_retries: BinaryHeap<Reverse<(Instant, Box<str>)>>,
    failures: HashMap<Box<str>, u32>,
    /// Routed recipients per scope, waiting for credit: (scope, owner, their lanes (fair
    /// shares, transactional mail first), changed since the last announcement).
    pending: HashMap<String, (Scope, usize, lanes::Lanes, bool)>,
    /// The scopes marked changed in `pending`: an announcement looks at these, not at every
    /// scope waiting here (tens of thousands in a long tail).
    changed: Vec<String>,
    /// When `announce` last looked at every scope (for the periodic refresh).
    last_full: Option<Instant>,
    /// Per scope: the owner's view of our demand (what we announced, less the credit it
    /// granted since) and when we last announced.
    announced: HashMap<String, (u32, Instant)>,
    /// What operators hold back or bounce (`admin::holds`), checked as recipients are routed.
    holds: Arc<Holds>,
    /// Recipients an operator's suspension holds, each once; they go back to ready when the
    /// holds change. Bounded by the queue: each is a live recipient of this home.
    held: Vec<u64>,
    /// `[sources]` and `[pools]` in force, and the scopes per source made so far.
    egress: Arc<crate::config::Egress>,
    sourced: egress::Sourced,
    /// Reply rules' firings in force (`delivery::rules`): suspended sources are left out
    /// of routing, and come back over their ramp.
    firings: Arc<crate::delivery::rules::Firings>,
    /// Warm-up caps (`delivery::warmup`): counted as credit is taken; full sources are left
    /// out of routing.
    warm: Arc<crate::delivery::warmup::WarmBook>,
    warm_view: Arc<crate::delivery::warmup::WarmView>,
    /// Which scopes one shard sends for, whichever home their recipients wait at.
    owners: ScopeOwners,
}

impl Default for Home {
    fn default() -> Self {
        Home {
            ready: SeqRuns::default(),
            deferred: BinaryHeap::new(),
            routes: ExpiringMap::new(ROUTES_MAX),
            resolving: HashMap::new(),
            quiet_retries: BinaryHeap::new(),
            failures: HashMap::new(),
            pending: HashMap::new(),
            changed: Vec::new(),
            last_full: None,
            announced: HashMap::new(),
            holds: Arc::new(Holds::default()),
            held: Vec::new(),
            egress: Arc::default(),
            sourced: egress::Sourced::default(),
            firings: Arc::default(),
            warm: Arc::default(),
            warm_view: Arc::default(),
            owners: ScopeOwners::default(),
        }
    }
}

impl Home {
    /// Recipients held by a suspension go back to the front of the ready queue, to be
    /// checked again as they are routed.
    fn release_held(&mut self) {
        let held = std::mem::take(&mut self.held);
        for seq in held.into_iter().rev() {
            self.ready.push_front(seq);
        }
    }

    /// The recipients waiting for the credit of the scopes `pick` chooses go back to the
    /// front of the ready queue, to be routed again; their scopes are announced anew.
    fn reroute_pending(&mut self, pick: impl Fn(&str) -> bool) {
        let mut seqs: Vec<u64> = Vec::new();
        for (key, p) in self.pending.iter_mut().filter(|(k, _)| pick(k)) {
            seqs.extend(p.2.drain());
            if !p.3 {
                p.3 = true;
                self.changed.push(key.clone());
            }
        }
        for seq in seqs.into_iter().rev() {
            self.ready.push_front(seq);
        }
    }

    /// Which scopes have one owner shard (a new configuration's).
    pub fn set_owners(&mut self, owners: ScopeOwners) {
        self.owners = owners;
    }

    /// After recovery: everything live is waiting or deferred.
    pub fn load(&mut self, index: &Index) {
        for (seq, e) in index.live_entries() {
            match e.state {
                EntryState::Deferred => self.defer(seq, u64::from(e.due_unix_s) * 1000),
                EntryState::Waiting | EntryState::InFlight | EntryState::Vacant => {
                    self.ready.push_back(seq)
                }
            }
        }
    }

    /// Newly queued recipients (consecutive sequence numbers).
    pub fn add_ready(&mut self, seqs: std::ops::Range<u64>) {
        self.ready.push_range(seqs);
    }

    /// A recipient to try again from `due_unix_ms` on.
    pub fn defer(&mut self, seq: u64, due_unix_ms: u64) {
        self.deferred.push(Reverse((due_unix_ms, seq)));
    }

    /// How many recipients wait where, now.
    pub fn status(&self) -> HomeStatus {
        HomeStatus {
            ready: self.ready.runs.iter().map(|r| r.end - r.start).sum(),
            deferred: self.deferred.len() as u64,
            resolving_domains: self.resolving.len() as u64,
            resolving: self.resolving.values().map(|v| v.len() as u64).sum(),
            pending: self.pending.values().map(|p| p.2.len() as u64).sum(),
            pending_scopes: self.pending.len() as u64,
            routes: self.routes.len() as u64,
            held: self.held.len() as u64,
        }
    }

    /// When the soonest deferred recipient becomes due (Unix ms), if any waits.
    pub fn next_due_unix_ms(&self) -> Option<u64> {
        self.deferred.peek().map(|Reverse((due, _))| *due)
    }

    /// True when nothing is ready, being resolved or waiting for credit (deferred
    /// recipients aside): a tick before the next due time finds nothing to do.
    pub fn is_quiet(&self) -> bool {
        self.ready.runs.is_empty() && self.resolving.is_empty() && self.pending.is_empty()
    }

    /// Compaction moved these recipients to new sequence numbers.
    pub fn requeue_moved(&mut self, index: &Index, moved: &[u64]) {
        for &seq in moved {
            match index.entry(seq).map(|e| (e.state, e.due_unix_s)) {
                Some((EntryState::Deferred, due)) => self.defer(seq, u64::from(due) * 1000),
                Some((EntryState::Waiting, _)) => self.ready.push_back(seq),
                Some((EntryState::InFlight | EntryState::Vacant, _)) | None => {}
            }
        }
    }

    /// Moves due retries to ready, then routes up to `ROUTE_PER_TICK_MAX` ready recipients:
    /// to their scope's pending queue when the route is known, to the outcome stage when
    /// routing decided, and otherwise parked while their domain is resolved (at most
    /// `RESOLVING_MAX` domains at once; the others stay ready, in order).
    pub fn tick(&mut self, index: &Index, now_unix_ms: u64, now: Instant) -> Tick {
        let mut out = Tick::default();
        while let Some(&Reverse((due, seq))) = self.deferred.peek() {
            if due > now_unix_ms {
                break;
            }
            self.deferred.pop();
            self.ready.push_back(seq);
        }
        while let Some(Reverse((due, _))) = self.quiet_retries.peek() {
            if *due > now {
                break;
            }
            let Some(Reverse((_, domain))) = self.quiet_retries.pop() else {
                break;
            };
            out.to_resolve.push(domain.to_string());
        }
        let mut n = 0;
        let mut later = Vec::new();
        while n < ROUTE_PER_TICK_MAX {
            let Some(seq) = self.ready.pop_front() else {
                break;
            };
            let Some(e) = index.entry(seq) else { continue };
            if !matches!(e.state, EntryState::Waiting | EntryState::Deferred) {
                continue;
            }
            n += 1;
            let domain = &index.domain_names[e.domain as usize];
            if self.holds.by_message() {
                match operator::check_message(&self.holds, index, e.message_seq, domain) {
                    Some(HoldVerdict::Hold(_)) => {
                        self.held.push(seq);
                        continue;
                    }
                    Some(HoldVerdict::Bounce(rule)) => {
                        out.decided.push((seq, admin_bounce(&rule.reason)));
                        continue;
                    }
                    None => {}
                }
            }
            // Borrowed from the route cache: nothing is cloned per recipient unless a scope
            // gets its first pending entry or routing decided the outcome.
            let route = match self.routes.get(&**domain, now) {
                Some(Route::Scope(scope, owner)) if !self.egress.is_empty() => {
                    let pool = index.messages.get(&e.message_seq).map_or("", |m| &m.pool);
                    let rules = (&*self.firings, now_unix_ms);
                    let warm = &*self.warm_view;
                    match egress::choose(&self.egress, &self.holds, rules, warm, pool, scope, seq) {
                        egress::Sourcing::System
                            if self.firings.suspended(&scope.key, now_unix_ms).is_some() =>
                        {
                            self.held.push(seq);
                            continue;
                        }
                        egress::Sourcing::System => Some((scope, *owner)),
                        egress::Sourcing::Source(i) => {
                            Some((self.sourced.scope(&self.egress, scope, i), *owner))
                        }
                        egress::Sourcing::Held => {
                            self.held.push(seq);
                            continue;
                        }
                    }
                }
                // A reply rule suspended the scope, and mail from the system's address has
                // no other source: held until it ends.
                Some(Route::Scope(scope, _))
                    if !self.firings.is_empty()
                        && self.firings.suspended(&scope.key, now_unix_ms).is_some() =>
                {
                    self.held.push(seq);
                    continue;
                }
                Some(Route::Scope(scope, owner)) => Some((scope, *owner)),
                Some(Route::Decided(outcome)) => {
                    out.decided.push((seq, outcome.clone()));
                    continue;
                }
                None => None,
            };
            match route {
                // A scope's holds: the destination's (`yahoo`), and at one source
                // (`yahoo@mta1`).
                Some((scope, _))
                    if self.holds.by_scope()
                        && operator::check_scopes(
                            &self.holds,
                            index,
                            e.message_seq,
                            &scope.key,
                        )
                        .is_some() =>
                {
                    match operator::check_scopes(&self.holds, index, e.message_seq, &scope.key) {
                        Some(HoldVerdict::Bounce(rule)) => {
                            out.decided.push((seq, admin_bounce(&rule.reason)))
                        }
                        _ => self.held.push(seq),
                    }
                }
                Some((scope, owner)) => {
                    // Its lane: transactional, or its tenant's and campaign's.
                    let class = match index.messages.get(&e.message_seq) {
                        Some(m) if m.priority => lanes::Class::Priority,
                        Some(m) => lanes::Class::Campaign {
                            tenant: &m.tenant,
                            campaign: &m.campaign,
                            weight: self.egress.tenant_weight(&m.tenant),
                        },
                        None => lanes::Class::Campaign {
                            tenant: "",
                            campaign: "",
                            weight: 1,
                        },
                    };
                    match self.pending.get_mut(&scope.key) {
                        Some(entry) => {
                            entry.2.push(seq, class);
                            if !entry.3 {
                                entry.3 = true;
                                self.changed.push(scope.key.clone());
                            }
                        }
                        None => {
                            let mut q = lanes::Lanes::default();
                            q.push(seq, class);
                            let owner = self.owners.owner(&scope.key, owner);
                            let entry = (scope.clone(), owner, q, true);
                            self.pending.insert(scope.key.clone(), entry);
                            self.changed.push(scope.key.clone());
                        }
                    }
                }
                None => {
                    // Lookups in flight: domains waiting for a quiet retry hold no socket.
                    let in_flight = self
                        .resolving
                        .len()
                        .saturating_sub(self.quiet_retries.len());
                    let busy = in_flight >= RESOLVING_MAX;
                    if busy && !self.resolving.contains_key(domain) {
                        later.push(seq);
                        continue;
                    }
                    let parked = self.resolving.entry(domain.clone()).or_default();
                    if parked.is_empty() {
                        out.to_resolve.push(domain.to_string());
                    }
                    parked.push(seq);
                }
            }
        }
        for seq in later.into_iter().rev() {
            self.ready.push_front(seq);
        }
        out
    }

    /// `domain` resolved to `route`: remembered for its TTL, and the recipients that waited
    /// for it go back to the front of the ready queue. A temporary failure is first tried
    /// again quietly (`QUIET_RETRIES`), its recipients left parked.
    pub fn resolved(&mut self, domain: &str, route: Route, now: Instant) {
        let temporary = matches!(&route, Route::Decided(o) if o.verdict == Verdict::Deferred);
        let room = self.quiet_retries.len() < QUIET_DOMAINS_MAX;
        if temporary && room && self.resolving.contains_key(domain) {
            let failures = self.failures.entry(domain.into()).or_insert(0);
            *failures += 1;
            if *failures <= QUIET_RETRIES {
                let wait = QUIET_RETRY_FIRST * (1 << (*failures - 1));
                self.quiet_retries
                    .push(Reverse((now + wait, domain.into())));
                return;
            }
        }
        self.failures.remove(domain);
        let until = now + route.ttl();
        self.routes.insert(domain.into(), route, until, now);
        let parked = self.resolving.remove(domain).unwrap_or_default();
        for seq in parked.into_iter().rev() {
            self.ready.push_front(seq);
        }
    }

    /// The hosts of `domain`'s route, expired or not (a recipient waiting for credit still
    /// goes to its own destination's hosts).
    pub fn route_hosts(&self, domain: &str) -> Option<Arc<[NextHop]>> {
        match self.routes.get_any(domain) {
            Some(Route::Scope(scope, _)) => Some(Arc::clone(&scope.hosts)),
            Some(Route::Decided(_)) | None => None,
        }
    }

    /// What to tell each owner: (owner, scope, recipients waiting here), for the scopes
    /// whose count differs from the owner's view, and every `DEMAND_REFRESH` or so anyway
    /// while recipients wait, so no drift can leave them waiting. A scope with nothing
    /// waiting, whose owner has heard so, is forgotten (credit still on its way for it finds
    /// no entry in `take_credit` and is handed back). Only the scopes whose count changed
    /// since the last call are looked at, and every scope twice per `DEMAND_REFRESH`: the
    /// cost of a call follows what changed, not how many scopes wait.
    pub fn announce(&mut self, now: Instant) -> Vec<(usize, Scope, u32)> {
        let full = self
            .last_full
            .is_none_or(|at| now.duration_since(at) >= DEMAND_REFRESH / 2);
        let mut messages = Vec::new();
        let mut emptied = Vec::new();
        let announced = &mut self.announced;
        // One scope: its count goes to its owner when the owner's view differs or is old.
        // Keys are cloned only for what is sent or removed, not for every scope looked at.
        let mut visit = |key: &String, entry: &mut (Scope, usize, lanes::Lanes, bool)| {
            let (scope, owner, q, changed) = entry;
            *changed = false;
            let count = q.len() as u32;
            let stale = |&(view, at): &(u32, Instant)| {
                view != count || (count > 0 && now.duration_since(at) >= DEMAND_REFRESH)
            };
            let send = match announced.get_mut(key) {
                Some(view) if stale(view) => {
                    *view = (count, now);
                    true
                }
                Some(_) => false,
                None => {
                    announced.insert(key.clone(), (count, now));
                    true
                }
            };
            if send {
                messages.push((*owner, scope.clone(), count));
            }
            if count == 0 {
                emptied.push(key.clone());
            }
        };
        if full {
            self.last_full = Some(now);
            self.changed.clear();
            for (key, entry) in self.pending.iter_mut() {
                visit(key, entry);
            }
        } else {
            for key in std::mem::take(&mut self.changed) {
                if let Some(entry) = self.pending.get_mut(&key) {
                    visit(&key, entry);
                }
            }
        }
        for key in emptied {
            self.pending.remove(&key);
            self.announced.remove(&key);
        }
        // In a stable order, not the map's: the same state always says the same thing in
        // the same order (the simulation replays a seed exactly; owners see no hash order).
        messages.sort_unstable_by(|a, b| (a.0, &a.1.key).cmp(&(b.0, &b.1.key)));
        messages
    }

    /// The owner of `scope` granted `n`: takes up to `n` of its waiting recipients, in the
    /// order they were routed. `None` when nothing waits for it here any more, or while `draining`: the
    /// credit goes back to the owner unused.
    /// A scope under a warm-up cap gets only what its cap has room for on `day`; once it is
    /// full, the rest of its recipients here go back to be routed to the pool's other
    /// sources.
    pub fn take_credit(&mut self, scope: &str, n: u32, draining: bool, day: u64) -> Option<Taken> {
        // The owner took this credit off its view of our demand; so do we.
        if let Some((view, _)) = self.announced.get_mut(scope) {
            *view = view.saturating_sub(n);
        }
        if draining {
            return None;
        }
        let (pending_scope, owner, q, changed) = self.pending.get_mut(scope)?;
        if !*changed {
            *changed = true;
            self.changed.push(scope.to_string());
        }
        let mut take = (n as usize).min(q.len());
        let mut reserved = 0;
        let mut full = false;
        if self.warm_view.is_capped(scope) {
            reserved = self.warm.reserve(scope, take as u64, day);
            if reserved < take as u64 {
                take = reserved as usize;
                full = true;
            }
        }
        let mut seqs = Vec::with_capacity(take);
        q.take(take, &mut seqs);
        let rest = if full { q.drain() } else { Vec::new() };
        let taken = Taken {
            owner: *owner,
            fallback_hosts: Arc::clone(&pending_scope.hosts),
            seqs,
            reserved,
        };
        if !rest.is_empty() {
            // Full for today: routed again, with the view that says so.
            for seq in rest.into_iter().rev() {
                self.ready.push_front(seq);
            }
            self.warm_view = self.warm.view().1;
        }
        Some(taken)
    }
}

/// A queue of sequence numbers kept as runs: recipients are mostly consecutive, so a
/// million of them waiting cost a few runs, not eight bytes each.
#[derive(Default)]
struct SeqRuns {
    runs: VecDeque<std::ops::Range<u64>>,
}

impl SeqRuns {
    fn push_back(&mut self, seq: u64) {
        self.push_range(seq..seq + 1);
    }

    fn push_range(&mut self, r: std::ops::Range<u64>) {
        if r.is_empty() {
            return;
        }
        match self.runs.back_mut() {
            Some(last) if last.end == r.start => last.end = r.end,
            _ => self.runs.push_back(r),
        }
    }

    fn push_front(&mut self, seq: u64) {
        match self.runs.front_mut() {
            Some(first) if first.start == seq + 1 => first.start = seq,
            _ => self.runs.push_front(seq..seq + 1),
        }
    }

    fn pop_front(&mut self) -> Option<u64> {
        let first = self.runs.front_mut()?;
        let seq = first.start;
        first.start += 1;
        if first.is_empty() {
            self.runs.pop_front();
        }
        Some(seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::policy::{BounceCategory, Fault};
    use crate::queue::record::{OutcomePayload, OutcomeState, RecipientPayload};
    use crate::queue::store::{Chunk, ChunkAppend, MessageSpec, ShardQueue};

    /// A queue holding `rcpts` (one chunk), and the first recipient's sequence number.
    fn queue(rcpts: &[&str]) -> (tempfile::TempDir, ShardQueue, u64) {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = ShardQueue::open(dir.path(), 0, 1 << 20).unwrap();
        let mut tails = Vec::new();
        let mut ends = Vec::new();
        for r in rcpts {
            RecipientPayload::encode_tail(r, &[r.as_bytes()], &mut tails);
            ends.push(tails.len() as u32);
        }
        let chunk = Chunk {
            batch_id: 1,
            chunk_no: 0,
            message: Arc::new(MessageSpec {
                batch_id: 1,
                created_unix_ms: 0,
                flags: 0,
                sender: "s@acme.example".into(),
                campaign: "c".into(),
                tenant: "t".into(),
                var_names: vec!["to".into()],
                body: b"To: {{ to }}\r\n\r\nhi\r\n".to_vec(),
                pool: String::new(),
            }),
            tails,
            ends,
            retry: Vec::new(),
        };
        let ChunkAppend::Appended {
            first_recipient_seq,
            ..
        } = q.append_chunk(&chunk).unwrap()
        else {
            panic!("appended");
        };
        (dir, q, first_recipient_seq)
    }

    fn scope(key: &str) -> Scope {
        Scope {
            key: key.into(),
            hosts: Arc::from(vec![NextHop {
                name: format!("mx.{key}"),
                port: 25,
                from_route: false,
            }]),
        }
    }

    fn bounce() -> Outcome {
        Outcome {
            verdict: Verdict::Bounced,
            fault: Fault::Message,
            code: 0,
            enhanced: None,
            response: "null MX".into(),
            category: Some(BounceCategory::BadDomain),
            pushback: false,
        }
    }

    #[test]
    fn recipients_wait_for_their_route_once_per_domain_then_for_credit() {
        let (_dir, q, first) = queue(&["a@x.test", "b@x.test", "c@y.test", "d@null.test"]);
        let t0 = Instant::now();
        let mut home = Home::default();
        home.add_ready(first..first + 4);
        let tick = home.tick(&q.index, 0, t0);
        assert_eq!(
            tick.to_resolve,
            ["x.test", "y.test", "null.test"],
            "each domain once"
        );
        assert!(tick.decided.is_empty());
        assert!(
            home.tick(&q.index, 0, t0).to_resolve.is_empty(),
            "parked, not asked again"
        );
        home.resolved("x.test", Route::Scope(scope("s"), 1), t0);
        home.resolved("y.test", Route::Scope(scope("s"), 1), t0);
        home.resolved("null.test", Route::Decided(bounce()), t0);
        let tick = home.tick(&q.index, 0, t0);
        assert_eq!(
            tick.decided.iter().map(|d| d.0).collect::<Vec<_>>(),
            [first + 3],
            "routing decided the null MX's recipient"
        );
        // Both domains share a scope: one announcement of three.
        let said = home.announce(t0);
        assert_eq!(said.len(), 1);
        assert_eq!((said[0].0, said[0].1.key.as_str(), said[0].2), (1, "s", 3));
        assert!(home.announce(t0).is_empty(), "nothing new to say");
        let again = home.announce(t0 + DEMAND_REFRESH);
        assert_eq!(again.len(), 1, "re-announced while recipients wait");
        // Credit takes them in the order they were routed (those of the route resolved
        // last went to the front); the owner's view drops with it.
        let taken = home.take_credit("s", 2, false, 0).unwrap();
        assert_eq!(taken.owner, 1);
        assert_eq!(taken.seqs, [first + 2, first]);
        assert_eq!(&*taken.fallback_hosts, &*scope("s").hosts);
        assert!(
            home.announce(t0 + DEMAND_REFRESH).is_empty(),
            "view 3 - 2 = 1 = count"
        );
        assert!(
            home.take_credit("s", 5, true, 0).is_none(),
            "draining: handed back"
        );
        assert_eq!(
            home.take_credit("s", 5, false, 0).unwrap().seqs,
            [first + 1]
        );
        // Nothing waits, and the owner's view (less the credit it gave) is already 0: nothing
        // to say, and the scope is forgotten.
        assert!(home.announce(t0 + DEMAND_REFRESH).is_empty());
        assert!(
            home.take_credit("s", 1, false, 0).is_none(),
            "forgotten: handed back"
        );
    }

    #[test]
    fn retries_become_ready_when_due_and_final_recipients_are_skipped() {
        let (_dir, mut q, first) = queue(&["a@x.test", "b@x.test", "c@x.test"]);
        let t0 = Instant::now();
        let mut home = Home::default();
        home.resolved("x.test", Route::Scope(scope("s"), 0), t0);
        home.defer(first, 5_000);
        home.defer(first + 1, 1_000);
        home.add_ready(first + 2..first + 3);
        // The third was delivered meanwhile: it is not routed.
        q.append_outcome(OutcomePayload {
            recipient_seq: first + 2,
            state: OutcomeState::Delivered,
            attempts: 1,
            due_unix_ms: 0,
            ts_unix_ms: 0,
        })
        .unwrap();
        home.tick(&q.index, 999, t0);
        assert!(home.announce(t0).is_empty(), "nothing due yet");
        home.tick(&q.index, 1_000, t0);
        assert_eq!(home.announce(t0)[0].2, 1);
        home.tick(&q.index, 10_000, t0);
        assert_eq!(
            home.take_credit("s", 9, false, 0).unwrap().seqs,
            [first + 1, first]
        );
    }

    #[test]
    fn lookups_in_flight_are_bounded_and_the_rest_keep_their_order() {
        let names: Vec<String> = (0..RESOLVING_MAX + 3)
            .map(|i| format!("u@d{i}.test"))
            .collect();
        let rcpts: Vec<&str> = names.iter().map(String::as_str).collect();
        let (_dir, q, first) = queue(&rcpts);
        let t0 = Instant::now();
        let mut home = Home::default();
        home.add_ready(first..first + rcpts.len() as u64);
        let tick = home.tick(&q.index, 0, t0);
        assert_eq!(tick.to_resolve.len(), RESOLVING_MAX);
        assert!(
            home.tick(&q.index, 0, t0).to_resolve.is_empty(),
            "still full"
        );
        home.resolved("d0.test", Route::Decided(bounce()), t0);
        let tick = home.tick(&q.index, 0, t0);
        assert_eq!(tick.decided.len(), 1);
        assert_eq!(
            tick.to_resolve,
            [format!("d{RESOLVING_MAX}.test")],
            "the next in order"
        );
    }

    #[test]
    fn a_failed_lookup_is_retried_quietly_before_it_decides_anything() {
        let mut failure = bounce();
        failure.verdict = Verdict::Deferred;
        let (_dir, q, first) = queue(&["a@x.test", "b@x.test"]);
        let t0 = Instant::now();
        let mut home = Home::default();
        home.add_ready(first..first + 2);
        assert_eq!(home.tick(&q.index, 0, t0).to_resolve, ["x.test"]);
        // Three failures: each time the recipients stay parked (no outcome), and the lookup
        // comes back after 6, 12, then 24 s (past the resolver's 5 s memory of a failure).
        assert_eq!(QUIET_RETRY_FIRST, Duration::from_secs(6));
        let mut t = t0;
        for wait in [1, 2, 4] {
            let wait = QUIET_RETRY_FIRST * wait;
            home.resolved("x.test", Route::Decided(failure.clone()), t);
            let early = home.tick(&q.index, 0, t + wait / 2);
            assert!(early.decided.is_empty() && early.to_resolve.is_empty());
            assert_eq!(home.status().resolving, 2, "still parked");
            t += wait;
            let due = home.tick(&q.index, 0, t);
            assert!(due.decided.is_empty(), "no outcome yet");
            assert_eq!(due.to_resolve, ["x.test"], "after {wait:?}");
        }
        // The fourth failure is their outcome, counted as usual.
        home.resolved("x.test", Route::Decided(failure.clone()), t);
        let decided = home.tick(&q.index, 0, t).decided;
        assert_eq!(decided.len(), 2);
        assert!(decided.iter().all(|(_, o)| o.verdict == Verdict::Deferred));
        // A lookup that succeeds on a quiet retry routes them, and the count starts over.
        let (_dir, q, first) = queue(&["c@y.test"]);
        home.add_ready(first..first + 1);
        assert_eq!(home.tick(&q.index, 0, t).to_resolve, ["y.test"]);
        home.resolved("y.test", Route::Decided(failure.clone()), t);
        let t = t + QUIET_RETRY_FIRST;
        assert_eq!(home.tick(&q.index, 0, t).to_resolve, ["y.test"]);
        home.resolved("y.test", Route::Scope(scope("s"), 0), t);
        home.tick(&q.index, 0, t);
        assert_eq!(home.status().pending, 1);
        assert!(home.failures.is_empty() && home.quiet_retries.is_empty());
    }

    #[test]
    fn domains_waiting_for_a_quiet_retry_free_their_lookup_slot_within_a_bound() {
        let mut failure = bounce();
        failure.verdict = Verdict::Deferred;
        let n = QUIET_DOMAINS_MAX + 1;
        let names: Vec<String> = (0..n).map(|i| format!("u@d{i}.test")).collect();
        let rcpts: Vec<&str> = names.iter().map(String::as_str).collect();
        let (_dir, q, first) = queue(&rcpts);
        let t0 = Instant::now();
        let mut home = Home::default();
        home.add_ready(first..first + n as u64);
        let mut failed = 0;
        while failed < n {
            let tick = home.tick(&q.index, 0, t0);
            assert!(tick.to_resolve.len() <= RESOLVING_MAX);
            assert!(!tick.to_resolve.is_empty(), "waiting domains hold no slot");
            for domain in tick.to_resolve {
                home.resolved(&domain, Route::Decided(failure.clone()), t0);
                failed += 1;
            }
        }
        // All but the last wait quietly; the last found the waiting room full, and its
        // failure is its recipient's outcome at once.
        assert_eq!(home.quiet_retries.len(), QUIET_DOMAINS_MAX);
        let tick = home.tick(&q.index, 0, t0);
        assert_eq!(tick.decided.len(), 1);
        assert_eq!(home.status().resolving, QUIET_DOMAINS_MAX as u64);
    }

    #[test]
    fn temporary_routing_failures_are_remembered_briefly() {
        let mut failure = bounce();
        failure.verdict = Verdict::Deferred;
        assert_eq!(Route::Decided(failure).ttl(), ROUTE_FAILURE_TTL);
        assert_eq!(Route::Decided(bounce()).ttl(), ROUTE_TTL);
        assert_eq!(Route::Scope(scope("s"), 0).ttl(), ROUTE_TTL);
        let (_dir, q, first) = queue(&["a@x.test"]);
        let t0 = Instant::now();
        let mut home = Home::default();
        home.resolved("x.test", Route::Scope(scope("s"), 0), t0);
        home.add_ready(first..first + 1);
        assert!(
            home.tick(&q.index, 0, t0 + ROUTE_TTL).to_resolve == ["x.test"],
            "expired"
        );
        assert!(
            home.route_hosts("x.test").is_some(),
            "hosts kept for those waiting"
        );
    }

    #[test]
    fn seq_runs_keep_order_and_merge() {
        let mut r = SeqRuns::default();
        r.push_range(10..13);
        r.push_back(13);
        r.push_back(20);
        r.push_front(9);
        r.push_front(5);
        assert_eq!(r.runs.len(), 3, "5, 9..14, 20");
        let all: Vec<u64> = std::iter::from_fn(|| r.pop_front()).collect();
        assert_eq!(all, [5, 9, 10, 11, 12, 13, 20]);
    }

    #[test]
    fn the_status_counts_where_recipients_wait() {
        let (_dir, q, first) = queue(&["a@x.test", "b@x.test", "c@y.test"]);
        let mut home = Home::default();
        home.add_ready(first..first + 3);
        home.defer(first + 100, 1);
        assert_eq!(home.status().ready, 3);
        let t0 = Instant::now();
        let tick = home.tick(&q.index, 0, t0);
        assert_eq!(tick.to_resolve.len(), 2);
        let s = home.status();
        assert_eq!((s.ready, s.resolving_domains, s.resolving), (0, 2, 3));
        home.resolved("x.test", Route::Scope(scope("s"), 0), t0);
        home.tick(&q.index, 0, t0);
        let s = home.status();
        assert_eq!(
            (s.pending, s.pending_scopes, s.resolving, s.routes),
            (2, 1, 1, 1)
        );
        assert_eq!(s.deferred, 1, "the deferral is due later");
    }
}
