//! Delivery: from a queued recipient to an outcome.
//!
//! - `policy`: outcome classification, bounce categories, the retry schedule (pure).

pub mod policy;
