//! Intake parsing: turns the bytes of one spool input into per-home-shard chunks of
//! pre-encoded recipient records, and per-line rejections. Sans-I/O: the engine feeds it a
//! memory-mapped file and drains `next_event`, sending chunks over bounded channels between
//! calls, so a million-recipient batch never sits in memory at once.
//!
//! Home shards: a batch's recipients go to the shards in blocks per domain: the `k`th
//! recipient at domain `d` of batch `b` lives on shard `(b + hash(d) + k / DOMAIN_BLOCK) %
//! shards`. A site with a few recipients has them all on one shard, which sends them over
//! connections of its own (`delivery::shares`), while a big domain still spreads over every
//! shard; small batches do not all land on shard 0. Every recipient of a pickup message
//! shares one home, so they can later share a transaction. The split is a pure function of the file and its batch id, which is what
//! lets a crashed intake be replayed with per-chunk de-duplication.

use crate::address::parse_address;
use crate::queue::record::{RecipientPayload, MESSAGE_VERBATIM};
use crate::queue::store::{Chunk, MessageSpec};
use crate::queue::transfer::Retry;
use crate::smtp::data::LINE_OCTETS_MAX;
use crate::template::Template;
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

/// Largest template or pickup message: also bounds the message record in a segment.
pub const MESSAGE_BYTES_MAX: usize = 16 << 20;
/// Largest header line of a batch (the JSON-escaped template makes it longer than the
/// template itself).
pub const HEADER_LINE_BYTES_MAX: usize = 2 * MESSAGE_BYTES_MAX;
/// Largest recipient line; bounds every recipient record.
pub const RECIPIENT_LINE_BYTES_MAX: usize = 64 << 10;
/// A chunk closes at this many recipients...
pub const CHUNK_RECIPIENTS_MAX: usize = 4096;
/// ...or at this many bytes of encoded recipients, whichever comes first.
pub const CHUNK_TAIL_BYTES_MAX: usize = 1 << 20;
/// Consecutive recipients of one domain in a batch that share a home shard.
pub const DOMAIN_BLOCK: u32 = 64;
/// Domains a parser counts recipients of; past it the counts start over (the split stays
/// even; a few sites straddle two homes).
pub const DOMAIN_COUNTS_MAX: usize = 100_000;

/// Recipients in each home's first chunk of an input. Chunk boundaries only depend on the
/// input, so a replay after a crash cuts the same chunks.
pub const FIRST_CHUNK_RECIPIENTS: usize = 256;
/// Campaign, tenant and sender are stored as short strings.
pub const LABEL_BYTES_MAX: usize = 255;
/// Pickup recipients per message.
pub const PICKUP_RECIPIENTS_MAX: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputKind {
    /// `NAME.jsonl`: header line plus one recipient per line.
    Batch,
    /// `NAME.eml`: PowerMTA-style pickup message.
    Pickup,
    /// `transfer-<id>.xfer`: queue records another node of the cluster hands over
    /// (`crate::queue::transfer`), through its admin API.
    Transfer,
}

/// The input kind from a spool file name, or `None` for an unknown extension.
pub fn input_kind(name: &str) -> Option<InputKind> {
    if name.ends_with(".jsonl") {
        Some(InputKind::Batch)
    } else if name.ends_with(".eml") {
        Some(InputKind::Pickup)
    } else if name.ends_with(".xfer") {
        Some(InputKind::Transfer)
    } else {
        None
    }
}

/// A whole input refused: it goes to `bad/` with this reason in `NAME.err`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    pub line: Option<usize>,
    pub reason: String,
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(n) => write!(f, "line {n}: {}", self.reason),
            None => f.write_str(&self.reason),
        }
    }
}

fn file_error(line: Option<usize>, reason: impl Into<String>) -> FileError {
    FileError {
        line,
        reason: reason.into(),
    }
}

/// One recipient refused at intake; the rest of its batch proceeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub line: usize,
    /// The address as given, or empty when the line could not be read.
    pub recipient: String,
    pub reason: String,
}

