//! Nix's gc socket while `nix-seed gc` is deleting (not only before it decides): more
//! garbage than one batch (paths are unregistered and removed in batches), the gc held at
//! its first removal, and pods' Nix re-adding garbage paths from anywhere in the order at
//! that moment. Whatever Nix was told, it holds at the end: every path a pod's
//! `nix-store --add` returned is valid, on the disk, with its contents. A path whose batch
//! is being deleted is answered only once its deletion is over (Nix then adds it again); a
//! path of a later batch is kept (its registration unchanged).

use std::collections::BTreeMap;

use super::{age_all, deleted, file, finish, last_path, registration_time, valid, Gc};
use crate::support;
use crate::support::cmd::text;
use crate::support::pods::Disk;

/// More than one batch (256 in the implementation) of unrooted `--add` paths.
const GARBAGE: usize = 300;

nixtest!(what_a_pods_nix_was_told_is_valid_during_the_deletion_stays_valid, |t| {
    let disk = Disk::new(&t.join("disk"));
    let dir = t.join("files");
    let files: Vec<_> = (0..GARBAGE)
        .map(|i| file(&dir, &format!("g{i:03}"), &format!("garbage number {i}\n")))
        .collect();
    let list: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    let out = disk.pod("p").ok(&format!("exec nix-store --add {}", list.join(" ")));
    let paths: Vec<String> = out.lines().map(str::to_string).collect();
    assert_eq!(paths.len(), GARBAGE);
    age_all(disk.nix(), 30);

    // The sample: first and last by path (the ends of any order by name), and some between.
    let mut by_path: Vec<usize> = (0..GARBAGE).collect();
    by_path.sort_by(|a, b| paths[*a].cmp(&paths[*b]));
    let sample: Vec<usize> = [
        0,
        1,
        GARBAGE / 3,
        GARBAGE / 2,
        2 * GARBAGE / 3,
        GARBAGE - 2,
        GARBAGE - 1,
    ]
    .iter()
    .map(|&k| by_path[k])
    .collect();
    let before: BTreeMap<usize, Option<i64>> = sample
        .iter()
        .map(|&i| (i, registration_time(disk.nix(), &paths[i])))
        .collect();

    let log = t.join("gc");
    let gc = Gc::new(disk.nix())
        .args(["-v", "--min-age", "0"])
        .failpoint("gc-deleted=sleep15")
        .spawn(&log);
    support::wait_for(120, "the gc at its first removal", || {
        std::fs::read_to_string(log.with_extension("err")).is_ok_and(|e| e.contains("gc-deleted reached"))
    });
    let pods: Vec<_> = sample
        .iter()
        .map(|&i| {
            let p = disk
                .pod(&format!("readd-{i}"))
                .start(&format!("exec nix-store --add {}", files[i].display()));
            (i, p)
        })
        .collect();
    let told: Vec<(usize, String)> = pods.into_iter().map(|(i, p)| (i, last_path(&p.ok()))).collect();
    let o = finish(gc, &log);
    assert!(o.status.success(), "{}", text(&o));

    let v = valid(disk.nix());
    let del = deleted(&o);
    let mut kept_through = 0;
    for (i, p) in &told {
        assert_eq!(p, &paths[*i]);
        assert!(
            v.contains(p) && disk.host(p).exists(),
            "a pod's Nix returned {p}, which is gone:\n{}",
            text(&o)
        );
        assert_eq!(
            std::fs::read_to_string(disk.host(p)).unwrap(),
            format!("garbage number {i}\n")
        );
        if !del.contains(p) {
            kept_through += 1;
            assert_eq!(
                registration_time(disk.nix(), p),
                before[i],
                "{p} kept, registration unchanged"
            );
        }
    }
    assert!(
        kept_through > 0,
        "some sampled path was in a later batch and kept:\n{}",
        text(&o)
    );
    assert!(
        del.len() >= GARBAGE - told.len(),
        "the rest of the garbage went:\n{}",
        text(&o)
    );
    super::assert_consistent(&disk, t, true);
});
