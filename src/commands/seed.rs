//! `nix-seed seed`: the steps of adding an image to a shared store, in the order Nix's own
//! `local-store.cc` adds a path: lock, decide (under the locks), write (atomically, with
//! canonical metadata), complete the registrations (computed where the image has none),
//! check, register, root, switch the profiles, and only then mark the image complete.
//!
//! The promise behind exit 0: every store path of the image is present, valid (registered
//! with the image's references) and reachable from a GC root in the target. Each decision
//! about what the target holds is made while Nix's `gc.lock` is held shared, so no garbage
//! collection can change the answer before it is acted on; a crash between any two steps
//! leaves no marker, so the next run takes the slow path and repairs.

//!
//! [`seed`] is the sequence, one named step after another; each step of the slow path is a
//! method of `run::Run`.

use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::{Ctx, Done};
use crate::base::failpoint;
use crate::base::jobs::{self, Jobs};
use crate::base::preflight::{self, Checked};
use crate::base::progress::{self, Counters, Log};
use crate::engines::lock;
use crate::engines::nixlocks::NixLocks;
use crate::steps::plan::{self, Plan};
use crate::steps::registrations;
use crate::steps::report::Report;
use crate::steps::run::{Run, Settings};

/// What `seed` is asked to do (the command line, resolved once).
#[derive(Debug, Clone)]
pub struct Options {
    pub source: PathBuf,
    pub target: PathBuf,
    pub registration: Option<PathBuf>,
    /// `--jobs`; `None`: chosen from the target's filesystem.
    pub jobs: Option<u32>,
    pub lock_timeout: Duration,
    pub lock_stale: Duration,
    pub verify: bool,
    pub recheck: bool,
    pub dry_run: bool,
    pub allow_non_mountpoint: bool,
    pub profiles: crate::steps::profiles::Mode,
    /// `--name`: what `images` shows beside the image's id.
    pub name: Option<String>,
    /// `--platform`: which image of a multi-platform archive or layout (`os/arch[/variant]`).
    pub platform: Option<String>,
    pub output: progress::Output,
}

impl Options {
    /// The slow path's settings, with the jobs chosen for the target open at `target`.
    fn settings(&self, target: std::os::fd::BorrowedFd) -> Settings {
        Settings {
            jobs: jobs::resolve_at(self.jobs, Some(target)),
            lock_timeout: self.lock_timeout,
            verify: self.verify,
            profiles: self.profiles,
            progress: self.output.progress,
            name: self.name.clone(),
        }
    }
}

/// `nix-seed seed`: print what was done, or fail with an error that names a path (a bare
/// errno gets the target) and says a database lock wait that ran out as a lock timeout.
pub fn run(o: &Options, cx: &Ctx) -> Result<Done> {
    if o.dry_run {
        if let crate::engines::image::Source::Image(spec) = crate::engines::image::classify(&o.source) {
            return dry_run_image(o, &spec, cx.log);
        }
    }
    match seed(o, cx.log, cx.stop) {
        Ok(r) => {
            r.print(cx.log);
            Ok(Done::Success)
        }
        Err(e) => {
            let e = crate::engines::nixdb::busy_as_timeout(
                e,
                &o.target,
                o.lock_timeout,
                // The slow path's steps say it themselves once something was copied.
                "nothing was copied or registered",
            );
            if crate::base::error::is_bare(&e) {
                Err(e.context(format!("seeding {}", o.target.display())))
            } else {
                Err(e)
            }
        }
    }
}

