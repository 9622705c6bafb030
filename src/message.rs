//! The message stage, sans I/O: from a queued message record and one recipient's values to
//! the bytes handed to the SMTP session. On the home shard, when credit arrives: the template
//! is parsed once per message record (`Rendering`, cached within `RENDERINGS_BYTES_MAX`),
//! then each recipient's message is rendered with the header fields a campaign template may
//! lack (Message-ID, Date). Pickup messages are verbatim: sent as they are.
//!
//! What `render` produces is the DATA content itself (line endings canonical, long lines
//! folded or broken, dot-stuffed, terminated), rendered in one pass through `smtp::data`'s
//! writer: the bytes sent, so a signature computed over it (without the stuffed dots, as
//! the receiver sees the message) covers exactly what goes on the wire.

use crate::bounded::WeightedFifo;
use crate::queue::record::{MessagePayload, MESSAGE_RETURN, MESSAGE_VERBATIM};
use crate::smtp::data::{Data, DataWriter};
use crate::template::{header_section_end, Template};
use std::rc::Rc;

/// Bytes of parsed templates and pickup bodies a home keeps for rendering, per shard. A
/// message's entry also goes as soon as it has no live recipient; beyond the bound the oldest
/// are parsed again from the queue when needed.
pub const RENDERINGS_BYTES_MAX: usize = 64 << 20;

/// Parsed message records by sequence number, within `RENDERINGS_BYTES_MAX`.
pub type Renderings = WeightedFifo<u64, Rc<Rendering>>;

/// What rendering a message needs, parsed once per message record.
pub struct Rendering {
    pub template: Template,
    /// The template's own Message-ID and whether it has a Date, read once, not per message.
    pub message_id: Option<String>,
    pub has_date: bool,
    pub batch_id: u64,
    pub sender: String,
    pub campaign: String,
    pub tenant: String,
    /// A pickup message: sent as it is, nothing added.
    pub verbatim: bool,
    /// Its failures go back to its sender (`queue::record::MESSAGE_RETURN`).
    pub returned: bool,
}

impl Rendering {
    /// Parses a message record's template (or takes a pickup body as it is).
    pub fn from_record(m: &MessagePayload<'_>) -> Result<Rendering, String> {
        let verbatim = m.flags & MESSAGE_VERBATIM != 0;
        let template = if verbatim {
            Template::verbatim(m.body.to_vec())
        } else {
            Template::parse(m.body.to_vec()).map_err(|e| e.0)?
        };
        Ok(Rendering {
            message_id: find_header(template.source(), "message-id"),
            has_date: find_header(template.source(), "date").is_some(),
            template,
            batch_id: m.batch_id,
            sender: m.sender.to_string(),
            campaign: m.campaign.to_string(),
            tenant: m.tenant.to_string(),
            verbatim,
            returned: m.flags & MESSAGE_RETURN != 0,
        })
    }

    /// What this rendering costs the cache.
    pub fn weight(&self) -> usize {
        self.template.source().len() + std::mem::size_of::<Rendering>()
    }

    /// Renders the message of recipient `seq` with its `values` straight into DATA form (in
    /// a buffer from `buffers`, which the connection gives back once it is written) and
    /// returns it with its Message-ID (empty if a verbatim message has none). A campaign
    /// message without a Message-ID gets `<batch.seq@helo_name>`, one without a Date gets
    /// `now_unix_ms`. `scratch` is any buffer kept between calls.
    pub fn render(
        &self,
        seq: u64,
        values: &[&[u8]],
        helo_name: &str,
        now_unix_ms: u64,
        scratch: &mut Vec<u8>,
    ) -> Result<(Data, String), String> {
        // A pickup or gateway message has no placeholders; what its recipients carry is
        // not for rendering (`dsn::VAR_NAMES`).
        let values = if self.verbatim { &[][..] } else { values };
        if values.len() != self.template.var_names().len() {
            return Err("values do not match the template".into());
        }
        let mut out = crate::buffers::take();
        out.reserve(self.template.source().len() + self.template.source().len() / 64 + 256);
        let mut w = DataWriter::new();
        let mut message_id = self.message_id.clone();
        if !self.verbatim {
            if message_id.is_none() {
                let id = format!("<{:x}.{seq}@{helo_name}>", self.batch_id);
                w.write(format!("Message-ID: {id}\r\n").as_bytes(), &mut out);
                message_id = Some(id);
            }
            if !self.has_date {
                w.write(b"Date: ", &mut out);
                w.write(rfc5322_date(now_unix_ms).as_bytes(), &mut out);
                w.write(b"\r\n", &mut out);
            }
        }
        self.template.render_data(values, &mut w, &mut out, scratch);
        // A Message-ID made of placeholders is known only once rendered.
        if message_id.as_deref().is_some_and(|m| m.contains("{{")) {
            message_id = find_header(&out, "message-id");
        }
        Ok((w.finish_data(out), message_id.unwrap_or_default()))
    }
}

