//! `[[rules]]` (an extension of INTERFACE.md): reply rules, what the adaptive throttle cannot
//! learn (`delivery::rules`), and `[delivery] default_rules`, the ones Spate ships.

use super::*;
use crate::delivery::rules::{Action, Rule};
use serde::Deserialize;
use std::sync::Arc;

type Err<'a> = &'a dyn Fn(&str, String) -> ConfigError;

/// Rules at most (each failure reply is matched against them in order).
pub const RULES_MAX: usize = 200;
/// A pattern's compiled program at most (the regex crate's size limit), so a pattern
/// cannot cost the engine unbounded memory.
const PATTERN_BYTES_MAX: usize = 1 << 20;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRule {
    name: String,
    #[serde(rename = "match")]
    pattern: String,
    #[serde(default)]
    providers: Vec<String>,
    threshold: Option<u32>,
    period: Option<String>,
    action: String,
    duration: Option<String>,
    ramp: Option<String>,
    rate: Option<String>,
    connections: Option<u32>,
}

pub(super) fn validate_rules(
    raw: Vec<RawRule>,
    default_rules: bool,
    providers: &BTreeMap<String, Provider>,
    err: Err<'_>,
) -> Result<Vec<Arc<Rule>>, ConfigError> {
    if raw.len() > RULES_MAX {
        return Err(err(
            "rules",
            format!("at most {RULES_MAX} rules, got {}", raw.len()),
        ));
    }
    let mut out: Vec<Arc<Rule>> = Vec::new();
    for (i, r) in raw.into_iter().enumerate() {
        let field = |k: &str| format!("rules[{i}].{k}");
        let ok_name = !r.name.is_empty()
            && r.name.len() <= 64
            && r.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok_name {
            return Err(err(
                &field("name"),
                format!("{:?}: 1 to 64 letters, digits, '-', '_' or '.'", r.name),
            ));
        }
        if out.iter().any(|o| o.name == r.name) {
            return Err(err(&field("name"), format!("{:?} is named twice", r.name)));
        }
        let pattern = regex::RegexBuilder::new(&r.pattern)
            .size_limit(PATTERN_BYTES_MAX)
            .build()
            .map_err(|e| {
                let first = e
                    .to_string()
                    .lines()
                    .last()
                    .unwrap_or("")
                    .trim()
                    .to_string();
                err(&field("match"), format!("not a pattern: {first}"))
            })?;
        for p in &r.providers {
            if !providers.contains_key(p) {
                return Err(err(&field("providers"), format!("unknown provider {p:?}")));
            }
        }
        let duration = |k: &str, v: &Option<String>, default: Duration| match v {
            Some(t) => parse_duration(t).map_err(|m| err(&field(k), m)),
            None => Ok(default),
        };
        let period = duration("period", &r.period, Duration::from_secs(600))?;
        let action = match r.action.as_str() {
            "suspend" => Action::Suspend,
            "bounce" => Action::Bounce,
            "cap_rate" => {
                let Some(rate) = &r.rate else {
                    return Err(err(
                        &field("rate"),
                        "cap_rate needs a rate, e.g. \"10/s\"".into(),
                    ));
                };
                let rate = parse_rate(rate).map_err(|m| err(&field("rate"), m))?;
                Action::CapRate(rate.messages as f64 / rate.per.as_secs_f64().max(1e-9))
            }
            "cap_connections" => match r.connections {
                Some(n) if n > 0 => Action::CapConnections(n),
                _ => {
                    return Err(err(
                        &field("connections"),
                        "cap_connections needs connections of at least 1".into(),
                    ))
                }
            },
            other => {
                return Err(err(
                    &field("action"),
                    format!("{other:?}: one of suspend, cap_rate, cap_connections, bounce"),
                ))
            }
        };
        let duration_v = duration("duration", &r.duration, Duration::from_secs(3600))?;
        let ramp = duration("ramp", &r.ramp, Duration::from_secs(600))?;
        let threshold = r.threshold.unwrap_or(1);
        if threshold == 0 || threshold > 10_000 {
            return Err(err(&field("threshold"), "between 1 and 10000".into()));
        }
        out.push(Arc::new(Rule {
            name: r.name,
            pattern,
            providers: r.providers,
            threshold,
            period,
            action,
            duration: duration_v,
            ramp,
            shipped: false,
        }));
    }
    if default_rules {
        // A configured rule of the same name replaces the shipped one.
        for s in crate::delivery::rules::shipped() {
            if !out.iter().any(|o| o.name == s.name) {
                out.push(Arc::new(s));
            }
        }
    }
    Ok(out)
}
