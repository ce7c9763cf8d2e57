//! One seeder at a time across all nodes: a kernel lock plus a lease.
//!
//! The lock file is `TARGET/.nix-seed/lock`. The holder keeps `flock(LOCK_EX)` on it and
//! writes a lease into it (host, pod, pid, start time, a heartbeat counter) that it
//! rewrites every few seconds. Waiters poll the kernel lock, print who they wait for, and
//! watch the lease. Two ways out for a waiter:
//! - the kernel releases the lock (holder exited or was SIGKILLed; on a network
//!   filesystem, when the server notices the client is gone): it takes the lock at once;
//! - the lease has not changed, on the waiter's own monotonic clock and while the kernel
//!   still says "held" (a node lost with its lock never released), for the larger of
//!   `--lock-stale` and [`STALE_BEATS`] of the holder's heartbeat periods (the lease says
//!   its period; a lease that does not, from an older version or garbled, counts as
//!   [`HEARTBEAT_MAX`]): it takes over by renaming a fresh, locked lock file over the old
//!   one. So no waiter's flags can take the lock from a holder that renews its lease at
//!   its own pace. Takeovers are serialised by `TARGET/.nix-seed/takeover` and re-check
//!   staleness under it, so two waiters never both take over.
//!
//! A holder whose lock file was replaced (it was taken over while paused or cut off)
//! notices at its next heartbeat and stops before doing more work.
//!
//! The lease is written by other nodes, so it is untrusted input: at most 4 KiB is read,
//! values are reduced to printable ASCII of bounded length, and anything unparsable is
//! shown as an unknown holder.
//!
//! Here: waiting for and taking the lock ([`acquire`], [`Held`]). The lease's format is in
//! [`lease`], the lock file's kernel lock and the takeover in `file`, the holder's
//! heartbeat in `heartbeat`.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Result;
use nix::sys::stat::fstat;
use serde_json::json;

use crate::progress::{Level, Log};
use crate::state::{dir as state_dir, STATE_DIR};

mod file;
mod heartbeat;
pub mod lease;

use file::{is_current, open_lock_file, take_over, try_flock};
use heartbeat::Intruders;
pub use lease::Lease;
use lease::{read_lease, Me};

pub use crate::state::LOCK_NAME;
const POLL: Duration = Duration::from_millis(100);
const SAY_EVERY: Duration = Duration::from_secs(5);

/// The holder rewrites its lease every `--lock-stale`/6, within these bounds.
pub const HEARTBEAT_MIN: Duration = Duration::from_millis(500);
pub const HEARTBEAT_MAX: Duration = Duration::from_secs(5);
/// A waiter takes over only after this many of the holder's heartbeat periods (and never
/// before its own `--lock-stale`).
pub const STALE_BEATS: u32 = 6;
/// The smallest `--lock-stale` accepted: [`STALE_BEATS`] of the fastest heartbeat.
pub const MIN_STALE: Duration = Duration::from_secs(3);
/// A lease's heartbeat period is honoured up to this (it is untrusted input: a huge one
/// must not make a lost node's lock unbreakable).
const HEARTBEAT_HONOURED_MAX: Duration = Duration::from_secs(60);

/// Gave up waiting for the lock: exit code 3.
#[derive(Debug)]
pub struct Timeout(pub String);

impl std::fmt::Display for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Timeout {}

pub struct Config {
    pub timeout: Duration,
    pub stale: Duration,
}

impl Config {
    /// The holder rewrites its lease several times per stale period.
    pub fn heartbeat(&self) -> Duration {
        (self.stale / STALE_BEATS).clamp(HEARTBEAT_MIN, HEARTBEAT_MAX)
    }

    /// How long a holder whose lease says `raw` may leave it unchanged before this waiter
    /// takes over: the larger of `--lock-stale` and [`STALE_BEATS`] of the holder's
    /// heartbeat period ([`HEARTBEAT_MAX`], the most any version beats at, when the lease
    /// does not say).
    pub fn stale_for(&self, raw: &[u8]) -> Duration {
        let beat = Lease::parse(raw)
            .and_then(|l| l.heartbeat_every)
            .map_or(HEARTBEAT_MAX, |b| b.clamp(HEARTBEAT_MIN, HEARTBEAT_HONOURED_MAX));
        self.stale.max(beat * STALE_BEATS)
    }
}

