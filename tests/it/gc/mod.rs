//! `nix-seed gc` (issue #20; docs/gc.md): a collector safe on a store shared by pods.
//! Pods are simulated by mount and PID namespaces on one shared root (`support::pods`),
//! with real Nix 2.8 (and 2.26 where cheap) as the oracle.
//!
//! * `control`: Nix's own collector, run from another pod, deletes a pod's build result
//!   (indirect root) and an in-flight build's input (temp roots unlinked by PID); the same
//!   scenarios with `nix-seed gc` keep them.
//! * `temproots`: live temp-roots files protect, stale ones do not and are removed.
//! * `collect`: old garbage is deleted, exactly what Nix's collector would delete in a
//!   namespace where it is safe; real Nix then finds the store consistent.
//! * `crash`: killed at each failpoint, consistent, and a rerun finishes.
//! * `edges`: roots of unusual shapes (as Nix finds them), a WAL database, a missing dead
//!   path, non-store names, garbage symlinks, prune then gc, clocks ahead.
//! * `concurrent`: beside a seed, pods adding paths, a second gc.
//! * `netfs`: GlusterFS through two FUSE clients.
//! * `modern`: Nix 2.26 as a second oracle, and as a client of the gc socket.
//! * `output`: --max-freed, the JSON event, the termination log.
//! * `socket`: what a pod's Nix is told during the deletion holds.
//! * `bad_input`: exit 2, nothing changed; planted symlinks never lead gc outside the disk.
//!
//! `cargo test --test it gc::` runs them all (about 2.5 minutes on 2 cores; `gc::netfs`
//! brings the GlusterFS harness up if it is not, and leaves it up).

mod bad_input;
mod collect;
mod concurrent;
mod control;
mod crash;
mod edges;
mod modern;
mod netfs;
mod output;
mod socket;
mod temproots;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use crate::support::cmd::{nix_seed, text};
use crate::support::pods::Disk;

/// One `nix-seed gc --target T`, with the environment of [`nix_seed`] (no `NIX_SEED_*`
/// of the caller's: text logs).
pub struct Gc {
    cmd: Command,
}

impl Gc {
    pub fn new(target: &Path) -> Gc {
        let mut cmd = nix_seed();
        cmd.arg("gc").arg("--target").arg(target);
        Gc { cmd }
    }

    pub fn args<I, S>(mut self, args: I) -> Gc
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.cmd.args(args);
        self
    }

    /// `NIX_SEED_FAILPOINT=spec`.
    pub fn failpoint(mut self, spec: &str) -> Gc {
        self.cmd.env("NIX_SEED_FAILPOINT", spec);
        self
    }

    pub fn env(mut self, k: &str, v: impl AsRef<OsStr>) -> Gc {
        self.cmd.env(k, v);
        self
    }

    pub fn output(mut self) -> Output {
        self.cmd.output().expect("run nix-seed gc")
    }

    #[track_caller]
    pub fn ok(self) -> Output {
        let o = self.output();
        assert!(o.status.success(), "nix-seed gc failed:\n{}", text(&o));
        o
    }

    /// Start it; stdout and stderr to files `log.out`, `log.err` (no pipe to block on).
    pub fn spawn(mut self, log: &Path) -> Child {
        self.cmd
            .stdout(std::fs::File::create(log.with_extension("out")).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .expect("spawn nix-seed gc")
    }
}

/// The output of a child started by [`Gc::spawn`] with `log`.
pub fn finish(mut child: Child, log: &Path) -> Output {
    let status = child.wait().unwrap();
    Output {
        status,
        stdout: std::fs::read(log.with_extension("out")).unwrap_or_default(),
        stderr: std::fs::read(log.with_extension("err")).unwrap_or_default(),
    }
}

