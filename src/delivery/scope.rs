//! Throttle scopes: every destination belongs to one. A static `[[routes]]` entry is its own
//! scope; otherwise a destination whose MX hosts match a provider's `mx_suffixes` rolls up to
//! that provider; otherwise its scope is its site, keyed by its MX host set. A scope's limits
//! hold across shards: each shard sends over its share of its connections
//! (`delivery::shares`). Pure code.

use crate::config::{Config, Route};

/// Between a destination's scope and an egress source in a scope key: with `[sources]`, a
/// throttle scope is (provider or site) x source, `yahoo@mta1`, as receivers count per
/// sending address. No provider name, MX host or route pattern holds one.
pub const SOURCE_SEP: char = '@';

/// The scope key of `base` (a provider, site or route) sent from `source`.
pub fn sourced_key(base: &str, source: &str) -> String {
    format!("{base}{SOURCE_SEP}{source}")
}

/// A scope key's destination part and its source's name (none: the system's address).
pub fn split_key(key: &str) -> (&str, Option<&str>) {
    match key.rsplit_once(SOURCE_SEP) {
        Some((base, source)) => (base, Some(source)),
        None => (key, None),
    }
}

/// The egress source a scope key sends from, if it names a configured one.
pub fn source_of<'c>(config: &'c Config, key: &str) -> Option<&'c crate::config::Source> {
    split_key(key).1.and_then(|name| config.egress.source(name))
}

/// A scope and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    /// `provider-name`, `site:mx1,mx2` or `route:pattern`; the delivery log's `provider`.
    pub key: String,
    /// Next hops in the order to try. Shared: every message to the destination carries it.
    pub hosts: std::sync::Arc<[NextHop]>,
}

/// One host to connect to. Its port never comes from DNS: an MX host gets `[smtp] port`;
/// only a static route (the operator's own words) names a port, or an address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NextHop {
    /// A host name, or for a static route possibly an IP address.
    pub name: String,
    pub port: u16,
    /// From a static route: exempt from `delivery::guard`'s address checks.
    pub from_route: bool,
}

/// The static route for `domain`, if one matches: an exact domain first, then the longest
/// `*.suffix`.
pub fn static_route<'c>(routes: &'c [Route], domain: &str) -> Option<&'c Route> {
    routes.iter().find(|r| r.domain == domain).or_else(|| {
        routes
            .iter()
            .filter_map(|r| {
                let suffix = r.domain.strip_prefix("*.")?;
                let matches = domain.len() > suffix.len()
                    && domain.ends_with(suffix)
                    && domain.as_bytes()[domain.len() - suffix.len() - 1] == b'.';
                matches.then_some((suffix.len(), r))
            })
            .max_by_key(|(len, _)| *len)
            .map(|(_, r)| r)
    })
}

/// The scope of a destination reached through `mx_hosts` (already in try order).
pub fn scope_for_mx(config: &Config, mx_hosts: &[String]) -> Scope {
    let provider = config.providers.iter().find(|(_, p)| {
        mx_hosts.iter().any(|h| {
            p.mx_suffixes
                .iter()
                .any(|s| h.ends_with(s.as_str()) || s.trim_start_matches('.') == h)
        })
    });
    let key = match provider {
        Some((name, _)) => name.clone(),
        None => {
            let mut sorted = mx_hosts.to_vec();
            sorted.sort();
            format!("site:{}", sorted.join(","))
        }
    };
    let hosts = mx_hosts
        .iter()
        .map(|name| NextHop {
            name: name.clone(),
            port: config.smtp.port,
            from_route: false,
        })
        .collect();
    Scope { key, hosts }
}

pub fn scope_for_route(config: &Config, route: &Route) -> Scope {
    let hosts = route
        .hosts
        .iter()
        .map(|h| {
            let (name, port) = host_port(h, config.smtp.port);
            NextHop {
                name,
                port,
                from_route: true,
            }
        })
        .collect();
    Scope {
        key: format!("route:{}", route.domain),
        hosts,
    }
}

/// Splits a static route's `host:port` (or `[v6]:port`), defaulting the port. Never for
/// names from DNS.
pub fn host_port(host: &str, default_port: u16) -> (String, u16) {
    if let Ok(addr) = host.parse::<std::net::SocketAddr>() {
        return (addr.ip().to_string(), addr.port());
    }
    match host.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => match p.parse() {
            Ok(port) => (h.to_string(), port),
            Err(_) => (host.to_string(), default_port),
        },
        _ => (host.to_string(), default_port),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::parse(
            "[providers.yahoo]\nmx_suffixes = [\".yahoodns.net\"]\n[providers.google]\nmx_suffixes = [\".google.com\"]\n[[routes]]\ndomain = \"example.test\"\nhosts = [\"127.0.0.1:2525\"]\n[[routes]]\ndomain = \"*.corp.test\"\nhosts = [\"127.0.0.2:25\"]\n[[routes]]\ndomain = \"*.test\"\nhosts = [\"127.0.0.3:25\"]\n",
            "t",
        )
        .unwrap()
    }

    #[test]
    fn routes_exact_then_longest_suffix() {
        let c = config();
        assert_eq!(
            static_route(&c.routes, "example.test").unwrap().hosts,
            ["127.0.0.1:2525"]
        );
        assert_eq!(
            static_route(&c.routes, "a.corp.test").unwrap().hosts,
            ["127.0.0.2:25"]
        );
        assert_eq!(
            static_route(&c.routes, "other.test").unwrap().hosts,
            ["127.0.0.3:25"]
        );
        assert!(static_route(&c.routes, "test").is_none());
        assert!(static_route(&c.routes, "example.com").is_none());
        assert!(static_route(&c.routes, "notcorp.test").unwrap().hosts == ["127.0.0.3:25"]);
    }

    #[test]
    fn provider_rollup_and_sites() {
        let c = config();
        let y = scope_for_mx(
            &c,
            &[
                "mta5.am0.yahoodns.net".into(),
                "mta6.am0.yahoodns.net".into(),
            ],
        );
        assert_eq!(y.key, "yahoo");
        let s1 = scope_for_mx(
            &c,
            &["mx2.small.example".into(), "mx1.small.example".into()],
        );
        let s2 = scope_for_mx(
            &c,
            &["mx1.small.example".into(), "mx2.small.example".into()],
        );
        assert_eq!(s1.key, "site:mx1.small.example,mx2.small.example");
        assert_eq!(s1.key, s2.key, "one site whatever the MX order");
        assert_eq!(s1.hosts[0].name, "mx2.small.example", "try order kept");
        assert_eq!(s1.hosts[0].port, 25);
        assert!(!s1.hosts[0].from_route);
        // A name from DNS is a name: a colon in it never becomes a port.
        let evil = scope_for_mx(&c, &["mx.evil.example:2525".into()]);
        assert_eq!(
            (evil.hosts[0].name.as_str(), evil.hosts[0].port),
            ("mx.evil.example:2525", 25)
        );
        let r = scope_for_route(&c, static_route(&c.routes, "example.test").unwrap());
        assert_eq!(
            r.hosts[0],
            NextHop {
                name: "127.0.0.1".into(),
                port: 2525,
                from_route: true
            }
        );
    }

    #[test]
    fn host_and_port_split() {
        assert_eq!(host_port("127.0.0.1:2525", 25), ("127.0.0.1".into(), 2525));
        assert_eq!(host_port("mx.example", 25), ("mx.example".into(), 25));
        assert_eq!(host_port("[::1]:26", 25), ("::1".into(), 26));
    }
}
