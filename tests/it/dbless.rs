//! Issue #18: images without a Nix database (dockerTools, nix2container, flox, nixery:
//! `/nix/store` complete, no `/nix/var`, hardlinks split, mtime 1, owner 0), images whose
//! database holds only part of the truth, and registration files. nix-seed must register
//! every image path as real Nix registered it after the build (the oracle: the database
//! of the store real Nix built, read before it was stripped or altered), root it, and a
//! pod's Nix must then find it valid, intact and kept by its garbage collector.
//!
//! * [`plain`]: a database-less image into an empty target, into a target already serving
//!   another image, checked by Nix 2.26 too; what `status` and `images` report.
//! * [`partial`]: an image database missing a row, holding a dangling reference, with
//!   rows only in its `-wal`; `lost+found` and a stray file in the image's store.
//! * [`regfile`]: closureInfo's registration file, given or found beside the image, and
//!   lying ones.
//! * [`failures`]: an incomplete closure, a seed killed holding the database lock, a
//!   slimmed image and the profile, a deleted root, a garbage or empty image database.

mod failures;
mod partial;
mod plain;
mod regfile;

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

use crate::support;
use crate::support::cmd::{nix_seed, stdout, text};
use crate::support::dbless::{images_original_registrations, strip_like_docker_tools, Regs};
use crate::support::images::collect_garbage;
use crate::support::nix::{assert_contents_verify, in_pod, real_store};

/// A store built by real Nix, stripped of its database.
pub struct Stripped {
    /// `<image>/nix`: only `store/`, as a database-less image ships it.
    pub image: PathBuf,
    /// What real Nix registered for it.
    pub orig: Regs,
}

impl Stripped {
    pub fn paths(&self) -> Vec<String> {
        self.orig.keys().cloned().collect()
    }

    /// The image root (holding `nix/`), as `support::cmd::Seed::image` takes it.
    pub fn root(&self) -> &Path {
        self.image.parent().unwrap()
    }
}

/// `variant` (v1, v2) built by real Nix under `dir/real`, stripped to `dir/image`.
pub fn stripped(dir: &Path, variant: &str) -> Stripped {
    let real = dir.join("real");
    real_store(&real, variant, false);
    let image = dir.join("image");
    strip_like_docker_tools(&real, &image);
    Stripped {
        image: image.join("nix"),
        orig: images_original_registrations(&real),
    }
}

/// An empty target directory `dir/t/nix`.
pub fn empty_target(dir: &Path) -> PathBuf {
    let t = dir.join("t/nix");
    std::fs::create_dir_all(&t).unwrap();
    t
}

/// The target has a Nix database (a seed that registered nothing creates none).
#[track_caller]
pub fn assert_has_db(target: &Path) {
    assert!(
        target.join("var/nix/db/db.sqlite").exists(),
        "no Nix database in the target {}: nothing was registered",
        target.display()
    );
}

/// Real Nix 2.8 in a pod: every one of `paths` valid, `--verify --check-contents` clean,
/// and a real `nix-store --gc` deletes none of them (all still valid and present after).
pub fn assert_pod_keeps(target: &Path, paths: &[String], scratch: &Path) {
    assert_has_db(target);
    let check = format!("nix-store --check-validity {}", paths.join(" "));
    let o = in_pod(target, &check);
    assert!(o.status.success(), "nix-store --check-validity:\n{}", text(&o));
    assert_contents_verify(target, &scratch.join("verify-copy"));
    let deleted = collect_garbage(target);
    let lost: Vec<&String> = paths.iter().filter(|p| deleted.contains(*p)).collect();
    assert!(lost.is_empty(), "a pod's nix-store --gc deleted image paths: {lost:?}");
    let o = in_pod(target, &check);
    assert!(o.status.success(), "after nix-store --gc:\n{}", text(&o));
    for p in paths {
        let on_disk = target.join("store").join(p.strip_prefix("/nix/store/").unwrap());
        assert!(on_disk.symlink_metadata().is_ok(), "{p} gone after nix-store --gc");
    }
}

/// Which paths a pod's Nix finds valid in `target`, of `paths` (none without a database).
pub fn valid_in_pod(target: &Path, paths: &[String]) -> Vec<String> {
    if !target.join("var/nix/db/db.sqlite").exists() {
        return Vec::new();
    }
    let script = format!(
        "for p in {}; do nix-store --check-validity $p 2>/dev/null && echo $p; done; true",
        paths.join(" ")
    );
    let o = in_pod(target, &script);
    assert!(o.status.success(), "{}", text(&o));
    stdout(&o).lines().map(str::to_string).collect()
}

/// `nix-seed status --source IMG/nix --target T [--log-format json]`.
pub fn status(image: &Path, target: &Path, json: bool) -> Output {
    let mut c = nix_seed();
    c.arg("status").arg("--source").arg(image).arg("--target").arg(target);
    if json {
        c.args(["--log-format", "json"]);
    }
    c.output().unwrap()
}

/// The status report as JSON.
pub fn status_json(image: &Path, target: &Path) -> Value {
    let o = status(image, target, true);
    let line = stdout(&o)
        .lines()
        .find(|l| l.contains("\"event\":\"status\""))
        .unwrap_or_else(|| panic!("no status report:\n{}", text(&o)))
        .to_string();
    serde_json::from_str(&line).unwrap()
}

/// `{"database": d, "file": f, "computed": c}`, as `status` and `images` report it.
pub fn registrations(database: usize, file: usize, computed: usize) -> Value {
    registrations_with_valid(database, file, computed, 0)
}

/// [`registrations`], with `already_valid` paths the target had registered before.
pub fn registrations_with_valid(database: usize, file: usize, computed: usize, already_valid: usize) -> Value {
    serde_json::json!({"database": database, "file": file, "computed": computed, "already_valid": already_valid})
}

/// Stderr's lines that are warnings.
pub fn warnings(o: &Output) -> Vec<String> {
    support::cmd::stderr(o)
        .lines()
        .filter(|l| l.to_lowercase().contains("warning"))
        .map(str::to_string)
        .collect()
}

/// `line` holds the number `n` as a word.
pub fn has_number(line: &str, n: usize) -> bool {
    line.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|w| w == n.to_string())
}

/// The base name of a store path.
pub fn base(p: &str) -> &str {
    p.strip_prefix("/nix/store/").unwrap()
}
