//! Applying an image's layers, in order, to a stage directory that stands for the image's
//! `/nix`: what a container runtime would show a container of the image, restricted to
//! `nix/store` and `nix/var`.
//!
//! - OCI whiteouts: `.wh.NAME` deletes NAME from the layers below; `.wh..wh..opq` empties
//!   its directory of what the layers below put there (not of what this layer puts there,
//!   in whatever order the layer lists them).
//! - Exact metadata: modes, numeric owners, mtimes (directories' set last, once nothing
//!   more is created in them), symlinks as they are, hardlinks as links.
//! - Store paths the caller says to skip (present and valid in the target) are not written:
//!   their names are kept, as empty placeholders, so the image's list of store paths is
//!   whole. A hardlink from a written path to a skipped one gets a copy of the target's.
//! - Everything is created through directory fds opened with `O_NOFOLLOW`, files with
//!   `O_EXCL`: an archive name that is absolute, holds `..`, or goes through a symlink (a
//!   symlinked `nix/` included) is refused as bad input, never followed.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use anyhow::{Context, Result};
use nix::errno::Errno;
use nix::fcntl::{openat, AtFlags, OFlag};
use nix::sys::stat::{fchmod, fstat, mkdirat, utimensat, Mode, SFlag, UtimensatFlags};
use nix::sys::time::TimeSpec;
use nix::unistd::{fchown, fchownat, linkat, symlinkat, unlinkat, Gid, Uid, UnlinkatFlags};

use crate::base::dirfd::{file_type, lstat_at, open_dir, remove_tree_at};
use crate::base::error::Invalid;
use crate::base::store_path::is_store_path_name;

pub(super) const WHITEOUT: &[u8] = b".wh.";
pub(super) const OPAQUE: &[u8] = b".wh..wh..opq";
/// Registration files a Nix image may keep beside `nix/` (see `steps::registrations`).
const REGISTRATION_FILES: &[&[u8]] = &[b"nix-path-registration", b".reginfo"];

#[derive(Debug, Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: i64,
}

/// What applying the layers wrote.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    pub files: u64,
    pub bytes: u64,
    /// Entries of store paths that were skipped (the target has them).
    pub skipped_entries: u64,
    /// Layers read past ([`Applier::layer_read_past`]): every entry one of a skipped store
    /// path's, read by its header only.
    pub layers_read_past: u64,
    /// chown was refused (not root): owners are the caller's.
    pub chown_denied: bool,
}

pub struct Applier<'a> {
    root: BorrowedFd<'a>,
    /// The image's `/`, for the registration files Nix images keep beside `nix/`.
    top: BorrowedFd<'a>,
    skip: &'a dyn Fn(&[u8]) -> bool,
    /// The target's store, for hardlinks into skipped store paths.
    target_store: Option<BorrowedFd<'a>>,
    /// The image's store path names as of the layers read so far.
    names: BTreeSet<Vec<u8>>,
    /// Directories' metadata, applied by [`Applier::finish`].
    dirs: BTreeMap<Vec<u8>, Meta>,
    /// What the current layer wrote (for its opaque markers) and which store names it
    /// brought.
    layer_written: HashSet<Vec<u8>>,
    cache: Option<(Vec<u8>, OwnedFd)>,
    buf: Vec<u8>,
    pub stats: Stats,
    /// For messages: the layer being read.
    layer: String,
}

fn bad(what: &str, name: &[u8], layer: &str) -> anyhow::Error {
    Invalid(format!(
        "image layer {layer}: entry {:?} {what}: refusing the image (nothing was written to the target)",
        String::from_utf8_lossy(name)
    ))
    .into()
}

/// An archive name as components, with `./` and empty components dropped; `None` for an
/// absolute name or one holding `..`.
pub(super) fn components(name: &[u8]) -> Option<Vec<&[u8]>> {
    if name.starts_with(b"/") {
        return None;
    }
    let mut out = Vec::new();
    for c in name.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return None,
            c => out.push(c),
        }
    }
    Some(out)
}

fn join(c: &[&[u8]]) -> Vec<u8> {
    c.join(&b'/')
}

fn os(b: &[u8]) -> &OsStr {
    OsStr::from_bytes(b)
}

