//! The roots Nix's garbage collector finds in the disk, as `findRoots` (Nix's `gc.cc`)
//! finds them, read without following any symlink nix-seed does not have to: what prune
//! needs to say what a collection would free once images are retired.

use std::os::fd::{AsFd, BorrowedFd};

use anyhow::{Context, Result};
use nix::sys::stat::SFlag;

use super::{store_path_of, Disk, NIX, STORE};
use crate::base::dirfd::{file_type, list, lstat_at, open_dir, open_dir_if_exists};

/// `a/b/../c` → `a/c`, textually, for an absolute path.
fn normalize(p: &str) -> String {
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

impl Disk {
    /// The registered paths reached by the roots Nix's garbage collector finds in the
    /// disk, as `findRoots` does: every symlink under `var/nix/gcroots` and
    /// `var/nix/profiles` (recursively) whose target is in the store, or is a symlink
    /// (one indirection) whose target is; regular files named after a valid path. `skip`
    /// names (as pods see them, `/nix/var/...`) entries to leave out, with what is below
    /// them. What this cannot see (roots outside the disk, a pod's running processes, an
    /// intermediate symlink on the way) is left out: what is *not* reached is an upper bound.
    pub fn visible_roots(&self, skip: &dyn Fn(&str) -> bool) -> Result<Vec<usize>> {
        let mut out = Vec::new();
        let Some(var) = open_dir_if_exists(self.root.as_fd(), "var")? else {
            return Ok(out);
        };
        let Some(nix_dir) = open_dir_if_exists(var.as_fd(), "nix")? else {
            return Ok(out);
        };
        for d in ["gcroots", "profiles"] {
            if let Some(fd) = open_dir_if_exists(nix_dir.as_fd(), d)? {
                self.find_roots(fd.as_fd(), &format!("/nix/var/nix/{d}"), skip, &mut out)
                    .with_context(|| format!("cannot list {}/var/nix/{d}", self.path.display()))?;
            }
        }
        Ok(out)
    }

    fn find_roots(
        &self,
        dir: BorrowedFd,
        vpath: &str,
        skip: &dyn Fn(&str) -> bool,
        out: &mut Vec<usize>,
    ) -> Result<()> {
        for e in list(dir)? {
            let name = e.name.to_string_lossy();
            let child = format!("{vpath}/{name}");
            if skip(&child) {
                continue;
            }
            let Some(st) = lstat_at(dir, &e.name)? else { continue };
            match file_type(&st) {
                SFlag::S_IFDIR => {
                    if let Ok(sub) = open_dir(dir, &e.name) {
                        self.find_roots(sub.as_fd(), &child, skip, out)?;
                    }
                }
                SFlag::S_IFLNK => {
                    let Ok(t) = nix::fcntl::readlinkat(dir, e.name.as_os_str()) else {
                        continue;
                    };
                    let t = t.to_string_lossy().into_owned();
                    let found = match store_path_of(&t) {
                        Some(p) => Some(p),
                        None => {
                            let abs = if t.starts_with('/') {
                                normalize(&t)
                            } else {
                                normalize(&format!("{vpath}/{t}"))
                            };
                            self.link_in_disk(&abs).and_then(|t2| store_path_of(&t2))
                        }
                    };
                    out.extend(found.and_then(|p| self.index.get(&p).copied()));
                }
                SFlag::S_IFREG => out.extend(self.index.get(&format!("{STORE}{name}")).copied()),
                _ => {}
            }
        }
        Ok(())
    }

    /// The target of the symlink at `abs` (`/nix/...`, as pods see it) in the disk, read
    /// without following any symlink on the way.
    fn link_in_disk(&self, abs: &str) -> Option<String> {
        let rel = abs.strip_prefix(NIX)?;
        let mut parts: Vec<&str> = rel.split('/').collect();
        let last = parts.pop()?;
        let mut d = self.root.try_clone().ok()?;
        for p in parts {
            d = open_dir(d.as_fd(), p).ok()?;
        }
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
}

#[cfg(test)]
mod tests {
    #[test]
    fn normalize() {
        assert_eq!(
            super::normalize("/nix/var/nix/profiles/./../profiles/default-1-link"),
            "/nix/var/nix/profiles/default-1-link"
        );
    }
}
