use super::*;
use std::collections::VecDeque;

fn now() -> Instant {
    Instant::now()
}

fn lim(connections: u32) -> Limit {
    Limit {
        connections,
        paced: false,
        group: None,
    }
}

fn rel(to: u32) -> Report {
    Report::Released { to, pace: None }
}

/// Applies `grants` to the shards' sides; returns the reports they answer with at once.
fn deliver(shares: &mut [Shares], grants: Vec<Grant>, holding: &[u32]) -> Vec<(usize, Report)> {
    let mut reports = Vec::new();
    for g in grants {
        let (_, report) =
            shares[g.shard].on_grant(&g.scope, g.connections, g.returned, holding[g.shard]);
        if let Some(r) = report {
            reports.push((g.shard, r));
        }
    }
    reports
}

#[test]
fn one_shard_wanting_gets_the_whole_limit_and_a_second_gets_half_once_released() {
    let t = now();
    let mut ledger = Ledger::new(2);
    let mut out = Vec::new();
    ledger.report("gmail", 0, Report::Wants(true), lim(20), t, &mut out);
    assert_eq!(out, [grant(0, "gmail", 20, false)]);
    out.clear();
    // Shard 1 wants it too: shard 0 is lowered to 10, and shard 1 gets nothing while shard
    // 0 may still hold 20.
    ledger.report("gmail", 1, Report::Wants(true), lim(20), t, &mut out);
    assert_eq!(out, [grant(0, "gmail", 10, false)]);
    assert_eq!(ledger.held("gmail", 0), 20);
    out.clear();
    // Down to 12 open: still nothing for shard 1 beyond what is free.
    ledger.report("gmail", 0, rel(12), lim(20), t, &mut out);
    assert_eq!(out, [grant(1, "gmail", 8, false)]);
    out.clear();
    ledger.report("gmail", 0, rel(10), lim(20), t, &mut out);
    assert_eq!(out, [grant(1, "gmail", 10, false)]);
    assert_eq!(ledger.held("gmail", 0) + ledger.held("gmail", 1), 20);
}

#[test]
fn a_shard_that_stops_wanting_keeps_its_share_until_another_needs_it() {
    let t = now();
    let mut ledger = Ledger::new(2);
    let mut out = Vec::new();
    ledger.report("s", 0, Report::Wants(true), lim(4), t, &mut out);
    ledger.report("s", 0, Report::Wants(false), lim(4), t, &mut out);
    assert_eq!(out, [grant(0, "s", 4, false)]);
    out.clear();
    ledger.report("s", 1, Report::Wants(true), lim(4), t, &mut out);
    assert_eq!(out, [grant(0, "s", 0, false)]);
    out.clear();
    ledger.report("s", 0, rel(0), lim(4), t, &mut out);
    assert_eq!(out, [grant(1, "s", 4, false)]);
}

#[test]
fn fewer_connections_than_shards_take_turns() {
    let t = now();
    let mut ledger = Ledger::new(2);
    let mut out = Vec::new();
    ledger.report("one", 1, Report::Wants(true), lim(1), t, &mut out);
    ledger.report("one", 0, Report::Wants(true), lim(1), t, &mut out);
    assert_eq!(out, [grant(1, "one", 1, false)]);
    out.clear();
    ledger.tick(|_| lim(1), t + ROTATE_AFTER / 2, &mut out);
    assert!(out.is_empty(), "not its turn yet: {out:?}");
    ledger.tick(|_| lim(1), t + ROTATE_AFTER, &mut out);
    ledger.tick(|_| lim(1), t + ROTATE_AFTER, &mut out);
    // Shard 1 gives it up; shard 0 gets it once released.
    assert_eq!(out, [grant(1, "one", 0, false)]);
    out.clear();
    ledger.report("one", 1, rel(0), lim(1), t, &mut out);
    assert_eq!(out, [grant(0, "one", 1, false)]);
}

