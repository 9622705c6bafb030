//! The engine as operators see it, put together from the shards' published snapshots
//! (`ShardStatus`) and the holds in force: one row per scope with its binding constraint,
//! totals, campaigns. The API's JSON, `/metrics` and the status page all read this.

use super::counts::{EventCounts, OTHER};
use super::holds::{Holds, Target};
use crate::config::Config;
use crate::delivery::owner::ScopeNotes;
use crate::shard::ShardStatus;
use std::collections::{BTreeMap, HashMap};

/// One throttle scope across the shards that own a share of it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScopeView {
    pub key: String,
    /// Recipients routed to it and waiting for credit, rendered and waiting for a
    /// connection, or granted and being rendered.
    pub waiting: u64,
    pub workers: u64,
    pub parked: u64,
    pub closing: u64,
    /// Connections the receiver accepts now (its refusals lower it), summed over shards.
    pub connection_cap: u64,
    pub connection_limit: u32,
    /// The configured ceiling (messages a second) and the rate in force.
    pub max_rate: Option<f64>,
    pub rate: Option<f64>,
    /// The adaptive limit beneath the ceiling while the receiver's pushback holds it back.
    pub adaptive_limit: Option<f64>,
    pub pushbacks: u64,
    pub notes: ScopeNotes,
    pub counts: EventCounts,
    /// Shards whose snapshot lists it busy.
    pub busy_on: usize,
    /// Messages a second it delivered lately (from the API's samples), when known.
    pub achieved: Option<f64>,
    /// A reply rule's firing on it, and how much of the scope is back (0 while in force).
    pub rule: Option<(crate::delivery::rules::Firing, f64)>,
}

/// Why a scope, a domain or a recipient is not moving faster, most binding first.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// A reply rule fired on it (`[[rules]]`): suspended or capped until `until`, then back
    /// gradually (`back`: how much is back).
    Rule {
        rule: String,
        action: String,
        until_unix_ms: u64,
        back: f64,
        reply: String,
    },
    /// An operator suspended it.
    Suspended {
        target: String,
        since_unix_ms: u64,
        reason: String,
    },
    /// Its domain's MX lookups fail (or routing decided every recipient's outcome).
    Dns {
        text: String,
    },
    /// Its domain is being looked up.
    Resolving,
    /// The receiver pushed back: held beneath the ceiling since then.
    Pushback {
        since_unix_ms: Option<u64>,
        last_reply: String,
        rate: f64,
    },
    /// The receiver refused connections: held at fewer than configured.
    ConnectionsRefused {
        cap: u64,
        limit: u32,
    },
    /// Every connection allowed is open.
    ConnectionLimit {
        open: u64,
        limit: u32,
    },
    /// Paced at the configured rate.
    RateCeiling {
        rate: f64,
    },
    /// A TLS policy that the receiver's hosts do not meet.
    TlsPolicy {
        text: String,
    },
    /// Every source its pool may use at this provider has reached its warm-up cap for today
    /// (or deferrals stopped it): the recipients wait for the next UTC day.
    Warmup {
        sources: Vec<String>,
    },
    /// Nothing to send before the retry times.
    RetryTimes {
        next_unix_ms: Option<u64>,
        last_failure: String,
    },
    /// Mail is waiting for this shard's share of the scope's connections (another shard
    /// holds them, or the owner's window is full while messages are rendered).
    Credit,
    /// Sending as fast as the receiver takes it; nothing holds it back.
    Sending,
    Idle,
}

