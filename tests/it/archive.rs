//! Issue #21: an image itself as the source: docker-archives (dockerTools' legacy layout,
//! Docker ≥ 25's), OCI layouts and archives, compressed whole or by layer, on standard
//! input. The result must be what seeding the image's unpacked `/nix` gives, and what real
//! Nix accepts; bad archives are refused with exit 2 before anything is published.
//!
//! Images are made from stores real Nix built: by `support/mkimage.py` (as dockerTools and
//! the OCI tools write them) and by buildah/podman/skopeo (`podman_*` tests).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::cmd::{assert_code, assert_ok, stderr, text, Seed};
use crate::support::compare::{assert_no_temp, assert_store_equal};
use crate::support::dbless::{assert_registered_as, target_registrations, Source};
use crate::support::nix::{assert_nix_accepts, real_store, repo};

/// `mkimage.py ROOT OUT ARGS...` (see the script).
fn mkimage(root: &Path, out: &Path, args: &[&str]) {
    let o = Command::new("python3")
        .arg(repo().join("tests/it/support/mkimage.py"))
        .arg(root)
        .arg(out)
        .args(args)
        .output()
        .unwrap();
    assert!(o.status.success(), "mkimage.py: {}", text(&o));
}

fn target(dir: &Path, name: &str) -> PathBuf {
    let t = dir.join(name).join("nix");
    std::fs::create_dir_all(&t).unwrap();
    t
}

/// The real-Nix store `v1` in `d/real`, made by mkimage.py into `d/NAME` with `args`, and
/// seeded from its directory into the target `d/dir` (what the archive must give).
fn v1_image(d: &Path, name: &str, args: &[&str]) -> (PathBuf, PathBuf, PathBuf) {
    let real = real_store(&d.join("real"), "v1", false);
    let img = d.join(name);
    mkimage(&real, &img, args);
    let by_dir = target(d, "dir");
    Seed::image(&real, &by_dir).ok();
    (real, img, by_dir)
}

fn names(store: &Path) -> BTreeSet<String> {
    match std::fs::read_dir(store) {
        Ok(d) => d
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with('.'))
            .collect(),
        Err(_) => BTreeSet::new(),
    }
}

/// The same store paths, each identical (metadata, content, hardlinks), in both.
#[track_caller]
fn assert_same_store(want: &Path, got: &Path) {
    assert_eq!(names(&want.join("store")), names(&got.join("store")));
    assert_store_equal(want, got);
}

/// As [`assert_same_store`], for an image with one layer per store path: a hardlink between
/// two store paths is two files there, as a container of the image shows them.
#[track_caller]
fn assert_same_store_split(want: &Path, got: &Path) {
    assert_eq!(names(&want.join("store")), names(&got.join("store")));
    crate::support::compare::assert_store_equal_with(want, got, crate::support::compare::Links::Subset);
}

/// The image id `nix-seed images` lists for the one image seeded into `target`, and its
/// label.
fn only_image(target: &Path) -> (String, String) {
    let (by_id, _) = crate::support::images::images(target);
    assert_eq!(by_id.len(), 1, "{by_id:?}");
    let (id, v) = by_id.into_iter().next().unwrap();
    (id, v.to_string())
}

/// Nothing of the image published into an empty target: no store path, no database, no
/// temporary, nothing at all but the seed lock's file.
#[track_caller]
fn assert_nothing_published(t: &Path) {
    assert!(
        names(&t.join("store")).is_empty(),
        "store paths published: {:?}",
        names(&t.join("store"))
    );
    assert!(!t.join("var/nix/db/db.sqlite").exists(), "a database was created");
    assert_no_temp(t);
    // The target was empty: only the seed lock's file is left, not even Nix's gc.lock.
    let left: Vec<String> = walkdir::WalkDir::new(t)
        .min_depth(1)
        .into_iter()
        .map(|e| e.unwrap().path().strip_prefix(t).unwrap().display().to_string())
        .filter(|p| p != ".nix-seed" && p != ".nix-seed/lock")
        .collect();
    assert!(left.is_empty(), "left in the target: {left:?}");
    let stray: Vec<String> = std::fs::read_dir(t)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".nix-seed-tmp-"))
        .collect();
    assert!(stray.is_empty(), "a stage was left: {stray:?}");
}

