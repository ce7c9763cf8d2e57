//! Edge cases of a real shared disk, each against real Nix:
//! * roots Nix finds in less common shapes: a link to a file inside a store path, a
//!   relative indirect root, a chain of two links (which Nix does not follow), a link into
//!   a per-user profile's generation, a target through a symlinked directory or a name
//!   that is not UTF-8, a root 40 directories deep: kept exactly as Nix keeps them;
//! * a database a pod with Nix's defaults turned to WAL mode;
//! * a registered dead path already missing from the disk;
//! * names in store/ that are not store paths (lost+found, stray files): never deleted;
//! * garbage that is or holds symlinks, or shares inodes with a live path: what it points
//!   to or shares is untouched;
//! * prune then gc, a rollback after it; a node whose clock runs ahead.

use std::collections::BTreeSet;

use super::{age_all, assert_consistent, deleted, file, last_path, print_dead, store_names, valid, Gc};
use crate::support::cmd::text;
use crate::support::nix::nix_seed_db_is_wal;
use crate::support::pods::{pod_config, Disk, GatedBuild};

nixtest!(roots_of_every_shape_nix_knows_give_the_same_dead_set_as_nix, |t| {
    let disk = Disk::new(&t.join("disk"));
    let ex = t.join("exprs");
    let sub = GatedBuild::new(&ex, "sub");
    sub.gate.open();
    let files = t.join("files");
    let names = ["rel", "chain", "gen", "plain"];
    let f: Vec<String> = names
        .iter()
        .map(|n| file(&files, n, &format!("{n}\n")).display().to_string())
        .collect();
    let out = disk.pod("user").ok(&format!(
        "set -e
sub=$(nix-build {sub} --no-out-link)
set -- $(nix-store --add {files})
rel=$1; chain=$2; gen=$3
mkdir -p /nix/var/keep /nix/var/nix/gcroots/auto /nix/var/nix/profiles/per-user/alice
ln -s $sub/data /nix/var/nix/gcroots/inside-a-path
ln -s $rel /nix/var/keep/rel
ln -s ../../../keep/rel /nix/var/nix/gcroots/auto/relative
ln -s $chain /nix/var/keep/chain2
ln -s /nix/var/keep/chain2 /nix/var/keep/chain1
ln -s /nix/var/keep/chain1 /nix/var/nix/gcroots/auto/chain
nix-env -p /nix/var/nix/profiles/per-user/alice/p --set $gen
echo sub=$sub",
        sub = sub.expr.display(),
        files = f.join(" "),
    ));
    let sub_out = out.lines().find_map(|l| l.strip_prefix("sub=")).unwrap().to_string();
    age_all(disk.nix(), 30);
    let dead = print_dead(&disk);
    let v = valid(disk.nix());
    let ending = |s: &str| v.iter().find(|p| p.ends_with(s)).unwrap().clone();
    assert!(!dead.contains(&sub_out), "a link into a store path roots it (Nix)");
    assert!(!dead.contains(&ending("-gen")), "a per-user profile roots it (Nix)");
    assert!(dead.contains(&ending("-plain")), "unrooted: dead");
    eprintln!(
        "Nix: relative indirect root {}, chain of two links {}",
        if dead.contains(&ending("-rel")) {
            "not followed"
        } else {
            "followed"
        },
        if dead.contains(&ending("-chain")) {
            "not followed"
        } else {
            "followed"
        },
    );

    let gc = Gc::new(disk.nix()).args(["-v", "--min-age", "0"]).ok();
    assert_eq!(deleted(&gc), dead, "the same as Nix's --print-dead:\n{}", text(&gc));
    assert_consistent(&disk, t, true);
});

