use super::*;
use crate::smtp::data::Data;
use std::io::{BufRead, BufReader, Write};

/// A one-connection scripted SMTP server on loopback; returns what it received.
fn server(
    script: fn(&str) -> Option<&'static str>,
) -> (SocketAddr, std::thread::JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let handle = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut w = conn.try_clone().unwrap();
        let mut r = BufReader::new(conn);
        w.write_all(b"220 test ESMTP\r\n").unwrap();
        let mut seen = String::new();
        let mut in_data = false;
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            seen.push_str(&line);
            let cmd = line.trim_end().to_string();
            line.clear();
            if in_data {
                if cmd == "." {
                    in_data = false;
                    w.write_all(b"250 2.0.0 queued\r\n").unwrap();
                }
                continue;
            }
            if let Some(answer) = script(&cmd) {
                w.write_all(answer.as_bytes()).unwrap();
                if cmd == "DATA" && answer.starts_with("354") {
                    in_data = true;
                }
                if cmd == "QUIT" {
                    break;
                }
            }
        }
        seen
    });
    (addr, handle)
}

fn script(cmd: &str) -> Option<&'static str> {
    Some(match cmd {
        c if c.starts_with("EHLO") => "250-test\r\n250-PIPELINING\r\n250 8BITMIME\r\n",
        c if c.starts_with("MAIL") => "250 2.1.0 ok\r\n",
        "RCPT TO:<nobody@x.test>" => "550 5.1.1 no such user\r\n",
        c if c.starts_with("RCPT") => "250 2.1.5 ok\r\n",
        "DATA" => "354 go ahead\r\n",
        "RSET" => "250 2.0.0 reset\r\n",
        "QUIT" => "221 bye\r\n",
        _ => "500 what\r\n",
    })
}

/// A connection to `addr` as the tests here open it (MX name "mx", 2 s to connect).
async fn open_to(
    addr: SocketAddr,
    policy: TlsPolicy,
    timeouts: Timeouts,
) -> Result<Connection, ConnectError> {
    let tls = Rc::new(TlsClients::new());
    Connection::open(
        "mx",
        addr,
        None,
        "mta.test",
        policy,
        &tls,
        timeouts,
        Duration::from_secs(2),
    )
    .await
}

fn run<T>(f: impl std::future::Future<Output = T>) -> T {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(1 << 20)
        .make()
        .unwrap()
        .run(f)
}

