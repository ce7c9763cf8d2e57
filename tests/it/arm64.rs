//! The aarch64 binary (`scripts/release.sh`: `dist/nix-seed-aarch64-linux`), run under
//! `qemu-aarch64-static` (user-mode emulation, called directly: no binfmt) on this x86_64
//! machine, does exactly what this build's x86_64 binary does: the same seed of every hard
//! case of the fixture (owners, modes, mtimes, hard links within and across store paths,
//! non-UTF-8 names, sockets and runtime entries in var/), the same registrations (NAR
//! hashes and references it computes itself), the same `status` and `verify`, the same
//! refusals of a hostile target, and the network-filesystem check (`statfs` magic numbers)
//! on a real FUSE mount. What it exercises is what could differ between the two: `st_dev` and
//! `st_ino` widths (the hard-link map), `c_char` signedness (unsigned on aarch64: the SQLite
//! VFS's names, non-UTF-8 file names), `statfs`'s `f_type`, the `O_PATH`/`O_NOFOLLOW` and
//! `renameat2` flags and the syscall numbers behind them (aarch64 has no `open`, `rename`
//! or `stat`: glibc uses the `*at` calls), `sendfile`, `fcntl` locks, and SHA-256 (the
//! `sha2` crate picks aarch64's SHA instructions at run time).
//!
//! The binary is `$NIX_SEED_AARCH64_BIN`; `scripts/test.sh` builds it with
//! `scripts/release.sh` and sets it. Without it (or without `qemu-aarch64-static`) these
//! tests print SKIPPED, and fail under `$CI`. Built from other sources than the test binary
//! it is not caught here: `scripts/test.sh` builds both from the same tree.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use crate::support;
use crate::support::cmd::{as_tests_run, assert_ok, copied_events, nix_seed, stderr, stdout, text, Seed};
use crate::support::compare::{
    assert_no_temp, assert_store_equal, assert_unchanged, assert_var_seeded, db_rows, snapshot, Kind,
};
use crate::support::fixture::{self, Spec};

/// The aarch64 binary and the emulator that runs it.
struct Arm64 {
    qemu: PathBuf,
    /// A copy named `nix-seed`, as in an image: its messages name it by `argv[0]`, as the
    /// x86_64 binary's do.
    bin: PathBuf,
    _dir: support::Scratch,
}

