//! `nix-seed seed` and `nix-seed status`: the pipeline in the order Nix's own
//! `local-store.cc` uses for adding paths: validate, decide, lock, write (atomically,
//! with canonical metadata), then record what was written last.

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::sys::stat::{fstat, mkdirat, Mode};
use serde_json::json;

use crate::cli::{SeedArgs, StatusArgs};
use crate::copy::{self, Counters, Engine, Stopped};
use crate::dirfd::{lstat_at, open_dir};
use crate::lock;
use crate::plan::{self, Plan, IMAGES_DIR};
use crate::preflight::{self, Checked};
use crate::progress::{self, Log, PathEvents};
use crate::report::Report;
use crate::var;

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

    let store = ensure_target_store(&c)?;
    let removed = copy::remove_leftovers(store.as_fd(), &c.target_path.join("store"))?
        + copy::remove_leftovers(c.target.as_fd(), &c.target_path)?;
    if removed > 0 {
        log.info(&format!(
            "removed {removed} temporary entries left by an interrupted earlier run"
        ));
    }

    let bar = progress::start(log.clone(), counters.clone(), args.output.progress);
    let copied = engine.copy_store_paths(
        (&c.source_store_path, c.source_store.as_fd()),
        (&c.target_path.join("store"), store.as_fd()),
        &plan.missing,
        args.jobs as usize,
        &events,
    );
    bar.finish();
    report.take_counters(&counters);
    copied?;

    // var/ after the store paths, so profiles and roots never point at missing paths.
    let var_engine = Engine::new(Arc::new(Counters::default()), stop_flags);
    let v = var::seed(&c, &var_engine, log)?;
    if var_engine.ownership.take_denied_notice() && engine.ownership.preserved() {
        log.warn(&format!(
            "cannot set file ownership in {}/var (chown refused)",
            c.target_path.display()
        ));
    }
    if held.lost.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(Stopped.into());
    }
    report.var = Some(v);
    mark_image(&c, &plan)
        .with_context(|| format!("cannot record the seed in {}/.nix-seed", c.target_path.display()))?;
    report.ownership_preserved = engine.ownership.preserved();
    drop(held);
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
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
            nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(st.st_mode & 0o7777))?;
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

pub fn status(args: &StatusArgs, log: &Log) -> Result<bool> {
    let c = preflight::check(&args.paths.source, &args.paths.target, false, false)?;
    let plan = Plan::compute(&c)?;
    let fields = json!({
        "source": c.source_path.to_string_lossy(),
        "source_store_paths": plan.source.len(),
        "target": c.target_path.to_string_lossy(),
        "target_store_paths": plan.target_count,
        "missing_store_paths": plan.missing.len(),
        "image_id": plan.image_id,
        "image_seeded": plan.image_marked,
    });
    let text = format!(
        "source: {} ({} store paths)\ntarget: {} ({} store paths)\nmissing: {} store paths\nimage {}: {}",
        c.source_path.display(),
        plan.source.len(),
        c.target_path.display(),
        plan.target_count,
        plan.missing.len(),
        plan.image_id,
        if plan.image_marked {
            "seeded"
        } else {
            "not seeded (var/ or the store paths incomplete)"
        }
    );
    log.report(&text, fields);
    for n in &plan.missing {
        log.detail(
            "missing",
            &format!("missing {}", n.to_string_lossy()),
            json!({"path": n.to_string_lossy()}),
        );
    }
    Ok(plan.is_complete())
}
