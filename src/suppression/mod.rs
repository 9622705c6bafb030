//! Suppression: the addresses and domains no mail goes to. Two sources fill one table:
//! the operator's `[suppression] files` (an address or `@domain` per line, read at start and
//! on SIGHUP) and the durable store Spate fills itself (`store`): receivers' permanent
//! mailbox-does-not-exist replies (global, expiring after `bad_mailbox_expire`) and
//! unsubscribes (per tenant, never expiring).
//!
//! Every recipient is checked at intake (refused with a `Rejected` record naming the entry
//! and its source) and again just before it is sent, since a list can change while mail
//! waits. A check is one or two probes of `table::Table` (the address, and the domain once
//! any `@domain` entry exists; each again per tenant once any tenant has entries), without
//! locks: each reader keeps the table it last saw and takes the new one when the
//! generation moves.
//!
//! The table holds 64-bit keyed hashes (SipHash with this process's random keys), not the
//! addresses: 12 bytes a slot, 15 bytes an entry at the usual load. Two different entries
//! share a key with a probability of about n / 2^64 per check (5e-13 with 10 million
//! entries): a recipient wrongly suppressed that rarely is the price of the memory.

pub mod manage;
pub mod store;
pub mod table;

use crate::config::Config;
use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use table::Table;

/// What an entry's value says: its kind in the top bits, a day or a file index below.
const KIND_SHIFT: u32 = 29;
const PAYLOAD: u32 = (1 << KIND_SHIFT) - 1;
const KIND_FILE: u32 = 1;
const KIND_BAD_MAILBOX: u32 = 2;
const KIND_UNSUBSCRIBE: u32 = 3;
const KIND_MANUAL: u32 = 4;
/// A store entry an operator removed: its key stays in the table, matching nothing.
const KIND_REMOVED: u32 = 5;

/// The longest line of a suppression file that is read as an entry.
pub const FILE_LINE_BYTES_MAX: usize = 1024;

/// The UTC day of `unix_ms` (days since 1970-01-01), as entries and checks count days.
pub fn day_of(unix_ms: u64) -> u32 {
    crate::gateway::limits::utc_day(unix_ms) as u32
}

/// Where a suppression entry came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Line of `[suppression] files[index]`.
    File(usize),
    /// A receiver refused the address as a mailbox that does not exist, on this UTC day
    /// (days since 1970-01-01).
    BadMailbox { day: u32 },
    /// The recipient unsubscribed from the tenant on this day.
    Unsubscribe { day: u32 },
    /// An operator added it (`spate suppression add`) on this day.
    Manual { day: u32 },
    /// An operator removed the store's entry on this day (never a hit).
    Removed { day: u32 },
}

impl Source {
    fn value(&self) -> u32 {
        match *self {
            Source::File(i) => KIND_FILE << KIND_SHIFT | (i as u32 & PAYLOAD),
            Source::BadMailbox { day } => KIND_BAD_MAILBOX << KIND_SHIFT | (day & PAYLOAD),
            Source::Unsubscribe { day } => KIND_UNSUBSCRIBE << KIND_SHIFT | (day & PAYLOAD),
            Source::Manual { day } => KIND_MANUAL << KIND_SHIFT | (day & PAYLOAD),
            Source::Removed { day } => KIND_REMOVED << KIND_SHIFT | (day & PAYLOAD),
        }
    }

    fn of(value: u32) -> Option<Source> {
        let payload = value & PAYLOAD;
        match value >> KIND_SHIFT {
            KIND_FILE => Some(Source::File(payload as usize)),
            KIND_BAD_MAILBOX => Some(Source::BadMailbox { day: payload }),
            KIND_UNSUBSCRIBE => Some(Source::Unsubscribe { day: payload }),
            KIND_MANUAL => Some(Source::Manual { day: payload }),
            KIND_REMOVED => Some(Source::Removed { day: payload }),
            _ => None,
        }
    }
}

