//! The gateway's limits, sans I/O (the time is passed in): recipients per user per UTC day
//! and per user per period (`[[users]] daily_limit`, `rate_limit`), failed AUTH attempts per
//! client address across sessions (the lockout), and connections per listener and per client
//! address. A user's counts are shared by every shard through atomics, so a limit holds for
//! the engine, not per shard, and no lock is taken per recipient.

use crate::config::Rate;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};

pub const DAY_MS: u64 = 86_400_000;
/// `UserCounter::day_accepted` keeps the day above these bits and the count below them.
const ACCEPTED_BITS: u32 = 40;
const ACCEPTED_MASK: u64 = (1 << ACCEPTED_BITS) - 1;
/// Client addresses the lockout table remembers at most; past it, the entries whose window
/// has passed go first, then the oldest.
pub const LOCKOUT_ADDRESSES_MAX: usize = 100_000;

/// The UTC day `unix_ms` falls in, counted from 1970-01-01.
pub fn utc_day(unix_ms: u64) -> u64 {
    unix_ms / DAY_MS
}

/// Why a recipient is refused for its user's limits (452 4.5.3 at RCPT).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    Daily(u64),
    Rate(Rate),
}

impl LimitHit {
    /// The reply text after the code.
    pub fn reply_text(&self) -> String {
        match self {
            LimitHit::Daily(n) => format!(
                "4.5.3 Daily limit of {n} recipients reached for this user; try again after 00:00 UTC"
            ),
            LimitHit::Rate(r) => format!(
                "4.5.3 Rate limit of {} recipients per {} s reached for this user; try again later",
                r.messages,
                r.per.as_secs()
            ),
        }
    }
}

/// One user's counts, shared by every shard.
#[derive(Debug, Default)]
pub struct UserCounter {
    /// (UTC day << `ACCEPTED_BITS`) | recipients of messages accepted (250 after the final
    /// dot) that day.
    day_accepted: AtomicU64,
    /// Recipients taken at RCPT whose message has not been accepted or refused yet: they
    /// count against the daily limit already, so sessions in parallel cannot overshoot it.
    reserved: AtomicU64,
    /// The rate limit's state (GCRA): when, in µs since the epoch, the bucket is empty again.
    rate_tat_us: AtomicU64,
    /// With `[cluster]`: (UTC day << `ACCEPTED_BITS`) | what the other nodes accepted for
    /// this user that day, as last read from Redis (`set_others`).
    others_accepted: AtomicU64,
}

impl UserCounter {
    /// Recipients accepted on `day`.
    pub fn accepted_on(&self, day: u64) -> u64 {
        let v = self.day_accepted.load(Ordering::Acquire);
        if v >> ACCEPTED_BITS == day {
            v & ACCEPTED_MASK
        } else {
            0
        }
    }

    /// What the other nodes of the cluster accepted for this user on `day`, as last read.
    pub fn others_on(&self, day: u64) -> u64 {
        let v = self.others_accepted.load(Ordering::Acquire);
        if v >> ACCEPTED_BITS == day {
            v & ACCEPTED_MASK
        } else {
            0
        }
    }

    /// The other nodes' count for `day`, as just read from Redis.
    pub fn set_others(&self, day: u64, n: u64) {
        self.others_accepted.store(
            (day << ACCEPTED_BITS) | n.min(ACCEPTED_MASK),
            Ordering::Release,
        );
    }

