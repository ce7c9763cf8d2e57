//! The second hazard of issue #20: temporary roots are named by PID, and every pod's PID
//! namespace starts at 1. Pod A's `nix-build` (PID 1) lists its input X in
//! `temproots/1` and waits; pod B's `nix-store --add` (PID 1) unlinks that file as its
//! own stale one. Nix's collector then deletes X and A's build fails; `nix-seed gc` keeps
//! X (young) and A's build finishes. And the liveness test nix-seed uses instead of PIDs:
//! a temp-roots file whose lock is held protects its paths even with `--min-age 0`; one
//! whose lock is free is stale, protects nothing, and is removed (not in --dry-run).

use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use super::{age, all, deleted, file, kept, valid, would_delete, Gc};
use crate::support::cmd::text;
use crate::support::pods::{pod_config_sandbox, Disk, GatedBuild, Pod};

struct Collided {
    disk: Disk,
    build: GatedBuild,
    a: Pod,
    /// A's input, built by A and listed only in the temp-roots file B unlinked.
    dep: String,
}

/// Pod A's build waits at its gate, its input in `temproots/1`; pod B's `nix-store --add`,
/// PID 1 too, unlinks `temproots/1` (asserted: otherwise the scenario shows nothing).
fn collided(t: &Path, tag: &str, sandbox: bool) -> Collided {
    let exprs = t.join("exprs");
    let mut disk = Disk::new(&t.join("disk"));
    if sandbox {
        disk = disk.with_config(&pod_config_sandbox(&exprs));
    }
    let build = GatedBuild::new(&exprs, tag);
    let a = disk.pod("a").start(&build.script(&t.join("a-result")));
    build.wait_started();
    let tr = disk.nix().join("var/nix/temproots/1");
    let roots = String::from_utf8(std::fs::read(&tr).expect("pod A's Nix, PID 1, has temproots/1")).unwrap();
    let dep = roots
        .split('\0')
        .find(|p| p.ends_with(&format!("-{tag}-dep")))
        .unwrap_or_else(|| panic!("A's input is a temp root: {roots:?}"))
        .to_string();
    let f = file(&t.join("files"), "b-file", "added by pod B\n");
    disk.pod("b").ok(&format!("exec nix-store --add {}", f.display()));
    assert!(
        !tr.exists(),
        "pod B's Nix (PID 1 as well) unlinked pod A's temproots/1: the collision"
    );
    Collided { disk, build, a, dep }
}

/// The build's chroot (sandbox on): `<store>/<drv>.chroot`, unregistered.
fn chroot(c: &Collided) -> Option<std::path::PathBuf> {
    std::fs::read_dir(c.disk.nix().join("store"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".drv.chroot"))
}

// The control: Nix's collector (pod C) deletes A's input; A's build then fails reading it.
nixtest!(
    nix_gc_deletes_the_input_of_a_build_whose_temp_roots_another_pod_unlinked,
    |t| {
        let c = collided(t, "tr-ctl", false);
        let gc = c.disk.pod("c").run("exec nix-store --gc");
        assert!(gc.status.success(), "{}", text(&gc));
        assert!(all(&gc).contains(&format!("deleting '{}'", c.dep)), "{}", text(&gc));
        c.build.gate.open();
        let a = c.a.wait();
        assert!(!a.status.success(), "pod A's build lost its input:\n{}", text(&a));
        assert!(all(&a).contains("No such file or directory"), "{}", text(&a));
    }
);

// The same with the sandbox on: Nix's collector also deletes A's build chroot.
nixtest!(nix_gc_deletes_the_input_and_the_chroot_of_a_sandboxed_build, |t| {
    let c = collided(t, "tr-ctl-sb", true);
    let root = chroot(&c).expect("a sandboxed build has a chroot in the store");
    let gc = c.disk.pod("c").run("exec nix-store --gc");
    assert!(gc.status.success(), "{}", text(&gc));
    assert!(all(&gc).contains(&format!("deleting '{}'", c.dep)), "{}", text(&gc));
    assert!(!root.exists(), "the chroot was deleted:\n{}", text(&gc));
    // A's builder lost its /bin with the chroot (and cannot see its gate): it never
    // finishes. The pod is killed when `c` is dropped.
});

/// nix-seed gc keeps A's input (young) and its chroot, and A's build finishes with it.
fn nix_seed_gc_keeps_the_collided_build(t: &Path, tag: &str, sandbox: bool) {
    let c = collided(t, tag, sandbox);
    let root = chroot(&c);
    assert_eq!(root.is_some(), sandbox);
    let gc = Gc::new(c.disk.nix()).args(["-v"]).ok();
    assert!(!deleted(&gc).contains(&c.dep), "{}", text(&gc));
    assert!(valid(c.disk.nix()).contains(&c.dep));
    if let Some(root) = &root {
        assert!(root.exists(), "the build's chroot is kept:\n{}", text(&gc));
    }
    c.build.gate.open();
    let out = c.a.ok();
    let result = super::last_path(&out);
    let data = std::fs::read_to_string(c.disk.host(&result).join("data")).unwrap();
    assert_eq!(data, format!("dep-data-{tag}\n"));
    assert!(valid(c.disk.nix()).contains(&result));
}

// The fix: nix-seed gc keeps A's input (young), and A's build finishes with it.
nixtest!(
    nix_seed_gc_keeps_the_input_of_a_build_whose_temp_roots_another_pod_unlinked,
    |t| {
        nix_seed_gc_keeps_the_collided_build(t, "tr-fix", false);
    }
);

// The same with the sandbox on: the chroot is kept too.
nixtest!(nix_seed_gc_keeps_the_input_and_the_chroot_of_a_sandboxed_build, |t| {
    nix_seed_gc_keeps_the_collided_build(t, "tr-fix-sb", true);
});

