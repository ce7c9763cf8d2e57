//! `nix-seed prune`: retire the images no pod needs any more, so that `nix-seed gc` may
//! delete their paths. Retiring removes only what nix-seed wrote for an
//! image: its marker first (so no pod start trusts it any more: a pod that starts it again
//! takes the slow path and seeds it again), then its GC root directory (renamed to a
//! temporary name, then removed: the roots go in one step), the profile generations
//! nix-seed wrote for it that no profile points to (only a link that still points where its
//! record says), and its record last. Store paths are never deleted here: that stays with
//! `nix-seed gc` ([`crate::commands::gc`]), and prune says what a collection would free.
//!
//! What is never retired: an image seen within `--unused-for` (with "last seen"'s
//! resolution added, see [`crate::steps::state::SEEN_RESOLUTION`]), an image whose generation a
//! profile points to now; and nothing a pod rooted is touched.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result};
use indicatif::HumanBytes;
use nix::errno::Errno;
use nix::sys::stat::SFlag;
use nix::unistd::{unlinkat, UnlinkatFlags};
use serde_json::json;

use crate::base::dirfd::{file_type, lstat_at, open_dir, open_dir_if_exists, remove_tree_at};
use crate::base::error::Invalid;
use crate::base::progress::{count, Log};
use crate::commands::images::{self, Disk, Image};
use crate::steps::state::{Generation, IMAGES_DIR, RECORDS_DIR, SEEN_RESOLUTION, STATE_DIR};

fn invalid(msg: String) -> anyhow::Error {
    Invalid(format!("{msg}; nothing was changed")).into()
}

/// Exactly one way of choosing, and a sane one.
fn check_args(args: &Options) -> Result<()> {
    let ways = [
        args.keep_last.is_some(),
        args.unused_for.is_some(),
        !args.images.is_empty(),
    ];
    match ways.iter().filter(|w| **w).count() {
        0 => Err(invalid(
            "say which images to retire: --keep-last N (keep the N most recently seen), --unused-for DUR \
             (e.g. 30d) or --image ID"
                .into(),
        )),
        1 if args.keep_last == Some(0) => Err(invalid(
            "--keep-last 0 would retire every image, those pods run now included: pass 1 or more (or \
             --image ID to retire one)"
                .into(),
        )),
        1 => Ok(()),
        _ => Err(invalid(
            "--keep-last, --unused-for and --image exclude each other: pass one of them".into(),
        )),
    }
}

/// `var/<rel>`'s parent directory, opened without following symlinks, and its last name;
/// `None` for a path that is not plain names (a record is a file on a shared disk).
fn parent_in_var(root: BorrowedFd, rel: &str) -> Option<(OwnedFd, String)> {
    let mut parts: Vec<&str> = rel.split('/').collect();
    if parts.iter().any(|p| p.is_empty() || *p == "." || *p == "..") {
        return None;
    }
    let last = parts.pop()?.to_string();
    let mut d = open_dir(root, "var").ok()?;
    for p in parts {
        d = open_dir(d.as_fd(), p).ok()?;
    }
    Some((d, last))
}

fn readlink_at(dir: BorrowedFd, name: &str) -> Option<String> {
    let st = lstat_at(dir, name).ok()??;
    if file_type(&st) != SFlag::S_IFLNK {
        return None;
    }
    Some(nix::fcntl::readlinkat(dir, name).ok()?.to_string_lossy().into_owned())
}

/// The link of generation `g`: `<profile>-<number>-link`, next to the profile.
fn link_name(g: &Generation) -> String {
    let base = g.profile.rsplit('/').next().unwrap_or(&g.profile);
    format!("{base}-{}-link", g.number)
}

/// Whether `g` is the generation its profile points to now.
fn is_current(root: BorrowedFd, g: &Generation) -> bool {
    let Some((dir, base)) = parent_in_var(root, &g.profile) else {
        return false;
    };
    readlink_at(dir.as_fd(), &base).is_some_and(|t| t.rsplit('/').next() == Some(link_name(g).as_str()))
}

