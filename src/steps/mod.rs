//! The steps of a seed, in the order Nix's `local-store.cc` adds a path: plan (what is
//! missing, decided under the locks), copy (`run`), complete the registrations, check
//! (`repair`), var, register, root (`gcroots`), profiles, mark (`state`). `report` is what
//! a seed did.

pub(crate) mod gcroots;
pub mod plan;
pub mod profiles;
pub mod registrations;
pub(crate) mod repair;
pub mod report;
pub mod run;
pub mod stage;
pub mod state;
pub(crate) mod valid;
pub(crate) mod var;
