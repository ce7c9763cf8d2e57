//! The face's translation: each command's `Options` made once from its clap arguments,
//! so that nothing below the face knows the command line.

use super::{
    Command, GcArgs, ImagesArgs, InstallArgs, LogFormat, Output, ProfilesMode, ProgressMode, PruneArgs, SeedArgs,
    StatusArgs, VerifyArgs,
};
use crate::base::progress;
use crate::commands;

impl From<ProgressMode> for progress::ProgressMode {
    fn from(m: ProgressMode) -> Self {
        match m {
            ProgressMode::Auto => progress::ProgressMode::Auto,
            ProgressMode::Bar => progress::ProgressMode::Bar,
            ProgressMode::Log => progress::ProgressMode::Log,
            ProgressMode::None => progress::ProgressMode::None,
        }
    }
}

impl From<LogFormat> for progress::LogFormat {
    fn from(f: LogFormat) -> Self {
        match f {
            LogFormat::Text => progress::LogFormat::Text,
            LogFormat::Json => progress::LogFormat::Json,
        }
    }
}

impl From<&Output> for progress::Output {
    fn from(o: &Output) -> Self {
        progress::Output {
            progress: o.progress.into(),
            log_format: o.log_format.into(),
            quiet: o.quiet,
            verbose: o.verbose,
        }
    }
}

impl From<ProfilesMode> for crate::steps::profiles::Mode {
    fn from(m: ProfilesMode) -> Self {
        match m {
            ProfilesMode::Follow => Self::Follow,
            ProfilesMode::Keep => Self::Keep,
            ProfilesMode::Image => Self::Image,
        }
    }
}

impl From<&SeedArgs> for commands::seed::Options {
    fn from(a: &SeedArgs) -> Self {
        Self {
            source: a.paths.source.clone(),
            target: a.paths.target.target.clone(),
            registration: a.paths.registration.clone(),
            jobs: a.jobs.jobs,
            lock_timeout: a.lock.lock_timeout,
            lock_stale: a.stale.lock_stale,
            verify: a.verify,
            recheck: a.recheck,
            dry_run: a.dry_run,
            allow_non_mountpoint: a.allow_non_mountpoint,
            profiles: a.profiles.into(),
            name: a.name.clone(),
            platform: a.paths.platform.clone(),
            output: (&a.output).into(),
        }
    }
}

impl From<&StatusArgs> for commands::status::Options {
    fn from(a: &StatusArgs) -> Self {
        Self {
            source: a.paths.source.clone(),
            platform: a.paths.platform.clone(),
            target: a.paths.target.target.clone(),
            registration: a.paths.registration.clone(),
            nix_conf: a.nix_conf.clone(),
            output: (&a.output).into(),
        }
    }
}

impl From<&VerifyArgs> for commands::verify::Options {
    fn from(a: &VerifyArgs) -> Self {
        Self {
            target: a.target.target.clone(),
            jobs: a.jobs.jobs,
            paths: a.paths.clone(),
            output: (&a.output).into(),
        }
    }
}

impl From<&ImagesArgs> for commands::images::Options {
    fn from(a: &ImagesArgs) -> Self {
        Self {
            target: a.target.target.clone(),
            lock_timeout: a.lock.lock_timeout,
            output: (&a.output).into(),
        }
    }
}

impl From<&PruneArgs> for commands::prune::Options {
    fn from(a: &PruneArgs) -> Self {
        Self {
            target: a.target.target.clone(),
            keep_last: a.keep_last,
            unused_for: a.unused_for,
            images: a.images.clone(),
            dry_run: a.dry_run,
            lock_timeout: a.lock.lock_timeout,
            lock_stale: a.stale.lock_stale,
            output: (&a.output).into(),
        }
    }
}

impl From<&GcArgs> for commands::gc::Options {
    fn from(a: &GcArgs) -> Self {
        Self {
            target: a.target.clone(),
            min_age: a.min_age,
            max_freed: a.max_freed,
            nix_conf: a.nix_conf.clone(),
            dry_run: a.dry_run,
            lock_timeout: a.lock.lock_timeout,
            lock_stale: a.stale.lock_stale,
            output: (&a.output).into(),
        }
    }
}

impl From<&InstallArgs> for commands::install::Options {
    fn from(a: &InstallArgs) -> Self {
        Self { dest: a.dest.clone() }
    }
}

impl Command {
    /// How this command prints (`install`: plain text lines).
    pub fn output(&self) -> progress::Output {
        match self {
            Command::Seed(a) => (&a.output).into(),
            Command::Status(a) => (&a.output).into(),
            Command::Verify(a) => (&a.output).into(),
            Command::Images(a) => (&a.output).into(),
            Command::Prune(a) => (&a.output).into(),
            Command::Gc(a) => (&a.output).into(),
            Command::Install(a) => progress::Output {
                progress: progress::ProgressMode::None,
                log_format: a.log_format.into(),
                quiet: false,
                verbose: false,
            },
        }
    }

    /// Run the command.
    pub fn run(&self, cx: &commands::Ctx) -> anyhow::Result<commands::Done> {
        match self {
            Command::Seed(a) => commands::seed::run(&a.into(), cx),
            Command::Status(a) => commands::status::run(&a.into(), cx),
            Command::Verify(a) => commands::verify::run(&a.into(), cx),
            Command::Images(a) => commands::images::run(&a.into(), cx),
            Command::Prune(a) => commands::prune::run(&a.into(), cx),
            Command::Gc(a) => commands::gc::run(&a.into(), cx),
            Command::Install(a) => commands::install::run(&a.into(), cx),
        }
    }
}
