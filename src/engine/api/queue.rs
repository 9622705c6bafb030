//! The queue's routes: `queue summary` (per scope and domain, from every shard's queue),
//! `queue why`, and the operator actions (suspend, resume, bounce, retry).

use super::*;

impl Api {
    /// `queue summary`: per scope and per domain, from every shard's queue.
    pub(super) fn summary(&self, config: &Config) -> Response {
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
                // Sent from egress sources: one row of them all (and of mail from the
                // system's address), each source listed under it.
                let sourced: Vec<&ScopeView> = views
                    .values()
                    .filter(|s| {
                        let (base, source) = crate::delivery::scope::split_key(&s.key);
                        base == key.as_str() && source.is_some()
                    })
                    .collect();
                let v = if sourced.is_empty() {
                    views.get(key).cloned().unwrap_or_else(|| ScopeView {
                        key: key.clone(),
                        ..Default::default()
                    })
                } else {
                    let mut parts = sourced.clone();
                    parts.extend(views.get(key));
                    view::merge_sources(key, &parts, config)
                };
                let mut sources: Vec<Value> = sourced
                    .iter()
                    .map(|s| {
                        let name = crate::delivery::scope::split_key(&s.key).1.unwrap_or("");
                        let constraint = match holds.source_suspension(name) {
                            Some(r) => Constraint::Suspended {
                                target: r.target.to_string(),
                                since_unix_ms: r.at_unix_ms,
                                reason: r.reason.clone(),
                            },
                            None => view::scope_constraint(s, &holds),
                        };
                        json!({
                            "source": name,
                            "address": config.egress.source(name).map(|x| x.address.to_string()),
                            "scope": s.key,
                            "waiting": s.waiting,
                            "rate": s.rate,
                            "achieved": s.achieved,
                            "connections": s.workers + s.parked + s.closing,
                            "connection_limit": s.connection_limit,
                            "pushbacks": s.pushbacks,
                            "constraint": constraint.kind(),
                            "why": constraint.text(now),
                        })
                    })
                    .collect();
                sources.sort_by(|a, b| a["source"].as_str().cmp(&b["source"].as_str()));
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
                let ruled = match view::scope_constraint(&v, &holds) {
                    c @ Constraint::Rule { .. } => Some(c),
                    _ => None,
                };
                let constraint = if let Some(c) = ruled {
                    c
                } else if stuck && held > 0 {
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
                let (max_rate, connection_limit) = if sources.is_empty() {
                    (limits.max_rate, limits.connection_limit)
                } else {
                    (v.max_rate, v.connection_limit)
                };
                json!({
                    "scope": key,
                    "queued": queued,
                    "in_flight": in_flight,
                    "deferred": deferred,
                    "held": held,
                    "oldest_age_s": now.saturating_sub(oldest) / 1000,
                    "rate": v.rate,
                    "max_rate": max_rate,
                    "connections": v.workers + v.parked + v.closing,
                    "connection_cap": v.connection_cap,
                    "connection_limit": connection_limit,
                    "sources": sources,
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
    pub(super) fn why(&self, config: &Config, target: &str) -> Response {
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
            // The destination's own scope, or its scopes at each egress source as one.
            let all: Vec<ScopeView> = view::scopes(&statuses, config)
                .into_iter()
                .filter(|v| crate::delivery::scope::split_key(&v.key).0 == key.as_str())
                .map(|v| self.with_achieved(v))
                .collect();
            match all.as_slice() {
                [] => ScopeView {
                    key: key.clone(),
                    ..Default::default()
                },
                [one] if &one.key == key => one.clone(),
                many => view::merge_sources(key, &many.iter().collect::<Vec<_>>(), config),
            }
        });
        let queued: u64 = parts.iter().map(|p| p.queued).sum();
        let deferred: u64 = parts.iter().map(|p| p.deferred).sum();
        let in_flight: u64 = parts.iter().map(|p| p.in_flight).sum();
        let held: u64 = parts.iter().map(|p| p.state.held).sum();
        let next_due = parts.iter().filter_map(|p| p.next_due_unix_ms).min();
        // The sources the recipient's pool may use (all of them for a domain), and those
        // of them that may send no more to this provider today (warm-up).
        let pool_sources: Vec<String> = {
            let pool = found.as_ref().map_or("", |r| r.pool.as_str());
            let p = config.egress.pools.get(pool).or_else(|| {
                config
                    .egress
                    .pools
                    .get(crate::config::DEFAULT_POOL)
                    .filter(|_| found.is_some())
            });
            match p {
                Some(p) => p
                    .members
                    .iter()
                    .map(|&(i, _)| config.egress.sources[i].name.clone())
                    .collect(),
                None => config
                    .egress
                    .sources
                    .iter()
                    .map(|s| s.name.clone())
                    .collect(),
            }
        };
        let warm_full: Vec<String> = match scope.as_deref() {
            Some(s) => {
                let base = crate::delivery::scope::split_key(s).0;
                let day = crate::gateway::limits::utc_day(self.now());
                self.shared
                    .warmup
                    .status(day)
                    .into_iter()
                    .filter(|w| w.provider == base && pool_sources.contains(&w.source))
                    .filter(|w| w.state != "warming" && w.state != "warm")
                    .map(|w| match w.state {
                        "not started" => format!("{} (starts {})", w.source, w.schedule_start),
                        _ => w.source,
                    })
                    .collect()
            }
            None => Vec::new(),
        };
        // An operator's suspension of one of those sources explains a hold first.
        let source_hold = pool_sources
            .iter()
            .find_map(|n| holds.source_suspension(n).cloned());
        let constraint = why_constraint(
            (&holds, &warm_full, source_hold.as_ref()),
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
    pub(super) fn act(
        &self,
        config: &Config,
        action: &str,
        body: &Value,
        peer: SocketAddr,
    ) -> Response {
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
        // A recipient leaves from a source only once routed: while deferred or queued it
        // has none, so a source has nothing to bounce or retry.
        if matches!(target, Target::Source(_)) && action != "suspend" && action != "resume" {
            return Response::error(
                400,
                &format!("a source can be suspended or resumed (its mail moves to its pool's other sources); {action} by provider, domain:, campaign: or tenant:"),
            );
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
            Target::Scope(key) => {
                // A scope at one source: `provider@source`.
                let (k, source) = crate::delivery::scope::split_key(key);
                if let Some(s) = source {
                    if config.egress.source(s).is_none() {
                        return Err(format!(
                            "unknown target {key:?}: {s:?} is not a [sources] entry"
                        ));
                    }
                }
                let known = config.providers.contains_key(k)
                    || self.shared.status().iter().any(|st| {
                        st.scopes.iter().any(|s| s.key == k) || st.counts.by_scope.contains_key(k)
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
            Target::Source(s) if config.egress.source(s).is_some() => Ok(()),
            Target::Source(s) => Err(format!(
                "unknown target source:{s}: not a [sources] entry of the configuration"
            )),
            Target::Domain(_) | Target::Campaign(_) | Target::Tenant(_) => Ok(()),
        }
    }
}

/// What a domain's (or one recipient's) mail waits for, most binding first.
fn why_constraint(
    (holds, warm_full, source_hold): (&Holds, &[String], Option<&Rule>),
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
    // A reply rule on the scope (or on a source of it) explains more than its symptoms.
    if let Some(c @ Constraint::Rule { .. }) = view.map(|v| view::scope_constraint(v, holds)) {
        return c;
    }
    // Held: an operator's suspension of its pool's sources, else their warm-up caps.
    let held = match recipient {
        Some(r) => r.state == "held",
        // (A domain's: only when no operator holds anything that could hold it.)
        None => parts.iter().any(|p| p.state.held > 0) && holds.suspended.is_empty(),
    };
    if let (true, Some(rule)) = (held, source_hold) {
        return Constraint::Suspended {
            target: rule.target.to_string(),
            since_unix_ms: rule.at_unix_ms,
            reason: rule.reason.clone(),
        };
    }
    if held && !warm_full.is_empty() {
        return Constraint::Warmup {
            sources: warm_full.to_vec(),
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
