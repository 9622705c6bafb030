//! Adaptive throttling of one scope (a provider or a site), sans I/O.
//!
//! The configured `max_message_rate` is a ceiling. Beneath it the receiver decides: when it
//! pushes back (421, or a 4xx whose text says rate limit, as Gmail's 4.7.28 and Yahoo's TSS04
//! do) the scope eases off at once to 90% of the rate the receiver was actually accepting,
//! and to 70% if it pushes back again within a second of that cut (multiplicative decrease,
//! a third as deep after a calm spell: most pushback is a receiver's limit just passed; at
//! most every 250 ms, measured on what the receiver accepted since the previous cut, so the
//! replies already in flight do not collapse it), then ramps back up every second it goes
//! without pushback: by a tenth of the
//! rate it was cut from until it is back there, then by a tenth of itself, so a receiver that
//! has recovered is found again within tens of seconds. After a minute without pushback the
//! adaptive limit is lifted.

use std::time::{Duration, Instant};

/// The slowest the adaptive limit goes (a configured `max_message_rate` may be slower).
pub const RATE_MIN: f64 = 1.0;
const RATE_FLOOR: f64 = 1e-3;
/// The multiplicative decrease.
pub const DECREASE: f64 = 0.7;
/// Added each second without pushback: this fraction of the larger of the rate before the
/// last cut and the current limit.
pub const INCREASE: f64 = 0.1;
/// At most one decrease per this long: long enough to measure what the receiver accepted
/// since the last cut, short enough that a receiver that drops its rate tenfold is matched
/// within a second.
pub const DECREASE_HOLD: Duration = Duration::from_millis(250);
/// The first cut after a calm spell: a third as deep as `cut` (0.9 for the default 0.7).
pub fn first_cut(cut: f64) -> f64 {
    1.0 - (1.0 - cut) / 3.0
}

/// Pushback this soon after a cut earns the full cut; later, a third of it (`first_cut`).
const ESCALATE_WITHIN: Duration = Duration::from_secs(1);
/// A cut this recent is the baseline for the next one; an older one is stale.
const RECENT_CUT: Duration = Duration::from_secs(2);
/// The adaptive limit is lifted after this long without pushback.
pub const CLEAR_AFTER: Duration = Duration::from_secs(60);
const WINDOW: Duration = Duration::from_secs(1);

/// The controller's parameters, per provider (`throttle_cut`, `throttle_step`,
/// `throttle_quiet`; `[delivery]` sets the default for every scope).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Controller {
    /// The multiplicative decrease: a cut eases off to this share of what the receiver took.
    pub cut: f64,
    /// The recovery step: each second without pushback adds this share of the larger of the
    /// rate cut from and the current limit.
    pub step: f64,
    /// The adaptive limit is lifted after this long without pushback.
    pub quiet: Duration,
}

