//! The queue's glue: appending chunks (their Reception lines first), the group commit that
//! makes them durable and hands their recipients to the home, and compaction. The queue
//! itself is `crate::queue`; the `fdatasync` is the shell's.

use super::*;
use crate::delivery_log::EventType;
use crate::queue::record::Reader;
use crate::queue::store::{ChunkAppend, MessageSpec, SyncJob};
use std::sync::atomic::Ordering;

/// A chunk made durable by a group commit: its claimer waits for this acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    pub claimer: usize,
    pub batch_id: u64,
    pub chunk_no: u32,
    pub recipients: u32,
}

impl<L: LogSink> Core<L> {
    /// Records appended since the last group commit began.
    pub fn unsynced_records(&self) -> usize {
        self.unsynced_records
    }

    /// Appends a chunk claimed by shard `claimer` to this shard's queue, for the next group
    /// commit (`Effect::Commit`).
    pub fn append(&mut self, claimer: usize, chunk: Chunk) {
        // Reports on outcomes go in before those outcomes' records (`notify`).
        self.queue_pending_reports();
        // The chunk's Reception lines reach the log file before its records reach the
        // segment's pages: a crash after the append (whose records recovery keeps) can then
        // never leave recipients queued without their Reception. A crash between the two
        // repeats the lines when intake replays the chunk (at least once, never none).
        if !self.queue.has_chunk(chunk.batch_id, chunk.chunk_no) {
            if !self.log_chunk(&chunk) {
                return;
            }
            // The flush also wrote the lines of outcomes decided since the last commit: their
            // records follow at once, as in `begin_commit`, so a crash here repeats no final
            // line more often than a crash there.
            if let Err(e) = self.queue.write_held_outcomes() {
                self.fatal(e.to_string());
                return;
            }
        }
        self.append_logged(claimer, chunk);
        self.effects.push(Effect::Commit);
    }

    /// A report this core made (`notify`): its Reception lines, then its records, and
    /// never the held outcome records (they follow it).
    pub(super) fn append_report(&mut self, chunk: Chunk) {
        if self.log_chunk(&chunk) {
            self.append_logged(self.id, chunk);
        }
    }

    /// Writes a chunk's Reception lines to the log file; false (and fatal) if it failed.
    fn log_chunk(&mut self, chunk: &Chunk) -> bool {
        let now = self.clock.unix_ms();
        let logged = log_receptions(&mut self.log, chunk, now).and_then(|()| self.log.flush());
        if let Err(e) = logged {
            self.fatal(format!("delivery log: {e}"));
            return false;
        }
        true
    }

    fn append_logged(&mut self, claimer: usize, chunk: Chunk) {
        let fresh = match self.queue.append_chunk(&chunk) {
            Ok(ChunkAppend::Appended {
                recipients,
                first_recipient_seq,
                ..
            }) => {
                self.unsynced_records += recipients as usize;
                Some(first_recipient_seq)
            }
            Ok(ChunkAppend::AlreadyCommitted) => None,
            Err(e) => {
                self.fatal(e.to_string());
                return;
            }
        };
        self.unsynced.push((claimer, chunk, fresh));
    }

    /// A group commit begins: the delivery log's lines reach the file, then the outcome
    /// records held for them reach the segments; the shell runs the returned job's
    /// `fdatasync` (off the executor) and then calls `end_commit`. Chunks appended meanwhile
    /// wait for the next commit.
    pub fn begin_commit(&mut self) -> Result<Option<SyncJob>, String> {
        self.queue_pending_reports();
        self.committing.append(&mut self.unsynced);
        self.unsynced_records = 0;
        // The log lines of the outcomes decided since the last commit go to the page cache
        // before those outcomes' records reach the segment (`take_sync_job` writes them): a
        // kill -9 never keeps a final outcome whose line was lost. A crash between the two
        // writes repeats lines after the restart instead (at least once, never none).
        self.log.flush().map_err(|e| format!("delivery log: {e}"))?;
        self.queue.take_sync_job().map_err(|e| e.to_string())
    }

    /// The group commit's `fdatasync` is done (`synced`: there was a job): the chunks it
    /// covered are durable. Their recipients go to the home; their claimers are owed the
    /// returned acknowledgements.
    pub fn end_commit(&mut self, synced: bool) -> Vec<Committed> {
        if synced {
            self.queue.sync_completed();
        }
        let done = std::mem::take(&mut self.committing);
        let mut queued = 0u64;
        let mut acks = Vec::with_capacity(done.len());
        for (claimer, chunk, first) in done {
            let recipients = chunk.len() as u32;
            // Nobody claims a notification's batch: its de-duplication state goes now.
            if super::notify::is_notification(chunk.batch_id) {
                self.queue.release_batch(chunk.batch_id);
            }
            // A chunk committed before a restart was counted then, and recovery handed its
            // recipients to the scheduler.
            if let Some(first) = first {
                queued += u64::from(recipients);
                let seqs = first..first + u64::from(recipients);
                if chunk.retry.is_empty() {
                    self.home.add_ready(seqs);
                } else {
                    // A transfer's: those tried before wait for their retry time.
                    let seqs: Vec<u64> = seqs.collect();
                    self.home.requeue_moved(&self.queue.index, &seqs);
                }
            }
            acks.push(Committed {
                claimer,
                batch_id: chunk.batch_id,
                chunk_no: chunk.chunk_no,
                recipients,
            });
        }
        if queued > 0 {
            self.effects.push(Effect::Schedule);
        }
        self.counters.queued.fetch_add(queued, Ordering::Relaxed);
        self.counters
            .live_recipients
            .fetch_add(queued, Ordering::Relaxed);
        acks
    }

    /// Copies the oldest segment's live records forward so it can be reclaimed; the home
    /// learns their new sequence numbers. The copies are synced by the next group commit
    /// before anything is deleted (`ShardQueue::take_reclaimable` checks).
    pub fn compact(&mut self) -> Result<(), String> {
        let moved = self.queue.compact_oldest().map_err(|e| e.to_string())?;
        if !moved.is_empty() {
            self.home.requeue_moved(&self.queue.index, &moved);
            self.effects.push(Effect::Commit);
        }
        Ok(())
    }

    /// At the very end (after the last group commit): the log's last lines reach the file,
    /// then the outcome records held for them, synced in place (blocking: the shard is done).
    pub fn final_flush(&mut self) -> Result<(), String> {
        self.queue_pending_reports();
        self.log.flush().map_err(|e| format!("delivery log: {e}"))?;
        self.queue
            .write_held_outcomes()
            .and_then(|()| self.queue.sync_now())
            .map_err(|e| format!("outcomes after the last commit: {e}"))
    }
}

/// One Reception line per recipient of `chunk`.
fn log_receptions(log: &mut impl LogSink, chunk: &Chunk, now: u64) -> std::io::Result<()> {
    let m: &MessageSpec = &chunk.message;
    for tail in chunk.recipients() {
        let rcpt = Reader::new(tail).str16().unwrap_or("");
        log.append(&LogRecord {
            ts_unix_ms: now,
            event: Some(EventType::Reception),
            recipient: rcpt,
            sender: &m.sender,
            campaign: &m.campaign,
            tenant: &m.tenant,
            domain: rcpt.rsplit_once('@').map_or("", |(_, d)| d),
            ..Default::default()
        })?;
    }
    Ok(())
}
