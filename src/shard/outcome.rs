//! The outcome stage: what a transaction's results (or routing) make of each recipient, by
//! `crate::delivery::policy::decide`: the queue record, the delivery-log line, the retry time.

use super::*;
use crate::delivery::policy::{classify, decide, Attempted, BounceCategory, Decision, RetryPolicy};
use crate::queue::record::{MessagePayload, OutcomePayload, OutcomeState, RecipientPayload};
use crate::queue::store::EntryState;
use std::sync::atomic::Ordering;

/// The retry schedule of a configuration.
pub fn retry_policy(config: &Config) -> RetryPolicy {
    RetryPolicy {
        first: config.delivery.retry_first,
        max_interval: config.delivery.retry_max_interval,
        max_age: config.delivery.max_age,
        ..RetryPolicy::default()
    }
}

impl<L: LogSink> Core<L> {
    /// Results from an owner, for recipients of this home.
    pub(super) fn on_outcomes(&mut self, items: Vec<OutcomeItem>, scope: &str) {
        self.warm_outcomes(scope, &items);
        for item in items {
            let outcome = match &item.result {
                ItemResult::Smtp(result) => {
                    let mut o = classify(result);
                    self.apply_rules(scope, &mut o);
                    o
                }
                ItemResult::Decided(outcome) => outcome.clone(),
            };
            self.finish(item.seq, &outcome, Some((&item, scope)));
        }
        self.effects.push(Effect::Commit);
    }

