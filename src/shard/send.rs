//! The owner side: demand from homes, credit grants, prepared messages, and what connection
//! workers take and report. The workers themselves (connections, pacing waits) are the
//! shell's; everything they decide goes through here.

use super::*;
use crate::delivery::owner::{Refusal, ScopeLimits, Take};
use crate::delivery::policy::{classify, Verdict};
use crate::delivery::shares;
use crate::delivery::throttle::Change;
use crate::smtp::reply::{printable, Reply};

/// A scope's limits in the configuration in force. A provider's limits apply to each of its
/// scopes: one per egress source (`yahoo@mta1`) once sources exist, as receivers count them.
pub fn scope_limits(config: &Config, scope_key: &str) -> ScopeLimits {
    let base = crate::delivery::scope::split_key(scope_key).0;
    let provider = config.providers.get(base);
    let (connection_limit, max_per_connection, tls, controller) = match provider {
        Some(p) => (
            p.connection_limit,
            p.max_deliveries_per_connection,
            p.tls,
            p.controller,
        ),
        None => (
            config.delivery.site_connection_limit,
            crate::config::DEFAULT_MAX_DELIVERIES_PER_CONNECTION,
            config.delivery.tls,
            config.delivery.controller,
        ),
    };
    ScopeLimits {
        connection_limit,
        max_per_connection,
        tls,
        max_rate: configured_rate(config, base),
        controller,
        provider_rate: provider
            .and_then(|p| p.provider_max_message_rate)
            .map(|r| r.messages as f64 / r.per.as_secs_f64().max(1e-9)),
    }
}

/// This shard's share of a scope's limits: `granted` of its connections (never more than
/// the configuration in force allows). The rate is the scope's: a paced scope is held by one
/// shard at a time (`delivery::shares`).
pub fn share_limits(
    config: &Config,
    cluster: Option<&crate::cluster::Shared>,
    scope_key: &str,
    granted: u32,
    now: Instant,
) -> ScopeLimits {
    let full = super::cluster::leased(
        cluster,
        config,
        scope_key,
        scope_limits(config, scope_key),
        now,
    );
    ScopeLimits {
        connection_limit: granted.min(full.connection_limit),
        ..full
    }
}

/// A scope's limits as its coordinator splits them.
fn share_limit(
    config: &Config,
    cluster: Option<&crate::cluster::Shared>,
    scope_key: &str,
    now: Instant,
) -> shares::Limit {
    let full = super::cluster::leased(
        cluster,
        config,
        scope_key,
        scope_limits(config, scope_key),
        now,
    );
    let base = crate::delivery::scope::split_key(scope_key).0;
    shares::Limit {
        connections: full.connection_limit,
        // A scope at an egress source is paced too: its receiver counts that one address,
        // and one throttle (one shard at a time, the pace moving with the turn) learns its
        // rate; throttles on several shards pushing against one address's limit take turns
        // being cut and leave a tenth of it unused.
        paced: full.max_rate.is_some() || crate::delivery::scope::split_key(scope_key).1.is_some(),
        group: super::cluster::leased_group(
            cluster,
            config,
            scope_key,
            config
                .providers
                .get(base)
                .and_then(|p| p.provider_connection_limit),
            now,
        ),
    }
}

/// A provider's `max_message_rate` in messages per second.
fn configured_rate(config: &Config, provider: &str) -> Option<f64> {
    let r = config.providers.get(provider)?.max_message_rate?;
    Some(r.messages as f64 / r.per.as_secs_f64().max(1e-9))
}

/// What a connection worker holds, and will do with it should it leave (`Core::take`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// No connection.
    Nothing,
    /// A connection it closes.
    Closing,
    /// A connection it parks for any scope to reuse (`delivery::endpoints`).
    Parking,
}

impl<L: LogSink> Core<L> {
    /// A home's demand for `scope` changed.
    pub(super) fn on_demand(&mut self, scope: Scope, home: usize, count: u32) {
        let key = scope.key.clone();
        let limits = self.limits_of(&key);
        let now = self.clock.now();
        let preconnect = self
            .owner
            .demand(scope, limits, home, count, now, self.closing);
        if let Some(hosts) = preconnect {
            self.effects.push(Effect::SpawnWorker {
                scope: key.clone(),
                preconnect: Some(hosts),
            });
        }
        self.report_load(&key);
        self.grant(&key);
    }

