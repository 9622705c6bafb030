//! Warm-up schedules (`[warmup.NAME]`, a source's `warmup` and `warmup_start`), sans I/O:
//! the time is passed in as UTC day numbers.
//!
//! A new sending address has no reputation, and mailbox providers defer or junk mail from one
//! that sends much at once. A warming source may have at most the schedule's cap of 2xx
//! deliveries per provider per UTC day, the cap of its step: the days since its start, less
//! the days it was held. A day whose deferral rate at the provider passed the schedule's
//! `hold_deferral_rate` (over at least `hold_min_attempts` attempts) holds it: the next day
//! stays at the same step instead of growing. Past the table's last step the source is warm
//! and uncapped; before its start date, its cap is nothing.
//!
//! The caps hold for the engine, not per shard: every shard takes from one `WarmBook`, and a
//! recipient is counted against its source's cap (reserved) when its home takes the scope's
//! credit for it, before it is rendered, then settled by its outcome (a 2xx counts as
//! delivered, anything else gives the reservation back). Delivered plus reserved never passes
//! the cap, so a source never has more 2xx in a day than its step allows (bar the counts of
//! the last second before a crash, `WARMUP_SAVE_INTERVAL`). A source at its cap for the day
//! is full: routing leaves it out of its pools (`schedule::egress`), so its mail goes to the
//! pool's other sources, or waits for the next day when none is left.
//!
//! Days and counts survive restarts in `<data_dir>/warmup.json`, written (a new file, synced,
//! renamed) by the engine within a second of a change.

use crate::config::{Egress, Provider};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How often the engine writes the counts when they changed: a crash forgets at most this
/// long of deliveries (the source may then exceed that day's cap by as many).
pub const WARMUP_SAVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// One source's day at one provider, as saved.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// The UTC day these counts are of (days since 1970-01-01).
    pub day: u64,
    /// 2xx replies that day.
    pub delivered: u64,
    /// Replies to recipients that day (2xx, 4xx, 5xx).
    pub attempts: u64,
    /// 4xx replies that day.
    pub deferred: u64,
    /// Days held at their step so far.
    pub held_days: u64,
    /// The last day that held, if any.
    #[serde(default)]
    pub last_held_day: Option<u64>,
}

/// One (provider, source) under a schedule.
#[derive(Debug)]
struct Entry {
    provider: String,
    source: String,
    start_day: u64,
    daily: Arc<[u64]>,
    hold_bp: u32,
    hold_min_attempts: u64,
    counts: Counts,
    /// Recipients counted against today's cap whose outcome has not come.
    reserved: u64,
    /// As the view last published it.
    full: bool,
}

/// Where a (provider, source) stands on `day`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Before its start date: it sends nothing there.
    NotStarted,
    /// At step `step` (0 on the start day) of the table: at most `cap` today.
    Warming { step: u64, cap: u64 },
    /// Past the table: uncapped.
    Warm,
}

impl Entry {
    fn stage(&self, day: u64) -> Stage {
        if day < self.start_day {
            return Stage::NotStarted;
        }
        let step = (day - self.start_day).saturating_sub(self.counts.held_days);
        match self.daily.get(step as usize) {
            Some(&cap) => Stage::Warming { step, cap },
            None => Stage::Warm,
        }
    }

    fn cap(&self, day: u64) -> Option<u64> {
        match self.stage(day) {
            Stage::NotStarted => Some(0),
            Stage::Warming { cap, .. } => Some(cap),
            Stage::Warm => None,
        }
    }

    /// True when nothing more may be counted against today's cap: it is reached, or the
    /// day's deferrals already passed the threshold (the provider says "not so much from
    /// this address": the rest of the day's mail goes to the pool's other sources).
    fn is_full(&self, day: u64) -> bool {
        self.cap(day).is_some_and(|cap| {
            self.counts.delivered + self.reserved >= cap
                || (self.counts.day == day && self.deferring())
        })
    }

