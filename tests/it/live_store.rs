//! Seeding a target that real Nix uses at the same time (issue #10, section A): garbage
//! collections (`nix-store --gc`, run as a pod runs it and slowed down with strace so one
//! holds `gc.lock` for seconds) and a pod with Nix's default settings (WAL).
//!
//! What must hold after every run: each image path valid to real Nix with the image's
//! references, GC-rooted, contents as registered (`support::nix::assert_nix_accepts`), and an honest
//! exit code: a seed that exits 0 with image paths missing or invalid always fails; under
//! a storm, a non-zero exit passes only if a rerun without the storm then makes it hold.
//!
//! `NIX_SEED_STORM_ROUNDS` (default [`ROUNDS`]) sets the rounds of the storm test,
//! `NIX_SEED_STORM_SEED` replays its random choices.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::support;
use crate::support::cmd::{stderr, text, Seed};
use crate::support::nix::{in_pod, nix_seed_db_is_wal, real_store};
use crate::support::storm::{
    fetch_into, in_pod_wal, nix_verdict, store_path, wait_stopped, Gc, GcStorm, Rng, Slow, StormStats,
};

/// Rounds of the storm test (env `NIX_SEED_STORM_ROUNDS`): each round is one variant
/// (upgrade, fetched paths, kill and rerun, first seed, first seed after a kill), so 5
/// covers each once.
const ROUNDS: usize = 5;

/// What the tests need besides root and real Nix: strace slows a garbage collection down,
/// unshare runs it as a pod.
const TOOLS: &[&str] = &["strace", "unshare"];

/// Images v1 and v2 built by real Nix (`use-sqlite-wal = false`, as in the pods), and a
/// directory for targets.
struct Images {
    tmp: support::Scratch,
    v1: PathBuf,
    v2: PathBuf,
}

impl Images {
    fn build() -> Images {
        let tmp = support::scratch();
        let v1 = real_store(&tmp.path().join("v1"), "v1", false).join("nix");
        let v2 = real_store(&tmp.path().join("v2"), "v2", false).join("nix");
        Images { tmp, v1, v2 }
    }

    /// A new empty target `nix` directory.
    fn empty_target(&self, name: &str) -> PathBuf {
        let t = self.tmp.path().join(name).join("nix");
        std::fs::create_dir_all(&t).unwrap();
        t
    }

    /// A new target seeded with v1.
    fn v1_target(&self, name: &str) -> PathBuf {
        let t = self.empty_target(name);
        Seed::new(&self.v1, &t).ok();
        t
    }
}

/// The exit code is honest: 0 only with everything Nix needs in place.
#[track_caller]
fn assert_seeded(out: &Output, target: &Path, images: &[&Path], what: &str) {
    let verdicts: Vec<String> = images
        .iter()
        .filter_map(|i| nix_verdict(target, i).err().map(|e| format!("{}: {e}", i.display())))
        .collect();
    assert!(
        out.status.success() && verdicts.is_empty(),
        "{what}: {}\nNix's verdict on the target: {}\n{}",
        if out.status.success() {
            "nix-seed exited 0 but the image is not all valid and rooted"
        } else {
            "nix-seed failed"
        },
        if verdicts.is_empty() {
            "accepted".to_string()
        } else {
            verdicts.join("\n")
        },
        text(out)
    );
}

// Bug 1, references: a pod fetched part of v2 (the closure of seed-extra-2.0: valid,
// rooted by nothing) into the target; a garbage collection holds `gc.lock` when the
// upgrade to v2 starts. nix-seed must wait for it and then seed v2 whole; it must not
// count as present the paths the GC deletes while it waits.
nixtest!(
    upgrade_while_a_gc_holds_gc_lock_and_deletes_paths_a_pod_fetched,
    needs = TOOLS,
    |_| {
        let im = Images::build();
        let target = im.v1_target("t");
        let extra = store_path(&im.v2, "-seed-extra-2.0");
        fetch_into(&target, &im.v2, std::slice::from_ref(&extra), im.tmp.path());

        let mut gc = Gc::start(&target, Slow::DEFAULT);
        assert!(gc.wait_holding(Duration::from_secs(30)), "the GC never held gc.lock");
        let out = Seed::new(&im.v2, &target).args(["-v"]).output();
        let gc_out = gc.finish();
        assert!(
            stderr(&gc_out).contains(&format!("deleting '{extra}'")),
            "the GC deleted the fetched path:\n{}",
            text(&gc_out)
        );
        assert_seeded(&out, &target, &[&im.v1, &im.v2], "upgrade to v2 while a GC ran");
    }
);

