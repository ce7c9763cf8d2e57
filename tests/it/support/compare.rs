//! Exact comparison of seeded stores, snapshots, and leftover-temp checks.
//!
//! All relative paths are raw bytes (`/`-separated); panic messages show them lossily.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs::{self, Metadata};
use std::hash::{DefaultHasher, Hasher};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::fixture::RUNTIME_VAR_ENTRIES;

/// File type of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Socket,
    Fifo,
    CharDev,
    BlockDev,
    Unknown,
}

pub fn kind_of(meta: &Metadata) -> Kind {
    let t = meta.file_type();
    if t.is_file() {
        Kind::File
    } else if t.is_dir() {
        Kind::Dir
    } else if t.is_symlink() {
        Kind::Symlink
    } else if t.is_socket() {
        Kind::Socket
    } else if t.is_fifo() {
        Kind::Fifo
    } else if t.is_char_device() {
        Kind::CharDev
    } else if t.is_block_device() {
        Kind::BlockDev
    } else {
        Kind::Unknown
    }
}

fn show(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn join_rel(prefix: &[u8], name: &[u8]) -> Vec<u8> {
    if prefix.is_empty() {
        name.to_vec()
    } else {
        let mut v = prefix.to_vec();
        v.push(b'/');
        v.extend_from_slice(name);
        v
    }
}

/// Walk `path` (not following symlinks), recording it under `rel` and every descendant
/// under `rel/...`. Children are visited in byte order.
fn walk(path: &Path, rel: Vec<u8>, out: &mut BTreeMap<Vec<u8>, (PathBuf, Metadata)>) {
    let meta = fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()));
    let is_dir = meta.is_dir();
    out.insert(rel.clone(), (path.to_path_buf(), meta));
    if is_dir {
        walk_children(path, &rel, out);
    }
}

fn walk_children(path: &Path, rel: &[u8], out: &mut BTreeMap<Vec<u8>, (PathBuf, Metadata)>) {
    let mut names: Vec<_> = fs::read_dir(path)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", path.display()))
        .map(|e| {
            e.unwrap_or_else(|e| panic!("readdir {}: {e}", path.display()))
                .file_name()
        })
        .collect();
    names.sort();
    for n in names {
        walk(&path.join(&n), join_rel(rel, n.as_bytes()), out);
    }
}

fn read_link_bytes(p: &Path) -> Vec<u8> {
    fs::read_link(p)
        .unwrap_or_else(|e| panic!("readlink {}: {e}", p.display()))
        .into_os_string()
        .as_bytes()
        .to_vec()
}

/// Compare two files' contents in chunks. Returns a description of the first difference.
fn content_diff(a: &Path, b: &Path) -> Option<String> {
    let mut fa = fs::File::open(a).unwrap_or_else(|e| panic!("open {}: {e}", a.display()));
    let mut fb = fs::File::open(b).unwrap_or_else(|e| panic!("open {}: {e}", b.display()));
    let mut ba = vec![0u8; 1 << 16];
    let mut bb = vec![0u8; 1 << 16];
    let mut off = 0u64;
    loop {
        let na = read_full(&mut fa, &mut ba, a);
        let nb = read_full(&mut fb, &mut bb, b);
        if na != nb || ba[..na] != bb[..nb] {
            let i = ba[..na]
                .iter()
                .zip(&bb[..nb])
                .position(|(x, y)| x != y)
                .unwrap_or(na.min(nb));
            return Some(format!("content differs at byte {}", off + i as u64));
        }
        if na == 0 {
            return None;
        }
        off += na as u64;
    }
}

fn read_full(f: &mut fs::File, buf: &mut [u8], p: &Path) -> usize {
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read {}: {e}", p.display()),
        }
    }
    n
}

struct Diffs {
    what: String,
    list: Vec<String>,
}

impl Diffs {
    fn new(what: String) -> Diffs {
        Diffs { what, list: Vec::new() }
    }
    fn add(&mut self, rel: &[u8], msg: impl std::fmt::Display) {
        self.list.push(format!("{:?}: {msg}", show(rel)));
    }
    fn finish(self) {
        if self.list.is_empty() {
            return;
        }
        const MAX: usize = 40;
        let mut s = format!("{}: {} difference(s):\n", self.what, self.list.len());
        for d in self.list.iter().take(MAX) {
            s.push_str("  - ");
            s.push_str(d);
            s.push('\n');
        }
        if self.list.len() > MAX {
            s.push_str(&format!("  ... and {} more\n", self.list.len() - MAX));
        }
        panic!("{s}");
    }
}

