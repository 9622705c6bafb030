//! What the nodes share besides leases, as the renewing thread keeps it in step with Redis
//! (`Sync::run`, once per renewal): operators' holds and reply rules' firings (hashes, read
//! again every `STATE_SYNC_EVERY` or at another node's note), suppression entries (a stream
//! and an opt-out hash), gateway users' daily counts (a hash per day), and every node's
//! leases for the cluster view. Everything read is another node's word: `state` and
//! `remote_entry` check it within bounds.

use super::client::{printable, Conn};
use super::node::events_channel;
use super::resp::Value;
use super::{totals, Hooks, Shared};
use crate::config::Config;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// The shared holds and firings are read again at least this often (a note that they
/// changed can be missed while the listening connection is down).
pub const STATE_SYNC_EVERY: Duration = Duration::from_secs(2);
/// Fields read per HSCAN call (each reply stays far below the codec's bound).
const SCAN_COUNT: &str = "200";
/// Fields of a shared hash read at most (its items are bounded where they are made).
const SCAN_FIELDS_MAX: usize = 50_000;

/// What this node last wrote of the shared state, and when it last read it.
#[derive(Default)]
pub(super) struct Sync {
    epoch: Option<u64>,
    holds_generation: Option<u64>,
    holds: BTreeMap<String, String>,
    firings: BTreeMap<String, String>,
    last_read: Option<Instant>,
    /// The last suppression entry read from the stream (its id), and when.
    supp_cursor: Vec<u8>,
    supp_read: Option<Instant>,
    /// Gateway users' daily counts as last written (the day, user to count), and when the
    /// others' were last read.
    daily_day: u64,
    daily_written: HashMap<String, u64>,
    daily_read: Option<Instant>,
    /// This node's admin address as last written to `<prefix>:admin`.
    advertised: Option<String>,
    /// The state (epoch) and the addresses this node last claimed, and those a live other
    /// node held then.
    sources_claimed: Option<(u64, Vec<String>)>,
    sources_taken: Vec<(String, String)>,
}

