//! The configuration's tests: INTERFACE.md's example, defaults, errors, units.

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
password_hash = "$argon2id$v=19$m=19456,t=2,p=1$QtlS48DZr5YGIUU4hl1nQA$TwYSqxSOArfkbaTnulFxvASMRnA4bmCeHbBuaMScmO4"
allowed_from = ["@acme.example"]
daily_limit = 100000
[[dkim]]
domain = "acme.example"
selector = "s2026"
key = "{DKIM_KEY}"
[suppression]
files = ["{SUPPRESSED}"]
[unsubscribe]
url = "https://unsub.acme.example/u/{{ token }}"
mailto = "unsubscribe@acme.example"
secret = "0123456789abcdef0123"
[checks]
dkim = "refuse"
unsubscribe = "warn"
from = "off"
"#;
    let key = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/dkim/ed25519.pem"
    );
    let suppressed = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/suppressed.txt");
    let text = text
        .replace("{DKIM_KEY}", key)
        .replace("{SUPPRESSED}", suppressed);
    let c = Config::parse(&text, "t.toml").unwrap();
    assert_eq!(c.engine.shards, 2);
    assert_eq!(c.signers.aligned("news.acme.example").len(), 1);
    assert_eq!(c.checks.dkim, CheckAction::Refuse);
    assert_eq!(c.checks.from, CheckAction::Off);
    assert!(!format!("{:?}", c.unsubscribe).contains("0123456789"));
    for (text, want) in [
        (
            "[unsubscribe]\nmailto = \"u@x.example\"\n",
            "unsubscribe.secret: at least 16",
        ),
        (
            "[unsubscribe]\nurl = \"https://x.example/u\"\nsecret = \"0123456789abcdef\"\n",
            "lacks {{ token }}",
        ),
        (
            "[checks]\ndkim = \"maybe\"\n",
            "checks.dkim: \"maybe\": expected",
        ),
    ] {
        let e = Config::parse(text, "t.toml").unwrap_err().0;
        assert!(e.contains(want), "{e}");
    }
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

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$QtlS48DZr5YGIUU4hl1nQA$TwYSqxSOArfkbaTnulFxvASMRnA4bmCeHbBuaMScmO4";

#[test]
fn listener_limits_and_user_rates_have_defaults_and_parse() {
    let text = format!(
        "[[listeners]]\nlisten = \"127.0.0.1:2587\"\ntls = \"none\"\n\
         [[listeners]]\nlisten = \"127.0.0.1:2588\"\ntls = \"none\"\nmax_connections = 20\n\
         max_connections_per_ip = 2\nmax_recipients = 50\nauth_failures_max = 3\nauth_lockout = \"1h\"\n\
         [[users]]\nname = \"u\"\npassword_hash = \"{HASH}\"\nrate_limit = \"100/min\"\n"
    );
    let c = Config::parse(&text, "t.toml").unwrap();
    let (d, l) = (&c.listeners[0], &c.listeners[1]);
    assert_eq!(d.max_connections, DEFAULT_LISTENER_CONNECTIONS_MAX);
    assert_eq!(
        d.max_connections_per_ip,
        DEFAULT_LISTENER_CONNECTIONS_PER_IP_MAX
    );
    assert_eq!(d.max_recipients, DEFAULT_LISTENER_RECIPIENTS_MAX);
    assert_eq!(d.auth_failures_max, DEFAULT_AUTH_FAILURES_MAX);
    assert_eq!(d.auth_lockout, DEFAULT_AUTH_LOCKOUT);
    assert_eq!(
        (
            l.max_connections,
            l.max_connections_per_ip,
            l.max_recipients
        ),
        (20, 2, 50)
    );
    assert_eq!((l.auth_failures_max, l.auth_lockout.as_secs()), (3, 3600));
    assert_eq!(
        c.users[0].rate_limit,
        Some(Rate {
            messages: 100,
            per: Duration::from_secs(60)
        })
    );
    let e = Config::parse(
        "[suppression]\nfiles = [\"/nonexistent/list.txt\"]\n",
        "t.toml",
    )
    .unwrap_err()
    .0;
    assert!(
        e.starts_with("t.toml: suppression.files[0]: /nonexistent/list.txt: cannot read"),
        "{e}"
    );
}

