//! SMTP's protocol cores, sans I/O: replies, the DATA writer, the client session and the
//! server session are fed bytes and return bytes; the shells around them stay thin.
//!
//! - `reply`: replies and the streaming, pipelining-aware reply parser.
//! - `data`: the DATA writer (CRLF canonicalisation, dot-stuffing, line limits).
//! - `session`: the client session state machine (EHLO/HELO, STARTTLS, pipelined
//!   transactions, 421 handling, per-phase timeouts).
//! - `server`: the server session (EHLO, STARTTLS, pipelining, DATA with dot-unstuffing,
//!   limits), for the simulated ISPs, the test sink and the submission listener.

pub mod data;
pub mod reply;
pub mod server;
pub mod session;