#[test]
fn a_lowered_limit_lowers_the_grants() {
    let t = now();
    let mut ledger = Ledger::new(2);
    let mut out = Vec::new();
    ledger.report("p", 0, Report::Wants(true), lim(10), t, &mut out);
    ledger.report("p", 1, Report::Wants(true), lim(10), t, &mut out);
    ledger.report("p", 0, rel(5), lim(10), t, &mut out);
    out.clear();
    ledger.tick(|_| lim(4), t, &mut out);
    assert_eq!(out, [grant(0, "p", 2, false), grant(1, "p", 2, false)]);
}

#[test]
fn a_return_is_confirmed_and_a_grant_overtaken_by_it_is_never_used() {
    let t = now();
    let mut ledger = Ledger::new(2);
    let mut shares = [Shares::default(), Shares::default()];
    let mut out = Vec::new();
    let r = shares[0].load("x", true).unwrap();
    ledger.report("x", 0, r, lim(2), t, &mut out);
    let stale = std::mem::take(&mut out);
    // The shard forgets the scope before the grant arrives.
    assert!(matches!(shares[0].forget("x"), Some(Report::Return)));
    assert_eq!(shares[0].on_grant("x", 2, false, 0).0, Granted::Ignored);
    assert_eq!(shares[0].granted("x"), 0);
    assert_eq!(stale.len(), 1);
    // Wanted again while returning: nothing is said until the confirmation.
    assert!(shares[0].load("x", true).is_none());
    ledger.report("x", 0, Report::Return, lim(2), t, &mut out);
    assert_eq!(out, [grant(0, "x", 0, true)]);
    assert!(ledger.is_empty(), "nothing held or wanted: the entry goes");
    assert_eq!(shares[0].on_grant("x", 0, true, 0).0, Granted::Returned);
    assert!(shares[0].is_empty());
    assert!(matches!(
        shares[0].load("x", true),
        Some(Report::Wants(true))
    ));
}

