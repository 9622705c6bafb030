//! `[admin]` (the admin HTTP API, `/metrics`, the status page) and the one-click
//! unsubscribe listener's keys of `[unsubscribe]`: their raw shape and their validation.

use super::*;
use serde::Deserialize;

type Err<'a> = &'a dyn Fn(&str, String) -> ConfigError;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAdmin {
    pub(super) listen: Option<String>,
    pub(super) token: Option<String>,
    pub(super) cert: Option<PathBuf>,
    pub(super) key: Option<PathBuf>,
    pub(super) metrics_scopes: Option<usize>,
}

/// Tokens shorter than this are refused: a bearer token is the only thing between the
/// network and the queue's controls.
const TOKEN_LEN_MIN: usize = 16;

/// The scopes `/metrics` names one by one at most; the rest fold into `scope="other"`.
pub const METRICS_SCOPES_MAX: usize = 1000;

pub(super) fn validate_admin(raw: RawAdmin, err: Err<'_>) -> Result<Admin, ConfigError> {
    let listen = raw.listen.unwrap_or_else(|| DEFAULT_ADMIN_LISTEN.into());
    let listen = listen
        .parse::<SocketAddr>()
        .map_err(|_| err("admin.listen", format!("not an address:port: {listen:?}")))?;
    let token = raw.token.filter(|t| !t.is_empty());
    if let Some(t) = &token {
        if t.len() < TOKEN_LEN_MIN || t.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(err(
                "admin.token",
                format!("must be at least {TOKEN_LEN_MIN} printable characters, no spaces"),
            ));
        }
    }
    if token.is_none() && !listen.ip().is_loopback() {
        return Err(err(
            "admin.token",
            format!("required: admin.listen = {listen} is not a loopback address"),
        ));
    }
    let (cert, key) = cert_and_key("admin", raw.cert, raw.key, err)?;
    let metrics_scopes = raw.metrics_scopes.unwrap_or(DEFAULT_METRICS_SCOPES);
    if metrics_scopes > METRICS_SCOPES_MAX {
        return Err(err(
            "admin.metrics_scopes",
            format!("must be at most {METRICS_SCOPES_MAX}, got {metrics_scopes}"),
        ));
    }
    Ok(Admin {
        listen,
        token,
        cert,
        key,
        metrics_scopes,
    })
}

/// The one-click listener of `[unsubscribe]` (`listen`, `cert`, `key`), if any. It needs the
/// URL, whose path it serves, and the secret, which checks the tokens.
pub(super) fn validate_unsubscribe_listener(
    listen: Option<String>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    url: Option<&str>,
    err: Err<'_>,
) -> Result<Option<UnsubscribeListener>, ConfigError> {
    let Some(listen) = listen else {
        if cert.is_some() || key.is_some() {
            return Err(err(
                "unsubscribe.cert",
                "set with no unsubscribe.listen to serve it".into(),
            ));
        }
        return Ok(None);
    };
    let listen = listen.parse::<SocketAddr>().map_err(|_| {
        err(
            "unsubscribe.listen",
            format!("not an address:port: {listen:?}"),
        )
    })?;
    if url.is_none() {
        return Err(err(
            "unsubscribe.listen",
            "needs unsubscribe.url: the listener serves that URL's path".into(),
        ));
    }
    let (cert, key) = cert_and_key("unsubscribe", cert, key, err)?;
    Ok(Some(UnsubscribeListener { listen, cert, key }))
}

/// `cert` and `key` come together, and both files must be readable now.
fn cert_and_key(
    section: &str,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    err: Err<'_>,
) -> Result<(Option<PathBuf>, Option<PathBuf>), ConfigError> {
    match (&cert, &key) {
        (None, None) => Ok((None, None)),
        (Some(c), Some(k)) => {
            for (name, path) in [("cert", c), ("key", k)] {
                if let Err(e) = std::fs::File::open(path) {
                    return Err(err(
                        &format!("{section}.{name}"),
                        format!("{}: {e}", path.display()),
                    ));
                }
            }
            Ok((cert, key))
        }
        (Some(_), None) => Err(err(&format!("{section}.key"), "needed with cert".into())),
        (None, Some(_)) => Err(err(&format!("{section}.cert"), "needed with key".into())),
    }
}
