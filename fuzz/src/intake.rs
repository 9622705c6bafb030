//! `intake::Parser` on campaign batches (`.jsonl`) and pickup messages (`.eml`).
//!
//! Input: the first byte picks the shard count (1 to 4, low two bits) and the batch id (the
//! rest of it); the remaining bytes are the file. `check_batch_lines` puts one of a few valid
//! header lines (chosen by the second byte) before the fuzzed bytes, so every input reaches
//! the recipient lines.
//!
//! Properties, for any file:
//! - it never panics, and the file is either refused whole or parsed into events;
//! - every recipient is in a chunk or a rejection: their total is at most the file's lines;
//! - chunks are bounded: a home's first chunk holds at most `FIRST_CHUNK_RECIPIENTS`, later
//!   ones `CHUNK_RECIPIENTS_MAX`; a chunk's encoded recipients pass `CHUNK_TAIL_BYTES_MAX`
//!   only by its last one; every record fits `PAYLOAD_BYTES_MAX`;
//! - chunks are numbered 0, 1, 2... per home, every home below the shard count; a batch's
//!   `k`th recipient at a domain goes to home
//!   `(batch_id + hash(domain) + k / DOMAIN_BLOCK) % shards`, pickup ones to one home;
//! - every recipient record decodes, holds one value per template variable, and holds an
//!   address that parses back to itself;
//! - every accepted recipient renders (the values passed `check_values`) with header lines
//!   of at most 998 octets;
//! - parsing is a pure function of the bytes: a second parse cuts the same chunks.

use spate::address::parse_address;
use spate::intake::{
    Event, InputKind, Parser, CHUNK_RECIPIENTS_MAX, CHUNK_TAIL_BYTES_MAX, DOMAIN_BLOCK,
    DOMAIN_COUNTS_MAX, FIRST_CHUNK_RECIPIENTS, LABEL_BYTES_MAX, MESSAGE_BYTES_MAX,
    PICKUP_RECIPIENTS_MAX,
};
use spate::queue::record::{record_len, RecipientPayload, MESSAGE_VERBATIM, PAYLOAD_BYTES_MAX};
use spate::smtp::data::LINE_OCTETS_MAX;
use spate::template::Template;
use std::collections::HashMap;

/// Valid batch header lines for `check_batch_lines`: placeholders in the header and body, a
/// template with many variables, and one with none.
const HEADERS: &[&str] = &[
    r#"{"campaign":"spring","tenant":"acme","from":"bounces@acme.example","template":"From: Acme <news@acme.example>\r\nTo: {{ to }}\r\nSubject: Hi {{ first_name }}\r\n\r\nHello {{ first_name }}! {{ code }}\r\n"}"#,
    r#"{"campaign":"c","from":"b@acme.example","template":"Subject: {{a}} {{b}} {{c}} {{d}}\nX-Id: {{id}}\n\n{{body}}\n"}"#,
    r#"{"campaign":"plain","from":"<b@ACME.example>","template":"Subject: plain\n\n.one\n"}"#,
];

pub fn check_batch(input: &[u8]) {
    let Some((&first, file)) = input.split_first() else {
        return;
    };
    check_file(first, file, InputKind::Batch);
}

pub fn check_batch_lines(input: &[u8]) {
    let [first, header, lines @ ..] = input else {
        return;
    };
    let mut file = HEADERS[usize::from(*header) % HEADERS.len()]
        .as_bytes()
        .to_vec();
    file.push(b'\n');
    file.extend_from_slice(lines);
    check_file(*first, &file, InputKind::Batch);
}

pub fn check_pickup(input: &[u8]) {
    let Some((&first, file)) = input.split_first() else {
        return;
    };
    check_file(first, file, InputKind::Pickup);
}

/// One parse's output, comparable across parses: (home, chunk number, ends, tails) per chunk
/// and (line, recipient, reason) per rejection, in event order.
type Parsed = Vec<Result<(usize, u32, Vec<u32>, Vec<u8>), (usize, String, String)>>;

fn check_file(first: u8, file: &[u8], kind: InputKind) {
    let shards = usize::from(first & 3) + 1;
    let batch_id = u64::from(first >> 2);
    let Ok(parsed) = parse(file, kind, batch_id, shards) else {
        return;
    };
    let again = parse(file, kind, batch_id, shards).expect("the second parse opened");
    assert!(parsed == again, "a second parse of the same bytes differs");
}

