//! Liveness: when the engine last stepped, and when each running request last made progress,
//! so that a frozen engine or a stuck request can be seen (the `requests.stalled` gauge,
//! `engine.last_step`, and [`Health`]).
//!
//! Cost: the engine's step stores one instant; a guard stores one instant when it is
//! scheduled, at each flush (about once a second while tokens flow), at a preemption, and
//! takes and returns a slot at start and end (under a lock, as other start/end work does). Nothing per token, so a request's "last progress" is
//! its last flush: up to one flush interval older than its last token.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use quanta::Instant;

use crate::emit::lock;
use crate::itl::nanos;

/// Default [`stall threshold`](crate::MeterBuilder::stall_threshold).
pub const DEFAULT_STALL_THRESHOLD: Duration = Duration::from_secs(30);

/// A slot value meaning "not running" (free, waiting, preempted): such a request cannot stall.
const IDLE: u64 = 0;
/// Slots are allocated in chunks, so that a slot never moves and needs no lock to store into.
const CHUNK: usize = 256;
const CHUNKS: usize = 256;

/// A request's liveness slot (an index; [`Slot::NONE`] when all slots were taken, and then the
/// request is not watched).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Slot(u32);

impl Slot {
    const NONE: Slot = Slot(u32::MAX);
}

/// Every in-flight request's last progress, and the engine's last step.
#[derive(Debug)]
pub(crate) struct Liveness {
    base: Instant,
    threshold: Duration,
    /// The engine's last step (ns since `base`, plus one); 0 before the first.
    last_step: AtomicU64,
    /// When a step last refreshed the stalled gauge (ns since `base`, plus one).
    last_refresh: AtomicU64,
    /// Per slot: its request's last progress (ns since `base`, plus one), or [`IDLE`].
    chunks: Box<[OnceLock<Box<[AtomicU64]>>]>,
    /// Slots handed out so far (a high-water mark: scans stop there).
    used: AtomicU32,
    free: Mutex<Vec<u32>>,
}

/// What [`Liveness::scan`] found among the registered requests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Scan {
    pub(crate) running: u64,
    pub(crate) stalled: u64,
    /// The longest time since a running request's last progress.
    pub(crate) longest_silence: Option<Duration>,
}

impl Liveness {
    pub(crate) fn new(base: Instant, threshold: Duration) -> Self {
        Liveness {
            base,
            threshold,
            last_step: AtomicU64::new(0),
            last_refresh: AtomicU64::new(0),
            chunks: (0..CHUNKS).map(|_| OnceLock::new()).collect(),
            used: AtomicU32::new(0),
            free: Mutex::new(Vec::new()),
        }
    }

    pub(crate) fn threshold(&self) -> Duration {
        self.threshold
    }

    fn stamp(&self, now: Instant) -> u64 {
        nanos(now.saturating_duration_since(self.base)).saturating_add(1)
    }

    fn age(&self, stamp: u64, now: Instant) -> Duration {
        Duration::from_nanos(self.stamp(now).saturating_sub(stamp))
    }

    fn cell(&self, slot: Slot) -> Option<&AtomicU64> {
        let i = slot.0 as usize;
        self.chunks.get(i / CHUNK)?.get()?.get(i % CHUNK)
    }

    /// Registers a new (waiting) request.
    pub(crate) fn register(&self) -> Slot {
        let mut free = lock(&self.free);
        let index = match free.pop() {
            Some(i) => i,
            None => {
                let i = self.used.load(Relaxed);
                if i as usize >= CHUNK * CHUNKS {
                    return Slot::NONE;
                }
                self.chunks[i as usize / CHUNK]
                    .get_or_init(|| (0..CHUNK).map(|_| AtomicU64::new(IDLE)).collect());
                self.used.store(i + 1, Relaxed);
                i
            }
        };
        Slot(index)
    }

    /// Forgets an ended request; its slot goes back to the free list.
    pub(crate) fn unregister(&self, slot: Slot) {
        if let Some(c) = self.cell(slot) {
            c.store(IDLE, Relaxed);
            lock(&self.free).push(slot.0);
        }
    }

    /// The request made progress at `now` (scheduled, re-admitted, flushed tokens).
    pub(crate) fn progress(&self, slot: Slot, now: Instant) {
        if let Some(c) = self.cell(slot) {
            c.store(self.stamp(now), Relaxed);
        }
    }

    /// The request stopped running (preempted): it cannot stall while it waits.
    pub(crate) fn idle(&self, slot: Slot) {
        if let Some(c) = self.cell(slot) {
            c.store(IDLE, Relaxed);
        }
    }

    /// Records an engine step at `now`; `false` (and nothing stored) when `now` is not after
    /// the previous step (the same step reported twice, or a clock gone backwards).
    pub(crate) fn step(&self, now: Instant) -> bool {
        let stamp = self.stamp(now);
        if stamp <= self.last_step.load(Relaxed) {
            return false;
        }
        self.last_step.store(stamp, Relaxed);
        true
    }

    /// Time since the engine's last step; `None` before the first.
    pub(crate) fn since_last_step(&self, now: Instant) -> Option<Duration> {
        match self.last_step.load(Relaxed) {
            0 => None,
            s => Some(self.age(s, now)),
        }
    }

