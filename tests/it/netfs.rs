//! nix-seed on real network filesystems (scripts/netfs.sh): a GlusterFS volume mounted
//! twice is two nodes sharing one disk (one volume with default caching, one "strict");
//! sshfs mounted twice is a weak network filesystem whose locks are not shared.
//!
//! The harness is `support::netfs`: brought up once per test process and left up (CI runs
//! `scripts/netfs.sh down` after the suite). Each test works in its own directory of a
//! volume, seen through both mounts, with `--allow-non-mountpoint`. The tests take the
//! harness's process-wide lock so that they never run at the same time (they measure
//! takeover times).

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::cmd::{copied_events, text, Seed};
use crate::support::compare::{assert_no_temp, assert_store_equal, assert_store_equal_with, db_rows, snapshot, Links};
use crate::support::fixture::{self, Spec};
use crate::support::netfs::{netfs, run_netfs, wait_all, Finished, Seeder, VolDir};
use crate::support::{self, store_entries, wait_for};

mod delay;

fn lease_pid(dst: &Path) -> Option<String> {
    let l = std::fs::read_to_string(dst.join(".nix-seed/lock")).ok()?;
    l.lines().find_map(|l| l.strip_prefix("pid=")).map(str::to_string)
}

fn names(v: &[OsString]) -> BTreeSet<String> {
    v.iter().map(|n| n.to_string_lossy().into_owned()).collect()
}

/// No panic, no abort, no signal: exit 0, or exit 1 with an error line.
#[track_caller]
fn assert_clean_exit(f: &Finished) {
    assert!(!f.stderr.contains("panicked"), "a seeder panicked:\n{}", f.text());
    match f.status.code() {
        Some(0) => {}
        Some(1) => assert!(
            f.stderr.contains("error"),
            "exit 1 without an error line:\n{}",
            f.text()
        ),
        _ => panic!("unexpected exit:\n{}", f.text()),
    }
}

// ---------------------------------------------------------------------------------------
// Many nodes

const SEEDERS: usize = 16;

/// 16 seeders started together, half through mount A, half through mount B.
fn sixteen(round: &str, src: &Path, t: &VolDir) -> Vec<Finished> {
    let seeders: Vec<Seeder> = (0..SEEDERS)
        .map(|i| {
            let (side, dst) = if i % 2 == 0 { ("a", t.a()) } else { ("b", t.b()) };
            Seeder::spawn(
                &format!("{round}-{side}{i}"),
                src,
                dst,
                &["-v", "--log-format", "json", "--jobs", "4"],
            )
        })
        .collect();
    wait_all(seeders)
}

/// What the README promises for a round of seeders started together.
fn check_round(round: &str, outs: &[Finished], expected: &BTreeSet<String>, src: &Path, t: &VolDir) {
    let mut copied: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let (mut waiters, mut skipped) = (0, 0);
    let mut unnamed = Vec::new();
    for f in outs {
        assert_eq!(f.status.code(), Some(0), "{round}: a seeder failed:\n{}", f.text());
        // GlusterFS keeps hardlinks and symlink metadata: the probes must not say otherwise.
        for lost in [
            "reports hardlinked files as separate files",
            "applies a symlink's owner",
        ] {
            assert!(
                !f.stderr.contains(lost),
                "{round}: a false warning ({lost}):\n{}",
                f.text()
            );
        }
        for p in copied_events(&f.stderr) {
            copied.entry(p).or_default().push(f.name.clone());
        }
        skipped += f.stderr.matches("\"event\":\"skipped\"").count();
        let waits: Vec<&String> = f
            .lines
            .iter()
            .map(|(_, l)| l)
            .filter(|l| l.contains("\"event\":\"lock-wait\""))
            .collect();
        if !waits.is_empty() {
            waiters += 1;
            // A waiter names the holder. The one exception: the holder has the kernel
            // lock but its lease is not written yet (or, through another mount, not yet
            // visible: GlusterFS caches content for up to 1 s); then the waiter says so.
            for l in &waits {
                assert!(
                    l.contains("held by pod ") || l.contains("(no lease written yet)"),
                    "{round}: a waiter does not name the holder: {l}"
                );
            }
            if !waits.iter().any(|l| l.contains("held by pod ")) {
                unnamed.push(f.name.clone());
            }
        }
    }
    let twice: Vec<_> = copied.iter().filter(|(_, who)| who.len() > 1).collect();
    assert!(
        twice.is_empty(),
        "{round}: store paths copied more than once: {twice:?}"
    );
    let got: BTreeSet<String> = copied.keys().cloned().collect();
    assert_eq!(
        got.difference(expected).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "{round}: copied paths that were not missing"
    );
    assert_eq!(
        expected.difference(&got).collect::<Vec<_>>(),
        Vec::<&String>::new(),
        "{round}: missing paths nobody copied"
    );
    assert_eq!(
        skipped, 0,
        "{round}: a copy was made and discarded (two seeders copied at once)"
    );
    let holders: BTreeSet<&String> = copied.values().flatten().collect();
    eprintln!(
        "{round}: {} paths copied by {holders:?}; {waiters} of {SEEDERS} seeders waited for the lock; \
         {} never saw the holder's lease: {unnamed:?}",
        got.len(),
        unnamed.len()
    );
    assert_store_equal(src, t.a());
    assert_no_temp(t.a());
    let theirs = db_rows(&src.join("var/nix/db/db.sqlite"));
    let ours = db_rows(&t.a().join("var/nix/db/db.sqlite"));
    let missing: Vec<&String> = theirs.difference(&ours).collect();
    assert!(
        missing.is_empty(),
        "{round}: registrations missing in the target: {missing:?}"
    );
}