impl Sync {
    /// Writes this node's changes to the shared holds and firings, then reads the others'
    /// when asked to or due. All of this node's are written when Redis's state is new (it
    /// began within two lease periods, or since this node last saw it: a restart that lost
    /// it), so the cluster's is the union of the nodes'; a node that joins a cluster whose
    /// state is older takes the cluster's instead (its own file may be days old).
    pub(super) fn run(
        &mut self,
        conn: &mut Conn,
        shared: &Shared,
        hooks: &dyn Hooks,
        epoch: u64,
        young: bool,
    ) -> Result<(), String> {
        let prefix = &shared.config.key_prefix;
        let holds_key = format!("{prefix}:holds");
        let firings_key = format!("{prefix}:firings");
        let new_epoch = self.epoch != Some(epoch);
        let fresh = new_epoch && (young || self.epoch.is_some());
        // Joining an established cluster: this node's holds are not written, the cluster's
        // are read and put in force below. The epoch counts as seen only once all of this
        // succeeded: a failure half way joins again at the next tick, it never writes.
        let joining = new_epoch && !fresh;
        // This node's sending addresses, claimed again in a new state (Redis restarted, or
        // this node's first sync), after a reload that changed them, and while a live node
        // holds one of them (running, the clash can only be reported, once per change).
        let sources = shared.sources();
        let claimed = (epoch, sources);
        let changed = self.sources_claimed.as_ref() != Some(&claimed);
        let retry = !self.sources_taken.is_empty()
            && self
                .last_read
                .is_none_or(|t| t.elapsed() >= STATE_SYNC_EVERY);
        if changed || retry {
            let taken = super::node::claim_sources(conn, shared)?;
            if taken != self.sources_taken {
                for (address, holder) in &taken {
                    tracing::error!(
                        "cluster: source address {address} is also node {holder}'s: a sending address belongs to one node; stop one of them or change its address"
                    );
                }
            }
            self.sources_taken = taken;
            self.sources_claimed = Some(claimed);
        }
        self.suppressions(conn, shared, hooks, new_epoch, joining)?;
        // Where the others reach this node (`spate drain --to`): again in a new state.
        let advertised = shared.advertised();
        if new_epoch || advertised != self.advertised {
            if let Some(url) = &advertised {
                let key = format!("{prefix}:admin");
                let node = shared.config.node.as_bytes();
                call_ok(conn, &[b"HSET", key.as_bytes(), node, url.as_bytes()])?;
            }
            self.advertised = advertised;
        }
        self.daily(conn, shared, hooks, new_epoch)?;
        let now_ms = crate::clock::system().unix_ms();
        let (generation, holds) = hooks.holds();
        let mut wrote = false;
        if !joining && (fresh || self.holds_generation != Some(generation)) {
            let local = super::state::shared_holds(&holds);
            for (field, value) in &local {
                if fresh || self.holds.get(field) != Some(value) {
                    call_ok(
                        conn,
                        &[
                            b"HSET",
                            holds_key.as_bytes(),
                            field.as_bytes(),
                            value.as_bytes(),
                        ],
                    )?;
                    wrote = true;
                }
            }
            if !fresh {
                for field in self.holds.keys().filter(|f| !local.contains_key(*f)) {
                    call_ok(conn, &[b"HDEL", holds_key.as_bytes(), field.as_bytes()])?;
                    wrote = true;
                }
            }
            self.holds = local;
            self.holds_generation = Some(generation);
        }
        let local = hooks.rules().shared(now_ms);
        for (scope, value) in &local {
            if fresh || self.firings.get(scope) != Some(value) {
                call_ok(
                    conn,
                    &[
                        b"HSET",
                        firings_key.as_bytes(),
                        scope.as_bytes(),
                        value.as_bytes(),
                    ],
                )?;
                wrote = true;
            }
        }
        self.firings = local;
        if wrote {
            let note = format!("sync {}", shared.config.node);
            call_ok(
                conn,
                &[
                    b"PUBLISH",
                    events_channel(shared).as_bytes(),
                    note.as_bytes(),
                ],
            )?;
        }
        let asked = shared.sync_asked.swap(false, Ordering::SeqCst);
        let due = self
            .last_read
            .is_none_or(|t| t.elapsed() >= STATE_SYNC_EVERY);
        if !(asked || due || new_epoch) {
            return Ok(());
        }
        self.last_read = Some(Instant::now());
        read_peers(conn, shared, &hooks.config(), now_ms)?;
        // Holds: the cluster's as Redis has them, this node's own kept.
        let remote = scan_hash(conn, &holds_key)?;
        let config = hooks.config();
        let cutoff = now_ms.saturating_sub(config.delivery.max_age.as_millis() as u64);
        let merged = super::state::merge_holds(&holds, &remote, cutoff);
        let merged_shared = super::state::shared_holds(&merged);
        let settled = if merged_shared == super::state::shared_holds(&holds) {
            self.holds = merged_shared;
            self.holds_generation = Some(generation);
            true
        } else if let Some(generation) = hooks.set_holds(generation, merged) {
            self.holds = merged_shared;
            self.holds_generation = Some(generation);
            true
        } else {
            false
        };
        // Firings: the newer wins, a lift is taken; those over are cleared from Redis.
        let remote = scan_hash(conn, &firings_key)?;
        let mut firings = Vec::new();
        for (scope, value) in &remote {
            match super::state::decode_firing(scope, value) {
                Some(f) if now_ms < f.until_unix_ms.saturating_add(f.ramp_ms) => firings.push(f),
                _ => call_ok(conn, &[b"HDEL", firings_key.as_bytes(), scope.as_bytes()])?,
            }
        }
        if hooks.rules().merge_remote(firings, &config.rules, now_ms) {
            self.firings = hooks.rules().shared(now_ms);
        }
        if settled {
            self.epoch = Some(epoch);
        }
        Ok(())
    }
}

/// A command whose error reply (`-OOM`, `-READONLY`, ...) is a failure like a lost
/// connection: what it was to write is written again after the reconnection.
fn call_ok(conn: &mut Conn, args: &[&[u8]]) -> Result<(), String> {
    match conn.call(args)? {
        Value::Error(e) => Err(format!("redis: {}", printable(&e))),
        _ => Ok(()),
    }
}

