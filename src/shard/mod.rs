//! One shard's core: its queue, its home (`crate::schedule::Home`), its owner
//! (`crate::delivery::owner::Owner`), its renderings and its delivery-log writer, and the glue
//! between them: what the shard does with an appended chunk, a group commit, a scheduler
//! tick, a resolved domain, demand, credit, prepared messages, a worker's take and its
//! results, and outcomes. Sans-I/O in the sense that matters: it never touches a socket or a
//! timer, reads time from the clock it is given, and never waits (but for `final_flush`, the
//! one blocking sync, when the shard is done). What the shell must do
//! (send a message to a shard, start or wake a connection worker, look a domain up, run a
//! group commit soon, stop on a fatal error) comes out as `Effect`s, which the shell drains
//! with `take_effects` after each call.
//!
//! Two shells drive it: the glommio runtime (`crate::engine`), and the seeded simulation
//! (`tests/simulation.rs`), which runs the same code against simulated receivers, crashes,
//! reloads and clock jumps. The queue's writes go to its memory-mapped segments (tmpfs in the
//! simulation); only `fdatasync` is the shell's (`begin_commit` hands it the job).
//!
//! Files: this one holds the core and what crosses its edge; `home` the home side (ticks,
//! routing, credit, rendering); `send` the owner side (demand, grants, prepared messages,
//! workers' takes and results); `outcome` what a result makes of a recipient; `notify` the
//! notifications a gateway message's sender gets back; `commit` the queue's glue (append,
//! group commit, compaction).

mod cluster;
mod commit;
mod home;
mod notify;
mod operator;
mod outcome;
mod rules;
mod send;
#[cfg(test)]
mod tests;
mod warmup;

pub use commit::Committed;
pub use home::{route_by_dns, route_statically};
pub use operator::{DomainWhy, RecipientWhy, WHY_SCAN_MAX};
pub use outcome::retry_policy;
pub use send::{scope_limits, share_limits, Held};

use crate::clock::Clock;
use crate::config::Config;
use crate::delivery::policy::Outcome;
use crate::delivery::scope::{NextHop, Scope};
use crate::delivery_log::{DeliveryLog, LogRecord};
use crate::message::Renderings;
use crate::queue::store::{Chunk, ShardQueue};
use crate::schedule::Home;
use crate::smtp::data::Data;
use crate::smtp::session::RcptResult;
use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Instant;

/// How often the owner looks for idle scopes to forget.
pub const SCOPE_SWEEP_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// How often a shard tells the coordinators of the scopes it no longer has recipients for,
/// and its own coordinator moves turns and applies reloaded limits (`delivery::shares`).
pub const SHARE_TICK: std::time::Duration = std::time::Duration::from_millis(250);
/// Scopes a status snapshot lists at most, busiest first (the rest are counted): a long tail
/// of sites costs the snapshot its top, not a copy of every site each second.
pub const STATUS_SCOPES_MAX: usize = 100;
/// Campaigns a shard's status lists, largest first.
pub const STATUS_CAMPAIGNS_MAX: usize = 100;

