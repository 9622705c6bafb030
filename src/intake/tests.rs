use super::*;
use crate::queue::record::Reader;

const HEADER: &str = r#"{"campaign":"spring-sale","tenant":"acme","from":"bounces@acme.example","template":"From: Acme <news@acme.example>\r\nTo: {{ to }}\r\nSubject: Hi {{ first_name }}\r\n\r\nHello {{ first_name }}!\r\n"}"#;

fn run(bytes: &[u8], kind: InputKind, shards: usize) -> (Vec<(usize, Chunk)>, Vec<Rejection>) {
    let mut p = Parser::open(bytes, kind, 7, shards, 1).unwrap();
    let (mut chunks, mut rejections) = (Vec::new(), Vec::new());
    while let Some(e) = p.next_event() {
        match e {
            Event::Chunk { home, chunk } => chunks.push((home, chunk)),
            Event::Rejected(r) => rejections.push(r),
        }
    }
    (chunks, rejections)
}

fn recipients(chunks: &[(usize, Chunk)]) -> Vec<String> {
    let mut v: Vec<String> = chunks
        .iter()
        .flat_map(|(_, c)| {
            c.recipients()
                .map(|t| Reader::new(t).str16().unwrap().to_string())
        })
        .collect();
    v.sort();
    v
}

#[test]
fn a_small_site_has_one_home_and_many_sites_spread_evenly() {
    let mut input = format!("{HEADER}\n");
    for site in 0..1000 {
        for r in 0..5 {
            input.push_str(&format!("{{\"to\":\"r{r}@site{site}.example\"}}\n"));
        }
    }
    let (chunks, _) = run(input.as_bytes(), InputKind::Batch, 2);
    let mut homes: HashMap<String, Vec<usize>> = HashMap::new();
    for (home, chunk) in &chunks {
        for t in chunk.recipients() {
            let rcpt = Reader::new(t).str16().unwrap().to_string();
            let site = rcpt.split_once('@').unwrap().1.to_string();
            homes.entry(site).or_default().push(*home);
        }
    }
    assert_eq!(homes.len(), 1000);
    assert!(homes
        .values()
        .all(|h| h.len() == 5 && h.iter().all(|&x| x == h[0])));
    let on_zero = homes.values().filter(|h| h[0] == 0).count();
    assert!(
        (400..=600).contains(&on_zero),
        "{on_zero} of 1000 sites on shard 0"
    );
}

#[test]
fn batch_recipients_spread_evenly_and_bad_ones_are_refused_alone() {
    let mut input = format!("{HEADER}\n");
    for i in 0..1000 {
        input.push_str(&format!(
            "{{\"to\":\"u{i}@example.com\",\"vars\":{{\"first_name\":\"N{i}\"}}}}\n"
        ));
    }
    input.push_str("{\"to\":\"not-an-address\"}\n");
    input.push_str(
        "{\"to\":\"eve@example.com\",\"vars\":{\"first_name\":\"Eve\\r\\nBcc: x@y.z\"}}\n",
    );
    input.push_str("\u{1}\u{2}binary\n\n");
    input.push_str("{\"to\":\"last@example.com\"}\r\n");
    let (chunks, rejections) = run(input.as_bytes(), InputKind::Batch, 2);
    let all = recipients(&chunks);
    assert_eq!(all.len(), 1001);
    assert!(all.contains(&"last@example.com".to_string()));
    let per_home: Vec<usize> = (0..2)
        .map(|h| {
            chunks
                .iter()
                .filter(|(x, _)| *x == h)
                .map(|(_, c)| c.len())
                .sum()
        })
        .collect();
    // One domain: blocks of DOMAIN_BLOCK recipients take turns.
    assert!(
        per_home[0].abs_diff(per_home[1]) <= DOMAIN_BLOCK as usize,
        "{per_home:?}"
    );
    assert_eq!(rejections.len(), 3);
    assert_eq!(rejections[0].line, 1002);
    assert!(rejections[0].reason.contains("no @"));
    assert_eq!(rejections[1].recipient, "eve@example.com");
    assert!(rejections[1].reason.contains("CR or LF into a header"));
    assert_eq!(rejections[2].line, 1004);
    assert!(
        rejections[2].reason.starts_with("invalid JSON"),
        "{}",
        rejections[2].reason
    );
}

