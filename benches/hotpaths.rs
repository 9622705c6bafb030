//! Per-message hot paths: SMTP reply parsing, the client session, the DATA writer, template
//! rendering, DNS messages, the per-recipient delivery policy, and the delivery log's JSON
//! (the hand-written writer against serde_json, the question of whether to adopt serde).
//!
//! cargo bench -p spate --bench hotpaths
//!
//! Figures and the machine they came from: docs/benchmarks.md. Each bench checks what it
//! produces once, before timing; nothing is asserted inside the timed loops.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use hickory_proto::op::{Message, OpCode, Query};
use hickory_proto::rr::rdata::{A, MX};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use spate::delivery::policy::{classify, is_rate_limit, Verdict};
use spate::delivery::throttle::{Change, Throttle};
use spate::delivery_log::{format_record, rfc3339_utc, EventType, LogRecord};
use spate::dns::message::{build_query, parse_response, Answer, QueryType};
use spate::smtp::data::{encode_data, Data, DataWriter};
use spate::smtp::reply::{EnhancedCode, Reply, ReplyParser};
use spate::smtp::session::{Action, RcptResult, Session, Timeouts, TlsPolicy, Transaction};
use spate::template::Template;
use std::hint::black_box;

// --- Canned server bytes ---------------------------------------------------------------

const GREETING: &[u8] = b"220 mx.example.net ESMTP ready\r\n";
/// The greeting line and 8 extension lines, as a large receiver sends them (no STARTTLS, so
/// an opportunistic session is ready right after it).
const EHLO_REPLY: &[u8] = b"250-mx.example.net Hello mta.acme.example [192.0.2.10]\r\n\
250-PIPELINING\r\n\
250-SIZE 52428800\r\n\
250-8BITMIME\r\n\
250-ENHANCEDSTATUSCODES\r\n\
250-SMTPUTF8\r\n\
250-CHUNKING\r\n\
250-DSN\r\n\
250 AUTH PLAIN LOGIN\r\n";
const SINGLE_250: &[u8] = b"250 2.0.0 Ok: queued as 4F2B1C0A3D\r\n";
/// MAIL, three RCPTs and DATA answered in one read.
const PIPELINED_3_RCPTS: &[u8] = b"250 2.1.0 Ok\r\n\
250 2.1.5 Ok\r\n\
250 2.1.5 Ok\r\n\
250 2.1.5 Ok\r\n\
354 End data with <CR><LF>.<CR><LF>\r\n";
/// MAIL, one RCPT and DATA answered in one read.
const PIPELINED_1_RCPT: &[u8] = b"250 2.1.0 Ok\r\n\
250 2.1.5 Ok\r\n\
354 End data with <CR><LF>.<CR><LF>\r\n";

// --- Messages --------------------------------------------------------------------------

/// The template of `spate demo` (src/demo.rs `write_campaign`): about 10 KiB, 3 variables.
fn demo_template() -> String {
    let body =
        "We picked these for you, {{ first_name }}: new arrivals, spring prices.\r\n".repeat(140);
    format!(
        "From: Acme News <news@acme.example>\r\nTo: {{{{ to }}}}\r\nSubject: {{{{ first_name }}}}, your spring offer (code {{{{ code }}}})\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello {{{{ first_name }}}},\r\n\r\n{body}\r\nYour code: {{{{ code }}}}\r\n"
    )
}

/// A plain-text message of at least `bytes_min` bytes: CRLF lines of 40 to 76 octets, every
/// 25th starting with a dot so the writer has stuffing to do.
fn message_of(bytes_min: usize) -> Vec<u8> {
    let mut m = b"From: Acme News <news@acme.example>\r\nTo: user1@d1.example\r\nSubject: Your spring offer\r\n\r\n".to_vec();
    let words = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor ";
    let mut i = 0usize;
    while m.len() < bytes_min {
        if i % 25 == 24 {
            m.push(b'.');
        }
        let len = 40 + (i * 7) % 37;
        m.extend_from_slice(&words.as_bytes()[..len]);
        m.extend_from_slice(b"\r\n");
        i += 1;
    }
    m
}

// --- 1. Reply parsing ------------------------------------------------------------------

/// Parses every complete reply in `bytes` with a parser kept across iterations (as a
/// connection keeps one); returns the last reply.
fn parse_all(p: &mut ReplyParser, bytes: &[u8]) -> Option<Reply> {
    p.push(bytes);
    let mut last = None;
    while let Ok(Some(r)) = p.next_reply() {
        last = Some(r);
    }
    last
}

