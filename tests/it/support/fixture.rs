//! Builds a fake `/nix` root (`<root>/store/...`, `<root>/var/...`) containing every hard
//! case a store seeder must handle. Deterministic for a given seed.
//!
//! Self-contained (std + libc only, no `super::` imports) so that
//! `tools/make_store.rs` and `tools/bench_store.rs` include it with `#[path = ...] mod fixture;`.

use std::collections::HashSet;
use std::ffi::{CString, OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{lchown, symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Relative paths under `<root>/var` that a seeder must NOT copy (runtime state).
pub const RUNTIME_VAR_ENTRIES: &[&str] = &[
    "nix/daemon-socket",
    "nix/temproots",
    "nix/userpool",
    "nix/db/big-lock",
    "nix/gc.lock",
    "nix/db/db.sqlite-shm",
    "nix/gcroots/auto",
];

/// The nix-base32 alphabet (no e, o, u, t).
pub const NIX_BASE32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// What to build.
#[derive(Clone, Debug)]
pub struct Spec {
    /// Number of top-level store paths (all hard cases are present when `paths >= 20`).
    pub paths: usize,
    /// Size of the one big pseudo-random file.
    pub big_file_bytes: usize,
    pub seed: u64,
    /// Also build `<root>/var` (Nix-like state, including runtime entries and a socket).
    pub with_var: bool,
    /// chown some store paths to non-zero numeric uids/gids (only effective as root).
    pub owners: bool,
}

impl Default for Spec {
    fn default() -> Self {
        Spec {
            paths: 300,
            big_file_bytes: 4 << 20,
            seed: 1,
            with_var: true,
            owners: true,
        }
    }
}

/// A built fixture.
#[derive(Clone, Debug)]
pub struct Fixture {
    /// The fake `/nix`: contains `store/` and (optionally) `var/`.
    pub root: PathBuf,
    /// Top-level store path names created (never `.links`), in creation order.
    pub names: Vec<OsString>,
}

impl Fixture {
    pub fn store(&self) -> PathBuf {
        self.root.join("store")
    }
    pub fn var(&self) -> PathBuf {
        self.root.join("var")
    }
}

/// uid/gid of the paths owned by a "normal user" (when `owners` and root).
pub const USER_OWNER: (u32, u32) = (1000, 100);
/// uid/gid of the path owned by a "nixbld"-like id (when `owners` and root).
pub const BUILD_OWNER: (u32, u32) = (30001, 30000);

// ---------------------------------------------------------------------------------------
// PRNG

/// splitmix64.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    pub fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
    pub fn base32(&mut self, len: usize) -> String {
        (0..len).map(|_| NIX_BASE32[self.below(32)] as char).collect()
    }
}

fn mix(seed: u64, i: u64, salt: u64) -> u64 {
    let mut r = Rng::new(seed ^ salt.rotate_left(17));
    let a = r.next_u64();
    let mut r = Rng::new(a ^ i.wrapping_mul(0xA076_1D64_78BD_642F));
    r.next_u64()
}

/// Nix-style store path name: 32 nix-base32 chars (deterministic from `seed`, `i`) + `-` + `name`.
pub fn store_path_name(seed: u64, i: usize, name: &str) -> OsString {
    let hash = Rng::new(mix(seed, i as u64, 0x0053_544f_5245)).base32(32);
    OsString::from(format!("{hash}-{name}"))
}

// ---------------------------------------------------------------------------------------
// Low-level helpers

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).expect("path without NUL")
}