// A docker-archive (legacy layout), uncompressed, its /nix in one layer (hardlinks across
// store paths kept, as in the directory): the same store as seeding the directory, the same
// image id, real Nix accepts it; named by its tag and configuration digest; a second seed
// has nothing to publish.
nixtest!(a_docker_archive_seeds_what_its_directory_seeds, |tmp| {
    let real = real_store(&tmp.path().join("real"), "v1", false);
    let img = tmp.path().join("img.tar");
    mkimage(
        &real,
        &img,
        &["--format", "docker", "--layers", "one", "--tag", "example.com/app:1"],
    );
    let by_dir = target(tmp.path(), "dir");
    Seed::image(&real, &by_dir).ok();
    let t = target(tmp.path(), "arc");
    let o = Seed::new(&img, &t).ok();
    assert!(stderr(&o).contains("read image"), "{}", text(&o));
    assert_same_store(&by_dir, &t);
    assert_nix_accepts(&t, &real.join("nix"));
    let (id, label) = only_image(&t);
    assert_eq!(id, only_image(&by_dir).0, "the image id is the directory's");
    assert!(label.contains("example.com/app:1 (config sha256:"), "{label}");
    // `status`, asked about the image's unpacked /nix or about the archive, names it as
    // the archive seeded it, and says seeded.
    for src in [real.join("nix"), img.clone()] {
        let o = crate::support::cmd::status(&src, &t);
        assert_ok(&o);
        assert!(
            crate::support::cmd::stdout(&o).contains("source example.com/app:1 (config sha256:"),
            "{}",
            text(&o)
        );
    }
    assert_no_temp(&t);
    // A later seed finds it complete by the archive's headers alone, as a directory's
    // no-op: no lock, no stage, nothing written but "last seen" bumped as a pod start does
    // (the marker's mtime, when 2 hours old). With --recheck it reads the image (its
    // layers read past) and publishes nothing.
    let marker = crate::support::images::marker(&t, &id);
    let old = crate::support::images::now() - 7200;
    crate::support::fixture::set_times_nofollow(&marker, old);
    let lock = t.join(".nix-seed/lock");
    std::fs::remove_file(&lock).unwrap();
    let o = Seed::new(&img, &t).ok();
    assert!(
        crate::support::cmd::stdout(&o).contains("nothing to do: all 26 store paths"),
        "{}",
        text(&o)
    );
    assert!(!stderr(&o).contains("read image"), "{}", text(&o));
    assert!(!lock.exists(), "the no-op took the lock");
    let o = Seed::new(&img, &t).args(["--recheck"]).ok();
    assert!(stderr(&o).contains("26 already in"), "{}", text(&o));
    assert!(!stderr(&o).contains("publishing"), "{}", text(&o));
    use std::os::unix::fs::MetadataExt;
    assert!(marker.metadata().unwrap().mtime() > old + 3600, "last seen not bumped");
});

// Every container format and compression: an OCI layout with zstd layers (and by
// `oci:DIR:REF`), an OCI archive with gzip layers, Docker ≥ 25's archive, a docker-archive
// gzip-compressed whole and on standard input. Each gives the directory's store.
nixtest!(oci_layouts_archives_compressions_and_stdin, needs = &["zstd"], |tmp| {
    let real = real_store(&tmp.path().join("real"), "v1", false);
    let by_dir = target(tmp.path(), "dir");
    Seed::image(&real, &by_dir).ok();
    let d = tmp.path();
    let cases: Vec<(&str, Vec<&str>, String)> = vec![
        ("oci-zstd", vec!["--format", "oci", "--compress", "zstd"], String::new()),
        (
            "oci-ref",
            vec!["--format", "oci", "--tag", "example.com/app:v7"],
            "oci:".into(),
        ),
        (
            "oci-archive-gzip",
            vec!["--format", "oci-archive", "--compress", "gzip"],
            String::new(),
        ),
        (
            "docker25",
            vec!["--format", "docker25", "--layers", "one"],
            "docker-archive:".into(),
        ),
        (
            "docker-whole-gzip",
            vec!["--format", "docker", "--whole-gzip"],
            String::new(),
        ),
        // Read as a stream (compressed whole), its layers compressed too.
        (
            "oci-archive-zstd-whole-gzip",
            vec!["--format", "oci-archive", "--compress", "zstd", "--whole-gzip"],
            String::new(),
        ),
        (
            "docker-gzip-whole-gzip",
            vec!["--format", "docker", "--compress", "gzip", "--whole-gzip"],
            String::new(),
        ),
    ];
    for (name, args, prefix) in cases {
        let img = d.join(name);
        mkimage(&real, &img, &args);
        let t = target(d, &format!("t-{name}"));
        let mut src = format!("{prefix}{}", img.display());
        if name == "oci-ref" {
            src.push_str(":v7");
        }
        let o = Seed::new(&src, &t).output();
        assert_ok(&o);
        assert_same_store_split(&by_dir, &t);
        let (_, label) = only_image(&t);
        if name.starts_with("oci") {
            assert!(label.contains("@sha256:"), "{name}: {label}");
        }
    }
    // Standard input: a docker-archive with gzip layers piped in.
    let img = d.join("piped.tar");
    mkimage(&real, &img, &["--format", "docker", "--compress", "gzip"]);
    let t = target(d, "t-stdin");
    let mut c = Seed::new("-", &t).command();
    c.stdin(Stdio::from(std::fs::File::open(&img).unwrap()));
    let o = c.output().unwrap();
    assert_ok(&o);
    assert_same_store_split(&by_dir, &t);
    // A reference the layout does not hold: exit 2.
    let img = d.join("oci-ref");
    let o = Seed::new(format!("oci:{}:nope", img.display()), target(d, "t-noref")).output();
    assert_code(&o, 2);
    assert!(stderr(&o).contains("holds no image named nope"), "{}", text(&o));
});

// dockerTools' default: no Nix database, hardlinks split, mtime 1, one layer per store
// path, plain and gzip-compressed whole. Registrations are computed as real Nix
// registered them; a pod's Nix keeps every path through a collection.
nixtest!(
    a_dockertools_archive_without_a_database_is_registered_as_nix_did,
    |tmp| {
        let img = crate::dbless::stripped(&tmp.path().join("v1"), "v1");
        for (name, args) in [
            ("plain.tar", vec!["--split-hardlinks", "--mtime", "1"]),
            (
                "whole.tar.gz",
                vec!["--split-hardlinks", "--mtime", "1", "--whole-gzip"],
            ),
        ] {
            let out = tmp.path().join(name);
            mkimage(img.root(), &out, &[&["--format", "docker"], args.as_slice()].concat());
            let t = target(tmp.path(), &format!("t-{name}"));
            let by_dir = target(tmp.path(), &format!("d-{name}"));
            Seed::new(&img.image, &by_dir).ok();
            Seed::new(&out, &t).ok();
            assert_same_store(&by_dir, &t);
            let got = target_registrations(&t);
            assert_registered_as(&img.orig, &got, &img.paths(), Source::Computed, name);
            crate::dbless::assert_pod_keeps(&t, &img.paths(), tmp.path());
        }
    }
);

