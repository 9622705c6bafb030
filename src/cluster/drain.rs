//! `spate drain --to NODE`: a stopped node hands every recipient still queued here to
//! another node of the cluster, so it can be retired without loss.
//!
//! The node's data directory is locked (no engine runs meanwhile). For each shard's queue,
//! each message's live recipients go out in transfer files (`crate::queue::transfer`: the
//! message record, the recipient records, and the retry state of those tried before) to the
//! other node's `POST /api/v1/cluster/transfer`, found in Redis (`<prefix>:admin`, written
//! by every node) and authenticated by `[cluster] secret`. That node answers once the
//! transfer is queued durably (after its group commit); only then does this node write a
//! `Transferred` line per recipient to its delivery log and a final `Transferred` outcome
//! to its queue, synced before the next transfer. A transfer the other node refuses (its
//! reason is printed) leaves its recipients here; a drain cut short is run again, and a
//! transfer the other node already queued (its answer was lost) is not queued twice: its id
//! depends only on where its recipients are in this queue.

use super::client::{Conn, Traffic};
use crate::admin::client::{request_at, ClientError, Peer};
use crate::config::Config;
use crate::delivery_log::{DeliveryLog, EventType, LogRecord};
use crate::queue::index::Entry;
use crate::queue::record::{MessagePayload, OutcomePayload, OutcomeState, RecipientPayload};
use crate::queue::store::ShardQueue;
use crate::queue::transfer::{transfer_id, Retry, TransferWriter, TRANSFER_WINDOW};
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The endpoint on the receiving node.
pub const TRANSFER_PATH: &str = "/api/v1/cluster/transfer";
/// Tries of one transfer the other node could not take now (503, 504, no answer), with
/// waits of 1, 2, 4, ... s between them.
pub const SEND_TRIES: u32 = 5;

/// In the data directory while a drain may have handed recipients to another node that
/// this node does not yet count as final: the engine does not start with it (it would
/// deliver them too). Holds the other node's name.
pub const DRAIN_MARKER: &str = "drain-unfinished";

