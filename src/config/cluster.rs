//! `[cluster]`: several nodes sharing provider-wide limits through Redis (`crate::cluster`).
//! Its raw shape and its validation; the keys beyond INTERFACE.md's `redis` and `node` are
//! extensions (docs/configuration.md).

use super::units::parse_duration;
use super::ConfigError;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

type Err<'a> = &'a dyn Fn(&str, String) -> ConfigError;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) redis: Option<String>,
    pub(super) failover: Option<Vec<String>>,
    pub(super) node: Option<String>,
    pub(super) password: Option<String>,
    pub(super) tls_ca_file: Option<PathBuf>,
    pub(super) lease: Option<String>,
    pub(super) fallback_share: Option<f64>,
    pub(super) key_prefix: Option<String>,
    pub(super) secret: Option<String>,
    pub(super) advertise: Option<String>,
}

/// How long a node's leases last unless renewed (renewed every `cluster::TICK`): what a dead
/// node holds for at most, and how long a node keeps its lease through a Redis outage before
/// it falls back to `fallback_share`.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(2);
pub const LEASE_MIN: Duration = Duration::from_millis(500);
pub const LEASE_MAX: Duration = Duration::from_secs(30);
/// Each node's share of every shared limit while Redis cannot be reached. A third suits three
/// nodes; with more nodes operators set 1/N (or less) to keep the sum within the limit.
pub const DEFAULT_FALLBACK_SHARE: f64 = 0.25;
/// Replicas `failover` may list at most.
pub const FAILOVER_MAX: usize = 8;
/// A node's name: letters, digits, `.`, `_`, `-`, at most this long.
pub const NODE_NAME_MAX: usize = 64;
/// The shortest `secret` taken: the node-to-node endpoint is as strong as it.
pub const SECRET_MIN: usize = 16;

/// Where the shared state lives and how this node joins it.
#[derive(Debug, Clone, PartialEq)]
pub struct Cluster {
    pub node: String,
    /// Host name (or address) and port of the Redis server.
    pub host: String,
    pub port: u16,
    /// Its replicas, tried in order when it does not answer or is no longer the master
    /// (a replica promoted by Sentinel or by hand): `(host, port)`.
    pub failover: Vec<(String, u16)>,
    /// `rediss://`: TLS to Redis, verified against `tls_ca_file` (or the public roots).
    pub tls: bool,
    pub tls_ca_file: Option<PathBuf>,
    /// ACL user (Redis 6+) and password, from the URL or `password`.
    pub username: Option<String>,
    pub password: Option<String>,
    /// The database number of the URL's path (`/2`), 0 by default.
    pub db: u32,
    pub lease: Duration,
    pub fallback_share: f64,
    /// Every key and channel this cluster uses starts with it (several clusters, one Redis).
    pub key_prefix: String,
    /// The token nodes present to each other's node-to-node endpoint (`spate drain`); the
    /// same on every node. Without it this node takes no transfers.
    pub secret: Option<String>,
    /// Where the other nodes reach this node's admin API (`http://10.0.0.2:8026`); by default
    /// the address it listens on, unless that is unspecified (0.0.0.0, ::).
    pub advertise: Option<String>,
}

pub(super) fn validate_cluster(
    raw: Option<RawCluster>,
    err: Err<'_>,
) -> Result<Option<Cluster>, ConfigError> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    let url = raw
        .redis
        .ok_or_else(|| err("cluster.redis", "required in [cluster]".into()))?;
    let node = raw
        .node
        .ok_or_else(|| err("cluster.node", "required in [cluster]".into()))?;
    if !is_node_name(&node) {
        return Err(err(
            "cluster.node",
            format!("must be 1 to {NODE_NAME_MAX} letters, digits, '.', '_' or '-', got {node:?}"),
        ));
    }
    let parsed = parse_redis_url(&url).map_err(|m| err("cluster.redis", m))?;
    let password = match (parsed.password, raw.password) {
        (Some(_), Some(_)) => {
            return Err(err(
                "cluster.password",
                "set both here and in cluster.redis: keep one".into(),
            ))
        }
        (a, b) => a.or(b),
    };
    let mut failover = Vec::new();
    for (i, url) in raw.failover.unwrap_or_default().into_iter().enumerate() {
        let field = format!("cluster.failover[{i}]");
        let f = parse_redis_url(&url).map_err(|m| err(&field, m))?;
        if f.tls != parsed.tls || f.username.is_some() || f.password.is_some() || f.db != parsed.db
        {
            return Err(err(
                &field,
                "must have cluster.redis's scheme and database, and no credentials of its own (they come from cluster.redis or cluster.password)".into(),
            ));
        }
        failover.push((f.host, f.port));
    }
    if failover.len() > FAILOVER_MAX {
        return Err(err(
            "cluster.failover",
            format!("at most {FAILOVER_MAX} servers, got {}", failover.len()),
        ));
    }
    if raw.tls_ca_file.is_some() && !parsed.tls {
        return Err(err(
            "cluster.tls_ca_file",
            "set for a redis:// URL: TLS needs rediss://".into(),
        ));
    }
    let lease = match &raw.lease {
        Some(s) => parse_duration(s).map_err(|m| err("cluster.lease", m))?,
        None => DEFAULT_LEASE,
    };
    if !(LEASE_MIN..=LEASE_MAX).contains(&lease) {
        return Err(err(
            "cluster.lease",
            format!("must be between {LEASE_MIN:?} and {LEASE_MAX:?}, got {lease:?}"),
        ));
    }
    let fallback_share = raw.fallback_share.unwrap_or(DEFAULT_FALLBACK_SHARE);
    if !(fallback_share > 0.0 && fallback_share <= 1.0) {
        return Err(err(
            "cluster.fallback_share",
            format!("must be above 0 and at most 1, got {fallback_share}"),
        ));
    }
    let key_prefix = raw.key_prefix.unwrap_or_else(|| "spate".into());
    if key_prefix.is_empty()
        || key_prefix.len() > 64
        || key_prefix.bytes().any(|b| !b.is_ascii_graphic())
    {
        return Err(err(
            "cluster.key_prefix",
            format!("must be 1 to 64 printable characters, got {key_prefix:?}"),
        ));
    }
    if let Some(secret) = &raw.secret {
        if secret.len() < SECRET_MIN || secret.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(err(
                "cluster.secret",
                format!("must be at least {SECRET_MIN} printable characters without spaces"),
            ));
        }
    }
    if let Some(url) = &raw.advertise {
        parse_advertise(url).map_err(|m| err("cluster.advertise", m))?;
    }
    Ok(Some(Cluster {
        secret: raw.secret,
        advertise: raw.advertise,
        node,
        host: parsed.host,
        port: parsed.port,
        failover,
        tls: parsed.tls,
        tls_ca_file: raw.tls_ca_file,
        username: parsed.username,
        password,
        db: parsed.db,
        lease,
        fallback_share,
        key_prefix,
    }))
}

