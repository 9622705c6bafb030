//! `[sources.NAME]`, `[pools.NAME]` and `[tenants.NAME]`: the local addresses mail leaves
//! from, the weighted groups of them that mail names, and each tenant's default group. Their
//! raw shape and their validation.
//!
//! Without any `[sources]` the system's address is the one source and nothing changes. With
//! them, mail goes from its pool: the batch header's `pool`, else its gateway user's, else its
//! tenant's, else `[pools.default]` if there is one, else the system's address (which counts
//! as a source of its own, with `[smtp] helo_name`).

use super::*;
use serde::Deserialize;
use std::net::IpAddr;

type Err<'a> = &'a dyn Fn(&str, String) -> ConfigError;

/// The pool mail uses when it names none and its tenant has none, if configured.
pub const DEFAULT_POOL: &str = "default";
/// Sources at most: each is a throttle scope per provider, so this bounds their product.
pub const SOURCES_MAX: usize = 256;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSource {
    address: String,
    helo_name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPool {
    sources: Vec<String>,
    weights: Option<Vec<u32>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    pool: Option<String>,
}

/// One egress source: a local address and the name it gives in EHLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub address: IpAddr,
    pub helo_name: String,
}

/// A pool: sources (indexes into `Egress::sources`) with their weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pool {
    pub members: Vec<(usize, u32)>,
}

/// Where mail leaves from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Egress {
    /// By name.
    pub sources: Vec<Source>,
    pub pools: BTreeMap<String, Pool>,
    /// A tenant's default pool.
    pub tenants: BTreeMap<String, String>,
}

impl Egress {
    /// No sources configured: mail leaves from the system's address, as before pools.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    pub fn source(&self, name: &str) -> Option<&Source> {
        self.sources.iter().find(|s| s.name == name)
    }

    /// The pool of mail that names `explicit` (a batch header's or a user's) for `tenant`:
    /// the named one, else the tenant's, else `default` if configured; None for the system's
    /// address. A name that is not a pool is an error naming it.
    pub fn pool_for<'a>(
        &'a self,
        explicit: Option<&'a str>,
        tenant: &str,
    ) -> Result<Option<&'a str>, String> {
        if let Some(name) = explicit.filter(|p| !p.is_empty()) {
            return match self.pools.get_key_value(name) {
                Some((k, _)) => Ok(Some(k.as_str())),
                None => Err(format!("unknown pool {name:?}")),
            };
        }
        if let Some(p) = self.tenants.get(tenant) {
            return Ok(Some(p.as_str()));
        }
        Ok(self
            .pools
            .get_key_value(DEFAULT_POOL)
            .map(|(k, _)| k.as_str()))
    }
}

/// A source or pool name: what a scope key and `source:NAME` can carry.
fn check_name(field: &str, name: &str, err: Err<'_>) -> Result<(), ConfigError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(err(
            field,
            format!("{name:?}: names are 1 to 64 letters, digits, '-', '_' or '.'"),
        ))
    }
}

pub(super) fn validate_egress(
    sources: BTreeMap<String, RawSource>,
    pools: BTreeMap<String, RawPool>,
    tenants: BTreeMap<String, RawTenant>,
    helo_default: &str,
    err: Err<'_>,
) -> Result<Egress, ConfigError> {
    if sources.len() > SOURCES_MAX {
        return Err(err(
            "sources",
            format!("at most {SOURCES_MAX} sources, got {}", sources.len()),
        ));
    }
    let mut out = Egress::default();
    for (name, s) in sources {
        let field = format!("sources.{name}");
        check_name(&field, &name, err)?;
        let address: IpAddr = s.address.trim().parse().map_err(|_| {
            err(
                &format!("{field}.address"),
                format!("not an IP address: {:?}", s.address),
            )
        })?;
        if address.is_unspecified() || address.is_multicast() {
            return Err(err(
                &format!("{field}.address"),
                format!("{address} cannot be a source address"),
            ));
        }
        if let Some(other) = out.sources.iter().find(|o| o.address == address) {
            return Err(err(
                &format!("{field}.address"),
                format!("{address} is also source {:?}", other.name),
            ));
        }
        let helo_name = s.helo_name.unwrap_or_else(|| helo_default.to_string());
        if helo_name.is_empty() || helo_name.contains(|c: char| c.is_whitespace() || c.is_control())
        {
            return Err(err(
                &format!("{field}.helo_name"),
                format!("must be a host name, got {helo_name:?}"),
            ));
        }
        out.sources.push(Source {
            name,
            address,
            helo_name,
        });
    }
    for (name, p) in pools {
        let field = format!("pools.{name}");
        check_name(&field, &name, err)?;
        if out.sources.is_empty() {
            return Err(err(&field, "a pool needs [sources.NAME] entries".into()));
        }
        if p.sources.is_empty() {
            return Err(err(
                &format!("{field}.sources"),
                "name at least one source".into(),
            ));
        }
        let weights = match p.weights {
            Some(w) if w.len() != p.sources.len() => {
                return Err(err(
                    &format!("{field}.weights"),
                    format!("{} weights for {} sources", w.len(), p.sources.len()),
                ))
            }
            Some(w) if w.iter().any(|&x| x == 0 || x > 1_000_000) => {
                return Err(err(
                    &format!("{field}.weights"),
                    "each weight is between 1 and 1000000".into(),
                ))
            }
            Some(w) => w,
            None => vec![1; p.sources.len()],
        };
        let mut members = Vec::with_capacity(p.sources.len());
        for (source, weight) in p.sources.iter().zip(weights) {
            let Some(i) = out.sources.iter().position(|s| &s.name == source) else {
                return Err(err(
                    &format!("{field}.sources"),
                    format!("unknown source {source:?}"),
                ));
            };
            if members.iter().any(|&(j, _)| j == i) {
                return Err(err(
                    &format!("{field}.sources"),
                    format!("source {source:?} is named twice"),
                ));
            }
            members.push((i, weight));
        }
        out.pools.insert(name, Pool { members });
    }
    for (name, t) in tenants {
        let field = format!("tenants.{name}.pool");
        if let Some(pool) = t.pool {
            if !out.pools.contains_key(&pool) {
                return Err(err(&field, format!("unknown pool {pool:?}")));
            }
            out.tenants.insert(name, pool);
        }
    }
    Ok(out)
}
