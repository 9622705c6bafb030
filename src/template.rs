//! Campaign templates: a complete RFC 5322 message with `{{ name }}` placeholders.
//!
//! The template is parsed once per batch into literal runs and placeholders, each placeholder
//! knowing whether it sits in the header section. Per recipient, only the values the template
//! uses are kept (in placeholder-name order), so a queued recipient stores just what its
//! rendering needs. Only `{{ name }}` is interpreted (Jinja's expression syntax without filters);
//! other text, `{%` included, is literal. An undefined variable renders empty, as in Jinja.
//!
//! Pure code; no I/O.

use std::fmt;
use std::ops::Range;

/// Longest variable name accepted in a placeholder.
pub const VAR_NAME_BYTES_MAX: usize = 128;
/// Distinct variables one template may use; bounds every recipient record.
pub const VARS_MAX: usize = 256;

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
    parts: Vec<Part>,
    var_names: Vec<String>,
    /// Which of `var_names` appear in the header section.
    var_in_header: Vec<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError(pub String);

impl fmt::Display for TemplateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Template {
    /// Parses a template; errors name the byte offset of the faulty placeholder.
    pub fn parse(source: Vec<u8>) -> Result<Template, TemplateError> {
        let header_end = header_section_end(&source);
        if header_end.is_none() {
            return Err(TemplateError(
                "template has no blank line between header and body".into(),
            ));
        }
        let header_end = header_end.unwrap_or(source.len());
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
            if open > literal_start {
                parts.push(Part::Literal(literal_start..open));
            }
            let in_header = open < header_end;
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
        if literal_start < source.len() {
            parts.push(Part::Literal(literal_start..source.len()));
        }
        Ok(Template {
            source,
            parts,
            var_names,
            var_in_header,
        })
    }

    /// A message to send as it is (pickup `.eml`): no placeholders are interpreted.
    pub fn verbatim(source: Vec<u8>) -> Template {
        let parts = if source.is_empty() {
            Vec::new()
        } else {
            vec![Part::Literal(0..source.len())]
        };
        Template {
            source,
            parts,
            var_names: Vec::new(),
            var_in_header: Vec::new(),
        }
    }

    pub fn source(&self) -> &[u8] {
        &self.source
    }

    pub fn var_names(&self) -> &[String] {
        &self.var_names
    }

    /// Checks one recipient's values (aligned with `var_names`) before it is queued: a value
    /// used in the header may not hold CR, LF or NUL (header injection), and no value may hold
    /// NUL. The error names the variable.
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
        Ok(())
    }

    /// Renders the message for one recipient's values (aligned with `var_names`).
    pub fn render_into(&self, values: &[&[u8]], out: &mut Vec<u8>) {
        assert_eq!(values.len(), self.var_names.len());
        for part in &self.parts {
            match part {
                Part::Literal(r) => out.extend_from_slice(&self.source[r.clone()]),
                Part::Var { index, .. } => out.extend_from_slice(values[*index]),
            }
        }
    }

    /// The rendered size for these values, without rendering.
    pub fn rendered_len(&self, values: &[&[u8]]) -> usize {
        self.parts
            .iter()
            .map(|p| match p {
                Part::Literal(r) => r.len(),
                Part::Var { index, .. } => values[*index].len(),
            })
            .sum()
    }
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
        ] {
            let e = Template::parse(src.as_bytes().to_vec()).unwrap_err();
            assert!(e.0.contains(why), "{src:?}: {e}");
        }
    }

    #[test]
    fn verbatim_keeps_braces() {
        let t = Template::verbatim(b"Subject: {{ x }}\r\n\r\nbody".to_vec());
        assert_eq!(render(&t, &[]), "Subject: {{ x }}\r\n\r\nbody");
    }
}
