//! The queue's record codec (`queue::record`) and recovery (`queue::store::Replay` over the
//! bytes of segments, as `ShardQueue::open` and `spate queue summary` read them).
//!
//! `check_record`: the input is one payload or frame. Properties: every decoder returns an
//! error instead of panicking; allocates at most a small multiple of the input (plus 16 KiB);
//! and what decodes encodes back to exactly the input bytes (the format has one encoding).
//! The frame decoder is also run with the checksum fixed up, so it gets past the CRC.
//!
//! `check_recovery`: the input is a script (`Op`s, read with `arbitrary`) that writes
//! segments the way the store does (message, recipient, commit and outcome records with
//! valid checksums, sequence numbers going forward) and damages them (raw records, torn
//! bytes, zeroed gaps, sequence numbers that go back or jump). Properties:
//! - recovery never panics;
//! - it allocates in proportion to the bytes it reads;
//! - it stops at a record boundary within the segment (`valid_end`);
//! - the index is consistent: `live()` counts the live entries, each points at a recipient
//!   record of its segment whose domain is the entry's, the per-domain counts add up;
//! - for an undamaged script, exactly the committed recipients without a final outcome are
//!   live: nothing committed is lost, nothing uncommitted appears.

use crate::alloc;
use arbitrary::{Arbitrary, Unstructured};
use spate::queue::record::{
    decode_frame, encode_record, CommitPayload, Frame, Kind, MessagePayload, OutcomePayload,
    OutcomeState, Reader, RecipientPayload, SegmentHeader, COMMIT_PAYLOAD_BYTES,
    OUTCOME_PAYLOAD_BYTES, RECORD_HEADER_BYTES, SEGMENT_HEADER_BYTES,
};
use spate::queue::segment::scan_bytes;
use spate::queue::store::{EntryState, Replay};
use std::collections::BTreeSet;

/// Bytes any decode may allocate beyond `ALLOC_PER_INPUT_BYTE` times its input.
const ALLOC_SLACK_BYTES: usize = 16 << 10;
const ALLOC_PER_INPUT_BYTE: usize = 16;

pub fn check_record(input: &[u8]) {
    let bound = ALLOC_SLACK_BYTES + ALLOC_PER_INPUT_BYTE * input.len();
    let (_, peak) = alloc::measure(|| decode_all(input));
    assert!(
        peak <= bound,
        "decoding {} bytes allocated {peak}",
        input.len()
    );
    if input.len() >= RECORD_HEADER_BYTES {
        let mut fixed = input.to_vec();
        let len = u32::from_le_bytes(fixed[0..4].try_into().unwrap()) as usize;
        let end = RECORD_HEADER_BYTES.saturating_add(len).min(fixed.len());
        let crc = crc32c::crc32c(&fixed[8..end]);
        fixed[4..8].copy_from_slice(&crc.to_le_bytes());
        check_frame(&fixed);
    }
}

fn decode_all(input: &[u8]) {
    if let Ok(m) = MessagePayload::decode(input) {
        let mut out = Vec::new();
        m.encode(&mut out);
        assert!(out == input, "a message payload re-encodes differently");
    }
    if let Ok(r) = RecipientPayload::decode(input) {
        let mut out = Vec::new();
        r.encode(&mut out);
        assert!(out == input, "a recipient payload re-encodes differently");
        let (seq, rcpt) = RecipientPayload::decode_recipient(input).expect("a prefix decodes");
        assert_eq!((seq, rcpt), (r.message_seq, r.recipient));
    }
    let _ = RecipientPayload::decode_recipient(input);
    if let Ok(c) = CommitPayload::decode(input) {
        assert_eq!(input.len(), COMMIT_PAYLOAD_BYTES);
        assert!(
            c.encode() == input,
            "a commit payload re-encodes differently"
        );
    }
    if let Ok(o) = OutcomePayload::decode(input) {
        assert_eq!(input.len(), OUTCOME_PAYLOAD_BYTES);
        assert!(
            o.encode() == input,
            "an outcome payload re-encodes differently"
        );
    }
    if let Ok(h) = SegmentHeader::decode(input) {
        assert!(h.encode()[..] == input[..SEGMENT_HEADER_BYTES]);
    }
    check_frame(input);
    let mut r = Reader::new(input);
    while r.str16().is_ok() {}
    let mut r = Reader::new(input);
    while r.bytes32().is_ok() {}
}

