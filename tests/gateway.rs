//! The SMTP submission gateway against a client not written here: Python's `smtplib`. Mail
//! handed over on a `[[listeners]]` address reaches the receiver with its body intact; relay
//! without AUTH from outside `relay_networks`, a wrong password, a user sending as another
//! domain (envelope and From) and a smuggled end of data are refused, each with its code.
//! Everything stays on loopback; every process is stopped by the test.

mod common;

use common::sink::Sink;
use common::{wait_final, Env};
use std::collections::HashMap;
use std::process::Command;
use std::time::Duration;

/// A free loopback port (bound and released; the engine binds it again at once).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Runs a Python script (smtplib) and returns what it printed, one line per attempt.
fn python(script: &str) -> String {
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .expect("python3 (CI installs it)");
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Sends `commands`, waits for the 354, sends `data`, and returns every reply.
fn raw_session(port: u16, commands: &str, data: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut replies = Vec::new();
    let mut buf = [0u8; 4096];
    let mut read_until = |c: &mut std::net::TcpStream, replies: &mut Vec<u8>, end: &str| {
        while !String::from_utf8_lossy(replies).contains(end) {
            let n = c.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(replies));
            replies.extend_from_slice(&buf[..n]);
        }
    };
    c.write_all(commands.as_bytes()).unwrap();
    read_until(&mut c, &mut replies, "\r\n354 ");
    c.write_all(data.as_bytes()).unwrap();
    read_until(&mut c, &mut replies, "\r\n221 ");
    String::from_utf8_lossy(&replies).into_owned()
}

/// A Python function `attempt(label, source, user, password, sender, rcpts, message)` that
/// sends one message and prints `label code text` for the first refusal, or `label ok`.
const ATTEMPT: &str = r#"
import smtplib, sys
def attempt(label, port, source, user, password, sender, rcpts, message):
    try:
        s = smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=20)
        s.ehlo("client.test")
        if user:
            s.login(user, password)
        s.sendmail(sender, rcpts, message)
        s.quit()
        print(label, "ok")
    except smtplib.SMTPRecipientsRefused as e:
        code, text = list(e.recipients.values())[0]
        print(label, code, text.decode())
    except smtplib.SMTPResponseException as e:
        print(label, e.smtp_code, e.smtp_error.decode())
    sys.stdout.flush()
"#;