impl Arm64 {
    /// `$NIX_SEED_AARCH64_BIN` and `qemu-aarch64-static`, or `None` after SKIPPED (a
    /// failure under `$CI`). Set but not a file: always a failure.
    fn get(test: &str) -> Option<Arm64> {
        let Some(given) = std::env::var_os("NIX_SEED_AARCH64_BIN").filter(|v| !v.is_empty()) else {
            support::skip_or_panic(
                test,
                "NIX_SEED_AARCH64_BIN is not set (scripts/test.sh builds dist/nix-seed-aarch64-linux \
                 with scripts/release.sh and sets it)",
            );
            return None;
        };
        let given = PathBuf::from(given);
        assert!(
            given.is_file(),
            "NIX_SEED_AARCH64_BIN={} is not a file (scripts/release.sh builds it)",
            given.display()
        );
        if !support::require_tool("qemu-aarch64-static") {
            return None;
        }
        let dir = support::scratch();
        let bin = dir.path().join("nix-seed");
        std::fs::copy(&given, &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        Some(Arm64 {
            qemu: support::find_tool("qemu-aarch64-static").unwrap(),
            bin,
            _dir: dir,
        })
    }

    /// `qemu-aarch64-static nix-seed`, in the environment the tests run nix-seed in.
    fn cmd(&self) -> Command {
        let mut c = Command::new(&self.qemu);
        c.arg(&self.bin);
        as_tests_run(c)
    }

    fn run<const N: usize>(&self, args: [&std::ffi::OsStr; N]) -> Output {
        self.cmd()
            .args(args)
            .output()
            .expect("run qemu-aarch64-static nix-seed")
    }

    fn seed(&self, src: &Path, dst: &Path) -> Seed {
        Seed::with(self.cmd(), src, dst)
    }
}

/// Both binaries' `args` (`{dst}` stands for `dst_x` or `dst_a`): the same exit code and
/// the same output once each target's path is replaced by `DST`.
fn same_output(a: &Arm64, args: &[&str], dst_x: &Path, dst_a: &Path) -> (Option<i32>, String) {
    let argv = |dst: &Path| -> Vec<OsString> {
        args.iter()
            .map(|s| OsString::from(s.replace("{dst}", &dst.display().to_string())))
            .collect()
    };
    let x = nix_seed().args(argv(dst_x)).output().unwrap();
    let y = a.cmd().args(argv(dst_a)).output().unwrap();
    let norm = |o: &Output, dst: &Path| {
        mask_times(
            &format!("--- stdout\n{}--- stderr\n{}", stdout(o), stderr(o)).replace(&dst.display().to_string(), "DST"),
        )
    };
    let (nx, ny) = (norm(&x, dst_x), norm(&y, dst_a));
    assert_eq!(
        (x.status.code(), &nx),
        (y.status.code(), &ny),
        "nix-seed {args:?}: x86_64 (left) and aarch64 under qemu (right) differ"
    );
    (x.status.code(), nx)
}

/// `s` with what differs from run to run masked: durations ("in 0.20s" → "in #s") and
/// copy rates ("(5.10 MiB/s while copying)" → "(# while copying)").
fn mask_times(s: &str) -> String {
    let mut s = s.to_string();
    let mut from = 0;
    while let Some(k) = s[from..].find(" while copying)").map(|k| k + from) {
        let open = s[..k].rfind('(').expect("( before while copying");
        s.replace_range(open + 1..k, "#");
        from = open + 2 + " while copying)".len();
    }
    let duration = |w: &str| {
        let t = w.trim_end_matches([',', ';', ')', ':']);
        let n = t.strip_suffix("ms").or_else(|| t.strip_suffix('s'));
        n.is_some_and(|n| !n.is_empty() && n.parse::<f64>().is_ok())
            .then(|| format!("#s{}", &w[t.len()..]))
    };
    s.split(' ')
        .map(|w| duration(w).unwrap_or_else(|| w.to_string()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Registrations as [`db_rows`] gives them, registration times masked (a computed
/// registration is made at the seed's time).
fn rows_but_times(db: &Path) -> BTreeSet<String> {
    db_rows(db)
        .into_iter()
        .map(|r| match r.strip_prefix("path ") {
            Some(rest) => {
                let mut f: Vec<&str> = rest.split(' ').collect();
                f[2] = "T";
                format!("path {}", f.join(" "))
            }
            None => r,
        })
        .collect()
}

/// A nix-seed record (`.nix-seed/images/*`, `.nix-seed/records/*`) with its times masked.
fn record_but_times(p: &Path) -> serde_json::Value {
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(p).unwrap())
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", p.display()));
    for k in ["seeded_at", "first_seeded", "last_seeded"] {
        if let Some(t) = v.get_mut(k) {
            *t = "T".into();
        }
    }
    v
}

/// Two seeds of the same image into `x` and `a` made the same trees: every entry (store,
/// var, GC roots, `.nix-seed`) with the same type, mode, owner, link count, size, content
/// and symlink target; the store's entries also with the same mtime; the databases with
/// the same registrations and the records the same but for the seeds' times.
fn assert_same_seed(x: &Path, a: &Path) {
    assert_store_equal(x, a);
    let (sx, sa) = (snapshot(x), snapshot(a));
    let keys = |s: &support::compare::Snapshot| s.entries.keys().cloned().collect::<BTreeSet<_>>();
    let (kx, ka) = (keys(&sx), keys(&sa));
    let show = |s: &BTreeSet<Vec<u8>>| s.iter().map(|k| support::show(k)).collect::<Vec<_>>();
    assert_eq!(
        show(&(&kx - &ka)),
        show(&(&ka - &kx)),
        "entries only in the x86_64 seed (left) or only in the aarch64 seed (right)"
    );
    for (rel, ex) in &sx.entries {
        let ea = &sa.entries[rel];
        let what = support::show(rel);
        assert_eq!(
            (ex.kind, ex.mode, ex.uid, ex.gid, ex.nlink, &ex.target),
            (ea.kind, ea.mode, ea.uid, ea.gid, ea.nlink, &ea.target),
            "{what}: type, mode, owner, links or symlink target differ (x86_64 left, aarch64 right)"
        );
        if rel.starts_with(b"store/") {
            assert_eq!(ex.mtime, ea.mtime, "{what}: mtime differs");
        }
        if ex.kind != Kind::File {
            continue;
        }
        if rel.as_slice() == b"var/nix/db/db.sqlite" {
            assert_eq!(
                rows_but_times(&x.join("var/nix/db/db.sqlite")),
                rows_but_times(&a.join("var/nix/db/db.sqlite")),
                "the registrations differ"
            );
        } else if rel.starts_with(b".nix-seed/images/") || rel.starts_with(b".nix-seed/records/") {
            let p = support::os(rel);
            assert_eq!(record_but_times(&x.join(&p)), record_but_times(&a.join(&p)), "{what}");
        } else if !rel.starts_with(b"var/nix/db/") {
            assert_eq!((ex.size, ex.hash), (ea.size, ea.hash), "{what}: contents differ");
        }
    }
}

/// `"jobs":N,"jobs_why":"..."` of the JSON start event.
fn jobs_of(err: &str) -> String {
    let l = err
        .lines()
        .find(|l| l.contains("\"event\":\"start\""))
        .unwrap_or_else(|| panic!("no start event:\n{err}"));
    let i = l.find("\"jobs\":").expect("jobs in the start event");
    let j = l[i..].find("\"jobs_why\":\"").expect("jobs_why") + i + 12;
    let k = l[j..].find('"').unwrap() + j;
    l[i..=k].to_string()
}

// A static aarch64 executable that says so: `file` and `--version`; `--help` is the x86_64
// binary's.
#[test]
fn is_a_static_aarch64_binary_naming_its_architecture() {
    let Some(a) = Arm64::get("arm64::is_a_static_aarch64_binary_naming_its_architecture") else {
        return;
    };
    if !support::require_tool("file") {
        return;
    }
    let o = Command::new("file").arg("-b").arg(&a.bin).output().unwrap();
    let f = stdout(&o);
    assert!(
        f.contains("ARM aarch64") && f.contains("statically linked"),
        "file says: {f}"
    );
    let o = a.run(["--version".as_ref()]);
    assert_ok(&o);
    assert_eq!(
        stdout(&o),
        format!("nix-seed {} (aarch64-linux)\n", env!("CARGO_PKG_VERSION"))
    );
    let x = support::cmd::run(["--version"]);
    assert_eq!(
        stdout(&x).replace("(x86_64-linux)", "(aarch64-linux)"),
        stdout(&o),
        "the x86_64 binary's version is another"
    );
    for args in [&["--help"][..], &["seed", "--help"], &["verify", "--help"]] {
        let x = support::cmd::run(args);
        let y = a.cmd().args(args).output().unwrap();
        assert_ok(&y);
        assert_eq!(stdout(&x), stdout(&y), "nix-seed {args:?}");
    }
}

// The fixture with every hard case (200 store paths), seeded by both: each seed is exact,
// and the two targets are the same (store, var, GC roots, records); `status` and `verify`
// say the same before and after; a second image (more paths, new hard links) seeds the
// same on top; a file corrupted in both targets is found by both verifies. The aarch64 seed
// takes under 10 s under qemu on two cores (its time is printed).
/// The image the x86_64 and the aarch64 binaries both seed: a fixture of `paths` store
/// paths (its big file of `big` bytes, else the fixture's default) in `t/image`.
fn image(t: &Path, paths: usize, big: Option<usize>) -> fixture::Fixture {
    let spec = Spec {
        paths,
        big_file_bytes: big.unwrap_or(Spec::default().big_file_bytes),
        ..Spec::default()
    };
    fixture::build(&t.join("image"), &spec)
}

/// Empty targets for the x86_64 and the aarch64 binary: `t/x86_64`, `t/aarch64`.
fn two_targets(t: &Path) -> (PathBuf, PathBuf) {
    let (dx, da) = (t.join("x86_64"), t.join("aarch64"));
    std::fs::create_dir(&dx).unwrap();
    std::fs::create_dir(&da).unwrap();
    (dx, da)
}

roottest!(
    seeds_every_hard_case_exactly_as_x86_64_does,
    needs = &["qemu-aarch64-static"],
    |t| {
        let Some(a) = Arm64::get(t.name()) else { return };
        let fx = image(t, 200, None);
        let (dx, da) = two_targets(t);
        let src = fx.root.display().to_string();

        // Before: the same missing paths, exit 1.
        let (code, _) = same_output(&a, &["status", "--source", &src, "--target", "{dst}"], &dx, &da);
        assert_eq!(code, Some(1), "status of an empty target");

        let json = ["-v", "--log-format", "json"];
        let ox = Seed::new(&fx.root, &dx).args(json).ok();
        let t0 = Instant::now();
        let oa = a.seed(&fx.root, &da).args(json).ok();
        let secs = t0.elapsed().as_secs_f64();
        eprintln!(
            "{}: the aarch64 seed of {} store paths took {secs:.2}s under qemu-aarch64-static",
            t.name(),
            fx.names.len()
        );
        assert!(
            secs < 10.0,
            "the aarch64 seed took {secs:.1}s under qemu (target: under 10 s)"
        );
        assert_store_equal(&fx.root, &da);
        assert_var_seeded(&fx.root, &da);
        assert_no_temp(&da);
        let set = |o: &Output| copied_events(&stderr(o)).into_iter().collect::<BTreeSet<_>>();
        assert_eq!(set(&ox), set(&oa), "copied events");
        assert_eq!(set(&oa).len(), fx.names.len());
        // The local-filesystem default for --jobs: statfs saw no network filesystem.
        assert_eq!(jobs_of(&stderr(&ox)), jobs_of(&stderr(&oa)));
        assert!(jobs_of(&stderr(&oa)).contains("\"local filesystem\""));
        assert_same_seed(&dx, &da);

        // After: nothing missing (exit 0), every path verifies.
        let (code, out) = same_output(&a, &["status", "--source", &src, "--target", "{dst}"], &dx, &da);
        assert_eq!(code, Some(0), "{out}");
        let (code, out) = same_output(&a, &["verify", "--target", "{dst}"], &dx, &da);
        assert_eq!(code, Some(0), "{out}");
        assert!(
            out.contains(&format!("verified {} store paths", fx.names.len())),
            "{out}"
        );

        // A newer image: more paths, new hard links among them, the old ones already present.
        let more = fixture::add_paths(&fx.root, 30, 4242);
        Seed::new(&fx.root, &dx).ok();
        let o = a.seed(&fx.root, &da).args(["-v", "--log-format", "json"]).ok();
        assert_eq!(
            copied_events(&stderr(&o)).into_iter().collect::<BTreeSet<_>>(),
            more.iter()
                .map(|n| n.to_string_lossy().into_owned())
                .collect::<BTreeSet<_>>(),
            "the second seed copies the new paths only"
        );
        assert_store_equal(&fx.root, &da);
        assert_same_seed(&dx, &da);

        // One byte changed in one file of one store path, in both targets: both verifies fail,
        // naming it.
        let victim = fx
            .names
            .iter()
            .find(|n| n.to_string_lossy().contains("-big-"))
            .expect("the fixture's big path");
        for d in [&dx, &da] {
            let f = d.join("store").join(victim).join("bin/big-tool");
            let mut bytes = std::fs::read(&f).unwrap();
            bytes[0] ^= 1;
            let dir = f.parent().unwrap();
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
            std::fs::write(&f, &bytes).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o555)).unwrap();
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o555)).unwrap();
            fixture::set_times_nofollow(&f, 1);
            fixture::set_times_nofollow(dir, 1);
        }
        let (code, out) = same_output(&a, &["verify", "--target", "{dst}"], &dx, &da);
        assert_eq!(code, Some(1), "{out}");
        assert!(out.contains(&victim.to_string_lossy().into_owned()), "{out}");
    }
);

