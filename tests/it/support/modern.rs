//! Two Nix versions as oracles: the host's Debian 12 `nix-bin` (Nix 2.8) and Debian
//! trixie's (Nix 2.26), the latter in a debootstrapped tree entered with pivot_root
//! (`scripts/modern-nix.sh`). Images are built by either, seeded into one target, and
//! each version must accept what the other wrote.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use super::cmd::text;
use super::nix::{in_pod_with, nix_config, nix_seed_db_is_wal, repo};

/// A Nix version the tests can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nix {
    /// Debian 12's nix-bin, on the host.
    V2_8,
    /// Debian 13's nix-bin, in the trixie tree of `scripts/modern-nix.sh`.
    V2_26,
}

pub const BOTH: [Nix; 2] = [Nix::V2_8, Nix::V2_26];

fn script() -> PathBuf {
    repo().join("scripts/modern-nix.sh")
}

/// Root, host Nix, debootstrap (CI: required, else SKIPPED), and the trixie tree set up
/// (once per test process; `scripts/modern-nix.sh setup` is cached across processes).
/// A failing setup (mirror unreachable, ...) panics: it is never a skip.
pub fn modern_available(test: &str) -> bool {
    if !super::nix::nix_available(test) || !super::require_tool("debootstrap") || !super::require_tool("pivot_root") {
        return false;
    }
    static SETUP: OnceLock<Result<(), String>> = OnceLock::new();
    let r = SETUP.get_or_init(|| {
        let t0 = std::time::Instant::now();
        let o = Command::new("bash")
            .arg(script())
            .arg("setup")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        if o.status.success() {
            eprintln!(
                "modern-nix setup: {:.1?}: {}",
                t0.elapsed(),
                String::from_utf8_lossy(&o.stdout).trim()
            );
            Ok(())
        } else {
            Err(text(&o))
        }
    });
    if let Err(e) = r {
        panic!("{test}: scripts/modern-nix.sh setup failed (the Debian trixie tree with Nix 2.26):\n{e}");
    }
    true
}

/// `NIX_CONFIG` for a pod: the host's, plus what a 2.26 build needs (its sandbox is on by
/// default: /bin/sh and coreutils from the tree).
pub fn pod_config(wal: bool) -> String {
    format!("{}sandbox-paths = /bin /usr /lib /lib64\n", nix_config(wal))
}

