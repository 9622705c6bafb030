//! The suppression entries in memory: an open-addressing hash table of 64-bit keys with a
//! 32-bit value each, 12 bytes a slot, read without locks by every shard while one writer at
//! a time (behind `super::Suppressions`' lock) adds to it.
//!
//! Keys are keyed SipHash values of the normalised entry (`super::key_of`); 0 means an
//! empty slot. A slot is found by multiplying the key into the slot count (no power of two,
//! so a table sized for its entries wastes nothing) and probing linearly. The table never
//! fills: past `LOAD_MAX` the writer builds a bigger one and publishes it.

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

/// The most a table is filled before it is rebuilt larger.
pub const LOAD_MAX: f64 = 0.9;
/// What a table is sized to: its entries at this load.
pub const LOAD_TARGET: f64 = 0.8;

pub struct Table {
    keys: Box<[AtomicU64]>,
    values: Box<[AtomicU32]>,
    len: AtomicUsize,
}

impl Table {
    /// A table for `entries` at `LOAD_TARGET` (at least 64 slots).
    pub fn for_entries(entries: usize) -> Table {
        let slots = ((entries as f64 / LOAD_TARGET) as usize).max(64);
        // Zeroed by the allocator (fresh pages from the kernel for a large table), so the
        // huge-page advice comes before any page is touched.
        let keys = vec![0u64; slots].into_boxed_slice();
        advise_huge_pages(&keys);
        // SAFETY: AtomicU64 and AtomicU32 have the size, alignment and bit validity of u64
        // and u32 (their documentation says so), and a boxed slice of one is a boxed slice
        // of the other.
        let keys = unsafe { std::mem::transmute::<Box<[u64]>, Box<[AtomicU64]>>(keys) };
        let values = vec![0u32; slots].into_boxed_slice();
        let values = unsafe { std::mem::transmute::<Box<[u32]>, Box<[AtomicU32]>>(values) };
        Table {
            keys,
            values,
            len: AtomicUsize::new(0),
        }
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn slots(&self) -> usize {
        self.keys.len()
    }

    /// Bytes the table holds.
    pub fn bytes(&self) -> usize {
        self.slots() * (std::mem::size_of::<AtomicU64>() + std::mem::size_of::<AtomicU32>())
    }

    /// Whether one more entry would pass `LOAD_MAX`.
    pub fn is_full(&self) -> bool {
        (self.len() + 1) as f64 > self.slots() as f64 * LOAD_MAX
    }

    fn home(&self, key: u64) -> usize {
        ((u128::from(key) * self.keys.len() as u128) >> 64) as usize
    }

    /// Asks the CPU to start loading `key`'s home slot, so that several probes of one check
    /// wait for memory together rather than one after another.
    pub fn prefetch(&self, key: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            let slot = &self.keys[self.home(key)];
            // SAFETY: a prefetch only hints the cache; the address is a live slot, and SSE
            // is part of every x86_64 CPU.
            unsafe {
                std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                    (slot as *const AtomicU64).cast(),
                );
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = key;
    }

    /// The value stored under `key`, if any.
    pub fn get(&self, key: u64) -> Option<u32> {
        let n = self.keys.len();
        let mut i = self.home(key);
        // Bounded by the slot count; a table below LOAD_MAX always has an empty slot.
        for _ in 0..n {
            match self.keys[i].load(Ordering::Acquire) {
                0 => return None,
                k if k == key => return Some(self.values[i].load(Ordering::Relaxed)),
                _ => {}
            }
            i = if i + 1 == n { 0 } else { i + 1 };
        }
        None
    }

    /// Stores `value` under `key` (replacing what was there, if `replace` says so for it).
    /// Only one writer at a time; readers see the value before the key (release order).
    /// False if the table is full and the key new.
    pub fn insert(&self, key: u64, value: u32, replace: impl Fn(u32) -> bool) -> bool {
        let n = self.keys.len();
        let mut i = self.home(key);
        for _ in 0..n {
            match self.keys[i].load(Ordering::Acquire) {
                0 => {
                    if self.is_full() {
                        return false;
                    }
                    self.values[i].store(value, Ordering::Relaxed);
                    self.keys[i].store(key, Ordering::Release);
                    self.len.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                k if k == key => {
                    if replace(self.values[i].load(Ordering::Relaxed)) {
                        self.values[i].store(value, Ordering::Relaxed);
                    }
                    return true;
                }
                _ => {}
            }
            i = if i + 1 == n { 0 } else { i + 1 };
        }
        false
    }

    /// Every (key, value), for rebuilding into another table.
    pub fn entries(&self) -> impl Iterator<Item = (u64, u32)> + '_ {
        self.keys
            .iter()
            .zip(self.values.iter())
            .filter_map(|(k, v)| {
                let k = k.load(Ordering::Acquire);
                (k != 0).then(|| (k, v.load(Ordering::Relaxed)))
            })
    }
}

/// Large tables are probed at random: huge pages spare most probes a TLB miss. Advice only;
/// where the kernel will not, nothing changes.
fn advise_huge_pages(keys: &[u64]) {
    const HUGE: usize = 2 << 20;
    let bytes = std::mem::size_of_val(keys);
    if bytes < 4 * HUGE {
        return;
    }
    let start = keys.as_ptr() as usize;
    let aligned = start.next_multiple_of(HUGE);
    let end = (start + bytes) & !(HUGE - 1);
    if end > aligned {
        // SAFETY: the range lies within the allocation `keys` owns; MADV_HUGEPAGE changes
        // how it is backed, never its contents.
        unsafe {
            libc::madvise(
                aligned as *mut libc::c_void,
                end - aligned,
                libc::MADV_HUGEPAGE,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_finds_replaces_and_refuses_past_its_load() {
        let t = Table::for_entries(10);
        assert_eq!(t.slots(), 64);
        assert_eq!(t.get(42), None);
        assert!(t.insert(42, 7, |_| true));
        assert!(t.insert(u64::MAX, 8, |_| true));
        assert_eq!((t.get(42), t.get(u64::MAX), t.len()), (Some(7), Some(8), 2));
        assert!(t.insert(42, 9, |old| old < 9));
        assert!(t.insert(42, 1, |old| old < 1));
        assert_eq!((t.get(42), t.len()), (Some(9), 2));
        // Keys that share a home slot probe on; the last slot wraps to the first.
        for k in 1..=55u64 {
            assert!(
                t.insert(k.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1, k as u32, |_| {
                    true
                })
            );
        }
        assert!(t.is_full());
        assert!(!t.insert(12345, 1, |_| true));
        for k in 1..=55u64 {
            assert_eq!(
                t.get(k.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
                Some(k as u32)
            );
        }
        assert_eq!(t.entries().count(), t.len());
    }
}
