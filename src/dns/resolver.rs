//! The resolver's I/O shell on glommio: UDP to the configured nameservers with TCP fallback on
//! truncation, a timeout per attempt, retries across nameservers, and the cache in front.
//!
//! Each query goes out from a fresh socket (a random source port) with an id from the
//! kernel's random source, and only an answer matching both and the question is believed. An
//! answer that leaves a CNAME chain unfinished is followed with more queries, at most
//! `CNAME_CHAIN_MAX`. A resolver lives on one shard.

use super::cache::{DnsCache, CACHE_ENTRIES_MAX};
use super::message::{build_query, parse_response, Answer, QueryType, CNAME_CHAIN_MAX};
use super::mx::{self, MxPlan};
use crate::clock::Clock;
use futures_lite::io::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpStream, UdpSocket};
use glommio::timer::timeout;
use std::cell::{Cell, RefCell};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

/// One attempt at one nameserver waits at most this long.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// The first attempt waits this long, each later one twice as long as the one before (up to
/// `ATTEMPT_TIMEOUT`): a lost datagram costs half a second, not two, while a slow recursive
/// answer still gets the full wait (as stub resolvers and unbound retransmit).
pub const FIRST_ATTEMPT_TIMEOUT: Duration = Duration::from_millis(500);
/// Rounds over the nameserver list before a lookup counts as a temporary failure.
pub const ROUNDS: usize = 3;
/// Largest UDP answer accepted (EDNS is not used; 512 is the classic limit, some servers send
/// more anyway).
pub const UDP_ANSWER_BYTES_MAX: usize = 4096;
/// Largest TCP answer accepted.
pub const TCP_ANSWER_BYTES_MAX: usize = 65_535;

/// Where a domain's mail goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// MX hosts in order (or the domain itself, for an implicit MX).
    Hosts(Vec<String>),
    /// RFC 7505 null MX: bounce with 5.1.10.
    NullMx,
    /// NXDOMAIN: bounce with 5.1.2.
    NoSuchDomain,
    /// No MX, and the domain itself has no address either (NXDOMAIN or NODATA for A and
    /// AAAA): nowhere to deliver, bounce with 5.1.2.
    NoAddress,
    /// Every MX target is refused as a host name (`delivery::guard`); the text says which and
    /// why. Bounce with 5.4.4.
    Unusable(String),
    /// SERVFAIL, timeouts: defer.
    TemporaryFailure(String),
}

pub struct Resolver {
    nameservers: Vec<SocketAddr>,
    cache: RefCell<DnsCache>,
    attempt_timeout: Duration,
    rng: Cell<u64>,
    clock: Arc<dyn Clock>,
    stats: Cell<DnsStats>,
}

/// What a shard's resolver did, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DnsStats {
    /// Lookups answered from the cache, and those that went to a nameserver.
    pub cache_hits: u64,
    pub cache_misses: u64,
    /// Queries sent (each attempt, UDP or TCP), and lookups that ended in a failure.
    pub queries: u64,
    pub failures: u64,
    /// Entries in the cache now.
    pub cache_entries: u64,
}

impl Resolver {
    pub fn new(nameservers: Vec<SocketAddr>, seed: u64, clock: Arc<dyn Clock>) -> Resolver {
        Resolver {
            nameservers,
            cache: RefCell::new(DnsCache::new(CACHE_ENTRIES_MAX)),
            attempt_timeout: ATTEMPT_TIMEOUT,
            rng: Cell::new(seed | 1),
            clock,
            stats: Cell::new(DnsStats::default()),
        }
    }

    /// Shorter attempts, for tests of the timeout path.
    pub fn with_attempt_timeout(mut self, t: Duration) -> Self {
        self.attempt_timeout = t;
        self
    }

    /// A query id: from the kernel's random source, so an off-path attacker who knows the
    /// clock and can guess a pid still has to guess 16 bits of id and 16 of source port.
    fn query_id(&self) -> u16 {
        os_random() as u16
    }

