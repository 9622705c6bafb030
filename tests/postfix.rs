//! Delivery to a real SMTP server nobody here wrote: a private Postfix instance (installed by
//! .ci/run) on a loopback port, STARTTLS on with a self-signed certificate, relaying the test
//! domain to its `discard:` transport. Postfix's own log proves what it accepted, and (with
//! the engine's client as its debug peer) how: each message as one BDAT chunk, since Postfix
//! offers CHUNKING and the engine uses it by default.

mod common;

use common::*;
use spate_sim::postfix::{Postfix, PostfixError};
use std::path::Path;
use std::time::Duration;

/// The private instance (spate_sim::postfix) relaying `pf.test` to its `discard:` transport,
/// STARTTLS offered with a certificate made here; None (the test skips) where Postfix or root
/// is missing outside CI.
fn start_postfix(dir: &Path) -> Option<Postfix> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    let main_cf = "relay_domains = pf.test\nrelay_transport = discard:\n\
                   smtpd_tls_security_level = may\nsmtpd_tls_cert_file = DIR/cert.pem\n\
                   smtpd_tls_key_file = DIR/key.pem\nsmtpd_tls_loglevel = 1\n\
                   debug_peer_list = 127.0.0.1\n";
    match Postfix::start(dir, main_cf) {
        Ok(pf) => Some(pf),
        Err(PostfixError::Unavailable(why)) => {
            assert!(
                std::env::var_os("CI").is_none(),
                "CI must have Postfix and root: {why}"
            );
            eprintln!("skipping the Postfix test: {why}");
            None
        }
        Err(PostfixError::Failed(why)) => panic!("{why}"),
    }
}

#[test]
fn delivers_to_postfix_over_starttls_and_postfix_accepts_each_once() {
    const N: usize = 50;
    let pf_dir = tempfile::tempdir().unwrap();
    let Some(pf) = start_postfix(pf_dir.path()) else {
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
    // What smtpd read from the engine, as its debug log shows it: one `BDAT n LAST` a
    // message, and never DATA. A wrong count would have put the session out of step.
    let commands = |verb: &str| {
        log.lines()
            .filter(|l| l.contains(&format!("< localhost[127.0.0.1]: {verb}")))
            .count()
    };
    let bdat_last = log
        .lines()
        .filter(|l| l.contains("< localhost[127.0.0.1]: BDAT ") && l.ends_with(" LAST"))
        .count();
    assert_eq!((bdat_last, commands("BDAT "), commands("DATA")), (N, N, 0));
    drop(pf);
}
