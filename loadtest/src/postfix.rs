//! Postfix as the baseline: a private instance (Debian's postfix package, its own
//! configuration and queue directory under the run's directory), listening on a loopback port,
//! relaying every scenario domain to the same simulated providers through a transport map of
//! IP literals (no DNS at all), tuned for throughput. Settings in `main_cf` are documented in
//! docs/benchmarks.md.

use spate::sim::scenario::Scenario;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postfix {
    dir: PathBuf,
    pub port: u16,
}

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

impl Postfix {
    /// Starts a private instance under `dir` relaying the scenario's domains to `sink_port`.
    pub fn start(dir: &Path, scenario: &Scenario, sink_port: u16) -> Result<Postfix, String> {
        let present = Command::new("postconf")
            .arg("mail_version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !present {
            return Err("postfix is not installed (apt-get install postfix)".into());
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err("a private Postfix instance needs root".into());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let io = |e: std::io::Error| format!("{}: {e}", dir.display());
        std::fs::create_dir_all(dir).map_err(io)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
        for sub in ["etc", "spool", "data"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(io)?;
        }
        let mut transport = String::new();
        for p in &scenario.providers {
            for d in &p.domains {
                transport.push_str(&format!("{d} smtp:[{}]:{sink_port}\n", p.listen[0]));
            }
        }
        std::fs::write(dir.join("etc/transport"), transport).map_err(io)?;
        let d = dir.display();
        std::fs::write(
            dir.join("etc/main.cf"),
            format!(
                "compatibility_level = 3.6\nqueue_directory = {d}/spool\ndata_directory = {d}/data\n\
                 mail_owner = postfix\nsetgid_group = postdrop\ninet_interfaces = 127.0.0.1\n\
                 inet_protocols = ipv4\nmyhostname = pf.test\nmydestination =\nmynetworks = 127.0.0.0/8\n\
                 relay_domains =\ntransport_maps = texthash:{d}/etc/transport\nalias_maps =\nalias_database =\n\
                 maillog_file = {d}/maillog\nmaillog_file_prefixes = {d}\n{TUNING}"
            ),
        )
        .map_err(io)?;
        let master = std::fs::read_to_string("/etc/postfix/master.cf")
            .map_err(|e| format!("/etc/postfix/master.cf: {e}"))?;
        let master: String = master
            .lines()
            .map(|l| {
                if l.starts_with("smtp ") && l.ends_with("smtpd") {
                    format!("127.0.0.1:{port} inet n - n - - smtpd")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(dir.join("etc/master.cf"), master + "\n").map_err(io)?;
        let chown = Command::new("chown")
            .arg("postfix")
            .arg(dir.join("data"))
            .status()
            .map_err(|e| format!("chown: {e}"))?;
        if !chown.success() {
            return Err("chown postfix failed".into());
        }
        let pf = Postfix {
            dir: dir.to_path_buf(),
            port,
        };
        if !pf.postfix("start") {
            return Err(format!("postfix start failed: {}", pf.maillog_tail()));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err("postfix did not listen within 20 s".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(pf)
    }

    fn postfix(&self, verb: &str) -> bool {
        Command::new("postfix")
            .arg("-c")
            .arg(self.dir.join("etc"))
            .arg(verb)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    pub fn maillog_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        // Stops this instance's master (by the pid file in its own queue directory).
        self.postfix("stop");
    }
}