    /// xorshift64*, for shuffling MX hosts of equal preference: spreading load needs no
    /// cryptography (seeded from the kernel's random source in the engine).
    fn random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Where mail for `domain` goes: MX, null MX, implicit MX, or why not.
    pub async fn destination(&self, domain: &str) -> Destination {
        match self.query(domain, QueryType::Mx).await {
            Answer::Mx { records, .. } => {
                match mx::plan(&records, |n| (self.random() % n as u64) as usize) {
                    MxPlan::Hosts(h) => Destination::Hosts(h),
                    MxPlan::NullMx => Destination::NullMx,
                    MxPlan::Unusable(why) => Destination::Unusable(why),
                }
            }
            // No MX: the domain itself is the host (RFC 5321 5.1), if it has an address.
            Answer::NoData { .. } => match self.addresses(domain).await {
                Err(e) if e.permanent => Destination::NoAddress,
                Ok(_) | Err(_) => match mx::implicit(domain) {
                    MxPlan::Hosts(h) => Destination::Hosts(h),
                    MxPlan::NullMx => Destination::NullMx,
                    MxPlan::Unusable(why) => Destination::Unusable(why),
                },
            },
            Answer::NxDomain { .. } => Destination::NoSuchDomain,
            Answer::ServerFailure(why) => Destination::TemporaryFailure(why),
            Answer::Addrs { .. }
            | Answer::Txt { .. }
            | Answer::Ptr { .. }
            | Answer::Truncated
            | Answer::Alias { .. } => Destination::TemporaryFailure("unexpected answer".into()),
        }
    }