/// The value of a header in a message's header section (first occurrence, unfolded).
pub fn find_header(message: &[u8], name: &str) -> Option<String> {
    let end = header_section_end(message).unwrap_or(message.len());
    let head = std::str::from_utf8(&message[..end]).ok()?;
    let mut lines = head
        .split('\n')
        .map(|l| l.trim_end_matches('\r'))
        .peekable();
    while let Some(line) = lines.next() {
        // A continuation line is part of the field before it, whatever it holds.
        if line.starts_with([' ', '\t']) {
            continue;
        }
        let Some((n, v)) = line.split_once(':') else {
            continue;
        };
        if n.trim().eq_ignore_ascii_case(name) {
            let mut value = v.trim().to_string();
            while let Some(next) = lines.peek() {
                if next.starts_with([' ', '\t']) {
                    if !value.is_empty() {
                        value.push(' ');
                    }
                    value.push_str(next.trim());
                    lines.next();
                } else {
                    break;
                }
            }
            return Some(value);
        }
    }
    None
}

/// RFC 5322 date in UTC, e.g. `Sun, 29 Nov 2026 15:44:14 +0000`.
pub fn rfc5322_date(unix_ms: u64) -> String {
    use time::format_description::well_known::Rfc2822;
    // RFC 2822's date is RFC 5322's; only years before 1900 cannot be written, and no clock
    // here is set that far back.
    crate::delivery_log::utc(unix_ms)
        .format(&Rfc2822)
        .unwrap_or_else(|_| "Mon, 01 Jan 1900 00:00:00 +0000".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_and_dates() {
        let m = b"From: a@b\r\nMessage-ID:\r\n <x@y>\r\nSubject: s\r\n\r\nMessage-ID: body";
        assert_eq!(find_header(m, "message-id").as_deref(), Some("<x@y>"));
        // A folded value that reads like a field is not one.
        let m = b"X-List: a\r\n date: not a date\r\nSubject: s\r\n\r\n";
        assert_eq!(find_header(m, "date"), None);
        assert_eq!(find_header(m, "date"), None);
        assert_eq!(
            rfc5322_date(1_795_967_054_123),
            "Sun, 29 Nov 2026 15:44:14 +0000"
        );
        assert_eq!(rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
    }

    fn record<'a>(flags: u8, body: &'a [u8], vars: &'a [&'a str]) -> MessagePayload<'a> {
        MessagePayload {
            batch_id: 0xab,
            created_unix_ms: 0,
            flags,
            sender: "bounces@acme.example",
            campaign: "c",
            tenant: "t",
            var_names: vars.to_vec(),
            body,
            pool: "",
        }
    }

    /// The Message-ID and the rendered message as DATA content.
    fn rendered(r: &Rendering, values: &[&[u8]]) -> (String, String) {
        let mut scratch = b"left over".to_vec();
        let (data, id) = r
            .render(7, values, "mta.acme.example", 0, &mut scratch)
            .unwrap();
        (id, String::from_utf8(data.into_bytes()).unwrap())
    }

    #[test]
    fn a_campaign_message_gets_the_message_id_and_date_it_lacks() {
        let r = Rendering::from_record(&record(0, b"To: {{ to }}\r\n\r\nHi\r\n", &["to"])).unwrap();
        let (id, text) = rendered(&r, &[b"a@x.test"]);
        assert_eq!(id, "<ab.7@mta.acme.example>");
        assert_eq!(
            text,
            "Message-ID: <ab.7@mta.acme.example>\r\nDate: Thu, 01 Jan 1970 00:00:00 +0000\r\nTo: a@x.test\r\n\r\nHi\r\n.\r\n"
        );
    }

    #[test]
    fn fields_the_template_has_are_kept_and_its_message_id_is_read_rendered() {
        let r = Rendering::from_record(&record(
            0,
            b"Message-ID: <{{ id }}@acme.example>\r\nDate: Tue, 1 Dec 2026 00:00:00 +0000\r\n\r\nx\r\n",
            &["id"],
        ))
        .unwrap();
        let (id, text) = rendered(&r, &[b"42"]);
        assert_eq!(id, "<42@acme.example>");
        assert!(
            text.starts_with("Message-ID: <42@acme.example>\r\nDate: Tue"),
            "{text}"
        );
        assert_eq!(text.matches("Date:").count(), 1);
        assert_eq!(
            r.render(7, &[], "h", 0, &mut Vec::new()),
            Err("values do not match the template".into())
        );
    }

    #[test]
    fn a_pickup_message_is_sent_as_it_is() {
        let body = b"Subject: {{ not a placeholder }}\r\n\r\nbody\n.dot\r\n";
        let r = Rendering::from_record(&record(MESSAGE_VERBATIM, body, &[])).unwrap();
        let (id, text) = rendered(&r, &[]);
        assert_eq!(id, "");
        assert_eq!(text.as_bytes(), Data::encode(body).bytes());
        assert!(text.ends_with("body\r\n..dot\r\n.\r\n"), "{text}");
    }
}