#[test]
fn bad_values_name_their_field() {
    let cases: &[(&str, &str)] = &[
        (
            "[providers.g]\nmax_message_rate = \"3/x\"\n",
            "providers.g.max_message_rate",
        ),
        ("[engine]\nshards = 0\n", "engine.shards"),
        (
            "[engine]\nshards = 4\nconnections_max = 3\n",
            "engine.connections_max",
        ),
        ("[queue]\nsegment_bytes = \"1KB\"\n", "queue.segment_bytes"),
        ("[admin]\nlisten = \"nope\"\n", "admin.listen"),
        ("[admin]\nlisten = \"0.0.0.0:8025\"\n", "admin.token"),
        (
            "[admin]\nlisten = \"0.0.0.0:8025\"\ntoken = \"short\"\n",
            "admin.token",
        ),
        ("[admin]\ncert = \"/nonexistent.pem\"\n", "admin.key"),
        (
            "[admin]\ncert = \"/nonexistent.pem\"\nkey = \"/nonexistent.pem\"\n",
            "admin.cert",
        ),
        ("[admin]\nmetrics_scopes = 5000\n", "admin.metrics_scopes"),
        ("[cluster]\nnode = \"a\"\n", "cluster.redis"),
        ("[cluster]\nredis = \"redis://h\"\n", "cluster.node"),
        (
            "[cluster]\nredis = \"redis://h\"\nnode = \"a b\"\n",
            "cluster.node",
        ),
        (
            "[cluster]\nredis = \"http://h\"\nnode = \"a\"\n",
            "cluster.redis",
        ),
        (
            "[cluster]\nredis = \"redis://h\"\nnode = \"a\"\nfailover = [\"rediss://r\"]\n",
            "cluster.failover[0]",
        ),
        (
            "[cluster]\nredis = \"redis://:pw@h\"\nnode = \"a\"\npassword = \"x\"\n",
            "cluster.password",
        ),
        (
            "[cluster]\nredis = \"redis://h\"\nnode = \"a\"\ntls_ca_file = \"/x.pem\"\n",
            "cluster.tls_ca_file",
        ),
        (
            "[cluster]\nredis = \"redis://h\"\nnode = \"a\"\nlease = \"100ms\"\n",
            "cluster.lease",
        ),
        (
            "[cluster]\nredis = \"redis://h\"\nnode = \"a\"\nfallback_share = 0.0\n",
            "cluster.fallback_share",
        ),
        (
            "[cluster]\nredis = \"redis://h\"\nnode = \"a\"\nsecret = \"short\"\n",
            "cluster.secret",
        ),
        (
            "[cluster]\nredis = \"redis://h\"\nnode = \"a\"\nadvertise = \"10.0.0.2:8026\"\n",
            "cluster.advertise",
        ),
        ("[sources.a]\naddress = \"nope\"\n", "sources.a.address"),
        ("[sources.a]\naddress = \"0.0.0.0\"\n", "sources.a.address"),
        ("[sources.\"a b\"]\naddress = \"127.0.0.2\"\n", "sources.a b"),
        (
            "[sources.a]\naddress = \"127.0.0.2\"\n[sources.b]\naddress = \"127.0.0.2\"\n",
            "sources.b.address",
        ),
        ("[pools.p]\nsources = [\"a\"]\n", "pools.p"),
        (
            "[sources.a]\naddress = \"127.0.0.2\"\n[pools.p]\nsources = [\"b\"]\n",
            "pools.p.sources",
        ),
        (
            "[sources.a]\naddress = \"127.0.0.2\"\n[pools.p]\nsources = [\"a\"]\nweights = [1, 2]\n",
            "pools.p.weights",
        ),
        (
            "[sources.a]\naddress = \"127.0.0.2\"\n[pools.p]\nsources = [\"a\"]\nweights = [0]\n",
            "pools.p.weights",
        ),
        ("[tenants.t]\npool = \"p\"\n", "tenants.t.pool"),
        (
            "[[rules]]\nname = \"r\"\nmatch = \"(unclosed\"\naction = \"suspend\"\n",
            "rules[0].match",
        ),
        (
            "[[rules]]\nname = \"r\"\nmatch = \"x\"\naction = \"explode\"\n",
            "rules[0].action",
        ),
        (
            "[[rules]]\nname = \"r\"\nmatch = \"x\"\naction = \"cap_rate\"\n",
            "rules[0].rate",
        ),
        (
            "[[rules]]\nname = \"r\"\nmatch = \"x\"\naction = \"suspend\"\nproviders = [\"nope\"]\n",
            "rules[0].providers",
        ),
        (
            "[[rules]]\nname = \"r\"\nmatch = \"x\"\naction = \"suspend\"\n[[rules]]\nname = \"r\"\nmatch = \"y\"\naction = \"bounce\"\n",
            "rules[1].name",
        ),
        ("[providers.\"y@x\"]\n", "providers.y@x"),
        (
            "[providers.y]\nprovider_connection_limit = 0\n",
            "providers.y.provider_connection_limit",
        ),
        (
            "[providers.y]\nprovider_max_message_rate = \"fast\"\n",
            "providers.y.provider_max_message_rate",
        ),
        ("[delivery]\nthrottle_cut = 1.5\n", "delivery.throttle_cut"),
        ("[providers.y]\nthrottle_step = 0\n", "providers.y.throttle_step"),
        ("[providers.y]\nthrottle_quiet = \"2h\"\n", "providers.y.throttle_quiet"),
        ("[unsubscribe]\nlisten = \"127.0.0.1:8080\"\n", "unsubscribe.listen"),
        (
            "[[listeners]]\nlisten = \"0.0.0.0:25\"\ntls = \"none\"\n",
            "listeners[0].tls",
        ),
        ("[dns]\nnameservers = [\"x\"]\n", "dns.nameservers"),
        (
            "[[listeners]]\nlisten = \"127.0.0.1:2587\"\ntls = \"none\"\nrelay_networks = [\"10.0.0.0/8\", \"10.0.0.0/33\"]\n",
            "listeners[0].relay_networks[1]",
        ),
        (
            "[[users]]\nname = \"u\"\npassword_hash = \"secret\"\n",
            "users[0].password_hash",
        ),
        (
            "[[listeners]]\nlisten = \"127.0.0.1:2587\"\ntls = \"none\"\nmax_connections = 0\n",
            "listeners[0].max_connections",
        ),
        (
            "[[listeners]]\nlisten = \"127.0.0.1:2587\"\ntls = \"none\"\nauth_lockout = \"soon\"\n",
            "listeners[0].auth_lockout",
        ),
        (
            &format!("[[users]]\nname = \"u\"\npassword_hash = \"{HASH}\"\nrate_limit = \"5/day\"\n"),
            "users[0].rate_limit",
        ),
        (
            &format!("[[users]]\nname = \"u\"\npassword_hash = \"{HASH}\"\n[[users]]\nname = \"u\"\npassword_hash = \"{HASH}\"\n"),
            "users[1].name",
        ),
    ];
    for &(text, field) in cases {
        let e = Config::parse(text, "c.toml").unwrap_err();
        assert!(e.0.starts_with(&format!("c.toml: {field}:")), "{e}");
    }
}

