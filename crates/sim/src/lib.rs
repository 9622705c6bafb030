//! Simulated receiving ISPs on loopback, for `spate demo`, the load-test harness
//! (`loadtest/`) and tests: a crate of its own, so the engine's library carries only the
//! product. The `spate` command (`crates/cli`) depends on both.
//!
//! - [`profile`]: what each simulated provider does (TOML): domains, addresses, accepted rate
//!   per sending IP and the throttling replies real ISPs send beyond it, connection limits,
//!   latency, failure fractions, greylisting, tarpitting, dropped connections.
//! - [`sink`]: the SMTP receiver on a glommio executor that plays those profiles, counts every
//!   accepted recipient and can write a receipt log.
//! - [`dns`]: an authoritative-only DNS responder on loopback (hickory-proto wire format) that
//!   serves the providers' MX and address records, so runs use the engine's real resolver.
//! - [`campaign`]: campaign batches with a realistic domain mix and a personalised template.
//! - [`scenario`]: a whole run: providers, campaign, engine settings; the engine configuration
//!   it implies.
//! - [`postfix`]: a private Postfix instance on loopback (the harness's baseline, a test's
//!   real receiver).
//! - [`arrivals`]: later campaigns and gateway mail during a run, and how they fared.
//! - [`run`]: one whole run of a scenario with its report (the demo and the harness).
//! - [`demo`]: `spate demo`, a campaign on this machine with no setup.

pub mod arrivals;
pub mod campaign;
pub mod demo;
pub mod dns;
pub mod postfix;
pub mod profile;
pub mod run;
pub mod scenario;
pub mod sink;
