//! Garbage older than --min-age is deleted, and only garbage: on a disk seeded with an
//! image by nix-seed and then used by pods (builds with and without roots, an indirect
//! root inside the disk, a profile, a rooted .drv, `nix-store --add`, `--optimise`),
//! `nix-seed gc` deletes exactly the set `nix-store --gc --print-dead` names, in one
//! namespace with no other pod running, where Nix's collector is safe. Real Nix then finds
//! the store consistent and the image intact, and `.links` holds no entry only it links.

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{age, as_paths, assert_consistent, deleted, file, kept, print_dead, store_names, valid, would_delete, Gc};
use crate::support::cmd::{text, Seed};
use crate::support::compare::{assert_unchanged, snapshot};
use crate::support::nix::{assert_nix_accepts, real_store};
use crate::support::pods::{pod_config, Disk, GatedBuild};

pub struct Scene {
    pub disk: Disk,
    /// The image root seeded into the disk (holds nix/).
    pub image: PathBuf,
    /// Paths of the unrooted build `gone`: result, its .drv, dep, dep's .drv.
    pub gone: BTreeSet<String>,
    /// The output of `drvonly`, whose .drv alone is rooted (alive only with keep-outputs).
    pub drvonly_out: String,
    /// Two `nix-store --add` paths with the same contents (one `.links` entry).
    pub dups: [String; 2],
    /// The result rooted through /nix/var/keep/result (indirect, inside the disk).
    pub kept_result: String,
    /// A `nix-store --add` path rooted by a regular file in gcroots named after it.
    pub file_rooted: String,
}

/// The disk of this module's tests, pods configured with `config`.
pub fn scene(t: &Path, config: &str) -> Scene {
    let image = real_store(&t.join("image"), "v1", false);
    let disk = Disk::new(&t.join("disk")).with_config(config);
    Seed::image(&image, disk.nix()).ok();
    let ex = t.join("exprs");
    let gone = GatedBuild::new(&ex, "gone");
    let keep = GatedBuild::new(&ex, "keep");
    let drvonly = GatedBuild::new(&ex, "drvonly");
    for b in [&gone, &keep, &drvonly] {
        b.gate.open();
    }
    let same = "the same bytes in two store paths\n".repeat(100);
    let fa = file(&t.join("files"), "dup-a", &same);
    let fb = file(&t.join("files"), "dup-b", &same);
    let fr = file(&t.join("files"), "file-rooted", "rooted by a regular file\n");
    let script = format!(
        "set -e
nix-build {gone} --no-out-link >/dev/null
mkdir -p /nix/var/keep
kept=$(nix-build {keep} --out-link /nix/var/keep/result)
nix-env -p /nix/var/nix/profiles/per-user/root/test --set $kept
drvonly=$(nix-build {drvonly} --no-out-link)
nix-instantiate {drvonly} --add-root /nix/var/keep/drvonly.drv --indirect >/dev/null
nix-store --add {fa} {fb}
fr=$(nix-store --add {fr})
touch /nix/var/nix/gcroots/$(basename $fr)
nix-store --optimise
echo kept=$kept
echo drvonly=$drvonly",
        gone = gone.expr.display(),
        keep = keep.expr.display(),
        drvonly = drvonly.expr.display(),
        fa = fa.display(),
        fb = fb.display(),
        fr = fr.display(),
    );
    let out = disk.pod("user").ok(&script);
    let var = |k: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} in {out}"))
            .to_string()
    };
    let v = valid(disk.nix());
    let ending = |s: &str| -> String {
        v.iter()
            .find(|p| p.ends_with(s))
            .unwrap_or_else(|| panic!("no valid path ends with {s}"))
            .clone()
    };
    let gone_paths: BTreeSet<String> = ["-gone-result", "-gone-result.drv", "-gone-dep", "-gone-dep.drv"]
        .iter()
        .map(|s| ending(s))
        .collect();
    Scene {
        gone: gone_paths,
        drvonly_out: var("drvonly"),
        dups: [ending("-dup-a"), ending("-dup-b")],
        kept_result: var("kept"),
        file_rooted: ending("-file-rooted"),
        disk,
        image,
    }
}

/// `.links` entries only one name links (what a collection must leave none of).
pub fn lonely_links(nix: &Path) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(nix.join("store/.links")) else {
        return Vec::new();
    };
    rd.map(|e| e.unwrap())
        .filter(|e| e.metadata().unwrap().nlink() == 1)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

