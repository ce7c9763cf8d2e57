//! A new, empty Nix database, for a target that has none when the image has none either:
//! exactly what Nix 2.8 makes for a new store, so that every Nix the pods run opens it as
//! its own.
//!
//! Nix 2.8's `LocalStore` finds no `schema` file (schema 0: "new store"), opens
//! `db.sqlite` with `SQLITE_OPEN_CREATE`, sets `pragma foreign_keys = 1` and
//! `pragma synchronous = normal` (per connection, nothing kept in the file), the journal
//! mode (`truncate`, or `wal` by default), runs its `schema.sql`, then writes the `schema`
//! file with `writeFile(schemaPath, (format("%1%") % nixSchemaVersion).str())`: the two
//! bytes `10`, no newline, mode 0666 less the umask. The page size is SQLite's default
//! (4096). A database made here is left in rollback-journal mode, which Nix opens with
//! `use-sqlite-wal = false` (a shared network disk) and with the default alike.

use std::io::Write;
use std::os::fd::BorrowedFd;
use std::path::Path;

use anyhow::{bail, Context, Result};
use nix::fcntl::{openat, OFlag};
use nix::sys::stat::Mode;
use rusqlite::{Connection, OpenFlags};

use super::schema::{check_schema, Side};
use super::vfs::InDir;
use super::SCHEMA_VERSION;

/// Nix's `src/libstore/schema.sql` at tag 2.8.0, verbatim. (Later Nix adds a comment on
/// `hash` and, in 2026, drops the `IndexReferrer` index; schema 10 either way.)
pub const NIX_SCHEMA_SQL: &str = r#"create table if not exists ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer, -- null implies "false"
    sigs             text, -- space-separated
    ca               text -- if not null, an assertion that the path is content-addressed; see ValidPathInfo
);

create table if not exists Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
);

create index if not exists IndexReferrer on Refs(referrer);
create index if not exists IndexReference on Refs(reference);

-- Paths can refer to themselves, causing a tuple (N, N) in the Refs
-- table.  This causes a deletion of the corresponding row in
-- ValidPaths to cause a foreign key constraint violation (due to `on
-- delete restrict' on the `reference' column).  Therefore, explicitly
-- get rid of self-references.
create trigger if not exists DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end;

create table if not exists DerivationOutputs (
    drv  integer not null,
    id   text not null, -- symbolic output id, usually "out"
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
);

create index if not exists IndexDerivationOutputs on DerivationOutputs(path);
"#;

/// Create an empty Nix database `dst_name` in the target directory `dst_dir_fd` (shown as
/// `dst_dir`; the name must not exist: the caller makes it appear atomically), as Nix 2.8
/// creates a new store's, in rollback-journal mode.
pub fn create_empty(dst_dir_fd: BorrowedFd, dst_dir: &Path, dst_name: &str) -> Result<()> {
    let dst = dst_dir.join(dst_name);
    if crate::base::dirfd::lstat_at(dst_dir_fd, dst_name)?.is_some() {
        bail!("cannot create {}: it exists", dst.display());
    }
    let at = InDir::new(dst_dir_fd, dst_dir, false)?;
    let db = Connection::open_with_flags_and_vfs(
        at.path(dst_name),
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        at.vfs,
    )
    .with_context(|| format!("cannot create {}", dst.display()))?;
    let made = (|| -> rusqlite::Result<String> {
        db.pragma_update(None, "foreign_keys", 1)?;
        db.pragma_update(None, "synchronous", "normal")?;
        let mode: String = db.query_row("PRAGMA journal_mode = DELETE", [], |r| r.get(0))?;
        db.execute_batch(NIX_SCHEMA_SQL)?;
        Ok(mode)
    })()
    .with_context(|| format!("cannot create {}", dst.display()))?;
    if !made.eq_ignore_ascii_case("delete") {
        bail!(
            "cannot create {} in rollback-journal mode (it is {made})",
            dst.display()
        );
    }
    check_schema(&db, &dst, Side::Target)?;
    db.close()
        .map_err(|(_, e)| e)
        .with_context(|| format!("cannot create {}", dst.display()))
}

/// Write the `schema` file Nix 2.8 writes next to a new database: `10`, no newline, mode
/// 0666 less the umask, in the database directory `db_dir_fd` (shown as `shown`). Written
/// under a temporary name and linked into place, so no Nix ever reads it half written
/// (an empty `schema` is "corrupt" to Nix); one that exists is left as it is.
pub fn write_schema_file(db_dir_fd: BorrowedFd, shown: &Path) -> Result<()> {
    let path = shown.join("schema");
    let tmp = crate::base::dirfd::temp_name(std::ffi::OsStr::new("schema"));
    let fd = openat(
        db_dir_fd,
        tmp.as_os_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o666),
    )
    .with_context(|| format!("cannot create {}", path.display()))?;
    let written = std::fs::File::from(fd)
        .write_all(SCHEMA_VERSION.as_bytes())
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            match nix::unistd::linkat(
                db_dir_fd,
                tmp.as_os_str(),
                db_dir_fd,
                "schema",
                nix::fcntl::AtFlags::empty(),
            ) {
                Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
                Err(e) => Err(e.into()),
            }
        });
    let _ = nix::unistd::unlinkat(db_dir_fd, tmp.as_os_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    written.with_context(|| format!("cannot create {}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    /// The schema file's bytes, and one that exists is kept.
    #[test]
    fn the_schema_file_is_nix_s() {
        let d = tempfile::tempdir().unwrap();
        let fd = crate::base::dirfd::open_root(d.path()).unwrap();
        write_schema_file(fd.as_fd(), d.path()).unwrap();
        assert_eq!(std::fs::read(d.path().join("schema")).unwrap(), b"10");
        std::fs::write(d.path().join("schema"), b"9").unwrap();
        write_schema_file(fd.as_fd(), d.path()).unwrap();
        assert_eq!(std::fs::read(d.path().join("schema")).unwrap(), b"9");
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "no temporary left");
    }

    /// An empty database with Nix's tables, in rollback mode; an existing name is refused.
    #[test]
    fn an_empty_database_is_made_once() {
        let d = tempfile::tempdir().unwrap();
        let fd = crate::base::dirfd::open_root(d.path()).unwrap();
        create_empty(fd.as_fd(), d.path(), "db.sqlite").unwrap();
        assert!(!super::super::is_wal(fd.as_fd(), "db.sqlite", d.path()).unwrap());
        let c = Connection::open(d.path().join("db.sqlite")).unwrap();
        let n: i64 = c
            .query_row("SELECT count(*) FROM sqlite_master WHERE type = 'table'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(n, 4, "ValidPaths, sqlite_sequence, Refs, DerivationOutputs");
        assert!(create_empty(fd.as_fd(), d.path(), "db.sqlite").is_err());
        assert_eq!(std::fs::read_dir(d.path()).unwrap().count(), 1, "no journal left");
    }
}
