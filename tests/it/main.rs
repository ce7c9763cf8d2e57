//! The integration tests: one test binary, one module per promise. A module's tests are
//! selected with `cargo test --test it <module>::` (e.g. `bad_input::`); `support` is the
//! shared test code (fixtures, comparators, mounts, real Nix, the network-filesystem
//! harness).
//!
//! Every test of every module runs in this one process, on `--test-threads` threads
//! (`scripts/test.sh`: two). The tests that must not run alongside each other, the
//! network-filesystem tests (they time takeovers), take one process-wide lock
//! (`support::netfs`). libtest starts tests in name order, so while one of them runs the
//! other thread waits for that lock in the next one, and only the first and the last can
//! overlap a test of a neighbouring module. Every other test uses only its own scratch
//! directories, mounts, loop devices and child processes, as it did in a binary of its own.

#[macro_use]
mod support;

mod archive;
mod arm64;
mod bad_input;
mod big_paths;
mod concurrency;
mod crash;
mod dbless;
mod filesystems;
mod gc;
mod hostile;
mod images;
mod install;
mod kubernetes;
mod lifecycle;
mod live_store;
mod modern_db;
mod modern_nix;
mod netfs;
mod nixdb;
mod nonroot;
mod pod;
mod profiles;
mod refscan;
mod seed;
mod static_binary;
mod support_selftest;
