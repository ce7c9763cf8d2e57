//! What must fail, and how: an image whose closure is incomplete, a seed killed holding the
//! database lock, a slimmed image and the shared profile, a deleted root, an image database
//! that is garbage or empty.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;

use crate::support;
use crate::support::cmd::{assert_code, assert_ok, stderr, stdout, text, Seed};
use crate::support::dbless::{
    images_original_registrations, path_ending, referrers_closure, target_registrations, Regs,
};
use crate::support::images::{images, newest_id};
use crate::support::nix::{in_pod, real_store};
use crate::support::profiles::{cp_a, current, env};

use super::{base, empty_target, status, stripped, valid_in_pod, warnings};

/// Remove the store path `p` from the store of the Nix root `nix`.
fn remove_store_path(nix: &std::path::Path, p: &str) {
    let dir = nix.join("store").join(base(p));
    support::make_writable(&dir);
    std::fs::remove_dir_all(&dir).unwrap();
}

fn direct_referrers(regs: &Regs, p: &str) -> Vec<String> {
    regs.iter()
        .filter(|(q, r)| r.refs.contains(p) && *q != p)
        .map(|(q, _)| q.clone())
        .collect()
}

// The image's database lists a reference its store lacks: exit 1 naming the path and the
// missing reference; neither it nor anything that needs it (transitively) is valid.
nixtest!(
    an_incomplete_closure_registers_nothing_that_needs_the_missing_path,
    |tmp| {
        let root = real_store(&tmp.path().join("img"), "v1", false);
        let orig = images_original_registrations(&root);
        let libc = path_ending(&orig, "-seed-libc-1.0");
        let needs: Vec<String> = referrers_closure(&orig, &libc).into_iter().collect();
        let direct = direct_referrers(&orig, &libc);
        assert!(!direct.is_empty() && needs.len() > direct.len() + 1, "{needs:?}");
        remove_store_path(&root.join("nix"), &libc);

        let target = empty_target(tmp.path());
        let o = Seed::image(&root, &target).output();
        assert_code(&o, 1);
        let err = stderr(&o);
        assert!(
            err.contains(base(&libc)) && direct.iter().any(|p| err.contains(base(p))),
            "stderr names a path and its missing reference {libc}:\n{}",
            text(&o)
        );
        let got = target_registrations(&target);
        let registered: Vec<&String> = needs.iter().filter(|p| got.contains_key(*p)).collect();
        assert!(registered.is_empty(), "registered although incomplete: {registered:?}");
        let valid = valid_in_pod(&target, &needs);
        assert!(valid.is_empty(), "valid for Nix although incomplete: {valid:?}");
    }
);

// A seed killed inside its registering transaction leaves `db.sqlite.lock`; the next pod
// start of another image B (seeded completely before) exits 0 and removes it, and a pod's
// Nix then answers a query on B instead of hanging.
nixtest!(
    a_seed_killed_holding_the_database_lock_does_not_block_the_next_pod,
    |tmp| {
        let b = real_store(&tmp.path().join("b"), "v1", false);
        let b_orig = images_original_registrations(&b);
        let a = stripped(&tmp.path().join("a"), "v2");
        let target = empty_target(tmp.path());
        Seed::image(&b, &target).ok();

        let o = Seed::new(&a.image, &target).failpoint("registering").output();
        assert_eq!(o.status.signal(), Some(9), "not killed at the failpoint:\n{}", text(&o));
        let lock = target.join("var/nix/db/db.sqlite.lock");
        assert!(lock.is_dir(), "the killed seed left no {}", lock.display());

        let o = Seed::image(&b, &target).args(["--lock-timeout", "60s"]).output();
        assert_ok(&o);
        assert!(!lock.exists(), "B's pod start left {}:\n{}", lock.display(), text(&o));
        let p = path_ending(&b_orig, "-seed-libb-1.0");
        let o = in_pod(&target, &format!("timeout 30 nix-store -q --references {p}"));
        assert!(o.status.success(), "a pod's Nix on B after the kill:\n{}", text(&o));
        let refs: std::collections::BTreeSet<String> = stdout(&o).lines().map(str::to_string).collect();
        assert_eq!(refs, b_orig[&p].refs, "references of {p}");
    }
);

