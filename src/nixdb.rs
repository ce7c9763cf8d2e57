//! The Nix database (`var/nix/db/db.sqlite`, schema 10): what makes store paths valid.
//!
//! A store path on disk but not in `ValidPaths` is invalid to Nix, and the next garbage
//! collection in any pod deletes it. So nix-seed registers what it copies, without a `nix`
//! binary:
//!
//! - **First seed** (the target has no database): a consistent copy of the image's
//!   database made with SQLite's backup API (never the raw files: the image's database may
//!   be in WAL mode with committed transactions only in `db.sqlite-wal`), left in
//!   rollback-journal mode, plus the `schema` file.
//! - **Later seeds**: every valid path of the image that is present in the target store
//!   but not registered there gets its `ValidPaths` row (copied verbatim: hash,
//!   registrationTime, deriver, narSize, ultimate, sigs, ca), its `Refs` and, for a `.drv`,
//!   its `DerivationOutputs`, all in one `BEGIN IMMEDIATE` transaction, registered last,
//!   after the content is complete on disk.
//!
//! Journal mode and locking, matched to the target's Nix clients: Nix with
//! `use-sqlite-wal = false` (what a shared network disk needs: WAL does not work across
//! hosts) opens the database with SQLite's `unix-dotfile` VFS (a `db.sqlite.lock`
//! directory) in `truncate` journal mode, and cannot open a WAL database at all; Nix with
//! the default setting uses POSIX locks and converts the database to WAL when it opens it.
//! Mixing dotfile and POSIX-lock clients on one database corrupts it. So nix-seed reads the
//! journal mode from the database header: WAL → default VFS (and a warning on a network
//! filesystem); rollback journal → `unix-dotfile` and `truncate`, like
//! `use-sqlite-wal = false`. A database nix-seed creates is in rollback mode, which both
//! kinds of clients can open.

use std::collections::{HashMap, HashSet};
use std::ffi::{CStr, OsStr};
use std::io::Read;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use crate::dirfd::lstat_at;

/// The database directory, relative to var/.
pub const DB_DIR: &str = "nix/db";
pub const DB_FILE: &str = "db.sqlite";
pub const SCHEMA_VERSION: &str = "10";
/// Nix 2.26's record that the CA-derivations migration ran on this database: it belongs
/// with the database, so it is written together with a database nix-seed creates and
/// never added next to one it did not create.
pub const CA_SCHEMA: &str = "ca-schema";

/// Which entries of `var/nix/db` the var/ walk copies: only `schema`. The database itself
/// is written by [`create`] (a backup), never copied as files, and `ca-schema` with it
/// (see [`CA_SCHEMA`]); `big-lock`, `db.sqlite-shm`, `-wal`, `-journal`, `reserved` and
/// `*.lock` are runtime files.
pub fn keep_db_entry(name: &[u8]) -> bool {
    name == b"schema"
}

/// Whether `rel` (relative to var/) is inside the database directory; returns the part
/// below it.
pub fn db_relative(rel: &Path) -> Option<&Path> {
    rel.strip_prefix(DB_DIR).ok()
}

/// One `ValidPaths` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPath {
    pub path: String,
    pub hash: String,
    pub registration_time: i64,
    pub deriver: Option<String>,
    pub nar_size: Option<i64>,
    pub ultimate: Option<i64>,
    pub sigs: Option<String>,
    pub ca: Option<String>,
}

impl ValidPath {
    /// The store path's name (`/nix/store/<name>`).
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// The image's registrations.
#[derive(Debug, Default)]
pub struct SourceDb {
    pub paths: Vec<ValidPath>,
    /// (referrer, reference) store paths.
    pub refs: Vec<(String, String)>,
    /// (drv, output id, output path).
    pub outputs: Vec<(String, String, String)>,
    /// Columns beyond Nix's schema 10 (Determinate Nix's `provenance`...) of `ValidPaths`,
    /// `Refs` and `DerivationOutputs`, row by row with `paths`, `refs` and `outputs`.
    pub extra: [Extra; 3],
}

/// A table's columns beyond Nix's schema 10, and their values row by row.
#[derive(Debug, Default, Clone)]
pub struct Extra {
    pub cols: Vec<String>,
    pub rows: Vec<Vec<rusqlite::types::Value>>,
}

impl Extra {
    /// The values of `cols` (a subset of `self.cols`) in row `i`.
    fn values(&self, i: usize, cols: &[String]) -> Vec<rusqlite::types::Value> {
        cols.iter()
            .map(|c| {
                let k = self.cols.iter().position(|x| x == c);
                k.and_then(|k| self.rows.get(i)?.get(k).cloned())
                    .unwrap_or(rusqlite::types::Value::Null)
            })
            .collect()
    }
}

impl SourceDb {
    pub fn by_name(&self) -> HashMap<&str, &ValidPath> {
        self.paths.iter().map(|p| (p.name(), p)).collect()
    }

