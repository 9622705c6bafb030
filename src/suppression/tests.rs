//! Suppression's tests: files, the learnt entries, tenants, expiry, reload, growth.

use super::*;

/// A configuration with `files` under `dir` (set after parsing, which would refuse a file
/// that cannot be read).
fn config(dir: &Path, files: &[&str], extra: &str) -> Config {
    let mut c = Config::parse(&format!("[suppression]\n{extra}"), "t.toml").unwrap();
    c.suppression.files = files.iter().map(|f| dir.join(f)).collect();
    c
}

const TODAY: u32 = 20_424;

#[test]
fn file_entries_suppress_addresses_and_domains_and_name_their_file() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("list.txt"),
        "# unsubscribed by hand\nAlice@Example.COM\n\n  @blocked.example  \nnot an address\n@bad domain\nbob@xn--caf-dma.example\n",
    )
    .unwrap();
    let (s, notes) =
        Suppressions::open(&config(dir.path(), &["list.txt"], ""), &[], TODAY).unwrap();
    assert_eq!(s.len(), 3);
    assert!(
        notes[0].contains("list.txt: 2 lines skipped, the first at line 5:"),
        "{notes:?}"
    );
    assert!(notes[1].ends_with("list.txt: 3 entries"), "{notes:?}");
    let mut r = s.reader();
    let hit = r.check("alice@example.com", "acme", TODAY).unwrap();
    assert_eq!(hit.entry, "alice@example.com");
    assert_eq!(
        hit.to_string(),
        format!(
            "suppressed: alice@example.com is listed in {}",
            dir.path().join("list.txt").display()
        )
    );
    // Local parts compare without case.
    assert!(r.check("ALICE@example.com", "", TODAY).is_some());
    let hit = r.check("anyone@blocked.example", "", TODAY).unwrap();
    assert_eq!(hit.entry, "@blocked.example");
    assert!(r.check("bob@xn--caf-dma.example", "", TODAY).is_some());
    assert!(r.check("carol@example.com", "", TODAY).is_none());
    assert!(r.check("x@sub.blocked.example", "", TODAY).is_none());
    // A missing file is an error naming it.
    let e = Suppressions::open(&config(dir.path(), &["absent.txt"], ""), &[], TODAY)
        .err()
        .unwrap();
    assert!(e.contains("absent.txt: cannot read"), "{e}");
}

#[test]
fn learnt_entries_hold_by_tenant_and_bad_mailboxes_expire() {
    let dir = tempfile::tempdir().unwrap();
    let stored = [
        store::Entry {
            tenant: String::new(),
            entry: "gone@x.test".into(),
            source: Source::BadMailbox { day: TODAY - 10 },
            at_unix_ms: 0,
        },
        store::Entry {
            tenant: String::new(),
            entry: "long-gone@x.test".into(),
            source: Source::BadMailbox { day: TODAY - 40 },
            at_unix_ms: 0,
        },
        store::Entry {
            tenant: "acme".into(),
            entry: "left@y.test".into(),
            source: Source::Unsubscribe { day: TODAY - 400 },
            at_unix_ms: 0,
        },
    ];
    let c = config(dir.path(), &[], "bad_mailbox_expire = \"30d\"\n");
    let (s, _) = Suppressions::open(&c, &stored, TODAY).unwrap();
    // The entry past its 30 days is not even loaded.
    assert_eq!(s.len(), 2);
    let mut r = s.reader();
    let hit = r.check("gone@x.test", "anyone", TODAY).unwrap();
    assert_eq!(
        hit.to_string(),
        "suppressed: gone@x.test was refused as a mailbox that does not exist on 2025-11-22 (held until 2025-12-22)"
    );
    assert!(r.check("gone@x.test", "", TODAY + 20).is_some());
    assert!(
        r.check("gone@x.test", "", TODAY + 21).is_none(),
        "expired while running"
    );
    assert!(r.check("long-gone@x.test", "", TODAY).is_none());
    // An unsubscribe holds for its tenant only, and forever.
    let hit = r.check("left@y.test", "acme", TODAY + 5000).unwrap();
    assert_eq!(hit.tenant.as_deref(), Some("acme"));
    assert!(
        hit.to_string().contains("unsubscribed from acme on"),
        "{hit}"
    );
    assert!(r.check("left@y.test", "other", TODAY).is_none());
    assert!(r.check("left@y.test", "", TODAY).is_none());
    // Learnt while running: seen by a reader made before.
    s.add("", "new@x.test", Source::BadMailbox { day: TODAY });
    assert!(r.check("new@x.test", "", TODAY).is_some());
}