impl Constraint {
    /// A short machine name (`/metrics` label, JSON `constraint`).
    pub fn kind(&self) -> &'static str {
        match self {
            Constraint::Rule { .. } => "rule",
            Constraint::Suspended { .. } => "suspended",
            Constraint::Dns { .. } => "dns",
            Constraint::Resolving => "resolving",
            Constraint::Pushback { .. } => "pushback",
            Constraint::ConnectionsRefused { .. } => "connections_refused",
            Constraint::ConnectionLimit { .. } => "connection_limit",
            Constraint::RateCeiling { .. } => "rate_ceiling",
            Constraint::TlsPolicy { .. } => "tls_policy",
            Constraint::Warmup { .. } => "warmup",
            Constraint::RetryTimes { .. } => "retry_times",
            Constraint::Credit => "credit",
            Constraint::Sending => "sending",
            Constraint::Idle => "idle",
        }
    }

    /// One line for an operator.
    pub fn text(&self, now_unix_ms: u64) -> String {
        let ago = |t: u64| age_text(now_unix_ms.saturating_sub(t));
        match self {
            Constraint::Suspended {
                target,
                since_unix_ms,
                reason,
            } => {
                let why = if reason.is_empty() {
                    String::new()
                } else {
                    format!(": {reason}")
                };
                format!(
                    "suspended by an operator ({target}) {} ago{why}",
                    ago(*since_unix_ms)
                )
            }
            Constraint::Rule {
                rule,
                action,
                until_unix_ms,
                back,
                reply,
            } => {
                if *until_unix_ms > now_unix_ms {
                    format!(
                        "rule {rule}: {action} for {} more; reply: {reply}",
                        age_text(until_unix_ms - now_unix_ms)
                    )
                } else {
                    format!(
                        "rule {rule} ended {} ago: coming back, {:.0}% so far",
                        age_text(now_unix_ms - until_unix_ms),
                        back * 100.0
                    )
                }
            }
            Constraint::Warmup { sources } => format!(
                "waiting for tomorrow (00:00 UTC): its pool's sources at their warm-up cap for today ({})",
                sources.join(", ")
            ),
            Constraint::Dns { text } => format!("DNS failing: {text}"),
            Constraint::Resolving => "waiting for its MX lookup".into(),
            Constraint::Pushback {
                since_unix_ms,
                last_reply,
                rate,
            } => {
                let since = since_unix_ms
                    .map(|t| format!(" for {}", ago(t)))
                    .unwrap_or_default();
                format!("throttled by the receiver's pushback{since}, now {rate:.1}/s; last reply: {last_reply}")
            }
            Constraint::ConnectionsRefused { cap, limit } => {
                format!("the receiver refuses more connections: holding at {cap} of {limit}")
            }
            Constraint::ConnectionLimit { open, limit } => {
                format!("connection limit: {open} of {limit} open")
            }
            Constraint::RateCeiling { rate } => format!("rate ceiling: {rate:.1} messages/s"),
            Constraint::TlsPolicy { text } => format!("TLS policy: {text}"),
            Constraint::RetryTimes {
                next_unix_ms,
                last_failure,
            } => {
                let next = match next_unix_ms {
                    Some(t) if *t > now_unix_ms => {
                        format!(", the next in {}", age_text(t - now_unix_ms))
                    }
                    Some(_) => ", due now".to_string(),
                    None => String::new(),
                };
                let last = if last_failure.is_empty() {
                    String::new()
                } else {
                    format!("; last failure: {last_failure}")
                };
                format!("waiting for retry times{next}{last}")
            }
            Constraint::Credit => "waiting for its share of the scope's connections".into(),
            Constraint::Sending => "sending; nothing holds it back".into(),
            Constraint::Idle => "nothing queued".into(),
        }
    }
}

