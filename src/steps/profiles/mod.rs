//! Profiles follow the image (`seed --profiles follow|keep|image`).
//!
//! A Nix profile is a symlink `NAME` → `NAME-N-link` (generation N, in the same
//! directory), and `NAME-N-link` → `/nix/store/...` (a user environment). For each profile
//! the image ships (`var/nix/profiles/NAME`, `var/nix/profiles/per-user/USER/NAME`), the
//! store path Y of the image's *current* generation is what pods should get:
//!
//! - the target's profile already resolves to Y: nothing;
//! - else Y becomes a generation of the target's profile: one nix-seed already wrote (any
//!   image's record says so and its link still points to Y), or a new one numbered as Nix
//!   does (the highest existing number + 1), so older generations stay and
//!   `nix-env --rollback` works;
//! - the profile is switched to it (a symlink under a temporary name renamed over `NAME`,
//!   as Nix's `switchLink`) when it does not exist yet, when `--profiles image`, or when
//!   its current generation is one nix-seed wrote (`follow`). A current generation nix-seed
//!   did not write is a user's change: it stays current, and a warning says how to switch.
//!
//! Write-ahead: a generation is recorded in the image's record ([`crate::steps::state::Record`])
//! *before* its link is made. A recorded generation whose link is missing or points
//! elsewhere is simply not nix-seed's; a link of nix-seed's that was never recorded would
//! look like a user's change, and the profile would stop following the image.
//!
//! Every change is made under the profile's lock, as `nix-env` takes it ([`lock`]).
//! `--profiles keep` leaves all this out: `var/`'s merge adds missing profiles by name and
//! warns about the ones that differ.

mod image;
mod lock;

pub use image::{default_name, image_profiles, is_profile_entry, ImageProfile};
use image::{link_generation, open_rel, parse_generation};

use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::fcntl::{readlinkat, AtFlags};
use nix::sys::stat::SFlag;
use serde_json::json;

use crate::base::dirfd::{file_type, lstat_at};
use crate::base::preflight::Checked;
use crate::base::progress::{Level, Log};
use crate::steps::state::{self, Record};

/// What [`apply`] did, for the report.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub switched: u64,
    pub generations_added: u64,
    /// Profiles left on a user's generation (follow), with the image's added.
    pub not_switched: u64,
}

/// `var/` is about to be created whole from the image's: its profiles' current generations
/// are nix-seed's, recorded (before they exist) for image `id`.
pub fn record_whole(c: &Checked, id: &str, profiles: &[ImageProfile]) -> Result<()> {
    if profiles.is_empty() {
        return Ok(());
    }
    let mut r = own_record(c, id)?;
    for p in profiles {
        let g = p.generation(p.number);
        if !r.generations.contains(&g) {
            r.generations.push(g);
        }
    }
    state::write_record(c, &r)
}

fn own_record(c: &Checked, id: &str) -> Result<Record> {
    Ok(
        state::read_record(c.target.as_fd(), &c.target_path, id)?.unwrap_or_else(|| Record {
            image_id: id.to_string(),
            first_seeded: state::now_rfc3339(),
            ..Default::default()
        }),
    )
}

/// What a profile step needs: the run's settings and what the target's store holds.
/// What a seed does to the profiles an image ships (`--profiles`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Switch to the image's generation when the profile's current one is nix-seed's.
    Follow,
    /// Leave existing profiles as they are (a plain merge of var/).
    Keep,
    /// Always switch to the image's generation.
    Image,
}

use Mode as ProfilesMode;

pub struct Ctx<'a> {
    pub c: &'a Checked,
    pub image_id: &'a str,
    pub mode: ProfilesMode,
    pub log: &'a Log,
    pub stop: &'a AtomicBool,
    pub lock_timeout: Duration,
    /// Whether the target's store holds this store path name.
    pub holds: &'a dyn Fn(&str) -> bool,
    /// The first path (a name) of this store path's closure that is not registered in the
    /// target, if any: a profile is switched only to a path whose whole closure is
    /// registered (and so rooted by the generation link).
    pub unregistered: &'a dyn Fn(&str) -> Option<String>,
}

