//! The profiles an image ships, read from its `var/`, and Nix's generation names.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use anyhow::Result;
use nix::fcntl::readlinkat;
use nix::sys::stat::SFlag;

use crate::base::dirfd::{file_type, lstat_at, open_dir_if_exists};
use crate::steps::state::Generation;

/// Where profiles are, relative to `var/`; per-user profiles are one level below `PER_USER`.
const PROFILES_DIR: &str = "nix/profiles";
const PER_USER: &str = "per-user";

/// One profile the image ships: `var/<dir>/<name>` → `<name>-<number>-link` → `store_path`.
#[derive(Debug, Clone)]
pub struct ImageProfile {
    /// Relative to `var/`: `nix/profiles`, `nix/profiles/per-user/root`.
    pub dir: PathBuf,
    pub name: String,
    pub number: u64,
    pub store_path: PathBuf,
    /// Owner of the image's profile link and of its generation link.
    pub(super) owner: (u32, u32),
    pub(super) gen_owner: (u32, u32),
}

impl ImageProfile {
    /// `nix/profiles/default`: the profile as records name it.
    pub fn rel(&self) -> String {
        self.dir.join(&self.name).to_string_lossy().into_owned()
    }

    /// `profiles/default`: as log lines name it.
    pub(super) fn shown(&self) -> String {
        self.rel().trim_start_matches("nix/").to_string()
    }

    pub(super) fn generation(&self, number: u64) -> Generation {
        Generation {
            profile: self.rel(),
            number,
            store_path: self.store_path.to_string_lossy().into_owned(),
        }
    }
}

/// Nix's `parseName`: the generation number of `name` if it is `<profile>-<N>-link`.
pub fn parse_generation(profile: &[u8], name: &[u8]) -> Option<u64> {
    let rest = name.strip_prefix(profile)?.strip_prefix(b"-")?;
    let n = rest.strip_suffix(b"-link")?;
    if n.is_empty() || !n.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(n).ok()?.parse().ok()
}

/// The generation a profile link's target names: `NAME-N-link`, or an absolute path to it
/// in the same directory as a pod sees it (`/nix/var/<dir>/NAME-N-link`, older Nix).
pub(super) fn link_generation(dir: &Path, profile: &str, target: &OsStr) -> Option<u64> {
    let t = Path::new(target);
    let parent = t.parent().unwrap_or(Path::new(""));
    if parent != Path::new("") && parent != Path::new("/nix/var").join(dir) {
        return None;
    }
    parse_generation(profile.as_bytes(), t.file_name()?.as_bytes())
}

/// The profiles in the image's `var/` (an open directory), each with its current
/// generation; a profile whose current generation does not point into the store is left
/// to `var/`'s merge.
pub fn image_profiles(var: BorrowedFd) -> Result<Vec<ImageProfile>> {
    let mut dirs = vec![PathBuf::from(PROFILES_DIR)];
    if let Some(per_user) = open_rel(var, &Path::new(PROFILES_DIR).join(PER_USER))? {
        for e in crate::base::dirfd::list(per_user.as_fd())? {
            dirs.push(Path::new(PROFILES_DIR).join(PER_USER).join(&e.name));
        }
    }
    let mut out = Vec::new();
    for dir in dirs {
        let Some(d) = open_rel(var, &dir)? else { continue };
        for e in crate::base::dirfd::list(d.as_fd())? {
            let Some(name) = e.name.to_str() else { continue };
            let Some(st) = lstat_at(d.as_fd(), name)? else { continue };
            if file_type(&st) != SFlag::S_IFLNK {
                continue;
            }
            let target = readlinkat(d.as_fd(), name)?;
            let Some(number) = link_generation(&dir, name, &target) else {
                continue;
            };
            let gen_name = format!("{name}-{number}-link");
            let Some(gst) = lstat_at(d.as_fd(), gen_name.as_str())? else {
                continue;
            };
            if file_type(&gst) != SFlag::S_IFLNK {
                continue;
            }
            let store_path = PathBuf::from(readlinkat(d.as_fd(), gen_name.as_str())?);
            if !store_path.starts_with("/nix/store/") || store_path.components().count() != 4 {
                continue;
            }
            out.push(ImageProfile {
                dir: dir.clone(),
                name: name.to_string(),
                number,
                store_path,
                owner: (st.st_uid, st.st_gid),
                gen_owner: (gst.st_uid, gst.st_gid),
            });
        }
    }
    Ok(out)
}

/// Open `rel` (relative components) below `root`, never through a symlink; `None` if a
/// component is missing.
pub(super) fn open_rel(root: BorrowedFd, rel: &Path) -> Result<Option<OwnedFd>> {
    let mut cur: Option<OwnedFd> = None;
    for c in rel.components() {
        let parent = cur.as_ref().map_or(root, |f| f.as_fd());
        match open_dir_if_exists(parent, c.as_os_str())? {
            Some(fd) => cur = Some(fd),
            None => return Ok(None),
        }
    }
    Ok(cur)
}

/// Whether `rel` (relative to `var/`) is one of `profiles` or one of its generation links:
/// in `follow` and `image` mode these are left out of `var/`'s merge (the image's older
/// generations would collide with the target's own numbering) and set by [`apply`].
pub fn is_profile_entry(profiles: &[ImageProfile], rel: &Path) -> bool {
    let (Some(dir), Some(base)) = (rel.parent(), rel.file_name()) else {
        return false;
    };
    profiles.iter().any(|p| {
        p.dir == dir && (base == OsStr::new(&p.name) || parse_generation(p.name.as_bytes(), base.as_bytes()).is_some())
    })
}

/// What the image's `nix/profiles/default` points to, by name: its store path's name
/// without the hash (`user-environment` for `nix-env`, the environment's own name for a
/// `buildEnv`), for `nix-seed images` to name the image by.
pub fn default_name(profiles: &[ImageProfile]) -> Option<String> {
    let p = profiles.iter().find(|p| p.rel() == "nix/profiles/default")?;
    let name = p.store_path.file_name()?.to_str()?;
    name.split_once('-').map(|(_, n)| n.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_names_as_nix_parses_them() {
        assert_eq!(parse_generation(b"default", b"default-3-link"), Some(3));
        assert_eq!(parse_generation(b"default", b"default-12-link"), Some(12));
        assert_eq!(parse_generation(b"default", b"default"), None);
        assert_eq!(parse_generation(b"default", b"default-x-link"), None);
        assert_eq!(parse_generation(b"default", b"default--link"), None);
        assert_eq!(parse_generation(b"a", b"a-b-1-link"), None);
        assert_eq!(parse_generation(b"default", b"default-1-link.lock"), None);
        let d = Path::new("nix/profiles");
        assert_eq!(link_generation(d, "default", OsStr::new("default-2-link")), Some(2));
        assert_eq!(
            link_generation(d, "default", OsStr::new("/nix/var/nix/profiles/default-2-link")),
            Some(2)
        );
        assert_eq!(
            link_generation(d, "default", OsStr::new("/elsewhere/default-2-link")),
            None
        );
    }
}
