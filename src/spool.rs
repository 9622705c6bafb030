//! The spool directory of INTERFACE.md: producers write into `tmp/` and rename complete files
//! into `incoming/`; the engine claims them, and releases each one (deleted, or moved to
//! `done/`) only after every recipient in it is durably queued. Refused inputs go to `bad/`
//! with `NAME.err` beside them.
//!
//! Claiming is a `rename(2)` from `incoming/NAME` to `incoming/.claimed/<batch-id>.NAME`:
//! atomic, so of several shards racing for one file exactly one wins, and the claimed file
//! stays inside `incoming/` (hidden) until it is released. The batch id in the name survives a
//! crash, so a restarted engine replays the file under the same id and the queue refuses the
//! chunks it already committed.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub const CLAIMED_DIR: &str = ".claimed";
/// Suffixes tried for a name already taken in `bad/` or `done/`.
pub const NAME_SUFFIXES_MAX: usize = 100_000;
/// Largest input read. An input is read whole into memory (on a blocking thread) rather than
/// mapped, so a producer that truncates it after the rename cannot kill the engine with
/// SIGBUS; this bounds that memory. A larger batch is refused: split it.
pub const INPUT_BYTES_MAX: u64 = 1 << 30;
/// Reads of a claimed input that may fail (EIO, EMFILE, a file still changing) before it goes
/// to `bad/` with the last error.
pub const READ_ATTEMPTS_MAX: u32 = 5;

#[derive(Clone)]
pub struct Spool {
    pub dir: PathBuf,
    incoming: PathBuf,
    claimed: PathBuf,
    done: PathBuf,
    bad: PathBuf,
}

/// A file this engine owns until it releases it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub batch_id: u64,
    /// The name the producer gave it.
    pub name: String,
    pub path: PathBuf,
    /// Failed reads so far (in memory only: a restart tries afresh).
    pub read_attempts: u32,
}

/// Why a claimed input could not be read.
#[derive(Debug)]
pub enum ReadError {
    /// The input is wrong for good (a symbolic link, not a regular file, too large): to
    /// `bad/` with this reason.
    Refuse(String),
    /// Perhaps passing (EIO, EMFILE, the file changed while read): try again later.
    Retry(String),
}

/// Reads a claimed input whole, on the caller's (blocking) thread: never through a symbolic
/// link (the producer may have swapped the file for one after the rename), never anything but
/// a regular file (a FIFO would block), never more than `INPUT_BYTES_MAX`, and never a file
/// whose size changed while it was read. `Ok(None)` for an empty file.
pub fn read_claimed(path: &Path) -> Result<Option<Vec<u8>>, ReadError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => ReadError::Refuse("is a symbolic link".into()),
            // Opening a UNIX socket fails with ENXIO: nothing to read, ever.
            Some(libc::ENXIO) => ReadError::Refuse("is a socket, not a regular file".into()),
            _ => ReadError::Retry(e.to_string()),
        })?;
    let meta = file
        .metadata()
        .map_err(|e| ReadError::Retry(e.to_string()))?;
    let kind = meta.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(ReadError::Refuse(format!("is {what}")));
    }
    let size = meta.len();
    if size > INPUT_BYTES_MAX {
        return Err(ReadError::Refuse(format!(
            "is {size} bytes, over the {INPUT_BYTES_MAX}-byte input limit (split it)"
        )));
    }
    if size == 0 {
        return Ok(None);
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // One byte more than expected shows a file that grew.
    (&mut file)
        .take(size + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| ReadError::Retry(e.to_string()))?;
    let now = file
        .metadata()
        .map_err(|e| ReadError::Retry(e.to_string()))?
        .len();
    if bytes.len() as u64 != size || now != size {
        return Err(ReadError::Retry(format!(
            "changed while read ({size} bytes, then {} read, now {now}): producers must rename complete files into incoming/",
            bytes.len()
        )));
    }
    Ok(Some(bytes))
}

/// Names the engine never reads: hidden files and files still being written.
pub fn is_ignored(name: &str) -> bool {
    name.starts_with('.') || name.ends_with(".tmp")
}

impl Spool {
    /// Opens the spool, creating the folders it needs.
    pub fn open(dir: &Path) -> io::Result<Spool> {
        let spool = Spool {
            dir: dir.to_path_buf(),
            incoming: dir.join("incoming"),
            claimed: dir.join("incoming").join(CLAIMED_DIR),
            done: dir.join("done"),
            bad: dir.join("bad"),
        };
        for d in [
            &dir.join("tmp"),
            &spool.incoming,
            &spool.claimed,
            &spool.done,
            &spool.bad,
        ] {
            std::fs::create_dir_all(d)?;
        }
        Ok(spool)
    }

