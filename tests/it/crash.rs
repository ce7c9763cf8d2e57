//! The README's crash promise, at every step boundary: a seeder killed (SIGKILL, as by
//! `kill -9` or a lost node) anywhere leaves nothing that hides the damage. The next run
//! repairs, `status` agrees with real Nix at every moment, and a run that says "nothing to
//! do" is telling the truth. Failpoints (`NIX_SEED_FAILPOINT`, debug builds) put the kill
//! exactly at each boundary instead of hoping a sleep lands there.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use crate::support;
use crate::support::cmd::{assert_code, assert_ok, status, stderr, stdout, text, Seed};
use crate::support::nix::{in_pod, real_store, valid_paths};

/// Every step boundary of `seed`, in order (see src/seed/mod.rs). `generation-added` (a
/// profile's new generation made, not yet switched to) is reached only by an upgrade.
const POINTS: &[&str] = &[
    "locked",
    "nix-locks",
    "planned",
    "unmarked",
    "space-checked",
    "published",
    "copied",
    "computed",
    "verified",
    "var-seeded",
    "registered",
    "rooted",
    "generation-added",
    "profiles-followed",
    "marked",
];

/// Real Nix's verdict: the image paths that are not valid in the target, and those a
/// garbage collection would delete.
fn nix_problems(target: &Path, image: &Path) -> Vec<String> {
    let paths = valid_paths(&image.join("nix"));
    let mut bad = Vec::new();
    for p in &paths {
        let o = in_pod(target, &format!("nix-store --check-validity {p}"));
        if !o.status.success() {
            bad.push(format!("invalid: {p}"));
        }
    }
    let o = in_pod(target, "nix-store --gc --print-dead");
    assert!(o.status.success(), "{}", text(&o));
    let dead: BTreeSet<String> = String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect();
    bad.extend(paths.iter().filter(|p| dead.contains(*p)).map(|p| format!("dead: {p}")));
    bad
}

fn cp_a(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    if to.exists() {
        support::make_writable(to);
        std::fs::remove_dir_all(to).unwrap();
    }
    assert!(Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap()
        .success());
}

/// Delete one image path the way a collection does after the image's root was retired:
/// remove nix-seed's roots for the image, pick an image path the collector now calls
/// dead, and `nix-store --delete` it with real Nix (store path and row both go).
fn collect_one_path(target: &Path, image: &Path) -> String {
    let roots = target.join("var/nix/gcroots/nix-seed");
    for e in std::fs::read_dir(&roots).unwrap() {
        std::fs::remove_dir_all(e.unwrap().path()).unwrap();
    }
    let o = in_pod(target, "nix-store --gc --print-dead");
    assert!(o.status.success(), "{}", text(&o));
    let dead: BTreeSet<String> = String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect();
    // Output paths first: Nix may keep a dead-listed .drv alive (keep-derivations).
    let mut candidates: Vec<String> = valid_paths(&image.join("nix"))
        .into_iter()
        .filter(|p| dead.contains(p))
        .collect();
    candidates.sort_by_key(|p| p.ends_with(".drv"));
    let victim = candidates
        .into_iter()
        .find(|p| in_pod(target, &format!("nix-store --delete {p}")).status.success())
        .expect("nix-store --delete removes some image path once its roots are gone");
    let name = victim.rsplit('/').next().unwrap();
    assert!(!target.join("store").join(name).exists());
    victim
}

/// After the kill: `status` and real Nix agree. Then a plain rerun repairs; `status` says
/// seeded with exit 0, real Nix finds every image path valid and rooted, and one more run
/// has nothing to do.
fn check_after_kill(image: &Path, target: &Path, point: &str) -> Result<(), String> {
    let st = status(&image.join("nix"), target);
    let nix_ok = target.join("var/nix/db/db.sqlite").exists() && nix_problems(target, image).is_empty();
    if st.status.success() && !nix_ok {
        return Err(format!(
            "{point}: status says seeded (exit 0) while real Nix disagrees:\n{}",
            text(&st)
        ));
    }
    let again = Seed::image(image, target).output();
    if !again.status.success() {
        return Err(format!("{point}: the rerun failed:\n{}", text(&again)));
    }
    let bad = nix_problems(target, image);
    if !bad.is_empty() {
        return Err(format!(
            "{point}: after the rerun (exit 0), real Nix: {bad:?}\n{}",
            text(&again)
        ));
    }
    let st = status(&image.join("nix"), target);
    if !st.status.success() || !stdout(&st).contains(": seeded") {
        return Err(format!("{point}: status after the rerun:\n{}", text(&st)));
    }
    let third = Seed::image(image, target).output();
    if !third.status.success() || !stdout(&third).contains("nothing to do") {
        return Err(format!("{point}: a third run is not a no-op:\n{}", text(&third)));
    }
    Ok(())
}