// Bug 1, closure tops: the same, but what the pod fetched is a top of v2's closure
// (seed-flat-v2.txt, referred to by nothing, rooted by nothing in the image's var/): a
// seed that counted it as present and exits 0 without it has lost it for good.
nixtest!(
    upgrade_while_a_gc_holds_gc_lock_and_deletes_a_fetched_closure_top,
    needs = TOOLS,
    |_| {
        let im = Images::build();
        let target = im.v1_target("t");
        let top = store_path(&im.v2, "-seed-flat-v2.txt");
        fetch_into(&target, &im.v2, std::slice::from_ref(&top), im.tmp.path());

        let mut gc = Gc::start(&target, Slow::DEFAULT);
        assert!(gc.wait_holding(Duration::from_secs(30)), "the GC never held gc.lock");
        let out = Seed::new(&im.v2, &target).args(["-v"]).output();
        let gc_out = gc.finish();
        assert!(
            stderr(&gc_out).contains(&format!("deleting '{top}'")),
            "the GC deleted the fetched path:\n{}",
            text(&gc_out)
        );
        assert_seeded(&out, &target, &[&im.v1, &im.v2], "upgrade to v2 while a GC ran");
    }
);

// Bug 1, a killed seeder's copies: a seeder of v2 was killed after copying, before
// registering; its copies are in the target, unregistered. The rerun starts while a GC
// holds `gc.lock`; the GC deletes those copies (they are not valid paths).
nixtest!(
    rerun_after_a_kill_while_a_gc_deletes_the_unregistered_copies,
    needs = TOOLS,
    |_| {
        let im = Images::build();
        let target = im.v1_target("t");
        let mut killed = Seed::new(&im.v2, &target).failpoint("copied=kill").spawn();
        let st = killed.wait().unwrap();
        assert_eq!(st.code(), None, "killed at the failpoint copied (NIX_SEED_FAILPOINT)");
        let app = store_path(&im.v2, "-seed-app-2.0");
        let app_dir = target.join("store").join(app.rsplit('/').next().unwrap());
        assert!(app_dir.exists(), "the killed seeder copied v2's paths");

        let mut gc = Gc::start(&target, Slow::DEFAULT);
        assert!(gc.wait_holding(Duration::from_secs(30)), "the GC never held gc.lock");
        let out = Seed::new(&im.v2, &target).args(["-v"]).output();
        let gc_out = gc.finish();
        assert!(
            stderr(&gc_out).contains(&format!("deleting '{app}'")),
            "the GC deleted the unregistered copy:\n{}",
            text(&gc_out)
        );
        assert_seeded(&out, &target, &[&im.v1, &im.v2], "rerun of v2 while a GC ran");
    }
);

// Bug 2: the first seed into an empty target, while a pod's Nix (a garbage collection)
// creates `var/nix` just after nix-seed looked for it: nix-seed took no `gc.lock`, and the
// GC deletes what it copied before it is registered. The seeder is stopped right after
// copying; the GC runs then (or waits for nix-seed's lock, once nix-seed holds one).
nixtest!(
    first_seed_into_an_empty_target_while_a_pod_starts_a_gc,
    needs = TOOLS,
    |_| {
        let im = Images::build();
        let target = im.empty_target("t");
        let mut child = Seed::new(&im.v1, &target).failpoint("copied=stop").spawn();
        assert!(
            wait_stopped(&mut child, Duration::from_secs(60)),
            "the seeder did not reach the failpoint copied"
        );
        let mut gc = Gc::start(&target, Slow::NONE);
        // Unfixed, the GC runs at once; with nix-seed holding gc.lock it waits: give it time.
        let gc_ran = gc.wait_exit(Duration::from_secs(5));
        support::cont(child.id());
        let out = child.wait_with_output().unwrap();
        let gc_out = gc.finish();
        eprintln!(
            "the GC {} the seeder went on; it said:\n{}",
            if gc_ran {
                "finished before"
            } else {
                "was still waiting when"
            },
            text(&gc_out)
        );
        assert_seeded(&out, &target, &[&im.v1], "first seed while a GC ran");
    }
);

