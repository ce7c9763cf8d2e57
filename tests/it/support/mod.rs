//! Shared support code for nix-seed integration tests.
//!
//! The `support` module of the integration-test binary (`tests/it/main.rs`); test modules
//! use it as `crate::support`.
//!
//! * [`fixture`]: builds a fake `/nix` root (`<root>/store`, `<root>/var`) full of hard cases.
//! * [`compare`]: exact store / var comparison, snapshots, temp-file checks.
//! * [`mounts`]: loop-device filesystems (ext4, xfs, btrfs) and tmpfs, unmounted on drop.
//! * [`netfs`]: the network-filesystem harness (GlusterFS, sshfs) and seeders run on it.
//! * [`setup`]: `nixtest!`, `moderntest!`, `roottest!`: a test and what it needs, and its [`Setup`].
//! * [`cmd`]: running nix-seed as users do; [`cmd::Seed`] builds every `nix-seed seed` of the tests.

pub mod cmd;
pub mod compare;
pub mod dbless;
pub mod fixture;
pub mod images;
pub mod modern;
pub mod mounts;
pub mod netfs;
pub mod nix;
pub mod pods;
pub mod profiles;
#[macro_use]
pub mod setup;
pub mod storm;

pub use setup::Setup;

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// Path of the `nix-seed` binary built by cargo for this test run.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_nix-seed"))
}

/// True when running with effective uid 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn in_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty())
}

/// Skip policy shared by `require_*`: in CI a missing requirement is a hard failure,
/// locally the test prints a loud SKIPPED line and the caller returns early.
pub fn skip_or_panic(test: &str, why: &str) -> bool {
    if in_ci() {
        panic!("{test}: {why}, and CI is set: CI must run these tests as root with all tools installed");
    }
    // Write to the stderr handle directly: unlike `eprintln!`, this bypasses the test
    // harness's output capture, so the line shows up in a plain `cargo test` run.
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "\n========== SKIPPED {test}: {why} ==========\n");
    false
}

/// `true` if running as root. Otherwise panics when `$CI` is set (non-empty), or prints
/// `SKIPPED <test>: needs root` to stderr and returns `false`. A test that needs root is
/// declared with `roottest!` (or `nixtest!`, see [`setup`]), which calls this with its name.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    skip_or_panic(test, "needs root")
}

/// Locate an executable by name on `$PATH`, then in `/usr/local/sbin`, `/usr/sbin`, `/sbin`
/// (a non-login root shell may lack the sbin directories).
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let is_exec = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if tool.contains('/') {
        let p = PathBuf::from(tool);
        return is_exec(&p).then_some(p);
    }
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from));
    dirs.into_iter().map(|d| d.join(tool)).find(|p| is_exec(p))
}

/// `true` if `tool` is an available executable (see [`find_tool`]). Otherwise same policy
/// as [`require_root`]: panic under `$CI`, else print `SKIPPED <tool>: ...` and return `false`.
pub fn require_tool(tool: &str) -> bool {
    if find_tool(tool).is_some() {
        return true;
    }
    skip_or_panic(tool, &format!("needs executable `{tool}` on PATH"))
}

/// A temporary directory that can be removed even when it contains read-only (0555)
/// directories, as Nix stores do. Derefs to [`Path`].
///
/// On drop: lazily unmounts anything still mounted below it (deepest first), makes every
/// directory below it writable ([`make_writable`]), then removes the tree.
pub struct Scratch {
    dir: Option<tempfile::TempDir>,
}

impl Scratch {
    pub fn path(&self) -> &Path {
        self.dir.as_ref().expect("scratch dir").path()
    }

    /// Keep the directory on disk (for debugging) and return its path.
    #[allow(
        dead_code,
        reason = "a debugging aid: put it in a failing test to keep its scratch directory"
    )]
    pub fn keep(mut self) -> PathBuf {
        self.dir.take().expect("scratch dir").keep()
    }
}

impl std::ops::Deref for Scratch {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.path()
    }
}

impl AsRef<Path> for Scratch {
    fn as_ref(&self) -> &Path {
        self.path()
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        let path = dir.path().to_path_buf();
        let mut below: Vec<PathBuf> = mounts::mount_points()
            .into_iter()
            .filter(|m| m.starts_with(&path) && *m != path)
            .collect();
        below.sort_by_key(|m| std::cmp::Reverse(m.as_os_str().len()));
        for m in below {
            eprintln!("support::Scratch: lazily unmounting leftover mount {}", m.display());
            let _ = std::process::Command::new("umount").arg("-l").arg(&m).status();
        }
        make_writable(&path);
        if let Err(e) = std::fs::remove_dir_all(&path) {
            eprintln!("support::Scratch: cannot remove {}: {e}", path.display());
        }
        // `dir`'s own drop now finds nothing left to remove.
        drop(dir);
    }
}

/// Create a scratch directory under `$NIX_SEED_TEST_DIR` if set (created if missing), else
/// under [`std::env::temp_dir`]. Returns a [`Scratch`] (not a bare `TempDir`).
pub fn scratch() -> Scratch {
    let base = match std::env::var_os("NIX_SEED_TEST_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => std::env::temp_dir(),
    };
    std::fs::create_dir_all(&base).unwrap_or_else(|e| panic!("create {}: {e}", base.display()));
    let dir = tempfile::Builder::new()
        .prefix("nix-seed-test.")
        .tempdir_in(&base)
        .unwrap_or_else(|e| panic!("tempdir in {}: {e}", base.display()));
    Scratch { dir: Some(dir) }
}

/// `chmod u+rwx` every directory under `path` (including `path`), not following symlinks
/// and not crossing into other filesystems' special files. Errors are ignored.
pub fn make_writable(path: &Path) {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return;
    };
    if !meta.is_dir() {
        return;
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o700 != 0o700 {
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode | 0o700));
    }
    let Ok(rd) = std::fs::read_dir(path) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            make_writable(&e.path());
        }
    }
}

/// Lossy display of a byte path (for panic messages).
pub fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An `OsString` from raw bytes.
pub fn os(bytes: &[u8]) -> OsString {
    std::ffi::OsStr::from_bytes(bytes).to_os_string()
}

/// Wait (up to 60 s) until process `pid` is stopped (a failpoint's `=stop` raised SIGSTOP).
pub fn wait_stopped(pid: u32) {
    let t0 = std::time::Instant::now();
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // The state follows the parenthesised command name.
        if stat.rsplit_once(") ").is_some_and(|(_, rest)| rest.starts_with('T')) {
            return;
        }
        assert!(
            !stat.is_empty() && t0.elapsed() < std::time::Duration::from_secs(60),
            "process {pid} never reached its failpoint (stat: {stat:?})"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Let process `pid` (a child stopped at a failpoint: [`wait_stopped`]) go on.
pub fn cont(pid: u32) {
    // SAFETY: a signal to a process of this test.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
}

/// Wait until `cond` holds (polled every 5 ms), or panic after `secs`.
#[track_caller]
pub fn wait_for(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let t0 = std::time::Instant::now();
    while !cond() {
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(secs),
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// How many entries `<dst>/store` has (0 if it does not exist yet).
pub fn store_entries(dst: &Path) -> usize {
    std::fs::read_dir(dst.join("store")).map_or(0, |d| d.count())
}