fn check_scene_shape(s: &Scene, dead: &BTreeSet<String>) {
    assert!(dead.is_superset(&s.gone), "Nix calls the unrooted build dead: {dead:?}");
    assert!(!dead.contains(&s.kept_result), "rooted in the disk: {dead:?}");
    assert!(!dead.contains(&s.file_rooted), "rooted by a regular file: {dead:?}");
    assert!(dead.contains(&s.dups[0]) && dead.contains(&s.dups[1]));
    let image: BTreeSet<String> = valid(&s.image.join("nix"));
    assert!(dead.is_disjoint(&image), "the seeded image is rooted");
}

/// Run gc with `args` (plus -v --min-age 0) on the scene and check it against Nix's dead set.
fn collect_all_and_compare(t: &Path, s: &Scene, dead: &BTreeSet<String>, args: &[&str]) {
    let names_before = store_names(s.disk.nix());
    let valid_before = valid(s.disk.nix());
    assert!(lonely_links(s.disk.nix()).is_empty(), "the scene starts optimised");

    let snap = snapshot(s.disk.nix());
    let dry = Gc::new(s.disk.nix())
        .args(["--dry-run", "--min-age", "0"])
        .args(args)
        .ok();
    assert_eq!(
        &would_delete(&dry),
        dead,
        "--dry-run against Nix's --print-dead:\n{}",
        text(&dry)
    );
    let after = snapshot(s.disk.nix());
    // All but var/nix/db's own times: SQLite's unix-dotfile locking (the protocol of Nix
    // with use-sqlite-wal = false) makes and removes db.sqlite.lock in it to read.
    assert_unchanged(&snap, &after, |p| p != b"var/nix/db");
    assert_eq!(
        snap.entries.keys().collect::<Vec<_>>(),
        after.entries.keys().collect::<Vec<_>>(),
        "--dry-run writes nothing, creates nothing"
    );

    let gc = Gc::new(s.disk.nix()).args(["-v", "--min-age", "0"]).args(args).ok();
    assert_eq!(
        &deleted(&gc),
        dead,
        "deleted against Nix's --print-dead:\n{}",
        text(&gc)
    );
    let gone_names: BTreeSet<String> = names_before.difference(&store_names(s.disk.nix())).cloned().collect();
    assert_eq!(&as_paths(&gone_names), dead, "what left the disk");
    let now_valid = valid(s.disk.nix());
    assert_eq!(
        valid_before.difference(&now_valid).cloned().collect::<BTreeSet<_>>(),
        *dead,
        "what left the database"
    );
    assert!(
        lonely_links(s.disk.nix()).is_empty(),
        "lonely .links entries: {:?}",
        lonely_links(s.disk.nix())
    );
    assert!(
        String::from_utf8_lossy(&gc.stdout).contains(&format!("deleted {} store paths", dead.len()))
            || super::all(&gc).contains(&format!("deleted {} store paths", dead.len())),
        "summary line:\n{}",
        text(&gc)
    );
    assert_consistent(&s.disk, t, true);
    assert_nix_accepts(s.disk.nix(), &s.image.join("nix"));
    // Nothing left to do.
    let again = Gc::new(s.disk.nix()).args(["-v", "--min-age", "0"]).args(args).ok();
    assert!(deleted(&again).is_empty(), "{}", text(&again));
}

// With keep-outputs unset (Nix's default, keep-derivations on): the same set as Nix.
nixtest!(old_garbage_is_deleted_exactly_as_nix_would_and_nix_agrees_after, |t| {
    let s = scene(t, &pod_config());
    let dead = print_dead(&s.disk);
    check_scene_shape(&s, &dead);
    assert!(
        dead.contains(&s.drvonly_out),
        "without keep-outputs a rooted .drv's output is dead"
    );
    let conf = file(&t.join("conf"), "nix.conf", "keep-derivations = true\n");
    collect_all_and_compare(t, &s, &dead, &["--nix-conf", conf.to_str().unwrap()]);
});

