//! What the target's filesystem can do, probed once per run in its store directory and
//! shared by everything that writes there (store paths, var/, GC roots). Network
//! filesystems differ from local ones in ways that change how a copy must be written:
//! FUSE refuses `renameat2(RENAME_NOREPLACE)`, sshfs applies a symlink's owner and times
//! to the link's target and hides hardlinks, and sshfs with its default options cannot
//! read back absolute or `..` symlinks. What a probe cannot tell (a refusal met later)
//! is learned once and kept here for the rest of the run.

use std::os::fd::BorrowedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};

use super::metadata;

pub struct TargetFs {
    /// `renameat2(RENAME_NOREPLACE)` works (FUSE filesystems answer EINVAL).
    noreplace: AtomicBool,
    /// Owner and times can be set on a symlink itself.
    symlink_meta: AtomicBool,
    /// Symlink metadata was found to reach link targets and nobody was told yet.
    symlink_notice: AtomicBool,
}

impl TargetFs {
    /// A filesystem assumed to do everything, until a probe or a refusal says otherwise.
    pub fn capable() -> Arc<TargetFs> {
        Arc::new(TargetFs {
            noreplace: AtomicBool::new(true),
            symlink_meta: AtomicBool::new(true),
            symlink_notice: AtomicBool::new(false),
        })
    }

    /// Probe the store directory `store` once. A filesystem whose symlinks do not read
    /// back cannot hold a Nix store: refused (exit 2). Symlink metadata that reaches link
    /// targets, and hardlinks that do not show, are worth a warning each (returned).
    pub fn probe(store: BorrowedFd, store_path: &Path, target_path: &Path) -> Result<(Arc<TargetFs>, Vec<String>)> {
        if let Some((link, why)) = metadata::symlinks_read_back(store)
            .with_context(|| format!("cannot probe symlinks in {}", store_path.display()))?
        {
            return Err(crate::base::error::Invalid(format!(
                "{} cannot hold a Nix store: a symlink to {link} created there {why}; on sshfs mount with \
                 -o no_contain_symlinks, elsewhere use a filesystem that keeps symlink targets as written",
                store_path.display()
            ))
            .into());
        }
        let fs = TargetFs::capable();
        let mut warnings = Vec::new();
        let follows = metadata::symlink_metadata_follows(store)
            .context("cannot probe how the target filesystem treats symlinks")?;
        if follows {
            fs.symlink_meta.store(false, Ordering::Relaxed);
            warnings.push(symlink_warning(target_path));
        }
        // Only a warning hangs on this probe, so a probe that fails is not an error.
        if let Ok(Some(false)) = metadata::hardlinks_visible(store) {
            warnings.push(format!(
                "{} reports hardlinked files as separate files (link count 1, as sshfs does): hardlinks \
                 are made, but clients of this filesystem cannot see them",
                target_path.display()
            ));
        }
        Ok((fs, warnings))
    }

    pub fn noreplace(&self) -> bool {
        self.noreplace.load(Ordering::Relaxed)
    }

    /// `RENAME_NOREPLACE` was refused: publish by link-then-unlink for the rest of the run.
    pub fn without_noreplace(&self) {
        self.noreplace.store(false, Ordering::Relaxed);
    }

    pub fn symlink_metadata(&self) -> bool {
        self.symlink_meta.load(Ordering::Relaxed)
    }

    /// Symlink metadata turned out to reach link targets here: keep it off for the run;
    /// the first time, [`TargetFs::take_symlink_notice`] says so.
    pub fn symlink_metadata_follows(&self) {
        if self.symlink_meta.swap(false, Ordering::Relaxed) {
            self.symlink_notice.store(true, Ordering::Relaxed);
        }
    }

    pub fn take_symlink_notice(&self) -> bool {
        self.symlink_notice.swap(false, Ordering::Relaxed)
    }
}

/// The one warning for symlink metadata that reaches link targets.
pub fn symlink_warning(target: &Path) -> String {
    format!(
        "{} applies a symlink's owner and times to the link's target (sshfs does): symlinks keep the \
         owner and times the target gives them; everything else is preserved",
        target.display()
    )
}
