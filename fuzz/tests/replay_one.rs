//! Replays one input through one target's checks, with a stable toolchain and a debugger
//! friendly build: `FUZZ_TARGET=session FUZZ_INPUT=artifacts/session/crash-... cargo test
//! --test replay_one -- --nocapture`. `SPATE_FUZZ_DEBUG=1` makes script-driven targets
//! print their steps. Without `FUZZ_TARGET` it does nothing.

#[test]
fn replay_one_input() {
    let Ok(target) = std::env::var("FUZZ_TARGET") else {
        return;
    };
    let path = std::env::var("FUZZ_INPUT").expect("FUZZ_INPUT names the input file");
    let input = std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let (_, check) = spate_fuzz::TARGETS
        .iter()
        .find(|(t, _)| *t == target)
        .unwrap_or_else(|| panic!("no target {target}"));
    check(&input);
}
