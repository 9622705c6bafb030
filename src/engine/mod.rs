//! The thread-per-core runtime: one glommio executor per shard, pinned to a CPU, each owning
//! its queue, its delivery-log writer and its intake loop. Shards talk only through two
//! bounded channel meshes:
//!
//! - data: `Append` chunks from the shard that claimed and parsed an input to the recipients'
//!   home shards. A full channel makes the claiming shard wait (backpressure, never a drop).
//! - control: `Appended` acknowledgements (sent only after the chunk is fdatasync'd) and
//!   `Released` notices. Control handlers never wait on anything, so acknowledgements always
//!   flow and the two meshes cannot deadlock each other.
//!
//! A chunk's `Reception` events are written to the delivery log just before its records are
//! appended. Each shard's group commit collects appended chunks for `queue.commit_interval_ms`
//! (or until `queue.commit_records_max` records wait), runs one `fdatasync` per dirty segment
//! on the executor's blocking thread, then acknowledges. An input file is released only when
//! every chunk of it is acknowledged.
//!
//! Inside a shard, tasks run in three glommio task queues (`TaskQueues`): delivery (the
//! scheduler, routing, rendering, connection workers, outcomes and the control receivers;
//! latency-sensitive), intake (spool scanning, parsing, appending, the data receivers) and
//! background (group commit, spare segments, reclaim, compaction). Their CPU shares and the
//! executor's polling and preemption come from `[engine]` and apply at start.
//!
//! The main thread only handles signals: SIGTERM/SIGINT start a drain (intake stops between
//! chunks, outstanding chunks are synced and acknowledged, an interrupted input stays claimed
//! and is replayed at the next start), SIGHUP reloads the configuration.
//!
//! Each shard's state and the glue between its stages are its core (`crate::shard::Core`);
//! the shard here is the shell around it (`Shard::with_core`, `Shard::apply`).
//!
//! Files: this one is the runtime (engine, shards, meshes, drain, signals, reload);
//! `intake` the intake shell; `commit` the queue's shell (group commit's timing and
//! fdatasync, maintenance); `deliver` the shells of scheduling (ticks, route lookups) and
//! sending (connection workers, outboxes).

pub mod admin;
mod api;
mod commit;
mod deliver;
mod gateway;
mod intake;
mod published;
pub mod systemd;
mod unsubscribe;

use commit::{group_commit, maintenance};
use intake::intake_loop;

use crate::clock::Clock;
use crate::config::{Config, ConfigError, Runtime};
use crate::delivery_log::{DeliveryLog, EventType, LogRecord};
use crate::dns::resolver::Resolver;
use crate::intake::{input_kind, Event, Parser, Rejection, Step};
use crate::preflight;
use crate::queue::store::{remove_segment_files, Chunk, MessageSpec, ShardQueue};
use crate::shard::{Core, Effect, Msg};
use crate::smtp::reply::printable;
use crate::spool::{read_claimed, Claimed, IncomingWatch, ReadError, Spool, READ_ATTEMPTS_MAX};
use futures_lite::future;
use glommio::channels::channel_mesh::{Full, MeshBuilder, Receivers, Senders};
use glommio::channels::local_channel::{self, LocalReceiver, LocalSender};
use glommio::timer::sleep;
use glommio::{Latency, LocalExecutorBuilder, Placement, Shares, TaskQueueHandle};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::future::Future;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Chunks in flight per data channel: with 1 MiB chunks, bounds each channel's memory.
pub const DATA_CHANNEL_CHUNKS: usize = 16;
/// Control messages in flight per channel (acknowledgements are tiny).
pub const CONTROL_CHANNEL_MESSAGES: usize = 1024;
/// Chunks of one input not yet acknowledged: bounds unsynced intake per claiming shard.
pub const CHUNKS_IN_FLIGHT_MAX: u64 = 32;
/// How often an idle intake loop looks at its inotify hint.
pub const INTAKE_TICK: Duration = Duration::from_millis(10);
/// Intake parsing a batch hands the executor back at least this often (`feed_chunks`),
/// looking at the time every `PARSE_PAUSE_LINES` recipients.
pub const INTAKE_SLICE: Duration = Duration::from_millis(2);
pub const PARSE_PAUSE_LINES: u32 = 256;
/// How often waits re-check the stop and fatal flags.
pub const FLAG_POLL: Duration = Duration::from_millis(50);
/// A claimed input that could not be read is tried again after this long.
pub const READ_RETRY_DELAY: Duration = Duration::from_secs(30);
/// How often a shard checks that a spare segment is ready.
pub const SPARE_CHECK_INTERVAL: Duration = Duration::from_millis(20);
/// After a failed spare preallocation (disk full), wait this long before trying again.
pub const SPARE_RETRY_DELAY: Duration = Duration::from_secs(5);
/// How often a shard reclaims and compacts its queue.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(1);
/// While delivery work is runnable, the other task queues yield at least this often; and the
/// delivery queue's socket I/O goes through glommio's latency ring, where a completion (an
/// SMTP reply) preempts them at their next yield. Timers and cross-shard messages are noticed
/// at the next preemption: within this bound while delivery has work, within
/// `[engine] preempt_timer` otherwise. It matches the scheduler's tick.
pub const DELIVERY_LATENCY: Duration = Duration::from_millis(10);
pub const LOCK_FILE: &str = "spate.lock";
pub const META_FILE: &str = "spate.meta";

/// Why the engine could not run or stopped; each maps to an INTERFACE.md exit code.
#[derive(Debug)]
pub enum EngineError {
    Config(ConfigError),
    /// io_uring, memlock, or another engine holding the data directory.
    Unavailable(String),
    /// A storage failure (fsync, ENOSPC, an unreadable queue): intake stopped, nothing lost.
    Storage(String),
    /// A bug (a shard panicked): exit 70, EX_SOFTWARE.
    Internal(String),
}

impl EngineError {
    pub fn exit_code(&self) -> i32 {
        match self {
            EngineError::Config(_) => 78,
            EngineError::Unavailable(_) => 69,
            EngineError::Storage(_) => 74,
            EngineError::Internal(_) => 70,
        }
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EngineError::Config(e) => write!(f, "{e}"),
            EngineError::Unavailable(m) => write!(f, "{m}"),
            EngineError::Storage(m) => write!(f, "storage failure, intake stopped: {m}"),
            EngineError::Internal(m) => write!(f, "internal error: {m}"),
        }
    }
}

