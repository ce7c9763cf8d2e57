//! nix-seed as a pod runs it: an image root filesystem assembled in a fresh mount
//! namespace (its own /nix from a store real Nix built, /proc, the static binary, and the
//! shared disk bind-mounted at /mnt/nix), `nix-seed seed --target /mnt/nix` run chrooted
//! in it; then a second namespace mounts the disk at /nix, as the main container does, and
//! real Nix uses it: every path valid, and a program from a seeded path runs.

use std::path::Path;
use std::process::Command;

use crate::support;
use crate::support::cmd::text;
use crate::support::nix::{real_store, valid_paths};

/// Run `script` with sh in a new mount namespace (mounts vanish with it).
fn in_namespace(script: &str, env: &[(&str, &str)]) -> std::process::Output {
    let mut c = Command::new("unshare");
    c.args(["-m", "--propagation", "private", "sh", "-ec", script]);
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(std::process::Stdio::null()).output().unwrap()
}

nixtest!(an_init_container_seeds_the_disk_and_the_main_container_uses_it, |tmp| {
    let image_store = real_store(&tmp.path().join("image-store"), "v1", true);
    let disk = tmp.path().join("disk/nix"); // e.g. hostPath /mnt/vepfs/nix/nix
    std::fs::create_dir_all(&disk).unwrap();

    // The image's root filesystem: nothing but the binary, /nix, /proc and the mount point.
    let rootfs = tmp.path().join("rootfs");
    for d in ["usr/local/bin", "nix", "proc", "mnt/nix", "dev"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(support::bin(), rootfs.join("usr/local/bin/nix-seed")).unwrap();
    std::fs::write(rootfs.join("dev/termination-log"), b"").unwrap();

    let q = |p: &Path| format!("'{}'", p.display());
    let init = format!(
        "mount --bind {store} {root}/nix\n\
         mount --bind {disk} {root}/mnt/nix\n\
         mount -t proc proc {root}/proc\n\
         chroot {root} /usr/local/bin/nix-seed seed --target /mnt/nix --progress log\n",
        store = q(&image_store.join("nix")),
        disk = q(&disk),
        root = q(&rootfs),
    );
    // `env -i`-like: the pod's container has its own environment.
    let o = in_namespace(&init, &[("NIX_SEED_LOG_FORMAT", "text"), ("HOSTNAME", "ide-test-pod")]);
    assert!(o.status.success(), "the init container failed:\n{}", text(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("store paths copied"),
        "{}",
        text(&o)
    );
    let term = std::fs::read_to_string(rootfs.join("dev/termination-log")).unwrap();
    assert!(
        term.starts_with("nix-seed: seeded /mnt/nix"),
        "termination message: {term:?}"
    );

    // Without the volume, /mnt/nix is the container's own directory: refused, exit 2.
    let forgot = format!(
        "mount --bind {store} {root}/nix\nmount -t proc proc {root}/proc\n\
         chroot {root} /usr/local/bin/nix-seed seed --target /mnt/nix || echo \"exit $?\"\n",
        store = q(&image_store.join("nix")),
        root = q(&rootfs),
    );
    let o = in_namespace(&forgot, &[]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(all.contains("not a mount point") && all.contains("exit 2"), "{all}");

    // The main container: the disk at /nix, Nix configured for a shared store.
    let paths = valid_paths(&image_store.join("nix")).join(" ");
    let app = valid_paths(&image_store.join("nix"))
        .into_iter()
        .find(|p| p.ends_with("-seed-app-1.0"))
        .expect("the image has seed-app");
    let main = format!(
        "mount --bind {disk} /nix\n\
         nix-store --check-validity {paths}\n\
         {app}/bin/app\n\
         nix-store -q --references {app}\n",
        disk = q(&disk),
    );
    let o = in_namespace(&main, &[("NIX_CONFIG", "use-sqlite-wal = false\nsubstituters =\n")]);
    assert!(o.status.success(), "the main container failed:\n{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("seed-app 1.0"),
        "the seeded program did not run:\n{}",
        text(&o)
    );
    assert!(out.contains("-seed-libb-1.0"), "references lost:\n{}", text(&o));
});
