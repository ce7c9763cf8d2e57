//! Declaring a test, in the style of ripgrep's `rgtest!`: one macro line per test says
//! what the test needs (root, real Nix, tools), and the test body gets a [`Setup`] with
//! its scratch directory.
//!
//! ```ignore
//! // A first seed of a store built by real Nix is valid to Nix.
//! nixtest!(first_seed_is_valid_to_nix, |t| {
//!     let image = real_store(&t.path().join("v1"), "v1", true);
//!     ...
//! });
//! ```
//!
//! * `nixtest!(name, |t| { .. })`: root and real Nix (`nix-store`), [`super::nix::nix_available`].
//! * `moderntest!(name, |t| { .. })`: that and Nix 2.26 as well, [`super::modern::modern_available`].
//! * `roottest!(name, |t| { .. })`: root, [`super::require_root`].
//! * `needs = &["strace", ..]` before the closure (any of the three): executables as well,
//!   [`super::require_tool`].
//!
//! The closure is not a closure: the block is the body of `#[test] fn name()` (a `return`
//! returns from the test), and `t` is a `&mut Setup` (`|t: &mut Setup|` may say so; `|_|` if the test does not use it). A
//! test whose guard fails prints `SKIPPED <module>::<name>: <why>` and passes, or fails
//! when `$CI` is set, exactly as the `require_*` functions do. The name printed is the
//! test's own, as `cargo test` selects it: `module_path!()` without the crate, then
//! `stringify!(name)`.
//!
//! Doc comments cannot go on a macro call: write a test's description as `//` comments
//! above it.

use std::path::Path;

use super::Scratch;

/// What a test declared with `nixtest!`, `moderntest!` or `roottest!` gets: its name and
/// its scratch directory (removed, mounts below it unmounted, when the test ends).
/// Derefs to the scratch directory's [`Path`], like [`Scratch`].
pub struct Setup {
    name: String,
    scratch: Scratch,
}

impl Setup {
    /// `guard(name)` (it prints SKIPPED or panics under `$CI` when it fails), then every
    /// tool in `tools`, then a fresh scratch directory; `None` if a requirement is missing.
    pub fn new(module: &str, test: &str, guard: fn(&str) -> bool, tools: &[&str]) -> Option<Setup> {
        let name = test_name(module, test);
        if !guard(&name) || !tools.iter().all(|t| super::require_tool(t)) {
            return None;
        }
        Some(Setup {
            name,
            scratch: super::scratch(),
        })
    }

    /// The test's name as `cargo test` selects it (`module::test`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The test's scratch directory.
    pub fn path(&self) -> &Path {
        self.scratch.path()
    }
}

impl std::ops::Deref for Setup {
    type Target = Path;
    fn deref(&self) -> &Path {
        self.path()
    }
}

/// `module::test` from `module_path!()` (which starts with the test binary's crate name,
/// `it`, that `cargo test` does not show) and the test function's name.
pub fn test_name(module_path: &str, test: &str) -> String {
    match module_path.split_once("::") {
        Some((_, module)) => format!("{module}::{test}"),
        None => test.to_string(),
    }
}

/// The guard `roottest!` uses.
pub fn root(test: &str) -> bool {
    super::require_root(test)
}

/// The shared expansion of `nixtest!`, `moderntest!` and `roottest!`: `$guard` is a
/// `fn(&str) -> bool` given the test's name.
macro_rules! setup_test {
    ($guard:path, $name:ident, $tools:expr, |$t:tt $(: $ty:ty)?| $body:block) => {
        #[test]
        fn $name() {
            let Some(mut setup) =
                crate::support::Setup::new(module_path!(), stringify!($name), $guard, $tools)
            else {
                return;
            };
            let $t $(: $ty)? = &mut setup;
            $body
        }
    };
}

/// A `#[test]` that needs root and real Nix: see the [module](self) documentation.
macro_rules! nixtest {
    ($name:ident, needs = $tools:expr, |$t:tt $(: $ty:ty)?| $body:block) => {
        setup_test!(crate::support::nix::nix_available, $name, $tools, |$t $(: $ty)?| $body);
    };
    ($name:ident, |$t:tt $(: $ty:ty)?| $body:block) => {
        setup_test!(crate::support::nix::nix_available, $name, &[], |$t $(: $ty)?| $body);
    };
}

/// A `#[test]` that needs root, real Nix and Nix 2.26: see the [module](self) documentation.
macro_rules! moderntest {
    ($name:ident, needs = $tools:expr, |$t:tt $(: $ty:ty)?| $body:block) => {
        setup_test!(crate::support::modern::modern_available, $name, $tools, |$t $(: $ty)?| $body);
    };
    ($name:ident, |$t:tt $(: $ty:ty)?| $body:block) => {
        setup_test!(crate::support::modern::modern_available, $name, &[], |$t $(: $ty)?| $body);
    };
}

/// A `#[test]` that needs root: see the [module](self) documentation.
macro_rules! roottest {
    ($name:ident, needs = $tools:expr, |$t:tt $(: $ty:ty)?| $body:block) => {
        setup_test!(crate::support::setup::root, $name, $tools, |$t $(: $ty)?| $body);
    };
    ($name:ident, |$t:tt $(: $ty:ty)?| $body:block) => {
        setup_test!(crate::support::setup::root, $name, &[], |$t $(: $ty)?| $body);
    };
}