fn top_level_store_names(store: &Path) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = fs::read_dir(store)
        .unwrap_or_else(|e| panic!("readdir {}: {e}", store.display()))
        .map(|e| e.expect("dirent").file_name().as_bytes().to_vec())
        .filter(|n| !n.starts_with(b"."))
        .collect();
    v.sort();
    v
}

/// Partition of non-directory entries into hardlink groups (sets of relative paths).
fn link_partition(m: &BTreeMap<Vec<u8>, (PathBuf, Metadata)>) -> BTreeSet<Vec<Vec<u8>>> {
    let mut groups: HashMap<(u64, u64), Vec<Vec<u8>>> = HashMap::new();
    for (rel, (_, meta)) in m {
        if !meta.is_dir() {
            groups.entry((meta.dev(), meta.ino())).or_default().push(rel.clone());
        }
    }
    groups
        .into_values()
        .map(|mut g| {
            g.sort();
            g
        })
        .collect()
}

/// (distinct inodes, sum of st_size over distinct regular-file inodes).
fn usage(m: &BTreeMap<Vec<u8>, (PathBuf, Metadata)>) -> (usize, u64) {
    let mut seen = HashSet::new();
    let mut bytes = 0;
    for (_, meta) in m.values() {
        if seen.insert((meta.dev(), meta.ino())) && meta.is_file() {
            bytes += meta.size();
        }
    }
    (seen.len(), bytes)
}

fn mtime(m: &Metadata) -> (i64, i64) {
    (m.mtime(), m.mtime_nsec())
}

/// Assert every top-level entry of `src_root/store` whose name does not start with `.`
/// exists in `dst_root/store` and is identical: file type, `mode & 0o7777`, uid, gid,
/// mtime (s+ns, symlinks included), size (files, symlinks), content, symlink target, the
/// set of directory entries, and the hardlink partition (restricted to those paths). Also
/// checks distinct-inode count and bytes over distinct regular-file inodes are equal.
/// `dst` may contain extra top-level paths (and `.links`, temp entries): they are ignored.
pub fn assert_store_equal(src_root: &Path, dst_root: &Path) {
    assert_store_equal_with(src_root, dst_root, Links::Exact)
}

/// How hardlink grouping is compared.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Links {
    /// The partitions are identical and disk usage is equal: one complete run.
    Exact,
    /// Every dst group lies inside one src group (nothing linked that the source does not
    /// link), but a src group may be split: what a run that resumes an interrupted one
    /// gives, since hardlinks are kept among the files copied in one run.
    Subset,
}

