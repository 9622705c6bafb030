//! Simulated provider profiles: the behaviour of one receiving ISP, read from TOML.
//!
//! ```toml
//! [[provider]]
//! name = "gmail"
//! domains = ["gmail.test", "googlemail.test"]
//! mx = "gmail-smtp-in.l.google.test"   # one MX host for every domain; omit: mx.<domain> each
//! listen = ["127.0.0.2"]               # addresses; the port is the sink's
//! style = "gmail"                      # reply texts: gmail, yahoo, microsoft, comcast, generic
//! rate = 2000                          # accepted recipients per second per sending IP; 0 = no limit
//! throttle_code = 421                  # beyond the rate: 421 (closes) or 450/451 (per recipient)
//! connection_limit = 40                # per sending IP; 421 at the greeting beyond it; 0 = none
//! schedule = [{ at_s = 10, rate = 200 }, { at_s = 20, rate = 2000 }]
//! bans = [{ ip = "127.0.0.22", at_s = 20 }]   # 550 5.7.606 "banned sending IP" from then on
//! ```

use serde::Deserialize;
use std::net::IpAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Style {
    Gmail,
    Yahoo,
    Microsoft,
    Comcast,
    #[default]
    Generic,
}

impl Style {
    /// The rate-limit reply a provider of this style sends, without the code: the texts and
    /// enhanced codes those ISPs use, shortened.
    pub fn throttle_text(self, code: u16, ip: IpAddr) -> String {
        let class = if code == 421 { "4.7.0" } else { "4.7.1" };
        match self {
            Style::Gmail => format!(
                "4.7.28 [{ip}] Our system has detected an unusual rate of mail from your IP address; it has been temporarily rate limited. https://support.google.com/mail/?p=UnsolicitedRateLimitError"
            ),
            Style::Yahoo => format!(
                "{class} [TSS04] Messages from {ip} temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"
            ),
            Style::Microsoft => format!(
                "{class} Server busy. Please try again later from [{ip}]. (S77719) [simulated.outlook.test]"
            ),
            Style::Comcast => format!(
                "{class} {ip} rate limited. Too many messages, please try again later. RL0000"
            ),
            Style::Generic => format!("{class} Rate limit exceeded for {ip}, try again later"),
        }
    }

