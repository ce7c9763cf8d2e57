//! What is missing: the top-level names of `source/store` that `target/store` lacks.
//!
//! This runs at every pod start, so it reads one directory listing on each side and never
//! looks inside store paths: a store path is immutable once its name exists (nix-seed
//! only ever makes a name appear by an atomic rename of a complete copy).

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::Mutex;

use anyhow::{Context, Result};

use nix::fcntl::AtFlags;
use nix::sys::stat::{fstat, fstatat, FileStat, Mode, SFlag};

use crate::base::dirfd::{file_type, list, lstat_at, mkdir_open, open_dir, MkdirOpen};
use crate::base::error::Invalid;
use crate::base::preflight::Checked;
use crate::base::store_path::{image_id, is_store_path_name};

pub struct Plan {
    /// Store paths of the source, sorted.
    pub source: Vec<OsString>,
    /// Number of store paths in the target.
    pub target_count: usize,
    /// Source store paths the target lacks, sorted.
    pub missing: Vec<OsString>,
    /// Identifies the image by its set of store paths.
    pub image_id: String,
    pub target_has_store: bool,
    pub target_has_var: bool,
    pub source_has_var: bool,
    /// The marker a complete seed of this image leaves (store paths, then var/).
    pub image_marked: bool,
    /// The marker's mtime: when a pod start last found the image complete ("last seen").
    pub marked_at: Option<std::time::SystemTime>,
    /// A seeder was (or is) inside the Nix database's lock window: one killed there may
    /// have left `db.sqlite.lock`, which blocks every pod's Nix until the slow path
    /// recovers it.
    pub db_lock_left: bool,
}

impl Plan {
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.image_marked
    }

    pub fn compute(c: &Checked) -> Result<Plan> {
        let mut source = store_names(c.source_store.as_fd())
            .with_context(|| format!("cannot list {}", c.source_store_path.display()))?;
        source.sort();
        // Opened and listed through one open file (the store's own handle is not needed
        // here): every open of a directory on a network filesystem is a round trip, and
        // this runs at every pod start.
        let (target, target_has_store) = match crate::base::dirfd::Listed::open(c.target.as_fd(), "store") {
            Ok(l) => (
                l.entries
                    .into_iter()
                    .map(|e| e.name)
                    .filter(|n| is_store_path_name(n.as_bytes()))
                    .collect(),
                true,
            ),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => (Vec::new(), false),
            Err(e) => return Err(store_open_error(c, e)),
        };
        let target_count = target.len();
        let have: HashSet<OsString> = target.into_iter().collect();
        let missing: Vec<OsString> = source.iter().filter(|n| !have.contains(*n)).cloned().collect();
        let image_id = image_id(&source);
        let look = crate::steps::state::look(c.target.as_fd(), &image_id)?;
        let (marked_at, db_lock_left) = (look.marked_at, look.db_lock_left);
        let image_marked = marked_at.is_some();
        Ok(Plan {
            target_count,
            missing,
            image_id,
            target_has_store,
            target_has_var: has_var(c)?,
            source_has_var: lstat_at(c.source.as_fd(), "var")?.is_some(),
            image_marked,
            marked_at,
            db_lock_left,
            source,
        })
    }
}

/// What the missing store paths take: measured on the source (trusted, local) with one
/// lstat walk by `jobs` threads, which also warms the caches the copy reads next.
#[derive(Debug, Default, Clone, Copy)]
pub struct Size {
    pub files: u64,
    /// Apparent size of the distinct regular files (what is written).
    pub bytes: u64,
    /// Space the copy needs on a filesystem with `block`-sized blocks: every file, directory
    /// and symlink rounded up to whole blocks, hardlinked files once.
    pub needed: u64,
    /// Inodes the copy needs: every directory, symlink and distinct file.
    pub inodes: u64,
}

