//! Registering in a target database: what gets a row, and a journal mode changed under it.

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::path::Path;

use rusqlite::Connection;

use super::*;

/// Nix's schema 10, as `nix-store` 2.8 creates it.
pub(super) const SCHEMA: &str = "
    CREATE TABLE ValidPaths (id integer primary key autoincrement not null, path text unique not null,
        hash text not null, registrationTime integer not null, deriver text, narSize integer,
        ultimate integer, sigs text, ca text);
    CREATE TABLE Refs (referrer integer not null, reference integer not null, primary key (referrer, reference),
        foreign key (referrer) references ValidPaths(id) on delete cascade,
        foreign key (reference) references ValidPaths(id) on delete restrict);
    CREATE INDEX IndexReferrer on Refs(referrer);
    CREATE INDEX IndexReference on Refs(reference);
    CREATE TABLE DerivationOutputs (drv integer not null, id text not null, path text not null,
        primary key (drv, id), foreign key (drv) references ValidPaths(id) on delete cascade);
    CREATE INDEX IndexDerivationOutputs on DerivationOutputs(path);";

fn sp(name: &str) -> String {
    format!("/nix/store/{name}")
}

fn vp(name: &str) -> ValidPath {
    ValidPath {
        path: sp(name),
        hash: format!("sha256:{name}"),
        registration_time: 1,
        deriver: None,
        nar_size: Some(1),
        ultimate: None,
        sigs: None,
        ca: None,
    }
}

/// A target `var/nix/db` in a temporary directory with `registered` in it.
fn target(registered: &[&str]) -> (tempfile::TempDir, std::os::fd::OwnedFd) {
    let tmp = tempfile::tempdir().unwrap();
    let c = Connection::open(tmp.path().join(DB_FILE)).unwrap();
    c.execute_batch(SCHEMA).unwrap();
    for n in registered {
        c.execute(
            "INSERT INTO ValidPaths (path, hash, registrationTime) VALUES (?1, 'sha256:x', 1)",
            [sp(n)],
        )
        .unwrap();
    }
    drop(c);
    let fd = crate::base::dirfd::open_root(tmp.path()).unwrap();
    (tmp, fd)
}

fn rows(dir: &Path, sql: &str) -> Vec<String> {
    let c = Connection::open(dir.join(DB_FILE)).unwrap();
    let mut st = c.prepare(sql).unwrap();
    let mut v: Vec<String> = st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    v.sort();
    v
}

/// C.9: an image database listing paths its store lacks (slimmed images), and present
/// paths whose references are neither valid nor added: only what the target holds gets
/// a row, and what cannot be registered is left out (transitively) and reported, while
/// the rest is committed.
#[test]
fn only_present_paths_with_valid_references_are_registered() {
    let (tmp, dir) = target(&["x-valid"]);
    let src = SourceDb {
        paths: ["a", "b", "c", "d", "e", "f-absent", "h.drv", "g-absent.drv"]
            .into_iter()
            .map(vp)
            .collect(),
        refs: [
            ("a", "x-valid"),
            ("a", "a"),
            ("b", "a"),
            ("c", "f-absent"),
            ("d", "c"),
            ("e", "d"),
            ("e", "e"),
            ("g-absent.drv", "a"),
        ]
        .into_iter()
        .map(|(a, b)| (sp(a), sp(b)))
        .collect(),
        outputs: vec![
            (sp("h.drv"), "out".into(), sp("f-absent")),
            (sp("g-absent.drv"), "out".into(), sp("a")),
        ],
        ..Default::default()
    };
    let names: HashSet<&str> = ["a", "b", "c", "d", "e", "h.drv", "x-valid"].into_iter().collect();
    let r = register_in_target(dir.as_fd(), tmp.path(), &src, &names, &|| false).unwrap();
    assert_eq!(r.count, 3);
    assert_eq!(
        r.skipped,
        vec![(sp("c"), sp("f-absent")), (sp("d"), sp("c")), (sp("e"), sp("d"))]
    );
    assert_eq!(
        rows(tmp.path(), "SELECT path FROM ValidPaths"),
        ["a", "b", "h.drv", "x-valid"].map(sp).to_vec()
    );
    assert_eq!(
        rows(
            tmp.path(),
            "SELECT a.path || ' ' || b.path FROM Refs r JOIN ValidPaths a ON a.id = r.referrer \
             JOIN ValidPaths b ON b.id = r.reference"
        ),
        vec![
            format!("{} {}", sp("a"), sp("a")),
            format!("{} {}", sp("a"), sp("x-valid")),
            format!("{} {}", sp("b"), sp("a")),
        ]
    );
    // Only the present derivation's outputs (an output need not be valid, as in Nix).
    assert_eq!(
        rows(
            tmp.path(),
            "SELECT v.path || ' ' || d.id || ' ' || d.path FROM DerivationOutputs d JOIN ValidPaths v ON v.id = d.drv"
        ),
        vec![format!("{} out {}", sp("h.drv"), sp("f-absent"))]
    );
    // Again: nothing new; the skipped ones are still reported.
    let r = register_in_target(dir.as_fd(), tmp.path(), &src, &names, &|| false).unwrap();
    assert_eq!(r.count, 0);
    assert_eq!(r.skipped.len(), 3);
}

/// A.4: a target opened while in rollback mode (unix-dotfile VFS), converted to WAL by a
/// default-configured Nix before registering: reading and registering still work.
#[test]
fn a_database_converted_to_wal_after_it_was_opened() {
    let (tmp, dir) = target(&["x-valid"]);
    let db = open_target(dir.as_fd(), tmp.path(), false).unwrap();
    assert!(!db.wal);
    let c = Connection::open(tmp.path().join(DB_FILE)).unwrap();
    let mode: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    drop(c);
    assert!(is_wal(dir.as_fd(), DB_FILE, tmp.path()).unwrap());
    assert!(db.registered().unwrap().contains("x-valid"));
    let src = SourceDb {
        paths: vec![vp("a")],
        refs: vec![(sp("a"), sp("x-valid"))],
        ..Default::default()
    };
    let names: HashSet<&str> = ["a"].into_iter().collect();
    let r = register_in_target(dir.as_fd(), tmp.path(), &src, &names, &|| false).unwrap();
    assert_eq!(
        r,
        Registered {
            count: 1,
            skipped: vec![]
        }
    );
    assert!(
        is_wal(dir.as_fd(), DB_FILE, tmp.path()).unwrap(),
        "the pods' journal mode is kept"
    );
    assert_eq!(
        rows(tmp.path(), "SELECT path FROM ValidPaths"),
        ["a", "x-valid"].map(sp).to_vec()
    );
}
