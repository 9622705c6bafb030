//! A Redis server (Debian's `redis-server`, installed by .ci/run) owned by the test: on a
//! free loopback port, without persistence (a restart loses everything, the case the cluster
//! must survive), killed by its pid on drop.

use super::wait_until;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Redis {
    child: Option<Child>,
    pub port: u16,
    dir: std::path::PathBuf,
    /// `--replicaof 127.0.0.1 PORT`: a replica of another test server.
    replica_of: Option<u16>,
}

impl Redis {
    /// `None` (the test skips) only outside CI when redis-server is not installed.
    pub fn start(dir: &std::path::Path) -> Option<Redis> {
        Redis::start_replica(dir, None)
    }

    /// A server replicating `master`'s port (`None`: a master of its own).
    pub fn start_replica(dir: &std::path::Path, replica_of: Option<u16>) -> Option<Redis> {
        if Command::new("redis-server")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_err()
        {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have redis-server (.ci/run installs it)"
            );
            eprintln!("redis-server is not installed: skipping (apt-get install redis-server)");
            return None;
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut r = Redis {
            child: None,
            port,
            dir: dir.to_path_buf(),
            replica_of,
        };
        r.restart();
        Some(r)
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again, on the same port, empty) and waits until it answers PING.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.join(format!("redis-{}.log", self.port))).unwrap();
        let replica: Vec<String> = match self.replica_of {
            Some(m) => vec!["--replicaof".into(), "127.0.0.1".into(), m.to_string()],
            None => vec![],
        };
        let child = Command::new("redis-server")
            .args(&replica)
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir.to_str().unwrap(),
                "--dbfilename",
                &format!("dump-{}.rdb", self.port),
            ])
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        wait_until(Duration::from_secs(10), "redis-server answers PING", || {
            self.command("PING").is_some_and(|r| r.starts_with("+PONG"))
        });
    }

    /// Stops it (SIGKILL, by its pid): everything it held is gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// One inline command's raw reply, or `None` if Redis does not answer.
    pub fn command(&self, cmd: &str) -> Option<String> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
        s.write_all(format!("{cmd}\r\n").as_bytes()).ok()?;
        let mut buf = vec![0u8; 64 * 1024];
        let n = s.read(&mut buf).ok()?;
        (n > 0).then(|| String::from_utf8_lossy(&buf[..n]).into_owned())
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