/// [`assert_store_equal`] with a choice of hardlink comparison.
pub fn assert_store_equal_with(src_root: &Path, dst_root: &Path, links: Links) {
    let src_store = src_root.join("store");
    let dst_store = dst_root.join("store");
    let mut diffs = Diffs::new(format!("store {} != {}", src_store.display(), dst_store.display()));
    let mut src = BTreeMap::new();
    let mut dst = BTreeMap::new();
    for name in top_level_store_names(&src_store) {
        let os = std::ffi::OsStr::from_bytes(&name);
        walk(&src_store.join(os), name.clone(), &mut src);
        let d = dst_store.join(os);
        if fs::symlink_metadata(&d).is_ok() {
            walk(&d, name.clone(), &mut dst);
        } else {
            diffs.add(&name, "store path missing in dst");
        }
    }

    let mut content_checked: HashSet<((u64, u64), (u64, u64))> = HashSet::new();
    for (rel, (sp, sm)) in &src {
        let Some((dp, dm)) = dst.get(rel) else {
            // Entries of a store path missing altogether were reported above.
            let top = rel.split(|&b| b == b'/').next().unwrap_or(rel);
            if dst.contains_key(top) {
                diffs.add(rel, "missing in dst");
            }
            continue;
        };
        let (sk, dk) = (kind_of(sm), kind_of(dm));
        if sk != dk {
            diffs.add(rel, format!("type {sk:?} != {dk:?}"));
            continue;
        }
        let (smode, dmode) = (sm.mode() & 0o7777, dm.mode() & 0o7777);
        if smode != dmode {
            diffs.add(rel, format!("mode {smode:04o} != {dmode:04o}"));
        }
        if sm.uid() != dm.uid() {
            diffs.add(rel, format!("uid {} != {}", sm.uid(), dm.uid()));
        }
        if sm.gid() != dm.gid() {
            diffs.add(rel, format!("gid {} != {}", sm.gid(), dm.gid()));
        }
        if mtime(sm) != mtime(dm) {
            diffs.add(rel, format!("mtime {:?} != {:?}", mtime(sm), mtime(dm)));
        }
        match sk {
            Kind::File => {
                if sm.size() != dm.size() {
                    diffs.add(rel, format!("size {} != {}", sm.size(), dm.size()));
                } else if content_checked.insert(((sm.dev(), sm.ino()), (dm.dev(), dm.ino()))) {
                    if let Some(d) = content_diff(sp, dp) {
                        diffs.add(rel, d);
                    }
                }
            }
            Kind::Symlink => {
                let (st, dt) = (read_link_bytes(sp), read_link_bytes(dp));
                if st != dt {
                    diffs.add(rel, format!("symlink target {:?} != {:?}", show(&st), show(&dt)));
                }
                if sm.size() != dm.size() {
                    diffs.add(rel, format!("symlink size {} != {}", sm.size(), dm.size()));
                }
            }
            Kind::CharDev | Kind::BlockDev if sm.rdev() != dm.rdev() => {
                diffs.add(rel, format!("rdev {} != {}", sm.rdev(), dm.rdev()));
            }
            _ => {}
        }
    }
    for rel in dst.keys() {
        if !src.contains_key(rel) {
            diffs.add(rel, "extra entry in dst");
        }
    }

    // Hardlink partitions (only meaningful once entry sets agree, but always checked).
    let sp = link_partition(&src);
    let dp = link_partition(&dst);
    if links == Links::Subset {
        let src_group_of: HashMap<&Vec<u8>, &Vec<Vec<u8>>> =
            sp.iter().flat_map(|g| g.iter().map(move |r| (r, g))).collect();
        for g in dp.iter().filter(|g| g.len() > 1) {
            let inside = src_group_of
                .get(&g[0])
                .is_some_and(|sg| g.iter().all(|r| sg.contains(r)));
            if !inside {
                let shown: Vec<String> = g.iter().map(|r| show(r)).collect();
                diffs.add(&g[0], format!("dst hardlinks entries not linked in src: {shown:?}"));
            }
        }
        diffs.finish();
        return;
    }
    if sp != dp {
        let dst_group_of: HashMap<&Vec<u8>, &Vec<Vec<u8>>> =
            dp.iter().flat_map(|g| g.iter().map(move |r| (r, g))).collect();
        for g in sp.difference(&dp) {
            let shown: Vec<String> = g.iter().map(|r| show(r)).collect();
            let other: Vec<String> = dst_group_of
                .get(&g[0])
                .map(|d| d.iter().map(|r| show(r)).collect())
                .unwrap_or_default();
            diffs.add(&g[0], format!("hardlink group differs: src {shown:?}, dst {other:?}"));
        }
        for g in dp.difference(&sp) {
            if g.len() > 1 && g.iter().all(|r| src.contains_key(r)) {
                let shown: Vec<String> = g.iter().map(|r| show(r)).collect();
                diffs.add(&g[0], format!("dst hardlinks entries not linked in src: {shown:?}"));
            }
        }
    }
    let (su, du) = (usage(&src), usage(&dst));
    if su != du {
        diffs.add(
            b"<usage>",
            format!("(distinct inodes, regular-file bytes) src {su:?} != dst {du:?}"),
        );
    }
    diffs.finish();
}

/// Panic if a name starting with `.nix-seed-tmp` is left at the top level of `dst_root`,
/// `dst_root/store`, `dst_root/var`, `dst_root/var/nix` or `dst_root/var/nix/db`
/// (missing directories are fine).
pub fn assert_no_temp(dst_root: &Path) {
    let mut found = Vec::new();
    for sub in ["", "store", "var", "var/nix", "var/nix/db"] {
        let dir = if sub.is_empty() {
            dst_root.to_path_buf()
        } else {
            dst_root.join(sub)
        };
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            if e.file_name().as_bytes().starts_with(b".nix-seed-tmp") {
                found.push(e.path().display().to_string());
            }
        }
    }
    assert!(found.is_empty(), "leftover temporary entries: {found:#?}");
}

// ---------------------------------------------------------------------------------------
// Snapshots

/// Metadata of one entry in a [`Snapshot`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapEntry {
    pub kind: Kind,
    /// `st_mode & 0o7777`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub ctime: (i64, i64),
    pub ino: u64,
    pub nlink: u64,
    pub size: u64,
    /// Hash of the contents (regular files only).
    pub hash: Option<u64>,
    /// Symlink target bytes (symlinks only).
    pub target: Option<Vec<u8>>,
}

