//! The TOML configuration of INTERFACE.md: every key has a default, unknown keys are refused,
//! and every error is one line naming the file and the line or field at fault.
//!
//! Parsing is two steps: serde reads the raw shape (with `deny_unknown_fields`), then
//! `validate` turns strings such as `"300/s"` or `"25MB"` into typed values, so the rest of
//! the engine never sees an unchecked value.
//!
//! Files: this one holds the typed configuration, its defaults and what is said about it
//! (`describe`, reload notes); `raw` the raw shape and its validation; `sender` those of the
//! sender-rules sections (DKIM keys, suppression files, unsubscribe, checks); `units` the
//! values written as text (rates, durations, sizes, addresses).

mod admin;
pub mod cluster;
mod egress;
mod raw;
mod rules;
mod sender;
#[cfg(test)]
mod tests;
mod units;

pub use egress::{
    date_text, parse_date, Egress, Pool, Source, SourceWarmup, Warmup, DEFAULT_POOL, SOURCES_MAX,
};
pub use units::{duration_text, parse_duration, parse_rate, parse_size};

use raw::{validate, RawConfig};
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
    /// `[sources]`, `[pools]`, `[tenants]`: where mail leaves from.
    pub egress: Egress,
    /// `[[rules]]` and, unless `[delivery] default_rules = false`, the shipped ones: reply
    /// rules, in the order they are tried.
    pub rules: Vec<std::sync::Arc<crate::delivery::rules::Rule>>,
    pub dkim: Vec<Dkim>,
    /// The `[[dkim]]` signers by domain, as the home shards sign with them.
    pub signers: crate::dkim::Signers,
    pub suppression: Suppression,
    pub unsubscribe: Unsubscribe,
    pub checks: Checks,
    /// `[cluster]`: the Redis this node shares provider-wide limits through, if any.
    pub cluster: Option<cluster::Cluster>,
}

#[derive(Debug, Clone)]
pub struct Engine {
    /// Executors, pinned one per CPU. Default: every online CPU.
    pub shards: usize,
    pub data_dir: PathBuf,
    /// Outbound connections across all shards at most (an extension; startup-only). `None`:
    /// what the open-files limit allows (`preflight::connections_per_shard`); a value above
    /// that is held to it.
    pub connections_max: Option<u32>,
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
    /// Connections to one remote address (IP and port) at most, across scopes, engine-wide
    /// (each shard gets its share). Restart only.
    pub ip_connection_limit: u32,
    /// Where the receiver offers PIPELINING, send the next transaction's MAIL, RCPT and DATA
    /// right behind the previous one's final dot (RFC 2920). Reloadable.
    pub pipeline_transactions: bool,
    /// Where the receiver offers CHUNKING, send each message as one `BDAT n LAST` chunk
    /// right behind its MAIL and RCPT, with no 354 to wait for (RFC 3030). Reloadable.
    pub chunking: bool,
    /// Queue only, send nothing (an operator's pause; also the demo's, until simulated ISPs
    /// exist). Reloadable.
    pub paused: bool,
    /// TLS policy for destinations that match no provider.
    pub tls: crate::smtp::session::TlsPolicy,
    /// Recipients of one verbatim message at one domain that share a transaction.
    pub recipients_per_transaction: u32,
    /// (extension) The adaptive throttle's parameters for every scope a provider does not
    /// set them for (`throttle_cut`, `throttle_step`, `throttle_quiet`). Reloadable.
    pub controller: crate::delivery::throttle::Controller,
    /// SMTP client timeouts per phase (RFC 5321 4.5.3.2 defaults).
    pub timeouts: crate::smtp::session::Timeouts,
    /// Connect to addresses from DNS in loopback, private, link-local and other non-public
    /// ranges (`delivery::guard`). Off in production; tests and the demo, whose receivers
    /// are on loopback, turn it on. `[[routes]]` are never checked.
    pub allow_private_destinations: bool,
    /// (extension) Mail submitted over SMTP goes ahead of campaign mail in its scope
    /// (`schedule::lanes`). Default on. Reloadable (for mail accepted from then on).
    pub gateway_priority: bool,
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

#[derive(Clone)]
pub struct Admin {
    pub listen: SocketAddr,
    /// The bearer token every request must carry; required off loopback.
    pub token: Option<String>,
    /// Serve HTTPS with this chain and key (PEM), as for listeners.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// (extension) Scopes named one by one in `/metrics`, busiest first; the rest are summed
    /// into `scope="other"`.
    pub metrics_scopes: usize,
}

impl fmt::Debug for Admin {
    /// Never shows the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Admin")
            .field("listen", &self.listen)
            .field("token", &self.token.as_ref().map(|_| "(set)"))
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("metrics_scopes", &self.metrics_scopes)
            .finish()
    }
}

