//! Self-test of the shared test support code: the fixture has the promised hard cases,
//! the comparators accept an exact copy and reject every single kind of difference, and the
//! mount helpers mount and clean up.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::support;
use crate::support::compare::{self, assert_store_equal};
use crate::support::fixture::{self, Fixture, Spec};
use crate::support::mounts;

fn sh(cmd: &mut Command) {
    let st = cmd.status().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(st.success(), "{cmd:?} failed: {st}");
}

fn cp_a(from: &Path, to: &Path) {
    sh(Command::new("cp").arg("-a").arg(from).arg(to));
}

fn panic_message(e: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = e.downcast_ref::<String>() {
        s.clone()
    } else if let Some(s) = e.downcast_ref::<&str>() {
        s.to_string()
    } else {
        "<non-string panic>".into()
    }
}

thread_local! {
    static EXPECTING_PANIC: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Silence the panic hook for panics this thread expects (others still print).
fn install_quiet_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !EXPECTING_PANIC.with(|e| e.get()) {
                default(info);
            }
        }));
    });
}

/// `f` must panic with a message containing `needle`.
fn expect_panic(what: &str, needle: &str, f: impl FnOnce()) {
    install_quiet_hook();
    EXPECTING_PANIC.with(|e| e.set(true));
    let r = catch_unwind(AssertUnwindSafe(f));
    EXPECTING_PANIC.with(|e| e.set(false));
    match r {
        Ok(()) => panic!("{what}: comparator did NOT detect the difference"),
        Err(e) => {
            let msg = panic_message(e);
            assert!(msg.contains(needle), "{what}: panic message lacks {needle:?}:\n{msg}");
            eprintln!("ok: {what} detected");
        }
    }
}

fn set_mtime_1(p: &Path) {
    fixture::set_times_nofollow(p, 1);
}

fn small_spec() -> Spec {
    Spec {
        paths: 60,
        big_file_bytes: 300 * 1024,
        ..Spec::default()
    }
}

fn first_generic(fx: &Fixture) -> PathBuf {
    fx.names
        .iter()
        .skip(10)
        .map(|n| fx.store().join(n))
        .find(|p| p.join("lib/libfoo.so.1").exists() || p.join("lib/libfoo.so").exists())
        .expect("a generic store path")
}

/// A store path (in `root`) holding a cross-path hardlink `share/licenses/shared-*`.
fn cross_link(root: &Path, names: &[std::ffi::OsString]) -> PathBuf {
    for n in names {
        let d = root.join("store").join(n).join("share/licenses");
        if let Ok(rd) = std::fs::read_dir(&d) {
            if let Some(e) = rd.flatten().next() {
                return e.path();
            }
        }
    }
    panic!("no cross-path hardlink in fixture");
}

