//! A scope's recipients waiting for credit at one home, in the order credit takes them:
//! fair shares between senders, and transactional mail first.
//!
//! Mail submitted over SMTP (the gateway's, and the delivery status notifications it causes)
//! is transactional: a password reset cannot wait behind a newsletter, so it has a lane of
//! its own that credit empties first, in arrival order. Campaign mail is shared between
//! tenants, round robin, each tenant taking its weight (`[tenants.NAME] weight`, 1 by
//! default) per round; within a tenant, between its campaigns, one recipient each per turn.
//! So a million-recipient campaign queued first cannot starve a small one that arrives
//! later: the scope's rate (its credit) is split between them from the moment both wait.
//!
//! Deficit round robin over lanes, each a FIFO of sequence numbers. The lanes are the
//! (tenant, campaign) pairs with recipients waiting here; an empty one goes at once.

use std::collections::VecDeque;

/// What a routed recipient is, for its place in the lanes.
#[derive(Debug, Clone, Copy)]
pub enum Class<'a> {
    /// Transactional: ahead of campaign mail.
    Priority,
    /// Campaign mail of `tenant` (with its weight) and `campaign`.
    Campaign {
        tenant: &'a str,
        campaign: &'a str,
        weight: u32,
    },
}

#[derive(Debug)]
struct Campaign {
    name: Box<str>,
    seqs: VecDeque<u64>,
}

#[derive(Debug)]
struct Tenant {
    name: Box<str>,
    weight: u32,
    /// Recipients this tenant may still take in the current round.
    deficit: u32,
    campaigns: Vec<Campaign>,
    /// The campaign whose turn is next.
    next: usize,
}

/// The lanes of one scope at one home.
#[derive(Debug, Default)]
pub struct Lanes {
    priority: VecDeque<u64>,
    tenants: Vec<Tenant>,
    /// The tenant whose turn it is.
    next: usize,
    len: usize,
}

impl Lanes {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A recipient routed here, behind those of its lane.
    pub fn push(&mut self, seq: u64, class: Class<'_>) {
        self.len += 1;
        let (tenant, campaign, weight) = match class {
            Class::Priority => {
                self.priority.push_back(seq);
                return;
            }
            Class::Campaign {
                tenant,
                campaign,
                weight,
            } => (tenant, campaign, weight.max(1)),
        };
        // Recipients arrive in runs of one campaign: the last lane first.
        let t = match self.tenants.iter().rposition(|t| &*t.name == tenant) {
            Some(t) => t,
            None => {
                self.tenants.push(Tenant {
                    name: tenant.into(),
                    weight,
                    deficit: weight,
                    campaigns: Vec::new(),
                    next: 0,
                });
                self.tenants.len() - 1
            }
        };
        let t = &mut self.tenants[t];
        t.weight = weight;
        match t.campaigns.iter().rposition(|c| &*c.name == campaign) {
            Some(c) => t.campaigns[c].seqs.push_back(seq),
            None => t.campaigns.push(Campaign {
                name: campaign.into(),
                seqs: VecDeque::from([seq]),
            }),
        }
    }

    /// Takes up to `n` recipients: transactional ones first, then campaign mail by the
    /// tenants' turns.
    pub fn take(&mut self, n: usize, out: &mut Vec<u64>) {
        let mut n = n.min(self.len);
        self.len -= n;
        while n > 0 {
            if let Some(seq) = self.priority.pop_front() {
                out.push(seq);
                n -= 1;
                continue;
            }
            let t = self.next % self.tenants.len();
            let tenant = &mut self.tenants[t];
            if tenant.deficit == 0 {
                // Its round is over: the next tenant's turn, this one's share refilled.
                tenant.deficit = tenant.weight;
                self.next = t + 1;
                continue;
            }
            let c = tenant.next % tenant.campaigns.len();
            let campaign = &mut tenant.campaigns[c];
            out.push(campaign.seqs.pop_front().expect("lanes are never empty"));
            n -= 1;
            tenant.deficit -= 1;
            if campaign.seqs.is_empty() {
                tenant.campaigns.remove(c);
                tenant.next = c;
            } else {
                tenant.next = c + 1;
            }
            if tenant.campaigns.is_empty() {
                self.tenants.remove(t);
                self.next = t;
            }
        }
    }

