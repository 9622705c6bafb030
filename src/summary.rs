//! `spate queue summary`: what is queued, per domain, read straight from the queue segments.
//!
//! Reading the files works whether or not the engine runs: segments are append-only and every
//! record carries a CRC, so a concurrent reader sees at worst an unfinished tail, which it
//! skips exactly as recovery would. Until delivery exists, nothing is in flight or deferred,
//! and recipients are grouped by domain (the provider/site rollup needs MX resolution).

use crate::delivery_log::json_string;
use crate::queue::record::{RecipientPayload, SegmentHeader, RECORD_HEADER_BYTES};
use crate::queue::segment::{list_segments, scan_bytes};
use crate::queue::store::{EntryState, Replay};
use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainRow {
    pub domain: String,
    pub queued: u64,
    pub deferred: u64,
    pub in_flight: u64,
    /// When the oldest queued recipient of this domain was accepted.
    pub oldest_unix_ms: u64,
}

#[derive(Debug, Default)]
pub struct QueueSummary {
    /// Largest queue first.
    pub domains: Vec<DomainRow>,
    pub segments: usize,
    pub shards: usize,
}

impl QueueSummary {
    pub fn live_recipients(&self) -> u64 {
        self.domains.iter().map(|d| d.queued).sum()
    }

    pub fn to_text(&self, now_unix_ms: u64, engine_running: bool) -> String {
        let mut out = format!(
            "engine: {}; {} shards, {} segments\n",
            if engine_running { "running" } else { "stopped" },
            self.shards,
            self.segments
        );
        out.push_str(&format!(
            "{:<40} {:>10} {:>10} {:>10} {:>10}\n",
            "domain", "queued", "in_flight", "deferred", "oldest"
        ));
        for d in &self.domains {
            out.push_str(&format!(
                "{:<40} {:>10} {:>10} {:>10} {:>10}\n",
                d.domain,
                d.queued,
                d.in_flight,
                d.deferred,
                age_text(now_unix_ms.saturating_sub(d.oldest_unix_ms))
            ));
        }
        let total: u64 = self.live_recipients();
        out.push_str(&format!("{:<40} {:>10}\n", "total", total));
        out
    }

    pub fn to_json(&self, now_unix_ms: u64, engine_running: bool) -> String {
        let mut out = Vec::new();
        out.extend_from_slice(
            format!(
                "{{\"engine_running\":{engine_running},\"shards\":{},\"segments\":{},\"queued\":{},\"domains\":[",
                self.shards,
                self.segments,
                self.live_recipients()
            )
            .as_bytes(),
        );
        for (i, d) in self.domains.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"domain\":");
            json_string(&d.domain, &mut out);
            out.extend_from_slice(
                format!(
                    ",\"queued\":{},\"in_flight\":{},\"deferred\":{},\"oldest_age_s\":{}}}",
                    d.queued,
                    d.in_flight,
                    d.deferred,
                    now_unix_ms.saturating_sub(d.oldest_unix_ms) / 1000
                )
                .as_bytes(),
            );
        }
        out.extend_from_slice(b"]}");
        String::from_utf8(out).expect("JSON is UTF-8")
    }
}

fn age_text(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, s / 60 % 60),
        _ => format!("{}d{:02}h", s / 86_400, s / 3600 % 24),
    }
}

/// One shard's queue as read from its files: the rebuilt index and the mapped segments.
pub struct ShardView {
    pub replay: Replay,
    /// (base sequence number, mapped segment), oldest first.
    pub segments: Vec<(u64, memmap2::Mmap)>,
}

impl ShardView {
    /// The live recipients' addresses, oldest first.
    pub fn live_recipients(&self) -> impl Iterator<Item = &str> + '_ {
        self.replay.index.live_entries().filter_map(|(seq, e)| {
            let i = self.segments.partition_point(|(base, _)| *base <= seq);
            let (_, map) = self.segments.get(i.checked_sub(1)?)?;
            let at = e.offset as usize + RECORD_HEADER_BYTES;
            let frame_len =
                u32::from_le_bytes(map.get(e.offset as usize..)?.get(..4)?.try_into().ok()?);
            let payload = map.get(at..at + frame_len as usize)?;
            RecipientPayload::decode_recipient(payload)
                .ok()
                .map(|(_, r)| r)
        })
    }
}

/// Reads each shard's queue under `data_dir` without modifying anything.
pub fn read_shards(data_dir: &Path) -> io::Result<Vec<ShardView>> {
    let mut shards = Vec::new();
    let entries = match std::fs::read_dir(data_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(shards),
        Err(e) => return Err(e),
    };
    let mut dirs: Vec<_> = entries
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with("shard-"))
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let mut view = ShardView {
            replay: Replay::default(),
            segments: Vec::new(),
        };
        for path in list_segments(&dir)? {
            let file = File::open(&path)?;
            // SAFETY: read-only map of an append-only file; torn data fails its CRC.
            let map = unsafe { memmap2::Mmap::map(&file)? };
            let header = SegmentHeader::decode(&map).map_err(|why| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {why}", path.display()),
                )
            })?;
            if header.base_seq == crate::queue::segment::SPARE_BASE_SEQ {
                // A spare renamed into place whose header is not written yet (a rollover in
                // progress, or one a power loss interrupted): it holds no records.
                continue;
            }
            view.replay.begin_segment(header.base_seq, map.len());
            scan_bytes(&map, |offset, r| view.replay.record(&map, offset, r));
            if let Some((at, why)) = &view.replay.damage {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {why} (byte {at})", path.display()),
                ));
            }
            view.segments.push((header.base_seq, map));
        }
        shards.push(view);
    }
    Ok(shards)
}

/// Reads every shard's queue under `data_dir` without modifying anything.
pub fn read_queue(data_dir: &Path) -> io::Result<QueueSummary> {
    let mut rows: BTreeMap<String, DomainRow> = BTreeMap::new();
    let mut summary = QueueSummary::default();
    for view in read_shards(data_dir)? {
        summary.shards += 1;
        summary.segments += view.segments.len();
        let index = &view.replay.index;
        for (_, e) in index.live_entries() {
            let domain = &index.domain_names[e.domain as usize];
            let row = rows.entry(domain.to_string()).or_insert_with(|| DomainRow {
                domain: domain.to_string(),
                oldest_unix_ms: u64::MAX,
                ..Default::default()
            });
            row.queued += 1;
            if e.state == EntryState::Deferred {
                row.deferred += 1;
            }
            let created = index
                .messages
                .get(&e.message_seq)
                .map_or(0, |m| m.created_unix_ms);
            row.oldest_unix_ms = row.oldest_unix_ms.min(created);
        }
    }
    let mut domains: Vec<DomainRow> = rows.into_values().collect();
    domains.sort_by(|a, b| b.queued.cmp(&a.queued).then(a.domain.cmp(&b.domain)));
    summary.domains = domains;
    Ok(summary)
}