/// Whether `g`'s link still points where the record says (then it is nix-seed's to remove).
fn is_ours(root: BorrowedFd, g: &Generation) -> bool {
    let Some((dir, _)) = parent_in_var(root, &g.profile) else {
        return false;
    };
    readlink_at(dir.as_fd(), &link_name(g)).is_some_and(|t| t == g.store_path)
}

fn generations(img: &Image) -> &[Generation] {
    img.record.as_ref().map_or(&[], |r| r.generations.as_slice())
}

/// The images to retire (indexes into `disk.images`), and a line for each one spared.
fn choose(disk: &Disk, args: &Options, now: SystemTime) -> Result<(Vec<usize>, Vec<String>)> {
    let current = |img: &Image| {
        generations(img)
            .iter()
            .find(|g| is_current(disk.root.as_fd(), g))
            .map(|g| format!("var/{} points to its generation {}", g.profile, g.number))
    };
    let mut retire = Vec::new();
    let mut spared = Vec::new();
    for (k, img) in disk.images.iter().enumerate() {
        let wanted = if let Some(n) = args.keep_last {
            k as u64 >= n
        } else if let Some(d) = args.unused_for {
            // "Last seen" may lag the last pod start by up to its resolution.
            let last = (img.last_seen.map(|t| t + SEEN_RESOLUTION)).max(img.last_seeded());
            last.is_none_or(|t| now.duration_since(t).is_ok_and(|age| age > d))
        } else {
            args.images.contains(&img.id)
        };
        if !wanted {
            continue;
        }
        match current(img) {
            Some(why) if !args.images.is_empty() => {
                return Err(invalid(format!(
                    "image {} is in use: {why}; switch that profile to another generation first",
                    img.id
                )))
            }
            Some(why) => spared.push(format!("kept image {}: {why}", img.id)),
            None => retire.push(k),
        }
    }
    Ok((retire, spared))
}

/// What one retirement removes: the generation links (relative to var/) besides the
/// marker, roots and record.
fn removable_generations(disk: &Disk, retire: &[usize], k: usize) -> Vec<Generation> {
    let kept: Vec<&Generation> = (0..disk.images.len())
        .filter(|i| !retire.contains(i))
        .flat_map(|i| generations(&disk.images[i]))
        .collect();
    generations(&disk.images[k])
        .iter()
        .filter(|g| !kept.iter().any(|o| o.profile == g.profile && o.number == g.number))
        .filter(|g| !is_current(disk.root.as_fd(), g) && is_ours(disk.root.as_fd(), g))
        .cloned()
        .collect()
}

/// Retire one image: marker, roots (renamed away in one step, then removed), generations,
/// record, in that order (a crash in between leaves an image without a marker: a pod that
/// starts it seeds it again, and the next prune finishes the rest).
fn retire(disk: &Disk, img: &Image, gens: &[Generation], log: &Log) -> Result<()> {
    let shown = |what: &str| format!("cannot retire image {}: cannot remove {what}", img.id);
    let state = open_dir(disk.root.as_fd(), STATE_DIR).with_context(|| shown(STATE_DIR))?;
    let remove = |dir: &str| -> Result<()> {
        let Some(d) = open_dir_if_exists(state.as_fd(), dir).with_context(|| shown(dir))? else {
            return Ok(());
        };
        match unlinkat(d.as_fd(), img.id.as_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(e) => Err(e).with_context(|| shown(&format!("{STATE_DIR}/{dir}/{}", img.id))),
        }
    };
    remove(IMAGES_DIR)?;
    crate::base::failpoint::hit("prune-unmarked");
    retire_roots(disk, img)?;
    crate::base::failpoint::hit("prune-unrooted");
    for g in gens {
        // Asked again right before: a pod may have switched its profile meanwhile.
        if is_current(disk.root.as_fd(), g) || !is_ours(disk.root.as_fd(), g) {
            continue;
        }
        let Some((d, _)) = parent_in_var(disk.root.as_fd(), &g.profile) else {
            continue;
        };
        match unlinkat(d.as_fd(), link_name(g).as_str(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {}
            Err(e) => log.warn(&format!(
                "cannot remove {}/var/{}-{}-link: {e}",
                disk.path.display(),
                g.profile,
                g.number
            )),
        }
    }
    remove(RECORDS_DIR)
}

fn retire_roots(disk: &Disk, img: &Image) -> Result<()> {
    let shown = disk
        .path
        .join("var/nix/gcroots")
        .join(crate::steps::gcroots::DIR)
        .join(&img.id);
    let Some(ours) =
        images::seed_roots_dir(disk.root.as_fd()).with_context(|| format!("cannot open {}", shown.display()))?
    else {
        return Ok(());
    };
    let tmp = crate::base::dirfd::temp_name(std::ffi::OsStr::new(&img.id));
    match nix::fcntl::renameat(ours.as_fd(), img.id.as_str(), ours.as_fd(), tmp.as_os_str()) {
        Ok(()) => {}
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("cannot remove {}", shown.display())),
    }
    crate::base::failpoint::hit("prune-roots-renamed");
    remove_tree_at(ours.as_fd(), &tmp).with_context(|| {
        format!(
            "cannot remove {} (renamed to {}; the next prune removes it)",
            shown.display(),
            tmp.to_string_lossy()
        )
    })
}

