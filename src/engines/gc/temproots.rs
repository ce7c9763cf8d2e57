//! Temporary roots: what running Nix processes use right now, each process listing store
//! paths (NUL-terminated) in its own `var/nix/temproots/<pid>` while it holds a lock on it.
//!
//! Every file counts, whatever its name: pids mean nothing across pods, and a file is live
//! exactly when its lock cannot be taken, which holds across pods (and across nodes, on a
//! filesystem whose clients share `flock`, which Nix's `gc.lock` needs as well). A file
//! whose lock *can* be taken belongs to a dead process: it is removed, as Nix's collector
//! removes it (and marked, so that a process that opened it just before sees it is stale).

use std::collections::HashSet;
use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, Mode, SFlag};

use super::roots::store_name_of;
use crate::base::dirfd::{file_type, list, lstat_at, open_dir_if_exists};

#[derive(Debug, Default)]
pub struct TempRoots {
    /// Hash parts of the store paths listed in live files (Nix compares by hash part, so
    /// that `X.lock`, `X.chroot` and `X.check` are kept with `X`).
    pub hashes: HashSet<String>,
    pub live_files: usize,
    /// Files of dead processes (removed, unless `dry_run`).
    pub stale_files: usize,
}

/// The hash part of a store path name.
pub fn hash_part(name: &str) -> &str {
    &name[..name.len().min(32)]
}

/// Read `var/nix/temproots` in `var_nix` (shown as `shown`). `dry_run`: remove nothing.
pub fn read(var_nix: BorrowedFd, shown: &std::path::Path, dry_run: bool) -> Result<TempRoots> {
    let mut out = TempRoots::default();
    let Some(dir) = open_dir_if_exists(var_nix, "temproots")
        .with_context(|| format!("cannot open {}/temproots (a symlink?)", shown.display()))?
    else {
        return Ok(out);
    };
    for e in list(dir.as_fd()).with_context(|| format!("cannot list {}/temproots", shown.display()))? {
        if e.name.as_bytes().first() == Some(&b'.') {
            continue;
        }
        let at = || format!("cannot read {}/temproots/{}", shown.display(), e.name.to_string_lossy());
        let fd = match openat(
            dir.as_fd(),
            e.name.as_os_str(),
            OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            // Gone meanwhile (its process exited), or not a file any Nix made: no roots.
            Err(Errno::ENOENT | Errno::ELOOP | Errno::ENXIO | Errno::EISDIR) => continue,
            Err(err) => return Err(err).with_context(at),
        };
        let st = fstat(fd.as_fd()).with_context(at)?;
        if file_type(&st) != SFlag::S_IFREG {
            continue;
        }
        let mut f = std::fs::File::from(fd);
        if crate::engines::nixlocks::try_flock(&f, libc::LOCK_EX, &shown.join("temproots").join(&e.name))? {
            out.stale_files += 1;
            if !dry_run {
                // Only the very file locked: a process may have made a new one by that name.
                let same = lstat_at(dir.as_fd(), &e.name)?
                    .is_some_and(|now| now.st_ino == st.st_ino && now.st_dev == st.st_dev);
                if same {
                    match nix::unistd::unlinkat(
                        dir.as_fd(),
                        e.name.as_os_str(),
                        nix::unistd::UnlinkatFlags::NoRemoveDir,
                    ) {
                        Ok(()) | Err(Errno::ENOENT) => {}
                        Err(err) => return Err(err).with_context(at),
                    }
                    // A process that opened it before the unlink sees it is not empty and
                    // makes a new one (Nix's createTempRootsFile).
                    let _ = f.write_all(b"d");
                }
            }
            continue;
        }
        out.live_files += 1;
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).with_context(at)?;
        for p in buf.split(|b| *b == 0) {
            if let Some(name) = std::str::from_utf8(p).ok().and_then(store_name_of) {
                out.hashes.insert(hash_part(name).to_string());
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    const A: &str = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-a";
    const B: &str = "/nix/store/1123456789abcdfghijklmnpqrsvwxyz-b.drv";

    fn setup() -> (tempfile::TempDir, std::fs::File) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("temproots")).unwrap();
        // Named like a pid of another pod's process: the name says nothing.
        let p = dir.path().join("temproots/1");
        std::fs::write(&p, format!("{A}\0{B}\0")).unwrap();
        let held = std::fs::OpenOptions::new().read(true).write(true).open(&p).unwrap();
        (dir, held)
    }

    fn flock(f: &std::fs::File, op: libc::c_int) {
        // SAFETY: flock on an open descriptor.
        assert_eq!(unsafe { libc::flock(f.as_raw_fd(), op) }, 0);
    }

    #[test]
    fn a_locked_file_is_live_whatever_its_name() {
        let (dir, held) = setup();
        flock(&held, libc::LOCK_EX);
        let fd = crate::base::dirfd::open_root(dir.path()).unwrap();
        let t = read(fd.as_fd(), dir.path(), false).unwrap();
        assert_eq!((t.live_files, t.stale_files), (1, 0));
        assert!(t.hashes.contains("0123456789abcdfghijklmnpqrsvwxyz"));
        assert!(t.hashes.contains("1123456789abcdfghijklmnpqrsvwxyz"));
        assert!(dir.path().join("temproots/1").exists());
    }

    #[test]
    fn an_unlocked_file_is_stale_and_removed_except_in_a_dry_run() {
        let (dir, held) = setup();
        drop(held);
        let fd = crate::base::dirfd::open_root(dir.path()).unwrap();
        let t = read(fd.as_fd(), dir.path(), true).unwrap();
        assert_eq!((t.live_files, t.stale_files, t.hashes.len()), (0, 1, 0));
        assert!(dir.path().join("temproots/1").exists(), "a dry run removes nothing");
        let t = read(fd.as_fd(), dir.path(), false).unwrap();
        assert_eq!((t.live_files, t.stale_files), (0, 1));
        assert!(!dir.path().join("temproots/1").exists());
    }

    #[test]
    fn a_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("temproots")).unwrap();
        std::fs::write(dir.path().join("elsewhere"), format!("{A}\0")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join("temproots/7")).unwrap();
        let fd = crate::base::dirfd::open_root(dir.path()).unwrap();
        let t = read(fd.as_fd(), dir.path(), false).unwrap();
        assert_eq!((t.live_files, t.stale_files), (0, 0));
        assert!(dir.path().join("temproots/7").symlink_metadata().is_ok());
    }
}
