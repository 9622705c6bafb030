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
    warmup: Option<String>,
    warmup_start: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWarmup {
    daily: Vec<u64>,
    providers: Option<Vec<String>>,
    hold_deferral_rate: Option<f64>,
    hold_min_attempts: Option<u64>,
}

/// A tenant's weight at most in its scopes' fair shares.
pub const TENANT_WEIGHT_MAX: u32 = 1_000;

/// Steps a warm-up table has at most (a year of days).
pub const WARMUP_STEPS_MAX: usize = 366;
/// A day's cap at most in a warm-up table.
pub const WARMUP_DAILY_MAX: u64 = 1_000_000_000;
/// Default `hold_deferral_rate`: a day on which more than this share of the attempts were
/// deferred holds the source at its step.
pub const DEFAULT_HOLD_DEFERRAL_RATE: f64 = 0.05;
/// Default `hold_min_attempts`: fewer attempts in a day say nothing of its deferral rate.
pub const DEFAULT_HOLD_MIN_ATTEMPTS: u64 = 20;

/// `[warmup.NAME]`: how many 2xx deliveries a new source may have at each provider per UTC
/// day, by the days since its `warmup_start`; and when a day's deferrals hold it at its step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warmup {
    pub name: String,
    pub daily: Vec<u64>,
    /// The providers it caps; every configured provider if none are named.
    pub providers: Vec<String>,
    /// `hold_deferral_rate`, in parts per ten thousand.
    pub hold_deferral_bp: u32,
    pub hold_min_attempts: u64,
}

/// A source's warm-up: its schedule (a key of `Egress::warmups`) and the UTC day (days since
/// 1970-01-01) it starts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SourceWarmup {
    pub schedule: String,
    pub start_day: u64,
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
    weight: Option<u32>,
}

/// One egress source: a local address and the name it gives in EHLO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Source {
    pub name: String,
    pub address: IpAddr,
    pub helo_name: String,
    pub warmup: Option<SourceWarmup>,
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
    /// A tenant's weight in its scopes' fair shares (`schedule::lanes`); 1 if not here.
    pub tenant_weights: BTreeMap<String, u32>,
    /// `[warmup.NAME]` schedules, by name.
    pub warmups: BTreeMap<String, Warmup>,
}

impl Egress {
    /// No sources configured: mail leaves from the system's address, as before pools.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// `tenant`'s weight in fair shares.
    pub fn tenant_weight(&self, tenant: &str) -> u32 {
        if self.tenant_weights.is_empty() {
            return 1;
        }
        self.tenant_weights.get(tenant).copied().unwrap_or(1)
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
    (warmups, providers): (BTreeMap<String, RawWarmup>, &BTreeMap<String, Provider>),
    helo_default: &str,
    err: Err<'_>,
) -> Result<Egress, ConfigError> {
    let mut out = Egress::default();
    for (name, w) in warmups {
        let warmup = validate_warmup(&name, w, providers, err)?;
        out.warmups.insert(name, warmup);
    }
    if sources.len() > SOURCES_MAX {
        return Err(err(
            "sources",
            format!("at most {SOURCES_MAX} sources, got {}", sources.len()),
        ));
    }
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
        let warmup = match (s.warmup, s.warmup_start) {
            (None, None) => None,
            (Some(schedule), Some(start)) => {
                if !out.warmups.contains_key(&schedule) {
                    return Err(err(
                        &format!("{field}.warmup"),
                        format!("unknown warm-up schedule {schedule:?}"),
                    ));
                }
                let start_day = parse_date(&start).ok_or_else(|| {
                    err(
                        &format!("{field}.warmup_start"),
                        format!("a date is YYYY-MM-DD, got {start:?}"),
                    )
                })?;
                Some(SourceWarmup {
                    schedule,
                    start_day,
                })
            }
            (Some(_), None) => {
                return Err(err(
                    &format!("{field}.warmup_start"),
                    "a source with a warmup needs its start date (YYYY-MM-DD)".into(),
                ))
            }
            (None, Some(_)) => {
                return Err(err(
                    &format!("{field}.warmup"),
                    "warmup_start without a warmup schedule".into(),
                ))
            }
        };
        out.sources.push(Source {
            name,
            address,
            helo_name,
            warmup,
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
        if let Some(w) = t.weight {
            if !(1..=TENANT_WEIGHT_MAX).contains(&w) {
                return Err(err(
                    &format!("tenants.{name}.weight"),
                    format!("a weight is 1 to {TENANT_WEIGHT_MAX}, got {w}"),
                ));
            }
            out.tenant_weights.insert(name.clone(), w);
        }
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

fn validate_warmup(
    name: &str,
    w: RawWarmup,
    providers: &BTreeMap<String, Provider>,
    err: Err<'_>,
) -> Result<Warmup, ConfigError> {
    let field = format!("warmup.{name}");
    check_name(&field, name, err)?;
    if w.daily.is_empty() || w.daily.len() > WARMUP_STEPS_MAX {
        return Err(err(
            &format!("{field}.daily"),
            format!("1 to {WARMUP_STEPS_MAX} daily caps, got {}", w.daily.len()),
        ));
    }
    if let Some(&bad) = w.daily.iter().find(|&&n| n == 0 || n > WARMUP_DAILY_MAX) {
        return Err(err(
            &format!("{field}.daily"),
            format!("each day's cap is 1 to {WARMUP_DAILY_MAX}, got {bad}"),
        ));
    }
    let names = match w.providers {
        Some(list) if list.is_empty() => {
            return Err(err(
                &format!("{field}.providers"),
                "name at least one provider, or leave it out for all".into(),
            ))
        }
        Some(list) => {
            for p in &list {
                if !providers.contains_key(p) {
                    return Err(err(
                        &format!("{field}.providers"),
                        format!("unknown provider {p:?}"),
                    ));
                }
            }
            list
        }
        None => providers.keys().cloned().collect(),
    };
    let rate = w.hold_deferral_rate.unwrap_or(DEFAULT_HOLD_DEFERRAL_RATE);
    if !(0.0..=1.0).contains(&rate) {
        return Err(err(
            &format!("{field}.hold_deferral_rate"),
            format!("a share between 0 and 1, got {rate}"),
        ));
    }
    Ok(Warmup {
        name: name.to_string(),
        daily: w.daily,
        providers: names,
        hold_deferral_bp: (rate * 10_000.0).round() as u32,
        hold_min_attempts: w.hold_min_attempts.unwrap_or(DEFAULT_HOLD_MIN_ATTEMPTS),
    })
}

/// `YYYY-MM-DD` as days since 1970-01-01 (the proleptic Gregorian calendar, UTC).
pub fn parse_date(s: &str) -> Option<u64> {
    let b = s.trim().as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = std::str::from_utf8(&b[r]).ok()?;
        t.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| t.parse().ok())?
    };
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
    let days_in = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if y < 1970 || !(1..=12).contains(&m) || d < 1 || d > days_in[(m - 1) as usize] {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    u64::try_from(era * 146_097 + doe - 719_468).ok()
}

/// Days since 1970-01-01 as `YYYY-MM-DD`.
pub fn date_text(day: u64) -> String {
    let z = day as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}
