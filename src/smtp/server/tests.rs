//! The server core against scripted clients: pipelining, BDAT, limits, sequence errors.

use super::*;
use crate::smtp::data::encode_data;

/// Feeds `input` in pieces of `step` bytes, answering every decision with 250 (or 550
/// for recipients at `bad.example`); returns the replies and the bodies received.
fn run(config: ServerConfig, input: &[u8], step: usize) -> (String, Vec<Vec<u8>>, Vec<String>) {
    run_server(Server::new(config), input, step)
}

/// As `run`, with a server made by the caller (one in TLS from the start, say).
fn run_server(mut s: Server, input: &[u8], step: usize) -> (String, Vec<Vec<u8>>, Vec<String>) {
    let mut out = Vec::new();
    s.greeting(&mut out);
    let mut pending: Vec<u8> = Vec::new();
    let mut bodies = Vec::new();
    let mut body = Vec::new();
    let mut events = Vec::new();
    'feed: for piece in input.chunks(step.max(1)) {
        pending.extend_from_slice(piece);
        loop {
            let (used, ev) = s.advance(&pending, &mut out);
            let done = matches!(ev, Event::NeedMore);
            match ev {
                Event::NeedMore => {}
                Event::Mail { from, .. } => {
                    events.push(format!("mail {from}"));
                    s.reply(250, "2.1.0 OK", &mut out);
                }
                Event::Rcpt { to, .. } => {
                    events.push(format!("rcpt {to}"));
                    if to.ends_with("@bad.example") {
                        s.reply(550, "5.1.1 unknown", &mut out);
                    } else {
                        s.reply(250, "2.1.5 OK", &mut out);
                    }
                }
                Event::Body(b) => body.extend_from_slice(b),
                Event::MessageEnd => {
                    bodies.push(std::mem::take(&mut body));
                    s.reply(250, "2.0.0 queued", &mut out);
                }
                Event::MessageTooBig => {
                    events.push("too big".into());
                    body.clear();
                }
                Event::MessageAbandoned => {
                    events.push("abandoned".into());
                    body.clear();
                }
                Event::MessageRefused => {
                    events.push("refused".into());
                    body.clear();
                }
                Event::Auth { user, password } => {
                    // The one good password here is "secret".
                    let good = password.0 == "secret";
                    events.push(format!("auth {user} {}", if good { "ok" } else { "bad" }));
                    if good {
                        s.reply(235, "2.7.0 Authentication successful", &mut out);
                    } else {
                        s.reply(535, "5.7.8 Authentication credentials invalid", &mut out);
                    }
                }
                Event::StartTls => {
                    events.push("starttls".into());
                    pending.clear();
                    s.tls_started();
                    continue 'feed;
                }
                Event::Close => {
                    events.push("close".into());
                    break 'feed;
                }
            }
            pending.drain(..used);
            if done {
                break;
            }
        }
    }
    (String::from_utf8(out).unwrap(), bodies, events)
}

fn codes(replies: &str) -> Vec<&str> {
    replies
        .split("\r\n")
        .filter(|l| l.len() >= 4 && l.as_bytes()[3] == b' ')
        .map(|l| &l[..3])
        .collect()
}

#[test]
fn a_pipelined_session_in_any_split_gets_the_same_replies_and_bodies() {
    let message = b"Subject: hi\r\n\r\n.leading dot\r\n..two\r\nend\r\n.\r\nnot the end\r\n";
    let data = encode_data(message);
    let mut input = b"EHLO client.example\r\nMAIL FROM:<a@b.example> SIZE=100\r\nRCPT TO:<x@y.example>\r\nRCPT TO:<u@bad.example>\r\nDATA\r\n".to_vec();
    input.extend_from_slice(&data);
    input.extend_from_slice(b"RSET\r\nQUIT\r\n");
    let (whole, bodies, events) = run(ServerConfig::default(), &input, input.len());
    assert_eq!(
        codes(&whole),
        ["220", "250", "250", "250", "550", "354", "250", "250", "221"]
    );
    assert_eq!(bodies, [message.to_vec()], "dot-unstuffed, byte for byte");
    assert_eq!(
        events,
        [
            "mail a@b.example",
            "rcpt x@y.example",
            "rcpt u@bad.example",
            "close"
        ]
    );
    for step in [1, 2, 3, 5, 7, 64] {
        let split = run(ServerConfig::default(), &input, step);
        assert_eq!(split.0, whole, "step {step}");
        assert_eq!(split.1, bodies, "step {step}");
    }
}

