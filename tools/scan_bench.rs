//! What reference scanning costs on top of NAR hashing (issue #18): an image without a
//! database is registered from `nar::hash_and_scan`, and the scan must not make seeding
//! much slower than the hashing it already does.
//!
//! cargo run --release --example scan_bench -- DIR [--jobs N]
//!
//! Serialises every store path in DIR/store (or, if there is none, every entry of DIR)
//! three times: once to warm the page cache (untimed), once hashing only
//! (`nar::hash_path`), once hashing and scanning with the names of that store as
//! candidates (`nar::scan_all`), each on N threads (default: the cores). Prints NAR bytes,
//! seconds, MiB/s and MiB/s per thread for both, and the references found. Compare with
//! `time (find DIR -type f | xargs cat | sha256sum)`.

use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::process::exit;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use nix_seed::engines::nar::{self, Candidates};

fn usage() -> ! {
    eprintln!("usage: scan_bench DIR [--jobs N]   (DIR/store or DIR holds the store paths)");
    exit(2)
}

fn args() -> (PathBuf, usize) {
    let mut dir = None;
    let mut jobs = std::thread::available_parallelism().map_or(1, usize::from);
    let mut it = std::env::args_os().skip(1);
    while let Some(a) = it.next() {
        if a == "--jobs" {
            jobs = it
                .next()
                .and_then(|n| n.to_str()?.parse().ok())
                .filter(|&n| n > 0)
                .unwrap_or_else(|| usage());
        } else if dir.is_none() && !a.to_string_lossy().starts_with('-') {
            dir = Some(PathBuf::from(a));
        } else {
            usage();
        }
    }
    (dir.unwrap_or_else(|| usage()), jobs)
}

/// `nar::hash_path` of every name on `jobs` threads; the total NAR size.
fn hash_all(store: BorrowedFd, names: &[OsString], jobs: usize) -> u64 {
    let next = AtomicUsize::new(0);
    let total = AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                while let Some(n) = names.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let h = nar::hash_path(store, n, None).unwrap_or_else(|e| panic!("{}: {e}", n.to_string_lossy()));
                    total.fetch_add(h.size, Ordering::Relaxed);
                }
            });
        }
    });
    total.into_inner()
}

fn report(what: &str, bytes: u64, secs: f64, jobs: usize) {
    let mib = bytes as f64 / (1024.0 * 1024.0);
    println!(
        "{what:<14} {bytes:>14} NAR bytes  {secs:>8.3} s  {:>9.1} MiB/s  {:>8.1} MiB/s per thread",
        mib / secs,
        mib / secs / jobs as f64
    );
}

fn main() {
    let (dir, jobs) = args();
    let store_dir = if dir.join("store").is_dir() {
        dir.join("store")
    } else {
        dir
    };
    let store = nix_seed::base::dirfd::open_root(Path::new(&store_dir)).unwrap_or_else(|e| {
        eprintln!("scan_bench: {}: {e}", store_dir.display());
        exit(1)
    });
    let mut names: Vec<OsString> = nix_seed::base::dirfd::list(store.as_fd())
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .filter(|n| !n.to_string_lossy().starts_with('.'))
        .collect();
    names.sort();
    let cands = Candidates::new(names.iter().filter_map(|n| n.to_str()));
    println!(
        "{}: {} entries, {} candidates, {jobs} threads",
        store_dir.display(),
        names.len(),
        cands.len()
    );

    hash_all(store.as_fd(), &names, jobs); // warm the page cache
    let t = Instant::now();
    let bytes = hash_all(store.as_fd(), &names, jobs);
    report("hash only", bytes, t.elapsed().as_secs_f64(), jobs);

    let t = Instant::now();
    let all = nar::scan_all(store.as_fd(), &names, &cands, jobs, &|| false).unwrap_or_else(|e| {
        eprintln!("scan_bench: {e:#}");
        exit(1)
    });
    let secs = t.elapsed().as_secs_f64();
    let scanned: u64 = all.iter().map(|(_, s)| s.nar.size).sum();
    assert_eq!(scanned, bytes, "the store changed between the passes");
    report("hash and scan", scanned, secs, jobs);
    let refs: usize = all.iter().map(|(_, s)| s.references.len()).sum();
    println!("references found: {refs}");
}