    /// The tops of the image's closure: valid paths no other valid path refers to. Rooting
    /// them keeps the whole closure alive.
    pub fn tops(&self) -> Vec<&ValidPath> {
        let referenced: HashSet<&str> = self
            .refs
            .iter()
            .filter(|(a, b)| a != b)
            .map(|(_, b)| b.as_str())
            .collect();
        self.paths
            .iter()
            .filter(|p| !referenced.contains(p.path.as_str()))
            .collect()
    }
}

/// Header bytes 18 and 19 are 2 for a WAL database, 1 for a rollback-journal one. `name`
/// inside `dir` (shown as `db`), not following a symlink.
pub fn is_wal(dir: BorrowedFd, name: &str, db: &Path) -> Result<bool> {
    let mut h = [0u8; 20];
    let fd = nix::fcntl::openat(
        dir,
        name,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .with_context(|| format!("cannot open {}", db.display()))?;
    let mut f = std::fs::File::from(fd);
    if f.read(&mut h)? < 20 {
        return Ok(false); // empty or new: no journal mode yet
    }
    Ok(h[18] == 2 && h[19] == 2)
}

/// Nix's schema-10 tables and columns that nix-seed reads and writes, by name.
const TABLES: [(&str, &[&str]); 3] = [
    (
        "ValidPaths",
        &[
            "id",
            "path",
            "hash",
            "registrationTime",
            "deriver",
            "narSize",
            "ultimate",
            "sigs",
            "ca",
        ],
    ),
    ("Refs", &["referrer", "reference"]),
    ("DerivationOutputs", &["drv", "id", "path"]),
];

/// Whose database is checked: the fix an error names differs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Image,
    Target,
}

/// Check that `conn` has Nix's schema-10 tables and columns (by name: newer Nix adds
/// columns, e.g. Determinate Nix's `provenance`, tables, e.g. 2.26's `SchemaMigrations`,
/// and drops indexes, e.g. `IndexReferrer`; nix-seed relies on none of its indexes by
/// name). Returns, per table of [`TABLES`], the columns beyond those. A target's extra
/// column must be nullable or have a default: nix-seed fills only the ones the image has.
fn check_schema(conn: &Connection, db: &Path, side: Side) -> Result<[Vec<String>; 3]> {
    let fix = match side {
        Side::Image => "build the image's /nix with Nix (schema 10)",
        Side::Target => "restore it from a backup, or move it away and seed every image again",
    };
    let mut extra: [Vec<String>; 3] = Default::default();
    for (k, (table, cols)) in TABLES.iter().enumerate() {
        let mut st = conn
            .prepare(&format!("PRAGMA table_info({table})"))
            .with_context(|| format!("cannot read {}", db.display()))?;
        // (name, notnull, default)
        let have: Vec<(String, bool, bool)> = st
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(3)? != 0,
                    r.get::<_, rusqlite::types::Value>(4)? != rusqlite::types::Value::Null,
                ))
            })?
            .collect::<Result<_, _>>()
            .with_context(|| format!("cannot read {}", db.display()))?;
        if have.is_empty() {
            bail!("{} has no table {table}: not a Nix database; {fix}", db.display());
        }
        for c in cols.iter() {
            if !have.iter().any(|(n, _, _)| n == c) {
                bail!(
                    "{}: table {table} has no column {c} (it has {}): not Nix's schema 10; {fix}",
                    db.display(),
                    have.iter().map(|(n, _, _)| n.as_str()).collect::<Vec<_>>().join(", ")
                );
            }
        }
        for (n, notnull, default) in &have {
            if cols.contains(&n.as_str()) {
                continue;
            }
            if side == Side::Target && *notnull && !*default {
                bail!(
                    "{}: table {table} has a column {n} that is NOT NULL without a default, which nix-seed \
                     cannot fill: refusing to change it; register with the Nix that made this database",
                    db.display()
                );
            }
            extra[k].push(n.clone());
        }
    }
    Ok(extra)
}

/// `name` as an SQL identifier.
fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `, t."a", t."b"` for the columns `cols` of the table alias `t`.
fn select_extra(t: &str, cols: &[String]) -> String {
    cols.iter().map(|c| format!(", {t}.{}", ident(c))).collect()
}

