//! The owner's tables: credit and windows, budgets and their lines, caps, pacing, idle
//! scopes.

use super::*;

/// A prepared message for the tests: its recipient count.
#[derive(Debug, PartialEq)]
struct Msg(u32);

impl Recipients for Msg {
    fn recipients(&self) -> u32 {
        self.0
    }
}

fn scope(key: &str) -> Scope {
    Scope {
        key: key.into(),
        hosts: Arc::from(vec![NextHop {
            name: format!("mx.{key}"),
            port: 25,
            from_route: false,
        }]),
    }
}

fn limits(connections: u32, rate: Option<f64>) -> ScopeLimits {
    ScopeLimits {
        connection_limit: connections,
        max_per_connection: 100,
        tls: TlsPolicy::Opportunistic,
        max_rate: rate,
        controller: Default::default(),
        provider_rate: None,
    }
}

fn grants(owner: &mut Owner<Msg>) -> Vec<(usize, u32)> {
    let mut out = Vec::new();
    owner.grant("s", &mut out);
    out
}

fn total(g: &[(usize, u32)], home: usize) -> u32 {
    g.iter().filter(|c| c.0 == home).map(|c| c.1).sum()
}

/// Credit granted to `key` by `owner`, in total.
fn granted(owner: &mut Owner<Msg>, key: &str) -> u32 {
    let mut out = Vec::new();
    owner.grant(key, &mut out);
    out.iter().map(|c| c.1).sum()
}

#[test]
fn the_connection_budget_holds_across_scopes_and_its_line_is_served_in_order() {
    let t0 = Instant::now();
    // Two connections for the whole shard; three scopes of two connections each.
    let mut owner = Owner::<Msg>::new(1, 2);
    for key in ["a", "b", "c"] {
        let warm = owner.demand(scope(key), limits(2, None), 0, 4, t0, false);
        // Preconnecting counts against the budget too: only two scopes get one.
        assert_eq!(warm.is_some(), key != "c", "{key}");
    }
    assert_eq!(owner.workers(), (2, 2));
    let msgs = || (0..2).map(|_| Msg(1)).collect::<Vec<_>>();
    // Each scope's messages arrive: nobody can get a second worker, c none at all.
    assert_eq!(owner.prepared("a", 0, 2, msgs(), t0), Ok(0));
    assert_eq!(owner.prepared("b", 0, 2, msgs(), t0), Ok(0));
    assert_eq!(owner.prepared("c", 0, 2, msgs(), t0), Ok(0));
    assert!(owner.spawn_starved().is_empty(), "no worker is free");
    // a's worker sends both of its messages, then, with others in line, leaves at once
    // instead of idling; its slot goes to the first scope in line.
    for _ in 0..2 {
        assert!(matches!(
            owner.take("a", t0, false, false),
            Take::Send { .. }
        ));
    }
    assert_eq!(owner.take("a", t0, false, false), Take::Exit);
    assert_eq!(owner.spawn_starved(), ["b"]);
    assert_eq!(owner.workers(), (2, 2));
    assert!(owner.spawn_starved().is_empty());
    // b's two workers finish; the line then serves c, twice.
    for _ in 0..2 {
        assert!(matches!(
            owner.take("b", t0, false, false),
            Take::Send { .. }
        ));
    }
    assert_eq!(owner.take("b", t0, false, false), Take::Exit);
    assert_eq!(owner.take("b", t0, false, false), Take::Exit);
    assert_eq!(owner.spawn_starved(), ["c", "c"]);
    assert_eq!(owner.workers(), (2, 2));
}

