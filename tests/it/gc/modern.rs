//! Nix 2.26 (Debian trixie's, `scripts/modern-nix.sh`) as a second oracle: it names the
//! same dead set as Nix 2.8 and as `nix-seed gc --min-age 0`, accepts the store after the
//! collection, and a 2.26 pod adding a path while the gc holds `gc.lock` reaches the gc
//! socket nix-seed serves (the protocol did not change between 2.8 and 2.26).

use std::collections::BTreeSet;
use std::time::Instant;

use super::collect::scene;
use super::{age_all, cp_a, deleted, file, finish, last_path, print_dead, registration_time, valid, Gc};
use crate::support;
use crate::support::cmd::text;
use crate::support::modern::Nix;
use crate::support::pods::{pod_config, Disk};

moderntest!(nix_2_26_names_the_same_dead_set_and_accepts_the_store_after, |t| {
    let s = scene(t, &pod_config());
    let dead_28 = print_dead(&s.disk);
    // 2.26 on a copy: it may bring the database up to its own schema.
    let copy = t.join("copy/nix");
    cp_a(s.disk.nix(), &copy);
    let dead_26: BTreeSet<String> = Nix::V2_26
        .pod_ok(&copy, "nix-store --gc --print-dead")
        .lines()
        .filter(|l| l.starts_with("/nix/store/"))
        .map(str::to_string)
        .collect();
    assert_eq!(dead_26, dead_28, "the two Nix versions agree");

    let gc = Gc::new(s.disk.nix()).args(["-v", "--min-age", "0"]).ok();
    assert_eq!(deleted(&gc), dead_26, "{}", text(&gc));
    let left: Vec<String> = valid(s.disk.nix()).into_iter().collect();
    let copy = t.join("after/nix");
    cp_a(s.disk.nix(), &copy);
    Nix::V2_26.assert_valid(&copy, &left, "every path left");
    let refs = Nix::V2_26.references(&copy, &left);
    let dangling: Vec<&String> = refs.values().flatten().filter(|r| !left.contains(r)).collect();
    assert!(dangling.is_empty(), "references to deleted paths: {dangling:?}");
    let again = Nix::V2_26.pod_ok(&copy, "nix-store --gc --print-dead");
    assert!(
        !again.lines().any(|l| l.starts_with("/nix/store/")),
        "2.26 finds nothing more to collect:\n{again}"
    );
    Nix::V2_26.assert_contents_verify(s.disk.nix(), &t.join("verify"));
});

// A Nix 2.26 client while the gc holds gc.lock between finding roots and deleting: it
// re-adds a garbage path and finishes before the gc ends (through the socket); the path
// is never deleted (its registration time is unchanged).
moderntest!(
    a_nix_2_26_pod_re_adding_garbage_during_a_gc_is_served_by_its_socket,
    |t| {
        let disk = Disk::new(&t.join("disk"));
        let f = file(&t.join("files"), "readd", "re-added by Nix 2.26\n");
        let g = file(&t.join("files"), "junk", "nobody uses this\n");
        let out = disk
            .pod("p")
            .ok(&format!("exec nix-store --add {} {}", f.display(), g.display()));
        let (readd, junk) = {
            let l: Vec<&str> = out.lines().collect();
            (l[0].to_string(), l[1].to_string())
        };
        age_all(disk.nix(), 30);
        let before = registration_time(disk.nix(), &readd);

        let log = t.join("gc");
        let mut gc = Gc::new(disk.nix())
            .args(["-v", "--min-age", "0"])
            .failpoint("gc-roots-found=sleep20")
            .spawn(&log);
        support::wait_for(60, "the gc at gc-roots-found", || {
            std::fs::read_to_string(log.with_extension("err")).is_ok_and(|e| e.contains("gc-roots-found reached"))
        });
        let t0 = Instant::now();
        // The host's files are not in 2.26's tree: the same name and contents, made there.
        let o = Nix::V2_26.pod(
            disk.nix(),
            "d=$(mktemp -d) && printf 're-added by Nix 2.26\\n' > $d/readd && nix-store --add $d/readd",
        );
        assert!(o.status.success(), "{}", text(&o));
        assert_eq!(last_path(&String::from_utf8_lossy(&o.stdout)), readd);
        assert!(
            gc.try_wait().unwrap().is_none(),
            "Nix 2.26 finished while the gc held gc.lock, in {:?}",
            t0.elapsed()
        );
        let out = finish(gc, &log);
        assert!(out.status.success(), "{}", text(&out));
        assert!(valid(disk.nix()).contains(&readd) && disk.host(&readd).exists());
        assert_eq!(
            registration_time(disk.nix(), &readd),
            before,
            "never deleted and re-added"
        );
        assert!(
            deleted(&out).contains(&junk) && !deleted(&out).contains(&readd),
            "{}",
            text(&out)
        );
        super::assert_consistent(&disk, t, true);
    }
);
