//! Cluster mode (`[cluster]`): three engine processes, each with its own data directory and
//! source address (127.0.0.71-73), share one provider's limits through a real Redis server
//! (started by the test on a loopback port) and send to one receiver on loopback. What a
//! user would check: the receiver sees the provider's total rate, not three times it, and
//! nearly all of it; the figures are ratios measured in one run. Every process a test
//! starts is stopped by it.

mod common;

use common::redis::Redis;
use common::sink::Sink;
use common::*;
use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// The provider's total rate across the nodes.
const RATE: f64 = 200.0;
const NODES: usize = 3;
/// Each node's share of the limits while Redis cannot be reached: three of them send 75% of
/// the total then, so the outage shows in the receiver's figures.
const FALLBACK: f64 = 0.25;

/// The tests of this file run one at a time: each runs three engines on a 2-core machine,
/// and their rates are what is measured.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn source(i: usize) -> IpAddr {
    format!("127.0.0.{}", 71 + i).parse().unwrap()
}

struct Cluster {
    envs: Vec<Env>,
    engines: Vec<Option<EngineProcess>>,
    sink: Sink,
    redis: Redis,
    _dns: spate_sim::dns::DnsResponder,
    _dir: tempfile::TempDir,
}

impl Cluster {
    fn start() -> Option<Cluster> {
        let dir = tempfile::tempdir().unwrap();
        let redis = Redis::start(dir.path())?;
        Cluster::start_on(dir, redis, "", &|_| String::new())
    }

    /// Three nodes on `redis`; `cluster_keys` are added to their `[cluster]` sections and
    /// `node_extra(i)` to node i's configuration.
    fn start_on(
        dir: tempfile::TempDir,
        redis: Redis,
        cluster_keys: &str,
        node_extra: &dyn Fn(usize) -> String,
    ) -> Option<Cluster> {
        use spate_sim::dns::{DnsResponder, Zone};
        let mut zone = Zone::default();
        zone.mx
            .insert("isp.test".into(), vec![(10, "mx.isp.test".into())]);
        zone.mx
            .insert("gone.test".into(), vec![(10, "mx.isp.test".into())]);
        zone.mx
            .insert("later.test".into(), vec![(10, "mx.isp.test".into())]);
        zone.hosts
            .insert("mx.isp.test".into(), vec!["127.0.0.1".parse().unwrap()]);
        let dns = DnsResponder::start("127.0.0.1:0".parse().unwrap(), zone).unwrap();
        // gone.test's mailboxes do not exist (550 5.1.1): a node learns each as a bad mailbox;
        // later.test defers each recipient once (450), so it has a retry state.
        let sink = Sink::start(HashMap::from([
            (
                "gone.test".to_string(),
                common::sink::Behaviour::UnknownUser,
            ),
            ("later.test".to_string(), common::sink::Behaviour::DeferOnce),
        ]));
        let mut envs = Vec::new();
        for i in 0..NODES {
            let extra = format!(
                "[delivery]\nallow_private_destinations = true\nretry_first = \"15s\"\n\
                 [dns]\nnameservers = [\"{}\"]\n[smtp]\nport = {}\n\
                 [providers.isp]\nmx_suffixes = [\"mx.isp.test\"]\nconnection_limit = 4\n\
                 provider_max_message_rate = \"{}/s\"\nprovider_connection_limit = 9\n\
                 [sources.n{i}]\naddress = \"{}\"\n\
                 [pools.default]\nsources = [\"n{i}\"]\n\
                 [cluster]\nredis = \"{}\"\nnode = \"n{i}\"\nfallback_share = {FALLBACK}\n{cluster_keys}\n{}",
                dns.addr,
                sink.addr.port(),
                RATE as u64,
                source(i),
                redis.url(),
                node_extra(i)
            );
            envs.push(Env::new(1, "", &extra));
        }
        let engines = envs.iter().map(|e| Some(e.start())).collect();
        let c = Cluster {
            envs,
            engines,
            sink,
            redis,
            _dns: dns,
            _dir: dir,
        };
        for node in 0..NODES {
            wait_until(
                Duration::from_secs(30),
                "every node renews its leases",
                || {
                    c.envs[node].path("data/admin/listen").exists()
                        && c.metric(node, "spate_cluster_renewals_total") >= 1.0
                },
            );
        }
        Some(c)
    }

    fn drop_campaign(&self, node: usize, n: usize) {
        let mut s = format!(
            "{}\n",
            serde_json::json!({
                "campaign": format!("c{node}"), "tenant": "acme", "from": "bounces@acme.example",
                "template": "From: Acme <news@acme.example>\r\nTo: {{ to }}\r\nSubject: hi\r\n\r\nHello\r\n"
            })
        );
        for i in 0..n {
            s.push_str(&format!("{{\"to\":\"r{i}.n{node}@isp.test\"}}\n"));
        }
        self.envs[node].drop_input(&format!("c{node}.jsonl"), s.as_bytes());
    }

