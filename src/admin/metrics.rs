//! `GET /metrics`: the Prometheus text exposition format (version 0.0.4), from the shards'
//! snapshots. Names follow Prometheus conventions (`spate_` prefix, `_total` counters, base
//! units); label values are bounded: shards, event types and bounce categories are fixed
//! sets, and scopes are the `[admin] metrics_scopes` busiest, the rest summed into
//! `scope="other"`.

use super::counts::{EventCounts, Histogram, BOUNCE_CATEGORIES, LATENCY_BUCKETS, OTHER};
use super::holds::Holds;
use super::view::{self, ScopeView};
use crate::config::Config;
use crate::delivery::warmup::WarmStatus;
use crate::shard::{Counters, ShardStatus};
use std::fmt::Write;
use std::sync::atomic::Ordering;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

struct Out {
    text: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{k}=\"");
                escape_label(v, &mut self.text);
                self.text.push('"');
            }
            self.text.push('}');
        }
        if value.fract() == 0.0 && value.abs() < 1e15 {
            let _ = writeln!(self.text, " {}", value as i64);
        } else {
            let _ = writeln!(self.text, " {value}");
        }
    }
}

/// A label value as the format wants it: backslash, double quote and line feed escaped.
fn escape_label(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
}

/// Reads one count out of a scope's or shard's records.
type CountOf = fn(&EventCounts) -> u64;

/// The whole exposition.
/// The reply rules' state as `/metrics` and the views show it.
#[derive(Default)]
pub struct RulesSeen {
    pub firings: std::sync::Arc<crate::delivery::rules::Firings>,
    pub fired: std::collections::HashMap<String, u64>,
    pub now_unix_ms: u64,
}

impl RulesSeen {
    /// The firing on `key`, and how much of the scope is back, while not all of it is.
    pub fn on(&self, key: &str) -> Option<(crate::delivery::rules::Firing, f64)> {
        let f = self.firings.get(key)?;
        let back = f.back(self.now_unix_ms);
        (back < 1.0).then(|| (f.clone(), back))
    }
}

pub fn render(
    statuses: &[ShardStatus],
    config: &Config,
    holds: &Holds,
    counters: &Counters,
    achieved: &dyn Fn(&str) -> Option<f64>,
    rules: &RulesSeen,
    warmup: &[WarmStatus],
) -> String {
    let mut o = Out {
        text: String::with_capacity(16 * 1024),
    };
    let shard_label: Vec<String> = statuses.iter().map(|s| s.shard.to_string()).collect();

    o.family(
        "spate_queue_recipients",
        "gauge",
        "Recipients queued and not yet final (waiting, deferred or in flight), per home shard.",
    );
    for (st, sh) in statuses.iter().zip(&shard_label) {
        o.sample(
            "spate_queue_recipients",
            &[("shard", sh)],
            st.live_recipients as f64,
        );
    }
    o.family(
        "spate_queue_home_recipients",
        "gauge",
        "Recipients on each home shard by where they wait: ready, deferred (retry time), resolving (MX lookup), pending (credit) or held (an operator's suspension).",
    );
    for (st, sh) in statuses.iter().zip(&shard_label) {
        let h = &st.home;
        for (state, n) in [
            ("ready", h.ready),
            ("deferred", h.deferred),
            ("resolving", h.resolving),
            ("pending", h.pending),
            ("held", h.held),
        ] {
            o.sample(
                "spate_queue_home_recipients",
                &[("shard", sh), ("state", state)],
                n as f64,
            );
        }
    }
    o.family(
        "spate_queue_in_flight",
        "gauge",
        "Recipients rendered and handed to delivery, waiting for their outcome, per home shard.",
    );
    for (st, sh) in statuses.iter().zip(&shard_label) {
        o.sample(
            "spate_queue_in_flight",
            &[("shard", sh)],
            st.in_flight as f64,
        );
    }
    o.family(
        "spate_queue_segments",
        "gauge",
        "Queue segment files, per shard.",
    );
    for (st, sh) in statuses.iter().zip(&shard_label) {
        o.sample("spate_queue_segments", &[("shard", sh)], st.segments as f64);
    }
    o.family(
        "spate_queue_bytes",
        "gauge",
        "Bytes of records in the queue's segments, per shard.",
    );
    for (st, sh) in statuses.iter().zip(&shard_label) {
        o.sample(
            "spate_queue_bytes",
            &[("shard", sh)],
            st.segment_bytes as f64,
        );
    }
    histogram(
        &mut o,
        "spate_group_commit_duration_seconds",
        "Group commits (the fdatasync of the queue, with the files synced before it), per shard.",
        statuses
            .iter()
            .zip(&shard_label)
            .map(|(st, sh)| (sh.as_str(), &st.commit_seconds)),
    );

    events_by_shard(&mut o, statuses, &shard_label);

    o.family(
        "spate_intake_files_total",
        "counter",
        "Spool inputs processed: done (every recipient queued or rejected) or bad (refused whole).",
    );
    o.sample(
        "spate_intake_files_total",
        &[("result", "done")],
        counters.inputs_done.load(Ordering::Relaxed) as f64,
    );
    o.sample(
        "spate_intake_files_total",
        &[("result", "bad")],
        counters.inputs_bad.load(Ordering::Relaxed) as f64,
    );
    o.family(
        "spate_intake_recipients_total",
        "counter",
        "Recipients taken in (spool, gateway, reports): queued or rejected.",
    );
    o.sample(
        "spate_intake_recipients_total",
        &[("result", "queued")],
        counters.queued.load(Ordering::Relaxed) as f64,
    );
    o.sample(
        "spate_intake_recipients_total",
        &[("result", "rejected")],
        counters.rejected.load(Ordering::Relaxed) as f64,
    );

    dns(&mut o, statuses, &shard_label);

    let mut scopes = top_scopes(view::scopes(statuses, config), config.admin.metrics_scopes);
    for v in &mut scopes {
        v.achieved = achieved(&v.key);
        v.rule = rules.on(&v.key);
    }
    scope_families(&mut o, &scopes, holds, rules);
    warmup_families(&mut o, warmup);
    o.text
}

