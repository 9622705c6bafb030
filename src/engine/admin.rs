//! The admin API's shell: what the HTTP threads (`admin::server`) share with the shards,
//! the calls they put to every shard and the answers, the holds written durably, and the
//! audit trail `<log.dir>/admin.jsonl`. A shard looks at its calls at each scheduler tick
//! and never waits for the API; the API waits for the shards, with a deadline.

use super::*;
use crate::admin::holds::{Holds, Target};
use crate::shard::{DomainWhy, RecipientWhy};
use std::sync::mpsc;

/// What the API asks every shard.
#[derive(Debug, Clone)]
pub enum ShardCall {
    /// Deferred recipients of the target, due now.
    Retry(Target),
    WhyDomain(String),
    WhyRecipient(String),
    /// Every domain with mail queued here: (domain, scope, queued, deferred, in flight,
    /// oldest).
    Domains,
}

#[derive(Debug)]
pub enum ShardAnswer {
    Retried(u64),
    Domain(DomainWhy),
    Recipient(Option<RecipientWhy>),
    Domains(Vec<DomainRow>),
}

/// One domain's mail on one shard, for `queue summary`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRow {
    pub domain: String,
    pub scope: Option<String>,
    pub queued: u64,
    pub deferred: u64,
    pub in_flight: u64,
    /// Held by an operator's suspension.
    pub held: u64,
    pub oldest_unix_ms: u64,
}

struct Call {
    call: ShardCall,
    reply: mpsc::Sender<(usize, ShardAnswer)>,
}

/// How long the API waits for every shard's answer.
pub const SHARD_ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Calls waiting per shard at most; more are refused (503) rather than queued.
const CALLS_WAITING_MAX: usize = 64;

/// What the API's threads and the shards share.
pub struct AdminShared {
    holds: Mutex<Arc<Holds>>,
    holds_generation: AtomicU64,
    calls: Vec<Mutex<Vec<Call>>>,
    waiting: Vec<AtomicBool>,
    /// Changes to the holds and the audit file, one at a time.
    write: Mutex<()>,
}

impl AdminShared {
    pub fn new(shards: usize, holds: Holds) -> AdminShared {
        AdminShared {
            holds: Mutex::new(Arc::new(holds)),
            holds_generation: AtomicU64::new(1),
            calls: (0..shards).map(|_| Mutex::new(Vec::new())).collect(),
            waiting: (0..shards).map(|_| AtomicBool::new(false)).collect(),
            write: Mutex::new(()),
        }
    }

