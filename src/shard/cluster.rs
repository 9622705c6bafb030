//! The shard's side of the cluster (`crate::cluster`): its owner's scopes take this node's
//! leases of their providers' shared limits, follow the other nodes' throttle cuts, and
//! report how many recipients wait for each shared provider.

use super::*;
use crate::cluster::{totals, Shared, Totals};
use crate::delivery::owner::ScopeLimits;
use crate::delivery::scope::split_key;

/// How often a core tells the cluster's thread what waits here (it renews every
/// `cluster::TICK`).
const REPORT_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// `limits` of scope `key` bounded by this node's part of its provider's shared limits: the
/// provider's own scope takes the rate and connections; a scope at an egress source keeps
/// its source's limits and takes the provider-wide pace (`provider_rate`) and connections.
pub fn leased(
    cluster: Option<&Shared>,
    config: &Config,
    key: &str,
    mut limits: ScopeLimits,
    now: Instant,
) -> ScopeLimits {
    let Some(c) = cluster else {
        return limits;
    };
    let (base, source) = split_key(key);
    let t = totals(config, base);
    if t == Totals::default() {
        return limits;
    }
    let part = c.part(base, t, now);
    match source {
        None => {
            if part.rate.is_some() {
                limits.max_rate = part.rate;
            }
            if let Some(n) = part.conns {
                limits.connection_limit = limits.connection_limit.min(n);
            }
        }
        Some(_) => {
            if part.rate.is_some() {
                limits.provider_rate = part.rate;
            }
        }
    }
    limits
}

/// This node's part of the provider-wide connections of a scope at an egress source (the
/// `group` its shards' shares are held within), if the cluster shares them.
pub fn leased_group(
    cluster: Option<&Shared>,
    config: &Config,
    key: &str,
    group: Option<u32>,
    now: Instant,
) -> Option<u32> {
    let (Some(c), (base, Some(_))) = (cluster, split_key(key)) else {
        return group;
    };
    let t = totals(config, base);
    match c.part(base, t, now).conns {
        Some(n) => Some(group.map_or(n, |g| g.min(n))),
        None => group,
    }
}

impl<L: LogSink> Core<L> {
    /// Every tick: new leases re-limit the owner's scopes of shared providers; the other
    /// nodes' cuts are followed; now and then, what waits here is reported.
    pub(super) fn cluster_tick(&mut self, now: Instant) {
        let Some(cluster) = self.cluster.clone() else {
            return;
        };
        let generation = cluster.generation();
        let lapsed = self.cluster_lapse.is_some_and(|t| now >= t);
        if generation != self.cluster_generation_seen || lapsed {
            self.cluster_generation_seen = generation;
            self.cluster_relimit(now);
            self.cluster_lapse = cluster.next_lapse(now);
        }
        let (cuts, last) = cluster.cuts_since(self.cluster_cut_seen);
        self.cluster_cut_seen = last;
        for cut in cuts {
            let keys = self.shared_keys(Some(&cut.provider));
            let mut followed = false;
            for key in keys {
                if let crate::delivery::throttle::Change::Decreased(rate) =
                    self.owner.follow_cut(&key, cut.factor, now)
                {
                    followed = true;
                    tracing::info!(
                        "{key}: node {} was pushed back; easing off here too, to {rate:.0} messages/s",
                        cut.node
                    );
                }
            }
            if followed {
                let lag = self.clock.unix_ms().saturating_sub(cut.at_ms);
                cluster.followed_cut(lag);
            }
        }
        if now.duration_since(self.last_cluster_report) >= REPORT_EVERY {
            self.last_cluster_report = now;
            let mut wants: HashMap<String, u64> = HashMap::new();
            for (key, n) in self.owner.loads() {
                let base = split_key(key).0;
                if n > 0 && totals(&self.config, base) != Totals::default() {
                    *wants.entry(base.to_string()).or_default() += n;
                }
            }
            cluster.report_wants(self.id, wants);
        }
    }

    /// The owner's scopes of shared providers (of `provider` only, if given).
    fn shared_keys(&self, provider: Option<&str>) -> Vec<String> {
        self.owner
            .loads()
            .map(|(k, _)| k)
            .filter(|k| {
                let base = split_key(k).0;
                provider.is_none_or(|p| p == base)
                    && totals(&self.config, base) != Totals::default()
            })
            .map(str::to_string)
            .collect()
    }

    /// This node's leases changed: each scope of a shared provider takes its new limits,
    /// opens connections or hands out credit they allow, and its waiting workers look again
    /// (a rate that was nothing may be something now).
    fn cluster_relimit(&mut self, now: Instant) {
        for key in self.shared_keys(None) {
            let limits = self.limits_of(&key);
            let (preconnect, spawn) = self.owner.relimit(&key, limits, now, self.closing);
            for _ in 0..spawn {
                self.effects.push(Effect::SpawnWorker {
                    scope: key.clone(),
                    preconnect: None,
                });
            }
            if let Some(hosts) = preconnect {
                self.effects.push(Effect::SpawnWorker {
                    scope: key.clone(),
                    preconnect: Some(hosts),
                });
            }
            self.effects.push(Effect::WakeWorkers(key.clone()));
            self.grant_scope(&key);
        }
        self.serve_waiting();
    }

    /// A throttle cut here on `key`, from `before` to `after` messages a second: the other
    /// nodes follow when the provider's limits are shared.
    pub(super) fn cluster_cut(&mut self, key: &str, before: Option<f64>, after: f64) {
        let Some(cluster) = self.cluster.as_ref() else {
            return;
        };
        let base = split_key(key).0;
        if totals(&self.config, base) == Totals::default() {
            return;
        }
        let cut = scope_limits(&self.config, key).controller.cut;
        let factor = match before {
            Some(b) if b > 0.0 => after / b,
            _ => crate::delivery::throttle::first_cut(cut),
        };
        cluster.publish_cut(base, factor);
    }
}
