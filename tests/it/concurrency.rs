//! Many seeders at once, seeders killed at any moment, and the lock's lease: what the
//! README promises about running nix-seed from every pod at the same time.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use crate::support::cmd::{assert_code, assert_ok, copied_events, stderr, text, Seed};
use crate::support::compare::{assert_no_temp, assert_store_equal, assert_store_equal_with, snapshot, Links};
use crate::support::fixture::{self, Spec};
use crate::support::{self, store_entries, wait_for};

/// The smallest `--lock-stale` the binary accepts (the floor; see `lock::MIN_STALE`).
const SMALLEST_STALE: &str = "3s";
/// Rounds of "a busy, healthy holder and waiters with the smallest --lock-stale".
const HEALTHY_HOLDER_ROUNDS: usize = 4;

fn big_fixture(dir: &Path) -> fixture::Fixture {
    fixture::build(
        dir,
        &Spec {
            paths: 400,
            big_file_bytes: 48 << 20,
            ..Spec::default()
        },
    )
}

fn signal(child: &Child, sig: i32) {
    unsafe { libc::kill(child.id() as i32, sig) };
}

#[test]
fn eight_seeders_at_once_copy_each_store_path_exactly_once() {
    let tmp = support::scratch();
    let fx = fixture::build(
        &tmp.path().join("src"),
        &Spec {
            paths: 300,
            ..Spec::default()
        },
    );
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();

    let children: Vec<Child> = (0..8)
        .map(|_| {
            Seed::new(&fx.root, &dst)
                .args(["-v", "--log-format", "json", "--jobs", "4"])
                .spawn()
        })
        .collect();
    // Drain every child's pipes at once: a seeder blocked on a full stderr pipe would
    // hold the lock forever while the test reads another seeder's output.
    let outputs: Vec<_> = children
        .into_iter()
        .map(|c| std::thread::spawn(move || c.wait_with_output().unwrap()))
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let mut copied = Vec::new();
    let mut waited = 0;
    for out in outputs {
        assert_ok(&out);
        let err = stderr(&out);
        copied.extend(copied_events(&err));
        if err.contains("\"event\":\"lock-wait\"") {
            waited += 1;
        }
        // A waiter names who it waits for: a holder that has just taken the lock is
        // given a second to write its lease before it is called unknown.
        for wait in err.lines().filter(|l| l.contains("\"event\":\"lock-wait\"")) {
            let v: serde_json::Value = serde_json::from_str(wait).unwrap();
            assert!(
                wait.contains("held by pod ")
                    || (wait.contains("no lease written yet") && v["waited_secs"].as_u64() >= Some(1)),
                "{wait}"
            );
        }
    }
    let n = copied.len();
    copied.sort();
    copied.dedup();
    assert_eq!(n, copied.len(), "a store path was copied twice");
    assert_eq!(n, fx.names.len(), "every store path copied once");
    assert!(waited <= 7);
    assert_store_equal(&fx.root, &dst);
    assert_no_temp(&dst);
}

#[test]
fn sigkill_at_any_moment_leaves_nothing_half_visible_and_the_next_run_finishes() {
    let tmp = support::scratch();
    let fx = big_fixture(&tmp.path().join("src"));
    // Kill after a few store paths, mid-way, and late (during var/).
    for (round, after) in [1usize, 30, 150, 300, 395].into_iter().enumerate() {
        let dst = tmp.path().join(format!("dst{round}"));
        std::fs::create_dir(&dst).unwrap();
        let mut a = Seed::new(&fx.root, &dst).args(["--jobs", "4"]).spawn();
        wait_for(60, "the seeder to copy some store paths", || {
            store_entries(&dst) >= after || a.try_wait().unwrap().is_some()
        });
        signal(&a, libc::SIGKILL);
        let _ = a.wait();

        // Whatever is visible under a final name is complete: the rerun never needs to
        // touch it (it is the same inode afterwards), and the result is exact.
        let visible = snapshot(&dst.join("store"));
        let out = Seed::new(&fx.root, &dst).output();
        assert_ok(&out);
        assert_store_equal_with(&fx.root, &dst, Links::Subset);
        assert_no_temp(&dst);
        support::compare::assert_unchanged_but_links(&visible, &snapshot(&dst.join("store")), |rel| {
            !rel.is_empty() && !rel.starts_with(b".")
        });
    }
}