/// A store path of `regs` that no other one refers to.
fn unreferenced(regs: &crate::support::dbless::Regs) -> String {
    let referenced: BTreeSet<&String> = regs
        .iter()
        .flat_map(|(p, r)| r.refs.iter().filter(move |q| *q != p))
        .collect();
    regs.keys()
        .find(|p| !referenced.contains(p) && !p.ends_with(".drv"))
        .expect("a path nothing refers to")
        .clone()
}

// Whiteouts: a later layer deletes a store path (`.wh.NAME`), which is then not seeded and
// not part of the image's id; an opaque `nix/var` (`.wh..wh..opq`) hides the lower
// layers' var/ (its database and profiles), so registrations are computed.
nixtest!(whiteouts_delete_a_store_path_and_hide_nix_var, |tmp| {
    let d = tmp.path();
    let img = crate::dbless::stripped(&d.join("v1"), "v1");
    let gone = unreferenced(&img.orig);
    let gone_name = gone.strip_prefix("/nix/store/").unwrap();
    let wh = d.join("wh");
    std::fs::create_dir_all(wh.join("nix/store")).unwrap();
    std::fs::write(wh.join("nix/store").join(format!(".wh.{gone_name}")), "").unwrap();
    let out = d.join("wh.tar");
    mkimage(
        img.root(),
        &out,
        &["--format", "docker", "--append-layer", wh.to_str().unwrap()],
    );
    let t = target(d, "t");
    Seed::new(&out, &t).ok();
    let want: BTreeSet<String> = names(&img.image.join("store"))
        .into_iter()
        .filter(|n| n != gone_name)
        .collect();
    assert_eq!(names(&t.join("store")), want);
    let kept: Vec<String> = img.paths().into_iter().filter(|p| *p != gone).collect();
    crate::dbless::assert_pod_keeps(&t, &kept, d);
    // `status` reads the same names from the archive (its whiteouts applied to the list).
    assert_ok(&crate::support::cmd::status(&out, &t));

    // A store with var/ (database, profiles), then a layer making nix/var opaque.
    let real = real_store(&d.join("real"), "v1", false);
    let opq = d.join("opq");
    std::fs::create_dir_all(opq.join("nix/var")).unwrap();
    std::fs::write(opq.join("nix/var/.wh..wh..opq"), "").unwrap();
    let out = d.join("opq.tar");
    mkimage(
        &real,
        &out,
        &["--format", "docker", "--append-layer", opq.to_str().unwrap()],
    );
    let t = target(d, "t-opq");
    let o = Seed::new(&out, &t).ok();
    assert!(stderr(&o).contains("the image has no Nix database"), "{}", text(&o));
    assert!(
        !t.join("var/nix/profiles/default").exists(),
        "the hidden var/'s profile was seeded"
    );
    assert_eq!(names(&t.join("store")), names(&real.join("nix/store")));
    assert_ok(&crate::support::cmd::status(&out, &t));
});

/// A layer tar holding the entries `script` (Python, with `t` an open tarfile) adds.
fn hostile_layer(dir: &Path, name: &str, script: &str) -> PathBuf {
    let out = dir.join(format!("{name}.layer.tar"));
    let prog = format!(
        "import io, tarfile, sys\n\
         t = tarfile.open(sys.argv[1], 'w', format=tarfile.PAX_FORMAT)\n\
         def d(n):\n    i = tarfile.TarInfo(n); i.type = tarfile.DIRTYPE; i.mode = 0o755; t.addfile(i)\n\
         def f(n, b=b'x'):\n    i = tarfile.TarInfo(n); i.size = len(b); t.addfile(i, io.BytesIO(b))\n\
         def l(n, target, hard=False):\n    i = tarfile.TarInfo(n); i.type = tarfile.LNKTYPE if hard else tarfile.SYMTYPE; i.linkname = target; t.addfile(i)\n\
         {script}\nt.close()\n"
    );
    let o = Command::new("python3").arg("-c").arg(prog).arg(&out).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    out
}

