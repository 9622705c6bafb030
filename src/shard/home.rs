//! The home side: the scheduler's tick (`crate::schedule::Home`), routing, announcing
//! demand, and rendering what an owner's credit allows (the message stage runs here, so the
//! bytes sent are the bytes rendered, and DKIM-signed, on the home shard).

use super::*;
use crate::delivery::policy::{classify_destination, BounceCategory, Fault, Verdict};
use crate::delivery::scope::{scope_for_mx, scope_for_route, static_route};
use crate::dns::resolver::Destination;
use crate::message::Rendering;
use crate::queue::record::{MessagePayload, RecipientPayload};
use crate::queue::store::EntryState;
use crate::schedule::{Route, Taken, Tick};
use std::rc::Rc;

/// Why a recipient's message was not prepared.
pub(super) enum Unsent {
    Suppressed(crate::suppression::Hit),
    /// It cannot be rendered (or signed).
    Failed(String),
}

impl From<String> for Unsent {
    fn from(why: String) -> Unsent {
        Unsent::Failed(why)
    }
}

/// The bounce of a recipient found suppressed just before sending (code 0: Spate's own
/// decision, never learnt from).
fn suppressed(hit: &crate::suppression::Hit) -> Outcome {
    Outcome {
        verdict: Verdict::Bounced,
        fault: Fault::Message,
        code: 0,
        enhanced: Some(crate::smtp::reply::EnhancedCode::new(5, 7, 1)),
        response: hit.to_string(),
        category: Some(BounceCategory::Suppressed),
        pushback: false,
    }
}

/// Where `domain`'s mail goes by a static `[[routes]]` entry, if one matches (no DNS then).
/// `shard` is the one routing: its own owner side sends its recipients, over its share of
/// the scope's connections (`delivery::shares`).
pub fn route_statically(config: &Config, shard: usize, domain: &str) -> Option<Route> {
    let route = static_route(&config.routes, domain)?;
    Some(Route::Scope(scope_for_route(config, route), shard))
}

/// Where `domain`'s mail goes by what DNS said of it: a scope and the shard that sends for
/// it (`shard`, the one routing), or an outcome for every recipient (null MX, NXDOMAIN, a
/// temporary failure).
pub fn route_by_dns(config: &Config, shard: usize, domain: &str, d: &Destination) -> Route {
    match (d, classify_destination(domain, d)) {
        (Destination::Hosts(hosts), None) => Route::Scope(scope_for_mx(config, hosts), shard),
        (_, Some(o)) => Route::Decided(o),
        (_, None) => Route::Decided(Outcome {
            verdict: Verdict::Deferred,
            fault: Fault::Connection,
            code: 0,
            enhanced: None,
            response: format!("no route to {domain}"),
            category: None,
            pushback: false,
        }),
    }
}

impl<L: LogSink> Core<L> {
    /// The scheduler's tick: due deferrals to ready, ready to routed (`Resolve` effects for
    /// domains not known yet), demand to owners; and, now and then, idle scopes forgotten.
    /// Nothing is scheduled while `[delivery] paused` or draining.
    pub fn tick(&mut self) {
        let now = self.clock.now();
        self.rules_tick(now);
        self.warm_tick(now);
        self.cluster_tick(now);
        if !self.config.delivery.paused && !self.closing {
            let Tick {
                decided,
                to_resolve,
            } = self.home.tick(&self.queue.index, self.clock.unix_ms(), now);
            // Outcomes decided by routing (null MX, NXDOMAIN, a refused MX) reach the queue
            // and the delivery log with the next group commit: ask for one now, as outcomes
            // from an owner do, or they would wait for unrelated traffic on this shard.
            if !decided.is_empty() {
                self.effects.push(Effect::Commit);
            }
            for (seq, outcome) in decided {
                self.finish(seq, &outcome, None);
            }
            for domain in to_resolve {
                self.effects.push(Effect::Resolve(domain));
            }
            self.announce_demand();
        }
        // Whatever is waiting in the owner's lines gets served now and then even if no event
        // came to do it (they are served on every take, prepared messages and refusal).
        self.serve_waiting();
        if now.duration_since(self.last_sweep) >= SCOPE_SWEEP_INTERVAL {
            self.last_sweep = now;
            for key in self.owner.forget_idle_scopes(now) {
                if let Some(report) = self.shares.forget(&key) {
                    self.report_share(key, report);
                }
            }
            self.report_idle_wanted();
        }
        if now.duration_since(self.last_share_tick) >= SHARE_TICK {
            self.last_share_tick = now;
            self.share_tick(now);
        }
    }

