//! `dns::message::parse_response` and `dns::mx::plan` on what a DNS server (or a spoofer)
//! can send.
//!
//! `check_raw`: the input is a datagram, read as the answer to query `ID` for `DOMAIN`, once
//! for each query type. `check_structured`: the input (read with `arbitrary`) describes a
//! response: header flags, the question, answer records owned by the queried name, a CNAME
//! chain or another name, with names that are ordinary, odd (IP literals, LDH violations,
//! escaped bytes) or random labels; hickory-proto encodes it, then a few of its bytes may be
//! overwritten, so both the logic past the wire format and the wire format's edges are hit.
//!
//! Properties (both):
//! - it never panics;
//! - an answer is of the queried type: `Mx` only for MX, `Addrs` only for A or AAAA with
//!   addresses of that family; at most `ANSWER_RECORDS_MAX` records;
//! - `mx::plan` orders at most `MX_HOSTS_MAX` distinct hosts, each an LDH host name that
//!   `address::check_host_name` accepts; an `Unusable` plan names at most `REFUSED_NAMED_MAX`
//!   targets;
//! - a CNAME target to follow is a name a query can be built for, or refused as one.

use arbitrary::{Arbitrary, Unstructured};
use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, MX, PTR, SOA, TXT};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use spate::address::check_host_name;
use spate::dns::message::{build_query, parse_response, Answer, QueryType, ANSWER_RECORDS_MAX};
use spate::dns::mx::{plan, MxPlan, MX_HOSTS_MAX, REFUSED_NAMED_MAX};
use std::net::IpAddr;

pub const ID: u16 = 0x5a7e;
pub const DOMAIN: &str = "example.com";
const QUERY_TYPES: [QueryType; 5] = [
    QueryType::Mx,
    QueryType::A,
    QueryType::Aaaa,
    QueryType::Txt,
    QueryType::Ptr,
];

pub fn check_raw(input: &[u8]) {
    for qtype in QUERY_TYPES {
        check_answer(parse_response(input, ID, DOMAIN, qtype), qtype);
    }
}

fn check_answer(answer: Result<Answer, spate::dns::message::DnsError>, qtype: QueryType) {
    let Ok(answer) = answer else { return };
    match answer {
        Answer::Mx { records, .. } => {
            assert_eq!(qtype, QueryType::Mx, "MX records for a {qtype:?} query");
            assert!(!records.is_empty());
            assert!(
                records.len() <= ANSWER_RECORDS_MAX,
                "{} MX records",
                records.len()
            );
            check_plan(&records);
        }
        Answer::Txt { records, .. } => {
            assert_eq!(qtype, QueryType::Txt, "TXT records for a {qtype:?} query");
            assert!(!records.is_empty());
            assert!(
                records.len() <= ANSWER_RECORDS_MAX,
                "{} TXT records",
                records.len()
            );
        }
        Answer::Ptr { names, .. } => {
            assert_eq!(qtype, QueryType::Ptr, "PTR records for a {qtype:?} query");
            assert!(!names.is_empty());
            assert!(
                names.len() <= ANSWER_RECORDS_MAX,
                "{} PTR records",
                names.len()
            );
            assert!(
                names
                    .iter()
                    .all(|n| !n.ends_with('.') && *n == n.to_ascii_lowercase()),
                "{names:?}"
            );
        }
        Answer::Addrs { addrs, .. } => {
            assert!(
                matches!(qtype, QueryType::A | QueryType::Aaaa),
                "addresses for a {qtype:?} query"
            );
            assert!(!addrs.is_empty());
            assert!(
                addrs.len() <= ANSWER_RECORDS_MAX,
                "{} addresses",
                addrs.len()
            );
            let v4 = qtype == QueryType::A;
            assert!(
                addrs.iter().all(|a| matches!(a, IpAddr::V4(_)) == v4),
                "{addrs:?} for {qtype:?}"
            );
        }
        Answer::Alias { target } => {
            let _ = build_query(ID, &target, qtype);
        }
        Answer::NoData { .. }
        | Answer::NxDomain { .. }
        | Answer::ServerFailure(_)
        | Answer::Truncated => {}
    }
}

fn check_plan(records: &[(u16, String)]) {
    let mut seed = 0x9e37_79b9usize;
    let mut pick = |n: usize| {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) % n
    };
    match plan(records, &mut pick) {
        MxPlan::Hosts(hosts) => {
            assert!(
                !hosts.is_empty() && hosts.len() <= MX_HOSTS_MAX,
                "{hosts:?}"
            );
            for (i, h) in hosts.iter().enumerate() {
                assert!(
                    check_host_name(h).is_ok(),
                    "MX host {h:?} is not a host name"
                );
                assert!(
                    h.parse::<IpAddr>().is_err(),
                    "MX host {h:?} is an IP address"
                );
                assert!(!hosts[..i].contains(h), "MX host {h:?} twice");
            }
        }
        MxPlan::NullMx => {}
        MxPlan::Unusable(why) => {
            assert!(why.matches("MX ").count() <= REFUSED_NAMED_MAX, "{why}");
        }
    }
}

// ---- Structured responses ----

#[derive(Debug, Arbitrary)]
struct Response {
    /// Answer the query's id (else another).
    same_id: bool,
    is_response: bool,
    truncated: bool,
    rcode: u8,
    question: Question,
    qtype: u8,
    answers: Vec<FuzzRecord>,
    soa: Option<(u32, u32)>,
    /// Bytes overwritten after encoding: (offset, value).
    edits: Vec<(u16, u8)>,
}

