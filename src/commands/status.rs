//! `nix-seed status`: what an image still lacks in the target, read without any lock and
//! without writing: store paths missing, registrations (the target's database against its
//! store and against the image; where the image's came from) and the GC roots its last
//! seed made. Its verdict and its exit code always agree.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::Result;
use serde_json::json;

use crate::base::dirfd::open_dir;
use crate::base::nixconf::NixConf;
use crate::base::preflight;
use crate::base::progress::Log;
use crate::engines::nixdb;
use crate::steps::plan::Plan;
use crate::steps::registrations;

/// What the target's database says about its store and the image; all `None` without a
/// database.
#[derive(Default)]
struct Registration {
    /// Target store paths present but not registered.
    unregistered: Option<usize>,
    /// Registered paths missing from the target's store.
    missing_registered: Option<usize>,
    /// Image paths not registered in the target.
    image_unregistered: Option<usize>,
    journal_mode: Option<&'static str>,
}

/// Read the target's database (read-only), if it has one; `source`: the image's store
/// path names.
fn registration(
    target: BorrowedFd,
    layout: &crate::base::layout::Layout,
    source: &[OsString],
    log: &Log,
) -> Result<Registration> {
    let mut r = Registration::default();
    let Ok(var) = open_dir(target, "var") else {
        return Ok(r);
    };
    let var_path = layout.var.clone();
    let Some(d) = nixdb::open_db_dir(var.as_fd(), &var_path)? else {
        return Ok(r);
    };
    if !crate::base::dirfd::has_file(d.as_fd(), OsStr::new(nixdb::DB_FILE)) {
        return Ok(r);
    }
    let db = nixdb::open_target(d.as_fd(), &var_path.join(nixdb::DB_DIR), true)?;
    r.journal_mode = Some(if db.wal { "wal" } else { "rollback" });
    if db.wal && crate::base::dirfd::is_network_fs(d.as_fd()) {
        log.warn(&crate::engines::nixdb::wal_on_network_fs(&db.path));
    }
    let registered = db.registered()?;
    let present: HashSet<String> = match crate::base::dirfd::open_dir_if_exists(target, "store")? {
        Some(fd) => crate::base::dirfd::list(fd.as_fd())?
            .into_iter()
            .filter_map(|e| e.name.into_string().ok())
            .filter(|n| crate::base::store_path::is_store_path_name(n.as_bytes()))
            .collect(),
        None => HashSet::new(),
    };
    r.unregistered = Some(present.iter().filter(|n| !registered.contains(*n)).count());
    r.missing_registered = Some(registered.iter().filter(|n| !present.contains(*n)).count());
    r.image_unregistered = Some(
        source
            .iter()
            .filter(|n| n.to_str().is_some_and(|n| !registered.contains(n)))
            .count(),
    );
    Ok(r)
}

/// "seeded", or what is not and the command that repairs it.
fn verdict(plan: &Plan, not_registered: usize, roots_missing: usize, seeded: bool) -> String {
    if seeded {
        return "seeded".to_string();
    }
    let mut why = Vec::new();
    if !plan.missing.is_empty() {
        why.push(format!("{} store paths missing", plan.missing.len()));
    }
    if not_registered > 0 {
        why.push(format!("{not_registered} not registered"));
    }
    if roots_missing > 0 {
        why.push(format!("{roots_missing} GC roots missing"));
    }
    if !plan.image_marked {
        why.push("no complete seed recorded".to_string());
    }
    // A marked image is skipped by a plain seed's fast path: drift needs --recheck.
    let fix = if plan.image_marked {
        "nix-seed seed --recheck"
    } else {
        "nix-seed seed"
    };
    format!("not seeded ({}): run `{fix}` to repair", why.join(", "))
}

