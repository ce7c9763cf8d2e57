//! `nix-seed gc` on GlusterFS (`scripts/netfs.sh`: one volume, two FUSE clients as two
//! nodes): the gc runs through client 1 while a pod's Nix works through client 2. What it
//! deletes and keeps is what it deletes and keeps on a local disk with the same history;
//! the pod's Nix, on another node, cannot reach the gc socket and waits for `gc.lock`
//! (never fails), and what it added is valid afterwards; real Nix finds the store
//! consistent.

use std::collections::BTreeSet;
use std::path::Path;

use super::{age, all, assert_consistent, deleted, file, last_path, store_names, valid, Gc};
use crate::support;
use crate::support::cmd::text;
use crate::support::netfs::{netfs, VolDir};
use crate::support::pods::{Disk, GatedBuild};

/// The same history on any disk (same expressions and files: same store paths): an
/// unrooted build made old, a rooted one, a young unrooted `--add`. Returns the old paths.
fn history(disk: &Disk, shared: &Path) -> BTreeSet<String> {
    let (gone, keep) = (GatedBuild::new(shared, "nf-gone"), GatedBuild::new(shared, "nf-keep"));
    gone.gate.open();
    keep.gate.open();
    let f = file(&shared.join("files"), "nf-junk", "junk on a network disk\n");
    disk.pod("user").ok(&format!(
        "set -e; nix-build {} --no-out-link; mkdir -p /nix/var/keep; nix-build {} --out-link /nix/var/keep/result; nix-store --add {}",
        gone.expr.display(),
        keep.expr.display(),
        f.display()
    ));
    let old: BTreeSet<String> = valid(disk.nix())
        .into_iter()
        .filter(|p| p.contains("-nf-gone-"))
        .collect();
    assert_eq!(old.len(), 4, "{old:?}");
    age(disk.nix(), &old, 30);
    old
}

// Volume nsdefault: GlusterFS's default caching.
#[test]
fn gc_through_one_glusterfs_client_while_a_pod_works_through_another() {
    gc_on_glusterfs(
        "gc::netfs::gc_through_one_glusterfs_client_while_a_pod_works_through_another",
        "DEFAULT",
    );
}

// Volume nsstrict: caches off, attribute and entry timeouts 0.
#[test]
fn gc_through_one_glusterfs_client_while_a_pod_works_through_another_strict_caching() {
    gc_on_glusterfs(
        "gc::netfs::gc_through_one_glusterfs_client_while_a_pod_works_through_another_strict_caching",
        "STRICT",
    );
}

fn gc_on_glusterfs(name: &str, volume: &str) {
    if !support::nix::nix_available(name) {
        return;
    }
    let Some((_serial, n)) = netfs(name) else { return };
    let t = support::scratch();
    let shared = t.join("shared");

    // The local disk: the reference.
    let local = Disk::new(&t.join("local"));
    let old = history(&local, &shared);
    let local_first = Gc::new(local.nix()).args(["-v"]).ok();
    let local_second = Gc::new(local.nix()).args(["-v", "--min-age", "0"]).ok();
    assert_eq!(deleted(&local_first), old, "{}", text(&local_first));
    assert!(!deleted(&local_second).is_empty());

    let vol = VolDir::new(
        "gc",
        &[
            n.mount(&format!("GLUSTER_{volume}_A")),
            n.mount(&format!("GLUSTER_{volume}_B")),
        ],
    );
    let node2 = Disk::at(&vol.b().join("nix"), &t.join("logs"));
    std::fs::create_dir_all(node2.nix()).unwrap();
    assert_eq!(history(&node2, &shared), old);
    let target = vol.a().join("nix");

    // gc through client 1, held after finding its roots; a pod adds through client 2.
    let log = t.join("gc");
    let gc = Gc::new(&target)
        .args(["-v"])
        .failpoint("gc-roots-found=sleep8")
        .spawn(&log);
    support::wait_for(120, "the gc at gc-roots-found", || {
        std::fs::read_to_string(log.with_extension("err")).is_ok_and(|e| e.contains("gc-roots-found reached"))
    });
    let f = file(&shared.join("files"), "nf-during", "added during the gc\n");
    let mut pod = node2
        .pod("during")
        .start(&format!("exec nix-store --add {}", f.display()));
    let g = super::finish(gc, &log);
    assert!(g.status.success(), "{}", text(&g));
    eprintln!(
        "the pod on node 2 {} the gc on node 1 ended",
        if pod.exited() {
            "finished before"
        } else {
            "was still waiting when"
        }
    );
    let added = last_path(&pod.ok());
    assert!(valid(node2.nix()).contains(&added) && node2.host(&added).exists());

    assert_eq!(deleted(&g), deleted(&local_first), "as on a local disk:\n{}", text(&g));
    let second = Gc::new(&target).args(["-v", "--min-age", "0"]).ok();
    let mut want = deleted(&local_second);
    want.insert(added.clone()); // nothing roots it: garbage too, with --min-age 0
    assert_eq!(deleted(&second), want, "as on a local disk:\n{}", text(&second));
    let mut local_names = store_names(local.nix());
    local_names.retain(|n| !n.ends_with(".lock"));
    assert_eq!(store_names(&target), local_names, "the same store is left");
    assert!(!all(&second).contains("error"), "{}", text(&second));
    // Real Nix's verdict through client 1, then through client 2 once its caches show the
    // database client 1 wrote (GlusterFS's default caching: a read through another client
    // may see the old file for a moment).
    assert_consistent(&Disk::at(&target, &t.join("logs")), &t, true);
    let t0 = std::time::Instant::now();
    support::wait_for(30, "client 2 to see the database client 1 wrote", || {
        valid(node2.nix()) == valid(&target)
    });
    eprintln!("client 2 saw the gc's database after {:?}", t0.elapsed());
    assert_consistent(&node2, &t, true);
}