    /// Whether a step should refresh the stalled gauge now (at most once per second).
    pub(crate) fn refresh_due(&self, now: Instant) -> bool {
        let stamp = self.stamp(now);
        let last = self.last_refresh.load(Relaxed);
        if last != 0 && stamp.saturating_sub(last) < 1_000_000_000 {
            return false;
        }
        self.last_refresh.store(stamp, Relaxed);
        true
    }

    /// Counts the running requests, and those without progress for longer than the threshold.
    pub(crate) fn scan(&self, now: Instant) -> Scan {
        let used = self.used.load(Relaxed) as usize;
        let mut scan = Scan::default();
        let cells = self
            .chunks
            .iter()
            .filter_map(OnceLock::get)
            .flat_map(|c| c.iter())
            .take(used);
        for cell in cells {
            let last = cell.load(Relaxed);
            if last == IDLE {
                continue;
            }
            let age = self.age(last, now);
            scan.running += 1;
            if age > self.threshold {
                scan.stalled += 1;
            }
            scan.longest_silence = Some(scan.longest_silence.map_or(age, |a| a.max(age)));
        }
        scan
    }
}

/// Whether the engine is alive, from [`Meter::health`](crate::Meter::health): a server mounts it
/// on `/health` so that a frozen engine fails its probe while the HTTP server still answers.
///
/// The engine is *frozen* when work is in flight and either it reported steps
/// ([`Meter::engine_step`](crate::Meter::engine_step)) but none for longer than the stall
/// threshold, or it reports no steps and every running request has stalled.
///
/// ```
/// use std::time::Duration;
/// use tokenmeter_core::Meter;
/// let (clock, mock) = quanta::Clock::mock();
/// let meter = Meter::builder().clock(clock).stall_threshold(Duration::from_secs(5)).build();
/// let mut req = meter.request().start();
/// req.scheduled();
/// meter.engine_step(&tokenmeter_core::EngineStep::new(1, 8));
/// assert!(meter.health().healthy);
/// mock.increment(Duration::from_secs(6)); // no step, no token for 6 s
/// let h = meter.health();
/// assert!(!h.healthy);
/// assert_eq!(h.since_last_step, Some(Duration::from_secs(6)));
/// assert_eq!(h.stalled, 1);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct Health {
    /// False when the engine looks frozen (see the type's documentation).
    pub healthy: bool,
    /// Time since the engine's last reported step; `None` when it never reported one.
    pub since_last_step: Option<Duration>,
    /// Requests running now (scheduled, not preempted, not ended).
    pub running: u64,
    /// Requests waiting now (not yet scheduled, or preempted).
    pub waiting: u64,
    /// Running requests without progress (a token flush, or scheduling) for longer than the
    /// stall threshold.
    pub stalled: u64,
    /// The longest time since a running request's last progress (its last flush, at most one
    /// flush interval after its last token); `None` when none runs.
    pub longest_silence: Option<Duration>,
    /// The threshold the meter judges by.
    pub stall_threshold: Duration,
}

impl Health {
    pub(crate) fn judge(
        since_last_step: Option<Duration>,
        running: u64,
        waiting: u64,
        scan: Scan,
        stall_threshold: Duration,
    ) -> Self {
        let in_flight = running + waiting > 0;
        let frozen = match since_last_step {
            Some(age) => in_flight && age > stall_threshold,
            None => scan.running > 0 && scan.stalled == scan.running,
        };
        Health {
            healthy: !frozen,
            since_last_step,
            running,
            waiting,
            stalled: scan.stalled,
            longest_silence: scan.longest_silence,
            stall_threshold,
        }
    }

    /// The HTTP status a `/health` handler answers: 200 when healthy, 503 when frozen.
    ///
    /// ```
    /// assert_eq!(tokenmeter_core::Meter::default().health().http_status(), 200);
    /// ```
    pub fn http_status(&self) -> u16 {
        if self.healthy { 200 } else { 503 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_reused_and_scanned() {
        let (clock, mock) = quanta::Clock::mock();
        let l = Liveness::new(clock.now(), Duration::from_secs(2));
        let a = l.register();
        let b = l.register();
        l.progress(a, clock.now());
        mock.increment(Duration::from_secs(3));
        l.progress(b, clock.now());
        let s = l.scan(clock.now());
        assert_eq!((s.running, s.stalled), (2, 1));
        assert_eq!(s.longest_silence, Some(Duration::from_secs(3)));
        l.idle(a);
        assert_eq!(l.scan(clock.now()).running, 1);
        l.unregister(a);
        let c = l.register();
        assert_eq!(c, a);
        assert_eq!(l.scan(clock.now()).running, 1);
        l.progress(Slot::NONE, clock.now()); // an unwatched request: nothing happens
        l.unregister(Slot::NONE);
        assert_eq!(l.register(), Slot(2));
    }

    #[test]
    fn a_step_at_the_same_instant_is_refused() {
        let (clock, mock) = quanta::Clock::mock();
        let l = Liveness::new(clock.now(), Duration::from_secs(2));
        assert_eq!(l.since_last_step(clock.now()), None);
        assert!(l.step(clock.now()));
        assert!(!l.step(clock.now()));
        mock.increment(Duration::from_millis(5));
        assert!(l.step(clock.now()));
        mock.increment(Duration::from_millis(7));
        assert_eq!(
            l.since_last_step(clock.now()),
            Some(Duration::from_millis(7))
        );
    }
}
