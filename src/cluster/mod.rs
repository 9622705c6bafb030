//! Cluster mode: several nodes sharing provider-wide limits through
//! Redis (`[cluster] redis`, `node` in INTERFACE.md). docs/cluster.md has the design and
//! each failure mode.
//!
//! - [`resp`]: RESP2, sans I/O: commands encoded, replies parsed from hostile bytes within
//!   named bounds (fuzzed: `fuzz/fuzz_targets/resp.rs`).
//! - [`client`]: one blocking connection (TCP or TLS, AUTH).
//! - [`node`]: the node's two threads, never a shard's executor: one renews this node's
//!   leases every `TICK` (one script call for every shared limit, `renew.lua`) and publishes
//!   the throttle cuts its shards make; one listens for the other nodes' cuts.
//! - [`sync`]: the rest of what the nodes share (holds, firings, suppressions, daily counts),
//!   kept in step by the renewing thread.
//! - [`state`]: holds and firings as stored in Redis, and merged back.
//! - [`Shared`] (here): what those threads and the shards exchange, under short locks.
//!
//! What is shared: each provider's provider-wide limits, `max_message_rate` and
//! `connection_limit` (or, with egress sources, `provider_max_message_rate` and
//! `provider_connection_limit`: a source's own limits are its node's, as its address is).
//! Each node's owner shard paces the provider at its lease: its fair share of the total among
//! the nodes that have mail for it, never more than the total less what the others hold.
//! A throttle cut on any node (the receiver pushed back) is published; the others cut by the
//! same share. Sites (destinations of no provider) are not shared.

pub mod client;
pub mod drain;
pub mod node;
pub mod received;
pub mod resp;
pub mod state;
pub mod sync;

use crate::config::cluster::Cluster;
use crate::config::Config;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// How often a node renews its leases and reports its wants.
pub const TICK: std::time::Duration = std::time::Duration::from_millis(100);
/// Cuts from other nodes kept for the shards to read; a shard that falls further behind
/// (it cannot: they read every 10 ms) would miss the oldest.
pub const CUTS_KEPT: usize = 256;
/// Longest provider name carried in a cut message.
const NAME_MAX: usize = 200;

/// A provider's limits that the cluster shares (per second; connections), from this node's
/// configuration. `None` of both: nothing of it is shared.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Totals {
    pub rate: Option<f64>,
    pub conns: Option<u32>,
}

/// The shared limits of `provider` in `config`: provider-wide ones, which every node's
/// sending adds to.
pub fn totals(config: &Config, provider: &str) -> Totals {
    let Some(p) = config.providers.get(provider) else {
        return Totals::default();
    };
    let per_second = |r: crate::config::Rate| r.messages as f64 / r.per.as_secs_f64().max(1e-9);
    if config.egress.is_empty() {
        Totals {
            rate: p.max_message_rate.map(per_second),
            conns: Some(p.connection_limit),
        }
    } else {
        Totals {
            rate: p.provider_max_message_rate.map(per_second),
            conns: p.provider_connection_limit,
        }
    }
}

/// This node's part of a provider's shared limits, in force until `until`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Lease {
    pub rate: Option<f64>,
    pub conns: Option<u32>,
    pub until: Instant,
}

/// A throttle cut one node made on a provider, for the others to follow.
#[derive(Debug, Clone, PartialEq)]
pub struct Cut {
    pub node: String,
    pub provider: String,
    /// The new rate as a share of the old one (0.1 to 1).
    pub factor: f64,
    /// When the cutting node made it (Unix ms, its clock).
    pub at_ms: u64,
}

impl Cut {
    /// The message published: `cut node provider factor_milli at_ms`.
    pub fn encode(&self) -> String {
        format!(
            "cut {} {} {} {}",
            self.node,
            self.provider,
            (self.factor * 1000.0).round() as u64,
            self.at_ms
        )
    }