/// RFC 5321 4.5.2, read the simple way: the lines before the final `.` line, each
/// without a leading dot.
fn unstuff(wire: &[u8]) -> Vec<u8> {
    let content = wire.strip_suffix(b".\r\n").expect("terminated");
    let mut out = Vec::new();
    for line in content.split_inclusive(|b| *b == b'\n') {
        out.extend_from_slice(line.strip_prefix(b".").unwrap_or(line));
    }
    out
}

proptest::proptest! {
    #[test]
    fn bodies_are_unstuffed_exactly_in_any_split(
        message in proptest::collection::vec(
            proptest::sample::select(vec![b'.', b'\r', b'\n', b'a']), 0..200),
        step in 1usize..20,
    ) {
        let data = encode_data(&message);
        let mut input = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nDATA\r\n".to_vec();
        input.extend_from_slice(&data);
        let (_, bodies, _) = run(ServerConfig::default(), &input, step);
        proptest::prop_assert_eq!(bodies, vec![unstuff(&data)]);
    }
}

#[test]
fn bdat_chunks_are_the_message_byte_for_byte_in_any_split() {
    let message = b"Subject: hi\r\n\r\n.leading dot\r\nBDAT 3\r\nQUIT\r\n";
    let (first, rest) = message.split_at(20);
    let mut input =
        b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nRCPT TO:<u@bad.example>\r\n".to_vec();
    input.extend_from_slice(format!("BDAT {}\r\n", first.len()).as_bytes());
    input.extend_from_slice(first);
    input.extend_from_slice(format!("BDAT {} LAST\r\n", rest.len()).as_bytes());
    input.extend_from_slice(rest);
    input.extend_from_slice(b"MAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nBDAT 0 LAST\r\nQUIT\r\n");
    let (whole, bodies, events) = run(ServerConfig::default(), &input, input.len());
    assert!(whole.contains("250-CHUNKING\r\n"));
    assert_eq!(
        codes(&whole),
        ["220", "250", "250", "250", "550", "250", "250", "250", "250", "250", "221"]
    );
    assert_eq!(
        bodies,
        [message.to_vec(), Vec::new()],
        "as sent, nothing unstuffed"
    );
    assert_eq!(events.last().map(String::as_str), Some("close"));
    for step in [1, 2, 3, 7, 64] {
        let split = run(ServerConfig::default(), &input, step);
        assert_eq!(
            (split.0, split.1),
            (whole.clone(), bodies.clone()),
            "step {step}"
        );
    }
}

#[test]
fn a_refused_chunk_is_read_before_its_refusal_and_never_as_commands() {
    let cases: &[(&str, &[&str])] = &[
        // The chunk holds what would be commands: read, discarded, then refused.
        ("EHLO c\r\nBDAT 6\r\nQUIT\r\nNOOP\r\n", &["220", "250", "503", "250"]),
        (
            "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<u@bad.example>\r\nBDAT 6 LAST\r\nQUIT\r\nNOOP\r\n",
            &["220", "250", "250", "550", "554", "250"],
        ),
        (
            "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nBDAT 2\r\nabDATA\r\n",
            &["220", "250", "250", "250", "250", "503"],
        ),
        // A count that does not parse: where the chunk ends is unknown, so the session ends.
        ("EHLO c\r\nBDAT x\r\nNOOP\r\n", &["220", "250", "501"]),
        ("EHLO c\r\nBDAT 99999999999999999999999 LAST\r\n", &["220", "250", "501"]),
        ("EHLO c\r\nBDAT 3 LAST MORE\r\n", &["220", "250", "501"]),
    ];
    for (input, want) in cases {
        let (out, bodies, _) = run(ServerConfig::default(), input.as_bytes(), 1000);
        assert_eq!(codes(&out), *want, "{input:?}");
        assert!(bodies.is_empty(), "{input:?}");
    }
    // Not offered: BDAT is an unknown command, and the EHLO reply does not name it.
    let off = ServerConfig {
        chunking: false,
        ..ServerConfig::default()
    };
    let (out, _, _) = run(off, b"EHLO c\r\nBDAT 0 LAST\r\n", 1000);
    assert!(!out.contains("CHUNKING"));
    assert_eq!(codes(&out), ["220", "250", "500"]);
}

