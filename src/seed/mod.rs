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
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use serde_json::json;

use crate::cli::SeedArgs;
use crate::copy::Counters;
use crate::failpoint;
use crate::lock;
use crate::nixlocks::NixLocks;
use crate::plan::{self, Plan};
use crate::preflight::{self, Checked};
use crate::progress::{self, Log};
use crate::registrations;
use crate::report::Report;

mod run;
mod valid;

use run::Run;

pub fn seed(args: &mut SeedArgs, log: &Arc<Log>, interrupted: &Arc<AtomicBool>) -> Result<Report> {
    let t0 = Instant::now();
    // A dry run checks writability itself, to say what it would copy before saying that
    // the seed would refuse.
    let c = preflight::check(
        &args.paths.source,
        &args.paths.target,
        !args.allow_non_mountpoint,
        !args.dry_run,
    )?;
    if args.dry_run {
        args.resolve_jobs(c.target.as_fd());
        return dry_run(&c, args, log, t0);
    }
    // The fast path: no lock, nothing written (and no --jobs to choose). A database lock a
    // killed seeder may have left sends it down the slow path, which recovers it.
    let plan = Plan::compute(&c)?;
    if plan.is_complete() && !plan.db_lock_left && !args.recheck {
        if let Some(at) = plan.marked_at {
            crate::state::touch_seen(c.target.as_fd(), &plan.image_id, at, log);
        }
        return Ok(Report::new(&c, &plan).finished(t0));
    }
    // What the image says of its store paths, read before any lock: a garbage database
    // or a malformed registration file is refused before anything is written.
    let described = registrations::describe(&c, args.paths.registration.as_deref(), &plan.source)?;
    // Chosen here, from the target already open, not at every pod start: the no-op
    // needs no workers, and on a network disk each statfs is a round trip.
    args.resolve_jobs(c.target.as_fd());
    let args = &*args;

    // Lock: one seeder at a time, then Nix's own locks: no collection from here on.
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
    failpoint::hit("locked");
    let nix_locks = NixLocks::acquire(&c, log, interrupted, args.lock_timeout)?;
    failpoint::hit("nix-locks");

    // Decide, under the locks: what a collection deleted while we waited is missing now,
    // and another seeder may have done the work meanwhile.
    let plan = Plan::compute(&c)?;
    // Stalled past --lock-stale and taken over meanwhile (the new holder may have done the
    // work): this seeder's one outcome is the lost lock, never "nothing to do".
    if !held.still_ours() {
        return Err(lock::lost(&held));
    }
    if plan.is_complete() && !args.recheck {
        if plan.db_lock_left {
            crate::nixdb::recover_db_lock(&c, args.lock_timeout, log)?;
        }
        let mut report = Report::new(&c, &plan);
        report.locked = true;
        return Ok(report.finished(t0));
    }
    failpoint::hit("planned");
    let db_dir = c.target_path.join("var").join(crate::nixdb::DB_DIR);
    let run = Run::start(c, args, log, &held, interrupted, plan, described)?;
    let counters = run.counters.clone();
    // A timeout on the database's lock says what becomes of what was copied, if anything was.
    let report = steps(run).map_err(|e| db_busy(e, &db_dir, args.lock_timeout, &counters))?;
    failpoint::hit("marked");
    drop(nix_locks);
    drop(held);
    Ok(report.finished(t0))
}

/// The slow path's steps, in order, under the locks.
fn steps(mut run: Run<'_>) -> Result<Report> {
    failpoint::hit("unmarked");
    run.check_space()?;
    failpoint::hit("space-checked");
    run.prepare_store()?;
    run.copy()?;
    failpoint::hit("copied");
    run.complete_registrations()?;
    failpoint::hit("computed");
    run.check_contents()?;
    failpoint::hit("verified");
    run.seed_var()?;
    failpoint::hit("var-seeded");
    run.register()?;
    failpoint::hit("registered");
    run.root()?;
    failpoint::hit("rooted");
    run.follow_profiles()?;
    failpoint::hit("profiles-followed");
    run.mark()
}

/// A timeout on the Nix database's lock during the slow path (exit 3): what was copied
/// before it, if anything, is registered by the next run. Before the copy, `main` says
/// nothing was copied.
fn db_busy(
    e: anyhow::Error,
    db_dir: &std::path::Path,
    timeout: std::time::Duration,
    counters: &Counters,
) -> anyhow::Error {
    let copied = Counters::get(&counters.paths_done) + Counters::get(&counters.files) > 0;
    let outcome = if copied {
        "nothing was registered, the next run registers what was copied"
    } else {
        "nothing was copied or registered"
    };
    lock::db_busy_as_timeout(e, db_dir, timeout, outcome)
}

fn dry_run(c: &Checked, args: &SeedArgs, log: &Log, t0: Instant) -> Result<Report> {
    let plan = Plan::compute(c)?;
    // Bad input is refused as the real seed refuses it (exit 2), before saying anything.
    let described = registrations::describe(c, args.paths.registration.as_deref(), &plan.source)?;
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
        if let Some(v) = crate::dirfd::open_dir_if_exists(c.source.as_fd(), "var")? {
            let profiles = crate::profiles::image_profiles(v.as_fd())
                .map_err(|e| e.context(format!("cannot read the profiles of {}/var", c.source_path.display())))?;
            crate::profiles::preview(c, args.profiles, &profiles, log)?;
        }
    }
    let block = nix::sys::statvfs::fstatvfs(c.target.as_fd()).map_or(4096, |v| v.fragment_size());
    let size = plan::measure(c, &plan.missing, block, args.jobs as usize)?;
    let mut report = Report::new(c, &plan);
    report.dry_run = true;
    report.files = size.files;
    report.bytes = size.bytes;
    // The outcome the real seed would have, after saying what it would do: refused (exit
    // 2), no room (exit 1), or done.
    let refused = preflight::writable(&c.target_path, c.target.as_fd()).err();
    let no_room = plan::room(c, plan.missing.len(), size)?;
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
        Some(why) => Err(preflight::Invalid(format!("dry run: the seed would refuse: {why}")).into()),
        None => Err(anyhow::anyhow!(
            "dry run: the seed would fail: {}",
            no_room.unwrap_or_default()
        )),
    }
}