/// What `Parser::next_within` found.
#[derive(Debug)]
pub enum Step {
    Event(Event),
    /// Nothing yet; call again.
    Pause,
    /// The input is done.
    Done,
}

#[derive(Debug)]
pub enum Event {
    /// Recipients for `home` shard, ready to append.
    Chunk {
        home: usize,
        chunk: Chunk,
    },
    Rejected(Rejection),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchHeader<'a> {
    #[serde(borrow)]
    campaign: Cow<'a, str>,
    #[serde(borrow, default)]
    tenant: Option<Cow<'a, str>>,
    #[serde(borrow)]
    from: Cow<'a, str>,
    #[serde(borrow)]
    template: Cow<'a, str>,
    /// This campaign's unsubscribe addresses, over `[unsubscribe]`'s.
    #[serde(default)]
    unsubscribe: Option<UnsubscribeOverride>,
    /// The `[pools]` entry its mail leaves from (over the tenant's default).
    #[serde(borrow, default)]
    pool: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct UnsubscribeOverride {
    url: Option<String>,
    mailto: Option<String>,
}

/// Recipient lines may carry fields of their own (ids, metadata); only these are read.
#[derive(Deserialize)]
struct RecipientLine<'a> {
    #[serde(borrow)]
    to: Cow<'a, str>,
    #[serde(borrow, default)]
    vars: HashMap<Cow<'a, str>, serde_json::Value>,
}

/// Parses one input file into events.
pub struct Parser<'a> {
    bytes: &'a [u8],
    pos: usize,
    line_no: usize,
    kind: InputKind,
    template: Template,
    message: Arc<MessageSpec>,
    shards: usize,
    /// Recipients so far per domain (by a hash of its name), for the home shard choice.
    domain_counts: HashMap<u64, u32>,
    builders: Vec<ChunkBuilder>,
    /// Pickup recipients, parsed up front from the envelope lines.
    pickup: std::vec::IntoIter<Result<(usize, String), Rejection>>,
    /// A gateway message's values per recipient, in step with `pickup`.
    pickup_values: std::vec::IntoIter<Vec<String>>,
    values: Vec<String>,
    /// Suppression and today's UTC day, when recipients are checked here.
    suppression: Option<(crate::suppression::Reader, u32)>,
    /// The providers' sender rules (`compliance`): they make each recipient's unsubscribe
    /// token when the template has the placeholder.
    rules: crate::compliance::Rules,
    /// Checks that failed with `warn`, for the delivery log.
    warnings: Vec<String>,
    /// A transfer's recipients still to read.
    transfer: Option<crate::queue::transfer::Recipients<'a>>,
    /// The transfer recipient just accepted: its encoded tail and retry state.
    transferred: Option<(&'a [u8], Retry)>,
    /// The node a transfer comes from.
    source_node: String,
}

#[derive(Default)]
struct ChunkBuilder {
    next_chunk_no: u32,
    tails: Vec<u8>,
    ends: Vec<u32>,
    retry: Vec<Retry>,
}

