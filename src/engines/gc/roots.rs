//! The roots, found as Nix's `findRoots` (`gc.cc`) finds them, but for a store many pods
//! share: every symlink under `var/nix/gcroots` and `var/nix/profiles` (recursively) whose
//! target is in the store, or is a symlink (one indirection, an "indirect root") whose
//! target is; regular files named after a store path. Nothing is followed inside the disk
//! but that one indirection, and no root is ever removed.
//!
//! Where Nix resolves an indirect root in its own mount namespace and removes it when the
//! target is missing there, a pod's `result` link (in its home, an emptyDir) is invisible to
//! every other pod: such a root is *unresolved*. It is kept, and what it protects is
//! protected by `--min-age` only. A target under `/nix/` is the same file for every pod and
//! is read inside the disk; a target elsewhere that happens to resolve here too is honoured
//! as well (it can only keep more).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use anyhow::{Context, Result};
use nix::sys::stat::SFlag;

use crate::base::dirfd::{file_type, list, lstat_at, open_dir, open_dir_if_exists, Entry, Listed};
use crate::base::store_path::is_store_path_name;
use nix::dir::Type;

/// Where pods see the disk, and its store.
pub const NIX: &str = "/nix";
pub const STORE: &str = "/nix/store/";

/// Deeper than any root directory Nix makes: a loop of directories a hostile pod planted
/// stops here.
const MAX_DEPTH: usize = 32;

#[derive(Debug, Default)]
pub struct Roots {
    /// Store path names rooted, each with the first root found for it (as pods see it).
    pub names: BTreeMap<String, String>,
    /// Indirect roots whose target is outside the disk: (link, target).
    pub unresolved: Vec<(String, String)>,
}

/// The store path name `target` is in, if it is in the store (`/nix/store/<name>[/...]`).
pub fn store_name_of(target: &str) -> Option<&str> {
    let name = target.strip_prefix(STORE)?.split('/').next()?;
    is_store_path_name(name.as_bytes()).then_some(name)
}

/// `a/b/../c` → `/a/c`, textually, for an absolute path.
pub fn normalize(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    format!("/{}", parts.join("/"))
}

/// The roots in the disk whose root directory is `root` (shown as `shown`).
pub fn find(root: BorrowedFd, shown: &std::path::Path) -> Result<Roots> {
    find_except(root, shown, &|_| false)
}

/// [`find`], leaving out the entries `skip` names (as pods see them, `/nix/var/...`) and
/// what is below them: the roots that would remain once those are removed.
pub fn find_except(root: BorrowedFd, shown: &std::path::Path, skip: &dyn Fn(&str) -> bool) -> Result<Roots> {
    let mut out = Roots::default();
    let Some(var) = open_dir_if_exists(root, "var").with_context(|| format!("cannot open {}/var", shown.display()))?
    else {
        return Ok(out);
    };
    let Some(nix_dir) =
        open_dir_if_exists(var.as_fd(), "nix").with_context(|| format!("cannot open {}/var/nix", shown.display()))?
    else {
        return Ok(out);
    };
    let finder = Finder {
        root,
        skip,
        dirs: Default::default(),
    };
    for d in ["gcroots", "profiles"] {
        let at = || format!("cannot read the roots in {}/var/nix/{d}", shown.display());
        if let Some(fd) = open_dir_if_exists(nix_dir.as_fd(), d).with_context(at)? {
            finder
                .walk(fd.as_fd(), &format!("{NIX}/var/nix/{d}"), 0, &mut out)
                .with_context(at)?;
        }
    }
    Ok(out)
}

struct Finder<'a> {
    root: BorrowedFd<'a>,
    skip: &'a dyn Fn(&str) -> bool,
    /// Directories of the disk opened to resolve indirect roots, by relative path.
    dirs: std::cell::RefCell<std::collections::HashMap<String, OwnedFd>>,
}

