//! One seeder at a time across all nodes: a kernel lock plus a lease.
//!
//! The lock file is `TARGET/.nix-seed/lock`. The holder keeps `flock(LOCK_EX)` on it and
//! writes a lease into it (host, pod, pid, start time, a heartbeat counter) that it
//! rewrites every few seconds. Waiters try the kernel lock, print who they wait for, and
//! watch the lease. Two ways out for a waiter:
//! - the kernel releases the lock (holder exited or was SIGKILLed; on a network
//!   filesystem, when the server notices the client is gone): it takes the lock at its
//!   next attempt (within 2 s; see the back-off below);
//! - the lease has not changed, on the waiter's own monotonic clock and while the kernel
//!   still says "held" (a node lost with its lock never released), for the larger of
//!   `--lock-stale` and [`STALE_BEATS`] of the holder's heartbeat periods (the lease says
//!   its period; a lease that does not, from an older version or garbled, counts as
//!   [`HEARTBEAT_MAX`]): it takes over by renaming a fresh, locked lock file over the old
//!   one. So no waiter's flags can take the lock from a holder that renews its lease at
//!   its own pace. Takeovers are serialised by `TARGET/.nix-seed/takeover` and re-check
//!   staleness under it, so two waiters never both take over.
//!
//! # Every lock nix-seed takes, by whom, in what order
//!
//! A `seed` takes, and holds until it ends: (1) this seed lock, `LOCK_EX` (seeders
//! exclude each other); (2) `var/nix/gc.lock`, `LOCK_SH` (a garbage collection holds
//! `LOCK_EX` for its whole run); (3) `var/nix/db/big-lock`, `LOCK_SH` (a Nix database
//! migration holds `LOCK_EX`; every Nix process `LOCK_SH`), both in `nixlocks`; then,
//! per transaction only, (4) the Nix database's own lock (SQLite's: the `db.sqlite.lock`
//! directory with the `unix-dotfile` VFS, shared with every Nix process; `nixdb::lock`),
//! and, while it switches a profile, (5) that profile's `NAME.lock`, `LOCK_EX`, as
//! `nix-env` takes it (`profiles::lock`). Always in this order, never an earlier one
//! while holding a later one. `prune` takes (1), then (4) per transaction; `images`
//! only (4), to read.
//!
//! # Waiting: one loop, backing off
//!
//! Every one of these waits is [`crate::base::wait`]: an attempt, then a pause of 100 ms
//! doubling to 2 s, each ±25% (never above 2 s), a message every 5 s naming what is waited
//! for (and here the holder, from its lease), a stop on SIGINT/SIGTERM, and [`Timeout`]
//! (exit 3) after `--lock-timeout`. A thousand pods starting on an empty disk then try
//! the lock about once every 2 s each, not ten times a second, and not in step. Here a
//! waiter starts again at 100 ms when the holder changes (another lock file, or a lease
//! from another host, pod, pid or start), and looks again the moment the lease it watches
//! would become stale, whatever the back-off. The takeover rules hold as before: a waiter
//! measures "unchanged" from the moment it first saw the lease's current content, which
//! is never before the holder wrote it, so backing off can only delay a takeover, never
//! hasten it (a live holder's heartbeat counter only grows: its lease never comes back
//! to a content seen before); and a dead holder is taken over at most one pause (≤ 2 s) later than by a
//! waiter that watched without pausing.
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

use crate::base::layout::{state_dir, STATE_DIR};
use crate::base::progress::{Level, Log};
use crate::base::wait::{Tried, Waiting};

mod file;
mod heartbeat;
pub mod lease;

use file::{is_current, open_lock_file, take_over, try_flock};
use heartbeat::Intruders;
pub use lease::Lease;
use lease::{read_lease, Me};

pub use crate::base::layout::LOCK_NAME;

/// How long a waiter that finds the lock held with no lease yet (its holder has just
/// taken it) keeps quiet, so that its first message can name the holder.
const LEASE_GRACE: Duration = Duration::from_secs(1);
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

use crate::base::error::Timeout;

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

