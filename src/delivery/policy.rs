//! Delivery policy as pure functions of (state, now, config): what an answer means for a
//! recipient, how a bounce is categorised, and when to try again. Table-tested; the clock and
//! the randomness are injected.

use crate::delivery_log::EventType;
use crate::dns::resolver::Destination;
use crate::queue::record::OutcomeState;
use crate::smtp::reply::{EnhancedCode, Reply};
use crate::smtp::session::RcptResult;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Delivered,
    /// Try again later (the retry schedule says when).
    Deferred,
    /// Permanent: a `Bounce` record; the recipient is final.
    Bounced,
}

/// Who was at fault: a message-level answer counts against the recipient; a connection-level
/// one (421, a dropped connection) says nothing about it and is retried elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    Message,
    Connection,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BounceCategory {
    BadMailbox,
    BadDomain,
    Quota,
    SpamRelated,
    Policy,
    NoAnswer,
    Other,
    /// The recipient is on a suppression list (checked again just before sending).
    Suppressed,
    /// An operator bounced it (`spate queue bounce`).
    Admin,
}

impl BounceCategory {
    pub fn as_str(self) -> &'static str {
        match self {
            BounceCategory::BadMailbox => "bad-mailbox",
            BounceCategory::BadDomain => "bad-domain",
            BounceCategory::Quota => "quota",
            BounceCategory::SpamRelated => "spam-related",
            BounceCategory::Policy => "policy",
            BounceCategory::NoAnswer => "no-answer",
            BounceCategory::Other => "other",
            BounceCategory::Suppressed => "suppressed",
            BounceCategory::Admin => "admin",
        }
    }
}

/// What one answer means for one recipient.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    pub fault: Fault,
    /// The SMTP code, or 0 for connection-level and DNS events.
    pub code: u16,
    pub enhanced: Option<EnhancedCode>,
    pub response: String,
    /// For bounces (and, at expiry, from the last answer).
    pub category: Option<BounceCategory>,
    /// The receiver pushed back (421, or 4xx rate-limit texts): feeds the throttle
    /// controller. Our own internal deferrals never do.
    pub pushback: bool,
}

/// Classifies one recipient's result from an SMTP session.
pub fn classify(result: &RcptResult) -> Outcome {
    match result {
        RcptResult::Reply(r) => classify_reply(r),
        RcptResult::ServiceClosing(r) => Outcome {
            verdict: Verdict::Deferred,
            fault: Fault::Connection,
            code: r.code,
            enhanced: r.enhanced,
            response: r.to_log_string(),
            category: None,
            pushback: true,
        },
        RcptResult::ConnectionLost(why) => Outcome {
            verdict: Verdict::Deferred,
            fault: Fault::Connection,
            code: 0,
            enhanced: None,
            response: why.clone(),
            category: None,
            pushback: false,
        },
    }
}

fn classify_reply(r: &Reply) -> Outcome {
    let text = r.text();
    let (verdict, category) = match r.code / 100 {
        2 => (Verdict::Delivered, None),
        5 => (Verdict::Bounced, Some(category_of(r.enhanced, &text))),
        // 4xx, and a 3xx where a final answer belongs (a broken server): try again. The
        // reply parser admits codes 200..=599 only, so nothing else reaches here.
        _ => (Verdict::Deferred, None),
    };
    Outcome {
        verdict,
        fault: Fault::Message,
        code: r.code,
        enhanced: r.enhanced,
        response: r.to_log_string(),
        category,
        // A 421 is the server shedding load wherever it comes (here: as the answer to a
        // message it received whole, which the session reports as that message's reply).
        pushback: r.code == 421 || (r.code / 100 == 4 && is_rate_limit(r.enhanced, &text)),
    }
}

/// A bounce Spate decides itself, before or without any SMTP reply (code 0 in the log).
fn local_bounce(enhanced: EnhancedCode, category: BounceCategory, response: String) -> Outcome {
    Outcome {
        verdict: Verdict::Bounced,
        fault: Fault::Message,
        code: 0,
        enhanced: Some(enhanced),
        response,
        category: Some(category),
        pushback: false,
    }
}

