//! The README's promises about one seed: an exact copy of every missing store path,
//! var/ without runtime files, nothing else touched, and a second run that does nothing.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::support;
use crate::support::cmd::{assert_code, assert_ok, copied_events, status, stderr, stdout, Seed};
use crate::support::compare::{assert_no_temp, assert_store_equal, assert_unchanged, assert_var_seeded, snapshot};
use crate::support::fixture::{self, Spec};

fn build(dir: &Path, paths: usize) -> fixture::Fixture {
    fixture::build(
        dir,
        &Spec {
            paths,
            ..Spec::default()
        },
    )
}

#[test]
fn first_seed_is_an_exact_copy_and_var_has_no_runtime_files() {
    let tmp = support::scratch();
    let fx = build(&tmp.path().join("src"), 1000);
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();

    let out = Seed::new(&fx.root, &dst)
        .args(["--jobs", "8", "--progress", "log"])
        .output();
    assert_ok(&out);
    assert_store_equal(&fx.root, &dst);
    assert_var_seeded(&fx.root, &dst);
    assert_no_temp(&dst);
    let summary = stdout(&out);
    assert!(
        summary.contains(&format!("{} store paths copied", fx.names.len())),
        "{summary}"
    );
    // `.links` is Nix's optimiser index, not a store path: not copied.
    assert!(!dst.join("store/.links").exists());
}

#[test]
fn second_run_copies_nothing_and_takes_no_lock() {
    let tmp = support::scratch();
    let fx = build(&tmp.path().join("src"), 50);
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    Seed::new(&fx.root, &dst).ok();

    let before = snapshot(&dst);
    let out = Seed::new(&fx.root, &dst).args(["-v", "--log-format", "json"]).output();
    assert_ok(&out);
    assert!(copied_events(&stderr(&out)).is_empty(), "{}", stderr(&out));
    assert!(stdout(&out).contains("\"copied\":0"), "{}", stdout(&out));
    let after = snapshot(&dst);
    // Not even the lock file is touched on the fast path.
    assert_unchanged(&before, &after, |_| true);
    assert_code(&status(&fx.root, &dst), 0);
}

#[test]
fn new_store_paths_copy_exactly_those_and_leave_existing_entries_untouched() {
    let tmp = support::scratch();
    let fx = build(&tmp.path().join("src"), 60);
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    Seed::new(&fx.root, &dst).ok();

    let added: Vec<OsString> = fixture::add_paths(&fx.root, 25, 99);
    let st = status(&fx.root, &dst);
    assert_code(&st, 1);
    assert!(stdout(&st).contains("missing: 25 store paths"), "{}", stdout(&st));

    let before = snapshot(&dst.join("store"));
    let out = Seed::new(&fx.root, &dst).args(["-v", "--log-format", "json"]).output();
    assert_ok(&out);
    let mut copied = copied_events(&stderr(&out));
    copied.sort();
    let mut want: Vec<String> = added.iter().map(|n| n.to_string_lossy().into_owned()).collect();
    want.sort();
    assert_eq!(copied, want, "exactly the new store paths are copied");
    assert_store_equal(&fx.root, &dst);
    let after = snapshot(&dst.join("store"));
    let added_bytes: Vec<Vec<u8>> = added.iter().map(|n| n.as_bytes().to_vec()).collect();
    // Every entry that existed before (other than the store directory itself, whose
    // mtime moves when names are added) is byte-for-byte and inode-for-inode the same.
    assert_unchanged(&before, &after, |rel| {
        !rel.is_empty() && !added_bytes.iter().any(|a| rel.starts_with(a))
    });
    assert_code(&status(&fx.root, &dst), 0);
}

