//! The properties Spate's fuzz targets check, one module per target family.
//!
//! Each `fuzz_targets/*.rs` is one line that calls a `check` function here, so the same
//! checks run under libFuzzer (`cargo fuzz run`, nightly flags) and as ordinary tests on the
//! stable toolchain (`cargo test` in this directory replays every seed in `seeds/` and every
//! saved crash in `regressions/`).
//!
//! # Layout
//!
//! - [`chunks`]: cutting an input into the pieces a socket or a reader would deliver.
//! - [`alloc`]: a counting allocator, for "allocates no more than the input suggests".
//! - [`reply`]: `smtp::reply::ReplyParser` on raw bytes and on the SMTP reply alphabet.
//! - [`session`]: `smtp::session::Session` against a scripted, hostile server.
//! - [`server`]: `smtp::server::Server` against a hostile client.
//! - [`data_writer`]: `smtp::data::DataWriter` on any bytes in any chunking.
//! - [`intake`]: `intake::Parser` on `.jsonl` batches and `.eml` pickup messages.
//! - [`template`]: `template::Template` parsing, value checks and rendering.
//! - [`queue`]: the queue record codec and recovery (`Replay` over segment bytes).
//! - [`transfer`]: the transfer files nodes hand each other (`spate drain`) and their intake.
//! - [`dns`]: `dns::message::parse_response` and `dns::mx::plan`.
//! - [`gateway`]: `gateway::proxy::parse` and the DSN parameters in `dsn::build`.
//! - [`admin`]: the admin API's request heads, percent-decoding and operator targets.
//! - [`sender`]: DKIM signing of any message, the From parser, the suppression store's
//!   lines, unsubscribe tokens and the campaign rules.
//!
//! Every check panics (with a message saying which property failed) when a property does
//! not hold; libFuzzer saves the input as a crash.

pub mod admin;
pub mod alloc;
pub mod chunks;
pub mod cluster_state;
pub mod data_writer;
pub mod dns;
pub mod gateway;
pub mod intake;
pub mod queue;
pub mod reply;
pub mod resp;
pub mod sender;
pub mod server;
pub mod session;
pub mod template;
pub mod transfer;

/// A target's properties: panics if one does not hold for this input.
pub type Check = fn(&[u8]);

/// Every target, by the name of its `fuzz_targets/` file, with its check: what the seed and
/// regression replay tests iterate over.
pub const TARGETS: &[(&str, Check)] = &[
    ("reply", reply::check_raw),
    ("reply_alphabet", reply::check_alphabet),
    ("resp", resp::check),
    ("cluster_state", cluster_state::check),
    ("session", session::check),
    ("smtp_server", server::check),
    ("data_writer", data_writer::check),
    ("batch", intake::check_batch),
    ("batch_lines", intake::check_batch_lines),
    ("pickup", intake::check_pickup),
    ("template", template::check),
    ("queue_record", queue::check_record),
    ("queue_recovery", queue::check_recovery),
    ("dns_response", dns::check_raw),
    ("dns_structured", dns::check_structured),
    ("gateway", gateway::check),
    ("sender", sender::check),
    ("admin", admin::check),
    ("transfer", transfer::check),
];
