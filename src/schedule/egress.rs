//! Which egress source a routed recipient leaves from (`[sources]`, `[pools]`).
//!
//! A recipient of a message with a pool goes to one of the pool's sources, chosen by weight
//! from a hash of its sequence number: stable across ticks and retries, spread evenly over
//! many recipients, and the same on every shard. Sources an operator suspended (`source:S`, or
//! the scope `provider@S`) are left out, so their share moves to the pool's other sources; a
//! recipient whose pool has none left is held until the holds change. Without sources, or for
//! a message with no pool, the scope is the destination's own (the system's address).

use crate::admin::holds::Holds;
use crate::config::Egress;
use crate::delivery::rules::Firings;
use crate::delivery::scope::{sourced_key, NextHop, Scope};
use crate::delivery::warmup::WarmView;
use std::collections::HashMap;
use std::sync::Arc;

/// Where a routed recipient goes.
pub(super) enum Sourcing {
    /// The system's address: the destination's own scope.
    System,
    /// The egress source with this index in `Egress::sources`.
    Source(usize),
    /// Every source of its pool is suspended: held until the holds change.
    Held,
}

/// The scope of each (destination scope, source) seen, so that routing a recipient clones
/// nothing: per destination scope key, its hosts and a scope per source. Bounded by the
/// destinations routed (the home's route cache) times the sources.
#[derive(Default)]
pub(super) struct Sourced {
    by_base: HashMap<String, PerSource>,
}

/// A destination scope's hosts, and its scope at each source (by index) made so far.
type PerSource = (Arc<[NextHop]>, Vec<Option<Scope>>);

impl Sourced {
    /// Forgets every scope (the sources may have changed).
    pub(super) fn clear(&mut self) {
        self.by_base.clear();
    }

    /// The scope of `base` sent from source `source`.
    pub(super) fn scope(&mut self, egress: &Egress, base: &Scope, source: usize) -> &Scope {
        let sources = egress.sources.len();
        // A lookup by &str first: the key is cloned once per destination scope, not per call.
        if !self.by_base.contains_key(base.key.as_str()) {
            self.by_base
                .insert(base.key.clone(), (Arc::clone(&base.hosts), Vec::new()));
        }
        let entry = self
            .by_base
            .get_mut(base.key.as_str())
            .expect("inserted above");
        if !Arc::ptr_eq(&entry.0, &base.hosts) {
            // The destination resolved anew: scopes with its new hosts.
            *entry = (Arc::clone(&base.hosts), Vec::new());
        }
        if entry.1.len() < sources {
            entry.1.resize(sources, None);
        }
        entry.1[source].get_or_insert_with(|| Scope {
            key: sourced_key(&base.key, &egress.sources[source].name),
            hosts: Arc::clone(&base.hosts),
        })
    }
}

impl super::Home {
    /// The sources and pools of the configuration in force. Recipients already waiting for
    /// a source's credit stay with it; those routed from now on use these.
    pub fn set_egress(&mut self, egress: Arc<crate::config::Egress>) {
        if *egress != *self.egress {
            self.sourced.clear();
        }
        self.egress = egress;
    }

    /// Reply rules' firings changed: recipients held (perhaps by a suspension that ended)
    /// are routed again, and so are those waiting for the credit of a scope now suspended.
    pub fn set_firings(&mut self, firings: Arc<crate::delivery::rules::Firings>, now_unix_ms: u64) {
        self.release_held();
        let f = Arc::clone(&firings);
        self.reroute_pending(|k| {
            let (base, source) = crate::delivery::scope::split_key(k);
            f.suspended(k, now_unix_ms).is_some()
                || source.is_some_and(|s| f.source_back(base, s, now_unix_ms) == 0.0)
        });
        self.firings = firings;
    }

    /// The warm-up book every shard shares (a new home's is its own).
    pub fn set_warm_book(&mut self, book: Arc<crate::delivery::warmup::WarmBook>) {
        self.warm_view = book.view().1;
        self.warm = book;
    }

    /// True when `scope`'s outcomes settle warm-up counts.
    pub fn warm_tracks(&self, scope: &str) -> bool {
        self.warm_view.tracks(scope)
    }

    /// Warm-up's view changed (a source full for today, or a new day): recipients waiting
    /// for the credit of a source now full are routed again, and, when `release`, so are
    /// those held for want of a source (the shard releases them only when a source could
    /// take mail again, and at most every `WARM_RELEASE_EVERY`: near a cap a source flips
    /// between full and not with every outcome).
    pub fn set_warm(&mut self, view: Arc<crate::delivery::warmup::WarmView>, release: bool) {
        if release {
            self.release_held();
        }
        let v = Arc::clone(&view);
        self.reroute_pending(|k| v.is_full_key(k));
        self.warm_view = view;
    }
}