#[test]
fn connections_max_is_optional_and_restart_only() {
    let unset = Config::parse("[engine]\nshards = 2\n", "c.toml").unwrap();
    assert_eq!(unset.engine.connections_max, None);
    let set = Config::parse("[engine]\nshards = 2\nconnections_max = 500\n", "c.toml").unwrap();
    assert_eq!(set.engine.connections_max, Some(500));
    assert_eq!(unset.restart_only_changes(&set), ["engine.connections_max"]);
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

#[test]
fn connections_per_address_and_pipelining_keys() {
    let c = Config::parse("", "t").unwrap();
    assert_eq!(c.delivery.ip_connection_limit, 100);
    assert!(c.delivery.pipeline_transactions);
    assert!(c.delivery.chunking);
    let text = "[delivery]\nip_connection_limit = 7\npipeline_transactions = false\nchunking = false\n[providers.x]\nmx_suffixes = [\".x.test\"]\npipeline_transactions = true\nchunking = true\n[providers.y]\nmx_suffixes = [\".y.test\"]\n";
    let c = Config::parse(text, "t").unwrap();
    assert_eq!(c.delivery.ip_connection_limit, 7);
    assert!(!c.delivery.pipeline_transactions);
    assert!(!c.delivery.chunking);
    assert_eq!(c.providers["x"].pipeline_transactions, Some(true));
    assert_eq!(c.providers["x"].chunking, Some(true));
    assert_eq!(c.providers["y"].chunking, None);
    let e = Config::parse("[delivery]\nip_connection_limit = 0\n", "t").unwrap_err();
    assert!(e.0.contains("delivery.ip_connection_limit"), "{}", e.0);
}

#[test]
fn dkim_entries_are_checked_with_their_keys() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/dkim");
    let entry = |domain: &str, selector: &str, key: &str, extra: &str| {
        let text = format!(
            "[[dkim]]\ndomain = {domain:?}\nselector = {selector:?}\nkey = \"{dir}/{key}\"\n{extra}"
        );
        Config::parse(&text, "t.toml")
    };
    let c = entry("Acme.Example", "s2026", "rsa2048.pem", "expire = \"7d\"").unwrap();
    assert_eq!(c.dkim[0].domain, "acme.example");
    assert_eq!(c.dkim[0].expire, Some(Duration::from_secs(7 * 86_400)));
    assert!(c
        .describe()
        .contains("dkim rsa-sha256: s2026._domainkey.acme.example TXT \"v=DKIM1; k=rsa; p="));
    let e = entry("acme.example", "s", "rsa1024.pem", "").unwrap_err().0;
    assert!(
        e.starts_with("t.toml: dkim[0].key: ") && e.contains("rsa1024.pem: RSA key too small"),
        "{e}"
    );
    let e = entry("acme.example", "s", "absent.pem", "").unwrap_err().0;
    assert!(
        e.contains("dkim[0].key: ") && e.contains("absent.pem: cannot read"),
        "{e}"
    );
    let e = entry("acme.example", "a b", "ed25519.pem", "")
        .unwrap_err()
        .0;
    assert!(
        e.contains("dkim[0].selector: \"a b\" is not a DNS label"),
        "{e}"
    );
    let e = entry("not a domain", "s", "ed25519.pem", "").unwrap_err().0;
    assert!(
        e.contains("dkim[0].domain: \"not a domain\" is not a domain"),
        "{e}"
    );
}

