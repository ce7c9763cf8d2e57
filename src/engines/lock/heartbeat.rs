//! The holder's side: its first lease, then a heartbeat thread that rewrites the lease
//! every period, notices a takeover (the lock file was replaced) and another seeder's lease
//! in a lock that is not exclusive on this filesystem.

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::file::is_current;
use super::lease::{read_lease, write_lease, Me};
use super::{Config, Held, Lease};
use crate::base::progress::Log;

/// Notices another seeder's lease in the lock file while this one holds the lock: then
/// the filesystem's clients do not share `flock` (sshfs), and both "hold" it. Checked at
/// every heartbeat and at release (a short seed may not live to its first heartbeat).
pub(super) struct Intruders {
    mine: Mutex<String>,
    warned: AtomicBool,
    log: Arc<Log>,
    path: PathBuf,
}

impl Intruders {
    pub(super) fn check(&self, file: &File) {
        if self.warned.load(Ordering::Relaxed) {
            return;
        }
        let now = read_lease(file);
        if now.is_empty() || now == self.mine.lock().unwrap().as_bytes() {
            return;
        }
        self.warned.store(true, Ordering::Relaxed);
        self.log.warn(&format!(
            "the lock {} is not exclusive on this filesystem: {} wrote its lease while this \
             seeder held it (the filesystem's clients do not share flock, as with sshfs); \
             concurrent seeders may fail but never publish a partial copy; run one seeder at a \
             time here",
            self.path.display(),
            Lease::describe(&now)
        ));
    }
}

impl Held {
    pub(super) fn start(
        file: File,
        dir: Arc<OwnedFd>,
        me: Arc<Me>,
        cfg: &Config,
        log: &Arc<Log>,
        path: PathBuf,
        t0: Instant,
    ) -> Result<Held> {
        let first = me.lease(0);
        write_lease(&file, &first).with_context(|| format!("cannot write lease to {}", path.display()))?;
        let waited = t0.elapsed();
        if waited > Duration::from_millis(500) {
            log.info(&format!(
                "took lock {} after waiting {}s",
                path.display(),
                waited.as_secs()
            ));
        }
        let file = Arc::new(file);
        let lost = Arc::new(AtomicBool::new(false));
        let hb_stop = Arc::new((Mutex::new(false), Condvar::new()));
        let every = cfg.heartbeat();
        let intruders = Arc::new(Intruders {
            mine: Mutex::new(first),
            warned: AtomicBool::new(false),
            log: log.clone(),
            path: path.clone(),
        });
        let hb = {
            let (file, lost, hb_stop, log, path, intruders) = (
                file.clone(),
                lost.clone(),
                hb_stop.clone(),
                log.clone(),
                path.clone(),
                intruders.clone(),
            );
            let dir = dir.clone();
            std::thread::spawn(move || {
                let mut beat = 0u64;
                let (m, cv) = &*hb_stop;
                let mut stopped = m.lock().unwrap();
                loop {
                    stopped = cv.wait_timeout(stopped, every).unwrap().0;
                    if *stopped {
                        return;
                    }
                    beat += 1;
                    let still = is_current(dir.as_fd(), &file).unwrap_or(false);
                    if still {
                        intruders.check(&file);
                    }
                    let mine = me.lease(beat);
                    *intruders.mine.lock().unwrap() = mine.clone();
                    if !still || write_lease(&file, &mine).is_err() {
                        lost.store(true, Ordering::Relaxed);
                        log.error(&format!(
                            "lost lock {}: another seeder took it over (this one was stalled past \
                             --lock-stale) or the target became unwritable; stopping",
                            path.display()
                        ));
                        return;
                    }
                }
            })
        };
        Ok(Held {
            file,
            lost,
            hb_stop,
            hb: Some(hb),
            path,
            intruders,
            dir,
        })
    }
}
