//! The roots, found as Nix's `findRoots` (`gc.cc`) finds them, but for a store many pods
//! share: every symlink under `var/nix/gcroots` and `var/nix/profiles` (recursively) whose
//! target is in the store, or is a symlink (one indirection, an "indirect root") whose
//! target is; regular files named after a store path. No root is ever removed.
//!
//! Where Nix resolves an indirect root in its own mount namespace and removes it when the
//! target is missing there, a pod's `result` link (in its home, an emptyDir) is invisible to
//! every other pod: such a root is *unresolved*. It is kept, and what it protects is
//! protected by `--min-age` only. A target under `/nix/` is the same file for every pod and
//! is resolved inside the disk, as the kernel would resolve it for a pod (directory
//! symlinks on the way included), but by reading each symlink and walking its text from the
//! disk's root: nothing is ever opened through a symlink, and a link that leads out of the
//! disk makes the root unresolved. A target elsewhere that happens to resolve in the
//! collector's own container is honoured as well (it can only keep more). Paths are bytes
//! throughout: a name need not be UTF-8.

use std::collections::{BTreeMap, HashMap};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

use anyhow::{bail, Context, Result};
use nix::dir::Type;
use nix::sys::stat::SFlag;

use crate::base::dirfd::{file_type, lstat_at, open_dir, open_dir_if_exists, Entry, Listed};
use crate::base::store_path::is_store_path_name;

/// Where pods see the disk, and its store.
pub const NIX: &str = "/nix";
pub const STORE: &str = "/nix/store/";

/// Far deeper than any root directory Nix makes; past it the run is refused (a root below
/// could not be seen), never ignored. Bounds the recursion a hostile pod could ask for.
const MAX_DEPTH: usize = 256;
/// Symlinks followed while resolving one indirect root (the kernel's limit).
const MAX_LINKS: usize = 40;

#[derive(Debug, Default)]
pub struct Roots {
    /// Store path names rooted, each with the first root found for it (as pods see it).
    pub names: BTreeMap<String, String>,
    /// Indirect roots whose target cannot be resolved from here (outside the disk, or a
    /// symlink on the way leads out of it): (link, target).
    pub unresolved: Vec<(String, String)>,
}

/// The store path name `target` is in, if it is in the store (`/nix/store/<name>[/...]`).
pub fn store_name_of(target: &str) -> Option<&str> {
    let name = target.strip_prefix(STORE)?.split('/').next()?;
    is_store_path_name(name.as_bytes()).then_some(name)
}

fn store_name_of_bytes(target: &[u8]) -> Option<String> {
    store_name_of(std::str::from_utf8(target).ok()?).map(str::to_string)
}

/// The components of an absolute path after `a/b/../c` → `a/c`, textually (Nix's
/// `canonPath`).
fn components(p: &[u8]) -> Vec<Vec<u8>> {
    let mut parts: Vec<Vec<u8>> = Vec::new();
    for c in p.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            c => parts.push(c.to_vec()),
        }
    }
    parts
}

/// `a/b/../c` → `/a/c`, textually, for an absolute path.
pub fn normalize(p: &str) -> String {
    let parts: Vec<String> = components(p.as_bytes())
        .into_iter()
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .collect();
    format!("/{}", parts.join("/"))
}

fn join(parent: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = parent.to_vec();
    v.push(b'/');
    v.extend_from_slice(name);
    v
}

fn show(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
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
        match Listed::open(nix_dir.as_fd(), d) {
            Ok(l) => finder
                .walk(l.fd(), &l.entries, format!("{NIX}/var/nix/{d}").as_bytes(), 0, &mut out)
                .with_context(at)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(at),
        }
    }
    Ok(out)
}

/// What an indirect root's target is, resolved inside the disk.
enum Target {
    /// A symlink whose text is this.
    Link(Vec<u8>),
    /// Not there, or not a symlink: no root (as for Nix).
    Nothing,
    /// Cannot be known from here: a symlink on the way leads out of the disk, too many
    /// symlinks, or a directory that cannot be read.
    Unknown,
}

struct Finder<'a> {
    root: BorrowedFd<'a>,
    skip: &'a dyn Fn(&str) -> bool,
    /// Directories of the disk opened to resolve indirect roots, by path relative to its
    /// root (symlinks resolved): indirect roots often share one, and on a network disk
    /// every open is a round trip.
    dirs: std::cell::RefCell<HashMap<Vec<Vec<u8>>, OwnedFd>>,
}