impl<'a> Applier<'a> {
    /// `root` is the stage's `nix/` (it holds an empty `store/`), `top` its parent.
    pub fn new(
        top: BorrowedFd<'a>,
        root: BorrowedFd<'a>,
        skip: &'a dyn Fn(&[u8]) -> bool,
        target_store: Option<BorrowedFd<'a>>,
    ) -> Self {
        Applier {
            root,
            top,
            skip,
            target_store,
            names: BTreeSet::new(),
            // store/ as a runtime would make it when no layer describes it.
            dirs: BTreeMap::from([(
                b"store".to_vec(),
                Meta {
                    mode: 0o755,
                    uid: 0,
                    gid: 0,
                    mtime: 1,
                },
            )]),
            layer_written: HashSet::new(),
            cache: None,
            buf: vec![0; 256 * 1024],
            stats: Stats::default(),
            layer: String::new(),
        }
    }

    /// Forget every layer applied: the stage is as it was made (an empty `store/`).
    pub fn reset(&mut self) -> Result<()> {
        self.cache = None;
        // store/ is emptied, not replaced: the seed holds it open as its source's store.
        let store = open_dir(self.root, "store")?;
        for e in crate::base::dirfd::list(store.as_fd())? {
            remove_tree_at(store.as_fd(), &e.name)?;
        }
        remove_tree_at(self.root, "var")?;
        for n in REGISTRATION_FILES {
            self.clear(self.top, n)?;
        }
        self.names.clear();
        self.dirs.retain(|k, _| k == b"store");
        self.layer_written.clear();
        self.stats = Stats::default();
        Ok(())
    }

    /// A layer in a seekable, uncompressed file (`tar`, at its start) whose every entry
    /// belongs to a store path to skip (and `nix/`, `nix/store` themselves) is applied from
    /// its headers only, seeking past the data: its names are kept as for any skipped path.
    /// Returns false, having applied nothing, when any entry is something else (a whiteout,
    /// `nix/var`, another store path, a name to refuse) or the headers do not read: the
    /// caller then reads the layer whole, its digest checked.
    ///
    /// Why only whole layers: a layer's digest needs every byte, so a layer that is read
    /// past has none; nothing of it is written, and its headers are checked by their own
    /// checksums. One-layer-per-store-path images (dockerTools' `streamLayeredImage`,
    /// nix2container) then read only what the disk lacks.
    pub fn layer_read_past<R: Read + io::Seek>(&mut self, name: &str, tar: &mut R) -> Result<bool> {
        let all_skipped = (|| -> io::Result<bool> {
            let mut ar = tar::Archive::new(&mut *tar);
            for e in ar.entries_with_seek()? {
                let e = e?;
                if !self.is_read_past(&e.path_bytes(), e.header().entry_type()) {
                    return Ok(false);
                }
            }
            Ok(true)
        })();
        if !all_skipped.unwrap_or(false) {
            tar.seek(io::SeekFrom::Start(0))?;
            return Ok(false);
        }
        tar.seek(io::SeekFrom::Start(0))?;
        self.layer = name.to_owned();
        let mut ar = tar::Archive::new(tar);
        let entries = ar.entries_with_seek().map_err(|e| self.truncated(e))?;
        self.entries(entries)?;
        self.stats.layers_read_past += 1;
        Ok(true)
    }

    /// An entry [`Applier::entry`] would apply without reading its data or changing
    /// anything but the stage's names and its `nix/`, `nix/store` metadata.
    fn is_read_past(&self, raw: &[u8], kind: tar::EntryType) -> bool {
        let Some(comps) = components(raw) else {
            return false;
        };
        let Some(last) = comps.last() else {
            return true;
        };
        if *last == OPAQUE || last.starts_with(WHITEOUT) {
            return false;
        }
        match comps.as_slice() {
            [b"nix"] | [b"nix", b"store"] => kind.is_dir(),
            [b"nix", b"store", name, ..] => is_store_path_name(name) && (self.skip)(name),
            [b"nix", ..] => false,
            [top] => !REGISTRATION_FILES.contains(top),
            _ => true,
        }
    }

    /// Apply one layer (an uncompressed tar stream).
    pub fn layer<R: Read>(&mut self, name: &str, tar: R) -> Result<()> {
        self.layer = name.to_owned();
        let mut ar = tar::Archive::new(tar);
        let entries = ar.entries().map_err(|e| self.truncated(e))?;
        self.entries(entries)
    }

    /// Apply the entries of the layer named `self.layer`.
    fn entries<R: Read>(&mut self, entries: tar::Entries<R>) -> Result<()> {
        self.layer_written.clear();
        for e in entries {
            let mut e = e.map_err(|e| self.truncated(e))?;
            let path = e.path_bytes().into_owned();
            self.entry(&path, &mut e)?;
        }
        self.cache = None;
        Ok(())
    }