// `--dry-run` with an image: exit 0 naming what it would copy; `status`: exit 1 (not
// seeded); nothing written. Bad archives, exit 2,
// nothing published and no stage left: a truncated archive, a layer
// whose bytes do not match its digest, and hostile entries (`..`, an absolute hardlink
// name, a symlinked `nix/`, a write through a symlink in a store path).
nixtest!(bad_and_hostile_archives_are_refused_with_nothing_published, |tmp| {
    let d = tmp.path();
    let real = real_store(&d.join("real"), "v1", false);
    let whole = d.join("whole.tar");
    mkimage(&real, &whole, &["--format", "docker", "--layers", "one"]);
    // --dry-run and status read the image's names only: what would be copied (exit 0),
    // not seeded (exit 1); nothing written.
    let t = target(d, "t-dry");
    let o = Seed::new(&whole, &t).args(["--dry-run"]).output();
    assert_ok(&o);
    assert!(crate::support::cmd::stdout(&o).contains("26 missing"), "{}", text(&o));
    assert_eq!(stderr(&o).matches("would copy").count(), 26, "{}", text(&o));
    let o = crate::support::cmd::status(&whole, &t);
    assert_code(&o, 1);
    assert!(
        crate::support::cmd::stdout(&o).contains("26 store paths missing"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read_dir(&t).unwrap().count(), 0, "something was written");
    let bytes = std::fs::read(&whole).unwrap();
    let cut = d.join("cut.tar");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let t = target(d, "t-cut");
    let o = Seed::new(&cut, &t).output();
    assert_code(&o, 2);
    assert_nothing_published(&t);

    // One byte of a file's content changed inside the (uncompressed) layer: the tar still
    // reads, the digest does not match.
    let oci = d.join("oci");
    mkimage(&real, &oci, &["--format", "oci", "--layers", "one"]);
    let blobs = oci.join("blobs/sha256");
    let biggest = std::fs::read_dir(&blobs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max_by_key(|p| p.metadata().unwrap().len())
        .unwrap();
    let mut b = std::fs::read(&biggest).unwrap();
    let at = b
        .windows(8)
        .position(|w| w == b"#!/bin/s")
        .expect("a script in the layer")
        + 3;
    b[at] ^= 1;
    std::fs::write(&biggest, &b).unwrap();
    let t = target(d, "t-digest");
    let o = Seed::new(&oci, &t).output();
    assert_code(&o, 2);
    assert!(stderr(&o).contains("does not match"), "{}", text(&o));
    assert_nothing_published(&t);

    let name = names(&real.join("nix/store")).into_iter().next().unwrap();
    let cases = [
        ("dotdot", "f('nix/store/../../etc/evil')".to_owned()),
        (
            "abs-hardlink",
            "f('nix/store/x'); l('nix/store/y', '/etc/passwd', True)".to_owned(),
        ),
        ("symlinked-nix", "l('nix', '/tmp')".to_owned()),
        (
            "through-symlink",
            format!("d('nix/store/{name}x'); l('nix/store/{name}x/l', '/etc'); f('nix/store/{name}x/l/evil')"),
        ),
    ];
    for (case, script) in cases {
        let layer = hostile_layer(d, case, &script);
        let img = d.join(format!("{case}.tar"));
        mkimage(
            &real,
            &img,
            &[
                "--format",
                "docker",
                "--layers",
                "one",
                "--raw-layer",
                layer.to_str().unwrap(),
            ],
        );
        let t = target(d, &format!("t-{case}"));
        let o = Seed::new(&img, &t).output();
        assert_code(&o, 2);
        assert!(stderr(&o).contains("refusing the image"), "{case}: {}", text(&o));
        assert_nothing_published(&t);
    }
    assert!(!Path::new("/etc/evil").exists() && !Path::new("/tmp/store").exists());
});

/// Change one byte in the middle of the content of a file of one of the store paths
/// `names` of `store`, inside image `img` (an archive file, or a layout's blob files): the
/// first file of at least 64 bytes whose content is found exactly once in the image.
fn corrupt_a_file_of(img: &Path, store: &Path, names: &BTreeSet<String>) -> String {
    let files: Vec<PathBuf> = if img.is_dir() {
        walkdir::WalkDir::new(img)
            .into_iter()
            .map(|e| e.unwrap())
            .filter(|e| e.file_type().is_file())
            .map(|e| e.into_path())
            .collect()
    } else {
        vec![img.to_path_buf()]
    };
    let mut blobs: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(f).unwrap()).collect();
    for n in names {
        for e in walkdir::WalkDir::new(store.join(n)).follow_root_links(false) {
            let e = e.unwrap();
            if !e.file_type().is_file() || e.metadata().unwrap().len() < 64 {
                continue;
            }
            let content = std::fs::read(e.path()).unwrap();
            let hits: Vec<(usize, usize)> = blobs
                .iter()
                .enumerate()
                .flat_map(|(i, b)| {
                    b.windows(content.len())
                        .enumerate()
                        .filter(|(_, w)| *w == content.as_slice())
                        .map(move |(at, _)| (i, at))
                        .collect::<Vec<_>>()
                })
                .collect();
            if let [(i, at)] = hits[..] {
                blobs[i][at + content.len() / 2] ^= 1;
                std::fs::write(&files[i], &blobs[i]).unwrap();
                return e.path().display().to_string();
            }
        }
    }
    panic!("no file of {names:?} found once in {}", img.display());
}

// Issue #21's "seek past what the disk has": an image with one layer per store path,
// uncompressed (an archive file, an OCI layout), seeded over a target holding the older
// image. The layers of store paths the target has are read by their headers only: a byte
// changed inside one is never read (the seed succeeds, the store is the directory seed's,
// real Nix accepts it); a byte changed in a layer of a path the target lacks is still
// refused by that layer's digest.
nixtest!(
    layers_of_paths_the_target_has_are_read_past_and_the_others_checked,
    |tmp| {
        let d = tmp.path();
        let v1 = real_store(&d.join("v1"), "v1", false);
        let v2 = real_store(&d.join("v2"), "v2", false);
        let by_dir = target(d, "dir");
        Seed::image(&v1, &by_dir).ok();
        Seed::image(&v2, &by_dir).ok();
        let (n1, n2) = (names(&v1.join("nix/store")), names(&v2.join("nix/store")));
        let shared: BTreeSet<String> = n1.intersection(&n2).cloned().collect();
        let new: BTreeSet<String> = n2.difference(&n1).cloned().collect();
        assert!(!shared.is_empty() && !new.is_empty(), "{shared:?} {new:?}");
        for format in ["docker", "oci"] {
            let img = d.join(format!("v2-{format}"));
            mkimage(&v2, &img, &["--format", format]);
            let bad = d.join(format!("v2-{format}-bad"));
            mkimage(&v2, &bad, &["--format", format]);
            let file = corrupt_a_file_of(&img, &v2.join("nix/store"), &shared);
            let t = target(d, &format!("t-{format}"));
            Seed::image(&v1, &t).ok();
            let o = Seed::new(&img, &t).output();
            assert_ok(&o);
            assert!(
                stderr(&o).contains(&format!("{} layers read past", shared.len())),
                "{format} (changed {file}): {}",
                text(&o)
            );
            assert_same_store_split(&by_dir, &t);
            assert_nix_accepts(&t, &v2.join("nix"));

            let file = corrupt_a_file_of(&bad, &v2.join("nix/store"), &new);
            let t = target(d, &format!("t-{format}-bad"));
            Seed::image(&v1, &t).ok();
            let o = Seed::new(&bad, &t).output();
            assert_code(&o, 2);
            assert!(
                stderr(&o).contains("does not match"),
                "{format} (changed {file}): {}",
                text(&o)
            );
            for n in &new {
                assert!(!t.join("store").join(n).exists(), "{n} published from a corrupt image");
            }
            assert_no_temp(&t);
        }
    }
);

// Real Nix collecting in a loop (pods' `nix-store --gc`, one after another) while an
// archive of v2 is seeded over v1 whose roots and profiles are gone, so the collections
// delete the paths v1 and v2 share before and while the seed reads the archive. Each
// round, the seed either exits 0 with v2 valid, rooted and whole as real Nix sees it, or
// fails (a path it left out was collected before it took gc.lock) and a rerun makes it so.
nixtest!(an_archive_seed_beside_a_nix_gc_loop_ends_with_the_image_valid, |tmp| {
    use crate::support::storm::{nix_verdict, GcStorm, Slow};
    let d = tmp.path();
    let v1 = real_store(&d.join("v1"), "v1", false);
    let v2 = real_store(&d.join("v2"), "v2", false);
    let img = d.join("v2.tar");
    mkimage(&v2, &img, &["--format", "docker"]);
    for round in 0..3u64 {
        let t = target(d, &format!("t{round}"));
        Seed::image(&v1, &t).ok();
        std::fs::remove_dir_all(t.join("var/nix/gcroots/nix-seed")).unwrap();
        for e in std::fs::read_dir(t.join("var/nix/profiles")).unwrap() {
            let p = e.unwrap().path();
            if p.symlink_metadata().unwrap().is_dir() {
                std::fs::remove_dir_all(&p).unwrap();
            } else {
                std::fs::remove_file(&p).unwrap();
            }
        }
        let storm = GcStorm::start(&t, Slow::NONE, std::time::Duration::from_millis(100));
        std::thread::sleep(std::time::Duration::from_millis(150 * round));
        let out = Seed::new(&img, &t).output();
        let stats = storm.stop_within(true, std::time::Duration::from_secs(60));
        assert!(stats.failures.is_empty(), "round {round}: {:?}", stats.failures);
        if !out.status.success() {
            assert_code(&out, 1);
            assert!(stderr(&out).contains("was deleted"), "round {round}: {}", text(&out));
            Seed::new(&img, &t).ok();
        }
        eprintln!(
            "round {round}: seed exit {:?}, {} collections deleted {} paths",
            out.status.code(),
            stats.collections,
            stats.deleted.len()
        );
        if let Err(why) = nix_verdict(&t, &v2.join("nix")) {
            panic!("round {round}: real Nix rejects the target: {why}\n{}", text(&out));
        }
        assert_no_temp(&t);
    }
});

// A store path the target held when the image was read, deleted by another collector
// before the seed took gc.lock (the seed is stopped between the two; real Nix deletes
// it): the seed fails and publishes nothing (never the stage's empty placeholder for that
// path); the next run reads the path from the image, and the store is the directory's.
nixtest!(
    a_path_collected_while_the_image_was_read_fails_the_seed_and_the_rerun_restores_it,
    |tmp| {
        let d = tmp.path();
        let (real, img, by_dir) = v1_image(d, "img.tar", &["--format", "docker", "--layers", "one"]);
        let t = target(d, "t");
        Seed::image(&real, &t).ok();
        // A path nothing refers to: real Nix deletes it once liveness is ignored.
        let db = rusqlite::Connection::open(t.join("var/nix/db/db.sqlite")).unwrap();
        let victim: String = db
            .query_row(
                "SELECT path FROM ValidPaths WHERE id NOT IN \
             (SELECT reference FROM Refs WHERE referrer != reference) ORDER BY path LIMIT 1",
                [],
                |r| r.get(0),
            )
            .unwrap();
        drop(db);
        let name = victim.rsplit('/').next().unwrap().to_owned();

        // --recheck: past the "nothing to do" the image would otherwise get at once.
        let child = Seed::new(&img, &t)
            .args(["--recheck"])
            .failpoint("unpacked=stop")
            .spawn();
        crate::support::wait_stopped(child.id());
        let o = crate::support::nix::in_pod(&t, &format!("nix-store --delete --ignore-liveness {victim}"));
        assert!(o.status.success(), "real Nix could not delete {victim}: {}", text(&o));
        assert!(!t.join("store").join(&name).exists());
        crate::support::cont(child.id());
        let o = child.wait_with_output().unwrap();
        assert_code(&o, 1);
        assert!(
            stderr(&o).contains(&format!("store path {name} was in")),
            "{}",
            text(&o)
        );
        assert!(!t.join("store").join(&name).exists(), "a placeholder was published");
        assert_no_temp(&t);

        let o = Seed::new(&img, &t).output();
        assert_ok(&o);
        assert_same_store(&by_dir, &t);
        assert_nix_accepts(&t, &real.join("nix"));
    }
);

// Killed after some store paths were published: the next run removes the stage left
// behind and completes; two seeders of one archive at once: one reads it, the other
// waits and finds it done.
nixtest!(crash_and_concurrency_as_for_a_directory, |tmp| {
    let d = tmp.path();
    let (real, img, by_dir) = v1_image(d, "img.tar", &["--format", "docker"]);

    let t = target(d, "t-crash");
    let o = Seed::new(&img, &t).failpoint("published:5=kill").output();
    assert!(!o.status.success(), "{}", text(&o));
    assert_eq!(names(&t.join("store")).len(), 5, "killed right after the 5th publish");
    let left: Vec<String> = std::fs::read_dir(&t)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with(".nix-seed-tmp-"))
        .collect();
    assert_eq!(left.len(), 1, "the killed run's stage: {left:?}");
    let o = Seed::new(&img, &t).ok();
    assert!(stderr(&o).contains("removed 1 temporary"), "{}", text(&o));
    assert_same_store_split(&by_dir, &t);
    assert_no_temp(&t);
    assert_nix_accepts(&t, &real.join("nix"));

    let t = target(d, "t-two");
    let a = Seed::new(&img, &t).spawn();
    let b = Seed::new(&img, &t).spawn();
    for c in [a, b] {
        let o = c.wait_with_output().unwrap();
        assert_ok(&o);
    }
    assert_same_store_split(&by_dir, &t);
    assert_nix_accepts(&t, &real.join("nix"));
});

