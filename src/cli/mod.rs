//! Command-line contract. Users and scripts depend on these names: every flag can also
//! come from an environment variable `NIX_SEED_<FLAG>` so a pod spec can use `env:`.
//!
//! Only the face sees these clap types: each command's `Options` are made from them here,
//! once (`From<&…Args>`), and nothing below knows the command line.

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::base::progress::parse_duration;

mod options;
mod usage;

pub use usage::print_usage_error;

/// `--version`: the version and the architecture the binary was built for, e.g.
/// `nix-seed 0.1.0 (aarch64-linux)`: a hand-off image must carry the node's architecture.
pub static VERSION: LazyLock<String> = LazyLock::new(|| {
    format!(
        "{} ({}-{})",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        std::env::consts::OS
    )
});

#[derive(Debug, Parser)]
#[command(
    name = "nix-seed",
    version = VERSION.as_str(),
    about = "Seed a shared /nix (network disk) from an image's /nix: only missing store paths, \
             each atomically, with exact metadata, one seeder at a time.",
    after_help = "Exit codes: 0 success (also: nothing to do), 1 failure, 2 usage error or invalid \
                  source/target (nothing written), 3 gave up waiting for a lock \
                  (--lock-timeout: another seeder's, Nix's gc.lock or big-lock, the Nix database's), \
                  130/143 interrupted by SIGINT/SIGTERM."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Copy the store paths the target lacks, then seed var/ (takes the lock).
    Seed(SeedArgs),
    /// Report what is missing; exit 0 if nothing is, 1 if something is (takes no lock).
    Status(StatusArgs),
    /// Check registered paths against their NAR hashes; exit 1 on any problem.
    ///
    /// Recomputes each registered path's NAR hash and size and checks Nix's canonical
    /// metadata (files 0444/0555, directories 0555, mtime 1).
    Verify(VerifyArgs),
    /// Copy this binary to DEST (e.g. an emptyDir), for images that do not contain it.
    Install(InstallArgs),
    /// List the images seeded into the target: when seen, their store paths and sizes.
    Images(ImagesArgs),
    /// Retire old images (their GC roots, markers, records), so `nix-seed gc` may collect them.
    ///
    /// Takes the seed lock. Never retires an image seen within --unused-for, nor one whose
    /// profile generation is current; deletes no store path: run `nix-seed gc` after.
    Prune(PruneArgs),
    /// Collect garbage in a store many pods share, safely beside them (no Nix needed).
    ///
    /// Keeps what Nix's collector keeps (roots, profiles, temporary roots, their closures)
    /// and, since other pods' roots and processes are invisible from here, every path
    /// registered or read within --min-age. Takes the seed lock and Nix's gc.lock, and
    /// serves Nix's gc socket meanwhile. Never run Nix's own collector on a shared store.
    Gc(GcArgs),
}

#[derive(Debug, Args)]
#[command(mut_arg("verbose", |a| a.help("Accepted for symmetry: images already prints everything it knows.")))]
pub struct ImagesArgs {
    #[command(flatten)]
    pub target: Target,

    #[command(flatten)]
    pub lock: LockTimeout,

    #[command(flatten)]
    pub output: Output,
}

#[derive(Debug, Args)]
#[command(mut_arg("verbose", |a| a.help("More detail: name every store path a collection would then delete.")))]
pub struct PruneArgs {
    #[command(flatten)]
    pub target: Target,

    /// Keep the N most recently seen images (last seen, then last seeded); retire the others.
    #[arg(long, env = "NIX_SEED_KEEP_LAST", value_name = "N")]
    pub keep_last: Option<u64>,

    /// Retire the images no pod start has seen (nor seeded) for longer than DUR (e.g. 30d);
    /// "last seen" is kept to within an hour, so an image is retired after DUR plus an hour.
    #[arg(long, env = "NIX_SEED_UNUSED_FOR", value_parser = parse_duration, value_name = "DUR")]
    pub unused_for: Option<Duration>,

    /// Retire this image (an id `nix-seed images` shows); may be repeated.
    #[arg(long = "image", value_name = "ID")]
    pub images: Vec<String>,

    /// Print what would be retired and freed; change nothing and take no lock.
    #[arg(long, env = "NIX_SEED_DRY_RUN", value_parser = parse_bool)]
    pub dry_run: bool,