// An image without a Nix database: nix-seed computes every registration itself (NAR hash
// and size, references found by scanning). Under qemu it computes the same as on x86_64,
// and the same hashes and sizes as the fixture's own database.
roottest!(
    computes_the_same_registrations_as_x86_64,
    needs = &["qemu-aarch64-static"],
    |t| {
        let Some(a) = Arm64::get(t.name()) else { return };
        let fx = image(t, 60, Some(1 << 20));
        let original = t.join("original.sqlite");
        std::fs::rename(fx.root.join("var/nix/db/db.sqlite"), &original).unwrap();
        std::fs::remove_dir_all(fx.root.join("var/nix/db")).unwrap();
        let (dx, da) = two_targets(t);
        let ox = Seed::new(&fx.root, &dx).ok();
        let oa = a.seed(&fx.root, &da).ok();
        for o in [&ox, &oa] {
            assert!(text(o).contains(&format!("{} computed", fx.names.len())), "{}", text(o));
        }
        assert_store_equal(&fx.root, &da);
        assert_same_seed(&dx, &da);
        // NAR hash and size: the fixture's database has them as computed by the test process.
        let hash_size = |rows: BTreeSet<String>| -> BTreeSet<String> {
            rows.into_iter()
                .filter_map(|r| {
                    let f: Vec<&str> = r.split(' ').collect();
                    (f[0] == "path").then(|| format!("{} {} {}", f[1], f[2], f[5]))
                })
                .collect()
        };
        assert_eq!(
            hash_size(db_rows(&original)),
            hash_size(db_rows(&da.join("var/nix/db/db.sqlite"))),
            "NAR hashes and sizes computed under qemu"
        );
        let (code, out) = same_output(&a, &["verify", "--target", "{dst}"], &dx, &da);
        assert_eq!(code, Some(0), "{out}");
    }
);

