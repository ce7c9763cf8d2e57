//! Validate source and target before touching anything. Every refusal is one line that
//! names the path and says what to do; it maps to exit code 2 and nothing is written.

use crate::base::error::Invalid;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use nix::sys::statvfs::{fstatvfs, FsFlags};
use nix::unistd::{access, AccessFlags};

use crate::base::dirfd::{open_dir, open_root};

fn invalid<T>(msg: String) -> Result<T, Invalid> {
    Err(Invalid(msg))
}

/// Source and target, opened once; every later operation is relative to these fds.
pub struct Checked {
    pub source_path: PathBuf,
    pub source: OwnedFd,
    pub source_store_path: PathBuf,
    pub source_store: OwnedFd,
    pub target_path: PathBuf,
    pub target: OwnedFd,
    /// The target's entries, as messages show them.
    pub layout: crate::base::layout::Layout,
    /// What names the source in the image's record: the image's reference and digest when
    /// it was read from an image (the source directory is then a stage), else the source.
    pub source_label: String,
}

/// The target alone, checked as [`check`] checks it: for a source that is an image (an
/// archive, an OCI layout), whose stage is made later, under the seed lock.
pub fn check_target(target: &Path, require_mountpoint: bool, need_write: bool) -> Result<(PathBuf, OwnedFd), Invalid> {
    let tgt = canonical_dir(
        target,
        "target",
        "mount the shared volume there (the directory pods mount at /nix) and pass it as --target",
    )?;
    let target_fd = open_target(&tgt, require_mountpoint, need_write)?;
    Ok((tgt, target_fd))
}

/// The canonical target `tgt`, a mount point if required, opened, writable if required.
fn open_target(tgt: &Path, require_mountpoint: bool, need_write: bool) -> Result<OwnedFd, Invalid> {
    // First: a forgotten volume on a read-only root filesystem (readOnlyRootFilesystem)
    // is a missing mount, not a read-only one.
    if require_mountpoint && !is_mount_point(tgt) {
        return invalid(format!(
            "target {} is not a mount point: in a pod this means the volume is not mounted and \
             the copy would vanish with the pod; mount it, or pass --allow-non-mountpoint",
            tgt.display()
        ));
    }
    let target_fd = open_root(tgt).map_err(|e| Invalid(format!("cannot open target {}: {e}", tgt.display())))?;
    if need_write {
        writable(tgt, target_fd.as_fd())?;
    }
    Ok(target_fd)
}

impl Checked {
    /// A source that is a stage the image engine fills (`stage_path`, holding `store/`),
    /// in the target checked by [`check_target`].
    pub fn staged(
        stage_path: PathBuf,
        stage: OwnedFd,
        (target_path, target): (PathBuf, OwnedFd),
        label: String,
    ) -> std::io::Result<Checked> {
        let store = open_dir(stage.as_fd(), "store")?;
        Ok(Checked {
            source_store_path: stage_path.join(crate::base::layout::STORE),
            source_path: stage_path,
            source: stage,
            source_store: store,
            layout: crate::base::layout::Layout::new(&target_path),
            target_path,
            target,
            source_label: label,
        })
    }
}

