//! The reference scanner against real Nix (issue #18): an image without a database is
//! registered from `nar::hash_and_scan`, so for every path Nix built or added, the NAR
//! hash, the NAR size and the references it computes must be exactly what Nix registered
//! (scripts/make-real-store.sh builds the store and Nix's database is the oracle), also
//! on a copy shaped like a dockerTools image (hardlinks broken, mtimes 1, owner 0).
//!
//! `.drv` files are the one kind Nix does not register from a scan: their references are
//! the derivation's inputs (`inputDrvs`, `inputSrcs`), while their text also names output
//! paths (their own, their inputs' in the environment, and in a user environment's the
//! installed packages'). For them the scan must find every registered reference, and may
//! find more only among the outputs of derivations.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

use nix_seed::engines::nar::{self, Candidates, Scanned};

use crate::support::nix::real_store;

/// What Nix registered for one store path (by name).
struct Registered {
    hash: String,
    size: u64,
    refs: BTreeSet<String>,
    /// Output paths (names) of this path if it is a derivation.
    outputs: BTreeSet<String>,
}

fn name_of(path: &str) -> String {
    path.strip_prefix("/nix/store/").expect("a /nix/store path").to_string()
}

/// Every ValidPaths row of the database of the Nix root `nix`, with its references and
/// (for derivations) outputs, by store path name.
fn registered(nix: &Path) -> BTreeMap<String, Registered> {
    let c = rusqlite::Connection::open_with_flags(
        nix.join("var/nix/db/db.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let pairs = |sql: &str| -> Vec<(String, String)> {
        let mut st = c.prepare(sql).unwrap();
        st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let mut st = c.prepare("SELECT path, hash, narSize FROM ValidPaths").unwrap();
    let mut all: BTreeMap<String, Registered> = st
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get(1)?, r.get::<_, i64>(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .map(|(p, hash, size)| {
            let reg = Registered {
                hash,
                size: u64::try_from(size).unwrap(),
                refs: BTreeSet::new(),
                outputs: BTreeSet::new(),
            };
            (name_of(&p), reg)
        })
        .collect();
    let refs = "SELECT a.path, b.path FROM Refs r JOIN ValidPaths a ON a.id = r.referrer \
                JOIN ValidPaths b ON b.id = r.reference";
    for (from, to) in pairs(refs) {
        all.get_mut(&name_of(&from)).unwrap().refs.insert(name_of(&to));
    }
    let outs = "SELECT d.path, o.path FROM DerivationOutputs o JOIN ValidPaths d ON d.id = o.drv";
    for (drv, out) in pairs(outs) {
        all.get_mut(&name_of(&drv)).unwrap().outputs.insert(name_of(&out));
    }
    all
}

/// Every entry of `store` that is a store path name (not `.links`).
fn store_names(store: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = std::fs::read_dir(store)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| !n.to_string_lossy().starts_with('.'))
        .collect();
    v.sort();
    v
}

/// Compare the scan of every registered path with Nix's registration; returns how many
/// paths were compared exactly (all but the `.drv` files).
fn assert_same_as_nix(reg: &BTreeMap<String, Registered>, scanned: &BTreeMap<String, Scanned>) -> usize {
    let mut exact = 0;
    let mut problems = Vec::new();
    for (name, r) in reg {
        let s = scanned
            .get(name)
            .unwrap_or_else(|| panic!("{name} registered but not scanned"));
        if s.nar.hash != r.hash || s.nar.size != r.size {
            problems.push(format!(
                "{name}: NAR {} ({} bytes), Nix registered {} ({} bytes)",
                s.nar.hash, s.nar.size, r.hash, r.size
            ));
        }
        let found: BTreeSet<String> = s.references.iter().cloned().collect();
        if !name.ends_with(".drv") {
            exact += 1;
            if found != r.refs {
                problems.push(format!("{name}: references {found:?}, Nix registered {:?}", r.refs));
            }
            continue;
        }
        // A derivation: its inputs, plus at most output paths it names (its own, its
        // inputs', or, in a user environment's, those of the packages it lists).
        let outputs: BTreeSet<&String> = reg.values().flat_map(|d| &d.outputs).collect();
        let extra: Vec<&String> = found.difference(&r.refs).filter(|e| !outputs.contains(e)).collect();
        if !found.is_superset(&r.refs) || !extra.is_empty() {
            problems.push(format!(
                "{name} (a derivation): references {found:?}, Nix registered {:?}, \
                 unexplained extra {extra:?}",
                r.refs
            ));
        }
    }
    assert!(problems.is_empty(), "scan differs from Nix:\n{}", problems.join("\n"));
    exact
}

/// The store as registered must have the interesting cases, or the test proves little.
fn assert_store_has_the_cases(reg: &BTreeMap<String, Registered>) {
    let self_ref = reg.iter().any(|(n, r)| r.refs.contains(n));
    let chained = reg
        .iter()
        .any(|(n, r)| !n.ends_with(".drv") && r.refs.iter().any(|x| x != n));
    let none = reg.iter().any(|(n, r)| !n.ends_with(".drv") && r.refs.is_empty());
    assert!(self_ref && chained && none, "the real store lacks a case");
}

nixtest!(every_path_of_a_real_store_scans_to_what_nix_registered, |tmp| {
    let root = real_store(tmp.path(), "v1", false);
    let nix = root.join("nix");
    let reg = registered(&nix);
    assert_store_has_the_cases(&reg);
    let names = store_names(&nix.join("store"));
    let cands = Candidates::new(names.iter().map(|n| n.to_str().unwrap()));
    assert_eq!(cands.len(), names.len());
    let store = nix_seed::base::dirfd::open_root(&nix.join("store")).unwrap();
    let scanned: BTreeMap<String, Scanned> = reg
        .keys()
        .map(|n| {
            let s = nar::hash_and_scan(store.as_fd(), n.as_ref(), &cands).unwrap();
            (n.clone(), s)
        })
        .collect();
    let exact = assert_same_as_nix(&reg, &scanned);
    assert!(exact >= 10, "only {exact} paths compared exactly");
});

/// Copy the store paths of `from` into `to` the way dockerTools ships them: every file
/// its own inode (no hardlinks, no `.links`), mtime 1 and owner 0 on everything.
fn copy_like_docker_tools(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    let mut cp = Command::new("cp");
    cp.arg("-a").arg("--no-preserve=links");
    for n in store_names(from) {
        cp.arg(from.join(n));
    }
    assert!(cp.arg(to).status().unwrap().success());
    let sh = "chown -hR 0:0 \"$1\" && find \"$1\" -mindepth 1 -exec touch -h -d @1 {} +";
    let st = Command::new("sh").args(["-c", sh, "sh"]).arg(to).status().unwrap();
    assert!(st.success());
    for e in walkdir::WalkDir::new(to).min_depth(1) {
        let m = e.unwrap().metadata().unwrap();
        assert!(m.is_dir() || m.nlink() == 1, "a hardlink left");
        assert_eq!((m.mtime(), m.uid(), m.gid()), (1, 0, 0));
    }
}

nixtest!(a_dockertools_like_copy_scans_the_same_in_parallel, |tmp| {
    // v1 and v2 on top: more paths, some shared, and hardlinks between them.
    real_store(tmp.path(), "v1", false);
    let nix = real_store(tmp.path(), "v2", false).join("nix");
    let linked = walkdir::WalkDir::new(nix.join("store"))
        .into_iter()
        .any(|e| e.unwrap().metadata().is_ok_and(|m| m.is_file() && m.nlink() > 1));
    assert!(linked, "nix-store --optimise left no hardlink to break");
    let copy = tmp.path().join("copy");
    copy_like_docker_tools(&nix.join("store"), &copy);

    let reg = registered(&nix);
    assert_store_has_the_cases(&reg);
    let names = store_names(&copy);
    let cands = Candidates::new(names.iter().map(|n| n.to_str().unwrap()));
    let store = nix_seed::base::dirfd::open_root(&copy).unwrap();
    let all = nar::scan_all(store.as_fd(), &names, &cands, 2, &|| false).unwrap();
    assert_eq!(
        all.iter().map(|(n, _)| n).collect::<Vec<_>>(),
        names.iter().collect::<Vec<_>>()
    );
    let scanned: BTreeMap<String, Scanned> = all.into_iter().map(|(n, s)| (n.into_string().unwrap(), s)).collect();
    let exact = assert_same_as_nix(&reg, &scanned);
    assert!(exact >= 15, "only {exact} paths compared exactly");
});
