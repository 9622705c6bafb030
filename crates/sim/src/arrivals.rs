//! Mail that arrives during a run, beside its campaign: later campaign batches
//! (`[[arrival]]`) and transactional messages submitted through the SMTP gateway
//! (`[gateway]`), and what became of them: how long each later campaign took against its
//! fair share of its provider, how soon each gateway message was delivered.

use serde::{Deserialize, Serialize};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A campaign batch dropped into the spool `at_s` seconds into the run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arrival {
    pub at_s: f64,
    pub recipients: u64,
    pub tenant: String,
    pub campaign: String,
    /// Its recipients' domain (one of a provider's).
    pub domain: String,
    /// The rate this campaign's fair share of its provider comes to (messages a second),
    /// for the report's ideal: e.g. half the provider's while two tenants send to it.
    pub fair_rate: f64,
}

/// Transactional mail: one message every `every_ms` for `for_s` seconds, submitted to the
/// engine's gateway (a loopback listener without TLS, relaying for loopback clients).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayLoad {
    pub every_ms: u64,
    pub for_s: f64,
    pub domain: String,
}

/// A later campaign's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct ArrivalReport {
    pub campaign: String,
    pub tenant: String,
    pub recipients: u64,
    pub at_s: f64,
    pub delivered: u64,
    /// From its batch landing to its last delivery.
    pub took_s: f64,
    /// Its recipients at its fair rate.
    pub ideal_s: f64,
}

/// The gateway's messages: submitted, delivered, and the time from the 250 after the
/// final dot to the delivery log's line.
#[derive(Debug, Clone, Serialize, Default)]
pub struct GatewayReport {
    pub submitted: u64,
    pub delivered: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

/// Drops into `incoming` (staged in `tmp`) the batches of `all` due `now_s` seconds into
/// the run and not dropped yet; `dropped` holds each dropped one with when it landed.
pub fn drop_due(
    all: &[Arrival],
    now_s: f64,
    (tmp, incoming): (&Path, &Path),
    dropped: &mut Vec<(Arrival, u64)>,
) -> Result<(), String> {
    for a in all.iter().skip(dropped.len()) {
        if now_s < a.at_s {
            break;
        }
        let name = format!("{}.jsonl", a.campaign);
        write_batch(a, &tmp.join(&name)).map_err(|e| format!("{}: {e}", tmp.display()))?;
        std::fs::rename(tmp.join(&name), incoming.join(&name))
            .map_err(|e| format!("{}: {e}", incoming.display()))?;
        dropped.push((a.clone(), crate::run::unix_us() / 1000));
    }
    Ok(())
}

/// The report's lines for the later campaigns and the gateway's mail (none without them).
pub fn markdown(arrivals: &[ArrivalReport], gateway: Option<&GatewayReport>) -> String {
    let mut m = String::new();
    if !arrivals.is_empty() {
        m.push_str("\n| later campaign | tenant | recipients | landed at | delivered | took | fair-share ideal | of ideal |\n| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |\n");
        for a in arrivals {
            m.push_str(&format!(
                "| {} | {} | {} | {:.0} s | {} | {:.2} s | {:.2} s | {:.0}% |\n",
                a.campaign,
                a.tenant,
                a.recipients,
                a.at_s,
                a.delivered,
                a.took_s,
                a.ideal_s,
                a.took_s / a.ideal_s.max(1e-9) * 100.0
            ));
        }
    }
    if let Some(g) = gateway {
        m.push_str(&format!(
            "\nGateway (transactional) mail: {} submitted, {} delivered; from the 250 after its data to its delivery: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms.\n",
            g.submitted, g.delivered, g.p50_ms, g.p99_ms, g.max_ms
        ));
    }
    m
}

/// The batch file of `a`.
pub fn write_batch(a: &Arrival, path: &Path) -> std::io::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    let header = serde_json::json!({
        "campaign": a.campaign,
        "tenant": a.tenant,
        "from": "bounces@acme.example",
        "template": "From: Acme <news@acme.example>\r\nTo: {{ to }}\r\nSubject: A later campaign\r\n\r\nHello\r\n",
    });
    writeln!(w, "{header}")?;
    for i in 0..a.recipients {
        writeln!(w, "{{\"to\":\"{}{i}@{}\"}}", a.campaign, a.domain)?;
    }
    w.flush()
}

/// Per gateway recipient, when its message was accepted (Unix ms), as the thread goes.
pub type Submitted = Arc<Mutex<Vec<(String, u64)>>>;

/// A thread submitting `g`'s messages to the gateway at `addr`, each over its own
/// session (as applications do): per recipient, when its message was accepted (Unix ms).
pub fn start_gateway(g: GatewayLoad, addr: SocketAddr) -> (std::thread::JoinHandle<()>, Submitted) {
    let sent = Arc::new(Mutex::new(Vec::new()));
    let out = Arc::clone(&sent);
    let handle = std::thread::spawn(move || {
        let started = Instant::now();
        let mut n = 0u64;
        while started.elapsed().as_secs_f64() < g.for_s {
            let rcpt = format!("gw{n}@{}", g.domain);
            if let Ok(()) = submit(addr, &rcpt) {
                out.lock()
                    .expect("gateway log")
                    .push((rcpt, crate::run::unix_us() / 1000));
            }
            n += 1;
            let next = started + Duration::from_millis(g.every_ms * n);
            std::thread::sleep(next.saturating_duration_since(Instant::now()));
        }
    });
    (handle, sent)
}

