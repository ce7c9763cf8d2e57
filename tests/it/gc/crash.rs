//! `nix-seed gc` killed (SIGKILL at a failpoint) at each step boundary: gc-locked,
//! gc-roots-found, gc-invalidated, gc-renamed, gc-deleted, gc-links. Right after the kill
//! real Nix finds the store consistent (no path registered but missing, no reference to a
//! missing path, `--verify --check-contents` clean), and no store entry under its real
//! name is half deleted (each is as it was before, or gone). A rerun then finishes: no
//! `.nix-seed-*` leftovers, and the same store, database and `.links` as a run that was
//! never interrupted.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use super::collect::scene;
use super::{assert_consistent, cp_a, leftovers, store_names, valid, Gc};
use crate::support::cmd::text;
use crate::support::pods::pod_config;

/// What a finished collection leaves: store entries, valid paths, `.links` entries.
#[derive(Debug, PartialEq, Eq)]
struct End {
    names: BTreeSet<String>,
    valid: BTreeSet<String>,
    links: BTreeSet<String>,
}

fn end(nix: &Path) -> End {
    let links = std::fs::read_dir(nix.join("store/.links"))
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    End {
        names: store_names(nix),
        valid: valid(nix),
        links,
    }
}

/// Store entries under their real names that differ from the template's (`diff -r`):
/// "Only in <template>" (deleted whole) and the gc's own `.nix-seed-*` entries are fine.
fn half_deleted(template: &Path, nix: &Path) -> Vec<String> {
    let (a, b) = (template.join("store"), nix.join("store"));
    let o = Command::new("diff")
        .args(["-rq", "--no-dereference", "-x", ".links", "-x", ".nix-seed-*"])
        .arg(&a)
        .arg(&b)
        .output()
        .unwrap();
    let whole_gone = format!("Only in {}: ", a.display());
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter(|l| !l.starts_with(&whole_gone))
        .map(str::to_string)
        .collect()
}

fn killed_at(t: &Path, point: &str) {
    let s = scene(t, &pod_config());
    let template = t.join("template/nix");
    cp_a(s.disk.nix(), &template);

    // The reference: an uninterrupted run on a copy.
    let reference = t.join("reference/nix");
    cp_a(&template, &reference);
    let r = Gc::new(&reference).args(["-v", "--min-age", "0"]).ok();
    assert!(!super::deleted(&r).is_empty(), "the scene has garbage:\n{}", text(&r));
    let want = end(&reference);

    let killed = Gc::new(s.disk.nix())
        .args(["-v", "--min-age", "0"])
        .failpoint(&format!("{point}=kill"))
        .output();
    assert_eq!(
        killed.status.code(),
        None,
        "killed at the failpoint {point} (else it was never reached):\n{}",
        text(&killed)
    );
    let bad = half_deleted(&template, s.disk.nix());
    assert!(
        bad.is_empty(),
        "killed at {point}: entries changed under their real names: {bad:#?}"
    );
    assert_consistent(&s.disk, t, false);
    if matches!(point, "gc-locked" | "gc-roots-found") {
        assert_eq!(
            end(s.disk.nix()),
            end(&template),
            "killed at {point}: nothing deleted yet"
        );
    }

    let again = Gc::new(s.disk.nix()).args(["-v", "--min-age", "0"]).ok();
    assert!(
        leftovers(s.disk.nix()).is_empty(),
        "after the rerun: {:?}\n{}",
        leftovers(s.disk.nix()),
        text(&again)
    );
    assert_eq!(
        end(s.disk.nix()),
        want,
        "killed at {point} and rerun: not the end state of an uninterrupted run\n{}",
        text(&again)
    );
    assert_consistent(&s.disk, t, true);
    let lonely = super::collect::lonely_links(s.disk.nix());
    assert!(
        lonely.is_empty(),
        "killed at {point} and rerun: .links entries nothing else links: {lonely:?}"
    );
}

nixtest!(killed_at_gc_locked_then_rerun, |t| { killed_at(t, "gc-locked") });
nixtest!(killed_at_gc_roots_found_then_rerun, |t| {
    killed_at(t, "gc-roots-found")
});
nixtest!(killed_at_gc_invalidated_then_rerun, |t| {
    killed_at(t, "gc-invalidated")
});
nixtest!(killed_at_gc_renamed_then_rerun, |t| { killed_at(t, "gc-renamed") });
nixtest!(killed_at_gc_deleted_then_rerun, |t| { killed_at(t, "gc-deleted") });
nixtest!(killed_at_gc_links_then_rerun, |t| { killed_at(t, "gc-links") });