/// Classifies a routing result that ends delivery before any connection.
pub fn classify_destination(domain: &str, d: &Destination) -> Option<Outcome> {
    use BounceCategory::{BadDomain, Policy};
    match d {
        Destination::Hosts(_) => None,
        Destination::NullMx => Some(local_bounce(
            EnhancedCode::new(5, 1, 10),
            BadDomain,
            format!("{domain} accepts no mail (null MX, RFC 7505)"),
        )),
        Destination::NoSuchDomain => Some(local_bounce(
            EnhancedCode::new(5, 1, 2),
            BadDomain,
            format!("{domain}: no such domain (NXDOMAIN)"),
        )),
        Destination::NoAddress => Some(local_bounce(
            EnhancedCode::new(5, 1, 2),
            BadDomain,
            format!("{domain}: no MX and no address (A/AAAA)"),
        )),
        Destination::Unusable(why) => Some(local_bounce(
            EnhancedCode::new(5, 4, 4),
            Policy,
            format!("{domain}: no usable MX: {why}"),
        )),
        Destination::TemporaryFailure(why) => Some(Outcome {
            verdict: Verdict::Deferred,
            fault: Fault::Connection,
            code: 0,
            enhanced: Some(EnhancedCode::new(4, 4, 3)),
            response: format!("DNS lookup for {domain} failed: {why}"),
            category: None,
            pushback: false,
        }),
    }
}

/// No connection was attempted because every address of the destination's hosts is in a
/// range DNS may not send Spate to (`delivery::guard`): a bounce, 5.4.4, category `policy`
/// (the domain may be fine; Spate's policy refuses it). `why` names the addresses and the
/// configuration key that would allow them.
pub fn refused_destination(why: String) -> Outcome {
    local_bounce(EnhancedCode::new(5, 4, 4), BounceCategory::Policy, why)
}

/// No host of the destination has an address, and DNS said so for good (NXDOMAIN or NODATA
/// for A and AAAA of every host): a bounce, 5.4.4, as Postfix does, not days of retries.
pub fn no_host_address(why: String) -> Outcome {
    local_bounce(EnhancedCode::new(5, 4, 4), BounceCategory::BadDomain, why)
}

/// The bounce category from the enhanced code first, then from the text.
pub fn category_of(enhanced: Option<EnhancedCode>, text: &str) -> BounceCategory {
    let t = text.to_ascii_lowercase();
    let says = |words: &[&str]| words.iter().any(|w| t.contains(w));
    let by_code = enhanced.map(|e| (e.subject, e.detail));
    match by_code {
        Some((1, 1)) | Some((1, 6)) | Some((2, 1)) => return BounceCategory::BadMailbox,
        Some((1, 2)) | Some((1, 10)) | Some((4, 4)) => return BounceCategory::BadDomain,
        Some((2, 2)) => return BounceCategory::Quota,
        Some((7, 26)) | Some((7, 27)) | Some((7, 28)) => return BounceCategory::SpamRelated,
        _ => {}
    }
    if says(&[
        "spam",
        "blocklist",
        "blacklist",
        "reputation",
        "dnsbl",
        "spamhaus",
        "junk",
    ]) {
        BounceCategory::SpamRelated
    } else if says(&[
        "quota",
        "mailbox full",
        "mailbox is full",
        "insufficient storage",
        "over quota",
    ]) {
        BounceCategory::Quota
    } else if says(&[
        "user unknown",
        "unknown user",
        "no such user",
        "does not exist",
        "no mailbox",
        "mailbox unavailable",
        "recipient rejected",
        "invalid recipient",
    ]) {
        BounceCategory::BadMailbox
    } else if matches!(by_code, Some((7, _)) | Some((3, 4)))
        || says(&["policy", "not allowed", "denied"])
    {
        BounceCategory::Policy
    } else {
        BounceCategory::Other
    }
}

