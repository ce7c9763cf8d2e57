//! A database-less image with closureInfo's registration file: given with
//! `--registration FILE`, or found at `IMG/nix-path-registration`; and files that lie.

use std::path::Path;

use crate::support::cmd::{assert_code, assert_ok, stderr, text, Seed};
use crate::support::dbless::{
    assert_nix_loads, assert_registered_as, hash_to_base32, path_ending, registration_file, target_registrations,
    Source,
};

use super::{assert_pod_keeps, empty_target, status_json, stripped, Stripped};

/// The image's registration file, generated from the original database (every second hash
/// in Nix's base 32), at `file`.
fn write_file(img: &Stripped, file: &Path) {
    std::fs::write(file, registration_file(&img.orig, true)).unwrap();
}

/// Registered as the file says: hash, size and references; no deriver, sigs or ca.
fn assert_as_file(img: &Stripped, target: &Path, what: &str) {
    let got = target_registrations(target);
    assert_registered_as(&img.orig, &got, &img.paths(), Source::Computed, what);
}

// `--registration FILE`: exit 0, the registrations are the file's. The file is checked
// first: real Nix's `nix-store --load-db` accepts it for this image, and the base-32
// hashes are `nix-hash --to-base32`'s.
nixtest!(a_registration_file_given_with_the_flag_is_used, |tmp| {
    let img = stripped(&tmp.path().join("v1"), "v1");
    let file = tmp.path().join("registration");
    write_file(&img, &file);
    let (p, r) = img.orig.iter().next().unwrap();
    let o = std::process::Command::new("nix-hash")
        .args(["--type", "sha256", "--to-base32"])
        .arg(r.hash.strip_prefix("sha256:").unwrap())
        .output()
        .unwrap();
    assert_ok(&o);
    let want = format!("sha256:{}", String::from_utf8_lossy(&o.stdout).trim());
    assert_eq!(hash_to_base32(&r.hash), want, "the base-32 hash of {p}");
    assert_nix_loads(img.root(), &file, &img.orig, &tmp.path().join("load-db"));

    let target = empty_target(tmp.path());
    let o = Seed::image(img.root(), &target)
        .args(["--registration", file.to_str().unwrap()])
        .output();
    assert_ok(&o);
    assert_as_file(&img, &target, "--registration");
    let s = status_json(&img.image, &target);
    assert_eq!(s["registrations"]["file"], img.orig.len(), "{s}");
});

// The same file at `IMG/nix-path-registration` (beside `IMG/nix`) is found without the flag.
nixtest!(a_registration_file_beside_the_image_is_found, |tmp| {
    let img = stripped(&tmp.path().join("v1"), "v1");
    write_file(&img, &img.root().join("nix-path-registration"));
    let target = empty_target(tmp.path());
    Seed::image(img.root(), &target).ok();
    assert_as_file(&img, &target, "IMG/nix-path-registration");
    assert_pod_keeps(&target, &img.paths(), tmp.path());
    let s = status_json(&img.image, &target);
    assert_eq!(s["registrations"]["file"], img.orig.len(), "{s}");
});

/// None of the image's paths is registered in `target` (or it has no database).
fn assert_none_registered(img: &Stripped, target: &Path, o: &std::process::Output) {
    let got = target_registrations(target);
    let registered: Vec<&String> = img.orig.keys().filter(|p| got.contains_key(*p)).collect();
    assert!(
        registered.is_empty(),
        "image paths registered after a lying file: {registered:?}\n{}",
        text(o)
    );
}

// A file with one hash changed, with `--verify`: exit 1, stderr names the file, nothing
// of the image registered.
nixtest!(a_lying_hash_in_the_registration_file_is_refused_with_verify, |tmp| {
    let img = stripped(&tmp.path().join("v1"), "v1");
    let mut lying = img.orig.clone();
    let p = path_ending(&img.orig, "-seed-libc-1.0");
    let h = &mut lying.get_mut(&p).unwrap().hash;
    let last = if h.ends_with('0') { "1" } else { "0" };
    h.replace_range(h.len() - 1.., last);
    let file = tmp.path().join("registration");
    std::fs::write(&file, registration_file(&lying, false)).unwrap();

    let target = empty_target(tmp.path());
    let o = Seed::image(img.root(), &target)
        .args(["--verify", "--registration", file.to_str().unwrap()])
        .output();
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains(file.to_str().unwrap()),
        "stderr names the file:\n{}",
        text(&o)
    );
    assert_none_registered(&img, &target, &o);
});

// A file listing a store path the image's store lacks: exit 1, stderr names the file.
nixtest!(a_registration_file_listing_a_path_the_image_lacks_is_refused, |tmp| {
    let img = stripped(&tmp.path().join("v1"), "v1");
    let mut lying = img.orig.clone();
    let (_, any) = img.orig.iter().next().unwrap();
    let ghost = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-not-in-the-image".to_string();
    lying.insert(ghost, any.clone());
    let file = img.root().join("nix-path-registration");
    std::fs::write(&file, registration_file(&lying, false)).unwrap();

    let target = empty_target(tmp.path());
    let o = Seed::image(img.root(), &target).output();
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains("nix-path-registration"),
        "stderr names the file:\n{}",
        text(&o)
    );
});