fn histogram<'a>(
    o: &mut Out,
    name: &str,
    help: &str,
    series: impl Iterator<Item = (&'a str, &'a Histogram)>,
) {
    o.family(name, "histogram", help);
    for (shard, h) in series {
        let mut cumulative = 0;
        let bucket = format!("{name}_bucket");
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += h.buckets[i];
            o.sample(
                &bucket,
                &[("shard", shard), ("le", &le.to_string())],
                cumulative as f64,
            );
        }
        cumulative += h.buckets[LATENCY_BUCKETS.len()];
        o.sample(
            &bucket,
            &[("shard", shard), ("le", "+Inf")],
            cumulative as f64,
        );
        o.sample(&format!("{name}_sum"), &[("shard", shard)], h.sum_seconds);
        o.sample(
            &format!("{name}_count"),
            &[("shard", shard)],
            h.count as f64,
        );
    }
}

/// The delivery log's records, per shard that wrote them.
fn events_by_shard(o: &mut Out, statuses: &[ShardStatus], shard_label: &[String]) {
    let families: [(&str, &str, CountOf); 6] = [
        (
            "spate_received_total",
            "Reception records: recipients queued.",
            |c| c.reception,
        ),
        ("spate_delivered_total", "Delivery records.", |c| c.delivery),
        (
            "spate_deferred_total",
            "TransientFailure records (each attempt deferred).",
            |c| c.transient_failure,
        ),
        ("spate_expired_total", "Expiration records.", |c| {
            c.expiration
        }),
        (
            "spate_rejected_total",
            "Rejected records: recipients refused at intake.",
            |c| c.rejected,
        ),
        (
            "spate_checks_failed_total",
            "Check records: a check before sending failed with warn.",
            |c| c.check,
        ),
    ];
    for (name, help, get) in families {
        o.family(
            name,
            "counter",
            &format!("{help} Written by each shard; equal to the delivery log's count."),
        );
        for (st, sh) in statuses.iter().zip(shard_label) {
            o.sample(name, &[("shard", sh)], get(&st.counts.total) as f64);
        }
    }
    o.family(
        "spate_bounced_total",
        "counter",
        "Bounce records by bounce_category (\"\" when none was given), per shard.",
    );
    for (st, sh) in statuses.iter().zip(shard_label) {
        for (i, cat) in BOUNCE_CATEGORIES.iter().enumerate() {
            o.sample(
                "spate_bounced_total",
                &[("shard", sh), ("category", cat)],
                st.counts.total.bounced[i] as f64,
            );
        }
    }
}

