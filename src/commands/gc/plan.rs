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
    /// The paths kept because they were read within --min-age, and when.
    pub(super) read_at: HashMap<usize, SystemTime>,
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

/// What was (or would be) freed.
#[derive(Debug, Default)]
pub(super) struct Freed {
    pub(super) paths: u64,
    pub(super) unregistered: u64,
    pub(super) bytes: u64,
    /// Stopped at --max-freed.
    pub(super) limited: bool,
}

/// The plan: what lives, why, and what goes (see [`crate::engines::gc`]).
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
    let name = |i: usize| crate::base::store_path::store_name(&regs.paths[i]);
    let mut alive = vec![None; n];
    let rooted = roots
        .names
        .keys()
        .filter_map(|name| index.get(format!("/nix/store/{name}").as_str()).copied());
    live::mark(regs, keep, &mut alive, rooted, Why::Rooted);
    let temp: Vec<usize> = (0..n).filter(|&i| claims.is_root(hash_part(name(i)))).collect();
    live::mark(regs, keep, &mut alive, temp, Why::TempRoot);
    let registered = |i: usize| SystemTime::UNIX_EPOCH + Duration::from_secs(regs.registered[i].max(0) as u64);
    let young: Vec<usize> = (0..n).filter(|&i| within(registered(i), now, o.min_age)).collect();
    live::mark(regs, keep, &mut alive, young, Why::Young);

    // Access times, only where they can mean something, and only of what would die.
    let reads = !o.min_age.is_zero() && atimes_kept(disk, log);
    let mut usage = HashMap::new();
    let mut read_at = HashMap::new();
    for i in (0..n).filter(|&i| alive[i].is_none()) {
        let u = sweep::usage(disk.store.as_fd(), std::ffi::OsStr::new(name(i)), reads)
            .with_context(|| format!("cannot read {}", regs.paths[i]))?;
        match u.last_read {
            Some(t) if within(t, now, o.min_age) => {
                read_at.insert(i, t);
            }
            _ => {
                usage.insert(i, u);
            }
        }
    }
    live::mark(
        regs,
        keep,
        &mut alive,
        read_at.keys().copied().collect::<Vec<_>>(),
        Why::RecentlyRead,
    );
    usage.retain(|i, _| alive[*i].is_none());
    let (order, cyclic) = live::deletion_order(regs, &alive);
    let (unregistered, unregistered_kept) = unregistered(disk, entries, &index, roots, claims, o, now)?;
    Ok(Plan {
        alive,
        order,
        cyclic,
        usage,
        read_at,
        unregistered,
        unregistered_kept,
    })
}

/// The store's entries named like store paths that are not registered: in-progress builds
/// and substitutions (kept: a temporary root, a held lock, or young), leftovers of killed
/// ones, and stale lock files (deleted). Returns those to delete, and how many are kept.
fn unregistered(
    disk: &Disk,
    entries: &[crate::base::dirfd::Entry],
    index: &HashMap<&str, usize>,
    roots: &Roots,
    claims: &Claims,
    o: &Options,
    now: SystemTime,
) -> Result<(Vec<(String, Usage)>, usize)> {
    let mut out = Vec::new();
    let mut kept = 0;
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
            || within(sweep::ctime(&st), now, o.min_age);
        if keep {
            kept += 1;
            continue;
        }
        out.push((name.to_string(), sweep::usage(disk.store.as_fd(), &e.name, false)?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((out, kept))
}

/// Whether access times can say a path was read: not on a `noatime` mount (warned). On a
/// network filesystem they are what the server keeps: GlusterFS's defaults
/// (`ctime.noatime`) never show a read to clients (measured: docs/network-filesystems.md).
fn atimes_kept(disk: &Disk, log: &Log) -> bool {
    let Ok(vfs) = nix::sys::statvfs::fstatvfs(disk.store.as_fd()) else {
        return true;
    };
    if vfs.flags().contains(nix::sys::statvfs::FsFlags::ST_NOATIME) {
        log.warn(&format!(
            "{}/store is mounted noatime: a path read recently but registered before --min-age is not \
             recognised as in use (mount it relatime to protect such paths)",
            disk.path.display()
        ));
        return false;
    }
    if crate::base::dirfd::is_network_fs(disk.store.as_fd()) {
        log.info(&format!(
            "{}/store is on a network filesystem: a read counts as a use only if its server keeps access \
             times (GlusterFS's defaults do not); --min-age since registration holds regardless",
            disk.path.display()
        ));
    }
    true
}

impl Plan {
    /// The dry run's listing: what would go, as the real run would take it.
    pub(super) fn would_free(&self, regs: &Registrations, log: &Log) -> Freed {
        let mut f = Freed::default();
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
            Why::RecentlyRead => match plan.read_at.get(&i) {
                Some(t) => format!("recently read ({})", humantime::format_rfc3339_seconds(*t)),
                None => "reached from a recently read path".to_string(),
            },
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