/// Set atime and mtime of `p` (not following symlinks) to `sec` seconds, 0 ns.
pub fn set_times_nofollow(p: &Path, sec: i64) {
    let ts = libc::timespec {
        tv_sec: sec as libc::time_t,
        tv_nsec: 0,
    };
    let times = [ts, ts];
    let c = cpath(p);
    // SAFETY: valid NUL-terminated path and a 2-element timespec array.
    let rc = unsafe { libc::utimensat(libc::AT_FDCWD, c.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    if rc != 0 {
        panic!("utimensat {}: {}", p.display(), std::io::Error::last_os_error());
    }
}

fn euid_is_root() -> bool {
    // SAFETY: no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn mkdir(p: &Path) {
    fs::create_dir_all(p).unwrap_or_else(|e| panic!("mkdir {}: {e}", p.display()));
}

/// Run `op`; if it fails with `NotFound`, create `p`'s parent directories and retry once.
fn with_parent<T>(p: &Path, what: &str, op: impl Fn() -> std::io::Result<T>) -> T {
    match op() {
        Ok(v) => v,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(parent) = p.parent() {
                mkdir(parent);
            }
            op().unwrap_or_else(|e| panic!("{what} {}: {e}", p.display()))
        }
        Err(e) => panic!("{what} {}: {e}", p.display()),
    }
}

fn write_file(p: &Path, content: &[u8], mode: u32) {
    let mut f = with_parent(p, "create", || {
        fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(p)
    });
    f.write_all(content)
        .unwrap_or_else(|e| panic!("write {}: {e}", p.display()));
    f.set_permissions(fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
}

fn make_symlink(target: impl AsRef<OsStr>, p: &Path) {
    with_parent(p, "symlink", || symlink(target.as_ref(), p));
}

fn hard_link(existing: &Path, new: &Path) {
    with_parent(new, "hard link", || fs::hard_link(existing, new));
}

/// Post-order: optionally lchown, chmod dirs 0555, set atime = mtime = 1 on every entry.
fn finalize(p: &Path, owner: Option<(u32, u32)>) {
    let is_dir = fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("stat {}: {e}", p.display()))
        .is_dir();
    finalize_entry(p, is_dir, owner);
}

fn finalize_entry(p: &Path, is_dir: bool, owner: Option<(u32, u32)>) {
    if is_dir {
        for e in fs::read_dir(p).unwrap_or_else(|e| panic!("readdir {}: {e}", p.display())) {
            let e = e.expect("dirent");
            let t = e.file_type().expect("dirent type");
            finalize_entry(&e.path(), t.is_dir(), owner);
        }
    }
    if let Some((u, g)) = owner {
        lchown(p, Some(u), Some(g)).unwrap_or_else(|e| panic!("lchown {}: {e}", p.display()));
    }
    if is_dir {
        fs::set_permissions(p, fs::Permissions::from_mode(0o555))
            .unwrap_or_else(|e| panic!("chmod {}: {e}", p.display()));
    }
    set_times_nofollow(p, 1);
}

fn small_content(rng: &mut Rng, label: &str, max: usize) -> Vec<u8> {
    let mut v = format!("# {label}\n").into_bytes();
    let n = rng.below(max.saturating_sub(v.len()).max(1));
    let start = v.len();
    v.resize(start + n, 0);
    rng.fill(&mut v[start..]);
    if rng.chance(50) {
        // Text-ish content half of the time.
        for b in &mut v[start..] {
            *b = b"abcdefghijklmnopqrstuvwxyz0123456789 \n"[(*b as usize) % 38];
        }
    }
    v
}

fn random_bytes(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    rng.fill(&mut v);
    v
}

// ---------------------------------------------------------------------------------------
// Store path kinds

const PKGS: &[&str] = &[
    "hello",
    "glibc",
    "bash",
    "coreutils",
    "zlib",
    "openssl",
    "python3",
    "perl",
    "gcc",
    "curl",
    "git",
    "ncurses",
    "readline",
    "libffi",
    "sqlite",
    "xz",
    "bzip2",
    "gnused",
    "gawk",
    "findutils",
    "nix",
    "systemd",
    "util-linux",
    "libxml2",
];

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    /// Directory path with the big file, ~100 KiB files and an in-path hardlink.
    Big,
    /// Directory path with spaces / unicode / non-UTF-8 / newline names and targets.
    WeirdNames,
    /// Top-level single file `<hash>-name.drv`, 0444.
    Drv,
    /// Top-level symlink store path.
    TopSymlink,
    /// Top-level empty directory (0555).
    EmptyDir,
    /// Generic package owned by the given uid/gid (when owners and root).
    Owned(u32, u32),
    /// Top-level empty regular file (0444).
    EmptyFile,
    /// Top-level executable single file (0555).
    ExecFile,
    /// Generic package directory.
    Generic,
}