#[test]
fn the_admin_token_is_required_off_loopback_and_checked_exactly() {
    let c = Config::parse(
        "[admin]\nlisten = \"0.0.0.0:8025\"\ntoken = \"0123456789abcdef\"\n",
        "t",
    )
    .unwrap();
    assert!(c.admin.authorized(Some(b"Bearer 0123456789abcdef")));
    assert!(!c.admin.authorized(Some(b"Bearer 0123456789abcdeF")));
    assert!(!c.admin.authorized(Some(b"Bearer 0123456789abcdef0")));
    assert!(!c.admin.authorized(Some(b"0123456789abcdef")));
    assert!(!c.admin.authorized(None));
    let open = Config::parse("", "t").unwrap();
    assert_eq!(open.admin.listen.to_string(), "127.0.0.1:8025");
    assert!(open.admin.authorized(None));
    assert!(!format!("{c:?}").contains("0123456789abcdef"));
}

#[test]
fn a_provider_s_throttle_parameters_default_to_delivery_s() {
    let c = Config::parse(
        "[delivery]\nthrottle_cut = 0.5\n[providers.y]\nthrottle_quiet = \"10s\"\n[providers.z]\nthrottle_step = 0.2\nthrottle_cut = 0.8\n",
        "t",
    )
    .unwrap();
    let y = c.providers["y"].controller;
    assert_eq!((y.cut, y.step, y.quiet.as_secs()), (0.5, 0.1, 10));
    let z = c.providers["z"].controller;
    assert_eq!((z.cut, z.step, z.quiet.as_secs()), (0.8, 0.2, 60));
    assert_eq!(c.delivery.controller.cut, 0.5);
    let plain = Config::parse("", "t").unwrap();
    assert_eq!(
        plain.delivery.controller,
        crate::delivery::throttle::Controller::default()
    );
}

