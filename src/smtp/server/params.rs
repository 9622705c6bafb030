//! MAIL and RCPT parameters (RFC 5321 4.1.2 esmtp-param): SIZE (RFC 1870), BODY (RFC 6152),
//! SMTPUTF8 (RFC 6531), AUTH (RFC 4954), and DSN's RET, ENVID, NOTIFY and ORCPT (RFC 3461).
//! Values are checked here and handed to the shell as slices of the command line; an
//! unknown or malformed parameter is refused with its reply, and the command goes no
//! further.

/// What a client asked of a message with its MAIL parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MailParams<'a> {
    /// SIZE: the client's estimate, in octets.
    pub size: Option<u64>,
    /// BODY=8BITMIME: the message may hold octets above 127.
    pub eight_bit: bool,
    /// SMTPUTF8: addresses and headers may be UTF-8.
    pub smtputf8: bool,
    /// RET: a delivery status notification returns the whole message (`Some(true)`,
    /// RET=FULL) or its headers only (`Some(false)`, RET=HDRS).
    pub ret_full: Option<bool>,
    /// ENVID, as sent (xtext, at most 100 octets): returned in notifications.
    pub envid: Option<&'a str>,
}

/// When a recipient's sender wants a delivery status notification (RFC 3461 NOTIFY).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Notify {
    pub success: bool,
    pub failure: bool,
    pub delay: bool,
    /// NOTIFY=NEVER.
    pub never: bool,
}

/// What a client asked of one recipient with its RCPT parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RcptParams<'a> {
    /// NOTIFY, if given (without it a notification goes on failure and delay, RFC 3461 5.1).
    pub notify: Option<Notify>,
    /// ORCPT (`addr-type;xtext`, at most 500 octets), as sent.
    pub orcpt: Option<&'a str>,
}

