//! The commands: each resolves its options once, then runs the steps and engines below.

pub mod images;
pub mod install;
pub mod prune;
pub mod seed;
pub mod status;
pub mod verify;
