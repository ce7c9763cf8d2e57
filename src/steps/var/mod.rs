//! Seeding `/nix/var`: profiles, GC roots, the database; never runtime files.
//!
//! - Target has no `var/`: the source's `var/` is copied to a temporary name in the target
//!   and renamed into place, so `var/` appears complete or not at all.
//! - Target has a `var/`: missing entries are added, each atomically; nothing that exists
//!   is overwritten. An entry that exists but differs (a profile link pointing elsewhere,
//!   a file of different content, a different type) is reported as one warning line.
//!   The image's profiles and their generation links are left out (`skip`) unless
//!   `--profiles keep`: [`crate::steps::profiles`] sets them.
//!
//! Never copied: sockets and FIFOs, `nix/daemon-socket/`, `nix/gc-socket/`,
//! `nix/temproots/`, `nix/userpool*/`, `nix/builds/`, `big-lock`, `gc.lock` and every
//! `*.lock`, and in `nix/db/` everything but the database files (see [`crate::engines::nixdb`]).

use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use nix::fcntl::{openat, readlinkat, AtFlags, OFlag};
use nix::sys::stat::{fstatat, FileStat, Mode, SFlag};

use crate::base::dirfd::{file_type, is_temp_name, list, lstat_at, open_dir, remove_leftovers, remove_tree_at};
use crate::base::preflight::Checked;
use crate::base::progress::Log;
use crate::engines::copy::publish::Published;
use crate::engines::copy::tree::Specials;
use crate::engines::copy::{Engine, Top};
use crate::engines::nixdb;

mod db;

use db::{add_db, has_db};

/// Runtime state, and `gcroots/auto` (links to paths inside the image's own pods: they
/// would be dangling, or worse, roots of something else, on the shared disk).
const RUNTIME_DIRS: &[&str] = &[
    "nix/daemon-socket",
    "nix/gc-socket",
    "nix/temproots",
    "nix/builds",
    "nix/gcroots/auto",
];

/// Whether the entry at `rel` (relative to var/) is seeded.
pub fn keep(rel: &Path, st: &FileStat) -> bool {
    let ft = file_type(st);
    if !matches!(ft, SFlag::S_IFREG | SFlag::S_IFDIR | SFlag::S_IFLNK) {
        return false;
    }
    if RUNTIME_DIRS.iter().any(|d| rel.starts_with(d)) {
        return false;
    }
    let b = rel.as_os_str().as_bytes();
    if b.starts_with(b"nix/userpool") {
        return false;
    }
    let base = rel.file_name().map_or(&b""[..], |n| n.as_bytes());
    if base == b"big-lock" || base == b"gc.lock" || base.ends_with(b".lock") || is_temp_name(base) {
        return false;
    }
    match nixdb::db_relative(rel) {
        Some(r) if r.as_os_str().is_empty() => true,
        Some(r) => r.components().count() == 1 && nixdb::keep_db_entry(base),
        None => true,
    }
}

#[derive(Default, Debug)]
pub struct Outcome {
    /// var/ was created whole.
    pub created: bool,
    /// The target's database was created (a copy of the image's).
    pub db_created: bool,
    /// Entries added to an existing var/.
    pub added: u64,
    pub conflicts: u64,
}

