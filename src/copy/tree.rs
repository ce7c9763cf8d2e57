//! Copy one entry and everything below it, relative to directory fds on both sides.
//!
//! Not walkdir: walkdir stats and opens by full path, while the target must be written
//! relative to directory fds (a path could be redirected by a symlink another pod plants)
//! and directory metadata must be applied after the children, from the open fd.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use nix::fcntl::{openat, readlinkat, OFlag};
use nix::sys::stat::mkdirat;
use nix::sys::stat::{fstatat, FileStat, Mode, SFlag};
use nix::unistd::symlinkat;

use super::hardlinks::{self, Claim, Location, TopEntry};
use super::metadata;
use super::{Engine, Stopped};
use crate::dirfd::{file_type, kind_name, open_dir};

/// What to do with an entry: copy it, or leave it out (runtime files in var/).
pub type Filter<'a> = &'a (dyn Fn(&Path, &FileStat) -> bool + Sync);

/// What a special file (socket, FIFO, device) means here.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Specials {
    /// Inside the store: Nix never creates one, so it is an error naming the path.
    Error,
    /// Inside var/: runtime files (the daemon socket), never copied.
    Skip,
}

pub struct Walk<'a> {
    pub eng: &'a Engine,
    pub top: &'a Arc<TopEntry>,
    /// The target directory holding the top entry (for hardlink locations).
    pub top_parent: BorrowedFd<'a>,
    pub filter: Option<Filter<'a>>,
    pub specials: Specials,
    /// Source path of the entry being copied, for messages.
    pub src_path: PathBuf,
    /// Path below the top entry (empty for the top entry itself).
    pub rel: PathBuf,
    /// Final path of the top entry in the target, for messages.
    pub dst_path: PathBuf,
    pub buf: &'a mut Vec<u8>,
    pub files: u64,
    pub bytes: u64,
}

const READ_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);
const CREATE_FLAGS: OFlag = OFlag::O_WRONLY
    .union(OFlag::O_CREAT)
    .union(OFlag::O_EXCL)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

