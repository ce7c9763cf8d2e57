//! Bad input: one clear line naming the path and the fix, a documented exit code, and
//! nothing written.

use std::path::Path;

use crate::support;
use crate::support::cmd::{assert_code, assert_ok, nix_seed, run, stderr, stdout, text, Seed};
use crate::support::fixture::{self, Spec};

fn small(dir: &Path) -> fixture::Fixture {
    fixture::build(
        dir,
        &Spec {
            paths: 5,
            big_file_bytes: 1024,
            ..Spec::default()
        },
    )
}

fn empty(p: &Path) -> bool {
    std::fs::read_dir(p).map(|mut d| d.next().is_none()).unwrap_or(true)
}

#[track_caller]
fn refused(out: &std::process::Output, code: i32, must_contain: &[&str]) {
    assert_code(out, code);
    let err = stderr(out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "expected one line:\n{}", text(out));
    for m in must_contain {
        assert!(err.contains(m), "missing {m:?} in:\n{err}");
    }
}

#[test]
fn missing_source() {
    let tmp = support::scratch();
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let src = tmp.path().join("nope");
    refused(
        &Seed::new(&src, &dst).output(),
        2,
        &[&src.display().to_string(), "does not exist", "--source"],
    );
    assert!(empty(&dst));
}

#[test]
fn source_without_store() {
    let tmp = support::scratch();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("var")).unwrap();
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    refused(&Seed::new(&src, &dst).output(), 2, &["has no store/", "Nix root"]);
    assert!(empty(&dst));
}

#[test]
fn missing_target_and_target_is_a_file() {
    let tmp = support::scratch();
    let fx = small(&tmp.path().join("src"));
    let missing = tmp.path().join("mnt/nix");
    refused(
        &Seed::new(&fx.root, &missing).output(),
        2,
        &[&missing.display().to_string(), "does not exist", "mount"],
    );
    assert!(!missing.exists());
    let file = tmp.path().join("file");
    std::fs::write(&file, b"x").unwrap();
    refused(&Seed::new(&fx.root, &file).output(), 2, &["is not a directory"]);
    assert_eq!(std::fs::read(&file).unwrap(), b"x");
}

roottest!(read_only_target, |tmp| {
    let fx = small(&tmp.path().join("src"));
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    // A read-only mount: what a pod gets with `readOnly: true` on the volume.
    let m = support::mounts::tmpfs(&dst, 16);
    assert!(std::process::Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(&dst)
        .status()
        .unwrap()
        .success());
    let out = Seed::new(&fx.root, &dst).on_a_mount_point().output();
    refused(&out, 2, &["read-only", "read-write"]);
    assert!(std::process::Command::new("mount")
        .args(["-o", "remount,rw"])
        .arg(&dst)
        .status()
        .unwrap()
        .success());
    assert!(empty(&dst));
    drop(m);
});

/// A dry run on a read-only target says what it would copy, then that the seed would
/// refuse and why, and exits as the seed would (2); not "it fits".
#[test]
fn a_dry_run_on_a_read_only_target_says_the_seed_would_refuse() {
    if !support::require_root("a_dry_run_on_a_read_only_target") {
        return;
    }
    let tmp = support::scratch();
    let fx = small(&tmp.path().join("src"));
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let m = support::mounts::tmpfs(&dst, 16);
    let remount = |how: &str| {
        assert!(std::process::Command::new("mount")
            .args(["-o", how])
            .arg(&dst)
            .status()
            .unwrap()
            .success());
    };
    remount("remount,ro");
    let out = Seed::new(&fx.root, &dst)
        .on_a_mount_point()
        .args(["--dry-run"])
        .output();
    remount("remount,rw");
    assert_code(&out, 2);
    let (o, e) = (stdout(&out), stderr(&out));
    assert!(e.contains("would copy "), "{}", text(&out));
    assert!(
        o.contains("would refuse") && o.contains("read-only") && !o.contains("it fits"),
        "{}",
        text(&out)
    );
    let last = e.lines().last().unwrap_or_default();
    assert!(
        last.contains("dry run: the seed would refuse") && last.contains("read-write"),
        "{}",
        text(&out)
    );
    assert!(empty(&dst));
    drop(m);
}