    fn truncated(&self, e: io::Error) -> anyhow::Error {
        Invalid(format!(
            "image layer {}: not a readable tar ({e}): the image is truncated or corrupt (nothing was written \
             to the target)",
            self.layer
        ))
        .into()
    }

    fn entry<R: Read>(&mut self, raw: &[u8], e: &mut tar::Entry<R>) -> Result<()> {
        let Some(comps) = components(raw) else {
            return Err(bad("is absolute or holds `..`", raw, &self.layer));
        };
        let Some((last, parent)) = comps.split_last() else {
            return Ok(());
        };
        // Whiteouts first: they may name nix/ itself or anything above it.
        if *last == OPAQUE {
            return self.opaque(parent);
        }
        if let Some(gone) = last.strip_prefix(WHITEOUT) {
            let mut c = parent.to_vec();
            c.push(gone);
            return self.whiteout(&c);
        }
        if comps[0] != b"nix" {
            if comps.len() == 1 && REGISTRATION_FILES.contains(&comps[0]) {
                self.registration_file(comps[0], e)?;
            }
            return Ok(());
        }
        let kind = e.header().entry_type();
        let rel = &comps[1..];
        if rel.len() <= 1 {
            // nix/ itself, nix/store, nix/var: directories, never links.
            if !kind.is_dir() {
                if rel.is_empty() || rel[0] == b"store" || rel[0] == b"var" {
                    return Err(bad(
                        "is not a directory (a link or file where Nix's root must be one)",
                        raw,
                        &self.layer,
                    ));
                }
                return Ok(());
            }
            if rel.len() == 1 && (rel[0] == b"store" || rel[0] == b"var") {
                let meta = self.meta(e)?;
                self.mkdir(rel, meta, raw)?;
            }
            return Ok(());
        }
        if rel[0] != b"store" && rel[0] != b"var" {
            return Ok(());
        }
        if rel[0] == b"store" {
            let name = rel[1];
            if is_store_path_name(name) {
                self.names.insert(name.to_vec());
                if (self.skip)(name) {
                    self.stats.skipped_entries += 1;
                    self.written(&rel[..2]);
                    return Ok(());
                }
            }
        }
        // Counted as the copy engine counts: entries of store paths.
        let counted = rel[0] == b"store" && is_store_path_name(rel[1]);
        if self.write(rel, raw, e, counted)? {
            self.written(rel);
        }
        Ok(())
    }

    /// Note that this layer holds `rel`, and so its directories: an opaque marker of this
    /// layer leaves them.
    fn written(&mut self, rel: &[&[u8]]) {
        for i in 1..=rel.len() {
            self.layer_written.insert(join(&rel[..i]));
        }
    }

    /// Create the entry `e` at `rel`; false if it is of a kind that is left out.
    fn write<R: Read>(&mut self, rel: &[&[u8]], raw: &[u8], e: &mut tar::Entry<R>, counted: bool) -> Result<bool> {
        let kind = e.header().entry_type();
        let meta = self.meta(e)?;
        let shown = || String::from_utf8_lossy(&join(rel)).into_owned();
        if kind.is_dir() {
            self.mkdir(rel, meta, raw)?;
            return Ok(true);
        }
        if kind.is_hard_link() {
            let link = e
                .link_name_bytes()
                .ok_or_else(|| bad("is a hardlink without a target", raw, &self.layer))?
                .into_owned();
            self.hardlink(rel, &link, raw)?;
            self.stats.files += u64::from(counted);
            return Ok(true);
        }
        let is_file = kind.is_file() || kind == tar::EntryType::Continuous;
        if !is_file && !kind.is_symlink() {
            if rel[0] == b"store" && !matches!(kind, tar::EntryType::XGlobalHeader | tar::EntryType::XHeader) {
                return Err(bad(
                    "is a device, fifo or other special file, which a Nix store cannot hold",
                    raw,
                    &self.layer,
                ));
            }
            // A special file under var/ (Nix's runtime files are never copied anyway).
            return Ok(false);
        }
        let (dir, name) = self.parent(rel, raw)?;
        self.clear(dir.as_fd(), name)?;
        if is_file {
            let fd = openat(
                dir.as_fd(),
                os(name),
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
            .with_context(|| format!("cannot create {} in the stage", shown()))?;
            let mut f = File::from(fd);
            let n = copy(e, &mut f, &mut self.buf).map_err(|err| match err {
                Copy::Read(err) => self.truncated(err),
                Copy::Write(err) => anyhow::Error::new(err).context(format!("cannot write {} in the stage", shown())),
            })?;
            if counted {
                self.stats.files += 1;
                self.stats.bytes += n;
            }
            self.finish_file(&f, meta)?;
        } else {
            let target = e
                .link_name_bytes()
                .ok_or_else(|| bad("is a symlink without a target", raw, &self.layer))?
                .into_owned();
            symlinkat(os(&target), dir.as_fd(), os(name))
                .with_context(|| format!("cannot create symlink {} in the stage", shown()))?;
            self.own_at(dir.as_fd(), name, meta)?;
            let t = TimeSpec::new(meta.mtime, 0);
            utimensat(dir.as_fd(), os(name), &t, &t, UtimensatFlags::NoFollowSymlink)?;
            self.stats.files += u64::from(counted);
        }
        self.put_dir(dir, &rel[..rel.len() - 1]);
        Ok(true)
    }

    /// `nix-path-registration` or `.reginfo` at the image's root, kept for the
    /// registrations step; a link there is ignored (never followed).
    fn registration_file<R: Read>(&mut self, name: &[u8], e: &mut tar::Entry<R>) -> Result<()> {
        self.clear(self.top, name)?;
        if !e.header().entry_type().is_file() {
            return Ok(());
        }
        let fd = openat(
            self.top,
            os(name),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o644),
        )?;
        copy(e, &mut File::from(fd), &mut self.buf).map_err(|err| match err {
            Copy::Read(err) => self.truncated(err),
            Copy::Write(err) => err.into(),
        })?;
        Ok(())
    }

