//! The transfer file: one message of a node's queue and some of its live recipients with
//! their retry state, as `spate drain` hands them to another node of the cluster (its spool
//! takes the file as `transfer-<id>.xfer`, `crate::intake` queues it). The records are the
//! queue's own (docs/queue-format.md), framed and checksummed the same way:
//!
//! `magic "SPATEXF1" | id u64 | source shard u32 | recipients u32 | source node str16 |
//! crc32c u32` (of the header's bytes before it), then
//! one Message record, then per recipient a Recipient record (its message sequence number
//! 0) followed, when it was tried before, by a Deferred Outcome record naming it (the
//! Recipient record's `seq`) with its attempts and the time before which it is not retried.
//!
//! Pure code: `TransferWriter` builds a file, `open` checks one whole (framing, checksums,
//! counts, every payload's shape) before anything is queued, and `Recipients` walks it.

use super::record::{
    decode_frame, encode_record, record_len, Frame, Kind, MessagePayload, OutcomePayload,
    OutcomeState, Reader, RecipientPayload, Writer, PAYLOAD_BYTES_MAX,
};

pub const TRANSFER_MAGIC: [u8; 8] = *b"SPATEXF1";
/// Set in every transfer's batch id: never a clock-made id (nanoseconds since 1970 stay
/// below it until 2116) nor a notification's (bit 63).
pub const TRANSFER_BATCH_BIT: u64 = 1 << 62;
/// A transfer holds the live recipients of one message whose sequence numbers fall in one
/// window of this many: what is in a transfer depends only on where its recipients are in
/// the queue, so a drain run again makes the same transfers (less the recipients already
/// final), with the same ids.
pub const TRANSFER_WINDOW: u64 = 1024;
pub const TRANSFER_RECIPIENTS_MAX: usize = TRANSFER_WINDOW as usize;
/// Bound on one recipient's record in a transfer (an intake recipient line is at most
/// 64 KiB; its values, encoded, stay below this).
pub const RECIPIENT_RECORD_BYTES_MAX: usize = 96 << 10;
/// Bound on a whole transfer file: header, the message record, the recipients' records
/// and their retry records.
pub const TRANSFER_BYTES_MAX: usize = 128
    + record_len(PAYLOAD_BYTES_MAX)
    + TRANSFER_RECIPIENTS_MAX
        * (record_len(RECIPIENT_RECORD_BYTES_MAX)
            + record_len(super::record::OUTCOME_PAYLOAD_BYTES));

/// The spool name of a transfer, from its id.
pub fn spool_name(id: u64) -> String {
    format!("transfer-{id:016x}.xfer")
}

/// The id a spool name carries, if it is a transfer's.
pub fn id_from_name(name: &str) -> Option<u64> {
    let hex = name.strip_prefix("transfer-")?.strip_suffix(".xfer")?;
    if hex.len() != 16 {
        return None;
    }
    u64::from_str_radix(hex, 16)
        .ok()
        .filter(|id| is_transfer(*id))
}

pub fn is_transfer(batch_id: u64) -> bool {
    batch_id & TRANSFER_BATCH_BIT != 0 && batch_id & (1 << 63) == 0
}

/// The id of the transfer of a message's recipients in sequence window `window`
/// (`seq / TRANSFER_WINDOW`), made from where they are: the same window of the same message
/// gets the same id when a drain is run again after it was cut short, so the receiving node
/// can tell it already has it. The message's batch id and creation time are in it too: a
/// node rebuilt under the same name, whose new queue numbers its records from the start
/// again, makes other ids.
pub fn transfer_id(
    node: &str,
    shard: u32,
    message_seq: u64,
    message_batch_id: u64,
    message_created_unix_ms: u64,
    window: u64,
) -> u64 {
    let mut key = Vec::with_capacity(node.len() + 48);
    key.extend_from_slice(node.as_bytes());
    key.push(0);
    key.extend_from_slice(&shard.to_le_bytes());
    key.extend_from_slice(&message_seq.to_le_bytes());
    key.extend_from_slice(&message_batch_id.to_le_bytes());
    key.extend_from_slice(&message_created_unix_ms.to_le_bytes());
    key.extend_from_slice(&window.to_le_bytes());
    let h = crate::hash::stable_hash(&key);
    TRANSFER_BATCH_BIT | (h & (TRANSFER_BATCH_BIT - 1))
}

