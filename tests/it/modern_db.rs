//! Databases of newer Nix (2.26's `ca-schema` and `SchemaMigrations`, Determinate Nix's
//! `provenance` column, no `IndexReferrer`), images whose database has a `-wal` file, and
//! what `status` says about the target's journal mode (issue #10: E.12, E.13, E.14, E.16).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use crate::support;
use crate::support::cmd::{assert_code, assert_ok, nix_seed, stderr, stdout, text, Seed};
use crate::support::compare::db_rows;
use crate::support::fixture::{self, Spec};

fn build(root: &Path, paths: usize, seed: u64) -> fixture::Fixture {
    fixture::build(
        root,
        &Spec {
            paths,
            big_file_bytes: 64 << 10,
            seed,
            ..Default::default()
        },
    )
}

fn db(root: &Path) -> std::path::PathBuf {
    root.join("var/nix/db/db.sqlite")
}

/// name -> (size, mtime) of every entry of `var/nix/db`.
fn db_dir_stat(root: &Path) -> BTreeMap<String, (u64, i64, i64)> {
    std::fs::read_dir(root.join("var/nix/db"))
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.path().symlink_metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                (m.len(), m.mtime(), m.mtime_nsec()),
            )
        })
        .collect()
}

fn sql(db: &Path, batch: &str) {
    let c = rusqlite::Connection::open(db).unwrap();
    c.execute_batch(batch).unwrap();
}

// ---------------------------------------------------------------------------------------
// E.12: ca-schema

#[test]
fn ca_schema_is_copied_with_the_database_on_a_first_seed() {
    let tmp = support::scratch();
    let fx = build(&tmp.path().join("src"), 20, 1);
    std::fs::write(fx.root.join("var/nix/db/ca-schema"), b"4").unwrap();
    // The target has no var/ (var/ built whole), or a var/ without a database.
    for with_var in [false, true] {
        let dst = tmp.path().join(format!("dst-{with_var}"));
        std::fs::create_dir_all(&dst).unwrap();
        if with_var {
            std::fs::create_dir_all(dst.join("var/nix/profiles")).unwrap();
        }
        let out = Seed::new(&fx.root, &dst).output();
        assert_ok(&out);
        assert_eq!(
            std::fs::read(dst.join("var/nix/db/ca-schema")).ok().as_deref(),
            Some(&b"4"[..]),
            "ca-schema copied with the database (var/ existed: {with_var})"
        );
        assert_eq!(db_rows(&db(&dst)), db_rows(&db(&fx.root)));
    }
}

#[test]
fn ca_schema_is_never_added_to_an_existing_database() {
    let tmp = support::scratch();
    let fx = build(&tmp.path().join("src"), 20, 1);
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    Seed::new(&fx.root, &dst).ok();
    assert!(!dst.join("var/nix/db/ca-schema").exists());

    // The image is upgraded to a Nix with CA derivations: its database has the migration,
    // the target's has not, so the target must not claim it has.
    let added = fixture::add_paths(&fx.root, 5, 7);
    std::fs::write(fx.root.join("var/nix/db/ca-schema"), b"4").unwrap();
    let out = Seed::new(&fx.root, &dst).output();
    assert_ok(&out);
    assert!(
        !dst.join("var/nix/db/ca-schema").exists(),
        "ca-schema added to a database that never had the CA migration"
    );
    let rows = db_rows(&db(&dst));
    for n in &added {
        let p = format!("/nix/store/{}", n.to_str().unwrap());
        assert!(
            rows.iter().any(|r| r.starts_with(&format!("path {p} "))),
            "{p} not registered"
        );
    }
}

// ---------------------------------------------------------------------------------------
// E.13: the image's -wal

