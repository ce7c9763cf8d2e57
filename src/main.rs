//! Thin: parse, run, map errors to exit codes.

#![warn(clippy::too_many_lines)]

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use clap::Parser;
use nix_seed::cli::{Cli, Command};
use nix_seed::copy::Stopped;
use nix_seed::lock::Timeout;
use nix_seed::preflight::Invalid;
use nix_seed::progress::Log;
use nix_seed::{report, seed};

const FAILURE: u8 = 1;
const USAGE: u8 = 2;
const LOCK_TIMEOUT: u8 = 3;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = e.exit_code();
            nix_seed::cli::print_usage_error(&e);
            // clap: 0 for --help/--version, 2 for usage errors.
            return ExitCode::from(code as u8);
        }
    };

    // SIGINT/SIGTERM ask for a clean stop: workers abandon their current store path, its
    // temporary copy is removed, the lock is released. A second signal exits at once.
    let interrupted = Arc::new(AtomicBool::new(false));
    let signal = Arc::new(AtomicUsize::new(0));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, interrupted.clone());
        let _ = signal_hook::flag::register_usize(sig, signal.clone(), sig as usize);
        let _ = signal_hook::flag::register(sig, interrupted.clone());
    }

    match cli.command {
        Command::Seed(mut args) => {
            let log = Arc::new(Log::new(&args.output));
            match seed::seed(&mut args, &log, &interrupted) {
                Ok(r) => {
                    r.print(&log);
                    ExitCode::SUCCESS
                }
                // Every error line names a path: one that does not (a bare errno from a
                // filesystem call) gets the target.
                Err(e) => {
                    // The database's busy wait ends in SQLITE_BUSY: a lock timeout too.
                    let target = std::fs::canonicalize(&args.paths.target).unwrap_or(args.paths.target.clone());
                    let db_dir = target.join("var").join(nix_seed::nixdb::DB_DIR);
                    let e = nix_seed::lock::db_busy_as_timeout(
                        e,
                        &db_dir,
                        args.lock_timeout,
                        // The slow path's steps say it themselves once something was copied.
                        "nothing was copied or registered",
                    );
                    let named = format!("{e:#}").contains('/');
                    let e = if named {
                        e
                    } else {
                        e.context(format!("seeding {}", args.paths.target.display()))
                    };
                    fail(&log, e, &signal)
                }
            }
        }
        Command::Install(args) => {
            let log = Log::new(&nix_seed::cli::Output {
                progress: nix_seed::cli::ProgressMode::None,
                log_format: args.log_format,
                quiet: false,
                verbose: false,
            });
            match nix_seed::install::install(&args.dest) {
                Ok(p) => {
                    log.info(&format!("installed {}", p.display()));
                    ExitCode::SUCCESS
                }
                Err(e) => fail(&log, e, &signal),
            }
        }
        Command::Verify(mut args) => {
            args.resolve_jobs();
            let log = Log::new(&args.output);
            match nix_seed::verify::run(&args, &log) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(FAILURE),
                Err(e) => fail(&log, e, &signal),
            }
        }
        Command::Images(args) => {
            let log = Arc::new(Log::new(&args.output));
            match nix_seed::images::run(&args, &log) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let e = db_busy(e, &args.target, args.lock_timeout, "nothing was listed");
                    fail(&log, e, &signal)
                }
            }
        }
        Command::Prune(args) => {
            let log = Arc::new(Log::new(&args.output));
            match nix_seed::prune::run(&args, &log, &interrupted) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    let e = db_busy(e, &args.target, args.lock_timeout, "nothing was changed");
                    fail(&log, e, &signal)
                }
            }
        }
        Command::Status(args) => {
            let log = Log::new(&args.output);
            match nix_seed::status::status(&args, &log) {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(FAILURE),
                Err(e) => fail(&log, e, &signal),
            }
        }
    }
}

/// The database's busy wait (bounded by `--lock-timeout`) ends in SQLITE_BUSY: a lock
/// timeout too (exit 3), naming the lock.
fn db_busy(e: anyhow::Error, target: &std::path::Path, timeout: std::time::Duration, outcome: &str) -> anyhow::Error {
    let target = std::fs::canonicalize(target).unwrap_or(target.to_path_buf());
    nix_seed::lock::db_busy_as_timeout(e, &target.join("var").join(nix_seed::nixdb::DB_DIR), timeout, outcome)
}

fn fail(log: &Log, e: anyhow::Error, signal: &AtomicUsize) -> ExitCode {
    if e.downcast_ref::<Stopped>().is_some() {
        let sig = signal.load(Ordering::Relaxed);
        if sig != 0 {
            let msg = format!("interrupted by signal {sig}: stopped, temporary copies removed, lock released");
            log.error(&msg);
            report::termination_log(&format!("nix-seed: {msg}"));
            return ExitCode::from(128 + sig as u8);
        }
        let msg = "stopped: another seeder took the lock over (see above); what was published is complete";
        log.error(msg);
        report::termination_log(&format!("nix-seed: error: {msg}"));
        return ExitCode::from(FAILURE);
    }
    // One line: the outermost context and its causes.
    let msg = format!("{e:#}");
    log.error(&msg);
    report::termination_log(&format!("nix-seed: error: {msg}"));
    let code = if e.downcast_ref::<Invalid>().is_some() {
        USAGE
    } else if e.downcast_ref::<Timeout>().is_some() {
        LOCK_TIMEOUT
    } else {
        FAILURE
    };
    ExitCode::from(code)
}