#[test]
fn a_registered_store_path_in_the_target_is_never_replaced() {
    let tmp = support::scratch();
    let fx = build(&tmp.path().join("src"), 20);
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    Seed::new(&fx.root, &dst).ok();
    // The target's own (registered) copy of a path is what the target says it is, even
    // if it differs from the image's: nix-seed never modifies it.
    let name = fx
        .names
        .iter()
        .find(|n| fx.root.join("store").join(n).is_dir())
        .unwrap();
    let p = dst.join("store").join(name);
    support::make_writable(&p);
    std::fs::write(p.join("planted-by-another-pod"), b"x").unwrap();
    std::fs::remove_dir_all(dst.join(".nix-seed/images")).unwrap(); // force the slow path
    let before = snapshot(&dst.join("store"));
    let out = Seed::new(&fx.root, &dst).args(["-v"]).output();
    assert_ok(&out);
    assert!(!stderr(&out).contains("replacing"), "{}", stderr(&out));
    assert_unchanged(&before, &snapshot(&dst.join("store")), |rel| !rel.is_empty());
    assert_no_temp(&dst);
}

#[test]
fn a_present_but_unregistered_path_that_differs_is_replaced_and_one_that_matches_is_kept() {
    let tmp = support::scratch();
    let fx = build(&tmp.path().join("src"), 20);
    let dst = tmp.path().join("dst");
    std::fs::create_dir_all(dst.join("store")).unwrap();
    // What a plain `cp` (or a run killed between copy and register) leaves: paths on
    // disk that no database registers. One is intact, one is not.
    let good = fx
        .names
        .iter()
        .find(|n| fx.root.join("store").join(n).is_dir())
        .unwrap();
    let bad = fx
        .names
        .iter()
        .find(|n| *n != good && !fx.root.join("store").join(n).is_dir())
        .unwrap();
    let cp = |n: &OsString| {
        assert!(std::process::Command::new("cp")
            .arg("-a")
            .arg(fx.root.join("store").join(n))
            .arg(dst.join("store"))
            .status()
            .unwrap()
            .success())
    };
    cp(good);
    std::fs::write(dst.join("store").join(bad), b"not what the image registered").unwrap();
    let good_ino = std::fs::symlink_metadata(dst.join("store").join(good)).unwrap().ino();

    let out = Seed::new(&fx.root, &dst).output();
    assert_ok(&out);
    assert_eq!(
        std::fs::symlink_metadata(dst.join("store").join(good)).unwrap().ino(),
        good_ino,
        "an intact copy is kept"
    );
    let err = stderr(&out);
    assert!(
        err.contains(&bad.to_string_lossy().to_string()) && err.contains("replacing"),
        "{err}"
    );
    assert_eq!(err.matches("replacing").count(), 1, "{err}");
    assert_store_equal(&fx.root, &dst);
    assert_no_temp(&dst);
}

#[test]
fn var_is_merged_without_overwriting_and_conflicts_are_reported() {
    let tmp = support::scratch();
    let fx = build(&tmp.path().join("src"), 20);
    let dst = tmp.path().join("dst");
    std::fs::create_dir_all(dst.join("var/nix/profiles")).unwrap();
    std::os::unix::fs::symlink("default-7-link", dst.join("var/nix/profiles/default")).unwrap();
    std::fs::write(dst.join("var/nix/mine"), b"keep me").unwrap();

    // The merge as it is with `--profiles keep` (profiles follow the image by default:
    // tests/it/profiles.rs).
    let out = Seed::new(&fx.root, &dst).args(["--profiles", "keep"]).output();
    assert_ok(&out);
    assert_eq!(
        std::fs::read_link(dst.join("var/nix/profiles/default")).unwrap(),
        Path::new("default-7-link")
    );
    assert_eq!(std::fs::read(dst.join("var/nix/mine")).unwrap(), b"keep me");
    // The entries the target lacked were added.
    assert!(dst.join("var/nix/profiles/default-1-link").symlink_metadata().is_ok());
    assert!(dst.join("var/nix/db/db.sqlite").exists());
    assert!(!dst.join("var/nix/daemon-socket").exists());
    assert!(!dst.join("var/nix/temproots").exists());
    let err = stderr(&out);
    let conflicts: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("warning") && l.contains("kept the target's"))
        .collect();
    assert_eq!(conflicts.len(), 1, "{err}");
    assert!(
        conflicts[0].contains("var/nix/profiles/default") && conflicts[0].contains("default-7-link"),
        "{err}"
    );
}

