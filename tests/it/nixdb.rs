//! The README's promises about the Nix database, with real Nix (Debian's nix-bin) as the
//! oracle: stores built by Nix itself (scripts/make-real-store.sh), seeded by nix-seed,
//! then checked by Nix the way a pod sees them (the target bind-mounted at /nix in a
//! private mount namespace).

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support;
use crate::support::cmd::{assert_code, assert_ok, nix_seed, stderr, stdout, text, Seed};
use crate::support::compare::db_rows;
use crate::support::nix::{assert_nix_accepts, db_dir_listing, in_pod, nix_seed_db_is_wal, real_store, valid_paths};

nixtest!(
    first_seed_of_a_real_store_is_valid_to_nix_and_leaves_the_image_untouched,
    |tmp| {
        let image = real_store(&tmp.path().join("v1"), "v1", true);
        let before = db_dir_listing(&image.join("nix"));
        let target = tmp.path().join("t/nix");
        std::fs::create_dir_all(&target).unwrap();

        let out = Seed::image(&image, &target).args(["--verify"]).output();
        assert_ok(&out);
        assert!(stdout(&out).contains("verified"), "{}", text(&out));
        assert_eq!(
            db_dir_listing(&image.join("nix")),
            before,
            "no -wal/-shm left in the image"
        );
        // Row for row the image's registrations (not the raw file: a backup).
        assert_eq!(
            db_rows(&target.join("var/nix/db/db.sqlite")),
            db_rows(&image.join("nix/var/nix/db/db.sqlite"))
        );
        assert!(
            !nix_seed_db_is_wal(&target),
            "a shared store's database is created in rollback mode"
        );
        assert_nix_accepts(&target, &image.join("nix"));
        assert!(target.join("var/nix/gcroots/nix-seed").read_dir().unwrap().count() == 1);
        assert!(
            !target.join("var/nix/gcroots/auto").exists(),
            "the image's auto roots are pod-local"
        );
    }
);

nixtest!(image_v1_then_v2_both_valid_and_safe_from_garbage_collection, |tmp| {
    let v1 = real_store(&tmp.path().join("v1"), "v1", true);
    let v2 = real_store(&tmp.path().join("v2"), "v2", false);
    let target = tmp.path().join("t/nix");
    std::fs::create_dir_all(&target).unwrap();

    Seed::image(&v1, &target).ok();
    let out = Seed::image(&v2, &target).args(["-v"]).output();
    assert_ok(&out);
    assert!(stdout(&out).contains("registered"), "{}", text(&out));
    // Both images, each entirely.
    assert_nix_accepts(&target, &v1.join("nix"));
    assert_nix_accepts(&target, &v2.join("nix"));
    let rows = db_rows(&target.join("var/nix/db/db.sqlite"));
    for image in [&v1, &v2] {
        let theirs = db_rows(&image.join("nix/var/nix/db/db.sqlite"));
        // Shared paths keep v1's registration (registrationTime); compare by path and hash.
        let key = |r: &String| r.split(' ').take(3).collect::<Vec<_>>().join(" ");
        let ours: BTreeSet<String> = rows.iter().map(key).collect();
        for r in theirs.iter().filter(|r| r.starts_with("path ")) {
            assert!(ours.contains(&key(r)), "missing in the target: {r}");
        }
    }
    assert_eq!(
        target.join("var/nix/gcroots/nix-seed").read_dir().unwrap().count(),
        2,
        "one root dir per image"
    );
    // The profile of v1 stays: v2's differing profile links are reported, not written.
    assert!(stderr(&out).contains("kept the target's"), "{}", stderr(&out));
});

nixtest!(alternating_images_add_nothing_the_second_time, |tmp| {
    let v1 = real_store(&tmp.path().join("v1"), "v1", true);
    let v2 = real_store(&tmp.path().join("v2"), "v2", true);
    let target = tmp.path().join("t/nix");
    std::fs::create_dir_all(&target).unwrap();
    for image in [&v1, &v2] {
        Seed::image(image, &target).ok();
    }
    let db = std::fs::read(target.join("var/nix/db/db.sqlite")).unwrap();
    for image in [&v1, &v2, &v1] {
        let out = Seed::image(image, &target).output();
        assert_ok(&out);
        assert!(stdout(&out).contains("nothing to do"), "{}", text(&out));
    }
    assert_eq!(
        std::fs::read(target.join("var/nix/db/db.sqlite")).unwrap(),
        db,
        "the no-op never writes"
    );
    assert_nix_accepts(&target, &v1.join("nix"));
    assert_nix_accepts(&target, &v2.join("nix"));
});