#[test]
fn default_fixture_has_all_hard_cases_and_is_fast() {
    let s = support::scratch();
    let root = s.join("nix");
    let t = Instant::now();
    let fx = fixture::build(&root, &Spec::default());
    let took = t.elapsed();
    eprintln!("default fixture built in {took:?}");
    // Typically 0.2-0.6 s (debug build). Not asserted: a timed test fails on a loaded
    // machine and proves nothing; speed lives in the benchmark.
    if took.as_secs_f64() > 2.0 {
        eprintln!("WARNING: default fixture took {took:?} (> 2 s)");
    }
    assert_eq!(fx.names.len(), 300);
    let names: HashSet<_> = fx.names.iter().collect();
    assert_eq!(names.len(), 300, "names distinct");

    let mut files = 0;
    let mut exec = 0;
    let mut dirs = 0;
    let (mut abs_links, mut rel_links, mut dangling) = (0, 0, 0);
    let (mut empty_files, mut empty_dirs, mut non_utf8, mut unicode, mut spaces) = (0, 0, 0, 0, 0);
    let mut big = 0;
    let mut hundred_k = 0;
    let mut max_depth = 0;
    let mut inodes: std::collections::HashMap<u64, HashSet<Vec<u8>>> = Default::default();
    let mut uids = HashSet::new();
    let (mut top_files, mut top_links, mut top_empty_dir) = (0, 0, 0);
    for n in &fx.names {
        let top = fx.store().join(n);
        let m = std::fs::symlink_metadata(&top).unwrap();
        if m.is_file() {
            top_files += 1;
        } else if m.file_type().is_symlink() {
            top_links += 1;
        } else if std::fs::read_dir(&top).unwrap().next().is_none() {
            top_empty_dir += 1;
        }
        let mut stack = vec![(top.clone(), 0usize)];
        while let Some((p, depth)) = stack.pop() {
            let m = std::fs::symlink_metadata(&p).unwrap();
            assert_eq!((m.mtime(), m.mtime_nsec()), (1, 0), "mtime {}", p.display());
            uids.insert((m.uid(), m.gid()));
            max_depth = max_depth.max(depth);
            let name = p.file_name().unwrap().as_bytes();
            if std::str::from_utf8(name).is_err() {
                non_utf8 += 1;
            } else if !name.is_ascii() {
                unicode += 1;
            }
            if name.contains(&b' ') {
                spaces += 1;
            }
            let mode = m.mode() & 0o7777;
            if m.is_dir() {
                assert_eq!(mode, 0o555, "dir mode {}", p.display());
                dirs += 1;
                let mut empty = true;
                for e in std::fs::read_dir(&p).unwrap() {
                    empty = false;
                    stack.push((e.unwrap().path(), depth + 1));
                }
                empty_dirs += empty as usize;
            } else if m.is_file() {
                assert!(mode == 0o444 || mode == 0o555, "file mode {}", p.display());
                files += 1;
                exec += (mode == 0o555) as usize;
                empty_files += (m.size() == 0) as usize;
                big += (m.size() == 4 << 20) as usize;
                hundred_k += (m.size() >= 100 * 1024 && m.size() < 110 * 1024) as usize;
                inodes.entry(m.ino()).or_default().insert(n.as_bytes().to_vec());
            } else {
                let t = std::fs::read_link(&p).unwrap();
                if t.is_absolute() {
                    abs_links += 1;
                } else {
                    rel_links += 1;
                }
                let resolved = if t.is_absolute() {
                    fx.root.join(t.strip_prefix("/nix").unwrap_or(&t))
                } else {
                    p.parent().unwrap().join(&t)
                };
                dangling += std::fs::symlink_metadata(resolved).is_err() as usize;
            }
        }
    }
    let cross: Vec<_> = inodes.values().filter(|s| s.len() > 1).collect();
    eprintln!(
        "files {files} exec {exec} dirs {dirs} abs {abs_links} rel {rel_links} dangling {dangling} \
         empty files {empty_files} empty dirs {empty_dirs} non-utf8 {non_utf8} unicode {unicode} \
         spaces {spaces} depth {max_depth} cross-path inode groups {} owners {uids:?}",
        cross.len()
    );
    assert!(files > 1000 && exec > 100 && dirs > 500);
    assert!(abs_links > 50 && rel_links > 300 && dangling > 20);
    assert!(empty_files > 100 && empty_dirs > 20 && top_empty_dir >= 1);
    assert!(non_utf8 >= 3 && unicode >= 3 && spaces >= 2);
    assert!(max_depth >= 5);
    assert_eq!(big, 1);
    assert!(hundred_k >= 3);
    assert!(top_files > 20 && top_links >= 1);
    assert!(cross.len() >= 3, "cross-path hardlink groups");
    assert!(std::fs::read_dir(fx.store().join(".links")).unwrap().count() > 20);
    if support::is_root() {
        assert!(uids.contains(&(0, 0)));
        assert!(uids.contains(&fixture::USER_OWNER));
        assert!(uids.contains(&fixture::BUILD_OWNER));
    }
    let sock = fx.var().join("nix/daemon-socket/socket");
    assert!(std::fs::symlink_metadata(sock).unwrap().file_type().is_socket_like());
}

trait SocketLike {
    fn is_socket_like(&self) -> bool;
}
impl SocketLike for std::fs::FileType {
    fn is_socket_like(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_socket(self)
    }
}

#[test]
fn fixture_is_deterministic() {
    let s = support::scratch();
    let a = fixture::build(&s.join("a"), &small_spec());
    let b = fixture::build(&s.join("b"), &small_spec());
    assert_eq!(a.names, b.names);
    assert_store_equal(&a.root, &b.root);
    let c = fixture::build(
        &s.join("c"),
        &Spec {
            seed: 2,
            ..small_spec()
        },
    );
    assert!(a.names.iter().all(|n| !c.names.contains(n)));
    assert_eq!(
        fixture::store_path_name(7, 3, "hello-1.0"),
        fixture::store_path_name(7, 3, "hello-1.0")
    );
    let n = fixture::store_path_name(7, 3, "hello-1.0");
    let b = n.as_bytes();
    assert_eq!(&b[32..], b"-hello-1.0");
    assert!(b[..32].iter().all(|c| fixture::NIX_BASE32.contains(c)));
}

