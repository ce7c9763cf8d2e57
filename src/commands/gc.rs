//! `nix-seed gc`: collect the garbage of a store many pods share, safely beside them (see
//! [`crate::engines::gc`] for what lives and why). The steps, in Nix's order: take the
//! locks (the seed lock, `gc.lock` exclusive, `big-lock` shared) and serve Nix's gc
//! socket; finish what a killed collection left; find the roots and the live temporary
//! roots; read the registrations; decide what lives (roots, temporary roots, young,
//! recently read, and their closures); delete the rest referrers first, each batch
//! unregistered in one transaction before its paths are renamed away and removed; remove
//! the `.links` entries no path uses; say what was freed and what was kept, and why.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use indicatif::HumanBytes;
use serde_json::json;

use crate::base::dirfd::{list, lstat_at, open_dir_if_exists, open_root};
use crate::base::error::{Invalid, Stopped};
use crate::base::failpoint;
use crate::base::progress::{count, Log};
use crate::base::store_path::is_store_path_name;
use crate::engines::gc::sweep::{self, Usage};
use crate::engines::gc::temproots::hash_part;
use crate::engines::gc::{live, roots, temproots, Claims, Keep, Roots, Server, Why};
use crate::engines::nixdb::{self, Registrations, TargetDb};
use crate::engines::nixlocks::NixLocks;

/// What `gc` is asked to do, resolved once from the command line.
#[derive(Debug, Clone)]
pub struct Options {
    pub target: PathBuf,
    pub min_age: Duration,
    pub max_freed: Option<u64>,
    /// `--nix-conf`: read once, at the start, for keep-derivations and keep-outputs.
    pub nix_conf: Option<PathBuf>,
    pub dry_run: bool,
    pub lock_timeout: Duration,
    pub lock_stale: Duration,
    pub output: crate::base::progress::Output,
}

/// Paths unregistered in one transaction: few enough that a client sending one of them
/// waits little, enough that a network disk's transaction cost is shared.
const BATCH: usize = 256;

/// In `.nix-seed/`: present from before the first deletion until `.links` has been
/// cleaned, so that a run with nothing to delete skips `.links` unless a killed run left
/// its cleaning undone.
const LINKS_PENDING: &str = "gc-links-pending";

/// `nix-seed gc`; a database lock wait that ran out is a lock timeout (exit 3).
pub fn run(o: &Options, cx: &super::Ctx) -> Result<super::Done> {
    collect(o, cx.log, cx.stop).map(|()| super::Done::Success).map_err(|e| {
        nixdb::busy_as_timeout(
            e,
            &o.target,
            o.lock_timeout,
            "nothing more was deleted; what was deleted is consistent",
        )
    })
}

/// The disk: its root, store, `var/nix` and database directory, opened without following
/// symlinks below the root.
struct Disk {
    path: PathBuf,
    root: OwnedFd,
    store: OwnedFd,
    var_nix: OwnedFd,
    db_dir: OwnedFd,
}

fn refuse(msg: String) -> anyhow::Error {
    Invalid(format!("{msg}; nothing was deleted")).into()
}

/// Open the disk, refusing (exit 2) what is not a Nix store with a database: without
/// one nothing is registered and everything would look like garbage.
fn open(o: &Options) -> Result<Disk> {
    let root = open_root(&o.target).map_err(|e| {
        refuse(format!(
            "--target {} cannot be opened ({e}): pass the directory pods mount at /nix",
            o.target.display()
        ))
    })?;
    let path = o.target.canonicalize().unwrap_or_else(|_| o.target.clone());
    let sub = |dir: &OwnedFd, name: &str, shown: &str| -> Result<OwnedFd> {
        match open_dir_if_exists(dir.as_fd(), name) {
            Ok(Some(d)) => Ok(d),
            Ok(None) => Err(refuse(format!(
                "{}/{shown} does not exist: {} is not a Nix store with a database (pass the directory pods \
                 mount at /nix)",
                path.display(),
                path.display()
            ))),
            Err(e) => Err(refuse(format!(
                "cannot open {}/{shown} ({e}): it must be a directory, not a symlink",
                path.display()
            ))),
        }
    };
    let store = sub(&root, "store", "store")?;
    let var = sub(&root, "var", "var")?;
    let var_nix = sub(&var, "nix", "var/nix")?;
    let db_dir = sub(&var_nix, "db", "var/nix/db")?;
    if !crate::base::dirfd::has_file(db_dir.as_fd(), std::ffi::OsStr::new(nixdb::DB_FILE)) {
        return Err(refuse(format!(
            "{}/var/nix/db/{} is missing: nothing is registered, so every path would look like garbage; \
             pass the directory pods mount at /nix",
            path.display(),
            nixdb::DB_FILE
        )));
    }
    if !o.dry_run {
        let vfs = nix::sys::statvfs::fstatvfs(root.as_fd())?;
        if vfs.flags().contains(nix::sys::statvfs::FsFlags::ST_RDONLY) {
            return Err(refuse(format!(
                "{} is on a read-only filesystem: mount the volume read-write (or pass --dry-run)",
                path.display()
            )));
        }
    }
    Ok(Disk {
        path,
        root,
        store,
        var_nix,
        db_dir,
    })
}