    /// A published message, or `None` if it is not one (it came from outside: bounded,
    /// checked, never trusted further than a share of a rate).
    pub fn decode(bytes: &[u8]) -> Option<Cut> {
        let text = std::str::from_utf8(bytes).ok()?.strip_prefix("cut ")?;
        let mut parts = text.split(' ');
        let node = parts.next()?;
        let provider = parts.next()?;
        let factor: u64 = parts.next()?.parse().ok()?;
        let at_ms: u64 = parts.next()?.parse().ok()?;
        if parts.next().is_some()
            || node.is_empty()
            || provider.is_empty()
            || node.len() > NAME_MAX
            || provider.len() > NAME_MAX
            || !(100..1000).contains(&factor)
        {
            return None;
        }
        Some(Cut {
            node: node.into(),
            provider: provider.into(),
            factor: factor as f64 / 1000.0,
            at_ms,
        })
    }
}

/// What the node's threads read and change of the engine besides leases (the engine
/// implements it): the operators' holds and the reply rules' firings, shared through Redis
/// (`state`).
pub trait Hooks: Send + Sync {
    /// The configuration in force (a reload changes it).
    fn config(&self) -> Arc<Config>;
    /// The holds in force, with their generation.
    fn holds(&self) -> (u64, Arc<crate::admin::holds::Holds>);
    /// Puts `new` in force (durably, as an operator's change is, and in the audit file) if
    /// the holds are still at `generation`, and says their new generation; `None` if they
    /// changed since (an operator's own change wins: it is shared at the next sync).
    fn set_holds(&self, generation: u64, new: crate::admin::holds::Holds) -> Option<u64>;
    fn rules(&self) -> &crate::delivery::rules::RuleBook;
    /// The suppression table every shard checks (`made_here` entries to share, the others'
    /// to apply).
    fn suppressions(&self) -> &crate::suppression::Suppressions;
    /// Each gateway user with a daily limit: recipients this node accepted for it on `day`.
    fn daily_counts(&self, day: u64) -> Vec<(String, u64)>;
    /// What the other nodes accepted for `user` on `day`, as just read.
    fn set_daily_others(&self, user: &str, day: u64, n: u64);
}

/// How this node stands with the cluster, for `/metrics`, the page and `queue summary`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    pub connected: bool,
    /// Since when Redis could not be reached (Unix ms), while it cannot.
    pub degraded_since_ms: Option<u64>,
    pub last_error: Option<String>,
    /// Another live process holds this node's name: refused, running on fallback shares.
    pub name_taken: bool,
    pub renewals: u64,
    pub failures: u64,
    /// Cuts received from other nodes, and how long each took from the cutting node's
    /// decision to a shard here following it (sum and worst, ms; same-clock nodes).
    pub cuts_followed: u64,
    pub cut_lag_ms_sum: u64,
    pub cut_lag_ms_max: u64,
    pub cuts_published: u64,
}

/// One node's lease on one provider as Redis held it at the last look (every
/// `node::STATE_SYNC_EVERY`): the cluster view of the status page and `/metrics`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PeerLease {
    pub node: String,
    pub provider: String,
    /// Messages a second, if the provider's rate is shared.
    pub rate: Option<f64>,
    pub connections: Option<u32>,
    /// What the node asked for (messages a second; connections).
    pub wants_rate: Option<f64>,
    pub wants_connections: Option<u32>,
}

/// What the cluster's threads and the shards exchange.
pub struct Shared {
    pub config: Cluster,
    /// This process, as Redis knows it (the holder of the node's name).
    pub instance: String,
    leases: Mutex<HashMap<String, Lease>>,
    /// Bumped when a lease changes (or lapses into the fallback): shards re-limit then.
    generation: AtomicU64,
    /// Per shard: recipients waiting per provider (its owner's scopes), as last reported.
    wants: Mutex<Vec<HashMap<String, u64>>>,
    cuts_out: Mutex<Vec<Cut>>,
    cuts_in: Mutex<VecDeque<(u64, Cut)>>,
    cuts_seq: AtomicU64,
    status: Mutex<Status>,
    /// Every node's leases, as last read.
    peers: Mutex<Vec<PeerLease>>,
    pub traffic: Arc<client::Traffic>,
    stop: AtomicBool,
    /// Another node changed the shared holds or firings: read them at the next tick.
    sync_asked: AtomicBool,
    /// Wakes the renewing thread early (a cut to publish, a stop).
    wake: Mutex<Option<std::sync::mpsc::SyncSender<()>>>,
    /// Where the other nodes reach this node's admin API (`spate drain`), once it listens.
    advertised: Mutex<Option<String>>,
    /// This node's sending addresses (`[sources]`), each one node's in the cluster.
    sources: Mutex<Vec<String>>,
}