pub fn seed(o: &Options, log: &Arc<Log>, interrupted: &Arc<std::sync::atomic::AtomicBool>) -> Result<Report> {
    let t0 = Instant::now();
    if let crate::engines::image::Source::Image(spec) = crate::engines::image::classify(&o.source) {
        return seed_image(o, &spec, log, interrupted, t0);
    }
    let c = preflight::check(&o.source, &o.target, !o.allow_non_mountpoint, !o.dry_run)?;
    if o.dry_run {
        return dry_run(&c, o, log, t0);
    }
    // The fast path: no lock, nothing written (and no --jobs to choose). A database lock a
    // killed seeder may have left sends it down the slow path, which recovers it.
    let plan = Plan::compute(&c)?;
    if plan.is_complete() && !plan.db_lock_left && !o.recheck {
        if let Some(at) = plan.marked_at {
            crate::steps::state::touch_seen(c.target.as_fd(), &plan.image_id, at, log);
        }
        return Ok(Report::new(&c, &plan).finished(t0));
    }
    // What the image says of its store paths, read before any lock: a garbage database
    // or a malformed registration file is refused before anything is written.
    let described = registrations::describe(&c, o.registration.as_deref(), &plan.source)?;
    // Chosen here, from the target already open, not at every pod start: the no-op
    // needs no workers, and on a network disk each statfs is a round trip.
    let settings = o.settings(c.target.as_fd());

    // Lock: one seeder at a time, then Nix's own locks: no collection from here on.
    let held = seed_lock(c.target.as_fd(), &c.target_path, o, log, interrupted)?;
    failpoint::hit("locked");
    let nix_locks = NixLocks::acquire(&c, log, interrupted, o.lock_timeout)?;
    failpoint::hit("nix-locks");

    // Decide, under the locks: what a collection deleted while we waited is missing now,
    // and another seeder may have done the work meanwhile.
    let plan = Plan::compute(&c)?;
    // Stalled past --lock-stale and taken over meanwhile (the new holder may have done the
    // work): this seeder's one outcome is the lost lock, never "nothing to do".
    if !held.still_ours() {
        return Err(lock::lost(&held));
    }
    if plan.is_complete() && !o.recheck {
        if plan.db_lock_left {
            crate::engines::nixdb::recover_db_lock(&c, o.lock_timeout, log)?;
        }
        let mut report = Report::new(&c, &plan);
        report.locked = true;
        return Ok(report.finished(t0));
    }
    failpoint::hit("planned");
    let run = Run::start(c, &settings, log, &held, interrupted, plan)?;
    let counters = run.counters.clone();
    // A timeout on the database's lock says what becomes of what was copied, if anything was.
    let report = steps(run, described).map_err(|e| db_busy(e, &o.target, o.lock_timeout, &counters))?;
    failpoint::hit("marked");
    drop(nix_locks);
    drop(held);
    Ok(report.finished(t0))
}

