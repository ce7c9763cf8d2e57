//! `nix-seed images` and `nix-seed prune` against real Nix: the listing's closures and
//! sizes are what `nix-store -q --requisites`/`--size` say, a prune followed by a real
//! garbage collection deletes exactly the paths prune said it would, the kept image stays
//! whole, a retired image started again is seeded again without copying what survived,
//! and refusals change nothing. Also the fast path's "last seen" bump.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde_json::Value;

use crate::support;
use crate::support::cmd::{assert_code, assert_ok, nix_seed, stderr, stdout, text, Seed};
use crate::support::compare::{assert_unchanged, snapshot, Snapshot};
use crate::support::fixture::set_times_nofollow;
use crate::support::images::{collect_garbage, images, marker, newest_id, now, prune, run};
use crate::support::nix::{assert_contents_verify, in_pod, real_store};

fn mtime(p: &Path) -> i64 {
    std::fs::symlink_metadata(p)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Real Nix's closure of an image in the target: the requisites of its root links' paths,
/// with each path's NAR size (`nix-store -q --size`).
fn nix_closure(target: &Path, id: &str) -> BTreeMap<String, u64> {
    let dir = target.join("var/nix/gcroots/nix-seed").join(id);
    let roots: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            std::fs::read_link(e.unwrap().path())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let o = in_pod(
        target,
        &format!(
            "for p in $(nix-store -q --requisites {}); do echo $p $(nix-store -q --size $p); done",
            roots.join(" ")
        ),
    );
    assert!(o.status.success(), "{}", text(&o));
    stdout(&o)
        .lines()
        .map(|l| {
            let (p, n) = l.split_once(' ').unwrap();
            (p.to_string(), n.parse().unwrap())
        })
        .collect()
}

/// Nothing changed: the same entries with the same metadata. The database directory's own
/// times are left out: reading the database the way Nix's clients do (the unix-dotfile
/// VFS) creates and removes the `db.sqlite.lock` directory in it.
fn assert_nothing_changed(before: &Snapshot, target: &Path) {
    let after = snapshot(target);
    assert_unchanged(before, &after, |p| p != b"var/nix/db");
    let keys = |s: &Snapshot| s.entries.keys().cloned().collect::<BTreeSet<_>>();
    assert_eq!(keys(before), keys(&after), "entries were added or removed");
}

/// Three real images into one disk: v1, v2 (sharing paths with v1), and v1+v2 (a third
/// image whose store holds both). Returns the images' roots and their ids in seed order.
fn three_images(tmp: &Path, target: &Path) -> (Vec<PathBuf>, Vec<String>) {
    let a = real_store(&tmp.join("a"), "v1", false);
    let b = real_store(&tmp.join("b"), "v2", false);
    let c = real_store(&tmp.join("c"), "v1", false);
    let c = real_store(&c, "v2", false);
    std::fs::create_dir_all(target).unwrap();
    let mut ids = Vec::new();
    for img in [&a, &b, &c] {
        Seed::image(img, target).ok();
        ids.push(newest_id(target));
    }
    (vec![a, b, c], ids)
}

nixtest!(
    images_match_nix_and_prune_then_a_real_gc_frees_exactly_what_prune_said,
    |tmp| {
        let target = tmp.path().join("t/nix");
        let (_, ids) = three_images(tmp.path(), &target);
        let (a, b, c) = (&ids[0], &ids[1], &ids[2]);

        // The listing against Nix: each closure, its size, and what only it holds.
        let (listed, total) = images(&target);
        assert_eq!(
            listed.keys().collect::<BTreeSet<_>>(),
            ids.iter().collect(),
            "{listed:?}"
        );
        let closures: BTreeMap<&String, BTreeMap<String, u64>> =
            ids.iter().map(|id| (id, nix_closure(&target, id))).collect();
        for id in &ids {
            let (img, nix) = (&listed[id], &closures[id]);
            assert_eq!(img["store_paths"].as_u64().unwrap() as usize, nix.len(), "{id}: {img}");
            assert_eq!(
                img["closure_bytes"].as_u64().unwrap(),
                nix.values().sum::<u64>(),
                "{id}: {img}"
            );
            let alone: Vec<&String> = nix
                .keys()
                .filter(|p| closures.iter().all(|(o, c)| *o == id || !c.contains_key(*p)))
                .collect();
            assert_eq!(
                img["alone_store_paths"].as_u64().unwrap() as usize,
                alone.len(),
                "{id}: {img}"
            );
            assert_eq!(img["roots_complete"], true, "{id}: {img}");
            assert!(img["last_seen"].is_string() && img["first_seeded"].is_string(), "{img}");
        }
        let union: BTreeSet<&String> = closures.values().flat_map(|c| c.keys()).collect();
        assert_eq!(total["images"], 3);
        assert_eq!(total["store_paths"].as_u64().unwrap() as usize, union.len());
        assert!(total["free_bytes"].as_u64().unwrap() > 0);
        // The text form: one line per image starting with its id, then the totals.
        let o = run(&["images"], &target);
        assert_ok(&o);
        let lines: Vec<String> = stdout(&o).lines().map(str::to_string).collect();
        assert_eq!(lines.len(), 4, "{}", text(&o));
        assert!(lines[3].starts_with("total: 3 images"), "{}", text(&o));

        // Last seen: c longest ago, then a; b most recently. --keep-last 1 keeps b.
        set_times_nofollow(&marker(&target, c), now() - 7200);
        set_times_nofollow(&marker(&target, a), now() - 3600);

        // A dry run changes nothing and says the same as the real run.
        let before = snapshot(&target);
        let (dry_freeable, dry_retired) = prune(&target, &["--keep-last", "1", "--dry-run"]);
        assert_nothing_changed(&before, &target);
        assert_eq!(dry_retired, [a.clone(), c.clone()].into());

        let (freeable, retired) = prune(&target, &["--keep-last", "1"]);
        assert_eq!(retired, [a.clone(), c.clone()].into());
        assert_eq!(freeable, dry_freeable);
        assert!(!freeable.is_empty());
        // Only the retired images' paths, none of the kept one's.
        for p in &freeable {
            assert!(closures[a].contains_key(p) || closures[c].contains_key(p), "{p}");
            assert!(!closures[b].contains_key(p), "{p} is the kept image's");
        }
        let (listed, _) = images(&target);
        assert_eq!(listed.keys().collect::<Vec<_>>(), vec![b]);
        for id in [a, c] {
            assert!(!marker(&target, id).exists());
            assert!(!target.join(".nix-seed/records").join(id).exists());
            assert!(!target.join("var/nix/gcroots/nix-seed").join(id).exists());
        }
        assert_no_temp_roots(&target);

        // Real Nix deletes exactly what prune said, and the kept image stays whole.
        let deleted = collect_garbage(&target);
        assert_eq!(
            deleted, freeable,
            "a real collection deleted other paths than prune said"
        );
        let kept: Vec<&String> = closures[b].keys().collect();
        let o = in_pod(
            &target,
            &format!(
                "nix-store --check-validity {}",
                kept.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" ")
            ),
        );
        assert!(o.status.success(), "{}", text(&o));
        for p in &kept {
            assert!(
                std::fs::symlink_metadata(target.join(p.trim_start_matches("/nix/"))).is_ok(),
                "{p} of the kept image is gone"
            );
        }
        assert_contents_verify(&target, &tmp.path().join("verify-copy"));
        // Nothing left for a second prune to retire.
        let (_, retired) = prune(&target, &["--keep-last", "1"]);
        assert!(retired.is_empty());
    }
);

