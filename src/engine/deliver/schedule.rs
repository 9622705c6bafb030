//! The home's shell: the scheduler's tick (`crate::schedule::Home`), routing lookups,
//! announcing demand, and rendering what an owner's credit allows.

use super::*;

/// The home scheduler: due deferrals to ready, ready to routed, demand to owners.
pub(in crate::engine) async fn scheduler(shard: Rc<Shard>) {
    let kicks = shard.schedule_rx.borrow_mut().take();
    let mut last_sweep = shard.shared.clock.now();
    let mut last_status: Option<Instant> = None;
    while !shard.closing.get() && !shard.shared.failed() {
        // A reload reaches the owner's scopes within a tick, even while this shard's intake
        // works through a long input (the intake loop looks only between inputs).
        shard.reload_if_changed();
        if !shard.config.borrow().delivery.paused {
            shard.schedule();
        }
        let now = shard.shared.clock.now();
        if last_status.is_none_or(|t| now.duration_since(t) >= super::super::STATUS_INTERVAL) {
            last_status = Some(now);
            shard.publish_status();
        }
        if shard.shared.clock.now().duration_since(last_sweep) >= SCOPE_SWEEP_INTERVAL {
            last_sweep = shard.shared.clock.now();
            shard.owner.borrow_mut().forget_idle_scopes(last_sweep);
        }
        // The next tick, or sooner when recipients become ready.
        match &kicks {
            Some(rx) => {
                futures_lite::future::or(sleep(SCHEDULE_TICK), async {
                    let _ = rx.recv().await;
                })
                .await
            }
            None => sleep(SCHEDULE_TICK).await,
        }
    }
}

impl Shard {
    /// Publishes this shard's `ShardStatus` (a copy of its home's and owner's state).
    pub(in crate::engine) fn publish_status(&self) {
        let queue = self.queue.borrow();
        let status = super::super::ShardStatus {
            shard: self.id,
            at_unix_ms: self.shared.clock.unix_ms(),
            live_recipients: queue.index.live(),
            segments: queue.segment_count(),
            home: self.home.borrow().status(),
            scopes: self.owner.borrow().status(),
        };
        drop(queue);
        self.shared.publish_status(status);
    }

    pub(in crate::engine) fn schedule(self: &Rc<Self>) {
        let Tick {
            decided,
            to_resolve,
        } = self.home.borrow_mut().tick(
            &self.queue.borrow().index,
            self.shared.clock.unix_ms(),
            self.shared.clock.now(),
        );
        // Outcomes decided by routing (null MX, NXDOMAIN, a refused MX) reach the queue and
        // the delivery log with the next group commit: ask for one now, as outcomes from an
        // owner do, or they would wait for unrelated traffic on this shard.
        if !decided.is_empty() {
            let _ = self.sync_kick.try_send(());
        }
        for (seq, outcome) in decided {
            self.finish(seq, &outcome, None);
        }
        for domain in to_resolve {
            self.spawn_into(self.queues.delivery, resolve(Rc::clone(self), domain))
                .detach();
        }
        self.announce_demand();
    }

    /// Tells each owner how many recipients wait here for its scopes: when that differs from
    /// the owner's view, and now and then anyway, so no drift can leave recipients waiting.
    pub(in crate::engine) fn announce_demand(self: &Rc<Self>) {
        let messages = self.home.borrow_mut().announce(self.shared.clock.now());
        for (owner, scope, count) in messages {
            self.send_ctl(
                owner,
                CtlMsg::Demand {
                    scope,
                    home: self.id,
                    count,
                },
            );
        }
    }

    /// Home: renders up to `n` waiting recipients of `scope` and sends them to its owner.
    pub(in crate::engine) fn on_credit(self: &Rc<Self>, scope: String, n: u32) {
        let config = self.config.borrow().clone();
        let mut msgs = Vec::new();
        let mut failed = Vec::new();
        let taken = self
            .home
            .borrow_mut()
            .take_credit(&scope, n, self.closing.get());
        let Some(Taken {
            owner,
            fallback_hosts,
            seqs,
        }) = taken
        else {
            // Nothing here any more, or draining: give the credit back.
            self.send_data(
                owner_shard(&scope, self.shards),
                DataMsg::Prepared {
                    scope,
                    home: self.id,
                    granted: n,
                    msgs,
                },
            );
            return;
        };
        let max_rcpts = config.delivery.recipients_per_transaction as usize;
        for seq in seqs {
            let joined = match msgs.last_mut() {
                Some(last) if last.rcpts.len() < max_rcpts => self.join(seq, last),
                _ => false,
            };
            if joined {
                continue;
            }
            match self.render(seq, &config, &fallback_hosts) {
                Ok(Some(p)) => msgs.push(p),
                Ok(None) => {}
                Err(why) => failed.push((seq, why)),
            }
        }
        // A recipient that cannot be rendered (a damaged record, a template that no longer
        // parses) will not render later either: it bounces rather than waits forever.
        for (seq, why) in failed {
            tracing::warn!("shard {}: cannot render recipient {seq}: {why}", self.id);
            let outcome = Outcome {
                verdict: Verdict::Bounced,
                fault: Fault::Message,
                code: 0,
                enhanced: Some(crate::smtp::reply::EnhancedCode::new(5, 3, 0)),
                response: format!("cannot render the message: {why}"),
                category: Some(BounceCategory::Other),
                pushback: false,
            };
            self.finish(seq, &outcome, None);
            let _ = self.sync_kick.try_send(());
        }
        self.send_data(
            owner,
            DataMsg::Prepared {
                scope,
                home: self.id,
                granted: n,
                msgs,
            },
        );
    }