    /// True when the counts' day has deferrals past the schedule's threshold.
    fn deferring(&self) -> bool {
        let c = &self.counts;
        c.attempts >= self.hold_min_attempts
            && c.attempts > 0
            && c.deferred * 10_000 > u64::from(self.hold_bp) * c.attempts
    }

    /// Moves the counts on to `day`: the day they were of is judged (held if its deferral
    /// rate passed the schedule's), and days without counts in between count as steps.
    /// Returns a line for the log when the day held.
    fn roll(&mut self, day: u64) -> Option<String> {
        if self.counts.day == day {
            return None;
        }
        if self.counts.day > day {
            // A day ahead at most: a clock a little behind another's across midnight, the
            // counts stay. Further: the counts were made under a clock far ahead (corrected
            // since): they start again from today, judging nothing.
            if self.counts.day > day + 1 {
                self.counts = Counts {
                    day,
                    held_days: self.counts.held_days,
                    last_held_day: self.counts.last_held_day,
                    ..Counts::default()
                };
            }
            return None;
        }
        let c = &self.counts;
        let judged = c.day;
        let was_warming = matches!(self.stage(judged), Stage::Warming { .. });
        let held = was_warming && self.deferring();
        let note = held.then(|| {
            format!(
                "warm-up: {}@{} held at its step: {} of {} attempts deferred on {} (more than {:.1}%)",
                self.provider,
                self.source,
                c.deferred,
                c.attempts,
                crate::config::date_text(judged),
                f64::from(self.hold_bp) / 100.0
            )
        });
        let held_days = self.counts.held_days + u64::from(held);
        let last_held_day = if held {
            Some(judged)
        } else {
            self.counts.last_held_day
        };
        self.counts = Counts {
            day,
            held_days,
            last_held_day,
            ..Counts::default()
        };
        note
    }
}

/// The warm-up state routing reads: which (provider, source) scopes are full today.
#[derive(Debug, Default)]
pub struct WarmView {
    /// Per destination scope (provider): its sources that are full.
    full: HashMap<String, Vec<String>>,
    /// Every `provider@source` key under a schedule (warm ones too).
    tracked: HashSet<String>,
    /// Those with a cap today.
    capped: HashSet<String>,
    /// Counts the times a source could take mail again (a new day, a reload, a full source
    /// with room again): routing releases what it held when this moves.
    pub freed: u64,
}

impl WarmView {
    pub fn is_empty(&self) -> bool {
        self.tracked.is_empty()
    }

    /// True when `source` may send no more to the provider `base` today.
    pub fn is_full(&self, base: &str, source: &str) -> bool {
        !self.full.is_empty()
            && self
                .full
                .get(base)
                .is_some_and(|v| v.iter().any(|s| s == source))
    }

    /// True when the scope key `provider@source` is full today.
    pub fn is_full_key(&self, key: &str) -> bool {
        match crate::delivery::scope::split_key(key) {
            (base, Some(source)) => self.is_full(base, source),
            _ => false,
        }
    }

    /// True when the scope key has a cap today (its recipients are counted against it).
    pub fn is_capped(&self, key: &str) -> bool {
        !self.capped.is_empty() && self.capped.contains(key)
    }

    /// True when the scope key is under a schedule (its outcomes settle its counts).
    pub fn tracks(&self, key: &str) -> bool {
        !self.tracked.is_empty() && self.tracked.contains(key)
    }
}

/// One (provider, source)'s warm-up, for operators.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WarmStatus {
    pub source: String,
    pub provider: String,
    pub schedule_start: String,
    /// "not started", "warming", "full" (today's cap reached), "deferred" (today's
    /// deferrals passed the threshold: nothing more today, and the step holds) or "warm".
    pub state: &'static str,
    /// The step (0 on the start day), while warming.
    pub step: Option<u64>,
    pub cap: Option<u64>,
    pub delivered_today: u64,
    pub attempts_today: u64,
    pub deferred_today: u64,
    pub in_flight: u64,
    pub held_days: u64,
    pub last_held_day: Option<String>,
}