fn killed(o: &std::process::Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    o.status.signal() == Some(9)
}

// A path collected after its root was retired, then a re-seed killed at each step
// boundary (the bug this guards: killed between publishing and registering, every later
// run said "nothing to do" and the path stayed invalid).
nixtest!(a_reseed_killed_at_any_step_is_repaired_by_the_next_run, |tmp| {
    let image = real_store(&tmp.path().join("v1"), "v1", false);
    let base = tmp.path().join("base/nix");
    std::fs::create_dir_all(&base).unwrap();
    Seed::image(&image, &base).ok();
    collect_one_path(&base, &image);
    kill_at_every_point(&image, points(false), |target| cp_a(&base, target), |_| Ok(()));
});

/// The step boundaries a seed of an image reaches: `generation-added` only in an upgrade.
fn points(upgrade: bool) -> Vec<&'static str> {
    POINTS
        .iter()
        .copied()
        .filter(|p| upgrade || *p != "generation-added")
        .collect()
}

// An upgrade (v2 onto a disk holding v1) killed at each step boundary, the new profile
// generation's included: the rerun repairs, and the profile follows v2 with one
// generation each.
nixtest!(an_upgrade_killed_at_any_step_is_repaired_by_the_next_run, |tmp| {
    use crate::support::profiles::{current, env, generations, PROFILE};
    let v1 = real_store(&tmp.path().join("v1"), "v1", false);
    let image = real_store(&tmp.path().join("v2"), "v2", false);
    let base = tmp.path().join("base/nix");
    std::fs::create_dir_all(&base).unwrap();
    Seed::image(&v1, &base).ok();
    let want = vec![(1, env(&v1.join("nix"))), (2, env(&image.join("nix")))];
    kill_at_every_point(
        &image,
        points(true),
        |target| cp_a(&base, target),
        |target| {
            let (cur, gens) = (current(target), generations(target, PROFILE));
            if cur != want[1].1 || gens != want {
                return Err(format!("the profile after the rerun: {cur}, generations {gens:?}"));
            }
            Ok(())
        },
    );
});

// A first seed into an empty target killed at each step boundary.
nixtest!(a_first_seed_killed_at_any_step_is_repaired_by_the_next_run, |tmp| {
    let image = real_store(&tmp.path().join("v1"), "v1", false);
    kill_at_every_point(
        &image,
        points(false),
        |target| std::fs::create_dir_all(target).unwrap(),
        |_| Ok(()),
    );
});