roottest!(exact_copy_is_equal_and_every_mutation_is_detected, |s| {
    let src = s.join("src");
    let fx = fixture::build(&src, &small_spec());
    let copy = |tag: &str| -> PathBuf {
        let d = s.join(format!("copy-{tag}"));
        cp_a(&src, &d);
        d
    };

    // Exact copy: equal. Extra top-level entries and dot-entries in dst are ignored.
    let d = copy("exact");
    assert_store_equal(&src, &d);
    std::fs::create_dir(d.join("store").join(fixture::store_path_name(99, 0, "other-image"))).unwrap();
    std::fs::create_dir(d.join("store/.nix-seed-tmp-123")).unwrap();
    sh(Command::new("rm").arg("-rf").arg(d.join("store/.links")));
    assert_store_equal(&src, &d);

    let generic = first_generic(&fx);
    let rel = |p: &Path| p.strip_prefix(&src).unwrap().to_path_buf();
    let g = rel(&generic);

    // 1. chmod a file.
    let d = copy("chmod");
    let f = d.join(&g).join("lib/libfoo.so");
    std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
    expect_panic("chmod file", "mode 0444 != 0644", || assert_store_equal(&src, &d));

    // 2. symlink mtime.
    let d = copy("symlink-mtime");
    let l = d.join(&g).join("lib/libfoo.so.1");
    sh(Command::new("touch").args(["-h", "-d", "@5"]).arg(&l));
    expect_panic("symlink mtime", "mtime (1, 0) != (5, 0)", || {
        assert_store_equal(&src, &d)
    });

    // 3. one byte of content (deep inside the big file, past the first chunk), mtime kept.
    let d = copy("content");
    let big = d.join("store").join(&fx.names[0]).join("lib/libbig.so");
    let mut bytes = std::fs::read(&big).unwrap();
    bytes[200_000] ^= 1;
    std::fs::write(&big, &bytes).unwrap();
    set_mtime_1(&big);
    expect_panic("content byte", "content differs at byte 200000", || {
        assert_store_equal(&src, &d)
    });

    // 4. break a cross-path hardlink by copying the file over it (metadata restored).
    let d = copy("hardlink");
    let hl = cross_link(&d, &fx.names);
    let tmp = hl.with_extension("tmp");
    sh(Command::new("cp").arg("-p").arg(&hl).arg(&tmp));
    std::fs::rename(&tmp, &hl).unwrap();
    set_mtime_1(hl.parent().unwrap());
    expect_panic("broken hardlink", "hardlink group differs", || {
        assert_store_equal(&src, &d)
    });

    // 5. symlink target (same length, mtime restored).
    let d = copy("target");
    let l = d.join(&g).join("lib/libfoo.so.1");
    std::fs::remove_file(&l).unwrap();
    std::os::unix::fs::symlink("libfoo.sO", &l).unwrap();
    set_mtime_1(&l);
    set_mtime_1(l.parent().unwrap());
    expect_panic("symlink target", "symlink target", || assert_store_equal(&src, &d));

    // 6. a store path removed.
    let d = copy("remove");
    sh(Command::new("rm").arg("-rf").arg(d.join(&g)));
    expect_panic("removed store path", "store path missing in dst", || {
        assert_store_equal(&src, &d)
    });

    // 7. owner of a symlink.
    let d = copy("owner");
    std::os::unix::fs::lchown(d.join(&g).join("lib/libfoo.so.1"), Some(4242), None).unwrap();
    expect_panic("uid", "uid 0 != 4242", || assert_store_equal(&src, &d));

    // 8. directory mtime.
    let d = copy("dir-mtime");
    sh(Command::new("touch")
        .args(["-h", "-d", "@2"])
        .arg(d.join(&g).join("lib")));
    expect_panic("dir mtime", "mtime (1, 0) != (2, 0)", || assert_store_equal(&src, &d));

    // 9. extra entry inside a store path (parent mtime restored).
    let d = copy("extra");
    let x = d.join(&g).join("lib/extra-in-dst");
    std::fs::write(&x, b"").unwrap();
    set_mtime_1(x.parent().unwrap());
    expect_panic("extra entry", "extra entry in dst", || assert_store_equal(&src, &d));

    // 10. a non-UTF-8 name renamed (parent mtime restored).
    let d = copy("rename");
    let weird = d.join("store").join(&fx.names[1]);
    std::fs::rename(
        weird.join(OsStr::from_bytes(b"bad\xff\xfename")),
        weird.join(OsStr::from_bytes(b"bad\xff\xfdname")),
    )
    .unwrap();
    set_mtime_1(&weird);
    expect_panic("renamed non-UTF-8 entry", "missing in dst", || {
        assert_store_equal(&src, &d)
    });

    // 11. extra hardlink in dst between two equal-content files (usage check).
    let d = copy("extra-link");
    let a = d.join("store").join(&fx.names[0]).join("bin/big-tool");
    let b = d.join("store").join(&fx.names[0]).join("bin/big-tool-hardlink");
    assert_eq!(
        std::fs::metadata(&a).unwrap().ino(),
        std::fs::metadata(&b).unwrap().ino()
    );
    let tmp = d.join("unlinked");
    sh(Command::new("cp").arg("-p").arg(&b).arg(&tmp));
    std::fs::rename(&tmp, &b).unwrap();
    set_mtime_1(b.parent().unwrap());
    expect_panic("in-path hardlink split", "distinct inodes", || {
        assert_store_equal(&src, &d)
    });

    // 12. a dir mode.
    let d = copy("dir-mode");
    std::fs::set_permissions(d.join(&g).join("bin"), std::fs::Permissions::from_mode(0o755)).unwrap();
    expect_panic("dir mode", "mode 0555 != 0755", || assert_store_equal(&src, &d));
});