/// Enter the `.nix-seed/db-lock` window for the disk's database, if it has one.
fn db_window(disk: &Disk, log: &Arc<Log>) -> Result<Option<crate::engines::nixdb::DbWindow>> {
    let var_path = disk.path.join(crate::base::layout::VAR);
    let Some(var) = open_dir_if_exists(disk.root.as_fd(), "var")? else {
        return Ok(None);
    };
    let Some(db) = crate::engines::nixdb::open_db_dir(var.as_fd(), &var_path)? else {
        return Ok(None);
    };
    let db_path = var_path.join(crate::engines::nixdb::DB_DIR);
    let state = crate::steps::state::dir(disk.root.as_fd(), &disk.path)?;
    Ok(Some(crate::engines::nixdb::DbWindow::enter(
        state,
        Some(db.as_fd()),
        &db_path,
        log,
    )?))
}

/// Take the seed lock (refusing a read-only disk first), then read the disk again: what a
/// seeder did meanwhile is seen. The database is read inside the `.nix-seed/db-lock`
/// window, as a seeder reads it, so that a dotfile lock left by a prune killed mid-read is
/// recovered by the next seeder. Leftovers of a killed prune's root removal go too.
fn lock(
    disk: Disk,
    args: &Options,
    log: &Arc<Log>,
    interrupted: &Arc<AtomicBool>,
) -> Result<(Disk, crate::engines::lock::Held)> {
    let vfs = nix::sys::statvfs::fstatvfs(disk.root.as_fd())?;
    if vfs.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
        return Err(invalid(format!(
            "{} is on a read-only filesystem: mount the volume read-write",
            disk.path.display()
        )));
    }
    let cfg = crate::engines::lock::Config {
        timeout: args.lock_timeout,
        stale: args.lock_stale,
    };
    let held = crate::engines::lock::acquire(disk.root.as_fd(), &disk.path, &cfg, log, interrupted)?;
    let window = db_window(&disk, log)?;
    let disk = images::read(&args.target, log)?;
    drop(window);
    if let Some(ours) = images::seed_roots_dir(disk.root.as_fd())? {
        let shown = disk.path.join("var/nix/gcroots").join(crate::steps::gcroots::DIR);
        let (_, problems) = crate::base::dirfd::remove_leftovers(ours.as_fd(), &shown)?;
        for p in problems {
            log.warn(&p);
        }
    }
    Ok((disk, held))
}

/// What a collection would free once the `chosen` images and their generations `gens`
/// are retired: their paths that no remaining root reaches.
fn freeable(disk: &Disk, chosen: &[usize], gens: &[Vec<Generation>]) -> Result<Vec<usize>> {
    let skipped: Vec<String> = chosen
        .iter()
        .map(|&k| {
            format!(
                "/nix/var/nix/gcroots/{}/{}",
                crate::steps::gcroots::DIR,
                disk.images[k].id
            )
        })
        .chain(gens.iter().flatten().map(|g| {
            let dir = g.profile.rsplit_once('/').map_or("", |(d, _)| d);
            format!("/nix/var/{dir}/{}", link_name(g))
        }))
        .collect();
    let roots = disk.visible_roots(&|p| skipped.iter().any(|s| s == p))?;
    let live = images::reach(&disk.graph, roots);
    let mut freed = vec![false; live.len()];
    for &k in chosen {
        for &i in &disk.images[k].closure {
            freed[i] = !live[i];
        }
    }
    Ok((0..freed.len()).filter(|&i| freed[i]).collect())
}

