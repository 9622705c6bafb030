//! Delivery status notifications (RFC 3464), sans I/O: what a gateway client gets back when
//! a message it handed over bounces or expires, or, when it asked with NOTIFY=SUCCESS, is
//! relayed (Spate does not pass DSN requests on to the next hop, so "relayed" is what it can
//! truthfully report, RFC 3461 6.2.2). A notification is a `multipart/report;
//! report-type=delivery-status` message from `<>`: a text part for people, the
//! `message/delivery-status` part for programs, and the original message (RET=FULL, the
//! default, when it is at most `RETURNED_BYTES_MAX`) or its header (RET=HDRS, or a bigger
//! message). What the client sent with its DSN parameters (ENVID, ORCPT) is xtext; decoded,
//! it goes into the report only if it is printable ASCII, so no client can add a line to it.
//!
//! Which messages get one is the queue's business (`queue::record::MESSAGE_RETURN`); the
//! DSN parameters travel with each recipient as its values, under `VAR_NAMES`.

use crate::message::rfc5322_date;

/// The values a returnable message keeps per recipient: NOTIFY (empty: not given), ORCPT and
/// ENVID, as the client sent them.
pub const VAR_NAMES: [&str; 3] = ["dsn-notify", "dsn-orcpt", "dsn-envid"];
/// A bigger original message is returned as its header only.
pub const RETURNED_BYTES_MAX: usize = 64 << 10;
/// The longest remote reply quoted in a Diagnostic-Code field.
const DIAGNOSTIC_BYTES_MAX: usize = 900;

/// What happened to the recipient reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Bounced, or expired.
    Failed,
    /// Delivered to a next hop that was not asked for notifications.
    Relayed,
}

/// Whether the recipient's NOTIFY asks for a notification of `action` (without NOTIFY,
/// failures are reported, RFC 3461 5.1; NEVER means none).
pub fn wanted(notify: &str, action: Action) -> bool {
    if notify.is_empty() {
        return action == Action::Failed;
    }
    let has = |word: &str| notify.split(',').any(|w| w.eq_ignore_ascii_case(word));
    match action {
        Action::Failed => has("FAILURE"),
        Action::Relayed => has("SUCCESS"),
    }
}

/// One notification.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// This MTA's name (`smtp.helo_name`).
    pub reporting_mta: &'a str,
    /// Who gets the notification: the message's envelope sender.
    pub to: &'a str,
    /// ENVID as the client sent it (xtext), or empty.
    pub envid: &'a str,
    pub arrival_unix_ms: u64,
    pub recipient: &'a str,
    /// ORCPT as the client sent it (`type;xtext`), or empty.
    pub orcpt: &'a str,
    pub action: Action,
    /// The enhanced status code (`5.1.1`).
    pub status: &'a str,
    /// The host that answered, if one did.
    pub remote_mta: &'a str,
    /// The answer (`550 5.1.1 no such user`), if there was one.
    pub diagnostic: &'a str,
    /// Why, when no server answered (DNS, connections, expiry).
    pub reason: &'a str,
    pub original: &'a [u8],
    /// RET=HDRS: return the header only.
    pub headers_only: bool,
    pub now_unix_ms: u64,
    /// Makes the Message-ID unique (the bounced recipient's queue sequence number).
    pub unique: u64,
}

/// Decodes xtext (`+XX` escapes); `None` unless the result is printable ASCII.
pub fn decode_xtext(x: &str) -> Option<String> {
    let b = x.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'+' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).ok()?;
    s.bytes().all(|c| (b' '..=b'~').contains(&c)).then_some(s)
}

/// Printable ASCII of `s`, at most `max` bytes; anything else becomes `?`.
fn printable(s: &str, max: usize) -> String {
    s.chars()
        .map(|c| if (' '..='~').contains(&c) { c } else { '?' })
        .take(max)
        .collect()
}

/// Where a message's header ends (its blank line included), or its whole length.
fn header_len(message: &[u8]) -> usize {
    memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |i| i + 4)
}