#[test]
fn var_and_temp_checks() {
    let s = support::scratch();
    let src = s.join("src");
    fixture::build(
        &src,
        &Spec {
            paths: 20,
            big_file_bytes: 1024,
            ..Spec::default()
        },
    );
    let d = s.join("dst");
    cp_a(&src, &d);
    // cp -a copies the runtime entries and the socket: must be rejected.
    expect_panic("runtime entries copied", "runtime entry must not be seeded", || {
        compare::assert_var_seeded(&src, &d)
    });
    for e in fixture::RUNTIME_VAR_ENTRIES {
        sh(Command::new("rm").arg("-rf").arg(d.join("var").join(e)));
    }
    compare::assert_var_seeded(&src, &d);
    // A changed db is detected.
    std::fs::write(d.join("var/nix/db/schema"), b"11").unwrap();
    expect_panic("schema content", "content differs", || {
        compare::assert_var_seeded(&src, &d)
    });
    std::fs::write(d.join("var/nix/db/schema"), b"10").unwrap();
    std::fs::remove_file(d.join("var/nix/profiles/default")).unwrap();
    expect_panic("missing profile link", "missing in dst var", || {
        compare::assert_var_seeded(&src, &d)
    });
    std::os::unix::fs::symlink("default-2-link", d.join("var/nix/profiles/default")).unwrap();
    expect_panic("profile link target", "symlink target", || {
        compare::assert_var_seeded(&src, &d)
    });

    compare::assert_no_temp(&d);
    std::fs::write(d.join("store/.nix-seed-tmp-42"), b"").unwrap();
    expect_panic("temp in store", "leftover temporary", || compare::assert_no_temp(&d));
    std::fs::remove_file(d.join("store/.nix-seed-tmp-42")).unwrap();
    std::fs::create_dir(d.join(".nix-seed-tmp-lock")).unwrap();
    expect_panic("temp in root", "leftover temporary", || compare::assert_no_temp(&d));
}

