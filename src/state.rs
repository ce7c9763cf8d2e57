//! `TARGET/.nix-seed/images/<image id>`: the marker of a complete seed of one image.
//!
//! The fast path trusts it (with a listing of the store), so it must never claim more than
//! is true: a run that has work removes it *before* it changes the store or the database,
//! and writes it only after the image's paths are registered and rooted. A crash anywhere
//! in between leaves no marker, and the next run takes the slow path and repairs.

use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::stat::Mode;
use serde_json::json;

use crate::dirfd::lstat_at;
use crate::preflight::Checked;

/// Our own directory at the top of the target: the lock and the per-image markers.
pub const STATE_DIR: &str = ".nix-seed";
pub const IMAGES_DIR: &str = "images";

/// Whether image `id` is marked complete. Anything unexpected on the way (a symlink
/// planted at `.nix-seed`) counts as no marker: the slow path then reports it.
pub fn is_marked(target: BorrowedFd, id: &str) -> Result<bool> {
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

fn images_dir(c: &Checked) -> Result<std::os::fd::OwnedFd> {
    let state = crate::lock::state_dir(c.target.as_fd(), &c.target_path)?;
    Ok(crate::dirfd::mkdir_open(state.as_fd(), IMAGES_DIR, Mode::from_bits_truncate(0o755))?.0)
}

/// Remove the marker of image `id`, if any: this run is about to change what it vouches for.
pub fn unmark(c: &Checked, id: &str) -> Result<()> {
    let shown = || {
        format!(
            "cannot remove {}/{STATE_DIR}/{IMAGES_DIR}/{id}",
            c.target_path.display()
        )
    };
    let images = images_dir(c).with_context(shown)?;
    match nix::unistd::unlinkat(images.as_fd(), id, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e).with_context(shown),
    }
}

/// Write the marker of image `id` (last step of a complete seed).
pub fn mark(c: &Checked, id: &str, store_paths: usize) -> Result<()> {
    use std::io::Write;
    let ctx = || format!("cannot record the seed in {}/{STATE_DIR}", c.target_path.display());
    let images = images_dir(c).with_context(ctx)?;
    if lstat_at(images.as_fd(), id).with_context(ctx)?.is_some() {
        return Ok(());
    }
    let body = json!({
        "image_id": id,
        "source": c.source_path.to_string_lossy(),
        "store_paths": store_paths,
        "seeded_at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "host": nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let fd = nix::fcntl::openat(
        images.as_fd(),
        id,
        nix::fcntl::OFlag::O_WRONLY
            | nix::fcntl::OFlag::O_CREAT
            | nix::fcntl::OFlag::O_EXCL
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    );
    match fd {
        Ok(fd) => {
            let mut f = std::fs::File::from(fd);
            writeln!(f, "{body}").with_context(ctx)?;
            Ok(())
        }
        Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(e).with_context(ctx),
    }
}