// The examples set `readOnlyRootFilesystem: true`: with the volume forgotten, the target
// directory sits on the read-only root filesystem, and the real problem is the missing
// mount, which the message must name.
roottest!(
    a_forgotten_volume_on_a_read_only_root_is_called_not_a_mount_point,
    |tmp| {
        let fx = small(&tmp.path().join("src"));
        let root = tmp.path().join("rootfs");
        let m = support::mounts::tmpfs(&root, 16);
        std::fs::create_dir_all(root.join("mnt/nix")).unwrap();
        assert!(std::process::Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&root)
            .status()
            .unwrap()
            .success());
        let dst = root.join("mnt/nix");
        let out = Seed::new(&fx.root, &dst).on_a_mount_point().output();
        refused(&out, 2, &["is not a mount point", &dst.display().to_string()]);
        drop(m);
    }
);

/// `verify` on a target that is not a seeded Nix root is the caller's mistake: exit 2,
/// as `status` and `seed` do, with the path and what it lacks.
#[test]
fn verify_on_a_missing_or_empty_target_exits_2() {
    let tmp = support::scratch();
    let missing = tmp.path().join("nope");
    let o = run(["verify", "--target", missing.to_str().unwrap()]);
    refused(&o, 2, &[&missing.display().to_string()]);
    let empty_dir = tmp.path().join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    let o = run(["verify", "--target", empty_dir.to_str().unwrap()]);
    refused(&o, 2, &[&empty_dir.display().to_string(), "no store/"]);
    std::fs::create_dir_all(empty_dir.join("store")).unwrap();
    std::fs::create_dir_all(empty_dir.join("var")).unwrap();
    let o = run(["verify", "--target", empty_dir.to_str().unwrap()]);
    refused(&o, 2, &["has no Nix database"]);
}

roottest!(target_not_writable_by_a_non_root_user, |tmp| {
    let fx = small(&tmp.path().join("src"));
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    std::os::unix::fs::chown(tmp.path(), Some(65534), Some(65534)).unwrap();
    let out = Seed::new(&fx.root, &dst).uid(65534).output();
    refused(&out, 2, &["not writable by uid 65534"]);
    assert!(empty(&dst));
});

#[test]
fn target_inside_source_and_source_inside_target() {
    let tmp = support::scratch();
    let fx = small(&tmp.path().join("src"));
    let inner = fx.root.join("var/seed-here");
    std::fs::create_dir(&inner).unwrap();
    refused(&Seed::new(&fx.root, &inner).output(), 2, &["is inside the source"]);
    assert!(empty(&inner));
    refused(&Seed::new(&fx.root, &fx.root).output(), 2, &["is the source itself"]);
    let outer = tmp.path();
    refused(&Seed::new(&fx.root, outer).output(), 2, &["is inside the target"]);
}

#[test]
fn target_not_a_mount_point_without_the_flag() {
    let tmp = support::scratch();
    let fx = small(&tmp.path().join("src"));
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let out = Seed::new(&fx.root, &dst).on_a_mount_point().output();
    refused(
        &out,
        2,
        &[
            "is not a mount point",
            "--allow-non-mountpoint",
            &dst.display().to_string(),
        ],
    );
    assert!(empty(&dst));
}

roottest!(a_mount_point_is_accepted_without_the_flag, |tmp| {
    let fx = small(&tmp.path().join("src"));
    let dst = tmp.path().join("dst");
    let m = support::mounts::tmpfs(&dst, 64);
    let out = Seed::new(&fx.root, &dst).on_a_mount_point().output();
    support::cmd::assert_ok(&out);
    support::compare::assert_store_equal(&fx.root, &dst);
    drop(m);
});