/// A temp-roots file made by hand, its lock held by this process while it lives.
struct HeldRoots {
    _f: std::fs::File,
}

fn hold_temp_roots(file: &Path, paths: &[&str]) -> HeldRoots {
    let body: Vec<u8> = paths.iter().flat_map(|p| p.bytes().chain([0u8])).collect();
    std::fs::write(file, body).unwrap();
    let f = std::fs::OpenOptions::new().read(true).write(true).open(file).unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    HeldRoots { _f: f }
}

/// Two old, unrooted `nix-store --add` paths on a fresh disk.
fn two_old_paths(t: &Path) -> (Disk, String, String) {
    let disk = Disk::new(&t.join("disk"));
    let f1 = file(&t.join("files"), "one", "one\n");
    let f2 = file(&t.join("files"), "two", "two\n");
    let out = disk
        .pod("p")
        .ok(&format!("exec nix-store --add {} {}", f1.display(), f2.display()));
    let paths: Vec<String> = out.lines().map(str::to_string).collect();
    assert_eq!(paths.len(), 2, "{out}");
    age(disk.nix(), &paths.iter().cloned().collect(), 30);
    (disk, paths[0].clone(), paths[1].clone())
}

// A live temp-roots file (lock held), whatever its name (not a PID here), protects its
// paths with --min-age 0, and is left in place; a path it does not list is deleted.
nixtest!(a_live_temp_roots_file_protects_an_old_path_even_with_min_age_0, |t| {
    let (disk, one, two) = two_old_paths(t);
    let dir = disk.nix().join("var/nix/temproots");
    std::fs::create_dir_all(&dir).unwrap();
    let tr = dir.join("pod-7-not-a-pid");
    let _held = hold_temp_roots(&tr, &[&one]);

    let dry = Gc::new(disk.nix()).args(["--dry-run", "--min-age", "0"]).ok();
    assert!(
        kept(&dry).get(&one).is_some_and(|w| w.contains("temporary root")),
        "{}",
        text(&dry)
    );
    assert!(would_delete(&dry).contains(&two), "{}", text(&dry));

    let gc = Gc::new(disk.nix()).args(["-v", "--min-age", "0"]).ok();
    assert!(valid(disk.nix()).contains(&one), "{}", text(&gc));
    assert!(disk.host(&one).exists());
    assert!(
        deleted(&gc).contains(&two) && !valid(disk.nix()).contains(&two),
        "{}",
        text(&gc)
    );
    assert!(tr.exists(), "a live temp-roots file is not removed");
});

// A real live Nix process: pod A's build, waiting, holds temproots/1; its input, made
// old, is kept with --min-age 0 while A runs. Once A is killed (SIGKILL: its file stays,
// its lock is free), the file is stale: --dry-run leaves it, a real run deletes the input
// and removes the file.
nixtest!(a_stale_temp_roots_file_protects_nothing_and_is_removed, |t| {
    let disk = Disk::new(&t.join("disk"));
    let build = GatedBuild::new(&t.join("exprs"), "stale");
    let a = disk.pod("a").start(&build.script(&t.join("a-result")));
    build.wait_started();
    let tr: PathBuf = disk.nix().join("var/nix/temproots/1");
    let dep = valid(disk.nix())
        .into_iter()
        .find(|p| p.ends_with("-stale-dep"))
        .expect("A built its input");
    age(disk.nix(), &[dep.clone()].into(), 30);

    let gc = Gc::new(disk.nix()).args(["-v", "--min-age", "0"]).ok();
    assert!(valid(disk.nix()).contains(&dep), "live temp root kept:\n{}", text(&gc));
    assert!(tr.exists());

    drop(a); // SIGKILL to the pod's PID 1: the file stays, nobody holds its lock.
    assert!(tr.exists(), "a killed Nix leaves its temp-roots file");
    let dry = Gc::new(disk.nix()).args(["--dry-run", "--min-age", "0"]).ok();
    assert!(would_delete(&dry).contains(&dep), "{}", text(&dry));
    assert!(tr.exists(), "--dry-run removes no temp-roots file");
    let gc = Gc::new(disk.nix()).args(["-v", "--min-age", "0"]).ok();
    assert!(
        deleted(&gc).contains(&dep) && !valid(disk.nix()).contains(&dep),
        "{}",
        text(&gc)
    );
    assert!(!tr.exists(), "the stale temp-roots file is removed");
});

// Entries of temproots/ that are not temp-roots files: a symlink to a file outside the
// disk, a FIFO, a directory. Not followed (what the link points to is untouched and
// protects nothing), not blocked on; the gc finishes.
nixtest!(odd_entries_in_temproots_are_neither_followed_nor_blocked_on, |t| {
    let (disk, one, two) = two_old_paths(t);
    let dir = disk.nix().join("var/nix/temproots");
    std::fs::create_dir_all(&dir).unwrap();
    let outside = file(t, "outside", &format!("{one}\0"));
    std::os::unix::fs::symlink(&outside, dir.join("666")).unwrap();
    assert!(std::process::Command::new("mkfifo")
        .arg(dir.join("777"))
        .status()
        .unwrap()
        .success());
    std::fs::create_dir(dir.join("888")).unwrap();
    let gc = Gc::new(disk.nix()).args(["-v", "--min-age", "0"]).output();
    assert!(gc.status.success(), "{}", text(&gc));
    let d = deleted(&gc);
    assert!(d.contains(&one) && d.contains(&two), "{}", text(&gc));
    assert_eq!(std::fs::read_to_string(&outside).unwrap(), format!("{one}\0"));
});
