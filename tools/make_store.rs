//! Build a sample fake `/nix` (DIR/store, DIR/var) with the integration-test fixture.
//!
//! cargo run --example make_store -- DIR [--paths N] [--big-mib M] [--seed S] [--no-var]
//!
//! Works as a non-root user (ownership changes are then skipped).

#[path = "../tests/it/support/fixture.rs"]
#[allow(dead_code, reason = "this tool uses only the fixture's build")]
mod fixture;

use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::exit;

fn usage() -> ! {
    eprintln!("usage: make_store DIR [--paths N] [--big-mib M] [--seed S] [--no-var]");
    exit(2)
}

fn count(p: &Path, seen: &mut HashSet<(u64, u64)>, files: &mut u64, bytes: &mut u64) {
    let m = std::fs::symlink_metadata(p).expect("lstat");
    if m.is_dir() {
        for e in std::fs::read_dir(p).expect("readdir") {
            count(&e.expect("dirent").path(), seen, files, bytes);
        }
    } else if m.is_file() {
        *files += 1;
        if seen.insert((m.dev(), m.ino())) {
            *bytes += m.size();
        }
    }
}

fn main() {
    let mut args = std::env::args_os().skip(1);
    let mut dir: Option<PathBuf> = None;
    let mut spec = fixture::Spec::default();
    while let Some(a) = args.next() {
        let mut num = |what: &str| -> u64 {
            args.next()
                .and_then(|v| v.to_str().and_then(|s| s.parse().ok()))
                .unwrap_or_else(|| {
                    eprintln!("{what} needs a number");
                    usage()
                })
        };
        match a.to_str() {
            Some("--paths") => spec.paths = num("--paths") as usize,
            Some("--big-mib") => spec.big_file_bytes = (num("--big-mib") as usize) << 20,
            Some("--seed") => spec.seed = num("--seed"),
            Some("--no-var") => spec.with_var = false,
            Some("-h" | "--help") => usage(),
            Some(s) if s.starts_with('-') => usage(),
            _ if dir.is_none() => dir = Some(PathBuf::from(a)),
            _ => usage(),
        }
    }
    let dir = dir.unwrap_or_else(|| usage());
    let fx = fixture::build(&dir, &spec);
    let (mut seen, mut files, mut bytes) = (HashSet::new(), 0, 0);
    for n in &fx.names {
        count(&fx.root.join("store").join(n), &mut seen, &mut files, &mut bytes);
    }
    println!(
        "{}: {} store paths, {} files ({} distinct inodes), {} bytes",
        fx.root.display(),
        fx.names.len(),
        files,
        seen.len(),
        bytes
    );
}
