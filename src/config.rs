//! The TOML configuration of INTERFACE.md: every key has a default, unknown keys are refused,
//! and every error is one line naming the file and the line or field at fault.
//!
//! Parsing is two steps: serde reads the raw shape (with `deny_unknown_fields`), then
//! `validate` turns strings such as `"300/s"` or `"25MB"` into typed values, so the rest of
//! the engine never sees an unchecked value.

use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A configuration error: one line, naming the file and the line or field at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// The validated configuration the engine runs with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where this configuration came from (`<embedded>` for the demo's).
    pub source: String,
    pub engine: Engine,
    pub queue: Queue,
    pub delivery: Delivery,
    pub spool: Spool,
    pub log: Log,
    pub dns: Dns,
    pub smtp: Smtp,
    pub admin: Admin,
    pub routes: Vec<Route>,
    pub providers: BTreeMap<String, Provider>,
    pub listeners: Vec<Listener>,
    pub users: Vec<User>,
    pub dkim: Vec<Dkim>,
    pub suppression: Suppression,
    pub unsubscribe: Unsubscribe,
}

#[derive(Debug, Clone)]
pub struct Engine {
    /// Executors, pinned one per CPU. Default: every online CPU.
    pub shards: usize,
    pub data_dir: PathBuf,
    /// How each shard's executor polls, preempts and shares its CPU (startup-only).
    pub runtime: Runtime,
}

/// `[engine]` runtime tuning (an extension of INTERFACE.md): the glommio knobs of each shard's
/// executor and the CPU shares of its three task queues. Read when the shards start; a reload
/// that changes them takes effect at the next start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Runtime {
    /// How long an idle executor busy-polls for I/O before it sleeps; zero sleeps at once.
    pub spin_before_park: Duration,
    /// How long a task queue may run before the others get a turn, while no latency-sensitive
    /// (delivery) work is runnable.
    pub preempt_timer: Duration,
    /// Buffer memory each executor preallocates and registers with io_uring.
    pub io_memory_bytes: usize,
    /// CPU shares of the delivery queue: scheduler, routing, rendering, connection workers,
    /// outcomes, control messages.
    pub delivery_shares: usize,
    /// CPU shares of the intake queue: spool scanning, parsing, appending chunks.
    pub intake_shares: usize,
    /// CPU shares of the background queue: group commit, spare segments, reclaim, compaction.
    pub background_shares: usize,
}

/// `[queue]`: the durable queue's knobs (an extension of INTERFACE.md).
#[derive(Debug, Clone)]
pub struct Queue {
    /// Size each segment file is preallocated to.
    pub segment_bytes: u64,
    /// Longest a queued record waits for its group commit.
    pub commit_interval: Duration,
    /// A group commit starts early once this many records wait for it.
    pub commit_records_max: usize,
}

/// `[delivery]`: retry schedule and timeouts (an extension of INTERFACE.md).
#[derive(Debug, Clone)]
pub struct Delivery {
    pub retry_first: Duration,
    pub retry_max_interval: Duration,
    pub max_age: Duration,
    pub connect_timeout: Duration,
    /// Connections per site (a destination that matches no provider).
    pub site_connection_limit: u32,
    /// Queue only, send nothing (an operator's pause; also the demo's, until simulated ISPs
    /// exist). Reloadable.
    pub paused: bool,
    /// TLS policy for destinations that match no provider.
    pub tls: crate::smtp::session::TlsPolicy,
    /// Recipients of one verbatim message at one domain that share a transaction.
    pub recipients_per_transaction: u32,
    /// SMTP client timeouts per phase (RFC 5321 4.5.3.2 defaults).
    pub timeouts: crate::smtp::session::Timeouts,
    /// Connect to addresses from DNS in loopback, private, link-local and other non-public
    /// ranges (`delivery::guard`). Off in production; tests and the demo, whose receivers
    /// are on loopback, turn it on. `[[routes]]` are never checked.
    pub allow_private_destinations: bool,
}

