//! Queue hot paths: record append, group commit, recovery scan.
//!
//! cargo bench -p spate --bench queue
//!
//! Figures and the machine they came from: docs/benchmarks.md.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use spate::queue::record::RecipientPayload;
use spate::queue::store::{Chunk, MessageSpec, ShardQueue};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CHUNK: usize = 4096;
const SEGMENT_BYTES: u64 = 256 << 20;

fn message() -> Arc<MessageSpec> {
    Arc::new(MessageSpec {
        batch_id: 1,
        created_unix_ms: 1,
        flags: 0,
        sender: "bounces@acme.example".into(),
        campaign: "spring-sale".into(),
        tenant: "acme".into(),
        var_names: vec!["to".into(), "first_name".into(), "code".into()],
        body: vec![b'x'; 10 << 10],
        pool: String::new(),
    })
}

/// A chunk of typical recipients: address, first name, a code (about 70 bytes a record).
fn chunk(batch_id: u64, chunk_no: u32, message: &Arc<MessageSpec>) -> Chunk {
    let mut tails = Vec::with_capacity(CHUNK * 64);
    let mut ends = Vec::with_capacity(CHUNK);
    for i in 0..CHUNK {
        let rcpt = format!("user{i}@d{}.example", i % 100);
        let name = format!("Name{i}");
        RecipientPayload::encode_tail(
            &rcpt,
            &[rcpt.as_bytes(), name.as_bytes(), b"C012345"],
            &mut tails,
        );
        ends.push(tails.len() as u32);
    }
    Chunk {
        batch_id,
        chunk_no,
        message: Arc::clone(message),
        tails,
        ends,
        retry: Vec::new(),
    }
}

fn append(c: &mut Criterion) {
    let m = message();
    let template = chunk(1, 0, &m);
    let mut g = c.benchmark_group("queue");
    g.throughput(Throughput::Elements(CHUNK as u64));
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("append_chunk_4096_recipients", |b| {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = ShardQueue::open(dir.path(), 0, SEGMENT_BYTES).unwrap();
        let mut n = 0u32;
        b.iter_batched(
            || Chunk {
                batch_id: 1,
                chunk_no: 0,
                message: Arc::clone(&m),
                tails: template.tails.clone(),
                ends: template.ends.clone(),
                retry: Vec::new(),
            },
            |mut ch| {
                n += 1;
                ch.chunk_no = n;
                q.append_chunk(&ch).unwrap();
                // Keep the page cache from growing without bound over a long run.
                if n % 512 == 0 {
                    q.sync_now().unwrap();
                }
            },
            BatchSize::LargeInput,
        );
    });
    g.finish();
}

fn group_commit(c: &mut Criterion) {
    let m = message();
    let mut g = c.benchmark_group("queue");
    g.throughput(Throughput::Elements(16 * CHUNK as u64));
    g.sample_size(20);
    g.bench_function("group_commit_16_chunks_fdatasync", |b| {
        let dir = tempfile::tempdir().unwrap();
        let (mut q, _) = ShardQueue::open(dir.path(), 0, SEGMENT_BYTES).unwrap();
        let chunks: Vec<Chunk> = (0..16).map(|i| chunk(1, i, &m)).collect();
        let mut batch = 0u64;
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                batch += 1;
                let start = Instant::now();
                for ch in &chunks {
                    let ch = Chunk {
                        batch_id: batch,
                        chunk_no: ch.chunk_no,
                        message: Arc::clone(&ch.message),
                        tails: ch.tails.clone(),
                        ends: ch.ends.clone(),
                        retry: Vec::new(),
                    };
                    q.append_chunk(&ch).unwrap();
                }
                q.sync_now().unwrap();
                total += start.elapsed();
            }
            total
        });
    });
    g.finish();
}

fn recovery(c: &mut Criterion) {
    let m = message();
    let dir = tempfile::tempdir().unwrap();
    let chunks = 1_000_000 / CHUNK as u32;
    {
        let (mut q, _) = ShardQueue::open(dir.path(), 0, SEGMENT_BYTES).unwrap();
        for i in 0..chunks {
            q.append_chunk(&chunk(1, i, &m)).unwrap();
        }
        q.sync_now().unwrap();
    }
    let mut g = c.benchmark_group("queue");
    g.throughput(Throughput::Elements(u64::from(chunks) * CHUNK as u64));
    g.sample_size(10);
    g.bench_function("recovery_scan_1m_recipients", |b| {
        b.iter(|| {
            let (q, report) = ShardQueue::open(dir.path(), 0, SEGMENT_BYTES).unwrap();
            assert_eq!(report.live_recipients, u64::from(chunks) * CHUNK as u64);
            q
        })
    });
    g.finish();
}

criterion_group!(benches, append, group_commit, recovery);
criterion_main!(benches);