/// Kind of the `j`-th path of a batch: all special kinds first, then mostly generic
/// packages with a sprinkling of `.drv` files.
fn kind_of(j: usize) -> Kind {
    const SPECIAL: &[Kind] = &[
        Kind::Big,
        Kind::WeirdNames,
        Kind::Drv,
        Kind::TopSymlink,
        Kind::EmptyDir,
        Kind::Owned(USER_OWNER.0, USER_OWNER.1),
        Kind::Owned(BUILD_OWNER.0, BUILD_OWNER.1),
        Kind::EmptyFile,
        Kind::ExecFile,
        Kind::Owned(USER_OWNER.0, USER_OWNER.1),
    ];
    if j < SPECIAL.len() {
        SPECIAL[j]
    } else if j % 5 == 2 {
        Kind::Drv
    } else {
        Kind::Generic
    }
}

struct Batch<'a> {
    store: &'a Path,
    seed: u64,
    big_file_bytes: usize,
    /// Names created so far in this batch (plus a few pre-existing ones), for symlink targets.
    targets: Vec<String>,
    /// Regular files in root-owned generic paths: (top-level index in `created`, relative path).
    link_sources: Vec<(usize, PathBuf)>,
    /// Root-owned generic paths of this batch (indices in `created`).
    generic: Vec<usize>,
    created: Vec<OsString>,
    owned: Vec<(OsString, (u32, u32))>,
    /// Files that get an extra hardlink in `.links`.
    links_entries: Vec<PathBuf>,
}

