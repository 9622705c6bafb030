//! DKIM's tests: keys, alignment, From parsing and the signature's fields. That signatures
//! verify is checked by an independent verifier (dkimpy) in tests/dkim.rs.

use super::*;
use crate::smtp::data::Data;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/dkim")
        .join(name)
}

fn signer(domain: &str, file: &str) -> Arc<Signer> {
    Arc::new(Signer::load(domain, "s1", &fixture(file), None).unwrap())
}

#[test]
fn keys_load_in_every_usual_pem_form_and_bad_ones_name_the_file() {
    assert_eq!(signer("a.test", "rsa2048.pem").algorithm(), "rsa-sha256");
    assert_eq!(
        signer("a.test", "rsa2048-pkcs8.pem").algorithm(),
        "rsa-sha256"
    );
    assert_eq!(
        signer("a.test", "ed25519.pem").algorithm(),
        "ed25519-sha256"
    );
    // PKCS#1 and PKCS#8 of one key publish one key.
    assert_eq!(
        signer("a.test", "rsa2048.pem").record(),
        signer("a.test", "rsa2048-pkcs8.pem").record()
    );
    let err = |file: &str| Signer::load("a.test", "s", &fixture(file), None).unwrap_err();
    let short = err("rsa1024.pem");
    assert!(
        short.contains("rsa1024.pem")
            && short.contains("too small; DKIM keys must have at least 2048 bits"),
        "{short}"
    );
    let ec = err("ec.pem");
    assert!(
        ec.contains("ec.pem") && ec.contains("neither an RSA nor an Ed25519"),
        "{ec}"
    );
    let missing = err("absent.pem");
    assert!(missing.contains("absent.pem: cannot read"), "{missing}");
    let not_pem = Signer::load("a.test", "s", Path::new("Cargo.toml"), None).unwrap_err();
    assert!(not_pem.contains("Cargo.toml: no private key"), "{not_pem}");
    // Debug never shows the key.
    let shown = format!("{:?}", signer("a.test", "ed25519.pem"));
    assert!(shown.contains("ed25519-sha256 d=a.test s=s1"), "{shown}");
}

#[test]
fn the_published_record_is_compared_with_the_key() {
    let rsa = signer("a.test", "rsa2048.pem");
    let ed = signer("a.test", "ed25519.pem");
    assert!(rsa.check_published(&[rsa.record()]).is_ok());
    assert!(ed
        .check_published(&["v=spf1 -all".into(), ed.record()])
        .is_ok());
    let wrong = ed.check_published(&[rsa.record()]).unwrap_err();
    assert!(
        wrong.contains("s1._domainkey.a.test publishes a different key"),
        "{wrong}"
    );
    let none = rsa.check_published(&["v=spf1 -all".into()]).unwrap_err();
    assert!(
        none.contains("has no DKIM key record; publish: v=DKIM1; k=rsa; p=MII"),
        "{none}"
    );
    // The bare RSAPublicKey form, folded with spaces as some DNS consoles do, is accepted.
    let bare = match &rsa.key {
        Key::Rsa(k) => BASE64.encode(k.public().as_ref()),
        Key::Ed25519(_) => unreachable!(),
    };
    let (a, b) = bare.split_at(40);
    assert!(rsa
        .check_published(&[format!("v=DKIM1;k=rsa; p={a} {b}")])
        .is_ok());
}

#[test]
fn alignment_takes_the_from_domain_or_its_nearest_parent_with_entries() {
    let s = Signers::new([
        signer("acme.example", "rsa2048.pem"),
        signer("acme.example", "ed25519.pem"),
        signer("news.acme.example", "ed25519.pem"),
    ]);
    assert_eq!(s.aligned("acme.example").len(), 2);
    assert_eq!(s.aligned("mail.acme.example").len(), 2);
    assert_eq!(s.aligned("news.acme.example").len(), 1);
    assert_eq!(
        s.aligned("x.news.acme.example")[0].domain,
        "news.acme.example"
    );
    assert!(s.aligned("example").is_empty());
    assert!(s.aligned("other.example").is_empty());
    assert!(s.aligned("notacme.example").is_empty());
}

#[test]
fn the_author_domain_is_read_from_the_usual_from_forms() {
    for (from, domain) in [
        ("news@acme.example", "acme.example"),
        ("Acme <news@Acme.Example>", "acme.example"),
        (
            "\"Acme, Inc. <x@evil.test>\" <news@acme.example>",
            "acme.example",
        ),
        ("news@acme.example (Acme (the shop))", "acme.example"),
        (
            "=?utf-8?q?Caf=C3=A9?= <news@café.example>",
            "xn--caf-dma.example",
        ),
    ] {
        assert_eq!(author_domain(from).as_deref(), Ok(domain), "{from}");
    }
    for from in [
        "a@x.test, b@y.test",
        "Acme <news@acme.example",
        "\"unterminated <a@b.test>",
        "undisclosed-recipients:;",
        "",
        "no address",
    ] {
        assert!(author_domain(from).is_err(), "{from}");
    }
    let m = |head: &str| from_field(format!("{head}\r\n\r\nbody").as_bytes());
    assert_eq!(m("Subject: x"), FromField::Missing);
    assert_eq!(
        m("From: a@x.test\r\nFrom: b@x.test"),
        FromField::Invalid("2 From fields".into())
    );
    assert_eq!(
        m("FROM:\r\n Acme\r\n <n@acme.example>"),
        FromField::Domain("acme.example".into())
    );
}