fn assert_no_temp_roots(target: &Path) {
    let left: Vec<String> = std::fs::read_dir(target.join("var/nix/gcroots/nix-seed"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

// A retired image that a pod starts again is seeded like a new one: what survived the
// collection is registered and rooted again, only what the collection deleted is copied.
nixtest!(
    a_retired_image_started_again_is_rerooted_copying_only_what_was_collected,
    |tmp| {
        let target = tmp.path().join("t/nix");
        let a = real_store(&tmp.path().join("a"), "v1", false);
        let b = real_store(&tmp.path().join("b"), "v2", false);
        std::fs::create_dir_all(&target).unwrap();
        Seed::image(&a, &target).ok();
        let id_a = newest_id(&target);
        Seed::image(&b, &target).ok();

        let (freeable, retired) = prune(&target, &["--image", &id_a]);
        assert_eq!(retired, [id_a.clone()].into());
        let deleted = collect_garbage(&target);
        assert_eq!(deleted, freeable);
        assert!(!deleted.is_empty());

        // (`keep`: the profile stays on b's generation, so a can be retired again below.)
        let o = Seed::image(&a, &target)
            .args(["--log-format", "json", "--profiles", "keep"])
            .output();
        assert_ok(&o);
        let report: Value = serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
        assert_eq!(
            report["copied"].as_u64().unwrap() as usize,
            deleted.len(),
            "{}",
            text(&o)
        );
        assert_eq!(
            report["registered"].as_u64().unwrap() as usize,
            deleted.len(),
            "{}",
            text(&o)
        );
        assert!(report["gc_roots"].as_u64().unwrap() > 0, "{}", text(&o));
        let (listed, _) = images(&target);
        assert_eq!(listed[&id_a]["roots_complete"], true);
        crate::support::nix::assert_nix_accepts(&target, &a.join("nix"));

        // Without a collection in between, nothing at all is copied or registered: only rooted.
        let (_, retired) = prune(&target, &["--image", &id_a]);
        assert_eq!(retired, [id_a.clone()].into());
        let o = Seed::image(&a, &target).args(["--log-format", "json"]).output();
        assert_ok(&o);
        let report: Value = serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
        assert_eq!(report["copied"], 0, "{}", text(&o));
        assert_eq!(report["registered"], 0, "{}", text(&o));
        assert!(report["gc_roots"].as_u64().unwrap() > 0, "{}", text(&o));
        assert!(marker(&target, &id_a).exists());
    }
);

// Refusals: exit 2, one line naming the fix, nothing changed.
nixtest!(prune_refuses_bad_input_and_changes_nothing, |tmp| {
    let target = tmp.path().join("t/nix");
    let a = real_store(&tmp.path().join("a"), "v1", false);
    std::fs::create_dir_all(&target).unwrap();
    Seed::image(&a, &target).ok();
    let id = newest_id(&target);
    let cases: &[(&[&str], &str)] = &[
        (&["--image", "0123456789abcdef0123456789abcdef"], "nix-seed images"),
        (&["--keep-last", "0"], "pass 1 or more"),
        (&["--keep-last", "1", "--unused-for", "30d"], "pass one of them"),
        (&["--keep-last", "1", "--image", &id], "pass one of them"),
        (&[], "--keep-last N"),
    ];
    let before = snapshot(&target);
    for (args, says) in cases {
        let mut all = vec!["prune"];
        all.extend(*args);
        let o = run(&all, &target);
        assert_code(&o, 2);
        let err = stderr(&o);
        assert!(
            err.contains(says) && err.contains("nothing was changed"),
            "{args:?}:\n{}",
            text(&o)
        );
        assert_eq!(err.trim().lines().count(), 1, "{args:?}:\n{}", text(&o));
        assert_nothing_changed(&before, &target);
    }
    // A disk never seeded, for prune and images.
    let empty = tmp.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    for cmd in [&["prune", "--keep-last", "1"][..], &["images"]] {
        let o = run(cmd, &empty);
        assert_code(&o, 2);
        assert!(stderr(&o).contains("never seeded by nix-seed"), "{}", text(&o));
        assert_eq!(std::fs::read_dir(&empty).unwrap().count(), 0);
    }
});

// The fast path bumps "last seen" when it is an hour old or more, and only then; prune
// --unused-for retires by it, allowing for that hour.
nixtest!(last_seen_is_bumped_hourly_by_the_no_op_and_drives_unused_for, |tmp| {
    let target = tmp.path().join("t/nix");
    let a = real_store(&tmp.path().join("a"), "v1", false);
    let b = real_store(&tmp.path().join("b"), "v2", false);
    std::fs::create_dir_all(&target).unwrap();
    Seed::image(&a, &target).ok();
    let id_a = newest_id(&target);
    // (`keep`: the profile stays a's: b, not in use, can be retired by age.)
    Seed::image(&b, &target).args(["--profiles", "keep"]).ok();
    let id_b = newest_id(&target);

    let m = marker(&target, &id_a);
    let ten_min = now() - 600;
    set_times_nofollow(&m, ten_min);
    let o = Seed::image(&a, &target).output();
    assert_ok(&o);
    assert!(stdout(&o).contains("nothing to do"), "{}", text(&o));
    assert_eq!(mtime(&m), ten_min, "a marker seen 10 min ago was written again");

    set_times_nofollow(&m, now() - 7200);
    let t0 = now();
    Seed::image(&a, &target).ok();
    assert!(
        mtime(&m) >= t0 - 1,
        "a marker seen 2 h ago was not bumped: {}",
        mtime(&m)
    );

    // --unused-for 1h: a seen 90 min ago is kept (last seen lags by up to an hour), b
    // seen and seeded 3 h ago is retired. (A seed is a sighting too: the records say
    // both were seeded just now, so first make them say 3 h ago.)
    let three_hours_ago =
        humantime::format_rfc3339_seconds(SystemTime::now() - std::time::Duration::from_secs(3 * 3600));
    for id in [&id_a, &id_b] {
        let p = target.join(".nix-seed/records").join(id);
        let mut r: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        r["last_seeded"] = Value::String(three_hours_ago.to_string());
        std::fs::write(&p, r.to_string()).unwrap();
    }
    set_times_nofollow(&m, now() - 5400);
    set_times_nofollow(&marker(&target, &id_b), now() - 3 * 3600);
    let (_, retired) = prune(&target, &["--unused-for", "1h"]);
    assert_eq!(retired, [id_b.clone()].into());
    assert!(m.exists());
});

// Profile generations nix-seed recorded for an image: an image whose generation a profile
// points to now is never retired; retiring another removes its generations that still
// point where its record says, and no other link.
nixtest!(
    prune_spares_the_current_generation_and_removes_only_its_own_links,
    |tmp| {
        let target = tmp.path().join("t/nix");
        let a = real_store(&tmp.path().join("a"), "v1", false);
        let b = real_store(&tmp.path().join("b"), "v2", false);
        std::fs::create_dir_all(&target).unwrap();
        Seed::image(&a, &target).ok();
        let id_a = newest_id(&target);
        // (`keep`: the profile stays a's, as the records below say.)
        Seed::image(&b, &target).args(["--profiles", "keep"]).ok();
        let id_b = newest_id(&target);
        set_times_nofollow(&marker(&target, &id_a), now() - 7200);

        // The profile is a's (seeded first): default -> default-1-link. Records as nix-seed
        // writes them for generations it made: a's is current, b's 2 is not, and b's 3 was
        // changed since (it points elsewhere now: not nix-seed's to remove).
        let profiles = target.join("var/nix/profiles");
        assert_eq!(
            std::fs::read_link(profiles.join("default")).unwrap(),
            Path::new("default-1-link")
        );
        let env1 = std::fs::read_link(profiles.join("default-1-link")).unwrap();
        let app2 = std::fs::read_link(target.join("var/nix/gcroots/seed-app")).unwrap();
        std::os::unix::fs::symlink(&app2, profiles.join("default-2-link")).unwrap();
        std::os::unix::fs::symlink(&env1, profiles.join("default-3-link")).unwrap();
        let record = |id: &str, gens: &[(u64, &Path)]| {
            let gens: Vec<Value> = gens
                .iter()
                .map(|(n, p)| serde_json::json!({"profile": "nix/profiles/default", "number": n, "store_path": p}))
                .collect();
            let r = serde_json::json!({"image_id": id, "first_seeded": "2026-01-01T00:00:00Z",
                                   "last_seeded": "2026-01-01T00:00:00Z", "generations": gens});
            std::fs::write(target.join(".nix-seed/records").join(id), r.to_string()).unwrap();
        };
        record(&id_a, &[(1, &env1)]);
        record(&id_b, &[(2, &app2), (3, &app2)]);

        // Asked by name: refused, nothing changed.
        let before = snapshot(&target);
        let o = run(&["prune", "--image", &id_a], &target);
        assert_code(&o, 2);
        assert!(
            stderr(&o).contains("var/nix/profiles/default points to its generation 1"),
            "{}",
            text(&o)
        );
        assert_nothing_changed(&before, &target);
        // Chosen by age: spared, with a line saying why.
        let o = run(&["prune", "--keep-last", "1"], &target);
        assert_ok(&o);
        assert!(stderr(&o).contains(&format!("kept image {id_a}")), "{}", text(&o));
        assert!(marker(&target, &id_a).exists());

        // b retired: its generation 2 goes, 3 (changed) and a's stay.
        let (_, retired) = prune(&target, &["--image", &id_b]);
        assert_eq!(retired, [id_b.clone()].into());
        assert!(std::fs::symlink_metadata(profiles.join("default-2-link")).is_err());
        assert_eq!(std::fs::read_link(profiles.join("default-3-link")).unwrap(), env1);
        assert_eq!(std::fs::read_link(profiles.join("default-1-link")).unwrap(), env1);
        assert_eq!(
            std::fs::read_link(profiles.join("default")).unwrap(),
            Path::new("default-1-link")
        );
    }
);

// A database a pod's Nix converted to WAL is read as well, and left in WAL mode.
nixtest!(images_reads_a_wal_database_and_leaves_its_mode, |tmp| {
    let target = tmp.path().join("t/nix");
    let a = real_store(&tmp.path().join("a"), "v1", false);
    std::fs::create_dir_all(&target).unwrap();
    Seed::image(&a, &target).ok();
    let (rollback, _) = images(&target);
    let db = target.join("var/nix/db/db.sqlite");
    let c = rusqlite::Connection::open(&db).unwrap();
    let mode: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)).unwrap();
    assert_eq!(mode, "wal");
    drop(c);
    assert!(crate::support::nix::nix_seed_db_is_wal(&target));
    let (wal, _) = images(&target);
    assert_eq!(rollback.len(), 1);
    for (id, img) in &rollback {
        for k in ["store_paths", "closure_bytes", "roots_complete"] {
            assert_eq!(img[k], wal[id][k], "{k}");
        }
        assert!(img["store_paths"].as_u64().unwrap() > 0);
    }
    assert!(crate::support::nix::nix_seed_db_is_wal(&target));
});

// A prune killed in the middle of retiring an image (failpoints between its steps)
// leaves an image without a marker: a pod that starts it seeds it again, and the next
// prune finishes the retirement, leftovers included.
nixtest!(
    a_prune_killed_mid_retirement_is_finished_by_the_next_or_undone_by_a_seed,
    |tmp| {
        let a = real_store(&tmp.path().join("a"), "v1", false);
        let b = real_store(&tmp.path().join("b"), "v2", false);
        for point in ["prune-unmarked", "prune-roots-renamed", "prune-unrooted"] {
            let target = tmp.path().join(point).join("nix");
            std::fs::create_dir_all(&target).unwrap();
            Seed::image(&a, &target).ok();
            let id_a = newest_id(&target);
            Seed::image(&b, &target).ok();
            let o = nix_seed()
                .args(["prune", "--image", &id_a, "--target"])
                .arg(&target)
                .env("NIX_SEED_FAILPOINT", point)
                .output()
                .unwrap();
            assert_eq!(o.status.code(), None, "{point}: not killed:\n{}", text(&o));
            assert!(!marker(&target, &id_a).exists(), "{point}");
            let (listed, _) = images(&target);
            assert_eq!(listed[&id_a]["roots_complete"], false, "{point}");

            // A pod starting it again seeds it again: complete, nothing copied.
            // (`keep`: the profile stays on b's generation, so a is not in use and can be retired.)
            let o = Seed::image(&a, &target)
                .args(["--log-format", "json", "--profiles", "keep"])
                .output();
            assert_ok(&o);
            let report: Value = serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
            assert_eq!(report["copied"], 0, "{point}: {}", text(&o));
            let (listed, _) = images(&target);
            assert_eq!(listed[&id_a]["roots_complete"], true, "{point}");

            // Killed again, then finished by the next prune.
            let o = nix_seed()
                .args(["prune", "--image", &id_a, "--target"])
                .arg(&target)
                .env("NIX_SEED_FAILPOINT", point)
                .output()
                .unwrap();
            assert_eq!(o.status.code(), None, "{point}: not killed:\n{}", text(&o));
            let (_, retired) = prune(&target, &["--image", &id_a]);
            assert_eq!(retired, [id_a.clone()].into(), "{point}");
            let (listed, _) = images(&target);
            assert_eq!(listed.keys().count(), 1, "{point}: {listed:?}");
            assert_no_temp_roots(&target);
        }
    }
);

/// The Nix database's lock held (as Nix with `use-sqlite-wal = false` holds it: the
/// directory `db.sqlite.lock`): `images` and `prune` give up after `--lock-timeout` with
/// exit 3 naming it, as `seed` does, and prune changes nothing.
#[test]
fn a_held_database_lock_is_a_lock_timeout_for_images_and_prune() {
    use crate::support::fixture::{self, Spec};
    let tmp = support::scratch();
    let fx = fixture::build(
        &tmp.path().join("src"),
        &Spec {
            paths: 10,
            ..Spec::default()
        },
    );
    let target = tmp.path().join("t");
    std::fs::create_dir(&target).unwrap();
    Seed::new(&fx.root, &target).ok();
    let dot = target.join("var/nix/db/db.sqlite.lock");
    std::fs::create_dir(&dot).unwrap();
    let before = snapshot(&target);
    for (cmd, outcome) in [
        (&["images"][..], "nothing was listed"),
        (&["prune", "--keep-last", "1"], "nothing was changed"),
    ] {
        let t0 = std::time::Instant::now();
        let mut all = cmd.to_vec();
        all.extend(["--lock-timeout", "1s"]);
        let o = run(&all, &target);
        assert_code(&o, 3);
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(10),
            "{cmd:?} took {:?}",
            t0.elapsed()
        );
        let last = stderr(&o).lines().last().unwrap_or("").to_string();
        assert!(
            last.contains(&dot.canonicalize().unwrap().display().to_string())
                && last.contains("--lock-timeout")
                && last.contains(outcome),
            "{cmd:?}:\n{}",
            text(&o)
        );
    }
    assert_unchanged(&before, &snapshot(&target), |p| p != b"var/nix/db" && p != b".nix-seed");
    std::fs::remove_dir(&dot).unwrap();
    assert_ok(&run(&["images"], &target));
}