// A pod that nobody configured (use-sqlite-wal on, Nix's default) turned the database to
// WAL mode; nix-seed gc reads and writes it as Nix does: the dead set is Nix's, and Nix
// finds the store consistent after.
nixtest!(a_database_in_wal_mode_is_collected_as_nix_would, |t| {
    let disk = Disk::new(&t.join("disk"))
        .with_config(&pod_config().replace("use-sqlite-wal = false", "use-sqlite-wal = true"));
    let b = GatedBuild::new(&t.join("exprs"), "wal");
    b.gate.open();
    let f = file(&t.join("files"), "walfile", "in a WAL database\n");
    disk.pod("user").ok(&format!(
        "set -e; nix-build {} --no-out-link; mkdir -p /nix/var/keep; nix-store --add {} >/dev/null; \
         nix-build {} --out-link /nix/var/keep/result",
        b.expr.display(),
        f.display(),
        b.expr.display()
    ));
    assert!(nix_seed_db_is_wal(disk.nix()), "the pod turned the database to WAL");
    let f2 = file(&t.join("files"), "walfile2", "more\n");
    disk.pod("user").ok(&format!("exec nix-store --add {}", f2.display()));
    let dead = print_dead(&disk);
    assert!(dead.len() >= 2, "{dead:?}");
    let gc = Gc::new(disk.nix()).args(["-v", "--min-age", "0"]).ok();
    assert_eq!(deleted(&gc), dead, "{}", text(&gc));
    assert_eq!(print_dead(&disk), BTreeSet::new(), "Nix finds nothing more");
    assert_consistent(&disk, t, true);
});

// A dead path registered but already gone from the disk (someone's rm -rf): the gc
// unregisters it and succeeds; Nix agrees after.
nixtest!(a_registered_dead_path_already_missing_is_unregistered, |t| {
    let disk = Disk::new(&t.join("disk"));
    let f = file(&t.join("files"), "lost", "lost\n");
    let g = file(&t.join("files"), "kept", "kept\n");
    let lost = last_path(&disk.pod("p").ok(&format!("exec nix-store --add {}", f.display())));
    let kept = last_path(&disk.pod("p").ok(&format!(
        "set -e; p=$(nix-store --add {}); ln -s $p /nix/var/nix/gcroots/kept; echo $p",
        g.display()
    )));
    std::fs::remove_file(disk.host(&lost)).unwrap();
    let gc = Gc::new(disk.nix()).args(["-v", "--min-age", "0"]).ok();
    let v = valid(disk.nix());
    assert!(!v.contains(&lost), "{}", text(&gc));
    assert!(v.contains(&kept));
    assert_consistent(&disk, t, true);
});

// lost+found (ext4's), a stray file and a stray directory whose names are not store
// paths: never deleted, even with --min-age 0; the garbage beside them is.
nixtest!(names_in_the_store_that_are_not_store_paths_are_never_deleted, |t| {
    let disk = Disk::new(&t.join("disk"));
    let f = file(&t.join("files"), "junk", "junk\n");
    let junk = last_path(&disk.pod("p").ok(&format!("exec nix-store --add {}", f.display())));
    let store = disk.nix().join("store");
    std::fs::create_dir(store.join("lost+found")).unwrap();
    std::fs::write(store.join("lost+found/#1234"), "fsck found this\n").unwrap();
    std::fs::write(store.join("README"), "someone's note\n").unwrap();
    std::fs::create_dir(store.join("tmp-not-a-hash")).unwrap();
    std::fs::write(store.join("0123"), "short name\n").unwrap();
    age_all(disk.nix(), 30);
    let before = store_names(disk.nix());
    let gc = Gc::new(disk.nix()).args(["-v", "--min-age", "0"]).ok();
    assert!(deleted(&gc).contains(&junk), "{}", text(&gc));
    let mut want = before;
    want.remove(&junk["/nix/store/".len()..]);
    assert_eq!(store_names(disk.nix()), want, "{}", text(&gc));
    assert!(store.join("lost+found/#1234").exists());
});

