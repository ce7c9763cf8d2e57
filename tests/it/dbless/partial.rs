//! Images built by real Nix whose database holds only part of the truth: a row deleted, a
//! reference to a row that is gone, rows committed only in the `-wal`; and an image store
//! with `lost+found` and a stray file.

use std::path::Path;

use rusqlite::Connection;

use crate::support::cmd::{assert_ok, stdout, text, Seed};
use crate::support::dbless::{
    assert_registered_as, images_original_registrations, path_ending, read_registrations, target_registrations, Regs,
    Source,
};
use crate::support::nix::real_store;

use super::{assert_has_db, assert_pod_keeps, empty_target, has_number, status, status_json, warnings};

fn db(root: &Path) -> std::path::PathBuf {
    root.join("nix/var/nix/db/db.sqlite")
}

fn id_of(c: &Connection, p: &str) -> i64 {
    c.query_row("SELECT id FROM ValidPaths WHERE path = ?1", [p], |r| r.get(0))
        .unwrap()
}

/// Every image path registered in `target`: `computed` ones as Nix's hash, size and
/// references alone, the rest as their database rows were.
fn assert_all_registered(orig: &Regs, target: &Path, computed: &[String], what: &str) {
    assert_has_db(target);
    let got = target_registrations(target);
    let copied: Vec<String> = orig.keys().filter(|p| !computed.contains(p)).cloned().collect();
    assert_registered_as(orig, &got, &copied, Source::Copied, what);
    assert_registered_as(orig, &got, computed, Source::Computed, what);
}

// One ValidPaths row (with its Refs) deleted, the path still in the store: exit 0, the
// path registered with the values Nix had, and one warning saying how many were computed.
nixtest!(a_path_missing_from_the_image_database_is_computed, |tmp| {
    let root = real_store(&tmp.path().join("img"), "v1", false);
    let orig = images_original_registrations(&root);
    // The profile's user environment: it refers to others, nothing refers to it.
    let env = path_ending(&orig, "-user-environment");
    let c = Connection::open(db(&root)).unwrap();
    let id = id_of(&c, &env);
    c.execute("DELETE FROM Refs WHERE referrer = ?1 OR reference = ?1", [id])
        .unwrap();
    c.execute("DELETE FROM ValidPaths WHERE id = ?1", [id]).unwrap();
    drop(c);

    let target = empty_target(tmp.path());
    let o = Seed::image(&root, &target).output();
    assert_ok(&o);
    assert_all_registered(&orig, &target, std::slice::from_ref(&env), "one row deleted");
    let w: Vec<String> = warnings(&o).into_iter().filter(|l| l.contains("comput")).collect();
    assert_eq!(w.len(), 1, "one warning about computed registrations:\n{}", text(&o));
    assert!(has_number(&w[0], 1), "the warning says how many (1): {}", w[0]);
    assert_pod_keeps(&target, &orig.keys().cloned().collect::<Vec<_>>(), tmp.path());
});

// A referenced path's ValidPaths row deleted with foreign keys off, its Refs rows kept
// (they point at an id that is gone): exit 0, the path and its referrers registered as
// Nix had them.
nixtest!(a_reference_to_a_missing_row_is_resolved, |tmp| {
    let root = real_store(&tmp.path().join("img"), "v1", false);
    let orig = images_original_registrations(&root);
    let libc = path_ending(&orig, "-seed-libc-1.0");
    let referrers: Vec<String> = orig
        .iter()
        .filter(|(_, r)| r.refs.contains(&libc))
        .map(|(p, _)| p.clone())
        .collect();
    assert!(!referrers.is_empty());
    let c = Connection::open(db(&root)).unwrap();
    c.pragma_update(None, "foreign_keys", false).unwrap();
    let id = id_of(&c, &libc);
    c.execute("DELETE FROM ValidPaths WHERE id = ?1", [id]).unwrap();
    let dangling: i64 = c
        .query_row("SELECT count(*) FROM Refs WHERE reference = ?1", [id], |r| r.get(0))
        .unwrap();
    assert_eq!(dangling as usize, referrers.len(), "the Refs rows are kept");
    drop(c);

    let target = empty_target(tmp.path());
    Seed::image(&root, &target).ok();
    assert_has_db(&target);
    let got = target_registrations(&target);
    // The referrers' rows may be taken or recomputed: hash, size and references must be
    // Nix's either way.
    for p in &referrers {
        let (w, g) = (&orig[p], got.get(p).unwrap_or_else(|| panic!("{p} not registered")));
        assert_eq!((&g.hash, g.nar_size, &g.refs), (&w.hash, w.nar_size, &w.refs), "{p}");
    }
    let others: Vec<String> = orig
        .keys()
        .filter(|p| **p != libc && !referrers.contains(p))
        .cloned()
        .collect();
    assert_registered_as(&orig, &got, &others, Source::Copied, "untouched rows");
    assert_registered_as(
        &orig,
        &got,
        std::slice::from_ref(&libc),
        Source::Computed,
        "the deleted row",
    );
    assert_pod_keeps(&target, &orig.keys().cloned().collect::<Vec<_>>(), tmp.path());
});

