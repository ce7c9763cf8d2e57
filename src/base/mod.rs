//! The base layer: what every layer above uses and that imports nothing of theirs.

pub mod dirfd;
pub mod failpoint;
pub mod jobs;
pub(crate) mod pool;
pub mod preflight;
pub mod progress;