fn dns(o: &mut Out, statuses: &[ShardStatus], shard_label: &[String]) {
    o.family(
        "spate_dns_lookups_total",
        "counter",
        "MX and address lookups by where the answer came from (cache or nameserver).",
    );
    for (st, sh) in statuses.iter().zip(shard_label) {
        o.sample(
            "spate_dns_lookups_total",
            &[("shard", sh), ("source", "cache")],
            st.dns.cache_hits as f64,
        );
        o.sample(
            "spate_dns_lookups_total",
            &[("shard", sh), ("source", "nameserver")],
            st.dns.cache_misses as f64,
        );
    }
    o.family(
        "spate_dns_queries_total",
        "counter",
        "Queries sent to nameservers (every attempt).",
    );
    for (st, sh) in statuses.iter().zip(shard_label) {
        o.sample(
            "spate_dns_queries_total",
            &[("shard", sh)],
            st.dns.queries as f64,
        );
    }
    o.family(
        "spate_dns_failures_total",
        "counter",
        "Lookups that ended in a temporary failure.",
    );
    for (st, sh) in statuses.iter().zip(shard_label) {
        o.sample(
            "spate_dns_failures_total",
            &[("shard", sh)],
            st.dns.failures as f64,
        );
    }
    o.family(
        "spate_dns_cache_entries",
        "gauge",
        "Answers held in the resolver's cache.",
    );
    for (st, sh) in statuses.iter().zip(shard_label) {
        o.sample(
            "spate_dns_cache_entries",
            &[("shard", sh)],
            st.dns.cache_entries as f64,
        );
    }
}

/// The first `n` scopes (busiest first, every configured provider among them whatever its
/// place) as they are, the rest summed into one `other` row.
pub fn top_scopes(all: Vec<ScopeView>, n: usize) -> Vec<ScopeView> {
    let mut out = Vec::with_capacity(n + 1);
    let mut other = ScopeView {
        key: OTHER.to_string(),
        ..Default::default()
    };
    let mut folded = false;
    for v in all {
        if out.len() < n && v.key != OTHER {
            out.push(v);
        } else {
            folded = true;
            other.waiting += v.waiting;
            other.workers += v.workers;
            other.parked += v.parked;
            other.closing += v.closing;
            other.connection_cap += v.connection_cap;
            other.pushbacks += v.pushbacks;
            other.counts.merge(&v.counts);
        }
    }
    if folded {
        out.push(other);
    }
    out
}

fn scope_families(o: &mut Out, scopes: &[ScopeView], holds: &Holds, rules: &RulesSeen) {
    type Get = fn(&ScopeView) -> Option<f64>;
    let gauges: [(&str, &str, &str, Get); 9] = [
        ("spate_scope_waiting", "gauge", "Recipients routed to the scope and not yet sent (waiting for credit, being rendered, or rendered and waiting for a connection).", |v| Some(v.waiting as f64)),
        ("spate_scope_connections", "gauge", "Connections open: with a worker, parked for reuse, or closing.", |v| Some((v.workers + v.parked + v.closing) as f64)),
        ("spate_scope_connection_limit", "gauge", "connection_limit configured for the scope.", |v| (v.key != OTHER).then_some(f64::from(v.connection_limit))),
        ("spate_scope_connection_cap", "gauge", "Connections the receiver accepts now (lowered by refusals), over the shards sending to it.", |v| Some(v.connection_cap as f64)),
        ("spate_scope_rate_limit_messages_per_second", "gauge", "max_message_rate configured (absent when unlimited).", |v| v.max_rate),
        ("spate_scope_rate_messages_per_second", "gauge", "The rate in force: the ceiling, or the receiver's pushback beneath it (absent when unpaced).", |v| v.rate),
        ("spate_scope_throttled", "gauge", "1 while the receiver's pushback holds the scope beneath its ceiling.", |v| Some(if v.adaptive_limit.is_some() { 1.0 } else { 0.0 })),
        ("spate_scope_pushbacks_total", "counter", "Pushback replies (421, rate-limit 4xx) the scope's throttle counted.", |v| Some(v.pushbacks as f64)),
        ("spate_scope_connections_refused_total", "counter", "Connections the receiver refused at the greeting.", |v| Some(v.notes.refused as f64)),
    ];
    for (name, kind, help, get) in gauges {
        o.family(name, kind, help);
        for v in scopes {
            if let Some(x) = get(v) {
                o.sample(name, &[("scope", &v.key)], x);
            }
        }
    }
    let events: [(&str, &str, CountOf); 3] = [
        (
            "spate_scope_delivered_total",
            "Delivery records of the scope.",
            |c| c.delivery,
        ),
        (
            "spate_scope_deferred_total",
            "TransientFailure records of the scope.",
            |c| c.transient_failure,
        ),
        (
            "spate_scope_expired_total",
            "Expiration records of the scope.",
            |c| c.expiration,
        ),
    ];
    for (name, help, get) in events {
        o.family(name, "counter", help);
        for v in scopes {
            o.sample(name, &[("scope", &v.key)], get(&v.counts) as f64);
        }
    }
    o.family(
        "spate_scope_bounced_total",
        "counter",
        "Bounce records of the scope by bounce_category.",
    );
    for v in scopes {
        for (i, cat) in BOUNCE_CATEGORIES.iter().enumerate() {
            if v.counts.bounced[i] > 0 {
                o.sample(
                    "spate_scope_bounced_total",
                    &[("scope", &v.key), ("category", cat)],
                    v.counts.bounced[i] as f64,
                );
            }
        }
    }
    o.family(
        "spate_rule_fired_total",
        "counter",
        "Times each reply rule fired (a threshold reached, or a bounce rule matched), since start.",
    );
    let mut fired: Vec<(&String, &u64)> = rules.fired.iter().collect();
    fired.sort();
    for (rule, n) in fired {
        o.sample("spate_rule_fired_total", &[("rule", rule)], *n as f64);
    }
    o.family(
        "spate_rule_in_force",
        "gauge",
        "Per scope a reply rule fired on: 1 while it is in force, then the share of the scope back (0 to 1) while it comes back.",
    );
    let mut firings: Vec<&crate::delivery::rules::Firing> =
        rules.firings.by_scope.values().collect();
    firings.sort_by(|a, b| a.scope.cmp(&b.scope));
    for f in firings {
        let back = f.back(rules.now_unix_ms);
        o.sample(
            "spate_rule_in_force",
            &[
                ("rule", &f.rule),
                ("scope", &f.scope),
                ("action", f.action.kind()),
            ],
            if back == 0.0 { 1.0 } else { 1.0 - back },
        );
    }
    o.family(
        "spate_scope_constraint",
        "gauge",
        "1 for what holds the scope back now (rule, suspended, pushback, connections_refused, connection_limit, rate_ceiling, tls_policy, credit, sending, idle).",
    );
    for v in scopes.iter().filter(|v| v.key != OTHER) {
        let c = view::scope_constraint(v, holds);
        o.sample(
            "spate_scope_constraint",
            &[("scope", &v.key), ("constraint", c.kind())],
            1.0,
        );
    }
}

