//! Shares of a scope's connections between shards, sans I/O.
//!
//! Every shard sends its own recipients over connections of its own: per message, nothing
//! crosses between shards. What does cross is how many of a scope's connections each shard
//! may hold, and it crosses only when that changes. One shard coordinates each scope (its
//! `coordinator`, a stable hash of the key); its `Ledger` splits the scope's
//! `connection_limit` between the shards that have recipients for it.
//!
//! A scope with a `max_message_rate` is paced, and a pace cannot be split exactly (two
//! shards pacing halves each send their first message at once): it has one owner shard
//! (`schedule::ScopeOwners`), which sends every home's recipients of it. Should two shards
//! still have its mail (a reload changed its owner), it is held by one of them at a time, all
//! its connections with it, and the turn moves every `PACED_TURN` while the other waits. The pace moves with the turn (`Pace`: the throttle, adaptive limit
//! included, and the time of the next send), so the scope's messages follow one pace
//! whichever shard sends them. A scope at an egress source (`yahoo@mta1`) is paced the same
//! way: its receiver counts that one address, and one throttle learns its rate. Any other
//! scope paced only by its receiver's pushback is split like any other; each shard's
//! throttle learns from the replies to its own share.
//!
//! The totals are exact, never only eventually: a shard's grant is raised only out of
//! connections no shard holds, and one that is lowered counts at its old size until the
//! shard says its connections are down to the new one (`Report::Released`), which it does
//! once the workers beyond it have finished their transaction and closed, and the
//! connections its workers parked for reuse have closed or been taken by another scope. Messages between a
//! shard and a coordinator arrive in the order sent, which is what lets a shard hand a whole
//! grant back (`Report::Return`, when it forgets an idle scope) without a grant already on
//! its way being used after it.
//!
//! A provider's scopes at each egress source (`yahoo@mta1`, `yahoo@mta2`) may share a cap
//! across them (`provider_connection_limit`, a `Limit::group`): one shard coordinates them all
//! (the coordinator hashes the provider's part of the key), and splits the cap between those
//! some shard wants, each within its own limit; a scope is raised only out of what the
//! others do not hold, so the group's total is as exact as a scope's.
//!
//! A shard that stops wanting a scope keeps its grant (and its persistent connections) until
//! another shard needs the room. Where fewer connections than shards want them (a site
//! limited to one connection, recipients on both shards), the connections take turns,
//! moving every `ROTATE_AFTER`.

use crate::delivery::throttle::Throttle;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Where a scope's connections are fewer than the shards that want them, how long one shard
/// keeps its turn before they move to the next.
pub const ROTATE_AFTER: Duration = Duration::from_secs(2);
/// How long one shard keeps a paced scope while others want it (longer than `ROTATE_AFTER`:
/// each turn reopens all the scope's connections).
pub const PACED_TURN: Duration = Duration::from_secs(10);

/// A paced scope's pace, handed from the shard whose turn ends to the next.
#[derive(Debug, Clone)]
pub struct Pace {
    pub throttle: Throttle,
    /// No message goes before this (the next slot at the pace in force).
    pub next_send: Instant,
}

/// A scope's limits as its coordinator splits them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub connections: u32,
    /// It has a `max_message_rate`: one shard at a time.
    pub paced: bool,
    /// Connections at most across the scopes of its group (a provider's scopes at each
    /// egress source: `provider_connection_limit`).
    pub group: Option<u32>,
}

/// The shard that coordinates a scope's shares: a stable hash of its key's destination part
/// (a provider's scopes at every source have one coordinator), so every shard agrees.
pub fn coordinator(scope_key: &str, shards: usize) -> usize {
    let group = crate::delivery::scope::split_key(scope_key).0;
    (crate::hash::stable_hash(group.as_bytes()) % shards.max(1) as u64) as usize
}

/// What a shard tells a scope's coordinator.
#[derive(Debug, Clone)]
pub enum Report {
    /// The shard has recipients for the scope (waiting, promised, ready or being sent), or
    /// no longer has any.
    Wants(bool),
    /// The shard's connections of the scope are down to at most `to`; down to none, with
    /// its pace (for the shard whose turn comes next).
    Released { to: u32, pace: Option<Pace> },
    /// The shard forgot the scope: its grant comes back whole, with no connection open.
    Return,
}

/// What a coordinator tells a shard: it may hold `connections` of `scope` from now on.
/// `returned` confirms a `Report::Return` (nothing else follows it for the scope until the
/// shard wants it again). `pace`: the pace to follow, when a paced scope's turn comes.
#[derive(Debug, Clone)]
pub struct Grant {
    pub shard: usize,
    pub scope: String,
    pub connections: u32,
    pub returned: bool,
    pub pace: Option<Pace>,
}

