//! A dnsmasq process (installed by .ci/run) on a loopback port, answering only from its own
//! records (`no-resolv`, `local=/test/`): the real DNS server tests resolve through.

use super::wait_until;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A dnsmasq process owned by the test, killed by its pid on drop.
pub struct Dnsmasq {
    child: Child,
    pub port: u16,
}

impl Dnsmasq {
    pub fn start(dir: &std::path::Path) -> Option<Dnsmasq> {
        Dnsmasq::start_with(dir, "")
    }

    /// `zone` is extra dnsmasq configuration lines.
    pub fn start_with(dir: &std::path::Path, zone: &str) -> Option<Dnsmasq> {
        if Command::new("dnsmasq")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have dnsmasq (.ci/run installs it)"
            );
            eprintln!("dnsmasq is not installed: skipping (apt-get install dnsmasq)");
            return None;
        }
        // A port free for UDP may be taken for TCP (dnsmasq binds both), or taken by another
        // test between choosing and binding: dnsmasq then exits at once, and a new port is
        // tried. Bounded: a handful of attempts, 10 s each.
        for _ in 0..DNSMASQ_ATTEMPTS_MAX {
            if let Some(d) = Dnsmasq::try_start(dir, zone) {
                return Some(d);
            }
        }
        panic!(
            "dnsmasq did not answer in {DNSMASQ_ATTEMPTS_MAX} attempts: {}",
            std::fs::read_to_string(dir.join("dnsmasq.log")).unwrap_or_default()
        );
    }

    /// One attempt on a fresh port: `None` if dnsmasq exited (its port was taken).
    fn try_start(dir: &std::path::Path, zone: &str) -> Option<Dnsmasq> {
        let port = free_udp_and_tcp_port();
        let conf = dir.join("dnsmasq.conf");
        std::fs::write(
            &conf,
            format!(
                "port={port}\nlisten-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\nno-poll\nlocal=/test/\n\
                 mx-host=mx.test,mx1.mx.test,10\naddress=/mx1.mx.test/127.0.0.1\n\
                 host-record=implicit.test,127.0.0.1\n\
                 dns-rr=nullmx.test,15,000000\n{zone}"
            ),
        )
        .unwrap();
        let mut child = Command::new("dnsmasq")
            .arg("-k")
            .arg("-C")
            .arg(&conf)
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
            .arg(format!(
                "--log-facility={}",
                dir.join("dnsmasq.log").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        // Ready once it answers.
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let query = [
            0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 2, b'm', b'x', 4, b't', b'e', b's', b't', 0,
            0, 15, 0, 1,
        ];
        let mut buf = [0u8; 512];
        let mut exited = false;
        wait_until(Duration::from_secs(10), "dnsmasq to answer", || {
            if child.try_wait().ok().flatten().is_some() {
                exited = true;
                return true;
            }
            probe.send_to(&query, ("127.0.0.1", port)).unwrap();
            probe.recv_from(&mut buf).is_ok()
        });
        if exited {
            return None;
        }
        Some(Dnsmasq { child, port })
    }
}

const DNSMASQ_ATTEMPTS_MAX: usize = 5;

/// A loopback port that is free for both UDP and TCP right now.
fn free_udp_and_tcp_port() -> u16 {
    for _ in 0..100 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no loopback port free for both UDP and TCP in 100 tries");
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
