//! How SQLite reaches files in a directory of the target without following symlinks: a
//! `/proc/self/fd` path and a copy of SQLite's unix VFS that keeps it as it is. The only
//! `unsafe` and FFI of nix-seed's database code.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// How SQLite reaches files in a directory of the target.
///
/// SQLite opens files by path, resolving symlinks in it, and it creates the journal, the
/// dotfile lock directory (`db.sqlite.lock`) and the WAL index by that path at every
/// transaction, for as long as the connection is open. A pod can swap a symlink in for
/// `var`, `var/nix` or `var/nix/db` at any of those moments, which would send those writes
/// outside the target. So SQLite gets `/proc/self/fd/<N>/<name>`, N a descriptor of the
/// directory nix-seed opened without following symlinks, through a copy of SQLite's VFS
/// whose full-pathname step keeps that path as it is (SQLite's own would resolve the
/// `/proc` link back to the path): the kernel resolves every file SQLite opens or creates
/// through the descriptor. Without `/proc` (a bare chroot), the plain path and SQLite's
/// VFS, as the only option left.
pub(super) struct InDir {
    /// The directory SQLite's paths go through (kept open as long as the connection).
    _dir: Option<std::os::fd::OwnedFd>,
    /// What SQLite gets for that directory: `/proc/self/fd/<N>`, or its plain path.
    sqlite_dir: PathBuf,
    pub(super) vfs: &'static CStr,
}

impl InDir {
    pub(super) fn new(dir: BorrowedFd, shown: &Path, dotfile: bool) -> Result<InDir> {
        use std::os::fd::AsRawFd;
        let base = if dotfile { c"unix-dotfile" } else { c"unix" };
        let fd = dir
            .try_clone_to_owned()
            .with_context(|| format!("cannot open {}", shown.display()))?;
        let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let same = match (nix::sys::stat::stat(proc.as_str()), nix::sys::stat::fstat(fd.as_fd())) {
            (Ok(a), Ok(b)) => (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino),
            _ => false,
        };
        match fd_vfs::get(base) {
            Some(vfs) if same => Ok(InDir {
                _dir: Some(fd),
                sqlite_dir: PathBuf::from(proc),
                vfs,
            }),
            _ => Ok(InDir {
                _dir: None,
                sqlite_dir: shown.to_path_buf(),
                vfs: base,
            }),
        }
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.sqlite_dir.join(name)
    }
}

/// Copies of SQLite's unix VFSes (`nix-seed-unix`, `nix-seed-unix-dotfile`) that take an
/// absolute path as it is, where SQLite's resolve every symlink in it (see [`InDir`]).
/// Everything else (opening, locking, the dotfile lock, shared memory) is SQLite's own.
mod fd_vfs {
    use std::ffi::{c_char, c_int, CStr};
    use std::sync::OnceLock;

    use rusqlite::ffi;

    unsafe extern "C" fn full_pathname(
        _vfs: *mut ffi::sqlite3_vfs,
        name: *const c_char,
        n_out: c_int,
        out: *mut c_char,
    ) -> c_int {
        // SAFETY: SQLite passes a NUL-terminated name and an output buffer of n_out bytes.
        let bytes = unsafe { CStr::from_ptr(name) }.to_bytes_with_nul();
        if bytes.first() != Some(&b'/') || bytes.len() > usize::try_from(n_out).unwrap_or(0) {
            return ffi::SQLITE_CANTOPEN;
        }
        // SAFETY: checked above that `out` has room for the name and its NUL.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), out, bytes.len()) };
        ffi::SQLITE_OK
    }

    fn register(base: &CStr, name: &'static CStr) -> bool {
        // SAFETY: sqlite3_vfs_find returns a registered VFS (never freed) or null; the copy
        // is leaked, so it outlives every connection, as SQLite requires.
        unsafe {
            let b = ffi::sqlite3_vfs_find(base.as_ptr());
            if b.is_null() {
                return false;
            }
            let mut v = std::ptr::read(b);
            v.zName = name.as_ptr();
            v.pNext = std::ptr::null_mut();
            v.xFullPathname = Some(full_pathname);
            ffi::sqlite3_vfs_register(Box::leak(Box::new(v)), 0) == ffi::SQLITE_OK
        }
    }

    /// The copy of `base` (`unix` or `unix-dotfile`), registered on first use.
    pub fn get(base: &CStr) -> Option<&'static CStr> {
        static UNIX: OnceLock<bool> = OnceLock::new();
        static DOTFILE: OnceLock<bool> = OnceLock::new();
        let (cell, base, name) = if base == c"unix-dotfile" {
            (&DOTFILE, c"unix-dotfile", c"nix-seed-unix-dotfile")
        } else {
            (&UNIX, c"unix", c"nix-seed-unix")
        };
        cell.get_or_init(|| register(base, name)).then_some(name)
    }
}