// A live temp-roots file held by a pod's Nix on node 2 (its build waiting at its gate)
// is live to the gc on node 1: its lock, taken through client 2, is seen through client 1
// (GlusterFS's posix-locks), so its input is kept with --min-age 0 and the
// file is not removed as stale; the build then finishes.
#[test]
fn a_temp_roots_file_held_on_another_node_is_live() {
    let name = "gc::netfs::a_temp_roots_file_held_on_another_node_is_live";
    if !support::nix::nix_available(name) {
        return;
    }
    let Some((_serial, n)) = netfs(name) else { return };
    let t = support::scratch();
    let vol = VolDir::new("gc-tr", &[n.mount("GLUSTER_DEFAULT_A"), n.mount("GLUSTER_DEFAULT_B")]);
    let node2 = Disk::at(&vol.b().join("nix"), &t.join("logs"));
    std::fs::create_dir_all(node2.nix()).unwrap();
    let build = GatedBuild::new(&t.join("exprs"), "nf-live");
    let a = node2.pod("a").start(&build.script(&t.join("a-result")));
    build.wait_started();
    let target = vol.a().join("nix");
    let dep = valid(&target)
        .into_iter()
        .find(|p| p.ends_with("-nf-live-dep"))
        .expect("A built its input");
    let tr = target.join("var/nix/temproots/1");
    assert!(tr.exists(), "A's Nix (PID 1) has temproots/1");

    let gc = Gc::new(&target).args(["-v", "--min-age", "0"]).ok();
    assert!(!deleted(&gc).contains(&dep), "{}", text(&gc));
    assert!(valid(&target).contains(&dep));
    assert!(tr.exists(), "a live temp-roots file is not removed as stale");
    build.gate.open();
    let out = a.ok();
    let result = last_path(&out);
    assert!(valid(node2.nix()).contains(&result));
}

// Two gcs on two nodes: the second, through client 2, waits for the first (held at
// gc-locked through client 1): with --lock-timeout 2s it exits 3; once the first is done
// it runs.
#[test]
fn a_second_gc_on_another_node_waits() {
    let name = "gc::netfs::a_second_gc_on_another_node_waits";
    if !support::nix::nix_available(name) {
        return;
    }
    let Some((_serial, n)) = netfs(name) else { return };
    let t = support::scratch();
    let vol = VolDir::new("gc-2", &[n.mount("GLUSTER_DEFAULT_A"), n.mount("GLUSTER_DEFAULT_B")]);
    let node1 = Disk::at(&vol.a().join("nix"), &t.join("logs"));
    std::fs::create_dir_all(node1.nix()).unwrap();
    let f = file(&t.join("files"), "nf2-junk", "junk\n");
    let junk = last_path(&node1.pod("p").ok(&format!("exec nix-store --add {}", f.display())));
    let log = t.join("gc1");
    let gc1 = Gc::new(node1.nix())
        .args(["-v", "--min-age", "0"])
        .failpoint("gc-locked=stop")
        .spawn(&log);
    support::wait_stopped(gc1.id());
    let node2 = vol.b().join("nix");
    let quick = Gc::new(&node2)
        .args(["--min-age", "0", "--lock-timeout", "2s"])
        .output();
    assert_eq!(quick.status.code(), Some(3), "{}", text(&quick));
    crate::support::cont(gc1.id());
    let o1 = super::finish(gc1, &log);
    assert!(o1.status.success(), "{}", text(&o1));
    assert!(deleted(&o1).contains(&junk));
    let o2 = Gc::new(&node2).args(["-v", "--min-age", "0"]).ok();
    assert!(deleted(&o2).is_empty(), "{}", text(&o2));
}