impl PartialEq for Grant {
    /// The pace aside (tests compare what goes where).
    fn eq(&self, other: &Grant) -> bool {
        (self.shard, &self.scope, self.connections, self.returned)
            == (other.shard, &other.scope, other.connections, other.returned)
    }
}

/// One scope as its coordinator sees it.
struct Entry {
    /// Its connections at most: its own limit, or within a group what the group leaves it.
    limit: u32,
    /// Its own limit, and its group's (`Limit::group`).
    own: u32,
    group: Option<u32>,
    paced: bool,
    /// The pace the last turn ended with, for the next.
    pace: Option<Pace>,
    wants: Vec<bool>,
    /// What each shard was last told it may hold.
    grant: Vec<u32>,
    /// What each shard may still hold: its grant, or more while a lowered grant is not
    /// released yet. The connections handed out never exceed `limit - sum(held)`.
    held: Vec<u32>,
    /// For a scope with fewer connections than shards wanting it: whose turn comes first.
    first: usize,
    turned_at: Instant,
}

impl Entry {
    fn new(shards: usize, limit: Limit, now: Instant) -> Self {
        Entry {
            // A group's scope has nothing until the group's split says what it may have.
            limit: if limit.group.is_some() {
                0
            } else {
                limit.connections
            },
            own: limit.connections,
            group: limit.group,
            paced: limit.paced,
            pace: None,
            wants: vec![false; shards],
            grant: vec![0; shards],
            held: vec![0; shards],
            first: 0,
            turned_at: now,
        }
    }

    fn wanting(&self) -> usize {
        self.wants.iter().filter(|&&w| w).count()
    }

    fn held_total(&self) -> u32 {
        self.held.iter().sum()
    }

    /// An equal split of the limit between the shards that want the scope (the remainder,
    /// or with fewer connections than shards, the connections, going to the first in turn);
    /// None when no shard wants it (nothing moves then).
    /// With fewer connections than shards wanting them, those holding one keep it until
    /// the turn moves (`rotated`), and the rest go in turn from `first`.
    fn targets(&self, rotated: bool) -> Option<Vec<u32>> {
        let n = self.wanting() as u32;
        if n == 0 {
            return None;
        }
        let shards = self.wants.len();
        let mut targets = vec![0; shards];
        if self.paced {
            // One shard at a time: the one holding it keeps it until the turn moves.
            let holder = (0..shards)
                .find(|&s| !rotated && self.wants[s] && self.grant[s] > 0)
                .or_else(|| {
                    (0..shards)
                        .map(|i| (self.first + i) % shards)
                        .find(|&s| self.wants[s])
                });
            if let Some(s) = holder {
                targets[s] = self.limit;
            }
            return Some(targets);
        }
        let (base, mut extra) = (self.limit / n, self.limit % n);
        if base == 0 && !rotated {
            for (s, target) in targets.iter_mut().enumerate() {
                if extra > 0 && self.wants[s] && self.grant[s] > 0 {
                    *target = 1;
                    extra -= 1;
                }
            }
        }
        for i in 0..shards {
            let s = (self.first + i) % shards;
            if !self.wants[s] || targets[s] > 0 {
                continue;
            }
            targets[s] = base + u32::from(extra > 0);
            extra = extra.saturating_sub(1);
        }
        Some(targets)
    }

    /// Moves the grants toward the targets: raises out of connections nobody holds, and,
    /// when a shard that wants the scope is still short (or the limit went down), lowers
    /// those above their target.
    fn balance(&mut self, key: &str, rotated: bool, out: &mut Vec<Grant>) {
        let Some(targets) = self.targets(rotated) else {
            return;
        };
        let used: u32 = self.held.iter().sum();
        let mut free = self.limit.saturating_sub(used);
        // A paced scope's next turn starts only once the last holder has let go of all it
        // held (and handed its pace over): never two pacers at once.
        if self.paced {
            let holders = (0..targets.len()).filter(|&s| self.held[s] > 0);
            let others_hold = holders
                .filter(|&s| targets[s] == 0 || self.grant[s] == 0)
                .count();
            if others_hold > 0 {
                free = 0;
            }
        }
        let mut short = false;
        for (s, &target) in targets.iter().enumerate() {
            if self.grant[s] >= target {
                continue;
            }
            let add = (target - self.grant[s]).min(free);
            if add > 0 {
                // A paced scope's turn starts from none: the pace comes with it.
                let pace = if self.paced && self.grant[s] == 0 {
                    self.pace.take()
                } else {
                    None
                };
                // A shard still holding more than its grant uses no new room for the part
                // of the raise it already holds.
                let held_before = self.held[s];
                self.grant[s] += add;
                self.held[s] = self.held[s].max(self.grant[s]);
                free -= self.held[s] - held_before;
                out.push(Grant {
                    pace,
                    ..grant(s, key, self.grant[s], false)
                });
            }
            short |= self.grant[s] < target;
        }
        let over = self.grant.iter().sum::<u32>() > self.limit;
        if !(short || over) {
            return;
        }
        for (s, &target) in targets.iter().enumerate() {
            if self.grant[s] > target {
                self.grant[s] = target;
                out.push(grant(s, key, target, false));
            }
        }
    }