    /// Tells `scope`'s coordinator whether this shard has recipients for it, when it has
    /// not heard so (a shard without a share asks for one this way).
    fn report_load(&mut self, scope: &str) {
        let busy = self.wants(scope);
        if let Some(report) = self.shares.load(scope, busy) {
            self.report_share(scope.to_string(), report);
        }
    }

    /// Sends `report` on `scope` to its coordinator (this shard, perhaps). A release down
    /// to no connection carries the scope's pace, for the shard whose turn comes next.
    pub(super) fn report_share(&mut self, scope: String, report: shares::Report) {
        let report = match report {
            shares::Report::Released { to: 0, pace: None } => shares::Report::Released {
                to: 0,
                pace: self.owner.pace(&scope),
            },
            other => other,
        };
        let to = shares::coordinator(&scope, self.shards);
        let shard = self.id;
        self.send(
            to,
            Msg::Share {
                scope,
                shard,
                report,
            },
        );
    }

    /// A lowered share waited for this shard's connections of `scope` to close: says so
    /// once they have.
    fn check_release(&mut self, scope: &str) {
        let holding = self.owner.holding(scope);
        if let Some(report) = self.shares.holding(scope, holding) {
            self.report_share(scope.to_string(), report);
        }
    }

    /// As the coordinator of `scope`: a shard's report, and the grants it changes.
    pub(super) fn on_share(&mut self, scope: String, shard: usize, report: shares::Report) {
        let limit = share_limit(
            &self.config,
            self.cluster.as_deref(),
            &scope,
            self.clock.now(),
        );
        let mut grants = Vec::new();
        self.ledger
            .report(&scope, shard, report, limit, self.clock.now(), &mut grants);
        self.send_grants(grants);
    }

    fn send_grants(&mut self, grants: Vec<shares::Grant>) {
        for g in grants {
            let msg = Msg::Granted {
                scope: g.scope,
                connections: g.connections,
                returned: g.returned,
                pace: g.pace,
            };
            self.send(g.shard, msg);
        }
    }

    /// This shard's share of `scope` changed: the owner takes the new limits at once, a
    /// connection opens if the scope waited for one, and credit goes out where there is
    /// room. A lowered share is released once the connections beyond it have closed (its
    /// workers' and those they parked).
    pub(super) fn on_granted(
        &mut self,
        scope: String,
        connections: u32,
        returned: bool,
        pace: Option<shares::Pace>,
    ) {
        let holding = self.owner.holding(&scope);
        let (granted, release) = self.shares.on_grant(&scope, connections, returned, holding);
        if let Some(report) = release {
            self.report_share(scope.clone(), report);
        } else if connections < holding && !returned {
            // Lowered below what is open: idle workers beyond it leave now, not when their
            // idle timer next asks, and the connections its workers parked close.
            self.effects.push(Effect::WakeWorkers(scope.clone()));
            self.effects.push(Effect::CloseParkedOf(scope.clone()));
        }
        match granted {
            shares::Granted::Set(n) => {
                if let Some(pace) = pace {
                    self.owner.adopt_pace(&scope, pace);
                }
                let now = self.clock.now();
                let limits = share_limits(&self.config, self.cluster.as_deref(), &scope, n, now);
                let now = self.clock.now();
                let (preconnect, spawn) = self.owner.relimit(&scope, limits, now, self.closing);
                for _ in 0..spawn {
                    self.effects.push(Effect::SpawnWorker {
                        scope: scope.clone(),
                        preconnect: None,
                    });
                }
                if let Some(hosts) = preconnect {
                    self.effects.push(Effect::SpawnWorker {
                        scope: scope.clone(),
                        preconnect: Some(hosts),
                    });
                }
                self.grant(&scope);
                self.serve_waiting();
            }
            // Forgotten here and at the coordinator; recipients that came since ask again.
            shares::Granted::Returned => self.report_load(&scope),
            shares::Granted::Ignored => {}
        }
    }

    /// `host`'s opportunistic TLS handshake failed: it gets plaintext from this shard and,
    /// once they hear, from the others (each sends over connections of its own).
    pub fn tls_broken(&mut self, host: &str) {
        let now = self.clock.now();
        self.owner.mark_tls_broken(host, now);
        let me = self.id;
        for to in (0..self.shards).filter(|&s| s != me) {
            let host = host.to_string();
            self.send(to, Msg::TlsBroken { host });
        }
    }

