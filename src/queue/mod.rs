//! The durable queue: per-shard, memory-mapped, append-only segments of CRC-framed records.
//!
//! - `record`: the byte format (sans-I/O codec).
//! - `segment`: one preallocated, mapped segment file; scanning and torn-tail truncation.
//! - `store`: one shard's queue: recovery, chunk appends with commit records, group-commit
//!   sync jobs, the in-memory index, outcomes, compaction and segment reclamation.
//!
//! Read-only views of the queue files (for `spate queue summary`) are in `crate::summary`.

pub mod record;
pub mod segment;
pub mod store;
