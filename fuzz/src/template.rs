//! `template::Template`: parsing any bytes, then checking and rendering any values.
//!
//! Input: NUL-separated pieces. The first is the template (a template may not hold NUL, so
//! nothing is lost); the others are the values of its variables in `var_names` order
//! (missing ones are empty), read as UTF-8 with invalid bytes replaced. Seeds read as text:
//! `Subject: {{ s }}\r\n\r\nbody\0value of s`.
//!
//! Properties:
//! - `parse` never panics; a parsed template has at most `VARS_MAX` variables, each an
//!   identifier of at most `VAR_NAME_BYTES_MAX` bytes;
//! - `check_values` never panics; when it accepts the values:
//!   - `render_into` appends exactly `rendered_len` bytes, whatever `out` held before;
//!   - every line of the rendered header section is at most 998 octets (folded by the
//!     template, not left to the DATA writer);
//!   - no value adds, removes or renames a header field: the field names the receiver reads
//!     after the DATA writer are the template's, where a name holding a placeholder matches
//!     any name, and `parse` refuses a placeholder in a field name (at the start of a header
//!     line, or before its colon), where a value could choose the field. This is what catches
//!     a value that smuggles CR or LF into the header.

use crate::data_writer::{field_names, FieldName};
use spate::smtp::data::{encode_data, message_lines, LINE_OCTETS_MAX};
use spate::template::{Template, VARS_MAX, VAR_NAME_BYTES_MAX};

pub fn check(input: &[u8]) {
    let mut pieces = input.split(|&b| b == 0);
    let source = pieces.next().unwrap_or_default();
    let Ok(t) = Template::parse(source.to_vec()) else {
        return;
    };
    assert!(t.var_names().len() <= VARS_MAX);
    for name in t.var_names() {
        assert!(
            !name.is_empty() && name.len() <= VAR_NAME_BYTES_MAX,
            "{name:?}"
        );
    }
    let given: Vec<String> = pieces
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let values: Vec<&str> = (0..t.var_names().len())
        .map(|i| given.get(i).map_or("", String::as_str))
        .collect();
    if t.check_values(&values).is_err() {
        return;
    }
    let bytes: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
    let mut out = b"prefix\r\n".to_vec();
    t.render_into(&bytes, &mut out);
    let rendered = &out[b"prefix\r\n".len()..];
    assert_eq!(rendered.len(), t.rendered_len(&bytes), "rendered_len");
    let mut alone = Vec::new();
    t.render_into(&bytes, &mut alone);
    assert!(alone == rendered, "rendering depends on what `out` held");

    for line in message_lines(rendered).take_while(|l| !l.is_empty()) {
        assert!(
            line.len() <= LINE_OCTETS_MAX,
            "rendered header line of {}",
            line.len()
        );
    }
    let want = template_fields(source);
    let data = encode_data(rendered);
    let received = received_lines(&data);
    let got = field_names(&received);
    assert_eq!(got.len(), want.len(), "header fields: {got:?} for {want:?}");
    for (g, w) in got.iter().zip(&want) {
        if let Some(w) = w {
            assert_eq!(
                g,
                &FieldName::Name(w.as_slice()),
                "a header field was renamed"
            );
        }
    }
}

/// The template's header field names as the receiver will read them (`None` where the name
/// holds whitespace, which a fold may split).
fn template_fields(source: &[u8]) -> Vec<Option<Vec<u8>>> {
    let skeleton = skeleton(source);
    let mut fields = Vec::new();
    for line in message_lines(&skeleton) {
        if line.is_empty() {
            break;
        }
        if line.starts_with(b" ") || line.starts_with(b"\t") {
            continue;
        }
        let colon = line.iter().position(|&b| b == b':');
        let placeholder = find(line, PLACEHOLDER);
        assert!(
            placeholder.is_none_or(|p| colon.is_some_and(|c| c < p)),
            "parse accepted a placeholder in a field name: {:?}",
            String::from_utf8_lossy(line)
        );
        let name = colon
            .map(|c| &line[..c])
            .filter(|name| name.len() < LINE_OCTETS_MAX - 1)
            .filter(|name| !name.iter().any(|&b| matches!(b, b' ' | b'\t')));
        fields.push(name.map(<[u8]>::to_vec));
    }
    fields
}

/// What every placeholder becomes in `skeleton`.
const PLACEHOLDER: &[u8] = b"{{}}";

/// The source with every placeholder (which may span lines: its name is trimmed) replaced
/// by `PLACEHOLDER`: the lines of the skeleton are the lines of every rendering whose values
/// hold no line break.
fn skeleton(source: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(source.len());
    let mut rest = source;
    while let Some(open) = find(rest, b"{{") {
        let Some(close) = find(&rest[open + 2..], b"}}") else {
            break;
        };
        out.extend_from_slice(&rest[..open]);
        out.extend_from_slice(PLACEHOLDER);
        rest = &rest[open + 2 + close + 2..];
    }
    out.extend_from_slice(rest);
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// The lines the server reads from DATA content: CRLF removed, dot-stuffing undone.
fn received_lines(data: &[u8]) -> Vec<&[u8]> {
    let body = &data[..data.len() - b".\r\n".len()];
    let mut lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    lines.pop();
    lines
        .into_iter()
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .map(|l| l.strip_prefix(b".").unwrap_or(l))
        .collect()
}