/// The error of a seeder whose lock was taken over: [`crate::base::error::Stopped`] (exit 1,
/// "see above") when the heartbeat already said so, else the same words in one line.
pub fn lost(held: &Held) -> anyhow::Error {
    if held.lost.load(Ordering::Relaxed) {
        return crate::base::error::Stopped.into();
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

/// What a waiter knows about the holder after an attempt: for the messages.
struct Holder {
    raw: Vec<u8>,
    /// Since the lease last changed, on this waiter's clock.
    unchanged: Duration,
    /// After how long unchanged this waiter takes over ([`Config::stale_for`]).
    stale: Duration,
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
    let dir = Arc::new(state_dir(target, target_path).map_err(|e| crate::base::error::Invalid(format!("{e:#}")))?);
    let lock_path = target_path.join(STATE_DIR).join(LOCK_NAME);
    let me = Arc::new(Me::new(cfg.heartbeat()));
    let t0 = Instant::now();
    let mut seen: Option<(u64, Vec<u8>)> = None;
    let mut changed_at = Instant::now();
    let take = |f: File| Held::start(f, dir.clone(), me.clone(), cfg, log, lock_path.clone(), t0);

    let attempt = |w: &mut Waiting| loop {
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
                return take(f).map(Tried::Got);
            }
            continue;
        }

        let raw = read_lease(&f);
        let ino = fstat(f.as_fd())?.st_ino;
        if seen.as_ref() != Some(&(ino, raw.clone())) {
            // Another holder (not just its next heartbeat): the lock may soon be free.
            if seen
                .as_ref()
                .is_some_and(|(i, r)| *i != ino || Lease::holder(r) != Lease::holder(&raw))
            {
                w.holder_changed();
            }
            seen = Some((ino, raw.clone()));
            changed_at = Instant::now();
        }
        let stale = cfg.stale_for(&raw);
        if changed_at.elapsed() >= stale {
            log.event(
                Level::Warn,
                "lock-stale",
                &format!(
                    "lease on {} held by {} has not changed for {}s (the larger of --lock-stale {} and \
                     {STALE_BEATS} of the holder's heartbeats): taking over",
                    lock_path.display(),
                    Lease::describe(&raw),
                    changed_at.elapsed().as_secs(),
                    humantime::format_duration(cfg.stale)
                ),
                Lease::fields(&raw),
            );
            if let Some(f) = take_over(dir.as_fd(), &lock_path, ino, &raw, &me)? {
                return take(f).map(Tried::Got);
            }
            changed_at = Instant::now();
        }
        // A holder that has just taken the lock writes its lease next: name it rather
        // than "an unknown holder", unless it is still unwritten after LEASE_GRACE.
        if Lease::is_blank(&raw) && t0.elapsed() < LEASE_GRACE {
            w.say_not_yet();
        }
        // Look again when the lease would become stale, whatever the back-off.
        w.recheck_within(stale.saturating_sub(changed_at.elapsed()));
        return Ok(Tried::Held(Holder {
            raw,
            unchanged: changed_at.elapsed(),
            stale,
        }));
    };
    let say = |h: &Holder, waited: Duration| {
        let mut fields = Lease::fields(&h.raw);
        fields["waited_secs"] = json!(waited.as_secs());
        fields["lease_unchanged_secs"] = json!(h.unchanged.as_secs());
        log.event(
            Level::Info,
            "lock-wait",
            &format!(
                "waiting for lock {} held by {}; lease last changed {}s ago; waited {}s of {}",
                lock_path.display(),
                Lease::describe(&h.raw),
                h.unchanged.as_secs(),
                waited.as_secs(),
                humantime::format_duration(cfg.timeout)
            ),
            fields,
        );
    };
    let give_up = |h: &Holder, waited: Duration| {
        format!(
            "gave up after {} waiting for lock {} held by {}: raise --lock-timeout; if that seeder is \
             gone, its lease is taken over after it has not changed for {}",
            humantime::format_duration(Duration::from_secs(waited.as_secs())),
            lock_path.display(),
            Lease::describe(&h.raw),
            humantime::format_duration(Duration::from_secs(h.stale.as_secs()))
        )
    };
    crate::base::wait::wait(t0, cfg.timeout, interrupted, attempt, say, give_up)
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
    let db = db_dir.join(crate::engines::nixdb::DB_FILE);
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