fn many_nodes(test: &str, volume: &str) {
    let Some((_serial, n)) = netfs(test) else { return };
    let t0 = Instant::now();
    let (ma, mb) = (
        n.mount(&format!("GLUSTER_{volume}_A")),
        n.mount(&format!("GLUSTER_{volume}_B")),
    );
    let tmp = support::scratch();
    let spec = Spec {
        paths: 20,
        big_file_bytes: 1 << 20,
        ..Spec::default()
    };
    // `half` is exactly the first batch of `full` (same seed): a smaller image.
    let half = fixture::build(&tmp.path().join("half"), &spec);
    let full_root = tmp.path().join("full");
    let first = fixture::build(&full_root, &spec);
    let second = fixture::add_paths(&full_root, 20, 2);
    let all: BTreeSet<String> = names(&first.names).union(&names(&second)).cloned().collect();

    // (1) an empty target.
    let t1 = VolDir::new(&format!("{test}-1"), &[ma.clone(), mb.clone()]);
    let outs = sixteen("empty", &full_root, &t1);
    check_round("round 1 (empty target)", &outs, &all, &full_root, &t1);

    // (2) a target that has the smaller image.
    let t2 = VolDir::new(&format!("{test}-2"), &[ma.clone(), mb.clone()]);
    let o = Seed::new(&half.root, t2.a()).output();
    assert!(o.status.success(), "{}", text(&o));
    let outs = sixteen("half", &full_root, &t2);
    check_round("round 2 (half present)", &outs, &names(&second), &full_root, &t2);

    // (3) an image upgrade on the first target.
    let third = fixture::add_paths(&full_root, 10, 3);
    let outs = sixteen("upgrade", &full_root, &t1);
    check_round("round 3 (upgrade)", &outs, &names(&third), &full_root, &t1);
    eprintln!("{test}: {:.1}s", t0.elapsed().as_secs_f64());
}

#[test]
fn many_nodes_on_glusterfs_default_caching() {
    many_nodes("many_nodes_default", "DEFAULT");
}

#[test]
fn many_nodes_on_glusterfs_strict_caching() {
    many_nodes("many_nodes_strict", "STRICT");
}

// ---------------------------------------------------------------------------------------
// Node loss

/// A source big enough that a seed on GlusterFS takes several seconds.
fn slow_fixture(root: &Path) -> fixture::Fixture {
    fixture::build(
        root,
        &Spec {
            paths: 110,
            big_file_bytes: 8 << 20,
            ..Spec::default()
        },
    )
}

/// Start a holder on `holder_dst` and `n` waiters on `waiter_dst`; return once the holder
/// holds the lock, every waiter has said it waits, and `min_paths` store paths are visible.
fn holder_and_waiters(
    src: &Path,
    holder_dst: &Path,
    waiter_dst: &Path,
    n: usize,
    args: &[&str],
    min_paths: usize,
) -> (Seeder, Vec<Seeder>) {
    let mut holder_args = vec!["-v", "--log-format", "json", "--jobs", "2"];
    holder_args.extend_from_slice(args);
    let mut holder = Seeder::spawn("holder-a", src, holder_dst, &holder_args);
    let pid = holder.pid().to_string();
    wait_for(30, "the holder to take the lock", || {
        assert!(!holder.exited(), "the holder exited early");
        lease_pid(holder_dst).as_deref() == Some(pid.as_str())
    });
    let mut waiter_args = vec!["-v", "--log-format", "json", "--jobs", "4"];
    waiter_args.extend_from_slice(args);
    let waiters: Vec<Seeder> = (0..n)
        .map(|i| Seeder::spawn(&format!("waiter-b{i}"), src, waiter_dst, &waiter_args))
        .collect();
    // Generous: on 2 busy cores, FUSE listings of a store being written can take a while
    // before a waiter gets to the lock (CI once needed more than 30 s).
    wait_for(90, "every waiter to wait for the holder", || {
        waiters.iter().all(|w| w.saw("waiting for lock"))
    });
    wait_for(60, "the holder to publish some store paths", || {
        assert!(
            !holder.exited(),
            "the holder finished before it could be killed: make the fixture bigger"
        );
        store_entries(holder_dst) >= min_paths
    });
    assert!(!holder.exited(), "the holder finished before it could be killed");
    (holder, waiters)
}