// A hostile target (tests/it/hostile.rs) under qemu: a symlink planted at a store path's
// name is replaced, never followed (renameat2's RENAME_EXCHANGE, O_NOFOLLOW); one at the
// lock file is refused before anything is written (O_PATH, exit 2, naming it); symlinks at
// temporary names are removed. A canary directory next to the target stays as it was, and
// the x86_64 binary does the same in the same place.
roottest!(
    refuses_a_hostile_target_as_x86_64_does,
    needs = &["qemu-aarch64-static"],
    |t| {
        let Some(a) = Arm64::get(t.name()) else { return };
        let fx = image(t, 20, Some(64 << 10));
        let canary = t.join("canary");
        std::fs::create_dir_all(canary.join("store")).unwrap();
        std::fs::write(canary.join("file"), b"do not touch").unwrap();
        let before = snapshot(&canary);
        let case = |name: &str, plant: &dyn Fn(&Path)| -> (Option<i32>, String) {
            let (dx, da) = (t.join(format!("{name}-x86_64")), t.join(format!("{name}-aarch64")));
            for d in [&dx, &da] {
                std::fs::create_dir(d).unwrap();
                plant(d);
            }
            let r = same_output(
                &a,
                &[
                    "seed",
                    "--source",
                    &fx.root.display().to_string(),
                    "--target",
                    "{dst}",
                    "--allow-non-mountpoint",
                ],
                &dx,
                &da,
            );
            assert_unchanged(&before, &snapshot(&canary), |_| true);
            assert_eq!(
                std::fs::read_dir(&canary).unwrap().count(),
                2,
                "nothing new in the canary"
            );
            if r.0 == Some(0) {
                assert_store_equal(&fx.root, &da);
                assert_no_temp(&da);
                assert_same_seed(&dx, &da);
            }
            r
        };
        let name = fx.names[3].clone();
        let (code, out) = case("store-path", &|d| {
            std::fs::create_dir(d.join("store")).unwrap();
            symlink(&canary, d.join("store").join(&name)).unwrap();
        });
        assert_eq!(code, Some(0), "{out}");
        let (code, out) = case("lock", &|d| {
            std::fs::create_dir(d.join(".nix-seed")).unwrap();
            symlink(canary.join("file"), d.join(".nix-seed/lock")).unwrap();
        });
        assert_eq!(code, Some(2), "{out}");
        assert!(out.contains("DST/.nix-seed/lock is a symlink"), "{out}");
        let (code, out) = case("temporaries", &|d| {
            std::fs::create_dir(d.join("store")).unwrap();
            for i in 0..3 {
                symlink(&canary, d.join("store").join(format!(".nix-seed-tmp-1-{i}-x"))).unwrap();
            }
            symlink(&canary, d.join(".nix-seed-tmp-1-0-var")).unwrap();
        });
        assert_eq!(code, Some(0), "{out}");
    }
);

