//! What the big mailbox providers require of bulk mail, applied to a campaign's template at
//! intake (sans I/O): the one-click unsubscribe fields (RFC 2369, RFC 8058) when the template
//! lacks them, a `Feedback-ID` for the providers' feedback loops, and the checks before
//! sending (`[checks]`: a From that is one valid address, a DKIM key aligned with it, a
//! one-click unsubscribe).
//!
//! The unsubscribe URL carries a token per recipient: the recipient, tenant and campaign,
//! and an HMAC-SHA256 of them under `[unsubscribe] secret` (ring's), so the endpoint that
//! receives the click can verify it and act without a database (`verify_token`). Fields are
//! added to the template as text with a `{{ unsubscribe_token }}` placeholder, which intake
//! fills per recipient (`Rules::token`); the queue keeps the template as it will be sent.

use crate::config::{CheckAction, Checks};
use crate::dkim::{from_field, FromField, Signers};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use base64::Engine as _;

/// The placeholder the added fields carry; intake gives it each recipient's token.
pub const TOKEN_VAR: &str = "unsubscribe_token";
/// Bytes of the MAC kept in a token (128 bits).
const MAC_BYTES: usize = 16;
const TOKEN_VERSION: &str = "v1";

/// Why `url` cannot be an unsubscribe URL: it must be http(s), carry `{{ token }}`, and hold
/// nothing that would end the field's `<...>` or the field itself.
pub fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(format!("{url:?} is not an http(s) URL"));
    }
    if !url.contains("{{ token }}") {
        return Err(format!(
            "{url:?} lacks {{{{ token }}}}, where each recipient's token goes"
        ));
    }
    if url
        .chars()
        .any(|c| c.is_whitespace() && c != ' ' || c.is_control() || matches!(c, '<' | '>' | ','))
        || url.replace("{{ token }}", "").contains(' ')
    {
        return Err(format!("{url:?} is not a URL"));
    }
    Ok(())
}

/// Why `mailto` cannot be the unsubscribe mailbox.
pub fn check_mailto(mailto: &str) -> Result<(), String> {
    let a = crate::address::parse_address(mailto).map_err(|e| e.0)?;
    if a.to_addr_string() != mailto || mailto.contains(['?', '&', '<', '>', ',', ' ']) {
        return Err(format!("{mailto:?} is not a plain address"));
    }
    Ok(())
}

/// One campaign's unsubscribe addresses: the configuration's, or the batch header's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unsubscribe {
    /// With `{{ token }}` where the token goes.
    pub url: Option<String>,
    pub mailto: Option<String>,
}

/// What intake applies to every campaign.
#[derive(Clone)]
pub struct Rules {
    pub unsubscribe: Unsubscribe,
    /// Add `Feedback-ID: campaign:tenant:sender-domain` to campaigns that lack one.
    pub feedback_id: bool,
    key: Option<ring::hmac::Key>,
    pub checks: Checks,
    pub signers: Signers,
}

/// What applying the rules made of a template.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// The template with the fields it lacked, first.
    pub template: Vec<u8>,
    /// Checks that failed with `warn`: for the delivery log.
    pub warnings: Vec<String>,
}