fn check_frame(input: &[u8]) {
    match decode_frame(input) {
        Frame::Record(r, n) => {
            assert_eq!(n, RECORD_HEADER_BYTES + r.payload.len());
            assert!(n <= input.len());
            let mut out = vec![0u8; n];
            assert_eq!(encode_record(&mut out, r.seq, r.kind, r.payload), n);
            assert!(out == input[..n], "a frame re-encodes differently");
        }
        Frame::End => assert!(
            input.iter().take(RECORD_HEADER_BYTES).all(|&b| b == 0),
            "End on a non-zero header"
        ),
        Frame::Invalid(why) => assert!(!why.is_empty()),
    }
}

// ---- Recovery ----

/// One step of a recovery script.
#[derive(Debug, Arbitrary)]
enum Op {
    /// A message record for batch `batch % 4`, with `vars % 4` variable names.
    Message { batch: u8, vars: u8 },
    /// A recipient of the `message`-th message written so far, at domain `d{domain % 8}`.
    Recipient { message: u8, domain: u8, values: u8 },
    /// A commit of every record since the last one, as the store writes it.
    Commit { batch: u8, chunk: u8 },
    /// An outcome for the `recipient`-th recipient written so far.
    Outcome {
        recipient: u8,
        state: u8,
        attempts: u16,
        due_s: u16,
    },
    /// Damage: a record of any kind and payload, with a valid checksum.
    Raw { kind: u8, payload: Vec<u8> },
    /// Damage: the next sequence number moves back by `-delta` (stale data follows), or
    /// forward by `delta` (recovery allows a crash's worth of skipped numbers, and refuses
    /// the segments beyond that).
    SeqJump { delta: i16 },
    /// Damage: bytes written without a frame (a torn write).
    Garbage { bytes: Vec<u8> },
    /// Damage: one byte already written changes.
    Flip { at: u16, xor: u8 },
    /// Damage: `len` zero bytes (a gap in what reached the disk).
    Gap { len: u8 },
    /// The next segment starts here (its base is the next sequence number).
    NextSegment,
}

/// Segments may not grow past this; a script that would is cut there.
const SEGMENT_BYTES_MAX: usize = 64 << 10;
/// Zeroed space after the last record of each segment, as a preallocated file has.
const SEGMENT_SLACK_BYTES: usize = 64;
const SEGMENTS_MAX: usize = 4;

/// The segments a script wrote, and what an undamaged recovery must find.
#[derive(Default)]
struct Written {
    segments: Vec<Vec<u8>>,
    base_seqs: Vec<u64>,
    next_seq: u64,
    /// The highest sequence number written so far.
    highest_seq: Option<u64>,
    damaged: bool,
    /// Sequence numbers of messages and recipients written (committed or not).
    messages: Vec<u64>,
    recipients: Vec<u64>,
    /// Records since the last commit in this segment.
    pending: Vec<(u64, Option<u64>)>,
    committed: BTreeSet<u64>,
    finished: BTreeSet<u64>,
}

impl Written {
    fn new(base_seq: u64) -> Written {
        let mut w = Written {
            next_seq: base_seq,
            ..Written::default()
        };
        w.new_segment();
        w
    }

    fn new_segment(&mut self) {
        let header = SegmentHeader {
            shard: 0,
            base_seq: self.next_seq,
            created_unix_ms: 1,
            segment_bytes: 0,
        };
        self.segments.push(header.encode().to_vec());
        self.base_seqs.push(self.next_seq);
        self.pending.clear();
    }

    fn segment(&mut self) -> &mut Vec<u8> {
        self.segments.last_mut().expect("a segment")
    }

