//! Operators' changes to the suppression store (`spate suppression add|remove|check|list`,
//! and the same through the admin API) and one-click unsubscribes: each written as a line
//! of `store::admin_file`, synced before it is acknowledged. With the engine running, its
//! API does this against the live table; with the engine stopped, the command does it on
//! the files alone (holding the data directory's lock, so no engine starts meanwhile).

use super::store::{self, Entry};
use super::{day_of, Source, Suppressions};
use crate::config::Config;
use std::sync::Arc;

/// An entry as an operator types it: an address, or `@domain`; normalised as the files'.
pub fn parse_entry(text: &str) -> Result<String, String> {
    match super::file_entry(text.as_bytes())? {
        Some(e) => Ok(e),
        None => Err("an empty entry".into()),
    }
}

/// A tenant as an operator types it ("" for a global entry).
pub fn check_tenant(tenant: &str) -> Result<(), String> {
    if tenant.len() > 256 || tenant.chars().any(char::is_control) {
        return Err("tenant: at most 256 characters, no control characters".into());
    }
    Ok(())
}

/// Writes `e` to the admin file, synced.
pub fn append(config: &Config, e: &Entry) -> Result<(), String> {
    let path = store::admin_file(&config.engine.data_dir);
    let mut line = Vec::new();
    e.encode(&mut line);
    store::append_durably(&path, &line).map_err(|err| format!("{}: {err}", path.display()))
}

/// Adds `entry` for `tenant` ("" for every tenant) to the store and to `live`, if given.
pub fn add(
    config: &Config,
    live: Option<&Suppressions>,
    tenant: &str,
    entry: &str,
    source: Source,
    now_unix_ms: u64,
) -> Result<String, String> {
    check_tenant(tenant)?;
    let entry = parse_entry(entry)?;
    let e = Entry {
        tenant: tenant.to_string(),
        entry: entry.clone(),
        source: source.clone(),
        at_unix_ms: now_unix_ms,
    };
    append(config, &e)?;
    if let Some(s) = live {
        s.add(tenant, &entry, source);
        s.made_here(e);
    }
    Ok(entry)
}

/// Removes `entry` for `tenant` from the store: a removal line, then the live table. False
/// if the store had no such entry; an error if a `[suppression]` file lists it.
pub fn remove(
    config: &Config,
    live: &Suppressions,
    tenant: &str,
    entry: &str,
    now_unix_ms: u64,
) -> Result<bool, String> {
    check_tenant(tenant)?;
    let entry = parse_entry(entry)?;
    let day = day_of(now_unix_ms);
    match live.lookup(tenant, &entry) {
        None => return Ok(false),
        Some(Source::File(_)) => {
            // The error names the file.
            live.remove(tenant, &entry, day)?;
            return Ok(false);
        }
        Some(_) => {}
    }
    let removal = Entry {
        tenant: tenant.to_string(),
        entry: entry.clone(),
        source: Source::Removed { day },
        at_unix_ms: now_unix_ms,
    };
    append(config, &removal)?;
    let removed = live.remove(tenant, &entry, day)?;
    live.made_here(removal);
    Ok(removed)
}

/// The table as the engine would build it at start (files and store), for a stopped
/// engine's `check` and `remove`.
pub fn open_offline(config: &Config, now_unix_ms: u64) -> Result<Arc<Suppressions>, String> {
    let stored = store::read_dir(&config.engine.data_dir)?;
    Suppressions::open(config, &stored, day_of(now_unix_ms)).map(|(s, _)| s)
}

/// The store's entries in force (`tenant`: only that tenant's, and the global ones).
pub fn list(config: &Config, tenant: Option<&str>, now_unix_ms: u64) -> Result<Vec<Entry>, String> {
    let stored = store::read_dir(&config.engine.data_dir)?;
    let expire = config.suppression.bad_mailbox_expire.as_secs() / 86_400;
    Ok(store::in_force(&stored, day_of(now_unix_ms), expire)
        .into_iter()
        .filter(|e| tenant.is_none_or(|t| e.tenant == t || e.tenant.is_empty()))
        .collect())
}

/// One store entry as `list` prints it: `ENTRY TENANT KIND DATE`.
pub fn describe(e: &Entry) -> (String, &'static str, u32) {
    let (kind, day) = match e.source {
        Source::BadMailbox { day } => ("bad-mailbox", day),
        Source::Unsubscribe { day } => ("unsubscribe", day),
        Source::Manual { day } => ("manual", day),
        Source::Removed { day } => ("removed", day),
        Source::File(_) => ("file", 0),
    };
    let mut date = Vec::new();
    crate::delivery_log::rfc3339_utc(u64::from(day) * crate::gateway::limits::DAY_MS, &mut date);
    (
        String::from_utf8_lossy(&date[..date.len().min(10)]).into_owned(),
        kind,
        day,
    )
}
