//! The image's database: read without changing anything in the image, and copied (its
//! schema and settings, none of its rows) to make the target's first database.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rusqlite::{Connection, OpenFlags};

use super::schema::{check_schema, read_schema_file, select_extra, Extra, Side, SourceDb, ValidPath, NOT_A_DB_FIX};
use super::vfs::InDir;
use super::walcopy::{copy_with_wal, needs_copy, side, PrivateDir};
use super::{DB_FILE, SCHEMA_VERSION};
use crate::base::error::Invalid;

/// The image's database, open; with the private copy it was read from, if any (dropped
/// after the connection: fields drop in order).
struct Opened {
    conn: Connection,
    _copy: Option<PrivateDir>,
}

/// Open the image's database read-only, changing nothing in the image (which may be a
/// read-only filesystem, and when it is not, must stay as it is):
/// - no `-wal` file, or an empty one: everything is in the main file; open it
///   `immutable=1` (no locks, no journal or WAL files looked for, created or removed). A
///   non-empty `-journal` (a crash in the middle of a write) is refused: its rollback would
///   need a write.
/// - a non-empty `-wal` file without its `-shm` file, or in a directory nix-seed may not
///   write: SQLite would read it as if the WAL's transactions did not exist (see
///   [`super::walcopy`]); the two files are copied into a private directory and the copy
///   is opened read-write, so SQLite recovers the WAL there.
/// - a non-empty `-wal` file otherwise: its committed transactions must be read. The
///   `unix-none` VFS (no file locks: nothing writes the image's database while it is
///   seeded, and a read-only descriptor cannot take the lock WAL's exclusive mode wants) in
///   exclusive locking mode keeps the wal-index in heap memory instead of a `-shm` file,
///   and `SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE` keeps SQLite from even trying to checkpoint the
///   WAL into the image's database and delete it when the connection closes (what removed
///   an empty `-wal` from writable images: the read-only flag alone does not stop it).
///
/// A file that is not an SQLite database at all is refused as bad input (exit 2).
fn open_source(db: &Path) -> Result<Opened> {
    let ro = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let wal_len = std::fs::symlink_metadata(side(db, "-wal")).map_or(0, |m| m.len());
    let cannot_open = || format!("cannot open the image's database {}", db.display());
    let mut copy = None;
    let conn = if wal_len > 0 && needs_copy(db) {
        let (dir, at) = copy_with_wal(db)?;
        copy = Some(dir);
        let rw = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        Connection::open_with_flags(&at, rw).with_context(cannot_open)?
    } else if wal_len > 0 {
        let c = Connection::open_with_flags_and_vfs(db, ro, c"unix-none").with_context(cannot_open)?;
        c.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, true)
            .with_context(cannot_open)?;
        c.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(|e| not_a_database(e, db))?;
        c
    } else {
        if std::fs::metadata(side(db, "-journal")).is_ok_and(|m| m.len() > 0) {
            bail!(
                "{}-journal is not empty (the image's Nix was killed while writing): run any \
                 nix-store command in the image once to roll it back, then rebuild the image",
                db.display()
            );
        }
        Connection::open_with_flags(uri_immutable(db), ro | OpenFlags::SQLITE_OPEN_URI).with_context(cannot_open)?
    };
    // The first read maps the database (and its WAL): fail here with the path named.
    conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get::<_, i64>(0))
        .map_err(|e| not_a_database(e, db))?;
    Ok(Opened { conn, _copy: copy })
}

/// What SQLite says of a file that is not a database (or a damaged one): bad input, exit 2.
fn not_a_database(e: rusqlite::Error, db: &Path) -> anyhow::Error {
    use rusqlite::ErrorCode::{DatabaseCorrupt, NotADatabase};
    match e.sqlite_error_code() {
        Some(NotADatabase | DatabaseCorrupt) => {
            Invalid(format!("{} is not a Nix database ({e}): {NOT_A_DB_FIX}", db.display())).into()
        }
        _ => anyhow::Error::new(e).context(format!("cannot read the image's database {}", db.display())),
    }
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
    let dir = crate::base::dirfd::open_root(db_dir)?;
    if let Some(v) = read_schema_file(dir.as_fd(), db_dir)? {
        if v != SCHEMA_VERSION {
            bail!(
                "{}/schema is {v}: nix-seed knows Nix's schema {SCHEMA_VERSION} only",
                db_dir.display()
            );
        }
    }
    let opened = open_source(&db)?;
    let conn = &opened.conn;
    let [xp, xr, xo] = check_schema(conn, &db, Side::Image)?;
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
        .query_map([], |r| Ok((ValidPath::from_row(r, 0)?, value(r, 8, xp.len())?)))?
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
        dangling: dangling(conn).with_context(ctx)?,
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

/// The valid paths with a `Refs` row naming a reference that is not in `ValidPaths` (Nix
/// does not always enforce its foreign keys): the JOIN above drops that row, so their
/// references as read are incomplete. Sorted, each once. A `Refs` row whose referrer is
/// missing says nothing about a valid path's references: it is only dropped.
fn dangling(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut st = conn.prepare(
        "SELECT DISTINCT v.path FROM Refs r JOIN ValidPaths v ON v.id = r.referrer \
         WHERE NOT EXISTS (SELECT 1 FROM ValidPaths b WHERE b.id = r.reference) ORDER BY v.path",
    )?;
    let rows = st.query_map([], |r| r.get(0))?;
    rows.collect()
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
    let from = &from.conn;
    check_schema(from, &src, Side::Image)?;
    let at = InDir::new(dst_dir_fd, dst_dir, false)?;
    let mut to = Connection::open_with_flags_and_vfs(
        at.path(dst_name),
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        at.vfs,
    )
    .with_context(|| format!("cannot create {}", dst.display()))?;
    {
        let b = rusqlite::backup::Backup::new(from, &mut to)?;
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
/// not hold or whose references are not all in `ValidPaths`, and of every path referring
/// to one of those (transitively); the rest of the
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
            if !holds(crate::base::store_path::store_name(&path)) {
                add.execute([id])?;
            }
        }
    }
    // A path with a reference missing from ValidPaths (see `dangling`) has an incomplete
    // closure: it goes too; and a row whose referrer is missing is nobody's reference.
    tx.execute_batch(
        "INSERT OR IGNORE INTO nix_seed_drop (id) SELECT referrer FROM Refs \
         WHERE reference NOT IN (SELECT id FROM ValidPaths); \
         DELETE FROM Refs WHERE referrer NOT IN (SELECT id FROM ValidPaths);",
    )?;
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

#[cfg(test)]
#[path = "source_tests.rs"]
mod tests;
