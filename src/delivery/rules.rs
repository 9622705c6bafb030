//! Reply rules: what the adaptive throttle cannot learn from pushback, as data. A rule is a
//! pattern on a failure reply ("550 5.7.606 Access denied, banned sending IP"), an optional
//! threshold (N matches within a period) and an action on the scope the reply came from (a
//! provider at one egress source, `microsoft@mta2`): suspend it for a duration, cap its rate
//! or its connections, or bounce the recipient. When a suspension or cap ends, the scope comes
//! back gradually (`ramp`): a suspended source's share of its pool grows back over the ramp,
//! a capped rate climbs from the cap at the throttle's pace, capped connections come back one
//! at a time.
//!
//! Sans I/O. `RuleBook` is the engine-wide state (every shard's outcomes count toward a
//! threshold, and every shard's routing must see a firing): a lock taken only when a failure
//! reply matches a rule, and an immutable `Firings` snapshot that the shards pick up at their
//! tick (a generation number says when it changed), so routing reads it without a lock.

use crate::delivery::scope::split_key;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A suspended source's share grows back over its ramp from this fraction, not from none.
pub const RAMP_START: f64 = 0.05;
/// (rule, scope) pairs whose matches are counted at most (each holds at most `threshold`
/// times); the oldest counts go first beyond it.
pub const COUNTED_MAX: usize = 10_000;
/// Firings kept at most (one per scope); a new one beyond it replaces the soonest to end.
pub const FIRINGS_MAX: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Action {
    /// The scope sends nothing; a source's mail goes to its pool's other sources.
    Suspend,
    /// The scope's rate at most this (messages a second).
    CapRate(f64),
    /// The scope's connections at most this.
    CapConnections(u32),
    /// The recipient whose reply matched bounces, whatever the code.
    Bounce,
}

