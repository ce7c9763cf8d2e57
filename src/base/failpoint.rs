//! Failpoints for crash tests. In a debug build (what `cargo test` runs),
//! `NIX_SEED_FAILPOINT=<name>[:<n>][=kill|=stop]` acts when the step boundary `<name>` is
//! reached for the n-th time (default 1):
//! - `kill` (default): SIGKILL to itself, exactly as a `kill -9` or a node loss would;
//! - `stop`: SIGSTOP to itself, so a test can act on the target (run Nix, collect garbage)
//!   at that precise moment, then let the seeder go on with SIGCONT;
//! - `sleep<N>`: this thread sleeps N seconds while the rest of the process (the lock's
//!   heartbeat) runs on: a seeder that is busy but healthy, however fast the machine.
//!
//! Release builds compile every call to nothing: the variable is never read there.

#[cfg(debug_assertions)]
pub fn hit(name: &str) {
    use std::sync::Mutex;
    static COUNTS: Mutex<Vec<(String, u64)>> = Mutex::new(Vec::new());
    let Some(spec) = std::env::var_os("NIX_SEED_FAILPOINT") else {
        return;
    };
    let spec = spec.to_string_lossy().into_owned();
    let (point, action) = spec.split_once('=').unwrap_or((spec.as_str(), "kill"));
    let (want, nth) = match point.split_once(':') {
        Some((n, k)) => (n, k.parse::<u64>().unwrap_or(1)),
        None => (point, 1),
    };
    if want != name {
        return;
    }
    let seen = {
        let mut counts = COUNTS.lock().unwrap_or_else(|e| e.into_inner());
        match counts.iter_mut().find(|(n, _)| n == name) {
            Some((_, c)) => {
                *c += 1;
                *c
            }
            None => {
                counts.push((name.to_string(), 1));
                1
            }
        }
    };
    if seen != nth {
        return;
    }
    use nix::sys::signal::{raise, Signal};
    if let Some(secs) = action.strip_prefix("sleep").and_then(|n| n.parse::<u64>().ok()) {
        eprintln!("nix-seed: failpoint {name} reached: sleeping {secs}s");
        std::thread::sleep(std::time::Duration::from_secs(secs));
        return;
    }
    if action == "stop" {
        eprintln!("nix-seed: failpoint {name} reached: SIGSTOP");
        let _ = raise(Signal::SIGSTOP);
    } else {
        eprintln!("nix-seed: failpoint {name} reached: SIGKILL");
        let _ = raise(Signal::SIGKILL);
    }
}

#[cfg(not(debug_assertions))]
#[inline(always)]
pub fn hit(_name: &str) {}
