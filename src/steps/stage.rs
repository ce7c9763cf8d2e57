//! An image as the seed's source (an archive, an OCI layout, standard input; see
//! `engines::image`): under the seed's locks, its layers are applied to a stage, a
//! temporary directory of this run in the target (so publishing a store path is a rename
//! on one filesystem, and a killed run's stage is a leftover the next run removes). The
//! stage is then the source directory of the usual steps.
//!
//! Store paths the target already holds *and* has registered are not written: the image's
//! copy of them is read (for the digest checks) and dropped, and an empty placeholder keeps
//! their name in the stage's store so the image's list of store paths is whole.
//!
//! The image is read under the seed lock only, and Nix's locks are taken after it: an
//! image refused half-way (a digest that does not match, a truncated archive, a hostile
//! entry: exit 2) leaves the disk's `var/` as it was. So the decision to leave a store path
//! out is made before `gc.lock` is held, and is checked again under it ([`check_kept`]): a
//! path some collector deleted meanwhile fails the seed (nothing published; the next run
//! reads it from the image) rather than letting a placeholder be published.

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use nix::sys::stat::{mkdirat, Mode};
use serde_json::json;

use crate::base::dirfd::{open_dir, remove_tree_at, temp_name};
use crate::base::preflight::Checked;
use crate::base::progress::{self, Log};
use crate::engines::image::{self, Spec, Unpacked};
use crate::engines::nixdb::with_target_db;

/// The stage: `TARGET/<temporary name>/` holding `nix/store/` (and, once read, the
/// image's `nix/var/` and registration files). Removed when dropped.
pub struct Stage {
    target: OwnedFd,
    name: OsString,
    pub path: PathBuf,
    top: OwnedFd,
}

impl Stage {
    pub fn make(target: BorrowedFd, target_path: &Path) -> Result<Stage> {
        let name = temp_name(std::ffi::OsStr::new("image"));
        let path = target_path.join(&name);
        let shown = path.display().to_string();
        let ctx = || format!("cannot create the stage {shown}");
        mkdirat(target, name.as_os_str(), Mode::from_bits_truncate(0o700)).with_context(ctx)?;
        let stage = Stage {
            target: target.try_clone_to_owned()?,
            top: open_dir(target, &name).with_context(ctx)?,
            name,
            path,
        };
        mkdirat(stage.top.as_fd(), "nix", Mode::from_bits_truncate(0o755)).with_context(ctx)?;
        let nix = open_dir(stage.top.as_fd(), "nix").with_context(ctx)?;
        mkdirat(nix.as_fd(), "store", Mode::from_bits_truncate(0o700)).with_context(ctx)?;
        Ok(stage)
    }

    /// The stage's `nix/`: the source directory of the seed.
    pub fn nix(&self) -> Result<(PathBuf, OwnedFd)> {
        Ok((self.path.join("nix"), open_dir(self.top.as_fd(), "nix")?))
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        // What was not published goes; a failure leaves a leftover the next run removes.
        let _ = remove_tree_at(self.target.as_fd(), &self.name);
    }
}

/// Apply the image's layers to the stage that is `c`'s source, skipping the store paths
/// the target holds and has registered. Returns what was read, and the names of the store
/// paths left out (placeholders in the stage), sorted.
pub fn unpack(
    c: &Checked,
    stage: &Stage,
    spec: &Spec,
    platform: Option<&str>,
    lock_timeout: std::time::Duration,
    log: &Arc<Log>,
) -> Result<(Unpacked, Vec<OsString>)> {
    let t0 = std::time::Instant::now();
    let target_store = crate::steps::plan::open_target_store(c)?;
    let present: HashSet<OsString> = match &target_store {
        Some(s) => crate::steps::plan::list_store(c, s.as_fd())?,
        None => HashSet::new(),
    };
    let registered = with_target_db(c, lock_timeout, log, |db| match db {
        Some(db) => db.registered(),
        None => Ok(HashSet::new()),
    })?;
    let skip = |n: &[u8]| {
        let n = std::ffi::OsStr::from_bytes(n);
        present.contains(n) && n.to_str().is_some_and(|s| registered.contains(s))
    };
    let un = image::unpack(
        spec,
        platform,
        (stage.top.as_fd(), c.source.as_fd()),
        &skip,
        target_store.as_ref().map(|s| s.as_fd()),
    )?;
    let kept: Vec<OsString> = un.names.iter().filter(|n| skip(n.as_bytes())).cloned().collect();
    log.event(
        progress::Level::Info,
        "image-read",
        &format!(
            "read image {} ({}): {} in {}, {} already in {}; staged {} ({}) in {:.2}s{}",
            spec.shown(),
            un.label,
            progress::count(un.names.len() as u64, "store path", "store paths"),
            progress::count(un.layers as u64, "layer", "layers"),
            kept.len(),
            c.target_path.display(),
            progress::count(un.stats.files, "file", "files"),
            indicatif::HumanBytes(un.stats.bytes),
            t0.elapsed().as_secs_f64(),
            match un.stats.layers_read_past {
                0 => String::new(),
                n => format!(
                    "; {} read past (only paths already in the target)",
                    progress::count(n, "layer", "layers")
                ),
            }
        ),
        json!({"image": un.label, "store_paths": un.names.len(), "layers": un.layers, "present": kept.len(),
               "layers_read_past": un.stats.layers_read_past, "files": un.stats.files, "bytes": un.stats.bytes}),
    );
    if un.stats.chown_denied {
        log.warn(&format!(
            "cannot set file ownership in {} (chown refused: not root, or the filesystem squashes root): the \
             image's files keep the owner the target gives them; modes, times, links and content are preserved",
            c.target_path.display()
        ));
    }
    Ok((un, kept))
}

/// Under Nix's locks, with `plan` computed under them: every store path [`unpack`] left out
/// of the stage is still in the target and registered there. One that is not was deleted
/// while the image was read (a collector ran before this seed took `gc.lock`): the stage
/// holds only its placeholder, so the seed stops before publishing anything.
pub fn check_kept(
    c: &Checked,
    plan: &crate::steps::plan::Plan,
    kept: &[OsString],
    lock_timeout: std::time::Duration,
    log: &Arc<Log>,
) -> Result<()> {
    if kept.is_empty() {
        return Ok(());
    }
    let registered = with_target_db(c, lock_timeout, log, |db| match db {
        Some(db) => db.registered(),
        None => Ok(HashSet::new()),
    })?;
    let gone = kept
        .iter()
        .find(|n| plan.missing.binary_search(n).is_ok() || n.to_str().is_none_or(|s| !registered.contains(s)));
    match gone {
        None => Ok(()),
        Some(n) => anyhow::bail!(
            "store path {} was in {} when the image was read, and was deleted (or unregistered) before this \
             seed took gc.lock: a garbage collection ran meanwhile. Nothing was published; run the seed again, \
             and it reads that path from the image",
            n.to_string_lossy(),
            c.target_path.join("store").display()
        ),
    }
}