    pub fn holds(&self) -> Arc<Holds> {
        Arc::clone(&self.holds.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Puts `call` to every shard and waits for all the answers, in shard order.
    pub fn ask_all(&self, call: ShardCall) -> Result<Vec<ShardAnswer>, String> {
        let (tx, rx) = mpsc::channel();
        let n = self.calls.len();
        for (i, calls) in self.calls.iter().enumerate() {
            let mut q = calls.lock().unwrap_or_else(|e| e.into_inner());
            if q.len() >= CALLS_WAITING_MAX {
                return Err(format!("shard {i} has {CALLS_WAITING_MAX} calls waiting"));
            }
            q.push(Call {
                call: call.clone(),
                reply: tx.clone(),
            });
            self.waiting[i].store(true, Ordering::Release);
        }
        drop(tx);
        let deadline = std::time::Instant::now() + SHARD_ANSWER_WAIT;
        let mut answers: Vec<Option<ShardAnswer>> = (0..n).map(|_| None).collect();
        for _ in 0..n {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok((i, a)) => answers[i] = Some(a),
                Err(_) => {
                    let missing: Vec<String> = answers
                        .iter()
                        .enumerate()
                        .filter(|(_, a)| a.is_none())
                        .map(|(i, _)| i.to_string())
                        .collect();
                    return Err(format!(
                        "shard {} did not answer within {} s (starting, stopping or busy)",
                        missing.join(", "),
                        SHARD_ANSWER_WAIT.as_secs()
                    ));
                }
            }
        }
        Ok(answers.into_iter().flatten().collect())
    }

    /// Changes the holds with `f` (which says what became of them), durably: the new holds
    /// are on disk before any shard applies them, and the action is in the audit file.
    pub fn change_holds(
        &self,
        config: &Config,
        action: &Audit<'_>,
        f: impl FnOnce(&Holds) -> Result<Option<Holds>, String>,
    ) -> Result<bool, String> {
        let _one = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let current = self.holds();
        let Some(new) = f(&current)? else {
            action.write(config, "unchanged");
            return Ok(false);
        };
        new.save(&config.engine.data_dir).map_err(|e| {
            format!(
                "{}: {e}",
                crate::admin::holds::holds_path(&config.engine.data_dir).display()
            )
        })?;
        *self.holds.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        self.holds_generation.fetch_add(1, Ordering::SeqCst);
        action.write(config, "done");
        Ok(true)
    }

    /// The holds in force and their generation (it changes with them).
    pub fn holds_generation(&self) -> (u64, Arc<Holds>) {
        let holds = self.holds.lock().unwrap_or_else(|e| e.into_inner());
        (
            self.holds_generation.load(Ordering::SeqCst),
            Arc::clone(&holds),
        )
    }

    /// Puts `new` in force as `change_holds` does, if the holds are still at `generation`
    /// (the cluster's view of them, `cluster::Hooks::set_holds`): the new generation, read
    /// under the same lock (an operator's change right after it is a later one); `None` if
    /// the holds changed meanwhile.
    pub fn replace_holds(
        &self,
        config: &Config,
        action: &Audit<'_>,
        generation: u64,
        new: Holds,
    ) -> Result<Option<u64>, String> {
        let _one = self.write.lock().unwrap_or_else(|e| e.into_inner());
        if self.holds_generation.load(Ordering::SeqCst) != generation {
            return Ok(None);
        }
        new.save(&config.engine.data_dir).map_err(|e| {
            format!(
                "{}: {e}",
                crate::admin::holds::holds_path(&config.engine.data_dir).display()
            )
        })?;
        *self.holds.lock().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        let generation = self.holds_generation.fetch_add(1, Ordering::SeqCst) + 1;
        action.write(config, "done");
        Ok(Some(generation))
    }

    /// Bounces older than the queue's `max_age` can match nothing still queued: dropped.
    pub fn expire_bounces(&self, config: &Config, now_unix_ms: u64) {
        let before = now_unix_ms.saturating_sub(config.delivery.max_age.as_millis() as u64);
        let current = self.holds();
        if current.without_bounces_before(before).is_none() {
            return;
        }
        let audit = Audit {
            action: "expire-bounces",
            target: "",
            reason: "older than delivery.max_age",
            client: "engine",
            at_unix_ms: now_unix_ms,
        };
        if let Err(e) = self.change_holds(config, &audit, |h| Ok(h.without_bounces_before(before)))
        {
            tracing::warn!("admin: {e}");
        }
    }

    /// Runs `f` while no other change to the holds, the store's admin file or the audit
    /// file is under way, then writes `action` with the result `f` gives.
    pub fn change<T>(
        &self,
        config: &Config,
        action: &Audit<'_>,
        f: impl FnOnce() -> Result<T, String>,
        result: impl FnOnce(&T) -> String,
    ) -> Result<T, String> {
        let _one = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let r = f();
        match &r {
            Ok(v) => action.write(config, &result(v)),
            Err(e) => action.write(config, &format!("refused: {e}")),
        }
        r
    }

    pub fn audit(&self, config: &Config, action: &Audit<'_>, result: &str) {
        let _one = self.write.lock().unwrap_or_else(|e| e.into_inner());
        action.write(config, result);
    }
}

/// One operator action, for `<log.dir>/admin.jsonl`.
pub struct Audit<'a> {
    pub action: &'a str,
    pub target: &'a str,
    pub reason: &'a str,
    pub client: &'a str,
    pub at_unix_ms: u64,
}

pub const AUDIT_FILE: &str = "admin.jsonl";

impl Audit<'_> {
    /// Appends the line (time, action, target, reason, client, result) and syncs it; a
    /// failure is a warning: the action itself is done or refused already.
    fn write(&self, config: &Config, result: &str) {
        use std::io::Write;
        let mut line = Vec::with_capacity(256);
        line.extend_from_slice(b"{\"time\":\"");
        crate::delivery_log::rfc3339_utc(self.at_unix_ms, &mut line);
        line.extend_from_slice(b"\"");
        for (k, v) in [
            ("action", self.action),
            ("target", self.target),
            ("reason", self.reason),
            ("client", self.client),
            ("result", result),
        ] {
            line.extend_from_slice(format!(",\"{k}\":").as_bytes());
            crate::delivery_log::json_string(v, &mut line);
        }
        line.extend_from_slice(b"}\n");
        let path = config.log.dir.join(AUDIT_FILE);
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(&line).and_then(|()| f.sync_data()));
        if let Err(e) = written {
            tracing::warn!("{}: {e}", path.display());
        }
    }
}