    /// A host's addresses, IPv4 first; `Err` says why there are none, and whether DNS said so
    /// for good (NXDOMAIN or NODATA for both types) or only for now.
    pub async fn addresses(&self, host: &str) -> Result<Vec<IpAddr>, NoAddress> {
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(vec![ip]);
        }
        let mut out = Vec::new();
        let mut why = String::new();
        let mut permanent = true;
        // Whatever one type says, the other may still answer: some servers (dnsmasq with
        // `address=`) return NXDOMAIN for AAAA of a name that has an A record.
        for qtype in [QueryType::A, QueryType::Aaaa] {
            match self.query(host, qtype).await {
                Answer::Addrs { addrs, .. } => out.extend(addrs),
                Answer::NxDomain { .. } if why.is_empty() => why = "no such host".into(),
                Answer::ServerFailure(w) => {
                    why = w;
                    permanent = false;
                }
                Answer::NxDomain { .. } | Answer::NoData { .. } => {}
                Answer::Mx { .. }
                | Answer::Txt { .. }
                | Answer::Ptr { .. }
                | Answer::Truncated
                | Answer::Alias { .. } => permanent = false,
            }
        }
        if out.is_empty() {
            let why = if why.is_empty() {
                format!("{host}: no address")
            } else {
                format!("{host}: {why}")
            };
            Err(NoAddress { why, permanent })
        } else {
            Ok(out)
        }
    }

    /// A cached or fresh answer; failures come back as `Answer::ServerFailure`. An alias whose
    /// target's records were not in the answer is followed, `CNAME_CHAIN_MAX` queries at most.
    pub async fn query(&self, domain: &str, qtype: QueryType) -> Answer {
        let now = self.clock.unix_ms();
        if let Some(a) = self.cache.borrow_mut().get(domain, qtype, now) {
            self.count(|s| s.cache_hits += 1);
            return a.clone();
        }
        self.count(|s| s.cache_misses += 1);
        let mut answer = self.ask(domain, qtype).await;
        if matches!(answer, Answer::ServerFailure(_)) {
            self.count(|s| s.failures += 1);
        }
        let mut followed = 0;
        while let Answer::Alias { target } = &answer {
            followed += 1;
            if followed > CNAME_CHAIN_MAX {
                answer = Answer::ServerFailure(format!(
                    "CNAME chain from {domain} longer than {CNAME_CHAIN_MAX} queries"
                ));
                break;
            }
            let target = target.clone();
            answer = self.ask(&target, qtype).await;
        }
        self.cache
            .borrow_mut()
            .insert(domain, qtype, answer.clone(), self.clock.unix_ms());
        answer
    }

    fn count(&self, f: impl FnOnce(&mut DnsStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }

    /// What this resolver did so far.
    pub fn stats(&self) -> DnsStats {
        let mut s = self.stats.get();
        s.cache_entries = self.cache.borrow().len() as u64;
        s
    }

    async fn ask(&self, domain: &str, qtype: QueryType) -> Answer {
        if self.nameservers.is_empty() {
            return Answer::ServerFailure("no nameservers configured".into());
        }
        let mut last = String::from("no answer");
        let mut wait = FIRST_ATTEMPT_TIMEOUT.min(self.attempt_timeout);
        for _ in 0..ROUNDS {
            for &ns in &self.nameservers {
                let this_wait = wait;
                wait = (wait * 2).min(self.attempt_timeout);
                let id = self.query_id();
                let query = match build_query(id, domain, qtype) {
                    Ok(q) => q,
                    Err(e) => return Answer::ServerFailure(e.0),
                };
                self.count(|s| s.queries += 1);
                match self.ask_udp(ns, id, &query, domain, qtype, this_wait).await {
                    Ok(Answer::Truncated) => {
                        self.count(|s| s.queries += 1);
                        match self.ask_tcp(ns, id, &query, domain, qtype).await {
                            Ok(Answer::ServerFailure(why)) => last = format!("{ns}: {why}"),
                            Ok(a) => return a,
                            Err(e) => last = format!("{ns} (tcp): {e}"),
                        }
                    }
                    Ok(Answer::ServerFailure(why)) => last = format!("{ns}: {why}"),
                    Ok(a) => return a,
                    Err(e) => last = format!("{ns}: {e}"),
                }
            }
        }
        Answer::ServerFailure(last)
    }

    async fn ask_udp(
        &self,
        ns: SocketAddr,
        id: u16,
        query: &[u8],
        domain: &str,
        qtype: QueryType,
        wait: Duration,
    ) -> Result<Answer, String> {
        let local: SocketAddr = if ns.is_ipv4() {
            "0.0.0.0:0".parse().expect("literal")
        } else {
            "[::]:0".parse().expect("literal")
        };
        let socket = query_socket(local).map_err(|e| e.to_string())?;
        socket.send_to(query, ns).await.map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; UDP_ANSWER_BYTES_MAX];
        let result = timeout(wait, async {
            loop {
                let (n, from) = socket.recv_from(&mut buf).await?;
                // Datagrams from elsewhere, or not answering our question, are ignored.
                if from != ns {
                    continue;
                }
                if let Ok(a) = parse_response(&buf[..n], id, domain, qtype) {
                    return Ok(a);
                }
            }
        })
        .await;
        result.map_err(|e| match e {
            glommio::GlommioError::TimedOut(_) => "timed out".to_string(),
            other => other.to_string(),
        })
    }

    async fn ask_tcp(
        &self,
        ns: SocketAddr,
        id: u16,
        query: &[u8],
        domain: &str,
        qtype: QueryType,
    ) -> Result<Answer, String> {
        let exchange = async {
            let mut stream = TcpStream::connect(ns).await?;
            let mut framed = (query.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(query);
            stream.write_all(&framed).await?;
            let mut len = [0u8; 2];
            stream.read_exact(&mut len).await?;
            let len = usize::from(u16::from_be_bytes(len)).min(TCP_ANSWER_BYTES_MAX);
            let mut buf = vec![0u8; len];
            stream.read_exact(&mut buf).await?;
            Ok(buf)
        };
        let bytes = timeout(self.attempt_timeout, exchange)
            .await
            .map_err(|e| e.to_string())?;
        parse_response(&bytes, id, domain, qtype).map_err(|e| e.0)
    }
}

/// Why a host has no address to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NoAddress {
    pub why: String,
    /// DNS said so for good (NXDOMAIN or NODATA for A and AAAA), not a failure to ask.
    pub permanent: bool,
}

/// 64 bits from the kernel's random source (getrandom(2)).
pub fn os_random() -> u64 {
    let mut buf = [0u8; 8];
    let mut filled = 0;
    // A short read happens only when interrupted by a signal; the loop is bounded.
    for _ in 0..16 {
        // SAFETY: getrandom writes at most the given length into a buffer we own.
        let n =
            unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        }
        if filled == buf.len() {
            break;
        }
    }
    assert_eq!(
        filled,
        buf.len(),
        "getrandom(2) failed: the kernel has no random source"
    );
    u64::from_ne_bytes(buf)
}

