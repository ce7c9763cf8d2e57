//! What `nix-seed gc` says and how much it does: `--max-freed` stops early and leaves a
//! consistent store (referrers are deleted before what they refer to, so a stop anywhere
//! leaves no reference to a missing path); repeated runs end where one run ends; the JSON
//! `gc` event and the termination log count what was done.

use std::collections::BTreeSet;

use super::collect::scene;
use super::{all, deleted, print_dead, valid, would_delete, Gc};
use crate::support::cmd::text;
use crate::support::pods::{pod_config, Disk};

/// References (Refs rows) from a valid path to a path that is not valid, by SQL, and
/// valid paths missing from the disk: what a stop must never leave.
fn broken(disk: &Disk) -> Vec<String> {
    let c = super::db(disk.nix());
    let mut st = c
        .prepare(
            "SELECT a.path, r.reference FROM Refs r JOIN ValidPaths a ON a.id = r.referrer \
             LEFT JOIN ValidPaths b ON b.id = r.reference WHERE b.id IS NULL",
        )
        .unwrap();
    let mut bad: Vec<String> = st
        .query_map([], |r| {
            Ok(format!("{} -> id {}", r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    bad.extend(
        valid(disk.nix())
            .into_iter()
            .filter(|p| disk.host(p).symlink_metadata().is_err())
            .map(|p| format!("missing: {p}")),
    );
    bad
}

// --max-freed 1 (byte): every run stops after what it deleted first, and the store is
// consistent after each; run after run, the deletions add up to Nix's dead set.
nixtest!(max_freed_stops_early_and_every_stop_leaves_a_consistent_store, |t| {
    let s = scene(t, &pod_config());
    let dead = print_dead(&s.disk);
    let mut gone = BTreeSet::new();
    for run in 0.. {
        assert!(run <= dead.len(), "more runs than dead paths: {gone:?}");
        let o = Gc::new(s.disk.nix())
            .args(["-v", "--min-age", "0", "--max-freed", "1"])
            .ok();
        let d = deleted(&o);
        let bad = broken(&s.disk);
        assert!(bad.is_empty(), "run {run} stopped with {bad:?}\n{}", text(&o));
        if d.is_empty() {
            break;
        }
        assert!(d.is_disjoint(&gone), "deleted twice: {d:?}");
        if gone.len() + d.len() < dead.len() {
            assert!(
                all(&o).contains("max-freed"),
                "the summary says why it stopped:\n{}",
                text(&o)
            );
        }
        gone.extend(d);
    }
    assert!(dead.len() > 2, "the scene has enough garbage to stop early");
    assert_eq!(gone, dead, "all runs together delete what one run deletes");
    super::assert_consistent(&s.disk, t, true);
});

fn gc_event(o: &std::process::Output) -> serde_json::Value {
    let events: Vec<serde_json::Value> = all(o)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "gc")
        .collect();
    assert_eq!(events.len(), 1, "one gc event:\n{}", text(o));
    events[0].clone()
}

// --log-format json: one `gc` event whose counts match the paths named, for --dry-run and
// for the real run; its summary is also the termination log's message.
nixtest!(the_json_gc_event_and_the_termination_log_count_what_was_done, |t| {
    let s = scene(t, &pod_config());
    let dead = print_dead(&s.disk);
    let dry = Gc::new(s.disk.nix())
        .args(["-v", "--min-age", "0", "--dry-run", "--log-format", "json"])
        .ok();
    let e = gc_event(&dry);
    assert_eq!(e["dry_run"], true);
    assert_eq!(e["deleted"].as_u64(), Some(dead.len() as u64), "{e}");
    let named: BTreeSet<String> = all(&dry)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "would-delete")
        .map(|v| v["path"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(named, dead);
    let kept = valid(s.disk.nix()).len() - dead.len();
    let kept_sum: u64 = ["kept_rooted", "kept_temp_roots", "kept_young", "kept_recently_read"]
        .iter()
        .map(|k| e[k].as_u64().unwrap())
        .sum();
    assert_eq!(kept_sum, kept as u64, "every valid path kept is counted once: {e}");
    assert_eq!(e["kept_rooted"].as_u64(), Some(kept as u64), "all rooted: {e}");

    let term = t.join("termination-log");
    std::fs::write(&term, "").unwrap();
    let o = Gc::new(s.disk.nix())
        .args(["-v", "--min-age", "0", "--log-format", "json"])
        .env("NIX_SEED_TERMINATION_LOG", &term)
        .ok();
    let e = gc_event(&o);
    assert_eq!(e["dry_run"], false);
    assert_eq!(e["deleted"].as_u64(), Some(dead.len() as u64), "{e}");
    assert!(e["bytes_freed"].as_u64().unwrap() > 0);
    let msg = std::fs::read_to_string(&term).unwrap();
    assert!(
        msg.contains(&format!("deleted {} store paths", dead.len())),
        "termination log: {msg:?}"
    );
    assert!(dead.iter().all(|p| !valid(s.disk.nix()).contains(p)));
    let again = Gc::new(s.disk.nix()).args(["--min-age", "0"]).ok();
    assert!(would_delete(&again).is_empty() && deleted(&again).is_empty());
});

// The pods' nix.conf, found as Nix finds it ($NIX_CONF_DIR/nix.conf when --nix-conf is
// not given): keep-outputs there is honoured like --nix-conf's; min-free there (Nix's
// automatic collection, which must not run on a shared store) draws a warning.
nixtest!(nix_conf_dir_is_read_and_automatic_collection_is_warned_about, |t| {
    let config = format!("{}keep-outputs = true\n", pod_config());
    let s = scene(t, &config);
    let dead = print_dead(&s.disk);
    assert!(!dead.contains(&s.drvonly_out));
    let dir = t.join("conf-dir");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("nix.conf"), "keep-outputs = true\nmin-free = 1G\n").unwrap();
    let dry = Gc::new(s.disk.nix())
        .args(["--dry-run", "--min-age", "0"])
        .env("NIX_CONF_DIR", &dir)
        .ok();
    assert_eq!(
        would_delete(&dry),
        dead,
        "keep-outputs from $NIX_CONF_DIR:\n{}",
        text(&dry)
    );
    assert!(
        all(&dry).contains("min-free"),
        "a warning names min-free:\n{}",
        text(&dry)
    );
    std::fs::write(dir.join("nix.conf"), "keep-outputs = true\n").unwrap();
    let quiet = Gc::new(s.disk.nix())
        .args(["--dry-run", "--min-age", "0"])
        .env("NIX_CONF_DIR", &dir)
        .ok();
    assert!(!all(&quiet).contains("min-free"), "{}", text(&quiet));
});