#[test]
fn a_message_begun_in_chunks_and_reset_leaves_nothing_in_the_next() {
    for reset in ["RSET", "EHLO c", "HELO c"] {
        let input = format!(
            "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nBDAT 5\r\nstale{reset}\r\n\
             MAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nBDAT 5 LAST\r\nfresh"
        );
        let (out, bodies, events) = run(ServerConfig::default(), input.as_bytes(), 3);
        assert_eq!(bodies, [b"fresh".to_vec()], "{reset}");
        assert!(events.contains(&"abandoned".to_string()), "{reset}");
        assert_eq!(codes(&out).len(), 9, "{reset}: {out}");
    }
}

#[test]
fn chunks_over_the_size_limit_are_read_and_refused_whole() {
    let config = ServerConfig {
        max_message_bytes: 10,
        ..ServerConfig::default()
    };
    let input = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nBDAT 8\r\n01234567BDAT 8 LAST\r\n89abcdefNOOP\r\n";
    let (out, bodies, events) = run(config, input, 3);
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "250", "552", "250"]
    );
    assert!(bodies.is_empty());
    assert!(events.contains(&"too big".to_string()));
}

#[test]
fn the_protocol_answers_sequence_and_syntax_errors_itself() {
    let cases: &[(&str, &[&str])] = &[
        ("MAIL FROM:<a@b>\r\n", &["220", "503"]),
        ("EHLO\r\n", &["220", "501"]),
        ("EHLO c\r\nRCPT TO:<x@y>\r\n", &["220", "250", "503"]),
        ("EHLO c\r\nDATA\r\n", &["220", "250", "503"]),
        ("EHLO c\r\nMAIL FROM:a@b\r\n", &["220", "250", "501"]),
        (
            "EHLO c\r\nMAIL FROM:<a@b>\r\nMAIL FROM:<a@b>\r\n",
            &["220", "250", "250", "503"],
        ),
        (
            "EHLO c\r\nMAIL FROM:<a@b>\r\nDATA\r\n",
            &["220", "250", "250", "554"],
        ),
        (
            "EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<>\r\n",
            &["220", "250", "250", "501"],
        ),
        (
            "EHLO c\r\nMAIL FROM:<a@b> SIZE=x\r\n",
            &["220", "250", "501"],
        ),
        (
            "EHLO c\r\nMAIL FROM:<a@b> SIZE=999999999999\r\n",
            &["220", "250", "552"],
        ),
        ("EHLO c\r\nSTARTTLS\r\n", &["220", "250", "502"]),
        (
            "EHLO c\r\nVRFY x\r\nNOOP\r\nHELP\r\n",
            &["220", "250", "252", "250", "500"],
        ),
        (
            "HELO c\r\nMAIL FROM:<>\r\nRSET\r\nRCPT TO:<x@y>\r\n",
            &["220", "250", "250", "250", "503"],
        ),
    ];
    for (input, want) in cases {
        let (out, _, _) = run(ServerConfig::default(), input.as_bytes(), 1000);
        assert_eq!(codes(&out), *want, "{input:?}");
    }
}

