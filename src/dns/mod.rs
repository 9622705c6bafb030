//! DNS for mail routing: hickory-proto for the wire format, our own small resolver.
//!
//! - `message`: queries and the answers routing needs, sans I/O.
//! - `mx`: MX ordering, null MX, implicit MX (pure policy).
//! - `cache`: a bounded TTL cache with negative caching.
//! - `resolver`: the glommio shell: UDP, TCP fallback, timeouts, retries, the cache.

pub mod cache;
pub mod message;
pub mod mx;
pub mod resolver;
