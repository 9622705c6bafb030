//! HTTP/1.1 for the admin API and the one-click endpoint, sans I/O: a request head parsed
//! (httparse) within fixed bounds, and responses written. Every byte here comes from a
//! client that may be hostile; nothing it sends grows memory past `HEAD_BYTES_MAX`.

use std::fmt;

/// A request head (request line and fields) may take this much; more is refused with 431.
pub const HEAD_BYTES_MAX: usize = 16 * 1024;
/// Header fields one request may carry.
pub const HEADERS_MAX: usize = 48;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Other,
}

/// What the handlers need of a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    /// The path, percent-decoding left to the handler.
    pub path: String,
    /// What follows `?`, if anything.
    pub query: String,
    pub authorization: Option<Vec<u8>>,
    /// `Host` and `Origin`, as sent (for the checks against other web pages).
    pub host: Option<String>,
    pub origin: Option<String>,
    pub content_length: u64,
    /// The client asked to close after this request (or speaks HTTP/1.0).
    pub close: bool,
}

impl Request {
    /// The value of `name` in the query string (`a=1&b=2`), percent-decoded.
    pub fn query_value(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| percent_decode(v))
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// 400, with what was wrong.
    Bad(&'static str),
    /// 431: the head is larger than `HEAD_BYTES_MAX` or has too many fields.
    TooLarge,
    /// 411: a body that is not sent with Content-Length (chunked uploads are not taken).
    LengthRequired,
}

impl HttpError {
    pub fn response(&self) -> Response {
        match self {
            HttpError::Bad(why) => Response::text(400, why),
            HttpError::TooLarge => Response::text(431, "request head too large"),
            HttpError::LengthRequired => Response::text(
                411,
                "send the body with Content-Length (chunked is not taken)",
            ),
        }
    }
}

impl fmt::Display for HttpError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HttpError::Bad(why) => write!(f, "bad request: {why}"),
            HttpError::TooLarge => write!(f, "request head too large"),
            HttpError::LengthRequired => write!(f, "no Content-Length"),
        }
    }
}

/// Parses the request head at the start of `buf`: `Ok(None)` while it is incomplete (read
/// more, unless `buf` already holds `HEAD_BYTES_MAX`), else the request and the bytes it took.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Request, usize)>, HttpError> {
    let mut fields = [httparse::EMPTY_HEADER; HEADERS_MAX];
    let mut req = httparse::Request::new(&mut fields);
    let used = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() >= HEAD_BYTES_MAX => {
            return Err(HttpError::TooLarge)
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::TooLarge),
        Err(_) => return Err(HttpError::Bad("malformed request head")),
    };
    if used > HEAD_BYTES_MAX {
        return Err(HttpError::TooLarge);
    }
    let method = match req.method {
        Some("GET") => Method::Get,
        Some("HEAD") => Method::Head,
        Some("POST") => Method::Post,
        _ => Method::Other,
    };
    let target = req.path.ok_or(HttpError::Bad("no request target"))?;
    if !target.starts_with('/') {
        return Err(HttpError::Bad("the request target must be a path"));
    }
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let mut close = req.version != Some(1);
    let mut authorization = None;
    let (mut host, mut origin) = (None, None);
    let mut content_length: Option<u64> = None;
    for f in req.headers.iter() {
        let name = f.name;
        if name.eq_ignore_ascii_case("authorization") {
            authorization = Some(f.value.to_vec());
        } else if name.eq_ignore_ascii_case("host") {
            host = Some(String::from_utf8_lossy(f.value).trim().to_ascii_lowercase());
        } else if name.eq_ignore_ascii_case("origin") {
            origin = Some(String::from_utf8_lossy(f.value).trim().to_ascii_lowercase());
        } else if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(f.value)
                .ok()
                .map(str::trim)
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or(HttpError::Bad("Content-Length is not a number"))?;
            // Two different lengths are a request smuggling attempt, not a typo.
            if content_length.is_some_and(|m| m != n) {
                return Err(HttpError::Bad("two different Content-Length fields"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::LengthRequired);
        } else if name.eq_ignore_ascii_case("connection") {
            let v = String::from_utf8_lossy(f.value).to_ascii_lowercase();
            if v.split(',').any(|t| t.trim() == "close") {
                close = true;
            }
        }
    }
    Ok(Some((
        Request {
            method,
            path: path.to_string(),
            query: query.to_string(),
            authorization,
            host,
            origin,
            content_length: content_length.unwrap_or(0),
            close,
        },
        used,
    )))
}

impl Request {
    /// Whether another web page could have made this request through a browser: a `Host`
    /// that is not a loopback address or `localhost` (DNS rebinding: a name of theirs that
    /// resolves to 127.0.0.1), or an `Origin` other than this host (a form or script of
    /// theirs posting here). Tools (curl, the commands, Prometheus) send neither problem.
    pub fn from_elsewhere(&self) -> bool {
        let Some(host) = &self.host else {
            return false;
        };
        let name = match host.strip_prefix('[') {
            Some(v6) => v6.split(']').next().unwrap_or(""),
            None => host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h),
        };
        let loopback = name == "localhost"
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if !loopback {
            return true;
        }
        match &self.origin {
            None => false,
            Some(o) => {
                let authority = o.split_once("://").map_or(o.as_str(), |(_, a)| a);
                authority != host
            }
        }
    }
}