pub fn measure(c: &Checked, names: &[OsString], block: u64, jobs: usize) -> Result<Size> {
    let block = block.max(512);
    let seen = Mutex::new(HashSet::new());
    let total = Mutex::new(Size::default());
    // Walked by `jobs` threads, one store path at a time: on a cold cache the walk waits
    // on one inode read after another, and parallel walks keep the disk busy.
    crate::base::pool::run(
        names,
        jobs,
        &|| false,
        || Measure {
            block,
            seen: &seen,
            size: Size::default(),
            path: PathBuf::new(),
        },
        |w, n| {
            w.path = c.source_store_path.join(n);
            w.top(c.source_store.as_fd(), n)
        },
        |w| {
            let mut t = total.lock().unwrap();
            t.files += w.size.files;
            t.bytes += w.size.bytes;
            t.needed += w.size.needed;
            t.inodes += w.size.inodes;
        },
    )?;
    Ok(total.into_inner().unwrap())
}

/// One thread's share of [`measure`]: an lstat walk relative to directory fds that takes
/// directories and symlinks from the type `getdents` gives (neither needs a stat: a
/// directory counts one block, a symlink's target is never empty so it counts one block).
struct Measure<'a> {
    block: u64,
    seen: &'a Mutex<HashSet<(u64, u64)>>,
    size: Size,
    /// Source path of the entry being measured, for messages.
    path: PathBuf,
}

impl Measure<'_> {
    fn round(&self, n: u64) -> u64 {
        n.div_ceil(self.block) * self.block
    }

    fn top(&mut self, store: BorrowedFd, name: &OsStr) -> Result<()> {
        let st = lstat_at(store, name)
            .with_context(|| format!("cannot stat {}", self.path.display()))?
            .ok_or_else(|| anyhow::anyhow!("{}: vanished from the source while seeding", self.path.display()))?;
        self.entry(store, name, &st)
    }

    fn entry(&mut self, dir: BorrowedFd, name: &OsStr, st: &FileStat) -> Result<()> {
        match file_type(st) {
            SFlag::S_IFDIR => self.dir(dir, name),
            SFlag::S_IFREG => {
                self.size.files += 1;
                if st.st_nlink > 1 && !self.seen.lock().unwrap().insert((st.st_dev, st.st_ino)) {
                    return Ok(());
                }
                self.size.inodes += 1;
                let len = u64::try_from(st.st_size).unwrap_or(0);
                self.size.bytes += len;
                self.size.needed += self.round(len);
                Ok(())
            }
            _ => {
                self.size.inodes += 1;
                self.size.needed += self.round(u64::try_from(st.st_size).unwrap_or(0));
                Ok(())
            }
        }
    }

    fn dir(&mut self, parent: BorrowedFd, name: &OsStr) -> Result<()> {
        self.size.needed += self.block;
        self.size.inodes += 1;
        let d = crate::base::dirfd::Listed::open(parent, name)
            .with_context(|| format!("cannot walk {}", self.path.display()))?;
        for e in &d.entries {
            self.path.push(&e.name);
            let r = match e.dtype {
                Some(nix::dir::Type::Directory) => self.dir(d.fd(), &e.name),
                Some(nix::dir::Type::Symlink) => {
                    self.size.needed += self.block;
                    self.size.inodes += 1;
                    Ok(())
                }
                _ => match fstatat(d.fd(), e.name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW) {
                    Ok(st) => self.entry(d.fd(), &e.name, &st),
                    Err(err) => {
                        Err(anyhow::Error::from(err)).with_context(|| format!("cannot stat {}", self.path.display()))
                    }
                },
            };
            self.path.pop();
            r?;
        }
        Ok(())
    }
}

/// Room in the target for a copy of `size`: `None` if it fits, else why not (one line).
pub fn room(
    (target, target_path): (BorrowedFd, &std::path::Path),
    missing: usize,
    size: Size,
) -> Result<Option<String>> {
    let vfs =
        nix::sys::statvfs::fstatvfs(target).with_context(|| format!("cannot statfs {}", target_path.display()))?;
    let free = vfs.blocks_available() as u64 * vfs.fragment_size() as u64;
    // Filesystems without an inode limit (btrfs, many network ones) report 0 inodes in all.
    let inodes_free = (vfs.files() > 0).then(|| vfs.files_available() as u64);
    let what = if size.needed > free {
        format!(
            "need {} ({} bytes), {} ({} bytes) is free",
            indicatif::HumanBytes(size.needed),
            size.needed,
            indicatif::HumanBytes(free),
            free
        )
    } else if let Some(f) = inodes_free.filter(|f| size.inodes > *f) {
        format!("need {} inodes, {f} are free", size.inodes)
    } else {
        return Ok(None);
    };
    Ok(Some(format!(
        "not enough space in {}: the {missing} missing store paths {what}; free space or grow the volume \
         (or, for inodes, a filesystem with more), then run again (nothing half-copied is left)",
        target_path.display()
    )))
}

