//! nix-seed: seed a shared /nix on a network disk from a container image's /nix.
//!
//! The code is in layers, each importing only those below it:
//!
//! - **face** (`main.rs`, [`cli`]): parse the command line, run a command, map its error
//!   to an exit code ([`base::error::exit_code`]). Only here are clap's types seen.
//! - **[`commands`]**: `seed`, `status`, `verify`, `images`, `prune`, `install`; each
//!   resolves its options once and runs.
//! - **[`steps`]** of a seed, in Nix's order: plan (decide under the locks), copy, complete
//!   the registrations, check, var, register, root, profiles, mark.
//! - **[`engines`]**: copy, nixdb (Nix's database), nar (NAR hashing and reference
//!   scanning), lock (the seed lock and Nix's locks).
//! - **[`base`]**: directory descriptors, the log and progress sink, error kinds and exit
//!   codes, the on-disk layout, store path names, the work pool.

#![warn(clippy::too_many_lines)]

pub mod base;
pub mod cli;
pub mod commands;
pub mod engines;
pub mod steps;