impl Batch<'_> {
    fn other_target(&self, rng: &mut Rng) -> String {
        if self.targets.is_empty() {
            format!("{}-missing", rng.base32(32))
        } else {
            self.targets[rng.below(self.targets.len())].clone()
        }
    }

    fn make_path(&mut self, idx: usize, kind: Kind) -> OsString {
        let mut rng = Rng::new(mix(self.seed, idx as u64, 0xC0_47E7));
        let pkg = PKGS[rng.below(PKGS.len())];
        let version = format!("{}.{}", 1 + rng.below(20), rng.below(40));
        let suffix = ["", "", "", "-dev", "-lib", "-man", "-doc"][rng.below(7)];
        let pname = format!("{pkg}-{version}{suffix}");
        let label = match kind {
            Kind::Drv => format!("{pname}.drv"),
            Kind::TopSymlink => format!("{pkg}-link"),
            Kind::EmptyDir => "empty-dir".to_string(),
            Kind::EmptyFile => "empty-file".to_string(),
            Kind::ExecFile => "builder.sh".to_string(),
            Kind::Big => format!("big-{pname}"),
            Kind::WeirdNames => format!("weird-names-{version}"),
            _ => pname.clone(),
        };
        let name = store_path_name(self.seed, idx, &label);
        let top = self.store.join(&name);
        let name_str = name.to_str().expect("store path names are ASCII").to_string();
        match kind {
            Kind::Drv => {
                let mut c = format!(
                    "Derive([(\"out\",\"/nix/store/{}\",\"\",\"\")],[",
                    self.other_target(&mut rng)
                )
                .into_bytes();
                c.extend(small_content(&mut rng, &name_str, 3000));
                c.extend_from_slice(b"])");
                write_file(&top, &c, 0o444);
            }
            Kind::TopSymlink => {
                let t = self.other_target(&mut rng);
                make_symlink(format!("/nix/store/{t}"), &top);
            }
            Kind::EmptyDir => mkdir(&top),
            Kind::EmptyFile => write_file(&top, b"", 0o444),
            Kind::ExecFile => {
                let mut c = b"#!/bin/sh\nset -e\n".to_vec();
                c.extend(small_content(&mut rng, &name_str, 2000));
                write_file(&top, &c, 0o555);
            }
            Kind::Big => {
                mkdir(&top);
                if self.big_file_bytes > 0 {
                    let big = random_bytes(&mut rng, self.big_file_bytes);
                    write_file(&top.join("lib/libbig.so"), &big, 0o444);
                }
                for k in 0..3 {
                    let n = 100 * 1024 + rng.below(4096);
                    let c = random_bytes(&mut rng, n);
                    write_file(&top.join(format!("share/data/blob{k}.bin")), &c, 0o444);
                }
                let c = small_content(&mut rng, &format!("{name_str}/bin/big-tool"), 4096);
                write_file(&top.join("bin/big-tool"), &c, 0o555);
                // Hardlink within one store path.
                hard_link(&top.join("bin/big-tool"), &top.join("bin/big-tool-hardlink"));
                make_symlink("../lib/libbig.so", &top.join("bin/libbig-link"));
            }
            Kind::WeirdNames => {
                mkdir(&top);
                let f = |rel: &[u8]| top.join(OsStr::from_bytes(rel));
                let mut w = |rel: &[u8], mode: u32| {
                    let c = small_content(&mut rng, &String::from_utf8_lossy(rel), 1024);
                    write_file(&f(rel), &c, mode);
                };
                w(b"dir with space/file with space.txt", 0o444);
                w("café/é.txt".as_bytes(), 0o444);
                w("日本/日本語.txt".as_bytes(), 0o444);
                w(b"bad\xff\xfename", 0o444);
                w(b"bad\xfe dir/inner\xff", 0o555);
                w(b"new\nline", 0o444);
                w(b"tab\tand\\backslash and 'quote\"", 0o444);
                w(b"-leading-dash", 0o444);
                make_symlink(OsStr::from_bytes(b"bad\xff\xfename"), &f(b"link-to-bad"));
                make_symlink("日本/日本語.txt", &f("ünïcödé-link".as_bytes()));
                make_symlink(
                    OsStr::from_bytes(b"../dangling \xff target"),
                    &f(b"dir with space/dangling \xfe link"),
                );
                mkdir(&f("空のディレクトリ".as_bytes()));
            }
            Kind::Generic | Kind::Owned(..) => {
                self.generic_package(&top, &name_str, pkg, &mut rng, matches!(kind, Kind::Generic));
                if let Kind::Owned(u, g) = kind {
                    self.owned.push((name.clone(), (u, g)));
                }
            }
        }
        self.targets.push(name_str);
        name
    }

    fn generic_package(&mut self, top: &Path, name: &str, pkg: &str, rng: &mut Rng, linkable: bool) {
        let cidx = self.created.len();
        let add = |this: &mut Self, rel: String, mode: u32, rng: &mut Rng, max: usize| {
            let c = small_content(rng, &format!("{name}/{rel}"), max);
            write_file(&top.join(&rel), &c, mode);
            if linkable && mode != 0o555 && !c.is_empty() {
                this.link_sources.push((cidx, PathBuf::from(&rel)));
            }
            if rng.chance(10) {
                this.links_entries.push(top.join(&rel));
            }
        };
        mkdir(top);
        // bin/
        let nbins = 1 + rng.below(3);
        for k in 0..nbins {
            let rel = if k == 0 {
                format!("bin/{pkg}")
            } else {
                format!("bin/{pkg}-{k}")
            };
            add(self, rel, 0o555, rng, 4096);
        }
        make_symlink(pkg, &top.join(format!("bin/{pkg}-alias")));
        make_symlink("../lib/libfoo.so", &top.join("bin/libfoo-link"));
        // lib/
        add(self, "lib/libfoo.so".into(), 0o444, rng, 4096);
        make_symlink("libfoo.so", &top.join("lib/libfoo.so.1"));
        if rng.chance(60) {
            let t = self.other_target(rng);
            make_symlink(format!("/nix/store/{t}/bin/x"), &top.join("lib/dep"));
        }
        // Deep nesting (depth up to 5).
        let depth = 1 + rng.below(5);
        let mut rel = String::from("share");
        for d in 1..depth {
            rel.push_str(&format!("/d{d}"));
        }
        add(self, format!("{rel}/leaf.txt"), 0o444, rng, 4096);
        if rng.chance(50) {
            add(self, format!("{rel}/leaf2.txt"), 0o444, rng, 4096);
        }
        add(self, format!("share/doc/{pkg}/README"), 0o444, rng, 4096);
        // Empty file, sometimes an empty dir.
        write_file(&top.join("share/empty"), b"", 0o444);
        if rng.chance(30) {
            mkdir(&top.join("share/emptydir"));
        }
        // Dangling symlinks (absolute and relative).
        if rng.chance(25) {
            make_symlink(
                format!("/nix/store/{}-missing/bin/nothing", rng.base32(32)),
                &top.join("share/dangling-abs"),
            );
            make_symlink("../nonexistent/file", &top.join("share/dangling-rel"));
        }
        // nix-support
        let t = self.other_target(rng);
        write_file(
            &top.join("nix-support/propagated-build-inputs"),
            format!("/nix/store/{t}\n").as_bytes(),
            0o444,
        );
        // A few extra random files.
        for k in 0..rng.below(6) {
            let dir = ["lib", "share", "share/doc", "etc", "libexec/x"][rng.below(5)];
            let mode = if rng.chance(20) { 0o555 } else { 0o444 };
            add(self, format!("{dir}/extra{k}"), mode, rng, 4096);
        }
    }

    /// Hardlink groups ACROSS store paths (2–4 links each) among root-owned generic paths,
    /// plus one `.links` entry per group.
    fn cross_links(&mut self, rng: &mut Rng) {
        if self.generic.len() < 2 || self.link_sources.is_empty() {
            return;
        }
        let groups = (self.generic.len() / 25).clamp(3, 10);
        let mut used: HashSet<(usize, PathBuf)> = HashSet::new();
        for g in 0..groups {
            let (src_idx, src_rel) = self.link_sources[rng.below(self.link_sources.len())].clone();
            let src = self.store.join(&self.created[src_idx]).join(&src_rel);
            let extra = 1 + rng.below(3);
            let mut tries = 0;
            let mut made = 0;
            while made < extra && tries < 20 {
                tries += 1;
                let dst_idx = self.generic[rng.below(self.generic.len())];
                if dst_idx == src_idx {
                    continue;
                }
                let rel = PathBuf::from(format!("share/licenses/shared-{g}"));
                if !used.insert((dst_idx, rel.clone())) {
                    continue;
                }
                hard_link(&src, &self.store.join(&self.created[dst_idx]).join(rel));
                made += 1;
            }
            self.links_entries.push(src);
        }
    }
}

