//! A private copy of an image's WAL database, for when SQLite cannot read the image's own
//! files whole.
//!
//! Committed transactions of a WAL database may sit only in `db.sqlite-wal` (an image
//! snapshotted while Nix ran, or built with the WAL never checkpointed). To read them,
//! SQLite rebuilds the wal-index (`db.sqlite-shm`) from the `-wal` file, which takes a
//! write lock it cannot have on a read-only connection: with no `-shm` file, or a
//! directory it may not write, a read-only open sees the main file only, as if the WAL's
//! rows did not exist. So `db.sqlite` and `db.sqlite-wal` are copied into a directory only
//! this process can enter, and the copy is opened read-write: SQLite recovers the WAL
//! there, and the image is never written.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A directory under the system's temporary directory, mode 0700, removed with everything
/// in it when dropped.
pub(super) struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    pub(super) fn new() -> Result<PrivateDir> {
        use std::os::unix::fs::DirBuilderExt;
        let base = std::env::temp_dir();
        let mut last = None;
        for n in 0..100u32 {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let path = base.join(format!("nix-seed-db-{}-{t:x}-{n}", std::process::id()));
            // Created, not found: a name another user made cannot be taken over.
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => return Ok(PrivateDir { path }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => {
                    return Err(e).with_context(|| format!("cannot create a private directory in {}", base.display()))
                }
            }
        }
        Err(last.expect("tried")).with_context(|| format!("cannot create a private directory in {}", base.display()))
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Whether the image's database `db` (its `-wal` file non-empty) must be read from a
/// copy: its `-shm` file is missing, or its directory cannot be written.
pub(super) fn needs_copy(db: &Path) -> bool {
    let shm = side(db, "-shm");
    let dir = db.parent().unwrap_or(Path::new("."));
    std::fs::symlink_metadata(shm).is_err() || nix::unistd::access(dir, nix::unistd::AccessFlags::W_OK).is_err()
}

/// `db` with `suffix` appended to its name (`-wal`, `-shm`, `-journal`).
pub(super) fn side(db: &Path, suffix: &str) -> PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

/// Copy `db` and its `-wal` file into a new private directory; returns it and the copy's
/// path. Only reads the image.
pub(super) fn copy_with_wal(db: &Path) -> Result<(PrivateDir, PathBuf)> {
    let dir = PrivateDir::new()?;
    let to = dir.path().join(super::DB_FILE);
    for suffix in ["", "-wal"] {
        let from = side(db, suffix);
        let copy = side(&to, suffix);
        std::fs::copy(&from, &copy)
            .and_then(|_| std::fs::set_permissions(&copy, std::os::unix::fs::PermissionsExt::from_mode(0o600)))
            .with_context(|| format!("cannot copy {} to {}", from.display(), dir.path().display()))?;
    }
    Ok((dir, to))
}
