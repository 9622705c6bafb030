//! DKIM signing per message: a demo-sized message (about 10 KiB, rendered to DATA form)
//! signed with RSA-2048, with Ed25519, and with both, as the home shard does for each
//! recipient. Signatures per second per core are 1 / the time per message.
//!
//! cargo bench -p spate --bench dkim
//!
//! Figures: docs/benchmarks.md ("DKIM"). The signatures' validity is dkimpy's to check
//! (tests/dkim.rs); here each signer is checked once to sign at all, before timing.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use spate::dkim::{sign, Signer, Signers};
use spate::smtp::data::Data;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;

fn signer(file: &str) -> Arc<Signer> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dkim")
        .join(file);
    Arc::new(Signer::load("acme.example", "s1", &path, None).expect("fixture key"))
}

fn message() -> Data {
    let body = "We picked these for you, Zoë: new arrivals, spring prices.\r\n".repeat(160);
    let m = format!(
        "Message-ID: <ab.7@mta.acme.example>\r\nDate: Wed, 2 Dec 2026 07:00:00 +0000\r\n\
         From: Acme News <news@acme.example>\r\nTo: alice@example.com\r\n\
         Subject: Zoë, your spring offer (code X7Q2)\r\nMIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\r\nHello Zoë,\r\n\r\n{body}"
    );
    Data::encode(m.as_bytes())
}

fn bench_sign(c: &mut Criterion) {
    let data = message();
    let rsa = signer("rsa2048.pem");
    let ed = signer("ed25519.pem");
    let mut g = c.benchmark_group("dkim_sign");
    g.throughput(Throughput::Elements(1));
    for (name, signers) in [
        ("ed25519", Signers::new([Arc::clone(&ed)])),
        ("rsa2048", Signers::new([Arc::clone(&rsa)])),
        (
            "rsa2048+ed25519",
            Signers::new([Arc::clone(&rsa), Arc::clone(&ed)]),
        ),
        // What every signature costs besides its key: parsing, body hash, header data.
        ("none_aligned", Signers::new([signer_for("other.example")])),
    ] {
        let fields = sign(data.bytes(), &signers, 1_700_000_000).unwrap();
        assert_eq!(fields.is_empty(), name == "none_aligned", "{name}");
        g.bench_function(name, |b| {
            b.iter(|| sign(black_box(data.bytes()), &signers, 1_700_000_000))
        });
    }
    // The part every signature shares: the relaxed body hash of the message.
    let body = &data.bytes()[data
        .bytes()
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap()
        + 4..];
    g.bench_function("body_hash", |b| {
        b.iter(|| spate::dkim::canon::relaxed_body_hash(black_box(body)))
    });
    g.bench_function("sha256_only", |b| {
        b.iter(|| ring::digest::digest(&ring::digest::SHA256, black_box(body)))
    });
    let pkcs8 = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dkim/ed25519.pem"),
    )
    .unwrap();
    use base64::Engine as _;
    let der = base64::engine::general_purpose::STANDARD
        .decode(
            pkcs8
                .lines()
                .filter(|l| !l.starts_with("-----"))
                .collect::<String>(),
        )
        .unwrap();
    let kp = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).unwrap();
    g.bench_function("ed25519_raw", |b| b.iter(|| kp.sign(black_box(&[7u8; 32]))));
    g.finish();
}

fn signer_for(domain: &str) -> Arc<Signer> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dkim/ed25519.pem");
    Arc::new(Signer::load(domain, "s1", &path, None).expect("fixture key"))
}

criterion_group!(benches, bench_sign);
criterion_main!(benches);