/// As `call_ok`, for a pipeline.
fn pipeline_ok(conn: &mut Conn, commands: &[Vec<Vec<u8>>]) -> Result<(), String> {
    for reply in conn.pipeline(commands)? {
        if let Value::Error(e) = reply {
            return Err(format!("redis: {}", printable(&e)));
        }
    }
    Ok(())
}

/// How often a node reads the others' suppression entries (an entry reaches every node
/// within this and a tick).
pub const SUPP_READ_EVERY: Duration = Duration::from_millis(500);
/// Entries shared per tick at most (the rest wait for the next).
const SUPP_WRITE_MAX: usize = 2000;
/// The stream keeps about this many entries (`XADD MAXLEN ~`): a node away for longer than
/// it takes the cluster to make this many misses the older bad-mailbox entries (it learns
/// them from its own refusals); operators' entries and unsubscribes are also in the opt-out
/// hash, which it reads when it joins.
pub const SUPP_STREAM_MAX: &str = "100000";

impl Sync {
    /// Suppression entries: this node's new ones to the stream (and operators' entries,
    /// unsubscribes and removals to the opt-out hash), then the others' from the stream,
    /// applied here and written to this node's `added-cluster.log`. A node that joins reads
    /// the opt-out hash whole; when Redis's state is new, every node writes its opt-outs
    /// back into it.
    fn suppressions(
        &mut self,
        conn: &mut Conn,
        shared: &Shared,
        hooks: &dyn Hooks,
        new_epoch: bool,
        joining: bool,
    ) -> Result<(), String> {
        use crate::suppression::store;
        let prefix = &shared.config.key_prefix;
        let stream = format!("{prefix}:supp").into_bytes();
        let optouts = format!("{prefix}:optouts").into_bytes();
        let supp = hooks.suppressions();
        let config = hooks.config();
        if new_epoch {
            if joining {
                // From the stream's end on; the opt-outs so far from the hash, page by page.
                let last = conn.call(&[b"XREVRANGE", &stream, b"+", b"-", b"COUNT", b"1"])?;
                self.supp_cursor = match last {
                    Value::Array(items) => match items.first() {
                        Some(Value::Array(entry)) => match entry.first() {
                            Some(Value::Bulk(id)) => id.clone(),
                            _ => b"0-0".to_vec(),
                        },
                        _ => b"0-0".to_vec(),
                    },
                    _ => b"0-0".to_vec(),
                };
                let path = store::cluster_file(&config.engine.data_dir);
                scan_hash_pages(conn, &optouts, |page| {
                    let mut learnt = Vec::new();
                    for (_, line) in page {
                        if let Some(e) = remote_entry(line) {
                            supp.apply(&e);
                            e.encode(&mut learnt);
                        }
                    }
                    keep_learnt(&path, &learnt);
                })?;
                // This node's opt-outs the cluster has never had (made while it was away
                // from Redis, or in its last moments): shared now.
                for e in local_opt_outs(&config)?.chunks(500) {
                    let mut command = vec![b"HMGET".to_vec(), optouts.clone()];
                    command.extend(e.iter().map(opt_out_field));
                    let Value::Array(found) =
                        conn.call(&command.iter().map(Vec::as_slice).collect::<Vec<_>>())?
                    else {
                        return Err("redis: HMGET answered something else".into());
                    };
                    for (e, v) in e.iter().zip(found) {
                        if v == Value::Nil {
                            supp.made_here(e.clone());
                        }
                    }
                }
            } else {
                // Redis's state is new: this node's opt-outs go back into the hash.
                self.supp_cursor = b"0-0".to_vec();
                let mine: Vec<Vec<Vec<u8>>> = local_opt_outs(&config)?
                    .iter()
                    .map(|e| hset(&optouts, e))
                    .collect();
                for chunk in mine.chunks(SUPP_WRITE_MAX) {
                    pipeline_ok(conn, chunk)?;
                }
            }
        }
        self.write_suppressions(conn, shared, hooks)?;
        // The others' new entries, every `SUPP_READ_EVERY` (or at once after a join).
        if self
            .supp_read
            .is_some_and(|t| t.elapsed() < SUPP_READ_EVERY && !new_epoch)
        {
            return Ok(());
        }
        self.supp_read = Some(Instant::now());
        let path = store::cluster_file(&config.engine.data_dir);
        for _ in 0..SUPP_READS_MAX {
            let reply = conn.call(&[
                b"XREAD",
                b"COUNT",
                SUPP_READ_COUNT.to_string().as_bytes(),
                b"STREAMS",
                &stream,
                &self.supp_cursor,
            ])?;
            let entries = stream_entries(&reply);
            let full = entries.len() >= SUPP_READ_COUNT;
            let mut learnt = Vec::new();
            for (id, node, line) in entries {
                self.supp_cursor = id;
                if node == shared.config.node.as_bytes() {
                    continue;
                }
                if let Some(e) = remote_entry(&line) {
                    supp.apply(&e);
                    e.encode(&mut learnt);
                }
            }
            keep_learnt(&path, &learnt);
            if !full {
                break;
            }
        }
        Ok(())
    }