    /// RCPT attempts the receiver saw in [from, to), in all and per node.
    fn attempts(&self, from: Instant, to: Instant) -> (usize, Vec<usize>) {
        let got = self.sink.received.lock().unwrap();
        let mut per = vec![0; NODES];
        let mut all = 0;
        for (t, ip) in &got.rcpt_times {
            if *t >= from && *t < to {
                all += 1;
                if let Some(i) = (0..NODES).find(|&i| Some(source(i)) == *ip) {
                    per[i] += 1;
                }
            }
        }
        (all, per)
    }

    /// The receiver's rate in [from, to): in all, and per node.
    fn rate(&self, from: Instant, to: Instant) -> (f64, Vec<f64>) {
        let secs = to.duration_since(from).as_secs_f64();
        let (all, per) = self.attempts(from, to);
        (
            all as f64 / secs,
            per.iter().map(|&n| n as f64 / secs).collect(),
        )
    }

    /// One sample of a node's `/metrics` (its value, summed over label sets).
    fn metric(&self, node: usize, name: &str) -> f64 {
        let reply = self.get(node, "/metrics");
        reply
            .lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
            .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
            .sum()
    }

    /// A node's admin API answer to `GET path` (head and body).
    fn get(&self, node: usize, path: &str) -> String {
        use std::io::{Read, Write};
        let addr = std::fs::read_to_string(self.envs[node].path("data/admin/listen")).unwrap();
        let addr = addr
            .trim()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        reply
    }

    /// `POST path` to a node's admin API with `token`: the status and the body.
    fn post(&self, node: usize, path: &str, token: &str, body: &[u8]) -> (u16, String) {
        use std::io::{Read, Write};
        let addr = std::fs::read_to_string(self.envs[node].path("data/admin/listen")).unwrap();
        let addr = addr
            .trim()
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .unwrap();
        s.write_all(body).unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        let status = reply
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        (status, body.to_string())
    }

    /// `spate ARGS -c CONFIG` for a node, which must succeed.
    fn cli(&self, node: usize, args: &[&str]) {
        let config = self.envs[node].config.to_str().unwrap().to_string();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-c", &config]);
        let (code, out, err) = self.envs[node].run_cli(&all);
        assert_eq!(code, 0, "{out}{err}");
    }

    /// Whether a node's suppression table holds `address` now (for every tenant).
    fn suppressed(&self, node: usize, address: &str) -> bool {
        let reply = self.get(
            node,
            &format!("/api/v1/suppression/check?address={address}&tenant="),
        );
        let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        v["suppressed"] == true
    }

    /// Whether a node's holds suspend `target` now.
    fn suspends(&self, node: usize, target: &str) -> bool {
        let reply = self.get(node, "/api/v1/holds");
        let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
        let v: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
        v["suspended"]
            .as_array()
            .is_some_and(|a| a.iter().any(|r| r["target"] == target))
    }

    fn stop(mut self) {
        for e in self.engines.iter_mut() {
            if let Some(e) = e.take() {
                e.stop(Duration::from_secs(30));
            }
        }
        self.redis.stop();
    }
}

