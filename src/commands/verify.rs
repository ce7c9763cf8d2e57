//! `nix-seed verify`: recompute each registered path's NAR hash and size and compare with
//! the database, in parallel; check Nix's canonical metadata (files 0444/0555,
//! directories 0555, mtime 1 everywhere). One line per problem.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::sync::Mutex;

use anyhow::Result;

use crate::base::dirfd::{lstat_at, open_dir, open_root};
use crate::engines::nar;
use crate::engines::nixdb;

/// One path to check: its store path and what is registered for it.
pub struct Expect {
    pub path: String,
    pub hash: String,
    pub nar_size: Option<i64>,
}

/// Check `items` against the store at `store` with `jobs` threads; returns problem lines,
/// sorted.
pub fn check(store: BorrowedFd, items: &[Expect], jobs: usize) -> Vec<String> {
    let problems = Mutex::new(Vec::new());
    // A problem is a finding, not an error: every item is checked.
    let all = crate::base::pool::run(
        items,
        jobs,
        &|| false,
        || (),
        |_, e| {
            let found = check_one(store, e);
            problems.lock().unwrap().extend(found);
            Ok(())
        },
        |()| {},
    );
    debug_assert!(all.is_ok());
    let mut v = problems.into_inner().unwrap();
    v.sort();
    v
}

fn check_one(store: BorrowedFd, e: &Expect) -> Vec<String> {
    let name = crate::base::store_path::store_name(&e.path);
    match lstat_at(store, name) {
        Ok(None) => return vec![format!("{}: registered but missing from the store", e.path)],
        Err(err) => return vec![format!("{}: cannot stat: {err}", e.path)],
        Ok(Some(_)) => {}
    }
    let mut irregular = Vec::new();
    let mut out = Vec::new();
    match nar::hash_path(store, std::ffi::OsStr::new(name), Some(&mut irregular)) {
        Err(err) => out.push(format!("{}: cannot serialise: {err}", e.path)),
        Ok(h) => {
            if h.hash != e.hash {
                out.push(format!("{}: NAR hash {} but {} is registered", e.path, h.hash, e.hash));
            }
            if let Some(n) = e.nar_size.filter(|n| *n as u64 != h.size) {
                out.push(format!("{}: NAR size {} but {n} is registered", e.path, h.size));
            }
        }
    }
    for i in irregular {
        let at = if i.rel.is_empty() {
            e.path.clone()
        } else {
            format!("{}/{}", e.path, i.rel)
        };
        out.push(format!("{at}: {}", i.what));
    }
    out
}

/// The registered paths of the target at `target` (or those named in `only`: store paths,
/// names, or paths ending in a name), and the problems found in them.
/// `nix-seed verify`: check, print one line per problem and a summary; a finding if any.
pub fn run(o: &Options, cx: &super::Ctx) -> Result<super::Done> {
    let log = cx.log;
    let jobs = crate::base::jobs::resolve(o.jobs, &o.target).n;
    let (n, problems) = verify_target(&o.target, &o.paths, jobs as usize)?;
    for p in &problems {
        log.event(crate::base::progress::Level::Warn, "mismatch", p, serde_json::json!({}));
    }
    log.summary(
        &format!(
            "verified {} in {}: {}",
            crate::base::progress::count(n as u64, "store path", "store paths"),
            o.target.display(),
            crate::base::progress::count(problems.len() as u64, "problem", "problems")
        ),
        serde_json::json!({"verified": n, "problems": problems.len()}),
    );
    Ok(super::Done::from_ok(problems.is_empty()))
}

/// What `verify` is asked to check.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: std::path::PathBuf,
    /// `--jobs`; `None`: chosen from the target's filesystem.
    pub jobs: Option<u32>,
    /// Only these (store paths, names, or paths ending in a name); all when empty.
    pub paths: Vec<String>,
    pub output: crate::base::progress::Output,
}

/// A target that cannot be verified at all is the caller's mistake: exit 2, like `status`.
fn unusable(target: &Path, what: std::fmt::Arguments) -> anyhow::Error {
    crate::base::error::Invalid(format!(
        "{} {what}: --target must be a Nix root that was seeded (it holds store/ and var/nix/db)",
        target.display()
    ))
    .into()
}

pub fn verify_target(target: &Path, only: &[String], jobs: usize) -> Result<(usize, Vec<String>)> {
    let root = open_root(target).map_err(|e| unusable(target, format_args!("cannot be opened ({e})")))?;
    let store =
        open_dir(root.as_fd(), "store").map_err(|e| unusable(target, format_args!("has no store/ directory ({e})")))?;
    let var =
        open_dir(root.as_fd(), "var").map_err(|e| unusable(target, format_args!("has no var/ directory ({e})")))?;
    let var_path = target.join(crate::base::layout::VAR);
    let db_dir = nixdb::open_db_dir(var.as_fd(), &var_path)?
        .filter(|d| crate::base::dirfd::has_file(d.as_fd(), std::ffi::OsStr::new(nixdb::DB_FILE)))
        .ok_or_else(|| unusable(target, format_args!("has no Nix database (var/nix/db/db.sqlite)")))?;
    let db = nixdb::open_target(db_dir.as_fd(), &var_path.join(nixdb::DB_DIR), true)?;
    let all = db.all()?;
    let mut problems = Vec::new();
    let items: Vec<Expect> = if only.is_empty() {
        all.into_iter()
            .map(|(path, hash, nar_size)| Expect { path, hash, nar_size })
            .collect()
    } else {
        let mut v = Vec::new();
        for want in only {
            let name = crate::base::store_path::store_name(want.trim_end_matches('/'));
            match all
                .iter()
                .find(|(p, _, _)| crate::base::store_path::store_name(p) == name)
            {
                Some((path, hash, nar_size)) => v.push(Expect {
                    path: path.clone(),
                    hash: hash.clone(),
                    nar_size: *nar_size,
                }),
                None => problems.push(format!("{want}: not registered in {}", db.path.display())),
            }
        }
        v
    };
    problems.extend(check(store.as_fd(), &items, jobs));
    Ok((items.len(), problems))
}
