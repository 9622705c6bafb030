//! The core's side of reply rules (`delivery::rules`): a failure reply matched against the
//! rules in force (what it makes of the recipient: deferred to another source, or bounced),
//! and the engine-wide firings followed by the home's routing and the owner's caps.

use super::*;
use crate::delivery::owner::RuleCap;
use crate::delivery::policy::{BounceCategory, Fault, Verdict};
use crate::delivery::rules::{Action, Firings};

/// How often the core looks at the firings' times (a cap or a suspension ending, a ramp
/// moving on) when no new firing came.
pub const RULES_TICK: std::time::Duration = std::time::Duration::from_millis(250);

impl<L: LogSink> Core<L> {
    /// The rules' state every shard shares (a new core's is its own).
    pub fn with_rules(mut self, book: &Arc<crate::delivery::rules::RuleBook>) -> Self {
        self.rulebook = Arc::clone(book);
        self
    }

    /// A failure reply from `scope`: if a rule matches it, what it makes of the recipient.
    /// A source's trouble (suspend, caps) is not the recipient's: it is deferred, due at once
    /// and not counted (its next route leaves the suspended source out), never bounced for
    /// it. A bounce rule that fires bounces it.
    pub(super) fn apply_rules(&mut self, scope: &str, o: &mut Outcome) {
        if o.verdict == Verdict::Delivered || self.config.rules.is_empty() || o.code == 0 {
            return;
        }
        let now = self.clock.unix_ms();
        let Some(m) = self
            .rulebook
            .observe(&self.config.rules, scope, &o.response, now)
        else {
            return;
        };
        match m.action {
            Action::Bounce if m.fired => {
                o.verdict = Verdict::Bounced;
                o.fault = Fault::Message;
                o.pushback = false;
                o.category.get_or_insert(BounceCategory::Policy);
                o.response = format!("{} (rule {}: bounced)", o.response, m.rule);
            }
            Action::Bounce => {}
            action => {
                o.verdict = Verdict::Deferred;
                o.fault = Fault::Connection;
                o.category = None;
                // Back at once, not counted (`policy::decide`), but no pushback for the
                // throttle: the rule, not the pace, answers this.
                o.pushback = true;
                let state = if m.fired {
                    action.text()
                } else {
                    "counted".into()
                };
                o.response = format!("{} (rule {}: {state})", o.response, m.rule);
            }
        }
        if m.new {
            let rule = self.config.rules.iter().find(|r| r.name == m.rule);
            tracing::warn!(
                "rule {} fired on {scope}: {} for {}, then back over {}; reply: {}",
                m.rule,
                m.action.text(),
                rule.map_or(String::new(), |r| crate::config::duration_text(r.duration)),
                rule.map_or(String::new(), |r| crate::config::duration_text(r.ramp)),
                crate::smtp::reply::printable(&o.response)
            );
        }
    }

    /// At every tick: a new generation of firings goes to the home (routing) and the owner
    /// (caps) at once; and every `RULES_TICK` the times are looked at again (a duration
    /// ending, a ramp moving on).
    pub(super) fn rules_tick(&mut self, now: Instant) {
        let generation = self.rulebook.generation();
        let changed = generation != self.rules_generation_seen;
        if !changed
            && (self.firings.is_empty() || now.duration_since(self.last_rules_tick) < RULES_TICK)
        {
            return;
        }
        self.last_rules_tick = now;
        let unix = self.clock.unix_ms();
        if self.id == 0 {
            self.rulebook.expire(&self.config.rules, unix);
        }
        let (generation, firings) = self.rulebook.snapshot();
        // A suspension whose duration ended since the last look releases what it held,
        // as a new firing does (its ramp then goes on by time alone).
        let ended = firings
            .by_scope
            .values()
            .any(|f| f.until_unix_ms > self.rules_looked_unix_ms && f.until_unix_ms <= unix);
        self.rules_looked_unix_ms = unix;
        if generation != self.rules_generation_seen || ended {
            self.rules_generation_seen = generation;
            self.home.set_firings(Arc::clone(&firings), unix);
            self.effects.push(Effect::Schedule);
        }
        self.firings = firings;
        self.apply_caps(now, unix);
    }

    /// Each scope's cap from the firings in force; scopes whose cap ended get none.
    fn apply_caps(&mut self, now: Instant, unix: u64) {
        let firings: &Firings = &self.firings;
        let mut capped = self.owner.rule_capped();
        for f in firings.by_scope.values() {
            let cap = match f.action {
                Action::CapRate(r) if f.active(unix) => RuleCap {
                    rate: Some(r),
                    connections: None,
                },
                Action::CapConnections(n) if f.active(unix) => RuleCap {
                    rate: None,
                    connections: Some(n),
                },
                _ => continue,
            };
            capped.retain(|k| k != &f.scope);
            self.owner.set_rule_cap(&f.scope, cap, now);
        }
        for key in capped {
            self.owner.set_rule_cap(&key, RuleCap::default(), now);
        }
    }
}