/// A refusal of a command's parameters: the reply to give.
pub type Refused = (u16, &'static str);

/// Splits `params` into `(keyword, value)` pairs; a parameter without `=` has an empty value.
fn pairs(params: &[u8]) -> impl Iterator<Item = (&[u8], &[u8])> {
    params
        .split(|b| *b == b' ')
        .filter(|p| !p.is_empty())
        .map(|p| match p.iter().position(|b| *b == b'=') {
            Some(i) => (&p[..i], &p[i + 1..]),
            None => (p, &b""[..]),
        })
}

/// True for xtext (RFC 3461 4): printable ASCII, no `+` or `=` except `+XX` hex escapes.
fn is_xtext(v: &[u8]) -> bool {
    let mut i = 0;
    while i < v.len() {
        match v[i] {
            b'+' => {
                let hex =
                    |b: Option<&u8>| b.is_some_and(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'));
                if !hex(v.get(i + 1)) || !hex(v.get(i + 2)) {
                    return false;
                }
                i += 3;
            }
            b'=' => return false,
            b'!'..=b'~' => i += 1,
            _ => return false,
        }
    }
    true
}

/// The parameters of `MAIL FROM:<...> params`. `dsn`: whether DSN is offered (RET and ENVID
/// are refused otherwise, as unknown).
pub fn mail(params: &[u8], dsn: bool) -> Result<MailParams<'_>, Refused> {
    let mut p = MailParams::default();
    for (key, value) in pairs(params) {
        let is = |name: &[u8]| key.eq_ignore_ascii_case(name);
        if is(b"SIZE") {
            let size = std::str::from_utf8(value).ok().and_then(|v| v.parse().ok());
            if size.is_none() || value.len() > 20 {
                return Err((501, "5.5.4 Bad SIZE parameter"));
            }
            p.size = size;
        } else if is(b"BODY") {
            p.eight_bit = if value.eq_ignore_ascii_case(b"8BITMIME") {
                true
            } else if value.eq_ignore_ascii_case(b"7BIT") {
                false
            } else {
                return Err((501, "5.5.4 BODY is 7BIT or 8BITMIME"));
            };
        } else if is(b"SMTPUTF8") {
            if !value.is_empty() {
                return Err((501, "5.5.4 SMTPUTF8 takes no value"));
            }
            p.smtputf8 = true;
        } else if is(b"AUTH") {
            // RFC 4954 5: the submitter's identity as another server saw it; not trusted.
            if !is_xtext(value) || value.is_empty() {
                return Err((501, "5.5.4 Bad AUTH parameter"));
            }
        } else if dsn && is(b"RET") {
            p.ret_full = if value.eq_ignore_ascii_case(b"FULL") {
                Some(true)
            } else if value.eq_ignore_ascii_case(b"HDRS") {
                Some(false)
            } else {
                return Err((501, "5.5.4 RET is FULL or HDRS"));
            };
        } else if dsn && is(b"ENVID") {
            if value.is_empty() || value.len() > 100 || !is_xtext(value) {
                return Err((501, "5.5.4 Bad ENVID parameter"));
            }
            // xtext is ASCII.
            p.envid = std::str::from_utf8(value).ok();
        } else {
            return Err((555, "5.5.4 Unsupported MAIL parameter"));
        }
    }
    Ok(p)
}

/// The parameters of `RCPT TO:<...> params`. `dsn`: whether DSN is offered.
pub fn rcpt(params: &[u8], dsn: bool) -> Result<RcptParams<'_>, Refused> {
    let mut p = RcptParams::default();
    for (key, value) in pairs(params) {
        let is = |name: &[u8]| key.eq_ignore_ascii_case(name);
        if dsn && is(b"NOTIFY") {
            let mut n = Notify::default();
            for word in value.split(|b| *b == b',') {
                let w = |name: &[u8]| word.eq_ignore_ascii_case(name);
                if w(b"NEVER") {
                    n.never = true;
                } else if w(b"SUCCESS") {
                    n.success = true;
                } else if w(b"FAILURE") {
                    n.failure = true;
                } else if w(b"DELAY") {
                    n.delay = true;
                } else {
                    return Err((501, "5.5.4 NOTIFY is NEVER or SUCCESS,FAILURE,DELAY"));
                }
            }
            if n.never && (n.success || n.failure || n.delay) {
                return Err((501, "5.5.4 NOTIFY=NEVER stands alone"));
            }
            p.notify = Some(n);
        } else if dsn && is(b"ORCPT") {
            let semi = value.iter().position(|b| *b == b';');
            let ok = value.len() <= 500
                && semi.is_some_and(|i| i > 0 && value[..i].iter().all(u8::is_ascii_alphanumeric))
                && semi.is_some_and(|i| is_xtext(&value[i + 1..]));
            if !ok {
                return Err((501, "5.5.4 Bad ORCPT parameter"));
            }
            p.orcpt = std::str::from_utf8(value).ok();
        } else {
            return Err((555, "5.5.4 Unsupported RCPT parameter"));
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mail_parameters_are_read_and_the_unknown_refused() {
        let p = mail(
            b"SIZE=1000 BODY=8BITMIME SMTPUTF8 RET=HDRS ENVID=QQ+2B314",
            true,
        )
        .unwrap();
        assert_eq!(p.size, Some(1000));
        assert!(p.eight_bit && p.smtputf8);
        assert_eq!((p.ret_full, p.envid), (Some(false), Some("QQ+2B314")));
        assert_eq!(mail(b"", true), Ok(MailParams::default()));
        assert_eq!(mail(b"AUTH=<>", true).map(|p| p.size), Ok(None));
        for (params, code) in [
            (&b"SIZE=lots"[..], 501),
            (b"SIZE=123456789012345678901234", 501),
            (b"BODY=BINARYMIME", 501),
            (b"SMTPUTF8=yes", 501),
            (b"RET=ALL", 501),
            (b"ENVID=a=b", 501),
            (b"ENVID=+zz", 501),
            (b"XFORWARD=1", 555),
        ] {
            assert_eq!(
                mail(params, true).map(|_| ()).unwrap_err().0,
                code,
                "{params:?}"
            );
        }
        // Without DSN offered, its parameters are unknown ones.
        assert_eq!(mail(b"RET=FULL", false).unwrap_err().0, 555);
    }

    #[test]
    fn rcpt_parameters_follow_rfc_3461() {
        let p = rcpt(b"NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;a+40b.example", true).unwrap();
        let n = p.notify.unwrap();
        assert!(n.success && n.failure && !n.delay && !n.never);
        assert_eq!(p.orcpt, Some("rfc822;a+40b.example"));
        assert!(rcpt(b"NOTIFY=NEVER", true).unwrap().notify.unwrap().never);
        for params in [
            &b"NOTIFY=NEVER,SUCCESS"[..],
            b"NOTIFY=SOMETIMES",
            b"ORCPT=a@b.example",
            b"ORCPT=;x",
        ] {
            assert_eq!(rcpt(params, true).unwrap_err().0, 501, "{params:?}");
        }
        assert_eq!(rcpt(b"NOTIFY=NEVER", false).unwrap_err().0, 555);
    }
}