/// podman/buildah with their own storage under `dir` (vfs: no overlay in this sandbox).
fn tool(dir: &Path, name: &str) -> Command {
    let mut c = Command::new(name);
    c.arg("--root")
        .arg(dir.join("containers/root"))
        .arg("--runroot")
        .arg(runroot(dir))
        .arg("--storage-driver")
        .arg("vfs");
    c
}

/// The containers' run root for the test whose directory is `dir`: podman refuses one
/// longer than 50 characters, and a clone's scratch directory may be longer, so a short
/// one in /tmp named after `dir` (removed by [`RunRoot`]).
fn runroot(dir: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    dir.hash(&mut h);
    PathBuf::from(format!("/tmp/nsr-{:016x}", h.finish()))
}

/// Removes the run root of [`runroot`] when the test ends, however it ends.
struct RunRoot(PathBuf);

impl Drop for RunRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[track_caller]
fn run_ok(c: &mut Command) -> String {
    let o = c.output().unwrap();
    assert!(o.status.success(), "{c:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_owned()
}

// Images built by buildah from a real-Nix store, saved by podman as a docker-archive and
// an OCI archive, and copied by skopeo to an OCI layout: each seeds exactly what seeding
// the image's unpacked /nix (`podman image mount`) seeds, and real Nix accepts it.
nixtest!(
    podman_saved_images_equal_their_mounted_nix,
    needs = &["buildah", "podman", "skopeo"],
    |tmp| {
        let d = tmp.path();
        let _run = RunRoot(runroot(d));
        let real = real_store(&d.join("real"), "v1", false);
        let tar = d.join("nix.tar");
        run_ok(Command::new("tar").arg("-C").arg(&real).arg("-cf").arg(&tar).arg("nix"));
        let c = run_ok(tool(d, "buildah").args(["from", "scratch"]));
        // Unpacked by GNU tar into the container (buildah add refuses a hardlink whose target
        // it has not written yet).
        let root = run_ok(tool(d, "buildah").args(["mount", &c]));
        run_ok(Command::new("tar").arg("-C").arg(&root).arg("-xpf").arg(&tar));
        run_ok(tool(d, "buildah").args(["commit", "-q", &c, "localhost/nix-app:1"]));
        let mnt = run_ok(tool(d, "podman").args(["image", "mount", "localhost/nix-app:1"]));
        let by_mount = target(d, "mount");
        Seed::new(Path::new(&mnt).join("nix"), &by_mount).ok();
        run_ok(tool(d, "podman").args(["image", "unmount", "localhost/nix-app:1"]));

        let docker = d.join("docker.tar");
        let oci_ar = d.join("oci.tar");
        let layout = d.join("layout");
        run_ok(
            tool(d, "podman")
                .args(["save", "-q", "--format", "docker-archive", "-o"])
                .arg(&docker)
                .arg("localhost/nix-app:1"),
        );
        run_ok(
            tool(d, "podman")
                .args(["save", "-q", "--format", "oci-archive", "-o"])
                .arg(&oci_ar)
                .arg("localhost/nix-app:1"),
        );
        let storage = format!(
            "containers-storage:[vfs@{}+{}]localhost/nix-app:1",
            d.join("containers/root").display(),
            runroot(d).display()
        );
        run_ok(
            Command::new("skopeo")
                .args(["copy", "-q", &storage])
                .arg(format!("oci:{}:1", layout.display())),
        );
        for (name, src) in [
            ("docker", format!("docker-archive:{}", docker.display())),
            ("oci-archive", oci_ar.display().to_string()),
            ("layout", format!("oci:{}:1", layout.display())),
        ] {
            let t = target(d, &format!("t-{name}"));
            Seed::new(&src, &t).ok();
            assert_same_store(&by_mount, &t);
            assert_nix_accepts(&t, &real.join("nix"));
            let (_, label) = only_image(&t);
            // skopeo's layout names the image by its tag alone (`1`), podman's archives by name.
            let want = if name == "layout" { "1@sha256:" } else { "nix-app" };
            assert!(label.contains(want), "{name}: {label}");
        }
    }
);

// An OCI layout whose index holds the image for two platforms: by default the one for
// this machine's architecture, `--platform linux/arm64` the other (its manifest digest in
// the image's name), an absent platform exit 2 listing the ones there are.
nixtest!(a_multi_platform_index_is_chosen_by_platform, |tmp| {
    let d = tmp.path();
    let real = real_store(&d.join("real"), "v1", false);
    let (amd, arm) = (d.join("amd"), d.join("arm"));
    mkimage(&real, &amd, &["--format", "oci", "--layers", "one", "--arch", "amd64"]);
    mkimage(&real, &arm, &["--format", "oci", "--layers", "one", "--arch", "arm64"]);
    // One layout: arm64's blobs added to amd64's, both manifests in one index.
    for e in std::fs::read_dir(arm.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), amd.join("blobs/sha256").join(e.file_name())).unwrap();
    }
    let index = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p.join("index.json")).unwrap()).unwrap()
    };
    let (mut both, arm_index) = (index(&amd), index(&arm));
    let arm_digest = arm_index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    both["manifests"]
        .as_array_mut()
        .unwrap()
        .push(arm_index["manifests"][0].clone());
    std::fs::write(amd.join("index.json"), both.to_string()).unwrap();
    assert_eq!(std::env::consts::ARCH, "x86_64", "the test assumes an x86_64 host");

    let t = target(d, "t-default");
    Seed::new(&amd, &t).ok();
    let (_, label) = only_image(&t);
    assert!(!label.contains(&arm_digest), "{label}");
    let t = target(d, "t-arm");
    Seed::new(&amd, &t).args(["--platform", "linux/arm64"]).ok();
    let (_, label) = only_image(&t);
    assert!(label.contains(&arm_digest), "{label}");
    let o = Seed::new(&amd, target(d, "t-none"))
        .args(["--platform", "linux/s390x"])
        .output();
    assert_code(&o, 2);
    assert!(
        stderr(&o).contains("linux/amd64, linux/arm64") || stderr(&o).contains("linux/arm64, linux/amd64"),
        "{}",
        text(&o)
    );
});