impl<'a> Parser<'a> {
    /// Reads the header (batch) or envelope (pickup); a failure refuses the whole file. No
    /// sender rules: `open_with` applies them.
    pub fn open(
        bytes: &'a [u8],
        kind: InputKind,
        batch_id: u64,
        shards: usize,
        now_unix_ms: u64,
    ) -> Result<Parser<'a>, FileError> {
        let rules = crate::compliance::Rules::none();
        let egress = crate::config::Egress::default();
        Parser::open_with(bytes, kind, batch_id, shards, now_unix_ms, &rules, &egress)
    }

    /// `open`, with a campaign's template given the fields `rules` add and checked by
    /// them (a check set to `refuse` refuses the file), and its pool found in `egress` (a
    /// pool it names that is not there refuses the file).
    pub fn open_with(
        bytes: &'a [u8],
        kind: InputKind,
        batch_id: u64,
        shards: usize,
        now_unix_ms: u64,
        rules: &crate::compliance::Rules,
        egress: &crate::config::Egress,
    ) -> Result<Parser<'a>, FileError> {
        assert!(shards > 0);
        if bytes.is_empty() {
            return Err(file_error(None, "empty file"));
        }
        let mut parser = Parser {
            bytes,
            pos: 0,
            line_no: 0,
            kind,
            template: Template::verbatim(Vec::new()),
            message: Arc::new(MessageSpec {
                batch_id,
                created_unix_ms: now_unix_ms,
                flags: 0,
                sender: String::new(),
                campaign: String::new(),
                tenant: String::new(),
                var_names: Vec::new(),
                body: Vec::new(),
                pool: String::new(),
            }),
            shards,
            domain_counts: HashMap::new(),
            builders: (0..shards).map(|_| ChunkBuilder::default()).collect(),
            pickup: Vec::new().into_iter(),
            pickup_values: Vec::new().into_iter(),
            values: Vec::new(),
            suppression: None,
            rules: rules.clone(),
            warnings: Vec::new(),
            transfer: None,
            transferred: None,
            source_node: String::new(),
        };
        // Editors and export tools on Windows put a UTF-8 byte order mark first.
        if bytes.starts_with(b"\xEF\xBB\xBF") {
            parser.pos = 3;
        }
        match kind {
            InputKind::Batch => parser.open_batch(batch_id, now_unix_ms, egress)?,
            InputKind::Pickup => parser.open_pickup(batch_id, now_unix_ms, egress)?,
            InputKind::Transfer => parser.open_transfer(batch_id, egress)?,
        }
        Ok(parser)
    }

    /// A message handed over by a client of the SMTP gateway, queued as a pickup message
    /// would be (sent as it is, recipients sharing transactions per domain), its home the
    /// shard `batch_id` names. `recipients` were checked when the client gave them.
    /// `values`: for each recipient, the values of `message.var_names` (none, or one list
    /// per recipient).
    pub fn submission(
        message: MessageSpec,
        recipients: Vec<String>,
        values: Vec<Vec<String>>,
        shards: usize,
    ) -> Result<Parser<'static>, FileError> {
        assert!(shards > 0);
        if message.body.len() > MESSAGE_BYTES_MAX {
            return Err(file_error(
                None,
                format!("message is over the {MESSAGE_BYTES_MAX}-byte limit"),
            ));
        }
        if recipients.is_empty() || recipients.len() > PICKUP_RECIPIENTS_MAX {
            return Err(file_error(None, "no recipients, or too many"));
        }
        check_label("campaign", &message.campaign)?;
        check_label("tenant", &message.tenant)?;
        check_pickup_header(&message.body, 1)?;
        if !values.is_empty()
            && (values.len() != recipients.len()
                || values.iter().any(|v| v.len() != message.var_names.len()))
        {
            return Err(file_error(
                None,
                "recipient values do not match the message",
            ));
        }
        Ok(Parser {
            bytes: &[],
            pos: 0,
            line_no: 0,
            kind: InputKind::Pickup,
            template: Template::verbatim(Vec::new()),
            message: Arc::new(MessageSpec {
                flags: message.flags | MESSAGE_VERBATIM,
                ..message
            }),
            shards,
            domain_counts: HashMap::new(),
            builders: (0..shards).map(|_| ChunkBuilder::default()).collect(),
            pickup: recipients
                .into_iter()
                .map(|r| Ok((0, r)))
                .collect::<Vec<_>>()
                .into_iter(),
            pickup_values: values.into_iter(),
            values: Vec::new(),
            suppression: None,
            rules: crate::compliance::Rules::none(),
            warnings: Vec::new(),
            transfer: None,
            transferred: None,
            source_node: String::new(),
        })
    }

    /// The checks that failed with `warn` (`compliance`), each a reason.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Refuses the suppressed recipients from here on (`Rejected`, with the entry and its
    /// source as the reason), as of UTC day `today`.
    pub fn suppress(&mut self, reader: crate::suppression::Reader, today: u32) {
        self.suppression = Some((reader, today));
    }

    pub fn message(&self) -> &Arc<MessageSpec> {
        &self.message
    }

    /// The node a transfer comes from (empty for other inputs).
    pub fn source_node(&self) -> &str {
        &self.source_node
    }

    /// Next line without its line ending, or `None` at the end.
    fn next_line(&mut self) -> Option<&'a [u8]> {
        if self.pos >= self.bytes.len() {
            return None;
        }
        let rest = &self.bytes[self.pos..];
        let end = memchr::memchr(b'\n', rest).unwrap_or(rest.len());
        self.pos += (end + 1).min(rest.len());
        self.line_no += 1;
        let line = &rest[..end];
        Some(line.strip_suffix(b"\r").unwrap_or(line))
    }

    fn open_batch(
        &mut self,
        batch_id: u64,
        now_unix_ms: u64,
        egress: &crate::config::Egress,
    ) -> Result<(), FileError> {
        let line = self.next_line().unwrap_or_default();
        if line.len() > HEADER_LINE_BYTES_MAX {
            return Err(file_error(
                Some(1),
                format!(
                    "header line is {} bytes, over the {HEADER_LINE_BYTES_MAX}-byte limit",
                    line.len()
                ),
            ));
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return Err(file_error(Some(1), "header line is empty"));
        }
        let header: BatchHeader<'_> = serde_json::from_slice(line)
            .map_err(|e| file_error(Some(1), format!("header: {}", json_error_text(&e))))?;
        let sender = parse_address(&header.from)
            .map_err(|e| file_error(Some(1), format!("header \"from\": {e}")))?;
        check_label("campaign", &header.campaign)?;
        let tenant = header.tenant.unwrap_or_default();
        check_label("tenant", &tenant)?;
        let pool = egress
            .pool_for(header.pool.as_deref(), &tenant)
            .map_err(|e| file_error(Some(1), format!("header \"pool\": {e}")))?
            .unwrap_or_default()
            .to_string();
        if header.template.len() > MESSAGE_BYTES_MAX {
            return Err(file_error(
                Some(1),
                format!("template is over the {MESSAGE_BYTES_MAX}-byte limit"),
            ));
        }
        let overrides = header.unsubscribe.unwrap_or_default();
        let applied = self
            .rules
            .apply(
                header.template.as_bytes(),
                &crate::compliance::Unsubscribe {
                    url: overrides.url,
                    mailto: overrides.mailto,
                },
                &header.campaign,
                &tenant,
                &sender.to_addr_string(),
            )
            .map_err(|e| file_error(Some(1), e))?;
        self.warnings = applied.warnings;
        let template = Template::parse(applied.template).map_err(|e| file_error(Some(1), e.0))?;
        self.message = Arc::new(MessageSpec {
            batch_id,
            created_unix_ms: now_unix_ms,
            flags: 0,
            sender: sender.to_addr_string(),
            campaign: header.campaign.into_owned(),
            tenant: tenant.into_owned(),
            var_names: template.var_names().to_vec(),
            body: template.source().to_vec(),
            pool,
        });
        self.template = template;
        Ok(())
    }

    fn open_pickup(
        &mut self,
        batch_id: u64,
        now_unix_ms: u64,
        egress: &crate::config::Egress,
    ) -> Result<(), FileError> {
        let mut sender = None;
        let mut explicit_pool: Option<String> = None;
        let mut job = String::new();
        let mut receivers = Vec::new();
        let mut seen: HashMap<String, usize> = HashMap::new();
        loop {
            let start = self.pos;
            let Some(line) = self.next_line() else { break };
            // An envelope line is read as written or not at all: a lossy decode could turn
            // an address into a different one.
            let is_envelope = line.len() >= 2 && line[..2].eq_ignore_ascii_case(b"x-");
            let text = match std::str::from_utf8(line) {
                Ok(t) => t,
                Err(_) if is_envelope => {
                    return Err(file_error(
                        Some(self.line_no),
                        "envelope line is not valid UTF-8",
                    ))
                }
                // Not an envelope line: the message's own header starts here.
                Err(_) => {
                    self.pos = start;
                    self.line_no -= 1;
                    break;
                }
            };
            let Some((name, value)) = text.split_once(':') else {
                self.pos = start;
                self.line_no -= 1;
                break;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "x-sender" => {
                    let a = parse_address(value)
                        .map_err(|e| file_error(Some(self.line_no), format!("x-sender: {e}")))?;
                    sender = Some(a.to_addr_string());
                }
                "x-receiver" => {
                    if receivers.len() == PICKUP_RECIPIENTS_MAX {
                        return Err(file_error(
                            Some(self.line_no),
                            format!("more than {PICKUP_RECIPIENTS_MAX} x-receiver lines"),
                        ));
                    }
                    receivers.push(match parse_address(value) {
                        Ok(a) => {
                            let rcpt = a.to_addr_string();
                            match seen.get(&rcpt) {
                                // The same address twice would get the message twice, in one
                                // transaction.
                                Some(first) => Err(Rejection {
                                    line: self.line_no,
                                    recipient: rcpt.clone(),
                                    reason: format!("duplicate of the x-receiver on line {first}"),
                                }),
                                None => {
                                    seen.insert(rcpt.clone(), self.line_no);
                                    Ok((self.line_no, rcpt))
                                }
                            }
                        }
                        Err(e) => Err(Rejection {
                            line: self.line_no,
                            recipient: value.to_string(),
                            reason: e.0,
                        }),
                    });
                }
                "x-job" => {
                    check_label("x-job", value)?;
                    job = value.to_string();
                }
                // The pool to leave from (an extension); PowerMTA's virtual MTA, where it
                // names a pool (anything else is accepted and ignored, as before pools).
                "x-pool" => {
                    let p = egress
                        .pool_for(Some(value), "")
                        .map_err(|e| file_error(Some(self.line_no), format!("x-pool: {e}")))?;
                    explicit_pool = p.map(str::to_string);
                }
                "x-virtual-mta" => {
                    if explicit_pool.is_none() && egress.pools.contains_key(value) {
                        explicit_pool = Some(value.to_string());
                    }
                }
                "x-envid" => {}
                _ => {
                    self.pos = start;
                    self.line_no -= 1;
                    break;
                }
            }
        }
        // Tolerate blank lines between the envelope and the message's own header.
        while self.bytes[self.pos..].starts_with(b"\r\n")
            || self.bytes[self.pos..].starts_with(b"\n")
        {
            self.pos += if self.bytes[self.pos] == b'\r' { 2 } else { 1 };
            self.line_no += 1;
        }
        let sender = sender.ok_or_else(|| file_error(None, "no x-sender line"))?;
        if receivers.is_empty() {
            return Err(file_error(None, "no x-receiver line"));
        }
        let body = &self.bytes[self.pos..];
        if body.iter().all(u8::is_ascii_whitespace) {
            return Err(file_error(None, "no message after the x- envelope lines"));
        }
        if body.len() > MESSAGE_BYTES_MAX {
            return Err(file_error(
                None,
                format!("message is over the {MESSAGE_BYTES_MAX}-byte limit"),
            ));
        }
        check_pickup_header(body, self.line_no + 1)?;
        let pool = egress
            .pool_for(explicit_pool.as_deref(), "")
            .map_err(|e| file_error(None, e))?
            .unwrap_or_default()
            .to_string();
        self.message = Arc::new(MessageSpec {
            batch_id,
            created_unix_ms: now_unix_ms,
            flags: MESSAGE_VERBATIM,
            sender,
            campaign: job,
            tenant: String::new(),
            var_names: Vec::new(),
            body: body.to_vec(),
            pool,
        });
        self.pos = self.bytes.len();
        self.pickup = receivers.into_iter();
        Ok(())
    }

    /// The next chunk or rejection; `None` once the input is exhausted and flushed.
    pub fn next_event(&mut self) -> Option<Event> {
        loop {
            match self.next_within(u32::MAX) {
                Step::Event(e) => return Some(e),
                Step::Pause => continue,
                Step::Done => return None,
            }
        }
    }

    /// `next_event`, but pausing after `lines` recipients without an event, so the caller
    /// can hand its CPU to others between them (a chunk of a big batch parses for tens of
    /// milliseconds).
    pub fn next_within(&mut self, lines: u32) -> Step {
        for _ in 0..lines {
            // A pickup receiver's own line (its envelope was read up front).
            let mut pickup_line = None;
            let item = match self.kind {
                InputKind::Batch => match self.next_line() {
                    Some(line) if line.iter().all(u8::is_ascii_whitespace) => continue,
                    Some(line) => Some(self.batch_recipient(line)),
                    None => None,
                },
                InputKind::Transfer => match self.transfer.as_mut().and_then(Iterator::next) {
                    Some(Ok(r)) => Some(self.transfer_recipient(r)),
                    // `open` read the whole file: a fault now is not one it saw.
                    Some(Err(reason)) => {
                        self.transfer = None;
                        self.line_no += 1;
                        Some(Err(Rejection {
                            line: self.line_no,
                            recipient: String::new(),
                            reason,
                        }))
                    }
                    None => None,
                },
                InputKind::Pickup => {
                    if let Some(values) = self.pickup_values.next() {
                        self.values = values;
                    }
                    self.pickup.next().map(|r| {
                        r.map(|(line, a)| {
                            pickup_line = Some(line);
                            a
                        })
                    })
                }
            };
            let item = match (item, &mut self.suppression) {
                (Some(Ok(rcpt)), Some((reader, today))) => {
                    match reader.check(&rcpt, &self.message.tenant, *today) {
                        Some(hit) => Some(Err(Rejection {
                            line: pickup_line.unwrap_or(self.line_no),
                            recipient: rcpt,
                            reason: hit.to_string(),
                        })),
                        None => Some(Ok(rcpt)),
                    }
                }
                (item, _) => item,
            };
            match item {
                Some(Err(rejection)) => return Step::Event(Event::Rejected(rejection)),
                Some(Ok(encoded_home)) => {
                    if let Some(chunk) = self.close_if_full(encoded_home) {
                        return Step::Event(chunk);
                    }
                }
                None => return self.flush_next().map_or(Step::Done, Step::Event),
            }
        }
        Step::Pause
    }

    /// Validates a batch recipient line and encodes it into its home shard's builder.
    fn batch_recipient(&mut self, line: &[u8]) -> Result<String, Rejection> {
        let reject = |recipient: &str, reason: String| Rejection {
            line: self.line_no,
            recipient: recipient.to_string(),
            reason,
        };
        if line.len() > RECIPIENT_LINE_BYTES_MAX {
            return Err(reject(
                "",
                format!(
                    "recipient line is {} bytes, over the {RECIPIENT_LINE_BYTES_MAX}-byte limit",
                    line.len()
                ),
            ));
        }
        let parsed: RecipientLine<'_> =
            serde_json::from_slice(line).map_err(|e| reject("", json_error_text(&e)))?;
        let address = parse_address(&parsed.to).map_err(|e| reject(&parsed.to, e.0))?;
        let rcpt = address.to_addr_string();
        self.values.clear();
        for name in self.template.var_names() {
            let value = if name == "to" {
                rcpt.clone()
            } else if name == crate::compliance::TOKEN_VAR {
                let m = &self.message;
                self.rules.token(&rcpt, &m.tenant, &m.campaign)
            } else {
                match parsed.vars.get(name.as_str()) {
                    None | Some(serde_json::Value::Null) => String::new(),
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(other) => other.to_string(),
                }
            };
            self.values.push(value);
        }
        let refs: Vec<&str> = self.values.iter().map(String::as_str).collect();
        self.template
            .check_values(&refs)
            .map_err(|e| reject(&parsed.to, e.0))?;
        Ok(rcpt)
    }

    /// Encodes an accepted recipient into its home builder; returns a chunk if that filled it.
    fn close_if_full(&mut self, rcpt: String) -> Option<Event> {
        // A pickup's or gateway message's recipients share one home (and transactions);
        // a campaign's spread over the shards by domain.
        let one_home = self.message.flags & MESSAGE_VERBATIM != 0;
        let home = if one_home {
            (self.message.batch_id % self.shards as u64) as usize
        } else {
            let domain = rcpt.rsplit_once('@').map_or("", |(_, d)| d);
            let h = crate::hash::stable_hash(domain.as_bytes());
            if self.domain_counts.len() >= DOMAIN_COUNTS_MAX && !self.domain_counts.contains_key(&h)
            {
                self.domain_counts.clear();
            }
            let seen = self.domain_counts.entry(h).or_insert(0);
            let block = u64::from(*seen / DOMAIN_BLOCK);
            *seen += 1;
            let spread = self.message.batch_id.wrapping_add(h).wrapping_add(block);
            (spread % self.shards as u64) as usize
        };
        let transferred = self.transferred.take();
        let b = &mut self.builders[home];
        match transferred {
            Some((tail, retry)) => {
                b.tails.extend_from_slice(tail);
                b.retry.push(retry);
            }
            None => {
                let values: Vec<&[u8]> = self.values.iter().map(String::as_bytes).collect();
                RecipientPayload::encode_tail(&rcpt, &values, &mut b.tails);
            }
        }
        b.ends.push(b.tails.len() as u32);
        // A home's first chunk is small, so the first recipients are durable (and can be
        // sent) within a millisecond or two of parsing, not after a whole chunk is parsed.
        let max = if b.next_chunk_no == 0 {
            FIRST_CHUNK_RECIPIENTS
        } else {
            CHUNK_RECIPIENTS_MAX
        };
        if b.ends.len() >= max || b.tails.len() >= CHUNK_TAIL_BYTES_MAX {
            return Some(self.take_chunk(home));
        }
        None
    }

    fn take_chunk(&mut self, home: usize) -> Event {
        let b = &mut self.builders[home];
        let chunk = Chunk {
            batch_id: self.message.batch_id,
            chunk_no: b.next_chunk_no,
            message: Arc::clone(&self.message),
            tails: std::mem::take(&mut b.tails),
            ends: std::mem::take(&mut b.ends),
            retry: std::mem::take(&mut b.retry),
        };
        b.next_chunk_no += 1;
        Event::Chunk { home, chunk }
    }

    fn flush_next(&mut self) -> Option<Event> {
        let home = self.builders.iter().position(|b| !b.ends.is_empty())?;
        Some(self.take_chunk(home))
    }

    /// Recipient lines read so far (for progress reports).
    pub fn line_no(&self) -> usize {
        self.line_no
    }
}

