//! Replays every seed (`seeds/<target>/`) and every saved crash (`regressions/<target>/`)
//! through its target's checks, on the stable toolchain: `cargo test` in `fuzz/`.
//! A crash found by `cargo fuzz run` is kept by copying it from `artifacts/<target>/` to
//! `regressions/<target>/` once the bug is fixed.

use std::path::Path;

#[test]
fn seeds_and_regressions_pass_their_checks() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut replayed = 0;
    let mut failed = Vec::new();
    for (target, check) in spate_fuzz::TARGETS {
        for dir in ["seeds", "regressions"] {
            let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
                continue;
            };
            let mut paths: Vec<_> = entries.map(|e| e.unwrap().path()).collect();
            paths.sort();
            for path in paths {
                let input = std::fs::read(&path).unwrap();
                if std::panic::catch_unwind(|| check(&input)).is_err() {
                    failed.push(path.display().to_string());
                }
                replayed += 1;
            }
        }
    }
    assert!(replayed > 0, "no seeds found");
    assert!(
        failed.is_empty(),
        "inputs that fail their checks: {failed:#?}"
    );
}

#[test]
fn every_target_has_seeds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for (target, _) in spate_fuzz::TARGETS {
        let seeds = std::fs::read_dir(root.join("seeds").join(target))
            .map(|d| d.count())
            .unwrap_or(0);
        assert!(seeds > 0, "no seeds for {target}");
        assert!(
            root.join("fuzz_targets")
                .join(format!("{target}.rs"))
                .exists(),
            "no fuzz_targets/{target}.rs"
        );
    }
}