fn read_schema_file(dir: BorrowedFd, shown: &Path) -> Result<Option<String>> {
    match crate::dirfd::lstat_at(dir, "schema")? {
        None => Ok(None),
        Some(_) => {
            let fd = nix::fcntl::openat(
                dir,
                "schema",
                nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NOFOLLOW | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .with_context(|| format!("cannot open {}/schema", shown.display()))?;
            let mut s = String::new();
            std::fs::File::from(fd).take(64).read_to_string(&mut s)?;
            Ok(Some(s.trim().to_string()))
        }
    }
}

/// Open the image's database read-only, changing nothing in the image (which may be a
/// read-only filesystem, and when it is not, must stay as it is):
/// - no `-wal` file, or an empty one: everything is in the main file; open it
///   `immutable=1` (no locks, no journal or WAL files looked for, created or removed). A
///   non-empty `-journal` (a crash in the middle of a write) is refused: its rollback would
///   need a write.
/// - a non-empty `-wal` file: its committed transactions must be read. The `unix-none` VFS
///   (no file locks: nothing writes the image's database while it is seeded, and a
///   read-only descriptor cannot take the lock WAL's exclusive mode wants) in exclusive
///   locking mode keeps the wal-index in heap memory instead of a `-shm` file, and
///   `SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE` keeps SQLite from even trying to checkpoint the
///   WAL into the image's database and delete it when the connection closes (what removed
///   an empty `-wal` from writable images: the read-only flag alone does not stop it).
fn open_source(db: &Path) -> Result<Connection> {
    let side = |suffix: &str| {
        let mut p = db.as_os_str().to_owned();
        p.push(suffix);
        PathBuf::from(p)
    };
    let ro = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let wal_len = std::fs::symlink_metadata(side("-wal")).map_or(0, |m| m.len());
    let conn = if wal_len > 0 {
        let c = Connection::open_with_flags_and_vfs(db, ro, c"unix-none")
            .with_context(|| format!("cannot open the image's database {}", db.display()))?;
        c.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .with_context(|| format!("cannot open the image's database {}", db.display()))?;
        c.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .with_context(|| format!("cannot read the image's database {}", db.display()))?;
        c
    } else {
        if std::fs::metadata(side("-journal")).is_ok_and(|m| m.len() > 0) {
            bail!(
                "{}-journal is not empty (the image's Nix was killed while writing): run any \
                 nix-store command in the image once to roll it back, then rebuild the image",
                db.display()
            );
        }
        Connection::open_with_flags(uri_immutable(db), ro | OpenFlags::SQLITE_OPEN_URI)
            .with_context(|| format!("cannot open the image's database {}", db.display()))?
    };
    // The first read maps the database (and its WAL): fail here with the path named.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0))
        .with_context(|| format!("cannot read the image's database {}", db.display()))?;
    Ok(conn)
}

/// `file:<path>?immutable=1`, the path percent-encoded where SQLite's URI syntax needs it.
fn uri_immutable(db: &Path) -> String {
    let mut s = String::from("file:");
    for &b in db.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-._~".contains(&b) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s.push_str("?immutable=1");
    s
}

/// Read the image's database. Opened read-only in exclusive locking mode, so a WAL
/// database is read together with its `-wal` file through heap memory: no `-shm` or `-wal`
/// file is created in the image. `None` if the image has no database.
pub fn read_source(db_dir: &Path) -> Result<Option<SourceDb>> {
    let db = db_dir.join(DB_FILE);
    if !db.exists() {
        return Ok(None);
    }
    let dir = crate::dirfd::open_root(db_dir)?;
    if let Some(v) = read_schema_file(dir.as_fd(), db_dir)? {
        if v != SCHEMA_VERSION {
            bail!(
                "{}/schema is {v}: nix-seed knows Nix's schema {SCHEMA_VERSION} only",
                db_dir.display()
            );
        }
    }
    let conn = open_source(&db)?;
    let [xp, xr, xo] = check_schema(&conn, &db, Side::Image)?;
    let ctx = || format!("cannot read the image's database {}", db.display());
    let value = |r: &rusqlite::Row, from: usize, n: usize| -> rusqlite::Result<Vec<rusqlite::types::Value>> {
        (from..from + n).map(|i| r.get(i)).collect()
    };
    let mut st = conn
        .prepare(&format!(
            "SELECT v.path, v.hash, v.registrationTime, v.deriver, v.narSize, v.ultimate, v.sigs, v.ca{} \
             FROM ValidPaths v",
            select_extra("v", &xp)
        ))
        .with_context(ctx)?;
    let (paths, path_extra): (Vec<_>, Vec<_>) = st
        .query_map([], |r| {
            Ok((
                ValidPath {
                    path: r.get(0)?,
                    hash: r.get(1)?,
                    registration_time: r.get(2)?,
                    deriver: r.get(3)?,
                    nar_size: r.get(4)?,
                    ultimate: r.get(5)?,
                    sigs: r.get(6)?,
                    ca: r.get(7)?,
                },
                value(r, 8, xp.len())?,
            ))
        })?
        .collect::<Result<Vec<_>, _>>()
        .with_context(ctx)?
        .into_iter()
        .unzip();
    let mut st = conn
        .prepare(&format!(
            "SELECT a.path, b.path{} FROM Refs r JOIN ValidPaths a ON a.id = r.referrer \
             JOIN ValidPaths b ON b.id = r.reference",
            select_extra("r", &xr)
        ))
        .with_context(ctx)?;
    let (refs, ref_extra): (Vec<_>, Vec<_>) = st
        .query_map([], |r| Ok(((r.get(0)?, r.get(1)?), value(r, 2, xr.len())?)))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(ctx)?
        .into_iter()
        .unzip();
    let mut st = conn
        .prepare(&format!(
            "SELECT v.path, d.id, d.path{} FROM DerivationOutputs d JOIN ValidPaths v ON v.id = d.drv",
            select_extra("d", &xo)
        ))
        .with_context(ctx)?;
    let (outputs, output_extra): (Vec<_>, Vec<_>) = st
        .query_map([], |r| Ok(((r.get(0)?, r.get(1)?, r.get(2)?), value(r, 3, xo.len())?)))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(ctx)?
        .into_iter()
        .unzip();
    Ok(Some(SourceDb {
        paths,
        refs,
        outputs,
        extra: [
            Extra {
                cols: xp,
                rows: path_extra,
            },
            Extra {
                cols: xr,
                rows: ref_extra,
            },
            Extra {
                cols: xo,
                rows: output_extra,
            },
        ],
    }))
}

/// Write a copy of the image's database to `dst_name` in the target directory
/// `dst_dir_fd` (shown as `dst_dir`; the name must not exist, the caller makes it appear
/// atomically) in rollback-journal mode, keeping the registrations of the paths the target
/// holds (`holds`, by name) whose references are all kept too: an image's database may
/// list paths its store lacks, and a path whose closure is incomplete must not be valid.
/// Everything else the image's Nix recorded (schema, realisations of what is kept) stays.
pub fn create(
    src_db_dir: &Path,
    dst_dir_fd: BorrowedFd,
    dst_dir: &Path,
    dst_name: &str,
    holds: &dyn Fn(&str) -> bool,
) -> Result<()> {
    let src = src_db_dir.join(DB_FILE);
    let dst = dst_dir.join(dst_name);
    let from = open_source(&src)?;
    let at = InDir::new(dst_dir_fd, dst_dir, false)?;
    let mut to = Connection::open_with_flags_and_vfs(
        at.path(dst_name),
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        at.vfs,
    )
    .with_context(|| format!("cannot create {}", dst.display()))?;
    {
        let b = rusqlite::backup::Backup::new(&from, &mut to)?;
        b.run_to_completion(1024, Duration::ZERO, None)
            .with_context(|| format!("cannot copy {} to {}", src.display(), dst.display()))?;
    }
    // The backup keeps the image's journal mode in the header; a shared store wants a
    // rollback journal (Nix with use-sqlite-wal = false cannot open a WAL database).
    let mode: String = to.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("delete") {
        bail!("cannot switch {} to a rollback journal (still {mode})", dst.display());
    }
    check_schema(&to, &dst, Side::Target)?;
    drop_unheld(&mut to, holds).with_context(|| format!("cannot prepare {}", dst.display()))?;
    to.close().map_err(|(_, e)| e)?;
    Ok(())
}

/// Delete from a database nix-seed just created the registrations of paths the target does
/// not hold, and of every path referring to one of those (transitively); the rest of the
/// image's records of them (derivation outputs, realisations) go by Nix's own cascades.
fn drop_unheld(db: &mut Connection, holds: &dyn Fn(&str) -> bool) -> Result<()> {
    db.pragma_update(None, "foreign_keys", "ON")?;
    let tx = db.transaction()?;
    tx.execute_batch("CREATE TEMP TABLE nix_seed_drop (id INTEGER PRIMARY KEY)")?;
    {
        let mut all = tx.prepare("SELECT id, path FROM ValidPaths")?;
        let rows: Vec<(i64, String)> = all
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        let mut add = tx.prepare("INSERT INTO nix_seed_drop (id) VALUES (?1)")?;
        for (id, path) in rows {
            if !holds(path.rsplit('/').next().unwrap_or(&path)) {
                add.execute([id])?;
            }
        }
    }
    // Referrers of what goes, until nothing more is added.
    while tx.execute(
        "INSERT OR IGNORE INTO nix_seed_drop (id) SELECT referrer FROM Refs \
         WHERE reference IN (SELECT id FROM nix_seed_drop)",
        [],
    )? > 0
    {}
    tx.execute_batch(
        "DELETE FROM Refs WHERE referrer IN (SELECT id FROM nix_seed_drop); \
         DELETE FROM ValidPaths WHERE id IN (SELECT id FROM nix_seed_drop); \
         DROP TABLE nix_seed_drop;",
    )?;
    tx.commit()?;
    Ok(())
}

/// How SQLite reaches files in a directory of the target.
///
/// SQLite opens files by path, resolving symlinks in it, and it creates the journal, the
/// dotfile lock directory (`db.sqlite.lock`) and the WAL index by that path at every
/// transaction, for as long as the connection is open. A pod can swap a symlink in for
/// `var`, `var/nix` or `var/nix/db` at any of those moments, which would send those writes
/// outside the target. So SQLite gets `/proc/self/fd/<N>/<name>`, N a descriptor of the
/// directory nix-seed opened without following symlinks, through a copy of SQLite's VFS
/// whose full-pathname step keeps that path as it is (SQLite's own would resolve the
/// `/proc` link back to the path): the kernel resolves every file SQLite opens or creates
/// through the descriptor. Without `/proc` (a bare chroot), the plain path and SQLite's
/// VFS, as the only option left.
struct InDir {
    /// The directory SQLite's paths go through (kept open as long as the connection).
    _dir: Option<std::os::fd::OwnedFd>,
    /// What SQLite gets for that directory: `/proc/self/fd/<N>`, or its plain path.
    sqlite_dir: PathBuf,
    vfs: &'static CStr,
}

impl InDir {
    fn new(dir: BorrowedFd, shown: &Path, dotfile: bool) -> Result<InDir> {
        use std::os::fd::AsRawFd;
        let base = if dotfile { c"unix-dotfile" } else { c"unix" };
        let fd = dir
            .try_clone_to_owned()
            .with_context(|| format!("cannot open {}", shown.display()))?;
        let proc = format!("/proc/self/fd/{}", fd.as_raw_fd());
        let same = match (nix::sys::stat::stat(proc.as_str()), nix::sys::stat::fstat(fd.as_fd())) {
            (Ok(a), Ok(b)) => (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino),
            _ => false,
        };
        match fd_vfs::get(base) {
            Some(vfs) if same => Ok(InDir {
                _dir: Some(fd),
                sqlite_dir: PathBuf::from(proc),
                vfs,
            }),
            _ => Ok(InDir {
                _dir: None,
                sqlite_dir: shown.to_path_buf(),
                vfs: base,
            }),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.sqlite_dir.join(name)
    }
}

/// Copies of SQLite's unix VFSes (`nix-seed-unix`, `nix-seed-unix-dotfile`) that take an
/// absolute path as it is, where SQLite's resolve every symlink in it (see [`InDir`]).
/// Everything else (opening, locking, the dotfile lock, shared memory) is SQLite's own.
mod fd_vfs {
    use std::ffi::{c_char, c_int, CStr};
    use std::sync::OnceLock;

    use rusqlite::ffi;

    unsafe extern "C" fn full_pathname(
        _vfs: *mut ffi::sqlite3_vfs,
        name: *const c_char,
        n_out: c_int,
        out: *mut c_char,
    ) -> c_int {
        // SAFETY: SQLite passes a NUL-terminated name and an output buffer of n_out bytes.
        let bytes = unsafe { CStr::from_ptr(name) }.to_bytes_with_nul();
        if bytes.first() != Some(&b'/') || bytes.len() > usize::try_from(n_out).unwrap_or(0) {
            return ffi::SQLITE_CANTOPEN;
        }
        // SAFETY: checked above that `out` has room for the name and its NUL.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr().cast::<c_char>(), out, bytes.len()) };
        ffi::SQLITE_OK
    }

    fn register(base: &CStr, name: &'static CStr) -> bool {
        // SAFETY: sqlite3_vfs_find returns a registered VFS (never freed) or null; the copy
        // is leaked, so it outlives every connection, as SQLite requires.
        unsafe {
            let b = ffi::sqlite3_vfs_find(base.as_ptr());
            if b.is_null() {
                return false;
            }
            let mut v = std::ptr::read(b);
            v.zName = name.as_ptr();
            v.pNext = std::ptr::null_mut();
            v.xFullPathname = Some(full_pathname);
            ffi::sqlite3_vfs_register(Box::leak(Box::new(v)), 0) == ffi::SQLITE_OK
        }
    }

    /// The copy of `base` (`unix` or `unix-dotfile`), registered on first use.
    pub fn get(base: &CStr) -> Option<&'static CStr> {
        static UNIX: OnceLock<bool> = OnceLock::new();
        static DOTFILE: OnceLock<bool> = OnceLock::new();
        let (cell, base, name) = if base == c"unix-dotfile" {
            (&DOTFILE, c"unix-dotfile", c"nix-seed-unix-dotfile")
        } else {
            (&UNIX, c"unix", c"nix-seed-unix")
        };
        cell.get_or_init(|| register(base, name)).then_some(name)
    }
}

/// The target's database, opened the way its Nix clients open it.
pub struct TargetDb {
    pub conn: Connection,
    /// The journal mode read from the header when it was opened (and the VFS chosen by it).
    pub wal: bool,
    pub path: PathBuf,
    /// Columns beyond Nix's schema 10, per table of [`TABLES`].
    extra: [Vec<String>; 3],
    /// `var/nix/db`, to read the header again and to reopen.
    dir: std::os::fd::OwnedFd,
    shown: PathBuf,
    read_only: bool,
    /// Dropped after `conn`: SQLite's paths go through it.
    _dir: InDir,
}

/// Open `db_dir/db.sqlite` of the target (db_dir opened without following symlinks
/// first; SQLite itself needs a path), with the VFS its journal mode needs *now* (see
/// the module's doc). Refuses a schema other than 10. A pod's Nix can change the journal
/// mode at any time (default Nix converts a rollback database to WAL when it opens it):
/// open it right before using it ([`register_in_target`]).
pub fn open_target(db_dir_fd: BorrowedFd, db_dir: &Path, read_only: bool) -> Result<TargetDb> {
    match read_schema_file(db_dir_fd, db_dir)? {
        Some(v) if v == SCHEMA_VERSION => {}
        Some(v) => bail!(
            "{}/schema is {v}: nix-seed writes Nix's schema {SCHEMA_VERSION} only; nothing was registered",
            db_dir.display()
        ),
        None => {}
    }
    if lstat_at(db_dir_fd, DB_FILE)?.is_none_or(|st| crate::dirfd::file_type(&st) != nix::sys::stat::SFlag::S_IFREG) {
        bail!(
            "{}/{DB_FILE} is not a regular file: refusing to open it",
            db_dir.display()
        );
    }
    let path = db_dir.join(DB_FILE);
    let wal = is_wal(db_dir_fd, DB_FILE, &path)?;
    let mut flags = OpenFlags::SQLITE_OPEN_NO_MUTEX;
    flags |= if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    };
    let at = InDir::new(db_dir_fd, db_dir, !wal)?;
    let mut conn = Connection::open_with_flags_and_vfs(at.path(DB_FILE), flags, at.vfs)
        .with_context(|| format!("cannot open the target's database {}", path.display()))?;
    conn.busy_handler(Some(busy))?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    if !wal && !read_only {
        conn.pragma_update(None, "journal_mode", "TRUNCATE").map_err(|e| {
            let corrupt = matches!(&e, rusqlite::Error::SqliteFailure(f, _)
                if matches!(f.code, rusqlite::ErrorCode::NotADatabase | rusqlite::ErrorCode::DatabaseCorrupt));
            let e = anyhow::Error::from(e).context(format!("cannot open the target's database {}", path.display()));
            if corrupt {
                e.context(format!(
                    "{} is corrupt or not an SQLite database: restore it from a backup, or move it away and \
                     seed every image again",
                    path.display()
                ))
            } else {
                e
            }
        })?;
    }
    let extra = check_schema(&conn, &path, Side::Target)?;
    Ok(TargetDb {
        conn,
        wal,
        path,
        extra,
        dir: db_dir_fd
            .try_clone_to_owned()
            .with_context(|| format!("cannot open {}", db_dir.display()))?,
        shown: db_dir.to_path_buf(),
        read_only,
        _dir: at,
    })
}

