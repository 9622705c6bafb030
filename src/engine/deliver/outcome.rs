//! The outcome stage's shell: what a transaction's results (or routing) make of each
//! recipient, by `crate::delivery::policy::decide`: the queue record, the delivery-log line,
//! the retry time.

use super::*;

pub(in crate::engine) fn retry_policy(config: &Config) -> RetryPolicy {
    RetryPolicy {
        first: config.delivery.retry_first,
        max_interval: config.delivery.retry_max_interval,
        max_age: config.delivery.max_age,
        ..RetryPolicy::default()
    }
}

impl Shard {
    /// Home: results from an owner.
    pub(in crate::engine) fn on_outcomes(self: &Rc<Self>, items: Vec<OutcomeItem>, scope: String) {
        for item in items {
            let outcome = match &item.result {
                ItemResult::Smtp(result) => classify(result),
                ItemResult::Decided(outcome) => outcome.clone(),
            };
            self.finish(item.seq, &outcome, Some((&item, scope.as_str())));
        }
        let _ = self.sync_kick.try_send(());
    }

    /// Records what happened to one recipient: queue record, delivery log, next step.
    pub(in crate::engine) fn finish(
        &self,
        seq: u64,
        o: &Outcome,
        via: Option<(&OutcomeItem, &str)>,
    ) {
        let config = self.config.borrow().clone();
        let now = self.shared.clock.unix_ms();
        let mut queue = self.queue.borrow_mut();
        let Some(e) = queue.index.entry(seq).copied() else {
            return;
        };
        if e.state == EntryState::Vacant {
            return;
        }
        let attempt = u32::from(e.attempts) + 1;
        let message = queue.index.messages.get(&e.message_seq).cloned();
        let queued_ms = message.as_ref().map_or(now, |m| m.created_unix_ms);
        let domain = queue.index.domain_names[e.domain as usize].to_string();
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
            &retry_policy(&config),
        );
        if let Err(err) = queue.append_outcome(OutcomePayload {
            recipient_seq: seq,
            state,
            attempts: u16::from(attempts),
            due_unix_ms: due_ms,
            ts_unix_ms: now,
        }) {
            self.shared.fail(err.to_string());
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
                rcpt_from_queue = queue
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
        let cached = self.renderings.borrow().get(&e.message_seq).cloned();
        let from_record = match cached {
            Some(_) => None,
            None => message_labels(&queue, e.message_seq),
        };
        // A message with no live recipient left is never rendered again.
        let message_done = state != OutcomeState::Deferred
            && queue
                .index
                .messages
                .get(&e.message_seq)
                .is_none_or(|m| m.live == 0);
        drop(queue);
        if message_done {
            self.renderings.borrow_mut().remove(&e.message_seq);
        }
        let (sender, campaign, tenant) = match (&cached, &from_record) {
            (Some(r), _) => (r.sender.as_str(), r.campaign.as_str(), r.tenant.as_str()),
            (None, Some((s, c, t))) => (s.as_str(), c.as_str(), t.as_str()),
            (None, None) => ("", "", ""),
        };
        let enhanced = o.enhanced.map(|c| c.to_string()).unwrap_or_default();
        let record = LogRecord {
            ts_unix_ms: now,
            event: Some(event),
            recipient: rcpt,
            sender,
            campaign,
            tenant,
            domain: &domain,
            provider,
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
        if let Err(err) = self.log.borrow_mut().append(&record) {
            self.shared.fail(format!("delivery log: {err}"));
        }
        match state {
            OutcomeState::Deferred => self.home.borrow_mut().defer(seq, due_ms),
            OutcomeState::Delivered
            | OutcomeState::Bounced
            | OutcomeState::Expired
            | OutcomeState::Moved => {
                self.shared
                    .counters
                    .live_recipients
                    .fetch_sub(1, Ordering::Relaxed);
                match state {
                    OutcomeState::Delivered => self
                        .shared
                        .counters
                        .delivered
                        .fetch_add(1, Ordering::Relaxed),
                    _ => self.shared.counters.failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    }
}

/// A message's sender, campaign and tenant, read from its queue record.
pub(in crate::engine) fn message_labels(
    queue: &crate::queue::store::ShardQueue,
    message_seq: u64,
) -> Option<(String, String, String)> {
    let info = queue.index.messages.get(&message_seq)?;
    let payload = queue.payload_at(message_seq, info.offset).ok()?;
    let m = MessagePayload::decode(&payload).ok()?;
    Some((
        m.sender.to_string(),
        m.campaign.to_string(),
        m.tenant.to_string(),
    ))
}