/// For each step boundary of `points`: a target made by `prepare`, a seed killed there,
/// then [`check_after_kill`] and `after`; fails with every failpoint that went wrong.
fn kill_at_every_point(
    image: &Path,
    points: Vec<&str>,
    prepare: impl Fn(&Path),
    after: impl Fn(&Path) -> Result<(), String>,
) {
    let scratch = support::scratch();
    let mut failures = Vec::new();
    for point in &points {
        let target = scratch.path().join(format!("t-{point}/nix"));
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        prepare(&target);
        let o = Seed::image(image, &target).failpoint(point).output();
        assert!(killed(&o), "failpoint {point} was not reached:\n{}", text(&o));
        if let Err(e) = check_after_kill(image, &target, point).and_then(|()| after(&target)) {
            failures.push(format!("{point}: {e}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} failpoints:\n{}",
        failures.len(),
        points.len(),
        failures.join("\n")
    );
}

// `seed --recheck` finds what a marker hides: a registration deleted by hand (the path
// still on disk), and a root link removed. `status` names the command.
nixtest!(recheck_repairs_drift_that_the_marker_hides, |tmp| {
    let image = real_store(&tmp.path().join("v1"), "v1", false);
    let target = tmp.path().join("t/nix");
    std::fs::create_dir_all(&target).unwrap();
    Seed::image(&image, &target).ok();
    // Drift: one top path's row deleted (its store path stays) and its root removed.
    let roots = std::fs::read_dir(target.join("var/nix/gcroots/nix-seed"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let root = std::fs::read_dir(&roots).unwrap().next().unwrap().unwrap().path();
    let victim = std::fs::read_link(&root).unwrap().to_string_lossy().into_owned();
    std::fs::remove_file(&root).unwrap();
    {
        let db = rusqlite::Connection::open(target.join("var/nix/db/db.sqlite")).unwrap();
        db.execute("PRAGMA foreign_keys = ON", []).unwrap();
        let n = db.execute("DELETE FROM ValidPaths WHERE path = ?1", [&victim]).unwrap();
        assert_eq!(n, 1);
    }
    let st = status(&image.join("nix"), &target);
    assert_code(&st, 1);
    assert!(stdout(&st).contains("not seeded"), "{}", text(&st));
    assert!(
        format!("{}{}", stdout(&st), stderr(&st)).contains("seed --recheck"),
        "{}",
        text(&st)
    );
    // The marker hides it from a plain seed.
    let plain = Seed::image(&image, &target).output();
    assert_ok(&plain);
    assert!(stdout(&plain).contains("nothing to do"), "{}", text(&plain));
    let o = Seed::image(&image, &target).args(["--recheck"]).output();
    assert_ok(&o);
    assert!(stdout(&o).contains("1 registered"), "{}", text(&o));
    assert!(root.symlink_metadata().is_ok(), "the root is back");
    assert!(nix_problems(&target, &image).is_empty());
    assert_ok(&status(&image.join("nix"), &target));
    // NIX_SEED_RECHECK is the same flag; with no drift it changes nothing.
    let o = Seed::image(&image, &target).env("NIX_SEED_RECHECK", "1").output();
    assert_ok(&o);
    assert!(!stdout(&o).contains("registered"), "{}", text(&o));
});

// A corrupt image (content that does not hash to its own database): `--verify` fails
// and removes the bad copy, and so does every retry; nothing corrupt is ever registered,
// with or without `--verify` on the retry.
nixtest!(a_corrupt_image_fails_every_retry_and_is_never_registered, |tmp| {
    let image = real_store(&tmp.path().join("v1"), "v1", false);
    // Corrupt one file of one store path of the image.
    let store = image.join("nix/store");
    let victim = valid_paths(&image.join("nix"))
        .into_iter()
        .find(|p| {
            std::path::Path::new(p)
                .file_name()
                .is_some_and(|n| store.join(n).is_file())
        })
        .expect("a single-file store path");
    let name = victim.rsplit('/').next().unwrap().to_string();
    let f = store.join(&name);
    let mode = std::fs::metadata(&f).unwrap().permissions();
    support::make_writable(&f);
    std::fs::write(&f, b"corrupted\n").unwrap();
    std::fs::set_permissions(&f, mode).unwrap();

    let target = tmp.path().join("t/nix");
    std::fs::create_dir_all(&target).unwrap();
    // Twice with --verify (an init container retries on its own), then without it but
    // with the corrupt copy planted unregistered in the target (as `cp -a` would leave it):
    // a repair hashes what it registers.
    for (round, args) in [&["--verify"][..], &["--verify"][..], &[][..]].iter().enumerate() {
        if args.is_empty() {
            assert!(Command::new("cp")
                .arg("-a")
                .arg(&f)
                .arg(target.join("store"))
                .status()
                .unwrap()
                .success());
        }
        let o = Seed::image(&image, &target).args(*args).output();
        assert_code(&o, 1);
        assert!(stderr(&o).contains(&name), "round {round}: {}", text(&o));
        let registered = if target.join("var/nix/db/db.sqlite").exists() {
            valid_paths(&target)
        } else {
            vec![]
        };
        assert!(
            !registered.contains(&victim),
            "round {round}: the corrupt path is registered\n{}",
            text(&o)
        );
        assert!(
            !target.join("store").join(&name).exists(),
            "round {round}: the bad copy must be removed\n{}",
            text(&o)
        );
        assert_code(&status(&image.join("nix"), &target), 1);
    }
});
