//! `TARGET/.nix-seed/`, nix-seed's own directory on the disk, and everything in it:
//!
//! - `lock`: the seed lock and its lease (see [`crate::engines::lock`]); `takeover` serialises
//!   takeovers of a stale one;
//! - `db-lock`: present while a seeder may hold the Nix database's dotfile lock, so the
//!   next one can recover a lock a killed seeder left (see [`crate::engines::nixdb::DbWindow`]);
//! - `images/<image id>`: the marker of a complete seed of one image; its mtime is when a
//!   pod start last found the image complete ("last seen");
//! - `records/<image id>`: what nix-seed knows of one image across runs ([`Record`]): when
//!   it was first and last seeded, and the profile generations nix-seed wrote for it.
//!   Unlike the marker it survives a slow-path run; `prune` removes it with the image.
//!
//! The fast path trusts the marker (with a listing of the store), so it must never claim more than
//! is true: a run that has work removes it *before* it changes the store or the database,
//! and writes it only after the image's paths are registered and rooted. A crash anywhere
//! in between leaves no marker, and the next run takes the slow path and repairs.

use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::stat::Mode;
use serde_json::json;

use crate::base::dirfd::lstat_at;
use crate::base::preflight::Checked;

pub use crate::base::layout::{state_dir as dir, DB_LOCK_RECORD, IMAGES_DIR, RECORDS_DIR, STATE_DIR};

/// Whether image `id` is marked complete. Anything unexpected on the way (a symlink
/// planted at `.nix-seed`) counts as no marker: the slow path then reports it.
#[allow(dead_code)] // for callers that need only the yes or no
pub fn is_marked(target: BorrowedFd, id: &str) -> Result<bool> {
    Ok(marked_at(target, id)?.is_some())
}

/// When image `id`'s marker was last touched (its mtime: "last seen"), if the image is
/// marked complete; [`is_marked`] with the time the same `lstat` gives.
pub fn marked_at(target: BorrowedFd, id: &str) -> Result<Option<SystemTime>> {
    Ok(look(target, id)?.marked_at)
}

/// What the fast path reads of `.nix-seed/`.
#[derive(Debug, Default, Clone, Copy)]
pub struct Look {
    /// [`marked_at`].
    pub marked_at: Option<SystemTime>,
    /// `db-lock` exists: a seeder is, or was when it was killed, inside the Nix
    /// database's lock window ([`crate::engines::nixdb::DbWindow`]).
    pub db_lock_left: bool,
}

/// [`marked_at`], and whether a `db-lock` record is present: one lookup more, through the
/// same handle. O_PATH handles: this runs at every pod start, and on a network filesystem
/// each ordinary open of a directory is one more round trip.
pub fn look(target: BorrowedFd, id: &str) -> Result<Look> {
    let found = || -> std::io::Result<Look> {
        let Some(state) = crate::base::dirfd::open_path_if_exists(target, STATE_DIR)? else {
            return Ok(Look::default());
        };
        let db_lock_left = lstat_at(state.as_fd(), DB_LOCK_RECORD)?.is_some();
        let Some(images) = crate::base::dirfd::open_path_if_exists(state.as_fd(), IMAGES_DIR)? else {
            return Ok(Look {
                marked_at: None,
                db_lock_left,
            });
        };
        let marked_at = lstat_at(images.as_fd(), id)?
            .filter(|st| crate::base::dirfd::file_type(st) == nix::sys::stat::SFlag::S_IFREG)
            .map(|st| mtime(&st));
        Ok(Look {
            marked_at,
            db_lock_left,
        })
    };
    match found() {
        Ok(b) => Ok(b),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)) => Ok(Look::default()),
        Err(e) => Err(e.into()),
    }
}

/// A stat's mtime as a time (before the epoch counts as the epoch).
pub fn mtime(st: &nix::sys::stat::FileStat) -> SystemTime {
    let secs = u64::try_from(st.st_mtime).unwrap_or(0);
    let nanos = u32::try_from(st.st_mtime_nsec).unwrap_or(0);
    SystemTime::UNIX_EPOCH + Duration::new(secs, nanos.min(999_999_999))
}

/// How stale "last seen" may get: the fast path bumps a marker's mtime only when it is at
/// least this old, so a pod start writes at most once an hour per image, and "last seen"
/// is at most this much older than the last pod start that found the image complete.
pub const SEEN_RESOLUTION: Duration = Duration::from_secs(3600);