#[test]
fn smtplib_submits_relays_only_when_allowed_and_the_mail_arrives_intact() {
    let sink = Sink::start(HashMap::new());
    let port = free_port();
    // User "app", password "s3cret", may send as @acme.example.
    let real_hash = spate::gateway::password::hash("s3cret").unwrap();
    let extra = format!(
        "[delivery]\nallow_private_destinations = true\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[[routes]]\ndomain = \"*.test\"\nhosts = [\"{}\"]\n[[listeners]]\nlisten = \"127.0.0.1:{port}\"\ntls = \"none\"\nrelay_networks = [\"127.0.0.1/32\"]\n[[users]]\nname = \"app\"\npassword_hash = \"{real_hash}\"\nallowed_from = [\"@acme.example\"]\n",
        sink.addr
    );
    let env = Env::new(2, "", &extra);
    let engine = env.start();
    common::wait_until(Duration::from_secs(20), "the listener", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });

    let body = "Subject: gateway test\r\nFrom: News <news@acme.example>\r\nTo: a@one.test\r\n\r\nHello over SMTP.\r\n.leading dot stays\r\n";
    let script = format!(
        "{ATTEMPT}\nport = {port}\nm = {body:?}\n\
         attempt('trusted', port, '127.0.0.1', None, None, 'news@acme.example', ['a@one.test', 'b@two.test'], m)\n\
         attempt('outside', port, '127.0.0.2', None, None, 'news@acme.example', ['c@one.test'], m)\n\
         attempt('wrong-password', port, '127.0.0.2', 'app', 'nope', 'news@acme.example', ['c@one.test'], m)\n\
         attempt('authenticated', port, '127.0.0.2', 'app', 's3cret', 'news@acme.example', ['d@one.test'], m)\n\
         attempt('other-envelope', port, '127.0.0.2', 'app', 's3cret', 'ceo@other.example', ['e@one.test'], m)\n\
         attempt('other-from', port, '127.0.0.2', 'app', 's3cret', 'news@acme.example', ['f@one.test'], m.replace('news@acme.example', 'ceo@other.example'))\n"
    );
    let results = python(&script);
    let result = |label: &str| -> String {
        results
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{label} ")))
            .unwrap_or_else(|| panic!("{label} missing from {results}"))
            .to_string()
    };
    assert_eq!(result("trusted"), "ok", "{results}");
    assert!(result("outside").starts_with("530 5.7.0"), "{results}");
    assert!(
        result("wrong-password").starts_with("535 5.7.8"),
        "{results}"
    );
    assert_eq!(result("authenticated"), "ok", "{results}");
    assert!(
        result("other-envelope").starts_with("553 5.7.1"),
        "{results}"
    );
    assert!(result("other-from").starts_with("550 5.7.1"), "{results}");
    // smtplib repairs bare line endings, so the smuggling payload goes over a raw socket.
    let smuggled = raw_session(
        port,
        "EHLO c\r\nMAIL FROM:<news@acme.example>\r\nRCPT TO:<g@one.test>\r\nDATA\r\n",
        "Subject: x\r\n\r\nhi\n.\nMAIL FROM:<evil@e.test>\r\nRCPT TO:<h@one.test>\r\n.\r\nQUIT\r\n",
    );
    assert!(
        smuggled.contains("\r\n550 5.5.2 Message contains a bare LF\r\n221"),
        "{smuggled}"
    );

    // Guessing passwords: the third failure in a session closes it.
    let bad = "AUTH PLAIN AGFwcABub3Bl\r\n"; // \0app\0nope
    let guesses = raw_until_closed(port, &format!("EHLO c\r\n{bad}{bad}{bad}{bad}"));
    assert_eq!(guesses.matches("535 5.7.8").count(), 2, "{guesses}");
    assert!(
        guesses.ends_with("421 4.7.0 Too many failed authentications\r\n"),
        "{guesses}"
    );

    wait_final(&env, &engine, 3, Duration::from_secs(30));
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let got = sink.received.lock().unwrap();
    let mut delivered: Vec<&String> = got.deliveries.keys().collect();
    delivered.sort();
    assert_eq!(delivered, ["a@one.test", "b@two.test", "d@one.test"]);
    assert!(got.deliveries.values().all(|&n| n == 1), "no duplicates");
    let arrived = &got.bodies["a@one.test"];
    assert!(
        arrived.starts_with("Received: from client.test ([127.0.0.1])"),
        "{arrived}"
    );
    assert!(arrived.contains("with ESMTP id "), "{arrived}");
    assert!(
        arrived.contains("\r\nMessage-ID: <") && arrived.contains("\r\nDate: "),
        "{arrived}"
    );
    // The client's message byte for byte, with only the trace, Message-ID and Date added.
    let (head, tail) = arrived.split_once("\r\n\r\n").unwrap();
    let (sent_head, sent_tail) = body.split_once("\r\n\r\n").unwrap();
    assert_eq!(tail, sent_tail);
    let added = ["Received:", "\t", "Message-ID:", "Date:"];
    let kept: Vec<&str> = head
        .split("\r\n")
        .filter(|l| !added.iter().any(|a| l.starts_with(a)))
        .collect();
    assert_eq!(kept.join("\r\n"), sent_head, "{arrived}");
    assert!(got.bodies["d@one.test"].contains("with ESMTPA id "));
    drop(got);

    // Reception records carry the user, or the client address, as tenant.
    let records = env.log_records();
    let tenant = |rcpt: &str| {
        records
            .iter()
            .find(|r| r["type"] == "Reception" && r["recipient"] == rcpt)
            .map(|r| r["tenant"].as_str().unwrap_or("").to_string())
    };
    assert_eq!(tenant("a@one.test").as_deref(), Some("127.0.0.1"));
    assert_eq!(tenant("d@one.test").as_deref(), Some("app"));
    for refused in [
        "c@one.test",
        "e@one.test",
        "f@one.test",
        "g@one.test",
        "h@one.test",
    ] {
        assert!(
            !records.iter().any(|r| r["recipient"] == refused),
            "{refused} left nothing behind"
        );
    }
    sink.stop();
}

