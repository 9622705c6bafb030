//! The admin API's routes (`[admin] listen`): `/metrics`, `/api/v1/...`, the status page at
//! `/`, served on the `admin::server` threads from the shards' published snapshots and, for
//! what only a shard knows (`queue why`, `queue summary`, `retry`), calls put to every shard
//! (`admin::AdminShared::ask_all`).

mod intake;
mod queue;

pub use intake::entries_json;

use super::admin::{Audit, DomainRow, ShardAnswer, ShardCall};
use super::*;
use crate::admin::holds::{Holds, Rule, Target};
use crate::admin::http::{Method, Request, Response};
use crate::admin::server::Handler;
use crate::admin::view::{self, age_text, Constraint, ScopeView};
use serde_json::{json, Value};
use std::collections::{BTreeMap, VecDeque};
use std::io::Read;
use std::net::SocketAddr;

/// The status page: one file, no build step.
const PAGE: &str = include_str!("../../admin/page.html");

/// A JSON request body may take this much.
const JSON_BODY_MAX: u64 = 64 * 1024;

/// Seconds of history the page's sparklines show.
pub const HISTORY_SECONDS: usize = 300;

/// Per scope (the `[admin] metrics_scopes` busiest), one sample a second: (Unix s, Delivery
/// records, TransientFailure records, waiting).
#[derive(Default)]
struct History {
    last_unix_s: u64,
    scopes: BTreeMap<String, VecDeque<(u64, u64, u64, u64)>>,
}

pub(super) struct Api {
    shared: Arc<Shared>,
    started_unix_ms: u64,
    history: Mutex<History>,
    /// Names of injected batches, unique per engine run.
    injected: AtomicU64,
    /// Held while a transfer from another node is put in the spool and queued.
    transferring: Mutex<()>,
}

impl Api {
    pub(super) fn new(shared: Arc<Shared>) -> Api {
        Api {
            started_unix_ms: shared.clock.unix_ms(),
            shared,
            history: Mutex::new(History::default()),
            injected: AtomicU64::new(0),
            transferring: Mutex::new(()),
        }
    }

    fn now(&self) -> u64 {
        self.shared.clock.unix_ms()
    }

    /// Deliveries a second of `scope` over the last few samples, if it has any.
    fn achieved(&self, scope: &str) -> Option<f64> {
        let h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let q = h.scopes.get(scope)?;
        let n = q.len().min(ACHIEVED_SAMPLES + 1);
        if n < 2 {
            return None;
        }
        let (a, b) = (q[q.len() - n], q[q.len() - 1]);
        Some(b.1.saturating_sub(a.1) as f64 / (b.0 - a.0).max(1) as f64)
    }

    /// `v` with its achieved rate.
    /// A view with what the API adds: its delivered rate lately and a reply rule's firing.
    fn with_achieved(&self, mut v: ScopeView) -> ScopeView {
        v.achieved = self.achieved(&v.key);
        v.rule = self.rules_seen().on(&v.key);
        v
    }

    fn rules_seen(&self) -> crate::admin::metrics::RulesSeen {
        crate::admin::metrics::RulesSeen {
            firings: self.shared.rules.snapshot().1,
            fired: self.shared.rules.fired(),
            now_unix_ms: self.now(),
        }
    }
}

/// Seconds of samples the achieved rate is taken over.
const ACHIEVED_SAMPLES: usize = 3;

