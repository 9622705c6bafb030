//! One shard's outbound connections by remote address (IP and port; with egress sources, by
//! source and remote address: a `Peer`), across throttle scopes,
//! sans I/O. Two things a scope cannot see alone live here:
//!
//! - **A cap per address.** Thousands of customer domains of Microsoft 365 or Google
//!   Workspace have MX names of their own that resolve to the same few addresses; each is its
//!   own site and scope with its own connection limit, and together they would open thousands
//!   of connections to one address at once. At most `cap` connections per address are open
//!   (in use, parked or closing); a worker that wants another waits in line for the address.
//! - **Reuse across scopes** (as Postfix's connection cache does). A worker whose scope has
//!   nothing left to send parks its connection here instead of closing it; a worker of any
//!   scope whose next hop resolves to the same address (and wants the same TLS policy) takes
//!   it instead of connecting, so a long tail of small sites behind one receiver costs a
//!   transaction each, not a connection each. A connection parked at an address with workers
//!   in line wakes the first of them. Parked connections close after `park_for` idle, and
//!   first when the shard's connection budget needs their room.
//!
//! Generic over the connection `C` and the waiter `W` (the shell's wake-up channel), so the
//! bookkeeping is tested here without sockets. The shell pairs every call that moves a
//! connection in or out of the parked set with the owner's count of parked connections
//! (`Owner::park`, `Owner::unpark`), which counts them against the connection budget.

use crate::smtp::session::TlsPolicy;
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// Connections to one address a shard keeps open at most unless `[delivery]
/// ip_connection_limit` says otherwise (engine-wide; each shard gets its share).
pub const IP_CONNECTION_LIMIT: u32 = 100;

/// Whether a connection made under `policy` may serve another scope. A verified connection
/// vouches for the name it was verified against only, so it stays with its scope.
pub fn reusable_policy(policy: TlsPolicy) -> bool {
    policy != TlsPolicy::Verify
}

/// Where a connection goes from and to: the egress source's address it is bound to (none:
/// the system's choice) and the remote address. A receiver counts, and a connection
/// serves, one such pair: a connection from one source is never reused for another's mail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Peer {
    pub local: Option<IpAddr>,
    pub remote: SocketAddr,
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.local {
            Some(local) => write!(f, "{} from {local}", self.remote),
            None => write!(f, "{}", self.remote),
        }
    }
}

struct Parked<C> {
    conn: C,
    policy: TlsPolicy,
    since: Instant,
    /// Parked while a worker waited for the address, which was woken for it: not evicted.
    promised: bool,
}

struct Endpoint<C, W> {
    /// Connections open to the address: in use, parked, or closing.
    open: u32,
    parked: VecDeque<Parked<C>>,
    /// Workers in line, with the TLS policy each wants.
    waiters: VecDeque<(W, TlsPolicy)>,
}

impl<C, W> Default for Endpoint<C, W> {
    fn default() -> Self {
        Endpoint {
            open: 0,
            parked: VecDeque::new(),
            waiters: VecDeque::new(),
        }
    }
}

/// What a worker that wants a connection to an address gets.
#[derive(Debug, PartialEq)]
pub enum Acquire<C> {
    /// A parked connection (the caller tells the owner: `Owner::unpark`).
    Parked(C),
    /// A slot: open a connection, then `opened` or `closed` (if the connect failed).
    Open,
    /// The address is at its cap: wait in line (`wait`) for a slot or a connection.
    Full,
}

pub struct Endpoints<C, W> {
    /// Connections per address at most (this shard's share).
    cap: u32,
    /// A parked connection idle this long is closed.
    park_for: Duration,
    by_addr: HashMap<Peer, Endpoint<C, W>>,
    parked: usize,
}

impl<C, W> Endpoints<C, W> {
    pub fn new(cap: u32, park_for: Duration) -> Self {
        Endpoints {
            cap: cap.max(1),
            park_for,
            by_addr: HashMap::new(),
            parked: 0,
        }
    }

