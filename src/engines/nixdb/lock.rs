//! Waiting for the target database's lock, and recovering the one a killed seeder left:
//! SQLite's busy handler (bounded by `--lock-timeout`, saying what it waits for) and the
//! `.nix-seed/db-lock` record that lets the next seeder remove a stale `db.sqlite.lock`.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};

use super::DB_FILE;
use crate::base::dirfd::lstat_at;
use crate::base::wait::{Step, Waiting};

/// What the busy handler says and how long it waits (one target database per process).
struct BusyCtx {
    lock_path: PathBuf,
    timeout: Duration,
    log: std::sync::Arc<crate::base::progress::Log>,
}

static BUSY: std::sync::OnceLock<BusyCtx> = std::sync::OnceLock::new();

/// Set what the database busy handler reports and how long it waits.
pub fn set_busy_context(db_dir: &Path, timeout: Duration, log: std::sync::Arc<crate::base::progress::Log>) {
    let _ = BUSY.set(BusyCtx {
        lock_path: db_dir.join(format!("{DB_FILE}.lock")),
        timeout,
        log,
    });
}

/// SQLite's busy handler: retry on the back-off every lock wait uses ([`crate::base::wait`]),
/// say every 5 s (the first time after 5 s: these waits are usually milliseconds) what is
/// waited for, give up after the lock timeout, measured on the clock (a retry on a network
/// filesystem takes time too). SQLite then returns SQLITE_BUSY, which
/// `lock::db_busy_as_timeout` turns into a lock timeout (exit 3) naming the lock. Without
/// a context (not set yet) it gives up after 10 s, silently.
pub(super) fn busy(count: i32) -> bool {
    thread_local! {
        static WAITING: std::cell::RefCell<Option<Waiting>> = const { std::cell::RefCell::new(None) };
    }
    let ctx = BUSY.get();
    let step = WAITING.with(|w| {
        let mut w = w.borrow_mut();
        // SQLite calls with 0 at the start of each wait.
        if count == 0 || w.is_none() {
            let timeout = ctx.map_or(Duration::from_secs(10), |c| c.timeout);
            *w = Some(Waiting::new(std::time::Instant::now(), timeout).say_later());
        }
        w.as_mut().map(Waiting::next_step)
    });
    match step {
        Some(Step::Retry { waited, say, sleep }) => {
            if let (true, Some(ctx)) = (say, ctx) {
                ctx.log.warn(&format!(
                    "waiting {}s for the Nix database lock ({} exists with the unix-dotfile VFS): a Nix \
                     process holds the database, or one was killed while holding it; if no Nix process \
                     uses this store, rmdir it",
                    waited.as_secs(),
                    ctx.lock_path.display()
                ));
            }
            std::thread::sleep(sleep);
            true
        }
        Some(Step::GiveUp { .. }) | None => false,
    }
}

/// `TARGET/.nix-seed/db-lock`: present while a seeder may hold the target database's
/// lock. With the `unix-dotfile` VFS that lock is the directory `db.sqlite.lock`, which a
/// process killed while holding it leaves behind, and every Nix process of every pod then
/// blocks. While it holds that lock to register, a seeder appends the lock's identity
/// (inode, ctime) to the record. A later seeder holds the nix-seed lock, so the one that
/// wrote the record is dead (or was taken over): a `db.sqlite.lock` with a recorded
/// identity is that seeder's and is removed at once, with a warning. One without (the
/// seeder died holding it for a read) is removed only if it stays the same for a grace
/// period. Without a record nix-seed never removes it (a live, or killed, Nix process's
/// lock is not ours to break). The fast path sees the record (one lookup) and takes the
/// slow path, so a pod start of any image recovers the lock.
pub struct DbWindow {
    state: std::os::fd::OwnedFd,
}

pub use crate::base::layout::DB_LOCK_RECORD as DB_WINDOW_RECORD;

/// The open window's `.nix-seed/` (one per process: nix-seed registers in one database).
static WINDOW: std::sync::Mutex<Option<std::os::fd::OwnedFd>> = std::sync::Mutex::new(None);

/// The identity of `db.sqlite.lock` in `db_dir` as the record keeps it: inode and ctime.
fn lock_identity(db_dir: BorrowedFd) -> Option<String> {
    let st = lstat_at(db_dir, format!("{DB_FILE}.lock").as_str()).ok()??;
    (crate::base::dirfd::file_type(&st) == nix::sys::stat::SFlag::S_IFDIR)
        .then(|| format!("{}.{}.{}", st.st_ino, st.st_ctime, st.st_ctime_nsec))
}