#[test]
fn chunks_are_bounded() {
    let mut input = format!("{HEADER}\n");
    for i in 0..(CHUNK_RECIPIENTS_MAX * 2 + 5) {
        input.push_str(&format!("{{\"to\":\"u{i}@example.com\"}}\n"));
    }
    let (chunks, _) = run(input.as_bytes(), InputKind::Batch, 1);
    assert_eq!(chunks.len(), 3);
    assert!(chunks.iter().all(|(_, c)| c.len() <= CHUNK_RECIPIENTS_MAX));
    let numbers: Vec<u32> = chunks.iter().map(|(_, c)| c.chunk_no).collect();
    assert_eq!(numbers, vec![0, 1, 2]);
    // The boundaries are part of the replay contract (docs/queue-format.md): a small
    // first chunk, then full ones, the same on every parse of the same input.
    let sizes: Vec<usize> = chunks.iter().map(|(_, c)| c.len()).collect();
    assert_eq!(
        sizes,
        vec![
            FIRST_CHUNK_RECIPIENTS,
            CHUNK_RECIPIENTS_MAX,
            CHUNK_RECIPIENTS_MAX + 5 - FIRST_CHUNK_RECIPIENTS
        ]
    );
    let (again, _) = run(input.as_bytes(), InputKind::Batch, 1);
    let again: Vec<usize> = again.iter().map(|(_, c)| c.len()).collect();
    assert_eq!(sizes, again);
}

#[test]
fn oversized_recipient_line_is_refused_alone() {
    let big = "x".repeat(10 << 20);
    let input = format!(
        "{HEADER}\n{{\"to\":\"a@example.com\",\"vars\":{{\"first_name\":\"{big}\"}}}}\n{{\"to\":\"b@example.com\"}}\n"
    );
    let (chunks, rejections) = run(input.as_bytes(), InputKind::Batch, 1);
    assert_eq!(recipients(&chunks), vec!["b@example.com"]);
    assert_eq!(rejections.len(), 1);
    assert!(rejections[0].reason.contains("over the 65536-byte limit"));
}

#[test]
fn whole_file_errors_name_the_line() {
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), "empty file"),
        (
            b"\n{\"to\":\"a@b.example\"}\n".to_vec(),
            "line 1: header line is empty",
        ),
        (
            b"{\"campaign\":\"c\",\"from\":\"a@b.example\"}\n".to_vec(),
            "missing field `template`",
        ),
        (
            b"{\"campaign\":\"c\",\"from\":\"nope\",\"template\":\"S: x\\n\\nb\"}\n".to_vec(),
            "header \"from\"",
        ),
        (
            b"{\"campaign\":\"c\",\"from\":\"a@b.example\",\"template\":\"S: x\\n\\n{{ y\"}\n"
                .to_vec(),
            "never closed",
        ),
        (
            b"{\"campaign\":\"c\",\"form\":\"a@b.example\",\"template\":\"x\"}\n".to_vec(),
            "unknown field `form`",
        ),
        (
            vec![0xff, 0xfe, 0x00, 0x13, b'\n'],
            "line 1: header: invalid JSON",
        ),
    ];
    for (bytes, want) in cases {
        let e = Parser::open(&bytes, InputKind::Batch, 1, 1, 0)
            .err()
            .unwrap();
        assert!(e.to_string().contains(want), "want {want:?}, got {e}");
    }
}

#[test]
fn pickup_message_keeps_its_recipients_together() {
    let input = b"x-sender: <bounces@acme.example>\r\nX-Receiver: a@example.com\r\nx-receiver: bad@@x\r\nx-receiver: <b@example.org>\r\nx-job: july\r\nFrom: a@acme.example\r\nSubject: {{ not a placeholder }}\r\n\r\nbody\r\n";
    let mut p = Parser::open(input, InputKind::Pickup, 3, 4, 0).unwrap();
    assert_eq!(p.message().campaign, "july");
    assert!(p.message().body.starts_with(b"From: a@acme.example\r\n"));
    let (mut homes, mut rejected) = (Vec::new(), Vec::new());
    while let Some(e) = p.next_event() {
        match e {
            Event::Chunk { home, chunk } => homes.push((home, chunk.len())),
            Event::Rejected(r) => rejected.push(r),
        }
    }
    assert_eq!(homes, vec![(3, 2)]);
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].line, 3);
}

