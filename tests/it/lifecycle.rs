//! Issue #12 end to end, with real Nix as the oracle: three image versions seeded in turn
//! under `--profiles follow`, the profile following each (or staying on a user's
//! generation), `nix-seed images` agreeing with `nix path-info`, then `prune --keep-last 1`
//! and a real `nix-store --gc` deleting exactly the retired images' paths that nothing else
//! roots, while the kept image stays valid, rooted and passes `--verify --check-contents`.
//!
//! The expected collection is computed without nix-seed: from the images' own databases
//! (what each image holds) and the roots real Nix finds in the disk besides nix-seed's.
//! [`flow`] takes the disk as seen by the seeder, by `images`/`prune` and by the pods, so
//! that `netfs.rs` runs the same flow on GlusterFS through two mounts.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::support;
use crate::support::cmd::{assert_ok, stderr, text, Seed};
use crate::support::fixture::set_times_nofollow;
use crate::support::images::{collect_garbage, images, in_gc_pod, marker, now, prune};
use crate::support::nix::{assert_contents_verify, in_pod, nix_available, valid_paths};
use crate::support::profiles::{current, env, generations, image_chain, pod_ok, ALICE, PROFILE};

/// One disk, as each party sees it (the same directory through different mounts on a
/// network filesystem).
pub struct Disk<'a> {
    /// Where `nix-seed seed` writes it.
    pub seed_at: &'a Path,
    /// Where `nix-seed images` and `prune` read and change it.
    pub manage_at: &'a Path,
    /// What the pods' Nix mounts at /nix.
    pub nix_at: &'a Path,
}

/// The image ids in the disk's `.nix-seed/images`.
fn marked(at: &Path) -> BTreeSet<String> {
    std::fs::read_dir(at.join(".nix-seed/images"))
        .map(|d| d.map(|e| e.unwrap().file_name().into_string().unwrap()).collect())
        .unwrap_or_default()
}

/// Real Nix's view of an image in the disk: the closure of its root links
/// (`nix path-info -r -s`: each path with its NAR size; roots at a `.drv` with
/// `--derivation`, or they would stand for the derivation's outputs).
fn nix_path_info(disk: &Disk, id: &str) -> BTreeMap<String, u64> {
    let dir = disk.nix_at.join("var/nix/gcroots/nix-seed").join(id);
    let roots: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            std::fs::read_link(e.unwrap().path())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let (drvs, outs): (Vec<String>, Vec<String>) = roots.into_iter().partition(|r| r.ends_with(".drv"));
    let mut info = BTreeMap::new();
    for (flag, roots) in [("--derivation", drvs), ("", outs)] {
        if roots.is_empty() {
            continue;
        }
        let out = pod_ok(disk.nix_at, &format!("nix path-info -r -s {flag} {}", roots.join(" ")));
        for l in out.lines() {
            let mut w = l.split_whitespace();
            let (p, n) = (w.next().unwrap(), w.next().unwrap());
            info.insert(p.to_string(), n.parse().unwrap_or_else(|_| panic!("{l}")));
        }
    }
    info
}

/// Every store path some root other than nix-seed's reaches, as real Nix finds the roots
/// (`--print-roots` in a pod of its own pid namespace: no runtime roots of this machine).
fn reached_by_other_roots(disk: &Disk) -> BTreeSet<String> {
    let o = in_gc_pod(disk.nix_at, "nix-store --gc --print-roots");
    assert!(o.status.success(), "{}", text(&o));
    let roots: Vec<String> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .filter_map(|l| l.split_once(" -> "))
        .filter(|(link, _)| !link.starts_with("/nix/var/nix/gcroots/nix-seed/"))
        .map(|(_, p)| p.to_string())
        .collect();
    assert!(!roots.is_empty(), "{}", text(&o));
    pod_ok(disk.nix_at, &format!("nix-store -q --requisites {}", roots.join(" ")))
        .lines()
        .map(str::to_string)
        .collect()
}

