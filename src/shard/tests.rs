//! The core on its own, one shard talking to itself: what each call does and asks its shell
//! to do. The seeded simulation (`tests/simulation.rs`) drives many of them together.

use super::*;
use crate::clock::ManualClock;
use crate::delivery::owner::Take;
use crate::delivery_log::EventType;
use crate::dns::resolver::Destination;
use crate::queue::record::RecipientPayload;
use crate::queue::store::MessageSpec;
use crate::smtp::reply::Reply;
use std::sync::atomic::Ordering;

#[derive(Default)]
struct VecLog {
    pending: Vec<(String, EventType)>,
    written: Vec<(String, EventType)>,
}

impl LogSink for VecLog {
    fn append(&mut self, r: &LogRecord<'_>) -> std::io::Result<()> {
        self.pending
            .push((r.recipient.to_string(), r.event.expect("event")));
        Ok(())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.written.append(&mut self.pending);
        Ok(())
    }
}

struct Fixture {
    _dir: tempfile::TempDir,
    clock: Arc<ManualClock>,
    counters: Arc<Counters>,
    core: Core<VecLog>,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(1_800_000_000_000));
    let mut config = Config::defaults_under(dir.path());
    config.delivery.paused = false;
    let shared_clock: Arc<dyn Clock> = clock.clone();
    let (queue, _) =
        ShardQueue::open_with_clock(&dir.path().join("q"), 0, 1 << 20, Arc::clone(&shared_clock))
            .unwrap();
    let counters = Arc::new(Counters::default());
    let core = Core::new(
        0,
        1,
        100,
        Arc::new(config),
        shared_clock,
        Arc::clone(&counters),
        queue,
        VecLog::default(),
    );
    Fixture {
        _dir: dir,
        clock,
        counters,
        core,
    }
}

fn chunk(rcpts: &[&str]) -> Chunk {
    let mut tails = Vec::new();
    let mut ends = Vec::new();
    for r in rcpts {
        RecipientPayload::encode_tail(r, &[r.as_bytes()], &mut tails);
        ends.push(tails.len() as u32);
    }
    Chunk {
        batch_id: 7,
        chunk_no: 0,
        message: Arc::new(MessageSpec {
            batch_id: 7,
            created_unix_ms: 1_800_000_000_000,
            flags: 0,
            sender: "news@sender.example".into(),
            campaign: "spring".into(),
            tenant: "t".into(),
            var_names: vec!["to".into()],
            body: b"From: news@sender.example\r\nTo: {{ to }}\r\nSubject: hi\r\n\r\nhi\r\n"
                .to_vec(),
            pool: String::new(),
        }),
        tails,
        ends,
        retry: Vec::new(),
    }
}

/// Appends `rcpts` and commits them: they are ready at the home.
fn queued(f: &mut Fixture, rcpts: &[&str]) {
    f.core.append(0, chunk(rcpts));
    let job = f.core.begin_commit().unwrap();
    job.unwrap().fdatasync().unwrap();
    f.core.end_commit(true);
    f.core.take_effects();
}

/// Delivers every message the core sent itself, until it sends none; returns the other
/// effects, in order.
fn settle(core: &mut Core<VecLog>) -> Vec<Effect> {
    let mut others = Vec::new();
    for _ in 0..100 {
        let effects = core.take_effects();
        if effects.is_empty() {
            return others;
        }
        for effect in effects {
            match effect {
                Effect::Send(0, msg) => core.on_message(msg),
                other => others.push(other),
            }
        }
    }
    panic!("the core keeps sending itself messages");
}

#[test]
fn a_chunk_is_logged_before_it_is_appended_and_scheduled_only_after_its_commit() {
    let mut f = fixture();
    f.core.append(0, chunk(&["a@d.example", "b@d.example"]));
    // Reception lines are written (flushed) before the records reach the segment.
    let receptions: Vec<_> = f.core.log.written.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(receptions, ["a@d.example", "b@d.example"]);
    assert!(f
        .core
        .log
        .written
        .iter()
        .all(|(_, e)| *e == EventType::Reception));
    assert!(matches!(f.core.take_effects()[..], [Effect::Commit]));
    // Not durable yet: the scheduler does not see the recipients.
    f.core.tick();
    assert!(f.core.take_effects().is_empty());
    let job = f.core.begin_commit().unwrap().expect("records to sync");
    job.fdatasync().unwrap();
    let acks = f.core.end_commit(true);
    assert_eq!(
        acks,
        [Committed {
            claimer: 0,
            batch_id: 7,
            chunk_no: 0,
            recipients: 2
        }]
    );
    assert_eq!(f.counters.queued.load(Ordering::Relaxed), 2);
    assert!(matches!(f.core.take_effects()[..], [Effect::Schedule]));
    f.core.tick();
    let effects = f.core.take_effects();
    assert!(
        matches!(&effects[..], [Effect::Resolve(d)] if d == "d.example"),
        "{effects:?}"
    );
}