/// 1 to `NODE_NAME_MAX` letters, digits, `.`, `_` or `-`.
pub fn is_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NODE_NAME_MAX
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

impl Cluster {
    /// The servers to try, the configured one first.
    pub fn servers(&self) -> impl Iterator<Item = (&str, u16)> {
        std::iter::once((self.host.as_str(), self.port))
            .chain(self.failover.iter().map(|(h, p)| (h.as_str(), *p)))
    }
}

/// `http://host:port` or `https://host:port` (no path): whether TLS, and the host and
/// port.
pub fn parse_advertise(url: &str) -> Result<(bool, String, u16), String> {
    let bad =
        |why: &str| format!("{why}: expected http://host:port or https://host:port, got {url:?}");
    let (https, rest) = if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else {
        return Err(bad("not an http:// or https:// URL"));
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (h, p),
        None => return Err(bad("no port")),
    };
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains('/') || host.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(bad("no host"));
    }
    let port = port
        .parse::<u16>()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| bad("bad port"))?;
    Ok((https, host.to_string(), port))
}

struct RedisUrl {
    tls: bool,
    host: String,
    port: u16,
    username: Option<String>,
    password: Option<String>,
    db: u32,
}

/// `redis://[[user]:password@]host[:port][/db]`, or `rediss://` for TLS.
fn parse_redis_url(url: &str) -> Result<RedisUrl, String> {
    let bad =
        |why: &str| format!("{why}: expected redis://[:password@]host[:port][/db], got {url:?}");
    let (tls, rest) = if let Some(r) = url.strip_prefix("redis://") {
        (false, r)
    } else if let Some(r) = url.strip_prefix("rediss://") {
        (true, r)
    } else {
        return Err(bad("not a redis:// or rediss:// URL"));
    };
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (username, password) = match userinfo {
        None => (None, None),
        Some(u) => match u.split_once(':') {
            Some((user, pass)) => (
                Some(user.to_string()).filter(|s| !s.is_empty()),
                Some(pass.to_string()).filter(|s| !s.is_empty()),
            ),
            None => (Some(u.to_string()).filter(|s| !s.is_empty()), None),
        },
    };
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed ["))?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if host.is_empty() || host.bytes().any(|b| !b.is_ascii_graphic()) {
        return Err(bad("no host"));
    }
    let port = match port {
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|&p| p > 0)
            .ok_or_else(|| bad("bad port"))?,
        None => 6379,
    };
    let db = match path {
        "" => 0,
        d => d
            .parse::<u32>()
            .map_err(|_| bad("the path must be a database number"))?,
    };
    Ok(RedisUrl {
        tls,
        host: host.to_string(),
        port,
        username,
        password,
        db,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_their_parts_and_bad_ones_say_why() {
        let u = parse_redis_url("redis://127.0.0.1:6380/2").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.db),
            (false, "127.0.0.1", 6380, 2)
        );
        assert_eq!((u.username, u.password), (None, None));
        let u = parse_redis_url("rediss://spate:s3cret@redis.example:6379").unwrap();
        assert!(u.tls);
        assert_eq!(u.username.as_deref(), Some("spate"));
        assert_eq!(u.password.as_deref(), Some("s3cret"));
        let u = parse_redis_url("redis://:pw@[::1]").unwrap();
        assert_eq!((u.host.as_str(), u.port), ("::1", 6379));
        assert_eq!((u.username, u.password.as_deref()), (None, Some("pw")));
        assert_eq!(
            parse_advertise("http://10.0.0.2:8026/").unwrap(),
            (false, "10.0.0.2".into(), 8026)
        );
        assert_eq!(
            parse_advertise("https://[::1]:443").unwrap(),
            (true, "::1".into(), 443)
        );
        for bad in [
            "10.0.0.2:8026",
            "http://h",
            "http://:80",
            "http://h:0",
            "ftp://h:1",
        ] {
            assert!(parse_advertise(bad).is_err(), "{bad}");
        }
        for bad in [
            "http://x",
            "redis://",
            "redis://h:0",
            "redis://h:99999",
            "redis://h/x",
            "redis://[::1",
        ] {
            assert!(parse_redis_url(bad).is_err(), "{bad}");
        }
    }
}