#[test]
fn byte_order_mark_and_blank_line_after_envelope_are_tolerated() {
    let input = format!("\u{feff}{HEADER}\n{{\"to\":\"a@example.com\"}}\n");
    let (chunks, rejections) = run(input.as_bytes(), InputKind::Batch, 1);
    assert_eq!(recipients(&chunks), vec!["a@example.com"]);
    assert!(rejections.is_empty());
    let eml =
        b"x-sender: a@acme.example\r\nx-receiver: b@example.com\r\n\r\nSubject: s\r\n\r\nbody";
    let p = Parser::open(eml, InputKind::Pickup, 1, 1, 0).unwrap();
    assert!(p.message().body.starts_with(b"Subject: s\r\n"));
}

#[test]
fn pickup_without_envelope_is_refused() {
    let e = Parser::open(b"Subject: x\r\n\r\nbody", InputKind::Pickup, 1, 1, 0)
        .err()
        .unwrap();
    assert_eq!(e.reason, "no x-sender line");
    let e = Parser::open(
        b"x-sender: a@b.example\r\nSubject: x\r\n\r\nb",
        InputKind::Pickup,
        1,
        1,
        0,
    )
    .err()
    .unwrap();
    assert_eq!(e.reason, "no x-receiver line");
}

#[test]
fn header_value_too_long_to_fold_refuses_its_recipient_alone() {
    let header = r#"{"campaign":"c","from":"bounces@acme.example","template":"From: a@acme.example\r\nSubject: {{ s }}\r\n\r\nHi\r\n"}"#;
    // 989 octets after "Subject: " used to put "Reply-To:" at the start of a line.
    let attack = format!("{}Reply-To: evil@attacker.example", "A".repeat(989));
    let input = format!(
        "{header}\n{{\"to\":\"a@example.com\",\"vars\":{{\"s\":\"hi\"}}}}\n\
         {{\"to\":\"eve@example.com\",\"vars\":{{\"s\":\"{attack}\"}}}}\n\
         {{\"to\":\"b@example.com\",\"vars\":{{\"s\":\"{} {}\"}}}}\n",
        "B".repeat(900),
        "C".repeat(900)
    );
    let (chunks, rejections) = run(input.as_bytes(), InputKind::Batch, 2);
    assert_eq!(recipients(&chunks), vec!["a@example.com", "b@example.com"]);
    assert_eq!(rejections.len(), 1);
    assert_eq!(rejections[0].line, 3);
    assert_eq!(rejections[0].recipient, "eve@example.com");
    assert_eq!(
        rejections[0].reason,
        "variable \"s\" makes header line \"Subject\" 1029 octets long with no space to fold at (limit 998)"
    );
}

#[test]
fn pickup_with_a_header_line_over_the_limit_is_refused_naming_the_line() {
    let subject = format!("Subject: {}", "x".repeat(1200 - 9));
    let input = format!(
        "x-sender: a@acme.example\r\nx-receiver: b@example.com\r\n\r\nFrom: a@acme.example\r\n{subject}\r\n\r\nbody\r\n"
    );
    let e = Parser::open(input.as_bytes(), InputKind::Pickup, 1, 1, 0)
        .err()
        .unwrap();
    assert_eq!(
        e.to_string(),
        "line 5: header line is 1200 octets, over the 998-octet limit of RFC 5322 \
         (pickup messages are sent as they are, not rewritten)"
    );
}

#[test]
fn pickup_header_lines_end_at_bare_cr_as_the_data_writer_ends_them() {
    // 20 header lines of 60 octets each, ending in bare CR: 1,220 octets between LFs,
    // and short lines as sent.
    let mut message = String::new();
    for i in 0..20 {
        message.push_str(&format!("X-Line-{i:02}: {}\r", "v".repeat(49)));
    }
    message.push_str("\rbody\r");
    let input = format!("x-sender: a@acme.example\nx-receiver: b@example.com\n{message}");
    let (chunks, rejections) = run(input.as_bytes(), InputKind::Pickup, 1);
    assert!(rejections.is_empty());
    assert_eq!(recipients(&chunks), vec!["b@example.com"]);
}

