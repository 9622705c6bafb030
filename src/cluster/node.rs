//! The node's threads: one renews its leases every `TICK` and publishes its shards' cuts;
//! one listens for the other nodes' cuts. Both reconnect on their own (every
//! `RECONNECT_EVERY`) and never block a shard: while Redis cannot be reached, each lease runs
//! out at its end and the shards fall back to `fallback_share` (`Shared::part`).

use super::client::{printable, Conn};
use super::resp::Value;
use super::sync::Sync;
use super::{lock, totals, Cut, Hooks, Lease, Shared};
use crate::config::Config;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const RENEW_SCRIPT: &str = include_str!("renew.lua");
const LEAVE_SCRIPT: &str = "for i = 4, #ARGV do redis.call('HDEL', ARGV[1] .. ':lease:' .. ARGV[i], ARGV[2]) end \
if redis.call('GET', ARGV[1] .. ':node:' .. ARGV[2]) == ARGV[3] then redis.call('DEL', ARGV[1] .. ':node:' .. ARGV[2]) end \
return 0";
/// Claims this node's sending addresses in `<prefix>:sources` (address to node): each one
/// no live other node holds becomes this node's, and this node's old claims on addresses it
/// no longer has are dropped; returns the addresses a live other node holds, each with its
/// holder. ARGV: prefix, node, addresses.
const SOURCES_SCRIPT: &str = "local key = ARGV[1] .. ':sources' local taken = {} local mine = {} \
for i = 3, #ARGV do local h = redis.call('HGET', key, ARGV[i]) \
if h and h ~= ARGV[2] and redis.call('EXISTS', ARGV[1] .. ':node:' .. h) == 1 then \
table.insert(taken, ARGV[i]) table.insert(taken, h) \
else mine[ARGV[i]] = true redis.call('HSET', key, ARGV[i], ARGV[2]) end end \
local all = redis.call('HGETALL', key) \
for i = 1, #all, 2 do if all[i + 1] == ARGV[2] and not mine[all[i]] then redis.call('HDEL', key, all[i]) end end \
return taken";
/// A lost connection is tried again after this long.
pub const RECONNECT_EVERY: Duration = Duration::from_secs(1);
/// A node with this many recipients waiting for a provider asks for a rate that would send
/// them within 1/`WANT_HORIZON` of a second (and never more than the total).
const WANT_HORIZON: f64 = 4.0;
/// Recipients a connection is asked for per this many waiting.
const RECIPIENTS_PER_CONNECTION: u64 = 8;

