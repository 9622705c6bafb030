//! The configuration's raw shape, as serde reads it (`deny_unknown_fields` everywhere), and
//! `validate`, which turns it into the typed `Config` or a one-line error.

use super::units::{duration_text, parse_socket_addr, resolv_conf_nameservers, system_hostname};
use super::*;
use super::{admin, cluster, egress, rules, sender};
use serde::Deserialize;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
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
    admin: admin::RawAdmin,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default)]
    providers: BTreeMap<String, RawProvider>,
    #[serde(default)]
    listeners: Vec<RawListener>,
    #[serde(default)]
    users: Vec<RawUser>,
    #[serde(default)]
    dkim: Vec<sender::RawDkim>,
    #[serde(default)]
    suppression: sender::RawSuppression,
    #[serde(default)]
    unsubscribe: sender::RawUnsubscribe,
    #[serde(default)]
    checks: sender::RawChecks,
    #[serde(default)]
    sources: BTreeMap<String, egress::RawSource>,
    #[serde(default)]
    pools: BTreeMap<String, egress::RawPool>,
    #[serde(default)]
    tenants: BTreeMap<String, egress::RawTenant>,
    #[serde(default)]
    warmup: BTreeMap<String, egress::RawWarmup>,
    #[serde(default)]
    rules: Vec<rules::RawRule>,
    cluster: Option<cluster::RawCluster>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawEngine {
    shards: Option<usize>,
    data_dir: Option<PathBuf>,
    connections_max: Option<u32>,
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
    ip_connection_limit: Option<u32>,
    pipeline_transactions: Option<bool>,
    chunking: Option<bool>,
    paused: Option<bool>,
    allow_private_destinations: Option<bool>,
    default_rules: Option<bool>,
    gateway_priority: Option<bool>,
    tls: Option<String>,
    recipients_per_transaction: Option<u32>,
    throttle_cut: Option<f64>,
    throttle_step: Option<f64>,
    throttle_quiet: Option<String>,
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
    pipeline_transactions: Option<bool>,
    chunking: Option<bool>,
    throttle_cut: Option<f64>,
    throttle_step: Option<f64>,
    throttle_quiet: Option<String>,
    provider_connection_limit: Option<u32>,
    provider_max_message_rate: Option<String>,
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
    #[serde(default)]
    proxy_protocol_from: Vec<String>,
    max_message_size: Option<String>,
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    max_recipients: Option<usize>,
    auth_failures_max: Option<u32>,
    auth_lockout: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUser {
    name: String,
    password_hash: String,
    #[serde(default)]
    allowed_from: Vec<String>,
    daily_limit: Option<u64>,
    rate_limit: Option<String>,
    pool: Option<String>,
}

pub(super) fn validate(raw: RawConfig, source: &str) -> Result<Config, ConfigError> {
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
        ip_connection_limit: raw
            .delivery
            .ip_connection_limit
            .unwrap_or(crate::delivery::endpoints::IP_CONNECTION_LIMIT),
        pipeline_transactions: raw.delivery.pipeline_transactions.unwrap_or(true),
        gateway_priority: raw.delivery.gateway_priority.unwrap_or(true),
        chunking: raw.delivery.chunking.unwrap_or(true),
        paused: raw.delivery.paused.unwrap_or(false),
        allow_private_destinations: raw.delivery.allow_private_destinations.unwrap_or(false),
        tls: crate::delivery::tls::parse_policy(
            raw.delivery.tls.as_deref().unwrap_or("opportunistic"),
        )
        .map_err(|m| err("delivery.tls", m))?,
        recipients_per_transaction: raw.delivery.recipients_per_transaction.unwrap_or(50),
        controller: controller(
            "delivery",
            Default::default(),
            raw.delivery.throttle_cut,
            raw.delivery.throttle_step,
            &raw.delivery.throttle_quiet,
            &err,
        )?,
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
    if delivery.ip_connection_limit == 0 {
        return Err(err(
            "delivery.ip_connection_limit",
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

    let admin = admin::validate_admin(raw.admin, &err)?;
    let cluster = cluster::validate_cluster(raw.cluster, &err)?;

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
        // A scope key is `provider@source` once sources exist.
        if name.contains('@') || name.is_empty() {
            return Err(err(&field, "a provider's name cannot contain '@'".into()));
        }
        let provider_max_message_rate = match p.provider_max_message_rate {
            Some(s) => Some(
                parse_rate(&s)
                    .map_err(|m| err(&format!("{field}.provider_max_message_rate"), m))?,
            ),
            None => None,
        };
        if p.provider_connection_limit == Some(0) {
            return Err(err(
                &format!("{field}.provider_connection_limit"),
                "must be at least 1".into(),
            ));
        }
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
        let controller = controller(
            &field,
            delivery.controller,
            p.throttle_cut,
            p.throttle_step,
            &p.throttle_quiet,
            &err,
        )?;
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
                pipeline_transactions: p.pipeline_transactions,
                chunking: p.chunking,
                controller,
                provider_connection_limit: p.provider_connection_limit,
                provider_max_message_rate,
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
        let networks = |key: &str, list: &[String]| {
            let mut nets = Vec::new();
            for (j, n) in list.iter().enumerate() {
                // A bare address is a network of one.
                let net = n
                    .parse::<ipnet::IpNet>()
                    .or_else(|_| n.parse::<std::net::IpAddr>().map(ipnet::IpNet::from));
                nets.push(net.map_err(|_| {
                    err(
                        &format!("{field}.{key}[{j}]"),
                        format!("not a CIDR network or address: {n:?}"),
                    )
                })?);
            }
            Ok::<_, ConfigError>(nets)
        };
        let relay_networks = networks("relay_networks", &l.relay_networks)?;
        let proxy_protocol_from = networks("proxy_protocol_from", &l.proxy_protocol_from)?;
        let max_message_size_bytes = match l.max_message_size {
            Some(s) => parse_size(&s).map_err(|m| err(&format!("{field}.max_message_size"), m))?,
            None => DEFAULT_MAX_MESSAGE_SIZE,
        };
        let positive = |key: &str, v: Option<usize>, default: usize| match v {
            Some(0) => Err(err(&format!("{field}.{key}"), "must be at least 1".into())),
            Some(n) => Ok(n),
            None => Ok(default),
        };
        let max_connections = positive(
            "max_connections",
            l.max_connections,
            DEFAULT_LISTENER_CONNECTIONS_MAX,
        )?;
        let max_connections_per_ip = positive(
            "max_connections_per_ip",
            l.max_connections_per_ip,
            DEFAULT_LISTENER_CONNECTIONS_PER_IP_MAX,
        )?;
        let max_recipients = positive(
            "max_recipients",
            l.max_recipients,
            DEFAULT_LISTENER_RECIPIENTS_MAX,
        )?;
        if max_recipients > crate::intake::PICKUP_RECIPIENTS_MAX {
            return Err(err(
                &format!("{field}.max_recipients"),
                format!("at most {}", crate::intake::PICKUP_RECIPIENTS_MAX),
            ));
        }
        let auth_failures_max = positive(
            "auth_failures_max",
            l.auth_failures_max.map(|n| n as usize),
            DEFAULT_AUTH_FAILURES_MAX as usize,
        )? as u32;
        let auth_lockout = match l.auth_lockout {
            Some(s) => parse_duration(&s).map_err(|m| err(&format!("{field}.auth_lockout"), m))?,
            None => DEFAULT_AUTH_LOCKOUT,
        };
        listeners.push(Listener {
            listen,
            tls,
            cert: l.cert,
            key: l.key,
            relay_networks,
            proxy_protocol_from,
            max_message_size_bytes,
            max_connections,
            max_connections_per_ip,
            max_recipients,
            auth_failures_max,
            auth_lockout,
        });
    }

    let rules = rules::validate_rules(
        raw.rules,
        raw.delivery.default_rules.unwrap_or(true),
        &providers,
        &err,
    )?;
    let egress = egress::validate_egress(
        raw.sources,
        raw.pools,
        raw.tenants,
        (raw.warmup, &providers),
        &helo_name,
        &err,
    )?;
    let mut users = Vec::new();
    for (i, u) in raw.users.into_iter().enumerate() {
        crate::gateway::password::check_hash(&u.password_hash)
            .map_err(|why| err(&format!("users[{i}].password_hash"), why))?;
        if u.name.is_empty() || u.name.len() > USER_NAME_BYTES_MAX {
            return Err(err(
                &format!("users[{i}].name"),
                format!("must be 1 to {USER_NAME_BYTES_MAX} bytes"),
            ));
        }
        if users.iter().any(|v: &User| v.name == u.name) {
            return Err(err(
                &format!("users[{i}].name"),
                format!("{:?} is already a user", u.name),
            ));
        }
        let rate_limit = match u.rate_limit {
            Some(s) => Some(parse_rate(&s).map_err(|m| err(&format!("users[{i}].rate_limit"), m))?),
            None => None,
        };
        if let Some(pool) = &u.pool {
            if !egress.pools.contains_key(pool) {
                return Err(err(
                    &format!("users[{i}].pool"),
                    format!("unknown pool {pool:?}"),
                ));
            }
        }
        users.push(User {
            name: u.name,
            password_hash: u.password_hash,
            allowed_from: u.allowed_from,
            daily_limit: u.daily_limit,
            rate_limit,
            pool: u.pool,
        });
    }
    let dkim = sender::validate_dkim(raw.dkim, &err)?;
    let suppression = sender::validate_suppression(raw.suppression, &err)?;
    let unsubscribe = sender::validate_unsubscribe(raw.unsubscribe, &err)?;
    let checks = sender::validate_checks(&raw.checks, &err)?;
    let connections_max = match raw.engine.connections_max {
        Some(n) if (n as usize) < shards => {
            return Err(err(
                "engine.connections_max",
                format!("at least one connection per shard ({shards} shards), got {n}"),
            ))
        }
        other => other,
    };
    Ok(Config {
        source: source.to_string(),
        engine: Engine {
            shards,
            connections_max,
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
        admin,
        routes,
        providers,
        listeners,
        users,
        egress,
        rules,
        signers: crate::dkim::Signers::new(dkim.iter().map(|d| std::sync::Arc::clone(&d.signer))),
        dkim,
        suppression,
        unsubscribe,
        checks,
        cluster,
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

/// The throttle controller's keys of `section` over `base`, each checked against its range.
fn controller(
    section: &str,
    base: crate::delivery::throttle::Controller,
    cut: Option<f64>,
    step: Option<f64>,
    quiet: &Option<String>,
    err: &dyn Fn(&str, String) -> ConfigError,
) -> Result<crate::delivery::throttle::Controller, ConfigError> {
    let mut c = base;
    if let Some(cut) = cut {
        if !(0.1..=0.95).contains(&cut) {
            return Err(err(
                &format!("{section}.throttle_cut"),
                format!("must be between 0.1 and 0.95, got {cut}"),
            ));
        }
        c.cut = cut;
    }
    if let Some(step) = step {
        if !(0.01..=1.0).contains(&step) {
            return Err(err(
                &format!("{section}.throttle_step"),
                format!("must be between 0.01 and 1, got {step}"),
            ));
        }
        c.step = step;
    }
    if let Some(q) = quiet {
        let field = format!("{section}.throttle_quiet");
        let d = super::units::parse_duration(q).map_err(|m| err(&field, m))?;
        if d < Duration::from_secs(1) || d > Duration::from_secs(3600) {
            return Err(err(&field, format!("must be between 1s and 1h, got {q:?}")));
        }
        c.quiet = d;
    }
    Ok(c)
}
