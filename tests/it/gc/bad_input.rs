//! Bad input to `nix-seed gc`: exit 2, and nothing on the disk changed. Each case is run
//! against a disk holding old garbage, so a gc that went ahead would show.

use std::collections::BTreeSet;
use std::path::Path;

use super::{age_all, all, file, last_path, valid, Gc};
use crate::support::cmd::{assert_code, text};
use crate::support::compare::{assert_unchanged, snapshot};
use crate::support::pods::Disk;

/// A disk with one old, unrooted path (garbage for any gc that runs).
fn disk_with_garbage(t: &Path) -> (Disk, String) {
    let disk = Disk::new(&t.join("disk"));
    let f = file(&t.join("files"), "junk", "junk\n");
    let junk = last_path(&disk.pod("p").ok(&format!("exec nix-store --add {}", f.display())));
    age_all(disk.nix(), 30);
    (disk, junk)
}

#[track_caller]
fn refused_and_unchanged(dir: &Path, gc: Gc, says: &str) {
    let before = snapshot(dir);
    let o = gc.output();
    assert_code(&o, 2);
    assert!(
        all(&o).to_lowercase().contains(says),
        "the error says {says:?}:\n{}",
        text(&o)
    );
    let after = snapshot(dir);
    assert_unchanged(&before, &after, |_| true);
    let names = |s: &crate::support::compare::Snapshot| -> BTreeSet<String> {
        s.entries
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect()
    };
    let (b, a) = (names(&before), names(&after));
    assert_eq!(b, a, "no entry added or removed:\n{}", text(&o));
}

// A --target that is not a Nix store: an empty directory, a regular file, a missing
// path, a directory with store/ but no var/nix/db. Nothing is created in it, and the
// error names it.
roottest!(a_target_that_is_not_a_nix_store_is_refused, |t| {
    let empty = t.join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let regular = file(t, "regular", "not a store\n");
    let half = t.join("half");
    std::fs::create_dir_all(half.join("store/0000000000000000000000000000000a-x")).unwrap();
    for target in [empty, regular, t.join("missing"), half.clone()] {
        let name = target.file_name().unwrap().to_string_lossy().to_string();
        refused_and_unchanged(t, Gc::new(&target).args(["--min-age", "0"]), &name);
    }
    assert!(half.join("store/0000000000000000000000000000000a-x").exists());
});

// var/nix/gcroots, profiles, temproots or gc-socket a symlink: roots would be read from
// elsewhere, or not at all (or the socket bound elsewhere). Refused, naming it, nothing
// created; the garbage is still there.
nixtest!(a_symlinked_gcroots_or_profiles_is_refused_and_nothing_changes, |t| {
    let (disk, junk) = disk_with_garbage(t);
    for dir in ["gcroots", "profiles", "temproots", "gc-socket"] {
        let real = disk.nix().join("var/nix").join(dir);
        std::fs::create_dir_all(&real).unwrap();
        let moved = t.join(format!("elsewhere-{dir}"));
        std::fs::rename(&real, &moved).unwrap();
        std::os::unix::fs::symlink(&moved, &real).unwrap();
        refused_and_unchanged(disk.nix(), Gc::new(disk.nix()).args(["--min-age", "0"]), dir);
        refused_and_unchanged(
            disk.nix(),
            Gc::new(disk.nix()).args(["--min-age", "0", "--dry-run"]),
            dir,
        );
        assert!(valid(disk.nix()).contains(&junk));
        std::fs::remove_file(&real).unwrap();
        std::fs::rename(&moved, &real).unwrap();
    }
});

