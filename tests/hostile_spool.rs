//! A hostile corpus for the spool, through the real binary and a sink on loopback. Every
//! input gets its documented outcome: a bad recipient is refused alone (one `Rejected`
//! record naming the problem) and the rest of its batch is delivered; a bad file goes to
//! `bad/` with `NAME.err` naming the line; whatever reaches the receiver is well-formed (CRLF
//! only, no line over 998 octets, exactly one end of data, the header fields meant) and,
//! dot-stuffing undone, exactly the message meant once its line endings are canonical.
//! Files that are not regular files, names that are terminal escapes and files that change
//! after the rename never stop intake or the engine.

mod common;

use common::hostile::assert_received_exactly;
use common::sink::Sink;
use common::*;
use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

const SETTLE: Duration = Duration::from_secs(60);

/// A header variable, a body variable, and Date and Message-ID of its own, so that what is
/// sent is exactly the rendering (the engine adds neither).
const TEMPLATE: &str = "From: Acme <news@acme.example>\r\nTo: {{ to }}\r\nSubject: Hi {{ name }}\r\nDate: Tue, 01 Dec 2026 00:00:00 +0000\r\nMessage-ID: <corpus@acme.example>\r\n\r\nHello {{ name }}!\r\n{{ body }}\r\nThe end.\r\n";
const TEMPLATE_FIELDS: [&str; 5] = ["From", "To", "Subject", "Date", "Message-ID"];
const PICKUP_FIELDS: [&str; 3] = ["From", "To", "Subject"];

fn routes_to(sink: &Sink) -> String {
    format!(
        "[delivery]\nretry_first = \"1s\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[[routes]]\ndomain = \"a.test\"\nhosts = [\"{0}\"]\n[[routes]]\ndomain = \"p.test\"\nhosts = [\"{0}\"]\n",
        sink.addr
    )
}

fn batch_header() -> String {
    serde_json::json!({"campaign": "corpus", "from": "bounces@acme.example", "template": TEMPLATE})
        .to_string()
}

/// A plain batch (the shared test header) for `rcpts`.
fn plain_batch(rcpts: &[&str]) -> Vec<u8> {
    let mut s = format!("{HEADER}\n");
    for r in rcpts {
        s.push_str(&format!(
            "{{\"to\":\"{r}\",\"vars\":{{\"first_name\":\"N\"}}}}\n"
        ));
    }
    s.into_bytes()
}

/// What one refused recipient's `Rejected` record must say after `line N: `.
enum Reason {
    Exactly(String),
    Containing(&'static str),
}

/// The campaign batch of the corpus, and what should become of each line.
struct Corpus {
    bytes: Vec<u8>,
    lines: usize,
    /// Recipient and the message meant for it.
    accepted: Vec<(String, Vec<u8>)>,
    /// Line, the recipient the record names ("" when the line could not be read), reason.
    rejected: Vec<(usize, String, Reason)>,
}

impl Corpus {
    fn new() -> Corpus {
        let mut c = Corpus {
            bytes: Vec::new(),
            lines: 0,
            accepted: Vec::new(),
            rejected: Vec::new(),
        };
        c.push(batch_header().as_bytes());
        c
    }

    fn push(&mut self, line: &[u8]) -> usize {
        self.bytes.extend_from_slice(line);
        self.bytes.push(b'\n');
        self.lines += 1;
        self.lines
    }

    fn line(to: &str, name: &str, body: &str) -> String {
        serde_json::json!({"to": to, "vars": {"name": name, "body": body}}).to_string()
    }

    fn accept(&mut self, to: &str, name: &str, body: &str) {
        self.push(Corpus::line(to, name, body).as_bytes());
        let meant = TEMPLATE
            .replace("{{ to }}", to)
            .replace("{{ name }}", name)
            .replace("{{ body }}", body);
        self.accepted.push((to.to_string(), meant.into_bytes()));
    }

