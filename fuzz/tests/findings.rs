//! Findings of the fuzz targets that need a change in a file the fuzzing work could not
//! touch. Each test fails today; `cargo test -- --ignored` in fuzz/ shows them. Once fixed,
//! drop the `#[ignore]` (and turn on what the target gates, as each test says).

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

/// `queue_recovery` (with `FORWARD_SEQ_JUMPS`): a record whose sequence number jumps far
/// ahead makes `Index::place` fill every skipped number with a 24-byte entry, so a few
/// hundred bytes of segment (CRC-valid, as a bug or a crafted file can make them) allocate
/// gigabytes; a sequence number of `u64::MAX` overflows `Replay::record`'s `r.seq + 1`.
/// Here the jump is 2^20, so the test fails fast instead of exhausting memory.
#[test]
#[ignore = "needs a fix in src/queue/store.rs (see fuzz/README.md)"]
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
    spate_fuzz::queue::recover_bounded(&[seg]);
}