#[test]
fn the_shared_window_holds_across_scopes_and_waiting_scopes_get_the_room_that_opens() {
    let t0 = Instant::now();
    // One connection for the shard: a shared window of WINDOW_PER_CONNECTION messages.
    let mut owner = Owner::<Msg>::new(1, 1);
    owner.demand(scope("a"), limits(2, None), 0, 100, t0, false);
    owner.demand(scope("b"), limits(2, None), 0, 100, t0, false);
    assert_eq!(granted(&mut owner, "a"), WINDOW_PER_CONNECTION);
    assert_eq!(granted(&mut owner, "b"), 0, "the shared window is full");
    assert_eq!(
        owner.window(),
        (WINDOW_PER_CONNECTION, WINDOW_PER_CONNECTION)
    );
    let msgs = (0..WINDOW_PER_CONNECTION).map(|_| Msg(1)).collect();
    owner
        .prepared("a", 0, WINDOW_PER_CONNECTION, msgs, t0)
        .unwrap();
    // Both wait in line for room, a first (it asked first, and wants more than it got).
    // Messages leave the window one at a time: the room goes round the line.
    let mut waiting = Vec::new();
    for _ in 0..3 {
        assert!(matches!(
            owner.take("a", t0, false, false),
            Take::Send { .. }
        ));
        owner.grant_waiting(&mut waiting);
    }
    let order: Vec<&str> = waiting.iter().map(|(k, _, _)| k.as_str()).collect();
    assert_eq!(order, ["a", "b", "a"]);
    assert!(waiting.iter().all(|&(_, home, n)| home == 0 && n == 1));
    assert_eq!(
        owner.window(),
        (WINDOW_PER_CONNECTION, WINDOW_PER_CONNECTION)
    );
    // Credit handed back (nothing was due any more) frees its room.
    owner.prepared("b", 0, 1, Vec::new(), t0).unwrap();
    assert_eq!(owner.window().0, WINDOW_PER_CONNECTION - 1);
    let mut waiting = Vec::new();
    owner.grant_waiting(&mut waiting);
    assert_eq!(waiting, [("b".to_string(), 0, 1)]);
}

#[test]
fn credit_fills_the_window_and_no_more_until_messages_leave() {
    let t0 = Instant::now();
    let mut owner = Owner::<Msg>::new(1, 1_000);
    owner.demand(scope("s"), limits(2, None), 0, 100, t0, false);
    let g = grants(&mut owner);
    // Window: 2 connections x 4; in batches of at most CREDIT_BATCH_MAX.
    assert_eq!(total(&g, 0), 2 * WINDOW_PER_CONNECTION);
    assert!(g.iter().all(|c| c.1 <= CREDIT_BATCH_MAX));
    assert!(grants(&mut owner).is_empty(), "the window is full");
    // The messages arrive: still full (they wait here) until workers take them.
    let spawn = owner
        .prepared("s", 0, 8, (0..8).map(|_| Msg(1)).collect(), t0)
        .unwrap();
    assert_eq!(
        spawn, 1,
        "one worker per allowed connection, the preconnected one too"
    );
    assert!(grants(&mut owner).is_empty());
    for _ in 0..3 {
        assert!(matches!(
            owner.take("s", t0, false, false),
            Take::Send { .. }
        ));
    }
    assert_eq!(total(&grants(&mut owner), 0), 3, "room for what was taken");
}

#[test]
fn a_lowered_connection_limit_sends_excess_workers_home() {
    let t0 = Instant::now();
    let mut owner = Owner::<Msg>::new(1, 1_000);
    owner.demand(scope("s"), limits(4, None), 0, 100, t0, false);
    grants(&mut owner);
    let msgs = (0..16).map(|_| Msg(1)).collect();
    assert_eq!(
        owner.prepared("s", 0, 16, msgs, t0),
        Ok(3),
        "four workers in all"
    );
    // A reload lowers the limit to 2: two of the four leave at their next take, with
    // messages still waiting; the other two go on sending them.
    owner.demand(scope("s"), limits(2, None), 0, 84, t0, false);
    let takes: Vec<bool> = (0..4)
        .map(|_| matches!(owner.take("s", t0, false, false), Take::Send { .. }))
        .collect();
    assert_eq!(takes, [false, false, true, true]);
    assert!(matches!(
        owner.take("s", t0, false, false),
        Take::Send { .. }
    ));
    // Raised again to 6: the cap follows, and new messages start workers up to it.
    owner.demand(scope("s"), limits(6, None), 0, 84, t0, false);
    let msgs = (0..8).map(|_| Msg(1)).collect();
    assert_eq!(
        owner.prepared("s", 0, 0, msgs, t0),
        Ok(4),
        "2 working + 4 = 6"
    );
}