/// "3s", "4m", "2h", "3d".
pub fn age_text(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// The scopes the snapshots list, merged across shards, busiest first, with the counts of
/// every scope the delivery log names (idle ones included).
pub fn scopes(statuses: &[ShardStatus], config: &Config) -> Vec<ScopeView> {
    let mut by: BTreeMap<String, ScopeView> = BTreeMap::new();
    // The rates in force of the shards that are sending, summed: without a configured
    // ceiling each shard's throttle paces its own share of the scope's connections.
    let mut sending: HashMap<String, (Option<f64>, Option<f64>)> = HashMap::new();
    for st in statuses {
        for s in &st.scopes {
            if s.workers > 0 {
                let e = sending.entry(s.key.clone()).or_default();
                e.0 = add_opt(e.0, s.rate);
                e.1 = add_opt(e.1, s.adaptive_limit);
            }
            let v = by.entry(s.key.clone()).or_insert_with(|| ScopeView {
                key: s.key.clone(),
                ..Default::default()
            });
            v.waiting += u64::from(s.demand) + u64::from(s.ready) + u64::from(s.credit_out);
            v.workers += u64::from(s.workers);
            v.parked += u64::from(s.parked);
            v.closing += u64::from(s.closing);
            v.connection_cap += u64::from(s.connection_cap);
            v.pushbacks += s.pushbacks;
            v.busy_on += 1;
            v.rate = max_opt(v.rate, s.rate);
            v.adaptive_limit = max_opt(v.adaptive_limit, s.adaptive_limit);
            merge_notes(&mut v.notes, &s.notes);
        }
        for (key, c) in &st.counts.by_scope {
            by.entry(key.to_string())
                .or_insert_with(|| ScopeView {
                    key: key.to_string(),
                    ..Default::default()
                })
                .counts
                .merge(c);
        }
    }
    let mut out: Vec<ScopeView> = by
        .into_values()
        .map(|mut v| {
            if v.key != OTHER {
                let limits = crate::shard::scope_limits(config, &v.key);
                v.connection_limit = limits.connection_limit;
                v.max_rate = limits.max_rate;
                // A configured ceiling is paced by one shard at a time (its pace moves with
                // the scope, `delivery::shares`): its rate is the largest any shard has.
                if limits.max_rate.is_none() {
                    if let Some((rate, adaptive)) = sending.get(&v.key) {
                        v.rate = *rate;
                        v.adaptive_limit = *adaptive;
                    }
                }
            }
            v
        })
        .collect();
    out.sort_by(|a, b| {
        (b.waiting + b.workers)
            .cmp(&(a.waiting + a.workers))
            .then_with(|| b.counts.delivery.cmp(&a.counts.delivery))
            .then_with(|| a.key.cmp(&b.key))
    });
    out
}

/// One row for a destination scope sent from several egress sources (`isp`, from the views
/// of `isp@s1`, `isp@s2`, ... and of `isp` itself for mail from the system's address): the
/// sums of what each source holds and sends (each source is paced on its own), the notes of
/// the latest. Its connection limit is the sources' together, within
/// `provider_connection_limit`.
pub fn merge_sources(base: &str, parts: &[&ScopeView], config: &Config) -> ScopeView {
    let mut v = ScopeView {
        key: base.to_string(),
        ..Default::default()
    };
    let mut limit = 0u32;
    for p in parts {
        v.waiting += p.waiting;
        v.workers += p.workers;
        v.parked += p.parked;
        v.closing += p.closing;
        v.connection_cap += p.connection_cap;
        v.pushbacks += p.pushbacks;
        v.busy_on = v.busy_on.max(p.busy_on);
        v.rate = add_opt(v.rate, p.rate);
        v.max_rate = add_opt(v.max_rate, p.max_rate);
        v.adaptive_limit = add_opt(v.adaptive_limit, p.adaptive_limit);
        v.achieved = add_opt(v.achieved, p.achieved);
        v.counts.merge(&p.counts);
        merge_notes(&mut v.notes, &p.notes);
        limit = limit.saturating_add(p.connection_limit);
        if v.rule.is_none() {
            v.rule = p.rule.clone();
        }
    }
    let provider = config.providers.get(base);
    v.connection_limit = match provider.and_then(|p| p.provider_connection_limit) {
        Some(cap) => limit.min(cap),
        None => limit,
    };
    if let Some(r) = provider.and_then(|p| p.provider_max_message_rate) {
        let cap = r.messages as f64 / r.per.as_secs_f64().max(1e-9);
        v.max_rate = Some(v.max_rate.map_or(cap, |m| m.min(cap)));
    }
    v
}

fn add_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x + y),
        (x, None) => x,
        (None, y) => y,
    }
}