    pub fn incoming(&self) -> &Path {
        &self.incoming
    }

    /// Files waiting in `incoming/`, oldest name first.
    pub fn candidates(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.incoming)? {
            let entry = entry?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            // Anything but a directory (claimed/) is a candidate: a symbolic link, a FIFO or
            // a device is claimed like a file and then refused into bad/ with the reason by
            // `read_claimed`, instead of sitting in incoming/ unreported.
            if is_ignored(&name) || entry.file_type()?.is_dir() {
                continue;
            }
            names.push(name);
        }
        names.sort();
        Ok(names)
    }

    /// Claims `incoming/NAME` for batch `batch_id`; `Ok(None)` if another shard won the race.
    pub fn claim(&self, name: &str, batch_id: u64) -> io::Result<Option<Claimed>> {
        let path = self.claimed.join(format!("{batch_id:016x}.{name}"));
        match std::fs::rename(self.incoming.join(name), &path) {
            Ok(()) => Ok(Some(Claimed {
                batch_id,
                name: name.to_string(),
                path,
                read_attempts: 0,
            })),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes a claim's rename durable, so a power loss cannot bring the file back into
    /// `incoming/` to be claimed again under a new batch id. Blocking.
    pub fn sync_claim(&self) -> io::Result<()> {
        sync_dir(&self.incoming)?;
        sync_dir(&self.claimed)
    }

    /// Files claimed before a crash, to be replayed under their batch ids.
    pub fn leftover_claims(&self) -> io::Result<Vec<Claimed>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.claimed)? {
            let entry = entry?;
            let Ok(file_name) = entry.file_name().into_string() else {
                continue;
            };
            let Some((id, name)) = file_name.split_once('.') else {
                continue;
            };
            let Ok(batch_id) = u64::from_str_radix(id, 16) else {
                continue;
            };
            out.push(Claimed {
                batch_id,
                name: name.to_string(),
                path: entry.path(),
                read_attempts: 0,
            });
        }
        out.sort_by_key(|c| c.batch_id);
        Ok(out)
    }

    /// Releases a fully queued input: deleted, or moved to `done/` when `keep_done`; durable
    /// when this returns. Blocking.
    pub fn release_done(&self, c: &Claimed, keep_done: bool) -> io::Result<()> {
        if keep_done {
            move_unique(&c.path, &self.done, &c.name)?;
            sync_dir(&self.done)?;
        } else {
            std::fs::remove_file(&c.path)?;
        }
        sync_dir(&self.claimed)
    }

    /// Moves a refused input to `bad/` and writes the reason beside it as `NAME.err`. The
    /// reason file is created afresh (`O_EXCL`), so a symbolic link planted at that name is
    /// replaced, never written through.
    pub fn release_bad(&self, c: &Claimed, reason: &str) -> io::Result<PathBuf> {
        use std::io::Write;
        let target = move_unique(&c.path, &self.bad, &c.name)?;
        let mut err_path = target.clone().into_os_string();
        err_path.push(".err");
        match std::fs::remove_file(&err_path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut err = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&err_path)?;
        err.write_all(format!("{reason}\n").as_bytes())?;
        Ok(target)
    }
}