impl From<ConfigError> for EngineError {
    fn from(e: ConfigError) -> Self {
        EngineError::Config(e)
    }
}

pub use crate::shard::{Counters, ShardStatus};
pub use api::entries_json;
pub use deliver::DRAIN_DEADLINE;

/// How often each shard publishes its `ShardStatus`.
pub const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// State shared by the main thread and every shard: flags and counters only, never touched
/// per recipient.
pub struct Shared {
    config: Mutex<Arc<Config>>,
    generation: AtomicU64,
    pub stop: AtomicBool,
    fatal: Mutex<Option<String>>,
    has_fatal: AtomicBool,
    /// The fatal error is a bug (a panic), not a storage failure.
    internal: AtomicBool,
    ready: AtomicUsize,
    intake_running: AtomicUsize,
    exited: AtomicUsize,
    /// Connection workers running on any shard; the drain waits for them.
    delivery_workers: AtomicUsize,
    pub counters: Arc<Counters>,
    /// The one clock every shard reads.
    pub clock: Arc<dyn Clock>,
    /// Each shard's last published status.
    status: Mutex<Vec<Option<ShardStatus>>>,
    /// Outbound connections each shard may hold (`preflight::connections_per_shard`).
    pub connections_per_shard: u32,
    /// What the submission gateway's sessions on every shard share (users' counts, AUTH
    /// lockout, sessions per listener).
    pub gateway: Arc<gateway::GatewayShared>,
    /// The suppression table every shard checks and teaches.
    pub suppressions: Arc<crate::suppression::Suppressions>,
    /// Operators' holds and the admin API's calls to the shards.
    pub admin: admin::AdminShared,
    /// Providers' paces across egress sources and shards (`provider_max_message_rate`).
    pub paces: Arc<crate::delivery::pace::SharedPaces>,
    /// Reply rules' counts and firings (`delivery::rules`).
    pub rules: Arc<crate::delivery::rules::RuleBook>,
    /// Warm-up caps' counts (`delivery::warmup`), saved by shard 0's maintenance.
    pub warmup: Arc<crate::delivery::warmup::WarmBook>,
    /// `[cluster]`: the leases and cuts this node shares with the others through Redis.
    pub cluster: Option<Arc<crate::cluster::Shared>>,
    /// The transfers from other nodes this node has queued (`spate drain`).
    pub transfers: Arc<crate::cluster::received::Received>,
}

/// This node's sending addresses (`[sources]`), as the cluster claims them.
fn source_addresses(config: &Config) -> Vec<String> {
    config
        .egress
        .sources
        .iter()
        .map(|s| s.address.to_string())
        .collect()
}

/// The suppression files and the learnt store, read before any shard starts. A file that
/// cannot be read is a configuration error; a store that cannot be, a storage one.
fn open_suppressions(
    config: &Config,
) -> Result<Arc<crate::suppression::Suppressions>, EngineError> {
    use crate::suppression::{store, Suppressions};
    let stored = store::read_dir(&config.engine.data_dir).map_err(EngineError::Storage)?;
    let today = crate::suppression::day_of(crate::clock::system().unix_ms());
    let (s, notes) = Suppressions::open(config, &stored, today)
        .map_err(|e| EngineError::Config(ConfigError(e)))?;
    for note in notes {
        tracing::info!("suppression: {note}");
    }
    if !s.is_empty() || !config.suppression.files.is_empty() {
        tracing::info!(
            "suppression: {} entries ({} learnt), {:.1} MiB",
            s.len(),
            stored.len(),
            s.table_bytes() as f64 / (1 << 20) as f64
        );
    }
    Ok(s)
}

impl Shared {
    /// Every shard's last published status (a shard that has not published yet is left out).
    pub fn status(&self) -> Vec<ShardStatus> {
        let all = self.status.lock().unwrap_or_else(|e| e.into_inner());
        all.iter().flatten().cloned().collect()
    }

    fn publish_status(&self, status: ShardStatus) {
        let mut all = self.status.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(slot) = all.get_mut(status.shard) {
            *slot = Some(status);
        }
    }

    fn config(&self) -> Arc<Config> {
        Arc::clone(&self.config.lock().expect("config lock"))
    }

    /// Records the first fatal error and starts a stop.
    fn fail(&self, message: String) {
        let mut f = self.fatal.lock().expect("fatal lock");
        if f.is_none() {
            tracing::error!("{message}");
            *f = Some(message);
        }
        self.has_fatal.store(true, Ordering::SeqCst);
        self.stop.store(true, Ordering::SeqCst);
    }

