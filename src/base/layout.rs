//! Every on-disk name of a Nix root and of nix-seed's `.nix-seed/`, in one place, and the
//! paths a root's entries are shown as, computed once per root the way Nix's `LocalStore`
//! computes `dbDir`, `schemaPath` and the rest from its state directory.
//!
//! Files are opened relative to directory descriptors by these names (never by these
//! paths, which are for messages): a shared disk may be changed under nix-seed by a
//! hostile pod, and a path would follow a symlink planted on the way.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// `store/`: the store paths.
pub const STORE: &str = "store";
/// `var/`: Nix's state (Nix's `/nix/var`).
pub const VAR: &str = "var";
/// `var/nix`.
pub const NIX: &str = "nix";
/// The database directory, relative to `var/` (Nix's `dbDir`).
pub const DB_DIR: &str = "nix/db";
/// The database, in [`DB_DIR`].
pub const DB_FILE: &str = "db.sqlite";
/// The schema version file, in [`DB_DIR`] (Nix's `schemaPath`).
pub const SCHEMA_FILE: &str = "schema";
/// `var/nix/gcroots`, and nix-seed's directory of image roots in it.
pub const GCROOTS: &str = "gcroots";
pub const OUR_ROOTS: &str = "nix-seed";
/// Nix's garbage collector's lock, in `var/nix`, and the big lock, in [`DB_DIR`].
pub const GC_LOCK: &str = "gc.lock";
pub const BIG_LOCK: &str = "big-lock";

/// nix-seed's own directory at the top of the target.
pub const STATE_DIR: &str = ".nix-seed";
/// In [`STATE_DIR`]: the seed lock, the takeover lock, the database-lock window's
/// record, the markers of complete seeds and the images' records.
pub const LOCK_NAME: &str = "lock";
pub const TAKEOVER_NAME: &str = "takeover";
pub const DB_LOCK_RECORD: &str = "db-lock";
pub const IMAGES_DIR: &str = "images";
pub const RECORDS_DIR: &str = "records";

/// The paths of one Nix root's entries (`/nix`, or a target mounted elsewhere), as
/// messages show them.
#[derive(Debug, Clone)]
pub struct Layout {
    pub root: PathBuf,
    pub store: PathBuf,
    pub var: PathBuf,
    /// `var/nix/db`.
    pub db_dir: PathBuf,
    /// `var/nix/db/db.sqlite`.
    pub db: PathBuf,
    /// `var/nix/gcroots/nix-seed`.
    pub our_roots: PathBuf,
    /// `.nix-seed`.
    pub state: PathBuf,
}

impl Layout {
    pub fn new(root: &Path) -> Layout {
        let var = root.join(VAR);
        let db_dir = var.join(DB_DIR);
        Layout {
            store: root.join(STORE),
            db: db_dir.join(DB_FILE),
            our_roots: var.join(NIX).join(GCROOTS).join(OUR_ROOTS),
            state: root.join(STATE_DIR),
            root: root.to_path_buf(),
            var,
            db_dir,
        }
    }
}

/// `TARGET/.nix-seed` (the target open at `target`, shown as `target_path`), created if
/// needed, never followed if it is a symlink.
pub fn state_dir(target: BorrowedFd, target_path: &Path) -> Result<OwnedFd> {
    use crate::base::dirfd::MkdirOpen;
    match crate::base::dirfd::mkdir_open(target, STATE_DIR, nix::sys::stat::Mode::from_bits_truncate(0o755)) {
        Ok((fd, _)) => Ok(fd),
        Err(MkdirOpen::Create(e)) => {
            Err(e).with_context(|| format!("cannot create {}/{STATE_DIR}", target_path.display()))
        }
        Err(MkdirOpen::Open { err: e, .. }) => Err(anyhow::anyhow!(
            "cannot open {}/{STATE_DIR} ({e}): it must be a directory, not a symlink or file; remove it",
            target_path.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn paths_of_a_root() {
        let l = super::Layout::new(std::path::Path::new("/mnt/nix"));
        assert_eq!(l.db, std::path::Path::new("/mnt/nix/var/nix/db/db.sqlite"));
        assert_eq!(l.our_roots, std::path::Path::new("/mnt/nix/var/nix/gcroots/nix-seed"));
        assert_eq!(l.state, std::path::Path::new("/mnt/nix/.nix-seed"));
    }
}