fn reply_parsing(c: &mut Criterion) {
    // Correctness, once, untimed.
    let mut p = ReplyParser::new();
    let r = parse_all(&mut p, SINGLE_250).unwrap();
    assert_eq!(
        (r.code, r.enhanced),
        (250, Some(EnhancedCode::new(2, 0, 0)))
    );
    let r = parse_all(&mut p, EHLO_REPLY).unwrap();
    assert_eq!((r.code, r.lines.len()), (250, 9));
    p.push(PIPELINED_3_RCPTS);
    let mut codes = Vec::new();
    while let Some(r) = p.next_reply().unwrap() {
        codes.push(r.code);
    }
    assert_eq!(codes, [250, 250, 250, 250, 354]);
    assert_eq!(p.buffered(), 0);

    let mut g = c.benchmark_group("smtp_reply");
    g.throughput(Throughput::Elements(1));
    g.bench_function("single_line_250", |b| {
        let mut p = ReplyParser::new();
        b.iter(|| parse_all(&mut p, black_box(SINGLE_250)))
    });
    g.bench_function("ehlo_9_lines", |b| {
        let mut p = ReplyParser::new();
        b.iter(|| parse_all(&mut p, black_box(EHLO_REPLY)))
    });
    g.throughput(Throughput::Elements(5));
    g.bench_function("pipelined_mail_3_rcpt_data_5_replies", |b| {
        let mut p = ReplyParser::new();
        b.iter(|| {
            p.push(black_box(PIPELINED_3_RCPTS));
            while let Ok(Some(r)) = p.next_reply() {
                black_box(r);
            }
        })
    });
    g.finish();
}

// --- 2. Session --------------------------------------------------------------------------

/// Takes every pending action; returns the bytes sent and the transaction results.
fn drain(s: &mut Session, sent: &mut Vec<u8>, done: &mut Vec<Vec<RcptResult>>) {
    while let Some(a) = s.next_action() {
        match a {
            Action::Send(bytes) => sent.extend_from_slice(&bytes),
            Action::Done(results) => done.push(results),
            Action::StartTls | Action::Ready | Action::Close(_) => {}
        }
    }
}

/// Takes every pending action without looking at it (the timed loops).
fn discard(s: &mut Session) {
    while let Some(a) = s.next_action() {
        black_box(a);
    }
}

fn open_session() -> Session {
    let mut s = Session::new(
        "mta.acme.example",
        TlsPolicy::Opportunistic,
        Timeouts::default(),
    );
    s.receive(GREETING);
    discard(&mut s);
    s.receive(EHLO_REPLY);
    discard(&mut s);
    s
}

fn one_transaction(s: &mut Session, tx: Transaction) {
    s.start(tx);
    discard(s);
    s.receive(PIPELINED_1_RCPT);
    discard(s);
    s.receive(SINGLE_250);
    discard(s);
}