/// A seed from an image (an archive, an OCI layout, standard input). Which store paths the
/// image holds is only known once its layers are read: by their headers alone, where every
/// layer is an uncompressed file, for the lock-free fast path; else, under the seed lock,
/// the image is read into a stage in the target ([`crate::steps::stage`]) that the usual
/// steps, under Nix's locks, then take as their source.
fn seed_image(
    o: &Options,
    spec: &crate::engines::image::Spec,
    log: &Arc<Log>,
    interrupted: &Arc<std::sync::atomic::AtomicBool>,
    t0: Instant,
) -> Result<Report> {
    use crate::base::error::Invalid;
    if let Some(p) = &spec.path {
        if !p.exists() {
            return Err(Invalid(format!("source image {} does not exist", p.display())).into());
        }
    }
    let (target_path, target) = preflight::check_target(&o.target, !o.allow_non_mountpoint, true)?;
    // Where the image's store path names can be had from its headers alone: the fast path,
    // as for a directory (no lock, nothing written), and, as a directory's seed does
    // before copying, a refusal when what it lacks cannot fit (exit 1, nothing written).
    let block = nix::sys::statvfs::fstatvfs(target.as_fd()).map_or(4096, |v| v.fragment_size());
    if let Some((names, footprints)) = crate::engines::image::by_headers(spec, o.platform.as_deref(), block) {
        let present = store_names(target.as_fd())?;
        if !o.recheck {
            if let Some(at) = image_complete(target.as_fd(), &names, &present)? {
                let id = crate::base::store_path::image_id(&names);
                crate::steps::state::touch_seen(target.as_fd(), &id, at, log);
                return Ok(Report::of(&target_path, names.len(), 0).finished(t0));
            }
        }
        let (missing, size) = image_missing(&names, &present, &footprints);
        if let Some(why) = plan::room((target.as_fd(), &target_path), missing.len(), size)? {
            anyhow::bail!(why);
        }
    }
    let held = seed_lock(target.as_fd(), &target_path, o, log, interrupted)?;
    failpoint::hit("locked");
    // The stage a killed run left (an image seed that ends with nothing to do never gets
    // to the store's preparation, which removes the other leftovers): the lock is held.
    let (removed, problems) = crate::base::dirfd::remove_leftovers(target.as_fd(), &target_path)?;
    for p in problems {
        log.warn(&p);
    }
    if removed > 0 {
        log.info(&format!(
            "removed {removed} temporary entries left by an interrupted earlier run"
        ));
    }
    let stage = crate::steps::stage::Stage::make(target.as_fd(), &target_path)?;
    let (nix_path, nix) = stage.nix()?;
    let mut c = Checked::staged(nix_path, nix, (target_path, target), spec.shown())?;
    // Read before Nix's locks are taken: an image refused half-way leaves var/ as it was.
    let (un, kept) = crate::steps::stage::unpack(&c, &stage, spec, o.platform.as_deref(), o.lock_timeout, log)?;
    c.source_label = un.label.clone();
    failpoint::hit("unpacked");
    let nix_locks = NixLocks::acquire(&c, log, interrupted, o.lock_timeout)?;
    failpoint::hit("nix-locks");
    let plan = Plan::compute(&c)?;
    crate::steps::stage::check_kept(&c, &plan, &kept, o.lock_timeout, log)?;
    if !held.still_ours() {
        return Err(lock::lost(&held));
    }
    if plan.is_complete() && !o.recheck {
        if plan.db_lock_left {
            crate::engines::nixdb::recover_db_lock(&c, o.lock_timeout, log)?;
        }
        if let Some(at) = plan.marked_at {
            crate::steps::state::touch_seen(c.target.as_fd(), &plan.image_id, at, log);
        }
        let mut report = Report::new(&c, &plan);
        report.locked = true;
        return Ok(report.finished(t0));
    }
    let described = registrations::describe(&c, o.registration.as_deref(), &plan.source)?;
    let settings = o.settings(c.target.as_fd());
    failpoint::hit("planned");
    let mut run = Run::start(c, &settings, log, &held, interrupted, plan)?;
    run.staged = Some(un.stats);
    let counters = run.counters.clone();
    let report = steps(run, described).map_err(|e| db_busy(e, &o.target, o.lock_timeout, &counters))?;
    failpoint::hit("marked");
    drop(stage);
    drop(nix_locks);
    drop(held);
    Ok(report.finished(t0))
}

/// The image's store paths `names` not `present` in the target, and what they take by
/// their `footprints` (from the image's headers: at most).
fn image_missing<'n>(
    names: &'n [std::ffi::OsString],
    present: &std::collections::HashSet<std::ffi::OsString>,
    footprints: &crate::engines::image::Footprints,
) -> (Vec<&'n std::ffi::OsString>, plan::Size) {
    let mut size = plan::Size::default();
    let mut missing = Vec::new();
    for n in names.iter().filter(|n| !present.contains(*n)) {
        missing.push(n);
        if let Some(f) = footprints.get(n) {
            size.files += f.files;
            size.bytes += f.bytes;
            size.needed += f.needed;
            size.inodes += f.inodes;
        }
    }
    (missing, size)
}

/// The names in `target/store` (none without one).
fn store_names(target: std::os::fd::BorrowedFd) -> Result<std::collections::HashSet<std::ffi::OsString>> {
    Ok(match crate::base::dirfd::open_dir_if_exists(target, "store")? {
        Some(store) => crate::base::dirfd::list(store.as_fd())?
            .into_iter()
            .map(|e| e.name)
            .collect(),
        None => Default::default(),
    })
}

/// When the image of store paths `names` was last found complete in `target` (its marker's
/// time), if it is complete now: every store path there, marked, no database lock left by
/// a killed seeder ([`Plan::is_complete`], for an image read by its names), and no stage a
/// killed image seed left (the slow path removes it).
fn image_complete(
    target: std::os::fd::BorrowedFd,
    names: &[std::ffi::OsString],
    present: &std::collections::HashSet<std::ffi::OsString>,
) -> Result<Option<std::time::SystemTime>> {
    use std::os::unix::ffi::OsStrExt;
    let look = crate::steps::state::look(target, &crate::base::store_path::image_id(names))?;
    let Some(at) = look.marked_at.filter(|_| !look.db_lock_left) else {
        return Ok(None);
    };
    if crate::base::dirfd::list(target)?
        .iter()
        .any(|e| crate::base::dirfd::is_temp_name(e.name.as_bytes()))
    {
        return Ok(None);
    }
    Ok(names.iter().all(|n| present.contains(n)).then_some(at))
}

