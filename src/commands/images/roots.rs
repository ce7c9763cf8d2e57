//! The roots a collection finds in the disk ([`crate::engines::gc::roots`]), as registered
//! paths: what prune needs to say what a collection would free once images are retired.

use std::os::fd::AsFd;

use anyhow::Result;

use super::Disk;

impl Disk {
    /// The registered paths the disk's roots reach directly (see
    /// [`crate::engines::gc::roots::find`]). `skip` names (as pods see them, `/nix/var/...`)
    /// entries to leave out, with what is below them. What cannot be seen from here (roots
    /// in pods, their running processes) is left out: what is *not* reached is an upper
    /// bound of what a collection frees.
    pub fn visible_roots(&self, skip: &dyn Fn(&str) -> bool) -> Result<Vec<usize>> {
        let roots = crate::engines::gc::roots::find_except(self.root.as_fd(), &self.path, skip)?;
        Ok(roots
            .names
            .keys()
            .filter_map(|name| self.index.get(&format!("{}{name}", super::STORE)).copied())
            .collect())
    }
}
