//! DNS queries and answers on the wire, with hickory-proto doing the encoding; sans I/O.
//!
//! `parse_response` reduces a response to what mail routing needs: records with their TTL,
//! "no such domain" and "no data" with a negative-caching TTL (RFC 2308: the SOA's minimum),
//! or a temporary failure. It checks the id and the question, so a stray or spoofed datagram
//! is rejected rather than believed, and it believes only answer records of class IN that
//! belong to the queried name or to the CNAME chain that starts there (at most
//! `CNAME_CHAIN_MAX` links): a record for another name in the answer section is ignored, not
//! taken as this name's.

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use std::fmt;
use std::net::IpAddr;

/// Negative answers without an SOA are cached this long.
pub const NEGATIVE_TTL_DEFAULT_S: u32 = 300;
/// CNAME links followed from a queried name, within one answer and across the queries the
/// resolver makes for a chain that the answer leaves unfinished. Real chains are one or two
/// links; a loop or an endless chain ends here as a temporary failure.
pub const CNAME_CHAIN_MAX: usize = 8;
/// Records of the queried type taken from one answer; the rest are ignored. MX planning keeps
/// 16 hosts and a delivery tries 5 addresses, so more would only cost memory.
pub const ANSWER_RECORDS_MAX: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueryType {
    Mx,
    A,
    Aaaa,
    /// Text records (DKIM key records at start).
    Txt,
    /// Pointer records (an egress source's reverse DNS, at start).
    Ptr,
}

impl QueryType {
    fn record_type(self) -> RecordType {
        match self {
            QueryType::Mx => RecordType::MX,
            QueryType::A => RecordType::A,
            QueryType::Aaaa => RecordType::AAAA,
            QueryType::Txt => RecordType::TXT,
            QueryType::Ptr => RecordType::PTR,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// MX records as (preference, exchange without the trailing dot; "" for the root).
    Mx {
        records: Vec<(u16, String)>,
        ttl_s: u32,
    },
    Addrs {
        addrs: Vec<IpAddr>,
        ttl_s: u32,
    },
    /// TXT records, each one's strings joined (RFC 7208 3.3, RFC 6376 3.6.2.2), as text.
    Txt {
        records: Vec<String>,
        ttl_s: u32,
    },
    /// PTR records' names, lower case, without the trailing dot.
    Ptr {
        names: Vec<String>,
        ttl_s: u32,
    },
    /// The name exists but has no records of this type.
    NoData {
        ttl_s: u32,
    },
    /// The name does not exist.
    NxDomain {
        ttl_s: u32,
    },
    /// SERVFAIL, REFUSED and the like: try again later or elsewhere.
    ServerFailure(String),
    /// The answer did not fit a datagram: ask again over TCP.
    Truncated,
    /// The name is an alias (CNAME) whose target's records the answer does not include: ask
    /// for the target.
    Alias {
        target: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsError(pub String);

impl fmt::Display for DnsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn name_of(domain: &str) -> Result<Name, DnsError> {
    let mut name =
        Name::from_ascii(domain).map_err(|e| DnsError(format!("bad name {domain:?}: {e}")))?;
    name.set_fqdn(true);
    Ok(name)
}

/// The name a PTR query for `ip` asks about: `4.3.2.1.in-addr.arpa`, or the 32 nibbles of
/// an IPv6 address under `ip6.arpa` (RFC 1035 3.5, RFC 3596 2.5).
pub fn reverse_name(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, d] = v4.octets();
            format!("{d}.{c}.{b}.{a}.in-addr.arpa")
        }
        IpAddr::V6(v6) => {
            let mut s = String::with_capacity(72);
            for byte in v6.octets().iter().rev() {
                s.push_str(&format!("{:x}.{:x}.", byte & 0xf, byte >> 4));
            }
            s.push_str("ip6.arpa");
            s
        }
    }
}

/// A recursive query for `domain`.
pub fn build_query(id: u16, domain: &str, qtype: QueryType) -> Result<Vec<u8>, DnsError> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(name_of(domain)?, qtype.record_type()));
    m.to_vec()
        .map_err(|e| DnsError(format!("encode query: {e}")))
}