/// `nix-seed prune`.
/// What `prune` is asked to retire.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: std::path::PathBuf,
    pub keep_last: Option<u64>,
    pub unused_for: Option<std::time::Duration>,
    pub images: Vec<String>,
    pub dry_run: bool,
    pub lock_timeout: std::time::Duration,
    pub lock_stale: std::time::Duration,
    pub output: crate::base::progress::Output,
}

/// `nix-seed prune`; a database lock wait that ran out is a lock timeout (exit 3).
pub fn run(o: &Options, cx: &super::Ctx) -> Result<super::Done> {
    prune(o, cx.log, cx.stop)
        .map(|()| super::Done::Success)
        .map_err(|e| crate::engines::nixdb::busy_as_timeout(e, &o.target, o.lock_timeout, "nothing was changed"))
}

fn prune(args: &Options, log: &Arc<Log>, interrupted: &Arc<AtomicBool>) -> Result<()> {
    check_args(args)?;
    images::wait_for_db(&args.target, args.lock_timeout, log);
    let disk = images::read(&args.target, log)?;
    if let Some(id) = args.images.iter().find(|id| !disk.images.iter().any(|i| &i.id == *id)) {
        return Err(invalid(format!(
            "no image {id} in {}: `nix-seed images --target {}` lists them",
            disk.path.display(),
            args.target.display()
        )));
    }
    // Refusals (an image asked for by name that a profile uses) come before the lock:
    // they change nothing.
    choose(&disk, args, SystemTime::now())?;
    let (disk, _held) = if args.dry_run {
        (disk, None)
    } else {
        let (disk, held) = lock(disk, args, log, interrupted)?;
        (disk, Some(held))
    };
    let (chosen, spared) = choose(&disk, args, SystemTime::now())?;
    for s in &spared {
        log.info(s);
    }
    let gens: Vec<Vec<Generation>> = chosen
        .iter()
        .map(|&k| removable_generations(&disk, &chosen, k))
        .collect();

    let freed = freeable(&disk, &chosen, &gens)?;

    let verb = if args.dry_run { "would retire" } else { "retired" };
    for (&k, g) in chosen.iter().zip(&gens) {
        let img = &disk.images[k];
        if !args.dry_run {
            retire(&disk, img, g, log)?;
        }
        log.out(
            "retired",
            &format!(
                "{verb} image {} (last seen {}, {}, {} profile generations)",
                img.id,
                img.last_seen
                    .map_or("never".to_string(), |t| humantime::format_rfc3339_seconds(t)
                        .to_string()),
                count(img.closure.len() as u64, "store path", "store paths"),
                g.len()
            ),
            json!({"image_id": img.id, "dry_run": args.dry_run, "store_paths": img.closure.len(),
                   "generations": g.iter().map(|g| format!("{}-{}-link", g.profile, g.number)).collect::<Vec<_>>()}),
        );
    }
    for &i in &freed {
        let p = &disk.graph.paths[i];
        log.detail(
            "freeable",
            &format!("a collection would delete {p}"),
            json!({"path": p}),
        );
    }
    let bytes = disk.bytes(&freed);
    log.out(
        "prune",
        &format!(
            "{verb} {} of {}; `nix-seed gc` would now free at most {} \
             ({}) of theirs: an upper bound, since roots outside the disk (pods' own) are invisible here",
            count(chosen.len() as u64, "image", "images"),
            disk.images.len(),
            count(freed.len() as u64, "store path", "store paths"),
            HumanBytes(bytes)
        ),
        json!({"retired": chosen.iter().map(|&k| &disk.images[k].id).collect::<Vec<_>>(),
               "kept": disk.images.len() - chosen.len(), "dry_run": args.dry_run,
               "freeable_store_paths": freed.len(), "freeable_bytes": bytes}),
    );
    Ok(())
}
