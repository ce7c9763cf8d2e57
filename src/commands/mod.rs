//! The commands: each resolves its `Options` from the command line once (the face's
//! `From<&…Args>`), then runs the steps and engines below, through one entry-point shape:
//! `run(&Options, &Ctx) -> Result<Done>`.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::base::progress::Log;

pub mod gc;
pub mod images;
pub mod install;
pub mod prune;
pub mod seed;
pub mod status;
pub mod verify;

/// What every command runs with: where it prints, and the flag a signal sets.
pub struct Ctx<'a> {
    pub log: &'a Arc<Log>,
    pub stop: &'a Arc<AtomicBool>,
}

/// How a command that did not fail ended: exit 0, or exit 1 for a finding (`status`: not
/// seeded; `verify`: a problem).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Done {
    Success,
    Finding,
}

impl Done {
    /// `Success` when `ok`, else `Finding`.
    pub fn from_ok(ok: bool) -> Done {
        if ok {
            Done::Success
        } else {
            Done::Finding
        }
    }
}
