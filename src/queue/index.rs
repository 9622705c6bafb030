//! The in-memory index of one shard's queue: a slot per sequence number from the oldest
//! live recipient on (24 bytes each), the message records live recipients need, the domain
//! table, and the committed chunks per batch (for de-duplication after a crash). Rebuilt from
//! the segments at every start (`replay`); changed only by the store's appends and outcomes.

use super::record::{OutcomePayload, OutcomeState};
use std::collections::{HashMap, HashSet, VecDeque};

/// Recipient state in the index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum EntryState {
    /// Not a recipient record (message, commit, outcome) or already final.
    Vacant = 0,
    Waiting = 1,
    Deferred = 2,
    /// Handed to delivery; in memory only (a restart makes it waiting again).
    InFlight = 3,
}

/// One sequence number's slot in the index: 24 bytes per queued recipient.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub message_seq: u64,
    /// Offset of the recipient record in its segment.
    pub offset: u32,
    pub domain: u32,
    /// For deferred recipients: seconds since the Unix epoch before which not to retry.
    pub due_unix_s: u32,
    pub state: EntryState,
    pub attempts: u8,
}

pub(super) const VACANT: Entry = Entry {
    message_seq: 0,
    offset: 0,
    domain: 0,
    due_unix_s: 0,
    state: EntryState::Vacant,
    attempts: 0,
};

#[derive(Debug, Clone)]
pub struct MessageInfo {
    pub batch_id: u64,
    pub created_unix_ms: u64,
    /// Offset of the message record in its segment.
    pub offset: u32,
    /// Live recipients that need this message record.
    pub live: u64,
    /// The campaign and tenant, for operators' holds and per-campaign progress.
    pub campaign: Box<str>,
    pub tenant: Box<str>,
    /// The pool its recipients leave from; empty for the system's address.
    pub pool: Box<str>,
    /// Transactional (`record::MESSAGE_PRIORITY`): ahead of campaign mail in its scope.
    pub priority: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainCounts {
    pub queued: u64,
    pub deferred: u64,
}

/// The derived state of a shard's queue; rebuilt from the segments at every start.
#[derive(Default)]
pub struct Index {
    first_seq: u64,
    pub(super) entries: VecDeque<Entry>,
    pub messages: HashMap<u64, MessageInfo>,
    domain_ids: HashMap<Box<str>, u32>,
    /// Indexed by an entry's `domain`. A domain's slot is freed when its last live recipient
    /// goes and reused for the next new domain, so these hold the domains with queued mail,
    /// not every domain ever seen.
    pub domain_names: Vec<Box<str>>,
    pub domain_counts: Vec<DomainCounts>,
    free_domain_ids: Vec<u32>,
    /// Committed chunks per batch (for de-duplication after a crash) and its message record.
    pub(super) batches: HashMap<u64, BatchState>,
    live: u64,
    /// Live recipients handed to delivery (rendered, until their outcome).
    in_flight: u64,
}

#[derive(Default, Debug)]
pub(super) struct BatchState {
    pub(super) message_seq: Option<u64>,
    pub(super) chunks: HashSet<u32>,
    /// First record of the batch's first committed chunk on this shard.
    pub(super) first_seq: u64,
}

impl Index {
    pub(super) fn entry_mut(&mut self, seq: u64) -> Option<&mut Entry> {
        let i = seq.checked_sub(self.first_seq)?;
        self.entries.get_mut(i as usize)
    }

    pub fn entry(&self, seq: u64) -> Option<&Entry> {
        let i = seq.checked_sub(self.first_seq)?;
        self.entries.get(i as usize)
    }

    pub(super) fn place(&mut self, seq: u64, e: Entry) {
        if self.entries.is_empty() {
            self.first_seq = seq;
        }
        let i = (seq - self.first_seq) as usize;
        while self.entries.len() < i {
            self.entries.push_back(VACANT);
        }
        assert_eq!(
            self.entries.len(),
            i,
            "index sequence numbers go forward only"
        );
        self.entries.push_back(e);
    }

    pub(super) fn domain_id(&mut self, domain: &str) -> u32 {
        if let Some(&id) = self.domain_ids.get(domain) {
            return id;
        }
        let id = match self.free_domain_ids.pop() {
            Some(id) => {
                self.domain_names[id as usize] = domain.into();
                self.domain_counts[id as usize] = DomainCounts::default();
                id
            }
            None => {
                self.domain_names.push(domain.into());
                self.domain_counts.push(DomainCounts::default());
                (self.domain_names.len() - 1) as u32
            }
        };
        self.domain_ids.insert(domain.into(), id);
        id
    }

    /// Frees a domain's slot once no live recipient refers to it.
    pub(super) fn release_domain_if_unused(&mut self, id: u32) {
        let i = id as usize;
        if self.domain_counts[i].queued > 0 || self.domain_names[i].is_empty() {
            return;
        }
        let name = std::mem::take(&mut self.domain_names[i]);
        self.domain_ids.remove(&name);
        self.free_domain_ids.push(id);
    }

    /// Domain slots in use (live domains), for tests of the bound.
    pub fn domains_in_use(&self) -> usize {
        self.domain_ids.len()
    }