/// The image's database in WAL mode with a `-wal` file that is empty, or that holds
/// committed transactions; a writable image (as root: SQLite could delete or checkpoint
/// the WAL). Seeding changes nothing in the image's `var/nix/db` and copies every row.
#[test]
fn an_image_wal_file_empty_or_not_is_left_exactly_as_it_was() {
    for nonempty in [false, true] {
        let tmp = support::scratch();
        let fx = build(&tmp.path().join("src"), 20, 1);
        let dbf = db(&fx.root);
        let wal = fx.root.join("var/nix/db/db.sqlite-wal");
        let _ = std::fs::remove_file(fx.root.join("var/nix/db/db.sqlite-shm"));
        let want;
        if nonempty {
            // Committed changes only in the WAL: a connection keeps it open while the
            // files are copied aside, then they are put back.
            let c = rusqlite::Connection::open(&dbf).unwrap();
            c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())).unwrap();
            c.execute_batch("PRAGMA wal_autocheckpoint = 0; UPDATE ValidPaths SET sigs = 'only-in-wal-' || id;")
                .unwrap();
            want = db_rows(&dbf);
            let aside = tmp.path().join("aside");
            std::fs::create_dir(&aside).unwrap();
            for f in ["db.sqlite", "db.sqlite-wal"] {
                std::fs::copy(fx.root.join("var/nix/db").join(f), aside.join(f)).unwrap();
            }
            drop(c);
            for f in ["db.sqlite", "db.sqlite-wal"] {
                std::fs::copy(aside.join(f), fx.root.join("var/nix/db").join(f)).unwrap();
            }
            let _ = std::fs::remove_file(fx.root.join("var/nix/db/db.sqlite-shm"));
            assert!(std::fs::metadata(&wal).unwrap().len() > 4096);
        } else {
            let c = rusqlite::Connection::open(&dbf).unwrap();
            c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())).unwrap();
            drop(c);
            want = db_rows(&dbf);
            std::fs::File::create(&wal).unwrap();
        }
        assert!(wal.exists());
        let before = db_dir_stat(&fx.root);
        let bytes = std::fs::read(&wal).unwrap();

        // A first seed (read, then backed up), then a merge into an existing database.
        let dst = tmp.path().join("dst");
        std::fs::create_dir(&dst).unwrap();
        let out = Seed::new(&fx.root, &dst).output();
        assert_ok(&out);
        assert_eq!(
            db_dir_stat(&fx.root),
            before,
            "the image's var/nix/db changed (wal: {nonempty})"
        );
        assert_eq!(std::fs::read(&wal).unwrap(), bytes);
        assert_eq!(db_rows(&db(&dst)), want, "first seed (wal: {nonempty})");

        let other = build(&tmp.path().join("other"), 10, 5);
        let dst2 = tmp.path().join("dst2");
        std::fs::create_dir(&dst2).unwrap();
        Seed::new(&other.root, &dst2).ok();
        let out = Seed::new(&fx.root, &dst2).output();
        assert_ok(&out);
        assert_eq!(
            db_dir_stat(&fx.root),
            before,
            "the image's var/nix/db changed (wal: {nonempty})"
        );
        let rows = db_rows(&db(&dst2));
        let missing: Vec<&String> = want
            .iter()
            .filter(|r| r.starts_with("path ") && !rows.contains(*r))
            .collect();
        assert!(missing.is_empty(), "merge (wal: {nonempty}): missing {missing:?}");
    }
}

// ---------------------------------------------------------------------------------------
// E.14: newer schemas

const PROVENANCE: &str = "ALTER TABLE ValidPaths ADD COLUMN provenance text;";
const MIGRATIONS: &str = "CREATE TABLE IF NOT EXISTS SchemaMigrations (migration text primary key not null);
     INSERT OR IGNORE INTO SchemaMigrations VALUES ('20220326-ca-derivations'), ('20220502-drop-index-referrer');";

fn provenance(db: &Path) -> BTreeMap<String, Option<String>> {
    let c = rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let mut st = c.prepare("SELECT path, provenance FROM ValidPaths").unwrap();
    let v = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    v
}

