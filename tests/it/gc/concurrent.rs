//! `nix-seed gc` beside the others who write the disk: a seed of another image (they take
//! the same lock: each waits for the other, and both succeed), pods' Nix adding paths and
//! building while the gc holds `gc.lock` (their Nix talks to the gc socket nix-seed serves:
//! it neither fails nor waits for the gc to end, and what it uses is never deleted), and a
//! second gc (it waits, or exits 3 after --lock-timeout).

use std::path::Path;
use std::time::{Duration, Instant};

use super::{age, all, deleted, file, finish, last_path, registration_time, valid, Gc};
use crate::support;
use crate::support::cmd::{assert_code, text, Seed};
use crate::support::nix::{assert_nix_accepts, real_store};
use crate::support::pods::{Disk, GatedBuild};

fn still_running(child: &mut std::process::Child, secs: u64) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(secs) {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A disk seeded with v1 plus old garbage (an unrooted `nix-store --add`); v2 built.
fn seeded(t: &Path) -> (Disk, std::path::PathBuf, std::path::PathBuf, String) {
    let v1 = real_store(&t.join("v1"), "v1", false);
    let v2 = real_store(&t.join("v2"), "v2", false);
    let disk = Disk::new(&t.join("disk"));
    Seed::image(&v1, disk.nix()).ok();
    let f = file(&t.join("files"), "junk", "junk\n");
    let junk = last_path(&disk.pod("p").ok(&format!("exec nix-store --add {}", f.display())));
    age(disk.nix(), &[junk.clone()].into(), 30);
    (disk, v1, v2, junk)
}

// A seed of v2 stopped right after copying (its copies unregistered) holds the seed lock:
// a gc with --min-age 0 waits for it (or exits 3 with a short --lock-timeout) and never
// deletes the seed's copies; both then succeed and v1 and v2 are whole to real Nix.
nixtest!(gc_waits_for_a_running_seed_and_the_seeded_image_is_whole, |t| {
    let (disk, v1, v2, junk) = seeded(t);
    let seed = Seed::image(&v2, disk.nix()).failpoint("copied=stop").spawn();
    support::wait_stopped(seed.id());

    let quick = Gc::new(disk.nix())
        .args(["--min-age", "0", "--lock-timeout", "1s"])
        .output();
    assert_code(&quick, 3);
    assert!(all(&quick).contains("lock"), "exit 3 names the lock:\n{}", text(&quick));

    let log = t.join("gc");
    let mut gc = Gc::new(disk.nix()).args(["-v", "--min-age", "0"]).spawn(&log);
    assert!(still_running(&mut gc, 3), "the gc waits for the seed");
    support::cont(seed.id());
    let s = seed.wait_with_output().unwrap();
    assert!(s.status.success(), "{}", text(&s));
    let g = finish(gc, &log);
    assert!(g.status.success(), "{}", text(&g));
    assert!(deleted(&g).contains(&junk), "the gc ran after the seed:\n{}", text(&g));
    assert_nix_accepts(disk.nix(), &v2.join("nix"));
    assert_nix_accepts(disk.nix(), &v1.join("nix"));
});

// A gc stopped after finding its roots holds the lock: a seed of v2 waits for it, and
// finishes once the gc has; v2 is whole to real Nix, the old garbage is gone.
nixtest!(a_seed_waits_for_a_running_gc_and_is_whole_after, |t| {
    let (disk, v1, v2, junk) = seeded(t);
    let log = t.join("gc");
    let gc = Gc::new(disk.nix())
        .args(["-v", "--min-age", "0"])
        .failpoint("gc-roots-found=stop")
        .spawn(&log);
    support::wait_stopped(gc.id());
    let mut seed = Seed::image(&v2, disk.nix()).spawn();
    assert!(still_running(&mut seed, 3), "the seed waits for the gc");
    support::cont(gc.id());
    let g = finish(gc, &log);
    assert!(g.status.success(), "{}", text(&g));
    let s = seed.wait_with_output().unwrap();
    assert!(s.status.success(), "{}", text(&s));
    assert!(!valid(disk.nix()).contains(&junk));
    assert_nix_accepts(disk.nix(), &v2.join("nix"));
    assert_nix_accepts(disk.nix(), &v1.join("nix"));
});

// While a gc (--min-age 0) holds gc.lock, between finding roots and deleting, pods' Nix
// (each PID 1): re-adds a garbage path with `nix-store --add`, re-builds an unrooted
// build (its result and input are garbage, Nix only takes temp roots), and builds
// something new. Their Nix must reach the gc socket, so they finish while the gc still
// holds the lock; nothing they use is deleted (the garbage paths keep their original
// registration: never deleted and re-added); garbage nobody touched is deleted.
nixtest!(
    pods_adding_and_building_during_a_gc_finish_and_keep_what_they_use,
    |t| {
        let disk = Disk::new(&t.join("disk"));
        let ex = t.join("exprs");
        let (reuse, fresh) = (GatedBuild::new(&ex, "reuse"), GatedBuild::new(&ex, "fresh"));
        reuse.gate.open();
        fresh.gate.open();
        let files = t.join("files");
        let (fa, fb) = (
            file(&files, "readd", "re-added\n"),
            file(&files, "untouched", "untouched\n"),
        );
        let out = disk.pod("p").ok(&format!(
            "set -e; nix-store --add {} {}; nix-build {} --no-out-link",
            fa.display(),
            fb.display(),
            reuse.expr.display()
        ));
        let lines: Vec<&str> = out.lines().collect();
        let (readd, untouched, reused) = (lines[0].to_string(), lines[1].to_string(), lines[2].to_string());
        let reused_dep = valid(disk.nix())
            .into_iter()
            .find(|p| p.ends_with("-reuse-dep"))
            .unwrap();
        super::age_all(disk.nix(), 30);
        let times: Vec<Option<i64>> = [&readd, &reused, &reused_dep]
            .iter()
            .map(|p| registration_time(disk.nix(), p))
            .collect();

        let log = t.join("gc");
        let mut gc = Gc::new(disk.nix())
            .args(["-v", "--min-age", "0"])
            .failpoint("gc-roots-found=sleep25")
            .spawn(&log);
        support::wait_for(60, "the gc at gc-roots-found", || {
            std::fs::read_to_string(log.with_extension("err")).is_ok_and(|e| e.contains("gc-roots-found reached"))
        });
        let t0 = Instant::now();
        let pods = [
            disk.pod("add").start(&format!("exec nix-store --add {}", fa.display())),
            disk.pod("rebuild")
                .start(&format!("exec nix-build {} --no-out-link", reuse.expr.display())),
            disk.pod("build")
                .start(&format!("exec nix-build {} --no-out-link", fresh.expr.display())),
        ];
        let outs: Vec<String> = pods.into_iter().map(|p| p.ok()).collect();
        let took = t0.elapsed();
        assert!(
            gc.try_wait().unwrap().is_none(),
            "the pods finished while the gc held gc.lock (through its socket), in {took:?}"
        );
        assert_eq!(last_path(&outs[0]), readd);
        assert_eq!(last_path(&outs[1]), reused);
        let built = last_path(&outs[2]);
        let g = finish(gc, &log);
        assert!(g.status.success(), "{}", text(&g));

        let v = valid(disk.nix());
        for p in [&readd, &reused, &reused_dep, &built] {
            assert!(v.contains(p) && disk.host(p).exists(), "{p} kept:\n{}", text(&g));
            assert!(!deleted(&g).contains(p), "{p} deleted:\n{}", text(&g));
        }
        let after: Vec<Option<i64>> = [&readd, &reused, &reused_dep]
            .iter()
            .map(|p| registration_time(disk.nix(), p))
            .collect();
        assert_eq!(after, times, "never deleted and registered again");
        assert!(deleted(&g).contains(&untouched), "{}", text(&g));
        super::assert_consistent(&disk, t, true);
    }
);

// A second gc while one runs: with --lock-timeout it exits 3 naming the lock, changing
// nothing (a --dry-run too: it reads nothing half-deleted); without, it waits for the
// first and then succeeds. The store is consistent.
nixtest!(a_second_gc_waits_or_times_out_with_exit_3, |t| {
    let disk = Disk::new(&t.join("disk"));
    let f = file(&t.join("files"), "junk", "junk\n");
    let junk = last_path(&disk.pod("p").ok(&format!("exec nix-store --add {}", f.display())));
    let log1 = t.join("gc1");
    let gc1 = Gc::new(disk.nix())
        .args(["-v", "--min-age", "0"])
        .failpoint("gc-locked=stop")
        .spawn(&log1);
    support::wait_stopped(gc1.id());

    let t0 = Instant::now();
    let quick = Gc::new(disk.nix())
        .args(["--min-age", "0", "--lock-timeout", "2s"])
        .output();
    assert_code(&quick, 3);
    assert!(t0.elapsed() >= Duration::from_millis(1900), "it waited --lock-timeout");
    assert!(all(&quick).contains("lock"), "{}", text(&quick));
    assert!(valid(disk.nix()).contains(&junk), "the timed-out gc deleted nothing");
    let dry = Gc::new(disk.nix())
        .args(["--dry-run", "--min-age", "0", "--lock-timeout", "1s"])
        .output();
    assert_code(&dry, 3);

    let log2 = t.join("gc2");
    let mut gc2 = Gc::new(disk.nix()).args(["-v", "--min-age", "0"]).spawn(&log2);
    assert!(still_running(&mut gc2, 3), "the second gc waits");
    support::cont(gc1.id());
    let o1 = finish(gc1, &log1);
    assert!(o1.status.success(), "{}", text(&o1));
    let o2 = finish(gc2, &log2);
    assert!(o2.status.success(), "{}", text(&o2));
    assert_eq!(
        deleted(&o1).len() + deleted(&o2).len(),
        1,
        "the junk deleted once:\n{}\n{}",
        text(&o1),
        text(&o2)
    );
    assert!(!valid(disk.nix()).contains(&junk));
    super::assert_consistent(&disk, t, true);
});

// Nix's own collector holds gc.lock (slowed by strace: 8 s before it reads the store):
// nix-seed gc never runs beside it. With --lock-timeout 1s it exits 3; without, it waits
// and runs after it; the store is consistent.
nixtest!(gc_waits_for_nixs_own_collector, needs = &["strace"], |t| {
    use crate::support::storm::{Gc as NixGc, Slow};
    let disk = Disk::new(&t.join("disk"));
    let f = file(&t.join("files"), "junk", "junk\n");
    let g = file(&t.join("files"), "more", "more junk\n");
    disk.pod("p")
        .ok(&format!("exec nix-store --add {} {}", f.display(), g.display()));
    let mut nix_gc = NixGc::start(
        disk.nix(),
        Slow {
            flock_us: 8_000_000,
            unlink_us: 0,
        },
    );
    assert!(
        nix_gc.wait_holding(Duration::from_secs(30)),
        "Nix's collector holds gc.lock"
    );
    let quick = Gc::new(disk.nix())
        .args(["--min-age", "0", "--lock-timeout", "1s"])
        .output();
    assert_code(&quick, 3);
    assert!(all(&quick).contains("gc.lock"), "names gc.lock:\n{}", text(&quick));
    let log = t.join("gc");
    let mut gc = Gc::new(disk.nix()).args(["-v", "--min-age", "0"]).spawn(&log);
    assert!(
        still_running(&mut gc, 1) && !nix_gc.exited(),
        "nix-seed gc waits while Nix's collector runs"
    );
    let nix_out = nix_gc.finish();
    let o = finish(gc, &log);
    assert!(o.status.success(), "{}", text(&o));
    assert!(all(&nix_out).contains("deleting"), "Nix's collector deleted the junk");
    super::assert_consistent(&disk, t, true);
});