impl Shared {
    pub fn new(config: Cluster, shards: usize) -> Shared {
        let instance = format!(
            "{}-{}-{}",
            config.node,
            std::process::id(),
            crate::clock::system().unix_ms()
        );
        Shared {
            config,
            instance,
            leases: Mutex::default(),
            generation: AtomicU64::new(1),
            wants: Mutex::new(vec![HashMap::new(); shards]),
            cuts_out: Mutex::default(),
            cuts_in: Mutex::default(),
            cuts_seq: AtomicU64::new(0),
            status: Mutex::default(),
            peers: Mutex::default(),
            traffic: Arc::default(),
            stop: AtomicBool::new(false),
            sync_asked: AtomicBool::new(false),
            wake: Mutex::new(None),
            advertised: Mutex::new(None),
            sources: Mutex::default(),
        }
    }

    /// This node's sending addresses, claimed in Redis at its start and in a new state.
    pub fn set_sources(&self, sources: Vec<String>) {
        *lock(&self.sources) = sources;
    }

    pub fn sources(&self) -> Vec<String> {
        lock(&self.sources).clone()
    }

    /// The admin API's address the other nodes are told (in Redis, `<prefix>:admin`).
    pub fn set_advertised(&self, url: Option<String>) {
        *lock(&self.advertised) = url;
    }

