//! The delivery log's records counted as they are written (`DeliveryLog::append`), in
//! total, per scope (the record's `provider`) and per campaign: the counters of `/metrics`
//! and the status page, so they agree with the log by construction. Each shard counts its
//! own and publishes a copy with its status.

use crate::delivery_log::{EventType, LogRecord};
use std::collections::HashMap;

/// Bounce categories, in the order of `EventCounts::bounced`; the last is "none given".
pub const BOUNCE_CATEGORIES: [&str; 10] = [
    "bad-mailbox",
    "bad-domain",
    "quota",
    "spam-related",
    "policy",
    "no-answer",
    "other",
    "suppressed",
    "admin",
    "",
];

/// Records of each type.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventCounts {
    pub reception: u64,
    pub delivery: u64,
    pub transient_failure: u64,
    pub bounced: [u64; BOUNCE_CATEGORIES.len()],
    pub expiration: u64,
    pub rejected: u64,
    pub check: u64,
    /// Of the transient failures, those the receiver meant as pushback are not told apart
    /// here (the scope's throttle counts them); of the records, when the last came.
    pub last_unix_ms: u64,
}

impl EventCounts {
    pub fn bounce(&self) -> u64 {
        self.bounced.iter().sum()
    }

    fn add(&mut self, r: &LogRecord<'_>) {
        match r.event {
            Some(EventType::Reception) => self.reception += 1,
            Some(EventType::Delivery) => self.delivery += 1,
            Some(EventType::TransientFailure) => self.transient_failure += 1,
            Some(EventType::Bounce) => {
                let i = BOUNCE_CATEGORIES
                    .iter()
                    .position(|c| *c == r.bounce_category)
                    .unwrap_or(BOUNCE_CATEGORIES.len() - 1);
                self.bounced[i] += 1;
            }
            Some(EventType::Expiration) => self.expiration += 1,
            Some(EventType::Rejected) => self.rejected += 1,
            Some(EventType::Check) => self.check += 1,
            // Written by `spate drain`, with the engine stopped: no running count sees it.
            Some(EventType::Transferred) | None => {}
        }
        self.last_unix_ms = self.last_unix_ms.max(r.ts_unix_ms);
    }

    pub fn merge(&mut self, o: &EventCounts) {
        self.reception += o.reception;
        self.delivery += o.delivery;
        self.transient_failure += o.transient_failure;
        for (a, b) in self.bounced.iter_mut().zip(o.bounced) {
            *a += b;
        }
        self.expiration += o.expiration;
        self.rejected += o.rejected;
        self.check += o.check;
        self.last_unix_ms = self.last_unix_ms.max(o.last_unix_ms);
    }
}

/// Scopes one shard counts one by one; records of further scopes count under `OTHER`.
pub const SCOPES_COUNTED_MAX: usize = 4096;
/// Campaigns one shard counts one by one; the least recently active goes for a new one.
pub const CAMPAIGNS_COUNTED_MAX: usize = 512;
/// The key the scopes past `SCOPES_COUNTED_MAX` count under.
pub const OTHER: &str = "other";

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogCounts {
    pub total: EventCounts,
    /// By the record's `provider` (records before routing, such as Reception, have none and
    /// count in `total` only).
    pub by_scope: HashMap<Box<str>, EventCounts>,
    /// By campaign (`""`: mail without one).
    pub by_campaign: HashMap<Box<str>, EventCounts>,
}