// keep-outputs = true in the disk's nix.conf: the rooted .drv's output lives, as for Nix.
nixtest!(
    keep_outputs_in_nix_conf_keeps_the_outputs_of_a_rooted_drv_as_nix_does,
    |t| {
        let config = format!("{}keep-outputs = true\n", pod_config());
        let s = scene(t, &config);
        let dead = print_dead(&s.disk);
        check_scene_shape(&s, &dead);
        assert!(
            !dead.contains(&s.drvonly_out),
            "with keep-outputs a rooted .drv's output lives"
        );
        let conf = file(&t.join("conf"), "nix.conf", "keep-outputs = true\n");
        collect_all_and_compare(t, &s, &dead, &["--nix-conf", conf.to_str().unwrap()]);
    }
);

// keep-derivations = false: the .drv of a live output is garbage too, as for Nix.
nixtest!(
    keep_derivations_false_in_nix_conf_collects_the_drvs_of_live_outputs_as_nix_does,
    |t| {
        let config = format!("{}keep-derivations = false\n", pod_config());
        let s = scene(t, &config);
        let dead = print_dead(&s.disk);
        check_scene_shape(&s, &dead);
        assert!(
            dead.iter().any(|p| p.ends_with("-keep-result.drv")),
            "without keep-derivations the rooted result's .drv is dead: {dead:?}"
        );
        let conf = file(&t.join("conf"), "nix.conf", "keep-derivations = false\n");
        collect_all_and_compare(t, &s, &dead, &["--nix-conf", conf.to_str().unwrap()]);
    }
);

// The default --min-age (10 days): only paths registered earlier, and not read since, go.
// The unrooted build made 30 days old goes; dup-a made as old but read since (atime after
// ctime) is kept as recently read; the rest of the garbage is young.
nixtest!(only_garbage_older_than_min_age_and_not_read_since_is_deleted, |t| {
    let s = scene(t, &pod_config());
    let dead = print_dead(&s.disk);
    check_scene_shape(&s, &dead);
    age(s.disk.nix(), &s.gone, 30);
    age(s.disk.nix(), &[s.dups[0].clone()].into(), 30);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let _ = std::fs::read(s.disk.host(&s.dups[0])).unwrap();

    let dry = Gc::new(s.disk.nix()).args(["--dry-run"]).ok();
    assert_eq!(would_delete(&dry), s.gone, "{}", text(&dry));
    let why = kept(&dry);
    assert!(
        why.get(&s.dups[0]).is_some_and(|w| w.contains("recently read")),
        "{}",
        text(&dry)
    );
    for young in [&s.dups[1], &s.drvonly_out] {
        assert!(
            why.get(young).is_some_and(|w| w.contains("young")),
            "{young}:\n{}",
            text(&dry)
        );
    }
    let gc = Gc::new(s.disk.nix()).args(["-v"]).ok();
    assert_eq!(deleted(&gc), s.gone, "{}", text(&gc));
    let v = valid(s.disk.nix());
    assert!(
        dead.difference(&s.gone).all(|p| v.contains(p)),
        "the younger garbage stays"
    );
    assert_consistent(&s.disk, t, true);
    assert_nix_accepts(s.disk.nix(), &s.image.join("nix"));
});

// The disk mounted noatime (a bind mount of it, in a namespace of the test's): access
// times mean nothing there, so "recently read" is off, with a warning; an old path read
// just now is deleted like any old garbage, and the young rule still holds.
nixtest!(on_a_noatime_mount_recently_read_is_off_with_a_warning, |t| {
    let s = scene(t, &pod_config());
    age(s.disk.nix(), &s.gone, 30);
    age(s.disk.nix(), &[s.dups[0].clone()].into(), 30);
    std::thread::sleep(std::time::Duration::from_millis(20));
    let _ = std::fs::read(s.disk.host(&s.dups[0])).unwrap();
    let mnt = t.join("noatime");
    std::fs::create_dir_all(&mnt).unwrap();
    let script = format!(
        "mount --bind {d} {m} && mount -o remount,bind,noatime {m} || exit 99
exec {bin} gc --target {m} -v",
        d = s.disk.nix().display(),
        m = mnt.display(),
        bin = crate::support::bin().display()
    );
    let o = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env_remove("NIX_SEED_TERMINATION_LOG")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        super::all(&o).contains("noatime"),
        "a warning names noatime:\n{}",
        text(&o)
    );
    let mut want = s.gone.clone();
    want.insert(s.dups[0].clone());
    assert_eq!(deleted(&o), want, "{}", text(&o));
    assert!(valid(s.disk.nix()).contains(&s.dups[1]), "young stays");
});