/// Moves `src` to `dir/name`, or `dir/name.N` if that is taken (producers reuse names).
/// `link(2)` fails if the target exists, so two shards can never pick the same name.
fn move_unique(src: &Path, dir: &Path, name: &str) -> io::Result<PathBuf> {
    for n in 0..NAME_SUFFIXES_MAX {
        let target = match n {
            0 => dir.join(name),
            _ => dir.join(format!("{name}.{n}")),
        };
        match std::fs::hard_link(src, &target) {
            Ok(()) => {
                std::fs::remove_file(src)?;
                return Ok(target);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "{}: {NAME_SUFFIXES_MAX} files named {name}* already",
        dir.display()
    )))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// A non-blocking inotify watch on `incoming/`: a hint to scan early, never the truth (the
/// periodic rescan is), so a lost or overflowed event costs latency, not mail.
pub struct IncomingWatch {
    fd: i32,
}

impl IncomingWatch {
    pub fn new(incoming: &Path) -> io::Result<IncomingWatch> {
        // SAFETY: plain syscalls; the descriptor is owned by the returned value.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let path = CString::new(incoming.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        let mask = libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE;
        // SAFETY: fd is valid and path is NUL-terminated.
        if unsafe { libc::inotify_add_watch(fd, path.as_ptr(), mask) } < 0 {
            let e = io::Error::last_os_error();
            // SAFETY: closing the descriptor we opened.
            unsafe { libc::close(fd) };
            return Err(e);
        }
        Ok(IncomingWatch { fd })
    }

    /// Drains pending events; true if anything arrived since the last call.
    pub fn fired(&self) -> bool {
        let mut buf = [0u8; 4096];
        let mut any = false;
        loop {
            // SAFETY: reading into a local buffer of the stated size.
            let n = unsafe { libc::read(self.fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                return any;
            }
            any = true;
        }
    }
}

impl Drop for IncomingWatch {
    fn drop(&mut self) {
        // SAFETY: closing the descriptor we own.
        unsafe { libc::close(self.fd) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claimed_inputs_are_read_whole_and_never_through_links_or_fifos() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("ok"), "hello").unwrap();
        assert_eq!(read_claimed(&d.join("ok")).unwrap().unwrap(), b"hello");
        std::fs::write(d.join("empty"), "").unwrap();
        assert!(read_claimed(&d.join("empty")).unwrap().is_none());
        std::fs::write(d.join("secret"), "do not send").unwrap();
        std::os::unix::fs::symlink(d.join("secret"), d.join("link")).unwrap();
        assert!(matches!(
            read_claimed(&d.join("link")),
            Err(ReadError::Refuse(why)) if why.contains("symbolic link")
        ));
        let fifo = std::ffi::CString::new(d.join("fifo").as_os_str().as_bytes()).unwrap();
        // SAFETY: mkfifo on a NUL-terminated path we own.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            read_claimed(&d.join("fifo")),
            Err(ReadError::Refuse(why)) if why.contains("FIFO")
        ));
        assert!(matches!(
            read_claimed(&d.join("missing")),
            Err(ReadError::Retry(_))
        ));
    }

    #[test]
    fn a_planted_err_link_is_replaced_not_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("bad/x.eml.err")).unwrap();
        std::fs::write(dir.path().join("incoming/x.eml"), "junk").unwrap();
        let c = spool.claim("x.eml", 7).unwrap().unwrap();
        let moved = spool.release_bad(&c, "no x-sender line").unwrap();
        assert_eq!(moved, dir.path().join("bad/x.eml"));
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious");
        let err = dir.path().join("bad/x.eml.err");
        assert!(!err.symlink_metadata().unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(err).unwrap(), "no x-sender line\n");
    }

    #[test]
    fn claim_is_exclusive_and_release_paths_work() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path()).unwrap();
        let watch = IncomingWatch::new(spool.incoming()).unwrap();
        assert!(!watch.fired());
        std::fs::write(dir.path().join("tmp/a.jsonl"), "x").unwrap();
        std::fs::rename(
            dir.path().join("tmp/a.jsonl"),
            spool.incoming().join("a.jsonl"),
        )
        .unwrap();
        std::fs::write(spool.incoming().join(".hidden"), "x").unwrap();
        std::fs::write(spool.incoming().join("b.jsonl.tmp"), "x").unwrap();
        assert!(watch.fired());
        assert_eq!(spool.candidates().unwrap(), vec!["a.jsonl"]);
        let c = spool.claim("a.jsonl", 0xabc).unwrap().unwrap();
        assert_eq!(spool.claim("a.jsonl", 0xabd).unwrap(), None);
        assert_eq!(spool.leftover_claims().unwrap(), vec![c.clone()]);
        let bad = spool.release_bad(&c, "line 1: nope").unwrap();
        assert_eq!(bad, dir.path().join("bad/a.jsonl"));
        assert_eq!(
            std::fs::read_to_string(dir.path().join("bad/a.jsonl.err")).unwrap(),
            "line 1: nope\n"
        );
        // Same name again: kept apart, not overwritten.
        std::fs::write(spool.incoming().join("a.jsonl"), "y").unwrap();
        let c = spool.claim("a.jsonl", 1).unwrap().unwrap();
        spool.release_bad(&c, "again").unwrap();
        assert!(dir.path().join("bad/a.jsonl.1.err").exists());
        std::fs::write(spool.incoming().join("k.eml"), "z").unwrap();
        let c = spool.claim("k.eml", 2).unwrap().unwrap();
        spool.release_done(&c, true).unwrap();
        assert!(dir.path().join("done/k.eml").exists());
        assert!(spool.leftover_claims().unwrap().is_empty());
    }
}
