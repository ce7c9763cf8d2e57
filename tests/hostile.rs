//! A hostile target: other pods with write access plant symlinks where nix-seed is about
//! to write. nix-seed never follows them: it writes nothing outside the target (a canary
//! directory next to it stays byte- and inode-identical) and either skips the entry or
//! fails with a clear error naming it.

mod support;

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Output;

use support::cmd::{seed, stderr, text};
use support::compare::{assert_unchanged, snapshot};
use support::fixture::{self, Spec};

struct Case {
    tmp: support::Scratch,
    fx: fixture::Fixture,
    dst: PathBuf,
    canary: PathBuf,
}

fn case(seeded_first: bool) -> Case {
    let tmp = support::scratch();
    let fx = fixture::build(
        &tmp.path().join("src"),
        &Spec {
            paths: 20,
            ..Spec::default()
        },
    );
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let canary = tmp.path().join("canary");
    std::fs::create_dir_all(canary.join("store")).unwrap();
    std::fs::write(canary.join("file"), b"do not touch").unwrap();
    std::fs::write(canary.join("store/x"), b"mine").unwrap();
    if seeded_first {
        support::cmd::assert_ok(&seed(&fx.root, &dst, &[]));
        // Force the slow path next time.
        std::fs::remove_dir_all(dst.join(".nix-seed/images")).unwrap();
        fixture::add_paths(&fx.root, 2, 4242);
    }
    Case { tmp, fx, dst, canary }
}

/// Plant `at` → `to`, run a seed, and check the canary and the outcome.
fn planted(c: &Case, at: &Path, to: &Path) -> Output {
    if let Some(p) = at.parent() {
        std::fs::create_dir_all(p).unwrap();
    }
    let _ = std::fs::remove_dir_all(at);
    let _ = std::fs::remove_file(at);
    symlink(to, at).unwrap();
    let before = snapshot(&c.canary);
    let out = seed(&c.fx.root, &c.dst, &[]);
    assert_unchanged(&before, &snapshot(&c.canary), |_| true);
    assert!(c.canary.join("file").exists() && std::fs::read_dir(&c.canary).unwrap().count() == 2);
    let code = out.status.code();
    assert!(
        code == Some(0) || code == Some(1),
        "neither success nor a clean failure:\n{}",
        text(&out)
    );
    if code == Some(1) {
        let err = stderr(&out);
        let line = err.lines().find(|l| l.contains("error")).unwrap_or("");
        assert!(
            line.contains(&c.dst.display().to_string()),
            "the error must name the path:\n{err}"
        );
    }
    let _ = &c.tmp;
    out
}

#[test]
fn a_symlink_at_a_store_path_name_is_never_followed() {
    let c = case(false);
    let name = &c.fx.names[0];
    let out = planted(&c, &c.dst.join("store").join(name), &c.canary);
    // Unregistered and not what the image registered: replaced by the real copy.
    support::cmd::assert_ok(&out);
    assert!(
        !c.dst
            .join("store")
            .join(name)
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink()
            || std::fs::read_link(c.dst.join("store").join(name)).unwrap() != c.canary
    );
}

#[test]
fn a_symlink_at_the_state_dir_or_the_lock_file_fails_clearly() {
    let c = case(false);
    let out = planted(&c, &c.dst.join(".nix-seed"), &c.canary);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let c = case(false);
    let out = planted(&c, &c.dst.join(".nix-seed/lock"), &c.canary.join("file"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(stderr(&out).contains("lock file"), "{}", text(&out));
}

#[test]
fn a_symlink_at_store_or_var_fails_clearly() {
    let c = case(false);
    let out = planted(&c, &c.dst.join("store"), &c.canary.join("store"));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let c = case(false);
    let out = planted(&c, &c.dst.join("var"), &c.canary);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

#[test]
fn a_symlink_at_the_database_dir_or_the_gc_roots_fails_clearly() {
    let c = case(true);
    let out = planted(&c, &c.dst.join("var/nix/db"), &c.canary);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let c = case(true);
    let out = planted(&c, &c.dst.join("var/nix/gcroots"), &c.canary);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
}

#[test]
fn symlinks_at_temporary_names_are_removed_not_followed() {
    let c = case(false);
    std::fs::create_dir_all(c.dst.join("store")).unwrap();
    for i in 0..3 {
        symlink(
            &c.canary,
            c.dst
                .join("store")
                .join(format!(".nix-seed-tmp-{}-{i}-x", std::process::id())),
        )
        .unwrap();
    }
    let out = planted(&c, &c.dst.join(".nix-seed-tmp-1-0-var"), &c.canary);
    support::cmd::assert_ok(&out);
    support::compare::assert_no_temp(&c.dst);
    support::compare::assert_store_equal(&c.fx.root, &c.dst);
}