/// Three nodes with mail for one provider capped at RATE in total: the receiver sees at most
/// RATE (and at least 90% of it) while all three send, each about a third.
#[test]
fn three_nodes_share_one_providers_rate() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(c) = Cluster::start() else {
        return;
    };
    for i in 0..NODES {
        c.drop_campaign(i, 1_500);
    }
    // A second process with a live node's name is refused at start, saying why.
    let twin = Env::new(
        1,
        "",
        &format!("[cluster]\nredis = \"{}\"\nnode = \"n1\"\n", c.redis.url()),
    );
    let (code, err) = run_expecting_refusal(&twin.config);
    assert_eq!(code, 78, "{err}");
    // It waited for the name to lapse (a crashed node's would have), then said why, in one
    // line, last.
    let last = err.trim().lines().last().unwrap_or("");
    assert!(last.contains("\"n1\" is live in the cluster"), "{err}");
    // A node of another name sending from node 0's address is refused too (a sending
    // address is one node's: its warm-up counts and own limits are counted there).
    let thief = Env::new(
        1,
        "",
        &format!(
            "[sources.s]\naddress = \"{}\"\n[pools.default]\nsources = [\"s\"]\n[cluster]\nredis = \"{}\"\nnode = \"n9\"\n",
            source(0),
            c.redis.url()
        ),
    );
    let (code, err) = run_expecting_refusal(&thief.config);
    assert_eq!(code, 78, "{err}");
    assert!(
        err.contains(&format!("source address {} is node n0's", source(0))),
        "{err}"
    );
    // Past the first lease periods (grants held at the fallback shares while the nodes
    // register), then 8 s of steady sending.
    std::thread::sleep(Duration::from_secs(6));
    let from = Instant::now();
    std::thread::sleep(Duration::from_secs(8));
    let to = Instant::now();
    let (all, per) = c.attempts(from, to);
    let rate = all as f64 / to.duration_since(from).as_secs_f64();
    eprintln!("cluster of {NODES}: {rate:.1}/s of {RATE}/s in all; per node {per:?}");
    // Any node's status shows the cluster: the three nodes' leases on the provider, within
    // the total, and `/metrics` the same.
    let reply = c.get(2, "/api/v1/status");
    let body = reply.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    let peers = v["cluster"]["peers"].as_array().unwrap();
    assert_eq!(peers.len(), NODES, "{peers:?}");
    let leased: f64 = peers.iter().map(|p| p["rate"].as_f64().unwrap()).sum();
    assert!((RATE * 0.9..=RATE + 0.01).contains(&leased), "{peers:?}");
    assert_eq!(v["cluster"]["connected"], true);
    let metric = c.metric(2, "spate_cluster_peer_lease_rate");
    assert!((RATE * 0.9..=RATE + 0.01).contains(&metric), "{metric}");
    // What the cluster costs in Redis traffic, per message delivered so far.
    let delivered: usize = c.sink.received.lock().unwrap().deliveries.values().sum();
    let (mut commands, mut bytes) = (0.0, 0.0);
    for node in 0..NODES {
        commands += c.metric(node, "spate_cluster_redis_commands_total");
        bytes += c.metric(node, "spate_cluster_redis_bytes_total");
    }
    eprintln!(
        "redis traffic: {commands} commands and {bytes} bytes for {delivered} messages: {:.3} commands and {:.1} bytes a message",
        commands / delivered as f64,
        bytes / delivered as f64
    );
    assert!(
        rate <= RATE * 1.03,
        "{rate:.1}/s is past the total {RATE}/s"
    );
    assert!(rate >= RATE * 0.9, "{rate:.1}/s is below 90% of {RATE}/s");
    for (i, n) in per.iter().enumerate() {
        let share = *n as f64 / all as f64;
        assert!(
            (0.2..0.47).contains(&share),
            "node {i} had {share:.2} of the attempts: {per:?}"
        );
    }
    c.stop();
}

/// Pushback seen by one node slows the other two: they follow its cut. How long that took,
/// from the cutting node's decision to the others' shards following it, is reported (each
/// node's `/metrics`); what is asserted is that they followed and sent slower after it.
#[test]
fn pushback_on_one_node_slows_all() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(c) = Cluster::start() else {
        return;
    };
    for i in 0..NODES {
        c.drop_campaign(i, 3_000);
    }
    std::thread::sleep(Duration::from_secs(6));
    let t = Instant::now();
    let (_, before) = c.rate(t - Duration::from_secs(2), t);
    // Node 0's address is rate limited for 400 ms.
    c.sink.received.lock().unwrap().pushback.insert(source(0));
    std::thread::sleep(Duration::from_millis(400));
    c.sink.received.lock().unwrap().pushback.clear();
    std::thread::sleep(Duration::from_millis(1_100));
    let (_, after) = c.rate(
        t + Duration::from_millis(500),
        t + Duration::from_millis(1_500),
    );
    let mut lags = Vec::new();
    for node in 1..NODES {
        let followed = c.metric(node, "spate_cluster_cuts_followed_total");
        let max = c.metric(node, "spate_cluster_cut_lag_seconds_max");
        let sum = c.metric(node, "spate_cluster_cut_lag_seconds_sum");
        assert!(followed >= 1.0, "node {node} followed no cut");
        lags.push(format!(
            "node {node}: {followed} cuts followed, lag mean {:.1} ms, max {:.1} ms",
            sum / followed * 1000.0,
            max * 1000.0
        ));
    }
    assert!(c.metric(0, "spate_cluster_cuts_published_total") >= 1.0);
    eprintln!(
        "pushback at node 0: per-node rates {before:.1?} before, {after:.1?} in the second after; {}",
        lags.join("; ")
    );
    for node in 1..NODES {
        assert!(
            after[node] < before[node] * 0.95,
            "node {node} did not slow down: {:.1}/s before, {:.1}/s after",
            before[node],
            after[node]
        );
    }
    c.stop();
}