impl Rules {
    pub fn new(unsubscribe: Unsubscribe, secret: &str, checks: Checks, signers: Signers) -> Rules {
        let key = (!secret.is_empty())
            .then(|| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes()));
        Rules {
            feedback_id: unsubscribe.url.is_some() || unsubscribe.mailto.is_some(),
            unsubscribe,
            key,
            checks,
            signers,
        }
    }

    /// No fields added, no checks: what tests and tools that only parse use.
    pub fn none() -> Rules {
        Rules::new(
            Unsubscribe::default(),
            "",
            Checks::off(),
            Signers::default(),
        )
    }

    pub fn from_config(config: &crate::config::Config) -> Rules {
        let mut rules = Rules::new(
            Unsubscribe {
                url: config.unsubscribe.url.clone(),
                mailto: config.unsubscribe.mailto.clone(),
            },
            &config.unsubscribe.secret,
            config.checks,
            config.signers.clone(),
        );
        rules.feedback_id = config.unsubscribe.feedback_id;
        rules
    }

    /// The fields `template` lacks, added on top, and the checks. `overrides` are the batch
    /// header's (either address replaces the configuration's). `Err` is why the campaign is
    /// refused (a check set to `refuse` failed).
    pub fn apply(
        &self,
        template: &[u8],
        overrides: &Unsubscribe,
        campaign: &str,
        tenant: &str,
        sender: &str,
    ) -> Result<Applied, String> {
        if let Some(url) = &overrides.url {
            check_url(url).map_err(|e| format!("header \"unsubscribe\": url: {e}"))?;
        }
        if let Some(m) = &overrides.mailto {
            check_mailto(m).map_err(|e| format!("header \"unsubscribe\": mailto: {e}"))?;
        }
        let has = |name: &str| crate::message::find_header(template, name).is_some();
        let mut added = String::new();
        let unsubscribe = Unsubscribe {
            url: overrides
                .url
                .clone()
                .or_else(|| self.unsubscribe.url.clone()),
            mailto: overrides
                .mailto
                .clone()
                .or_else(|| self.unsubscribe.mailto.clone()),
        };
        let configured = unsubscribe.url.is_some() || unsubscribe.mailto.is_some();
        if configured && !has("list-unsubscribe") && self.key.is_some() {
            let token = format!("{{{{ {TOKEN_VAR} }}}}");
            let mut targets = Vec::new();
            if let Some(url) = &unsubscribe.url {
                targets.push(format!("<{}>", url.replace("{{ token }}", &token)));
            }
            if let Some(mailto) = &unsubscribe.mailto {
                targets.push(format!("<mailto:{mailto}?subject=unsubscribe%20{token}>"));
            }
            added.push_str(&format!("List-Unsubscribe: {}\r\n", targets.join(",\r\n ")));
            // One-click (RFC 8058) needs an HTTPS URL to POST to.
            if unsubscribe
                .url
                .as_deref()
                .is_some_and(|u| u.starts_with("https://"))
                && !has("list-unsubscribe-post")
            {
                added.push_str("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n");
            }
        }
        if self.feedback_id && !campaign.is_empty() && !has("feedback-id") {
            let sender_domain = sender.rsplit_once('@').map_or(sender, |(_, d)| d);
            let field = |s: &str| -> String {
                s.chars()
                    .map(|c| match c {
                        'a'..='z' | 'A'..='Z' | '0'..='9' | '.' | '-' | '_' => c,
                        _ => '-',
                    })
                    .collect()
            };
            added.push_str(&format!(
                "Feedback-ID: {}:{}:{}\r\n",
                field(campaign),
                field(if tenant.is_empty() { "-" } else { tenant }),
                field(sender_domain)
            ));
        }
        let mut out = Vec::with_capacity(added.len() + template.len());
        out.extend_from_slice(added.as_bytes());
        out.extend_from_slice(template);

        let mut failed = Vec::new();
        // A From made of placeholders is only known per recipient: not judged here.
        let from = from_field(template);
        let from_templated =
            crate::message::find_header(template, "from").is_some_and(|f| f.contains("{{"));
        match (&from, from_templated) {
            (_, true) => {}
            (FromField::Missing, _) => failed.push((self.checks.from, "no From header".into())),
            (FromField::Invalid(why), _) => failed.push((self.checks.from, why.clone())),
            (FromField::Domain(d), _) => {
                if self.signers.aligned(d).is_empty() {
                    failed.push((
                        self.checks.dkim,
                        format!("no [[dkim]] key is aligned with the From domain {d}"),
                    ));
                }
            }
        }
        let one_click = crate::message::find_header(&out, "list-unsubscribe")
            .is_some_and(|v| v.contains("<https://"))
            && crate::message::find_header(&out, "list-unsubscribe-post")
                .is_some_and(|v| v.eq_ignore_ascii_case("List-Unsubscribe=One-Click"));
        if !one_click {
            failed.push((
                self.checks.unsubscribe,
                "no one-click unsubscribe (RFC 8058: List-Unsubscribe with an https URL and List-Unsubscribe-Post), and [unsubscribe] sets no url".into(),
            ));
        }
        let mut warnings = Vec::new();
        for (action, why) in failed {
            match action {
                CheckAction::Refuse => return Err(format!("refused by [checks]: {why}")),
                CheckAction::Warn => warnings.push(why),
                CheckAction::Off => {}
            }
        }
        Ok(Applied {
            template: out,
            warnings,
        })
    }

    /// The unsubscribe token of one recipient of a campaign: `v1.` the recipient, tenant and
    /// campaign (base64url), `.` their MAC (base64url, 128 bits). Empty without a secret.
    pub fn token(&self, recipient: &str, tenant: &str, campaign: &str) -> String {
        let Some(key) = &self.key else {
            return String::new();
        };
        let payload = format!("{recipient}\n{tenant}\n{campaign}");
        let mac = ring::hmac::sign(key, format!("{TOKEN_VERSION}\n{payload}").as_bytes());
        format!(
            "{TOKEN_VERSION}.{}.{}",
            B64URL.encode(payload),
            B64URL.encode(&mac.as_ref()[..MAC_BYTES])
        )
    }

    /// The recipient, tenant and campaign of a token this secret made; `None` for any other.
    pub fn verify_token(&self, token: &str) -> Option<(String, String, String)> {
        let key = self.key.as_ref()?;
        let mut parts = token.split('.');
        let (Some(TOKEN_VERSION), Some(payload), Some(mac), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return None;
        };
        let payload = B64URL.decode(payload).ok()?;
        let mac = B64URL.decode(mac).ok()?;
        let mut signed = format!("{TOKEN_VERSION}\n").into_bytes();
        signed.extend_from_slice(&payload);
        let full = ring::hmac::sign(key, &signed);
        // Constant time, over the bytes kept.
        let expected = &full.as_ref()[..MAC_BYTES];
        if mac.len() != MAC_BYTES
            || expected
                .iter()
                .zip(&mac)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                != 0
        {
            return None;
        }
        let text = String::from_utf8(payload).ok()?;
        let mut fields = text.splitn(3, '\n');
        Some((
            fields.next()?.to_string(),
            fields.next()?.to_string(),
            fields.next()?.to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(checks: Checks) -> Rules {
        Rules::new(
            Unsubscribe {
                url: Some("https://unsub.acme.example/u/{{ token }}".into()),
                mailto: Some("unsubscribe@acme.example".into()),
            },
            "a secret of some length",
            checks,
            Signers::default(),
        )
    }

    const TEMPLATE: &[u8] = b"From: Acme <news@acme.example>\r\nTo: {{ to }}\r\n\r\nHi\r\n";

    #[test]
    fn the_fields_a_template_lacks_come_first() {
        let a = rules(Checks::off())
            .apply(
                TEMPLATE,
                &Unsubscribe::default(),
                "spring sale",
                "acme",
                "b@bounce.acme.example",
            )
            .unwrap();
        let text = String::from_utf8(a.template).unwrap();
        assert_eq!(
            text,
            "List-Unsubscribe: <https://unsub.acme.example/u/{{ unsubscribe_token }}>,\r\n \
             <mailto:unsubscribe@acme.example?subject=unsubscribe%20{{ unsubscribe_token }}>\r\n\
             List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\
             Feedback-ID: spring-sale:acme:bounce.acme.example\r\n\
             From: Acme <news@acme.example>\r\nTo: {{ to }}\r\n\r\nHi\r\n"
        );
        // The batch header's addresses replace the configuration's; a template's own field
        // stays alone.
        let own = b"List-Unsubscribe: <mailto:x@y.example>\r\nFeedback-ID: a:b:c\r\nFrom: n@acme.example\r\n\r\nx";
        let a = rules(Checks::off())
            .apply(own, &Unsubscribe::default(), "c", "t", "s@d")
            .unwrap();
        assert_eq!(a.template, own);
        let over = Unsubscribe {
            url: None,
            mailto: Some("leave@other.example".into()),
        };
        let a = rules(Checks::off())
            .apply(TEMPLATE, &over, "c", "", "s@d")
            .unwrap();
        let text = String::from_utf8(a.template).unwrap();
        assert!(text.contains("<https://unsub.acme.example/u/"), "{text}");
        assert!(
            text.contains("<mailto:leave@other.example?subject="),
            "{text}"
        );
        assert!(text.contains("Feedback-ID: c:-:d\r\n"), "{text}");
        // What the batch header names goes into a header field: it must be what it says.
        for (url, mailto) in [
            (
                Some("https://x.example/{{ token }}\r\nBcc: a@b.example"),
                None,
            ),
            (Some("https://x.example/no-token"), None),
            (Some("javascript:{{ token }}"), None),
            (None, Some("u@x.example?cc=boss@x.example")),
            (None, Some("u@x.example>, <https://evil.example")),
        ] {
            let over = Unsubscribe {
                url: url.map(String::from),
                mailto: mailto.map(String::from),
            };
            let e = rules(Checks::off())
                .apply(TEMPLATE, &over, "c", "", "s@d")
                .unwrap_err();
            assert!(e.starts_with("header \"unsubscribe\": "), "{e}");
        }
    }

    #[test]
    fn tokens_verify_only_under_their_secret_and_unaltered() {
        let r = rules(Checks::off());
        let t = r.token("alice@x.example", "acme", "spring");
        assert!(
            t.starts_with("v1.") && t.is_ascii() && !t.contains(['/', '+', '=']),
            "{t}"
        );
        assert_eq!(
            r.verify_token(&t),
            Some(("alice@x.example".into(), "acme".into(), "spring".into()))
        );
        let other = Rules::new(
            Unsubscribe::default(),
            "another secret",
            Checks::off(),
            Signers::default(),
        );
        assert_eq!(other.verify_token(&t), None);
        // Another recipient's payload with this MAC, a cut MAC, junk: all refused.
        let forged = format!(
            "v1.{}.{}",
            B64URL.encode("mallory@x.example\nacme\nspring"),
            t.rsplit('.').next().unwrap()
        );
        assert_eq!(r.verify_token(&forged), None);
        assert_eq!(r.verify_token(&t[..t.len() - 2]), None);
        assert_eq!(r.verify_token("v1.."), None);
        assert_eq!(r.verify_token(""), None);
        assert_eq!(Rules::none().token("a@b.example", "", ""), "");
    }

    #[test]
    fn checks_warn_refuse_or_stay_quiet() {
        let all = |a: CheckAction| Checks {
            dkim: a,
            unsubscribe: a,
            from: a,
        };
        let bare = Rules::new(
            Unsubscribe::default(),
            "",
            all(CheckAction::Warn),
            Signers::default(),
        );
        let a = bare
            .apply(TEMPLATE, &Unsubscribe::default(), "c", "t", "s@d")
            .unwrap();
        assert_eq!(
            a.warnings,
            [
                "no [[dkim]] key is aligned with the From domain acme.example",
                "no one-click unsubscribe (RFC 8058: List-Unsubscribe with an https URL and List-Unsubscribe-Post), and [unsubscribe] sets no url"
            ]
        );
        let strict = Rules::new(
            Unsubscribe::default(),
            "",
            all(CheckAction::Refuse),
            Signers::default(),
        );
        let e = strict
            .apply(
                b"To: x@y.example\r\n\r\nx",
                &Unsubscribe::default(),
                "c",
                "t",
                "s@d",
            )
            .unwrap_err();
        assert_eq!(e, "refused by [checks]: no From header");
        let e = strict
            .apply(
                b"From: a@x.example, b@x.example\r\n\r\nx",
                &Unsubscribe::default(),
                "c",
                "t",
                "s@d",
            )
            .unwrap_err();
        assert!(e.contains("not a single address"), "{e}");
        // A From of placeholders is judged per recipient, not here.
        let quiet = Rules::new(
            Unsubscribe::default(),
            "",
            all(CheckAction::Off),
            Signers::default(),
        );
        assert!(quiet
            .apply(TEMPLATE, &Unsubscribe::default(), "c", "t", "s@d")
            .unwrap()
            .warnings
            .is_empty());
        let templated = b"From: {{ sender }}\r\nList-Unsubscribe: <https://u.example/1>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\nx";
        let a = strict
            .apply(templated, &Unsubscribe::default(), "c", "t", "s@d")
            .unwrap();
        assert!(a.warnings.is_empty());
    }
}