#[test]
fn a_waiter_takes_over_when_the_holder_is_killed() {
    let tmp = support::scratch();
    let fx = big_fixture(&tmp.path().join("src"));
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();

    let mut a = Seed::new(&fx.root, &dst).args(["--jobs", "2"]).spawn();
    let lock = dst.join(".nix-seed/lock");
    let pid = a.id().to_string();
    wait_for(30, "the first seeder to hold the lock", || {
        std::fs::read_to_string(&lock).is_ok_and(|l| l.contains(&format!("pid={pid}")))
    });
    let mut b = Seed::new(&fx.root, &dst).args(["--jobs", "2"]).spawn();
    let b_err = b.stderr.take().unwrap();
    let mut lines = BufReader::new(b_err).lines();
    let first = lines.next().expect("the waiter says something").unwrap();
    assert!(
        first.contains("waiting for lock") && first.contains(&format!("pid {pid}")),
        "{first}"
    );
    signal(&a, libc::SIGKILL);
    let _ = a.wait();
    // Whatever the killed holder left half-done (a temporary copy, if it died inside a
    // store path) is the waiter's to clean up; the result must be complete either way.
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = b.wait().unwrap();
    assert!(status.success(), "waiter failed: {rest:?}");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut b.stdout.take().unwrap(), &mut out).unwrap();
    assert!(
        out.contains("store paths copied"),
        "the waiter did the rest of the work: {out}"
    );
    assert_store_equal_with(&fx.root, &dst, Links::Subset);
    assert_no_temp(&dst);
}

/// A lock held by a process that stopped renewing its lease (a node lost while its
/// kernel lock lingers, simulated by a lease that never changes).
fn hold_lock(dst: &Path, lease: &[u8]) -> File {
    std::fs::create_dir_all(dst.join(".nix-seed")).unwrap();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(dst.join(".nix-seed/lock"))
        .unwrap();
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    f.write_all(lease).unwrap();
    f
}

#[test]
fn waiting_gives_up_after_the_lock_timeout_with_exit_3_and_names_the_holder() {
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
    let _held = hold_lock(
        &dst,
        b"nix-seed lease v1\nhost=node-7\npod=ide-7f9c\npid=4242\nstarted=1700000000\nheartbeat=3 1700000009\n",
    );
    let t0 = Instant::now();
    let out = Seed::new(&fx.root, &dst)
        .args(["--lock-timeout", "2s", "--lock-stale", "1h"])
        .output();
    assert_code(&out, 3);
    assert!(t0.elapsed() < Duration::from_secs(10));
    let err = stderr(&out);
    assert!(
        err.contains("waiting for lock") && err.contains("pod ide-7f9c (host node-7, pid 4242"),
        "{err}"
    );
    assert!(err.contains("gave up after 2s"), "{err}");
    assert!(!dst.join("store").exists(), "nothing may be written without the lock");
}