/// Starts the admin API on `[admin] listen` (HTTPS with `cert` and `key`) and writes where
/// it listens to `<data_dir>/admin/listen`, for the `spate queue` commands (the port may be
/// 0 in the configuration).
pub(super) fn start_server(
    shared: &Arc<Shared>,
) -> Result<crate::admin::server::Server, EngineError> {
    let config = shared.config();
    let a = &config.admin;
    let tls = https_config(&a.cert, &a.key, "admin.cert")?;
    let https = tls.is_some();
    let api = Arc::new(super::api::Api::new(Arc::clone(shared)));
    let server = crate::admin::server::Server::start("spate-admin", a.listen, tls, api)
        .map_err(|e| EngineError::Unavailable(format!("admin.listen {}: {e}", a.listen)))?;
    let url = format!(
        "http{}://{}/",
        if https { "s" } else { "" },
        server.local_addr
    );
    if let Some(c) = &shared.cluster {
        // The other nodes reach this one here (`spate drain --to`); an unspecified address
        // is no address for them.
        let advertised = c.config.advertise.clone().or_else(|| {
            (!server.local_addr.ip().is_unspecified())
                .then(|| url.trim_end_matches('/').to_string())
        });
        if advertised.is_none() && c.config.secret.is_some() {
            tracing::warn!(
                "cluster: admin.listen {} is no address for the other nodes; set cluster.advertise to take transfers",
                a.listen
            );
        }
        c.set_advertised(advertised);
    }
    let dir = config.engine.data_dir.join("admin");
    let written = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("listen.tmp"), format!("{url}\n")))
        .and_then(|()| std::fs::rename(dir.join("listen.tmp"), dir.join(LISTEN_FILE)));
    if let Err(e) = written {
        return Err(EngineError::Storage(format!("{}: {e}", dir.display())));
    }
    tracing::info!("admin: API, /metrics and the status page on {url}");
    Ok(server)
}

/// The HTTPS settings of a listener of ours with `cert` and `key` (none without them); an
/// error names `field`.
pub(super) fn https_config(
    cert: &Option<std::path::PathBuf>,
    key: &Option<std::path::PathBuf>,
    field: &str,
) -> Result<Option<Arc<rustls::ServerConfig>>, EngineError> {
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(None);
    };
    let refused = |e: String| EngineError::Config(ConfigError(format!("{field}: {e}")));
    let certs = gateway::Certificates::from_files(cert, key).map_err(refused)?;
    gateway::server_tls(Arc::new(certs))
        .map(Some)
        .map_err(refused)
}

/// Where the running engine's admin API listens, under `<data_dir>/admin/`.
pub const LISTEN_FILE: &str = "listen";

impl Shard {
    /// At each scheduler tick: new holds applied, and the API's calls answered.
    pub(super) fn serve_admin(self: &Rc<Self>) {
        let admin = &self.shared.admin;
        let generation = admin.holds_generation.load(Ordering::Acquire);
        if generation != self.holds_generation.get() {
            self.holds_generation.set(generation);
            let holds = admin.holds();
            self.with_core(|core| core.set_holds(holds));
        }
        if !admin.waiting[self.id].swap(false, Ordering::AcqRel) {
            return;
        }
        let calls = std::mem::take(
            &mut *admin.calls[self.id]
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        for Call { call, reply } in calls {
            let answer = match call {
                ShardCall::Retry(target) => {
                    ShardAnswer::Retried(self.with_core(|core| core.retry_now(&target)))
                }
                ShardCall::WhyDomain(d) => ShardAnswer::Domain(self.core.borrow().why_domain(&d)),
                ShardCall::WhyRecipient(r) => {
                    ShardAnswer::Recipient(self.core.borrow().why_recipient(&r))
                }
                ShardCall::Domains => ShardAnswer::Domains(self.domain_rows()),
            };
            let _ = reply.send((self.id, answer));
        }
    }

    fn domain_rows(&self) -> Vec<DomainRow> {
        let core = self.core.borrow();
        let index = &core.queue.index;
        let held: std::collections::HashSet<u64> = core.home.held().iter().copied().collect();
        let mut rows: HashMap<u32, DomainRow> = HashMap::new();
        for (seq, e) in index.live_entries().take(crate::shard::WHY_SCAN_MAX) {
            let row = rows.entry(e.domain).or_insert_with(|| {
                let domain = index.domain_names[e.domain as usize].to_string();
                DomainRow {
                    scope: core.scope_of(&domain),
                    domain,
                    queued: 0,
                    deferred: 0,
                    in_flight: 0,
                    held: 0,
                    oldest_unix_ms: u64::MAX,
                }
            });
            row.queued += 1;
            row.held += u64::from(held.contains(&seq));
            match e.state {
                crate::queue::store::EntryState::Deferred => row.deferred += 1,
                crate::queue::store::EntryState::InFlight => row.in_flight += 1,
                _ => {}
            }
            if let Some(m) = index.messages.get(&e.message_seq) {
                row.oldest_unix_ms = row.oldest_unix_ms.min(m.created_unix_ms);
            }
        }
        rows.into_values().collect()
    }
}