#[test]
fn unknown_flag_and_bad_values_are_usage_errors() {
    let tmp = support::scratch();
    let fx = small(&tmp.path().join("src"));
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let o = Seed::new(&fx.root, &dst).args(["--frobnicate"]).output();
    assert_code(&o, 2);
    assert!(stderr(&o).contains("--frobnicate"), "{}", text(&o));
    let o = Seed::new(&fx.root, &dst).args(["--lock-timeout", "soon"]).output();
    assert_code(&o, 2);
    assert!(
        stderr(&o).contains("soon") && stderr(&o).contains("30s"),
        "{}",
        text(&o)
    );
    let o = Seed::new(&fx.root, &dst).args(["--jobs", "0"]).output();
    assert_code(&o, 2);
    let o = run(["seed"]);
    assert_code(&o, 2);
    assert!(stderr(&o).contains("--target"), "{}", text(&o));
    assert!(empty(&dst));
}

#[test]
fn a_special_file_in_the_store_is_an_error_naming_it() {
    let tmp = support::scratch();
    let fx = small(&tmp.path().join("src"));
    let dir = fx
        .names
        .iter()
        .map(|n| fx.root.join("store").join(n))
        .find(|p| p.symlink_metadata().unwrap().is_dir())
        .unwrap();
    support::make_writable(&dir);
    let fifo_path = dir.join("a-fifo");
    let c = std::ffi::CString::new(fifo_path.as_os_str().as_encoded_bytes()).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let o = Seed::new(&fx.root, &dst).output();
    assert_code(&o, 1);
    let err = stderr(&o);
    assert!(
        err.contains(&fifo_path.display().to_string()) && err.contains("FIFO"),
        "{err}"
    );
    support::compare::assert_no_temp(&dst);
}

#[test]
fn env_vars_configure_every_flag() {
    let tmp = support::scratch();
    let fx = small(&tmp.path().join("src"));
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let o = nix_seed()
        .arg("seed")
        .env("NIX_SEED_SOURCE", &fx.root)
        .env("NIX_SEED_TARGET", &dst)
        .env("NIX_SEED_ALLOW_NON_MOUNTPOINT", "true")
        .env("NIX_SEED_JOBS", "3")
        .env("NIX_SEED_LOG_FORMAT", "json")
        .output()
        .unwrap();
    support::cmd::assert_ok(&o);
    assert!(support::cmd::stdout(&o).starts_with('{'), "{}", text(&o));
    support::compare::assert_store_equal(&fx.root, &dst);
    let o = nix_seed()
        .arg("seed")
        .env("NIX_SEED_TARGET", &dst)
        .env("NIX_SEED_LOCK_TIMEOUT", "forever")
        .output()
        .unwrap();
    assert_code(&o, 2);
}

#[test]
fn help_and_version() {
    let o = run(["--version"]);
    assert_code(&o, 0);
    // The version and the architecture the binary was built for (tests/it/arm64.rs checks
    // the aarch64 binary's).
    assert_eq!(
        support::cmd::stdout(&o),
        format!(
            "nix-seed {} ({}-linux)\n",
            env!("CARGO_PKG_VERSION"),
            std::env::consts::ARCH
        )
    );
    let o = run(["seed", "--help"]);
    assert_code(&o, 0);
    let h = support::cmd::stdout(&o);
    for flag in [
        "--source",
        "--target",
        "--jobs",
        "--lock-timeout",
        "--dry-run",
        "--allow-non-mountpoint",
        "--progress",
        "--log-format",
        "--quiet",
        "--verbose",
        "NIX_SEED_TARGET",
    ] {
        assert!(h.contains(flag), "seed --help lacks {flag}");
    }
}

