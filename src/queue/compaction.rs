//! Reclaiming and compacting a shard's segments: the oldest segments go once nothing live
//! depends on them, and the few stragglers that hold one back are copied forward in one
//! committed chunk that also marks the originals `Moved` (atomic across a crash).

use super::index::{Entry, EntryState, MessageInfo};
use super::record::{
    record_len, CommitPayload, Kind, OutcomePayload, OutcomeState, COMMIT_PAYLOAD_BYTES,
    OUTCOME_PAYLOAD_BYTES,
};
use super::segment::sync_dir;
use super::store::{io_err, QueueError, ShardQueue};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Batch id of the chunks compaction writes; real batch ids come from the clock.
pub const COMPACTION_BATCH_ID: u64 = 0;
/// Compaction starts once at most 1/8 of the oldest segment's recipients still depend on it.
pub const COMPACTION_LIVE_DIVISOR: u64 = 8;
/// Recipients one compaction round copies at most, and roughly how many bytes.
pub const COMPACTION_RECIPIENTS_MAX: usize = 4096;
pub const COMPACTION_BYTES_MAX: usize = 8 << 20;

impl ShardQueue {
    /// Deletes the oldest segments whose recipients are all final and whose message records
    /// no live recipient needs. Returns how many were deleted.
    pub fn reclaim_segments(&mut self) -> Result<usize, QueueError> {
        let paths = self.take_reclaimable();
        remove_segment_files(&self.dir, &paths)?;
        Ok(paths.len())
    }

