//! Recovery's core, sans I/O: records in segment order in, the index out. A chunk's records
//! are applied only at its commit record; sequence numbers that go backwards are stale data,
//! and forward jumps are charged to an allowance proportional to the segments' size.

use super::index::{Index, MessageInfo};
use super::record::{
    record_len, CommitPayload, Kind, MessagePayload, OutcomePayload, RecipientPayload, RecordRef,
    RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use super::store::COMPACTION_BATCH_ID;

/// Rebuilds an index from records, applying each chunk only at its commit record.
#[derive(Default)]
pub struct Replay {
    pub index: Index,
    /// Records seen since the last commit: (offset, seq, kind, payload length).
    pending: Vec<(usize, u64, Kind, usize)>,
    /// End of the last record that is durable state (a commit or an outcome).
    pub valid_end: usize,
    /// Committed-but-discarded anomalies, for the recovery report.
    pub anomalies: Vec<String>,
    pub next_seq: u64,
    /// Recipient records applied so far (live or not).
    pub committed_recipients: u64,
    /// A record's sequence number went backwards in this segment: what follows is stale
    /// data from an earlier write, and is ignored.
    stale: bool,
    /// Sequence numbers skipped by forward jumps so far, and how many the segments begun so
    /// far could account for (see `SKIPPED_SEQS_PER_RECORD_SLOT`).
    skipped_seqs: u64,
    skip_budget: u64,
    /// Records taken in order so far (stale ones not counted).
    records_seen: u64,
    /// Set when the segments cannot be what Spate wrote (a sequence number jumps further
    /// than any crash could have skipped): at which byte of the current segment, and why.
    /// Replay stops there; `ShardQueue::open` refuses to start on it.
    pub damage: Option<(usize, String)>,
}

/// How many sequence numbers recovery lets forward jumps skip, per record a segment could
/// hold (its bytes over `RECORD_HEADER_BYTES`). A crash leaves a gap as long as its torn
/// tail (the store carries on after the last record it read, committed or not), at most a
/// segment's worth, and repeated crashes can leave several; every skipped number costs an
/// index entry, so the allowance keeps recovery's memory proportional to the queue's bytes
/// whatever a damaged or crafted segment says.
pub const SKIPPED_SEQS_PER_RECORD_SLOT: u64 = 4;

impl Replay {
    /// Starts a new segment of `len` bytes whose header says it begins at `base_seq`:
    /// anything pending in the previous one was never committed.
    pub fn begin_segment(&mut self, base_seq: u64, len: usize) {
        self.pending.clear();
        self.valid_end = SEGMENT_HEADER_BYTES;
        self.stale = false;
        self.skip_budget = self
            .skip_budget
            .saturating_add((len / RECORD_HEADER_BYTES) as u64 * SKIPPED_SEQS_PER_RECORD_SLOT);
        if base_seq > self.next_seq {
            // Before the first record a jump costs nothing (the index starts where its first
            // recipient is); after it, every skipped number can become an entry, even while
            // the index is empty (a pending chunk's recipients are placed below the jump).
            if self.records_seen > 0 {
                self.skip(base_seq - self.next_seq, 0, base_seq);
            }
            if self.damage.is_none() {
                self.next_seq = base_seq;
            }
        }
    }

    /// Charges a forward jump of `by` sequence numbers (to `seq`, at byte `offset`) to the
    /// allowance, marking the replay damaged when it is spent.
    fn skip(&mut self, by: u64, offset: usize, seq: u64) {
        self.skipped_seqs = self.skipped_seqs.saturating_add(by);
        if self.skipped_seqs > self.skip_budget && self.damage.is_none() {
            self.damage = Some((
                offset,
                format!(
                    "sequence number {seq} jumps {by} ahead of {}, further than the segments' records could have skipped",
                    self.next_seq
                ),
            ));
        }
    }

    /// Feeds the record at `offset` of `segment` (the whole segment's bytes).
    pub fn record(&mut self, segment: &[u8], offset: usize, r: RecordRef<'_>) {
        let record_bytes = record_len(r.payload.len());
        // Sequence numbers only go forward. One that does not is a valid-looking record left
        // from an earlier write (a power loss can leave such bytes past a zeroed gap): it and
        // everything after it are not state. Recovery clears them with the torn tail.
        if self.damage.is_some() {
            return;
        }
        if self.stale || r.seq < self.next_seq {
            if !self.stale {
                self.anomalies.push(format!(
                    "record {} at byte {offset} goes back from {}: stale data ignored",
                    r.seq, self.next_seq
                ));
            }
            self.stale = true;
            return;
        }
        if r.seq > self.next_seq && self.records_seen > 0 {
            self.skip(r.seq - self.next_seq, offset, r.seq);
            if self.damage.is_some() {
                return;
            }
        }
        let Some(next_seq) = r.seq.checked_add(1) else {
            self.damage = Some((offset, "sequence number at the end of its range".into()));
            return;
        };
        self.next_seq = next_seq;
        self.records_seen += 1;
        match r.kind {
            Kind::Message | Kind::Recipient => {
                self.pending.push((offset, r.seq, r.kind, r.payload.len()));
            }
            Kind::Commit => {
                match CommitPayload::decode(r.payload) {
                    Ok(c) if self.commit_matches(&c) => self.apply_pending(segment, &c),
                    Ok(c) => self.anomalies.push(format!(
                        "commit record {} does not match the {} records before it; chunk {} of batch {} dropped",
                        r.seq,
                        self.pending.len(),
                        c.chunk,
                        c.batch_id
                    )),
                    Err(e) => self.anomalies.push(format!("commit record {}: {e}", r.seq)),
                }
                self.pending.clear();
                self.valid_end = offset + record_bytes;
            }
            // Inside a chunk (compaction writes its Moved markers there), an outcome waits
            // for the chunk's commit like the records before it.
            Kind::Outcome if !self.pending.is_empty() => {
                self.pending.push((offset, r.seq, r.kind, r.payload.len()));
            }
            Kind::Outcome => {
                if let Ok(o) = OutcomePayload::decode(r.payload) {
                    self.index.apply_outcome(&o);
                }
                self.valid_end = offset + record_bytes;
            }
        }
    }

    fn commit_matches(&self, c: &CommitPayload) -> bool {
        self.pending.len() == c.records as usize
            && self
                .pending
                .iter()
                .enumerate()
                .all(|(i, p)| p.1 == c.first_seq + i as u64)
    }

    fn apply_pending(&mut self, segment: &[u8], c: &CommitPayload) {
        let pending = std::mem::take(&mut self.pending);
        if c.batch_id != COMPACTION_BATCH_ID {
            self.index.note_chunk(c.batch_id, c.chunk, c.first_seq);
        }
        for &(offset, seq, kind, len) in &pending {
            let start = offset + RECORD_HEADER_BYTES;
            let payload = &segment[start..start + len];
            match kind {
                Kind::Message => {
                    if let Ok(m) = MessagePayload::decode(payload) {
                        self.index.messages.insert(
                            seq,
                            MessageInfo {
                                batch_id: m.batch_id,
                                created_unix_ms: m.created_unix_ms,
                                offset: offset as u32,
                                live: 0,
                                campaign: m.campaign.into(),
                                tenant: m.tenant.into(),
                                pool: m.pool.into(),
                                priority: m.flags & crate::queue::record::MESSAGE_PRIORITY != 0,
                            },
                        );
                        if c.batch_id != COMPACTION_BATCH_ID {
                            self.index
                                .batches
                                .entry(c.batch_id)
                                .or_default()
                                .message_seq = Some(seq);
                        }
                    }
                }
                Kind::Recipient => match RecipientPayload::decode_recipient(payload) {
                    Ok((message_seq, rcpt)) => {
                        self.committed_recipients += 1;
                        self.index
                            .add_recipient(seq, offset as u32, message_seq, rcpt)
                    }
                    Err(e) => self.anomalies.push(format!("recipient record {seq}: {e}")),
                },
                Kind::Outcome => {
                    if let Ok(o) = OutcomePayload::decode(payload) {
                        self.index.apply_outcome(&o);
                    }
                }
                Kind::Commit => unreachable!("a commit never pends"),
            }
        }
        self.pending = pending;
        self.pending.clear();
    }
}
