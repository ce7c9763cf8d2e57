//! Single-user Nix: a non-root user seeding a store it owns gets an exact copy and no
//! ownership warning; seeding a root-owned store as non-root warns once and preserves
//! everything but the owner.

mod support;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;

use support::cmd::{assert_ok, seed_cmd, stderr};
use support::compare::assert_store_equal;
use support::fixture::{self, Spec};

const NOBODY: u32 = 65534;

fn chown_tree(root: &Path, uid: u32) {
    for e in walkdir::WalkDir::new(root) {
        let e = e.unwrap();
        std::os::unix::fs::lchown(e.path(), Some(uid), Some(uid)).unwrap();
    }
}

fn as_nobody(src: &Path, dst: &Path) -> std::process::Output {
    seed_cmd(src, dst, &[]).uid(NOBODY).gid(NOBODY).output().unwrap()
}

#[test]
fn a_user_seeding_its_own_store_gets_an_exact_copy_without_warnings() {
    if !support::require_root("a_user_seeding_its_own_store (needs root to switch user)") {
        return;
    }
    let tmp = support::scratch();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let fx = fixture::build(
        &tmp.path().join("src"),
        &Spec {
            paths: 60,
            owners: false,
            ..Spec::default()
        },
    );
    chown_tree(&fx.root, NOBODY);
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    std::os::unix::fs::chown(&dst, Some(NOBODY), Some(NOBODY)).unwrap();

    let out = as_nobody(&fx.root, &dst);
    assert_ok(&out);
    assert!(!stderr(&out).contains("ownership"), "{}", stderr(&out));
    assert_store_equal(&fx.root, &dst);
}

#[test]
fn a_user_seeding_a_root_owned_store_warns_once_and_keeps_modes_times_and_content() {
    if !support::require_root("a_user_seeding_a_root_owned_store (needs root to build it)") {
        return;
    }
    let tmp = support::scratch();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let fx = fixture::build(
        &tmp.path().join("src"),
        &Spec {
            paths: 60,
            ..Spec::default()
        },
    );
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    std::os::unix::fs::chown(&dst, Some(NOBODY), Some(NOBODY)).unwrap();

    let out = as_nobody(&fx.root, &dst);
    assert_ok(&out);
    let err = stderr(&out);
    assert_eq!(err.matches("cannot set file ownership").count(), 1, "{err}");

    // Everything but the owner is exact.
    let src_store = fx.root.join("store");
    for e in walkdir::WalkDir::new(&src_store).min_depth(1) {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(&src_store).unwrap();
        if rel.starts_with(".links") {
            continue;
        }
        let s = e.path().symlink_metadata().unwrap();
        let d = dst
            .join("store")
            .join(rel)
            .symlink_metadata()
            .unwrap_or_else(|_| panic!("{} missing", rel.display()));
        assert_eq!(s.mode(), d.mode(), "{}", rel.display());
        assert_eq!(
            (s.mtime(), s.mtime_nsec()),
            (d.mtime(), d.mtime_nsec()),
            "{}",
            rel.display()
        );
        assert_eq!(s.size(), d.size(), "{}", rel.display());
        assert_eq!(d.uid(), NOBODY, "{}", rel.display());
        if s.is_file() {
            assert_eq!(
                std::fs::read(e.path()).unwrap(),
                std::fs::read(dst.join("store").join(rel)).unwrap()
            );
        }
    }
}
