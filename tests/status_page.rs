//! The status page in a real browser (Debian's Chromium, headless, driven through
//! chromedriver's WebDriver API): while a campaign runs, the provider's row is there and
//! its numbers change without a reload; on a phone's width every row is a card. With
//! `SPATE_SCREENSHOT=PATH` the test saves what the browser drew (docs/status-page.png is
//! one). Skipped, saying so, where chromium or chromedriver is not installed; `.ci/run`
//! installs both.

mod common;

use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// chromedriver on a loopback port, killed by its pid on drop.
struct Driver {
    child: Child,
    port: u16,
    session: Option<String>,
}

impl Driver {
    fn start() -> Option<Driver> {
        for bin in ["/usr/bin/chromedriver", "/usr/bin/chromium"] {
            if !std::path::Path::new(bin).exists() {
                eprintln!(
                    "{bin} is not installed: skipping (apt-get install chromium chromium-driver)"
                );
                return None;
            }
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("/usr/bin/chromedriver")
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver");
        let mut d = Driver {
            child,
            port,
            session: None,
        };
        wait_until(Duration::from_secs(20), "chromedriver up", || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900"]
            }
        }}});
        let v = d.call("POST", "/session", Some(caps));
        d.session = Some(
            v["value"]["sessionId"]
                .as_str()
                .unwrap_or_else(|| panic!("no session: {v}"))
                .to_string(),
        );
        Some(d)
    }

    /// One WebDriver command; the reply's JSON.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        // chromedriver may keep the connection open: read the head, then its length.
        let mut reply = Vec::new();
        let mut buf = [0u8; 64 * 1024];
        loop {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "chromedriver closed without a reply");
            reply.extend_from_slice(&buf[..n]);
            let Some(at) = reply.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&reply[..at]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            while reply.len() < at + 4 + length {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "chromedriver closed mid-reply");
                reply.extend_from_slice(&buf[..n]);
            }
            return serde_json::from_slice(&reply[at + 4..at + 4 + length]).unwrap_or(Value::Null);
        }
    }

    fn session(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let id = self.session.as_ref().unwrap();
        self.call(method, &format!("/session/{id}{path}"), body)
    }

    fn script(&self, js: &str) -> Value {
        self.session(
            "POST",
            "/execute/sync",
            Some(json!({"script": js, "args": []})),
        )["value"]
            .clone()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        if self.session.is_some() {
            let _ = self.session("DELETE", "", None);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_status_page_shows_the_providers_and_follows_a_running_campaign() {
    use spate_sim::dns::{DnsResponder, Zone};
    use spate_sim::profile::SinkProfile;
    let Some(driver) = Driver::start() else {
        return;
    };
    let profile = SinkProfile::parse(
        "[[provider]]\nname = \"paced\"\ndomains = [\"paced.test\"]\nmx = \"mx.paced.test\"\nlisten = [\"127.0.0.1\"]\n",
        "page",
    )
    .unwrap();
    let zone = Zone::for_sink(&profile);
    let sink = spate_sim::sink::Sink::start(profile).unwrap();
    let dns = DnsResponder::start("127.0.0.1:0".parse().unwrap(), zone).unwrap();
    let extra = format!(
        "[delivery]\nallow_private_destinations = true\n[dns]\nnameservers = [\"{}\"]\n[smtp]\nport = {}\n\
         [providers.gmail]\nmx_suffixes = [\"mx.paced.test\"]\nmax_message_rate = \"100/s\"\n",
        dns.addr, sink.port
    );
    let env = Env::new(2, "", &extra);
    let engine = env.start();
    let mut s = String::from(
        "{\"campaign\":\"winter-sale\",\"tenant\":\"acme\",\"from\":\"b@acme.example\",\"template\":\"From: a@acme.example\\r\\nTo: {{ to }}\\r\\nSubject: hi\\r\\n\\r\\nHello\\r\\n\"}\n",
    );
    for i in 0..2000 {
        s.push_str(&format!("{{\"to\":\"r{i}@paced.test\"}}\n"));
    }
    env.drop_input("winter.jsonl", s.as_bytes());
    let url = std::fs::read_to_string(env.path("data/admin/listen")).unwrap();
    driver.session("POST", "/url", Some(json!({"url": url.trim()})));

    let row = "document.querySelector('tr.scope[data-scope=\"gmail\"]')";
    let delivered = || -> u64 {
        driver
            .script(&format!(
                "const r = {row}; return r ? Number(r.dataset.delivered) : -1;"
            ))
            .as_u64()
            .unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while delivered() == 0 || delivered() == u64::MAX {
        assert!(Instant::now() < deadline, "no gmail row with deliveries");
        std::thread::sleep(Duration::from_millis(200));
    }
    let first = delivered();
    let updates_before = driver
        .script("return Number(document.body.dataset.updates)")
        .as_u64()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    let second = delivered();
    let updates_after = driver
        .script("return Number(document.body.dataset.updates)")
        .as_u64()
        .unwrap();
    assert!(
        second > first,
        "the page's count did not move: {first} then {second}"
    );
    assert!(
        updates_after >= updates_before + 2,
        "the page updates itself"
    );
    let text = driver
        .script(&format!("return {row}.innerText"))
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        text.contains("rate ceiling") || text.contains("sending"),
        "{text}"
    );
    let campaign = driver
        .script("const r = document.querySelector('tr.campaign[data-campaign=\"winter-sale\"]'); return r ? r.innerText : ''")
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(campaign.contains("acme"), "campaign row: {campaign}");
    if let Ok(path) = std::env::var("SPATE_SCREENSHOT") {
        // Some seconds of history for the sparklines.
        std::thread::sleep(Duration::from_secs(8));
        let png = driver.session("GET", "/screenshot", None)["value"]
            .as_str()
            .unwrap()
            .to_string();
        let bytes = base64_decode(&png);
        std::fs::write(&path, bytes).unwrap();
    }

    // A phone's width: the rows become labelled cards, long words and all.
    let long = format!("ticket-{}", "x".repeat(120));
    let (code, _, err) = env.run_cli(&[
        "queue",
        "suspend",
        "campaign:another",
        "--reason",
        &long,
        "-c",
        env.config.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{err}");
    driver.session(
        "POST",
        "/window/rect",
        Some(json!({"width": 390, "height": 844})),
    );
    std::thread::sleep(Duration::from_millis(1200));
    let display = driver
        .script(&format!("return getComputedStyle({row}).display"))
        .as_str()
        .unwrap_or("")
        .to_string();
    assert_eq!(display, "block");
    let fits = driver
        .script(
            "return document.documentElement.scrollWidth <= window.innerWidth + 1 && \
             Array.from(document.querySelectorAll('main *')).every(e => \
               e.getBoundingClientRect().right <= window.innerWidth + 1)",
        )
        .as_bool()
        .unwrap_or(false);
    assert!(fits, "nothing reaches past the phone's screen");
    if let Ok(path) = std::env::var("SPATE_SCREENSHOT") {
        let png = driver.session("GET", "/screenshot", None)["value"]
            .as_str()
            .unwrap()
            .to_string();
        std::fs::write(path.replace(".png", "-phone.png"), base64_decode(&png)).unwrap();
    }
    drop(driver);
    assert_eq!(engine.stop(Duration::from_secs(30)).code(), Some(0));
    drop(dns);
    sink.stop().unwrap();
}

/// Standard base64, as WebDriver sends screenshots.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            _ => 63,
        }
    };
    let bytes: Vec<u8> = s
        .bytes()
        .filter(|&c| c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        out.push((n >> 16) as u8);
        if chunk.len() > 2 {
            out.push((n >> 8) as u8);
        }
        if chunk.len() > 3 {
            out.push(n as u8);
        }
    }
    out
}
