//! The lock file itself: opened without following a symlink (and refused if it is not a
//! regular file), its kernel lock, whether the name still refers to it, and the takeover
//! that renames a fresh, locked lock file over a stale one.

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fstat, Mode, SFlag};

use super::lease::{read_lease, write_lease, Me};
use super::LOCK_NAME;
use crate::base::dirfd::{file_type, lstat_at};

use crate::base::layout::TAKEOVER_NAME;

pub(super) fn open_lock_file(dir: BorrowedFd, name: &str, path: &Path, excl: bool) -> Result<File> {
    // O_NONBLOCK: a FIFO planted at the name must not hang the open.
    let mut flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    if excl {
        flags |= OFlag::O_EXCL;
    }
    let fd = openat(dir, name, flags, Mode::from_bits_truncate(0o644))
        .map_err(|e| crate::base::error::Invalid(crate::base::dirfd::open_problem(e, path)))?;
    let st = fstat(fd.as_fd())?;
    if file_type(&st) != SFlag::S_IFREG {
        return Err(crate::base::error::Invalid(format!(
            "lock file {} is not a regular file: remove it",
            path.display()
        ))
        .into());
    }
    Ok(File::from(fd))
}

pub(super) fn try_flock(f: &File) -> Result<bool, Errno> {
    match Errno::result(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) {
        Ok(_) => Ok(true),
        Err(Errno::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether the name `lock` still refers to the file we hold.
pub(super) fn is_current(dir: BorrowedFd, f: &File) -> std::io::Result<bool> {
    let mine = fstat(f.as_fd())?;
    Ok(lstat_at(dir, LOCK_NAME)?.is_some_and(|st| st.st_dev == mine.st_dev && st.st_ino == mine.st_ino))
}

/// Replace a stale lock file by a fresh one we hold, if it is still the stale one.
pub(super) fn take_over(
    dir: BorrowedFd,
    lock_path: &Path,
    stale_ino: u64,
    stale_raw: &[u8],
    me: &Me,
) -> Result<Option<File>> {
    let tpath = lock_path.with_file_name(TAKEOVER_NAME);
    let guard = open_lock_file(dir, TAKEOVER_NAME, &tpath, false)?;
    if !try_flock(&guard).unwrap_or(false) {
        return Ok(None); // someone else is taking over right now
    }
    // Re-check under the takeover lock: is it still the same stale lease?
    let cur = open_lock_file(dir, LOCK_NAME, lock_path, false)?;
    if try_flock(&cur).unwrap_or(false) && is_current(dir, &cur)? {
        return Ok(Some(cur)); // released meanwhile
    }
    if fstat(cur.as_fd())?.st_ino != stale_ino || read_lease(&cur) != stale_raw {
        return Ok(None);
    }
    let fresh_name: OsString = format!("{LOCK_NAME}.new.{}", std::process::id()).into();
    let _ = nix::unistd::unlinkat(dir, fresh_name.as_os_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    let fresh = open_lock_file(dir, fresh_name.to_str().unwrap_or("lock.new"), lock_path, true)?;
    if !try_flock(&fresh).unwrap_or(false) {
        bail!("cannot lock a new lock file next to {}", lock_path.display());
    }
    write_lease(&fresh, &me.lease(0)).with_context(|| format!("cannot write lease to {}", lock_path.display()))?;
    renameat(dir, fresh_name.as_os_str(), dir, LOCK_NAME)
        .with_context(|| format!("cannot replace {}", lock_path.display()))?;
    drop(guard);
    Ok(Some(fresh))
}
