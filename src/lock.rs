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

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, renameat, OFlag};
use nix::sys::stat::{fstat, mkdirat, Mode, SFlag};
use serde_json::json;

use crate::dirfd::{file_type, lstat_at, open_dir};
use crate::plan::STATE_DIR;
use crate::progress::{Level, Log};

pub const LOCK_NAME: &str = "lock";
const TAKEOVER_NAME: &str = "takeover";
const LEASE_MAGIC: &str = "nix-seed lease v1";
const MAX_LEASE: usize = 4096;
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
/// The lease field with the holder's heartbeat period in milliseconds.
const HEARTBEAT_FIELD: &str = "heartbeat_every_ms";

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

/// Notices another seeder's lease in the lock file while this one holds the lock: then
/// the filesystem's clients do not share `flock` (sshfs), and both "hold" it. Checked at
/// every heartbeat and at release (a short seed may not live to its first heartbeat).
struct Intruders {
    mine: Mutex<String>,
    warned: AtomicBool,
    log: Arc<Log>,
    path: PathBuf,
}

impl Intruders {
    fn check(&self, file: &File) {
        if self.warned.load(Ordering::Relaxed) {
            return;
        }
        let now = read_lease(file);
        if now.is_empty() || now == self.mine.lock().unwrap().as_bytes() {
            return;
        }
        self.warned.store(true, Ordering::Relaxed);
        self.log.warn(&format!(
            "the lock {} is not exclusive on this filesystem: {} wrote its lease while this \
             seeder held it (the filesystem's clients do not share flock, as with sshfs); \
             concurrent seeders may fail but never publish a partial copy; run one seeder at a \
             time here",
            self.path.display(),
            Lease::describe(&now)
        ));
    }
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

/// Who holds the lock, as far as the (untrusted) lease says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Lease {
    pub host: Option<String>,
    pub pod: Option<String>,
    pub node: Option<String>,
    pub pid: Option<String>,
    pub started: Option<String>,
    pub heartbeat: Option<String>,
    /// The holder's heartbeat period, if its lease says (versions before it did not).
    pub heartbeat_every: Option<Duration>,
}

impl Lease {
    pub fn parse(raw: &[u8]) -> Option<Lease> {
        let raw = &raw[..raw.len().min(MAX_LEASE)];
        let text = String::from_utf8_lossy(raw);
        let mut lines = text.lines();
        if lines.next()?.trim() != LEASE_MAGIC {
            return None;
        }
        let mut l = Lease::default();
        for line in lines {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = Some(sanitize(v));
            match k.trim() {
                "host" => l.host = v,
                "pod" => l.pod = v,
                "node" => l.node = v,
                "pid" => l.pid = v,
                "started" => l.started = v,
                "heartbeat" => l.heartbeat = v,
                HEARTBEAT_FIELD => l.heartbeat_every = v.and_then(|v| v.parse().ok()).map(Duration::from_millis),
                _ => {}
            }
        }
        Some(l)
    }

    pub fn describe(raw: &[u8]) -> String {
        if raw.iter().all(|b| b.is_ascii_whitespace()) {
            return "an unknown holder (no lease written yet)".into();
        }
        let Some(l) = Lease::parse(raw) else {
            return "an unknown holder (the lock file does not hold a nix-seed lease)".into();
        };
        let q = |o: &Option<String>| o.clone().unwrap_or_else(|| "?".into());
        let mut s = format!("pod {} (host {}, pid {}", q(&l.pod), q(&l.host), q(&l.pid));
        if let Some(n) = &l.node {
            s.push_str(&format!(", node {n}"));
        }
        if let Some(t) = l.started.as_deref().and_then(|t| t.parse::<u64>().ok()) {
            let when = UNIX_EPOCH + Duration::from_secs(t);
            s.push_str(&format!(", since {}", humantime::format_rfc3339_seconds(when)));
        }
        s.push(')');
        s
    }

    fn fields(raw: &[u8]) -> serde_json::Value {
        match Lease::parse(raw) {
            Some(l) => json!({"holder_pod": l.pod, "holder_host": l.host, "holder_pid": l.pid,
                              "holder_node": l.node, "holder_started": l.started}),
            None => json!({"holder": null}),
        }
    }
}

