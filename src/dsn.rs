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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Action {
    /// Bounced, or expired.
    #[default]
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

/// What happened to one recipient, as its per-recipient block reports it.
#[derive(Debug, Clone, Default)]
pub struct RecipientReport {
    pub recipient: String,
    /// ORCPT as the client sent it (`type;xtext`), or empty.
    pub orcpt: String,
    pub action: Action,
    /// The enhanced status code (`5.1.1`).
    pub status: String,
    /// The host that answered, if one did.
    pub remote_mta: String,
    /// The answer (`550 5.1.1 no such user`), if there was one.
    pub diagnostic: String,
    /// Why, when no server answered (DNS, connections, expiry).
    pub reason: String,
}

/// One notification: one message, one or more of its recipients.
#[derive(Debug, Clone)]
pub struct Report<'a> {
    /// This MTA's name (`smtp.helo_name`).
    pub reporting_mta: &'a str,
    /// Who gets the notification: the message's envelope sender.
    pub to: &'a str,
    /// ENVID as the client sent it (xtext), or empty.
    pub envid: &'a str,
    pub arrival_unix_ms: u64,
    /// At most `REPORT_RECIPIENTS_MAX`.
    pub recipients: &'a [RecipientReport],
    pub original: &'a [u8],
    /// RET=HDRS: return the header only.
    pub headers_only: bool,
    pub now_unix_ms: u64,
    /// Unique to this notification (its queue batch id): its Message-ID and boundary.
    pub unique: u64,
}

/// Recipients one notification reports at most; more make more notifications.
pub const REPORT_RECIPIENTS_MAX: usize = 1000;
/// ENVID (RFC 3461: 100 octets) and ORCPT (500) as reported, decoded.
const ENVID_BYTES_MAX: usize = 100;
const ORCPT_BYTES_MAX: usize = 500;

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

/// The header of a message (its blank line included), cut at the last line that ends
/// within `RETURNED_BYTES_MAX`.
fn returned_header(message: &[u8]) -> &[u8] {
    let end = memchr::memmem::find(message, b"\r\n\r\n").map_or(message.len(), |i| i + 4);
    if end <= RETURNED_BYTES_MAX {
        return &message[..end];
    }
    let within = &message[..RETURNED_BYTES_MAX];
    memchr::memmem::rfind(within, b"\r\n").map_or(&[][..], |i| &message[..i + 2])
}