// Bug 3: GC roots are written once per image. A top of v1 (seed-garbage-v1: dead in the
// image, so rooted only by nix-seed's roots) had no root in the image's root directory
// (missing at the first rooting, as a GC or an older nix-seed leaves it), and a GC
// deleted it. The next seed of v1 copies and registers it again; it must root it too.
nixtest!(
    a_top_missing_at_the_first_rooting_gets_its_root_on_the_next_seed,
    needs = TOOLS,
    |_| {
        let im = Images::build();
        let target = im.v1_target("t");
        let top = store_path(&im.v1, "-seed-garbage-v1");
        let name = top.rsplit('/').next().unwrap();
        let roots: Vec<PathBuf> = std::fs::read_dir(target.join("var/nix/gcroots/nix-seed"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(roots.len(), 1, "one root directory: {roots:?}");
        std::fs::remove_file(roots[0].join(name)).unwrap();
        let o = in_pod(&target, "nix-store --gc");
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            stderr(&o).contains(&format!("deleting '{top}'")),
            "the GC deleted the unrooted top:\n{}",
            text(&o)
        );

        let out = Seed::new(&im.v1, &target).args(["-v"]).output();
        assert_seeded(&out, &target, &[&im.v1], "reseed of v1 after its top was collected");
        assert!(
            roots[0].join(name).symlink_metadata().is_ok(),
            "no GC root {} for {top}",
            roots[0].join(name).display()
        );
    }
);

// Bug 4: a pod running Nix with its default settings (`use-sqlite-wal = true`) opens the
// target's database while v2 is being copied, and converts it to WAL. Registering must
// still work (the database is as Nix left it, not as it was when nix-seed opened it).
nixtest!(
    a_pod_with_default_settings_flips_the_database_to_wal_during_the_copy,
    needs = TOOLS,
    |_| {
        let im = Images::build();
        let target = im.v1_target("t");
        assert!(!nix_seed_db_is_wal(&target));
        let mut child = Seed::new(&im.v2, &target).failpoint("copied=stop").spawn();
        assert!(
            wait_stopped(&mut child, Duration::from_secs(60)),
            "the seeder did not reach the failpoint copied"
        );
        let libc_ = store_path(&im.v1, "-seed-libc-1.0");
        let o = in_pod_wal(&target, &format!("nix-store --check-validity {libc_}"), true);
        support::cont(child.id());
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            nix_seed_db_is_wal(&target),
            "Nix with use-sqlite-wal = true converted the database"
        );
        let out = child.wait_with_output().unwrap();
        let ok = out.status.success();
        // Checked by Nix with the database's journal mode (support::nix::in_pod).
        let verdicts: Vec<String> = [&im.v1, &im.v2]
            .iter()
            .filter_map(|i| nix_verdict(&target, i).err())
            .collect();
        assert!(
            ok && verdicts.is_empty(),
            "seed of v2 across the WAL flip: exit {:?}; Nix: {verdicts:?}\n{}",
            out.status.code(),
            text(&out)
        );
    }
);

#[derive(Debug, Clone, Copy)]
enum Variant {
    /// v1 seeded, then v2 under the storm.
    Upgrade,
    /// v1 seeded, a pod fetched some of v2 (closure tops; every other time also the
    /// closure of seed-extra-2.0, which v2's top refers to), then v2 under the storm.
    Fetched,
    /// v2 under the storm, SIGKILLed at a random moment; then rerun without the storm.
    Kill,
    /// v1 into an empty target under the storm (the first collection creates var/nix).
    First,
    /// A first seed of v1 into an empty target was killed after copying (store paths
    /// there, unregistered; no var/ yet); rerun under the storm.
    FirstAfterKill,
}

const VARIANTS: [Variant; 5] = [
    Variant::Upgrade,
    Variant::Fetched,
    Variant::Kill,
    Variant::First,
    Variant::FirstAfterKill,
];

