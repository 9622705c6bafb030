//! The `spate` command line (INTERFACE.md, "Binary and commands").

use spate::config::Config;
use spate::engine::{self, EngineError};
use spate::summary;
use spate_sim::demo;
use std::path::PathBuf;
use std::process::ExitCode;

const USAGE: &str = "usage:
  spate run -c FILE                         run the engine until SIGTERM/SIGINT (SIGHUP reloads)
  spate check-config -c FILE                validate a configuration and print what it resolved
  spate queue summary -c FILE [--json] [--offline]
                                            what is queued, per domain
  spate demo [--recipients N] [--keep] [--queue-only]
                                            a campaign on this machine with no setup
  spate hash-password                       (not available yet)";

/// EX_USAGE from sysexits.h.
const EXIT_USAGE: u8 = 64;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let words: Vec<&str> = args.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["run", rest @ ..] => with_config(rest, |config, path| {
            engine::run_until_signalled(config, Some(path)).map_err(|e| report(&e))
        }),
        ["check-config", rest @ ..] => with_config(rest, |config, _| {
            print!("{}", config.describe());
            Ok(())
        }),
        ["queue", "summary", rest @ ..] => queue_summary(rest),
        ["demo", rest @ ..] => match demo::Options::parse(rest) {
            Ok(options) => match demo::run(&options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => ExitCode::from(report(&e)),
            },
            Err(message) => usage_error(&message),
        },
        ["hash-password", ..] => {
            eprintln!("spate: hash-password is not available yet: SMTP submission ([[listeners]], [[users]]) is not implemented in this build");
            ExitCode::from(69)
        }
        ["help" | "--help" | "-h"] => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        [] => usage_error("no command given"),
        [other, ..] => usage_error(&format!("unknown command {other:?}")),
    }
}

fn report(e: &EngineError) -> u8 {
    eprintln!("spate: {e}");
    e.exit_code() as u8
}

fn usage_error(message: &str) -> ExitCode {
    eprintln!("spate: {message}\n{USAGE}");
    ExitCode::from(EXIT_USAGE)
}

/// Splits `-c FILE` out of `args`; the rest are flags.
fn config_arg<'a>(args: &[&'a str]) -> Result<(PathBuf, Vec<&'a str>), String> {
    let mut path = None;
    let mut flags = Vec::new();
    let mut it = args.iter();
    while let Some(&a) = it.next() {
        match a {
            "-c" | "--config" => match it.next() {
                Some(p) => path = Some(PathBuf::from(p)),
                None => return Err("-c needs a file".into()),
            },
            _ => flags.push(a),
        }
    }
    path.map(|p| (p, flags))
        .ok_or_else(|| "missing -c FILE".to_string())
}

fn with_config(args: &[&str], f: impl FnOnce(Config, PathBuf) -> Result<(), u8>) -> ExitCode {
    let (path, flags) = match config_arg(args) {
        Ok(v) => v,
        Err(m) => return usage_error(&m),
    };
    if let Some(flag) = flags.first() {
        return usage_error(&format!("unknown option {flag:?}"));
    }
    match Config::load(&path) {
        Ok(config) => match f(config, path) {
            Ok(()) => ExitCode::SUCCESS,
            Err(code) => ExitCode::from(code),
        },
        Err(e) => {
            eprintln!("spate: {e}");
            ExitCode::from(78)
        }
    }
}

fn queue_summary(args: &[&str]) -> ExitCode {
    let (path, flags) = match config_arg(args) {
        Ok(v) => v,
        Err(m) => return usage_error(&m),
    };
    let (mut json, mut offline) = (false, false);
    for flag in flags {
        match flag {
            "--json" => json = true,
            "--offline" => offline = true,
            other => return usage_error(&format!("unknown option {other:?}")),
        }
    }
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("spate: {e}");
            return ExitCode::from(78);
        }
    };
    let running = engine::engine_running(&config.engine.data_dir);
    if !running && !offline {
        eprintln!(
            "spate: the engine is not running on {}; add --offline to read the queue files directly",
            config.engine.data_dir.display()
        );
        return ExitCode::from(69);
    }
    match summary::read_queue(&config.engine.data_dir) {
        Ok(s) => {
            let now = spate::clock::Clock::unix_ms(&spate::clock::SystemClock);
            if json {
                println!("{}", s.to_json(now, running));
            } else {
                print!("{}", s.to_text(now, running));
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("spate: {}: {e}", config.engine.data_dir.display());
            ExitCode::from(74)
        }
    }
}
