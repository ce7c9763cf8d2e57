//! Images built by real Nix one on top of another (v1, v2, v3), and what a pod sees of a
//! target's profiles: shared by the profile tests (`profiles`) and the end-to-end
//! lifecycle test (`lifecycle`).

use std::path::{Path, PathBuf};

use super::cmd::text;
use super::nix::{in_pod, real_store};

pub const PROFILE: &str = "var/nix/profiles/default";
pub const ALICE: &str = "var/nix/profiles/per-user/alice/profile";

pub fn cp_a(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let o = std::process::Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .output()
        .unwrap();
    assert!(o.status.success(), "cp -a: {}", text(&o));
}

/// Images v1, v2 and v3 under `tmp` (their `nix` directories), each built by
/// `scripts/make-real-store.sh --reuse` on a copy of the one before, so that its default
/// profile's current generation is the newest. Each also gets a per-user profile
/// `per-user/alice/profile` of one generation pointing to its own user environment.
///
/// `slim`: v2 and v3 then keep only their own current generation, and a garbage collection
/// in the image deletes everything else (the previous images' apps, user environments and
/// dead paths), as an image built from scratch would be: retiring v1 then frees something.
pub fn image_chain(tmp: &Path, slim: bool) -> [PathBuf; 3] {
    let root = |v: &str| tmp.join(v);
    real_store(&root("v1"), "v1", false);
    for (prev, v) in [("v1", "v2"), ("v2", "v3")] {
        cp_a(&root(prev).join("nix"), &root(v).join("nix"));
        real_store(&root(v), v, false);
        if slim {
            let nix = root(v).join("nix");
            let o = in_pod(
                &nix,
                "nix-env -p /nix/var/nix/profiles/default --delete-generations old",
            );
            assert!(o.status.success(), "{}", text(&o));
            super::images::collect_garbage(&nix);
        }
    }
    let v = ["v1", "v2", "v3"].map(|n| root(n).join("nix"));
    for nix in &v {
        let dir = nix.join("var/nix/profiles/per-user/alice");
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::symlink(env(nix), dir.join("profile-1-link")).unwrap();
        std::os::unix::fs::symlink("profile-1-link", dir.join("profile")).unwrap();
    }
    v
}

/// Where the image's (or target's) default profile resolves: its current user environment.
pub fn env(nix: &Path) -> String {
    resolve(nix, PROFILE)
}

pub fn resolve(nix: &Path, profile: &str) -> String {
    let p = nix.join(profile);
    let gen = std::fs::read_link(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    std::fs::read_link(p.parent().unwrap().join(gen))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// What a pod sees: `readlink -f` of the profile.
pub fn current(target: &Path) -> String {
    let o = in_pod(target, "readlink -f /nix/var/nix/profiles/default");
    assert!(o.status.success(), "{}", text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// The generation links of `profile` in `target`: (number, store path).
pub fn generations(target: &Path, profile: &str) -> Vec<(u64, String)> {
    let p = target.join(profile);
    let name = p.file_name().unwrap().to_string_lossy().into_owned();
    let mut v: Vec<(u64, String)> = std::fs::read_dir(p.parent().unwrap())
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let n = e.file_name().to_string_lossy().into_owned();
            let num = n
                .strip_prefix(&format!("{name}-"))?
                .strip_suffix("-link")?
                .parse()
                .ok()?;
            Some((
                num,
                std::fs::read_link(e.path()).unwrap().to_string_lossy().into_owned(),
            ))
        })
        .collect();
    v.sort();
    v
}

/// A pod's shell command that must succeed: its stdout.
pub fn pod_ok(target: &Path, script: &str) -> String {
    let o = in_pod(target, script);
    assert!(o.status.success(), "{script}:\n{}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}