nixtest!(killed_between_copy_and_register_then_rerun, |tmp| {
    let v1 = real_store(&tmp.path().join("v1"), "v1", true);
    let v2 = real_store(&tmp.path().join("v2"), "v2", true);
    let target = tmp.path().join("t/nix");
    std::fs::create_dir_all(&target).unwrap();
    Seed::image(&v1, &target).ok();

    // Stop the seeder exactly between copy and register: v2's image gets a large file in
    // var/log (copied after the store paths, before registering), the seeder is paused
    // once v2's store paths are all in place, and a Nix client (a unix-dotfile lock: the
    // directory db.sqlite.lock) takes the database's lock; then the seeder is resumed,
    // blocks on that lock, and is killed there.
    let big = v2.join("nix/var/log/nix/big.log");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(2 << 30).unwrap(); // sparse: cheap to make, slow enough to copy
    drop(f);
    let v2_names: Vec<String> = valid_paths(&v2.join("nix"))
        .iter()
        .map(|p| p.rsplit('/').next().unwrap().to_string())
        .collect();
    let mut child = Seed::image(&v2, &target).spawn();
    let t0 = std::time::Instant::now();
    while !v2_names
        .iter()
        .all(|n| target.join("store").join(n).symlink_metadata().is_ok())
    {
        assert!(t0.elapsed().as_secs() < 60, "the seeder did not copy v2's paths");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) };
    let registered = valid_paths(&target);
    assert!(
        v2_names
            .iter()
            .any(|n| !registered.iter().any(|p| p.ends_with(n.as_str()))),
        "the seeder registered before it could be paused (var/log copy too fast?)"
    );
    let lock = target.join("var/nix/db/db.sqlite.lock");
    std::fs::create_dir(&lock).unwrap();
    crate::support::cont(child.id());
    std::thread::sleep(std::time::Duration::from_millis(1500));
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    child.wait().unwrap();
    std::fs::remove_dir(&lock).unwrap();
    std::fs::remove_file(&big).unwrap();

    // Copied but not registered: Nix says so.
    let st = nix_seed()
        .arg("status")
        .arg("--source")
        .arg(v2.join("nix"))
        .arg("--target")
        .arg(&target)
        .output()
        .unwrap();
    assert_code(&st, 1);
    assert!(
        !stdout(&st).contains("image paths not registered in the target: 0"),
        "{}",
        text(&st)
    );

    // Tamper with one of the unregistered copies, as a bad plain copy would.
    let app = v2_names
        .iter()
        .find(|n| n.contains("seed-app-2.0") && !n.ends_with(".drv"))
        .unwrap();
    let f = target.join("store").join(app).join("bin/app");
    support::make_writable(&target.join("store").join(app));
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(&f, b"#!/bin/sh\necho tampered\n").unwrap();

    let out = Seed::image(&v2, &target).output();
    assert_ok(&out);
    assert!(
        stderr(&out).contains(app.as_str()) && stderr(&out).contains("replacing"),
        "{}",
        text(&out)
    );
    assert_nix_accepts(&target, &v1.join("nix"));
    assert_nix_accepts(&target, &v2.join("nix"));
    let v = nix_seed().arg("verify").arg("--target").arg(&target).output().unwrap();
    assert_ok(&v);
    assert!(!target.join("var/nix/db/db.sqlite.lock").exists());
});

nixtest!(a_target_database_in_wal_mode_and_one_in_truncate_mode, |_| {
    for wal in [true, false] {
        let tmp = support::scratch();
        // The target was made by Nix itself (v1), in WAL mode or with use-sqlite-wal = false.
        let t = real_store(&tmp.path().join("t"), "v1", wal);
        let target = t.join("nix");
        assert_eq!(nix_seed_db_is_wal(&target), wal);
        let v2 = real_store(&tmp.path().join("v2"), "v2", wal);
        let out = Seed::image(&v2, &target).output();
        assert_ok(&out);
        assert_eq!(nix_seed_db_is_wal(&target), wal, "the target's journal mode is kept");
        assert!(!target.join("var/nix/db/db.sqlite.lock").exists());
        assert_nix_accepts(&target, &v2.join("nix"));
        let o = in_pod(&target, "nix-store --check-validity $(ls -d /nix/store/*-seed-app-1.0)");
        assert!(o.status.success(), "the target's own paths stay valid:\n{}", text(&o));
    }
});

