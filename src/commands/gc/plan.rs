//! Deciding, under the locks: which registered paths live and why, which die and in what
//! order, which unregistered store entries go; and saying so (a dry run lists it all).

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde_json::json;

use super::{Disk, Options};
use crate::base::dirfd::lstat_at;
use crate::base::progress::{count, Log};
use crate::base::store_path::is_store_path_name;
use crate::engines::gc::sweep::{self, Usage};
use crate::engines::gc::temproots::{self, hash_part};
use crate::engines::gc::{live, Claims, Keep, Roots, Why};
use crate::engines::nixdb::Registrations;

/// What lives and what goes.
pub(super) struct Plan {
    /// Per registered path: why it lives, or `None` (dead).
    pub(super) alive: Vec<Option<Why>>,
    /// The dead registered paths, referrers first.
    pub(super) order: Vec<usize>,
    /// Dead paths on a cycle of references: kept.
    pub(super) cyclic: Vec<usize>,
    pub(super) usage: HashMap<usize, Usage>,
    /// Unregistered store entries to delete (in-progress builds and substitutions are
    /// temporary roots or young), with their usage.
    pub(super) unregistered: Vec<(String, Usage)>,
    /// Unregistered entries kept: a temporary root, a held lock, or young.
    pub(super) unregistered_kept: usize,
}