#[test]
fn sources_pools_and_tenants() {
    let c = Config::parse(
        "[smtp]\nhelo_name = \"mta.example\"\n\
         [sources.b]\naddress = \"192.0.2.11\"\nhelo_name = \"b.example\"\n\
         [sources.a]\naddress = \"2001:db8::10\"\n\
         [pools.default]\nsources = [\"a\", \"b\"]\nweights = [3, 1]\n\
         [pools.warm]\nsources = [\"b\"]\n\
         [tenants.acme]\npool = \"warm\"\n\
         [providers.y]\nconnection_limit = 4\nprovider_connection_limit = 10\nprovider_max_message_rate = \"100/s\"\n",
        "t",
    )
    .unwrap();
    let e = &c.egress;
    // By name; a source without its own EHLO name says the system's.
    assert_eq!(e.sources[0].name, "a");
    assert_eq!(e.sources[0].helo_name, "mta.example");
    assert_eq!(e.sources[1].helo_name, "b.example");
    assert_eq!(e.pools["default"].members, [(0, 3), (1, 1)]);
    // A pool named wins, then the tenant's, then the default.
    assert_eq!(e.pool_for(Some("warm"), "x"), Ok(Some("warm")));
    assert_eq!(e.pool_for(None, "acme"), Ok(Some("warm")));
    assert_eq!(e.pool_for(None, "other"), Ok(Some("default")));
    assert!(e
        .pool_for(Some("cold"), "x")
        .unwrap_err()
        .contains("unknown pool"));
    let y = &c.providers["y"];
    assert_eq!(y.provider_connection_limit, Some(10));
    assert_eq!(y.provider_max_message_rate.unwrap().messages, 100);
    // Without sources, nothing changes: no pool, the system's address.
    let c = Config::parse("", "t").unwrap();
    assert!(c.egress.is_empty());
    assert_eq!(c.egress.pool_for(None, "acme"), Ok(None));
}

#[test]
fn rules_configured_and_shipped() {
    let c = Config::parse(
        "[providers.ms]\nmx_suffixes = [\".ms.test\"]\n\
         [[rules]]\nname = \"slow-down\"\nmatch = \"(?i)too fast\"\nproviders = [\"ms\"]\n\
         action = \"cap_rate\"\nrate = \"5/s\"\nthreshold = 2\nperiod = \"1m\"\nduration = \"10m\"\nramp = \"2m\"\n\
         [[rules]]\nname = \"yahoo-ts03\"\nmatch = \"TS03\"\naction = \"cap_connections\"\nconnections = 1\n",
        "t",
    )
    .unwrap();
    let names: Vec<&str> = c.rules.iter().map(|r| r.name.as_str()).collect();
    // Configured first, in order; a configured rule replaces the shipped one of its name.
    assert_eq!(&names[..2], ["slow-down", "yahoo-ts03"]);
    assert_eq!(names.iter().filter(|n| **n == "yahoo-ts03").count(), 1);
    assert!(names.contains(&"microsoft-banned-ip"));
    let r = &c.rules[0];
    assert_eq!(r.action, crate::delivery::rules::Action::CapRate(5.0));
    assert_eq!(
        (r.threshold, r.period, r.duration, r.ramp),
        (
            2,
            Duration::from_secs(60),
            Duration::from_secs(600),
            Duration::from_secs(120)
        )
    );
    assert!(r.pattern.is_match("421 Too Fast"));
    assert!(!c.rules[1].shipped && c.rules[2].shipped);
    // Without the shipped ones.
    let c = Config::parse("[delivery]\ndefault_rules = false\n", "t").unwrap();
    assert!(c.rules.is_empty());
}