/// `kill -9` of one node: its leases lapse (a lease period) and the other two take up its
/// share; the receiver sees nearly the whole rate again from them.
#[test]
fn a_killed_nodes_share_goes_to_the_others() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut c) = Cluster::start() else {
        return;
    };
    for i in 0..NODES {
        c.drop_campaign(i, 3_000);
    }
    std::thread::sleep(Duration::from_secs(6));
    let killed = Instant::now();
    c.engines[0].take().unwrap().kill9();
    std::thread::sleep(Duration::from_secs(8));
    let (total, per) = c.rate(
        killed + Duration::from_secs(3),
        killed + Duration::from_secs(8),
    );
    // When the two others first reached 90% of the total together, in 250-ms steps of a 1-s
    // window: reported.
    let mut took = None;
    for step in 0..28 {
        let from = killed + Duration::from_millis(250 * step);
        let (r, _) = c.rate(from, from + Duration::from_secs(1));
        if r >= RATE * 0.9 {
            took = Some(Duration::from_millis(250 * step + 1000));
            break;
        }
    }
    eprintln!(
        "kill -9 of node 0: the others at {total:.1}/s ({per:.1?}) from 3 s to 8 s after; 90% of {RATE}/s again within {took:?}"
    );
    assert!(per[0] == 0.0, "the killed node still sent: {per:?}");
    assert!(
        total >= RATE * 0.9,
        "{total:.1}/s: the others did not take up its share"
    );
    assert!(total <= RATE * 1.03, "{total:.1}/s is past {RATE}/s");
    c.stop();
}

/// Redis stopped for 30 s (and back empty: no persistence): every node falls back to its
/// share, keeps sending within it and says so; within seconds of Redis's return they are
/// at the full rate again; every recipient is delivered once.
#[test]
fn a_redis_outage_holds_the_fallback_shares_and_loses_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut c) = Cluster::start() else {
        return;
    };
    let per_node = 3_500;
    for i in 0..NODES {
        c.drop_campaign(i, per_node);
    }
    std::thread::sleep(Duration::from_secs(6));
    let down = Instant::now();
    c.redis.stop();
    std::thread::sleep(Duration::from_secs(30));
    let (outage, outage_per) = c.rate(
        down + Duration::from_secs(5),
        down + Duration::from_secs(30),
    );
    for node in 0..NODES {
        assert_eq!(c.metric(node, "spate_cluster_degraded"), 1.0, "node {node}");
    }
    let back = Instant::now();
    c.redis.restart();
    std::thread::sleep(Duration::from_secs(10));
    let (after, after_per) = c.rate(
        back + Duration::from_secs(5),
        back + Duration::from_secs(10),
    );
    eprintln!(
        "redis down 30 s: {outage:.1}/s ({outage_per:.1?}) during it (fallback {FALLBACK} of {RATE}/s each); {after:.1}/s ({after_per:.1?}) from 5 s to 10 s after its return"
    );
    let fallback_sum = RATE * FALLBACK * NODES as f64;
    assert!(
        outage <= fallback_sum * 1.03,
        "{outage:.1}/s is past the fallback shares"
    );
    assert!(
        outage >= fallback_sum * 0.9,
        "{outage:.1}/s: the nodes stalled"
    );
    assert!(after >= RATE * 0.9, "{after:.1}/s: not back to full speed");
    assert!(after <= RATE * 1.03, "{after:.1}/s is past {RATE}/s");
    for node in 0..NODES {
        assert_eq!(c.metric(node, "spate_cluster_degraded"), 0.0, "node {node}");
    }
    for (i, env) in c.envs.iter().enumerate() {
        wait_final(
            env,
            c.engines[i].as_ref().unwrap(),
            per_node,
            Duration::from_secs(120),
        );
    }
    let got = c.sink.received.lock().unwrap();
    let delivered: usize = got.deliveries.values().sum();
    assert_eq!(delivered, per_node * NODES, "every recipient once");
    assert!(got.deliveries.values().all(|&n| n == 1));
    drop(got);
    c.stop();
}

/// A failover: the master is killed and its replica promoted (as Sentinel would, here by
/// hand). The nodes find the new master among `failover`; leases it had not received may be
/// lost or doubled for at most one lease period, so the receiver may see up to twice the
/// total for that long; then the total holds again.
#[test]
fn a_promoted_replica_takes_over_the_leases() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let Some(master) = Redis::start(dir.path()) else {
        return;
    };
    let replica = Redis::start_replica(dir.path(), Some(master.port)).unwrap();
    let failover = format!("failover = [\"{}\"]", replica.url());
    let mut c = Cluster::start_on(dir, master, &failover, &|_| String::new()).unwrap();
    for i in 0..NODES {
        c.drop_campaign(i, 3_000);
    }
    std::thread::sleep(Duration::from_secs(6));
    let killed = Instant::now();
    c.redis.stop();
    std::thread::sleep(Duration::from_millis(500));
    let promoted = replica.command("REPLICAOF NO ONE").unwrap_or_default();
    assert!(promoted.starts_with("+OK"), "{promoted}");
    std::thread::sleep(Duration::from_secs(9));
    let lease = Duration::from_secs(2);
    let (during, _) = c.rate(killed, killed + lease);
    let (after, per) = c.rate(
        killed + lease + Duration::from_secs(2),
        killed + Duration::from_secs(9),
    );
    eprintln!(
        "failover: {during:.1}/s in the lease period after the master died, {after:.1}/s ({per:.1?}) from 4 s to 9 s after"
    );
    assert!(during <= RATE * 2.0, "{during:.1}/s: more than doubled");
    assert!(after <= RATE * 1.03, "{after:.1}/s is past {RATE}/s");
    assert!(
        after >= RATE * 0.9,
        "{after:.1}/s: the nodes did not find the new master"
    );
    for node in 0..NODES {
        assert_eq!(
            c.metric(node, "spate_cluster_connected"),
            1.0,
            "node {node}"
        );
    }
    c.stop();
    drop(replica);
}

