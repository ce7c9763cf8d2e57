//! `nix-seed install DEST`: the hand-off for images that do not contain nix-seed. The
//! nix-seed image is `FROM scratch` (no shell, no `cp`), so a first init container runs
//! the binary itself to copy it into a shared `emptyDir`; a second init container, with
//! the user's Nix image, runs it from there. This works because the binary is static.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::base::error::Invalid;

/// Where `install` copies the binary.
#[derive(Debug, Clone)]
pub struct Options {
    pub dest: PathBuf,
}

/// `nix-seed install DEST`.
pub fn run(o: &Options, cx: &super::Ctx) -> Result<super::Done> {
    let p = install(&o.dest)?;
    cx.log.info(&format!("installed {}", p.display()));
    Ok(super::Done::Success)
}

pub fn install(dest: &Path) -> Result<PathBuf> {
    let dest = if dest.is_dir() {
        dest.join("nix-seed")
    } else {
        dest.to_path_buf()
    };
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let why = match std::fs::metadata(&parent) {
        Ok(m) if m.is_dir() => None,
        Ok(_) => Some("is a file, not a directory (pass a directory, or a file name inside one)"),
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            Some("is below a file, not a directory (pass a directory, or a file name inside one)")
        }
        Err(_) => Some("does not exist (mount an emptyDir there)"),
    };
    if let Some(why) = why {
        return Err(Invalid(format!(
            "cannot install to {}: {} {why}",
            dest.display(),
            parent.display()
        ))
        .into());
    }
    if nix::unistd::access(&parent, nix::unistd::AccessFlags::W_OK).is_err() {
        return Err(Invalid(format!(
            "cannot install to {}: directory {} is not writable by uid {}",
            dest.display(),
            parent.display(),
            nix::unistd::geteuid()
        ))
        .into());
    }
    let me = std::env::current_exe().context("cannot find this binary (/proc/self/exe)")?;
    let mut src = File::open(&me).with_context(|| format!("cannot read {}", me.display()))?;
    // A temporary name in the same directory, then rename: a restarted init container
    // replaces the file whole, and a reader never sees half a binary.
    let tmp = parent.join(format!(".nix-seed-tmp-install-{}", std::process::id()));
    let mut write = || -> io::Result<()> {
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(&tmp)?;
        io::copy(&mut src, &mut out)?;
        out.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        out.sync_all()?;
        out.flush()?;
        std::fs::rename(&tmp, &dest)
    };
    if let Err(e) = write() {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("cannot install to {}", dest.display()));
    }
    Ok(dest)
}
