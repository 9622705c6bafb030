//! The one clock: both faces of time behind one seam. Monotonic time (`now`) paces sends and
//! measures timeouts and intervals; wall time (`unix_ms`) stamps records and log lines and
//! decides retry times, expiry and UTC days. The engine reads the system's (`SystemClock`);
//! tests and the simulation use a `ManualClock`, which moves only when told and whose wall
//! time can jump (an NTP step, a suspended VM) while monotonic time never goes back.
//!
//! Cores never read a clock: they take `now` as an argument. Shells read theirs. The one
//! exception is the glommio runtime's own timers (`sleep`, `timeout`) and the deadlines the
//! connection shell measures against them, which are the system's monotonic clock by nature.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync {
    /// Monotonic time.
    fn now(&self) -> Instant;
    /// Wall time, in milliseconds since the Unix epoch.
    fn unix_ms(&self) -> u64;
}

/// The system's clocks.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn unix_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64)
    }
}

/// The system clock, shared.
pub fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

/// A clock that moves only when told. Monotonic time starts at the `Instant` it was made;
/// wall time at the Unix time given.
#[derive(Debug)]
pub struct ManualClock {
    base: Instant,
    elapsed_ns: AtomicU64,
    wall_ms: AtomicU64,
}

impl ManualClock {
    pub fn new(unix_ms: u64) -> ManualClock {
        ManualClock {
            base: Instant::now(),
            elapsed_ns: AtomicU64::new(0),
            wall_ms: AtomicU64::new(unix_ms),
        }
    }

    /// Time passes: both faces move by `by`.
    pub fn advance(&self, by: Duration) {
        let ns = by.as_nanos().min(u128::from(u64::MAX)) as u64;
        self.elapsed_ns.fetch_add(ns, Ordering::SeqCst);
        self.wall_ms
            .fetch_add(by.as_millis() as u64, Ordering::SeqCst);
    }

    /// The wall clock is set to `unix_ms` (forwards or backwards); monotonic time does not
    /// move.
    pub fn set_wall(&self, unix_ms: u64) {
        self.wall_ms.store(unix_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + Duration::from_nanos(self.elapsed_ns.load(Ordering::SeqCst))
    }

    fn unix_ms(&self) -> u64 {
        self.wall_ms.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_when_told_and_its_wall_time_can_jump() {
        let c = ManualClock::new(1_000_000);
        let t0 = c.now();
        assert_eq!((c.now(), c.unix_ms()), (t0, 1_000_000), "still");
        c.advance(Duration::from_millis(1_500));
        assert_eq!(c.now() - t0, Duration::from_millis(1_500));
        assert_eq!(c.unix_ms(), 1_001_500);
        c.set_wall(5);
        assert_eq!(
            (c.now() - t0, c.unix_ms()),
            (Duration::from_millis(1_500), 5)
        );
    }

    #[test]
    fn the_system_clock_reads_the_system() {
        let c = system();
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64;
        assert!(c.unix_ms().abs_diff(wall) < 60_000);
        let a = c.now();
        assert!(c.now() >= a);
    }
}