/// An operator's suspension of the provider at one node holds on every node (they stop
/// sending to it within a second or so), and a resume at another node lifts it everywhere;
/// each node's audit file says the cluster changed its holds.
#[test]
fn a_suspension_at_one_node_holds_on_all() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(c) = Cluster::start() else {
        return;
    };
    for i in 0..NODES {
        c.drop_campaign(i, 3_000);
    }
    std::thread::sleep(Duration::from_secs(6));
    let cli = |node: usize, args: &[&str]| c.cli(node, args);
    cli(0, &["queue", "suspend", "isp"]);
    let suspended = Instant::now();
    std::thread::sleep(Duration::from_secs(3));
    let (held, held_per) = c.rate(
        suspended + Duration::from_secs(1),
        suspended + Duration::from_secs(3),
    );
    cli(2, &["queue", "resume", "isp"]);
    let resumed = Instant::now();
    std::thread::sleep(Duration::from_secs(4));
    let (back, back_per) = c.rate(
        resumed + Duration::from_secs(2),
        resumed + Duration::from_secs(4),
    );
    eprintln!(
        "suspend at node 0: {held:.1}/s ({held_per:.1?}) from 1 s to 3 s after; resume at node 2: {back:.1}/s ({back_per:.1?}) from 2 s to 4 s after"
    );
    assert_eq!(
        held, 0.0,
        "a node sent while the provider was suspended: {held_per:?}"
    );
    assert!(
        back >= RATE * 0.8,
        "{back:.1}/s after the resume: {back_per:?}"
    );
    for node in 1..NODES {
        let audit = std::fs::read_to_string(c.envs[node].path("log/admin.jsonl")).unwrap();
        assert!(audit.contains("cluster-sync"), "node {node}: {audit}");
    }
    c.stop();
}

/// A node that was stopped while the cluster's holds changed takes the cluster's when it
/// rejoins: its own file's stale suspension is dropped, not spread back to the others.
#[test]
fn a_rejoining_node_takes_the_clusters_holds() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut c) = Cluster::start() else {
        return;
    };
    // Past the first two lease periods of Redis's state, in which a node that comes takes
    // part in the union of the nodes' holds (Redis's state is new).
    std::thread::sleep(Duration::from_secs(5));
    c.cli(0, &["queue", "suspend", "domain:old.test"]);
    wait_until(
        Duration::from_secs(10),
        "every node has the suspension",
        || (0..NODES).all(|n| c.suspends(n, "domain:old.test")),
    );
    let stopped = c.engines[1].take().unwrap().stop(Duration::from_secs(30));
    assert!(stopped.success());
    c.cli(2, &["queue", "resume", "domain:old.test"]);
    c.cli(2, &["queue", "suspend", "domain:new.test"]);
    wait_until(Duration::from_secs(10), "the others resumed", || {
        !c.suspends(0, "domain:old.test") && c.suspends(0, "domain:new.test")
    });
    c.engines[1] = Some(c.envs[1].start());
    wait_until(
        Duration::from_secs(10),
        "the rejoined node has the cluster's holds",
        || !c.suspends(1, "domain:old.test") && c.suspends(1, "domain:new.test"),
    );
    // And it did not spread its stale suspension back.
    std::thread::sleep(Duration::from_secs(3));
    for node in 0..NODES {
        assert!(!c.suspends(node, "domain:old.test"), "node {node}");
        assert!(c.suspends(node, "domain:new.test"), "node {node}");
    }
    c.stop();
}