    /// Tells each owner how many recipients wait here for its scopes: when that differs from
    /// the owner's view, and now and then anyway, so no drift can leave recipients waiting.
    fn announce_demand(&mut self) {
        let messages = self.home.announce(self.clock.now());
        for (owner, scope, count) in messages {
            let home = self.id;
            self.send(owner, Msg::Demand { scope, home, count });
        }
    }

    /// Where `domain` goes is known now: the recipients that waited for it go back to the
    /// front, and the scheduler routes them from the cache at once.
    pub fn resolved(&mut self, domain: &str, route: Route) {
        self.home.resolved(domain, route, self.clock.now());
        self.effects.push(Effect::Schedule);
    }

    /// Renders up to `n` waiting recipients of `scope` and sends them to its owner; with
    /// nothing here any more, or draining, the credit goes back unused.
    /// The messages go back to the shard that granted the credit, `owner`.
    pub(super) fn on_credit(&mut self, scope: String, n: u32, owner: usize) {
        let day = self.utc_day();
        let msgs = match self.home.take_credit(&scope, n, self.closing, day) {
            Some(taken) => {
                let reserved = taken.reserved;
                let mut msgs = self.prepare(taken);
                if reserved > 0 {
                    // Every recipient taken was counted (fewer taken than counted: none).
                    for m in &mut msgs {
                        m.warm_reserved = true;
                    }
                    let sent: usize = msgs.iter().map(|m| m.rcpts.len()).sum();
                    self.warm_unused(&scope, reserved, sent as u64);
                }
                msgs
            }
            None => Vec::new(),
        };
        let home = self.id;
        let prepared = Msg::Prepared {
            scope,
            home,
            granted: n,
            msgs,
        };
        self.send(owner, prepared);
    }

    /// The messages for the recipients credit took: verbatim ones joined into shared
    /// transactions, the rest rendered one each.
    fn prepare(&mut self, taken: Taken) -> Vec<Prepared> {
        let Taken {
            fallback_hosts,
            seqs,
            ..
        } = taken;
        let mut msgs: Vec<Prepared> = Vec::new();
        let mut failed: Vec<(u64, Outcome)> = Vec::new();
        let max_rcpts = self.config.delivery.recipients_per_transaction as usize;
        for seq in seqs {
            let joined = match msgs.last_mut() {
                Some(last) if last.rcpts.len() < max_rcpts => self.join(seq, last),
                _ => false,
            };
            if joined {
                continue;
            }
            match self.render(seq, &fallback_hosts) {
                Ok(Some(p)) => msgs.push(p),
                Ok(None) => {}
                Err(Unsent::Suppressed(hit)) => failed.push((seq, suppressed(&hit))),
                // A recipient that cannot be rendered (a damaged record, a template that no
                // longer parses) will not render later either: it bounces rather than waits
                // forever.
                Err(Unsent::Failed(why)) => {
                    tracing::warn!("shard {}: cannot render recipient {seq}: {why}", self.id);
                    let outcome = Outcome {
                        verdict: Verdict::Bounced,
                        fault: Fault::Message,
                        code: 0,
                        enhanced: Some(crate::smtp::reply::EnhancedCode::new(5, 3, 0)),
                        response: format!("cannot render the message: {why}"),
                        category: Some(BounceCategory::Other),
                        pushback: false,
                    };
                    failed.push((seq, outcome));
                }
            }
        }
        if !failed.is_empty() {
            self.effects.push(Effect::Commit);
        }
        for (seq, outcome) in failed {
            self.finish(seq, &outcome, None);
        }
        msgs
    }