impl Nix {
    pub fn name(self) -> &'static str {
        match self {
            Nix::V2_8 => "Nix 2.8",
            Nix::V2_26 => "Nix 2.26",
        }
    }

    /// `nix-store --version` says this.
    pub fn version_prefix(self) -> &'static str {
        match self {
            Nix::V2_8 => "nix-store (Nix) 2.8.",
            Nix::V2_26 => "nix-store (Nix) 2.26.",
        }
    }

    /// Run `script` (sh) as a pod of this version: `nix` (store/ and var/) at /nix, with
    /// `use-sqlite-wal` matching the database's mode (a shared target's is a rollback
    /// journal: `use-sqlite-wal = false`, as the README tells users on network disks).
    pub fn pod(self, nix: &Path, script: &str) -> Output {
        self.pod_wal(nix, script, nix_seed_db_is_wal(nix))
    }

    /// [`Nix::pod`] with `use-sqlite-wal` given (`true` is Nix's default: a pod that
    /// nobody configured converts the database to WAL).
    pub fn pod_wal(self, nix: &Path, script: &str, wal: bool) -> Output {
        match self {
            Nix::V2_8 => in_pod_with(nix, script, &pod_config(wal)),
            Nix::V2_26 => Command::new("bash")
                .arg(self::script())
                .arg("run")
                .arg(nix)
                .arg("--")
                .arg("sh")
                .arg("-c")
                .arg(script)
                .env("NIX_CONFIG", pod_config(wal))
                .stdin(Stdio::null())
                .output()
                .unwrap(),
        }
    }

    /// [`Nix::pod`], asserting success; returns stdout.
    pub fn pod_ok(self, nix: &Path, script: &str) -> String {
        let o = self.pod(nix, script);
        assert!(o.status.success(), "{}: `{script}` failed:\n{}", self.name(), text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// A store built by this version at `root/nix` with `scripts/make-real-store.sh`
    /// (variant v1 or v2; the same script, so both versions build the same derivations).
    pub fn real_store(self, root: &Path, variant: &str, wal: bool) -> PathBuf {
        std::fs::create_dir_all(root).unwrap();
        let mut args: Vec<String> = vec![
            "bash".into(),
            repo().join("scripts/make-real-store.sh").display().to_string(),
        ];
        if !wal {
            args.push("--no-wal".into());
        }
        if root.join("nix").exists() {
            args.push("--reuse".into());
        }
        args.push(root.display().to_string());
        args.push(variant.into());
        let mut c = match self {
            Nix::V2_8 => {
                let mut c = Command::new(&args[0]);
                c.args(&args[1..]);
                c
            }
            Nix::V2_26 => {
                let mut c = Command::new("bash");
                c.arg(script()).arg("make-real-store").args(&args[2..]);
                c
            }
        };
        let o = c.stdin(Stdio::null()).output().unwrap();
        assert!(
            o.status.success(),
            "{}: make-real-store.sh {variant} failed:\n{}",
            self.name(),
            text(&o)
        );
        root.to_path_buf()
    }

    /// `nix-store --check-validity` of every path in `paths`.
    pub fn assert_valid(self, nix: &Path, paths: &[String], what: &str) {
        assert!(!paths.is_empty());
        let o = self.pod(nix, &format!("nix-store --check-validity {}", paths.join(" ")));
        assert!(
            o.status.success(),
            "{}: {what}: nix-store --check-validity failed:\n{}",
            self.name(),
            text(&o)
        );
    }

    /// `nix-store --check-validity` of `path` fails (not registered, or gone).
    pub fn assert_invalid(self, nix: &Path, path: &str, what: &str) {
        let o = self.pod(nix, &format!("nix-store --check-validity {path}"));
        assert!(
            !o.status.success(),
            "{}: {what}: {path} is still valid:\n{}",
            self.name(),
            text(&o)
        );
    }

    /// `nix-store -q --references` of each path, in one pod.
    pub fn references(self, nix: &Path, paths: &[String]) -> BTreeMap<String, BTreeSet<String>> {
        let mut script = String::from("set -e\n");
        for p in paths {
            script.push_str(&format!("echo '== {p}'; nix-store -q --references {p}\n"));
        }
        let out = self.pod_ok(nix, &script);
        let mut refs = BTreeMap::new();
        let mut cur: Option<String> = None;
        for l in out.lines() {
            if let Some(p) = l.strip_prefix("== ") {
                refs.insert(p.to_string(), BTreeSet::new());
                cur = Some(p.to_string());
            } else {
                let p = cur.as_ref().expect("a reference before a path");
                refs.get_mut(p).unwrap().insert(l.to_string());
            }
        }
        assert_eq!(
            refs.len(),
            paths.len(),
            "{}: references of {paths:?}:\n{out}",
            self.name()
        );
        refs
    }

    /// `nix-store --verify --check-contents` accepts the Nix root `nix`: run on a copy in
    /// `copy` (replaced, then removed), because --verify repairs.
    pub fn assert_contents_verify(self, nix: &Path, copy: &Path) {
        let _ = Command::new("rm").arg("-rf").arg(copy).status();
        std::fs::create_dir_all(copy).unwrap();
        assert!(Command::new("cp")
            .arg("-a")
            .arg(nix)
            .arg(copy.join("nix"))
            .status()
            .unwrap()
            .success());
        let o = self.pod(&copy.join("nix"), "nix-store --verify --check-contents");
        let all = text(&o);
        assert!(
            o.status.success() && !all.contains("modified") && !all.contains("error"),
            "{}: --verify --check-contents:\n{all}",
            self.name()
        );
        super::make_writable(copy);
        std::fs::remove_dir_all(copy).unwrap();
    }
}

/// The store paths registered in an image, as its own database lists them.
pub fn image_paths(image_nix: &Path) -> Vec<String> {
    super::nix::valid_paths(image_nix)
}
