//! Deleting what the plan condemned, the way a kill at any moment leaves a consistent
//! store: referrers first, each batch claimed against the gc socket's roots, unregistered
//! in one transaction, renamed away, then removed; then `.links`; then the summary.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use indicatif::HumanBytes;
use serde_json::json;

use super::plan::{Freed, Plan};
use super::{Disk, Options, BATCH, LINKS_PENDING};
use crate::base::dirfd::lstat_at;
use crate::base::error::Stopped;
use crate::base::failpoint;
use crate::base::progress::{count, Log};
use crate::engines::gc::sweep;
use crate::engines::gc::temproots::{self, hash_part};
use crate::engines::gc::{live, Claims, Keep, Roots, Why};
use crate::engines::nixdb::{Registrations, TargetDb};

/// Delete the plan's dead paths, referrers first, in batches: each batch claimed (a path a
/// client made a temporary root meanwhile lives, with its closure), unregistered in one
/// transaction, renamed away, then removed. Unregistered entries last, the same way.
#[allow(clippy::too_many_arguments)]
pub(super) fn delete(
    disk: &Disk,
    db: &mut TargetDb,
    regs: &Registrations,
    plan: &mut Plan,
    claims: &Claims,
    o: &Options,
    keep: Keep,
    log: &Log,
    counters: &crate::base::progress::Counters,
    stopped: &dyn Fn() -> bool,
) -> Result<Freed> {
    let mut f = Freed::default();
    if plan.order.is_empty() && plan.unregistered.is_empty() {
        return Ok(f);
    }
    mark_links_pending(disk)?;
    let budget = o.max_freed.unwrap_or(u64::MAX);
    let mut next = 0;
    while next < plan.order.len() && f.bytes < budget {
        if stopped() {
            return Err(Stopped.into());
        }
        // The next batch: at most BATCH paths, and no more than the budget asks for.
        let mut batch = Vec::new();
        let mut batch_bytes = 0;
        while next < plan.order.len() && batch.len() < BATCH && f.bytes + batch_bytes < budget {
            let i = plan.order[next];
            next += 1;
            if plan.alive[i].is_none() {
                batch_bytes += plan.usage.get(&i).map_or(0, |u| u.bytes);
                batch.push(i);
            }
        }
        let names: Vec<&str> = batch
            .iter()
            .map(|&i| crate::base::store_path::store_name(&regs.paths[i]))
            .collect();
        let hashes: Vec<&str> = names.iter().map(|n| hash_part(n)).collect();
        let rooted = claims.claim(&hashes);
        if !rooted.is_empty() {
            live::mark(
                regs,
                keep,
                &mut plan.alive,
                rooted.iter().map(|&k| batch[k]).collect::<Vec<_>>(),
                Why::TempRoot,
            );
        }
        let gone: Vec<usize> = batch.iter().copied().filter(|&i| plan.alive[i].is_none()).collect();
        let paths: Vec<&str> = gone.iter().map(|&i| regs.paths[i].as_str()).collect();
        let result = take_away(disk, Some(db), &paths, log);
        claims.release();
        let removed = result?;
        for (k, &i) in gone.iter().enumerate() {
            if removed[k] {
                let bytes = plan.usage.get(&i).map_or(0, |u| u.bytes);
                f.paths += 1;
                f.bytes += bytes;
                counters.paths_done.fetch_add(1, Ordering::Relaxed);
                counters.bytes.fetch_add(bytes, Ordering::Relaxed);
                log.detail(
                    "deleted",
                    &format!("deleted {}", regs.paths[i]),
                    json!({"path": regs.paths[i], "bytes": bytes}),
                );
            }
        }
    }
    f.limited = next < plan.order.len();
    for (name, u) in std::mem::take(&mut plan.unregistered) {
        if f.bytes >= budget {
            f.limited = true;
            break;
        }
        if stopped() {
            return Err(Stopped.into());
        }
        if !claims.claim(&[hash_part(&name)]).is_empty() {
            claims.release();
            continue;
        }
        // A lock file is taken, and marked stale as Nix marks one it deletes, before it
        // goes: a Nix process that opened it meanwhile sees the mark once it gets the lock,
        // and makes a new one. Held by someone: in use, kept.
        let _held = if name.ends_with(".lock") {
            match sweep::retire_lock_file(disk.store.as_fd(), &name) {
                Some(held) => Some(held),
                None => {
                    claims.release();
                    continue;
                }
            }
        } else {
            None
        };
        let path = format!("/nix/store/{name}");
        let result = take_away(disk, None, &[path.as_str()], log);
        claims.release();
        if result?[0] {
            f.unregistered += 1;
            f.bytes += u.bytes;
            counters.paths_done.fetch_add(1, Ordering::Relaxed);
            counters.bytes.fetch_add(u.bytes, Ordering::Relaxed);
            log.detail(
                "deleted",
                &format!("deleted {path} (not registered)"),
                json!({"path": path, "bytes": u.bytes, "registered": false}),
            );
        }
    }
    Ok(f)
}

