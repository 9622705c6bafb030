//! DNS for mail routing: hickory-proto for the wire format, our own small resolver.
//!
//! - `message`: queries and the answers routing needs, sans I/O.
//! - `mx`: MX ordering, null MX, implicit MX (pure policy).
//! - `cache`: a bounded TTL cache with negative caching.

pub mod cache;
pub mod message;
pub mod mx;
