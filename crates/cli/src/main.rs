//! The `spate` command line (INTERFACE.md, "Binary and commands").

use clap::error::ErrorKind;
use clap::{Args, Parser, Subcommand, ValueEnum};
use spate::config::Config;
use spate::engine::{self, EngineError};
use spate_sim::demo;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

mod password;
mod queue;
mod suppression;

/// EX_USAGE from sysexits.h: a usage error (unknown command or option, missing argument).
const EXIT_USAGE: u8 = 64;

#[derive(Parser)]
#[command(
    name = "spate",
    version,
    about = "Spate: a high-throughput bulk email sending engine",
    after_help = "Exit codes: 0 success; 64 usage error; 69 runtime unavailable or engine not \
                  running; 74 storage failure; 78 configuration error (INTERFACE.md)."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How the engine's diagnostics are written to stderr
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human)]
    log_format: LogFormat,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    /// One line per event: time, level, message, fields
    Human,
    /// One JSON object per event
    Json,
}

/// Sends the engine's diagnostics (`tracing` events, INFO and above) to stderr.
fn init_diagnostics(format: LogFormat) {
    let builder = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false);
    let installed = match format {
        LogFormat::Human => tracing::subscriber::set_global_default(builder.finish()),
        LogFormat::Json => tracing::subscriber::set_global_default(builder.json().finish()),
    };
    if let Err(e) = installed {
        eprintln!("spate: diagnostics: {e}");
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the engine in the foreground until SIGTERM/SIGINT (SIGHUP reloads)
    Run(ConfigArg),
    /// Validate a configuration and print what it resolved
    CheckConfig(ConfigArg),
    /// Look at and steer the queue (through the running engine's admin API)
    #[command(subcommand)]
    Queue(QueueCommand),
    /// The durable suppression store (through the running engine, or on its files)
    #[command(subcommand)]
    Suppression(SuppressionCommand),
    /// Run a campaign on this machine with no setup (simulated ISPs on loopback)
    Demo {
        /// Recipients in the campaign
        #[arg(long, value_name = "N", default_value_t = demo::DEFAULT_RECIPIENTS,
              value_parser = clap::value_parser!(u64).range(1..))]
        recipients: u64,
        /// Keep the demo's directory (queue, spool, log) afterwards
        #[arg(long)]
        keep: bool,
        /// Queue only, delivery paused: how fast a campaign becomes durable
        #[arg(long)]
        queue_only: bool,
        /// With --queue-only: check every recipient against this suppression file
        #[arg(long, value_name = "FILE", requires = "queue_only")]
        suppression: Option<std::path::PathBuf>,
    },
    /// Read a password on stdin (not echoed on a terminal) and print a password_hash for
    /// [[users]]
    HashPassword,
    /// Hand this stopped node's queued recipients to another node of the cluster (with
    /// their retry state), to retire this one
    Drain {
        /// The node of the cluster ([cluster] node) that takes them
        #[arg(long, value_name = "NODE")]
        to: String,
        #[command(flatten)]
        config: ConfigArg,
        /// One JSON object instead of the lines
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum QueueCommand {
    /// What is queued per provider, site and domain, and what holds each back
    Summary {
        #[command(flatten)]
        config: ConfigArg,
        /// One JSON object instead of the table
        #[arg(long)]
        json: bool,
        /// Read the queue files directly (per domain only), the engine being stopped
        #[arg(long)]
        offline: bool,
    },
    /// Hold back a provider or site (provider@source for one source), domain:D,
    /// campaign:C, tenant:T or source:S until resumed
    Suspend(TargetArgs),
    /// Release a suspension
    Resume(TargetArgs),
    /// Bounce the queued mail of a target (Bounce records, category admin)
    Bounce(TargetArgs),
    /// Make the target's deferred recipients due now
    Retry(TargetArgs),
    /// The reply rules ([[rules]] and the shipped ones), how often each fired, and where
    /// one is in force
    Rules {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// Sources under a warm-up schedule: per provider, today's step, cap and counts
    Warmup {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// End a reply rule's suspension or cap on a scope (provider@source) now; it comes back
    /// over the rule's ramp
    Lift {
        /// The scope the rule is in force on, as `queue rules` names it
        scope: String,
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
    /// What a recipient or a domain is waiting for, and until when
    Why {
        /// A recipient address or a domain
        target: String,
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum SuppressionCommand {
    /// Suppress an address or @domain (for one tenant with --tenant)
    Add {
        entry: String,
        #[command(flatten)]
        common: SuppressionArgs,
        /// Why (written to <log.dir>/admin.jsonl when the engine runs)
        #[arg(long)]
        reason: Option<String>,
    },
    /// Remove an entry from the store (entries of [suppression] files stay in their file)
    Remove {
        entry: String,
        #[command(flatten)]
        common: SuppressionArgs,
    },
    /// Whether an address is suppressed, and by what
    Check {
        address: String,
        #[command(flatten)]
        common: SuppressionArgs,
    },
    /// The store's entries in force
    List {
        #[command(flatten)]
        common: SuppressionArgs,
    },
}

#[derive(Args)]
struct SuppressionArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The tenant (none: every tenant)
    #[arg(long)]
    tenant: Option<String>,
    /// JSON instead of lines
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TargetArgs {
    /// A provider or site name, domain:D, campaign:C, tenant:T or source:S
    target: String,
    #[command(flatten)]
    config: ConfigArg,
    /// Why (written to <log.dir>/admin.jsonl; a bounce's goes into its records)
    #[arg(long)]
    reason: Option<String>,
    /// The engine's JSON reply instead of a line
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct ConfigArg {
    /// The configuration file
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(EXIT_USAGE),
            };
        }
    };
    init_diagnostics(cli.log_format);
    match cli.command {
        Command::Run(c) => with_config(&c.config, |config, path| {
            engine::run_until_signalled(config, Some(path)).map_err(|e| report(&e))
        }),
        Command::CheckConfig(c) => with_config(&c.config, |config, _| {
            print!("{}", config.describe());
            Ok(())
        }),
        Command::Queue(q) => match q {
            QueueCommand::Summary {
                config,
                json,
                offline,
            } => queue::summary(&config.config, json, offline),
            QueueCommand::Suspend(t) => queue_act("suspend", &t),
            QueueCommand::Resume(t) => queue_act("resume", &t),
            QueueCommand::Bounce(t) => queue_act("bounce", &t),
            QueueCommand::Retry(t) => queue_act("retry", &t),
            QueueCommand::Rules { config, json } => queue::rules(&config.config, json),
            QueueCommand::Warmup { config, json } => queue::warmup(&config.config, json),
            QueueCommand::Lift {
                scope,
                config,
                json,
            } => queue::lift(&config.config, &scope, json),
            QueueCommand::Why {
                target,
                config,
                json,
            } => queue::why(&config.config, &target, json),
        },
        Command::Suppression(c) => {
            use suppression::Action;
            let (action, common) = match &c {
                SuppressionCommand::Add {
                    entry,
                    common,
                    reason,
                } => (
                    Action::Add {
                        entry,
                        reason: reason.as_deref().unwrap_or(""),
                    },
                    common,
                ),
                SuppressionCommand::Remove { entry, common } => (Action::Remove { entry }, common),
                SuppressionCommand::Check { address, common } => {
                    (Action::Check { address }, common)
                }
                SuppressionCommand::List { common } => (Action::List, common),
            };
            suppression::run(
                &common.config.config,
                action,
                common.tenant.as_deref(),
                common.json,
            )
        }
        Command::Demo {
            recipients,
            keep,
            queue_only,
            suppression,
        } => {
            let options = demo::Options {
                recipients,
                keep,
                queue_only,
                suppression,
            };
            match demo::run(&options) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => ExitCode::from(report(&e)),
            }
        }
        Command::Drain { to, config, json } => {
            with_config(&config.config, |config, _| drain(&config, &to, json))
        }
        Command::HashPassword => match password::read()
            .and_then(|p| spate::gateway::password::hash(&p).map_err(|e| format!("spate: {e}")))
        {
            Ok(hash) => {
                println!("{hash}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(1)
            }
        },
    }
}

/// `spate drain`: exit 0 when nothing is left here, 1 when the other node refused some
/// (they stay here, with the reasons printed).
fn drain(config: &Config, to: &str, json: bool) -> Result<(), u8> {
    let mut say = |line: &str| {
        if !json {
            println!("{line}");
        }
    };
    let r = spate::cluster::drain::drain(config, to, &mut say).map_err(|e| {
        eprintln!("spate: {e}");
        e.code
    })?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "to": to, "transferred": r.transferred, "transfers": r.transfers,
                "already_there": r.already, "left": r.left, "refused": r.refused,
                "spool_files": r.spool_files,
            })
        );
    } else {
        println!(
            "{} recipients transferred to {to} in {} transfers ({} it had already); {} left here",
            r.transferred, r.transfers, r.already, r.left
        );
        for why in &r.refused {
            println!("refused: {why}");
        }
        if r.spool_files > 0 {
            println!(
                "{} files are still in {}/incoming: move them to {to}'s spool",
                r.spool_files,
                config.spool.dir.display()
            );
        }
    }
    if r.refused.is_empty() && r.left == 0 {
        Ok(())
    } else {
        Err(1)
    }
}

fn report(e: &EngineError) -> u8 {
    eprintln!("spate: {e}");
    e.exit_code() as u8
}

fn with_config(path: &Path, f: impl FnOnce(Config, PathBuf) -> Result<(), u8>) -> ExitCode {
    match Config::load(path) {
        Ok(config) => match f(config, path.to_path_buf()) {
            Ok(()) => ExitCode::SUCCESS,
            Err(code) => ExitCode::from(code),
        },
        Err(e) => {
            eprintln!("spate: {e}");
            ExitCode::from(78)
        }
    }
}

fn queue_act(action: &str, t: &TargetArgs) -> ExitCode {
    if action == "bounce" && t.reason.as_deref().is_none_or(str::is_empty) {
        eprintln!("spate: queue bounce needs --reason TEXT (it goes into every Bounce record)");
        return ExitCode::from(EXIT_USAGE);
    }
    queue::act(
        &t.config.config,
        action,
        &t.target,
        t.reason.as_deref(),
        t.json,
    )
}
