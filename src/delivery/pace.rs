//! Paces every shard shares: a provider's `provider_max_message_rate` across its scopes at
//! each egress source. Each of those scopes keeps its own pace (its `max_message_rate` and
//! the receiver's pushback, per source, as receivers count); a message also takes the next
//! slot of its provider's shared pace, whichever shard sends it. Virtual scheduling: the
//! provider's next free slot, moved on by one interval per message, under a lock taken once
//! per message of such a provider only. One entry per provider with the key.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct SharedPaces {
    next: Mutex<HashMap<Box<str>, Instant>>,
}

impl SharedPaces {
    /// The slot of a message of `n` recipients to `provider` at `rate` a second, no sooner
    /// than `at`: the provider's next free slot or `at`, whichever is later.
    pub fn reserve(&self, provider: &str, rate: f64, n: u32, at: Instant) -> Instant {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        let slot = match next.get(provider) {
            Some(&free) => free.max(at),
            None => at,
        };
        let after = slot + interval(rate, n);
        match next.get_mut(provider) {
            Some(free) => *free = after,
            None => {
                next.insert(provider.into(), after);
            }
        }
        slot
    }

    /// A slot at `now` if the provider's pace has one free by then (for a message pipelined
    /// behind another, which never waits): taken if so.
    pub fn try_reserve(&self, provider: &str, rate: f64, n: u32, now: Instant) -> bool {
        let mut next = self.next.lock().unwrap_or_else(|p| p.into_inner());
        match next.get_mut(provider) {
            Some(free) if *free > now => false,
            Some(free) => {
                *free = now + interval(rate, n);
                true
            }
            None => {
                next.insert(provider.into(), now + interval(rate, n));
                true
            }
        }
    }
}

fn interval(rate: f64, n: u32) -> Duration {
    Duration::from_secs_f64(f64::from(n.max(1)) / rate.max(1e-6))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_one_pace_whoever_takes_them() {
        let p = SharedPaces::default();
        let t = Instant::now();
        // 10/s: two sources asking at once get slots 100 ms apart.
        assert_eq!(p.reserve("y", 10.0, 1, t), t);
        assert_eq!(p.reserve("y", 10.0, 1, t), t + Duration::from_millis(100));
        // A message of three recipients takes three slots.
        assert_eq!(p.reserve("y", 10.0, 3, t), t + Duration::from_millis(200));
        assert_eq!(p.reserve("y", 10.0, 1, t), t + Duration::from_millis(500));
        // Another provider has a pace of its own.
        assert_eq!(p.reserve("g", 10.0, 1, t), t);
        // Pipelining takes a slot only when one is free now.
        assert!(!p.try_reserve("y", 10.0, 1, t + Duration::from_millis(550)));
        assert!(p.try_reserve("y", 10.0, 1, t + Duration::from_millis(600)));
        assert_eq!(p.reserve("y", 10.0, 1, t), t + Duration::from_millis(700));
        // Idle: the pace does not bank slots for later.
        let later = t + Duration::from_secs(60);
        assert_eq!(p.reserve("y", 10.0, 1, later), later);
        assert_eq!(
            p.reserve("y", 10.0, 1, later),
            later + Duration::from_millis(100)
        );
    }
}
