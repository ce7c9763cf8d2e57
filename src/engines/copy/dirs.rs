//! Copying a directory, and how the work of one store path is spread over threads.
//!
//! The unit of parallel work is a directory's subdirectory or a chunk of its other entries,
//! not a store path: a store with one big path (3,000 files, perhaps in one flat
//! directory) among many small ones would otherwise copy the big one on one thread while
//! the others idle, and on a network disk every file is a few round trips of waiting.
//!
//! The engine's `--jobs` threads are a rayon pool (work stealing, not hand-written). A
//! directory is copied inside a `rayon::scope`: it spawns one task per subdirectory and one
//! per [`CHUNK`] of other entries (sharing the directory's two open descriptors and its
//! listing), copies the last chunk itself, and when the scope ends (every child done) sets
//! the directory's own owner, mode (0555 only now) and times. A thread that waits for its
//! scope runs other tasks meanwhile, so waiting never deadlocks and never idles a thread
//! while work is queued. Store paths are tasks in the same pool (see `copy_store_paths`),
//! so small paths fill the gaps of big ones, and a path is published only after its whole
//! scope tree has ended.
//!
//! Bounded: at most [`PARALLEL_DIRS`] directories are copied this way at a time (each holds
//! two descriptors and its listing while its children run); a directory met beyond that
//! is copied by its task alone, depth first, as a serial copy would (its descriptors are
//! closed when it returns). Tasks are only ever spawned by those directories, one per
//! subdirectory or chunk, so the number of tasks waiting is bounded by the entries they
//! listed, never by the size of the store. Outside the pool (var/, GC roots, repairs)
//! everything runs serially on the caller's thread.
//!
//! Hardlinks keep their no-deadlock property: a file's copy runs with no wait and no pool
//! call in between, so a task waiting for another's copy of an inode only waits for a copy
//! that is running on another thread (see `hardlinks.rs`).

use std::fs::File;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use nix::dir::Type;
use nix::fcntl::AtFlags;
use nix::sys::stat::{fstatat, mkdirat, Mode};

use super::metadata::{self, Created, NewKind};
use super::tree::{Entry, Walk};
use super::Engine;
use crate::base::dirfd::{open_dir, Listed};
use crate::base::error::Stopped;

/// Entries (files and symlinks) per task: small enough that a flat directory of a few
/// thousand files spreads over every thread, large enough that spawning costs nothing next
/// to the round trips of copying them.
pub const CHUNK: usize = 32;

/// Directories copied by several tasks at once, over the whole engine.
pub const PARALLEL_DIRS: usize = 128;

/// A directory being copied: what its tasks share.
struct Dir {
    src: Listed,
    dst: File,
    rel: PathBuf,
}

/// A place among [`PARALLEL_DIRS`], given back when dropped.
pub struct DirSlot<'a>(&'a Engine);

impl Drop for DirSlot<'_> {
    fn drop(&mut self) {
        self.0.parallel_dirs.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Engine {
    fn dir_slot(&self) -> Option<DirSlot<'_>> {
        let mut n = self.parallel_dirs.load(Ordering::Relaxed);
        loop {
            if n >= PARALLEL_DIRS {
                return None;
            }
            match self
                .parallel_dirs
                .compare_exchange_weak(n, n + 1, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return Some(DirSlot(self)),
                Err(now) => n = now,
            }
        }
    }
}