nixtest!(verify_agrees_with_nix_and_catches_each_tampering, |tmp| {
    let image = real_store(&tmp.path().join("v1"), "v1", true);
    // On a store Nix itself built, every NAR hash nix-seed computes is the one Nix registered.
    let o = nix_seed()
        .arg("verify")
        .arg("--target")
        .arg(image.join("nix"))
        .output()
        .unwrap();
    assert_ok(&o);
    assert!(
        stdout(&o).contains(&format!(
            "verified {} store paths",
            valid_paths(&image.join("nix")).len()
        )),
        "{}",
        text(&o)
    );

    let target = tmp.path().join("t/nix");
    std::fs::create_dir_all(&target).unwrap();
    Seed::image(&image, &target).ok();
    let verify = || {
        nix_seed()
            .arg("verify")
            .arg("--target")
            .arg(&target)
            .arg("-j")
            .arg("4")
            .output()
            .unwrap()
    };
    assert_ok(&verify());

    let paths = valid_paths(&image.join("nix"));
    let name = |needle: &str| -> PathBuf {
        let p = paths
            .iter()
            .find(|p| p.contains(needle) && !p.ends_with(".drv"))
            .unwrap();
        target.join("store").join(p.rsplit('/').next().unwrap())
    };
    let app = name("seed-app-1.0");
    let libc_ = name("seed-libc-1.0");
    let multi = name("seed-multi-1.0-dev");
    for d in [&app, &libc_, &multi] {
        support::make_writable(d);
    }
    // Content changed.
    let f = app.join("bin/app");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&f, &bytes).unwrap();
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o555)).unwrap();
    // Mode changed (not in the NAR unless the execute bit moves: a metadata problem).
    let lib = std::fs::read_dir(libc_.join("lib"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::set_permissions(&lib, std::fs::Permissions::from_mode(0o644)).unwrap();
    // An extra file.
    std::fs::write(multi.join("extra"), b"x").unwrap();

    let o = verify();
    assert_code(&o, 1);
    let err = stderr(&o);
    let line = |p: &Path, what: &str| {
        err.lines()
            .any(|l| l.contains(p.file_name().unwrap().to_str().unwrap()) && l.contains(what))
    };
    assert!(line(&app, "NAR hash"), "content change not caught:\n{err}");
    assert!(line(&lib, "file mode 0644"), "chmod not caught:\n{err}");
    assert!(line(&multi, "NAR hash"), "extra file not caught:\n{err}");
    assert!(line(&multi, "mtime"), "the extra file's mtime is not Nix's:\n{err}");
    // Only the named path.
    let o = nix_seed()
        .arg("verify")
        .arg("--target")
        .arg(&target)
        .arg(paths.iter().find(|p| p.contains("seed-link")).unwrap())
        .output()
        .unwrap();
    assert_ok(&o);
    // A registered path gone.
    std::fs::remove_dir_all(&multi).unwrap();
    let o = verify();
    assert!(stderr(&o).contains("registered but missing"), "{}", text(&o));
});

nixtest!(a_target_database_with_another_schema_is_refused_and_left_alone, |tmp| {
    let v1 = real_store(&tmp.path().join("v1"), "v1", true);
    let v2 = real_store(&tmp.path().join("v2"), "v2", true);
    let target = tmp.path().join("t/nix");
    std::fs::create_dir_all(&target).unwrap();
    Seed::image(&v1, &target).ok();
    std::fs::write(target.join("var/nix/db/schema"), b"11").unwrap();
    let db = std::fs::read(target.join("var/nix/db/db.sqlite")).unwrap();
    let store_before = std::fs::read_dir(target.join("store")).unwrap().count();
    let out = Seed::image(&v2, &target).output();
    // A refusal that wrote nothing: exit 2, like every other invalid target.
    assert_code(&out, 2);
    assert!(stderr(&out).contains("schema is 11"), "{}", text(&out));
    assert_eq!(std::fs::read(target.join("var/nix/db/db.sqlite")).unwrap(), db);
    assert_eq!(
        std::fs::read_dir(target.join("store")).unwrap().count(),
        store_before,
        "nothing copied"
    );
});