/// One message over one lockstep session.
fn submit(addr: SocketAddr, rcpt: &str) -> Result<(), String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut w = s;
    let expect = |r: &mut BufReader<TcpStream>, code: &str| -> Result<(), String> {
        let mut line = String::new();
        loop {
            line.clear();
            r.read_line(&mut line).map_err(|e| e.to_string())?;
            if line.len() < 4 || !line.starts_with(code) {
                return Err(format!("expected {code}, got {line:?}"));
            }
            if line.as_bytes()[3] == b' ' {
                return Ok(());
            }
        }
    };
    expect(&mut r, "220")?;
    let steps: [(String, &str); 4] = [
        ("EHLO app.test\r\n".into(), "250"),
        ("MAIL FROM:<app@acme.example>\r\n".into(), "250"),
        (format!("RCPT TO:<{rcpt}>\r\n"), "250"),
        ("DATA\r\n".into(), "354"),
    ];
    for (cmd, code) in steps {
        w.write_all(cmd.as_bytes()).map_err(|e| e.to_string())?;
        expect(&mut r, code)?;
    }
    let body = format!(
        "From: App <app@acme.example>\r\nTo: <{rcpt}>\r\nSubject: Your code\r\nMessage-ID: <{rcpt}.gw@acme.example>\r\nX-Campaign: transactional\r\n\r\nYour code is 123456.\r\n.\r\n"
    );
    w.write_all(body.as_bytes()).map_err(|e| e.to_string())?;
    expect(&mut r, "250")?;
    let _ = w.write_all(b"QUIT\r\n");
    Ok(())
}

/// Milliseconds since the Unix epoch of a log line's `ts` (`2026-12-02T17:45:01.123Z`).
fn ts_ms(ts: &str) -> Option<u64> {
    let day = spate::config::parse_date(ts.get(..10)?)?;
    let (h, m, s) = (ts.get(11..13)?, ts.get(14..16)?, ts.get(17..19)?);
    let ms = ts
        .get(20..23)
        .and_then(|x| x.parse::<u64>().ok())
        .unwrap_or(0);
    let secs =
        h.parse::<u64>().ok()? * 3600 + m.parse::<u64>().ok()? * 60 + s.parse::<u64>().ok()?;
    Some(day * 86_400_000 + secs * 1000 + ms)
}

/// What the delivery log says of the later campaigns (each landed at `landed_ms`) and of
/// the gateway's messages.
pub fn analyse(
    log: &Path,
    arrivals: &[(Arrival, u64)],
    gateway: Option<&[(String, u64)]>,
) -> Result<(Vec<ArrivalReport>, Option<GatewayReport>), String> {
    let text = std::fs::read_to_string(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let mut last: Vec<(u64, u64)> = vec![(0, 0); arrivals.len()];
    let mut delivered_at: std::collections::HashMap<String, u64> = Default::default();
    for line in text.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if v["type"] != "Delivery" {
            continue;
        }
        let Some(ts) = v["ts"].as_str().and_then(ts_ms) else {
            continue;
        };
        let campaign = v["campaign"].as_str().unwrap_or("");
        if let Some(i) = arrivals.iter().position(|(a, _)| a.campaign == campaign) {
            last[i].0 += 1;
            last[i].1 = last[i].1.max(ts);
        }
        if campaign == "transactional" {
            if let Some(r) = v["recipient"].as_str() {
                delivered_at.insert(r.to_string(), ts);
            }
        }
    }
    let reports = arrivals
        .iter()
        .zip(&last)
        .map(|((a, landed), &(n, end))| ArrivalReport {
            campaign: a.campaign.clone(),
            tenant: a.tenant.clone(),
            recipients: a.recipients,
            at_s: a.at_s,
            delivered: n,
            took_s: end.saturating_sub(*landed) as f64 / 1000.0,
            ideal_s: a.recipients as f64 / a.fair_rate.max(1e-9),
        })
        .collect();
    let gateway = gateway.map(|sent| {
        let mut waits: Vec<u64> = sent
            .iter()
            .filter_map(|(r, at)| delivered_at.get(r).map(|d| d.saturating_sub(*at)))
            .collect();
        waits.sort_unstable();
        let pct = |q: f64| {
            waits
                .get(((waits.len() as f64 * q) as usize).min(waits.len().saturating_sub(1)))
                .map_or(0.0, |&ms| ms as f64)
        };
        GatewayReport {
            submitted: sent.len() as u64,
            delivered: waits.len() as u64,
            p50_ms: pct(0.5),
            p99_ms: pct(0.99),
            max_ms: waits.last().map_or(0.0, |&ms| ms as f64),
        }
    });
    Ok((reports, gateway))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_times_parse() {
        assert_eq!(ts_ms("1970-01-02T00:00:01.250Z"), Some(86_401_250));
        assert_eq!(ts_ms("garbage"), None);
    }
}
