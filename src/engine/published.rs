//! What the world must publish for Spate's mail to pass, checked against DNS once the shards
//! run: each `[[dkim]]` selector's key record. A missing or different key does not stop the
//! engine (the record may be on its way), but every receiver would fail those signatures, so
//! the warning names the record and what to publish.

use super::Shard;
use crate::config::Config;
use crate::dns::message::{Answer, QueryType};
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