/// What an outcome tells a warming scope's counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settle {
    /// Reservations given back (every recipient that had one, whatever its outcome).
    pub released: u64,
    pub delivered: u64,
    pub deferred: u64,
    pub attempts: u64,
}

/// Every source's warm-up at every provider, shared by the shards.
#[derive(Debug, Default)]
pub struct WarmBook {
    inner: Mutex<Inner>,
    generation: AtomicU64,
    dirty: AtomicBool,
    /// True while some source is under a schedule.
    any: AtomicBool,
}

#[derive(Debug, Default)]
struct Inner {
    entries: BTreeMap<String, Entry>,
    /// Counts read from disk for keys the configuration does not (or not yet) name.
    stash: BTreeMap<String, Counts>,
    view: Arc<WarmView>,
    /// The day the view was made for.
    day: u64,
    freed: u64,
}

impl WarmBook {
    /// A book with the counts saved under `data_dir` (none there: a fresh start).
    pub fn load(data_dir: &Path) -> Result<WarmBook, String> {
        let path = path(data_dir);
        let stash: BTreeMap<String, Counts> = match std::fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|e| format!("{}: {e}", path.display()))?
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        Ok(WarmBook {
            inner: Mutex::new(Inner {
                stash,
                ..Inner::default()
            }),
            ..WarmBook::default()
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The sources and schedules of a (re)loaded configuration: each warming source at each
    /// of its schedule's providers, keeping the counts of those known before.
    pub fn configure(&self, egress: &Egress, providers: &BTreeMap<String, Provider>, day: u64) {
        let mut inner = self.lock();
        let Inner { entries, stash, .. } = &mut *inner;
        // Recipients in flight stay counted against the caps of the sources that remain.
        let mut reserved: HashMap<String, u64> = HashMap::new();
        for (key, e) in std::mem::take(entries) {
            if e.reserved > 0 {
                reserved.insert(key.clone(), e.reserved);
            }
            stash.insert(key, e.counts);
        }
        for s in &egress.sources {
            let Some(w) = &s.warmup else { continue };
            let Some(schedule) = egress.warmups.get(&w.schedule) else {
                continue;
            };
            let daily: Arc<[u64]> = Arc::from(schedule.daily.as_slice());
            for provider in schedule
                .providers
                .iter()
                .filter(|p| providers.contains_key(*p))
            {
                let key = crate::delivery::scope::sourced_key(provider, &s.name);
                let counts = stash.remove(&key).unwrap_or_default();
                let reserved = reserved.get(&key).copied().unwrap_or(0);
                entries.insert(
                    key,
                    Entry {
                        provider: provider.clone(),
                        source: s.name.clone(),
                        start_day: w.start_day,
                        daily: Arc::clone(&daily),
                        hold_bp: schedule.hold_deferral_bp,
                        hold_min_attempts: schedule.hold_min_attempts,
                        counts,
                        reserved,
                        full: false,
                    },
                );
            }
        }
        // Counts of sources no longer configured are kept (a source taken out and put back
        // keeps its days), as long as the configuration's sources could name them.
        while stash.len() > crate::config::SOURCES_MAX * 64 {
            stash.pop_first();
        }
        self.any.store(!inner.entries.is_empty(), Ordering::Release);
        for note in Self::roll_locked(&mut inner, day) {
            tracing::warn!("{note}");
        }
        inner.freed += 1;
        inner.day = day;
        self.publish(&mut inner, day);
        self.dirty.store(true, Ordering::Release);
    }

    /// True while some source is under a schedule.
    pub fn is_empty(&self) -> bool {
        !self.any.load(Ordering::Acquire)
    }

    /// Every scope's counts moved on to `day` if the book's day is behind it (or far ahead
    /// of it: a clock corrected backwards), and a new view for it.
    fn advance(&self, inner: &mut Inner, day: u64) -> bool {
        if !(day > inner.day || inner.day > day + 1) {
            return false;
        }
        for note in Self::roll_locked(inner, day) {
            tracing::warn!("{note}");
        }
        inner.freed += 1;
        inner.day = day;
        self.publish(inner, day);
        self.dirty.store(true, Ordering::Release);
        true
    }

    /// Counts rolled on to `day`; lines for the log (days that held).
    fn roll_locked(inner: &mut Inner, day: u64) -> Vec<String> {
        inner
            .entries
            .values_mut()
            .filter_map(|e| e.roll(day))
            .collect()
    }

    /// A new view of `day` (the book's, `inner.day`, unless an entry is a day ahead).
    fn publish(&self, inner: &mut Inner, day: u64) {
        let mut view = WarmView::default();
        for (key, e) in &mut inner.entries {
            view.tracked.insert(key.clone());
            if e.cap(day).is_some() {
                view.capped.insert(key.clone());
            }
            let full = e.is_full(day);
            if e.full && !full {
                inner.freed += 1;
            }
            e.full = full;
            if e.full {
                view.full
                    .entry(e.provider.clone())
                    .or_default()
                    .push(e.source.clone());
            }
        }
        view.freed = inner.freed;
        inner.view = Arc::new(view);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Publishes anew if the scope `key`'s fullness changed since the view was made (a new
    /// day is `advance`'s).
    fn republish_if_changed(&self, inner: &mut Inner, key: &str, day: u64) {
        let changed = inner
            .entries
            .get(key)
            .is_some_and(|e| e.full != e.is_full(day));
        if changed {
            self.publish(inner, day);
        }
    }

    /// A new UTC day: every scope's counts move on to it (each shard's tick calls it when
    /// its day changes; the first does the work). True if the view changed.
    pub fn roll(&self, day: u64) -> bool {
        let mut inner = self.lock();
        self.advance(&mut inner, day)
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The view in force and its generation.
    pub fn view(&self) -> (u64, Arc<WarmView>) {
        let inner = self.lock();
        (self.generation(), Arc::clone(&inner.view))
    }

    /// Counts up to `n` recipients of the scope `key` against its cap on `day`: how many
    /// may go. Fewer than `n` makes the scope full (a new view).
    pub fn reserve(&self, key: &str, n: u64, day: u64) -> u64 {
        let mut inner = self.lock();
        self.advance(&mut inner, day);
        let Some(e) = inner.entries.get_mut(key) else {
            return n;
        };
        e.roll(day);
        let got = match e.cap(day) {
            None => n,
            Some(cap) => {
                let room = if e.deferring() {
                    0
                } else {
                    cap.saturating_sub(e.counts.delivered + e.reserved)
                };
                let got = n.min(room);
                e.reserved += got;
                if got < n && !e.full {
                    tracing::info!(
                        "warm-up: {key} full for today (cap {cap}, {} delivered, {} of {} replies deferred); its mail goes to its pools' other sources",
                        e.counts.delivered,
                        e.counts.deferred,
                        e.counts.attempts
                    );
                }
                got
            }
        };
        self.republish_if_changed(&mut inner, key, day);
        got
    }

    /// Outcomes of recipients of the scope `key` (reservations given back, 2xx and 4xx
    /// replies counted) on `day`.
    pub fn settle(&self, key: &str, s: Settle, day: u64) {
        if s == Settle::default() {
            return;
        }
        let mut inner = self.lock();
        self.advance(&mut inner, day);
        let Some(e) = inner.entries.get_mut(key) else {
            return;
        };
        e.roll(day);
        e.reserved = e.reserved.saturating_sub(s.released);
        e.counts.delivered += s.delivered;
        e.counts.deferred += s.deferred;
        e.counts.attempts += s.attempts;
        self.republish_if_changed(&mut inner, key, day);
        self.dirty.store(true, Ordering::Release);
    }

    /// Every (provider, source) under a schedule, on `day`.
    pub fn status(&self, day: u64) -> Vec<WarmStatus> {
        let mut inner = self.lock();
        self.advance(&mut inner, day);
        inner
            .entries
            .values()
            .map(|e| {
                // Counts of an earlier day are today's zero.
                let today = if e.counts.day == day {
                    e.counts.clone()
                } else {
                    Counts::default()
                };
                let stage = e.stage(day);
                let state = match stage {
                    Stage::NotStarted => "not started",
                    Stage::Warming { .. } if e.counts.day == day && e.deferring() => "deferred",
                    Stage::Warming { .. } if e.is_full(day) => "full",
                    Stage::Warming { .. } => "warming",
                    Stage::Warm => "warm",
                };
                let (step, cap) = match stage {
                    Stage::Warming { step, cap } => (Some(step), Some(cap)),
                    Stage::NotStarted => (None, Some(0)),
                    Stage::Warm => (None, None),
                };
                WarmStatus {
                    source: e.source.clone(),
                    provider: e.provider.clone(),
                    schedule_start: crate::config::date_text(e.start_day),
                    state,
                    step,
                    cap,
                    delivered_today: today.delivered,
                    attempts_today: today.attempts,
                    deferred_today: today.deferred,
                    in_flight: e.reserved,
                    held_days: e.counts.held_days,
                    last_held_day: e.counts.last_held_day.map(crate::config::date_text),
                }
            })
            .collect()
    }

    /// The counts to save, if they changed since the last call.
    pub fn take_dirty(&self) -> Option<Vec<u8>> {
        if !self.dirty.swap(false, Ordering::AcqRel) {
            return None;
        }
        let inner = self.lock();
        let mut all: BTreeMap<&str, &Counts> =
            inner.stash.iter().map(|(k, c)| (k.as_str(), c)).collect();
        for (k, e) in &inner.entries {
            all.insert(k, &e.counts);
        }
        serde_json::to_vec_pretty(&all).ok()
    }

    /// Marks the counts unsaved again (a save that failed).
    pub fn mark_dirty(&self) {
        self.dirty.store(true, Ordering::Release);
    }
}

/// `<data_dir>/warmup.json`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join("warmup.json")
}

/// Writes `bytes` (from `take_dirty`) durably: a new file, synced, renamed over the old one.
pub fn save(data_dir: &Path, bytes: &[u8]) -> io::Result<()> {
    let path = path(data_dir);
    std::fs::create_dir_all(data_dir)?;
    let tmp = data_dir.join("warmup.json.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)?;
    std::fs::File::open(data_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const DAY0: u64 = 20_000;

    fn config(start: &str) -> Config {
        Config::parse(
            &format!(
                "[providers.yahoo]\nmx_suffixes = [\".yahoo.test\"]\n[providers.gmail]\nmx_suffixes = [\".gmail.test\"]\n\
                 [warmup.fresh]\ndaily = [10, 20, 40]\nproviders = [\"yahoo\"]\nhold_deferral_rate = 0.1\nhold_min_attempts = 5\n\
                 [sources.old]\naddress = \"127.0.0.2\"\n[sources.new]\naddress = \"127.0.0.3\"\nwarmup = \"fresh\"\nwarmup_start = \"{start}\"\n\
                 [pools.default]\nsources = [\"old\", \"new\"]\n"
            ),
            "t",
        )
        .unwrap()
    }

    fn book(start_day: u64) -> WarmBook {
        let c = config(&crate::config::date_text(start_day));
        let b = WarmBook::default();
        b.configure(&c.egress, &c.providers, start_day);
        b
    }

    fn deliver(b: &WarmBook, n: u64, day: u64) -> u64 {
        let got = b.reserve("yahoo@new", n, day);
        b.settle(
            "yahoo@new",
            Settle {
                released: got,
                delivered: got,
                attempts: got,
                deferred: 0,
            },
            day,
        );
        got
    }

    #[test]
    fn dates_parse_and_print() {
        assert_eq!(crate::config::parse_date("1970-01-01"), Some(0));
        assert_eq!(crate::config::parse_date("2026-12-02"), Some(20_789));
        assert_eq!(crate::config::parse_date("2024-02-29"), Some(19_782));
        for bad in [
            "2023-02-29",
            "2026-13-01",
            "2026-1-01",
            "26-12-02",
            "2026-12-02x",
            "1969-12-31",
        ] {
            assert_eq!(crate::config::parse_date(bad), None, "{bad}");
        }
        for day in [0, 19_782, 20_789, 60_000] {
            assert_eq!(
                crate::config::parse_date(&crate::config::date_text(day)),
                Some(day)
            );
        }
    }

    #[test]
    fn a_source_takes_its_steps_cap_per_day_and_the_next_day_the_next_step() {
        let b = book(DAY0);
        // Only the warming source at the schedule's providers is tracked.
        let (_, v) = b.view();
        assert!(v.tracks("yahoo@new") && !v.tracks("gmail@new") && !v.tracks("yahoo@old"));
        assert_eq!(b.reserve("gmail@new", 1_000, DAY0), 1_000);
        assert_eq!(deliver(&b, 7, DAY0), 7);
        assert!(!b.view().1.is_full("yahoo", "new"));
        // 3 more of 10: full, and the view says so.
        assert_eq!(deliver(&b, 8, DAY0), 3);
        assert!(b.view().1.is_full("yahoo", "new"));
        assert!(b.view().1.is_full_key("yahoo@new"));
        assert_eq!(deliver(&b, 1, DAY0), 0);
        // The next day: 20; then 40; then warm (no cap).
        assert!(b.roll(DAY0 + 1));
        assert!(!b.view().1.is_full("yahoo", "new"));
        assert_eq!(deliver(&b, 100, DAY0 + 1), 20);
        assert_eq!(deliver(&b, 100, DAY0 + 2), 40);
        assert_eq!(deliver(&b, 100, DAY0 + 3), 100);
        assert!(!b.view().1.is_capped("yahoo@new"));
    }

    #[test]
    fn reserved_recipients_count_until_their_outcome_and_failures_give_them_back() {
        let b = book(DAY0);
        assert_eq!(b.reserve("yahoo@new", 10, DAY0), 10);
        assert!(b.view().1.is_full("yahoo", "new"));
        // 4 delivered, 6 bounced (5xx): 6 may go again.
        b.settle(
            "yahoo@new",
            Settle {
                released: 10,
                delivered: 4,
                attempts: 10,
                deferred: 0,
            },
            DAY0,
        );
        assert!(!b.view().1.is_full("yahoo", "new"));
        assert_eq!(b.reserve("yahoo@new", 100, DAY0), 6);
    }

    #[test]
    fn deferrals_past_the_threshold_stop_the_source_for_the_day() {
        let b = book(DAY0);
        let got = b.reserve("yahoo@new", 6, DAY0);
        // 1 of 6 deferred (17% > 10%, at least 5 replies): nothing more today.
        b.settle(
            "yahoo@new",
            Settle {
                released: got,
                delivered: 5,
                attempts: 6,
                deferred: 1,
            },
            DAY0,
        );
        assert!(b.view().1.is_full("yahoo", "new"));
        assert_eq!(b.reserve("yahoo@new", 4, DAY0), 0);
        assert_eq!(b.status(DAY0)[0].state, "deferred");
        // The next day: free again, at the same step (held).
        assert!(!b.view().1.is_full("yahoo", "new") || b.roll(DAY0 + 1));
        assert!(!b.view().1.is_full("yahoo", "new"));
        assert_eq!(b.status(DAY0 + 1)[0].cap, Some(10));
    }

    #[test]
    fn a_day_with_deferrals_past_the_threshold_holds_the_step() {
        let b = book(DAY0);
        // Day 0: 10 attempts, 2 deferred (20% > 10%): held.
        let got = b.reserve("yahoo@new", 10, DAY0);
        b.settle(
            "yahoo@new",
            Settle {
                released: got,
                delivered: 8,
                attempts: 10,
                deferred: 2,
            },
            DAY0,
        );
        b.roll(DAY0 + 1);
        let s = &b.status(DAY0 + 1)[0];
        assert_eq!((s.step, s.cap, s.held_days), (Some(0), Some(10), 1));
        assert_eq!(
            s.last_held_day.as_deref(),
            Some(&*crate::config::date_text(DAY0))
        );
        // Day 1 clean: day 2 is step 1. Too few attempts to judge (3 < 5) is clean too.
        assert_eq!(deliver(&b, 3, DAY0 + 1), 3);
        assert_eq!(b.status(DAY0 + 2)[0].step, Some(1));
        assert_eq!(deliver(&b, 100, DAY0 + 2), 20);
        // Days without traffic are steps (the schedule counts days since its start): day 4
        // less the held one is past the table.
        assert_eq!(b.status(DAY0 + 3)[0].step, Some(2));
        assert_eq!(b.status(DAY0 + 4)[0].state, "warm");
        assert_eq!(deliver(&b, 100, DAY0 + 4), 100);
    }

    #[test]
    fn before_its_start_a_source_sends_nothing_and_counts_survive_a_restart() {
        let b = book(DAY0 + 2);
        assert_eq!(b.reserve("yahoo@new", 5, DAY0), 0);
        assert!(b.view().1.is_full("yahoo", "new"));
        assert_eq!(b.status(DAY0)[0].state, "not started");
        let b = book(DAY0);
        assert_eq!(deliver(&b, 6, DAY0), 6);
        let dir = tempfile::tempdir().unwrap();
        save(dir.path(), &b.take_dirty().unwrap()).unwrap();
        assert!(b.take_dirty().is_none());
        let again = WarmBook::load(dir.path()).unwrap();
        let c = config(&crate::config::date_text(DAY0));
        again.configure(&c.egress, &c.providers, DAY0);
        assert_eq!(again.status(DAY0)[0].delivered_today, 6);
        assert_eq!(again.reserve("yahoo@new", 100, DAY0), 4);
        // A damaged file is an error naming it.
        std::fs::write(path(dir.path()), b"{").unwrap();
        assert!(WarmBook::load(dir.path())
            .unwrap_err()
            .contains("warmup.json"));
    }

    #[test]
    fn a_reload_keeps_what_is_in_flight_and_a_new_day_rolls_every_source() {
        let c = config(&crate::config::date_text(DAY0));
        let b = book(DAY0);
        assert_eq!(b.reserve("yahoo@new", 10, DAY0), 10);
        // A reload while all ten are in flight: still full.
        b.configure(&c.egress, &c.providers, DAY0);
        assert_eq!(b.reserve("yahoo@new", 5, DAY0), 0);
        // An outcome after midnight rolls the whole book, not only its own scope: the view
        // is the new day's, the day's freeing counted.
        let freed = b.view().1.freed;
        b.settle(
            "gmail@new",
            Settle {
                attempts: 1,
                delivered: 1,
                ..Settle::default()
            },
            DAY0 + 1,
        );
        let (_, v) = b.view();
        assert!(v.freed > freed);
        assert_eq!(b.status(DAY0 + 1)[0].cap, Some(20));
    }

    #[test]
    fn counts_made_under_a_clock_far_ahead_start_again() {
        let b = book(DAY0);
        // A clock two days ahead (step 2 of the table: 40), then corrected.
        assert_eq!(deliver(&b, 100, DAY0 + 2), 40);
        assert!(b.view().1.is_full("yahoo", "new"));
        assert!(b.roll(DAY0));
        assert!(!b.view().1.is_full("yahoo", "new"));
        assert_eq!(b.status(DAY0)[0].delivered_today, 0);
        assert_eq!(deliver(&b, 100, DAY0), 10);
    }
}