    #[command(flatten)]
    pub lock: LockTimeout,

    #[command(flatten)]
    pub stale: LockStale,

    #[command(flatten)]
    pub output: Output,
}

#[derive(Debug, Args)]
#[command(mut_arg("verbose", |a| a.help("More detail: name every path deleted, and every path kept that no root reaches, with why.")))]
pub struct GcArgs {
    /// The shared store's root, holding store/ and var/ (where this container mounts it).
    #[arg(long, env = "NIX_SEED_TARGET", default_value = "/nix", value_name = "DIR")]
    pub target: PathBuf,

    /// Keep every path registered, or read, within DUR, and every unregistered entry of the
    /// store changed within DUR: what protects a pod's own results (their roots are in the
    /// pod, invisible here) and what processes in other pods use. The default covers a
    /// working week, its weekend, and a long build. 0 keeps only what roots reach.
    #[arg(long, env = "NIX_SEED_MIN_AGE", default_value = "10d", value_parser = parse_duration, value_name = "DUR")]
    pub min_age: Duration,

    /// Stop once this much is freed (bytes, or with K, M, G, T: powers of 1024).
    #[arg(long, env = "NIX_SEED_MAX_FREED", value_parser = parse_size, value_name = "SIZE")]
    pub max_freed: Option<u64>,

    /// The pods' nix.conf, for keep-derivations and keep-outputs [default:
    /// $NIX_CONF_DIR/nix.conf, else /etc/nix/nix.conf, if present; else Nix's defaults].
    #[arg(long, env = "NIX_SEED_NIX_CONF", value_name = "FILE")]
    pub nix_conf: Option<PathBuf>,

    /// Print what would be deleted, and why each path no root reaches is kept; delete
    /// nothing (waits for a running collection, takes no seed lock).
    #[arg(long, env = "NIX_SEED_DRY_RUN", value_parser = parse_bool)]
    pub dry_run: bool,

    #[command(flatten)]
    pub lock: LockTimeout,

    #[command(flatten)]
    pub stale: LockStale,

    #[command(flatten)]
    pub output: Output,
}

/// A size: bytes, or with K, M, G or T (powers of 1024), as Nix's `--max-freed` takes it.
pub fn parse_size(s: &str) -> Result<u64, String> {
    crate::base::nixconf::parse_size(s).ok_or_else(|| "expected a size: bytes, or a number with K, M, G or T".into())
}

#[derive(Debug, Args)]
#[command(mut_arg("verbose", |a| a.help("Accepted for symmetry: verify already prints one line per problem.")))]
pub struct VerifyArgs {
    #[command(flatten)]
    pub target: Target,

    #[command(flatten)]
    pub jobs: Jobs,

    /// Only these store paths (`/nix/store/<name>` or `<name>`); default: every registered path.
    #[arg(value_name = "PATH")]
    pub paths: Vec<String>,

    #[command(flatten)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Destination file, or an existing directory to put `nix-seed` in.
    #[arg(value_name = "DEST")]
    pub dest: PathBuf,

    /// Format of every line nix-seed prints.
    #[arg(long, env = "NIX_SEED_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Args, Clone)]
pub struct Paths {
    /// The image's Nix root (holds store/ and var/), or the image itself: an OCI layout
    /// directory, an archive file (docker-archive, OCI archive, either gzip-compressed), `-`
    /// for standard input, or `oci:PATH[:REF]`, `oci-archive:PATH[:REF]`,
    /// `docker-archive:PATH[:REF]`.
    #[arg(long, env = "NIX_SEED_SOURCE", default_value = "/nix", value_name = "DIR|IMAGE")]
    pub source: PathBuf,

    /// Which image of an archive or layout that holds several: `os/arch[/variant]`
    /// (default: linux and this machine's architecture).
    #[arg(long, env = "NIX_SEED_PLATFORM", value_name = "OS/ARCH")]
    pub platform: Option<String>,

    #[command(flatten)]
    pub target: Target,

