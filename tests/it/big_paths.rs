//! Big store paths are copied by many threads at once (`src/copy/dirs.rs`): one path of
//! thousands of files in one flat directory, nested directories and hardlinks inside the
//! path and across paths, copied with `--jobs 8`, is exact; a seeder killed in the middle
//! of it leaves nothing half-visible and the rerun is exact.

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::{lchown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::support;
use crate::support::cmd::{assert_ok, text, Seed};
use crate::support::compare::{assert_no_temp, assert_store_equal, assert_store_equal_with, snapshot, Links};
use crate::support::fixture::{self, Spec};

/// Files in the big path's flat directory.
const FLAT: usize = 3000;

/// A fixture of `paths` ordinary store paths plus one big one (returned last).
fn big_store(root: &Path, paths: usize) -> (fixture::Fixture, OsString) {
    let fx = fixture::build(
        root,
        &Spec {
            paths,
            big_file_bytes: 1 << 20,
            ..Spec::default()
        },
    );
    let name = fixture::store_path_name(77, 0, "big-package-1.0");
    let top = fx.store().join(&name);
    // A file of another store path, hardlinked into this one (as Nix's optimiser does).
    let other = first_file(&fx.store().join(&fx.names[0])).expect("a file in the first path");
    add_big_path(&top, &other);
    fixture::register(root, std::slice::from_ref(&name));
    (fx, name)
}

fn first_file(dir: &Path) -> Option<PathBuf> {
    let m = fs::symlink_metadata(dir).ok()?;
    if m.is_file() {
        return Some(dir.to_path_buf());
    }
    if !m.is_dir() {
        return None;
    }
    let mut entries: Vec<_> = fs::read_dir(dir).ok()?.map(|e| e.unwrap().path()).collect();
    entries.sort();
    entries.iter().find_map(|p| first_file(p))
}

/// `top`: `lib/` with [`FLAT`] files (modes 0444 and 0555, every seventh owned by another
/// user, some empty, every hundredth a hardlink of an earlier one), `share/` nested six
/// deep with files and symlinks at each level, a link to `other` (another store path's
/// file) in `share/` and at the bottom. Directories 0555, every mtime 1, as Nix leaves them.
fn add_big_path(top: &Path, other: &Path) {
    let lib = top.join("lib");
    fs::create_dir_all(&lib).unwrap();
    let root = support::is_root();
    for i in 0..FLAT {
        let p = lib.join(format!("lib{i:04}.so"));
        if i % 100 == 99 {
            fs::hard_link(lib.join(format!("lib{:04}.so", i - 50)), &p).unwrap();
            continue;
        }
        let body = if i % 11 == 0 {
            String::new()
        } else {
            format!("file {i}\n").repeat(i % 40)
        };
        fs::write(&p, body).unwrap();
        let mode = if i % 3 == 0 { 0o555 } else { 0o444 };
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        if root && i % 7 == 0 {
            lchown(&p, Some(fixture::USER_OWNER.0), Some(fixture::USER_OWNER.1)).unwrap();
        }
    }
    let mut dir = top.join("share");
    for depth in 0..6 {
        fs::create_dir_all(&dir).unwrap();
        for j in 0..40 {
            fs::write(dir.join(format!("doc{j}")), format!("depth {depth} doc {j}\n")).unwrap();
            fs::set_permissions(dir.join(format!("doc{j}")), fs::Permissions::from_mode(0o444)).unwrap();
        }
        symlink(format!("doc{depth}"), dir.join("latest")).unwrap();
        symlink("/nix/store/missing-target", dir.join("dangling")).unwrap();
        if root && depth == 3 {
            lchown(
                dir.join("latest"),
                Some(fixture::BUILD_OWNER.0),
                Some(fixture::BUILD_OWNER.1),
            )
            .unwrap();
        }
        dir = dir.join(format!("level{depth}"));
    }
    fs::hard_link(other, top.join("share/shared-with-another-path")).unwrap();
    fs::hard_link(other, top.join("share/level0/level1/level2/level3/level4/shared-too")).unwrap();
    finish(top);
}

/// Directories 0555 after their children, every mtime 1 (symlinks too).
fn finish(p: &Path) {
    let m = fs::symlink_metadata(p).unwrap();
    if m.is_dir() {
        for e in fs::read_dir(p).unwrap() {
            finish(&e.unwrap().path());
        }
        fs::set_permissions(p, fs::Permissions::from_mode(0o555)).unwrap();
    }
    fixture::set_times_nofollow(p, 1);
}

#[test]
fn a_big_store_path_among_small_ones_is_copied_exactly_by_many_threads() {
    let tmp = support::scratch();
    let (fx, big) = big_store(&tmp.path().join("src"), 60);
    let dst = tmp.path().join("dst");
    fs::create_dir(&dst).unwrap();
    let out = Seed::new(&fx.root, &dst).args(["--jobs", "8"]).output();
    assert_ok(&out);
    assert_store_equal(&fx.root, &dst);
    assert_no_temp(&dst);
    assert!(dst.join("store").join(&big).join("lib/lib2999.so").exists());
}

#[test]
fn a_seeder_killed_inside_a_big_store_path_leaves_nothing_half_visible() {
    let tmp = support::scratch();
    let (fx, big) = big_store(&tmp.path().join("src"), 20);
    // Killed after 1500 files: the big path (3,000+ files) cannot be complete yet.
    for (round, nth) in [40usize, 1500].into_iter().enumerate() {
        let dst = tmp.path().join(format!("dst{round}"));
        fs::create_dir(&dst).unwrap();
        let o = Seed::new(&fx.root, &dst)
            .args(["--jobs", "8"])
            .failpoint(format!("file-copied:{nth}"))
            .output();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(o.status.signal(), Some(9), "not killed at file {nth}:\n{}", text(&o));
        assert!(
            fs::symlink_metadata(dst.join("store").join(&big)).is_err(),
            "the big path is visible after {nth} files"
        );
        // Whatever is visible under a final name is complete: the rerun leaves it as it is.
        let visible = snapshot(&dst.join("store"));
        Seed::new(&fx.root, &dst).args(["--jobs", "8"]).ok();
        assert_store_equal_with(&fx.root, &dst, Links::Subset);
        assert_no_temp(&dst);
        support::compare::assert_unchanged_but_links(&visible, &snapshot(&dst.join("store")), |rel| {
            !rel.is_empty() && !rel.starts_with(b".")
        });
    }
}