    fn meta<R: Read>(&self, e: &tar::Entry<R>) -> Result<Meta> {
        let h = e.header();
        let f = |r: io::Result<u64>| r.map_err(|err| self.truncated(err));
        Ok(Meta {
            mode: f(h.mode().map(u64::from))? as u32 & 0o7777,
            uid: f(h.uid())?,
            gid: f(h.gid())?,
            mtime: f(h.mtime())? as i64,
        })
    }

    /// The directory that holds `rel` (created as needed) and `rel`'s last name.
    fn parent<'n>(&mut self, rel: &[&'n [u8]], raw: &[u8]) -> Result<(OwnedFd, &'n [u8])> {
        let (last, dirs) = rel.split_last().expect("a name");
        let key = join(dirs);
        if let Some((k, fd)) = self.cache.take() {
            if k == key {
                return Ok((fd, last));
            }
        }
        let mut fd = self.root.try_clone_to_owned()?;
        for (i, c) in dirs.iter().enumerate() {
            fd = match open_dir(fd.as_fd(), os(c)) {
                Ok(sub) => sub,
                Err(err) if err.raw_os_error() == Some(libc::ENOENT) => {
                    mkdirat(fd.as_fd(), os(c), Mode::from_bits_truncate(0o700))?;
                    // A directory no entry describes: as a runtime makes it.
                    self.dirs.entry(join(&dirs[..=i])).or_insert(Meta {
                        mode: 0o755,
                        uid: 0,
                        gid: 0,
                        mtime: 1,
                    });
                    open_dir(fd.as_fd(), os(c))?
                }
                Err(err) if matches!(err.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                    return Err(bad(
                        "goes through a symlink or a file (a link leaving the image's tree)",
                        raw,
                        &self.layer,
                    ));
                }
                Err(err) => return Err(err.into()),
            };
        }
        Ok((fd, last))
    }

    fn put_dir(&mut self, fd: OwnedFd, dirs: &[&[u8]]) {
        self.cache = Some((join(dirs), fd));
    }

    /// Remove whatever a lower layer left at `name` (a file replaced, a directory replaced
    /// by a file).
    fn clear(&mut self, dir: BorrowedFd, name: &[u8]) -> Result<()> {
        match unlinkat(dir, os(name), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => Ok(()),
            Err(Errno::EISDIR | Errno::EPERM) => {
                remove_tree_at(dir, os(name))?;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn mkdir(&mut self, rel: &[&[u8]], meta: Meta, raw: &[u8]) -> Result<()> {
        let (dir, name) = self.parent(rel, raw)?;
        match lstat_at(dir.as_fd(), os(name))? {
            Some(st) if file_type(&st) == SFlag::S_IFDIR => {}
            Some(_) => {
                self.clear(dir.as_fd(), name)?;
                mkdirat(dir.as_fd(), os(name), Mode::from_bits_truncate(0o700))?;
            }
            None => mkdirat(dir.as_fd(), os(name), Mode::from_bits_truncate(0o700))?,
        }
        self.dirs.insert(join(rel), meta);
        self.put_dir(dir, &rel[..rel.len() - 1]);
        Ok(())
    }

    fn own_at(&mut self, dir: BorrowedFd, name: &[u8], m: Meta) -> Result<()> {
        match fchownat(
            dir,
            os(name),
            Some(Uid::from_raw(m.uid as u32)),
            Some(Gid::from_raw(m.gid as u32)),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) {
            Ok(()) => Ok(()),
            Err(Errno::EPERM | Errno::EINVAL) => {
                self.stats.chown_denied = true;
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    fn finish_file(&mut self, f: &File, m: Meta) -> Result<()> {
        match fchown(
            f.as_fd(),
            Some(Uid::from_raw(m.uid as u32)),
            Some(Gid::from_raw(m.gid as u32)),
        ) {
            Ok(()) => {}
            Err(Errno::EPERM | Errno::EINVAL) => self.stats.chown_denied = true,
            Err(e) => return Err(e.into()),
        }
        // After chown, which clears set-id bits.
        fchmod(f.as_fd(), Mode::from_bits_truncate(m.mode))?;
        let t = TimeSpec::new(m.mtime, 0);
        nix::sys::stat::futimens(f.as_fd(), &t, &t)?;
        Ok(())
    }

    fn hardlink(&mut self, rel: &[&[u8]], link: &[u8], raw: &[u8]) -> Result<()> {
        let Some(lc) = components(link) else {
            return Err(bad(
                "is a hardlink to an absolute name or one holding `..`",
                raw,
                &self.layer,
            ));
        };
        if lc.len() < 3 || lc[0] != b"nix" || (lc[1] != b"store" && lc[1] != b"var") {
            return Err(bad(
                "is a hardlink to a file outside nix/store and nix/var",
                raw,
                &self.layer,
            ));
        }
        let lrel = &lc[1..];
        let (dir, name) = self.parent(rel, raw)?;
        self.clear(dir.as_fd(), name)?;
        let skipped = lrel[0] == b"store" && is_store_path_name(lrel[1]) && (self.skip)(lrel[1]);
        if skipped {
            // The file is the target's copy of the same store path: copy it.
            let Some(store) = self.target_store else {
                return Err(bad("is a hardlink to a store path that was not read", raw, &self.layer));
            };
            let src = open_file_under(store, &lrel[1..]).map_err(|_| {
                bad(
                    "is a hardlink to a file the target's copy of its store path lacks",
                    raw,
                    &self.layer,
                )
            })?;
            let st = fstat(src.as_fd())?;
            let fd = openat(
                dir.as_fd(),
                os(name),
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )?;
            let mut f = File::from(fd);
            let n = copy(&mut File::from(src), &mut f, &mut self.buf).map_err(|(Copy::Read(e) | Copy::Write(e))| e)?;
            self.stats.bytes += n;
            self.finish_file(
                &f,
                Meta {
                    mode: st.st_mode & 0o7777,
                    uid: st.st_uid.into(),
                    gid: st.st_gid.into(),
                    mtime: st.st_mtime,
                },
            )?;
        } else {
            self.cache = None;
            let (ldir, lname) = self.parent(lrel, raw)?;
            match linkat(ldir.as_fd(), os(lname), dir.as_fd(), os(name), AtFlags::empty()) {
                Ok(()) => {}
                Err(Errno::ENOENT) => {
                    return Err(bad("is a hardlink to a file the image does not hold", raw, &self.layer))
                }
                Err(Errno::EPERM) => {
                    return Err(bad("is a hardlink to a directory", raw, &self.layer));
                }
                Err(e) => return Err(e.into()),
            }
        }
        self.put_dir(dir, &rel[..rel.len() - 1]);
        Ok(())
    }

    /// `.wh.NAME`: `c` is the whited-out name's components.
    fn whiteout(&mut self, c: &[&[u8]]) -> Result<()> {
        self.cache = None;
        if let [one] = c {
            if REGISTRATION_FILES.contains(one) {
                self.clear(self.top, one)?;
            }
        }
        let rel: &[&[u8]] = match c {
            [] => return Ok(()),
            [b"nix"] => &[],
            [b"nix", rest @ ..] => rest,
            _ => return Ok(()),
        };
        if rel.is_empty() {
            // nix/ itself: nothing of the lower layers' /nix remains.
            self.remove_children(&[], &[])?;
            return Ok(());
        }
        if rel[0] != b"store" && rel[0] != b"var" {
            return Ok(());
        }
        if rel.len() == 2 && rel[0] == b"store" {
            self.names.remove(rel[1]);
        }
        if rel.len() == 1 {
            let keep: Vec<&[u8]> = Vec::new();
            return self.remove_children(rel, &keep);
        }
        if let Some(dir) = self.open_existing(&rel[..rel.len() - 1])? {
            remove_tree_at(dir.as_fd(), os(rel[rel.len() - 1]))?;
        }
        let key = join(rel);
        self.dirs
            .retain(|k, _| !(k == &key || k.starts_with(&[key.as_slice(), b"/"].concat())));
        Ok(())
    }

    /// `.wh..wh..opq` in directory `parent`.
    fn opaque(&mut self, parent: &[&[u8]]) -> Result<()> {
        self.cache = None;
        let rel: &[&[u8]] = match parent {
            [] | [b"nix"] => &[],
            [b"nix", rest @ ..] if rest[0] == b"store" || rest[0] == b"var" => rest,
            _ => return Ok(()),
        };
        self.remove_children(rel, &[])
    }

    /// Empty directory `rel` of what lower layers put there ([] is nix/: its store/ and
    /// var/ are emptied).
    fn remove_children(&mut self, rel: &[&[u8]], _keep: &[&[u8]]) -> Result<()> {
        if rel.is_empty() {
            self.remove_children(&[b"store"], &[])?;
            self.remove_children(&[b"var"], &[])?;
            return Ok(());
        }
        let key = join(rel);
        let prefix = [key.as_slice(), b"/"].concat();
        if rel == [b"store"] {
            let written = &self.layer_written;
            self.names
                .retain(|n| written.contains(&[prefix.as_slice(), n].concat()));
        }
        let Some(dir) = self.open_existing(rel)? else {
            return Ok(());
        };
        for e in crate::base::dirfd::list(dir.as_fd())? {
            let child = [prefix.as_slice(), e.name.as_bytes()].concat();
            if self.layer_written.contains(&child) {
                continue;
            }
            remove_tree_at(dir.as_fd(), &e.name)?;
            self.dirs
                .retain(|k, _| !(k == &child || k.starts_with(&[child.as_slice(), b"/"].concat())));
        }
        Ok(())
    }

    fn open_existing(&self, rel: &[&[u8]]) -> Result<Option<OwnedFd>> {
        let mut fd = self.root.try_clone_to_owned()?;
        for c in rel {
            fd = match open_dir(fd.as_fd(), os(c)) {
                Ok(sub) => sub,
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)) => {
                    return Ok(None)
                }
                Err(e) => return Err(e.into()),
            };
        }
        Ok(Some(fd))
    }

    /// After the last layer: directories get their metadata (deepest first), skipped
    /// store paths an empty placeholder; returns the image's store path names, sorted.
    pub fn finish(mut self) -> Result<(Vec<Vec<u8>>, Stats)> {
        self.cache = None;
        let store = open_dir(self.root, "store")?;
        for n in &self.names {
            if (self.skip)(n) {
                match mkdirat(store.as_fd(), os(n), Mode::from_bits_truncate(0o555)) {
                    Ok(()) | Err(Errno::EEXIST) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        let mut dirs: Vec<(Vec<u8>, Meta)> = std::mem::take(&mut self.dirs).into_iter().collect();
        dirs.sort_by_key(|(k, _)| std::cmp::Reverse(k.iter().filter(|b| **b == b'/').count()));
        for (k, m) in dirs {
            let comps: Vec<&[u8]> = k.split(|b| *b == b'/').collect();
            let Some(fd) = self.open_existing(&comps)? else {
                continue;
            };
            let f = File::from(fd);
            self.finish_file(&f, m)?;
        }
        let names = std::mem::take(&mut self.names).into_iter().collect();
        Ok((names, self.stats))
    }
}

/// A regular file below `dir`, every component opened without following a symlink.
fn open_file_under(dir: BorrowedFd, comps: &[&[u8]]) -> io::Result<OwnedFd> {
    let (last, dirs) = comps
        .split_last()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
    let mut fd = dir.try_clone_to_owned()?;
    for c in dirs {
        fd = open_dir(fd.as_fd(), os(c))?;
    }
    let f = openat(
        fd.as_fd(),
        os(last),
        OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC | OFlag::O_NONBLOCK,
        Mode::empty(),
    )?;
    if file_type(&fstat(f.as_fd())?) != SFlag::S_IFREG {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    Ok(f)
}

/// Which side of a [`copy`] failed: a read is the image's fault, a write the target's.
enum Copy {
    Read(io::Error),
    Write(io::Error),
}

fn copy(r: &mut impl Read, w: &mut File, buf: &mut [u8]) -> Result<u64, Copy> {
    let mut n = 0u64;
    loop {
        let k = match r.read(buf) {
            Ok(0) => return Ok(n),
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Copy::Read(e)),
        };
        w.write_all(&buf[..k]).map_err(Copy::Write)?;
        n += k as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A layer: (name, kind, content or link target), as a tar in memory; names written
    /// into the header as they are (`..` and absolute ones too).
    fn layer(entries: &[(&str, char, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_old();
            h.set_mode(if *kind == 'd' { 0o555 } else { 0o444 });
            h.set_mtime(1);
            h.set_uid(0);
            h.set_gid(0);
            h.set_size(0);
            h.set_entry_type(match kind {
                'd' => tar::EntryType::Directory,
                'l' => tar::EntryType::Symlink,
                'h' => tar::EntryType::Link,
                _ => tar::EntryType::Regular,
            });
            let old = h.as_old_mut();
            old.name[..name.len()].copy_from_slice(name.as_bytes());
            let body = if matches!(kind, 'l' | 'h') {
                old.linkname[..data.len()].copy_from_slice(data.as_bytes());
                ""
            } else {
                data
            };
            h.set_size(body.len() as u64);
            h.set_cksum();
            b.append(&h, body.as_bytes()).unwrap();
        }
        b.into_inner().unwrap()
    }

    const A: &str = "nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a";
    const B: &str = "nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b";

    fn apply(layers: &[Vec<u8>], skip: &dyn Fn(&[u8]) -> bool) -> (tempfile::TempDir, Result<Vec<Vec<u8>>>) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("nix/store")).unwrap();
        let top = crate::base::dirfd::open_root(dir.path()).unwrap();
        let root = open_dir(top.as_fd(), "nix").unwrap();
        let mut ap = Applier::new(top.as_fd(), root.as_fd(), skip, None);
        let r = (|| {
            for (i, l) in layers.iter().enumerate() {
                ap.layer(&i.to_string(), l.as_slice())?;
            }
            Ok(ap.finish()?.0)
        })();
        (dir, r)
    }

    #[test]
    fn whiteouts_and_opaque_directories_hide_lower_layers_only() {
        let l0 = layer(&[
            (A, 'd', ""),
            (&format!("{A}/f"), 'f', "a"),
            (B, 'd', ""),
            (&format!("{B}/old"), 'f', "o"),
        ]);
        // The opaque marker after a sibling of its own layer: the sibling stays.
        let l1 = layer(&[
            (&format!("{B}/new"), 'f', "n"),
            (&format!("{B}/.wh..wh..opq"), 'f', ""),
            (&format!("nix/store/.wh.{}", &A[10..]), 'f', ""),
        ]);
        let (dir, names) = apply(&[l0, l1], &|_| false);
        let names = names.unwrap();
        assert_eq!(names, vec![B.as_bytes()[10..].to_vec()]);
        let b = dir.path().join(B);
        assert!(b.join("new").exists() && !b.join("old").exists());
        assert!(!dir.path().join(A).exists());
        let m = std::fs::metadata(&b).unwrap();
        assert_eq!((m.permissions().mode() & 0o7777, m.mtime()), (0o555, 1));
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
    }

    #[test]
    fn an_opaque_store_keeps_what_its_layer_holds_even_without_directory_entries() {
        let l0 = layer(&[
            (A, 'd', ""),
            (&format!("{A}/f"), 'f', "a"),
            (B, 'd', ""),
            (&format!("{B}/f"), 'f', "b"),
        ]);
        let l1 = layer(&[(&format!("{A}/g"), 'f', "g"), ("nix/store/.wh..wh..opq", 'f', "")]);
        let (dir, names) = apply(&[l0, l1], &|_| false);
        assert_eq!(names.unwrap(), vec![A.as_bytes()[10..].to_vec()]);
        assert!(dir.path().join(A).join("f").exists() && dir.path().join(A).join("g").exists());
        assert!(!dir.path().join(B).exists());
        // A skipped path the opaque layer brings again stays one of the image's.
        let l0 = layer(&[(A, 'd', ""), (B, 'd', "")]);
        let l1 = layer(&[(A, 'd', ""), ("nix/store/.wh..wh..opq", 'f', "")]);
        let (_dir, names) = apply(&[l0, l1], &|n| n == &A.as_bytes()[10..]);
        assert_eq!(names.unwrap(), vec![A.as_bytes()[10..].to_vec()]);
    }

    #[test]
    fn skipped_paths_are_placeholders_and_hostile_names_are_refused() {
        let l0 = layer(&[
            (A, 'd', ""),
            (&format!("{A}/f"), 'f', "a"),
            (&format!("{B}/h"), 'h', &format!("{A}/f")),
        ]);
        let skip_a = |n: &[u8]| n == &A.as_bytes()[10..];
        // A hardlink into a skipped path, with no target store to copy from: refused.
        let (_d, r) = apply(std::slice::from_ref(&l0), &skip_a);
        assert!(r.unwrap_err().downcast_ref::<Invalid>().is_some());
        let (dir, r) = apply(&[layer(&[(A, 'd', ""), (&format!("{A}/f"), 'f', "a")])], &skip_a);
        assert_eq!(r.unwrap().len(), 1);
        assert_eq!(
            std::fs::read_dir(dir.path().join(A)).unwrap().count(),
            0,
            "a placeholder"
        );
        for bad in [
            layer(&[("nix/store/../../x", 'f', "")]),
            layer(&[("nix", 'l', "/tmp")]),
            layer(&[
                (A, 'd', ""),
                (&format!("{A}/l"), 'l', "/etc"),
                (&format!("{A}/l/x"), 'f', ""),
            ]),
            layer(&[(&format!("{A}/h"), 'h', "/etc/passwd")]),
        ] {
            let (_d, r) = apply(&[bad], &|_| false);
            assert!(r.unwrap_err().downcast_ref::<Invalid>().is_some());
        }
    }

    #[test]
    fn only_a_layer_of_skipped_paths_alone_is_read_past() {
        let skip_a = |n: &[u8]| n == &A.as_bytes()[10..];
        let past = |l: Vec<u8>| {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir_all(dir.path().join("nix/store")).unwrap();
            let top = crate::base::dirfd::open_root(dir.path()).unwrap();
            let root = open_dir(top.as_fd(), "nix").unwrap();
            let mut ap = Applier::new(top.as_fd(), root.as_fd(), &skip_a, None);
            let read_past = ap.layer_read_past("0", &mut io::Cursor::new(l)).unwrap();
            let (names, stats) = ap.finish().unwrap();
            (read_past, names, stats.layers_read_past)
        };
        let a = |rest: &str| format!("{A}{rest}");
        // dockerTools' layer of one store path: nix/, nix/store/, the path; and entries
        // outside nix/ that no layer's application writes.
        let (yes, names, n) = past(layer(&[
            ("nix", 'd', ""),
            ("nix/store", 'd', ""),
            (A, 'd', ""),
            (&a("/f"), 'f', "content never read"),
            (&a("/h"), 'h', &a("/f")),
            ("etc/passwd", 'f', "x"),
        ]));
        assert!(yes);
        assert_eq!((names, n), (vec![A.as_bytes()[10..].to_vec()], 1));
        // Anything else in the layer: it is read whole (nothing applied here).
        for other in [
            vec![(B, 'd', "")],
            vec![("nix/var/nix/db", 'd', "")],
            vec![("nix/store/.wh.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b", 'f', "")],
            vec![("nix/.wh..wh..opq", 'f', "")],
            vec![("nix-path-registration", 'f', "")],
            vec![("nix/store/../../x", 'f', "")],
            vec![("nix", 'l', "/tmp")],
        ] {
            let mut entries = vec![
                (A, 'd', ""),
                ("nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a/f", 'f', "a"),
            ];
            entries.extend(other.iter().copied());
            let (yes, names, n) = past(layer(&entries));
            assert!(!yes, "{other:?}");
            assert_eq!((names.len(), n), (0, 0), "{other:?}");
        }
    }

    #[test]
    fn names_are_normalised_or_refused() {
        assert_eq!(components(b"./nix//store/x/"), Some(vec![&b"nix"[..], b"store", b"x"]));
        assert_eq!(components(b"/nix/store"), None);
        assert_eq!(components(b"nix/store/../../etc"), None);
        assert_eq!(components(b"."), Some(vec![]));
    }
}
