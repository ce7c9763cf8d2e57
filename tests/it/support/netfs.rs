//! The network-filesystem harness (`scripts/netfs.sh`): GlusterFS volumes and sshfs on
//! loopback, each mounted twice as two nodes, for the `netfs` tests.
//!
//! The harness is brought up once per test process and left up (CI runs
//! `scripts/netfs.sh down` after the suite). [`netfs`] hands a test the mounts and a
//! process-wide lock: the tests that hold it never run at the same time (they measure
//! takeover times). [`VolDir`] is a test's own directory of a volume, seen through both
//! mounts; [`Seeder`] is a running `nix-seed seed` whose output is drained and time-stamped.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::cmd::{text, Seed};

/// `scripts/netfs.sh` of this checkout.
pub fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/netfs.sh")
}

/// Mount points and daemon PIDs, as `netfs.sh up`/`status` print them (`KEY=VALUE`).
#[derive(Clone, Debug)]
pub struct Netfs {
    pub vars: BTreeMap<String, String>,
}

impl Netfs {
    pub fn parse(out: &str) -> Netfs {
        let vars = out
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        Netfs { vars }
    }

    pub fn mount(&self, key: &str) -> PathBuf {
        let p = self
            .vars
            .get(key)
            .unwrap_or_else(|| panic!("netfs.sh did not print {key}: {:?}", self.vars));
        PathBuf::from(p)
    }

    pub fn pid(&self, key: &str) -> i32 {
        let v = self
            .vars
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in {:?}", self.vars));
        v.parse().unwrap_or_else(|_| panic!("{key}={v} is not a pid"))
    }
}

pub fn run_netfs(verb: &str) -> Result<Netfs, String> {
    run_netfs_args(&[verb])
}

/// `scripts/netfs.sh ARGS...`, e.g. `["delay", "1000"]`.
pub fn run_netfs_args(args: &[&str]) -> Result<Netfs, String> {
    let verb = args.join(" ");
    let t0 = Instant::now();
    let o = Command::new("bash")
        .arg(script())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script().display()))?;
    if !o.status.success() {
        return Err(format!("scripts/netfs.sh {verb} failed:\n{}", text(&o)));
    }
    if t0.elapsed() > Duration::from_secs(2) {
        eprintln!("netfs.sh {verb}: {:.1}s", t0.elapsed().as_secs_f64());
    }
    Ok(Netfs::parse(&String::from_utf8_lossy(&o.stdout)))
}

static FIRST_UP: OnceLock<Result<Netfs, String>> = OnceLock::new();
static SERIAL: Mutex<()> = Mutex::new(());

/// The harness for one test: brought up once per test process (a failure panics under
/// `$CI`, otherwise the test prints SKIPPED); every later test repairs it (`up` is a no-op
/// when everything is healthy, and remounts a dead mount). Holds the serialising lock.
pub fn netfs(test: &str) -> Option<(MutexGuard<'static, ()>, Netfs)> {
    if !super::require_root(test) {
        return None;
    }
    let guard = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut first = false;
    let r = FIRST_UP.get_or_init(|| {
        first = true;
        run_netfs("up")
    });
    let n = match r {
        Err(e) => {
            super::skip_or_panic(
                test,
                &format!("the network filesystem harness did not come up (scripts/netfs.sh up):\n{e}\n"),
            );
            return None;
        }
        Ok(n) if first => n.clone(),
        Ok(_) => run_netfs("up").unwrap_or_else(|e| panic!("{test}: {e}")),
    };
    Some((guard, n))
}

/// A fresh directory on a volume, the same directory seen through each of `mounts`.
pub struct VolDir {
    pub through: Vec<PathBuf>,
}

impl VolDir {
    pub fn new(test: &str, mounts: &[PathBuf]) -> VolDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let name = format!("{test}-{}-{nanos}", std::process::id());
        let through: Vec<PathBuf> = mounts.iter().map(|m| m.join(&name)).collect();
        std::fs::create_dir(&through[0]).unwrap_or_else(|e| panic!("mkdir {}: {e}", through[0].display()));
        for p in &through[1..] {
            super::wait_for(10, &format!("{} to be visible", p.display()), || p.is_dir());
        }
        VolDir { through }
    }

    pub fn a(&self) -> &Path {
        &self.through[0]
    }

    pub fn b(&self) -> &Path {
        &self.through[1]
    }
}

// ---------------------------------------------------------------------------------------
// Seeders

/// A running seeder whose stdout and stderr are drained by threads (a seeder blocked on a
/// full pipe would hold the lock forever); stderr lines are time-stamped as they arrive.
pub struct Seeder {
    pub name: String,
    pub child: Child,
    pub lines: Arc<Mutex<Vec<(Instant, String)>>>,
    pub err_thread: Option<JoinHandle<()>>,
    pub out_thread: Option<JoinHandle<Vec<u8>>>,
}

pub struct Finished {
    pub name: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
    pub lines: Vec<(Instant, String)>,
}

impl Finished {
    pub fn text(&self) -> String {
        format!(
            "seeder {}: {}\n--- stdout\n{}--- stderr\n{}",
            self.name, self.status, self.stdout, self.stderr
        )
    }

    /// When the first stderr line containing `pat` arrived.
    pub fn saw(&self, pat: &str) -> Option<Instant> {
        self.lines.iter().find(|(_, l)| l.contains(pat)).map(|(t, _)| *t)
    }
}

impl Seeder {
    pub fn spawn(name: &str, src: &Path, dst: &Path, args: &[&str]) -> Seeder {
        // The lease names the pod ($HOSTNAME) and node ($NODE_NAME).
        let mut child = Seed::new(src, dst)
            .args(args)
            .env("HOSTNAME", name)
            .env("NODE_NAME", format!("node-of-{name}"))
            .spawn();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let err = child.stderr.take().unwrap();
        let l2 = lines.clone();
        let err_thread = std::thread::spawn(move || {
            let mut r = BufReader::new(err);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        let s = String::from_utf8_lossy(&buf).trim_end_matches('\n').to_string();
                        l2.lock().unwrap().push((Instant::now(), s));
                    }
                }
            }
        });
        let mut out = child.stdout.take().unwrap();
        let out_thread = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = out.read_to_end(&mut v);
            v
        });
        Seeder {
            name: name.to_string(),
            child,
            lines,
            err_thread: Some(err_thread),
            out_thread: Some(out_thread),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn saw(&self, pat: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|(_, l)| l.contains(pat))
    }

    pub fn exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Wait up to `secs` for the seeder to exit; false if it is still running.
    pub fn exits_within(&mut self, secs: u64) -> bool {
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(secs) {
            if self.exited() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.exited()
    }

    pub fn kill(&self, sig: i32) {
        // SAFETY: plain kill(2) of our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    pub fn wait(mut self) -> Finished {
        let status = self.child.wait().unwrap();
        self.err_thread.take().unwrap().join().unwrap();
        let stdout = String::from_utf8_lossy(&self.out_thread.take().unwrap().join().unwrap()).into_owned();
        let lines = std::mem::take(&mut *self.lines.lock().unwrap());
        let stderr = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
        Finished {
            name: self.name.clone(),
            status,
            stdout,
            stderr,
            lines,
        }
    }
}

impl Drop for Seeder {
    fn drop(&mut self) {
        // A test that panics must not leave seeders running on the shared volume.
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn wait_all(seeders: Vec<Seeder>) -> Vec<Finished> {
    // Every seeder's pipes are already drained by its own threads.
    seeders.into_iter().map(Seeder::wait).collect()
}
