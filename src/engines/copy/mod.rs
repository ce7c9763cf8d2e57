//! The copy engine: store paths, each built under a temporary name and renamed into place
//! only when complete, by a pool of `--jobs` threads that share the work *inside* store
//! paths too (directories and chunks of files, see `dirs.rs`).
//!
//! The engine never touches the terminal. It reports through [`Counters`] (atomics the
//! progress display samples) and [`Events`] (one call per store path, and warnings).

mod dirs;
mod hardlinks;
mod metadata;
pub mod publish;
pub mod target_fs;
pub mod tree;
pub use target_fs::TargetFs;

use crate::base::error::Stopped;
use std::ffi::{OsStr, OsString};
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};

pub use hardlinks::TopEntry;
pub use metadata::Ownership;
use publish::Published;
use tree::{Filter, Specials};

pub use crate::base::progress::{Counters, Events};

pub struct Engine {
    pub counters: Arc<Counters>,
    pub ownership: Ownership,
    links: hardlinks::InodeMap,
    /// Set by SIGINT/SIGTERM, by a lost lock lease, or by the first failed worker.
    stop_flags: Vec<Arc<AtomicBool>>,
    failed: AtomicBool,
    /// What the target's filesystem can do (shared by every engine of a run).
    pub fs: Arc<TargetFs>,
    /// Directories being copied by several tasks at once (see `dirs::PARALLEL_DIRS`).
    parallel_dirs: AtomicUsize,
    /// What entries created in the target store and below get (see [`metadata::Created`]).
    in_store: metadata::Created,
}

impl Engine {
    pub fn new(counters: Arc<Counters>, stop_flags: Vec<Arc<AtomicBool>>, fs: Arc<TargetFs>) -> Self {
        Engine {
            counters,
            ownership: Ownership::new(),
            links: Default::default(),
            stop_flags,
            failed: AtomicBool::new(false),
            fs,
            parallel_dirs: AtomicUsize::new(0),
            in_store: metadata::Created::default(),
        }
    }

    pub fn should_stop(&self) -> bool {
        self.failed.load(Ordering::Relaxed) || self.stop_flags.iter().any(|f| f.load(Ordering::Relaxed))
    }

    /// A temporary name for `name` (see [`crate::base::dirfd::temp_name`]).
    pub fn temp_name(&self, name: &OsStr) -> OsString {
        crate::base::dirfd::temp_name(name)
    }

    fn warn_pending(&self, events: &dyn Events, target: &Path) {
        if self.fs.take_symlink_notice() {
            events.warning(&target_fs::symlink_warning(target));
        }
        if self.ownership.take_denied_notice() {
            events.warning(&format!(
                "cannot set file ownership in {} (chown refused: not root, or the filesystem \
                 squashes root): copies keep the owner the target gives them; modes, times, \
                 links and content are preserved",
                target.display()
            ));
        }
    }

    /// Copy `names` from `src_store` to `dst_store` with `jobs` workers. Each store path
    /// that is already present when it would be published is discarded, not replaced.
    pub fn copy_store_paths(
        &self,
        src_store: (&Path, BorrowedFd),
        dst_store: (&Path, BorrowedFd),
        names: &[OsString],
        jobs: usize,
        events: &dyn Events,
    ) -> Result<Vec<OsString>> {
        self.counters
            .paths_total
            .fetch_add(names.len() as u64, Ordering::Relaxed);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(jobs.max(1))
            .thread_name(|i| format!("nix-seed-copy-{i}"))
            // Room for directories nested in directories, and for the tasks a thread
            // waiting on a scope runs meanwhile.
            .stack_size(8 << 20)
            .build()
            .context("cannot start the copy threads")?;
        let q = PathQueue {
            eng: self,
            src_store,
            dst_store,
            names,
            next: AtomicUsize::new(0),
            events,
            published: Mutex::new(Vec::new()),
            error: Mutex::new(None),
        };
        // `jobs` store paths at a time, each task taking the next name when its path is
        // done (see PathQueue::next): the threads share the work inside them.
        pool.scope(|s| {
            for _ in 0..jobs.clamp(1, names.len().max(1)) {
                s.spawn(|s| q.next(s));
            }
        });
        if let Some(e) = q.error.into_inner().unwrap_or_else(|p| p.into_inner()) {
            return Err(e);
        }
        if self.should_stop() {
            return Err(Stopped.into());
        }
        Ok(q.published.into_inner().unwrap_or_else(|p| p.into_inner()))
    }

