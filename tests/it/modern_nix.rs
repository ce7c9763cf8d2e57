//! Pods of different Nix versions share one disk: images built by Nix 2.8 (the host's
//! Debian 12 nix-bin) and by Nix 2.26 (Debian 13's, in the trixie tree of
//! `scripts/modern-nix.sh`, entered with pivot_root) are seeded into one target, in both
//! orders, and each version checks what nix-seed wrote and what the other version wrote:
//! every image path valid, references as in the image, contents verified, a real
//! garbage collection that deletes none of the image's paths, and paths added afterwards
//! by one version valid to the other.
//!
//! The shared target's database is a rollback journal (nix-seed creates it so) and pods
//! run with `use-sqlite-wal = false`, as the README tells users on network disks; one test
//! lets the 2.26 pod use Nix's default (WAL) instead.

use std::collections::BTreeSet;
use std::path::Path;

use crate::support;
use crate::support::cmd::{assert_ok, stdout, text, Seed};
use crate::support::modern::{image_paths, Nix, BOTH};
use crate::support::nix::{db_dir_listing, nix_seed_db_is_wal};

/// Paths one pod added to the shared target.
struct Added {
    by: Nix,
    /// `nix-store --add`ed file, rooted in var/nix/gcroots.
    added: String,
    /// Output of a derivation built in the pod (refers to `added`), rooted with --add-root.
    built: String,
    /// Its .drv.
    drv: String,
    /// `nix-store --add`ed, unrooted: the next garbage collection must delete it.
    garbage: String,
}

impl Added {
    fn live(&self) -> Vec<String> {
        vec![self.added.clone(), self.built.clone(), self.drv.clone()]
    }
}

fn tag(v: Nix) -> &'static str {
    match v {
        Nix::V2_8 => "2.8",
        Nix::V2_26 => "2.26",
    }
}

/// A pod of version `v` adds a file and builds a derivation on the target (both rooted),
/// and adds one unrooted file; `round` makes the names unique.
fn add_paths(v: Nix, target: &Path, round: u32, wal: Option<bool>) -> Added {
    let t = tag(v);
    let script = r#"set -e
d=$(mktemp -d)
printf 'added by Nix TAG in round ROUND\n' > "$d/pod-added-TAG-ROUND.txt"
a=$(nix-store --add "$d/pod-added-TAG-ROUND.txt")
ln -sfn "$a" /nix/var/nix/gcroots/pod-added-TAG-ROUND
printf 'garbage by Nix TAG in round ROUND\n' > "$d/pod-garbage-TAG-ROUND.txt"
g=$(nix-store --add "$d/pod-garbage-TAG-ROUND.txt")
drv=$(nix-instantiate -E 'derivation { name = "pod-built-TAG-ROUND"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo built by Nix TAG > $out; echo ${builtins.storePath "'"$a"'"} >> $out" ]; }')
nix-store -r "$drv" --add-root /nix/var/nix/gcroots/pod-built-TAG-ROUND >/dev/null
b=$(readlink /nix/var/nix/gcroots/pod-built-TAG-ROUND)
grep -q "^$a\$" "$b"
echo "added $a"
echo "garbage $g"
echo "drv $drv"
echo "built $b"
"#
    .replace("TAG", t)
    .replace("ROUND", &round.to_string());
    let o = match wal {
        Some(w) => v.pod_wal(target, &script, w),
        None => v.pod(target, &script),
    };
    assert!(o.status.success(), "{}: adding paths failed:\n{}", v.name(), text(&o));
    let out = stdout(&o);
    let get = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k} ")))
            .unwrap_or_else(|| panic!("no `{k}` in:\n{out}"))
            .to_string()
    };
    let a = Added {
        by: v,
        added: get("added"),
        built: get("built"),
        drv: get("drv"),
        garbage: get("garbage"),
    };
    for p in [&a.added, &a.built, &a.drv, &a.garbage] {
        assert!(p.starts_with("/nix/store/"), "{}: {p}", v.name());
    }
    a
}

/// Every check the issue asks for, by version `v`, of image `image` (a Nix root) seeded
/// into `target`: every path valid, references equal to the image's (as the image's own
/// Nix, `built_by`, reports them), contents verified on a copy.
fn assert_accepts(v: Nix, target: &Path, image: &Path, built_by: Nix, scratch: &Path) {
    let paths = image_paths(image);
    v.assert_valid(
        target,
        &paths,
        &format!("the image by {} in the target", built_by.name()),
    );
    let ours = v.references(target, &paths);
    let theirs = built_by.references(image, &paths);
    for p in &paths {
        assert_eq!(
            ours[p],
            theirs[p],
            "{}: references of {p} in the target differ from the image's ({})",
            v.name(),
            built_by.name()
        );
    }
    v.assert_contents_verify(target, &scratch.join(format!("verify-{}", tag(v))));
}

