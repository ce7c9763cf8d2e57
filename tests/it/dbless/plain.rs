//! A database-less image seeded into an empty target, into one already serving another
//! image, checked by Nix 2.26 too; and what `status` and `images` say of it.

use crate::support::cmd::{assert_ok, stdout, text, Seed};
use crate::support::dbless::{assert_registered_as, images_original_registrations, target_registrations, Source};
use crate::support::images::{images, newest_id};
use crate::support::modern::Nix;
use crate::support::nix::real_store;

use super::{assert_has_db, assert_pod_keeps, empty_target, registrations, status, status_json, stripped};

// Into an empty target: exit 0; every image path registered with Nix's narHash, narSize
// and references (no deriver, signatures or ca); a pod's Nix finds all valid, the contents
// verified, and its garbage collector deletes none.
nixtest!(a_dbless_image_is_registered_as_nix_did_into_an_empty_target, |tmp| {
    let img = stripped(&tmp.path().join("v1"), "v1");
    let target = empty_target(tmp.path());
    let o = Seed::image(img.root(), &target).output();
    assert_ok(&o);
    assert_has_db(&target);
    let got = target_registrations(&target);
    assert_registered_as(&img.orig, &got, &img.paths(), Source::Computed, "dbless v1");
    assert_pod_keeps(&target, &img.paths(), tmp.path());
});

// Into a target already serving v1 (seeded with its database): v2 without a database.
// v1's registrations stay as they were; the paths v2 shares with v1 keep theirs; v2's own
// are computed as Nix registered them; `status` says both are seeded; a pod keeps both
// images through a collection.
nixtest!(
    a_dbless_image_is_registered_into_a_target_serving_another_image,
    |tmp| {
        let v1 = real_store(&tmp.path().join("v1"), "v1", false);
        let v1_orig = images_original_registrations(&v1);
        let v1_paths: Vec<String> = v1_orig.keys().cloned().collect();
        let v2 = stripped(&tmp.path().join("v2"), "v2");
        let target = empty_target(tmp.path());
        Seed::image(&v1, &target).ok();
        let o = Seed::image(v2.root(), &target).output();
        assert_ok(&o);

        let got = target_registrations(&target);
        assert_registered_as(
            &v1_orig,
            &got,
            &v1_paths,
            Source::Copied,
            "v1, seeded with its database",
        );
        let (shared, own): (Vec<String>, Vec<String>) = v2.paths().into_iter().partition(|p| v1_orig.contains_key(p));
        assert!(
            !shared.is_empty() && !own.is_empty(),
            "v2 shares {shared:?}, adds {own:?}"
        );
        assert_registered_as(&v2.orig, &got, &own, Source::Computed, "v2's own paths, no database");
        for (image, name) in [(v1.join("nix"), "v1"), (v2.image.clone(), "v2")] {
            let o = status(&image, &target, false);
            assert_ok(&o);
            assert!(!stdout(&o).contains("not seeded"), "{name}: {}", text(&o));
        }
        // The paths v1 brought were taken from the target, not computed again.
        let s = super::status_json(&v2.image, &target);
        assert_eq!(
            s["registrations"],
            super::registrations_with_valid(0, 0, own.len(), shared.len()),
            "{s}"
        );
        let mut all = v1_paths;
        all.extend(own);
        assert_pod_keeps(&target, &all, tmp.path());
    }
);

// Nix 2.26 (Debian trixie's, where the tree is set up) finds every path of a dbless
// seed valid, with the references Nix 2.8 registered in the original database.
moderntest!(nix_2_26_accepts_a_dbless_seed, |tmp| {
    let img = stripped(&tmp.path().join("v1"), "v1");
    let target = empty_target(tmp.path());
    Seed::image(img.root(), &target).ok();
    assert_has_db(&target);
    let paths = img.paths();
    Nix::V2_26.assert_valid(&target, &paths, "a dbless seed");
    let refs = Nix::V2_26.references(&target, &paths);
    for p in &paths {
        assert_eq!(refs[p], img.orig[p].refs, "Nix 2.26: references of {p}");
    }
});

// After a dbless seed, `status` says seeded and how each registration was obtained (a
// `registrations:` line; in JSON a `registrations` object); `images` reports the same
// object for the image.
nixtest!(status_and_images_say_how_the_registrations_were_obtained, |tmp| {
    let img = stripped(&tmp.path().join("v1"), "v1");
    let n = img.orig.len();
    let target = empty_target(tmp.path());
    Seed::image(img.root(), &target).ok();

    let o = status(&img.image, &target, false);
    assert_ok(&o);
    let out = stdout(&o);
    assert!(out.contains("seeded") && !out.contains("not seeded"), "{}", text(&o));
    let line = out
        .lines()
        .find(|l| l.starts_with("registrations:"))
        .unwrap_or_else(|| panic!("no `registrations:` line:\n{}", text(&o)));
    assert!(super::has_number(line, n), "{n} computed: {line}");

    let s = status_json(&img.image, &target);
    assert_eq!(s["image_seeded"], true, "{s}");
    assert_eq!(s["registrations"], registrations(0, 0, n), "{s}");
    let id = newest_id(&target);
    let (listed, _) = images(&target);
    assert_eq!(listed[&id]["registrations"], registrations(0, 0, n), "{}", listed[&id]);
});

// The oracle itself: the same store seeded with its database (what nix-seed did before
// issue #18) passes every check the tests above make of a dbless seed, so a failure there
// is the dbless registration's, not the checks'.
nixtest!(the_checks_accept_the_image_seeded_with_its_database, |tmp| {
    let v1 = real_store(&tmp.path().join("v1"), "v1", false);
    let orig = images_original_registrations(&v1);
    let paths: Vec<String> = orig.keys().cloned().collect();
    let target = empty_target(tmp.path());
    Seed::image(&v1, &target).ok();
    let got = target_registrations(&target);
    assert_registered_as(&orig, &got, &paths, Source::Copied, "v1 with its database");
    assert_pod_keeps(&target, &paths, tmp.path());
});