    /// Move `names` from `src_store`, a stage on the target's own filesystem where each was
    /// built complete (an image's layers applied, see `engines::image`), into `dst_store`:
    /// each is published by one rename that never replaces (see [`publish::move_in`]), as
    /// [`Engine::copy_store_paths`] publishes its copies.
    pub fn move_store_paths(
        &self,
        src_store: BorrowedFd,
        (dst_root, dst_store): (&Path, BorrowedFd),
        names: &[OsString],
        events: &dyn Events,
    ) -> Result<Vec<OsString>> {
        self.counters
            .paths_total
            .fetch_add(names.len() as u64, Ordering::Relaxed);
        let mut published = Vec::new();
        for name in names {
            if self.should_stop() {
                return Err(Stopped.into());
            }
            match publish::move_in(self, src_store, dst_store, name)
                .with_context(|| format!("cannot publish {}", dst_root.join(name).display()))?
            {
                Published::Yes => {
                    crate::base::failpoint::hit("published");
                    self.counters.paths_done.fetch_add(1, Ordering::Relaxed);
                    events.path_copied(name, 0, 0);
                    published.push(name.clone());
                }
                Published::AlreadyThere => {
                    self.counters.paths_skipped.fetch_add(1, Ordering::Relaxed);
                    events.path_skipped(name, "appeared in the target while the image was read");
                }
            }
        }
        Ok(published)
    }

