//! One shard's durable queue: its segments, the in-memory index rebuilt from them, and the
//! append paths. Appends are synchronous memory copies; durability is a separate step
//! (`take_sync_job` then `SyncJob::fdatasync` on a blocking thread) so the shard can group
//! many appends into one sync without ever stalling its executor.
//!
//! Invariants:
//! - Records of one intake chunk are written back to back in one segment and become visible
//!   only with the chunk's commit record; recovery discards an uncommitted tail.
//! - A chunk `(batch_id, chunk)` is committed at most once per shard: `append_chunk` refuses
//!   a chunk the shard already holds, which is what makes re-reading an interrupted input file
//!   after a crash safe.
//! - Segments are deleted oldest first, and only when none of their recipients is still live
//!   and no live recipient needs a message record they hold. Deleting oldest first means a
//!   recipient record never outlives the outcome record (always later) that finalises it.

use super::index::BatchState;
use super::record::{
    record_len, seal_record_in_place, CommitPayload, Kind, MessagePayload, OutcomePayload, Reader,
    SegmentHeader, COMMIT_PAYLOAD_BYTES, RECORD_HEADER_BYTES,
};
use super::segment::{
    list_segments, remove_unfinished_segments, scan_bytes, sync_dir, Segment, SPARE_BASE_SEQ,
};
use crate::clock::Clock;

// The queue's parts, where the rest of the engine has always found them.
pub use super::compaction::{
    remove_segment_files, COMPACTION_BATCH_ID, COMPACTION_BYTES_MAX, COMPACTION_LIVE_DIVISOR,
    COMPACTION_RECIPIENTS_MAX,
};
pub use super::index::{DomainCounts, Entry, EntryState, Index, MessageInfo};
pub use super::replay::{Replay, SKIPPED_SEQS_PER_RECORD_SLOT};
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A storage failure. Fatal for intake: the engine stops loudly (exit 74) and loses nothing,
/// because no input is released before its records are synced.
#[derive(Debug)]
pub struct QueueError {
    pub path: PathBuf,
    pub op: &'static str,
    pub source: io::Error,
}

impl fmt::Display for QueueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} failed: {}",
            self.path.display(),
            self.op,
            self.source
        )
    }
}

impl std::error::Error for QueueError {}

pub(super) fn io_err<'p>(
    path: &'p Path,
    op: &'static str,
) -> impl FnOnce(io::Error) -> QueueError + 'p {
    move |source| QueueError {
        path: path.to_path_buf(),
        op,
        source,
    }
}

/// The message a chunk's recipients belong to, shared by every chunk of one batch.
#[derive(Debug)]
pub struct MessageSpec {
    pub batch_id: u64,
    pub created_unix_ms: u64,
    pub flags: u8,
    pub sender: String,
    pub campaign: String,
    pub tenant: String,
    pub var_names: Vec<String>,
    pub body: Vec<u8>,
    /// The pool its recipients leave from (`[pools]`); empty for the system's address.
    pub pool: String,
}

impl MessageSpec {
    fn encode(&self, out: &mut Vec<u8>) {
        MessagePayload {
            batch_id: self.batch_id,
            created_unix_ms: self.created_unix_ms,
            flags: self.flags,
            sender: &self.sender,
            campaign: &self.campaign,
            tenant: &self.tenant,
            var_names: self.var_names.iter().map(String::as_str).collect(),
            body: &self.body,
            pool: &self.pool,
        }
        .encode(out)
    }
}

/// Recipients of one batch bound for one home shard, pre-encoded by the claiming shard.
#[derive(Debug)]
pub struct Chunk {
    pub batch_id: u64,
    /// Counts this home shard's chunks of the batch, in file order.
    pub chunk_no: u32,
    pub message: Arc<MessageSpec>,
    /// Recipient payloads without their message sequence number, back to back.
    pub tails: Vec<u8>,
    /// End offset of each recipient's tail in `tails`.
    pub ends: Vec<u32>,
    /// Each recipient's retry state, for recipients another node tried before (a transfer,
    /// `crate::queue::transfer`); empty for new mail.
    pub retry: Vec<super::transfer::Retry>,
}

impl Chunk {
    pub fn recipients(&self) -> impl Iterator<Item = &[u8]> + '_ {
        let mut start = 0usize;
        self.ends.iter().map(move |&end| {
            let tail = &self.tails[start..end as usize];
            start = end as usize;
            tail
        })
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }
}

/// What `append_chunk` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkAppend {
    /// Written (not yet synced): `recipients` records from `first_seq`.
    Appended {
        first_seq: u64,
        /// The recipients are `first_recipient_seq..first_recipient_seq + recipients`.
        first_recipient_seq: u64,
        recipients: u32,
    },
    /// This shard already committed the chunk before a restart; nothing written.
    AlreadyCommitted,
}

/// What recovery found, for the startup log.
#[derive(Debug, Default)]
pub struct RecoveryReport {
    pub segments: usize,
    pub live_recipients: u64,
    pub warnings: Vec<String>,
}

/// A group commit's work: `fdatasync` on every segment written since the last one.
pub struct SyncJob {
    files: Vec<(PathBuf, File)>,
    /// Set when a segment was renamed into place since the last sync.
    dir: Option<PathBuf>,
}

impl SyncJob {
    /// Blocks until every dirty segment (and a new segment's name) is on disk. Run it on a
    /// blocking thread.
    pub fn fdatasync(self) -> Result<(), QueueError> {
        for (path, file) in &self.files {
            file.sync_data().map_err(io_err(path, "fdatasync"))?;
        }
        if let Some(dir) = &self.dir {
            sync_dir(dir).map_err(io_err(dir, "fsync directory"))?;
        }
        Ok(())
    }
}

/// What it takes to create a spare segment on another thread.
pub struct SpareRequest {
    pub dir: PathBuf,
    pub shard: u32,
    pub number: u64,
    pub segment_bytes: u64,
}

impl SpareRequest {
    /// Blocking: run on a blocking thread, then hand the result to `install_spare`.
    pub fn create(self) -> Result<Segment, QueueError> {
        Segment::create_spare_durably(&self.dir, self.shard, self.number, self.segment_bytes)
            .map_err(io_err(&self.dir, "preallocate spare segment"))
    }
}