    /// Takes one recipient at RCPT, if the user's limits allow it; `release` or `accept`
    /// gives it back once the transaction ends.
    pub fn reserve(
        &self,
        daily_limit: Option<u64>,
        rate_limit: Option<Rate>,
        now_unix_ms: u64,
    ) -> Result<(), LimitHit> {
        if let Some(limit) = daily_limit {
            // Added first, checked after: two shards racing for the last one cannot both
            // get it (one may be refused needlessly, never both let through).
            let reserved = self.reserved.fetch_add(1, Ordering::AcqRel) + 1;
            let day = utc_day(now_unix_ms);
            if self.accepted_on(day) + self.others_on(day) + reserved > limit {
                self.reserved.fetch_sub(1, Ordering::AcqRel);
                return Err(LimitHit::Daily(limit));
            }
        } else {
            self.reserved.fetch_add(1, Ordering::AcqRel);
        }
        if let Some(rate) = rate_limit {
            if !self.take_rate(rate, now_unix_ms.saturating_mul(1000)) {
                self.reserved.fetch_sub(1, Ordering::AcqRel);
                return Err(LimitHit::Rate(rate));
            }
        }
        Ok(())
    }

    /// GCRA: each recipient moves the bucket's empty time one interval (`per / messages`) on;
    /// a burst of up to `messages` at once is allowed, as "N per period" promises.
    fn take_rate(&self, rate: Rate, now_us: u64) -> bool {
        let interval_us = (rate.per.as_micros() as u64 / rate.messages.max(1)).max(1);
        let burst_us = rate.per.as_micros() as u64;
        let mut tat = self.rate_tat_us.load(Ordering::Acquire);
        loop {
            let next = tat.max(now_us) + interval_us;
            if next - now_us > burst_us {
                return false;
            }
            match self.rate_tat_us.compare_exchange_weak(
                tat,
                next,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return true,
                Err(seen) => tat = seen,
            }
        }
    }

    /// `n` reserved recipients whose message was refused or abandoned: they never count.
    pub fn release(&self, n: u64) {
        let _ = self
            .reserved
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |r| {
                Some(r.saturating_sub(n))
            });
    }

    /// `n` reserved recipients whose message got its 250: counted for the day of `now`.
    pub fn accept(&self, n: u64, now_unix_ms: u64) {
        self.add(utc_day(now_unix_ms), n);
        self.release(n);
    }

    /// Adds `n` recipients accepted on `day` (also when counts are read back at start). A
    /// count for a day before the one held is dropped; a later day replaces it.
    pub fn add(&self, day: u64, n: u64) {
        let _ = self
            .day_accepted
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                let (held_day, count) = (v >> ACCEPTED_BITS, v & ACCEPTED_MASK);
                Some(match held_day.cmp(&day) {
                    std::cmp::Ordering::Equal => {
                        (day << ACCEPTED_BITS) | (count + n).min(ACCEPTED_MASK)
                    }
                    std::cmp::Ordering::Less => (day << ACCEPTED_BITS) | n.min(ACCEPTED_MASK),
                    std::cmp::Ordering::Greater => v,
                })
            });
    }
}

/// Failed AUTH attempts per client address, across sessions and listeners. An IPv6 client
/// counts by its /64, which one host usually holds whole. A success does not clear them:
/// otherwise one valid account would let its holder guess others' passwords for ever.
#[derive(Debug, Default)]
pub struct AuthLockout {
    entries: HashMap<IpAddr, Failures>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    /// The first failure of the current window.
    since_ms: u64,
    locked_until_ms: u64,
}

/// A lockout's settings: `failures_max` failures within `window_ms` lock the address out for
/// `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockoutRule {
    pub failures_max: u32,
    pub window_ms: u64,
}

/// How a client address counts for the lockout and the sessions per address: an IPv6
/// address by its /64, an IPv4-mapped one as IPv4.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let bits = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(bits.into())
            }
        },
    }
}

impl AuthLockout {
    /// When the address's lockout ends, if it is locked out now.
    pub fn locked_until(&self, ip: IpAddr, now_ms: u64) -> Option<u64> {
        let f = self.entries.get(&client_key(ip))?;
        (f.locked_until_ms > now_ms).then_some(f.locked_until_ms)
    }