/// 4xx answers that mean "you are sending too fast", from the texts big receivers use
/// (Gmail 4.7.28, Yahoo TSS04, Comcast RL0000, Microsoft "server busy"). Greylisting ("try
/// again later") and per-transaction limits ("too many recipients") are not pushback.
pub fn is_rate_limit(enhanced: Option<EnhancedCode>, text: &str) -> bool {
    const PHRASES: &[&str] = &[
        "rate limit",
        "ratelimit",
        "rate-limit",
        "unusual rate",
        "unexpected volume",
        "too many connections",
        "too many messages",
        "sending too fast",
        "tss04",
        "rl0000",
        "throttl",
        "server busy",
        "temporarily deferred",
    ];
    let t = text.to_ascii_lowercase();
    matches!(enhanced.map(|e| (e.subject, e.detail)), Some((7, 28)))
        || PHRASES.iter().any(|w| t.contains(w))
}

/// The retry schedule: first retry after `first`, doubling, capped at `max_interval`, with
/// ±`jitter` spread; nothing after `max_age` from queueing (then `Expiration`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub first: Duration,
    pub max_interval: Duration,
    pub max_age: Duration,
    /// Fraction of the delay, e.g. 0.1 for ±10%.
    pub jitter: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            first: Duration::from_secs(5 * 60),
            max_interval: Duration::from_secs(2 * 3600),
            max_age: Duration::from_secs(3 * 86_400),
            jitter: 0.1,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    RetryAt { unix_ms: u64 },
    Expire,
}

impl RetryPolicy {
    /// After `attempts` failed attempts, when to try again. `random` is uniform in [0, 1).
    pub fn next(&self, attempts: u32, queued_unix_ms: u64, now_unix_ms: u64, random: f64) -> Next {
        let deadline = queued_unix_ms.saturating_add(self.max_age.as_millis() as u64);
        if now_unix_ms >= deadline {
            return Next::Expire;
        }
        let doublings = attempts.saturating_sub(1).min(30);
        let base = (self.first.as_millis() as u64).saturating_mul(1u64 << doublings);
        let base = base.min(self.max_interval.as_millis() as u64);
        let spread = (base as f64 * self.jitter * (2.0 * random - 1.0)) as i64;
        let delay = (base as i64 + spread).max(1000) as u64;
        // The last try happens at the deadline, not never.
        Next::RetryAt {
            unix_ms: now_unix_ms.saturating_add(delay).min(deadline),
        }
    }
}

/// A recipient whose own message was answered with pushback (a 421 or a rate text after
/// the final dot) goes straight back to its scope's queue while it has used fewer attempts
/// than this; then it follows the retry schedule, so one message a receiver keeps refusing
/// cannot hold its scope's pace down for long.
pub const PUSHBACK_REQUEUE_ATTEMPTS: u8 = 3;

/// What one outcome makes of a queued recipient: the log event, the queue record's state,
/// when to try again (deferred only) and the attempts it has used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub event: EventType,
    pub state: OutcomeState,
    /// For `Deferred`: the Unix time in ms before which not to try again; else 0.
    pub due_unix_ms: u64,
    pub category: Option<BounceCategory>,
    /// Attempts counted so far, this one included unless it is not counted.
    pub attempts: u8,
}

/// The recipient an outcome is for, as the queue knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempted {
    /// Its sequence number: also the seed of its retry jitter, so a decision replays.
    pub seq: u64,
    /// Attempts counted before this one.
    pub attempts: u8,
    pub queued_unix_ms: u64,
}

