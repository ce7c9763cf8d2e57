//! Content checks before anything is registered: a path is registered only if its NAR
//! hash is what the image registered, whenever nix-seed has a reason to doubt it.
//!
//! - `--verify`: every path this run copied is hashed; one that does not match is removed
//!   (it was published by this run and is not registered: no pod can rely on it) and the
//!   run fails. A corrupt image thus fails on every retry instead of being registered by
//!   the second one.
//! - A path of the image present in the target but not registered there, that this run
//!   did not copy (an interrupted run, a plain `cp`, a pod's half-finished download): kept
//!   if it hashes to its registration, otherwise swapped for a fresh copy, and the
//!   fresh copy is hashed too before it may be registered.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use anyhow::Result;

use crate::base::preflight::Checked;
use crate::base::progress::Log;
use crate::engines::copy::Engine;
use crate::engines::nixdb::{SourceDb, ValidPath};

/// What the checks found.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Present-but-unregistered paths hashed, and how many of them were replaced.
    pub checked: u64,
    pub replaced: u64,
    /// Paths hashed by `--verify`.
    pub verified: usize,
    /// Files and bytes written by replacements.
    pub files: u64,
    pub bytes: u64,
    /// What does not match the image: one line per problem (a path can have several).
    pub problems: Vec<String>,
    /// Store paths that do not match (removed from the target).
    pub mismatched: usize,
}

/// Whether `name` in `store` hashes to what `p` registers.
fn matches(store: BorrowedFd, name: &OsStr, p: &ValidPath) -> std::result::Result<(), String> {
    match crate::engines::nar::hash_path(store, name, None) {
        Ok(h) if h.hash == p.hash && p.nar_size.is_none_or(|n| n as u64 == h.size) => Ok(()),
        Ok(h) => Err(format!(
            "NAR hash {} ({} bytes), registered as {} ({} bytes)",
            h.hash,
            h.size,
            p.hash,
            p.nar_size.map_or("?".to_string(), |n| n.to_string())
        )),
        Err(e) => Err(format!("cannot hash it: {e:#}")),
    }
}

/// Remove a store path this run published (or swapped in) and found wrong. Claimed by a
/// rename first, so the name disappears at once.
fn remove_ours(store: BorrowedFd, name: &OsStr, shown: &Path, log: &Log) {
    let claim = crate::base::dirfd::temp_name(OsStr::new("mismatch"));
    if let Err(e) = nix::fcntl::renameat(store, name, store, claim.as_os_str())
        .map_err(std::io::Error::from)
        .and_then(|()| crate::base::dirfd::remove_tree_at(store, &claim))
    {
        log.warn(&format!("cannot remove {}: {e}", shown.display()));
    }
}

/// `--verify`: hash every path in `copied` (all published by this run) with `jobs`
/// threads; remove those that do not match the image's database.
#[allow(clippy::too_many_arguments)]
pub fn verify_copies(
    c: &Checked,
    store: BorrowedFd,
    src: &SourceDb,
    origin: &dyn Fn(&str) -> String,
    copied: &HashSet<OsString>,
    jobs: usize,
    log: &Log,
    out: &mut Outcome,
) {
    let by_name = src.by_name();
    let items: Vec<crate::engines::nar::Expect> = copied
        .iter()
        .filter_map(|n| by_name.get(n.to_str()?))
        .map(|p| crate::engines::nar::Expect {
            path: p.path.clone(),
            hash: p.hash.clone(),
            nar_size: p.nar_size,
        })
        .collect();
    let problems = crate::engines::nar::check(store, &items, jobs);
    out.verified = items.len();
    for p in &items {
        let mine: Vec<&String> = problems
            .iter()
            .filter(|l| {
                l.strip_prefix(p.path.as_str())
                    .is_some_and(|r| r.starts_with([':', '/']))
            })
            .collect();
        if mine.is_empty() {
            continue;
        }
        let name = OsStr::new(crate::base::store_path::store_name(&p.path));
        remove_ours(store, name, &c.layout.store.join(name), log);
        out.mismatched += 1;
        for line in mine {
            out.problems
                .push(format!("--verify: {line} ({}; copy removed)", origin(&p.path)));
        }
    }
}

/// Every image path in `present` that the target does not register and this run did not
/// copy: keep it if it matches, else replace it by a fresh copy that must match.
#[allow(clippy::too_many_arguments)]
pub fn check_unregistered(
    engine: &Engine,
    c: &Checked,
    store: BorrowedFd,
    src: &SourceDb,
    origin: &dyn Fn(&str) -> String,
    present: &HashSet<OsString>,
    copied: &HashSet<OsString>,
    registered: &HashSet<String>,
    log: &Log,
    out: &mut Outcome,
) -> Result<()> {
    for p in &src.paths {
        let name = OsStr::new(p.name());
        if !present.contains(name) || copied.contains(name) || registered.contains(p.name()) {
            continue;
        }
        let shown = c.layout.store.join(name);
        out.checked += 1;
        let Err(why) = matches(store, name, p) else {
            continue;
        };
        log.warn(&format!(
            "{} is present but unregistered and differs from the image's ({why}; {}): replacing it with a fresh \
             copy",
            shown.display(),
            origin(&p.path)
        ));
        let (files, bytes, problem) = engine.replace_store_path(
            (&c.source_store_path, c.source_store.as_fd()),
            (&c.layout.store, store),
            name,
        )?;
        if let Some(p) = problem {
            log.warn(&p);
        }
        out.replaced += 1;
        out.files += files;
        out.bytes += bytes;
        if let Err(why) = matches(store, name, p) {
            remove_ours(store, name, &shown, log);
            out.mismatched += 1;
            out.problems.push(format!(
                "{}: the image's copy does not match its registration either ({why}; {}): the image is \
                 corrupt; removed, not registered; rebuild the image",
                shown.display(),
                origin(&p.path)
            ));
        }
    }
    Ok(())
}
