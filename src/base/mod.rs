//! The base layer: what every layer above uses and that imports nothing of theirs.

pub mod dirfd;
pub mod error;
pub mod failpoint;
pub mod jobs;
pub mod layout;
pub mod nixconf;
pub(crate) mod pool;
pub mod preflight;
pub mod progress;
pub mod store_path;
pub(crate) mod wait;