fn write_links(store: &Path, files: &[PathBuf], rng: &mut Rng) {
    let links = store.join(".links");
    if !links.exists() {
        mkdir(&links);
        fs::set_permissions(&links, fs::Permissions::from_mode(0o755)).expect("chmod .links");
    }
    for f in files {
        loop {
            let l = links.join(rng.base32(52));
            if fs::symlink_metadata(&l).is_ok() {
                continue;
            }
            hard_link(f, &l);
            break;
        }
    }
}

/// Create `n` new store paths in `root/store`, skipping name indices whose hash already
/// exists there, then add cross-path hardlinks and `.links` entries, then finalize
/// (owners, modes, times) the new paths.
fn make_batch(root: &Path, n: usize, seed: u64, big_file_bytes: usize, owners: bool) -> Vec<OsString> {
    let store = root.join("store");
    let existing: Vec<OsString> = match fs::read_dir(&store) {
        Ok(rd) => rd.map(|e| e.expect("dirent").file_name()).collect(),
        Err(_) => Vec::new(),
    };
    let existing_hashes: HashSet<Vec<u8>> = existing
        .iter()
        .map(|n| n.as_bytes())
        .filter(|b| b.len() > 33 && b[32] == b'-')
        .map(|b| b[..32].to_vec())
        .collect();
    let mut batch = Batch {
        store: &store,
        seed,
        big_file_bytes,
        targets: existing
            .iter()
            .filter(|n| !n.as_bytes().starts_with(b"."))
            .filter_map(|n| n.to_str().map(String::from))
            .take(50)
            .collect(),
        link_sources: Vec::new(),
        generic: Vec::new(),
        created: Vec::new(),
        owned: Vec::new(),
        links_entries: Vec::new(),
    };
    let mut idx = 0usize;
    while batch.created.len() < n {
        let hash = store_path_name(seed, idx, "x");
        if existing_hashes.contains(&hash.as_bytes()[..32]) {
            idx += 1;
            continue;
        }
        let kind = kind_of(batch.created.len());
        let name = batch.make_path(idx, kind);
        if kind == Kind::Generic {
            batch.generic.push(batch.created.len());
        }
        batch.created.push(name);
        idx += 1;
    }
    let mut rng = Rng::new(mix(seed, n as u64, 0x11_4B5));
    batch.cross_links(&mut rng);
    let mut le = std::mem::take(&mut batch.links_entries);
    le.sort();
    le.dedup();
    write_links(&store, &le, &mut rng);

    let chown = owners && euid_is_root();
    for name in &batch.created {
        let owner = batch
            .owned
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, o)| *o)
            .filter(|_| chown);
        finalize(&store.join(name), owner);
    }
    batch.created
}