#[test]
fn starttls_and_implicit_tls_carry_auth_and_auth_in_the_clear_is_refused() {
    let sink = Sink::start(HashMap::new());
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let (submission, implicit) = (free_port(), free_port());
    let real_hash = spate::gateway::password::hash("s3cret").unwrap();
    let listener = |port: u16, tls: &str| {
        format!(
            "[[listeners]]\nlisten = \"127.0.0.1:{port}\"\ntls = \"{tls}\"\ncert = {cert_path:?}\nkey = {key_path:?}\n"
        )
    };
    let extra = format!(
        "[delivery]\nallow_private_destinations = true\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[[routes]]\ndomain = \"*.test\"\nhosts = [\"{}\"]\n{}{}[[users]]\nname = \"app\"\npassword_hash = \"{real_hash}\"\nallowed_from = [\"@acme.example\"]\n",
        sink.addr,
        listener(submission, "starttls"),
        listener(implicit, "implicit"),
    );
    let env = Env::new(2, "", &extra);
    let engine = env.start();
    for port in [submission, implicit] {
        common::wait_until(Duration::from_secs(20), "the listeners", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
    }
    // AUTH before STARTTLS: not offered, and refused with 538 if tried anyway.
    let clear = raw_commands(
        submission,
        "EHLO c\r\nAUTH PLAIN AGFwcABzM2NyZXQ=\r\nQUIT\r\n",
    );
    assert!(!clear.contains("AUTH PLAIN"), "{clear}");
    assert!(clear.contains("250-STARTTLS"), "{clear}");
    assert!(clear.contains("\r\n538 5.7.11"), "{clear}");

    let body = "Subject: over TLS\r\nFrom: news@acme.example\r\n\r\nsecret things\r\n";
    let script = format!(
        r#"
import smtplib, ssl
ctx = ssl._create_unverified_context()
s = smtplib.SMTP("127.0.0.1", {submission}, timeout=20)
s.starttls(context=ctx)
s.login("app", "s3cret")
s.sendmail("news@acme.example", ["tls@one.test"], {body:?})
s.quit()
s = smtplib.SMTP_SSL("127.0.0.1", {implicit}, context=ctx, timeout=20)
s.login("app", "s3cret")
s.sendmail("news@acme.example", ["implicit@one.test"], {body:?})
s.quit()
print("sent")
"#
    );
    assert_eq!(python(&script).trim(), "sent");
    // swaks, the other independent client: STARTTLS + AUTH on one, implicit TLS on the other.
    let message = dir.path().join("swaks.eml");
    // swaks ends the data with CRLF.CRLF itself, so the file has no final line ending.
    let swaks_body = "Subject: via swaks\r\nFrom: news@acme.example\r\n\r\nswaks body, byte for byte\r\n.dot line";
    std::fs::write(&message, swaks_body).unwrap();
    for (port, tls, rcpt) in [
        (submission, "--tls", "swaks-starttls@one.test"),
        (implicit, "--tls-on-connect", "swaks-implicit@one.test"),
    ] {
        let out = Command::new("swaks")
            .args(["--server", &format!("127.0.0.1:{port}"), tls])
            .args([
                "--auth",
                "PLAIN",
                "--auth-user",
                "app",
                "--auth-password",
                "s3cret",
            ])
            .args([
                "--from",
                "news@acme.example",
                "--to",
                rcpt,
                "--helo",
                "swaks.test",
            ])
            .args(["--timeout", "20", "--data"])
            .arg(format!("@{}", message.display()))
            .output()
            .expect("swaks (CI installs it)");
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{said}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(said.contains("<~  250 2.0.0 OK: queued as "), "{said}");
    }
    wait_final(&env, &engine, 4, Duration::from_secs(30));
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let got = sink.received.lock().unwrap();
    for rcpt in ["tls@one.test", "implicit@one.test"] {
        let arrived = &got.bodies[rcpt];
        assert!(arrived.contains("with ESMTPSA id "), "{arrived}");
        assert!(arrived.ends_with("\r\n\r\nsecret things\r\n"), "{arrived}");
    }
    for rcpt in ["swaks-starttls@one.test", "swaks-implicit@one.test"] {
        let arrived = &got.bodies[rcpt];
        assert!(
            arrived.starts_with("Received: from swaks.test ("),
            "{arrived}"
        );
        assert!(arrived.contains("with ESMTPSA id "), "{arrived}");
        // The message as swaks sent it, after the fields the gateway adds.
        let (_, sent_tail) = swaks_body.split_once("\r\n\r\n").unwrap();
        assert!(arrived.contains("\r\nSubject: via swaks\r\nFrom: news@acme.example\r\n"));
        assert!(
            arrived.ends_with(&format!("\r\n\r\n{sent_tail}\r\n")),
            "{arrived}"
        );
    }
    drop(got);
    sink.stop();
}

/// Sends `commands` (ending with QUIT) and returns every reply until the 221.
fn raw_commands(port: u16, commands: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(commands.as_bytes()).unwrap();
    let mut replies = String::new();
    let mut buf = [0u8; 4096];
    while !replies.contains("\r\n221 ") {
        let n = c.read(&mut buf).unwrap();
        assert!(n > 0, "closed early: {replies}");
        replies.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    replies
}

/// kill -9 keeps the page cache, so this shows that nothing in the engine's memory is
/// needed after a 250 (the queue records are written before it), not the fsync itself:
/// that the 250 waits for the group commit's fdatasync is by construction (`feed_chunks`
/// waits for the commit's acknowledgement), as for spool inputs.
#[test]
fn a_message_that_got_its_250_survives_kill_9_and_is_delivered_after_restart() {
    let sink = Sink::start(HashMap::new());
    let port = free_port();
    let listener = format!(
        "[[routes]]\ndomain = \"*.test\"\nhosts = [\"{}\"]\n[[listeners]]\nlisten = \"127.0.0.1:{port}\"\ntls = \"none\"\nrelay_networks = [\"127.0.0.1\"]\n",
        sink.addr
    );
    // Delivery paused first (Env's default without a [delivery] section): the 250 can only
    // mean the queue has it.
    let env = Env::new(2, "", &listener);
    let engine = env.start();
    common::wait_until(Duration::from_secs(20), "the listener", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let script = format!(
        "{ATTEMPT}\nattempt('one', {port}, '127.0.0.1', None, None, 'app@acme.example', ['durable@one.test'], 'Subject: d\\r\\n\\r\\nkept\\r\\n')\n"
    );
    assert_eq!(python(&script).trim(), "one ok");
    engine.kill9();
    assert!(sink.received.lock().unwrap().deliveries.is_empty());

    env.write_config(
        2,
        "",
        &format!("[delivery]\nallow_private_destinations = true\n{listener}"),
    );
    let engine = env.start();
    wait_final(&env, &engine, 1, Duration::from_secs(30));
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let got = sink.received.lock().unwrap();
    assert_eq!(got.deliveries.get("durable@one.test"), Some(&1));
    assert!(got.bodies["durable@one.test"].ends_with("\r\n\r\nkept\r\n"));
    drop(got);
    sink.stop();
}

/// Sends `commands` and returns every reply until the server closes the connection.
fn raw_until_closed(port: u16, commands: &str) -> String {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(commands.as_bytes()).unwrap();
    let mut replies = Vec::new();
    c.read_to_end(&mut replies).unwrap();
    String::from_utf8_lossy(&replies).into_owned()
}

/// A user's daily limit counts the recipients of accepted messages, holds across a kill -9
/// (the counts are synced with the queue), and each refusal leaves a `Rejected` record;
/// failed AUTH attempts lock an address out across sessions, even for the right password.
#[test]
fn a_daily_limit_survives_kill_9_and_a_lockout_spans_sessions() {
    let port = free_port();
    let hash = spate::gateway::password::hash("s3cret").unwrap();
    let config = format!(
        "[[listeners]]\nlisten = \"127.0.0.1:{port}\"\ntls = \"none\"\nauth_failures_max = 2\nauth_lockout = \"1m\"\n\
         [[users]]\nname = \"app\"\npassword_hash = \"{hash}\"\nallowed_from = [\"@acme.example\"]\ndaily_limit = 3\n"
    );
    // Delivery stays paused: only what the gateway accepts and counts matters here. Three
    // shards: a count that does not divide 256 once put a message's home on another shard
    // than its count's.
    let env = Env::new(3, "", &config);
    // Three shards within this machine's 8 MiB locked-memory limit.
    env.write_config_with_engine(3, "io_memory = \"512KiB\"", "", &config);
    let engine = env.start();
    let listening = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    common::wait_until(Duration::from_secs(20), "the listener", listening);
    let auth = "EHLO c\r\nAUTH PLAIN AGFwcABzM2NyZXQ=\r\n"; // \0app\0s3cret
    let data = "Subject: n\r\nFrom: news@acme.example\r\n\r\nhi\r\n.\r\nQUIT\r\n";
    let first = raw_session(
        port,
        &format!("{auth}MAIL FROM:<news@acme.example>\r\nRCPT TO:<a@one.test>\r\nRCPT TO:<b@one.test>\r\nDATA\r\n"),
        data,
    );
    assert!(first.contains("\r\n250 2.0.0 OK: queued as"), "{first}");
    let second = raw_session(
        port,
        &format!("{auth}MAIL FROM:<news@acme.example>\r\nRCPT TO:<c@one.test>\r\nRCPT TO:<d@one.test>\r\nDATA\r\n"),
        data,
    );
    assert!(
        second.contains("\r\n250 2.1.5 OK\r\n452 4.5.3 Daily limit of 3 recipients reached"),
        "{second}"
    );
    assert!(second.contains("\r\n250 2.0.0 OK: queued as"), "{second}");

    engine.kill9();
    let engine = env.start();
    common::wait_until(Duration::from_secs(20), "the listener", listening);
    let after = raw_commands(
        port,
        &format!("{auth}MAIL FROM:<news@acme.example>\r\nRCPT TO:<e@one.test>\r\nQUIT\r\n"),
    );
    assert!(after.contains("\r\n452 4.5.3 Daily limit"), "{after}");

    // Two failures from one address, in two sessions, lock it out; then even the right
    // password is not checked.
    let bad = "EHLO c\r\nAUTH PLAIN AGFwcABub3Bl\r\n"; // \0app\0nope
    let once = raw_commands(port, &format!("{bad}QUIT\r\n"));
    assert!(once.contains("\r\n535 5.7.8"), "{once}");
    let twice = raw_until_closed(port, bad);
    assert!(
        twice.ends_with(
            "421 4.7.0 Too many failed authentications from your address; try again later\r\n"
        ),
        "{twice}"
    );
    let right = raw_until_closed(port, auth);
    assert!(
        right.ends_with("from your address; try again later\r\n"),
        "{right}"
    );

    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let mut queued = env.queued_recipients();
    queued.sort();
    assert_eq!(queued, ["a@one.test", "b@one.test", "c@one.test"]);
    let records = env.log_records();
    let rejected: Vec<_> = records
        .iter()
        .filter(|r| r["type"] == "Rejected")
        .map(|r| {
            assert_eq!(r["tenant"], "app");
            assert_eq!(r["code"], 452);
            r["recipient"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(rejected, ["d@one.test", "e@one.test"]);
}

/// A gateway message that bounces comes back to its sender as an RFC 3464 report, which
/// Python's `email` package reads as `multipart/report; report-type=delivery-status` with
/// the right recipient, action and status, honouring NOTIFY, RET, ENVID and ORCPT; a
/// message from `<>` never gets one.
#[test]
fn a_bounced_gateway_message_comes_back_as_a_dsn_that_python_reads() {
    let sink = Sink::start(HashMap::from([(
        "bad.test".to_string(),
        common::sink::Behaviour::UnknownUser,
    )]));
    let port = free_port();
    let config = format!(
        "[delivery]\nallow_private_destinations = true\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n\
         [[routes]]\ndomain = \"*.test\"\nhosts = [\"{}\"]\n\
         [[listeners]]\nlisten = \"127.0.0.1:{port}\"\ntls = \"none\"\nrelay_networks = [\"127.0.0.1\"]\n",
        sink.addr
    );
    let env = Env::new(2, "", &config);
    let engine = env.start();
    common::wait_until(Duration::from_secs(20), "the listener", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let script = format!(
        r#"
import smtplib
def send(sender, rcpt, mail_options=(), rcpt_options=()):
    s = smtplib.SMTP("127.0.0.1", {port}, timeout=20)
    s.ehlo("client.test")
    assert s.has_extn("dsn")
    msg = "Subject: to " + rcpt + "\r\nFrom: app@sender.test\r\n\r\nthe body line\r\n"
    s.sendmail(sender, [rcpt], msg, mail_options=list(mail_options), rcpt_options=list(rcpt_options))
    s.quit()
send("hdrs@sender.test", "gone@bad.test", ["RET=HDRS", "ENVID=QQ314159"], ["NOTIFY=FAILURE", "ORCPT=rfc822;Gone+40bad.test"])
send("never@sender.test", "never@bad.test", [], ["NOTIFY=NEVER"])
send("success@sender.test", "ok@good.test", [], ["NOTIFY=SUCCESS"])
send("", "loop@bad.test")
send("full@sender.test", "plain@bad.test")
s = smtplib.SMTP("127.0.0.1", {port}, timeout=20)
s.sendmail("multi@sender.test", ["one@bad.test", "two@bad.test"], "Subject: two\r\n\r\nx\r\n")
s.quit()
print("sent")
"#
    );
    assert_eq!(python(&script).trim(), "sent");
    // Seven recipients, then four notifications.
    wait_final(&env, &engine, 11, Duration::from_secs(30));
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let got = sink.received.lock().unwrap();
    let mut notified: Vec<&String> = got
        .deliveries
        .keys()
        .filter(|r| r.ends_with("@sender.test"))
        .collect();
    notified.sort();
    assert_eq!(
        notified,
        [
            "full@sender.test",
            "hdrs@sender.test",
            "multi@sender.test",
            "success@sender.test"
        ]
    );
    // The two bounced recipients of one message share one report.
    assert_eq!(got.deliveries["multi@sender.test"], 1);
    let multi = &got.bodies["multi@sender.test"];
    assert!(
        multi.contains("Final-Recipient: rfc822; one@bad.test")
            && multi.contains("Final-Recipient: rfc822; two@bad.test"),
        "{multi}"
    );
    let dir = tempfile::tempdir().unwrap();
    for who in ["hdrs", "success", "full"] {
        let body = &got.bodies[&format!("{who}@sender.test")];
        std::fs::write(dir.path().join(who), body).unwrap();
    }
    drop(got);
    let read = format!(
        r#"
import email, email.policy
for who in ["hdrs", "success", "full"]:
    m = email.message_from_bytes(open({dir:?} + "/" + who, "rb").read(), policy=email.policy.compat32)
    assert m.get_content_type() == "multipart/report", m.get_content_type()
    assert m.get_param("report-type") == "delivery-status"
    text, status, returned = m.get_payload()
    assert status.get_content_type() == "message/delivery-status"
    per_message, per_recipient = status.get_payload()
    print(who, m["To"], per_recipient["Final-Recipient"], per_recipient["Action"],
          per_recipient["Status"], per_message["Original-Envelope-Id"],
          per_recipient["Original-Recipient"], returned.get_content_type(),
          "body-returned" if "the body line" in returned.as_string() else "headers-only")
"#,
        dir = dir.path().to_str().unwrap()
    );
    let reports = python(&read);
    let lines: Vec<&str> = reports.lines().collect();
    assert_eq!(
        lines,
        [
            "hdrs <hdrs@sender.test> rfc822; gone@bad.test failed 5.1.1 QQ314159 rfc822; Gone@bad.test text/rfc822-headers headers-only",
            "success <success@sender.test> rfc822; ok@good.test relayed 2.0.0 None None message/rfc822 body-returned",
            "full <full@sender.test> rfc822; plain@bad.test failed 5.1.1 None None message/rfc822 body-returned",
        ],
        "{reports}"
    );
    // Notifications are mail from <>, logged like any other.
    let records = env.log_records();
    let dsn_reception = records
        .iter()
        .find(|r| r["type"] == "Reception" && r["recipient"] == "full@sender.test")
        .expect("the notification was queued");
    assert_eq!(dsn_reception["sender"], "");
    sink.stop();
}

/// The PROXY protocol is read only from a configured balancer (127.0.0.2 here): the client
/// it names (v1 and v2) is the one `relay_networks` and the trace field see. From anyone
/// else the same line is just a bad command, and it does not make them that client.
#[test]
fn a_proxy_header_names_the_client_only_from_a_configured_balancer() {
    let sink = Sink::start(HashMap::new());
    let port = free_port();
    let config = format!(
        "[delivery]\nallow_private_destinations = true\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n\
         [[routes]]\ndomain = \"*.test\"\nhosts = [\"{}\"]\n\
         [[listeners]]\nlisten = \"127.0.0.1:{port}\"\ntls = \"none\"\n\
         relay_networks = [\"192.0.2.0/24\", \"127.0.0.2\"]\nproxy_protocol_from = [\"127.0.0.2\"]\n",
        sink.addr
    );
    let env = Env::new(1, "", &config);
    let engine = env.start();
    common::wait_until(Duration::from_secs(20), "the listener", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let script = format!(
        r#"
import socket, struct, time
def session(source, header, rcpt):
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(20)
    s.connect(("127.0.0.1", {port}))
    s.sendall(header)
    smtp = (b"EHLO c\r\nMAIL FROM:<a@sender.test>\r\nRCPT TO:<" + rcpt.encode() + b">\r\n"
            b"DATA\r\n")
    out = b""
    def until(what):
        nonlocal out
        while what not in out:
            chunk = s.recv(4096)
            if not chunk:
                return
            out += chunk
    until(b"220 ")
    s.sendall(smtp)
    # Every reply up to DATA's: the greeting, the PROXY line's (if it was a command), EHLO,
    # MAIL, RCPT, DATA.
    finals = lambda: [l for l in out.split(b"\r\n") if l[:3].isdigit() and l[3:4] == b" "]
    while len(finals()) < (6 if b"500 " in out else 5):
        chunk = s.recv(4096)
        if not chunk:
            break
        out += chunk
    if b"354 " in out:
        s.sendall(b"Subject: p\r\n\r\nproxied\r\n.\r\n")
        until(b"queued as")
    s.sendall(b"QUIT\r\n")
    until(b"221 ")
    s.close()
    codes = [l[:3].decode() for l in out.split(b"\r\n") if l[:3].isdigit() and l[3:4] == b" "]
    print(rcpt, " ".join(codes))
v2 = (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11" + struct.pack(">H", 12)
      + bytes([192, 0, 2, 9, 127, 0, 0, 1]) + struct.pack(">HH", 40000, {port}))
session("127.0.0.2", b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 {port}\r\n", "v1@one.test")
session("127.0.0.2", v2, "v2@one.test")
session("127.0.0.1", b"PROXY TCP4 192.0.2.7 127.0.0.1 5555 {port}\r\n", "spoofed@one.test")
session("127.0.0.2", b"PROXY TCP4 198.51.100.1 127.0.0.1 5555 {port}\r\n", "outside@one.test")
# A client the balancer cannot name is not inside relay_networks, even though the
# balancer's own address would be (127.0.0.2 is in them here).
session("127.0.0.2", b"PROXY UNKNOWN\r\n", "unnamed@one.test")
"#
    );
    let results = python(&script);
    let lines: Vec<&str> = results.lines().collect();
    assert_eq!(
        lines,
        [
            "v1@one.test 220 250 250 250 354 250 221",
            "v2@one.test 220 250 250 250 354 250 221",
            // The PROXY line is an unknown command; then relay is refused (530: AUTH is
            // offered on this loopback listener), and DATA has no recipient.
            "spoofed@one.test 220 500 250 250 530 554 221",
            "outside@one.test 220 250 250 530 554 221",
            "unnamed@one.test 220 250 250 530 554 221",
        ],
        "{results}"
    );
    // A balancer that starts a header and then says nothing is cut off
    // (PROXY_HEADER_TIMEOUT, 10 s) without a greeting; the session slot is not held.
    {
        use std::io::{Read, Write};
        let mut c = connect_from([127, 0, 0, 2], port);
        c.write_all(b"PROXY TCP4 192.0.2.7 ").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got)
            .expect("closed by the engine, not timed out here");
        assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    }
    wait_final(&env, &engine, 2, Duration::from_secs(30));
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let got = sink.received.lock().unwrap();
    assert!(got.bodies["v1@one.test"].starts_with("Received: from c ([192.0.2.7])"));
    assert!(got.bodies["v2@one.test"].starts_with("Received: from c ([192.0.2.9])"));
    assert_eq!(got.deliveries.len(), 2);
    drop(got);
    sink.stop();
}

/// A renewed certificate is served after SIGHUP, with no restart; a broken one is refused
/// and the previous one stays.
#[test]
fn sighup_reloads_a_listeners_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (cert_path, key_path) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    let write_new = || {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(&cert_path, c.cert.pem()).unwrap();
        std::fs::write(&key_path, c.signing_key.serialize_pem()).unwrap();
        c.cert.der().to_vec()
    };
    let first = write_new();
    let port = free_port();
    let config = format!(
        "[[listeners]]\nlisten = \"127.0.0.1:{port}\"\ntls = \"implicit\"\ncert = {cert_path:?}\nkey = {key_path:?}\n"
    );
    let env = Env::new(2, "", &config);
    let engine = env.start();
    common::wait_until(Duration::from_secs(20), "the listener", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let served = || {
        let script = format!(
            r#"
import socket, ssl
ctx = ssl._create_unverified_context()
with socket.create_connection(("127.0.0.1", {port}), timeout=20) as raw:
    with ctx.wrap_socket(raw) as s:
        print(s.getpeercert(binary_form=True).hex())
"#
        );
        python(&script).trim().to_string()
    };
    let hex = |der: &[u8]| der.iter().map(|b| format!("{b:02x}")).collect::<String>();
    assert_eq!(served(), hex(&first));
    let second = write_new();
    engine.signal(libc::SIGHUP);
    common::wait_until(Duration::from_secs(20), "the new certificate", || {
        served() == hex(&second)
    });
    // A half-written renewal: refused, and the certificate in use stays.
    std::fs::write(&key_path, "not a key").unwrap();
    engine.signal(libc::SIGHUP);
    common::wait_until(Duration::from_secs(20), "the refusal", || {
        engine.stderr().contains("certificate not reloaded")
    });
    assert_eq!(served(), hex(&second));
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
}

/// The bounds a client meets: sessions per address (421 past it), the message size (552,
/// nothing queued), the Sender header held to `allowed_from` like From, and a user removed
/// by a reload no longer sending on a session it authenticated before.
#[test]
fn session_size_sender_and_reload_bounds_hold() {
    use std::io::{Read, Write};
    let port = free_port();
    let hash = spate::gateway::password::hash("s3cret").unwrap();
    let listener = format!(
        "[[listeners]]\nlisten = \"127.0.0.1:{port}\"\ntls = \"none\"\nmax_connections_per_ip = 2\nmax_message_size = \"2KB\"\n"
    );
    let user = format!(
        "[[users]]\nname = \"app\"\npassword_hash = \"{hash}\"\nallowed_from = [\"@acme.example\"]\n"
    );
    let env = Env::new(1, "", &format!("{listener}{user}"));
    let engine = env.start();
    common::wait_until(Duration::from_secs(20), "the listener", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    // The session-limit check comes from an address of its own, so no other session of
    // this test (closing as the check runs) can count against it.
    let open = || {
        let mut c = connect_from([127, 0, 0, 5], port);
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut greeting = [0u8; 256];
        let n = c.read(&mut greeting).unwrap();
        (c, String::from_utf8_lossy(&greeting[..n]).into_owned())
    };
    let (mut first, hello) = open();
    assert!(hello.starts_with("220 "), "{hello}");
    let (_second, hello) = open();
    assert!(hello.starts_with("220 "), "{hello}");
    let (_third, refused) = open();
    assert_eq!(
        refused,
        "421 4.7.0 Too many connections, try again later\r\n"
    );

    let auth = "EHLO c\r\nAUTH PLAIN AGFwcABzM2NyZXQ=\r\n";
    let envelope =
        format!("{auth}MAIL FROM:<news@acme.example>\r\nRCPT TO:<big@one.test>\r\nDATA\r\n");
    let line = "x".repeat(900);
    let big = format!("Subject: big\r\n\r\n{line}\r\n{line}\r\n{line}\r\n.\r\nQUIT\r\n");
    let replies = raw_session(port, &envelope, &big);
    assert!(replies.contains("\r\n552 5.3.4"), "{replies}");
    let sender = raw_session(
        port,
        &envelope.replace("big@", "sender@"),
        "Subject: s\r\nFrom: news@acme.example\r\nSender: ceo@other.example\r\n\r\nhi\r\n.\r\nQUIT\r\n",
    );
    assert!(
        sender.contains("\r\n550 5.7.1 From/Sender address ceo@other.example not allowed"),
        "{sender}"
    );
    // The first session authenticates; the user is removed by a reload; its next message
    // is refused.
    first.write_all(auth.as_bytes()).unwrap();
    let mut seen = String::new();
    let mut buf = [0u8; 4096];
    while !seen.contains("235 ") {
        let n = first.read(&mut buf).unwrap();
        assert!(n > 0, "{seen}");
        seen.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    env.write_config(1, "", &listener);
    engine.signal(libc::SIGHUP);
    common::wait_until(Duration::from_secs(20), "the reload", || {
        engine.stderr().contains("configuration reloaded")
    });
    // Each shard takes the new configuration within a tick of the reload: until then MAIL
    // may still be accepted (and is reset). A removed user may then no longer send as anyone.
    let refused = "553 5.7.1 Sender address not allowed for this user\r\n";
    common::wait_until(Duration::from_secs(10), "the removed user refused", || {
        first
            .write_all(b"MAIL FROM:<news@acme.example>\r\n")
            .unwrap();
        let n = first.read(&mut buf).unwrap();
        let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
        if reply.starts_with("250 ") {
            first.write_all(b"RSET\r\n").unwrap();
            let n = first.read(&mut buf).unwrap();
            assert!(buf[..n].starts_with(b"250 "));
            std::thread::sleep(Duration::from_millis(20));
        }
        reply == refused
    });
    drop(first);

    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    assert!(env.queued_recipients().is_empty());
}

/// A TCP connection to 127.0.0.1:`port` from the loopback address `source` (std cannot bind
/// a client socket's address).
fn connect_from(source: [u8; 4], port: u16) -> std::net::TcpStream {
    use std::os::fd::FromRawFd;
    let sockaddr = |ip: [u8; 4], port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a socket we create, bound and connected with valid sockaddr_in values, then
    // owned by the TcpStream (which closes it).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0);
        let from = sockaddr(source, 0);
        assert_eq!(
            libc::bind(fd, (&from as *const libc::sockaddr_in).cast(), len),
            0
        );
        let to = sockaddr([127, 0, 0, 1], port);
        assert_eq!(
            libc::connect(fd, (&to as *const libc::sockaddr_in).cast(), len),
            0
        );
        std::net::TcpStream::from_raw_fd(fd)
    }
}

/// Mail submitted over SMTP goes ahead of campaign mail waiting for the same provider:
/// queued after 30 campaign recipients of ten tenants (delivery paused), it is the first
/// delivered once delivery resumes, where a fair share among eleven tenants would put it
/// about eleventh. (An order, not a time: the provider is paced at 4/s over one connection,
/// so the order is the engine's. One shard: with two, the shards take the reload that
/// resumes delivery one after the other, and the first to resume fills the owner's window
/// with its campaign mail before the other's priority mail is routed; on a loaded machine
/// that put it 7th. Priority holds within a home's lanes, not across homes.)
#[test]
fn gateway_mail_goes_ahead_of_campaign_mail_at_its_provider() {
    use spate_sim::dns::{DnsResponder, Zone};
    let mut zone = Zone::default();
    zone.mx
        .insert("prio.test".into(), vec![(10, "mx.prio.test".into())]);
    zone.hosts
        .insert("mx.prio.test".into(), vec!["127.0.0.1".parse().unwrap()]);
    let dns = DnsResponder::start("127.0.0.1:0".parse().unwrap(), zone).unwrap();
    let sink = Sink::start(HashMap::new());
    let port = free_port();
    let sections = format!(
        "[dns]\nnameservers = [\"{}\"]\n[smtp]\nport = {}\n\
         [providers.prio]\nmx_suffixes = [\"mx.prio.test\"]\nconnection_limit = 1\nmax_message_rate = \"4/s\"\n\
         [[listeners]]\nlisten = \"127.0.0.1:{port}\"\ntls = \"none\"\nrelay_networks = [\"127.0.0.1\"]\n",
        dns.addr,
        sink.addr.port()
    );
    // Delivery paused while it all queues. (Loopback destinations allowed from the start:
    // shards take a reload one after the other, and an owner still on the old configuration
    // would refuse the address the new one routed to it.)
    let env = Env::new(
        1,
        "",
        &format!("[delivery]\npaused = true\nallow_private_destinations = true\n{sections}"),
    );
    let engine = env.start();
    for t in 0..10 {
        let mut batch = format!(
            "{{\"campaign\":\"c{t}\",\"tenant\":\"t{t}\",\"from\":\"news@acme.example\",\"template\":\"From: news@acme.example\\r\\nTo: {{{{ to }}}}\\r\\nSubject: news\\r\\n\\r\\nnews\\r\\n\"}}\n"
        );
        for i in 0..3 {
            batch.push_str(&format!("{{\"to\":\"t{t}r{i}@prio.test\"}}\n"));
        }
        env.drop_input(&format!("t{t}.jsonl"), batch.as_bytes());
    }
    common::wait_until(Duration::from_secs(20), "the campaigns to queue", || {
        env.queued_recipients().len() == 30
    });
    common::wait_until(Duration::from_secs(20), "the listener", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let replies = raw_commands(
        port,
        "EHLO app\r\nMAIL FROM:<app@acme.example>\r\nRCPT TO:<urgent@prio.test>\r\nDATA\r\nSubject: your code\r\n\r\n123456\r\n.\r\nQUIT\r\n",
    );
    assert!(replies.contains("250 2.0.0 OK: queued as"), "{replies}");
    env.write_config(
        1,
        "",
        &format!("[delivery]\nallow_private_destinations = true\n{sections}"),
    );
    engine.signal(libc::SIGHUP);
    wait_final(&env, &engine, 31, Duration::from_secs(60));
    engine.stop(Duration::from_secs(20));
    let order: Vec<String> = env
        .log_records()
        .iter()
        .filter(|r| r["type"] == "Delivery")
        .map(|r| r["recipient"].as_str().unwrap().to_string())
        .collect();
    let others: Vec<String> = env
        .log_records()
        .iter()
        .filter(|r| r["type"] != "Delivery")
        .map(|r| r.to_string())
        .collect();
    assert_eq!(order.len(), 31, "{others:#?}");
    let at = order.iter().position(|r| r == "urgent@prio.test").unwrap();
    assert_eq!(at, 0, "delivered {}th: {order:?}", at + 1);
    sink.stop();
    drop(dns);
}
