//! The image's store path names, its layers applied to a list instead of a directory:
//! the same whiteout rules as [`super::apply`] (a `.wh.NAME` in `nix/store` removes NAME,
//! an opaque `nix/store`, or a whited-out `nix/` or `nix/store`, removes what lower layers
//! put there) and the same refusal of absolute names and `..`. Nothing is written.

use std::collections::{BTreeSet, HashSet};
use std::io::Read;

use anyhow::Result;

use super::apply::{components, OPAQUE, WHITEOUT};
use crate::base::error::Invalid;
use crate::base::store_path::is_store_path_name;

#[derive(Default)]
pub struct NameScan {
    pub names: BTreeSet<Vec<u8>>,
    /// The names the current layer holds.
    layer: HashSet<Vec<u8>>,
}

impl NameScan {
    fn clear_lower(&mut self) {
        let layer = &self.layer;
        self.names.retain(|n| layer.contains(n));
    }
}

impl super::Sink for NameScan {
    fn layer(&mut self, name: &str, tar: &mut dyn Read) -> Result<()> {
        self.layer.clear();
        let unreadable = |e: std::io::Error| {
            Invalid(format!(
                "image layer {name}: not a readable tar ({e}): the image is truncated or corrupt"
            ))
        };
        let mut ar = tar::Archive::new(tar);
        for e in ar.entries().map_err(unreadable)? {
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
                [b"nix", b"store", n, ..] if is_store_path_name(n) => {
                    self.names.insert(n.to_vec());
                    self.layer.insert(n.to_vec());
                }
                [b"nix", b"store", last] if last.starts_with(WHITEOUT) => {
                    if *last == OPAQUE {
                        self.clear_lower();
                    } else {
                        self.names.remove(&last[WHITEOUT.len()..]);
                    }
                }
                [last] if *last == OPAQUE || *last == b".wh.nix" => self.clear_lower(),
                [b"nix", last] if *last == OPAQUE || *last == b".wh.store" => self.clear_lower(),
                _ => {}
            }
        }
        Ok(())
    }

    fn reset(&mut self) -> Result<()> {
        *self = NameScan::default();
        Ok(())
    }
}
