//! What a gateway message's sender gets back (`crate::dsn`): when one of its recipients
//! reaches a final outcome that the recipient's NOTIFY asks about, the home notes it; the
//! recipients of one message noted before the queue's next write of outcome records share
//! one report (up to `dsn::REPORT_RECIPIENTS_MAX`), queued to the sender, from `<>`, on this
//! shard's own queue.
//!
//! Ordering: outcome records are held until the delivery log's lines are written
//! (`ShardQueue::write_held_outcomes`, by `Core::append` and `Core::begin_commit`), and
//! every pending report is appended before that write. So the segment has a report before
//! the outcome it tells of: a crash between the two keeps the report and tries the
//! recipient again (which may send a second report), never the outcome without its report.
//! A report is never returned itself (its sender is `<>`).

use super::*;
use crate::delivery::policy::Outcome;
use crate::dsn::{self, Action, RecipientReport};
use crate::queue::index::Entry;
use crate::queue::record::{
    MessagePayload, OutcomeState, RecipientPayload, MESSAGE_RETURN, MESSAGE_RET_HDRS,
    MESSAGE_VERBATIM,
};
use crate::queue::store::MessageSpec;

/// Set in the batch id of every report (the shell's batch ids stay below it: nanoseconds
/// since 1970 reach 2^63 in 2262), so the two never collide.
const NOTIFICATION_BATCH_BIT: u64 = 1 << 63;

/// True for the batch id of a report this core queued.
pub(super) fn is_notification(batch_id: u64) -> bool {
    batch_id & NOTIFICATION_BATCH_BIT != 0
}

/// Reports waiting for the next write of outcome records: per message record, its ENVID
/// and the recipients to report.
#[derive(Debug, Default)]
pub struct PendingReports {
    by_message: Vec<(u64, String, Vec<RecipientReport>)>,
}

impl PendingReports {
    fn is_empty(&self) -> bool {
        self.by_message.is_empty()
    }
}

impl<L: LogSink> Core<L> {
    /// Notes recipient `seq`'s final outcome (`state`, from `o`; `remote`: the MX that
    /// answered) for a report to its message's sender, if its NOTIFY asks for one. Only the
    /// recipient's own record is read here; the message is read once per report.
    pub(super) fn note_for_report(
        &mut self,
        seq: u64,
        e: &Entry,
        state: OutcomeState,
        o: &Outcome,
        remote: &str,
    ) {
        let action = match state {
            OutcomeState::Bounced | OutcomeState::Expired => Action::Failed,
            OutcomeState::Delivered => Action::Relayed,
            OutcomeState::Deferred | OutcomeState::Moved | OutcomeState::Transferred => return,
        };
        let Ok(recipient) = self.queue.payload_at(seq, e.offset) else {
            return;
        };
        let Ok(r) = RecipientPayload::decode(&recipient) else {
            return;
        };
        // A returnable message's values are `dsn::VAR_NAMES`, in that order.
        let value = |i: usize| {
            r.values
                .get(i)
                .and_then(|v| std::str::from_utf8(v).ok())
                .unwrap_or("")
        };
        if r.values.len() != dsn::VAR_NAMES.len() || !dsn::wanted(value(0), action) {
            return;
        }
        let status = match (o.enhanced, action) {
            (Some(code), _) => code.to_string(),
            (None, Action::Relayed) => "2.0.0".into(),
            // Delivery time expired (RFC 3463).
            (None, Action::Failed) if state == OutcomeState::Expired => "4.4.7".into(),
            (None, Action::Failed) => "5.0.0".into(),
        };
        let report = RecipientReport {
            recipient: r.recipient.to_string(),
            orcpt: value(1).to_string(),
            action,
            status,
            remote_mta: remote.to_string(),
            diagnostic: if o.code != 0 {
                format!("{} {}", o.code, o.response)
            } else {
                String::new()
            },
            reason: if o.code == 0 {
                o.response.clone()
            } else {
                String::new()
            },
        };
        let pending = &mut self.reports.by_message;
        let i = match pending.iter().position(|(m, ..)| *m == e.message_seq) {
            Some(i) => i,
            None => {
                pending.push((e.message_seq, value(2).to_string(), Vec::new()));
                pending.len() - 1
            }
        };
        pending[i].2.push(report);
        if pending[i].2.len() >= dsn::REPORT_RECIPIENTS_MAX {
            let (message_seq, envid, recipients) = pending.swap_remove(i);
            self.queue_report(message_seq, &envid, &recipients);
        }
    }

    /// Appends every pending report to the queue (before the outcome records they tell of
    /// are written: see the module's documentation).
    pub(super) fn queue_pending_reports(&mut self) {
        if self.reports.is_empty() {
            return;
        }
        for (message_seq, envid, recipients) in std::mem::take(&mut self.reports.by_message) {
            self.queue_report(message_seq, &envid, &recipients);
        }
    }

    /// One report on `recipients` of message `message_seq`, appended for the next commit.
    fn queue_report(&mut self, message_seq: u64, envid: &str, recipients: &[RecipientReport]) {
        let Some(info) = self.queue.index.messages.get(&message_seq) else {
            return;
        };
        let Ok(message) = self.queue.payload_at(message_seq, info.offset) else {
            return;
        };
        let Ok(m) = MessagePayload::decode(&message) else {
            return;
        };
        if m.flags & MESSAGE_RETURN == 0 || m.sender.is_empty() {
            return;
        }
        let now = self.clock.unix_ms();
        let batch_id = self.notification_batch_id(now);
        let body = dsn::build(&dsn::Report {
            reporting_mta: &self.config.smtp.helo_name,
            to: m.sender,
            envid,
            arrival_unix_ms: m.created_unix_ms,
            recipients,
            original: m.body,
            headers_only: m.flags & MESSAGE_RET_HDRS != 0,
            now_unix_ms: now,
            unique: batch_id,
        });
        let spec = MessageSpec {
            batch_id,
            created_unix_ms: now,
            // A report is transactional: ahead of campaign mail.
            flags: MESSAGE_VERBATIM | crate::queue::record::MESSAGE_PRIORITY,
            sender: String::new(),
            campaign: String::new(),
            tenant: m.tenant.to_string(),
            var_names: Vec::new(),
            body,
            // A report leaves from the pool its message did.
            pool: m.pool.to_string(),
        };
        let mut tails = Vec::new();
        RecipientPayload::encode_tail(m.sender, &[], &mut tails);
        let chunk = Chunk {
            batch_id,
            chunk_no: 0,
            message: Arc::new(spec),
            ends: vec![tails.len() as u32],
            tails,
            retry: Vec::new(),
        };
        self.append_report(chunk);
    }

    /// A batch id no other batch has: this shard's id in the low byte (as the shell's),
    /// the time above it, `NOTIFICATION_BATCH_BIT` on top, and always above the last.
    fn notification_batch_id(&mut self, now_unix_ms: u64) -> u64 {
        let nanos = now_unix_ms.saturating_mul(1_000_000) & !NOTIFICATION_BATCH_BIT;
        let candidate = NOTIFICATION_BATCH_BIT | (nanos & !0xff) | (self.id as u64 & 0xff);
        let id = candidate.max(self.last_notification_batch + 0x100);
        self.last_notification_batch = id;
        id
    }
}
