//! Delivery to a real SMTP server nobody here wrote: a private Postfix instance (installed by
//! .ci/run) on a loopback port, STARTTLS on with a self-signed certificate, relaying the test
//! domain to its `discard:` transport. Postfix's own log proves what it accepted.

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// A private Postfix instance; stopped on drop.
struct Postfix {
    dir: PathBuf,
    port: u16,
}

impl Postfix {
    fn start(dir: &Path) -> Option<Postfix> {
        if Command::new("postconf")
            .arg("mail_version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have postfix (.ci/run installs it)"
            );
            eprintln!("postfix is not installed: skipping (apt-get install postfix)");
            return None;
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            eprintln!("not root: skipping the Postfix test");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Postfix's unprivileged processes must reach the instance directory.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        for sub in ["etc", "spool", "data"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
        let d = dir.display();
        std::fs::write(
            dir.join("etc/main.cf"),
            format!(
                "compatibility_level = 3.6\nqueue_directory = {d}/spool\ndata_directory = {d}/data\n\
                 mail_owner = postfix\nsetgid_group = postdrop\ninet_interfaces = 127.0.0.1\n\
                 inet_protocols = ipv4\nmyhostname = pf.test\nmydestination =\nrelay_domains = pf.test\n\
                 relay_transport = discard:\nmynetworks = 127.0.0.0/8\nalias_maps =\nalias_database =\n\
                 smtpd_tls_security_level = may\nsmtpd_tls_cert_file = {d}/cert.pem\n\
                 smtpd_tls_key_file = {d}/key.pem\nsmtpd_tls_loglevel = 1\nmaillog_file = {d}/maillog\nmaillog_file_prefixes = {d}\n"
            ),
        )
        .unwrap();
        let master =
            std::fs::read_to_string("/etc/postfix/master.cf").expect("postfix's master.cf");
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
        std::fs::write(dir.join("etc/master.cf"), master + "\n").unwrap();
        let chown = Command::new("chown")
            .arg("postfix")
            .arg(dir.join("data"))
            .status()
            .unwrap();
        assert!(chown.success());
        let pf = Postfix {
            dir: dir.to_path_buf(),
            port,
        };
        let started = pf.postfix("start");
        assert!(started, "postfix start failed: {}", pf.maillog());
        wait_until(Duration::from_secs(20), "postfix to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Some(pf)
    }

    fn postfix(&self, verb: &str) -> bool {
        Command::new("postfix")
            .arg("-c")
            .arg(self.dir.join("etc"))
            .arg(verb)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    }

    fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        // Stops this instance's master (by the pid in its own queue directory) and children.
        self.postfix("stop");
    }
}

#[test]
fn delivers_to_postfix_over_starttls_and_postfix_accepts_each_once() {
    const N: usize = 50;
    let pf_dir = tempfile::tempdir().unwrap();
    let Some(pf) = Postfix::start(pf_dir.path()) else {
        return;
    };
    let extra = format!(
        "[delivery]\nretry_first = \"1s\"\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n[[routes]]\ndomain = \"pf.test\"\nhosts = [\"127.0.0.1:{}\"]\n",
        pf.port
    );
    let env = Env::new(2, "", &extra);
    let engine = env.start();
    let mut s = format!("{HEADER}\n");
    for i in 0..N {
        s.push_str(&format!(
            "{{\"to\":\"user{i}@pf.test\",\"vars\":{{\"first_name\":\"N{i}\"}}}}\n"
        ));
    }
    env.drop_input("pf.jsonl", s.as_bytes());
    wait_final(&env, &engine, N, Duration::from_secs(60));
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    let records = env.log_records();
    let deliveries: Vec<&serde_json::Value> =
        records.iter().filter(|r| r["type"] == "Delivery").collect();
    assert_eq!(deliveries.len(), N);
    for d in &deliveries {
        assert_eq!(d["code"], 250);
        assert!(d["response"].as_str().unwrap().contains("queued as"), "{d}");
        assert!(d["tls"].as_str().unwrap().starts_with("TLSv1_3"), "{d}");
    }
    // Postfix's side: each recipient handed to the discard transport exactly once.
    wait_until(
        Duration::from_secs(30),
        "postfix to log every delivery",
        || pf.maillog().matches("status=sent").count() >= N,
    );
    let log = pf.maillog();
    for i in 0..N {
        let needle = format!("to=<user{i}@pf.test>");
        assert_eq!(
            log.lines()
                .filter(|l| l.contains(&needle) && l.contains("status=sent"))
                .count(),
            1,
            "{needle}"
        );
    }
    assert!(
        log.contains("TLS connection established"),
        "STARTTLS was used"
    );
    drop(pf);
}
