//! The suite's core promises on the filesystems users have: ext4, xfs and btrfs on loop
//! devices and tmpfs, as real mount points (no --allow-non-mountpoint), with the source
//! on a different filesystem than the target as it is in a pod.

use crate::support;
use crate::support::cmd::{assert_code, status, Seed};
use crate::support::compare::{assert_no_temp, assert_store_equal, assert_var_seeded};
use crate::support::fixture::{self, Spec};
use crate::support::mounts;

fn seed_on(kind: &str) {
    if !support::require_root(&format!("filesystem {kind} (needs root for mounts)")) {
        return;
    }
    if kind != "tmpfs" && !support::require_tool(&format!("mkfs.{kind}")) {
        return;
    }
    let tmp = support::scratch();
    let src_mount = mounts::tmpfs(&tmp.path().join("image"), 512);
    let fx = fixture::build(
        &src_mount.path.join("nix"),
        &Spec {
            paths: 300,
            ..Spec::default()
        },
    );
    let at = tmp.path().join("mnt");
    let m = if kind == "tmpfs" {
        mounts::tmpfs(&at, 512)
    } else {
        mounts::loop_fs(kind, 512, &at)
    };
    Seed::new(&fx.root, &m.path).on_a_mount_point().ok();
    assert_store_equal(&fx.root, &m.path);
    assert_var_seeded(&fx.root, &m.path);
    assert_no_temp(&m.path);

    fixture::add_paths(&fx.root, 30, 7);
    assert_code(&status(&fx.root, &m.path), 1);
    Seed::new(&fx.root, &m.path).on_a_mount_point().ok();
    assert_store_equal(&fx.root, &m.path);
    assert_code(&status(&fx.root, &m.path), 0);
    drop(m);
    drop(src_mount);
}

#[test]
fn ext4() {
    seed_on("ext4");
}

#[test]
fn xfs() {
    seed_on("xfs");
}

#[test]
fn btrfs() {
    seed_on("btrfs");
}

#[test]
fn tmpfs() {
    seed_on("tmpfs");
}