#[test]
fn a_reload_reads_the_files_again_and_keeps_what_was_learnt() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "a@x.test\n").unwrap();
    std::fs::write(dir.path().join("b.txt"), "b@x.test\n@z.test\n").unwrap();
    let (s, _) = Suppressions::open(&config(dir.path(), &["a.txt"], ""), &[], TODAY).unwrap();
    s.add("", "learnt@x.test", Source::BadMailbox { day: TODAY });
    let mut r = s.reader();
    assert!(r.check("a@x.test", "", TODAY).is_some());
    s.reload(&config(dir.path(), &["b.txt"], "")).unwrap();
    assert!(r.check("a@x.test", "", TODAY).is_none());
    let hit = r.check("b@x.test", "", TODAY).unwrap();
    assert!(hit.to_string().ends_with("b.txt"), "{hit}");
    assert!(r.check("c@z.test", "", TODAY).is_some());
    assert!(r.check("learnt@x.test", "", TODAY).is_some());
    // A reload that cannot read a file changes nothing.
    let e = s
        .reload(&config(dir.path(), &["absent.txt"], ""))
        .unwrap_err();
    assert!(e.contains("absent.txt"), "{e}");
    assert!(r.check("b@x.test", "", TODAY).is_some());
}

#[test]
fn the_table_grows_as_entries_are_learnt_while_readers_read() {
    let s = Suppressions::empty();
    let adder = {
        let s = Arc::clone(&s);
        std::thread::spawn(move || {
            for i in 0..20_000 {
                s.add(
                    "",
                    &format!("u{i}@x.test"),
                    Source::BadMailbox { day: TODAY },
                );
            }
        })
    };
    let mut r = s.reader();
    let mut seen = 0;
    for _ in 0..200 {
        seen = (0..20_000)
            .filter(|i| r.check(&format!("u{i}@x.test"), "", TODAY).is_some())
            .count()
            .max(seen);
        if seen == 20_000 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    adder.join().unwrap();
    assert_eq!(s.len(), 20_000);
    assert_eq!(
        (0..20_000)
            .filter(|i| r.check(&format!("u{i}@x.test"), "", TODAY).is_some())
            .count(),
        20_000
    );
}

#[test]
fn a_line_too_long_never_grows_the_buffer() {
    let mut lines = Vec::new();
    let input = [
        b"a@x.test\n".to_vec(),
        vec![b'z'; 5 << 20],
        b"\nb@x.test".to_vec(),
    ]
    .concat();
    for_each_line(&input[..], Path::new("f"), |n, l| lines.push((n, l.len()))).unwrap();
    assert_eq!(lines, vec![(1, 8), (2, FILE_LINE_BYTES_MAX + 1), (3, 8)]);
}

#[test]
fn operators_remove_store_entries_in_the_order_they_were_made() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("list.txt"), "file@x.test\n").unwrap();
    let at = |ms: u64, source: Source, entry: &str| store::Entry {
        tenant: "acme".into(),
        entry: entry.into(),
        source,
        at_unix_ms: ms,
    };
    // Lines from several files come in any order; their times decide.
    let stored = vec![
        at(3_000, Source::Manual { day: TODAY }, "back@x.test"),
        at(2_000, Source::Removed { day: TODAY }, "back@x.test"),
        at(1_000, Source::Unsubscribe { day: TODAY }, "back@x.test"),
        at(2_000, Source::Removed { day: TODAY }, "gone@x.test"),
        at(1_000, Source::Manual { day: TODAY }, "gone@x.test"),
    ];
    let c = config(dir.path(), &["list.txt"], "");
    let (s, _) = Suppressions::open(&c, &stored, TODAY).unwrap();
    let mut r = s.reader();
    let hit = r.check("back@x.test", "acme", TODAY).unwrap();
    assert!(hit.to_string().contains("added by an operator"), "{hit}");
    assert!(r.check("gone@x.test", "acme", TODAY).is_none());
    assert_eq!(
        store::in_force(&stored, TODAY, 90)
            .iter()
            .map(|e| e.entry.as_str())
            .collect::<Vec<_>>(),
        ["back@x.test"]
    );

    // While running: removed at once, added back, and a file's entry is the file's.
    assert_eq!(s.remove("acme", "back@x.test", TODAY), Ok(true));
    assert!(r.check("back@x.test", "acme", TODAY).is_none());
    assert_eq!(s.lookup("acme", "back@x.test"), None);
    assert_eq!(s.remove("acme", "back@x.test", TODAY), Ok(false));
    s.add("acme", "back@x.test", Source::Unsubscribe { day: TODAY });
    assert!(r.check("back@x.test", "acme", TODAY).is_some());
    let err = s.remove("", "file@x.test", TODAY).unwrap_err();
    assert!(err.contains("list.txt"), "{err}");
    assert!(r.check("file@x.test", "", TODAY).is_some());
}

#[test]
fn store_lines_keep_their_time() {
    let e = store::Entry {
        tenant: String::new(),
        entry: "@x.test".into(),
        source: Source::Removed { day: TODAY },
        at_unix_ms: 1_764_000_000_123,
    };
    let mut line = Vec::new();
    e.encode(&mut line);
    assert_eq!(
        String::from_utf8_lossy(&line),
        format!("{TODAY} removed \"\" \"@x.test\" 1764000000123\n")
    );
    assert_eq!(store::parse(&line), vec![e]);
    assert!(store::parse(b"1 manual \"\" \"a@b\" notanumber\n").is_empty());
}
