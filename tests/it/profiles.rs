//! Profiles follow the image (issue #12, `seed --profiles follow|keep|image`), checked with
//! real Nix in a pod: after each image upgrade the target's profile is the image's user
//! environment, older generations stay (`nix-env --rollback` works), a user's change to a
//! profile is kept (with a warning naming the switch command) unless `--profiles image`,
//! reruns add nothing, and a seeder killed between adding a generation and switching to it
//! is completed by the next run.
//!
//! Images: v1, then v2 built on top of v1 (its profile has generations 1 and 2), then v3 on
//! top of v2; each also gets a per-user profile `per-user/alice/profile` of one generation
//! pointing to its own user environment.

use std::path::{Path, PathBuf};

use crate::support;
use crate::support::cmd::{assert_code, assert_ok, stderr, text, Seed};
use crate::support::nix::{assert_contents_verify, in_pod};
use crate::support::profiles::{current, env, generations, image_chain, pod_ok, resolve, ALICE, PROFILE};

struct Images {
    tmp: support::Scratch,
    /// `nix` directories of v1, v2, v3.
    v: [PathBuf; 3],
}

impl Images {
    fn build() -> Images {
        let tmp = support::scratch();
        let v = image_chain(tmp.path(), false);
        Images { tmp, v }
    }

    fn target(&self, name: &str) -> PathBuf {
        let t = self.tmp.path().join(name).join("nix");
        std::fs::create_dir_all(&t).unwrap();
        t
    }

    /// A target seeded with v1 then v2 (follow): generations 1 and 2, current 2.
    fn v2_target(&self, name: &str) -> PathBuf {
        let t = self.target(name);
        Seed::new(&self.v[0], &t).ok();
        Seed::new(&self.v[1], &t).ok();
        assert_eq!(current(&t), env(&self.v[1]));
        t
    }
}

fn verify(target: &Path) {
    assert_contents_verify(target, &target.parent().unwrap().join("verify-copy"));
}

// `follow`: each upgrade adds the image's generation and switches to it; rollback works;
// per-user profiles too; reruns (also the slow path, `--recheck`) add nothing.
nixtest!(follow_switches_each_upgrade_and_rollback_works, |_| {
    let im = Images::build();
    let [v1, v2, v3] = &im.v;
    let t = im.target("t");
    Seed::new(v1, &t).ok();
    assert_eq!(current(&t), env(v1));
    assert_eq!(generations(&t, PROFILE), vec![(1, env(v1))]);

    let o = Seed::new(v2, &t).output();
    assert_ok(&o);
    assert!(
        stderr(&o).contains("profiles/default: switched to generation 2 (image's), was 1"),
        "{}",
        text(&o)
    );
    assert_eq!(current(&t), env(v2));
    assert_eq!(generations(&t, PROFILE), vec![(1, env(v1)), (2, env(v2))]);
    assert_eq!(resolve(&t, ALICE), env(v2), "per-user profiles follow too");
    assert_eq!(generations(&t, ALICE), vec![(1, env(v1)), (2, env(v2))]);
    verify(&t);

    // The older generation is a real one: Nix rolls back to it, and forward again.
    pod_ok(&t, "nix-env --rollback -p /nix/var/nix/profiles/default");
    assert_eq!(current(&t), env(v1));
    pod_ok(&t, "nix-env --switch-generation 2 -p /nix/var/nix/profiles/default");
    assert_eq!(current(&t), env(v2));

    // Reruns: nothing to do, and the slow path adds nothing either.
    for args in [&[][..], &["--recheck"][..]] {
        let o = Seed::new(v2, &t).args(args).output();
        assert_ok(&o);
        assert!(!stderr(&o).contains("generation"), "{args:?}: {}", text(&o));
        assert_eq!(generations(&t, PROFILE), vec![(1, env(v1)), (2, env(v2))], "{args:?}");
    }

    let o = Seed::new(v3, &t).args(["--log-format", "json"]).output();
    assert_ok(&o);
    let summary = crate::support::cmd::stdout(&o)
        .lines()
        .find(|l| l.contains("\"summary\""))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("no summary: {}", text(&o)));
    assert!(summary.contains("\"profiles_switched\":2"), "{summary}");
    assert!(summary.contains("\"generations_added\":2"), "{summary}");
    assert_eq!(current(&t), env(v3));
    assert_eq!(generations(&t, PROFILE), vec![(1, env(v1)), (2, env(v2)), (3, env(v3))]);
    pod_ok(&t, "nix-env --rollback -p /nix/var/nix/profiles/default");
    assert_eq!(current(&t), env(v2), "rollback from v3 gives v2's");
    verify(&t);
});