/// `keep-derivations` and `keep-outputs` from the pods' nix.conf (Nix's defaults without one).
fn keep(o: &Options) -> Result<Keep> {
    let conf = match crate::base::nixconf::NixConf::locate(o.nix_conf.as_deref()) {
        Some(p) if o.nix_conf.is_some() && !p.exists() => {
            return Err(refuse(format!(
                "--nix-conf {} does not exist: pass the nix.conf the pods use",
                p.display()
            )))
        }
        Some(p) => crate::base::nixconf::NixConf::read(&p)?,
        None => crate::base::nixconf::NixConf::default(),
    };
    Ok(Keep {
        derivations: conf.keep_derivations(),
        outputs: conf.keep_outputs(),
    })
}

/// The locks a collection holds, and the gc socket it serves meanwhile; released in
/// reverse order (the socket first, gc.lock after it).
struct Locked {
    _seed_lock: Option<crate::engines::lock::Held>,
    _nix_locks: NixLocks,
    claims: Arc<Claims>,
    _server: Option<Server>,
    /// Set when another run took the seed lock over (this one stalled): stop.
    lost: Option<Arc<AtomicBool>>,
}

/// One collector, and no seed or prune, at a time: the seed lock first (prune takes it
/// alone), then Nix's own locks; then Nix's gc socket is served from right after gc.lock is
/// taken until it is released, since a Nix process that cannot take gc.lock shared must
/// find it. A dry run takes gc.lock shared only.
fn lock(o: &Options, disk: &Disk, log: &Arc<Log>, stop: &Arc<AtomicBool>) -> Result<Locked> {
    let seed_lock = if o.dry_run {
        None
    } else {
        let cfg = crate::engines::lock::Config {
            timeout: o.lock_timeout,
            stale: o.lock_stale,
        };
        Some(crate::engines::lock::acquire(
            disk.root.as_fd(),
            &disk.path,
            &cfg,
            log,
            stop,
        )?)
    };
    let shown = disk.path.join("var/nix");
    let nix_locks = NixLocks::collector(disk.var_nix.as_fd(), &shown, o.dry_run, log, stop, o.lock_timeout)?;
    let claims = Claims::new(Default::default());
    let server = if o.dry_run {
        None
    } else {
        Some(Server::start(
            disk.var_nix.as_fd(),
            &shown,
            claims.clone(),
            log.clone(),
        )?)
    };
    failpoint::hit("gc-locked");
    Ok(Locked {
        lost: seed_lock.as_ref().map(|h| h.lost.clone()),
        _seed_lock: seed_lock,
        _nix_locks: nix_locks,
        claims,
        _server: server,
    })
}