/// Move every second path's rows (ValidPaths, Refs, DerivationOutputs) of the WAL database
/// `db` into its `-wal` only: deleted and checkpointed into the main file, then inserted
/// again with checkpoints off, the files copied while the connection is open (a close
/// would checkpoint), `-shm` removed. Returns the paths moved.
fn move_rows_into_wal(db: &Path) -> Vec<String> {
    let c = Connection::open(db).unwrap();
    let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal", "the image database must be in WAL mode");
    c.pragma_update(None, "foreign_keys", false).unwrap();
    c.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
    let moved: Vec<String> = {
        let mut st = c.prepare("SELECT path FROM ValidPaths WHERE id % 2 = 0").unwrap();
        st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    c.execute_batch(
        "CREATE TEMP TABLE vp AS SELECT * FROM ValidPaths WHERE id % 2 = 0;
         CREATE TEMP TABLE rf AS SELECT * FROM Refs WHERE referrer % 2 = 0 OR reference % 2 = 0;
         CREATE TEMP TABLE dout AS SELECT * FROM DerivationOutputs WHERE drv % 2 = 0;
         DELETE FROM Refs WHERE referrer % 2 = 0 OR reference % 2 = 0;
         DELETE FROM DerivationOutputs WHERE drv % 2 = 0;
         DELETE FROM ValidPaths WHERE id % 2 = 0;",
    )
    .unwrap();
    let busy: i64 = c
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))
        .unwrap();
    assert_eq!(busy, 0, "checkpoint");
    c.execute_batch(
        "BEGIN; INSERT INTO ValidPaths SELECT * FROM vp; INSERT INTO Refs SELECT * FROM rf;
         INSERT INTO DerivationOutputs SELECT * FROM dout; COMMIT;",
    )
    .unwrap();
    let wal = db.with_extension("sqlite-wal");
    let keep = db.with_extension("keep");
    let keep_wal = db.with_extension("keep-wal");
    std::fs::copy(db, &keep).unwrap();
    std::fs::copy(&wal, &keep_wal).unwrap();
    drop(c);
    std::fs::rename(&keep, db).unwrap();
    std::fs::rename(&keep_wal, &wal).unwrap();
    let _ = std::fs::remove_file(db.with_extension("sqlite-shm"));
    moved
}

// Rows committed only in `db.sqlite-wal`, no `db.sqlite-shm`: all of them are used (the
// registrations are the database's, none computed).
nixtest!(rows_only_in_the_image_wal_are_used, |tmp| {
    let root = real_store(&tmp.path().join("img"), "v1", true);
    let orig = images_original_registrations(&root);
    let moved = move_rows_into_wal(&db(&root));
    assert!(!moved.is_empty());
    // The fixture is what it claims: the main file alone lacks the moved rows.
    let alone = tmp.path().join("main-alone/db.sqlite");
    std::fs::create_dir_all(alone.parent().unwrap()).unwrap();
    std::fs::copy(db(&root), &alone).unwrap();
    let in_main = read_registrations(&alone);
    assert!(
        moved.iter().all(|p| !in_main.contains_key(p)),
        "moved rows in the main file"
    );
    assert_eq!(in_main.len() + moved.len(), orig.len());
    assert!(!root.join("nix/var/nix/db/db.sqlite-shm").exists());
    let wal = root.join("nix/var/nix/db/db.sqlite-wal");
    assert!(wal.metadata().is_ok_and(|m| m.len() > 0), "no -wal");

    let target = empty_target(tmp.path());
    let o = Seed::image(&root, &target).output();
    assert_ok(&o);
    assert_all_registered(&orig, &target, &[], "rows only in the -wal");
    let s = status_json(&root.join("nix"), &target);
    assert_eq!(s["registrations"]["computed"], 0, "{s}");
});

// `lost+found` (with a file in it) and a stray file `junk` in the image's store: not
// copied, and `status` says seeded.
nixtest!(lost_found_and_a_stray_file_in_the_image_store_are_not_copied, |tmp| {
    let root = real_store(&tmp.path().join("img"), "v1", false);
    let store = root.join("nix/store");
    std::fs::create_dir(store.join("lost+found")).unwrap();
    std::fs::write(store.join("lost+found/#1234"), b"fsck found this\n").unwrap();
    std::fs::write(store.join("junk"), b"not a store path\n").unwrap();

    let target = empty_target(tmp.path());
    Seed::image(&root, &target).ok();
    for n in ["lost+found", "junk"] {
        assert!(
            target.join("store").join(n).symlink_metadata().is_err(),
            "{n} was copied into the target's store"
        );
    }
    let o = status(&root.join("nix"), &target, false);
    assert_ok(&o);
    assert!(
        stdout(&o).contains("seeded") && !stdout(&o).contains("not seeded"),
        "{}",
        text(&o)
    );
});
