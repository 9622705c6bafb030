//! A scenario: simulated providers, the campaign sent to them, and the engine settings; read
//! from TOML (see `loadtest/scenarios/`), and the engine configuration it implies.

use super::campaign::Campaign;
use super::profile::{ProviderProfile, SinkProfile};
use serde::Deserialize;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    #[serde(default = "default_name")]
    pub name: String,
    pub recipients: u64,
    #[serde(default = "default_template_bytes")]
    pub template_bytes: usize,
    /// Engine shards; 0: every CPU.
    #[serde(default)]
    pub shards: usize,
    #[serde(default)]
    pub bad_every: u64,
    /// The engine's first retry delay (deferred recipients come back after this).
    #[serde(default = "default_retry_first")]
    pub retry_first: String,
    /// Engine connections per site (each long-tail domain is a site).
    #[serde(default = "default_site_connections")]
    pub site_connections: u32,
    #[serde(default = "default_deliveries_per_connection")]
    pub max_deliveries_per_connection: u32,
    /// Appended to the engine configuration as it is (e.g. `[engine]` tuning keys go in
    /// `engine_keys`, other sections here).
    #[serde(default)]
    pub engine_extra: String,
    /// Extra keys for the engine's `[engine]` section, e.g. `spin_before_park = "50us"`.
    #[serde(default)]
    pub engine_keys: String,
    /// Extra keys for the engine's `[delivery]` section, e.g. `pipeline_transactions = false`.
    #[serde(default)]
    pub delivery_keys: String,
    /// PEM certificate and key for providers with `tls = true` (they offer STARTTLS).
    #[serde(default)]
    pub tls_cert: Option<std::path::PathBuf>,
    #[serde(default)]
    pub tls_key: Option<std::path::PathBuf>,
    #[serde(rename = "provider")]
    pub providers: Vec<ProviderProfile>,
    /// Later campaign batches, dropped during the run (`arrivals`).
    #[serde(default, rename = "arrival")]
    pub arrivals: Vec<crate::arrivals::Arrival>,
    /// Transactional mail through the SMTP gateway during the run (`arrivals`).
    #[serde(default)]
    pub gateway: Option<crate::arrivals::GatewayLoad>,
}

fn default_name() -> String {
    "scenario".into()
}
fn default_template_bytes() -> usize {
    10 << 10
}
fn default_retry_first() -> String {
    "5s".into()
}
fn default_site_connections() -> u32 {
    4
}
fn default_deliveries_per_connection() -> u32 {
    1000
}

/// `spate demo`'s scenario: Gmail-, Yahoo- and Microsoft-like providers and a long tail; the
/// Yahoo-like one accepts fewer messages per second than the rest and says so with TSS04.
pub const DEMO: &str = r#"
name = "demo"
recipients = 100000
template_bytes = 10240
bad_every = 1000
retry_first = "2s"

[[provider]]
name = "gmail"
style = "gmail"
domains = ["gmail.test", "googlemail.test"]
mx = "gmail-smtp-in.l.google.test"
listen = ["127.0.0.2"]
share = 0.45
connections = 20

[[provider]]
name = "yahoo"
style = "yahoo"
domains = ["yahoo.test", "ymail.test", "aol.test"]
mx = "mta5.am0.yahoodns.test"
listen = ["127.0.0.3"]
share = 0.2
connections = 10
rate = 1500

[[provider]]
name = "microsoft"
style = "microsoft"
domains = ["outlook.test", "hotmail.test", "live.test"]
mx = "mail.protection.outlook.test"
listen = ["127.0.0.4"]
share = 0.2
connections = 20
unknown_user = 0.002

[[provider]]
name = "tail"
domains = []
tail = 40
listen = ["127.0.0.5"]
share = 0.15
connections = 4
"#;

impl Scenario {
    pub fn parse(text: &str, source: &str) -> Result<Scenario, String> {
        let mut s: Scenario =
            toml::from_str(text).map_err(|e| spate::config::toml_error(text, source, &e))?;
        if s.recipients == 0 {
            return Err(format!("{source}: recipients must be positive"));
        }
        // The providers are a sink profile's: the same checks (loopback, fractions, unique
        // names, certificates for TLS), before and after the long tails are expanded.
        let check = |s: &Scenario| s.sink_profile(None).validate();
        check(&s).map_err(|e| format!("{source}: {e}"))?;
        s.providers.iter_mut().for_each(ProviderProfile::expand);
        check(&s).map_err(|e| format!("{source}: {e}"))?;
        Ok(s)
    }