/// At the engine's start: refused while a drain is unfinished.
pub fn check_unfinished(data_dir: &Path) -> Result<(), String> {
    let path = data_dir.join(DRAIN_MARKER);
    match std::fs::read_to_string(&path) {
        Ok(to) => {
            let to = crate::smtp::reply::printable(to.trim());
            Err(format!(
                "a drain to node {to} did not finish ({}): run `spate drain --to {to}` again; to send this queue from here instead, delete that file (what {to} already took would then be delivered twice)",
                path.display()
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!(
            "{}: {e} (a drain may not have finished: it must be readable)",
            path.display()
        )),
    }
}

fn write_marker(data_dir: &Path, to: &str) -> std::io::Result<()> {
    use std::io::Write;
    // Whole or not at all: written aside, then renamed into place.
    let tmp = data_dir.join(format!("{DRAIN_MARKER}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(format!("{to}\n").as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, data_dir.join(DRAIN_MARKER))?;
    crate::queue::segment::sync_dir(data_dir)
}

fn remove_marker(data_dir: &Path) -> std::io::Result<()> {
    std::fs::remove_file(data_dir.join(DRAIN_MARKER))?;
    crate::queue::segment::sync_dir(data_dir)
}

/// Why a drain did not run, or stopped; its exit code.
#[derive(Debug)]
pub struct DrainError {
    pub code: u8,
    pub message: String,
}

impl fmt::Display for DrainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

fn fail(code: u8, message: impl Into<String>) -> DrainError {
    DrainError {
        code,
        message: message.into(),
    }
}

/// What a drain did.
#[derive(Debug, Default)]
pub struct DrainReport {
    /// Recipients the other node took (now final here).
    pub transferred: u64,
    /// Transfer files it took, and of those, how many it had queued already.
    pub transfers: u64,
    pub already: u64,
    /// Transfers it refused, each `recipients: reason`; their recipients stay here.
    pub refused: Vec<String>,
    /// Recipients still live here afterwards.
    pub left: u64,
    /// Files still in the spool's incoming/ (not moved: they are plain inputs, for the
    /// operator to move to the other node's spool).
    pub spool_files: usize,
}

/// Moves this (stopped) node's queue to `to`. `say` gets a line per shard.
pub fn drain(
    config: &Config,
    to: &str,
    say: &mut dyn FnMut(&str),
) -> Result<DrainReport, DrainError> {
    let Some(cluster) = &config.cluster else {
        return Err(fail(
            78,
            "spate drain needs [cluster]: the node to drain to is found through it",
        ));
    };
    let Some(secret) = cluster.secret.as_deref() else {
        return Err(fail(
            78,
            "cluster.secret is not set: nodes take transfers only with it",
        ));
    };
    if !crate::config::cluster::is_node_name(to) {
        return Err(fail(
            64,
            format!(
                "--to {}: not a node name (1 to {} letters, digits, '.', '_' or '-')",
                crate::smtp::reply::printable(to),
                crate::config::cluster::NODE_NAME_MAX
            ),
        ));
    }
    if to == cluster.node {
        return Err(fail(78, format!("--to {to}: that is this node")));
    }
    let data_dir = &config.engine.data_dir;
    let _lock = crate::engine::lock_data_dir(data_dir).map_err(|e| match e {
        crate::engine::EngineError::Storage(m) => fail(74, m),
        _ => fail(
            69,
            format!(
                "the engine is running on {}: stop it first (a drain moves a stopped node's queue)",
                data_dir.display()
            ),
        ),
    })?;
    let spool = crate::spool::Spool::open(&config.spool.dir)
        .map_err(|e| fail(74, format!("{}: {e}", config.spool.dir.display())))?;
    let claimed = spool
        .leftover_claims()
        .map_err(|e| fail(74, format!("{}: {e}", config.spool.dir.display())))?;
    if !claimed.is_empty() {
        return Err(fail(
            69,
            format!(
                "{} spool inputs were being queued when the engine stopped ({}): start it to finish them, stop it, then drain",
                claimed.len(),
                claimed[0].name
            ),
        ));
    }
    let spool_files = spool.candidates().map_or(0, |c| c.len());
    let target = find_node(cluster, to)?;
    if target.https && config.admin.cert.is_none() {
        return Err(fail(
            78,
            format!(
                "node {to} serves HTTPS ({}): set [admin] cert here to the certificate it shows",
                target.url
            ),
        ));
    }
    if let Ok(before) = std::fs::read_to_string(data_dir.join(DRAIN_MARKER)) {
        if before.trim() != to {
            return Err(fail(
                69,
                format!(
                    "a drain to node {} did not finish: run it again with --to {} first",
                    crate::smtp::reply::printable(before.trim()),
                    crate::smtp::reply::printable(before.trim())
                ),
            ));
        }
    }
    write_marker(data_dir, to).map_err(|e| fail(74, format!("{}: {e}", data_dir.display())))?;
    say(&format!("draining to node {to} at {}", target.url));
    let mut log = DeliveryLog::open(&config.log.dir)
        .map_err(|e| fail(74, format!("{}: {e}", config.log.dir.display())))?;
    let mut report = DrainReport {
        spool_files,
        ..Default::default()
    };
    let mut shard = 0u32;
    loop {
        let dir = data_dir.join(format!("shard-{shard}"));
        if !dir.is_dir() {
            break;
        }
        let before = report.transferred;
        let left = drain_shard(config, &dir, shard, &target, secret, &mut log, &mut report)?;
        report.left += left;
        say(&format!(
            "shard {shard}: {} recipients transferred, {left} left here",
            report.transferred - before
        ));
        shard += 1;
    }
    // Every transfer was answered (taken or refused) and what was taken is final here: the
    // engine may start again. Any error above leaves the marker.
    remove_marker(data_dir).map_err(|e| fail(74, format!("{}: {e}", data_dir.display())))?;
    Ok(report)
}

/// The receiving node's admin API.
struct Target {
    node: String,
    url: String,
    addr: SocketAddr,
    host: String,
    https: bool,
}

/// Looks `to` up in Redis: live (its name held) and with an address.
fn find_node(cluster: &crate::config::cluster::Cluster, to: &str) -> Result<Target, DrainError> {
    let traffic = Arc::new(Traffic::default());
    let mut conn =
        Conn::open_master(cluster, &traffic).map_err(|e| fail(69, format!("cluster: {e}")))?;
    let prefix = &cluster.key_prefix;
    let live = conn
        .call(&[b"EXISTS", format!("{prefix}:node:{to}").as_bytes()])
        .map_err(|e| fail(69, format!("cluster: {e}")))?;
    if live.as_i64() != Some(1) {
        return Err(fail(
            69,
            format!("node {to} is not live in the cluster (start it first)"),
        ));
    }
    let url = match conn.call(&[b"HGET", format!("{prefix}:admin").as_bytes(), to.as_bytes()]) {
        Ok(super::resp::Value::Bulk(b)) => String::from_utf8_lossy(&b).into_owned(),
        Ok(_) => {
            return Err(fail(
                69,
                format!("node {to} has told the cluster no address (set its cluster.advertise)"),
            ))
        }
        Err(e) => return Err(fail(69, format!("cluster: {e}"))),
    };
    let (https, host, port) = crate::config::cluster::parse_advertise(&url)
        .map_err(|e| fail(69, format!("node {to}'s address: {e}")))?;
    let addr = (host.as_str(), port)
        .to_socket_addrs()
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            fail(
                69,
                format!("node {to}'s address {url}: it does not resolve"),
            )
        })?;
    let host = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    Ok(Target {
        node: to.to_string(),
        url,
        addr,
        host,
        https,
    })
}

/// One shard's queue: every message's live recipients, transfer by transfer. Returns the
/// recipients left here.
fn drain_shard(
    config: &Config,
    dir: &Path,
    shard: u32,
    target: &Target,
    secret: &str,
    log: &mut DeliveryLog,
    report: &mut DrainReport,
) -> Result<u64, DrainError> {
    let storage = |e: crate::queue::store::QueueError| fail(74, e.to_string());
    let (mut queue, _) =
        ShardQueue::open(dir, shard, config.queue.segment_bytes).map_err(storage)?;
    let node = &config.cluster.as_ref().expect("checked by drain").node;
    // Per message and sequence window, its live recipients in queue order: a transfer each.
    let mut parts: std::collections::BTreeMap<(u64, u64), Vec<(u64, Entry)>> = Default::default();
    for (seq, e) in queue.index.live_entries() {
        parts
            .entry((e.message_seq, seq / TRANSFER_WINDOW))
            .or_default()
            .push((seq, *e));
    }
    // The message of the parts in hand (parts come in message order).
    let mut message: Option<Message> = None;
    for ((message_seq, window), recipients) in parts {
        if message.as_ref().is_none_or(|m| m.seq != message_seq) {
            let Some(info) = queue.index.messages.get(&message_seq) else {
                continue;
            };
            let payload = queue
                .payload_at(message_seq, info.offset)
                .map_err(storage)?;
            let m = MessagePayload::decode(&payload).map_err(|e| {
                fail(
                    74,
                    format!("{}: message record {message_seq}: {e}", dir.display()),
                )
            })?;
            message = Some(Message {
                seq: message_seq,
                batch_id: m.batch_id,
                created_unix_ms: m.created_unix_ms,
                labels: Labels {
                    sender: m.sender.to_string(),
                    campaign: m.campaign.to_string(),
                    tenant: m.tenant.to_string(),
                },
                payload,
            });
        }
        let Some(m) = &message else {
            continue;
        };
        let (payload, labels) = (&m.payload, &m.labels);
        let id = transfer_id(
            node,
            shard,
            message_seq,
            m.batch_id,
            m.created_unix_ms,
            window,
        );
        let mut part = TransferWriter::new(node, shard, payload);
        // Each recipient's place, address and attempts, for its release once sent.
        let mut sent = Vec::with_capacity(recipients.len());
        for (seq, e) in &recipients {
            let record = queue.payload_at(*seq, e.offset).map_err(storage)?;
            let retry = Retry {
                attempts: u16::from(e.attempts),
                due_unix_ms: if e.state == crate::queue::index::EntryState::Deferred {
                    u64::from(e.due_unix_s) * 1000
                } else {
                    0
                },
            };
            part.push(&record, retry);
            let rcpt = RecipientPayload::decode_recipient(&record)
                .map(|(_, r)| r.to_string())
                .unwrap_or_default();
            sent.push((*seq, rcpt, e.attempts));
        }
        let bytes = part.finish(id);
        match send(target, secret, config.admin.cert.as_deref(), &bytes)? {
            Sent::Queued { already } => {
                record(&mut queue, log, &sent, labels, target, id)?;
                report.transferred += sent.len() as u64;
                report.transfers += 1;
                report.already += u64::from(already);
            }
            Sent::Refused(why) => {
                report
                    .refused
                    .push(format!("{} recipients: {why}", sent.len()));
            }
        }
    }
    Ok(queue.index.live())
}

/// A message record and what its recipients' transfers need of it.
struct Message {
    seq: u64,
    batch_id: u64,
    created_unix_ms: u64,
    labels: Labels,
    payload: Vec<u8>,
}

struct Labels {
    sender: String,
    campaign: String,
    tenant: String,
}

enum Sent {
    Queued { already: bool },
    Refused(String),
}

/// Sends one transfer; tries again (`SEND_TRIES`) while the other node cannot take it now.
/// Over HTTPS the other node must show the certificate this node's `[admin] cert` names
/// (the nodes of a cluster share one admin certificate).
fn send(
    target: &Target,
    secret: &str,
    pinned: Option<&Path>,
    bytes: &[u8],
) -> Result<Sent, DrainError> {
    let peer = Peer {
        addr: target.addr,
        host: &target.host,
        pinned: if target.https { pinned } else { None },
        token: Some(secret),
        what: "the other node's admin API",
    };
    if target.https && pinned.is_none() {
        return Err(fail(
            78,
            format!(
                "node {} serves HTTPS ({}): set [admin] cert here to the certificate it shows",
                target.node, target.url
            ),
        ));
    }
    let mut last = String::new();
    for attempt in 0..SEND_TRIES {
        if attempt > 0 {
            std::thread::sleep(Duration::from_secs(1 << (attempt - 1)));
        }
        let reply = request_at(
            &peer,
            "POST",
            TRANSFER_PATH,
            Some(bytes),
            "application/octet-stream",
        );
        let (status, body) = match reply {
            Ok(r) => r,
            Err(ClientError::NotRunning(m)) | Err(ClientError::Other(m)) => {
                last = m;
                continue;
            }
        };
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        let why = v["error"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
        match status {
            200 if v["queued"] == true => {
                return Ok(Sent::Queued {
                    already: v["already"] == true,
                })
            }
            422 => return Ok(Sent::Refused(why)),
            503 | 504 => last = format!("{status} {why}"),
            _ => {
                return Err(fail(
                    1,
                    format!("node {} answered {status}: {why}", target.node),
                ))
            }
        }
    }
    Err(fail(
        69,
        format!(
            "node {} did not take a transfer after {SEND_TRIES} tries: {last} (run the drain again)",
            target.node
        ),
    ))
}

/// The other node has them: a `Transferred` line each in the delivery log, then their
/// final outcome in the queue, synced.
fn record(
    queue: &mut ShardQueue,
    log: &mut DeliveryLog,
    sent: &[(u64, String, u8)],
    labels: &Labels,
    target: &Target,
    id: u64,
) -> Result<(), DrainError> {
    let now = crate::clock::system().unix_ms();
    let response = format!("transferred to node {} (transfer {id:016x})", target.node);
    for (seq, rcpt, attempts) in sent {
        log.append(&LogRecord {
            ts_unix_ms: now,
            event: Some(EventType::Transferred),
            recipient: rcpt,
            sender: &labels.sender,
            campaign: &labels.campaign,
            tenant: &labels.tenant,
            domain: rcpt.rsplit_once('@').map_or("", |(_, d)| d),
            response: &response,
            ..Default::default()
        })
        .map_err(|e| fail(74, format!("delivery log: {e}")))?;
        queue
            .append_outcome(OutcomePayload {
                recipient_seq: *seq,
                state: OutcomeState::Transferred,
                attempts: u16::from(*attempts),
                due_unix_ms: 0,
                ts_unix_ms: now,
            })
            .map_err(|e| fail(74, e.to_string()))?;
    }
    // The lines first (as the engine does): a crash between the two repeats lines, it
    // never keeps an outcome without its line.
    log.flush()
        .map_err(|e| fail(74, format!("delivery log: {e}")))?;
    queue
        .write_held_outcomes()
        .and_then(|()| queue.sync_now())
        .map_err(|e| fail(74, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unfinished_drain_keeps_the_engine_from_starting_until_it_is_done() {
        let dir = tempfile::tempdir().unwrap();
        assert!(check_unfinished(dir.path()).is_ok());
        write_marker(dir.path(), "mta2").unwrap();
        let why = check_unfinished(dir.path()).unwrap_err();
        assert!(why.contains("spate drain --to mta2"), "{why}");
        remove_marker(dir.path()).unwrap();
        assert!(check_unfinished(dir.path()).is_ok());
    }
}
