//! Nix's profile lock, as `nix-env` takes it (`lockProfile`: a `PathLocks` on the profile
//! path): `flock(LOCK_EX)` on `NAME.lock` next to the profile, retried when the file was
//! deleted under us (its holder writes a byte into it before unlinking, so a non-empty
//! lock file is stale). Held while a generation is added and the profile switched, so a
//! `nix-env` in a pod never interleaves with nix-seed on the same profile.

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::{fstat, Mode, SFlag};

use crate::base::progress::Log;
use crate::base::wait::Tried;

/// The held lock; released (and the file removed, if nix-seed created it) when dropped.
pub struct ProfileLock {
    file: File,
    dir: OwnedFd,
    name: String,
    created: bool,
}

impl Drop for ProfileLock {
    fn drop(&mut self) {
        // As Nix's `PathLocks::setDeletion(true)`: unlink, then mark the open file stale
        // for a waiter that opened it before the unlink. Only a lock file nix-seed made:
        // a pod's is not ours to remove.
        if self.created {
            let _ = nix::unistd::unlinkat(
                self.dir.as_fd(),
                self.name.as_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            );
            let _ = std::io::Write::write_all(&mut self.file, b"d");
        }
    }
}

/// Open `name` (created 0600 if missing, never through a symlink); whether this call
/// created it.
fn open_lock_file(dir: BorrowedFd, name: &str, shown: &Path) -> Result<(File, bool)> {
    let base = OFlag::O_RDWR | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK;
    let mode = Mode::from_bits_truncate(0o600);
    let (fd, created) = match openat(dir, name, base | OFlag::O_CREAT | OFlag::O_EXCL, mode) {
        Err(Errno::EEXIST) => (openat(dir, name, base, mode), false),
        r => (r, true),
    };
    // Store paths were copied already: a failure here is exit 1, not a refusal (exit 2).
    let fd = fd.map_err(|e| anyhow::anyhow!(crate::base::dirfd::open_problem(e, shown)))?;
    if created {
        // The directory's owner (a per-user profile's user) must be able to open it too:
        // a lock file a killed seeder left would otherwise lock them out of their profile.
        if let Ok(d) = fstat(dir) {
            let _ = nix::unistd::fchown(
                &fd,
                Some(nix::unistd::Uid::from_raw(d.st_uid)),
                Some(nix::unistd::Gid::from_raw(d.st_gid)),
            );
        }
    }
    let st = fstat(&fd).with_context(|| format!("cannot stat {}", shown.display()))?;
    if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
        anyhow::bail!("{} is not a regular file: remove it", shown.display());
    }
    Ok((File::from(fd), created))
}

/// Take the lock of the profile `profile` in `dir` (shown as `shown`, the profile's path),
/// waiting at most `timeout`; then [`crate::base::error::Timeout`] (exit 3).
pub fn lock_profile(
    dir: BorrowedFd,
    profile: &str,
    shown: &Path,
    log: &Log,
    stop: &AtomicBool,
    timeout: Duration,
) -> Result<ProfileLock> {
    let name = format!("{profile}.lock");
    let lock_path = shown.with_file_name(&name);
    // The file stays open across attempts; it is opened again only when its holder
    // deleted it (a non-empty lock file): another process may hold a new one by that name.
    let mut cur: Option<(File, bool)> = None;
    crate::base::wait::wait(
        Instant::now(),
        timeout,
        stop,
        |_| loop {
            let (file, created) = match cur.take() {
                Some(c) => c,
                None => open_lock_file(dir, &name, &lock_path)?,
            };
            if !crate::engines::nixlocks::try_flock(&file, libc::LOCK_EX, &lock_path)? {
                cur = Some((file, created));
                return Ok(Tried::Held(()));
            }
            let st = fstat(file.as_fd()).with_context(|| format!("cannot stat {}", lock_path.display()))?;
            if st.st_size == 0 {
                let dir = dir
                    .try_clone_to_owned()
                    .with_context(|| format!("cannot lock {}", lock_path.display()))?;
                return Ok(Tried::Got(ProfileLock {
                    file,
                    dir,
                    name: name.clone(),
                    created,
                }));
            }
        },
        |(), waited| {
            log.info(&format!(
                "waiting for the lock on profile {} ({} is held); waited {}s",
                shown.display(),
                lock_path.display(),
                waited.as_secs()
            ));
        },
        |(), waited| {
            format!(
                "gave up after {} waiting for the lock on profile {} ({} is held, by a nix-env in a pod?); \
                 the profile was left as it was; run the seed again, or raise --lock-timeout",
                humantime::format_duration(Duration::from_secs(waited.as_secs())),
                shown.display(),
                lock_path.display()
            )
        },
    )
}