/// Seed `images` in turn through `disk.seed_at`; with `user_change`, a user sets the
/// default profile to v1's user environment (`nix-env --set` in a pod) before v3. Then
/// `images`, `prune --keep-last 1` and a real collection, each checked against real Nix.
pub fn flow(images_: &[PathBuf; 3], disk: &Disk, scratch: &Path, user_change: bool) {
    let e: Vec<String> = images_.iter().map(|v| env(v)).collect();
    let mut ids = Vec::new();
    for (i, v) in images_.iter().enumerate() {
        if user_change && i == 2 {
            pod_ok(
                disk.nix_at,
                &format!("nix-env -p /nix/var/nix/profiles/default --set {}", e[0]),
            );
            assert_eq!(generations(disk.nix_at, PROFILE).last().unwrap(), &(3, e[0].clone()));
        }
        let before = marked(disk.manage_at);
        let o = Seed::new(v, disk.seed_at).output();
        assert_ok(&o);
        // Another mount may show the new marker a moment later.
        support::wait_for(10, "the new marker through the managing mount", || {
            marked(disk.manage_at).len() > before.len()
        });
        let new: Vec<String> = marked(disk.manage_at).difference(&before).cloned().collect();
        assert_eq!(new.len(), 1, "v{}: {new:?}", i + 1);
        ids.push(new[0].clone());
        if user_change && i == 2 {
            assert!(
                stderr(&o).contains("added generation 4 (image's); not switched"),
                "{}",
                text(&o)
            );
            assert_eq!(current(disk.nix_at), e[0], "the user's generation stays current");
        } else {
            assert_eq!(current(disk.nix_at), e[i], "v{}: the profile follows", i + 1);
        }
        let want: Vec<(u64, String)> = (0..=i).map(|k| (k as u64 + 1, e[k].clone())).collect();
        assert_eq!(
            generations(disk.nix_at, ALICE),
            want,
            "per-user profile after v{}",
            i + 1
        );
    }
    let mut want_default: Vec<(u64, String)> = (0..3).map(|k| (k as u64 + 1, e[k].clone())).collect();
    if user_change {
        want_default.insert(2, (3, e[0].clone()));
        want_default[3].0 = 4;
    }
    assert_eq!(generations(disk.nix_at, PROFILE), want_default);

    // What each image holds, from its own database: nix-seed roots all of it.
    let held: Vec<BTreeSet<String>> = images_.iter().map(|v| valid_paths(v).into_iter().collect()).collect();
    let (listed, total) = images(disk.manage_at);
    assert_eq!(listed.len(), 3, "{listed:?}");
    assert_eq!(total["images"], 3);
    for (i, id) in ids.iter().enumerate() {
        let nix = nix_path_info(disk, id);
        let paths: BTreeSet<String> = nix.keys().cloned().collect();
        assert_eq!(
            paths,
            held[i],
            "v{}: Nix's closure of its roots is not the image's paths",
            i + 1
        );
        let img = &listed[id];
        assert_eq!(
            img["store_paths"].as_u64().unwrap() as usize,
            nix.len(),
            "v{}: {img}",
            i + 1
        );
        assert_eq!(
            img["closure_bytes"].as_u64().unwrap(),
            nix.values().sum::<u64>(),
            "v{}: {img}",
            i + 1
        );
        assert_eq!(img["roots_complete"], true, "{img}");
    }

    // v3 most recently seen, then v2, then v1 (seeds within one second tie otherwise).
    set_times_nofollow(&marker(disk.manage_at, &ids[0]), now() - 7200);
    set_times_nofollow(&marker(disk.manage_at, &ids[1]), now() - 3600);
    let (dry_freeable, dry_retired) = prune(disk.manage_at, &["--keep-last", "1", "--dry-run"]);
    let (freeable, retired) = prune(disk.manage_at, &["--keep-last", "1"]);
    assert_eq!(retired, [ids[0].clone(), ids[1].clone()].into());
    assert_eq!((&dry_freeable, &dry_retired), (&freeable, &retired));
    let (listed, _) = images(disk.manage_at);
    assert_eq!(listed.keys().collect::<Vec<_>>(), vec![&ids[2]]);
    for id in &ids[..2] {
        let roots = disk.nix_at.join("var/nix/gcroots/nix-seed").join(id);
        support::wait_for(10, "the retired roots gone through the pods' mount", || !roots.exists());
    }
    // Their generations go, the current one and a user's stay.
    let want_default = if user_change {
        vec![(3, e[0].clone()), (4, e[2].clone())]
    } else {
        vec![(3, e[2].clone())]
    };
    assert_eq!(generations(disk.nix_at, PROFILE), want_default);
    assert_eq!(generations(disk.nix_at, ALICE), vec![(3, e[2].clone())]);

    // Expected: what v1 or v2 held that neither v3 nor any other root keeps.
    let others = reached_by_other_roots(disk);
    let expected: BTreeSet<String> = held[0]
        .union(&held[1])
        .filter(|p| !held[2].contains(*p) && !others.contains(*p))
        .cloned()
        .collect();
    assert!(expected.contains(&e[1]), "v2's user environment is not expected to go");
    assert_eq!(expected.contains(&e[0]), !user_change, "v1's user environment");
    let deleted = collect_garbage(disk.nix_at);
    eprintln!(
        "images hold {}, {}, {} paths; {} reached by other roots; the collection deleted {}",
        held[0].len(),
        held[1].len(),
        held[2].len(),
        others.len(),
        deleted.len()
    );
    assert_eq!(deleted, expected, "a real collection deleted other paths than expected");
    assert_eq!(
        deleted, freeable,
        "a real collection deleted other paths than prune said"
    );

    // The kept image: valid, rooted, contents intact.
    let kept: Vec<&str> = held[2].iter().map(String::as_str).collect();
    pod_ok(disk.nix_at, &format!("nix-store --check-validity {}", kept.join(" ")));
    let o = in_gc_pod(disk.nix_at, "nix-store --gc --print-live");
    assert!(o.status.success(), "{}", text(&o));
    let live: BTreeSet<String> = String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect();
    let unrooted: Vec<&&str> = kept.iter().filter(|p| !live.contains(**p)).collect();
    assert!(unrooted.is_empty(), "v3's paths no root reaches: {unrooted:?}");
    assert_eq!(
        current(disk.nix_at),
        if user_change { e[0].clone() } else { e[2].clone() }
    );
    assert_contents_verify(disk.nix_at, &scratch.join("verify-copy"));
    let o = in_pod(disk.nix_at, "/nix/var/nix/profiles/default/bin/app");
    assert!(o.status.success(), "{}", text(&o));
}