    /// Every `SHARE_TICK`: the coordinators of the scopes this shard no longer has
    /// recipients for hear so (another shard may need the room), and this shard's own
    /// coordinator moves turns and applies reloaded limits. Only the scopes the owner
    /// touched since are looked at, so a tick costs what changed, not every scope wanted
    /// (`report_idle_wanted` is the full pass, now and then).
    pub(super) fn share_tick(&mut self, now: Instant) {
        for key in self.owner.take_touched() {
            if !self.wants(&key) {
                self.report_load(&key);
            }
        }
        let mut grants = Vec::new();
        let config = &self.config;
        let cluster = self.cluster.as_deref();
        self.ledger.tick(
            |key| share_limit(config, cluster, key, now),
            now,
            &mut grants,
        );
        self.send_grants(grants);
    }

    /// Every scope this shard wants but no longer has recipients for: its coordinator hears
    /// so. `share_tick` does the same for the scopes touched since the last tick; this
    /// full pass, every `SCOPE_SWEEP_INTERVAL`, is what makes a missed touch cost seconds,
    /// not a share held for good.
    pub(super) fn report_idle_wanted(&mut self) {
        let idle: Vec<String> = self
            .shares
            .wanted()
            .filter(|key| !self.wants(key))
            .map(str::to_string)
            .collect();
        for key in idle {
            self.report_load(&key);
        }
    }

    /// Whether this shard wants a share of `scope`: it has recipients for it here or on
    /// their way. For a paced scope (one shard at a time) only mail to send counts: workers
    /// left with nothing to send must not keep the turn from a shard that has some (they
    /// held it for the rest of the turn, up to `PACED_TURN`, sending nothing).
    fn wants(&self, scope: &str) -> bool {
        if share_limit(
            &self.config,
            self.cluster.as_deref(),
            scope,
            self.clock.now(),
        )
        .paced
        {
            self.owner.has_mail(scope)
        } else {
            self.owner.is_busy(scope)
        }
    }

    /// `key`'s limits here: this shard's share of the configuration's, within this node's
    /// cluster lease.
    pub(super) fn limits_of(&self, key: &str) -> ScopeLimits {
        share_limits(
            &self.config,
            self.cluster.as_deref(),
            key,
            self.shares.granted(key),
            self.clock.now(),
        )
    }

    pub(super) fn grant_scope(&mut self, scope: &str) {
        self.grant(scope);
    }

    /// Hands out `scope`'s credit where its window has room, round-robin over homes.
    fn grant(&mut self, scope: &str) {
        if self.closing {
            // Draining: nothing new starts; what is promised comes back or waits.
            return;
        }
        let mut credits = Vec::new();
        self.owner.grant(scope, &mut credits);
        for (home, n) in credits {
            let scope = scope.to_string();
            let owner = self.id;
            self.send(home, Msg::Credit { scope, n, owner });
        }
    }

    /// Room opened in the owner's shared window or a worker left: the scopes waiting in line
    /// for room get credit, those waiting for a worker get one.
    pub(super) fn serve_waiting(&mut self) {
        if self.closing {
            return;
        }
        let mut credits = Vec::new();
        self.owner.grant_waiting(&mut credits);
        for (scope, home, n) in credits {
            let owner = self.id;
            self.send(home, Msg::Credit { scope, n, owner });
        }
        for scope in self.owner.spawn_starved() {
            self.effects.push(Effect::SpawnWorker {
                scope,
                preconnect: None,
            });
        }
        let evict = self.owner.parked_to_evict();
        if evict > 0 {
            self.effects.push(Effect::CloseParked(evict));
        }
    }

