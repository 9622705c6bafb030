//! Campaign templates: a complete RFC 5322 message with `{{ name }}` placeholders.
//!
//! The template is parsed once per batch into literal runs and placeholders, each placeholder
//! knowing whether it sits in the header section. Per recipient, only the values the template
//! uses are kept (in placeholder-name order), so a queued recipient stores just what its
//! rendering needs. Only `{{ name }}` is interpreted (Jinja's expression syntax without filters);
//! other text, `{%` included, is literal. An undefined variable renders empty, as in Jinja.
//!
//! Header lines longer than 998 octets are folded when rendered (RFC 5322 2.2.3: a CRLF put
//! before an existing space or tab, so the rest continues the same field). A line that cannot
//! be folded is refused before anything is queued: by `parse` when the template's own text
//! makes it, by `check_values` when a recipient's values do. Otherwise the DATA writer would
//! have to break it, and a value could choose what the break leaves at the start of a line.
//!
//! Pure code; no I/O.

use crate::smtp::data::{DataWriter, LINE_OCTETS_MAX};
use std::fmt;
use std::ops::Range;

/// Longest variable name accepted in a placeholder.
pub const VAR_NAME_BYTES_MAX: usize = 128;
/// Distinct variables one template may use; bounds every recipient record.
pub const VARS_MAX: usize = 256;
/// Characters of a header field name shown in an error; enough for any real field name,
/// and bounded because the "name" of a malformed line can be the whole line.
const FIELD_NAME_SHOWN_CHARS_MAX: usize = 64;
/// What a fold inserts before the space or tab it folds at.
const FOLD: &[u8] = b"\r\n";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    Literal(Range<usize>),
    /// Index into `Template::var_names`.
    Var {
        index: usize,
        in_header: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    source: Vec<u8>,
    /// The header section's parts (`..header_parts`), then the body's. A literal that spans
    /// the end of the header is split there, so rendering can fold the header alone.
    parts: Vec<Part>,
    header_parts: usize,
    var_names: Vec<String>,
    /// Which of `var_names` appear in the header section.
    var_in_header: Vec<bool>,
    /// The header lines that hold a placeholder, checked against the line limit per recipient.
    header_lines: Vec<HeaderLine>,
    /// Octets the folds of the header lines without placeholders add to every rendering.
    literal_fold_octets: usize,
}

/// A header line holding a placeholder. Its literal length is kept so that a recipient's
/// values are checked by adding lengths; only a line that comes out over the limit is
/// rendered to find where it folds.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HeaderLine {
    /// Literal pieces (never holding CR or LF) and placeholders, in order.
    pieces: Vec<Part>,
    literal_len: usize,
    /// The field the line belongs to, for error messages.
    field: String,
}