/// `%XX` and `+` decoded; invalid escapes are kept as they are.
pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A response, written whole (bodies here are small; the biggest is `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    /// Extra header fields, each `Name: value` without the line ending.
    pub fields: Vec<String>,
}

impl Response {
    pub fn new(status: u16, content_type: &'static str, body: impl Into<Vec<u8>>) -> Response {
        Response {
            status,
            content_type,
            body: body.into(),
            fields: Vec::new(),
        }
    }

    pub fn text(status: u16, body: &str) -> Response {
        let mut b = body.as_bytes().to_vec();
        b.push(b'\n');
        Response::new(status, "text/plain; charset=utf-8", b)
    }

    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response::new(status, "application/json", body)
    }

    pub fn html(status: u16, body: impl Into<Vec<u8>>) -> Response {
        Response::new(status, "text/html; charset=utf-8", body)
    }

    /// A JSON error: `{"error": why}`.
    pub fn error(status: u16, why: &str) -> Response {
        let mut body = b"{\"error\":".to_vec();
        crate::delivery_log::json_string(why, &mut body);
        body.push(b'}');
        Response::json(status, body)
    }

    /// The head and body as sent; a HEAD request gets the head alone.
    pub fn write(&self, head_only: bool, close: bool, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = write!(
            out,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Content-Type-Options: nosniff\r\n",
            self.status,
            reason(self.status),
            self.content_type,
            self.body.len()
        );
        for f in &self.fields {
            out.extend_from_slice(f.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        202 => "Accepted",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_get_with_a_token_and_a_query() {
        let raw = b"GET /api/v1/why?target=a%40b.example&x HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer abc\r\n\r\nrest";
        let (r, used) = parse_head(raw).unwrap().unwrap();
        assert_eq!(used, raw.len() - 4);
        assert_eq!(r.method, Method::Get);
        assert_eq!(r.path, "/api/v1/why");
        assert_eq!(r.query_value("target").as_deref(), Some("a@b.example"));
        assert_eq!(r.query_value("x").as_deref(), Some(""));
        assert_eq!(r.authorization.as_deref(), Some(&b"Bearer abc"[..]));
        assert!(!r.close);
    }

    #[test]
    fn incomplete_heads_wait_and_oversized_ones_are_refused() {
        assert_eq!(parse_head(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(HEAD_BYTES_MAX, b'a');
        assert_eq!(parse_head(&big), Err(HttpError::TooLarge));
        let mut many = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..HEADERS_MAX + 1 {
            many.extend_from_slice(format!("X{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(parse_head(&many), Err(HttpError::TooLarge));
    }

    #[test]
    fn bodies_need_one_honest_length() {
        let two = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n";
        assert!(matches!(parse_head(two), Err(HttpError::Bad(_))));
        let chunked = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(parse_head(chunked), Err(HttpError::LengthRequired));
        let neg = b"POST / HTTP/1.1\r\nContent-Length: -1\r\n\r\n";
        assert!(matches!(parse_head(neg), Err(HttpError::Bad(_))));
        let ok = b"POST /x HTTP/1.0\r\nContent-Length: 12\r\n\r\n";
        let (r, _) = parse_head(ok).unwrap().unwrap();
        assert_eq!((r.content_length, r.close), (12, true));
    }

    #[test]
    fn requests_another_web_page_could_make_are_told_apart() {
        let req = |fields: &str| {
            let raw = format!("POST /api/v1/bounce HTTP/1.1\r\n{fields}\r\n");
            parse_head(raw.as_bytes()).unwrap().unwrap().0
        };
        assert!(!req("Host: 127.0.0.1:8025\r\n").from_elsewhere());
        assert!(!req("Host: localhost:8025\r\nOrigin: http://localhost:8025\r\n").from_elsewhere());
        assert!(!req("Host: [::1]:8025\r\n").from_elsewhere());
        assert!(!req("").from_elsewhere(), "HTTP/1.0 tools may send no Host");
        assert!(
            req("Host: evil.example:8025\r\n").from_elsewhere(),
            "rebinding"
        );
        assert!(
            req("Host: 127.0.0.1:8025\r\nOrigin: https://evil.example\r\n").from_elsewhere(),
            "a cross-site form"
        );
        assert!(req("Host: 127.0.0.1:8025\r\nOrigin: null\r\n").from_elsewhere());
    }

    #[test]
    fn targets_must_be_paths() {
        let abs = b"GET http://evil.example/ HTTP/1.1\r\n\r\n";
        assert!(matches!(parse_head(abs), Err(HttpError::Bad(_))));
        assert!(matches!(
            parse_head(b"\x00\x01 / HTTP/1.1\r\n\r\n"),
            Err(HttpError::Bad(_))
        ));
    }

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode("a%40b+c"), "a@b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%4"), "%4");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }

    #[test]
    fn responses_carry_their_length_and_close_when_asked() {
        let mut out = Vec::new();
        Response::text(404, "no").write(false, true, &mut out);
        let s = String::from_utf8(out).unwrap();
        assert!(s.starts_with("HTTP/1.1 404 Not Found\r\n"), "{s}");
        assert!(s.contains("Content-Length: 3\r\n"));
        assert!(s.contains("Connection: close\r\n"));
        assert!(s.ends_with("\r\n\r\nno\n"));
    }
}
