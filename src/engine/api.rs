//! The admin API's routes (`[admin] listen`): `/metrics`, `/api/v1/...`, the status page at
//! `/`, served on the `admin::server` threads from the shards' published snapshots and, for
//! what only a shard knows (`queue why`, `queue summary`, `retry`), calls put to every shard
//! (`admin::AdminShared::ask_all`).

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
const PAGE: &str = include_str!("../admin/page.html");

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
}

impl Api {
    pub(super) fn new(shared: Arc<Shared>) -> Api {
        Api {
            started_unix_ms: shared.clock.unix_ms(),
            shared,
            history: Mutex::new(History::default()),
            injected: AtomicU64::new(0),
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
    fn with_achieved(&self, mut v: ScopeView) -> ScopeView {
        v.achieved = self.achieved(&v.key);
        v
    }
}

/// Seconds of samples the achieved rate is taken over.
const ACHIEVED_SAMPLES: usize = 3;

impl Handler for Api {
    fn handle(&self, req: &Request, body: &mut dyn Read, peer: SocketAddr) -> Response {
        let config = self.shared.config();
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
                );
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
        })
    }

    /// `queue summary`: per scope and per domain, from every shard's queue.
    fn summary(&self, config: &Config) -> Response {
        let rows = match self.shared.admin.ask_all(ShardCall::Domains) {
            Ok(a) => a,
            Err(e) => return Response::error(503, &e),
        };
        let now = self.now();
        let holds = self.shared.admin.holds();
        let statuses = self.shared.status();
        let views: HashMap<String, ScopeView> = view::scopes(&statuses, config)
            .into_iter()
            .map(|v| (v.key.clone(), self.with_achieved(v)))
            .collect();
        // Domains merged across shards, then grouped by scope.
        let mut domains: BTreeMap<String, DomainRow> = BTreeMap::new();
        for a in rows {
            let ShardAnswer::Domains(rows) = a else {
                continue;
            };
            for r in rows {
                match domains.get_mut(&r.domain) {
                    None => {
                        domains.insert(r.domain.clone(), r);
                    }
                    Some(d) => {
                        d.scope = d.scope.take().or(r.scope);
                        d.queued += r.queued;
                        d.deferred += r.deferred;
                        d.in_flight += r.in_flight;
                        d.held += r.held;
                        d.oldest_unix_ms = d.oldest_unix_ms.min(r.oldest_unix_ms);
                    }
                }
            }
        }
        let mut scopes: BTreeMap<String, Vec<&DomainRow>> = BTreeMap::new();
        for d in domains.values() {
            let key = d.scope.clone().unwrap_or_else(|| "(not routed yet)".into());
            scopes.entry(key).or_default().push(d);
        }
        let mut out: Vec<Value> = scopes
            .iter()
            .map(|(key, ds)| {
                let sum = |f: fn(&DomainRow) -> u64| ds.iter().map(|d| f(d)).sum::<u64>();
                let oldest = ds.iter().map(|d| d.oldest_unix_ms).min().unwrap_or(now);
                let v = views.get(key).cloned().unwrap_or_else(|| ScopeView {
                    key: key.clone(),
                    ..Default::default()
                });
                let queued = sum(|d| d.queued);
                let deferred = sum(|d| d.deferred);
                let held = sum(|d| d.held);
                let suspension = ds.iter().find_map(|d| {
                    (d.held > 0)
                        .then(|| holds.suspension(&Target::Domain(d.domain.clone())))
                        .flatten()
                });
                let in_flight = sum(|d| d.in_flight);
                // Nothing here can be sent now: held by a suspension (named first: an
                // operator's action explains more than a retry time) or waiting to retry.
                let stuck = queued > 0 && in_flight == 0 && held + deferred >= queued;
                let constraint = if stuck && held > 0 {
                    match suspension {
                        Some(r) => Constraint::Suspended {
                            target: r.target.to_string(),
                            since_unix_ms: r.at_unix_ms,
                            reason: r.reason.clone(),
                        },
                        None => {
                            // Held by campaign or tenant: one of these (`queue why RECIPIENT`
                            // names which).
                            let rules: Vec<&Rule> = holds
                                .suspended
                                .iter()
                                .filter(|r| {
                                    matches!(r.target, Target::Campaign(_) | Target::Tenant(_))
                                })
                                .collect();
                            match rules.as_slice() {
                                [one] => Constraint::Suspended {
                                    target: one.target.to_string(),
                                    since_unix_ms: one.at_unix_ms,
                                    reason: one.reason.clone(),
                                },
                                many => Constraint::Suspended {
                                    target: format!(
                                        "one of {} campaign or tenant suspensions",
                                        many.len()
                                    ),
                                    since_unix_ms: many
                                        .iter()
                                        .map(|r| r.at_unix_ms)
                                        .min()
                                        .unwrap_or(now),
                                    reason: String::new(),
                                },
                            }
                        }
                    }
                } else if stuck {
                    Constraint::RetryTimes {
                        next_unix_ms: None,
                        last_failure: v
                            .notes
                            .last_failure
                            .clone()
                            .map(|f| f.1)
                            .unwrap_or_default(),
                    }
                } else {
                    match view::scope_constraint(&v, &holds) {
                        // Mail queued that the owner has not heard of yet: being routed or
                        // waiting for its share.
                        Constraint::Idle if queued > 0 => Constraint::Credit,
                        c => c,
                    }
                };
                let limits = crate::shard::scope_limits(config, key);
                json!({
                    "scope": key,
                    "queued": queued,
                    "in_flight": in_flight,
                    "deferred": deferred,
                    "held": held,
                    "oldest_age_s": now.saturating_sub(oldest) / 1000,
                    "rate": v.rate,
                    "max_rate": limits.max_rate,
                    "connections": v.workers + v.parked + v.closing,
                    "connection_cap": v.connection_cap,
                    "connection_limit": limits.connection_limit,
                    "throttled": v.adaptive_limit.is_some(),
                    "constraint": constraint.kind(),
                    "why": constraint.text(now),
                    "last_failure": v.notes.last_failure.as_ref().map(|f| f.1.clone()),
                    "domains": ds.iter().map(|d| json!({
                        "domain": d.domain,
                        "queued": d.queued,
                        "in_flight": d.in_flight,
                        "deferred": d.deferred,
                        "held": d.held,
                        "oldest_age_s": now.saturating_sub(d.oldest_unix_ms) / 1000,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        out.sort_by(|a, b| b["queued"].as_u64().cmp(&a["queued"].as_u64()));
        let queued: u64 = domains.values().map(|d| d.queued).sum();
        Response::json(
            200,
            json!({
                "engine_running": true,
                "shards": config.engine.shards,
                "queued": queued,
                "scopes": out,
            })
            .to_string(),
        )
    }

    /// `queue why RECIPIENT|DOMAIN`.
    fn why(&self, config: &Config, target: &str) -> Response {
        let now = self.now();
        let (recipient, domain) = match target.rsplit_once('@') {
            Some((_, d)) => (Some(target), d.to_ascii_lowercase()),
            None => (
                None,
                target.trim_start_matches("domain:").to_ascii_lowercase(),
            ),
        };
        if domain.is_empty() || domain.len() > 255 {
            return Response::error(400, "not a recipient or a domain");
        }
        let mut found: Option<crate::shard::RecipientWhy> = None;
        if let Some(r) = recipient {
            match self
                .shared
                .admin
                .ask_all(ShardCall::WhyRecipient(r.to_string()))
            {
                Ok(answers) => {
                    found = answers.into_iter().find_map(|a| match a {
                        ShardAnswer::Recipient(r) => r,
                        _ => None,
                    })
                }
                Err(e) => return Response::error(503, &e),
            }
            if found.is_none() {
                return Response::json(
                    404,
                    json!({"target": target, "queued": false,
                           "why": "not queued: never received, or already final (see the delivery log)"})
                        .to_string(),
                );
            }
        }
        let answers = match self
            .shared
            .admin
            .ask_all(ShardCall::WhyDomain(domain.clone()))
        {
            Ok(a) => a,
            Err(e) => return Response::error(503, &e),
        };
        let parts: Vec<crate::shard::DomainWhy> = answers
            .into_iter()
            .filter_map(|a| match a {
                ShardAnswer::Domain(d) => Some(d),
                _ => None,
            })
            .collect();
        let holds = self.shared.admin.holds();
        let statuses = self.shared.status();
        let scope = parts.iter().find_map(|p| match &p.state.route {
            crate::schedule::operator::RouteState::Scope(s) => Some(s.clone()),
            _ => None,
        });
        let view = scope.as_ref().map(|key| {
            let v = view::scopes(&statuses, config)
                .into_iter()
                .find(|v| &v.key == key)
                .unwrap_or_else(|| ScopeView {
                    key: key.clone(),
                    ..Default::default()
                });
            self.with_achieved(v)
        });
        let queued: u64 = parts.iter().map(|p| p.queued).sum();
        let deferred: u64 = parts.iter().map(|p| p.deferred).sum();
        let in_flight: u64 = parts.iter().map(|p| p.in_flight).sum();
        let held: u64 = parts.iter().map(|p| p.state.held).sum();
        let next_due = parts.iter().filter_map(|p| p.next_due_unix_ms).min();
        let constraint = why_constraint(
            &holds,
            &parts,
            found.as_ref(),
            &domain,
            scope.as_deref(),
            view.as_ref(),
            next_due,
        );
        let until = match &constraint {
            Constraint::RetryTimes { next_unix_ms, .. } => *next_unix_ms,
            _ => None,
        };
        let mut out = json!({
            "target": target,
            "domain": domain,
            "scope": scope,
            "queued": queued,
            "deferred": deferred,
            "in_flight": in_flight,
            "held": held,
            "next_retry": next_due,
            "constraint": constraint.kind(),
            "why": constraint.text(now),
            "until": until,
        });
        if let Some(r) = &found {
            out["recipient"] = json!({
                "state": r.state,
                "retry_at": r.due_unix_ms,
                "attempts": r.attempts,
                "campaign": r.campaign,
                "tenant": r.tenant,
                "queued_at": r.queued_unix_ms,
                "age": age_text(now.saturating_sub(r.queued_unix_ms)),
            });
        }
        if let Some(v) = &view {
            out["scope_state"] = scope_json(v, &holds, now, None);
        }
        if queued == 0 && found.is_none() {
            return Response::json(404, out.to_string());
        }
        Response::json(200, out.to_string())
    }

    /// suspend, resume, bounce, retry.
    fn act(&self, config: &Config, action: &str, body: &Value, peer: SocketAddr) -> Response {
        let Some(text) = body.get("target").and_then(Value::as_str) else {
            return Response::error(400, "the body needs {\"target\": ...}");
        };
        let reason = body.get("reason").and_then(Value::as_str).unwrap_or("");
        if reason.len() > 1000 || reason.chars().any(char::is_control) {
            return Response::error(
                400,
                "reason: at most 1000 characters, no control characters",
            );
        }
        let target = match Target::parse(text) {
            Ok(t) => t,
            Err(e) => return Response::error(400, &format!("target: {e}")),
        };
        if let Err(e) = self.known_target(config, &target) {
            return Response::error(404, &e);
        }
        if action == "bounce" && reason.is_empty() {
            return Response::error(
                400,
                "a bounce needs a reason (it goes into every Bounce record)",
            );
        }
        let now = self.now();
        let client = peer.to_string();
        let target_text = target.to_string();
        let audit = Audit {
            action,
            target: &target_text,
            reason,
            client: &client,
            at_unix_ms: now,
        };
        let rule = Rule {
            target: target.clone(),
            at_unix_ms: now,
            reason: reason.to_string(),
        };
        let admin = &self.shared.admin;
        let result = match action {
            "suspend" => admin.change_holds(config, &audit, |h| h.suspend(rule)).map(
                |changed| json!({"action": action, "target": target_text, "changed": changed}),
            ),
            "resume" => admin
                .change_holds(config, &audit, |h| Ok(h.resume(&target)))
                .map(
                    |changed| json!({"action": action, "target": target_text, "changed": changed}),
                ),
            "bounce" => admin
                .change_holds(config, &audit, |h| h.bounce(rule).map(Some))
                .map(|_| json!({"action": action, "target": target_text, "changed": true})),
            "retry" => admin
                .ask_all(ShardCall::Retry(target.clone()))
                .map(|answers| {
                    let n: u64 = answers
                        .iter()
                        .map(|a| match a {
                            ShardAnswer::Retried(n) => *n,
                            _ => 0,
                        })
                        .sum();
                    admin.audit(config, &audit, &format!("{n} recipients due now"));
                    json!({"action": action, "target": target_text, "recipients": n})
                }),
            _ => Err("no such action".to_string()),
        };
        match result {
            Ok(v) => Response::json(200, v.to_string()),
            Err(e) => {
                admin.audit(config, &audit, &format!("failed: {e}"));
                Response::error(503, &e)
            }
        }
    }

    /// A target is known if the configuration or the queue names it; mail can be held
    /// back for a domain, campaign or tenant before any of it arrives.
    fn known_target(&self, config: &Config, target: &Target) -> Result<(), String> {
        match target {
            Target::Scope(k) => {
                let known = config.providers.contains_key(k)
                    || self.shared.status().iter().any(|st| {
                        st.scopes.iter().any(|s| &s.key == k)
                            || st.counts.by_scope.contains_key(k.as_str())
                    })
                    || ((k.starts_with("site:") || k.starts_with("route:")) && k.len() > 5);
                if known {
                    Ok(())
                } else {
                    Err(format!(
                        "unknown target {k:?}: not a provider of the configuration nor a scope (site:..., route:...); use domain:, campaign:, tenant: for those"
                    ))
                }
            }
            Target::Source(s) => Err(format!(
                "unknown target source:{s}: no egress sources are configured"
            )),
            Target::Domain(_) | Target::Campaign(_) | Target::Tenant(_) => Ok(()),
        }
    }

    /// `POST /api/v1/inject`: a campaign batch (the spool's `.jsonl`), streamed into the
    /// spool and answered once the engine has queued it durably (or refused it), exactly as
    /// for a file renamed into `incoming/`.
    fn inject(
        &self,
        config: &Config,
        req: &Request,
        body: &mut dyn Read,
        peer: SocketAddr,
    ) -> Response {
        if req.content_length == 0 {
            return Response::error(400, "an empty batch");
        }
        if req.content_length > crate::spool::INPUT_BYTES_MAX {
            return Response::error(413, "a batch of at most 1 GiB");
        }
        if self.shared.stopping() {
            return Response::error(503, "the engine is stopping");
        }
        let n = self.injected.fetch_add(1, Ordering::Relaxed);
        let name = format!("api-{}-{n}.jsonl", self.now());
        let spool = &config.spool.dir;
        let tmp = spool.join("tmp").join(&name);
        let written = (|| -> std::io::Result<()> {
            use std::io::Write;
            std::fs::create_dir_all(spool.join("tmp"))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&tmp)?;
            let copied = std::io::copy(&mut body.take(req.content_length), &mut f)?;
            if copied != req.content_length {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    format!("the client sent {copied} of {} bytes", req.content_length),
                ));
            }
            f.flush()?;
            std::fs::rename(&tmp, spool.join("incoming").join(&name))
        })();
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Response::error(400, &format!("the batch was not taken: {e}"));
        }
        let client = peer.to_string();
        let audit = Audit {
            action: "inject",
            target: &name,
            reason: "",
            client: &client,
            at_unix_ms: self.now(),
        };
        // Queued once the file has left incoming/ and its claim: deleted (or in done/)
        // after every recipient's group commit, or in bad/ with the reason.
        let incoming = spool.join("incoming");
        let claimed_suffix = format!(".{name}");
        let deadline = std::time::Instant::now() + INJECT_WAIT_MAX;
        loop {
            let waiting = incoming.join(&name).exists()
                || std::fs::read_dir(incoming.join(crate::spool::CLAIMED_DIR))
                    .map(|d| {
                        d.flatten()
                            .any(|e| e.file_name().to_string_lossy().ends_with(&claimed_suffix))
                    })
                    .unwrap_or(false);
            if !waiting {
                break;
            }
            if self.shared.stopping() {
                self.shared.admin.audit(config, &audit, "engine stopping");
                return Response::error(
                    503,
                    &format!("{name}: the engine is stopping; the batch stays in the spool and is queued at the next start"),
                );
            }
            if std::time::Instant::now() >= deadline || self.shared.failed() {
                self.shared
                    .admin
                    .audit(config, &audit, "not queued in time");
                return Response::error(
                    504,
                    &format!(
                        "{name}: not queued within {} s; it stays in the spool and will be",
                        INJECT_WAIT_MAX.as_secs()
                    ),
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let err = spool.join("bad").join(format!("{name}.err"));
        if let Ok(reason) = std::fs::read_to_string(&err) {
            self.shared.admin.audit(config, &audit, "refused");
            return Response::json(
                422,
                json!({"name": name, "queued": false, "error": reason.trim_end()}).to_string(),
            );
        }
        self.shared.admin.audit(config, &audit, "queued");
        Response::json(200, json!({"name": name, "queued": true}).to_string())
    }
}

/// The store's entries as `suppression list --json` prints them.
pub fn entries_json(entries: &[crate::suppression::store::Entry]) -> Value {
    let list: Vec<Value> = entries
        .iter()
        .map(|e| {
            let (date, kind, _) = crate::suppression::manage::describe(e);
            json!({"entry": e.entry, "tenant": e.tenant, "kind": kind, "date": date})
        })
        .collect();
    json!({ "entries": list })
}

impl Api {
    /// `suppression add|remove` with the engine running: the store line synced, then the
    /// live table.
    fn suppression_change(
        &self,
        config: &Config,
        action: &str,
        body: &Value,
        peer: SocketAddr,
    ) -> Response {
        let Some(entry) = body.get("entry").and_then(Value::as_str) else {
            return Response::error(400, "the body needs {\"entry\": ...}");
        };
        let tenant = body.get("tenant").and_then(Value::as_str).unwrap_or("");
        let now = self.now();
        let client = peer.to_string();
        let target = if tenant.is_empty() {
            entry.to_string()
        } else {
            format!("{entry} (tenant {tenant})")
        };
        let name = format!("suppression-{action}");
        let audit = Audit {
            action: &name,
            target: &target,
            reason: body.get("reason").and_then(Value::as_str).unwrap_or(""),
            client: &client,
            at_unix_ms: now,
        };
        let s = &*self.shared.suppressions;
        let day = crate::suppression::day_of(now);
        let result = match action {
            "add" => self.shared.admin.change(
                config,
                &audit,
                || {
                    crate::suppression::manage::add(
                        config,
                        Some(s),
                        tenant,
                        entry,
                        crate::suppression::Source::Manual { day },
                        now,
                    )
                    .map(|e| json!({"action": "add", "entry": e, "tenant": tenant, "changed": true}))
                },
                |_| "added".into(),
            ),
            _ => self.shared.admin.change(
                config,
                &audit,
                || {
                    crate::suppression::manage::remove(config, s, tenant, entry, now)
                        .map(|changed| json!({"action": "remove", "entry": entry, "tenant": tenant, "changed": changed}))
                },
                |v| if v["changed"] == json!(true) { "removed".into() } else { "not in the store".into() },
            ),
        };
        match result {
            Ok(v) => Response::json(200, v.to_string()),
            Err(e) => Response::error(422, &e),
        }
    }
}

/// How long an injection waits for its batch to be queued.
const INJECT_WAIT_MAX: Duration = Duration::from_secs(600);

/// What a domain's (or one recipient's) mail waits for, most binding first.
fn why_constraint(
    holds: &Holds,
    parts: &[crate::shard::DomainWhy],
    recipient: Option<&crate::shard::RecipientWhy>,
    domain: &str,
    scope: Option<&str>,
    view: Option<&ScopeView>,
    next_due: Option<u64>,
) -> Constraint {
    let mut targets = vec![Target::Domain(domain.to_string())];
    if let Some(r) = recipient {
        targets.push(Target::Campaign(r.campaign.clone()));
        targets.push(Target::Tenant(r.tenant.clone()));
    }
    if let Some(s) = scope {
        targets.push(Target::Scope(s.to_string()));
    }
    if let Some(rule) = targets.iter().find_map(|t| holds.suspension(t)) {
        return Constraint::Suspended {
            target: rule.target.to_string(),
            since_unix_ms: rule.at_unix_ms,
            reason: rule.reason.clone(),
        };
    }
    let last_failure = view
        .and_then(|v| v.notes.last_failure.clone())
        .map(|f| f.1)
        .unwrap_or_default();
    if let Some(r) = recipient {
        match r.state {
            "deferred" => {
                return Constraint::RetryTimes {
                    next_unix_ms: r.due_unix_ms,
                    last_failure,
                }
            }
            "in flight" => return Constraint::Sending,
            _ => {}
        }
    }
    for p in parts {
        if let crate::schedule::operator::RouteState::Decided(text) = &p.state.route {
            return Constraint::Dns { text: text.clone() };
        }
        if p.state.resolving > 0 && p.state.lookup_failures > 0 {
            return Constraint::Dns {
                text: format!(
                    "{} lookups failed so far; trying again",
                    p.state.lookup_failures
                ),
            };
        }
    }
    if parts.iter().any(|p| p.state.resolving > 0) {
        return Constraint::Resolving;
    }
    let queued: u64 = parts.iter().map(|p| p.queued).sum();
    let deferred: u64 = parts.iter().map(|p| p.deferred).sum();
    if queued > 0 && deferred == queued {
        return Constraint::RetryTimes {
            next_unix_ms: next_due,
            last_failure,
        };
    }
    match view {
        Some(v) => match view::scope_constraint(v, holds) {
            Constraint::Idle if queued > 0 => Constraint::Credit,
            c => c,
        },
        None if queued == 0 => Constraint::Idle,
        None => Constraint::Resolving,
    }
}