#[test]
fn garbage_empty_and_huge_lock_files_are_handled() {
    let tmp = support::scratch();
    let fx = fixture::build(
        &tmp.path().join("src"),
        &Spec {
            paths: 10,
            ..Spec::default()
        },
    );
    let huge = vec![b'\xff'; 8 << 20];
    let leases = [&b""[..], &b"\x1b[2J\x00\x01garbage\n=\n==="[..], &huge[..]];
    // Held and never renewed: reported as an unknown holder, then taken over. A lease that
    // does not say its heartbeat period counts as the slowest (5 s), so the takeover comes
    // after 6 of those, whatever --lock-stale says: the three run at once.
    let runs: Vec<_> = leases
        .iter()
        .enumerate()
        .map(|(i, lease)| {
            let dst = tmp.path().join(format!("dst{i}"));
            std::fs::create_dir(&dst).unwrap();
            let held = hold_lock(&dst, lease);
            let child = Seed::new(&fx.root, &dst)
                .args(["--lock-stale", "3s", "--lock-timeout", "2m"])
                .spawn();
            let t0 = Instant::now();
            (
                dst,
                held,
                t0,
                std::thread::spawn(move || child.wait_with_output().unwrap()),
            )
        })
        .collect();
    for (i, (dst, held, t0, out)) in runs.into_iter().enumerate() {
        let out = out.join().unwrap();
        let took = t0.elapsed();
        assert_ok(&out);
        let err = stderr(&out);
        assert!(err.contains("unknown holder"), "{err}");
        if i == 0 {
            // No lease at all: a holder that has just taken the lock is given a second to
            // write it before the waiter first calls it unknown.
            let first = err.lines().find(|l| l.contains("waiting for lock")).unwrap();
            assert!(!first.contains("waited 0s"), "{first}");
        }
        assert!(err.contains("taking over"), "{err}");
        assert!(took >= Duration::from_secs(30), "took over after {took:?}");
        assert!(
            !err.contains('\x1b'),
            "terminal escapes from the lock file were printed"
        );
        assert_store_equal(&fx.root, &dst);
        drop(held);
    }
    for (i, lease) in leases.into_iter().enumerate() {
        let dst = tmp.path().join(format!("dst{i}"));
        // Not held: garbage content alone does not block anyone.
        std::fs::write(dst.join(".nix-seed/lock"), lease).unwrap();
        fixture::add_paths(&fx.root, 1, 1000 + i as u64);
        let out = Seed::new(&fx.root, &dst).args(["--lock-timeout", "5s"]).output();
        assert_ok(&out);
        assert!(!stderr(&out).contains("waiting"), "{}", text(&out));
    }
}

#[test]
fn a_stalled_holder_is_taken_over_and_stops_when_it_resumes() {
    let tmp = support::scratch();
    let fx = big_fixture(&tmp.path().join("src"));
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();

    // The smallest --lock-stale: the holder beats every 0.5 s, and says so in its lease.
    let a = Seed::new(&fx.root, &dst)
        .args(["--jobs", "2", "--lock-stale", SMALLEST_STALE])
        .spawn();
    wait_for(30, "the first seeder to copy something", || store_entries(&dst) >= 5);
    signal(&a, libc::SIGSTOP); // paused, like a node cut off: flock still held
    let t0 = Instant::now();
    let out = Seed::new(&fx.root, &dst)
        .args(["--lock-stale", SMALLEST_STALE, "--lock-timeout", "60s"])
        .output();
    let took = t0.elapsed();
    assert_ok(&out);
    assert!(stderr(&out).contains("taking over"), "{}", text(&out));
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(30),
        "took over after {took:?}"
    );
    assert_store_equal_with(&fx.root, &dst, Links::Subset);

    signal(&a, libc::SIGCONT);
    let out_a = a.wait_with_output().unwrap();
    // The resumed holder notices it lost the lock (or finds its work done) and never
    // breaks what the new holder published.
    let err_a = stderr(&out_a);
    assert!(
        out_a.status.success() || err_a.contains("lost lock"),
        "a resumed holder that fails must say it lost the lock:\n{}",
        text(&out_a)
    );
    assert_store_equal_with(&fx.root, &dst, Links::Subset);
    Seed::new(&fx.root, &dst).ok();
    assert_no_temp(&dst);
}