    /// One store path of [`Engine::copy_store_paths`], with its events and counters.
    fn copy_one(&self, q: &PathQueue, name: &OsString) -> Result<()> {
        let r = self.copy_store_path(q.src_store, q.dst_store, name);
        self.warn_pending(q.events, q.dst_store.0);
        match r {
            Ok((Published::Yes, files, bytes)) => {
                crate::base::failpoint::hit("published");
                self.counters.paths_done.fetch_add(1, Ordering::Relaxed);
                q.published.lock().unwrap().push(name.clone());
                q.events.path_copied(name, files, bytes);
                Ok(())
            }
            Ok((Published::AlreadyThere, _, _)) => {
                self.counters.paths_skipped.fetch_add(1, Ordering::Relaxed);
                q.events
                    .path_skipped(name, "appeared in the target while it was being copied");
                Ok(())
            }
            // Asked to stop: not an error of its own.
            Err(e) if e.downcast_ref::<Stopped>().is_some() => Ok(()),
            Err(e) => {
                // The other tasks abandon the store paths they are copying.
                self.failed.store(true, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Replace the store path `name` in `dst_store` (present but not what the image
    /// registered) by a fresh copy, swapped in as atomically as the filesystem allows.
    /// Returns the files and bytes copied, and a problem to report if the old copy could
    /// not be removed (the replacement itself succeeded).
    pub fn replace_store_path(
        &self,
        (src_root, src): (&Path, BorrowedFd),
        (dst_root, dst): (&Path, BorrowedFd),
        name: &OsStr,
    ) -> Result<(u64, u64, Option<String>)> {
        let st = stat_source(src_root, src, name)?;
        let built = self.build_top(Top::store_path((src_root, src), (dst_root, dst), name, &st))?;
        let shown = dst_root.join(name);
        let guard = crate::base::dirfd::TempEntry::new(dst, &built.tmp);
        let problem = publish::replace(self, dst, &built.tmp, name)
            .with_context(|| format!("cannot replace {}", shown.display()))?;
        guard.keep();
        Ok((
            built.files,
            built.bytes,
            problem.map(|p| format!("{}: {p}", shown.display())),
        ))
    }

    fn copy_store_path(
        &self,
        (src_root, src): (&Path, BorrowedFd),
        (dst_root, dst): (&Path, BorrowedFd),
        name: &OsStr,
    ) -> Result<(Published, u64, u64)> {
        let st = stat_source(src_root, src, name)?;
        let top = Top::store_path((src_root, src), (dst_root, dst), name, &st);
        let (dst, final_name) = (top.dst, top.final_name);
        let built = self.build_top_in(top, &self.in_store)?;
        self.publish_top(dst, built, final_name)
    }

    /// Copy one top-level entry atomically: build it under a temporary name, then publish
    /// it. On any error the temporary copy is removed.
    pub fn copy_top(&self, t: Top) -> Result<(Published, u64, u64)> {
        let (dst, final_name) = (t.dst, t.final_name);
        let built = self.build_top(t)?;
        self.publish_top(dst, built, final_name)
    }

    /// The first half of [`Engine::copy_top`]: the complete copy under its temporary name.
    /// Inside the engine's pool (store paths) its directories are spread over the threads;
    /// called from elsewhere (var/, GC roots, repairs) it copies on the caller's thread.
    pub fn build_top(&self, t: Top) -> Result<Built> {
        self.build_top_in(t, &metadata::Created::default())
    }

    /// [`Engine::build_top`], with what entries created in `t.dst` and below get, as far
    /// as known. That is the same in every directory of the copy: each is created by this
    /// process, below `t.dst`, and keeps the group and setgid bit it was created with
    /// until its children are all written. So it is learned once per run for the store.
    fn build_top_in(&self, t: Top, seen: &metadata::Created) -> Result<Built> {
        let tmp = self.temp_name(t.final_name);
        let top = TopEntry::new(tmp.clone());
        let walk = tree::Walk::new(self, top.clone(), t.dst, t.filter, t.specials, t.src_path, t.dst_path);
        let copied = walk.copy_entry(tree::Entry {
            src_dir: t.src,
            src_name: t.name,
            st: t.st,
            dst_dir: t.dst,
            dst_name: &tmp,
            rel: Path::new(""),
            seen,
        });
        // A task's own error is better than the Stopped it made the others return.
        let copied = match walk.take_error() {
            Some(e) if copied.is_err() || e.downcast_ref::<Stopped>().is_none() => Err(e),
            _ => copied,
        };
        let (files, bytes) = (walk.files.into_inner(), walk.bytes.into_inner());
        let dst_path = walk.dst_path;
        let is_dir = crate::base::dirfd::file_type(t.st) == nix::sys::stat::SFlag::S_IFDIR;
        match copied {
            Ok(()) => Ok(Built {
                top,
                tmp,
                is_dir,
                files,
                bytes,
                dst_path,
            }),
            Err(e) => {
                // ENOENT inside our own temporary copy, and the copy is gone: another
                // seeder claimed it as a leftover (see `remove_leftovers`); say so.
                if has_errno(&e, &[libc::ENOENT, libc::ESTALE])
                    && matches!(crate::base::dirfd::lstat_at(t.dst, &tmp), Ok(None))
                {
                    return Err(e.context(publish::vanished(&tmp)));
                }
                // Best effort: a later run (under the lock) removes any leftover.
                let _ = crate::base::dirfd::remove_tree_at(t.dst, &tmp);
                Err(e)
            }
        }
    }

    /// The second half of [`Engine::copy_top`]: move the copy to its final name.
    pub fn publish_top(&self, dst: BorrowedFd, b: Built, final_name: &OsStr) -> Result<(Published, u64, u64)> {
        let guard = crate::base::dirfd::TempEntry::new(dst, &b.tmp);
        let p = publish::publish(self, dst, &b.top, &b.tmp, b.is_dir, final_name)
            .with_context(|| format!("cannot move the finished copy into place at {}", b.dst_path.display()))?;
        guard.keep();
        Ok((p, b.files, b.bytes))
    }
}

/// One top-level entry to copy: `name` (with lstat `st`) inside `src`, to `final_name`
/// inside `dst`; the paths are for messages.
pub struct Top<'a> {
    pub src: BorrowedFd<'a>,
    pub name: &'a OsStr,
    pub st: &'a nix::sys::stat::FileStat,
    pub dst: BorrowedFd<'a>,
    pub final_name: &'a OsStr,
    pub filter: Option<Filter<'a>>,
    pub specials: Specials,
    pub src_path: PathBuf,
    pub dst_path: PathBuf,
}

impl<'a> Top<'a> {
    /// The store path `name` of the source store `src` (lstat `st`), to the same name in
    /// the target store `dst`.
    fn store_path(
        (src_root, src): (&Path, BorrowedFd<'a>),
        (dst_root, dst): (&Path, BorrowedFd<'a>),
        name: &'a OsStr,
        st: &'a nix::sys::stat::FileStat,
    ) -> Top<'a> {
        Top {
            src,
            name,
            st,
            dst,
            final_name: name,
            filter: None,
            specials: Specials::Error,
            src_path: src_root.join(name),
            dst_path: dst_root.join(name),
        }
    }
}

/// The source store path `name`'s lstat: it must still be there.
fn stat_source(src_root: &Path, src: BorrowedFd, name: &OsStr) -> Result<nix::sys::stat::FileStat> {
    let src_path = src_root.join(name);
    let st = crate::base::dirfd::lstat_at(src, name).with_context(|| format!("{}: cannot stat", src_path.display()))?;
    st.ok_or_else(|| anyhow::anyhow!("{}: vanished from the source while seeding", src_path.display()))
}

/// A complete copy under its temporary name, not yet published.
pub struct Built {
    top: Arc<TopEntry>,
    /// The temporary name in the destination directory.
    pub tmp: OsString,
    /// A directory (known from the source: no stat of the copy to tell).
    is_dir: bool,
    files: u64,
    bytes: u64,
    /// The final path in the target, for messages.
    dst_path: PathBuf,
}

/// Whether any error in `e`'s chain is one of `errnos` (as an `io::Error` or a nix `Errno`).
pub fn has_errno(e: &anyhow::Error, errnos: &[i32]) -> bool {
    e.chain().any(|c| {
        let n = c
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.raw_os_error())
            .or_else(|| c.downcast_ref::<nix::errno::Errno>().map(|e| *e as i32));
        n.is_some_and(|n| errnos.contains(&n))
    })
}

/// The store paths of one [`Engine::copy_store_paths`] run, taken in order by its tasks.
struct PathQueue<'a> {
    eng: &'a Engine,
    src_store: (&'a Path, BorrowedFd<'a>),
    dst_store: (&'a Path, BorrowedFd<'a>),
    names: &'a [OsString],
    next: AtomicUsize,
    events: &'a dyn Events,
    published: Mutex<Vec<OsString>>,
    error: Mutex<Option<anyhow::Error>>,
}

impl<'a> PathQueue<'a> {
    /// Copy the next store path, then leave a task for the one after it. Not a loop: a
    /// thread that waits for a directory's tasks may run this task meanwhile, and its own
    /// path can only finish once this returns, so each task does one path.
    fn next<'s>(&'s self, s: &rayon::Scope<'s>) {
        if self.eng.should_stop() {
            return;
        }
        let Some(name) = self.names.get(self.next.fetch_add(1, Ordering::Relaxed)) else {
            return;
        };
        if let Err(e) = self.eng.copy_one(self, name) {
            self.error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
            return;
        }
        s.spawn(move |s| self.next(s));
    }
}