#[test]
fn dry_run_changes_nothing() {
    let tmp = support::scratch();
    let fx = build(&tmp.path().join("src"), 20);
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let out = Seed::new(&fx.root, &dst).args(["--dry-run"]).output();
    assert_ok(&out);
    assert_eq!(
        std::fs::read_dir(&dst).unwrap().count(),
        0,
        "dry run wrote into the target"
    );
    let err = stderr(&out);
    for n in &fx.names {
        let line = format!("would copy {}", n.to_string_lossy());
        assert!(err.lines().any(|l| l.ends_with(&line)), "no `{line}` in:\n{err}");
    }
    assert!(
        stdout(&out).contains(&format!(
            "would copy {} of {} store paths (",
            fx.names.len(),
            fx.names.len()
        )) && stdout(&out).contains("it fits"),
        "no size line in:\n{err}"
    );
    assert!(stdout(&out).contains(&format!("would copy {} of {}", fx.names.len(), fx.names.len())));
}

#[test]
fn summary_goes_to_the_termination_log_and_json_lines_parse() {
    let tmp = support::scratch();
    let fx = build(&tmp.path().join("src"), 10);
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let term = tmp.path().join("termination-log");
    std::fs::write(&term, b"").unwrap();
    let out = Seed::new(&fx.root, &dst)
        .args(["--log-format", "json", "--progress", "log", "-v"])
        .env("NIX_SEED_TERMINATION_LOG", &term)
        .env("NIX_SEED_PROGRESS_INTERVAL", "10ms")
        .output();
    assert_ok(&out);
    let t = std::fs::read_to_string(&term).unwrap();
    assert!(
        t.starts_with("nix-seed: seeded ") && t.contains("store paths copied"),
        "{t}"
    );
    for line in stderr(&out).lines().chain(stdout(&out).lines()) {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["ts"].is_string() && v["level"].is_string() && v["msg"].is_string(),
            "not a log line: {line}"
        );
    }
}

/// `--progress bar` where stderr is not a terminal (a log, a pipe): plain progress lines,
/// not silence.
#[test]
fn a_bar_without_a_terminal_falls_back_to_progress_lines() {
    let tmp = support::scratch();
    let fx = build(&tmp.path().join("src"), 40);
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let out = Seed::new(&fx.root, &dst)
        .args(["--progress", "bar", "--jobs", "1"])
        .env("NIX_SEED_PROGRESS_INTERVAL", "1ms")
        .output();
    assert_ok(&out);
    let err = stderr(&out);
    assert!(err.contains("copying 40 store paths"), "the start line:\n{err}");
    assert!(
        err.contains(" with 1 job (--jobs)"),
        "the start line names the jobs:\n{err}"
    );
    assert!(err.contains("progress: "), "no progress line:\n{err}");
}