/// Where the core writes delivery-log lines: the file (`DeliveryLog`), or the simulation's
/// record of what reached it. Lines appended are not written until `flush`; a crash loses
/// them, which the commit ordering accounts for (`commit`).
pub trait LogSink {
    fn append(&mut self, r: &LogRecord<'_>) -> std::io::Result<()>;
    fn flush(&mut self) -> std::io::Result<()>;
    /// The records appended so far, counted, if this sink counts them.
    fn counts(&self) -> Option<&crate::admin::counts::LogCounts> {
        None
    }
}

impl LogSink for DeliveryLog {
    fn append(&mut self, r: &LogRecord<'_>) -> std::io::Result<()> {
        DeliveryLog::append(self, r)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        DeliveryLog::flush(self)
    }
    fn counts(&self) -> Option<&crate::admin::counts::LogCounts> {
        Some(&self.counts)
    }
}

/// Totals across shards, for progress and the final report.
#[derive(Default, Debug)]
pub struct Counters {
    pub queued: AtomicU64,
    pub rejected: AtomicU64,
    pub inputs_done: AtomicU64,
    pub inputs_bad: AtomicU64,
    pub live_recipients: AtomicU64,
    pub delivered: AtomicU64,
    /// Bounced or expired.
    pub failed: AtomicU64,
}

/// What one shard holds, published by its shell now and then for whoever watches the engine
/// (`Engine::status`; the admin API to come reads it). A copy: reading it never touches a
/// shard.
#[derive(Debug, Clone)]
pub struct ShardStatus {
    pub shard: usize,
    /// When it was taken (Unix ms).
    pub at_unix_ms: u64,
    /// Recipients of this home not yet final (waiting, deferred or in flight).
    pub live_recipients: u64,
    /// Of those, in flight: rendered and handed to delivery, no outcome yet.
    pub in_flight: u64,
    pub segments: usize,
    pub home: crate::schedule::HomeStatus,
    /// The busiest scopes this shard owns (at most `STATUS_SCOPES_MAX`), busiest first.
    pub scopes: Vec<crate::delivery::owner::ScopeStatus>,
    /// Scopes the owner knows (idle ones within its bounds included), and those busy now.
    pub scopes_known: usize,
    pub scopes_busy: usize,
    /// The delivery log's records this shard wrote, counted.
    pub counts: crate::admin::counts::LogCounts,
    /// Per campaign: (campaign, tenant, recipients queued here now).
    pub campaigns: Vec<(Box<str>, Box<str>, u64)>,
    /// The queue's segment files' bytes.
    pub segment_bytes: u64,
    /// Group commits' durations (the `fdatasync` and what comes with it).
    pub commit_seconds: crate::admin::counts::Histogram,
    /// This shard's resolver (filled in by the shell that owns it).
    pub dns: crate::dns::resolver::DnsStats,
}

/// A rendered message for one recipient, on its way from home to owner.
#[derive(Debug)]
pub struct Prepared {
    /// (sequence number, address) per recipient: several only for one verbatim message to
    /// one domain, which share a transaction.
    pub rcpts: Vec<(u64, String)>,
    pub home: usize,
    pub mail_from: String,
    /// The recipient's message, rendered in DATA form.
    pub data: Data,
    pub message_id: String,
    /// (message record, domain) when more recipients may join this transaction.
    group: Option<(u64, u32)>,
    /// The destination's hosts (MX or route), in the order to try; shared, not copied,
    /// per message.
    pub hosts: Arc<[NextHop]>,
    /// Its recipients are counted against their source's warm-up cap (`delivery::warmup`).
    pub warm_reserved: bool,
}

impl crate::delivery::owner::Recipients for Prepared {
    fn recipients(&self) -> u32 {
        self.rcpts.len() as u32
    }
}

/// The owner's core, holding the messages prepared for its scopes.
pub type Owner = crate::delivery::owner::Owner<Prepared>;

/// One recipient's result, on its way from owner to home.
#[derive(Debug)]
pub struct OutcomeItem {
    pub seq: u64,
    pub rcpt: String,
    pub message_id: String,
    pub result: ItemResult,
    pub mx: String,
    pub ip: String,
    pub tls: String,
    /// Its recipient was counted against its source's warm-up cap.
    pub warm_reserved: bool,
}

/// What happened to one recipient on the owner: the receiver's answer, or a decision made
/// before any connection (a destination refused by `delivery::guard`).
#[derive(Debug)]
pub enum ItemResult {
    Smtp(RcptResult),
    Decided(Outcome),
}

/// What the delivery stages send between shards (a shard sends itself some too).
#[derive(Debug)]
pub enum Msg {
    /// Home to owner: how many recipients wait at `home` for `scope`.
    Demand {
        scope: Scope,
        home: usize,
        count: u32,
    },
    /// Owner to home: send up to `n` messages for `scope` (to `owner`, the shard that
    /// granted it: a scope's owner can change with a reload while credit is out).
    Credit { scope: String, n: u32, owner: usize },
    /// Home to owner: rendered messages for `granted` credit (possibly fewer, none when the
    /// credit is handed back).
    Prepared {
        scope: String,
        home: usize,
        granted: u32,
        msgs: Vec<Prepared>,
    },
    /// Owner to home: results.
    Outcomes {
        scope: String,
        items: Vec<OutcomeItem>,
    },
    /// A shard to the coordinator of `scope` (`delivery::shares`): whether it wants the
    /// scope, what it released, or its share handed back.
    Share {
        scope: String,
        shard: usize,
        report: crate::delivery::shares::Report,
    },
    /// A shard to the others: `host`'s opportunistic TLS handshake failed; it gets
    /// plaintext for a while (`delivery::tls::TLS_BROKEN_FOR`) from every shard.
    TlsBroken { host: String },
    /// The coordinator of `scope` to a shard: the connections it may hold now (and the pace
    /// to follow, when a paced scope's turn comes to it).
    Granted {
        scope: String,
        connections: u32,
        returned: bool,
        pace: Option<crate::delivery::shares::Pace>,
    },
}

impl Msg {
    /// Carried by the data mesh (bulky, may wait for room) rather than the control mesh
    /// (small, never waits behind data).
    pub fn is_data(&self) -> bool {
        matches!(self, Msg::Prepared { .. })
    }
}

/// What the shell must do after a call into the core.
#[derive(Debug)]
pub enum Effect {
    /// Send `Msg` to shard `to` (possibly this one), after everything sent to it before.
    Send(usize, Msg),
    /// Start a connection worker for the scope (counted by the owner already); with hosts,
    /// it connects to them before its first message arrives.
    SpawnWorker {
        scope: String,
        preconnect: Option<Arc<[NextHop]>>,
    },
    /// Messages arrived for the scope: wake its idle workers.
    WakeWorkers(String),
    /// Scopes wait for a worker and only parked connections hold the budget: close up to
    /// this many of them (longest idle first), then call `parked_closing` with the number
    /// taken out to close.
    CloseParked(u32),
    /// A scope's share went below what it holds: close the connections its workers parked
    /// (`parked_closing` and `parked_closed` for each, with the scope).
    CloseParkedOf(String),
    /// Find where the domain's mail goes (`route_statically`, else DNS and `route_by_dns`),
    /// then call `resolved`.
    Resolve(String),
    /// Run a group commit soon: outcomes or appended chunks wait for it.
    Commit,
    /// Run the scheduler before its next tick: recipients became ready.
    Schedule,
    /// Storage or the delivery log failed: the engine stops (nothing is lost; the queue
    /// recovers at the next start).
    Fatal(String),
    /// The core caught itself in a state it should never reach (a bug): the shell reports
    /// it; the engine goes on (the simulation fails).
    Bug(String),
}

/// One shard's core. See the module documentation.
pub struct Core<L> {
    pub id: usize,
    pub shards: usize,
    config: Arc<Config>,
    clock: Arc<dyn Clock>,
    counters: Arc<Counters>,
    pub queue: ShardQueue,
    pub log: L,
    pub home: Home,
    pub owner: Owner,
    /// This shard's shares of scopes' connections, and the shares of the scopes it
    /// coordinates (`delivery::shares`).
    shares: crate::delivery::shares::Shares,
    ledger: crate::delivery::shares::Ledger,
    /// The message stage's parsed templates and pickup bodies, per message record.
    renderings: Renderings,
    /// Where a message's header section is rendered before it joins the DATA content.
    render_scratch: Vec<u8>,
    /// Chunks appended and waiting for the next group commit: (claiming shard, chunk, its
    /// first recipient's seq; None if it was committed before a restart).
    unsynced: Vec<(usize, Chunk, Option<u64>)>,
    unsynced_records: usize,
    /// Chunks whose group commit is under way (between `begin_commit` and `end_commit`).
    committing: Vec<(usize, Chunk, Option<u64>)>,
    /// Draining: nothing new is rendered or granted; in-flight work finishes.
    closing: bool,
    last_sweep: Instant,
    last_share_tick: Instant,
    /// Delivery status notifications noted and not yet queued (`notify`).
    reports: notify::PendingReports,
    /// The batch id of the last delivery status notification this core queued.
    last_notification_batch: u64,
    /// Suppression, checked before each recipient is rendered and taught the bad mailboxes
    /// receivers report.
    suppressions: Arc<crate::suppression::Suppressions>,
    suppressed: crate::suppression::Reader,
    /// Entries learnt and not yet written to this shard's store file (`take_learnt`); past
    /// `LEARNT_BYTES_MAX` they stay in memory only.
    learnt: Vec<u8>,
    /// Group commits' durations, as the shell measured them (`note_commit`).
    commit_seconds: crate::admin::counts::Histogram,
    /// Reply rules' state every shard shares, the firings as last seen, when.
    rulebook: Arc<crate::delivery::rules::RuleBook>,
    firings: Arc<crate::delivery::rules::Firings>,
    rules_generation_seen: u64,
    last_rules_tick: Instant,
    rules_looked_unix_ms: u64,
    /// Warm-up counts every shard shares; the view's generation and the UTC day last seen.
    warmbook: Arc<crate::delivery::warmup::WarmBook>,
    warm_generation_seen: u64,
    warm_day: u64,
    warm_freed_seen: u64,
    warm_release_pending: bool,
    warm_release_at: Instant,
    /// The cluster's shared state (`crate::cluster`), with what this core last saw of it.
    cluster: Option<Arc<crate::cluster::Shared>>,
    cluster_generation_seen: u64,
    cluster_cut_seen: u64,
    /// When this node's next lease runs out: its scopes re-limit then (to the fallback
    /// share) even if the renewing thread is held up.
    cluster_lapse: Option<Instant>,
    last_cluster_report: Instant,
    effects: Vec<Effect>,
}

/// Bytes of learnt suppression entries a core holds for its shell to write.
pub const LEARNT_BYTES_MAX: usize = 1 << 20;

impl<L: LogSink> Core<L> {
    /// A shard's core over its recovered queue: the home learns what the queue holds. The
    /// owner runs at most `connections_max` connections at once (`Owner::new`).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: usize,
        shards: usize,
        connections_max: u32,
        config: Arc<Config>,
        clock: Arc<dyn Clock>,
        counters: Arc<Counters>,
        queue: ShardQueue,
        log: L,
    ) -> Core<L> {
        let mut home = Home::default();
        home.load(&queue.index);
        home.set_egress(Arc::new(config.egress.clone()));
        home.set_owners(crate::schedule::ScopeOwners::new(&config, shards));
        let now = clock.now();
        Core {
            id,
            shards,
            config,
            clock,
            counters,
            queue,
            log,
            home,
            owner: Owner::new(shards, connections_max),
            shares: Default::default(),
            ledger: crate::delivery::shares::Ledger::new(shards),
            renderings: Renderings::new(crate::message::RENDERINGS_BYTES_MAX),
            render_scratch: Vec::new(),
            unsynced: Vec::new(),
            unsynced_records: 0,
            committing: Vec::new(),
            closing: false,
            last_sweep: now,
            last_share_tick: now,
            reports: Default::default(),
            last_notification_batch: 0,
            suppressed: crate::suppression::Suppressions::empty().reader(),
            suppressions: crate::suppression::Suppressions::empty(),
            learnt: Vec::new(),
            commit_seconds: Default::default(),
            rulebook: Arc::default(),
            firings: Arc::default(),
            rules_generation_seen: 0,
            last_rules_tick: now,
            rules_looked_unix_ms: 0,
            warmbook: Arc::default(),
            warm_generation_seen: 0,
            warm_day: 0,
            warm_freed_seen: 0,
            warm_release_pending: false,
            warm_release_at: now,
            cluster: None,
            cluster_generation_seen: 0,
            cluster_cut_seen: 0,
            cluster_lapse: None,
            last_cluster_report: now,
            effects: Vec::new(),
        }
    }

