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
        use spate_sim::dns::{DnsResponder, Zone};
        let dir = tempfile::tempdir().unwrap();
        let redis = Redis::start(dir.path())?;
        let mut zone = Zone::default();
        zone.mx
            .insert("isp.test".into(), vec![(10, "mx.isp.test".into())]);
        zone.hosts
            .insert("mx.isp.test".into(), vec!["127.0.0.1".parse().unwrap()]);
        let dns = DnsResponder::start("127.0.0.1:0".parse().unwrap(), zone).unwrap();
        let sink = Sink::start(HashMap::new());
        let mut envs = Vec::new();
        for i in 0..NODES {
            let extra = format!(
                "[delivery]\nallow_private_destinations = true\n\
                 [dns]\nnameservers = [\"{}\"]\n[smtp]\nport = {}\n\
                 [providers.isp]\nmx_suffixes = [\"mx.isp.test\"]\nconnection_limit = 4\n\
                 provider_max_message_rate = \"{}/s\"\nprovider_connection_limit = 9\n\
                 [sources.n{i}]\naddress = \"{}\"\n\
                 [pools.default]\nsources = [\"n{i}\"]\n\
                 [cluster]\nredis = \"{}\"\nnode = \"n{i}\"\nfallback_share = 0.33\n",
                dns.addr,
                sink.addr.port(),
                RATE as u64,
                source(i),
                redis.url()
            );
            envs.push(Env::new(1, "", &extra));
        }
        let engines = envs.iter().map(|e| Some(e.start())).collect();
        Some(Cluster {
            envs,
            engines,
            sink,
            redis,
            _dns: dns,
            _dir: dir,
        })
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
    let Some(c) = Cluster::start() else {
        return;
    };
    for i in 0..NODES {
        c.drop_campaign(i, 1_500);
    }
    // Past the first lease periods (grants held at the fallback shares while the nodes
    // register), then 8 s of steady sending.
    std::thread::sleep(Duration::from_secs(5));
    let from = Instant::now();
    std::thread::sleep(Duration::from_secs(8));
    let to = Instant::now();
    let (all, per) = c.attempts(from, to);
    let rate = all as f64 / to.duration_since(from).as_secs_f64();
    eprintln!("cluster of {NODES}: {rate:.1}/s of {RATE}/s in all; per node {per:?}");
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