/// What [`register_in_target`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Registered {
    /// Store paths registered.
    pub count: usize,
    /// Present store paths left unregistered, each with the reference that is neither
    /// valid in the target nor registered with it (for a path referring to a skipped one,
    /// that path): (store path, reference), sorted.
    pub skipped: Vec<(String, String)>,
}

/// How many times [`register_in_target`] tries again when the journal mode changed under it.
const MODE_RETRIES: usize = 3;

/// Register `names` (store path names present and complete in the target store) of the
/// image's `src` in the target database of `db_dir` (shown as `shown`), opened at this
/// moment with the VFS its journal mode needs now, in one `BEGIN IMMEDIATE` transaction
/// (see [`TargetDb::register`]). If the open or the transaction fails and the header's
/// journal mode is no longer the one the database was opened with (a pod's Nix converted
/// it meanwhile), opens it again with the matching VFS and tries again (up to 3 times).
pub fn register_in_target(
    db_dir: BorrowedFd,
    shown: &Path,
    src: &SourceDb,
    names: &HashSet<&str>,
    abort: &dyn Fn() -> bool,
) -> Result<Registered> {
    let path = shown.join(DB_FILE);
    let mut tries = 0;
    loop {
        let before = is_wal(db_dir, DB_FILE, &path)?;
        let e = match open_target(db_dir, shown, false).and_then(|mut db| db.register(src, names, abort)) {
            Ok(r) => return Ok(r),
            Err(e) => e,
        };
        if abort() || !is_wal(db_dir, DB_FILE, &path).is_ok_and(|w| w != before) {
            return Err(e);
        }
        if tries == MODE_RETRIES {
            return Err(e.context(format!(
                "{}: its journal mode changed {} times while nix-seed registered: pods run Nix with \
                 different use-sqlite-wal settings; set use-sqlite-wal = false in every pod's nix.conf",
                path.display(),
                tries + 1
            )));
        }
        tries += 1;
    }
}

