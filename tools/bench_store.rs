//! Build a benchmark store shaped like a real one: DIR/store (store paths) and DIR/var
//! (a real schema-10 Nix database registering every path with its real NAR hash, a
//! profile link and a GC root).
//!
//! cargo run --release --example bench_store -- DIR [--paths N] [--files N] [--bytes N]
//!                                                  [--small-files] [--big-path N] [--seed S]
//!
//! Defaults: 1,500 store paths, 100,000 files (regular files and symlinks, hardlink names
//! included), 2 GiB of distinct file data. The mix, from the same seed always the same:
//! - store paths: ~8% top-level single files (hooks, wrappers, configs; no `.drv`: an
//!   image's runtime closure has none), ~1% top-level symlinks, the rest directories whose
//!   file counts follow a log-normal law (a few big packages, many small ones), nested up
//!   to 6 levels (bin/, lib/, share/..., nix-support/);
//! - entries: ~10% symlinks (relative in-path, absolute `/nix/store/...` to other paths,
//!   dangling absolute and relative), ~2% extra hardlinks (half within a store path, half
//!   across store paths, each cross-path group with a `store/.links` entry as
//!   `nix-store --optimise` leaves), the rest regular files;
//! - file sizes: 65% at most 4 KiB (1% empty), 33% 4 KiB-128 KiB, 2% 128 KiB-4 MiB, and
//!   a few (one in 20,000 files, at least 2) of 4-24 MiB; medium and large sizes are
//!   scaled so that the total is `--bytes`. `--small-files`: every file is at most
//!   4 KiB (`--bytes` ignored), for the million-file scale run;
//! - metadata as Nix leaves it: directories 0555, files 0444 (0555 in bin/ and ~15%
//!   elsewhere), atime = mtime = 1 s on everything including symlinks, owner = the caller.
//!
//! `--big-path N`: the first store path holds N of the files (a big package: a Python
//! with its library, a JDK), the others share the rest by the same law, as in the store
//! of issue 13 (one path of 3,000 files among ~100).
//!
//! Prints one summary line (counts, bytes, share of files <= 4 KiB, seconds).

#[path = "../tests/it/support/fixture.rs"]
#[allow(dead_code, reason = "this tool uses a few of the fixture's helpers")]
mod fixture;

