//! Reading the image's database whole: rows only in its WAL, `Refs` naming a missing
//! path, and files that are not a database at all.

use std::os::fd::AsFd;
use std::path::Path;

use rusqlite::Connection;

use super::*;
use crate::engines::nixdb::tests::SCHEMA;

const A: &str = "/nix/store/0793q72asxcifacyk97yc6a6mnvlnqgl-a";
const B: &str = "/nix/store/cx2j60ggrnmqjrs54c0yzkdbi5kla8q1-b";
const C: &str = "/nix/store/00000000000000000000000000000000-c";

/// A database in `dir` with A → B, C → B, C → (id 99, missing), B; `wal`: in WAL mode,
/// left open (returned) so that everything stays in the `-wal` file.
fn make(dir: &Path, wal: bool) -> Connection {
    let c = Connection::open(dir.join(DB_FILE)).unwrap();
    if wal {
        let m: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).unwrap();
        assert_eq!(m, "wal");
        c.execute_batch("PRAGMA wal_autocheckpoint = 0").unwrap();
    }
    c.execute_batch(SCHEMA).unwrap();
    for p in [A, B, C] {
        c.execute(
            "INSERT INTO ValidPaths (path, hash, registrationTime) VALUES (?1, 'sha256:x', 1)",
            [p],
        )
        .unwrap();
    }
    // Foreign keys off, as for a Nix that did not enforce them (the bundled SQLite's
    // default is on).
    c.execute_batch("PRAGMA foreign_keys = OFF; INSERT INTO Refs VALUES (1, 2), (3, 2), (3, 99), (3, 3), (98, 2)")
        .unwrap();
    c
}

fn listing(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap())
        })
        .collect();
    v.sort();
    v
}

fn paths(db: &SourceDb) -> Vec<&str> {
    db.paths.iter().map(|p| p.path.as_str()).collect()
}

/// `create` into a fresh directory; the paths it registered.
fn created(img: &Path) -> Vec<String> {
    let dst = tempfile::tempdir().unwrap();
    let fd = crate::base::dirfd::open_root(dst.path()).unwrap();
    create(img, fd.as_fd(), dst.path(), DB_FILE, &|_| true).unwrap();
    let c = Connection::open(dst.path().join(DB_FILE)).unwrap();
    let mut st = c.prepare("SELECT path FROM ValidPaths ORDER BY path").unwrap();
    let v = st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    v
}

/// An image snapshotted while its Nix ran: `db.sqlite` and `db.sqlite-wal`, no `-shm`.
/// The main file alone has no tables; reading and copying it see every row, and the
/// image's files stay byte for byte as they were.
#[test]
fn rows_only_in_the_wal_without_its_shm_are_read() {
    let work = tempfile::tempdir().unwrap();
    let img = tempfile::tempdir().unwrap();
    let writer = make(work.path(), true);
    for f in [DB_FILE, "db.sqlite-wal"] {
        std::fs::copy(work.path().join(f), img.path().join(f)).unwrap();
    }
    drop(writer);
    let alone = Connection::open_with_flags(
        uri_immutable(&img.path().join(DB_FILE)),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI,
    )
    .unwrap();
    let n: i64 = alone
        .query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0, "the rows are in the WAL only");
    let before = listing(img.path());

    let db = read_source(img.path()).unwrap().unwrap();
    assert_eq!(paths(&db), [A, B, C]);
    assert_eq!(db.refs.len(), 3);
    assert_eq!(db.dangling, [C]);
    assert_eq!(created(img.path()), [A, B].map(String::from).to_vec());
    assert_eq!(listing(img.path()), before, "nothing written in the image");
}

/// `Refs` rows naming an id missing from `ValidPaths`: the referrer is reported (once),
/// and the target's first database does not make it valid.
#[test]
fn references_to_a_missing_path_are_reported() {
    let img = tempfile::tempdir().unwrap();
    drop(make(img.path(), false));
    let db = read_source(img.path()).unwrap().unwrap();
    assert_eq!(db.dangling, [C]);
    assert_eq!(
        db.refs,
        [(A, B), (C, B), (C, C)]
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .to_vec()
    );
    assert_eq!(created(img.path()), [A, B].map(String::from).to_vec());
}

/// A `db.sqlite` that is empty, or not an SQLite file: bad input (exit 2) that names the
/// file and what to do.
#[test]
fn a_file_that_is_not_a_nix_database_is_bad_input() {
    let garbage: Vec<u8> = (0..8192u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    for (what, bytes) in [("empty", vec![]), ("garbage", garbage)] {
        let img = tempfile::tempdir().unwrap();
        let db = img.path().join(DB_FILE);
        std::fs::write(&db, &bytes).unwrap();
        let before = listing(img.path());
        let e = read_source(img.path()).unwrap_err();
        assert!(e.downcast_ref::<Invalid>().is_some(), "{what}: exit 2: {e:#}");
        let msg = format!("{e:#}");
        assert!(
            msg.starts_with(&format!("{} is not a Nix database (", db.display())) && msg.ends_with(NOT_A_DB_FIX),
            "{what}: {msg}"
        );
        let dst = tempfile::tempdir().unwrap();
        let fd = crate::base::dirfd::open_root(dst.path()).unwrap();
        let e = create(img.path(), fd.as_fd(), dst.path(), DB_FILE, &|_| true).unwrap_err();
        assert!(e.downcast_ref::<Invalid>().is_some(), "{what}: create: {e:#}");
        assert_eq!(listing(img.path()), before, "{what}: nothing written in the image");
    }
}