impl TargetDb {
    /// The database's directory (`var/nix/db`), as opened (a new descriptor).
    pub fn dir(&self) -> Result<std::os::fd::OwnedFd> {
        self.dir
            .try_clone()
            .with_context(|| format!("cannot open {}", self.shown.display()))
    }

    /// How the database's directory is shown.
    pub fn shown(&self) -> &Path {
        &self.shown
    }

    /// Whether the header's journal mode is no longer the one this connection was opened for.
    fn mode_changed(&self) -> bool {
        is_wal(self.dir.as_fd(), DB_FILE, &self.path).is_ok_and(|w| w != self.wal)
    }

    /// Names of the registered store paths. If the read fails because the journal mode
    /// changed since the database was opened, read through a new connection.
    pub fn registered(&self) -> Result<HashSet<String>> {
        match self.registered_here() {
            Err(_) if self.mode_changed() => {
                open_target(self.dir.as_fd(), &self.shown, self.read_only)?.registered_here()
            }
            r => r,
        }
    }

    fn registered_here(&self) -> Result<HashSet<String>> {
        let mut st = self
            .conn
            .prepare("SELECT path FROM ValidPaths")
            .with_context(|| format!("cannot read the target's database {}", self.path.display()))?;
        let v = st
            .query_map([], |r| r.get::<_, String>(0))?
            .map(|p| p.map(|p| p.rsplit('/').next().unwrap_or(&p).to_string()))
            .collect::<Result<HashSet<_>, _>>()
            .with_context(|| format!("cannot read the target's database {}", self.path.display()))?;
        Ok(v)
    }

