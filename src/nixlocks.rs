//! Nix's own locks on the target, held (shared) for the whole copy-and-register window.
//!
//! - `var/nix/gc.lock`: a garbage collection holds `LOCK_EX` for its whole run and deletes
//!   every store entry that is not registered (nix-seed's temporary copies and the paths
//!   it copied but has not registered yet included). Holding `LOCK_SH` makes a GC wait
//!   until nix-seed has registered what it copied, and nix-seed wait for a running GC.
//! - `var/nix/db/big-lock`: every Nix process holds `LOCK_SH` while it has the store open,
//!   and `LOCK_EX` only for schema migrations. `LOCK_SH` keeps a migration from running
//!   under nix-seed; `LOCK_EX` would wait for every Nix process on every pod to exit.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;

use crate::dirfd::open_dir_if_exists;
use crate::progress::Log;

/// The shared locks; released when dropped.
pub struct NixLocks {
    _held: Vec<File>,
}

/// `LOCK_SH` on `name`, waiting at most `timeout` for `what` (the exclusive holder) to
/// finish; then [`crate::lock::Timeout`] (exit 3) names the file and what to do.
fn shared_lock(
    dir: BorrowedFd,
    name: &str,
    shown: &Path,
    what: &str,
    log: &Log,
    stop: &AtomicBool,
    timeout: Duration,
) -> Result<File> {
    let fd = openat(
        dir,
        name,
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::from_bits_truncate(0o600),
    )
    .with_context(|| format!("cannot open {} (must be a regular file)", shown.display()))?;
    let f = File::from(fd);
    let t0 = Instant::now();
    let mut said = None::<Instant>;
    loop {
        match Errno::result(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) }) {
            Ok(_) => return Ok(f),
            Err(Errno::EWOULDBLOCK) => {}
            Err(e) => return Err(e).with_context(|| format!("cannot lock {}", shown.display())),
        }
        if stop.load(Ordering::Relaxed) {
            return Err(crate::copy::Stopped.into());
        }
        let waited = t0.elapsed();
        if waited >= timeout {
            return Err(crate::lock::Timeout(format!(
                "gave up after {} waiting for {what} to finish: {} is held exclusively; nothing was \
                 copied; run the seed when it has finished, or raise --lock-timeout",
                humantime::format_duration(Duration::from_secs(waited.as_secs())),
                shown.display()
            ))
            .into());
        }
        if said.is_none_or(|t| t.elapsed() >= Duration::from_secs(5)) {
            said = Some(Instant::now());
            log.info(&format!(
                "waiting for {what} to finish ({} is held); waited {}s",
                shown.display(),
                t0.elapsed().as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(100).min(timeout.saturating_sub(waited)));
    }
}

impl NixLocks {
    /// Take `LOCK_SH` on `var/nix/gc.lock` and `var/nix/db/big-lock` if the target's
    /// `var/nix` exists (otherwise no Nix can be using the target yet).
    /// Each wait gives up after `timeout` (`--lock-timeout`).
    pub fn acquire(
        target: BorrowedFd,
        target_path: &Path,
        log: &Log,
        stop: &AtomicBool,
        timeout: Duration,
    ) -> Result<NixLocks> {
        let mut held = Vec::new();
        // Absent: no Nix uses the target yet. Anything else (a symlink swapped in) is an
        // error, not a reason to go without the locks.
        let not_symlink = |p: &str| {
            format!(
                "cannot open {}/{p} (must be a directory, not a symlink)",
                target_path.display()
            )
        };
        let Some(var) = open_dir_if_exists(target, "var").with_context(|| not_symlink("var"))? else {
            return Ok(NixLocks { _held: held });
        };
        let Some(nix_dir) = open_dir_if_exists(var.as_fd(), "nix").with_context(|| not_symlink("var/nix"))? else {
            return Ok(NixLocks { _held: held });
        };
        let shown = target_path.join("var/nix/gc.lock");
        held.push(shared_lock(
            nix_dir.as_fd(),
            "gc.lock",
            &shown,
            "a garbage collection (nix-collect-garbage, nix store gc)",
            log,
            stop,
            timeout,
        )?);
        if let Some(db) = open_dir_if_exists(nix_dir.as_fd(), "db").with_context(|| not_symlink("var/nix/db"))? {
            let shown = target_path.join("var/nix/db/big-lock");
            held.push(shared_lock(
                db.as_fd(),
                "big-lock",
                &shown,
                "a Nix database migration",
                log,
                stop,
                timeout,
            )?);
        }
        Ok(NixLocks { _held: held })
    }
}