#[test]
fn extra_nullable_columns_schema_migrations_and_no_index_referrer_on_either_side() {
    let tmp = support::scratch();
    // P: Nix 2.8's schema; Q: Determinate Nix's (provenance) and 2.26's SchemaMigrations,
    // no IndexReferrer.
    let p = build(&tmp.path().join("p"), 12, 1);
    let q = build(&tmp.path().join("q"), 12, 3);
    sql(
        &db(&q.root),
        &format!(
            "{PROVENANCE} {MIGRATIONS} DROP INDEX IndexReferrer; UPDATE ValidPaths SET provenance = 'prov-' || id;"
        ),
    );

    // The target lacks the column, the image has it.
    let t1 = tmp.path().join("t1");
    std::fs::create_dir(&t1).unwrap();
    Seed::new(&p.root, &t1).ok();
    sql(&db(&t1), &format!("{MIGRATIONS} DROP INDEX IndexReferrer;"));
    let out = Seed::new(&q.root, &t1).output();
    assert_ok(&out);
    let rows = db_rows(&db(&t1));
    for r in db_rows(&db(&q.root)).iter().filter(|r| r.starts_with("path ")) {
        assert!(rows.contains(r), "t1 lacks {r}");
    }

    // The target has it (a first seed of Q), the image lacks it: NULL.
    let t2 = tmp.path().join("t2");
    std::fs::create_dir(&t2).unwrap();
    Seed::new(&q.root, &t2).ok();
    assert_eq!(provenance(&db(&t2)), provenance(&db(&q.root)));
    let out = Seed::new(&p.root, &t2).output();
    assert_ok(&out);
    let prov = provenance(&db(&t2));
    for n in &p.names {
        let path = format!("/nix/store/{}", n.to_str().unwrap());
        assert_eq!(prov.get(&path), Some(&None), "{path}");
    }

    // Both have it: copied verbatim.
    let added = fixture::add_paths(&q.root, 4, 11);
    sql(
        &db(&q.root),
        "UPDATE ValidPaths SET provenance = 'new-' || id WHERE provenance IS NULL;",
    );
    let out = Seed::new(&q.root, &t2).output();
    assert_ok(&out);
    let prov = provenance(&db(&t2));
    let src = provenance(&db(&q.root));
    for n in &added {
        let path = format!("/nix/store/{}", n.to_str().unwrap());
        assert!(src[&path].as_deref().is_some_and(|s| s.starts_with("new-")));
        assert_eq!(prov.get(&path), Some(&src[&path]), "{path}: provenance not copied");
    }
    let c = rusqlite::Connection::open(db(&t2)).unwrap();
    let n: i64 = c
        .query_row("SELECT count(*) FROM SchemaMigrations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2, "the target's SchemaMigrations kept");
}

#[test]
fn a_database_that_is_not_nix_s_says_what_is_wrong() {
    let tmp = support::scratch();
    let p = build(&tmp.path().join("p"), 8, 1);
    let cases: [(&str, &str, &str); 3] = [
        ("empty", "", "has no table ValidPaths: not a Nix database"),
        (
            "no-ca",
            "CREATE TABLE ValidPaths (id integer primary key, path text, hash text, registrationTime integer, \
             deriver text, narSize integer, ultimate integer, sigs text);
             CREATE TABLE Refs (referrer integer, reference integer);
             CREATE TABLE DerivationOutputs (drv integer, id text, path text);",
            "table ValidPaths has no column ca",
        ),
        (
            "not-null-extra",
            &format!(
                "{} ALTER TABLE Refs ADD COLUMN weight integer NOT NULL DEFAULT 0;",
                fixture::NIX_SCHEMA
            ),
            "",
        ),
    ];
    for (name, schema, want) in cases {
        let t = tmp.path().join(name);
        std::fs::create_dir_all(t.join("var/nix/db")).unwrap();
        std::fs::write(t.join("var/nix/db/schema"), b"10").unwrap();
        std::fs::File::create(db(&t)).unwrap();
        if !schema.is_empty() {
            sql(&db(&t), schema);
        }
        let out = Seed::new(&p.root, &t).output();
        if want.is_empty() {
            // An extra column with a default is filled by SQLite: accepted.
            assert_ok(&out);
            continue;
        }
        // Refused before anything is written: exit 2.
        assert_code(&out, 2);
        let err = stderr(&out);
        assert!(err.contains(want), "{name}: {err}");
        assert!(
            err.contains(&db(&t).display().to_string()),
            "{name}: the path is named: {err}"
        );
        assert_eq!(err.trim().lines().count(), 1, "{name}: one line: {err}");
    }
    // As the image's database.
    let img = build(&tmp.path().join("img"), 4, 9);
    std::fs::remove_file(db(&img.root)).unwrap();
    std::fs::File::create(db(&img.root)).unwrap();
    let t = tmp.path().join("t");
    std::fs::create_dir(&t).unwrap();
    let out = Seed::new(&img.root, &t).output();
    // Bad input, refused before anything is written (issue #18).
    assert_code(&out, 2);
    assert!(
        stderr(&out).contains("is not a Nix database (it has no table ValidPaths)"),
        "{}",
        text(&out)
    );
    assert_eq!(
        std::fs::read_dir(&t).unwrap().count(),
        0,
        "nothing written in the target"
    );
}

// ---------------------------------------------------------------------------------------
// E.16: status reports the journal mode

fn status_json(src: &Path, dst: &Path) -> serde_json::Value {
    let o = nix_seed()
        .args(["status", "--log-format", "json", "--source"])
        .arg(src)
        .arg("--target")
        .arg(dst)
        .output()
        .unwrap();
    let line = stdout(&o)
        .lines()
        .find(|l| l.contains("\"event\":\"status\""))
        .unwrap_or_else(|| panic!("{}", text(&o)))
        .to_string();
    serde_json::from_str(&line).unwrap()
}

#[test]
fn status_reports_the_target_database_journal_mode() {
    let tmp = support::scratch();
    let p = build(&tmp.path().join("p"), 8, 1);
    let t = tmp.path().join("t");
    std::fs::create_dir(&t).unwrap();
    assert_eq!(status_json(&p.root, &t)["journal_mode"], serde_json::Value::Null);
    Seed::new(&p.root, &t).ok();
    assert_eq!(status_json(&p.root, &t)["journal_mode"], "rollback");
    let o = support::cmd::status(&p.root, &t);
    assert!(stdout(&o).contains("journal mode: rollback"), "{}", text(&o));
    let c = rusqlite::Connection::open(db(&t)).unwrap();
    c.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(())).unwrap();
    drop(c);
    assert_eq!(status_json(&p.root, &t)["journal_mode"], "wal");
    let o = support::cmd::status(&p.root, &t);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("journal mode: wal"), "{}", text(&o));
}