    /// The engine's suppression (a new core has none).
    pub fn with_suppressions(mut self, s: &Arc<crate::suppression::Suppressions>) -> Self {
        self.suppressed = s.reader();
        self.suppressions = Arc::clone(s);
        self
    }

    /// The providers' paces every shard shares (`provider_max_message_rate`; a new core's
    /// are its own).
    pub fn with_paces(mut self, paces: &Arc<crate::delivery::pace::SharedPaces>) -> Self {
        self.owner.share_paces(Arc::clone(paces));
        self
    }

    /// The cluster this node belongs to (`[cluster]`): its leases bound the providers'
    /// shared limits here, and this core's throttle cuts reach the other nodes.
    pub fn with_cluster(mut self, cluster: Option<&Arc<crate::cluster::Shared>>) -> Self {
        self.cluster = cluster.cloned();
        self
    }

    /// The suppression entries learnt since the last call, as store lines
    /// (`suppression::store`), for the shell to append to this shard's file.
    pub fn take_learnt(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.learnt)
    }

    /// What the shell has to do since it last asked, in order.
    pub fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// A reloaded configuration: every scope this shard owns takes its limits at once.
    pub fn reconfigure(&mut self, config: Arc<Config>) {
        let now = self.clock.now();
        let shares = &self.shares;
        let cluster = self.cluster.as_deref();
        self.owner.reconfigure(
            |key| share_limits(&config, cluster, key, shares.granted(key), now),
            now,
        );
        self.home.set_egress(Arc::new(config.egress.clone()));
        self.home
            .set_owners(crate::schedule::ScopeOwners::new(&config, self.shards));
        self.config = config;
    }

    /// The shard drains: nothing new is rendered or granted, waiting workers leave.
    pub fn close(&mut self) {
        self.closing = true;
    }

    pub fn is_closing(&self) -> bool {
        self.closing
    }

    /// A message from a shard (possibly this one).
    pub fn on_message(&mut self, msg: Msg) {
        match msg {
            Msg::Demand { scope, home, count } => self.on_demand(scope, home, count),
            Msg::Credit { scope, n, owner } => self.on_credit(scope, n, owner),
            Msg::Prepared {
                scope,
                home,
                granted,
                msgs,
            } => self.on_prepared(scope, home, granted, msgs),
            Msg::Outcomes { scope, items } => self.on_outcomes(items, &scope),
            Msg::Share {
                scope,
                shard,
                report,
            } => self.on_share(scope, shard, report),
            Msg::Granted {
                scope,
                connections,
                returned,
                pace,
            } => self.on_granted(scope, connections, returned, pace),
            Msg::TlsBroken { host } => {
                let now = self.clock.now();
                self.owner.mark_tls_broken(&host, now);
            }
        }
    }

    /// A group commit took `seconds` (the shell times it).
    pub fn note_commit(&mut self, seconds: f64) {
        self.commit_seconds.record(seconds);
    }

    /// A copy of this shard's state (`ShardStatus`).
    pub fn status(&self) -> ShardStatus {
        let (scopes, scopes_busy) = self.owner.status(STATUS_SCOPES_MAX);
        ShardStatus {
            shard: self.id,
            at_unix_ms: self.clock.unix_ms(),
            live_recipients: self.queue.index.live(),
            in_flight: self.queue.index.in_flight(),
            segments: self.queue.segment_count(),
            home: self.home.status(),
            scopes,
            scopes_known: self.owner.scopes(),
            scopes_busy,
            counts: self.log.counts().cloned().unwrap_or_default(),
            campaigns: self.campaigns_queued(),
            segment_bytes: self.queue.segment_bytes(),
            commit_seconds: self.commit_seconds.clone(),
            dns: Default::default(),
        }
    }

    /// Recipients queued here per (campaign, tenant), at most `STATUS_CAMPAIGNS_MAX`, largest
    /// first.
    fn campaigns_queued(&self) -> Vec<(Box<str>, Box<str>, u64)> {
        let mut by: HashMap<(&str, &str), u64> = HashMap::new();
        for m in self.queue.index.messages.values() {
            if m.live > 0 {
                *by.entry((&m.campaign, &m.tenant)).or_default() += m.live;
            }
        }
        let mut v: Vec<(Box<str>, Box<str>, u64)> = by
            .into_iter()
            .map(|((c, t), n)| (Box::from(c), Box::from(t), n))
            .collect();
        v.sort_unstable_by(|a, b| b.2.cmp(&a.2).then_with(|| a.0.cmp(&b.0)));
        v.truncate(STATUS_CAMPAIGNS_MAX);
        v
    }

    fn send(&mut self, to: usize, msg: Msg) {
        self.effects.push(Effect::Send(to, msg));
    }

    fn fatal(&mut self, why: String) {
        self.effects.push(Effect::Fatal(why));
    }
}