/// What folding one rendered header line comes to.
struct LineFolds {
    octets: usize,
    folds: usize,
    /// Every piece is within the limit.
    fits: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(pub String);

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Template {
    /// Parses a template; errors name the byte offset of the faulty placeholder, or the
    /// header line that is too long to fold.
    pub fn parse(source: Vec<u8>) -> Result<Template, TemplateError> {
        let Some(header_end) = header_section_end(&source) else {
            return Err(TemplateError(
                "template has no blank line between header and body".into(),
            ));
        };
        if source.contains(&0) {
            return Err(TemplateError("template contains a NUL byte".into()));
        }
        let mut parts = Vec::new();
        let mut var_names: Vec<String> = Vec::new();
        let mut var_in_header: Vec<bool> = Vec::new();
        let mut literal_start = 0;
        let mut i = 0;
        while let Some(open) = find(&source[i..], b"{{").map(|p| p + i) {
            let close = find(&source[open + 2..], b"}}")
                .map(|p| p + open + 2)
                .ok_or_else(|| {
                    TemplateError(format!("template byte {open}: '{{{{' is never closed"))
                })?;
            let name = std::str::from_utf8(&source[open + 2..close])
                .map(str::trim)
                .unwrap_or("");
            if !is_identifier(name) {
                return Err(TemplateError(format!(
                    "template byte {open}: unsupported placeholder {:?} (only {{{{ name }}}} is supported)",
                    String::from_utf8_lossy(&source[open..close + 2])
                )));
            }
            let in_header = open < header_end;
            if in_header && close + 2 > header_end {
                return Err(TemplateError(format!(
                    "template byte {open}: placeholder runs over the blank line that ends the header"
                )));
            }
            if in_header && in_field_name(&source[..open]) {
                return Err(TemplateError(format!(
                    "template byte {open}: placeholder {{{{ {name} }}}} is in a header field's name; only field values may hold placeholders (a value there could add, end or join fields)"
                )));
            }
            push_literal(&mut parts, literal_start..open, header_end);
            let index = match var_names.iter().position(|n| n == name) {
                Some(idx) => idx,
                None => {
                    if var_names.len() == VARS_MAX {
                        return Err(TemplateError(format!(
                            "template uses more than {VARS_MAX} distinct variables"
                        )));
                    }
                    var_names.push(name.to_string());
                    var_in_header.push(false);
                    var_names.len() - 1
                }
            };
            var_in_header[index] |= in_header;
            parts.push(Part::Var { index, in_header });
            i = close + 2;
            literal_start = i;
        }
        push_literal(&mut parts, literal_start..source.len(), header_end);
        let header_parts = parts
            .iter()
            .take_while(|p| match p {
                Part::Literal(r) => r.start < header_end,
                Part::Var { in_header, .. } => *in_header,
            })
            .count();
        let (header_lines, literal_fold_octets) =
            header_lines(&source, &parts[..header_parts], &var_names)?;
        Ok(Template {
            source,
            parts,
            header_parts,
            var_names,
            var_in_header,
            header_lines,
            literal_fold_octets,
        })
    }

    /// A message to send as it is (pickup `.eml`): no placeholders are interpreted and no
    /// line is folded (intake refuses a pickup with a header line over the limit).
    pub fn verbatim(source: Vec<u8>) -> Template {
        let parts = if source.is_empty() {
            Vec::new()
        } else {
            vec![Part::Literal(0..source.len())]
        };
        Template {
            source,
            parts,
            header_parts: 0,
            var_names: Vec::new(),
            var_in_header: Vec::new(),
            header_lines: Vec::new(),
            literal_fold_octets: 0,
        }
    }

    pub fn source(&self) -> &[u8] {
        &self.source
    }

    pub fn var_names(&self) -> &[String] {
        &self.var_names
    }

    /// Checks one recipient's values (aligned with `var_names`) before it is queued: a value
    /// used in the header may not hold CR, LF or NUL (header injection), no value may hold
    /// NUL, and every header line must fit in 998 octets or fold to fit (the way rendering
    /// will fold it). The error names the variable.
    pub fn check_values(&self, values: &[&str]) -> Result<(), TemplateError> {
        assert_eq!(values.len(), self.var_names.len());
        for ((name, value), in_header) in self.var_names.iter().zip(values).zip(&self.var_in_header)
        {
            let bad_in_header = *in_header && value.bytes().any(|b| b == b'\r' || b == b'\n');
            if bad_in_header {
                return Err(TemplateError(format!(
                    "variable {name:?} would put CR or LF into a header"
                )));
            }
            if value.contains('\0') {
                return Err(TemplateError(format!("variable {name:?} contains NUL")));
            }
        }
        let mut scratch = Vec::new();
        for line in &self.header_lines {
            let folds = self.fold_header_line(line, values, &mut scratch);
            if !folds.fits {
                return Err(TemplateError(format!(
                    "variable {:?} makes header line {:?} {} octets long with no space to fold at (limit {LINE_OCTETS_MAX})",
                    self.var_names[line.longest_var(values)],
                    line.field,
                    folds.octets
                )));
            }
        }
        Ok(())
    }

    /// Renders the message for one recipient's values (aligned with `var_names`), folding
    /// header lines over the limit. The header is rendered in place and only copied again
    /// when a line needs folding, which values that passed `check_values` rarely make.
    pub fn render_into(&self, values: &[&[u8]], out: &mut Vec<u8>) {
        assert_eq!(values.len(), self.var_names.len());
        let (header, body) = self.parts.split_at(self.header_parts);
        let header_start = out.len();
        render_parts(&self.source, header, values, out);
        if has_line_over_limit(&out[header_start..]) {
            let unfolded = out.split_off(header_start);
            fold_header_section(&unfolded, out);
        }
        render_parts(&self.source, body, values, out);
    }

    /// Renders the message for one recipient's values into DATA form: rendered into
    /// `scratch` (any buffer kept between calls), then fed through `w` onto `out` whole.
    /// Feeding the writer each part in turn instead, so the body is copied once, measured
    /// twice as slow on a template personalised on every line (280 parts): the writer's work
    /// per call outweighs a 10 KiB copy that stays in cache.
    pub fn render_data(
        &self,
        values: &[&[u8]],
        w: &mut DataWriter,
        out: &mut Vec<u8>,
        scratch: &mut Vec<u8>,
    ) {
        scratch.clear();
        self.render_into(values, scratch);
        w.write(scratch, out);
    }

    /// The rendered size for these values, folds included, without rendering the message.
    pub fn rendered_len(&self, values: &[&[u8]]) -> usize {
        let unfolded: usize = self
            .parts
            .iter()
            .map(|p| match p {
                Part::Literal(r) => r.len(),
                Part::Var { index, .. } => values[*index].len(),
            })
            .sum();
        let mut scratch = Vec::new();
        let folds: usize = self
            .header_lines
            .iter()
            .map(|line| self.fold_header_line(line, values, &mut scratch).folds)
            .sum();
        unfolded + self.literal_fold_octets + folds * FOLD.len()
    }

    /// How one header line folds with these values. Most lines fit, which adding lengths
    /// shows; a longer one is rendered into `scratch` and folded as `render_into` would.
    fn fold_header_line<V: AsRef<[u8]>>(
        &self,
        line: &HeaderLine,
        values: &[V],
        scratch: &mut Vec<u8>,
    ) -> LineFolds {
        let values_len: usize = line
            .pieces
            .iter()
            .map(|p| match p {
                Part::Literal(_) => 0,
                Part::Var { index, .. } => values[*index].as_ref().len(),
            })
            .sum();
        let octets = line.literal_len + values_len;
        if octets <= LINE_OCTETS_MAX {
            return LineFolds {
                octets,
                folds: 0,
                fits: true,
            };
        }
        scratch.clear();
        render_parts(&self.source, &line.pieces, values, scratch);
        let mut folds = 0;
        let fits = fold_line(scratch, |_| folds += 1);
        LineFolds {
            octets,
            folds,
            fits,
        }
    }
}

impl HeaderLine {
    /// The variable with the longest value on this line: the one to name when it is too long.
    fn longest_var(&self, values: &[&str]) -> usize {
        let vars = self.pieces.iter().filter_map(|p| match p {
            Part::Var { index, .. } => Some(*index),
            Part::Literal(_) => None,
        });
        // The first of equals, so the message names the same variable every time.
        vars.rev()
            .max_by_key(|&index| values[index].len())
            .unwrap_or_default()
    }
}

/// True if a placeholder after `before` (the template up to it, in the header section)
/// would be part of a field name: at the start of a line (after LF or a bare CR, which the
/// DATA writer turns into a line break) or before the line's first colon. A continuation
/// line (starting with a space or tab) holds only value text.
fn in_field_name(before: &[u8]) -> bool {
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n' || b == b'\r')
        .map_or(0, |p| p + 1);
    let line = &before[line_start..];
    match line.first() {
        None => true,
        Some(b' ' | b'\t') => false,
        Some(_) => !line.contains(&b':'),
    }
}

/// Appends a literal part, split at the end of the header so that no part spans it.
fn push_literal(parts: &mut Vec<Part>, range: Range<usize>, header_end: usize) {
    let split = header_end.clamp(range.start, range.end);
    for r in [range.start..split, split..range.end] {
        if !r.is_empty() {
            parts.push(Part::Literal(r));
        }
    }
}

/// Splits the header parts into lines: the lines that hold a placeholder, to check per
/// recipient, and the octets that folding the others adds. A line of literal text alone
/// that cannot be folded refuses the template.
fn header_lines(
    source: &[u8],
    header: &[Part],
    var_names: &[String],
) -> Result<(Vec<HeaderLine>, usize), TemplateError> {
    let mut lines = Vec::new();
    let mut fold_octets = 0;
    let mut field = String::new();
    for pieces in split_lines(source, header) {
        if pieces.is_empty() {
            continue;
        }
        field = field_name(source, &pieces, var_names).unwrap_or(field);
        let literal_len: usize = pieces
            .iter()
            .map(|p| match p {
                Part::Literal(r) => r.len(),
                Part::Var { .. } => 0,
            })
            .sum();
        let line = HeaderLine {
            pieces,
            literal_len,
            field: field.clone(),
        };
        if line.pieces.iter().any(|p| matches!(p, Part::Var { .. })) {
            lines.push(line);
        } else if literal_len > LINE_OCTETS_MAX {
            fold_octets += literal_line_folds(source, &line)? * FOLD.len();
        }
    }
    Ok((lines, fold_octets))
}

/// The folds a header line of literal text needs, or the error refusing the template.
fn literal_line_folds(source: &[u8], line: &HeaderLine) -> Result<usize, TemplateError> {
    let mut text = Vec::with_capacity(line.literal_len);
    render_parts::<&[u8]>(source, &line.pieces, &[], &mut text);
    let mut folds = 0;
    if fold_line(&text, |_| folds += 1) {
        return Ok(folds);
    }
    Err(TemplateError(format!(
        "template header line {:?} is {} octets long with no space to fold at (limit {LINE_OCTETS_MAX})",
        line.field, line.literal_len
    )))
}

/// The header parts as lines of pieces; CR and LF each end a line, as on the wire, where
/// the DATA writer turns a bare one into CRLF. (CRLF makes an empty line in between.)
fn split_lines(source: &[u8], header: &[Part]) -> Vec<Vec<Part>> {
    let mut lines = vec![Vec::new()];
    for part in header {
        match part {
            Part::Literal(r) => {
                let mut start = r.start;
                for brk in memchr::memchr2_iter(b'\r', b'\n', &source[r.clone()]) {
                    push_piece(&mut lines, start..r.start + brk);
                    lines.push(Vec::new());
                    start = r.start + brk + 1;
                }
                push_piece(&mut lines, start..r.end);
            }
            Part::Var { .. } => push_piece_part(&mut lines, part.clone()),
        }
    }
    lines
}

fn push_piece(lines: &mut [Vec<Part>], range: Range<usize>) {
    if !range.is_empty() {
        push_piece_part(lines, Part::Literal(range));
    }
}

fn push_piece_part(lines: &mut [Vec<Part>], part: Part) {
    if let Some(line) = lines.last_mut() {
        line.push(part);
    }
}

/// A header line's field name (the text before its colon, a placeholder shown as written),
/// or `None` for a continuation line, which belongs to the field before it.
fn field_name(source: &[u8], pieces: &[Part], var_names: &[String]) -> Option<String> {
    if matches!(pieces.first(), Some(Part::Literal(r)) if is_wsp(source[r.start])) {
        return None;
    }
    let mut name = String::new();
    for piece in pieces {
        match piece {
            Part::Literal(r) => {
                let text = &source[r.clone()];
                let end = memchr::memchr(b':', text).unwrap_or(text.len());
                // Enough octets for the characters shown (UTF-8 takes at most 4 a character).
                let shown = end.min(FIELD_NAME_SHOWN_CHARS_MAX * 4);
                name.push_str(&String::from_utf8_lossy(&text[..shown]));
                if end < text.len() {
                    break;
                }
            }
            Part::Var { index, .. } => name.push_str(&format!("{{{{ {} }}}}", var_names[*index])),
        }
        if name.chars().count() > FIELD_NAME_SHOWN_CHARS_MAX {
            break;
        }
    }
    Some(name.chars().take(FIELD_NAME_SHOWN_CHARS_MAX).collect())
}

fn render_parts<V: AsRef<[u8]>>(source: &[u8], parts: &[Part], values: &[V], out: &mut Vec<u8>) {
    for part in parts {
        match part {
            Part::Literal(r) => out.extend_from_slice(&source[r.clone()]),
            Part::Var { index, .. } => out.extend_from_slice(values[*index].as_ref()),
        }
    }
}

/// Whether any line (ended by CR or LF, or by the end) is over the limit: the cheap test
/// that lets almost every rendering skip folding.
fn has_line_over_limit(text: &[u8]) -> bool {
    let mut rest = text;
    while let Some(brk) = memchr::memchr2(b'\r', b'\n', rest) {
        if brk > LINE_OCTETS_MAX {
            return true;
        }
        rest = &rest[brk + 1..];
    }
    rest.len() > LINE_OCTETS_MAX
}

/// Appends a rendered header section (without the empty line that ends it) to `out`, with
/// every line over 998 octets folded (RFC 5322 2.2.3) by `fold_line`; shorter lines and
/// the line breaks are copied byte for byte. A line that cannot be folded all the way is
/// folded as far as it can be and the rest left long: `check_values` refuses such values at
/// intake, and the DATA writer folds whatever is left, so it cannot start a new field.
pub fn fold_header_section(header: &[u8], out: &mut Vec<u8>) {
    let mut rest = header;
    loop {
        let end = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
        let line = &rest[..end];
        let mut piece_start = 0;
        // Whether it fits in the end makes no difference here (see above).
        let _fits = fold_line(line, |at| {
            out.extend_from_slice(&line[piece_start..at]);
            out.extend_from_slice(FOLD);
            piece_start = at;
        });
        out.extend_from_slice(&line[piece_start..]);
        let Some(&brk) = rest.get(end) else {
            return;
        };
        out.push(brk);
        rest = &rest[end + 1..];
    }
}

/// Folds one header line (no CR or LF) of more than 998 octets: calls `fold_before` with
/// each offset where a fold goes, in order, and returns whether every piece then fits.
///
/// Each fold goes before the last space or tab that keeps the piece before it within the
/// limit, and never where it would leave a piece of whitespace only (a line of whitespace
/// alone is obsolete syntax, and some receivers read it as the end of the header). This
/// greedy choice is the one `check_values` and rendering both use, so they always agree;
/// it refuses some lines with long runs of whitespace that a cleverer choice could fold,
/// which no real header has.
fn fold_line(line: &[u8], mut fold_before: impl FnMut(usize)) -> bool {
    if line.len() <= LINE_OCTETS_MAX {
        return true;
    }
    // A fold must leave something other than whitespace after it.
    let Some(last_text) = line.iter().rposition(|&b| !is_wsp(b)) else {
        return false;
    };
    let mut start = 0;
    while line.len() - start > LINE_OCTETS_MAX {
        // ...and before it, in the piece it ends.
        let Some(first_text) = line[start..].iter().position(|&b| !is_wsp(b)) else {
            return false;
        };
        let lowest = start + first_text + 1;
        let highest = (start + LINE_OCTETS_MAX).min(last_text.saturating_sub(1));
        if lowest > highest {
            return false;
        }
        let Some(at) = memchr::memrchr2(b' ', b'\t', &line[lowest..=highest]) else {
            return false;
        };
        fold_before(lowest + at);
        start = lowest + at;
    }
    true
}

/// RFC 5322 WSP: what a folded line continues with.
fn is_wsp(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

/// Offset of the blank line ending the header section (`\r\n\r\n` or `\n\n`), if any.
pub fn header_section_end(message: &[u8]) -> Option<usize> {
    let crlf = find(message, b"\r\n\r\n");
    let lf = find(message, b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn is_identifier(s: &str) -> bool {
    let mut bytes = s.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && s.len() <= VAR_NAME_BYTES_MAX
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smtp::data::encode_data;
    use proptest::prelude::*;

    const T: &str = "From: Acme <news@acme.example>\r\nTo: {{ to }}\r\nSubject: Hi {{first_name}}\r\n\r\nHello {{ first_name }}! {{ code }}\r\n";

    fn render(t: &Template, values: &[&str]) -> String {
        let v: Vec<&[u8]> = values.iter().map(|s| s.as_bytes()).collect();
        let mut out = Vec::new();
        t.render_into(&v, &mut out);
        assert_eq!(out.len(), t.rendered_len(&v));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn parses_and_renders() {
        let t = Template::parse(T.as_bytes().to_vec()).unwrap();
        assert_eq!(t.var_names(), ["to", "first_name", "code"]);
        let s = render(&t, &["a@x.example", "Alice", "42"]);
        assert_eq!(
            s,
            "From: Acme <news@acme.example>\r\nTo: a@x.example\r\nSubject: Hi Alice\r\n\r\nHello Alice! 42\r\n"
        );
    }

    #[test]
    fn header_injection_is_refused_but_body_newlines_are_fine() {
        let t = Template::parse(T.as_bytes().to_vec()).unwrap();
        let e = t
            .check_values(&["a@x.example", "Eve\r\nBcc: all@x", "1"])
            .unwrap_err();
        assert!(e.0.contains("first_name"), "{e}");
        assert!(t
            .check_values(&["a@x.example", "Ann", "line1\nline2"])
            .is_ok());
        assert!(t.check_values(&["a@x.example", "Ann", "nul\0"]).is_err());
    }

    #[test]
    fn refuses_malformed_templates() {
        for (src, why) in [
            ("Subject: x\r\n\r\n{{ name", "never closed"),
            ("Subject: x\r\n\r\n{{ a|upper }}", "unsupported placeholder"),
            ("Subject: x\r\nno body separator", "no blank line"),
            ("Subject: x\r\n\r\n\0", "NUL"),
            (
                "Subject: {{ s\r\n\r\n }}body\r\n",
                "runs over the blank line",
            ),
            // A value that starts a header line chooses it: `Bcc: x@evil.example` adds a
            // field, an empty value ends the header, a leading space joins the field above.
            ("{{ v }}\r\nSubject: x\r\n\r\nbody", "field's name"),
            ("Subject: x\r\n{{ v }}\r\n\r\nbody", "field's name"),
            ("X: a\r{{ v }}\nSubject: x\r\n\r\nbody", "field's name"),
            ("X-{{ v }}: a\r\n\r\nbody", "field's name"),
        ] {
            let e = Template::parse(src.as_bytes().to_vec()).unwrap_err();
            assert!(e.0.contains(why), "{src:?}: {e}");
        }
    }

    #[test]
    fn placeholders_in_values_and_continuation_lines_are_fine() {
        let t = Template::parse(
            b"Subject: {{ s }}: {{ s }}\r\nX-Long: a\r\n\t{{ s }}\r\n\r\n{{ s }}\r\n".to_vec(),
        )
        .unwrap();
        assert_eq!(
            render(&t, &["hi"]),
            "Subject: hi: hi\r\nX-Long: a\r\n\thi\r\n\r\nhi\r\n"
        );
    }

    #[test]
    fn verbatim_keeps_braces() {
        let t = Template::verbatim(b"Subject: {{ x }}\r\n\r\nbody".to_vec());
        assert_eq!(render(&t, &[]), "Subject: {{ x }}\r\n\r\nbody");
    }

    /// The attack of the bug report: with `Subject: ` (9 octets) in front, 989 octets of
    /// value put `Reply-To:` exactly where a 998-octet line used to be split.
    fn attack_value() -> String {
        format!("{}Reply-To: evil@attacker.example", "A".repeat(989))
    }

    /// Field names of a DATA stream's header section, continuation lines skipped.
    fn field_names(data: &[u8]) -> Vec<String> {
        let text = String::from_utf8_lossy(data);
        let header = text.split("\r\n\r\n").next().unwrap_or_default();
        header
            .split("\r\n")
            .filter(|l| !l.starts_with([' ', '\t']))
            .map(|l| l.split(':').next().unwrap_or_default().to_string())
            .collect()
    }

    /// A header's value with the folds taken out (RFC 5322 2.2.3: remove CRLF before WSP).
    fn unfolded_value(data: &[u8], name: &str) -> String {
        let text = String::from_utf8_lossy(data)
            .replace("\r\n ", " ")
            .replace("\r\n\t", "\t");
        let prefix = format!("{name}: ");
        let line = text.split("\r\n").find(|l| l.starts_with(&prefix)).unwrap();
        line[prefix.len()..].to_string()
    }

    fn subject_template() -> Template {
        Template::parse(b"From: a@acme.example\r\nSubject: {{ s }}\r\n\r\nHi {{ s }}\r\n".to_vec())
            .unwrap()
    }

    #[test]
    fn attack_value_is_refused_and_even_rendered_cannot_add_a_field() {
        let t = subject_template();
        let value = attack_value();
        let e = t.check_values(&[&value]).unwrap_err();
        assert_eq!(
            e.0,
            "variable \"s\" makes header line \"Subject\" 1029 octets long with no space to fold at (limit 998)"
        );
        // Rendered anyway (a record queued before this check existed): still one Subject.
        let data = encode_data(render(&t, &[&value]).as_bytes());
        assert_eq!(field_names(&data), ["From", "Subject"]);
        assert!(data
            .split(|&b| b == b'\n')
            .all(|l| l.len() <= LINE_OCTETS_MAX + 1));
        // The template folds after "Subject:"; the DATA writer has to fold the rest where
        // it reaches the limit, which costs the value one space, not a new field.
        assert_eq!(
            unfolded_value(&data, "Subject"),
            value.replacen("Reply-To:", "Reply-To :", 1)
        );
    }

    #[test]
    fn long_value_is_folded_at_whitespace_not_split_into_a_new_field() {
        // The same attack with one space early on: foldable, so accepted and folded.
        let value = format!("hello {}Reply-To: evil@attacker.example", "A".repeat(983));
        let t = subject_template();
        t.check_values(&[&value]).unwrap();
        let rendered = render(&t, &[&value]);
        assert!(rendered.starts_with("From: a@acme.example\r\nSubject: hello\r\n AAA"));
        let data = encode_data(rendered.as_bytes());
        assert_eq!(field_names(&data), ["From", "Subject"]);
        assert_eq!(unfolded_value(&data, "Subject"), value);
        // The body keeps the value as it is.
        assert!(rendered.ends_with(&format!("\r\n\r\nHi {value}\r\n")));
    }

    #[test]
    fn folds_at_the_last_space_that_fits() {
        let line = format!(
            "Subject: {} {} {}",
            "a".repeat(500),
            "b".repeat(400),
            "c".repeat(300)
        );
        let mut out = Vec::new();
        fold_header_section(line.as_bytes(), &mut out);
        let want = format!("{}\r\n{}", &line[..910], &line[910..]);
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn tabs_are_fold_points() {
        let line = format!(
            "Subject: {} {}\t{}",
            "a".repeat(500),
            "b".repeat(400),
            "c".repeat(300)
        );
        let mut out = b"Message-ID: <1@x>\r\n".to_vec();
        fold_header_section(line.as_bytes(), &mut out);
        let want = format!("Message-ID: <1@x>\r\n{}\r\n{}", &line[..910], &line[910..]);
        assert_eq!(String::from_utf8(out).unwrap(), want);
    }

    #[test]
    fn never_leaves_a_piece_of_whitespace_only() {
        for line in [
            // Only leading whitespace within reach (a continuation line).
            format!(" {}{}", " ".repeat(999), "x".repeat(100)),
            // Only trailing whitespace past the limit.
            format!("Subject: {}{}", "a".repeat(995), " ".repeat(10)),
            // Nothing but whitespace after the first octet.
            format!("x{}", " ".repeat(1000)),
        ] {
            let mut out = Vec::new();
            fold_header_section(line.as_bytes(), &mut out);
            let out = String::from_utf8(out).unwrap();
            assert!(out.split("\r\n").all(|piece| piece.trim() != ""), "{out:?}");
        }
        let t = Template::parse(b"Subject: {{ s }}\r\n\r\n".to_vec()).unwrap();
        let trailing = format!("{}{}", "a".repeat(995), " ".repeat(10));
        assert!(t.check_values(&[&trailing]).is_err());
    }

    #[test]
    fn value_with_no_space_to_fold_at_is_refused_naming_the_variable() {
        let t = Template::parse(
            b"To: {{ to }}\r\nSubject: Hi\r\n  {{ s }} and {{ to }}\r\n\r\n".to_vec(),
        )
        .unwrap();
        let e = t
            .check_values(&["a@x.example", &"s".repeat(1500)])
            .unwrap_err();
        assert_eq!(
            e.0,
            "variable \"s\" makes header line \"Subject\" 1518 octets long with no space to fold at (limit 998)"
        );
        assert!(t.check_values(&["a@x.example", &"s ".repeat(750)]).is_ok());
    }

    #[test]
    fn template_with_an_unfoldable_header_line_is_refused() {
        let src = format!(
            "From: a@acme.example\r\nX-Long: {}\r\n\r\nbody\r\n",
            "x".repeat(1200)
        );
        let e = Template::parse(src.into_bytes()).unwrap_err();
        assert_eq!(
            e.0,
            "template header line \"X-Long\" is 1208 octets long with no space to fold at (limit 998)"
        );
        // Foldable: accepted, and folded whenever it is rendered.
        let src = format!(
            "X-Long: {} {}\r\n\r\nbody\r\n",
            "x".repeat(600),
            "y".repeat(600)
        );
        let t = Template::parse(src.into_bytes()).unwrap();
        assert!(render(&t, &[]).starts_with(&format!(
            "X-Long: {}\r\n {}\r\n",
            "x".repeat(600),
            "y".repeat(600)
        )));
        // Long lines in the body are the DATA writer's to break, not the template's.
        let src = format!(
            "Subject: s\r\n\r\n{} {}\r\n",
            "x".repeat(600),
            "y".repeat(600)
        );
        let t = Template::parse(src.clone().into_bytes()).unwrap();
        assert_eq!(render(&t, &[]), src);
    }

    #[test]
    fn lines_within_the_limit_are_untouched() {
        let t = subject_template();
        let value = format!(
            "{} {}",
            "a".repeat(500),
            "b".repeat(LINE_OCTETS_MAX - 9 - 501)
        );
        t.check_values(&[&value]).unwrap();
        let rendered = render(&t, &[&value]);
        assert_eq!(
            rendered,
            format!("From: a@acme.example\r\nSubject: {value}\r\n\r\nHi {value}\r\n")
        );
        let mut out = Vec::new();
        let header = format!("A: b\nSubject: {value}\r\n\tx\ry");
        fold_header_section(header.as_bytes(), &mut out);
        assert_eq!(out, header.as_bytes());
    }

    proptest! {
        /// Any header values (spaces and tabs, no CR or LF): refused at intake only when a
        /// line is over the limit, and otherwise rendered with every header line within it
        /// and unfolding to exactly the unlimited rendering.
        #[test]
        fn folded_headers_fit_and_unfold_to_the_values(
            s in value_bytes(), t in value_bytes()
        ) {
            let template = Template::parse(
                b"From: a@acme.example\r\nSubject: {{ s }}\r\nX-Tag: {{ t }}-{{ s }}\r\n\r\nbody {{ s }}\r\n".to_vec(),
            ).unwrap();
            let header = format!("From: a@acme.example\r\nSubject: {s}\r\nX-Tag: {t}-{s}");
            match template.check_values(&[&s, &t]) {
                Err(e) => {
                    prop_assert!(header.split("\r\n").any(|l| l.len() > LINE_OCTETS_MAX), "{}", e);
                    prop_assert!(e.0.starts_with("variable \"s\"") || e.0.starts_with("variable \"t\""), "{}", e);
                }
                Ok(()) => {
                    let rendered = render(&template, &[&s, &t]);
                    let (folded, body) = rendered.split_once("\r\n\r\n").unwrap();
                    prop_assert!(folded.split("\r\n").all(|l| l.len() <= LINE_OCTETS_MAX));
                    prop_assert!(folded.split("\r\n").all(|l| l.trim() != ""));
                    let unfolded = folded.replace("\r\n ", " ").replace("\r\n\t", "\t");
                    prop_assert_eq!(&unfolded, &header);
                    prop_assert_eq!(body, format!("body {s}\r\n"));
                    let data = encode_data(rendered.as_bytes());
                    prop_assert_eq!(field_names(&data), ["From", "Subject", "X-Tag"]);
                }
            }
        }
    }

    proptest! {
        /// Rendering straight into DATA form is byte for byte rendering and then encoding,
        /// whatever the template and values hold (dots at line starts, bare CR and LF, long
        /// lines in the header and in the body, 8-bit octets), with the same size and 8-bit
        /// flag.
        #[test]
        fn rendering_into_data_form_is_rendering_then_encoding(
            source in proptest::collection::vec(prop_oneof![
                20 => Just("x".to_string()), 3 => Just(".".to_string()), 3 => Just("\r\n".to_string()),
                1 => Just("\n".to_string()), 1 => Just("\r".to_string()), 2 => Just(": ".to_string()),
                2 => Just(" ".to_string()), 1 => Just("\u{e9}".to_string()),
                1 => Just("y".repeat(700)), 3 => Just("{{ a }}".to_string()), 3 => Just("{{ b }}".to_string()),
            ], 0..60),
            a in proptest::collection::vec(prop_oneof![Just(b'v'), Just(b'.'), Just(b'\n'), Just(b' '), Just(0xff)], 0..1200),
            b in proptest::collection::vec(prop_oneof![Just(b'w'), Just(b'.'), Just(b'\r'), Just(b' ')], 0..40),
        ) {
            let Ok(t) = Template::parse(source.concat().into_bytes()) else {
                return Ok(());
            };
            let ours: [(&str, &[u8]); 2] = [("a", &a), ("b", &b)];
            let values: Vec<&[u8]> = t
                .var_names()
                .iter()
                .map(|n| ours.iter().find(|(k, _)| k == n).map_or(&b""[..], |(_, v)| *v))
                .collect();
            let mut rendered = Vec::new();
            t.render_into(&values, &mut rendered);
            let expected = crate::smtp::data::Data::encode(&rendered);
            let (mut out, mut scratch) = (b"left over".to_vec(), Vec::new());
            out.clear();
            let mut w = DataWriter::new();
            t.render_data(&values, &mut w, &mut out, &mut scratch);
            prop_assert_eq!(w.finish_data(out), expected);
        }
    }

    /// Header values: text with spaces and tabs, from often (every line folds) to hardly
    /// ever (most long values cannot be folded), often longer than a line.
    fn value_bytes() -> impl Strategy<Value = String> {
        prop_oneof![Just(30u32), Just(300), Just(3000), Just(30_000)].prop_flat_map(|text| {
            proptest::collection::vec(
                prop_oneof![text => Just('a'), 4 => Just(' '), 1 => Just('\t'), 1 => Just(':')],
                0..2600,
            )
            .prop_map(|chars| chars.into_iter().collect())
        })
    }
}