/// Seed var/. A target without a database gets one before anything makes it visible: a
/// copy (backup API) of the image's, with the registrations of the paths `holds` names
/// (store path names the target holds whose registration the image's database has
/// complete), or, when the image has none, an empty one made as Nix makes it. Entries
/// `skip` names (relative to var/: the profiles [`crate::steps::profiles`] sets) are left out of
/// a merge.
pub fn seed(
    c: &Checked,
    eng: &Engine,
    log: &Log,
    holds: &dyn Fn(&str) -> bool,
    skip: &(dyn Fn(&Path) -> bool + Sync),
) -> Result<Outcome> {
    let with_db = Some(holds);
    let src_var = c.source_path.join(crate::base::layout::VAR);
    let image_var = lstat_at(c.source.as_fd(), "var")?.filter(|st| file_type(st) == SFlag::S_IFDIR);
    let Some(st) = image_var else {
        // An image without var/ (dockerTools and the like): only the database, in the
        // var/ that taking Nix's locks created.
        let mut out = Outcome::default();
        let dst = open_dir(c.target.as_fd(), "var")
            .with_context(|| format!("cannot open {}/var (must be a directory)", c.target_path.display()))?;
        if !has_db(dst.as_fd(), &c.layout.var)? {
            out.db_created = add_db(c, dst.as_fd(), &c.layout.var, holds)?;
        }
        return Ok(out);
    };
    let mut out = Outcome::default();
    if lstat_at(c.target.as_fd(), "var")
        .with_context(|| format!("cannot stat {}/var", c.target_path.display()))?
        .is_none()
    {
        let filter = |rel: &Path, st: &FileStat| keep(rel, st);
        let top = Top {
            src: c.source.as_fd(),
            name: OsStr::new("var"),
            st: &st,
            dst: c.target.as_fd(),
            final_name: OsStr::new("var"),
            filter: Some(&filter),
            specials: Specials::Skip,
            src_path: src_var.clone(),
            dst_path: c.layout.var.clone(),
        };
        let built = eng.build_top(top)?;
        if let Some(holds) = with_db {
            // Inside the temporary var/, so var/ never appears without its database.
            let tmp_var = c.target_path.join(&built.tmp);
            let r = open_dir(c.target.as_fd(), &built.tmp)
                .map_err(anyhow::Error::from)
                .and_then(|v| add_db(c, v.as_fd(), &tmp_var, holds));
            if let Err(e) = r {
                let _ = remove_tree_at(c.target.as_fd(), &built.tmp);
                return Err(e);
            }
        }
        let (p, _, _) = eng.publish_top(c.target.as_fd(), built, OsStr::new("var"))?;
        if p == Published::Yes {
            out.created = true;
            out.db_created = with_db.is_some();
            return Ok(out);
        }
    }
    let dst = open_dir(c.target.as_fd(), "var").map_err(|e| {
        anyhow::anyhow!(
            "cannot open {}/var ({e}): it must be a directory, not a symlink; remove it",
            c.target_path.display()
        )
    })?;
    let src = open_dir(c.source.as_fd(), "var").with_context(|| format!("cannot open {}", src_var.display()))?;
    let mut m = Merge {
        eng,
        log,
        src_root: src_var,
        dst_root: c.layout.var.clone(),
        out,
        skip,
    };
    m.dir(src.as_fd(), dst.as_fd(), PathBuf::new())?;
    let mut out = m.out;
    if let Some(holds) = with_db {
        if !has_db(dst.as_fd(), &c.layout.var)? {
            out.db_created = add_db(c, dst.as_fd(), &c.layout.var, holds)?;
        }
    }
    Ok(out)
}

struct Merge<'a> {
    eng: &'a Engine,
    log: &'a Log,
    src_root: PathBuf,
    dst_root: PathBuf,
    out: Outcome,
    skip: &'a (dyn Fn(&Path) -> bool + Sync),
}