impl Finder<'_> {
    fn walk(&self, dir: BorrowedFd, entries: &[Entry], vpath: &[u8], depth: usize, out: &mut Roots) -> Result<()> {
        if depth > MAX_DEPTH {
            bail!(
                "{} is more than {MAX_DEPTH} directories deep: a root below it could not be seen; nothing \
                 was deleted (remove what made it so deep)",
                show(vpath)
            );
        }
        for e in entries {
            let child = join(vpath, e.name.as_bytes());
            if (self.skip)(&show(&child)) {
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
                    Ok(sub) => self.walk(sub.fd(), &sub.entries, &child, depth + 1, out)?,
                    // Nix skips what it cannot read, and so does this.
                    Err(_) => continue,
                },
                SFlag::S_IFLNK => {
                    let Ok(t) = nix::fcntl::readlinkat(dir, e.name.as_os_str()) else {
                        continue;
                    };
                    self.link(&child, vpath, t.as_bytes(), out);
                }
                SFlag::S_IFREG if is_store_path_name(e.name.as_bytes()) => {
                    out.names.entry(show(e.name.as_bytes())).or_insert_with(|| show(&child));
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The symlink `link` (in directory `vpath`) pointing to `target`.
    fn link(&self, link: &[u8], vpath: &[u8], target: &[u8], out: &mut Roots) {
        if let Some(name) = store_name_of_bytes(target) {
            out.names.entry(name).or_insert_with(|| show(link));
            return;
        }
        if target.starts_with(STORE.as_bytes()) {
            return;
        }
        let abs = if target.starts_with(b"/") {
            target.to_vec()
        } else {
            join(vpath, target)
        };
        let parts = components(&abs);
        let shown = format!("/{}", parts.iter().map(|c| show(c)).collect::<Vec<_>>().join("/"));
        let second = match parts.split_first() {
            Some((first, rest)) if first == b"nix" => match self.resolve(rest.to_vec()) {
                Target::Link(t) => Some(t),
                Target::Nothing => None,
                Target::Unknown => {
                    out.unresolved.push((show(link), shown.clone()));
                    None
                }
            },
            _ => {
                out.unresolved.push((show(link), shown.clone()));
                // The collector's own view: a hint only, it can keep more, never less.
                let p = std::path::PathBuf::from(OsString::from_vec(abs));
                std::fs::symlink_metadata(&p)
                    .ok()
                    .filter(|m| m.file_type().is_symlink())
                    .and_then(|_| std::fs::read_link(&p).ok())
                    .map(|t| t.into_os_string().into_vec())
            }
        };
        if let Some(name) = second.as_deref().and_then(store_name_of_bytes) {
            out.names.entry(name).or_insert(shown);
        }
    }

    /// The text of the symlink at `rel` (components below `/nix`), its directories
    /// resolved as the kernel would for a pod (symlinks on the way followed by their text,
    /// from the disk's root), the last component not followed (Nix `lstat`s it).
    fn resolve(&self, mut todo: Vec<Vec<u8>>) -> Target {
        todo.reverse();
        let mut at: Vec<Vec<u8>> = Vec::new();
        let mut links = 0;
        while let Some(c) = todo.pop() {
            if c == b".." {
                at.pop();
                continue;
            }
            if c == b"." {
                continue;
            }
            let Some(dir) = self.dir_in_disk(&at) else {
                return Target::Unknown;
            };
            let st = match lstat_at(dir.as_fd(), OsStr::from_bytes(&c)) {
                Ok(Some(st)) => st,
                Ok(None) => return Target::Nothing,
                Err(_) => return Target::Unknown,
            };
            let last = todo.is_empty();
            match file_type(&st) {
                SFlag::S_IFLNK => {
                    let Ok(t) = nix::fcntl::readlinkat(dir.as_fd(), OsStr::from_bytes(&c)) else {
                        return Target::Unknown;
                    };
                    if last {
                        return Target::Link(t.into_vec());
                    }
                    links += 1;
                    if links > MAX_LINKS {
                        return Target::Unknown;
                    }
                    let t = t.into_vec();
                    if t.starts_with(b"/") {
                        match components(&t).split_first() {
                            Some((first, rest)) if first == b"nix" => {
                                at.clear();
                                todo.extend(rest.iter().rev().cloned());
                            }
                            // Out of the disk: what it leads to is some pod's.
                            _ => return Target::Unknown,
                        }
                    } else {
                        todo.extend(
                            t.split(|b| *b == b'/')
                                .filter(|p| !p.is_empty())
                                .rev()
                                .map(<[u8]>::to_vec),
                        );
                    }
                }
                SFlag::S_IFDIR if !last => at.push(c),
                _ => return Target::Nothing,
            }
        }
        Target::Nothing
    }

    /// The directory at `rel` (components below the disk's root, no symlinks), opened one
    /// component at a time without following a symlink, and remembered.
    fn dir_in_disk(&self, rel: &[Vec<u8>]) -> Option<OwnedFd> {
        if let Some(d) = self.dirs.borrow().get(rel) {
            return d.try_clone().ok();
        }
        let d = match rel.split_last() {
            None => self.root.try_clone_to_owned().ok()?,
            Some((name, parent)) => open_dir(self.dir_in_disk(parent)?.as_fd(), OsStr::from_bytes(name)).ok()?,
        };
        let copy = d.try_clone().ok()?;
        self.dirs.borrow_mut().insert(rel.to_vec(), d);
        Some(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const N: &str = "0123456789abcdfghijklmnpqrsvwxyz-hello";

    #[test]
    fn store_names() {
        assert_eq!(store_name_of(&format!("/nix/store/{N}/bin/hello")), Some(N));
        assert_eq!(store_name_of(&format!("/nix/store/{N}")), Some(N));
        assert_eq!(store_name_of("/nix/store/.links/x"), None);
        assert_eq!(store_name_of("/nix/var/nix/profiles/default"), None);
        assert_eq!(
            normalize("/nix/var/nix/profiles/./../profiles/default-1-link"),
            "/nix/var/nix/profiles/default-1-link"
        );
    }

    /// A disk with `var/nix/gcroots/auto/*` indirect roots of every shape.
    #[test]
    fn indirect_roots_resolve_through_directory_links_inside_the_disk_only() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        let auto = r.join("var/nix/gcroots/auto");
        std::fs::create_dir_all(&auto).unwrap();
        std::fs::create_dir_all(r.join("var/keep")).unwrap();
        let odd = OsStr::from_bytes(b"\xff\xfe");
        std::fs::create_dir_all(r.join("var/keep").join(odd)).unwrap();
        let names: Vec<String> = (0..5)
            .map(|k| format!("{k}123456789abcdfghijklmnpqrsvwxyz-r{k}"))
            .collect();
        // 0: through a directory link inside the disk.
        symlink(format!("/nix/store/{}", names[0]), r.join("var/keep/result0")).unwrap();
        symlink("/nix/var/keep", r.join("var/keep-alias")).unwrap();
        symlink("/nix/var/keep-alias/result0", auto.join("a")).unwrap();
        // 1: a name that is not UTF-8 on the way.
        symlink(
            format!("/nix/store/{}", names[1]),
            r.join("var/keep").join(odd).join("result1"),
        )
        .unwrap();
        let mut t = b"/nix/var/keep/".to_vec();
        t.extend_from_slice(b"\xff\xfe/result1");
        symlink(OsStr::from_bytes(&t), auto.join("b")).unwrap();
        // 2: a relative directory link.
        symlink(format!("/nix/store/{}", names[2]), r.join("var/keep/result2")).unwrap();
        symlink("keep", r.join("var/rel")).unwrap();
        symlink("/nix/var/rel/result2", auto.join("c")).unwrap();
        // 3: a directory link that leads out of the disk: unresolved, never "no root".
        symlink("/home/someone", r.join("var/out")).unwrap();
        symlink("/nix/var/out/result3", auto.join("d")).unwrap();
        // 4: missing inside the disk: no root (as for Nix), not unresolved.
        symlink("/nix/var/keep/gone", auto.join("e")).unwrap();
        // A loop.
        symlink("/nix/var/loop", r.join("var/loop")).unwrap();
        symlink("/nix/var/loop/x", auto.join("f")).unwrap();

        let root = crate::base::dirfd::open_root(r).unwrap();
        let found = find(root.as_fd(), r).unwrap();
        for (k, name) in names.iter().enumerate().take(3) {
            assert!(found.names.contains_key(name), "{k}: {found:?}");
        }
        assert!(!found.names.contains_key(&names[3]));
        let mut unresolved: Vec<&str> = found.unresolved.iter().map(|(l, _)| l.as_str()).collect();
        unresolved.sort();
        assert_eq!(
            unresolved,
            vec!["/nix/var/nix/gcroots/auto/d", "/nix/var/nix/gcroots/auto/f"],
            "{found:?}"
        );
    }

    #[test]
    fn too_deep_is_refused_not_ignored() {
        let d = tempfile::tempdir().unwrap();
        let mut p = d.path().join("var/nix/gcroots");
        for _ in 0..=MAX_DEPTH + 1 {
            p.push("d");
        }
        std::fs::create_dir_all(&p).unwrap();
        let root = crate::base::dirfd::open_root(d.path()).unwrap();
        let e = find(root.as_fd(), d.path()).unwrap_err();
        assert!(format!("{e:#}").contains("directories deep"), "{e:#}");
    }
}