/// Unregister `paths` (when `db` is given) in one transaction, then rename each away and
/// remove it. Whether each was removed (`false`: it was gone already).
fn take_away(disk: &Disk, db: Option<&mut TargetDb>, paths: &[&str], _log: &Log) -> Result<Vec<bool>> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    if let Some(db) = db {
        db.invalidate(paths)?;
        failpoint::hit("gc-invalidated");
    }
    let mut renamed = Vec::with_capacity(paths.len());
    for p in paths {
        renamed.push(sweep::rename_away(
            disk.store.as_fd(),
            crate::base::store_path::store_name(p),
        )?);
    }
    failpoint::hit("gc-renamed");
    let mut out = Vec::with_capacity(paths.len());
    for (p, tmp) in paths.iter().zip(renamed) {
        if let Some(tmp) = &tmp {
            crate::base::dirfd::remove_tree_at(disk.store.as_fd(), tmp).with_context(|| {
                format!(
                    "cannot delete {p} (unregistered, and renamed to {}/store/{}: the next run removes it)",
                    disk.path.display(),
                    tmp.to_string_lossy()
                )
            })?;
            failpoint::hit("gc-deleted");
        }
        out.push(tmp.is_some());
    }
    Ok(out)
}

fn mark_links_pending(disk: &Disk) -> Result<()> {
    use nix::fcntl::{openat, OFlag};
    let state = crate::base::layout::state_dir(disk.root.as_fd(), &disk.path)?;
    openat(
        state.as_fd(),
        LINKS_PENDING,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .with_context(|| format!("cannot create {}/.nix-seed/{LINKS_PENDING}", disk.path.display()))?;
    Ok(())
}

/// Remove the `.links` entries no store path uses any more, if this run or a killed one
/// deleted anything since they were last cleaned.
pub(super) fn clean_links(disk: &Disk, log: &Log) -> Result<(u64, u64)> {
    let state = crate::base::layout::state_dir(disk.root.as_fd(), &disk.path)?;
    if lstat_at(state.as_fd(), LINKS_PENDING)?.is_none() {
        return Ok((0, 0));
    }
    failpoint::hit("gc-links");
    let (n, bytes) = sweep::remove_unused_links(disk.store.as_fd())?;
    if n > 0 {
        log.detail(
            "links",
            &format!(
                "removed {} of /nix/store/.links no path uses",
                count(n, "entry", "entries")
            ),
            json!({"links_removed": n, "bytes": bytes}),
        );
    }
    match nix::unistd::unlinkat(state.as_fd(), LINKS_PENDING, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok((n, bytes)),
        Err(e) => Err(e).with_context(|| format!("cannot remove {}/.nix-seed/{LINKS_PENDING}", disk.path.display())),
    }
}

/// The one line a collection ends with (also the termination log's).
pub(super) fn summary(
    plan: &Plan,
    f: &Freed,
    links: (u64, u64),
    roots: &Roots,
    temps: &temproots::TempRoots,
    o: &Options,
    log: &Log,
) {
    let mut kept = [0u64; 4];
    for w in plan.alive.iter().flatten() {
        kept[Why::ALL.iter().position(|x| x == w).unwrap_or(0)] += 1;
    }
    let deleted = f.paths + f.unregistered;
    let bytes = f.bytes + links.1;
    let verb = if o.dry_run { "would delete" } else { "deleted" };
    let freed = if o.dry_run { "would free" } else { "freed" };
    let mut line = format!(
        "{verb} {}, {freed} {}; kept {}: {} rooted, {} temporary roots, {} young, {} recently read; {}",
        count(deleted, "store path", "store paths"),
        HumanBytes(bytes),
        count(
            plan.alive.iter().flatten().count() as u64,
            "registered path",
            "registered paths"
        ),
        kept[0],
        kept[1],
        kept[2],
        kept[3],
        count(
            roots.unresolved.len() as u64,
            "unresolved indirect root",
            "unresolved indirect roots"
        ),
    );
    if plan.unregistered_kept > 0 {
        line.push_str(&format!(
            "; {} kept (in use or young)",
            count(
                plan.unregistered_kept as u64,
                "unregistered entry",
                "unregistered entries"
            )
        ));
    }
    if f.limited {
        line.push_str(&format!(
            "; stopped at --max-freed {}",
            HumanBytes(o.max_freed.unwrap_or(0))
        ));
    }
    log.summary(
        &line,
        json!({
            "event": "gc", "dry_run": o.dry_run, "deleted": deleted, "unregistered_deleted": f.unregistered,
            "bytes_freed": bytes, "links_removed": links.0, "kept_rooted": kept[0], "kept_temp_roots": kept[1],
            "kept_young": kept[2], "kept_recently_read": kept[3], "unregistered_kept": plan.unregistered_kept,
            "unresolved_indirect_roots": roots.unresolved.len(), "live_temproots_files": temps.live_files,
            "stale_temproots_files": temps.stale_files, "max_freed_reached": f.limited,
        }),
    );
    crate::steps::report::termination_log(&format!("nix-seed: {line}"));
}