    /// The image's registrations in closureInfo's format (what `nix-store --load-db`
    /// reads), for the store paths its database does not describe. Default: `nix-path-registration`
    /// or `.reginfo` beside the source's directory, if there is one. Paths described by
    /// neither are computed from their contents.
    #[arg(long, env = "NIX_SEED_REGISTRATION", value_name = "FILE")]
    pub registration: Option<PathBuf>,
}

#[derive(Debug, Args)]
#[command(mut_arg("verbose", |a| a.help("More detail: name every store path copied and every var/ entry added.")))]
pub struct SeedArgs {
    #[command(flatten)]
    pub paths: Paths,

    #[command(flatten)]
    pub jobs: Jobs,

    #[command(flatten)]
    pub lock: LockTimeout,

    #[command(flatten)]
    pub stale: LockStale,

    /// After copying, recompute the NAR hash of every store path copied and compare it
    /// with the image's database before registering anything.
    #[arg(long, env = "NIX_SEED_VERIFY", value_parser = parse_bool)]
    pub verify: bool,

    /// Take the slow path even when the image is marked seeded: under the locks, compare
    /// the image's registrations with the target's database and store, re-register present
    /// but unregistered paths whose content hashes to what the image registered, replace
    /// those that do not, and re-add missing GC roots. For a store that drifted (`status`
    /// says so), e.g. after a path or a database row was deleted by hand.
    #[arg(long, env = "NIX_SEED_RECHECK", value_parser = parse_bool)]
    pub recheck: bool,

    /// Print what would be copied; change nothing and take no lock.
    #[arg(long, env = "NIX_SEED_DRY_RUN", value_parser = parse_bool)]
    pub dry_run: bool,

    /// Seed a target that is not a mount point (by default refused: in a pod that means the
    /// volume was forgotten and the copy would vanish with the pod).
    #[arg(long, env = "NIX_SEED_ALLOW_NON_MOUNTPOINT", value_parser = parse_bool)]
    pub allow_non_mountpoint: bool,

    /// A name for the image that `nix-seed images` shows beside its id (e.g. the image's
    /// tag); kept in the image's record.
    #[arg(long, env = "NIX_SEED_NAME", value_name = "NAME")]
    pub name: Option<String>,

    /// What an image upgrade does to the profiles it ships (`var/nix/profiles/NAME`,
    /// per-user ones too). `follow`: the image's current generation is added as a new
    /// generation of the target's profile, which is switched to it unless someone changed
    /// the profile since nix-seed last set it (then a warning says how to switch);
    /// `image`: always switched; `keep`: profiles the target has are left as they are.
    #[arg(long, env = "NIX_SEED_PROFILES", value_enum, default_value_t = ProfilesMode::Follow,
          value_name = "MODE")]
    pub profiles: ProfilesMode,

    #[command(flatten)]
    pub output: Output,
}

/// `--target`, shared by every subcommand that has one.
#[derive(Debug, Args, Clone)]
pub struct Target {
    /// The directory pods mount at /nix (it holds, or will hold, store/ and var/).
    #[arg(long, env = "NIX_SEED_TARGET", value_name = "DIR")]
    pub target: PathBuf,
}

/// `--jobs`, shared by `seed` and `verify`.
#[derive(Debug, Args, Clone)]
pub struct Jobs {
    /// Parallel workers, copying or hashing [default: 4 per CPU; 8 to 16 on a local
    /// filesystem, 32 to 64 on a network filesystem (NFS, FUSE, CephFS, SMB, Lustre, 9p...),
    /// where every file operation waits for a round trip; `seed`'s start line says which]
    #[arg(long = "jobs", short = 'j', env = "NIX_SEED_JOBS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=256))]
    pub jobs: Option<u32>,
}

/// `--lock-timeout`, shared by `seed`, `prune` and `images`.
#[derive(Debug, Args, Clone)]
pub struct LockTimeout {
    /// How long each lock wait may last before giving up (exit 3): another seeder's lock,
    /// Nix's gc.lock (a garbage collection) and db/big-lock (a migration), the Nix
    /// database's lock. 30s, 10m, 1h.
    #[arg(long, env = "NIX_SEED_LOCK_TIMEOUT", default_value = "30m", value_parser = parse_duration,
          value_name = "DUR")]
    pub lock_timeout: Duration,
}

