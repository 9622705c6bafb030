//! What a submission server adds to a message before queueing it (RFC 6409 8, RFC 5321
//! 4.4), sans I/O: a `Received:` trace field on top, a `Message-ID` and a `Date` where the
//! client left them out, and the `X-Campaign` header taken out (it names the campaign in the
//! delivery log and is not sent on).

use super::header::{field_start, header_end};
use crate::message::rfc5322_date;
use std::net::IpAddr;

/// The facts the `Received:` field records.
pub struct Trace<'a> {
    pub client_ip: IpAddr,
    /// The name the client gave in EHLO/HELO (printable ASCII only is kept).
    pub helo: &'a str,
    /// This server's name.
    pub host: &'a str,
    pub tls: bool,
    pub authenticated: bool,
    /// The queue id the client is told in the 250.
    pub id: &'a str,
}

/// The message as it is queued, and what was read from it.
#[derive(Debug, PartialEq, Eq)]
pub struct Prepared {
    pub message: Vec<u8>,
    /// The `X-Campaign` header's value (empty without one, or when it is not a usable label).
    pub campaign: String,
    pub message_id: String,
}

/// Longest campaign label taken from `X-Campaign` (as the spool's labels).
const CAMPAIGN_MAX: usize = crate::intake::LABEL_BYTES_MAX;

/// The message to queue: `message` (CRLF lines, as the strict server core hands it over) with
/// the trace field first and the missing fields added at the end of its header.
pub fn prepare(message: &[u8], trace: &Trace<'_>, now_unix_ms: u64) -> Prepared {
    // A message sent in BDAT chunks need not end in CRLF; one that does not gets one, so
    // a field added after its last header line cannot run into it.
    let owned;
    let message = if message.ends_with(b"\r\n") || message.is_empty() {
        message
    } else {
        owned = [message, b"\r\n"].concat();
        &owned[..]
    };
    let (head, body) = message.split_at(header_end(message).unwrap_or(message.len()));
    let campaign = field_value(head, "x-campaign")
        .filter(|c| c.len() <= CAMPAIGN_MAX && c.bytes().all(|b| b.is_ascii_graphic() || b == b' '))
        .unwrap_or_default();
    let head = without_field(head, "x-campaign");
    let date = rfc5322_date(now_unix_ms);
    let protocol = match (trace.tls, trace.authenticated) {
        (false, false) => "ESMTP",
        (true, false) => "ESMTPS",
        (false, true) => "ESMTPA",
        (true, true) => "ESMTPSA",
    };
    let helo: String = trace
        .helo
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(255)
        .collect();
    let mut out = Vec::with_capacity(message.len() + 512);
    out.extend_from_slice(
        format!(
            "Received: from {helo} ([{}])\r\n\tby {} (Spate) with {protocol} id {};\r\n\t{date}\r\n",
            trace.client_ip, trace.host, trace.id
        )
        .as_bytes(),
    );
    out.extend_from_slice(&head);
    let message_id = match field_value(&head, "message-id") {
        Some(id) => id,
        None => {
            let id = format!("<{}@{}>", trace.id, trace.host);
            out.extend_from_slice(format!("Message-ID: {id}\r\n").as_bytes());
            id
        }
    };
    if field_value(&head, "date").is_none() {
        out.extend_from_slice(format!("Date: {date}\r\n").as_bytes());
    }
    out.extend_from_slice(body);
    Prepared {
        message: out,
        campaign,
        message_id,
    }
}

/// The first value of the field `name`, unfolded and trimmed (decoded lossily: a header in
/// another charset is still found), or `None` without one.
fn field_value(head: &[u8], name: &str) -> Option<String> {
    let mut value: Option<Vec<u8>> = None;
    for line in head.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        match value.as_mut() {
            Some(v) if continuation => {
                v.push(b' ');
                v.extend_from_slice(line.trim_ascii());
            }
            Some(_) => break,
            None if continuation => {}
            None => value = field_start(line, name).map(|rest| rest.trim_ascii().to_vec()),
        }
    }
    value.map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// The header without every occurrence of the field `name` (its folded lines too).
