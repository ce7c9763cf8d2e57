//! The images seeded into a disk, as `nix-seed images` lists them and `nix-seed prune`
//! retires them. An image is known by any of what a seed leaves: its record
//! (`.nix-seed/records/<id>`), its marker (`.nix-seed/images/<id>`, whose mtime is "last
//! seen") or its GC roots (`var/nix/gcroots/nix-seed/<id>/`). Its closure is what its
//! root links reach through the target database's references: what Nix's garbage
//! collector keeps for it.
//!
//! Everything here only reads: the database is opened read-only the way its Nix clients
//! open it (see [`crate::engines::nixdb::open_target`]), and nothing follows a symlink in the disk
//! except the one indirection Nix's own root search follows ([`Disk::visible_roots`]).

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};
use nix::sys::stat::SFlag;

use crate::base::dirfd::{file_type, list, lstat_at, open_dir_if_exists, open_root, Listed};
use crate::base::error::Invalid;
use crate::base::progress::Log;
use crate::engines::nixdb::{self, Graph};
use crate::steps::state::{self, Record, IMAGES_DIR, RECORDS_DIR, STATE_DIR};

mod list;
mod roots;

pub use list::{run, Options};

const STORE: &str = "/nix/store/";

/// An image id as [`crate::base::store_path::image_id`] makes it: 32 lowercase hex digits. Anything
/// else in nix-seed's directories (a temporary entry, something a pod put there) is not an
/// image and is never touched.
pub fn is_image_id(name: &[u8]) -> bool {
    name.len() == 32 && name.iter().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
}

/// One image seeded into the disk.
pub struct Image {
    pub id: String,
    pub record: Option<Record>,
    /// The marker's mtime; `None` without a marker.
    pub last_seen: Option<SystemTime>,
    /// Its root links (name, target), or `None` without a root directory; a target is
    /// `None` for an entry that is not a symlink.
    pub roots: Option<Vec<(OsString, Option<String>)>>,
    /// Indexes into [`Disk::graph`]: every registered path its roots reach.
    pub closure: Vec<usize>,
    /// Marker present and every root link resolves to a valid, present store path.
    pub roots_complete: bool,
}

fn parse_time(s: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(s).ok()
}

fn show_time(t: Option<SystemTime>) -> String {
    t.map_or("-".to_string(), |t| humantime::format_rfc3339_seconds(t).to_string())
}

impl Image {
    pub fn first_seeded(&self) -> Option<SystemTime> {
        self.record.as_ref().and_then(|r| parse_time(&r.first_seeded))
    }

    pub fn last_seeded(&self) -> Option<SystemTime> {
        self.record.as_ref().and_then(|r| parse_time(&r.last_seeded))
    }

    /// The order of recent use `prune --keep-last` keeps by: last seen, then last seeded.
    pub fn recency(&self) -> (Option<SystemTime>, Option<SystemTime>) {
        (self.last_seen, self.last_seeded())
    }
}

/// The disk: its images, and its database's registered paths and references.
pub struct Disk {
    pub path: PathBuf,
    pub root: OwnedFd,
    /// Most recently used first ([`Image::recency`]), then by id.
    pub images: Vec<Image>,
    /// Empty without a database.
    pub graph: Graph,
    pub index: HashMap<String, usize>,
    pub has_db: bool,
}

/// A disk nix-seed never seeded (or a wrong `--target`): exit 2, nothing done.
fn never_seeded(path: &Path, why: &str) -> anyhow::Error {
    Invalid(format!(
        "{} {why}: it was never seeded by nix-seed (no {STATE_DIR}/); pass the directory nix-seed seeds as \
         --target (the one pods mount at /nix)",
        path.display()
    ))
    .into()
}

