//! What comes in through the API: campaign batches (`/api/v1/inject`, through the spool)
//! and changes to the suppression store.

use super::*;

impl Api {
    /// `POST /api/v1/inject`: a campaign batch (the spool's `.jsonl`), streamed into the
    /// spool and answered once the engine has queued it durably (or refused it), exactly as
    /// for a file renamed into `incoming/`.
    pub(super) fn inject(
        &self,
        config: &Config,
        req: &Request,
        body: &mut dyn Read,
        peer: SocketAddr,
    ) -> Response {
        if req.content_length == 0 {
            return Response::error(400, "an empty batch");
        }
        if req.content_length > crate::spool::INPUT_BYTES_MAX {
            return Response::error(413, "a batch of at most 1 GiB");
        }
        if self.shared.stopping() {
            return Response::error(503, "the engine is stopping");
        }
        let n = self.injected.fetch_add(1, Ordering::Relaxed);
        let name = format!("api-{}-{n}.jsonl", self.now());
        let spool = &config.spool.dir;
        if let Err(e) = into_spool(spool, &name, &[], body, req.content_length) {
            return Response::error(400, &format!("the batch was not taken: {e}"));
        }
        let client = peer.to_string();
        let audit = Audit {
            action: "inject",
            target: &name,
            reason: "",
            client: &client,
            at_unix_ms: self.now(),
        };
        // Queued once the file has left incoming/ and its claim: deleted (or in done/)
        // after every recipient's group commit, or in bad/ with the reason.
        let deadline = std::time::Instant::now() + INJECT_WAIT_MAX;
        loop {
            if !in_spool(spool, &name) {
                break;
            }
            if self.shared.stopping() {
                self.shared.admin.audit(config, &audit, "engine stopping");
                return Response::error(
                    503,
                    &format!("{name}: the engine is stopping; the batch stays in the spool and is queued at the next start"),
                );
            }
            if std::time::Instant::now() >= deadline || self.shared.failed() {
                self.shared
                    .admin
                    .audit(config, &audit, "not queued in time");
                return Response::error(
                    504,
                    &format!(
                        "{name}: not queued within {} s; it stays in the spool and will be",
                        INJECT_WAIT_MAX.as_secs()
                    ),
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let err = spool.join("bad").join(format!("{name}.err"));
        if let Ok(reason) = std::fs::read_to_string(&err) {
            self.shared.admin.audit(config, &audit, "refused");
            return Response::json(
                422,
                json!({"name": name, "queued": false, "error": reason.trim_end()}).to_string(),
            );
        }
        self.shared.admin.audit(config, &audit, "queued");
        Response::json(200, json!({"name": name, "queued": true}).to_string())
    }
}

/// Writes `head` and then `len` bytes of `body` to `spool/tmp/NAME`, synced, and renames it
/// into `incoming/`, as producers do; on an error nothing is left behind.
fn into_spool(
    spool: &std::path::Path,
    name: &str,
    head: &[u8],
    body: &mut dyn Read,
    len: u64,
) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = spool.join("tmp").join(name);
    let written = (|| {
        std::fs::create_dir_all(spool.join("tmp"))?;
        // A leftover of an attempt cut short (or anything planted there) is replaced.
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        f.write_all(head)?;
        let copied = std::io::copy(&mut body.take(len), &mut f)?;
        if copied != len {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!(
                    "the client sent {} of {} bytes",
                    head.len() as u64 + copied,
                    head.len() as u64 + len
                ),
            ));
        }
        f.sync_data()?;
        std::fs::rename(&tmp, spool.join("incoming").join(name))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// True while `name` waits in the spool's `incoming/` or is claimed there (being queued).
fn in_spool(spool: &std::path::Path, name: &str) -> bool {
    let incoming = spool.join("incoming");
    let claimed_suffix = format!(".{name}");
    incoming.join(name).exists()
        || std::fs::read_dir(incoming.join(crate::spool::CLAIMED_DIR))
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().ends_with(&claimed_suffix))
            })
            .unwrap_or(false)
}

