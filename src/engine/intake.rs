//! The intake shell on each shard: watching the spool, claiming inputs, reading them on the
//! blocking thread, running `crate::intake::Parser` over them, routing chunks to their home
//! shards and releasing an input once every chunk is acknowledged; refused inputs go to bad/.

use super::*;

impl Shard {
    pub(super) fn next_batch_id(&self) -> u64 {
        // `id % shards == self.id`: a pickup or gateway message's home (`batch_id %
        // shards`) is the shard that claimed it, whatever the shard count, so its group
        // commit (and a gateway user's daily count) is this shard's own. Ids of different
        // shards differ by their residue; one shard's only grow.
        let shards = self.shards as u64;
        let nanos = self.shared.clock.unix_ms().saturating_mul(1_000_000);
        let candidate = nanos - nanos % shards + self.id as u64;
        let id = if candidate > self.last_batch_id.get() {
            candidate
        } else {
            self.last_batch_id.get() + shards
        };
        self.last_batch_id.set(id);
        id
    }
}

/// Why processing of a claimed input ended early; the input stays claimed and is replayed.
pub(super) enum Interrupted {
    Stopping,
    Failed,
}

pub(super) async fn intake_loop(shard: &Rc<Shard>) {
    let leftovers = shard.spool.leftover_claims().unwrap_or_else(|e| {
        shard
            .shared
            .fail(format!("{}: {e}", shard.spool.dir.display()));
        Vec::new()
    });
    for c in leftovers
        .into_iter()
        .filter(|c| (c.batch_id % shard.shards as u64) as usize == shard.id)
    {
        tracing::info!(
            "shard {}: resuming {} after a restart",
            shard.id,
            printable(&c.name)
        );
        if process_claim(shard, c).await.is_err() {
            return;
        }
    }
    let watch = IncomingWatch::new(shard.spool.incoming()).ok();
    let mut last_scan: Option<Instant> = None;
    while !shard.shared.stopping() {
        shard.reload_if_changed();
        let due: Vec<Claimed> = {
            let now = shard.shared.clock.now();
            let mut retry = shard.retry.borrow_mut();
            let (due, later) = retry
                .drain(..)
                .partition(|(at, _)| now.duration_since(*at) >= READ_RETRY_DELAY);
            *retry = later;
            due.into_iter().map(|(_, c)| c).collect()
        };
        for c in due {
            if process_claim(shard, c).await.is_err() {
                return;
            }
        }
        let scan_interval = shard.config.borrow().spool.scan_interval;
        let hinted = watch.as_ref().is_some_and(IncomingWatch::fired);
        let now = shard.shared.clock.now();
        if hinted || last_scan.is_none_or(|t| now.duration_since(t) >= scan_interval) {
            last_scan = Some(now);
            let spool = shard.spool.clone();
            let listed = glommio::executor()
                .spawn_blocking(move || spool.candidates())
                .await;
            let names = match listed {
                Ok(n) => n,
                Err(e) => {
                    tracing::warn!("{}: {e}", shard.spool.incoming().display());
                    Vec::new()
                }
            };
            for name in names {
                if shard.shared.stopping() {
                    break;
                }
                // A transfer's id is its own, from its name: sent again, it is the same
                // batch, and the queue's de-duplication sees it.
                let batch_id = crate::queue::transfer::id_from_name(&name)
                    .unwrap_or_else(|| shard.next_batch_id());
                let (spool, file) = (shard.spool.clone(), name.clone());
                let claimed = glommio::executor()
                    .spawn_blocking(move || spool.claim(&file, batch_id))
                    .await;
                match claimed {
                    Ok(Some(c)) => {
                        let spool = shard.spool.clone();
                        let synced = glommio::executor()
                            .spawn_blocking(move || spool.sync_claim())
                            .await;
                        if let Err(e) = synced {
                            shard
                                .shared
                                .fail(format!("{}: fsync: {e}", shard.spool.incoming().display()));
                            return;
                        }
                        if process_claim(shard, c).await.is_err() {
                            return;
                        }
                        // Something arrived meanwhile? Look again without waiting.
                        last_scan = None;
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!("cannot claim {}: {e}", printable(&name)),
                }
            }
        }
        sleep(INTAKE_TICK).await;
    }
}

/// Reads one claimed input into the queue; releases it once every chunk is acknowledged.
pub(super) async fn process_claim(shard: &Rc<Shard>, c: Claimed) -> Result<(), Interrupted> {
    let started = shard.shared.clock.now();
    let Some(kind) = input_kind(&c.name) else {
        refuse(
            shard,
            &c,
            "unknown input type: expected NAME.jsonl or NAME.eml (or a cluster transfer, transfer-ID.xfer)",
        )
        .await;
        return Ok(());
    };
    let path = c.path.clone();
    let read = glommio::executor()
        .spawn_blocking(move || read_claimed(&path))
        .await;
    let bytes = match read {
        Ok(Some(bytes)) => bytes,
        Ok(None) => {
            refuse(shard, &c, "empty file").await;
            return Ok(());
        }
        Err(ReadError::Refuse(why)) => {
            refuse(shard, &c, &why).await;
            return Ok(());
        }
        Err(ReadError::Retry(why)) => {
            let mut c = c;
            c.read_attempts += 1;
            if c.read_attempts >= READ_ATTEMPTS_MAX {
                // Part of a resumed input may be queued already: the reason says so, since
                // an operator may resubmit it from bad/.
                let reason = format!(
                    "unreadable after {} attempts: {why} (if it was being resumed after a restart, some recipients may be queued already)",
                    c.read_attempts
                );
                refuse(shard, &c, &reason).await;
                return Ok(());
            }
            tracing::warn!(
                "cannot read {}: {}; retrying in {} s",
                printable(&c.name),
                printable(&why),
                READ_RETRY_DELAY.as_secs()
            );
            shard.retry.borrow_mut().push((shard.shared.clock.now(), c));
            return Ok(());
        }
    };
    let config = shard.config.borrow().clone();
    let rules = crate::compliance::Rules::from_config(&config);
    let mut parser = match Parser::open_with(
        &bytes,
        kind,
        c.batch_id,
        shard.shards,
        shard.shared.clock.unix_ms(),
        &rules,
        &config.egress,
    ) {
        Ok(p) => p,
        Err(e) => {
            refuse(shard, &c, &e.to_string()).await;
            return Ok(());
        }
    };
    for warning in parser.warnings() {
        tracing::warn!("{}: {}", printable(&c.name), printable(warning));
        log_check(shard, parser.message(), warning);
    }
    let today = crate::suppression::day_of(shard.shared.clock.unix_ms());
    parser.suppress(shard.shared.suppressions.reader(), today);
    let message = Arc::clone(parser.message());
    let (ack_tx, ack_rx) = local_channel::new_unbounded();
    shard.acks.borrow_mut().insert(c.batch_id, ack_tx);
    let result = feed_chunks(shard, &mut parser, &message, &ack_rx).await;
    shard.acks.borrow_mut().remove(&c.batch_id);
    let (queued, rejected) = result?;
    if kind == crate::intake::InputKind::Transfer {
        // Before the release: a sending node that asks again from now on is told it is here.
        let (transfers, node, id) = (
            Arc::clone(&shard.shared.transfers),
            parser.source_node().to_string(),
            c.batch_id,
        );
        let now = shard.shared.clock.unix_ms();
        let recorded = glommio::executor()
            .spawn_blocking(move || transfers.record(id, &node, queued + rejected, now))
            .await;
        if let Err(e) = recorded {
            shard
                .shared
                .fail(format!("{}: {e}", crate::cluster::received::RECEIVED_FILE));
            return Err(Interrupted::Failed);
        }
    }

    // A reload announced while this batch was read applies to its release: an operator who
    // turns `keep_done` on and then drops a batch finds it in done/.
    shard.reload_if_changed();
    let keep_done = shard.config.borrow().spool.keep_done;
    let (spool, claimed) = (shard.spool.clone(), c.clone());
    let released = glommio::executor()
        .spawn_blocking(move || spool.release_done(&claimed, keep_done))
        .await;
    if let Err(e) = released {
        shard
            .shared
            .fail(format!("{}: cannot release: {e}", c.path.display()));
        return Err(Interrupted::Failed);
    }
    for peer in (0..shard.shards).filter(|&p| p != shard.id) {
        let _ = shard
            .ctl_tx
            .send_to(
                peer,
                CtlMsg::Released {
                    batch_id: c.batch_id,
                },
            )
            .await;
    }
    shard.core.borrow_mut().queue.release_batch(c.batch_id);
    shard
        .shared
        .counters
        .inputs_done
        .fetch_add(1, Ordering::Relaxed);
    tracing::info!(
        "{}: {queued} recipients queued, {rejected} rejected, in {} ms",
        printable(&c.name),
        shard.shared.clock.now().duration_since(started).as_millis()
    );
    Ok(())
}

/// Parses and routes every chunk of an input; returns (queued, rejected) once all chunks are
/// acknowledged as durable.
pub(super) async fn feed_chunks(
    shard: &Rc<Shard>,
    parser: &mut Parser<'_>,
    message: &MessageSpec,
    acks: &LocalReceiver<u32>,
) -> Result<(u64, u64), Interrupted> {
    let (mut sent, mut acked, mut queued, mut rejected) = (0u64, 0u64, 0u64, 0u64);
    let mut interrupted = None;
    let mut slice = Instant::now();
    loop {
        let event = match parser.next_within(PARSE_PAUSE_LINES) {
            Step::Event(e) => e,
            Step::Pause => {
                if slice.elapsed() >= INTAKE_SLICE {
                    sleep(Duration::from_micros(1)).await;
                    slice = Instant::now();
                }
                continue;
            }
            Step::Done => break,
        };
        match event {
            Event::Rejected(r) => {
                rejected += 1;
                log_rejection(shard, message, &r);
            }
            Event::Chunk { home, chunk } => {
                while sent - acked >= CHUNKS_IN_FLIGHT_MAX {
                    queued += u64::from(wait_ack(shard, acks).await?);
                    acked += 1;
                }
                sent += 1;
                if home == shard.id {
                    shard.append(shard.id, chunk);
                } else {
                    let msg = DataMsg::Append {
                        claimer: shard.id,
                        chunk,
                    };
                    if shard.data_tx.send_to(home, msg).await.is_err() {
                        sent -= 1;
                        interrupted = Some(Interrupted::Stopping);
                        break;
                    }
                }
            }
        }
        if shard.shared.stopping() {
            interrupted = Some(if shard.shared.failed() {
                Interrupted::Failed
            } else {
                Interrupted::Stopping
            });
            break;
        }
        // Parsing a big batch is the longest CPU-bound run a shard has. Messages from other
        // shards, timers and socket completions are only noticed when the executor polls,
        // which glommio does on its own only every `preempt_timer` while nothing else is
        // runnable: a peer's request for a share, or this shard's own first deliveries,
        // waited 100 ms. A short sleep every INTAKE_SLICE makes it poll.
        if slice.elapsed() >= INTAKE_SLICE {
            sleep(Duration::from_micros(1)).await;
            slice = Instant::now();
        } else {
            glommio::yield_if_needed().await;
        }
    }
    shard.rejected_total(rejected);
    while acked < sent {
        queued += u64::from(wait_ack(shard, acks).await?);
        acked += 1;
    }
    match interrupted {
        Some(i) => Err(i),
        None => Ok((queued, rejected)),
    }
}

impl Shard {
    pub(super) fn rejected_total(&self, n: u64) {
        self.shared
            .counters
            .rejected
            .fetch_add(n, Ordering::Relaxed);
        let flushed = self.core.borrow_mut().log.flush();
        if let Err(e) = flushed {
            self.shared.fail(format!("delivery log: {e}"));
        }
    }
}

/// Waits for one chunk acknowledgement; gives up only on a fatal error (an unacknowledged
/// chunk may never be synced then, and the input must stay claimed).
pub(super) async fn wait_ack(shard: &Shard, acks: &LocalReceiver<u32>) -> Result<u32, Interrupted> {
    loop {
        let got = future::or(async { acks.recv().await }, async {
            sleep(FLAG_POLL).await;
            None
        })
        .await;
        if let Some(n) = got {
            return Ok(n);
        }
        if shard.shared.failed() {
            return Err(Interrupted::Failed);
        }
    }
}

pub(super) fn log_rejection(shard: &Shard, m: &MessageSpec, r: &Rejection) {
    let response = format!("line {}: {}", r.line, r.reason);
    let record = LogRecord {
        ts_unix_ms: shard.shared.clock.unix_ms(),
        event: Some(EventType::Rejected),
        recipient: &r.recipient,
        sender: &m.sender,
        campaign: &m.campaign,
        tenant: &m.tenant,
        domain: r.recipient.rsplit_once('@').map_or("", |(_, d)| d),
        response: &response,
        ..Default::default()
    };
    let logged = shard.core.borrow_mut().log.append(&record);
    if let Err(e) = logged {
        shard.shared.fail(format!("delivery log: {e}"));
    }
}

/// A check that failed with `warn`, once per campaign input.
pub(super) fn log_check(shard: &Shard, m: &MessageSpec, why: &str) {
    let record = LogRecord {
        ts_unix_ms: shard.shared.clock.unix_ms(),
        event: Some(EventType::Check),
        sender: &m.sender,
        campaign: &m.campaign,
        tenant: &m.tenant,
        response: why,
        ..Default::default()
    };
    let logged = shard.core.borrow_mut().log.append(&record);
    if let Err(e) = logged {
        shard.shared.fail(format!("delivery log: {e}"));
    }
}

/// Moves a claimed input to bad/ with its reason (on the blocking thread: a rename, a link
/// and a small write, each of which can wait for the disk).
pub(super) async fn refuse(shard: &Shard, c: &Claimed, reason: &str) {
    shard
        .shared
        .counters
        .inputs_bad
        .fetch_add(1, Ordering::Relaxed);
    let (spool, claimed, why) = (shard.spool.clone(), c.clone(), reason.to_string());
    let moved = glommio::executor()
        .spawn_blocking(move || spool.release_bad(&claimed, &why))
        .await;
    match moved {
        Ok(path) => tracing::warn!(
            "{}: refused ({}); moved to {}",
            printable(&c.name),
            printable(reason),
            printable(&path.display().to_string())
        ),
        Err(e) => tracing::error!(
            "{}: refused ({}) but cannot move it to bad/: {e}",
            printable(&c.name),
            printable(reason)
        ),
    }
}
