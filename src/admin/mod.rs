//! Seeing and steering a running engine: the HTTP server of `[admin]` and of the one-click
//! endpoint (`server`, over `http`), operators' holds (`holds`), and what the API and
//! `/metrics` say, rendered from the shards' published snapshots (`metrics`, `api`).

pub mod client;
pub mod counts;
pub mod holds;
pub mod http;
pub mod metrics;
pub mod server;
pub mod text;
pub mod view;