#[test]
fn pickup_with_a_long_body_line_is_accepted() {
    let body_line = "x".repeat(1200);
    let input = format!(
        "x-sender: a@acme.example\nx-receiver: b@example.com\nSubject: {}\n\n{body_line}\n",
        "s".repeat(LINE_OCTETS_MAX - 9)
    );
    let (chunks, rejections) = run(input.as_bytes(), InputKind::Pickup, 1);
    assert_eq!(recipients(&chunks), vec!["b@example.com"]);
    assert!(rejections.is_empty());
    let p = Parser::open(input.as_bytes(), InputKind::Pickup, 1, 1, 0).unwrap();
    assert!(p
        .message()
        .body
        .ends_with(format!("{body_line}\n").as_bytes()));
}
#[test]
fn pickup_duplicate_receivers_are_rejected_once_each() {
    let input = "x-sender: a@acme.example\nx-receiver: b@example.com\nx-receiver: <b@EXAMPLE.com>\nx-receiver: c@example.com\nSubject: s\n\nbody\n";
    let (chunks, rejections) = run(input.as_bytes(), InputKind::Pickup, 1);
    assert_eq!(recipients(&chunks), vec!["b@example.com", "c@example.com"]);
    assert_eq!(rejections.len(), 1);
    assert_eq!(rejections[0].line, 3);
    assert!(
        rejections[0].reason.contains("line 2"),
        "{:?}",
        rejections[0]
    );
}

#[test]
fn pickup_envelope_lines_must_be_utf8() {
    let input = b"x-sender: a@acme.example\nx-receiver: b\xff@example.com\nSubject: s\n\nbody\n";
    let e = Parser::open(input, InputKind::Pickup, 1, 1, 0)
        .err()
        .unwrap();
    assert_eq!(e.line, Some(2));
    assert!(e.reason.contains("UTF-8"), "{e}");
    // The message's own header may carry any bytes; it is sent as it is.
    let input = b"x-sender: a@acme.example\nx-receiver: b@example.com\nSubject: caf\xe9\n\nbody\n";
    assert!(Parser::open(input, InputKind::Pickup, 1, 1, 0).is_ok());
}

#[test]
fn parsing_pauses_between_events_without_changing_them() {
    let mut input = format!("{HEADER}\n");
    for i in 0..700 {
        input.push_str(&format!("{{\"to\":\"u{i}@d{}.example\"}}\n", i % 7));
    }
    input.push_str("{\"to\":\"not-an-address\"}\n");
    let whole = run(input.as_bytes(), InputKind::Batch, 2);
    let mut p = Parser::open(input.as_bytes(), InputKind::Batch, 7, 2, 1).unwrap();
    let (mut chunks, mut rejections, mut pauses) = (Vec::new(), Vec::new(), 0);
    loop {
        match p.next_within(10) {
            Step::Event(Event::Chunk { home, chunk }) => chunks.push((home, chunk)),
            Step::Event(Event::Rejected(r)) => rejections.push(r),
            Step::Pause => pauses += 1,
            Step::Done => break,
        }
    }
    // 701 recipient lines, ten at a time: about seventy pauses, and the same chunks.
    assert!((60..=71).contains(&pauses), "{pauses} pauses");
    assert_eq!(recipients(&chunks), recipients(&whole.0));
    let homes = |c: &[(usize, Chunk)]| c.iter().map(|(h, c)| (*h, c.len())).collect::<Vec<_>>();
    assert_eq!(homes(&chunks), homes(&whole.0));
    assert_eq!(rejections.len(), whole.1.len());
}

#[test]
fn suppressed_recipients_are_refused_on_their_own_line_and_the_rest_go_on() {
    let s = crate::suppression::Suppressions::empty();
    s.add(
        "",
        "b@example.com",
        crate::suppression::Source::BadMailbox { day: 10 },
    );
    let refused = |input: &[u8], kind| {
        let mut p = Parser::open(input, kind, 1, 1, 0).unwrap();
        p.suppress(s.reader(), 10);
        let (mut queued, mut refused) = (0, Vec::new());
        while let Some(e) = p.next_event() {
            match e {
                Event::Chunk { chunk, .. } => queued += chunk.len(),
                Event::Rejected(r) => refused.push((r.line, r.recipient, r.reason)),
            }
        }
        (queued, refused)
    };
    let batch = format!("{HEADER}\n{{\"to\":\"a@example.com\"}}\n{{\"to\":\"B@example.com\"}}\n");
    let (queued, rejected) = refused(batch.as_bytes(), InputKind::Batch);
    assert_eq!(queued, 1);
    assert_eq!(rejected.len(), 1);
    assert_eq!(
        (rejected[0].0, rejected[0].1.as_str()),
        (3, "B@example.com")
    );
    assert!(
        rejected[0]
            .2
            .starts_with("suppressed: b@example.com was refused"),
        "{rejected:?}"
    );
    let pickup = b"x-sender: <s@acme.example>\r\nx-receiver: b@example.com\r\nx-receiver: a@example.com\r\nFrom: s@acme.example\r\n\r\nbody\r\n";
    let (queued, rejected) = refused(pickup, InputKind::Pickup);
    assert_eq!(queued, 1);
    assert_eq!(rejected[0].0, 2, "the receiver's own line");
}

