//! Copy one entry and everything below it, relative to directory fds on both sides.
//!
//! Not walkdir: walkdir stats and opens by full path, while the target must be written
//! relative to directory fds (a path could be redirected by a symlink another pod plants)
//! and directory metadata must be applied after the children, from the open fd.
//! Directories, and how their children are spread over threads, are in `dirs.rs`.

use std::cell::RefCell;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use nix::fcntl::{openat, readlinkat, OFlag};
use nix::sys::stat::{FileStat, Mode, SFlag};
use nix::unistd::symlinkat;

use super::hardlinks::{self, Claim, Location, TopEntry};
use super::metadata::{self, Created};
use super::Engine;
use crate::base::dirfd::{file_type, kind_name};
use crate::base::error::Stopped;

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

/// One entry to copy: `src_name` inside `src_dir` (with lstat `st`) to `dst_name` inside
/// `dst_dir`, which must not exist; `rel` is its path below the top entry, `seen` what
/// entries created in `dst_dir` (and below) get.
#[derive(Clone, Copy)]
pub struct Entry<'e> {
    pub src_dir: BorrowedFd<'e>,
    pub src_name: &'e OsStr,
    pub st: &'e FileStat,
    pub dst_dir: BorrowedFd<'e>,
    pub dst_name: &'e OsStr,
    pub rel: &'e Path,
    pub seen: &'e Created,
}

/// The copy of one top-level entry (a store path, or a piece of var/), shared by every task
/// that copies part of it.
pub struct Walk<'a> {
    pub eng: &'a Engine,
    pub top: Arc<TopEntry>,
    /// The target directory holding the top entry (for hardlink locations).
    pub top_parent: BorrowedFd<'a>,
    pub filter: Option<Filter<'a>>,
    pub specials: Specials,
    /// Source path of the top entry, for messages.
    pub src_path: PathBuf,
    /// Final path of the top entry in the target, for messages.
    pub dst_path: PathBuf,
    /// Spread directories over the engine's threads (only inside its thread pool).
    pub parallel: bool,
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    /// Set with the first error of any task: the others stop.
    failed: AtomicBool,
    error: Mutex<Option<anyhow::Error>>,
}

const READ_FLAGS: OFlag = OFlag::O_RDONLY.union(OFlag::O_NOFOLLOW).union(OFlag::O_CLOEXEC);
const CREATE_FLAGS: OFlag = OFlag::O_WRONLY
    .union(OFlag::O_CREAT)
    .union(OFlag::O_EXCL)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Which thread copied a file of which top entry (source path): for the test that the work
/// of one store path spreads over threads.
#[cfg(test)]
pub(super) static COPIED_BY: Mutex<Vec<(PathBuf, std::thread::ThreadId)>> = Mutex::new(Vec::new());