impl Handler for Api {
    fn handle(&self, req: &Request, body: &mut dyn Read, peer: SocketAddr) -> Response {
        let config = self.shared.config();
        // Node to node: the cluster's secret, from whichever address the other node has.
        if req.path == "/api/v1/cluster/transfer" {
            if req.method != Method::Post {
                let mut r = Response::error(405, "method not allowed");
                r.fields.push("Allow: POST".into());
                return r;
            }
            return self.transfer(&config, req, body, peer);
        }
        // Without a token, loopback is the only protection: a web page the operator visits
        // must not reach the API through the browser (a form posting a bounce, a name of its
        // own resolving to 127.0.0.1). A token it cannot send.
        if config.admin.token.is_none() && req.from_elsewhere() {
            return Response::error(
                403,
                "requests through another site (Host or Origin not this loopback address) are refused",
            );
        }
        // The page itself holds no data: it asks the API, with the token, for everything.
        let public = req.method != Method::Post && (req.path == "/" || req.path == "/index.html");
        if !public && !config.admin.authorized(req.authorization.as_deref()) {
            let mut r = Response::error(401, "a bearer token is required ([admin] token)");
            r.fields.push("WWW-Authenticate: Bearer".into());
            return r;
        }
        let get = matches!(req.method, Method::Get | Method::Head);
        let post = req.method == Method::Post;
        match req.path.as_str() {
            "/" | "/index.html" if get => Response::html(200, PAGE),
            "/metrics" if get => {
                let statuses = self.shared.status();
                let text = crate::admin::metrics::render(
                    &statuses,
                    &config,
                    &self.shared.admin.holds(),
                    &self.shared.counters,
                    &|key| self.achieved(key),
                    &self.rules_seen(),
                    &self.warmup_status(),
                );
                let mut text = text;
                if let Some(c) = &self.shared.cluster {
                    text.push_str(&crate::admin::metrics::cluster_text(c, &config));
                }
                Response::new(200, crate::admin::metrics::CONTENT_TYPE, text)
            }
            "/api/v1/status" if get => Response::json(200, self.status(&config).to_string()),
            "/api/v1/summary" if get => self.summary(&config),
            "/api/v1/holds" if get => Response::json(
                200,
                serde_json::to_string(&*self.shared.admin.holds()).unwrap_or_default(),
            ),
            "/api/v1/why" if get => match req.query_value("target") {
                Some(t) => self.why(&config, t.trim()),
                None => Response::error(400, "target= is missing (a recipient or a domain)"),
            },
            "/api/v1/suspend" | "/api/v1/resume" | "/api/v1/bounce" | "/api/v1/retry" if post => {
                let action = &req.path["/api/v1/".len()..];
                match read_json(req, body) {
                    Ok(v) => self.act(&config, action, &v, peer),
                    Err(r) => r,
                }
            }
            "/api/v1/inject" if post => self.inject(&config, req, body, peer),
            "/api/v1/rules" if get => Response::json(200, self.rules_json(&config).to_string()),
            "/api/v1/warmup" if get => Response::json(200, self.warmup_json().to_string()),
            "/api/v1/rules/lift" if post => match read_json(req, body) {
                Ok(v) => self.lift(&config, &v, peer),
                Err(r) => r,
            },
            "/api/v1/suppression/add" | "/api/v1/suppression/remove" if post => {
                match read_json(req, body) {
                    Ok(v) => self.suppression_change(
                        &config,
                        &req.path["/api/v1/suppression/".len()..],
                        &v,
                        peer,
                    ),
                    Err(r) => r,
                }
            }
            "/api/v1/suppression/check" if get => {
                let Some(address) = req.query_value("address") else {
                    return Response::error(400, "address= is missing");
                };
                let tenant = req.query_value("tenant").unwrap_or_default();
                let mut reader = self.shared.suppressions.reader();
                let today = crate::suppression::day_of(self.now());
                let hit = crate::address::parse_address(&address)
                    .ok()
                    .and_then(|a| reader.check(&a.to_addr_string(), &tenant, today));
                Response::json(
                    200,
                    json!({"address": address, "tenant": tenant, "suppressed": hit.is_some(),
                           "why": hit.map(|h| h.to_string())})
                    .to_string(),
                )
            }
            "/api/v1/suppression/list" if get => {
                let tenant = req.query_value("tenant");
                match crate::suppression::manage::list(&config, tenant.as_deref(), self.now()) {
                    Ok(entries) => Response::json(200, entries_json(&entries).to_string()),
                    Err(e) => Response::error(500, &e),
                }
            }
            "/"
            | "/index.html"
            | "/metrics"
            | "/api/v1/status"
            | "/api/v1/summary"
            | "/api/v1/holds"
            | "/api/v1/why"
            | "/api/v1/suspend"
            | "/api/v1/resume"
            | "/api/v1/bounce"
            | "/api/v1/retry"
            | "/api/v1/inject"
            | "/api/v1/rules"
            | "/api/v1/rules/lift"
            | "/api/v1/warmup"
            | "/api/v1/suppression/add"
            | "/api/v1/suppression/remove"
            | "/api/v1/suppression/check"
            | "/api/v1/suppression/list" => {
                let mut r = Response::error(405, "method not allowed");
                r.fields.push(format!(
                    "Allow: {}",
                    if post { "GET, HEAD" } else { "POST" }
                ));
                r
            }
            _ => Response::error(404, "no such endpoint"),
        }
    }

