//! Shared helpers for tests that run the real `spate` binary. Every process a test starts is
//! owned by an `EngineProcess`, which kills and reaps it on drop, so a failing assertion never
//! leaves an engine behind. Every wait is bounded.

#![allow(dead_code)]

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_spate");

/// A scratch installation: configuration file, data, spool and log directories.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
}

impl Env {
    /// `extra` is appended to the configuration (whole sections). Unless `extra` has its own
    /// `[delivery]` and `[dns]`, delivery is paused and DNS points at a closed loopback port,
    /// so a test never sends anything off this machine; unless it has `[checks]`, the DKIM
    /// and unsubscribe checks are off.
    pub fn new(shards: usize, queue_section: &str, extra: &str) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("spate.toml");
        let env = Env { dir, config };
        env.write_config(shards, queue_section, extra);
        env
    }

    pub fn write_config(&self, shards: usize, queue_section: &str, extra: &str) {
        self.write_config_with_engine(shards, "", queue_section, extra);
    }

    /// As `write_config`, with `engine_keys` added to the `[engine]` section.
    pub fn write_config_with_engine(
        &self,
        shards: usize,
        engine_keys: &str,
        queue_section: &str,
        extra: &str,
    ) {
        let base = self.dir.path();
        let mut extra = extra.to_string();
        if !extra.contains("[delivery]") {
            extra.push_str("\n[delivery]\npaused = true\n");
        }
        if !extra.contains("[dns]") {
            extra.push_str("\n[dns]\nnameservers = [\"127.0.0.1:9\"]\n");
        }
        // Test campaigns are unsigned and have no unsubscribe URL: the checks before
        // sending would add a `Check` record to every log.
        if !extra.contains("[checks]") {
            extra.push_str("\n[checks]\ndkim = \"off\"\nunsubscribe = \"off\"\n");
        }
        // Tests run side by side: each engine's admin API takes a free port, which it
        // writes to <data_dir>/admin/listen.
        if !extra.contains("[admin]") {
            extra.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
        }
        let text = format!(
            "[engine]\nshards = {shards}\n{engine_keys}\ndata_dir = {:?}\n[queue]\nsegment_bytes = \"32MiB\"\n{queue_section}\n[spool]\ndir = {:?}\nscan_interval_ms = 50\n[log]\ndir = {:?}\n{extra}\n",
            base.join("data"),
            base.join("spool"),
            base.join("log"),
        );
        std::fs::write(&self.config, text).expect("write config");
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.path("data")
    }

    /// Writes `bytes` under spool/tmp, then renames it into spool/incoming, as producers do.
    pub fn drop_input(&self, name: &str, bytes: &[u8]) {
        let tmp = self.path("spool/tmp");
        std::fs::create_dir_all(&tmp).unwrap();
        std::fs::create_dir_all(self.path("spool/incoming")).unwrap();
        std::fs::write(tmp.join(name), bytes).unwrap();
        std::fs::rename(tmp.join(name), self.path("spool/incoming").join(name)).unwrap();
    }

    pub fn start(&self) -> EngineProcess {
        self.start_with(&[])
    }

    /// `spate [ARGS] run -c CONFIG`, ready when its stderr says so.
    pub fn start_with(&self, args: &[&str]) -> EngineProcess {
        self.start_with_env(args, &[])
    }

    /// As `start_with`, with `vars` in the engine's environment.
    pub fn start_with_env(&self, args: &[&str], vars: &[(&str, &str)]) -> EngineProcess {
        let stderr_path = self.path(&format!(
            "engine-{}.stderr",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        let child = Command::new(BIN)
            .args(args)
            .args(["run", "-c"])
            .arg(&self.config)
            .envs(vars.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr_path).unwrap())
            .spawn()
            .expect("spawn spate run");
        let engine = EngineProcess {
            child: Some(child),
            stderr_path,
        };
        wait_until(Duration::from_secs(30), "engine ready", || {
            engine.stderr().contains("running: ")
        });
        engine
    }

    /// Complete delivery-log records, parsed.
    pub fn log_records(&self) -> Vec<serde_json::Value> {
        let text = std::fs::read_to_string(self.path("log/deliveries.jsonl")).unwrap_or_default();
        // The engine may be mid-write: only newline-terminated lines are complete.
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        complete
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad log line {l:?}: {e}")))
            .collect()
    }

    /// The first delivery-log record of one event type (panics when there is none).
    pub fn first_record(&self, event: &str) -> serde_json::Value {
        self.log_records()
            .into_iter()
            .find(|r| r["type"] == event)
            .unwrap_or_else(|| panic!("no {event} record in the delivery log"))
    }

    pub fn count_events(&self, event: &str) -> usize {
        self.log_records()
            .iter()
            .filter(|r| r["type"] == event)
            .count()
    }

    /// Files in a spool subdirectory, sorted.
    pub fn spool_files(&self, sub: &str) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path(&format!("spool/{sub}")))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter(|e| e.file_type().map(|t| t.is_file()).unwrap_or(false))
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    pub fn run_cli(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run spate");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// Queued recipients' addresses across shards, read from the queue files.
    pub fn queued_recipients(&self) -> Vec<String> {
        spate::summary::read_shards(&self.data_dir())
            .expect("read queue")
            .iter()
            .flat_map(|v| v.live_recipients().map(str::to_string).collect::<Vec<_>>())
            .collect()
    }
}