/// `-v` is explained per subcommand: what it adds there, or that it adds nothing.
#[test]
fn verbose_is_explained_per_subcommand() {
    let mut seen = std::collections::BTreeSet::new();
    for (cmd, says) in [
        ("seed", "store path copied"),
        ("status", "missing"),
        ("prune", "collection would then delete"),
        ("verify", "one line per problem"),
        ("images", "everything it knows"),
    ] {
        let o = run([cmd, "--help"]);
        assert_code(&o, 0);
        let h = support::cmd::stdout(&o)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let at = h
            .find("-v, --verbose")
            .unwrap_or_else(|| panic!("{cmd} --help lacks -v"));
        let line: String = h[at..].chars().take(120).collect();
        assert!(line.contains(says), "{cmd}: {line}");
        assert!(
            seen.insert(line.clone()),
            "{cmd} repeats another subcommand's -v help: {line}"
        );
    }
}

roottest!(
    a_target_too_small_is_refused_before_copying_naming_bytes_needed_and_free,
    |tmp| {
        let fx = fixture::build(
            &tmp.path().join("src"),
            &Spec {
                paths: 40,
                big_file_bytes: 8 << 20,
                ..Spec::default()
            },
        );
        let dst = tmp.path().join("dst");
        let m = support::mounts::tmpfs(&dst, 2);
        let o = Seed::new(&fx.root, &dst).on_a_mount_point().output();
        refused(
            &o,
            1,
            &[&dst.display().to_string(), "not enough space", "need", "is free"],
        );
        // Nothing but nix-seed's own lock directory and Nix's gc.lock (the check runs under
        // both locks; gc.lock must exist to be held).
        let mut left: Vec<_> = std::fs::read_dir(&dst)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        left.sort();
        assert_eq!(
            left,
            [std::ffi::OsString::from(".nix-seed"), std::ffi::OsString::from("var")],
            "nothing may be written when it cannot fit"
        );
        let var: Vec<_> = walkdir::WalkDir::new(dst.join("var"))
            .min_depth(1)
            .into_iter()
            .map(|e| e.unwrap().path().strip_prefix(&dst).unwrap().to_path_buf())
            .collect();
        assert_eq!(
            var,
            [
                std::path::PathBuf::from("var/nix"),
                std::path::PathBuf::from("var/nix/gc.lock")
            ]
        );
        // The lock was released: with room, the next run does the job.
        assert!(std::process::Command::new("mount")
            .args(["-o", "remount,size=64m"])
            .arg(&dst)
            .status()
            .unwrap()
            .success());
        let o = Seed::new(&fx.root, &dst)
            .on_a_mount_point()
            .args(["--lock-timeout", "2s"])
            .output();
        support::cmd::assert_ok(&o);
        support::compare::assert_store_equal(&fx.root, &dst);
        drop(m);
    }
);

fn forty_paths_and_a_big_file(dir: &Path) -> fixture::Fixture {
    fixture::build(
        dir,
        &Spec {
            paths: 40,
            big_file_bytes: 1 << 20,
            ..Spec::default()
        },
    )
}

roottest!(
    a_target_short_of_inodes_is_refused_before_copying_and_dry_run_says_so,
    |tmp| {
        let fx = forty_paths_and_a_big_file(&tmp.path().join("src"));
        let dst = tmp.path().join("dst");
        // Space enough by bytes, but few inodes.
        let _m = support::mounts::tmpfs_with(&dst, "size=256m,nr_inodes=300,mode=0755");
        let dry = Seed::new(&fx.root, &dst).args(["--dry-run"]).output();
        // The dry run ends as the seed would: exit 1, after saying what it would copy.
        assert_code(&dry, 1);
        assert!(
            stdout(&dry).contains("would NOT fit") && stdout(&dry).contains("inodes"),
            "{}",
            text(&dry)
        );
        assert!(
            stderr(&dry).contains("dry run: the seed would fail: not enough space"),
            "{}",
            text(&dry)
        );
        let o = Seed::new(&fx.root, &dst).output();
        refused(
            &o,
            1,
            &[&dst.display().to_string(), "not enough space", "inodes", "are free"],
        );
        assert!(!dst.join("store").exists(), "nothing copied");
    }
);