fn session(c: &mut Criterion) {
    let tx = Transaction {
        mail_from: "bounces@acme.example".into(),
        rcpts: vec!["user1@d1.example".into()],
        // Encoded beforehand, as the home shard renders it: the session only sends it.
        data: Data::encode(&message_of(10 << 10)),
    };

    // Correctness, once, untimed: the full exchange and the recipient's 250.
    let mut s = Session::new(
        "mta.acme.example",
        TlsPolicy::Opportunistic,
        Timeouts::default(),
    );
    let (mut sent, mut done) = (Vec::new(), Vec::new());
    s.receive(GREETING);
    drain(&mut s, &mut sent, &mut done);
    assert_eq!(sent, b"EHLO mta.acme.example\r\n");
    s.receive(EHLO_REPLY);
    drain(&mut s, &mut sent, &mut done);
    assert!(s.is_ready() && s.capabilities().pipelining);
    sent.clear();
    s.start(tx.clone());
    drain(&mut s, &mut sent, &mut done);
    let envelope = format!(
        "MAIL FROM:<bounces@acme.example> SIZE={}\r\nRCPT TO:<user1@d1.example>\r\nDATA\r\n",
        tx.data.size()
    );
    assert_eq!(sent, envelope.as_bytes(), "one pipelined write");
    sent.clear();
    s.receive(PIPELINED_1_RCPT);
    drain(&mut s, &mut sent, &mut done);
    assert_eq!(sent, tx.data.bytes());
    s.receive(SINGLE_250);
    drain(&mut s, &mut sent, &mut done);
    assert_eq!(done.len(), 1);
    assert!(matches!(&done[0][..], [RcptResult::Reply(r)] if r.code == 250));
    assert!(s.is_ready());

    let mut g = c.benchmark_group("smtp_session");
    g.throughput(Throughput::Elements(1));
    // Connection setup plus one transaction: what a connection used once costs.
    g.bench_function("open_and_1_transaction_10k_message", |b| {
        b.iter_batched(
            || tx.clone(),
            |tx| {
                let mut s = open_session();
                one_transaction(&mut s, tx);
                s
            },
            BatchSize::SmallInput,
        )
    });
    // The steady state: another transaction on an open, pipelining connection.
    g.bench_function("transaction_on_open_session_10k_message", |b| {
        let mut s = open_session();
        b.iter_batched(
            || tx.clone(),
            |tx| one_transaction(&mut s, tx),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

// --- 3. DATA writer ----------------------------------------------------------------------

fn data_writer(c: &mut Criterion) {
    let mut g = c.benchmark_group("smtp_data");
    for (name, size) in [("10k", 10usize << 10), ("100k", 100 << 10)] {
        let message = message_of(size);
        // Correctness, once, untimed: every 25th line stuffed, one terminator.
        let out = encode_data(&message);
        let dots = message
            .split(|&b| b == b'\n')
            .filter(|l| l.first() == Some(&b'.'))
            .count();
        assert!(dots > 0);
        assert_eq!(out.len(), message.len() + dots + 3);
        assert!(out.ends_with(b"\r\n.\r\n"));

        g.throughput(Throughput::Bytes(message.len() as u64));
        g.bench_function(format!("encode_data_{name}"), |b| {
            b.iter(|| encode_data(black_box(&message)))
        });
        // The incremental writer into a buffer kept across messages, in 4 KiB pieces as a
        // streaming caller would feed it.
        g.bench_function(format!("writer_4k_pieces_reused_buffer_{name}"), |b| {
            let mut out = Vec::with_capacity(message.len() * 2);
            b.iter(|| {
                out.clear();
                let mut w = DataWriter::new();
                for piece in black_box(&message).chunks(4096) {
                    w.write(piece, &mut out);
                }
                w.finish(&mut out);
                black_box(out.len())
            })
        });
    }
    g.finish();
}

// --- 4. Template rendering -----------------------------------------------------------------

fn template(c: &mut Criterion) {
    let source = demo_template();
    assert!(source.len() >= 10 << 10);
    let t = Template::parse(source.into_bytes()).unwrap();
    assert_eq!(t.var_names(), ["to", "first_name", "code"]);
    let values: [&[u8]; 3] = [b"user12345@d45.example", b"Name12345", b"C012345"];
    // Correctness, once, untimed.
    let mut out = Vec::new();
    t.render_into(&values, &mut out);
    assert_eq!(out.len(), t.rendered_len(&values));
    assert!(
        out.starts_with(b"From: Acme News <news@acme.example>\r\nTo: user12345@d45.example\r\n")
    );
    assert!(out.ends_with(b"Your code: C012345\r\n"));

    let mut g = c.benchmark_group("template");
    g.throughput(Throughput::Elements(1));
    g.bench_function("render_10k_template_3_vars_per_recipient", |b| {
        let mut out = Vec::with_capacity(t.source().len() + 256);
        b.iter(|| {
            out.clear();
            t.render_into(black_box(&values), &mut out);
            black_box(out.len())
        })
    });
    // As the engine rendered until 2026-12-01: a fresh Vec per recipient, encoded for DATA
    // into another.
    g.bench_function("render_then_encode_10k_template_fresh_vecs", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(t.source().len() + 256);
            t.render_into(black_box(&values), &mut out);
            Data::encode(&out)
        })
    });
    // As the engine renders now: straight into DATA form, in a buffer reused (the pool's).
    let mut expected = Vec::new();
    t.render_into(&values, &mut expected);
    let expected = Data::encode(&expected);
    let (mut out, mut scratch) = (Vec::new(), Vec::new());
    let mut w = DataWriter::new();
    t.render_data(&values, &mut w, &mut out, &mut scratch);
    assert_eq!(w.finish_data(out), expected);
    g.bench_function("render_data_10k_template_reused_buffer", |b| {
        let (mut out, mut scratch) = (Vec::with_capacity(12 << 10), Vec::new());
        b.iter(|| {
            out.clear();
            let mut w = DataWriter::new();
            t.render_data(black_box(&values), &mut w, &mut out, &mut scratch);
            let data = w.finish_data(std::mem::take(&mut out));
            let size = data.size();
            out = data.into_bytes();
            size
        })
    });
    g.finish();
}

// --- 5. DNS messages -------------------------------------------------------------------

const MX_HOSTS: [(u16, &str); 5] = [
    (5, "gmail-smtp-in.l.google.com."),
    (10, "alt1.gmail-smtp-in.l.google.com."),
    (20, "alt2.gmail-smtp-in.l.google.com."),
    (30, "alt3.gmail-smtp-in.l.google.com."),
    (40, "alt4.gmail-smtp-in.l.google.com."),
];

/// An MX response for gmail.com: 5 MX answers and an A record for each host in the
/// additional section, encoded by hickory-proto as a resolver would send it.
fn mx_response(id: u16) -> Vec<u8> {
    let owner = Name::from_ascii("gmail.com.").unwrap();
    let mut m = Message::response(id, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.metadata.recursion_available = true;
    m.add_query(Query::query(owner.clone(), RecordType::MX));
    for (i, (pref, host)) in MX_HOSTS.iter().enumerate() {
        let host = Name::from_ascii(host).unwrap();
        m.add_answer(Record::from_rdata(
            owner.clone(),
            3600 - i as u32,
            RData::MX(MX::new(*pref, host.clone())),
        ));
        m.add_additional(Record::from_rdata(
            host,
            300,
            RData::A(A::new(142, 250, 27, 26 + i as u8)),
        ));
    }
    m.to_vec().unwrap()
}

fn dns(c: &mut Criterion) {
    let response = mx_response(0x1234);
    // Correctness, once, untimed.
    match parse_response(&response, 0x1234, "gmail.com", QueryType::Mx).unwrap() {
        Answer::Mx { records, ttl_s } => {
            assert_eq!(records.len(), MX_HOSTS.len());
            assert_eq!(records[0], (5, "gmail-smtp-in.l.google.com".to_string()));
            assert_eq!(ttl_s, 3600 - 4);
        }
        other => panic!("unexpected answer {other:?}"),
    }
    let query = build_query(0x1234, "gmail.com", QueryType::Mx).unwrap();
    assert_eq!(&query[..2], &[0x12, 0x34]);

    let mut g = c.benchmark_group("dns");
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_mx_response_5_mx_5_additional_a", |b| {
        b.iter(|| parse_response(black_box(&response), 0x1234, "gmail.com", QueryType::Mx))
    });
    g.bench_function("build_mx_query", |b| {
        b.iter(|| build_query(black_box(0x1234), black_box("gmail.com"), QueryType::Mx))
    });
    g.finish();
}