/// The seed lock on the target, waited for as `--lock-timeout` and `--lock-stale` say.
fn seed_lock(
    target: std::os::fd::BorrowedFd,
    target_path: &std::path::Path,
    o: &Options,
    log: &Arc<Log>,
    interrupted: &std::sync::atomic::AtomicBool,
) -> Result<lock::Held> {
    let cfg = lock::Config {
        timeout: o.lock_timeout,
        stale: o.lock_stale,
    };
    lock::acquire(target, target_path, &cfg, log, interrupted)
}

/// The slow path's steps, in order, under the locks; each returns what the next ones use.
/// From a stage, the registrations are completed before the store paths are moved out of
/// it (the computation reads the source; nothing between the two changes the target's
/// database).
fn steps(mut run: Run<'_>, described: registrations::Described) -> Result<Report> {
    failpoint::hit("unmarked");
    run.check_space()?;
    failpoint::hit("space-checked");
    let store = run.prepare_store()?;
    let (copied, regs) = if run.staged.is_some() {
        let regs = run.complete_registrations(described)?;
        failpoint::hit("computed");
        let copied = run.copy(store.as_fd())?;
        failpoint::hit("copied");
        (copied, regs)
    } else {
        let copied = run.copy(store.as_fd())?;
        failpoint::hit("copied");
        let regs = run.complete_registrations(described)?;
        failpoint::hit("computed");
        (copied, regs)
    };
    let present = run.check_contents(store.as_fd(), &regs, &copied)?;
    failpoint::hit("verified");
    let var = run.seed_var(&regs, &present)?;
    failpoint::hit("var-seeded");
    let valid = run.register(&regs, &present)?;
    failpoint::hit("registered");
    let roots = run.root(&regs, &valid)?;
    failpoint::hit("rooted");
    run.follow_profiles(&regs, &present, &valid, &var)?;
    failpoint::hit("profiles-followed");
    run.mark(&regs, &valid, &roots, &var)
}

/// A timeout on the Nix database's lock during the slow path (exit 3): what was copied
/// before it, if anything, is registered by the next run. Before the copy, [`run`] says
/// nothing was copied.
fn db_busy(e: anyhow::Error, target: &std::path::Path, timeout: Duration, counters: &Counters) -> anyhow::Error {
    let copied = Counters::get(&counters.paths_done) + Counters::get(&counters.files) > 0;
    let outcome = if copied {
        "nothing was registered, the next run registers what was copied"
    } else {
        "nothing was copied or registered"
    };
    crate::engines::nixdb::busy_as_timeout(e, target, timeout, outcome)
}