    /// Registered hash and narSize of a store path.
    pub fn hash_of(&self, path: &str) -> Result<Option<(String, Option<i64>)>> {
        Ok(self
            .conn
            .query_row("SELECT hash, narSize FROM ValidPaths WHERE path = ?1", [path], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
    }

    /// All registrations (path, hash, narSize).
    pub fn all(&self) -> Result<Vec<(String, String, Option<i64>)>> {
        let mut st = self
            .conn
            .prepare("SELECT path, hash, narSize FROM ValidPaths ORDER BY path")?;
        let v = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(v)
    }

    /// Register `names` (store path names of the image, present and complete on disk) in
    /// one transaction: their `ValidPaths` rows (the columns beyond schema 10 that both
    /// databases have copied too), their `Refs` and, for a `.drv`, its
    /// `DerivationOutputs`. Nothing outside `names` gets a row. A path whose reference is
    /// neither valid in the target nor registered in this transaction is left out, and so
    /// is every path referring to one left out: returned in `skipped`. `abort` is checked
    /// just before committing.
    pub fn register(&mut self, src: &SourceDb, names: &HashSet<&str>, abort: &dyn Fn() -> bool) -> Result<Registered> {
        use rusqlite::ToSql;
        let path = self.path.clone();
        let wal = self.wal;
        let common: Vec<Vec<String>> = (0..3)
            .map(|k| {
                src.extra[k]
                    .cols
                    .iter()
                    .filter(|c| self.extra[k].contains(c))
                    .cloned()
                    .collect()
            })
            .collect();
        let dir = self.dir.try_clone()?;
        let tx = self
            .conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .with_context(|| format!("cannot lock the target's database {}", path.display()))?;
        // Checked again with the lock held: a rollback-mode connection (dotfile lock) on a
        // database a default-configured pod has just converted to WAL must not write.
        if is_wal(dir.as_fd(), DB_FILE, &path)? != wal {
            bail!(
                "{}: its journal mode changed since it was opened (a pod's Nix converted it)",
                path.display()
            );
        }
        let mut ids: HashMap<&str, i64> = HashMap::new();
        let mut skipped: Vec<(String, String)>;
        {
            let mut exists = tx.prepare("SELECT id FROM ValidPaths WHERE path = ?1")?;
            let mut id_of = |p: &str| -> Result<Option<i64>> {
                exists
                    .query_row([p], |r| r.get::<_, i64>(0))
                    .optional()
                    .with_context(|| format!("cannot read the target's database {}", path.display()))
            };
            // What this transaction adds: present, not yet registered.
            let mut in_target: HashMap<&str, Option<i64>> = HashMap::new();
            let mut new: HashSet<&str> = HashSet::new();
            for p in src.paths.iter().filter(|p| names.contains(p.name())) {
                let id = id_of(&p.path)?;
                in_target.insert(&p.path, id);
                if id.is_none() {
                    new.insert(&p.path);
                }
            }
            // Left out: a path with a reference neither valid nor added, until none is.
            let mut out: HashMap<&str, &str> = HashMap::new();
            loop {
                let mut changed = false;
                for (a, b) in &src.refs {
                    if a == b || !new.contains(a.as_str()) || out.contains_key(a.as_str()) {
                        continue;
                    }
                    let ok = if new.contains(b.as_str()) {
                        !out.contains_key(b.as_str())
                    } else {
                        let id = match in_target.get(b.as_str()) {
                            Some(id) => *id,
                            None => {
                                let id = id_of(b)?;
                                in_target.insert(b, id);
                                id
                            }
                        };
                        id.is_some()
                    };
                    if !ok {
                        out.insert(a, b);
                        changed = true;
                    }
                }
                if !changed {
                    break;
                }
            }
            skipped = out.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
            skipped.sort();

            let cols = |fixed: &str, extra: &[String]| -> (String, String) {
                let n = fixed.split(',').count() + extra.len();
                let names = std::iter::once(fixed.to_string())
                    .chain(extra.iter().map(|c| ident(c)))
                    .collect::<Vec<_>>()
                    .join(", ");
                let marks = (1..=n).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", ");
                (names, marks)
            };
            let (c, m) = cols(
                "path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca",
                &common[0],
            );
            let mut insert = tx.prepare(&format!("INSERT INTO ValidPaths ({c}) VALUES ({m})"))?;
            for (i, p) in src.paths.iter().enumerate() {
                if !new.contains(p.path.as_str())
                    || out.contains_key(p.path.as_str())
                    || ids.contains_key(p.path.as_str())
                {
                    continue;
                }
                let extra = src.extra[0].values(i, &common[0]);
                let mut v: Vec<&dyn ToSql> = vec![
                    &p.path,
                    &p.hash,
                    &p.registration_time,
                    &p.deriver,
                    &p.nar_size,
                    &p.ultimate,
                    &p.sigs,
                    &p.ca,
                ];
                v.extend(extra.iter().map(|x| x as &dyn ToSql));
                insert
                    .execute(&*v)
                    .with_context(|| format!("cannot register {} in {}", p.path, path.display()))?;
                ids.insert(p.path.as_str(), tx.last_insert_rowid());
            }
            let (c, m) = cols("referrer, reference", &common[1]);
            let mut ref_insert = tx.prepare(&format!("INSERT OR IGNORE INTO Refs ({c}) VALUES ({m})"))?;
            for (i, (a, b)) in src.refs.iter().enumerate() {
                let Some(&ida) = ids.get(a.as_str()) else { continue };
                let idb = match ids.get(b.as_str()) {
                    Some(&i) => i,
                    None => in_target.get(b.as_str()).copied().flatten().with_context(|| {
                        format!(
                            "cannot register {a}: its reference {b} is not valid in the target; nothing was registered"
                        )
                    })?,
                };
                let extra = src.extra[1].values(i, &common[1]);
                let mut v: Vec<&dyn ToSql> = vec![&ida, &idb];
                v.extend(extra.iter().map(|x| x as &dyn ToSql));
                ref_insert.execute(&*v)?;
            }
            let (c, m) = cols("drv, id, path", &common[2]);
            let mut out_insert = tx.prepare(&format!("INSERT OR REPLACE INTO DerivationOutputs ({c}) VALUES ({m})"))?;
            for (i, (drv, id, out)) in src.outputs.iter().enumerate() {
                if let Some(drv_id) = ids.get(drv.as_str()) {
                    let extra = src.extra[2].values(i, &common[2]);
                    let mut v: Vec<&dyn ToSql> = vec![drv_id, id, out];
                    v.extend(extra.iter().map(|x| x as &dyn ToSql));
                    out_insert.execute(&*v)?;
                }
            }
        }
        if abort() {
            bail!("stopped before registering: nothing was registered");
        }
        tx.commit()
            .with_context(|| format!("cannot commit to the target's database {}", path.display()))?;
        Ok(Registered {
            count: ids.len(),
            skipped,
        })
    }
}

/// Filesystems on which SQLite's WAL mode cannot work between hosts (statfs f_type).
pub fn is_network_fs(fd: BorrowedFd) -> bool {
    const NETWORK: &[i64] = &[
        0x6969,     // NFS
        0x65735546, // FUSE (GlusterFS, CephFS-fuse, JuiceFS, sshfs, MooseFS...)
        0x00c36400, // CephFS
        0xff534d42, // CIFS
        0xfe534d42, // SMB2
        0x01021997, // 9P
        0x5346414f, // AFS
        0x01161970, // GFS2
        0x7461636f, // OCFS2
        0x0bd00bd0, // Lustre
    ];
    nix::sys::statfs::fstatfs(fd).is_ok_and(|s| NETWORK.contains(&{ s.filesystem_type().0 }))
}

/// Open `var/nix/db` of the target without following symlinks; `None` if absent.
pub fn open_db_dir(var: BorrowedFd, var_path: &Path) -> Result<Option<std::os::fd::OwnedFd>> {
    let Some(nix_dir) = crate::dirfd::open_dir_if_exists(var, "nix")
        .with_context(|| format!("cannot open {}/nix (a symlink?)", var_path.display()))?
    else {
        return Ok(None);
    };
    crate::dirfd::open_dir_if_exists(nix_dir.as_fd(), "db")
        .with_context(|| format!("cannot open {}/nix/db (a symlink?)", var_path.display()))
}

/// Whether `name` has a regular file in `dir`.
pub fn has_file(dir: BorrowedFd, name: &OsStr) -> bool {
    lstat_at(dir, name)
        .ok()
        .flatten()
        .is_some_and(|st| crate::dirfd::file_type(&st) == nix::sys::stat::SFlag::S_IFREG)
}

/// `name` as a `&str` if it is UTF-8 (store path names always are).
pub fn utf8(name: &OsStr) -> Option<&str> {
    std::str::from_utf8(name.as_bytes()).ok()
}

/// What the busy handler says and how long it waits (one target database per process).
struct BusyCtx {
    lock_path: PathBuf,
    timeout: Duration,
    log: std::sync::Arc<crate::progress::Log>,
}

static BUSY: std::sync::OnceLock<BusyCtx> = std::sync::OnceLock::new();

/// Set what the database busy handler reports and how long it waits.
pub fn set_busy_context(db_dir: &Path, timeout: Duration, log: std::sync::Arc<crate::progress::Log>) {
    let _ = BUSY.set(BusyCtx {
        lock_path: db_dir.join(format!("{DB_FILE}.lock")),
        timeout,
        log,
    });
}

/// SQLite's busy handler: retry every 100 ms, say every 5 s what is waited for, give up
/// after the lock timeout, measured on the clock (a retry on a network filesystem takes
/// time too). SQLite then returns SQLITE_BUSY, which `lock::db_busy_as_timeout` turns into
/// a lock timeout (exit 3) naming the lock.
fn busy(count: i32) -> bool {
    thread_local! {
        static SINCE: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
    }
    // SQLite calls with 0 at the start of each wait.
    let since = SINCE.with(|s| match s.get() {
        Some(t) if count > 0 => t,
        _ => {
            let now = std::time::Instant::now();
            s.set(Some(now));
            now
        }
    });
    let waited = since.elapsed();
    let Some(ctx) = BUSY.get() else {
        std::thread::sleep(Duration::from_millis(100));
        return count < 100;
    };
    if waited >= ctx.timeout {
        return false;
    }
    if count > 0 && count % 50 == 0 {
        ctx.log.warn(&format!(
            "waiting {}s for the Nix database lock ({} exists with the unix-dotfile VFS): a Nix process \
             holds the database, or one was killed while holding it; if no Nix process uses this store, \
             rmdir it",
            waited.as_secs(),
            ctx.lock_path.display()
        ));
    }
    std::thread::sleep(Duration::from_millis(100).min(ctx.timeout - waited));
    true
}

/// `TARGET/.nix-seed/db-lock`: present while a seeder may hold the target database's
/// lock. With the `unix-dotfile` VFS that lock is the directory `db.sqlite.lock`, which a
/// process killed while holding it leaves behind, and every Nix process of every pod then
/// blocks. A later seeder holds the nix-seed lock, so the one that wrote the record is dead
/// (or was taken over): if `db.sqlite.lock` exists and stays the same for a grace period, it
/// is that seeder's and is removed with a warning. Without a record nix-seed never removes
/// it (a live, or killed, Nix process's lock is not ours to break).
pub struct DbWindow {
    state: std::os::fd::OwnedFd,
}

pub const DB_WINDOW_RECORD: &str = "db-lock";

impl DbWindow {
    pub fn enter(
        state: std::os::fd::OwnedFd,
        db_dir: Option<BorrowedFd>,
        db_path: &Path,
        log: &crate::progress::Log,
    ) -> Result<DbWindow> {
        use nix::fcntl::{openat, OFlag};
        use nix::sys::stat::Mode;
        if let (Some(db), true) = (db_dir, lstat_at(state.as_fd(), DB_WINDOW_RECORD)?.is_some()) {
            let lock_name = format!("{DB_FILE}.lock");
            let first = lstat_at(db, lock_name.as_str())?;
            if let Some(first) = first {
                // A live Nix process holds this lock for a transaction: milliseconds. Give
                // it a grace period before deciding the lock is the dead seeder's.
                let grace = Duration::from_secs(5);
                let t0 = std::time::Instant::now();
                let mut gone = false;
                while t0.elapsed() < grace {
                    std::thread::sleep(Duration::from_millis(100));
                    match lstat_at(db, lock_name.as_str())? {
                        None => {
                            gone = true;
                            break;
                        }
                        Some(now)
                            if (now.st_ino, now.st_ctime, now.st_ctime_nsec)
                                != (first.st_ino, first.st_ctime, first.st_ctime_nsec) =>
                        {
                            gone = true;
                            break;
                        }
                        Some(_) => {}
                    }
                }
                if !gone {
                    match nix::unistd::unlinkat(db, lock_name.as_str(), nix::unistd::UnlinkatFlags::RemoveDir) {
                        Ok(()) | Err(nix::errno::Errno::ENOENT) => log.warn(&format!(
                            "removed {}/{lock_name}: left by a seeder killed while it held the Nix database \
                             (it recorded that in .nix-seed/{DB_WINDOW_RECORD})",
                            db_path.display()
                        )),
                        Err(e) => log.warn(&format!(
                            "cannot remove the stale {}/{lock_name}: {e}",
                            db_path.display()
                        )),
                    }
                }
            }
        }
        let fd = openat(
            state.as_fd(),
            DB_WINDOW_RECORD,
            OFlag::O_WRONLY
                | OFlag::O_CREAT
                | OFlag::O_TRUNC
                | OFlag::O_NOFOLLOW
                | OFlag::O_CLOEXEC
                | OFlag::O_NONBLOCK,
            Mode::from_bits_truncate(0o644),
        )
        .context("cannot write .nix-seed/db-lock")?;
        use std::io::Write;
        let _ = writeln!(std::fs::File::from(fd), "pid={}", std::process::id());
        Ok(DbWindow { state })
    }
}

impl Drop for DbWindow {
    fn drop(&mut self) {
        let _ = nix::unistd::unlinkat(
            self.state.as_fd(),
            DB_WINDOW_RECORD,
            nix::unistd::UnlinkatFlags::NoRemoveDir,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Nix's schema 10, as `nix-store` 2.8 creates it.
    const SCHEMA: &str = "
        CREATE TABLE ValidPaths (id integer primary key autoincrement not null, path text unique not null,
            hash text not null, registrationTime integer not null, deriver text, narSize integer,
            ultimate integer, sigs text, ca text);
        CREATE TABLE Refs (referrer integer not null, reference integer not null, primary key (referrer, reference),
            foreign key (referrer) references ValidPaths(id) on delete cascade,
            foreign key (reference) references ValidPaths(id) on delete restrict);
        CREATE INDEX IndexReferrer on Refs(referrer);
        CREATE INDEX IndexReference on Refs(reference);
        CREATE TABLE DerivationOutputs (drv integer not null, id text not null, path text not null,
            primary key (drv, id), foreign key (drv) references ValidPaths(id) on delete cascade);
        CREATE INDEX IndexDerivationOutputs on DerivationOutputs(path);";

    fn sp(name: &str) -> String {
        format!("/nix/store/{name}")
    }

    fn vp(name: &str) -> ValidPath {
        ValidPath {
            path: sp(name),
            hash: format!("sha256:{name}"),
            registration_time: 1,
            deriver: None,
            nar_size: Some(1),
            ultimate: None,
            sigs: None,
            ca: None,
        }
    }

    /// A target `var/nix/db` in a temporary directory with `registered` in it.
    fn target(registered: &[&str]) -> (tempfile::TempDir, std::os::fd::OwnedFd) {
        let tmp = tempfile::tempdir().unwrap();
        let c = Connection::open(tmp.path().join(DB_FILE)).unwrap();
        c.execute_batch(SCHEMA).unwrap();
        for n in registered {
            c.execute(
                "INSERT INTO ValidPaths (path, hash, registrationTime) VALUES (?1, 'sha256:x', 1)",
                [sp(n)],
            )
            .unwrap();
        }
        drop(c);
        let fd = crate::dirfd::open_root(tmp.path()).unwrap();
        (tmp, fd)
    }

    fn rows(dir: &Path, sql: &str) -> Vec<String> {
        let c = Connection::open(dir.join(DB_FILE)).unwrap();
        let mut st = c.prepare(sql).unwrap();
        let mut v: Vec<String> = st.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        v.sort();
        v
    }

    /// C.9: an image database listing paths its store lacks (slimmed images), and present
    /// paths whose references are neither valid nor added: only what the target holds gets
    /// a row, and what cannot be registered is left out (transitively) and reported, while
    /// the rest is committed.
    #[test]
    fn only_present_paths_with_valid_references_are_registered() {
        let (tmp, dir) = target(&["x-valid"]);
        let src = SourceDb {
            paths: ["a", "b", "c", "d", "e", "f-absent", "h.drv", "g-absent.drv"]
                .into_iter()
                .map(vp)
                .collect(),
            refs: [
                ("a", "x-valid"),
                ("a", "a"),
                ("b", "a"),
                ("c", "f-absent"),
                ("d", "c"),
                ("e", "d"),
                ("e", "e"),
                ("g-absent.drv", "a"),
            ]
            .into_iter()
            .map(|(a, b)| (sp(a), sp(b)))
            .collect(),
            outputs: vec![
                (sp("h.drv"), "out".into(), sp("f-absent")),
                (sp("g-absent.drv"), "out".into(), sp("a")),
            ],
            ..Default::default()
        };
        let names: HashSet<&str> = ["a", "b", "c", "d", "e", "h.drv", "x-valid"].into_iter().collect();
        let r = register_in_target(dir.as_fd(), tmp.path(), &src, &names, &|| false).unwrap();
        assert_eq!(r.count, 3);
        assert_eq!(
            r.skipped,
            vec![(sp("c"), sp("f-absent")), (sp("d"), sp("c")), (sp("e"), sp("d"))]
        );
        assert_eq!(
            rows(tmp.path(), "SELECT path FROM ValidPaths"),
            ["a", "b", "h.drv", "x-valid"].map(sp).to_vec()
        );
        assert_eq!(
            rows(
                tmp.path(),
                "SELECT a.path || ' ' || b.path FROM Refs r JOIN ValidPaths a ON a.id = r.referrer \
                 JOIN ValidPaths b ON b.id = r.reference"
            ),
            vec![
                format!("{} {}", sp("a"), sp("a")),
                format!("{} {}", sp("a"), sp("x-valid")),
                format!("{} {}", sp("b"), sp("a")),
            ]
        );
        // Only the present derivation's outputs (an output need not be valid, as in Nix).
        assert_eq!(
            rows(
                tmp.path(),
                "SELECT v.path || ' ' || d.id || ' ' || d.path FROM DerivationOutputs d JOIN ValidPaths v ON v.id = d.drv"
            ),
            vec![format!("{} out {}", sp("h.drv"), sp("f-absent"))]
        );
        // Again: nothing new; the skipped ones are still reported.
        let r = register_in_target(dir.as_fd(), tmp.path(), &src, &names, &|| false).unwrap();
        assert_eq!(r.count, 0);
        assert_eq!(r.skipped.len(), 3);
    }

    /// A.4: a target opened while in rollback mode (unix-dotfile VFS), converted to WAL by a
    /// default-configured Nix before registering: reading and registering still work.
    #[test]
    fn a_database_converted_to_wal_after_it_was_opened() {
        let (tmp, dir) = target(&["x-valid"]);
        let db = open_target(dir.as_fd(), tmp.path(), false).unwrap();
        assert!(!db.wal);
        let c = Connection::open(tmp.path().join(DB_FILE)).unwrap();
        let mode: String = c.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        drop(c);
        assert!(is_wal(dir.as_fd(), DB_FILE, tmp.path()).unwrap());
        assert!(db.registered().unwrap().contains("x-valid"));
        let src = SourceDb {
            paths: vec![vp("a")],
            refs: vec![(sp("a"), sp("x-valid"))],
            ..Default::default()
        };
        let names: HashSet<&str> = ["a"].into_iter().collect();
        let r = register_in_target(dir.as_fd(), tmp.path(), &src, &names, &|| false).unwrap();
        assert_eq!(
            r,
            Registered {
                count: 1,
                skipped: vec![]
            }
        );
        assert!(
            is_wal(dir.as_fd(), DB_FILE, tmp.path()).unwrap(),
            "the pods' journal mode is kept"
        );
        assert_eq!(
            rows(tmp.path(), "SELECT path FROM ValidPaths"),
            ["a", "x-valid"].map(sp).to_vec()
        );
    }
}
