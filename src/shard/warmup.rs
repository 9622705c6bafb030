//! The core's side of warm-up caps (`delivery::warmup`): the shared book's view followed by
//! the home's routing, a new UTC day rolled, and each outcome settled against the count of
//! the source it went from.

use super::*;
use crate::delivery::warmup::{Settle, WarmBook};

/// Recipients held because every source of their pool was full go back to routing at most
/// this often (a source near its cap is free again with every failed outcome).
pub const WARM_RELEASE_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

impl<L: LogSink> Core<L> {
    /// The warm-up book every shard shares (a new core's is its own).
    pub fn with_warmup(mut self, book: &Arc<WarmBook>) -> Self {
        self.warmbook = Arc::clone(book);
        self.warm_generation_seen = book.generation();
        self.warm_freed_seen = book.view().1.freed;
        self.home.set_warm_book(Arc::clone(book));
        self
    }

    /// The UTC day of the engine's wall clock.
    pub(super) fn utc_day(&self) -> u64 {
        crate::gateway::limits::utc_day(self.clock.unix_ms())
    }

    /// At every tick: a new day rolls the counts on (whichever shard sees it first), and a
    /// new view (a source full, or free again) goes to the home's routing; what routing held
    /// for want of a source goes back to it when a source could take mail again, at most
    /// every `WARM_RELEASE_EVERY`.
    pub(super) fn warm_tick(&mut self, now: Instant) {
        if !self.warmbook.is_empty() {
            let day = self.utc_day();
            if day != self.warm_day {
                self.warm_day = day;
                self.warmbook.roll(day);
            }
        }
        let generation = self.warmbook.generation();
        let due = self.warm_release_pending && now >= self.warm_release_at;
        if generation == self.warm_generation_seen && !due {
            return;
        }
        let (generation, view) = self.warmbook.view();
        self.warm_generation_seen = generation;
        if view.freed != self.warm_freed_seen {
            self.warm_freed_seen = view.freed;
            self.warm_release_pending = true;
        }
        let release = self.warm_release_pending && now >= self.warm_release_at;
        if release {
            self.warm_release_pending = false;
            self.warm_release_at = now + WARM_RELEASE_EVERY;
        }
        self.home.set_warm(view, release);
        self.effects.push(Effect::Schedule);
    }

    /// Credit taken for `reserved` recipients of `scope`, of which `sent` went into
    /// messages: the others (no longer due, suppressed, not rendered) give their count back.
    pub(super) fn warm_unused(&mut self, scope: &str, reserved: u64, sent: u64) {
        if reserved > sent {
            let released = reserved - sent;
            let s = Settle {
                released,
                ..Settle::default()
            };
            self.warmbook.settle(scope, s, self.utc_day());
        }
    }

    /// A transaction's outcomes for `scope`: each recipient's count settles (a 2xx stays
    /// counted as delivered; anything else gives it back), and the replies count toward the
    /// day's deferral rate.
    pub(super) fn warm_outcomes(&mut self, scope: &str, items: &[OutcomeItem]) {
        if !self.home.warm_tracks(scope) {
            return;
        }
        let mut s = Settle::default();
        for item in items {
            // Only recipients counted against the cap give a count back.
            s.released += u64::from(item.warm_reserved);
            if let ItemResult::Smtp(crate::smtp::session::RcptResult::Reply(r)) = &item.result {
                s.attempts += 1;
                match r.code / 100 {
                    2 => s.delivered += 1,
                    4 => s.deferred += 1,
                    _ => {}
                }
            }
        }
        self.warmbook.settle(scope, s, self.utc_day());
    }
}
