//! The per-user daily counts on disk, so a restart (or a crash) does not reset a user's
//! `daily_limit`. Each shard appends to a file of its own, `<data_dir>/gateway/counts-N.log`,
//! one line per user per group commit: `DAY COUNT "NAME"` (the UTC day number, the
//! recipients accepted, the user's name as a JSON string). The lines are synced by the group
//! commit that makes their messages durable (`CountsFile::append_durably`, run before the
//! queue's `fdatasync`), so a message that got its 250 is always counted; a crash between the
//! two syncs counts a message that got no 250 (never the reverse). At start every file is
//! read and today's lines summed; a torn last line is ignored. A file is rewritten with
//! today's totals only when it opens and when it passes `COUNTS_FILE_BYTES_MAX`.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Recipients accepted: (UTC day, user, count).
pub type DayCount = (u64, String, u64);

/// A counts file past this many bytes is rewritten with today's totals only.
pub const COUNTS_FILE_BYTES_MAX: u64 = 4 << 20;
/// The longest line read back (a user's name is bounded by the configuration, not by this).
const LINE_BYTES_MAX: usize = 4096;

/// The directory of the counts files under the data directory.
pub fn dir(data_dir: &Path) -> PathBuf {
    data_dir.join("gateway")
}

/// One line.
pub fn encode_line(day: u64, count: u64, user: &str, out: &mut Vec<u8>) {
    let name = serde_json::to_string(user).unwrap_or_else(|_| "\"\"".into());
    out.extend_from_slice(format!("{day} {count} {name}\n").as_bytes());
}

/// Sums the complete lines of `bytes` for `day`, per user. Lines that do not parse (a torn
/// tail after a crash, damage) are skipped.
pub fn sum_day(bytes: &[u8], day: u64, into: &mut HashMap<String, u64>) {
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let Some(line) = line.strip_suffix(b"\n") else {
            continue; // torn: the append never finished
        };
        if line.len() > LINE_BYTES_MAX {
            continue;
        }
        let Ok(line) = std::str::from_utf8(line) else {
            continue;
        };
        let mut parts = line.splitn(3, ' ');
        let (Some(d), Some(n), Some(name)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(d), Ok(n), Ok(name)) = (
            d.parse::<u64>(),
            n.parse::<u64>(),
            serde_json::from_str::<String>(name),
        ) else {
            continue;
        };
        if d == day {
            let sum = into.entry(name).or_insert(0);
            *sum = sum.saturating_add(n);
        }
    }
}

/// Today's counts from every shard's file in `dir` (none yet: nothing counted).
pub fn read_all(dir: &Path, day: u64) -> io::Result<HashMap<String, u64>> {
    let mut sums = HashMap::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(sums),
        Err(e) => return Err(with_path(dir, e)),
    };
    for entry in entries {
        let path = entry.map_err(|e| with_path(dir, e))?.path();
        if is_counts_file(&path) {
            let bytes = std::fs::read(&path).map_err(|e| with_path(&path, e))?;
            sum_day(&bytes, day, &mut sums);
        }
    }
    Ok(sums)
}

fn is_counts_file(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("counts-") && n.ends_with(".log"))
}

fn with_path(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// One shard's counts file, open for appending.
#[derive(Debug)]
pub struct CountsFile {
    path: PathBuf,
    file: File,
    bytes: u64,
    /// This shard's totals for `day`, what a rewrite keeps.
    day: u64,
    totals: HashMap<String, u64>,
}

impl CountsFile {
    /// Opens shard `shard`'s file in `dir`, rewritten with its lines for `day` only.
    pub fn open_durably(dir: &Path, shard: usize, day: u64) -> io::Result<CountsFile> {
        std::fs::create_dir_all(dir).map_err(|e| with_path(dir, e))?;
        let path = dir.join(format!("counts-{shard}.log"));
        let mut totals = HashMap::new();
        match std::fs::read(&path) {
            Ok(bytes) => sum_day(&bytes, day, &mut totals),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(with_path(&path, e)),
        }
        let (file, bytes) = rewrite_durably(&path, day, &totals)?;
        Ok(CountsFile {
            path,
            file,
            bytes,
            day,
            totals,
        })
    }

    /// Appends `counts` (UTC day, user, recipients accepted) and syncs the file.
    pub fn append_durably(&mut self, counts: &[DayCount]) -> io::Result<()> {
        let mut out = Vec::new();
        for (day, user, n) in counts {
            encode_line(*day, *n, user, &mut out);
            if *day > self.day {
                self.day = *day;
                self.totals.clear();
            }
            if *day == self.day {
                *self.totals.entry(user.clone()).or_insert(0) += n;
            }
        }
        if self.bytes + out.len() as u64 > COUNTS_FILE_BYTES_MAX {
            (self.file, self.bytes) = rewrite_durably(&self.path, self.day, &self.totals)?;
            return Ok(());
        }
        self.file
            .write_all(&out)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| with_path(&self.path, e))?;
        self.bytes += out.len() as u64;
        Ok(())
    }
}