/// Each warming source at each provider: today's cap and counts, its held days.
fn warmup_families(o: &mut Out, warmup: &[WarmStatus]) {
    o.family(
        "spate_warmup_cap",
        "gauge",
        "A warming source's cap of 2xx deliveries at a provider today (absent once warm; 0 before its start date).",
    );
    for w in warmup {
        if let Some(cap) = w.cap {
            o.sample("spate_warmup_cap", &warm_labels(w), cap as f64);
        }
    }
    type Field = fn(&WarmStatus) -> u64;
    let families: [(&str, &str, Field); 3] = [
        (
            "spate_warmup_delivered_today",
            "2xx deliveries today from a source under a warm-up schedule, per provider.",
            |w| w.delivered_today,
        ),
        (
            "spate_warmup_deferred_today",
            "4xx replies today to a source under a warm-up schedule, per provider.",
            |w| w.deferred_today,
        ),
        (
            "spate_warmup_held_days",
            "Days a source's warm-up held at its step because of deferrals, per provider.",
            |w| w.held_days,
        ),
    ];
    for (name, help, field) in families {
        o.family(name, "gauge", help);
        for w in warmup {
            o.sample(name, &warm_labels(w), field(w) as f64);
        }
    }
}

fn warm_labels(w: &WarmStatus) -> [(&str, &str); 2] {
    [("source", &w.source), ("provider", &w.provider)]
}