/// The held lock. Dropping it stops the heartbeat and releases the kernel lock.
pub struct Held {
    file: Arc<File>,
    /// Set when another seeder took the lock over: stop working.
    pub lost: Arc<AtomicBool>,
    hb_stop: Arc<(Mutex<bool>, Condvar)>,
    hb: Option<JoinHandle<()>>,
    pub path: PathBuf,
    intruders: Arc<Intruders>,
    dir: Arc<OwnedFd>,
}

impl Held {
    /// Whether the lock file is still the one this seeder locked (a takeover replaces it).
    pub fn still_ours(&self) -> bool {
        !self.lost.load(Ordering::Relaxed) && is_current(self.dir.as_fd(), &self.file).unwrap_or(false)
    }

    /// [`Held::still_ours`], asked again every 100 ms for up to `d`: false as soon as one
    /// answer is false.
    pub fn still_ours_within(&self, d: Duration) -> bool {
        let t0 = Instant::now();
        loop {
            if !self.still_ours() {
                return false;
            }
            if t0.elapsed() >= d {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// The error of a seeder whose lock was taken over: [`crate::copy::Stopped`] (exit 1,
/// "see above") when the heartbeat already said so, else the same words in one line.
pub fn lost(held: &Held) -> anyhow::Error {
    if held.lost.load(Ordering::Relaxed) {
        return crate::copy::Stopped.into();
    }
    anyhow::anyhow!(
        "lost lock {}: another seeder took it over (this one was stalled past --lock-stale); stopped",
        held.path.display()
    )
}

impl Drop for Held {
    fn drop(&mut self) {
        {
            let (m, cv) = &*self.hb_stop;
            *m.lock().unwrap() = true;
            cv.notify_all();
        }
        if let Some(h) = self.hb.take() {
            let _ = h.join();
        }
        if !self.lost.load(Ordering::Relaxed) {
            self.intruders.check(&self.file);
            // An empty lease tells waiters it was released, not abandoned.
            let _ = self.file.set_len(0);
        }
        // Closing the last fd (when `file` drops) releases the flock.
    }
}

/// Wait for and take the lock. `interrupted` is checked while waiting.
pub fn acquire(
    target: BorrowedFd,
    target_path: &Path,
    cfg: &Config,
    log: &Arc<Log>,
    interrupted: &AtomicBool,
) -> Result<Held> {
    // Before the lock nothing was written: a state directory that cannot be used is a
    // refusal (exit 2). Later (a symlink swapped in mid-run) it is a failure.
    let dir = Arc::new(state_dir(target, target_path).map_err(|e| crate::preflight::Invalid(format!("{e:#}")))?);
    let lock_path = target_path.join(STATE_DIR).join(LOCK_NAME);
    let me = Arc::new(Me::new(cfg.heartbeat()));
    let t0 = Instant::now();
    let mut seen: Option<(u64, Vec<u8>)> = None;
    let mut changed_at = Instant::now();
    let mut said_at: Option<Instant> = None;

    loop {
        if interrupted.load(Ordering::Relaxed) {
            return Err(crate::copy::Stopped.into());
        }
        let f = open_lock_file(dir.as_fd(), LOCK_NAME, &lock_path, false)?;
        let got = try_flock(&f).map_err(|e| {
            anyhow::anyhow!(
                "cannot lock {} ({e}): the target filesystem must support flock (on NFS, enable lockd or NFSv4)",
                lock_path.display()
            )
        })?;
        if got {
            // The name may have been replaced (a takeover) between our open and flock.
            if is_current(dir.as_fd(), &f)? {
                return Held::start(f, dir, me, cfg, log, lock_path, t0);
            }
            continue;
        }

        let raw = read_lease(&f);
        let ino = fstat(f.as_fd())?.st_ino;
        if seen.as_ref() != Some(&(ino, raw.clone())) {
            seen = Some((ino, raw.clone()));
            changed_at = Instant::now();
        }
        let holder = Lease::describe(&raw);
        let stale = cfg.stale_for(&raw);
        if changed_at.elapsed() >= stale {
            log.event(
                Level::Warn,
                "lock-stale",
                &format!(
                    "lease on {} held by {holder} has not changed for {}s (the larger of --lock-stale {} and \
                     {STALE_BEATS} of the holder's heartbeats): taking over",
                    lock_path.display(),
                    changed_at.elapsed().as_secs(),
                    humantime::format_duration(cfg.stale)
                ),
                Lease::fields(&raw),
            );
            if let Some(f) = take_over(dir.as_fd(), &lock_path, ino, &raw, &me)? {
                return Held::start(f, dir, me, cfg, log, lock_path, t0);
            }
            changed_at = Instant::now();
        }
        let waited = t0.elapsed();
        if waited >= cfg.timeout {
            return Err(Timeout(format!(
                "gave up after {} waiting for lock {} held by {holder}: raise --lock-timeout; if that \
                 seeder is gone, its lease is taken over after it has not changed for {}",
                humantime::format_duration(Duration::from_secs(waited.as_secs())),
                lock_path.display(),
                humantime::format_duration(Duration::from_secs(stale.as_secs()))
            ))
            .into());
        }
        if said_at.is_none_or(|t| t.elapsed() >= SAY_EVERY) {
            said_at = Some(Instant::now());
            let mut fields = Lease::fields(&raw);
            fields["waited_secs"] = json!(waited.as_secs());
            fields["lease_unchanged_secs"] = json!(changed_at.elapsed().as_secs());
            log.event(
                Level::Info,
                "lock-wait",
                &format!(
                    "waiting for lock {} held by {holder}; lease last changed {}s ago; waited {}s of {}",
                    lock_path.display(),
                    changed_at.elapsed().as_secs(),
                    waited.as_secs(),
                    humantime::format_duration(cfg.timeout)
                ),
                fields,
            );
        }
        drop(f);
        std::thread::sleep(POLL.min(cfg.timeout.saturating_sub(waited)));
    }
}

/// SQLite's "database is locked" (SQLITE_BUSY: the busy handler gave up after
/// `--lock-timeout`) among `e`'s causes, as a [`Timeout`] naming the lock of the Nix
/// database in `db_dir` (the target's `var/nix/db`); any other error as it is.
///
/// `outcome` says what the giving up left (e.g. "nothing was changed").
pub fn db_busy_as_timeout(e: anyhow::Error, db_dir: &Path, timeout: Duration, outcome: &str) -> anyhow::Error {
    let busy = e.chain().any(|c| {
        matches!(c.downcast_ref::<rusqlite::Error>(),
                 Some(rusqlite::Error::SqliteFailure(f, _)) if f.code == rusqlite::ErrorCode::DatabaseBusy)
    });
    if !busy {
        return e;
    }
    let db = db_dir.join(crate::nixdb::DB_FILE);
    Timeout(format!(
        "gave up after {} waiting for the lock of the Nix database {} (with use-sqlite-wal = false, the \
         directory {}.lock): a Nix process holds it, or one killed while holding it left it behind \
         (rmdir it if no Nix process uses this store); {outcome}; run again, or raise --lock-timeout",
        humantime::format_duration(timeout),
        db.display(),
        db.display()
    ))
    .into()
}

#[cfg(test)]
mod tests {
    use super::lease::{HEARTBEAT_FIELD, LEASE_MAGIC};
    use super::*;

    #[test]
    fn a_waiter_waits_for_several_of_the_holders_heartbeats_whatever_its_own_stale() {
        let cfg = |s| Config {
            timeout: Duration::from_secs(60),
            stale: Duration::from_secs(s),
        };
        let lease = |every_ms: Option<&str>| {
            let mut s = format!("{LEASE_MAGIC}\npod=p\nheartbeat=1 2\n");
            if let Some(ms) = every_ms {
                s.push_str(&format!("{HEARTBEAT_FIELD}={ms}\n"));
            }
            s.into_bytes()
        };
        // A default holder (60 s: beats every 5 s).
        let every = cfg(60).heartbeat();
        assert_eq!(every, HEARTBEAT_MAX);
        let ms = every.as_millis().to_string();
        assert_eq!(cfg(3).stale_for(&lease(Some(&ms))), Duration::from_secs(30));
        assert_eq!(cfg(60).stale_for(&lease(Some(&ms))), Duration::from_secs(60));
        // A holder with the smallest stale beats at the fastest pace: takeover after 3 s.
        let ms = cfg(3).heartbeat().as_millis().to_string();
        assert_eq!(cfg(3).stale_for(&lease(Some(&ms))), MIN_STALE);
        assert_eq!(MIN_STALE, HEARTBEAT_MIN * STALE_BEATS);
        // Older versions (no period), garbage, empty: the slowest heartbeat any version has.
        for raw in [lease(None), lease(Some("x")), b"garbage".to_vec(), Vec::new()] {
            assert_eq!(cfg(3).stale_for(&raw), HEARTBEAT_MAX * STALE_BEATS);
        }
        // Untrusted: bounded both ways.
        assert_eq!(cfg(3).stale_for(&lease(Some("0"))), MIN_STALE);
        assert_eq!(
            cfg(3).stale_for(&lease(Some("99999999999"))),
            HEARTBEAT_HONOURED_MAX * STALE_BEATS
        );
    }
}
