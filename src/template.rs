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
mod tests;