pub(super) struct SegmentSlot {
    pub(super) seg: Segment,
    pub(super) dirty: bool,
    /// Recipient records committed in this segment (live or not).
    pub(super) recipients: u64,
}

pub struct ShardQueue {
    pub(super) dir: PathBuf,
    shard: u32,
    segment_bytes: u64,
    pub(super) segments: VecDeque<SegmentSlot>,
    pub(super) next_seq: u64,
    pub index: Index,
    pub(super) scratch: Vec<u8>,
    /// Sync jobs taken and not yet reported complete: until they are, appended records may
    /// not be on disk even though no segment is marked dirty.
    syncs_in_flight: u32,
    /// A preallocated segment, so a rollover needs no blocking call.
    spare: Option<Segment>,
    spares_requested: u64,
    /// A segment was renamed into place; the next sync fsyncs the directory.
    dir_dirty: bool,
    /// Rollovers that found no spare and created a segment on this thread.
    pub blocking_rollovers: u64,
    /// Outcomes applied to the index and not yet written to a segment: they are written by
    /// the next `take_sync_job`, so that whatever the caller writes before it (the delivery
    /// log's lines for them) reaches the page cache first. A `kill -9` then never leaves a
    /// final outcome in the queue without its log line.
    held_outcomes: Vec<OutcomePayload>,
    /// Wall time for the records' timestamps and segment headers.
    pub(super) clock: Arc<dyn Clock>,
}

impl ShardQueue {
    /// Opens (creating if needed) the queue in `dir`, recovering it from its segments, with
    /// the system clock.
    pub fn open(
        dir: &Path,
        shard: u32,
        segment_bytes: u64,
    ) -> Result<(ShardQueue, RecoveryReport), QueueError> {
        Self::open_with_clock(dir, shard, segment_bytes, crate::clock::system())
    }

