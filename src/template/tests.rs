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
    let t =
        Template::parse(b"To: {{ to }}\r\nSubject: Hi\r\n  {{ s }} and {{ to }}\r\n\r\n".to_vec())
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