/// The warning for a nix.conf that lets the pods' Nix collect garbage on its own, if it
/// does. The nix.conf is `explicit`, else the one Nix reads here. An explicit one that is
/// missing or malformed is an error (exit 2, before anything else); the default one is
/// only warned about: `status` reports on the disk, whatever this container's Nix setup.
fn auto_gc(explicit: Option<&Path>, log: &Log) -> Result<Option<String>> {
    let Some(path) = NixConf::locate(explicit) else {
        return Ok(None);
    };
    let conf = match NixConf::read(&path) {
        Ok(conf) => conf,
        Err(e) if explicit.is_some() => return Err(e),
        Err(e) => {
            log.warn(&format!(
                "{e:#}: not checked for automatic garbage collection (--nix-conf FILE names the pods' nix.conf)"
            ));
            return Ok(None);
        }
    };
    Ok(conf.auto_gc().map(|why| {
        format!(
            "{why}. Nix's collector is unsafe on a store shared by pods: it resolves other pods' \
             indirect roots (their result links) in its own pod and deletes what they protect, and \
             a Nix process removes the temporary roots of another pod's process with the same PID. \
             Set min-free = 0 (or leave it unset) in every pod's nix.conf, and collect garbage with \
             `nix-seed gc` from one place (docs/gc.md)"
        )
    }))
}

/// What `status` is asked about.
#[derive(Debug, Clone)]
pub struct Options {
    pub source: std::path::PathBuf,
    /// `--platform`, for an image source holding several.
    pub platform: Option<String>,
    pub target: std::path::PathBuf,
    pub registration: Option<std::path::PathBuf>,
    /// The pods' nix.conf (`--nix-conf`); None: where Nix looks ([`NixConf::locate`]).
    pub nix_conf: Option<std::path::PathBuf>,
    pub output: crate::base::progress::Output,
}

/// `nix-seed status`: exit 0 if seeded, 1 (a finding) if not.
pub fn run(o: &Options, cx: &super::Ctx) -> Result<super::Done> {
    status(o, cx.log).map(super::Done::from_ok)
}

fn status(o: &Options, log: &Log) -> Result<bool> {
    if let Some(warning) = auto_gc(o.nix_conf.as_deref(), log)? {
        log.warn(&warning);
    }
    if let crate::engines::image::Source::Image(spec) = crate::engines::image::classify(&o.source) {
        return status_image(o, &spec, log);
    }
    let c = preflight::check(&o.source, &o.target, false, false)?;
    let plan = Plan::compute(&c)?;
    let source = Described {
        line: format!("{} ({} store paths)", c.source_path.display(), plan.source.len()),
        fields: json!({"source": c.source_path.to_string_lossy()}),
        // Where an image not (completely) seeded would get its registrations from: its
        // database, a registration file, or computed.
        registrations: Some(&|| {
            Ok(registrations::expected(
                &registrations::describe(&c, o.registration.as_deref(), &plan.source)?,
                &plan.source,
            ))
        }),
    };
    tell((c.target.as_fd(), &c.target_path), &c.layout, &plan, source, log)
}

/// `status` of an image (an archive, a layout, standard input): its layers are read, and
/// their digests checked, for the names of its store paths, without writing anything. Where
/// the registrations would come from is not known without its database: reported only
/// once a seed recorded it.
fn status_image(o: &Options, spec: &crate::engines::image::Spec, log: &Log) -> Result<bool> {
    use crate::steps::state;
    let (target_path, target) = preflight::check_target(&o.target, false, false)?;
    let layout = crate::base::layout::Layout::new(&target_path);
    let (un, _) = crate::engines::image::scan(spec, o.platform.as_deref(), 4096)?;
    let source = un.names;
    let image_id = crate::base::store_path::image_id(&source);
    let present: HashSet<OsString> = match crate::base::dirfd::open_dir_if_exists(target.as_fd(), "store")? {
        Some(fd) => crate::base::dirfd::list(fd.as_fd())?
            .into_iter()
            .map(|e| e.name)
            .filter(|n| crate::base::store_path::is_store_path_name(n.as_bytes()))
            .collect(),
        None => HashSet::new(),
    };
    let look = state::look(target.as_fd(), &image_id)?;
    let plan = Plan {
        missing: source.iter().filter(|n| !present.contains(*n)).cloned().collect(),
        target_count: present.len(),
        image_id,
        target_has_store: !present.is_empty(),
        target_has_var: crate::base::dirfd::lstat_at(target.as_fd(), "var")?.is_some(),
        source_has_var: false,
        image_marked: look.marked_at.is_some(),
        marked_at: look.marked_at,
        db_lock_left: look.db_lock_left,
        source,
    };
    let described = Described {
        line: format!(
            "{} ({}, {} store paths in {} layers)",
            spec.shown(),
            un.label,
            plan.source.len(),
            un.layers
        ),
        fields: json!({"source": spec.shown(), "source_image": un.label}),
        registrations: None,
    };
    tell((target.as_fd(), &target_path), &layout, &plan, described, log)
}