// A source database whose committed transactions are only in `db.sqlite-wal` (an image
// built while Nix was running, or snapshotted), on a read-only filesystem: the copy has
// every row, and nothing is created in the image.
roottest!(
    a_wal_only_source_database_on_a_read_only_image_is_copied_consistently,
    |tmp| {
        let fx = support::fixture::build(
            &tmp.path().join("src"),
            &support::fixture::Spec {
                paths: 30,
                ..Default::default()
            },
        );
        let db = fx.root.join("var/nix/db/db.sqlite");
        let want = db_rows(&db);
        // Rebuild the database so that all its content sits in the WAL.
        let work = tmp.path().join("work");
        std::fs::create_dir(&work).unwrap();
        let c = rusqlite::Connection::open(work.join("db.sqlite")).unwrap();
        c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())).unwrap();
        c.execute_batch("PRAGMA wal_autocheckpoint = 0").unwrap();
        c.execute_batch(support::fixture::NIX_SCHEMA).unwrap();
        c.execute("ATTACH ?1 AS old", [db.to_str().unwrap()]).unwrap();
        c.execute_batch(
            "INSERT INTO ValidPaths SELECT * FROM old.ValidPaths; INSERT INTO Refs SELECT * FROM old.Refs; \
         INSERT INTO DerivationOutputs SELECT * FROM old.DerivationOutputs; DETACH old;",
        )
        .unwrap();
        for f in ["db.sqlite", "db.sqlite-wal"] {
            std::fs::copy(work.join(f), fx.root.join("var/nix/db").join(f)).unwrap();
        }
        drop(c);
        let _ = std::fs::remove_file(fx.root.join("var/nix/db/db.sqlite-shm"));
        let listing = db_dir_listing(&fx.root);
        let wal_bytes = std::fs::read(fx.root.join("var/nix/db/db.sqlite-wal")).unwrap();
        assert!(wal_bytes.len() > 4096, "the rows are in the WAL");

        let ro = tmp.path().join("ro");
        std::fs::create_dir(&ro).unwrap();
        assert!(Command::new("mount")
            .arg("--bind")
            .arg("-o")
            .arg("ro")
            .arg(&fx.root)
            .arg(&ro)
            .status()
            .unwrap()
            .success());
        let dst = tmp.path().join("dst");
        std::fs::create_dir(&dst).unwrap();
        let out = Seed::new(&ro, &dst).output();
        let _ = Command::new("umount").arg(&ro).status();
        assert_ok(&out);
        assert_eq!(db_rows(&dst.join("var/nix/db/db.sqlite")), want);
        assert_eq!(db_dir_listing(&fx.root), listing, "nothing created in the image");
        assert_eq!(
            std::fs::read(fx.root.join("var/nix/db/db.sqlite-wal")).unwrap(),
            wal_bytes
        );
    }
);

