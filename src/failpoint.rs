//! Failpoints for crash tests: `NIX_SEED_FAILPOINT=<name>` makes a debug build (what
//! `cargo test` runs) kill itself with SIGKILL when it reaches the step boundary `<name>`,
//! exactly as a `kill -9` or a node loss would at that moment. `<name>:<n>` fires at the
//! n-th time the point is reached (1-based), for points inside loops.
//!
//! Release builds compile every call to nothing: the variable is never read there.

#[cfg(debug_assertions)]
pub fn hit(name: &str) {
    use std::sync::Mutex;
    static COUNTS: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());
    let Some(want) = std::env::var_os("NIX_SEED_FAILPOINT") else {
        return;
    };
    let want = want.to_string_lossy().into_owned();
    let (want_name, nth) = match want.rsplit_once(':') {
        Some((n, k)) => (n.to_string(), k.parse::<u64>().unwrap_or(1)),
        None => (want.clone(), 1),
    };
    if want_name != name {
        return;
    }
    let mut counts = COUNTS.lock().unwrap_or_else(|e| e.into_inner());
    let seen = match counts.iter_mut().find(|(n, _)| n == name) {
        Some((_, c)) => {
            *c += 1;
            *c
        }
        None => {
            counts.push((name.to_string(), 1));
            1
        }
    };
    if seen == nth {
        eprintln!("nix-seed: failpoint {name} reached: SIGKILL");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_name: &str) {}