roottest!(
    a_target_that_fills_up_mid_copy_fails_clearly_and_leaves_nothing_half_visible,
    |tmp| {
        let fx = forty_paths_and_a_big_file(&tmp.path().join("src"));
        let dst = tmp.path().join("dst");
        let _m = support::mounts::tmpfs_with(&dst, "size=64m,mode=0755");
        // Stopped right after the space check passed; then another writer fills the disk.
        let child = Seed::new(&fx.root, &dst).failpoint("space-checked=stop").spawn();
        support::wait_stopped(child.id());
        let _ = std::process::Command::new("dd")
            .args(["if=/dev/zero", "bs=1M"])
            .arg(format!("of={}", dst.join("filler").display()))
            .stderr(std::process::Stdio::null())
            .status();
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGCONT,
        )
        .unwrap();
        let o = child.wait_with_output().unwrap();
        assert_code(&o, 1);
        let err = stderr(&o);
        assert!(
            err.contains("not enough space")
                && err.contains("filled up while copying")
                && err.contains("No space left"),
            "{}",
            text(&o)
        );
        support::compare::assert_no_temp(&dst);
        // Every store path that is visible is complete.
        for e in std::fs::read_dir(dst.join("store")).unwrap() {
            let name = e.unwrap().file_name();
            let (s, d) = (fx.root.join("store").join(&name), dst.join("store").join(&name));
            let same = std::process::Command::new("diff")
                .arg("-r")
                .arg("--no-dereference")
                .arg(&s)
                .arg(&d)
                .status()
                .unwrap();
            assert!(same.success(), "{} is visible but differs", d.display());
        }
    }
);