    fn failed(&self) -> bool {
        self.has_fatal.load(Ordering::Relaxed)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

enum DataMsg {
    Append {
        claimer: usize,
        chunk: Chunk,
    },
    /// Between the delivery stages (`Msg::is_data`).
    Delivery(Msg),
    /// Several of the above, in order: an outbox's batch (`deliver::BATCH_MAX`).
    Batch(Vec<DataMsg>),
}

/// After the drain, how long a shard waits for every shard's Drained marker (one that
/// failed may never send it); normally they all arrive within milliseconds.
const DRAINED_WAIT_MAX: Duration = Duration::from_secs(1);

enum CtlMsg {
    Appended {
        batch_id: u64,
        recipients: u32,
    },
    Released {
        batch_id: u64,
    },
    /// Between the delivery stages (not `Msg::is_data`).
    Delivery(Msg),
    /// Several of these, in order: an outbox's batch (`deliver::BATCH_MAX`).
    Batch(Vec<CtlMsg>),
    /// Sent by every shard to every shard (itself included) once no connection worker runs
    /// anywhere. It travels behind the outcomes queued before it (the outbox keeps order),
    /// so when a shard has one from every shard, every outcome of the drain is in.
    Drained,
}

/// A running engine; `wait` blocks until it stops.
pub struct Engine {
    shared: Arc<Shared>,
    /// The cluster's threads (`[cluster]`), stopped once the shards have: the leases are
    /// given back then.
    cluster_node: Option<crate::cluster::node::Node>,
    /// The admin API and the one-click endpoint, stopped once the shards have.
    admin: Option<crate::admin::server::Server>,
    one_click: Option<crate::admin::server::Server>,
    handles: Vec<glommio::ExecutorJoinHandle<()>>,
    _lock: File,
    config_path: Option<PathBuf>,
}

/// The engine's side of the cluster's threads (`cluster::Hooks`).
struct ClusterHooks(Arc<Shared>);

impl crate::cluster::Hooks for ClusterHooks {
    fn config(&self) -> Arc<Config> {
        self.0.config()
    }

    fn holds(&self) -> (u64, Arc<crate::admin::holds::Holds>) {
        self.0.admin.holds_generation()
    }

    fn set_holds(&self, generation: u64, new: crate::admin::holds::Holds) -> Option<u64> {
        let config = self.0.config();
        let audit = admin::Audit {
            action: "cluster-sync",
            target: "",
            reason: "the cluster's suspensions and bounces, as another node changed them",
            client: "cluster",
            at_unix_ms: self.0.clock.unix_ms(),
        };
        match self.0.admin.replace_holds(&config, &audit, generation, new) {
            Ok(generation) => generation,
            Err(e) => {
                tracing::warn!("cluster: the shared holds could not be put in force: {e}");
                None
            }
        }
    }

    fn rules(&self) -> &crate::delivery::rules::RuleBook {
        &self.0.rules
    }

    fn suppressions(&self) -> &crate::suppression::Suppressions {
        &self.0.suppressions
    }

    fn daily_counts(&self, day: u64) -> Vec<(String, u64)> {
        self.0
            .config()
            .users
            .iter()
            .filter(|u| u.daily_limit.is_some())
            .map(|u| {
                (
                    u.name.clone(),
                    self.0.gateway.user(&u.name).accepted_on(day),
                )
            })
            .collect()
    }

    fn set_daily_others(&self, user: &str, day: u64, n: u64) {
        if self.0.config().users.iter().any(|u| u.name == user) {
            self.0.gateway.user(user).set_others(day, n);
        }
    }
}

/// Validates the environment and starts the shards.
pub fn start(config: Config, config_path: Option<PathBuf>) -> Result<Engine, EngineError> {
    let shards = config.engine.shards;
    let runtime = config.engine.runtime;
    preflight::check_with_io_memory(shards, runtime.io_memory_bytes)
        .map_err(|e| EngineError::Unavailable(e.0))?;
    let data_dir = &config.engine.data_dir;
    std::fs::create_dir_all(data_dir)
        .map_err(|e| EngineError::Storage(format!("{}: cannot create: {e}", data_dir.display())))?;
    let lock = lock_data_dir(data_dir)?;
    crate::cluster::drain::check_unfinished(data_dir)
        .map_err(|m| EngineError::Config(ConfigError(m)))?;
    check_shard_count(&config)?;
    for dir in [&config.spool.dir, &config.log.dir] {
        std::fs::create_dir_all(dir)
            .map_err(|e| EngineError::Storage(format!("{}: cannot create: {e}", dir.display())))?;
    }
    match crate::delivery_log::repair_torn_tail(&config.log.dir) {
        Ok(0) => {}
        Ok(cut) => tracing::warn!(
            "{}: cut {cut} bytes of a record torn by a crash",
            config
                .log
                .dir
                .join(crate::delivery_log::LOG_FILE_NAME)
                .display()
        ),
        Err(e) => {
            return Err(EngineError::Storage(format!(
                "{}: {e}",
                config.log.dir.display()
            )))
        }
    }
    let (allowed, open_files) = preflight::connections_per_shard(shards);
    let connections_per_shard = match config.engine.connections_max {
        Some(total) => {
            let wanted = total / shards as u32;
            if wanted > allowed {
                tracing::warn!(
                    "engine.connections_max = {total}: the open-files limit ({open_files}) allows {allowed} per shard; holding at that"
                );
            }
            wanted.min(allowed).max(1)
        }
        None => allowed,
    };
    if connections_per_shard < preflight::CONNECTIONS_PER_SHARD_LOW
        && config.engine.connections_max.is_none()
    {
        tracing::warn!(
            "the open-files limit ({open_files}) leaves {connections_per_shard} connections per shard; raise it (LimitNOFILE= in the systemd unit, or ulimit -n)"
        );
    }
    let gateway = Arc::new(gateway::GatewayShared::open(&config)?);
    let suppressions = open_suppressions(&config)?;
    let holds = crate::admin::holds::Holds::load(data_dir).map_err(EngineError::Storage)?;
    if !holds.is_empty() {
        tracing::info!(
            "admin: {} suspensions and {} bounces in force",
            holds.suspended.len(),
            holds.bounces.len()
        );
    }
    let warmup = crate::delivery::warmup::WarmBook::load(data_dir).map_err(EngineError::Storage)?;
    warmup.configure(
        &config.egress,
        &config.providers,
        crate::gateway::limits::utc_day(crate::clock::system().unix_ms()),
    );
    // A node whose name another live process holds is refused before anything starts.
    let cluster = match &config.cluster {
        Some(c) => {
            let cluster = Arc::new(crate::cluster::Shared::new(c.clone(), shards));
            cluster.set_sources(source_addresses(&config));
            crate::cluster::node::register(&cluster)
                .map_err(|taken| EngineError::Config(ConfigError(taken.0)))?;
            Some(cluster)
        }
        None => None,
    };
    let transfers =
        crate::cluster::received::Received::open(data_dir, crate::clock::system().unix_ms())
            .map_err(|e| {
                EngineError::Storage(format!(
                    "{}: {e}",
                    data_dir
                        .join(crate::cluster::received::RECEIVED_FILE)
                        .display()
                ))
            })?;
    let shared = Arc::new(Shared {
        cluster,
        transfers: Arc::new(transfers),
        admin: admin::AdminShared::new(shards, holds),
        paces: Arc::default(),
        rules: Arc::default(),
        warmup: Arc::new(warmup),
        config: Mutex::new(Arc::new(config)),
        generation: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        fatal: Mutex::new(None),
        has_fatal: AtomicBool::new(false),
        internal: AtomicBool::new(false),
        ready: AtomicUsize::new(0),
        intake_running: AtomicUsize::new(shards),
        exited: AtomicUsize::new(0),
        delivery_workers: AtomicUsize::new(0),
        counters: Arc::new(Counters::default()),
        clock: crate::clock::system(),
        status: Mutex::new(vec![None; shards]),
        connections_per_shard,
        gateway,
        suppressions,
    });
    // Before any shard starts: a port that cannot be had refuses the start cleanly.
    let admin_server = admin::start_server(&shared)?;
    let one_click = unsubscribe::start_server(&shared)?;
    let cluster_node = match &shared.cluster {
        Some(c) => {
            shared.suppressions.share_from_now();
            let hooks = Arc::new(ClusterHooks(Arc::clone(&shared)));
            let node = crate::cluster::node::start(Arc::clone(c), hooks).map_err(|e| {
                EngineError::Unavailable(format!("cluster: cannot start its threads: {e}"))
            })?;
            Some(node)
        }
        None => None,
    };
    let data_mesh = MeshBuilder::<DataMsg, Full>::full(shards, DATA_CHANNEL_CHUNKS);
    let ctl_mesh = MeshBuilder::<CtlMsg, Full>::full(shards, CONTROL_CHANNEL_MESSAGES);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut handles = Vec::with_capacity(shards);
    for id in 0..shards {
        let (shared, data_mesh, ctl_mesh) =
            (Arc::clone(&shared), data_mesh.clone(), ctl_mesh.clone());
        let handle = LocalExecutorBuilder::new(Placement::Fixed(id % cpus))
            .name(&format!("spate-shard-{id}"))
            .io_memory(runtime.io_memory_bytes)
            .preempt_timer(runtime.preempt_timer)
            // Zero is glommio's default (park at once when idle).
            .spin_before_park(runtime.spin_before_park)
            .spawn(move || async move {
                let _guard = ExitGuard(Arc::clone(&shared), id);
                shard_main(shared, runtime, data_mesh, ctl_mesh).await;
            })
            .map_err(|e| EngineError::Unavailable(format!("runtime unavailable: {e}")))?;
        handles.push(handle);
    }
    Ok(Engine {
        shared,
        cluster_node,
        admin: Some(admin_server),
        one_click,
        handles,
        _lock: lock,
        config_path,
    })
}

impl Engine {
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// True once every shard has recovered its queue and intake is live.
    pub fn is_ready(&self) -> bool {
        self.shared.ready.load(Ordering::SeqCst) == self.handles.len()
    }

    /// Asks the engine to drain and stop.
    pub fn request_stop(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
    }

    pub fn has_exited(&self) -> bool {
        self.shared.exited.load(Ordering::SeqCst) == self.handles.len()
    }

    /// Loads the configuration file again; an invalid one is refused and the old stays.
    /// The listeners' certificates are read again either way (a renewal needs no change to
    /// the configuration).
    pub fn reload(&self) {
        self.shared.gateway.reload_certificates();
        let Some(path) = &self.config_path else {
            tracing::warn!("reload ignored: the embedded configuration has no file");
            return;
        };
        match Config::load(path) {
            Ok(new) => {
                // The suppression files are read again first: one that cannot be read
                // refuses the whole reload.
                match self.shared.suppressions.reload(&new) {
                    Ok(notes) => {
                        for note in notes {
                            tracing::info!("suppression: {note}");
                        }
                    }
                    Err(e) => {
                        tracing::warn!("reload refused, previous configuration stays: {e}");
                        return;
                    }
                }
                let old = self.shared.config();
                let later = old.restart_only_changes(&new);
                self.shared.warmup.configure(
                    &new.egress,
                    &new.providers,
                    crate::gateway::limits::utc_day(self.shared.clock.unix_ms()),
                );
                if !later.is_empty() {
                    tracing::warn!("reload: {} take effect at the next start", later.join(", "));
                }
                if let Some(c) = &self.shared.cluster {
                    // New sending addresses are claimed at the next renewal (a clash found
                    // then is logged: the node is running).
                    c.set_sources(source_addresses(&new));
                }
                *self.shared.config.lock().expect("config lock") = Arc::new(new);
                self.shared.generation.fetch_add(1, Ordering::SeqCst);
                tracing::info!("configuration reloaded from {}", path.display());
            }
            Err(e) => tracing::warn!("reload refused, previous configuration stays: {e}"),
        }
    }

    /// Blocks until every shard has stopped; the error is the first fatal one.
    pub fn wait(mut self) -> Result<(), EngineError> {
        let mut crashed = None;
        for (id, h) in std::mem::take(&mut self.handles).into_iter().enumerate() {
            if h.join().is_err() {
                crashed = Some(id);
            }
        }
        for mut server in [self.admin.take(), self.one_click.take()]
            .into_iter()
            .flatten()
        {
            server.stop();
        }
        // After the servers: an unsubscribe taken until then is shared before the node
        // leaves the cluster.
        if let Some(node) = self.cluster_node.take() {
            node.stop();
        }
        // The last outcomes' warm-up counts (shard 0's maintenance saved the rest).
        if let Some(bytes) = self.shared.warmup.take_dirty() {
            let dir = self.shared.config().engine.data_dir.clone();
            if let Err(e) = crate::delivery::warmup::save(&dir, &bytes) {
                tracing::warn!("warm-up counts: cannot save at exit: {e}");
            }
        }
        let fatal = self.shared.fatal.lock().expect("fatal lock").take();
        if self.shared.internal.load(Ordering::SeqCst) || crashed.is_some() {
            return Err(EngineError::Internal(fatal.unwrap_or_else(|| {
                format!("shard {crashed:?} crashed; the queue recovers at the next start")
            })));
        }
        match fatal {
            Some(message) => Err(EngineError::Storage(message)),
            None => Ok(()),
        }
    }
}

/// Runs the engine in the foreground until SIGTERM/SIGINT; SIGHUP reloads.
pub fn run_until_signalled(
    config: Config,
    config_path: Option<PathBuf>,
) -> Result<(), EngineError> {
    let term = Arc::new(AtomicBool::new(false));
    let hup = Arc::new(AtomicBool::new(false));
    for (sig, flag) in [
        (signal_hook::consts::SIGTERM, &term),
        (signal_hook::consts::SIGINT, &term),
        (signal_hook::consts::SIGHUP, &hup),
    ] {
        signal_hook::flag::register(sig, Arc::clone(flag))
            .map_err(|e| EngineError::Unavailable(format!("cannot install signal handler: {e}")))?;
    }
    let engine = start(config, config_path)?;
    let mut announced = false;
    while !engine.has_exited() {
        std::thread::sleep(Duration::from_millis(20));
        if !announced && engine.is_ready() {
            announced = true;
            let c = &engine.shared.counters;
            let queued = c.live_recipients.load(Ordering::SeqCst);
            tracing::info!(
                "running: {} shards, {queued} recipients queued from before",
                engine.handles.len(),
            );
            // Recovery is done and intake is live: systemd may start what depends on us.
            systemd::notify(&format!(
                "READY=1\nSTATUS=running: {queued} recipients queued from before"
            ));
        }
        if term.swap(false, Ordering::SeqCst) {
            tracing::info!("stopping: intake stops, queue syncs");
            systemd::notify("STOPPING=1\nSTATUS=draining");
            engine.request_stop();
        }
        if hup.swap(false, Ordering::SeqCst) {
            engine.reload();
        }
    }
    engine.wait()
}

struct ExitGuard(Arc<Shared>, usize);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // Every wait in the other shards also watches this flag, so they stop too.
            self.0.internal.store(true, Ordering::SeqCst);
            self.0.fail(format!(
                "shard {} crashed (a bug); the queue is intact and recovers at the next start",
                self.1
            ));
        }
        self.0.exited.fetch_add(1, Ordering::SeqCst);
    }
}

