//! `spate queue ...`: the queue seen and steered through the running engine's admin API
//! (`spate::admin::client`), or, for `summary --offline`, read from the queue files.

use spate::admin::client::{self, ClientError};
use spate::config::Config;
use spate::engine;
use spate::summary;
use std::path::Path;
use std::process::ExitCode;

/// EX_UNAVAILABLE: the engine is not running.
const EXIT_NOT_RUNNING: u8 = 69;
/// An unknown target, or a request the engine refused.
const EXIT_REFUSED: u8 = 1;

fn load(path: &Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("spate: {e}");
        ExitCode::from(78)
    })
}

/// Sends one request and prints the reply: its JSON as it is with `--json`, else `text` of
/// it. A reply other than 2xx is its error line and exit 1.
fn call(
    config: &Config,
    method: &str,
    path: &str,
    body: Option<String>,
    json: bool,
    text: fn(&serde_json::Value) -> String,
) -> ExitCode {
    if !engine::engine_running(&config.engine.data_dir) {
        eprintln!(
            "spate: the engine is not running on {}",
            config.engine.data_dir.display()
        );
        return ExitCode::from(EXIT_NOT_RUNNING);
    }
    match client::request(config, method, path, body.as_deref().map(str::as_bytes)) {
        Ok((status, reply)) => {
            let value: serde_json::Value =
                serde_json::from_slice(&reply).unwrap_or(serde_json::Value::Null);
            let ok = (200..300).contains(&status);
            if json {
                println!("{}", String::from_utf8_lossy(&reply).trim_end());
            } else if ok || (status == 404 && value.get("why").is_some()) {
                print!("{}", text(&value));
            } else {
                let why = value["error"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| String::from_utf8_lossy(&reply).trim().to_string());
                eprintln!("spate: {why}");
            }
            if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EXIT_REFUSED)
            }
        }
        Err(ClientError::NotRunning(m)) => {
            eprintln!("spate: {m}");
            ExitCode::from(EXIT_NOT_RUNNING)
        }
        Err(ClientError::Other(m)) => {
            eprintln!("spate: {m}");
            ExitCode::from(EXIT_REFUSED)
        }
    }
}

pub fn summary(path: &Path, json: bool, offline: bool) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let running = engine::engine_running(&config.engine.data_dir);
    if running && !offline {
        return call(
            &config,
            "GET",
            "/api/v1/summary",
            None,
            json,
            spate::admin::text::summary,
        );
    }
    if !running && !offline {
        eprintln!(
            "spate: the engine is not running on {}; add --offline to read the queue files directly",
            config.engine.data_dir.display()
        );
        return ExitCode::from(EXIT_NOT_RUNNING);
    }
    match summary::read_queue(&config.engine.data_dir) {
        Ok(s) => {
            let now = spate::clock::Clock::unix_ms(&spate::clock::SystemClock);
            if json {
                println!("{}", s.to_json(now, running));
            } else {
                print!("{}", s.to_text(now, running));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("spate: {}: {e}", config.engine.data_dir.display());
            ExitCode::from(74)
        }
    }
}

/// suspend, resume, bounce, retry.
pub fn act(path: &Path, action: &str, target: &str, reason: Option<&str>, json: bool) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let body = serde_json::json!({"target": target, "reason": reason.unwrap_or("")}).to_string();
    call(
        &config,
        "POST",
        &format!("/api/v1/{action}"),
        Some(body),
        json,
        spate::admin::text::action,
    )
}

/// The reply rules and the firings in force.
pub fn rules(path: &Path, json: bool) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    call(
        &config,
        "GET",
        "/api/v1/rules",
        None,
        json,
        spate::admin::text::rules,
    )
}

/// Every source under a warm-up schedule, at every provider, today.
pub fn warmup(path: &Path, json: bool) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    call(
        &config,
        "GET",
        "/api/v1/warmup",
        None,
        json,
        spate::admin::text::warmup,
    )
}

/// Ends a firing on a scope now.
pub fn lift(path: &Path, scope: &str, json: bool) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let body = serde_json::json!({ "scope": scope }).to_string();
    call(
        &config,
        "POST",
        "/api/v1/rules/lift",
        Some(body),
        json,
        spate::admin::text::action,
    )
}

pub fn why(path: &Path, target: &str, json: bool) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let query = format!("/api/v1/why?target={}", percent_encode(target));
    call(&config, "GET", &query, None, json, spate::admin::text::why)
}

/// A query value: everything but unreserved characters escaped.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
