//! Real Nix (Debian's nix-bin) as the test oracle: stores built by Nix itself, and Nix's
//! own verdict on a target, as a pod sees it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::cmd::text;

pub fn nix_available(test: &str) -> bool {
    super::require_root(&format!("{test} (real Nix needs root)")) && super::require_tool("nix-store")
}

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A store built by real Nix at `root/nix` (variant v1 or v2).
pub fn real_store(root: &Path, variant: &str, wal: bool) -> PathBuf {
    let mut c = Command::new("bash");
    c.arg(repo().join("scripts/make-real-store.sh"));
    if !wal {
        c.arg("--no-wal");
    }
    if root.join("nix").exists() {
        c.arg("--reuse");
    }
    let o = c
        .arg(root)
        .arg(variant)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(o.status.success(), "make-real-store.sh failed:\n{}", text(&o));
    root.to_path_buf()
}

pub fn nix_config(wal: bool) -> String {
    format!("substituters =\nbuild-users-group =\nexperimental-features = nix-command\nuse-sqlite-wal = {wal}\n")
}

/// Run a shell command as a pod would: `nix` (a target or image root holding store/ and
/// var/) bind-mounted at /nix in a private mount namespace, with `use-sqlite-wal` set the
/// way that store's database is (Nix with WAL off cannot open a WAL database, and Nix with
/// WAL on converts a rollback one).
pub fn in_pod(nix: &Path, script: &str) -> Output {
    in_pod_with(nix, script, &nix_config(nix_seed_db_is_wal(nix)))
}

/// [`in_pod`] with the given `NIX_CONFIG`.
pub fn in_pod_with(nix: &Path, script: &str, config: &str) -> Output {
    Command::new("unshare")
        .arg("-m")
        .arg("sh")
        .arg("-c")
        .arg(format!(
            "mkdir -p /nix && mount --bind '{}' /nix && {script}",
            nix.display()
        ))
        .env("NIX_CONFIG", config)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

/// Valid paths of a Nix root (holding store/ and var/), from its database.
pub fn valid_paths(nix: &Path) -> Vec<String> {
    let c = rusqlite::Connection::open_with_flags(
        nix.join("var/nix/db/db.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut st = c.prepare("SELECT path FROM ValidPaths ORDER BY path").unwrap();
    st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
}

/// What Nix says about one image's closure in the target: every path valid, the same
/// references as in the image, none dead for the garbage collector, and contents that
/// `nix-store --verify --check-contents` accepts (run on a copy: --verify repairs).
pub fn assert_nix_accepts(target: &Path, image: &Path) {
    let paths = valid_paths(image);
    assert!(!paths.is_empty());
    let o = in_pod(target, &format!("nix-store --check-validity {}", paths.join(" ")));
    assert!(
        o.status.success(),
        "nix-store --check-validity failed on the target:\n{}",
        text(&o)
    );

    for p in &paths {
        let q = |root: &Path| {
            let o = in_pod(root, &format!("nix-store -q --references {p}"));
            assert!(o.status.success(), "{}", text(&o));
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .map(str::to_string)
                .collect::<BTreeSet<_>>()
        };
        assert_eq!(q(target), q(image), "references of {p} differ");
    }

    let o = in_pod(target, "nix-store --gc --print-dead");
    assert!(o.status.success(), "{}", text(&o));
    let dead: BTreeSet<String> = String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect();
    let image_dead: Vec<&String> = paths.iter().filter(|p| dead.contains(*p)).collect();
    assert!(image_dead.is_empty(), "image paths a GC would delete: {image_dead:?}");

    let copy = target
        .parent()
        .unwrap()
        .join(format!("verify-copy-{}", std::process::id()));
    assert_contents_verify(target, &copy);
}

/// `nix-store --verify --check-contents` accepts the Nix root `target`: run on a copy made
/// in the directory `copy` (replaced, then removed), because --verify repairs.
pub fn assert_contents_verify(target: &Path, copy: &Path) {
    let _ = Command::new("rm").arg("-rf").arg(copy).status();
    std::fs::create_dir_all(copy).unwrap();
    assert!(Command::new("cp")
        .arg("-a")
        .arg(target)
        .arg(copy.join("nix"))
        .status()
        .unwrap()
        .success());
    let o = in_pod(&copy.join("nix"), "nix-store --verify --check-contents");
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(
        o.status.success() && !all.contains("modified") && !all.contains("error"),
        "--verify:\n{all}"
    );
    super::make_writable(copy);
    std::fs::remove_dir_all(copy).unwrap();
}

pub fn db_dir_listing(nix: &Path) -> BTreeSet<String> {
    std::fs::read_dir(nix.join("var/nix/db"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// Whether the database of a Nix root (holding store/ and var/) is in WAL mode.
pub fn nix_seed_db_is_wal(target: &Path) -> bool {
    let h = std::fs::read(target.join("var/nix/db/db.sqlite")).unwrap();
    h[18] == 2
}