/// A UDP socket of its own for one query. Not `glommio::net::UdpSocket::bind`: that sets
/// SO_REUSEPORT, which lets two concurrent queries share an ephemeral port, and the kernel then
/// hands one query's answer to the other socket (which drops it as not its own), so the first
/// query times out. Bound by the standard library (no SO_REUSEPORT), then handed to glommio.
fn query_socket(local: SocketAddr) -> std::io::Result<UdpSocket> {
    use std::os::unix::io::{FromRawFd, IntoRawFd};
    let socket = std::net::UdpSocket::bind(local)?;
    // SAFETY: the descriptor comes from a socket we own and give up here.
    Ok(unsafe { UdpSocket::from_raw_fd(socket.into_raw_fd()) })
}

#[cfg(test)]
mod tests {
    use super::super::message::tests::{a, mx, respond};
    use super::*;
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::rdata::CNAME;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    fn cname(owner: &str, target: &str) -> Record {
        Record::from_rdata(
            Name::from_ascii(owner).unwrap(),
            300,
            RData::CNAME(CNAME(Name::from_ascii(target).unwrap())),
        )
    }

    #[test]
    fn query_sockets_never_share_a_port() {
        use std::os::unix::io::AsRawFd;
        glommio::LocalExecutor::default().run(async {
            let local: SocketAddr = "127.0.0.1:0".parse().unwrap();
            let sockets: Vec<UdpSocket> = (0..200).map(|_| query_socket(local).unwrap()).collect();
            let mut ports: Vec<u16> = sockets
                .iter()
                .map(|s| s.local_addr().unwrap().port())
                .collect();
            ports.sort_unstable();
            ports.dedup();
            assert_eq!(
                ports.len(),
                200,
                "every in-flight query has a port of its own"
            );
            let mut on: libc::c_int = -1;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: getsockopt into a c_int we own, on a live descriptor.
            let rc = unsafe {
                libc::getsockopt(
                    sockets[0].as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_REUSEPORT,
                    &mut on as *mut _ as *mut libc::c_void,
                    &mut len,
                )
            };
            assert_eq!((rc, on), (0, 0), "SO_REUSEPORT is off");
        });
    }
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    /// A loopback DNS server for tests: answers from `zone`, truncates UDP answers for names
    /// starting with "big", counts queries. Stopped and joined by `stop`.
    struct TestDns {
        addr: SocketAddr,
        queries: Arc<AtomicUsize>,
        stop: Arc<AtomicBool>,
        threads: Vec<std::thread::JoinHandle<()>>,
    }

    fn zone(query: &[u8]) -> Vec<u8> {
        let q = Message::from_vec(query).unwrap();
        let name = q.queries[0].name().to_ascii().to_ascii_lowercase();
        let records = match name.as_str() {
            "example.test." | "big.example.test." => vec![
                mx(&name, 10, "mx1.example.test.", 300),
                mx(&name, 10, "mx2.example.test.", 300),
                mx(&name, 20, "backup.example.test.", 300),
            ],
            "null.test." => vec![mx("null.test.", 0, ".", 300)],
            "mx1.example.test." | "bare.test." => vec![a(&name, [127, 0, 0, 1], 300)],
            "nxdomain.test." => return respond(query, ResponseCode::NXDomain, vec![], true),
            // An A record, and NXDOMAIN for every other type (as dnsmasq's address= does).
            "v4only.test." if q.queries[0].query_type() != hickory_proto::rr::RecordType::A => {
                return respond(query, ResponseCode::NXDomain, vec![], true)
            }
            "v4only.test." => vec![a(&name, [127, 0, 0, 2], 300)],
            "broken.test." => return respond(query, ResponseCode::ServFail, vec![], false),
            // An alias with its target's records in the same answer.
            "alias.test." => vec![
                cname("alias.test.", "example.test."),
                mx("example.test.", 10, "mx1.example.test.", 300),
            ],
            // An alias whose target the resolver must ask for itself.
            "partial.test." => vec![cname("partial.test.", "example.test.")],
            "loop.test." => vec![
                cname("loop.test.", "loop2.test."),
                cname("loop2.test.", "loop.test."),
            ],
            "self.test." => vec![cname("self.test.", "self.test.")],
            "evilmx.test." => vec![
                Record::from_rdata(
                    Name::from_ascii(&name).unwrap(),
                    300,
                    RData::MX(hickory_proto::rr::rdata::MX::new(
                        10,
                        // Bytes a zone file cannot write but the wire can carry.
                        Name::from_labels(vec![&b"mx"[..], b"evil", b"test:2525"]).unwrap(),
                    )),
                ),
                mx(&name, 20, "127.0.0.1.", 300),
            ],
            // Records for another name in the answer section are not this name's.
            "spoof.test." => vec![a("victim.test.", [10, 0, 0, 1], 300)],
            _ => vec![],
        };
        let qtype = q.queries[0].query_type();
        let records = records
            .into_iter()
            .filter(|r| r.record_type() == qtype || r.record_type() == RecordType::CNAME)
            .collect();
        respond(query, ResponseCode::NoError, records, true)
    }