/// Make each of the image's profiles follow the image (see the module's documentation).
/// Runs after `var/`'s merge, so every profile directory the image has exists.
pub fn apply(cx: &Ctx, profiles: &[ImageProfile]) -> Result<Outcome> {
    let mut out = Outcome::default();
    if cx.mode == ProfilesMode::Keep || profiles.is_empty() {
        return Ok(out);
    }
    let c = cx.c;
    let records = state::read_records(c.target.as_fd(), &c.target_path)?;
    let mut own = own_record(c, cx.image_id)?;
    let var = crate::base::dirfd::open_dir(c.target.as_fd(), "var")
        .with_context(|| format!("cannot open {}/var", c.target_path.display()))?;
    for p in profiles {
        let name = p.store_path.file_name().and_then(OsStr::to_str).unwrap_or_default();
        if !(cx.holds)(name) {
            cx.log.warn(&format!(
                "{}: the image's points to {}, which is not in the target's store; left as it is",
                p.shown(),
                p.store_path.display()
            ));
            continue;
        }
        let Some(dir) = open_rel(var.as_fd(), &p.dir).ok().flatten() else {
            cx.log.warn(&format!(
                "{}: cannot open {}/var/{} (it must be a directory, not a symlink); left as it is",
                p.shown(),
                c.target_path.display(),
                p.dir.display()
            ));
            continue;
        };
        let ours = |n: u64, path: &OsStr| {
            records.iter().any(|r| {
                r.generations
                    .iter()
                    .any(|g| g.profile == p.rel() && g.number == n && OsStr::new(&g.store_path) == path)
            })
        };
        follow(cx, p, dir.as_fd(), &ours, &mut own, &mut out)?;
    }
    Ok(out)
}

/// The target's generations of profile `name` in `dir`: number → where the link points
/// (`None`: not a symlink; it still takes its number, as in Nix's `findGenerations`).
fn generations(dir: BorrowedFd, name: &str) -> Result<BTreeMap<u64, Option<OsString>>> {
    let mut gens = BTreeMap::new();
    for e in crate::base::dirfd::list(dir)? {
        if let Some(n) = parse_generation(name.as_bytes(), e.name.as_bytes()) {
            gens.insert(n, readlinkat(dir, e.name.as_os_str()).ok());
        }
    }
    Ok(gens)
}