/// The notification, as a message ready to queue (CRLF line ends), at most about
/// `RETURNED_BYTES_MAX` plus 1.5 KiB per recipient.
pub fn build(r: &Report<'_>) -> Vec<u8> {
    let host = printable(r.reporting_mta, 255);
    let (part, returned, returned_note) = if r.headers_only || r.original.len() > RETURNED_BYTES_MAX
    {
        let note = if r.headers_only {
            "Its header follows, as you asked."
        } else {
            "It was too big to return whole; its header follows."
        };
        ("text/rfc822-headers", returned_header(r.original), note)
    } else {
        ("message/rfc822", r.original, "The message follows.")
    };
    // A boundary that nothing returned contains.
    let mut boundary = format!("=_spate_{:x}", r.unique);
    while memchr::memmem::find(returned, boundary.as_bytes()).is_some() {
        boundary.push('_');
    }
    let failed = r.recipients.iter().any(|x| x.action == Action::Failed);
    let subject = if failed {
        "Undelivered Mail Returned to Sender"
    } else {
        "Delivery Status Notification (Relayed)"
    };
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
    line(&format!("Message-ID: <dsn.{:x}@{host}>", r.unique));
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
    for x in r.recipients {
        let said = match x.action {
            Action::Relayed => "was relayed to the mail system of",
            Action::Failed => "could not be delivered to",
        };
        line("");
        line(&format!(
            "Your message {said} {}.",
            printable(&x.recipient, 998)
        ));
        if !x.diagnostic.is_empty() {
            line(&format!(
                "The receiving mail system said: {}",
                printable(&x.diagnostic, DIAGNOSTIC_BYTES_MAX)
            ));
        } else if !x.reason.is_empty() {
            line(&format!(
                "Reason: {}",
                printable(&x.reason, DIAGNOSTIC_BYTES_MAX)
            ));
        }
    }
    line("");
    line(returned_note);
    line("");
    line(&format!("--{boundary}"));
    line("Content-Type: message/delivery-status");
    line("");
    line(&format!("Reporting-MTA: dns; {host}"));
    if let Some(envid) = decode_xtext(r.envid).filter(|e| !e.is_empty()) {
        line(&format!(
            "Original-Envelope-Id: {}",
            printable(&envid, ENVID_BYTES_MAX)
        ));
    }
    line(&format!(
        "Arrival-Date: {}",
        rfc5322_date(r.arrival_unix_ms)
    ));
    for x in r.recipients {
        line("");
        if let Some((kind, addr)) = x.orcpt.split_once(';') {
            let kind_ok = !kind.is_empty()
                && kind.len() <= 32
                && kind.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if let (Some(addr), true) = (decode_xtext(addr), kind_ok) {
                line(&format!(
                    "Original-Recipient: {kind}; {}",
                    printable(&addr, ORCPT_BYTES_MAX)
                ));
            }
        }
        line(&format!(
            "Final-Recipient: rfc822; {}",
            printable(&x.recipient, 998)
        ));
        line(match x.action {
            Action::Relayed => "Action: relayed",
            Action::Failed => "Action: failed",
        });
        line(&format!("Status: {}", printable(&x.status, 16)));
        if !x.remote_mta.is_empty() {
            line(&format!(
                "Remote-MTA: dns; {}",
                printable(&x.remote_mta, 255)
            ));
        }
        if !x.diagnostic.is_empty() {
            line(&format!(
                "Diagnostic-Code: smtp; {}",
                printable(&x.diagnostic, DIAGNOSTIC_BYTES_MAX)
            ));
        }
        line(&format!(
            "Last-Attempt-Date: {}",
            rfc5322_date(r.now_unix_ms)
        ));
    }
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

    fn gone() -> RecipientReport {
        RecipientReport {
            recipient: "gone@one.test".into(),
            orcpt: "rfc822;Gone+40one.test".into(),
            action: Action::Failed,
            status: "5.1.1".into(),
            remote_mta: "mx.one.test".into(),
            diagnostic: "550 5.1.1 no such user".into(),
            reason: String::new(),
        }
    }

    fn report<'a>(original: &'a [u8], recipients: &'a [RecipientReport]) -> Report<'a> {
        Report {
            reporting_mta: "mta.example",
            to: "news@acme.example",
            envid: "QQ314159",
            arrival_unix_ms: 1_700_000_000_000,
            recipients,
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
        let m = String::from_utf8(build(&report(original, &[gone()]))).unwrap();
        assert!(m.contains("\r\nTo: <news@acme.example>\r\n"), "{m}");
        assert!(
            m.contains("\r\nMessage-ID: <dsn.2a@mta.example>\r\n"),
            "{m}"
        );
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
        assert!(m.ends_with("\r\nbody\r\n--=_spate_2a--\r\n"), "{m}");
        assert!(m.lines().all(|l| l.len() <= 998));
    }

    #[test]
    fn several_recipients_of_one_message_share_one_report() {
        let mut relayed = gone();
        relayed.recipient = "ok@two.test".into();
        relayed.action = Action::Relayed;
        relayed.status = "2.0.0".into();
        relayed.diagnostic.clear();
        let both = [gone(), relayed];
        let m = String::from_utf8(build(&report(b"Subject: x\r\n\r\ny\r\n", &both))).unwrap();
        assert_eq!(m.matches("\r\nFinal-Recipient:").count(), 2);
        assert!(m.contains("Action: failed") && m.contains("Action: relayed"));
        assert!(m.contains("Subject: Undelivered Mail Returned to Sender"));
    }

    #[test]
    fn headers_only_when_asked_or_when_the_message_is_big_and_a_huge_header_is_cut() {
        let original = b"Subject: hi\r\n\r\nthe body\r\n";
        let mut r = report(original, &[]);
        r.headers_only = true;
        let m = String::from_utf8(build(&r)).unwrap();
        assert!(m.contains("Content-Type: text/rfc822-headers\r\n\r\nSubject: hi\r\n\r\n--"));
        assert!(!m.contains("the body"));
        let big = [
            b"Subject: big\r\n\r\n".as_slice(),
            &vec![b'x'; RETURNED_BYTES_MAX],
        ]
        .concat();
        let m = String::from_utf8(build(&report(&big, &[]))).unwrap();
        assert!(m.contains("too big to return whole"));
        assert!(m.len() < 4096);
        // A header of 16 MiB (lines within the limit, no blank line) is cut to the bound.
        let line = [b"X-Filler: ".as_slice(), &[b'y'; 900], b"\r\n"].concat();
        let huge: Vec<u8> = line.iter().copied().cycle().take(16 << 20).collect();
        let m = build(&report(&huge, &[]));
        assert!(m.len() < RETURNED_BYTES_MAX + 4096, "{}", m.len());
    }

    #[test]
    fn hostile_dsn_parameters_and_replies_add_no_line() {
        let original = b"Subject: --=_spate_2a\r\n\r\nx\r\n";
        let mut x = gone();
        x.orcpt = "rfc822;x+0D+0AFinal-Recipient:+20rfc822;+20y@z".into();
        x.diagnostic = "550 bad\r\nX-Injected: yes".into();
        let recipients = [x];
        let mut r = report(original, &recipients);
        r.envid = "a+0D+0ABcc:+20victim@x";
        let m = String::from_utf8(build(&r)).unwrap();
        assert!(!m.contains("Original-Envelope-Id"), "{m}");
        assert!(!m.contains("Original-Recipient"), "{m}");
        assert!(!m.contains("\r\nX-Injected"), "{m}");
        assert_eq!(m.matches("Final-Recipient:").count(), 1);
        // The boundary moved out of the way of the returned message's text.
        assert!(m.contains("boundary=\"=_spate_2a_\""), "{m}");
        // Long parameters are cut, so no line passes 998 octets.
        let long = "a".repeat(5000);
        let mut x = gone();
        x.orcpt = format!("rfc822;{long}");
        let recipients = [x];
        let mut r = report(original, &recipients);
        r.envid = &long;
        assert!(String::from_utf8(build(&r))
            .unwrap()
            .lines()
            .all(|l| l.len() <= 998));
    }

    #[test]
    fn xtext_decodes_and_refuses_what_is_not_printable() {
        assert_eq!(decode_xtext("a+2Bb+3Dc").as_deref(), Some("a+b=c"));
        assert_eq!(decode_xtext("x+0A"), None);
        assert_eq!(decode_xtext("x+4"), None);
        assert_eq!(decode_xtext("x+C3+A9"), None);
    }
}
