//! A private Postfix instance for tests and the harness: Debian's postfix package with its own
//! `main.cf`, `master.cf`, queue and log under one directory, its SMTP server on a free
//! loopback port. The package's own service is never touched. Stopped (by its own pid file,
//! through `postfix -c DIR stop`) when dropped.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postfix {
    dir: PathBuf,
    pub port: u16,
}

/// Why no instance could be started: Postfix is missing or we are not root (the caller may
/// skip), or it failed.
#[derive(Debug)]
pub enum PostfixError {
    Unavailable(String),
    Failed(String),
}

impl std::fmt::Display for PostfixError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PostfixError::Unavailable(m) | PostfixError::Failed(m) => f.write_str(m),
        }
    }
}

impl Postfix {
    /// Starts an instance under `dir` (absolute). `main_cf` is appended to the private
    /// instance's plumbing (queue, data and log directories, loopback only, no local
    /// delivery, `mynetworks = 127.0.0.0/8`, and `default_transport = error:` so that
    /// nothing the caller did not route, bounces included, is ever looked up or sent
    /// elsewhere); `DIR` in it stands for `dir`.
    pub fn start(dir: &Path, main_cf: &str) -> Result<Postfix, PostfixError> {
        let failed = |m: String| PostfixError::Failed(m);
        let present = Command::new("postconf")
            .arg("mail_version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !present {
            return Err(PostfixError::Unavailable(
                "postfix is not installed (apt-get install postfix)".into(),
            ));
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(PostfixError::Unavailable(
                "a private Postfix instance needs root".into(),
            ));
        }
        if !dir.is_absolute() {
            return Err(failed(format!(
                "{}: Postfix needs absolute paths",
                dir.display()
            )));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| failed(e.to_string()))?
            .port();
        let io = |e: std::io::Error| failed(format!("{}: {e}", dir.display()));
        std::fs::create_dir_all(dir).map_err(io)?;
        // Postfix's unprivileged processes must reach the instance directory.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
        for sub in ["etc", "spool", "data"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(io)?;
        }
        let d = dir.display().to_string();
        std::fs::write(
            dir.join("etc/main.cf"),
            format!(
                "compatibility_level = 3.6\nqueue_directory = {d}/spool\ndata_directory = {d}/data\n\
                 mail_owner = postfix\nsetgid_group = postdrop\ninet_interfaces = 127.0.0.1\n\
                 inet_protocols = ipv4\nmyhostname = pf.test\nmydestination =\nmynetworks = 127.0.0.0/8\n\
                 alias_maps =\nalias_database =\nmaillog_file = {d}/maillog\nmaillog_file_prefixes = {d}\n\
                 default_transport = error:this instance only relays what it is told to\n{}",
                main_cf.replace("DIR", &d)
            ),
        )
        .map_err(io)?;
        let master = std::fs::read_to_string("/etc/postfix/master.cf")
            .map_err(|e| failed(format!("/etc/postfix/master.cf: {e}")))?;
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
            .map_err(|e| failed(format!("chown: {e}")))?;
        if !chown.success() {
            return Err(failed("chown postfix failed".into()));
        }
        let pf = Postfix {
            dir: dir.to_path_buf(),
            port,
        };
        if !pf.postfix("start") {
            return Err(failed(format!(
                "postfix start failed: {}",
                pf.maillog_tail(5)
            )));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                return Err(failed("postfix did not listen within 20 s".into()));
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

    pub fn maillog(&self) -> String {
        std::fs::read_to_string(self.dir.join("maillog")).unwrap_or_default()
    }

    pub fn maillog_tail(&self, lines: usize) -> String {
        let log = self.maillog();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for Postfix {
    fn drop(&mut self) {
        // Stops this instance's master (by the pid file in its own queue directory).
        self.postfix("stop");
    }
}

/// Postfix's `smtp-sink` (a receiver not written here), one process per loopback address, all
/// on one port, each counting the messages it accepted (`-c`, read back from its output).
/// Killed, by their own process ids, when dropped.
pub struct SmtpSinks {
    pub port: u16,
    children: Vec<(std::process::Child, PathBuf)>,
}

/// Where Debian's postfix package puts the test tools.
pub const SMTP_SINK: &str = "/usr/sbin/smtp-sink";
pub const SMTP_SOURCE: &str = "/usr/sbin/smtp-source";

impl SmtpSinks {
    /// Starts `smtp-sink` on each of `addrs` (loopback only) at one free port, its counter
    /// output under `dir`; returns once every one accepts connections.
    pub fn start(dir: &Path, addrs: &[std::net::IpAddr]) -> Result<SmtpSinks, String> {
        if addrs.iter().any(|a| !a.is_loopback()) {
            return Err("smtp-sink is only ever started on loopback addresses".into());
        }
        if !Path::new(SMTP_SINK).exists() {
            return Err(format!(
                "{SMTP_SINK} not found (Debian's postfix package has it)"
            ));
        }
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let port = {
            let l = std::net::TcpListener::bind((addrs[0], 0)).map_err(|e| e.to_string())?;
            l.local_addr().map_err(|e| e.to_string())?.port()
        };
        let mut sinks = SmtpSinks {
            port,
            children: Vec::new(),
        };
        for (i, ip) in addrs.iter().enumerate() {
            let out = dir.join(format!("smtp-sink-{i}.out"));
            let file =
                std::fs::File::create(&out).map_err(|e| format!("{}: {e}", out.display()))?;
            // -c: count messages; -u: the user to run as when started by root; -m: most
            // sessions at once; 1024: the listen backlog.
            let child = Command::new(SMTP_SINK)
                .args(["-c", "-u", "nobody", "-m", "2000"])
                .arg(format!("{ip}:{port}"))
                .arg("1024")
                .stdout(file)
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| format!("{SMTP_SINK}: {e}"))?;
            sinks.children.push((child, out));
        }
        let ready_by = Instant::now() + Duration::from_secs(10);
        for ip in addrs {
            while std::net::TcpStream::connect((*ip, port)).is_err() {
                if Instant::now() > ready_by {
                    return Err(format!("smtp-sink did not listen on {ip}:{port}"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // The readiness probes count as sessions, not messages.
        Ok(sinks)
    }

    /// Messages accepted so far, per address in the order given to `start`.
    pub fn messages(&self) -> Vec<u64> {
        self.children
            .iter()
            .map(|(_, out)| last_count(&std::fs::read(out).unwrap_or_default()))
            .collect()
    }
}

/// The last `mesg=N` of an `smtp-sink -c` output (counters separated by carriage returns).
fn last_count(out: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(out);
    text.rsplit("mesg=")
        .next()
        .filter(|_| text.contains("mesg="))
        .and_then(|t| {
            let digits: String = t.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .unwrap_or(0)
}

impl Drop for SmtpSinks {
    fn drop(&mut self) {
        for (child, _) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_the_last_message_count_of_smtp_sink_output() {
        let out = b"sess=1 quit=0 mesg=1\rsess=2 quit=1 mesg=2\rsess=2 quit=2 mesg=13";
        assert_eq!(super::last_count(out), 13);
        assert_eq!(super::last_count(b""), 0);
        assert_eq!(super::last_count(b"sess=1 quit=0"), 0);
    }
}