impl Walk<'_> {
    /// Create the directory (0700: its children must be created), copy its children, then
    /// set its metadata.
    pub(super) fn dir(&self, e: Entry) -> Result<()> {
        mkdirat(e.dst_dir, e.dst_name, Mode::from_bits_truncate(0o700))
            .with_context(|| self.at("create directory", e.rel))?;
        let dst = File::from(open_dir(e.dst_dir, e.dst_name).with_context(|| self.at("open new directory", e.rel))?);
        let (owner, _) = e
            .seen
            .needs(NewKind::Dir, e.st, None, self.eng.ownership.preserved(), || {
                nix::sys::stat::fstat(dst.as_fd())
            })
            .with_context(|| self.at("stat new directory", e.rel))?;
        let src = Listed::open(e.src_dir, e.src_name)
            .with_context(|| format!("{}: cannot list", self.src_path.join(e.rel).display()))?;
        let d = Dir {
            src,
            dst,
            rel: e.rel.to_path_buf(),
        };
        let n = d.src.entries.len();
        let worth_spreading = n > CHUNK || d.src.entries.iter().any(|e| e.dtype == Some(Type::Directory));
        let slot = if self.parallel && worth_spreading {
            self.eng.dir_slot()
        } else {
            None
        };
        if slot.is_some() {
            self.spread(&d, e.seen);
            if self.stopping() {
                return Err(Stopped.into());
            }
        } else {
            for i in 0..n {
                self.child(&d, i, e.seen)?;
            }
        }
        drop(slot);
        metadata::finish_dir(&d.dst, e.st, &self.eng.ownership, owner)
            .with_context(|| self.at("set metadata of", e.rel))?;
        self.eng.counters.dirs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// The children of `d` as tasks of the pool: each subdirectory one, the other entries
    /// in chunks, the last chunk on this thread. Errors go to [`Walk::fail`].
    fn spread(&self, d: &Dir, seen: &Created) {
        let run = |ids: &[usize]| {
            for &i in ids {
                if let Err(e) = self.child(d, i, seen) {
                    self.fail(e);
                    return;
                }
            }
        };
        rayon::scope(|s| {
            let mut chunk = Vec::with_capacity(CHUNK);
            for (i, e) in d.src.entries.iter().enumerate() {
                if e.dtype == Some(Type::Directory) {
                    s.spawn(move |_| run(&[i]));
                    continue;
                }
                chunk.push(i);
                if chunk.len() == CHUNK {
                    let ids = std::mem::replace(&mut chunk, Vec::with_capacity(CHUNK));
                    s.spawn(move |_| run(&ids));
                }
            }
            run(&chunk);
        });
    }

    /// Copy the `i`th entry of `d`.
    fn child(&self, d: &Dir, i: usize, seen: &Created) -> Result<()> {
        if self.stopping() {
            return Err(Stopped.into());
        }
        let name = d.src.entries[i].name.as_os_str();
        let rel = d.rel.join(name);
        let st = fstatat(d.src.fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .with_context(|| format!("{}: cannot stat", self.src_path.join(&rel).display()))?;
        if self.filter.is_some_and(|f| !f(&rel, &st)) {
            return Ok(());
        }
        self.copy_entry(Entry {
            src_dir: d.src.fd(),
            src_name: name,
            st: &st,
            dst_dir: d.dst.as_fd(),
            dst_name: name,
            rel: &rel,
            seen,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::ffi::{OsStr, OsString};
    use std::os::fd::AsFd;
    use std::os::unix::fs::MetadataExt;
    use std::sync::Arc;

    use super::super::{tree, Counters, Engine, Events, TargetFs};

    struct Quiet;
    impl Events for Quiet {
        fn path_copied(&self, _: &OsStr, _: u64, _: u64) {}
        fn path_skipped(&self, _: &OsStr, _: &str) {}
        fn warning(&self, _: &str) {}
    }

    /// Not a timing test: which threads copied files of the big path is recorded, and more
    /// than one must have (with one unit of work per store path it was exactly one).
    #[test]
    fn the_files_of_one_store_path_are_copied_by_several_threads() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        let big = src.join("big");
        std::fs::create_dir_all(big.join("lib")).unwrap();
        std::fs::create_dir_all(big.join("share/doc")).unwrap();
        for i in 0..4000 {
            std::fs::write(big.join("lib").join(format!("f{i}")), format!("{i}")).unwrap();
        }
        std::fs::write(big.join("share/doc/README"), "hi").unwrap();
        std::fs::create_dir_all(&dst).unwrap();
        let names: Vec<OsString> = vec!["big".into()];
        let (s, d) = (
            crate::base::dirfd::open_root(&src).unwrap(),
            crate::base::dirfd::open_root(&dst).unwrap(),
        );
        let eng = Engine::new(Arc::new(Counters::default()), vec![], TargetFs::capable());
        let published = eng
            .copy_store_paths((&src, s.as_fd()), (&dst, d.as_fd()), &names, 4, &Quiet)
            .unwrap();
        assert_eq!(published, names);
        assert_eq!(std::fs::read_dir(dst.join("big/lib")).unwrap().count(), 4000);
        assert_eq!(std::fs::read_to_string(dst.join("big/lib/f1234")).unwrap(), "1234");
        assert_eq!(
            std::fs::symlink_metadata(dst.join("big/lib")).unwrap().mode() & 0o7777,
            0o755
        );
        let threads: HashSet<_> = tree::COPIED_BY
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| p == &big)
            .map(|(_, t)| *t)
            .collect();
        assert!(threads.len() > 1, "one thread copied every file of the path");
    }
}