#[test]
fn delivers_two_transactions_on_one_connection() {
    let (addr, server) = server(script);
    let results = run(async move {
        let mut c = Connection::open(
            "mx.x.test",
            addr,
            None,
            "mta.test",
            TlsPolicy::Opportunistic,
            &Rc::new(TlsClients::new()),
            Timeouts::default(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let first = c
            .send(Transaction {
                mail_from: "b@acme.test".into(),
                rcpts: vec!["a@x.test".into(), "nobody@x.test".into()],
                data: Data::encode(b"Subject: one\r\n\r\nbody\r\n"),
            })
            .await;
        let second = c
            .send(Transaction {
                mail_from: "b@acme.test".into(),
                rcpts: vec!["c@x.test".into()],
                data: Data::encode(b"Subject: two\n\n.leading dot\n"),
            })
            .await;
        assert_eq!(c.deliveries, 2);
        c.quit().await;
        (first, second)
    });
    let seen = server.join().unwrap();
    let codes = |r: &[RcptResult]| -> Vec<u16> {
        r.iter()
            .map(|x| match x {
                RcptResult::Reply(r) => r.code,
                _ => 0,
            })
            .collect()
    };
    assert_eq!(codes(&results.0), vec![250, 550]);
    assert_eq!(codes(&results.1), vec![250]);
    assert!(
        seen.contains("Subject: two\r\n\r\n..leading dot\r\n.\r\n"),
        "{seen}"
    );
    assert!(seen.ends_with("QUIT\r\n"));
}

/// Two transactions in flight on one connection: the second's commands go out behind the
/// first's content, and the results come back in order.
#[test]
fn pipelines_the_next_transaction_behind_the_final_dot() {
    let (addr, server) = server(script);
    let (first, second, third) = run(async move {
        let mut c = Connection::open(
            "mx.x.test",
            addr,
            None,
            "mta.test",
            TlsPolicy::Disabled,
            &Rc::new(TlsClients::new()),
            Timeouts::default(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let tx = |to: &str, body: &str| Transaction {
            mail_from: "b@acme.test".into(),
            rcpts: vec![to.into()],
            data: Data::encode(body.as_bytes()),
        };
        assert!(c.can_start());
        c.start(tx("a@x.test", "Subject: one\r\n\r\n1\r\n"));
        assert!(c.can_start(), "the server offers PIPELINING");
        c.start(tx("nobody@x.test", "Subject: two\r\n\r\n2\r\n"));
        assert!(!c.can_start(), "two at most");
        let first = c.next_done().await;
        c.start(tx("c@x.test", "Subject: three\r\n\r\n3\r\n"));
        let second = c.next_done().await;
        let third = c.next_done().await;
        assert_eq!((c.deliveries, c.in_progress()), (3, 0));
        assert!(c.is_usable());
        c.quit().await;
        (first, second, third)
    });
    let seen = server.join().unwrap();
    let code = |r: &[RcptResult]| match &r[0] {
        RcptResult::Reply(r) => r.code,
        other => panic!("{other:?}"),
    };
    assert_eq!((code(&first), code(&second), code(&third)), (250, 550, 250));
    let one = seen.find("Subject: one").unwrap();
    let two = seen
        .find("MAIL FROM:<b@acme.test>\r\nRCPT TO:<nobody@x.test>")
        .unwrap();
    assert!(one < two, "{seen}");
    assert!(seen.contains("Subject: three\r\n\r\n3\r\n.\r\n"), "{seen}");
}

/// The remote crash of the hostile-input review, through real sockets: EHLO answered
/// with `250` and, in the same write, another line. The connection is refused, never
/// handed out as ready.
#[test]
fn a_session_closed_in_the_packet_that_made_it_ready_is_not_handed_out() {
    fn answer_with_421(cmd: &str) -> Option<&'static str> {
        cmd.starts_with("EHLO")
            .then_some("250 t\r\n421 4.7.0 bye\r\n")
    }
    fn answer_with_220(cmd: &str) -> Option<&'static str> {
        cmd.starts_with("EHLO").then_some("250 t\r\n220 t\r\n")
    }
    for script in [answer_with_421, answer_with_220] {
        let (addr, server) = server(script);
        let opened = run(async move {
            let c = open_to(addr, TlsPolicy::Opportunistic, Timeouts::default()).await;
            c.map(|c| c.is_usable())
        });
        assert!(
            matches!(opened, Err(ConnectError::Refused(_))),
            "{opened:?}"
        );
        drop(server);
    }
}

/// A server that dribbles its greeting a byte at a time: each byte arrives well within
/// the greeting timeout, but the whole reply does not, so the connection gives up at the
/// timeout instead of whenever the server pleases.
#[test]
fn a_reply_is_bounded_as_a_whole_not_per_byte() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        // 200 bytes, 20 ms apart: the whole greeting takes 4 s.
        let greeting = format!("220 {}\r\n", "x".repeat(194));
        for b in greeting.bytes() {
            if conn.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let opened = run(async move {
        let timeouts = Timeouts {
            greeting: Duration::from_millis(500),
            ..Timeouts::default()
        };
        open_to(addr, TlsPolicy::Disabled, timeouts)
            .await
            .map(|c| c.is_usable())
    });
    let Err(ConnectError::Unreachable(why)) = &opened else {
        panic!("{opened:?}")
    };
    assert!(why.contains("no complete reply"), "{why}");
    server.join().unwrap();
}

/// A server that accepts and then says nothing: the read waits on the socket and the
/// stream's one timer, set to the greeting's deadline, ends it.
#[test]
fn a_silent_server_is_given_up_at_the_greeting_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        // Held open, silent, far longer than the timeout; then closed, so a timeout
        // that never fires shows as "closed the connection", not as a hang.
        let _ = done_rx.recv_timeout(Duration::from_secs(10));
        drop(conn);
    });
    let opened = run(async move {
        let timeouts = Timeouts {
            greeting: Duration::from_millis(300),
            ..Timeouts::default()
        };
        let c = open_to(addr, TlsPolicy::Disabled, timeouts);
        c.await.map(|c| c.is_usable())
    });
    drop(done_tx);
    let Err(ConnectError::Unreachable(why)) = &opened else {
        panic!("{opened:?}")
    };
    assert!(
        why.contains("no complete reply") && why.contains("300ms"),
        "{why}"
    );
    server.join().unwrap();
}

