//! Every store path of the image gets a registration, as Nix would have made it, with or
//! without the image's database.
//!
//! Most images built with Nix carry no database (dockerTools, nix2container, flox,
//! nixery), and some carry one that is short of their store. A path the target's Nix does
//! not see as valid is deleted by the first garbage collection in any pod, so nix-seed
//! takes each path's registration from the first of these that describes it completely:
//!
//! 1. the image's database (`var/nix/db/db.sqlite`, WAL included): every column as the
//!    image's Nix wrote it. A row whose `Refs` point at a path the database does not list
//!    is not complete: it is computed instead;
//! 2. a registration file (closureInfo's `registration`, what `nix-store --load-db`
//!    reads): `--registration FILE`, or `nix-path-registration` (NixOS tarballs) or
//!    `.reginfo` (the Nix installer) beside the source's `nix` directory;
//! 3. the target's database, for a path already valid there (another image brought it):
//!    nothing to compute, nothing to register;
//! 4. computed from the path's bytes, the way Nix registers a build's output: the NAR
//!    hash and size, and as references every candidate (the image's paths and the paths
//!    valid in the target) whose hash part occurs in the NAR ([`crate::engines::nar::scan_all`]),
//!    with no deriver, signatures or content address, registered now. A store derivation
//!    (`.drv`) is Nix's one exception: its references are its inputs, read from its text
//!    ([`crate::engines::derivation`]).
//!
//! The image's database and the file are read before any lock ([`describe`]): a garbage
//! database or a malformed file is refused (exit 2) before anything is written. The rest
//! ([`complete`]) runs under the locks, once the target's registrations can no longer
//! change under it. Computing reads the image's copy, which is local and, right after the
//! copy, in the page cache: the copy itself moves the bytes in the kernel (`sendfile`) and
//! never sees them.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::base::preflight::Checked;
use crate::base::progress::Log;
use crate::base::store_path::store_name;
use crate::engines::nixdb::{self, SourceDb, ValidPath};

/// The store directory every image and pod sees.
pub const STORE_DIR: &str = "/nix/store/";

/// Where the registrations of one image's store paths came from, counted per path.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// From the image's database.
    pub database: usize,
    /// From a registration file.
    pub file: usize,
    /// Computed from the paths' contents.
    pub computed: usize,
    /// Already valid in the target (another image, or a pod, registered them).
    #[serde(default)]
    pub already_valid: usize,
}

impl Counts {
    /// `3 from the image's database, 0 from a registration file, 23 computed, 0 already valid`.
    pub fn text(&self) -> String {
        format!(
            "{} from the image's database, {} from a registration file, {} computed, {} already valid in the target",
            self.database, self.file, self.computed, self.already_valid
        )
    }
}

/// What the image itself says about its store paths, read before any lock.
pub struct Described {
    /// The image's database, less the rows that are not complete; empty without one.
    pub db: SourceDb,
    /// Whether the image has a database at all.
    pub has_db: bool,
    /// The registration file used, if any, and its entries the database does not hold.
    pub file: Option<PathBuf>,
    file_rows: Vec<nixdb::reginfo::Registration>,
    /// Image paths listed by the database whose references it does not list.
    pub dangling: usize,
}

/// The registration file of the image: `explicit`, else `nix-path-registration` or
/// `.reginfo` beside the source (`SOURCE/..`), if there is one.
fn registration_file(c: &Checked, explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    let root = c.source_path.parent()?;
    ["nix-path-registration", ".reginfo"]
        .iter()
        .map(|n| root.join(n))
        .find(|p| std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file()))
}

/// Read the image's database and registration file. `source` is the image's store path
/// names. A garbage database or a malformed file is an [`crate::base::error::Invalid`]
/// (exit 2); a file listing a path the image's store lacks does not describe this image
/// (exit 1). Nothing is written either way.
pub fn describe(c: &Checked, explicit: Option<&Path>, source: &[OsString]) -> Result<Described> {
    let db_dir = crate::base::layout::Layout::new(&c.source_path).db_dir;
    let (mut db, has_db) = match nixdb::read_source(&db_dir)? {
        Some(db) => (db, true),
        None => (SourceDb::default(), false),
    };
    let dangling: HashSet<String> = db.dangling.iter().cloned().collect();
    if !dangling.is_empty() {
        retain_paths(&mut db, &|p| !dangling.contains(p));
    }
    let mut d = Described {
        db,
        has_db,
        file: None,
        file_rows: Vec::new(),
        dangling: dangling.len(),
    };
    let Some(file) = registration_file(c, explicit) else {
        return Ok(d);
    };
    let text = std::fs::read(&file)
        .with_context(|| format!("cannot read the registration file {}", file.display()))
        .map_err(|e| crate::base::error::Invalid(format!("{e:#}")))?;
    let text = String::from_utf8_lossy(&text);
    let rows = nixdb::reginfo::parse(&text, &file)?;
    let present: HashSet<&[u8]> = source
        .iter()
        .map(|n| std::os::unix::ffi::OsStrExt::as_bytes(n.as_os_str()))
        .collect();
    if let Some(r) = rows.iter().find(|r| !present.contains(store_name(&r.path).as_bytes())) {
        anyhow::bail!(
            "the registration file {} lists {}, which is not in {}: it does not describe this image; \
             regenerate it (closureInfo's registration of the image's contents), or leave it out to have \
             the registrations computed; nothing was written",
            file.display(),
            r.path,
            c.source_store_path.display()
        );
    }
    let in_db: HashSet<String> = d.db.paths.iter().map(|p| p.path.clone()).collect();
    d.file_rows = rows.into_iter().filter(|r| !in_db.contains(&r.path)).collect();
    d.file = Some(file);
    Ok(d)
}