// A gzip-compressed archive whose layers come in another order than the image's (as
// `docker save | gzip` can write them): as a file it is read again in the image's order
// and seeds the same store; on standard input, where it cannot be read twice, exit 2
// with nothing published.
nixtest!(a_compressed_archive_with_layers_out_of_order, |tmp| {
    let d = tmp.path();
    let real = real_store(&d.join("real"), "v1", false);
    let by_dir = target(d, "dir");
    Seed::image(&real, &by_dir).ok();
    let img = d.join("reversed.tar.gz");
    mkimage(&real, &img, &["--format", "docker", "--whole-gzip", "--reverse"]);
    let t = target(d, "t-file");
    Seed::new(&img, &t).ok();
    assert_same_store_split(&by_dir, &t);
    assert_nix_accepts(&t, &real.join("nix"));
    let t = target(d, "t-stdin");
    let mut c = Seed::new("-", &t).command();
    c.stdin(Stdio::from(std::fs::File::open(&img).unwrap()));
    let o = c.output().unwrap();
    assert_code(&o, 2);
    assert!(stderr(&o).contains("must come in the image's order"), "{}", text(&o));
    assert_nothing_published(&t);
});

// Killed (SIGKILL) at every step boundary of a seed from an archive, then rerun: the rerun
// exits 0, leaves no stage or temporary, the store is the directory's, and `status` of
// the image's directory form (the same image id) says seeded, as does real Nix.
nixtest!(
    killed_at_every_step_an_archive_seed_is_repaired_by_the_next_run,
    |tmp| {
        let d = tmp.path();
        let (real, img, by_dir) = v1_image(d, "img.tar", &["--format", "docker", "--layers", "one"]);
        for point in [
            "locked",
            "unpacked",
            "nix-locks",
            "planned",
            "unmarked",
            "space-checked",
            "computed",
            "published",
            "copied",
            "verified",
            "var-seeded",
            "registered",
            "rooted",
            "profiles-followed",
            "marked",
        ] {
            let t = target(d, &format!("t-{point}"));
            let o = Seed::new(&img, &t).failpoint(format!("{point}=kill")).output();
            assert!(!o.status.success(), "{point}: not killed: {}", text(&o));
            let o = Seed::new(&img, &t).output();
            assert_ok(&o);
            assert_same_store(&by_dir, &t);
            assert_no_temp(&t);
            let o = crate::support::cmd::status(&real.join("nix"), &t);
            assert_ok(&o);
            assert!(
                !crate::support::cmd::stdout(&o).contains("not seeded"),
                "{point}: {}",
                text(&o)
            );
        }
        assert_nix_accepts(&target(d, "t-marked"), &real.join("nix"));
    }
);

