//! Real Nix garbage collections acting on a target while nix-seed seeds it: one slowed-down
//! `nix-store --gc` run as a pod would run it ([`Gc`]), or a loop of them ([`GcStorm`]).
//!
//! What Nix 2.8's `nix-store --gc` does on a store (seen with strace): it takes
//! `var/nix/big-lock` (`LOCK_SH`), then `var/nix/gc.lock` with `flock(LOCK_EX|LOCK_NB)`
//! (blocking `LOCK_EX` if that fails: "waiting for the big garbage collector lock..."),
//! creating `var/nix/`, its database and the lock files if they do not exist; finds the
//! roots, then reads `store/` and deletes every entry that is not reachable from a root:
//! valid but unrooted paths (with their database rows) and every entry that is not a valid
//! path (unregistered copies, nix-seed's `.nix-seed-tmp-*` temporaries; only `.links` is
//! skipped), each with `unlinkat` (`AT_REMOVEDIR` for directories), each deletion under
//! the database's `db.sqlite.lock` dotfile lock (`rmdir`). It holds `gc.lock` until it
//! exits. A GC is slowed with strace: `flock` returns late (so the GC holds `gc.lock` for
//! that long before it reads the store) and every `unlinkat` enters late.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::cmd::text;
use super::nix::{nix_config, nix_seed_db_is_wal};

/// How much strace slows a garbage collection down.
#[derive(Debug, Clone, Copy)]
pub struct Slow {
    /// Added to the return of every `flock`: the GC holds `gc.lock` at least this long
    /// before it reads the store.
    pub flock_us: u64,
    /// Added before every `unlinkat`: each deletion (of a file, a directory) takes this long.
    pub unlink_us: u64,
}

impl Slow {
    /// A GC that holds `gc.lock` for 1.5 s before it reads the store, then deletes slowly.
    pub const DEFAULT: Slow = Slow {
        flock_us: 1_500_000,
        unlink_us: 100_000,
    };
    /// Unslowed.
    pub const NONE: Slow = Slow {
        flock_us: 0,
        unlink_us: 0,
    };
}

/// A shell command run as a pod runs it: `nix` bind-mounted at /nix in a private mount
/// namespace, with `use-sqlite-wal = wal` (unlike [`super::nix::in_pod`], not chosen from
/// the database: a pod with Nix's default settings has `wal = true`). Started in its own
/// process group.
pub fn pod_cmd(nix: &Path, script: &str, wal: bool) -> Command {
    let mut c = Command::new("unshare");
    c.arg("-m")
        .arg("sh")
        .arg("-c")
        .arg(format!(
            "mkdir -p /nix && mount --bind '{}' /nix && {script}",
            nix.display()
        ))
        .env("NIX_CONFIG", nix_config(wal))
        .stdin(Stdio::null())
        .process_group(0);
    c
}

/// [`pod_cmd`], run to completion.
pub fn in_pod_wal(nix: &Path, script: &str, wal: bool) -> Output {
    pod_cmd(nix, script, wal).output().unwrap()
}

/// The `nix-store --gc` a pod runs on the target `nix`, slowed by `slow`, with
/// `use-sqlite-wal = false` (or as the target's database is, if it is in WAL mode).
pub fn gc_cmd(nix: &Path, slow: Slow) -> Command {
    let wal = nix.join("var/nix/db/db.sqlite").exists() && nix_seed_db_is_wal(nix);
    let script = if slow.flock_us == 0 && slow.unlink_us == 0 {
        "exec nix-store --gc".to_string()
    } else {
        let strace = super::find_tool("strace").expect("strace");
        let mut s = format!("exec '{}' -f -qq -o /dev/null", strace.display());
        if slow.flock_us > 0 {
            s += &format!(" -e inject=flock:delay_exit={}", slow.flock_us);
        }
        if slow.unlink_us > 0 {
            s += &format!(" -e inject=unlinkat:delay_enter={}", slow.unlink_us);
        }
        s + " nix-store --gc"
    };
    pod_cmd(nix, &script, wal)
}

