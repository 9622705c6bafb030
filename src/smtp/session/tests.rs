//! The session against scripted servers: pipelining, TLS, refusals, 421s, lost connections.

use super::*;

/// Drives a session against a scripted server: `script` maps each client write to the
/// server's answer. Returns everything the client sent and the actions it took.
struct Harness {
    s: Session,
    sent: Vec<u8>,
    done: Vec<Vec<RcptResult>>,
    closed: Option<CloseReason>,
    starttls: bool,
    ready: usize,
}

impl Harness {
    fn new(policy: TlsPolicy) -> Self {
        Harness {
            s: Session::new("mta.example", policy, Timeouts::default()),
            sent: Vec::new(),
            done: Vec::new(),
            closed: None,
            starttls: false,
            ready: 0,
        }
    }

    fn server(&mut self, bytes: &str) {
        self.s.receive(bytes.as_bytes());
        self.drain();
    }

    fn drain(&mut self) {
        while let Some(a) = self.s.next_action() {
            match a {
                Action::Send(b) => self.sent.extend_from_slice(&b),
                Action::StartTls => self.starttls = true,
                Action::Ready => self.ready += 1,
                Action::Done(r) => self.done.push(r),
                Action::Close(r) => self.closed = Some(r),
            }
        }
    }

    fn take_sent(&mut self) -> String {
        String::from_utf8(std::mem::take(&mut self.sent)).unwrap()
    }
}

const EHLO_PIPE: &str =
    "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250 ENHANCEDSTATUSCODES\r\n";

fn tx(rcpts: &[&str], message: &str) -> Transaction {
    Transaction {
        mail_from: "bounces@acme.example".into(),
        rcpts: rcpts.iter().map(|r| r.to_string()).collect(),
        data: Data::encode(message.as_bytes()),
    }
}

fn codes(results: &[RcptResult]) -> Vec<u16> {
    results
        .iter()
        .map(|r| match r {
            RcptResult::Reply(rep) | RcptResult::ServiceClosing(rep) => rep.code,
            RcptResult::ConnectionLost(_) => 0,
        })
        .collect()
}

#[test]
fn pipelined_transaction_with_one_unknown_user() {
    let mut h = Harness::new(TlsPolicy::Opportunistic);
    h.server("220 mx.test ESMTP\r\n");
    assert_eq!(h.take_sent(), "EHLO mta.example\r\n");
    h.server(EHLO_PIPE);
    assert_eq!(h.ready, 1);
    assert_eq!(h.s.capabilities().size, Some(1000));
    h.s.start(tx(
        &["a@x.test", "b@x.test", "c@x.test"],
        "Subject: hi\r\n\r\n.dot\r\n",
    ));
    h.drain();
    assert_eq!(
        h.take_sent(),
        "MAIL FROM:<bounces@acme.example> SIZE=21\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n",
        "one write"
    );
    h.server(
        "250 2.1.0 ok\r\n250 2.1.5 ok\r\n550 5.1.1 no such user\r\n250 2.1.5 ok\r\n354 go\r\n",
    );
    assert_eq!(h.take_sent(), "Subject: hi\r\n\r\n..dot\r\n.\r\n");
    h.server("250 2.0.0 queued as X\r\n");
    assert_eq!(codes(&h.done[0]), vec![250, 550, 250]);
    assert_eq!(h.ready, 2);
    h.s.quit();
    h.drain();
    assert_eq!(h.take_sent(), "QUIT\r\n");
    h.server("221 bye\r\n");
    assert_eq!(h.closed, Some(CloseReason::Quit));
}

#[test]
fn the_next_transaction_goes_right_behind_the_content_and_final_dot() {
    let mut h = Harness::new(TlsPolicy::Disabled);
    h.server("220 hi\r\n");
    h.server(EHLO_PIPE);
    h.s.start(tx(&["a@x.test"], "one"));
    h.drain();
    h.take_sent();
    assert!(h.s.can_pipeline());
    // Started while the first waits for its 354: held, nothing sent yet.
    h.s.start(tx(&["b@x.test", "c@x.test"], "two"));
    h.drain();
    assert_eq!(h.take_sent(), "");
    assert_eq!(h.s.in_progress(), 2);
    assert!(!h.s.can_pipeline(), "two at most");
    // The 354: the first's content, then the second's commands, before any reply.
    h.server("250 ok\r\n250 ok\r\n354 go\r\n");
    assert_eq!(
        h.take_sent(),
        "one\r\n.\r\nMAIL FROM:<bounces@acme.example> SIZE=5\r\nRCPT TO:<b@x.test>\r\nRCPT TO:<c@x.test>\r\nDATA\r\n"
    );
    // One packet answers the first's dot and the second's commands.
    h.server("250 queued 1\r\n250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n354 go\r\n");
    assert_eq!(h.done.len(), 1);
    assert_eq!(codes(&h.done[0]), vec![250]);
    assert_eq!(h.take_sent(), "two\r\n.\r\n");
    assert_eq!(h.ready, 1, "not ready while the second is in progress");
    h.server("250 queued 2\r\n");
    assert_eq!(codes(&h.done[1]), vec![550, 250]);
    assert_eq!(h.ready, 2);
}

