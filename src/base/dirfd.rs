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

/// This run's token, part of every temporary name it creates: 12 random hex digits.
/// Not the pid alone: in a pod nix-seed is often pid 1 on every node, and two runs that
/// share a disk must never make the same temporary name.
pub fn run_token() -> &'static str {
    static TOKEN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    TOKEN.get_or_init(|| {
        let mut b = [0u8; 6];
        // SAFETY: getrandom writes at most b.len() bytes into b.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n != b.len() as isize {
            // No getrandom (very old kernel): the clock and pid, hashed.
            use sha2::Digest;
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            let h = sha2::Sha256::digest(format!("{t:?}-{}", std::process::id()));
            b.copy_from_slice(&h[..6]);
        }
        b.iter().map(|x| format!("{x:02x}")).collect()
    })
}

/// A temporary name for `base`: starts with `.` (never a store path), unique to this run
/// (token and sequence number), and recognisable as nix-seed's so a later run can remove
/// it if this run dies.
pub fn temp_name(base: &OsStr) -> OsString {
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut t = OsString::from(format!("{TEMP_PREFIX}{}-{seq:x}-", run_token()));
    // Keep the name under NAME_MAX (255) even for the longest store path names.
    let bytes = base.as_bytes();
    t.push(OsStr::from_bytes(&bytes[..bytes.len().min(200)]));
    t
}

/// Whether `name` is a temporary of this run (which leftover removal must not touch).
pub fn is_own_temp_name(name: &[u8]) -> bool {
    name.strip_prefix(TEMP_PREFIX.as_bytes())
        .and_then(|r| r.strip_prefix(run_token().as_bytes()))
        .is_some_and(|r| r.first() == Some(&b'-'))
}

/// Remove the temporaries other runs left in `dir` (names starting with [`TEMP_PREFIX`]),
/// returning how many were removed and one message per entry that could not be.
///
/// Each one is first *claimed* by renaming it to a temporary name of this run, and only
/// then removed. Where the lock works, the run that made it is dead and the claim changes
/// nothing. Where it does not (a filesystem whose clients do not share `flock`, such as
/// sshfs, or a frozen holder that resumes after a takeover), the run that made it may be
/// alive and still filling it: the claim makes that run's publish (a rename or link *by
/// the temporary name*) fail with ENOENT, so a copy being emptied can never be published
/// half-way. Of two cleaners, only the one whose rename succeeds removes the entry.
pub fn remove_leftovers(dir: BorrowedFd, dir_path: &Path) -> io::Result<(usize, Vec<String>)> {
    Ok(remove_listed_leftovers(dir, dir_path, &list(dir)?))
}