/// Keep only the registrations of the paths `keep` holds (full store paths), with their
/// references and derivation outputs; the extra columns' rows stay aligned.
pub fn retain_paths(db: &mut SourceDb, keep: &dyn Fn(&str) -> bool) {
    let mask: Vec<bool> = db.paths.iter().map(|p| keep(&p.path)).collect();
    retain_rows(&mut db.paths, &mut db.extra[0].rows, &mask);
    let mask: Vec<bool> = db.refs.iter().map(|(a, _)| keep(a)).collect();
    retain_rows(&mut db.refs, &mut db.extra[1].rows, &mask);
    let mask: Vec<bool> = db.outputs.iter().map(|(d, _, _)| keep(d)).collect();
    retain_rows(&mut db.outputs, &mut db.extra[2].rows, &mask);
}

/// Keep the rows of `rows` where `mask` is true, and the same rows of `extra` (a table's
/// extra columns, row by row with it, or empty).
fn retain_rows<T>(rows: &mut Vec<T>, extra: &mut Vec<Vec<rusqlite::types::Value>>, mask: &[bool]) {
    let mut keep = mask.iter().copied();
    rows.retain(|_| keep.next().unwrap_or(true));
    if extra.len() == mask.len() {
        let mut keep = mask.iter().copied();
        extra.retain(|_| keep.next().unwrap_or(true));
    }
}

/// What the target knows of the image's paths that neither the database nor the file
/// describes: every name registered there (the scan's other candidates), and the rows
/// and references of those among the image's paths.
#[derive(Default)]
pub struct InTarget {
    pub registered: HashSet<String>,
    pub rows: Vec<(ValidPath, Vec<String>)>,
}

/// Every image path's registration, and where it came from.
pub struct Complete {
    /// One registration per image path (and the image database's others, which the
    /// registering step leaves alone unless present).
    pub db: SourceDb,
    pub counts: Counts,
    /// The registration file, and the paths it described.
    pub file: Option<PathBuf>,
    pub from_file: HashSet<String>,
    /// Paths whose registration came from the image's database, complete.
    pub from_db: HashSet<String>,
}

impl Complete {
    /// How a path's registration is named in a message: where it came from.
    pub fn origin_of(&self, path: &str) -> String {
        if self.from_file.contains(path) {
            match &self.file {
                Some(f) => format!("registered by {}", f.display()),
                None => "registered by a registration file".to_string(),
            }
        } else if self.from_db.contains(path) {
            "registered by the image's database".to_string()
        } else {
            "computed from the image's copy".to_string()
        }
    }
}

/// The image paths (`source`, names) the target does not hold valid and nothing describes.
pub fn undescribed<'a>(d: &Described, source: &'a [OsString]) -> Vec<&'a OsString> {
    let known: HashSet<&str> =
        d.db.paths
            .iter()
            .map(ValidPath::name)
            .chain(d.file_rows.iter().map(|r| store_name(&r.path)))
            .collect();
    source
        .iter()
        .filter(|n| n.to_str().is_none_or(|n| !known.contains(n)))
        .collect()
}

/// What a seed would take from where, before it looks at the target: the paths that
/// neither the database nor the file describes count as computed.
pub fn expected(d: &Described, source: &[OsString]) -> Counts {
    let names: HashSet<&str> = source.iter().filter_map(|n| n.to_str()).collect();
    Counts {
        database: d.db.paths.iter().filter(|p| names.contains(p.name())).count(),
        file: d.file_rows.len(),
        computed: undescribed(d, source).len(),
        already_valid: 0,
    }
}