/// When the first waiter got the lock (kernel release: "took lock"; stale lease: "taking
/// over"), and how.
fn first_takeover(outs: &[Finished]) -> (Instant, &'static str, String) {
    let mut best: Option<(Instant, &'static str, String)> = None;
    for f in outs {
        for (pat, how) in [
            ("took lock", "the kernel lock was released"),
            ("taking over", "stale lease taken over"),
        ] {
            if let Some(t) = f.saw(pat) {
                if best.as_ref().is_none_or(|(b, _, _)| t < *b) {
                    best = Some((t, how, f.name.clone()));
                }
            }
        }
    }
    best.unwrap_or_else(|| {
        let all: Vec<String> = outs.iter().map(Finished::text).collect();
        panic!("no waiter took the lock:\n{}", all.join("\n"))
    })
}

#[test]
fn node_loss_sigkilled_holder_on_a_is_taken_over_by_a_waiter_on_b() {
    let Some((_serial, n)) = netfs("node_loss_sigkill") else {
        return;
    };
    let tmp = support::scratch();
    let fx = slow_fixture(&tmp.path().join("src"));
    let t = VolDir::new(
        "node-loss-kill",
        &[n.mount("GLUSTER_DEFAULT_A"), n.mount("GLUSTER_DEFAULT_B")],
    );

    let (holder, waiters) = holder_and_waiters(&fx.root, t.a(), t.b(), 3, &[], 20);
    holder.kill(libc::SIGKILL);
    let killed = Instant::now();
    let h = holder.wait();
    let outs = wait_all(waiters);
    for f in &outs {
        assert_eq!(f.status.code(), Some(0), "a waiter failed:\n{}", f.text());
    }
    let (took, how, who) = first_takeover(&outs);
    let after = took.saturating_duration_since(killed);
    eprintln!("node loss (SIGKILL of the holder on A): {who} on B took the lock {after:?} after the kill ({how})");
    assert!(
        after < Duration::from_secs(5),
        "the waiter took the lock {after:?} after the kill ({how})"
    );
    assert_eq!(
        how, "the kernel lock was released",
        "the kernel lock must be released, not taken over"
    );
    // Nothing copied twice: what the holder published and what the waiters copied.
    let by_holder: BTreeSet<String> = copied_events(&h.stderr).into_iter().collect();
    let mut by_waiters = Vec::new();
    for f in &outs {
        by_waiters.extend(copied_events(&f.stderr));
    }
    let unique: BTreeSet<String> = by_waiters.iter().cloned().collect();
    assert_eq!(
        unique.len(),
        by_waiters.len(),
        "a waiter copied a path another waiter copied"
    );
    assert!(
        by_holder.is_disjoint(&unique),
        "a waiter copied a path the holder had published"
    );
    assert_store_equal_with(&fx.root, t.a(), Links::Subset);
    assert_store_equal_with(&fx.root, t.b(), Links::Subset);
    assert_no_temp(t.a());
}

/// Puts mount A back (the harness remounts a dead mount) even if the test fails.
struct Remount;

impl Drop for Remount {
    fn drop(&mut self) {
        if let Err(e) = run_netfs("up") {
            eprintln!("could not repair the harness: {e}");
        }
    }
}

#[test]
fn node_loss_fuse_client_of_the_holder_killed_waiters_on_b_proceed() {
    let Some((_serial, n)) = netfs("node_loss_fuse_client") else {
        return;
    };
    let tmp = support::scratch();
    let fx = slow_fixture(&tmp.path().join("src"));
    let t = VolDir::new(
        "node-loss-client",
        &[n.mount("GLUSTER_DEFAULT_A"), n.mount("GLUSTER_DEFAULT_B")],
    );
    let client = n.pid("GLUSTER_DEFAULT_A_PID");
    let _remount = Remount;

    let stale = ["--lock-stale", "5s"];
    let (holder, waiters) = holder_and_waiters(&fx.root, t.a(), t.b(), 3, &stale, 20);
    // The node loses its disk: the FUSE client of mount A dies.
    // SAFETY: kill(2) of the glusterfs client process the harness started.
    assert_eq!(
        unsafe { libc::kill(client, libc::SIGKILL) },
        0,
        "kill glusterfs {client}"
    );
    let killed = Instant::now();
    let h = holder.wait();
    let outs = wait_all(waiters);
    eprintln!(
        "holder on the dead mount: {}",
        h.text().lines().rev().take(3).collect::<Vec<_>>().join(" | ")
    );
    assert_clean_exit(&h);
    assert_eq!(
        h.status.code(),
        Some(1),
        "the seeder on the dead mount must fail:\n{}",
        h.text()
    );
    assert!(
        h.stderr.contains(&t.a().display().to_string()),
        "the error names no path on the lost mount:\n{}",
        h.text()
    );
    for f in &outs {
        assert_eq!(f.status.code(), Some(0), "a waiter failed:\n{}", f.text());
    }
    let (took, how, who) = first_takeover(&outs);
    let after = took.saturating_duration_since(killed);
    eprintln!("node loss (FUSE client of A killed): {who} on B took the lock {after:?} after the kill ({how})");
    // The documented bound: --lock-stale after the last heartbeat seen (heartbeat every
    // --lock-stale/6), plus GlusterFS's 1 s of attribute and content caching.
    assert!(
        after < Duration::from_secs(8),
        "the waiters on B took the lock only {after:?} after mount A died ({how})"
    );
    assert_store_equal_with(&fx.root, t.b(), Links::Subset);
    assert_no_temp(t.b());

    drop(_remount);
    let n2 = run_netfs("status").expect("the harness repaired mount A");
    assert_ne!(n2.pid("GLUSTER_DEFAULT_A_PID"), client, "mount A has a new client");
    assert_store_equal_with(&fx.root, t.a(), Links::Subset);
}

/// Resumes a stopped process (and repairs the harness) even if the test fails.
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        // SAFETY: kill(2) of the glusterfs client this test stopped.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
        if let Err(e) = run_netfs("up") {
            eprintln!("could not repair the harness: {e}");
        }
    }
}