/// Reads the response to query `id` for `domain`/`qtype`.
pub fn parse_response(
    bytes: &[u8],
    id: u16,
    domain: &str,
    qtype: QueryType,
) -> Result<Answer, DnsError> {
    let m = Message::from_vec(bytes).map_err(|e| DnsError(format!("malformed response: {e}")))?;
    if m.metadata.id != id || m.metadata.message_type != MessageType::Response {
        return Err(DnsError("response does not answer our query (id)".into()));
    }
    let want = name_of(domain)?;
    let asked = m
        .queries
        .first()
        .map(|q| (q.name().clone(), q.query_type()));
    if asked.as_ref().is_none_or(|(n, t)| {
        !n.to_ascii().eq_ignore_ascii_case(&want.to_ascii()) || *t != qtype.record_type()
    }) {
        return Err(DnsError(
            "response does not answer our query (question)".into(),
        ));
    }
    if m.metadata.truncation {
        return Ok(Answer::Truncated);
    }
    let negative_ttl = || {
        m.authorities
            .iter()
            .find_map(|r| match &r.data {
                RData::SOA(soa) => Some(soa.minimum.min(r.ttl)),
                _ => None,
            })
            .unwrap_or(NEGATIVE_TTL_DEFAULT_S)
    };
    match m.metadata.response_code {
        ResponseCode::NoError => {}
        ResponseCode::NXDomain => {
            return Ok(Answer::NxDomain {
                ttl_s: negative_ttl(),
            })
        }
        other => return Ok(Answer::ServerFailure(format!("{other}"))),
    }
    let mut ttl_s = u32::MAX;
    let mut mx = Vec::new();
    let mut addrs = Vec::new();
    let mut txt = Vec::new();
    let mut ptr = Vec::new();
    // Follow the chain from the queried name: each round takes the records owned by `owner`;
    // a CNAME there moves `owner` to its target.
    // Names compare case-insensitively (hickory's `Name` equality); names from the wire are
    // fully qualified, and so is `want`.
    let mut owner = want.clone();
    let mut links = 0;
    loop {
        let mut next = None;
        for r in m.answers.iter().filter(|r| r.dns_class == DNSClass::IN) {
            if r.name != owner {
                continue;
            }
            let before = mx.len() + addrs.len() + txt.len() + ptr.len();
            match &r.data {
                RData::MX(rec) if qtype == QueryType::Mx && mx.len() < ANSWER_RECORDS_MAX => {
                    let host = rec
                        .exchange
                        .to_ascii()
                        .trim_end_matches('.')
                        .to_ascii_lowercase();
                    mx.push((rec.preference, host));
                }
                RData::A(a) if qtype == QueryType::A && addrs.len() < ANSWER_RECORDS_MAX => {
                    addrs.push(IpAddr::V4(a.0))
                }
                RData::AAAA(a) if qtype == QueryType::Aaaa && addrs.len() < ANSWER_RECORDS_MAX => {
                    addrs.push(IpAddr::V6(a.0))
                }
                RData::TXT(t) if qtype == QueryType::Txt && txt.len() < ANSWER_RECORDS_MAX => {
                    let joined: Vec<u8> =
                        t.txt_data.iter().flat_map(|s| s.iter().copied()).collect();
                    txt.push(String::from_utf8_lossy(&joined).into_owned());
                }
                RData::PTR(name) if qtype == QueryType::Ptr && ptr.len() < ANSWER_RECORDS_MAX => {
                    ptr.push(name.0.to_ascii().trim_end_matches('.').to_ascii_lowercase());
                }
                RData::CNAME(target) => {
                    next = Some(target.0.clone());
                    ttl_s = ttl_s.min(r.ttl);
                }
                _ => {}
            }
            if mx.len() + addrs.len() + txt.len() + ptr.len() > before {
                ttl_s = ttl_s.min(r.ttl);
            }
        }
        if !mx.is_empty() || !addrs.is_empty() || !txt.is_empty() || !ptr.is_empty() {
            break;
        }
        let Some(target) = next else { break };
        links += 1;
        if links > CNAME_CHAIN_MAX {
            return Ok(Answer::ServerFailure(format!(
                "CNAME chain from {domain} longer than {CNAME_CHAIN_MAX} links"
            )));
        }
        owner = target;
    }
    Ok(match qtype {
        QueryType::Mx if !mx.is_empty() => Answer::Mx { records: mx, ttl_s },
        QueryType::A | QueryType::Aaaa if !addrs.is_empty() => Answer::Addrs { addrs, ttl_s },
        QueryType::Txt if !txt.is_empty() => Answer::Txt {
            records: txt,
            ttl_s,
        },
        QueryType::Ptr if !ptr.is_empty() => Answer::Ptr { names: ptr, ttl_s },
        _ if links > 0 => Answer::Alias {
            target: owner.to_ascii().trim_end_matches('.').to_ascii_lowercase(),
        },
        _ => Answer::NoData {
            ttl_s: negative_ttl(),
        },
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use hickory_proto::rr::rdata::{A, MX, SOA};
    use hickory_proto::rr::Record;

    /// A response to `query` as a test DNS server would build it.
    pub fn respond(query: &[u8], rcode: ResponseCode, answers: Vec<Record>, soa: bool) -> Vec<u8> {
        let q = Message::from_vec(query).unwrap();
        let mut m = Message::response(q.metadata.id, OpCode::Query);
        m.metadata.response_code = rcode;
        m.metadata.recursion_available = true;
        for question in q.queries {
            m.add_query(question);
        }
        for a in answers {
            m.add_answer(a);
        }
        if soa {
            let zone = Name::from_ascii("example.").unwrap();
            let rdata = SOA::new(zone.clone(), zone.clone(), 1, 60, 60, 60, 42);
            m.add_authority(Record::from_rdata(zone, 3600, RData::SOA(rdata)));
        }
        m.to_vec().unwrap()
    }

    pub fn mx(owner: &str, pref: u16, host: &str, ttl: u32) -> Record {
        Record::from_rdata(
            Name::from_ascii(owner).unwrap(),
            ttl,
            RData::MX(MX::new(pref, Name::from_ascii(host).unwrap())),
        )
    }

    pub fn a(owner: &str, ip: [u8; 4], ttl: u32) -> Record {
        Record::from_rdata(
            Name::from_ascii(owner).unwrap(),
            ttl,
            RData::A(A::new(ip[0], ip[1], ip[2], ip[3])),
        )
    }

    #[test]
    fn mx_answer_with_min_ttl() {
        let q = build_query(7, "example.com", QueryType::Mx).unwrap();
        let r = respond(
            &q,
            ResponseCode::NoError,
            vec![
                mx("example.com.", 10, "mx1.example.com.", 300),
                mx("example.com.", 20, "MX2.example.com.", 60),
            ],
            false,
        );
        assert_eq!(
            parse_response(&r, 7, "example.com", QueryType::Mx).unwrap(),
            Answer::Mx {
                records: vec![
                    (10, "mx1.example.com".into()),
                    (20, "mx2.example.com".into())
                ],
                ttl_s: 60
            }
        );
    }

    #[test]
    fn ptr_names_and_answers() {
        let v4: IpAddr = "192.0.2.10".parse().unwrap();
        assert_eq!(reverse_name(v4), "10.2.0.192.in-addr.arpa");
        let v6: IpAddr = "2001:db8::567:89ab".parse().unwrap();
        assert_eq!(
            reverse_name(v6),
            "b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa"
        );
        let owner = reverse_name(v4);
        let q = build_query(3, &owner, QueryType::Ptr).unwrap();
        let ptr = |name: &str, ttl| {
            hickory_proto::rr::Record::from_rdata(
                Name::from_ascii(format!("{owner}.")).unwrap(),
                ttl,
                RData::PTR(hickory_proto::rr::rdata::PTR(
                    Name::from_ascii(name).unwrap(),
                )),
            )
        };
        let r = respond(
            &q,
            ResponseCode::NoError,
            vec![ptr("MTA1.Example.com.", 300), ptr("other.example.", 60)],
            false,
        );
        assert_eq!(
            parse_response(&r, 3, &owner, QueryType::Ptr).unwrap(),
            Answer::Ptr {
                names: vec!["mta1.example.com".into(), "other.example".into()],
                ttl_s: 60
            }
        );
        // PTR records for another query type are not answers.
        let q = build_query(4, &owner, QueryType::A).unwrap();
        let r = respond(
            &q,
            ResponseCode::NoError,
            vec![ptr("x.example.", 60)],
            false,
        );
        assert!(matches!(
            parse_response(&r, 4, &owner, QueryType::A).unwrap(),
            Answer::NoData { .. }
        ));
    }

    #[test]
    fn negative_answers_use_the_soa_minimum() {
        let q = build_query(1, "nope.example", QueryType::Mx).unwrap();
        let r = respond(&q, ResponseCode::NXDomain, vec![], true);
        assert_eq!(
            parse_response(&r, 1, "nope.example", QueryType::Mx).unwrap(),
            Answer::NxDomain { ttl_s: 42 }
        );
        let r = respond(&q, ResponseCode::NoError, vec![], false);
        assert_eq!(
            parse_response(&r, 1, "nope.example", QueryType::Mx).unwrap(),
            Answer::NoData {
                ttl_s: NEGATIVE_TTL_DEFAULT_S
            }
        );
        let r = respond(&q, ResponseCode::ServFail, vec![], false);
        assert!(matches!(
            parse_response(&r, 1, "nope.example", QueryType::Mx).unwrap(),
            Answer::ServerFailure(_)
        ));
    }

    #[test]
    fn addresses_and_mismatches() {
        let q = build_query(9, "mx1.example.com", QueryType::A).unwrap();
        let r = respond(
            &q,
            ResponseCode::NoError,
            vec![a("mx1.example.com.", [127, 0, 0, 1], 30)],
            false,
        );
        assert_eq!(
            parse_response(&r, 9, "mx1.example.com", QueryType::A).unwrap(),
            Answer::Addrs {
                addrs: vec!["127.0.0.1".parse().unwrap()],
                ttl_s: 30
            }
        );
        assert!(
            parse_response(&r, 10, "mx1.example.com", QueryType::A).is_err(),
            "wrong id"
        );
        assert!(
            parse_response(&r, 9, "other.example.com", QueryType::A).is_err(),
            "wrong question"
        );
        assert!(
            parse_response(&r, 9, "mx1.example.com", QueryType::Mx).is_err(),
            "wrong type"
        );
        assert!(parse_response(b"\x00\x09garbage", 9, "mx1.example.com", QueryType::A).is_err());
    }
}
