//! Thin: parse, run, map errors to exit codes.

#![warn(clippy::too_many_lines)]

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use clap::Parser;
use nix_seed::base::error::{exit_code, Stopped, FAILURE};
use nix_seed::base::progress::Log;
use nix_seed::cli::Cli;
use nix_seed::commands::{Ctx, Done};
use nix_seed::steps::report::termination_log;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            nix_seed::cli::print_usage_error(&e);
            // clap: 0 for --help/--version, 2 for usage errors.
            return ExitCode::from(e.exit_code() as u8);
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

    let log = Arc::new(Log::new(&cli.command.output()));
    let cx = Ctx {
        log: &log,
        stop: &interrupted,
    };
    match cli.command.run(&cx) {
        Ok(Done::Success) => ExitCode::SUCCESS,
        Ok(Done::Finding) => ExitCode::from(FAILURE),
        Err(e) => fail(&log, e, signal.load(Ordering::Relaxed)),
    }
}

/// Print the error as one line (and to the termination log), and exit with its code.
fn fail(log: &Log, e: anyhow::Error, signal: usize) -> ExitCode {
    let signal = (signal != 0).then_some(signal as i32);
    let msg = if e.downcast_ref::<Stopped>().is_some() {
        match signal {
            Some(sig) => format!("interrupted by signal {sig}: stopped, temporary copies removed, lock released"),
            None => "stopped: another seeder took the lock over (see above); what was published is complete".into(),
        }
    } else {
        // The outermost context and its causes.
        format!("{e:#}")
    };
    log.error(&msg);
    let prefix = if signal.is_some() && e.downcast_ref::<Stopped>().is_some() {
        "nix-seed: "
    } else {
        "nix-seed: error: "
    };
    termination_log(&format!("{prefix}{msg}"));
    ExitCode::from(exit_code(&e, signal))
}