/// A seeder killed while it held the target database's dotfile lock leaves
/// `db.sqlite.lock` behind (and its record `.nix-seed/db-lock`): the next seeder removes it
/// and finishes. A lock directory without that record is some Nix process's: waited for,
/// with a line naming it, never removed.
#[test]
fn a_dotfile_lock_left_by_a_killed_seeder_is_removed_and_a_foreign_one_is_waited_for() {
    let tmp = support::scratch();
    let fx = build(&tmp.path().join("src"), 20);
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    Seed::new(&fx.root, &dst).ok();
    let lock = dst.join("var/nix/db/db.sqlite.lock");

    // Someone else's lock: waited for, named, left alone; the seed gives up (exit 3, a
    // lock timeout).
    std::fs::create_dir(&lock).unwrap();
    let added = support::fixture::add_paths(&fx.root, 3, 77);
    let out = Seed::new(&fx.root, &dst).args(["--lock-timeout", "6s"]).output();
    assert_code(&out, 3);
    let err = stderr(&out);
    assert!(err.contains("db.sqlite.lock") && err.contains("rmdir it"), "{err}");
    assert!(lock.exists(), "a lock nix-seed did not leave is never removed");

    // Now as if a seeder had been killed inside its database window.
    std::fs::write(dst.join(".nix-seed/db-lock"), b"pid=1\n").unwrap();
    let out = Seed::new(&fx.root, &dst).args(["--lock-timeout", "30s"]).output();
    assert_ok(&out);
    assert!(
        stderr(&out).contains("removed") && stderr(&out).contains("db.sqlite.lock"),
        "{}",
        stderr(&out)
    );
    assert!(!lock.exists());
    assert!(
        !dst.join(".nix-seed/db-lock").exists(),
        "the record goes with the seed that wrote it"
    );
    let rows = support::compare::db_rows(&dst.join("var/nix/db/db.sqlite"));
    for n in &added {
        assert!(
            rows.iter().any(|r| r.contains(&*n.to_string_lossy())),
            "{n:?} not registered"
        );
    }
}

/// The summary as JSON: the last line on stdout.
fn summary_json(out: &std::process::Output) -> serde_json::Value {
    let line = stdout(out).lines().last().unwrap_or_default().to_string();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

/// A dry run's JSON summary counts what would be copied (not "0 files, all present"),
/// and its line says whether it would fit.
#[test]
fn a_dry_run_in_json_counts_what_would_be_copied() {
    let tmp = support::scratch();
    let fx = build(&tmp.path().join("src"), 20);
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let out = Seed::new(&fx.root, &dst)
        .args(["--dry-run", "--log-format", "json"])
        .output();
    assert_ok(&out);
    let v = summary_json(&out);
    assert_eq!(v["dry_run"], true);
    assert_eq!(v["store_paths"], 20);
    assert_eq!(v["already_present"], 0, "{v}");
    assert!(
        v["files"].as_u64().unwrap() > 20 && v["bytes"].as_u64().unwrap() > 0,
        "{v}"
    );
    assert!(
        v["msg"].as_str().unwrap().contains("would copy 20 of 20 store paths"),
        "{v}"
    );
    assert!(v["msg"].as_str().unwrap().contains("it fits"), "{v}");
}

/// One of a thing is singular: "1 store path", never "1 store paths" or "1 files".
#[test]
fn one_store_path_is_counted_in_the_singular() {
    let tmp = support::scratch();
    let fx = build(&tmp.path().join("src"), 1);
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let out = Seed::new(&fx.root, &dst).output();
    assert_ok(&out);
    let all = format!("{}{}", stdout(&out), stderr(&out));
    assert!(
        all.contains("1 store path copied") || all.contains("1 store path ("),
        "{all}"
    );
    for wrong in ["1 store paths", "1 files", "1 problems", "1 unregistered paths"] {
        assert!(!all.contains(&format!(" {wrong}")), "{wrong:?} in:\n{all}");
    }
}

/// The summary's rate counts the time spent copying, not the time spent waiting for a
/// lock (here a garbage collection's gc.lock, held for 2 s).
#[test]
fn the_rate_counts_copying_time_not_lock_waits() {
    use std::os::fd::AsRawFd;
    let tmp = support::scratch();
    let fx = build(&tmp.path().join("src"), 20);
    let dst = tmp.path().join("dst");
    std::fs::create_dir_all(dst.join("var/nix")).unwrap();
    let gc = std::fs::File::create(dst.join("var/nix/gc.lock")).unwrap();
    assert_eq!(unsafe { libc::flock(gc.as_raw_fd(), libc::LOCK_EX) }, 0);
    let release = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_secs(2));
        drop(gc);
    });
    let out = Seed::new(&fx.root, &dst).args(["--log-format", "json"]).output();
    release.join().unwrap();
    assert_ok(&out);
    let v = summary_json(&out);
    let (total, copying) = (v["seconds"].as_f64().unwrap(), v["copy_seconds"].as_f64().unwrap());
    assert!(total >= 1.9, "the seed waited for gc.lock: {v}");
    assert!(
        copying > 0.0 && copying < total - 1.5,
        "copy_seconds {copying} of {total}: {v}"
    );
    assert!(v["msg"].as_str().unwrap().contains("/s while copying"), "{v}");
}