    /// Connections parked, across addresses.
    pub fn parked(&self) -> usize {
        self.parked
    }

    /// Connections open to `addr` (in use, parked or closing).
    pub fn open(&self, addr: Peer) -> u32 {
        self.by_addr.get(&addr).map_or(0, |e| e.open)
    }

    /// The most connections per address.
    pub fn cap(&self) -> u32 {
        self.cap
    }

    /// True while workers wait in line for `addr`: a worker holding a connection to it with
    /// nothing to send hands it over rather than idle on it.
    pub fn has_waiters(&self, addr: Peer) -> bool {
        self.by_addr
            .get(&addr)
            .is_some_and(|e| !e.waiters.is_empty())
    }

    /// A worker wants a connection to `addr` under `policy`: the most recently parked one
    /// made under the same policy, else a slot if the address is below its cap.
    pub fn acquire(&mut self, addr: Peer, policy: TlsPolicy) -> Acquire<C> {
        let e = self.by_addr.entry(addr).or_default();
        if reusable_policy(policy) {
            if let Some(i) = e.parked.iter().rposition(|p| p.policy == policy) {
                let p = e.parked.remove(i).expect("index from rposition");
                self.parked -= 1;
                return Acquire::Parked(p.conn);
            }
        }
        if e.open < self.cap {
            e.open += 1;
            return Acquire::Open;
        }
        Acquire::Full
    }

    /// Waits in line for `addr` wanting `policy` (after `Acquire::Full`): woken for the next
    /// connection parked there under that policy (`release`), or when a slot frees
    /// (`closed`, `wake_if_room`).
    pub fn wait(&mut self, addr: Peer, policy: TlsPolicy, waiter: W) {
        self.by_addr
            .entry(addr)
            .or_default()
            .waiters
            .push_back((waiter, policy));
    }

    /// The first worker in line for `addr`, to wake, if the address has a free slot: after a
    /// woken worker took a parked connection instead of the slot it was woken for, or gave up.
    pub fn wake_if_room(&mut self, addr: Peer) -> Option<W> {
        let cap = self.cap;
        let e = self.by_addr.get_mut(&addr)?;
        if e.open < cap {
            e.waiters.pop_front().map(|(w, _)| w)
        } else {
            None
        }
    }

    /// A worker is done with its connection to `addr`, which is usable and was made under
    /// `policy`: parked, and the first worker in line for the address wanting that policy,
    /// if any, is returned to be woken (it acquires again and finds it). A connection under a
    /// policy that cannot serve another scope (`reusable_policy`) comes back as `Err`: close
    /// it.
    pub fn release(
        &mut self,
        addr: Peer,
        conn: C,
        policy: TlsPolicy,
        now: Instant,
    ) -> Result<Option<W>, C> {
        if !reusable_policy(policy) {
            return Err(conn);
        }
        let e = self.by_addr.entry(addr).or_default();
        let waiter = e
            .waiters
            .iter()
            .position(|(_, p)| *p == policy)
            .and_then(|i| e.waiters.remove(i))
            .map(|(w, _)| w);
        e.parked.push_back(Parked {
            conn,
            policy,
            since: now,
            promised: waiter.is_some(),
        });
        self.parked += 1;
        Ok(waiter)
    }

    /// A worker in line for `addr` gives up waiting: `is_mine` picks its entry out.
    pub fn unwait(&mut self, addr: Peer, is_mine: impl Fn(&W) -> bool) {
        if let Some(e) = self.by_addr.get_mut(&addr) {
            e.waiters.retain(|(w, _)| !is_mine(w));
            if e.open == 0 && e.waiters.is_empty() {
                self.by_addr.remove(&addr);
            }
        }
    }

    /// A connection to `addr` is closed (or its connect failed): its slot frees, and the
    /// first worker in line for the address, if any, is returned to be woken (it acquires
    /// again).
    pub fn closed(&mut self, addr: Peer) -> Option<W> {
        let e = self.by_addr.get_mut(&addr)?;
        e.open = e.open.saturating_sub(1);
        let w = e.waiters.pop_front().map(|(w, _)| w);
        if e.open == 0 && e.waiters.is_empty() {
            self.by_addr.remove(&addr);
        }
        w
    }