    /// Rendered messages arrived from a home.
    pub(super) fn on_prepared(
        &mut self,
        scope: String,
        home: usize,
        granted: u32,
        msgs: Vec<Prepared>,
    ) {
        let now = self.clock.now();
        // Credit is out for a scope until its messages arrive, and a scope with credit out
        // is never forgotten: there is always one to take them. Should that ever fail, say
        // so rather than lose track silently.
        let spawn = match self.owner.prepared(&scope, home, granted, msgs, now) {
            Ok(spawn) => spawn,
            Err(msgs) => {
                self.effects.push(Effect::Bug(format!(
                    "shard {}: {} messages arrived for scope {} after it was forgotten (a bug); their recipients stay in flight until a restart",
                    self.id,
                    msgs.len(),
                    printable(&scope)
                )));
                return;
            }
        };
        for _ in 0..spawn {
            self.effects.push(Effect::SpawnWorker {
                scope: scope.clone(),
                preconnect: None,
            });
        }
        self.effects.push(Effect::WakeWorkers(scope.clone()));
        // Room handed back goes to the scopes in line first, as in `take`.
        self.serve_waiting();
        self.grant(&scope);
    }

    /// A worker of `scope` asks for its next message (`Owner::take`). `stop`: the engine
    /// stops or failed; `idle`: the worker has had nothing to send for long enough to close.
    /// A message taken makes room in the window: more credit goes out.
    /// `held`: what becomes of the worker's connection if it leaves. One it closes counts
    /// against the budget until the shell says it is closed (`connection_closed`); one it
    /// parks, until a worker takes it (`unparked`) or it closes (`parked_closing`).
    pub fn take(&mut self, scope: &str, stop: bool, idle: bool, held: Held) -> Take<Prepared> {
        let stop = stop || self.closing;
        let next = self.owner.take(scope, self.clock.now(), stop, idle);
        match next {
            // The room this message leaves refills this scope first while its queue here
            // runs dry (so its connection keeps working rather than closing for want of a
            // message); while it still has messages waiting, the room goes to the scopes in
            // line first, and this scope, if it wants more, joins the line behind them.
            Take::Send { .. } if self.owner.has_ready(scope) => {
                self.serve_waiting();
                self.grant(scope);
            }
            Take::Send { .. } => {
                self.grant(scope);
                self.serve_waiting();
            }
            Take::Exit if held == Held::Closing => self.owner.connection_closing(scope),
            Take::Exit => {
                if held == Held::Parking {
                    self.owner.park(scope);
                }
                self.check_release(scope);
                self.serve_waiting();
            }
            Take::Wait => {}
        }
        next
    }

    /// A worker of `scope` with a transaction in flight asks for a message to pipeline
    /// behind it (`Owner::take_now`); room it leaves in the window goes out as in `take`.
    pub fn take_now(&mut self, scope: &str) -> Option<Prepared> {
        if self.closing {
            return None;
        }
        let msg = self.owner.take_now(scope, self.clock.now())?;
        if self.owner.has_ready(scope) {
            self.serve_waiting();
            self.grant(scope);
        } else {
            self.grant(scope);
            self.serve_waiting();
        }
        Some(msg)
    }

    /// A worker of `scope` that left has closed its connection: if the scope's messages
    /// waited for that, a worker starts for them; otherwise the slot goes to a scope in line.
    pub fn connection_closed(&mut self, scope: &str) {
        let spawn = self.owner.connection_closed(scope);
        self.spawn_for_held(scope, spawn);
        self.check_release(scope);
        self.serve_waiting();
    }

    /// A worker took a connection `parked_by` a scope's worker instead of opening one: the
    /// budget has the room its own connection would have taken, and the scope that parked
    /// it no longer counts it.
    pub fn unparked(&mut self, parked_by: Option<&str>) {
        let spawn = self.owner.unpark(parked_by);
        if let Some(scope) = parked_by {
            self.spawn_for_held(scope, spawn);
            self.check_release(scope);
        }
        self.serve_waiting();
    }

    /// A worker counted in for `scope`'s messages that waited for a held connection to go.
    fn spawn_for_held(&mut self, scope: &str, spawn: bool) {
        if spawn {
            self.effects.push(Effect::SpawnWorker {
                scope: scope.to_string(),
                preconnect: None,
            });
        }
    }

    /// A connection `parked_by` a scope's worker is being closed (idle too long, the budget
    /// needs its room, its scope's share went down, or the shard stops); `parked_closed`
    /// when it is.
    pub fn parked_closing(&mut self, parked_by: Option<&str>) {
        self.owner.parked_closing(parked_by);
    }