/// On a filesystem whose clients do not share `flock` (sshfs), two seeders both "hold"
/// the lock; each then finds the other's lease in the lock file. Simulated here: while the
/// holder is paused, another node's lease is written into the lock file it holds.
#[test]
fn a_lock_that_is_not_exclusive_is_noticed_and_named() {
    let tmp = support::scratch();
    let fx = big_fixture(&tmp.path().join("src"));
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let lock = dst.join(".nix-seed/lock");

    let a = Seed::new(&fx.root, &dst).args(["--jobs", "2"]).spawn();
    wait_for(30, "the first seeder to copy something", || store_entries(&dst) >= 5);
    signal(&a, libc::SIGSTOP);
    assert!(
        std::fs::read(&lock).unwrap().starts_with(b"nix-seed"),
        "no lease written"
    );
    std::fs::write(
        &lock,
        "nix-seed lease v1\nhost=other-node\npod=intruder-pod\npid=7\nstarted=1\nheartbeat=0 1\n",
    )
    .unwrap();
    signal(&a, libc::SIGCONT);
    let out = a.wait_with_output().unwrap();
    assert_ok(&out);
    let err = stderr(&out);
    let line = err
        .lines()
        .find(|l| l.contains("is not exclusive"))
        .unwrap_or_else(|| panic!("the foreign lease was not noticed:\n{}", text(&out)));
    assert!(
        line.contains("intruder-pod") && line.contains(&lock.display().to_string()),
        "{line}"
    );
    assert_store_equal_with(&fx.root, &dst, Links::Subset);
}

#[test]
fn sigterm_stops_cleanly_removes_temporaries_and_releases_the_lock() {
    let tmp = support::scratch();
    let fx = big_fixture(&tmp.path().join("src"));
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    let a = Seed::new(&fx.root, &dst).args(["--jobs", "4"]).spawn();
    wait_for(30, "some store paths", || store_entries(&dst) >= 20);
    signal(&a, libc::SIGTERM);
    let out = a.wait_with_output().unwrap();
    assert_code(&out, 143);
    assert!(stderr(&out).contains("interrupted"), "{}", text(&out));
    assert_no_temp(&dst);
    // The lock is free: the next run does not wait.
    let out = Seed::new(&fx.root, &dst).args(["--lock-timeout", "1s"]).output();
    assert_ok(&out);
    assert_store_equal_with(&fx.root, &dst, Links::Subset);
}

