//! DKIM signing checked by parties none of which is written here: Postfix's `smtp-sink`
//! receives the mail and dumps each message, dnsmasq serves the selectors' TXT records (as
//! `spate check-config` prints them), and Python's dkimpy verifies every signature against
//! them. Campaign mail with non-ASCII merge values, long folded headers, leading dots and
//! lines near and past 998 octets, and mail submitted to the gateway with Python's smtplib,
//! each signed with RSA-2048 and Ed25519 side by side. A receiver without 8BITMIME gets no
//! signed 8-bit message: it is deferred, unaltered, with the reason.

mod common;

use common::dnsmasq::Dnsmasq;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/fixtures/dkim");

/// An interpreter with dkimpy (Debian's python3-dkim, python3-nacl for Ed25519 and
/// python3-dnspython, which .ci/run installs); None outside CI if there is none.
fn python_with_dkimpy() -> Option<String> {
    for python in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(python)
            .args(["-c", "import dkim, nacl, dns.query"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(python.to_string());
        }
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must have dkimpy (.ci/run installs python3-dkim)"
    );
    eprintln!("dkimpy is not installed: skipping (apt-get install python3-dkim python3-nacl)");
    None
}

/// Runs `python` with `args`: what it printed, or the test fails with what it said.
fn run_python(python: &str, args: &[String]) -> String {
    let out = Command::new(python).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Postfix's smtp-sink on a loopback port, dumping each message into `dir`; killed by its
/// pid on drop. `no_8bitmime`: it does not announce 8BITMIME (`-8`).
struct SmtpSink {
    child: Child,
    port: u16,
}

impl SmtpSink {
    fn start(dir: &Path, no_8bitmime: bool) -> Option<SmtpSink> {
        const SMTP_SINK: &str = "/usr/sbin/smtp-sink";
        if !Path::new(SMTP_SINK).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have smtp-sink (.ci/run installs postfix)"
            );
            return None;
        }
        // smtp-sink runs as nobody, who must reach and write the dumps' folder.
        std::fs::create_dir_all(dir).unwrap();
        for p in [dir, dir.parent().unwrap()] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o777)).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new(SMTP_SINK);
        cmd.args(["-u", "nobody", "-d"])
            .arg(format!("{}/%M.", dir.display()));
        if no_8bitmime {
            cmd.arg("-8");
        }
        let child = cmd
            .arg(format!("127.0.0.1:{port}"))
            .arg("64")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start smtp-sink");
        let sink = SmtpSink { child, port };
        wait_until(Duration::from_secs(10), "smtp-sink to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Some(sink)
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The messages smtp-sink dumped, by recipient (its `X-Rcpt-Args` line).
fn dumps(dir: &Path) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let text =
            String::from_utf8_lossy(&std::fs::read(e.path()).unwrap_or_default()).into_owned();
        if let Some(line) = text.lines().find(|l| l.starts_with("X-Rcpt-Args: <")) {
            let rcpt = line["X-Rcpt-Args: <".len()..]
                .trim_end_matches('>')
                .to_string();
            out.push((rcpt, e.path()));
        }
    }
    out.sort();
    out
}

/// Verifies every DKIM-Signature of each message with dkimpy, keys looked up (over TCP) at
/// the dnsmasq on `port`; prints one line per signature: file, index, d=, s=, a=, result.
const VERIFY: &str = r#"
import sys, dkim, dns.message, dns.query, dns.rdatatype
port = int(sys.argv[1])
def dnsfunc(name, timeout=5):
    q = dns.message.make_query(name.decode() if isinstance(name, bytes) else name, "TXT")
    r = dns.query.tcp(q, "127.0.0.1", port=port, timeout=timeout)
    for rrset in r.answer:
        for rd in rrset:
            if rd.rdtype == dns.rdatatype.TXT:
                return b"".join(rd.strings)
    return None
for path in sys.argv[2:]:
    raw = open(path, "rb").read()
    # smtp-sink stores lines with LF; a mailbox's line ends are the MDA's business.
    msg = raw.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    head = msg.split(b"\r\n\r\n", 1)[0]
    n = sum(1 for l in head.split(b"\r\n") if l.lower().startswith(b"dkim-signature:"))
    for i in range(n):
        d = dkim.DKIM(msg)
        ok = d.verify(idx=i, dnsfunc=dnsfunc)
        f = d.signature_fields
        print(path, i, f.get(b"d", b"").decode(), f.get(b"s", b"").decode(), f.get(b"a", b"").decode(), ok)