fn check_label(field: &str, value: &str) -> Result<(), FileError> {
    if value.len() > LABEL_BYTES_MAX {
        return Err(file_error(
            Some(1),
            format!("{field} is longer than {LABEL_BYTES_MAX} bytes"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(file_error(
            Some(1),
            format!("{field} contains a control character"),
        ));
    }
    Ok(())
}

/// A pickup message is sent as it is, so a header line over the RFC 5322 limit cannot be
/// folded for it here, and the DATA writer would have to break it where it reaches the limit
/// (a fold, but one that changes the value). Such a message is refused instead, naming the
/// line (`first_line_no` is the message's first line in the file). Body lines are left to the
/// DATA writer, which breaks them as any mail system does.
fn check_pickup_header(message: &[u8], first_line_no: usize) -> Result<(), FileError> {
    for (i, line) in crate::smtp::data::message_lines(message).enumerate() {
        if line.is_empty() {
            return Ok(());
        }
        if line.len() > LINE_OCTETS_MAX {
            return Err(file_error(
                Some(first_line_no + i),
                format!(
                    "header line is {} octets, over the {LINE_OCTETS_MAX}-octet limit of RFC 5322 \
                     (pickup messages are sent as they are, not rewritten)",
                    line.len()
                ),
            ));
        }
    }
    Ok(())
}

/// serde_json's message without its "at line 1 column N" (the line is ours to name).
fn json_error_text(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let base = match text.rfind(" at line ") {
        Some(i) => &text[..i],
        None => &text,
    };
    format!("invalid JSON at column {}: {base}", e.column())
}

mod transfer;

#[cfg(test)]
mod tests;