/// A receiver that takes the message's DATA and then stops reading: the write fills the
/// socket's buffers and waits, and the phase's timeout ends it. Every recipient learns
/// the connection was lost (retried elsewhere), none is marked delivered.
#[test]
fn a_receiver_that_stops_reading_is_given_up_at_the_phase_timeout() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (conn, _) = listener.accept().unwrap();
        let mut w = conn.try_clone().unwrap();
        let mut r = BufReader::new(conn);
        w.write_all(b"220 test ESMTP\r\n").unwrap();
        let mut line = String::new();
        while r.read_line(&mut line).unwrap_or(0) > 0 {
            let cmd = line.trim_end().to_string();
            line.clear();
            let answer = match cmd.as_str() {
                c if c.starts_with("EHLO") => "250-test\r\n250 PIPELINING\r\n",
                "DATA" => "354 go ahead\r\n",
                _ => "250 ok\r\n",
            };
            w.write_all(answer.as_bytes()).unwrap();
            if cmd == "DATA" {
                break;
            }
        }
        // Reads nothing more for far longer than the timeout.
        let _ = done_rx.recv_timeout(Duration::from_secs(10));
    });
    let results = run(async move {
        let timeouts = Timeouts {
            data_done: Duration::from_millis(300),
            ..Timeouts::default()
        };
        let mut c = open_to(addr, TlsPolicy::Disabled, timeouts).await.unwrap();
        // Far more than loopback's socket buffers hold.
        let mut message = b"Subject: big\r\n\r\n".to_vec();
        for _ in 0..(64 << 20) / 64 {
            message.extend_from_slice(&[b'x'; 62]);
            message.extend_from_slice(b"\r\n");
        }
        c.send(Transaction {
            mail_from: "b@acme.test".into(),
            rcpts: vec!["a@x.test".into()],
            data: Data::encode(&message),
        })
        .await
    });
    drop(done_tx);
    let [RcptResult::ConnectionLost(why)] = &results[..] else {
        panic!("{results:?}")
    };
    assert!(
        why.contains("write to") && why.contains("timed out"),
        "{why}"
    );
    server.join().unwrap();
}

#[test]
fn unreachable_and_refused() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let (addr2, server2) = server(|_| Some("554 5.7.1 go away\r\n"));
    let (a, b) = run(async move {
        let open = |addr| open_to(addr, TlsPolicy::Opportunistic, Timeouts::default());
        (open(addr).await.err(), open(addr2).await.err())
    });
    assert!(matches!(a, Some(ConnectError::Unreachable(_))), "{a:?}");
    // EHLO refused falls back to HELO, refused too.
    assert!(matches!(b, Some(ConnectError::Refused(_))), "{b:?}");
    server2.join().unwrap();
}