    pub fn unknown_user_text(self) -> &'static str {
        match self {
            Style::Gmail => "5.1.1 The email account that you tried to reach does not exist.",
            Style::Yahoo => "5.1.1 <recipient> User unknown",
            Style::Microsoft => {
                "5.5.0 Requested action not taken: mailbox unavailable (S2017062302)"
            }
            Style::Comcast => "5.1.1 Not our customer",
            Style::Generic => "5.1.1 No such user",
        }
    }

    /// The code used beyond the rate when the profile does not name one.
    pub fn default_throttle_code(self) -> u16 {
        match self {
            Style::Gmail | Style::Yahoo | Style::Comcast => 421,
            Style::Microsoft => 451,
            Style::Generic => 450,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateChange {
    /// Seconds after the sink started.
    pub at_s: f64,
    /// The accepted rate from then on (recipients per second per sending IP; 0 = no limit).
    pub rate: f64,
}

/// A sending address the provider bans from a time on: its recipients get Microsoft's
/// "550 5.7.606 Access denied, banned sending IP".
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ban {
    pub ip: IpAddr,
    pub at_s: f64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderProfile {
    pub name: String,
    pub domains: Vec<String>,
    /// The MX host every domain points at; without it each domain has its own `mx.<domain>`.
    #[serde(default)]
    pub mx: Option<String>,
    pub listen: Vec<IpAddr>,
    #[serde(default)]
    pub style: Style,
    #[serde(default)]
    pub rate: f64,
    #[serde(default)]
    pub throttle_code: Option<u16>,
    #[serde(default)]
    pub schedule: Vec<RateChange>,
    #[serde(default)]
    pub connection_limit: u32,
    /// Added before each reply.
    #[serde(default)]
    pub latency_ms: u64,
    /// Fractions (0..1) of recipients answered 451 4.3.0 (temporary) and 550 5.7.1 (policy).
    #[serde(default)]
    pub temp_fail: f64,
    #[serde(default)]
    pub perm_fail: f64,
    /// Fraction of addresses that do not exist (the same addresses every time).
    #[serde(default)]
    pub unknown_user: f64,
    /// Greylisting: the first attempt of each (IP, sender, recipient) is answered 451 4.7.1
    /// until this many seconds have passed. 0: off.
    #[serde(default)]
    pub greylist_s: u64,
    /// Tarpitting: after this many recipients on one connection, every reply waits
    /// `tarpit_ms`. 0: off.
    #[serde(default)]
    pub tarpit_after: u32,
    #[serde(default)]
    pub tarpit_ms: u64,
    /// Fraction of transactions whose connection is dropped in the middle of DATA.
    #[serde(default)]
    pub drop_mid_data: f64,
    /// Offer STARTTLS (needs the sink's `tls_cert` and `tls_key`).
    #[serde(default)]
    pub tls: bool,
    /// Offer CHUNKING (BDAT), as Gmail's and Microsoft's servers do.
    #[serde(default = "default_chunking")]
    pub chunking: bool,
    /// Scenarios only: the share of a campaign's recipients at this provider's domains.
    #[serde(default)]
    pub share: f64,
    /// Scenarios only: the engine's `connection_limit` for this provider (and `blast`'s
    /// connections to it); for a long tail, per domain.
    #[serde(default = "default_connections")]
    pub connections: u32,
    /// Scenarios only: the engine's `max_message_rate` for this provider, e.g. "500/s".
    #[serde(default)]
    pub engine_rate: Option<String>,
    /// Extra keys for the engine's `[providers.NAME]` section of this provider, e.g.
    /// `throttle_cut = 0.85` (scenarios only).
    #[serde(default)]
    pub engine_keys: String,
    /// A long tail: this many more domains, `<name>-<i>.test`, each with its own MX host.
    #[serde(default)]
    pub tail: u32,
    /// Sending addresses banned from a time on.
    #[serde(default)]
    pub bans: Vec<Ban>,
}

fn default_chunking() -> bool {
    true
}

fn default_connections() -> u32 {
    10
}

impl ProviderProfile {
    pub fn throttle_code(&self) -> u16 {
        self.throttle_code
            .unwrap_or_else(|| self.style.default_throttle_code())
    }

    /// The accepted rate `elapsed_s` after the start.
    pub fn rate_at(&self, elapsed_s: f64) -> f64 {
        self.schedule
            .iter()
            .filter(|c| c.at_s <= elapsed_s)
            .max_by(|a, b| a.at_s.total_cmp(&b.at_s))
            .map_or(self.rate, |c| c.rate)
    }

    /// The MX host of `domain` at this provider.
    pub fn mx_host(&self, domain: &str) -> String {
        self.mx.clone().unwrap_or_else(|| format!("mx.{domain}"))
    }

    /// Adds the generated long-tail domains to `domains`.
    pub fn expand(&mut self) {
        let name = self.name.clone();
        self.domains
            .extend((0..self.tail).map(|i| format!("{name}-{i}.test")));
        self.tail = 0;
    }

    pub fn validate(&self) -> Result<(), String> {
        let n = &self.name;
        if self.tail > 0 && self.mx.is_some() {
            return Err(format!(
                "provider {n}: a long tail (tail = {}) has an MX host per domain; remove mx",
                self.tail
            ));
        }
        if self.domains.is_empty() && self.tail == 0 {
            return Err(format!("provider {n}: domains is empty"));
        }
        if self.listen.is_empty() {
            return Err(format!("provider {n}: listen is empty"));
        }
        if let Some(ip) = self.listen.iter().find(|ip| !ip.is_loopback()) {
            return Err(format!(
                "provider {n}: listen address {ip} is not loopback (simulated ISPs stay on this machine)"
            ));
        }
        for (what, f) in [
            ("temp_fail", self.temp_fail),
            ("perm_fail", self.perm_fail),
            ("unknown_user", self.unknown_user),
            ("drop_mid_data", self.drop_mid_data),
        ] {
            if !(0.0..=1.0).contains(&f) {
                return Err(format!("provider {n}: {what} = {f} is not a fraction 0..1"));
            }
        }
        if !matches!(self.throttle_code(), 421 | 450 | 451) {
            return Err(format!(
                "provider {n}: throttle_code must be 421, 450 or 451"
            ));
        }
        if self.rate < 0.0 || self.schedule.iter().any(|c| c.rate < 0.0 || c.at_s < 0.0) {
            return Err(format!("provider {n}: rates and times cannot be negative"));
        }
        Ok(())
    }
}

/// The sink's whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkProfile {
    /// The TCP port on every listen address; 0 picks a free one.
    #[serde(default)]
    pub port: u16,
    /// Where to append one line per accepted recipient: `unix_micros provider address`.
    #[serde(default)]
    pub receipts: Option<std::path::PathBuf>,
    /// PEM files for providers with `tls = true`.
    #[serde(default)]
    pub tls_cert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub tls_key: Option<std::path::PathBuf>,
    #[serde(rename = "provider")]
    pub providers: Vec<ProviderProfile>,
}

impl SinkProfile {
    pub fn parse(text: &str, source: &str) -> Result<SinkProfile, String> {
        let mut p: SinkProfile =
            toml::from_str(text).map_err(|e| spate::config::toml_error(text, source, &e))?;
        p.validate().map_err(|e| format!("{source}: {e}"))?;
        p.providers.iter_mut().for_each(ProviderProfile::expand);
        p.validate().map_err(|e| format!("{source}: {e}"))?;
        Ok(p)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.providers.is_empty() {
            return Err("no [[provider]]".into());
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.providers {
            p.validate()?;
            if !seen.insert(p.name.as_str()) {
                return Err(format!("provider {} is named twice", p.name));
            }
            if p.tls && (self.tls_cert.is_none() || self.tls_key.is_none()) {
                return Err(format!(
                    "provider {}: tls = true needs tls_cert and tls_key",
                    p.name
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"
        [[provider]]
        name = "gmail"
        domains = ["gmail.test"]
        mx = "gmail-smtp-in.l.google.test"
        listen = ["127.0.0.2"]
        style = "gmail"
        rate = 100
        schedule = [{ at_s = 10, rate = 5 }, { at_s = 20, rate = 200 }]
    "#;

    #[test]
    fn parses_and_follows_the_schedule() {
        let p = SinkProfile::parse(TEXT, "t").unwrap();
        let g = &p.providers[0];
        assert_eq!(g.throttle_code(), 421);
        assert_eq!(g.rate_at(0.0), 100.0);
        assert_eq!(g.rate_at(10.0), 5.0);
        assert_eq!(g.rate_at(25.0), 200.0);
        assert_eq!(g.mx_host("gmail.test"), "gmail-smtp-in.l.google.test");
    }

    #[test]
    fn refuses_what_would_leave_loopback_or_make_no_sense() {
        let e = SinkProfile::parse(&TEXT.replace("127.0.0.2", "10.0.0.1"), "t").unwrap_err();
        assert!(e.contains("not loopback"), "{e}");
        let e = SinkProfile::parse(
            &TEXT.replace("rate = 100", "rate = 100\ntemp_fail = 2"),
            "t",
        )
        .unwrap_err();
        assert!(e.contains("temp_fail"), "{e}");
        let e = SinkProfile::parse(&TEXT.replace("rate = 100", "rat = 100"), "t").unwrap_err();
        assert!(e.contains("rat"), "{e}");
    }
}
