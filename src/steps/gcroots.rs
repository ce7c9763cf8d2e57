//! GC roots for each seeded image: `var/nix/gcroots/nix-seed/<image id>/<name>` →
//! `/nix/store/<name>` (the path pods see, not the mount path), one link for each top of
//! the image's closure (a valid path no other valid path refers to). Nix's garbage
//! collector (and `nix-seed gc`) keeps everything reachable from a root, so a collection
//! cannot delete what another image needs.
//!
//! The directory appears whole (built under a temporary name, then renamed), and every
//! later slow-path run adds the links it lacks. `nix-seed prune` retires an image by
//! renaming its directory away, then removing it ([`crate::commands::prune`]); then a garbage
//! collection from one place frees what nothing else roots.
//!
//! The image's own `gcroots/auto` links point at paths inside the image's pods and are
//! never carried over (see `var::keep`).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::stat::{mkdirat, Mode};
use nix::unistd::symlinkat;

use crate::base::dirfd::{lstat_at, open_dir, MkdirOpen};
use crate::engines::copy::publish::{publish, Published};
use crate::engines::copy::{Engine, TopEntry};
use crate::engines::nixdb::{SourceDb, ValidPath};

pub const DIR: &str = "nix-seed";

fn mkdir_open(dir: BorrowedFd, name: &str, shown: &Path) -> Result<std::os::fd::OwnedFd> {
    match crate::base::dirfd::mkdir_open(dir, name, Mode::from_bits_truncate(0o755)) {
        Ok((fd, _)) => Ok(fd),
        Err(MkdirOpen::Create(e)) => Err(e).with_context(|| format!("cannot create {}", shown.display())),
        Err(MkdirOpen::Open { err: e, .. }) => {
            Err(e).with_context(|| format!("cannot open {} (must be a directory, not a symlink)", shown.display()))
        }
    }
}

/// The tops of the part of the image's closure that is valid in the target: paths for
/// which `valid` holds that no other such path refers to. Rooting them keeps all of it
/// alive, and a path that is missing at one run gets its root at the next.
pub fn tops<'a>(src: &'a SourceDb, valid: &dyn Fn(&str) -> bool) -> Vec<&'a ValidPath> {
    let referenced: HashSet<&str> = src
        .refs
        .iter()
        .filter(|(a, b)| a != b && valid(crate::base::store_path::store_name(a)))
        .map(|(_, b)| b.as_str())
        .collect();
    src.paths
        .iter()
        .filter(|p| valid(p.name()) && !referenced.contains(p.path.as_str()))
        .collect()
}

/// Make the roots of one image complete: its directory is created whole the first time
/// (built under a temporary name, then renamed); at later runs every missing link is
/// added to it. Returns how many links were created.
pub fn add(eng: &Engine, var: BorrowedFd, var_path: &Path, image_id: &str, tops: &[&ValidPath]) -> Result<usize> {
    let nix_dir = mkdir_open(var, "nix", &var_path.join("nix"))?;
    let roots = mkdir_open(nix_dir.as_fd(), "gcroots", &var_path.join("nix/gcroots"))?;
    let ours_path = var_path.join("nix/gcroots").join(DIR);
    let ours = mkdir_open(roots.as_fd(), DIR, &ours_path)?;
    let image_path = ours_path.join(image_id);
    if lstat_at(ours.as_fd(), image_id)
        .with_context(|| format!("cannot stat {}", image_path.display()))?
        .is_some()
    {
        let d = open_dir(ours.as_fd(), image_id).with_context(|| {
            format!(
                "cannot open {} (must be a directory, not a symlink)",
                image_path.display()
            )
        })?;
        return fill(d.as_fd(), &image_path, tops);
    }
    let tmp = eng.temp_name(OsStr::new(image_id));
    mkdirat(ours.as_fd(), tmp.as_os_str(), Mode::from_bits_truncate(0o755))
        .with_context(|| format!("cannot create a directory in {}", ours_path.display()))?;
    let guard = crate::base::dirfd::TempEntry::new(ours.as_fd(), &tmp);
    let top = TopEntry::new(tmp.clone());
    let d = open_dir(ours.as_fd(), &tmp).with_context(|| format!("cannot open {}", ours_path.join(&tmp).display()))?;
    let n = fill(d.as_fd(), &ours_path.join(&tmp), tops)?;
    drop(d);
    let published = publish(eng, ours.as_fd(), &top, &tmp, true, OsStr::new(image_id))
        .with_context(|| format!("cannot publish {}", image_path.display()))?;
    guard.keep();
    match published {
        Published::Yes => Ok(n),
        // Another run made it meanwhile: complete that one.
        Published::AlreadyThere => {
            let d = open_dir(ours.as_fd(), image_id).with_context(|| {
                format!(
                    "cannot open {} (must be a directory, not a symlink)",
                    image_path.display()
                )
            })?;
            fill(d.as_fd(), &image_path, tops)
        }
    }
}

/// Add a link `<name>` → `/nix/store/<name>` for each top that has none in `dir`.
fn fill(dir: BorrowedFd, shown: &Path, tops: &[&ValidPath]) -> Result<usize> {
    let mut n = 0;
    for p in tops {
        match symlinkat(p.path.as_str(), dir, p.name()) {
            Ok(()) => n += 1,
            Err(Errno::EEXIST) => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cannot create GC root {}/{} for {}", shown.display(), p.name(), p.path))
            }
        }
    }
    Ok(n)
}

/// Which of `names` (root link names recorded for image `image_id`) are missing from
/// `var/nix/gcroots/nix-seed/<image id>/` in the target (`target`): a root deleted by hand
/// leaves its closure to the next garbage collection. Read without following symlinks.
pub fn missing(target: BorrowedFd, image_id: &str, names: &[String]) -> Result<Vec<String>> {
    let mut dir = crate::base::dirfd::open_dir_if_exists(target, "var")?;
    for d in ["nix", "gcroots", DIR, image_id] {
        dir = match dir {
            Some(fd) => crate::base::dirfd::open_dir_if_exists(fd.as_fd(), d)?,
            None => None,
        };
    }
    let Some(dir) = dir else {
        return Ok(names.to_vec());
    };
    let mut out = Vec::new();
    for n in names {
        if lstat_at(dir.as_fd(), n.as_str())?.is_none() {
            out.push(n.clone());
        }
    }
    Ok(out)
}
