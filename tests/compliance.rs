//! The big providers' sender rules on campaigns: one-click unsubscribe fields added to a
//! template that lacks them (with a token per recipient that verifies under the secret and
//! names that recipient), a Feedback-ID, a batch header's own unsubscribe addresses, and the
//! checks before sending: `warn` logs a `Check` record and sends, `refuse` puts the campaign
//! in bad/ with the reason.

mod common;

use common::sink::Sink;
use common::*;
use std::collections::HashMap;
use std::time::Duration;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/dkim");
const SECRET: &str = "a long and random secret";

/// A campaign from `from`; `fields` are more template header lines, `extra_header` more
/// batch header keys (JSON).
fn batch(
    campaign: &str,
    from: &str,
    fields: &str,
    extra_header: &str,
    recipients: &[&str],
) -> Vec<u8> {
    let mut header = serde_json::json!({
        "campaign": campaign, "tenant": "acme", "from": "bounces@acme.example",
        "template": format!("From: Acme <{from}>\r\nTo: {{{{ to }}}}\r\nSubject: hi\r\n{fields}\r\nHello\r\n")
    });
    if !extra_header.is_empty() {
        let extra: serde_json::Value = serde_json::from_str(extra_header).unwrap();
        header
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
    }
    let mut s = format!("{header}\n");
    for r in recipients {
        s.push_str(&format!("{}\n", serde_json::json!({ "to": r })));
    }
    s.into_bytes()
}

/// The value of `name` in a received message (unfolded).
fn field(message: &str, name: &str) -> Option<String> {
    spate::message::find_header(message.as_bytes(), name)
}

#[test]
fn unsubscribe_fields_tokens_and_checks_before_sending() {
    let sink = Sink::start(HashMap::new());
    let extra = format!(
        "[delivery]\nallow_private_destinations = true\n\
         [[routes]]\ndomain = \"*.test\"\nhosts = [\"{}\"]\n\
         [[dkim]]\ndomain = \"acme.example\"\nselector = \"s1\"\nkey = \"{FIXTURES}/ed25519.pem\"\n\
         [checks]\ndkim = \"refuse\"\nunsubscribe = \"warn\"\n\
         [unsubscribe]\nurl = \"https://unsub.acme.example/u/{{{{ token }}}}\"\n\
         mailto = \"unsubscribe@acme.example\"\nsecret = \"{SECRET}\"\n",
        sink.addr
    );
    let env = Env::new(2, "", &extra);
    let engine = env.start();
    // Aligned and given the unsubscribe fields: delivered, no warning.
    env.drop_input(
        "spring.jsonl",
        &batch(
            "spring",
            "news@acme.example",
            "",
            "",
            &["alice@x.test", "bob@x.test"],
        ),
    );
    // The batch header's own mailbox, with the configuration's URL.
    env.drop_input(
        "own.jsonl",
        &batch(
            "own",
            "news@mail.acme.example",
            "",
            r#"{"unsubscribe": {"mailto": "leave@acme.example"}}"#,
            &["carol@x.test"],
        ),
    );
    // The template's own List-Unsubscribe, a mailto only: kept, no one-click, a warning.
    env.drop_input(
        "handmade.jsonl",
        &batch(
            "handmade",
            "news@acme.example",
            "List-Unsubscribe: <mailto:list@acme.example>\r\n",
            "",
            &["erin@x.test"],
        ),
    );
    // From a domain no key is aligned with: refused whole.
    env.drop_input(
        "stray.jsonl",
        &batch("stray", "news@stray.example", "", "", &["dave@x.test"]),
    );
    wait_final(&env, &engine, 4, Duration::from_secs(30));
    wait_until(Duration::from_secs(10), "stray.jsonl in bad/", || {
        env.spool_files("bad").len() == 2
    });
    assert_eq!(env.spool_files("bad"), ["stray.jsonl", "stray.jsonl.err"]);
    let why = std::fs::read_to_string(env.path("spool/bad/stray.jsonl.err")).unwrap();
    assert!(
        why.contains(
            "refused by [checks]: no [[dkim]] key is aligned with the From domain stray.example"
        ),
        "{why}"
    );

    let bodies = sink.received.lock().unwrap().bodies.clone();
    assert!(!bodies.contains_key("dave@x.test"));
    let rules = spate::compliance::Rules::new(
        Default::default(),
        SECRET,
        spate::config::Checks::off(),
        Default::default(),
    );
    for rcpt in ["alice@x.test", "bob@x.test"] {
        let m = &bodies[rcpt];
        let lu = field(m, "list-unsubscribe").expect("List-Unsubscribe");
        let token = lu
            .split("https://unsub.acme.example/u/")
            .nth(1)
            .and_then(|t| t.split('>').next())
            .unwrap_or_else(|| panic!("the URL with its token: {lu}\n{m}"))
            .to_string();
        assert!(
            lu.ends_with(&format!(
                "<mailto:unsubscribe@acme.example?subject=unsubscribe%20{token}>"
            )),
            "{lu}"
        );
        // The endpoint needs nothing but the secret to know whom the click is for.
        assert_eq!(
            rules.verify_token(&token),
            Some((rcpt.to_string(), "acme".to_string(), "spring".to_string()))
        );
        assert_eq!(
            field(m, "list-unsubscribe-post").as_deref(),
            Some("List-Unsubscribe=One-Click")
        );
        assert_eq!(
            field(m, "feedback-id").as_deref(),
            Some("spring:acme:acme.example")
        );
        // Signed, and the signature covers the fields added.
        let sig: String = field(m, "dkim-signature")
            .expect("signed")
            .split_whitespace()
            .collect();
        assert!(
            sig.contains("list-unsubscribe:list-unsubscribe:list-unsubscribe-post:list-unsubscribe-post:feedback-id:feedback-id"),
            "{sig}"
        );
    }
    let carol = &bodies["carol@x.test"];
    let lu = field(carol, "list-unsubscribe").unwrap();
    assert!(
        lu.starts_with("<https://unsub.acme.example/u/v1.")
            && lu.contains(">, <mailto:leave@acme.example?subject=unsubscribe%20v1."),
        "{lu}"
    );
    let erin = &bodies["erin@x.test"];
    assert_eq!(
        field(erin, "list-unsubscribe").as_deref(),
        Some("<mailto:list@acme.example>")
    );
    assert_eq!(field(erin, "list-unsubscribe-post"), None);

    let checks: Vec<serde_json::Value> = env
        .log_records()
        .into_iter()
        .filter(|r| r["type"] == "Check")
        .collect();
    assert_eq!(checks.len(), 1, "{checks:#?}");
    assert_eq!(checks[0]["campaign"], "handmade");
    assert!(
        checks[0]["response"]
            .as_str()
            .unwrap()
            .starts_with("no one-click unsubscribe"),
        "{}",
        checks[0]
    );
    assert_eq!(engine.stop(Duration::from_secs(20)).code(), Some(0));
}

