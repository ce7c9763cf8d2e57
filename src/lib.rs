//! nix-seed: seed a shared /nix on a network disk from a container image's /nix.
//!
//! The pipeline, one module each: [`cli`] → [`preflight`] → [`plan`] → [`lock`] →
//! [`copy`] → [`var`]/[`nixdb`] (register) → [`report`], driven by [`seed`].

#![warn(clippy::too_many_lines)]

pub mod cli;
pub mod copy;
pub mod dirfd;
pub mod failpoint;
pub mod gcroots;
pub mod install;
pub mod lock;
pub mod nar;
pub mod nixdb;
pub mod nixlocks;
pub mod plan;
pub mod preflight;
pub mod progress;
pub mod repair;
pub mod report;
pub mod seed;
pub mod state;
pub mod status;
pub mod var;
pub mod verify;