/// `--lock-stale`, shared by `seed` and `prune` (the commands that take the seed lock).
#[derive(Debug, Args, Clone)]
pub struct LockStale {
    /// A holder whose lease has not changed for this long (on the waiter's own monotonic
    /// clock) while the kernel still reports the lock held is taken over; never before 6 of
    /// the holder's own heartbeats (its lease says how often it beats: DUR/6, 0.5 s to 5 s;
    /// 5 s if it does not say), so a live holder is not taken over. At least 3s.
    #[arg(long, env = "NIX_SEED_LOCK_STALE", default_value = "60s", value_parser = parse_stale,
          value_name = "DUR")]
    pub lock_stale: Duration,
}

/// `--profiles`: see [`SeedArgs::profiles`] and [`crate::steps::profiles`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProfilesMode {
    Follow,
    Keep,
    Image,
}

#[derive(Debug, Args)]
#[command(mut_arg("verbose", |a| a.help("More detail: name every store path of the image that is missing.")))]
pub struct StatusArgs {
    #[command(flatten)]
    pub paths: Paths,

    /// The pods' nix.conf: a warning if it enables Nix's automatic garbage collection
    /// (min-free above 0), unsafe on a shared store [default: $NIX_CONF_DIR/nix.conf if
    /// NIX_CONF_DIR is set, else /etc/nix/nix.conf; if present].
    #[arg(long, env = "NIX_SEED_NIX_CONF", value_name = "FILE")]
    pub nix_conf: Option<PathBuf>,

    #[command(flatten)]
    pub output: Output,
}

#[derive(Debug, Args, Clone)]
pub struct Output {
    /// Progress display: a bar on a terminal, plain lines in logs (every 5 s; the variable
    /// NIX_SEED_PROGRESS_INTERVAL=DUR sets another interval).
    #[arg(long, env = "NIX_SEED_PROGRESS", value_enum, default_value_t = ProgressMode::Auto)]
    pub progress: ProgressMode,

    /// Format of every line nix-seed prints.
    #[arg(long, env = "NIX_SEED_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Only errors and warnings.
    #[arg(long, short = 'q', env = "NIX_SEED_QUIET", conflicts_with = "verbose", value_parser = parse_bool)]
    pub quiet: bool,

    /// More detail (each subcommand says which).
    #[arg(long, short = 'v', action = clap::ArgAction::SetTrue)]
    pub verbose: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProgressMode {
    Auto,
    Bar,
    Log,
    None,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// A boolean variable's value: `1`/`0`, `true`/`false`, `yes`/`no`, `on`/`off` (any case).
/// Anything else is refused, so a typo such as `NIX_SEED_DRY_RUN=disabled` cannot switch a
/// flag on; clap's `FalseyValueParser` took every unknown word as true, its
/// `BoolishValueParser` also takes `y`, `n`, `t` and `f`.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err("expected 1/0, true/false, yes/no or on/off".to_string()),
    }
}

/// [`parse_duration`], refusing less than [`crate::engines::lock::MIN_STALE`]: a shorter stale
/// period would let waiters take the lock from a holder that is merely busy.
pub fn parse_stale(s: &str) -> Result<Duration, String> {
    let d = parse_duration(s)?;
    let min = crate::engines::lock::MIN_STALE;
    if d < min {
        return Err(format!(
            "the minimum for --lock-stale (NIX_SEED_LOCK_STALE) is {}: a shorter one could take the \
             lock from a seeder that is alive",
            humantime::format_duration(min)
        ));
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("10m").unwrap(), Duration::from_secs(600));
        assert_eq!(parse_duration("1h").unwrap(), Duration::from_secs(3600));
        assert_eq!(parse_duration("45").unwrap(), Duration::from_secs(45));
        assert!(parse_duration("ten minutes").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_stale("0").is_err());
        assert!(parse_stale("2999ms").is_err());
        assert_eq!(parse_stale("3s").unwrap(), crate::engines::lock::MIN_STALE);
    }

    #[test]
    fn booleans() {
        for t in ["1", "true", "TRUE", "yes", "On"] {
            assert_eq!(parse_bool(t), Ok(true), "{t}");
        }
        for f in ["0", "false", "No", "off"] {
            assert_eq!(parse_bool(f), Ok(false), "{f}");
        }
        for bad in ["disabled", "", "y", "2", "enable"] {
            assert!(parse_bool(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn clap_contract_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