// `--dry-run` of an image says what the missing store paths take, from the layers'
// headers (an upper bound): the files a directory's dry run counts, at least its bytes
// and at most 5% more; on a target short of inodes it says it would NOT fit and exits 1,
// as the directory's dry run does, and the seed refuses it before writing anything.
roottest!(
    an_image_dry_run_estimates_the_space_as_a_directory_dry_run_does,
    |tmp| {
        let d = tmp.path();
        let root = d.join("img");
        let fx = crate::support::fixture::build(
            &root.join("nix"),
            &crate::support::fixture::Spec {
                paths: 40,
                big_file_bytes: 1 << 20,
                ..Default::default()
            },
        );
        let img = d.join("img.tar");
        mkimage(&root, &img, &["--format", "docker", "--layers", "one"]);
        let t = target(d, "t");
        let json = |o: &std::process::Output, event: &str| -> serde_json::Value {
            crate::support::cmd::stdout(o)
                .lines()
                .chain(stderr(o).lines())
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["event"] == event)
                .unwrap_or_else(|| panic!("no {event} event: {}", text(o)))
        };
        let by_dir = Seed::new(&fx.root, &t)
            .args(["--dry-run", "--log-format", "json"])
            .output();
        assert_ok(&by_dir);
        let by_dir = json(&by_dir, "summary");
        let o = Seed::new(&img, &t).args(["--dry-run", "--log-format", "json"]).output();
        assert_ok(&o);
        let by_img = json(&o, "dry-run");
        assert_eq!(by_img["files"], by_dir["files"], "{by_img} {by_dir}");
        let (b, want) = (by_img["bytes"].as_u64().unwrap(), by_dir["bytes"].as_u64().unwrap());
        assert!(b >= want && b <= want + want / 20, "{by_img} {by_dir}");
        assert!(by_img["fits"].as_bool().unwrap(), "{by_img}");

        let small = d.join("small");
        let _m = crate::support::mounts::tmpfs_with(&small, "size=256m,nr_inodes=300,mode=0755");
        let o = Seed::new(&img, &small).args(["--dry-run"]).output();
        assert_code(&o, 1);
        assert!(
            crate::support::cmd::stdout(&o).contains("would NOT fit") && stderr(&o).contains("inodes"),
            "{}",
            text(&o)
        );
        assert_eq!(std::fs::read_dir(&small).unwrap().count(), 0, "something was written");
        // The seed refuses it as a directory's seed does, before anything is written (the
        // archive's headers say what it lacks), and with room it seeds.
        let o = Seed::new(&img, &small).output();
        assert_code(&o, 1);
        assert!(
            stderr(&o).contains("not enough space") && stderr(&o).contains("inodes"),
            "{}",
            text(&o)
        );
        assert_eq!(std::fs::read_dir(&small).unwrap().count(), 0, "something was written");
        let t = target(d, "t2");
        Seed::new(&img, &t).ok();
        assert_store_equal(&fx.root, &t);
    }
);

