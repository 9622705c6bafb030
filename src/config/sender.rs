//! The sender-rules sections (`[[dkim]]`, `[suppression]`, `[unsubscribe]`, `[checks]`):
//! their raw shape and their validation, keys and files included.

use super::*;
use serde::Deserialize;

type Err<'a> = &'a dyn Fn(&str, String) -> ConfigError;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDkim {
    pub(super) domain: String,
    pub(super) selector: String,
    pub(super) key: PathBuf,
    pub(super) expire: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSuppression {
    #[serde(default)]
    pub(super) files: Vec<PathBuf>,
    pub(super) bad_mailbox_expire: Option<String>,
    pub(super) learn_bad_mailboxes: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawUnsubscribe {
    pub(super) url: Option<String>,
    pub(super) mailto: Option<String>,
    #[serde(default)]
    pub(super) secret: String,
    pub(super) feedback_id: Option<bool>,
    pub(super) listen: Option<String>,
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawChecks {
    pub(super) dkim: Option<String>,
    pub(super) unsubscribe: Option<String>,
    pub(super) from: Option<String>,
}

/// `[[dkim]]`: each entry's domain as A-labels, its selector a DNS name, its key read and
/// checked now, so a bad one refuses the start or the reload.
pub(super) fn validate_dkim(raw: Vec<RawDkim>, err: Err<'_>) -> Result<Vec<Dkim>, ConfigError> {
    let mut dkim = Vec::new();
    for (i, d) in raw.into_iter().enumerate() {
        let field = |name: &str| format!("dkim[{i}].{name}");
        let domain = crate::address::parse_address(&format!("postmaster@{}", d.domain))
            .map_err(|_| err(&field("domain"), format!("{:?} is not a domain", d.domain)))?
            .domain;
        if d.selector.is_empty()
            || !d
                .selector
                .split('.')
                .all(|l| !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
        {
            return Err(err(
                &field("selector"),
                format!(
                    "{:?} is not a DNS label (letters, digits, hyphens)",
                    d.selector
                ),
            ));
        }
        let expire = match d.expire {
            Some(s) => Some(parse_duration(&s).map_err(|m| err(&field("expire"), m))?),
            None => None,
        };
        // The key is read and checked now, so a bad one refuses the start or the reload.
        let signer = crate::dkim::Signer::load(&domain, &d.selector, &d.key, expire)
            .map_err(|m| err(&field("key"), m))?;
        dkim.push(Dkim {
            domain,
            selector: d.selector,
            key: d.key,
            expire,
            signer: std::sync::Arc::new(signer),
        });
    }
    Ok(dkim)
}

/// `[suppression]`: every file readable now (it is read when the engine starts or reloads).
pub(super) fn validate_suppression(
    raw: RawSuppression,
    err: Err<'_>,
) -> Result<Suppression, ConfigError> {
    for (i, f) in raw.files.iter().enumerate() {
        std::fs::File::open(f).map_err(|e| {
            err(
                &format!("suppression.files[{i}]"),
                format!("{}: cannot read: {e}", f.display()),
            )
        })?;
    }
    let bad_mailbox_expire = match &raw.bad_mailbox_expire {
        Some(s) => parse_duration(s).map_err(|m| err("suppression.bad_mailbox_expire", m))?,
        None => Duration::from_secs(crate::suppression::DEFAULT_BAD_MAILBOX_EXPIRE_DAYS * 86_400),
    };
    Ok(Suppression {
        files: raw.files,
        bad_mailbox_expire,
        learn_bad_mailboxes: raw.learn_bad_mailboxes.unwrap_or(true),
    })
}

/// `[unsubscribe]`: the URL carries the token, the mailto is an address, and both need the
/// secret that signs the token.
pub(super) fn validate_unsubscribe(
    raw: RawUnsubscribe,
    err: Err<'_>,
) -> Result<Unsubscribe, ConfigError> {
    if let Some(url) = &raw.url {
        crate::compliance::check_url(url).map_err(|e| err("unsubscribe.url", e))?;
    }
    if let Some(m) = &raw.mailto {
        crate::compliance::check_mailto(m).map_err(|e| err("unsubscribe.mailto", e))?;
    }
    if (raw.url.is_some() || raw.mailto.is_some()) && raw.secret.len() < 16 {
        return Err(err(
            "unsubscribe.secret",
            "at least 16 characters are needed to sign the unsubscribe tokens".into(),
        ));
    }
    let listener = super::admin::validate_unsubscribe_listener(
        raw.listen,
        raw.cert,
        raw.key,
        raw.url.as_deref(),
        err,
    )?;
    Ok(Unsubscribe {
        listener,
        feedback_id: raw
            .feedback_id
            .unwrap_or(raw.url.is_some() || raw.mailto.is_some()),
        url: raw.url,
        mailto: raw.mailto,
        secret: raw.secret,
    })
}

/// `[checks]`: each "refuse", "warn" (the default) or "off".
pub(super) fn validate_checks(raw: &RawChecks, err: Err<'_>) -> Result<Checks, ConfigError> {
    let action = |field: &str, v: &Option<String>| match v.as_deref() {
        None | Some("warn") => Ok(CheckAction::Warn),
        Some("refuse") => Ok(CheckAction::Refuse),
        Some("off") => Ok(CheckAction::Off),
        Some(other) => Err(err(
            &format!("checks.{field}"),
            format!("{other:?}: expected \"refuse\", \"warn\" or \"off\""),
        )),
    };
    Ok(Checks {
        dkim: action("dkim", &raw.dkim)?,
        unsubscribe: action("unsubscribe", &raw.unsubscribe)?,
        from: action("from", &raw.from)?,
    })
}