/// Paths of the image's database with a referrer among them (`referenced`), or without
/// (`tops`), that are directories or files in its store.
fn image_paths_by_role(image: &Path) -> (Vec<String>, Vec<String>) {
    let db = rusqlite::Connection::open_with_flags(
        image.join("var/nix/db/db.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let q = |sql: &str| -> Vec<String> {
        db.prepare(sql)
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let referenced = q(
        "SELECT DISTINCT v.path FROM Refs r JOIN ValidPaths v ON v.id = r.reference \
         WHERE r.referrer <> r.reference AND v.path NOT LIKE '%.drv' ORDER BY v.path",
    );
    let tops = q("SELECT path FROM ValidPaths WHERE id NOT IN \
         (SELECT reference FROM Refs WHERE referrer <> reference) AND path NOT LIKE '%.drv' ORDER BY path");
    (referenced, tops)
}

fn remove_from_store(nix: &Path, path: &str) {
    let p = nix.join("store").join(path.rsplit('/').next().unwrap());
    support::make_writable(&p);
    if p.is_dir() {
        std::fs::remove_dir_all(&p).unwrap();
    } else {
        std::fs::remove_file(&p).unwrap();
    }
}

// A slimmed image: its database lists paths its store lacks. The target registers only
// what it holds, on a first seed and on a merge alike; and a present path whose
// reference is absent is reported and left unregistered, and the run fails.
nixtest!(a_slimmed_image_registers_only_what_the_target_holds, |tmp| {
    // A top removed from the image's store: nothing refers to it, the image is fine.
    let v1 = real_store(&tmp.path().join("v1"), "v1", false);
    let (_, tops) = image_paths_by_role(&v1.join("nix"));
    let gone = tops.first().expect("a top").clone();
    remove_from_store(&v1.join("nix"), &gone);
    for (what, target) in [
        ("first seed", tmp.path().join("t1/nix")),
        ("merge", tmp.path().join("t2/nix")),
    ] {
        std::fs::create_dir_all(&target).unwrap();
        if what == "merge" {
            // A target that already has a database (another image's).
            let other = real_store(&tmp.path().join("other"), "v2", false);
            Seed::image(&other, &target).ok();
        }
        let out = Seed::image(&v1, &target).output();
        assert_ok(&out);
        assert!(
            !valid_paths(&target).contains(&gone),
            "{what}: {gone} is registered but the target does not hold it\n{}",
            text(&out)
        );
        assert_ok(&support::cmd::status(&v1.join("nix"), &target));
        let o = in_pod(&target, "nix-store --verify --check-contents");
        let all = format!("{}{}", stdout(&o), stderr(&o));
        assert!(o.status.success() && !all.contains("disappeared"), "{what}: {all}");
    }

    // A referenced path removed: its referrers are present but cannot be valid.
    let v1b = real_store(&tmp.path().join("v1b"), "v1", false);
    let (referenced, _) = image_paths_by_role(&v1b.join("nix"));
    let dep = referenced.first().expect("a referenced path").clone();
    remove_from_store(&v1b.join("nix"), &dep);
    let target = tmp.path().join("t3/nix");
    std::fs::create_dir_all(&target).unwrap();
    let out = Seed::image(&v1b, &target).output();
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(err.contains(&dep), "the missing reference is named:\n{err}");
    let valid = valid_paths(&target);
    assert!(!valid.contains(&dep));
    let o = in_pod(&target, "nix-store --verify");
    assert!(o.status.success(), "the target's database is consistent: {}", text(&o));
    assert_code(&support::cmd::status(&v1b.join("nix"), &target), 1);
    // Every path that is registered has its whole closure registered.
    for p in &valid {
        let o = in_pod(&target, &format!("nix-store -qR {p}"));
        assert!(o.status.success(), "{p}: {}", text(&o));
    }
});

/// `sqlite_master` and the page size of the database of the Nix root `nix`.
fn db_layout(nix: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open_with_flags(
        nix.join("var/nix/db/db.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut st = c
        .prepare("SELECT type || ' ' || name || ' ' || tbl_name || ' ' || coalesce(sql, '') FROM sqlite_master ORDER BY name")
        .unwrap();
    let mut v: Vec<String> = st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
    v.push(format!(
        "page_size {}",
        c.query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0)).unwrap()
    ));
    v
}

// An image with no database, a target with none: the empty database and `schema` file
// nix-seed makes are what Nix 2.8 makes for a new store (same tables, indexes, trigger,
// page size, `schema` bytes), and Nix with `use-sqlite-wal = false` uses it: --verify,
// --add, the references query, and the database stays in rollback mode at schema 10.
nixtest!(an_empty_database_made_by_nix_seed_is_the_one_nix_makes, |tmp| {
    use std::os::fd::AsFd;
    // Nix's own new store.
    let theirs = tmp.path().join("n/nix");
    std::fs::create_dir_all(theirs.join("store")).unwrap();
    let o = support::nix::in_pod_with(&theirs, "nix-store --verify", &support::nix::nix_config(false));
    assert!(o.status.success(), "{}", text(&o));

    let nix = tmp.path().join("t/nix");
    let db_dir = nix.join("var/nix/db");
    std::fs::create_dir_all(nix.join("store")).unwrap();
    std::fs::create_dir_all(&db_dir).unwrap();
    let fd = nix_seed::base::dirfd::open_root(&db_dir).unwrap();
    nix_seed::engines::nixdb::create_empty(fd.as_fd(), &db_dir, "db.sqlite").unwrap();
    nix_seed::engines::nixdb::write_schema_file(fd.as_fd(), &db_dir).unwrap();
    assert_eq!(
        std::fs::read(db_dir.join("schema")).unwrap(),
        std::fs::read(theirs.join("var/nix/db/schema")).unwrap()
    );
    assert_eq!(std::fs::read(db_dir.join("schema")).unwrap(), b"10");
    assert_eq!(db_layout(&nix), db_layout(&theirs));
    assert!(!nix_seed_db_is_wal(&nix));

    let file = tmp.path().join("hello.txt");
    std::fs::write(&file, b"hello from nix-seed\n").unwrap();
    let o = in_pod(
        &nix,
        &format!(
            "set -e; nix-store --verify; p=$(nix-store --add '{}'); nix-store --check-validity $p; \
             echo \"added $p\"; nix-store -q --references $p; nix-store --verify --check-contents",
            file.display()
        ),
    );
    assert!(o.status.success(), "{}", text(&o));
    let added = stdout(&o)
        .lines()
        .find_map(|l| l.strip_prefix("added ").map(str::to_string))
        .unwrap();
    assert!(added.ends_with("-hello.txt"), "{}", text(&o));
    assert_eq!(valid_paths(&nix), [added]);
    assert!(!nix_seed_db_is_wal(&nix), "still a rollback journal");
    assert_eq!(std::fs::read(db_dir.join("schema")).unwrap(), b"10");
});