/// A running engine; killed with SIGKILL and reaped if still running when dropped.
pub struct EngineProcess {
    child: Option<Child>,
    pub stderr_path: PathBuf,
}

impl EngineProcess {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling the child we spawned, by its pid.
        unsafe { libc::kill(self.pid(), sig) };
    }

    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for the exit status.
    pub fn stop(mut self, within: Duration) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait(within)
    }

    pub fn wait(&mut self, within: Duration) -> ExitStatus {
        let child = self.child.as_mut().expect("running");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "engine did not exit within {within:?}: {}",
                self.stderr()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The exit status if the engine has exited (without waiting).
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let child = self.child.as_mut().expect("running");
        let status = child.try_wait().expect("try_wait")?;
        self.child = None;
        Some(status)
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }
}

impl Drop for EngineProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Polls `f` every 5 ms until it is true; panics with `what` after `within`.
pub fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

pub const HEADER: &str = r#"{"campaign":"spring-sale","tenant":"acme","from":"bounces@acme.example","template":"From: Acme <news@acme.example>\r\nTo: {{ to }}\r\nSubject: Hi {{ first_name }}\r\n\r\nHello {{ first_name }}!\r\n"}"#;

/// A campaign batch of `n` valid recipients `user{i}@d{i % 20}.example`.
pub fn campaign(n: usize) -> Vec<u8> {
    let mut s = String::with_capacity(n * 64 + HEADER.len());
    s.push_str(HEADER);
    s.push('\n');
    for i in 0..n {
        s.push_str(&format!(
            "{{\"to\":\"user{i}@d{}.example\",\"vars\":{{\"first_name\":\"N{i}\"}}}}\n",
            i % 20
        ));
    }
    s.into_bytes()
}

pub fn is_file(p: &Path) -> bool {
    p.is_file()
}

pub mod dnsmasq;
pub mod hostile;
pub mod redis;
pub mod rng;
pub mod sink;
pub mod tmpfs;

/// Waits until `n` recipients have a final record (Delivery or Bounce); on timeout, panics
/// with the last event of the ones that do not, and the engine's stderr.
pub fn wait_final(env: &Env, engine: &EngineProcess, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let records = env.log_records();
        let done = records
            .iter()
            .filter(|r| r["type"] == "Delivery" || r["type"] == "Bounce")
            .count();
        if done >= n {
            return;
        }
        if Instant::now() > deadline {
            let mut last: std::collections::HashMap<String, serde_json::Value> = Default::default();
            for r in records {
                last.insert(r["recipient"].as_str().unwrap_or("").to_string(), r);
            }
            let stuck: Vec<String> = last
                .values()
                .filter(|r| r["type"] != "Delivery" && r["type"] != "Bounce")
                .take(6)
                .map(|r| r.to_string())
                .collect();
            panic!(
                "{done}/{n} final; stuck: {stuck:#?}\nengine stderr:\n{}",
                engine.stderr()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