#[test]
fn a_recipient_goes_from_the_queue_to_a_worker_and_its_outcome_back_to_the_log() {
    let mut f = fixture();
    queued(&mut f, &["a@d.example"]);
    f.core.tick();
    f.core.take_effects();
    let route = route_by_dns(
        f.core.config(),
        0,
        "d.example",
        &Destination::Hosts(vec!["mx.d.example".into()]),
    );
    f.core.resolved("d.example", route);
    f.core.tick();
    // Demand, then credit, then the rendered message reach the owner (this shard).
    let effects = settle(&mut f.core);
    let spawned = effects
        .iter()
        .filter(|e| matches!(e, Effect::SpawnWorker { .. }))
        .count();
    assert_eq!(spawned, 1, "{effects:?}");
    let Take::Send { msg, .. } = f
        .core
        .take("site:mx.d.example", false, false, Held::Nothing)
    else {
        panic!("a message for the worker");
    };
    assert_eq!(msg.rcpts, [(msg.rcpts[0].0, "a@d.example".to_string())]);
    let text = String::from_utf8_lossy(msg.data.bytes());
    assert!(text.contains("To: a@d.example\r\n"), "{text}");
    assert!(text.contains("Message-ID: "), "{text}");
    // Delivered: the outcome goes home, and is final once its log line is written.
    let accepted = RcptResult::Reply(Reply::new(250, "2.0.0 Ok: queued"));
    let now = f.clock.now();
    f.core.sent(
        "site:mx.d.example",
        &msg,
        vec![accepted],
        now,
        ("mx.d.example", "192.0.2.1", ""),
    );
    settle(&mut f.core);
    assert_eq!(
        f.core.log.pending,
        [("a@d.example".to_string(), EventType::Delivery)]
    );
    assert_eq!(f.core.queue.index.live(), 0);
    assert_eq!(f.counters.delivered.load(Ordering::Relaxed), 1);
    f.core.begin_commit().unwrap();
    assert!(f.core.log.pending.is_empty());
}

#[test]
fn a_deferred_recipient_waits_for_its_retry_time() {
    let mut f = fixture();
    queued(&mut f, &["a@d.example"]);
    f.core.tick();
    f.core.take_effects();
    let d = Destination::TemporaryFailure("SERVFAIL".into());
    // The lookup is tried again quietly first (`schedule::QUIET_RETRIES`): no outcome, no
    // log line until it has failed that many times more.
    for retry in 0..=crate::schedule::QUIET_RETRIES {
        let route = route_by_dns(f.core.config(), 0, "d.example", &d);
        f.core.resolved("d.example", route);
        f.core.tick();
        settle(&mut f.core);
        if retry < crate::schedule::QUIET_RETRIES {
            assert!(f.core.log.pending.is_empty(), "retry {retry}");
            f.clock.advance(std::time::Duration::from_secs(60));
            f.core.tick();
            let effects = f.core.take_effects();
            assert!(
                effects
                    .iter()
                    .any(|e| matches!(e, Effect::Resolve(d) if d == "d.example")),
                "{effects:?}"
            );
        }
    }
    assert_eq!(
        f.core.log.pending.last(),
        Some(&("a@d.example".to_string(), EventType::TransientFailure))
    );
    assert_eq!(f.core.queue.index.live(), 1);
    let due = f.core.home.next_due_unix_ms().expect("a retry time");
    let first = f.core.config().delivery.retry_first.as_millis() as u64;
    let now = f.clock.unix_ms();
    assert!(
        due >= now + first * 9 / 10 && due <= now + first * 11 / 10,
        "{due} vs {now} + {first}"
    );
}

#[test]
fn a_draining_home_hands_credit_back_unused() {
    let mut f = fixture();
    queued(&mut f, &["a@d.example"]);
    f.core.close();
    f.core.on_message(Msg::Credit {
        scope: "site:mx.d.example".into(),
        n: 5,
        owner: 0,
    });
    let effects = f.core.take_effects();
    assert!(
        matches!(&effects[..], [Effect::Send(0, Msg::Prepared { granted: 5, msgs, .. })] if msgs.is_empty()),
        "{effects:?}"
    );
    assert_eq!(f.core.queue.index.live(), 1);
}