    impl TestDns {
        fn start() -> TestDns {
            let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            let addr = udp.local_addr().unwrap();
            let tcp = std::net::TcpListener::bind(addr).unwrap();
            udp.set_read_timeout(Some(Duration::from_millis(20)))
                .unwrap();
            tcp.set_nonblocking(true).unwrap();
            let queries = Arc::new(AtomicUsize::new(0));
            let stop = Arc::new(AtomicBool::new(false));
            let (q1, s1) = (Arc::clone(&queries), Arc::clone(&stop));
            let udp_thread = std::thread::spawn(move || {
                let mut buf = [0u8; 512];
                while !s1.load(Ordering::SeqCst) {
                    let Ok((n, from)) = udp.recv_from(&mut buf) else {
                        continue;
                    };
                    q1.fetch_add(1, Ordering::SeqCst);
                    let mut answer = zone(&buf[..n]);
                    let name = Message::from_vec(&buf[..n]).unwrap().queries[0]
                        .name()
                        .to_ascii();
                    if name.starts_with("big.") {
                        let mut m = Message::from_vec(&answer).unwrap();
                        m.metadata.truncation = true;
                        m.answers.clear();
                        answer = m.to_vec().unwrap();
                    }
                    if !name.starts_with("silent.") {
                        udp.send_to(&answer, from).unwrap();
                    }
                }
            });
            let (q2, s2) = (Arc::clone(&queries), Arc::clone(&stop));
            let tcp_thread = std::thread::spawn(move || {
                use std::io::{Read, Write};
                while !s2.load(Ordering::SeqCst) {
                    let Ok((mut conn, _)) = tcp.accept() else {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    };
                    conn.set_nonblocking(false).unwrap();
                    conn.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                    let mut len = [0u8; 2];
                    if conn.read_exact(&mut len).is_err() {
                        continue;
                    }
                    let mut query = vec![0u8; usize::from(u16::from_be_bytes(len))];
                    conn.read_exact(&mut query).unwrap();
                    q2.fetch_add(1, Ordering::SeqCst);
                    let answer = zone(&query);
                    conn.write_all(&(answer.len() as u16).to_be_bytes())
                        .unwrap();
                    conn.write_all(&answer).unwrap();
                }
            });
            TestDns {
                addr,
                queries,
                stop,
                threads: vec![udp_thread, tcp_thread],
            }
        }

        fn stop(self) {
            self.stop.store(true, Ordering::SeqCst);
            for t in self.threads {
                t.join().unwrap();
            }
        }
    }

    fn on_executor<T>(f: impl std::future::Future<Output = T>) -> T {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .make()
            .unwrap()
            .run(f)
    }

    /// A clock stopped at the Unix epoch: cache expiry never moves in these tests.
    fn now_zero() -> Arc<dyn Clock> {
        Arc::new(crate::clock::ManualClock::new(0))
    }

