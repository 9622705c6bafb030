//! Message buffers kept for reuse, one pool per thread (so per shard: no locks, nothing
//! shared). A message is rendered into a buffer taken here and written to the socket from
//! that same buffer; once written, the connection gives it back. Without the pool every
//! message cost two allocations and frees of its own size, which glibc's allocator paid for
//! in coalescing (`malloc_consolidate`) as much as in the copies.
//!
//! A buffer that is not given back (a message dropped before it was written) is simply
//! freed, and one given back on another thread joins that thread's pool: the pool is an
//! optimisation, never an owner.

use std::cell::RefCell;

/// Bytes of idle buffers one thread keeps; beyond it, a buffer given back is freed. 16 MiB
/// holds about 1,500 buffers of a 10 KiB message, more than the connections a shard sends on
/// at once in the standard scenario.
pub const POOL_BYTES_MAX: usize = 16 << 20;

/// A buffer larger than this is freed, not kept: one huge message must not hold its memory
/// for the rest of the run.
pub const POOL_BUFFER_BYTES_MAX: usize = 1 << 20;

/// A buffer smaller than this is not worth keeping (commands, replies): rendering into it
/// would only grow it again.
pub const POOL_BUFFER_BYTES_MIN: usize = 4 << 10;

#[derive(Default)]
struct Pool {
    idle: Vec<Vec<u8>>,
    /// Sum of the idle buffers' capacities.
    bytes: usize,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool::default());
}

/// An empty buffer, one used before if this thread has one (the most recently given, its
/// memory most likely still in cache).
pub fn take() -> Vec<u8> {
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        let buf = p.idle.pop().unwrap_or_default();
        p.bytes -= buf.capacity();
        buf
    })
}

/// Gives a buffer back for reuse; kept only within the bounds above.
pub fn give(mut buf: Vec<u8>) {
    let capacity = buf.capacity();
    if !(POOL_BUFFER_BYTES_MIN..=POOL_BUFFER_BYTES_MAX).contains(&capacity) {
        return;
    }
    buf.clear();
    POOL.with(|p| {
        let mut p = p.borrow_mut();
        if p.bytes + capacity <= POOL_BYTES_MAX {
            p.bytes += capacity;
            p.idle.push(buf);
        }
    });
}

/// Bytes of idle buffers this thread keeps now.
pub fn idle_bytes() -> usize {
    POOL.with(|p| p.borrow().bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_given_back_is_taken_again_empty_and_the_pool_stays_within_its_bound() {
        // Each test runs on a thread of its own: this pool starts empty.
        assert_eq!(idle_bytes(), 0);
        let mut buf = Vec::with_capacity(10 << 10);
        buf.extend_from_slice(b"a message");
        let at = buf.as_ptr();
        give(buf);
        assert_eq!(idle_bytes(), 10 << 10);
        let again = take();
        assert!(again.is_empty());
        assert_eq!(again.as_ptr(), at, "the same memory, not a new allocation");
        assert_eq!(idle_bytes(), 0);

        // Too small, too large: freed, not kept.
        give(Vec::with_capacity(64));
        give(Vec::with_capacity(POOL_BUFFER_BYTES_MAX + 1));
        assert_eq!(idle_bytes(), 0);

        // Never more than the bound, however much is given back.
        for _ in 0..(POOL_BYTES_MAX / POOL_BUFFER_BYTES_MAX + 5) {
            give(Vec::with_capacity(POOL_BUFFER_BYTES_MAX));
        }
        assert!(idle_bytes() <= POOL_BYTES_MAX);
        assert!(idle_bytes() > POOL_BYTES_MAX - POOL_BUFFER_BYTES_MAX);
        // An empty pool still gives a buffer.
        while idle_bytes() > 0 {
            take();
        }
        assert_eq!(take().capacity(), 0);
    }
}