// --- 6. Rate limiting ------------------------------------------------------------------

// The rate limiter: `delivery::throttle::Throttle`, fed every transaction's results on the
// owner shard (`record`), asked for the pacing interval before every send (`interval`); and
// the classification of every answer, whose `pushback` flag feeds it.
fn rate(c: &mut Criterion) {
    let delivered = RcptResult::Reply(Reply::new(250, "2.0.0 Ok: queued as 4F2B1C0A3D"));
    let rate_limited = RcptResult::Reply(Reply::new(
        450,
        "4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address.",
    ));
    let greylisted = Reply::new(451, "4.7.1 Greylisted, please try again in 300 seconds");
    // Correctness, once, untimed.
    let o = classify(&delivered);
    assert_eq!((o.verdict, o.pushback), (Verdict::Delivered, false));
    let o = classify(&rate_limited);
    assert_eq!((o.verdict, o.pushback), (Verdict::Deferred, true));
    assert!(!is_rate_limit(greylisted.enhanced, &greylisted.text()));

    let mut g = c.benchmark_group("rate");
    g.throughput(Throughput::Elements(1));
    g.bench_function("classify_250_per_recipient", |b| {
        b.iter(|| classify(black_box(&delivered)))
    });
    g.bench_function("classify_450_rate_limit", |b| {
        b.iter(|| classify(black_box(&rate_limited)))
    });
    // A 4xx that is not pushback scans every phrase: the worst case of the check.
    let text = greylisted.text();
    g.bench_function("is_rate_limit_greylist_miss", |b| {
        b.iter(|| is_rate_limit(black_box(greylisted.enhanced), black_box(&text)))
    });
    // One accepted message recorded and the next send paced, as a worker does per message,
    // with an adaptive limit in force (the clock advances 1 ms per message).
    let start = std::time::Instant::now();
    let mut throttle = Throttle::new(Some(5000.0), start);
    let ms = |n| start + std::time::Duration::from_millis(n);
    throttle.record(100, false, ms(500), ms(500));
    assert!(matches!(
        throttle.record(0, true, ms(600), ms(600)),
        Change::Decreased(_)
    ));
    assert!(throttle.adaptive_limit().is_some());
    let mut now = start + std::time::Duration::from_secs(1);
    g.bench_function("throttle_record_and_interval", |b| {
        b.iter(|| {
            now += std::time::Duration::from_millis(1);
            throttle.record(black_box(1), false, now, now);
            black_box(throttle.interval())
        })
    });
    g.finish();
}

