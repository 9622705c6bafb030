//! Delivery: from a queued recipient to an outcome.
//!
//! - `policy`: outcome classification, bounce categories, the retry schedule (pure).
//! - `scope`: static routes, provider rollup, sites (pure).
//! - `shares`: each shard's share of a scope's connections, split exactly by the scope's
//!   coordinator (sans I/O).
//! - `guard`: what DNS may make Spate connect to (host names only, public addresses) (pure).
//! - `owner`: the owner's side of sending: demand, credit windows, connection caps, pacing
//!   (sans I/O).
//! - `pace`: paces every shard shares (`provider_max_message_rate` across sources).
//! - `endpoints`: connections by remote address across scopes: a cap per address, and
//!   parked connections any scope can reuse (sans I/O).
//! - `connection`: one outbound connection, glommio TCP driving the SMTP session.
//! - `deadline`: the connection's TCP stream, its reads and writes bounded by deadlines.
//! - `throttle`: adaptive throttling per scope: ease off on pushback, ramp back up (pure).
//! - `tls`: STARTTLS policies and rustls client configurations.

pub mod connection;
pub mod deadline;
pub mod endpoints;
pub mod guard;
pub mod owner;
pub mod pace;
pub mod policy;
pub mod rules;
pub mod scope;
pub mod shares;
pub mod throttle;
pub mod tls;
pub mod warmup;