/// Build a fixture at `root` (created if absent; `root/store` must not already hold paths
/// with the same seed). `root/store` gets mode 0755.
pub fn build(root: &Path, spec: &Spec) -> Fixture {
    let store = root.join("store");
    mkdir(&store);
    fs::set_permissions(&store, fs::Permissions::from_mode(0o755)).expect("chmod store");
    let names = make_batch(root, spec.paths, spec.seed, spec.big_file_bytes, spec.owners);
    if spec.with_var {
        build_var(root, spec.seed, &names);
    }
    Fixture {
        root: root.to_path_buf(),
        names,
    }
}

/// Add `n` new store paths (names distinct from every existing one) to the store of an
/// existing fixture, with the same hard-case mix (big file is 1 MiB). Owners are applied
/// when running as root. Hardlink groups are only formed among the new paths.
pub fn add_paths(root: &Path, n: usize, seed: u64) -> Vec<OsString> {
    let store = root.join("store");
    mkdir(&store);
    let names = make_batch(root, n, seed, 1 << 20, true);
    if root.join("var/nix/db/db.sqlite").exists() {
        register(root, &names);
    }
    names
}

/// Nix's schema 10, as `nix-store` 2.8 creates it.
pub const NIX_SCHEMA: &str = "
CREATE TABLE ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer,
    sigs             text,
    ca               text
);
CREATE TABLE Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);
CREATE INDEX IndexReferrer on Refs(referrer);
CREATE INDEX IndexReference on Refs(reference);
CREATE TRIGGER DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;
CREATE TABLE DerivationOutputs (
    drv  integer not null,
    id   text not null,
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);
CREATE INDEX IndexDerivationOutputs on DerivationOutputs(path);
";