    /// Nothing granted, held or wanted: the entry can go.
    fn is_empty(&self) -> bool {
        self.held.iter().all(|&h| h == 0) && !self.wants.iter().any(|&w| w)
    }
}

/// `cap` split between claims: equal parts, each within its claim, what one cannot use going
/// to the others (the remainder to the first).
fn water_fill(cap: u32, claims: &[u32]) -> Vec<u32> {
    let mut parts = vec![0u32; claims.len()];
    let mut left = cap;
    loop {
        let open: Vec<usize> = (0..claims.len())
            .filter(|&i| parts[i] < claims[i])
            .collect();
        if open.is_empty() || left == 0 {
            return parts;
        }
        let each = (left / open.len() as u32).max(1);
        for i in open {
            let add = each.min(claims[i] - parts[i]).min(left);
            parts[i] += add;
            left -= add;
        }
    }
}

fn grant(shard: usize, scope: &str, connections: u32, returned: bool) -> Grant {
    Grant {
        shard,
        scope: scope.to_string(),
        connections,
        returned,
        pace: None,
    }
}

/// The coordinator's side: the scopes this shard coordinates, with every shard's share.
/// Holds an entry only while some shard wants or holds a share of the scope.
pub struct Ledger {
    shards: usize,
    scopes: HashMap<String, Entry>,
    /// The scopes of each group (a provider with `provider_connection_limit`), by the
    /// group's name; only while they have entries.
    groups: HashMap<String, Vec<String>>,
}

impl Ledger {
    pub fn new(shards: usize) -> Self {
        Ledger {
            shards: shards.max(1),
            scopes: HashMap::new(),
            groups: HashMap::new(),
        }
    }

    /// Splits each group's cap between its scopes that some shard wants (each within its
    /// own limit), then lets each have its part or what the others leave, whichever is less,
    /// and balances it. A scope nobody wants that still holds connections while another is
    /// short of its part gives them back.
    fn balance_group(&mut self, group: &str, out: &mut Vec<Grant>) {
        let Some(keys) = self.groups.get(group) else {
            return;
        };
        let entries: Vec<(&String, &Entry)> = keys
            .iter()
            .filter_map(|k| self.scopes.get_key_value(k.as_str()))
            .collect();
        let Some(cap) = entries.iter().find_map(|(_, e)| e.group) else {
            return;
        };
        let wanted: Vec<u32> = entries
            .iter()
            .map(|(_, e)| if e.wanting() > 0 { e.own } else { 0 })
            .collect();
        let parts = water_fill(cap, &wanted);
        let held: Vec<u32> = entries.iter().map(|(_, e)| e.held_total()).collect();
        let all_held: u32 = held.iter().sum();
        let limits: Vec<u32> = (0..entries.len())
            .map(|i| parts[i].min(cap.saturating_sub(all_held - held[i])))
            .collect();
        let short = (0..entries.len()).any(|i| limits[i] < parts[i]);
        let keys: Vec<String> = entries.iter().map(|(k, _)| (*k).clone()).collect();
        for (i, key) in keys.iter().enumerate() {
            let Some(e) = self.scopes.get_mut(key.as_str()) else {
                continue;
            };
            e.limit = limits[i];
            if e.wanting() > 0 {
                e.balance(key, false, out);
            } else if short {
                for s in 0..e.grant.len() {
                    if e.grant[s] > 0 {
                        e.grant[s] = 0;
                        out.push(grant(s, key, 0, false));
                    }
                }
            }
        }
    }

