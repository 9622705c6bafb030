//! Cutting an input into pieces, as a socket read or a buffered writer would deliver it.
//!
//! The first byte of an input says how many of the bytes after it are piece sizes (0 to 7);
//! the rest is the payload, cut into pieces of those sizes in turn. A size byte of 0 means
//! "everything that is left"; 1 to 127 are that many bytes; 128 to 255 are multiples of 64
//! (64 to 8192), so that a piece can cross the parsers' 4096-byte line bound. An input too
//! short for its sizes is one piece.

/// Splits `input` into (piece sizes, payload).
pub fn split_spec(input: &[u8]) -> (&[u8], &[u8]) {
    let Some((&first, rest)) = input.split_first() else {
        return (&[], &[]);
    };
    let n = usize::from(first % 8).min(rest.len());
    rest.split_at(n)
}

/// The payload cut into pieces by `sizes`, in order; their concatenation is `payload`.
pub fn pieces<'a>(sizes: &[u8], payload: &'a [u8]) -> Vec<&'a [u8]> {
    let mut out = Vec::new();
    let mut rest = payload;
    let mut i = 0;
    while !rest.is_empty() {
        let size = match sizes.get(i % sizes.len().max(1)) {
            None | Some(0) => rest.len(),
            Some(&s) if s < 128 => usize::from(s),
            Some(&s) => usize::from(s - 127) * 64,
        };
        let (piece, tail) = rest.split_at(size.min(rest.len()));
        out.push(piece);
        rest = tail;
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_cover_the_payload_in_order() {
        let (sizes, payload) = split_spec(b"\x02\x01\x03abcdefgh");
        assert_eq!(sizes, b"\x01\x03");
        assert_eq!(pieces(sizes, payload), [&b"a"[..], b"bcd", b"e", b"fgh"]);
        assert_eq!(pieces(b"\x00", b"abc"), [&b"abc"[..]]);
        assert_eq!(pieces(b"", b"abc"), [&b"abc"[..]]);
        assert!(pieces(b"\x05", b"").is_empty());
        assert_eq!(pieces(&[128], &[b'x'; 100]).len(), 2);
    }
}