/// Called with the database's dotfile lock held by this process (inside a `BEGIN
/// IMMEDIATE`): append the lock's identity to the open window's record. If this process
/// is killed before it lets go, the next seeder removes that lock, and only that one: a
/// lock some Nix process made since has another inode or ctime. Best effort: without the
/// line, the next seeder falls back to waiting for the lock to stay unchanged.
pub(super) fn note_held(db_dir: BorrowedFd) {
    use nix::fcntl::{openat, OFlag};
    let Some(id) = lock_identity(db_dir) else { return };
    let guard = WINDOW.lock().unwrap_or_else(|e| e.into_inner());
    let Some(state) = guard.as_ref() else { return };
    if let Ok(fd) = openat(
        state.as_fd(),
        DB_WINDOW_RECORD,
        OFlag::O_WRONLY | OFlag::O_APPEND | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::empty(),
    ) {
        use std::io::Write;
        let mut f = std::fs::File::from(fd);
        let _ = writeln!(f, "lock={id}");
        let _ = f.sync_data();
    }
}

/// The lock identities a record holds.
fn recorded_identities(state: BorrowedFd) -> Vec<String> {
    use nix::fcntl::{openat, OFlag};
    let Ok(fd) = openat(
        state,
        DB_WINDOW_RECORD,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::empty(),
    ) else {
        return Vec::new();
    };
    let mut s = String::new();
    // A few lines: never more than a page is read.
    let _ = std::io::Read::read_to_string(&mut std::io::Read::take(std::fs::File::from(fd), 4096), &mut s);
    s.lines()
        .filter_map(|l| l.strip_prefix("lock="))
        .map(str::to_string)
        .collect()
}

impl DbWindow {
    pub fn enter(
        state: std::os::fd::OwnedFd,
        db_dir: Option<BorrowedFd>,
        db_path: &Path,
        log: &crate::base::progress::Log,
    ) -> Result<DbWindow> {
        use nix::fcntl::{openat, OFlag};
        use nix::sys::stat::Mode;
        if let (Some(db), true) = (db_dir, lstat_at(state.as_fd(), DB_WINDOW_RECORD)?.is_some()) {
            let lock_name = format!("{DB_FILE}.lock");
            let first = lstat_at(db, lock_name.as_str())?;
            let ours = lock_identity(db).is_some_and(|id| recorded_identities(state.as_fd()).contains(&id));
            if ours {
                // The very lock the dead seeder recorded holding: remove it now.
                match nix::unistd::unlinkat(db, lock_name.as_str(), nix::unistd::UnlinkatFlags::RemoveDir) {
                    Ok(()) | Err(nix::errno::Errno::ENOENT) => log.warn(&format!(
                        "removed {}/{lock_name}: left by a nix-seed run (seed, prune or gc) killed while it held the Nix database \
                         (it recorded holding that lock in .nix-seed/{DB_WINDOW_RECORD})",
                        db_path.display()
                    )),
                    Err(e) => log.warn(&format!(
                        "cannot remove the stale {}/{lock_name}: {e}",
                        db_path.display()
                    )),
                }
            } else if let Some(first) = first {
                // A live Nix process holds this lock for a transaction: milliseconds. Give
                // it a grace period before deciding the lock is the dead seeder's.
                let grace = Duration::from_secs(5);
                let t0 = std::time::Instant::now();
                let mut gone = false;
                while t0.elapsed() < grace {
                    std::thread::sleep(Duration::from_millis(100));
                    match lstat_at(db, lock_name.as_str())? {
                        None => {
                            gone = true;
                            break;
                        }
                        Some(now)
                            if (now.st_ino, now.st_ctime, now.st_ctime_nsec)
                                != (first.st_ino, first.st_ctime, first.st_ctime_nsec) =>
                        {
                            gone = true;
                            break;
                        }
                        Some(_) => {}
                    }
                }
                if !gone {
                    match nix::unistd::unlinkat(db, lock_name.as_str(), nix::unistd::UnlinkatFlags::RemoveDir) {
                        Ok(()) | Err(nix::errno::Errno::ENOENT) => log.warn(&format!(
                            "removed {}/{lock_name}: left by a nix-seed run (seed, prune or gc) killed while it held the Nix database \
                             (it recorded that in .nix-seed/{DB_WINDOW_RECORD})",
                            db_path.display()
                        )),
                        Err(e) => log.warn(&format!(
                            "cannot remove the stale {}/{lock_name}: {e}",
                            db_path.display()
                        )),
                    }
                }
            }
        }
        let fd = openat(
            state.as_fd(),
            DB_WINDOW_RECORD,
            OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_TRUNC
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC
                | OFlag::O_NONBLOCK,
            Mode::from_bits_truncate(0o644),
        )
        .context("cannot write .nix-seed/db-lock")?;
        use std::io::Write;
        let _ = writeln!(std::fs::File::from(fd), "pid={}", std::process::id());
        *WINDOW.lock().unwrap_or_else(|e| e.into_inner()) = state.try_clone().ok();
        Ok(DbWindow { state })
    }
}

impl Drop for DbWindow {
    fn drop(&mut self) {
        *WINDOW.lock().unwrap_or_else(|e| e.into_inner()) = None;
        let _ = nix::unistd::unlinkat(
            self.state.as_fd(),
            DB_WINDOW_RECORD,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
}
