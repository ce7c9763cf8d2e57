//! What is missing: the top-level names of `source/store` that `target/store` lacks.
//!
//! This runs at every pod start, so it reads one directory listing on each side and never
//! looks inside store paths: a store path is immutable once its name exists (nix-seed
//! only ever makes a name appear by an atomic rename of a complete copy).

use std::collections::HashSet;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::dirfd::{list, lstat_at, open_dir};
use crate::preflight::Checked;

/// Our own directory at the top of the target: the lock and the per-image markers.
pub const STATE_DIR: &str = ".nix-seed";
pub const IMAGES_DIR: &str = "images";

/// A store path name. Names starting with `.` are not (Nix forbids them): `.links` (Nix's
/// optimiser index, rebuilt by Nix as needed) and nix-seed's temporary entries.
pub fn is_store_path_name(name: &[u8]) -> bool {
    !name.is_empty() && name[0] != b'.'
}

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
}

impl Plan {
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty() && self.image_marked
    }

    pub fn compute(c: &Checked) -> Result<Plan> {
        let mut source = store_names(c.source_store.as_fd())
            .with_context(|| format!("cannot list {}", c.source_store_path.display()))?;
        source.sort();
        let target_store = open_target_store(c)?;
        let (target, target_has_store) = match &target_store {
            Some(fd) => (
                store_names(fd.as_fd()).with_context(|| format!("cannot list {}/store", c.target_path.display()))?,
                true,
            ),
            None => (Vec::new(), false),
        };
        let target_count = target.len();
        let have: HashSet<OsString> = target.into_iter().collect();
        let missing: Vec<OsString> = source.iter().filter(|n| !have.contains(*n)).cloned().collect();
        let image_id = image_id(&source);
        let image_marked = marker_exists(c.target.as_fd(), &image_id)?;
        Ok(Plan {
            target_count,
            missing,
            image_id,
            target_has_store,
            target_has_var: lstat_at(c.target.as_fd(), "var")?.is_some(),
            source_has_var: lstat_at(c.source.as_fd(), "var")?.is_some(),
            image_marked,
            source,
        })
    }
}

/// What the missing store paths take: measured on the source (trusted, local) with one
/// lstat walk, which also warms the caches the copy reads next.
#[derive(Debug, Default, Clone, Copy)]
pub struct Size {
    pub files: u64,
    /// Apparent size of the distinct regular files (what is written).
    pub bytes: u64,
    /// Space the copy needs on a filesystem with `block`-sized blocks: every file, directory
    /// and symlink rounded up to whole blocks, hardlinked files once.
    pub needed: u64,
}

pub fn measure(c: &Checked, names: &[OsString], block: u64) -> Result<Size> {
    let block = block.max(512);
    let round = |n: u64| n.div_ceil(block) * block;
    let mut seen = HashSet::new();
    let mut size = Size::default();
    for n in names {
        for e in walkdir::WalkDir::new(c.source_store_path.join(n))
            .follow_links(false)
            .follow_root_links(false)
        {
            let e = e.with_context(|| format!("cannot walk {}", c.source_store_path.join(n).display()))?;
            let m = e
                .metadata()
                .with_context(|| format!("cannot stat {}", e.path().display()))?;
            use std::os::unix::fs::MetadataExt;
            if m.is_file() {
                size.files += 1;
                if m.nlink() > 1 && !seen.insert((m.dev(), m.ino())) {
                    continue;
                }
                size.bytes += m.len();
                size.needed += round(m.len());
            } else {
                size.needed += if m.is_dir() { block } else { round(m.len()) };
            }
        }
    }
    Ok(size)
}

/// `target/store`, opened without following a symlink; `None` if it does not exist yet.
pub fn open_target_store(c: &Checked) -> Result<Option<OwnedFd>> {
    match open_dir(c.target.as_fd(), "store") {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => {
            anyhow::bail!(
                "{}/store is not a directory (a symlink or a file): refusing to follow it; \
             remove it, or seed another target",
                c.target_path.display()
            )
        }
        Err(e) => Err(e).with_context(|| format!("cannot open {}/store", c.target_path.display())),
    }
}

fn store_names(dir: BorrowedFd) -> io::Result<Vec<OsString>> {
    Ok(list(dir)?
        .into_iter()
        .map(|e| e.name)
        .filter(|n| is_store_path_name(n.as_bytes()))
        .collect())
}

/// SHA-256 of the sorted store path names, first 32 hex digits.
pub fn image_id(sorted: &[OsString]) -> String {
    let mut h = Sha256::new();
    for n in sorted {
        h.update(n.as_bytes());
        h.update(b"\n");
    }
    let d = h.finalize();
    d.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The marker of a complete seed of image `id`. Anything unexpected on the way (a symlink
/// planted at `.nix-seed`) counts as no marker: the slow path then reports it.
fn marker_exists(target: BorrowedFd, id: &str) -> Result<bool> {
    let found = || -> std::io::Result<bool> {
        let Some(state) = crate::dirfd::open_dir_if_exists(target, STATE_DIR)? else {
            return Ok(false);
        };
        let Some(images) = crate::dirfd::open_dir_if_exists(state.as_fd(), IMAGES_DIR)? else {
            return Ok(false);
        };
        Ok(lstat_at(images.as_fd(), id)?
            .is_some_and(|st| crate::dirfd::file_type(&st) == nix::sys::stat::SFlag::S_IFREG))
    };
    match found() {
        Ok(b) => Ok(b),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_path_names() {
        assert!(is_store_path_name(b"0123456789abcdfghijklmnpqrsvwxyz-hello-2.12"));
        assert!(!is_store_path_name(b".links"));
        assert!(!is_store_path_name(b".nix-seed-tmp-1-2-foo"));
        assert!(!is_store_path_name(b""));
    }

    #[test]
    fn image_id_depends_on_the_set() {
        let a = image_id(&[OsString::from("a"), OsString::from("b")]);
        let b = image_id(&[OsString::from("a"), OsString::from("c")]);
        let ab = image_id(&[OsString::from("ab")]);
        assert_ne!(a, b);
        assert_ne!(a, ab);
        assert_eq!(a.len(), 32);
    }
}