    /// Counts a failure; true when it locks the address out.
    pub fn failed(&mut self, ip: IpAddr, now_ms: u64, rule: LockoutRule) -> bool {
        let key = client_key(ip);
        if !self.entries.contains_key(&key) && self.entries.len() >= LOCKOUT_ADDRESSES_MAX {
            self.make_room(now_ms, rule.window_ms);
        }
        let f = self.entries.entry(key).or_insert(Failures {
            count: 0,
            since_ms: now_ms,
            locked_until_ms: 0,
        });
        if now_ms.saturating_sub(f.since_ms) > rule.window_ms {
            *f = Failures {
                count: 0,
                since_ms: now_ms,
                locked_until_ms: 0,
            };
        }
        f.count = f.count.saturating_add(1);
        if f.count >= rule.failures_max {
            f.locked_until_ms = now_ms + rule.window_ms;
            // The next window starts when the lockout ends.
            f.since_ms = f.locked_until_ms;
            f.count = 0;
            return true;
        }
        false
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn make_room(&mut self, now_ms: u64, window_ms: u64) {
        self.entries.retain(|_, f| {
            f.locked_until_ms > now_ms || now_ms.saturating_sub(f.since_ms) <= window_ms
        });
        if self.entries.len() >= LOCKOUT_ADDRESSES_MAX {
            // Still full of live entries: forget the oldest tenth, unlocked ones first.
            let mut by_age: Vec<(bool, u64, IpAddr)> = self
                .entries
                .iter()
                .map(|(ip, f)| (f.locked_until_ms > now_ms, f.since_ms, *ip))
                .collect();
            by_age.sort_unstable();
            for (_, _, ip) in by_age.iter().take(LOCKOUT_ADDRESSES_MAX / 10) {
                self.entries.remove(ip);
            }
        }
    }
}

/// Sessions open on one listener, in all and per client address.
#[derive(Debug, Default)]
pub struct Connections {
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl Connections {
    /// Counts a session in, if it stays within both bounds (per address as `client_key`
    /// has it).
    pub fn enter(&mut self, ip: IpAddr, total_max: usize, per_ip_max: usize) -> bool {
        let ip = client_key(ip);
        let mine = self.per_ip.get(&ip).copied().unwrap_or(0);
        if self.total >= total_max || mine >= per_ip_max {
            return false;
        }
        self.per_ip.insert(ip, mine + 1);
        self.total += 1;
        true
    }

    pub fn leave(&mut self, ip: IpAddr) {
        let ip = client_key(ip);
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    pub fn total(&self) -> usize {
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const T0: u64 = 20_000 * DAY_MS + 3_600_000;

    #[test]
    fn the_daily_limit_counts_accepted_and_reserved_recipients_and_resets_at_midnight_utc() {
        let c = UserCounter::default();
        for _ in 0..3 {
            c.reserve(Some(3), None, T0).unwrap();
        }
        assert_eq!(c.reserve(Some(3), None, T0), Err(LimitHit::Daily(3)));
        // One message of two recipients accepted, one recipient abandoned.
        c.accept(2, T0);
        c.release(1);
        assert_eq!(c.accepted_on(utc_day(T0)), 2);
        c.reserve(Some(3), None, T0).unwrap();
        assert!(c.reserve(Some(3), None, T0).is_err());
        c.accept(1, T0);
        assert!(c.reserve(Some(3), None, T0 + DAY_MS - 3_600_001).is_err());
        // The next UTC day starts from nothing.
        c.reserve(Some(3), None, T0 + DAY_MS).unwrap();
        assert_eq!(c.accepted_on(utc_day(T0 + DAY_MS)), 0);
    }

    #[test]
    fn counts_read_back_at_start_add_up_and_an_older_day_is_dropped() {
        let c = UserCounter::default();
        let day = utc_day(T0);
        c.add(day, 5);
        c.add(day, 7);
        c.add(day - 1, 100);
        assert_eq!(c.accepted_on(day), 12);
        c.add(day + 1, 1);
        assert_eq!(c.accepted_on(day), 0);
        assert_eq!(c.accepted_on(day + 1), 1);
    }

    #[test]
    fn the_rate_limit_allows_a_burst_of_n_then_one_per_interval() {
        let c = UserCounter::default();
        let rate = Rate {
            messages: 10,
            per: Duration::from_secs(60),
        };
        for _ in 0..10 {
            c.reserve(None, Some(rate), T0).unwrap();
        }
        assert_eq!(c.reserve(None, Some(rate), T0), Err(LimitHit::Rate(rate)));
        // One interval (6 s) later, one more.
        assert!(c.reserve(None, Some(rate), T0 + 5_999).is_err());
        c.reserve(None, Some(rate), T0 + 6_000).unwrap();
        assert!(c.reserve(None, Some(rate), T0 + 6_000).is_err());
        // A refused recipient is not left reserved.
        c.release(11);
        assert_eq!(c.reserved.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn parallel_reservations_never_pass_the_daily_limit() {
        let c = std::sync::Arc::new(UserCounter::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let c = std::sync::Arc::clone(&c);
                std::thread::spawn(move || {
                    (0..1000)
                        .filter(|_| c.reserve(Some(1500), None, T0).is_ok())
                        .count()
                })
            })
            .collect();
        let granted: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert!(granted <= 1500, "{granted}");
        assert!(granted >= 1400, "{granted}");
    }

    #[test]
    fn a_lockout_follows_too_many_failures_within_the_window_and_then_lapses() {
        let rule = LockoutRule {
            failures_max: 3,
            window_ms: 60_000,
        };
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let mut l = AuthLockout::default();
        assert!(!l.failed(ip, T0, rule));
        assert!(!l.failed(ip, T0 + 1, rule));
        assert_eq!(l.locked_until(ip, T0 + 2), None);
        assert!(l.failed(ip, T0 + 2, rule));
        assert_eq!(l.locked_until(ip, T0 + 3), Some(T0 + 60_002));
        assert_eq!(l.locked_until(ip, T0 + 60_002), None);
        // Failures spread wider than the window never lock.
        let other: IpAddr = "192.0.2.8".parse().unwrap();
        for i in 0..10 {
            assert!(!l.failed(other, T0 + i * 40_000, rule));
        }
    }

    #[test]
    fn ipv6_clients_count_by_their_64_and_mapped_v4_as_v4() {
        let rule = LockoutRule {
            failures_max: 2,
            window_ms: 60_000,
        };
        let mut l = AuthLockout::default();
        l.failed("2001:db8:1:2::1".parse().unwrap(), T0, rule);
        assert!(l.failed("2001:db8:1:2:ffff::9".parse().unwrap(), T0, rule));
        assert!(l
            .locked_until("2001:db8:1:3::1".parse().unwrap(), T0)
            .is_none());
        l.failed("::ffff:192.0.2.1".parse().unwrap(), T0, rule);
        assert!(l.failed("192.0.2.1".parse().unwrap(), T0, rule));
    }

    #[test]
    fn the_lockout_table_stays_within_its_bound() {
        let rule = LockoutRule {
            failures_max: 5,
            window_ms: 60_000,
        };
        let mut l = AuthLockout::default();
        for i in 0..(LOCKOUT_ADDRESSES_MAX as u32 + 5000) {
            l.failed(IpAddr::V4(i.into()), T0, rule);
        }
        assert!(l.len() <= LOCKOUT_ADDRESSES_MAX);
    }

    #[test]
    fn connections_are_bounded_in_all_and_per_address() {
        let mut c = Connections::default();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(c.enter(a, 3, 2));
        assert!(c.enter(a, 3, 2));
        assert!(!c.enter(a, 3, 2));
        assert!(c.enter(b, 3, 2));
        assert!(!c.enter(b, 3, 2));
        c.leave(a);
        assert!(c.enter(b, 3, 2));
        assert_eq!(c.total(), 3);
    }
}