// On a real network filesystem (GlusterFS through FUSE, scripts/netfs.sh): statfs's f_type
// says FUSE under qemu too, so the default --jobs is the network one; the seed, its locks
// (fcntl through FUSE) and its database are right, seen through the volume's other mount
// (another node).
#[test]
fn sees_a_network_filesystem_and_seeds_it() {
    let test = "arm64::sees_a_network_filesystem_and_seeds_it";
    let Some(a) = Arm64::get(test) else { return };
    let Some((_serial, n)) = support::netfs::netfs(test) else {
        return;
    };
    let tmp = support::scratch();
    let fx = fixture::build(
        &tmp.path().join("image"),
        &Spec {
            paths: 30,
            big_file_bytes: 256 << 10,
            ..Spec::default()
        },
    );
    let t = support::netfs::VolDir::new(test, &[n.mount("GLUSTER_DEFAULT_A"), n.mount("GLUSTER_DEFAULT_B")]);
    let o = a.seed(&fx.root, t.a()).args(["-v", "--log-format", "json"]).ok();
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    assert_eq!(
        jobs_of(&stderr(&o)),
        format!(
            "\"jobs\":{},\"jobs_why\":\"network filesystem\"",
            nix_seed::base::jobs::network_default(cpus)
        ),
        "{}",
        text(&o)
    );
    assert_store_equal(&fx.root, t.b());
    assert_var_seeded(&fx.root, t.b());
    assert_no_temp(t.b());
    // The x86_64 binary, through the other mount: nothing is missing.
    let o = support::cmd::status(&fx.root, t.b());
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
}
