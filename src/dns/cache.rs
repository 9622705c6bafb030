//! A bounded DNS cache honouring TTLs, with negative caching (RFC 2308); clock injected.

use super::message::{Answer, QueryType};
use std::collections::{HashMap, VecDeque};

/// Answers kept at most; the oldest insertion goes first when full.
pub const CACHE_ENTRIES_MAX: usize = 100_000;
/// Positive TTLs are clamped to this range: a zero TTL would mean a lookup per message.
pub const TTL_MIN_S: u32 = 5;
pub const TTL_MAX_S: u32 = 86_400;
/// Negative answers are kept at most an hour, so a domain that gets fixed is seen soon.
pub const NEGATIVE_TTL_MAX_S: u32 = 3_600;
/// A server failure is remembered briefly, so a broken domain is not asked per message.
pub const FAILURE_TTL_S: u32 = 5;

type Key = (Box<str>, QueryType);

pub struct DnsCache {
    entries: HashMap<Key, (Answer, u64, u64)>,
    /// Insertion order with each insertion's generation, for eviction.
    order: VecDeque<(Key, u64)>,
    capacity: usize,
    generation: u64,
}

impl DnsCache {
    pub fn new(capacity: usize) -> Self {
        DnsCache {
            entries: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
            generation: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// A live answer, or `None` if absent or expired.
    pub fn get(&mut self, domain: &str, qtype: QueryType, now_ms: u64) -> Option<&Answer> {
        let key: Key = (domain.into(), qtype);
        let expired = self
            .entries
            .get(&key)
            .is_some_and(|(_, expires, _)| *expires <= now_ms);
        if expired {
            self.entries.remove(&key);
            return None;
        }
        self.entries.get(&key).map(|(a, _, _)| a)
    }

    /// Stores an answer for its TTL (clamped); truncated answers are not stored.
    pub fn insert(&mut self, domain: &str, qtype: QueryType, answer: Answer, now_ms: u64) {
        let ttl_s = match &answer {
            Answer::Mx { ttl_s, .. }
            | Answer::Addrs { ttl_s, .. }
            | Answer::Txt { ttl_s, .. }
            | Answer::Ptr { ttl_s, .. } => (*ttl_s).clamp(TTL_MIN_S, TTL_MAX_S),
            Answer::NoData { ttl_s } | Answer::NxDomain { ttl_s } => {
                (*ttl_s).clamp(TTL_MIN_S, NEGATIVE_TTL_MAX_S)
            }
            Answer::ServerFailure(_) => FAILURE_TTL_S,
            // Not answers of their own: the resolver asks again (TCP, the alias's target).
            Answer::Truncated | Answer::Alias { .. } => return,
        };
        while self.entries.len() >= self.capacity {
            let Some((old, generation)) = self.order.pop_front() else {
                break;
            };
            if self
                .entries
                .get(&old)
                .is_some_and(|(_, _, g)| *g == generation)
            {
                self.entries.remove(&old);
            }
        }
        self.generation += 1;
        let key: Key = (domain.into(), qtype);
        self.order.push_back((key.clone(), self.generation));
        self.entries.insert(
            key,
            (answer, now_ms + u64::from(ttl_s) * 1000, self.generation),
        );
        // Refreshed and expired entries leave stale positions behind; drop them before the
        // order outgrows the cache, so it stays bounded by 2 x capacity.
        if self.order.len() > 2 * self.capacity {
            let entries = &self.entries;
            self.order
                .retain(|(k, g)| entries.get(k).is_some_and(|(_, _, live)| live == g));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn honours_ttls_and_clamps() {
        let mut c = DnsCache::new(10);
        c.insert(
            "a.example",
            QueryType::Mx,
            Answer::Mx {
                records: vec![(10, "mx".into())],
                ttl_s: 60,
            },
            0,
        );
        assert!(c.get("a.example", QueryType::Mx, 59_999).is_some());
        assert!(c.get("a.example", QueryType::Mx, 60_000).is_none());
        c.insert(
            "b.example",
            QueryType::A,
            Answer::Addrs {
                addrs: vec![],
                ttl_s: 0,
            },
            0,
        );
        assert!(
            c.get("b.example", QueryType::A, 4_999).is_some(),
            "zero TTL clamped up"
        );
        c.insert(
            "c.example",
            QueryType::Mx,
            Answer::NxDomain { ttl_s: 999_999 },
            0,
        );
        assert!(
            c.get("c.example", QueryType::Mx, 3_600_000).is_none(),
            "negative TTL clamped down"
        );
        c.insert(
            "d.example",
            QueryType::Mx,
            Answer::ServerFailure("SERVFAIL".into()),
            0,
        );
        assert!(c.get("d.example", QueryType::Mx, 4_000).is_some());
        assert!(c.get("d.example", QueryType::Mx, 5_000).is_none());
        c.insert("e.example", QueryType::Mx, Answer::Truncated, 0);
        assert!(c.get("e.example", QueryType::Mx, 0).is_none());
    }

    #[test]
    fn refreshing_the_same_names_forever_keeps_the_order_bounded() {
        let mut c = DnsCache::new(4);
        for round in 0..10_000u64 {
            for d in ["a.example", "b.example"] {
                c.insert(
                    d,
                    QueryType::A,
                    Answer::NoData { ttl_s: 60 },
                    round * 61_000,
                );
            }
        }
        assert_eq!(c.len(), 2);
        assert!(c.order.len() <= 2 * 4 + 1, "{}", c.order.len());
    }

    #[test]
    fn bounded_oldest_first() {
        let mut c = DnsCache::new(3);
        for (i, d) in ["a", "b", "c", "d"].iter().enumerate() {
            c.insert(d, QueryType::A, Answer::NoData { ttl_s: 60 }, i as u64);
        }
        assert_eq!(c.len(), 3);
        assert!(c.get("a", QueryType::A, 10).is_none());
        assert!(c.get("d", QueryType::A, 10).is_some());
        // Re-inserting refreshes: "b" is no longer the oldest.
        c.insert("b", QueryType::A, Answer::NoData { ttl_s: 60 }, 20);
        c.insert("e", QueryType::A, Answer::NoData { ttl_s: 60 }, 21);
        assert!(c.get("b", QueryType::A, 22).is_some());
        assert!(c.get("c", QueryType::A, 22).is_none());
    }
}
