//! The slow path's steps, under the seed lock and Nix's locks, each a method of [`Run`]
//! called in order by [`super::seed`].

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use serde_json::json;

use crate::cli::{ProfilesMode, SeedArgs};
use crate::copy::{self, Counters, Engine, Stopped};
use crate::dirfd::open_dir;
use crate::lock::Held;
use crate::nixdb::{self, open_existing_db, refusal, with_db_dir, with_target_db, SourceDb};
use crate::plan::{self, ensure_target_store, list_store, Plan};
use crate::preflight::Checked;
use crate::progress::{self, Log, PathEvents};
use crate::report::Report;
use crate::{gcroots, profiles, repair, state, var};

/// One slow-path run, under the seed lock and Nix's locks: each step a method.
pub(super) struct Run<'a> {
    c: Checked,
    args: &'a SeedArgs,
    log: &'a Arc<Log>,
    held: &'a Held,
    interrupted: &'a Arc<AtomicBool>,
    plan: Plan,
    counters: Arc<Counters>,
    engine: Engine,
    source_db: Option<SourceDb>,
    report: Report,
    size: plan::Size,
    store: Option<OwnedFd>,
    copied: HashSet<OsString>,
    /// The target store's names once the content checks passed: under Nix's locks, what
    /// var/'s new database and the registration are made from (listed once: on a network
    /// filesystem a listing is many round trips).
    present: HashSet<OsString>,
    checks: repair::Outcome,
    /// Names of the store paths valid in the target after registering.
    valid: HashSet<String>,
    /// Image paths that could not be registered, with why.
    unregistrable: Vec<String>,
}