    fn record(&mut self, kind: Kind, payload: &[u8]) -> u64 {
        let seq = self.next_seq;
        self.highest_seq = self.highest_seq.max(Some(seq));
        let mut out = vec![0u8; RECORD_HEADER_BYTES + payload.len()];
        encode_record(&mut out, seq, kind, payload);
        self.segment().extend_from_slice(&out);
        self.next_seq = self.next_seq.wrapping_add(1);
        seq
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Message { batch, vars } => {
                let names: Vec<String> = (0..vars % 4).map(|i| format!("v{i}")).collect();
                let mut payload = Vec::new();
                MessagePayload {
                    batch_id: u64::from(batch % 4),
                    created_unix_ms: 1,
                    flags: 0,
                    sender: "b@acme.example",
                    campaign: "c",
                    tenant: "",
                    var_names: names.iter().map(String::as_str).collect(),
                    body: b"Subject: x\r\n\r\nbody\r\n",
                    pool: if batch % 2 == 0 { "" } else { "warm" },
                }
                .encode(&mut payload);
                let seq = self.record(Kind::Message, &payload);
                self.messages.push(seq);
                self.pending.push((seq, None));
            }
            Op::Recipient {
                message,
                domain,
                values,
            } => {
                let message_seq = pick(&self.messages, message).unwrap_or(0);
                let rcpt = format!("r{}@d{}.example", self.recipients.len(), domain % 8);
                let vals: Vec<&[u8]> = (0..values % 4).map(|_| &b"v"[..]).collect();
                let mut payload = Vec::new();
                RecipientPayload {
                    message_seq,
                    recipient: &rcpt,
                    values: vals,
                }
                .encode(&mut payload);
                let seq = self.record(Kind::Recipient, &payload);
                self.recipients.push(seq);
                self.pending.push((seq, Some(seq)));
            }
            Op::Commit { batch, chunk } => {
                let first_seq = self.pending.first().map_or(self.next_seq, |p| p.0);
                let commit = CommitPayload {
                    batch_id: u64::from(batch % 4),
                    chunk: u32::from(chunk),
                    first_seq,
                    records: self.pending.len() as u32,
                    committed_unix_ms: 1,
                };
                self.record(Kind::Commit, &commit.encode());
                for (_, rcpt) in std::mem::take(&mut self.pending) {
                    self.committed.extend(rcpt);
                }
            }
            Op::Outcome {
                recipient,
                state,
                attempts,
                due_s,
            } => {
                let recipient_seq = pick(&self.recipients, recipient).unwrap_or(0);
                let state = match state % 5 {
                    0 => OutcomeState::Delivered,
                    1 => OutcomeState::Bounced,
                    2 => OutcomeState::Expired,
                    3 => OutcomeState::Deferred,
                    _ => OutcomeState::Moved,
                };
                let outcome = OutcomePayload {
                    recipient_seq,
                    state,
                    attempts,
                    due_unix_ms: u64::from(due_s) * 1000,
                    ts_unix_ms: 1,
                };
                let seq = self.record(Kind::Outcome, &outcome.encode());
                // The store writes outcomes between chunks, and inside an intake chunk only
                // the Deferred states of its own recipients (a transfer's retry states);
                // any other inside a chunk (compaction's Moved markers) is damage to this
                // model.
                let own_deferral = state == OutcomeState::Deferred
                    && self
                        .pending
                        .iter()
                        .any(|&(_, r)| r == Some(recipient_seq));
                if own_deferral {
                    self.pending.push((seq, None));
                } else if self.pending.is_empty() && state == OutcomeState::Moved {
                    // Compaction writes Moved inside its chunk, after the recipient's copy;
                    // alone, it leaves the domain's slot taken (the copy would have reused it).
                    self.damaged = true;
                } else if self.pending.is_empty() {
                    if state.is_final() && self.committed.contains(&recipient_seq) {
                        self.finished.insert(recipient_seq);
                    }
                } else {
                    self.damaged = true;
                    self.pending.push((seq, None));
                }
            }
            Op::Raw { kind, payload } => {
                self.damaged = true;
                let mut out = vec![0u8; RECORD_HEADER_BYTES + payload.len()];
                let kind = match kind % 4 {
                    0 => Kind::Message,
                    1 => Kind::Recipient,
                    2 => Kind::Commit,
                    _ => Kind::Outcome,
                };
                encode_record(&mut out, self.next_seq, kind, &payload);
                self.highest_seq = self.highest_seq.max(Some(self.next_seq));
                self.segment().extend_from_slice(&out);
                if kind != Kind::Commit {
                    // So that the next `Commit` covers it, and recovery applies it.
                    self.pending.push((self.next_seq, None));
                }
                self.next_seq = self.next_seq.wrapping_add(1);
            }
            Op::SeqJump { delta } => {
                self.damaged = true;
                let delta = i64::from(delta);
                self.next_seq = if delta < 0 {
                    self.next_seq.saturating_sub(delta.unsigned_abs())
                } else {
                    self.next_seq.saturating_add(delta as u64)
                };
            }
            Op::Garbage { bytes } => {
                self.damaged = true;
                self.segment().extend_from_slice(&bytes);
            }
            Op::Flip { at, xor } => {
                self.damaged = true;
                let seg = self.segment();
                let at = usize::from(at) % seg.len();
                seg[at] ^= xor;
            }
            Op::Gap { len } => {
                self.damaged = true;
                let len = usize::from(len);
                self.segment().extend(std::iter::repeat_n(0, len));
            }
            Op::NextSegment => {
                // The store starts a segment at its next sequence number, which never goes
                // back (a jump back is stale data inside a segment): so bases ascend, as
                // `list_segments` orders them.
                self.next_seq = self
                    .next_seq
                    .max(self.highest_seq.map_or(0, |s| s.saturating_add(1)));
                if self.segments.len() < SEGMENTS_MAX
                    && self.next_seq > self.base_seqs[self.base_seqs.len() - 1]
                {
                    self.new_segment();
                }
            }
        }
    }
}

