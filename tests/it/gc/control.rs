//! The first hazard of issue #20: an indirect root resolved in the collecting pod. Pod A
//! builds with `--out-link` in its private directory (its home, an emptyDir); Nix's
//! collector in pod B cannot see that link, calls the root stale, removes it, and deletes
//! A's result, its .drv and its dependency. `nix-seed gc` keeps them (young: the default
//! --min-age) and never removes the link; --dry-run names the link as an unresolved
//! indirect root.

use std::path::{Path, PathBuf};

use super::{all, deleted, kept, store_names, unresolved_roots, valid, would_delete, Gc};
use crate::support;
use crate::support::cmd::text;
use crate::support::pods::{Disk, GatedBuild};

/// Pod A's finished build: its result link lives in A's private directory.
struct Built {
    disk: Disk,
    /// A's private directory as the host sees it (the link is `home/result`).
    home: PathBuf,
    /// Where A sees it: an empty directory for everyone else.
    private: PathBuf,
    result: String,
    drv: String,
    dep: String,
    /// `var/nix/gcroots/auto/<hash>` → `<private>/result`.
    auto_link: PathBuf,
}

fn built_in_pod_a(t: &Path) -> Built {
    let disk = Disk::new(&t.join("disk"));
    let build = GatedBuild::new(&t.join("exprs"), "ctl");
    build.gate.open();
    let home = t.join("home-a");
    let private = t.join("private");
    let out = disk
        .pod("a")
        .private(&home, &private)
        .ok(&build.script(&private.join("result")));
    let result = super::last_path(&out);
    assert!(!private.join("result").exists(), "pod A's directory is private");
    assert_eq!(
        std::fs::read_link(home.join("result")).unwrap(),
        Path::new(&result),
        "pod A's result link"
    );
    let valid = valid(disk.nix());
    let one = |suffix: &str| {
        let v: Vec<&String> = valid.iter().filter(|p| p.ends_with(suffix)).collect();
        assert_eq!(v.len(), 1, "one valid path ends with {suffix}: {valid:?}");
        v[0].clone()
    };
    let drv = one("-ctl-result.drv");
    let dep = one("-ctl-dep");
    let autos: Vec<PathBuf> = std::fs::read_dir(disk.nix().join("var/nix/gcroots/auto"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(autos.len(), 1, "{autos:?}");
    assert_eq!(std::fs::read_link(&autos[0]).unwrap(), private.join("result"));
    Built {
        auto_link: autos[0].clone(),
        disk,
        home,
        private,
        result,
        drv,
        dep,
    }
}

impl Built {
    /// Pod A, again: is its result valid and readable?
    fn pod_a_uses_result(&self) -> std::process::Output {
        let r = self.private.join("result");
        self.disk.pod("a").private(&self.home, &self.private).run(&format!(
            "nix-store --check-validity \"$(readlink {r})\" && cat {r}/data && nix-store -qR {r}",
            r = r.display()
        ))
    }

    fn all_three(&self) -> [&String; 3] {
        [&self.result, &self.drv, &self.dep]
    }
}

// The control: Nix's collector in pod B removes pod A's root as stale and deletes A's
// result, its .drv and its dependency; in pod A the result is no longer valid. If this
// test fails, the scenario no longer shows the hazard and the next test proves nothing.
nixtest!(nix_gc_in_another_pod_deletes_a_pods_result, |t| {
    let b = built_in_pod_a(t);
    assert!(b.pod_a_uses_result().status.success());
    let o = b.disk.pod("b").run("exec nix-store --gc");
    assert!(o.status.success(), "{}", text(&o));
    let err = all(&o);
    assert!(err.contains("removing stale link"), "{err}");
    assert!(b.auto_link.symlink_metadata().is_err(), "Nix removed A's root link");
    let names = store_names(b.disk.nix());
    for p in b.all_three() {
        assert!(err.contains(&format!("deleting '{p}'")), "Nix deleted {p}:\n{err}");
        assert!(!names.contains(&p["/nix/store/".len()..]), "{p} is gone from the disk");
    }
    let a = b.pod_a_uses_result();
    assert!(!a.status.success(), "pod A's result is lost:\n{}", text(&a));
});

// Even Nix's read-only-looking queries, run in pod B, remove pod A's root link as stale:
// `nix-store --gc --print-dead` (and --print-roots) are not safe on a shared store either.
nixtest!(nix_gc_print_dead_in_another_pod_removes_a_pods_root_link, |t| {
    let b = built_in_pod_a(t);
    let o = b.disk.pod("b").run("exec nix-store --gc --print-dead");
    assert!(o.status.success(), "{}", text(&o));
    assert!(all(&o).contains("removing stale link"), "{}", text(&o));
    assert!(b.auto_link.symlink_metadata().is_err(), "Nix removed A's root link");
    for p in b.all_three() {
        assert!(valid(b.disk.nix()).contains(p), "--print-dead deletes nothing itself");
    }
});

// The same scenario with `nix-seed gc` run from pod C (the disk at /nix, A's directory
// invisible): A's result, .drv and dependency are kept (young), the root link stays, and
// pod A still uses its result. --dry-run first names the link as an unresolved indirect
// root and says why the result is kept.
nixtest!(nix_seed_gc_in_another_pod_keeps_a_pods_result_and_its_root_link, |t| {
    let b = built_in_pod_a(t);
    let before = store_names(b.disk.nix());
    let valid_before = valid(b.disk.nix());

    let dry = Gc::new(b.disk.nix()).args(["--dry-run"]).ok();
    let unresolved = unresolved_roots(&dry);
    assert!(
        unresolved.len() == 1
            && unresolved[0].contains(&b.auto_link.file_name().unwrap().to_string_lossy().to_string())
            && unresolved[0].contains(&b.private.join("result").display().to_string()),
        "--dry-run names the unresolved indirect root:\n{}",
        text(&dry)
    );
    let why = kept(&dry);
    for p in b.all_three() {
        assert!(
            !would_delete(&dry).contains(p),
            "--dry-run would delete {p}:\n{}",
            text(&dry)
        );
        assert!(
            why.get(p).is_some_and(|w| w.contains("young")),
            "--dry-run says {p} is kept as young:\n{}",
            text(&dry)
        );
    }
    assert_eq!(store_names(b.disk.nix()), before, "--dry-run changed the store");
    let json = Gc::new(b.disk.nix()).args(["--dry-run", "--log-format", "json"]).ok();
    let event: serde_json::Value = all(&json)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["event"] == "gc")
        .unwrap_or_else(|| panic!("a gc event:\n{}", text(&json)));
    assert_eq!(event["unresolved_indirect_roots"], 1, "{event}");
    assert_eq!(
        event["kept_young"],
        valid_before.len() as u64,
        "all kept as young: {event}"
    );
    assert_eq!(event["deleted"], 0, "{event}");

    // From pod C, as a CronJob would run it: --target /nix.
    let gc = b.disk.pod("c").run(&format!(
        "exec {} gc --target /nix --log-format text -v",
        support::bin().display()
    ));
    assert!(gc.status.success(), "{}", text(&gc));
    assert!(deleted(&gc).is_empty(), "nothing here is old:\n{}", text(&gc));
    assert_eq!(valid(b.disk.nix()), valid_before);
    assert_eq!(store_names(b.disk.nix()), before);
    assert_eq!(
        std::fs::read_link(&b.auto_link).unwrap(),
        b.private.join("result"),
        "the unresolved indirect root link was not removed"
    );
    let a = b.pod_a_uses_result();
    assert!(a.status.success(), "pod A's result is valid:\n{}", text(&a));
    assert!(String::from_utf8_lossy(&a.stdout).contains("dep-data-ctl"));
});

// The edge of the promise: an unresolved indirect root protects only through --min-age.
// With --min-age 0, run where A's directory is invisible (the host), the result and its
// closure go, but the link is still never removed. Run inside pod A, where the link's
// target exists and points into the store, the result is kept (conservative).
nixtest!(
    an_unresolved_indirect_root_protects_only_through_min_age_and_is_never_removed,
    |t| {
        let b = built_in_pod_a(t);
        let gc = b.disk.pod("a").private(&b.home, &b.private).run(&format!(
            "exec {} gc --target /nix --log-format text -v --min-age 0",
            support::bin().display()
        ));
        assert!(gc.status.success(), "{}", text(&gc));
        for p in b.all_three() {
            assert!(
                valid(b.disk.nix()).contains(p),
                "kept where the root resolves: {p}\n{}",
                text(&gc)
            );
        }

        let gc = Gc::new(b.disk.nix()).args(["-v", "--min-age", "0"]).ok();
        let del = deleted(&gc);
        assert!(del.contains(&b.result) && del.contains(&b.dep), "{}", text(&gc));
        let names = store_names(b.disk.nix());
        for p in b.all_three() {
            if del.contains(p) {
                assert!(
                    !names.contains(&p["/nix/store/".len()..]),
                    "{p} said deleted, still there"
                );
            }
        }
        assert_eq!(
            std::fs::read_link(&b.auto_link).unwrap(),
            b.private.join("result"),
            "the link is never removed, even when what it protected is gone"
        );
    }
);

// A result built long ago (registered 30 days back) that pod A still reads: its files'
// access times are after their ctimes, within --min-age. Kept as recently read, with
// what it refers to; --dry-run says so. One that nobody read since goes.
nixtest!(an_old_result_a_pod_still_reads_is_kept_as_recently_read, |t| {
    let b = built_in_pod_a(t);
    super::age(b.disk.nix(), &b.all_three().into_iter().cloned().collect(), 30);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let a = b.pod_a_uses_result();
    assert!(a.status.success(), "{}", text(&a));

    let dry = Gc::new(b.disk.nix()).args(["--dry-run"]).ok();
    assert!(
        kept(&dry).get(&b.result).is_some_and(|w| w.contains("recently read")),
        "{}",
        text(&dry)
    );
    let gc = Gc::new(b.disk.nix()).args(["-v"]).ok();
    assert!(valid(b.disk.nix()).contains(&b.result), "{}", text(&gc));
    assert!(
        valid(b.disk.nix()).contains(&b.dep),
        "its reference too:\n{}",
        text(&gc)
    );
    assert!(b.pod_a_uses_result().status.success());

    // Made old again, and not read since: deleted.
    super::age(b.disk.nix(), &[b.result.clone(), b.dep.clone()].into(), 30);
    let gc = Gc::new(b.disk.nix()).args(["-v"]).ok();
    assert!(deleted(&gc).contains(&b.result), "{}", text(&gc));
});