/// A recipient is suppressed: by which entry (`alice@x.test` or `@x.test`), from where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    pub entry: String,
    pub tenant: Option<String>,
    pub source: Source,
    /// For a file entry, the file.
    pub file: Option<PathBuf>,
    /// For a bad-mailbox entry, the last day it holds.
    pub until_day: Option<u32>,
}

impl std::fmt::Display for Hit {
    /// The `response` of the `Rejected` or `Bounce` record: the entry and its source.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let date = |day: u32| {
            let mut out = Vec::new();
            crate::delivery_log::rfc3339_utc(
                u64::from(day) * crate::gateway::limits::DAY_MS,
                &mut out,
            );
            String::from_utf8_lossy(&out[..out.len().min(10)]).into_owned()
        };
        match &self.source {
            Source::File(_) => write!(
                f,
                "suppressed: {} is listed in {}",
                self.entry,
                self.file.as_deref().unwrap_or(Path::new("?")).display()
            ),
            Source::BadMailbox { day } => write!(
                f,
                "suppressed: {} was refused as a mailbox that does not exist on {} (held until {})",
                self.entry,
                date(*day),
                date(self.until_day.unwrap_or(*day))
            ),
            Source::Unsubscribe { day } => write!(
                f,
                "suppressed: {} unsubscribed from {} on {}",
                self.entry,
                self.tenant.as_deref().unwrap_or(""),
                date(*day)
            ),
            Source::Manual { day } => write!(
                f,
                "suppressed: {} was added by an operator on {}",
                self.entry,
                date(*day)
            ),
            Source::Removed { .. } => write!(f, "{} is not suppressed", self.entry),
        }
    }
}

/// An address or `@domain` as entries are kept: ASCII letters in lower case (domains are
/// A-labels already; local parts compare without case, as every mailbox provider does).
fn normalise<'b>(text: &str, buf: &'b mut [u8; 512]) -> &'b [u8] {
    let n = text.len().min(buf.len());
    for (d, s) in buf[..n].iter_mut().zip(text.as_bytes()) {
        *d = s.to_ascii_lowercase();
    }
    &buf[..n]
}

/// Everything the shards share: the table, the files it was built from, the writer's lock.
pub struct Suppressions {
    hasher: RandomState,
    current: Mutex<Arc<Table>>,
    /// Bumped whenever `current` is replaced; readers compare it on every check.
    generation: AtomicU64,
    /// Entries by tenant and of domains: a check probes for them only when there are any.
    tenant_entries: AtomicUsize,
    domain_entries: AtomicUsize,
    files: Mutex<Arc<Vec<PathBuf>>>,
    /// Store entries added while the files are being read again, applied to the new table.
    pending: Mutex<Option<Vec<(u64, u32)>>>,
    bad_mailbox_expire_days: AtomicU64,
    /// With `[cluster]`: entries made here (learnt, an operator's, an unsubscribe), for the
    /// cluster's thread to share (`take_shared`); `None` without a cluster.
    outbox: Mutex<Option<std::collections::VecDeque<store::Entry>>>,
}

/// Entries waiting to be shared at most (Redis away a long time); past it the oldest go, and
/// the other nodes learn those from their own refusals, operators' entries being in the
/// cluster's opt-out hash once written.
pub const OUTBOX_MAX: usize = 100_000;

/// A shard's view of the table: the one it last saw, taken again when it changes.
pub struct Reader {
    shared: Arc<Suppressions>,
    table: Arc<Table>,
    files: Arc<Vec<PathBuf>>,
    generation: u64,
}

impl Suppressions {
    /// An empty set (no files, no store).
    pub fn empty() -> Arc<Suppressions> {
        Arc::new(Suppressions {
            hasher: RandomState::new(),
            current: Mutex::new(Arc::new(Table::for_entries(0))),
            generation: AtomicU64::new(0),
            tenant_entries: AtomicUsize::new(0),
            domain_entries: AtomicUsize::new(0),
            files: Mutex::new(Arc::new(Vec::new())),
            pending: Mutex::new(None),
            bad_mailbox_expire_days: AtomicU64::new(DEFAULT_BAD_MAILBOX_EXPIRE_DAYS),
            outbox: Mutex::new(None),
        })
    }

