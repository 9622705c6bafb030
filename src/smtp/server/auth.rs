//! AUTH (RFC 4954), PLAIN and LOGIN: the exchange of the server core. The credentials
//! go to the shell as `Event::Auth`; its answer (`Server::reply`) ends the exchange.

use super::*;
use base64::Engine as _;

/// Where an AUTH exchange stands: the next line is the client's response, not a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum AuthStep {
    /// PLAIN without an initial response: "334 " was sent.
    Plain,
    /// LOGIN: "Username:" was asked.
    LoginUser,
    /// LOGIN: "Password:" was asked, the user name is in `Server::login_user`.
    LoginPassword,
}

impl Server {
    /// `AUTH mechanism [initial-response]` (RFC 4954): PLAIN or LOGIN, from the greeted
    /// state, once per session.
    pub(super) fn auth<'a>(&mut self, arg: &[u8], out: &mut Vec<u8>) -> Option<Event<'a>> {
        let refusal = if !self.config.auth {
            Some((502, "5.5.1 AUTH not offered"))
        } else if self.config.auth_needs_tls && !self.tls {
            Some((538, "5.7.11 Encryption required for authentication"))
        } else if self.phase == Phase::Fresh {
            Some((503, "5.5.1 EHLO first"))
        } else if self.phase != Phase::Greeted {
            Some((503, "5.5.1 AUTH not allowed in a transaction"))
        } else if self.authenticated {
            Some((503, "5.5.1 Already authenticated"))
        } else {
            None
        };
        if let Some((code, text)) = refusal {
            self.line(code, text, out);
            return None;
        }
        let mut words = arg.split(|b| *b == b' ').filter(|w| !w.is_empty());
        let mechanism = words.next().unwrap_or_default();
        let initial = words.next();
        if words.next().is_some() {
            self.line(501, "5.5.4 Syntax: AUTH mechanism [initial-response]", out);
            return None;
        }
        if mechanism.eq_ignore_ascii_case(b"PLAIN") {
            match initial {
                Some(response) => self.auth_response(AuthStep::Plain, response, out),
                None => {
                    self.phase = Phase::Auth(AuthStep::Plain);
                    out.extend_from_slice(b"334 \r\n");
                    None
                }
            }
        } else if mechanism.eq_ignore_ascii_case(b"LOGIN") {
            match initial {
                Some(response) => self.auth_response(AuthStep::LoginUser, response, out),
                None => {
                    self.phase = Phase::Auth(AuthStep::LoginUser);
                    // base64 of "Username:"
                    out.extend_from_slice(b"334 VXNlcm5hbWU6\r\n");
                    None
                }
            }
        } else {
            self.line(504, "5.5.4 Unrecognized authentication type", out);
            None
        }
    }

    /// The client's response in an AUTH exchange (or AUTH's initial response): the next
    /// step, or the credentials for the shell to check.
    pub(super) fn auth_response<'a>(
        &mut self,
        step: AuthStep,
        response: &[u8],
        out: &mut Vec<u8>,
    ) -> Option<Event<'a>> {
        self.phase = Phase::Greeted;
        if response == b"*" {
            self.login_user.clear();
            self.line(501, "5.0.0 Authentication cancelled", out);
            return None;
        }
        // "=" is an empty response (RFC 4954 4).
        let decoded = if response == b"=" {
            Ok(Vec::new())
        } else {
            base64::engine::general_purpose::STANDARD.decode(response)
        };
        let text = decoded.ok().and_then(|d| String::from_utf8(d).ok());
        let Some(text) = text else {
            self.login_user.clear();
            self.line(501, "5.5.2 Cannot decode the response", out);
            return None;
        };
        match step {
            AuthStep::Plain => {
                // authzid NUL authcid NUL password
                let mut parts = text.splitn(3, '\0');
                let (Some(authzid), Some(user), Some(password)) =
                    (parts.next(), parts.next(), parts.next())
                else {
                    self.line(501, "5.5.2 Malformed PLAIN response", out);
                    return None;
                };
                if !authzid.is_empty() && authzid != user {
                    self.line(
                        535,
                        "5.7.8 Acting for another identity is not supported",
                        out,
                    );
                    return None;
                }
                self.awaiting = Awaiting::Auth;
                Some(Event::Auth {
                    user: user.to_string(),
                    password: Secret(password.to_string()),
                })
            }
            AuthStep::LoginUser => {
                self.login_user = text;
                self.phase = Phase::Auth(AuthStep::LoginPassword);
                // base64 of "Password:"
                out.extend_from_slice(b"334 UGFzc3dvcmQ6\r\n");
                None
            }
            AuthStep::LoginPassword => {
                self.awaiting = Awaiting::Auth;
                Some(Event::Auth {
                    user: std::mem::take(&mut self.login_user),
                    password: Secret(text),
                })
            }
        }
    }
}
