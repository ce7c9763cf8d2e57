//! The default `--jobs`: how much work to keep in flight on the target's filesystem.
//!
//! On a local disk a copy is bound by CPU and the disk's own queue: a few workers per CPU
//! are enough (BENCHMARKS.md: on ext4 with 2 CPUs, -j8 and -j16 are within 4% warm and
//! 14% cold, -j4 is behind both). On a network filesystem every file operation is a round
//! trip (0.2-2 ms) that takes no CPU, and the server overlaps concurrent ones, so the
//! copy is bound by how many operations are in flight: many more workers pay off there
//! (BENCHMARKS.md, "On a slow network disk": nix-seed by --jobs at 1 ms per operation).
//! An explicit `--jobs` (or `NIX_SEED_JOBS`) always wins.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// The jobs a run uses, and why, in words for the start line ("16 jobs (network
/// filesystem)").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Jobs {
    pub n: u32,
    pub why: &'static str,
}

/// Local filesystems: 4 per CPU, at least 8 and at most 16.
pub fn local_default(cpus: u32) -> u32 {
    cpus.saturating_mul(4).clamp(8, 16)
}

/// Network filesystems: 4 per CPU, at least 32 and at most 64 (each worker holds a copy
/// buffer and a few open files: 64 stays far below the file limit and a pod's memory).
pub fn network_default(cpus: u32) -> u32 {
    cpus.saturating_mul(4).clamp(32, 64)
}

fn cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// `explicit` if given, else the default for the filesystem `dir` is on (a directory
/// that cannot be opened counts as local: the checks that follow report it).
pub fn resolve(explicit: Option<u32>, dir: &Path) -> Jobs {
    if explicit.is_some() {
        return resolve_at(explicit, None);
    }
    // An O_PATH handle: statfs works on it, and on FUSE it costs no OPENDIR round trip.
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC)
        .open(dir)
        .ok();
    resolve_at(explicit, f.as_ref().map(|f| f.as_fd()))
}

/// [`resolve`] for a directory already open (`None`: could not be opened, counts as local).
pub fn resolve_at(explicit: Option<u32>, dir: Option<BorrowedFd>) -> Jobs {
    if let Some(n) = explicit {
        return Jobs { n, why: "--jobs" };
    }
    if dir.is_some_and(crate::base::dirfd::is_network_fs) {
        Jobs {
            n: network_default(cpus()),
            why: "network filesystem",
        }
    } else {
        Jobs {
            n: local_default(cpus()),
            why: "local filesystem",
        }
    }
}

impl std::fmt::Display for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} ({})",
            self.n,
            if self.n == 1 { "job" } else { "jobs" },
            self.why
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_by_cpus() {
        assert_eq!(local_default(1), 8);
        assert_eq!(local_default(2), 8);
        assert_eq!(local_default(4), 16);
        assert_eq!(local_default(64), 16);
        assert_eq!(network_default(2), 32);
        assert_eq!(network_default(12), 48);
        assert_eq!(network_default(64), 64);
    }

    #[test]
    fn explicit_wins_and_a_local_directory_is_local() {
        let d = std::env::temp_dir();
        assert_eq!(resolve(Some(3), &d), Jobs { n: 3, why: "--jobs" });
        assert_eq!(resolve(Some(3), &d).to_string(), "3 jobs (--jobs)");
        // /proc is no network filesystem.
        assert_eq!(resolve(None, Path::new("/proc")).why, "local filesystem");
        assert_eq!(resolve(None, Path::new("/nonexistent/x")).why, "local filesystem");
    }
}
