//! Operations relative to directory file descriptors, never following symlinks.
//!
//! The target is a disk shared with other pods that may be hostile: any of them can plant
//! a symlink at a name we are about to use. So after the user-given root is opened once,
//! every target operation names one component relative to an open directory fd, with
//! `O_NOFOLLOW`/`AT_SYMLINK_NOFOLLOW`, and creates with exclusive flags (`O_EXCL`,
//! `mkdirat`, `symlinkat`, `linkat` all fail on an existing name).

use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag, AT_FDCWD};
use nix::sys::stat::{fchmod, fstat, fstatat, FileStat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// Prefix of every temporary entry nix-seed creates. It starts with `.`, which no Nix store
/// path name may, so neither Nix nor nix-seed ever mistakes it for a store path.
pub const TEMP_PREFIX: &str = ".nix-seed-tmp-";

pub fn is_temp_name(name: &[u8]) -> bool {
    name.starts_with(TEMP_PREFIX.as_bytes())
}

const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Open a user-given directory path (symlinks in it are the user's choice and are followed).
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    Ok(openat(
        AT_FDCWD,
        path,
        DIR_FLAGS.difference(OFlag::O_NOFOLLOW),
        Mode::empty(),
    )?)
}

/// Open the directory `name` inside `dir`; fails with ELOOP or ENOTDIR if it is a symlink.
pub fn open_dir<N: AsRef<OsStr> + ?Sized>(dir: BorrowedFd, name: &N) -> io::Result<OwnedFd> {
    Ok(openat(dir, name.as_ref(), DIR_FLAGS, Mode::empty())?)
}

/// [`open_dir`], or `None` if `name` does not exist.
pub fn open_dir_if_exists<N: AsRef<OsStr> + ?Sized>(dir: BorrowedFd, name: &N) -> io::Result<Option<OwnedFd>> {
    match open_dir(dir, name) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// `lstat` of `name` inside `dir`; `None` if it does not exist.
pub fn lstat_at<N: AsRef<OsStr> + ?Sized>(dir: BorrowedFd, name: &N) -> io::Result<Option<FileStat>> {
    match fstatat(dir, name.as_ref(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

pub fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

pub fn kind_name(st: &FileStat) -> &'static str {
    match file_type(st) {
        SFlag::S_IFREG => "regular file",
        SFlag::S_IFDIR => "directory",
        SFlag::S_IFLNK => "symlink",
        SFlag::S_IFSOCK => "socket",
        SFlag::S_IFIFO => "FIFO",
        SFlag::S_IFCHR => "character device",
        SFlag::S_IFBLK => "block device",
        _ => "file of unknown type",
    }
}

/// One directory entry: its name (bytes, not necessarily UTF-8) and the type readdir gave.
pub struct Entry {
    pub name: OsString,
    pub dtype: Option<Type>,
}

/// All entries of an open directory except `.` and `..`, in readdir order.
pub fn list(dir: BorrowedFd) -> io::Result<Vec<Entry>> {
    // A fresh open file description of ".": a dup would share (and move) the offset of
    // `dir`, so listing one directory twice would see nothing the second time.
    let mut d = Dir::openat(dir, ".", DIR_FLAGS, Mode::empty())?;
    read_entries(&mut d)
}

/// A directory opened once (without following a symlink) and listed: the handle stays
/// open for the `*at` calls on its children. Saves the second open [`list`] would make.
pub struct Listed {
    dir: Dir,
    pub entries: Vec<Entry>,
}

impl Listed {
    pub fn open<N: AsRef<OsStr> + ?Sized>(parent: BorrowedFd, name: &N) -> io::Result<Listed> {
        let mut dir = Dir::openat(parent, name.as_ref(), DIR_FLAGS, Mode::empty())?;
        let entries = read_entries(&mut dir)?;
        Ok(Listed { dir, entries })
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsRawFd;
        // SAFETY: the descriptor belongs to `self.dir`, which outlives the borrow.
        unsafe { BorrowedFd::borrow_raw(self.dir.as_raw_fd()) }
    }
}

fn read_entries(d: &mut Dir) -> io::Result<Vec<Entry>> {
    let mut out = Vec::new();
    for e in d.iter() {
        let e = e?;
        let name = e.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push(Entry {
            name: OsStr::from_bytes(name).to_owned(),
            dtype: e.file_type(),
        });
    }
    Ok(out)
}

/// Remove `name` inside `dir` and, if it is a directory, everything below it, without
/// following symlinks (a planted symlink is unlinked, never traversed). Read-only
/// directories (0555, as nix-seed leaves them) are made writable first.
pub fn remove_tree_at<N: AsRef<OsStr> + ?Sized>(dir: BorrowedFd, name: &N) -> io::Result<()> {
    let name = name.as_ref();
    let Some(st) = lstat_at(dir, name)? else {
        return Ok(());
    };
    if file_type(&st) == SFlag::S_IFDIR {
        let sub = open_dir(dir, name)?;
        let mode = fstat(sub.as_fd())?.st_mode;
        if mode & 0o700 != 0o700 {
            fchmod(sub.as_fd(), Mode::from_bits_truncate((mode & 0o7777) | 0o700))?;
        }
        for e in list(sub.as_fd())? {
            remove_tree_at(sub.as_fd(), &e.name)?;
        }
        drop(sub);
        match unlinkat(dir, name, UnlinkatFlags::RemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    } else {
        match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

/// Display a name that may not be UTF-8.
pub fn show(name: &OsStr) -> std::borrow::Cow<'_, str> {
    name.to_string_lossy()
}