/// The steady state of a pipelining worker: the next transaction is started only once the
/// one in progress has had its 354 (its content already handed out, perhaps not yet
/// written). Its commands go at once, so they leave in the same write as that content; held
/// until the first one's final reply, they would cost a write and a reply packet of their own.
#[test]
fn a_transaction_started_after_the_first_ones_content_sends_its_commands_at_once() {
    let mut h = Harness::new(TlsPolicy::Disabled);
    h.server("220 hi\r\n");
    h.server(EHLO_PIPE);
    h.s.start(tx(&["a@x.test"], "one"));
    h.drain();
    h.take_sent();
    h.server("250 ok\r\n250 ok\r\n354 go\r\n");
    assert_eq!(h.take_sent(), "one\r\n.\r\n");
    assert!(h.s.can_pipeline());
    h.s.start(tx(&["b@x.test"], "two"));
    h.drain();
    assert_eq!(
        h.take_sent(),
        "MAIL FROM:<bounces@acme.example> SIZE=5\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"
    );
    // One packet answers the first's dot and the second's commands, in order.
    h.server("250 queued 1\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    assert_eq!(h.done.len(), 1);
    assert_eq!(codes(&h.done[0]), vec![250]);
    assert_eq!(h.take_sent(), "two\r\n.\r\n");
    h.server("250 queued 2\r\n");
    assert_eq!(codes(&h.done[1]), vec![250]);
    assert_eq!(h.ready, 2);

    // Behind a first transaction that failed at its recipients (an RSET is owed), the
    // second still waits for the first's end: nothing of it goes before the lone dot's reply.
    h.s.start(tx(&["nobody@x.test"], "three"));
    h.drain();
    h.take_sent();
    h.server("250 ok\r\n550 5.1.1 unknown\r\n354 go\r\n");
    assert_eq!(h.take_sent(), ".\r\n");
    h.s.start(tx(&["d@x.test"], "four"));
    h.drain();
    assert_eq!(h.take_sent(), "");
    h.server("250 ok\r\n");
    assert_eq!(codes(&h.done[2]), vec![550]);
    assert!(h.take_sent().starts_with("RSET\r\nMAIL FROM:"));
}

#[test]
fn a_first_transaction_refused_at_data_leaves_the_second_behind_an_rset() {
    let mut h = Harness::new(TlsPolicy::Disabled);
    h.server("220 hi\r\n");
    h.server(EHLO_PIPE);
    h.s.start(tx(&["a@x.test"], "one"));
    h.s.start(tx(&["b@x.test"], "two"));
    h.drain();
    h.take_sent();
    // DATA refused: the server may still hold MAIL and RCPT, so the second's MAIL goes
    // out behind an RSET, and only now.
    h.server("250 ok\r\n250 ok\r\n451 4.3.0 try later\r\n");
    assert_eq!(codes(&h.done[0]), vec![451]);
    assert_eq!(
        h.take_sent(),
        "RSET\r\nMAIL FROM:<bounces@acme.example> SIZE=5\r\nRCPT TO:<b@x.test>\r\nDATA\r\n"
    );
    h.server("250 reset\r\n250 ok\r\n250 ok\r\n354 go\r\n");
    assert_eq!(h.take_sent(), "two\r\n.\r\n");
    h.server("250 queued\r\n");
    assert_eq!(codes(&h.done[1]), vec![250]);
}

#[test]
fn a_421_or_a_lost_connection_decides_both_transactions_in_progress() {
    for lost in [false, true] {
        let mut h = Harness::new(TlsPolicy::Disabled);
        h.server("220 hi\r\n");
        h.server(EHLO_PIPE);
        h.s.start(tx(&["a@x.test"], "one"));
        h.s.start(tx(&["b@x.test"], "two"));
        h.drain();
        h.server("250 ok\r\n250 ok\r\n354 go\r\n");
        h.take_sent();
        if lost {
            h.s.connection_lost("reset");
            h.drain();
        } else {
            h.server("421 4.7.0 closing\r\n");
        }
        assert_eq!(h.done.len(), 2, "one Done each, in order");
        for (i, d) in h.done.iter().enumerate() {
            assert_eq!(d.len(), 1);
            match (lost, i, &d[0]) {
                (true, _, RcptResult::ConnectionLost(_)) => {}
                // The first's content was sent: the 421 is its answer (an attempt); the
                // second was not reached (retried without blame).
                (false, 0, RcptResult::Reply(r)) if r.code == 421 => {}
                (false, 1, RcptResult::ServiceClosing(_)) => {}
                (_, _, other) => panic!("{i}: {other:?}"),
            }
        }
        assert_eq!(h.take_sent(), "", "nothing after the end");
    }
}

#[test]
fn a_transaction_refused_here_behind_another_gets_its_results_after_it() {
    let mut h = Harness::new(TlsPolicy::Disabled);
    h.server("220 hi\r\n");
    h.server(EHLO_PIPE);
    h.s.start(tx(&["a@x.test"], "one"));
    // Over the server's SIZE (1000): decided here, nothing sent for it.
    h.s.start(tx(&["b@x.test"], &"x".repeat(2000)));
    h.drain();
    h.take_sent();
    assert!(h.done.is_empty(), "not before the first");
    h.server("250 ok\r\n250 ok\r\n354 go\r\n");
    assert_eq!(h.take_sent(), "one\r\n.\r\n");
    h.server("250 queued\r\n");
    assert_eq!(codes(&h.done[0]), vec![250]);
    assert_eq!(codes(&h.done[1]), vec![552]);
    assert_eq!(h.ready, 2);
    assert!(h.s.is_ready());
}

#[test]
fn without_pipelining_a_second_transaction_waits_its_turn() {
    let mut h = Harness::new(TlsPolicy::Disabled);
    h.server("220 hi\r\n");
    h.server("250 mx.test\r\n");
    h.s.start(tx(&["a@x.test"], "one"));
    h.drain();
    assert!(!h.s.can_pipeline());
    h.s.start(tx(&["b@x.test"], "two"));
    h.drain();
    assert!(
        matches!(h.done[0][0], RcptResult::ConnectionLost(_)),
        "refused at once: {:?}",
        h.done
    );
    assert_eq!(h.s.in_progress(), 1);
}

#[test]
fn without_pipelining_commands_go_one_at_a_time_and_failures_rset() {
    let mut h = Harness::new(TlsPolicy::Disabled);
    h.server("220 hi\r\n");
    h.take_sent();
    h.server("250-mx\r\n250 SIZE\r\n");
    h.s.start(tx(&["a@x.test"], "x"));
    h.drain();
    assert_eq!(h.take_sent(), "MAIL FROM:<bounces@acme.example>\r\n");
    h.server("451 4.3.0 try later\r\n");
    assert_eq!(h.take_sent(), "RCPT TO:<a@x.test>\r\n");
    h.server("503 5.5.1 need MAIL\r\n");
    assert_eq!(h.take_sent(), "DATA\r\n");
    h.server("503 5.5.1 no recipients\r\n");
    assert_eq!(codes(&h.done[0]), vec![451], "MAIL's reply decides");
    h.s.start(tx(&["b@x.test"], "y"));
    h.drain();
    assert_eq!(h.take_sent(), "RSET\r\n");
    h.server("250 ok\r\n");
    assert_eq!(h.take_sent(), "MAIL FROM:<bounces@acme.example>\r\n");
}

#[test]
fn ehlo_refused_falls_back_to_helo() {
    let mut h = Harness::new(TlsPolicy::Opportunistic);
    h.server("220 old\r\n");
    h.take_sent();
    h.server("502 5.5.2 what?\r\n");
    assert_eq!(h.take_sent(), "HELO mta.example\r\n");
    h.server("250 old.example\r\n");
    assert_eq!(h.ready, 1);
    assert!(!h.s.capabilities().pipelining);
}

#[test]
fn starttls_then_ehlo_again() {
    let mut h = Harness::new(TlsPolicy::Opportunistic);
    h.server("220 hi\r\n");
    h.take_sent();
    h.server("250-mx\r\n250-PIPELINING\r\n250 STARTTLS\r\n");
    assert_eq!(h.take_sent(), "STARTTLS\r\n");
    h.server("220 2.0.0 ready\r\n");
    assert!(h.starttls);
    assert_eq!(h.ready, 0);
    h.s.tls_established();
    h.drain();
    assert_eq!(h.take_sent(), "EHLO mta.example\r\n");
    h.server("250-mx\r\n250 PIPELINING\r\n");
    assert!(h.s.tls_active());
    assert_eq!(h.ready, 1);
}

#[test]
fn plaintext_after_starttls_is_discarded_not_parsed() {
    let mut h = Harness::new(TlsPolicy::Opportunistic);
    h.server("220 hi\r\n250-mx\r\n250 STARTTLS\r\n");
    h.take_sent();
    // An attacker appends a fake EHLO answer to the 220 in the same packet.
    h.server("220 2.0.0 ready\r\n250-evil\r\n250 AUTH PLAIN\r\n");
    assert!(h.starttls);
    assert!(h.closed.is_none(), "the injected lines were not parsed");
    h.s.tls_established();
    h.drain();
    assert_eq!(h.take_sent(), "EHLO mta.example\r\n");
    h.server("250-mx\r\n250 PIPELINING\r\n");
    assert_eq!(h.ready, 1);
    assert!(h.s.capabilities().pipelining);
}

#[test]
fn tls_policies_when_starttls_is_missing_or_refused() {
    let mut h = Harness::new(TlsPolicy::Required);
    h.server("220 hi\r\n250 mx\r\n");
    assert!(matches!(h.closed, Some(CloseReason::TlsUnavailable(_))));
    let mut h = Harness::new(TlsPolicy::Opportunistic);
    h.server("220 hi\r\n250-mx\r\n250 STARTTLS\r\n454 4.7.0 TLS not available\r\n");
    assert_eq!(h.ready, 1, "opportunistic carries on in plaintext");
    let mut h = Harness::new(TlsPolicy::Verify);
    h.server("220 hi\r\n250-mx\r\n250 STARTTLS\r\n454 4.7.0 TLS not available\r\n");
    assert!(matches!(h.closed, Some(CloseReason::TlsUnavailable(_))));
}

#[test]
fn unilateral_421_mid_transaction_is_service_closing_for_undecided_recipients() {
    let mut h = Harness::new(TlsPolicy::Disabled);
    h.server("220 hi\r\n");
    h.server(EHLO_PIPE);
    h.s.start(tx(&["a@x.test", "b@x.test"], "x"));
    h.drain();
    h.take_sent();
    h.server("250 ok\r\n550 5.1.1 unknown\r\n421 4.7.0 [TSS04] too much mail\r\n");
    let results = &h.done[0];
    assert_eq!(codes(results), vec![550, 421]);
    assert!(
        matches!(results[0], RcptResult::Reply(_)),
        "a rejection stays a rejection"
    );
    assert!(matches!(results[1], RcptResult::ServiceClosing(_)));
    assert!(matches!(h.closed, Some(CloseReason::ServiceClosing(_))));
}

#[test]
fn a_421_answering_the_message_is_its_reply_not_load_shedding() {
    let mut h = Harness::new(TlsPolicy::Disabled);
    h.server("220 hi\r\n");
    h.server(EHLO_PIPE);
    h.s.start(tx(&["a@x.test", "b@x.test"], "x"));
    h.drain();
    h.server("250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n354 go\r\n");
    h.server("421 4.3.2 not accepting messages\r\n");
    let results = &h.done[0];
    assert_eq!(codes(results), vec![550, 421]);
    assert!(
        matches!(&results[1], RcptResult::Reply(r) if r.code == 421),
        "{results:?}"
    );
    assert!(matches!(h.closed, Some(CloseReason::ServiceClosing(_))));
    assert!(h.s.is_closed());
}

/// Found by the hostile corpus: a 250 in the same packet as the 354 was read as the
/// answer to a message not sent yet.
#[test]
fn a_reply_before_the_content_is_sent_is_a_protocol_error() {
    for trailer in ["250 2.0.0 ok\r\n", "blah\r\n"] {
        let mut h = Harness::new(TlsPolicy::Disabled);
        h.server("220 hi\r\n");
        h.server(EHLO_PIPE);
        h.s.start(tx(&["a@x.test"], "x"));
        h.drain();
        h.server(&format!("250 ok\r\n250 ok\r\n354 go\r\n{trailer}"));
        assert!(
            matches!(h.done[0][0], RcptResult::ConnectionLost(_)),
            "{trailer:?}: {:?}",
            h.done
        );
        assert!(
            matches!(h.closed, Some(CloseReason::Protocol(_))),
            "{trailer:?}"
        );
    }
}

#[test]
fn size_declares_the_canonical_message() {
    let mut h = Harness::new(TlsPolicy::Disabled);
    h.server("220 hi\r\n");
    h.server(EHLO_PIPE);
    h.take_sent();
    h.s.start(tx(&["a@x.test"], "S: x\n\n.a\nb\n"));
    h.drain();
    // 11 octets with bare LFs are 15 with CRLF; the stuffed dot does not count.
    let sent = h.take_sent();
    assert!(
        sent.starts_with("MAIL FROM:<bounces@acme.example> SIZE=15\r\n"),
        "{sent}"
    );
}

#[test]
fn greeting_421_and_unsolicited_421_close() {
    let mut h = Harness::new(TlsPolicy::Disabled);
    h.server("421 4.7.0 too many connections\r\n");
    assert!(matches!(h.closed, Some(CloseReason::ServiceClosing(_))));
    let mut h = Harness::new(TlsPolicy::Disabled);
    h.server("220 hi\r\n250 mx\r\n");
    h.server("421 4.4.2 idle timeout\r\n");
    assert!(matches!(h.closed, Some(CloseReason::ServiceClosing(_))));
}

#[test]
fn signed_8bit_content_waits_for_a_server_that_offers_8bitmime() {
    let signed = |message: &str| {
        let mut t = tx(&["a@x.test"], message);
        t.data.add_signatures(b"DKIM-Signature: v=1; b=x\r\n");
        t
    };
    // Without 8BITMIME: unsigned 8-bit goes as it is, signed 8-bit is deferred untouched.
    let mut h = Harness::new(TlsPolicy::Disabled);
    h.server("220 hi\r\n");
    h.server("250-mx.test\r\n250 PIPELINING\r\n");
    h.take_sent();
    h.s.start(signed("Subject: caf\u{e9}\r\n\r\nx\r\n"));
    h.drain();
    assert_eq!(codes(&h.done[0]), vec![450]);
    let RcptResult::Reply(r) = &h.done[0][0] else {
        panic!("a reply")
    };
    assert!(r
        .to_log_string()
        .contains("4.6.3 the message is DKIM-signed 8-bit"));
    assert!(h.take_sent().is_empty());
    h.s.start(signed("Subject: plain\r\n\r\nx\r\n"));
    h.drain();
    assert!(h
        .take_sent()
        .starts_with("MAIL FROM:<bounces@acme.example>\r\n"));
    // With 8BITMIME it is declared and sent.
    let mut h = Harness::new(TlsPolicy::Disabled);
    h.server("220 hi\r\n");
    h.server(EHLO_PIPE);
    h.s.start(signed("Subject: caf\u{e9}\r\n\r\nx\r\n"));
    h.drain();
    assert!(h.take_sent().contains("BODY=8BITMIME"));
}

#[test]
fn local_refusals_size_and_smtputf8() {
    let mut h = Harness::new(TlsPolicy::Disabled);
    h.server("220 hi\r\n");
    h.server(EHLO_PIPE);
    h.s.start(tx(&["a@x.test"], &"z".repeat(2000)));
    h.drain();
    assert_eq!(codes(&h.done[0]), vec![552]);
    h.s.start(tx(&["用户@x.test"], "x"));
    h.drain();
    assert_eq!(codes(&h.done[1]), vec![553]);
    h.take_sent();
    assert!(h.sent.is_empty(), "nothing was sent for either");
    assert_eq!(h.ready, 3);
}

#[test]
fn all_recipients_refused_but_data_accepted_ends_with_a_lone_dot() {
    let mut h = Harness::new(TlsPolicy::Disabled);
    h.server("220 hi\r\n");
    h.server(EHLO_PIPE);
    h.s.start(tx(&["a@x.test"], "x"));
    h.drain();
    h.take_sent();
    h.server("250 ok\r\n550 5.1.1 unknown\r\n354 go ahead\r\n");
    assert_eq!(h.take_sent(), ".\r\n");
    h.server("554 5.5.1 no valid recipients\r\n");
    assert_eq!(codes(&h.done[0]), vec![550]);
    h.s.start(tx(&["b@x.test"], "x"));
    h.drain();
    assert!(h.take_sent().starts_with("RSET\r\nMAIL FROM"));
}

#[test]
fn a_2xx_to_data_is_a_protocol_error_not_a_delivery() {
    let mut h = Harness::new(TlsPolicy::Disabled);
    h.server("220 hi\r\n");
    h.server(EHLO_PIPE);
    h.s.start(tx(&["a@x.test"], "x"));
    h.drain();
    h.server("250 ok\r\n250 ok\r\n250 ok\r\n");
    assert!(
        matches!(h.done[0][0], RcptResult::ConnectionLost(_)),
        "{:?}",
        h.done
    );
    assert!(matches!(h.closed, Some(CloseReason::Protocol(_))));
}

/// A 3xx after the final dot is neither "delivered" nor "refused": the recipient is retried.
#[test]
fn a_3xx_to_the_message_is_a_protocol_error_not_an_outcome() {
    let mut h = Harness::new(TlsPolicy::Disabled);
    h.server("220 hi\r\n");
    h.server(EHLO_PIPE);
    h.s.start(tx(&["a@x.test"], "x"));
    h.drain();
    h.server("250 ok\r\n250 ok\r\n354 go\r\n");
    h.server("354 again\r\n");
    assert_eq!(codes(&h.done[0]), vec![0]);
    assert!(matches!(h.closed, Some(CloseReason::Protocol(_))));
}

#[test]
fn connection_loss_and_protocol_errors() {
    let mut h = Harness::new(TlsPolicy::Disabled);
    h.server("220 hi\r\n");
    h.server(EHLO_PIPE);
    h.s.start(tx(&["a@x.test"], "x"));
    h.drain();
    h.s.connection_lost("timeout waiting for MAIL reply");
    h.drain();
    assert_eq!(
        h.done[0],
        vec![RcptResult::ConnectionLost(
            "timeout waiting for MAIL reply".into()
        )]
    );
    assert!(h.s.is_closed());
    let mut h = Harness::new(TlsPolicy::Disabled);
    h.server("hello there\r\n");
    assert!(matches!(h.closed, Some(CloseReason::Protocol(_))));
}

/// The remote crash of the hostile-input review: a server that makes the session ready
/// and, in the same write, closes it or says something unexpected. The session must end
/// closed (never ready), and a transaction started on it anyway fails its recipients
/// without a byte sent and without a panic.
#[test]
fn a_reply_behind_the_ehlo_answer_closes_the_session_and_start_never_panics() {
    for trailer in [
        "421 4.7.0 bye\r\n",
        "220 t\r\n",
        "250 t\r\n",
        "354 go\r\n",
        "550 5.7.1 no\r\n",
    ] {
        let mut h = Harness::new(TlsPolicy::Opportunistic);
        h.server("220 t\r\n");
        h.take_sent();
        h.server(&format!("250 t\r\n{trailer}"));
        assert!(h.s.is_closed(), "{trailer:?}");
        assert!(h.closed.is_some(), "{trailer:?}");
        h.s.start(tx(&["a@x.test", "b@x.test"], "x"));
        h.drain();
        assert_eq!(codes(h.done.last().unwrap()), vec![0, 0], "{trailer:?}");
        assert!(h.take_sent().is_empty(), "nothing sent on a closed session");
    }
    // Out-of-order calls from a shell are ignored, not fatal.
    let mut h = Harness::new(TlsPolicy::Opportunistic);
    h.s.tls_established();
    h.s.start(tx(&[], "x"));
    h.drain();
    assert!(h.take_sent().is_empty());
}

/// Found by the `session` fuzz target: `quit` while the greeting or EHLO was in flight
/// queued QUIT, but the reply to the command in flight still moved the session on: it
/// became ready (and took a transaction, sent after QUIT) or asked for STARTTLS.
#[test]
fn quit_while_opening_sends_only_quit_and_never_becomes_ready() {
    for (policy, replies) in [
        (TlsPolicy::Opportunistic, "250-mx\r\n250 PIPELINING\r\n"),
        (TlsPolicy::Required, "250-mx\r\n250 STARTTLS\r\n"),
    ] {
        let mut h = Harness::new(policy);
        h.server("220 hi\r\n");
        assert_eq!(h.take_sent(), "EHLO mta.example\r\n");
        h.s.quit();
        h.drain();
        h.server(replies);
        assert_eq!(h.ready, 0, "{policy:?}: ready after quit");
        assert!(!h.starttls, "{policy:?}: STARTTLS after quit");
        assert_eq!(h.take_sent(), "QUIT\r\n", "{policy:?}");
        h.server("221 bye\r\n");
        assert_eq!(h.closed, Some(CloseReason::Quit), "{policy:?}");
    }
    // Before the greeting: QUIT follows it.
    let mut h = Harness::new(TlsPolicy::Disabled);
    h.s.quit();
    h.drain();
    h.server("220 hi\r\n");
    assert_eq!(h.take_sent(), "QUIT\r\n");
}

#[test]
fn timeouts_follow_the_phase() {
    let t = Timeouts::default();
    let mut h = Harness::new(TlsPolicy::Disabled);
    assert_eq!(h.s.timeout(), t.greeting);
    h.server("220 hi\r\n");
    assert_eq!(h.s.timeout(), t.ehlo);
    h.server(EHLO_PIPE);
    h.s.start(tx(&["a@x.test"], "x"));
    h.drain();
    assert_eq!(h.s.timeout(), t.mail);
    h.server("250 ok\r\n250 ok\r\n354 go\r\n");
    assert_eq!(h.s.timeout(), t.data_done);
}

const EHLO_CHUNKING: &str =
    "250-mx.test\r\n250-PIPELINING\r\n250-SIZE 1000\r\n250-CHUNKING\r\n250 8BITMIME\r\n";

/// A session greeted by a server offering CHUNKING, with BDAT allowed.
fn chunking_session() -> Harness {
    let mut h = Harness::new(TlsPolicy::Disabled);
    h.s.set_chunking(true);
    h.server("220 hi\r\n");
    h.server(EHLO_CHUNKING);
    assert!(h.s.capabilities().chunking);
    h.take_sent();
    h
}

#[test]
fn bdat_sends_the_message_unstuffed_in_the_write_with_its_commands() {
    let mut h = chunking_session();
    h.s.start(tx(&["a@x.test", "b@x.test"], "Subject: hi\n\n.dot\n"));
    h.drain();
    assert_eq!(
        h.take_sent(),
        "MAIL FROM:<bounces@acme.example> SIZE=21\r\nRCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\nBDAT 21 LAST\r\nSubject: hi\r\n\r\n.dot\r\n",
        "one write, no 354 to wait for, the count as SIZE's"
    );
    h.server("250 ok\r\n550 5.1.1 unknown\r\n250 ok\r\n250 2.0.0 queued\r\n");
    assert_eq!(codes(&h.done[0]), vec![550, 250]);
    assert_eq!(h.ready, 2);
    // Allowed but not offered, or offered but not allowed: DATA as before.
    for (offer, allow) in [(false, true), (true, false)] {
        let mut h = Harness::new(TlsPolicy::Disabled);
        h.s.set_chunking(allow);
        h.server("220 hi\r\n");
        h.server(if offer { EHLO_CHUNKING } else { EHLO_PIPE });
        h.take_sent();
        h.s.start(tx(&["a@x.test"], "one"));
        h.drain();
        assert!(h.take_sent().ends_with("DATA\r\n"), "{offer} {allow}");
    }
}

#[test]
fn with_bdat_two_transactions_go_out_at_once_and_finish_in_order() {
    let mut h = chunking_session();
    h.s.start(tx(&["a@x.test"], "one"));
    assert!(h.s.can_pipeline());
    h.s.start(tx(&["b@x.test"], "two"));
    h.drain();
    assert_eq!(
        h.take_sent(),
        "MAIL FROM:<bounces@acme.example> SIZE=5\r\nRCPT TO:<a@x.test>\r\nBDAT 5 LAST\r\none\r\n\
         RSET\r\nMAIL FROM:<bounces@acme.example> SIZE=5\r\nRCPT TO:<b@x.test>\r\nBDAT 5 LAST\r\ntwo\r\n",
        "the second's commands need not wait for anything; the RSET keeps its MAIL safe"
    );
    h.server("250 ok\r\n250 ok\r\n250 queued 1\r\n250 ok\r\n250 ok\r\n");
    assert_eq!(h.done.len(), 1);
    assert_eq!(h.ready, 1, "not ready while the second is in progress");
    h.server("451 4.3.0 try later\r\n250 queued 2\r\n");
    assert_eq!(codes(&h.done[1]), vec![451]);
    assert_eq!(h.ready, 2);
}

#[test]
fn with_bdat_a_refused_mail_or_every_rcpt_refused_keeps_each_answer_and_rsets() {
    // A refused MAIL: the server refuses the RCPT and the chunk too (after reading it).
    let mut h = chunking_session();
    h.s.start(tx(&["a@x.test"], "one"));
    h.drain();
    h.take_sent();
    h.server("550 5.7.1 sender refused\r\n503 5.5.1 MAIL first\r\n503 5.5.1 MAIL first\r\n");
    assert_eq!(
        codes(&h.done[0]),
        vec![550],
        "MAIL's answer decides, not BDAT's"
    );
    // Every recipient refused: BDAT's refusal decides nobody's fate.
    h.s.start(tx(&["b@x.test"], "two"));
    h.drain();
    assert!(h.take_sent().starts_with("RSET\r\nMAIL"));
    h.server("250 ok\r\n250 ok\r\n550 5.1.1 unknown\r\n554 5.5.1 no valid recipients\r\n");
    assert_eq!(codes(&h.done[1]), vec![550]);
    h.s.start(tx(&["c@x.test"], "three"));
    h.drain();
    assert!(h.take_sent().starts_with("RSET\r\nMAIL"));
}

#[test]
fn with_bdat_a_421_answers_the_first_and_a_354_is_a_protocol_error() {
    let mut h = chunking_session();
    h.s.start(tx(&["a@x.test"], "one"));
    h.s.start(tx(&["b@x.test"], "two"));
    h.drain();
    h.server("250 ok\r\n250 ok\r\n421 4.3.2 shutting down\r\n");
    match (&h.done[0][0], &h.done[1][0]) {
        (RcptResult::Reply(r), RcptResult::ServiceClosing(_)) if r.code == 421 => {}
        other => panic!("{other:?}"),
    }
    let mut h = chunking_session();
    h.s.start(tx(&["a@x.test"], "one"));
    h.drain();
    h.server("250 ok\r\n250 ok\r\n354 go on\r\n");
    assert!(matches!(h.closed, Some(CloseReason::Protocol(_))));
    assert_eq!(codes(&h.done[0]), vec![0], "retried, not delivered");
}

#[test]
fn with_bdat_and_without_pipelining_the_chunk_goes_with_its_command_alone() {
    let mut h = Harness::new(TlsPolicy::Disabled);
    h.s.set_chunking(true);
    h.server("220 hi\r\n");
    h.server("250-mx.test\r\n250 CHUNKING\r\n");
    h.take_sent();
    h.s.start(tx(&["a@x.test"], "one"));
    h.drain();
    assert_eq!(h.take_sent(), "MAIL FROM:<bounces@acme.example>\r\n");
    h.server("250 ok\r\n");
    assert_eq!(h.take_sent(), "RCPT TO:<a@x.test>\r\n");
    h.server("250 ok\r\n");
    assert_eq!(h.take_sent(), "BDAT 5 LAST\r\none\r\n");
    h.server("250 queued\r\n");
    assert_eq!(codes(&h.done[0]), vec![250]);
}

/// The session against the server core of `smtp::server`, in memory: what one writes the
/// other reads, whole. Recipients at `bad.example` are refused; bodies are collected.
fn converse(chunking: bool, txs: Vec<Transaction>) -> (Vec<Vec<u16>>, Vec<Vec<u8>>) {
    use crate::smtp::server::{Event, Server, ServerConfig};
    let mut server = Server::new(ServerConfig::default());
    let mut s = Session::new("mta.example", TlsPolicy::Disabled, Timeouts::default());
    s.set_chunking(chunking);
    let (mut to_client, mut to_server) = (Vec::new(), Vec::new());
    server.greeting(&mut to_client);
    let (mut done, mut bodies, mut body) = (Vec::new(), Vec::new(), Vec::new());
    let mut txs = txs.into_iter();
    for _ in 0..1000 {
        s.receive(&std::mem::take(&mut to_client));
        while let Some(a) = s.next_action() {
            match a {
                Action::Send(b) => to_server.extend_from_slice(&b),
                Action::Done(r) => done.push(codes(&r)),
                Action::Ready | Action::StartTls | Action::Close(_) => {}
            }
        }
        // Two in flight at most, as a worker keeps them.
        while s.is_ready() || s.can_pipeline() {
            let Some(tx) = txs.next() else { break };
            s.start(tx);
            while let Some(a) = s.next_action() {
                match a {
                    Action::Send(b) => to_server.extend_from_slice(&b),
                    Action::Done(r) => done.push(codes(&r)),
                    _ => {}
                }
            }
        }
        let mut used = 0;
        loop {
            let (n, event) = server.advance(&to_server[used..], &mut to_client);
            used += n;
            match event {
                Event::NeedMore | Event::Close => break,
                Event::Mail { .. } => server.reply(250, "2.1.0 ok", &mut to_client),
                Event::Rcpt { to, .. } if to.ends_with("@bad.example") => {
                    server.reply(550, "5.1.1 unknown", &mut to_client)
                }
                Event::Rcpt { .. } => server.reply(250, "2.1.5 ok", &mut to_client),
                Event::Body(b) => body.extend_from_slice(b),
                Event::MessageEnd => {
                    bodies.push(std::mem::take(&mut body));
                    server.reply(250, "2.0.0 queued", &mut to_client);
                }
                Event::MessageTooBig | Event::MessageRefused | Event::MessageAbandoned => {
                    body.clear()
                }
                Event::Auth { .. } => server.reply(535, "5.7.8 no", &mut to_client),
                Event::StartTls => unreachable!("not offered"),
            }
        }
        to_server.drain(..used);
        if to_client.is_empty() && s.is_ready() && txs.len() == 0 {
            break;
        }
    }
    (done, bodies)
}

#[test]
fn a_message_behind_one_refused_whole_is_delivered_with_bdat_as_with_data() {
    let txs = || {
        vec![
            tx(&["a@bad.example"], "one"),
            tx(&["b@x.test"], "two\n.dot\n"),
            tx(&["c@x.test", "d@bad.example"], ".three"),
        ]
    };
    for chunking in [true, false] {
        let (done, bodies) = converse(chunking, txs());
        assert_eq!(
            done,
            vec![vec![550], vec![250], vec![250, 550]],
            "{chunking}"
        );
        assert_eq!(
            bodies,
            [b"two\r\n.dot\r\n".to_vec(), b".three\r\n".to_vec()],
            "{chunking}"
        );
    }
}
