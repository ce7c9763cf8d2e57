//! Nix's schema 10 as nix-seed reads and writes it: the row types, the tables and columns
//! checked by name (newer Nix adds columns and tables; nix-seed relies on none of its
//! indexes), the `schema` file and the journal mode in the header.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::os::fd::BorrowedFd;
use std::path::Path;

use anyhow::{bail, Context, Result};
use rusqlite::Connection;

use crate::base::error::Invalid;

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
    /// The row read by a `SELECT path, hash, registrationTime, deriver, narSize, ultimate,
    /// sigs, ca`, those columns starting at column `at`.
    pub(super) fn from_row(r: &rusqlite::Row, at: usize) -> rusqlite::Result<ValidPath> {
        Ok(ValidPath {
            path: r.get(at)?,
            hash: r.get(at + 1)?,
            registration_time: r.get(at + 2)?,
            deriver: r.get(at + 3)?,
            nar_size: r.get(at + 4)?,
            ultimate: r.get(at + 5)?,
            sigs: r.get(at + 6)?,
            ca: r.get(at + 7)?,
        })
    }

    /// The store path's name (`/nix/store/<name>`).
    pub fn name(&self) -> &str {
        crate::base::store_path::store_name(&self.path)
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
    /// Valid paths with a `Refs` row naming a reference id missing from `ValidPaths`:
    /// their references in `refs` are incomplete (store paths, sorted, each once).
    pub dangling: Vec<String>,
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
    pub(super) fn values(&self, i: usize, cols: &[String]) -> Vec<rusqlite::types::Value> {
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
pub(super) const TABLES: [(&str, &[&str]); 3] = [
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

/// What to do about an image whose database is not a Nix database.
pub(super) const NOT_A_DB_FIX: &str =
    "rebuild the image, or remove var/nix/db from it so nix-seed computes the registrations";

/// Whose database is checked: the fix an error names differs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    Image,
    Target,
}

/// Check that `conn` has Nix's schema-10 tables and columns (by name: newer Nix adds
/// columns, e.g. Determinate Nix's `provenance`, tables, e.g. 2.26's `SchemaMigrations`,
/// and drops indexes, e.g. `IndexReferrer`; nix-seed relies on none of its indexes by
/// name). Returns, per table of [`TABLES`], the columns beyond those. A target's extra
/// column must be nullable or have a default: nix-seed fills only the ones the image has.
pub(super) fn check_schema(conn: &Connection, db: &Path, side: Side) -> Result<[Vec<String>; 3]> {
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
        if have.is_empty() && side == Side::Image {
            return Err(Invalid(format!(
                "{} is not a Nix database (it has no table {table}): {NOT_A_DB_FIX}",
                db.display()
            ))
            .into());
        }
        if have.is_empty() {
            bail!("{} has no table {table}: not a Nix database; {fix}", db.display());
        }
        for c in cols.iter() {
            if !have.iter().any(|(n, _, _)| n == c) {
                let msg = format!(
                    "{}: table {table} has no column {c} (it has {}): not Nix's schema 10; {fix}",
                    db.display(),
                    have.iter().map(|(n, _, _)| n.as_str()).collect::<Vec<_>>().join(", ")
                );
                if side == Side::Image {
                    return Err(Invalid(msg).into());
                }
                bail!(msg);
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
pub(super) fn ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `, t."a", t."b"` for the columns `cols` of the table alias `t`.
pub(super) fn select_extra(t: &str, cols: &[String]) -> String {
    cols.iter().map(|c| format!(", {t}.{}", ident(c))).collect()
}

pub(super) fn read_schema_file(dir: BorrowedFd, shown: &Path) -> Result<Option<String>> {
    match crate::base::dirfd::lstat_at(dir, "schema")? {
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