    /// Every recipient, in sequence order (they are routed again).
    pub fn drain(&mut self) -> Vec<u64> {
        let mut all: Vec<u64> = self.priority.drain(..).collect();
        for t in self.tenants.drain(..) {
            for c in t.campaigns {
                all.extend(c.seqs);
            }
        }
        self.next = 0;
        self.len = 0;
        all.sort_unstable();
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn campaign<'a>(tenant: &'a str, campaign: &'a str) -> Class<'a> {
        Class::Campaign {
            tenant,
            campaign,
            weight: 1,
        }
    }

    fn take(l: &mut Lanes, n: usize) -> Vec<u64> {
        let mut out = Vec::new();
        l.take(n, &mut out);
        out
    }

    #[test]
    fn one_campaign_is_first_in_first_out() {
        let mut l = Lanes::default();
        for seq in 0..10 {
            l.push(seq, campaign("t", "c"));
        }
        assert_eq!(take(&mut l, 4), [0, 1, 2, 3]);
        assert_eq!(take(&mut l, 100), [4, 5, 6, 7, 8, 9]);
        assert!(l.is_empty() && take(&mut l, 1).is_empty());
    }

    #[test]
    fn a_small_campaign_arriving_later_shares_with_a_big_one() {
        let mut l = Lanes::default();
        for seq in 0..1_000 {
            l.push(seq, campaign("big", "million"));
        }
        for seq in 1_000..1_010 {
            l.push(seq, campaign("small", "news"));
        }
        // Alternating from the start: the small one's ten go within the first twenty.
        let first = take(&mut l, 20);
        assert_eq!(
            first.iter().filter(|&&s| s >= 1_000).count(),
            10,
            "{first:?}"
        );
        assert_eq!(l.len(), 990);
        // Then the big one alone, in order.
        assert_eq!(take(&mut l, 3), [10, 11, 12]);
    }

    #[test]
    fn tenants_share_first_then_their_campaigns() {
        let mut l = Lanes::default();
        // Tenant a has two campaigns, b one: b gets half, a's two a quarter each.
        for seq in 0..100 {
            l.push(seq, campaign("a", "a1"));
            l.push(1_000 + seq, campaign("a", "a2"));
            l.push(2_000 + seq, campaign("b", "b1"));
        }
        let got = take(&mut l, 80);
        let count = |lo: u64| {
            got.iter()
                .filter(|&&s| (lo..lo + 1_000).contains(&s))
                .count()
        };
        assert_eq!((count(0), count(1_000), count(2_000)), (20, 20, 40));
    }

    #[test]
    fn weights_and_transactional_mail_first() {
        let mut l = Lanes::default();
        for seq in 0..100 {
            l.push(
                seq,
                Class::Campaign {
                    tenant: "gold",
                    campaign: "g",
                    weight: 3,
                },
            );
            l.push(1_000 + seq, campaign("basic", "b"));
        }
        let got = take(&mut l, 40);
        assert_eq!(got.iter().filter(|&&s| s < 1_000).count(), 30);
        // Transactional mail routed now goes before everything waiting.
        l.push(5_000, Class::Priority);
        l.push(5_001, Class::Priority);
        assert_eq!(take(&mut l, 2), [5_000, 5_001]);
        // Drained for rerouting: everything, in sequence order.
        let all = l.drain();
        assert_eq!(all.len(), 160);
        assert!(all.windows(2).all(|w| w[0] < w[1]));
        assert!(l.is_empty());
    }
}
