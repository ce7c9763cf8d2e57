//! The delayed GlusterFS volume (`nsdelay` of scripts/netfs.sh: debug/delay-gen above the
//! brick's storage/posix, every file operation 1 ms late, as on the network disks users
//! seed). A smoke test for CI: a seed there is exact and real Nix accepts it. Its speed
//! is measured by `scripts/bench.sh --latency` (BENCHMARKS.md), not asserted here: times
//! on a shared 2-core machine are no test.

use std::time::Instant;

use crate::support;
use crate::support::cmd::{text, Seed};
use crate::support::compare::{assert_no_temp, assert_store_equal, assert_var_seeded};
use crate::support::fixture::{self, Spec};
use crate::support::netfs::{netfs, run_netfs_args, VolDir};

/// Files (of every kind) below a store directory.
fn count_files(dir: &std::path::Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        n += 1;
        if e.file_type().unwrap().is_dir() {
            n += count_files(&e.path());
        }
    }
    n
}

fn cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

#[test]
fn a_seed_on_a_volume_with_1ms_per_operation_is_exact_and_nix_accepts_it() {
    let test = "delayed_volume";
    let Some((_serial, _)) = netfs(test) else { return };
    let n = run_netfs_args(&["delay", "1000"]).unwrap_or_else(|e| panic!("{test}: {e}"));
    assert_eq!(
        n.vars.get("GLUSTER_DELAY_US").map(String::as_str),
        Some("1000"),
        "{:?}",
        n.vars
    );
    let mounts = [n.mount("GLUSTER_DELAY_A"), n.mount("GLUSTER_DELAY_B")];
    let tmp = support::scratch();

    // Every hard case of the fixture (hardlinks within and across paths, symlinks,
    // owners, modes, a .links directory), a few hundred files.
    let src = fixture::build(
        &tmp.path().join("src"),
        &Spec {
            paths: 24,
            big_file_bytes: 256 << 10,
            ..Spec::default()
        },
    );
    let files = count_files(&src.store());
    let t = VolDir::new(test, &mounts);
    let t0 = Instant::now();
    let o = Seed::new(&src.root, t.a()).output();
    let secs = t0.elapsed().as_secs_f64();
    assert!(o.status.success(), "{}", text(&o));
    // No --jobs: the default for a network filesystem (GlusterFS is FUSE), said on the
    // start line.
    let err = String::from_utf8_lossy(&o.stderr);
    let want = format!(
        " with {} jobs (network filesystem)",
        nix_seed::base::jobs::network_default(cpus())
    );
    assert!(err.contains(&want), "the start line should say{want}:\n{err}");
    eprintln!(
        "{test}: {} store paths, {files} entries seeded at 1 ms/op in {secs:.1}s",
        src.names.len()
    );
    // Exact, seen through the other mount (the other node).
    assert_store_equal(&src.root, t.b());
    assert_var_seeded(&src.root, t.b());
    assert_no_temp(t.b());

    // A store built by real Nix: Nix accepts the seeded target.
    if support::nix::nix_available(test) {
        let image = support::nix::real_store(&tmp.path().join("v1"), "v1", false).join("nix");
        let t = VolDir::new(&format!("{test}-nix"), &mounts);
        let o = Seed::new(&image, t.a()).output();
        assert!(o.status.success(), "{}", text(&o));
        assert_store_equal(&image, t.b());
        super::assert_nix_accepts_batched(t.b(), &image, tmp.path());
    }
    eprintln!("{test}: {:.1}s", t0.elapsed().as_secs_f64());
}