/// Paths on disk under target/store.
fn on_disk(target: &Path, p: &str) -> bool {
    target
        .join("store")
        .join(p.strip_prefix("/nix/store/").unwrap())
        .symlink_metadata()
        .is_ok()
}

/// A real `nix-store --gc` by `v`: it deletes the unrooted garbage (so it did collect),
/// and none of `keep` (every image path and every rooted pod path), which both versions
/// still find valid, on disk.
fn gc_keeps(v: Nix, target: &Path, keep: &[String], garbage: &[String]) {
    for g in garbage {
        assert!(on_disk(target, g), "{g} missing before the GC");
    }
    let o = v.pod(target, "nix-store --gc");
    assert!(o.status.success(), "{}: nix-store --gc failed:\n{}", v.name(), text(&o));
    let gone: Vec<&String> = keep.iter().filter(|p| !on_disk(target, p)).collect();
    assert!(
        gone.is_empty(),
        "{}: nix-store --gc deleted {gone:?}:\n{}",
        v.name(),
        text(&o)
    );
    for g in garbage {
        assert!(
            !on_disk(target, g),
            "{}: nix-store --gc kept the unrooted {g}",
            v.name()
        );
    }
    for u in BOTH {
        u.assert_valid(target, keep, &format!("after {}'s GC", v.name()));
        for g in garbage {
            u.assert_invalid(target, g, &format!("after {}'s GC", v.name()));
        }
    }
}

/// Each version adds paths to the target and the other one sees them (valid, with the
/// built output's reference to the added file); then each version garbage-collects.
fn cross_add_and_gc(target: &Path, images: &[&Path], modern_wal: Option<bool>) {
    let mut keep: Vec<String> = images.iter().flat_map(|i| image_paths(i)).collect();
    keep.sort();
    keep.dedup();
    for (round, gc_by) in (1..).zip(BOTH) {
        let added: Vec<Added> = BOTH
            .iter()
            .map(|&v| add_paths(v, target, round, if v == Nix::V2_26 { modern_wal } else { None }))
            .collect();
        for a in &added {
            for u in BOTH {
                u.assert_valid(target, &a.live(), &format!("paths {} added", a.by.name()));
                u.assert_valid(
                    target,
                    std::slice::from_ref(&a.garbage),
                    &format!("unrooted path {} added", a.by.name()),
                );
                let refs = u.references(target, std::slice::from_ref(&a.built));
                assert_eq!(
                    refs[&a.built],
                    BTreeSet::from([a.added.clone()]),
                    "{}: references of {} built by {}",
                    u.name(),
                    a.built,
                    a.by.name()
                );
            }
            keep.extend(a.live());
        }
        let garbage: Vec<String> = added.iter().map(|a| a.garbage.clone()).collect();
        gc_keeps(gc_by, target, &keep, &garbage);
    }
}

/// `first` builds image v1, `second` image v2 (v2 shares 14 store paths with v1: the same
/// derivations give the same paths in both versions), seeded in that order into one
/// target; then both versions check both images, add paths, and collect garbage.
fn two_versions_one_target(first: Nix, second: Nix) {
    let tmp = support::scratch();
    let img1 = first.real_store(&tmp.path().join("i1"), "v1", true).join("nix");
    let img2 = second.real_store(&tmp.path().join("i2"), "v2", true).join("nix");
    let before = [db_dir_listing(&img1), db_dir_listing(&img2)];
    let target = tmp.path().join("t/nix");
    std::fs::create_dir_all(&target).unwrap();

    Seed::image(img1.parent().unwrap(), &target).ok();
    let out = Seed::image(img2.parent().unwrap(), &target).args(["-v"]).output();
    assert_ok(&out);
    assert!(stdout(&out).contains("registered"), "{}", text(&out));
    assert_eq!(
        [db_dir_listing(&img1), db_dir_listing(&img2)],
        before,
        "the images' var/nix/db are untouched (no file created or deleted)"
    );
    assert!(
        !nix_seed_db_is_wal(&target),
        "a shared store's database is a rollback journal"
    );
    assert_eq!(
        target.join("var/nix/gcroots/nix-seed").read_dir().unwrap().count(),
        2,
        "one root dir per image"
    );

    for v in BOTH {
        assert_accepts(v, &target, &img1, first, tmp.path());
        assert_accepts(v, &target, &img2, second, tmp.path());
    }
    cross_add_and_gc(&target, &[&img1, &img2], None);
    for v in BOTH {
        v.assert_contents_verify(&target, &tmp.path().join(format!("verify-end-{}", tag(v))));
    }
    assert!(
        !nix_seed_db_is_wal(&target),
        "pods with use-sqlite-wal = false keep the rollback journal"
    );
}

