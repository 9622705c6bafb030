//! The queue's shell on each shard: appending chunks (their Reception lines first), the group
//! commit that makes them durable and acknowledges them, and the maintenance task (spare
//! segments, reclaim, compaction). The queue itself is `crate::queue`.

use super::*;

/// Group commit: one fdatasync per dirty segment for everything appended in a window.
pub(super) async fn group_commit(shard: Rc<Shard>, kick: LocalReceiver<()>) {
    while kick.recv().await.is_some() {
        let config = shard.config.borrow().clone();
        if shard.unsynced_records.get() < config.queue.commit_records_max {
            sleep(config.queue.commit_interval).await;
        }
        if let Err(message) = shard.commit().await {
            shard.shared.fail(message);
            return;
        }
        if shard.final_commit.get() {
            break;
        }
    }
    // Shutdown: a last commit for anything appended since.
    if let Err(message) = shard.commit().await {
        shard.shared.fail(message);
    }
}

/// Keeps a spare segment ready (so a rollover never blocks the executor) and frees queue
/// space: deletes finished segments and copies stragglers forward so the oldest segment can go.
/// File creation and deletion run on the blocking thread; compaction's copies are synced by the
/// group commit before any deletion (`ShardQueue::take_reclaimable` checks).
pub(super) async fn maintenance(shard: Rc<Shard>) {
    let mut last_reclaim = shard.shared.clock.now();
    let mut spare_retry_at = shard.shared.clock.now();
    while !shard.closing.get() && !shard.shared.failed() {
        if shard.shared.clock.now() >= spare_retry_at {
            let request = shard.queue.borrow_mut().spare_request();
            if let Some(request) = request {
                match glommio::executor()
                    .spawn_blocking(move || request.create())
                    .await
                {
                    Ok(spare) => shard.queue.borrow_mut().install_spare(spare),
                    Err(e) => {
                        // Not fatal yet: a rollover that finds no space is.
                        shard.queue.borrow_mut().spare_failed();
                        tracing::warn!("shard {}: {e}; retrying in 5 s", shard.id);
                        spare_retry_at = shard.shared.clock.now() + SPARE_RETRY_DELAY;
                    }
                }
            }
        }
        if shard.shared.clock.now().duration_since(last_reclaim) >= MAINTENANCE_INTERVAL {
            last_reclaim = shard.shared.clock.now();
            let paths = shard.queue.borrow_mut().take_reclaimable();
            if !paths.is_empty() {
                let dir = shard.queue.borrow().dir().to_path_buf();
                let removed = glommio::executor()
                    .spawn_blocking(move || remove_segment_files(&dir, &paths))
                    .await;
                if let Err(e) = removed {
                    shard.shared.fail(e.to_string());
                    return;
                }
            }
            let compacted = shard.queue.borrow_mut().compact_oldest();
            match compacted {
                Ok(moved) if moved.is_empty() => {}
                Ok(moved) => {
                    shard
                        .home
                        .borrow_mut()
                        .requeue_moved(&shard.queue.borrow().index, &moved);
                    let _ = shard.sync_kick.try_send(());
                }
                Err(e) => {
                    shard.shared.fail(e.to_string());
                    return;
                }
            }
        }
        sleep(SPARE_CHECK_INTERVAL).await;
    }
}

impl Shard {
    /// Appends a chunk to this shard's queue and schedules it for the next group commit.
    pub(super) fn append(&self, claimer: usize, chunk: Chunk) {
        if self.shared.failed() {
            return;
        }
        // The chunk's Reception lines reach the log file before its records reach the
        // segment's pages: a crash after the append (whose records recovery keeps) can then
        // never leave recipients queued without their Reception. A crash between the two
        // repeats the lines when intake replays the chunk (at least once, never none).
        if !self
            .queue
            .borrow()
            .has_chunk(chunk.batch_id, chunk.chunk_no)
        {
            let now = self.shared.clock.unix_ms();
            let mut log = self.log.borrow_mut();
            let logged = log_receptions(&mut log, &chunk, now).and_then(|()| log.flush());
            if let Err(e) = logged {
                self.shared.fail(format!("delivery log: {e}"));
                return;
            }
            // The flush also wrote the lines of outcomes decided since the last commit: their
            // records follow at once, as in `commit`, so a crash here repeats no final line
            // more often than a crash there.
            if let Err(e) = self.queue.borrow_mut().write_held_outcomes() {
                self.shared.fail(e.to_string());
                return;
            }
        }
        let appended = self.queue.borrow_mut().append_chunk(&chunk);
        let fresh = match appended {
            Ok(ChunkAppend::Appended {
                recipients,
                first_recipient_seq,
                ..
            }) => {
                self.unsynced_records
                    .set(self.unsynced_records.get() + recipients as usize);
                Some(first_recipient_seq)
            }
            Ok(ChunkAppend::AlreadyCommitted) => None,
            Err(e) => {
                self.shared.fail(e.to_string());
                return;
            }
        };
        self.unsynced.borrow_mut().push((claimer, chunk, fresh));
        let _ = self.sync_kick.try_send(());
    }

    /// Syncs what was appended, then logs receptions and acknowledges to the claimers.
    pub(super) async fn commit(&self) -> Result<(), String> {
        let done = std::mem::take(&mut *self.unsynced.borrow_mut());
        self.unsynced_records.set(0);
        // The log lines of the outcomes decided since the last commit go to the page cache
        // before those outcomes' records reach the segment (`take_sync_job` writes them): a
        // kill -9 never keeps a final outcome whose line was lost. A crash between the two
        // writes repeats lines after the restart instead (at least once, never none).
        self.log
            .borrow_mut()
            .flush()
            .map_err(|e| format!("delivery log: {e}"))?;
        let job = self
            .queue
            .borrow_mut()
            .take_sync_job()
            .map_err(|e| e.to_string())?;
        if let Some(job) = job {
            glommio::executor()
                .spawn_blocking(move || job.fdatasync())
                .await
                .map_err(|e| e.to_string())?;
            self.queue.borrow_mut().sync_completed();
        }
        let mut queued = 0u64;
        {
            // A chunk's Reception lines were written before its records (`append`). One
            // committed before a restart was counted then, and recovery handed its
            // recipients to the scheduler.
            let mut home = self.home.borrow_mut();
            for (_, chunk, first) in &done {
                let Some(first) = *first else { continue };
                queued += chunk.len() as u64;
                home.add_ready(first..first + chunk.len() as u64);
            }
        }
        if queued > 0 {
            let _ = self.schedule_kick.try_send(());
        }
        self.shared
            .counters
            .queued
            .fetch_add(queued, Ordering::Relaxed);
        self.shared
            .counters
            .live_recipients
            .fetch_add(queued, Ordering::Relaxed);
        for (claimer, chunk, _) in done {
            let recipients = chunk.len() as u32;
            if claimer == self.id {
                self.route_ack(chunk.batch_id, recipients);
            } else {
                let msg = CtlMsg::Appended {
                    batch_id: chunk.batch_id,
                    recipients,
                };
                // A closed channel means the claimer is gone (shutdown): it no longer waits.
                let _ = self.ctl_tx.send_to(claimer, msg).await;
            }
        }
        Ok(())
    }
}

pub(super) fn log_receptions(
    log: &mut DeliveryLog,
    chunk: &Chunk,
    now: u64,
) -> std::io::Result<()> {
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