/// The source as `status` shows it.
struct Described<'a> {
    /// After "source: ".
    line: String,
    /// The JSON fields of this kind of source.
    fields: serde_json::Value,
    /// Where the registrations of an image not yet seeded would come from, if that can
    /// be known.
    registrations: Option<&'a dyn Fn() -> Result<registrations::Counts>>,
}

/// The report and the verdict, whatever the source: every store path of the image present,
/// registered and rooted, and the image marked (so that the next `seed` is a no-op that
/// tells the truth). True when seeded.
fn tell(
    (target, target_path): (BorrowedFd, &Path),
    layout: &crate::base::layout::Layout,
    plan: &Plan,
    source: Described,
    log: &Log,
) -> Result<bool> {
    use crate::steps::state;
    // Registration: what the target's database says about its store.
    let Registration {
        unregistered,
        missing_registered,
        image_unregistered,
        journal_mode,
    } = registration(target, layout, &plan.source, log)?;
    // Where the registrations came from (or would come from), and the roots the last
    // complete seed made, each still there.
    let record = state::read_record(target, target_path, &plan.image_id)?;
    let registrations = match (record.as_ref().and_then(|r| r.registrations), source.registrations) {
        (Some(r), _) if plan.image_marked => Some(r),
        (_, Some(expected)) => Some(expected()?),
        _ => None,
    };
    let roots_missing = roots_missing(target, plan, record.as_ref())?;
    // What the image is known by (its name, and the source of its last complete seed:
    // an archive's reference and digest), as `images` shows it.
    let label = state::label(target, &plan.image_id, record.as_ref());
    let not_registered = image_unregistered.unwrap_or(plan.source.len());
    let seeded = plan.missing.is_empty() && not_registered == 0 && roots_missing.is_empty() && plan.image_marked;
    let verdict = verdict(plan, not_registered, roots_missing.len(), seeded);
    let mut fields = source.fields;
    fields.as_object_mut().expect("an object").extend(
        json!({
            "source_store_paths": plan.source.len(),
            "target": target_path.to_string_lossy(),
            "target_store_paths": plan.target_count,
            "missing_store_paths": plan.missing.len(),
            "image_unregistered": image_unregistered,
            "present_unregistered": unregistered,
            "registered_missing": missing_registered,
            "journal_mode": journal_mode,
            "gc_roots_missing": roots_missing,
            "image_id": plan.image_id,
            "image_name": label.name,
            "image_source": label.source,
            "image_marked": plan.image_marked,
            "image_seeded": seeded,
        })
        .as_object()
        .expect("an object")
        .clone(),
    );
    if let Some(r) = &registrations {
        fields["registrations"] = json!(r);
    }
    let count = |o: Option<usize>| o.map_or("- (no database)".to_string(), |n| n.to_string());
    let text = format!(
        "source: {}\ntarget: {} ({} store paths)\nmissing: {} store paths\n\
         image paths not registered in the target: {}\n\
         target paths present but not registered: {}\n\
         target paths registered but missing: {}\njournal mode: {}\n{}\
         GC roots missing: {}\nimage {}{}: {}",
        source.line,
        target_path.display(),
        plan.target_count,
        plan.missing.len(),
        count(image_unregistered),
        count(unregistered),
        count(missing_registered),
        journal_mode.unwrap_or("- (no database)"),
        registrations.map_or(String::new(), |r| format!("registrations: {}\n", r.text())),
        roots_missing.len(),
        plan.image_id,
        label.text(),
        verdict
    );
    log.report(&text, fields);
    tell_missing(plan, log);
    Ok(seeded)
}

/// The GC roots the image's last complete seed recorded that are gone now.
fn roots_missing(
    target: std::os::fd::BorrowedFd,
    plan: &Plan,
    record: Option<&crate::steps::state::Record>,
) -> Result<Vec<String>> {
    match record.and_then(|r| r.roots.as_ref()) {
        Some(names) => crate::steps::gcroots::missing(target, &plan.image_id, names),
        None => Ok(Vec::new()),
    }
}

/// With -v, each store path of the image the target lacks.
fn tell_missing(plan: &Plan, log: &Log) {
    for n in &plan.missing {
        log.detail(
            "missing",
            &format!("missing {}", n.to_string_lossy()),
            json!({"path": n.to_string_lossy()}),
        );
    }
}
