//! The kinds of failure nix-seed's exit codes tell apart, and the one place that maps an
//! error to its code ([`exit_code`]): by the error's type, never by its text.
//!
//! | code | kind |
//! |---|---|
//! | 1 | anything else: a failure, named in the error line |
//! | 2 | [`Invalid`]: bad input refused before anything was written |
//! | 3 | [`Timeout`]: gave up waiting for a lock after `--lock-timeout` |
//! | 128 + signal | [`Stopped`] by SIGINT or SIGTERM (130, 143); [`Stopped`] because another seeder took the lock over is 1 |

use std::fmt;

pub const FAILURE: u8 = 1;
pub const USAGE: u8 = 2;
pub const LOCK_TIMEOUT: u8 = 3;

/// Bad input, refused before anything was written: exit 2. The text is one line naming
/// the path and the fix.
#[derive(Debug)]
pub struct Invalid(pub String);

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Invalid {}

/// Gave up waiting for a lock: exit 3. The text names the lock and what to do.
#[derive(Debug)]
pub struct Timeout(pub String);

impl fmt::Display for Timeout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Timeout {}

/// The work stopped early: a signal, or the seed lock was lost to another seeder.
#[derive(Debug)]
pub struct Stopped;

impl fmt::Display for Stopped {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("stopped")
    }
}

impl std::error::Error for Stopped {}

/// The exit code of a command that failed with `e`; `signal` is the signal that asked
/// it to stop, if one did.
pub fn exit_code(e: &anyhow::Error, signal: Option<i32>) -> u8 {
    if e.downcast_ref::<Stopped>().is_some() {
        return match signal {
            Some(sig) => 128u8.saturating_add(sig as u8),
            None => FAILURE,
        };
    }
    if e.downcast_ref::<Invalid>().is_some() {
        USAGE
    } else if e.downcast_ref::<Timeout>().is_some() {
        LOCK_TIMEOUT
    } else {
        FAILURE
    }
}

/// Whether `e` is a bare error with no context: a system call's errno with no path. The
/// caller adds what it was working on, so that every error line names a path.
pub fn is_bare(e: &anyhow::Error) -> bool {
    e.chain().count() == 1
        && (e.downcast_ref::<std::io::Error>().is_some() || e.downcast_ref::<nix::errno::Errno>().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;

    #[test]
    fn codes_by_kind_not_text() {
        let e = anyhow::Error::new(Invalid("a/b".into())).context("x");
        assert_eq!(exit_code(&e, None), USAGE);
        let e = anyhow::Error::new(Timeout("no slash".into()));
        assert_eq!(exit_code(&e, None), LOCK_TIMEOUT);
        assert_eq!(exit_code(&anyhow::Error::new(Stopped), Some(15)), 143);
        assert_eq!(exit_code(&anyhow::Error::new(Stopped), None), FAILURE);
        assert_eq!(exit_code(&anyhow::anyhow!("/x: broken"), None), FAILURE);
    }

    #[test]
    fn bare_errors() {
        let io = || anyhow::Error::new(std::io::Error::from_raw_os_error(libc::EIO));
        assert!(is_bare(&io()));
        assert!(!is_bare(&io().context("cannot read /x")));
        assert!(!is_bare(&anyhow::anyhow!("message")));
        let r: Result<(), nix::errno::Errno> = Err(nix::errno::Errno::EACCES);
        assert!(is_bare(&r.map_err(anyhow::Error::from).unwrap_err()));
        let r: Result<(), nix::errno::Errno> = Err(nix::errno::Errno::EACCES);
        assert!(!is_bare(&r.context("x").unwrap_err()));
    }
}