/// Usage errors speak the log format the caller asked for, and a bad value from the
/// environment names the variable (a pod spec sets `env:`, not flags).
#[test]
fn usage_errors_follow_the_log_format_and_name_the_variable() {
    let o = nix_seed()
        .args(["seed", "--target", "/tmp"])
        .env("NIX_SEED_LOCK_STALE", "soon")
        .output()
        .unwrap();
    assert_code(&o, 2);
    assert!(stderr(&o).contains("NIX_SEED_LOCK_STALE"), "{}", text(&o));
    let o = run(["seed", "--target", "/tmp", "--log-format", "json", "--bogus"]);
    assert_code(&o, 2);
    let err = stderr(&o);
    assert_eq!(err.lines().count(), 1, "{err}");
    let v: serde_json::Value = serde_json::from_str(err.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {err}"));
    assert_eq!(v["level"], "error");
    assert!(v["msg"].as_str().unwrap().contains("--bogus"), "{err}");
    let o = nix_seed()
        .args(["status", "--target", "/tmp", "--jobs", "3"])
        .env("NIX_SEED_LOG_FORMAT", "json")
        .output()
        .unwrap();
    assert_code(&o, 2);
    assert!(
        serde_json::from_str::<serde_json::Value>(stderr(&o).trim()).is_ok(),
        "{}",
        text(&o)
    );
    // -v is a switch: -vv says so instead of silently meaning -v.
    let o = run(["status", "--target", "/tmp", "-vv"]);
    assert_code(&o, 2);
    assert!(stderr(&o).contains("--verbose"), "{}", text(&o));
}

/// A target database that is not one (garbage, or empty) is named, with what to do, and
/// refused before anything is written: exit 2.
#[test]
fn a_corrupt_or_empty_target_database_is_named_and_refused() {
    let tmp = support::scratch();
    let fx = small(&tmp.path().join("src"));
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    Seed::new(&fx.root, &dst).ok();
    let db = dst.join("var/nix/db/db.sqlite");
    for (what, body, says) in [
        ("garbage", vec![0x5au8; 8192], "corrupt or not an SQLite database"),
        ("empty", vec![], "not a Nix database"),
    ] {
        std::fs::write(&db, &body).unwrap();
        let o = Seed::new(&fx.root, &dst).args(["--recheck"]).output();
        refused(&o, 2, &[&db.display().to_string(), says, "nothing was written"]);
        assert_eq!(std::fs::read(&db).unwrap(), body, "{what}: left as it was");
    }
}

/// A boolean variable takes 1/0, true/false, yes/no, on/off; any other word is refused
/// naming the variable (`NIX_SEED_DRY_RUN=disabled` used to run a dry run), and nothing
/// is written.
#[test]
fn a_boolean_variable_with_another_word_is_refused_naming_it() {
    let tmp = support::scratch();
    let fx = small(&tmp.path().join("src"));
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    for (var, value) in [
        ("NIX_SEED_DRY_RUN", "disabled"),
        ("NIX_SEED_VERIFY", "maybe"),
        ("NIX_SEED_RECHECK", "2"),
        ("NIX_SEED_ALLOW_NON_MOUNTPOINT", "y"),
        ("NIX_SEED_QUIET", "loud"),
    ] {
        let o = nix_seed()
            .args(["seed", "--source"])
            .arg(&fx.root)
            .arg("--target")
            .arg(&dst)
            .env("NIX_SEED_ALLOW_NON_MOUNTPOINT", "1")
            .env(var, value)
            .output()
            .unwrap();
        assert_code(&o, 2);
        let err = stderr(&o);
        assert!(
            err.contains(&format!("invalid value '{value}'")) && err.contains(&format!("environment variable {var}")),
            "{var}={value}: {}",
            text(&o)
        );
        assert!(empty(&dst), "{var}={value} wrote to the target");
    }
    let o = nix_seed()
        .args(["prune", "--target"])
        .arg(&dst)
        .args(["--keep-last", "1"])
        .env("NIX_SEED_DRY_RUN", "disabled")
        .output()
        .unwrap();
    assert_code(&o, 2);
    assert!(
        stderr(&o).contains("environment variable NIX_SEED_DRY_RUN"),
        "{}",
        text(&o)
    );
    // The accepted words, in any case: OFF is not a dry run, so the seed is done.
    let o = Seed::new(&fx.root, &dst)
        .env("NIX_SEED_DRY_RUN", "OFF")
        .env("NIX_SEED_VERIFY", "Yes")
        .output();
    assert_ok(&o);
    support::compare::assert_store_equal(&fx.root, &dst);
}

/// Error lines are prose: no runs of spaces (a format string broken across lines without
/// a `\` continuation printed `pods              mount`).
#[test]
fn error_lines_have_no_runs_of_spaces() {
    let tmp = support::scratch();
    let missing = tmp.path().join("missing");
    let empty_dir = tmp.path().join("empty");
    std::fs::create_dir(&empty_dir).unwrap();
    let m = missing.to_str().unwrap();
    let e = empty_dir.to_str().unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["images", "--target", m],
        vec!["images", "--target", e],
        vec!["prune", "--target", m, "--keep-last", "1"],
        vec!["prune", "--target", e, "--keep-last", "1"],
        vec!["prune", "--target", e],
        vec!["prune", "--target", e, "--keep-last", "0"],
        vec!["prune", "--target", e, "--keep-last", "1", "--image", "x"],
        vec!["prune", "--target", e, "--image", "0123"],
        vec!["status", "--target", m],
        vec!["verify", "--target", m],
        vec!["verify", "--target", e],
        vec!["seed", "--source", m, "--target", e],
        vec!["seed", "--source", e, "--target", e],
        vec!["install", "/nonexistent/dir/nix-seed"],
    ];
    for args in cases {
        let o = run(&args);
        assert!(!o.status.success(), "{args:?} succeeded:\n{}", text(&o));
        let err = stderr(&o);
        assert!(!err.trim().is_empty(), "{args:?}: no error line");
        assert!(!err.contains("  "), "{args:?}: a run of spaces in:\n{err}");
    }
}