/// Holds an exclusive lock on the data directory for the engine's lifetime: two engines on
/// one queue would corrupt it.
pub fn lock_data_dir(data_dir: &Path) -> Result<File, EngineError> {
    let path = data_dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| EngineError::Storage(format!("{}: {e}", path.display())))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(EngineError::Unavailable(format!(
            "{}: another spate engine is running on this data_dir",
            data_dir.display()
        )));
    }
    Ok(file)
}

/// True if an engine holds the lock on `data_dir`.
pub fn engine_running(data_dir: &Path) -> bool {
    let Ok(file) = File::open(data_dir.join(LOCK_FILE)) else {
        return false;
    };
    // SAFETY: flock on a descriptor we own; a shared lock is released when `file` drops.
    unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) != 0 }
}

/// Recipients' home shards depend on the shard count, so a queue written with one count is
/// refused under another until it drains (an empty queue just adopts the new count).
fn check_shard_count(config: &Config) -> Result<(), EngineError> {
    let (data_dir, shards) = (&config.engine.data_dir, config.engine.shards);
    let meta = data_dir.join(META_FILE);
    let recorded = std::fs::read_to_string(&meta)
        .ok()
        .and_then(|s| s.trim().strip_prefix("shards=")?.parse::<usize>().ok());
    if let Some(old) = recorded {
        if old != shards {
            let summary = crate::summary::read_queue(data_dir)
                .map_err(|e| EngineError::Storage(e.to_string()))?;
            let claimed = Spool::open(&config.spool.dir)
                .and_then(|s| s.leftover_claims())
                .map_or(0, |c| c.len());
            if summary.live_recipients() > 0 || claimed > 0 {
                return Err(EngineError::Config(ConfigError(format!(
                    "engine.shards: the queue in {} was written by {old} shards and still holds {} recipients; set shards = {old} until it drains",
                    data_dir.display(),
                    summary.live_recipients()
                ))));
            }
        }
    }
    std::fs::write(&meta, format!("shards={shards}\n"))
        .map_err(|e| EngineError::Storage(format!("{}: {e}", meta.display())))
}

