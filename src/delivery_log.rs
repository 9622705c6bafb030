//! The delivery log of INTERFACE.md: `<log.dir>/deliveries.jsonl`, one JSON object per line.
//!
//! Each shard owns one writer. Lines are formatted into a buffer and written with one
//! `write(2)` of whole lines on an `O_APPEND` descriptor, so lines from different shards never
//! interleave within a line. `reopen` (on SIGHUP) follows a rename by logrotate.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

pub const LOG_FILE_NAME: &str = "deliveries.jsonl";
/// Buffered bytes that trigger a write; bounds memory and loss on a crash.
pub const BUFFER_BYTES_MAX: usize = 256 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Reception,
    Delivery,
    TransientFailure,
    Bounce,
    Expiration,
    Rejected,
    /// A check before sending failed with `warn` (`[checks]`); the campaign goes out. No
    /// recipient: the reason is in `response`.
    Check,
    /// Handed to another node of the cluster (`spate drain`), which carries on with it; the
    /// node is in `response`.
    Transferred,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Reception => "Reception",
            EventType::Delivery => "Delivery",
            EventType::TransientFailure => "TransientFailure",
            EventType::Bounce => "Bounce",
            EventType::Expiration => "Expiration",
            EventType::Rejected => "Rejected",
            EventType::Check => "Check",
            EventType::Transferred => "Transferred",
        }
    }
}

/// One event. Fields that do not apply to an event type are left empty and omitted.
#[derive(Debug, Clone, Default)]
pub struct LogRecord<'a> {
    pub ts_unix_ms: u64,
    pub event: Option<EventType>,
    pub recipient: &'a str,
    pub sender: &'a str,
    pub campaign: &'a str,
    pub tenant: &'a str,
    pub domain: &'a str,
    pub provider: &'a str,
    /// The egress source's address the attempt was sent from (with `[sources]`).
    pub source: &'a str,
    /// The throttle scope's key (`yahoo@mta1`), for the counts (`admin::counts`); not
    /// written. Empty: the `provider` is the scope.
    pub scope: &'a str,
    pub mx: &'a str,
    pub ip: &'a str,
    /// What TLS negotiated, e.g. `TLSv1_3 TLS13_AES_256_GCM_SHA384 certificate verified`.
    pub tls: &'a str,
    pub code: Option<u16>,
    pub enhanced: &'a str,
    pub response: &'a str,
    pub attempt: Option<u32>,
    pub message_id: &'a str,
    pub bounce_category: &'a str,
}

pub struct DeliveryLog {
    path: PathBuf,
    file: File,
    buf: Vec<u8>,
    /// Every record appended, counted (`/metrics`, the status page).
    pub counts: crate::admin::counts::LogCounts,
}

