//! The one summary line a seed ends with, also written to `/dev/termination-log` so that
//! `kubectl describe pod` shows it.

use std::io::Write;
use std::path::PathBuf;

use indicatif::HumanBytes;
use serde_json::json;

use crate::base::preflight::Checked;
use crate::base::progress::{count, Log};
use crate::engines::copy::Counters;
use crate::steps::plan::Plan;
use crate::steps::var;

#[derive(Debug, Default)]
pub struct Report {
    pub target: PathBuf,
    pub source_paths: usize,
    pub missing: usize,
    pub copied: u64,
    pub skipped: u64,
    pub files: u64,
    pub bytes: u64,
    pub hardlinks: u64,
    pub seconds: f64,
    pub dry_run: bool,
    pub locked: bool,
    pub ownership_preserved: bool,
    pub var: Option<var::Outcome>,
    /// What `--profiles` did to the image's profiles.
    pub profiles: crate::steps::profiles::Outcome,
    /// Store paths registered in the target's database.
    pub registered: usize,
    /// GC root links added for this image.
    pub roots: usize,
    /// Where the image's registrations came from (slow path only).
    pub registrations: Option<crate::steps::registrations::Counts>,
    /// Present-but-unregistered paths checked against the image's hashes, and replaced.
    pub checked: u64,
    pub replaced: u64,
    /// Store paths checked by `--verify`.
    pub verified: usize,
    /// Time spent copying store paths (the rate's divisor: not the waits for locks).
    pub copy_seconds: f64,
    /// Dry run: whether the copy would fit, in words.
    pub fit: Option<String>,
}

impl Report {
    pub fn new(c: &Checked, plan: &Plan) -> Report {
        Report::of(&c.target_path, plan.source.len(), plan.missing.len())
    }

    /// The report on `target` for an image of `source_paths` store paths, `missing` of
    /// them missing.
    pub fn of(target: &std::path::Path, source_paths: usize, missing: usize) -> Report {
        Report {
            target: target.to_path_buf(),
            source_paths,
            missing,
            ownership_preserved: true,
            ..Default::default()
        }
    }

    /// Stamp the run's duration: the report is final.
    pub fn finished(mut self, t0: std::time::Instant) -> Report {
        self.seconds = t0.elapsed().as_secs_f64();
        self
    }

    pub fn take_counters(&mut self, c: &Counters) {
        self.copied = Counters::get(&c.paths_done);
        self.skipped = Counters::get(&c.paths_skipped);
        self.files = Counters::get(&c.files);
        self.bytes = Counters::get(&c.bytes);
        self.hardlinks = Counters::get(&c.hardlinks);
    }

    /// Store paths of the image that were (or, in a dry run, are) in the target already.
    pub fn already_present(&self) -> u64 {
        let done = if self.dry_run { self.missing as u64 } else { self.copied };
        (self.source_paths as u64).saturating_sub(done)
    }

    pub fn line(&self) -> String {
        if self.dry_run {
            return format!(
                "dry run: would copy {} of {} store paths ({}, {}) to {}{}",
                self.missing,
                self.source_paths,
                count(self.files, "file", "files"),
                HumanBytes(self.bytes),
                self.target.display(),
                self.fit.as_deref().map_or(String::new(), |f| format!("; {f}"))
            );
        }
        let present = self.already_present();
        let rate = self.bytes as f64 / self.copy_seconds.max(1e-3);
        let mut s = format!(
            "seeded {}: {} copied, {} already present, {}, {} in {:.2}s ({}/s while copying)",
            self.target.display(),
            count(self.copied, "store path", "store paths"),
            present,
            count(self.files, "file", "files"),
            HumanBytes(self.bytes),
            self.seconds,
            HumanBytes(rate as u64),
        );
        if self.copied == 0 && self.var.is_none() {
            s = format!(
                "nothing to do: all {} store paths of the image are in {} ({:.3}s)",
                self.source_paths,
                self.target.display(),
                self.seconds
            );
        }
        if self.registered > 0 {
            s.push_str(&format!("; {} registered", self.registered));
            if let Some(r) = self.registrations.filter(|r| r.computed + r.file > 0) {
                s.push_str(&format!(
                    " ({} computed, {} from a registration file)",
                    r.computed, r.file
                ));
            }
        }
        if self.verified > 0 {
            s.push_str(&format!("; {} verified", self.verified));
        }
        if self.checked > 0 {
            s.push_str(&format!(
                "; {} checked, {} replaced",
                count(self.checked, "unregistered path", "unregistered paths"),
                self.replaced
            ));
        }
        if let Some(v) = &self.var {
            if v.created {
                s.push_str("; var/ created");
            } else if v.added > 0 || v.conflicts > 0 {
                s.push_str(&format!(
                    "; var/: {} entries added, {} conflicts kept as they were",
                    v.added, v.conflicts
                ));
            }
        }
        let p = &self.profiles;
        if p.switched > 0 || p.generations_added > 0 {
            s.push_str(&format!(
                "; profiles: {} switched, {} added",
                p.switched,
                count(p.generations_added, "generation", "generations")
            ));
            if p.not_switched > 0 {
                s.push_str(&format!(" ({} left on a user's generation)", p.not_switched));
            }
        }
        s
    }

    pub fn print(&self, log: &Log) {
        let line = self.line();
        log.summary(
            &line,
            json!({
                "target": self.target.to_string_lossy(),
                "store_paths": self.source_paths,
                "copied": self.copied,
                "already_present": self.already_present(),
                "skipped_concurrent": self.skipped,
                "files": self.files,
                "bytes": self.bytes,
                "hardlinks": self.hardlinks,
                "seconds": self.seconds,
                "copy_seconds": self.copy_seconds,
                "dry_run": self.dry_run,
                "ownership_preserved": self.ownership_preserved,
                "var_created": self.var.as_ref().map(|v| v.created),
                "var_added": self.var.as_ref().map(|v| v.added),
                "var_conflicts": self.var.as_ref().map(|v| v.conflicts),
                "registered": self.registered,
                "gc_roots": self.roots,
                "registrations": self.registrations,
                "checked_unregistered": self.checked,
                "replaced": self.replaced,
                "verified": self.verified,
                "profiles_switched": self.profiles.switched,
                "generations_added": self.profiles.generations_added,
                "profiles_not_switched": self.profiles.not_switched,
            }),
        );
        termination_log(&format!("nix-seed: {line}"));
    }
}

/// Kubernetes shows this file's content as the container's termination message. Written
/// only if it exists and is writable; `NIX_SEED_TERMINATION_LOG` names another file.
pub fn termination_log(msg: &str) {
    let path = std::env::var_os("NIX_SEED_TERMINATION_LOG").unwrap_or_else(|| "/dev/termination-log".into());
    if let Ok(mut f) = std::fs::OpenOptions::new().write(true).truncate(true).open(path) {
        let _ = writeln!(f, "{msg}");
    }
}
