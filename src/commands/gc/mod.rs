//! `nix-seed gc`: collect the garbage of a store many pods share, safely beside them (see
//! [`crate::engines::gc`] for what lives and why). The steps, in Nix's order: take the
//! locks (the seed lock, `gc.lock` exclusive, `big-lock` shared) and serve Nix's gc
//! socket; finish what a killed collection left; find the roots and the live temporary
//! roots; read the registrations; decide what lives (roots, temporary roots, young,
//! recently read, and their closures); delete the rest referrers first, each batch
//! unregistered in one transaction before its paths are renamed away and removed; remove
//! the `.links` entries no path uses; say what was freed and what was kept, and why.

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};

use crate::base::dirfd::{list, open_dir_if_exists, open_root};
use crate::base::error::Invalid;
use crate::base::failpoint;
use crate::base::progress::{count, Log};
use crate::engines::gc::{roots, temproots, Claims, Keep, Server};
use crate::engines::nixdb;
use crate::engines::nixlocks::NixLocks;

mod delete;
mod plan;

use delete::{clean_links, delete, summary};
use plan::{decide, tell_kept};

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
    // Where the roots are read: directories or absent, never followed through a symlink.
    for d in ["gcroots", "profiles", "temproots", "gc-socket"] {
        if let Some(st) = crate::base::dirfd::lstat_at(var_nix.as_fd(), d)? {
            if crate::base::dirfd::file_type(&st) != nix::sys::stat::SFlag::S_IFDIR {
                return Err(refuse(format!(
                    "{}/var/nix/{d} is a {}, not a directory: nix-seed never follows symlinks in the target; \
                     make it the directory Nix makes",
                    path.display(),
                    crate::base::dirfd::kind_name(&st)
                )));
            }
        }
    }
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
                "{} is on a read-only filesystem: mount the volume read-write",
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

/// `keep-derivations` and `keep-outputs` from the pods' nix.conf (Nix's defaults without
/// one); a warning if it lets the pods' Nix collect garbage on its own.
fn keep(o: &Options, log: &Log) -> Result<Keep> {
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
    if let Some(why) = conf.auto_gc() {
        log.warn(&format!(
            "{why}; on a shared store Nix's collector deletes what other pods use: set min-free = 0 in every \
             pod's nix.conf and collect with nix-seed gc only"
        ));
    }
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
    let keep = keep(o, log)?;
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
    // The database is written inside the `.nix-seed/db-lock` window (a kill that leaves
    // SQLite's lock behind is recovered by the next seed); a dry run only reads.
    let _window = match o.dry_run {
        true => None,
        false => {
            let state = crate::base::layout::state_dir(disk.root.as_fd(), &disk.path)?;
            Some(nixdb::DbWindow::enter(state, Some(disk.db_dir.as_fd()), &db_path, log)?)
        }
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