/// Every entry strictly below `root` (the root itself is not included), keyed by the
/// `/`-separated relative path bytes (e.g. `b"store/<name>/bin/x"`).
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub root: PathBuf,
    pub entries: BTreeMap<Vec<u8>, SnapEntry>,
}

fn hash_file(p: &Path) -> u64 {
    let mut f = fs::File::open(p).unwrap_or_else(|e| panic!("open {}: {e}", p.display()));
    let mut h = DefaultHasher::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = read_full(&mut f, &mut buf, p);
        if n == 0 {
            break;
        }
        h.write(&buf[..n]);
    }
    h.finish()
}

/// Capture every entry under `root` (not following symlinks). A missing `root` gives an
/// empty snapshot.
pub fn snapshot(root: &Path) -> Snapshot {
    let mut m = BTreeMap::new();
    if fs::symlink_metadata(root).is_ok_and(|m| m.is_dir()) {
        walk_children(root, b"", &mut m);
    }
    let entries = m
        .into_iter()
        .map(|(rel, (p, meta))| {
            let kind = kind_of(&meta);
            let e = SnapEntry {
                kind,
                mode: meta.mode() & 0o7777,
                uid: meta.uid(),
                gid: meta.gid(),
                mtime: (meta.mtime(), meta.mtime_nsec()),
                ctime: (meta.ctime(), meta.ctime_nsec()),
                ino: meta.ino(),
                nlink: meta.nlink(),
                size: meta.size(),
                hash: (kind == Kind::File).then(|| hash_file(&p)),
                target: (kind == Kind::Symlink).then(|| read_link_bytes(&p)),
            };
            (rel, e)
        })
        .collect();
    Snapshot {
        root: root.to_path_buf(),
        entries,
    }
}

/// Every entry of `before` whose relative path satisfies `paths` must be present in `after`
/// with identical metadata (type, mode, uid, gid, mtime, ctime, ino, nlink, size, content
/// hash, link target). Entries new in `after` are ignored.
pub fn assert_unchanged(before: &Snapshot, after: &Snapshot, paths: impl Fn(&[u8]) -> bool) {
    unchanged(before, after, paths, true)
}

/// [`assert_unchanged`] but ignoring ctime and link count, which change when another name
/// of the same inode is added or removed (e.g. a killed run's temporary copy that
/// hardlinked a published file is cleaned up) while the entry itself stays as it was.
pub fn assert_unchanged_but_links(before: &Snapshot, after: &Snapshot, paths: impl Fn(&[u8]) -> bool) {
    unchanged(before, after, paths, false)
}

fn unchanged(before: &Snapshot, after: &Snapshot, paths: impl Fn(&[u8]) -> bool, strict: bool) {
    let mut diffs = Diffs::new(format!(
        "snapshot of {} changed (now {})",
        before.root.display(),
        after.root.display()
    ));
    for (rel, b) in &before.entries {
        if !paths(rel) {
            continue;
        }
        match after.entries.get(rel) {
            None => diffs.add(rel, "removed"),
            Some(a) if a != b => {
                let same_but_links = SnapEntry {
                    ctime: b.ctime,
                    nlink: b.nlink,
                    ..a.clone()
                } == *b;
                if !strict && same_but_links {
                    continue;
                }
                let mut what = Vec::new();
                macro_rules! cmp {
                    ($($f:ident),*) => {$(
                        if a.$f != b.$f {
                            what.push(format!("{} {:?} -> {:?}", stringify!($f), b.$f, a.$f));
                        }
                    )*};
                }
                cmp!(kind, mode, uid, gid, mtime, ctime, ino, nlink, size, hash);
                if a.target != b.target {
                    what.push(format!(
                        "target {:?} -> {:?}",
                        b.target.as_deref().map(show),
                        a.target.as_deref().map(show)
                    ));
                }
                diffs.add(rel, what.join(", "));
            }
            Some(_) => {}
        }
    }
    diffs.finish();
}

// ---------------------------------------------------------------------------------------
// var

fn is_runtime(rel: &[u8]) -> bool {
    RUNTIME_VAR_ENTRIES.iter().any(|e| {
        let e = e.as_bytes();
        rel == e || (rel.starts_with(e) && rel.get(e.len()) == Some(&b'/'))
    })
}