fn signed(message: &str, signers: &Signers) -> String {
    let data = Data::encode(message.as_bytes());
    let fields = sign(data.bytes(), signers, 1_700_000_000).unwrap();
    String::from_utf8(fields).unwrap()
}

#[test]
fn signatures_name_their_key_and_over_sign_the_listed_fields() {
    let s = Signers::new([
        signer("acme.example", "rsa2048.pem"),
        signer("acme.example", "ed25519.pem"),
    ]);
    let text = signed(
        "From: Acme <news@acme.example>\r\nTo: a@x.test\r\nSubject: hi\r\nReceived: x\r\n\r\nHello\r\n",
        &s,
    );
    let sigs: Vec<&str> = text.split("DKIM-Signature: ").skip(1).collect();
    assert_eq!(sigs.len(), 2, "{text}");
    assert!(sigs[0].starts_with("v=1; a=rsa-sha256; c=relaxed/relaxed; d=acme.example; s=s1;"));
    assert!(sigs[1].starts_with("v=1; a=ed25519-sha256;"));
    for sig in &sigs {
        assert!(sig.contains("t=1700000000;"), "{sig}");
        // Every line within 78 columns, and the field ends with its CRLF.
        assert!(sig.split("\r\n").all(|l| l.len() <= 78), "{sig}");
        assert!(sig.ends_with("\r\n"));
        let h: String = sig
            .split("h=")
            .nth(1)
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        // Present fields twice (once more than they occur), absent ones once, the rest not.
        assert!(
            h.starts_with("from:from:to:to:cc:reply-to:sender:subject:subject:date:"),
            "{h}"
        );
        assert!(
            h.ends_with(":list-unsubscribe:list-unsubscribe-post:feedback-id"),
            "{h}"
        );
        assert!(!h.contains("received"));
    }
    // The body hash of "Hello\r\n".
    let bh = BASE64.encode(ring::digest::digest(&ring::digest::SHA256, b"Hello\r\n"));
    assert!(sigs[0].contains(&format!("bh={bh};")), "{}", sigs[0]);
}

#[test]
fn only_aligned_messages_with_one_valid_from_are_signed() {
    let s = Signers::new([signer("acme.example", "ed25519.pem")]);
    assert!(signed("From: n@other.example\r\n\r\nx\r\n", &s).is_empty());
    assert!(signed("From: a@acme.example, b@acme.example\r\n\r\nx\r\n", &s).is_empty());
    assert!(signed("Subject: no from\r\n\r\nx\r\n", &s).is_empty());
    assert!(!signed("From: n@sub.acme.example\r\n\r\nx\r\n", &s).is_empty());
    let expiring = Signers::new([Arc::new(
        Signer::load(
            "acme.example",
            "s1",
            &fixture("ed25519.pem"),
            Some(Duration::from_secs(86_400)),
        )
        .unwrap(),
    )]);
    assert!(signed("From: n@acme.example\r\n\r\nx\r\n", &expiring).contains("x=1700086400;"));
}

#[test]
fn an_ed25519_signature_verifies_over_the_canonical_header_data() {
    // The full check is dkimpy's (tests/dkim.rs); this one ties `b=` to ring's verifier
    // over the data RFC 6376 3.7 says is signed, with the message's stuffed dots removed.
    let ed = signer("acme.example", "ed25519.pem");
    let s = Signers::new([Arc::clone(&ed)]);
    let message = "From: n@acme.example\r\nSubject:  two\r\n  lines\r\n\r\n.leading dot\r\n";
    let text = signed(message, &s);
    let (before_b, b) = text.trim_end().rsplit_once("b=").unwrap();
    let sig = BASE64
        .decode(b.split_whitespace().collect::<String>())
        .unwrap();
    let mut data = b"from:n@acme.example\r\nsubject:two lines\r\n".to_vec();
    relaxed_header(format!("{before_b}b=").as_bytes(), &mut data);
    data.truncate(data.len() - 2);
    let hash = ring::digest::digest(&ring::digest::SHA256, &data);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, ed.public_key())
        .verify(hash.as_ref(), &sig)
        .expect("the signature verifies");
    let bh = BASE64.encode(ring::digest::digest(
        &ring::digest::SHA256,
        b".leading dot\r\n",
    ));
    assert!(text.contains(&format!("bh={bh};")), "{text}");
}

#[test]
fn a_header_section_past_its_bound_is_not_signed() {
    let s = Signers::new([signer("acme.example", "ed25519.pem")]);
    let filler =
        format!("X-Filler: {}\r\n", "f".repeat(900)).repeat(HEADER_SECTION_BYTES_MAX / 900 + 2);
    let data = Data::encode(format!("From: n@acme.example\r\n{filler}\r\nbody\r\n").as_bytes());
    let e = sign(data.bytes(), &s, 1_700_000_000).unwrap_err();
    assert_eq!(
        e,
        format!("header section over {HEADER_SECTION_BYTES_MAX} bytes")
    );
}