    /// A value that may not go into a header: refused naming the variable.
    fn refuse_value(&mut self, to: &str, name: &str, body: &str, reason: &str) {
        let n = self.push(Corpus::line(to, name, body).as_bytes());
        self.rejected
            .push((n, to.to_string(), Reason::Exactly(reason.to_string())));
    }

    fn refuse_raw(&mut self, bytes: &[u8], recipient: &str, reason: Reason) {
        let n = self.push(bytes);
        self.rejected.push((n, recipient.to_string(), reason));
    }
}

fn campaign_corpus() -> Corpus {
    let mut c = Corpus::new();
    let cr_lf = "variable \"name\" would put CR or LF into a header";
    c.accept("plain@a.test", "Plain", "nothing odd");
    c.refuse_value("cr@a.test", "a\rb", "x", cr_lf);
    c.accept("lf-dot-lf@a.test", "LF", "before\n.\nafter");
    c.refuse_value("lf@a.test", "a\nb", "x", cr_lf);
    c.accept("crlf-dot-crlf@a.test", "CRLF", "before\r\n.\r\nafter");
    c.refuse_value("nul@a.test", "a\0b", "x", "variable \"name\" contains NUL");
    c.accept("cr-dot-cr@a.test", "CR", "before\r.\rafter");
    // The value is the whole line in the body: a lone dot line.
    c.accept("lone-dot@a.test", "Dot", ".");
    c.refuse_value("h-crlf-dot@a.test", "x\r\n.\r\ny", "x", cr_lf);
    c.refuse_value("h-lf-dot@a.test", "x\n.\ny", "x", cr_lf);
    c.refuse_value("h-cr-dot@a.test", "x\r.\ry", "x", cr_lf);
    c.refuse_value("h-lone-dot@a.test", "\r\n.\r\n", "x", cr_lf);
    c.refuse_value("bcc@a.test", "x\r\nBcc: evil@x", "x", cr_lf);
    c.accept(
        "bcc-in-body@a.test",
        "Body",
        "x\r\nBcc: evil@x\r\n\r\nnot a header",
    );
    c.refuse_value(
        "body-nul@a.test",
        "N",
        "a\0b",
        "variable \"body\" contains NUL",
    );
    // SMTP smuggling: an end of data and a second transaction inside a value.
    c.accept(
        "smuggle@a.test",
        "Smuggler",
        "x\r\n.\r\nMAIL FROM:<evil@x.test>\r\nRCPT TO:<victim@a.test>\r\nDATA\r\nevil\r\n.\r\nQUIT\r\n",
    );
    c.accept(
        "smuggle-lf@a.test",
        "Smuggler",
        "x\n.\nMAIL FROM:<evil@x.test>\nRCPT TO:<victim@a.test>\nDATA\nevil\n.\n",
    );
    c.accept(
        "mixed@a.test",
        "Mixed",
        "\n.\r\n\r.\n\r\r\n.\r..\n...\r\n.x\r\n.",
    );
    c.accept("dots@a.test", ". . .", ".\r\n.");
    // A body line over 998 octets (within the 64 KiB recipient line): broken, not refused.
    c.accept("long-body-line@a.test", "Long", &"y".repeat(60_000));
    // Raw bytes that are not UTF-8 inside JSON strings (not escapes).
    c.refuse_raw(
        b"{\"to\":\"utf8-var@a.test\",\"vars\":{\"name\":\"caf\xe9\",\"body\":\"x\"}}",
        "",
        Reason::Containing("invalid unicode code point"),
    );
    c.refuse_raw(
        b"{\"to\":\"utf8-\xff\xfe@a.test\",\"vars\":{\"name\":\"N\",\"body\":\"x\"}}",
        "",
        Reason::Containing("invalid unicode code point"),
    );
    let huge_to = format!("{}@a.test", "h".repeat(1 << 20));
    let line = Corpus::line(&huge_to, "N", "x");
    let reason = format!(
        "recipient line is {} bytes, over the 65536-byte limit",
        line.len()
    );
    c.refuse_raw(line.as_bytes(), "", Reason::Exactly(reason));
    let line = Corpus::line("huge-body@a.test", "N", &"b".repeat(1 << 20));
    let reason = format!(
        "recipient line is {} bytes, over the 65536-byte limit",
        line.len()
    );
    c.refuse_raw(line.as_bytes(), "", Reason::Exactly(reason));
    c.accept("after-the-huge-ones@a.test", "Last", "still here");
    c
}

/// A pickup: envelope lines (ending in `eol`), then the message as it is.
fn pickup(rcpts: &[&str], eol: &str, message: &[u8]) -> Vec<u8> {
    let mut v = format!("x-sender: <bounces@acme.example>{eol}").into_bytes();
    for r in rcpts {
        v.extend_from_slice(format!("x-receiver: <{r}>{eol}").as_bytes());
    }
    v.extend_from_slice(format!("x-job: corpus{eol}").as_bytes());
    v.extend_from_slice(message);
    v
}

struct Pickup {
    name: String,
    rcpts: Vec<String>,
    message: Vec<u8>,
    bytes: Vec<u8>,
}

fn pickup_case(name: &str, rcpt: &str, header_eol: &str, body: &[u8]) -> Pickup {
    let mut message = format!(
        "From: news@acme.example{header_eol}To: {rcpt}{header_eol}Subject: {name}{header_eol}{header_eol}"
    )
    .into_bytes();
    message.extend_from_slice(body);
    Pickup {
        name: name.to_string(),
        rcpts: vec![rcpt.to_string()],
        bytes: pickup(&[rcpt], "\r\n", &message),
        message,
    }
}

/// About 140 KB of message in which `\r\n.\r` starts `shift + 1` bytes before each multiple
/// of 16 KiB (16383 for shift 0, so the CR and the LF sit on either side of the boundary), at
/// the buffer ends of readers and writers along the way.
fn straddling(name: &str, rcpt: &str, shift: usize) -> Pickup {
    let mut p = pickup_case(name, rcpt, "\r\n", b"");
    let filler =
        b"abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmn\r\n";
    while p.message.len() < 140_000 {
        p.message.extend_from_slice(filler);
    }
    for boundary in [16384, 32768, 49152, 65536, 131072] {
        let at = boundary - 1 - shift;
        p.message[at..at + 4].copy_from_slice(b"\r\n.\r");
    }
    p.bytes = pickup(&[rcpt], "\r\n", &p.message);
    p
}

fn pickup_corpus() -> Vec<Pickup> {
    let mut v = vec![
        pickup_case(
            "bare-lf.eml",
            "bare-lf@p.test",
            "\n",
            b"line one\n.\nline three\n..\n.leading dot\nlast\n",
        ),
        pickup_case(
            "bare-cr.eml",
            "bare-cr@p.test",
            "\r\n",
            b"line one\r.\rline three\r..\r.leading dot\rlast\r",
        ),
        pickup_case(
            "mixed.eml",
            "mixed@p.test",
            "\r\n",
            b"a\r\n.\rb\n.\r\nc\r\r\n.\nd\n\r.\r\n\r\n.\r\n",
        ),
        pickup_case(
            "no-final-newline.eml",
            "no-final-newline@p.test",
            "\r\n",
            b"first\r\nthe last line has no newline",
        ),
        pickup_case(
            "no-final-newline-dot.eml",
            "no-final-newline-dot@p.test",
            "\r\n",
            b"first\r\n.",
        ),
        pickup_case(
            "nul.eml",
            "nul@p.test",
            "\r\n",
            b"a\0b\r\n\0\0\r\n.\0\r\n\0.\r\n",
        ),
    ];
    let mut long = b"short\r\n".to_vec();
    long.extend(std::iter::repeat_n(b"abcdefghij", (1 << 20) / 10).flatten());
    long.extend_from_slice(b"\r\nafter\r\n");
    v.push(pickup_case(
        "one-mib-line.eml",
        "one-mib-line@p.test",
        "\r\n",
        &long,
    ));
    // The same address twice: one copy, and one Rejected record naming the duplicate.
    let mut dup = pickup_case("dup.eml", "dup@p.test", "\r\n", b"once\r\n");
    dup.rcpts.push("other@p.test".into());
    dup.bytes = pickup(
        &["dup@p.test", "other@p.test", "dup@p.test"],
        "\r\n",
        &dup.message,
    );
    v.push(dup);
    for shift in 0..4 {
        v.push(straddling(
            &format!("straddle-{shift}.eml"),
            &format!("straddle-{shift}@p.test"),
            shift,
        ));
    }
    v
}

fn bad_err(env: &Env, name: &str) -> String {
    std::fs::read_to_string(env.path(&format!("spool/bad/{name}.err"))).unwrap_or_default()
}

#[test]
fn hostile_content_is_refused_alone_or_arrives_exactly_as_meant() {
    let sink = Sink::start(HashMap::new());
    let env = Env::new(2, "", &routes_to(&sink));
    let mut engine = env.start();

    let corpus = campaign_corpus();
    env.drop_input("corpus.jsonl", &corpus.bytes);
    let pickups = pickup_corpus();
    for p in &pickups {
        env.drop_input(&p.name, &p.bytes);
    }
    let long_header = pickup(
        &["long-header@p.test"],
        "\r\n",
        format!(
            "From: news@acme.example\r\nSubject: {}\r\n\r\nbody\r\n",
            "x".repeat(1191)
        )
        .as_bytes(),
    );
    env.drop_input("long-header.eml", &long_header);
    env.drop_input(
        "envelope-utf8.eml",
        b"x-sender: <bounces@acme.example>\r\nx-receiver: <b\xffd@p.test>\r\nFrom: news@acme.example\r\nSubject: s\r\n\r\nbody\r\n",
    );

    let delivered = corpus.accepted.len() + pickups.iter().map(|p| p.rcpts.len()).sum::<usize>();
    wait_final(&env, &engine, delivered, SETTLE);
    wait_until(SETTLE, "the refused pickups in bad/", || {
        env.spool_files("bad").len() == 4
    });
    assert_eq!(engine.exited(), None, "the engine is still running");
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));

    // The refused pickups: in bad/, each with its reason naming the line.
    assert_eq!(
        bad_err(&env, "long-header.eml").trim_end(),
        "line 5: header line is 1200 octets, over the 998-octet limit of RFC 5322 \
         (pickup messages are sent as they are, not rewritten)"
    );
    assert_eq!(
        bad_err(&env, "envelope-utf8.eml").trim_end(),
        "line 2: envelope line is not valid UTF-8"
    );
    assert!(env.spool_files("incoming").is_empty());

    // One Rejected record per bad recipient line, naming the line and the problem.
    let records = env.log_records();
    // (The duplicate x-receiver of dup.eml is the one pickup recipient refused.)
    let (pickup_rejected, rejected): (Vec<&serde_json::Value>, Vec<&serde_json::Value>) = records
        .iter()
        .filter(|r| r["type"] == "Rejected")
        .partition(|r| r["response"].as_str().unwrap().contains("x-receiver"));
    assert_eq!(rejected.len(), corpus.rejected.len(), "{rejected:#?}");
    assert_eq!(pickup_rejected.len(), 1, "{pickup_rejected:#?}");
    assert_eq!(
        pickup_rejected[0]["response"],
        "line 4: duplicate of the x-receiver on line 2"
    );
    for (line, recipient, reason) in &corpus.rejected {
        let prefix = format!("line {line}: ");
        let matching: Vec<&&serde_json::Value> = rejected
            .iter()
            .filter(|r| r["response"].as_str().unwrap().starts_with(&prefix))
            .collect();
        assert_eq!(
            matching.len(),
            1,
            "one record for line {line}: {rejected:#?}"
        );
        let r = matching[0];
        assert_eq!(r["recipient"], recipient.as_str(), "{r}");
        assert_eq!(r["campaign"], "corpus", "{r}");
        let text = &r["response"].as_str().unwrap()[prefix.len()..];
        match reason {
            Reason::Exactly(want) => assert_eq!(text, want, "line {line}"),
            Reason::Containing(want) => {
                assert!(text.starts_with("invalid JSON"), "line {line}: {text}");
                assert!(text.contains(want), "line {line}: {text}");
            }
        }
        if !recipient.is_empty() {
            assert!(
                !records
                    .iter()
                    .any(|x| x["recipient"] == recipient.as_str() && x["type"] != "Rejected"),
                "{recipient} was refused, never queued"
            );
        }
    }

    // Everything else delivered, once, exactly as meant.
    let got = sink.received.lock().unwrap();
    let mut want_rcpts: BTreeSet<String> = corpus.accepted.iter().map(|(r, _)| r.clone()).collect();
    want_rcpts.extend(pickups.iter().flat_map(|p| p.rcpts.iter().cloned()));
    let got_rcpts: BTreeSet<String> = got.deliveries.keys().cloned().collect();
    assert_eq!(got_rcpts, want_rcpts, "exactly the accepted recipients");
    assert!(got.deliveries.values().all(|&n| n == 1), "each once");
    let mut transactions = got.transactions.clone();
    transactions.sort();
    let mut want_transactions: Vec<usize> = corpus.accepted.iter().map(|_| 1).collect();
    want_transactions.extend(pickups.iter().map(|p| p.rcpts.len()));
    want_transactions.sort();
    assert_eq!(
        transactions, want_transactions,
        "one transaction per message, none smuggled in"
    );
    for (rcpt, meant) in &corpus.accepted {
        assert_received_exactly(got.bodies[rcpt].as_bytes(), meant, &TEMPLATE_FIELDS, rcpt);
    }
    for p in &pickups {
        for rcpt in &p.rcpts {
            assert_received_exactly(
                got.bodies[rcpt].as_bytes(),
                &p.message,
                &PICKUP_FIELDS,
                &format!("{} to {rcpt}", p.name),
            );
        }
    }
    drop(got);
    for r in records.iter().filter(|r| r["type"] == "Delivery") {
        assert_eq!(r["attempt"], 1, "{r}");
    }
    sink.stop();
}