impl LogCounts {
    pub fn add(&mut self, r: &LogRecord<'_>) {
        self.total.add(r);
        let scope = if r.scope.is_empty() {
            r.provider
        } else {
            r.scope
        };
        if !scope.is_empty() {
            let full = self.by_scope.len() >= SCOPES_COUNTED_MAX;
            match self.by_scope.get_mut(scope) {
                Some(c) => c.add(r),
                None => {
                    let key = if full { OTHER } else { scope };
                    self.by_scope.entry(key.into()).or_default().add(r);
                }
            }
        }
        if r.event == Some(EventType::Check) {
            return;
        }
        match self.by_campaign.get_mut(r.campaign) {
            Some(c) => c.add(r),
            None => {
                if self.by_campaign.len() >= CAMPAIGNS_COUNTED_MAX {
                    let oldest = self
                        .by_campaign
                        .iter()
                        .min_by_key(|(_, c)| c.last_unix_ms)
                        .map(|(k, _)| k.clone());
                    if let Some(k) = oldest {
                        self.by_campaign.remove(&k);
                    }
                }
                self.by_campaign
                    .entry(r.campaign.into())
                    .or_default()
                    .add(r);
            }
        }
    }
}

/// Upper bounds of `Histogram`'s buckets, in seconds (the last bucket is +Inf).
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 5.0,
];

/// Durations in fixed buckets, as a Prometheus histogram wants them: counts per bucket
/// (not cumulative here), their sum and how many.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Histogram {
    pub buckets: [u64; LATENCY_BUCKETS.len() + 1],
    pub sum_seconds: f64,
    pub count: u64,
}

impl Histogram {
    pub fn record(&mut self, seconds: f64) {
        let i = LATENCY_BUCKETS
            .iter()
            .position(|&le| seconds <= le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i] += 1;
        self.sum_seconds += seconds;
        self.count += 1;
    }

    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.buckets.iter_mut().zip(o.buckets) {
            *a += b;
        }
        self.sum_seconds += o.sum_seconds;
        self.count += o.count;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(
        event: EventType,
        provider: &'static str,
        category: &'static str,
    ) -> LogRecord<'static> {
        LogRecord {
            ts_unix_ms: 1,
            event: Some(event),
            recipient: "a@b",
            sender: "",
            campaign: "c",
            tenant: "",
            domain: "b",
            provider,
            source: "",
            scope: "",
            mx: "",
            ip: "",
            tls: "",
            code: None,
            enhanced: "",
            response: "",
            attempt: None,
            message_id: "",
            bounce_category: category,
        }
    }

    #[test]
    fn counts_follow_the_records_by_type_scope_and_category() {
        let mut c = LogCounts::default();
        c.add(&record(EventType::Reception, "", ""));
        c.add(&record(EventType::Delivery, "gmail", ""));
        c.add(&record(EventType::Bounce, "gmail", "bad-mailbox"));
        c.add(&record(EventType::Bounce, "gmail", "made-up"));
        assert_eq!(c.total.reception, 1);
        assert_eq!(c.total.delivery, 1);
        assert_eq!(c.total.bounce(), 2);
        assert_eq!(c.total.bounced[0], 1);
        assert_eq!(c.total.bounced[BOUNCE_CATEGORIES.len() - 1], 1);
        assert_eq!(c.by_scope["gmail"].delivery, 1);
        assert_eq!(c.by_campaign["c"].reception, 1);
    }

    #[test]
    fn a_histogram_puts_each_duration_in_the_first_bucket_that_holds_it() {
        let mut h = Histogram::default();
        h.record(0.0005);
        h.record(0.003);
        h.record(60.0);
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[3], 1);
        assert_eq!(h.buckets[LATENCY_BUCKETS.len()], 1);
        assert_eq!(h.count, 3);
    }

    #[test]
    fn the_long_tail_folds_into_other() {
        let mut c = LogCounts::default();
        let names: Vec<String> = (0..SCOPES_COUNTED_MAX + 10)
            .map(|i| format!("site:{i}"))
            .collect();
        for n in &names {
            let mut r = record(EventType::Delivery, "", "");
            r.provider = n;
            c.add(&r);
        }
        assert_eq!(c.by_scope.len(), SCOPES_COUNTED_MAX + 1);
        assert_eq!(c.by_scope[OTHER].delivery, 10);
        assert_eq!(c.total.delivery, names.len() as u64);
    }
}
