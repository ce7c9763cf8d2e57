//! GC roots for each seeded image: `var/nix/gcroots/nix-seed/<image id>/<name>` →
//! `/nix/store/<name>` (the path pods see, not the mount path), one link for each top of
//! the image's closure (a valid path no other valid path refers to). Nix's garbage
//! collector keeps everything reachable from a root, so a `nix-collect-garbage` in any pod
//! cannot delete what another image needs.
//!
//! The directory appears whole (built under a temporary name, then renamed). To retire an
//! image: `rm -r /nix/var/nix/gcroots/nix-seed/<image id>` (and its marker
//! `/nix/.nix-seed/images/<image id>`), then collect garbage from one place.
//!
//! The image's own `gcroots/auto` links point at paths inside the image's pods and are
//! never carried over (see `var::keep`).

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::symlinkat;

use crate::copy::publish::{publish, Published};
use crate::copy::{Engine, TopEntry};
use crate::dirfd::{lstat_at, open_dir};
use crate::nixdb::SourceDb;

pub const DIR: &str = "nix-seed";

fn mkdir_open(dir: BorrowedFd, name: &str, shown: &Path) -> Result<std::os::fd::OwnedFd> {
    match mkdirat(dir, name, Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", shown.display())),
    }
    open_dir(dir, name).with_context(|| format!("cannot open {} (must be a directory, not a symlink)", shown.display()))
}

/// Add the roots of one image; returns how many links were created (0 if they exist).
pub fn add(
    eng: &Engine,
    var: BorrowedFd,
    var_path: &Path,
    image_id: &str,
    src: &SourceDb,
    present: &dyn Fn(&str) -> bool,
) -> Result<usize> {
    let nix_dir = mkdir_open(var, "nix", &var_path.join("nix"))?;
    let roots = mkdir_open(nix_dir.as_fd(), "gcroots", &var_path.join("nix/gcroots"))?;
    let ours_path = var_path.join("nix/gcroots").join(DIR);
    let ours = mkdir_open(roots.as_fd(), DIR, &ours_path)?;
    if lstat_at(ours.as_fd(), image_id)
        .with_context(|| format!("cannot stat {}", ours_path.join(image_id).display()))?
        .is_some()
    {
        return Ok(0);
    }
    let tmp = eng.temp_name(OsStr::new(image_id));
    mkdirat(ours.as_fd(), tmp.as_os_str(), Mode::from_bits_truncate(0o755))
        .with_context(|| format!("cannot create a directory in {}", ours_path.display()))?;
    let top = TopEntry::new(tmp.clone());
    let fill = || -> Result<usize> {
        let d = open_dir(ours.as_fd(), &tmp)?;
        let mut n = 0;
        for p in src.tops().into_iter().filter(|p| present(p.name())) {
            symlinkat(p.path.as_str(), d.as_fd(), p.name())
                .with_context(|| format!("cannot create GC root for {}", p.path))?;
            n += 1;
        }
        Ok(n)
    };
    let n = match fill() {
        Ok(n) => n,
        Err(e) => {
            let _ = crate::dirfd::remove_tree_at(ours.as_fd(), &tmp);
            return Err(e);
        }
    };
    let published = publish(eng, ours.as_fd(), &top, &tmp, OsStr::new(image_id));
    if published.is_err() {
        let _ = crate::dirfd::remove_tree_at(ours.as_fd(), &tmp);
    }
    match published.with_context(|| format!("cannot publish {}", ours_path.join(image_id).display()))? {
        Published::Yes => Ok(n),
        Published::AlreadyThere => Ok(0),
    }
}