#[test]
fn node_loss_frozen_node_holder_is_taken_over_after_lock_stale_and_stops_when_it_resumes() {
    let Some((_serial, n)) = netfs("node_loss_frozen_node") else {
        return;
    };
    let tmp = support::scratch();
    let fx = slow_fixture(&tmp.path().join("src"));
    let t = VolDir::new(
        "node-loss-frozen",
        &[n.mount("GLUSTER_DEFAULT_A"), n.mount("GLUSTER_DEFAULT_B")],
    );
    let client = n.pid("GLUSTER_DEFAULT_A_PID");

    let stale = ["--lock-stale", "5s"];
    let (holder, waiters) = holder_and_waiters(&fx.root, t.a(), t.b(), 2, &stale, 20);
    // The node freezes (a paused VM, a partition): its FUSE client stops answering but its
    // TCP connection stays up, so the server keeps its lock. From now on mount A hangs:
    // look only through B.
    // SAFETY: kill(2) of the glusterfs client the harness started.
    assert_eq!(
        unsafe { libc::kill(client, libc::SIGSTOP) },
        0,
        "stop glusterfs {client}"
    );
    let frozen = Instant::now();
    let resume = Resume(client);
    let outs = wait_all(waiters);
    for f in &outs {
        assert_eq!(f.status.code(), Some(0), "a waiter failed:\n{}", f.text());
    }
    let (took, how, who) = first_takeover(&outs);
    let after = took.saturating_duration_since(frozen);
    eprintln!("node loss (FUSE client of A frozen): {who} on B took the lock {after:?} after the freeze ({how})");
    assert_eq!(
        how, "stale lease taken over",
        "the server must keep a frozen client's lock"
    );
    // --lock-stale after the last heartbeat (every 5s/6), plus 1 s of caching on B.
    assert!(
        after >= Duration::from_secs(4) && after < Duration::from_secs(8),
        "taken over {after:?} after the freeze, --lock-stale is 5s"
    );
    assert_store_equal_with(&fx.root, t.b(), Links::Subset);

    // The node comes back: the old holder notices it lost the lock and stops, and breaks
    // nothing the new holder published.
    drop(resume);
    let h = holder.wait();
    eprintln!("the resumed holder: {}", h.lines.last().map_or("", |(_, l)| l.as_str()));
    assert_clean_exit(&h);
    assert_eq!(h.status.code(), Some(1), "the resumed holder must stop:\n{}", h.text());
    // It stops at its next heartbeat, or earlier, when a worker finds that the new holder
    // removed its temporary copies (ESTALE/ENOENT on a path): either way it says it lost
    // the lock, not only the symptom.
    let last_line = &h.lines.last().expect("no output").1;
    assert!(
        last_line.contains("lost lock"),
        "the last line must say it lost the lock:\n{}",
        h.text()
    );
    assert_store_equal_with(&fx.root, t.a(), Links::Subset);
    let last = Seeder::spawn("after", &fx.root, t.a(), &[]).wait();
    assert_eq!(last.status.code(), Some(0), "{}", last.text());
    assert_no_temp(t.a());
}

// ---------------------------------------------------------------------------------------
// Crash anywhere, with real Nix as the oracle

