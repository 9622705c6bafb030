//! Startup checks for what the thread-per-core runtime needs from the kernel, run before any
//! executor starts so that a machine that cannot run Spate gets a clear message (exit 69)
//! instead of a panic deep inside the runtime.

use std::fmt;

/// io_uring memory each executor registers with the kernel (glommio's `io_memory`).
pub const IO_MEMORY_BYTES_PER_SHARD: usize = 2 << 20;
/// Locked memory each executor needs: its io_memory plus its rings, with headroom.
pub const MEMLOCK_BYTES_PER_SHARD: u64 = 4 << 20;

#[derive(Debug)]
pub struct PreflightError(pub String);

impl fmt::Display for PreflightError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What the checks found (for the startup line).
#[derive(Debug)]
pub struct Preflight {
    pub memlock_bytes: u64,
    pub raised: bool,
}

/// Checks io_uring and the memlock limit for `shards` executors; raises the soft limit (and
/// the hard one, when running as root) if needed.
pub fn check(shards: usize) -> Result<Preflight, PreflightError> {
    check_with_io_memory(shards, IO_MEMORY_BYTES_PER_SHARD)
}

/// As `check`, for executors that each register `io_memory_bytes` (`[engine] io_memory`):
/// each needs that plus what its rings take, as at the default.
pub fn check_with_io_memory(
    shards: usize,
    io_memory_bytes: usize,
) -> Result<Preflight, PreflightError> {
    probe_io_uring()?;
    let rings_bytes = MEMLOCK_BYTES_PER_SHARD - IO_MEMORY_BYTES_PER_SHARD as u64;
    let need = (io_memory_bytes as u64 + rings_bytes) * shards as u64;
    ensure_memlock(need)
}

fn probe_io_uring() -> Result<(), PreflightError> {
    // SAFETY: io_uring_setup with a zeroed params struct; the returned fd is closed at once.
    let mut params = [0u32; 30];
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        let hint = match err.raw_os_error() {
            Some(libc::ENOSYS) => "the kernel has no io_uring (Linux 5.8 or later is needed)",
            Some(libc::EPERM) => {
                "io_uring is disabled: set the sysctl kernel.io_uring_disabled=0, or allow io_uring_setup in the container's seccomp profile"
            }
            _ => "io_uring is unavailable",
        };
        return Err(PreflightError(format!(
            "runtime unavailable: {hint} ({err})"
        )));
    }
    // SAFETY: closing the descriptor the probe opened.
    unsafe { libc::close(fd as i32) };
    Ok(())
}

fn ensure_memlock(need: u64) -> Result<Preflight, PreflightError> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Err(PreflightError(format!(
            "runtime unavailable: cannot read the memlock limit: {}",
            std::io::Error::last_os_error()
        )));
    }
    let cur = lim.rlim_cur;
    if cur == libc::RLIM_INFINITY || cur >= need {
        return Ok(Preflight {
            memlock_bytes: cur,
            raised: false,
        });
    }
    let max_ok = lim.rlim_max == libc::RLIM_INFINITY || lim.rlim_max >= need;
    let wanted = libc::rlimit {
        rlim_cur: need,
        rlim_max: if max_ok { lim.rlim_max } else { need },
    };
    // SAFETY: setrlimit reads the struct we pass. Raising the hard limit needs root
    // (CAP_SYS_RESOURCE); otherwise this fails and we say what to change.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &wanted) } == 0 {
        return Ok(Preflight {
            memlock_bytes: need,
            raised: true,
        });
    }
    Err(PreflightError(format!(
        "runtime unavailable: the locked-memory limit is {} KiB and Spate needs {} KiB for its shards; \
         raise it with `ulimit -l {}` or LimitMEMLOCK= in the systemd unit, or run with fewer [engine] shards \
         or a smaller [engine] io_memory",
        cur / 1024,
        need / 1024,
        need / 1024
    )))
}

/// Descriptors kept out of the connection budget for the whole engine: queue segments and
/// their spares, the delivery log, spool files, the listeners to come, and slack.
pub const DESCRIPTORS_RESERVED: u64 = 1024;
/// Descriptors kept out per shard: its DNS lookups in flight (a socket each,
/// `schedule::RESOLVING_MAX`) and slack.
pub const DESCRIPTORS_RESERVED_PER_SHARD: u64 = crate::schedule::RESOLVING_MAX as u64 + 64;
/// Outbound connections one shard holds at most, whatever the descriptor limit.
pub const CONNECTIONS_PER_SHARD_MAX: u32 = 2_000;
/// Fewer connections per shard than this and the engine says the descriptor limit is low.
pub const CONNECTIONS_PER_SHARD_LOW: u32 = 100;

/// The connection budget: raises the soft open-files limit to the hard one, then gives each
/// of `shards` shards three quarters of the descriptors the reserves leave (at least one
/// connection each), so that connections can never take the descriptors the queue and the
/// log need (a long tail of sites once ran the engine out of them mid-fsync). Returns the
/// connections per shard and the limit it was computed from.
pub fn connections_per_shard(shards: usize) -> (u32, u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        lim.rlim_cur = 1024;
        lim.rlim_max = 1024;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass; raising the soft limit up to the hard
        // one needs no privilege.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    let limit = lim.rlim_cur;
    let shards = shards.max(1) as u64;
    let left = limit.saturating_sub(DESCRIPTORS_RESERVED + DESCRIPTORS_RESERVED_PER_SHARD * shards);
    let per_shard = (left / shards * 3 / 4).clamp(1, u64::from(CONNECTIONS_PER_SHARD_MAX));
    (per_shard as u32, limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_on_this_machine_and_leaves_enough_memlock() {
        let p = check(2).unwrap();
        assert!(p.memlock_bytes >= 2 * MEMLOCK_BYTES_PER_SHARD);
    }

    #[test]
    fn memlock_need_grows_with_io_memory() {
        // 6 MiB in all: within the common 8 MiB default, so this passes without root.
        let p = check_with_io_memory(1, 4 << 20).unwrap();
        assert!(p.memlock_bytes >= (4 << 20) + (2 << 20));
    }
}