/// The dribble again, under TLS: a server that sends the EHLO reply after STARTTLS as one TLS
/// record, a byte every 20 ms. Each byte satisfies a read of the TCP stream but not yet the
/// TLS layer's, so a bound set once per read of the session (and re-armed whole for each byte
/// the TLS layer waits for) would let the reply take as long as the server likes; the
/// deadline stops it at the EHLO timeout.
#[test]
fn a_reply_under_tls_is_bounded_as_a_whole_not_per_byte() {
    use std::io::Read;
    use std::sync::mpsc::TryRecvError;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        let (mut tcp, _) = listener.accept().unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let line = |tcp: &mut std::net::TcpStream| {
            let mut got = Vec::new();
            let mut b = [0u8; 1];
            while !got.ends_with(b"\n") && tcp.read(&mut b).unwrap_or(0) == 1 {
                got.push(b[0]);
            }
            got
        };
        tcp.write_all(b"220 test ESMTP\r\n").unwrap();
        assert!(line(&mut tcp).starts_with(b"EHLO"));
        tcp.write_all(b"250-test\r\n250 STARTTLS\r\n").unwrap();
        assert_eq!(line(&mut tcp), b"STARTTLS\r\n");
        tcp.write_all(b"220 go ahead\r\n").unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["mx".to_string()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .unwrap();
        let mut tls = rustls::ServerConnection::new(Arc::new(config)).unwrap();
        while tls.is_handshaking() {
            tls.complete_io(&mut tcp).unwrap();
        }
        // The EHLO over TLS, then its answer: 200 bytes in one record, a byte at a time.
        let mut plain = Vec::new();
        while !plain.ends_with(b"\r\n") {
            tls.complete_io(&mut tcp).unwrap();
            let mut buf = [0u8; 512];
            if let Ok(n) = tls.reader().read(&mut buf) {
                plain.extend_from_slice(&buf[..n]);
            }
        }
        assert!(plain.starts_with(b"EHLO"));
        let reply = format!("250 {}\r\n", "x".repeat(194));
        tls.writer().write_all(reply.as_bytes()).unwrap();
        let mut record = Vec::new();
        while tls.wants_write() {
            tls.write_tls(&mut record).unwrap();
        }
        for b in record {
            let client_done = !matches!(done_rx.try_recv(), Err(TryRecvError::Empty));
            if client_done || tcp.write_all(&[b]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let opened = run(async move {
        let timeouts = Timeouts {
            ehlo: Duration::from_millis(500),
            ..Timeouts::default()
        };
        let c = open_to(addr, TlsPolicy::Opportunistic, timeouts);
        c.await.map(|c| c.tls.clone())
    });
    drop(done_tx);
    let Err(ConnectError::Unreachable(why)) = &opened else {
        panic!("{opened:?}")
    };
    assert!(
        why.contains("no complete reply") && why.contains("500ms"),
        "{why}"
    );
    server.join().unwrap();
}

/// A connection from an egress source leaves from its address; a refused connect and a
/// source of the other address family are errors, not hangs.
#[test]
fn connects_from_a_source_address() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = std::thread::spawn(move || {
        let (conn, peer) = listener.accept().unwrap();
        drop(conn);
        peer.ip()
    });
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let source: IpAddr = "127.0.0.71".parse().unwrap();
    let wait = Duration::from_secs(5);
    let (ok, refused, family) = run(async move {
        let ok = connect_from(source, addr, wait).await.map(|_| ());
        let refused = connect_from(source, closed, wait).await.map(|_| ());
        let v6: SocketAddr = "[::1]:25".parse().unwrap();
        let family = connect_from(source, v6, wait).await.map(|_| ());
        (ok, refused, family)
    });
    ok.unwrap();
    assert_eq!(seen.join().unwrap(), source);
    assert_eq!(
        refused.unwrap_err().kind(),
        std::io::ErrorKind::ConnectionRefused
    );
    assert!(family.unwrap_err().to_string().contains("address families"));
}