/// Complete the image's registrations (see the module's doc): the described ones, the
/// target's for paths valid there, and the rest computed on `jobs` threads.
pub fn complete(
    d: Described,
    c: &Checked,
    source: &[OsString],
    target: InTarget,
    jobs: usize,
    stop: &(dyn Fn() -> bool + Sync),
    log: &Log,
) -> Result<Complete> {
    let names: HashSet<&str> = source.iter().filter_map(|n| n.to_str()).collect();
    let undescribed = undescribed(&d, source);
    let mut out = Complete {
        from_db: d.db.paths.iter().map(|p| p.path.clone()).collect(),
        counts: Counts {
            database: d.db.paths.iter().filter(|p| names.contains(p.name())).count(),
            file: d.file_rows.len(),
            ..Counts::default()
        },
        file: d.file.clone(),
        from_file: d.file_rows.iter().map(|r| r.path.clone()).collect(),
        db: d.db,
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |t| t.as_secs() as i64);
    for r in d.file_rows {
        push(
            &mut out.db,
            ValidPath {
                path: r.path.clone(),
                hash: r.hash,
                registration_time: now,
                deriver: r.deriver,
                nar_size: i64::try_from(r.nar_size).ok().filter(|n| *n != 0),
                ultimate: None,
                sigs: None,
                ca: None,
            },
            r.references,
        );
    }
    let valid_rows: HashMap<String, (ValidPath, Vec<String>)> = target
        .rows
        .into_iter()
        .map(|(p, r)| (p.name().to_string(), (p, r)))
        .collect();
    let mut to_compute = Vec::new();
    for n in undescribed {
        match n.to_str().and_then(|s| valid_rows.get(s)) {
            Some((p, refs)) => {
                out.counts.already_valid += 1;
                push(&mut out.db, p.clone(), refs.clone());
            }
            None => to_compute.push(n.clone()),
        }
    }
    if to_compute.is_empty() {
        return Ok(out);
    }
    warn_computing(&d_summary(d.has_db, d.dangling, to_compute.len(), source.len()), c, log);
    let cands = crate::engines::nar::Candidates::new(
        names
            .iter()
            .copied()
            .chain(target.registered.iter().map(String::as_str)),
    );
    let scanned = crate::engines::nar::scan_all(c.source_store.as_fd(), &to_compute, &cands, jobs, stop)
        .with_context(|| format!("cannot compute the registrations of {}", c.source_store_path.display()))?;
    for (name, s) in scanned {
        let path = format!("{STORE_DIR}{}", name.to_string_lossy());
        let refs = match derivation_inputs(c, &name) {
            Some(inputs) => inputs,
            None => s.references.iter().map(|r| format!("{STORE_DIR}{r}")).collect(),
        };
        push(
            &mut out.db,
            ValidPath {
                path,
                hash: s.nar.hash,
                registration_time: now,
                deriver: None,
                nar_size: i64::try_from(s.nar.size).ok(),
                ultimate: None,
                sigs: None,
                ca: None,
            },
            refs,
        );
        out.counts.computed += 1;
    }
    Ok(out)
}

/// A store derivation's references, as Nix registers them: its inputs
/// ([`crate::engines::derivation`]). `None` for any other path, which is scanned. A `.drv` is a few
/// KiB of text, read a second time here (its scan could not tell its inputs from its
/// outputs).
fn derivation_inputs(c: &Checked, name: &OsString) -> Option<Vec<String>> {
    use nix::fcntl::{openat, OFlag};
    if !name.as_encoded_bytes().ends_with(b".drv") {
        return None;
    }
    let fd = openat(
        c.source_store.as_fd(),
        name.as_os_str(),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    let f = std::fs::File::from(fd);
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, 64 << 20), &mut text).ok()?;
    crate::engines::derivation::inputs(&text)
}

/// Why registrations are computed, in one line's words.
fn d_summary(has_db: bool, dangling: usize, n: usize, total: usize) -> String {
    if !has_db {
        return format!("the image has no Nix database: the registrations of its {n} store paths");
    }
    let mut why = format!("the image's Nix database does not describe {n} of its {total} store paths");
    if dangling > 0 {
        why.push_str(&format!(
            " ({dangling} listed with references to paths it does not list)"
        ));
    }
    why + ": their registrations"
}

fn warn_computing(why: &str, c: &Checked, log: &Log) {
    log.warn(&format!(
        "{why} are computed from their contents in {} (NAR hash, size and references, as Nix registers a \
         build's output; no deriver or signatures)",
        c.source_store_path.display()
    ));
}

/// Add one registration and its references (full store paths).
fn push(db: &mut SourceDb, p: ValidPath, refs: Vec<String>) {
    for r in refs {
        db.refs.push((p.path.clone(), r));
    }
    db.paths.push(p);
}

/// The first path (a store path name) of the closure of `name` that is not valid, by the
/// references of `db`; `None` if all of it is valid: what a profile may be switched to.
pub fn first_invalid<'a>(db: &'a SourceDb, name: &'a str, valid: &dyn Fn(&str) -> bool) -> Option<&'a str> {
    let mut refs: HashMap<&str, Vec<&str>> = HashMap::new();
    for (a, b) in &db.refs {
        refs.entry(store_name(a)).or_default().push(store_name(b));
    }
    let mut seen = HashSet::from([name]);
    let mut todo = vec![name];
    while let Some(n) = todo.pop() {
        if !valid(n) {
            return Some(n);
        }
        for r in refs.get(n).into_iter().flatten() {
            if seen.insert(r) {
                todo.push(r);
            }
        }
    }
    None
}