impl DeliveryLog {
    pub fn open(dir: &Path) -> io::Result<DeliveryLog> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join(LOG_FILE_NAME);
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        Ok(DeliveryLog {
            path,
            file,
            buf: Vec::with_capacity(BUFFER_BYTES_MAX + 4096),
            counts: Default::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Formats one record; writes the buffer once it is large.
    pub fn append(&mut self, r: &LogRecord<'_>) -> io::Result<()> {
        format_record(r, &mut self.buf);
        self.counts.add(r);
        if self.buf.len() >= BUFFER_BYTES_MAX {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes buffered lines (to the page cache; the log is not fsync'd, the queue is the
    /// durable record).
    pub fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.file.write_all(&self.buf)?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Flushes, then reopens the file by name (after logrotate renamed it).
    pub fn reopen(&mut self) -> io::Result<()> {
        self.flush()?;
        self.file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        Ok(())
    }
}

/// A crash in the middle of a write leaves a partial last line; records appended after it
/// would be glued to it. Cuts the file back to its last complete line, before any shard
/// writes. Returns how many bytes were cut.
pub fn repair_torn_tail(dir: &Path) -> io::Result<u64> {
    use std::io::{Read, Seek, SeekFrom};
    let path = dir.join(LOG_FILE_NAME);
    let mut file = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let len = file.metadata()?.len();
    // Records are far shorter than this; a tail longer than it without a newline is kept.
    const SCAN_BYTES_MAX: u64 = 1 << 20;
    let start = len.saturating_sub(SCAN_BYTES_MAX);
    let mut tail = Vec::with_capacity((len - start) as usize);
    file.seek(SeekFrom::Start(start))?;
    file.read_to_end(&mut tail)?;
    if tail.last().is_none_or(|&b| b == b'\n') {
        return Ok(0);
    }
    let keep = match tail.iter().rposition(|&b| b == b'\n') {
        Some(i) => start + i as u64 + 1,
        None if start == 0 => 0,
        None => return Ok(0),
    };
    file.set_len(keep)?;
    file.sync_all()?;
    Ok(len - keep)
}

impl Drop for DeliveryLog {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Appends one JSON line for `r` to `out`.
pub fn format_record(r: &LogRecord<'_>, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"ts\":\"");
    rfc3339_utc(r.ts_unix_ms, out);
    out.extend_from_slice(b"\",\"type\":\"");
    out.extend_from_slice(r.event.map_or("", EventType::as_str).as_bytes());
    out.push(b'"');
    field(out, "recipient", r.recipient, true);
    field(out, "sender", r.sender, true);
    field(out, "campaign", r.campaign, true);
    field(out, "tenant", r.tenant, false);
    field(out, "domain", r.domain, true);
    field(out, "provider", r.provider, false);
    field(out, "source", r.source, false);
    field(out, "mx", r.mx, false);
    field(out, "ip", r.ip, false);
    field(out, "tls", r.tls, false);
    if let Some(code) = r.code {
        out.extend_from_slice(format!(",\"code\":{code}").as_bytes());
    }
    field(out, "enhanced", r.enhanced, false);
    field(out, "response", r.response, false);
    if let Some(a) = r.attempt {
        out.extend_from_slice(format!(",\"attempt\":{a}").as_bytes());
    }
    field(out, "message_id", r.message_id, false);
    field(out, "bounce_category", r.bounce_category, false);
    out.extend_from_slice(b"}\n");
}

fn field(out: &mut Vec<u8>, name: &str, value: &str, always: bool) {
    if value.is_empty() && !always {
        return;
    }
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
    json_string(value, out);
}

/// Writes `s` as a JSON string literal.
pub fn json_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: Option<&[u8]> = match b {
            b'"' => Some(b"\\\""),
            b'\\' => Some(b"\\\\"),
            b'\n' => Some(b"\\n"),
            b'\r' => Some(b"\\r"),
            b'\t' => Some(b"\\t"),
            0..=0x1f | 0x7f => None,
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        match escape {
            Some(e) => out.extend_from_slice(e),
            None => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-29T15:44:14.123Z` (always three digits,
/// so the field has one width).
pub fn rfc3339_utc(unix_ms: u64, out: &mut Vec<u8>) {
    use std::io::Write;
    let t = utc(unix_ms);
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    );
}

/// Milliseconds since the Unix epoch as a UTC date and time (the `time` crate does the
/// calendar). Beyond year 9999, which no clock here reaches, the last representable instant.
pub fn utc(unix_ms: u64) -> time::OffsetDateTime {
    const MAX_MS: u64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999Z
    let nanos = i128::from(unix_ms.min(MAX_MS)) * 1_000_000;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_have_one_width_from_the_epoch_to_year_9999() {
        let at = |ms| {
            let mut out = Vec::new();
            rfc3339_utc(ms, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(at(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(1_795_967_054_123), "2026-11-29T15:44:14.123Z");
        assert_eq!(at(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(at(u64::MAX), "9999-12-31T23:59:59.999Z");
    }

    #[test]
    fn formats_a_parseable_line() {
        let mut out = Vec::new();
        format_record(
            &LogRecord {
                ts_unix_ms: 1_795_967_054_123,
                event: Some(EventType::Rejected),
                recipient: "a\"b@example.com",
                sender: "s@acme.example",
                campaign: "c\r\n\u{1}",
                domain: "example.com",
                response: "line 3: bad",
                ..Default::default()
            },
            &mut out,
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with("}\n"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["ts"], "2026-11-29T15:44:14.123Z");
        assert_eq!(v["type"], "Rejected");
        assert_eq!(v["recipient"], "a\"b@example.com");
        assert_eq!(v["campaign"], "c\r\n\u{1}");
        assert_eq!(v["response"], "line 3: bad");
        assert!(v.get("provider").is_none());
    }

    #[test]
    fn a_torn_last_line_is_cut_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE_NAME);
        assert_eq!(repair_torn_tail(dir.path()).unwrap(), 0, "no file");
        std::fs::write(&path, "{\"a\":1}\n{\"b\":2}\n{\"c\":").unwrap();
        assert_eq!(repair_torn_tail(dir.path()).unwrap(), 5);
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n"
        );
        assert_eq!(
            repair_torn_tail(dir.path()).unwrap(),
            0,
            "a whole file is left alone"
        );
    }

    #[test]
    fn dates_match_known_values() {
        for (ms, want) in [
            (0, "1970-01-01T00:00:00.000Z"),
            (951_782_400_000, "2000-02-29T00:00:00.000Z"),
            (4_102_444_799_999, "2099-12-31T23:59:59.999Z"),
        ] {
            let mut out = Vec::new();
            rfc3339_utc(ms, &mut out);
            assert_eq!(String::from_utf8(out).unwrap(), want);
        }
    }
}