    /// Scopes with shares out.
    pub fn len(&self) -> usize {
        self.scopes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// What `shard` holds of `key` by this ledger (its grant, or more while releasing).
    pub fn held(&self, key: &str, shard: usize) -> u32 {
        self.scopes
            .get(key)
            .and_then(|e| e.held.get(shard).copied())
            .unwrap_or(0)
    }

    /// `shard` reports on `key`, whose limits are `limit` in the configuration in force:
    /// appends the grants that change to `out`.
    pub fn report(
        &mut self,
        key: &str,
        shard: usize,
        report: Report,
        limit: Limit,
        now: Instant,
        out: &mut Vec<Grant>,
    ) {
        if shard >= self.shards {
            return;
        }
        let shards = self.shards;
        let entry = match (self.scopes.get_mut(key), &report) {
            (Some(e), _) => e,
            (None, Report::Wants(true)) => self
                .scopes
                .entry(key.to_string())
                .or_insert_with(|| Entry::new(shards, limit, now)),
            // A return is always confirmed, known or not: the shard waits for it.
            (None, Report::Return) => {
                out.push(grant(shard, key, 0, true));
                return;
            }
            (None, _) => return,
        };
        entry.own = limit.connections;
        entry.group = limit.group;
        if limit.group.is_none() {
            entry.limit = limit.connections;
        }
        entry.paced = limit.paced;
        match report {
            Report::Wants(w) => entry.wants[shard] = w,
            Report::Released { to, pace } => {
                entry.held[shard] = entry.grant[shard].max(to.min(entry.held[shard]));
                if pace.is_some() {
                    entry.pace = pace;
                }
            }
            Report::Return => {
                entry.wants[shard] = false;
                entry.grant[shard] = 0;
                entry.held[shard] = 0;
                out.push(grant(shard, key, 0, true));
            }
        }
        let grouped = limit.group.is_some();
        if !grouped {
            entry.balance(key, false, out);
        }
        let empty = entry.is_empty();
        if empty {
            self.scopes.remove(key);
        }
        let group = crate::delivery::scope::split_key(key).0;
        let members = self.groups.entry(group.to_string()).or_default();
        let listed = members.iter().position(|k| k == key);
        match (grouped && !empty, listed) {
            (true, None) => members.push(key.to_string()),
            (false, Some(i)) => {
                members.swap_remove(i);
            }
            _ => {}
        }
        if members.is_empty() {
            self.groups.remove(group);
        }
        if grouped || listed.is_some() {
            self.balance_group(group, out);
        }
    }

    /// Now and then: limits that changed (a reload) take effect, and where fewer
    /// connections than shards want a scope, the turn moves on every `ROTATE_AFTER`.
    pub fn tick(&mut self, limit_of: impl Fn(&str) -> Limit, now: Instant, out: &mut Vec<Grant>) {
        let mut regroup = Vec::new();
        for (key, entry) in &mut self.scopes {
            let Limit {
                connections,
                paced,
                group,
            } = limit_of(key);
            // A group's scope has the part the group leaves it (`balance_group`, below, when
            // its limits changed); any other, its own limit.
            let changed = (connections, paced, group) != (entry.own, entry.paced, entry.group);
            let was_grouped = entry.group.is_some();
            entry.own = connections;
            entry.paced = paced;
            entry.group = group;
            if (group.is_some() || was_grouped) && changed {
                regroup.push((key.clone(), group.is_some()));
            }
            if group.is_none() && entry.limit != connections {
                entry.limit = connections;
            }
            let turns = entry.wanting() as u32 > if paced { 1 } else { entry.limit };
            let turn = if paced { PACED_TURN } else { ROTATE_AFTER };
            let rotate = turns && now.duration_since(entry.turned_at) >= turn;
            if rotate {
                entry.turned_at = now;
                // The turn goes to the shards that want it after this turn's last holder.
                let shards = entry.wants.len();
                let holds = |s: usize| entry.wants[s] && entry.grant[s] > 0;
                let last = (0..shards)
                    .map(|i| (entry.first + i) % shards)
                    .rfind(|&s| holds(s))
                    .unwrap_or(entry.first);
                entry.first = (1..=shards)
                    .map(|i| (last + i) % shards)
                    .find(|&s| entry.wants[s] && !holds(s))
                    .unwrap_or(entry.first);
            }
            if rotate || (changed && group.is_none()) {
                entry.balance(key, rotate, out);
            }
        }
        let mut groups = Vec::new();
        for (key, grouped) in regroup {
            let group = crate::delivery::scope::split_key(&key).0.to_string();
            let members = self.groups.entry(group.clone()).or_default();
            let listed = members.iter().position(|k| *k == key);
            match (grouped, listed) {
                (true, None) => members.push(key),
                (false, Some(i)) => {
                    members.swap_remove(i);
                }
                _ => {}
            }
            if members.is_empty() {
                self.groups.remove(&group);
            }
            groups.push(group);
        }
        groups.sort();
        groups.dedup();
        for group in groups {
            self.balance_group(&group, out);
        }
    }
}

/// This shard's side: the share of each scope it holds or asked for.
#[derive(Default)]
pub struct Shares {
    scopes: HashMap<String, Local>,
}

#[derive(Default)]
struct Local {
    granted: u32,
    /// What the coordinator last heard: the shard wants the scope.
    wants: bool,
    /// A lowered grant not released yet (connections beyond it are finishing).
    releasing: bool,
    /// The grant is being handed back; nothing here is used until the coordinator confirms.
    returning: bool,
}

/// What a grant from the coordinator means here.
#[derive(Debug, PartialEq, Eq)]
pub enum Granted {
    /// The share is now this many connections.
    Set(u32),
    /// The return is confirmed and the scope forgotten here.
    Returned,
    /// Nothing changes (a grant overtaken by a return on its way).
    Ignored,
}

impl Shares {
    /// Connections this shard may hold of `key` now.
    pub fn granted(&self, key: &str) -> u32 {
        match self.scopes.get(key) {
            Some(l) if !l.returning => l.granted,
            _ => 0,
        }
    }