/// Record that a pod start found image `id` complete ("last seen"): set its marker's mtime
/// to now, when the marker (last touched at `marked_at`) is [`SEEN_RESOLUTION`] old or
/// more. One `utimensat` through the images directory's descriptor, never following a
/// symlink. Best effort: the fast path must stay a no-op success on a read-only mount, so
/// a failure is only a line shown with -v.
pub fn touch_seen(target: BorrowedFd, id: &str, marked_at: SystemTime, log: &crate::base::progress::Log) {
    if SystemTime::now()
        .duration_since(marked_at)
        .is_ok_and(|age| age < SEEN_RESOLUTION)
        || marked_at > SystemTime::now()
    {
        return;
    }
    let touched = || -> std::io::Result<()> {
        let state = crate::base::dirfd::open_dir(target, STATE_DIR)?;
        let images = crate::base::dirfd::open_dir(state.as_fd(), IMAGES_DIR)?;
        let now = nix::sys::time::TimeSpec::UTIME_NOW;
        nix::sys::stat::utimensat(
            images.as_fd(),
            id,
            &nix::sys::time::TimeSpec::UTIME_OMIT,
            &now,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        )?;
        Ok(())
    };
    if let Err(e) = touched() {
        log.detail(
            "last-seen",
            &format!("cannot update the last-seen time of image {id} ({STATE_DIR}/{IMAGES_DIR}/{id}): {e}"),
            json!({"image_id": id, "error": e.to_string()}),
        );
    }
}

fn images_dir(c: &Checked) -> Result<std::os::fd::OwnedFd> {
    let state = dir(c.target.as_fd(), &c.target_path)?;
    Ok(crate::base::dirfd::mkdir_open(state.as_fd(), IMAGES_DIR, Mode::from_bits_truncate(0o755))?.0)
}

/// Remove the marker of image `id`, if any: this run is about to change what it vouches for.
pub fn unmark(c: &Checked, id: &str) -> Result<()> {
    let shown = || {
        format!(
            "cannot remove {}/{STATE_DIR}/{IMAGES_DIR}/{id}",
            c.target_path.display()
        )
    };
    let images = images_dir(c).with_context(shown)?;
    match nix::unistd::unlinkat(images.as_fd(), id, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => Ok(()),
        Err(e) => Err(e).with_context(shown),
    }
}

/// Write the marker of image `id` (last step of a complete seed).
pub fn mark(c: &Checked, id: &str, store_paths: usize) -> Result<()> {
    use std::io::Write;
    let ctx = || format!("cannot record the seed in {}/{STATE_DIR}", c.target_path.display());
    let images = images_dir(c).with_context(ctx)?;
    if lstat_at(images.as_fd(), id).with_context(ctx)?.is_some() {
        return Ok(());
    }
    let body = json!({
        "image_id": id,
        "source": c.source_label,
        "store_paths": store_paths,
        "seeded_at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "host": nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let fd = nix::fcntl::openat(
        images.as_fd(),
        id,
        nix::fcntl::OFlag::O_WRONLY
            | nix::fcntl::OFlag::O_CREAT
            | nix::fcntl::OFlag::O_EXCL
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    );
    match fd {
        Ok(fd) => {
            let mut f = std::fs::File::from(fd);
            writeln!(f, "{body}").with_context(ctx)?;
            Ok(())
        }
        Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(e).with_context(ctx),
    }
}

/// What nix-seed knows of one image across runs, in `.nix-seed/records/<image id>` (JSON).
/// Written only under the seed lock, whole (temporary name, then rename), so a reader sees
/// the old record or the new one.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub image_id: String,
    /// RFC 3339, UTC, seconds.
    pub first_seeded: String,
    /// Empty until a seed of the image completes (a generation is recorded before its
    /// link is made, in the middle of a seed).
    pub last_seeded: String,
    /// Profile generations nix-seed created for this image, oldest first.
    #[serde(default)]
    pub generations: Vec<Generation>,
    /// Where the image's registrations came from at its last complete seed (absent in
    /// records written before nix-seed computed registrations).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registrations: Option<crate::steps::registrations::Counts>,
    /// The names of the image's GC roots (links in `var/nix/gcroots/nix-seed/<id>/`) at its
    /// last complete seed: what `status` and `images` check are all still there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roots: Option<Vec<String>>,
    /// What a person knows the image by ([`Label`]), as of its last complete seed.
    #[serde(default)]
    pub label: Label,
}

/// What names an image besides its id: `seed --name`, its source directory, and what its
/// `var/nix/profiles/default` points to (the store path's name without its hash).
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct Label {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
}

impl Label {
    /// ` (name web, source /nix, profile hello-env)`, or nothing when nothing is known.
    pub fn text(&self) -> String {
        let parts: Vec<String> = [
            ("name", &self.name),
            ("source", &self.source),
            ("profile", &self.profile),
        ]
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k} {v}")))
        .collect();
        if parts.is_empty() {
            String::new()
        } else {
            format!(" ({})", parts.join(", "))
        }
    }
}

/// The `source` image `id`'s marker records, if it can be read.
fn marker_source(target: BorrowedFd, id: &str) -> Option<String> {
    let state = crate::base::dirfd::open_dir_if_exists(target, STATE_DIR).ok()??;
    let images = crate::base::dirfd::open_dir_if_exists(state.as_fd(), IMAGES_DIR).ok()??;
    let fd = nix::fcntl::openat(
        images.as_fd(),
        id,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let v: serde_json::Value = serde_json::from_reader(std::fs::File::from(fd)).ok()?;
    v["source"].as_str().map(str::to_owned)
}

/// Image `id`'s [`Label`]: its record's, with the source its marker names for records
/// written before labels were.
pub fn label(target: BorrowedFd, id: &str, record: Option<&Record>) -> Label {
    let mut l = record.map(|r| r.label.clone()).unwrap_or_default();
    if l.source.is_none() {
        l.source = marker_source(target, id);
    }
    l
}

/// One profile generation nix-seed wrote: `var/<profile>-<number>-link` → `store_path`.
#[derive(serde::Serialize, serde::Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct Generation {
    /// The profile relative to the target's `var/`: `nix/profiles/default`,
    /// `nix/profiles/per-user/root/profile`.
    pub profile: String,
    pub number: u64,
    /// The store path the generation link points to (`/nix/store/...-user-environment`).
    pub store_path: String,
}

pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The record of image `id`, if any. A record that cannot be parsed is an error naming it.
pub fn read_record(target: BorrowedFd, target_path: &Path, id: &str) -> Result<Option<Record>> {
    let shown = || format!("{}/{STATE_DIR}/{RECORDS_DIR}/{id}", target_path.display());
    let Some(state) = crate::base::dirfd::open_dir_if_exists(target, STATE_DIR).with_context(shown)? else {
        return Ok(None);
    };
    let Some(records) = crate::base::dirfd::open_dir_if_exists(state.as_fd(), RECORDS_DIR).with_context(shown)? else {
        return Ok(None);
    };
    let fd = match nix::fcntl::openat(
        records.as_fd(),
        id,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(e).with_context(shown),
    };
    let mut body = String::new();
    std::io::Read::read_to_string(&mut std::fs::File::from(fd), &mut body).with_context(shown)?;
    let r: Record = serde_json::from_str(&body)
        .with_context(|| format!("{} is not a nix-seed image record; remove it", shown()))?;
    Ok(Some(r))
}

/// Every image's record (nix-seed's profile generations are recognised by any of them),
/// in no particular order. Temporary names of an interrupted write are left out.
pub fn read_records(target: BorrowedFd, target_path: &Path) -> Result<Vec<Record>> {
    let shown = || format!("{}/{STATE_DIR}/{RECORDS_DIR}", target_path.display());
    let Some(state) = crate::base::dirfd::open_dir_if_exists(target, STATE_DIR).with_context(shown)? else {
        return Ok(Vec::new());
    };
    let Some(records) = crate::base::dirfd::open_dir_if_exists(state.as_fd(), RECORDS_DIR).with_context(shown)? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for e in crate::base::dirfd::list(records.as_fd()).with_context(shown)? {
        let Some(id) = e.name.to_str() else { continue };
        if crate::base::dirfd::is_temp_name(id.as_bytes()) {
            continue;
        }
        if let Some(r) = read_record(target, target_path, id)? {
            out.push(r);
        }
    }
    Ok(out)
}

/// Write `r` as the record of its image: to a temporary name, then renamed over the old
/// record (nix-seed's own file, written by an earlier run under the same lock).
pub fn write_record(c: &Checked, r: &Record) -> Result<()> {
    use std::io::Write;
    let shown = || {
        format!(
            "cannot write {}/{STATE_DIR}/{RECORDS_DIR}/{}",
            c.target_path.display(),
            r.image_id
        )
    };
    let state = dir(c.target.as_fd(), &c.target_path).with_context(shown)?;
    let records = crate::base::dirfd::mkdir_open(state.as_fd(), RECORDS_DIR, Mode::from_bits_truncate(0o755))
        .map_err(anyhow::Error::from)
        .with_context(shown)?
        .0;
    let tmp = crate::base::dirfd::temp_name(std::ffi::OsStr::new(&r.image_id));
    let fd = nix::fcntl::openat(
        records.as_fd(),
        tmp.as_os_str(),
        nix::fcntl::OFlag::O_WRONLY
            | nix::fcntl::OFlag::O_CREAT
            | nix::fcntl::OFlag::O_EXCL
            | nix::fcntl::OFlag::O_NOFOLLOW
            | nix::fcntl::OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    )
    .with_context(shown)?;
    let guard = crate::base::dirfd::TempEntry::new(records.as_fd(), &tmp);
    let mut f = std::fs::File::from(fd);
    writeln!(f, "{}", serde_json::to_string(r).expect("a record serialises")).with_context(shown)?;
    drop(f);
    nix::fcntl::renameat(records.as_fd(), tmp.as_os_str(), records.as_fd(), r.image_id.as_str()).with_context(shown)?;
    guard.keep();
    Ok(())
}

/// Update the record of image `id` at the end of a complete seed: first seeded (kept if
/// known), last seeded now; generations as they are.
pub fn record_seeded(
    c: &Checked,
    id: &str,
    registrations: Option<crate::steps::registrations::Counts>,
    roots: &[String],
    label: Label,
) -> Result<()> {
    let now = now_rfc3339();
    let mut r = read_record(c.target.as_fd(), &c.target_path, id)?.unwrap_or_else(|| Record {
        image_id: id.to_string(),
        first_seeded: now.clone(),
        ..Default::default()
    });
    r.last_seeded = now;
    r.registrations = registrations;
    r.roots = Some(roots.to_vec());
    r.label = label;
    write_record(c, &r)
}