/// Shards and a coordinator exchanging messages in order with random delays, wants and
/// connection churn: the connections open across shards never exceed the limit, and every
/// shard that wants the scope gets a connection.
#[test]
fn the_total_never_exceeds_the_limit_whatever_the_order_of_events() {
    for seed in 0..200u64 {
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let shards = 1 + next(4) as usize;
        let limit = 1 + next(6) as u32;
        let paced = seed % 3 == 0;
        let limit_of = Limit {
            connections: limit,
            paced,
            group: None,
        };
        let t = now();
        let mut ledger = Ledger::new(shards);
        let mut shares: Vec<Shares> = (0..shards).map(|_| Shares::default()).collect();
        let mut open = vec![0u32; shards];
        let mut to_coord: VecDeque<(usize, Report)> = VecDeque::new();
        let mut to_shard: Vec<VecDeque<Grant>> = vec![VecDeque::new(); shards];
        let mut clock = t;
        for _ in 0..400 {
            let s = next(shards as u64) as usize;
            match next(7) {
                0 => {
                    let busy = next(3) > 0;
                    if let Some(r) = shares[s].load("k", busy) {
                        to_coord.push_back((s, r));
                    }
                }
                1 if open[s] < shares[s].granted("k") => open[s] += 1,
                2 if open[s] > 0 => {
                    open[s] -= 1;
                    if let Some(r) = shares[s].holding("k", open[s]) {
                        to_coord.push_back((s, r));
                    }
                }
                3 => {
                    if let Some((from, r)) = to_coord.pop_front() {
                        let mut out = Vec::new();
                        ledger.report("k", from, r, limit_of, clock, &mut out);
                        for g in out {
                            to_shard[g.shard].push_back(g);
                        }
                    }
                }
                4 => {
                    if let Some(g) = to_shard[s].pop_front() {
                        let reports = deliver(&mut shares, vec![g], &open);
                        to_coord.extend(reports);
                    }
                }
                5 if open[s] == 0 && next(4) == 0 => {
                    if let Some(r) = shares[s].forget("k") {
                        to_coord.push_back((s, r));
                    }
                }
                _ => {
                    clock += ROTATE_AFTER;
                    let mut out = Vec::new();
                    ledger.tick(|_| limit_of, clock, &mut out);
                    for g in out {
                        to_shard[g.shard].push_back(g);
                    }
                }
            }
            // A worker beyond a lowered share leaves after its transaction.
            if open[s] > shares[s].granted("k") {
                open[s] -= 1;
                if let Some(r) = shares[s].holding("k", open[s]) {
                    to_coord.push_back((s, r));
                }
            }
            let total: u32 = open.iter().sum();
            assert!(total <= limit, "seed {seed}: {total} open, limit {limit}");
            let sending = open.iter().filter(|&&n| n > 0).count();
            assert!(
                !paced || sending <= 1,
                "seed {seed}: a paced scope sent from {sending} shards at once"
            );
        }
        // Quiesce: the workers beyond a lowered share finish, every shard wants the scope,
        // and messages flow until none are left.
        for s in 0..shards {
            while open[s] > shares[s].granted("k") {
                open[s] -= 1;
                if let Some(r) = shares[s].holding("k", open[s]) {
                    to_coord.push_back((s, r));
                }
            }
            if let Some(r) = shares[s].load("k", true) {
                to_coord.push_back((s, r));
            }
        }
        for _ in 0..10_000 {
            if let Some((from, r)) = to_coord.pop_front() {
                let mut out = Vec::new();
                ledger.report("k", from, r, limit_of, clock, &mut out);
                for g in out {
                    to_shard[g.shard].push_back(g);
                }
                continue;
            }
            let Some(s) = (0..shards).find(|&s| !to_shard[s].is_empty()) else {
                // A returned scope is asked for again once confirmed.
                let again: Vec<_> = (0..shards)
                    .filter_map(|s| shares[s].load("k", true).map(|r| (s, r)))
                    .collect();
                if again.is_empty() {
                    break;
                }
                to_coord.extend(again);
                continue;
            };
            let g = to_shard[s].pop_front().unwrap();
            to_coord.extend(deliver(&mut shares, vec![g], &open));
            while open[s] > shares[s].granted("k") {
                open[s] -= 1;
                if let Some(r) = shares[s].holding("k", open[s]) {
                    to_coord.push_back((s, r));
                }
            }
        }
        let granted: u32 = (0..shards).map(|s| shares[s].granted("k")).sum();
        assert!(granted <= limit, "seed {seed}");
        if paced {
            assert_eq!(
                granted, limit,
                "seed {seed}: one shard holds the paced scope"
            );
        } else if limit >= shards as u32 {
            for (s, share) in shares.iter().enumerate() {
                assert!(
                    share.granted("k") >= 1,
                    "seed {seed}: shard {s} of {shards} wants a scope of {limit} and has none"
                );
            }
            assert_eq!(granted, limit, "seed {seed}: the whole limit is in use");
        }
    }
}

#[test]
fn a_paced_scope_is_held_by_one_shard_and_its_pace_moves_with_the_turn() {
    let t = now();
    let paced = Limit {
        connections: 4,
        paced: true,
        group: None,
    };
    let mut ledger = Ledger::new(2);
    let mut out = Vec::new();
    ledger.report("yahoo", 0, Report::Wants(true), paced, t, &mut out);
    ledger.report("yahoo", 1, Report::Wants(true), paced, t, &mut out);
    assert_eq!(
        out,
        [grant(0, "yahoo", 4, false)],
        "all of it, to one shard"
    );
    out.clear();
    ledger.tick(|_| paced, t + ROTATE_AFTER, &mut out);
    assert!(out.is_empty(), "a paced turn lasts PACED_TURN");
    ledger.tick(|_| paced, t + PACED_TURN, &mut out);
    assert_eq!(out, [grant(0, "yahoo", 0, false)]);
    out.clear();
    let next_send = t + PACED_TURN + Duration::from_millis(200);
    let pace = Pace {
        throttle: Throttle::new(Some(5.0), t),
        next_send,
    };
    let released = Report::Released {
        to: 0,
        pace: Some(pace),
    };
    ledger.report("yahoo", 0, released, paced, t, &mut out);
    assert_eq!(out, [grant(1, "yahoo", 4, false)]);
    let handed = out[0].pace.as_ref().expect("the pace comes with the turn");
    assert_eq!(handed.next_send, next_send);
}