    /// `open`, with the clock that stamps what this queue writes.
    pub fn open_with_clock(
        dir: &Path,
        shard: u32,
        segment_bytes: u64,
        clock: Arc<dyn Clock>,
    ) -> Result<(ShardQueue, RecoveryReport), QueueError> {
        std::fs::create_dir_all(dir).map_err(io_err(dir, "create directory"))?;
        let mut report = RecoveryReport::default();
        let mut replay = Replay::default();
        let mut segments = VecDeque::new();
        remove_unfinished_segments(dir).map_err(io_err(dir, "remove unfinished segments"))?;
        let paths = list_segments(dir).map_err(io_err(dir, "list"))?;
        let count = paths.len();
        for (i, path) in paths.iter().enumerate() {
            let mut seg = Segment::open(path).map_err(io_err(path, "open segment"))?;
            let is_last = i + 1 == count;
            if seg.header.base_seq == SPARE_BASE_SEQ {
                // A spare renamed into place whose new header never reached the disk: the
                // sync that would have acknowledged its records did not finish either.
                if !is_last {
                    return Err(QueueError {
                        path: path.clone(),
                        op: "recover",
                        source: io::Error::new(
                            io::ErrorKind::InvalidData,
                            "a segment before the last one has no header",
                        ),
                    });
                }
                drop(seg);
                std::fs::remove_file(path).map_err(io_err(path, "remove unfinished segment"))?;
                sync_dir(dir).map_err(io_err(dir, "fsync directory"))?;
                report.warnings.push(format!(
                    "{}: removed a segment whose rollover never completed",
                    path.display()
                ));
                continue;
            }
            if seg.header.shard != shard {
                return Err(QueueError {
                    path: path.clone(),
                    op: "recover",
                    source: io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("segment belongs to shard {}", seg.header.shard),
                    ),
                });
            }
            replay.begin_segment(seg.header.base_seq, seg.bytes().len());
            let recipients_before = replay.committed_recipients;
            let end = scan_bytes(seg.bytes(), |offset, r| {
                replay.record(seg.bytes(), offset, r);
            });
            if let Some((at, why)) = &replay.damage {
                return Err(QueueError {
                    path: path.clone(),
                    op: "recover",
                    source: io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{why} (byte {at}); the segment is damaged, and Spate will not guess which of its records are real: move it aside to start without it"),
                    ),
                });
            }
            if let Some((at, why)) = end.invalid {
                if !is_last {
                    report.warnings.push(format!(
                        "{}: {why} at byte {at} in a sealed segment; records after it are unreadable",
                        path.display()
                    ));
                }
            }
            if is_last {
                // After the last durable record is what a crash interrupted. It was never
                // acknowledged, unless the disk damaged a record with committed ones after
                // it: so keep a copy of the bytes for the operator, then clear them.
                if let Some(nonzero_end) = seg.nonzero_end(replay.valid_end) {
                    let kept = dir.join(format!(
                        "torn-{:020}-{}.bin",
                        seg.header.base_seq, replay.valid_end
                    ));
                    std::fs::write(&kept, &seg.bytes()[replay.valid_end..nonzero_end])
                        .and_then(|()| File::open(&kept)?.sync_all())
                        .and_then(|()| sync_dir(dir))
                        .map_err(io_err(&kept, "keep torn tail"))?;
                    let why = end.invalid.map_or("no commit record", |(_, why)| why);
                    report.warnings.push(format!(
                        "{}: cleared {} bytes after the last committed record ({why}); a copy is in {}",
                        path.display(),
                        nonzero_end - replay.valid_end,
                        kept.display()
                    ));
                }
                seg.truncate_tail_durably(replay.valid_end)
                    .map_err(io_err(path, "truncate torn tail"))?;
            } else {
                seg.write_offset = seg.capacity();
            }
            let recipients = replay.committed_recipients - recipients_before;
            segments.push_back(SegmentSlot {
                seg,
                dirty: false,
                recipients,
            });
        }
        // What recovery read came from the page cache, which may hold writes of a process
        // that died before its fdatasync. Make it durable before anything is acknowledged.
        for slot in &segments {
            slot.seg
                .sync_data()
                .map_err(io_err(&slot.seg.path, "fdatasync"))?;
        }
        report.segments = segments.len();
        report.warnings.append(&mut replay.anomalies);
        report.live_recipients = replay.index.live();
        let mut queue = ShardQueue {
            dir: dir.to_path_buf(),
            shard,
            segment_bytes,
            segments,
            next_seq: replay.next_seq,
            index: replay.index,
            scratch: Vec::new(),
            syncs_in_flight: 0,
            spare: None,
            spares_requested: 0,
            dir_dirty: false,
            blocking_rollovers: 0,
            held_outcomes: Vec::new(),
            clock,
        };
        if queue.segments.is_empty() {
            // The first segment, at startup: blocking here is expected.
            queue.roll_over()?;
            queue.blocking_rollovers = 0;
        }
        Ok((queue, report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn has_chunk(&self, batch_id: u64, chunk: u32) -> bool {
        self.index.has_chunk(batch_id, chunk)
    }

    /// Bytes one chunk needs in a segment.
    pub(super) fn chunk_bytes(&self, chunk: &Chunk, with_message: bool) -> usize {
        let message = if with_message {
            let m = &chunk.message;
            let names: usize = m.var_names.iter().map(|n| 2 + n.len()).sum();
            record_len(
                8 + 8
                    + 1
                    + 6
                    + m.sender.len()
                    + m.campaign.len()
                    + m.tenant.len()
                    + 2
                    + names
                    + 4
                    + m.body.len()
                    // A pool's name follows the body (`MESSAGE_POOL`).
                    + if m.pool.is_empty() { 0 } else { 2 + m.pool.len() },
            )
        } else {
            0
        };
        let recipients = chunk.tails.len() + chunk.len() * record_len(8);
        let retries = chunk.retry.iter().filter(|r| r.attempts > 0).count()
            * record_len(super::record::OUTCOME_PAYLOAD_BYTES);
        message + recipients + retries + record_len(COMMIT_PAYLOAD_BYTES)
    }

    /// Appends one chunk: its message record (the first time this shard sees the batch), its
    /// recipient records, and the commit record that makes them visible. Not yet durable: the
    /// caller acknowledges the chunk only after the next `SyncJob` completes.
    pub fn append_chunk(&mut self, chunk: &Chunk) -> Result<ChunkAppend, QueueError> {
        if self.has_chunk(chunk.batch_id, chunk.chunk_no) {
            return Ok(ChunkAppend::AlreadyCommitted);
        }
        let known_message = self
            .index
            .batches
            .get(&chunk.batch_id)
            .and_then(|b| b.message_seq);
        let need = self.chunk_bytes(chunk, known_message.is_none());
        if need > self.active().remaining() {
            self.roll_over()?;
            if need > self.active().remaining() {
                return Err(QueueError {
                    path: self.dir.clone(),
                    op: "append",
                    source: io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("a chunk of {need} bytes does not fit in an empty segment"),
                    ),
                });
            }
        }
        let first_seq = self.next_seq;
        let start_offset = self.active().write_offset;
        let message_seq = match known_message {
            Some(seq) => seq,
            None => {
                let mut payload = std::mem::take(&mut self.scratch);
                payload.clear();
                chunk.message.encode(&mut payload);
                let offset = self.active().write_offset as u32;
                let seq = self.write_record(Kind::Message, &payload);
                self.scratch = payload;
                self.index.messages.insert(
                    seq,
                    MessageInfo {
                        batch_id: chunk.batch_id,
                        created_unix_ms: chunk.message.created_unix_ms,
                        offset,
                        live: 0,
                        campaign: chunk.message.campaign.as_str().into(),
                        tenant: chunk.message.tenant.as_str().into(),
                        pool: chunk.message.pool.as_str().into(),
                        priority: chunk.message.flags & crate::queue::record::MESSAGE_PRIORITY != 0,
                    },
                );
                self.index
                    .batches
                    .entry(chunk.batch_id)
                    .or_insert_with(|| BatchState {
                        first_seq,
                        ..Default::default()
                    })
                    .message_seq = Some(seq);
                seq
            }
        };
        self.segments.back_mut().expect("active").recipients += chunk.len() as u64;
        for tail in chunk.recipients() {
            let seq = self.next_seq;
            let offset = self.active().write_offset;
            let out = self.active_mut().tail_mut();
            let body = &mut out[RECORD_HEADER_BYTES..];
            body[..8].copy_from_slice(&message_seq.to_le_bytes());
            body[8..8 + tail.len()].copy_from_slice(tail);
            let n = seal_record_in_place(out, seq, Kind::Recipient, 8 + tail.len());
            self.advance(n);
            let rcpt = Reader::new(tail).str16().unwrap_or("");
            self.index
                .add_recipient(seq, offset as u32, message_seq, rcpt);
        }
        // Recipients tried before on another node keep their attempts and next retry: a
        // Deferred outcome each, inside the chunk (before its commit, as compaction writes
        // its markers), so recovery keeps them exactly when it keeps the chunk.
        let first_recipient_seq = first_seq + u64::from(known_message.is_none());
        for (i, r) in chunk.retry.iter().enumerate() {
            if r.attempts > 0 {
                let o = OutcomePayload {
                    recipient_seq: first_recipient_seq + i as u64,
                    state: super::record::OutcomeState::Deferred,
                    attempts: r.attempts,
                    due_unix_ms: r.due_unix_ms,
                    ts_unix_ms: chunk.message.created_unix_ms,
                };
                self.write_record(Kind::Outcome, &o.encode());
                self.index.apply_outcome(&o);
            }
        }
        let records = (self.next_seq - first_seq) as u32;
        let commit = CommitPayload {
            batch_id: chunk.batch_id,
            chunk: chunk.chunk_no,
            first_seq,
            records,
            committed_unix_ms: chunk.message.created_unix_ms.max(self.clock.unix_ms()),
        };
        self.write_record(Kind::Commit, &commit.encode());
        debug_assert_eq!(
            self.active().write_offset - start_offset,
            need,
            "chunk_bytes is what a chunk takes"
        );
        self.index
            .note_chunk(chunk.batch_id, chunk.chunk_no, first_seq);
        Ok(ChunkAppend::Appended {
            first_seq,
            first_recipient_seq,
            recipients: chunk.len() as u32,
        })
    }

    /// Applies an outcome to the index at once; its record is written to the segment by the
    /// next `take_sync_job` (durable, like every append, only once that job has run).
    pub fn append_outcome(&mut self, outcome: OutcomePayload) -> Result<(), QueueError> {
        self.index.apply_outcome(&outcome);
        self.held_outcomes.push(outcome);
        Ok(())
    }

    /// Writes the held outcomes' records, in the order they were decided (not yet
    /// durable). `take_sync_job` does this; the engine also does at exit, after its last
    /// delivery-log flush, for outcomes that came after the last commit. On an error the
    /// outcomes not written stay held.
    pub fn write_held_outcomes(&mut self) -> Result<(), QueueError> {
        let need = record_len(super::record::OUTCOME_PAYLOAD_BYTES);
        let mut written = 0;
        let mut result = Ok(());
        while let Some(&outcome) = self.held_outcomes.get(written) {
            if need > self.active().remaining() {
                if let Err(e) = self.roll_over() {
                    result = Err(e);
                    break;
                }
            }
            self.write_record(Kind::Outcome, &outcome.encode());
            written += 1;
        }
        self.held_outcomes.drain(..written);
        result
    }

    /// Forgets a batch's de-duplication state once its input file is released.
    pub fn release_batch(&mut self, batch_id: u64) {
        self.index.batches.remove(&batch_id);
    }

    /// After recovery: forgets every batch but those whose inputs are still claimed (the
    /// others were released before the restart), so their segments can be reclaimed.
    pub fn forget_batches_except(&mut self, claimed: &HashSet<u64>) {
        self.index.batches.retain(|id, _| claimed.contains(id));
    }

    /// Writes the held outcomes, then returns the files to `fdatasync` for everything
    /// appended so far, or `None` if nothing is new. The caller writes first whatever must
    /// not be missing after a crash that kept an outcome (the delivery log), runs the job,
    /// and then calls `sync_completed` (only on success: a failed sync is fatal).
    pub fn take_sync_job(&mut self) -> Result<Option<SyncJob>, QueueError> {
        self.write_held_outcomes()?;
        let mut files = Vec::new();
        for slot in self.segments.iter_mut().filter(|s| s.dirty) {
            let file = slot
                .seg
                .sync_handle()
                .map_err(io_err(&slot.seg.path, "dup"))?;
            files.push((slot.seg.path.clone(), file));
            slot.dirty = false;
        }
        if files.is_empty() && !self.dir_dirty {
            return Ok(None);
        }
        let dir = std::mem::take(&mut self.dir_dirty).then(|| self.dir.clone());
        self.syncs_in_flight += 1;
        Ok(Some(SyncJob { files, dir }))
    }

    /// A job from `take_sync_job` finished: its records are on disk.
    pub fn sync_completed(&mut self) {
        self.syncs_in_flight = self
            .syncs_in_flight
            .checked_sub(1)
            .expect("sync_completed matches a taken job");
    }

    /// Appends made so far become durable, blocking this thread (tools, tests, benches).
    pub fn sync_now(&mut self) -> Result<(), QueueError> {
        if let Some(job) = self.take_sync_job()? {
            job.fdatasync()?;
            self.sync_completed();
        }
        Ok(())
    }

    /// True when every appended record is known to be on disk.
    pub(super) fn all_durable(&self) -> bool {
        self.syncs_in_flight == 0
            && self.held_outcomes.is_empty()
            && self.segments.iter().all(|s| !s.dirty)
    }

    /// The payload of the record `seq` at `offset` in whichever segment holds it.
    pub fn payload_at(&self, seq: u64, offset: u32) -> Result<Vec<u8>, QueueError> {
        let i = self
            .segments
            .partition_point(|s| s.seg.header.base_seq <= seq)
            .saturating_sub(1);
        let seg = &self.segments[i].seg;
        match super::record::decode_frame(&seg.bytes()[offset as usize..]) {
            super::record::Frame::Record(r, _) if r.seq == seq => Ok(r.payload.to_vec()),
            _ => Err(QueueError {
                path: seg.path.clone(),
                op: "read for compaction",
                source: io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("record {seq} is not at offset {offset}"),
                ),
            }),
        }
    }

    pub(super) fn active(&self) -> &Segment {
        &self
            .segments
            .back()
            .expect("a queue always has a segment")
            .seg
    }

    pub(super) fn active_mut(&mut self) -> &mut Segment {
        let slot = self
            .segments
            .back_mut()
            .expect("a queue always has a segment");
        slot.dirty = true;
        &mut slot.seg
    }

    pub(super) fn advance(&mut self, n: usize) {
        self.active_mut().write_offset += n;
        self.next_seq += 1;
    }

    pub(super) fn write_record(&mut self, kind: Kind, payload: &[u8]) -> u64 {
        let seq = self.next_seq;
        let n = super::record::encode_record(self.active_mut().tail_mut(), seq, kind, payload);
        self.advance(n);
        seq
    }

    /// Seals the active segment (its tail stays zero) and starts a new one.
    pub(super) fn roll_over(&mut self) -> Result<(), QueueError> {
        let spare = self
            .spare
            .take()
            .filter(|s| s.capacity() as u64 == self.segment_bytes);
        let (seg, dirty) = match spare {
            Some(mut seg) => {
                seg.activate(&self.dir, self.next_seq, self.clock.unix_ms())
                    .map_err(io_err(&self.dir, "activate segment"))?;
                self.dir_dirty = true;
                (seg, true)
            }
            None => {
                // No spare ready (startup, or a burst outran the maintenance task).
                self.blocking_rollovers += 1;
                let header = SegmentHeader {
                    shard: self.shard,
                    base_seq: self.next_seq,
                    created_unix_ms: self.clock.unix_ms(),
                    segment_bytes: self.segment_bytes,
                };
                let seg = Segment::create_durably(&self.dir, header)
                    .map_err(io_err(&self.dir, "create segment"))?;
                (seg, false)
            }
        };
        self.segments.push_back(SegmentSlot {
            seg,
            dirty,
            recipients: 0,
        });
        Ok(())
    }

    /// A request to create the next spare segment, if none is ready or being made.
    pub fn spare_request(&mut self) -> Option<SpareRequest> {
        if self.spare.is_some() || self.spares_requested > 0 {
            return None;
        }
        self.spares_requested += 1;
        Some(SpareRequest {
            dir: self.dir.clone(),
            shard: self.shard,
            number: self.next_seq,
            segment_bytes: self.segment_bytes,
        })
    }

    /// Hands over the spare made from a `spare_request`.
    pub fn install_spare(&mut self, spare: Segment) {
        self.spares_requested = self.spares_requested.saturating_sub(1);
        self.spare = Some(spare);
    }

    /// The spare request failed; a later one may be tried.
    pub fn spare_failed(&mut self) {
        self.spares_requested = self.spares_requested.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::record::{OutcomeState, RecipientPayload, SEGMENT_HEADER_BYTES};
    use proptest::prelude::*;

    const SEG: u64 = 1 << 20;

    fn message(batch_id: u64) -> Arc<MessageSpec> {
        Arc::new(MessageSpec {
            batch_id,
            created_unix_ms: 1_000,
            flags: 0,
            sender: "bounces@acme.example".into(),
            campaign: "c".into(),
            tenant: "t".into(),
            var_names: vec!["to".into(), "name".into()],
            body: b"To: {{ to }}\r\n\r\nHi {{ name }}\r\n".to_vec(),
            pool: String::new(),
        })
    }

    fn chunk(batch_id: u64, chunk_no: u32, n: usize) -> Chunk {
        let mut tails = Vec::new();
        let mut ends = Vec::new();
        for i in 0..n {
            let rcpt = format!("user{i}@d{}.example", i % 3);
            RecipientPayload::encode_tail(&rcpt, &[rcpt.as_bytes(), b"Name"], &mut tails);
            ends.push(tails.len() as u32);
        }
        Chunk {
            batch_id,
            chunk_no,
            message: message(batch_id),
            tails,
            ends,
            retry: Vec::new(),
        }
    }

    fn committed(q: &ShardQueue) -> Vec<(u64, u32)> {
        let mut v: Vec<(u64, u32)> = q
            .index
            .batches
            .iter()
            .flat_map(|(b, s)| s.chunks.iter().map(move |c| (*b, *c)))
            .collect();
        v.sort();
        v
    }

    #[test]
    fn recovery_yields_exactly_the_committed_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
        q.append_chunk(&chunk(1, 0, 100)).unwrap();
        q.append_chunk(&chunk(1, 1, 50)).unwrap();
        q.append_chunk(&chunk(2, 0, 7)).unwrap();
        q.sync_now().unwrap();
        drop(q);
        let (q, report) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
        assert_eq!(report.live_recipients, 157);
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        assert_eq!(committed(&q), vec![(1, 0), (1, 1), (2, 0)]);
        let d0 = q
            .index
            .domain_names
            .iter()
            .position(|d| &**d == "d0.example")
            .unwrap();
        assert_eq!(q.index.domain_counts[d0].queued, 34 + 17 + 3);
    }

    /// A transfer's chunk (a pooled message, retry states for some recipients) takes exactly
    /// the bytes `chunk_bytes` says (a chunk that just fits a segment's end must not run
    /// past it), and its recipients come back from the files deferred as they were.
    #[test]
    fn a_chunk_with_a_pool_and_retry_states_takes_what_it_says_and_keeps_them() {
        use crate::queue::transfer::Retry;
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
        let mut c = chunk(5, 0, 4);
        let m = message(5);
        c.message = Arc::new(MessageSpec {
            batch_id: m.batch_id,
            created_unix_ms: m.created_unix_ms,
            flags: m.flags,
            sender: m.sender.clone(),
            campaign: m.campaign.clone(),
            tenant: m.tenant.clone(),
            var_names: m.var_names.clone(),
            body: m.body.clone(),
            pool: "warm-pool".into(),
        });
        c.retry = vec![
            Retry::default(),
            Retry {
                attempts: 3,
                due_unix_ms: 4_000_000_000_000,
            },
            Retry::default(),
            Retry {
                attempts: 1,
                due_unix_ms: 4_000_000_500_000,
            },
        ];
        let need = q.chunk_bytes(&c, true);
        let before = q.active().write_offset;
        let ChunkAppend::Appended {
            first_recipient_seq: first,
            ..
        } = q.append_chunk(&c).unwrap()
        else {
            panic!("appended")
        };
        assert_eq!(q.active().write_offset - before, need);
        q.sync_now().unwrap();
        drop(q);
        let (q, report) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        let e = |i: u64| *q.index.entry(first + i).unwrap();
        assert_eq!(e(0).state, EntryState::Waiting);
        assert_eq!((e(1).state, e(1).attempts), (EntryState::Deferred, 3));
        assert_eq!(e(1).due_unix_s, 4_000_000_000);
        assert_eq!((e(3).state, e(3).attempts), (EntryState::Deferred, 1));
        assert_eq!(e(3).due_unix_s, 4_000_000_500);
    }

    /// The domain table holds the domains with live recipients: a stream of campaigns to new
    /// domains, each delivered, never grows it.
    #[test]
    fn domain_slots_are_freed_with_their_last_recipient_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
        for wave in 0..20u64 {
            let mut tails = Vec::new();
            let mut ends = Vec::new();
            for i in 0..50 {
                let rcpt = format!("u@w{wave}d{i}.example");
                RecipientPayload::encode_tail(&rcpt, &[rcpt.as_bytes(), b"N"], &mut tails);
                ends.push(tails.len() as u32);
            }
            let c = Chunk {
                batch_id: 100 + wave,
                chunk_no: 0,
                message: message(100 + wave),
                tails,
                ends,
                retry: Vec::new(),
            };
            let ChunkAppend::Appended {
                first_recipient_seq,
                ..
            } = q.append_chunk(&c).unwrap()
            else {
                panic!("appended")
            };
            assert_eq!(q.index.domains_in_use(), 50);
            for seq in first_recipient_seq..first_recipient_seq + 50 {
                q.append_outcome(OutcomePayload {
                    recipient_seq: seq,
                    state: OutcomeState::Delivered,
                    attempts: 1,
                    due_unix_ms: 0,
                    ts_unix_ms: 0,
                })
                .unwrap();
            }
            assert_eq!(q.index.domains_in_use(), 0);
        }
        assert_eq!(q.index.domain_names.len(), 50, "slots reused, not grown");
    }

    #[test]
    fn a_committed_chunk_is_never_appended_twice() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
        assert!(matches!(
            q.append_chunk(&chunk(5, 0, 10)).unwrap(),
            ChunkAppend::Appended { recipients: 10, .. }
        ));
        drop(q);
        let (mut q, _) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
        assert_eq!(
            q.append_chunk(&chunk(5, 0, 10)).unwrap(),
            ChunkAppend::AlreadyCommitted
        );
        q.append_chunk(&chunk(5, 1, 10)).unwrap();
        assert_eq!(q.index.live(), 20);
        // The second chunk reuses the message record written with the first.
        assert_eq!(q.index.messages.len(), 1);
    }

    #[test]
    fn rolls_over_and_reclaims_finished_segments_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
        let mut seqs = Vec::new();
        for c in 0..40 {
            if let ChunkAppend::Appended {
                first_seq,
                recipients,
                ..
            } = q.append_chunk(&chunk(9, c, 1000)).unwrap()
            {
                let first = if c == 0 { first_seq + 1 } else { first_seq };
                seqs.extend(first..first + recipients as u64);
            }
        }
        assert!(
            q.segment_count() > 2,
            "40k recipients span several 1 MiB segments"
        );
        q.release_batch(9);
        q.sync_now().unwrap();
        assert_eq!(q.reclaim_segments().unwrap(), 0, "everything is still live");
        // Finish all but the last recipient: every segment but the one holding it (and the
        // first, which holds the message record it needs) can go.
        let (last, rest) = seqs.split_last().unwrap();
        for &seq in rest {
            q.append_outcome(OutcomePayload {
                recipient_seq: seq,
                state: OutcomeState::Delivered,
                attempts: 1,
                due_unix_ms: 0,
                ts_unix_ms: 2,
            })
            .unwrap();
        }
        q.sync_now().unwrap();
        assert_eq!(
            q.reclaim_segments().unwrap(),
            0,
            "segment 0 holds the live message"
        );
        assert_eq!(q.index.live(), 1);
        q.append_outcome(OutcomePayload {
            recipient_seq: *last,
            state: OutcomeState::Bounced,
            attempts: 1,
            due_unix_ms: 0,
            ts_unix_ms: 3,
        })
        .unwrap();
        q.sync_now().unwrap();
        let before = q.segment_count();
        assert_eq!(q.reclaim_segments().unwrap(), before - 1);
        drop(q);
        let (q, report) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
        assert_eq!(report.live_recipients, 0);
        assert_eq!(q.segment_count(), 1);
    }

    fn outcome(seq: u64, state: OutcomeState, attempts: u16) -> OutcomePayload {
        OutcomePayload {
            recipient_seq: seq,
            state,
            attempts,
            due_unix_ms: 7_000,
            ts_unix_ms: 1,
        }
    }

    /// Live recipients as (address, state, attempts), sorted.
    fn live_set(q: &ShardQueue) -> Vec<(String, EntryState, u8)> {
        let mut v: Vec<_> = q
            .index
            .live_entries()
            .map(|(seq, e)| {
                let p = q.payload_at(seq, e.offset).unwrap();
                let (_, rcpt) = RecipientPayload::decode_recipient(&p).unwrap();
                (rcpt.to_string(), e.state, e.attempts)
            })
            .collect();
        v.sort();
        v
    }

    /// Three+ segments of one released batch, everything delivered except a few stragglers:
    /// some in the first segment (one deferred twice), one in a later segment whose message
    /// record is in the first.
    fn stragglers(dir: &Path) -> ShardQueue {
        let (mut q, _) = ShardQueue::open(dir, 0, SEG).unwrap();
        let mut seqs = Vec::new();
        for c in 0..30 {
            if let ChunkAppend::Appended {
                first_seq,
                recipients,
                ..
            } = q.append_chunk(&chunk(4, c, 1000)).unwrap()
            {
                let first = if c == 0 { first_seq + 1 } else { first_seq };
                seqs.extend(first..first + u64::from(recipients));
            }
        }
        q.release_batch(4);
        assert!(q.segment_count() >= 3);
        let keep = [seqs[3], seqs[10], seqs[seqs.len() - 1]];
        for &seq in &seqs {
            if seq == seqs[10] {
                q.append_outcome(outcome(seq, OutcomeState::Deferred, 2))
                    .unwrap();
            } else if !keep.contains(&seq) {
                q.append_outcome(outcome(seq, OutcomeState::Delivered, 1))
                    .unwrap();
            }
        }
        q.sync_now().unwrap();
        q
    }

    #[test]
    fn compaction_moves_stragglers_and_frees_the_oldest_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = stragglers(dir.path());
        let before = live_set(&q);
        assert_eq!(before.len(), 3);
        assert_eq!(
            q.reclaim_segments().unwrap(),
            0,
            "stragglers pin the first segment"
        );
        let segments = q.segment_count();
        let moved = q.compact_oldest().unwrap().len();
        assert_eq!(
            moved, 3,
            "two in the first segment, one elsewhere using its message"
        );
        assert_eq!(live_set(&q), before, "the index follows the copies");
        assert_eq!(
            q.reclaim_segments().unwrap(),
            0,
            "copies are not durable yet"
        );
        let job = q.take_sync_job().unwrap().unwrap();
        assert_eq!(
            q.reclaim_segments().unwrap(),
            0,
            "the copies' sync is still running"
        );
        job.fdatasync().unwrap();
        q.sync_completed();
        assert!(q.reclaim_segments().unwrap() >= 1);
        assert!(q.segment_count() < segments);
        drop(q);
        let (q, report) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        assert_eq!(live_set(&q), before, "deferred state and attempts survive");
    }

    #[test]
    fn compaction_is_atomic_across_a_crash_at_any_byte() {
        let dir = tempfile::tempdir().unwrap();
        let mut q = stragglers(dir.path());
        let before = live_set(&q);
        let start = q.active().write_offset;
        q.compact_oldest().unwrap();
        let end = q.active().write_offset;
        let path = q.active().path.clone();
        drop(q);
        let pristine = std::fs::read(&path).unwrap();
        for cut in (start..=end).step_by(7).chain([end]) {
            let mut bytes = pristine.clone();
            bytes[cut..].fill(0);
            std::fs::write(&path, &bytes).unwrap();
            let (q, _) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
            assert_eq!(live_set(&q), before, "cut at {cut} of {start}..{end}");
        }
    }

    #[test]
    fn rollover_uses_a_spare_and_recovery_discards_an_unfinished_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
        let spare = q.spare_request().unwrap().create().unwrap();
        assert!(q.spare_request().is_none(), "one spare at a time");
        q.install_spare(spare);
        let mut c = 0;
        while q.segment_count() == 1 {
            q.append_chunk(&chunk(3, c, 1000)).unwrap();
            c += 1;
        }
        assert_eq!(q.blocking_rollovers, 0, "the spare made the rollover");
        q.sync_now().unwrap();
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with(".spare")), "{names:?}");
        let live = q.index.live();
        let last = q.active().path.clone();
        drop(q);
        let (q, report) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
        assert_eq!(report.live_recipients, live);
        drop(q);

        // The rename reached the disk but the new header did not (power loss before the
        // sync finished): the segment holds nothing acknowledged and is discarded.
        let spare_header = SegmentHeader {
            shard: 0,
            base_seq: SPARE_BASE_SEQ,
            created_unix_ms: 0,
            segment_bytes: SEG,
        };
        let mut bytes = std::fs::read(&last).unwrap();
        bytes[..SEGMENT_HEADER_BYTES].copy_from_slice(&spare_header.encode());
        std::fs::write(&last, &bytes).unwrap();
        let (mut q, report) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
        assert!(!last.exists());
        assert!(report
            .warnings
            .iter()
            .any(|w| w.contains("rollover never completed")));
        assert!(
            q.index.live() < live,
            "the unfinished segment's chunk is gone"
        );
        assert_eq!(q.index.live() % 1000, 0, "whole chunks only");
        q.append_chunk(&chunk(4, 0, 5)).unwrap();
        q.sync_now().unwrap();
    }

    #[test]
    fn an_unreleased_batch_pins_only_its_own_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
        let mut done = Vec::new();
        for c in 0..30 {
            if let ChunkAppend::Appended {
                first_seq,
                recipients,
                ..
            } = q.append_chunk(&chunk(1, c, 1000)).unwrap()
            {
                let first = if c == 0 { first_seq + 1 } else { first_seq };
                done.extend(first..first + u64::from(recipients));
            }
        }
        q.release_batch(1);
        for &seq in &done {
            q.append_outcome(outcome(seq, OutcomeState::Delivered, 1))
                .unwrap();
        }
        // A new input is being read while the old segments are reclaimed.
        q.append_chunk(&chunk(2, 0, 10)).unwrap();
        q.sync_now().unwrap();
        let before = q.segment_count();
        assert!(q.reclaim_segments().unwrap() >= 2, "of {before} segments");
        assert!(q.has_chunk(2, 0));
    }

    #[test]
    fn an_unreleased_batch_pins_its_segments() {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
        let mut seqs = Vec::new();
        for c in 0..30 {
            if let ChunkAppend::Appended {
                first_seq,
                recipients,
                ..
            } = q.append_chunk(&chunk(8, c, 1000)).unwrap()
            {
                let first = if c == 0 { first_seq + 1 } else { first_seq };
                seqs.extend(first..first + u64::from(recipients));
            }
        }
        for &seq in &seqs {
            q.append_outcome(outcome(seq, OutcomeState::Delivered, 1))
                .unwrap();
        }
        q.sync_now().unwrap();
        assert_eq!(
            q.reclaim_segments().unwrap(),
            0,
            "input not released: dedup state must stay"
        );
        drop(q);
        let (mut q, _) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
        q.forget_batches_except(&HashSet::new());
        assert!(q.reclaim_segments().unwrap() >= 2);
    }

    /// Builds a queue with batch 1 committed and batch 2 written after it, then returns the
    /// segment path and the byte range batch 2 occupies.
    fn two_batches(dir: &Path) -> (PathBuf, usize, usize) {
        let (mut q, _) = ShardQueue::open(dir, 0, SEG).unwrap();
        q.append_chunk(&chunk(1, 0, 20)).unwrap();
        let start = q.active().write_offset;
        q.append_chunk(&chunk(2, 0, 5)).unwrap();
        let end = q.active().write_offset;
        let path = q.active().path.clone();
        (path, start, end)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn torn_tail_at_any_offset_recovers_exactly_the_committed(cut_frac in 0.0f64..1.0, garbage in proptest::collection::vec(any::<u8>(), 0..64), zero in any::<bool>()) {
            let dir = tempfile::tempdir().unwrap();
            let (path, start, end) = two_batches(dir.path());
            let cut = start + ((end - start) as f64 * cut_frac) as usize;
            let original = std::fs::read(&path).unwrap();
            let mut bytes = original.clone();
            if zero {
                bytes[cut..].fill(0);
            } else {
                bytes[cut..cut + garbage.len()].copy_from_slice(&garbage);
                bytes[cut + garbage.len()..].fill(0);
            }
            // Overwriting bytes with what they already held (the zero high bytes of a
            // timestamp, say) is no damage: then batch 2 must survive intact.
            let damaged = bytes[start..end] != original[start..end];
            std::fs::write(&path, &bytes).unwrap();
            let (mut q, _) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
            if !damaged {
                prop_assert_eq!(committed(&q), vec![(1, 0), (2, 0)]);
                return Ok(());
            }
            prop_assert_eq!(committed(&q), vec![(1, 0)]);
            prop_assert_eq!(q.index.live(), 20);
            // The queue keeps working after the torn tail: a new chunk commits and survives.
            q.append_chunk(&chunk(3, 0, 4)).unwrap();
            drop(q);
            let (q, report) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
            prop_assert_eq!(committed(&q), vec![(1, 0), (3, 0)]);
            prop_assert_eq!(report.live_recipients, 24);
        }
    }

    #[test]
    fn stale_records_past_the_tail_are_never_applied() {
        let dir = tempfile::tempdir().unwrap();
        let (path, start, end) = two_batches(dir.path());
        let mut bytes = std::fs::read(&path).unwrap();
        // Batch 2's records again, right after themselves: valid CRCs, old sequence numbers.
        let stale = bytes[start..end].to_vec();
        bytes[end..end + stale.len()].copy_from_slice(&stale);
        std::fs::write(&path, &bytes).unwrap();
        let (mut q, report) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
        assert_eq!(committed(&q), vec![(1, 0), (2, 0)]);
        assert_eq!(q.index.live(), 25, "batch 2 counted once");
        assert!(
            report
                .warnings
                .iter()
                .any(|w| w.contains("stale data ignored")),
            "{:?}",
            report.warnings
        );
        // The stale bytes were cleared: new appends and a later recovery are clean.
        q.append_chunk(&chunk(3, 0, 4)).unwrap();
        drop(q);
        let (q, report) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
        assert_eq!(report.live_recipients, 29);
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        drop(q);
    }

    /// Writes one committed recipient at `seq` (its commit at `seq + 1`) at byte `at` of
    /// `bytes`, with valid checksums, and returns the end of what it wrote.
    fn committed_recipient_at(bytes: &mut [u8], at: usize, seq: u64) -> usize {
        let mut payload = Vec::new();
        RecipientPayload {
            message_seq: 0,
            recipient: "far@d0.example",
            values: vec![b"far@d0.example".as_slice(), b"Far".as_slice()],
        }
        .encode(&mut payload);
        let n =
            super::super::record::encode_record(&mut bytes[at..], seq, Kind::Recipient, &payload);
        let commit = CommitPayload {
            batch_id: 9,
            chunk: 0,
            first_seq: seq,
            records: 1,
            committed_unix_ms: 1,
        };
        let m = super::super::record::encode_record(
            &mut bytes[at + n..],
            seq + 1,
            Kind::Commit,
            &commit.encode(),
        );
        at + n + m
    }

    #[test]
    fn a_record_numbered_far_ahead_refuses_recovery_instead_of_allocating_for_the_gap() {
        // Before: recovery filled every skipped number with an index entry, so these few
        // bytes (checksums valid, as a bug or a crafted file can make them) allocated 24
        // bytes per skipped number: gigabytes for a jump of 2^27.
        for far in [1u64 << 27, u64::MAX - 1] {
            let dir = tempfile::tempdir().unwrap();
            let (path, _, end) = two_batches(dir.path());
            let mut bytes = std::fs::read(&path).unwrap();
            committed_recipient_at(&mut bytes, end, far);
            std::fs::write(&path, &bytes).unwrap();
            let err = ShardQueue::open(dir.path(), 0, SEG).err().expect("refused");
            let text = err.to_string();
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(
                text.contains(&format!("sequence number {far} jumps")),
                "{text}"
            );
        }
    }

    #[test]
    fn a_record_numbered_u64_max_is_damage_not_an_overflow() {
        // `u64::MAX` as a base is a spare's mark; a segment just below it reaches it.
        let dir = tempfile::tempdir().unwrap();
        let header = SegmentHeader {
            shard: 0,
            base_seq: u64::MAX - 1,
            created_unix_ms: 1,
            segment_bytes: SEG,
        };
        let mut bytes = vec![0u8; 4096];
        bytes[..SEGMENT_HEADER_BYTES].copy_from_slice(&header.encode());
        committed_recipient_at(&mut bytes, SEGMENT_HEADER_BYTES, u64::MAX - 1);
        let path = dir.path().join(format!("seg-{:020}.q", u64::MAX - 1));
        std::fs::write(&path, &bytes).unwrap();
        let err = ShardQueue::open(dir.path(), 0, SEG).err().expect("refused");
        assert!(err.to_string().contains("end of its range"), "{err}");
    }

    #[test]
    fn gaps_left_by_repeated_torn_tails_recover_with_everything_committed() {
        // Each crash leaves an uncommitted chunk whose numbers the store skips after
        // recovery: a legitimate gap, which recovery must keep accepting.
        let dir = tempfile::tempdir().unwrap();
        let mut want = vec![(1, 0)];
        {
            let (mut q, _) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
            q.append_chunk(&chunk(1, 0, 20)).unwrap();
        }
        for round in 0..10u64 {
            let (mut q, report) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
            assert!(
                report.warnings.iter().all(|w| !w.contains("jumps")),
                "{:?}",
                report.warnings
            );
            // A chunk torn before its commit: its records stay, its commit never lands.
            let batch = 100 + round;
            let start = q.active().write_offset;
            q.append_chunk(&chunk(batch, 0, 200)).unwrap();
            let end = q.active().write_offset;
            let path = q.active().path.clone();
            drop(q);
            let mut bytes = std::fs::read(&path).unwrap();
            let commit = record_len(COMMIT_PAYLOAD_BYTES);
            bytes[end - commit..end].fill(0);
            assert!(end - commit > start);
            std::fs::write(&path, &bytes).unwrap();
            // Recovery clears the torn chunk; the next chunk lands after the gap.
            let (mut q, _) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
            q.append_chunk(&chunk(batch, 1, 3)).unwrap();
            want.push((batch, 1));
        }
        let (q, report) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
        want.sort();
        assert_eq!(committed(&q), want);
        assert_eq!(report.live_recipients, 20 + 10 * 3);
    }

    #[test]
    fn intact_tail_keeps_both_batches() {
        let dir = tempfile::tempdir().unwrap();
        let _ = two_batches(dir.path());
        let (q, _) = ShardQueue::open(dir.path(), 0, SEG).unwrap();
        assert_eq!(committed(&q), vec![(1, 0), (2, 0)]);
    }
}
