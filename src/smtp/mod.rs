//! The SMTP client's protocol core, sans I/O: replies, the DATA writer and the session state
//! machine are fed bytes and return bytes; the glommio shell around them stays thin.
//!
//! - `reply`: replies and the streaming, pipelining-aware reply parser.
//! - `data`: the DATA writer (CRLF canonicalisation, dot-stuffing, line limits).
//! - `session`: the client session state machine (EHLO/HELO, STARTTLS, pipelined
//!   transactions, 421 handling, per-phase timeouts).

pub mod data;
pub mod reply;
pub mod server;
pub mod session;
