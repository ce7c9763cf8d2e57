//! Exact metadata: numeric owner, mode bits, and times, set on open file descriptors.
//!
//! Order matters: ownership first (chown clears set-id bits), then mode, then times last
//! (any later write or child creation would move mtime). Directories get theirs after
//! their children are written, so a read-only (0555) directory is only made read-only
//! once nothing more needs to be created inside it.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use filetime::FileTime;
use nix::errno::Errno;
use nix::fcntl::AtFlags;
use nix::sys::stat::{fchmod, utimensat, FileStat, Mode, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, Gid, Uid};

/// Whether `chown` works on the target. The first EPERM (not root, NFS root_squash, a
/// FUSE mount without `allow_other`/`default_permissions`...) flips it off for the rest of
/// the run: files keep the owner the target gives them, everything else is preserved.
pub struct Ownership {
    enabled: AtomicBool,
    denied: AtomicBool,
}

impl Default for Ownership {
    fn default() -> Self {
        Self::new()
    }
}

impl Ownership {
    pub fn new() -> Self {
        Ownership {
            enabled: AtomicBool::new(true),
            denied: AtomicBool::new(false),
        }
    }

    /// True once (and only once) when chown was first refused: the caller warns then.
    pub fn take_denied_notice(&self) -> bool {
        self.denied.swap(false, Ordering::Relaxed)
    }