/// Printable ASCII only, at most 100 characters: a lease may contain anything.
fn sanitize(v: &str) -> String {
    v.trim()
        .chars()
        .filter(|c| c.is_ascii_graphic() || *c == ' ')
        .take(100)
        .collect()
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

struct Me {
    host: String,
    pod: String,
    node: Option<String>,
    pid: u32,
    started: u64,
    every: Duration,
}

impl Me {
    fn new(every: Duration) -> Me {
        let host = nix::unistd::gethostname().map_or_else(|_| "?".into(), |h| h.to_string_lossy().into_owned());
        Me {
            pod: std::env::var("HOSTNAME").unwrap_or_else(|_| host.clone()),
            host,
            node: std::env::var("NODE_NAME").ok().filter(|s| !s.is_empty()),
            pid: std::process::id(),
            started: now_unix(),
            every,
        }
    }

    fn lease(&self, beat: u64) -> String {
        let mut s = format!(
            "{LEASE_MAGIC}\nhost={}\npod={}\npid={}\nstarted={}\nheartbeat={} {}\n{HEARTBEAT_FIELD}={}\nversion={}\n",
            sanitize(&self.host),
            sanitize(&self.pod),
            self.pid,
            self.started,
            beat,
            now_unix(),
            self.every.as_millis(),
            env!("CARGO_PKG_VERSION")
        );
        if let Some(n) = &self.node {
            s.push_str(&format!("node={}\n", sanitize(n)));
        }
        s
    }
}

fn write_lease(f: &File, text: &str) -> std::io::Result<()> {
    f.write_all_at(text.as_bytes(), 0)?;
    f.set_len(text.len() as u64)
}

fn read_lease(f: &File) -> Vec<u8> {
    let mut buf = vec![0u8; MAX_LEASE];
    let n = f.read_at(&mut buf, 0).unwrap_or(0);
    buf.truncate(n);
    buf
}

/// `TARGET/.nix-seed`, created if needed, never followed if it is a symlink.
pub fn state_dir(target: BorrowedFd, target_path: &Path) -> Result<OwnedFd> {
    match mkdirat(target, STATE_DIR, Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}/{STATE_DIR}", target_path.display())),
    }
    open_dir(target, STATE_DIR).map_err(|e| {
        anyhow::anyhow!(
            "cannot open {}/{STATE_DIR} ({e}): it must be a directory, not a symlink or file; remove it",
            target_path.display()
        )
    })
}

fn open_lock_file(dir: BorrowedFd, name: &str, path: &Path, excl: bool) -> Result<File> {
    // O_NONBLOCK: a FIFO planted at the name must not hang the open.
    let mut flags = OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    if excl {
        flags |= OFlag::O_EXCL;
    }
    let fd = openat(dir, name, flags, Mode::from_bits_truncate(0o644))
        .map_err(|e| crate::preflight::Invalid(crate::dirfd::open_problem(e, path)))?;
    let st = fstat(fd.as_fd())?;
    if file_type(&st) != SFlag::S_IFREG {
        return Err(crate::preflight::Invalid(format!(
            "lock file {} is not a regular file: remove it",
            path.display()
        ))
        .into());
    }
    Ok(File::from(fd))
}