    /// This node's new suppression entries to the stream (and opt-outs to the hash); taken
    /// out of the outbox only once Redis has them.
    fn write_suppressions(
        &mut self,
        conn: &mut Conn,
        shared: &Shared,
        hooks: &dyn Hooks,
    ) -> Result<usize, String> {
        let prefix = &shared.config.key_prefix;
        let stream = format!("{prefix}:supp").into_bytes();
        let optouts = format!("{prefix}:optouts").into_bytes();
        let supp = hooks.suppressions();
        let made = supp.to_share(SUPP_WRITE_MAX);
        if made.is_empty() {
            return Ok(0);
        }
        let mut commands = Vec::with_capacity(made.len() * 2);
        for e in &made {
            let mut line = Vec::new();
            e.encode(&mut line);
            line.pop();
            commands.push(vec![
                b"XADD".to_vec(),
                stream.clone(),
                b"MAXLEN".to_vec(),
                b"~".to_vec(),
                SUPP_STREAM_MAX.as_bytes().to_vec(),
                b"*".to_vec(),
                b"n".to_vec(),
                shared.config.node.as_bytes().to_vec(),
                b"e".to_vec(),
                line,
            ]);
            if is_opt_out(e) {
                commands.push(hset(&optouts, e));
            }
        }
        pipeline_ok(conn, &commands)?;
        supp.shared(made.len());
        Ok(made.len())
    }

    /// At a clean stop: every entry still waiting goes out (unsubscribes taken during the
    /// drain), within a bound.
    pub(super) fn flush_suppressions(
        &mut self,
        conn: &mut Conn,
        shared: &Shared,
        hooks: &dyn Hooks,
    ) -> Result<(), String> {
        for _ in 0..50 {
            if self.write_suppressions(conn, shared, hooks)? == 0 {
                break;
            }
        }
        Ok(())
    }
}

/// Reads per `SUPP_READ_EVERY` at most, of `SUPP_READ_COUNT` entries each (each reply stays
/// within the codec's bound: entries are at most 4 KiB).
const SUPP_READS_MAX: usize = 20;
const SUPP_READ_COUNT: usize = 200;

fn is_opt_out(e: &crate::suppression::store::Entry) -> bool {
    use crate::suppression::Source;
    matches!(
        e.source,
        Source::Manual { .. } | Source::Unsubscribe { .. } | Source::Removed { .. }
    )
}

fn opt_out_field(e: &crate::suppression::store::Entry) -> Vec<u8> {
    format!("{}\t{}", e.tenant, e.entry.to_ascii_lowercase()).into_bytes()
}

fn hset(optouts: &[u8], e: &crate::suppression::store::Entry) -> Vec<Vec<u8>> {
    let mut line = Vec::new();
    e.encode(&mut line);
    line.pop();
    vec![b"HSET".to_vec(), optouts.to_vec(), opt_out_field(e), line]
}

/// This node's opt-outs in force (its store: its own and those it learnt from the others).
fn local_opt_outs(config: &Config) -> Result<Vec<crate::suppression::store::Entry>, String> {
    use crate::suppression::store;
    let today = crate::suppression::day_of(crate::clock::system().unix_ms());
    let stored = store::read_dir(&config.engine.data_dir)?;
    let days = config.suppression.bad_mailbox_expire.as_secs() / 86_400;
    Ok(store::in_force(&stored, today, days)
        .into_iter()
        .filter(is_opt_out)
        .collect())
}

