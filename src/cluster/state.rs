//! The state the nodes share besides leases, as it is written to Redis and read back, sans
//! I/O: operators' holds (`admin::holds`) and reply rules' firings (`delivery::rules`). Each
//! is a hash, one field per item, a JSON value. What comes back from Redis is another node's
//! word: parsed within bounds, checked, and only ever an item of the kinds a local operator
//! or reply could have made.
//!
//! Node-specific items stay out: a hold or firing on an egress source, or on a scope at one
//! (`yahoo@mta1`), names that node's addresses; another node's source of the same name is
//! another address.

use crate::admin::holds::{Holds, Rule, Target, RULES_MAX};
use crate::delivery::rules::Firing;
use std::collections::BTreeMap;

/// A value read from the shared hashes is at most this long; a longer one is ignored.
pub const VALUE_BYTES_MAX: usize = 4096;

/// Whether a hold on `target` is the cluster's (not one node's own).
pub fn shared_target(target: &Target) -> bool {
    match target {
        Target::Source(_) => false,
        Target::Scope(key) => crate::delivery::scope::split_key(key).1.is_none(),
        _ => true,
    }
}

/// The cluster's part of `holds`: field (`suspend TARGET` or `bounce TARGET`) to its rule.
pub fn shared_holds(holds: &Holds) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (kind, rules) in [("suspend", &holds.suspended), ("bounce", &holds.bounces)] {
        for r in rules.iter().filter(|r| shared_target(&r.target)) {
            if let Ok(json) = serde_json::to_string(r) {
                out.insert(format!("{kind} {}", r.target), json);
            }
        }
    }
    out
}

/// This node's holds with the cluster's part taken from `remote` (the shared hash as read):
/// its own node-specific holds kept, the others as the cluster has them. Bounces asked for
/// before `bounce_cutoff_ms` are left out (the queue's `max_age`: nothing they could match is
/// still queued). Items that do not parse, or that name a node's own things, are ignored.
pub fn merge_holds(
    local: &Holds,
    remote: &BTreeMap<String, String>,
    bounce_cutoff_ms: u64,
) -> Holds {
    let own = |rules: &[Rule]| -> Vec<Rule> {
        rules
            .iter()
            .filter(|r| !shared_target(&r.target))
            .cloned()
            .collect()
    };
    let mut suspended = own(&local.suspended);
    let mut bounces = own(&local.bounces);
    for (field, value) in remote {
        if value.len() > VALUE_BYTES_MAX {
            continue;
        }
        let Some((kind, target)) = field.split_once(' ') else {
            continue;
        };
        let Ok(rule) = serde_json::from_str::<Rule>(value) else {
            continue;
        };
        if rule.target.to_string() != target
            || !shared_target(&rule.target)
            || rule.reason.len() > 1000
            || rule.reason.chars().any(char::is_control)
        {
            continue;
        }
        match kind {
            "suspend" if suspended.len() < RULES_MAX => suspended.push(rule),
            "bounce" if bounces.len() < RULES_MAX && rule.at_unix_ms >= bounce_cutoff_ms => {
                bounces.push(rule)
            }
            _ => {}
        }
    }
    Holds::new(suspended, bounces)
}

/// Whether a firing on `scope` is the cluster's.
pub fn shared_scope(scope: &str) -> bool {
    crate::delivery::scope::split_key(scope).1.is_none()
}

/// A firing as the shared hash holds it (field: its scope).
pub fn encode_firing(f: &Firing) -> String {
    serde_json::json!({
        "rule": f.rule,
        "since": f.since_unix_ms,
        "until": f.until_unix_ms,
        "ramp": f.ramp_ms,
        "reply": f.reply,
    })
    .to_string()
}

/// What another node says of a firing on `scope`: (rule name, since, until, ramp, reply).
pub struct RemoteFiring {
    pub scope: String,
    pub rule: String,
    pub since_unix_ms: u64,
    pub until_unix_ms: u64,
    pub ramp_ms: u64,
    pub reply: String,
}

pub fn decode_firing(scope: &str, value: &str) -> Option<RemoteFiring> {
    if value.len() > VALUE_BYTES_MAX || !shared_scope(scope) || scope.len() > 1024 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(value).ok()?;
    let since = v["since"].as_u64()?;
    let until = v["until"].as_u64()?;
    if until < since {
        return None;
    }
    Some(RemoteFiring {
        scope: scope.to_string(),
        rule: v["rule"].as_str()?.chars().take(200).collect(),
        since_unix_ms: since,
        until_unix_ms: until,
        ramp_ms: v["ramp"].as_u64()?,
        reply: v["reply"].as_str()?.chars().take(300).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(target: &str, at: u64) -> Rule {
        Rule {
            target: Target::parse(target).unwrap(),
            at_unix_ms: at,
            reason: "r".into(),
        }
    }

    #[test]
    fn holds_round_trip_and_a_nodes_own_stay_its_own() {
        let local = Holds::new(
            vec![rule("yahoo", 1), rule("source:s1", 2), rule("yahoo@s1", 3)],
            vec![rule("campaign:c", 4)],
        );
        let shared = shared_holds(&local);
        assert_eq!(
            shared.keys().collect::<Vec<_>>(),
            ["bounce campaign:c", "suspend yahoo"]
        );
        // Another node's view: yahoo resumed, gmail suspended, an old bounce, junk.
        let mut remote = BTreeMap::new();
        remote.insert(
            "suspend gmail".to_string(),
            serde_json::to_string(&rule("gmail", 5)).unwrap(),
        );
        remote.insert(
            "bounce campaign:old".to_string(),
            serde_json::to_string(&rule("campaign:old", 1)).unwrap(),
        );
        remote.insert("suspend x".to_string(), "{not json".to_string());
        remote.insert(
            "suspend source:s9".to_string(),
            serde_json::to_string(&rule("source:s9", 5)).unwrap(),
        );
        remote.insert(
            "suspend liar".to_string(),
            serde_json::to_string(&rule("gmail", 5)).unwrap(),
        );
        let merged = merge_holds(&local, &remote, 2);
        let targets: Vec<String> = merged
            .suspended
            .iter()
            .map(|r| r.target.to_string())
            .collect();
        assert_eq!(targets, ["source:s1", "yahoo@s1", "gmail"]);
        assert!(merged.bounces.is_empty(), "{:?}", merged.bounces);
    }

    #[test]
    fn firings_decode_within_bounds() {
        let f = Firing {
            rule: "ban".into(),
            scope: "yahoo".into(),
            action: crate::delivery::rules::Action::Suspend,
            since_unix_ms: 10,
            until_unix_ms: 20,
            ramp_ms: 5,
            reply: "550 banned".into(),
        };
        let r = decode_firing("yahoo", &encode_firing(&f)).unwrap();
        assert_eq!(
            (r.rule.as_str(), r.since_unix_ms, r.until_unix_ms, r.ramp_ms),
            ("ban", 10, 20, 5)
        );
        assert!(decode_firing("yahoo@s1", &encode_firing(&f)).is_none());
        assert!(decode_firing("yahoo", "{\"since\":5,\"until\":1}").is_none());
        assert!(decode_firing("yahoo", &"x".repeat(VALUE_BYTES_MAX + 1)).is_none());
    }
}
