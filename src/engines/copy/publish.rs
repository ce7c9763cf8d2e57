//! Moving a finished copy from its temporary name to its final name, never replacing
//! anything already there.
//!
//! `renameat2(RENAME_NOREPLACE)` is tried first, but every FUSE network filesystem tried
//! (GlusterFS, CephFS, MooseFS, sshfs) answers EINVAL, so it cannot be relied on. Then:
//! - a file or symlink is published with `linkat`, which fails with EEXIST on an existing
//!   name, and the temporary name is unlinked;
//! - a directory is renamed after checking the final name is free; a rename of a
//!   non-empty directory onto an existing name fails (ENOTEMPTY, EEXIST, ENOTDIR, or EPERM
//!   on sshfs), which is how a concurrent publisher is noticed. The one case this cannot
//!   catch is an empty directory created at the final name between the check and the
//!   rename by something other than nix-seed.
//!
//! If the final name exists, the copy is discarded: someone else published it first.

use std::ffi::OsStr;
use std::io;

use nix::errno::Errno;
use nix::fcntl::{renameat, renameat2, AtFlags, RenameFlags};
use nix::unistd::{linkat, unlinkat, UnlinkatFlags};
use std::os::fd::{AsFd, BorrowedFd};

use super::{Engine, TopEntry};
use crate::base::dirfd::{lstat_at, remove_tree_at};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    Yes,
    /// The final name already existed; the copy was discarded.
    AlreadyThere,
}

/// `is_dir`: whether the copy at `tmp` is a directory (the caller copied it, so knows).
pub fn publish(
    eng: &Engine,
    dir: BorrowedFd,
    top: &TopEntry,
    tmp: &OsStr,
    is_dir: bool,
    fin: &OsStr,
) -> io::Result<Published> {
    // Held across the move so no hardlink is made through a name that is changing.
    let mut name = top.name.lock().unwrap();
    let discard = |name: &mut Option<std::ffi::OsString>| -> io::Result<Published> {
        remove_tree_at(dir, tmp)?;
        *name = None;
        Ok(Published::AlreadyThere)
    };

    if eng.fs.noreplace() {
        match renameat2(dir, tmp, dir, fin, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => {
                *name = Some(fin.to_owned());
                return Ok(Published::Yes);
            }
            Err(Errno::EEXIST) => return discard(&mut name),
            Err(Errno::EINVAL) | Err(Errno::ENOSYS) | Err(Errno::ENOTSUP) => {
                eng.fs.without_noreplace();
            }
            Err(e) => return Err(e.into()),
        }
    }

    if !is_dir {
        match linkat(dir, tmp, dir, fin, AtFlags::empty()) {
            Ok(()) => {
                *name = Some(fin.to_owned());
                match unlinkat(dir, tmp, UnlinkatFlags::NoRemoveDir) {
                    // Claimed by a cleaner after the link: the published copy is whole.
                    Ok(()) | Err(Errno::ENOENT) => {}
                    Err(e) => return Err(e.into()),
                }
                return Ok(Published::Yes);
            }
            Err(Errno::EEXIST) => return discard(&mut name),
            Err(Errno::ENOENT) => return Err(vanished(tmp)),
            // No hardlinks on this filesystem (or too many): fall through to rename.
            Err(Errno::EPERM) | Err(Errno::ENOTSUP) | Err(Errno::EMLINK) | Err(Errno::ENOSYS) => {}
            Err(e) => return Err(e.into()),
        }
    }

    if lstat_at(dir, fin)?.is_some() {
        return discard(&mut name);
    }
    match renameat(dir, tmp, dir, fin) {
        Ok(()) => {
            *name = Some(fin.to_owned());
            Ok(Published::Yes)
        }
        Err(Errno::ENOENT) if lstat_at(dir, tmp)?.is_none() => Err(vanished(tmp)),
        Err(e @ (Errno::ENOTEMPTY | Errno::EEXIST | Errno::ENOTDIR | Errno::EISDIR | Errno::EPERM)) => {
            if lstat_at(dir, fin)?.is_some() {
                discard(&mut name)
            } else {
                Err(e.into())
            }
        }
        Err(e) => Err(e.into()),
    }
}

/// The temporary copy is gone before it was published: only another nix-seed run removes
/// (claims) entries with nix-seed's temporary names, and only while it holds the lock. So
/// it took the lock over (this run was stalled past --lock-stale), or both held it (the
/// filesystem does not share `flock` between clients). The copy is not published (see
/// `dirfd::remove_leftovers`).
pub(super) fn vanished(tmp: &OsStr) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "lost lock: another seeder removed this run's temporary copy {} before it was \
             published (it took the lock over after this one stalled past --lock-stale, or this \
             filesystem's clients do not share flock, as with sshfs: then run one seeder at a time)",
            crate::base::dirfd::show(tmp)
        ),
    )
}

