//! Campaign batches for simulated runs: recipient `i` is `user<i>@<domain>`, its domain drawn
//! deterministically from the providers' shares (spread evenly over each provider's domains),
//! so the harness can name every recipient it expects without keeping a list.

use super::profile::ProviderProfile;
use std::io::Write;
use std::path::Path;

/// Buckets per recipient draw: shares are resolved to 1/100,000.
const BUCKETS: u64 = 100_000;

pub struct Campaign {
    pub recipients: u64,
    /// Every `bad_every`-th recipient is invalid (0: none), to show refusal per recipient.
    pub bad_every: u64,
    pub template_bytes: usize,
    /// (domain, provider index), in draw order.
    pub domains: Vec<(String, usize)>,
    /// Cumulative bucket bounds, one per domain.
    bounds: Vec<u64>,
}

impl Campaign {
    pub fn new(
        providers: &[ProviderProfile],
        recipients: u64,
        template_bytes: usize,
        bad_every: u64,
    ) -> Campaign {
        let total: f64 = providers.iter().map(|p| p.share.max(0.0)).sum();
        let mut domains = Vec::new();
        let mut bounds = Vec::new();
        let mut acc = 0.0;
        for (pi, p) in providers.iter().enumerate() {
            let per = if total > 0.0 {
                p.share.max(0.0) / total / p.domains.len().max(1) as f64
            } else {
                1.0 / providers.len() as f64 / p.domains.len().max(1) as f64
            };
            for d in &p.domains {
                acc += per;
                domains.push((d.clone(), pi));
                bounds.push((acc * BUCKETS as f64).round() as u64);
            }
        }
        if let Some(last) = bounds.last_mut() {
            *last = BUCKETS;
        }
        Campaign {
            recipients,
            bad_every,
            template_bytes,
            domains,
            bounds,
        }
    }

    /// The domain index of recipient `i`.
    pub fn domain_of(&self, i: u64) -> usize {
        // A multiplicative hash spreads neighbours over the buckets.
        let bucket = i.wrapping_mul(2_654_435_761) % BUCKETS;
        self.bounds.partition_point(|&b| b <= bucket)
    }

    pub fn is_bad(&self, i: u64) -> bool {
        self.bad_every > 0 && i % self.bad_every == self.bad_every - 1
    }

    pub fn address(&self, i: u64) -> String {
        format!("user{i}@{}", self.domains[self.domain_of(i)].0)
    }

    /// The personalised template, padded with body text to about `template_bytes`.
    pub fn template(&self) -> String {
        let head = "From: Acme News <news@acme.example>\r\nTo: {{ to }}\r\nSubject: {{ first_name }}, your spring offer (code {{ code }})\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHello {{ first_name }},\r\n\r\n";
        let tail = "\r\nYour code: {{ code }}\r\n";
        let line = "We picked these for you, {{ first_name }}: new arrivals, spring prices.\r\n";
        let lines = self.template_bytes.saturating_sub(head.len() + tail.len()) / line.len();
        format!("{head}{}{tail}", line.repeat(lines.max(1)))
    }

    /// The variables of recipient `i`: (first_name, code).
    pub fn vars(i: u64) -> (String, String) {
        (format!("Name{i}"), format!("C{:06}", i * 31 % 1_000_000))
    }

    /// Writes the batch; returns how many recipients are valid.
    pub fn write(&self, path: &Path, campaign: &str) -> std::io::Result<u64> {
        let file = std::fs::File::create(path)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        let header = serde_json::json!({
            "campaign": campaign,
            "tenant": "acme",
            "from": "bounces@acme.example",
            "template": self.template(),
        });
        writeln!(w, "{header}")?;
        let mut valid = 0;
        for i in 0..self.recipients {
            let domain = &self.domains[self.domain_of(i)].0;
            if self.is_bad(i) {
                if i % 2 == 0 {
                    writeln!(
                        w,
                        r#"{{"to":"user{i}.at.{domain}","vars":{{"first_name":"X"}}}}"#
                    )?;
                } else {
                    writeln!(
                        w,
                        r#"{{"to":"user{i}@{domain}","vars":{{"first_name":"Eve\r\nBcc: list@evil.example"}}}}"#
                    )?;
                }
                continue;
            }
            let (name, code) = Self::vars(i);
            writeln!(
                w,
                r#"{{"to":"user{i}@{domain}","vars":{{"first_name":"{name}","code":"{code}"}}}}"#
            )?;
            valid += 1;
        }
        w.flush()?;
        w.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        Ok(valid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn provider(name: &str, domains: &[&str], share: f64) -> ProviderProfile {
        let text = format!(
            "name = {name:?}\ndomains = {domains:?}\nlisten = [\"127.0.0.1\"]\nshare = {share}\n"
        );
        toml::from_str(&text).unwrap()
    }

    #[test]
    fn shares_are_followed() {
        let ps = [
            provider("big", &["a.test", "b.test"], 0.75),
            provider("small", &["c.test"], 0.25),
        ];
        let c = Campaign::new(&ps, 100_000, 1024, 0);
        let mut counts = [0u64; 3];
        for i in 0..c.recipients {
            counts[c.domain_of(i)] += 1;
        }
        for (count, want) in counts.iter().zip([37_500, 37_500, 25_000]) {
            assert!(count.abs_diff(want) < 1_000, "{counts:?}");
        }
        assert!(c.template().len().abs_diff(1024) < 100);
    }
}
