//! The slow path's steps that make the copied image valid, in Nix's order: var/ (and a
//! database to register in), register, root, switch the profiles to what is now valid
//! and rooted, and only then mark the image complete.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::sync::Arc;

use anyhow::{Context, Result};

use super::run::Run;
use crate::base::dirfd::open_dir;
use crate::base::error::Stopped;
use crate::engines::copy::{Counters, Engine};
use crate::engines::nixdb::{self, open_existing_db, with_db_dir};
use crate::steps::gcroots;
use crate::steps::profiles;
use crate::steps::profiles::Mode as ProfilesMode;
use crate::steps::registrations::{self, Complete};
use crate::steps::report::Report;
use crate::steps::state;
use crate::steps::var;

/// What the var/ step leaves for the profile step: the image's profiles, and whether var/
/// was created whole by this run (its profiles with it).
pub(crate) struct Var {
    pub profiles: Vec<profiles::ImageProfile>,
    pub created: bool,
}

/// What the registering step leaves: the store path names valid in the target now, and the
/// image paths that could not be registered, each with why.
pub(crate) struct Valid {
    pub names: HashSet<String>,
    pub unregistrable: Vec<String>,
}

impl Run<'_> {
    /// var/ after the store paths, so profiles and roots never point at missing paths; a
    /// database is created here (a copy of the image's, or an empty one when the image
    /// has none) if the target has none. The image's profiles are set after registering.
    pub(crate) fn seed_var(&mut self, regs: &Complete, present: &HashSet<OsString>) -> Result<Var> {
        let var_engine = Engine::new(
            Arc::new(Counters::default()),
            vec![self.interrupted.clone(), self.held.lost.clone()],
            self.engine.fs.clone(),
        );
        // A database created from the image's holds the image's complete registrations of
        // what the store holds; the rest is registered next.
        let holds = |name: &str| {
            present.contains(OsStr::new(name)) && regs.from_db.contains(&format!("{}{name}", registrations::STORE_DIR))
        };
        let c = &self.c;
        let image_profiles = match crate::base::dirfd::open_dir_if_exists(c.source.as_fd(), "var")? {
            Some(v) => profiles::image_profiles(v.as_fd())
                .with_context(|| format!("cannot read the profiles of {}/var", c.source_path.display()))?,
            None => Vec::new(),
        };
        if crate::base::dirfd::lstat_at(c.target.as_fd(), "var")?.is_none() {
            // var/ is created whole, its profiles with it: nix-seed's, recorded first.
            profiles::record_whole(c, &self.plan.image_id, &image_profiles)?;
        }
        let mode = self.args.profiles;
        let skip =
            |rel: &std::path::Path| mode != ProfilesMode::Keep && profiles::is_profile_entry(&image_profiles, rel);
        let v = var::seed(c, &var_engine, self.log, &holds, &skip)?;
        if var_engine.ownership.take_denied_notice() && self.engine.ownership.preserved() {
            self.log.warn(&format!(
                "cannot set file ownership in {}/var (chown refused)",
                self.c.target_path.display()
            ));
        }
        let created = v.created;
        self.report.var = Some(v);
        Ok(Var {
            profiles: image_profiles,
            created,
        })
    }

    /// Register last, in one transaction, what the target holds. The database is opened
    /// here, right before the transaction: a pod's Nix may have created it, or switched it
    /// to WAL, while the store paths were copied.
    pub(crate) fn register(&mut self, regs: &Complete, present: &HashSet<OsString>) -> Result<Valid> {
        let src = &regs.db;
        let c = &self.c;
        let names: HashSet<&str> = present.iter().filter_map(|n| n.to_str()).collect();
        let lost = || self.lost();
        let shown = c.layout.db_dir.clone();
        let (r, valid) = with_db_dir(c, self.args.lock_timeout, self.log, |dir| {
            let dir = dir.with_context(|| format!("{} vanished", shown.display()))?;
            let r = nixdb::register_in_target(dir, &shown, src, &names, &lost)?;
            let valid = match open_existing_db(c, dir)? {
                Some(db) => {
                    if db.wal && crate::base::dirfd::is_network_fs(dir) {
                        self.log.warn(&crate::engines::nixdb::wal_on_network_fs(&db.path));
                    }
                    db.registered()?
                }
                None => HashSet::new(),
            };
            Ok((r, valid))
        })?;
        for (p, missing) in &r.skipped {
            self.log.warn(&format!(
                "{p} not registered: its reference {missing} is neither in the image's store nor valid in {}",
                c.target_path.display()
            ));
        }
        // A database created by this run: every row in it was registered by this run.
        let created = self.report.var.as_ref().is_some_and(|v| v.db_created);
        self.report.registered = if created { valid.len() } else { r.count };
        // Every image path must now be valid here.
        let mut unregistrable = Vec::new();
        for n in &self.plan.source {
            let Some(name) = n.to_str() else { continue };
            if !valid.contains(name) {
                let why = if !present.contains(n) {
                    "missing from the target's store".to_string()
                } else if let Some((_, missing)) = r.skipped.iter().find(|(p, _)| p.ends_with(&format!("/{name}"))) {
                    format!("its closure is incomplete: {missing} is neither in the image's store nor valid here")
                } else {
                    "present but could not be registered".to_string()
                };
                unregistrable.push(format!("{}/store/{name}: {why}", c.target_path.display()));
            }
        }
        Ok(Valid {
            names: valid,
            unregistrable,
        })
    }

    /// GC roots for the tops of the image's closure that are valid here.
    /// Returns the names of the image's roots, sorted.
    pub(crate) fn root(&mut self, regs: &Complete, valid: &Valid) -> Result<Vec<String>> {
        let src = &regs.db;
        let c = &self.c;
        let var = open_dir(c.target.as_fd(), "var")
            .with_context(|| format!("cannot open {}/var", c.target_path.display()))?;
        let image: HashSet<&OsStr> = self.plan.source.iter().map(OsString::as_os_str).collect();
        let valid = |name: &str| valid.names.contains(name) && image.contains(OsStr::new(name));
        let tops = gcroots::tops(src, &valid);
        let var_engine = Engine::new(Arc::new(Counters::default()), vec![], self.engine.fs.clone());
        self.report.roots = gcroots::add(&var_engine, var.as_fd(), &c.layout.var, &self.plan.image_id, &tops)?;
        let mut roots: Vec<String> = tops.iter().map(|p| p.name().to_string()).collect();
        roots.sort();
        Ok(roots)
    }

    /// Each of the image's profiles follows the image (see [`profiles`]), switched only to
    /// a user environment whose whole closure is now valid (and rooted by its link).
    pub(crate) fn follow_profiles(
        &mut self,
        regs: &Complete,
        present: &HashSet<OsString>,
        valid: &Valid,
        var: &Var,
    ) -> Result<()> {
        let src = &regs.db;
        let holds = |name: &str| present.contains(OsStr::new(name));
        let valid = |name: &str| valid.names.contains(name);
        let unregistered = |name: &str| registrations::first_invalid(src, name, &valid).map(str::to_string);
        let cx = profiles::Ctx {
            c: &self.c,
            image_id: &self.plan.image_id,
            mode: if var.created {
                ProfilesMode::Keep
            } else {
                self.args.profiles
            },
            log: self.log,
            stop: self.interrupted,
            lock_timeout: self.args.lock_timeout,
            holds: &holds,
            unregistered: &unregistered,
        };
        self.report.profiles = profiles::apply(&cx, &var.profiles)?;
        Ok(())
    }

    /// The image is complete: say so in its marker, the last write.
    pub(crate) fn mark(mut self, regs: &Complete, valid: &Valid, roots: &[String], var: &Var) -> Result<Report> {
        if self.lost() {
            return Err(Stopped.into());
        }
        for p in &valid.unregistrable {
            self.log.error(p);
        }
        if !valid.unregistrable.is_empty() {
            anyhow::bail!(
                "{} store paths of the image are not valid in {} (see above); the image was not marked seeded; \
                 run again, and if it persists rebuild the image",
                valid.unregistrable.len(),
                self.c.target_path.display()
            );
        }
        let counts = Some(regs.counts);
        let label = state::Label {
            name: self.args.name.clone(),
            source: Some(self.c.source_label.clone()),
            profile: profiles::default_name(&var.profiles),
        };
        state::record_seeded(&self.c, &self.plan.image_id, counts, roots, label)?;
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