/// The delivery log names envelope addresses: a duplicate x-receiver written `<addr>` (as
/// PowerMTA pickups write them) is logged as `addr` at its domain, as every other record is.
#[test]
fn a_rejected_duplicate_x_receiver_is_logged_with_its_address() {
    let env = Env::new(1, "", "");
    let engine = env.start();
    let message = b"From: news@acme.example\r\nSubject: dup\r\n\r\nonce\r\n";
    env.drop_input(
        "dup.eml",
        &pickup(&["dup@p.test", "dup@p.test"], "\r\n", message),
    );
    wait_until(SETTLE, "the pickup queued", || {
        env.count_events("Reception") == 1 && env.count_events("Rejected") == 1
    });
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let rejected = env.first_record("Rejected");
    assert_eq!(
        rejected["response"],
        "line 3: duplicate of the x-receiver on line 2"
    );
    assert_eq!(rejected["recipient"], "dup@p.test", "{rejected}");
    assert_eq!(rejected["domain"], "p.test", "{rejected}");
}

fn mkfifo(path: &Path) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: mkfifo on a NUL-terminated path this test owns.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
}

/// Renames `tmp/NAME` (whatever it is) into `incoming/NAME`, as producers do.
fn rename_in(env: &Env, name: &str) {
    std::fs::rename(
        env.path("spool/tmp").join(name),
        env.path("spool/incoming").join(name),
    )
    .unwrap();
}

