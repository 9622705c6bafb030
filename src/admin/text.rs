//! The `spate queue` commands' tables and lines, from the admin API's JSON (`--json` prints
//! that JSON as it is).

use serde_json::Value;
use std::fmt::Write;

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn rate(v: &Value) -> String {
    v.as_f64().map_or("-".into(), |r| format!("{r:.1}/s"))
}

fn age(secs: &Value) -> String {
    super::view::age_text(secs.as_u64().unwrap_or(0) * 1000)
}

/// `queue summary` (live): one line per scope, its domains beneath it.
pub fn summary(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "engine: running; {} shards; {} recipients queued",
        s(&v["shards"]),
        s(&v["queued"])
    );
    let _ = writeln!(
        out,
        "{:<36} {:>9} {:>9} {:>9} {:>7} {:>11} {:>9}  why",
        "provider/site/domain", "queued", "in_flight", "deferred", "oldest", "rate", "conns"
    );
    for sc in v["scopes"].as_array().into_iter().flatten() {
        let rate_text = match (sc["rate"].as_f64(), sc["max_rate"].as_f64()) {
            (Some(r), Some(m)) if (r - m).abs() > 0.05 => format!("{r:.1}/{m:.0}"),
            (Some(r), _) => format!("{r:.1}/s"),
            (None, Some(m)) => format!("0/{m:.0}"),
            (None, None) => "-".into(),
        };
        let _ = writeln!(
            out,
            "{:<36} {:>9} {:>9} {:>9} {:>7} {:>11} {:>9}  {}",
            s(&sc["scope"]),
            s(&sc["queued"]),
            s(&sc["in_flight"]),
            s(&sc["deferred"]),
            age(&sc["oldest_age_s"]),
            rate_text,
            format!("{}/{}", s(&sc["connections"]), s(&sc["connection_limit"])),
            s(&sc["why"]),
        );
        if let Some(f) = sc["last_failure"].as_str() {
            let _ = writeln!(out, "{:<36} last temporary failure: {f}", "");
        }
        // Each egress source's part of the scope.
        for src in sc["sources"].as_array().into_iter().flatten() {
            let rate = src["rate"]
                .as_f64()
                .map_or("-".into(), |r| format!("{r:.1}/s"));
            let _ = writeln!(
                out,
                "  {:<34} {:>9} {:>9} {:>9} {:>7} {:>11} {:>9}  {}",
                format!("from {} ({})", s(&src["source"]), s(&src["address"])),
                s(&src["waiting"]),
                "",
                "",
                "",
                rate,
                format!("{}/{}", s(&src["connections"]), s(&src["connection_limit"])),
                s(&src["why"]),
            );
        }
        for d in sc["domains"].as_array().into_iter().flatten() {
            let _ = writeln!(
                out,
                "  {:<34} {:>9} {:>9} {:>9} {:>7}",
                s(&d["domain"]),
                s(&d["queued"]),
                s(&d["in_flight"]),
                s(&d["deferred"]),
                age(&d["oldest_age_s"]),
            );
        }
    }
    out
}

/// `queue why`: what the recipient or domain is waiting for, and until when.
pub fn why(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{}: {}", s(&v["target"]), s(&v["why"]));
    if let Some(r) = v.get("recipient") {
        let _ = writeln!(
            out,
            "  recipient: {}, {} attempts, queued {} ago, campaign {:?}, tenant {:?}",
            s(&r["state"]),
            s(&r["attempts"]),
            s(&r["age"]),
            s(&r["campaign"]),
            s(&r["tenant"]),
        );
    }
    if v.get("domain").is_some() && v.get("queued").is_some() {
        let _ = writeln!(
            out,
            "  domain {}: {} queued, {} deferred, {} in flight, {} held; scope {}",
            s(&v["domain"]),
            s(&v["queued"]),
            s(&v["deferred"]),
            s(&v["in_flight"]),
            s(&v["held"]),
            s(&v["scope"]),
        );
    }
    if let Some(sc) = v.get("scope_state") {
        let _ = writeln!(
            out,
            "  scope {}: {} connections of {}, rate {} (ceiling {}), {} pushbacks",
            s(&sc["scope"]),
            s(&sc["connections"]),
            s(&sc["connection_limit"]),
            rate(&sc["rate"]),
            rate(&sc["max_rate"]),
            s(&sc["pushbacks"]),
        );
    }
    if let Some(until) = v["until"].as_u64() {
        let mut t = Vec::new();
        crate::delivery_log::rfc3339_utc(until, &mut t);
        let _ = writeln!(out, "  until {}", String::from_utf8_lossy(&t));
    }
    out
}

