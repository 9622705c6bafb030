//! The home's shell: the scheduler's tick (`Core::tick`), the status it publishes, and the
//! route lookups the tick asks for.

use super::*;
use crate::dns::resolver::Destination;
use crate::shard::{route_by_dns, route_statically};
use std::time::Instant;

/// The home scheduler: due deferrals to ready, ready to routed, demand to owners.
pub(in crate::engine) async fn scheduler(shard: Rc<Shard>) {
    let kicks = shard.schedule_rx.borrow_mut().take();
    let mut last_status: Option<Instant> = None;
    while !shard.core.borrow().is_closing() && !shard.shared.failed() {
        // A reload reaches the owner's scopes within a tick, even while this shard's intake
        // works through a long input (the intake loop looks only between inputs).
        shard.reload_if_changed();
        shard.serve_admin();
        shard.with_core(|core| core.tick());
        let now = shard.shared.clock.now();
        if last_status.is_none_or(|t| now.duration_since(t) >= super::super::STATUS_INTERVAL) {
            last_status = Some(now);
            let mut status = shard.core.borrow().status();
            status.dns = shard.resolver.stats();
            shard.shared.publish_status(status);
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

/// Resolves a domain to its scope (or a routing decision), then releases the recipients that
/// waited for it.
pub(in crate::engine) async fn resolve(shard: Rc<Shard>, domain: String) {
    let config = shard.config.borrow().clone();
    let route = match route_statically(&config, shard.id, &domain) {
        Some(route) => route,
        None => {
            let d = contained(shard.resolver.destination(&domain))
                .await
                .unwrap_or_else(|why| {
                    Destination::TemporaryFailure(format!("internal error resolving: {why}"))
                });
            route_by_dns(&config, shard.id, &domain, &d)
        }
    };
    shard.with_core(|core| core.resolved(&domain, route));
}