moderntest!(both_versions_run, |tmp| {
    let nix = tmp.path().join("nix");
    std::fs::create_dir_all(&nix).unwrap();
    for v in BOTH {
        let o = v.pod_wal(&nix, "nix-store --version", false);
        assert!(o.status.success(), "{}", text(&o));
        assert!(
            stdout(&o).starts_with(v.version_prefix()),
            "{}: {}",
            v.name(),
            stdout(&o)
        );
    }
});

moderntest!(image_by_nix_2_8_then_image_by_nix_2_26, |_| {
    two_versions_one_target(Nix::V2_8, Nix::V2_26);
});

moderntest!(image_by_nix_2_26_then_image_by_nix_2_8, |_| {
    two_versions_one_target(Nix::V2_26, Nix::V2_8);
});

// A 2.26 pod left with Nix's default `use-sqlite-wal = true` converts the shared database
// to WAL; the next image (by 2.26) is seeded into it, and both versions (2.8 with WAL
// on: it cannot open a WAL database otherwise) accept everything.
moderntest!(a_nix_2_26_pod_with_the_default_wal_between_two_seeds, |tmp| {
    let img1 = Nix::V2_8.real_store(&tmp.path().join("i1"), "v1", true).join("nix");
    let img2 = Nix::V2_26.real_store(&tmp.path().join("i2"), "v2", true).join("nix");
    let target = tmp.path().join("t/nix");
    std::fs::create_dir_all(&target).unwrap();

    Seed::image(img1.parent().unwrap(), &target).ok();
    assert!(!nix_seed_db_is_wal(&target));
    let a = add_paths(Nix::V2_26, &target, 0, Some(true));
    assert!(
        nix_seed_db_is_wal(&target),
        "Nix 2.26 with use-sqlite-wal = true switches the database to WAL"
    );
    let out = Seed::image(img2.parent().unwrap(), &target).output();
    assert_ok(&out);
    assert!(nix_seed_db_is_wal(&target), "the target's journal mode is kept");
    for v in BOTH {
        v.assert_valid(&target, &a.live(), "paths the WAL pod added");
        assert_accepts(v, &target, &img1, Nix::V2_8, tmp.path());
        assert_accepts(v, &target, &img2, Nix::V2_26, tmp.path());
    }
    cross_add_and_gc(&target, &[&img1, &img2], Some(true));
});

/// `NIX_CONFIG` lines a pod script exports to use content-addressed derivations.
const CA_ON: &str = "export NIX_CONFIG=\"$NIX_CONFIG\nexperimental-features = nix-command ca-derivations\"\n";

/// A pod of version `v` (with ca-derivations on) builds a content-addressed derivation
/// named `name`, rooted at var/nix/gcroots/`name`: returns (drv, output).
fn build_ca(v: Nix, nix: &Path, name: &str) -> (String, String) {
    let script = format!(
        r#"set -e
{CA_ON}drv=$(nix-instantiate -E 'derivation {{ name = "{name}"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo content-addressed {name} > $out" ]; __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; }}')
nix-store -r "$drv" --add-root /nix/var/nix/gcroots/{name} >/dev/null
echo "drv $drv"
echo "out $(readlink /nix/var/nix/gcroots/{name})"
"#
    );
    let out = v.pod_ok(nix, &script);
    let get = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k} ")))
            .unwrap_or_else(|| panic!("no `{k}` in:\n{out}"))
            .to_string()
    };
    (get("drv"), get("out"))
}

