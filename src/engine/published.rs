//! What the world must publish for Spate's mail to pass, checked against DNS once the shards
//! run: each `[[dkim]]` selector's key record, and each egress source's reverse DNS. A
//! missing or different record does not stop the engine (it may be on its way), but
//! receivers would fail those signatures or distrust that address, so the warning names the
//! record and what to publish.

use super::Shard;
use crate::config::Config;
use crate::dns::message::{reverse_name, Answer, QueryType};
use std::rc::Rc;
use std::sync::Arc;

/// Looks up every signer's key record and warns about each that would not verify.
pub(super) async fn check_dkim_records(shard: Rc<Shard>, config: Arc<Config>) {
    for d in &config.dkim {
        let s = &d.signer;
        let name = s.record_name();
        let problem = match shard.resolver.query(&name, QueryType::Txt).await {
            Answer::Txt { records, .. } => s.check_published(&records).err(),
            Answer::NxDomain { .. } | Answer::NoData { .. } => s.check_published(&[]).err(),
            Answer::ServerFailure(why) => Some(format!("{name} could not be looked up: {why}")),
            other => Some(format!("{name} could not be looked up: {other:?}")),
        };
        match problem {
            Some(why) => tracing::warn!(
                "DKIM: signatures by {} will not verify: {why}",
                s.path.display()
            ),
            None => tracing::info!("DKIM: {name} publishes the key of {}", s.path.display()),
        }
    }
}

/// Looks up every egress source's PTR record and its EHLO name's addresses, and warns
/// (loudly: the big providers refuse or junk mail from an address whose reverse DNS does not
/// name its EHLO name, and that name does not lead back to the address) about each source
/// that fails forward-confirmed reverse DNS.
pub(super) async fn check_sources(shard: Rc<Shard>, config: Arc<Config>) {
    for s in &config.egress.sources {
        let owner = reverse_name(s.address);
        let helo = s.helo_name.trim_end_matches('.').to_ascii_lowercase();
        let names = match shard.resolver.query(&owner, QueryType::Ptr).await {
            Answer::Ptr { names, .. } => names,
            Answer::NxDomain { .. } | Answer::NoData { .. } => Vec::new(),
            Answer::ServerFailure(why) => {
                tracing::warn!(
                    "source {} ({}): its reverse DNS ({owner}) could not be looked up: {why}",
                    s.name,
                    s.address
                );
                continue;
            }
            other => {
                tracing::warn!(
                    "source {} ({}): its reverse DNS ({owner}) could not be looked up: {other:?}",
                    s.name,
                    s.address
                );
                continue;
            }
        };
        let problem = if names.is_empty() {
            Some(format!(
                "{owner} has no PTR record; publish one naming {helo}"
            ))
        } else if !names.contains(&helo) {
            Some(format!(
                "{owner} names {}, not its EHLO name {helo}; make them the same",
                names.join(", ")
            ))
        } else {
            match shard.resolver.addresses(&helo).await {
                Ok(addrs) if addrs.contains(&s.address) => None,
                Ok(addrs) => Some(format!(
                    "its EHLO name {helo} resolves to {addrs:?}, not to {}",
                    s.address
                )),
                Err(e) => Some(format!(
                    "its EHLO name {helo} has no address ({}); publish {} for it",
                    e.why, s.address
                )),
            }
        };
        match problem {
            Some(why) => tracing::warn!(
                "WARNING: source {} ({}) fails forward-confirmed reverse DNS, and receivers will refuse or junk its mail: {why}",
                s.name,
                s.address
            ),
            None => tracing::info!(
                "source {} ({}): reverse DNS names {helo}, which resolves back to it",
                s.name,
                s.address
            ),
        }
    }
}
