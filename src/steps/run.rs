//! The slow path's steps, under the seed lock and Nix's locks, each a method of [`Run`]
//! called in order by [`super::seed`].

use std::collections::HashSet;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use crate::base::error::Stopped;
use crate::base::jobs::Jobs;
use crate::base::preflight::Checked;
use crate::base::progress::ProgressMode;
use crate::base::progress::{self, Log, PathEvents};
use crate::engines::copy::{self, Counters, Engine};
use crate::engines::lock::Held;
use crate::engines::nixdb::{refusal, with_target_db};
use crate::steps::plan::{self, ensure_target_store, list_store, Plan};
use crate::steps::registrations::{self, Complete, Described, InTarget};
use crate::steps::repair;
use crate::steps::report::Report;
use crate::steps::state;

/// What the slow path's steps are asked to do, resolved once by the `seed` command.
#[derive(Debug, Clone)]
pub struct Settings {
    pub jobs: Jobs,
    pub lock_timeout: std::time::Duration,
    pub verify: bool,
    pub profiles: crate::steps::profiles::Mode,
    pub progress: ProgressMode,
    /// `--name`: what `images` shows beside the image's id.
    pub name: Option<String>,
}

/// One slow-path run, under the seed lock and Nix's locks: each step a method (the steps
/// that make the image valid, from registering on, are in `valid.rs`).
pub(crate) struct Run<'a> {
    pub(crate) c: Checked,
    pub(crate) args: &'a Settings,
    pub(crate) log: &'a Arc<Log>,
    pub(crate) held: &'a Held,
    pub(crate) interrupted: &'a Arc<AtomicBool>,
    pub(crate) plan: Plan,
    pub(crate) counters: Arc<Counters>,
    pub(crate) engine: Engine,
    pub(crate) report: Report,
    /// What the content checks found, for the report.
    pub(crate) checks: repair::Outcome,
    /// The source is a stage an image was read into (see `steps::stage`): the missing
    /// store paths are there complete, on the target's filesystem, and are moved in.
    pub(crate) staged: Option<crate::engines::image::Stats>,
}