/// Replaces the file at `path` with one line per user of `totals` for `day`: written beside
/// it, synced, renamed over it, and the directory synced. The file, open for appending, and
/// its length.
fn rewrite_durably(
    path: &Path,
    day: u64,
    totals: &HashMap<String, u64>,
) -> io::Result<(File, u64)> {
    let mut out = Vec::new();
    let mut users: Vec<_> = totals.iter().collect();
    users.sort();
    for (user, n) in users {
        encode_line(day, *n, user, &mut out);
    }
    let tmp = path.with_extension("log.tmp");
    let dir = path.parent().unwrap_or(Path::new("."));
    let written = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(&out)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()?;
        OpenOptions::new().append(true).open(path)
    })();
    let file = written.map_err(|e| with_path(path, e))?;
    Ok((file, out.len() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_round_trip_and_a_torn_or_foreign_line_is_skipped() {
        let mut bytes = Vec::new();
        encode_line(7, 3, "billing-app", &mut bytes);
        encode_line(7, 2, "we \"quote\" \n newlines", &mut bytes);
        encode_line(6, 100, "billing-app", &mut bytes);
        encode_line(7, 4, "billing-app", &mut bytes);
        bytes.extend_from_slice(b"garbage line\n7 x \"a\"\n");
        bytes.extend_from_slice(b"7 9 \"billing-app\""); // torn: no newline
        let mut sums = HashMap::new();
        sum_day(&bytes, 7, &mut sums);
        assert_eq!(sums["billing-app"], 7);
        assert_eq!(sums["we \"quote\" \n newlines"], 2);
        assert_eq!(sums.len(), 2);
    }

    #[test]
    fn a_file_reopened_keeps_its_day_and_every_shard_file_is_summed() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = CountsFile::open_durably(dir.path(), 0, 7).unwrap();
        a.append_durably(&[(6, "u".into(), 50)]).unwrap();
        a.append_durably(&[(7, "u".into(), 2), (7, "v".into(), 1)])
            .unwrap();
        a.append_durably(&[(7, "u".into(), 3)]).unwrap();
        let mut b = CountsFile::open_durably(dir.path(), 1, 7).unwrap();
        b.append_durably(&[(7, "u".into(), 10)]).unwrap();
        drop((a, b));
        let sums = read_all(dir.path(), 7).unwrap();
        assert_eq!(sums["u"], 15);
        assert_eq!(sums["v"], 1);
        // Reopening rewrites shard 0's file with its day's totals, losing nothing.
        let _a = CountsFile::open_durably(dir.path(), 0, 7).unwrap();
        let text = std::fs::read_to_string(dir.path().join("counts-0.log")).unwrap();
        assert_eq!(text, "7 5 \"u\"\n7 1 \"v\"\n");
        assert_eq!(read_all(dir.path(), 7).unwrap()["u"], 15);
        assert!(read_all(dir.path(), 8).unwrap().is_empty());
    }

    #[test]
    fn a_file_past_its_bound_is_rewritten_with_the_days_totals_only() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = CountsFile::open_durably(dir.path(), 0, 7).unwrap();
        f.append_durably(&[(7, "u".into(), 1)]).unwrap();
        // One append of more lines than the bound allows, half of them for a day gone by.
        // Each line is 8 octets (`7 1 "u"`): twice the bound in all.
        let lines = (COUNTS_FILE_BYTES_MAX / 4) as usize;
        let many: Vec<DayCount> = (0..lines)
            .map(|i| (6 + (i % 2) as u64, "u".to_string(), 1))
            .collect();
        f.append_durably(&many).unwrap();
        let path = dir.path().join("counts-0.log");
        let text = std::fs::read_to_string(&path).unwrap();
        let expected = format!("7 {} \"u\"\n", 1 + lines / 2);
        assert!(text == expected, "{} octets, not one line", text.len());
        // Appends go on after the rewrite, and nothing counted was lost.
        f.append_durably(&[(7, "u".into(), 2)]).unwrap();
        assert_eq!(read_all(dir.path(), 7).unwrap()["u"], 3 + lines as u64 / 2);
    }
}
