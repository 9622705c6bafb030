//! A counting global allocator: `measure` runs a closure and returns the most bytes that
//! were allocated at once while it ran (beyond what was live when it started). Targets use it
//! to assert that a decoder allocates in proportion to its input, which libFuzzer's own
//! `-malloc_limit_mb` only catches once an allocation reaches gigabytes.
//!
//! The counters are per thread, so tests running in parallel do not count each other's
//! allocations (memory freed on another thread than it was allocated on only lowers a count,
//! which never raises a measured peak).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    // Const-initialised and without a destructor: touching them never allocates.
    static LIVE_BYTES: Cell<isize> = const { Cell::new(0) };
    static PEAK_BYTES: Cell<isize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are updated.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grow(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        shrink(layout.size());
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            shrink(layout.size());
            grow(new_size);
        }
        p
    }
}

fn grow(bytes: usize) {
    let _ = LIVE_BYTES.try_with(|live| {
        live.set(live.get().wrapping_add(bytes as isize));
        let _ = PEAK_BYTES.try_with(|peak| peak.set(peak.get().max(live.get())));
    });
}

fn shrink(bytes: usize) {
    let _ = LIVE_BYTES.try_with(|live| live.set(live.get().wrapping_sub(bytes as isize)));
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f`; returns its result and the peak of bytes allocated during it, above the bytes
/// live when it started.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE_BYTES.with(Cell::get);
    PEAK_BYTES.with(|peak| peak.set(base));
    let out = f();
    let peak = PEAK_BYTES.with(Cell::get);
    (out, peak.saturating_sub(base).max(0) as usize)
}

#[cfg(test)]
mod tests {
    #[test]
    fn measures_the_peak_not_the_end() {
        let ((), peak) = super::measure(|| {
            let v = vec![0u8; 100_000];
            drop(v);
        });
        assert!(peak >= 100_000, "{peak}");
        let ((), peak) = super::measure(|| {});
        assert!(peak < 1000, "{peak}");
    }
}
