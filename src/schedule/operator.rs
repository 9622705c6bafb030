//! The home's side of operators' commands: suspensions and bounces checked as recipients
//! are routed (`Home::tick`), a change of them applied, deferred recipients retried now, and
//! what one domain's recipients are waiting for (`queue why`).

use super::*;
use crate::admin::holds::Target;
use crate::delivery::policy::{BounceCategory, Fault};

/// The bounce of a recipient an operator bounced (code 0: Spate's own decision).
pub fn admin_bounce(reason: &str) -> Outcome {
    Outcome {
        verdict: Verdict::Bounced,
        fault: Fault::Message,
        code: 0,
        enhanced: Some(crate::smtp::reply::EnhancedCode::new(5, 0, 0)),
        response: if reason.is_empty() {
            "bounced by an operator".to_string()
        } else {
            format!("bounced by an operator: {reason}")
        },
        category: Some(BounceCategory::Admin),
        pushback: false,
    }
}

/// The holds' verdict for a recipient of `message_seq` at `domain`.
pub(super) fn check_message<'h>(
    holds: &'h Holds,
    index: &Index,
    message_seq: u64,
    domain: &str,
) -> Option<HoldVerdict<'h>> {
    let m = index.messages.get(&message_seq)?;
    holds.check_message(domain, &m.campaign, &m.tenant, m.created_unix_ms)
}

/// The holds' verdict for a recipient of `message_seq` routed to `scope`: its own, or (for
/// a scope at one source, `yahoo@mta1`) its destination's, `yahoo`.
pub(super) fn check_scopes<'h>(
    holds: &'h Holds,
    index: &Index,
    message_seq: u64,
    scope: &str,
) -> Option<HoldVerdict<'h>> {
    let created = index
        .messages
        .get(&message_seq)
        .map_or(0, |m| m.created_unix_ms);
    let base = crate::delivery::scope::split_key(scope).0;
    holds
        .check_scope(base, created)
        .or_else(|| (base != scope).then(|| holds.check_scope(scope, created))?)
}

/// How many recipients a command reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Matched {
    pub recipients: u64,
}

impl Home {
    /// New holds: every recipient held, waiting for credit or (for a new bounce) deferred
    /// is checked again at the next tick, so a resume releases at once, a suspension stops
    /// what has not been rendered yet, and a bounce reaches the deferred too.
    pub fn set_holds(&mut self, holds: Arc<Holds>, index: &Index) {
        let new_bounces = holds
            .bounces
            .iter()
            .any(|r| !self.holds.bounces.contains(r));
        self.holds = holds;
        self.release_held();
        self.reroute_pending(|_| true);
        if new_bounces {
            let holds = Arc::clone(&self.holds);
            self.pull_deferred(index, |home, _, e| {
                let domain = &index.domain_names[e.domain as usize];
                let scope = home.scope_of(domain);
                matches!(
                    check_message(&holds, index, e.message_seq, domain),
                    Some(HoldVerdict::Bounce(_))
                ) || scope.is_some_and(|s| {
                    matches!(
                        check_scopes(&holds, index, e.message_seq, s),
                        Some(HoldVerdict::Bounce(_))
                    )
                })
            });
        }
    }

    /// Deferred recipients matching `target` become due now (`queue retry`).
    pub fn retry_now(&mut self, target: &Target, index: &Index) -> Matched {
        self.pull_deferred(index, |home, _, e| {
            let domain = &index.domain_names[e.domain as usize];
            matches(target, index, e.message_seq, domain, home.scope_of(domain))
        })
    }

    /// Moves the deferred recipients `pick` chooses to the front of the ready queue.
    fn pull_deferred(
        &mut self,
        index: &Index,
        mut pick: impl FnMut(&Home, u64, &crate::queue::index::Entry) -> bool,
    ) -> Matched {
        let all = std::mem::take(&mut self.deferred).into_vec();
        let mut keep = Vec::with_capacity(all.len());
        let mut now = Vec::new();
        for Reverse((due, seq)) in all {
            match index.entry(seq) {
                Some(e) if pick(self, seq, e) => now.push(seq),
                _ => keep.push(Reverse((due, seq))),
            }
        }
        self.deferred = BinaryHeap::from(keep);
        let n = now.len() as u64;
        for seq in now.into_iter().rev() {
            self.ready.push_front(seq);
        }
        Matched { recipients: n }
    }

    /// The scope `domain` routes to, if its route is known.
    pub fn scope_of(&self, domain: &str) -> Option<&str> {
        match self.routes.get_any(domain) {
            Some(Route::Scope(scope, _)) => Some(&scope.key),
            _ => None,
        }
    }

    /// What this home knows of `domain`: its route, whether it is being resolved (and how
    /// many lookups failed), the recipients held.
    pub fn domain_state(&self, domain: &str, index: &Index) -> DomainState {
        let route = match self.routes.get_any(domain) {
            Some(Route::Scope(scope, _)) => RouteState::Scope(scope.key.clone()),
            Some(Route::Decided(o)) => RouteState::Decided(o.response.clone()),
            None => RouteState::Unknown,
        };
        let held = self
            .held
            .iter()
            .filter(|&&seq| {
                index
                    .entry(seq)
                    .is_some_and(|e| &*index.domain_names[e.domain as usize] == domain)
            })
            .count() as u64;
        DomainState {
            route,
            resolving: self.resolving.get(domain).map_or(0, |v| v.len() as u64),
            lookup_failures: self.failures.get(domain).copied().unwrap_or(0),
            held,
        }
    }

    /// True if `seq` is held by a suspension here.
    pub fn is_held(&self, seq: u64) -> bool {
        self.held.contains(&seq)
    }

    /// The recipients held by suspensions here.
    pub fn held(&self) -> &[u64] {
        &self.held
    }

    pub fn holds(&self) -> &Arc<Holds> {
        &self.holds
    }
}

/// Where a domain's mail goes, as far as this home knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteState {
    Scope(String),
    /// Routing decided for every recipient (null MX, NXDOMAIN, a lookup that keeps failing).
    Decided(String),
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainState {
    pub route: RouteState,
    pub resolving: u64,
    pub lookup_failures: u32,
    pub held: u64,
}

/// True if a recipient of `message_seq` at `domain` (routed to `scope`, if known) is one
/// `target` names.
pub fn matches(
    target: &Target,
    index: &Index,
    message_seq: u64,
    domain: &str,
    scope: Option<&str>,
) -> bool {
    let m = index.messages.get(&message_seq);
    match target {
        Target::Domain(d) => d == domain,
        Target::Campaign(c) => m.is_some_and(|m| &*m.campaign == c),
        Target::Tenant(t) => m.is_some_and(|m| &*m.tenant == t),
        Target::Scope(s) => {
            scope.is_some_and(|k| k == s || crate::delivery::scope::split_key(k).0 == s.as_str())
        }
        Target::Source(s) => {
            scope.is_some_and(|k| crate::delivery::scope::split_key(k).1 == Some(s.as_str()))
        }
    }
}