impl<'a> Run<'a> {
    /// Read the image's database, then invalidate the image's marker: from here on the
    /// store and the database change, and a crash must leave the next run the slow path.
    pub(super) fn start(
        c: Checked,
        args: &'a SeedArgs,
        log: &'a Arc<Log>,
        held: &'a Held,
        interrupted: &'a Arc<AtomicBool>,
        plan: Plan,
    ) -> Result<Run<'a>> {
        let source_db = nixdb::read_source(&c.source_path.join("var").join(nixdb::DB_DIR))?;
        if source_db.is_none() {
            log.warn(&format!(
                "the image has no Nix database ({}/var/nix/db/db.sqlite): store paths are copied but not registered",
                c.source_path.display()
            ));
        }
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
            source_db,
            report,
            size: plan::Size::default(),
            store: None,
            copied: HashSet::new(),
            present: HashSet::new(),
            checks: repair::Outcome::default(),
            valid: HashSet::new(),
            unregistrable: Vec::new(),
        })
    }

    fn lost(&self) -> bool {
        self.held.lost.load(Ordering::Relaxed) || self.interrupted.load(Ordering::Relaxed)
    }

    fn store(&self) -> std::os::fd::BorrowedFd<'_> {
        self.store.as_ref().expect("prepare_store ran").as_fd()
    }

    /// Enough space and inodes? Measured on the source, refused before anything is copied;
    /// then one line saying what will be copied (a long first seed is otherwise silent
    /// until the first progress line).
    pub(super) fn check_space(&mut self) -> Result<()> {
        let c = &self.c;
        let block = nix::sys::statvfs::fstatvfs(c.target.as_fd())
            .with_context(|| format!("cannot statfs {}", c.target_path.display()))?
            .fragment_size() as u64;
        self.size = plan::measure(c, &self.plan.missing, block, self.args.jobs as usize)?;
        self.counters.bytes_total.store(self.size.bytes, Ordering::Relaxed);
        if let Some(why) = plan::room(c, self.plan.missing.len(), self.size)? {
            anyhow::bail!(why);
        }
        if !self.plan.missing.is_empty() {
            self.log.event(
                progress::Level::Info,
                "start",
                &format!(
                    "copying {} ({}, {}) of {} to {} with {}",
                    progress::count(self.plan.missing.len() as u64, "store path", "store paths"),
                    progress::count(self.size.files, "file", "files"),
                    indicatif::HumanBytes(self.size.bytes),
                    self.plan.source.len(),
                    c.target_path.display(),
                    self.args.jobs_text()
                ),
                json!({"paths": self.plan.missing.len(), "files": self.size.files, "bytes": self.size.bytes,
                       "jobs": self.args.jobs, "jobs_why": self.args.jobs_why}),
            );
        }
        Ok(())
    }

    /// `TARGET/store` exists, holds no leftovers of a killed run, and can hold a Nix store.
    pub(super) fn prepare_store(&mut self) -> Result<()> {
        let store = ensure_target_store(&self.c)?;
        let (c, log) = (&self.c, self.log);
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
        let (fs, warnings) = copy::TargetFs::probe(store.as_fd(), &store_path, &c.target_path)?;
        for w in warnings {
            log.warn(&w);
        }
        self.engine.fs = fs;
        self.store = Some(store);
        Ok(())
    }

    /// Copy the missing store paths, each published atomically.
    pub(super) fn copy(&mut self) -> Result<()> {
        let store_path = self.c.target_path.join("store");
        let t0 = Instant::now();
        let bar = progress::start(self.log.clone(), self.counters.clone(), self.args.output.progress);
        let copied = self.engine.copy_store_paths(
            (&self.c.source_store_path, self.c.source_store.as_fd()),
            (&store_path, self.store()),
            &self.plan.missing,
            self.args.jobs as usize,
            &PathEvents(self.log),
        );
        bar.finish();
        self.report.copy_seconds = t0.elapsed().as_secs_f64();
        self.report.take_counters(&self.counters);
        match copied {
            Ok(v) => {
                self.copied = v.into_iter().collect();
                Ok(())
            }
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

    /// Hash what needs hashing before anything is registered (see [`repair`]).
    pub(super) fn check_contents(&mut self) -> Result<()> {
        let Some(src) = &self.source_db else {
            if self.args.verify {
                self.log
                    .warn("--verify: the image has no Nix database to verify against");
            }
            return Ok(());
        };
        let store = self.store.as_ref().expect("prepare_store ran").as_fd();
        if self.args.verify {
            repair::verify_copies(
                &self.c,
                store,
                src,
                &self.copied,
                self.args.jobs as usize,
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
            &present,
            &self.copied,
            &registered,
            self.log,
            &mut self.checks,
        )?;
        for p in &self.checks.problems {
            self.log.error(p);
        }
        if !self.checks.problems.is_empty() {
            anyhow::bail!(
                "{} store paths in {}/store do not match the image's database (see above); they were removed \
                 and nothing was registered; the image is corrupt: rebuild it",
                self.checks.problems.len(),
                self.c.target_path.display()
            );
        }
        // A replacement keeps its name: the listing still holds.
        self.present = present;
        Ok(())
    }

    /// var/ after the store paths, so profiles and roots never point at missing paths; a
    /// database is created here (a copy of the image's) if the target has none.
    pub(super) fn seed_var(&mut self) -> Result<()> {
        let var_engine = Engine::new(
            Arc::new(Counters::default()),
            vec![self.interrupted.clone(), self.held.lost.clone()],
            self.engine.fs.clone(),
        );
        // A database created here holds what the store holds.
        let holds = |name: &str| self.present.contains(OsStr::new(name));
        let with_db = self.source_db.as_ref().map(|_| &holds as &dyn Fn(&str) -> bool);
        let c = &self.c;
        let profiles = match crate::dirfd::open_dir_if_exists(c.source.as_fd(), "var")? {
            Some(v) => profiles::image_profiles(v.as_fd())
                .with_context(|| format!("cannot read the profiles of {}/var", c.source_path.display()))?,
            None => Vec::new(),
        };
        if crate::dirfd::lstat_at(c.target.as_fd(), "var")?.is_none() {
            // var/ is created whole, its profiles with it: nix-seed's, recorded first.
            profiles::record_whole(c, &self.plan.image_id, &profiles)?;
        }
        let mode = self.args.profiles;
        let skip = |rel: &std::path::Path| mode != ProfilesMode::Keep && profiles::is_profile_entry(&profiles, rel);
        let v = var::seed(c, &var_engine, self.log, with_db, &skip)?;
        let cx = profiles::Ctx {
            c,
            image_id: &self.plan.image_id,
            mode: if v.created { ProfilesMode::Keep } else { mode },
            log: self.log,
            stop: self.interrupted,
            lock_timeout: self.args.lock_timeout,
            holds: &holds,
        };
        self.report.profiles = profiles::apply(&cx, &profiles)?;
        if var_engine.ownership.take_denied_notice() && self.engine.ownership.preserved() {
            self.log.warn(&format!(
                "cannot set file ownership in {}/var (chown refused)",
                self.c.target_path.display()
            ));
        }
        self.report.var = Some(v);
        Ok(())
    }

    /// Register last, in one transaction, what the target holds. The database is opened
    /// here, right before the transaction: a pod's Nix may have created it, or switched it
    /// to WAL, while the store paths were copied.
    pub(super) fn register(&mut self) -> Result<()> {
        let Some(src) = &self.source_db else {
            return Ok(());
        };
        let c = &self.c;
        let names: HashSet<&str> = self.present.iter().filter_map(|n| n.to_str()).collect();
        let lost = || self.lost();
        let shown = c.target_path.join("var").join(nixdb::DB_DIR);
        let (r, valid) = with_db_dir(c, self.args.lock_timeout, self.log, |dir| {
            let dir = dir.with_context(|| format!("{} vanished", shown.display()))?;
            let r = nixdb::register_in_target(dir, &shown, src, &names, &lost)?;
            let valid = match open_existing_db(c, dir)? {
                Some(db) => {
                    if db.wal && crate::dirfd::is_network_fs(dir) {
                        self.log.warn(&crate::status::wal_on_network_fs(&db.path));
                    }
                    db.registered()?
                }
                None => HashSet::new(),
            };
            Ok((r, valid))
        })?;
        for (p, missing) in &r.skipped {
            self.log.warn(&format!(
                "{p} not registered: its reference {missing} is neither registered in {} nor in the target's store",
                shown.display()
            ));
        }
        // A database created by this run: every row in it was registered by this run.
        let created = self.report.var.as_ref().is_some_and(|v| v.db_created);
        self.report.registered = if created { valid.len() } else { r.count };
        self.valid = valid;
        // Every image path the image's own database registers must now be valid here.
        let by_name = src.by_name();
        for n in &self.plan.source {
            let Some(name) = n.to_str() else { continue };
            if by_name.contains_key(name) && !self.valid.contains(name) {
                let why = if self.present.contains(n) {
                    "present but could not be registered"
                } else {
                    "missing from the target's store"
                };
                self.unregistrable
                    .push(format!("{}/store/{name}: {why}", c.target_path.display()));
            }
        }
        Ok(())
    }

    /// GC roots for the tops of the image's closure that are valid here.
    pub(super) fn root(&mut self) -> Result<()> {
        let Some(src) = &self.source_db else {
            return Ok(());
        };
        let c = &self.c;
        let var = open_dir(c.target.as_fd(), "var")
            .with_context(|| format!("cannot open {}/var", c.target_path.display()))?;
        let image: HashSet<&OsStr> = self.plan.source.iter().map(OsString::as_os_str).collect();
        let valid = |name: &str| self.valid.contains(name) && image.contains(OsStr::new(name));
        let tops = gcroots::tops(src, &valid);
        let var_engine = Engine::new(Arc::new(Counters::default()), vec![], self.engine.fs.clone());
        self.report.roots = gcroots::add(
            &var_engine,
            var.as_fd(),
            &c.target_path.join("var"),
            &self.plan.image_id,
            &tops,
        )?;
        Ok(())
    }

    /// The image is complete: say so in its marker, the last write.
    pub(super) fn mark(mut self) -> Result<Report> {
        if self.lost() {
            return Err(Stopped.into());
        }
        for p in &self.unregistrable {
            self.log.error(p);
        }
        if !self.unregistrable.is_empty() {
            anyhow::bail!(
                "{} store paths of the image are not valid in {} (see above); the image was not marked seeded; \
                 run again, and if it persists rebuild the image",
                self.unregistrable.len(),
                self.c.target_path.display()
            );
        }
        state::record_seeded(&self.c, &self.plan.image_id)?;
        state::mark(&self.c, &self.plan.image_id, self.plan.source.len())?;
        self.report.checked = self.checks.checked;
        self.report.replaced = self.checks.replaced;
        self.report.files += self.checks.files;
        self.report.bytes += self.checks.bytes;
        self.report.verified = self.checks.verified;
        self.report.ownership_preserved = self.engine.ownership.preserved();
        Ok(self.report)
    }
}
