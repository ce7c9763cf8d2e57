//! Loop-device filesystems and tmpfs for tests (root only). Unmounted on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::find_tool;

/// A mounted filesystem. Drop unmounts it (retrying, then `umount -l`), detaches the loop
/// device and deletes the backing image.
pub struct Mount {
    /// Where the filesystem is mounted.
    pub path: PathBuf,
    /// Loop device (`/dev/loopN`), for loop filesystems.
    pub loop_dev: Option<PathBuf>,
    /// Backing image file, for loop filesystems (inside `_image_dir`).
    pub image: Option<PathBuf>,
    _image_dir: Option<tempfile::TempDir>,
}

fn tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| panic!("required tool `{name}` not found"))
}

/// Like [`tool`] but never panics (for use in `Drop`).
fn sys_tool(name: &str) -> PathBuf {
    find_tool(name).unwrap_or_else(|| PathBuf::from(name))
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn image_base() -> PathBuf {
    match std::env::var_os("NIX_SEED_TEST_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => std::env::temp_dir(),
    }
}

/// Create a sparse image of `size_mb` MiB (clamped up to 300 for xfs, 128 for btrfs,
/// 8 for ext4), `mkfs.<kind>` it and mount it (via `losetup --find --show`) at `at`
/// (created if missing). `kind` is `ext4`, `xfs` or `btrfs`. Panics on failure.
pub fn loop_fs(kind: &str, size_mb: u64, at: &Path) -> Mount {
    let min = match kind {
        "ext4" => 8,
        "xfs" => 300,
        "btrfs" => 128,
        other => panic!("loop_fs: unsupported filesystem kind {other:?}"),
    };
    let size_mb = size_mb.max(min);
    std::fs::create_dir_all(at).unwrap_or_else(|e| panic!("mkdir {}: {e}", at.display()));
    let base = image_base();
    std::fs::create_dir_all(&base).expect("image base dir");
    let dir = tempfile::Builder::new()
        .prefix("nix-seed-img.")
        .tempdir_in(&base)
        .expect("image tempdir");
    let image = dir.path().join(format!("{kind}.img"));
    let f = std::fs::File::create(&image).expect("create image");
    f.set_len(size_mb << 20).expect("size image");
    drop(f);

    let mkfs = tool(&format!("mkfs.{kind}"));
    let mut cmd = Command::new(mkfs);
    match kind {
        "ext4" => cmd.args(["-q", "-F", "-E", "nodiscard,lazy_itable_init=1"]),
        "xfs" => cmd.args(["-q", "-f", "-K"]),
        _ => cmd.args(["-q", "-f", "-K"]),
    };
    cmd.arg(&image);
    run(&mut cmd);

    let dev = run(Command::new(tool("losetup")).args(["--find", "--show"]).arg(&image));
    let dev = PathBuf::from(dev.trim());
    let mut m = Mount {
        path: at.to_path_buf(),
        loop_dev: Some(dev.clone()),
        image: Some(image),
        _image_dir: Some(dir),
    };
    let out = Command::new(tool("mount"))
        .arg("-t")
        .arg(kind)
        .arg(&dev)
        .arg(at)
        .output()
        .expect("spawn mount");
    if !out.status.success() {
        // Drop of `m` would try to unmount `at`; avoid touching an unrelated mount.
        m.path = PathBuf::new();
        panic!(
            "mount {} at {} failed: {}",
            dev.display(),
            at.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    m
}

/// Mount a tmpfs of `size_mb` MiB at `at` (created if missing).
pub fn tmpfs(at: &Path, size_mb: u64) -> Mount {
    tmpfs_with(at, &format!("size={size_mb}m,mode=0755"))
}

/// A tmpfs at `at` with the given mount options (e.g. `size=256m,nr_inodes=300`).
pub fn tmpfs_with(at: &Path, options: &str) -> Mount {
    std::fs::create_dir_all(at).unwrap_or_else(|e| panic!("mkdir {}: {e}", at.display()));
    run(Command::new(tool("mount"))
        .args(["-t", "tmpfs", "-o", options, "tmpfs"])
        .arg(at));
    Mount {
        path: at.to_path_buf(),
        loop_dev: None,
        image: None,
        _image_dir: None,
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Never panic here: this may run during unwinding.
        if !self.path.as_os_str().is_empty() && is_mount_point(&self.path) {
            let mut ok = false;
            for attempt in 0..5 {
                let st = Command::new(sys_tool("umount")).arg(&self.path).output();
                if st.as_ref().is_ok_and(|o| o.status.success()) {
                    ok = true;
                    break;
                }
                if attempt == 4 {
                    if let Ok(o) = st {
                        eprintln!(
                            "support::Mount: umount {} failed: {}",
                            self.path.display(),
                            String::from_utf8_lossy(&o.stderr).trim()
                        );
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            if !ok {
                eprintln!("support::Mount: lazy unmount of {}", self.path.display());
                let _ = Command::new(sys_tool("umount")).arg("-l").arg(&self.path).status();
            }
        }
        if let Some(dev) = &self.loop_dev {
            // After a lazy unmount this only sets autoclear; the device goes away later.
            let _ = Command::new(sys_tool("losetup")).arg("-d").arg(dev).output();
        }
        if let Some(img) = &self.image {
            let _ = std::fs::remove_file(img);
        }
    }
}

/// Unescape a mountinfo field (`\040` for space, etc.).
fn unescape(field: &str) -> PathBuf {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    use std::os::unix::ffi::OsStringExt;
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// All mount points of this mount namespace (from `/proc/self/mountinfo`).
pub fn mount_points() -> Vec<PathBuf> {
    let Ok(s) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    s.lines().filter_map(|l| l.split(' ').nth(4)).map(unescape).collect()
}

/// True if `p` (canonicalized) is a mount point according to `/proc/self/mountinfo`.
pub fn is_mount_point(p: &Path) -> bool {
    let Ok(c) = std::fs::canonicalize(p) else {
        return false;
    };
    mount_points().contains(&c)
}