// SIGTERM (Kubernetes stopping the CronJob's pod) while more than one batch is to be
// deleted: the gc stops at the next batch boundary, exits 143, leaves no leftover and a
// consistent store; a rerun deletes the rest.
nixtest!(terminated_mid_deletion_exits_143_consistent_and_a_rerun_finishes, |t| {
    let disk = crate::support::pods::Disk::new(&t.join("disk"));
    let dir = t.join("files");
    let files: Vec<String> = (0..300)
        .map(|i| {
            super::file(&dir, &format!("m{i:03}"), &format!("{i}\n"))
                .display()
                .to_string()
        })
        .collect();
    let out = disk.pod("p").ok(&format!("exec nix-store --add {}", files.join(" ")));
    let all: BTreeSet<String> = out.lines().map(str::to_string).collect();
    let log = t.join("gc");
    let gc = Gc::new(disk.nix())
        .args(["-v", "--min-age", "0"])
        .failpoint("gc-deleted=sleep5")
        .spawn(&log);
    crate::support::wait_for(60, "the gc deleting", || {
        std::fs::read_to_string(log.with_extension("err")).is_ok_and(|e| e.contains("gc-deleted reached"))
    });
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(gc.id() as i32, libc::SIGTERM) };
    let o = super::finish(gc, &log);
    assert_eq!(o.status.code(), Some(143), "{}", text(&o));
    let first = super::deleted(&o);
    assert!(
        !first.is_empty() && first.len() < all.len(),
        "stopped part way:\n{}",
        text(&o)
    );
    assert!(leftovers(disk.nix()).is_empty(), "{:?}", leftovers(disk.nix()));
    assert_consistent(&disk, t, false);
    let again = Gc::new(disk.nix()).args(["-v", "--min-age", "0"]).ok();
    let mut both = first.clone();
    both.extend(super::deleted(&again));
    assert_eq!(both, all, "the two runs deleted all the garbage once");
    assert_consistent(&disk, t, true);
});

// A seed killed after copying (its copies in the store, unregistered, maybe under
// nix-seed's temporary names), then a gc with --min-age 0: it deletes the killed seed's
// leftovers and copies (garbage: nothing registers or roots them), leaves a consistent
// store, and the seed's rerun then brings the image in whole.
nixtest!(a_gc_after_a_killed_seed_cleans_up_and_the_seed_rerun_is_whole, |t| {
    use crate::support::cmd::Seed;
    use crate::support::nix::{assert_nix_accepts, real_store};
    let v1 = real_store(&t.join("v1"), "v1", false);
    let v2 = real_store(&t.join("v2"), "v2", false);
    let disk = crate::support::pods::Disk::new(&t.join("disk"));
    Seed::image(&v1, disk.nix()).ok();
    let killed = Seed::image(&v2, disk.nix()).failpoint("copied=kill").output();
    assert_eq!(killed.status.code(), None, "killed at copied:\n{}", text(&killed));
    let registered = valid(disk.nix());
    let unregistered: BTreeSet<String> = store_names(disk.nix())
        .into_iter()
        .map(|n| format!("/nix/store/{n}"))
        .filter(|p| !registered.contains(p))
        .collect();
    assert!(!unregistered.is_empty(), "the killed seed left its copies");
    let gc = Gc::new(disk.nix()).args(["-v", "--min-age", "0"]).ok();
    assert!(unregistered.is_subset(&super::deleted(&gc)), "{}", text(&gc));
    assert!(leftovers(disk.nix()).is_empty(), "{:?}", leftovers(disk.nix()));
    assert_consistent(&disk, t, true);
    assert_nix_accepts(disk.nix(), &v1.join("nix"));
    Seed::image(&v2, disk.nix()).ok();
    assert_nix_accepts(disk.nix(), &v2.join("nix"));
});

// A pod swaps symlinks in while the gc deletes (the gc stopped right after renaming its
// batch away): a directory inside a renamed path, and a renamed path itself, replaced by
// symlinks to a directory outside the disk. The gc removes the links, never follows them.
nixtest!(symlinks_swapped_in_during_the_deletion_are_not_followed, |t| {
    let disk = crate::support::pods::Disk::new(&t.join("disk"));
    let src = t.join("src");
    for d in ["one/sub", "two/sub"] {
        std::fs::create_dir_all(src.join(d)).unwrap();
        std::fs::write(src.join(d).join("f"), d).unwrap();
    }
    let out = disk.pod("p").ok(&format!(
        "exec nix-store --add {} {}",
        src.join("one").display(),
        src.join("two").display()
    ));
    assert_eq!(out.lines().count(), 2);
    let victim = t.join("victim");
    std::fs::create_dir_all(victim.join("deep")).unwrap();
    std::fs::write(victim.join("deep/file"), "outside the disk\n").unwrap();
    std::fs::write(victim.join("file"), "outside the disk\n").unwrap();
    let before = crate::support::compare::snapshot(&victim);

    let log = t.join("gc");
    let gc = Gc::new(disk.nix())
        .args(["-v", "--min-age", "0"])
        .failpoint("gc-renamed=stop")
        .spawn(&log);
    crate::support::wait_stopped(gc.id());
    let store = disk.nix().join("store");
    let renamed: Vec<std::path::PathBuf> = std::fs::read_dir(&store)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with(".nix-seed-"))
        .collect();
    assert_eq!(renamed.len(), 2, "both paths renamed away: {renamed:?}");
    crate::support::make_writable(&store);
    for (k, r) in renamed.iter().enumerate() {
        if k == 0 {
            std::fs::remove_dir_all(r.join("sub")).unwrap();
            std::os::unix::fs::symlink(&victim, r.join("sub")).unwrap();
        } else {
            std::fs::remove_dir_all(r).unwrap();
            std::os::unix::fs::symlink(&victim, r).unwrap();
        }
    }
    // SAFETY: a signal to our own child.
    unsafe { libc::kill(gc.id() as i32, libc::SIGCONT) };
    let o = super::finish(gc, &log);
    let after = crate::support::compare::snapshot(&victim);
    crate::support::compare::assert_unchanged(&before, &after, |_| true);
    assert_eq!(
        before.entries.keys().collect::<Vec<_>>(),
        after.entries.keys().collect::<Vec<_>>(),
        "nothing outside the disk deleted:\n{}",
        text(&o)
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(leftovers(disk.nix()).is_empty(), "{:?}", leftovers(disk.nix()));
});
