//! Where mail for a domain goes, from its MX answer: pure policy, randomness injected.
//!
//! RFC 5321 5.1: hosts in preference order, equal preferences in random order; no MX records
//! means the domain itself is the host (implicit MX). RFC 7505: a single MX of "." is a null
//! MX: the domain accepts no mail, and recipients bounce at once with 5.1.10.

/// Hosts tried for one delivery at most; bounds work on domains with absurd MX sets.
pub const MX_HOSTS_MAX: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxPlan {
    /// Hosts to try, best first.
    Hosts(Vec<String>),
    /// RFC 7505: the domain accepts no mail.
    NullMx,
}

/// Orders MX records. `pick(n)` returns a random index below `n` (for shuffling equals).
pub fn plan(records: &[(u16, String)], mut pick: impl FnMut(usize) -> usize) -> MxPlan {
    let null = |h: &String| h.is_empty() || h == ".";
    if records.len() == 1 && null(&records[0].1) {
        return MxPlan::NullMx;
    }
    // A "." among real MX records is a misconfiguration; ignore it.
    let mut sorted: Vec<(u16, String)> =
        records.iter().filter(|(_, h)| !null(h)).cloned().collect();
    if sorted.is_empty() {
        return MxPlan::NullMx;
    }
    sorted.sort_by_key(|(pref, _)| *pref);
    let mut hosts = Vec::with_capacity(sorted.len());
    let mut i = 0;
    while i < sorted.len() {
        let j = sorted[i..]
            .iter()
            .position(|(p, _)| *p != sorted[i].0)
            .map_or(sorted.len(), |k| i + k);
        let mut group: Vec<String> = sorted[i..j].iter().map(|(_, h)| h.clone()).collect();
        // Fisher-Yates with the injected source.
        for k in (1..group.len()).rev() {
            group.swap(k, pick(k + 1).min(k));
        }
        for h in group {
            if !hosts.contains(&h) {
                hosts.push(h);
            }
        }
        i = j;
    }
    hosts.truncate(MX_HOSTS_MAX);
    MxPlan::Hosts(hosts)
}

/// The implicit MX (RFC 5321 5.1) when a domain has no MX records.
pub fn implicit(domain: &str) -> MxPlan {
    MxPlan::Hosts(vec![domain.to_string()])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(list: &[(u16, &str)]) -> Vec<(u16, String)> {
        list.iter().map(|(p, h)| (*p, h.to_string())).collect()
    }

    #[test]
    fn preference_order_with_shuffled_equals() {
        let r = recs(&[(20, "c"), (10, "a"), (10, "b"), (30, "d")]);
        let first = plan(&r, |_| 0);
        let last = plan(&r, |n| n - 1);
        for p in [&first, &last] {
            let MxPlan::Hosts(h) = p else { panic!() };
            assert_eq!(h.len(), 4);
            assert_eq!(&h[2..], ["c", "d"]);
            assert!(h[..2].contains(&"a".to_string()) && h[..2].contains(&"b".to_string()));
        }
        assert_ne!(
            first, last,
            "equal preferences are shuffled by the injected source"
        );
    }

    #[test]
    fn null_mx_and_implicit() {
        assert_eq!(plan(&recs(&[(0, "")]), |_| 0), MxPlan::NullMx);
        assert_eq!(plan(&recs(&[(0, ".")]), |_| 0), MxPlan::NullMx);
        assert_eq!(
            plan(&recs(&[(0, ""), (10, "mx")]), |_| 0),
            MxPlan::Hosts(vec!["mx".into()])
        );
        assert_eq!(
            implicit("example.org"),
            MxPlan::Hosts(vec!["example.org".into()])
        );
    }

    #[test]
    fn bounded_and_deduplicated() {
        let many: Vec<(u16, String)> = (0..40).map(|i| (i, format!("mx{}", i % 20))).collect();
        let MxPlan::Hosts(h) = plan(&many, |_| 0) else {
            panic!()
        };
        assert_eq!(h.len(), MX_HOSTS_MAX);
        assert_eq!(h[0], "mx0");
    }
}