thread_local! {
    /// The read/write fallback's buffer, one per thread, made when first needed.
    static BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl<'a> Walk<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        eng: &'a Engine,
        top: Arc<TopEntry>,
        top_parent: BorrowedFd<'a>,
        filter: Option<Filter<'a>>,
        specials: Specials,
        src_path: PathBuf,
        dst_path: PathBuf,
    ) -> Self {
        Walk {
            eng,
            top,
            top_parent,
            filter,
            specials,
            src_path,
            dst_path,
            parallel: rayon::current_thread_index().is_some(),
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            error: Mutex::new(None),
        }
    }

    /// Asked to stop: the run (signal, lost lock, another store path failed) or this copy.
    pub fn stopping(&self) -> bool {
        self.failed.load(Ordering::Relaxed) || self.eng.should_stop()
    }

    /// Record the error of a task that runs on its own (the first real error wins over
    /// [`Stopped`]), and make the other tasks of this copy stop.
    pub fn fail(&self, e: anyhow::Error) {
        let mut slot = self.error.lock().unwrap_or_else(|p| p.into_inner());
        if slot.as_ref().is_none_or(|old| old.downcast_ref::<Stopped>().is_some()) {
            *slot = Some(e);
        }
        self.failed.store(true, Ordering::Relaxed);
    }

    /// The error recorded by [`Walk::fail`], if any.
    pub fn take_error(&self) -> Option<anyhow::Error> {
        self.error.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Copy entry `e`. On error the partial copy is left for the caller to remove (it lives
    /// under the caller's temporary top-level name).
    pub fn copy_entry(&self, e: Entry) -> Result<()> {
        if self.stopping() {
            return Err(Stopped.into());
        }
        match file_type(e.st) {
            SFlag::S_IFREG => self.file(e),
            SFlag::S_IFDIR => self.dir(e),
            SFlag::S_IFLNK => self.symlink(e),
            _ => match self.specials {
                Specials::Skip => Ok(()),
                Specials::Error => bail!(
                    "{}: is a {}; a Nix store holds only files, directories and symlinks \
                     (remove it from the image's store)",
                    self.src_path.join(e.rel).display(),
                    kind_name(e.st)
                ),
            },
        }
    }

    fn symlink(&self, e: Entry) -> Result<()> {
        // Link targets are bytes: absolute, relative or dangling, copied exactly.
        let target = readlinkat(e.src_dir, e.src_name)
            .with_context(|| format!("{}: cannot read link", self.src_path.join(e.rel).display()))?;
        symlinkat(target.as_os_str(), e.dst_dir, e.dst_name).with_context(|| self.at("create symlink", e.rel))?;
        match metadata::apply_symlink(
            e.dst_dir,
            e.dst_name,
            e.st,
            &self.eng.ownership,
            e.seen,
            self.eng.fs.symlink_metadata(),
        ) {
            // The link was just created: ENOENT means the call followed it to a missing
            // target (a filesystem that applies symlink metadata to targets). Stop trying.
            // (sshfs reports it as EPERM).
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::EPERM)) => {
                self.eng.fs.symlink_metadata_follows()
            }
            r => r.with_context(|| self.at("set metadata of", e.rel))?,
        }
        self.eng.counters.symlinks.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn file(&self, e: Entry) -> Result<()> {
        let copy = || self.copy_file(e);
        if e.st.st_nlink <= 1 {
            return copy();
        }
        // An owner copies one file with no wait and no other work in between (no
        // thread-pool call either), so a waiter in `claim` only ever waits for a copy
        // that is running on another thread.
        match self.eng.links.claim(e.st.st_dev, e.st.st_ino) {
            Claim::LinkTo(loc) => match hardlinks::link(self.top_parent, &loc, e.dst_dir, e.dst_name) {
                Ok(()) => {
                    self.eng.counters.hardlinks.fetch_add(1, Ordering::Relaxed);
                    self.count_file(0);
                    Ok(())
                }
                // The first copy was discarded, or has too many links, or the
                // filesystem has no hardlinks: copy, and let later names link to ours.
                Err(_) => {
                    copy()?;
                    self.eng.links.relocate(e.st.st_dev, e.st.st_ino, self.here(e.rel));
                    Ok(())
                }
            },
            Claim::Copy => copy(),
            Claim::Owner(owner) => {
                copy()?;
                owner.done(self.here(e.rel));
                Ok(())
            }
        }
    }

    fn here(&self, rel: &Path) -> Location {
        Location {
            top: self.top.clone(),
            rel: rel.to_path_buf(),
        }
    }

    /// Create with the final permission bits (no `fchmod` unless set-id bits or the
    /// directory changes modes), write, then owner if not already right, then times.
    fn copy_file(&self, e: Entry) -> Result<()> {
        let mut src = File::from(
            openat(e.src_dir, e.src_name, READ_FLAGS, Mode::empty())
                .with_context(|| format!("{}: cannot open", self.src_path.join(e.rel).display()))?,
        );
        // O_CREAT with a read-only mode still gives a writable descriptor of the new file.
        let mode = Mode::from_bits_truncate(metadata::creation_mode(e.st));
        let mut dst = File::from(
            openat(e.dst_dir, e.dst_name, CREATE_FLAGS, mode).with_context(|| self.at("create file", e.rel))?,
        );
        let size = u64::try_from(e.st.st_size).unwrap_or(0);
        let written = BUF
            .with_borrow_mut(|buf| copy_data(&mut src, &mut dst, size, buf))
            .with_context(|| self.at("write", e.rel))?;
        metadata::finish_file(&dst, e.st, &self.eng.ownership, e.seen)
            .with_context(|| self.at("set metadata of", e.rel))?;
        self.count_file(written);
        #[cfg(test)]
        COPIED_BY
            .lock()
            .unwrap()
            .push((self.src_path.clone(), std::thread::current().id()));
        // Not a step boundary: the tests kill a seeder in the middle of a store path here.
        crate::base::failpoint::hit("file-copied");
        Ok(())
    }

    fn count_file(&self, bytes: u64) {
        self.files.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        self.eng.counters.files.fetch_add(1, Ordering::Relaxed);
        self.eng.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// A target-side failure: names the target path and the source it is a copy of.
    pub(super) fn at(&self, what: &str, rel: &Path) -> String {
        format!(
            "cannot {what} {} (copy of {})",
            self.dst_path.join(rel).display(),
            self.src_path.join(rel).display()
        )
    }
}

/// `sendfile` (the kernel moves page-cache pages to the target file: one call and one
/// copy of the data instead of read's copy out and write's copy back), falling back to a
/// plain read/write loop where the filesystems refuse it. `copy_file_range` is no use
/// here: it fails with EXDEV between the image's filesystem and the target's.
/// Copying stops at the size the walk saw, so a small file takes one call.
fn copy_data(src: &mut File, dst: &mut File, size: u64, buf: &mut Vec<u8>) -> io::Result<u64> {
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
    if done < size && buf.is_empty() {
        buf.resize(256 * 1024, 0);
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