/// suspend, resume, bounce, retry: one line.
pub fn action(v: &Value) -> String {
    let target = s(&v["target"]);
    match v["action"].as_str() {
        Some("suspend") if v["changed"] == Value::Bool(true) => format!("suspended {target}\n"),
        Some("suspend") => format!("{target} was suspended already\n"),
        Some("resume") if v["changed"] == Value::Bool(true) => format!("resumed {target}\n"),
        Some("resume") => format!("{target} was not suspended\n"),
        Some("bounce") => format!(
            "bouncing {target}: its queued recipients get Bounce records (category admin) as the shards reach them\n"
        ),
        Some("retry") => format!("{} deferred recipients of {target} are due now\n", s(&v["recipients"])),
        Some("lift") => format!(
            "lifted the rule on {}: it comes back over the rule's ramp\n",
            s(&v["scope"])
        ),
        _ => format!("{v}\n"),
    }
}

/// `queue warmup`: each warming source at each provider, today.
pub fn warmup(v: &Value) -> String {
    let mut out = String::new();
    let sources = v["sources"].as_array().cloned().unwrap_or_default();
    if sources.is_empty() {
        let _ = writeln!(out, "no source is under a warm-up schedule");
        return out;
    }
    let _ = writeln!(out, "today (UTC): {}", s(&v["day"]));
    let _ = writeln!(
        out,
        "{:<16} {:<16} {:<12} {:>5} {:>9} {:>10} {:>9} {:>5}  held last",
        "source", "provider", "state", "step", "cap", "delivered", "deferred", "held"
    );
    for w in sources {
        let step = w["step"]
            .as_u64()
            .map_or("-".into(), |n| (n + 1).to_string());
        let _ = writeln!(
            out,
            "{:<16} {:<16} {:<12} {:>5} {:>9} {:>10} {:>9} {:>5}  {}",
            s(&w["source"]),
            s(&w["provider"]),
            s(&w["state"]),
            step,
            s(&w["cap"]),
            s(&w["delivered_today"]),
            s(&w["deferred_today"]),
            s(&w["held_days"]),
            s(&w["last_held_day"]),
        );
    }
    out
}

/// `queue rules`: each rule, how often it fired, and the firings in force.
pub fn rules(v: &Value) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<16} {:>9} {:>6} {:>9}  match",
        "rule", "action", "threshold", "fired", "duration"
    );
    for r in v["rules"].as_array().into_iter().flatten() {
        let _ = writeln!(
            out,
            "{:<24} {:<16} {:>9} {:>6} {:>9}  {}{}",
            s(&r["name"]),
            s(&r["action"]),
            format!("{}/{}", s(&r["threshold"]), age(&r["period_s"])),
            s(&r["fired"]),
            age(&r["duration_s"]),
            s(&r["match"]),
            if r["shipped"] == true {
                "  (shipped)"
            } else {
                ""
            },
        );
    }
    let firings = v["firings"].as_array().cloned().unwrap_or_default();
    if firings.is_empty() {
        let _ = writeln!(out, "\nno rule in force");
    }
    for f in firings {
        let state = if f["in_force"] == true {
            f["action"].as_str().unwrap_or("").to_string()
        } else {
            format!(
                "coming back, {:.0}%",
                f["back"].as_f64().unwrap_or(0.0) * 100.0
            )
        };
        let _ = writeln!(
            out,
            "\n{}: rule {}: {state}\n  reply: {}",
            s(&f["scope"]),
            s(&f["rule"]),
            s(&f["reply"])
        );
    }
    out
}
