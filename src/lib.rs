//! nix-seed: seed a shared /nix on a network disk from a container image's /nix.
//!
//! The pipeline, one module each: [`cli`] → [`preflight`] → [`plan`] → [`lock`] →
//! [`copy`] → [`var`]/[`nixdb`] (register) → [`report`], driven by [`seed`].

#![warn(clippy::too_many_lines)]

pub mod cli;
pub mod copy;
pub mod derivation;
pub mod dirfd;
pub(crate) mod failpoint;
pub(crate) mod gcroots;
pub mod images;
pub mod install;
pub mod jobs;
pub mod lock;
pub mod nar;
pub mod nixdb;
pub(crate) mod nixlocks;
pub(crate) mod plan;
pub(crate) mod pool;
pub mod preflight;
pub(crate) mod profiles;
pub mod progress;
pub mod prune;
pub mod registrations;
pub(crate) mod repair;
pub mod report;
pub mod seed;
pub(crate) mod state;
pub mod status;
pub(crate) mod var;
pub mod verify;
pub(crate) mod wait;