/// Suppressions made at one node hold on every node: an operator's entry, and a bad mailbox
/// another node learnt from a 550 5.1.1. Each node keeps the others' in its own store, so
/// they survive its restart.
#[test]
fn suppressions_reach_every_node() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut c) = Cluster::start() else {
        return;
    };
    c.cli(0, &["suppression", "add", "opted@isp.test"]);
    c.envs[1].drop_input(
        "gone.jsonl",
        format!(
            "{}\n{{\"to\":\"nobody@gone.test\"}}\n",
            serde_json::json!({
                "campaign": "g", "tenant": "acme", "from": "bounces@acme.example",
                "template": "From: Acme <news@acme.example>\r\nTo: {{ to }}\r\nSubject: hi\r\n\r\nHello\r\n"
            })
        )
        .as_bytes(),
    );
    wait_until(
        Duration::from_secs(20),
        "every node suppresses both",
        || {
            (0..NODES)
                .all(|n| c.suppressed(n, "opted@isp.test") && c.suppressed(n, "nobody@gone.test"))
        },
    );
    // Node 2 keeps them through a restart (in its added-cluster.log).
    let stopped = c.engines[2].take().unwrap().stop(Duration::from_secs(30));
    assert!(stopped.success());
    let file =
        std::fs::read_to_string(c.envs[2].path("data/suppression/added-cluster.log")).unwrap();
    assert!(
        file.contains("opted@isp.test") && file.contains("nobody@gone.test"),
        "{file}"
    );
    c.engines[2] = Some(c.envs[2].start());
    assert!(c.suppressed(2, "opted@isp.test") && c.suppressed(2, "nobody@gone.test"));
    // A removal at another node reaches it too.
    c.cli(1, &["suppression", "remove", "opted@isp.test"]);
    wait_until(Duration::from_secs(20), "every node removed it", || {
        (0..NODES).all(|n| !c.suppressed(n, "opted@isp.test"))
    });
    c.stop();
}

/// A gateway user's daily limit holds across the nodes: what one node accepted counts at
/// the others (read from Redis every 500 ms).
#[test]
fn a_users_daily_limit_holds_across_nodes() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let Some(redis) = Redis::start(dir.path()) else {
        return;
    };
    let ports: Vec<u16> = (0..NODES)
        .map(|_| {
            std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port()
        })
        .collect();
    let hash = spate::gateway::password::hash("s3cret").unwrap();
    let extra = |i: usize| {
        format!(
            "[[listeners]]\nlisten = \"127.0.0.1:{}\"\ntls = \"none\"\n\
             [[users]]\nname = \"app\"\npassword_hash = \"{hash}\"\nallowed_from = [\"@acme.example\"]\ndaily_limit = 6\n",
            ports[i]
        )
    };
    let c = Cluster::start_on(dir, redis, "", &extra).unwrap();
    let session = |node: usize, rcpts: &[&str]| -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", ports[node])).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut commands =
            "EHLO c\r\nAUTH PLAIN AGFwcABzM2NyZXQ=\r\nMAIL FROM:<news@acme.example>\r\n"
                .to_string();
        for r in rcpts {
            commands.push_str(&format!("RCPT TO:<{r}>\r\n"));
        }
        commands.push_str("RSET\r\nQUIT\r\n");
        s.write_all(commands.as_bytes()).unwrap();
        let mut replies = String::new();
        let mut buf = [0u8; 4096];
        while !replies.contains("\r\n221 ") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {replies}");
            replies.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        replies
    };
    // Whole transactions, so the counts are of accepted messages: DATA after the RCPTs.
    let send = |node: usize, rcpts: &[&str]| -> String {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", ports[node])).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut commands =
            "EHLO c\r\nAUTH PLAIN AGFwcABzM2NyZXQ=\r\nMAIL FROM:<news@acme.example>\r\n"
                .to_string();
        for r in rcpts {
            commands.push_str(&format!("RCPT TO:<{r}>\r\n"));
        }
        commands.push_str("DATA\r\n");
        s.write_all(commands.as_bytes()).unwrap();
        let mut replies = String::new();
        let mut buf = [0u8; 4096];
        while !replies.contains("\r\n354 ") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {replies}");
            replies.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        s.write_all(b"Subject: n\r\nFrom: news@acme.example\r\n\r\nhi\r\n.\r\nQUIT\r\n")
            .unwrap();
        while !replies.contains("\r\n221 ") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {replies}");
            replies.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        replies
    };
    for &port in &ports {
        wait_until(Duration::from_secs(20), "the listener", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }
    let first = send(0, &["a@isp.test", "b@isp.test", "c@isp.test"]);
    assert!(first.contains("250 2.0.0 OK: queued as"), "{first}");
    std::thread::sleep(Duration::from_millis(1500));
    let second = send(1, &["d@isp.test", "e@isp.test", "f@isp.test"]);
    assert!(second.contains("250 2.0.0 OK: queued as"), "{second}");
    std::thread::sleep(Duration::from_millis(1500));
    // Six accepted across nodes 0 and 1: node 2 refuses the seventh.
    let third = session(2, &["g@isp.test"]);
    assert!(
        third.contains("452 4.5.3 Daily limit of 6 recipients reached"),
        "{third}"
    );
    c.stop();
}

