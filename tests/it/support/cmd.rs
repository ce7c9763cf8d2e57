//! Running the nix-seed binary as users do.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

pub fn nix_seed() -> Command {
    let mut c = Command::new(super::bin());
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

/// `nix-seed seed --source SRC --target DST --allow-non-mountpoint ARGS...`
pub fn seed_cmd(src: &Path, dst: &Path, args: &[&str]) -> Command {
    let mut c = nix_seed();
    c.arg("seed")
        .arg("--source")
        .arg(src)
        .arg("--target")
        .arg(dst)
        .arg("--allow-non-mountpoint");
    c.args(args);
    c
}

pub fn seed(src: &Path, dst: &Path, args: &[&str]) -> Output {
    seed_cmd(src, dst, args).output().expect("run nix-seed")
}

pub fn spawn_seed(src: &Path, dst: &Path, args: &[&str]) -> Child {
    seed_cmd(src, dst, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn nix-seed")
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
