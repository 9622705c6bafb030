//! Which shard sends a scope's mail.

/// A provider's scopes (every `[providers.NAME]`, at any egress source) and any scope at an
/// egress source have one owner shard, by a hash of their key: every home's recipients of
/// the scope wait in their own lanes, and that owner's credit goes round the homes evenly, so
/// the scope's rate is shared between senders across the engine (exactly within each home's
/// lanes, as evenly as the senders' mail is spread over the homes between them), and one
/// throttle learns what the receiver takes (split between shards, a throttle with a small
/// share cut from the little it got through: docs/throttling.md). Other scopes (sites, the
/// long tail) are sent by each home's own shard, over its share of the scope's connections
/// (`delivery::shares`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ScopeOwners {
    pub shards: usize,
    /// The configured providers.
    pub providers: std::collections::HashSet<String>,
}

impl ScopeOwners {
    /// The owners under `config` for an engine of `shards`.
    pub fn new(config: &crate::config::Config, shards: usize) -> ScopeOwners {
        ScopeOwners {
            shards,
            providers: config.providers.keys().cloned().collect(),
        }
    }

    /// The shard that sends `key`'s mail, routed by the shard `routing`.
    pub fn owner(&self, key: &str, routing: usize) -> usize {
        if self.shards <= 1 {
            return routing;
        }
        let (base, source) = crate::delivery::scope::split_key(key);
        if source.is_some() || self.providers.contains(base) {
            (crate::hash::stable_hash(key.as_bytes()) % self.shards as u64) as usize
        } else {
            routing
        }
    }
}