/// `images` names each image as a person knows it, beside its id: the `--name` given at
/// seed time, its source directory and what its default profile points to (text and
/// JSON); a record written before these were kept still shows the source its marker names.
#[test]
fn images_are_named_by_name_source_and_profile() {
    let tmp = support::scratch();
    let fx = crate::support::fixture::build(
        &tmp.path().join("src"),
        &crate::support::fixture::Spec {
            paths: 8,
            ..Default::default()
        },
    );
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let o = crate::support::cmd::Seed::new(&fx.root, &dst)
        .env("NIX_SEED_NAME", "web-v1")
        .output();
    assert_ok(&o);
    let root = fx.root.canonicalize().unwrap().display().to_string();
    let top = std::fs::read_link(fx.root.join("var/nix/profiles/default-1-link")).unwrap();
    let profile = top
        .file_name()
        .unwrap()
        .to_str()
        .unwrap()
        .split_once('-')
        .unwrap()
        .1
        .to_string();
    let id = newest_id(&dst);
    let (by_id, _) = images(&dst);
    let img = &by_id[&id];
    assert_eq!(img["name"], "web-v1", "{img}");
    assert_eq!(img["source"], root.as_str(), "{img}");
    assert_eq!(img["profile"], profile.as_str(), "{img}");
    let o = run(&["images"], &dst);
    assert_ok(&o);
    let want = format!("{id} (name web-v1, source {root}, profile {profile}): first seeded");
    assert!(stdout(&o).contains(&want), "{want} not in:\n{}", text(&o));

    // A record from before: no label; the marker still says where the image came from.
    let rec = dst.join(".nix-seed/records").join(&id);
    let mut v: Value = serde_json::from_str(&std::fs::read_to_string(&rec).unwrap()).unwrap();
    assert!(v.as_object_mut().unwrap().remove("label").is_some());
    std::fs::write(&rec, v.to_string()).unwrap();
    let (by_id, _) = images(&dst);
    assert_eq!(by_id[&id]["source"], root.as_str());
    assert!(by_id[&id]["name"].is_null());
}
