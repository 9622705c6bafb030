//! The durable queue: per-shard, memory-mapped, append-only segments of CRC-framed records.
//!
//! - `record`: the byte format (sans-I/O codec).
//! - `segment`: one preallocated, mapped segment file; scanning and torn-tail truncation.
//! - `index`: the in-memory index (a slot per sequence number, messages, domains, batches).
//! - `replay`: recovery's core: records in, index out (sans I/O).
//! - `store`: one shard's queue: opening and recovery, chunk appends with commit records,
//!   outcomes, group-commit sync jobs, spare segments.
//! - `compaction`: reclaiming finished segments and copying stragglers forward.
//! - `transfer`: the file a node's queued recipients move to another node in (`spate drain`).
//!
//! Read-only views of the queue files (for `spate queue summary`) are in `crate::summary`.

pub mod compaction;
pub mod index;
pub mod record;
pub mod replay;
pub mod segment;
pub mod store;
pub mod transfer;
