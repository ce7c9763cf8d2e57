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

// Clients of the gc socket that are not a well-behaved Nix: one that connects and never
// sends, one that sends junk lines (not store paths, an over-long line), one that
// disconnects in the middle of a line. The gc answers or drops them, is never blocked by
// them, and finishes its collection as if they were not there.
nixtest!(the_gc_socket_survives_silent_junk_and_vanishing_clients, |t| {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let disk = Disk::new(&t.join("disk"));
    let f = file(&t.join("files"), "junk", "junk\n");
    let junk = last_path(&disk.pod("p").ok(&format!("exec nix-store --add {}", f.display())));
    let log = t.join("gc");
    let gc = Gc::new(disk.nix())
        .args(["-v", "--min-age", "0"])
        .failpoint("gc-roots-found=sleep5")
        .spawn(&log);
    support::wait_for(60, "the gc at gc-roots-found", || {
        std::fs::read_to_string(log.with_extension("err")).is_ok_and(|e| e.contains("gc-roots-found reached"))
    });
    let socket = disk.nix().join("var/nix/gc-socket/socket");
    let silent = UnixStream::connect(&socket).expect("the gc serves its socket");
    let mut talker = UnixStream::connect(&socket).unwrap();
    talker
        .set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    for line in [
        "not a store path\n".to_string(),
        format!("/nix/store/{}\n", "x".repeat(100_000)),
    ] {
        if talker.write_all(line.as_bytes()).is_err() {
            break; // dropped: fine
        }
        let mut c = [0u8; 1];
        match talker.read(&mut c) {
            Ok(1) => assert_eq!(&c, b"1", "Nix's protocol: the reply is '1'"),
            _ => break, // closed, or no answer to junk: fine, as long as the gc goes on
        }
    }
    let mut half = UnixStream::connect(&socket).unwrap();
    half.write_all(b"/nix/store/abc").unwrap();
    drop(half);
    let o = finish(gc, &log);
    drop(silent);
    assert!(o.status.success(), "{}", text(&o));
    assert!(deleted(&o).contains(&junk), "{}", text(&o));
    super::assert_consistent(&disk, t, true);
});