impl<'a> Run<'a> {
    /// Invalidate the image's marker: from here on the store and the database change,
    /// and a crash must leave the next run the slow path.
    pub(crate) fn start(
        c: Checked,
        args: &'a Settings,
        log: &'a Arc<Log>,
        held: &'a Held,
        interrupted: &'a Arc<AtomicBool>,
        plan: Plan,
    ) -> Result<Run<'a>> {
        // The target's database, if any, must be one nix-seed can register in: refused
        // here, before anything is written.
        with_target_db(&c, args.lock_timeout, log, |_| Ok(())).map_err(refusal)?;
        state::unmark(&c, &plan.image_id)?;
        let counters = Arc::new(Counters::default());
        // The target filesystem's facts are probed in prepare_store, before anything is
        // copied.
        let engine = Engine::new(
            counters.clone(),
            vec![interrupted.clone(), held.lost.clone()],
            copy::TargetFs::capable(),
        );
        let mut report = Report::new(&c, &plan);
        report.locked = true;
        Ok(Run {
            c,
            args,
            log,
            held,
            interrupted,
            plan,
            counters,
            engine,
            report,
            checks: repair::Outcome::default(),
            staged: None,
        })
    }

    pub(crate) fn lost(&self) -> bool {
        self.held.lost.load(Ordering::Relaxed) || self.interrupted.load(Ordering::Relaxed)
    }

    /// Enough space and inodes? Measured on the source, refused before anything is copied;
    /// then one line saying what will be copied (a long first seed is otherwise silent
    /// until the first progress line).
    pub(crate) fn check_space(&mut self) -> Result<()> {
        if let Some(st) = self.staged {
            // Already written, in the target's filesystem: what remains is renames.
            if !self.plan.missing.is_empty() {
                self.log.event(
                    progress::Level::Info,
                    "start",
                    &format!(
                        "publishing {} of {} read from the image into {}",
                        progress::count(self.plan.missing.len() as u64, "store path", "store paths"),
                        self.plan.source.len(),
                        self.c.target_path.display()
                    ),
                    json!({"paths": self.plan.missing.len(), "files": st.files, "bytes": st.bytes}),
                );
            }
            return Ok(());
        }
        let c = &self.c;
        let block = nix::sys::statvfs::fstatvfs(c.target.as_fd())
            .with_context(|| format!("cannot statfs {}", c.target_path.display()))?
            .fragment_size() as u64;
        let size = plan::measure(c, &self.plan.missing, block, self.args.jobs.n as usize)?;
        self.counters.bytes_total.store(size.bytes, Ordering::Relaxed);
        if let Some(why) = plan::room((c.target.as_fd(), &c.target_path), self.plan.missing.len(), size)? {
            anyhow::bail!(why);
        }
        if !self.plan.missing.is_empty() {
            self.log.event(
                progress::Level::Info,
                "start",
                &format!(
                    "copying {} ({}, {}) of {} to {} with {}",
                    progress::count(self.plan.missing.len() as u64, "store path", "store paths"),
                    progress::count(size.files, "file", "files"),
                    indicatif::HumanBytes(size.bytes),
                    self.plan.source.len(),
                    c.target_path.display(),
                    self.args.jobs
                ),
                json!({"paths": self.plan.missing.len(), "files": size.files, "bytes": size.bytes,
                       "jobs": self.args.jobs.n, "jobs_why": self.args.jobs.why}),
            );
        }
        Ok(())
    }

    /// `TARGET/store` exists, holds no leftovers of a killed run, and can hold a Nix store.
    pub(crate) fn prepare_store(&mut self) -> Result<OwnedFd> {
        let store = ensure_target_store(&self.c)?;
        let (c, log) = (&self.c, self.log);
        let store_path = c.layout.store.clone();
        let mut removed = 0;
        for (fd, path) in [(store.as_fd(), &store_path), (c.target.as_fd(), &c.target_path)] {
            let (n, problems) = crate::base::dirfd::remove_leftovers(fd, path)
                .with_context(|| format!("cannot list {}", path.display()))?;
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
        let (fs, warnings) = copy::TargetFs::probe(store.as_fd(), &store_path, &c.target_path)?;
        for w in warnings {
            log.warn(&w);
        }
        self.engine.fs = fs;
        Ok(store)
    }

    /// Copy the missing store paths into `store`, each published atomically; returns the
    /// names this run published.
    pub(crate) fn copy(&mut self, store: BorrowedFd) -> Result<HashSet<OsString>> {
        let store_path = self.c.layout.store.clone();
        let t0 = Instant::now();
        let bar = progress::start(self.log.clone(), self.counters.clone(), self.args.progress);
        if let Some(st) = self.staged {
            let moved = self.engine.move_store_paths(
                self.c.source_store.as_fd(),
                (&store_path, store),
                &self.plan.missing,
                &PathEvents(self.log),
            );
            bar.finish();
            if !self.plan.missing.is_empty() {
                self.counters.files.fetch_add(st.files, Ordering::Relaxed);
                self.counters.bytes.fetch_add(st.bytes, Ordering::Relaxed);
            }
            self.report.copy_seconds = t0.elapsed().as_secs_f64();
            self.report.take_counters(&self.counters);
            return Ok(moved?.into_iter().collect());
        }
        let copied = self.engine.copy_store_paths(
            (&self.c.source_store_path, self.c.source_store.as_fd()),
            (&store_path, store),
            &self.plan.missing,
            self.args.jobs.n as usize,
            &PathEvents(self.log),
        );
        bar.finish();
        self.report.copy_seconds = t0.elapsed().as_secs_f64();
        self.report.take_counters(&self.counters);
        match copied {
            Ok(v) => Ok(v.into_iter().collect()),
            Err(e) if copy::has_errno(&e, &[libc::ENOSPC]) => Err(anyhow::anyhow!(
                "not enough space in {}: the disk filled up while copying ({e:#}); free space or grow the \
                 volume, then run again (nothing half-copied is left)",
                self.c.target_path.display()
            )),
            // A holder that was frozen past --lock-stale and taken over can hit errors
            // (ESTALE, ENOENT: the new holder claimed its temporaries) before its heartbeat
            // notices: say what happened, not only the symptom. An ESTALE/ENOENT is checked
            // again for up to 2 s: a network filesystem's client that was frozen can show
            // the old lock file from its caches for a moment.
            Err(e)
                if !self.held.still_ours()
                    || (copy::has_errno(&e, &[libc::ESTALE, libc::ENOENT])
                        && !self.held.still_ours_within(std::time::Duration::from_secs(2))) =>
            {
                Err(e.context(format!(
                    "lost lock {}: another seeder took it over (this one was stalled past --lock-stale); stopped",
                    self.held.path.display()
                )))
            }
            Err(e) => Err(e),
        }
    }

    /// Complete the image's registrations (see [`crate::steps::registrations`]): under the locks,
    /// with the target's registrations as they are now.
    pub(crate) fn complete_registrations(&mut self, d: Described) -> Result<Complete> {
        let undescribed: Vec<String> = registrations::undescribed(&d, &self.plan.source)
            .iter()
            .map(|n| format!("{}{}", registrations::STORE_DIR, n.to_string_lossy()))
            .collect();
        let target = with_target_db(&self.c, self.args.lock_timeout, self.log, |db| match db {
            Some(db) => Ok(InTarget {
                registered: db.registered()?,
                rows: db.registrations_of(&undescribed)?,
            }),
            None => Ok(InTarget::default()),
        })?;
        let (lost, stop) = (self.held.lost.clone(), self.interrupted.clone());
        let stopped = move || lost.load(Ordering::Relaxed) || stop.load(Ordering::Relaxed);
        let regs = registrations::complete(
            d,
            &self.c,
            &self.plan.source,
            target,
            self.args.jobs.n as usize,
            &stopped,
            self.log,
        )?;
        if stopped() {
            return Err(Stopped.into());
        }
        self.report.registrations = Some(regs.counts);
        Ok(regs)
    }

    /// Hash what needs hashing before anything is registered (see [`repair`]); returns
    /// the target store's names once the checks passed: what var/'s new database and the
    /// registration are made from (listed once: on a network filesystem a listing is many
    /// round trips).
    pub(crate) fn check_contents(
        &mut self,
        store: BorrowedFd,
        regs: &Complete,
        copied: &HashSet<OsString>,
    ) -> Result<HashSet<OsString>> {
        let src = &regs.db;
        if self.args.verify {
            repair::verify_copies(
                &self.c,
                store,
                src,
                &|p| regs.origin_of(p),
                copied,
                self.args.jobs.n as usize,
                self.log,
                &mut self.checks,
            );
        }
        let registered = with_target_db(&self.c, self.args.lock_timeout, self.log, |db| match db {
            Some(db) => db.registered(),
            None => Ok(HashSet::new()),
        })?;
        let present = list_store(&self.c, store)?;
        repair::check_unregistered(
            &self.engine,
            &self.c,
            store,
            src,
            &|p| regs.origin_of(p),
            &present,
            copied,
            &registered,
            self.log,
            &mut self.checks,
        )?;
        for p in &self.checks.problems {
            self.log.error(p);
        }
        if !self.checks.problems.is_empty() {
            let n = self.checks.mismatched;
            anyhow::bail!(
                "{} in {}/store {} not match {} registrations (see above); {} removed and nothing was \
                 registered; the image (or its registration file) is corrupt: rebuild it",
                crate::base::progress::count(n as u64, "store path", "store paths"),
                self.c.target_path.display(),
                if n == 1 { "does" } else { "do" },
                if n == 1 { "its" } else { "their" },
                if n == 1 { "it was" } else { "they were" },
            );
        }
        // A replacement keeps its name: the listing still holds.
        Ok(present)
    }
}