/// One shard's shell: its core (`crate::shard::Core`: queue, home, owner, renderings,
/// delivery log and the glue between them) and the runtime around it. Lives on its executor
/// only; `RefCell`s are never held across `.await`.
struct Shard {
    id: usize,
    shards: usize,
    shared: Arc<Shared>,
    config: RefCell<Arc<Config>>,
    generation: Cell<u64>,
    /// The holds generation this shard applied last (`admin::AdminShared`).
    holds_generation: Cell<u64>,
    core: RefCell<Core<DeliveryLog>>,
    spool: Spool,
    data_tx: Senders<DataMsg>,
    ctl_tx: Senders<CtlMsg>,
    sync_kick: LocalSender<()>,
    /// A client waits for the next group commit (the gateway's 250): it starts at once
    /// instead of after `commit_interval`, batching whatever came during the last fsync.
    commit_urgent: LocalSender<()>,
    commit_urgent_rx: RefCell<Option<LocalReceiver<()>>>,
    /// Wakes the delivery scheduler before its next tick: recipients became ready (a group
    /// commit, a resolved domain), so the first deliveries do not wait for a tick.
    schedule_kick: LocalSender<()>,
    schedule_rx: RefCell<Option<LocalReceiver<()>>>,
    /// Set after the drain: the group commit makes its last pass and ends.
    final_commit: Cell<bool>,
    /// Acknowledgement routes of the inputs this shard is claiming.
    acks: RefCell<HashMap<u64, LocalSender<u32>>>,
    last_batch_id: Cell<u64>,
    /// The gateway's per-user daily counts not yet on disk (synced with the group commit).
    gateway_counts: RefCell<gateway::DailyCounts>,
    /// Password checks on this shard's blocking thread at once (`gateway`): one.
    password_checks: glommio::sync::Semaphore,
    /// Claimed inputs that could not be read, with when that happened.
    retry: RefCell<Vec<(Instant, Claimed)>>,
    /// Per scope, the connection workers waiting for a message, to wake when one arrives.
    idle_workers: RefCell<HashMap<String, Vec<Rc<LocalSender<()>>>>>,
    /// Per destination shard (this one included), the messages the delivery stages send
    /// it, in order; one task per destination and mesh sends them (`deliver::ctl_sender`,
    /// `deliver::data_sender`).
    outboxes: Vec<deliver::Outbox>,
    /// Sends to other shards from the outboxes, and the messages they carried.
    peer_traffic: Cell<(u64, u64)>,
    /// Drained markers received (see `CtlMsg::Drained`), and the wake-up for each.
    drained_from: Cell<usize>,
    drained_kick: LocalSender<()>,
    drained_rx: RefCell<Option<LocalReceiver<()>>>,
    resolver: Resolver,
    tls: Rc<crate::delivery::tls::TlsClients>,
    /// Connections by remote address across scopes: the cap per address, and connections
    /// parked for any scope to reuse (`delivery::endpoints`).
    endpoints: RefCell<deliver::Endpoints>,
    /// Where this shard's tasks run; spawn sites pick one explicitly, because a plain
    /// `spawn_local` inherits the queue of whatever task happens to spawn.
    queues: TaskQueues,
}

