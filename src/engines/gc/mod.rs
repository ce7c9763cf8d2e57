//! Garbage collection of a Nix store that many pods share: Nix's own collector's
//! protocol (its locks, its socket, its temporary roots, its root search, its order of
//! deletion), without the two assumptions that break on a shared store: that an indirect
//! root's target is visible from the collecting process, and that a temporary-roots file
//! named by a pid belongs to the process of that pid. What it cannot see (a pod's private
//! `result` link, a temporary-roots file another pod's Nix unlinked) is protected by age:
//! nothing registered, or read, within `--min-age` is deleted.
//!
//! One file per job: `roots` (the roots in the disk), `temproots` (live temporary roots),
//! `socket` (Nix's gc socket, served while collecting), `live` (which paths live, and the
//! order dead ones go in), `sweep` (the store's side: usage, access times, `.links`).

pub mod live;
pub mod roots;
pub mod socket;
pub mod sweep;
pub mod temproots;

pub use live::{Keep, Why};
pub use roots::Roots;
pub use socket::{Claims, Server};
pub use temproots::TempRoots;