/// Every entry of a spool folder, whatever its type.
fn entries(env: &Env, sub: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(env.path(&format!("spool/{sub}")))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn receptions(env: &Env, prefix: &str) -> Vec<String> {
    env.log_records()
        .into_iter()
        .filter(|r| r["type"] == "Reception")
        .filter_map(|r| r["recipient"].as_str().map(str::to_string))
        .filter(|r| r.starts_with(prefix))
        .collect()
}

/// A batch whose recipients are `{prefix}{i}@a.test` for `range`.
fn numbered_lines(prefix: &str, range: std::ops::Range<usize>) -> String {
    range
        .map(|i| format!("{{\"to\":\"{prefix}{i}@a.test\",\"vars\":{{\"first_name\":\"N\"}}}}\n"))
        .collect()
}

/// The file is either processed as it was when read (`versions` lists the recipient sets it
/// had, as prefixes of one numbering) or still claimed, to be read again later.
fn processed_as_one_version_or_retried(
    env: &Env,
    engine: &EngineProcess,
    prefix: &str,
    versions: &[usize],
    name: &str,
) -> usize {
    let got = receptions(env, prefix);
    let unique: BTreeSet<&String> = got.iter().collect();
    assert_eq!(
        unique.len(),
        got.len(),
        "{prefix}: each recipient once: {got:?}"
    );
    let n = got.len();
    let claimed = entries(env, "incoming/.claimed")
        .iter()
        .any(|e| e.ends_with(name));
    if n == 0 {
        assert!(
            claimed,
            "{name}: neither queued nor waiting to be read again"
        );
        let stderr = engine.stderr();
        assert!(
            stderr.contains(&format!("cannot read {name}: changed while read"))
                && stderr.contains("retrying in 30 s"),
            "{stderr}"
        );
    } else {
        assert!(
            versions.contains(&n),
            "{name}: {n} recipients queued: {got:?}"
        );
        let want: BTreeSet<String> = (0..n).map(|i| format!("{prefix}{i}@a.test")).collect();
        assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), want, "{name}");
    }
    n
}

