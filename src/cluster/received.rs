//! The transfers this node has queued (`spate drain` from another node), by id, in
//! `<data_dir>/transfers-received.log`: a sending node that did not hear the answer sends a
//! transfer again, and this node then answers that it has it instead of queuing it twice.
//!
//! An id is written (and synced) by the intake that queued the transfer, after the group
//! commit of its last chunk and before its spool file is released: a crash between the two
//! replays the claimed file, whose chunks the queue de-duplicates; after the release the id
//! is here. Kept for `RECEIVED_KEEP` (a sender resends within minutes), which bounds the
//! file and the set: one line per transfer.

use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

pub const RECEIVED_FILE: &str = "transfers-received.log";
/// How long an id is remembered.
pub const RECEIVED_KEEP: Duration = Duration::from_secs(7 * 24 * 3600);

pub struct Received {
    path: PathBuf,
    /// Id to when it was queued (Unix ms).
    ids: Mutex<HashMap<u64, u64>>,
    /// The directory was synced after the file's creation (by this process).
    dir_synced: std::sync::atomic::AtomicBool,
}

impl Received {
    /// Reads the file, forgetting ids older than `RECEIVED_KEEP` (the file is rewritten
    /// without them). Lines that do not read are skipped: at worst a very late resend is
    /// queued again.
    pub fn open(data_dir: &Path, now_unix_ms: u64) -> io::Result<Received> {
        let path = data_dir.join(RECEIVED_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let cutoff = now_unix_ms.saturating_sub(RECEIVED_KEEP.as_millis() as u64);
        let mut ids = HashMap::new();
        let mut kept = String::new();
        let mut dropped = false;
        for line in text.lines() {
            let mut fields = line.split(' ');
            let id = fields.next().and_then(|h| u64::from_str_radix(h, 16).ok());
            let at = fields.next().and_then(|t| t.parse::<u64>().ok());
            match (id, at) {
                (Some(id), Some(at)) if at >= cutoff => {
                    ids.insert(id, at);
                    kept.push_str(line);
                    kept.push('\n');
                }
                _ => dropped = true,
            }
        }
        if dropped {
            let tmp = path.with_extension("tmp");
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(kept.as_bytes())?;
            f.sync_data()?;
            std::fs::rename(&tmp, &path)?;
            if let Some(dir) = path.parent() {
                crate::queue::segment::sync_dir(dir)?;
            }
        }
        Ok(Received {
            path,
            ids: Mutex::new(ids),
            dir_synced: std::sync::atomic::AtomicBool::new(false),
        })
    }

    pub fn contains(&self, id: u64) -> bool {
        self.lock().contains_key(&id)
    }

    /// Notes a transfer as queued, durably. Blocking (an fsync).
    pub fn record(&self, id: u64, node: &str, recipients: u64, now_unix_ms: u64) -> io::Result<()> {
        let line = format!("{id:016x} {now_unix_ms} {node} {recipients}\n");
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        f.write_all(line.as_bytes())?;
        f.sync_data()?;
        // The file's name, too, must outlive a power loss: its directory is synced once per
        // process (it may have just been created, by this call or another one).
        if !self.dir_synced.load(std::sync::atomic::Ordering::Acquire) {
            if let Some(dir) = self.path.parent() {
                crate::queue::segment::sync_dir(dir)?;
            }
            self.dir_synced
                .store(true, std::sync::atomic::Ordering::Release);
        }
        self.lock().insert(id, now_unix_ms);
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_survive_a_restart_and_old_ones_are_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let day = 24 * 3600 * 1000;
        let r = Received::open(dir.path(), 10 * day).unwrap();
        assert!(!r.contains(0x4000_0000_0000_0001));
        r.record(0x4000_0000_0000_0001, "mta1", 5, 10 * day)
            .unwrap();
        r.record(0x4000_0000_0000_0002, "mta1", 7, 12 * day)
            .unwrap();
        assert!(r.contains(0x4000_0000_0000_0001));
        let again = Received::open(dir.path(), 12 * day).unwrap();
        assert!(again.contains(0x4000_0000_0000_0001));
        assert!(again.contains(0x4000_0000_0000_0002));
        let later = Received::open(dir.path(), 18 * day).unwrap();
        assert!(!later.contains(0x4000_0000_0000_0001), "past the week");
        assert!(later.contains(0x4000_0000_0000_0002));
        let text = std::fs::read_to_string(dir.path().join(RECEIVED_FILE)).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
    }
}
