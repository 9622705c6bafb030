//! Where mail for a domain goes, from its MX answer: pure policy, randomness injected.
//!
//! RFC 5321 5.1: hosts in preference order, equal preferences in random order; no MX records
//! means the domain itself is the host (implicit MX). RFC 7505: a single MX of "." is a null
//! MX: the domain accepts no mail, and recipients bounce at once with 5.1.10. Only host names
//! are MX targets (`delivery::guard`): a target that is an IP literal, carries a port or is
//! not LDH is dropped, and a domain left with none is `Unusable`.

/// Hosts tried for one delivery at most; bounds work on domains with absurd MX sets.
pub const MX_HOSTS_MAX: usize = 16;
/// Refused MX targets named in a bounce text at most (the text stays one readable line).
pub const REFUSED_NAMED_MAX: usize = 3;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MxPlan {
    /// Hosts to try, best first.
    Hosts(Vec<String>),
    /// RFC 7505: the domain accepts no mail.
    NullMx,
    /// Every MX target was refused; the text names them and why.
    Unusable(String),
}

/// Orders MX records. `pick(n)` returns a random index below `n` (for shuffling equals).
pub fn plan(records: &[(u16, String)], mut pick: impl FnMut(usize) -> usize) -> MxPlan {
    let null = |h: &String| h.is_empty() || h == ".";
    if records.len() == 1 && null(&records[0].1) {
        return MxPlan::NullMx;
    }
    // A "." among real MX records is a misconfiguration; ignore it.
    let real: Vec<&(u16, String)> = records.iter().filter(|(_, h)| !null(h)).collect();
    if real.is_empty() {
        return MxPlan::NullMx;
    }
    let mut refused = Vec::new();
    let mut sorted: Vec<(u16, String)> = Vec::with_capacity(real.len());
    for (pref, host) in real {
        match crate::delivery::guard::mx_target_refusal(host) {
            None => sorted.push((*pref, host.clone())),
            Some(why) if refused.len() < REFUSED_NAMED_MAX => {
                refused.push(format!("MX {host:?} is not a host name ({why})"))
            }
            Some(_) => {}
        }
    }
    if sorted.is_empty() {
        return MxPlan::Unusable(refused.join("; "));
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
        let r = recs(&[
            (20, "c.mx.example"),
            (10, "a.mx.example"),
            (10, "b.mx.example"),
            (30, "d.mx.example"),
        ]);
        let first = plan(&r, |_| 0);
        let last = plan(&r, |n| n - 1);
        for p in [&first, &last] {
            let MxPlan::Hosts(h) = p else { panic!() };
            assert_eq!(h.len(), 4);
            assert_eq!(&h[2..], ["c.mx.example", "d.mx.example"]);
            let first_two = &h[..2];
            assert!(
                first_two.contains(&"a.mx.example".into())
                    && first_two.contains(&"b.mx.example".into())
            );
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
            plan(&recs(&[(0, ""), (10, "mx.example")]), |_| 0),
            MxPlan::Hosts(vec!["mx.example".into()])
        );
        assert_eq!(
            implicit("example.org"),
            MxPlan::Hosts(vec!["example.org".into()])
        );
    }

    #[test]
    fn only_host_names_are_mx_targets() {
        let r = recs(&[
            (10, "mx.evil.example:2525"),
            (20, "127.0.0.1"),
            (30, "mx.good.example"),
        ]);
        assert_eq!(
            plan(&r, |_| 0),
            MxPlan::Hosts(vec!["mx.good.example".into()])
        );
        let MxPlan::Unusable(why) = plan(
            &recs(&[(10, "mx.evil.example:2525"), (20, "10.0.0.1")]),
            |_| 0,
        ) else {
            panic!("every target refused")
        };
        assert!(
            why.contains("mx.evil.example:2525") && why.contains("10.0.0.1"),
            "{why}"
        );
    }

    #[test]
    fn bounded_and_deduplicated() {
        let many: Vec<(u16, String)> = (0..40)
            .map(|i| (i, format!("mx{}.example", i % 20)))
            .collect();
        let MxPlan::Hosts(h) = plan(&many, |_| 0) else {
            panic!()
        };
        assert_eq!(h.len(), MX_HOSTS_MAX);
        assert_eq!(h[0], "mx0.example");
    }
}