    /// Reads the configured files and the store's entries (`store::read_dir`), dropping
    /// expired ones. An unreadable file is an error naming it; bad lines are skipped and
    /// reported in the returned notes.
    pub fn open(
        config: &Config,
        stored: &[store::Entry],
        today: u32,
    ) -> Result<(Arc<Suppressions>, Vec<String>), String> {
        let s = Suppressions::empty();
        s.set_expiry(config);
        let notes = s.load(&config.suppression.files, stored, today)?;
        Ok((s, notes))
    }

    fn set_expiry(&self, config: &Config) {
        let days = config.suppression.bad_mailbox_expire.as_secs() / 86_400;
        self.bad_mailbox_expire_days.store(days, Ordering::Relaxed);
    }

    /// A reader for one shard (or one parse).
    pub fn reader(self: &Arc<Self>) -> Reader {
        let generation = self.generation.load(Ordering::Acquire);
        Reader {
            shared: Arc::clone(self),
            table: Arc::clone(&self.current.lock().expect("suppression lock")),
            files: Arc::clone(&self.files.lock().expect("suppression lock")),
            generation,
        }
    }

    fn key(&self, tenant: &str, entry: &[u8]) -> u64 {
        // A key of 0 marks an empty slot.
        self.hasher.hash_one((tenant.as_bytes(), entry)).max(1)
    }

    /// From now on, entries made here are kept for the cluster to share.
    pub fn share_from_now(&self) {
        let mut out = self.outbox.lock().expect("suppression lock");
        if out.is_none() {
            *out = Some(Default::default());
        }
    }

    /// An entry made here (`manage::add`, `manage::remove`, a learnt bad mailbox): kept for
    /// the cluster, if there is one.
    pub fn made_here(&self, e: store::Entry) {
        if let Some(out) = self.outbox.lock().expect("suppression lock").as_mut() {
            if out.len() >= OUTBOX_MAX {
                out.pop_front();
            }
            out.push_back(e);
        }
    }

    /// The oldest entries made here not yet shared, at most `max`; `shared` takes them out
    /// once they are written (a failed write keeps them for the next).
    pub fn to_share(&self, max: usize) -> Vec<store::Entry> {
        let out = self.outbox.lock().expect("suppression lock");
        out.as_ref()
            .map(|q| q.iter().take(max).cloned().collect())
            .unwrap_or_default()
    }

    /// The first `n` entries of `to_share` were written. (Only the cluster's thread takes
    /// them out; new ones go to the back, and the front is dropped only when full, which
    /// `n` then overcounts by at most what was dropped: those are lost either way.)
    pub fn shared(&self, n: usize) {
        if let Some(q) = self.outbox.lock().expect("suppression lock").as_mut() {
            let n = n.min(q.len());
            q.drain(..n);
        }
    }