    /// Scopes known here.
    pub fn len(&self) -> usize {
        self.scopes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.scopes.is_empty()
    }

    /// Whether this shard has recipients for `key` (`busy`): the report to send its
    /// coordinator, when it has not heard so.
    pub fn load(&mut self, key: &str, busy: bool) -> Option<Report> {
        let local = match self.scopes.get_mut(key) {
            Some(l) => l,
            None if busy => self.scopes.entry(key.to_string()).or_default(),
            None => return None,
        };
        // Returning: the confirmation comes first, then the scope is asked for again.
        if local.returning || local.wants == busy {
            return None;
        }
        local.wants = busy;
        Some(Report::Wants(busy))
    }

    /// The scopes whose coordinator heard that this shard wants them.
    pub fn wanted(&self) -> impl Iterator<Item = &str> {
        self.scopes
            .iter()
            .filter(|(_, l)| l.wants && !l.returning)
            .map(|(k, _)| k.as_str())
    }

    /// A grant arrived for `key`. `holding`: the connections this shard holds of it now.
    /// Returns what it means, and the release to report at once if it lowered the share
    /// to no fewer than are held (its pace is the caller's to add, `Report::Released`).
    pub fn on_grant(
        &mut self,
        key: &str,
        connections: u32,
        returned: bool,
        holding: u32,
    ) -> (Granted, Option<Report>) {
        let Some(local) = self.scopes.get_mut(key) else {
            // Granted for a scope not asked for (it cannot be: a coordinator grants only
            // what a shard wants): handed straight back.
            if returned {
                return (Granted::Ignored, None);
            }
            self.scopes.insert(
                key.to_string(),
                Local {
                    returning: true,
                    ..Local::default()
                },
            );
            return (Granted::Ignored, Some(Report::Return));
        };
        if local.returning {
            if returned {
                self.scopes.remove(key);
                return (Granted::Returned, None);
            }
            return (Granted::Ignored, None);
        }
        if returned {
            return (Granted::Ignored, None);
        }
        let lowered = connections < local.granted;
        local.granted = connections;
        let mut release = None;
        if lowered || local.releasing {
            // Lowered, or raised while a lowered grant was still being released: what is
            // held now may already be within it.
            if holding <= connections {
                local.releasing = false;
                release = Some(Report::Released {
                    to: connections,
                    pace: None,
                });
            } else {
                local.releasing = true;
            }
        }
        (Granted::Set(connections), release)
    }

    /// This shard's connections of `key` are now `holding`: the release to report, if a
    /// lowered grant waited for them.
    pub fn holding(&mut self, key: &str, holding: u32) -> Option<Report> {
        let local = self.scopes.get_mut(key)?;
        if !local.releasing || local.returning || holding > local.granted {
            return None;
        }
        local.releasing = false;
        Some(Report::Released {
            to: local.granted,
            pace: None,
        })
    }

    /// The shard forgot `key` (idle, nothing open): the return to report, if it held or
    /// asked for a share.
    pub fn forget(&mut self, key: &str) -> Option<Report> {
        let local = self.scopes.get_mut(key)?;
        if local.returning {
            return None;
        }
        *local = Local {
            returning: true,
            ..Local::default()
        };
        Some(Report::Return)
    }
}

#[cfg(test)]
mod tests;
