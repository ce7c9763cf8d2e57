//! One work queue for every parallel step: copying store paths, measuring them before the
//! copy, hashing them for `--verify`. Store paths differ wildly in size, so `jobs` threads
//! each take the next item as they finish one, rather than splitting the list up front.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;

use anyhow::Result;

/// Run `work(state, item)` for every item on up to `jobs` threads. Each thread makes its
/// own `state` with `init` and hands it to `done` when it stops. No new item is taken
/// after the first error (which is returned) or once `stop()` is true.
pub(crate) fn run<T: Sync, S>(
    items: &[T],
    jobs: usize,
    stop: &(dyn Fn() -> bool + Sync),
    init: impl Fn() -> S + Sync,
    work: impl Fn(&mut S, &T) -> Result<()> + Sync,
    done: impl Fn(S) + Sync,
) -> Result<()> {
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..jobs.clamp(1, items.len().max(1)) {
            s.spawn(|| {
                let mut state = init();
                while !failed.load(Ordering::Relaxed) && !stop() {
                    let Some(item) = items.get(next.fetch_add(1, Ordering::Relaxed)) else {
                        break;
                    };
                    if let Err(e) = work(&mut state, item) {
                        failed.store(true, Ordering::Relaxed);
                        first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                        break;
                    }
                }
                done(state);
            });
        }
    });
    match first_error.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_once_then_the_first_error_stops_the_queue() {
        let items: Vec<u32> = (0..1000).collect();
        let sum = std::sync::atomic::AtomicU64::new(0);
        run(
            &items,
            8,
            &|| false,
            || 0u64,
            |s, i| {
                *s += u64::from(*i);
                Ok(())
            },
            |s| {
                sum.fetch_add(s, Ordering::Relaxed);
            },
        )
        .unwrap();
        assert_eq!(sum.into_inner(), 999 * 1000 / 2);

        let taken = AtomicUsize::new(0);
        let r = run(
            &items,
            4,
            &|| false,
            || (),
            |_, i| {
                taken.fetch_add(1, Ordering::Relaxed);
                if *i == 10 {
                    anyhow::bail!("item 10");
                }
                Ok(())
            },
            |_| (),
        );
        assert_eq!(r.unwrap_err().to_string(), "item 10");
        assert!(taken.into_inner() < 1000, "the queue stopped taking items");

        let stopped = run(&items, 2, &|| true, || (), |_, _| anyhow::bail!("never run"), |_| ());
        assert!(stopped.is_ok());
    }
}