fn max_opt(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.max(y)),
        (x, None) => x,
        (None, y) => y,
    }
}

fn merge_notes(into: &mut ScopeNotes, n: &ScopeNotes) {
    let later = |a: &Option<(u64, String)>, b: &Option<(u64, String)>| match (a, b) {
        (Some(x), Some(y)) if y.0 > x.0 => Some(y.clone()),
        (None, Some(y)) => Some(y.clone()),
        (x, _) => x.clone(),
    };
    into.last_failure = later(&into.last_failure, &n.last_failure);
    into.last_pushback = later(&into.last_pushback, &n.last_pushback);
    into.throttled_since = match (into.throttled_since, n.throttled_since) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    into.refused += n.refused;
}

/// A paced scope delivering at least this share of its ceiling is held by the ceiling.
pub const CEILING_NEAR: f64 = 0.8;

/// What holds a scope back now, from its view and the holds in force.
pub fn scope_constraint(v: &ScopeView, holds: &Holds) -> Constraint {
    if let Some(r) = holds.suspension(&Target::Scope(v.key.clone())) {
        return Constraint::Suspended {
            target: r.target.to_string(),
            since_unix_ms: r.at_unix_ms,
            reason: r.reason.clone(),
        };
    }
    if let Some((f, back)) = &v.rule {
        if *back < 1.0 {
            return Constraint::Rule {
                rule: f.rule.clone(),
                action: f.action.text(),
                until_unix_ms: f.until_unix_ms,
                back: *back,
                reply: f.reply.clone(),
            };
        }
    }
    if v.waiting == 0 && v.workers == 0 {
        return Constraint::Idle;
    }
    if let (Some(rate), Some(_)) = (v.rate, v.adaptive_limit) {
        return Constraint::Pushback {
            since_unix_ms: v.notes.throttled_since,
            last_reply: v
                .notes
                .last_pushback
                .as_ref()
                .map(|p| p.1.clone())
                .unwrap_or_default(),
            rate,
        };
    }
    // Paced at its ceiling and delivering close to it: the ceiling binds, whatever the
    // connections (a paced worker holds its connection while it waits its turn).
    if let (Some(rate), Some(max)) = (v.rate, v.max_rate) {
        let near = v.achieved.is_none_or(|a| a >= max * CEILING_NEAR);
        if rate >= max * 0.999 && near {
            return Constraint::RateCeiling { rate };
        }
    }
    let open = v.workers + v.parked + v.closing;
    if v.connection_cap > 0
        && v.connection_cap < u64::from(v.connection_limit)
        && open >= v.connection_cap
    {
        return Constraint::ConnectionsRefused {
            cap: v.connection_cap,
            limit: v.connection_limit,
        };
    }
    if open >= u64::from(v.connection_limit) && v.connection_limit > 0 {
        return Constraint::ConnectionLimit {
            open,
            limit: v.connection_limit,
        };
    }
    if let Some((_, text)) = &v.notes.last_failure {
        if text.contains("TLS") && v.workers == 0 {
            return Constraint::TlsPolicy { text: text.clone() };
        }
    }
    if v.workers == 0 {
        return Constraint::Credit;
    }
    Constraint::Sending
}

/// Totals over every shard.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub shards: usize,
    pub live_recipients: u64,
    pub in_flight: u64,
    pub segments: u64,
    pub segment_bytes: u64,
    pub home: crate::schedule::HomeStatus,
    pub counts: EventCounts,
    pub scopes_known: u64,
    pub scopes_busy: u64,
}

pub fn totals(statuses: &[ShardStatus]) -> Totals {
    let mut t = Totals {
        shards: statuses.len(),
        ..Default::default()
    };
    for st in statuses {
        t.live_recipients += st.live_recipients;
        t.in_flight += st.in_flight;
        t.segments += st.segments as u64;
        t.segment_bytes += st.segment_bytes;
        let h = &st.home;
        t.home.ready += h.ready;
        t.home.deferred += h.deferred;
        t.home.resolving += h.resolving;
        t.home.resolving_domains += h.resolving_domains;
        t.home.pending += h.pending;
        t.home.pending_scopes += h.pending_scopes;
        t.home.routes += h.routes;
        t.home.held += h.held;
        t.counts.merge(&st.counts.total);
        t.scopes_known += st.scopes_known as u64;
        t.scopes_busy += st.scopes_busy as u64;
    }
    t
}