fn collect(o: &Options, log: &Arc<Log>, stop: &Arc<AtomicBool>) -> Result<()> {
    let keep = keep(o)?;
    let disk = open(o)?;
    let locked = lock(o, &disk, log, stop)?;
    let claims = &locked.claims;
    let entries = list(disk.store.as_fd()).with_context(|| format!("cannot list {}/store", disk.path.display()))?;
    if !o.dry_run {
        finish_killed_run(&disk, &entries, log);
    }
    let roots = roots::find(disk.root.as_fd(), &disk.path)?;
    let temps = temproots::read(disk.var_nix.as_fd(), &disk.path.join("var/nix"), o.dry_run)?;
    for h in &temps.hashes {
        claims.add(h);
    }
    failpoint::hit("gc-roots-found");

    let db_path = disk.path.join("var/nix/db");
    nixdb::set_busy_context(&db_path, o.lock_timeout, log.clone());
    let state = crate::base::layout::state_dir(disk.root.as_fd(), &disk.path)?;
    let _window = match o.dry_run {
        true => None,
        false => Some(nixdb::DbWindow::enter(state, Some(disk.db_dir.as_fd()), &db_path, log)?),
    };
    let mut db = nixdb::open_target(disk.db_dir.as_fd(), &db_path, o.dry_run)?;
    let regs = db.registrations()?;
    let mut plan = decide(&disk, &entries, &regs, &roots, claims, o, keep, SystemTime::now(), log)?;
    tell_kept(&regs, &plan, &roots, &temps, o, log);

    let (freed, links) = if o.dry_run {
        (plan.would_free(&regs, log), (0, 0))
    } else {
        let stopped =
            || stop.load(Ordering::Relaxed) || locked.lost.as_ref().is_some_and(|l| l.load(Ordering::Relaxed));
        let counters = Arc::new(crate::base::progress::Counters::default());
        let total = plan.order.len() + plan.unregistered.len();
        counters.paths_total.store(total as u64, Ordering::Relaxed);
        let progress = crate::base::progress::start(log.clone(), counters.clone(), o.output.progress);
        let freed = delete(
            &disk, &mut db, &regs, &mut plan, claims, o, keep, log, &counters, &stopped,
        );
        progress.finish();
        (freed?, clean_links(&disk, log)?)
    };
    summary(&plan, &freed, links, &roots, &temps, o, log);
    Ok(())
}

/// What a killed collection left: its renamed paths (nix-seed's temporary names, which
/// any nix-seed run under the locks may remove: a seed holds `gc.lock` shared while it
/// has any, so none is being written now). `entries`: the store's listing.
fn finish_killed_run(disk: &Disk, entries: &[crate::base::dirfd::Entry], log: &Log) {
    let shown = disk.path.join("store");
    let (removed, problems) = crate::base::dirfd::remove_listed_leftovers(disk.store.as_fd(), &shown, entries);
    for p in problems {
        log.warn(&p);
    }
    if removed > 0 {
        log.info(&format!(
            "removed {} an earlier run left in {}",
            count(removed as u64, "temporary entry", "temporary entries"),
            shown.display()
        ));
    }
}

/// What lives and what goes.
struct Plan {
    /// Per registered path: why it lives, or `None` (dead).
    alive: Vec<Option<Why>>,
    /// The dead registered paths, referrers first.
    order: Vec<usize>,
    /// Dead paths on a cycle of references: kept.
    cyclic: Vec<usize>,
    usage: HashMap<usize, Usage>,
    /// Unregistered store entries to delete (in-progress builds and substitutions are
    /// temporary roots or young), with their usage.
    unregistered: Vec<(String, Usage)>,
    /// Unregistered entries kept: a temporary root, a held lock, or young.
    unregistered_kept: usize,
}

/// What `decide` has found so far, for one registered path.
fn within(t: SystemTime, now: SystemTime, age: Duration) -> bool {
    now.duration_since(t).map_or(true, |d| d < age)
}

#[allow(clippy::too_many_arguments)]
fn decide(
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

/// What was (or would be) freed.
#[derive(Debug, Default)]
struct Freed {
    paths: u64,
    unregistered: u64,
    bytes: u64,
    /// Stopped at --max-freed.
    limited: bool,
}

impl Plan {
    /// The dry run's listing: what would go, as the real run would take it.
    fn would_free(&self, regs: &Registrations, log: &Log) -> Freed {
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
fn tell_kept(regs: &Registrations, plan: &Plan, roots: &Roots, temps: &temproots::TempRoots, o: &Options, log: &Log) {
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

/// Delete the plan's dead paths, referrers first, in batches: each batch claimed (a path a
/// client made a temporary root meanwhile lives, with its closure), unregistered in one
/// transaction, renamed away, then removed. Unregistered entries last, the same way.
#[allow(clippy::too_many_arguments)]
fn delete(
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
fn clean_links(disk: &Disk, log: &Log) -> Result<(u64, u64)> {
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
fn summary(
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
