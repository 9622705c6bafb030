//! The transfer file another node sends (`spate drain`, `queue::transfer`) and the intake
//! that queues it (`intake::Parser` with `InputKind::Transfer`). The sender is a node of
//! the cluster, authenticated; its bytes are still checked as anyone's.
//!
//! Input: a selector byte, then:
//! - even: the bytes of a transfer file, as they came;
//! - odd: lines `ADDRESS\tNAME\tATTEMPTS`, written into a transfer by `TransferWriter`
//!   (valid framing and checksums, so the fuzzer reaches the recipient checks).
//!
//! Properties: nothing panics; `open` accepts a file only when every recipient in it reads,
//! as many as its header says, each with a retry state of at least one attempt or none; a
//! written transfer reads back as written; the parser accounts for every recipient (in a
//! chunk or rejected), keeps each one's retry state beside it, and every accepted
//! recipient's address parses back to itself and its values render a message whose header
//! lines stay within 998 octets.

use spate::address::parse_address;
use spate::intake::{Event, InputKind, Parser};
use spate::queue::record::{MessagePayload, Reader, RecipientPayload};
use spate::queue::transfer::{self, Retry, TransferWriter};
use spate::template::Template;

const TEMPLATE: &[u8] =
    b"From: Acme <news@acme.example>\r\nTo: {{ to }}\r\nSubject: Hi {{ name }}\r\n\r\nHello {{ name }}\r\n";

pub fn check(input: &[u8]) {
    let Some((&selector, rest)) = input.split_first() else {
        return;
    };
    if selector % 2 == 0 {
        check_file(rest);
        return;
    }
    let names = Template::parse(TEMPLATE.to_vec())
        .expect("the template parses")
        .var_names()
        .to_vec();
    let mut message = Vec::new();
    MessagePayload {
        batch_id: 1,
        created_unix_ms: 1_700_000_000_000,
        flags: 0,
        sender: "bounces@acme.example",
        campaign: "c",
        tenant: "",
        var_names: names.iter().map(String::as_str).collect(),
        body: TEMPLATE,
        pool: "",
    }
    .encode(&mut message);
    let mut w = TransferWriter::new("n1", u32::from(selector >> 1), &message);
    let mut written = Vec::new();
    for line in rest.split(|&b| b == b'\n').take(200) {
        let mut fields = line.split(|&b| b == b'\t');
        let to = String::from_utf8_lossy(fields.next().unwrap_or_default()).into_owned();
        let name = fields.next().unwrap_or_default().to_vec();
        let attempts = fields
            .next()
            .and_then(|a| std::str::from_utf8(a).ok()?.parse::<u16>().ok())
            .unwrap_or(0);
        if to.len() > 1000 || name.len() > 1000 {
            continue;
        }
        let values: Vec<&[u8]> = names
            .iter()
            .map(|n| if n == "to" { to.as_bytes() } else { name.as_slice() })
            .collect();
        let mut payload = Vec::new();
        RecipientPayload {
            message_seq: 9,
            recipient: &to,
            values,
        }
        .encode(&mut payload);
        let retry = Retry {
            attempts,
            due_unix_ms: u64::from(attempts) * 1000,
        };
        w.push(&payload, retry);
        written.push((to, retry));
    }
    if written.is_empty() {
        return;
    }
    let id = transfer::transfer_id("n1", 0, 9, 1, 1_700_000_000_000, written.len() as u64);
    let bytes = w.finish(id);
    let (_, _, recipients) = transfer::open(&bytes).expect("a written transfer opens");
    let read: Vec<(String, Retry)> = recipients
        .map(|r| {
            let r = r.expect("a written recipient reads");
            (r.recipient.to_string(), r.retry)
        })
        .collect();
    assert_eq!(read, written, "a transfer reads back as written");
    check_file(&bytes);
}

fn check_file(bytes: &[u8]) {
    let Ok((header, message, recipients)) = transfer::open(bytes) else {
        return;
    };
    let mut n = 0u32;
    for r in recipients {
        let r = r.expect("open read every recipient");
        assert!(r.retry.attempts > 0 || r.retry.due_unix_ms == 0);
        let mut full = 0u64.to_le_bytes().to_vec();
        full.extend_from_slice(r.tail);
        let p = RecipientPayload::decode(&full).expect("a tail decodes");
        assert_eq!(p.recipient, r.recipient);
        assert_eq!(p.values.len(), message.var_names.len());
        n += 1;
    }
    assert_eq!(n, header.recipients);
    let mut parser = match Parser::open(bytes, InputKind::Transfer, header.id, 2, 1) {
        Ok(p) => p,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let spec = std::sync::Arc::clone(parser.message());
    let template = (spec.flags & spate::queue::record::MESSAGE_VERBATIM == 0)
        .then(|| Template::parse(spec.body.clone()).expect("the parser took this template"));
    let (mut accepted, mut rejected) = (0u32, 0u32);
    while let Some(e) = parser.next_event() {
        match e {
            Event::Chunk { home, chunk } => {
                assert!(home < 2);
                assert_eq!(chunk.retry.len(), chunk.len(), "a retry state each");
                for tail in chunk.recipients() {
                    let mut r = Reader::new(tail);
                    let rcpt = r.str16().expect("a recipient");
                    let a = parse_address(rcpt).expect("an accepted address parses");
                    assert_eq!(a.to_addr_string(), rcpt);
                    if let Some(t) = &template {
                        let mut full = 0u64.to_le_bytes().to_vec();
                        full.extend_from_slice(tail);
                        let p = RecipientPayload::decode(&full).expect("decodes");
                        let mut out = Vec::new();
                        t.render_into(&p.values, &mut out);
                        for line in spate::smtp::data::message_lines(&out) {
                            if line.is_empty() {
                                break;
                            }
                            assert!(line.len() <= 998, "a header line of {} octets", line.len());
                        }
                    }
                    accepted += 1;
                }
            }
            Event::Rejected(_) => rejected += 1,
        }
    }
    assert_eq!(accepted + rejected, header.recipients, "every recipient accounted for");
}