/// One shard's glommio task queues. Shares divide the shard's CPU only while more than one
/// queue has runnable work, and a queue that wakes after sleeping is served next, so a queue
/// that mostly waits (background) is not slowed by its small share.
#[derive(Clone, Copy)]
struct TaskQueues {
    /// Scheduler, route lookups, rendering, connection workers, outcomes, and the control
    /// receivers (see `shard_main`). Latency-sensitive.
    delivery: TaskQueueHandle,
    /// Spool scanning, parsing, appending chunks, and the data receivers.
    intake: TaskQueueHandle,
    /// Group commit, spare segment preallocation, reclaim and compaction.
    background: TaskQueueHandle,
}

impl TaskQueues {
    /// Creates the queues on the current executor.
    fn create(runtime: &Runtime) -> TaskQueues {
        let ex = glommio::executor();
        TaskQueues {
            delivery: ex.create_task_queue(
                Shares::Static(runtime.delivery_shares),
                Latency::Matters(DELIVERY_LATENCY),
                "delivery",
            ),
            intake: ex.create_task_queue(
                Shares::Static(runtime.intake_shares),
                Latency::NotImportant,
                "intake",
            ),
            background: ex.create_task_queue(
                Shares::Static(runtime.background_shares),
                Latency::NotImportant,
                "background",
            ),
        }
    }
}

impl Shard {
    /// Spawns `task` into one of this shard's task queues.
    fn spawn_into<T: 'static>(
        &self,
        queue: TaskQueueHandle,
        task: impl Future<Output = T> + 'static,
    ) -> glommio::Task<T> {
        // The queues are created with the shard and never removed: a failure is a bug.
        glommio::spawn_local_into(task, queue).expect("a shard's task queues outlive it")
    }
}

async fn shard_main(
    shared: Arc<Shared>,
    runtime: Runtime,
    data_mesh: MeshBuilder<DataMsg, Full>,
    ctl_mesh: MeshBuilder<CtlMsg, Full>,
) {
    let Ok((data_tx, data_rx)) = data_mesh.join().await else {
        shared.fail("runtime: data channel mesh failed to form".into());
        return;
    };
    let Ok((ctl_tx, ctl_rx)) = ctl_mesh.join().await else {
        shared.fail("runtime: control channel mesh failed to form".into());
        return;
    };
    let id = data_tx.peer_id();
    let shards = data_tx.nr_consumers();
    let config = shared.config();
    let queues = TaskQueues::create(&runtime);
    let opened = open_shard(id, shards, &shared, &config, data_tx, ctl_tx, queues);
    let (shard, kick_rx, outbox_rx) = match opened {
        Ok((s, kick_rx, outbox_rx)) => (Rc::new(s), kick_rx, outbox_rx),
        Err(message) => {
            shared.fail(message);
            shared.intake_running.fetch_sub(1, Ordering::SeqCst);
            shared.ready.fetch_add(1, Ordering::SeqCst);
            return;
        }
    };
    let data_rx = Rc::new(data_rx);
    let ctl_rx = Rc::new(ctl_rx);
    for peer in (0..shards).filter(|&p| p != id) {
        // Chunks (and the owner's rendered messages) arrive on the data mesh; appending them
        // is intake work, and the handler only queues what it gets.
        let receiver = data_receiver(Rc::clone(&shard), Rc::clone(&data_rx), peer);
        shard.spawn_into(queues.intake, receiver).detach();
        // Control messages go to the delivery queue, not a queue of their own: their handlers
        // never wait and take microseconds, and they carry what keeps connections busy
        // (demand, credit, outcomes) and what lets intake go on (acknowledgements). In the
        // queue with the most shares and the latency requirement, they run as soon as the
        // shard next preempts (within DELIVERY_LATENCY while delivery has work), ahead of a
        // busy intake; a queue of their own would add a scheduling step and nothing else.
        let receiver = control_receiver(Rc::clone(&shard), Rc::clone(&ctl_rx), peer);
        shard.spawn_into(queues.delivery, receiver).detach();
    }
    for (to, (ctl_kick, data_kick)) in outbox_rx.into_iter().enumerate() {
        let ctl = deliver::ctl_sender(Rc::clone(&shard), to, ctl_kick);
        shard.spawn_into(shard.queues.delivery, ctl).detach();
        let data = deliver::data_sender(Rc::clone(&shard), to, data_kick);
        shard.spawn_into(shard.queues.delivery, data).detach();
    }
    let syncer = shard.spawn_into(queues.background, group_commit(Rc::clone(&shard), kick_rx));
    shard
        .spawn_into(queues.background, maintenance(Rc::clone(&shard)))
        .detach();
    shard
        .spawn_into(queues.delivery, deliver::scheduler(Rc::clone(&shard)))
        .detach();
    shard
        .spawn_into(queues.delivery, deliver::park_sweeper(Rc::clone(&shard)))
        .detach();
    shared.ready.fetch_add(1, Ordering::SeqCst);
    while shared.ready.load(Ordering::SeqCst) < shards && !shared.failed() {
        sleep(Duration::from_millis(2)).await;
    }
    // The submission gateway: every shard serves every listener (SO_REUSEPORT).
    for (i, l) in config.listeners.iter().enumerate() {
        let certificates = shared.gateway.certificates(i);
        match gateway::Gateway::new(i, l, &config.smtp.helo_name, certificates) {
            Ok(g) => {
                let serve = gateway::serve(Rc::clone(&shard), Rc::new(g));
                shard.spawn_into(queues.intake, serve).detach();
            }
            Err(why) => shared.fail(why),
        }
    }

    if id == 0 && !config.dkim.is_empty() {
        let check = published::check_dkim_records(Rc::clone(&shard), Arc::clone(&config));
        shard.spawn_into(queues.background, check).detach();
    }
    if id == 0 && !config.egress.is_empty() {
        let check = published::check_sources(Rc::clone(&shard), Arc::clone(&config));
        shard.spawn_into(queues.background, check).detach();
    }

    // This task (glommio's default queue) only waits from here on; intake runs in its queue.
    let intake = {
        let shard = Rc::clone(&shard);
        async move { intake_loop(&shard).await }
    };
    shard.spawn_into(queues.intake, intake).await;
    shared.intake_running.fetch_sub(1, Ordering::SeqCst);

    // Every claiming shard has its acknowledgements once intake_running reaches zero, so no
    // chunk can arrive any more; one last commit covers whatever is left.
    while shared.intake_running.load(Ordering::SeqCst) > 0 && !shared.failed() {
        sleep(Duration::from_millis(5)).await;
    }
    // Let transactions in flight finish (up to a deadline) so their outcomes are recorded.
    shard.core.borrow_mut().close();
    shard.wake_all_workers();
    let clock = Arc::clone(&shared.clock);
    let drain_started = clock.now();
    while shared.delivery_workers.load(Ordering::SeqCst) > 0
        && clock.now().duration_since(drain_started) < deliver::DRAIN_DEADLINE
        && !shared.failed()
    {
        sleep(Duration::from_millis(5)).await;
    }
    // Parked connections are nobody's: QUIT them, bounded like a worker's. The tasks are
    // detached (a dropped handle would cancel them) and counted as they finish.
    let parked = shard.endpoints.borrow_mut().drain();
    let closing = shard.close_parked(parked);
    let total = closing.len();
    let closed = Rc::new(Cell::new(0usize));
    for task in closing {
        let closed = Rc::clone(&closed);
        shard
            .spawn_into(queues.delivery, async move {
                task.await;
                closed.set(closed.get() + 1);
            })
            .detach();
    }
    let quit_started = clock.now();
    while closed.get() < total && clock.now().duration_since(quit_started) < deliver::QUIT_WAIT_MAX
    {
        sleep(Duration::from_millis(5)).await;
    }
    // Outcomes sent by every shard's last workers arrive through the control mesh, ahead of
    // that shard's Drained marker. A shard that failed may never send one: bounded.
    for to in 0..shards {
        shard.send_ctl(to, CtlMsg::Drained);
    }
    let drained_rx = shard.drained_rx.borrow_mut().take();
    if let Some(rx) = drained_rx {
        let all_in = async {
            while shard.drained_from.get() < shards {
                if rx.recv().await.is_none() {
                    break;
                }
            }
        };
        futures_lite::future::or(all_in, sleep(DRAINED_WAIT_MAX)).await;
    }
    // Only now does the group commit make its last pass: every outcome of the drain is in.
    shard.final_commit.set(true);
    let _ = shard.sync_kick.try_send(());
    syncer.await;
    let (sends, messages) = shard.peer_traffic.get();
    if sends > 0 {
        tracing::info!(
            "shard {id}: {messages} messages to other shards in {sends} sends ({:.1} a send)",
            messages as f64 / sends as f64
        );
    }
    let blocking = shard.core.borrow().queue.blocking_rollovers;
    if blocking > 0 {
        tracing::warn!(
            "shard {id}: {blocking} segment rollovers found no spare and blocked the executor"
        );
    }
    // Outcomes that came after the last commit (a worker past the drain deadline, or any
    // after a fatal error stopped the group commit): their log lines are written now, then
    // their records, synced.
    let flushed = shard.core.borrow_mut().final_flush();
    if let Err(e) = flushed {
        shared.fail(format!("shard {id}: {e}"));
    }
}