/// Other nodes' entries, durably in this node's `added-cluster.log`.
fn keep_learnt(path: &std::path::Path, learnt: &[u8]) {
    if learnt.is_empty() {
        return;
    }
    if let Err(e) = crate::suppression::store::append_durably(path, learnt) {
        // In force here all the same; lost at a restart unless learnt again.
        tracing::warn!("cluster: {}: {e}", path.display());
    }
}

impl Sync {
    /// Gateway users' daily counts: this node's, written to the day's hash when they change
    /// (all of them when Redis's state is new); the others', summed per user, every
    /// `SUPP_READ_EVERY`. A user's limit then holds across the cluster within what the nodes
    /// accept between two reads.
    fn daily(
        &mut self,
        conn: &mut Conn,
        shared: &Shared,
        hooks: &dyn Hooks,
        new_epoch: bool,
    ) -> Result<(), String> {
        let now_ms = crate::clock::system().unix_ms();
        let day = crate::gateway::limits::utc_day(now_ms);
        let counts = hooks.daily_counts(day);
        if counts.is_empty() {
            return Ok(());
        }
        let key = format!("{}:daily:{day}", shared.config.key_prefix).into_bytes();
        if day != self.daily_day || new_epoch {
            self.daily_day = day;
            self.daily_written.clear();
        }
        let node = &shared.config.node;
        let mut commands = Vec::new();
        let mut written = Vec::new();
        for (user, n) in &counts {
            if self.daily_written.get(user) != Some(n) {
                commands.push(vec![
                    b"HSET".to_vec(),
                    key.clone(),
                    format!("{user}\t{node}").into_bytes(),
                    n.to_string().into_bytes(),
                ]);
                written.push((user.clone(), *n));
            }
        }
        if !commands.is_empty() {
            // Two days: yesterday's stays readable past midnight, then goes.
            commands.push(vec![
                b"PEXPIRE".to_vec(),
                key.clone(),
                b"172800000".to_vec(),
            ]);
            pipeline_ok(conn, &commands)?;
            // Only once Redis has them: a failed write is written again next time.
            self.daily_written.extend(written);
        }
        if self
            .daily_read
            .is_some_and(|t| t.elapsed() < SUPP_READ_EVERY && !new_epoch)
        {
            return Ok(());
        }
        self.daily_read = Some(Instant::now());
        let all = scan_hash(conn, &String::from_utf8_lossy(&key))?;
        let mut others: HashMap<&str, u64> = counts.iter().map(|(u, _)| (u.as_str(), 0)).collect();
        for (field, value) in &all {
            let Some((user, who)) = field.split_once('\t') else {
                continue;
            };
            if who == node.as_str() {
                continue;
            }
            if let (Some(sum), Ok(n)) = (others.get_mut(user), value.parse::<u64>()) {
                *sum = sum.saturating_add(n);
            }
        }
        for (user, n) in others {
            hooks.set_daily_others(user, day, n);
        }
        Ok(())
    }
}

/// Another node's suppression entry, if it is one a node here could have made: a valid
/// address or `@domain`, a valid tenant, a known kind.
pub fn remote_entry(line: &[u8]) -> Option<crate::suppression::store::Entry> {
    use crate::suppression::{manage, store, Source};
    let e = store::Entry::decode(line)?;
    manage::check_tenant(&e.tenant).ok()?;
    let entry = manage::parse_entry(&e.entry).ok()?;
    if matches!(e.source, Source::File(_)) {
        return None;
    }
    Some(store::Entry { entry, ..e })
}

/// (id, node, line) of each entry of an XREAD reply for one stream.
pub fn stream_entries(reply: &Value) -> Vec<(Vec<u8>, Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    let Value::Array(streams) = reply else {
        return out;
    };
    for s in streams {
        let Value::Array(parts) = s else { continue };
        let Some(Value::Array(entries)) = parts.get(1) else {
            continue;
        };
        for entry in entries {
            let Value::Array(e) = entry else { continue };
            let (Some(Value::Bulk(id)), Some(Value::Array(fields))) = (e.first(), e.get(1)) else {
                continue;
            };
            let mut node = Vec::new();
            let mut line = Vec::new();
            for pair in fields.chunks(2) {
                if let [Value::Bulk(k), Value::Bulk(v)] = pair {
                    match k.as_slice() {
                        b"n" => node = v.clone(),
                        b"e" => line = v.clone(),
                        _ => {}
                    }
                }
            }
            out.push((id.clone(), node, line));
        }
    }
    out
}

