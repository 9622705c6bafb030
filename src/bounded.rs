//! Bounded maps for the delivery runtime's caches. Everything a shard remembers because of
//! traffic (routes per domain, parsed templates per message) has a named bound and evicts;
//! anything evicted can be rebuilt (a route is resolved again, a template parsed again from
//! the queue), so eviction costs time, never correctness. Pure code; the clock is injected.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::Instant;

/// A map whose entries expire, holding at most `capacity` of them. Expired entries are swept
/// when the map fills; if it is still full, the entries that expire soonest go first.
pub struct ExpiringMap<K, V> {
    map: HashMap<K, (V, Instant)>,
    capacity: usize,
}

impl<K: Hash + Eq + Clone, V> ExpiringMap<K, V> {
    pub fn new(capacity: usize) -> Self {
        ExpiringMap {
            map: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The live value for `key`.
    pub fn get<Q>(&self, key: &Q, now: Instant) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map
            .get(key)
            .filter(|(_, until)| *until > now)
            .map(|(v, _)| v)
    }

    /// The value for `key`, expired or not: a stale route still names the right hosts
    /// for a recipient that was routed with it.
    pub fn get_any<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.map.get(key).map(|(v, _)| v)
    }

    pub fn insert(&mut self, key: K, value: V, until: Instant, now: Instant) {
        if self.map.len() >= self.capacity && !self.map.contains_key(&key) {
            self.sweep(now);
            if self.map.len() >= self.capacity {
                // Still full of live entries: drop the eighth that would expire soonest.
                let mut soonest: Vec<(Instant, K)> =
                    self.map.iter().map(|(k, (_, u))| (*u, k.clone())).collect();
                soonest.sort_unstable_by_key(|(u, _)| *u);
                for (_, k) in soonest.into_iter().take(self.capacity / 8 + 1) {
                    self.map.remove(&k);
                }
            }
        }
        self.map.insert(key, (value, until));
    }

    /// Drops every expired entry.
    pub fn sweep(&mut self, now: Instant) {
        self.map.retain(|_, (_, until)| *until > now);
    }

    /// Entries held, expired ones included until swept or evicted.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// A map whose values have a weight (bytes), holding at most `weight_max` of it: inserting
/// evicts the oldest insertions first (never the one just inserted, so a single value over
/// the bound is still kept while it is in use).
pub struct WeightedFifo<K, V> {
    map: HashMap<K, (V, usize)>,
    order: VecDeque<K>,
    weight: usize,
    weight_max: usize,
}

impl<K: Hash + Eq + Clone, V> WeightedFifo<K, V> {
    pub fn new(weight_max: usize) -> Self {
        WeightedFifo {
            map: HashMap::new(),
            order: VecDeque::new(),
            weight: 0,
            weight_max,
        }
    }

    pub fn get(&self, key: &K) -> Option<&V> {
        self.map.get(key).map(|(v, _)| v)
    }

    pub fn insert(&mut self, key: K, value: V, weight: usize) {
        self.remove(&key);
        while self.weight + weight > self.weight_max {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            if let Some((_, w)) = self.map.remove(&old) {
                self.weight -= w;
            }
        }
        self.weight += weight;
        self.order.push_back(key.clone());
        self.map.insert(key, (value, weight));
    }

    pub fn remove(&mut self, key: &K) {
        if let Some((_, w)) = self.map.remove(key) {
            self.weight -= w;
        }
        // Removed keys stay in `order` until they reach its front; compact before it holds
        // more than twice what the map does, so it stays bounded by the map.
        if self.order.len() > 2 * self.map.len() + 64 {
            let map = &self.map;
            self.order.retain(|k| map.contains_key(k));
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The weight held now.
    #[cfg(test)]
    pub fn weight(&self) -> usize {
        self.weight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expiring_map_expires_and_stays_within_capacity() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut m = ExpiringMap::new(100);
        m.insert("a".to_string(), 1, t0 + 10 * s, t0);
        assert_eq!(m.get("a", t0 + 9 * s), Some(&1));
        assert_eq!(m.get("a", t0 + 10 * s), None, "expired");
        for i in 0..10_000u32 {
            m.insert(format!("d{i}"), i, t0 + 60 * s + s * i, t0 + s);
            assert!(m.len() <= 100);
        }
        // The newest entries (expiring last) survive.
        assert_eq!(m.get("d9999", t0 + 2 * s), Some(&9999));
        m.sweep(t0 + 100_000 * s);
        assert!(m.is_empty());
    }

    #[test]
    fn weighted_fifo_stays_within_its_weight_and_forgets_removed_keys() {
        let mut c = WeightedFifo::new(1000);
        for i in 0..100u64 {
            c.insert(i, i, 300);
            assert!(c.weight() <= 1000);
        }
        assert_eq!(c.len(), 3);
        assert!(c.get(&99).is_some() && c.get(&96).is_none());
        // One value over the bound is kept while it is the newest.
        c.insert(1000, 1000, 5000);
        assert_eq!((c.len(), c.weight()), (1, 5000));
        c.remove(&1000);
        assert!(c.is_empty());
        // Insert and remove forever: the order stays bounded too.
        for i in 0..100_000u64 {
            c.insert(i, i, 1);
            c.remove(&i);
        }
        assert!(c.order.len() <= 64 + 1, "{}", c.order.len());
    }
}