impl Finder<'_> {
    fn walk(&self, dir: BorrowedFd, vpath: &str, depth: usize, out: &mut Roots) -> Result<()> {
        self.walk_entries(dir, &list(dir)?, vpath, depth, out)
    }

    fn walk_entries(
        &self,
        dir: BorrowedFd,
        entries: &[Entry],
        vpath: &str,
        depth: usize,
        out: &mut Roots,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Ok(());
        }
        for e in entries {
            let name = e.name.to_string_lossy();
            let child = format!("{vpath}/{name}");
            if (self.skip)(&child) {
                continue;
            }
            // The type readdir gave, else one lstat: no second round trip when it is known.
            let kind = match e.dtype {
                Some(Type::Directory) => SFlag::S_IFDIR,
                Some(Type::Symlink) => SFlag::S_IFLNK,
                Some(Type::File) => SFlag::S_IFREG,
                _ => match lstat_at(dir, &e.name)? {
                    Some(st) => file_type(&st),
                    None => continue,
                },
            };
            match kind {
                // Opened once, listed through that handle.
                SFlag::S_IFDIR => match Listed::open(dir, &e.name) {
                    Ok(sub) => self.walk_entries(sub.fd(), &sub.entries, &child, depth + 1, out)?,
                    // Nix skips what it cannot read, and so does this.
                    Err(_) => continue,
                },
                SFlag::S_IFLNK => {
                    let Ok(t) = nix::fcntl::readlinkat(dir, e.name.as_os_str()) else {
                        continue;
                    };
                    let t = t.to_string_lossy().into_owned();
                    self.link(&child, vpath, &t, out);
                }
                SFlag::S_IFREG if is_store_path_name(e.name.as_bytes()) => {
                    out.names.entry(name.into_owned()).or_insert(child);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The symlink `link` (in directory `vpath`) pointing to `target`.
    fn link(&self, link: &str, vpath: &str, target: &str, out: &mut Roots) {
        if let Some(name) = store_name_of(target) {
            out.names.entry(name.to_string()).or_insert_with(|| link.to_string());
            return;
        }
        if target.starts_with(STORE) {
            return;
        }
        let abs = if target.starts_with('/') {
            normalize(target)
        } else {
            normalize(&format!("{vpath}/{target}"))
        };
        let second = if abs == NIX || abs.starts_with(&format!("{NIX}/")) {
            self.link_in_disk(&abs)
        } else {
            out.unresolved.push((link.to_string(), abs.clone()));
            // The collector's own view: a hint only, it can keep more, never less.
            std::fs::symlink_metadata(&abs)
                .ok()
                .filter(|m| m.file_type().is_symlink())
                .and_then(|_| std::fs::read_link(&abs).ok())
                .map(|p| p.to_string_lossy().into_owned())
        };
        if let Some(name) = second.as_deref().and_then(store_name_of) {
            out.names.entry(name.to_string()).or_insert_with(|| abs.clone());
        }
    }

    /// The target of the symlink at `abs` (`/nix/...`, as pods see it) inside the disk,
    /// read without following any symlink on the way.
    fn link_in_disk(&self, abs: &str) -> Option<String> {
        let rel = abs.strip_prefix(NIX)?.trim_start_matches('/');
        let (dir, last) = rel.rsplit_once('/').unwrap_or(("", rel));
        let d = self.dir_in_disk(dir)?;
        let st = lstat_at(d.as_fd(), last).ok()??;
        if file_type(&st) != SFlag::S_IFLNK {
            return None;
        }
        Some(
            nix::fcntl::readlinkat(d.as_fd(), last)
                .ok()?
                .to_string_lossy()
                .into_owned(),
        )
    }

    /// The directory `rel` of the disk (relative to its root), opened one component at a
    /// time without following a symlink, and remembered: indirect roots often share their
    /// directory, and on a network disk every open is a round trip.
    fn dir_in_disk(&self, rel: &str) -> Option<OwnedFd> {
        if let Some(d) = self.dirs.borrow().get(rel) {
            return d.try_clone().ok();
        }
        let d = match rel.rsplit_once('/') {
            _ if rel.is_empty() => self.root.try_clone_to_owned().ok()?,
            Some((parent, name)) => {
                open_dir(self.dir_in_disk(parent)?.as_fd(), OsStr::from_bytes(name.as_bytes())).ok()?
            }
            None => open_dir(self.root, OsStr::from_bytes(rel.as_bytes())).ok()?,
        };
        let copy = d.try_clone().ok()?;
        self.dirs.borrow_mut().insert(rel.to_string(), d);
        Some(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_names() {
        let n = "0123456789abcdfghijklmnpqrsvwxyz-hello";
        assert_eq!(store_name_of(&format!("/nix/store/{n}/bin/hello")), Some(n));
        assert_eq!(store_name_of(&format!("/nix/store/{n}")), Some(n));
        assert_eq!(store_name_of("/nix/store/.links/x"), None);
        assert_eq!(store_name_of("/nix/var/nix/profiles/default"), None);
        assert_eq!(
            normalize("/nix/var/nix/profiles/./../profiles/default-1-link"),
            "/nix/var/nix/profiles/default-1-link"
        );
    }
}
