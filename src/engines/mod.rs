//! The engines: copying store paths, Nix's database, NAR serialisation and reference
//! scanning, and locks. They report through the base layer's log and never decide what a
//! seed does.

pub mod copy;
pub mod derivation;
pub mod gc;
pub mod image;
pub mod lock;
pub mod nar;
pub mod nixdb;
pub(crate) mod nixlocks;