// ---------------------------------------------------------------------------------------
// A.4: the journal mode changes between copy and register

fn proc_state(pid: u32) -> Option<char> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..].trim_start().chars().next()
}

// The target's database is in rollback mode (made by Nix with use-sqlite-wal = false);
// while the seeder is between copy and register, a pod running Nix with the default
// use-sqlite-wal = true opens it and converts it to WAL. The seeder registers anyway,
// through the VFS the database needs now, and Nix accepts the result.
nixtest!(
    a_pod_converts_the_target_database_to_wal_between_copy_and_register,
    |tmp| {
        use support::nix::{assert_nix_accepts, nix_config, nix_seed_db_is_wal, real_store, valid_paths};
        let target = real_store(&tmp.path().join("t"), "v1", false).join("nix");
        assert!(!nix_seed_db_is_wal(&target));
        let v2 = real_store(&tmp.path().join("v2"), "v2", false).join("nix");

        let child = Seed::new(&v2, &target).failpoint("copied=stop").spawn();
        let pid = child.id();
        let t0 = std::time::Instant::now();
        while proc_state(pid) != Some('T') {
            assert!(
                t0.elapsed().as_secs() < 120,
                "the seeder did not stop at the failpoint (state {:?})",
                proc_state(pid)
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }

        // A default-configured pod opens the store: Nix converts the database to WAL.
        let some = valid_paths(&target).into_iter().next().unwrap();
        let o = std::process::Command::new("unshare")
            .arg("-m")
            .arg("sh")
            .arg("-c")
            .arg(format!(
                "mkdir -p /nix && mount --bind '{}' /nix && nix-store -q --hash {some}",
                target.display()
            ))
            .env("NIX_CONFIG", nix_config(true))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", text(&o));
        assert!(nix_seed_db_is_wal(&target), "Nix converted the database to WAL");

        unsafe { libc::kill(pid as i32, libc::SIGCONT) };
        let out = child.wait_with_output().unwrap();
        assert_ok(&out);
        assert!(nix_seed_db_is_wal(&target), "the pods' journal mode is kept");
        assert_nix_accepts(&target, &v2);
    }
);