fn pick(seqs: &[u64], i: u8) -> Option<u64> {
    seqs.get(usize::from(i) % seqs.len().max(1)).copied()
}

pub fn check_recovery(input: &[u8]) {
    let mut u = Unstructured::new(input);
    let base_seq = match u.arbitrary::<u8>().unwrap_or(0) {
        0..=200 => 0,
        b => u64::from(b) << 8,
    };
    let mut w = Written::new(base_seq);
    while !u.is_empty() {
        let Ok(op) = u.arbitrary::<Op>() else { break };
        if std::env::var_os("SPATE_FUZZ_DEBUG").is_some() {
            eprintln!("{op:?}");
        }
        w.apply(op);
        if w.segment().len() > SEGMENT_BYTES_MAX {
            break;
        }
    }
    // A header checksum flipped away is refused before any scan, as `Segment::open` does.
    if w.segments.iter().any(|s| SegmentHeader::decode(s).is_err()) {
        return;
    }
    for seg in &mut w.segments {
        seg.extend(std::iter::repeat_n(0, SEGMENT_SLACK_BYTES));
    }
    let replay = recover_bounded(&w.segments);
    check_index(&replay, &w);
}

/// Recovers `segments` (whole segments, headers included, in base order) and asserts that
/// recovery allocated in proportion to their bytes.
pub fn recover_bounded(segments: &[Vec<u8>]) -> Replay {
    let total: usize = segments.iter().map(Vec::len).sum();
    let bound = ALLOC_SLACK_BYTES + ALLOC_PER_INPUT_BYTE * total;
    let (replay, peak) = alloc::measure(|| recover(segments));
    assert!(
        peak <= bound,
        "recovering {total} bytes of segments allocated {peak}"
    );
    replay
}

/// Recovery as `ShardQueue::open` does it, minus the files.
fn recover(segments: &[Vec<u8>]) -> Replay {
    let mut replay = Replay::default();
    for seg in segments {
        let header = SegmentHeader::decode(seg).expect("checked above");
        replay.begin_segment(header.base_seq, seg.len());
        let end = scan_bytes(seg, |offset, r| replay.record(seg, offset, r));
        assert!(end.valid_end <= seg.len());
        assert!(
            replay.valid_end <= end.valid_end,
            "durable end past the scan"
        );
        assert!(replay.valid_end >= SEGMENT_HEADER_BYTES);
        if let Some((at, why)) = end.invalid {
            assert_eq!(at, end.valid_end);
            assert!(!why.is_empty());
        }
    }
    replay
}

fn check_index(replay: &Replay, w: &Written) {
    let index = &replay.index;
    let live: Vec<(u64, _)> = index.live_entries().collect();
    assert_eq!(
        live.len() as u64,
        index.live(),
        "live() counts the live entries"
    );
    let mut queued = vec![0u64; index.domain_counts.len()];
    let mut deferred = vec![0u64; index.domain_counts.len()];
    for (seq, e) in &live {
        assert_ne!(e.state, EntryState::Vacant);
        let d = e.domain as usize;
        queued[d] += 1;
        deferred[d] += u64::from(e.state == EntryState::Deferred);
        // The entry's record: find its segment by base sequence number.
        let i = w.base_seqs.partition_point(|base| base <= seq);
        let seg = &w.segments[i.checked_sub(1).expect("a segment holds the entry")];
        let at = e.offset as usize;
        let Frame::Record(r, _) = decode_frame(&seg[at..]) else {
            panic!("entry {seq} points at no record");
        };
        assert_eq!(r.seq, *seq, "entry {seq} points at another record");
        assert_eq!(r.kind, Kind::Recipient);
        let (_, rcpt) = RecipientPayload::decode_recipient(r.payload).expect("a recipient");
        let domain = rcpt.rsplit_once('@').map_or("", |(_, d)| d);
        assert_eq!(&*index.domain_names[d], domain, "entry {seq}'s domain");
    }
    for (d, counts) in index.domain_counts.iter().enumerate() {
        if index.domain_names[d].is_empty() {
            continue;
        }
        assert_eq!(
            counts.queued, queued[d],
            "queued count of {}",
            index.domain_names[d]
        );
        assert_eq!(
            counts.deferred, deferred[d],
            "deferred count of {}",
            index.domain_names[d]
        );
    }
    if !w.damaged {
        assert_eq!(replay.damage, None, "undamaged segments refused");
        assert!(
            index.domains_in_use() <= live.len(),
            "domains with no live recipient"
        );
        let want: Vec<u64> = w.committed.difference(&w.finished).copied().collect();
        let got: Vec<u64> = live.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(got, want, "live recipients after recovery");
    }
}
