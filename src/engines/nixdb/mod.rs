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
//!
//! One file per job: `schema` (Nix's tables, checked by name; the row types), `source`
//! (reading the image's database, creating the target's first copy), `vfs` (how SQLite
//! reaches files through a directory descriptor: the database code's only `unsafe` and
//! FFI), `target` (opening the target's database and reading it), `register` (the
//! registering transaction, in named steps), `open` (opening it during a seed, inside the
//! `.nix-seed/db-lock` window), `lock` (the busy handler and the recovery of a dotfile lock
//! a killed seeder left behind), `reginfo` (closureInfo's registration files, for images
//! with no database or one short of their store).

use std::path::Path;

mod collect;
mod empty;
mod lock;
mod open;
pub mod reginfo;
mod register;
mod schema;
mod source;
mod target;
#[cfg(test)]
mod tests;
mod vfs;
mod walcopy;

pub use collect::Registrations;
pub use empty::{create_empty, write_schema_file, NIX_SCHEMA_SQL};
pub use lock::{set_busy_context, DbWindow, DB_WINDOW_RECORD};
pub use open::{busy_as_timeout, open_existing_db, recover_db_lock, refusal, with_db_dir, with_target_db};
pub use reginfo::{nix_base32_decode, nix_base32_encode, Registration};
pub use schema::{is_wal, Extra, SourceDb, ValidPath};
pub use source::{create, read_source};
pub use target::{open_db_dir, open_target, register_in_target, wal_on_network_fs, Graph, Registered, TargetDb};

pub use crate::base::layout::{DB_DIR, DB_FILE};
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
