//! A stable hash: the same in every build and process (FNV-1a), for choices every shard and
//! every replay must agree on: a recipient's home shard, a scope's coordinator.

/// FNV-1a of `bytes`.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}
