//! `spate suppression add|remove|check|list`: the durable suppression store, through the
//! running engine's admin API (so its table changes at once), or on the files when the
//! engine is stopped (holding the data directory's lock meanwhile).

use spate::admin::client::{self, ClientError};
use spate::config::Config;
use spate::engine;
use spate::suppression::manage;
use std::path::Path;
use std::process::ExitCode;

pub enum Action<'a> {
    Add { entry: &'a str, reason: &'a str },
    Remove { entry: &'a str },
    Check { address: &'a str },
    List,
}

fn now() -> u64 {
    spate::clock::Clock::unix_ms(&spate::clock::SystemClock)
}

pub fn run(path: &Path, action: Action<'_>, tenant: Option<&str>, json: bool) -> ExitCode {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spate: {e}");
            return ExitCode::from(78);
        }
    };
    let tenant = tenant.unwrap_or("");
    let result = if engine::engine_running(&config.engine.data_dir) {
        online(&config, &action, tenant)
    } else {
        offline(&config, &action, tenant)
    };
    match result {
        Ok(v) => {
            if json {
                println!("{v}");
            } else {
                print!("{}", text(&v));
            }
            ExitCode::SUCCESS
        }
        Err((code, why)) => {
            eprintln!("spate: {why}");
            ExitCode::from(code)
        }
    }
}

fn online(
    config: &Config,
    action: &Action<'_>,
    tenant: &str,
) -> Result<serde_json::Value, (u8, String)> {
    let enc = |s: &str| {
        s.bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"-._~@".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect::<String>()
    };
    let (method, path, body) = match action {
        Action::Add { entry, reason } => (
            "POST",
            "/api/v1/suppression/add".to_string(),
            Some(
                serde_json::json!({"entry": entry, "tenant": tenant, "reason": reason}).to_string(),
            ),
        ),
        Action::Remove { entry } => (
            "POST",
            "/api/v1/suppression/remove".to_string(),
            Some(serde_json::json!({"entry": entry, "tenant": tenant}).to_string()),
        ),
        Action::Check { address } => (
            "GET",
            format!(
                "/api/v1/suppression/check?address={}&tenant={}",
                enc(address),
                enc(tenant)
            ),
            None,
        ),
        Action::List => (
            "GET",
            if tenant.is_empty() {
                "/api/v1/suppression/list".to_string()
            } else {
                format!("/api/v1/suppression/list?tenant={}", enc(tenant))
            },
            None,
        ),
    };
    match client::request(config, method, &path, body.as_deref().map(str::as_bytes)) {
        Ok((status, reply)) => {
            let v: serde_json::Value = serde_json::from_slice(&reply).unwrap_or_default();
            if (200..300).contains(&status) {
                Ok(v)
            } else {
                Err((1, v["error"].as_str().unwrap_or("refused").to_string()))
            }
        }
        Err(ClientError::NotRunning(m)) | Err(ClientError::Other(m)) => Err((69, m)),
    }
}

fn offline(
    config: &Config,
    action: &Action<'_>,
    tenant: &str,
) -> Result<serde_json::Value, (u8, String)> {
    let storage = |e: String| (74, e);
    let now = now();
    if let Action::List = action {
        let entries =
            manage::list(config, (!tenant.is_empty()).then_some(tenant), now).map_err(storage)?;
        return Ok(spate::engine::entries_json(&entries));
    }
    // No engine may start while the store changes under it.
    let data_dir = &config.engine.data_dir;
    std::fs::create_dir_all(data_dir).map_err(|e| (74, format!("{}: {e}", data_dir.display())))?;
    let _lock = engine::lock_data_dir(data_dir).map_err(|e| match e {
        engine::EngineError::Storage(m) => (74, m),
        other => (69, other.to_string()),
    })?;
    let live = manage::open_offline(config, now).map_err(|e| (78, e))?;
    let day = spate::suppression::day_of(now);
    match action {
        Action::Add { entry, .. } => {
            let e = manage::add(
                config,
                None,
                tenant,
                entry,
                spate::suppression::Source::Manual { day },
                now,
            )
            .map_err(|e| (1, e))?;
            Ok(serde_json::json!({"action": "add", "entry": e, "tenant": tenant, "changed": true}))
        }
        Action::Remove { entry } => {
            let changed = manage::remove(config, &live, tenant, entry, now).map_err(|e| (1, e))?;
            Ok(
                serde_json::json!({"action": "remove", "entry": entry, "tenant": tenant, "changed": changed}),
            )
        }
        Action::Check { address } => {
            let hit = spate::address::parse_address(address)
                .map_err(|e| (1, format!("{address}: {}", e.0)))
                .map(|a| live.reader().check(&a.to_addr_string(), tenant, day))?;
            Ok(
                serde_json::json!({"address": address, "tenant": tenant, "suppressed": hit.is_some(),
                                  "why": hit.map(|h| h.to_string())}),
            )
        }
        Action::List => unreachable!("answered above"),
    }
}

fn text(v: &serde_json::Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("").to_string();
    let for_tenant = |t: String| {
        if t.is_empty() {
            String::new()
        } else {
            format!(" for tenant {t}")
        }
    };
    if let Some(list) = v["entries"].as_array() {
        let mut out = String::new();
        for e in list {
            out.push_str(&format!(
                "{}\t{}\t{}\t{}\n",
                e["entry"].as_str().unwrap_or(""),
                e["tenant"].as_str().unwrap_or(""),
                e["kind"].as_str().unwrap_or(""),
                e["date"].as_str().unwrap_or("")
            ));
        }
        return out;
    }
    match v["action"].as_str() {
        Some("add") => format!("suppressed {}{}\n", s("entry"), for_tenant(s("tenant"))),
        Some("remove") if v["changed"] == serde_json::json!(true) => {
            format!("removed {}{}\n", s("entry"), for_tenant(s("tenant")))
        }
        Some("remove") => format!(
            "{}{} was not in the store\n",
            s("entry"),
            for_tenant(s("tenant"))
        ),
        _ if v["suppressed"] == serde_json::json!(true) => format!("{}\n", s("why")),
        _ => format!(
            "{} is not suppressed{}\n",
            s("address"),
            for_tenant(s("tenant"))
        ),
    }
}
