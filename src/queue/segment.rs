//! One queue segment: a preallocated file, memory-mapped, holding a header and then records
//! appended back to back. Writes go into the map; durability comes from `fdatasync` on the
//! file (which on Linux writes back pages dirtied through a shared mapping), issued by the
//! store's group commit.

use super::record::{decode_frame, Frame, RecordRef, SegmentHeader, SEGMENT_HEADER_BYTES};
use memmap2::MmapMut;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub const SEGMENT_FILE_PREFIX: &str = "seg-";
/// Spares are hidden from `list_segments` until activated.
pub const SPARE_FILE_PREFIX: &str = ".spare-";
/// The base sequence number in a spare's header: no real segment can start there.
pub const SPARE_BASE_SEQ: u64 = u64::MAX;
pub const SEGMENT_FILE_SUFFIX: &str = ".q";

pub struct Segment {
    pub path: PathBuf,
    pub header: SegmentHeader,
    file: File,
    map: MmapMut,
    /// Where the next record goes.
    pub write_offset: usize,
}

/// What a scan of a segment found.
pub struct ScanEnd {
    /// End of the last valid record.
    pub valid_end: usize,
    /// Why the scan stopped before the zeroed end, if it did.
    pub invalid: Option<(usize, &'static str)>,
}

pub fn segment_file_name(base_seq: u64) -> String {
    format!("{SEGMENT_FILE_PREFIX}{base_seq:020}{SEGMENT_FILE_SUFFIX}")
}

impl Segment {
    /// Creates a new segment: preallocates its space (so ENOSPC shows up now, not mid-batch),
    /// writes the header, and makes file and name durable before returning.
    pub fn create_durably(dir: &Path, header: SegmentHeader) -> io::Result<Segment> {
        let path = dir.join(segment_file_name(header.base_seq));
        let tmp = dir.join(format!(".{}.tmp", segment_file_name(header.base_seq)));
        let mut seg = Segment::preallocate(&tmp, header)?;
        std::fs::rename(&tmp, &path)?;
        sync_dir(dir)?;
        seg.path = path;
        Ok(seg)
    }

    /// Creates a spare segment ahead of need (on a blocking thread): preallocated, header
    /// marked spare, hidden name. `activate` turns it into the next segment without any
    /// blocking call.
    pub fn create_spare_durably(
        dir: &Path,
        shard: u32,
        number: u64,
        segment_bytes: u64,
    ) -> io::Result<Segment> {
        let header = SegmentHeader {
            shard,
            base_seq: SPARE_BASE_SEQ,
            created_unix_ms: 0,
            segment_bytes,
        };
        let path = dir.join(format!(
            "{SPARE_FILE_PREFIX}{number:020}{SEGMENT_FILE_SUFFIX}"
        ));
        let seg = Segment::preallocate(&path, header)?;
        sync_dir(dir)?;
        Ok(seg)
    }