    pub(super) fn add_recipient(
        &mut self,
        seq: u64,
        offset: u32,
        message_seq: u64,
        recipient: &str,
    ) {
        let domain = recipient.rsplit_once('@').map_or("", |(_, d)| d);
        let domain = self.domain_id(domain);
        self.place(
            seq,
            Entry {
                message_seq,
                offset,
                domain,
                due_unix_s: 0,
                state: EntryState::Waiting,
                attempts: 0,
            },
        );
        self.domain_counts[domain as usize].queued += 1;
        if let Some(m) = self.messages.get_mut(&message_seq) {
            m.live += 1;
        }
        self.live += 1;
    }

    pub(super) fn apply_outcome(&mut self, o: &OutcomePayload) {
        let Some(e) = self.entry_mut(o.recipient_seq) else {
            return;
        };
        let before = e.state;
        if before == EntryState::Vacant {
            return;
        }
        let (domain, message_seq) = (e.domain as usize, e.message_seq);
        e.attempts = o.attempts.min(u8::MAX as u16) as u8;
        match o.state {
            OutcomeState::Deferred => {
                e.state = EntryState::Deferred;
                e.due_unix_s = (o.due_unix_ms / 1000).min(u32::MAX as u64) as u32;
                if before != EntryState::Deferred {
                    self.domain_counts[domain].deferred += 1;
                }
            }
            OutcomeState::Delivered
            | OutcomeState::Bounced
            | OutcomeState::Expired
            | OutcomeState::Moved
            | OutcomeState::Transferred => {
                *e = VACANT;
                let counts = &mut self.domain_counts[domain];
                counts.queued -= 1;
                if before == EntryState::Deferred {
                    counts.deferred -= 1;
                }
                self.live -= 1;
                if let Some(m) = self.messages.get_mut(&message_seq) {
                    m.live -= 1;
                }
                // A move places the recipient again at once, under the same domain.
                if o.state != OutcomeState::Moved {
                    self.release_domain_if_unused(domain as u32);
                }
            }
        }
        if before == EntryState::InFlight {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        while matches!(self.entries.front(), Some(e) if e.state == EntryState::Vacant) {
            self.entries.pop_front();
            self.first_seq += 1;
        }
    }

    /// Moves a live recipient to its compacted copy, keeping its state.
    pub(super) fn move_entry(
        &mut self,
        old: u64,
        new: u64,
        offset: u32,
        message_seq: u64,
        entry: Entry,
    ) {
        self.apply_outcome(&OutcomePayload {
            recipient_seq: old,
            state: OutcomeState::Moved,
            attempts: 0,
            due_unix_ms: 0,
            ts_unix_ms: 0,
        });
        self.place(
            new,
            Entry {
                message_seq,
                offset,
                ..entry
            },
        );
        let counts = &mut self.domain_counts[entry.domain as usize];
        counts.queued += 1;
        if entry.state == EntryState::Deferred {
            counts.deferred += 1;
        }
        if let Some(m) = self.messages.get_mut(&message_seq) {
            m.live += 1;
        }
        self.live += 1;
    }

    /// Marks a live recipient as handed to delivery (`true`) or back in the queue (`false`).
    /// Returns false if the recipient is not live (or already in that state).
    pub fn set_in_flight(&mut self, seq: u64, in_flight: bool) -> bool {
        let Some(e) = self.entry_mut(seq) else {
            return false;
        };
        match (e.state, in_flight) {
            (EntryState::Waiting | EntryState::Deferred, true) => {
                let was_deferred = e.state == EntryState::Deferred;
                let domain = e.domain as usize;
                e.state = EntryState::InFlight;
                if was_deferred {
                    self.domain_counts[domain].deferred -= 1;
                }
                self.in_flight += 1;
                true
            }
            (EntryState::InFlight, false) => {
                e.state = EntryState::Waiting;
                self.in_flight = self.in_flight.saturating_sub(1);
                true
            }
            _ => false,
        }
    }

    pub(super) fn note_chunk(&mut self, batch_id: u64, chunk: u32, first_seq: u64) {
        let batch = self.batches.entry(batch_id).or_insert_with(|| BatchState {
            first_seq,
            ..Default::default()
        });
        batch.first_seq = batch.first_seq.min(first_seq);
        batch.chunks.insert(chunk);
    }

    /// True if a batch whose input is not yet released has records in `range`: its
    /// de-duplication state must outlive a crash, so that segment must stay.
    pub(super) fn unreleased_batch_in(&self, range: &std::ops::Range<u64>) -> bool {
        self.batches
            .values()
            .any(|b| !b.chunks.is_empty() && b.first_seq < range.end)
    }

    /// Recipients not yet final.
    pub fn live(&self) -> u64 {
        self.live
    }

    /// Live recipients in flight (handed to delivery, no outcome yet).
    pub fn in_flight(&self) -> u64 {
        self.in_flight
    }

    /// Live recipients with their sequence numbers, oldest first.
    pub fn live_entries(&self) -> impl Iterator<Item = (u64, &Entry)> + '_ {
        self.entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.state != EntryState::Vacant)
            .map(|(i, e)| (self.first_seq + i as u64, e))
    }

    pub fn has_chunk(&self, batch_id: u64, chunk: u32) -> bool {
        self.batches
            .get(&batch_id)
            .is_some_and(|b| b.chunks.contains(&chunk))
    }
}
