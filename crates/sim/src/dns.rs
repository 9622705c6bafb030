//! A small authoritative DNS responder on loopback, for runs against simulated providers: it
//! answers MX and A questions for the names it was given (NXDOMAIN for any other name, an
//! empty answer for other types), so the engine resolves through its real resolver.
//! hickory-proto does the wire format; one plain thread serves the UDP socket.

use super::profile::SinkProfile;
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, MX};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

const TTL_S: u32 = 300;

/// The records served: MX per domain, addresses per host, PTR names per address (names
/// lowercase, no final dot).
#[derive(Debug, Clone, Default)]
pub struct Zone {
    pub mx: HashMap<String, Vec<(u16, String)>>,
    pub hosts: HashMap<String, Vec<IpAddr>>,
    pub ptr: HashMap<IpAddr, Vec<String>>,
}

impl Zone {
    /// MX records for every provider domain pointing at the provider's MX host(s), whose
    /// addresses are the provider's listen addresses.
    pub fn for_sink(profile: &SinkProfile) -> Zone {
        let mut z = Zone::default();
        for p in &profile.providers {
            for d in &p.domains {
                let host = p.mx_host(d);
                z.mx.insert(d.to_ascii_lowercase(), vec![(10, host.clone())]);
                z.hosts.insert(host, p.listen.clone());
            }
        }
        z
    }
}

pub struct DnsResponder {
    pub addr: SocketAddr,
    pub queries: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DnsResponder {
    /// Serves `zone` on `addr` (a loopback address; port 0 picks a free one).
    pub fn start(addr: SocketAddr, zone: Zone) -> Result<DnsResponder, String> {
        if !addr.ip().is_loopback() {
            return Err(format!("DNS responder address {addr} is not loopback"));
        }
        let socket = UdpSocket::bind(addr).map_err(|e| format!("DNS responder {addr}: {e}"))?;
        let addr = socket.local_addr().map_err(|e| e.to_string())?;
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .map_err(|e| e.to_string())?;
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicU64::new(0));
        let (s, q) = (Arc::clone(&stop), Arc::clone(&queries));
        let thread = std::thread::Builder::new()
            .name("spate-sim-dns".into())
            .spawn(move || serve(socket, zone, s, q))
            .map_err(|e| e.to_string())?;
        Ok(DnsResponder {
            addr,
            queries,
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for DnsResponder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(socket: UdpSocket, zone: Zone, stop: Arc<AtomicBool>, queries: Arc<AtomicU64>) {
    let mut buf = [0u8; 1500];
    while !stop.load(Ordering::Relaxed) {
        let Ok((n, peer)) = socket.recv_from(&mut buf) else {
            continue;
        };
        queries.fetch_add(1, Ordering::Relaxed);
        match answer(&zone, &buf[..n]) {
            Some(reply) => {
                if let Err(e) = socket.send_to(&reply, peer) {
                    eprintln!("sim dns: send to {peer}: {e}");
                }
            }
            None => eprintln!("sim dns: unanswerable datagram of {n} bytes from {peer}"),
        }
    }
}

/// The response to one query datagram; None for what is not a query at all.
pub fn answer(zone: &Zone, query: &[u8]) -> Option<Vec<u8>> {
    let q = Message::from_vec(query).ok()?;
    if q.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut m = Message::response(q.metadata.id, OpCode::Query);
    m.metadata.authoritative = true;
    m.metadata.recursion_desired = q.metadata.recursion_desired;
    let Some(question) = q.queries.first().cloned() else {
        m.metadata.response_code = ResponseCode::FormErr;
        return m.to_vec().ok();
    };
    let name = question.name().clone();
    let key = name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
    let qtype = question.query_type();
    m.add_query(question);
    let reverse: Vec<&String> = zone
        .ptr
        .iter()
        .filter(|(ip, _)| spate::dns::message::reverse_name(**ip) == key)
        .flat_map(|(_, names)| names)
        .collect();
    let known = zone.mx.contains_key(&key) || zone.hosts.contains_key(&key) || !reverse.is_empty();
    if !known {
        m.metadata.response_code = ResponseCode::NXDomain;
        return m.to_vec().ok();
    }
    match qtype {
        RecordType::MX => {
            for (pref, host) in zone.mx.get(&key).into_iter().flatten() {
                // Any bytes in a label (hostile-DNS tests serve `mx:2525`, which a zone file
                // cannot write but the wire can carry).
                let exchange = Name::from_ascii(format!("{host}."))
                    .or_else(|_| Name::from_labels(host.split('.').map(str::as_bytes)))
                    .ok()?;
                m.add_answer(Record::from_rdata(
                    name.clone(),
                    TTL_S,
                    RData::MX(MX::new(*pref, exchange)),
                ));
            }
        }
        RecordType::A | RecordType::AAAA => {
            for ip in zone.hosts.get(&key).into_iter().flatten() {
                let data = match ip {
                    IpAddr::V4(v4) if qtype == RecordType::A => RData::A(A(*v4)),
                    IpAddr::V6(v6) if qtype == RecordType::AAAA => RData::AAAA(AAAA(*v6)),
                    _ => continue,
                };
                m.add_answer(Record::from_rdata(name.clone(), TTL_S, data));
            }
        }
        RecordType::PTR => {
            for target in reverse {
                let target = Name::from_ascii(format!("{target}.")).ok()?;
                m.add_answer(Record::from_rdata(
                    name.clone(),
                    TTL_S,
                    RData::PTR(hickory_proto::rr::rdata::PTR(target)),
                ));
            }
        }
        _ => {}
    }
    m.to_vec().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use spate::dns::message::{build_query, parse_response, Answer, QueryType};

    #[test]
    fn answers_mx_a_and_nxdomain_as_the_resolver_reads_them() {
        let mut z = Zone::default();
        z.mx.insert("gmail.test".into(), vec![(10, "mx.google.test".into())]);
        z.hosts
            .insert("mx.google.test".into(), vec!["127.0.0.2".parse().unwrap()]);
        let ask = |name: &str, t| {
            let q = build_query(9, name, t).unwrap();
            parse_response(&answer(&z, &q).unwrap(), 9, name, t).unwrap()
        };
        assert_eq!(
            ask("Gmail.test", QueryType::Mx),
            Answer::Mx {
                records: vec![(10, "mx.google.test".into())],
                ttl_s: TTL_S
            }
        );
        assert_eq!(
            ask("mx.google.test", QueryType::A),
            Answer::Addrs {
                addrs: vec!["127.0.0.2".parse().unwrap()],
                ttl_s: TTL_S
            }
        );
        assert!(matches!(
            ask("mx.google.test", QueryType::Aaaa),
            Answer::NoData { .. }
        ));
        assert!(matches!(
            ask("nowhere.test", QueryType::Mx),
            Answer::NxDomain { .. }
        ));
    }
}