#[derive(Debug, Arbitrary)]
enum Question {
    Queried,
    /// The queried name in other letter case.
    Upper,
    Other(FuzzName),
    None,
}

#[derive(Debug, Arbitrary)]
struct FuzzRecord {
    owner: Owner,
    class_in: bool,
    ttl: u32,
    data: FuzzData,
}

#[derive(Debug, Arbitrary)]
enum Owner {
    Queried,
    /// The `n % 4`-th link of a CNAME chain.
    Link(u8),
    Other(FuzzName),
}

#[derive(Debug, Arbitrary)]
enum FuzzData {
    Mx(u16, FuzzName),
    A([u8; 4]),
    Aaaa([u8; 16]),
    Cname(Owner),
    Txt(String),
    Ptr(FuzzName),
}

#[derive(Debug, Arbitrary)]
enum FuzzName {
    /// One of `NAMES`.
    Known(u8),
    /// Labels of any bytes (escaped when shown as text).
    Labels(Vec<Vec<u8>>),
}

/// Names that sit on the edges of what an MX target may be.
const NAMES: &[&str] = &[
    "mx1.example.com.",
    "MX2.Example.COM.",
    ".",
    "1.2.3.4.",
    "localhost.",
    "a-.example.",
    "-a.example.",
    "xn--bcher-kva.example.",
    "mx.example.123.",
    "mail.example.com.",
    "_25._tcp.example.",
    "a.b.c.d.e.f.g.h.example.",
];

fn name(n: &FuzzName) -> Name {
    match n {
        // Raw labels: `from_ascii` refuses some of these names, a DNS server need not.
        FuzzName::Known(i) => Name::from_labels(
            NAMES[usize::from(*i) % NAMES.len()]
                .split('.')
                .filter(|l| !l.is_empty())
                .map(str::as_bytes),
        )
        .expect("every name in NAMES has valid labels"),
        FuzzName::Labels(labels) => Name::from_labels(labels.iter().take(8).map(|l| {
            let l = if l.is_empty() {
                &b"x"[..]
            } else {
                &l[..l.len().min(63)]
            };
            l.to_vec()
        }))
        .unwrap_or_else(|_| Name::root()),
    }
}

fn owner(o: &Owner, queried: &Name) -> Name {
    match o {
        Owner::Queried => queried.clone(),
        Owner::Link(n) => Name::from_ascii(format!("link{}.example.net.", n % 4)).unwrap(),
        Owner::Other(n) => name(n),
    }
}

pub fn check_structured(input: &[u8]) {
    let Ok(r) = Response::arbitrary_take_rest(Unstructured::new(input)) else {
        return;
    };
    let qtype = QUERY_TYPES[usize::from(r.qtype) % QUERY_TYPES.len()];
    let record_type = match qtype {
        QueryType::Mx => RecordType::MX,
        QueryType::A => RecordType::A,
        QueryType::Aaaa => RecordType::AAAA,
        QueryType::Txt => RecordType::TXT,
        QueryType::Ptr => RecordType::PTR,
    };
    let queried = Name::from_ascii(format!("{DOMAIN}.")).unwrap();
    let id = if r.same_id { ID } else { ID ^ 1 };
    let message_type = if r.is_response {
        MessageType::Response
    } else {
        MessageType::Query
    };
    let mut m = Message::new(id, message_type, OpCode::Query);
    m.metadata.truncation = r.truncated;
    m.metadata.response_code = ResponseCode::from_low(r.rcode % 16);
    match &r.question {
        Question::Queried => {
            m.add_query(Query::query(queried.clone(), record_type));
        }
        Question::Upper => {
            let upper = Name::from_ascii(format!("{}.", DOMAIN.to_uppercase())).unwrap();
            m.add_query(Query::query(upper, record_type));
        }
        Question::Other(n) => {
            m.add_query(Query::query(name(n), record_type));
        }
        Question::None => {}
    }
    for a in r.answers.iter().take(48) {
        let data = match &a.data {
            FuzzData::Mx(pref, host) => RData::MX(MX::new(*pref, name(host))),
            FuzzData::A(b) => RData::A(A::from(std::net::Ipv4Addr::from(*b))),
            FuzzData::Aaaa(b) => RData::AAAA(AAAA::from(std::net::Ipv6Addr::from(*b))),
            FuzzData::Cname(target) => RData::CNAME(CNAME(owner(target, &queried))),
            FuzzData::Txt(t) => RData::TXT(TXT::new(vec![t.chars().take(200).collect()])),
            FuzzData::Ptr(n) => RData::PTR(PTR(name(n))),
        };
        let mut record = Record::from_rdata(owner(&a.owner, &queried), a.ttl, data);
        if !a.class_in {
            record.dns_class = DNSClass::CH;
        }
        m.add_answer(record);
    }
    if let Some((ttl, minimum)) = r.soa {
        let zone = Name::from_ascii("example.com.").unwrap();
        let soa = SOA::new(zone.clone(), zone.clone(), 1, 60, 60, 60, minimum);
        m.add_authority(Record::from_rdata(zone, ttl, RData::SOA(soa)));
    }
    let Ok(mut bytes) = m.to_vec() else { return };
    for &(at, value) in r.edits.iter().take(4) {
        if !bytes.is_empty() {
            let at = usize::from(at) % bytes.len();
            bytes[at] = value;
        }
    }
    check_answer(parse_response(&bytes, ID, DOMAIN, qtype), qtype);
}