pub fn check(source: &Path, target: &Path, require_mountpoint: bool, need_write: bool) -> Result<Checked, Invalid> {
    let src = canonical_dir(
        source,
        "source",
        "pass --source with the image's Nix root (default /nix)",
    )?;
    let src_store_path = src.join(crate::base::layout::STORE);
    if !src_store_path.is_dir() {
        return invalid(format!(
            "source {} has no store/ directory: --source must be a Nix root, the directory \
             holding store/ and var/ (e.g. /nix)",
            src.display()
        ));
    }
    let tgt = canonical_dir(
        target,
        "target",
        "mount the shared volume there (the directory pods mount at /nix) and pass it as --target",
    )?;

    // Same directory or nested either way, by path and by identity (a bind mount can show
    // one directory under two paths).
    if src == tgt || same_dir(&src, &tgt) {
        return invalid(format!(
            "target {} is the source itself: pass the network disk as --target",
            tgt.display()
        ));
    }
    if tgt.starts_with(&src) || is_inside(&tgt, &src) {
        return invalid(format!(
            "target {} is inside the source {}: pass a directory outside the image's /nix",
            tgt.display(),
            src.display()
        ));
    }
    if src.starts_with(&tgt) || is_inside(&src, &tgt) {
        return invalid(format!(
            "source {} is inside the target {}: the target must be a separate volume",
            src.display(),
            tgt.display()
        ));
    }

    let target_fd = open_target(&tgt, require_mountpoint, need_write)?;

    let source_fd = open_root(&src).map_err(|e| Invalid(format!("cannot open source {}: {e}", src.display())))?;
    let store_fd = open_dir(source_fd.as_fd(), "store")
        .or_else(|_| open_root(&src_store_path))
        .map_err(|e| Invalid(format!("cannot open {}: {e}", src_store_path.display())))?;
    Ok(Checked {
        source_label: src.to_string_lossy().into_owned(),
        source_path: src,
        source: source_fd,
        source_store_path: src_store_path,
        source_store: store_fd,
        layout: crate::base::layout::Layout::new(&tgt),
        target_path: tgt,
        target: target_fd,
    })
}

/// Why the target cannot be written (a read-only mount, no write permission): the real
/// seed refuses it, a dry run says it would.
pub fn writable(tgt: &Path, target: BorrowedFd) -> Result<(), Invalid> {
    let vfs = fstatvfs(target).map_err(|e| Invalid(format!("cannot statfs target {}: {e}", tgt.display())))?;
    if vfs.flags().contains(FsFlags::ST_RDONLY) {
        return invalid(format!(
            "target {} is on a read-only filesystem: mount the volume read-write",
            tgt.display()
        ));
    }
    if access(tgt, AccessFlags::W_OK | AccessFlags::X_OK).is_err() {
        return invalid(format!(
            "target {} is not writable by uid {}: run as its owner or root, or make it writable",
            tgt.display(),
            nix::unistd::geteuid()
        ));
    }
    Ok(())
}

fn canonical_dir(p: &Path, role: &str, fix: &str) -> Result<PathBuf, Invalid> {
    match std::fs::metadata(p) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return invalid(format!("{role} {} does not exist: {fix}", p.display()))
        }
        Err(e) => return invalid(format!("cannot access {role} {}: {e}", p.display())),
        Ok(m) if !m.is_dir() => return invalid(format!("{role} {} is not a directory: {fix}", p.display())),
        Ok(_) => {}
    }
    p.canonicalize()
        .map_err(|e| Invalid(format!("cannot resolve {role} {}: {e}", p.display())))
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Whether `inner` has `outer` among its ancestors, comparing device and inode numbers.
fn is_inside(inner: &Path, outer: &Path) -> bool {
    inner.ancestors().skip(1).any(|a| same_dir(a, outer))
}

/// A mount point: listed in /proc/self/mountinfo (also catches bind mounts of a directory
/// of the same filesystem), or on another device than its parent.
pub fn is_mount_point(p: &Path) -> bool {
    if p == Path::new("/") {
        return true;
    }
    if let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") {
        let want = p.as_os_str().as_encoded_bytes();
        if info
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .any(|m| unescape_mountinfo(m) == want)
        {
            return true;
        }
    }
    match (std::fs::metadata(p), p.parent().map(std::fs::metadata)) {
        (Ok(m), Some(Ok(pm))) => m.dev() != pm.dev(),
        _ => false,
    }
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo` octal.
fn unescape_mountinfo(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo("/mnt/my\\040disk"), b"/mnt/my disk");
        assert_eq!(unescape_mountinfo("/a\\134b"), b"/a\\b");
        assert_eq!(unescape_mountinfo("/plain"), b"/plain");
        assert_eq!(unescape_mountinfo("/trail\\04"), b"/trail\\04");
    }

    #[test]
    fn root_is_a_mount_point() {
        assert!(is_mount_point(Path::new("/")));
    }
}
