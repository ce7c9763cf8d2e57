//! Images without a Nix database (issue #18), made from stores built by real Nix: the
//! store as dockerTools, nix2container, flox or nixery ship it (no `var/`, no
//! `store/.links`, hardlinks split, every mtime 1, owner 0), the registrations real Nix
//! wrote in the original database (the oracle), and closureInfo's `registration` file.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::cmd::text;
use super::fixture::set_times_nofollow;
use super::nix::{in_pod_with, nix_config};

/// One path's registration as a Nix database holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reg {
    /// `sha256:<base16>`, as Nix writes it.
    pub hash: String,
    pub nar_size: u64,
    pub refs: BTreeSet<String>,
    pub deriver: Option<String>,
    pub sigs: Option<String>,
    pub ca: Option<String>,
}

/// Every registration of a database, by store path.
pub type Regs = BTreeMap<String, Reg>;

/// The registrations of the database file `db` (read-only; a WAL database with its -wal).
pub fn read_registrations(db: &Path) -> Regs {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .unwrap_or_else(|e| panic!("open {}: {e}", db.display()));
    let mut st = c
        .prepare("SELECT path, hash, narSize, deriver, sigs, ca FROM ValidPaths")
        .unwrap();
    let mut regs: Regs = st
        .query_map([], |r| {
            let size: Option<i64> = r.get(2)?;
            Ok((
                r.get::<_, String>(0)?,
                Reg {
                    hash: r.get(1)?,
                    nar_size: size.unwrap_or(-1) as u64,
                    refs: BTreeSet::new(),
                    deriver: r.get(3)?,
                    sigs: r.get(4)?,
                    ca: r.get(5)?,
                },
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let mut st = c
        .prepare(
            "SELECT a.path, b.path FROM Refs r JOIN ValidPaths a ON a.id = r.referrer \
             JOIN ValidPaths b ON b.id = r.reference",
        )
        .unwrap();
    for row in st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .unwrap()
    {
        let (from, to) = row.unwrap();
        regs.get_mut(&from).unwrap().refs.insert(to);
    }
    regs
}

/// What real Nix registered in the database of the store it built at `real_root/nix`.
pub fn images_original_registrations(real_root: &Path) -> Regs {
    read_registrations(&real_root.join("nix/var/nix/db/db.sqlite"))
}

/// What a target (a Nix root holding store/ and var/) has registered; empty without a
/// database.
pub fn target_registrations(target: &Path) -> Regs {
    let db = target.join("var/nix/db/db.sqlite");
    if !db.exists() {
        return Regs::new();
    }
    read_registrations(&db)
}

/// How `got` must match `want`: a registration nix-seed computed (hash, size and
/// references as Nix's; no deriver, signatures or content address), or one taken from a
/// database or a registration file (every column as it was).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    Computed,
    Copied,
}

/// Each of `paths` is registered in `got` as in `want`; the panic lists every difference.
#[track_caller]
pub fn assert_registered_as(want: &Regs, got: &Regs, paths: &[String], source: Source, what: &str) {
    let mut diffs = Vec::new();
    for p in paths {
        let w = want
            .get(p)
            .unwrap_or_else(|| panic!("{what}: {p} is not in the oracle"));
        let Some(g) = got.get(p) else {
            diffs.push(format!("{p}: not registered"));
            continue;
        };
        if g.hash != w.hash {
            diffs.push(format!("{p}: narHash {} (Nix: {})", g.hash, w.hash));
        }
        if g.nar_size != w.nar_size {
            diffs.push(format!("{p}: narSize {} (Nix: {})", g.nar_size, w.nar_size));
        }
        if g.refs != w.refs {
            let extra: Vec<_> = g.refs.difference(&w.refs).collect();
            let lacking: Vec<_> = w.refs.difference(&g.refs).collect();
            // A scan finds a derivation's own outputs in it: Nix registers a .drv with its
            // inputDrvs and inputSrcs as references (writeDerivation), not what a scan finds.
            let hint = if p.ends_with(".drv") {
                " (a .drv's references are its inputDrvs and inputSrcs, not a scan of it)"
            } else {
                ""
            };
            diffs.push(format!(
                "{p}: references differ from Nix's: extra {extra:?}, lacking {lacking:?}{hint}"
            ));
        }
        let cols = [
            ("deriver", &g.deriver, &w.deriver),
            ("sigs", &g.sigs, &w.sigs),
            ("ca", &g.ca, &w.ca),
        ];
        for (col, g, w) in cols {
            let want_col = match source {
                Source::Computed => &None,
                Source::Copied => w,
            };
            if g != want_col {
                diffs.push(format!("{p}: {col} {g:?} (expected {want_col:?})"));
            }
        }
    }
    assert!(
        diffs.is_empty(),
        "{what}: {} of {} registrations differ ({source:?}):\n  {}",
        diffs.len(),
        paths.len(),
        diffs.join("\n  ")
    );
}

/// `<real_root>/nix/store` as an image built without Nix ships it, at `<out_root>/nix/store`:
/// no `var/`, no `.links`, every hardlink a file of its own, every mtime (symlinks' and
/// directories' too) 1, owner 0:0, modes as they were.
pub fn strip_like_docker_tools(real_root: &Path, out_root: &Path) {
    let from = real_root.join("nix/store");
    let to = out_root.join("nix/store");
    std::fs::create_dir_all(out_root.join("nix")).unwrap();
    copy_split(&from, &to);
    assert!(!out_root.join("nix/var").exists());
    // The fixture is what it claims: no hardlinks, mtime 1, owner 0.
    for e in walkdir::WalkDir::new(&to) {
        let e = e.unwrap();
        let m = e.path().symlink_metadata().unwrap();
        assert_eq!((m.mtime(), m.uid(), m.gid()), (1, 0, 0), "{}", e.path().display());
        assert!(m.is_dir() || m.nlink() == 1, "{} is hardlinked", e.path().display());
    }
}

/// Copy `from` to `to` (not existing), not following symlinks, skipping `.links`; set the
/// times and modes bottom-up so that later writes do not change them.
fn copy_split(from: &Path, to: &Path) {
    let m = from.symlink_metadata().unwrap();
    let ft = m.file_type();
    if ft.is_symlink() {
        std::os::unix::fs::symlink(std::fs::read_link(from).unwrap(), to).unwrap();
    } else if ft.is_dir() {
        std::fs::create_dir(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if from.ends_with("store") && e.file_name() == ".links" {
                continue;
            }
            copy_split(&e.path(), &to.join(e.file_name()));
        }
    } else {
        assert!(ft.is_file(), "{}: not a file, directory or symlink", from.display());
        std::fs::copy(from, to).unwrap();
    }
    std::os::unix::fs::lchown(to, Some(0), Some(0)).unwrap();
    if !ft.is_symlink() {
        std::fs::set_permissions(to, std::fs::Permissions::from_mode(m.permissions().mode() & 0o7777)).unwrap();
    }
    set_times_nofollow(to, 1);
}

const NIX_BASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Nix's base-32 encoding of `bytes` (as `nix-hash --to-base32`).
pub fn nix_base32(bytes: &[u8]) -> String {
    let len = (bytes.len() * 8).div_ceil(5);
    (0..len)
        .rev()
        .map(|n| {
            let (i, j) = (n * 5 / 8, n * 5 % 8);
            let lo = (bytes[i] as u16) >> j;
            let hi = bytes.get(i + 1).map_or(0, |&b| (b as u16) << (8 - j));
            NIX_BASE32[((lo | hi) & 0x1f) as usize] as char
        })
        .collect()
}

/// `sha256:<base16>` in Nix's base 32: `sha256:<nix-base32>`.
pub fn hash_to_base32(hash: &str) -> String {
    let hex = hash.strip_prefix("sha256:").expect("a sha256 hash");
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect();
    format!("sha256:{}", nix_base32(&bytes))
}

/// closureInfo's `registration` file for `regs` (what `nix-store --load-db` reads): per
/// path its lines path, narHash, narSize, deriver (empty), number of references, the
/// references. With `mixed`, every second path's hash is in Nix's base 32, as closureInfo
/// writes it; the others in base 16, as the database holds it.
pub fn registration_file(regs: &Regs, mixed: bool) -> String {
    let mut s = String::new();
    for (k, (p, r)) in regs.iter().enumerate() {
        let hash = if mixed && k % 2 == 0 {
            hash_to_base32(&r.hash)
        } else {
            r.hash.clone()
        };
        s.push_str(&format!("{p}\n{hash}\n{}\n\n{}\n", r.nar_size, r.refs.len()));
        for q in &r.refs {
            s.push_str(q);
            s.push('\n');
        }
    }
    s
}

/// Real Nix accepts `file` as a registration of the database-less image `image_root/nix`:
/// `nix-store --load-db` into a copy (at `copy`, removed after), then every path of `regs`
/// valid and `--verify --check-contents` clean; and what Nix registered from it is what
/// [`Source::Computed`] expects (`regs`' hash, size and references; no deriver, sigs, ca).
pub fn assert_nix_loads(image_root: &Path, file: &Path, regs: &Regs, copy: &Path) {
    super::profiles::cp_a(&image_root.join("nix"), &copy.join("nix"));
    let paths: Vec<&str> = regs.keys().map(String::as_str).collect();
    let script = format!(
        "set -e; nix-store --load-db < '{}'; nix-store --check-validity {}; nix-store --verify --check-contents",
        file.display(),
        paths.join(" ")
    );
    let o = in_pod_with(&copy.join("nix"), &script, &nix_config(false));
    assert!(
        o.status.success() && !text(&o).contains("modified"),
        "real Nix rejects the registration file:\n{}",
        text(&o)
    );
    let loaded = read_registrations(&copy.join("nix/var/nix/db/db.sqlite"));
    let paths: Vec<String> = regs.keys().cloned().collect();
    assert_registered_as(regs, &loaded, &paths, Source::Computed, "nix-store --load-db");
    super::make_writable(copy);
    std::fs::remove_dir_all(copy).unwrap();
}

/// Store paths (`/nix/store/...`) of `regs` whose name ends with `suffix` (exactly one).
pub fn path_ending(regs: &Regs, suffix: &str) -> String {
    let v: Vec<&String> = regs.keys().filter(|p| p.ends_with(suffix)).collect();
    assert_eq!(v.len(), 1, "paths ending with {suffix}: {v:?}");
    v[0].clone()
}

/// `p` and every path that refers to it, directly or not.
pub fn referrers_closure(regs: &Regs, p: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::from([p.to_string()]);
    loop {
        let more: Vec<String> = regs
            .iter()
            .filter(|(q, r)| !out.contains(*q) && r.refs.iter().any(|x| out.contains(x)))
            .map(|(q, _)| q.clone())
            .collect();
        if more.is_empty() {
            return out;
        }
        out.extend(more);
    }
}