    pub fn load(path: &Path) -> Result<Scenario, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Scenario::parse(&text, &path.display().to_string())
    }

    pub fn demo() -> Scenario {
        Scenario::parse(DEMO, "<demo>").expect("the demo scenario is valid")
    }

    pub fn campaign(&self) -> Campaign {
        Campaign::new(
            &self.providers,
            self.recipients,
            self.template_bytes,
            self.bad_every,
        )
    }

    pub fn sink_profile(&self, receipts: Option<&Path>) -> SinkProfile {
        SinkProfile {
            port: 0,
            receipts: receipts.map(Path::to_path_buf),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
            providers: self.providers.clone(),
        }
    }

    /// Whether the engine sends with BDAT where offered (`[delivery] chunking` among the
    /// scenario's delivery keys; on unless they turn it off), so `blast` can do the same.
    pub fn engine_chunking(&self) -> bool {
        toml::from_str::<toml::Table>(&self.delivery_keys)
            .ok()
            .and_then(|t| t.get("chunking").and_then(toml::Value::as_bool))
            .unwrap_or(true)
    }

    /// How many domains the campaign spans.
    pub fn domain_count(&self) -> usize {
        self.providers.iter().map(|p| p.domains.len()).sum()
    }

    /// The engine configuration for this scenario, rooted at `base`, resolving through `dns`
    /// and delivering to the sink on `sink_port`. Every address in it is loopback.
    pub fn engine_config(&self, base: &Path, dns: SocketAddr, sink_port: u16) -> String {
        let mut c = String::new();
        let _ = writeln!(c, "[engine]\ndata_dir = {:?}", base.join("data"));
        if self.shards > 0 {
            let _ = writeln!(c, "shards = {}", self.shards);
        }
        c.push_str(&self.engine_keys);
        let _ = writeln!(
            c,
            "\n[spool]\ndir = {:?}\n[log]\ndir = {:?}",
            base.join("spool"),
            base.join("log")
        );
        let _ = writeln!(c, "[dns]\nnameservers = [\"{dns}\"]");
        // The simulated campaigns are not signed and have no unsubscribe URL: nothing to
        // warn about on every run.
        let _ = writeln!(c, "[checks]\ndkim = \"off\"\nunsubscribe = \"off\"");
        // A free port: a scenario may run beside an engine on the default one.
        if !self.engine_extra.contains("[admin]") {
            let _ = writeln!(c, "[admin]\nlisten = \"127.0.0.1:0\"");
        }
        let _ = writeln!(c, "[smtp]\nhelo_name = \"spate.test\"\nport = {sink_port}");
        let _ = writeln!(
            c,
            "[delivery]\nretry_first = {:?}\nsite_connection_limit = {}\n# The simulated providers live on loopback.\nallow_private_destinations = true",
            self.retry_first, self.site_connections
        );
        c.push_str(&self.delivery_keys);
        c.push('\n');
        for p in &self.providers {
            let Some(mx) = &p.mx else {
                continue;
            };
            let _ = writeln!(
                c,
                "[providers.{}]\nmx_suffixes = [{:?}]\nconnection_limit = {}\nmax_deliveries_per_connection = {}",
                p.name, mx, p.connections, self.max_deliveries_per_connection
            );
            if let Some(rate) = &p.engine_rate {
                let _ = writeln!(c, "max_message_rate = {rate:?}");
            }
            if !p.engine_keys.is_empty() {
                let _ = writeln!(c, "{}", p.engine_keys);
            }
        }
        c.push_str(&self.engine_extra);
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_demo_scenario_makes_a_valid_loopback_engine_configuration() {
        let s = Scenario::demo();
        assert_eq!(s.domain_count(), 48);
        let text = s.engine_config(Path::new("/tmp/x"), "127.0.0.1:5353".parse().unwrap(), 2525);
        let c = spate::config::Config::parse(&text, "t").unwrap();
        assert_eq!(c.smtp.port, 2525);
        assert_eq!(c.providers["yahoo"].connection_limit, 10);
        assert!(c.dns.nameservers.iter().all(|a| a.ip().is_loopback()));
        assert!(!c.delivery.paused);
    }

    #[test]
    fn refuses_bad_scenarios_with_the_line_or_the_provider() {
        let e = Scenario::parse("recipients = \"many\"\n", "s.toml").unwrap_err();
        assert!(e.starts_with("s.toml: line 1:"), "{e}");
        let e = Scenario::parse(&DEMO.replace("recipients = 100000", "recipients = 0"), "s")
            .unwrap_err();
        assert!(e.contains("recipients must be positive"), "{e}");
        let e = Scenario::parse(&DEMO.replace("127.0.0.3", "192.0.2.1"), "s").unwrap_err();
        assert!(e.contains("not loopback"), "{e}");
        let e = Scenario::parse(&DEMO.replace("name = \"yahoo\"", "name = \"gmail\""), "s")
            .unwrap_err();
        assert!(e.contains("named twice"), "{e}");
        let e = Scenario::parse(
            &DEMO.replace("share = 0.45", "share = 0.45\ntls = true"),
            "s",
        )
        .unwrap_err();
        assert!(e.contains("tls_cert"), "{e}");
    }
}