// A user changed the profile (`nix-env --set` in a pod): follow adds the image's
// generation, leaves the user's current and names the command to switch; a rerun adds no
// second generation; `--profiles image` then switches.
nixtest!(follow_keeps_a_users_change_and_image_mode_overrides_it, |_| {
    let im = Images::build();
    let [v1, _, v3] = &im.v;
    let t = im.v2_target("t");
    pod_ok(
        &t,
        &format!("nix-env -p /nix/var/nix/profiles/default --set {}", env(v1)),
    );
    assert_eq!(generations(&t, PROFILE).last().unwrap(), &(3, env(v1)));

    // A dry run says what follow would do, and does nothing.
    let o = Seed::new(v3, &t).args(["--dry-run"]).output();
    assert_ok(&o);
    for line in [
        "profiles/default: would add a new generation 4 (image's) without switching: you changed the profile",
        "profiles/per-user/alice/profile: would switch to a new generation 3 (image's)",
    ] {
        assert!(stderr(&o).contains(line), "{line}:\n{}", text(&o));
    }
    assert_eq!(generations(&t, PROFILE).len(), 3);
    assert_eq!(generations(&t, ALICE).len(), 2);

    let o = Seed::new(v3, &t).output();
    assert_ok(&o);
    let warning = "profiles/default: added generation 4 (image's); not switched: you changed the profile since \
                   nix-seed set it";
    assert!(stderr(&o).contains(warning), "{}", text(&o));
    let cmd = "to switch: nix-env --switch-generation 4 -p /nix/var/nix/profiles/default";
    assert!(stderr(&o).contains(cmd), "{}", text(&o));
    assert_eq!(current(&t), env(v1), "the user's generation stays current");
    assert_eq!(generations(&t, PROFILE).last().unwrap(), &(4, env(v3)));

    let o = Seed::new(v3, &t).args(["--recheck"]).output();
    assert_ok(&o);
    assert!(stderr(&o).contains(cmd), "{}", text(&o));
    assert_eq!(generations(&t, PROFILE).len(), 4, "no duplicate generation on a rerun");

    // The command the warning names works.
    let u = im.target("u");
    assert!(std::process::Command::new("cp")
        .arg("-a")
        .arg(&t)
        .arg(u.parent().unwrap())
        .status()
        .unwrap()
        .success());
    pod_ok(&u, "nix-env --switch-generation 4 -p /nix/var/nix/profiles/default");
    assert_eq!(current(&u), env(v3));

    let o = Seed::new(v3, &t).args(["--recheck", "--profiles", "image"]).output();
    assert_ok(&o);
    assert!(
        stderr(&o).contains("profiles/default: switched to generation 4 (image's), was 3"),
        "{}",
        text(&o)
    );
    assert_eq!(current(&t), env(v3));
    assert_eq!(generations(&t, PROFILE).len(), 4);
    verify(&t);
});

// `--profiles keep` (NIX_SEED_PROFILES=keep): today's merge: the target's profile kept
// with a warning, the image's generation links added by name.
nixtest!(keep_mode_keeps_the_targets_profile, |_| {
    let im = Images::build();
    let [v1, v2, _] = &im.v;
    let t = im.target("t");
    Seed::new(v1, &t).ok();
    let o = Seed::new(v2, &t).env("NIX_SEED_PROFILES", "keep").output();
    assert_ok(&o);
    assert!(
        stderr(&o).contains(&format!(
            "{}: the target's symlink points to default-1-link, the image's to default-2-link; kept the target's",
            t.join(PROFILE).display()
        )),
        "{}",
        text(&o)
    );
    assert_eq!(current(&t), env(v1));
    assert_eq!(generations(&t, PROFILE), vec![(1, env(v1)), (2, env(v2))]);
});

