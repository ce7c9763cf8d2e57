//! The image's store path names, its layers applied to a list instead of a directory:
//! the same whiteout rules as [`super::apply`] (a `.wh.NAME` in `nix/store` removes NAME,
//! an opaque `nix/store`, or a whited-out `nix/` or `nix/store`, removes what lower layers
//! put there) and the same refusal of absolute names and `..`. Nothing is written.
//!
//! The headers also say what each store path would take ([`Footprint`]), counted as
//! `steps::plan::measure` counts a directory source: an upper bound, since a file a later
//! layer replaces or whites out inside a store path is counted in both layers.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::Read;

use anyhow::Result;

use super::apply::{components, OPAQUE, WHITEOUT};
use crate::base::error::Invalid;
use crate::base::store_path::is_store_path_name;

/// What one store path's entries take on a filesystem with `block`-sized blocks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Footprint {
    /// Regular files, hardlinks included.
    pub files: u64,
    /// Apparent size of the regular files (a hardlink once).
    pub bytes: u64,
    /// Every file, directory and symlink rounded up to whole blocks (a hardlink once).
    pub needed: u64,
    /// Every directory, symlink and file (a hardlink once).
    pub inodes: u64,
}

pub struct NameScan {
    pub names: BTreeSet<Vec<u8>>,
    /// By store path name.
    pub footprints: HashMap<Vec<u8>, Footprint>,
    block: u64,
    /// The names the current layer holds.
    layer: HashSet<Vec<u8>>,
    /// The current layer's regular files under `nix/` and their sizes, by name: what a
    /// hardlink into another store path (or `.links`) costs, since it is written as a file.
    files: HashMap<Vec<u8>, u64>,
}

impl NameScan {
    pub fn new(block: u64) -> NameScan {
        NameScan {
            names: BTreeSet::new(),
            footprints: HashMap::new(),
            block: block.max(512),
            layer: HashSet::new(),
            files: HashMap::new(),
        }
    }

    /// The image's store path names, sorted, and their footprints by name.
    pub fn finish(self) -> (Vec<std::ffi::OsString>, super::Footprints) {
        use std::os::unix::ffi::OsStringExt;
        let names = self.names.into_iter().map(std::ffi::OsString::from_vec).collect();
        let footprints = self
            .footprints
            .into_iter()
            .map(|(n, f)| (std::ffi::OsString::from_vec(n), f))
            .collect();
        (names, footprints)
    }

    fn clear_lower(&mut self) {
        let layer = &self.layer;
        self.names.retain(|n| layer.contains(n));
        let names = &self.names;
        self.footprints.retain(|n, _| names.contains(n));
    }

    /// Count entry `raw` (of type `kind`, `size` bytes, a hardlink to `link`) of store path
    /// `name`. A hardlink within its store path is a name only; one to a file elsewhere
    /// (another store path, which the target may already have, or `.links`) counts as the
    /// file it becomes.
    fn count(&mut self, name: &[u8], raw: &[u8], kind: tar::EntryType, size: u64, link: Option<&[u8]>) {
        let block = self.block;
        let within = |l: &[u8]| components(l).is_some_and(|c| c.get(2) == Some(&name));
        let (kind, size) = match link {
            Some(l) if kind.is_hard_link() && !within(l) => {
                let key = components(l).map(|c| c.join(&b'/')).unwrap_or_default();
                (tar::EntryType::Regular, self.files.get(&key).copied().unwrap_or(0))
            }
            _ => (kind, size),
        };
        if kind.is_file() {
            if let Some(c) = components(raw) {
                self.files.insert(c.join(&b'/'), size);
            }
        }
        let f = self.footprints.entry(name.to_vec()).or_default();
        if kind.is_hard_link() {
            f.files += 1;
        } else if kind.is_file() {
            f.files += 1;
            f.bytes += size;
            f.needed += size.div_ceil(block) * block;
            f.inodes += 1;
        } else {
            f.needed += block;
            f.inodes += 1;
        }
    }
}

impl NameScan {
    /// One layer of a seekable file, read by its headers only (seeking past the data).
    pub fn layer_headers(&mut self, name: &str, tar: &mut super::Window) -> Result<()> {
        let mut ar = tar::Archive::new(tar);
        let entries = ar.entries_with_seek().map_err(|e| unreadable(name, e))?;
        self.entries(name, entries)
    }

