//! One way to wait for a lock someone else holds, for every lock nix-seed waits for: the
//! seed lock (`lock`), Nix's `gc.lock` and `big-lock` (`nixlocks`), a profile's lock
//! (`profiles::lock`) and the Nix database's lock (`nixdb::lock`, SQLite's busy handler).
//!
//! Why one: the waits must agree on what a user sees and what the disk's lock server
//! sees. A user sees, every [`SAY_EVERY`], what is waited for (and by whom, when the lock
//! says), and a [`Timeout`] (exit 3) after `--lock-timeout`; a signal stops a wait at
//! once ([`crate::base::error::Stopped`]). The lock server sees each waiter's attempts spaced
//! by a [`Backoff`]: [`FIRST`] doubling to [`MAX`], each draw jittered ±25% (and never
//! above [`MAX`]), so a thousand pods that start together on an empty disk neither keep
//! polling ten times a second each nor in step. A waiter that learns the holder changed
//! starts again at [`FIRST`] ([`Waiting::holder_changed`]), and one that knows when it
//! must look again (a lease about to become stale) says so ([`Waiting::recheck_within`]).
//!
//! Here below `lock` (which names the Nix database in its errors) so that `nixdb` and
//! `nixlocks` use it without depending on the seed lock: [`wait`] is the loop, [`Waiting`]
//! its clock and schedule (also driven directly by SQLite, which calls the busy handler
//! with a count and sleeps in between itself).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Result;

/// The first pause between two attempts (before jitter).
pub const FIRST: Duration = Duration::from_millis(100);
/// The longest pause between two attempts: the pause doubles up to this.
pub const MAX: Duration = Duration::from_secs(2);
/// What is waited for is said this often (at the first retry due after it).
pub const SAY_EVERY: Duration = Duration::from_secs(5);
/// A stop request is noticed within this while sleeping (a flag read, no disk access).
const STOP_CHECK: Duration = Duration::from_millis(100);

use crate::base::error::Timeout;

/// The pauses between attempts: [`FIRST`] doubling to [`MAX`], each ±25% (uniform) and
/// at most [`MAX`]. The jitter comes from a xorshift64* seeded from the pid, the clock and
/// a per-process counter: waiters that start together drift apart.
#[derive(Debug, Clone)]
pub struct Backoff {
    /// The next pause before jitter.
    base: Duration,
    rng: u64,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new()
    }
}

impl Backoff {
    pub fn new() -> Backoff {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Backoff::seeded(u64::from(std::process::id()) << 32 ^ nanos ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// A schedule with a given seed (tests).
    pub fn seeded(seed: u64) -> Backoff {
        // splitmix64 of the seed: xorshift must not start at 0, and close seeds must not
        // give close sequences.
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        Backoff {
            base: FIRST,
            rng: z.max(1),
        }
    }

    /// A uniform draw in [0, 1).
    fn unit(&mut self) -> f64 {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// The next pause: the current base ±25%, at most [`MAX`]; the base then doubles.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.base.mul_f64(0.75 + 0.5 * self.unit()).min(MAX);
        self.base = (self.base * 2).min(MAX);
        pause
    }

    /// Start again at [`FIRST`] (the holder changed: the lock may soon be free).
    pub fn reset(&mut self) {
        self.base = FIRST;
    }
}

/// One wait's clock: when it started, when it last said what it waits for, the back-off.
pub struct Waiting {
    t0: Instant,
    timeout: Duration,
    backoff: Backoff,
    said_at: Option<Instant>,
    recheck: Option<Duration>,
    /// Do not say what is waited for after this attempt ([`Waiting::say_not_yet`]).
    quiet_once: bool,
}

/// What to do after an attempt that did not get the lock.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// The timeout has passed (`waited` so far): give up.
    GiveUp { waited: Duration },
    /// Sleep `sleep`, then try again; first say what is waited for if `say`.
    Retry {
        waited: Duration,
        say: bool,
        sleep: Duration,
    },
}

impl Waiting {
    /// A wait that started at `t0` and gives up `timeout` after it; it says what it waits
    /// for after the first failed attempt, then every [`SAY_EVERY`].
    pub fn new(t0: Instant, timeout: Duration) -> Waiting {
        Waiting {
            t0,
            timeout,
            backoff: Backoff::new(),
            said_at: None,
            recheck: None,
            quiet_once: false,
        }
    }

    /// Say the first time only after [`SAY_EVERY`] (waits that are usually short).
    pub fn say_later(mut self) -> Waiting {
        self.said_at = Some(self.t0);
        self
    }

    /// The holder changed: back off from [`FIRST`] again.
    pub fn holder_changed(&mut self) {
        self.backoff.reset();
    }

    /// Say nothing after this attempt: what it found is about to change (a holder that
    /// has just taken the lock and not yet written who it is). The next attempt may say.
    pub fn say_not_yet(&mut self) {
        self.quiet_once = true;
    }

