//! Intake parsing: a campaign batch with a 10 KiB template into encoded chunks.
//!
//! cargo bench -p spate --bench intake
//!
//! Figures and the machine they came from: docs/benchmarks.md.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spate::intake::{Event, InputKind, Parser};

const RECIPIENTS: u64 = 100_000;

fn batch() -> Vec<u8> {
    let body = "Hello {{ first_name }}, here is your offer.\r\n".repeat(240);
    let template = format!(
        "From: Acme <news@acme.example>\r\nTo: {{{{ to }}}}\r\nSubject: Hi {{{{ first_name }}}} ({{{{ code }}}})\r\n\r\n{body}"
    );
    assert!(template.len() >= 10 << 10);
    let header = serde_json::json!({"campaign": "spring", "tenant": "acme", "from": "bounces@acme.example", "template": template});
    let mut out = format!("{header}\n");
    for i in 0..RECIPIENTS {
        out.push_str(&format!(
            "{{\"to\":\"user{i}@d{}.example\",\"vars\":{{\"first_name\":\"Name{i}\",\"code\":\"C{i:06}\"}}}}\n",
            i % 100
        ));
    }
    out.into_bytes()
}

fn parse(c: &mut Criterion) {
    let bytes = batch();
    let mut g = c.benchmark_group("intake");
    g.throughput(Throughput::Elements(RECIPIENTS));
    g.sample_size(20);
    g.bench_function("parse_batch_100k_recipients_10k_template", |b| {
        b.iter(|| {
            let mut p = Parser::open(&bytes, InputKind::Batch, 1, 2, 0).unwrap();
            let mut n = 0usize;
            while let Some(e) = p.next_event() {
                if let Event::Chunk { chunk, .. } = e {
                    n += chunk.len();
                }
            }
            assert_eq!(n as u64, RECIPIENTS);
        })
    });
    g.finish();
}

criterion_group!(benches, parse);
criterion_main!(benches);