    /// Once a second: a sample for the sparklines, and old bounces dropped.
    fn tick(&self) {
        let now_s = self.now() / 1000;
        let mut h = self.history.lock().unwrap_or_else(|e| e.into_inner());
        if now_s <= h.last_unix_s {
            return;
        }
        let first = h.last_unix_s == 0;
        h.last_unix_s = now_s;
        let config = self.shared.config();
        let statuses = self.shared.status();
        let scopes = crate::admin::metrics::top_scopes(
            view::scopes(&statuses, &config),
            config.admin.metrics_scopes,
        );
        for v in &scopes {
            let q = h.scopes.entry(v.key.clone()).or_default();
            q.push_back((
                now_s,
                v.counts.delivery,
                v.counts.transient_failure,
                v.waiting,
            ));
            while q.len() > HISTORY_SECONDS + 1 {
                q.pop_front();
            }
        }
        // Scopes gone from the top for the whole window are forgotten.
        h.scopes.retain(|_, q| {
            q.back()
                .is_some_and(|s| now_s - s.0 <= HISTORY_SECONDS as u64)
        });
        drop(h);
        if first || now_s % 60 == 0 {
            self.shared.admin.expire_bounces(&config, self.now());
        }
    }
}

fn read_json(req: &Request, body: &mut dyn Read) -> Result<Value, Response> {
    if req.content_length > JSON_BODY_MAX {
        return Err(Response::error(413, "a JSON body of at most 64 KiB"));
    }
    let mut buf = Vec::with_capacity(req.content_length as usize);
    body.take(JSON_BODY_MAX)
        .read_to_end(&mut buf)
        .map_err(|e| Response::error(400, &format!("reading the body: {e}")))?;
    if buf.is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_slice(&buf)
        .map_err(|e| Response::error(400, &format!("the body is not JSON: {e}")))
}

/// A scope as the API shows it.
fn scope_json(
    v: &ScopeView,
    holds: &Holds,
    now: u64,
    history: Option<&VecDeque<(u64, u64, u64, u64)>>,
) -> Value {
    let c = view::scope_constraint(v, holds);
    let (delivered_per_s, deferred_per_s) = history.map(per_second).unwrap_or_default();
    json!({
        "scope": v.key,
        "waiting": v.waiting,
        "connections": v.workers + v.parked + v.closing,
        "connection_cap": v.connection_cap,
        "connection_limit": v.connection_limit,
        "max_rate": v.max_rate,
        "rate": v.rate,
        "throttled": v.adaptive_limit.is_some(),
        "throttled_since": v.notes.throttled_since,
        "pushbacks": v.pushbacks,
        "connections_refused": v.notes.refused,
        "delivered": v.counts.delivery,
        "deferred": v.counts.transient_failure,
        "bounced": v.counts.bounce(),
        "expired": v.counts.expiration,
        "last_failure": v.notes.last_failure.as_ref().map(|f| json!({"at": f.0, "reply": f.1})),
        "last_pushback": v.notes.last_pushback.as_ref().map(|f| json!({"at": f.0, "reply": f.1})),
        "constraint": c.kind(),
        "why": c.text(now),
        "delivered_per_s": delivered_per_s,
        "deferred_per_s": deferred_per_s,
    })
}

/// Deliveries and deferrals a second, from consecutive samples.
/// Each over the `ACHIEVED_SAMPLES` seconds before it: the shards publish their counts once
/// a second and the samples are taken once a second, at phases of their own, so a one-second
/// difference holds zero or two publications as often as one.
fn per_second(q: &VecDeque<(u64, u64, u64, u64)>) -> (Vec<u64>, Vec<u64>) {
    let mut d = Vec::with_capacity(q.len());
    let mut f = Vec::with_capacity(q.len());
    for i in 1..q.len() {
        let (a, b) = (q[i.saturating_sub(ACHIEVED_SAMPLES)], q[i]);
        let secs = (b.0 - a.0).max(1);
        d.push(b.1.saturating_sub(a.1) / secs);
        f.push(b.2.saturating_sub(a.2) / secs);
    }
    (d, f)
}

fn counts_json(c: &crate::admin::counts::EventCounts) -> Value {
    json!({
        "received": c.reception,
        "delivered": c.delivery,
        "deferred": c.transient_failure,
        "bounced": c.bounce(),
        "expired": c.expiration,
        "rejected": c.rejected,
    })
}