#[test]
fn a_reload_paces_a_scope_at_its_new_rate_without_waiting_for_demand() {
    let t0 = Instant::now();
    let mut owner = Owner::<Msg>::new(1, 1_000);
    owner.demand(scope("s"), limits(1, Some(100.0)), 0, 4, t0, false);
    grants(&mut owner);
    let msgs = (0..4).map(|_| Msg(1)).collect();
    owner.prepared("s", 0, 4, msgs, t0).unwrap();
    let wait = |owner: &mut Owner<Msg>| match owner.take("s", t0, false, false) {
        Take::Send { wait, .. } => wait,
        other => panic!("{other:?}"),
    };
    assert_eq!(wait(&mut owner), Duration::ZERO);
    assert_eq!(wait(&mut owner), Duration::from_millis(10));
    // Every message is here and no demand is left to carry the new limits: the reload
    // itself applies them.
    owner.reconfigure(|_| limits(1, Some(2.0)), t0);
    assert_eq!(wait(&mut owner), Duration::from_millis(20));
    assert_eq!(wait(&mut owner), Duration::from_millis(520));
    // Raised again: the slot reserved at 2/s comes forward to the new pace.
    owner.reconfigure(|_| limits(1, Some(1000.0)), t0);
    let msgs = (0..1).map(|_| Msg(1)).collect();
    owner.prepared("s", 0, 0, msgs, t0).unwrap();
    assert_eq!(wait(&mut owner), Duration::from_millis(1));
}

#[test]
fn the_status_says_what_each_scope_holds_busiest_first() {
    let t0 = Instant::now();
    let mut owner = Owner::<Msg>::new(2, 1_000);
    owner.demand(scope("quiet"), limits(1, None), 0, 1, t0, false);
    owner.demand(scope("busy"), limits(2, Some(50.0)), 1, 100, t0, false);
    let mut out = Vec::new();
    owner.grant("busy", &mut out);
    owner
        .prepared("busy", 1, 3, (0..3).map(|_| Msg(1)).collect(), t0)
        .unwrap();
    owner.demand(scope("idle"), limits(1, None), 0, 0, t0, false);
    let (status, busy_count) = owner.status(10);
    let keys: Vec<&str> = status.iter().map(|s| s.key.as_str()).collect();
    assert_eq!(keys, ["busy", "quiet"], "idle scopes are not listed");
    assert_eq!(busy_count, 2);
    let (top, busy_count) = owner.status(1);
    assert_eq!(top.len(), 1);
    assert_eq!((top[0].key.as_str(), busy_count), ("busy", 2));
    let busy = &status[0];
    assert_eq!(
        (
            busy.connection_cap,
            busy.ready,
            busy.credit_out,
            busy.demand
        ),
        (2, 3, 5, 92),
        "8 granted of 100, 3 of them arrived"
    );
    assert_eq!((busy.rate, busy.adaptive_limit), (Some(50.0), None));
    assert_eq!(
        busy.workers, 2,
        "the preconnected one and one for the messages"
    );
}

#[test]
fn scopes_that_may_have_gone_idle_are_named_once_and_busy_ones_are_not() {
    let t0 = Instant::now();
    let mut owner = Owner::<Msg>::new(1, 1_000);
    // Demand wakes each scope with a worker that connects before messages arrive.
    owner.demand(scope("a"), limits(1, None), 0, 1, t0, false);
    owner.demand(scope("b"), limits(1, None), 0, 1, t0, false);
    assert!(
        owner.take_touched().is_empty(),
        "demand going up idles nothing"
    );
    // a's demand goes away and its worker leaves: a is named once, b (still wanting) not.
    owner.demand(scope("a"), limits(1, None), 0, 0, t0, false);
    assert_eq!(owner.take("a", t0, false, true), Take::Exit);
    assert_eq!(owner.take_touched(), ["a"]);
    assert!(!owner.is_busy("a"));
    assert!(
        owner.take_touched().is_empty(),
        "taken: named again only if touched again"
    );
    // Credit handed back unused touches its scope too.
    let mut out = Vec::new();
    owner.grant("b", &mut out);
    assert_eq!(out, [(0, 1)]);
    owner.prepared("b", 0, 1, Vec::new(), t0).unwrap();
    assert_eq!(owner.take_touched(), ["b"]);
}