impl Admin {
    /// The request's `Authorization` is acceptable: no token configured (loopback only), or
    /// `Bearer <token>`, compared in constant time.
    pub fn authorized(&self, authorization: Option<&[u8]>) -> bool {
        match &self.token {
            Some(token) => bearer_matches(authorization, token),
            None => true,
        }
    }
}

/// `Authorization: Bearer <want>`, compared in constant time (the admin token, and the
/// cluster's secret at the node-to-node endpoint).
pub fn bearer_matches(authorization: Option<&[u8]>, want: &str) -> bool {
    let Some(given) = authorization.and_then(|a| a.strip_prefix(b"Bearer ")) else {
        return false;
    };
    let want = want.as_bytes();
    given.len() == want.len()
        && given
            .iter()
            .zip(want)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// (extension) The listener of the RFC 8058 one-click endpoint: it serves `[unsubscribe]
/// url`'s path and may face the internet.
#[derive(Debug, Clone)]
pub struct UnsubscribeListener {
    pub listen: SocketAddr,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
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
    /// Send the next transaction's commands behind the previous one's final dot (extension;
    /// `[delivery] pipeline_transactions` when unset).
    pub pipeline_transactions: Option<bool>,
    /// Send messages with BDAT where offered (extension; `[delivery] chunking` when unset).
    pub chunking: Option<bool>,
    /// (extension) The adaptive throttle's parameters (over `[delivery]`'s).
    pub controller: crate::delivery::throttle::Controller,
    /// With sources: the provider's connections and rate across all of them
    /// (`connection_limit` and `max_message_rate` then apply per source).
    pub provider_connection_limit: Option<u32>,
    pub provider_max_message_rate: Option<Rate>,
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

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    pub listen: SocketAddr,
    pub tls: ListenerTls,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub relay_networks: Vec<ipnet::IpNet>,
    /// Load balancers whose connections start with a PROXY protocol header naming the
    /// client (`gateway::proxy`); nobody else's may.
    pub proxy_protocol_from: Vec<ipnet::IpNet>,
    pub max_message_size_bytes: u64,
    /// Sessions open at once on this listener, across shards (a message in a session is held
    /// in memory until queued: the listener's memory bound is this times
    /// `max_message_size_bytes`).
    pub max_connections: usize,
    pub max_connections_per_ip: usize,
    /// Recipients one message may have (452 4.5.3 past it).
    pub max_recipients: usize,
    /// Failed AUTH attempts from one client address (across sessions, within
    /// `auth_lockout`) that lock it out for `auth_lockout`.
    pub auth_failures_max: u32,
    pub auth_lockout: Duration,
}

#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub password_hash: String,
    pub allowed_from: Vec<String>,
    /// Recipients of accepted messages per UTC day.
    pub daily_limit: Option<u64>,
    /// Recipients per period, taken at RCPT.
    pub rate_limit: Option<Rate>,
    /// The pool this user's mail leaves from (over its tenant's default).
    pub pool: Option<String>,
}

/// One `[[dkim]]` entry, its key loaded and checked when the configuration was read.
#[derive(Debug, Clone)]
pub struct Dkim {
    /// A-labels, lower case.
    pub domain: String,
    pub selector: String,
    pub key: PathBuf,
    /// `x=`: how long a signature stays valid (an extension; none by default).
    pub expire: Option<Duration>,
    pub signer: std::sync::Arc<crate::dkim::Signer>,
}

#[derive(Debug, Clone)]
pub struct Suppression {
    /// An address or `@domain` per line; read at start and on SIGHUP.
    pub files: Vec<PathBuf>,
    /// (extension) How long a learnt bad-mailbox entry holds. Default 90 days.
    pub bad_mailbox_expire: Duration,
    /// (extension) Learn bad mailboxes from receivers' 5.1.1-class refusals. Default on.
    pub learn_bad_mailboxes: bool,
}

#[derive(Clone, Default)]
pub struct Unsubscribe {
    /// Carries `{{ token }}`.
    pub url: Option<String>,
    pub mailto: Option<String>,
    /// Signs each recipient's token (`compliance::Rules::token`).
    pub secret: String,
    /// (extension) Where the one-click endpoint listens, if Spate serves it.
    pub listener: Option<UnsubscribeListener>,
    /// (extension) Add `Feedback-ID` to campaigns that lack one; on by default once a url
    /// or mailto is set.
    pub feedback_id: bool,
}

impl fmt::Debug for Unsubscribe {
    /// Never shows the secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Unsubscribe")
            .field("url", &self.url)
            .field("mailto", &self.mailto)
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

/// What a failed check before sending does (`[checks]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckAction {
    /// The campaign goes to `bad/` (a gateway message is refused).
    Refuse,
    /// The reason goes to the delivery log (a `Check` record); the mail goes out.
    Warn,
    Off,
}

