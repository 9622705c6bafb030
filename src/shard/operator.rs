//! Operators' commands as one shard carries them out (the admin API asks every shard and
//! puts the answers together): holds applied, deferred recipients retried now, and what a
//! domain's or a recipient's mail is waiting for here.

use super::*;
use crate::admin::holds::{Holds, Target};
use crate::queue::record::RecipientPayload;
use crate::queue::store::EntryState;
use crate::schedule::operator::{DomainState, RouteState};

/// Live entries `why` looks at per shard at most (a domain with more is answered from the
/// counts, the recipient search stops there).
pub const WHY_SCAN_MAX: usize = 5_000_000;

/// One domain's mail on one home shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainWhy {
    pub shard: usize,
    pub queued: u64,
    pub deferred: u64,
    pub in_flight: u64,
    /// The soonest retry time of its deferred recipients (Unix ms).
    pub next_due_unix_ms: Option<u64>,
    /// When its oldest queued recipient's message was queued (Unix ms).
    pub oldest_unix_ms: Option<u64>,
    pub state: DomainState,
}

/// One recipient's state on its home shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientWhy {
    pub shard: usize,
    /// "waiting", "deferred", "in flight" or "held".
    pub state: &'static str,
    pub due_unix_ms: Option<u64>,
    pub attempts: u8,
    pub campaign: String,
    pub tenant: String,
    /// The pool its message names (empty: its tenant's or the default).
    pub pool: String,
    pub queued_unix_ms: u64,
}

impl<L: LogSink> Core<L> {
    /// Operators' holds changed: applied from the next tick.
    pub fn set_holds(&mut self, holds: Arc<Holds>) {
        self.home.set_holds(holds, &self.queue.index);
        self.effects.push(Effect::Schedule);
    }

    /// Deferred recipients `target` names are due now; how many.
    pub fn retry_now(&mut self, target: &Target) -> u64 {
        let n = self.home.retry_now(target, &self.queue.index).recipients;
        if n > 0 {
            self.effects.push(Effect::Schedule);
        }
        n
    }

    /// `domain`'s mail queued here, and what this home knows of its route.
    pub fn why_domain(&self, domain: &str) -> DomainWhy {
        let index = &self.queue.index;
        let mut w = DomainWhy {
            shard: self.id,
            queued: 0,
            deferred: 0,
            in_flight: 0,
            next_due_unix_ms: None,
            oldest_unix_ms: None,
            state: self.home.domain_state(domain, index),
        };
        for (_, e) in index.live_entries().take(WHY_SCAN_MAX) {
            if &*index.domain_names[e.domain as usize] != domain {
                continue;
            }
            w.queued += 1;
            match e.state {
                EntryState::Deferred => {
                    w.deferred += 1;
                    let due = u64::from(e.due_unix_s) * 1000;
                    w.next_due_unix_ms = Some(w.next_due_unix_ms.map_or(due, |d| d.min(due)));
                }
                EntryState::InFlight => w.in_flight += 1,
                EntryState::Waiting | EntryState::Vacant => {}
            }
            if let Some(m) = index.messages.get(&e.message_seq) {
                let t = m.created_unix_ms;
                w.oldest_unix_ms = Some(w.oldest_unix_ms.map_or(t, |o| o.min(t)));
            }
        }
        w
    }

    /// `rcpt` (an address, compared without regard to case) if it is queued here.
    pub fn why_recipient(&self, rcpt: &str) -> Option<RecipientWhy> {
        let domain = rcpt.rsplit_once('@')?.1.to_ascii_lowercase();
        let index = &self.queue.index;
        for (seq, e) in index.live_entries().take(WHY_SCAN_MAX) {
            if *index.domain_names[e.domain as usize] != *domain {
                continue;
            }
            let Ok(payload) = self.queue.payload_at(seq, e.offset) else {
                continue;
            };
            let Ok((_, addr)) = RecipientPayload::decode_recipient(&payload) else {
                continue;
            };
            if !addr.eq_ignore_ascii_case(rcpt) {
                continue;
            }
            let m = index.messages.get(&e.message_seq);
            let state = match e.state {
                _ if self.home.is_held(seq) => "held",
                EntryState::Deferred => "deferred",
                EntryState::InFlight => "in flight",
                EntryState::Waiting | EntryState::Vacant => "waiting",
            };
            return Some(RecipientWhy {
                shard: self.id,
                state,
                due_unix_ms: (e.state == EntryState::Deferred)
                    .then_some(u64::from(e.due_unix_s) * 1000),
                attempts: e.attempts,
                campaign: m.map(|m| m.campaign.to_string()).unwrap_or_default(),
                tenant: m.map(|m| m.tenant.to_string()).unwrap_or_default(),
                pool: m.map(|m| m.pool.to_string()).unwrap_or_default(),
                queued_unix_ms: m.map_or(0, |m| m.created_unix_ms),
            });
        }
        None
    }

    /// The scope `domain` routes to here, if known.
    pub fn scope_of(&self, domain: &str) -> Option<String> {
        match self.home.domain_state(domain, &self.queue.index).route {
            RouteState::Scope(s) => Some(s),
            _ => None,
        }
    }
}