/// Wait for `child` for up to `secs`; kill it and panic if it is still running (an
/// unbounded wait must fail the test, not hang it).
fn wait_bounded(mut child: Child, secs: u64, what: &str) -> std::process::Output {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > Duration::from_secs(secs) {
            signal(&child, libc::SIGKILL);
            let out = child.wait_with_output().unwrap();
            panic!("{what}: still running after {secs}s:\n{}", text(&out));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// A waiter's `--lock-stale`, however small, never takes the lock from a holder that is
/// alive and renewing its lease at its own pace (a default holder beats every 5 s).
#[test]
fn the_smallest_lock_stale_never_takes_over_a_busy_healthy_holder() {
    let tmp = support::scratch();
    let fx = big_fixture(&tmp.path().join("src"));
    for round in 0..HEALTHY_HOLDER_ROUNDS {
        let dst = tmp.path().join(format!("dst{round}"));
        std::fs::create_dir(&dst).unwrap();
        // --jobs 1 --verify: busy (copying, then hashing everything it copied), and busy for
        // 12 s more after copying (a failpoint that sleeps in the seeding thread while the
        // heartbeat goes on), however fast the machine: longer than the waiters'
        // --lock-stale and the holder's 5 s heartbeat.
        let a = Seed::new(&fx.root, &dst)
            .args(["--jobs", "1", "--verify"])
            .failpoint("copied=sleep12")
            .spawn();
        let lock = dst.join(".nix-seed/lock");
        let pid = a.id().to_string();
        wait_for(30, "the first seeder to hold the lock", || {
            std::fs::read_to_string(&lock).is_ok_and(|l| l.contains(&format!("pid={pid}")))
        });
        let t0 = Instant::now();
        let waiters: Vec<Child> = (0..2)
            .map(|_| {
                Seed::new(&fx.root, &dst)
                    .args(["--lock-stale", SMALLEST_STALE, "--lock-timeout", "10m"])
                    .spawn()
            })
            .collect();
        let waiters: Vec<_> = waiters
            .into_iter()
            .map(|c| std::thread::spawn(move || c.wait_with_output().unwrap()))
            .collect();
        let out_a = a.wait_with_output().unwrap();
        let busy = t0.elapsed();
        assert_ok(&out_a);
        assert!(!stderr(&out_a).contains("lost lock"), "{}", text(&out_a));
        for w in waiters {
            let out = w.join().unwrap();
            assert_ok(&out);
            assert!(
                !stderr(&out).contains("taking over"),
                "round {round}: a healthy holder (busy {busy:?}) was taken over:\n{}",
                text(&out)
            );
        }
        assert!(
            busy > Duration::from_secs(6),
            "round {round}: the holder was busy only {busy:?}: the test proves nothing"
        );
        assert_store_equal(&fx.root, &dst);
        assert_no_temp(&dst);
        support::make_writable(&dst);
        let _ = std::fs::remove_dir_all(&dst);
    }
}

#[test]
fn a_lock_stale_below_the_floor_is_refused_with_exit_2_and_nothing_written() {
    let tmp = support::scratch();
    let fx = fixture::build(
        &tmp.path().join("src"),
        &Spec {
            paths: 5,
            ..Spec::default()
        },
    );
    let dst = tmp.path().join("dst");
    std::fs::create_dir(&dst).unwrap();
    for v in ["0", "0s", "1s", "2999ms"] {
        let out = Seed::new(&fx.root, &dst).args(["--lock-stale", v]).output();
        assert_code(&out, 2);
        let err = stderr(&out);
        assert!(
            err.contains("--lock-stale") && err.contains("NIX_SEED_LOCK_STALE") && err.contains(SMALLEST_STALE),
            "{err}"
        );
        let out = Seed::new(&fx.root, &dst).env("NIX_SEED_LOCK_STALE", v).output();
        assert_code(&out, 2);
        assert!(stderr(&out).contains("NIX_SEED_LOCK_STALE"), "{}", text(&out));
        assert_eq!(std::fs::read_dir(&dst).unwrap().count(), 0, "nothing may be written");
    }
    Seed::new(&fx.root, &dst).args(["--lock-stale", SMALLEST_STALE]).ok();
    assert_store_equal(&fx.root, &dst);
}

/// Hold `path` with `flock(LOCK_EX)` as a Nix garbage collection (or migration) would.
fn hold_nix_lock(path: &Path) -> File {
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    f
}

#[test]
fn waiting_for_a_garbage_collection_or_migration_gives_up_after_the_lock_timeout_with_exit_3() {
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
    Seed::new(&fx.root, &dst).ok();
    assert!(dst.join("var/nix/db").is_dir());
    for (seed_no, (lock, what)) in [
        ("var/nix/gc.lock", "garbage collection"),
        ("var/nix/db/big-lock", "migration"),
    ]
    .into_iter()
    .enumerate()
    {
        fixture::add_paths(&fx.root, 3, 2000 + seed_no as u64);
        let before = store_entries(&dst);
        let held = hold_nix_lock(&dst.join(lock));
        let t0 = Instant::now();
        let child = Seed::new(&fx.root, &dst).args(["--lock-timeout", "2s"]).spawn();
        let out = wait_bounded(child, 30, &format!("a seeder waiting for a held {lock}"));
        assert_code(&out, 3);
        assert!(t0.elapsed() < Duration::from_secs(10), "took {:?}", t0.elapsed());
        let err = stderr(&out);
        let last = err.lines().last().unwrap_or("");
        assert!(
            last.contains(&dst.join(lock).display().to_string())
                && last.contains(what)
                && last.contains("--lock-timeout")
                && last.contains("gave up after 2s"),
            "{err}"
        );
        assert_eq!(store_entries(&dst), before, "nothing copied while {lock} is held");
        assert_no_temp(&dst);
        drop(held);
        Seed::new(&fx.root, &dst).args(["--lock-timeout", "2s"]).ok();
        assert_store_equal_with(&fx.root, &dst, Links::Subset);
    }
}

/// The Nix database's lock, as Nix with `use-sqlite-wal = false` (SQLite's unix-dotfile
/// VFS) holds it: the directory `db.sqlite.lock`.
#[test]
fn waiting_for_the_nix_database_gives_up_after_the_lock_timeout_with_exit_3_and_registers_nothing() {
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
    Seed::new(&fx.root, &dst).ok();
    let db = dst.join("var/nix/db/db.sqlite");
    let dot = dst.join("var/nix/db/db.sqlite.lock");
    // What giving up left: nothing at all before the copy, the copies after it.
    let check = |out: &std::process::Output, t0: Instant, outcome: &str| {
        assert_code(out, 3);
        assert!(t0.elapsed() < Duration::from_secs(15), "took {:?}", t0.elapsed());
        let err = stderr(out);
        let last = err.lines().last().unwrap_or("");
        assert!(
            last.contains(&dot.display().to_string()) && last.contains("--lock-timeout") && last.contains(outcome),
            "{err}"
        );
    };

    // Held before the seed starts: given up on when the database is opened.
    fixture::add_paths(&fx.root, 5, 3000);
    let rows = support::compare::db_rows(&db);
    std::fs::create_dir(&dot).unwrap();
    let t0 = Instant::now();
    let out = wait_bounded(
        Seed::new(&fx.root, &dst).args(["--lock-timeout", "2s"]).spawn(),
        60,
        "a seeder waiting for the database",
    );
    check(&out, t0, "nothing was copied or registered");
    std::fs::remove_dir(&dot).unwrap();
    assert_eq!(support::compare::db_rows(&db), rows, "nothing registered");
    Seed::new(&fx.root, &dst).ok();
    assert_store_equal(&fx.root, &dst);

    // Taken while the seeder copies: given up on when it registers.
    fixture::add_paths(&fx.root, 100, 3001);
    let rows = support::compare::db_rows(&db);
    let before = store_entries(&dst);
    let a = Seed::new(&fx.root, &dst)
        .args(["--lock-timeout", "2s", "--jobs", "1"])
        .spawn();
    wait_for(60, "the seeder to copy something", || store_entries(&dst) > before);
    signal(&a, libc::SIGSTOP);
    std::fs::create_dir(&dot).unwrap();
    let t0 = Instant::now();
    signal(&a, libc::SIGCONT);
    let out = wait_bounded(a, 60, "a seeder waiting for the database");
    check(
        &out,
        t0,
        "nothing was registered, the next run registers what was copied",
    );
    std::fs::remove_dir(&dot).unwrap();
    assert_eq!(support::compare::db_rows(&db), rows, "nothing registered");
    let out = Seed::new(&fx.root, &dst).output();
    assert_ok(&out);
    assert_store_equal(&fx.root, &dst);
    assert_ok(&support::cmd::status(&fx.root, &dst));
    let out = support::cmd::run(["verify".as_ref(), "--target".as_ref(), dst.as_os_str()]);
    assert_ok(&out);
    assert_no_temp(&dst);
}

/// A holder stopped right after taking its locks, taken over, and resumed once the new
/// holder has seeded everything: its plan, made again under the lock, finds nothing to
/// do, but it no longer holds the lock. It stops with one outcome, the lost lock (exit 1),
/// never "nothing to do" and exit 0.
#[test]
fn a_holder_taken_over_before_it_planned_stops_and_does_not_report_nothing_to_do() {
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
    let a = Seed::new(&fx.root, &dst)
        .args(["--lock-stale", SMALLEST_STALE])
        .failpoint("nix-locks=stop")
        .spawn();
    support::wait_stopped(a.id());
    let out = Seed::new(&fx.root, &dst)
        .args(["--lock-stale", SMALLEST_STALE, "--lock-timeout", "60s"])
        .output();
    assert_ok(&out);
    assert!(stderr(&out).contains("taking over"), "{}", text(&out));
    assert_store_equal(&fx.root, &dst);

    signal(&a, libc::SIGCONT);
    let out_a = a.wait_with_output().unwrap();
    assert_code(&out_a, 1);
    let all = text(&out_a);
    assert!(all.contains("lost lock") || all.contains("took the lock over"), "{all}");
    assert!(!all.contains("nothing to do"), "{all}");
    assert_store_equal(&fx.root, &dst);
    assert_no_temp(&dst);
}