/// Register `names` in `root/var/nix/db/db.sqlite` (created with Nix's schema if absent)
/// with their real NAR hash and size, as Nix would: every third path refers to the one
/// before it, some refer to themselves, and each `.drv` gets an `out` output.
pub fn register(root: &Path, names: &[OsString]) {
    use std::os::fd::AsFd;
    let db_path = root.join("var/nix/db/db.sqlite");
    mkdir(db_path.parent().unwrap());
    let fresh = !db_path.exists();
    let conn = rusqlite::Connection::open(&db_path).expect("open fixture db");
    if fresh {
        conn.execute_batch(NIX_SCHEMA).expect("create schema");
    }
    let store = fs::File::open(root.join("store")).expect("open store");
    let tx = conn.unchecked_transaction().unwrap();
    let mut prev: Option<String> = None;
    let mut some_output: Option<String> = None;
    for (i, n) in names.iter().enumerate() {
        let name = n.to_str().expect("store path names are UTF-8");
        let nar = nix_seed::engines::nar::hash_path(store.as_fd(), n, None).expect("NAR of a fixture path");
        let path = format!("/nix/store/{name}");
        tx.execute(
            "INSERT INTO ValidPaths (path, hash, registrationTime, narSize, ultimate) VALUES (?1, ?2, ?3, ?4, 1)",
            rusqlite::params![path, nar.hash, 1_700_000_000 + i as i64, nar.size as i64],
        )
        .expect("insert path");
        let id = tx.last_insert_rowid();
        let id_of = |p: &str| -> i64 {
            tx.query_row("SELECT id FROM ValidPaths WHERE path = ?1", [p], |r| r.get(0))
                .expect("id")
        };
        if i % 3 == 1 {
            if let Some(p) = &prev {
                tx.execute("INSERT INTO Refs VALUES (?1, ?2)", [id, id_of(p)]).unwrap();
            }
        }
        if i % 5 == 0 {
            tx.execute("INSERT INTO Refs VALUES (?1, ?1)", [id]).unwrap();
        }
        if name.ends_with(".drv") {
            if let Some(o) = &some_output {
                tx.execute(
                    "INSERT INTO DerivationOutputs VALUES (?1, 'out', ?2)",
                    rusqlite::params![id, o],
                )
                .unwrap();
            }
        } else {
            some_output.get_or_insert(path.clone());
        }
        prev = Some(path);
    }
    tx.commit().unwrap();
}

// ---------------------------------------------------------------------------------------
// var

fn make_socket(p: &Path) {
    if let Some(parent) = p.parent() {
        mkdir(parent);
    }
    // sun_path is limited to 108 bytes; bind through /proc/self/fd/<dirfd>/ for long paths.
    let direct = p.as_os_str().len() < 100;
    if direct && std::os::unix::net::UnixListener::bind(p).is_ok() {
        return;
    }
    let parent = p.parent().expect("socket parent");
    if let Ok(dir) = fs::File::open(parent) {
        use std::os::fd::AsRawFd;
        let via = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd())).join(p.file_name().expect("socket name"));
        if std::os::unix::net::UnixListener::bind(&via).is_ok() {
            return;
        }
    }
    // Last resort: a socket inode without a listener.
    let c = cpath(p);
    // SAFETY: valid NUL-terminated path.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFSOCK | 0o666, 0) };
    if rc != 0 {
        panic!(
            "cannot create socket {}: {}",
            p.display(),
            std::io::Error::last_os_error()
        );
    }
}

fn build_var(root: &Path, seed: u64, names: &[OsString]) {
    let mut rng = Rng::new(mix(seed, 0, 0x7A_4242));
    let var = root.join("var");
    let nix = var.join("nix");
    let pick = |rng: &mut Rng| names[rng.below(names.len())].to_string_lossy().into_owned();
    write_file(&nix.join("db/schema"), b"10", 0o644);
    register(root, names);
    write_file(&nix.join("db/big-lock"), b"", 0o600);
    write_file(&nix.join("db/db.sqlite-shm"), &random_bytes(&mut rng, 32 * 1024), 0o644);
    write_file(&nix.join("gc.lock"), b"", 0o600);
    make_symlink("default-1-link", &nix.join("profiles/default"));
    if !names.is_empty() {
        let n = pick(&mut rng);
        make_symlink(format!("/nix/store/{n}"), &nix.join("profiles/default-1-link"));
        let n = pick(&mut rng);
        make_symlink(format!("/nix/store/{n}"), &nix.join("gcroots/booted-system"));
        let n = pick(&mut rng);
        make_symlink(
            format!("/nix/store/{n}"),
            &nix.join("profiles/per-user/root/channels-1-link"),
        );
    }
    make_symlink("/nix/var/nix/profiles", &nix.join("gcroots/profiles"));
    mkdir(&nix.join("gcroots/auto"));
    write_file(&nix.join("temproots/123"), b"", 0o644);
    make_socket(&nix.join("daemon-socket/socket"));
    mkdir(&nix.join("userpool"));
    let h = rng.base32(32);
    write_file(
        &var.join(format!("log/nix/drvs/{}/{}-hello.drv.bz2", &h[..2], &h[2..])),
        &random_bytes(&mut rng, 700),
        0o444,
    );
}