/// A node restarted at once after `kill -9` (as a supervisor does) finds its name still held
/// by its dead process: it waits for the name to lapse instead of being refused, and rejoins.
#[test]
fn a_crashed_node_restarted_at_once_rejoins() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let Some(mut c) = Cluster::start() else {
        return;
    };
    c.engines[0].take().unwrap().kill9();
    let restarted = Instant::now();
    c.engines[0] = Some(c.envs[0].start());
    let waited = restarted.elapsed();
    wait_until(Duration::from_secs(20), "the restarted node renews", || {
        c.metric(0, "spate_cluster_renewals_total") >= 1.0
    });
    let stderr = c.engines[0].as_ref().unwrap().stderr();
    eprintln!("restarted after kill -9: running after {waited:?}");
    assert!(stderr.contains("waiting up to"), "{stderr}");
    c.stop();
}

/// `spate drain --to`: node 0, stopped half way through its campaign (some recipients
/// delivered, some deferred once, the rest not yet tried), hands what it still holds to
/// node 1, which delivers every one of them exactly once; the deferred ones keep their
/// attempts and are not retried before their time. A transfer sent twice is queued once,
/// and the endpoint wants the cluster's secret.
#[test]
fn a_drained_nodes_queue_is_delivered_once_by_another() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let Some(redis) = Redis::start(dir.path()) else {
        return;
    };
    let secret = "drain-secret-0123456789";
    let Some(mut c) = Cluster::start_on(dir, redis, &format!("secret = \"{secret}\"\n"), &|_| {
        String::new()
    }) else {
        return;
    };
    // Node 0's campaigns: 40 recipients that are deferred once, then 3,000 others, of which
    // it sends a few hundred before it is stopped.
    let (later, plain) = (40, 3_000);
    let campaign = |name: &str, lines: &mut dyn Iterator<Item = String>| {
        let mut s = format!(
            "{}\n",
            serde_json::json!({
                "campaign": name, "tenant": "acme", "from": "bounces@acme.example",
                "template": "From: Acme <news@acme.example>\r\nTo: {{ to }}\r\nSubject: hi {{ name }}\r\n\r\nHello {{ name }}\r\n"
            })
        );
        for l in lines {
            s.push_str(&l);
            s.push('\n');
        }
        s
    };
    let first = campaign(
        "c0a",
        &mut (0..later)
            .map(|i| format!("{{\"to\":\"w{i}@later.test\",\"vars\":{{\"name\":\"W{i}\"}}}}")),
    );
    c.envs[0].drop_input("c0a.jsonl", first.as_bytes());
    wait_until(Duration::from_secs(60), "node 0 deferred each once", || {
        c.envs[0].count_events("TransientFailure") >= later
    });
    let second = campaign(
        "c0b",
        &mut (0..plain)
            .map(|i| format!("{{\"to\":\"r{i}.n0@isp.test\",\"vars\":{{\"name\":\"R{i}\"}}}}")),
    );
    c.envs[0].drop_input("c0b.jsonl", second.as_bytes());
    wait_until(Duration::from_secs(60), "node 0 is part way", || {
        c.envs[0].count_events("Delivery") >= 300
    });
    let stopping = Instant::now();
    let status = c.engines[0].take().unwrap().stop(Duration::from_secs(30));
    eprintln!("node 0 stopped in {:?}", stopping.elapsed());
    assert!(status.success(), "{status:?}");
    let first_tries: HashMap<String, u64> = c.envs[0]
        .log_records()
        .iter()
        .filter(|r| r["type"] == "TransientFailure")
        .map(|r| (r["recipient"].as_str().unwrap().to_string(), ts_ms(r)))
        .collect();
    let delivered_at_0 = c.envs[0]
        .log_records()
        .iter()
        .filter(|r| r["type"] == "Delivery")
        .count();
    assert!(
        delivered_at_0 < later + plain,
        "node 0 finished before it was stopped"
    );

    let config = c.envs[0].config.to_str().unwrap().to_string();
    let started = Instant::now();
    let (code, out, err) = c.envs[0].run_cli(&["drain", "--to", "n1", "-c", &config, "--json"]);
    let took = started.elapsed();
    assert_eq!(code, 0, "{out}{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let moved = report["transferred"].as_u64().unwrap() as usize;
    eprintln!(
        "drain: {moved} recipients to n1 in {} transfers, {took:?}; {delivered_at_0} delivered by node 0 before",
        report["transfers"]
    );
    assert_eq!(moved, later + plain - delivered_at_0, "{report}");
    assert_eq!(report["left"], 0);
    assert!(
        !c.envs[0].path("data/drain-unfinished").exists(),
        "a finished drain leaves the node startable"
    );
    // Node 0's log: every recipient it did not deliver, Transferred to n1.
    let transferred: Vec<serde_json::Value> = c.envs[0]
        .log_records()
        .into_iter()
        .filter(|r| r["type"] == "Transferred")
        .collect();
    assert_eq!(transferred.len(), moved);
    assert!(transferred[0]["response"]
        .as_str()
        .unwrap()
        .contains("node n1"));
    // Run again: nothing is left to move.
    let (code, out, err) = c.envs[0].run_cli(&["drain", "--to", "n1", "-c", &config, "--json"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"transferred\":0"), "{out}");

    // Node 1 delivers all of them, once each.
    let total = later + plain;
    wait_until(
        Duration::from_secs(90),
        "every recipient of node 0 delivered",
        || {
            let got = c.sink.received.lock().unwrap();
            got.deliveries
                .keys()
                .filter(|r| r.ends_with("@later.test") || r.ends_with(".n0@isp.test"))
                .count()
                >= total
        },
    );
    std::thread::sleep(Duration::from_secs(1));
    {
        let got = c.sink.received.lock().unwrap();
        for i in 0..later {
            assert_eq!(got.deliveries.get(&format!("w{i}@later.test")), Some(&1));
        }
        for i in 0..plain {
            assert_eq!(got.deliveries.get(&format!("r{i}.n0@isp.test")), Some(&1));
        }
        // The message is the one node 0 queued, values and all.
        assert!(got.bodies["w3@later.test"].contains("Hello W3"));
    }
    // The deferred ones: their second attempt, not before their retry time (15 s less 10%
    // of jitter, less the second the queue rounds a retry time down to).
    let at_1: Vec<serde_json::Value> = c.envs[1]
        .log_records()
        .into_iter()
        .filter(|r| r["type"] == "Delivery" && r["domain"] == "later.test")
        .collect();
    assert_eq!(at_1.len(), later, "node 1 delivered the deferred ones");
    for r in &at_1 {
        let rcpt = r["recipient"].as_str().unwrap();
        assert_eq!(r["attempt"], 2, "{r}");
        let first = first_tries[rcpt];
        assert!(
            ts_ms(r) >= first + 12_500,
            "{rcpt} retried {} ms after its first try",
            ts_ms(r) - first
        );
    }

    // The endpoint itself: the secret is required; a transfer sent twice is queued once.
    use spate::queue::record::{MessagePayload, RecipientPayload};
    use spate::queue::transfer::{transfer_id, Retry, TransferWriter};
    let mut message = Vec::new();
    MessagePayload {
        batch_id: 1,
        created_unix_ms: 1_700_000_000_000,
        flags: 0,
        sender: "bounces@acme.example",
        campaign: "hand",
        tenant: "acme",
        var_names: vec!["to"],
        body: b"From: Acme <news@acme.example>\r\nTo: {{ to }}\r\nSubject: by hand\r\n\r\nHi\r\n",
        pool: "",
    }
    .encode(&mut message);
    let mut w = TransferWriter::new("n9", 0, &message);
    let mut rcpt = Vec::new();
    RecipientPayload {
        message_seq: 0,
        recipient: "twice@isp.test",
        values: vec![b"twice@isp.test"],
    }
    .encode(&mut rcpt);
    w.push(&rcpt, Retry::default());
    let bytes = w.finish(transfer_id("n9", 0, 1, 1, 1_700_000_000_000, 0));
    let (status, _) = c.post(
        1,
        "/api/v1/cluster/transfer",
        "wrong-secret-0123456789",
        &bytes,
    );
    assert_eq!(status, 401);
    let (status, body) = c.post(1, "/api/v1/cluster/transfer", secret, &bytes);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"already\":false"), "{body}");
    let (status, body) = c.post(1, "/api/v1/cluster/transfer", secret, &bytes);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"already\":true"), "{body}");
    wait_until(
        Duration::from_secs(30),
        "the hand-made transfer delivered",
        || {
            c.sink
                .received
                .lock()
                .unwrap()
                .deliveries
                .contains_key("twice@isp.test")
        },
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        c.sink.received.lock().unwrap().deliveries["twice@isp.test"],
        1
    );
    c.stop();
}

/// A delivery-log record's time (`2026-11-29T15:44:14.123Z`) in Unix ms.
fn ts_ms(r: &serde_json::Value) -> u64 {
    let ts = r["ts"].as_str().unwrap();
    let n = |a: usize, b: usize| ts[a..b].parse::<i64>().unwrap();
    let (y, m, d) = (n(0, 4), n(5, 7), n(8, 10));
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + n(11, 13) * 3600 + n(14, 16) * 60 + n(17, 19);
    (secs * 1000 + n(20, 23)) as u64
}

/// `spate run -c config`, which is expected to exit (refused) within 30 s: its exit code
/// and stderr. Killed (and the test failed) if it keeps running.
fn run_expecting_refusal(config: &std::path::Path) -> (i32, String) {
    let mut child = std::process::Command::new(BIN)
        .args(["run", "-c"])
        .arg(config)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut status = child.try_wait().unwrap();
    while status.is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        status = child.try_wait().unwrap();
    }
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{} was not refused", config.display());
    }
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    (status.unwrap().code().unwrap_or(-1), err)
}