// Garbage that is, or holds, symlinks to what must stay: a store path that is a symlink
// to a directory outside the store, one that is a symlink to a rooted store path, and a
// directory path holding a symlink to the outside directory and one to the rooted path.
// Deleting them removes the links, never what they point to.
nixtest!(deleting_garbage_symlinks_never_touches_what_they_point_to, |t| {
    let disk = Disk::new(&t.join("disk"));
    let precious = t.join("precious");
    std::fs::create_dir_all(precious.join("sub")).unwrap();
    std::fs::write(precious.join("sub/file"), "precious\n").unwrap();
    let src = t.join("src");
    std::fs::create_dir_all(src.join("dir")).unwrap();
    let keep = file(&src, "keep", "rooted\n");
    let out = disk.pod("user").ok(&format!(
        "set -e
k=$(nix-store --add {keep}); ln -s $k /nix/var/nix/gcroots/keep
ln -s {precious} {src}/to-outside
ln -s $k {src}/to-store
ln -s {precious} {src}/dir/to-outside
ln -s $k {src}/dir/to-store
ln -s {precious}/sub {src}/dir/to-sub
nix-store --add {src}/to-outside {src}/to-store {src}/dir
echo keep=$k",
        keep = keep.display(),
        precious = precious.display(),
        src = src.display()
    ));
    let k = out.lines().find_map(|l| l.strip_prefix("keep=")).unwrap().to_string();
    let garbage: BTreeSet<String> = out
        .lines()
        .filter(|l| l.starts_with("/nix/store/"))
        .map(str::to_string)
        .collect();
    assert_eq!(garbage.len(), 3, "{out}");
    for g in &garbage {
        assert!(disk.host(g).symlink_metadata().is_ok());
    }
    let gc = Gc::new(disk.nix()).args(["-v", "--min-age", "0"]).ok();
    assert_eq!(deleted(&gc), garbage, "{}", text(&gc));
    assert_eq!(
        std::fs::read_to_string(precious.join("sub/file")).unwrap(),
        "precious\n"
    );
    assert_eq!(std::fs::read_to_string(disk.host(&k)).unwrap(), "rooted\n");
    assert!(valid(disk.nix()).contains(&k));
    assert_consistent(&disk, t, true);
});

// The CronJob's flow: images v1 then v2 seeded, `nix-seed prune --keep-last 1` retires
// v1, `nix-seed gc --min-age 0` deletes exactly what Nix's collector then calls dead (v1's
// own paths), and v2 is whole to real Nix; a rollback to v1 then seeds it whole again.
nixtest!(
    prune_then_gc_deletes_the_retired_image_as_nix_would_and_keeps_the_current_one,
    |t| {
        use crate::support::cmd::{run, Seed};
        use crate::support::nix::{assert_nix_accepts, real_store};
        let v1 = real_store(&t.join("v1"), "v1", false);
        let v2 = real_store(&t.join("v2"), "v2", false);
        let disk = Disk::new(&t.join("disk"));
        Seed::image(&v1, disk.nix()).ok();
        let fresh = print_dead(&disk);
        let gc = Gc::new(disk.nix()).args(["-v", "--min-age", "0"]).ok();
        assert_eq!(deleted(&gc), fresh, "a freshly seeded disk: as Nix:\n{}", text(&gc));
        assert_nix_accepts(disk.nix(), &v1.join("nix"));

        Seed::image(&v2, disk.nix()).ok();
        let o = run([
            "prune".as_ref(),
            "--target".as_ref(),
            disk.nix().as_os_str(),
            "--keep-last".as_ref(),
            "1".as_ref(),
        ]);
        assert!(o.status.success(), "{}", text(&o));
        let dead = print_dead(&disk);
        let v1_only: BTreeSet<String> = valid(&v1.join("nix"))
            .difference(&valid(&v2.join("nix")))
            .cloned()
            .collect();
        assert!(
            !dead.is_empty() && dead.iter().all(|p| v1_only.contains(p)),
            "Nix: v1's own paths are dead: {dead:?}"
        );
        let gc = Gc::new(disk.nix()).args(["-v", "--min-age", "0"]).ok();
        assert_eq!(deleted(&gc), dead, "{}", text(&gc));
        assert_nix_accepts(disk.nix(), &v2.join("nix"));
        assert_consistent(&disk, t, true);
        // A pod starts with v1 again (a rollback): the seed brings back what gc deleted.
        Seed::image(&v1, disk.nix()).ok();
        assert_nix_accepts(disk.nix(), &v1.join("nix"));
        assert_nix_accepts(disk.nix(), &v2.join("nix"));
    }
);

