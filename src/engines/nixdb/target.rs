//! The target's database: opened the way its Nix clients open it (the VFS its journal mode
//! needs at that moment), read, and registered in, in one `BEGIN IMMEDIATE` transaction.

use std::collections::HashSet;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::lock::busy;
use super::schema::{check_schema, is_wal, read_schema_file, Side, SourceDb, ValidPath};
use super::vfs::InDir;
use super::{DB_FILE, SCHEMA_VERSION};
use crate::base::dirfd::lstat_at;

/// The target's database, opened the way its Nix clients open it.
pub struct TargetDb {
    pub conn: Connection,
    /// The journal mode read from the header when it was opened (and the VFS chosen by it).
    pub wal: bool,
    pub path: PathBuf,
    /// Columns beyond Nix's schema 10, per table of [`TABLES`].
    pub(super) extra: [Vec<String>; 3],
    /// `var/nix/db`, to read the header again and to reopen.
    pub(super) dir: std::os::fd::OwnedFd,
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
    if lstat_at(db_dir_fd, DB_FILE)?
        .is_none_or(|st| crate::base::dirfd::file_type(&st) != nix::sys::stat::SFlag::S_IFREG)
    {
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
            .map(|p| p.map(|p| crate::base::store_path::store_name(&p).to_string()))
            .collect::<Result<HashSet<_>, _>>()
            .with_context(|| format!("cannot read the target's database {}", self.path.display()))?;
        Ok(v)
    }

    /// Every registered path with its NAR size, and the references between them, read in
    /// one read transaction (a consistent view). If the read fails because the journal
    /// mode changed since the database was opened, read through a new connection.
    pub fn graph(&self) -> Result<Graph> {
        match self.graph_here() {
            Err(_) if self.mode_changed() => open_target(self.dir.as_fd(), &self.shown, self.read_only)?.graph_here(),
            r => r,
        }
    }

    fn graph_here(&self) -> Result<Graph> {
        let ctx = || format!("cannot read the target's database {}", self.path.display());
        let tx = self.conn.unchecked_transaction().with_context(ctx)?;
        let mut index = std::collections::HashMap::new();
        let mut g = Graph::default();
        {
            let mut st = tx
                .prepare("SELECT id, path, narSize FROM ValidPaths")
                .with_context(ctx)?;
            let rows = st.query_map([], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<i64>>(2)?))
            });
            for row in rows.with_context(ctx)? {
                let (id, path, size) = row.with_context(ctx)?;
                index.insert(id, g.paths.len());
                g.paths.push(path);
                g.nar_size.push(size.and_then(|n| u64::try_from(n).ok()).unwrap_or(0));
            }
        }
        g.references = vec![Vec::new(); g.paths.len()];
        {
            let mut st = tx.prepare("SELECT referrer, reference FROM Refs").with_context(ctx)?;
            let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)));
            for row in rows.with_context(ctx)? {
                let (a, b) = row.with_context(ctx)?;
                if let (Some(&a), Some(&b)) = (index.get(&a), index.get(&b)) {
                    g.references[a].push(b);
                }
            }
        }
        tx.finish().with_context(ctx)?;
        Ok(g)
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

    /// The registrations (row, and references as store paths) of those of `paths` (store
    /// paths) that are valid here: what an image that does not describe a path it shares
    /// with the disk gets from the disk.
    pub fn registrations_of(&self, paths: &[String]) -> Result<Vec<(ValidPath, Vec<String>)>> {
        let ctx = || format!("cannot read the target's database {}", self.path.display());
        let tx = self.conn.unchecked_transaction().with_context(ctx)?;
        let mut out = Vec::new();
        {
            let mut row = tx
                .prepare(
                    "SELECT id, path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca \
                     FROM ValidPaths WHERE path = ?1",
                )
                .with_context(ctx)?;
            let mut refs = tx
                .prepare("SELECT v.path FROM Refs r JOIN ValidPaths v ON v.id = r.reference WHERE r.referrer = ?1")
                .with_context(ctx)?;
            for p in paths {
                let found = row
                    .query_row([p], |r| Ok((r.get::<_, i64>(0)?, ValidPath::from_row(r, 1)?)))
                    .optional()
                    .with_context(ctx)?;
                let Some((id, v)) = found else { continue };
                let r: Vec<String> = refs
                    .query_map([id], |r| r.get(0))
                    .with_context(ctx)?
                    .collect::<Result<_, _>>()
                    .with_context(ctx)?;
                out.push((v, r));
            }
        }
        tx.finish().with_context(ctx)?;
        Ok(out)
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
}

/// The registered paths and their references ([`TargetDb::graph`]): path `i` is
/// `paths[i]`, its NAR size `nar_size[i]`, the paths it refers to `references[i]`.
#[derive(Debug, Default)]
pub struct Graph {
    pub paths: Vec<String>,
    pub nar_size: Vec<u64>,
    pub references: Vec<Vec<usize>>,
}

/// Open `var/nix/db` of the target without following symlinks; `None` if absent.
pub fn open_db_dir(var: BorrowedFd, var_path: &Path) -> Result<Option<std::os::fd::OwnedFd>> {
    let Some(nix_dir) = crate::base::dirfd::open_dir_if_exists(var, "nix")
        .with_context(|| format!("cannot open {}/nix (a symlink?)", var_path.display()))?
    else {
        return Ok(None);
    };
    crate::base::dirfd::open_dir_if_exists(nix_dir.as_fd(), "db")
        .with_context(|| format!("cannot open {}/nix/db (a symlink?)", var_path.display()))
}

/// The warning for a target database in WAL mode on a network filesystem.
pub fn wal_on_network_fs(db: &std::path::Path) -> String {
    format!(
        "{} is in WAL mode on a network filesystem: every pod with use-sqlite-wal = false fails to open \
         it (\"unable to open database file\"), and WAL does not work across hosts; set use-sqlite-wal = \
         false in every pod's nix.conf, then, with no Nix process using the store, convert it back: \
         sqlite3 {} 'PRAGMA journal_mode=DELETE'",
        db.display(),
        db.display()
    )
}
