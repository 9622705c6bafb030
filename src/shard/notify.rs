//! What a gateway message's sender gets back (`crate::dsn`): when one of its recipients
//! reaches a final outcome that the recipient's NOTIFY asks about, the home queues a
//! notification to the sender, from `<>`, on its own queue. The chunk is appended at once,
//! so the group commit that makes the outcome durable makes the notification durable too: a
//! crash before that commit loses both (the recipient is tried again), never the
//! notification alone. A notification is never returned itself (its sender is `<>`).

use super::*;
use crate::delivery::policy::Outcome;
use crate::dsn::{self, Action};
use crate::queue::index::Entry;
use crate::queue::record::{
    MessagePayload, OutcomeState, RecipientPayload, MESSAGE_RETURN, MESSAGE_RET_HDRS,
    MESSAGE_VERBATIM,
};
use crate::queue::store::MessageSpec;

/// Set in the batch id of every notification (the shell's batch ids stay below it:
/// nanoseconds since 1970 reach 2^63 in 2262), so the two never collide.
const NOTIFICATION_BATCH_BIT: u64 = 1 << 63;

/// True for the batch id of a notification this core queued.
pub(super) fn is_notification(batch_id: u64) -> bool {
    batch_id & NOTIFICATION_BATCH_BIT != 0
}

impl<L: LogSink> Core<L> {
    /// Queues a notification to the sender of recipient `seq`'s message if its outcome
    /// (`state`, from `o`; `remote`: the MX that answered) is one the sender asked about.
    pub(super) fn notify_sender(
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
            OutcomeState::Deferred | OutcomeState::Moved => return,
        };
        let Some(info) = self.queue.index.messages.get(&e.message_seq) else {
            return;
        };
        let (Ok(message), Ok(recipient)) = (
            self.queue.payload_at(e.message_seq, info.offset),
            self.queue.payload_at(seq, e.offset),
        ) else {
            return;
        };
        let (Ok(m), Ok(r)) = (
            MessagePayload::decode(&message),
            RecipientPayload::decode(&recipient),
        ) else {
            return;
        };
        if m.flags & MESSAGE_RETURN == 0 || m.sender.is_empty() {
            return;
        }
        let value = |name: &str| {
            m.var_names
                .iter()
                .position(|n| *n == name)
                .and_then(|i| r.values.get(i))
                .and_then(|v| std::str::from_utf8(v).ok())
                .unwrap_or("")
        };
        let [notify_var, orcpt_var, envid_var] = dsn::VAR_NAMES;
        if !dsn::wanted(value(notify_var), action) {
            return;
        }
        let enhanced = o.enhanced.map(|c| c.to_string());
        let status = match (&enhanced, action) {
            (Some(code), _) => code.as_str(),
            (None, Action::Relayed) => "2.0.0",
            // Delivery time expired (RFC 3463).
            (None, Action::Failed) if state == OutcomeState::Expired => "4.4.7",
            (None, Action::Failed) => "5.0.0",
        };
        let diagnostic = if o.code != 0 {
            format!("{} {}", o.code, o.response)
        } else {
            String::new()
        };
        let now = self.clock.unix_ms();
        let body = dsn::build(&dsn::Report {
            reporting_mta: &self.config.smtp.helo_name,
            to: m.sender,
            envid: value(envid_var),
            arrival_unix_ms: m.created_unix_ms,
            recipient: r.recipient,
            orcpt: value(orcpt_var),
            action,
            status,
            remote_mta: remote,
            diagnostic: &diagnostic,
            reason: if o.code == 0 { &o.response } else { "" },
            original: m.body,
            headers_only: m.flags & MESSAGE_RET_HDRS != 0,
            now_unix_ms: now,
            unique: seq,
        });
        let batch_id = self.notification_batch_id(now);
        let spec = MessageSpec {
            batch_id,
            created_unix_ms: now,
            flags: MESSAGE_VERBATIM,
            sender: String::new(),
            campaign: String::new(),
            tenant: m.tenant.to_string(),
            var_names: Vec::new(),
            body,
        };
        let mut tails = Vec::new();
        RecipientPayload::encode_tail(m.sender, &[], &mut tails);
        let chunk = Chunk {
            batch_id,
            chunk_no: 0,
            message: Arc::new(spec),
            ends: vec![tails.len() as u32],
            tails,
        };
        self.append(self.id, chunk);
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
