//! The target's first database, made inside var/ before anything makes it visible: a
//! copy of the image's (its registrations of what the target holds), or, for an image
//! without one, an empty database as Nix makes it; either under a temporary name, then
//! linked into place, never over a database that appeared meanwhile.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use anyhow::{Context, Result};
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::Mode;

use crate::base::dirfd::remove_tree_at;
use crate::base::layout::Layout;
use crate::base::preflight::Checked;
use crate::engines::nixdb;

/// Whether the target's var/ (`var`) has a database.
pub(super) fn has_db(var: BorrowedFd, var_path: &Path) -> Result<bool> {
    Ok(nixdb::open_db_dir(var, var_path)?
        .is_some_and(|d| crate::base::dirfd::has_file(d.as_fd(), OsStr::new(nixdb::DB_FILE))))
}

/// Create `var/nix/db/db.sqlite` in the target var/ at `var` (path `var_path`): a copy of
/// the image's when it has one (owner and mode follow the image's file; `holds` names the
/// store paths whose registrations it keeps), else an empty one (0644). Returns false if
/// a database appeared meanwhile.
pub(super) fn add_db(c: &Checked, var: BorrowedFd, var_path: &Path, holds: &dyn Fn(&str) -> bool) -> Result<bool> {
    let src_db_dir = Layout::new(&c.source_path).db_dir;
    let mk = |dir: BorrowedFd, name: &str| -> Result<std::os::fd::OwnedFd> {
        Ok(crate::base::dirfd::mkdir_open(dir, name, Mode::from_bits_truncate(0o755))?.0)
    };
    let nix_dir = mk(var, "nix").with_context(|| format!("cannot open {}/nix", var_path.display()))?;
    let db_dir = mk(nix_dir.as_fd(), "db").with_context(|| format!("cannot open {}/nix/db", var_path.display()))?;
    let db_path = var_path.join(nixdb::DB_DIR);
    let tmp = crate::base::dirfd::temp_name(OsStr::new(nixdb::DB_FILE))
        .into_string()
        .expect("an ASCII name");
    let image_db = src_db_dir.join(nixdb::DB_FILE);
    let image_has_db = std::fs::symlink_metadata(&image_db).is_ok();
    let made = if image_has_db {
        nixdb::create(&src_db_dir, db_dir.as_fd(), &db_path, &tmp, holds).and_then(|()| {
            let sst = nix::sys::stat::stat(&image_db)?;
            set_owner_mode(
                db_dir.as_fd(),
                &tmp,
                Some((sst.st_uid, sst.st_gid)),
                sst.st_mode & 0o7777,
            )
        })
    } else {
        nixdb::create_empty(db_dir.as_fd(), &db_path, &tmp)
            .and_then(|()| set_owner_mode(db_dir.as_fd(), &tmp, None, 0o644))
    };
    let linked = link_into_place(
        made.with_context(|| format!("cannot create {}/{}", db_path.display(), nixdb::DB_FILE)),
        db_dir.as_fd(),
        &db_path,
        &tmp,
    );
    // `schema` (10 if the image has none) and `ca-schema` (only if the image has one) belong
    // to the database just created: written with it, never over an existing file.
    if linked.as_ref().is_ok_and(|l| *l) {
        if !image_has_db {
            nixdb::write_schema_file(db_dir.as_fd(), &db_path)?;
            return linked;
        }
        let schema =
            std::fs::read(src_db_dir.join("schema")).unwrap_or_else(|_| nixdb::SCHEMA_VERSION.as_bytes().to_vec());
        add_file(db_dir.as_fd(), &db_path, "schema", &schema)?;
        if let Ok(ca) = std::fs::read(src_db_dir.join(nixdb::CA_SCHEMA)) {
            add_file(db_dir.as_fd(), &db_path, nixdb::CA_SCHEMA, &ca)?;
        }
    }
    linked
}

/// Owner (when given) and mode of the file `name` in `dir`, set on the open file:
/// fchmodat(AT_SYMLINK_NOFOLLOW) needs /proc, which a bare container may not have.
fn set_owner_mode(dir: BorrowedFd, name: &str, owner: Option<(u32, u32)>, mode: u32) -> Result<()> {
    let fd = openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    if let Some((uid, gid)) = owner {
        // Not root, or a filesystem that squashes root: the file keeps ours.
        let _ = nix::unistd::fchown(
            fd.as_fd(),
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        );
    }
    nix::sys::stat::fchmod(fd.as_fd(), Mode::from_bits_truncate(mode))?;
    Ok(())
}

/// The database made under the temporary name `tmp` (when `made` is Ok) linked into place
/// as `db.sqlite` in `db_dir`: true, or false if one appeared meanwhile. The temporary is
/// removed either way.
fn link_into_place(made: Result<()>, db_dir: BorrowedFd, db_path: &Path, tmp: &str) -> Result<bool> {
    let linked = made.and_then(
        |()| match nix::unistd::linkat(db_dir, tmp, db_dir, nixdb::DB_FILE, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::EEXIST) => Ok(false),
            Err(e) => {
                Err(anyhow::Error::from(e).context(format!("cannot create {}/{}", db_path.display(), nixdb::DB_FILE)))
            }
        },
    );
    let _ = remove_tree_at(db_dir, tmp);
    linked
}

/// Write `name` in `dir` (shown as `shown`) unless it exists.
fn add_file(dir: BorrowedFd, shown: &Path, name: &str, body: &[u8]) -> Result<()> {
    let fd = openat(
        dir,
        name,
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o644),
    );
    match fd {
        Ok(fd) => {
            use std::io::Write;
            std::fs::File::from(fd)
                .write_all(body)
                .with_context(|| format!("cannot write {}/{name}", shown.display()))
        }
        Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot create {}/{name}", shown.display())),
    }
}