/// Where a transfer comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header<'a> {
    pub id: u64,
    pub shard: u32,
    pub recipients: u32,
    pub node: &'a str,
}

/// A recipient's retry state as the sending node had it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Retry {
    pub attempts: u16,
    /// Not to be tried before this time (0: at once).
    pub due_unix_ms: u64,
}

/// Builds a transfer file.
pub struct TransferWriter {
    buf: Vec<u8>,
    count: u32,
    scratch: Vec<u8>,
}

const COUNT_AT: usize = 8 + 8 + 4;

impl TransferWriter {
    /// A transfer of `message` (a Message record's payload, as the queue holds it); its id
    /// is set by `finish`.
    pub fn new(node: &str, shard: u32, message: &[u8]) -> TransferWriter {
        let mut buf = Vec::with_capacity(64 + record_len(message.len()));
        buf.extend_from_slice(&TRANSFER_MAGIC);
        let mut w = Writer(&mut buf);
        w.u64(0);
        w.u32(shard);
        w.u32(0);
        w.str16(node);
        w.u32(0);
        let mut t = TransferWriter {
            buf,
            count: 0,
            scratch: Vec::new(),
        };
        t.record(0, Kind::Message, message);
        t
    }

    fn record(&mut self, seq: u64, kind: Kind, payload: &[u8]) {
        let at = self.buf.len();
        self.buf.resize(at + record_len(payload.len()), 0);
        encode_record(&mut self.buf[at..], seq, kind, payload);
    }

    /// Adds a recipient (its Recipient record's payload; the message sequence number in it
    /// is replaced by 0) and its retry state.
    pub fn push(&mut self, recipient_payload: &[u8], retry: Retry) {
        self.count += 1;
        let seq = u64::from(self.count);
        let mut payload = std::mem::take(&mut self.scratch);
        payload.clear();
        payload.extend_from_slice(&0u64.to_le_bytes());
        payload.extend_from_slice(recipient_payload.get(8..).unwrap_or_default());
        self.record(seq, Kind::Recipient, &payload);
        self.scratch = payload;
        if retry.attempts > 0 {
            let o = OutcomePayload {
                recipient_seq: seq,
                state: OutcomeState::Deferred,
                attempts: retry.attempts,
                due_unix_ms: retry.due_unix_ms,
                ts_unix_ms: 0,
            };
            self.record(seq, Kind::Outcome, &o.encode());
        }
    }

    pub fn len(&self) -> usize {
        self.count as usize
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn finish(mut self, id: u64) -> Vec<u8> {
        self.buf[8..16].copy_from_slice(&id.to_le_bytes());
        self.buf[COUNT_AT..COUNT_AT + 4].copy_from_slice(&self.count.to_le_bytes());
        let node_len = u16::from_le_bytes([self.buf[COUNT_AT + 4], self.buf[COUNT_AT + 5]]);
        let crc_at = COUNT_AT + 6 + usize::from(node_len);
        let crc = crc32c::crc32c(&self.buf[..crc_at]);
        self.buf[crc_at..crc_at + 4].copy_from_slice(&crc.to_le_bytes());
        self.buf
    }
}

/// One recipient of a transfer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRecipient<'a> {
    /// Its Recipient payload after the message sequence number (`Chunk::tails`' form).
    pub tail: &'a [u8],
    pub recipient: &'a str,
    pub values: Vec<&'a [u8]>,
    pub retry: Retry,
}

