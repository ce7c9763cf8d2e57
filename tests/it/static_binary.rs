//! The binary is static and needs nothing from the image it runs in: no libc, no /etc
//! (owners are numeric), no /proc.

use std::process::Command;

use crate::support;
use crate::support::cmd::text;
use crate::support::fixture::{self, Spec};

#[test]
fn file_and_ldd_say_static() {
    if !support::require_tool("file") {
        return;
    }
    let o = Command::new("file").arg("-L").arg(support::bin()).output().unwrap();
    let s = String::from_utf8_lossy(&o.stdout);
    // static-pie: statically linked and position-independent (ASLR kept).
    assert!(
        s.contains("statically linked") || s.contains("static-pie linked"),
        "{s}"
    );
    let o = Command::new("ldd").arg(support::bin()).output().unwrap();
    let s = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        s.contains("not a dynamic executable") || s.contains("statically linked"),
        "{s}"
    );
}

roottest!(seeds_inside_an_empty_chroot, |tmp| {
    let root = tmp.path().join("root");
    std::fs::create_dir_all(root.join("mnt/nix")).unwrap();
    std::fs::copy(support::bin(), root.join("nix-seed")).unwrap();
    let fx = fixture::build(
        &root.join("nix"),
        &Spec {
            paths: 30,
            ..Spec::default()
        },
    );
    let chroot = support::find_tool("chroot").expect("chroot (coreutils)");
    // No environment at all inside: no PATH, no HOME, no TERM.
    let o = Command::new(chroot)
        .arg(&root)
        .args([
            "/nix-seed",
            "seed",
            "--source",
            "/nix",
            "--target",
            "/mnt/nix",
            "--allow-non-mountpoint",
        ])
        .env_clear()
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        std::fs::read_dir(&root).unwrap().count(),
        3,
        "nothing but nix-seed, /nix and /mnt in the chroot"
    );
    support::compare::assert_store_equal(&fx.root, &root.join("mnt/nix"));
});
