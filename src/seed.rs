//! `nix-seed seed` and `nix-seed status`: the pipeline in the order Nix's own
//! `local-store.cc` uses for adding paths: validate, decide, lock, write (atomically,
//! with canonical metadata), then record what was written last.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::stat::{fstat, mkdirat, Mode};
use serde_json::json;

use crate::cli::SeedArgs;
use crate::copy::{self, Counters, Engine, Stopped};
use crate::dirfd::{lstat_at, open_dir};
use crate::lock;
use crate::nixlocks::NixLocks;
use crate::plan::{self, Plan, IMAGES_DIR};
use crate::preflight::{self, Checked};
use crate::progress::{self, Log, PathEvents};
use crate::report::Report;
use crate::var;
use crate::{gcroots, nar, nixdb, verify};

pub fn seed(args: &SeedArgs, log: &Arc<Log>, interrupted: &Arc<AtomicBool>) -> Result<Report> {
    let t0 = Instant::now();
    let c = preflight::check(
        &args.paths.source,
        &args.paths.target,
        !args.allow_non_mountpoint,
        !args.dry_run,
    )?;
    let plan = Plan::compute(&c)?;
    let mut report = Report::new(&c, &plan);

    if args.dry_run {
        for n in &plan.missing {
            log.event(
                progress::Level::Info,
                "would-copy",
                &format!("would copy {}", n.to_string_lossy()),
                json!({"path": n.to_string_lossy()}),
            );
        }
        if !plan.target_has_var && plan.source_has_var {
            log.info("would create var/ from the image's var/ (runtime files left out)");
        } else if !plan.image_marked {
            log.info("would add the image's missing var/ entries");
        }
        let size = plan::measure(&c, &plan.missing, 4096, args.jobs as usize)?;
        log.info(&format!(
            "would copy {} store paths: {} files, {}",
            plan.missing.len(),
            size.files,
            indicatif::HumanBytes(size.bytes)
        ));
        report.dry_run = true;
        report.seconds = t0.elapsed().as_secs_f64();
        return Ok(report);
    }
    if plan.is_complete() {
        // The fast path: no lock, nothing written.
        report.seconds = t0.elapsed().as_secs_f64();
        return Ok(report);
    }

    let held = lock::acquire(
        c.target.as_fd(),
        &c.target_path,
        &lock::Config {
            timeout: args.lock_timeout,
            stale: args.lock_stale,
        },
        log,
        interrupted,
    )?;
    // Another seeder may have done the work while we waited.
    let plan = Plan::compute(&c)?;
    report = Report::new(&c, &plan);
    report.locked = true;
    if plan.is_complete() {
        report.seconds = t0.elapsed().as_secs_f64();
        return Ok(report);
    }

    let stop_flags = vec![interrupted.clone(), held.lost.clone()];
    let counters = Arc::new(Counters::default());
    let engine = Engine::new(counters.clone(), stop_flags.clone());
    let events = PathEvents(log);

    let source_db = nixdb::read_source(&c.source_path.join("var").join(nixdb::DB_DIR))?;
    if source_db.is_none() {
        log.warn(&format!(
            "the image has no Nix database ({}/var/nix/db/db.sqlite): store paths are copied but not registered",
            c.source_path.display()
        ));
    }
    // Enough space? Measured on the source, refused before anything is copied.
    let vfs = nix::sys::statvfs::fstatvfs(c.target.as_fd())
        .with_context(|| format!("cannot statfs {}", c.target_path.display()))?;
    let size = plan::measure(&c, &plan.missing, vfs.fragment_size() as u64, args.jobs as usize)?;
    let free = vfs.blocks_available() as u64 * vfs.fragment_size() as u64;
    counters
        .bytes_total
        .store(size.bytes, std::sync::atomic::Ordering::Relaxed);
    if size.needed > free {
        return Err(anyhow::anyhow!(no_space(&c, &plan, size, free)));
    }

    // Nix's locks, shared: no garbage collection may run between copy and register.
    let nix_locks = NixLocks::acquire(c.target.as_fd(), &c.target_path, log, interrupted)?;
    crate::failpoint::hit("nix-locks");

    // The target's database, opened (and its schema checked) before anything is written.
    let db_dir = match open_var(&c)? {
        Some(v) => nixdb::open_db_dir(v.as_fd(), &c.target_path.join("var"))?,
        None => None,
    };
    let db_path = c.target_path.join("var").join(nixdb::DB_DIR);
    nixdb::set_busy_context(&db_path, args.lock_timeout, log.clone());
    // From here until the database is closed, a kill could leave its dotfile lock behind.
    let db_window = nixdb::DbWindow::enter(
        lock::state_dir(c.target.as_fd(), &c.target_path)?,
        db_dir.as_ref().map(|d| d.as_fd()),
        &db_path,
        log,
    )?;
    let mut target_db = match &db_dir {
        Some(d) => open_existing_db(&c, d.as_fd())?,
        None => None,
    };
    if let Some(db) = &target_db {
        if db.wal && nixdb::is_network_fs(c.target.as_fd()) {
            log.warn(&format!(
                "{} is in WAL mode on a network filesystem: SQLite's WAL does not work across hosts; \
                 set use-sqlite-wal = false in every pod's nix.conf",
                db.path.display()
            ));
        }
    }

    let store = ensure_target_store(&c)?;
    let store_path = c.target_path.join("store");
    let mut removed = 0;
    for (fd, path) in [(store.as_fd(), &store_path), (c.target.as_fd(), &c.target_path)] {
        let (n, problems) =
            crate::dirfd::remove_leftovers(fd, path).with_context(|| format!("cannot list {}", path.display()))?;
        removed += n;
        for p in problems {
            log.warn(&p);
        }
    }
    if removed > 0 {
        log.info(&format!(
            "removed {removed} temporary entries left by an interrupted earlier run"
        ));
    }

    if let Some((link, why)) = copy::symlinks_read_back(store.as_fd())
        .with_context(|| format!("cannot probe symlinks in {}", store_path.display()))?
    {
        return Err(crate::preflight::Invalid(format!(
            "{} cannot hold a Nix store: a symlink to {link} created there {why}; on sshfs mount with \
             -o no_contain_symlinks, elsewhere use a filesystem that keeps symlink targets as written",
            store_path.display()
        ))
        .into());
    }
    if !engine.probe_symlink_metadata(store.as_fd())? {
        log.warn(&format!(
            "{} applies a symlink's owner and times to the link's target (sshfs does): symlinks keep \
             the owner and times the target gives them; everything else is preserved",
            c.target_path.display()
        ));
    }

    // Only a warning hangs on this probe, so a probe that fails is not an error.
    if let Ok(Some(false)) = copy::hardlinks_visible(store.as_fd()) {
        log.warn(&format!(
            "{} reports hardlinked files as separate files (link count 1, as sshfs does): hardlinks \
             are made, but clients of this filesystem cannot see them",
            c.target_path.display()
        ));
    }

    let bar = progress::start(log.clone(), counters.clone(), args.output.progress);
    let copied = engine.copy_store_paths(
        (&c.source_store_path, c.source_store.as_fd()),
        (&store_path, store.as_fd()),
        &plan.missing,
        args.jobs as usize,
        &events,
    );
    bar.finish();
    report.take_counters(&counters);
    let copied: HashSet<OsString> = match copied {
        Ok(v) => v.into_iter().collect(),
        Err(e) if is_enospc(&e) => {
            let free =
                nix::sys::statvfs::fstatvfs(store.as_fd()).map_or(0, |v| v.blocks_available() * v.fragment_size());
            return Err(anyhow::anyhow!("{} ({e:#})", no_space(&c, &plan, size, free)));
        }
        // A holder that was frozen past --lock-stale and taken over can hit errors (ESTALE,
        // ENOENT: the new holder claimed its temporaries) before its heartbeat notices:
        // say what happened, not only the symptom.
        // (An ESTALE/ENOENT is checked again for up to 2 s: a network filesystem's client
        // that was frozen can show the old lock file from its caches for a moment.)
        Err(e)
            if !held.still_ours()
                || (copy::has_errno(&e, &[libc::ESTALE, libc::ENOENT])
                    && !held.still_ours_within(std::time::Duration::from_secs(2))) =>
        {
            return Err(e.context(format!(
                "lost lock {}: another seeder took it over (this one was stalled past --lock-stale); stopped",
                held.path.display()
            )))
        }
        Err(e) => return Err(e),
    };
    crate::failpoint::hit("copied");

    if args.verify {
        match &source_db {
            None => log.warn("--verify: the image has no Nix database to verify against"),
            Some(db) => {
                let by_name = db.by_name();
                let items: Vec<verify::Expect> = copied
                    .iter()
                    .filter_map(|n| by_name.get(nixdb::utf8(n)?))
                    .map(|p| verify::Expect {
                        path: p.path.clone(),
                        hash: p.hash.clone(),
                        nar_size: p.nar_size,
                    })
                    .collect();
                let problems = verify::check(store.as_fd(), &items, args.jobs as usize);
                for p in &problems {
                    log.error(p);
                }
                if !problems.is_empty() {
                    anyhow::bail!(
                        "--verify: {} problems in the {} store paths copied to {}; nothing was registered",
                        problems.len(),
                        items.len(),
                        store_path.display()
                    );
                }
                report.verified = items.len();
            }
        }
    }

    // Paths of the image present in the target, unregistered, and not copied by this run
    // (an interrupted run, or a plain `cp`): registered only if their content is what the
    // image registered; otherwise replaced by a fresh copy first.
    let present: HashSet<OsString> = crate::dirfd::list(store.as_fd())
        .with_context(|| format!("cannot list {}", store_path.display()))?
        .into_iter()
        .map(|e| e.name)
        .collect();
    if let Some(src_db) = &source_db {
        let registered = match &target_db {
            Some(db) => db.registered()?,
            None => HashSet::new(),
        };
        for p in &src_db.paths {
            let name = OsStr::new(p.name());
            if !present.contains(name) || copied.contains(name) || registered.contains(p.name()) {
                continue;
            }
            check_or_replace(&engine, &c, store.as_fd(), p, log, &mut report)?;
        }
    }

    // var/ after the store paths, so profiles and roots never point at missing paths; a
    // database is created here (a copy of the image's) if the target has none.
    let var_engine = Engine::new(Arc::new(Counters::default()), stop_flags);
    if !engine.symlink_metadata() {
        let _ = var_engine.probe_symlink_metadata(store.as_fd());
    }
    let v = var::seed(&c, &var_engine, log, source_db.is_some())?;
    if var_engine.ownership.take_denied_notice() && engine.ownership.preserved() {
        log.warn(&format!(
            "cannot set file ownership in {}/var (chown refused)",
            c.target_path.display()
        ));
    }

    // The database may have appeared since it was looked for (var/ was briefly missing, or
    // a pod's Nix created it): open it now, or what was copied would stay unregistered.
    if target_db.is_none() && !v.db_created && source_db.is_some() {
        let var = open_var(&c)?.with_context(|| format!("{}/var vanished", c.target_path.display()))?;
        if let Some(d) = nixdb::open_db_dir(var.as_fd(), &c.target_path.join("var"))? {
            target_db = open_existing_db(&c, d.as_fd())?;
        }
    }

    // Register last, in one transaction.
    let lost = || {
        held.lost.load(std::sync::atomic::Ordering::Relaxed) || interrupted.load(std::sync::atomic::Ordering::Relaxed)
    };
    if let (Some(src_db), Some(db)) = (&source_db, target_db.as_mut()) {
        let names: HashSet<&str> = present.iter().filter_map(|n| nixdb::utf8(n)).collect();
        report.registered = db.register(src_db, &names, &lost)?;
    } else if v.db_created {
        report.registered = source_db.as_ref().map_or(0, |d| d.paths.len());
    }
    drop(target_db);
    drop(db_window);

    if let Some(src_db) = &source_db {
        let var = open_dir(c.target.as_fd(), "var")
            .with_context(|| format!("cannot open {}/var", c.target_path.display()))?;
        let in_store = |name: &str| present.contains(OsStr::new(name));
        report.roots = gcroots::add(
            &var_engine,
            var.as_fd(),
            &c.target_path.join("var"),
            &plan.image_id,
            src_db,
            &in_store,
        )?;
    }
    if lost() {
        return Err(Stopped.into());
    }
    report.var = Some(v);
    mark_image(&c, &plan)
        .with_context(|| format!("cannot record the seed in {}/.nix-seed", c.target_path.display()))?;
    report.ownership_preserved = engine.ownership.preserved();
    drop(nix_locks);
    drop(held);
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// The one message for "does not fit", before copying or when the disk filled up anyway.
fn no_space(c: &Checked, plan: &Plan, size: plan::Size, free: u64) -> String {
    format!(
        "not enough space in {}: the {} missing store paths need {} ({} bytes), {} ({} bytes) is free; \
         free space or grow the volume, then run again (nothing half-copied is left)",
        c.target_path.display(),
        plan.missing.len(),
        indicatif::HumanBytes(size.needed),
        size.needed,
        indicatif::HumanBytes(free),
        free
    )
}

/// `TARGET/var`, if it exists. Absent is "no database yet"; anything else (a symlink
/// swapped in) is an error, not a reason to skip registering.
fn open_var(c: &Checked) -> Result<Option<std::os::fd::OwnedFd>> {
    crate::dirfd::open_dir_if_exists(c.target.as_fd(), "var").with_context(|| {
        format!(
            "cannot open {}/var (must be a directory, not a symlink)",
            c.target_path.display()
        )
    })
}

/// The target's database in `db_dir` (its `var/nix/db`), opened the way its Nix clients
/// open it, if it has one.
fn open_existing_db(c: &Checked, db_dir: BorrowedFd) -> Result<Option<nixdb::TargetDb>> {
    if !nixdb::has_file(db_dir, OsStr::new(nixdb::DB_FILE)) {
        return Ok(None);
    }
    let shown = c.target_path.join("var").join(nixdb::DB_DIR);
    Ok(Some(nixdb::open_target(db_dir, &shown, false)?))
}

fn is_enospc(e: &anyhow::Error) -> bool {
    copy::has_errno(e, &[libc::ENOSPC])
}

/// A present but unregistered store path of the image that this run did not copy: keep
/// it if its NAR hash is what the image registered, else swap in a fresh copy.
fn check_or_replace(
    engine: &Engine,
    c: &Checked,
    store: BorrowedFd,
    p: &nixdb::ValidPath,
    log: &Log,
    report: &mut Report,
) -> Result<()> {
    let name = OsStr::new(p.name());
    let shown = c.target_path.join("store").join(name);
    let ok = match nar::hash_path(store, name, None) {
        Ok(h) => h.hash == p.hash && p.nar_size.is_none_or(|n| n as u64 == h.size),
        Err(_) => false,
    };
    report.checked += 1;
    if ok {
        return Ok(());
    }
    log.warn(&format!(
        "{} is present but unregistered and differs from the image's: replacing it with a fresh copy",
        shown.display()
    ));
    engine.replace_store_path(
        (&c.source_store_path, c.source_store.as_fd()),
        (&c.target_path.join("store"), store),
        name,
    )?;
    report.replaced += 1;
    Ok(())
}

/// `target/store`, created with the source store directory's mode and owner if missing.
fn ensure_target_store(c: &Checked) -> Result<std::os::fd::OwnedFd> {
    if let Some(fd) = plan::open_target_store(c)? {
        return Ok(fd);
    }
    let st = fstat(c.source_store.as_fd())?;
    match mkdirat(c.target.as_fd(), "store", Mode::from_bits_truncate(0o700)) {
        Ok(()) => {
            let fd = open_dir(c.target.as_fd(), "store")?;
            let _ = nix::unistd::fchown(
                fd.as_fd(),
                Some(nix::unistd::Uid::from_raw(st.st_uid)),
                Some(nix::unistd::Gid::from_raw(st.st_gid)),
            );
            nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(st.st_mode & 0o7777))
                .with_context(|| format!("cannot set the mode of {}/store", c.target_path.display()))?;
            Ok(fd)
        }
        Err(Errno::EEXIST) => {
            plan::open_target_store(c)?.ok_or_else(|| anyhow::anyhow!("{}/store vanished", c.target_path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("cannot create {}/store", c.target_path.display())),
    }
}

/// `target/.nix-seed/images/<image id>`: written last, so its presence means this image's
/// store paths and var/ entries were all seeded (the fast path checks it).
fn mark_image(c: &Checked, plan: &Plan) -> Result<()> {
    let state = lock::state_dir(c.target.as_fd(), &c.target_path)?;
    match mkdirat(state.as_fd(), IMAGES_DIR, Mode::from_bits_truncate(0o755)) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let images = open_dir(state.as_fd(), IMAGES_DIR)?;
    write_marker(images.as_fd(), c, plan)
}

fn write_marker(images: BorrowedFd, c: &Checked, plan: &Plan) -> Result<()> {
    use std::io::Write;
    if lstat_at(images, plan.image_id.as_str())?.is_some() {
        return Ok(());
    }
    let body = json!({
        "image_id": plan.image_id,
        "source": c.source_path.to_string_lossy(),
        "store_paths": plan.source.len(),
        "seeded_at": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        "host": nix::unistd::gethostname().map(|h| h.to_string_lossy().into_owned()).unwrap_or_default(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let fd = nix::fcntl::openat(
        images,
        plan.image_id.as_str(),
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
            writeln!(f, "{body}")?;
            Ok(())
        }
        Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}