/// Checks a whole transfer and returns its header, its message and its recipients. Any
/// fault refuses the file: it came from a node of the cluster, so a fault means it was
/// damaged (or is not one), and the sending node keeps those recipients.
pub fn open(bytes: &[u8]) -> Result<(Header<'_>, MessagePayload<'_>, Recipients<'_>), String> {
    if bytes.len() > TRANSFER_BYTES_MAX {
        return Err(format!(
            "a transfer of {} bytes, over the {TRANSFER_BYTES_MAX}-byte bound",
            bytes.len()
        ));
    }
    let Some(rest) = bytes.strip_prefix(&TRANSFER_MAGIC) else {
        return Err("not a transfer (bad magic)".into());
    };
    let mut r = Reader::new(rest);
    let short = |e: super::record::PayloadError| format!("transfer header: {e}");
    let id = r.u64().map_err(short)?;
    let shard = r.u32().map_err(short)?;
    let recipients = r.u32().map_err(short)?;
    let node = r.str16().map_err(short)?;
    let crc = r.u32().map_err(short)?;
    let header_len = 8 + 8 + 4 + 4 + 2 + node.len();
    if crc32c::crc32c(&bytes[..header_len]) != crc {
        return Err("transfer header checksum mismatch".into());
    }
    if !is_transfer(id) {
        return Err(format!("transfer id {id:016x} lacks the transfer bit"));
    }
    if recipients == 0 || recipients as usize > TRANSFER_RECIPIENTS_MAX {
        return Err(format!(
            "a transfer of {recipients} recipients (1 to {TRANSFER_RECIPIENTS_MAX})"
        ));
    }
    let body = &bytes[header_len + 4..];
    let (message, after) = match decode_frame(body) {
        Frame::Record(rec, n) if rec.kind == Kind::Message => {
            let m = MessagePayload::decode(rec.payload)
                .map_err(|e| format!("transfer message record: {e}"))?;
            (m, &body[n..])
        }
        Frame::Record(..) => return Err("transfer: the first record is not a message".into()),
        Frame::End => return Err("transfer: no message record".into()),
        Frame::Invalid(why) => return Err(format!("transfer message record: {why}")),
    };
    let walk = Recipients {
        rest: after,
        names: message.var_names.len(),
        seen: 0,
    };
    // The whole file once, before anything is queued: a fault late in it refuses all of it.
    let mut check = walk.clone();
    let mut seen = 0u32;
    for item in &mut check {
        item?;
        seen += 1;
    }
    if seen != recipients {
        return Err(format!(
            "transfer: the header counts {recipients} recipients, the file holds {seen}"
        ));
    }
    let header = Header {
        id,
        shard,
        recipients,
        node,
    };
    Ok((header, message, walk))
}

/// The recipients of a transfer, in order (checked by `open`; the walk checks again).
#[derive(Debug, Clone)]
pub struct Recipients<'a> {
    rest: &'a [u8],
    names: usize,
    seen: u64,
}