/// Swap the finished copy `tmp` in for the existing `fin` and remove the old one:
/// `renameat2(RENAME_EXCHANGE)` where the filesystem has it (one atomic step), otherwise
/// two renames (the name is absent for a moment in between). Once the new copy is in
/// place the replacement has succeeded: an old copy that cannot be removed (not root, and
/// it belongs to root) is returned as a problem to report, under a temporary name that a
/// later run removes.
pub fn replace(eng: &Engine, dir: BorrowedFd, tmp: &OsStr, fin: &OsStr) -> io::Result<Option<String>> {
    let old = match renameat2(dir, tmp, dir, fin, RenameFlags::RENAME_EXCHANGE) {
        Ok(()) => tmp.to_os_string(),
        Err(Errno::EINVAL) | Err(Errno::ENOSYS) | Err(Errno::ENOTSUP) => {
            let old = eng.temp_name(fin);
            renameat(dir, fin, dir, old.as_os_str())?;
            if let Err(e) = renameat(dir, tmp, dir, fin) {
                let _ = renameat(dir, old.as_os_str(), dir, fin);
                return Err(e.into());
            }
            old
        }
        Err(e) => return Err(e.into()),
    };
    Ok(remove_tree_at(dir, &old).err().map(|e| {
        format!(
            "cannot remove the replaced copy (now {}): {e}; a later run with the rights to do so removes it",
            crate::base::dirfd::show(&old)
        )
    }))
}

/// Move `name` from `src` (a stage on the same filesystem) to the same name in `dst`,
/// never replacing what is there: `renameat2(RENAME_NOREPLACE)`, or where the filesystem
/// lacks it, a check that the name is free and a plain rename (which fails on a non-empty
/// directory there). What was there first wins; the staged one is removed.
///
/// Moving a directory to another parent rewrites its `..`, which needs write permission on
/// it: a read-only one (0555, as store paths are) is refused to a user without
/// CAP_DAC_OVERRIDE (not root). Then it is made owner-writable for the move and given its
/// mode back at once after, through the new name (a reader may see the write bit for that
/// moment; a kill there leaves it, which `nix-seed verify` reports).
pub fn move_in(eng: &Engine, src: BorrowedFd, dst: BorrowedFd, name: &OsStr) -> io::Result<Published> {
    match move_once(eng, src, dst, name) {
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => {}
        r => return r,
    }
    let dir = crate::base::dirfd::open_dir(src, name).map_err(|_| io::Error::from_raw_os_error(libc::EACCES))?;
    let mode = nix::sys::stat::fstat(dir.as_fd())?.st_mode & 0o7777;
    if mode & 0o200 != 0 {
        return Err(io::Error::from_raw_os_error(libc::EACCES));
    }
    let set = |m: u32| nix::sys::stat::fchmod(dir.as_fd(), nix::sys::stat::Mode::from_bits_truncate(m));
    set(mode | 0o200)?;
    let r = move_once(eng, src, dst, name);
    if matches!(r, Ok(Published::Yes)) || r.is_err() {
        // The descriptor follows the directory, wherever it now is.
        set(mode)?;
    }
    r
}

fn move_once(eng: &Engine, src: BorrowedFd, dst: BorrowedFd, name: &OsStr) -> io::Result<Published> {
    let discard = || -> io::Result<Published> {
        remove_tree_at(src, name)?;
        Ok(Published::AlreadyThere)
    };
    if eng.fs.noreplace() {
        match renameat2(src, name, dst, name, RenameFlags::RENAME_NOREPLACE) {
            Ok(()) => return Ok(Published::Yes),
            Err(Errno::EEXIST) => return discard(),
            Err(Errno::EINVAL) | Err(Errno::ENOSYS) | Err(Errno::ENOTSUP) => eng.fs.without_noreplace(),
            Err(e) => return Err(e.into()),
        }
    }
    if lstat_at(dst, name)?.is_some() {
        return discard();
    }
    // A file or symlink: a link fails on an existing name, where a rename would replace.
    let is_dir =
        lstat_at(src, name)?.is_some_and(|st| crate::base::dirfd::file_type(&st) == nix::sys::stat::SFlag::S_IFDIR);
    if !is_dir {
        return match linkat(src, name, dst, name, AtFlags::empty()) {
            Ok(()) => {
                unlinkat(src, name, UnlinkatFlags::NoRemoveDir)?;
                Ok(Published::Yes)
            }
            Err(Errno::EEXIST) => discard(),
            Err(e) => Err(e.into()),
        };
    }
    match renameat(src, name, dst, name) {
        Ok(()) => Ok(Published::Yes),
        Err(Errno::ENOTEMPTY) | Err(Errno::EEXIST) | Err(Errno::ENOTDIR) | Err(Errno::EISDIR) => discard(),
        Err(e) => Err(e.into()),
    }
}