    /// Renders one recipient's message, marking it in flight; `None` if it is no longer due.
    pub(in crate::engine) fn render(
        &self,
        seq: u64,
        config: &Config,
        fallback_hosts: &Arc<[NextHop]>,
    ) -> Result<Option<Prepared>, String> {
        let mut queue = self.queue.borrow_mut();
        let Some(e) = queue.index.entry(seq).copied() else {
            return Ok(None);
        };
        if !matches!(e.state, EntryState::Waiting | EntryState::Deferred) {
            return Ok(None);
        }
        let payload = queue.payload_at(seq, e.offset).map_err(|e| e.to_string())?;
        let r = RecipientPayload::decode(&payload).map_err(|e| e.to_string())?;
        let rendering = self.rendering(&queue, r.message_seq)?;
        let mut message = Vec::new();
        let message_id = rendering.render(
            seq,
            &r.values,
            &config.smtp.helo_name,
            self.shared.clock.unix_ms(),
            &mut message,
        )?;
        queue.index.set_in_flight(seq, true);
        // The recipient's own destination: a provider scope spans domains with MX hosts
        // of their own.
        let domain = &queue.index.domain_names[e.domain as usize];
        let hosts = self
            .home
            .borrow()
            .route_hosts(domain)
            .unwrap_or_else(|| Arc::clone(fallback_hosts));
        Ok(Some(Prepared {
            rcpts: vec![(seq, r.recipient.to_string())],
            home: self.id,
            mail_from: rendering.sender.clone(),
            message,
            message_id,
            group: rendering.verbatim.then_some((r.message_seq, e.domain)),
            hosts,
        }))
    }

    /// Adds `seq` to `p`'s transaction if it is another recipient of the same verbatim
    /// message at the same domain (personalised messages go one per transaction).
    pub(in crate::engine) fn join(&self, seq: u64, p: &mut Prepared) -> bool {
        let Some((message_seq, domain)) = p.group else {
            return false;
        };
        let mut queue = self.queue.borrow_mut();
        let Some(e) = queue.index.entry(seq).copied() else {
            return false;
        };
        let due = matches!(e.state, EntryState::Waiting | EntryState::Deferred);
        if !due || e.message_seq != message_seq || e.domain != domain {
            return false;
        }
        let Some(rcpt) = queue.payload_at(seq, e.offset).ok().and_then(|b| {
            RecipientPayload::decode_recipient(&b)
                .ok()
                .map(|(_, r)| r.to_string())
        }) else {
            return false;
        };
        queue.index.set_in_flight(seq, true);
        p.rcpts.push((seq, rcpt));
        true
    }

    pub(in crate::engine) fn rendering(
        &self,
        queue: &crate::queue::store::ShardQueue,
        message_seq: u64,
    ) -> Result<Rc<Rendering>, String> {
        if let Some(r) = self.renderings.borrow().get(&message_seq) {
            return Ok(Rc::clone(r));
        }
        let info = queue
            .index
            .messages
            .get(&message_seq)
            .ok_or("message record missing")?;
        let payload = queue
            .payload_at(message_seq, info.offset)
            .map_err(|e| e.to_string())?;
        let m = MessagePayload::decode(&payload).map_err(|e| e.to_string())?;
        let r = Rc::new(Rendering::from_record(&m)?);
        let weight = r.weight();
        self.renderings
            .borrow_mut()
            .insert(message_seq, Rc::clone(&r), weight);
        Ok(r)
    }
}

/// Resolves a domain to its scope (or a routing decision), then releases the recipients that
/// waited for it.
pub(in crate::engine) async fn resolve(shard: Rc<Shard>, domain: String) {
    let config = shard.config.borrow().clone();
    let route = match static_route(&config.routes, &domain) {
        Some(route) => {
            let scope = scope_for_route(&config, route);
            let owner = owner_shard(&scope.key, shard.shards);
            Route::Scope(scope, owner)
        }
        None => {
            let d = contained(shard.resolver.destination(&domain))
                .await
                .unwrap_or_else(|why| {
                    Destination::TemporaryFailure(format!("internal error resolving: {why}"))
                });
            match (&d, classify_destination(&domain, &d)) {
                (Destination::Hosts(hosts), None) => {
                    let scope = scope_for_mx(&config, hosts);
                    let owner = owner_shard(&scope.key, shard.shards);
                    Route::Scope(scope, owner)
                }
                (_, Some(o)) => Route::Decided(o),
                (_, None) => Route::Decided(Outcome {
                    verdict: Verdict::Deferred,
                    fault: Fault::Connection,
                    code: 0,
                    enhanced: None,
                    response: format!("no route to {domain}"),
                    category: None,
                    pushback: false,
                }),
            }
        }
    };
    // The recipients that waited go back to the front: the scheduler, woken now, routes
    // them from the cache.
    shard
        .home
        .borrow_mut()
        .resolved(&domain, route, shard.shared.clock.now());
    let _ = shard.schedule_kick.try_send(());
}