/// What `decide` has found so far, for one registered path.
fn within(t: SystemTime, now: SystemTime, age: Duration) -> bool {
    now.duration_since(t).map_or(true, |d| d < age)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn decide(
    disk: &Disk,
    entries: &[crate::base::dirfd::Entry],
    regs: &Registrations,
    roots: &Roots,
    claims: &Claims,
    o: &Options,
    keep: Keep,
    now: SystemTime,
    log: &Log,
) -> Result<Plan> {
    let index = regs.index();
    let n = regs.paths.len();
    let mut alive = vec![None; n];
    let rooted = roots
        .names
        .keys()
        .filter_map(|name| index.get(format!("/nix/store/{name}").as_str()).copied());
    live::mark(regs, keep, &mut alive, rooted, Why::Rooted);
    let temp = (0..n).filter(|&i| claims.is_root(hash_part(crate::base::store_path::store_name(&regs.paths[i]))));
    live::mark(regs, keep, &mut alive, temp.collect::<Vec<_>>(), Why::TempRoot);
    let min_age = o.min_age;
    let young = (0..n).filter(|&i| {
        within(
            SystemTime::UNIX_EPOCH + Duration::from_secs(regs.registered[i].max(0) as u64),
            now,
            min_age,
        )
    });
    live::mark(regs, keep, &mut alive, young.collect::<Vec<_>>(), Why::Young);

    // Access times, only where they mean something and only of what would die.
    let reads = !min_age.is_zero() && !noatime(disk, log);
    let mut usage = HashMap::new();
    let mut read = Vec::new();
    for i in (0..n).filter(|&i| alive[i].is_none()) {
        let name = crate::base::store_path::store_name(&regs.paths[i]);
        let u = sweep::usage(disk.store.as_fd(), std::ffi::OsStr::new(name), reads)
            .with_context(|| format!("cannot read {}", regs.paths[i]))?;
        if u.last_read.is_some_and(|t| within(t, now, min_age)) {
            read.push(i);
        }
        usage.insert(i, u);
    }
    live::mark(regs, keep, &mut alive, read, Why::RecentlyRead);
    usage.retain(|i, _| alive[*i].is_none());
    let (order, cyclic) = live::deletion_order(regs, &alive);

    let mut unregistered = Vec::new();
    let mut unregistered_kept = 0;
    for e in entries {
        let Some(name) = e.name.to_str() else { continue };
        if !is_store_path_name(name.as_bytes()) || index.contains_key(format!("/nix/store/{name}").as_str()) {
            continue;
        }
        let Some(st) = lstat_at(disk.store.as_fd(), &e.name)? else {
            continue;
        };
        let keep = roots.names.contains_key(name)
            || claims.is_root(hash_part(name))
            || sweep::lock_held(disk.store.as_fd(), name)
            || sweep::lock_held(disk.store.as_fd(), &format!("{name}.lock"))
            || within(sweep::ctime(&st), now, min_age);
        if keep {
            unregistered_kept += 1;
            continue;
        }
        let u = sweep::usage(disk.store.as_fd(), &e.name, false)?;
        unregistered.push((name.to_string(), u));
    }
    unregistered.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(Plan {
        alive,
        order,
        cyclic,
        usage,
        unregistered,
        unregistered_kept,
    })
}

/// Whether the store is mounted `noatime` (access times say nothing there); warned once.
fn noatime(disk: &Disk, log: &Log) -> bool {
    let Ok(vfs) = nix::sys::statvfs::fstatvfs(disk.store.as_fd()) else {
        return false;
    };
    let no = vfs.flags().contains(nix::sys::statvfs::FsFlags::ST_NOATIME);
    if no {
        log.warn(&format!(
            "{}/store is mounted noatime: a path read recently but registered before --min-age is not \
             recognised as in use (mount it relatime to protect such paths)",
            disk.path.display()
        ));
    }
    no
}

impl Plan {
    /// The dry run's listing: what would go, as the real run would take it.
    pub(super) fn would_free(&self, regs: &Registrations, log: &Log) -> super::delete::Freed {
        let mut f = super::delete::Freed::default();
        for &i in &self.order {
            let u = self.usage.get(&i).copied().unwrap_or_default();
            f.paths += 1;
            f.bytes += u.bytes;
            log.out(
                "would-delete",
                &format!("would delete {}", regs.paths[i]),
                json!({"path": regs.paths[i], "bytes": u.bytes}),
            );
        }
        for (name, u) in &self.unregistered {
            f.unregistered += 1;
            f.bytes += u.bytes;
            log.out(
                "would-delete",
                &format!("would delete /nix/store/{name} (not registered)"),
                json!({"path": format!("/nix/store/{name}"), "bytes": u.bytes, "registered": false}),
            );
        }
        f
    }
}

/// In a dry run (or with -v), each path kept that no root reaches, and why; and every
/// indirect root whose target is outside the disk.
pub(super) fn tell_kept(
    regs: &Registrations,
    plan: &Plan,
    roots: &Roots,
    temps: &temproots::TempRoots,
    o: &Options,
    log: &Log,
) {
    let show = |event: &str, text: String, fields: serde_json::Value| {
        if o.dry_run {
            log.out(event, &text, fields);
        } else {
            log.detail(event, &text, fields);
        }
    };
    for (link, target) in &roots.unresolved {
        show(
            "unresolved-root",
            format!(
                "kept {link}: an indirect root to {target}, outside the disk (a pod's own); what it protects is \
                 protected by --min-age"
            ),
            json!({"root": link, "target": target}),
        );
    }
    for (i, why) in plan.alive.iter().enumerate() {
        let Some(why) = why.filter(|w| *w != Why::Rooted) else {
            continue;
        };
        let p = &regs.paths[i];
        let detail = match why {
            Why::Young => format!(
                "young (registered {})",
                humantime::format_rfc3339_seconds(
                    SystemTime::UNIX_EPOCH + Duration::from_secs(regs.registered[i].max(0) as u64)
                )
            ),
            w => w.words().to_string(),
        };
        show(
            "kept",
            format!("kept {p}: {detail}"),
            json!({"path": p, "why": why.words()}),
        );
    }
    for &i in &plan.cyclic {
        log.warn(&format!(
            "kept {}: on a cycle of references (the database is inconsistent)",
            regs.paths[i]
        ));
    }
    if temps.stale_files > 0 && o.dry_run {
        show(
            "stale-temproots",
            format!(
                "{} of dead Nix processes would be removed",
                count(
                    temps.stale_files as u64,
                    "temporary-roots file",
                    "temporary-roots files"
                )
            ),
            json!({"stale_temproots": temps.stale_files}),
        );
    }
}