fn local(test: &str, user_change: bool) {
    if !nix_available(test) {
        return;
    }
    let t0 = std::time::Instant::now();
    let tmp = support::scratch();
    let images_ = image_chain(&tmp.path().join("images"), true);
    eprintln!("{test}: images built in {:.1}s", t0.elapsed().as_secs_f64());
    let target = tmp.path().join("t/nix");
    std::fs::create_dir_all(&target).unwrap();
    let disk = Disk {
        seed_at: &target,
        manage_at: &target,
        nix_at: &target,
    };
    flow(&images_, &disk, tmp.path(), user_change);
    eprintln!("{test}: {:.1}s", t0.elapsed().as_secs_f64());
}

/// v1, v2, v3 seeded in turn; the profile follows; prune then a real collection frees
/// exactly v1's and v2's paths that v3 and the other roots do not hold.
#[test]
fn three_versions_follow_then_prune_and_a_real_gc_free_exactly_the_retired() {
    local("three_versions_follow_then_prune", false);
}

/// A user set the profile to v1's environment before v3: it stays there, v3's generation
/// is added; prune retires v1 and v2 (the user's generation is not nix-seed's and stays,
/// keeping v1's environment alive for Nix) and removes only their own generations.
#[test]
fn a_users_generation_stays_through_upgrade_prune_and_gc() {
    local("a_users_generation_stays_through_upgrade_prune_and_gc", true);
}