    pub fn advertised(&self) -> Option<String> {
        lock(&self.advertised).clone()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// This node's part of `totals` for `provider` now: its lease while one is in force,
    /// else the fallback share (before the first lease, and through an outage).
    pub fn part(&self, provider: &str, totals: Totals, now: Instant) -> Totals {
        let lease = lock(&self.leases).get(provider).copied();
        let fallback = self.fallback(totals);
        match lease {
            // A limit the lease does not cover (shared since a reload, not yet renewed): its
            // fallback share.
            Some(l) if l.until > now => Totals {
                rate: totals
                    .rate
                    .map(|t| l.rate.map_or(fallback.rate.unwrap_or(t), |r| r.min(t))),
                conns: totals
                    .conns
                    .map(|t| l.conns.map_or(fallback.conns.unwrap_or(t), |c| c.min(t))),
            },
            _ => fallback,
        }
    }

    /// When the next lease in force runs out (after `now`), if any: a shard re-limits then
    /// even if the renewing thread is held up.
    pub fn next_lapse(&self, now: Instant) -> Option<Instant> {
        lock(&self.leases)
            .values()
            .map(|l| l.until)
            .filter(|&u| u > now)
            .min()
    }

    /// `fallback_share` of each total (at least one connection).
    pub fn fallback(&self, totals: Totals) -> Totals {
        let share = self.config.fallback_share;
        Totals {
            rate: totals.rate.map(|r| r * share),
            conns: totals
                .conns
                .map(|c| ((f64::from(c) * share).floor() as u32).max(1)),
        }
    }

    /// A shard's recipients waiting per provider.
    pub fn report_wants(&self, shard: usize, wants: HashMap<String, u64>) {
        if let Some(slot) = lock(&self.wants).get_mut(shard) {
            *slot = wants;
        }
    }

    fn wants(&self) -> HashMap<String, u64> {
        let mut all: HashMap<String, u64> = HashMap::new();
        for shard in lock(&self.wants).iter() {
            for (p, n) in shard {
                *all.entry(p.clone()).or_default() += n;
            }
        }
        all
    }

    /// A shard cut its throttle on `provider`: the other nodes hear at once.
    pub fn publish_cut(&self, provider: &str, factor: f64) {
        let cut = Cut {
            node: self.config.node.clone(),
            provider: provider.into(),
            factor: factor.clamp(0.1, 0.999),
            at_ms: crate::clock::system().unix_ms(),
        };
        let mut out = lock(&self.cuts_out);
        if out.len() < CUTS_KEPT {
            out.push(cut);
        }
        drop(out);
        if let Some(w) = lock(&self.wake).as_ref() {
            let _ = w.try_send(());
        }
    }

    /// Other nodes' cuts after sequence number `after`, and the last number.
    pub fn cuts_since(&self, after: u64) -> (Vec<Cut>, u64) {
        let cuts = lock(&self.cuts_in);
        let last = self.cuts_seq.load(Ordering::Acquire);
        let new = cuts
            .iter()
            .filter(|(seq, _)| *seq > after)
            .map(|(_, c)| c.clone())
            .collect();
        (new, last)
    }

    fn received_cut(&self, cut: Cut) {
        let mut cuts = lock(&self.cuts_in);
        let seq = self.cuts_seq.load(Ordering::Acquire) + 1;
        cuts.push_back((seq, cut));
        while cuts.len() > CUTS_KEPT {
            cuts.pop_front();
        }
        self.cuts_seq.store(seq, Ordering::Release);
    }

    /// A shard followed a cut `lag_ms` after the cutting node made it.
    pub fn followed_cut(&self, lag_ms: u64) {
        let mut s = lock(&self.status);
        s.cuts_followed += 1;
        s.cut_lag_ms_sum += lag_ms;
        s.cut_lag_ms_max = s.cut_lag_ms_max.max(lag_ms);
    }

    pub fn status(&self) -> Status {
        lock(&self.status).clone()
    }

    /// This node's leases now (provider, lease), by provider.
    pub fn leases(&self) -> Vec<(String, Lease)> {
        let mut v: Vec<_> = lock(&self.leases)
            .iter()
            .map(|(k, l)| (k.clone(), *l))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Another node said the shared state changed.
    fn ask_sync(&self) {
        self.sync_asked.store(true, Ordering::SeqCst);
        if let Some(w) = lock(&self.wake).as_ref() {
            let _ = w.try_send(());
        }
    }

    /// Every node's leases, as last read from Redis (empty before the first look).
    pub fn peers(&self) -> Vec<PeerLease> {
        lock(&self.peers).clone()
    }

    fn set_peers(&self, peers: Vec<PeerLease>) {
        *lock(&self.peers) = peers;
    }

    /// The cluster's part of `/api/v1/status` (and the page's Cluster table).
    pub fn status_json(&self, config: &Config) -> serde_json::Value {
        let st = self.status();
        let now = Instant::now();
        let leases: Vec<serde_json::Value> = config
            .providers
            .keys()
            .filter_map(|name| {
                let t = totals(config, name);
                if t == Totals::default() {
                    return None;
                }
                let part = self.part(name, t, now);
                Some(serde_json::json!({
                    "provider": name,
                    "rate": part.rate,
                    "connections": part.conns,
                    "total_rate": t.rate,
                    "total_connections": t.conns,
                }))
            })
            .collect();
        serde_json::json!({
            "node": self.config.node,
            "connected": st.connected,
            "degraded_since": st.degraded_since_ms,
            "last_error": st.last_error,
            "name_taken": st.name_taken,
            "fallback_share": self.config.fallback_share,
            "leases": leases,
            "peers": self.peers(),
            "cuts_published": st.cuts_published,
            "cuts_followed": st.cuts_followed,
            "cut_lag_ms_max": st.cut_lag_ms_max,
            "redis_commands": self.traffic.commands.load(Ordering::Relaxed),
        })
    }

    pub fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(w) = lock(&self.wake).as_ref() {
            let _ = w.try_send(());
        }
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_messages_round_trip_and_hostile_ones_are_dropped() {
        let c = Cut {
            node: "mta1".into(),
            provider: "yahoo".into(),
            factor: 0.9,
            at_ms: 1_700_000_000_123,
        };
        assert_eq!(Cut::decode(c.encode().as_bytes()), Some(c));
        for bad in [
            &b"cut mta1 yahoo 0 1"[..],
            b"mta1 yahoo 900 1",
            b"cut mta1 yahoo 1000 1",
            b"cut mta1 yahoo 900",
            b"cut mta1 yahoo 900 1 extra",
            b"cut  yahoo 900 1",
            b"cut mta1 yahoo -5 1",
            b"cut \xff\xfe yahoo 900 1",
        ] {
            assert_eq!(Cut::decode(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