impl Api {
    /// `POST /api/v1/cluster/transfer`: another node's queued recipients (`spate drain`), a
    /// transfer file (`crate::queue::transfer`), authenticated by `[cluster] secret`. Put in
    /// the spool under its id and answered once queued durably: 200 (also when this node
    /// queued that id before), 422 with the reason when refused (the sender keeps those
    /// recipients), 503/504 when it could not be queued now (the sender tries again).
    pub(super) fn transfer(
        &self,
        config: &Config,
        req: &Request,
        body: &mut dyn Read,
        peer: SocketAddr,
    ) -> Response {
        use crate::queue::transfer::{self, TRANSFER_BYTES_MAX, TRANSFER_MAGIC};
        let Some(secret) = config.cluster.as_ref().and_then(|c| c.secret.as_deref()) else {
            return Response::error(
                404,
                "this node takes no transfers ([cluster] secret is not set)",
            );
        };
        if !crate::config::bearer_matches(req.authorization.as_deref(), secret) {
            let mut r = Response::error(401, "the cluster's secret is required ([cluster] secret)");
            r.fields.push("WWW-Authenticate: Bearer".into());
            return r;
        }
        if req.content_length < 16 || req.content_length > TRANSFER_BYTES_MAX as u64 {
            return Response::error(
                413,
                &format!("a transfer is 16 to {TRANSFER_BYTES_MAX} bytes"),
            );
        }
        if self.shared.stopping() {
            return Response::error(503, "the engine is stopping");
        }
        let mut head = [0u8; 16];
        if let Err(e) = body.read_exact(&mut head) {
            return Response::error(400, &format!("the transfer was not read: {e}"));
        }
        let id = u64::from_le_bytes(head[8..16].try_into().expect("8 bytes"));
        if head[..8] != TRANSFER_MAGIC || !transfer::is_transfer(id) {
            return Response::error(400, "not a transfer (bad magic or id)");
        }
        // One transfer at a time: two deliveries of one id never both reach the spool.
        let _one = self.transferring.lock().unwrap_or_else(|e| e.into_inner());
        // A little before now: file times may be coarser than the clock.
        let started = std::time::SystemTime::now() - Duration::from_secs(1);
        let name = transfer::spool_name(id);
        let queued = |already: bool| {
            Response::json(
                200,
                json!({"id": format!("{id:016x}"), "queued": true, "already": already}).to_string(),
            )
        };
        // In the spool first, then noted: the intake notes an id before it releases the
        // file, so a transfer that is in neither was never queued (the other order has a
        // gap in which it is in neither while being released).
        let spool = &config.spool.dir;
        let waiting = in_spool(spool, &name);
        if !waiting && self.shared.transfers.contains(id) {
            return queued(true);
        }
        if !waiting {
            if let Err(e) = into_spool(spool, &name, &head, body, req.content_length - 16) {
                return Response::error(400, &format!("the transfer was not taken: {e}"));
            }
        }
        let client = peer.to_string();
        let audit = Audit {
            action: "transfer",
            target: &name,
            reason: "",
            client: &client,
            at_unix_ms: self.now(),
        };
        let deadline = std::time::Instant::now() + INJECT_WAIT_MAX;
        while in_spool(spool, &name) {
            if self.shared.stopping()
                || std::time::Instant::now() >= deadline
                || self.shared.failed()
            {
                self.shared
                    .admin
                    .audit(config, &audit, "not queued in time");
                return Response::error(
                    503,
                    &format!("{name}: not queued yet; it stays in this node's spool (send it again later)"),
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if self.shared.transfers.contains(id) {
            self.shared.admin.audit(config, &audit, "queued");
            return queued(false);
        }
        // Refused: the input is moved to bad/ before its reason is written beside it.
        let mut reason = None;
        for _ in 0..100 {
            reason = newest_reason(&spool.join("bad"), &name, started);
            if reason.is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let reason = reason.unwrap_or_else(|| "refused (see this node's log)".into());
        self.shared.admin.audit(config, &audit, "refused");
        Response::json(
            422,
            json!({"id": format!("{id:016x}"), "queued": false, "error": reason.trim_end()})
                .to_string(),
        )
    }
}

/// The reason of the latest refusal of `name` in `bad/` (a name refused before is kept
/// under a new one, `move_unique`), if it was written since `since`.
fn newest_reason(
    bad: &std::path::Path,
    name: &str,
    since: std::time::SystemTime,
) -> Option<String> {
    let newest = std::fs::read_dir(bad)
        .ok()?
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.starts_with(name) && n.ends_with(".err")
        })
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()?;
    if newest.0 < since {
        return None;
    }
    std::fs::read_to_string(newest.1).ok()
}

/// The store's entries as `suppression list --json` prints them.
pub fn entries_json(entries: &[crate::suppression::store::Entry]) -> Value {
    let list: Vec<Value> = entries
        .iter()
        .map(|e| {
            let (date, kind, _) = crate::suppression::manage::describe(e);
            json!({"entry": e.entry, "tenant": e.tenant, "kind": kind, "date": date})
        })
        .collect();
    json!({ "entries": list })
}

impl Api {
    /// `suppression add|remove` with the engine running: the store line synced, then the
    /// live table.
    pub(super) fn suppression_change(
        &self,
        config: &Config,
        action: &str,
        body: &Value,
        peer: SocketAddr,
    ) -> Response {
        let Some(entry) = body.get("entry").and_then(Value::as_str) else {
            return Response::error(400, "the body needs {\"entry\": ...}");
        };
        let tenant = body.get("tenant").and_then(Value::as_str).unwrap_or("");
        let now = self.now();
        let client = peer.to_string();
        let target = if tenant.is_empty() {
            entry.to_string()
        } else {
            format!("{entry} (tenant {tenant})")
        };
        let name = format!("suppression-{action}");
        let audit = Audit {
            action: &name,
            target: &target,
            reason: body.get("reason").and_then(Value::as_str).unwrap_or(""),
            client: &client,
            at_unix_ms: now,
        };
        let s = &*self.shared.suppressions;
        let day = crate::suppression::day_of(now);
        let result = match action {
            "add" => self.shared.admin.change(
                config,
                &audit,
                || {
                    crate::suppression::manage::add(
                        config,
                        Some(s),
                        tenant,
                        entry,
                        crate::suppression::Source::Manual { day },
                        now,
                    )
                    .map(|e| json!({"action": "add", "entry": e, "tenant": tenant, "changed": true}))
                },
                |_| "added".into(),
            ),
            _ => self.shared.admin.change(
                config,
                &audit,
                || {
                    crate::suppression::manage::remove(config, s, tenant, entry, now)
                        .map(|changed| json!({"action": "remove", "entry": entry, "tenant": tenant, "changed": changed}))
                },
                |v| if v["changed"] == json!(true) { "removed".into() } else { "not in the store".into() },
            ),
        };
        match result {
            Ok(v) => Response::json(200, v.to_string()),
            Err(e) => Response::error(422, &e),
        }
    }
}

/// How long an injection waits for its batch to be queued.
const INJECT_WAIT_MAX: Duration = Duration::from_secs(600);