    /// Renders one recipient's message, marking it in flight; `None` if it is no longer due.
    fn render(
        &mut self,
        seq: u64,
        fallback_hosts: &Arc<[NextHop]>,
    ) -> Result<Option<Prepared>, Unsent> {
        let Some(e) = self.queue.index.entry(seq).copied() else {
            return Ok(None);
        };
        if !matches!(e.state, EntryState::Waiting | EntryState::Deferred) {
            return Ok(None);
        }
        let payload = self
            .queue
            .payload_at(seq, e.offset)
            .map_err(|e| e.to_string())?;
        let r = RecipientPayload::decode(&payload).map_err(|e| e.to_string())?;
        let rendering = self.rendering(r.message_seq)?;
        // Lists change while mail waits: checked again now, as at intake.
        let today = crate::suppression::day_of(self.clock.unix_ms());
        if let Some(hit) = self.suppressed.check(r.recipient, &rendering.tenant, today) {
            return Err(Unsent::Suppressed(hit));
        }
        let (mut data, message_id) = rendering.render(
            seq,
            &r.values,
            &self.config.smtp.helo_name,
            self.clock.unix_ms(),
            &mut self.render_scratch,
        )?;
        // Signed here, over the bytes that go on the wire; nothing changes them after this.
        let signatures = crate::dkim::sign(
            data.bytes(),
            &self.config.signers,
            self.clock.unix_ms() / 1000,
        )
        .map_err(|e| format!("cannot sign it: {e}"))?;
        data.add_signatures(&signatures);
        let rcpt = r.recipient.to_string();
        self.queue.index.set_in_flight(seq, true);
        // The recipient's own destination: a provider scope spans domains with MX hosts
        // of their own.
        let domain = &self.queue.index.domain_names[e.domain as usize];
        let hosts = self
            .home
            .route_hosts(domain)
            .unwrap_or_else(|| Arc::clone(fallback_hosts));
        Ok(Some(Prepared {
            rcpts: vec![(seq, rcpt)],
            home: self.id,
            mail_from: rendering.sender.clone(),
            data,
            message_id,
            group: rendering.verbatim.then_some((r.message_seq, e.domain)),
            hosts,
            warm_reserved: false,
        }))
    }

    /// Adds `seq` to `p`'s transaction if it is another recipient of the same verbatim
    /// message at the same domain (personalised messages go one per transaction).
    fn join(&mut self, seq: u64, p: &mut Prepared) -> bool {
        let Some((message_seq, domain)) = p.group else {
            return false;
        };
        let Some(e) = self.queue.index.entry(seq).copied() else {
            return false;
        };
        let due = matches!(e.state, EntryState::Waiting | EntryState::Deferred);
        if !due || e.message_seq != message_seq || e.domain != domain {
            return false;
        }
        let Some(rcpt) = self.queue.payload_at(seq, e.offset).ok().and_then(|b| {
            RecipientPayload::decode_recipient(&b)
                .ok()
                .map(|(_, r)| r.to_string())
        }) else {
            return false;
        };
        // A suppressed recipient goes through `render`, which bounces it.
        let tenant = self
            .renderings
            .get(&message_seq)
            .map(|r| r.tenant.clone())
            .unwrap_or_default();
        let today = crate::suppression::day_of(self.clock.unix_ms());
        if self.suppressed.check(&rcpt, &tenant, today).is_some() {
            return false;
        }
        self.queue.index.set_in_flight(seq, true);
        p.rcpts.push((seq, rcpt));
        true
    }

    /// The parsed message of `message_seq`, from the cache or its queue record.
    fn rendering(&mut self, message_seq: u64) -> Result<Rc<Rendering>, String> {
        if let Some(r) = self.renderings.get(&message_seq) {
            return Ok(Rc::clone(r));
        }
        let info = self
            .queue
            .index
            .messages
            .get(&message_seq)
            .ok_or("message record missing")?;
        let payload = self
            .queue
            .payload_at(message_seq, info.offset)
            .map_err(|e| e.to_string())?;
        let m = MessagePayload::decode(&payload).map_err(|e| e.to_string())?;
        let r = Rc::new(Rendering::from_record(&m)?);
        let weight = r.weight();
        self.renderings.insert(message_seq, Rc::clone(&r), weight);
        Ok(r)
    }
}
