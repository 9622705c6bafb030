//! RESP, the Redis serialization protocol (version 2, which every Redis speaks until a
//! client says `HELLO 3`), sans I/O: commands encoded as arrays of bulk strings, replies
//! parsed from whatever bytes have arrived.
//!
//! Every byte from the server is hostile: a reply's size is bounded before anything is
//! allocated for it (a simple line `LINE_BYTES_MAX`, a bulk string `BULK_BYTES_MAX`, an
//! array `ARRAY_ITEMS_MAX` items and `DEPTH_MAX` levels), bytes buffered while a reply is
//! incomplete are bounded by the same, and anything malformed is an error that ends the
//! connection (the protocol has no way to find the next reply after a bad one).

use std::fmt;

/// A simple string, error or integer line, without its CRLF.
pub const LINE_BYTES_MAX: usize = 64 * 1024;
/// A bulk string (what Spate stores is small: counters, leases, names, scripts' results).
pub const BULK_BYTES_MAX: usize = 512 * 1024;
/// Items of one array.
pub const ARRAY_ITEMS_MAX: usize = 65_536;
/// Arrays within arrays.
pub const DEPTH_MAX: usize = 8;
/// Bytes one reply may take in all (what the parser buffers at most). Small, because an
/// incomplete reply is parsed again from its start as bytes arrive: the work per reply is
/// this times the pieces it arrives in.
pub const REPLY_BYTES_MAX: usize = 1 << 20;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    /// An error reply (`-ERR ...`): the server's, not the protocol's.
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    Array(Vec<Value>),
    /// `$-1` or `*-1`: no value.
    Nil,
}

impl Value {
    /// The reply's wire form (for tests, and the fuzzer's round trip).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Simple(s) => {
                out.push(b'+');
                out.extend_from_slice(s.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Value::Error(s) => {
                out.push(b'-');
                out.extend_from_slice(s.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            Value::Integer(n) => out.extend_from_slice(format!(":{n}\r\n").as_bytes()),
            Value::Bulk(b) => {
                out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Value::Array(items) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for v in items {
                    v.encode(out);
                }
            }
            Value::Nil => out.extend_from_slice(b"$-1\r\n"),
        }
    }

    /// The integer a reply carries (an integer, or a bulk string of digits, as scripts return).
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Integer(n) => Some(*n),
            Value::Bulk(b) => std::str::from_utf8(b).ok()?.parse().ok(),
            _ => None,
        }
    }
}

/// Why the server's bytes cannot be a reply: the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RespError(pub String);

impl fmt::Display for RespError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed reply from Redis: {}", self.0)
    }
}

/// A command: its arguments as bulk strings, in one array (what every Redis command is).
pub fn encode_command(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Replies from the bytes a connection received, in order.
#[derive(Debug, Default)]
pub struct Parser {
    buf: Vec<u8>,
    /// Bytes of `buf` already handed out as replies.
    start: usize,
}

/// A line past `LINE_BYTES_MAX` without its CRLF.
struct TooLong;

enum Step {
    Done(Value, usize),
    More,
}

impl Parser {
    pub fn new() -> Parser {
        Parser::default()
    }

    /// Bytes received.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Bytes held for a reply not complete yet.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// The next complete reply, `None` until its last byte has arrived. An error is final.
    pub fn next_reply(&mut self) -> Result<Option<Value>, RespError> {
        let pending = &self.buf[self.start..];
        if pending.is_empty() {
            return Ok(None);
        }
        match parse(pending, 0)? {
            Step::Done(v, used) => {
                self.start += used;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                } else if self.start > REPLY_BYTES_MAX {
                    self.buf.drain(..self.start);
                    self.start = 0;
                }
                Ok(Some(v))
            }
            Step::More if pending.len() > REPLY_BYTES_MAX => Err(RespError(format!(
                "a reply of more than {REPLY_BYTES_MAX} bytes"
            ))),
            Step::More => Ok(None),
        }
    }
}