    #[test]
    fn resolves_mx_null_mx_implicit_nxdomain_and_servfail_over_loopback() {
        let dns = TestDns::start();
        let addr = dns.addr;
        let results = on_executor(async move {
            let r = Resolver::new(vec![addr], 42, now_zero());
            (
                r.destination("example.test").await,
                r.destination("null.test").await,
                r.destination("bare.test").await,
                r.destination("nxdomain.test").await,
                r.destination("broken.test").await,
                r.addresses("mx1.example.test").await,
                r.destination("big.example.test").await,
                r.addresses("v4only.test").await,
                r.addresses("nxdomain.test").await,
            )
        });
        let (mxs, null, bare, nx, broken, addrs, big, v4only, nohost) = results;
        assert_eq!(v4only, Ok(vec!["127.0.0.2".parse().unwrap()]));
        let nohost = nohost.unwrap_err();
        assert!(
            nohost.why.contains("no such host") && nohost.permanent,
            "{nohost:?}"
        );
        let Destination::Hosts(h) = mxs else {
            panic!("{mxs:?}")
        };
        assert_eq!(h.len(), 3);
        assert_eq!(h[2], "backup.example.test");
        assert_eq!(null, Destination::NullMx);
        assert_eq!(bare, Destination::Hosts(vec!["bare.test".into()]));
        assert_eq!(nx, Destination::NoSuchDomain);
        assert!(matches!(broken, Destination::TemporaryFailure(_)));
        assert_eq!(addrs, Ok(vec!["127.0.0.1".parse().unwrap()]));
        let Destination::Hosts(h) = big else {
            panic!("TCP fallback: {big:?}")
        };
        assert_eq!(h.len(), 3);
        dns.stop();
    }

    /// Hostile and odd DNS: aliases are followed (in the answer, or with a query of their
    /// own), loops end as temporary failures, MX targets that are not host names are refused,
    /// records for other names are ignored, and a domain with no MX and no address bounces.
    #[test]
    fn aliases_loops_bad_mx_targets_and_foreign_records() {
        let dns = TestDns::start();
        let addr = dns.addr;
        let results = on_executor(async move {
            let r = Resolver::new(vec![addr], 42, now_zero());
            (
                r.destination("alias.test").await,
                r.destination("partial.test").await,
                r.destination("loop.test").await,
                r.destination("self.test").await,
                r.destination("evilmx.test").await,
                r.addresses("spoof.test").await,
                r.destination("noaddr.test").await,
                r.destination("broken.test").await,
            )
        });
        let (alias, partial, looped, selfloop, evil, spoof, noaddr, broken) = results;
        assert_eq!(alias, Destination::Hosts(vec!["mx1.example.test".into()]));
        assert!(
            matches!(&partial, Destination::Hosts(h) if h.len() == 3),
            "{partial:?}"
        );
        for l in [&looped, &selfloop] {
            assert!(
                matches!(l, Destination::TemporaryFailure(w) if w.contains("CNAME chain")),
                "{l:?}"
            );
        }
        let Destination::Unusable(why) = &evil else {
            panic!("{evil:?}")
        };
        assert!(why.contains("2525") && why.contains("127.0.0.1"), "{why}");
        let spoof = spoof.unwrap_err();
        assert!(spoof.permanent, "{spoof:?}");
        assert_eq!(noaddr, Destination::NoAddress);
        assert!(matches!(broken, Destination::TemporaryFailure(_)));
        dns.stop();
    }

    #[test]
    fn query_ids_come_from_the_kernel_not_the_seed() {
        let a = Resolver::new(vec![], 1, now_zero());
        let b = Resolver::new(vec![], 1, now_zero());
        let ids = |r: &Resolver| (0..4).map(|_| r.query_id()).collect::<Vec<_>>();
        assert_ne!(ids(&a), ids(&b), "same seed, different ids");
    }

    #[test]
    fn caches_answers_and_times_out_on_silence() {
        let dns = TestDns::start();
        let (addr, queries) = (dns.addr, Arc::clone(&dns.queries));
        let silent = on_executor(async move {
            let r = Resolver::new(vec![addr], 7, now_zero())
                .with_attempt_timeout(Duration::from_millis(100));
            r.destination("example.test").await;
            let before = queries.load(Ordering::SeqCst);
            r.destination("example.test").await;
            assert_eq!(
                queries.load(Ordering::SeqCst),
                before,
                "second lookup from the cache"
            );
            r.destination("silent.test").await
        });
        assert!(
            matches!(&silent, Destination::TemporaryFailure(w) if w.contains("timed out")),
            "{silent:?}"
        );
        dns.stop();
    }
}
