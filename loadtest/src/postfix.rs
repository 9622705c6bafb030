//! Postfix as the baseline: a private instance (Debian's postfix package, its own
//! configuration and queue directory under the run's directory), listening on a loopback port,
//! relaying every scenario domain to the same simulated providers through a transport map of
//! IP literals (no DNS at all), tuned for throughput. Settings in `main_cf` are documented in
//! docs/benchmarks.md.

use spate_sim::postfix::Postfix;
use spate_sim::scenario::Scenario;
use std::path::Path;

/// The throughput settings (beyond the private-instance plumbing), one per line.
pub const TUNING: &str = "\
default_process_limit = 200
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
smtpd_client_message_rate_limit = 0
smtpd_client_recipient_rate_limit = 0
in_flow_delay = 0
qmgr_message_active_limit = 40000
qmgr_message_recipient_limit = 40000
default_destination_concurrency_limit = 50
initial_destination_concurrency = 50
default_destination_rate_delay = 0
smtp_connection_cache_on_demand = yes
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtpd_peername_lookup = no
smtp_dns_support_level = disabled
smtp_host_lookup = native
";

/// Starts a private instance under `dir` relaying the scenario's domains to `sink_port`.
pub fn start(dir: &Path, scenario: &Scenario, sink_port: u16) -> Result<Postfix, String> {
    let mut transport = String::new();
    for p in &scenario.providers {
        for d in &p.domains {
            transport.push_str(&format!("{d} smtp:[{}]:{sink_port}\n", p.listen[0]));
        }
    }
    std::fs::create_dir_all(dir.join("etc")).map_err(|e| format!("{}: {e}", dir.display()))?;
    std::fs::write(dir.join("etc/transport"), transport)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Postfix::start(
        dir,
        &format!("relay_domains =\ntransport_maps = texthash:DIR/etc/transport\n{TUNING}"),
    )
    .map_err(|e| e.to_string())
}