    /// Takes parked connections idle for `park_for` out to be closed (they stay counted open
    /// until `closed`).
    pub fn expired(&mut self, now: Instant) -> Vec<(Peer, C)> {
        let park_for = self.park_for;
        self.take_parked(|p| now.duration_since(p.since) >= park_for)
    }

    /// Takes up to `n` parked connections out to be closed (the budget needs their room),
    /// longest idle first: only those at addresses nobody waits for and not parked for a
    /// worker in line, whose room would go to the same address anyway.
    pub fn evict(&mut self, n: usize) -> Vec<(Peer, C)> {
        if self.parked == 0 || n == 0 {
            return Vec::new();
        }
        let mut all: Vec<(Instant, Peer)> = self
            .by_addr
            .iter()
            .filter(|(_, e)| e.waiters.is_empty())
            .flat_map(|(a, e)| {
                e.parked
                    .iter()
                    .filter(|p| !p.promised)
                    .map(move |p| (p.since, *a))
            })
            .collect();
        all.sort_unstable();
        all.truncate(n);
        let mut out = Vec::new();
        for (since, addr) in all {
            let Some(e) = self.by_addr.get_mut(&addr) else {
                continue;
            };
            if let Some(i) = e
                .parked
                .iter()
                .position(|p| p.since == since && !p.promised)
            {
                let p = e.parked.remove(i).expect("index from position");
                self.parked -= 1;
                out.push((addr, p.conn));
            }
        }
        out
    }

    /// Takes the parked connections `pick` chooses out to be closed, except those promised
    /// to a worker in line (it takes them soon).
    pub fn take_where(&mut self, pick: impl Fn(&C) -> bool) -> Vec<(Peer, C)> {
        self.take_parked(|p| !p.promised && pick(&p.conn))
    }

    /// Takes every parked connection out to be closed (the shard is stopping).
    pub fn drain(&mut self) -> Vec<(Peer, C)> {
        self.take_parked(|_| true)
    }

