//! Running the nix-seed binary as users do.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

pub fn nix_seed() -> Command {
    as_tests_run(Command::new(super::bin()))
}

/// `c`, a nix-seed command (this build's binary, or another architecture's under an
/// emulator: tests/it/arm64.rs), with the environment the tests run nix-seed in: no
/// `NIX_SEED_*` of the caller's, no termination log, stdin null.
pub fn as_tests_run(mut c: Command) -> Command {
    // Tests must not depend on the caller's environment.
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("NIX_SEED_") && k != "NIX_SEED_TEST_DIR" {
            c.env_remove(&k);
        }
    }
    c.env_remove("NIX_SEED_TEST_DIR");
    c.env("NIX_SEED_TERMINATION_LOG", "/nonexistent/termination-log");
    c.stdin(Stdio::null());
    c
}

/// One `nix-seed seed` as the tests run it: `nix-seed seed --source SRC --target DST
/// --allow-non-mountpoint ARGS...`, with the environment of [`nix_seed`] (no `NIX_SEED_*`
/// of the caller's, no termination log) and stdin null.
///
/// ```ignore
/// Seed::new(&fx.root, &dst).ok(); // exit 0, or the test fails with the exit code and output
/// let out = Seed::new(&fx.root, &dst).args(["--verify"]).output();
/// let child = Seed::new(&v2, &dst).failpoint("copied=stop").spawn(); // stdout, stderr piped
/// let out = Seed::image(&real_store_root, &dst).env("NIX_SEED_PROFILES", "keep").output();
/// ```
pub struct Seed {
    cmd: Command,
    src: PathBuf,
    dst: PathBuf,
    args: Vec<OsString>,
    allow_non_mountpoint: bool,
}

impl Seed {
    /// Seed the Nix root `src` (holding `store/` and `var/`) into `dst`.
    pub fn new(src: impl AsRef<Path>, dst: impl AsRef<Path>) -> Seed {
        Seed::with(nix_seed(), src, dst)
    }

    /// [`Seed::new`] run by `cmd` (made by [`as_tests_run`]) instead of this build's binary.
    pub fn with(cmd: Command, src: impl AsRef<Path>, dst: impl AsRef<Path>) -> Seed {
        Seed {
            cmd,
            src: src.as_ref().to_path_buf(),
            dst: dst.as_ref().to_path_buf(),
            args: Vec::new(),
            allow_non_mountpoint: true,
        }
    }

    /// Seed the image `root/nix` (`root` as [`super::nix::real_store`] returns it).
    pub fn image(root: impl AsRef<Path>, dst: impl AsRef<Path>) -> Seed {
        Seed::new(root.as_ref().join("nix"), dst)
    }

    /// More arguments, after `--allow-non-mountpoint`.
    pub fn args<I, S>(mut self, args: I) -> Seed
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args.extend(args.into_iter().map(|a| a.as_ref().to_os_string()));
        self
    }

    /// Without `--allow-non-mountpoint`: the target must be a mount point.
    pub fn on_a_mount_point(mut self) -> Seed {
        self.allow_non_mountpoint = false;
        self
    }

    /// `NIX_SEED_FAILPOINT=spec` (`name=stop`, `name=kill`, `name:nth`, ...).
    pub fn failpoint(self, spec: impl AsRef<OsStr>) -> Seed {
        self.env("NIX_SEED_FAILPOINT", spec)
    }

    /// One more environment variable.
    pub fn env(mut self, key: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> Seed {
        self.cmd.env(key, value);
        self
    }

    /// Run as user `uid` (the group stays root's unless [`Seed::gid`] sets it).
    pub fn uid(mut self, uid: u32) -> Seed {
        std::os::unix::process::CommandExt::uid(&mut self.cmd, uid);
        self
    }

    /// Run with group `gid`.
    pub fn gid(mut self, gid: u32) -> Seed {
        std::os::unix::process::CommandExt::gid(&mut self.cmd, gid);
        self
    }

    /// The command, for what the builder does not offer (stdout to a file, ...).
    pub fn command(mut self) -> Command {
        self.cmd
            .arg("seed")
            .arg("--source")
            .arg(&self.src)
            .arg("--target")
            .arg(&self.dst);
        if self.allow_non_mountpoint {
            self.cmd.arg("--allow-non-mountpoint");
        }
        self.cmd.args(&self.args);
        self.cmd
    }

    /// Run it to the end.
    pub fn output(self) -> Output {
        self.command().output().expect("run nix-seed")
    }

    /// Run it to the end and assert exit 0 (else fail with its exit code and output).
    #[track_caller]
    pub fn ok(self) -> Output {
        let o = self.output();
        assert_ok(&o);
        o
    }

    /// Start it, stdout and stderr piped.
    pub fn spawn(self) -> Child {
        self.command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nix-seed")
    }
}

pub fn status(src: &Path, dst: &Path) -> Output {
    nix_seed()
        .arg("status")
        .arg("--source")
        .arg(src)
        .arg("--target")
        .arg(dst)
        .output()
        .expect("run nix-seed")
}

pub fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    nix_seed().args(args).output().expect("run nix-seed")
}

pub fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[track_caller]
pub fn assert_ok(o: &Output) {
    assert!(o.status.success(), "nix-seed failed:\n{}", text(o));
}

#[track_caller]
pub fn assert_code(o: &Output, code: i32) {
    assert_eq!(o.status.code(), Some(code), "unexpected exit code:\n{}", text(o));
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// Store path names that JSON `copied` events (`-v --log-format json`) name.
pub fn copied_events(stderr: &str) -> Vec<String> {
    stderr
        .lines()
        .filter(|l| l.contains("\"event\":\"copied\""))
        .filter_map(|l| {
            let i = l.find("\"path\":\"")? + 8;
            let j = l[i..].find('"')?;
            Some(l[i..i + j].to_string())
        })
        .collect()
}
