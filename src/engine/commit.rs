//! The queue's shell on each shard: the group commit's timing and its `fdatasync` (off the
//! executor) and acknowledgements, and the maintenance task (spare segments, reclaim,
//! compaction). Appending and what a commit means are the core's (`crate::shard`); the queue
//! itself is `crate::queue`.

use super::*;

/// Group commit: one fdatasync per dirty segment for everything appended in a window.
/// The window is cut short when a client waits for it (`Shard::commit_urgent`): a
/// gateway session's 250 then costs one fsync, not `commit_interval` plus one, and the
/// sessions that arrive during an fsync share the next one.
pub(super) async fn group_commit(shard: Rc<Shard>, kick: LocalReceiver<()>) {
    let urgent = shard.commit_urgent_rx.borrow_mut().take();
    while kick.recv().await.is_some() {
        let config = shard.config.borrow().clone();
        if shard.core.borrow().unsynced_records() < config.queue.commit_records_max {
            match &urgent {
                Some(rx) => {
                    future::or(sleep(config.queue.commit_interval), async {
                        let _ = rx.recv().await;
                    })
                    .await
                }
                None => sleep(config.queue.commit_interval).await,
            }
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
    while !shard.core.borrow().is_closing() && !shard.shared.failed() {
        if shard.shared.clock.now() >= spare_retry_at {
            let request = shard.core.borrow_mut().queue.spare_request();
            if let Some(request) = request {
                match glommio::executor()
                    .spawn_blocking(move || request.create())
                    .await
                {
                    Ok(spare) => shard.core.borrow_mut().queue.install_spare(spare),
                    Err(e) => {
                        // Not fatal yet: a rollover that finds no space is.
                        shard.core.borrow_mut().queue.spare_failed();
                        tracing::warn!("shard {}: {e}; retrying in 5 s", shard.id);
                        spare_retry_at = shard.shared.clock.now() + SPARE_RETRY_DELAY;
                    }
                }
            }
        }
        if shard.shared.clock.now().duration_since(last_reclaim) >= MAINTENANCE_INTERVAL {
            last_reclaim = shard.shared.clock.now();
            let paths = shard.core.borrow_mut().queue.take_reclaimable();
            if !paths.is_empty() {
                let dir = shard.core.borrow().queue.dir().to_path_buf();
                let removed = glommio::executor()
                    .spawn_blocking(move || remove_segment_files(&dir, &paths))
                    .await;
                if let Err(e) = removed {
                    shard.shared.fail(e.to_string());
                    return;
                }
            }
            if let Err(e) = shard.with_core(|core| core.compact()) {
                shard.shared.fail(e);
                return;
            }
            if shard.id == 0 {
                save_warmup(&shard).await;
            }
        }
        sleep(SPARE_CHECK_INTERVAL).await;
    }
}

/// Writes the warm-up counts if they changed (every `MAINTENANCE_INTERVAL`, which
/// `WARMUP_SAVE_INTERVAL` states). A failed write is retried at the next turn: the counts
/// stay in memory, and only a crash before a write succeeds forgets them.
async fn save_warmup(shard: &Rc<Shard>) {
    let Some(bytes) = shard.shared.warmup.take_dirty() else {
        return;
    };
    let dir = shard.shared.config().engine.data_dir.clone();
    let saved = glommio::executor()
        .spawn_blocking(move || crate::delivery::warmup::save(&dir, &bytes))
        .await;
    if let Err(e) = saved {
        shard.shared.warmup.mark_dirty();
        tracing::warn!("warm-up counts: cannot save: {e}; retrying");
    }
}

impl Shard {
    /// Appends a chunk to this shard's queue for the next group commit (`Core::append`),
    /// unless the engine has failed.
    pub(super) fn append(self: &Rc<Self>, claimer: usize, chunk: Chunk) {
        if !self.shared.failed() {
            self.with_core(|core| core.append(claimer, chunk));
        }
    }

    /// Syncs what was appended, then hands its recipients to the home and acknowledges the
    /// chunks to their claimers (`Core::begin_commit`, `Core::end_commit`).
    pub(super) async fn commit(self: &Rc<Self>) -> Result<(), String> {
        let job = self.core.borrow_mut().begin_commit()?;
        let synced = job.is_some();
        // The gateway's daily counts go to disk before the queue does: a message that gets
        // its 250 is always counted after a crash.
        let counts = self.gateway_counts.borrow_mut().take();
        // Suppression entries learnt since the last commit go to this shard's store file.
        let learnt = self.core.borrow_mut().take_learnt();
        let store = (!learnt.is_empty()).then(|| {
            crate::suppression::store::file(&self.config.borrow().engine.data_dir, self.id)
        });
        if job.is_some() || counts.is_some() || !learnt.is_empty() {
            let started = std::time::Instant::now();
            let (file, result) = glommio::executor()
                .spawn_blocking(move || {
                    let (file, mut result) = match counts {
                        Some((mut file, lines)) => {
                            let r = file.append_durably(&lines);
                            (Some(file), r.map_err(|e| e.to_string()))
                        }
                        None => (None, Ok(())),
                    };
                    if let Some(store) = store {
                        if let Err(e) = crate::suppression::store::append_durably(&store, &learnt) {
                            // Not worth stopping intake for: the entry holds in memory, and
                            // the next refusal learns it again after a restart.
                            tracing::warn!("{}: {e}", store.display());
                        }
                    }
                    if let (Ok(()), Some(job)) = (&result, job) {
                        result = job.fdatasync().map_err(|e| e.to_string());
                    }
                    (file, result)
                })
                .await;
            if let Some(file) = file {
                self.gateway_counts.borrow_mut().put_back(file);
            }
            result?;
            if synced {
                let took = started.elapsed().as_secs_f64();
                self.core.borrow_mut().note_commit(took);
            }
        }
        let acks = self.with_core(|core| core.end_commit(synced));
        for ack in acks {
            if ack.claimer == self.id {
                self.route_ack(ack.batch_id, ack.recipients);
            } else {
                let msg = CtlMsg::Appended {
                    batch_id: ack.batch_id,
                    recipients: ack.recipients,
                };
                // A closed channel means the claimer is gone (shutdown): it no longer waits.
                let _ = self.ctl_tx.send_to(ack.claimer, msg).await;
            }
        }
        Ok(())
    }
}