// Seeds under a storm of slowed-down garbage collections, one variant per round (see
// [`Variant`]), at random moments of the storm's cycle.
nixtest!(
    seeding_under_a_gc_storm_leaves_every_image_path_valid_and_rooted,
    needs = TOOLS,
    |_| {
        let rounds: usize = std::env::var("NIX_SEED_STORM_ROUNDS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(ROUNDS);
        let seed_value: u64 = std::env::var("NIX_SEED_STORM_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| Rng::new(0).next() >> 1);
        let mut rng = Rng::new(seed_value);
        let im = Images::build();
        let template = im.v1_target("template");
        let tops = [
            store_path(&im.v2, "-seed-flat-v2.txt"),
            store_path(&im.v2, "-seed-garbage-v2"),
            store_path(&im.v2, "-seed-added-v2.txt"),
        ];
        let extra = store_path(&im.v2, "-seed-extra-2.0");
        let slow = Slow {
            flock_us: 700_000,
            unlink_us: 50_000,
        };
        let fast_lock = Slow {
            flock_us: 0,
            unlink_us: 50_000,
        };
        let t0 = Instant::now();
        let mut failures = Vec::new();
        let mut collections = 0;
        for round in 0..rounds {
            let variant = VARIANTS[round % VARIANTS.len()];
            let dir = im.tmp.path().join(format!("round-{round}"));
            let target = dir.join("nix");
            match variant {
                Variant::First => std::fs::create_dir_all(&target).unwrap(),
                Variant::FirstAfterKill => {
                    std::fs::create_dir_all(&target).unwrap();
                    let st = Seed::new(&im.v1, &target)
                        .failpoint("copied=kill")
                        .spawn()
                        .wait()
                        .unwrap();
                    assert_eq!(st.code(), None, "killed at the failpoint copied");
                    assert!(
                        !target.join("var/nix/db/db.sqlite").exists(),
                        "killed before the database was created"
                    );
                }
                _ => {
                    std::fs::create_dir_all(&dir).unwrap();
                    let ok = Command::new("cp")
                        .arg("-a")
                        .arg(&template)
                        .arg(&target)
                        .status()
                        .unwrap();
                    assert!(ok.success());
                }
            }
            if let Variant::Fetched = variant {
                let mut fetched = tops.to_vec();
                if (round / VARIANTS.len()) % 2 == 1 {
                    fetched.push(extra.clone());
                }
                fetch_into(&target, &im.v2, &fetched, im.tmp.path());
            }
            let first = matches!(variant, Variant::First | Variant::FirstAfterKill);
            let image = if first { &im.v1 } else { &im.v2 };
            let images: Vec<&Path> = if first { vec![&im.v1] } else { vec![&im.v1, &im.v2] };

            // Into an empty target, collections that are not held back at `flock`: they create
            // var/nix and then read the store at once (held back, they would come after a
            // first seed's few hundred milliseconds every time).
            let slow = if first { fast_lock } else { slow };
            let storm = GcStorm::start(&target, slow, Duration::from_millis(300));
            let delay = match variant {
                // Around the first GC's start-up: it creates var/nix some 80 ms after it is
                // started, takes gc.lock some 100 ms later (2 idle cores).
                Variant::First | Variant::FirstAfterKill => rng.below(150),
                // While the first GC holds gc.lock and has not read the store yet.
                _ => {
                    assert!(storm.wait_holding(Duration::from_secs(30)), "no GC held gc.lock");
                    rng.below(500)
                }
            };
            std::thread::sleep(Duration::from_millis(delay));
            let (out, killed_at) = match variant {
                Variant::Kill => {
                    let child = Seed::new(image, &target).spawn();
                    let at = rng.below(2500);
                    std::thread::sleep(Duration::from_millis(at));
                    // SAFETY: a signal to our own child.
                    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
                    (child.wait_with_output().unwrap(), Some(at))
                }
                _ => (Seed::new(image, &target).output(), None),
            };
            // A collection that starts after the seed is done must find nothing of it to delete.
            // (After a kill, a collection can block on the db.sqlite.lock the seeder left until
            // the next seeder removes it: it is killed after 30 s.)
            let stats: StormStats = storm.stop_within(true, Duration::from_secs(30));
            collections += stats.collections;
            for f in &stats.failures {
                eprintln!("round {round}: a collection failed:\n{f}");
            }

            let what = format!(
            "round {round} ({variant:?}, started {delay} ms in{}; {} collections deleted {} paths, {} failed, {} killed as stuck)",
            killed_at.map_or(String::new(), |k| format!(", killed {k} ms later")),
            stats.collections,
            stats.deleted.len(),
            stats.failures.len(),
            stats.killed
        );
            let verdict = |t: &Path| -> Vec<String> {
                images
                    .iter()
                    .filter_map(|i| nix_verdict(t, i).err().map(|e| format!("{}: {e}", i.display())))
                    .collect()
            };
            let problem = if out.status.success() {
                let v = verdict(&target);
                (!v.is_empty()).then(|| {
                    format!(
                        "exited 0, but Nix rejects the target:\n{}\n{}",
                        v.join("\n"),
                        text(&out)
                    )
                })
            } else {
                // Killed or failed: a rerun without the storm must make it hold.
                let rerun = Seed::new(image, &target).output();
                let v = verdict(&target);
                (!rerun.status.success() || !v.is_empty()).then(|| {
                format!(
                    "first run: exit {:?}; the rerun without the storm: exit {:?}; Nix: {}\n--- first run\n{}\n--- rerun\n{}",
                    out.status.code(),
                    rerun.status.code(),
                    if v.is_empty() { "accepted".into() } else { v.join("\n") },
                    text(&out),
                    text(&rerun)
                )
            })
            };
            match problem {
                Some(p) => {
                    eprintln!("FAILED {what}: {p}");
                    failures.push(format!("{what}: {p}"));
                }
                None => eprintln!("ok {what}: exit {:?}", out.status.code()),
            }
            support::make_writable(&dir);
            let _ = std::fs::remove_dir_all(&dir);
        }
        eprintln!(
        "gc storm: {rounds} rounds, {collections} collections, {} failed rounds, {:.1}s (NIX_SEED_STORM_SEED={seed_value})",
        failures.len(),
        t0.elapsed().as_secs_f64()
    );
        assert!(
            failures.is_empty(),
            "{} of {rounds} rounds failed (NIX_SEED_STORM_SEED={seed_value}):\n{}",
            failures.len(),
            failures.join("\n\n")
        );
    }
);