/// The target's profile as it is: missing, current generation N, or something nix-seed
/// cannot read as a profile.
enum Current {
    Missing,
    Generation(u64),
    /// A symlink that names no generation of the profile: why.
    Unknown(String),
    /// Not a symlink: not a profile; never replaced.
    NotALink(&'static str),
}

fn current(dir: BorrowedFd, p: &ImageProfile) -> Result<Current> {
    let Some(st) = lstat_at(dir, p.name.as_str())? else {
        return Ok(Current::Missing);
    };
    if file_type(&st) != SFlag::S_IFLNK {
        return Ok(Current::NotALink(crate::base::dirfd::kind_name(&st)));
    }
    let t = readlinkat(dir, p.name.as_str())?;
    Ok(match link_generation(&p.dir, &p.name, &t) {
        Some(n) => Current::Generation(n),
        None => Current::Unknown(format!("the target's points to {}", t.to_string_lossy())),
    })
}

/// What following the image means for one profile as it is now.
struct Decision {
    cur: Current,
    /// The generation to switch to: an existing one of nix-seed's, or a new one.
    number: u64,
    reuse: bool,
    /// Why the profile is a user's (follow then does not switch).
    users: Option<String>,
}

/// Decide for profile `p` in `dir` (under its lock, or for a dry run without); `None`:
/// nothing to do (it resolves to the image's already), or not a profile (warned).
fn decide(
    p: &ImageProfile,
    dir: BorrowedFd,
    ours: &dyn Fn(u64, &OsStr) -> bool,
    shown_path: &std::path::Path,
    log: &Log,
) -> Result<Option<Decision>> {
    let gens = generations(dir, &p.name).with_context(|| format!("cannot list {}", shown_path.display()))?;
    let y = p.store_path.as_os_str();
    let cur = current(dir, p).with_context(|| format!("cannot read {}", shown_path.display()))?;
    if let Current::NotALink(kind) = cur {
        log.warn(&format!(
            "{}: the target has a {kind} there, not a profile; kept the target's",
            shown_path.display()
        ));
        return Ok(None);
    }
    let cur_path = match &cur {
        Current::Generation(n) => gens.get(n).and_then(Option::as_ref),
        _ => None,
    };
    if cur_path.is_some_and(|t| t == y) {
        return Ok(None);
    }
    let reuse = gens
        .iter()
        .rev()
        .find(|(n, t)| t.as_deref() == Some(y) && ours(**n, y))
        .map(|(n, _)| *n);
    let users = match &cur {
        Current::Missing => None,
        Current::Generation(n) if cur_path.is_some_and(|t| ours(*n, t)) => None,
        Current::Generation(n) => Some(format!("its current generation {n} is not one nix-seed set")),
        Current::Unknown(why) => Some(why.clone()),
        Current::NotALink(_) => unreachable!("returned above"),
    };
    Ok(Some(Decision {
        number: reuse.unwrap_or_else(|| gens.keys().next_back().map_or(1, |m| m + 1)),
        reuse: reuse.is_some(),
        users,
        cur,
    }))
}

fn follow(
    cx: &Ctx,
    p: &ImageProfile,
    dir: BorrowedFd,
    ours: &dyn Fn(u64, &OsStr) -> bool,
    own: &mut Record,
    out: &mut Outcome,
) -> Result<()> {
    let shown_path = cx.c.layout.var.join(p.rel());
    let _lock = lock::lock_profile(dir, &p.name, &shown_path, cx.log, cx.stop, cx.lock_timeout)?;
    let Some(Decision {
        cur,
        number,
        reuse,
        users,
    }) = decide(p, dir, ours, &shown_path, cx.log)?
    else {
        return Ok(());
    };
    if !reuse {
        add_generation(cx, p, dir, number, own)?;
        out.generations_added += 1;
    }
    let name = p.store_path.file_name().and_then(OsStr::to_str).unwrap_or_default();
    let unregistered = (cx.unregistered)(name);
    match (&users, cx.mode) {
        _ if unregistered.is_some() => {
            out.not_switched += 1;
            cx.log.event(
                Level::Warn,
                "profile-not-switched",
                &format!(
                    "{}: {} generation {number} (image's); not switched: the closure of {} is incomplete in \
                     the target, /nix/store/{} is not registered (see above), and a garbage collection would \
                     delete it",
                    p.shown(),
                    if reuse { "has" } else { "added" },
                    p.store_path.display(),
                    unregistered.as_deref().unwrap_or_default()
                ),
                json!({"profile": p.rel(), "generation": number, "store_path": p.store_path,
                       "why": "closure not registered"}),
            );
        }
        (Some(why), ProfilesMode::Follow) => {
            out.not_switched += 1;
            cx.log.event(
                Level::Warn,
                "profile-not-switched",
                &format!(
                    "{}: {} generation {number} (image's); not switched: you changed the profile since nix-seed \
                     set it ({why}); to switch: nix-env --switch-generation {number} -p /nix/var/{}",
                    p.shown(),
                    if reuse { "has" } else { "added" },
                    p.rel()
                ),
                json!({"profile": p.rel(), "generation": number, "store_path": p.store_path}),
            );
        }
        _ => {
            switch(cx, p, dir, number)?;
            out.switched += 1;
            let was = match cur {
                Current::Generation(n) => format!(", was {n}"),
                Current::Missing => "; a new profile".to_string(),
                Current::Unknown(_) | Current::NotALink(_) => String::new(),
            };
            cx.log.event(
                Level::Info,
                "profile-switched",
                &format!("{}: switched to generation {number} (image's){was}", p.shown()),
                json!({"profile": p.rel(), "generation": number, "store_path": p.store_path}),
            );
        }
    }
    Ok(())
}

/// `seed --dry-run`: what [`apply`] would do to each of the image's profiles, one line
/// each, changing nothing and taking no lock (so a seeder at work may change them first).
pub fn preview(c: &Checked, mode: ProfilesMode, profiles: &[ImageProfile], log: &Log) -> Result<()> {
    if mode == ProfilesMode::Keep || profiles.is_empty() {
        return Ok(());
    }
    let records = state::read_records(c.target.as_fd(), &c.target_path)?;
    let Some(var) = crate::base::dirfd::open_dir_if_exists(c.target.as_fd(), "var")? else {
        return Ok(());
    };
    for p in profiles {
        let shown_path = c.layout.var.join(p.rel());
        let Some(dir) = open_rel(var.as_fd(), &p.dir).ok().flatten() else {
            log.info(&format!("{}: would create it at the image's generation", p.shown()));
            continue;
        };
        let ours = |n: u64, path: &OsStr| {
            records.iter().any(|r| {
                r.generations
                    .iter()
                    .any(|g| g.profile == p.rel() && g.number == n && OsStr::new(&g.store_path) == path)
            })
        };
        let Some(d) = decide(p, dir.as_fd(), &ours, &shown_path, log)? else {
            continue;
        };
        let what = if d.reuse { "its" } else { "a new" };
        let line = match (&d.users, mode) {
            (Some(why), ProfilesMode::Follow) => format!(
                "{}: would add {what} generation {} (image's) without switching: you changed the profile since \
                 nix-seed set it ({why})",
                p.shown(),
                d.number
            ),
            _ => format!(
                "{}: would switch to {what} generation {} (image's)",
                p.shown(),
                d.number
            ),
        };
        log.event(
            Level::Info,
            "would-switch-profile",
            &line,
            json!({"profile": p.rel(), "generation": d.number, "switch": d.users.is_none() || mode == ProfilesMode::Image}),
        );
    }
    Ok(())
}

/// Record generation `n` of `p` for this image, then create its link (exclusively: a
/// link by that name that appeared meanwhile is someone else's).
fn add_generation(cx: &Ctx, p: &ImageProfile, dir: BorrowedFd, n: u64, own: &mut Record) -> Result<()> {
    let g = p.generation(n);
    if !own.generations.contains(&g) {
        own.generations.push(g);
        state::write_record(cx.c, own)?;
    }
    let link = format!("{}-{n}-link", p.name);
    let shown = cx.c.layout.var.join(&p.dir).join(&link);
    nix::unistd::symlinkat(p.store_path.as_os_str(), dir, link.as_str())
        .with_context(|| format!("cannot create {}", shown.display()))?;
    chown_link(dir, &link, p.gen_owner);
    crate::base::failpoint::hit("generation-added");
    Ok(())
}

/// Point the profile at generation `n`: a symlink under a temporary name, renamed over
/// the profile (Nix's `switchLink`), so a pod sees the old profile or the new one.
fn switch(cx: &Ctx, p: &ImageProfile, dir: BorrowedFd, n: u64) -> Result<()> {
    let shown = cx.c.layout.var.join(p.rel());
    let tmp = crate::base::dirfd::temp_name(OsStr::new(&p.name));
    nix::unistd::symlinkat(format!("{}-{n}-link", p.name).as_str(), dir, tmp.as_os_str())
        .with_context(|| format!("cannot switch {}", shown.display()))?;
    let guard = crate::base::dirfd::TempEntry::new(dir, &tmp);
    chown_link(dir, tmp.to_str().unwrap_or_default(), p.owner);
    nix::fcntl::renameat(dir, tmp.as_os_str(), dir, p.name.as_str())
        .with_context(|| format!("cannot switch {}", shown.display()))?;
    guard.keep();
    Ok(())
}

/// The image's owner on a link nix-seed made; not root, or a filesystem that squashes
/// root: the link keeps ours.
fn chown_link(dir: BorrowedFd, name: &str, (uid, gid): (u32, u32)) {
    let _ = nix::unistd::fchownat(
        dir,
        name,
        Some(nix::unistd::Uid::from_raw(uid)),
        Some(nix::unistd::Gid::from_raw(gid)),
        AtFlags::AT_SYMLINK_NOFOLLOW,
    );
}