/// One campaign's progress: queued now (every shard), and its records so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CampaignView {
    pub campaign: String,
    pub tenant: String,
    pub queued: u64,
    pub counts: EventCounts,
}

pub fn campaigns(statuses: &[ShardStatus]) -> Vec<CampaignView> {
    let mut by: HashMap<String, CampaignView> = HashMap::new();
    for st in statuses {
        for (c, t, n) in &st.campaigns {
            let v = by.entry(c.to_string()).or_default();
            v.campaign = c.to_string();
            v.tenant = t.to_string();
            v.queued += n;
        }
        for (c, counts) in &st.counts.by_campaign {
            let v = by.entry(c.to_string()).or_default();
            v.campaign = c.to_string();
            v.counts.merge(counts);
        }
    }
    let mut v: Vec<CampaignView> = by.into_values().collect();
    v.sort_by(|a, b| {
        b.queued
            .cmp(&a.queued)
            .then_with(|| b.counts.last_unix_ms.cmp(&a.counts.last_unix_ms))
            .then_with(|| a.campaign.cmp(&b.campaign))
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::delivery::rules::{Action, Firing};

    fn firing(until: u64) -> Firing {
        Firing {
            rule: "banned".into(),
            scope: "ms@s2".into(),
            action: Action::Suspend,
            since_unix_ms: 0,
            until_unix_ms: until,
            ramp_ms: 1000,
            reply: "550 5.7.606 banned sending IP".into(),
        }
    }

    #[test]
    fn a_rule_is_the_constraint_until_its_scope_is_back() {
        let mut v = ScopeView {
            key: "ms@s2".into(),
            waiting: 5,
            rule: Some((firing(60_000), 0.0)),
            ..Default::default()
        };
        let c = scope_constraint(&v, &Holds::default());
        assert_eq!(c.kind(), "rule");
        let text = c.text(30_000);
        assert!(
            text.contains("banned") && text.contains("30s more"),
            "{text}"
        );
        v.rule = Some((firing(60_000), 0.5));
        let text = scope_constraint(&v, &Holds::default()).text(61_000);
        assert!(text.contains("coming back, 50%"), "{text}");
        // An operator's suspension says more.
        let holds = Holds::new(
            vec![crate::admin::holds::Rule {
                target: Target::Scope("ms@s2".into()),
                at_unix_ms: 0,
                reason: String::new(),
            }],
            Vec::new(),
        );
        assert_eq!(scope_constraint(&v, &holds).kind(), "suspended");
    }

    #[test]
    fn sources_merge_into_one_row_within_the_provider_cap() {
        let config = Config::parse(
            "[providers.ms]\nmx_suffixes = [\".ms.test\"]\nconnection_limit = 4\nprovider_connection_limit = 6\nprovider_max_message_rate = \"50/s\"\n",
            "t",
        )
        .unwrap();
        let a = ScopeView {
            key: "ms@s1".into(),
            workers: 3,
            connection_limit: 4,
            rate: Some(20.0),
            ..Default::default()
        };
        let b = ScopeView {
            key: "ms@s2".into(),
            waiting: 7,
            connection_limit: 4,
            rule: Some((firing(10), 0.0)),
            ..Default::default()
        };
        let m = merge_sources("ms", &[&a, &b], &config);
        assert_eq!((m.key.as_str(), m.workers, m.waiting), ("ms", 3, 7));
        assert_eq!(m.connection_limit, 6, "4 + 4 within 6");
        assert_eq!(m.max_rate, Some(50.0));
        assert_eq!(m.rate, Some(20.0));
        assert!(m.rule.is_some());
    }
}