#[test]
fn a_grant_touches_only_its_scope() {
    let t0 = Instant::now();
    let mut owner = Owner::<Msg>::new(1, 1_000);
    owner.demand(scope("s"), limits(1, None), 0, 10, t0, false);
    owner.demand(scope("t"), limits(1, None), 0, 10, t0, false);
    assert_eq!(grants(&mut owner), [(0, 4)]);
    let mut out = Vec::new();
    owner.grant("t", &mut out);
    assert_eq!(out, [(0, 4)], "t's window was untouched by s's grant");
    out.clear();
    owner.grant("unknown", &mut out);
    assert!(out.is_empty());
}

#[test]
fn homes_share_a_window_round_robin() {
    let t0 = Instant::now();
    let mut owner = Owner::<Msg>::new(3, 1_000);
    let l = limits(10, None);
    for home in 0..3 {
        owner.demand(scope("s"), l, home, 1_000, t0, false);
    }
    let g = grants(&mut owner);
    let shares: Vec<u32> = (0..3).map(|h| total(&g, h)).collect();
    assert_eq!(shares.iter().sum::<u32>(), 40);
    assert!(
        shares.iter().max().unwrap() - shares.iter().min().unwrap() <= CREDIT_BATCH_MAX,
        "{shares:?}"
    );
    // A home that wants little gets what it wants; the others share the rest.
    let mut owner = Owner::<Msg>::new(2, 1_000);
    owner.demand(scope("s"), l, 0, 3, t0, false);
    owner.demand(scope("s"), l, 1, 1_000, t0, false);
    let g = grants(&mut owner);
    assert_eq!((total(&g, 0), total(&g, 1)), (3, 37));
}

#[test]
fn credit_handed_back_frees_the_window() {
    let t0 = Instant::now();
    let mut owner = Owner::<Msg>::new(1, 1_000);
    owner.demand(scope("s"), limits(1, None), 0, 10, t0, false);
    assert_eq!(total(&grants(&mut owner), 0), 4);
    // The home had nothing left to send for it: no messages, the credit comes back.
    assert_eq!(owner.prepared("s", 0, 4, Vec::new(), t0), Ok(0));
    assert_eq!(total(&grants(&mut owner), 0), 4, "the remaining demand");
    assert_eq!(
        owner.prepared("gone", 0, 1, vec![Msg(1)], t0),
        Err(vec![Msg(1)]),
        "messages for an unknown scope are handed back"
    );
}

#[test]
fn first_demand_opens_a_connection_once() {
    let t0 = Instant::now();
    let mut owner = Owner::<Msg>::new(2, 1_000);
    let l = limits(4, None);
    assert_eq!(
        owner.demand(scope("s"), l, 0, 0, t0, false),
        None,
        "no demand"
    );
    let hosts = owner.demand(scope("s"), l, 0, 5, t0, false);
    assert_eq!(hosts.as_deref(), Some(&*scope("s").hosts));
    assert_eq!(
        owner.demand(scope("s"), l, 1, 5, t0, false),
        None,
        "a worker is on it"
    );
    let mut other = Owner::<Msg>::new(1, 1_000);
    assert_eq!(
        other.demand(scope("s"), l, 0, 5, t0, true),
        None,
        "not while draining"
    );
    // The preconnected worker counts: with one message, no second worker starts.
    grants(&mut owner);
    assert_eq!(owner.prepared("s", 0, 1, vec![Msg(1)], t0), Ok(0));
}

#[test]
fn a_refusal_holds_connections_at_the_open_count_then_raises_one_at_a_time() {
    let t0 = Instant::now();
    let mut owner = Owner::<Msg>::new(1, 1_000);
    owner.demand(scope("s"), limits(5, None), 0, 100, t0, false);
    grants(&mut owner);
    let msgs = (0..20).map(|_| Msg(1)).collect();
    // The preconnected worker plus four more.
    assert_eq!(owner.prepared("s", 0, 20, msgs, t0), Ok(4));
    let at = t0 + Duration::from_secs(1);
    assert_eq!(
        owner.connection_refused("s", at),
        Refusal::Leave {
            lowered_to: Some(4)
        }
    );
    assert_eq!(
        owner.connection_refused("s", at),
        Refusal::Leave {
            lowered_to: Some(3)
        }
    );
    for _ in 0..2 {
        assert!(matches!(
            owner.connection_refused("s", at),
            Refusal::Leave { .. }
        ));
    }
    assert_eq!(
        owner.connection_refused("s", at),
        Refusal::Stay,
        "the last one stays"
    );
    // More messages: no new worker while the cap holds...
    assert_eq!(owner.prepared("s", 0, 0, vec![Msg(1)], at), Ok(0));
    // ...then one more connection per CONN_CAP_RAISE.
    let later = at + CONN_CAP_RAISE;
    assert_eq!(owner.prepared("s", 0, 0, vec![Msg(1)], later), Ok(1));
    assert_eq!(owner.prepared("s", 0, 0, vec![Msg(1)], later), Ok(0));
    // A reload that lowers the limit lowers the cap at once.
    owner.demand(scope("s"), limits(1, None), 0, 100, later, false);
    assert_eq!(
        owner.prepared("s", 0, 0, vec![Msg(1)], later + CONN_CAP_RAISE),
        Ok(0)
    );
}

