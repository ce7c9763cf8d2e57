//! The store's side of a collection: what a path's files say (how much deleting it frees,
//! when one of them was last read), taking a path away from its name, and the optimiser's
//! `.links` entries no path uses any more.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::stat::{FileStat, SFlag};

use crate::base::dirfd::{file_type, list, lstat_at, open_dir_if_exists, Listed};

/// What a store path's files say.
#[derive(Debug, Default, Clone, Copy)]
pub struct Usage {
    /// Bytes deleting it frees: the blocks of its directories, symlinks, and the files
    /// whose last link it holds (a file `.links` shares is freed by the `.links` pass).
    pub bytes: u64,
    /// The latest read of one of its files or symlinks: an access time later than the
    /// change time (creating, or Nix's fixing of metadata, is not a read).
    pub last_read: Option<SystemTime>,
}

fn time(sec: i64, nsec: i64) -> SystemTime {
    if sec >= 0 {
        SystemTime::UNIX_EPOCH + Duration::new(sec as u64, nsec.clamp(0, 999_999_999) as u32)
    } else {
        SystemTime::UNIX_EPOCH
    }
}

pub fn ctime(st: &FileStat) -> SystemTime {
    time(st.st_ctime, st.st_ctime_nsec)
}

fn add(u: &mut Usage, st: &FileStat, reads: bool) {
    let kind = file_type(st);
    if kind == SFlag::S_IFDIR || st.st_nlink <= 1 {
        u.bytes += st.st_blocks as u64 * 512;
    }
    if reads
        && matches!(kind, SFlag::S_IFREG | SFlag::S_IFLNK)
        && (st.st_atime, st.st_atime_nsec) > (st.st_ctime, st.st_ctime_nsec)
    {
        let t = time(st.st_atime, st.st_atime_nsec);
        u.last_read = Some(u.last_read.map_or(t, |l| l.max(t)));
    }
}

/// The usage of `name` in `dir`, walked without following symlinks (and never read:
/// only `lstat`, which changes no access time). `reads`: look at access times too.
pub fn usage(dir: BorrowedFd, name: &OsStr, reads: bool) -> Result<Usage> {
    let mut u = Usage::default();
    let Some(st) = lstat_at(dir, name)? else { return Ok(u) };
    add(&mut u, &st, reads);
    if file_type(&st) == SFlag::S_IFDIR {
        walk(dir, name, reads, &mut u)?;
    }
    Ok(u)
}

fn walk(parent: BorrowedFd, name: &OsStr, reads: bool, u: &mut Usage) -> Result<()> {
    // Opened once and listed through that handle: on a network disk each open is a round trip.
    let d = match Listed::open(parent, name) {
        Ok(d) => d,
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    for e in &d.entries {
        let Some(st) = lstat_at(d.fd(), &e.name)? else { continue };
        add(u, &st, reads);
        if file_type(&st) == SFlag::S_IFDIR {
            walk(d.fd(), &e.name, reads, u)?;
        }
    }
    Ok(())
}

/// Take `name` away from its name in `store`: renamed to a temporary name of this run
/// (which any later nix-seed run removes if this one dies). `None` if it is gone already.
pub fn rename_away(store: BorrowedFd, name: &str) -> Result<Option<OsString>> {
    let tmp = crate::base::dirfd::temp_name(OsStr::new(name));
    match nix::fcntl::renameat(store, name, store, tmp.as_os_str()) {
        Ok(()) => Ok(Some(tmp)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot rename /nix/store/{name} away to delete it")),
    }
}

/// Remove the entries of `store/.links` whose link count is 1: no store path uses them any
/// more. Returns how many went and the bytes freed.
pub fn remove_unused_links(store: BorrowedFd) -> Result<(u64, u64)> {
    let Some(links) = open_dir_if_exists(store, ".links").context("cannot open /nix/store/.links (a symlink?)")? else {
        return Ok((0, 0));
    };
    let (mut n, mut bytes) = (0, 0);
    for e in list(links.as_fd()).context("cannot list /nix/store/.links")? {
        let Some(st) = lstat_at(links.as_fd(), &e.name)? else {
            continue;
        };
        if st.st_nlink != 1 || file_type(&st) == SFlag::S_IFDIR {
            continue;
        }
        match nix::unistd::unlinkat(
            links.as_fd(),
            e.name.as_os_str(),
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        ) {
            Ok(()) => {
                n += 1;
                bytes += st.st_blocks as u64 * 512;
            }
            Err(Errno::ENOENT) => {}
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("cannot remove /nix/store/.links/{}", e.name.to_string_lossy()))
            }
        }
    }
    Ok((n, bytes))
}

/// Whether the lock file `name` in `store` (a `.lock` Nix's builder or substituter holds
/// while it makes a path) is held right now.
pub fn lock_held(store: BorrowedFd, name: &str) -> bool {
    use nix::fcntl::{openat, OFlag};
    let Ok(fd) = openat(
        store,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::empty(),
    ) else {
        return false;
    };
    let f = std::fs::File::from(fd);
    let shown = std::path::Path::new("/nix/store").join(name);
    !crate::engines::nixlocks::try_flock(&f, libc::LOCK_SH, &shown).unwrap_or(true)
}

/// Take the lock file `name` in `store` (a stale `.lock` of Nix's builder or substituter)
/// and mark it stale, as Nix's `deleteLockFile` does (it writes `d`): a process that opened
/// it before it goes sees, once it gets the lock, that it must make a new one. `None` when
/// someone holds it (in use: not to be deleted). The lock is held until the file is dropped.
pub fn retire_lock_file(store: BorrowedFd, name: &str) -> Option<std::fs::File> {
    use nix::fcntl::{openat, OFlag};
    use std::io::Write;
    let fd = openat(
        store,
        name,
        OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    let mut f = std::fs::File::from(fd);
    let shown = std::path::Path::new("/nix/store").join(name);
    if !crate::engines::nixlocks::try_flock(&f, libc::LOCK_EX, &shown).ok()? {
        return None;
    }
    let _ = f.write_all(b"d");
    Some(f)
}