/// A shard, its group commit's kick receiver and, per destination, its outbox senders'
/// kick receivers (control, data).
type Opened = (
    Shard,
    LocalReceiver<()>,
    Vec<(LocalReceiver<()>, LocalReceiver<()>)>,
);

fn open_shard(
    id: usize,
    shards: usize,
    shared: &Arc<Shared>,
    config: &Arc<Config>,
    data_tx: Senders<DataMsg>,
    ctl_tx: Senders<CtlMsg>,
    queues: TaskQueues,
) -> Result<Opened, String> {
    let spool = Spool::open(&config.spool.dir)
        .map_err(|e| format!("{}: {e}", config.spool.dir.display()))?;
    let claimed: HashSet<u64> = spool
        .leftover_claims()
        .map_err(|e| format!("{}: {e}", config.spool.dir.display()))?
        .iter()
        .map(|c| c.batch_id)
        .collect();
    let dir = config.engine.data_dir.join(format!("shard-{id}"));
    let (mut queue, report) = ShardQueue::open_with_clock(
        &dir,
        id as u32,
        config.queue.segment_bytes,
        Arc::clone(&shared.clock),
    )
    .map_err(|e| e.to_string())?;
    // Batches whose inputs were released before the restart need no de-duplication.
    queue.forget_batches_except(&claimed);
    for w in &report.warnings {
        tracing::warn!("shard {id}: recovery: {w}");
    }
    shared
        .counters
        .live_recipients
        .fetch_add(report.live_recipients, Ordering::SeqCst);
    let log = DeliveryLog::open(&config.log.dir)
        .map_err(|e| format!("{}: {e}", config.log.dir.display()))?;
    let core = Core::new(
        id,
        shards,
        shared.connections_per_shard,
        Arc::clone(config),
        Arc::clone(&shared.clock),
        Arc::clone(&shared.counters),
        queue,
        log,
    )
    .with_suppressions(&shared.suppressions)
    .with_paces(&shared.paces)
    .with_cluster(shared.cluster.as_ref())
    .with_rules(&shared.rules)
    .with_warmup(&shared.warmup);
    let gateway_counts = gateway::DailyCounts::open(config, id)?;
    let (sync_kick, kick_rx) = local_channel::new_bounded(1);
    let (commit_urgent, commit_urgent_rx) = local_channel::new_bounded(1);
    let (schedule_kick, schedule_rx) = local_channel::new_bounded(1);
    let (drained_kick, drained_rx) = local_channel::new_bounded(1);
    let mut outboxes = Vec::with_capacity(shards);
    let mut outbox_rx = Vec::with_capacity(shards);
    for _ in 0..shards {
        let (outbox, ctl_rx, data_rx) = deliver::Outbox::new();
        outboxes.push(outbox);
        outbox_rx.push((ctl_rx, data_rx));
    }
    Ok((
        Shard {
            id,
            shards,
            shared: Arc::clone(shared),
            config: RefCell::new(Arc::clone(config)),
            generation: Cell::new(shared.generation.load(Ordering::SeqCst)),
            holds_generation: Cell::new(0),
            core: RefCell::new(core),
            spool,
            data_tx,
            ctl_tx,
            sync_kick,
            commit_urgent,
            commit_urgent_rx: RefCell::new(Some(commit_urgent_rx)),
            schedule_kick,
            schedule_rx: RefCell::new(Some(schedule_rx)),
            final_commit: Cell::new(false),
            acks: RefCell::new(HashMap::new()),
            last_batch_id: Cell::new(0),
            gateway_counts: RefCell::new(gateway_counts),
            password_checks: glommio::sync::Semaphore::new(1),
            retry: RefCell::new(Vec::new()),
            idle_workers: RefCell::new(HashMap::new()),
            tls: Rc::new(crate::delivery::tls::TlsClients::new()),
            endpoints: RefCell::new(deliver::Endpoints::new(
                config.delivery.ip_connection_limit.div_ceil(shards as u32),
                deliver::IDLE_CLOSE,
            )),
            resolver: Resolver::new(
                config.dns.nameservers.clone(),
                crate::dns::resolver::os_random(),
                Arc::clone(&shared.clock),
            ),
            outboxes,
            peer_traffic: Cell::new((0, 0)),
            drained_from: Cell::new(0),
            drained_kick,
            drained_rx: RefCell::new(Some(drained_rx)),
            queues,
        },
        kick_rx,
        outbox_rx,
    ))
}