pub fn all(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The store paths named right after `marker` ("deleted ", "would delete ", "kept ") in
/// the lines of `o`, with the rest of each line.
fn named_after(o: &Output, marker: &str) -> BTreeMap<String, String> {
    let pat = format!("{marker}/nix/store/");
    let mut m = BTreeMap::new();
    for line in all(o).lines() {
        if let Some(i) = line.find(&pat) {
            let rest = &line[i + marker.len()..];
            let end = rest
                .find(|c: char| c.is_whitespace() || c == ':' || c == '"' || c == ',')
                .unwrap_or(rest.len());
            m.insert(rest[..end].to_string(), rest[end..].to_string());
        }
    }
    m
}

/// `deleted /nix/store/X` lines (-v).
pub fn deleted(o: &Output) -> BTreeSet<String> {
    named_after(o, "deleted ").into_keys().collect()
}

/// `would delete /nix/store/X` lines (--dry-run).
pub fn would_delete(o: &Output) -> BTreeSet<String> {
    named_after(o, "would delete ").into_keys().collect()
}

/// `kept /nix/store/X: why` lines (--dry-run): path → the rest of the line.
pub fn kept(o: &Output) -> BTreeMap<String, String> {
    named_after(o, "kept ")
}

/// The lines that name an unresolved indirect root: the design's `unresolved indirect
/// root LINK -> TARGET`, or `kept LINK: an indirect root to TARGET, outside the disk ...`
/// as the implementation words it. Each must name the link and its target.
pub fn unresolved_roots(o: &Output) -> Vec<String> {
    all(o)
        .lines()
        .filter(|l| {
            l.contains("unresolved indirect root ") || (l.contains("an indirect root to ") && l.contains("outside"))
        })
        .map(str::to_string)
        .collect()
}

/// Store entries of a Nix root by name (not the dot-files: .links, .nix-seed-*).
pub fn store_names(nix: &Path) -> BTreeSet<String> {
    std::fs::read_dir(nix.join("store"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect()
}

/// `/nix/store/<name>` for each name.
pub fn as_paths(names: &BTreeSet<String>) -> BTreeSet<String> {
    names.iter().map(|n| format!("/nix/store/{n}")).collect()
}

/// Leftovers of a gc run (its renamed entries, `.nix-seed-gc-*` in the design; the
/// implementation names them `.nix-seed-tmp-*` like the seeder's temporaries): every
/// `store/.nix-seed-*`.
pub fn leftovers(nix: &Path) -> Vec<String> {
    std::fs::read_dir(nix.join("store"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".nix-seed-"))
        .collect()
}

/// The disk's database, opened as Nix opens it: with a rollback journal (what pods on a
/// shared disk use: `use-sqlite-wal = false`), Nix locks with SQLite's unix-dotfile VFS,
/// so a writer here must too (POSIX locks alone would not keep a pod's Nix out).
pub fn db(nix: &Path) -> rusqlite::Connection {
    let path = nix.join("var/nix/db/db.sqlite");
    let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE;
    if crate::support::nix::nix_seed_db_is_wal(nix) {
        rusqlite::Connection::open_with_flags(&path, flags).unwrap()
    } else {
        rusqlite::Connection::open_with_flags_and_vfs(&path, flags, c"unix-dotfile").unwrap()
    }
}

pub fn valid(nix: &Path) -> BTreeSet<String> {
    crate::support::nix::valid_paths(nix).into_iter().collect()
}

pub fn registration_time(nix: &Path, path: &str) -> Option<i64> {
    db(nix)
        .query_row("SELECT registrationTime FROM ValidPaths WHERE path = ?1", [path], |r| {
            r.get(0)
        })
        .ok()
}

/// Make valid `paths` old: registered `days` ago, and every file's atime `days` ago (which
/// sets its ctime to now: atime before ctime, i.e. not read since it was written).
pub fn age(nix: &Path, paths: &BTreeSet<String>, days: i64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let c = db(nix);
    for p in paths {
        let n = c
            .execute(
                "UPDATE ValidPaths SET registrationTime = ?1 WHERE path = ?2",
                rusqlite::params![now - days * 86400, p],
            )
            .unwrap();
        assert_eq!(n, 1, "{p} is not a valid path");
        let o = Command::new("find")
            .arg(nix.join(p.strip_prefix("/nix/").unwrap()))
            .args(["-exec", "touch", "-h", "-a", "-d"])
            .arg(format!("{days} days ago"))
            .args(["{}", "+"])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
    }
}

/// Every valid path, made old (see [`age`]).
pub fn age_all(nix: &Path, days: i64) {
    age(nix, &valid(nix), days);
}

/// Nix's collector's verdict, in a pod of its own (no other pod running): the paths it
/// would delete (`nix-store --gc --print-dead`).
pub fn print_dead(disk: &Disk) -> BTreeSet<String> {
    let out = disk.pod("print-dead").ok("exec nix-store --gc --print-dead");
    out.lines()
        .map(str::to_string)
        .filter(|l| l.starts_with("/nix/store/"))
        .collect()
}

/// What real Nix says about the store after a gc:
/// * every registered path exists on the disk;
/// * every reference of every valid path (`nix-store -q --references`) is valid;
/// * `nix-store --verify --check-contents` finds nothing wrong (on a copy under `scratch`);
/// * no `.nix-seed-*` leftovers when `finished`.
#[track_caller]
pub fn assert_consistent(disk: &Disk, scratch: &Path, finished: bool) {
    let nix = disk.nix();
    let valid = valid(nix);
    let missing: Vec<&String> = valid
        .iter()
        .filter(|p| disk.host(p).symlink_metadata().is_err())
        .collect();
    assert!(missing.is_empty(), "registered but missing from the store: {missing:?}");
    if !valid.is_empty() {
        let list: Vec<&str> = valid.iter().map(String::as_str).collect();
        let out = disk
            .pod("refs")
            .ok(&format!("exec nix-store -q --references {}", list.join(" ")));
        let dangling: BTreeSet<&str> = out.lines().filter(|r| !valid.contains(*r)).collect();
        assert!(
            dangling.is_empty(),
            "references to paths that are not valid: {dangling:?}"
        );
    }
    let copy = scratch.join(format!("verify-{}", std::process::id()));
    crate::support::nix::assert_contents_verify(nix, &copy);
    if finished {
        assert!(leftovers(nix).is_empty(), "leftovers: {:?}", leftovers(nix));
    }
}

/// `cp -a from to` (to replaced).
pub fn cp_a(from: &Path, to: &Path) {
    if to.exists() {
        crate::support::make_writable(to);
        std::fs::remove_dir_all(to).unwrap();
    }
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
}

/// A file with `content` in `dir` for `nix-store --add`.
pub fn file(dir: &Path, name: &str, content: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, content).unwrap();
    p
}

/// The store path a pod printed last on stdout.
pub fn last_path(out: &str) -> String {
    out.lines()
        .rev()
        .find(|l| l.starts_with("/nix/store/"))
        .unwrap_or_else(|| panic!("no store path in {out:?}"))
        .to_string()
}
