//! Hardlinks among the files copied in one run stay hardlinks.
//!
//! A Nix store optimised with `.links` shares one inode between identical files of many
//! store paths, so copying each name separately would multiply disk usage. The first
//! worker to meet a source inode (with `st_nlink > 1`) copies it and records where the
//! finished copy lives; a worker meeting the same inode later waits for that copy to be
//! complete (content, owner, mode, times) and `linkat`s it. Waiting is safe: an owner never
//! waits on anything while it writes one file.
//!
//! The location is recorded relative to the top-level entry (store path) it belongs to,
//! because that entry is renamed from its temporary name to its final one while others
//! may still link into it; the rename and every link through it hold the entry's name lock.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};

use nix::fcntl::AtFlags;
use nix::unistd::linkat;

use crate::base::dirfd::open_dir;

/// A top-level entry being built: a store path (or var/ subtree) under its current name.
pub struct TopEntry {
    /// Current name inside its parent directory; `None` once discarded.
    pub name: Mutex<Option<OsString>>,
}

impl TopEntry {
    pub fn new(name: OsString) -> Arc<Self> {
        Arc::new(TopEntry {
            name: Mutex::new(Some(name)),
        })
    }
}

#[derive(Clone)]
pub struct Location {
    pub top: Arc<TopEntry>,
    /// Components below the top entry; empty when the top entry itself is the file.
    pub rel: PathBuf,
}

enum State {
    InProgress,
    Done(Location),
    Failed,
}

struct Slot {
    state: Mutex<State>,
    cv: Condvar,
}

/// Source inode → where its copy is.
#[derive(Default)]
pub struct InodeMap {
    map: Mutex<HashMap<(u64, u64), Arc<Slot>>>,
}

/// What a worker must do for a multiply-linked source file.
pub enum Claim {
    /// First to see it: copy, then call `Owner::done` (dropping the owner marks it failed).
    Owner(Owner),
    /// Already copied: link to this location (fall back to a copy if that fails).
    LinkTo(Location),
    /// The first copy failed: copy it independently.
    Copy,
}

pub struct Owner {
    slot: Arc<Slot>,
    finished: bool,
}

impl Owner {
    pub fn done(mut self, loc: Location) {
        self.finish(State::Done(loc));
    }

    fn finish(&mut self, st: State) {
        *self.slot.state.lock().unwrap() = st;
        self.finished = true;
        self.slot.cv.notify_all();
    }
}

impl Drop for Owner {
    fn drop(&mut self) {
        if !self.finished {
            self.finish(State::Failed);
        }
    }
}

impl InodeMap {
    pub fn claim(&self, dev: u64, ino: u64) -> Claim {
        let slot = {
            let mut map = self.map.lock().unwrap();
            match map.get(&(dev, ino)) {
                Some(s) => s.clone(),
                None => {
                    let slot = Arc::new(Slot {
                        state: Mutex::new(State::InProgress),
                        cv: Condvar::new(),
                    });
                    map.insert((dev, ino), slot.clone());
                    return Claim::Owner(Owner { slot, finished: false });
                }
            }
        };
        let mut st = slot.state.lock().unwrap();
        loop {
            match &*st {
                State::InProgress => st = slot.cv.wait(st).unwrap(),
                State::Done(loc) => return Claim::LinkTo(loc.clone()),
                State::Failed => return Claim::Copy,
            }
        }
    }

    /// Replace a location that could not be linked to (e.g. EMLINK: too many links) by a
    /// fresh copy, so later names link to the new one.
    pub fn relocate(&self, dev: u64, ino: u64, loc: Location) {
        let slot = Arc::new(Slot {
            state: Mutex::new(State::Done(loc)),
            cv: Condvar::new(),
        });
        self.map.lock().unwrap().insert((dev, ino), slot);
    }
}

/// `linkat` the existing copy at `loc` (inside `parent`, the directory holding top entries)
/// to `name` in `dst`. Intermediate directories are opened without following symlinks.
pub fn link(parent: BorrowedFd, loc: &Location, dst: BorrowedFd, name: &OsStr) -> io::Result<()> {
    let guard = loc.top.name.lock().unwrap();
    let Some(top) = guard.as_ref() else {
        return Err(io::Error::from_raw_os_error(libc::ENOENT));
    };
    let mut comps: Vec<&OsStr> = loc.rel.iter().collect();
    let Some(leaf) = comps.pop() else {
        linkat(parent, top.as_os_str(), dst, name, AtFlags::empty())?;
        return Ok(());
    };
    let mut dir: OwnedFd = open_dir(parent, top)?;
    for c in comps {
        dir = open_dir(dir.as_fd(), c)?;
    }
    linkat(dir.as_fd(), leaf, dst, name, AtFlags::empty())?;
    Ok(())
}