/// `--verify` counts the store paths that do not match, not their problem lines: one
/// corrupt store path (its NAR hash and its size differ: two lines) is "1 store path".
#[test]
fn verify_counts_store_paths_not_problem_lines() {
    let tmp = support::scratch();
    let fx = build(&tmp.path().join("src"), 10);
    // A regular file of one store path, linked nowhere else, rewritten longer.
    let file = walkdir_files(&fx.store())
        .into_iter()
        .find(|f| std::fs::symlink_metadata(f).is_ok_and(|m| m.is_file() && m.nlink() == 1 && m.len() > 0))
        .expect("a regular file in the fixture");
    let mode = std::fs::metadata(&file).unwrap().permissions();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(
        &file,
        b"corrupted, and longer than it was: the NAR size differs too\n".repeat(100),
    )
    .unwrap();
    std::fs::set_permissions(&file, mode).unwrap();
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let out = Seed::new(&fx.root, &dst).args(["--verify"]).output();
    assert_code(&out, 1);
    let err = stderr(&out);
    assert!(
        err.lines().filter(|l| l.contains("--verify:")).count() >= 2,
        "expected several problem lines for the one path:\n{err}"
    );
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("1 store path in ") && last.contains("does not match its registration"),
        "{err}"
    );
}

/// Every file below `dir`, symlinks not followed.
fn walkdir_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&d).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            let m = std::fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                todo.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// A timeout on the database's lock says what becomes of the copies only when there are
/// some: before the copy, "nothing was copied or registered"; after it, the next run
/// registers what was copied.
#[test]
fn a_database_lock_timeout_says_what_was_copied() {
    let tmp = support::scratch();
    let fx = build(&tmp.path().join("src"), 20);
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    Seed::new(&fx.root, &dst).ok();
    let lock = dst.join("var/nix/db/db.sqlite.lock");
    let added = support::fixture::add_paths(&fx.root, 3, 78);

    // Held before the seed starts: it gives up before copying anything.
    std::fs::create_dir(&lock).unwrap();
    let out = Seed::new(&fx.root, &dst).args(["--lock-timeout", "3s"]).output();
    assert_code(&out, 3);
    let err = stderr(&out);
    assert!(
        err.contains("nothing was copied or registered") && !err.contains("registers what was copied"),
        "{err}"
    );
    assert!(added.iter().all(|n| !dst.join("store").join(n).exists()), "{err}");
    std::fs::remove_dir(&lock).unwrap();

    // Taken while the seed is stopped after copying: the copies wait for the next run.
    let child = Seed::new(&fx.root, &dst)
        .args(["--lock-timeout", "3s"])
        .failpoint("copied=stop")
        .spawn();
    support::wait_stopped(child.id());
    std::fs::create_dir(&lock).unwrap();
    crate::support::cont(child.id());
    let out = child.wait_with_output().unwrap();
    assert_code(&out, 3);
    assert!(
        stderr(&out).contains("the next run registers what was copied"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir(&lock).unwrap();
    Seed::new(&fx.root, &dst).ok();
    assert_store_equal(&fx.root, &dst);
}

/// `status` warns when the pods' nix.conf lets Nix collect garbage on its own (min-free > 0):
/// Nix's collector is unsafe on a shared store. The file is `--nix-conf`, `NIX_SEED_NIX_CONF`,
/// or where Nix looks (`$NIX_CONF_DIR/nix.conf`); the warning changes nothing else.
#[test]
fn status_warns_when_the_nix_conf_enables_automatic_gc() {
    let tmp = support::scratch();
    let fx = build(&tmp.path().join("src"), 5);
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    Seed::new(&fx.root, &dst).ok();
    let conf_dir = tmp.path().join("etc-nix");
    std::fs::create_dir(&conf_dir).unwrap();
    let conf = conf_dir.join("nix.conf");
    let status_with = |args: &[&std::ffi::OsStr], env: &[(&str, &std::ffi::OsStr)]| {
        let mut c = support::cmd::nix_seed();
        c.arg("status").arg("--source").arg(&fx.root).arg("--target").arg(&dst);
        c.args(args).env_remove("NIX_CONF_DIR");
        for (k, v) in env {
            c.env(k, v);
        }
        c.output().unwrap()
    };
    let conf_arg: [&std::ffi::OsStr; 2] = ["--nix-conf".as_ref(), conf.as_os_str()];
    let warned = |o: &std::process::Output| {
        let err = stderr(o);
        err.contains("min-free = 2G")
            && err.contains(&format!("{}:2", conf.display()))
            && err.contains("min-free = 0")
            && err.contains("nix-seed gc")
    };

    std::fs::write(
        &conf,
        "use-sqlite-wal = false\nmin-free = 2G  # when the disk looks full\n",
    )
    .unwrap();
    for o in [
        status_with(&conf_arg, &[]),
        status_with(&[], &[("NIX_SEED_NIX_CONF", conf.as_os_str())]),
        status_with(&[], &[("NIX_CONF_DIR", conf_dir.as_os_str())]),
    ] {
        assert_code(&o, 0);
        assert!(warned(&o), "{}", support::cmd::text(&o));
        assert!(stdout(&o).contains("seeded"), "{}", support::cmd::text(&o));
    }
    let json = status_with(
        &[&conf_arg[..], &["--log-format".as_ref(), "json".as_ref()]].concat(),
        &[],
    );
    assert_code(&json, 0);
    let warning = stderr(&json)
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["msg"].as_str().is_some_and(|m| m.contains("min-free = 2G")))
        .unwrap_or_else(|| panic!("{}", support::cmd::text(&json)));
    assert_eq!(warning["level"], "warning", "{warning}");

    // Off: no warning.
    for text in [
        "min-free = 0\n",
        "min-free = 2G\nmin-free = 0\n",
        "keep-outputs = true\n",
    ] {
        std::fs::write(&conf, text).unwrap();
        for o in [
            status_with(&conf_arg, &[]),
            status_with(&[], &[("NIX_CONF_DIR", conf_dir.as_os_str())]),
        ] {
            assert_code(&o, 0);
            assert!(!stderr(&o).contains("min-free"), "{text:?}: {}", support::cmd::text(&o));
        }
    }

    // A nix.conf named but missing, or malformed: exit 2, naming it. Found by the default
    // lookup, a malformed one is only warned about.
    std::fs::remove_file(&conf).unwrap();
    let o = status_with(&conf_arg, &[]);
    assert_code(&o, 2);
    assert!(
        stderr(&o).contains(&conf.display().to_string()),
        "{}",
        support::cmd::text(&o)
    );
    std::fs::write(&conf, "sandbox = false\nmin-free=2G\n").unwrap();
    let o = status_with(&conf_arg, &[]);
    assert_code(&o, 2);
    assert!(
        stderr(&o).contains(&format!("{}:2", conf.display())),
        "{}",
        support::cmd::text(&o)
    );
    let o = status_with(&[], &[("NIX_CONF_DIR", conf_dir.as_os_str())]);
    assert_code(&o, 0);
    assert!(
        stderr(&o).contains(&format!("{}:2", conf.display())) && stderr(&o).contains("not checked"),
        "{}",
        support::cmd::text(&o)
    );
}