#[test]
fn warmup_schedules_and_their_errors() {
    let base =
        "[providers.y]\nmx_suffixes = [\".y.test\"]\n[providers.g]\nmx_suffixes = [\".g.test\"]\n";
    let c = Config::parse(
        &format!(
            "{base}[warmup.fresh]\ndaily = [50, 100, 500]\n\
             [sources.a]\naddress = \"192.0.2.11\"\nwarmup = \"fresh\"\nwarmup_start = \"2026-12-01\"\n"
        ),
        "t",
    )
    .unwrap();
    let w = &c.egress.warmups["fresh"];
    // Every provider by default; 5% over at least 20 attempts holds.
    assert_eq!(w.providers, ["g", "y"]);
    assert_eq!((w.hold_deferral_bp, w.hold_min_attempts), (500, 20));
    let sw = c.egress.sources[0].warmup.as_ref().unwrap();
    assert_eq!(sw.schedule, "fresh");
    assert_eq!(crate::config::date_text(sw.start_day), "2026-12-01");
    let bad = |extra: &str, want: &str| {
        let e = Config::parse(&format!("{base}{extra}"), "t").unwrap_err().0;
        assert!(e.contains(want), "{e} (wanted {want})");
    };
    let source = "[sources.a]\naddress = \"192.0.2.11\"\n";
    bad(
        &format!("{source}warmup = \"nope\"\nwarmup_start = \"2026-12-01\"\n"),
        "sources.a.warmup: unknown warm-up schedule \"nope\"",
    );
    bad(
        &format!("[warmup.w]\ndaily = [1]\n{source}warmup = \"w\"\n"),
        "sources.a.warmup_start",
    );
    bad(
        &format!(
            "[warmup.w]\ndaily = [1]\n{source}warmup = \"w\"\nwarmup_start = \"2026-02-30\"\n"
        ),
        "YYYY-MM-DD",
    );
    bad("[warmup.w]\ndaily = []\n", "warmup.w.daily: 1 to 366");
    bad("[warmup.w]\ndaily = [10, 0]\n", "got 0");
    bad(
        "[warmup.w]\ndaily = [10]\nproviders = [\"x\"]\n",
        "unknown provider \"x\"",
    );
    bad(
        "[warmup.w]\ndaily = [10]\nhold_deferral_rate = 5\n",
        "between 0 and 1",
    );
}

#[test]
fn tenant_weights_and_gateway_priority() {
    let c = Config::parse("[tenants.gold]\nweight = 3\n[tenants.plain]\n", "t").unwrap();
    assert_eq!(c.egress.tenant_weight("gold"), 3);
    assert_eq!(c.egress.tenant_weight("plain"), 1);
    assert_eq!(c.egress.tenant_weight("unknown"), 1);
    // Tenants alone do not make sources: mail still leaves from the system's address.
    assert!(c.egress.is_empty());
    assert!(c.delivery.gateway_priority);
    let c = Config::parse("[delivery]\ngateway_priority = false\n", "t").unwrap();
    assert!(!c.delivery.gateway_priority);
    for bad in ["0", "1001"] {
        let e = Config::parse(&format!("[tenants.x]\nweight = {bad}\n"), "t")
            .unwrap_err()
            .0;
        assert!(e.contains("tenants.x.weight: a weight is 1 to 1000"), "{e}");
    }
}

#[test]
fn sources_and_rules_have_bounds() {
    let mut text = String::new();
    for i in 0..=crate::config::SOURCES_MAX {
        text.push_str(&format!(
            "[sources.s{i}]\naddress = \"10.{}.{}.1\"\n",
            i / 256,
            i % 256
        ));
    }
    let e = Config::parse(&text, "t").unwrap_err().0;
    assert!(e.contains("at most 256 sources, got 257"), "{e}");
    let mut text = String::new();
    for i in 0..=super::rules::RULES_MAX {
        text.push_str(&format!(
            "[[rules]]\nname = \"r{i}\"\nmatch = \"x\"\naction = \"suspend\"\n"
        ));
    }
    let e = Config::parse(&text, "t").unwrap_err().0;
    assert!(e.contains("at most 200 rules, got 201"), "{e}");
    // A pattern whose compiled form passes the size limit is refused with its rule's name.
    let huge = "[[rules]]\nname = \"big\"\nmatch = \"(?:a{1000}){1000}\"\naction = \"suspend\"\n";
    let e = Config::parse(huge, "t").unwrap_err().0;
    assert!(e.contains("rules[0]") || e.contains("big"), "{e}");
}