// A user seeding, from an archive, a store it owns (single-user Nix): an exact copy, no
// ownership warning; from a root-owned one: one warning, modes, times and content exact.
roottest!(a_user_seeds_an_archive_as_it_seeds_a_directory, |tmp| {
    use std::os::unix::fs::PermissionsExt;
    const NOBODY: u32 = 65534;
    let d = tmp.path();
    std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    for (name, owned) in [("own", true), ("root", false)] {
        let root = d.join(name).join("img");
        let fx = crate::support::fixture::build(
            &root.join("nix"),
            &crate::support::fixture::Spec {
                paths: 40,
                owners: false,
                ..Default::default()
            },
        );
        if owned {
            for e in walkdir::WalkDir::new(&fx.root) {
                std::os::unix::fs::lchown(e.unwrap().path(), Some(NOBODY), Some(NOBODY)).unwrap();
            }
        }
        let img = d.join(name).join("img.tar");
        mkimage(&root, &img, &["--format", "docker", "--layers", "one"]);
        std::fs::set_permissions(d.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
        let dst = d.join(name).join("dst");
        std::fs::create_dir(&dst).unwrap();
        std::os::unix::fs::chown(&dst, Some(NOBODY), Some(NOBODY)).unwrap();
        let o = Seed::new(&img, &dst).uid(NOBODY).gid(NOBODY).output();
        assert_ok(&o);
        assert_eq!(
            stderr(&o).matches("cannot set file ownership").count(),
            usize::from(!owned),
            "{}",
            text(&o)
        );
        if owned {
            assert_store_equal(&fx.root, &dst);
        } else {
            let by_dir = d.join(name).join("by-dir");
            std::fs::create_dir(&by_dir).unwrap();
            std::os::unix::fs::chown(&by_dir, Some(NOBODY), Some(NOBODY)).unwrap();
            Seed::new(&fx.root, &by_dir).uid(NOBODY).gid(NOBODY).ok();
            assert_same_store(&by_dir, &dst);
        }
        assert_no_temp(&dst);
    }
});