/// The source a recipient numbered `seq` of a message with `pool` leaves from, routed to
/// `base`. Sources at their warm-up cap for today are left out as suspended ones are.
pub(super) fn choose(
    egress: &Egress,
    holds: &Holds,
    (firings, now_unix_ms): (&Firings, u64),
    warm: &WarmView,
    pool: &str,
    base: &Scope,
    seq: u64,
) -> Sourcing {
    if egress.is_empty() {
        return Sourcing::System;
    }
    let Some(p) = egress
        .pools
        .get(pool)
        .or_else(|| egress.pools.get(crate::config::DEFAULT_POOL))
    else {
        return Sourcing::System;
    };
    let check = holds.suspends_sources();
    let rules = !firings.is_empty();
    // Each source's weight, in thousandths: none while an operator or a rule suspends it,
    // part of it while a rule's suspension ramps back.
    let weight = |i: usize, w: u32| -> u64 {
        let name = egress.sources[i].name.as_str();
        if check
            && (holds.source_suspension(name).is_some()
                || holds.sourced_scope_suspension(&base.key, name).is_some())
        {
            return 0;
        }
        if warm.is_full(&base.key, name) {
            return 0;
        }
        let back = if rules {
            firings.source_back(&base.key, name, now_unix_ms)
        } else {
            1.0
        };
        (f64::from(w) * 1000.0 * back) as u64
    };
    let eligible: u64 = p.members.iter().map(|&(i, w)| weight(i, w)).sum();
    if eligible == 0 {
        return Sourcing::Held;
    }
    let mut r = mix(seq) % eligible;
    for &(i, w) in &p.members {
        let w = weight(i, w);
        if r < w {
            return Sourcing::Source(i);
        }
        r -= w;
    }
    unreachable!("r < eligible, the sum of the weights looked at")
}

/// splitmix64's finaliser: neighbouring sequence numbers land on unrelated sources.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::holds::{Rule, Target};
    use crate::config::Config;

    fn egress() -> Egress {
        Config::parse(
            "[sources.a]\naddress = \"127.0.0.2\"\n[sources.b]\naddress = \"127.0.0.3\"\n[sources.c]\naddress = \"127.0.0.4\"\n[pools.default]\nsources = [\"a\", \"b\", \"c\"]\nweights = [2, 1, 1]\n[pools.solo]\nsources = [\"c\"]\n",
            "t",
        )
        .unwrap()
        .egress
    }

    fn base() -> Scope {
        Scope {
            key: "yahoo".into(),
            hosts: Arc::from(Vec::new()),
        }
    }

    fn counts(holds: &Holds, pool: &str) -> [u32; 4] {
        let (e, b) = (egress(), base());
        let mut sourced = Sourced::default();
        let mut n = [0; 4];
        for seq in 0..40_000 {
            match choose(
                &e,
                holds,
                (&Firings::default(), 0),
                &WarmView::default(),
                pool,
                &b,
                seq,
            ) {
                Sourcing::Source(i) => {
                    // The scope is made on first use, as the home does.
                    let key = sourced.scope(&e, &b, i).key.clone();
                    assert_eq!(key, format!("yahoo@{}", e.sources[i].name));
                    n[i] += 1
                }
                Sourcing::System | Sourcing::Held => n[3] += 1,
            }
        }
        n
    }

    fn rule(target: &str) -> Rule {
        Rule {
            target: Target::parse(target).unwrap(),
            reason: String::new(),
            at_unix_ms: 0,
        }
    }

    #[test]
    fn weights_spread_recipients_and_suspension_moves_the_share() {
        let none = Holds::default();
        let [a, b, c, other] = counts(&none, "default");
        assert_eq!(other, 0);
        // 2:1:1 within 3% of 40,000.
        assert!((19_000..21_000).contains(&a), "{a}");
        assert!((9_400..10_600).contains(&b) && (9_400..10_600).contains(&c));
        // No pool named and no tenant's: the default pool; an unknown one, too.
        assert_eq!(counts(&none, ""), [a, b, c, 0]);
        // Source b suspended: its share goes to a and c, by weight, and a recipient that
        // went to a or c before still does.
        let held = Holds::new(vec![rule("source:b")], Vec::new());
        let [a2, b2, c2, o2] = counts(&held, "default");
        assert_eq!((b2, o2), (0, 0));
        assert!(a2 > a && c2 > c && a2 + c2 == 40_000);
        // Suspended at one provider only (the scope yahoo@a): moves off a.
        let held = Holds::new(vec![rule("yahoo@a")], Vec::new());
        let [a3, ..] = counts(&held, "default");
        assert_eq!(a3, 0);
        // The only source of a pool suspended: held.
        let held = Holds::new(vec![rule("source:c")], Vec::new());
        assert_eq!(counts(&held, "solo"), [0, 0, 0, 40_000]);
    }

    #[test]
    fn no_sources_is_the_system_address() {
        let e = Egress::default();
        let h = Holds::default();
        assert!(matches!(
            choose(
                &e,
                &h,
                (&Firings::default(), 0),
                &WarmView::default(),
                "default",
                &base(),
                1
            ),
            Sourcing::System
        ));
    }
}