    pub fn preserved(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    fn result(&self, r: nix::Result<()>) -> io::Result<()> {
        match r {
            Ok(()) => Ok(()),
            Err(Errno::EPERM) | Err(Errno::EINVAL) => {
                // EINVAL: the uid/gid cannot be mapped (user namespace, idmapped mount).
                if self.enabled.swap(false, Ordering::Relaxed) {
                    self.denied.store(true, Ordering::Relaxed);
                }
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn ids(st: &FileStat) -> (Option<Uid>, Option<Gid>) {
        (Some(Uid::from_raw(st.st_uid)), Some(Gid::from_raw(st.st_gid)))
    }

    pub fn set_fd(&self, fd: BorrowedFd, st: &FileStat) -> io::Result<()> {
        if !self.preserved() {
            return Ok(());
        }
        let (u, g) = Self::ids(st);
        self.result(fchown(fd, u, g))
    }

    pub fn set_symlink(&self, dir: BorrowedFd, name: &std::ffi::OsStr, st: &FileStat) -> io::Result<()> {
        if !self.preserved() {
            return Ok(());
        }
        let (u, g) = Self::ids(st);
        self.result(fchownat(dir, name, u, g, AtFlags::AT_SYMLINK_NOFOLLOW))
    }
}

fn times(st: &FileStat) -> (FileTime, FileTime) {
    (
        FileTime::from_unix_time(st.st_atime, st.st_atime_nsec as u32),
        FileTime::from_unix_time(st.st_mtime, st.st_mtime_nsec as u32),
    )
}

/// What an entry created in a directory gets before nix-seed sets anything: its owner,
/// and whether the permission bits asked for at creation survive (umask, default ACLs).
/// The owner depends on what cannot be seen cheaply (the directory's setgid bit, `grpid`
/// mounts, a network filesystem server's own rules), so it is learned from the first entry
/// of each kind created (one `fstat`, which FUSE usually answers from the attribute cache
/// its create reply filled) and trusted for the others created in the same place (see
/// `Engine::build_top_in`). An owner or mode already right is then not set again: one or
/// two round trips less per file.
#[derive(Default)]
pub struct Created {
    kinds: [Mutex<Learned>; 3],
}

#[derive(Default, Clone, Copy)]
struct Learned {
    owner: Option<(u32, u32)>,
    /// Permission bits seen kept when asked for at creation.
    kept: u32,
    /// A creation mode was seen changed: always set the mode here.
    unreliable: bool,
}

/// The kinds of entries [`Created`] learns separately.
#[derive(Clone, Copy)]
pub enum NewKind {
    File = 0,
    Dir = 1,
    Symlink = 2,
}

impl Created {
    /// Whether the entry just created (of `kind`, asked for with permission bits
    /// `requested`) still needs its owner and its mode set to match `st`. `stat` reads the
    /// new entry back, only when what this directory gives is not known yet.
    pub fn needs(
        &self,
        kind: NewKind,
        st: &FileStat,
        requested: Option<u32>,
        owner_matters: bool,
        stat: impl FnOnce() -> nix::Result<FileStat>,
    ) -> io::Result<(bool, bool)> {
        let slot = &self.kinds[kind as usize];
        let l = *slot.lock().unwrap_or_else(|p| p.into_inner());
        let mode_known = requested.is_none_or(|r| l.unreliable || r & !l.kept == 0);
        if mode_known && (!owner_matters || l.owner.is_some()) {
            let wrong_owner = owner_matters && l.owner != Some((st.st_uid, st.st_gid));
            return Ok((wrong_owner, requested.is_some() && l.unreliable));
        }
        let now = stat()?;
        let mode_ok = requested.is_none_or(|r| now.st_mode & 0o7777 == r);
        let mut l = slot.lock().unwrap_or_else(|p| p.into_inner());
        l.owner = Some((now.st_uid, now.st_gid));
        match requested {
            Some(r) if mode_ok => l.kept |= r,
            Some(_) => l.unreliable = true,
            None => {}
        }
        Ok((
            owner_matters && (now.st_uid, now.st_gid) != (st.st_uid, st.st_gid),
            !mode_ok,
        ))
    }
}

/// The permission bits a regular file is created with: the source's, except set-id and
/// sticky bits, which are set by `fchmod` after `fchown` (which clears them).
pub fn creation_mode(st: &FileStat) -> u32 {
    st.st_mode & 0o777
}

/// Owner, mode and times of a regular file nix-seed just created with
/// [`creation_mode`] and wrote, on its open descriptor, skipping what `seen` says the
/// creation already got right. Times last: the data write moved them.
pub fn finish_file(file: &File, st: &FileStat, own: &Ownership, seen: &Created) -> io::Result<()> {
    let want = st.st_mode & 0o7777;
    let (owner, mode) = seen.needs(NewKind::File, st, Some(creation_mode(st)), own.preserved(), || {
        nix::sys::stat::fstat(file.as_fd())
    })?;
    if owner {
        own.set_fd(file.as_fd(), st)?;
    }
    if mode || want != creation_mode(st) {
        fchmod(file.as_fd(), Mode::from_bits_truncate(want))?;
    }
    set_times(file, st)
}

/// Owner (unless `owner` says it is already right), mode and times of a directory, after
/// its children are written.
pub fn finish_dir(dir: &File, st: &FileStat, own: &Ownership, owner: bool) -> io::Result<()> {
    if owner {
        own.set_fd(dir.as_fd(), st)?;
    }
    fchmod(dir.as_fd(), Mode::from_bits_truncate(st.st_mode & 0o7777))?;
    set_times(dir, st)
}

fn set_times(file: &File, st: &FileStat) -> io::Result<()> {
    let (atime, mtime) = times(st);
    filetime::set_file_handle_times(file, Some(atime), Some(mtime))
}

/// Owner (unless `seen` says the creation got it right) and times of a symlink (its mode
/// is always 0777 on Linux). filetime has no
/// directory-fd-relative call, so this uses utimensat(AT_SYMLINK_NOFOLLOW) directly.
/// Skipped where the filesystem would apply them to the link's target (see
/// [`symlink_metadata_follows`]).
pub fn apply_symlink(
    dir: BorrowedFd,
    name: &std::ffi::OsStr,
    st: &FileStat,
    own: &Ownership,
    seen: &Created,
    enabled: bool,
) -> io::Result<()> {
    if !enabled {
        return Ok(());
    }
    let (owner, _) = seen.needs(NewKind::Symlink, st, None, own.preserved(), || {
        nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW)
    })?;
    if owner {
        own.set_symlink(dir, name, st)?;
    }
    let atime = TimeSpec::new(st.st_atime, st.st_atime_nsec);
    let mtime = TimeSpec::new(st.st_mtime, st.st_mtime_nsec);
    utimensat(dir, name, &atime, &mtime, UtimensatFlags::NoFollowSymlink)?;
    Ok(())
}

/// Entries a probe makes in the target: named with this run's temporary names (so a run
/// killed mid-probe leaves only what leftover removal removes), unlinked when dropped.
struct ProbeEntries<'a> {
    dir: BorrowedFd<'a>,
    names: Vec<String>,
}

impl<'a> ProbeEntries<'a> {
    fn new(dir: BorrowedFd<'a>) -> Self {
        ProbeEntries { dir, names: Vec::new() }
    }

    fn name(&mut self, what: &str) -> String {
        let n = crate::base::dirfd::temp_name(std::ffi::OsStr::new(what))
            .into_string()
            .expect("an ASCII name");
        self.names.push(n.clone());
        n
    }
}

impl Drop for ProbeEntries<'_> {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = nix::unistd::unlinkat(self.dir, n.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
        }
    }
}

