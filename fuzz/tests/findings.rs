//! Findings of the fuzz targets that needed a fix outside `fuzz/`, kept as regression tests
//! (crashes found by `cargo fuzz run` are kept as inputs in `regressions/` instead).

use spate::queue::record::{
    encode_record, CommitPayload, Kind, RecipientPayload, SegmentHeader, RECORD_HEADER_BYTES,
};

fn record(out: &mut Vec<u8>, seq: u64, kind: Kind, payload: &[u8]) {
    let mut buf = vec![0u8; RECORD_HEADER_BYTES + payload.len()];
    encode_record(&mut buf, seq, kind, payload);
    out.extend_from_slice(&buf);
}

/// One committed recipient at `seq` (its commit at `seq + 1`).
fn committed_recipient(out: &mut Vec<u8>, seq: u64) {
    let mut payload = Vec::new();
    RecipientPayload {
        message_seq: 0,
        recipient: "a@x.example",
        values: Vec::new(),
    }
    .encode(&mut payload);
    record(out, seq, Kind::Recipient, &payload);
    let commit = CommitPayload {
        batch_id: 1,
        chunk: 0,
        first_seq: seq,
        records: 1,
        committed_unix_ms: 1,
    };
    record(out, seq + 1, Kind::Commit, &commit.encode());
}

/// `queue_recovery`: a record whose sequence number jumps far ahead made `Index::place`
/// fill every skipped number with a 24-byte entry, so a few hundred bytes of segment
/// (CRC-valid, as a bug or a crafted file can make them) allocated gigabytes. Fixed:
/// recovery allows forward jumps only as far as the segments' records could account for,
/// and marks the replay damaged beyond that (`ShardQueue::open` refuses to start on it).
#[test]
fn a_far_sequence_number_does_not_make_recovery_allocate_per_skipped_number() {
    let header = SegmentHeader {
        shard: 0,
        base_seq: 0,
        created_unix_ms: 1,
        segment_bytes: 0,
    };
    let mut seg = header.encode().to_vec();
    committed_recipient(&mut seg, 0);
    committed_recipient(&mut seg, 1 << 20);
    seg.extend_from_slice(&[0; 64]);
    let replay = spate_fuzz::queue::recover_bounded(&[seg]);
    let (_, why) = replay.damage.expect("the jump is reported");
    assert!(why.contains("jumps"), "{why}");
}
