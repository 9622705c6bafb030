//! Spate: a high-throughput bulk email sending engine (this library is the engine; the
//! `spate` command is `crates/cli`, and the simulated ISPs and `spate demo` are `crates/sim`).
//!
//! # Layout
//!
//! Modules in data-flow order, one line each:
//!
//! - [`clock`]: the one clock (monotonic and wall time), the system's or a manual one.
//! - [`config`]: the TOML configuration, validated into typed values (exit 78 on errors).
//! - [`preflight`]: checks io_uring and the memlock limit before any executor starts (exit 69).
//! - [`spool`]: the spool directory: scanning, race-free claiming, `bad/` and `done/`.
//! - [`intake`]: parses campaign batches (`.jsonl`) and pickup messages (`.eml`) into chunks.
//! - [`compliance`]: the providers' sender rules applied to campaigns at intake: one-click
//!   unsubscribe fields and tokens, Feedback-ID, the `[checks]`.
//! - [`address`]: envelope address validation and IDNA conversion.
//! - [`template`]: `{{ name }}` templates, header-injection checks, rendering.
//! - [`queue`]: the durable per-shard queue (record codec, segments, recovery, group commit).
//! - [`schedule`]: the home shard's scheduling: ready and deferred recipients, routes,
//!   demand and credit (sans I/O).
//! - [`message`]: rendering a recipient's message, with the header fields it lacks (sans I/O).
//! - [`dkim`]: DKIM signing of rendered messages (RFC 6376, RFC 8463) with ring's keys.
//! - [`dns`]: DNS messages, MX planning, the cache and the resolver (hickory-proto wire format).
//! - [`smtp`]: SMTP's protocol cores, sans I/O: replies, DATA writer, client and server sessions.
//! - [`delivery`]: sending and its policy: the owner's credit and connection bookkeeping,
//!   connections, throttles, outcome decisions (classification, bounces, retries).
//! - [`delivery_log`]: the JSONL delivery log of INTERFACE.md.
//! - [`dsn`]: delivery status notifications (RFC 3464) for gateway messages (sans I/O).
//! - [`shard`]: one shard's core: its queue, home, owner and log, and the glue between the
//!   stages, answering each event with effects for its shell (sans I/O; the engine and the
//!   simulation drive it).
//! - [`engine`]: the thread-per-core runtime: shards, meshes, workers, signals, drain, reload,
//!   and the SMTP submission gateway's shell.
//! - [`gateway`]: the submission gateway's policy and limits (sans I/O, but for its counts file).
//! - [`bounded`]: maps with a named bound and eviction, for state that grows with traffic.
//! - [`buffers`]: message buffers reused per thread, from rendering to the socket.
//! - [`hash`]: the stable hash that places scopes and recipients on shards.
//! - [`suppression`]: the suppression table (files and the learnt store), checked at intake and
//!   before sending.
//! - [`summary`]: `spate queue summary`, read from the queue files.

pub mod address;
pub mod admin;
pub mod bounded;
pub mod buffers;
pub mod clock;
pub mod cluster;
pub mod compliance;
pub mod config;
pub mod delivery;
pub mod delivery_log;
pub mod dkim;
pub mod dns;
pub mod dsn;
pub mod engine;
pub mod gateway;
pub mod hash;
pub mod intake;
pub mod message;
pub mod preflight;
pub mod queue;
pub mod schedule;
pub mod shard;
pub mod smtp;
pub mod spool;
pub mod summary;
pub mod suppression;
pub mod template;
