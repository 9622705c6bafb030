//! The SMTP server core `smtp::server::Server` against a hostile client and an erratic shell.
//!
//! Input: the first byte picks the configuration (bit 0: STARTTLS offered; bit 1: small
//! limits, 2 recipients and 64-octet messages; bit 2: CHUNKING not offered; bit 3: AUTH
//! offered, inside TLS only; bit 4: DSN offered; bit 5: lenient lines). Every later byte is
//! client output, except:
//!
//! | byte | what the shell does                                                        |
//! |------|----------------------------------------------------------------------------|
//! | 0x00 | delivers the client bytes gathered so far (one socket read)                |
//! | 0x01 | from now on answers decisions with 550 (recipients) / 451 (others)         |
//! | 0x02 | from now on answers decisions with 250                                     |
//! | 0x03 | answers the next decision with 421                                         |
//!
//! The shell keeps the bytes `advance` did not use, like a read buffer; after STARTTLS it
//! drops them and calls `tls_started` (the handshake "succeeded").
//!
//! Properties:
//! - it never panics;
//! - `used` never exceeds what was offered, and `NeedMore` leaves less than one command
//!   line unread (the shell's buffer is bounded by `COMMAND_LINE_MAX` plus one read);
//! - replies are whole lines (each ends CRLF), and at most 512 octets of them come per
//!   command line or message;
//! - a message's body never exceeds `max_message_bytes`, and a `MessageEnd` comes only
//!   after a recipient was accepted in that transaction;
//! - with strict lines, a message that ends (`MessageEnd`) has CRLF line endings only and
//!   no line over 998 octets (checked here byte by byte, not with the core's checker);
//! - credentials (`Auth`) come out only inside TLS, and the shell's "pw" is the only
//!   password that authenticates;
//! - after `Close` the shell stops; after `StartTls`, nothing is used until `tls_started`.

use spate::smtp::server::{Event, Server, ServerConfig, COMMAND_LINE_MAX};

const DELIVER: u8 = 0x00;
const REFUSE: u8 = 0x01;
const ACCEPT: u8 = 0x02;
const CLOSE_421: u8 = 0x03;

pub fn check(input: &[u8]) {
    let Some((&flags, script)) = input.split_first() else {
        return;
    };
    let config = ServerConfig {
        hostname: "mx.test".into(),
        starttls: flags & 1 != 0,
        max_recipients: if flags & 2 != 0 { 2 } else { 100 },
        max_message_bytes: if flags & 2 != 0 { 64 } else { 1 << 20 },
        chunking: flags & 4 == 0,
        auth: flags & 8 != 0,
        auth_needs_tls: true,
        dsn: flags & 16 != 0,
        strict_lines: flags & 32 == 0,
    };
    let strict = config.strict_lines;
    let limit = config.max_message_bytes;
    let mut server = Server::new(config);
    let mut out = Vec::new();
    server.greeting(&mut out);
    let mut buffer: Vec<u8> = Vec::new();
    let mut gathered: Vec<u8> = Vec::new();
    let mut refuse = false;
    let mut close_next = false;
    let mut body = 0usize;
    let mut message: Vec<u8> = Vec::new();
    let mut tls = false;
    let mut accepted_rcpts = 0usize;
    for (i, &b) in script.iter().enumerate() {
        let last = i + 1 == script.len();
        match b {
            REFUSE => refuse = true,
            ACCEPT => refuse = false,
            CLOSE_421 => close_next = true,
            DELIVER => {}
            other => gathered.push(other),
        }
        if b != DELIVER && !last {
            continue;
        }
        buffer.append(&mut gathered);
        let before_commands = server.commands();
        let out_before = out.len();
        let mut messages = 0u64;
        loop {
            let (used, event) = server.advance(&buffer, &mut out);
            assert!(used <= buffer.len(), "used {used} of {}", buffer.len());
            let mut starttls = false;
            match event {
                Event::NeedMore => {
                    let left = buffer.len() - used;
                    assert!(left < COMMAND_LINE_MAX, "{left} bytes left unread");
                    buffer.drain(..used);
                    break;
                }
                Event::Mail { .. } | Event::Rcpt { .. } => {
                    let is_rcpt = matches!(event, Event::Rcpt { .. });
                    let (code, text) = if close_next {
                        (421, "4.7.0 closing")
                    } else if refuse {
                        if is_rcpt {
                            (550, "5.1.1 no")
                        } else {
                            (451, "4.3.0 later")
                        }
                    } else {
                        (250, "2.0.0 ok")
                    };
                    close_next = false;
                    if is_rcpt && code == 250 {
                        accepted_rcpts += 1;
                    }
                    if !is_rcpt && code == 250 {
                        accepted_rcpts = 0;
                    }
                    server.reply(code, text, &mut out);
                }
                Event::Body(b) => {
                    body += b.len();
                    assert!(body <= limit, "a body of {body} octets over {limit}");
                    message.extend_from_slice(b);
                }
                Event::MessageEnd => {
                    assert!(accepted_rcpts > 0, "a message with no accepted recipient");
                    if strict {
                        assert_clean_lines(&message);
                    }
                    message.clear();
                    messages += 1;
                    body = 0;
                    accepted_rcpts = 0;
                    server.reply(250, "2.0.0 queued", &mut out);
                }
                Event::MessageTooBig | Event::MessageRefused => {
                    messages += 1;
                    body = 0;
                    accepted_rcpts = 0;
                    message.clear();
                }
                Event::Auth { password, .. } => {
                    assert!(tls, "credentials outside TLS");
                    let good = password.0 == "pw";
                    server.reply(if good { 235 } else { 535 }, "2.7.0 / 5.7.8", &mut out);
                    assert_eq!(server.is_authenticated(), good);
                }
                Event::MessageAbandoned => {
                    body = 0;
                    accepted_rcpts = 0;
                    message.clear();
                }
                Event::StartTls => starttls = true,
                Event::Close => return,
            }
            buffer.drain(..used);
            if starttls {
                // What followed STARTTLS in the clear is dropped; the handshake succeeds.
                buffer.clear();
                server.tls_started();
                tls = true;
                accepted_rcpts = 0;
                body = 0;
                message.clear();
            }
        }
        let lines = server.commands() - before_commands + messages;
        let written = out.len() - out_before;
        assert!(
            written as u64 <= 512 * lines.max(1),
            "{written} octets of replies for {lines} commands and messages"
        );
        assert!(
            out.is_empty() || out.ends_with(b"\r\n"),
            "a reply without CRLF"
        );
        out.clear();
    }
}

/// Every CR is followed by LF, every LF preceded by CR, and no line holds more than 998
/// octets before its CRLF.
fn assert_clean_lines(message: &[u8]) {
    let mut line = 0usize;
    for (i, &b) in message.iter().enumerate() {
        match b {
            b'\r' => assert_eq!(message.get(i + 1), Some(&b'\n'), "a bare CR at {i}"),
            b'\n' => {
                assert!(i > 0 && message[i - 1] == b'\r', "a bare LF at {i}");
                line = 0;
                continue;
            }
            _ => {}
        }
        if b != b'\r' {
            line += 1;
            assert!(line <= 998, "a line over 998 octets");
        }
    }
}