/// This node's standing in its cluster (`[cluster]`): appended to `/metrics` by a node that
/// has one. The leases are this node's parts of each shared provider limit now (its
/// fallback shares while it holds no lease).
pub fn cluster_text(c: &crate::cluster::Shared, config: &Config) -> String {
    let mut o = Out {
        text: String::with_capacity(2048),
    };
    let st = c.status();
    let node = [("node", c.config.node.as_str())];
    let gauges: [(&str, &str, f64); 3] = [
        (
            "spate_cluster_connected",
            "1 while this node's last renewal reached Redis",
            f64::from(u8::from(st.connected)),
        ),
        (
            "spate_cluster_degraded",
            "1 while Redis cannot be reached: leases run out, then fallback shares apply",
            f64::from(u8::from(st.degraded_since_ms.is_some())),
        ),
        (
            "spate_cluster_name_taken",
            "1 while another live process holds this node's name (fallback shares apply)",
            f64::from(u8::from(st.name_taken)),
        ),
    ];
    for (name, help, v) in gauges {
        o.family(name, "gauge", help);
        o.sample(name, &node, v);
    }
    let counters: [(&str, &str, u64); 5] = [
        (
            "spate_cluster_renewals_total",
            "lease renewals Redis answered",
            st.renewals,
        ),
        (
            "spate_cluster_failures_total",
            "calls to Redis that failed",
            st.failures,
        ),
        (
            "spate_cluster_cuts_published_total",
            "throttle cuts this node told the others of",
            st.cuts_published,
        ),
        (
            "spate_cluster_cuts_followed_total",
            "other nodes' throttle cuts this node followed",
            st.cuts_followed,
        ),
        (
            "spate_cluster_redis_commands_total",
            "commands sent to Redis (renewals, publications, subscriptions, AUTH)",
            c.traffic
                .commands
                .load(std::sync::atomic::Ordering::Relaxed),
        ),
    ];
    for (name, help, v) in counters {
        o.family(name, "counter", help);
        o.sample(name, &node, v as f64);
    }
    o.family(
        "spate_cluster_redis_bytes_total",
        "counter",
        "bytes exchanged with Redis",
    );
    for (dir, v) in [("out", &c.traffic.bytes_out), ("in", &c.traffic.bytes_in)] {
        let v = v.load(std::sync::atomic::Ordering::Relaxed);
        o.sample(
            "spate_cluster_redis_bytes_total",
            &[("node", c.config.node.as_str()), ("direction", dir)],
            v as f64,
        );
    }
    o.family(
        "spate_cluster_cut_lag_seconds",
        "summary",
        "from another node's cut to a shard here following it (same-clock nodes)",
    );
    o.sample(
        "spate_cluster_cut_lag_seconds_sum",
        &node,
        st.cut_lag_ms_sum as f64 / 1000.0,
    );
    o.sample(
        "spate_cluster_cut_lag_seconds_count",
        &node,
        st.cuts_followed as f64,
    );
    o.family(
        "spate_cluster_cut_lag_seconds_max",
        "gauge",
        "the longest such lag so far",
    );
    o.sample(
        "spate_cluster_cut_lag_seconds_max",
        &node,
        st.cut_lag_ms_max as f64 / 1000.0,
    );
    let now = std::time::Instant::now();
    o.family(
        "spate_cluster_lease_rate",
        "gauge",
        "messages/s of a provider's shared rate this node may send now",
    );
    let mut conns = Vec::new();
    for name in config.providers.keys() {
        let t = crate::cluster::totals(config, name);
        let part = c.part(name, t, now);
        if let Some(r) = part.rate {
            o.sample(
                "spate_cluster_lease_rate",
                &[("node", c.config.node.as_str()), ("provider", name)],
                r,
            );
        }
        if let Some(n) = part.conns {
            conns.push((name, n));
        }
    }
    o.family(
        "spate_cluster_lease_connections",
        "gauge",
        "connections of a provider's shared limit this node may hold now",
    );
    for (name, n) in conns {
        o.sample(
            "spate_cluster_lease_connections",
            &[("node", c.config.node.as_str()), ("provider", name)],
            f64::from(n),
        );
    }
    // Every node's leases as this node last read them from Redis: the cluster at a glance
    // from any one node.
    let peers = c.peers();
    o.family(
        "spate_cluster_peer_lease_rate",
        "gauge",
        "messages/s of a provider's shared rate each live node holds (as last read from Redis)",
    );
    for p in &peers {
        if let Some(r) = p.rate {
            o.sample(
                "spate_cluster_peer_lease_rate",
                &[
                    ("node", c.config.node.as_str()),
                    ("peer", &p.node),
                    ("provider", &p.provider),
                ],
                r,
            );
        }
    }
    o.family(
        "spate_cluster_peer_lease_connections",
        "gauge",
        "connections of a provider's shared limit each live node holds (as last read from Redis)",
    );
    for p in &peers {
        if let Some(n) = p.connections {
            o.sample(
                "spate_cluster_peer_lease_connections",
                &[
                    ("node", c.config.node.as_str()),
                    ("peer", &p.node),
                    ("provider", &p.provider),
                ],
                f64::from(n),
            );
        }
    }
    o.text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        let mut s = String::new();
        escape_label("a\"b\\c\nd\te", &mut s);
        assert_eq!(s, "a\\\"b\\\\c\\nd e");
    }

    #[test]
    fn the_tail_folds_into_other() {
        let all: Vec<ScopeView> = (0..5)
            .map(|i| ScopeView {
                key: format!("site:{i}"),
                waiting: 10 - i,
                ..Default::default()
            })
            .collect();
        let top = top_scopes(all, 2);
        assert_eq!(top.len(), 3);
        assert_eq!(top[2].key, OTHER);
        assert_eq!(top[2].waiting, 8 + 7 + 6);
    }
}