fn try_flock(f: &File) -> Result<bool, Errno> {
    match Errno::result(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) {
        Ok(_) => Ok(true),
        Err(Errno::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Whether the name `lock` still refers to the file we hold.
fn is_current(dir: BorrowedFd, f: &File) -> std::io::Result<bool> {
    let mine = fstat(f.as_fd())?;
    Ok(lstat_at(dir, LOCK_NAME)?.is_some_and(|st| st.st_dev == mine.st_dev && st.st_ino == mine.st_ino))
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
pub fn db_busy_as_timeout(e: anyhow::Error, db_dir: &Path, timeout: Duration) -> anyhow::Error {
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
         (rmdir it if no Nix process uses this store); nothing was registered, the next run registers \
         what was copied; run again, or raise --lock-timeout",
        humantime::format_duration(timeout),
        db.display(),
        db.display()
    ))
    .into()
}

/// Replace a stale lock file by a fresh one we hold, if it is still the stale one.
fn take_over(dir: BorrowedFd, lock_path: &Path, stale_ino: u64, stale_raw: &[u8], me: &Me) -> Result<Option<File>> {
    let tpath = lock_path.with_file_name(TAKEOVER_NAME);
    let guard = open_lock_file(dir, TAKEOVER_NAME, &tpath, false)?;
    if !try_flock(&guard).unwrap_or(false) {
        return Ok(None); // someone else is taking over right now
    }
    // Re-check under the takeover lock: is it still the same stale lease?
    let cur = open_lock_file(dir, LOCK_NAME, lock_path, false)?;
    if try_flock(&cur).unwrap_or(false) && is_current(dir, &cur)? {
        return Ok(Some(cur)); // released meanwhile
    }
    if fstat(cur.as_fd())?.st_ino != stale_ino || read_lease(&cur) != stale_raw {
        return Ok(None);
    }
    let fresh_name: OsString = format!("{LOCK_NAME}.new.{}", std::process::id()).into();
    let _ = nix::unistd::unlinkat(dir, fresh_name.as_os_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    let fresh = open_lock_file(dir, fresh_name.to_str().unwrap_or("lock.new"), lock_path, true)?;
    if !try_flock(&fresh).unwrap_or(false) {
        bail!("cannot lock a new lock file next to {}", lock_path.display());
    }
    write_lease(&fresh, &me.lease(0)).with_context(|| format!("cannot write lease to {}", lock_path.display()))?;
    renameat(dir, fresh_name.as_os_str(), dir, LOCK_NAME)
        .with_context(|| format!("cannot replace {}", lock_path.display()))?;
    drop(guard);
    Ok(Some(fresh))
}

impl Held {
    fn start(
        file: File,
        dir: Arc<OwnedFd>,
        me: Arc<Me>,
        cfg: &Config,
        log: &Arc<Log>,
        path: PathBuf,
        t0: Instant,
    ) -> Result<Held> {
        let first = me.lease(0);
        write_lease(&file, &first).with_context(|| format!("cannot write lease to {}", path.display()))?;
        let waited = t0.elapsed();
        if waited > Duration::from_millis(500) {
            log.info(&format!(
                "took lock {} after waiting {}s",
                path.display(),
                waited.as_secs()
            ));
        }
        let file = Arc::new(file);
        let lost = Arc::new(AtomicBool::new(false));
        let hb_stop = Arc::new((Mutex::new(false), Condvar::new()));
        let every = cfg.heartbeat();
        let intruders = Arc::new(Intruders {
            mine: Mutex::new(first),
            warned: AtomicBool::new(false),
            log: log.clone(),
            path: path.clone(),
        });
        let hb = {
            let (file, lost, hb_stop, log, path, intruders) = (
                file.clone(),
                lost.clone(),
                hb_stop.clone(),
                log.clone(),
                path.clone(),
                intruders.clone(),
            );
            let dir = dir.clone();
            std::thread::spawn(move || {
                let mut beat = 0u64;
                let (m, cv) = &*hb_stop;
                let mut stopped = m.lock().unwrap();
                loop {
                    stopped = cv.wait_timeout(stopped, every).unwrap().0;
                    if *stopped {
                        return;
                    }
                    beat += 1;
                    let still = is_current(dir.as_fd(), &file).unwrap_or(false);
                    if still {
                        intruders.check(&file);
                    }
                    let mine = me.lease(beat);
                    *intruders.mine.lock().unwrap() = mine.clone();
                    if !still || write_lease(&file, &mine).is_err() {
                        lost.store(true, Ordering::Relaxed);
                        log.error(&format!(
                            "lost lock {}: another seeder took it over (this one was stalled past \
                             --lock-stale) or the target became unwritable; stopping",
                            path.display()
                        ));
                        return;
                    }
                }
            })
        };
        Ok(Held {
            file,
            lost,
            hb_stop,
            hb: Some(hb),
            path,
            intruders,
            dir,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_roundtrip_and_garbage() {
        let me = Me {
            host: "node-1".into(),
            pod: "ide-abc".into(),
            node: Some("n1".into()),
            pid: 42,
            started: 0,
            every: Duration::from_millis(1500),
        };
        let l = Lease::parse(me.lease(3).as_bytes()).unwrap();
        assert_eq!(l.pod.as_deref(), Some("ide-abc"));
        assert_eq!(l.pid.as_deref(), Some("42"));
        assert_eq!(l.heartbeat_every, Some(Duration::from_millis(1500)));
        assert!(Lease::describe(me.lease(3).as_bytes()).contains("pod ide-abc (host node-1, pid 42, node n1"));
        assert!(Lease::describe(b"").contains("no lease"));
        assert!(Lease::describe(b"\x00\xff garbage").contains("unknown holder"));
        let huge = vec![b'x'; 10 << 20];
        assert!(Lease::describe(&huge).contains("unknown holder"));
        let evil = format!("{LEASE_MAGIC}\npod=\x1b[31mred\x1b[0m{}\n", "y".repeat(5000));
        let d = Lease::describe(evil.as_bytes());
        assert!(!d.contains('\x1b'));
        assert!(d.len() < 300, "{d}");
    }

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