// Nodes' clocks differ: a pod on a node whose clock runs an hour ahead registers a path
// "in the future". It is young (by any --min-age), not garbage of a negative age.
nixtest!(a_path_registered_by_a_node_whose_clock_runs_ahead_is_young, |t| {
    let disk = Disk::new(&t.join("disk"));
    let f = file(&t.join("files"), "ahead", "from a fast clock\n");
    let g = file(&t.join("files"), "old", "old\n");
    let out = disk
        .pod("p")
        .ok(&format!("exec nix-store --add {} {}", f.display(), g.display()));
    let l: Vec<&str> = out.lines().collect();
    let (ahead, old) = (l[0].to_string(), l[1].to_string());
    age_all(disk.nix(), 30);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    super::db(disk.nix())
        .execute(
            "UPDATE ValidPaths SET registrationTime = ?1 WHERE path = ?2",
            rusqlite::params![now + 3600, ahead],
        )
        .unwrap();
    let gc = Gc::new(disk.nix()).args(["-v"]).ok();
    let d = deleted(&gc);
    assert!(d.contains(&old) && !d.contains(&ahead), "{}", text(&gc));
    assert!(valid(disk.nix()).contains(&ahead));
});

// An indirect root whose target, inside the disk, is reached through a symlinked
// directory (`/nix/var/keep-alias -> /nix/var/keep`, a link to
// `/nix/var/keep-alias/result`): Nix resolves it as the kernel does and keeps the result;
// so must nix-seed gc (keeping less than Nix would be deleting a root's path), whether it
// follows the directory link or counts the root as unresolved.
nixtest!(
    an_indirect_root_through_a_symlinked_directory_in_the_disk_is_kept_as_nix_keeps_it,
    |t| {
        let disk = Disk::new(&t.join("disk"));
        let b = GatedBuild::new(&t.join("exprs"), "alias");
        b.gate.open();
        let out = disk.pod("user").ok(&format!(
            "set -e
mkdir -p /nix/var/keep
ln -s /nix/var/keep /nix/var/keep-alias
nix-build {} --out-link /nix/var/keep-alias/result",
            b.expr.display()
        ));
        let result = last_path(&out);
        let auto: Vec<_> = std::fs::read_dir(disk.nix().join("var/nix/gcroots/auto"))
            .unwrap()
            .map(|e| std::fs::read_link(e.unwrap().path()).unwrap())
            .collect();
        assert_eq!(auto, [std::path::PathBuf::from("/nix/var/keep-alias/result")]);
        let dead = print_dead(&disk);
        assert!(!dead.contains(&result), "Nix keeps it: {dead:?}");
        let gc = Gc::new(disk.nix()).args(["-v", "--min-age", "0"]).ok();
        assert!(
            valid(disk.nix()).contains(&result),
            "nix-seed gc deleted a rooted result:\n{}",
            text(&gc)
        );
        assert_eq!(deleted(&gc), dead, "{}", text(&gc));
    }
);

/// Nix's collector keeps store path `p` of `disk` (it is not in `--print-dead`), and so
/// does `nix-seed gc --min-age 0`: the path stays valid and on disk.
#[track_caller]
fn kept_as_nix_keeps_it(disk: &Disk, p: &str) {
    let dead = print_dead(disk);
    assert!(!dead.contains(p), "Nix keeps it: {dead:?}");
    let gc = Gc::new(disk.nix()).args(["-v", "--min-age", "0"]).output();
    assert!(
        valid(disk.nix()).contains(p) && disk.host(p).exists(),
        "nix-seed gc deleted a rooted path:\n{}",
        text(&gc)
    );
}

