//! When the next pass is due and whether the budget covers it: an interval with jitter and a
//! token bucket of prompts per hour, both on the meter's clock.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokenmeter_core::clock::Instant;

/// The pass schedule of one probe.
#[derive(Debug)]
pub(crate) struct Schedule {
    interval: Duration,
    jitter: f64,
    rng: StdRng,
    next_due: Instant,
    /// Prompts the budget has left (a token bucket holding at most one hour's worth).
    tokens: f64,
    per_hour: f64,
    refilled: Instant,
}

impl Schedule {
    /// The first pass is due one jittered interval after `now`; the bucket starts full.
    pub(crate) fn new(
        now: Instant,
        interval: Duration,
        jitter: f64,
        seed: u64,
        per_hour: u32,
    ) -> Self {
        let mut s = Schedule {
            interval,
            jitter,
            rng: StdRng::seed_from_u64(seed),
            next_due: now,
            tokens: f64::from(per_hour),
            per_hour: f64::from(per_hour),
            refilled: now,
        };
        s.next_due = now + s.jittered();
        s
    }

    /// The interval scaled by a uniform factor in [1 − jitter, 1 + jitter].
    fn jittered(&mut self) -> Duration {
        if self.jitter == 0.0 {
            return self.interval;
        }
        let f = 1.0 + self.rng.random_range(-self.jitter..=self.jitter);
        self.interval.mul_f64(f)
    }

    /// When the next pass is due.
    pub(crate) fn next_due(&self) -> Instant {
        self.next_due
    }

    /// Whether a pass is due at `now`; if so the next one is scheduled one jittered interval
    /// after `now` (a late pass does not cause a burst of catch-up passes).
    pub(crate) fn take_due(&mut self, now: Instant) -> bool {
        if now < self.next_due {
            return false;
        }
        self.next_due = now + self.jittered();
        true
    }

    /// Refills the bucket up to `now` and takes `n` prompts if it holds them all.
    pub(crate) fn take_budget(&mut self, now: Instant, n: usize) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.refilled = self.refilled.max(now);
        self.tokens = (self.tokens + elapsed * self.per_hour / 3600.0).min(self.per_hour);
        // A hair of tolerance so that exactly refilled buckets are not lost to rounding.
        if self.tokens + 1e-9 >= n as f64 {
            self.tokens = (self.tokens - n as f64).max(0.0);
            true
        } else {
            false
        }
    }

    /// Gives back prompts taken but not run (skipped as busy or hung).
    pub(crate) fn refund(&mut self, n: usize) {
        self.tokens = (self.tokens + n as f64).min(self.per_hour);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokenmeter_core::clock::Clock;

    #[test]
    fn due_every_interval_without_jitter_and_no_catch_up_burst() {
        let (clock, mock) = Clock::mock();
        let mut s = Schedule::new(clock.now(), Duration::from_secs(60), 0.0, 1, 100);
        assert!(!s.take_due(clock.now()));
        mock.increment(Duration::from_secs(59));
        assert!(!s.take_due(clock.now()));
        mock.increment(Duration::from_secs(1));
        assert!(s.take_due(clock.now()));
        assert!(!s.take_due(clock.now()));
        mock.increment(Duration::from_secs(600)); // late: one pass, then one interval on
        assert!(s.take_due(clock.now()));
        assert!(!s.take_due(clock.now()));
        assert_eq!(s.next_due(), clock.now() + Duration::from_secs(60));
    }

    #[test]
    fn jitter_stays_within_its_bounds_and_varies() {
        let (clock, _mock) = Clock::mock();
        let now = clock.now();
        let mut s = Schedule::new(now, Duration::from_secs(100), 0.25, 7, 100);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..50 {
            let d = s.jittered();
            assert!(
                d >= Duration::from_secs(75) && d <= Duration::from_secs(125),
                "{d:?}"
            );
            seen.insert(d);
        }
        assert!(seen.len() > 40);
    }

    #[test]
    fn budget_is_a_token_bucket_of_one_hour() {
        let (clock, mock) = Clock::mock();
        let mut s = Schedule::new(clock.now(), Duration::from_secs(60), 0.0, 1, 60);
        assert!(s.take_budget(clock.now(), 40));
        assert!(!s.take_budget(clock.now(), 40)); // 20 left
        mock.increment(Duration::from_secs(20 * 60)); // +20 prompts: 40 left
        assert!(s.take_budget(clock.now(), 40));
        s.refund(5);
        assert!(s.take_budget(clock.now(), 5));
        assert!(!s.take_budget(clock.now(), 1));
        mock.increment(Duration::from_secs(10 * 3600)); // capped at one hour's worth
        assert!(s.take_budget(clock.now(), 60));
        assert!(!s.take_budget(clock.now(), 1));
    }
}