impl Merge<'_> {
    fn dir(&mut self, src: BorrowedFd, dst: BorrowedFd, rel: PathBuf) -> Result<()> {
        // Temporary entries here are leftovers of a killed run (claimed before removal,
        // see remove_leftovers, in case the lock is not shared on this filesystem).
        let here = self.dst_root.join(&rel);
        let (_, problems) = remove_leftovers(dst, &here).with_context(|| format!("cannot list {}", here.display()))?;
        for p in problems {
            self.log.warn(&p);
        }
        for e in list(src).with_context(|| format!("cannot list {}", self.src_root.join(&rel).display()))? {
            let crel = rel.join(&e.name);
            let st = fstatat(src, e.name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
                .with_context(|| format!("cannot stat {}", self.src_root.join(&crel).display()))?;
            if !keep(&crel, &st) || (self.skip)(&crel) {
                continue;
            }
            let shown = Path::new("var").join(&crel);
            match lstat_at(dst, &e.name)? {
                None => {
                    let skip = self.skip;
                    let filter = |r: &Path, st: &FileStat| keep(&crel.join(r), st) && !skip(&crel.join(r));
                    let top = Top {
                        src,
                        name: &e.name,
                        st: &st,
                        dst,
                        final_name: &e.name,
                        filter: Some(&filter),
                        specials: Specials::Skip,
                        src_path: self.src_root.join(&crel),
                        dst_path: self.dst_root.join(&crel),
                    };
                    let (p, _, _) = self.eng.copy_top(top)?;
                    if p == Published::Yes {
                        self.out.added += 1;
                        self.log.detail(
                            "var-added",
                            &format!("added {}", shown.display()),
                            serde_json::json!({"path": shown}),
                        );
                    }
                }
                Some(tst) => match (file_type(&st), file_type(&tst)) {
                    (SFlag::S_IFDIR, SFlag::S_IFDIR) => {
                        let s = open_dir(src, &e.name)?;
                        let d = open_dir(dst, &e.name)
                            .with_context(|| format!("cannot open {}", self.dst_root.join(&crel).display()))?;
                        self.dir(s.as_fd(), d.as_fd(), crel)?;
                    }
                    (SFlag::S_IFLNK, SFlag::S_IFLNK) => {
                        let a = readlinkat(src, e.name.as_os_str())?;
                        let b = readlinkat(dst, e.name.as_os_str())?;
                        if a != b {
                            self.conflict(
                                &shown,
                                &format!(
                                    "the target's symlink points to {}, the image's to {}",
                                    b.to_string_lossy(),
                                    a.to_string_lossy()
                                ),
                            );
                        }
                    }
                    (SFlag::S_IFREG, SFlag::S_IFREG) => {
                        if !same_content(src, dst, &e.name, &st, &tst)? {
                            self.conflict(&shown, "the target's file differs from the image's");
                        }
                    }
                    _ => self.conflict(
                        &shown,
                        &format!(
                            "the target has a {}, the image a {}",
                            crate::base::dirfd::kind_name(&tst),
                            crate::base::dirfd::kind_name(&st)
                        ),
                    ),
                },
            }
        }
        Ok(())
    }

    fn conflict(&mut self, shown: &Path, what: &str) {
        self.out.conflicts += 1;
        self.log.event(
            crate::base::progress::Level::Warn,
            "var-conflict",
            &format!(
                "{}: {what}; kept the target's",
                self.dst_root.parent().unwrap_or(Path::new("")).join(shown).display()
            ),
            serde_json::json!({"path": shown}),
        );
    }
}

/// Files in var/ are small (profiles' manifests, the schema); compare up to 1 MiB.
fn same_content(src: BorrowedFd, dst: BorrowedFd, name: &OsStr, s: &FileStat, d: &FileStat) -> Result<bool> {
    if s.st_size != d.st_size {
        return Ok(false);
    }
    if s.st_size > 1 << 20 {
        return Ok(true);
    }
    let read = |dir: BorrowedFd| -> Result<Vec<u8>> {
        let fd = openat(
            dir,
            name,
            OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
            Mode::empty(),
        )?;
        let mut v = Vec::new();
        std::fs::File::from(fd).take(1 << 20).read_to_end(&mut v)?;
        Ok(v)
    };
    Ok(read(src)? == read(dst)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn st(mode: u32) -> FileStat {
        let mut s: FileStat = unsafe { std::mem::zeroed() };
        s.st_mode = mode;
        s
    }

    #[test]
    fn runtime_files_are_never_seeded() {
        let f = st(libc::S_IFREG | 0o644);
        let d = st(libc::S_IFDIR | 0o755);
        let sock = st(libc::S_IFSOCK | 0o777);
        for p in [
            "nix/daemon-socket",
            "nix/daemon-socket/socket",
            "nix/temproots/123",
            "nix/userpool",
            "nix/userpool2/x",
            "nix/builds/1",
            "nix/gc.lock",
            "nix/db/big-lock",
            "nix/db/db.sqlite-shm",
            "nix/db/db.sqlite.lock",
            "nix/db/reserved",
            "nix/gc-socket/socket",
            "nix/profiles/x.lock",
        ] {
            assert!(!keep(Path::new(p), &f), "{p} must not be seeded");
        }
        assert!(!keep(Path::new("nix/profiles/sock"), &sock));
        for p in [
            "nix/db/db.sqlite",
            "nix/db/db.sqlite-wal",
            "nix/db/db.sqlite-journal",
            "nix/db/ca-schema",
            "nix/gcroots/auto/x",
        ] {
            assert!(
                !keep(Path::new(p), &f),
                "{p}: the database (and ca-schema with it) is written by the backup API, auto roots never"
            );
        }
        for p in [
            "nix/db/schema",
            "nix/profiles/default",
            "nix/gcroots/foo",
            "log/nix/drvs/ab/cd.bz2",
        ] {
            assert!(keep(Path::new(p), &f), "{p} must be seeded");
        }
        assert!(keep(Path::new("nix/db"), &d));
        assert!(keep(Path::new("nix"), &d));
    }
}