/// Whether some process holds `nix/var/nix/gc.lock` exclusively (a garbage collection):
/// a shared `flock` on it would block. The probe's shared lock is released at once.
pub fn gc_lock_held(nix: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = std::fs::File::open(nix.join("var/nix/gc.lock")) else {
        return false;
    };
    // SAFETY: flock on an fd we own.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

/// One garbage collection running in the background; waited for (or killed, with its
/// whole process group, if the test is panicking) on drop.
pub struct Gc {
    child: Option<Child>,
    nix: PathBuf,
}

impl Gc {
    pub fn start(nix: &Path, slow: Slow) -> Gc {
        let child = gc_cmd(nix, slow)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start nix-store --gc");
        Gc {
            child: Some(child),
            nix: nix.to_path_buf(),
        }
    }

    /// Wait until the GC holds `gc.lock`; false if it did not within `timeout` (it may be
    /// waiting for the lock, or be done already).
    pub fn wait_holding(&mut self, timeout: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if gc_lock_held(&self.nix) {
                return true;
            }
            if self.exited() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Whether the GC has exited.
    pub fn exited(&mut self) -> bool {
        self.child.as_mut().is_none_or(|c| c.try_wait().unwrap().is_some())
    }

    /// Wait until the GC exits or `timeout` passes; true if it exited.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.exited() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// Wait for the GC to finish; its output (panics if it failed).
    pub fn finish(mut self) -> Output {
        let o = self.child.take().unwrap().wait_with_output().unwrap();
        assert!(o.status.success(), "nix-store --gc failed:\n{}", text(&o));
        o
    }
}

impl Drop for Gc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            if std::thread::panicking() {
                // SAFETY: kill of the process group the child leads.
                unsafe { libc::kill(-(c.id() as i32), libc::SIGKILL) };
            }
            let _ = c.wait();
        }
    }
}

/// What a [`GcStorm`] did.
#[derive(Debug, Default, Clone)]
pub struct StormStats {
    /// Collections that ran to completion.
    pub collections: usize,
    /// Store paths they deleted (Nix's "deleting '/nix/store/…'" lines).
    pub deleted: Vec<String>,
    /// Output of collections that failed (Nix's error, e.g. a database it cannot open).
    pub failures: Vec<String>,
    /// Collections killed by [`GcStorm::stop_within`] because they did not finish in time
    /// (e.g. blocked on a `db.sqlite.lock` a killed seeder left).
    pub killed: usize,
}

/// A loop of slowed-down garbage collections on one target, each run as a pod runs it,
/// one after the other with a pause of up to `gap` between them, until stopped. Stopping
/// (or dropping) lets the collection under way finish, so the target is quiet afterwards;
/// while the test is panicking, drop kills it instead.
pub struct GcStorm {
    stop: Arc<AtomicBool>,
    killed: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    current: Arc<Mutex<Option<u32>>>,
    thread: Option<JoinHandle<StormStats>>,
    nix: PathBuf,
}

impl GcStorm {
    pub fn start(nix: &Path, slow: Slow, gap: Duration) -> GcStorm {
        let stop = Arc::new(AtomicBool::new(false));
        let killed = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let current = Arc::new(Mutex::new(None));
        let thread = {
            let (stop, killed, done, current, nix) = (
                stop.clone(),
                killed.clone(),
                done.clone(),
                current.clone(),
                nix.to_path_buf(),
            );
            std::thread::spawn(move || {
                let mut stats = StormStats::default();
                let mut rng = Rng::new(0);
                while !stop.load(Ordering::Relaxed) {
                    let child = gc_cmd(&nix, slow)
                        .stdout(Stdio::piped())
                        .stderr(Stdio::piped())
                        .spawn()
                        .expect("start nix-store --gc");
                    *current.lock().unwrap() = Some(child.id());
                    let o = child.wait_with_output().unwrap();
                    *current.lock().unwrap() = None;
                    let err = String::from_utf8_lossy(&o.stderr);
                    done.fetch_add(1, Ordering::Relaxed);
                    if o.status.success() {
                        stats.collections += 1;
                        stats.deleted.extend(
                            err.lines()
                                .filter_map(|l| l.strip_prefix("deleting '"))
                                .filter_map(|l| l.strip_suffix('\''))
                                .map(str::to_string),
                        );
                    } else if killed.load(Ordering::Relaxed) {
                        stats.killed += 1;
                    } else {
                        stats.failures.push(text(&o));
                    }
                    let pause = rng.below(gap.as_millis() as u64 + 1);
                    std::thread::sleep(Duration::from_millis(pause));
                }
                stats
            })
        };
        GcStorm {
            stop,
            killed,
            done,
            current,
            thread: Some(thread),
            nix: nix.to_path_buf(),
        }
    }

    /// Collections finished so far (completed or failed).
    pub fn collections(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }

    /// Wait until a collection of the storm holds `gc.lock` (false after `timeout`).
    pub fn wait_holding(&self, timeout: Duration) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if self.current.lock().unwrap().is_some() && gc_lock_held(&self.nix) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// Wait until `n` collections have finished (false after `timeout`).
    pub fn wait_collections(&self, n: usize, timeout: Duration) -> bool {
        let t0 = Instant::now();
        while self.collections() < n {
            if t0.elapsed() > timeout {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    /// Stop: with `one_more`, after one more whole collection (one that starts after now)
    /// has run; the collection under way is given until `timeout` to finish, then killed
    /// with its process group (counted in [`StormStats::killed`]). What the storm did.
    pub fn stop_within(mut self, one_more: bool, timeout: Duration) -> StormStats {
        let t0 = Instant::now();
        if one_more {
            let n = self.collections() + 2;
            self.wait_collections(n, timeout);
        }
        self.stop.store(true, Ordering::Relaxed);
        let t = self.thread.take().unwrap();
        while !t.is_finished() {
            if t0.elapsed() > timeout {
                self.killed.store(true, Ordering::Relaxed);
                if let Some(pid) = *self.current.lock().unwrap() {
                    // SAFETY: kill of the process group the collection leads.
                    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        t.join().unwrap()
    }
}

impl Drop for GcStorm {
    fn drop(&mut self) {
        let Some(t) = self.thread.take() else { return };
        self.stop.store(true, Ordering::Relaxed);
        if std::thread::panicking() {
            if let Some(pid) = *self.current.lock().unwrap() {
                // SAFETY: kill of the process group the collection leads.
                unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            }
        }
        let _ = t.join();
    }
}

/// A small deterministic PRNG (xorshift64*), seeded from `NIX_SEED_STORM_SEED` or the clock
/// when `seed` is 0, so a failing round can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        let s = if seed != 0 {
            seed
        } else {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                ^ u64::from(std::process::id())
        };
        Rng(s | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in `0..n` (0 if `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }
}

/// `/nix/store/<name>` of the one valid path of the Nix root `image` whose name ends with
/// `suffix` (e.g. `-seed-added-v2.txt`).
pub fn store_path(image: &Path, suffix: &str) -> String {
    let all = super::nix::valid_paths(image);
    let m: Vec<&String> = all.iter().filter(|p| p.ends_with(suffix)).collect();
    assert_eq!(
        m.len(),
        1,
        "one valid path ending in {suffix} in {}: {m:?}",
        image.display()
    );
    m[0].clone()
}

/// What a pod that fetched `paths` (and their closure) from the image does to the target:
/// `nix-store --export` of the closure in the image, `nix-store --import` in the target
/// (real Nix: the paths are valid, with the image's references, and rooted by nothing).
pub fn fetch_into(target: &Path, image: &Path, paths: &[String], scratch: &Path) {
    let nar = scratch.join(format!("fetch-{}.nar", std::process::id()));
    let o = super::nix::in_pod(
        image,
        &format!(
            "nix-store --export $(nix-store -qR {}) > '{}'",
            paths.join(" "),
            nar.display()
        ),
    );
    assert!(o.status.success(), "nix-store --export in the image:\n{}", text(&o));
    let o = super::nix::in_pod(target, &format!("nix-store --import < '{}'", nar.display()));
    assert!(o.status.success(), "nix-store --import in the target:\n{}", text(&o));
    let _ = std::fs::remove_file(&nar);
    let o = super::nix::in_pod(target, &format!("nix-store --check-validity {}", paths.join(" ")));
    assert!(o.status.success(), "fetched paths valid:\n{}", text(&o));
}

/// What Nix says about `image`'s closure in `target` ([`super::nix::assert_nix_accepts`]:
/// validity, references, GC roots, contents): `Err(why)` instead of a panic, for tests
/// that count failures over rounds.
pub fn nix_verdict(target: &Path, image: &Path) -> Result<(), String> {
    let (t, i) = (target.to_path_buf(), image.to_path_buf());
    std::panic::catch_unwind(move || super::nix::assert_nix_accepts(&t, &i)).map_err(|e| {
        e.downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into())
    })
}

/// Wait until process `pid` is stopped (SIGSTOP, e.g. a `=stop` failpoint) or has exited;
/// true if stopped.
pub fn wait_stopped(child: &mut Child, timeout: Duration) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", child.id())).unwrap_or_default();
        // pid (comm) S ...: the state follows the last ')'.
        if stat.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('T')) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}