use std::ffi::OsString;
use std::fs::{self, File, FileTimes, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::exit;
use std::time::{Duration, Instant, SystemTime};

use fixture::Rng;

fn usage() -> ! {
    eprintln!(
        "usage: bench_store DIR [--paths N] [--files N] [--bytes N] [--small-files] [--seed S]\n\
         DIR receives DIR/store and DIR/var; it must not hold a store already"
    );
    exit(2)
}

struct Spec {
    paths: usize,
    files: usize,
    bytes: u64,
    small_only: bool,
    /// Files of the first store path (0: it follows the law like the others).
    big_path: usize,
    seed: u64,
}

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

/// Log-uniform integer in `[lo, hi]`.
fn log_uniform(rng: &mut Rng, lo: u64, hi: u64) -> u64 {
    let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    let (a, b) = ((lo.max(1)) as f64, hi as f64);
    ((a.ln() + u * (b.ln() - a.ln())).exp() as u64).clamp(lo, hi)
}

/// Standard normal (Box-Muller).
fn normal(rng: &mut Rng) -> f64 {
    let u1 = ((rng.next_u64() >> 11) as f64 + 1.0) / ((1u64 << 53) as f64 + 1.0);
    let u2 = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

#[derive(Clone, Copy, PartialEq)]
enum SizeClass {
    Small,
    Medium,
    Large,
    Huge,
}

/// Sizes of the `n` regular files (in creation order), totalling about `bytes`.
fn plan_sizes(rng: &mut Rng, n: usize, bytes: u64, small_only: bool) -> Vec<u64> {
    let mut class = Vec::with_capacity(n);
    let mut size = Vec::with_capacity(n);
    for _ in 0..n {
        let r = rng.below(10_000);
        let (c, s) = if small_only || r < 6_500 {
            // 1% of all files empty, the rest of the small ones up to 4 KiB.
            let s = if rng.below(65) == 0 {
                0
            } else {
                log_uniform(rng, 16, 4 * KIB)
            };
            (SizeClass::Small, s)
        } else if r < 9_800 {
            (SizeClass::Medium, log_uniform(rng, 4 * KIB + 1, 128 * KIB))
        } else {
            (SizeClass::Large, log_uniform(rng, 128 * KIB, 4 * MIB))
        };
        class.push(c);
        size.push(s);
    }
    if small_only || n == 0 {
        return size;
    }
    // A few huge files, spread over the store.
    let huge = (n / 20_000).max(2).min(n);
    for k in 0..huge {
        let i = (k * n / huge + rng.below(n / huge)).min(n - 1);
        class[i] = SizeClass::Huge;
        size[i] = log_uniform(rng, 4 * MIB, 24 * MIB);
    }
    let fixed: u64 = (0..n)
        .filter(|&i| matches!(class[i], SizeClass::Small | SizeClass::Huge))
        .map(|i| size[i])
        .sum();
    let scalable: u64 = (0..n)
        .filter(|&i| matches!(class[i], SizeClass::Medium | SizeClass::Large))
        .map(|i| size[i])
        .sum();
    if scalable > 0 {
        let f = (bytes.saturating_sub(fixed)) as f64 / scalable as f64;
        for i in 0..n {
            match class[i] {
                SizeClass::Medium => size[i] = ((size[i] as f64 * f) as u64).clamp(4 * KIB + 1, 512 * KIB),
                SizeClass::Large => size[i] = ((size[i] as f64 * f) as u64).clamp(128 * KIB, 16 * MIB),
                _ => {}
            }
        }
    }
    size
}

fn epoch1() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(1)
}

fn die(what: &str, p: &Path, e: std::io::Error) -> ! {
    eprintln!("bench_store: {what} {}: {e}", p.display());
    exit(1)
}

/// Content source: a pseudo-random pool; each file is a unique header plus a window of it.
struct Pool {
    data: Vec<u8>,
}

impl Pool {
    fn new(rng: &mut Rng) -> Pool {
        let mut data = vec![0u8; 8 * MIB as usize];
        rng.fill(&mut data);
        // A text-like first half (compressible, like scripts and docs), a binary second half.
        for b in &mut data[..4 * MIB as usize] {
            *b = b"abcdefghijklmnopqrstuvwxyz0123456789 \n"[(*b as usize) % 38];
        }
        Pool { data }
    }

    fn write(&self, f: &mut File, p: &Path, id: &str, size: u64, rng: &mut Rng) {
        let header = format!("#{id}\n");
        let mut left = size as usize;
        let h = header.len().min(left);
        if h > 0 {
            f.write_all(&header.as_bytes()[..h])
                .unwrap_or_else(|e| die("write", p, e));
        }
        left -= h;
        let mut off = rng.below(self.data.len());
        while left > 0 {
            let n = left.min(self.data.len() - off);
            f.write_all(&self.data[off..off + n])
                .unwrap_or_else(|e| die("write", p, e));
            left -= n;
            off = 0;
        }
    }
}

/// One regular file already created, a candidate for hardlinks and symlink targets.
#[derive(Clone)]
struct Made {
    /// Index of its store path in `names`.
    path: usize,
    /// Path relative to the store path.
    rel: String,
}

struct Gen {
    store: PathBuf,
    rng: Rng,
    pool: Pool,
    sizes: Vec<u64>,
    next_size: usize,
    names: Vec<OsString>,
    /// A reservoir of regular files of earlier store paths (for cross-path hardlinks).
    earlier: Vec<Made>,
    /// Files that got a `.links` entry.
    links_entries: Vec<PathBuf>,
    // Counts.
    regular: u64,
    symlinks: u64,
    hardlinks: u64,
    cross_hardlinks: u64,
    dirs: u64,
    bytes: u64,
    small: u64,
}

const DIR_STEMS: &[&str] = &[
    "bin",
    "lib",
    "share",
    "include",
    "libexec",
    "etc",
    "lib/pkgconfig",
    "share/doc",
    "share/man/man1",
    "share/locale",
    "lib/python3.11/site-packages",
];
const STEMS: &[&str] = &[
    "lib", "mod", "util", "core", "data", "test", "conf", "main", "parse", "io", "net", "crypt", "str", "fmt", "sys",
    "os", "init", "term", "glob", "hash",
];
const EXTS: &[&str] = &[
    "so", "py", "pyc", "h", "pc", "txt", "json", "pl", "pm", "gz", "mo", "html", "a", "la", "sh",
];

impl Gen {
    fn next_size(&mut self) -> u64 {
        let s = self.sizes.get(self.next_size).copied().unwrap_or(1024);
        self.next_size += 1;
        s
    }

    fn write_file(&mut self, p: &Path, id: &str, mode: u32) {
        let size = self.next_size();
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(p)
            .unwrap_or_else(|e| die("create", p, e));
        self.pool.write(&mut f, p, id, size, &mut self.rng);
        if f.metadata().map(|m| m.permissions().mode() & 0o7777).unwrap_or(mode) != mode {
            f.set_permissions(fs::Permissions::from_mode(mode))
                .unwrap_or_else(|e| die("chmod", p, e));
        }
        f.set_times(FileTimes::new().set_accessed(epoch1()).set_modified(epoch1()))
            .unwrap_or_else(|e| die("set times of", p, e));
        self.regular += 1;
        self.bytes += size;
        if size <= 4 * KIB {
            self.small += 1;
        }
    }

    fn make_symlink(&mut self, target: &str, p: &Path) {
        symlink(target, p).unwrap_or_else(|e| die("symlink", p, e));
        fixture::set_times_nofollow(p, 1);
        self.symlinks += 1;
    }

    fn mkdir(&mut self, p: &Path) {
        fs::create_dir(p).unwrap_or_else(|e| die("mkdir", p, e));
        self.dirs += 1;
    }

    fn finalize_dir(p: &Path) {
        fs::set_permissions(p, fs::Permissions::from_mode(0o555)).unwrap_or_else(|e| die("chmod", p, e));
        fixture::set_times_nofollow(p, 1);
    }

    fn other_path(&mut self, before: usize) -> Option<String> {
        if before == 0 {
            return None;
        }
        let i = self.rng.below(before);
        self.names[i].to_str().map(String::from)
    }

    /// A directory store path with `n` entries (files, symlinks, extra hardlinks).
    fn dir_path(&mut self, idx: usize, top: &Path, pkg: &str, n: usize) {
        self.mkdir(top);
        // Directories of this path, relative; index 0 is the top.
        let mut dirs: Vec<String> = vec![String::new()];
        let mut depth: Vec<usize> = vec![0];
        let mut files_here: Vec<Made> = Vec::new();
        let add_dir = |g: &mut Gen, dirs: &mut Vec<String>, depth: &mut Vec<usize>, rel: String, d: usize| -> usize {
            // Create missing parents (DIR_STEMS has two-level stems).
            let mut acc = String::new();
            for comp in rel.split('/') {
                if !acc.is_empty() {
                    acc.push('/');
                }
                acc.push_str(comp);
                if !dirs.contains(&acc) {
                    g.mkdir(&top.join(&acc));
                    dirs.push(acc.clone());
                    depth.push(d + acc.matches('/').count());
                }
            }
            dirs.iter().position(|x| *x == rel).unwrap()
        };
        // Every package has bin/ or lib/, and most a nix-support/.
        let first = if self.rng.chance(50) { "bin" } else { "lib" };
        add_dir(self, &mut dirs, &mut depth, first.to_string(), 1);
        let mut made = 0usize;
        if self.rng.chance(70) && n >= 2 {
            // nix-support/ holds one small file, and nothing is added to it later.
            add_dir(self, &mut dirs, &mut depth, "nix-support".to_string(), 1);
            let p = top.join("nix-support/propagated-build-inputs");
            let id = format!("{}/nix-support", self.names[idx].to_string_lossy());
            self.write_file(&p, &id, 0o444);
            made += 1;
        }
        // Directories entries may be put in (not the top, rarely, and never nix-support/).
        let pickable = |dirs: &Vec<String>, i: usize| i != 0 && dirs[i] != "nix-support";
        let mut k = 0usize;
        while made < n {
            k += 1;
            // Pick (or make) a directory: about 12 entries per directory.
            let di = if self.rng.below(12) == 0 || dirs.len() == 1 {
                let mut parent = self.rng.below(dirs.len());
                if dirs[parent] == "nix-support" {
                    parent = 0;
                }
                if depth[parent] >= 6 {
                    self.rng.below(dirs.len())
                } else if parent == 0 {
                    let stem = DIR_STEMS[self.rng.below(DIR_STEMS.len())].to_string();
                    if dirs.contains(&stem) {
                        dirs.iter().position(|x| *x == stem).unwrap()
                    } else {
                        add_dir(self, &mut dirs, &mut depth, stem, 1)
                    }
                } else {
                    let rel = format!("{}/{}{}", dirs[parent], STEMS[self.rng.below(STEMS.len())], k);
                    let d = depth[parent] + 1;
                    add_dir(self, &mut dirs, &mut depth, rel, d)
                }
            } else {
                // Recent directories fill up more (like a real build's install step).
                let len = dirs.len();
                let mut i = if self.rng.chance(60) {
                    len - 1 - self.rng.below(len.min(3))
                } else {
                    self.rng.below(len)
                };
                let mut tries = 0;
                while !pickable(&dirs, i) && tries < 8 && !self.rng.chance(2) {
                    i = self.rng.below(len);
                    tries += 1;
                }
                i
            };
            let dir_rel = dirs[di].clone();
            let in_bin = dir_rel == "bin";
            let stem = STEMS[self.rng.below(STEMS.len())];
            let name = if in_bin {
                format!("{pkg}-{stem}{k}")
            } else {
                format!("{stem}{k}.{}", EXTS[self.rng.below(EXTS.len())])
            };
            let rel = if dir_rel.is_empty() {
                name.clone()
            } else {
                format!("{dir_rel}/{name}")
            };
            let p = top.join(&rel);
            let r = self.rng.below(1000);
            if r < 100 && !(files_here.is_empty() && idx == 0) {
                // A symlink: 40% relative in-path, 35% absolute to another store path,
                // 15% dangling absolute, 10% dangling relative.
                let s = self.rng.below(100);
                let target = if s < 40 && !files_here.is_empty() {
                    let t = files_here[self.rng.below(files_here.len())].rel.clone();
                    let ups = rel.matches('/').count();
                    format!("{}{}", "../".repeat(ups), t)
                } else if s < 75 && idx > 0 {
                    let o = self.other_path(idx).unwrap_or_default();
                    format!(
                        "/nix/store/{o}/{}",
                        ["bin/sh", "lib/libc.so.6", "share/doc", ""][self.rng.below(4)]
                    )
                } else if s < 90 {
                    format!("/nix/store/{}-missing-{stem}/lib/{name}", self.rng.base32(32))
                } else {
                    format!("../nonexistent-{k}/{name}")
                };
                let target = target.trim_end_matches('/').to_string();
                self.make_symlink(&target, &p);
            } else if r < 120 && (!files_here.is_empty() || !self.earlier.is_empty()) {
                // An extra hardlink: half within this path, half across store paths.
                let cross = (self.rng.chance(50) || files_here.is_empty()) && !self.earlier.is_empty();
                let src = if cross {
                    let m = self.earlier[self.rng.below(self.earlier.len())].clone();
                    self.store.join(&self.names[m.path]).join(&m.rel)
                } else {
                    top.join(&files_here[self.rng.below(files_here.len())].rel)
                };
                fs::hard_link(&src, &p).unwrap_or_else(|e| die("hard link", &p, e));
                self.hardlinks += 1;
                if cross {
                    self.cross_hardlinks += 1;
                    self.links_entries.push(src);
                }
            } else {
                let exec = in_bin || self.rng.chance(15);
                let id = format!("{}/{rel}", self.names[idx].to_string_lossy());
                self.write_file(&p, &id, if exec { 0o555 } else { 0o444 });
                let m = Made {
                    path: idx,
                    rel: rel.clone(),
                };
                files_here.push(m.clone());
                // Reservoir of earlier files (bounded), for cross-path hardlinks.
                if self.earlier.len() < 4096 {
                    self.earlier.push(m);
                } else if self.rng.chance(5) {
                    let j = self.rng.below(self.earlier.len());
                    self.earlier[j] = m;
                }
            }
            made += 1;
        }
        // Directories: children first (a child is always created after its parent).
        for d in dirs.iter().rev() {
            Self::finalize_dir(&if d.is_empty() { top.to_path_buf() } else { top.join(d) });
        }
    }
}

fn main() {
    let t0 = Instant::now();
    let mut args = std::env::args_os().skip(1);
    let mut dir: Option<PathBuf> = None;
    let mut spec = Spec {
        paths: 1500,
        files: 100_000,
        bytes: 2 << 30,
        small_only: false,
        big_path: 0,
        seed: 1,
    };
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
            Some("--files") => spec.files = num("--files") as usize,
            Some("--bytes") => spec.bytes = num("--bytes"),
            Some("--seed") => spec.seed = num("--seed"),
            Some("--small-files") => spec.small_only = true,
            Some("--big-path") => spec.big_path = num("--big-path") as usize,
            Some("-h" | "--help") => usage(),
            Some(s) if s.starts_with('-') => usage(),
            _ if dir.is_none() => dir = Some(PathBuf::from(a)),
            _ => usage(),
        }
    }
    let root = dir.unwrap_or_else(|| usage());
    if spec.paths == 0 {
        usage();
    }
    let store = root.join("store");
    fs::create_dir_all(&store).unwrap_or_else(|e| die("mkdir", &store, e));
    if fs::read_dir(&store).map(|mut d| d.next().is_some()).unwrap_or(false) {
        eprintln!("bench_store: {} is not empty", store.display());
        exit(2);
    }
    fs::set_permissions(&store, fs::Permissions::from_mode(0o755)).unwrap_or_else(|e| die("chmod", &store, e));

    let mut rng = Rng::new(spec.seed ^ 0x000B_E4C5_708E);
    // Kinds and entry counts per store path.
    let mut kinds = Vec::with_capacity(spec.paths); // 0 dir, 1 single file, 2 top symlink
    let mut weights = Vec::with_capacity(spec.paths);
    for i in 0..spec.paths {
        let r = rng.below(100);
        let k = if i < 2 || r >= 9 {
            0
        } else if r >= 1 {
            1
        } else {
            2
        };
        kinds.push(k);
        weights.push(if k == 0 { (1.3 * normal(&mut rng)).exp() } else { 0.0 });
    }
    let singles = kinds.iter().filter(|&&k| k != 0).count();
    // The big path (index 0 is always a directory) is taken out of the law.
    let big = spec.big_path.min(spec.files.saturating_sub(singles));
    if big > 0 {
        weights[0] = 0.0;
    }
    let dir_entries = spec.files.saturating_sub(singles + big);
    let wsum: f64 = weights.iter().sum();
    let mut counts: Vec<usize> = weights
        .iter()
        .map(|w| {
            if *w > 0.0 {
                ((w / wsum) * dir_entries as f64).round().max(1.0) as usize
            } else {
                0
            }
        })
        .collect();
    // Fix rounding so the total is exact (adjust the biggest path).
    let total: usize = counts.iter().sum();
    if let Some(top) = (0..counts.len()).max_by_key(|&i| counts[i]) {
        if total > dir_entries {
            counts[top] = counts[top].saturating_sub(total - dir_entries).max(1);
        } else {
            counts[top] += dir_entries - total;
        }
    }
    if big > 0 {
        counts[0] = big;
    }
    // ~88% of entries are regular files (10% symlinks, 2% extra hardlinks).
    let est_regular = spec.files * 88 / 100 + singles;
    let sizes = plan_sizes(&mut rng, est_regular, spec.bytes, spec.small_only);
    let pool = Pool::new(&mut rng);
    let mut g = Gen {
        store: store.clone(),
        rng,
        pool,
        sizes,
        next_size: 0,
        names: Vec::with_capacity(spec.paths),
        earlier: Vec::new(),
        links_entries: Vec::new(),
        regular: 0,
        symlinks: 0,
        hardlinks: 0,
        cross_hardlinks: 0,
        dirs: 0,
        bytes: 0,
        small: 0,
    };
    const PKGS: &[&str] = &[
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
        "icu",
        "boost",
        "llvm",
        "nodejs",
        "go",
        "rustc",
        "openjdk",
    ];
    for i in 0..spec.paths {
        let pkg = PKGS[g.rng.below(PKGS.len())];
        let ver = format!("{}.{}.{}", 1 + g.rng.below(20), g.rng.below(40), g.rng.below(10));
        let label = match kinds[i] {
            // No `.drv`s: an image's runtime closure has none (and `nix copy` would parse
            // them as derivations and check their output paths).
            1 => format!(
                "{pkg}-{ver}{}",
                ["-setup-hook.sh", "-wrapper.sh", ".conf", "-env.json"][g.rng.below(4)]
            ),
            2 => format!("{pkg}-{ver}-link"),
            _ => {
                let suffix = ["", "", "", "-dev", "-lib", "-man", "-doc", "-bin"][g.rng.below(8)];
                format!("{pkg}-{ver}{suffix}")
            }
        };
        let name = fixture::store_path_name(spec.seed, i, &label);
        let top = store.join(&name);
        g.names.push(name);
        match kinds[i] {
            1 => {
                let mode = if label.ends_with("wrapper.sh") { 0o555 } else { 0o444 };
                let id = label.clone();
                g.write_file(&top, &id, mode);
            }
            2 => {
                let t = g.other_path(i).unwrap_or_else(|| "missing".to_string());
                g.make_symlink(&format!("/nix/store/{t}"), &top);
            }
            _ => g.dir_path(i, &top, pkg, counts[i]),
        }
    }
    // store/.links: one entry per cross-path hardlink group, as `nix-store --optimise` makes.
    let links = store.join(".links");
    fs::create_dir(&links).unwrap_or_else(|e| die("mkdir", &links, e));
    let mut le = std::mem::take(&mut g.links_entries);
    le.sort();
    le.dedup();
    for f in &le {
        let l = links.join(g.rng.base32(52));
        fs::hard_link(f, &l).unwrap_or_else(|e| die("hard link", &l, e));
    }
    let created = t0.elapsed().as_secs_f64();

    // var/: the database (real NAR hashes), a profile and a GC root.
    let nix = root.join("var/nix");
    for d in ["db", "profiles", "gcroots", "temproots"] {
        fs::create_dir_all(nix.join(d)).unwrap_or_else(|e| die("mkdir", &nix.join(d), e));
    }
    fs::write(nix.join("db/schema"), b"10").unwrap_or_else(|e| die("write", &nix.join("db/schema"), e));
    fs::write(nix.join("db/big-lock"), b"").unwrap_or_else(|e| die("write", &nix.join("db/big-lock"), e));
    fs::write(nix.join("gc.lock"), b"").unwrap_or_else(|e| die("write", &nix.join("gc.lock"), e));
    let last = g.names.last().unwrap().to_string_lossy().into_owned();
    symlink("default-1-link", nix.join("profiles/default")).unwrap_or_else(|e| die("symlink", &nix, e));
    symlink(format!("/nix/store/{last}"), nix.join("profiles/default-1-link"))
        .unwrap_or_else(|e| die("symlink", &nix, e));
    symlink("/nix/var/nix/profiles", nix.join("gcroots/profiles")).unwrap_or_else(|e| die("symlink", &nix, e));
    fixture::register(&root, &g.names);

    let entries = g.regular + g.symlinks + g.hardlinks;
    println!(
        "{}: {} store paths, {} files ({} regular, {} symlinks {:.1}%, {} extra hardlinks {:.1}% of which {} across \
         store paths, {} .links), {} dirs, {} bytes ({:.2} GiB), {:.1}% of regular files <= 4 KiB; \
         created in {:.1}s, registered in {:.1}s",
        root.display(),
        g.names.len(),
        entries,
        g.regular,
        g.symlinks,
        100.0 * g.symlinks as f64 / entries.max(1) as f64,
        g.hardlinks,
        100.0 * g.hardlinks as f64 / entries.max(1) as f64,
        g.cross_hardlinks,
        le.len(),
        g.dirs,
        g.bytes,
        g.bytes as f64 / (1u64 << 30) as f64,
        100.0 * g.small as f64 / g.regular.max(1) as f64,
        created,
        t0.elapsed().as_secs_f64() - created
    );
}
