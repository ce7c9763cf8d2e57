//! `nix-seed verify`: recompute each registered path's NAR hash and size and compare with
//! the database, in parallel; check Nix's canonical metadata (files 0444/0555,
//! directories 0555, mtime 1 everywhere). One line per problem.

use std::os::fd::AsFd;
use std::path::Path;

use anyhow::Result;

use crate::base::dirfd::{open_dir, open_root};
use crate::engines::nar::{check, Expect};
use crate::engines::nixdb;

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

/// The registered paths of the target at `target` (or those named in `only`: store paths,
/// names, or paths ending in a name), and the problems found in them.
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
