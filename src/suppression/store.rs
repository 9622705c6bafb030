//! The suppression entries Spate learns, on disk: `<data_dir>/suppression/added-N.log`, one
//! file per shard, one line per entry: `DAY KIND "TENANT" "ENTRY" [UNIX_MS]` (the UTC day
//! number, the kind, the tenant or "" for a global entry, and the address or `@domain`, both
//! as JSON strings, and when it was made, where the day is not precise enough). Appended by
//! the shard that learnt the entry, synced with its next group commit; read whole at start,
//! where a torn or damaged line is skipped. An entry lost in a crash before its sync is
//! learnt again from the next refusal.
//!
//! Operators' entries and removals (`spate suppression`) and one-click unsubscribes go to
//! `added-admin.log`, each synced before it is acknowledged. At start every line is applied
//! in the order of its time, so a removal undoes only what came before it.

use super::Source;
use std::path::{Path, PathBuf};

/// The longest line read back.
const LINE_BYTES_MAX: usize = 4096;

/// One learnt entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Empty for a global entry.
    pub tenant: String,
    /// An address or `@domain`.
    pub entry: String,
    pub source: Source,
    /// When it was made (Unix ms); 0 if only its day is known.
    pub at_unix_ms: u64,
}

impl Entry {
    /// Whether a bad-mailbox entry has run out on `today`; the others never do.
    pub fn expired(&self, today: u32, expire_days: u64) -> bool {
        match self.source {
            Source::BadMailbox { day } => u64::from(day) + expire_days < u64::from(today),
            _ => false,
        }
    }

    /// When it was made, for ordering: its time, else the start of its day.
    pub fn at_unix_ms(&self) -> u64 {
        if self.at_unix_ms > 0 {
            return self.at_unix_ms;
        }
        let day = match self.source {
            Source::BadMailbox { day }
            | Source::Unsubscribe { day }
            | Source::Manual { day }
            | Source::Removed { day } => day,
            Source::File(_) => 0,
        };
        u64::from(day) * crate::gateway::limits::DAY_MS
    }

    /// The entry's line, with its line feed.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let (day, kind) = match self.source {
            Source::BadMailbox { day } => (day, "bad-mailbox"),
            Source::Unsubscribe { day } => (day, "unsubscribe"),
            Source::Manual { day } => (day, "manual"),
            Source::Removed { day } => (day, "removed"),
            // Files are the operator's; they are never copied into the store.
            Source::File(_) => return,
        };
        let json = |s: &str| serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into());
        let at = if self.at_unix_ms > 0 {
            format!(" {}", self.at_unix_ms)
        } else {
            String::new()
        };
        out.extend_from_slice(
            format!(
                "{day} {kind} {} {}{at}\n",
                json(&self.tenant),
                json(&self.entry)
            )
            .as_bytes(),
        );
    }

    /// One line (without its line feed), or `None` if it is not an entry.
    pub fn decode(line: &[u8]) -> Option<Entry> {
        if line.len() > LINE_BYTES_MAX {
            return None;
        }
        let line = std::str::from_utf8(line).ok()?;
        let (day, rest) = line.split_once(' ')?;
        let (kind, rest) = rest.split_once(' ')?;
        let day: u32 = day.parse().ok()?;
        // The two strings: the first ends where a JSON string can end and a space follows.
        let mut de = serde_json::Deserializer::from_str(rest).into_iter::<String>();
        let tenant = de.next()?.ok()?;
        let entry = de.next()?.ok()?;
        let tail = rest[de.byte_offset()..].trim();
        let at_unix_ms = match tail {
            "" => 0,
            t => t.parse().ok()?,
        };
        let source = match kind {
            "bad-mailbox" => Source::BadMailbox { day },
            "unsubscribe" => Source::Unsubscribe { day },
            "manual" => Source::Manual { day },
            "removed" => Source::Removed { day },
            _ => return None,
        };
        Some(Entry {
            tenant,
            entry,
            source,
            at_unix_ms,
        })
    }
}

/// The store's directory under the data directory.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("suppression")
}

/// Shard `shard`'s file.
pub fn file(data_dir: &Path, shard: usize) -> PathBuf {
    dir(data_dir).join(format!("added-{shard}.log"))
}

/// The file of the entries other nodes of the cluster made (`crate::cluster`).
pub fn cluster_file(data_dir: &Path) -> PathBuf {
    dir(data_dir).join("added-cluster.log")
}

/// The file of operators' entries and removals and of one-click unsubscribes.
pub fn admin_file(data_dir: &Path) -> PathBuf {
    dir(data_dir).join("added-admin.log")
}

/// The store's entries in force: each (tenant, entry) as its latest line left it, removals
/// and expired bad-mailbox entries left out; sorted by tenant, then entry.
pub fn in_force(entries: &[Entry], today: u32, expire_days: u64) -> Vec<Entry> {
    let mut sorted: Vec<&Entry> = entries.iter().collect();
    sorted.sort_by_key(|e| e.at_unix_ms());
    let mut latest: std::collections::BTreeMap<(String, String), &Entry> = Default::default();
    for e in sorted {
        latest.insert((e.tenant.clone(), e.entry.to_ascii_lowercase()), e);
    }
    latest
        .into_values()
        .filter(|e| !matches!(e.source, Source::Removed { .. }) && !e.expired(today, expire_days))
        .cloned()
        .collect()
}

/// Appends `lines` to `path` (creating it and its directory) and syncs them.
pub fn append_durably(path: &Path, lines: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(lines)?;
    f.sync_data()
}

/// The complete lines of `bytes` that read as entries; others (a torn tail) are skipped.
pub fn parse(bytes: &[u8]) -> Vec<Entry> {
    bytes
        .split_inclusive(|&b| b == b'\n')
        .filter_map(|l| Entry::decode(l.strip_suffix(b"\n")?))
        .collect()
}

/// Every entry in the store's files (none if there is no store yet).
pub fn read_dir(data_dir: &Path) -> Result<Vec<Entry>, String> {
    let d = dir(data_dir);
    let Ok(list) = std::fs::read_dir(&d) else {
        return Ok(Vec::new());
    };
    let mut entries = Vec::new();
    for e in list.flatten() {
        let path = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        if !(name.starts_with("added-") && name.ends_with(".log")) {
            continue;
        }
        let bytes =
            std::fs::read(&path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        entries.extend(parse(&bytes));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_damage_is_skipped() {
        let a = Entry {
            tenant: String::new(),
            entry: "alice@x.test".into(),
            source: Source::BadMailbox { day: 20_424 },
            at_unix_ms: 0,
        };
        let b = Entry {
            tenant: "ac\"me".into(),
            entry: "bob@y.test".into(),
            source: Source::Unsubscribe { day: 20_400 },
            at_unix_ms: 0,
        };
        let mut bytes = Vec::new();
        a.encode(&mut bytes);
        b.encode(&mut bytes);
        assert_eq!(
            String::from_utf8_lossy(&bytes),
            "20424 bad-mailbox \"\" \"alice@x.test\"\n20400 unsubscribe \"ac\\\"me\" \"bob@y.test\"\n"
        );
        bytes.extend_from_slice(
            b"garbage\n20400 other \"\" \"c@z.test\"\n20400 bad-mailbox \"\" \"torn",
        );
        assert_eq!(parse(&bytes), vec![a.clone(), b.clone()]);
        assert!(!a.expired(20_424 + 90, 90));
        assert!(a.expired(20_424 + 91, 90));
        assert!(!b.expired(u32::MAX, 0));
    }
}