#[test]
fn hostile_files_never_stop_intake() {
    let sink = Sink::start(HashMap::new());
    let env = Env::new(2, "", &routes_to(&sink));
    let mut engine = env.start();
    let tmp = env.path("spool/tmp");
    std::fs::create_dir_all(&tmp).unwrap();

    // A symbolic link to a file outside the spool, renamed into incoming/.
    let secret = env.path("secret.jsonl");
    let secret_bytes = plain_batch(&["secret@a.test"]);
    std::fs::write(&secret, &secret_bytes).unwrap();
    let secret_mtime = std::fs::metadata(&secret).unwrap().modified().unwrap();
    std::os::unix::fs::symlink(&secret, tmp.join("link.jsonl")).unwrap();
    rename_in(&env, "link.jsonl");
    // A FIFO nobody writes to: opening it for reading would block.
    mkfifo(&tmp.join("pipe.jsonl"));
    rename_in(&env, "pipe.jsonl");
    std::fs::create_dir(tmp.join("dir.jsonl")).unwrap();
    rename_in(&env, "dir.jsonl");
    // Names that are terminal escapes: one good batch, one refused.
    let esc_good = "\u{1b}[2Jx.jsonl";
    let esc_bad = "\u{1b}]0;owned\u{7}bad.jsonl";
    env.drop_input(esc_good, &plain_batch(&["esc@a.test"]));
    env.drop_input(esc_bad, b"{\"not\": \"a header\"\n");

    // Files that change after the rename, through a descriptor the producer keeps open.
    // Shrinks: 10 recipients, truncated to the first 4 at once.
    let header = format!("{HEADER}\n");
    let short = format!("{header}{}", numbered_lines("s", 0..4));
    let full = format!("{short}{}", numbered_lines("s", 4..10));
    let mut shrink = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(tmp.join("shrink.jsonl"))
        .unwrap();
    shrink.write_all(full.as_bytes()).unwrap();
    rename_in(&env, "shrink.jsonl");
    shrink.set_len(short.len() as u64).unwrap();
    // Churns: two recipients and 1 MiB of blank lines, truncated to the recipients and
    // padded again without a pause until a while after the engine claimed it, so that its
    // read very likely overlaps a change.
    let valid = format!("{header}{}", numbered_lines("c", 0..2));
    let padding = format!("{}\n", " ".repeat(1023)).repeat(1024);
    let mut churn = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(tmp.join("churn.jsonl"))
        .unwrap();
    churn.write_all(valid.as_bytes()).unwrap();
    churn.write_all(padding.as_bytes()).unwrap();
    rename_in(&env, "churn.jsonl");
    let started = Instant::now();
    let mut claimed_at: Option<Instant> = None;
    for _ in 0..100_000 {
        churn.set_len(valid.len() as u64).unwrap();
        churn.write_all(padding.as_bytes()).unwrap();
        if claimed_at.is_none() && !env.path("spool/incoming/churn.jsonl").exists() {
            claimed_at = Some(Instant::now());
        }
        let settled = claimed_at.is_some_and(|t| t.elapsed() > Duration::from_millis(300));
        if settled || started.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    // Grows: three recipients, then one more every 10 ms.
    let mut grow = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(tmp.join("grow.jsonl"))
        .unwrap();
    grow.write_all(format!("{header}{}", numbered_lines("g", 0..3)).as_bytes())
        .unwrap();
    rename_in(&env, "grow.jsonl");
    for i in 3..103 {
        grow.write_all(numbered_lines("g", i..i + 1).as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(engine.exited(), None, "the engine survives changing files");

    // Dropped last: a normal batch, fully delivered.
    let last: Vec<String> = (0..5).map(|i| format!("last{i}@a.test")).collect();
    let last_refs: Vec<&str> = last.iter().map(String::as_str).collect();
    env.drop_input("last.jsonl", &plain_batch(&last_refs));
    wait_until(
        SETTLE,
        "the last batch and the escaped name delivered",
        || {
            let got = sink.received.lock().unwrap();
            last.iter()
                .chain(["esc@a.test".to_string()].iter())
                .all(|r| got.deliveries.contains_key(r))
        },
    );
    wait_until(SETTLE, "every queued recipient delivered", || {
        env.count_events("Delivery") == env.count_events("Reception")
    });
    assert_eq!(engine.exited(), None, "the engine is still running");

    // The link was never followed: nothing from its target queued or sent, the target as
    // it was; the link and the FIFO are refused into bad/ with the reason, the directory is
    // left where it is.
    assert!(receptions(&env, "secret").is_empty());
    assert!(!sink
        .received
        .lock()
        .unwrap()
        .rcpt_attempts
        .contains_key("secret@a.test"));
    assert_eq!(std::fs::read(&secret).unwrap(), secret_bytes);
    assert_eq!(
        std::fs::metadata(&secret).unwrap().modified().unwrap(),
        secret_mtime
    );
    wait_until(SETTLE, "the link and the FIFO refused into bad/", || {
        bad_err(&env, "link.jsonl").contains("symbolic link")
            && bad_err(&env, "pipe.jsonl").contains("FIFO")
    });
    let incoming = entries(&env, "incoming");
    let bad = entries(&env, "bad");
    assert!(
        env.path("spool/incoming/dir.jsonl").is_dir(),
        "incoming: {incoming:?}, bad: {bad:?}"
    );

    // The escaped names: processed, and shown escaped on stderr, never as raw controls.
    assert!(bad.contains(&esc_bad.to_string()), "{bad:?}");
    assert!(
        bad_err(&env, esc_bad).starts_with("line 1: header: invalid JSON"),
        "{}",
        bad_err(&env, esc_bad)
    );
    let stderr = std::fs::read(&engine.stderr_path).unwrap();
    assert!(
        !stderr.iter().any(|&b| b == 0x1b || b == 0x07),
        "raw control bytes on stderr: {}",
        String::from_utf8_lossy(&stderr)
    );
    let stderr = String::from_utf8_lossy(&stderr);
    assert!(
        stderr.contains("\\u{1b}[2Jx.jsonl: 1 recipients queued"),
        "{stderr}"
    );
    assert!(
        stderr.contains("\\u{1b}]0;owned\\u{7}bad.jsonl: refused"),
        "{stderr}"
    );

    // The changing files: each processed as one consistent version, or still claimed to be
    // read again (30 s later; not waited for here). Never half of one and half of another.
    processed_as_one_version_or_retried(&env, &engine, "s", &[4, 10], "shrink.jsonl");
    let churned = processed_as_one_version_or_retried(&env, &engine, "c", &[2], "churn.jsonl");
    let grown = processed_as_one_version_or_retried(
        &env,
        &engine,
        "g",
        &(3..=103).collect::<Vec<_>>(),
        "grow.jsonl",
    );
    eprintln!("grow.jsonl: {grown} recipients queued; churn.jsonl: {churned} (0: retried)");

    let got = sink.received.lock().unwrap();
    assert!(got.deliveries.values().all(|&n| n == 1), "each once");
    assert_eq!(got.deliveries.len(), env.count_events("Reception"));
    drop(got);
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    drop((shrink, churn, grow));
    sink.stop();
}

/// INTERFACE.md: refused inputs go to bad/ with NAME.err. A symbolic link renamed into
/// incoming/ is refused, not left there for ever with nothing said.
#[test]
fn a_symbolic_link_in_incoming_goes_to_bad_naming_the_link() {
    let env = Env::new(1, "", "");
    let engine = env.start();
    let secret = env.path("secret.jsonl");
    std::fs::write(&secret, plain_batch(&["secret@a.test"])).unwrap();
    std::fs::create_dir_all(env.path("spool/tmp")).unwrap();
    std::os::unix::fs::symlink(&secret, env.path("spool/tmp/link.jsonl")).unwrap();
    rename_in(&env, "link.jsonl");
    // A UNIX socket: opening it fails (ENXIO); refused at once, not retried as unreadable.
    let socket = std::os::unix::net::UnixListener::bind(env.path("spool/tmp/sock.jsonl")).unwrap();
    rename_in(&env, "sock.jsonl");
    env.drop_input("after.jsonl", &plain_batch(&["after@a.test"]));
    wait_until(SETTLE, "the batch after the link queued", || {
        env.count_events("Reception") == 1
    });
    wait_until(
        Duration::from_secs(10),
        "the link refused into bad/",
        || {
            bad_err(&env, "link.jsonl").contains("symbolic link")
                && bad_err(&env, "sock.jsonl").contains("socket")
        },
    );
    drop(socket);
    assert!(receptions(&env, "secret").is_empty());
    assert_eq!(
        std::fs::read(&secret).unwrap(),
        plain_batch(&["secret@a.test"])
    );
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
}

/// INTERFACE.md: a pickup is "sent as it is apart from line-ending normalisation", and the
/// DATA writer ends a line at a bare CR as at a bare LF. A message whose lines all end in a
/// bare CR (as old Mac tools write them) has short header lines once normalised, so the
/// header-line limit does not refuse it.
#[test]
fn a_pickup_with_bare_cr_line_endings_is_delivered() {
    let sink = Sink::start(HashMap::new());
    let env = Env::new(1, "", &routes_to(&sink));
    let engine = env.start();
    let mut body = Vec::new();
    for i in 0..30 {
        body.extend_from_slice(format!("line {i:02} {}\r", "m".repeat(60)).as_bytes());
    }
    let p = pickup_case("cr-only.eml", "cr-only@p.test", "\r", &body);
    env.drop_input(&p.name, &p.bytes);
    wait_until(SETTLE, "delivered or refused", || {
        env.count_events("Delivery") == 1 || !env.spool_files("bad").is_empty()
    });
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    assert_eq!(bad_err(&env, &p.name), "", "refused");
    let got = sink.received.lock().unwrap();
    assert_received_exactly(
        got.bodies["cr-only@p.test"].as_bytes(),
        &p.message,
        &PICKUP_FIELDS,
        &p.name,
    );
    drop(got);
    sink.stop();
}