#[test]
fn pacing_spaces_sends_by_recipients_at_the_configured_rate() {
    let t0 = Instant::now();
    let mut owner = Owner::<Msg>::new(1, 1_000);
    owner.demand(scope("s"), limits(2, Some(10.0)), 0, 10, t0, false);
    grants(&mut owner);
    owner
        .prepared("s", 0, 3, vec![Msg(1), Msg(3), Msg(1)], t0)
        .unwrap();
    let waits: Vec<Duration> = (0..3)
        .map(|_| match owner.take("s", t0, false, false) {
            Take::Send { wait, .. } => wait,
            other => panic!("{other:?}"),
        })
        .collect();
    let ms = |n| Duration::from_millis(n);
    assert_eq!(
        waits,
        [ms(0), ms(100), ms(400)],
        "a 3-recipient message uses 3 slots"
    );
    // Time passing is credited: a send after a pause does not wait.
    owner.prepared("s", 0, 0, vec![Msg(1)], t0).unwrap();
    match owner.take("s", t0 + Duration::from_secs(1), false, false) {
        Take::Send { wait, .. } => assert_eq!(wait, Duration::ZERO),
        other => panic!("{other:?}"),
    }
}

#[test]
fn workers_wait_when_empty_and_leave_when_idle_or_stopping() {
    let t0 = Instant::now();
    let mut owner = Owner::<Msg>::new(1, 1_000);
    owner.demand(scope("s"), limits(1, None), 0, 1, t0, false);
    assert_eq!(owner.take("s", t0, false, false), Take::Wait);
    owner.prepared("s", 0, 0, vec![Msg(1)], t0).unwrap();
    assert_eq!(
        owner.take("s", t0, true, false),
        Take::Exit,
        "stopping: nothing taken"
    );
    // The message is still there for the next worker, which the next arrival starts.
    assert_eq!(owner.prepared("s", 0, 0, vec![Msg(1)], t0), Ok(1));
    assert!(matches!(
        owner.take("s", t0, false, true),
        Take::Send { .. }
    ));
    assert!(matches!(
        owner.take("s", t0, false, true),
        Take::Send { .. }
    ));
    assert_eq!(
        owner.take("s", t0, false, true),
        Take::Exit,
        "idle and empty"
    );
    assert_eq!(owner.take("unknown", t0, false, false), Take::Exit);
}

#[test]
fn idle_scopes_are_forgotten_busy_ones_never() {
    let t0 = Instant::now();
    let mut owner = Owner::<Msg>::new(2, 1_000);
    for i in 0..(IDLE_SCOPES_MAX + 50) {
        owner.demand(
            scope(&format!("site:mx{i}.example")),
            limits(1, None),
            0,
            0,
            t0,
            false,
        );
    }
    owner.demand(scope("busy"), limits(1, None), 1, 3, t0, true);
    owner.forget_idle_scopes(t0);
    assert_eq!(
        owner.scopes(),
        IDLE_SCOPES_MAX + 1,
        "the longest idle over the bound"
    );
    owner.forget_idle_scopes(t0 + SCOPE_IDLE_FORGET);
    assert_eq!(
        owner.scopes.keys().collect::<Vec<_>>(),
        ["busy"],
        "a scope with demand stays"
    );
}