impl Walk<'_> {
    /// Copy `src_name` (inside `src_dir`, with lstat `st`) to `dst_name` inside `dst_dir`,
    /// which must not exist. On error the partial copy is left for the caller to remove
    /// (it lives under the caller's temporary top-level name).
    pub fn copy_entry(
        &mut self,
        src_dir: BorrowedFd,
        src_name: &OsStr,
        st: &FileStat,
        dst_dir: BorrowedFd,
        dst_name: &OsStr,
    ) -> Result<()> {
        if self.eng.should_stop() {
            return Err(Stopped.into());
        }
        match file_type(st) {
            SFlag::S_IFREG => self.file(src_dir, src_name, st, dst_dir, dst_name),
            SFlag::S_IFDIR => self.dir(src_dir, src_name, st, dst_dir, dst_name),
            SFlag::S_IFLNK => self.symlink(src_dir, src_name, st, dst_dir, dst_name),
            _ => match self.specials {
                Specials::Skip => Ok(()),
                Specials::Error => bail!(
                    "{}: is a {}; a Nix store holds only files, directories and symlinks \
                     (remove it from the image's store)",
                    self.src_path.display(),
                    kind_name(st)
                ),
            },
        }
    }

    fn dir(
        &mut self,
        src_dir: BorrowedFd,
        src_name: &OsStr,
        st: &FileStat,
        dst_dir: BorrowedFd,
        dst_name: &OsStr,
    ) -> Result<()> {
        mkdirat(dst_dir, dst_name, Mode::from_bits_truncate(0o700)).with_context(|| self.at("create directory"))?;
        let dst = File::from(open_dir(dst_dir, dst_name).with_context(|| self.at("open new directory"))?);
        let mut src = crate::dirfd::Listed::open(src_dir, src_name)
            .with_context(|| format!("{}: cannot list", self.src_path.display()))?;
        let entries = std::mem::take(&mut src.entries);
        for e in entries {
            let cst = fstatat(src.fd(), e.name.as_os_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                .with_context(|| format!("{}: cannot stat", self.src_path.join(&e.name).display()))?;
            self.src_path.push(&e.name);
            self.rel.push(&e.name);
            let keep = self.filter.is_none_or(|f| f(&self.rel, &cst));
            let r = if keep {
                self.copy_entry(src.fd(), &e.name, &cst, dst.as_fd(), &e.name)
            } else {
                Ok(())
            };
            self.src_path.pop();
            self.rel.pop();
            r?;
        }
        metadata::apply_fd(&dst, st, &self.eng.ownership).with_context(|| self.at("set metadata of"))?;
        self.eng.counters.dirs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn symlink(
        &mut self,
        src_dir: BorrowedFd,
        src_name: &OsStr,
        st: &FileStat,
        dst_dir: BorrowedFd,
        dst_name: &OsStr,
    ) -> Result<()> {
        // Link targets are bytes: absolute, relative or dangling, copied exactly.
        let target =
            readlinkat(src_dir, src_name).with_context(|| format!("{}: cannot read link", self.src_path.display()))?;
        symlinkat(target.as_os_str(), dst_dir, dst_name).with_context(|| self.at("create symlink"))?;
        match metadata::apply_symlink(
            dst_dir,
            dst_name,
            st,
            &self.eng.ownership,
            self.eng.fs.symlink_metadata(),
        ) {
            // The link was just created: ENOENT means the call followed it to a missing
            // target (a filesystem that applies symlink metadata to targets). Stop trying.
            // (sshfs reports it as EPERM).
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EPERM)) => {
                self.eng.fs.symlink_metadata_follows()
            }
            r => r.with_context(|| self.at("set metadata of"))?,
        }
        self.eng.counters.symlinks.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn file(
        &mut self,
        src_dir: BorrowedFd,
        src_name: &OsStr,
        st: &FileStat,
        dst_dir: BorrowedFd,
        dst_name: &OsStr,
    ) -> Result<()> {
        if st.st_nlink > 1 {
            match self.eng.links.claim(st.st_dev, st.st_ino) {
                Claim::LinkTo(loc) => {
                    match hardlinks::link(self.top_parent, &loc, dst_dir, dst_name) {
                        Ok(()) => {
                            self.eng.counters.hardlinks.fetch_add(1, Ordering::Relaxed);
                            self.count_file(0);
                            return Ok(());
                        }
                        // The first copy was discarded, or has too many links, or the
                        // filesystem has no hardlinks: copy, and let later names link to ours.
                        Err(_) => {
                            self.copy_file(src_dir, src_name, st, dst_dir, dst_name)?;
                            self.eng.links.relocate(st.st_dev, st.st_ino, self.here());
                            return Ok(());
                        }
                    }
                }
                Claim::Copy => return self.copy_file(src_dir, src_name, st, dst_dir, dst_name),
                Claim::Owner(owner) => {
                    self.copy_file(src_dir, src_name, st, dst_dir, dst_name)?;
                    owner.done(self.here());
                    return Ok(());
                }
            }
        }
        self.copy_file(src_dir, src_name, st, dst_dir, dst_name)
    }

    fn here(&self) -> Location {
        Location {
            top: self.top.clone(),
            rel: self.rel.clone(),
        }
    }

    fn copy_file(
        &mut self,
        src_dir: BorrowedFd,
        src_name: &OsStr,
        st: &FileStat,
        dst_dir: BorrowedFd,
        dst_name: &OsStr,
    ) -> Result<()> {
        let mut src = File::from(
            openat(src_dir, src_name, READ_FLAGS, Mode::empty())
                .with_context(|| format!("{}: cannot open", self.src_path.display()))?,
        );
        let mut dst = File::from(
            openat(dst_dir, dst_name, CREATE_FLAGS, Mode::from_bits_truncate(0o600))
                .with_context(|| self.at("create file"))?,
        );
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let written = copy_data(&mut src, &mut dst, size, self.buf).with_context(|| self.at("write"))?;
        metadata::apply_fd(&dst, st, &self.eng.ownership).with_context(|| self.at("set metadata of"))?;
        self.count_file(written);
        Ok(())
    }

    fn count_file(&mut self, bytes: u64) {
        self.files += 1;
        self.bytes += bytes;
        self.eng.counters.files.fetch_add(1, Ordering::Relaxed);
        self.eng.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A target-side failure: names the target path and the source it is a copy of.
    fn at(&self, what: &str) -> String {
        format!(
            "cannot {what} {} (copy of {})",
            self.dst_path.join(&self.rel).display(),
            self.src_path.display()
        )
    }
}

/// `sendfile` (the kernel moves page-cache pages to the target file: one call and one
/// copy of the data instead of read's copy out and write's copy back), falling back to a
/// plain read/write loop where the filesystems refuse it. `copy_file_range` is no use
/// here: it fails with EXDEV between the image's filesystem and the target's.
/// Copying stops at the size the walk saw, so a small file takes one call.
fn copy_data(src: &mut File, dst: &mut File, size: u64, buf: &mut [u8]) -> io::Result<u64> {
    use std::os::fd::AsRawFd;
    let mut done = 0u64;
    while done < size {
        let want = usize::try_from(size - done).unwrap_or(usize::MAX).min(1 << 30);
        // SAFETY: a plain syscall on two open descriptors, using and moving their offsets.
        let n = unsafe { libc::sendfile(dst.as_raw_fd(), src.as_raw_fd(), std::ptr::null_mut(), want) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                // Not supported by one of the filesystems: both offsets are where the
                // copy stands, so the loop below goes on from there.
                Some(libc::EINVAL) | Some(libc::ENOSYS) | Some(libc::EOPNOTSUPP) => break,
                _ => return Err(e),
            }
        }
        if n == 0 {
            return Ok(done);
        }
        done += n as u64;
    }
    while done < size {
        let want = usize::try_from(size - done).map_or(buf.len(), |n| n.min(buf.len()));
        let n = match src.read(&mut buf[..want]) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        dst.write_all(&buf[..n])?;
        done += n as u64;
    }
    Ok(done)
}