// A root 40 directories deep under gcroots (Nix walks any depth, directories cannot
// loop: symlinks to them are not followed): Nix keeps its path; nix-seed gc must not
// delete it (keep it, or refuse the run).
nixtest!(a_root_deep_in_gcroots_is_kept_as_nix_keeps_it, |t| {
    let disk = Disk::new(&t.join("disk"));
    let f = file(&t.join("files"), "deep", "rooted deep down\n");
    let p = last_path(&disk.pod("user").ok(&format!(
        "set -e; p=$(nix-store --add {}); d=/nix/var/nix/gcroots/per-user/deep
for i in $(seq 1 40); do d=$d/l$i; done; mkdir -p $d; ln -s $p $d/root; echo $p",
        f.display()
    )));
    kept_as_nix_keeps_it(&disk, &p);
});

// An indirect root whose target inside the disk has a name that is not UTF-8 (a Latin-1
// directory name, `/nix/var/keep/\xff\xfe/result`): Nix keeps the path; nix-seed gc must
// not delete it.
nixtest!(an_indirect_root_through_a_non_utf8_name_is_kept_as_nix_keeps_it, |t| {
    let disk = Disk::new(&t.join("disk"));
    let f = file(&t.join("files"), "latin1", "behind a Latin-1 name\n");
    let p = last_path(&disk.pod("user").ok(&format!(
        "set -e; p=$(nix-store --add {}); d=/nix/var/keep/$(printf '\\377\\376')
mkdir -p \"$d\" /nix/var/nix/gcroots/auto; ln -s $p \"$d/result\"
ln -s \"$d/result\" /nix/var/nix/gcroots/auto/latin1; echo $p",
        f.display()
    )));
    kept_as_nix_keeps_it(&disk, &p);
});

// After `nix-store --optimise` a garbage path and a rooted one share files (one inode,
// through .links): deleting the garbage must not change the rooted path's files (mode,
// owner, contents, times but the link count's ctime), nor its .links entry.
nixtest!(
    deleting_garbage_that_shares_inodes_with_a_live_path_leaves_it_as_it_was,
    |t| {
        use crate::support::compare::{assert_unchanged_but_links, snapshot};
        let disk = Disk::new(&t.join("disk"));
        let src = t.join("src");
        for side in ["live", "dead"] {
            std::fs::create_dir_all(src.join(side).join("bin")).unwrap();
            std::fs::write(src.join(side).join("data"), "shared bytes\n".repeat(50)).unwrap();
            std::fs::write(src.join(side).join("bin/run"), "#!/bin/sh\necho shared\n").unwrap();
            assert!(std::process::Command::new("chmod")
                .arg("+x")
                .arg(src.join(side).join("bin/run"))
                .status()
                .unwrap()
                .success());
        }
        let out = disk.pod("user").ok(&format!(
            "set -e; l=$(nix-store --add {live}); ln -s $l /nix/var/nix/gcroots/live
d=$(nix-store --add {dead}); nix-store --optimise; echo live=$l; echo dead=$d",
            live = src.join("live").display(),
            dead = src.join("dead").display()
        ));
        let get = |k: &str| out.lines().find_map(|l| l.strip_prefix(k)).unwrap().to_string();
        let (live, dead) = (get("live="), get("dead="));
        let before = snapshot(&disk.host(&live));
        let links_before = snapshot(&disk.nix().join("store/.links"));
        let gc = Gc::new(disk.nix()).args(["-v", "--min-age", "0"]).ok();
        assert!(deleted(&gc).contains(&dead), "{}", text(&gc));
        assert_unchanged_but_links(&before, &snapshot(&disk.host(&live)), |_| true);
        assert_unchanged_but_links(&links_before, &snapshot(&disk.nix().join("store/.links")), |_| true);
        assert_consistent(&disk, t, true);
    }
);
