//! `nix-seed images` and `nix-seed prune` as the tests run them, and a real garbage
//! collection as a pod runs it: shared by the `images` and `lifecycle` tests.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::SystemTime;

use serde_json::Value;

use super::cmd::{assert_ok, nix_seed, stderr, stdout, text};
use super::nix::{nix_config, nix_seed_db_is_wal};

pub fn run(args: &[&str], target: &Path) -> Output {
    nix_seed().args(args).arg("--target").arg(target).output().unwrap()
}

/// Stdout's JSON lines.
pub fn json_lines(o: &Output) -> Vec<Value> {
    stdout(o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// `nix-seed images --log-format json`: each image's object by id, and the totals.
pub fn images(target: &Path) -> (BTreeMap<String, Value>, Value) {
    let o = run(&["images", "--log-format", "json"], target);
    assert_ok(&o);
    let mut v = json_lines(&o);
    let total = v.pop().unwrap();
    assert_eq!(total["event"], "images-total", "{}", text(&o));
    let by_id = v
        .into_iter()
        .map(|i| (i["image_id"].as_str().unwrap().to_string(), i))
        .collect();
    (by_id, total)
}

/// The id of the image just seeded: the one whose marker is newest.
pub fn newest_id(target: &Path) -> String {
    std::fs::read_dir(target.join(".nix-seed/images"))
        .unwrap()
        .map(|e| e.unwrap())
        .max_by_key(|e| e.metadata().unwrap().modified().unwrap())
        .unwrap()
        .file_name()
        .into_string()
        .unwrap()
}

pub fn marker(target: &Path, id: &str) -> PathBuf {
    target.join(".nix-seed/images").join(id)
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A shell command in a pod with its own pid namespace (so no process of this machine is
/// a runtime root) and `keep-derivations = false` (Nix then keeps exactly what roots
/// reach), `nix` bind-mounted at /nix.
pub fn in_gc_pod(nix: &Path, script: &str) -> Output {
    Command::new("unshare")
        .args(["-m", "-p", "-f", "--mount-proc", "sh", "-c"])
        .arg(format!(
            "mkdir -p /nix && mount --bind '{}' /nix && {script}",
            nix.display()
        ))
        .env(
            "NIX_CONFIG",
            format!("{}keep-derivations = false\n", nix_config(nix_seed_db_is_wal(nix))),
        )
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// A real garbage collection in a pod ([`in_gc_pod`]). Returns the store entries it
/// deleted.
pub fn collect_garbage(target: &Path) -> BTreeSet<String> {
    let before = store_names(target);
    let o = in_gc_pod(target, "nix-store --gc");
    assert!(o.status.success(), "nix-store --gc:\n{}", text(&o));
    before
        .difference(&store_names(target))
        .map(|n| format!("/nix/store/{n}"))
        .collect()
}

pub fn store_names(target: &Path) -> BTreeSet<String> {
    std::fs::read_dir(target.join("store"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| !n.starts_with('.'))
        .collect()
}

/// The paths `prune -v --log-format json` says a collection would delete, and the ids it
/// retired.
pub fn prune(target: &Path, args: &[&str]) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut all = vec!["prune", "-v", "--log-format", "json"];
    all.extend(args);
    let o = run(&all, target);
    assert_ok(&o);
    let freeable = stderr(&o)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["event"] == "freeable")
        .map(|v| v["path"].as_str().unwrap().to_string())
        .collect();
    let summary = json_lines(&o).pop().unwrap();
    assert_eq!(summary["event"], "prune", "{}", text(&o));
    assert_eq!(summary["freeable_store_paths"].as_u64().unwrap() as usize, {
        let f: &BTreeSet<String> = &freeable;
        f.len()
    });
    let retired = summary["retired"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    (freeable, retired)
}