    /// A parked connection taken out to close is closed: its slot goes to a scope in line,
    /// and the scope that parked it may release its share.
    pub fn parked_closed(&mut self, parked_by: Option<&str>) {
        let spawn = self.owner.parked_closed(parked_by);
        if let Some(scope) = parked_by {
            self.spawn_for_held(scope, spawn);
            self.check_release(scope);
        }
        self.serve_waiting();
    }

    /// True when `scope` holds more connections here than its share allows: a worker that
    /// leaves now closes its connection rather than park it.
    pub fn over_share(&self, scope: &str) -> bool {
        self.owner.over_cap(scope)
    }

    /// A worker of `scope` sent `msg` (paced at `paced_at`) over a connection to `mx` at
    /// `ip` and got `results`, one per recipient: the throttle learns from them and the
    /// recipients' home gets them.
    pub fn sent(
        &mut self,
        scope: &str,
        msg: &Prepared,
        results: Vec<RcptResult>,
        paced_at: Instant,
        via: (&str, &str, &str),
    ) {
        self.throttle_results(scope, &results, paced_at);
        let results = results.into_iter().map(ItemResult::Smtp).collect();
        self.outcomes(scope, msg, results, via);
    }

    /// A worker of `scope` could not connect for `msg`: `results` is what that means for
    /// each recipient. `refused` is the 421 a host answered at the greeting, if one did: the
    /// receiver takes no more connections than are open, so the worker leaves (true) and the
    /// scope holds at that count, unless it is the scope's last worker.
    pub fn connect_failed(
        &mut self,
        scope: &str,
        msg: &Prepared,
        results: Vec<ItemResult>,
        refused: Option<&Reply>,
    ) -> bool {
        self.outcomes(scope, msg, results, ("", "", ""));
        let Some(reply) = refused else {
            return false;
        };
        match self.owner.connection_refused(scope, self.clock.now()) {
            Refusal::Stay => false,
            Refusal::Leave { lowered_to } => {
                self.check_release(scope);
                if let Some(cap) = lowered_to {
                    tracing::warn!(
                        "{scope}: connection refused ({}); holding at {cap} connections",
                        printable(&reply.to_log_string()),
                    );
                }
                self.serve_waiting();
                true
            }
        }
    }

    /// One outcome per recipient of `msg`, `results` aligned with `msg.rcpts`, to its home.
    fn outcomes(
        &mut self,
        scope: &str,
        msg: &Prepared,
        results: Vec<ItemResult>,
        (mx, ip, tls): (&str, &str, &str),
    ) {
        let items = msg
            .rcpts
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
                warm_reserved: msg.warm_reserved,
            })
            .collect();
        let scope = scope.to_string();
        self.send(msg.home, Msg::Outcomes { scope, items });
    }

    /// Feeds one transaction's results to its scope's throttle and says when it changes
    /// course.
    fn throttle_results(&mut self, key: &str, results: &[RcptResult], paced_at: Instant) {
        let mut accepted = 0;
        let mut pushback = None;
        let mut failure = None;
        for r in results {
            match r {
                RcptResult::Reply(reply) if reply.code / 100 == 2 => accepted += 1,
                RcptResult::ConnectionLost(_) => {}
                other => {
                    let o = classify(other);
                    if o.pushback && pushback.is_none() {
                        pushback = Some(o.response);
                    } else if o.verdict == Verdict::Deferred && failure.is_none() {
                        failure = Some(o.response);
                    }
                }
            }
        }
        let before = self.owner.rate(key);
        let change = self.owner.record_results(
            key,
            accepted,
            pushback.is_some(),
            paced_at,
            self.clock.now(),
        );
        let failure = pushback.as_deref().or(failure.as_deref());
        self.owner.note(
            key,
            self.clock.unix_ms(),
            failure,
            pushback.is_some(),
            change,
        );
        if let Change::Decreased(rate) = change {
            self.cluster_cut(key, before, rate);
        }
        match change {
            Change::Decreased(rate) => tracing::warn!(
                "{key}: receiver pushed back ({}); easing off to {rate:.0} messages/s",
                printable(&pushback.unwrap_or_default())
            ),
            Change::Cleared => tracing::info!(
                "{key}: no pushback for {} s; adaptive limit lifted",
                scope_limits(&self.config, key).controller.quiet.as_secs()
            ),
            Change::None => {}
        }
    }
}
