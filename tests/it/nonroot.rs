//! Single-user Nix: a non-root user seeding a store it owns gets an exact copy and no
//! ownership warning; seeding a root-owned store as non-root warns once and preserves
//! everything but the owner.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::support;
use crate::support::cmd::{assert_ok, stderr, Seed};
use crate::support::compare::assert_store_equal;
use crate::support::fixture::{self, Spec};

const NOBODY: u32 = 65534;

fn chown_tree(root: &Path, uid: u32) {
    for e in walkdir::WalkDir::new(root) {
        let e = e.unwrap();
        std::os::unix::fs::lchown(e.path(), Some(uid), Some(uid)).unwrap();
    }
}

roottest!(
    a_user_seeding_its_own_store_gets_an_exact_copy_without_warnings,
    |tmp| {
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let fx = fixture::build(
            &tmp.path().join("src"),
            &Spec {
                paths: 60,
                owners: false,
                ..Spec::default()
            },
        );
        chown_tree(&fx.root, NOBODY);
        let dst = tmp.path().join("dst");
        std::fs::create_dir(&dst).unwrap();
        std::os::unix::fs::chown(&dst, Some(NOBODY), Some(NOBODY)).unwrap();

        let out = Seed::new(&fx.root, &dst).uid(NOBODY).gid(NOBODY).output();
        assert_ok(&out);
        assert!(!stderr(&out).contains("ownership"), "{}", stderr(&out));
        assert_store_equal(&fx.root, &dst);
    }
);

roottest!(
    a_user_seeding_a_root_owned_store_warns_once_and_keeps_modes_times_and_content,
    |tmp| {
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let fx = fixture::build(
            &tmp.path().join("src"),
            &Spec {
                paths: 60,
                ..Spec::default()
            },
        );
        let dst = tmp.path().join("dst");
        std::fs::create_dir(&dst).unwrap();
        std::os::unix::fs::chown(&dst, Some(NOBODY), Some(NOBODY)).unwrap();

        let out = Seed::new(&fx.root, &dst).uid(NOBODY).gid(NOBODY).output();
        assert_ok(&out);
        let err = stderr(&out);
        assert_eq!(err.matches("cannot set file ownership").count(), 1, "{err}");

        // Everything but the owner is exact.
        let src_store = fx.root.join("store");
        for e in walkdir::WalkDir::new(&src_store).min_depth(1) {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(&src_store).unwrap();
            if rel.starts_with(".links") {
                continue;
            }
            let s = e.path().symlink_metadata().unwrap();
            let d = dst
                .join("store")
                .join(rel)
                .symlink_metadata()
                .unwrap_or_else(|_| panic!("{} missing", rel.display()));
            assert_eq!(s.mode(), d.mode(), "{}", rel.display());
            assert_eq!(
                (s.mtime(), s.mtime_nsec()),
                (d.mtime(), d.mtime_nsec()),
                "{}",
                rel.display()
            );
            assert_eq!(s.size(), d.size(), "{}", rel.display());
            assert_eq!(d.uid(), NOBODY, "{}", rel.display());
            if s.is_file() {
                assert_eq!(
                    std::fs::read(e.path()).unwrap(),
                    std::fs::read(dst.join("store").join(rel)).unwrap()
                );
            }
        }
    }
);

/// A store of `paths` paths (no owners of its own) in `dir/src`, seeded by the user
/// nobody into `dir/dst`, which nobody owns.
fn seeded_by_nobody(dir: &Path, paths: usize) -> (fixture::Fixture, std::path::PathBuf) {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let fx = fixture::build(
        &dir.join("src"),
        &Spec {
            paths,
            owners: false,
            ..Spec::default()
        },
    );
    let dst = dir.join("dst");
    std::fs::create_dir(&dst).unwrap();
    std::os::unix::fs::chown(&dst, Some(NOBODY), Some(NOBODY)).unwrap();
    Seed::new(&fx.root, &dst).uid(NOBODY).gid(NOBODY).ok();
    (fx, dst)
}

// A non-root seeder repairing a present-but-unregistered path owned by root: the fresh
// copy is swapped in and registered; only the old copy, which it may not delete, stays
// behind under a temporary name, with one warning, and the run succeeds.
roottest!(a_user_replacing_a_root_owned_copy_warns_and_registers, |tmp| {
    let (fx, dst) = seeded_by_nobody(tmp.path(), 20);
    std::fs::set_permissions(dst.join("store"), std::fs::Permissions::from_mode(0o755)).unwrap();

    // A top directory path loses its registration, and root puts a different copy there.
    let db = rusqlite::Connection::open(dst.join("var/nix/db/db.sqlite")).unwrap();
    let tops: Vec<String> = db
        .prepare("SELECT path FROM ValidPaths WHERE id NOT IN (SELECT reference FROM Refs WHERE referrer <> reference)")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let victim = tops
        .iter()
        .find(|p| dst.join("store").join(p.rsplit('/').next().unwrap()).is_dir())
        .expect("a top directory path")
        .clone();
    db.execute("DELETE FROM ValidPaths WHERE path = ?1", [&victim]).unwrap();
    drop(db);
    let name = victim.rsplit('/').next().unwrap();
    let p = dst.join("store").join(name);
    support::make_writable(&p);
    std::fs::remove_dir_all(&p).unwrap();
    std::fs::create_dir(&p).unwrap();
    std::fs::write(p.join("not-the-image"), b"x").unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o555)).unwrap();

    let out = Seed::new(&fx.root, &dst)
        .args(["--recheck"])
        .uid(NOBODY)
        .gid(NOBODY)
        .output();
    assert_ok(&out);
    let err = stderr(&out);
    assert!(err.contains("cannot remove the replaced copy"), "{err}");
    assert!(
        support::cmd::stdout(&out).contains("1 replaced"),
        "{}",
        support::cmd::text(&out)
    );
    assert!(!p.join("not-the-image").exists(), "the fresh copy is in place");
    let db = rusqlite::Connection::open(dst.join("var/nix/db/db.sqlite")).unwrap();
    let n: i64 = db
        .query_row("SELECT count(*) FROM ValidPaths WHERE path = ?1", [&victim], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(n, 1, "registered again");
});

// Lock files a non-root seeder may not open say so (permission, uid, what to do), not
// "remove it if it is not a regular file"; exit 2, nothing written.
roottest!(
    lock_files_a_user_may_not_open_are_named_as_a_permission_problem,
    |tmp| {
        let (fx, dst) = seeded_by_nobody(tmp.path(), 5);
        for (file, what) in [
            (".nix-seed/lock", "the seed lock"),
            ("var/nix/gc.lock", "Nix's gc.lock"),
        ] {
            let f = dst.join(file);
            std::os::unix::fs::lchown(&f, Some(0), Some(0)).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
            std::fs::remove_dir_all(dst.join(".nix-seed/images")).unwrap_or(());
            let out = Seed::new(&fx.root, &dst)
                .args(["--recheck"])
                .uid(NOBODY)
                .gid(NOBODY)
                .output();
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{what}: {}", support::cmd::text(&out));
            assert!(
                err.contains("permission denied for uid 65534") && err.contains(&f.display().to_string()),
                "{what}: {err}"
            );
            assert!(!err.contains("regular file"), "{what}: {err}");
            std::os::unix::fs::lchown(&f, Some(NOBODY), Some(NOBODY)).unwrap();
        }
    }
);