/// Every entry of `src_root/var` not under [`RUNTIME_VAR_ENTRIES`] (and not a socket, fifo
/// or device) exists in `dst_root/var` with the same type, symlink target and file
/// content; none of `RUNTIME_VAR_ENTRIES` exists in `dst_root/var`; no socket anywhere in
/// `dst_root/var`.
pub fn assert_var_seeded(src_root: &Path, dst_root: &Path) {
    let (sv, dv) = (src_root.join("var"), dst_root.join("var"));
    let mut diffs = Diffs::new(format!("var {} -> {}", sv.display(), dv.display()));
    let mut src = BTreeMap::new();
    walk_children(&sv, b"", &mut src);
    let mut dst = BTreeMap::new();
    if fs::symlink_metadata(&dv).is_ok_and(|m| m.is_dir()) {
        walk_children(&dv, b"", &mut dst);
    } else {
        diffs.add(b"var", "dst var missing");
    }
    for (rel, (sp, sm)) in &src {
        let sk = kind_of(sm);
        if is_runtime(rel) || !matches!(sk, Kind::File | Kind::Dir | Kind::Symlink) {
            continue;
        }
        let Some((dp, dm)) = dst.get(rel) else {
            diffs.add(rel, "missing in dst var");
            continue;
        };
        let dk = kind_of(dm);
        if sk != dk {
            diffs.add(rel, format!("type {sk:?} != {dk:?}"));
            continue;
        }
        match sk {
            Kind::Symlink => {
                let (st, dt) = (read_link_bytes(sp), read_link_bytes(dp));
                if st != dt {
                    diffs.add(rel, format!("symlink target {:?} != {:?}", show(&st), show(&dt)));
                }
            }
            Kind::File if rel.as_slice() == b"nix/db/db.sqlite" => {
                // A copy through SQLite's backup API: same rows, not the same bytes.
                let (a, b) = (db_rows(sp), db_rows(dp));
                if let Some(missing) = a.iter().find(|r| !b.contains(*r)) {
                    diffs.add(rel, format!("registration missing or different in dst: {missing}"));
                }
            }
            Kind::File => {
                if sm.size() != dm.size() {
                    diffs.add(rel, format!("size {} != {}", sm.size(), dm.size()));
                } else if let Some(d) = content_diff(sp, dp) {
                    diffs.add(rel, d);
                }
            }
            _ => {}
        }
    }
    for e in RUNTIME_VAR_ENTRIES {
        // nix-seed creates Nix's gc.lock itself (empty) to hold it shared while it seeds.
        if *e == "nix/gc.lock" && fs::symlink_metadata(dv.join(e)).is_ok_and(|m| m.is_file() && m.len() == 0) {
            continue;
        }
        if fs::symlink_metadata(dv.join(e)).is_ok() {
            diffs.add(e.as_bytes(), "runtime entry must not be seeded");
        }
    }
    for (rel, (_, dm)) in &dst {
        if kind_of(dm) == Kind::Socket {
            diffs.add(rel, "socket in dst var");
        }
    }
    diffs.finish();
}

/// Every registration of a Nix database as one line (ValidPaths with their references and
/// derivation outputs, by path), for comparing databases row by row.
pub fn db_rows(db: &Path) -> BTreeSet<String> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
    let mut out = BTreeSet::new();
    let mut st = c
        .prepare("SELECT path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca FROM ValidPaths")
        .unwrap();
    let rows = st
        .query_map([], |r| {
            Ok(format!(
                "path {} {} {} {:?} {:?} {:?} {:?} {:?}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, Option<String>>(3)?,
                r.get::<_, Option<i64>>(4)?,
                r.get::<_, Option<i64>>(5)?,
                r.get::<_, Option<String>>(6)?,
                r.get::<_, Option<String>>(7)?
            ))
        })
        .unwrap();
    out.extend(rows.map(Result::unwrap));
    let mut st = c
        .prepare("SELECT a.path, b.path FROM Refs r JOIN ValidPaths a ON a.id = r.referrer JOIN ValidPaths b ON b.id = r.reference")
        .unwrap();
    out.extend(
        st.query_map([], |r| {
            Ok(format!("ref {} {}", r.get::<_, String>(0)?, r.get::<_, String>(1)?))
        })
        .unwrap()
        .map(Result::unwrap),
    );
    let mut st = c
        .prepare("SELECT v.path, d.id, d.path FROM DerivationOutputs d JOIN ValidPaths v ON v.id = d.drv")
        .unwrap();
    out.extend(
        st.query_map([], |r| {
            Ok(format!(
                "out {} {} {}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?
            ))
        })
        .unwrap()
        .map(Result::unwrap),
    );
    out
}