impl Default for Controller {
    fn default() -> Controller {
        Controller {
            cut: DECREASE,
            step: INCREASE,
            quiet: CLEAR_AFTER,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Change {
    None,
    /// Eased off to this many messages per second.
    Decreased(f64),
    /// The adaptive limit was lifted.
    Cleared,
}

#[derive(Debug, Clone)]
pub struct Throttle {
    configured: Option<f64>,
    controller: Controller,
    limit: Option<f64>,
    /// The accepted rate before the last decrease.
    cut_from: f64,
    last_decrease: Option<Instant>,
    /// Accepted since the last decrease.
    since_cut: u64,
    last_pushback: Option<Instant>,
    window_start: Instant,
    window_accepted: u64,
    /// Transactions attempted in the current window, and since the last decrease.
    window_attempts: u64,
    since_cut_attempts: u64,
    /// Accepted messages per second over the last full window.
    accepted_rate: f64,
    pub pushbacks: u64,
}

impl Throttle {
    /// `configured`: the scope's `max_message_rate` in messages per second, if any.
    pub fn new(configured: Option<f64>, now: Instant) -> Throttle {
        Throttle::with_controller(configured, Controller::default(), now)
    }

    pub fn with_controller(
        configured: Option<f64>,
        controller: Controller,
        now: Instant,
    ) -> Throttle {
        Throttle {
            configured,
            controller,
            limit: None,
            cut_from: 0.0,
            last_decrease: None,
            since_cut: 0,
            last_pushback: None,
            window_start: now,
            window_accepted: 0,
            window_attempts: 0,
            since_cut_attempts: 0,
            accepted_rate: 0.0,
            pushbacks: 0,
        }
    }

    /// Starts again from `rate`, climbing at the controller's step as after a cut, the quiet
    /// time running from now (a reply rule's rate cap ending: back gradually, not at once).
    pub fn resume_from(&mut self, rate: f64, now: Instant) {
        self.limit = Some(rate.max(RATE_MIN));
        self.cut_from = rate;
        self.last_pushback = Some(now);
    }

    pub fn set_configured(&mut self, configured: Option<f64>) {
        self.configured = configured;
    }

    /// New parameters (a reload), from the next decision on.
    pub fn set_controller(&mut self, controller: Controller) {
        self.controller = controller;
    }

    /// The rate in force (messages per second), or None for no limit.
    pub fn rate(&self) -> Option<f64> {
        match (self.configured, self.limit) {
            (Some(c), Some(l)) => Some(c.min(l)),
            (c, l) => c.or(l),
        }
    }

    /// The adaptive limit alone, when one is in force.
    pub fn adaptive_limit(&self) -> Option<f64> {
        self.limit
    }

    /// Time between sends at the rate in force.
    pub fn interval(&self) -> Option<Duration> {
        // A configured rate may be below one a second ("30/min", "100/h"): paced exactly.
        // The floor only keeps the division finite (one message per 1,000 s at the slowest).
        self.rate()
            .map(|r| Duration::from_secs_f64(1.0 / r.max(RATE_FLOOR)))
    }

    /// Feeds one transaction's results: recipients accepted, and whether the receiver
    /// pushed back; `paced_at` is when its send time was set (taken from the window at the
    /// rate then in force). Pushback on a transaction paced before the last cut answers the
    /// old rate, not the new one: it is counted but does not cut again (the simulation found
    /// three cuts in 700 ms against a receiver whose replies take up to 400 ms, each on
    /// replies to messages paced before the previous one).
    pub fn record(
        &mut self,
        accepted: u32,
        pushback: bool,
        paced_at: Instant,
        now: Instant,
    ) -> Change {
        let mut change = self.tick(now);
        self.window_accepted += u64::from(accepted);
        self.since_cut += u64::from(accepted);
        self.window_attempts += 1;
        self.since_cut_attempts += 1;
        if pushback {
            self.pushbacks += 1;
            let stale = self.last_decrease.is_some_and(|t| paced_at < t);
            if stale {
                return change;
            }
            self.last_pushback = Some(now);
            let held = self
                .last_decrease
                .is_some_and(|t| now.duration_since(t) < DECREASE_HOLD);
            if !held {
                // What the receiver really took: since our last cut if that was recent (the
                // freshest evidence), else the last full window or the current one if it is
                // already more telling (a window younger than 100 ms counts as 100 ms: a
                // burst is not a rate).
                // When the receiver took nothing, what we were attempting is the baseline:
                // cutting to the floor would take a minute to climb back from.
                let (observed, attempted) = match self.last_decrease {
                    Some(t) if now.duration_since(t) < RECENT_CUT => {
                        let secs = now.duration_since(t).as_secs_f64();
                        (
                            self.since_cut as f64 / secs,
                            self.since_cut_attempts as f64 / secs,
                        )
                    }
                    _ => {
                        let so_far = now.duration_since(self.window_start).as_secs_f64().max(0.1);
                        (
                            self.accepted_rate.max(self.window_accepted as f64 / so_far),
                            self.window_attempts as f64 / so_far,
                        )
                    }
                };
                let observed = if observed > 0.0 { observed } else { attempted };
                let base = match self.rate() {
                    Some(r) if observed > 0.0 => r.min(observed),
                    Some(r) => r,
                    None => observed,
                };
                // The first cut after a calm spell is a third as deep (`first_cut`): most
                // pushback is a receiver's brief limit just passed. Pushback again within
                // `ESCALATE_WITHIN` of a cut says the limit is lower: the full cut.
                let recent = self
                    .last_decrease
                    .is_some_and(|t| now.duration_since(t) < ESCALATE_WITHIN);
                let cut = if recent {
                    self.controller.cut
                } else {
                    first_cut(self.controller.cut)
                };
                let new = (base * cut).max(RATE_MIN);
                self.cut_from = base.max(RATE_MIN);
                self.limit = Some(new);
                self.last_decrease = Some(now);
                self.since_cut = 0;
                self.since_cut_attempts = 0;
                change = Change::Decreased(new);
            }
        }
        change
    }

    /// A cut another node of the cluster made on this provider (`crate::cluster`): the same
    /// share off the rate in force here (or what was accepted, with none), as a cut of its
    /// own, climbing back the same way. At most one cut per `DECREASE_HOLD`, whoever made it:
    /// nodes that see the same pushback at once do not cut twice.
    pub fn follow(&mut self, factor: f64, now: Instant) -> Change {
        let held = self
            .last_decrease
            .is_some_and(|t| now.duration_since(t) < DECREASE_HOLD);
        if held || !(factor > 0.0 && factor < 1.0) {
            return Change::None;
        }
        let so_far = now.duration_since(self.window_start).as_secs_f64().max(0.1);
        let accepted = self.accepted_rate.max(self.window_accepted as f64 / so_far);
        let base = match self.rate() {
            Some(r) if r > 0.0 => r,
            _ if accepted > 0.0 => accepted,
            _ => return Change::None,
        };
        let new = (base * factor).max(RATE_MIN);
        self.cut_from = base.max(RATE_MIN);
        self.limit = Some(new);
        self.last_decrease = Some(now);
        self.last_pushback = Some(now);
        self.since_cut = 0;
        self.since_cut_attempts = 0;
        Change::Decreased(new)
    }

    /// Closes finished windows: measures the accepted rate and ramps back up.
    pub fn tick(&mut self, now: Instant) -> Change {
        let elapsed = now.duration_since(self.window_start);
        if elapsed < WINDOW {
            return Change::None;
        }
        // A window stretched by idleness says nothing about the receiver's rate.
        self.accepted_rate = if elapsed > 2 * WINDOW {
            0.0
        } else {
            self.window_accepted as f64 / elapsed.as_secs_f64()
        };
        self.window_accepted = 0;
        self.window_attempts = 0;
        self.window_start = now;
        let Some(limit) = self.limit else {
            return Change::None;
        };
        let quiet = self
            .last_pushback
            .map_or(Duration::MAX, |t| now.duration_since(t));
        if quiet < DECREASE_HOLD {
            return Change::None;
        }
        let seconds = elapsed.as_secs_f64().min(10.0);
        let raised =
            limit + (self.cut_from.max(limit) * self.controller.step).max(RATE_MIN) * seconds;
        if quiet >= self.controller.quiet {
            self.limit = None;
            return Change::Cleared;
        }
        self.limit = Some(raised);
        Change::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Simulates a receiver that accepts `capacity` messages per second against a sender
    /// that sends at the throttle's rate (or `unlimited` when it has none), for `seconds`.
    fn simulate(
        t: &mut Throttle,
        start: Instant,
        seconds: u64,
        capacity: impl Fn(u64) -> f64,
        unlimited: f64,
    ) -> Vec<(f64, f64)> {
        let step = Duration::from_millis(10);
        let mut now = start;
        // The receiver's bucket starts full, as real ones do: a tenth of a second's burst.
        let mut tokens = capacity(0) * 0.1;
        let mut credit = 0.0;
        let mut accepted_per_second = Vec::new();
        let mut accepted_this_second = 0.0;
        for i in 0..seconds * 100 {
            now += step;
            let cap = capacity(i / 100);
            tokens = (tokens + cap * 0.01).min(cap * 0.1);
            credit += t.rate().unwrap_or(unlimited).min(unlimited) * 0.01;
            while credit >= 1.0 {
                credit -= 1.0;
                if tokens >= 1.0 {
                    tokens -= 1.0;
                    accepted_this_second += 1.0;
                    t.record(1, false, now, now);
                } else {
                    t.record(0, true, now, now);
                }
            }
            t.tick(now);
            if i % 100 == 99 {
                accepted_per_second.push((accepted_this_second, t.rate().unwrap_or(unlimited)));
                accepted_this_second = 0.0;
            }
        }
        accepted_per_second
    }

    #[test]
    fn eases_off_to_what_the_receiver_takes_and_stays_near_it() {
        let start = Instant::now();
        let mut t = Throttle::new(None, start);
        let seconds = simulate(&mut t, start, 60, |_| 1000.0, 20_000.0);
        // Within a few seconds the rate is near the receiver's 1000/s, not 20,000/s.
        for (accepted, rate) in &seconds[5..] {
            assert!(*rate < 1600.0, "rate {rate} stays near capacity");
            assert!(*accepted > 600.0, "accepted {accepted}/s: not starved");
        }
        let mean: f64 = seconds[10..].iter().map(|s| s.0).sum::<f64>() / 50.0;
        assert!(mean > 750.0, "mean accepted {mean}/s of 1000/s");
    }

    #[test]
    fn ramps_back_up_when_the_receiver_accepts_again_and_lifts_the_limit() {
        let start = Instant::now();
        let mut t = Throttle::new(None, start);
        // 200/s for 20 s, then the receiver takes 5000/s; the sender manages 4000/s.
        let seconds = simulate(
            &mut t,
            start,
            200,
            |s| if s < 20 { 200.0 } else { 5000.0 },
            4000.0,
        );
        assert!(seconds[15].1 < 400.0, "throttled: {:?}", seconds[15]);
        assert!(seconds[60].0 > 2000.0, "recovering: {:?}", seconds[60]);
        assert!(seconds[199].0 > 3900.0, "recovered: {:?}", seconds[199]);
        assert_eq!(t.adaptive_limit(), None, "the limit was lifted");
    }

    #[test]
    fn a_tenfold_drop_is_matched_within_a_second() {
        let start = Instant::now();
        let mut t = Throttle::new(None, start);
        let seconds = simulate(
            &mut t,
            start,
            12,
            |s| if s < 5 { 3000.0 } else { 300.0 },
            20_000.0,
        );
        // seconds[5] is the first second at 300/s: by its end the rate is matched.
        assert!(seconds[5].1 < 450.0, "{:?}", &seconds[3..8]);
        assert!(seconds[8].0 > 200.0, "not starved: {:?}", &seconds[3..10]);
    }

    #[test]
    fn pushback_on_messages_sent_before_a_cut_does_not_cut_again() {
        let start = Instant::now();
        let mut t = Throttle::new(Some(100.0), start);
        let ms = |n| start + Duration::from_millis(n);
        t.record(50, false, ms(900), ms(1000));
        let Change::Decreased(first) = t.record(0, true, ms(1000), ms(1100)) else {
            panic!("no cut");
        };
        // Replies to messages sent before the cut keep coming back pushed back, after the
        // hold: they say nothing about the new rate.
        for i in 0..20 {
            let change = t.record(0, true, ms(1050), ms(1400 + 10 * i));
            assert_eq!(change, Change::None);
        }
        assert_eq!(t.rate(), Some(first));
        // Pushback on a message sent after the cut does cut.
        assert!(matches!(
            t.record(0, true, ms(1200), ms(1700)),
            Change::Decreased(r) if r < first
        ));
    }

    #[test]
    fn a_configured_rate_below_one_a_second_is_paced_exactly() {
        let t = Throttle::new(Some(30.0 / 60.0), Instant::now());
        assert_eq!(t.interval(), Some(Duration::from_secs(2)));
        let t = Throttle::new(Some(100.0 / 3600.0), Instant::now());
        assert_eq!(t.interval().unwrap().as_secs(), 36);
    }

    #[test]
    fn pushback_on_the_first_reply_after_idle_cuts_from_the_attempted_rate() {
        let start = Instant::now();
        let mut t = Throttle::new(None, start);
        // Busy for a while, then idle for a minute: the windows close at 0/s.
        t.record(
            1000,
            false,
            start + Duration::from_millis(900),
            start + Duration::from_millis(900),
        );
        let back = start + Duration::from_secs(60);
        t.tick(back);
        // 20 attempts in 100 ms, the last one pushed back, nothing accepted.
        for i in 0..19 {
            t.record(
                0,
                false,
                back + Duration::from_millis(5 * i),
                back + Duration::from_millis(5 * i),
            );
        }
        let Change::Decreased(rate) = t.record(
            0,
            true,
            back + Duration::from_millis(100),
            back + Duration::from_millis(100),
        ) else {
            panic!("no cut");
        };
        assert!(rate > 100.0, "cut to {rate}/s, not to the floor");
    }

    #[test]
    fn never_exceeds_the_configured_rate_and_one_burst_of_pushback_cuts_once() {
        let start = Instant::now();
        let mut t = Throttle::new(Some(500.0), start);
        assert_eq!(t.rate(), Some(500.0));
        let now = start + Duration::from_millis(1500);
        t.record(
            300,
            false,
            start + Duration::from_millis(1100),
            start + Duration::from_millis(1100),
        );
        assert!(matches!(t.record(0, true, now, now), Change::Decreased(_)));
        let after_first = t.rate().unwrap();
        for i in 1..50 {
            t.record(
                0,
                true,
                now + Duration::from_millis(i),
                now + Duration::from_millis(i),
            );
        }
        assert_eq!(t.rate().unwrap(), after_first, "held for DECREASE_HOLD");
        // The first cut after a calm spell is a third as deep.
        assert!((after_first - 500.0 * first_cut(DECREASE)).abs() < 1e-9);
        // Pushback again within a second (on a message paced after the cut): the full cut.
        let again = now + Duration::from_millis(400);
        t.record(0, false, again, again);
        assert!(matches!(
            t.record(0, true, again, again),
            Change::Decreased(_)
        ));
        assert!(t.rate().unwrap() <= after_first * DECREASE + 1e-9);
    }

    #[test]
    fn a_provider_s_controller_sets_the_cut_the_step_and_the_quiet_time() {
        let start = Instant::now();
        let gentle = Controller {
            cut: 0.5,
            step: 0.3,
            quiet: Duration::from_secs(5),
        };
        let mut t = Throttle::with_controller(Some(1000.0), gentle, start);
        // The receiver took 1,000 in the first second, then pushes back.
        let half = start + Duration::from_millis(500);
        t.record(1000, false, half, half);
        let now = start + Duration::from_millis(1000);
        t.tick(now);
        // A third of the cut at first (to 5/6), then, pushed back again within a second,
        // the whole cut of what the receiver took meanwhile (250 in 500 ms: 500/s).
        let Change::Decreased(first) = t.record(0, true, now, now) else {
            panic!("no cut");
        };
        assert!((first - 1000.0 * first_cut(0.5)).abs() < 1e-6, "{first}");
        let soon = now + Duration::from_millis(500);
        t.record(250, false, soon, soon);
        assert_eq!(t.record(0, true, soon, soon), Change::Decreased(250.0));
        // A window's second adds 30% of the rate cut from (500/s): 400.
        let later = now + Duration::from_millis(1000);
        t.tick(later);
        assert!(
            (t.adaptive_limit().unwrap() - 400.0).abs() < 1e-6,
            "{:?}",
            t.adaptive_limit()
        );
        // Lifted after 5 s without pushback, not 60.
        let mut at = later;
        let mut cleared = false;
        for _ in 0..5 {
            at += Duration::from_millis(1000);
            cleared |= t.tick(at) == Change::Cleared;
        }
        assert!(cleared && t.adaptive_limit().is_none());
    }
}