    /// Try again no later than `d` from now (this once), whatever the back-off says.
    pub fn recheck_within(&mut self, d: Duration) {
        self.recheck = Some(self.recheck.map_or(d, |r| r.min(d)));
    }

    /// After an attempt that did not get the lock: give up, or how long to sleep and
    /// whether to say what is waited for. The sleep never goes past the timeout.
    pub fn next_step(&mut self) -> Step {
        let waited = self.t0.elapsed();
        if waited >= self.timeout {
            return Step::GiveUp { waited };
        }
        let quiet = std::mem::take(&mut self.quiet_once);
        let say = !quiet && self.said_at.is_none_or(|t| t.elapsed() >= SAY_EVERY);
        if say {
            self.said_at = Some(Instant::now());
        }
        let mut sleep = self.backoff.next_pause();
        if let Some(r) = self.recheck.take() {
            sleep = sleep.min(r);
        }
        Step::Retry {
            waited,
            say,
            sleep: sleep.min(self.timeout - waited),
        }
    }
}

/// What one attempt found.
pub enum Tried<T, H> {
    /// Got the lock.
    Got(T),
    /// Someone else holds it; `H` is what is known about them (for the messages).
    Held(H),
}

/// Wait for a lock: `attempt` until it returns [`Tried::Got`], spaced by the back-off.
/// `attempt` gets the wait's [`Waiting`] (its per-tick hook: the seed lock reads the
/// lease there, takes a stale one over, and says when the holder changed or when to look
/// again). After a failed attempt `say(held, waited)` every [`SAY_EVERY`] (the first time
/// at once). `stop` is checked before every attempt and while sleeping:
/// [`crate::base::error::Stopped`]. After `timeout` since `t0`: [`Timeout`] with
/// `give_up(held, waited)`. An error from `attempt` ends the wait as it is.
pub fn wait<T, H>(
    t0: Instant,
    timeout: Duration,
    stop: &AtomicBool,
    mut attempt: impl FnMut(&mut Waiting) -> Result<Tried<T, H>>,
    mut say: impl FnMut(&H, Duration),
    give_up: impl FnOnce(&H, Duration) -> String,
) -> Result<T> {
    let mut w = Waiting::new(t0, timeout);
    loop {
        if stop.load(Ordering::Relaxed) {
            return Err(crate::base::error::Stopped.into());
        }
        let held = match attempt(&mut w)? {
            Tried::Got(t) => return Ok(t),
            Tried::Held(h) => h,
        };
        match w.next_step() {
            Step::GiveUp { waited } => return Err(Timeout(give_up(&held, waited)).into()),
            Step::Retry {
                waited,
                say: true,
                sleep,
            } => {
                say(&held, waited);
                sleep_unless_stopped(sleep, stop);
            }
            Step::Retry { sleep, .. } => sleep_unless_stopped(sleep, stop),
        }
    }
}

/// Sleep `d`, waking early when `stop` is set.
fn sleep_unless_stopped(d: Duration, stop: &AtomicBool) {
    let end = Instant::now() + d;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        if left.is_zero() || stop.load(Ordering::Relaxed) {
            return;
        }
        std::thread::sleep(left.min(STOP_CHECK));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The schedule before jitter: 100, 200, 400, 800, 1600 ms, then 2 s for ever.
    fn base(i: usize) -> Duration {
        (FIRST * 2u32.pow(i.min(10) as u32)).min(MAX)
    }

    #[test]
    fn the_pause_doubles_from_100_ms_to_2_s_within_25_percent_and_never_above_2_s() {
        for seed in 0..200 {
            let mut b = Backoff::seeded(seed);
            for i in 0..20 {
                let p = b.next_pause();
                let lo = base(i).mul_f64(0.75);
                let hi = base(i).mul_f64(1.25).min(MAX);
                assert!(
                    p >= lo && p <= hi,
                    "seed {seed}, pause {i}: {p:?} not in {lo:?}..={hi:?}"
                );
            }
        }
        assert_eq!(base(5), MAX);
        assert_eq!(base(4), Duration::from_millis(1600));
    }

    #[test]
    fn the_pauses_are_jittered_and_two_waiters_do_not_pause_in_step() {
        let draws = |mut b: Backoff| (0..200).map(|_| b.next_pause()).collect::<Vec<_>>();
        let a = draws(Backoff::new());
        let b = draws(Backoff::new());
        assert_ne!(a, b, "two waiters started together pause in step");
        // At the cap, the pauses spread over [1.5 s, 2 s].
        let capped = &a[10..];
        let min = capped.iter().min().unwrap();
        let max = capped.iter().max().unwrap();
        assert!(
            *min < Duration::from_millis(1600) && *max > Duration::from_millis(1900),
            "{min:?}..{max:?}"
        );
        // Below the cap, ±25% both ways: the first pauses of many waiters.
        let firsts: Vec<_> = (0..100).map(|s| Backoff::seeded(s).next_pause()).collect();
        assert!(firsts.iter().any(|p| *p < Duration::from_millis(90)), "{firsts:?}");
        assert!(firsts.iter().any(|p| *p > Duration::from_millis(110)), "{firsts:?}");
    }

    #[test]
    fn a_reset_starts_again_at_100_ms() {
        let mut b = Backoff::seeded(7);
        for _ in 0..8 {
            b.next_pause();
        }
        assert!(b.next_pause() >= MAX.mul_f64(0.75));
        b.reset();
        let p = b.next_pause();
        assert!(p <= FIRST.mul_f64(1.25), "{p:?}");
    }

    #[test]
    fn a_recheck_shortens_the_next_pause_only() {
        let mut w = Waiting::new(Instant::now(), Duration::from_secs(60));
        for _ in 0..8 {
            w.next_step();
        }
        w.recheck_within(Duration::from_millis(30));
        let Step::Retry { sleep, .. } = w.next_step() else {
            panic!()
        };
        assert_eq!(sleep, Duration::from_millis(30));
        let Step::Retry { sleep, .. } = w.next_step() else {
            panic!()
        };
        assert!(sleep >= MAX.mul_f64(0.75), "{sleep:?}");
    }

    #[test]
    fn a_wait_says_at_once_then_every_5_s_and_a_quiet_one_not_at_once() {
        let mut w = Waiting::new(Instant::now(), Duration::from_secs(60));
        assert!(matches!(w.next_step(), Step::Retry { say: true, .. }));
        assert!(matches!(w.next_step(), Step::Retry { say: false, .. }));
        let mut w = Waiting::new(Instant::now() - SAY_EVERY, Duration::from_secs(60));
        w.said_at = Some(Instant::now() - SAY_EVERY);
        assert!(matches!(w.next_step(), Step::Retry { say: true, .. }));
        let mut w = Waiting::new(Instant::now(), Duration::from_secs(60)).say_later();
        assert!(matches!(w.next_step(), Step::Retry { say: false, .. }));
    }

    #[test]
    fn a_wait_told_not_yet_says_at_the_next_attempt_instead() {
        let mut w = Waiting::new(Instant::now(), Duration::from_secs(60));
        w.say_not_yet();
        assert!(matches!(w.next_step(), Step::Retry { say: false, .. }));
        assert!(matches!(w.next_step(), Step::Retry { say: true, .. }));
        assert!(matches!(w.next_step(), Step::Retry { say: false, .. }));
    }

    #[test]
    fn the_whole_wait_is_bounded_by_the_timeout() {
        let timeout = Duration::from_millis(700);
        let t0 = Instant::now();
        let mut tries = 0;
        let stop = AtomicBool::new(false);
        let r: Result<()> = wait(
            t0,
            timeout,
            &stop,
            |_| {
                tries += 1;
                Ok(Tried::Held("pod p"))
            },
            |_, _| {},
            |h, waited| format!("gave up after {waited:?} waiting for {h}"),
        );
        let took = t0.elapsed();
        let e = r.unwrap_err();
        let t = e.downcast_ref::<Timeout>().expect("a Timeout");
        assert!(t.0.contains("pod p"), "{t}");
        assert!(
            took >= timeout && took < timeout + Duration::from_millis(300),
            "{took:?}"
        );
        // 100, 200, 400 ms (±25%), then what is left: 4 or 5 attempts, not 7.
        assert!((4..=5).contains(&tries), "{tries} attempts in {took:?}");
    }

    #[test]
    fn a_wait_returns_what_the_attempt_got_and_stops_on_the_flag() {
        let stop = AtomicBool::new(false);
        let mut n = 0;
        let got: Result<u32> = wait(
            Instant::now(),
            Duration::from_secs(10),
            &stop,
            |_| {
                n += 1;
                Ok(if n == 3 { Tried::Got(n) } else { Tried::Held(()) })
            },
            |_, _| {},
            |_, _| String::new(),
        );
        assert_eq!(got.unwrap(), 3);
        let t0 = Instant::now();
        let r: Result<()> = wait(
            t0,
            Duration::from_secs(10),
            &stop,
            |w| {
                // Deep in the back-off: a stop must not wait for the pause to end.
                for _ in 0..8 {
                    w.next_step();
                }
                stop.store(true, Ordering::Relaxed);
                Ok(Tried::Held(()))
            },
            |_, _| {},
            |_, _| String::new(),
        );
        assert!(r.unwrap_err().downcast_ref::<crate::base::error::Stopped>().is_some());
        assert!(t0.elapsed() < Duration::from_millis(500), "{:?}", t0.elapsed());
    }
}