fn parse(file: &[u8], kind: InputKind, batch_id: u64, shards: usize) -> Result<Parsed, ()> {
    let mut parser = match Parser::open(file, kind, batch_id, shards, 1) {
        Ok(p) => p,
        Err(e) => {
            let _ = e.to_string();
            return Err(());
        }
    };
    let message = std::sync::Arc::clone(parser.message());
    let template = check_message(&message, kind);
    let lines = file.split(|&b| b == b'\n').count();
    let mut next_chunk_no = vec![0u32; shards];
    let mut per_home = vec![0usize; shards];
    // Per domain, recipients on each home (the batch split is by blocks per domain).
    let mut per_domain: HashMap<String, Vec<usize>> = HashMap::new();
    let mut accepted = 0usize;
    let mut rejected = 0usize;
    let mut out = Parsed::new();
    while let Some(event) = parser.next_event() {
        match event {
            Event::Chunk { home, chunk } => {
                assert!(home < shards, "home {home} of {shards} shards");
                assert_eq!(
                    chunk.chunk_no, next_chunk_no[home],
                    "chunk numbers per home"
                );
                next_chunk_no[home] += 1;
                assert_eq!(chunk.batch_id, batch_id);
                assert!(std::sync::Arc::ptr_eq(&chunk.message, &message));
                let max = if chunk.chunk_no == 0 {
                    FIRST_CHUNK_RECIPIENTS
                } else {
                    CHUNK_RECIPIENTS_MAX
                };
                assert!(
                    (1..=max).contains(&chunk.len()),
                    "chunk of {} recipients",
                    chunk.len()
                );
                let mut last_len = 0;
                for tail in chunk.recipients() {
                    check_recipient(tail, &message.var_names, template.as_ref());
                    last_len = tail.len();
                    let rcpt = spate::queue::record::Reader::new(tail)
                        .str16()
                        .expect("a recipient");
                    let domain = rcpt.rsplit_once('@').map_or("", |(_, d)| d);
                    per_domain
                        .entry(domain.to_string())
                        .or_insert_with(|| vec![0; shards])[home] += 1;
                }
                assert_eq!(
                    chunk.ends.last().map(|&e| e as usize),
                    Some(chunk.tails.len())
                );
                assert!(
                    chunk.tails.len() - last_len < CHUNK_TAIL_BYTES_MAX,
                    "a chunk of {} bytes grew past the bound before its last recipient",
                    chunk.tails.len()
                );
                per_home[home] += chunk.len();
                accepted += chunk.len();
                out.push(Ok((home, chunk.chunk_no, chunk.ends, chunk.tails)));
            }
            Event::Rejected(r) => {
                assert!(
                    (1..=lines).contains(&r.line),
                    "rejection on line {}",
                    r.line
                );
                assert!(!r.reason.is_empty());
                rejected += 1;
                out.push(Err((r.line, r.recipient, r.reason)));
            }
        }
        assert!(accepted + rejected <= lines, "more recipients than lines");
    }
    assert!(parser.next_event().is_none(), "events after the end");
    if kind == InputKind::Batch && per_domain.len() < DOMAIN_COUNTS_MAX {
        // The `k`th recipient at a domain goes to `(batch + hash(domain) + k / block) % shards`.
        for (domain, homes) in &per_domain {
            let n: usize = homes.iter().sum();
            let h = spate::hash::stable_hash(domain.as_bytes());
            for (home, &got) in homes.iter().enumerate() {
                let want = (0..n as u64)
                    .filter(|k| {
                        let spread = batch_id
                            .wrapping_add(h)
                            .wrapping_add(k / u64::from(DOMAIN_BLOCK));
                        (spread % shards as u64) as usize == home
                    })
                    .count();
                assert_eq!(got, want, "recipients at {domain} on home {home}");
            }
        }
    }
    for (home, &n) in per_home.iter().enumerate() {
        match kind {
            InputKind::Batch => {}
            InputKind::Pickup if home == batch_id as usize % shards => {
                assert_eq!(n, accepted, "recipients of home {home}")
            }
            InputKind::Pickup => assert_eq!(n, 0, "recipients of home {home}"),
            InputKind::Transfer => unreachable!("the transfer target checks transfers"),
        }
    }
    if kind == InputKind::Pickup {
        assert!(accepted + rejected <= PICKUP_RECIPIENTS_MAX);
    }
    Ok(out)
}

/// Checks the message every chunk shares; returns its template (`None` for a verbatim
/// pickup message).
fn check_message(m: &spate::queue::store::MessageSpec, kind: InputKind) -> Option<Template> {
    for label in [&m.sender, &m.campaign, &m.tenant] {
        assert!(
            label.len() <= LABEL_BYTES_MAX,
            "label of {} bytes",
            label.len()
        );
    }
    let sender = parse_address(&m.sender).expect("the sender is an address");
    assert_eq!(
        sender.to_addr_string(),
        m.sender,
        "the sender parses back to itself"
    );
    assert!(m.body.len() <= MESSAGE_BYTES_MAX);
    match kind {
        InputKind::Batch => {
            assert_eq!(m.flags, 0);
            let t = Template::parse(m.body.clone()).expect("the stored template parses");
            assert_eq!(t.var_names(), &m.var_names[..]);
            Some(t)
        }
        InputKind::Pickup => {
            assert_eq!(m.flags, MESSAGE_VERBATIM);
            assert!(m.var_names.is_empty());
            for line in header_lines(&m.body) {
                assert!(
                    line.len() <= LINE_OCTETS_MAX,
                    "pickup header line of {}",
                    line.len()
                );
            }
            None
        }
        InputKind::Transfer => unreachable!("the transfer target checks transfers"),
    }
}

fn check_recipient(tail: &[u8], var_names: &[String], template: Option<&Template>) {
    let mut payload = 7u64.to_le_bytes().to_vec();
    payload.extend_from_slice(tail);
    assert!(record_len(payload.len()) <= PAYLOAD_BYTES_MAX);
    let r = RecipientPayload::decode(&payload).expect("a recipient record decodes");
    assert_eq!(r.message_seq, 7);
    assert_eq!(r.values.len(), var_names.len(), "one value per variable");
    let address = parse_address(r.recipient).expect("the recipient is an address");
    assert_eq!(
        address.to_addr_string(),
        r.recipient,
        "the recipient parses back to itself"
    );
    let Some(t) = template else { return };
    let mut out = Vec::new();
    t.render_into(&r.values, &mut out);
    assert_eq!(out.len(), t.rendered_len(&r.values), "rendered_len");
    for line in header_lines(&out) {
        assert!(
            line.len() <= LINE_OCTETS_MAX,
            "rendered header line of {}",
            line.len()
        );
    }
}

/// The lines of a message's header section, as a receiver reads them (CR, LF and CRLF each
/// end a line), up to the first empty one.
pub fn header_lines(message: &[u8]) -> Vec<&[u8]> {
    spate::smtp::data::message_lines(message)
        .take_while(|l| !l.is_empty())
        .collect()
}