impl Api {
    fn status(&self, config: &Config) -> Value {
        let statuses = self.shared.status();
        let holds = self.shared.admin.holds();
        let now = self.now();
        let totals = view::totals(&statuses);
        let scopes = crate::admin::metrics::top_scopes(
            view::scopes(&statuses, config),
            config.admin.metrics_scopes,
        );
        let scopes: Vec<ScopeView> = scopes.into_iter().map(|v| self.with_achieved(v)).collect();
        let history = self.history.lock().unwrap_or_else(|e| e.into_inner());
        let scopes: Vec<Value> = scopes
            .iter()
            .map(|v| scope_json(v, &holds, now, history.scopes.get(&v.key)))
            .collect();
        drop(history);
        let campaigns: Vec<Value> = view::campaigns(&statuses)
            .iter()
            .take(crate::shard::STATUS_CAMPAIGNS_MAX)
            .map(|c| {
                let mut v = counts_json(&c.counts);
                v["campaign"] = json!(c.campaign);
                v["tenant"] = json!(c.tenant);
                v["queued"] = json!(c.queued);
                v
            })
            .collect();
        let mut t = counts_json(&totals.counts);
        for (k, n) in [
            ("queued", totals.live_recipients),
            ("in_flight", totals.in_flight),
            ("ready", totals.home.ready),
            ("deferred_now", totals.home.deferred),
            ("resolving", totals.home.resolving),
            ("pending", totals.home.pending),
            ("held", totals.home.held),
            ("segments", totals.segments),
            ("segment_bytes", totals.segment_bytes),
        ] {
            t[k] = json!(n);
        }
        json!({
            "now": now,
            "started": self.started_unix_ms,
            "shards": config.engine.shards,
            "shards_reporting": statuses.len(),
            "stopping": self.shared.stopping(),
            "totals": t,
            "scopes": scopes,
            "campaigns": campaigns,
            "holds": &*holds,
            "rules": self.rules_json(config)["firings"].clone(),
            "warmup": self.warmup_json()["sources"].clone(),
            "cluster": self.shared.cluster.as_ref().map(|c| c.status_json(config)),
        })
    }

    /// Every warming source at every provider, today.
    fn warmup_status(&self) -> Vec<crate::delivery::warmup::WarmStatus> {
        let day = crate::gateway::limits::utc_day(self.now());
        self.shared.warmup.status(day)
    }

    fn warmup_json(&self) -> Value {
        let day = crate::gateway::limits::utc_day(self.now());
        json!({
            "day": crate::config::date_text(day),
            "sources": self.warmup_status(),
        })
    }

    /// The reply rules configured, how often each fired, and the firings in force.
    fn rules_json(&self, config: &Config) -> Value {
        let seen = self.rules_seen();
        let now = seen.now_unix_ms;
        let mut firings: Vec<&crate::delivery::rules::Firing> =
            seen.firings.by_scope.values().collect();
        firings.sort_by(|a, b| a.scope.cmp(&b.scope));
        json!({
            "rules": config.rules.iter().map(|r| json!({
                "name": r.name,
                "match": r.pattern.as_str(),
                "providers": r.providers,
                "threshold": r.threshold,
                "period_s": r.period.as_secs(),
                "action": r.action.kind(),
                "duration_s": r.duration.as_secs(),
                "ramp_s": r.ramp.as_secs(),
                "shipped": r.shipped,
                "fired": seen.fired.get(&r.name).copied().unwrap_or(0),
            })).collect::<Vec<_>>(),
            "firings": firings.iter().map(|f| json!({
                "rule": f.rule,
                "scope": f.scope,
                "action": f.action.text(),
                "since": f.since_unix_ms,
                "until": f.until_unix_ms,
                "in_force": f.active(now),
                "back": f.back(now),
                "reply": f.reply,
            })).collect::<Vec<_>>(),
        })
    }

    /// Ends a firing on a scope now (its ramp back starts).
    fn lift(&self, config: &Config, body: &Value, peer: SocketAddr) -> Response {
        let Some(scope) = body.get("scope").and_then(Value::as_str) else {
            return Response::error(400, "the body needs {\"scope\": ...}");
        };
        let now = self.now();
        let lifted = self.shared.rules.lift(scope, now);
        let client = peer.to_string();
        let audit = Audit {
            action: "lift",
            target: scope,
            reason: "",
            client: &client,
            at_unix_ms: now,
        };
        if !lifted {
            self.shared.admin.audit(config, &audit, "no rule in force");
            return Response::error(404, &format!("no rule is in force on {scope:?}"));
        }
        self.shared
            .admin
            .audit(config, &audit, "lifted; coming back over its ramp");
        Response::json(
            200,
            json!({"action": "lift", "scope": scope, "changed": true}).to_string(),
        )
    }
}
