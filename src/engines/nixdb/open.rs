//! Opening the target's database during a seed: always inside the `.nix-seed/db-lock`
//! window (see [`super::DbWindow`]) with the busy handler's context set, and opened at that
//! moment, since a pod's Nix may have created it or switched it to WAL meanwhile.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use super::{open_db_dir, open_target, set_busy_context, DbWindow, TargetDb, DB_FILE};
use crate::base::preflight::Checked;
use crate::base::progress::Log;

/// A target database nix-seed cannot register in (another schema, not a Nix database,
/// unreadable) is refused before anything is written: exit 2. A busy one stays a lock wait.
pub fn refusal(e: anyhow::Error) -> anyhow::Error {
    let busy = e.chain().any(|c| {
        matches!(c.downcast_ref::<rusqlite::Error>(),
                 Some(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::DatabaseBusy)
    });
    if busy || e.downcast_ref::<crate::base::error::Invalid>().is_some() {
        return e;
    }
    crate::base::error::Invalid(format!("{e:#}; nothing was written")).into()
}

/// `TARGET/var`, if it exists. Absent is "no database yet"; anything else (a symlink
/// swapped in) is an error, not a reason to skip registering.
fn open_var(c: &Checked) -> Result<Option<OwnedFd>> {
    crate::base::dirfd::open_dir_if_exists(c.target.as_fd(), "var").with_context(|| {
        format!(
            "cannot open {}/var (must be a directory, not a symlink)",
            c.target_path.display()
        )
    })
}

/// Run `f` on the target's database directory `var/nix/db` (`None` if it has none yet),
/// recorded in `.nix-seed/db-lock` meanwhile, so that a kill that leaves SQLite's dotfile
/// lock behind is recovered by the next run. Whatever `f` opens is opened now: a pod's Nix
/// may have created the database, or switched it to WAL, since it was last looked at.
pub fn with_db_dir<T>(
    c: &Checked,
    lock_timeout: Duration,
    log: &Arc<Log>,
    f: impl FnOnce(Option<BorrowedFd>) -> Result<T>,
) -> Result<T> {
    let Some(var) = open_var(c)? else { return f(None) };
    let Some(db_dir) = open_db_dir(var.as_fd(), &c.layout.var)? else {
        return f(None);
    };
    let db_path = c.layout.db_dir.clone();
    set_busy_context(&db_path, lock_timeout, log.clone());
    let window = DbWindow::enter(
        crate::base::layout::state_dir(c.target.as_fd(), &c.target_path)?,
        Some(db_dir.as_fd()),
        &db_path,
        log,
    )?;
    let r = f(Some(db_dir.as_fd()));
    drop(window);
    r
}

/// [`with_db_dir`] with the database opened (`None` if there is none).
pub fn with_target_db<T>(
    c: &Checked,
    lock_timeout: Duration,
    log: &Arc<Log>,
    f: impl FnOnce(Option<&mut TargetDb>) -> Result<T>,
) -> Result<T> {
    with_db_dir(c, lock_timeout, log, |dir| match dir {
        Some(d) => {
            let mut db = open_existing_db(c, d)?;
            f(db.as_mut())
        }
        None => f(None),
    })
}

/// The target's database in `db_dir` (its `var/nix/db`), opened the way its Nix clients
/// open it, if it has one.
pub fn open_existing_db(c: &Checked, db_dir: BorrowedFd) -> Result<Option<TargetDb>> {
    if !crate::base::dirfd::has_file(db_dir, OsStr::new(DB_FILE)) {
        return Ok(None);
    }
    let shown = c.layout.db_dir.clone();
    Ok(Some(open_target(db_dir, &shown, false)?))
}

/// Recover the database lock a seeder killed inside its window may have left (see
/// [`DbWindow`]), and clear the window's record. Called under the seed lock when the record
/// was found: no other seeder's window is open.
pub fn recover_db_lock(c: &Checked, lock_timeout: Duration, log: &Arc<Log>) -> Result<()> {
    with_db_dir(c, lock_timeout, log, |_| Ok(()))?;
    // Without a database directory no window was entered, and no lock can be left: the
    // record must go all the same, or every pod start would take the slow path.
    let state = crate::base::layout::state_dir(c.target.as_fd(), &c.target_path)?;
    match nix::unistd::unlinkat(
        state.as_fd(),
        super::DB_WINDOW_RECORD,
        nix::unistd::UnlinkatFlags::NoRemoveDir,
    ) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(e).with_context(|| {
            format!(
                "cannot remove {}/{}/{}",
                c.target_path.display(),
                crate::base::layout::STATE_DIR,
                super::DB_WINDOW_RECORD
            )
        }),
    }
}

/// A wait for the database's lock that ran out (SQLITE_BUSY after the busy handler gave
/// up at `--lock-timeout`) is a lock timeout (exit 3) naming the lock of the database of
/// the Nix root `root`; any other error as it is. `outcome` says what giving up left.
pub fn busy_as_timeout(e: anyhow::Error, root: &std::path::Path, timeout: Duration, outcome: &str) -> anyhow::Error {
    let root = std::fs::canonicalize(root).unwrap_or(root.to_path_buf());
    crate::engines::lock::db_busy_as_timeout(e, &crate::base::layout::Layout::new(&root).db_dir, timeout, outcome)
}