#[test]
fn tls_broken_hosts_lapse_and_stay_bounded() {
    let t0 = Instant::now();
    let mut owner = Owner::<Msg>::new(1, 1_000);
    owner.mark_tls_broken("mx.a", t0);
    assert!(owner.is_tls_broken("mx.a", t0));
    assert!(!owner.is_tls_broken("mx.a", t0 + TLS_BROKEN_FOR));
    for i in 0..TLS_BROKEN_HOSTS_MAX + 10 {
        owner.mark_tls_broken(&format!("mx{i}"), t0 + Duration::from_millis(i as u64));
    }
    assert_eq!(owner.tls_broken.len(), TLS_BROKEN_HOSTS_MAX);
    assert!(owner.is_tls_broken(&format!("mx{}", TLS_BROKEN_HOSTS_MAX + 9), t0));
}

#[test]
fn parked_connections_count_against_the_budget_and_make_room_for_scopes_in_line() {
    let t0 = Instant::now();
    let mut owner = Owner::<Msg>::new(1, 2);
    assert!(owner
        .demand(scope("a"), limits(1, None), 0, 1, t0, false)
        .is_some());
    assert!(owner
        .demand(scope("b"), limits(1, None), 0, 1, t0, false)
        .is_some());
    // a's worker leaves and parks its connection: the budget still counts it.
    assert_eq!(owner.take("a", t0, false, true), Take::Exit);
    owner.park("a");
    assert_eq!((owner.connections(), owner.parked()), (2, 1));
    assert_eq!(
        owner.holding("a"),
        1,
        "a still counts the connection it parked"
    );
    // Nobody waits: nothing to evict.
    assert_eq!(owner.parked_to_evict(), 0);
    // c has messages and no worker can start: the parked connection is the room.
    owner.demand(scope("c"), limits(1, None), 0, 1, t0, false);
    assert_eq!(owner.prepared("c", 0, 1, vec![Msg(1)], t0), Ok(0));
    assert_eq!(owner.parked_to_evict(), 1);
    owner.parked_closing(Some("a"));
    assert_eq!(owner.parked_to_evict(), 0, "one closing already covers c");
    assert_eq!(owner.connections(), 2);
    assert_eq!(owner.holding("a"), 1, "until it is closed");
    owner.parked_closed(Some("a"));
    assert_eq!(owner.holding("a"), 0);
    assert_eq!(owner.spawn_starved(), ["c"]);
    assert_eq!((owner.connections(), owner.parked()), (2, 0));
    // A worker that takes a parked connection frees the parked slot it held.
    assert_eq!(
        owner.take("c", t0, false, false),
        Take::Send {
            msg: Msg(1),
            wait: Duration::ZERO,
            max_per_connection: 100,
            tls: TlsPolicy::Opportunistic,
        }
    );
    assert_eq!(owner.take("c", t0, true, false), Take::Exit);
    owner.park("c");
    assert_eq!(owner.connections(), 2);
    owner.unpark(Some("c"));
    assert_eq!((owner.connections(), owner.parked()), (1, 0));
    assert_eq!(
        owner.holding("c"),
        0,
        "taken by another worker: no longer c's"
    );
}

/// The stall a long-tail run found: a message for a scope whose own parked connections fill
/// its cap gets no worker (none may open), and nothing started one when a parked connection
/// went; the message waited, with no demand left to announce, until a restart.
#[test]
fn a_message_that_waited_for_its_scopes_parked_connection_gets_a_worker_when_it_goes() {
    let t0 = Instant::now();
    for closed in [false, true] {
        let mut owner = Owner::<Msg>::new(1, 10);
        owner.demand(scope("a"), limits(1, None), 0, 1, t0, false);
        assert_eq!(granted(&mut owner, "a"), 1);
        // a's worker leaves idle and parks its connection before the message arrives.
        assert_eq!(owner.take("a", t0, false, true), Take::Exit);
        owner.park("a");
        assert_eq!(owner.prepared("a", 0, 1, vec![Msg(1)], t0), Ok(0));
        assert_eq!(owner.spawn_starved(), Vec::<String>::new());
        // The parked connection goes: taken by another scope's worker, or closed.
        let spawn = if closed {
            owner.parked_closing(Some("a"));
            owner.parked_closed(Some("a"))
        } else {
            owner.unpark(Some("a"))
        };
        assert!(spawn, "a worker for the waiting message (closed: {closed})");
        assert!(matches!(
            owner.take("a", t0, false, false),
            Take::Send { .. }
        ));
    }
}