#[test]
fn coordinators_spread_and_agree() {
    let keys: Vec<String> = (0..1000).map(|i| format!("site:mx{i}.example")).collect();
    let on_zero = keys.iter().filter(|k| coordinator(k, 2) == 0).count();
    assert!((400..600).contains(&on_zero), "{on_zero}");
    assert_eq!(coordinator("yahoo", 4), coordinator("yahoo", 4));
    assert_eq!(coordinator("yahoo", 1), 0);
}

#[test]
fn a_group_splits_its_cap_between_the_scopes_wanted_and_raises_only_out_of_what_is_free() {
    let t = now();
    let mut ledger = Ledger::new(2);
    let mut out = Vec::new();
    let l = Limit {
        connections: 8,
        paced: false,
        group: Some(10),
    };
    // One source wanted: its own limit (8), within the group's 10.
    ledger.report("p@a", 0, Report::Wants(true), l, t, &mut out);
    assert_eq!(out, [grant(0, "p@a", 8, false)]);
    out.clear();
    // A second source wanted: 5 each; p@a is lowered and p@b gets only what p@a does not
    // hold yet.
    ledger.report("p@b", 1, Report::Wants(true), l, t, &mut out);
    assert!(out.contains(&grant(0, "p@a", 5, false)), "{out:?}");
    assert!(out.contains(&grant(1, "p@b", 2, false)), "{out:?}");
    out.clear();
    // p@a's shard is down to 5: p@b gets its part.
    ledger.report("p@a", 0, rel(5), l, t, &mut out);
    assert_eq!(out, [grant(1, "p@b", 5, false)]);
    out.clear();
    // p@b is not wanted any more: it keeps its connections until p@a needs them.
    ledger.report("p@b", 1, Report::Wants(false), l, t, &mut out);
    assert!(out.contains(&grant(1, "p@b", 0, false)), "{out:?}");
    out.clear();
    ledger.report("p@b", 1, rel(0), l, t, &mut out);
    assert_eq!(out, [grant(0, "p@a", 8, false)]);
    // Another provider's scopes are not in the group.
    out.clear();
    ledger.report("q@a", 1, Report::Wants(true), lim(3), t, &mut out);
    assert_eq!(out, [grant(1, "q@a", 3, false)]);
}