// --- The delivery log's JSON ------------------------------------------------------------

/// A delivery-log line as serde would write it: the same fields, in the same order, empty
/// optional ones left out, so both writers produce the same bytes (checked before timing).
#[derive(serde::Serialize)]
struct SerdeRecord<'a> {
    ts: &'a str,
    #[serde(rename = "type")]
    event: &'a str,
    recipient: &'a str,
    sender: &'a str,
    campaign: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    tenant: &'a str,
    domain: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    provider: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    mx: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    ip: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    tls: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<u16>,
    #[serde(skip_serializing_if = "str::is_empty")]
    enhanced: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    response: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    attempt: Option<u32>,
    #[serde(skip_serializing_if = "str::is_empty")]
    message_id: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    bounce_category: &'a str,
}

fn serde_line(r: &LogRecord<'_>, ts: &mut Vec<u8>, out: &mut Vec<u8>) {
    ts.clear();
    rfc3339_utc(r.ts_unix_ms, ts);
    let line = SerdeRecord {
        ts: std::str::from_utf8(ts).expect("ASCII"),
        event: r.event.map_or("", EventType::as_str),
        recipient: r.recipient,
        sender: r.sender,
        campaign: r.campaign,
        tenant: r.tenant,
        domain: r.domain,
        provider: r.provider,
        mx: r.mx,
        ip: r.ip,
        tls: r.tls,
        code: r.code,
        enhanced: r.enhanced,
        response: r.response,
        attempt: r.attempt,
        message_id: r.message_id,
        bounce_category: r.bounce_category,
    };
    serde_json::to_writer(&mut *out, &line).expect("writing to a Vec");
    out.push(b'\n');
}

fn delivery_log(c: &mut Criterion) {
    let record = LogRecord {
        ts_unix_ms: 1_800_000_000_123,
        event: Some(EventType::Delivery),
        recipient: "jane.doe+news@example.com",
        sender: "bounces@sender.example",
        campaign: "spring-sale",
        tenant: "acme",
        domain: "example.com",
        provider: "gmail",
        source: "",
        scope: "",
        mx: "gmail-smtp-in.l.google.com",
        ip: "142.250.102.27",
        tls: "TLSv1.3",
        code: Some(250),
        enhanced: "2.0.0",
        response: "2.0.0 OK  1700000000 a1b2c3d4e5f6-1234567890abcdef.123 - gsmtp \"quoted\"",
        attempt: Some(1),
        message_id: "<1800000000123.42@mta.acme.example>",
        bounce_category: "",
    };
    let (mut a, mut b, mut ts) = (Vec::new(), Vec::new(), Vec::new());
    format_record(&record, &mut a);
    serde_line(&record, &mut ts, &mut b);
    assert_eq!(
        String::from_utf8_lossy(&a),
        String::from_utf8_lossy(&b),
        "the two writers differ"
    );
    let mut g = c.benchmark_group("delivery_log");
    g.throughput(Throughput::Elements(1));
    g.bench_function("hand_written", |bench| {
        bench.iter(|| {
            a.clear();
            format_record(black_box(&record), &mut a);
            black_box(a.len())
        })
    });
    g.bench_function("serde_json", |bench| {
        bench.iter(|| {
            b.clear();
            serde_line(black_box(&record), &mut ts, &mut b);
            black_box(b.len())
        })
    });
    g.finish();
}

criterion_group!(
    benches,
    reply_parsing,
    session,
    data_writer,
    template,
    dns,
    rate,
    delivery_log
);
criterion_main!(benches);