    /// Records what happened to one recipient: queue record (written with the next group
    /// commit, after its log line), delivery-log line, and the next step (a retry time, or
    /// final).
    pub(super) fn finish(&mut self, seq: u64, o: &Outcome, via: Option<(&OutcomeItem, &str)>) {
        let now = self.clock.unix_ms();
        let Some(e) = self.queue.index.entry(seq).copied() else {
            return;
        };
        if e.state == EntryState::Vacant {
            return;
        }
        let attempt = u32::from(e.attempts) + 1;
        let queued_ms = self
            .queue
            .index
            .messages
            .get(&e.message_seq)
            .map_or(now, |m| m.created_unix_ms);
        let domain = self.queue.index.domain_names[e.domain as usize].to_string();
        let Decision {
            event,
            state,
            due_unix_ms: due_ms,
            category,
            attempts,
        } = decide(
            o,
            Attempted {
                seq,
                attempts: e.attempts,
                queued_unix_ms: queued_ms,
            },
            now,
            &retry_policy(&self.config),
        );
        if let Err(err) = self.queue.append_outcome(OutcomePayload {
            recipient_seq: seq,
            state,
            attempts: u16::from(attempts),
            due_unix_ms: due_ms,
            ts_unix_ms: now,
        }) {
            self.fatal(err.to_string());
            return;
        }
        let rcpt_from_queue;
        let (rcpt, message_id, mx, ip, tls, provider) = match via {
            Some((item, scope)) => (
                item.rcpt.as_str(),
                item.message_id.as_str(),
                item.mx.as_str(),
                item.ip.as_str(),
                item.tls.as_str(),
                scope,
            ),
            None => {
                rcpt_from_queue = self
                    .queue
                    .payload_at(seq, e.offset)
                    .ok()
                    .and_then(|p| {
                        RecipientPayload::decode_recipient(&p)
                            .ok()
                            .map(|(_, r)| r.to_string())
                    })
                    .unwrap_or_default();
                (rcpt_from_queue.as_str(), "", "", "", "", "")
            }
        };
        // Outcomes decided before rendering (DNS) still name their sender and campaign: from
        // the parsed message if there is one, else from its record (no template is parsed
        // for this).
        let cached = self.renderings.get(&e.message_seq).cloned();
        let from_record = match cached {
            Some(_) => None,
            None => message_labels(&self.queue, e.message_seq),
        };
        // A message with no live recipient left is never rendered again.
        let message_done = state != OutcomeState::Deferred
            && self
                .queue
                .index
                .messages
                .get(&e.message_seq)
                .is_none_or(|m| m.live == 0);
        if message_done {
            self.renderings.remove(&e.message_seq);
        }
        let (sender, campaign, tenant, returned) = match (&cached, &from_record) {
            (Some(r), _) => (
                r.sender.as_str(),
                r.campaign.as_str(),
                r.tenant.as_str(),
                r.returned,
            ),
            (None, Some((s, c, t, f))) => (s.as_str(), c.as_str(), t.as_str(), *f),
            (None, None) => ("", "", "", false),
        };
        let enhanced = o.enhanced.map(|c| c.to_string()).unwrap_or_default();
        // A scope at an egress source (`yahoo@mta1`): the log names the provider and the
        // source's address.
        let (base, _) = crate::delivery::scope::split_key(provider);
        let source = crate::delivery::scope::source_of(&self.config, provider)
            .map(|s| s.address.to_string())
            .unwrap_or_default();
        let record = LogRecord {
            ts_unix_ms: now,
            event: Some(event),
            recipient: rcpt,
            sender,
            campaign,
            tenant,
            domain: &domain,
            provider: base,
            source: &source,
            scope: provider,
            mx,
            ip,
            tls,
            code: Some(o.code),
            enhanced: &enhanced,
            response: &o.response,
            attempt: Some(attempt),
            message_id,
            bounce_category: category.map_or("", BounceCategory::as_str),
        };
        if let Err(err) = self.log.append(&record) {
            self.fatal(format!("delivery log: {err}"));
        }
        // A receiver said the mailbox does not exist: no more mail to it, from anyone, for
        // `bad_mailbox_expire`. Not from Spate's own decisions (code 0) or its own reports
        // (null sender).
        if state == OutcomeState::Bounced
            && category == Some(BounceCategory::BadMailbox)
            && o.code >= 500
            && !sender.is_empty()
            && self.config.suppression.learn_bad_mailboxes
        {
            self.learn_bad_mailbox(rcpt, now);
        }
        if returned && !sender.is_empty() {
            let remote = mx.to_string();
            self.note_for_report(seq, &e, state, o, &remote);
        }
        match state {
            OutcomeState::Deferred => self.home.defer(seq, due_ms),
            OutcomeState::Delivered
            | OutcomeState::Bounced
            | OutcomeState::Expired
            | OutcomeState::Moved
            | OutcomeState::Transferred => {
                let c = &self.counters;
                c.live_recipients.fetch_sub(1, Ordering::Relaxed);
                match state {
                    OutcomeState::Delivered => c.delivered.fetch_add(1, Ordering::Relaxed),
                    _ => c.failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    }
}

/// A message's sender, campaign and tenant, read from its queue record, and whether its
/// failures go back to its sender.
fn message_labels(queue: &ShardQueue, message_seq: u64) -> Option<(String, String, String, bool)> {
    let info = queue.index.messages.get(&message_seq)?;
    let payload = queue.payload_at(message_seq, info.offset).ok()?;
    let m = MessagePayload::decode(&payload).ok()?;
    Some((
        m.sender.to_string(),
        m.campaign.to_string(),
        m.tenant.to_string(),
        m.flags & crate::queue::record::MESSAGE_RETURN != 0,
    ))
}

impl<L: LogSink> Core<L> {
    /// Suppresses `rcpt` as a bad mailbox from `now`'s day on, and notes the entry for this
    /// shard's store file.
    fn learn_bad_mailbox(&mut self, rcpt: &str, now_unix_ms: u64) {
        let source = crate::suppression::Source::BadMailbox {
            day: crate::suppression::day_of(now_unix_ms),
        };
        self.suppressions.add("", rcpt, source.clone());
        let entry = crate::suppression::store::Entry {
            tenant: String::new(),
            entry: rcpt.to_string(),
            source,
            at_unix_ms: 0,
        };
        if self.learnt.len() < super::LEARNT_BYTES_MAX {
            entry.encode(&mut self.learnt);
        }
        self.suppressions.made_here(entry);
    }
}