/// Decides what an outcome makes of a recipient, at `now_unix_ms`. Pure: the same inputs
/// give the same decision.
///
/// - Pushback (a 421, or a 4xx rate-limit text) is the receiver's rate, not the
///   recipient's: the recipient is due again at once, back in its scope's queue, and the
///   scope's throttle (which the pushback cut) decides when it goes, neither sooner nor
///   later. Before the message was sent (`Fault::Connection`) it is not counted; as the
///   message's own reply it is, and past `PUSHBACK_REQUEUE_ATTEMPTS` it follows the
///   schedule. Until `max_age`.
/// - Other deferrals follow `retry`; past `max_age` the recipient expires, its category
///   taken from the last answer (`no-answer` when there was none).
pub fn decide(o: &Outcome, r: Attempted, now_unix_ms: u64, retry: &RetryPolicy) -> Decision {
    let counted = (u32::from(r.attempts) + 1).min(u32::from(u8::MAX)) as u8;
    let final_ = |event, state, category| Decision {
        event,
        state,
        due_unix_ms: 0,
        category,
        attempts: counted,
    };
    match o.verdict {
        Verdict::Delivered => final_(EventType::Delivery, OutcomeState::Delivered, None),
        Verdict::Bounced => final_(EventType::Bounce, OutcomeState::Bounced, o.category),
        Verdict::Deferred => {
            let deadline = r
                .queued_unix_ms
                .saturating_add(retry.max_age.as_millis() as u64);
            if o.pushback && now_unix_ms < deadline {
                let requeue = match o.fault {
                    Fault::Connection => Some(r.attempts),
                    Fault::Message if r.attempts < PUSHBACK_REQUEUE_ATTEMPTS => Some(counted),
                    Fault::Message => None,
                };
                if let Some(attempts) = requeue {
                    return Decision {
                        event: EventType::TransientFailure,
                        state: OutcomeState::Deferred,
                        due_unix_ms: now_unix_ms,
                        category: None,
                        attempts,
                    };
                }
            }
            let random =
                (r.seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11) as f64 / (1u64 << 53) as f64;
            match retry.next(u32::from(counted), r.queued_unix_ms, now_unix_ms, random) {
                Next::RetryAt { unix_ms } => Decision {
                    event: EventType::TransientFailure,
                    state: OutcomeState::Deferred,
                    due_unix_ms: unix_ms,
                    category: None,
                    attempts: counted,
                },
                Next::Expire => {
                    let category = if o.code == 0 {
                        BounceCategory::NoAnswer
                    } else {
                        category_of(o.enhanced, &o.response)
                    };
                    final_(EventType::Expiration, OutcomeState::Expired, Some(category))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, text: &str) -> RcptResult {
        RcptResult::Reply(Reply::new(code, text))
    }

    #[test]
    fn outcomes_table() {
        let cases: &[(RcptResult, Verdict, Fault, Option<BounceCategory>, bool)] = &[
            (reply(250, "2.0.0 Ok: queued"), Verdict::Delivered, Fault::Message, None, false),
            (reply(550, "5.1.1 <x@y>: Recipient address rejected: User unknown"), Verdict::Bounced, Fault::Message, Some(BounceCategory::BadMailbox), false),
            (reply(552, "5.2.2 mailbox full"), Verdict::Bounced, Fault::Message, Some(BounceCategory::Quota), false),
            (reply(550, "5.7.1 Service unavailable; client host blocked using Spamhaus"), Verdict::Bounced, Fault::Message, Some(BounceCategory::SpamRelated), false),
            (reply(550, "5.7.26 unauthenticated email is not accepted"), Verdict::Bounced, Fault::Message, Some(BounceCategory::SpamRelated), false),
            (reply(554, "5.7.1 relay access denied"), Verdict::Bounced, Fault::Message, Some(BounceCategory::Policy), false),
            (reply(554, "5.0.0 something else"), Verdict::Bounced, Fault::Message, Some(BounceCategory::Other), false),
            (reply(450, "4.2.1 The user you are trying to contact is receiving mail at a rate that prevents additional messages"), Verdict::Deferred, Fault::Message, None, false),
            (reply(451, "4.7.1 Please try again later"), Verdict::Deferred, Fault::Message, None, false),
            (reply(452, "4.5.3 Too many recipients"), Verdict::Deferred, Fault::Message, None, false),
            (reply(450, "4.7.28 Our system has detected an unusual rate of unsolicited mail"), Verdict::Deferred, Fault::Message, None, true),
            (reply(451, "4.7.500 Server busy. Please try again later from [192.0.2.1]"), Verdict::Deferred, Fault::Message, None, true),
            (RcptResult::ServiceClosing(Reply::new(421, "4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred")), Verdict::Deferred, Fault::Connection, None, true),
            (reply(421, "4.3.2 system not accepting messages"), Verdict::Deferred, Fault::Message, None, true),
            (RcptResult::ConnectionLost("connection reset".into()), Verdict::Deferred, Fault::Connection, None, false),
        ];
        for (result, verdict, fault, category, pushback) in cases {
            let o = classify(result);
            assert_eq!(
                (o.verdict, o.fault, o.category, o.pushback),
                (*verdict, *fault, *category, *pushback),
                "{result:?}"
            );
        }
        let lost = classify(&RcptResult::ConnectionLost("timeout".into()));
        assert_eq!((lost.code, lost.response.as_str()), (0, "timeout"));
    }

    #[test]
    fn routing_outcomes() {
        let null = classify_destination("n.test", &Destination::NullMx).unwrap();
        assert_eq!(
            (
                null.verdict,
                null.enhanced.unwrap().to_string(),
                null.category
            ),
            (
                Verdict::Bounced,
                "5.1.10".into(),
                Some(BounceCategory::BadDomain)
            )
        );
        let nx = classify_destination("x.test", &Destination::NoSuchDomain).unwrap();
        assert_eq!(
            (nx.verdict, nx.enhanced.unwrap().to_string()),
            (Verdict::Bounced, "5.1.2".into())
        );
        let unusable = classify_destination("x.test", &Destination::Unusable("MX".into())).unwrap();
        assert_eq!(
            (
                unusable.verdict,
                unusable.enhanced.unwrap().to_string(),
                unusable.category
            ),
            (
                Verdict::Bounced,
                "5.4.4".into(),
                Some(BounceCategory::Policy)
            )
        );
        let refused = refused_destination("mx [10.0.0.1] is private".into());
        assert_eq!(
            (refused.verdict, refused.code, refused.category),
            (Verdict::Bounced, 0, Some(BounceCategory::Policy)),
            "never bad-domain"
        );
        let noaddr = classify_destination("x.test", &Destination::NoAddress).unwrap();
        assert_eq!(
            (noaddr.verdict, noaddr.category),
            (Verdict::Bounced, Some(BounceCategory::BadDomain))
        );
        let tmp = classify_destination("x.test", &Destination::TemporaryFailure("SERVFAIL".into()))
            .unwrap();
        assert_eq!(
            (tmp.verdict, tmp.code, tmp.pushback),
            (Verdict::Deferred, 0, false)
        );
        assert!(classify_destination("x.test", &Destination::Hosts(vec!["mx".into()])).is_none());
    }

    #[test]
    fn retry_schedule_doubles_caps_jitters_and_expires() {
        let p = RetryPolicy::default();
        let min = 60_000;
        let at = |attempts, now, r| match p.next(attempts, 0, now, r) {
            Next::RetryAt { unix_ms } => unix_ms - now,
            Next::Expire => u64::MAX,
        };
        assert_eq!(at(1, min, 0.5), 5 * min, "first retry after 5 minutes");
        assert_eq!(at(2, min, 0.5), 10 * min);
        assert_eq!(at(3, min, 0.5), 20 * min);
        assert_eq!(at(10, min, 0.5), 120 * min, "capped at 2 hours");
        assert_eq!(at(1, min, 0.0), 5 * min - 30_000, "-10% jitter");
        assert!(at(1, min, 0.999) > 5 * min + 29_000, "+10% jitter");
        let three_days = 3 * 86_400_000;
        assert_eq!(
            at(40, three_days - 1000, 0.5),
            1000,
            "last try at the deadline"
        );
        assert_eq!(p.next(41, 0, three_days, 0.5), Next::Expire);
    }

    #[test]
    fn decisions_table() {
        const MIN: u64 = 60_000;
        const DAY: u64 = 1_440 * MIN;
        let retry = RetryPolicy::default();
        let outcome = |result: RcptResult| classify(&result);
        let lost = || outcome(RcptResult::ConnectionLost("connection reset".into()));
        let closing = || {
            outcome(RcptResult::ServiceClosing(Reply::new(
                421,
                "4.7.0 [TSS04] try again later",
            )))
        };
        let r = |attempts, queued_unix_ms| Attempted {
            seq: 7,
            attempts,
            queued_unix_ms,
        };
        use BounceCategory as C;
        use EventType as E;
        use OutcomeState as S;
        // (outcome, recipient, now, event, state, due after now (None: not deferred),
        //  category, attempts after)
        type Case = (
            Outcome,
            Attempted,
            u64,
            E,
            S,
            Option<(u64, u64)>,
            Option<C>,
            u8,
        );
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            // Final answers count the attempt.
            (outcome(reply(250, "2.0.0 ok")), r(0, 0), MIN, E::Delivery, S::Delivered, None, None, 1),
            (outcome(reply(550, "5.1.1 user unknown")), r(3, 0), MIN, E::Bounce, S::Bounced, None, Some(C::BadMailbox), 4),
            // A 4xx is retried on the schedule (5 minutes, then doubling, each ±10%).
            (outcome(reply(451, "4.7.1 try later")), r(0, 0), MIN, E::TransientFailure, S::Deferred, Some((270_000, 330_000)), None, 1),
            (outcome(reply(451, "4.7.1 try later")), r(1, 0), MIN, E::TransientFailure, S::Deferred, Some((540_000, 660_000)), None, 2),
            (lost(), r(0, 0), MIN, E::TransientFailure, S::Deferred, Some((270_000, 330_000)), None, 1),
            // Pushback before the message: due at once (its scope's pace decides), not counted.
            (closing(), r(2, 0), MIN, E::TransientFailure, S::Deferred, Some((0, 0)), None, 2),
            // Pushback answering the final dot is the message's reply: counted, due at once
            // for its first attempts, then on the schedule.
            (outcome(reply(421, "4.3.2 not accepting")), r(2, 0), MIN, E::TransientFailure, S::Deferred, Some((0, 0)), None, 3),
            (outcome(reply(451, "4.7.0 too many messages, slow down")), r(0, 0), MIN, E::TransientFailure, S::Deferred, Some((0, 0)), None, 1),
            (outcome(reply(421, "4.3.2 not accepting")), r(3, 0), MIN, E::TransientFailure, S::Deferred, Some((2_160_000, 2_640_000)), None, 4),
            // The last retry happens at the deadline, not never.
            (outcome(reply(451, "4.7.1 try later")), r(30, 0), 3 * DAY - 1_000, E::TransientFailure, S::Deferred, Some((1_000, 1_000)), None, 31),
            // Past max_age: expired, categorised by the last answer or as no answer.
            (outcome(reply(452, "4.2.2 mailbox full")), r(30, 0), 3 * DAY, E::Expiration, S::Expired, None, Some(C::Quota), 31),
            (lost(), r(30, 0), 3 * DAY, E::Expiration, S::Expired, None, Some(C::NoAnswer), 31),
            (closing(), r(30, 0), 3 * DAY, E::Expiration, S::Expired, None, Some(C::Policy), 31),
            // The attempt counter saturates instead of wrapping.
            (outcome(reply(451, "4.7.1 try later")), r(255, 0), MIN, E::TransientFailure, S::Deferred, Some((6_480_000, 7_920_000)), None, 255),
        ];
        for (i, (o, rcpt, now, event, state, due, category, attempts)) in cases.iter().enumerate() {
            let d = decide(o, *rcpt, *now, &retry);
            assert_eq!(
                (d.event, d.state, d.category, d.attempts),
                (*event, *state, *category, *attempts),
                "case {i}: {o:?}"
            );
            match due {
                None => assert_eq!(d.due_unix_ms, 0, "case {i}"),
                Some((lo, hi)) => {
                    let after = d.due_unix_ms - now;
                    assert!(
                        (*lo..=*hi).contains(&after),
                        "case {i}: due {after} ms after now"
                    );
                }
            }
            assert_eq!(decide(o, *rcpt, *now, &retry), d, "case {i}: replays");
        }
    }
}
