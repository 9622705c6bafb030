//! Suppression checks against a list of 10 million addresses, as loaded from a file (the
//! table sized for it): a recipient on the list, one that is not, and one that is not with
//! `@domain` and tenant entries present as well (four probes instead of one).
//!
//! cargo bench -p spate --bench suppression
//!
//! Figures: docs/benchmarks.md ("Suppression"). The list is written to a temporary file
//! first (about 290 MiB) and loaded as the engine loads it; the load time and the table's
//! size are printed.

use criterion::{criterion_group, criterion_main, Criterion};
use spate::suppression::{Source, Suppressions};
use std::hint::black_box;
use std::io::Write;
use std::time::Instant;

const ENTRIES: usize = 10_000_000;
const TODAY: u32 = 20_424;
/// Recipients checked in turn.
const SAMPLES: usize = 1 << 20;

fn bench_check(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let list = dir.path().join("suppressed.txt");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&list).expect("list"));
        for i in 0..ENTRIES {
            writeln!(f, "user{i}@listed{}.example", i % 5000).expect("write");
        }
    }
    let mut config = spate::config::Config::parse("", "bench").expect("config");
    config.suppression.files = vec![list.clone()];
    let started = Instant::now();
    let (s, _) = Suppressions::open(&config, &[], TODAY).expect("load");
    eprintln!(
        "suppression: {} entries loaded in {:.2} s, table {:.1} MiB ({:.1} B an entry)",
        s.len(),
        started.elapsed().as_secs_f64(),
        s.table_bytes() as f64 / (1 << 20) as f64,
        s.table_bytes() as f64 / s.len() as f64
    );
    drop(dir);
    let mut r = s.reader();
    // A different recipient each time, from a million: their slots are not in any cache, as
    // at intake (a few thousand would be, after the first pass, and flatter the figure).
    let listed: Vec<String> = (0..SAMPLES)
        .map(|i| {
            let n = (i * 9973) % ENTRIES;
            format!("user{n}@listed{}.example", n % 5000)
        })
        .collect();
    let unlisted: Vec<String> = (0..SAMPLES)
        .map(|i| format!("someone{i}@elsewhere{}.example", i % 300))
        .collect();
    assert!(r.check(&listed[7], "acme", TODAY).is_some());
    assert!(r.check(&unlisted[7], "acme", TODAY).is_none());
    let mut g = c.benchmark_group("suppression_check_10m");
    let mut i = 0;
    g.bench_function("listed", |b| {
        b.iter(|| {
            i = (i + 1) % SAMPLES;
            r.check(black_box(&listed[i]), "acme", TODAY)
        })
    });
    g.bench_function("not_listed", |b| {
        b.iter(|| {
            i = (i + 1) % SAMPLES;
            r.check(black_box(&unlisted[i]), "acme", TODAY)
        })
    });
    s.add("", "@blocked.example", Source::BadMailbox { day: TODAY });
    s.add("acme", "left@x.example", Source::Unsubscribe { day: TODAY });
    g.bench_function("not_listed_with_domains_and_tenants", |b| {
        b.iter(|| {
            i = (i + 1) % SAMPLES;
            r.check(black_box(&unlisted[i]), "acme", TODAY)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_check);
criterion_main!(benches);
