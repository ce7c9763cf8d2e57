//! The Nix database in `var/nix/db`.
//!
//! For now the database files are copied like the rest of var/ (first seed only: an
//! existing target database is never touched), minus Nix's runtime files. This policy is
//! kept here, apart from the var/ walk, because the database step is to become a
//! consistent SQLite copy plus a merge of new registrations.

use std::path::Path;

/// The database directory, relative to var/.
pub const DB_DIR: &str = "nix/db";

/// Which entries of `var/nix/db` are copied: the database, its WAL (it may hold committed
/// transactions not yet in the main file) and the schema version. Never `big-lock`,
/// `db.sqlite-shm` (shared memory of the image's own SQLite), `reserved` (Nix's GC
/// reserve) or a `*.lock` (a unix-dotfile lock directory would lock the copy forever).
pub fn keep_db_entry(name: &[u8]) -> bool {
    matches!(name, b"db.sqlite" | b"db.sqlite-wal" | b"schema")
}

/// Whether `rel` (relative to var/) is inside the database directory; returns the part
/// below it.
pub fn db_relative(rel: &Path) -> Option<&Path> {
    rel.strip_prefix(DB_DIR).ok()
}