    fn take_parked(&mut self, pick: impl Fn(&Parked<C>) -> bool) -> Vec<(Peer, C)> {
        let mut out = Vec::new();
        for (addr, e) in &mut self.by_addr {
            let mut kept = VecDeque::with_capacity(e.parked.len());
            for p in e.parked.drain(..) {
                if pick(&p) {
                    out.push((*addr, p.conn));
                } else {
                    kept.push_back(p);
                }
            }
            e.parked = kept;
        }
        self.parked -= out.len();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: TlsPolicy = TlsPolicy::Opportunistic;

    fn addr(last: u8) -> Peer {
        Peer {
            local: None,
            remote: SocketAddr::from(([127, 0, 0, last], 25)),
        }
    }

    #[test]
    fn an_address_gets_at_most_its_cap_and_a_freed_slot_wakes_the_first_in_line() {
        let mut t: Endpoints<&str, u32> = Endpoints::new(2, Duration::from_secs(2));
        let a = addr(1);
        assert_eq!(t.acquire(a, P), Acquire::Open);
        assert_eq!(t.acquire(a, P), Acquire::Open);
        assert_eq!(t.acquire(a, P), Acquire::Full);
        // Another address has its own cap.
        assert_eq!(t.acquire(addr(2), P), Acquire::Open);
        t.wait(a, P, 7);
        t.wait(a, P, 8);
        assert!(t.has_waiters(a));
        assert_eq!(t.closed(a), Some(7));
        assert_eq!(t.open(a), 1);
        assert_eq!(t.acquire(a, P), Acquire::Open);
        assert_eq!(t.closed(a), Some(8));
        assert_eq!(t.closed(a), None);
        assert!(!t.has_waiters(a));
    }

    #[test]
    fn a_released_connection_parks_for_any_scope_and_wakes_the_first_in_line() {
        let t0 = Instant::now();
        let mut t: Endpoints<&str, u32> = Endpoints::new(1, Duration::from_secs(2));
        let a = addr(1);
        assert_eq!(t.acquire(a, P), Acquire::Open);
        assert_eq!(t.acquire(a, P), Acquire::Full);
        t.wait(a, P, 1);
        t.wait(a, P, 2);
        t.unwait(a, |w| *w == 1);
        // Parked, and the worker still in line is woken; still one connection open.
        assert_eq!(t.release(a, "c1", P, t0), Ok(Some(2)));
        assert_eq!((t.open(a), t.parked()), (1, 1));
        // The next worker for the address (whatever its scope) takes it instead of
        // connecting, if it wants the same TLS policy.
        assert_eq!(t.acquire(a, TlsPolicy::Disabled), Acquire::Full);
        assert_eq!(t.acquire(a, P), Acquire::Parked("c1"));
        assert_eq!((t.open(a), t.parked()), (1, 0));
        // A worker in line for another TLS policy is not woken for it.
        t.wait(a, TlsPolicy::Disabled, 3);
        assert_eq!(t.release(a, "c1", P, t0), Ok(None));
        assert!(t.has_waiters(a));
        assert_eq!(t.wake_if_room(a), None, "at its cap");
        assert_eq!(t.acquire(a, P), Acquire::Parked("c1"));
        // c1 is closed: its slot goes to the worker in line.
        assert_eq!(t.closed(a), Some(3));
        assert_eq!(t.wake_if_room(a), None, "nobody left in line");
    }

    #[test]
    fn verified_connections_are_never_shared() {
        let mut t: Endpoints<&str, u32> = Endpoints::new(4, Duration::from_secs(2));
        let a = addr(1);
        assert_eq!(t.acquire(a, TlsPolicy::Verify), Acquire::Open);
        assert_eq!(
            t.release(a, "v", TlsPolicy::Verify, Instant::now()),
            Err("v")
        );
        assert_eq!(t.parked(), 0);
    }

    #[test]
    fn parked_connections_expire_and_are_evicted_longest_idle_first() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut t: Endpoints<&str, u32> = Endpoints::new(8, 2 * s);
        for (i, name) in ["old", "mid", "new"].into_iter().enumerate() {
            let a = addr(i as u8 + 1);
            assert_eq!(t.acquire(a, P), Acquire::Open);
            t.release(a, name, P, t0 + s * i as u32).unwrap();
        }
        // Someone waits for the oldest one's address: it is spared.
        t.wait(addr(1), P, 9);
        assert_eq!(t.evict(1), vec![(addr(2), "mid")]);
        t.unwait(addr(1), |_| true);
        assert_eq!(t.evict(1), vec![(addr(1), "old")]);
        t.closed(addr(2));
        // One parked for a worker in line (woken for it) is spared too.
        let c = addr(5);
        assert_eq!(t.acquire(c, P), Acquire::Open);
        assert_eq!(t.acquire(c, P), Acquire::Open);
        t.wait(c, P, 1);
        assert_eq!(t.release(c, "promised", P, t0), Ok(Some(1)));
        assert_eq!(t.evict(8), vec![(addr(3), "new")]);
        assert_eq!(t.acquire(c, P), Acquire::Parked("promised"));
        t.release(addr(3), "new", P, t0 + s * 2).unwrap();
        assert_eq!(t.expired(t0 + s * 3), vec![]);
        assert_eq!(t.expired(t0 + s * 4), vec![(addr(3), "new")]);
        assert_eq!(t.parked(), 0);
        // Taken out to close, each stays open until closed.
        assert_eq!((t.open(addr(1)), t.open(addr(3))), (1, 1));
        t.closed(addr(1));
        assert_eq!(t.open(addr(1)), 0);
        let b = addr(4);
        assert_eq!(t.acquire(b, P), Acquire::Open);
        t.release(b, "last", P, t0).unwrap();
        assert_eq!(t.drain(), vec![(b, "last")]);
        assert_eq!(t.parked(), 0);
    }
}