#[test]
fn snapshot_and_add_paths() {
    let s = support::scratch();
    let root = s.join("nix");
    let fx = fixture::build(&root, &small_spec());
    let before = compare::snapshot(&root);
    assert!(before.entries.len() > 500);
    compare::assert_unchanged(&before, &compare::snapshot(&root), |_| true);

    let added = fixture::add_paths(&root, 25, 1);
    assert_eq!(added.len(), 25);
    let all: HashSet<_> = fx.names.iter().chain(&added).collect();
    assert_eq!(all.len(), fx.names.len() + 25, "added names are new");
    for n in &added {
        let m = std::fs::symlink_metadata(root.join("store").join(n)).unwrap();
        assert_eq!(m.mtime(), 1);
    }
    // Existing store paths are untouched by add_paths (the store dir and .links change).
    let after = compare::snapshot(&root);
    compare::assert_unchanged(&before, &after, |p| {
        p.starts_with(b"store/") && !p.starts_with(b"store/.links")
    });
    expect_panic("store/.links changed", "\"store/.links\": mtime", || {
        compare::assert_unchanged(&before, &after, |p| p == b"store/.links")
    });

    // A touched file is reported with ctime/mtime; an excluded one is not.
    let victim = first_generic(&fx).join("lib/libfoo.so");
    sh(Command::new("touch").args(["-d", "@1"]).arg(&victim));
    let after2 = compare::snapshot(&root);
    expect_panic("ctime change", "ctime", || {
        compare::assert_unchanged(&before, &after2, |p| {
            p.starts_with(b"store/") && !p.starts_with(b"store/.links")
        })
    });
    // Excluding every link of the victim's inode, nothing else changed.
    let victim_ino = std::fs::metadata(&victim).unwrap().ino();
    compare::assert_unchanged(&before, &after2, |p| {
        p.starts_with(b"store/")
            && !p.starts_with(b"store/.links")
            && before.entries.get(p).is_some_and(|e| e.ino != victim_ino)
    });

    // Copy of the grown store still compares equal.
    let d = s.join("copy");
    cp_a(&root, &d);
    assert_store_equal(&root, &d);
}

#[test]
fn scratch_removes_read_only_trees() {
    let s = support::scratch();
    let p = s.to_path_buf();
    fixture::build(
        &s.join("nix"),
        &Spec {
            paths: 20,
            big_file_bytes: 10,
            ..Spec::default()
        },
    );
    let top = s.join("nix/store").join(
        std::fs::read_dir(s.join("nix/store"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .find(|n| n.as_bytes()[0] != b'.' && s.join("nix/store").join(n).is_dir())
            .unwrap(),
    );
    support::make_writable(&top);
    assert_eq!(std::fs::symlink_metadata(&top).unwrap().mode() & 0o777, 0o755);
    drop(s);
    assert!(!p.exists(), "scratch dir removed");
}

fn mount_roundtrip(kind: &str) {
    let test = format!("mount_{kind}");
    if !support::require_root(&test) {
        return;
    }
    if kind != "tmpfs" && !(support::require_tool(&format!("mkfs.{kind}")) && support::require_tool("losetup")) {
        return;
    }
    let s = support::scratch();
    let at = s.join("mnt");
    let image;
    {
        let m = if kind == "tmpfs" {
            mounts::tmpfs(&at, 64)
        } else {
            mounts::loop_fs(kind, 64, &at)
        };
        assert!(mounts::is_mount_point(&at), "{kind} mounted");
        assert!(!mounts::is_mount_point(&s), "scratch is not a mount point");
        image = m.image.clone();
        assert_eq!(m.loop_dev.is_some(), kind != "tmpfs");
        let src = s.join("src");
        let fx = fixture::build(
            &src,
            &Spec {
                paths: 25,
                big_file_bytes: 1 << 20,
                ..Spec::default()
            },
        );
        sh(Command::new("cp").arg("-a").arg(fx.store()).arg(at.join("store")));
        assert_store_equal(&src, &at);
    }
    assert!(!mounts::is_mount_point(&at), "{kind} unmounted on drop");
    if let Some(image) = image {
        assert!(!image.exists(), "image deleted");
        // `losetup -d` of a device still busy only sets autoclear: a mount namespace made
        // meanwhile (`unshare -m` by another test of this process, or by anything else on
        // the machine) holds a copy of the mount until it exits. So the device must go
        // away, but may take a moment.
        let t0 = Instant::now();
        loop {
            let out = Command::new("losetup").arg("-a").output().unwrap();
            let listing = String::from_utf8_lossy(&out.stdout);
            if !listing.contains(image.to_str().unwrap()) {
                break;
            }
            assert!(
                t0.elapsed().as_secs() < 60,
                "loop device not detached after 60 s: {listing}"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

#[test]
fn mount_ext4() {
    mount_roundtrip("ext4");
}

#[test]
fn mount_xfs() {
    mount_roundtrip("xfs");
}

#[test]
fn mount_btrfs() {
    mount_roundtrip("btrfs");
}

#[test]
fn mount_tmpfs() {
    mount_roundtrip("tmpfs");
}