/// A transfer of a campaign message from another node: two good recipients (one deferred
/// there) and one whose value would change the message's header.
fn transfer_bytes(id: u64, pool: &str) -> Vec<u8> {
    use crate::queue::record::{MessagePayload, RecipientPayload};
    use crate::queue::transfer::{Retry, TransferWriter};
    let template = b"From: Acme <news@acme.example>\r\nTo: {{ to }}\r\nSubject: Hi {{ first_name }}\r\n\r\nHello {{ first_name }}!\r\n";
    let names = Template::parse(template.to_vec())
        .unwrap()
        .var_names()
        .to_vec();
    let mut message = Vec::new();
    MessagePayload {
        batch_id: 99,
        created_unix_ms: 1_700_000_000_000,
        flags: 0,
        sender: "bounces@acme.example",
        campaign: "spring-sale",
        tenant: "acme",
        var_names: names.iter().map(String::as_str).collect(),
        body: template,
        pool,
    }
    .encode(&mut message);
    let mut w = TransferWriter::new("mta1", 2, &message);
    let mut push = |to: &str, first: &str, retry: Retry| {
        let values: Vec<&[u8]> = names
            .iter()
            .map(|n| {
                if n == "to" {
                    to.as_bytes()
                } else {
                    first.as_bytes()
                }
            })
            .collect();
        let mut p = Vec::new();
        RecipientPayload {
            message_seq: 5,
            recipient: to,
            values,
        }
        .encode(&mut p);
        w.push(&p, retry);
    };
    push("ann@example.com", "Ann", Retry::default());
    push(
        "bob@example.org",
        "Bob",
        Retry {
            attempts: 2,
            due_unix_ms: 1_700_000_900_000,
        },
    );
    push(
        "eve@example.net",
        "Eve\r\nBcc: x@evil.example",
        Retry::default(),
    );
    w.finish(id)
}

#[test]
fn a_transfer_keeps_its_message_and_retry_state_and_checks_each_recipient() {
    let id = crate::queue::transfer::transfer_id("mta1", 2, 5, 99, 1_700_000_000_000, 0);
    let bytes = transfer_bytes(id, "");
    let mut p = Parser::open(&bytes, InputKind::Transfer, id, 1, 5).unwrap();
    assert_eq!(p.source_node(), "mta1");
    assert_eq!(
        p.message().created_unix_ms,
        1_700_000_000_000,
        "its first time kept"
    );
    assert_eq!(p.message().batch_id, id);
    let (mut chunks, mut rejections) = (Vec::new(), Vec::new());
    while let Some(e) = p.next_event() {
        match e {
            Event::Chunk { chunk, .. } => chunks.push(chunk),
            Event::Rejected(r) => rejections.push(r),
        }
    }
    assert_eq!(rejections.len(), 1, "{rejections:?}");
    assert_eq!(rejections[0].recipient, "eve@example.net");
    assert_eq!(chunks.len(), 1);
    let c = &chunks[0];
    assert_eq!(c.len(), 2);
    assert_eq!(c.retry[0], crate::queue::transfer::Retry::default());
    assert_eq!(c.retry[1].attempts, 2);
    assert_eq!(c.retry[1].due_unix_ms, 1_700_000_900_000);
    let rcpts: Vec<&str> = c
        .recipients()
        .map(|t| Reader::new(t).str16().unwrap())
        .collect();
    assert_eq!(rcpts, ["ann@example.com", "bob@example.org"]);
}

#[test]
fn a_transfer_under_another_name_or_naming_an_unknown_pool_is_refused() {
    let id = crate::queue::transfer::transfer_id("mta1", 2, 5, 99, 1_700_000_000_000, 0);
    let bytes = transfer_bytes(id, "");
    let e = Parser::open(&bytes, InputKind::Transfer, id ^ 1, 1, 5)
        .err()
        .unwrap();
    assert!(e.reason.contains("under the name"), "{e}");
    let bytes = transfer_bytes(id, "warm");
    let e = Parser::open(&bytes, InputKind::Transfer, id, 1, 5)
        .err()
        .unwrap();
    assert!(e.reason.contains("pool"), "{e}");
    assert!(Parser::open(b"SPATEXF1junk", InputKind::Transfer, id, 1, 5).is_err());
}