/// The names in `dir` that are image ids, kept if `keep` holds for their stat.
fn ids_in(dir: Option<OwnedFd>, keep: SFlag, out: &mut HashSet<String>) -> Result<()> {
    let Some(dir) = dir else { return Ok(()) };
    for e in list(dir.as_fd())? {
        if !is_image_id(e.name.as_bytes()) {
            continue;
        }
        if lstat_at(dir.as_fd(), &e.name)?.is_some_and(|st| file_type(&st) == keep) {
            out.insert(e.name.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// `var/nix/gcroots/nix-seed`, if it exists (never through a symlink).
pub fn seed_roots_dir(root: BorrowedFd) -> std::io::Result<Option<OwnedFd>> {
    let mut d = match open_dir_if_exists(root, "var")? {
        Some(d) => d,
        None => return Ok(None),
    };
    for name in ["nix", "gcroots", crate::steps::gcroots::DIR] {
        d = match open_dir_if_exists(d.as_fd(), name)? {
            Some(x) => x,
            None => return Ok(None),
        };
    }
    Ok(Some(d))
}

/// The entries of a root directory and what each links to.
fn read_links(dir: BorrowedFd, name: &str) -> std::io::Result<Vec<(OsString, Option<String>)>> {
    let d = Listed::open(dir, name)?;
    let mut v = Vec::new();
    for e in &d.entries {
        let t = nix::fcntl::readlinkat(d.fd(), e.name.as_os_str())
            .ok()
            .map(|t| t.to_string_lossy().into_owned());
        v.push((e.name.clone(), t));
    }
    v.sort();
    Ok(v)
}

/// The store path (`/nix/store/<name>`) a link target inside the store names.
fn store_path_of(target: &str) -> Option<String> {
    let rest = target.strip_prefix(STORE)?;
    let name = rest.split('/').next().filter(|n| !n.is_empty())?;
    Some(format!("{STORE}{name}"))
}

/// Read the disk at `target`: its images and its database (read-only, no lock taken).
pub fn read(target: &Path, log: &Log) -> Result<Disk> {
    let root = open_root(target).map_err(|e| {
        Invalid(format!(
            "target {} cannot be opened ({e}): pass the directory nix-seed seeds as --target (the one pods \
             mount at /nix)",
            target.display()
        ))
    })?;
    let path = target.canonicalize().unwrap_or_else(|_| target.to_path_buf());
    let state = match open_dir_if_exists(root.as_fd(), STATE_DIR) {
        Ok(Some(d)) => d,
        Ok(None) => return Err(never_seeded(&path, "has no images")),
        Err(e) => {
            return Err(Invalid(format!(
                "cannot open {}/{STATE_DIR} ({e}): it must be a directory, not a symlink or file",
                path.display()
            ))
            .into())
        }
    };
    let shown = |d: &str| format!("cannot list {}/{STATE_DIR}/{d}", path.display());
    let mut ids = HashSet::new();
    ids_in(
        open_dir_if_exists(state.as_fd(), RECORDS_DIR)?,
        SFlag::S_IFREG,
        &mut ids,
    )
    .with_context(|| shown(RECORDS_DIR))?;
    ids_in(open_dir_if_exists(state.as_fd(), IMAGES_DIR)?, SFlag::S_IFREG, &mut ids)
        .with_context(|| shown(IMAGES_DIR))?;
    let roots_path = path.join("var/nix/gcroots").join(crate::steps::gcroots::DIR);
    let roots_dir = seed_roots_dir(root.as_fd()).with_context(|| format!("cannot open {}", roots_path.display()))?;
    let roots_fd = roots_dir.as_ref().map(|d| d.try_clone()).transpose()?;
    ids_in(roots_fd, SFlag::S_IFDIR, &mut ids).with_context(|| format!("cannot list {}", roots_path.display()))?;

    let (graph, has_db) = read_graph(root.as_fd(), &path, log)?;
    let index: HashMap<String, usize> = graph.paths.iter().enumerate().map(|(i, p)| (p.clone(), i)).collect();
    let present: HashSet<OsString> = match open_dir_if_exists(root.as_fd(), "store")? {
        Some(s) => list(s.as_fd())
            .with_context(|| format!("cannot list {}/store", path.display()))?
            .into_iter()
            .map(|e| e.name)
            .collect(),
        None => HashSet::new(),
    };

    let mut images = Vec::new();
    for id in ids {
        let record = match state::read_record(root.as_fd(), &path, &id) {
            Ok(r) => r,
            Err(e) => {
                log.warn(&format!("{e:#}"));
                None
            }
        };
        let last_seen = state::marked_at(root.as_fd(), &id)?;
        let roots = match &roots_dir {
            Some(d) if lstat_at(d.as_fd(), id.as_str())?.is_some_and(|st| file_type(&st) == SFlag::S_IFDIR) => Some(
                read_links(d.as_fd(), &id)
                    .with_context(|| format!("cannot list {}", roots_path.join(&id).display()))?,
            ),
            _ => None,
        };
        let starts: Vec<usize> = roots
            .iter()
            .flatten()
            .filter_map(|(_, t)| index.get(&store_path_of(t.as_deref()?)?).copied())
            .collect();
        let resolves = |t: &Option<String>| {
            t.as_deref().is_some_and(|t| {
                t.strip_prefix(STORE)
                    .is_some_and(|n| !n.contains('/') && present.contains(OsStr::new(n)))
                    && index.contains_key(t)
            })
        };
        // Every root the last complete seed made is still there (one deleted by hand is
        // seen), and every link resolves.
        let recorded_present = record.as_ref().and_then(|r| r.roots.as_ref()).is_none_or(|names| {
            names
                .iter()
                .all(|n| roots.iter().flatten().any(|(l, _)| l.as_os_str() == OsStr::new(n)))
        });
        let roots_complete = last_seen.is_some()
            && recorded_present
            && roots.as_ref().is_some_and(|r| r.iter().all(|(_, t)| resolves(t)));
        let reached = reach(&graph, starts);
        images.push(Image {
            closure: (0..graph.paths.len()).filter(|&i| reached[i]).collect(),
            id,
            record,
            last_seen,
            roots,
            roots_complete,
        });
    }
    images.sort_by(|a, b| b.recency().cmp(&a.recency()).then_with(|| a.id.cmp(&b.id)));
    Ok(Disk {
        path,
        root,
        images,
        graph,
        index,
        has_db,
    })
}

/// The target's database, read-only and without a write lock; an empty graph without one.
fn read_graph(root: BorrowedFd, path: &Path, log: &Log) -> Result<(Graph, bool)> {
    let var_path = path.join(crate::base::layout::VAR);
    let Some(var) = open_dir_if_exists(root, "var").with_context(|| format!("cannot open {}", var_path.display()))?
    else {
        return Ok((Graph::default(), false));
    };
    let Some(d) = nixdb::open_db_dir(var.as_fd(), &var_path)? else {
        return Ok((Graph::default(), false));
    };
    if !crate::base::dirfd::has_file(d.as_fd(), OsStr::new(nixdb::DB_FILE)) {
        return Ok((Graph::default(), false));
    }
    let db = nixdb::open_target(d.as_fd(), &var_path.join(nixdb::DB_DIR), true)?;
    if db.wal && crate::base::dirfd::is_network_fs(d.as_fd()) {
        log.warn(&crate::engines::nixdb::wal_on_network_fs(&db.path));
    }
    Ok((db.graph()?, true))
}

/// Which paths of `g` the paths `from` reach through references (themselves included).
pub fn reach(g: &Graph, from: impl IntoIterator<Item = usize>) -> Vec<bool> {
    let mut seen = vec![false; g.paths.len()];
    let mut todo: Vec<usize> = from.into_iter().collect();
    while let Some(i) = todo.pop() {
        if std::mem::replace(&mut seen[i], true) {
            continue;
        }
        todo.extend(g.references[i].iter().copied().filter(|&j| !seen[j]));
    }
    seen
}

impl Disk {
    /// Store paths in the closure of no image but `img`, and their NAR size.
    pub fn alone(&self, img: usize) -> (usize, u64) {
        let mut others = vec![false; self.graph.paths.len()];
        for (k, o) in self.images.iter().enumerate() {
            if k != img {
                for &i in &o.closure {
                    others[i] = true;
                }
            }
        }
        let own: Vec<usize> = self.images[img]
            .closure
            .iter()
            .copied()
            .filter(|&i| !others[i])
            .collect();
        (own.len(), self.bytes(&own))
    }

    pub fn bytes(&self, paths: &[usize]) -> u64 {
        paths.iter().map(|&i| self.graph.nar_size[i]).sum()
    }
}

/// Make the database's busy wait last `timeout` and say what it waits for; it then ends
/// in SQLITE_BUSY, which `main` reports as a lock timeout (exit 3).
pub fn wait_for_db(target: &Path, timeout: std::time::Duration, log: &std::sync::Arc<Log>) {
    let path = target.canonicalize().unwrap_or_else(|_| target.to_path_buf());
    nixdb::set_busy_context(&crate::base::layout::Layout::new(&path).db_dir, timeout, log.clone());
}

/// `nix-seed images`: one line per image, then the totals and the free space.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_paths() {
        assert!(is_image_id(b"f447873567e08c5a16887738c29dd5c5"));
        assert!(!is_image_id(b"F447873567e08c5a16887738c29dd5c5"));
        assert!(!is_image_id(b".nix-seed-tmp-0123456789ab-0-f447873567e08c5a16"));
        assert_eq!(
            store_path_of("/nix/store/abc-x/bin/y").as_deref(),
            Some("/nix/store/abc-x")
        );
        assert_eq!(store_path_of("/nix/var/nix/profiles/default"), None);
    }

    #[test]
    fn reach_follows_references() {
        let g = Graph {
            paths: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            nar_size: vec![1, 2, 4, 8],
            references: vec![vec![1], vec![2, 1], vec![], vec![0]],
        };
        assert_eq!(reach(&g, [0]), vec![true, true, true, false]);
        assert_eq!(reach(&g, [3]), vec![true; 4]);
        assert_eq!(reach(&g, []), vec![false; 4]);
    }
}