/// A group's scopes across shards, with random wants, churn and message order: the group's
/// connections never exceed its cap nor a scope's its own limit, and in the end every scope
/// wanted has its part.
#[test]
fn a_group_never_exceeds_its_cap_whatever_the_order_of_events() {
    let keys = ["p@a", "p@b", "p@c"];
    for seed in 0..200u64 {
        let mut rng = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = move |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let shards = 1 + next(3) as usize;
        let own = 1 + next(5) as u32;
        let cap = 1 + next(10) as u32;
        let paced = seed % 4 == 0;
        let limit_of = Limit {
            connections: own,
            paced,
            group: Some(cap),
        };
        let mut clock = now();
        let mut ledger = Ledger::new(shards);
        let mut shares: Vec<Shares> = (0..shards).map(|_| Shares::default()).collect();
        // open[shard][scope]
        let mut open = vec![[0u32; 3]; shards];
        let mut to_coord: VecDeque<(usize, &str, Report)> = VecDeque::new();
        let mut to_shard: Vec<VecDeque<Grant>> = vec![VecDeque::new(); shards];
        let deliver_one = |shares: &mut [Shares], open: &[[u32; 3]], g: Grant| {
            let k = keys.iter().position(|k| *k == g.scope).unwrap();
            let (_, r) =
                shares[g.shard].on_grant(&g.scope, g.connections, g.returned, open[g.shard][k]);
            r.map(|r| (g.shard, keys[k], r))
        };
        for _ in 0..600 {
            let s = next(shards as u64) as usize;
            let k = next(3) as usize;
            let key = keys[k];
            match next(7) {
                0 => {
                    let busy = next(3) > 0;
                    if let Some(r) = shares[s].load(key, busy) {
                        to_coord.push_back((s, key, r));
                    }
                }
                1 if open[s][k] < shares[s].granted(key) => open[s][k] += 1,
                2 if open[s][k] > 0 => {
                    open[s][k] -= 1;
                    if let Some(r) = shares[s].holding(key, open[s][k]) {
                        to_coord.push_back((s, key, r));
                    }
                }
                3 | 4 => {
                    if let Some((from, key, r)) = to_coord.pop_front() {
                        let mut out = Vec::new();
                        ledger.report(key, from, r, limit_of, clock, &mut out);
                        for g in out {
                            to_shard[g.shard].push_back(g);
                        }
                    }
                    if let Some(g) = to_shard[s].pop_front() {
                        to_coord.extend(deliver_one(&mut shares, &open, g));
                    }
                }
                5 if open[s][k] == 0 && next(4) == 0 => {
                    if let Some(r) = shares[s].forget(key) {
                        to_coord.push_back((s, key, r));
                    }
                }
                _ => {
                    clock += ROTATE_AFTER;
                    let mut out = Vec::new();
                    ledger.tick(|_| limit_of, clock, &mut out);
                    for g in out {
                        to_shard[g.shard].push_back(g);
                    }
                }
            }
            for k in 0..3 {
                if open[s][k] > shares[s].granted(keys[k]) {
                    open[s][k] -= 1;
                    if let Some(r) = shares[s].holding(keys[k], open[s][k]) {
                        to_coord.push_back((s, keys[k], r));
                    }
                }
                let scope: u32 = open.iter().map(|o| o[k]).sum();
                assert!(scope <= own, "seed {seed}: {scope} open of {}", keys[k]);
            }
            let total: u32 = open.iter().flatten().sum();
            assert!(total <= cap, "seed {seed}: {total} open, cap {cap}");
        }
        // Quiesce: every shard wants every scope and opens what it is granted.
        for s in 0..shards {
            for k in 0..3 {
                while open[s][k] > shares[s].granted(keys[k]) {
                    open[s][k] -= 1;
                    if let Some(r) = shares[s].holding(keys[k], open[s][k]) {
                        to_coord.push_back((s, keys[k], r));
                    }
                }
                if let Some(r) = shares[s].load(keys[k], true) {
                    to_coord.push_back((s, keys[k], r));
                }
            }
        }
        for _ in 0..20_000 {
            if let Some((from, key, r)) = to_coord.pop_front() {
                let mut out = Vec::new();
                ledger.report(key, from, r, limit_of, clock, &mut out);
                for g in out {
                    to_shard[g.shard].push_back(g);
                }
                continue;
            }
            let Some(s) = (0..shards).find(|&s| !to_shard[s].is_empty()) else {
                // A returned scope is asked for again once confirmed.
                let mut again = Vec::new();
                for (s, share) in shares.iter_mut().enumerate() {
                    for key in keys {
                        if let Some(r) = share.load(key, true) {
                            again.push((s, key, r));
                        }
                    }
                }
                if again.is_empty() {
                    break;
                }
                to_coord.extend(again);
                continue;
            };
            let g = to_shard[s].pop_front().unwrap();
            to_coord.extend(deliver_one(&mut shares, &open, g));
            for k in 0..3 {
                while open[s][k] > shares[s].granted(keys[k]) {
                    open[s][k] -= 1;
                    if let Some(r) = shares[s].holding(keys[k], open[s][k]) {
                        to_coord.push_back((s, keys[k], r));
                    }
                }
            }
        }
        let granted: Vec<u32> = (0..3)
            .map(|k| (0..shards).map(|s| shares[s].granted(keys[k])).sum())
            .collect();
        let total: u32 = granted.iter().sum();
        assert!(total <= cap, "seed {seed}: granted {granted:?}, cap {cap}");
        // Everything the cap allows is handed out (each scope within its own limit).
        let dump: Vec<String> = keys
            .iter()
            .map(|k| match ledger.scopes.get(*k) {
                Some(e) => format!(
                    "{k}: limit {} own {} wants {:?} grant {:?} held {:?}",
                    e.limit, e.own, e.wants, e.grant, e.held
                ),
                None => format!("{k}: none"),
            })
            .collect();
        assert_eq!(
            total,
            cap.min(3 * own),
            "seed {seed}: granted {granted:?} open {open:?}: {dump:?}"
        );
    }
}