    /// Drops the reclaimable segments from the queue and returns their files, for
    /// `remove_segment_files` on a blocking thread. A crash before the files are removed is
    /// harmless: recovery finds nothing live in them.
    pub fn take_reclaimable(&mut self) -> Vec<PathBuf> {
        let mut deleted = Vec::new();
        // Copies made by compaction must be durable before their originals can go.
        if !self.all_durable() {
            return deleted;
        }
        while self.segments.len() > 1 {
            let end_seq = self.segments[1].seg.header.base_seq;
            let oldest_live = self.index.live_entries().next().map(|(seq, _)| seq);
            if oldest_live.is_some_and(|seq| seq < end_seq) {
                break;
            }
            let start_seq = self.segments[0].seg.header.base_seq;
            let needed = self
                .index
                .messages
                .iter()
                .any(|(&seq, m)| (start_seq..end_seq).contains(&seq) && m.live > 0);
            if needed || self.index.unreleased_batch_in(&(start_seq..end_seq)) {
                break;
            }
            let slot = self.segments.pop_front().expect("checked len");
            self.index
                .messages
                .retain(|&seq, _| !(start_seq..end_seq).contains(&seq));
            deleted.push(slot.seg.path.clone());
        }
        deleted
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Bytes written into the segments (records, not the files' preallocated room).
    pub fn segment_bytes(&self) -> u64 {
        self.segments
            .iter()
            .map(|s| s.seg.write_offset as u64)
            .sum()
    }

    /// Compaction of stragglers: when few live recipients still depend on the oldest segment
    /// (their record is in it, or their message record is), copies up to
    /// `COMPACTION_RECIPIENTS_MAX` of them forward as one committed chunk that also marks the
    /// originals `Moved`, so the move is atomic across a crash. The segment is deleted by
    /// `reclaim_segments` after the copies are synced. Returns the copies' new sequence
    /// numbers (the scheduler must look at those, not the old ones). Recipients in flight
    /// are never moved: while any dependent is in flight, nothing is.
    pub fn compact_oldest(&mut self) -> Result<Vec<u64>, QueueError> {
        if self.segments.len() < 2 || !self.all_durable() {
            return Ok(Vec::new());
        }
        let range = self.segments[0].seg.header.base_seq..self.segments[1].seg.header.base_seq;
        if self.index.unreleased_batch_in(&range) {
            return Ok(Vec::new());
        }
        let dependents: Vec<(u64, Entry)> = self
            .index
            .live_entries()
            .filter(|(seq, e)| range.contains(seq) || range.contains(&e.message_seq))
            .map(|(seq, e)| (seq, *e))
            .collect();
        let threshold = (self.segments[0].recipients / COMPACTION_LIVE_DIVISOR).max(1);
        let in_flight = dependents
            .iter()
            .any(|(_, e)| e.state == EntryState::InFlight);
        if dependents.is_empty() || dependents.len() as u64 > threshold || in_flight {
            return Ok(Vec::new());
        }

        // Gather what to copy (bounded), reading from the old segments before writing.
        let mut messages: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut recipients: Vec<(u64, Entry, Vec<u8>)> = Vec::new();
        let mut bytes = 0usize;
        for (seq, e) in dependents.into_iter().take(COMPACTION_RECIPIENTS_MAX) {
            if bytes > COMPACTION_BYTES_MAX {
                break;
            }
            let payload = self.payload_at(seq, e.offset)?;
            if range.contains(&e.message_seq) && !messages.iter().any(|(m, _)| *m == e.message_seq)
            {
                let offset = self
                    .index
                    .messages
                    .get(&e.message_seq)
                    .map_or(0, |m| m.offset);
                let message = self.payload_at(e.message_seq, offset)?;
                bytes += record_len(message.len());
                messages.push((e.message_seq, message));
            }
            bytes += record_len(payload.len()) + 2 * record_len(OUTCOME_PAYLOAD_BYTES);
            recipients.push((seq, e, payload));
        }
        let need = bytes + record_len(COMMIT_PAYLOAD_BYTES);
        if need > self.active().remaining() {
            self.roll_over()?;
        }

        let first_seq = self.next_seq;
        let mut new_message: HashMap<u64, u64> = HashMap::new();
        for (old, payload) in &messages {
            let offset = self.active().write_offset as u32;
            let seq = self.write_record(Kind::Message, payload);
            let info = self.index.messages.get(old).cloned();
            if let Some(info) = info {
                self.index.messages.insert(
                    seq,
                    MessageInfo {
                        offset,
                        live: 0,
                        ..info
                    },
                );
            }
            new_message.insert(*old, seq);
        }
        let now = self.clock.unix_ms();
        let mut moves = Vec::with_capacity(recipients.len());
        for (old_seq, entry, mut payload) in recipients {
            let message_seq = new_message
                .get(&entry.message_seq)
                .copied()
                .unwrap_or(entry.message_seq);
            payload[..8].copy_from_slice(&message_seq.to_le_bytes());
            let offset = self.active().write_offset as u32;
            let new_seq = self.write_record(Kind::Recipient, &payload);
            moves.push((old_seq, new_seq, offset, message_seq, entry));
        }
        for &(old_seq, new_seq, _, _, entry) in &moves {
            let moved = OutcomePayload {
                recipient_seq: old_seq,
                state: OutcomeState::Moved,
                attempts: u16::from(entry.attempts),
                due_unix_ms: 0,
                ts_unix_ms: now,
            };
            self.write_record(Kind::Outcome, &moved.encode());
            if entry.state == EntryState::Deferred {
                let deferred = OutcomePayload {
                    recipient_seq: new_seq,
                    state: OutcomeState::Deferred,
                    attempts: u16::from(entry.attempts),
                    due_unix_ms: u64::from(entry.due_unix_s) * 1000,
                    ts_unix_ms: now,
                };
                self.write_record(Kind::Outcome, &deferred.encode());
            }
        }
        let commit = CommitPayload {
            batch_id: COMPACTION_BATCH_ID,
            chunk: 0,
            first_seq,
            records: (self.next_seq - first_seq) as u32,
            committed_unix_ms: now,
        };
        self.write_record(Kind::Commit, &commit.encode());
        self.segments.back_mut().expect("active").recipients += moves.len() as u64;
        for &(old_seq, new_seq, offset, message_seq, entry) in &moves {
            self.index
                .move_entry(old_seq, new_seq, offset, message_seq, entry);
        }
        Ok(moves.iter().map(|m| m.1).collect())
    }
}

/// Deletes reclaimed segment files and makes that durable. Blocking.
pub fn remove_segment_files(dir: &Path, paths: &[PathBuf]) -> Result<(), QueueError> {
    for path in paths {
        std::fs::remove_file(path).map_err(io_err(path, "delete"))?;
    }
    if !paths.is_empty() {
        sync_dir(dir).map_err(io_err(dir, "fsync directory"))?;
    }
    Ok(())
}