    fn entries<R: Read>(&mut self, name: &str, entries: tar::Entries<R>) -> Result<()> {
        self.layer.clear();
        self.files.clear();
        let unreadable = |e: std::io::Error| unreadable(name, e);
        for e in entries {
            let e = e.map_err(unreadable)?;
            let raw = e.path_bytes().into_owned();
            let Some(c) = components(&raw) else {
                return Err(Invalid(format!(
                    "image layer {name}: entry {:?} is absolute or holds `..`: refusing the image",
                    String::from_utf8_lossy(&raw)
                ))
                .into());
            };
            match c.as_slice() {
                [b"nix", b"store", n, rest @ ..] if is_store_path_name(n) => {
                    self.names.insert(n.to_vec());
                    self.layer.insert(n.to_vec());
                    if !rest.last().is_some_and(|l| l.starts_with(WHITEOUT)) {
                        let link = e.link_name_bytes().map(|l| l.into_owned());
                        self.count(n, &raw, e.header().entry_type(), e.size(), link.as_deref());
                    }
                }
                [b"nix", b"store", last] if last.starts_with(WHITEOUT) => {
                    if *last == OPAQUE {
                        self.clear_lower();
                    } else {
                        self.names.remove(&last[WHITEOUT.len()..]);
                        self.footprints.remove(&last[WHITEOUT.len()..]);
                    }
                }
                [last] if *last == OPAQUE || *last == b".wh.nix" => self.clear_lower(),
                [b"nix", last] if *last == OPAQUE || *last == b".wh.store" => self.clear_lower(),
                // Whiteouts and markers above; any other file of nix/ a hardlink may name.
                [b"nix", ..] if e.header().entry_type().is_file() => {
                    self.files.insert(c.join(&b'/'), e.size());
                }
                _ => {}
            }
        }
        Ok(())
    }
}

fn unreadable(name: &str, e: std::io::Error) -> Invalid {
    Invalid(format!(
        "image layer {name}: not a readable tar ({e}): the image is truncated or corrupt"
    ))
}

impl super::Sink for NameScan {
    fn layer(&mut self, name: &str, tar: &mut dyn Read) -> Result<()> {
        let mut ar = tar::Archive::new(tar);
        let entries = ar.entries().map_err(|e| unreadable(name, e))?;
        self.entries(name, entries)
    }

    fn reset(&mut self) -> Result<()> {
        *self = NameScan::new(self.block);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engines::image::Sink;

    const A: &str = "nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-a";
    const B: &str = "nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-b";

    /// A layer of (name, kind: d directory, f file, h hardlink to, l symlink to; content).
    fn layer(entries: &[(&str, char, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_mode(0o555);
            h.set_entry_type(match kind {
                'd' => tar::EntryType::Directory,
                'h' => tar::EntryType::Link,
                'l' => tar::EntryType::Symlink,
                _ => tar::EntryType::Regular,
            });
            let body: &[u8] = if *kind == 'f' { data.as_bytes() } else { b"" };
            h.set_size(body.len() as u64);
            if matches!(kind, 'h' | 'l') {
                b.append_link(&mut h, name, data).unwrap();
            } else {
                b.append_data(&mut h, name, body).unwrap();
            }
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn names_follow_whiteouts_and_footprints_count_as_a_directory_measure_does() {
        let mut sc = NameScan::new(4096);
        let l0 = layer(&[
            (A, 'd', ""),
            (&format!("{A}/f"), 'f', "12345"),
            (&format!("{A}/same"), 'h', &format!("{A}/f")),
            (&format!("{A}/l"), 'l', "f"),
            (B, 'd', ""),
            (&format!("{B}/g"), 'h', &format!("{A}/f")),
        ]);
        sc.layer("0", &mut l0.as_slice()).unwrap();
        let a = sc.footprints[&A.as_bytes()[10..]];
        // The directory, the file, the symlink: 3 inodes and blocks; the hardlink within
        // A a name only.
        assert_eq!(
            a,
            Footprint {
                files: 2,
                bytes: 5,
                needed: 3 * 4096,
                inodes: 3
            }
        );
        // A hardlink into another store path counts as the file it may become.
        let b = sc.footprints[&B.as_bytes()[10..]];
        assert_eq!(
            b,
            Footprint {
                files: 1,
                bytes: 5,
                needed: 2 * 4096,
                inodes: 2
            }
        );
        // A later layer's whiteout removes B, from the names and the footprints.
        let wh = format!("nix/store/.wh.{}", &B[10..]);
        sc.layer("1", &mut layer(&[(&wh, 'f', "")]).as_slice()).unwrap();
        assert_eq!(sc.names.iter().collect::<Vec<_>>(), vec![&A.as_bytes()[10..].to_vec()]);
        assert!(!sc.footprints.contains_key(&B.as_bytes()[10..]));
        // An opaque store keeps only what its own layer holds.
        sc.layer(
            "2",
            &mut layer(&[(B, 'd', ""), ("nix/store/.wh..wh..opq", 'f', "")]).as_slice(),
        )
        .unwrap();
        assert_eq!(sc.names.iter().collect::<Vec<_>>(), vec![&B.as_bytes()[10..].to_vec()]);
        assert_eq!(sc.footprints.len(), 1);
    }
}