/// One value from the start of `b`, at nesting `depth`.
fn parse(b: &[u8], depth: usize) -> Result<Step, RespError> {
    let Some(&kind) = b.first() else {
        return Ok(Step::More);
    };
    let (line, after) = match line(&b[1..]) {
        Ok(Some((line, used))) => (line, 1 + used),
        Ok(None) => return Ok(Step::More),
        Err(TooLong) => {
            return Err(RespError(format!(
                "a line of more than {LINE_BYTES_MAX} bytes"
            )))
        }
    };
    let text = || String::from_utf8_lossy(line).into_owned();
    match kind {
        b'+' => Ok(Step::Done(Value::Simple(text()), after)),
        b'-' => Ok(Step::Done(Value::Error(text()), after)),
        b':' => Ok(Step::Done(Value::Integer(number(line)?), after)),
        b'$' => {
            let n = number(line)?;
            if n == -1 {
                return Ok(Step::Done(Value::Nil, after));
            }
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= BULK_BYTES_MAX)
                .ok_or_else(|| RespError(format!("a bulk string of length {n}")))?;
            let end = after + n;
            if b.len() < end + 2 {
                return Ok(Step::More);
            }
            if &b[end..end + 2] != b"\r\n" {
                return Err(RespError("a bulk string not followed by CRLF".into()));
            }
            Ok(Step::Done(Value::Bulk(b[after..end].to_vec()), end + 2))
        }
        b'*' => {
            let n = number(line)?;
            if n == -1 {
                return Ok(Step::Done(Value::Nil, after));
            }
            let n = usize::try_from(n)
                .ok()
                .filter(|&n| n <= ARRAY_ITEMS_MAX)
                .ok_or_else(|| RespError(format!("an array of {n} items")))?;
            if depth >= DEPTH_MAX {
                return Err(RespError(format!("arrays nested deeper than {DEPTH_MAX}")));
            }
            // Each item takes at least 3 bytes: nothing is reserved for items not here.
            let mut items = Vec::with_capacity(n.min((b.len() - after) / 3));
            let mut at = after;
            for _ in 0..n {
                match parse(&b[at..], depth + 1)? {
                    Step::Done(v, used) => {
                        items.push(v);
                        at += used;
                    }
                    Step::More => return Ok(Step::More),
                }
            }
            Ok(Step::Done(Value::Array(items), at))
        }
        other => Err(RespError(format!("unknown type byte {other:#04x}"))),
    }
}

/// The line at the start of `b` and the bytes it takes with its CRLF; `None` while its end
/// has not arrived (an error past `LINE_BYTES_MAX`).
fn line(b: &[u8]) -> Result<Option<(&[u8], usize)>, TooLong> {
    let limit = b.len().min(LINE_BYTES_MAX + 2);
    match b[..limit].windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some((&b[..i], i + 2))),
        None if b.len() > LINE_BYTES_MAX + 1 => Err(TooLong),
        None => Ok(None),
    }
}

fn number(line: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(line)
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= 20)
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| {
            RespError(format!(
                "not a number: {:?}",
                String::from_utf8_lossy(&line[..line.len().min(40)])
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(bytes: &[u8]) -> Result<Vec<Value>, RespError> {
        let mut p = Parser::new();
        p.push(bytes);
        let mut out = Vec::new();
        while let Some(v) = p.next_reply()? {
            out.push(v);
        }
        Ok(out)
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        encode_command(&[b"SET", b"k", b"a\r\nb"], &mut out);
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$4\r\na\r\nb\r\n");
    }

    #[test]
    fn every_kind_of_reply_parses_and_round_trips() {
        let replies = vec![
            Value::Simple("OK".into()),
            Value::Error("ERR unknown command".into()),
            Value::Integer(-42),
            Value::Bulk(b"a\r\nb".to_vec()),
            Value::Nil,
            Value::Array(vec![
                Value::Integer(1),
                Value::Array(vec![Value::Bulk(Vec::new()), Value::Nil]),
            ]),
        ];
        let mut wire = Vec::new();
        for r in &replies {
            r.encode(&mut wire);
        }
        assert_eq!(all(&wire).unwrap(), replies);
        // Byte by byte: nothing until each reply is complete, then the same replies.
        let mut p = Parser::new();
        let mut got = Vec::new();
        for &b in &wire {
            p.push(&[b]);
            while let Some(v) = p.next_reply().unwrap() {
                got.push(v);
            }
        }
        assert_eq!(got, replies);
        assert_eq!(p.buffered(), 0);
        assert_eq!(all(b"*-1\r\n").unwrap(), [Value::Nil]);
        assert_eq!(Value::Bulk(b"17".to_vec()).as_i64(), Some(17));
    }

    #[test]
    fn hostile_replies_are_errors_before_anything_is_allocated() {
        for bad in [
            &b"$99999999999\r\n"[..],
            b"*99999999999\r\n",
            b"$-2\r\n",
            b":12x\r\n",
            b"$3\r\nabcde\r\n",
            b"?\r\n",
            b":\r\n",
        ] {
            assert!(all(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        // Nested deeper than the bound.
        let deep = "*1\r\n".repeat(DEPTH_MAX + 1) + ":1\r\n";
        assert!(all(deep.as_bytes()).unwrap_err().0.contains("nested"));
        // A line that never ends is refused once past its bound, not buffered for ever.
        let mut p = Parser::new();
        p.push(b"+");
        p.push(&vec![b'a'; LINE_BYTES_MAX + 8]);
        assert!(p.next_reply().is_err());
        // A huge array announced and not sent reserves nothing for it.
        let mut p = Parser::new();
        p.push(b"*60000\r\n:1\r\n");
        assert_eq!(p.next_reply().unwrap(), None);
    }
}