/// The running threads; `stop` ends them (leases given back if Redis can be reached).
pub struct Node {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

impl Node {
    pub fn stop(mut self) {
        self.shared.stop();
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Why a node cannot join: its name is held by another live process.
#[derive(Debug)]
pub struct NameTaken(pub String);

/// Checks at start that no other live process holds this node's name (Redis unreachable:
/// not known, the node starts on its fallback shares and checks when Redis returns).
pub fn register(shared: &Shared) -> Result<(), NameTaken> {
    let mut conn = match Conn::open_master(&shared.config, &shared.traffic) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(
                "cluster: {e}; starting on fallback shares ({} of each shared limit) until Redis answers",
                shared.config.fallback_share
            );
            note_failure(shared, e);
            return Ok(());
        }
    };
    let mut sha = None;
    // A node restarted after a crash finds its own name still held by its dead process for
    // up to three lease periods: it waits that long (a supervisor's restart must not be
    // refused), then gives up on a name some live process keeps renewing.
    let lapse = shared.config.lease * 3;
    let deadline = Instant::now() + lapse + shared.config.lease;
    let mut said = false;
    loop {
        match renew_call(&mut conn, shared, &mut sha, &[]) {
            Ok(Renewed::Taken(holder)) if Instant::now() < deadline => {
                if !said {
                    tracing::warn!(
                        "cluster: node name {:?} is held by {holder}; waiting up to {:?} for it to lapse",
                        shared.config.node,
                        lapse
                    );
                    said = true;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            Ok(Renewed::Taken(holder)) => {
                return Err(NameTaken(format!(
                    "cluster.node {:?} is live in the cluster (held by {holder}, renewed for {:?}, past a dead process's lapse)",
                    shared.config.node,
                    lapse + shared.config.lease
                )))
            }
            Ok(Renewed::Leases(..)) => {
                return match claim_sources(&mut conn, shared) {
                    Ok(taken) if taken.is_empty() => Ok(()),
                    Ok(taken) => {
                        // The name goes back at once: fixed, the node starts again at once.
                        leave(&mut conn, shared, &[]);
                        let (address, holder) = &taken[0];
                        Err(NameTaken(format!(
                            "source address {address} is node {holder}'s, which is live in the cluster: a sending address belongs to one node (its warm-up counts and its own limits are that node's)"
                        )))
                    }
                    Err(e) => {
                        tracing::warn!("cluster: {e}; this node's source addresses are not checked");
                        Ok(())
                    }
                };
            }
            Err(e) => {
                tracing::warn!("cluster: {e}; starting on fallback shares until Redis answers");
                note_failure(shared, e);
                return Ok(());
            }
        }
    }
}

/// Starts the threads; `hooks` are the engine's side.
pub fn start(shared: Arc<Shared>, hooks: Arc<dyn Hooks>) -> std::io::Result<Node> {
    // One wake-up pending at most: a flood of notes costs nothing more than one.
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    *lock(&shared.wake) = Some(tx);
    let renewing = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("cluster-renew".into())
            .spawn(move || renew_loop(&shared, &*hooks, &rx))?
    };
    let listening = {
        let shared = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("cluster-listen".into())
            .spawn(move || listen_loop(&shared))?
    };
    Ok(Node {
        shared,
        threads: vec![renewing, listening],
    })
}

/// One shared provider as this node asks for it.
struct Ask {
    provider: String,
    rate_total: u64,
    conns_total: u64,
    rate_want: u64,
    conns_want: u64,
}

enum Renewed {
    /// The epoch of Redis's state (when it began, its ms), whether that was within the
    /// last two lease periods, and per ask, in order: (rate milli-messages/s, connections).
    Leases(u64, bool, Vec<(u64, u64)>),
    Taken(String),
}

fn asks(config: &Config, wants: &HashMap<String, u64>) -> Vec<Ask> {
    let mut out = Vec::new();
    for name in config.providers.keys() {
        let t = totals(config, name);
        if t.rate.is_none() && t.conns.is_none() {
            continue;
        }
        let waiting = wants.get(name).copied().unwrap_or(0);
        let rate_total = t.rate.map_or(0, |r| (r * 1000.0).round().max(1.0) as u64);
        let conns_total = t.conns.map_or(0, u64::from);
        let (rate_want, conns_want) = if waiting == 0 {
            (0, 0)
        } else {
            let rate = (waiting as f64 * WANT_HORIZON * 1000.0).min(rate_total as f64) as u64;
            let conns = waiting
                .div_ceil(RECIPIENTS_PER_CONNECTION)
                .clamp(1, conns_total.max(1));
            (rate.max(1000.min(rate_total)), conns)
        };
        out.push(Ask {
            provider: name.clone(),
            rate_total,
            conns_total,
            rate_want,
            conns_want,
        });
    }
    out
}

fn renew_call(
    conn: &mut Conn,
    shared: &Shared,
    sha: &mut Option<String>,
    asks: &[Ask],
) -> Result<Renewed, String> {
    let c = &shared.config;
    let lease_ms = c.lease.as_millis().to_string();
    let fallback = ((c.fallback_share * 1000.0).round() as u64).to_string();
    let n = asks.len().to_string();
    let nums: Vec<[String; 4]> = asks
        .iter()
        .map(|a| {
            [
                a.rate_total.to_string(),
                a.conns_total.to_string(),
                a.rate_want.to_string(),
                a.conns_want.to_string(),
            ]
        })
        .collect();
    let mut argv: Vec<&[u8]> = vec![
        c.key_prefix.as_bytes(),
        c.node.as_bytes(),
        shared.instance.as_bytes(),
        lease_ms.as_bytes(),
        fallback.as_bytes(),
        n.as_bytes(),
    ];
    for (a, nums) in asks.iter().zip(&nums) {
        argv.push(a.provider.as_bytes());
        argv.extend(nums.iter().map(|s| s.as_bytes()));
    }
    let reply = eval(conn, sha, RENEW_SCRIPT, &argv)?;
    let Value::Array(items) = reply else {
        return Err(format!("redis: the renewal answered {reply:?}"));
    };
    let status = items.first().and_then(Value::as_i64);
    if status == Some(-1) {
        let holder = match items.get(2) {
            Some(Value::Bulk(b)) => printable(&String::from_utf8_lossy(b)),
            _ => "another process".into(),
        };
        return Ok(Renewed::Taken(holder));
    }
    let epoch = items.get(2).and_then(Value::as_i64).filter(|&e| e >= 0);
    let (Some(0), Some(epoch)) = (status, epoch) else {
        return Err("redis: the renewal's answer has the wrong shape".into());
    };
    if items.len() != 3 + 2 * asks.len() {
        return Err("redis: the renewal's answer has the wrong shape".into());
    }
    let mut leases = Vec::with_capacity(asks.len());
    for pair in items[3..].chunks(2) {
        let rate = pair[0].as_i64().filter(|&v| v >= 0);
        let conns = pair[1].as_i64().filter(|&v| v >= 0);
        match (rate, conns) {
            (Some(r), Some(c)) => leases.push((r as u64, c as u64)),
            _ => return Err("redis: the renewal's answer has a bad number".into()),
        }
    }
    let now = items.get(1).and_then(Value::as_i64).unwrap_or(0);
    let young = now.saturating_sub(epoch) < 2 * c.lease.as_millis() as i64;
    Ok(Renewed::Leases(epoch as u64, young, leases))
}

/// This node's sending addresses claimed (`SOURCES_SCRIPT`): the ones a live other node
/// holds, with it (then none is claimed).
pub(super) fn claim_sources(
    conn: &mut Conn,
    shared: &Shared,
) -> Result<Vec<(String, String)>, String> {
    let sources = shared.sources();
    let c = &shared.config;
    let mut args: Vec<&[u8]> = vec![
        b"EVAL",
        SOURCES_SCRIPT.as_bytes(),
        b"0",
        c.key_prefix.as_bytes(),
        c.node.as_bytes(),
    ];
    args.extend(sources.iter().map(|s| s.as_bytes()));
    match conn.call(&args)? {
        Value::Array(items) => {
            let text: Vec<String> = items
                .iter()
                .map(|v| match v {
                    Value::Bulk(b) => printable(&String::from_utf8_lossy(b)),
                    _ => String::new(),
                })
                .collect();
            Ok(text
                .chunks(2)
                .filter(|p| p.len() == 2)
                .map(|p| (p[0].clone(), p[1].clone()))
                .collect())
        }
        Value::Error(e) => Err(format!("redis: {}", printable(&e))),
        other => Err(format!("redis: the source claim answered {other:?}")),
    }
}

/// Runs a script by its digest, loading it first if this Redis does not have it.
fn eval(
    conn: &mut Conn,
    sha: &mut Option<String>,
    script: &str,
    argv: &[&[u8]],
) -> Result<Value, String> {
    for _ in 0..2 {
        let digest = match sha.as_ref() {
            Some(s) => s.clone(),
            None => match conn.call(&[b"SCRIPT", b"LOAD", script.as_bytes()])? {
                Value::Bulk(b) => {
                    let s = String::from_utf8_lossy(&b).into_owned();
                    *sha = Some(s.clone());
                    s
                }
                other => return Err(format!("redis SCRIPT LOAD answered {other:?}")),
            },
        };
        let mut args: Vec<&[u8]> = vec![b"EVALSHA", digest.as_bytes(), b"0"];
        args.extend_from_slice(argv);
        match conn.call(&args)? {
            Value::Error(e) if e.starts_with("NOSCRIPT") => *sha = None,
            Value::Error(e) => return Err(format!("redis script: {}", printable(&e))),
            v => return Ok(v),
        }
    }
    Err("redis keeps forgetting the script".into())
}

fn renew_loop(shared: &Shared, hooks: &dyn Hooks, wake: &std::sync::mpsc::Receiver<()>) {
    let mut conn: Option<Conn> = None;
    let mut sha = None;
    let mut next_try = Instant::now();
    let mut taken_logged = false;
    let mut sync = Sync::default();
    while !shared.stopping() {
        let started = Instant::now();
        if conn.is_none() && started >= next_try {
            match Conn::open_master(&shared.config, &shared.traffic) {
                Ok(c) => {
                    conn = Some(c);
                    sha = None;
                }
                Err(e) => {
                    note_failure(shared, e);
                    next_try = started + RECONNECT_EVERY;
                }
            }
        }
        if let Some(c) = conn.as_mut() {
            let config = hooks.config();
            let asks = asks(&config, &shared.wants());
            let result =
                publish_cuts(c, shared).and_then(|()| renew_call(c, shared, &mut sha, &asks));
            match result {
                Ok(Renewed::Leases(epoch, young, granted)) => {
                    taken_logged = false;
                    note_renewed(shared);
                    // In force at once: Redis counts a lowered grant for the others from now
                    // (after a short grace, `renew.lua`), so nothing else may come first.
                    let until = started + shared.config.lease;
                    let new: HashMap<String, Lease> = asks
                        .iter()
                        .zip(granted)
                        .map(|(a, (rate, conns))| {
                            let lease = Lease {
                                rate: (a.rate_total > 0).then(|| rate as f64 / 1000.0),
                                conns: (a.conns_total > 0).then_some(conns as u32),
                                until,
                            };
                            (a.provider.clone(), lease)
                        })
                        .collect();
                    set_leases(shared, new);
                    if let Err(e) = sync.run(c, shared, hooks, epoch, young) {
                        // The leases stand (they were granted); the shared state waits for
                        // the next connection.
                        conn = None;
                        note_failure(shared, e);
                        next_try = Instant::now() + RECONNECT_EVERY;
                    }
                }
                Ok(Renewed::Taken(holder)) => {
                    // Another process took the name while Redis was away: this node stays
                    // on its fallback shares until the name is free.
                    if !taken_logged {
                        tracing::error!(
                            "cluster: node name {:?} is held by {holder}; running on fallback shares",
                            shared.config.node
                        );
                        taken_logged = true;
                    }
                    lock(&shared.status).name_taken = true;
                    set_leases(shared, HashMap::new());
                }
                Err(e) => {
                    // A renewal that failed may have been granted less in Redis than this
                    // node holds: the fallback share from now, not the old lease to its end.
                    conn = None;
                    set_leases(shared, HashMap::new());
                    note_failure(shared, e);
                    next_try = Instant::now() + RECONNECT_EVERY;
                }
            }
        } else if !lock(&shared.leases).is_empty() {
            // Not connected: no lease can be trusted to its end either.
            set_leases(shared, HashMap::new());
        }
        lapse_leases(shared, Instant::now());
        let _ = wake.recv_timeout(super::TICK.saturating_sub(started.elapsed()));
        while wake.try_recv().is_ok() {}
    }
    if let Some(mut c) = conn {
        // The last entries made here (unsubscribes taken during the drain) go out first.
        if let Err(e) = sync.flush_suppressions(&mut c, shared, hooks) {
            tracing::warn!("cluster: the last suppression entries were not shared: {e}");
        }
        let config = hooks.config();
        let providers: Vec<&str> = config.providers.keys().map(String::as_str).collect();
        leave(&mut c, shared, &providers);
    }
}

/// Gives this node's leases and name back at a clean stop, so the others take its share at
/// once and a restart is not refused.
fn leave(conn: &mut Conn, shared: &Shared, providers: &[&str]) {
    let c = &shared.config;
    let mut argv: Vec<&[u8]> = vec![
        c.key_prefix.as_bytes(),
        c.node.as_bytes(),
        shared.instance.as_bytes(),
    ];
    argv.extend(providers.iter().map(|p| p.as_bytes()));
    let mut args: Vec<&[u8]> = vec![b"EVAL", LEAVE_SCRIPT.as_bytes(), b"0"];
    args.extend(argv);
    if let Err(e) = conn.call(&args) {
        tracing::warn!("cluster: could not give the leases back ({e}); they lapse on their own");
    }
}

fn publish_cuts(conn: &mut Conn, shared: &Shared) -> Result<(), String> {
    let cuts = std::mem::take(&mut *lock(&shared.cuts_out));
    let channel = events_channel(shared);
    for cut in &cuts {
        let text = cut.encode();
        conn.call(&[b"PUBLISH", channel.as_bytes(), text.as_bytes()])?;
    }
    if !cuts.is_empty() {
        lock(&shared.status).cuts_published += cuts.len() as u64;
    }
    Ok(())
}

/// Takes the new leases; the shards re-limit when one changed enough to matter.
fn set_leases(shared: &Shared, new: HashMap<String, Lease>) {
    let mut leases = lock(&shared.leases);
    let changed = new.len() != leases.len()
        || new.iter().any(|(k, l)| match leases.get(k) {
            None => true,
            Some(old) => differs(old, l),
        });
    *leases = new;
    drop(leases);
    if changed {
        shared.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// A lease that ran out (Redis silent for its whole length) gives way to the fallback.
fn lapse_leases(shared: &Shared, now: Instant) {
    let mut leases = lock(&shared.leases);
    let before = leases.len();
    leases.retain(|_, l| l.until > now);
    let lapsed = leases.len() != before;
    drop(leases);
    if lapsed {
        shared.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// A change from `old` to `new` worth re-limiting for: any decrease (the shards must not go
/// on at more than they hold), a connection, a rate from zero, or a rise of 1%. A smaller
/// rise waits for the next one that is not (the shards read `part` at their next demand
/// anyway).
fn differs(old: &Lease, new: &Lease) -> bool {
    let rate = match (old.rate, new.rate) {
        (Some(x), Some(y)) => y < x || (x == 0.0 && y > 0.0) || y > x * 1.01,
        (x, y) => x.is_some() != y.is_some(),
    };
    rate || old.conns != new.conns
}

fn note_renewed(shared: &Shared) {
    let mut s = lock(&shared.status);
    if let Some(since) = s.degraded_since_ms.take() {
        let secs = crate::clock::system().unix_ms().saturating_sub(since) as f64 / 1000.0;
        tracing::info!("cluster: Redis answers again after {secs:.1} s; leases renewed");
    }
    s.connected = true;
    s.name_taken = false;
    s.renewals += 1;
}

fn note_failure(shared: &Shared, e: String) {
    let mut s = lock(&shared.status);
    if s.degraded_since_ms.is_none() {
        tracing::warn!(
            "cluster: {e}; each lease runs out at its end, then this node sends at its fallback share ({})",
            shared.config.fallback_share
        );
        s.degraded_since_ms = Some(crate::clock::system().unix_ms());
    }
    s.connected = false;
    s.failures += 1;
    s.last_error = Some(e);
}

fn listen_loop(shared: &Shared) {
    let channel = events_channel(shared);
    while !shared.stopping() {
        if let Ok(mut conn) = Conn::open_master(&shared.config, &shared.traffic) {
            if conn.send(&[b"SUBSCRIBE", channel.as_bytes()]).is_ok() {
                listen(&mut conn, shared);
            }
        }
        let until = Instant::now() + RECONNECT_EVERY;
        while !shared.stopping() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

fn listen(conn: &mut Conn, shared: &Shared) {
    while !shared.stopping() {
        match conn.read_reply_within(Duration::from_millis(200)) {
            Ok(None) => {}
            Ok(Some(Value::Array(items))) => {
                if let [Value::Bulk(kind), _, Value::Bulk(payload)] = items.as_slice() {
                    if kind == b"message" {
                        if payload.starts_with(b"sync ") {
                            if payload[5..] != *shared.config.node.as_bytes() {
                                shared.ask_sync();
                            }
                        } else {
                            match Cut::decode(payload) {
                                Some(cut) if cut.node != shared.config.node => {
                                    shared.received_cut(cut)
                                }
                                _ => {}
                            }
                        }
                    }
                }
            }
            Ok(Some(_)) => {}
            Err(_) => return,
        }
    }
}

/// The channel every node publishes its cuts and its "sync" notes on.
pub(super) fn events_channel(shared: &Shared) -> String {
    format!("{}:events", shared.config.key_prefix)
}