// Images whose Nix used content-addressed derivations (`ca-derivations`): Nix 2.8 keeps
// the CA schema's version in `var/nix/db/ca-schema` (and tables Realisations,
// RealisationsRefs), Nix 2.26 in the SchemaMigrations table. Seeded into an empty target,
// the CA output and the realisation come along (its own Nix builds nothing for the
// derivation again), both versions find every path valid, each builds a new CA derivation
// the other sees, and the database's side files (`schema`, `ca-schema`) are the image's.
moderntest!(images_built_with_ca_derivations_by_each_version, |_| {
    // 2.26 first: the known bug below fails the 2.8 round at its last assertion.
    for builder in [Nix::V2_26, Nix::V2_8] {
        let tmp = support::scratch();
        let image = builder.real_store(&tmp.path().join("i"), "v1", true).join("nix");
        let (drv, out) = build_ca(builder, &image, &format!("image-ca-{}", tag(builder)));
        let target = tmp.path().join("t/nix");
        std::fs::create_dir_all(&target).unwrap();
        Seed::image(image.parent().unwrap(), &target).ok();
        // What the seed wrote next to db.sqlite (asserted last: a Nix pod rewrites them).
        let side = |root: &Path| ["schema", "ca-schema"].map(|f| std::fs::read(root.join("var/nix/db").join(f)).ok());
        let (image_side, seeded_side) = (side(&image), side(&target));

        let mut paths = image_paths(&image);
        assert!(paths.contains(&out) && paths.contains(&drv));
        for v in BOTH {
            v.assert_valid(&target, &paths, &format!("the CA image by {}", builder.name()));
        }
        // The realisation is the image's: nothing to build.
        let o = builder.pod(&target, &format!("{CA_ON}nix-store -r {drv}"));
        assert!(
            o.status.success() && !text(&o).contains("will be built"),
            "{}: the image's CA derivation is not realised in the target:\n{}",
            builder.name(),
            text(&o)
        );
        assert!(stdout(&o).contains(&out), "{}", text(&o));
        for v in BOTH {
            let (d, p) = build_ca(v, &target, &format!("pod-ca-{}", tag(v)));
            for u in BOTH {
                u.assert_valid(
                    &target,
                    &[d.clone(), p.clone()],
                    &format!("CA paths {} built", v.name()),
                );
            }
            paths.push(p);
        }
        for v in BOTH {
            v.assert_contents_verify(&target, &tmp.path().join("verify"));
        }
        // Last (a known nix-seed bug until fixed: ca-schema is not copied on a first seed).
        assert!(
            builder == Nix::V2_26 || image_side[1].is_some(),
            "Nix 2.8 with ca-derivations writes var/nix/db/ca-schema"
        );
        assert_eq!(
            seeded_side,
            image_side,
            "image by {}: var/nix/db/{{schema, ca-schema}} right after the seed are not the image's",
            builder.name()
        );
    }
});

// An image snapshotted while a Nix 2.26 process had its store open (`docker commit` of a
// running container, a daemon running during the image build): var/nix/db holds an empty
// `db.sqlite-wal` and a `db.sqlite-shm` (made here by SIGKILLing `nix-store --serve`).
// nix-seed reads it without changing it, and both versions accept the target.
moderntest!(an_image_snapshotted_while_nix_2_26_had_its_database_open, |tmp| {
    let image = Nix::V2_26.real_store(&tmp.path().join("i"), "v1", true).join("nix");
    let o = Nix::V2_26.pod(
        &image,
        "mkfifo /tmp/in && { nix-store --serve --write </tmp/in >/dev/null 2>&1 & } && exec 3>/tmp/in \
         && sleep 1 && kill -9 $! && sleep 0.2",
    );
    assert!(o.status.success(), "{}", text(&o));
    let db = image.join("var/nix/db");
    assert_eq!(
        std::fs::metadata(db.join("db.sqlite-wal")).map(|m| m.len()).ok(),
        Some(0),
        "the killed Nix left an empty db.sqlite-wal"
    );
    assert!(db.join("db.sqlite-shm").exists());
    let before = db_dir_listing(&image);
    let wal_before = std::fs::read(db.join("db.sqlite-wal")).unwrap();
    let target = tmp.path().join("t/nix");
    std::fs::create_dir_all(&target).unwrap();
    let out = Seed::image(image.parent().unwrap(), &target).output();
    assert_ok(&out);
    let after = db_dir_listing(&image);
    let wal_after = std::fs::read(db.join("db.sqlite-wal")).ok();
    // Nix's checks first (they open the image's database too: hence the listing above),
    // then the image's listing (a known nix-seed bug until fixed: the empty -wal is deleted).
    for v in BOTH {
        assert_accepts(v, &target, &image, Nix::V2_26, tmp.path());
    }
    assert_eq!(
        after, before,
        "nix-seed changed the image's var/nix/db (deleted its empty db.sqlite-wal?)"
    );
    assert_eq!(wal_after, Some(wal_before));
});