// Killed right after a generation was added, before the switch: the next run switches to
// that generation (recorded before it was made) and adds no other.
nixtest!(
    a_kill_between_adding_a_generation_and_switching_is_completed_by_the_rerun,
    |_| {
        let im = Images::build();
        let [v1, v2, _] = &im.v;
        let t = im.target("t");
        Seed::new(v1, &t).ok();
        let o = Seed::new(v2, &t).failpoint("generation-added").output();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&o.status),
            Some(libc::SIGKILL),
            "{}",
            text(&o)
        );
        assert_eq!(current(&t), env(v1));
        assert_eq!(generations(&t, PROFILE), vec![(1, env(v1)), (2, env(v2))]);

        let o = Seed::new(v2, &t).output();
        assert_ok(&o);
        assert!(
            stderr(&o).contains("profiles/default: switched to generation 2 (image's), was 1"),
            "{}",
            text(&o)
        );
        assert_eq!(current(&t), env(v2));
        assert_eq!(generations(&t, PROFILE), vec![(1, env(v1)), (2, env(v2))]);
        verify(&t);
    }
);

// The profile's lock (`default.lock`, as nix-env takes it) held: the seed waits, gives up
// after --lock-timeout (exit 3) without touching the profile, and succeeds once it is free.
nixtest!(a_held_profile_lock_is_waited_for, |_| {
    use std::os::fd::AsRawFd;
    let im = Images::build();
    let [v1, v2, _] = &im.v;
    let t = im.target("t");
    Seed::new(v1, &t).ok();
    let lock = std::fs::File::create(t.join("var/nix/profiles/default.lock")).unwrap();
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let o = Seed::new(v2, &t).args(["--lock-timeout", "1s"]).output();
    assert_code(&o, 3);
    assert!(stderr(&o).contains("default.lock is held"), "{}", text(&o));
    assert_eq!(current(&t), env(v1));
    drop(lock);
    Seed::new(v2, &t).ok();
    assert_eq!(current(&t), env(v2));
});

/// A symlink planted at the profile's lock file (a hostile pod): never followed; the seed
/// fails (exit 1) naming it, and the file it points to is unchanged.
#[test]
fn a_symlink_at_the_profile_lock_is_never_followed() {
    use crate::support::fixture::{self, Spec};
    let tmp = support::scratch();
    let fx = fixture::build(
        &tmp.path().join("src"),
        &Spec {
            paths: 10,
            ..Spec::default()
        },
    );
    let dst = tmp.path().join("dst");
    std::fs::create_dir_all(dst.join("var/nix/profiles")).unwrap();
    let outside = tmp.path().join("outside");
    std::fs::write(&outside, b"mine").unwrap();
    std::os::unix::fs::symlink(&outside, dst.join("var/nix/profiles/default.lock")).unwrap();
    let o = Seed::new(&fx.root, &dst).output();
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains("default.lock is a symlink: nix-seed never follows symlinks in the target"),
        "{}",
        text(&o)
    );
    assert_eq!(std::fs::read(&outside).unwrap(), b"mine");
    assert!(dst.join("var/nix/profiles/default").symlink_metadata().is_err());
    std::fs::remove_file(dst.join("var/nix/profiles/default.lock")).unwrap();
    Seed::new(&fx.root, &dst).ok();
    assert!(dst.join("var/nix/profiles/default").symlink_metadata().is_ok());
}

// nix-seed takes the same lock as Nix: a pod's `nix-env --switch-generation` (which locks
// the profile, as `-i`, `-e` and `--rollback` do; `--set` takes no lock) waits while
// nix-seed, stopped right after adding its generation, holds it, and goes on after.
nixtest!(nix_env_waits_for_the_profile_lock_nix_seed_holds, |_| {
    let im = Images::build();
    let [v1, v2, _] = &im.v;
    let t = im.target("t");
    Seed::new(v1, &t).ok();
    let child = Seed::new(v2, &t).failpoint("generation-added=stop").spawn();
    support::wait_stopped(child.id());
    let switch = "nix-env --switch-generation 1 -p /nix/var/nix/profiles/default";
    let o = in_pod(&t, &format!("timeout 5 {switch}"));
    assert!(!o.status.success(), "nix-env did not wait: {}", text(&o));
    assert!(
        text(&o).contains("waiting for lock on profile '/nix/var/nix/profiles/default'"),
        "{}",
        text(&o)
    );
    crate::support::cont(child.id());
    let o = child.wait_with_output().unwrap();
    assert_ok(&o);
    assert_eq!(current(&t), env(v2));
    assert!(
        !t.join("var/nix/profiles/default.lock").exists(),
        "the lock file nix-seed created is removed"
    );
    pod_ok(&t, switch);
    assert_eq!(current(&t), env(v1));
    assert_eq!(generations(&t, PROFILE), vec![(1, env(v1)), (2, env(v2))]);
});
