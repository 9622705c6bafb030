//! The sender rules' parsers of outside bytes: DKIM signing of any message (`dkim::sign`,
//! which reads its header section, From and body), the From parser, the suppression store's
//! lines, the unsubscribe token check and the campaign rules applied to any template.
//!
//! Input: the bytes, used whole as each parser's input.
//!
//! Properties:
//! - none panics;
//! - signatures are ASCII fields of lines within 78 octets, one per key, each starting
//!   `DKIM-Signature:`; nothing is signed unless the From sent is one address in
//!   acme.example;
//! - a From domain is lower-case ASCII;
//! - store lines read back are what re-encoding them writes;
//! - no token but one this secret made verifies, and one it made names its recipient;
//! - the rules put what they add before the template and leave the template as it was.

use spate::compliance::{Rules, Unsubscribe};
use spate::config::Checks;
use spate::dkim::{from_field, sign, FromField, Signer, Signers};
use spate::smtp::data::Data;
use spate::suppression::store;
use std::path::Path;
use std::sync::Arc;
use std::sync::OnceLock;

const ED25519: &[u8] = include_bytes!("../../tests/fixtures/dkim/ed25519.pem");

fn signers() -> &'static Signers {
    static S: OnceLock<Signers> = OnceLock::new();
    S.get_or_init(|| {
        let k = Signer::from_pem("acme.example", "s", ED25519, Path::new("ed25519.pem"), None)
            .expect("fixture key");
        Signers::new([Arc::new(k)])
    })
}

pub fn check(input: &[u8]) {
    let data = Data::encode(input);
    let fields = sign(data.bytes(), signers(), 1_700_000_000).unwrap_or_default();
    // The From that counts is the one sent (bare CRs and LFs made line breaks, long lines
    // folded), not the one in the raw input.
    let sent = data.clone().into_chunk();
    let from = from_field(&sent);
    if !fields.is_empty() {
        assert!(fields.is_ascii(), "a signature is not ASCII");
        let text = String::from_utf8_lossy(&fields);
        assert_eq!(
            text.matches("DKIM-Signature:").count(),
            1,
            "one key, one field"
        );
        assert!(text.starts_with("DKIM-Signature: "));
        assert!(text.ends_with("\r\n"));
        assert!(
            text.split("\r\n").all(|l| l.len() <= 78),
            "a line over 78: {text}"
        );
        match &from {
            FromField::Domain(d) => assert!(
                d == "acme.example" || d.ends_with(".acme.example"),
                "signed for {d}"
            ),
            other => panic!("signed with a From of {other:?}"),
        }
    }
    if let FromField::Domain(d) = &from {
        assert!(d.is_ascii() && *d == d.to_ascii_lowercase(), "domain {d:?}");
    }

    let entries = store::parse(input);
    let mut again = Vec::new();
    for e in &entries {
        e.encode(&mut again);
    }
    assert_eq!(
        store::parse(&again),
        entries,
        "store lines do not read back"
    );

    let rules = Rules::new(
        Unsubscribe {
            url: Some("https://u.example/{{ token }}".into()),
            mailto: Some("u@u.example".into()),
        },
        "a secret for the fuzzer",
        Checks::off(),
        Signers::default(),
    );
    let text = String::from_utf8_lossy(input);
    if let Some((r, t, c)) = rules.verify_token(&text) {
        assert_eq!(
            rules.token(&r, &t, &c),
            *text,
            "a token the secret did not make verified"
        );
    }
    let line = text.lines().next().unwrap_or_default();
    let token = rules.token(line, "t", "c");
    assert_eq!(
        rules.verify_token(&token),
        Some((line.to_string(), "t".into(), "c".into()))
    );
    if let Ok(applied) = rules.apply(input, &Unsubscribe::default(), "c", "t", "s@d.example") {
        assert!(
            applied.template.ends_with(input),
            "the template was changed"
        );
    }
}