impl<'a> Iterator for Recipients<'a> {
    type Item = Result<TransferRecipient<'a>, String>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let fault = |why: String| Some(Err(format!("transfer recipient {}: {why}", self.seen + 1)));
        let (rec, n) = match decode_frame(self.rest) {
            Frame::Record(rec, n) => (rec, n),
            Frame::End => return fault("zeroed bytes".into()),
            Frame::Invalid(why) => return fault(why.into()),
        };
        if rec.payload.len() > RECIPIENT_RECORD_BYTES_MAX {
            return fault(format!(
                "a record of {} bytes, over the {RECIPIENT_RECORD_BYTES_MAX}-byte bound",
                rec.payload.len()
            ));
        }
        if rec.kind != Kind::Recipient || rec.seq != self.seen + 1 {
            return fault(format!(
                "a {:?} record numbered {} where recipient {} was due",
                rec.kind,
                rec.seq,
                self.seen + 1
            ));
        }
        let p = match RecipientPayload::decode(rec.payload) {
            Ok(p) => p,
            Err(e) => return fault(e.to_string()),
        };
        if p.message_seq != 0 || p.values.len() != self.names {
            return fault(format!(
                "{} values for a message with {} names",
                p.values.len(),
                self.names
            ));
        }
        let mut rest = &self.rest[n..];
        let mut retry = Retry::default();
        if let Frame::Record(o, m) = decode_frame(rest) {
            if o.kind == Kind::Outcome {
                let Ok(o) = OutcomePayload::decode(o.payload) else {
                    return fault("a malformed retry record".into());
                };
                if o.state != OutcomeState::Deferred
                    || o.recipient_seq != rec.seq
                    || o.attempts == 0
                {
                    return fault("a retry record that is not this recipient's deferral".into());
                }
                retry = Retry {
                    attempts: o.attempts,
                    due_unix_ms: o.due_unix_ms,
                };
                rest = &rest[m..];
            }
        }
        self.rest = rest;
        self.seen += 1;
        Some(Ok(TransferRecipient {
            tail: &rec.payload[8..],
            recipient: p.recipient,
            values: p.values,
            retry,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message() -> Vec<u8> {
        let mut out = Vec::new();
        MessagePayload {
            batch_id: 7,
            created_unix_ms: 1_700_000_000_000,
            flags: 0,
            sender: "news@example.com",
            campaign: "spring",
            tenant: "",
            var_names: vec!["name"],
            body: b"Subject: hi {{name}}\r\n\r\nHello {{name}}\r\n",
            pool: "",
        }
        .encode(&mut out);
        out
    }

    fn recipient(to: &str, name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        RecipientPayload {
            message_seq: 99,
            recipient: to,
            values: vec![name.as_bytes()],
        }
        .encode(&mut out);
        out
    }

    fn two() -> Vec<u8> {
        let id = transfer_id("mta1", 0, 5, 7, 1_700_000_000_000, 0);
        let mut w = TransferWriter::new("mta1", 0, &message());
        w.push(&recipient("a@example.net", "Ann"), Retry::default());
        w.push(
            &recipient("b@example.org", "Bob"),
            Retry {
                attempts: 3,
                due_unix_ms: 1_700_000_600_000,
            },
        );
        w.finish(id)
    }

    #[test]
    fn a_transfer_reads_back_with_its_retry_state() {
        let bytes = two();
        let (h, m, rcpts) = open(&bytes).unwrap();
        assert_eq!((h.node, h.shard, h.recipients), ("mta1", 0, 2));
        assert!(is_transfer(h.id));
        assert_eq!(m.campaign, "spring");
        let all: Vec<_> = rcpts.map(Result::unwrap).collect();
        assert_eq!(all[0].recipient, "a@example.net");
        assert_eq!(all[0].retry, Retry::default());
        assert_eq!(all[1].recipient, "b@example.org");
        assert_eq!(all[1].values, vec![b"Bob".as_slice()]);
        assert_eq!(
            all[1].retry,
            Retry {
                attempts: 3,
                due_unix_ms: 1_700_000_600_000
            }
        );
        // The tail is what a chunk carries: it decodes after a message sequence number.
        let mut full = 42u64.to_le_bytes().to_vec();
        full.extend_from_slice(all[1].tail);
        assert_eq!(
            RecipientPayload::decode(&full).unwrap().recipient,
            "b@example.org"
        );
    }

    #[test]
    fn damage_anywhere_refuses_the_whole_file() {
        let bytes = two();
        for at in [3, 12, 40, bytes.len() / 2, bytes.len() - 3] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x41;
            assert!(open(&bad).is_err(), "flipped byte {at}");
        }
        assert!(open(&bytes[..bytes.len() - 10]).is_err());
        let mut longer = bytes.clone();
        longer.extend_from_slice(&bytes[bytes.len() - 60..]);
        assert!(open(&longer).is_err());
        let mut zeros = bytes.clone();
        zeros.extend_from_slice(&[0; 40]);
        assert!(open(&zeros).is_err(), "trailing zeroes");
    }

    #[test]
    fn ids_are_stable_and_names_carry_them() {
        let id = transfer_id("mta1", 1, 10, 7, 1_700_000_000_000, 3);
        assert_eq!(id, transfer_id("mta1", 1, 10, 7, 1_700_000_000_000, 3));
        assert_ne!(id, transfer_id("mta2", 1, 10, 7, 1_700_000_000_000, 3));
        assert_ne!(id, transfer_id("mta1", 1, 10, 7, 1_700_000_000_000, 4));
        assert_ne!(id, transfer_id("mta1", 1, 10, 8, 1_700_000_000_000, 3));
        assert_ne!(id, transfer_id("mta1", 1, 10, 7, 1_700_000_000_001, 3));
        assert_eq!(id_from_name(&spool_name(id)), Some(id));
        assert_eq!(id_from_name("transfer-0000000000000001.xfer"), None);
        assert_eq!(id_from_name("transfer-zz.xfer"), None);
        assert_eq!(id_from_name("batch.jsonl"), None);
    }
}