/// [`remove_leftovers`] of `dir` listed already (`entries`): one listing for a caller
/// that needs it anyway (a large store on a network disk).
pub fn remove_listed_leftovers(dir: BorrowedFd, dir_path: &Path, entries: &[Entry]) -> (usize, Vec<String>) {
    let mut removed = 0;
    let mut problems = Vec::new();
    for e in entries {
        let name = e.name.as_bytes();
        if !is_temp_name(name) || is_own_temp_name(name) {
            continue;
        }
        let claim = temp_name(OsStr::new("leftover"));
        match nix::fcntl::renameat(dir, e.name.as_os_str(), dir, claim.as_os_str()) {
            Ok(()) => {}
            // Published or claimed by someone else meanwhile.
            Err(Errno::ENOENT) => continue,
            Err(err) => {
                problems.push(format!(
                    "cannot remove leftover {}: {}",
                    dir_path.join(&e.name).display(),
                    io::Error::from(err)
                ));
                continue;
            }
        }
        match remove_tree_at(dir, &claim) {
            Ok(()) => removed += 1,
            Err(err) => problems.push(format!(
                "cannot remove leftover {} (renamed to {}): {err}; a later run retries",
                dir_path.join(&e.name).display(),
                show(&claim)
            )),
        }
    }
    (removed, problems)
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

/// The directory `name` inside `dir` as an `O_PATH` handle, for `*at` calls only (no
/// listing, no reading): on FUSE an ordinary open of a directory is an OPENDIR round trip
/// to the server, an `O_PATH` one is not. Fails with ENOTDIR if `name` is a symlink or a
/// file, and `None` if it does not exist.
pub fn open_path_if_exists<N: AsRef<OsStr> + ?Sized>(dir: BorrowedFd, name: &N) -> io::Result<Option<OwnedFd>> {
    match openat(
        dir,
        name.as_ref(),
        DIR_FLAGS.difference(OFlag::O_RDONLY).union(OFlag::O_PATH),
        Mode::empty(),
    ) {
        Ok(fd) => Ok(Some(fd)),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// [`open_dir`], or `None` if `name` does not exist.
pub fn open_dir_if_exists<N: AsRef<OsStr> + ?Sized>(dir: BorrowedFd, name: &N) -> io::Result<Option<OwnedFd>> {
    match open_dir(dir, name) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Which step of [`mkdir_open`] failed: each caller says it in its own words.
#[derive(Debug)]
pub enum MkdirOpen {
    /// Creating the directory failed (other than because the name exists).
    Create(Errno),
    /// Opening it failed: the name is a symlink or a file, or permissions; `created` says
    /// whether this call had just created it.
    Open { created: bool, err: io::Error },
}

/// The error as it is, for callers that add no words of their own.
impl From<MkdirOpen> for anyhow::Error {
    fn from(e: MkdirOpen) -> anyhow::Error {
        match e {
            MkdirOpen::Create(e) => e.into(),
            MkdirOpen::Open { err, .. } => err.into(),
        }
    }
}

/// Create the directory `name` in `dir` with `mode` if it is missing, then open it without
/// following a symlink ([`open_dir`]). Returns whether this call created it.
pub fn mkdir_open<N: AsRef<OsStr> + ?Sized>(
    dir: BorrowedFd,
    name: &N,
    mode: Mode,
) -> Result<(OwnedFd, bool), MkdirOpen> {
    let created = match nix::sys::stat::mkdirat(dir, name.as_ref(), mode) {
        Ok(()) => true,
        Err(Errno::EEXIST) => false,
        Err(e) => return Err(MkdirOpen::Create(e)),
    };
    let fd = open_dir(dir, name).map_err(|err| MkdirOpen::Open { created, err })?;
    Ok((fd, created))
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

// SAFETY: the readdir stream of `dir` is only used in `Listed::open` (iterating needs
// `&mut`); through `&Listed` only its descriptor number is lent out (`fd`), and `*at`
// calls on one descriptor from several threads are fine. The copy engine shares a listed
// source directory between the tasks that copy its entries.
unsafe impl Sync for Listed {}

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

/// Filesystems on which SQLite's WAL mode cannot work between hosts (statfs f_type).
pub fn is_network_fs(fd: BorrowedFd) -> bool {
    const NETWORK: &[i64] = &[
        0x6969,     // NFS
        0x65735546, // FUSE (GlusterFS, CephFS-fuse, JuiceFS, sshfs, MooseFS...)
        0x00c36400, // CephFS
        0xff534d42, // CIFS
        0xfe534d42, // SMB2
        0x01021997, // 9P
        0x5346414f, // AFS
        0x01161970, // GFS2
        0x7461636f, // OCFS2
        0x0bd00bd0, // Lustre
    ];
    nix::sys::statfs::fstatfs(fd).is_ok_and(|s| NETWORK.contains(&{ s.filesystem_type().0 }))
}

/// Whether `name` has a regular file in `dir`.
pub fn has_file(dir: BorrowedFd, name: &OsStr) -> bool {
    lstat_at(dir, name)
        .ok()
        .flatten()
        .is_some_and(|st| file_type(&st) == SFlag::S_IFREG)
}

/// Display a name that may not be UTF-8.
pub fn show(name: &OsStr) -> std::borrow::Cow<'_, str> {
    name.to_string_lossy()
}

/// Why a file nix-seed must open in the target (a lock file) cannot be opened, and what
/// to do, in words: permissions are not "not a regular file".
pub fn open_problem(e: Errno, path: &Path) -> String {
    match e {
        Errno::EACCES | Errno::EPERM => format!(
            "cannot open {}: permission denied for uid {}: run nix-seed as the owner of the disk's files \
             (or root), or make {} writable for this uid",
            path.display(),
            nix::unistd::geteuid(),
            path.display()
        ),
        Errno::ELOOP => format!(
            "{} is a symlink: nix-seed never follows symlinks in the target; remove it",
            path.display()
        ),
        Errno::EISDIR | Errno::ENXIO | Errno::ETXTBSY | Errno::EWOULDBLOCK => {
            format!("{} is not a regular file: remove it", path.display())
        }
        Errno::EROFS => format!(
            "{} is on a read-only filesystem: mount the volume read-write",
            path.display()
        ),
        e => format!("cannot open {}: {}", path.display(), io::Error::from(e)),
    }
}

/// A temporary entry nix-seed made in `dir` (a copy being built, a database being
/// written): removed, with everything below it, when dropped, unless [`TempEntry::keep`]
/// says it was published or is someone else's now. Every early return cleans up.
pub struct TempEntry<'a> {
    dir: BorrowedFd<'a>,
    name: OsString,
    armed: bool,
}

impl<'a> TempEntry<'a> {
    pub fn new(dir: BorrowedFd<'a>, name: &OsStr) -> TempEntry<'a> {
        TempEntry {
            dir,
            name: name.to_os_string(),
            armed: true,
        }
    }

    /// The entry is no longer ours to remove (it was renamed into place).
    pub fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for TempEntry<'_> {
    fn drop(&mut self) {
        if self.armed {
            // Best effort: a later run (under the lock) removes any leftover.
            let _ = remove_tree_at(self.dir, &self.name);
        }
    }
}