fn dry_run(c: &Checked, o: &Options, log: &Log, t0: Instant) -> Result<Report> {
    let jobs: Jobs = jobs::resolve_at(o.jobs, Some(c.target.as_fd()));
    let plan = Plan::compute(c)?;
    // Bad input is refused as the real seed refuses it (exit 2), before saying anything.
    let described = registrations::describe(c, o.registration.as_deref(), &plan.source)?;
    let expected = registrations::expected(&described, &plan.source);
    if expected.computed > 0 {
        log.event(
            progress::Level::Info,
            "would-compute",
            &format!(
                "would compute the registrations of the image's store paths that neither its database nor a \
                 registration file describes and that are not valid in the target (at most {}); registrations: {}",
                expected.computed,
                expected.text()
            ),
            json!({"registrations": expected}),
        );
    }
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
    if plan.target_has_var {
        if let Some(v) = crate::base::dirfd::open_dir_if_exists(c.source.as_fd(), "var")? {
            let profiles = crate::steps::profiles::image_profiles(v.as_fd())
                .map_err(|e| e.context(format!("cannot read the profiles of {}/var", c.source_path.display())))?;
            crate::steps::profiles::preview(c, o.profiles, &profiles, log)?;
        }
    }
    let block = nix::sys::statvfs::fstatvfs(c.target.as_fd()).map_or(4096, |v| v.fragment_size());
    let size = plan::measure(c, &plan.missing, block, jobs.n as usize)?;
    let mut report = Report::new(c, &plan);
    report.dry_run = true;
    report.files = size.files;
    report.bytes = size.bytes;
    // The outcome the real seed would have, after saying what it would do: refused (exit
    // 2), no room (exit 1), or done.
    let refused = preflight::writable(&c.target_path, c.target.as_fd()).err();
    let no_room = plan::room((c.target.as_fd(), &c.target_path), plan.missing.len(), size)?;
    report.fit = Some(match (&refused, &no_room) {
        (Some(why), _) => format!("the seed would refuse it: {why}"),
        (None, Some(why)) => format!("it would NOT fit: {why}"),
        (None, None) => format!(
            "it fits ({}, {} inodes needed)",
            indicatif::HumanBytes(size.needed),
            size.inodes
        ),
    });
    let report = report.finished(t0);
    if refused.is_none() && no_room.is_none() {
        return Ok(report);
    }
    report.print(log);
    match refused {
        Some(why) => Err(crate::base::error::Invalid(format!("dry run: the seed would refuse: {why}")).into()),
        None => Err(anyhow::anyhow!(
            "dry run: the seed would fail: {}",
            no_room.unwrap_or_default()
        )),
    }
}

/// `--dry-run` with an image: its store path names read (digests checked, nothing written,
/// no lock), what the target lacks of them, what those take (from the layers' headers: at
/// most), and whether the seed would refuse the target or find no room, with the exit code
/// of a directory's dry run.
fn dry_run_image(o: &Options, spec: &crate::engines::image::Spec, log: &Arc<Log>) -> Result<Done> {
    let (target_path, target) = preflight::check_target(&o.target, !o.allow_non_mountpoint, false)?;
    let block = nix::sys::statvfs::fstatvfs(target.as_fd()).map_or(4096, |v| v.fragment_size());
    let (un, footprints) = crate::engines::image::scan(spec, o.platform.as_deref(), block)?;
    let (missing, size) = image_missing(&un.names, &store_names(target.as_fd())?, &footprints);
    for n in &missing {
        log.event(
            progress::Level::Info,
            "would-copy",
            &format!("would copy {}", n.to_string_lossy()),
            json!({"path": n.to_string_lossy()}),
        );
    }
    let refused = preflight::writable(&target_path, target.as_fd()).err();
    let no_room = plan::room((target.as_fd(), &target_path), missing.len(), size)?;
    let text = format!(
        "dry run: image {} ({}): {} store paths in {} layers, {} missing from {} ({}, {}); {}",
        spec.shown(),
        un.label,
        un.names.len(),
        un.layers,
        missing.len(),
        target_path.display(),
        progress::count(size.files, "file", "files"),
        indicatif::HumanBytes(size.bytes),
        match (&refused, &no_room) {
            (Some(why), _) => format!("the seed would refuse it: {why}"),
            (None, Some(why)) => format!("it would NOT fit: {why}"),
            (None, None) => format!(
                "it fits (at most {}, {} inodes needed, by the layers' headers); the seed would read the image \
                 into a stage there and publish them",
                indicatif::HumanBytes(size.needed),
                size.inodes
            ),
        }
    );
    log.report(
        &text,
        json!({"event": "dry-run", "image": un.label, "store_paths": un.names.len(), "layers": un.layers,
               "missing": missing.len(), "files": size.files, "bytes": size.bytes, "needed": size.needed,
               "inodes": size.inodes, "target": target_path.to_string_lossy(),
               "refused": refused.as_ref().map(|r| r.to_string()), "fits": no_room.is_none()}),
    );
    match (refused, no_room) {
        (Some(why), _) => Err(crate::base::error::Invalid(format!("dry run: the seed would refuse: {why}")).into()),
        (None, Some(why)) => Err(anyhow::anyhow!("dry run: the seed would fail: {why}")),
        (None, None) => Ok(Done::Success),
    }
}