fn without_field(head: &[u8], name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(head.len());
    let mut dropping = false;
    for line in head.split_inclusive(|b| *b == b'\n') {
        let continuation = line.first().is_some_and(|b| *b == b' ' || *b == b'\t');
        if !continuation {
            dropping = field_start(line, name).is_some();
        }
        if !dropping {
            out.extend_from_slice(line);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trace() -> Trace<'static> {
        Trace {
            client_ip: "192.0.2.7".parse().unwrap(),
            helo: "app01\r\nX-Injected: yes",
            host: "mta.example",
            tls: true,
            authenticated: true,
            id: "abc123",
        }
    }

    #[test]
    fn trace_id_and_date_are_added_and_x_campaign_taken_out() {
        let m = b"From: a@acme.example\r\nX-Campaign: spring\r\n  sale\r\nSubject: hi\r\n\r\nX-Campaign: body stays\r\n";
        let p = prepare(m, &trace(), 0);
        let text = String::from_utf8(p.message).unwrap();
        assert!(text.starts_with(
            "Received: from app01X-Injected:yes ([192.0.2.7])\r\n\tby mta.example (Spate) with ESMTPSA id abc123;\r\n\tThu, 01 Jan 1970 00:00:00 +0000\r\n"
        ), "{text}");
        assert!(
            text.contains("\r\nMessage-ID: <abc123@mta.example>\r\nDate: Thu, 01 Jan 1970"),
            "{text}"
        );
        assert!(
            !text[..text.find("\r\n\r\n").unwrap()].contains("X-Campaign"),
            "{text}"
        );
        assert!(text.ends_with("Subject: hi\r\nMessage-ID: <abc123@mta.example>\r\nDate: Thu, 01 Jan 1970 00:00:00 +0000\r\n\r\nX-Campaign: body stays\r\n"), "{text}");
        assert_eq!(p.campaign, "spring sale");
        assert_eq!(p.message_id, "<abc123@mta.example>");
    }

    #[test]
    fn odd_but_legal_headers_are_read_as_receivers_read_them() {
        // Latin-1 in the Subject, `X-Campaign :` with a space, no final CRLF (BDAT).
        let m = b"Subject: caf\xe9\r\nMessage-ID: <m@x.example>\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\nX-Campaign : fall\r\n\r\nbody";
        let p = prepare(m, &trace(), 0);
        assert_eq!(p.campaign, "fall");
        assert_eq!(p.message_id, "<m@x.example>");
        let text = String::from_utf8_lossy(&p.message).into_owned();
        assert_eq!(text.matches("Message-ID").count(), 1, "{text}");
        assert_eq!(text.matches("Date:").count(), 1, "{text}");
        assert!(!text.contains("X-Campaign"), "{text}");
        assert!(text.ends_with("\r\n\r\nbody\r\n"), "{text}");
        // A header with no body: the added fields start lines of their own.
        let p = prepare(b"Subject: x", &trace(), 0);
        let text = String::from_utf8(p.message).unwrap();
        assert!(
            text.contains("\r\nSubject: x\r\nMessage-ID: <abc123@mta.example>\r\nDate: "),
            "{text}"
        );
    }

    #[test]
    fn a_complete_message_only_gains_its_trace_field() {
        let m = b"From: a@b.example\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\nMessage-ID: <m1@b.example>\r\n\r\nhello\r\n";
        let p = prepare(m, &trace(), 0);
        let text = String::from_utf8(p.message).unwrap();
        assert!(text.ends_with(std::str::from_utf8(m).unwrap()), "{text}");
        assert_eq!(text.matches("Received:").count(), 1);
        assert_eq!(
            (p.campaign.as_str(), p.message_id.as_str()),
            ("", "<m1@b.example>")
        );
    }
}
