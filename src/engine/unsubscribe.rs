//! The RFC 8058 one-click endpoint, on a listener of its own (`[unsubscribe] listen`, HTTPS
//! with `cert` and `key`), which may face the internet: it serves the path of `[unsubscribe]
//! url`. A `POST` with a valid token suppresses the recipient for its tenant, durably (the
//! store line is synced before the reply); a `GET` shows a page whose button posts, and
//! changes nothing (link scanners fetch every URL they see); a bad token is 404 and changes
//! nothing. Nothing a client sends is echoed into the pages.

use super::admin::Audit;
use super::*;
use crate::admin::http::{Method, Request, Response};
use crate::admin::server::Handler;
use std::io::Read;
use std::net::SocketAddr;

/// A request body is read up to this much (`List-Unsubscribe=One-Click`).
const BODY_MAX: u64 = 1024;

pub(super) struct OneClick {
    shared: Arc<Shared>,
}

/// The part of `url` after its host (path and query), split around `{{ token }}`.
fn token_template(url: &str) -> Option<(String, String)> {
    let rest = url.split_once("://")?.1;
    let at = rest.find('/').unwrap_or(rest.len());
    let target = if at == rest.len() { "/" } else { &rest[at..] };
    let i = target.find("{{")?;
    let j = target[i..].find("}}")? + i + 2;
    Some((target[..i].to_string(), target[j..].to_string()))
}

/// The token in a request's target, if it has the URL's shape.
pub fn token_of(url: &str, path: &str, query: &str) -> Option<String> {
    let (prefix, suffix) = token_template(url)?;
    let target = if query.is_empty() {
        path.to_string()
    } else {
        format!("{path}?{query}")
    };
    let token = target.strip_prefix(&prefix)?.strip_suffix(&suffix)?;
    let token = crate::admin::http::percent_decode(token);
    (!token.is_empty() && token.len() <= 2048).then_some(token)
}

const STYLE: &str = "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\"><style>body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;line-height:1.5}button{font-size:1.1rem;padding:.6rem 1.4rem}</style>";

fn page(status: u16, title: &str, body: &str) -> Response {
    Response::html(
        status,
        format!("<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>{STYLE}</head><body><h1>{title}</h1>{body}</body></html>"),
    )
}

impl Handler for OneClick {
    fn handle(&self, req: &Request, body: &mut dyn Read, peer: SocketAddr) -> Response {
        let config = self.shared.config();
        let not_found = || {
            page(
                404,
                "Not found",
                "<p>This unsubscribe link is not valid.</p>",
            )
        };
        let Some(url) = config.unsubscribe.url.as_deref() else {
            return not_found();
        };
        let Some(token) = token_of(url, &req.path, &req.query) else {
            return not_found();
        };
        let rules = crate::compliance::Rules::from_config(&config);
        let Some((rcpt, tenant, campaign)) = rules.verify_token(&token) else {
            return not_found();
        };
        match req.method {
            Method::Get | Method::Head => page(
                200,
                "Unsubscribe",
                "<p>Press the button to stop receiving these messages.</p><form method=\"post\"><input type=\"hidden\" name=\"List-Unsubscribe\" value=\"One-Click\"><button type=\"submit\">Unsubscribe</button></form>",
            ),
            Method::Post => {
                let mut sink = Vec::new();
                let _ = body.take(BODY_MAX).read_to_end(&mut sink);
                let now = self.shared.clock.unix_ms();
                let day = crate::suppression::day_of(now);
                let client = peer.to_string();
                let target = format!("{rcpt} (tenant {tenant}, campaign {campaign})");
                let audit = Audit {
                    action: "unsubscribe",
                    target: &target,
                    reason: "one-click",
                    client: &client,
                    at_unix_ms: now,
                };
                let done = self.shared.admin.change(
                    &config,
                    &audit,
                    || {
                        crate::suppression::manage::add(
                            &config,
                            Some(&self.shared.suppressions),
                            &tenant,
                            &rcpt,
                            crate::suppression::Source::Unsubscribe { day },
                            now,
                        )
                    },
                    |_| "suppressed".into(),
                );
                match done {
                    Ok(_) => page(200, "Unsubscribed", "<p>You will not receive these messages any more.</p>"),
                    Err(e) => {
                        tracing::warn!("one-click unsubscribe: {e}");
                        page(503, "Try again", "<p>That did not work just now; please try again in a minute.</p>")
                    }
                }
            }
            Method::Other => {
                let mut r = page(405, "Not allowed", "");
                r.fields.push("Allow: GET, HEAD, POST".into());
                r
            }
        }
    }
}

/// Starts the one-click listener, if `[unsubscribe] listen` is set.
pub(super) fn start_server(
    shared: &Arc<Shared>,
) -> Result<Option<crate::admin::server::Server>, EngineError> {
    let config = shared.config();
    let Some(l) = &config.unsubscribe.listener else {
        return Ok(None);
    };
    let tls = super::admin::https_config(&l.cert, &l.key, "unsubscribe.cert")?;
    let handler = Arc::new(OneClick {
        shared: Arc::clone(shared),
    });
    let server = crate::admin::server::Server::start("spate-unsubscribe", l.listen, tls, handler)
        .map_err(|e| {
        EngineError::Unavailable(format!("unsubscribe.listen {}: {e}", l.listen))
    })?;
    tracing::info!("unsubscribe: one-click endpoint on {}", server.local_addr);
    let dir = config.engine.data_dir.join("admin");
    let _ = std::fs::write(
        dir.join("unsubscribe-listen"),
        format!("{}\n", server.local_addr),
    );
    Ok(Some(server))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_token_is_read_where_the_url_puts_it() {
        let url = "https://unsub.acme.example/u/{{ token }}";
        assert_eq!(
            token_of(url, "/u/v1.abc.def", "").as_deref(),
            Some("v1.abc.def")
        );
        assert_eq!(token_of(url, "/x/v1.abc.def", ""), None);
        assert_eq!(token_of(url, "/u/", ""), None);
        let q = "https://acme.example/unsub?t={{token}}&src=mail";
        assert_eq!(
            token_of(q, "/unsub", "t=v1.a.b&src=mail").as_deref(),
            Some("v1.a.b")
        );
        assert_eq!(token_of(q, "/unsub", "t=v1.a.b"), None);
    }
}