impl Action {
    pub fn kind(&self) -> &'static str {
        match self {
            Action::Suspend => "suspend",
            Action::CapRate(_) => "cap_rate",
            Action::CapConnections(_) => "cap_connections",
            Action::Bounce => "bounce",
        }
    }

    pub fn text(&self) -> String {
        match self {
            Action::Suspend => "suspended".into(),
            Action::CapRate(r) => format!("rate capped at {r}/s"),
            Action::CapConnections(n) => format!("connections capped at {n}"),
            Action::Bounce => "bounced".into(),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Rule {
    pub name: String,
    /// On the reply as the delivery log writes it: code, enhanced code, text.
    pub pattern: regex::Regex,
    /// Providers (scope keys' destination part) it applies to; empty: every scope.
    pub providers: Vec<String>,
    pub threshold: u32,
    pub period: Duration,
    pub action: Action,
    pub duration: Duration,
    pub ramp: Duration,
    /// Shipped with Spate (`[delivery] default_rules`), not from the configuration.
    pub shipped: bool,
}

impl PartialEq for Rule {
    fn eq(&self, o: &Rule) -> bool {
        (
            &self.name,
            self.pattern.as_str(),
            &self.providers,
            self.threshold,
            self.period,
            self.action,
            self.duration,
            self.ramp,
        ) == (
            &o.name,
            o.pattern.as_str(),
            &o.providers,
            o.threshold,
            o.period,
            o.action,
            o.duration,
            o.ramp,
        )
    }
}

impl Rule {
    /// Whether it applies to replies from `scope` (a scope key).
    pub fn covers(&self, scope: &str) -> bool {
        self.providers.is_empty() || self.providers.iter().any(|p| p == split_key(scope).0)
    }
}

/// One rule in force on one scope.
#[derive(Debug, Clone, PartialEq)]
pub struct Firing {
    pub rule: String,
    pub scope: String,
    pub action: Action,
    pub since_unix_ms: u64,
    pub until_unix_ms: u64,
    /// After `until`: back to full over this long.
    pub ramp_ms: u64,
    /// The reply that fired it.
    pub reply: String,
}

impl Firing {
    /// In force (not yet ramping back).
    pub fn active(&self, now_unix_ms: u64) -> bool {
        now_unix_ms < self.until_unix_ms
    }

    /// Nothing left of it: its duration and ramp are over.
    pub fn over(&self, now_unix_ms: u64) -> bool {
        now_unix_ms >= self.until_unix_ms.saturating_add(self.ramp_ms)
    }

    /// How much of the scope is back: 0 while in force, then from `RAMP_START` to 1 over
    /// the ramp.
    pub fn back(&self, now_unix_ms: u64) -> f64 {
        if self.active(now_unix_ms) {
            return 0.0;
        }
        if self.ramp_ms == 0 {
            return 1.0;
        }
        let f = (now_unix_ms - self.until_unix_ms) as f64 / self.ramp_ms as f64;
        (RAMP_START + (1.0 - RAMP_START) * f).min(1.0)
    }
}

/// The firings in force, as every shard's routing and owner read them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Firings {
    /// By scope key.
    pub by_scope: HashMap<String, Firing>,
    /// Suspensions of a scope at a source: destination scope -> (source name, scope key).
    by_base: HashMap<String, Vec<(String, String)>>,
}

impl Firings {
    fn new(by_scope: HashMap<String, Firing>) -> Firings {
        let mut by_base: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for (key, f) in &by_scope {
            if f.action == Action::Suspend {
                if let (base, Some(source)) = split_key(key) {
                    by_base
                        .entry(base.to_string())
                        .or_default()
                        .push((source.to_string(), key.clone()));
                }
            }
        }
        Firings { by_scope, by_base }
    }

    pub fn is_empty(&self) -> bool {
        self.by_scope.is_empty()
    }

    /// How much of `base` sent from `source` is back (1: no suspension), for routing.
    pub fn source_back(&self, base: &str, source: &str, now_unix_ms: u64) -> f64 {
        let Some(list) = self.by_base.get(base) else {
            return 1.0;
        };
        list.iter()
            .find(|(s, _)| s == source)
            .and_then(|(_, key)| self.by_scope.get(key))
            .map_or(1.0, |f| f.back(now_unix_ms))
    }

    /// The suspension in force on `scope` itself (mail from the system's address, which has
    /// no other source to go to).
    pub fn suspended(&self, scope: &str, now_unix_ms: u64) -> Option<&Firing> {
        self.by_scope
            .get(scope)
            .filter(|f| f.action == Action::Suspend && f.active(now_unix_ms))
    }

    pub fn get(&self, scope: &str) -> Option<&Firing> {
        self.by_scope.get(scope)
    }
}

/// What a failure reply made of a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Matched {
    pub rule: String,
    pub action: Action,
    /// This match fired it (the threshold was reached, or it was in force already).
    pub fired: bool,
    /// It fired just now (a new firing), not while in force already.
    pub new: bool,
}

#[derive(Default)]
struct Inner {
    /// Match times (Unix ms) per (rule name, scope), the latest `threshold` of them.
    counts: HashMap<(String, String), VecDeque<u64>>,
    firings: HashMap<String, Firing>,
    /// Times each rule fired, since start.
    fired: HashMap<String, u64>,
    snapshot: Arc<Firings>,
}

/// Every shard's rules state: counts toward thresholds, the firings in force.
#[derive(Default)]
pub struct RuleBook {
    inner: Mutex<Inner>,
    generation: AtomicU64,
}