    /// Creates `path` at its full size with `fallocate`, maps it, writes the header and
    /// fsyncs the file (not the directory: the callers name it).
    fn preallocate(path: &Path, header: SegmentHeader) -> io::Result<Segment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        // SAFETY: plain syscall on a valid descriptor.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, header.segment_bytes as i64) } != 0 {
            let err = io::Error::last_os_error();
            let _ = std::fs::remove_file(path);
            return Err(err);
        }
        // SAFETY: the file is ours, sized above, and only this shard maps it for writing.
        let mut map = unsafe { MmapMut::map_mut(&file)? };
        map[..SEGMENT_HEADER_BYTES].copy_from_slice(&header.encode());
        file.sync_all()?;
        Ok(Segment {
            path: path.to_path_buf(),
            header,
            file,
            map,
            write_offset: SEGMENT_HEADER_BYTES,
        })
    }

    /// Makes a spare the segment starting at `base_seq`: renames it into place and writes its
    /// header. Neither is durable yet: the caller's next sync must cover this file and the
    /// directory (a crash before that leaves a segment recovery discards as unfinished).
    pub fn activate(&mut self, dir: &Path, base_seq: u64, created_unix_ms: u64) -> io::Result<()> {
        assert_eq!(
            self.header.base_seq, SPARE_BASE_SEQ,
            "only a spare is activated"
        );
        let path = dir.join(segment_file_name(base_seq));
        std::fs::rename(&self.path, &path)?;
        self.path = path;
        self.header.base_seq = base_seq;
        self.header.created_unix_ms = created_unix_ms;
        self.map[..SEGMENT_HEADER_BYTES].copy_from_slice(&self.header.encode());
        Ok(())
    }

    /// Opens an existing segment for recovery (read-write: recovery may truncate its tail).
    pub fn open(path: &Path) -> io::Result<Segment> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        // SAFETY: as in `preallocate`; a segment is mapped by one shard only.
        let map = unsafe { MmapMut::map_mut(&file)? };
        let header = SegmentHeader::decode(&map).map_err(|why| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {why}", path.display()),
            )
        })?;
        Ok(Segment {
            path: path.to_path_buf(),
            header,
            file,
            map,
            write_offset: SEGMENT_HEADER_BYTES,
        })
    }

    pub fn capacity(&self) -> usize {
        self.map.len()
    }

    pub fn remaining(&self) -> usize {
        self.map.len() - self.write_offset
    }

    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The unwritten space, for appends; the caller advances `write_offset`.
    pub fn tail_mut(&mut self) -> &mut [u8] {
        let at = self.write_offset;
        &mut self.map[at..]
    }

    /// `fdatasync` on this thread (recovery, before the executor runs anything else).
    pub fn sync_data(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    /// A handle that can `fdatasync` this segment from a blocking thread.
    pub fn sync_handle(&self) -> io::Result<File> {
        self.file.try_clone()
    }

    /// One past the last non-zero byte at or after `from`, if any byte there is non-zero.
    pub fn nonzero_end(&self, from: usize) -> Option<usize> {
        let tail = &self.map[from..];
        tail.iter().rposition(|&b| b != 0).map(|i| from + i + 1)
    }

    /// Zeroes everything from `from` to the end of the segment that is not already zero and
    /// makes it durable, so later appends start on clean space and no stale bytes can ever be
    /// read as records. Returns how many bytes were cleared.
    pub fn truncate_tail_durably(&mut self, from: usize) -> io::Result<usize> {
        const PAGE: usize = 4096;
        let mut cleared = 0;
        let mut at = from;
        while at < self.map.len() {
            let end = ((at / PAGE) + 1) * PAGE;
            let end = end.min(self.map.len());
            let chunk = &mut self.map[at..end];
            if chunk.iter().any(|&b| b != 0) {
                chunk.fill(0);
                cleared += end - at;
            }
            at = end;
        }
        if cleared > 0 {
            self.file.sync_data()?;
        }
        self.write_offset = from;
        Ok(cleared)
    }
}

/// Walks the records of a whole segment's bytes (header included), calling `visit` for each
/// valid one, and says where and why it stopped.
pub fn scan_bytes<'a>(bytes: &'a [u8], mut visit: impl FnMut(usize, RecordRef<'a>)) -> ScanEnd {
    let mut at = SEGMENT_HEADER_BYTES;
    loop {
        match decode_frame(&bytes[at..]) {
            Frame::Record(r, n) => {
                visit(at, r);
                at += n;
            }
            Frame::End => {
                return ScanEnd {
                    valid_end: at,
                    invalid: None,
                }
            }
            Frame::Invalid(why) => {
                return ScanEnd {
                    valid_end: at,
                    invalid: Some((at, why)),
                }
            }
        }
    }
}

/// Removes segments whose creation a crash interrupted (`.seg-*.q.tmp`) and spares: neither
/// was ever in use, so they hold nothing.
pub fn remove_unfinished_segments(dir: &Path) -> io::Result<usize> {
    let mut removed = 0;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let unfinished = name.starts_with(".seg-") && name.ends_with(".tmp");
        if unfinished || name.starts_with(SPARE_FILE_PREFIX) {
            std::fs::remove_file(entry.path())?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Makes a directory entry change (create, rename, unlink) durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Segment files in `dir`, ordered by base sequence number.
pub fn list_segments(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(SEGMENT_FILE_PREFIX) && name.ends_with(SEGMENT_FILE_SUFFIX) {
            out.push(entry.path());
        }
    }
    out.sort();
    Ok(out)
}