#[derive(Debug, Clone)]
pub struct Spool {
    pub dir: PathBuf,
    pub keep_done: bool,
    /// Full rescan of `incoming/` (the truth; inotify only wakes the scanner early).
    pub scan_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct Log {
    pub dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Dns {
    pub nameservers: Vec<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct Smtp {
    pub helo_name: String,
    pub port: u16,
}

#[derive(Debug, Clone)]
pub struct Admin {
    pub listen: SocketAddr,
}

#[derive(Debug, Clone)]
pub struct Route {
    /// A domain, or `*.suffix`.
    pub domain: String,
    pub hosts: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Provider {
    pub mx_suffixes: Vec<String>,
    pub tls: crate::smtp::session::TlsPolicy,
    pub connection_limit: u32,
    pub max_message_rate: Option<Rate>,
    pub max_deliveries_per_connection: u32,
}

/// A rate such as `300/s`, kept as messages per `per`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub messages: u64,
    pub per: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenerTls {
    Starttls,
    Implicit,
    None,
}

#[derive(Debug, Clone)]
pub struct Listener {
    pub listen: SocketAddr,
    pub tls: ListenerTls,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub relay_networks: Vec<String>,
    pub max_message_size_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub password_hash: String,
    pub allowed_from: Vec<String>,
    pub daily_limit: Option<u64>,
}

#[derive(Debug, Clone)]
pub struct Dkim {
    pub domain: String,
    pub selector: String,
    pub key: PathBuf,
}

#[derive(Debug, Clone, Default)]
pub struct Suppression {
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default)]
pub struct Unsubscribe {
    pub url: Option<String>,
    pub mailto: Option<String>,
}

// ---- The raw shape, as serde reads it. ----

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    engine: RawEngine,
    #[serde(default)]
    queue: RawQueue,
    #[serde(default)]
    delivery: RawDelivery,
    #[serde(default)]
    spool: RawSpool,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    dns: RawDns,
    #[serde(default)]
    smtp: RawSmtp,
    #[serde(default)]
    admin: RawAdmin,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    listeners: Vec<RawListener>,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    dkim: Vec<RawDkim>,
    #[serde(default)]
    suppression: RawSuppression,
    #[serde(default)]
    unsubscribe: RawUnsubscribe,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    shards: Option<usize>,
    data_dir: Option<PathBuf>,
    spin_before_park: Option<String>,
    preempt_timer: Option<String>,
    io_memory: Option<RawSize>,
    delivery_shares: Option<usize>,
    intake_shares: Option<usize>,
    background_shares: Option<usize>,
}

/// A size written either as a byte count (`4194304`) or with a unit (`"4MiB"`).
enum RawSize {
    Bytes(u64),
    Text(String),
}

impl<'de> Deserialize<'de> for RawSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawSize;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a byte count or a size such as \"4MiB\"")
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawSize, E> {
                u64::try_from(v)
                    .map(RawSize::Bytes)
                    .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawSize, E> {
                Ok(RawSize::Bytes(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawSize, E> {
                Ok(RawSize::Text(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawQueue {
    segment_bytes: Option<String>,
    commit_interval_ms: Option<u64>,
    commit_records_max: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDelivery {
    retry_first: Option<String>,
    retry_max_interval: Option<String>,
    max_age: Option<String>,
    connect_timeout: Option<String>,
    site_connection_limit: Option<u32>,
    paused: Option<bool>,
    allow_private_destinations: Option<bool>,
    tls: Option<String>,
    recipients_per_transaction: Option<u32>,
    greeting_timeout: Option<String>,
    ehlo_timeout: Option<String>,
    mail_timeout: Option<String>,
    rcpt_timeout: Option<String>,
    data_init_timeout: Option<String>,
    data_block_timeout: Option<String>,
    data_done_timeout: Option<String>,
    command_timeout: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSpool {
    dir: Option<PathBuf>,
    keep_done: Option<bool>,
    scan_interval_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    dir: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDns {
    nameservers: Option<Vec<String>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSmtp {
    helo_name: Option<String>,
    port: Option<u16>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAdmin {
    listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    domain: String,
    hosts: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvider {
    #[serde(default)]
    mx_suffixes: Vec<String>,
    tls: Option<String>,
    connection_limit: Option<u32>,
    max_message_rate: Option<String>,
    max_deliveries_per_connection: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListener {
    listen: String,
    tls: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    #[serde(default)]
    relay_networks: Vec<String>,
    max_message_size: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password_hash: String,
    #[serde(default)]
    allowed_from: Vec<String>,
    daily_limit: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDkim {
    domain: String,
    selector: String,
    key: PathBuf,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSuppression {
    #[serde(default)]
    files: Vec<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawUnsubscribe {
    url: Option<String>,
    mailto: Option<String>,
}

// ---- Defaults, named in one place. ----

pub const DEFAULT_DATA_DIR: &str = "/var/lib/spate";
pub const DEFAULT_SPOOL_DIR: &str = "/var/spool/spate";
pub const DEFAULT_LOG_DIR: &str = "/var/log/spate";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8025";
pub const DEFAULT_SMTP_PORT: u16 = 25;
/// 64 MiB: large enough that a million-recipient batch spans a handful of segments, small
/// enough that a finished segment is freed soon.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
/// The smallest segment that holds a largest message record (16 MiB template) plus a full
/// chunk in an empty segment, with room to spare.
pub const SEGMENT_BYTES_MIN: u64 = 32 << 20;
pub const DEFAULT_COMMIT_INTERVAL_MS: u64 = 4;
pub const DEFAULT_COMMIT_RECORDS_MAX: usize = 65_536;
/// A rescan every 250 ms bounds pickup latency even if inotify misses an event.
pub const DEFAULT_SCAN_INTERVAL_MS: u64 = 250;
pub const DEFAULT_CONNECTION_LIMIT: u32 = 10;
/// Postfix's `smtp_connect_timeout` default.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_DELIVERIES_PER_CONNECTION: u32 = 100;
pub const DEFAULT_MAX_MESSAGE_SIZE: u64 = 25_000_000;
/// One executor per CPU is the design; more shards than this is a typo.
pub const SHARDS_MAX: usize = 256;
/// An idle shard sleeps at once, as glommio does by default: spinning burns a core that may
/// have other work (a shared machine, the blocking thread's fsyncs).
pub const DEFAULT_SPIN_BEFORE_PARK: Duration = Duration::ZERO;
/// The engine's timers fire every 10 ms, so a shard that spins longer than that never sleeps
/// at all; beyond this bound a value is a typo.
pub const SPIN_BEFORE_PARK_MAX: Duration = Duration::from_millis(100);
/// glommio's default: throughput work (intake, background) runs in long slices, and the
/// delivery queue's latency bound preempts it sooner when delivery has work.
pub const DEFAULT_PREEMPT_TIMER: Duration = Duration::from_millis(100);
/// Below 1 ms a shard spends its time switching task queues; above 1 s, control messages
/// could wait that long behind a parse.
pub const PREEMPT_TIMER_MIN: Duration = Duration::from_millis(1);
pub const PREEMPT_TIMER_MAX: Duration = Duration::from_secs(1);
/// What the engine has always registered per shard (see `preflight`).
pub const DEFAULT_IO_MEMORY_BYTES: usize = crate::preflight::IO_MEMORY_BYTES_PER_SHARD;
/// glommio rounds anything smaller up to 64 KiB; the memory is pinned per shard and the
/// engine's io_uring buffers are socket reads, so more than 256 MiB is a typo.
pub const IO_MEMORY_BYTES_MIN: usize = 64 << 10;
pub const IO_MEMORY_BYTES_MAX: usize = 256 << 20;
/// Task-queue shares: glommio accepts 1..=1000. They divide a shard's CPU only while more
/// than one queue has runnable work; a queue that wakes after sleeping is served next.
pub const SHARES_MAX: usize = 1000;
/// Delivery keeps connections busy and credit flowing; it gets the most.
pub const DEFAULT_DELIVERY_SHARES: usize = 1000;
/// Intake parses at half delivery's rate under contention: the queue is the buffer, so
/// producers can wait a little while sending goes on at full speed.
pub const DEFAULT_INTAKE_SHARES: usize = 500;
/// Background work is mostly waiting for fsyncs on the blocking thread, but the group
/// commit's CPU part (reception log lines, acknowledgements) is a stage of intake, so it gets
/// half of intake's shares rather than a token amount that would pace intake to it.
pub const DEFAULT_BACKGROUND_SHARES: usize = 250;

/// A TOML error as one line naming the source and the line at fault.
pub fn toml_error(text: &str, source: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("{source}: line {line}: {message}")
        }
        None => format!("{source}: {message}"),
    }
}

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("{}: cannot read: {e}", path.display())))?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses configuration text; `source` names it in errors.
    pub fn parse(text: &str, source: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig =
            toml::from_str(text).map_err(|e| ConfigError(toml_error(text, source, &e)))?;
        validate(raw, source)
    }

    /// The embedded defaults, rooted at `base` (used by `spate demo` and tests).
    /// Delivery is paused: the demo has no simulated receivers yet, and must never send mail
    /// (or DNS queries) off this machine.
    pub fn defaults_under(base: &Path) -> Config {
        let text = format!(
            "[engine]\ndata_dir = {:?}\n[delivery]\npaused = true\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[spool]\ndir = {:?}\n[log]\ndir = {:?}\n",
            base.join("data"),
            base.join("spool"),
            base.join("log")
        );
        Config::parse(&text, "<embedded>").expect("embedded configuration is valid")
    }

    /// What `check-config` prints: the values the engine will run with.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        let mut line = |s: String| {
            out.push_str(&s);
            out.push('\n');
        };
        line(format!("configuration: {} (valid)", self.source));
        line(format!("shards: {}", self.engine.shards));
        line(format!("data_dir: {}", self.engine.data_dir.display()));
        let rt = &self.engine.runtime;
        line(format!(
            "runtime: spin_before_park={} preempt_timer={} io_memory={} bytes (startup-only)",
            duration_text(rt.spin_before_park),
            duration_text(rt.preempt_timer),
            rt.io_memory_bytes
        ));
        line(format!(
            "task queue shares: delivery_shares={} intake_shares={} background_shares={}",
            rt.delivery_shares, rt.intake_shares, rt.background_shares
        ));
        line(format!(
            "queue: segment_bytes={} commit_interval_ms={} commit_records_max={}",
            self.queue.segment_bytes,
            self.queue.commit_interval.as_millis(),
            self.queue.commit_records_max
        ));
        line(format!(
            "delivery: paused={} allow_private_destinations={} retry_first={:?} retry_max_interval={:?} max_age={:?} connect_timeout={:?} site_connection_limit={}",
            self.delivery.paused,
            self.delivery.allow_private_destinations,
            self.delivery.retry_first,
            self.delivery.retry_max_interval,
            self.delivery.max_age,
            self.delivery.connect_timeout,
            self.delivery.site_connection_limit
        ));
        line(format!(
            "spool: {} (keep_done={}, rescan every {} ms)",
            self.spool.dir.display(),
            self.spool.keep_done,
            self.spool.scan_interval.as_millis()
        ));
        line(format!("log: {}", self.log.dir.display()));
        let ns: Vec<String> = self.dns.nameservers.iter().map(|a| a.to_string()).collect();
        line(format!("dns: nameservers [{}]", ns.join(", ")));
        line(format!(
            "smtp: helo_name={} port={}",
            self.smtp.helo_name, self.smtp.port
        ));
        line(format!("admin: {}", self.admin.listen));
        for r in &self.routes {
            line(format!("route: {} -> {}", r.domain, r.hosts.join(", ")));
        }
        for (name, p) in &self.providers {
            let rate = p
                .max_message_rate
                .map(|r| format!("{}/{}s", r.messages, r.per.as_secs()))
                .unwrap_or_else(|| "unlimited".into());
            line(format!(
                "provider {name}: mx_suffixes [{}] connection_limit={} max_message_rate={rate} max_deliveries_per_connection={}",
                p.mx_suffixes.join(", "),
                p.connection_limit,
                p.max_deliveries_per_connection
            ));
        }
        for l in &self.listeners {
            line(format!("listener: {} tls={:?}", l.listen, l.tls));
        }
        line(format!(
            "users: {}, dkim signatures: {}, suppression files: {}",
            self.users.len(),
            self.dkim.len(),
            self.suppression.files.len()
        ));
        for missing in self.inactive_features() {
            line(format!("note: {missing}"));
        }
        out
    }

    /// The keys that differ between `self` and `new` but apply only at the next start, named
    /// as in the file, for the reload message.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let (old_rt, new_rt) = (&self.engine.runtime, &new.engine.runtime);
        [
            (self.engine.shards != new.engine.shards, "engine.shards"),
            (
                self.engine.data_dir != new.engine.data_dir,
                "engine.data_dir",
            ),
            (
                old_rt.spin_before_park != new_rt.spin_before_park,
                "engine.spin_before_park",
            ),
            (
                old_rt.preempt_timer != new_rt.preempt_timer,
                "engine.preempt_timer",
            ),
            (
                old_rt.io_memory_bytes != new_rt.io_memory_bytes,
                "engine.io_memory",
            ),
            (
                old_rt.delivery_shares != new_rt.delivery_shares,
                "engine.delivery_shares",
            ),
            (
                old_rt.intake_shares != new_rt.intake_shares,
                "engine.intake_shares",
            ),
            (
                old_rt.background_shares != new_rt.background_shares,
                "engine.background_shares",
            ),
            (self.spool.dir != new.spool.dir, "spool.dir"),
            (self.log.dir != new.log.dir, "log.dir"),
        ]
        .into_iter()
        .filter_map(|(changed, key)| changed.then_some(key))
        .collect()
    }

    /// Configured features this build accepts but does not act on yet, so that operators are
    /// told rather than left to guess.
    pub fn inactive_features(&self) -> Vec<String> {
        let mut notes = Vec::new();
        let mut note = |present: bool, what: &str| {
            if present {
                notes.push(format!(
                    "{what} is configured but not implemented in this build yet"
                ));
            }
        };
        note(
            !self.listeners.is_empty(),
            "[[listeners]] (SMTP submission)",
        );
        note(!self.users.is_empty(), "[[users]]");
        note(!self.dkim.is_empty(), "[[dkim]] signing");
        note(!self.suppression.files.is_empty(), "[suppression]");
        note(
            self.unsubscribe.url.is_some() || self.unsubscribe.mailto.is_some(),
            "[unsubscribe]",
        );
        notes
    }
}

fn validate(raw: RawConfig, source: &str) -> Result<Config, ConfigError> {
    let err = |field: &str, msg: String| ConfigError(format!("{source}: {field}: {msg}"));

    let online = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shards = raw.engine.shards.unwrap_or(online);
    if shards == 0 || shards > SHARDS_MAX {
        return Err(err(
            "engine.shards",
            format!("must be between 1 and {SHARDS_MAX}, got {shards}"),
        ));
    }
    let runtime = validate_runtime(&raw.engine, source)?;

    let segment_bytes = match raw.queue.segment_bytes {
        Some(s) => parse_size(&s).map_err(|m| err("queue.segment_bytes", m))?,
        None => DEFAULT_SEGMENT_BYTES,
    };
    if !(SEGMENT_BYTES_MIN..=(1 << 32)).contains(&segment_bytes) {
        return Err(err(
            "queue.segment_bytes",
            format!("must be between 32MiB and 4GiB, got {segment_bytes} bytes"),
        ));
    }
    let commit_interval_ms = raw
        .queue
        .commit_interval_ms
        .unwrap_or(DEFAULT_COMMIT_INTERVAL_MS);
    if commit_interval_ms > 1000 {
        return Err(err(
            "queue.commit_interval_ms",
            format!("must be at most 1000, got {commit_interval_ms}"),
        ));
    }
    let commit_records_max = raw
        .queue
        .commit_records_max
        .unwrap_or(DEFAULT_COMMIT_RECORDS_MAX);
    if commit_records_max == 0 {
        return Err(err("queue.commit_records_max", "must be at least 1".into()));
    }

    // Defaults of the retry schedule and the SMTP timeouts live with their types
    // (`RetryPolicy::default`, `Timeouts::default`), not here as well.
    let duration = |field: &str, v: &Option<String>, default: Duration| match v {
        Some(text) => parse_duration(text).map_err(|m| err(field, m)),
        None => Ok(default),
    };
    let retry = crate::delivery::policy::RetryPolicy::default();
    let timeouts = crate::smtp::session::Timeouts::default();
    let delivery = Delivery {
        retry_first: duration(
            "delivery.retry_first",
            &raw.delivery.retry_first,
            retry.first,
        )?,
        retry_max_interval: duration(
            "delivery.retry_max_interval",
            &raw.delivery.retry_max_interval,
            retry.max_interval,
        )?,
        max_age: duration("delivery.max_age", &raw.delivery.max_age, retry.max_age)?,
        connect_timeout: duration(
            "delivery.connect_timeout",
            &raw.delivery.connect_timeout,
            DEFAULT_CONNECT_TIMEOUT,
        )?,
        site_connection_limit: raw
            .delivery
            .site_connection_limit
            .unwrap_or(DEFAULT_CONNECTION_LIMIT),
        paused: raw.delivery.paused.unwrap_or(false),
        allow_private_destinations: raw.delivery.allow_private_destinations.unwrap_or(false),
        tls: crate::delivery::tls::parse_policy(
            raw.delivery.tls.as_deref().unwrap_or("opportunistic"),
        )
        .map_err(|m| err("delivery.tls", m))?,
        recipients_per_transaction: raw.delivery.recipients_per_transaction.unwrap_or(50),
        timeouts: crate::smtp::session::Timeouts {
            greeting: duration(
                "delivery.greeting_timeout",
                &raw.delivery.greeting_timeout,
                timeouts.greeting,
            )?,
            ehlo: duration(
                "delivery.ehlo_timeout",
                &raw.delivery.ehlo_timeout,
                timeouts.ehlo,
            )?,
            mail: duration(
                "delivery.mail_timeout",
                &raw.delivery.mail_timeout,
                timeouts.mail,
            )?,
            rcpt: duration(
                "delivery.rcpt_timeout",
                &raw.delivery.rcpt_timeout,
                timeouts.rcpt,
            )?,
            data_init: duration(
                "delivery.data_init_timeout",
                &raw.delivery.data_init_timeout,
                timeouts.data_init,
            )?,
            data_block: duration(
                "delivery.data_block_timeout",
                &raw.delivery.data_block_timeout,
                timeouts.data_block,
            )?,
            data_done: duration(
                "delivery.data_done_timeout",
                &raw.delivery.data_done_timeout,
                timeouts.data_done,
            )?,
            other: duration(
                "delivery.command_timeout",
                &raw.delivery.command_timeout,
                timeouts.other,
            )?,
        },
    };
    if !(1..=1000).contains(&delivery.recipients_per_transaction) {
        return Err(err(
            "delivery.recipients_per_transaction",
            format!(
                "must be between 1 and 1000, got {}",
                delivery.recipients_per_transaction
            ),
        ));
    }
    if delivery.site_connection_limit == 0 {
        return Err(err(
            "delivery.site_connection_limit",
            "must be at least 1".into(),
        ));
    }

    let scan_interval_ms = raw
        .spool
        .scan_interval_ms
        .unwrap_or(DEFAULT_SCAN_INTERVAL_MS);
    if !(10..=60_000).contains(&scan_interval_ms) {
        return Err(err(
            "spool.scan_interval_ms",
            format!("must be between 10 and 60000, got {scan_interval_ms}"),
        ));
    }

    let nameservers = match raw.dns.nameservers {
        Some(list) => list
            .iter()
            .map(|s| parse_socket_addr(s, 53))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| err("dns.nameservers", m))?,
        None => resolv_conf_nameservers(),
    };

    let helo_name = raw.smtp.helo_name.unwrap_or_else(system_hostname);
    if helo_name.is_empty() || helo_name.contains(char::is_whitespace) {
        return Err(err(
            "smtp.helo_name",
            format!("must be a host name, got {helo_name:?}"),
        ));
    }

    let admin_listen = raw
        .admin
        .listen
        .unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.into());
    let admin_listen = admin_listen.parse::<SocketAddr>().map_err(|_| {
        err(
            "admin.listen",
            format!("not an address:port: {admin_listen:?}"),
        )
    })?;

    let mut routes = Vec::new();
    for (i, r) in raw.routes.into_iter().enumerate() {
        let field = format!("routes[{i}]");
        if r.domain.is_empty() {
            return Err(err(&format!("{field}.domain"), "must not be empty".into()));
        }
        if r.hosts.is_empty() {
            return Err(err(
                &format!("{field}.hosts"),
                "needs at least one host".into(),
            ));
        }
        routes.push(Route {
            domain: r.domain.to_ascii_lowercase(),
            hosts: r.hosts,
        });
    }

    let mut providers = BTreeMap::new();
    for (name, p) in raw.providers {
        let field = format!("providers.{name}");
        let max_message_rate = match p.max_message_rate {
            Some(s) => {
                Some(parse_rate(&s).map_err(|m| err(&format!("{field}.max_message_rate"), m))?)
            }
            None => None,
        };
        let connection_limit = p.connection_limit.unwrap_or(DEFAULT_CONNECTION_LIMIT);
        if connection_limit == 0 {
            return Err(err(
                &format!("{field}.connection_limit"),
                "must be at least 1".into(),
            ));
        }
        let max_deliveries_per_connection = p
            .max_deliveries_per_connection
            .unwrap_or(DEFAULT_MAX_DELIVERIES_PER_CONNECTION);
        if max_deliveries_per_connection == 0 {
            return Err(err(
                &format!("{field}.max_deliveries_per_connection"),
                "must be at least 1".into(),
            ));
        }
        let tls = crate::delivery::tls::parse_policy(p.tls.as_deref().unwrap_or("opportunistic"))
            .map_err(|m| err(&format!("{field}.tls"), m))?;
        providers.insert(
            name,
            Provider {
                tls,
                mx_suffixes: p
                    .mx_suffixes
                    .into_iter()
                    .map(|s| s.to_ascii_lowercase())
                    .collect(),
                connection_limit,
                max_message_rate,
                max_deliveries_per_connection,
            },
        );
    }

    let mut listeners = Vec::new();
    for (i, l) in raw.listeners.into_iter().enumerate() {
        let field = format!("listeners[{i}]");
        let listen = l.listen.parse::<SocketAddr>().map_err(|_| {
            err(
                &format!("{field}.listen"),
                format!("not an address:port: {:?}", l.listen),
            )
        })?;
        let tls = match l.tls.as_deref().unwrap_or("starttls") {
            "starttls" => ListenerTls::Starttls,
            "implicit" => ListenerTls::Implicit,
            "none" => ListenerTls::None,
            other => {
                return Err(err(
                    &format!("{field}.tls"),
                    format!("expected \"starttls\", \"implicit\" or \"none\", got {other:?}"),
                ))
            }
        };
        if tls == ListenerTls::None && !listen.ip().is_loopback() {
            return Err(err(
                &format!("{field}.tls"),
                "\"none\" is allowed on loopback addresses only".into(),
            ));
        }
        if tls != ListenerTls::None && (l.cert.is_none() || l.key.is_none()) {
            return Err(err(
                &format!("{field}.cert"),
                "cert and key are required unless tls = \"none\"".into(),
            ));
        }
        let max_message_size_bytes = match l.max_message_size {
            Some(s) => parse_size(&s).map_err(|m| err(&format!("{field}.max_message_size"), m))?,
            None => DEFAULT_MAX_MESSAGE_SIZE,
        };
        listeners.push(Listener {
            listen,
            tls,
            cert: l.cert,
            key: l.key,
            relay_networks: l.relay_networks,
            max_message_size_bytes,
        });
    }

    let users = raw
        .users
        .into_iter()
        .map(|u| User {
            name: u.name,
            password_hash: u.password_hash,
            allowed_from: u.allowed_from,
            daily_limit: u.daily_limit,
        })
        .collect();
    let dkim = raw
        .dkim
        .into_iter()
        .map(|d| Dkim {
            domain: d.domain.to_ascii_lowercase(),
            selector: d.selector,
            key: d.key,
        })
        .collect();

    Ok(Config {
        source: source.to_string(),
        engine: Engine {
            shards,
            data_dir: raw
                .engine
                .data_dir
                .unwrap_or_else(|| DEFAULT_DATA_DIR.into()),
            runtime,
        },
        delivery,
        queue: Queue {
            segment_bytes,
            commit_interval: Duration::from_millis(commit_interval_ms),
            commit_records_max,
        },
        spool: Spool {
            dir: raw.spool.dir.unwrap_or_else(|| DEFAULT_SPOOL_DIR.into()),
            keep_done: raw.spool.keep_done.unwrap_or(false),
            scan_interval: Duration::from_millis(scan_interval_ms),
        },
        log: Log {
            dir: raw.log.dir.unwrap_or_else(|| DEFAULT_LOG_DIR.into()),
        },
        dns: Dns { nameservers },
        smtp: Smtp {
            helo_name,
            port: raw.smtp.port.unwrap_or(DEFAULT_SMTP_PORT),
        },
        admin: Admin {
            listen: admin_listen,
        },
        routes,
        providers,
        listeners,
        users,
        dkim,
        suppression: Suppression {
            files: raw.suppression.files,
        },
        unsubscribe: Unsubscribe {
            url: raw.unsubscribe.url,
            mailto: raw.unsubscribe.mailto,
        },
    })
}

/// The `[engine]` runtime keys, each checked against its range.
fn validate_runtime(raw: &RawEngine, source: &str) -> Result<Runtime, ConfigError> {
    let err = |field: &str, msg: String| ConfigError(format!("{source}: {field}: {msg}"));
    let duration =
        |field: &str, v: &Option<String>, default: Duration, range: (Duration, Duration)| {
            let d = match v {
                Some(s) => parse_duration(s).map_err(|m| err(field, m))?,
                None => default,
            };
            if !(range.0..=range.1).contains(&d) {
                return Err(err(
                    field,
                    format!(
                        "must be between {} and {}, got {}",
                        duration_text(range.0),
                        duration_text(range.1),
                        duration_text(d)
                    ),
                ));
            }
            Ok(d)
        };
    let spin_before_park = duration(
        "engine.spin_before_park",
        &raw.spin_before_park,
        DEFAULT_SPIN_BEFORE_PARK,
        (Duration::ZERO, SPIN_BEFORE_PARK_MAX),
    )?;
    let preempt_timer = duration(
        "engine.preempt_timer",
        &raw.preempt_timer,
        DEFAULT_PREEMPT_TIMER,
        (PREEMPT_TIMER_MIN, PREEMPT_TIMER_MAX),
    )?;
    let io_memory = match &raw.io_memory {
        Some(RawSize::Bytes(n)) => *n,
        Some(RawSize::Text(s)) => parse_size(s).map_err(|m| err("engine.io_memory", m))?,
        None => DEFAULT_IO_MEMORY_BYTES as u64,
    };
    let io_memory_range = IO_MEMORY_BYTES_MIN as u64..=IO_MEMORY_BYTES_MAX as u64;
    if !io_memory_range.contains(&io_memory) {
        return Err(err(
            "engine.io_memory",
            format!("must be between 64KiB and 256MiB, got {io_memory} bytes"),
        ));
    }
    let shares = |field: &str, v: Option<usize>, default: usize| {
        let n = v.unwrap_or(default);
        if !(1..=SHARES_MAX).contains(&n) {
            return Err(err(
                field,
                format!("must be between 1 and {SHARES_MAX}, got {n}"),
            ));
        }
        Ok(n)
    };
    Ok(Runtime {
        spin_before_park,
        preempt_timer,
        io_memory_bytes: io_memory as usize,
        delivery_shares: shares(
            "engine.delivery_shares",
            raw.delivery_shares,
            DEFAULT_DELIVERY_SHARES,
        )?,
        intake_shares: shares(
            "engine.intake_shares",
            raw.intake_shares,
            DEFAULT_INTAKE_SHARES,
        )?,
        background_shares: shares(
            "engine.background_shares",
            raw.background_shares,
            DEFAULT_BACKGROUND_SHARES,
        )?,
    })
}

/// Parses `N/s`, `N/min` or `N/h`.
pub fn parse_rate(s: &str) -> Result<Rate, String> {
    let bad = || format!("invalid rate {s:?}: expected N/s, N/min or N/h");
    let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
    let messages: u64 = n.trim().parse().map_err(|_| bad())?;
    let per = match unit.trim() {
        "s" | "sec" => Duration::from_secs(1),
        "min" | "m" => Duration::from_secs(60),
        "h" | "hour" => Duration::from_secs(3600),
        _ => return Err(bad()),
    };
    if messages == 0 {
        return Err(format!("invalid rate {s:?}: must be at least 1"));
    }
    Ok(Rate { messages, per })
}

/// Parses a duration such as `90s`, `5m`, `2h`, `3d`, `250ms` or `50us`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let bad = || format!("invalid duration {s:?}: expected a number and us, ms, s, m, h or d");
    let n: u64 = digits.parse().map_err(|_| bad())?;
    let micros_per_unit: u64 = match unit {
        "us" => 1,
        "ms" => 1_000,
        "s" => 1_000_000,
        "m" => 60_000_000,
        "h" => 3_600_000_000,
        "d" => 86_400_000_000,
        _ => return Err(bad()),
    };
    n.checked_mul(micros_per_unit)
        .map(Duration::from_micros)
        .ok_or_else(|| format!("invalid duration {s:?}: too large"))
}

/// A duration as the configuration writes it, in the largest of `s`, `ms` and `us` that
/// shows it exactly.
fn duration_text(d: Duration) -> String {
    let us = d.as_micros();
    if us % 1_000_000 == 0 {
        format!("{}s", us / 1_000_000)
    } else if us % 1_000 == 0 {
        format!("{}ms", us / 1_000)
    } else {
        format!("{us}us")
    }
}

/// Parses a size such as `25MB`, `64MiB`, `4096` (bytes), `1GB`.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("invalid size {s:?}: expected a number with an optional unit"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1_000,
        "kib" => 1 << 10,
        "mb" | "m" => 1_000_000,
        "mib" => 1 << 20,
        "gb" | "g" => 1_000_000_000,
        "gib" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use B, KB, KiB, MB, MiB, GB, GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

fn parse_socket_addr(s: &str, default_port: u16) -> Result<SocketAddr, String> {
    if let Ok(a) = s.parse::<SocketAddr>() {
        return Ok(a);
    }
    s.parse::<std::net::IpAddr>()
        .map(|ip| SocketAddr::new(ip, default_port))
        .map_err(|_| format!("not an IP address or address:port: {s:?}"))
}

fn resolv_conf_nameservers() -> Vec<SocketAddr> {
    let text = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| parse_socket_addr(rest.trim(), 53).ok())
        .collect()
}

fn system_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_example_parses() {
        let text = r#"
[engine]
shards = 2
data_dir = "/var/lib/spate"
[spool]
dir = "/var/spool/spate"
keep_done = false
[log]
dir = "/var/log/spate"
[dns]
nameservers = ["127.0.0.1:53"]
[smtp]
helo_name = "mta1.example.com"
port = 25
[admin]
listen = "127.0.0.1:8025"
[[routes]]
domain = "example.test"
hosts = ["127.0.0.1:2525"]
[providers.yahoo]
mx_suffixes = [".yahoodns.net"]
connection_limit = 20
max_message_rate = "300/s"
max_deliveries_per_connection = 100
[[listeners]]
listen = "0.0.0.0:587"
tls = "starttls"
cert = "/etc/spate/tls/fullchain.pem"
key = "/etc/spate/tls/key.pem"
relay_networks = []
max_message_size = "25MB"
[[users]]
name = "billing-app"
password_hash = "$argon2id$..."
allowed_from = ["@acme.example"]
daily_limit = 100000
[[dkim]]
domain = "acme.example"
selector = "s2026"
key = "/etc/spate/dkim/acme.s2026.pem"
[suppression]
files = ["/etc/spate/suppressed.txt"]
[unsubscribe]
url = "https://unsub.acme.example/u?r={{ to }}&c={{ campaign }}"
mailto = "unsubscribe@acme.example"
"#;
        let c = Config::parse(text, "t.toml").unwrap();
        assert_eq!(c.engine.shards, 2);
        let y = &c.providers["yahoo"];
        assert_eq!(
            y.max_message_rate,
            Some(Rate {
                messages: 300,
                per: Duration::from_secs(1)
            })
        );
        assert_eq!(y.connection_limit, 20);
        assert_eq!(c.listeners[0].max_message_size_bytes, 25_000_000);
        assert_eq!(c.dns.nameservers[0].to_string(), "127.0.0.1:53");
    }

    #[test]
    fn empty_file_gives_documented_defaults() {
        let c = Config::parse("", "t.toml").unwrap();
        assert_eq!(c.engine.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.spool.dir, PathBuf::from(DEFAULT_SPOOL_DIR));
        assert_eq!(c.log.dir, PathBuf::from(DEFAULT_LOG_DIR));
        assert_eq!(c.smtp.port, 25);
        assert_eq!(c.queue.segment_bytes, DEFAULT_SEGMENT_BYTES);
        assert!(c.engine.shards >= 1);
        assert!(!c.spool.keep_done);
    }

    #[test]
    fn unknown_key_is_refused_with_its_line() {
        let e = Config::parse("[engine]\nshards = 1\nshardz = 2\n", "x.toml").unwrap_err();
        assert!(e.0.starts_with("x.toml: line 3:"), "{e}");
        assert!(e.0.contains("shardz"), "{e}");
        assert!(!e.0.contains('\n'));
    }

    #[test]
    fn bad_values_name_their_field() {
        let cases = [
            (
                "[providers.g]\nmax_message_rate = \"3/x\"\n",
                "providers.g.max_message_rate",
            ),
            ("[engine]\nshards = 0\n", "engine.shards"),
            ("[queue]\nsegment_bytes = \"1KB\"\n", "queue.segment_bytes"),
            ("[admin]\nlisten = \"nope\"\n", "admin.listen"),
            (
                "[[listeners]]\nlisten = \"0.0.0.0:25\"\ntls = \"none\"\n",
                "listeners[0].tls",
            ),
            ("[dns]\nnameservers = [\"x\"]\n", "dns.nameservers"),
        ];
        for (text, field) in cases {
            let e = Config::parse(text, "c.toml").unwrap_err();
            assert!(e.0.starts_with(&format!("c.toml: {field}:")), "{e}");
        }
    }

    #[test]
    fn type_errors_name_the_line() {
        let e = Config::parse("[engine]\n\nshards = \"two\"\n", "c.toml").unwrap_err();
        assert!(e.0.starts_with("c.toml: line 3:"), "{e}");
    }

    #[test]
    fn rates_and_sizes() {
        assert_eq!(parse_rate("20/min").unwrap().per, Duration::from_secs(60));
        assert_eq!(parse_rate("5/h").unwrap().messages, 5);
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("5").is_err());
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("99999999999999GB").is_err());
        assert_eq!(
            parse_duration("3d").unwrap(),
            Duration::from_secs(3 * 86_400)
        );
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("5 minutes").is_err());
        let c = Config::parse("[delivery]\nretry_first = \"1s\"\n", "t").unwrap();
        assert_eq!(c.delivery.retry_first, Duration::from_secs(1));
        assert_eq!(c.delivery.max_age, Duration::from_secs(3 * 86_400));
        let e = Config::parse("[delivery]\nmax_age = \"3 days\"\n", "t").unwrap_err();
        assert!(e.0.starts_with("t: delivery.max_age:"), "{e}");
        assert_eq!(parse_duration("50us").unwrap(), Duration::from_micros(50));
        assert_eq!(parse_duration("0ms").unwrap(), Duration::ZERO);
        assert!(parse_duration("99999999999999999d").is_err());
        for text in ["0s", "50us", "1500us", "20ms", "2s"] {
            assert_eq!(duration_text(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn engine_runtime_defaults() {
        let c = Config::parse("", "t.toml").unwrap();
        let rt = c.engine.runtime;
        assert_eq!(rt.spin_before_park, Duration::ZERO);
        assert_eq!(rt.preempt_timer, Duration::from_millis(100));
        assert_eq!(
            rt.io_memory_bytes,
            crate::preflight::IO_MEMORY_BYTES_PER_SHARD
        );
        assert_eq!(
            (rt.delivery_shares, rt.intake_shares, rt.background_shares),
            (1000, 500, 250)
        );
        let out = c.describe();
        assert!(
            out.contains("spin_before_park=0s preempt_timer=100ms io_memory=2097152 bytes"),
            "{out}"
        );
        assert!(
            out.contains("delivery_shares=1000 intake_shares=500 background_shares=250"),
            "{out}"
        );
    }

    #[test]
    fn engine_runtime_values() {
        let text = "[engine]\nspin_before_park = \"50us\"\npreempt_timer = \"20ms\"\nio_memory = \"8MiB\"\ndelivery_shares = 800\nintake_shares = 1\nbackground_shares = 1000\n";
        let rt = Config::parse(text, "t.toml").unwrap().engine.runtime;
        assert_eq!(rt.spin_before_park, Duration::from_micros(50));
        assert_eq!(rt.preempt_timer, Duration::from_millis(20));
        assert_eq!(rt.io_memory_bytes, 8 << 20);
        assert_eq!(
            (rt.delivery_shares, rt.intake_shares, rt.background_shares),
            (800, 1, 1000)
        );
        // A plain byte count works too, and the range ends are included.
        let text =
            "[engine]\nio_memory = 65536\nspin_before_park = \"100ms\"\npreempt_timer = \"1s\"\n";
        let rt = Config::parse(text, "t.toml").unwrap().engine.runtime;
        assert_eq!(rt.io_memory_bytes, 65536);
        assert_eq!(rt.spin_before_park, Duration::from_millis(100));
        assert_eq!(rt.preempt_timer, Duration::from_secs(1));
    }

    #[test]
    fn engine_runtime_out_of_range_names_its_field() {
        let cases = [
            ("spin_before_park = \"101ms\"", "engine.spin_before_park"),
            ("spin_before_park = \"5 ms\"", "engine.spin_before_park"),
            ("preempt_timer = \"999us\"", "engine.preempt_timer"),
            ("preempt_timer = \"2s\"", "engine.preempt_timer"),
            ("io_memory = \"1KiB\"", "engine.io_memory"),
            ("io_memory = \"257MiB\"", "engine.io_memory"),
            ("io_memory = 0", "engine.io_memory"),
            ("io_memory = \"8XB\"", "engine.io_memory"),
            ("delivery_shares = 0", "engine.delivery_shares"),
            ("intake_shares = 1001", "engine.intake_shares"),
            ("background_shares = 0", "engine.background_shares"),
        ];
        for (line, field) in cases {
            let text = format!("[engine]\n{line}\n");
            let e = Config::parse(&text, "c.toml").unwrap_err();
            assert!(e.0.starts_with(&format!("c.toml: {field}:")), "{e}");
            assert!(!e.0.contains('\n'), "{e}");
        }
        // Wrong types are serde's to report, with the line.
        for line in ["io_memory = -1", "io_memory = true", "intake_shares = -5"] {
            let e = Config::parse(&format!("[engine]\n\n{line}\n"), "c.toml").unwrap_err();
            assert!(e.0.starts_with("c.toml: line 3:"), "{e}");
            assert!(!e.0.contains('\n'), "{e}");
        }
    }

    #[test]
    fn runtime_keys_are_restart_only() {
        let old = Config::parse("[engine]\nshards = 2\n", "t.toml").unwrap();
        assert!(old.restart_only_changes(&old).is_empty());
        let new = Config::parse(
            "[engine]\nshards = 2\npreempt_timer = \"50ms\"\nintake_shares = 100\nio_memory = \"4MiB\"\n[delivery]\npaused = true\n",
            "t.toml",
        )
        .unwrap();
        assert_eq!(
            old.restart_only_changes(&new),
            [
                "engine.preempt_timer",
                "engine.io_memory",
                "engine.intake_shares"
            ]
        );
    }
}
