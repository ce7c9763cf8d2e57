//! Checking store paths against their registrations: each path's NAR hash and size
//! recomputed and compared, and Nix's canonical metadata checked (files 0444/0555,
//! directories 0555, mtime 1 everywhere), on a pool of threads. Used by `verify` and by a
//! seed's content checks before it registers.

use std::os::fd::BorrowedFd;
use std::sync::Mutex;

use crate::base::dirfd::lstat_at;

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
    match super::hash_path(store, std::ffi::OsStr::new(name), Some(&mut irregular)) {
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