impl RuleBook {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The firings in force and their generation (it changes with them).
    pub fn snapshot(&self) -> (u64, Arc<Firings>) {
        let inner = self.lock();
        (
            self.generation.load(Ordering::Acquire),
            Arc::clone(&inner.snapshot),
        )
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Times each rule fired since start.
    pub fn fired(&self) -> HashMap<String, u64> {
        self.lock().fired.clone()
    }

    fn publish(&self, inner: &mut Inner) {
        inner.snapshot = Arc::new(Firings::new(inner.firings.clone()));
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// A failure reply (`text`: as the log writes it) from `scope` at `now`: the first rule
    /// of `rules` that covers the scope and matches it, counted; fired when its threshold is
    /// reached within its period (or while it is in force on the scope already).
    pub fn observe(
        &self,
        rules: &[Arc<Rule>],
        scope: &str,
        text: &str,
        now_unix_ms: u64,
    ) -> Option<Matched> {
        let rule = rules
            .iter()
            .find(|r| r.covers(scope) && r.pattern.is_match(text))?;
        let mut inner = self.lock();
        if let Some(f) = inner.firings.get(scope) {
            if f.rule == rule.name && f.active(now_unix_ms) {
                return Some(Matched {
                    rule: rule.name.clone(),
                    action: rule.action,
                    fired: true,
                    new: false,
                });
            }
        }
        let key = (rule.name.clone(), scope.to_string());
        if !inner.counts.contains_key(&key) && inner.counts.len() >= COUNTED_MAX {
            // Forget the counts whose latest match is oldest.
            if let Some(old) = inner
                .counts
                .iter()
                .min_by_key(|(_, t)| t.back().copied().unwrap_or(0))
                .map(|(k, _)| k.clone())
            {
                inner.counts.remove(&old);
            }
        }
        let period_ms = rule.period.as_millis() as u64;
        let times = inner.counts.entry(key.clone()).or_default();
        while times.front().is_some_and(|&t| t + period_ms <= now_unix_ms) {
            times.pop_front();
        }
        times.push_back(now_unix_ms);
        while times.len() > rule.threshold.max(1) as usize {
            times.pop_front();
        }
        let reached = times.len() >= rule.threshold.max(1) as usize;
        if !reached || rule.action == Action::Bounce {
            if reached {
                *inner.fired.entry(rule.name.clone()).or_default() += 1;
            }
            return Some(Matched {
                rule: rule.name.clone(),
                action: rule.action,
                fired: reached,
                new: false,
            });
        }
        inner.counts.remove(&key);
        if !inner.firings.contains_key(scope) && inner.firings.len() >= FIRINGS_MAX {
            if let Some(soonest) = inner
                .firings
                .values()
                .min_by_key(|f| f.until_unix_ms)
                .map(|f| f.scope.clone())
            {
                inner.firings.remove(&soonest);
            }
        }
        inner.firings.insert(
            scope.to_string(),
            Firing {
                rule: rule.name.clone(),
                scope: scope.to_string(),
                action: rule.action,
                since_unix_ms: now_unix_ms,
                until_unix_ms: now_unix_ms.saturating_add(rule.duration.as_millis() as u64),
                ramp_ms: rule.ramp.as_millis() as u64,
                reply: text.chars().take(300).collect(),
            },
        );
        *inner.fired.entry(rule.name.clone()).or_default() += 1;
        self.publish(&mut inner);
        Some(Matched {
            rule: rule.name.clone(),
            action: rule.action,
            fired: true,
            new: true,
        })
    }

    /// Ends the firing on `scope` now (an operator lifted it), its ramp starting at once;
    /// false if none was in force.
    pub fn lift(&self, scope: &str, now_unix_ms: u64) -> bool {
        let mut inner = self.lock();
        let Some(f) = inner.firings.get_mut(scope) else {
            return false;
        };
        if !f.active(now_unix_ms) {
            return false;
        }
        f.until_unix_ms = now_unix_ms;
        self.publish(&mut inner);
        true
    }

    /// The firings on scopes the cluster shares (`cluster::state::shared_scope`), as its
    /// hash holds them: scope to encoded firing.
    pub fn shared(&self, now_unix_ms: u64) -> std::collections::BTreeMap<String, String> {
        let inner = self.lock();
        inner
            .firings
            .values()
            .filter(|f| crate::cluster::state::shared_scope(&f.scope) && !f.over(now_unix_ms))
            .map(|f| (f.scope.clone(), crate::cluster::state::encode_firing(f)))
            .collect()
    }

    /// Other nodes' firings: one of a rule configured here (its action as configured here)
    /// is taken when this node has none on the scope or an older one; one lifted there (the
    /// same firing, ending sooner) is lifted here. True if anything changed.
    pub fn merge_remote(
        &self,
        remote: Vec<crate::cluster::state::RemoteFiring>,
        rules: &[Arc<Rule>],
        now_unix_ms: u64,
    ) -> bool {
        let mut inner = self.lock();
        let mut changed = false;
        for r in remote {
            let Some(rule) = rules.iter().find(|x| x.name == r.rule) else {
                continue;
            };
            let firing = Firing {
                rule: r.rule,
                scope: r.scope.clone(),
                action: rule.action,
                since_unix_ms: r.since_unix_ms,
                until_unix_ms: r.until_unix_ms,
                ramp_ms: r.ramp_ms,
                reply: r.reply,
            };
            if rule.action == Action::Bounce || firing.over(now_unix_ms) {
                continue;
            }
            let lifted = !firing.active(now_unix_ms);
            let take = match inner.firings.get(&r.scope) {
                None => inner.firings.len() < FIRINGS_MAX,
                Some(l) if l.rule == firing.rule && l.since_unix_ms == firing.since_unix_ms => {
                    firing.until_unix_ms < l.until_unix_ms
                }
                // Lifted there after this one began (a lift of another node's firing of the
                // same scope): lifted here too, from then.
                Some(l) if lifted && firing.until_unix_ms > l.since_unix_ms => {
                    firing.until_unix_ms < l.until_unix_ms
                }
                Some(l) => firing.since_unix_ms > l.since_unix_ms,
            };
            if take {
                if lifted {
                    if let Some(l) = inner.firings.get_mut(&r.scope) {
                        if l.since_unix_ms > firing.since_unix_ms {
                            l.until_unix_ms = firing.until_unix_ms;
                            changed = true;
                            continue;
                        }
                    }
                }
                inner.firings.insert(r.scope, firing);
                changed = true;
            }
        }
        if changed {
            self.publish(&mut inner);
        }
        changed
    }

    /// Forgets firings whose duration and ramp are over, and the states of rules that are
    /// no longer configured; a change is published.
    pub fn expire(&self, rules: &[Arc<Rule>], now_unix_ms: u64) {
        let mut inner = self.lock();
        let before = inner.firings.len();
        inner
            .firings
            .retain(|_, f| !f.over(now_unix_ms) && rules.iter().any(|r| r.name == f.rule));
        if inner.firings.len() != before {
            self.publish(&mut inner);
        }
    }
}

/// The rules Spate ships (`[delivery] default_rules = true`): the big providers' texts for a
/// sending address that is blocked or listed, which no pace fixes. Each suspends the source
/// at that provider (its mail going to the pool's other sources) and ramps it back.
pub fn shipped() -> Vec<Rule> {
    let rule = |name: &str, pattern: &str, threshold: u32, hours: u64| Rule {
        name: name.into(),
        pattern: regex::Regex::new(pattern).expect("shipped patterns compile"),
        providers: Vec::new(),
        threshold,
        period: Duration::from_secs(600),
        action: Action::Suspend,
        duration: Duration::from_secs(hours * 3600),
        ramp: Duration::from_secs(1800),
        shipped: true,
    };
    vec![
        // Microsoft: "550 5.7.606 Access denied, banned sending IP [x]" (S3140 and kin).
        rule(
            "microsoft-banned-ip",
            r"(?i)\b5\.7\.60[6-9]\b|banned sending ip|\bS3(?:140|150)\b",
            1,
            4,
        ),
        // Yahoo: "[TS03] All messages from x will be permanently deferred".
        rule("yahoo-ts03", r"(?i)\[TS03\]", 1, 4),
        // Gmail: "the very low reputation of the sending IP address".
        rule(
            "gmail-ip-reputation",
            r"(?i)low reputation of the sending ip",
            3,
            1,
        ),
        // A public blocklist names the address (Spamhaus and the like).
        rule(
            "blocklisted-ip",
            r"(?i)spamhaus|\b(?:block|black)[- ]?list(?:ed)?\b|\blisted (?:at|on|in|by)\b|\bRBL\b",
            3,
            1,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(threshold: u32, action: Action) -> Arc<Rule> {
        Arc::new(Rule {
            name: "r".into(),
            pattern: regex::Regex::new(r"(?i)banned").unwrap(),
            providers: vec!["ms".into()],
            threshold,
            period: Duration::from_secs(60),
            action,
            duration: Duration::from_secs(100),
            ramp: Duration::from_secs(100),
            shipped: false,
        })
    }

    /// The cluster's firings: another node's on a shared scope is taken, a lift of it too;
    /// an older one, one of a rule not configured here and one on a scope at a source are
    /// not; what this node shares leaves its own sources' firings out.
    #[test]
    fn other_nodes_firings_merge_by_age_and_lift() {
        use crate::cluster::state::{decode_firing, encode_firing};
        let book = RuleBook::default();
        let rules = [rule(1, Action::Suspend)];
        assert!(book.observe(&rules, "ms", "550 banned", 1_000).unwrap().new);
        assert!(
            book.observe(&rules, "ms@a", "550 banned", 1_000)
                .unwrap()
                .new
        );
        let shared = book.shared(2_000);
        assert_eq!(shared.keys().collect::<Vec<_>>(), ["ms"]);
        let remote = |scope: &str, rule: &str, since: u64, until: u64| {
            let f = Firing {
                rule: rule.into(),
                scope: scope.into(),
                action: Action::Suspend,
                since_unix_ms: since,
                until_unix_ms: until,
                ramp_ms: 100_000,
                reply: "550 banned".into(),
            };
            decode_firing(scope, &encode_firing(&f))
        };
        // Older, or of a rule this node does not have: nothing changes.
        let older = remote("ms", "r", 500, 100_500).unwrap();
        let unknown = remote("ms2", "other", 1_500, 101_500).unwrap();
        assert!(!book.merge_remote(vec![older, unknown], &rules, 2_000));
        assert!(remote("ms@b", "r", 1_500, 101_500).is_none());
        // The same firing lifted there (ending now): lifted here.
        let lifted = remote("ms", "r", 1_000, 3_000).unwrap();
        assert!(book.merge_remote(vec![lifted], &rules, 3_000));
        let (_, f) = book.snapshot();
        assert!(!f.get("ms").unwrap().active(3_000));
        // Another node's older firing of the scope, lifted there after this node's own
        // began: lifted here too (this node's firing, ending then).
        let other = RuleBook::default();
        assert!(
            other
                .observe(&rules, "ms", "550 banned", 6_000)
                .unwrap()
                .new
        );
        let lifted_there = remote("ms", "r", 5_000, 7_000).unwrap();
        assert!(other.merge_remote(vec![lifted_there], &rules, 7_000));
        let (_, f) = other.snapshot();
        assert!(!f.get("ms").unwrap().active(7_000));
        assert_eq!(f.get("ms").unwrap().since_unix_ms, 6_000);
        // A newer one on a scope this node had none on: taken, with this node's action.
        let new = remote("site:mx.example", "r", 4_000, 104_000).unwrap();
        assert!(book.merge_remote(vec![new], &rules, 5_000));
        let (_, f) = book.snapshot();
        assert_eq!(f.suspended("site:mx.example", 5_000).unwrap().rule, "r");
    }

    #[test]
    fn a_threshold_within_the_period_fires_once_for_its_scope() {
        let book = RuleBook::default();
        let rules = [rule(3, Action::Suspend)];
        let hit = |scope: &str, t: u64| book.observe(&rules, scope, "550 5.7.606 BANNED ip", t);
        // Not its provider, or not its text: nothing.
        assert_eq!(book.observe(&rules, "gmail@a", "550 banned", 0), None);
        assert_eq!(book.observe(&rules, "ms@a", "451 try later", 0), None);
        // Two matches, then one past the period: not yet.
        assert!(!hit("ms@a", 0).unwrap().fired);
        assert!(!hit("ms@a", 1_000).unwrap().fired);
        assert!(!hit("ms@a", 61_000).unwrap().fired);
        assert!(!hit("ms@a", 62_000).unwrap().fired);
        let g = book.generation();
        // The third within 60 s fires it, on that scope only.
        assert!(hit("ms@a", 63_000).unwrap().fired);
        assert!(book.generation() > g);
        let (_, f) = book.snapshot();
        assert_eq!(f.source_back("ms", "a", 64_000), 0.0);
        assert_eq!(f.source_back("ms", "b", 64_000), 1.0);
        // While in force, a match is part of it (and changes nothing).
        let g = book.generation();
        assert!(hit("ms@a", 70_000).unwrap().fired);
        assert_eq!(book.generation(), g);
        // After its duration, the ramp: from 5% to all over 100 s.
        let (_, f) = book.snapshot();
        let until = 63_000 + 100_000;
        assert!((f.source_back("ms", "a", until) - RAMP_START).abs() < 1e-9);
        assert!((f.source_back("ms", "a", until + 50_000) - 0.525).abs() < 1e-9);
        book.expire(&rules, until + 100_000);
        assert!(book.snapshot().1.is_empty());
        assert_eq!(book.fired()["r"], 1);
    }

    #[test]
    fn lifting_starts_the_ramp_and_a_system_scope_is_suspended_whole() {
        let book = RuleBook::default();
        let rules = [rule(1, Action::Suspend)];
        assert!(book.observe(&rules, "ms", "banned", 0).unwrap().fired);
        let (_, f) = book.snapshot();
        assert!(f.suspended("ms", 1).is_some());
        assert!(book.lift("ms", 10));
        assert!(!book.lift("ms", 11), "lifted already");
        let (_, f) = book.snapshot();
        assert!(f.suspended("ms", 11).is_none());
        assert!(f.get("ms").unwrap().back(11) > 0.0);
        // A rule no longer configured leaves no firing behind.
        book.expire(&[], 12);
        assert!(book.snapshot().1.is_empty());
    }

    #[test]
    fn bounce_rules_fire_per_reply_and_keep_no_state() {
        let book = RuleBook::default();
        let rules = [rule(1, Action::Bounce)];
        let m = book.observe(&rules, "ms@a", "451 banned", 0).unwrap();
        assert_eq!((m.action, m.fired), (Action::Bounce, true));
        assert!(book.snapshot().1.is_empty());
    }

    #[test]
    fn shipped_rules_match_the_providers_texts() {
        let rules: Vec<Arc<Rule>> = shipped().into_iter().map(Arc::new).collect();
        let first = |text: &str| {
            rules
                .iter()
                .find(|r| r.pattern.is_match(text))
                .map(|r| r.name.as_str())
        };
        assert_eq!(
            first("550 5.7.606 Access denied, banned sending IP [192.0.2.1]. To request removal from this list please visit https://sender.office.com/"),
            Some("microsoft-banned-ip")
        );
        assert_eq!(
            first("553 5.7.1 [TS03] All messages from 192.0.2.1 will be permanently deferred; Retrying will NOT succeed."),
            Some("yahoo-ts03")
        );
        assert_eq!(
            first("421 4.7.0 This message is suspicious due to the very low reputation of the sending IP address."),
            Some("gmail-ip-reputation")
        );
        assert_eq!(
            first("554 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org"),
            Some("blocklisted-ip")
        );
        // Rate texts are the throttle's, a bad mailbox the recipient's.
        assert_eq!(first("421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume"), None);
        assert_eq!(
            first("550 5.1.1 The email account that you tried to reach does not exist"),
            None
        );
        assert_eq!(first("450 4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages"), None);
    }

    #[test]
    fn counts_and_firings_stay_within_their_bounds() {
        let book = RuleBook::default();
        // Threshold 2: each scope's first match is a count, never a firing.
        let counting = [rule(2, Action::Suspend)];
        for n in 0..COUNTED_MAX as u64 + 50 {
            let scope = format!("ms@s{n}");
            assert!(
                !book
                    .observe(&counting, &scope, "550 banned", n)
                    .unwrap()
                    .fired
            );
        }
        assert_eq!(book.lock().counts.len(), COUNTED_MAX);
        // The oldest went: the newest scope's second match fires, the first scope's counts
        // again from one.
        let last = format!("ms@s{}", COUNTED_MAX as u64 + 49);
        assert!(
            book.observe(&counting, &last, "550 banned", 20_000)
                .unwrap()
                .fired
        );
        assert!(
            !book
                .observe(&counting, "ms@s0", "550 banned", 20_001)
                .unwrap()
                .fired
        );
        // Threshold 1: every scope fires; the firing ending soonest goes first.
        let book = RuleBook::default();
        let firing = [rule(1, Action::Suspend)];
        for n in 0..FIRINGS_MAX as u64 + 50 {
            let scope = format!("ms@f{n}");
            assert!(
                book.observe(&firing, &scope, "550 banned", n)
                    .unwrap()
                    .fired
            );
        }
        let inner = book.lock();
        assert_eq!(inner.firings.len(), FIRINGS_MAX);
        assert!(!inner.firings.contains_key("ms@f0"));
        assert!(inner
            .firings
            .contains_key(&format!("ms@f{}", FIRINGS_MAX as u64 + 49)));
    }
}