fn double_registrations(nix: &Path) -> Vec<(String, i64)> {
    let c = rusqlite::Connection::open_with_flags(
        nix.join("var/nix/db/db.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let ok: String = c.query_row("PRAGMA integrity_check", [], |r| r.get(0)).unwrap();
    assert_eq!(ok, "ok", "the target's database is corrupt");
    let mut st = c
        .prepare("SELECT path, count(*) FROM ValidPaths GROUP BY path HAVING count(*) > 1")
        .unwrap();
    st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// What real Nix says about `paths` in a Nix root, in one pod: `--check-validity` (its
/// exit status), `--dump-db` of those paths (hash, NAR size, deriver, references: Nix's
/// own registration dump) and `--gc --print-dead`.
fn nix_view(nix: &Path, paths: &[String]) -> (bool, String, BTreeSet<String>) {
    let all = paths.join(" ");
    let o = support::nix::in_pod(
        nix,
        &format!(
            "if nix-store --check-validity {all}; then echo '== valid'; else echo '== INVALID'; fi; \
             nix-store --dump-db {all} && echo '== dead' && nix-store --gc --print-dead"
        ),
    );
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success() && out.contains("== dead"),
        "nix-store failed in {}:\n{}",
        nix.display(),
        text(&o)
    );
    let valid = out.starts_with("== valid");
    let (dump, dead) = out.split_once("== dead\n").unwrap();
    let dump = dump.split_once('\n').map_or("", |(_, d)| d).to_string();
    (valid, dump, dead.lines().map(str::to_string).collect())
}

/// `support::nix::assert_nix_accepts` in two pods instead of one per store path: every
/// path of the image valid in the target, registered as in the image (Nix's `--dump-db`:
/// hash, size, deriver, references), none dead for the garbage collector, and contents
/// that `nix-store --verify --check-contents` accepts (on a local copy: --verify repairs).
fn assert_nix_accepts_batched(target: &Path, image: &Path, scratch: &Path) {
    let paths = support::nix::valid_paths(image);
    let (_, image_dump, _) = nix_view(image, &paths);
    let (valid, dump, dead) = nix_view(target, &paths);
    assert!(valid, "nix-store --check-validity fails on {}", target.display());
    assert_eq!(
        dump, image_dump,
        "nix-store --dump-db differs between the target and the image"
    );
    let image_dead: Vec<&String> = paths.iter().filter(|p| dead.contains(*p)).collect();
    assert!(image_dead.is_empty(), "image paths a GC would delete: {image_dead:?}");
    support::nix::assert_contents_verify(target, &scratch.join("verify-copy"));
}

/// A rerun must not wait for ever. nix-seed's SQLite busy timeout is 10 minutes: a rerun
/// stuck on the target database's lock is stopped after `secs` and reported.
const RERUN_SECS: u64 = 20;

fn rerun_within(image: &Path, target: &Path, secs: u64, what: &str, killed: &Finished) -> Finished {
    let mut r = Seeder::spawn("rerun-b", image, target, &[]);
    if r.exits_within(secs) {
        return r.wait();
    }
    r.kill(libc::SIGKILL);
    let f = r.wait();
    let dotlock = target.join("var/nix/db/db.sqlite.lock");
    panic!(
        "{what}: the rerun on B did not finish within {secs}s{}\nrerun:\n{}\nkilled seeder:\n{}",
        if dotlock.exists() {
            format!(
                "; {} (the unix-dotfile lock of the Nix database) was left by the killed seeder: \
                 every later nix-seed waits for it (10 min busy timeout, then \"database is locked\"), \
                 and so does every Nix process that opens this store",
                dotlock.display()
            )
        } else {
            String::new()
        },
        f.text(),
        killed.text()
    );
}

nixtest!(crash_anywhere_on_glusterfs_then_rerun_on_the_other_node, |tmp| {
    let Some((_serial, n)) = netfs(tmp.name()) else {
        return;
    };
    let t_start = Instant::now();
    let v1 = support::nix::real_store(&tmp.path().join("v1"), "v1", true).join("nix");
    let v2 = support::nix::real_store(&tmp.path().join("v2"), "v2", false).join("nix");
    let mounts = [n.mount("GLUSTER_DEFAULT_A"), n.mount("GLUSTER_DEFAULT_B")];

    // A target holding image v1, seeded through mount A.
    let fresh = |i: usize| {
        let t = VolDir::new(&format!("crash-{i}"), &mounts);
        let o = Seed::new(&v1, t.a()).output();
        assert!(o.status.success(), "{}", text(&o));
        t
    };
    // How long a seed of v2 on top of v1 takes here, started the way the kills are.
    let full = (0..2)
        .map(|i| {
            let t = fresh(100 + i);
            let t0 = Instant::now();
            let f = Seeder::spawn("measure", &v2, t.a(), &["-v"]).wait();
            assert!(f.status.success(), "{}", f.text());
            t0.elapsed()
        })
        .min()
        .unwrap();
    eprintln!("a seed of v2 on top of v1 on GlusterFS takes {full:?}");

    const KILLS: usize = 20;
    let mut outcomes = Vec::new();
    for i in 0..KILLS {
        // From before the first write to the end of the seed (the measured run is a bit
        // slower than the killed ones: it includes waiting for its output).
        let delay = full.mul_f64(0.85 * i as f64 / (KILLS - 1) as f64);
        let t = fresh(i);
        let mut a = Seeder::spawn(&format!("crash-a{i}"), &v2, t.a(), &["-v"]);
        std::thread::sleep(delay);
        let finished_first = a.exited();
        a.kill(libc::SIGKILL);
        let fa = a.wait();
        // What is visible under a final name must be complete: the rerun keeps it as it is.
        let visible = snapshot(&t.a().join("store"));

        let rerun = rerun_within(&v2, t.b(), RERUN_SECS, &format!("kill after {delay:?}"), &fa);
        assert!(
            rerun.status.success(),
            "kill after {delay:?}: the rerun on B failed:\n{}\nkilled seeder:\n{}",
            rerun.text(),
            fa.text()
        );
        let copied_before = fa.stderr.lines().filter(|l| l.contains("copied ")).count();
        outcomes.push(format!(
            "{:>4}ms: {}",
            delay.as_millis(),
            if finished_first {
                "the seed had finished".to_string()
            } else {
                format!("killed after {copied_before} of 16 new store paths were copied")
            }
        ));
        assert_no_temp(t.a());
        let twice = double_registrations(t.b());
        assert!(
            twice.is_empty(),
            "kill after {delay:?}: paths registered twice: {twice:?}"
        );
        support::compare::assert_unchanged_but_links(&visible, &snapshot(&t.a().join("store")), |rel| {
            !rel.is_empty() && !rel.starts_with(b".")
        });
        // Real Nix on the result, as a pod on node B sees it: once the full per-path
        // oracle, otherwise the same checks in two pods.
        if i == KILLS / 2 {
            support::nix::assert_nix_accepts(t.b(), &v2);
        } else {
            assert_nix_accepts_batched(t.b(), &v2, tmp.path());
        }
        if i == KILLS - 1 {
            // Image v1's paths, seeded first, are still all valid and safe.
            assert_nix_accepts_batched(t.b(), &v1, tmp.path());
        }
        eprintln!(
            "kill {i} ({}): done at {:.1}s",
            outcomes.last().unwrap(),
            t_start.elapsed().as_secs_f64()
        );
    }
    eprintln!("kills: {outcomes:#?}");
    eprintln!("crash_anywhere_on_glusterfs: {:.1}s", t_start.elapsed().as_secs_f64());
});

nixtest!(
    sigkill_while_the_target_database_is_locked_then_rerun_on_the_other_node,
    |tmp| {
        let Some((_serial, n)) = netfs(tmp.name()) else {
            return;
        };
        let v1 = support::nix::real_store(&tmp.path().join("v1"), "v1", true).join("nix");
        let v2 = support::nix::real_store(&tmp.path().join("v2"), "v2", false).join("nix");
        let mounts = [n.mount("GLUSTER_DEFAULT_A"), n.mount("GLUSTER_DEFAULT_B")];
        // The target's database is in rollback mode (nix-seed creates it so), which nix-seed
        // opens with SQLite's unix-dotfile VFS, as pods with use-sqlite-wal = false do: while
        // it holds a lock on the database, the directory var/nix/db/db.sqlite.lock exists.
        // Kill the seeder at that moment.
        for attempt in 0..5 {
            let t = VolDir::new(&format!("dblock-{attempt}"), &mounts);
            let o = Seed::new(&v1, t.a()).output();
            assert!(o.status.success(), "{}", text(&o));
            let dotlock = t.a().join("var/nix/db/db.sqlite.lock");
            let mut a = Seeder::spawn("dblock-a", &v2, t.a(), &["-v"]);
            let t0 = Instant::now();
            let mut seen = false;
            while !a.exited() && t0.elapsed() < Duration::from_secs(30) {
                if std::fs::symlink_metadata(&dotlock).is_ok() {
                    a.kill(libc::SIGKILL);
                    seen = true;
                    break;
                }
            }
            let fa = a.wait();
            if !seen || fa.status.success() {
                eprintln!("attempt {attempt}: the seed finished before its database lock was seen; again");
                continue;
            }
            eprintln!(
                "attempt {attempt}: SIGKILLed while {} existed; left behind: {}",
                dotlock.display(),
                t.b().join("var/nix/db/db.sqlite.lock").exists()
            );
            let rerun = rerun_within(&v2, t.b(), RERUN_SECS, "SIGKILL while the database was locked", &fa);
            assert!(rerun.status.success(), "the rerun on B failed:\n{}", rerun.text());
            assert_no_temp(t.b());
            assert!(double_registrations(t.b()).is_empty());
            assert_nix_accepts_batched(t.b(), &v2, tmp.path());
            return;
        }
        panic!("never caught the seeder while it held the database lock in 5 attempts");
    }
);

// ---------------------------------------------------------------------------------------
// A weak network filesystem: sshfs

/// What sshfs can preserve, compared for every store path present in `dst`: the same
/// entries, file types, mode bits, file contents and symlink targets as in the source.
/// Not compared (sshfs cannot keep them): owners, times, hardlinks.
fn assert_weak_store_sane(src_root: &Path, dst_root: &Path) -> usize {
    fn walk(p: &Path, rel: &Path, out: &mut BTreeMap<PathBuf, (PathBuf, std::fs::Metadata)>) {
        let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()));
        let is_dir = m.is_dir();
        out.insert(rel.to_path_buf(), (p.to_path_buf(), m));
        if is_dir {
            for e in std::fs::read_dir(p).unwrap_or_else(|e| panic!("readdir {}: {e}", p.display())) {
                let e = e.unwrap();
                walk(&e.path(), &rel.join(e.file_name()), out);
            }
        }
    }
    let (ss, ds) = (src_root.join("store"), dst_root.join("store"));
    let mut problems = Vec::new();
    let mut present = 0;
    let Ok(rd) = std::fs::read_dir(&ds) else { return 0 };
    for e in rd {
        let name = e.unwrap().file_name();
        if name.as_bytes().starts_with(b".") {
            continue;
        }
        present += 1;
        let (mut s, mut d) = (BTreeMap::new(), BTreeMap::new());
        if std::fs::symlink_metadata(ss.join(&name)).is_err() {
            problems.push(format!("{}: not in the source", name.to_string_lossy()));
            continue;
        }
        walk(&ss.join(&name), Path::new(&name), &mut s);
        walk(&ds.join(&name), Path::new(&name), &mut d);
        let sk: BTreeSet<&PathBuf> = s.keys().collect();
        let dk: BTreeSet<&PathBuf> = d.keys().collect();
        for m in sk.symmetric_difference(&dk) {
            problems.push(format!(
                "{}: only in {}",
                m.display(),
                if s.contains_key(*m) {
                    "the source (half-visible store path)"
                } else {
                    "the target"
                }
            ));
        }
        for (rel, (sp, sm)) in &s {
            let Some((dp, dm)) = d.get(rel) else { continue };
            if sm.file_type() != dm.file_type() {
                problems.push(format!(
                    "{}: type {:?} != {:?}",
                    rel.display(),
                    sm.file_type(),
                    dm.file_type()
                ));
                continue;
            }
            if !sm.file_type().is_symlink() && sm.mode() & 0o7777 != dm.mode() & 0o7777 {
                problems.push(format!(
                    "{}: mode {:o} != {:o}",
                    rel.display(),
                    sm.mode() & 0o7777,
                    dm.mode() & 0o7777
                ));
            }
            if sm.is_file() && std::fs::read(sp).unwrap() != std::fs::read(dp).unwrap() {
                problems.push(format!("{}: content differs", rel.display()));
            }
            if sm.file_type().is_symlink() && std::fs::read_link(sp).unwrap() != std::fs::read_link(dp).unwrap() {
                problems.push(format!("{}: symlink target differs", rel.display()));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "{} problems in {}:\n{}",
        problems.len(),
        ds.display(),
        problems.join("\n")
    );
    present
}

/// Seeders one after another, alternating between the two sshfs mounts (each "node"):
/// what sshfs can keep is exact, the symlink-metadata limitation is detected and said,
/// later seeds add nothing.
#[test]
fn weak_filesystem_sshfs_seeders_in_turn_are_exact_for_what_sshfs_keeps() {
    let Some((_serial, n)) = netfs("weak_filesystem_sshfs_serial") else {
        return;
    };
    let tmp = support::scratch();
    let fx = fixture::build(
        &tmp.path().join("src"),
        &Spec {
            paths: 60,
            big_file_bytes: 2 << 20,
            ..Spec::default()
        },
    );
    let t = VolDir::new("sshfs-serial", &[n.mount("SSHFS_A"), n.mount("SSHFS_B")]);
    for i in 0..4 {
        let dst = if i % 2 == 0 { t.a() } else { t.b() };
        let f = Seeder::spawn(&format!("sshfs-turn{i}"), &fx.root, dst, &["-v", "--jobs", "4"]).wait();
        assert_eq!(f.status.code(), Some(0), "seeder {i} on sshfs failed:\n{}", f.text());
        if i == 0 {
            // What sshfs cannot keep, said once each.
            for lost in [
                "applies a symlink's owner and times",
                "reports hardlinked files as separate files",
            ] {
                assert!(f.text().contains(lost), "no warning '{lost}':\n{}", f.text());
            }
        }
    }
    let present = assert_weak_store_sane(&fx.root, t.a());
    assert_eq!(present, fx.names.len(), "every store path present through A");
    assert_weak_store_sane(&fx.root, t.b());
}

/// An sshfs mount with the default `contain_symlinks` (Debian's sshfs since the fix for
/// CVE-2026-47187) creates `/nix/store/...` and `..` symlinks but refuses to read them
/// back: a store there is broken for every pod. nix-seed must find that out before it
/// copies anything, exit 2 and name the mount option, rather than publish unreadable links.
#[test]
fn weak_filesystem_sshfs_that_cannot_read_back_symlinks_is_refused_before_copying() {
    let Some((_serial, n)) = netfs("weak_filesystem_sshfs_contain_symlinks") else {
        return;
    };
    let base = n.mount("NETFS_BASE");
    let mp = base.join("mnt/sshfs-contain-symlinks");
    let _ = Command::new("umount").arg("-l").arg(&mp).stderr(Stdio::null()).status();
    std::fs::create_dir_all(&mp).unwrap();
    // Default options: no `-o no_contain_symlinks`.
    let o = Command::new("sshfs")
        .arg("-F")
        .arg(base.join("ssh/ssh_config"))
        .arg(format!("netfs:{}", base.join("sshfs-export").display()))
        .arg(&mp)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "sshfs mount failed:\n{}", text(&o));
    struct Unmount(PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
    let _unmount = Unmount(mp.clone());

    let tmp = support::scratch();
    let fx = fixture::build(
        &tmp.path().join("src"),
        &Spec {
            paths: 8,
            ..Spec::default()
        },
    );
    let t = VolDir::new("sshfs-contain", &[mp.clone(), n.mount("SSHFS_A")]);
    // The oracle: does this mount read back an absolute symlink?
    let probe = t.a().join("probe-link");
    std::os::unix::fs::symlink("/nix/store/abc-probe", &probe).unwrap();
    let reads_back = std::fs::read_link(&probe);
    std::fs::remove_file(&probe).unwrap();

    let f = Seeder::spawn("sshfs-contain", &fx.root, t.a(), &[]).wait();
    match reads_back {
        Ok(l) => {
            // An sshfs without contain_symlinks: nothing to refuse.
            assert_eq!(l, Path::new("/nix/store/abc-probe"));
            assert_eq!(f.status.code(), Some(0), "{}", f.text());
        }
        Err(e) => {
            assert_eq!(
                e.raw_os_error(),
                Some(libc::EPERM),
                "readlink on contain_symlinks sshfs: {e}"
            );
            assert_eq!(f.status.code(), Some(2), "must refuse with exit 2:\n{}", f.text());
            let line = f
                .text()
                .lines()
                .find(|l| l.contains("cannot hold a Nix store"))
                .unwrap_or_else(|| panic!("no clear error:\n{}", f.text()))
                .to_string();
            assert!(
                line.contains("no_contain_symlinks"),
                "error does not name the fix: {line}"
            );
            assert!(
                line.contains(&t.a().join("store").display().to_string()),
                "error does not name the path: {line}"
            );
            // Nothing copied, no temporaries left (seen through a mount that reads links).
            let left: Vec<OsString> = std::fs::read_dir(t.b().join("store"))
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert!(left.is_empty(), "the refused seed left {left:?} in the store");
        }
    }
}

/// sshfs clients do not share locks, so concurrent seeders each believe they hold the
/// lock, and each removes what looks like a leftover of a dead run: another's live
/// temporary copy. Removal claims an entry by renaming it first, so the seeder that was
/// building it cannot publish it (it fails, naming the cause); nothing half-copied is
/// ever visible under a store path name. (Before the claim, 1 run in 5 published an
/// emptied copy.)
#[test]
fn weak_filesystem_sshfs_concurrent_seeders_never_corrupt_the_store() {
    let Some((_serial, n)) = netfs("weak_filesystem_sshfs") else {
        return;
    };
    let tmp = support::scratch();
    let fx = fixture::build(
        &tmp.path().join("src"),
        &Spec {
            paths: 60,
            big_file_bytes: 2 << 20,
            ..Spec::default()
        },
    );
    let t = VolDir::new("sshfs", &[n.mount("SSHFS_A"), n.mount("SSHFS_B")]);
    let seeders: Vec<Seeder> = (0..8)
        .map(|i| {
            let (side, dst) = if i % 2 == 0 { ("a", t.a()) } else { ("b", t.b()) };
            Seeder::spawn(&format!("sshfs-{side}{i}"), &fx.root, dst, &["-v", "--jobs", "4"])
        })
        .collect();
    let outs = wait_all(seeders);
    let mut summary = Vec::new();
    for f in &outs {
        assert_clean_exit(f);
        if f.status.code() == Some(1) {
            // The error line names a path.
            let err = f.lines.iter().map(|(_, l)| l).find(|l| l.contains("error")).unwrap();
            assert!(err.contains('/'), "an error without a path: {err}");
        }
        let warnings: Vec<&String> = f
            .lines
            .iter()
            .map(|(_, l)| l)
            .filter(|l| l.contains("warning"))
            .collect();
        summary.push(format!(
            "{}: exit {:?}, {} copied, {} skipped, {} warnings, last line: {}",
            f.name,
            f.status.code(),
            copied_events_text(&f.stderr),
            f.stderr.matches("skipped ").count(),
            warnings.len(),
            f.lines.last().map_or("", |(_, l)| l.as_str())
        ));
    }
    eprintln!("8 seeders on sshfs:\n{}", summary.join("\n"));
    let present = assert_weak_store_sane(&fx.root, t.a());
    eprintln!(
        "after the 8: {present} of {} store paths present, all sane",
        fx.names.len()
    );

    // One more seeder, alone: it finishes the job.
    let last = Seeder::spawn("sshfs-final", &fx.root, t.a(), &["-v"]).wait();
    eprintln!("final seeder on sshfs:\n{}", last.text());
    assert_eq!(
        last.status.code(),
        Some(0),
        "the final seeder on sshfs failed:\n{}",
        last.text()
    );
    let present = assert_weak_store_sane(&fx.root, t.a());
    assert_eq!(present, fx.names.len(), "store paths missing after the final seed");
    // Temporaries of seeders that failed may remain (names starting with `.`, never store
    // paths): the final seeder found nothing to do and took the fast path, which removes
    // nothing. Reported, not asserted.
    let temps = std::fs::read_dir(t.a().join("store"))
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().as_bytes().starts_with(b".nix-seed-tmp"))
        .count();
    eprintln!("temporary entries left in the store after the final seed: {temps}");
}

/// `copied NAME (...)` lines of a text-format seeder with `-v`.
fn copied_events_text(stderr: &str) -> usize {
    stderr.lines().filter(|l| l.starts_with("nix-seed: copied ")).count()
}

// Issue #12 on GlusterFS, two nodes: images v1, v2, v3 seeded in turn through mount A,
// `nix-seed images` and `prune --keep-last 1` run through mount B, the pods' Nix (profile
// checks, `nix path-info`, the real `nix-store --gc`, `--verify --check-contents`) on
// mount A: the same flow and checks as `lifecycle.rs` on a local disk.
nixtest!(lifecycle_on_glusterfs_seed_on_a_images_and_prune_on_b, |tmp| {
    let Some((_serial, n)) = netfs(tmp.name()) else {
        return;
    };
    let t0 = Instant::now();
    let images = support::profiles::image_chain(&tmp.path().join("images"), true);
    let t = VolDir::new(
        "lifecycle",
        &[n.mount("GLUSTER_DEFAULT_A"), n.mount("GLUSTER_DEFAULT_B")],
    );
    let disk = crate::lifecycle::Disk {
        seed_at: t.a(),
        manage_at: t.b(),
        nix_at: t.a(),
    };
    crate::lifecycle::flow(&images, &disk, tmp.path(), false);
    eprintln!("lifecycle_on_glusterfs: {:.1}s", t0.elapsed().as_secs_f64());
});