async fn data_receiver(shard: Rc<Shard>, rx: Rc<Receivers<DataMsg>>, peer: usize) {
    while let Ok(Some(msg)) = rx.recv_from(peer).await {
        shard.on_data(msg);
    }
}

async fn control_receiver(shard: Rc<Shard>, rx: Rc<Receivers<CtlMsg>>, peer: usize) {
    while let Ok(Some(msg)) = rx.recv_from(peer).await {
        shard.on_control(msg);
    }
}

impl Shard {
    fn reload_if_changed(self: &Rc<Self>) {
        let generation = self.shared.generation.load(Ordering::SeqCst);
        if generation != self.generation.get() {
            self.generation.set(generation);
            let config = self.shared.config();
            // New or changed keys: their records are checked as at the start.
            let keys = |c: &Config| {
                let mut k: Vec<(String, String)> = c
                    .dkim
                    .iter()
                    .map(|d| (d.signer.record_name(), d.signer.record()))
                    .collect();
                k.sort();
                k
            };
            if self.id == 0 && keys(&config) != keys(&self.config.borrow()) {
                let check = published::check_dkim_records(Rc::clone(self), Arc::clone(&config));
                self.spawn_into(self.queues.background, check).detach();
            }
            if self.id == 0 && config.egress.sources != self.config.borrow().egress.sources {
                let check = published::check_sources(Rc::clone(self), Arc::clone(&config));
                self.spawn_into(self.queues.background, check).detach();
            }
            let mut core = self.core.borrow_mut();
            core.reconfigure(Arc::clone(&config));
            *self.config.borrow_mut() = config;
            if let Err(e) = core.log.reopen() {
                self.shared
                    .fail(format!("delivery log: reopen failed: {e}"));
            }
        }
    }

    fn on_control(self: &Rc<Self>, msg: CtlMsg) {
        match msg {
            CtlMsg::Appended {
                batch_id,
                recipients,
            } => self.route_ack(batch_id, recipients),
            CtlMsg::Released { batch_id } => self.core.borrow_mut().queue.release_batch(batch_id),
            CtlMsg::Delivery(msg) => self.with_core(|core| core.on_message(msg)),
            CtlMsg::Drained => {
                self.drained_from.set(self.drained_from.get() + 1);
                let _ = self.drained_kick.try_send(());
            }
            CtlMsg::Batch(msgs) => {
                for msg in msgs {
                    self.on_control(msg);
                }
            }
        }
    }

    fn on_data(self: &Rc<Self>, msg: DataMsg) {
        match msg {
            DataMsg::Append { claimer, chunk } => self.append(claimer, chunk),
            DataMsg::Delivery(msg) => self.with_core(|core| core.on_message(msg)),
            DataMsg::Batch(msgs) => {
                for msg in msgs {
                    self.on_data(msg);
                }
            }
        }
    }

    /// Calls into the core, then does what it asked for (its `Effect`s), outside its borrow.
    fn with_core<T>(self: &Rc<Self>, f: impl FnOnce(&mut Core<DeliveryLog>) -> T) -> T {
        let (result, effects) = {
            let mut core = self.core.borrow_mut();
            let result = f(&mut core);
            (result, core.take_effects())
        };
        for effect in effects {
            self.apply(effect);
        }
        result
    }

    fn apply(self: &Rc<Self>, effect: Effect) {
        match effect {
            Effect::Send(to, msg) if msg.is_data() => self.send_data(to, DataMsg::Delivery(msg)),
            Effect::Send(to, msg) => self.send_ctl(to, CtlMsg::Delivery(msg)),
            Effect::SpawnWorker { scope, preconnect } => self.spawn_worker(scope, preconnect),
            Effect::WakeWorkers(scope) => self.wake_workers(&scope),
            Effect::CloseParked(n) => {
                let evicted = self.endpoints.borrow_mut().evict(n as usize);
                for task in self.close_parked(evicted) {
                    task.detach();
                }
            }
            Effect::CloseParkedOf(scope) => {
                let theirs = self
                    .endpoints
                    .borrow_mut()
                    .take_where(|c| c.parked_by.as_deref() == Some(scope.as_str()));
                for task in self.close_parked(theirs) {
                    task.detach();
                }
            }
            Effect::Resolve(domain) => {
                let resolve = deliver::resolve(Rc::clone(self), domain);
                self.spawn_into(self.queues.delivery, resolve).detach();
            }
            Effect::Commit => {
                let _ = self.sync_kick.try_send(());
            }
            Effect::Schedule => {
                let _ = self.schedule_kick.try_send(());
            }
            Effect::Fatal(why) => self.shared.fail(why),
            Effect::Bug(why) => tracing::error!("{why}"),
        }
    }

    fn route_ack(&self, batch_id: u64, recipients: u32) {
        if let Some(tx) = self.acks.borrow().get(&batch_id) {
            let _ = tx.try_send(recipients);
        }
    }
}