// Garbage durations and sizes, on the command line and in the environment.
nixtest!(a_garbage_min_age_or_max_freed_is_refused_and_nothing_changes, |t| {
    let (disk, junk) = disk_with_garbage(t);
    refused_and_unchanged(disk.nix(), Gc::new(disk.nix()).args(["--min-age", ""]), "min-age");
    for bad in ["ten days", "10x", "-1d", "1.5.2d", "d", "99999999999999999999d"] {
        let arg = format!("--min-age={bad}");
        refused_and_unchanged(disk.nix(), Gc::new(disk.nix()).args([&arg]), "min-age");
        refused_and_unchanged(disk.nix(), Gc::new(disk.nix()).env("NIX_SEED_MIN_AGE", bad), "min-age");
    }
    for bad in ["", "12Q", "-5M", "lots"] {
        refused_and_unchanged(
            disk.nix(),
            Gc::new(disk.nix()).args(["--min-age", "0", &format!("--max-freed={bad}")]),
            "max-freed",
        );
    }
    refused_and_unchanged(
        disk.nix(),
        Gc::new(disk.nix()).args(["--min-age", "0", "--lock-timeout", "soon"]),
        "lock-timeout",
    );
    assert!(valid(disk.nix()).contains(&junk));
    // The same disk with good input: the garbage goes (the cases above were refused, not
    // no-ops).
    let o = Gc::new(disk.nix()).args(["--min-age", "0"]).ok();
    assert!(!valid(disk.nix()).contains(&junk), "{}", text(&o));
});

// A disk mounted read-only (a bind mount remounted ro, in a namespace of the test's): a
// run and a --dry-run (it needs gc.lock too) are both refused, exit 2, saying so; nothing
// changed. (At gc 4fe709c the refusal suggested --dry-run, which failed the same way; the
// implementation then chose to stop suggesting it.)
nixtest!(a_read_only_disk_is_refused_by_a_run_and_a_dry_run, |t| {
    let (disk, junk) = disk_with_garbage(t);
    let ro = t.join("ro");
    std::fs::create_dir_all(&ro).unwrap();
    let script = format!(
        "mount --bind {d} {ro} && mount -o remount,bind,ro {ro} || exit 99
{bin} gc --target {ro} --min-age 0; echo \"exit=$?\"
{bin} gc --target {ro} --min-age 0 --dry-run; echo \"dry-exit=$?\"",
        d = disk.nix().display(),
        ro = ro.display(),
        bin = crate::support::bin().display()
    );
    let before = snapshot(disk.nix());
    let o = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env_remove("NIX_SEED_TERMINATION_LOG")
        .output()
        .unwrap();
    let out = all(&o);
    assert!(out.contains("exit=2") && out.contains("dry-exit=2"), "{out}");
    assert_eq!(out.matches("read-only").count(), 2, "both say why:\n{out}");
    assert!(
        !out.contains("pass --dry-run"),
        "no suggestion that cannot work:\n{out}"
    );
    assert_unchanged(&before, &snapshot(disk.nix()), |_| true);
    assert!(valid(disk.nix()).contains(&junk));
});

// A pod may plant symlinks on the shared disk, and gc runs as root: store, store/.links,
// var, var/nix/db made symlinks to a directory outside the disk that holds copies of the
// store's entries and files of link count 1 (what a .links cleanup deletes). gc refuses
// or fails, and never deletes or changes anything outside the disk.
nixtest!(symlinks_planted_on_the_disk_never_lead_gc_outside_it, |t| {
    for (what, planted) in [
        ("store", "store"),
        ("store/.links", "store/.links"),
        ("var", "var"),
        ("var/nix/db", "var/nix/db"),
    ] {
        let t = t.join(what.replace('/', "-"));
        let (disk, _junk) = disk_with_garbage(&t);
        let victim = t.join("victim");
        std::fs::create_dir_all(&victim).unwrap();
        let st = std::process::Command::new("cp")
            .arg("-a")
            .arg(format!("{}/.", disk.nix().join("store").display()))
            .arg(&victim)
            .status()
            .unwrap();
        assert!(st.success());
        std::fs::write(victim.join("lonely-file"), "link count 1\n").unwrap();
        let real = disk.nix().join(planted);
        let moved = t.join("moved");
        std::fs::rename(&real, &moved).unwrap();
        std::os::unix::fs::symlink(&victim, &real).unwrap();
        let before = snapshot(&victim);
        let o = Gc::new(disk.nix()).args(["-v", "--min-age", "0"]).output();
        assert!(
            !o.status.success(),
            "{what} a symlink: refused or failed:\n{}",
            text(&o)
        );
        let after = snapshot(&victim);
        assert_unchanged(&before, &after, |_| true);
        assert_eq!(
            before.entries.keys().collect::<Vec<_>>(),
            after.entries.keys().collect::<Vec<_>>(),
            "{what} a symlink: nothing outside the disk changed:\n{}",
            text(&o)
        );
    }
});