/// Every node's leases on this node's shared providers, for the cluster view.
fn read_peers(
    conn: &mut Conn,
    shared: &Shared,
    config: &Config,
    now_ms: u64,
) -> Result<(), String> {
    let mut peers = Vec::new();
    for name in config.providers.keys() {
        if totals(config, name) == super::Totals::default() {
            continue;
        }
        let key = format!("{}:lease:{name}", shared.config.key_prefix);
        for (node, value) in scan_hash(conn, &key)? {
            let v: Vec<u64> = value.split(',').filter_map(|x| x.parse().ok()).collect();
            let [rate, conns, until, want_rate, want_conns, rate_total, conns_total, ..] = v[..]
            else {
                continue;
            };
            if until <= now_ms || node.len() > super::super::config::cluster::NODE_NAME_MAX {
                continue;
            }
            let milli = |x: u64| x as f64 / 1000.0;
            peers.push(super::PeerLease {
                node,
                provider: name.clone(),
                rate: (rate_total > 0).then(|| milli(rate)),
                connections: (conns_total > 0).then_some(conns.min(u64::from(u32::MAX)) as u32),
                wants_rate: (rate_total > 0).then(|| milli(want_rate)),
                wants_connections: (conns_total > 0)
                    .then_some(want_conns.min(u64::from(u32::MAX)) as u32),
            });
        }
    }
    peers.sort_by(|a, b| (&a.provider, &a.node).cmp(&(&b.provider, &b.node)));
    shared.set_peers(peers);
    Ok(())
}

/// Every field of a hash, by HSCAN, a page at a time to `each` (no bound on the hash: only
/// a page is held at once).
fn scan_hash_pages(
    conn: &mut Conn,
    key: &[u8],
    mut each: impl FnMut(&[(Vec<u8>, Vec<u8>)]),
) -> Result<(), String> {
    let mut cursor = b"0".to_vec();
    loop {
        let reply = conn.call(&[b"HSCAN", key, &cursor, b"COUNT", SCAN_COUNT.as_bytes()])?;
        let Value::Array(items) = reply else {
            return Err("redis HSCAN answered something else".into());
        };
        let (Some(Value::Bulk(next)), Some(Value::Array(pairs))) = (items.first(), items.get(1))
        else {
            return Err("redis HSCAN: an answer of the wrong shape".into());
        };
        let page: Vec<(Vec<u8>, Vec<u8>)> = pairs
            .chunks(2)
            .filter_map(|p| match p {
                [Value::Bulk(f), Value::Bulk(v)] => Some((f.clone(), v.clone())),
                _ => None,
            })
            .collect();
        each(&page);
        if next.as_slice() == b"0" {
            return Ok(());
        }
        cursor = next.clone();
    }
}

/// Every field of a hash, by HSCAN (bounded replies), at most `SCAN_FIELDS_MAX`.
fn scan_hash(conn: &mut Conn, key: &str) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    let mut cursor = b"0".to_vec();
    loop {
        let reply = conn.call(&[
            b"HSCAN",
            key.as_bytes(),
            &cursor,
            b"COUNT",
            SCAN_COUNT.as_bytes(),
        ])?;
        let Value::Array(items) = reply else {
            return Err(format!("redis HSCAN {key} answered {reply:?}"));
        };
        let (Some(Value::Bulk(next)), Some(Value::Array(pairs))) = (items.first(), items.get(1))
        else {
            return Err(format!("redis HSCAN {key}: an answer of the wrong shape"));
        };
        for pair in pairs.chunks(2) {
            if let [Value::Bulk(f), Value::Bulk(v)] = pair {
                if out.len() < SCAN_FIELDS_MAX {
                    out.insert(
                        String::from_utf8_lossy(f).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    );
                }
            }
        }
        if next.as_slice() == b"0" || out.len() >= SCAN_FIELDS_MAX {
            return Ok(out);
        }
        cursor = next.clone();
    }
}
