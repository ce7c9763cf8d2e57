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
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{Gid, Uid};

use crate::base::dirfd::{mkdir_open, open_dir_if_exists, MkdirOpen};
use crate::base::preflight::Checked;
use crate::base::progress::Log;
use crate::base::wait::Tried;

/// The shared locks; released when dropped.
pub struct NixLocks {
    _held: Vec<File>,
}

/// `op` (`LOCK_SH` or `LOCK_EX`) on `name`, waiting at most `timeout` for `what` (the
/// holder) to finish; then [`crate::base::error::Timeout`] (exit 3) names the file and what
/// to do, `outcome` saying what giving up left.
#[allow(clippy::too_many_arguments)]
fn take(
    dir: BorrowedFd,
    name: &str,
    shown: &Path,
    what: &str,
    op: libc::c_int,
    outcome: &str,
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
    .map_err(|e| crate::base::error::Invalid(crate::base::dirfd::open_problem(e, shown)))?;
    let f = File::from(fd);
    crate::base::wait::wait(
        Instant::now(),
        timeout,
        stop,
        |_| {
            Ok(if try_flock(&f, op, shown)? {
                Tried::Got(())
            } else {
                Tried::Held(())
            })
        },
        |(), waited| {
            log.info(&format!(
                "waiting for {what} to finish ({} is held); waited {}s",
                shown.display(),
                waited.as_secs()
            ));
        },
        |(), waited| {
            format!(
                "gave up after {} waiting for {what} to finish: {} is held; {outcome}",
                humantime::format_duration(Duration::from_secs(waited.as_secs())),
                shown.display()
            )
        },
    )?;
    Ok(f)
}

/// One `flock(op | LOCK_NB)` on `f` (shown as `shown`): whether it was taken (`false`
/// when someone else holds it, or a signal interrupted the call). Nix's locks and a
/// profile's lock are waited for with it, by [`crate::base::wait::wait`].
pub(crate) fn try_flock(f: &File, op: libc::c_int, shown: &Path) -> Result<bool> {
    // SAFETY: flock on an open descriptor.
    match Errno::result(unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) }) {
        Ok(_) => Ok(true),
        Err(Errno::EWOULDBLOCK | Errno::EINTR) => Ok(false),
        Err(e) => Err(e).with_context(|| format!("cannot lock {}", shown.display())),
    }
}

const SEED_OUTCOME: &str = "nothing was copied; run the seed when it has finished, or raise --lock-timeout";

impl NixLocks {
    /// A collection's locks in `var_nix` (the target's `var/nix`, shown as `shown`):
    /// `gc.lock`, exclusive (`LOCK_SH` for a dry run, which only reads: it waits for a
    /// running collection, and lets Nix processes add roots meanwhile), then
    /// `db/big-lock` shared. Each wait gives up after `timeout`.
    pub fn collector(
        var_nix: BorrowedFd,
        shown: &Path,
        dry_run: bool,
        log: &Log,
        stop: &AtomicBool,
        timeout: Duration,
    ) -> Result<NixLocks> {
        let outcome = "nothing was deleted; run it again later, or raise --lock-timeout";
        let (op, what) = if dry_run {
            (
                libc::LOCK_SH,
                "a garbage collection (nix-seed gc, nix-collect-garbage, nix store gc)",
            )
        } else {
            (libc::LOCK_EX, "a garbage collection or a seed (each holds it)")
        };
        let mut held = vec![take(
            var_nix,
            "gc.lock",
            &shown.join("gc.lock"),
            what,
            op,
            outcome,
            log,
            stop,
            timeout,
        )?];
        if let Some(db) = open_dir_if_exists(var_nix, "db").with_context(|| {
            format!(
                "cannot open {}/db (must be a directory, not a symlink)",
                shown.display()
            )
        })? {
            held.push(take(
                db.as_fd(),
                "big-lock",
                &shown.join("db/big-lock"),
                "a Nix database migration",
                libc::LOCK_SH,
                outcome,
                log,
                stop,
                timeout,
            )?);
        }
        Ok(NixLocks { _held: held })
    }

    /// Take `LOCK_SH` on `var/nix/gc.lock` and, if the database directory exists,
    /// `var/nix/db/big-lock`. `var/nix` is created first when missing (with the image's
    /// modes and owners): a Nix started in a pod just after a check for it would otherwise
    /// create it, take `gc.lock` itself and collect what is being copied. Each wait gives
    /// up after `timeout` (`--lock-timeout`).
    pub fn acquire(c: &Checked, log: &Log, stop: &AtomicBool, timeout: Duration) -> Result<NixLocks> {
        let mut held = Vec::new();
        let var = ensure_dir(c.target.as_fd(), c.source.as_fd(), "var", &c.layout.var)?;
        let nix_dir = ensure_dir(var.as_fd(), c.source.as_fd(), "var/nix", &c.target_path.join("var/nix"))?;
        let shown = c.target_path.join("var/nix/gc.lock");
        held.push(take(
            nix_dir.as_fd(),
            "gc.lock",
            &shown,
            "a garbage collection (nix-seed gc, nix-collect-garbage, nix store gc)",
            libc::LOCK_SH,
            SEED_OUTCOME,
            log,
            stop,
            timeout,
        )?);
        let not_symlink = format!(
            "cannot open {}/var/nix/db (must be a directory, not a symlink)",
            c.target_path.display()
        );
        if let Some(db) = open_dir_if_exists(nix_dir.as_fd(), "db").context(not_symlink)? {
            let shown = c.target_path.join("var/nix/db/big-lock");
            held.push(take(
                db.as_fd(),
                "big-lock",
                &shown,
                "a Nix database migration",
                libc::LOCK_SH,
                SEED_OUTCOME,
                log,
                stop,
                timeout,
            )?);
        }
        Ok(NixLocks { _held: held })
    }
}

/// `rel`'s last component inside `parent` (a directory of the target), created if missing
/// with the mode and owner of the image's `rel` (0755 if the image has none), and opened
/// without following a symlink.
fn ensure_dir(parent: BorrowedFd, source_root: BorrowedFd, rel: &str, shown: &Path) -> Result<OwnedFd> {
    let name = rel.rsplit('/').next().unwrap_or(rel);
    let model = crate::base::dirfd::lstat_at(source_root, rel)
        .ok()
        .flatten()
        .filter(|st| crate::base::dirfd::file_type(st) == nix::sys::stat::SFlag::S_IFDIR);
    match mkdir_open(parent, name, Mode::from_bits_truncate(0o700)) {
        Ok((fd, true)) => {
            let (mode, owner) = model.map_or((0o755, None), |st| (st.st_mode & 0o7777, Some((st.st_uid, st.st_gid))));
            if let Some((uid, gid)) = owner {
                // Not root, or a filesystem that squashes root: the directory keeps ours.
                let _ = nix::unistd::fchown(fd.as_fd(), Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)));
            }
            nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))
                .with_context(|| format!("cannot set the mode of {}", shown.display()))?;
            Ok(fd)
        }
        Ok((fd, false)) => Ok(fd),
        Err(MkdirOpen::Open { created: true, err }) => {
            Err(err).with_context(|| format!("cannot open {}", shown.display()))
        }
        Err(MkdirOpen::Open { created: false, err }) => {
            Err(err).with_context(|| format!("cannot open {} (must be a directory, not a symlink)", shown.display()))
        }
        Err(MkdirOpen::Create(e)) => Err(e).with_context(|| format!("cannot create {}", shown.display())),
    }
}