/// Whether symlinks created in `dir` read back unchanged, for the targets a Nix store is
/// full of: absolute (`/nix/store/...`) and with `..`. sshfs by default (`contain_symlinks`,
/// Debian's fix for CVE-2026-47187) creates such links but then refuses to read them
/// (readlink: EPERM), so every pod would see a broken store. Returns the first target
/// that failed and why, or `None` if all read back.
pub fn symlinks_read_back(dir: BorrowedFd) -> io::Result<Option<(String, String)>> {
    use nix::fcntl::readlinkat;
    use nix::unistd::symlinkat;
    let mut probe = ProbeEntries::new(dir);
    for target in ["/nix/store/nix-seed-probe", "../nix-seed-probe"] {
        let link = probe.name("probe-readback");
        symlinkat(target, dir, link.as_str())?;
        let why = match readlinkat(dir, link.as_str()) {
            Ok(t) if t == std::ffi::OsStr::new(target) => continue,
            Ok(t) => format!("reads back as {t:?}"),
            Err(e) => format!("cannot be read back (readlink: {})", io::Error::from(e)),
        };
        return Ok(Some((target.to_string(), why)));
    }
    Ok(None)
}

/// Whether a hardlink made in `dir` shows as one (link count 2 on both names). sshfs makes
/// the link on the server (`hardlink@openssh.com`) but reports every name with link count
/// 1 and its own inode number, so clients cannot tell linked files from copies. `None`:
/// the filesystem refuses hardlinks (the copy then keeps linked files as separate copies).
pub fn hardlinks_visible(dir: BorrowedFd) -> io::Result<Option<bool>> {
    use nix::fcntl::{openat, OFlag};
    use nix::sys::stat::{fstatat, Mode};
    use nix::unistd::linkat;
    let mut probe = ProbeEntries::new(dir);
    let (a, b) = (probe.name("probe-hardlink-a"), probe.name("probe-hardlink-b"));
    drop(openat(
        dir,
        a.as_str(),
        OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    )?);
    match linkat(dir, a.as_str(), dir, b.as_str(), AtFlags::empty()) {
        Ok(()) => Ok(Some(
            fstatat(dir, b.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)?.st_nlink >= 2,
        )),
        Err(Errno::EPERM) | Err(Errno::ENOTSUP) | Err(Errno::EMLINK) | Err(Errno::ENOSYS) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Whether `AT_SYMLINK_NOFOLLOW` metadata calls reach the link's *target* on the
/// filesystem of `dir` (sshfs: SFTP SETSTAT follows links on the server, so a dangling link
/// fails with ENOENT and a link to an existing file changes that file). Probed once with a
/// dangling symlink: setting its times can only fail with ENOENT if the call followed it
/// (no attribute cache can hide that).
pub fn symlink_metadata_follows(dir: BorrowedFd) -> io::Result<bool> {
    use nix::unistd::symlinkat;
    let mut probe = ProbeEntries::new(dir);
    let (link, missing) = (probe.name("probe-link"), probe.name("probe-no-such-file"));
    symlinkat(missing.as_str(), dir, link.as_str())?;
    let t = TimeSpec::new(1, 0);
    match utimensat(dir, link.as_str(), &t, &t, UtimensatFlags::NoFollowSymlink) {
        Ok(()) => Ok(false),
        // ENOENT: it went to the missing target; sshfs reports SFTP's generic failure as
        // EPERM. Setting the times of one's own new symlink cannot fail otherwise.
        Err(Errno::ENOENT) | Err(Errno::EPERM) | Err(Errno::EOPNOTSUPP) => Ok(true),
        Err(e) => Err(e.into()),
    }
}