/// The notification, as a message ready to queue (CRLF line ends).
pub fn build(r: &Report<'_>) -> Vec<u8> {
    let host = printable(r.reporting_mta, 255);
    let (part, returned, returned_note) = if r.headers_only || r.original.len() > RETURNED_BYTES_MAX
    {
        let note = if r.headers_only {
            "Its header follows, as you asked."
        } else {
            "It was too big to return whole; its header follows."
        };
        (
            "text/rfc822-headers",
            &r.original[..header_len(r.original)],
            note,
        )
    } else {
        ("message/rfc822", r.original, "The message follows.")
    };
    // A boundary that nothing returned contains.
    let mut boundary = format!("=_spate_{:x}_{:x}", r.unique, r.now_unix_ms);
    while memchr::memmem::find(returned, boundary.as_bytes()).is_some() {
        boundary.push('_');
    }
    let (subject, said) = match r.action {
        Action::Failed => (
            "Undelivered Mail Returned to Sender",
            "could not be delivered to",
        ),
        Action::Relayed => (
            "Delivery Status Notification (Relayed)",
            "was relayed to the mail system of",
        ),
    };
    let recipient = printable(r.recipient, 998);
    let mut m = String::new();
    let mut line = |s: &str| {
        m.push_str(s);
        m.push_str("\r\n");
    };
    line(&format!(
        "From: Mail Delivery System <MAILER-DAEMON@{host}>"
    ));
    line(&format!("To: <{}>", printable(r.to, 998)));
    line(&format!("Subject: {subject}"));
    line(&format!("Date: {}", rfc5322_date(r.now_unix_ms)));
    line(&format!(
        "Message-ID: <dsn.{:x}.{:x}@{host}>",
        r.now_unix_ms, r.unique
    ));
    line("Auto-Submitted: auto-replied");
    line("MIME-Version: 1.0");
    line(&format!(
        "Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\""
    ));
    line("");
    line("This is a MIME-encapsulated delivery status notification.");
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: text/plain; charset=us-ascii");
    line("");
    line(&format!("This is the mail system at {host}."));
    line("");
    line(&format!("Your message {said} {recipient}."));
    if !r.diagnostic.is_empty() {
        line("");
        line(&format!(
            "The receiving mail system said: {}",
            printable(r.diagnostic, DIAGNOSTIC_BYTES_MAX)
        ));
    } else if !r.reason.is_empty() {
        line("");
        line(&format!(
            "Reason: {}",
            printable(r.reason, DIAGNOSTIC_BYTES_MAX)
        ));
    }
    line("");
    line(returned_note);
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: message/delivery-status");
    line("");
    line(&format!("Reporting-MTA: dns; {host}"));
    if let Some(envid) = decode_xtext(r.envid).filter(|e| !e.is_empty()) {
        line(&format!("Original-Envelope-Id: {envid}"));
    }
    line(&format!(
        "Arrival-Date: {}",
        rfc5322_date(r.arrival_unix_ms)
    ));
    line("");
    if let Some((kind, addr)) = r.orcpt.split_once(';') {
        if let (Some(addr), true) = (
            decode_xtext(addr),
            kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'),
        ) {
            line(&format!("Original-Recipient: {kind}; {addr}"));
        }
    }
    line(&format!("Final-Recipient: rfc822; {recipient}"));
    line(match r.action {
        Action::Failed => "Action: failed",
        Action::Relayed => "Action: relayed",
    });
    line(&format!("Status: {}", printable(r.status, 16)));
    if !r.remote_mta.is_empty() {
        line(&format!(
            "Remote-MTA: dns; {}",
            printable(r.remote_mta, 255)
        ));
    }
    if !r.diagnostic.is_empty() {
        line(&format!(
            "Diagnostic-Code: smtp; {}",
            printable(r.diagnostic, DIAGNOSTIC_BYTES_MAX)
        ));
    }
    line(&format!(
        "Last-Attempt-Date: {}",
        rfc5322_date(r.now_unix_ms)
    ));
    line("");
    line(&format!("--{boundary}"));
    line(&format!("Content-Type: {part}"));
    if returned.iter().any(|b| *b >= 0x80) {
        line("Content-Transfer-Encoding: 8bit");
    }
    line("");
    let mut out = m.into_bytes();
    out.extend_from_slice(returned);
    if !returned.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report<'a>(original: &'a [u8]) -> Report<'a> {
        Report {
            reporting_mta: "mta.example",
            to: "news@acme.example",
            envid: "QQ314159",
            arrival_unix_ms: 1_700_000_000_000,
            recipient: "gone@one.test",
            orcpt: "rfc822;Gone+40one.test",
            action: Action::Failed,
            status: "5.1.1",
            remote_mta: "mx.one.test",
            diagnostic: "550 5.1.1 no such user",
            reason: "",
            original,
            headers_only: false,
            now_unix_ms: 1_700_000_100_000,
            unique: 42,
        }
    }

    #[test]
    fn notify_defaults_to_failures_and_never_means_none() {
        assert!(wanted("", Action::Failed));
        assert!(!wanted("", Action::Relayed));
        assert!(!wanted("NEVER", Action::Failed));
        assert!(wanted("success,failure", Action::Relayed));
        assert!(!wanted("DELAY", Action::Failed));
    }

    #[test]
    fn a_failure_report_has_its_three_parts_and_every_field() {
        let original = b"Subject: hi\r\nFrom: news@acme.example\r\n\r\nbody\r\n";
        let m = String::from_utf8(build(&report(original))).unwrap();
        assert!(m.contains("\r\nTo: <news@acme.example>\r\n"), "{m}");
        assert!(m.contains("Content-Type: multipart/report; report-type=delivery-status;"));
        for field in [
            "\r\nReporting-MTA: dns; mta.example\r\n",
            "\r\nOriginal-Envelope-Id: QQ314159\r\n",
            "\r\nOriginal-Recipient: rfc822; Gone@one.test\r\n",
            "\r\nFinal-Recipient: rfc822; gone@one.test\r\n",
            "\r\nAction: failed\r\n",
            "\r\nStatus: 5.1.1\r\n",
            "\r\nRemote-MTA: dns; mx.one.test\r\n",
            "\r\nDiagnostic-Code: smtp; 550 5.1.1 no such user\r\n",
            "\r\nContent-Type: message/rfc822\r\n\r\nSubject: hi\r\n",
        ] {
            assert!(m.contains(field), "{field:?} missing from {m}");
        }
        assert!(
            m.ends_with("\r\nbody\r\n--=_spate_2a_18bcfe6eea0--\r\n"),
            "{m}"
        );
        assert!(m.lines().all(|l| l.len() <= 998));
    }

    #[test]
    fn headers_only_when_asked_or_when_the_message_is_big() {
        let original = b"Subject: hi\r\n\r\nthe body\r\n";
        let mut r = report(original);
        r.headers_only = true;
        let m = String::from_utf8(build(&r)).unwrap();
        assert!(m.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: hi\r\n\r\n--"));
        assert!(!m.contains("the body"));
        let big = [
            b"Subject: big\r\n\r\n".as_slice(),
            &vec![b'x'; RETURNED_BYTES_MAX],
        ]
        .concat();
        let m = String::from_utf8(build(&report(&big))).unwrap();
        assert!(m.contains("too big to return whole"));
        assert!(m.len() < 4096);
    }

    #[test]
    fn hostile_dsn_parameters_and_replies_add_no_line() {
        let original = b"Subject: --=_spate_2a_18bcfe6eea0\r\n\r\nx\r\n";
        let mut r = report(original);
        r.envid = "a+0D+0ABcc:+20victim@x";
        r.orcpt = "rfc822;x+0D+0AFinal-Recipient:+20rfc822;+20y@z";
        r.diagnostic = "550 bad\r\nX-Injected: yes";
        let m = String::from_utf8(build(&r)).unwrap();
        assert!(!m.contains("Original-Envelope-Id"), "{m}");
        assert!(!m.contains("Original-Recipient"), "{m}");
        assert!(!m.contains("\r\nX-Injected"), "{m}");
        assert_eq!(m.matches("Final-Recipient:").count(), 1);
        // The boundary moved out of the way of the returned message's text.
        assert!(m.contains("boundary=\"=_spate_2a_18bcfe6eea0_\""), "{m}");
    }

    #[test]
    fn xtext_decodes_and_refuses_what_is_not_printable() {
        assert_eq!(decode_xtext("a+2Bb+3Dc").as_deref(), Some("a+b=c"));
        assert_eq!(decode_xtext("x+0A"), None);
        assert_eq!(decode_xtext("x+4"), None);
        assert_eq!(decode_xtext("x+C3+A9"), None);
    }
}