// v1 seeded (with its profile), then v2 slimmed of one path its profile's user
// environment needs (v2's database still lists it): exit 1, the profile stays on v1's
// user environment, and a warning says it was not switched and why.
nixtest!(
    a_slimmed_image_missing_a_profile_path_does_not_switch_the_profile,
    |tmp| {
        let v1_root = real_store(&tmp.path().join("v1"), "v1", false);
        let v1 = v1_root.join("nix");
        let v2_root = tmp.path().join("v2");
        cp_a(&v1, &v2_root.join("nix"));
        let v2 = real_store(&v2_root, "v2", false).join("nix");
        let v2_orig = images_original_registrations(&v2_root);
        let extra = path_ending(&v2_orig, "-seed-extra-2.0");
        assert!(
            referrers_closure(&v2_orig, &extra).contains(&env(&v2)),
            "v2's profile needs {extra}"
        );
        remove_store_path(&v2, &extra);

        let target = empty_target(tmp.path());
        Seed::image(&v1_root, &target).ok();
        assert_eq!(current(&target), env(&v1));
        let o = Seed::image(&v2_root, &target).output();
        assert_code(&o, 1);
        assert_eq!(env(&target), env(&v1), "the profile's links moved");
        assert_eq!(current(&target), env(&v1), "a pod's profile is not v1's");
        let w: Vec<String> = warnings(&o)
            .into_iter()
            .filter(|l| l.contains("not switched") && l.contains("profile"))
            .collect();
        assert_eq!(
            w.len(),
            1,
            "one warning that the profile was not switched:\n{}",
            text(&o)
        );
        assert!(
            w[0].contains(base(&extra)) || w[0].contains("missing") || w[0].contains("incomplete"),
            "the warning says why: {}",
            w[0]
        );
    }
);

// A root link deleted by hand after a dbless seed: `status` exits 1 naming `nix-seed seed
// --recheck`, `images` says the roots are incomplete; `seed --recheck` puts it back.
nixtest!(a_deleted_root_is_reported_and_restored_by_recheck, |tmp| {
    let img = stripped(&tmp.path().join("v1"), "v1");
    let target = empty_target(tmp.path());
    Seed::image(img.root(), &target).ok();
    let id = newest_id(&target);
    let dir = target.join("var/nix/gcroots/nix-seed").join(&id);
    let mut links: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("no root links for the image at {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    links.sort();
    assert!(!links.is_empty(), "no root links for the image in {}", dir.display());
    let gone = links[0].clone();
    std::fs::remove_file(&gone).unwrap();

    let o = status(&img.image, &target, false);
    assert_code(&o, 1);
    let verdict = stdout(&o)
        .lines()
        .find(|l| l.contains("nix-seed seed --recheck"))
        .map(str::to_lowercase)
        .unwrap_or_else(|| panic!("the verdict names `nix-seed seed --recheck`:\n{}", text(&o)));
    assert!(verdict.contains("root"), "the verdict names the roots: {verdict}");
    let (listed, _) = images(&target);
    assert_eq!(listed[&id]["roots_complete"], false, "{}", listed[&id]);

    Seed::image(img.root(), &target).args(["--recheck"]).ok();
    assert!(gone.symlink_metadata().is_ok(), "{} not restored", gone.display());
    assert_ok(&status(&img.image, &target, false));
});

// An image `db.sqlite` of random bytes, and an empty one: exit 2, the target untouched.
nixtest!(
    a_garbage_or_empty_image_database_is_refused_before_anything_is_written,
    |tmp| {
        let root = real_store(&tmp.path().join("img"), "v1", false);
        let mut random = vec![0u8; 64 << 10];
        std::fs::File::open("/dev/urandom")
            .unwrap()
            .read_exact(&mut random)
            .unwrap();
        for (name, bytes) in [("garbage", random), ("empty", Vec::new())] {
            let img = tmp.path().join(name);
            cp_a(&root.join("nix"), &img.join("nix"));
            let db = img.join("nix/var/nix/db/db.sqlite");
            let _ = std::fs::remove_file(db.with_extension("sqlite-journal"));
            std::fs::write(&db, &bytes).unwrap();
            let target = empty_target(&tmp.path().join(format!("t-{name}")));
            let o = Seed::image(&img, &target).output();
            assert_code(&o, 2);
            let left: Vec<_> = std::fs::read_dir(&target)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            assert!(
                left.is_empty(),
                "{name} db.sqlite: the target got {left:?}:\n{}",
                text(&o)
            );
        }
    }
);