"#;

/// `check-config`'s `dkim ...: NAME TXT "RECORD"` lines as dnsmasq `txt-record` lines, the
/// record cut into DNS character-strings of at most 255 octets.
fn txt_records(check_config_output: &str, skip: &str) -> String {
    let mut zone = String::new();
    for line in check_config_output
        .lines()
        .filter(|l| l.starts_with("dkim "))
    {
        let (_, rest) = line.split_once(": ").unwrap();
        let (name, record) = rest.split_once(" TXT ").unwrap();
        if name.contains(skip) {
            continue;
        }
        let record = record.trim_matches('"');
        let parts: Vec<String> = record
            .as_bytes()
            .chunks(255)
            .map(|c| format!("\"{}\"", std::str::from_utf8(c).unwrap()))
            .collect();
        zone.push_str(&format!("txt-record={name},{}\n", parts.join(",")));
    }
    zone
}

#[test]
fn signatures_verify_with_dkimpy_for_campaign_and_gateway_mail() {
    let Some(python) = python_with_dkimpy() else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let (Some(sink), Some(sink7)) = (
        SmtpSink::start(&work.path().join("dumps"), false),
        SmtpSink::start(&work.path().join("dumps7"), true),
    ) else {
        return;
    };
    let gateway_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // Two keys for acme.example, side by side; one for other.example whose record is not
    // published (a loud warning at start, and nothing signed with it here).
    let dkim = format!(
        "[[dkim]]\ndomain = \"acme.example\"\nselector = \"rsa1\"\nkey = \"{FIXTURES}/rsa2048.pem\"\n\
         [[dkim]]\ndomain = \"acme.example\"\nselector = \"ed1\"\nkey = \"{FIXTURES}/ed25519.pem\"\n\
         [[dkim]]\ndomain = \"other.example\"\nselector = \"gone\"\nkey = \"{FIXTURES}/ed25519-b.pem\"\n"
    );
    let config = |dns_port: u16, dkim: &str| {
        format!(
            "[delivery]\nallow_private_destinations = true\nretry_first = \"1s\"\n\
             [dns]\nnameservers = [\"127.0.0.1:{dns_port}\"]\n\
             [[routes]]\ndomain = \"x.test\"\nhosts = [\"127.0.0.1:{}\"]\n\
             [[routes]]\ndomain = \"seven.test\"\nhosts = [\"127.0.0.1:{}\"]\n\
             [[listeners]]\nlisten = \"127.0.0.1:{gateway_port}\"\ntls = \"none\"\nrelay_networks = [\"127.0.0.1\"]\n{dkim}",
            sink.port, sink7.port
        )
    };
    // The records to publish, as the operator gets them.
    let env = Env::new(2, "", &config(9, &dkim));
    let (code, out, err) = env.run_cli(&["check-config", "-c", env.config.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let dns_dir = tempfile::tempdir().unwrap();
    let zone = format!("local=/example/\n{}", txt_records(&out, "other.example"));
    let Some(dns) = Dnsmasq::start_with(dns_dir.path(), &zone) else {
        return;
    };
    env.write_config(2, "", &config(dns.port, &dkim));
    let engine = env.start();
    wait_until(Duration::from_secs(20), "the DKIM record checks", || {
        engine.stderr().matches("DKIM: ").count() >= 3
    });
    let stderr = engine.stderr();
    assert!(
        stderr.contains("DKIM: signatures by ")
            && stderr.contains("ed25519-b.pem will not verify: gone._domainkey.other.example has no DKIM key record; publish: v=DKIM1; k=ed25519; p="),
        "{stderr}"
    );
    assert!(
        stderr.contains("DKIM: rsa1._domainkey.acme.example publishes the key of"),
        "{stderr}"
    );
    assert!(
        stderr.contains("DKIM: ed1._domainkey.acme.example publishes the key of"),
        "{stderr}"
    );

    // A campaign: non-ASCII merge values, a Subject long enough to be folded, body lines
    // with leading dots, one line of 990 octets and one of 1,500 (broken by the writer).
    let template = format!(
        "From: Acme <news@acme.example>\r\nTo: {{{{ to }}}}\r\nSubject: Your spring offer, {{{{ first_name }}}}, {}\r\n\
         MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\
         Hello {{{{ first_name }}}},\r\n.a line with a leading dot\r\n..and two\r\n.\r\n{}\r\n{}\r\ntrailing  spaces \t \r\n\r\n\r\n",
        "with words that go on and on ".repeat(6),
        "x".repeat(990),
        "y".repeat(1500)
    );
    let header = serde_json::json!({
        "campaign": "spring", "tenant": "acme", "from": "bounces@acme.example", "template": template
    });
    let batch = format!(
        "{header}\n{}\n{}\n{}\n{}\n",
        serde_json::json!({"to": "zoe@x.test", "vars": {"first_name": "Zoë"}}),
        serde_json::json!({"to": "li@x.test", "vars": {"first_name": "李小龍"}}),
        serde_json::json!({"to": "long@x.test", "vars": {"first_name": "Ω ".repeat(200)}}),
        serde_json::json!({"to": "old@seven.test", "vars": {"first_name": "Zoë"}}),
    );
    env.drop_input("spring.jsonl", batch.as_bytes());
    // Gateway mail, from a subdomain (aligned with acme.example's keys), by smtplib.
    let script = format!(
        "import smtplib\n\
         msg = 'From: Ops <ops@mail.acme.example>\\r\\nTo: gw@x.test\\r\\nSubject: nightly report\\r\\n\\r\\n.dot first\\r\\nall ascii\\r\\n'\n\
         s = smtplib.SMTP('127.0.0.1', {gateway_port}, timeout=20)\n\
         print(s.sendmail('ops@mail.acme.example', ['gw@x.test'], msg))\n\
         s.quit()\n"
    );
    run_python(&python, &["-c".into(), script]);

    wait_final(&env, &engine, 4, Duration::from_secs(60));
    // The receiver without 8BITMIME got nothing; the signed 8-bit message waits unaltered.
    wait_until(Duration::from_secs(20), "the 8BITMIME deferral", || {
        env.log_records()
            .iter()
            .any(|r| r["type"] == "TransientFailure" && r["recipient"] == "old@seven.test")
    });
    let deferral = env
        .log_records()
        .into_iter()
        .find(|r| r["type"] == "TransientFailure" && r["recipient"] == "old@seven.test")
        .unwrap();
    assert!(
        deferral["response"]
            .as_str()
            .unwrap()
            .contains("DKIM-signed 8-bit content and the server does not offer 8BITMIME"),
        "{deferral}"
    );
    assert!(dumps(&work.path().join("dumps7")).is_empty());

    let received = dumps(&work.path().join("dumps"));
    let rcpts: Vec<&str> = received.iter().map(|(r, _)| r.as_str()).collect();
    assert_eq!(
        rcpts,
        ["gw@x.test", "li@x.test", "long@x.test", "zoe@x.test"]
    );
    let zoe = std::fs::read_to_string(&received[3].1).unwrap();
    assert!(
        zoe.contains("Hello Zoë,\n.a line with a leading dot\n..and two\n"),
        "{zoe}"
    );
    let mut args = vec!["-c".to_string(), VERIFY.to_string(), dns.port.to_string()];
    args.extend(received.iter().map(|(_, p)| p.display().to_string()));
    let verdicts = run_python(&python, &args);
    let lines: Vec<&str> = verdicts.lines().collect();
    assert_eq!(
        lines.len(),
        8,
        "two signatures on each of 4 messages:\n{verdicts}"
    );
    for l in &lines {
        assert!(
            l.ends_with(" True"),
            "dkimpy refused a signature:\n{verdicts}"
        );
        assert!(l.contains(" acme.example "), "{l}");
    }
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains(" rsa1 rsa-sha256 "))
            .count(),
        4
    );
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.contains(" ed1 ed25519-sha256 "))
            .count(),
        4
    );

    // A reload with a key that will not do is refused, naming the file; signing goes on.
    let bad = format!(
        "[[dkim]]\ndomain = \"acme.example\"\nselector = \"rsa1\"\nkey = \"{FIXTURES}/rsa1024.pem\"\n"
    );
    env.write_config(2, "", &config(dns.port, &bad));
    engine.signal(libc::SIGHUP);
    wait_until(Duration::from_secs(10), "the reload refusal", || {
        engine.stderr().contains("reload refused")
    });
    let stderr = engine.stderr();
    assert!(
        stderr.contains("dkim[0].key: ") && stderr.contains("rsa1024.pem: RSA key too small"),
        "{stderr}"
    );
    assert_eq!(engine.stop(Duration::from_secs(20)).code(), Some(0));
}