/// `[checks]` (an extension of INTERFACE.md): what the big providers require, checked for
/// every campaign and submitted message. Each `warn` by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checks {
    /// A `[[dkim]]` key aligned with the From domain.
    pub dkim: CheckAction,
    /// A one-click unsubscribe (campaigns).
    pub unsubscribe: CheckAction,
    /// A From header holding one valid address.
    pub from: CheckAction,
}

impl Checks {
    pub fn off() -> Checks {
        Checks {
            dkim: CheckAction::Off,
            unsubscribe: CheckAction::Off,
            from: CheckAction::Off,
        }
    }
}

// ---- Defaults, named in one place. ----

pub const DEFAULT_DATA_DIR: &str = "/var/lib/spate";
pub const DEFAULT_SPOOL_DIR: &str = "/var/spool/spate";
pub const DEFAULT_LOG_DIR: &str = "/var/log/spate";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:8025";
pub const DEFAULT_METRICS_SCOPES: usize = 50;
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
/// Sessions per listener: with 25 MB messages, up to 5 GB held in memory by clients in the
/// middle of DATA (Postfix's default is 100 smtpd processes).
pub const DEFAULT_LISTENER_CONNECTIONS_MAX: usize = 200;
pub const DEFAULT_LISTENER_CONNECTIONS_PER_IP_MAX: usize = 50;
/// Recipients per message (RFC 5321 asks for at least 100; Postfix allows 1000).
pub const DEFAULT_LISTENER_RECIPIENTS_MAX: usize = 1000;
/// Failed AUTH attempts from one address within `DEFAULT_AUTH_LOCKOUT` before it is locked
/// out for that long.
pub const DEFAULT_AUTH_FAILURES_MAX: u32 = 10;
pub const DEFAULT_AUTH_LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// A user's name, as AUTH gives it.
pub const USER_NAME_BYTES_MAX: usize = 256;
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
            "[engine]\ndata_dir = {:?}\n[delivery]\npaused = true\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[spool]\ndir = {:?}\n[log]\ndir = {:?}\n[checks]\ndkim = \"off\"\nunsubscribe = \"off\"\n[admin]\nlisten = \"127.0.0.1:0\"\n",
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
        line(match self.engine.connections_max {
            Some(n) => format!("connections_max: {n} (startup-only)"),
            None => "connections_max: from the open-files limit (startup-only)".into(),
        });
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
            "delivery: paused={} allow_private_destinations={} retry_first={:?} retry_max_interval={:?} max_age={:?} connect_timeout={:?} site_connection_limit={} ip_connection_limit={}",
            self.delivery.paused,
            self.delivery.allow_private_destinations,
            self.delivery.retry_first,
            self.delivery.retry_max_interval,
            self.delivery.max_age,
            self.delivery.connect_timeout,
            self.delivery.site_connection_limit,
            self.delivery.ip_connection_limit
        ));
        line(format!(
            "spool: {} (keep_done={}, rescan every {} ms)",
            self.spool.dir.display(),
            self.spool.keep_done,
            self.spool.scan_interval.as_millis()
        ));
        line(format!("log: {}", self.log.dir.display()));
        if let Some(c) = &self.cluster {
            line(format!(
                "cluster: node {} on {}://{}:{}/{} (lease {}, fallback_share {}, key_prefix {}; password {}; transfers {}, advertised as {}) (startup-only)",
                c.node,
                if c.tls { "rediss" } else { "redis" },
                c.host,
                c.port,
                c.db,
                duration_text(c.lease),
                c.fallback_share,
                c.key_prefix,
                if c.password.is_some() { "set" } else { "none" },
                if c.secret.is_some() {
                    "taken (secret set)"
                } else {
                    "refused (no secret)"
                },
                c.advertise.as_deref().unwrap_or("the admin API's address")
            ));
            for name in self.providers.keys() {
                let t = crate::cluster::totals(self, name);
                if t.rate.is_some() || t.conns.is_some() {
                    line(format!(
                        "cluster: {name} shared across nodes: rate {}, connections {}",
                        t.rate.map_or("-".into(), |r| format!("{r}/s")),
                        t.conns.map_or("-".into(), |c| c.to_string())
                    ));
                }
            }
        }
        let ns: Vec<String> = self.dns.nameservers.iter().map(|a| a.to_string()).collect();
        line(format!("dns: nameservers [{}]", ns.join(", ")));
        line(format!(
            "smtp: helo_name={} port={}",
            self.smtp.helo_name, self.smtp.port
        ));
        line(format!(
            "admin: http{}://{}/ token {}",
            if self.admin.cert.is_some() { "s" } else { "" },
            self.admin.listen,
            if self.admin.token.is_some() {
                "required"
            } else {
                "not required (loopback)"
            }
        ));
        if let Some(l) = &self.unsubscribe.listener {
            line(format!(
                "unsubscribe: one-click endpoint on http{}://{}/",
                if l.cert.is_some() { "s" } else { "" },
                l.listen
            ));
        }
        for r in &self.routes {
            line(format!("route: {} -> {}", r.domain, r.hosts.join(", ")));
        }
        for (name, p) in &self.providers {
            let rate = p
                .max_message_rate
                .map(|r| format!("{}/{}s", r.messages, r.per.as_secs()))
                .unwrap_or_else(|| "unlimited".into());
            let c = &p.controller;
            line(format!(
                "provider {name}: mx_suffixes [{}] connection_limit={} max_message_rate={rate} max_deliveries_per_connection={} throttle_cut={} throttle_step={} throttle_quiet={}",
                p.mx_suffixes.join(", "),
                p.connection_limit,
                p.max_deliveries_per_connection,
                c.cut,
                c.step,
                duration_text(c.quiet)
            ));
            if p.provider_connection_limit.is_some() || p.provider_max_message_rate.is_some() {
                line(format!(
                    "provider {name} across sources: connections={} rate={}",
                    p.provider_connection_limit
                        .map_or("unlimited".into(), |n| n.to_string()),
                    p.provider_max_message_rate
                        .map_or("unlimited".into(), |r| format!(
                            "{}/{}s",
                            r.messages,
                            r.per.as_secs()
                        ))
                ));
            }
        }
        for s in &self.egress.sources {
            let warmup = s.warmup.as_ref().map_or(String::new(), |w| {
                format!(" warmup {} from {}", w.schedule, date_text(w.start_day))
            });
            line(format!(
                "source {}: address {} helo_name {}{warmup}",
                s.name, s.address, s.helo_name
            ));
        }
        for w in self.egress.warmups.values() {
            line(format!(
                "warmup {}: daily {:?} at {}; held by a day over {:.1}% deferred (at least {} replies)",
                w.name,
                w.daily,
                w.providers.join(", "),
                f64::from(w.hold_deferral_bp) / 100.0,
                w.hold_min_attempts
            ));
        }
        for (name, p) in &self.egress.pools {
            let members: Vec<String> = p
                .members
                .iter()
                .map(|&(i, w)| format!("{}x{w}", self.egress.sources[i].name))
                .collect();
            line(format!("pool {name}: {}", members.join(" ")));
        }
        for (tenant, pool) in &self.egress.tenants {
            line(format!("tenant {tenant}: pool {pool}"));
        }
        for r in &self.rules {
            line(format!(
                "rule {}{}: {} after {} in {} for {}, back over {}; match {}{}",
                r.name,
                if r.shipped { " (shipped)" } else { "" },
                r.action.text(),
                r.threshold,
                duration_text(r.period),
                duration_text(r.duration),
                duration_text(r.ramp),
                r.pattern.as_str(),
                if r.providers.is_empty() {
                    String::new()
                } else {
                    format!(" at {}", r.providers.join(", "))
                }
            ));
        }
        for l in &self.listeners {
            line(format!("listener: {} tls={:?}", l.listen, l.tls));
        }
        // What to publish for each key: the record a verifier will look up.
        for d in &self.dkim {
            line(format!(
                "dkim {}: {} TXT \"{}\"",
                d.signer.algorithm(),
                d.signer.record_name(),
                d.signer.record()
            ));
        }
        line(format!(
            "users: {}, dkim signatures: {}, suppression files: {}",
            self.users.len(),
            self.dkim.len(),
            self.suppression.files.len()
        ));
        line(format!(
            "checks: dkim={:?} unsubscribe={:?} from={:?}",
            self.checks.dkim, self.checks.unsubscribe, self.checks.from
        ));
        out
    }

    /// The keys that differ between `self` and `new` but apply only at the next start, named
    /// as in the file, for the reload message.
    pub fn restart_only_changes(&self, new: &Config) -> Vec<&'static str> {
        let (old_rt, new_rt) = (&self.engine.runtime, &new.engine.runtime);
        [
            (self.engine.shards != new.engine.shards, "engine.shards"),
            (
                self.engine.connections_max != new.engine.connections_max,
                "engine.connections_max",
            ),
            (
                self.engine.data_dir != new.engine.data_dir,
                "engine.data_dir",
            ),
            // Bound, with their TLS settings and relay_networks, when the engine starts.
            (self.listeners != new.listeners, "listeners"),
            // The node joins its cluster (and its threads connect) when the engine starts.
            (self.cluster != new.cluster, "cluster"),
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
}