// A pod of Nix 2.26 left with the default `use-sqlite-wal = true` converts the shared
// database to WAL *while* a seed runs: between nix-seed's copy (store paths in place) and
// its registration. The seed must still register its image (or fail cleanly and succeed
// on a rerun: here it must succeed), and both versions accept everything.
moderntest!(a_nix_2_26_pod_switches_the_target_to_wal_during_a_seed, |tmp| {
    let img1 = Nix::V2_8.real_store(&tmp.path().join("i1"), "v1", true).join("nix");
    let img2 = Nix::V2_26.real_store(&tmp.path().join("i2"), "v2", true).join("nix");
    let target = tmp.path().join("t/nix");
    std::fs::create_dir_all(&target).unwrap();
    Seed::image(img1.parent().unwrap(), &target).ok();
    assert!(!nix_seed_db_is_wal(&target));

    // Pause the seeder once img2's store paths are all in place: a large (sparse) file in
    // img2's var/log, copied after the store paths and before registering, gives the time.
    let big = img2.join("var/log/nix/big.log");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(1 << 30).unwrap();
    drop(f);
    let names: Vec<String> = image_paths(&img2)
        .iter()
        .map(|p| p.rsplit('/').next().unwrap().to_string())
        .collect();
    let child = Seed::new(&img2, &target).spawn();
    let t0 = std::time::Instant::now();
    while !names
        .iter()
        .all(|n| target.join("store").join(n).symlink_metadata().is_ok())
    {
        assert!(t0.elapsed().as_secs() < 60, "the seeder did not copy img2's paths");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGSTOP) };
    let registered = support::nix::valid_paths(&target);
    let unregistered = image_paths(&img2)
        .into_iter()
        .filter(|p| !registered.contains(p))
        .count();
    // The 2.26 pod, its database opened with WAL on (a timeout: never hang the suite).
    let o = Nix::V2_26.pod_wal(
        &target,
        "set -e; printf 'added during a seed\\n' > /tmp/during.txt; timeout 120 nix-store --add /tmp/during.txt",
        true,
    );
    let during = stdout(&o).trim().to_string();
    let wal_now = nix_seed_db_is_wal(&target);
    crate::support::cont(child.id());
    let out = child.wait_with_output().unwrap();
    std::fs::remove_file(&big).unwrap();
    assert!(
        unregistered > 0,
        "the seeder registered before it could be paused (var/log copy too fast?)"
    );
    assert!(
        o.status.success(),
        "Nix 2.26 could not add a path during the seed:\n{}",
        text(&o)
    );
    assert!(
        wal_now,
        "Nix 2.26 with use-sqlite-wal = true switched the database to WAL"
    );
    assert_ok(&out);
    for v in BOTH {
        v.assert_valid(&target, std::slice::from_ref(&during), "the path added during the seed");
        assert_accepts(v, &target, &img1, Nix::V2_8, tmp.path());
        assert_accepts(v, &target, &img2, Nix::V2_26, tmp.path());
    }
    cross_add_and_gc(&target, &[&img1, &img2], Some(true));
});

// Nix forks add nullable columns to ValidPaths (Determinate Nix: `provenance`); plain Nix
// names its columns in every statement, so both versions keep working on such a database.
// Simulated on a database Nix 2.26 made (`ALTER TABLE ... ADD COLUMN provenance text`,
// as that fork's migration does): an image with the column is seeded into an empty target,
// then a Nix 2.8 image into that target; both versions accept both images.
moderntest!(an_extra_nullable_column_in_valid_paths_as_determinate_nix_adds, |tmp| {
    let img1 = Nix::V2_26.real_store(&tmp.path().join("i1"), "v1", true).join("nix");
    let img2 = Nix::V2_8.real_store(&tmp.path().join("i2"), "v2", true).join("nix");
    let c = rusqlite::Connection::open(img1.join("var/nix/db/db.sqlite")).unwrap();
    c.execute_batch("ALTER TABLE ValidPaths ADD COLUMN provenance text")
        .unwrap();
    drop(c);
    // Nix itself is fine with it.
    Nix::V2_26.assert_valid(&img1, &image_paths(&img1), "the image with a provenance column");
    let target = tmp.path().join("t/nix");
    std::fs::create_dir_all(&target).unwrap();
    let out = Seed::image(img1.parent().unwrap(), &target).output();
    assert_ok(&out);
    let out = Seed::image(img2.parent().unwrap(), &target).output();
    assert_ok(&out);
    for v in BOTH {
        assert_accepts(v, &target, &img1, Nix::V2_26, tmp.path());
        assert_accepts(v, &target, &img2, Nix::V2_8, tmp.path());
    }
    cross_add_and_gc(&target, &[&img1, &img2], None);
});
