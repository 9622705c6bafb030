//! Cluster mode (issue 15, in progress): several nodes sharing provider-wide limits and
//! state through Redis (`[cluster] redis`, `node` in INTERFACE.md).
//!
//! Not wired into the engine yet: `[cluster]` is still refused as an unknown section, so
//! nothing here changes what a node does. What stands so far is the wire protocol:
//!
//! - [`resp`]: RESP2, sans I/O: commands encoded, replies parsed from hostile bytes within
//!   named bounds (fuzzed: `fuzz/fuzz_targets/resp.rs`).
//!
//! The plan (docs/cluster.md once it runs): one thread per node talks to Redis (blocking
//! sockets, rustls for `rediss://`), never the shards' executors; the shards take rate
//! tokens and connection slots from it in leases (atomic scripts with TTLs on Redis's
//! `TIME`), so no message waits for a round trip; pushback, suspensions and rule firings
//! travel by pub/sub; without Redis each node falls back to a configured share.

pub mod resp;