    /// Entries in the table now.
    pub fn len(&self) -> usize {
        self.current.lock().expect("suppression lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the table holds now.
    pub fn table_bytes(&self) -> usize {
        self.current.lock().expect("suppression lock").bytes()
    }

    /// Adds an entry from the store (or one Spate just learnt); `tenant` is empty for a
    /// global entry. A later day replaces an earlier one of the same kind.
    pub fn add(&self, tenant: &str, entry: &str, source: Source) {
        let mut buf = [0u8; 512];
        let normal = normalise(entry, &mut buf);
        let key = self.key(tenant, normal);
        let value = source.value();
        let mut current = self.current.lock().expect("suppression lock");
        if let Some(p) = self.pending.lock().expect("suppression lock").as_mut() {
            p.push((key, value));
        }
        // A file's entry stays (it is the operator's); a store entry takes the latest day;
        // an entry added after a removal comes back.
        let replace = |old: u32| {
            let kind = old >> KIND_SHIFT;
            kind != KIND_FILE && (kind == KIND_REMOVED || old < value)
        };
        if current.get(key).is_none() {
            self.count(tenant, normal, 1);
        }
        if !current.insert(key, value, replace) {
            let bigger = Table::for_entries(current.len() * 2);
            for (k, v) in current.entries() {
                bigger.insert(k, v, |_| true);
            }
            bigger.insert(key, value, replace);
            *current = Arc::new(bigger);
            self.generation.fetch_add(1, Ordering::Release);
        }
    }

    /// Removes a store entry (the files are the operator's: an entry of theirs is an error
    /// naming the file). True if there was one to remove.
    pub fn remove(&self, tenant: &str, entry: &str, day: u32) -> Result<bool, String> {
        let mut buf = [0u8; 512];
        let normal = normalise(entry, &mut buf);
        let key = self.key(tenant, normal);
        let current = self.current.lock().expect("suppression lock");
        match current.get(key).and_then(Source::of) {
            None | Some(Source::Removed { .. }) => Ok(false),
            Some(Source::File(i)) => {
                let files = self.files.lock().expect("suppression lock");
                Err(format!(
                    "{entry} is listed in {}: remove it from that file and reload",
                    files
                        .get(i)
                        .map_or("a [suppression] file".into(), |p| p.display().to_string())
                ))
            }
            Some(_) => {
                let value = Source::Removed { day }.value();
                if let Some(p) = self.pending.lock().expect("suppression lock").as_mut() {
                    p.push((key, value));
                }
                current.insert(key, value, |old| old >> KIND_SHIFT != KIND_FILE);
                Ok(true)
            }
        }
    }

    /// The entry held for exactly `entry` (an address or `@domain`) and `tenant`, if any.
    pub fn lookup(&self, tenant: &str, entry: &str) -> Option<Source> {
        let mut buf = [0u8; 512];
        let normal = normalise(entry, &mut buf);
        let key = self.key(tenant, normal);
        let source = self
            .current
            .lock()
            .expect("suppression lock")
            .get(key)
            .and_then(Source::of)?;
        (!matches!(source, Source::Removed { .. })).then_some(source)
    }

    /// A store entry, added or (for `Source::Removed`) removed.
    pub fn apply(&self, e: &store::Entry) {
        match e.source {
            Source::Removed { day } => {
                let _ = self.remove(&e.tenant, &e.entry, day);
            }
            _ => self.add(&e.tenant, &e.entry, e.source.clone()),
        }
    }

    fn count(&self, tenant: &str, normal: &[u8], n: usize) {
        if !tenant.is_empty() {
            self.tenant_entries.fetch_add(n, Ordering::Relaxed);
        }
        if normal.starts_with(b"@") {
            self.domain_entries.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Reads `files` again (SIGHUP) into a new table with the store's entries, and publishes
    /// it. On an unreadable file nothing changes.
    pub fn reload(&self, config: &Config) -> Result<Vec<String>, String> {
        self.set_expiry(config);
        *self.pending.lock().expect("suppression lock") = Some(Vec::new());
        let old = Arc::clone(&self.current.lock().expect("suppression lock"));
        let kept: Vec<(u64, u32)> = old
            .entries()
            .filter(|(_, v)| v >> KIND_SHIFT != KIND_FILE)
            .collect();
        let result = self.build(&config.suppression.files, kept.len(), |t| {
            for &(k, v) in &kept {
                t.insert(k, v, |_| true);
            }
        });
        let mut current = self.current.lock().expect("suppression lock");
        let pending = self.pending.lock().expect("suppression lock").take();
        let (table, notes, files) = result?;
        for (k, v) in pending.unwrap_or_default() {
            table.insert(k, v, |old| {
                let kind = old >> KIND_SHIFT;
                kind != KIND_FILE
                    && (kind == KIND_REMOVED || v >> KIND_SHIFT == KIND_REMOVED || old < v)
            });
        }
        *current = Arc::new(table);
        *self.files.lock().expect("suppression lock") = Arc::new(files);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(notes)
    }

    fn load(
        &self,
        files: &[PathBuf],
        stored: &[store::Entry],
        today: u32,
    ) -> Result<Vec<String>, String> {
        let expire = self.bad_mailbox_expire_days.load(Ordering::Relaxed);
        let mut live: Vec<&store::Entry> = stored
            .iter()
            .filter(|e| !e.expired(today, expire))
            .collect();
        // In the order they were made: a removal undoes what came before it only.
        live.sort_by_key(|e| e.at_unix_ms());
        let (table, notes, files) = self.build(files, live.len(), |_| {})?;
        *self.current.lock().expect("suppression lock") = Arc::new(table);
        *self.files.lock().expect("suppression lock") = Arc::new(files);
        for e in live {
            self.apply(e);
        }
        self.generation.fetch_add(1, Ordering::Release);
        Ok(notes)
    }

    /// A table holding `files`' entries and room for `others` more, which `fill` adds.
    fn build(
        &self,
        files: &[PathBuf],
        others: usize,
        fill: impl FnOnce(&Table),
    ) -> Result<(Table, Vec<String>, Vec<PathBuf>), String> {
        let mut lines = 0;
        for f in files {
            lines += count_lines(f)?;
        }
        let table = Table::for_entries(lines + others + others / 8);
        fill(&table);
        let (mut domains, mut notes) = (0, Vec::new());
        for (i, path) in files.iter().enumerate() {
            let (mut added, mut skipped, mut first_bad) = (0usize, 0usize, None);
            let file = std::fs::File::open(path)
                .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
            let value = Source::File(i).value();
            let mut buf = [0u8; 512];
            for_each_line(file, path, |n, line| match file_entry(line) {
                Ok(None) => {}
                Ok(Some(entry)) => {
                    let normal = normalise(&entry, &mut buf);
                    domains += usize::from(normal.starts_with(b"@"));
                    table.insert(self.key("", normal), value, |old| {
                        old >> KIND_SHIFT != KIND_FILE
                    });
                    added += 1;
                }
                Err(why) => {
                    skipped += 1;
                    first_bad.get_or_insert(format!("line {n}: {why}"));
                }
            })?;
            if let Some(first) = first_bad {
                notes.push(format!(
                    "{}: {skipped} lines skipped, the first at {first}",
                    path.display()
                ));
            }
            notes.push(format!("{}: {added} entries", path.display()));
        }
        self.domain_entries.store(domains, Ordering::Relaxed);
        Ok((table, notes, files.to_vec()))
    }
}

/// Days a bad-mailbox entry holds unless `[suppression] bad_mailbox_expire` says otherwise.
pub const DEFAULT_BAD_MAILBOX_EXPIRE_DAYS: u64 = 90;

impl Reader {
    /// Whether `recipient` (a validated address) is suppressed for `tenant` on `today`.
    pub fn check(&mut self, recipient: &str, tenant: &str, today: u32) -> Option<Hit> {
        let s = &*self.shared;
        let generation = s.generation.load(Ordering::Acquire);
        if generation != self.generation {
            self.table = Arc::clone(&s.current.lock().expect("suppression lock"));
            self.files = Arc::clone(&s.files.lock().expect("suppression lock"));
            self.generation = generation;
        }
        if self.table.is_empty() {
            return None;
        }
        let mut buf = [0u8; 512];
        let address = normalise(recipient, &mut buf);
        let domain_at = address.iter().rposition(|&b| b == b'@');
        let tenants = !tenant.is_empty() && s.tenant_entries.load(Ordering::Relaxed) > 0;
        let domains = s.domain_entries.load(Ordering::Relaxed) > 0;
        let expire = s.bad_mailbox_expire_days.load(Ordering::Relaxed) as u32;
        let domain = domain_at.map(|at| &address[at..]).filter(|_| domains);
        // Every probe this check may make, in the order a hit is reported; their slots are
        // loaded together.
        let probes: [Option<(&str, &[u8])>; 4] = [
            Some(("", address)),
            tenants.then_some((tenant, address)),
            domain.map(|d| ("", d)),
            domain.filter(|_| tenants).map(|d| (tenant, d)),
        ];
        let mut keys = [0u64; 4];
        for (k, p) in keys.iter_mut().zip(&probes) {
            if let Some((scope, entry)) = p {
                *k = s.key(scope, entry);
                self.table.prefetch(*k);
            }
        }
        for (&key, p) in keys.iter().zip(&probes) {
            let Some((scope, entry)) = *p else {
                continue;
            };
            let Some(source) = self.table.get(key).and_then(Source::of) else {
                continue;
            };
            let until_day = match source {
                Source::Removed { .. } => continue,
                Source::BadMailbox { day } if day.saturating_add(expire) < today => continue,
                Source::BadMailbox { day } => Some(day.saturating_add(expire)),
                _ => None,
            };
            return Some(Hit {
                entry: String::from_utf8_lossy(entry).into_owned(),
                tenant: (!scope.is_empty()).then(|| scope.to_string()),
                file: match source {
                    Source::File(i) => self.files.get(i).cloned(),
                    _ => None,
                },
                source,
                until_day,
            });
        }
        None
    }
}

/// The entry a suppression file's line holds: `None` for a blank line or a `#` comment.
pub(crate) fn file_entry(line: &[u8]) -> Result<Option<String>, String> {
    if line.len() > FILE_LINE_BYTES_MAX {
        return Err(format!("over {FILE_LINE_BYTES_MAX} bytes"));
    }
    let line = std::str::from_utf8(line).map_err(|_| "not UTF-8".to_string())?;
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return Ok(None);
    }
    if let Some(domain) = line.strip_prefix('@') {
        let a = crate::address::parse_address(&format!("postmaster@{domain}"))
            .map_err(|_| format!("{line:?} is not @ and a domain"))?;
        return Ok(Some(format!("@{}", a.domain)));
    }
    let a = crate::address::parse_address(line).map_err(|e| e.0)?;
    Ok(Some(a.to_addr_string()))
}

/// Lines in a file (for sizing the table before reading it).
fn count_lines(path: &Path) -> Result<usize, String> {
    let mut f =
        std::fs::File::open(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut lines, mut last) = (0, b'\n');
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        lines += memchr::memchr_iter(b'\n', &buf[..n]).count();
        last = buf[n - 1];
    }
    Ok(lines + usize::from(last != b'\n'))
}

/// Calls `f` with each line of `input` (numbered from 1, without its line ending). A line
/// longer than `FILE_LINE_BYTES_MAX` comes whole to no buffer: `f` gets its first
/// `FILE_LINE_BYTES_MAX + 1` bytes, which it refuses.
pub fn for_each_line(
    mut input: impl Read,
    path: &Path,
    mut f: impl FnMut(usize, &[u8]),
) -> Result<(), String> {
    let mut buf = vec![0u8; 1 << 20];
    let mut line: Vec<u8> = Vec::with_capacity(FILE_LINE_BYTES_MAX + 1);
    let mut n = 0;
    let mut emit = |line: &mut Vec<u8>, n: &mut usize| {
        *n += 1;
        let l = line.strip_suffix(b"\r").unwrap_or(line);
        f(*n, l);
        line.clear();
    };
    loop {
        let read = input
            .read(&mut buf)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        if read == 0 {
            if !line.is_empty() {
                emit(&mut line, &mut n);
            }
            return Ok(());
        }
        let mut rest = &buf[..read];
        while !rest.is_empty() {
            let (piece, ended) = match memchr::memchr(b'\n', rest) {
                Some(p) => (&rest[..p], Some(p + 1)),
                None => (rest, None),
            };
            let room = (FILE_LINE_BYTES_MAX + 1).saturating_sub(line.len());
            line.extend_from_slice(&piece[..piece.len().min(room)]);
            match ended {
                Some(next) => {
                    emit(&mut line, &mut n);
                    rest = &rest[next..];
                }
                None => rest = &[],
            }
        }
    }
}

#[cfg(test)]
mod tests;