#[test]
fn limits_hold_and_nothing_is_buffered_beyond_them() {
    let config = ServerConfig {
        max_recipients: 2,
        max_message_bytes: 10,
        ..ServerConfig::default()
    };
    let input = b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<1@y>\r\nRCPT TO:<2@y>\r\nRCPT TO:<3@y>\r\nDATA\r\n0123456789abcdef\r\n.\r\nQUIT\r\n";
    let (out, bodies, events) = run(config.clone(), input, 4);
    assert_eq!(
        codes(&out),
        ["220", "250", "250", "250", "250", "452", "354", "552", "221"]
    );
    assert!(bodies.is_empty());
    assert!(events.contains(&"too big".to_string()));
    // A line that never ends is refused at the bound and the session closes.
    let mut s = Server::new(config);
    let mut out = Vec::new();
    let long = vec![b'A'; COMMAND_LINE_MAX];
    assert_eq!(s.advance(&long[..100], &mut out), (0, Event::NeedMore));
    assert_eq!(s.advance(&long, &mut out), (0, Event::Close));
    assert!(String::from_utf8(out).unwrap().starts_with("500 5.5.2"));
}

#[test]
fn starttls_is_offered_once_and_resets_the_session() {
    let config = ServerConfig {
        starttls: true,
        ..ServerConfig::default()
    };
    let mut s = Server::new(config);
    let mut out = Vec::new();
    let input = b"EHLO c\r\nSTARTTLS\r\nMAIL FROM:<injected@x>\r\n";
    let (used, ev) = s.advance(input, &mut out);
    assert_eq!(ev, Event::StartTls);
    assert_eq!(
        &input[..used],
        b"EHLO c\r\nSTARTTLS\r\n",
        "what follows is the shell's to drop"
    );
    assert!(String::from_utf8_lossy(&out).contains("250-STARTTLS"));
    s.tls_started();
    out.clear();
    let (_, ev) = s.advance(b"MAIL FROM:<a@b>\r\n", &mut out);
    assert_eq!(ev, Event::NeedMore);
    assert_eq!(
        codes(&String::from_utf8(out.clone()).unwrap()),
        ["503"],
        "EHLO again first"
    );
    out.clear();
    s.advance(b"EHLO c\r\n", &mut out);
    let ehlo = String::from_utf8(out).unwrap();
    assert!(!ehlo.contains("STARTTLS") && s.is_tls());
}

#[test]
fn an_unanswered_decision_is_refused_and_a_stray_reply_is_not_written() {
    let mut s = Server::new(ServerConfig::default());
    let mut out = Vec::new();
    let (_, ev) = s.advance(b"EHLO c\r\nMAIL FROM:<a@b>\r\n", &mut out);
    assert!(matches!(ev, Event::Mail { .. }));
    out.clear();
    // The shell forgot to answer: 451, not a 250 nobody decided on.
    let (_, ev) = s.advance(b"RCPT TO:<x@y>\r\n", &mut out);
    assert_eq!(ev, Event::NeedMore);
    assert_eq!(
        codes(&String::from_utf8(out.clone()).unwrap()),
        ["451", "503"]
    );
    out.clear();
    s.reply(250, "2.0.0 stray", &mut out);
    assert!(out.is_empty(), "nothing was asked");
}

#[test]
fn a_421_closes_and_reply_text_stays_one_line() {
    let mut s = Server::new(ServerConfig::default());
    let mut out = Vec::new();
    let (_, ev) = s.advance(
        b"EHLO c\r\nMAIL FROM:<a@b>\r\nRCPT TO:<x@y>\r\nRCPT TO:<z@y>\r\n",
        &mut out,
    );
    assert_eq!(
        ev,
        Event::Mail {
            from: "a@b",
            params: MailParams::default()
        }
    );
    s.reply(250, "2.1.0 OK", &mut out);
    out.clear();
    let (_, ev) = s.advance(b"RCPT TO:<x@y>\r\nRCPT TO:<z@y>\r\n", &mut out);
    assert_eq!(
        ev,
        Event::Rcpt {
            to: "x@y",
            params: RcptParams::default()
        }
    );
    s.reply(421, "4.7.0 slow down\r\n250 injected", &mut out);
    assert_eq!(out, b"421 4.7.0 slow down250 injected\r\n");
    assert_eq!(s.advance(b"RCPT TO:<z@y>\r\n", &mut out), (0, Event::Close));
}