#[test]
fn gateway_mail_is_checked_and_suppressed_at_rcpt() {
    let sink = Sink::start(HashMap::new());
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("list.txt");
    std::fs::write(&list, "blocked@x.test\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let extra = format!(
        "[delivery]\nallow_private_destinations = true\n\
         [[routes]]\ndomain = \"*.test\"\nhosts = [\"{}\"]\n\
         [[listeners]]\nlisten = \"127.0.0.1:{port}\"\ntls = \"none\"\nrelay_networks = [\"127.0.0.1\"]\n\
         [[dkim]]\ndomain = \"acme.example\"\nselector = \"s1\"\nkey = \"{FIXTURES}/ed25519.pem\"\n\
         [checks]\ndkim = \"refuse\"\nfrom = \"warn\"\n\
         [suppression]\nfiles = [{list:?}]\n",
        sink.addr
    );
    let env = Env::new(2, "", &extra);
    let engine = env.start();
    // Python's smtplib: one message to a listed and an unlisted recipient, one from a domain
    // no key is aligned with, one without a From at all.
    let script = format!(
        r#"
import smtplib
def send(frm, to, msg):
    s = smtplib.SMTP("127.0.0.1", {port}, timeout=20)
    try:
        print("refused", sorted(s.sendmail(frm, to, msg).keys()))
    except smtplib.SMTPRecipientsRefused as e:
        print("all refused", {{k: v[0] for k, v in e.recipients.items()}})
    except smtplib.SMTPDataError as e:
        print("data", e.smtp_code, e.smtp_error.decode())
    s.quit()
send("ops@acme.example", ["ok@x.test", "blocked@x.test"], "From: ops@acme.example\r\nSubject: a\r\n\r\na\r\n")
send("ops@stray.example", ["ok@x.test"], "From: ops@stray.example\r\nSubject: b\r\n\r\nb\r\n")
send("ops@acme.example", ["ok@x.test"], "Subject: c\r\n\r\nc\r\n")
"#
    );
    let out = std::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .expect("python3 (CI installs it)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines[0], "refused ['blocked@x.test']", "{said}");
    assert_eq!(
        lines[1],
        "data 550 5.7.1 refused by [checks]: no [[dkim]] key is aligned with the From domain stray.example",
        "{said}"
    );
    assert_eq!(lines[2], "refused []", "{said}");
    wait_until(Duration::from_secs(30), "two deliveries", || {
        env.count_events("Delivery") == 2
    });
    let records = env.log_records();
    let rejected = records
        .iter()
        .find(|r| r["type"] == "Rejected")
        .expect("a Rejected record");
    assert_eq!(rejected["recipient"], "blocked@x.test");
    assert!(
        rejected["response"]
            .as_str()
            .unwrap()
            .contains("suppressed: blocked@x.test is listed in"),
        "{rejected}"
    );
    let checks: Vec<&serde_json::Value> = records.iter().filter(|r| r["type"] == "Check").collect();
    assert_eq!(checks.len(), 1, "{checks:?}");
    assert_eq!(checks[0]["response"], "no From header");
    assert_eq!(sink.received.lock().unwrap().deliveries["ok@x.test"], 2);
    assert_eq!(engine.stop(Duration::from_secs(20)).code(), Some(0));
}