/// `target/store`, opened without following a symlink; `None` if it does not exist yet.
pub fn open_target_store(c: &Checked) -> Result<Option<OwnedFd>> {
    match open_dir(c.target.as_fd(), "store") {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(store_open_error(c, e)),
    }
}

/// Why `TARGET/store` cannot be opened, in words (not ENOENT: the callers handle that). A
/// symlink or a file planted there is bad input (exit 2): refused, never followed.
fn store_open_error(c: &Checked, e: io::Error) -> anyhow::Error {
    match e.raw_os_error() {
        // Opened with O_DIRECTORY | O_NOFOLLOW: a symlink gives ENOTDIR or ELOOP; one lstat,
        // on this error path only, says which it is.
        Some(libc::ELOOP | libc::ENOTDIR) => {
            let link = lstat_at(c.target.as_fd(), "store")
                .ok()
                .flatten()
                .is_some_and(|st| file_type(&st) == SFlag::S_IFLNK);
            planted(c, "store", if link { "a symlink" } else { "not a directory" }).into()
        }
        _ => anyhow::Error::new(e).context(format!("cannot open {}/store", c.target_path.display())),
    }
}

/// `TARGET/<name>` is `what` (a symlink, or not a directory) where nix-seed needs a directory.
fn planted(c: &Checked, name: &str, what: &str) -> Invalid {
    Invalid(format!(
        "{}/{name} is {what}: refusing to follow it; remove it (nix-seed creates the directory), or seed \
         another target",
        c.target_path.display()
    ))
}

/// Whether `TARGET/var` exists; anything there but a directory is refused like a planted store.
fn has_var(c: &Checked) -> Result<bool> {
    match lstat_at(c.target.as_fd(), "var")? {
        None => Ok(false),
        Some(st) if file_type(&st) == SFlag::S_IFDIR => Ok(true),
        Some(st) if file_type(&st) == SFlag::S_IFLNK => Err(planted(c, "var", "a symlink").into()),
        Some(_) => Err(planted(c, "var", "not a directory").into()),
    }
}

/// The store path names in the target's store, as they are now.
pub fn list_store(c: &Checked, store: BorrowedFd) -> Result<HashSet<OsString>> {
    Ok(crate::base::dirfd::list(store)
        .with_context(|| format!("cannot list {}/store", c.target_path.display()))?
        .into_iter()
        .map(|e| e.name)
        .collect())
}

/// `target/store`, created with the source store directory's mode and owner if missing.
pub fn ensure_target_store(c: &Checked) -> Result<OwnedFd> {
    if let Some(fd) = open_target_store(c)? {
        return Ok(fd);
    }
    let st = fstat(c.source_store.as_fd())?;
    match mkdir_open(c.target.as_fd(), "store", Mode::from_bits_truncate(0o700)) {
        Ok((fd, true)) => {
            let _ = nix::unistd::fchown(
                fd.as_fd(),
                Some(nix::unistd::Uid::from_raw(st.st_uid)),
                Some(nix::unistd::Gid::from_raw(st.st_gid)),
            );
            nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(st.st_mode & 0o7777))
                .with_context(|| format!("cannot set the mode of {}/store", c.target_path.display()))?;
            Ok(fd)
        }
        Ok((fd, false)) => Ok(fd),
        Err(MkdirOpen::Open { created: true, err }) => Err(err.into()),
        // Created meanwhile by another process: opened as the first attempt opens it.
        Err(MkdirOpen::Open { created: false, .. }) => {
            open_target_store(c)?.ok_or_else(|| anyhow::anyhow!("{}/store vanished", c.target_path.display()))
        }
        Err(MkdirOpen::Create(e)) => Err(e).with_context(|| format!("cannot create {}/store", c.target_path.display())),
    }
}

fn store_names(dir: BorrowedFd) -> io::Result<Vec<OsString>> {
    Ok(list(dir)?
        .into_iter()
        .map(|e| e.name)
        .filter(|n| is_store_path_name(n.as_bytes()))
        .collect())
}