fn b64(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn auth_config() -> ServerConfig {
    ServerConfig {
        auth: true,
        starttls: true,
        ..ServerConfig::default()
    }
}

#[test]
fn auth_waits_for_tls_then_plain_and_login_both_work_in_any_split() {
    // Before STARTTLS: not advertised, and refused with 538 if tried.
    let (out, _, events) = run(
        auth_config(),
        b"EHLO c\r\nAUTH PLAIN AGEAYg==\r\nQUIT\r\n",
        1000,
    );
    assert!(!out.contains("AUTH PLAIN LOGIN"), "{out}");
    assert_eq!(codes(&out), ["220", "250", "538", "221"]);
    assert!(!events.iter().any(|e| e.starts_with("auth")), "{events:?}");

    let plain = b64("\0user\0secret");
    let login = format!("AUTH LOGIN\r\n{}\r\n{}\r\n", b64("user2"), b64("secret"));
    let input = format!(
        "EHLO c\r\nAUTH PLAIN {plain}\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nQUIT\r\n"
    );
    for step in [1, 7, 1000] {
        let (out, _, events) = run_server(Server::new_tls(auth_config()), input.as_bytes(), step);
        assert!(out.contains("250-AUTH PLAIN LOGIN"), "{out}");
        assert_eq!(
            events,
            [
                "auth user ok",
                "mail a@b.example",
                "rcpt x@y.example",
                "close"
            ],
            "step {step}"
        );
        assert_eq!(
            codes(&out),
            ["220", "250", "235", "250", "250", "221"],
            "{out}"
        );
    }
    let mut tls = Server::new_tls(auth_config());
    let mut out = Vec::new();
    for line in ["EHLO c\r\n".to_string(), login, "AUTH PLAIN =\r\n".into()] {
        let (_, ev) = tls.advance(line.as_bytes(), &mut out);
        match ev {
            Event::Auth { user, password } => {
                assert_eq!((user.as_str(), password.0.as_str()), ("user2", "secret"));
                assert_eq!(
                    format!("{password:?}"),
                    "Secret(..)",
                    "never in Debug output"
                );
                tls.reply(235, "2.7.0 ok", &mut out);
            }
            Event::NeedMore => {}
            other => panic!("{other:?}"),
        }
    }
    assert!(tls.is_authenticated());
    let out = String::from_utf8(out).unwrap();
    assert!(
        out.contains("334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235"),
        "{out}"
    );
    assert!(
        out.ends_with("503 5.5.1 Already authenticated\r\n"),
        "{out}"
    );
}

#[test]
fn auth_failures_cancels_and_garbage_leave_the_session_unauthenticated() {
    let mut s = Server::new_tls(auth_config());
    let mut out = Vec::new();
    let feed = |s: &mut Server, line: &str, out: &mut Vec<u8>| {
        let (_, ev) = s.advance(line.as_bytes(), out);
        if let Event::Auth { password, .. } = ev {
            let code = if password.0 == "secret" { 235 } else { 535 };
            s.reply(code, "x", out);
        }
    };
    feed(&mut s, "AUTH PLAIN\r\n", &mut out);
    feed(&mut s, "EHLO c\r\n", &mut out);
    feed(
        &mut s,
        &format!("AUTH PLAIN {}\r\n", b64("\0u\0wrong")),
        &mut out,
    );
    feed(&mut s, "AUTH PLAIN\r\n", &mut out);
    feed(&mut s, "*\r\n", &mut out);
    feed(&mut s, "AUTH PLAIN !!notbase64\r\n", &mut out);
    feed(
        &mut s,
        &format!("AUTH PLAIN {}\r\n", b64("other\0u\0secret")),
        &mut out,
    );
    feed(
        &mut s,
        &format!("AUTH PLAIN {}\r\n", b64("no separators")),
        &mut out,
    );
    feed(&mut s, "AUTH CRAM-MD5\r\n", &mut out);
    feed(&mut s, "MAIL FROM:<a@b.example>\r\n", &mut out);
    assert!(!s.is_authenticated());
    let out = String::from_utf8(out).unwrap();
    assert_eq!(
        codes(&out),
        ["503", "250", "535", "334", "501", "501", "535", "501", "504"],
        "{out}"
    );
    assert!(out.contains("334 \r\n"), "{out}");
    // Not configured at all: not offered, and refused as such.
    let (out, _, _) = run(ServerConfig::default(), b"EHLO c\r\nAUTH LOGIN\r\n", 1000);
    assert!(out.contains("502 5.5.1"), "{out}");
}

#[test]
fn smuggled_ends_of_data_and_long_lines_refuse_the_whole_message() {
    let head = "EHLO c\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<x@y.example>\r\nDATA\r\n";
    let smuggled = [
        "Subject: a\r\n\r\nx\n.\nMAIL FROM:<evil@b.example>\r\n.\r\n",
        "Subject: a\r\n\r\nx\r\n.\nRCPT TO:<v@y.example>\r\n.\r\n",
        "Subject: a\r\n\r\nx\n.\r\nDATA\r\n.\r\n",
        "Subject: a\r\n\r\nx\r.\r\nQUIT\r\n.\r\n",
    ];
    let long = format!("Subject: a\r\n\r\n{}\r\n.\r\n", "w".repeat(LINE_MAX + 1));
    for body in smuggled.iter().copied().chain([long.as_str()]) {
        let input = format!("{head}{body}RSET\r\n");
        for step in [1, 5, 1000] {
            let (out, bodies, events) = run(ServerConfig::default(), input.as_bytes(), step);
            assert!(bodies.is_empty(), "nothing of it kept: {body:?}");
            assert_eq!(
                codes(&out),
                ["220", "250", "250", "250", "354", "550", "250"],
                "one refusal for the whole message, and no command smuggled in: {body:?} {out}"
            );
            assert!(out.contains("550 5.5.2"), "{out}");
            assert_eq!(events.last().map(String::as_str), Some("refused"));
        }
    }
    // The same over BDAT (no smuggling there, but the lines are the message's).
    let input = head.replace("DATA\r\n", "BDAT 5 LAST\r\na\nb\r\n");
    let (out, bodies, _) = run(ServerConfig::default(), input.as_bytes(), 1000);
    assert!(
        bodies.is_empty() && out.contains("550 5.5.2 Message contains a bare LF"),
        "{out}"
    );
    // A lenient server (a sink) takes it as it came.
    let lenient = ServerConfig {
        strict_lines: false,
        ..ServerConfig::default()
    };
    let (out, bodies, _) = run(lenient, format!("{head}{}", smuggled[0]).as_bytes(), 1000);
    assert_eq!(bodies.len(), 1, "{out}");
}

#[test]
fn dsn_parameters_are_offered_and_handed_on_only_when_configured() {
    let config = ServerConfig {
        dsn: true,
        ..ServerConfig::default()
    };
    let mut s = Server::new(config);
    let mut out = Vec::new();
    let (_, ev) = s.advance(b"EHLO c\r\n", &mut out);
    assert_eq!(ev, Event::NeedMore);
    assert!(String::from_utf8_lossy(&out).contains("250-DSN\r\n"));
    let (_, ev) = s.advance(b"MAIL FROM:<a@b.example> RET=HDRS ENVID=x1\r\n", &mut out);
    let Event::Mail { params, .. } = ev else {
        panic!("{ev:?}")
    };
    assert_eq!((params.ret_full, params.envid), (Some(false), Some("x1")));
    s.reply(250, "2.1.0 ok", &mut out);
    let (_, ev) = s.advance(b"RCPT TO:<x@y.example> NOTIFY=FAILURE,DELAY\r\n", &mut out);
    let Event::Rcpt { params, .. } = ev else {
        panic!("{ev:?}")
    };
    let n = params.notify.unwrap();
    assert!(n.failure && n.delay && !n.success);
    // Without DSN: unknown parameters, 555.
    let (out, _, events) = run(
        ServerConfig::default(),
        b"EHLO c\r\nMAIL FROM:<a@b.example> RET=FULL\r\n",
        1000,
    );
    assert!(out.contains("555 5.5.4") && !out.contains("DSN"), "{out}");
    assert!(events.is_empty(), "{events:?}");
}
