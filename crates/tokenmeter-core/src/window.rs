//! The in-process sliding window behind [`Meter::snapshot`](crate::Meter::snapshot).
//!
//! The window is a ring of sub-windows (slots), each holding hdrhistogram histograms in
//! nanoseconds. Requests land in the slot of the moment they are recorded; a snapshot merges the
//! slots that overlap the last `window` of time. Recording happens per request (and per flush
//! of a long generation), never per token.

use std::time::Duration;

use hdrhistogram::Histogram;
use quanta::Instant;

use crate::summary::RequestSummary;
use crate::types::{Outcome, Totals};

const SLOTS: u64 = 6;
/// Longest latency tracked exactly: one day. Longer values are clamped to it.
const MAX_NS: u64 = 86_400_000_000_000;

/// Latency distribution over the window, in seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LatencySummary {
    /// Observations in the window.
    pub count: u64,
    /// Mean (0 when empty).
    pub mean: f64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest observation.
    pub max: f64,
}

/// What [`Meter::snapshot`](crate::Meter::snapshot) returns: percentiles, rates and goodput over
/// the sliding window, plus cumulative totals. Percentiles come from hdrhistogram with 3
/// significant digits; ITL percentiles are resolved to the mean of each exported bucket (the
/// guard accumulates per bucket, not per token).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Snapshot {
    /// The served model.
    pub model: String,
    /// The configured window length, seconds.
    pub window_seconds: f64,
    /// The part of the window the meter has been alive for, seconds (rates divide by this).
    pub covered_seconds: f64,
    /// Seconds since the meter was built.
    pub uptime_seconds: f64,
    /// Requests scheduled and not yet ended, now.
    pub running: u64,
    /// Requests started and not yet scheduled, now.
    pub waiting: u64,
    /// Requests that ended in the window (any way).
    pub requests_ended: u64,
    /// Requests that finished successfully (not failed, not cancelled) in the window.
    pub requests_succeeded: u64,
    /// Requests that failed in the window.
    pub requests_failed: u64,
    /// Requests cancelled in the window.
    pub requests_cancelled: u64,
    /// Successful requests that met the SLO in the window.
    pub goodput_requests: u64,
    /// `goodput_requests / requests_succeeded`; `None` when nothing succeeded in the window.
    pub goodput_ratio: Option<f64>,
    /// Output tokens flushed in the window.
    pub output_tokens: u64,
    /// Output tokens per second over the covered window.
    pub tokens_per_second: f64,
    /// Ended requests per second over the covered window.
    pub requests_per_second: f64,
    /// Time to first token.
    pub ttft: LatencySummary,
    /// Time per output token (one value per request with at least 2 tokens).
    pub tpot: LatencySummary,
    /// Inter-token latency (one value per output token after the first).
    pub itl: LatencySummary,
    /// End-to-end request duration.
    pub e2e: LatencySummary,
    /// Queue time (requests that called `scheduled()`).
    pub queue: LatencySummary,
    /// Cumulative totals since the meter was built.
    pub totals: Totals,
}

struct Slot {
    index: u64,
    ttft: Histogram<u64>,
    tpot: Histogram<u64>,
    itl: Histogram<u64>,
    e2e: Histogram<u64>,
    queue: Histogram<u64>,
    ended: u64,
    succeeded: u64,
    failed: u64,
    cancelled: u64,
    goodput: u64,
    tokens: u64,
}

fn hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("constant hdrhistogram bounds are valid")
}

impl Slot {
    fn new(index: u64) -> Self {
        Slot {
            index,
            ttft: hist(),
            tpot: hist(),
            itl: hist(),
            e2e: hist(),
            queue: hist(),
            ended: 0,
            succeeded: 0,
            failed: 0,
            cancelled: 0,
            goodput: 0,
            tokens: 0,
        }
    }
}

pub(crate) struct Window {
    epoch: Instant,
    slot_ns: u64,
    window: Duration,
    slots: Vec<Slot>,
}

fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos())
        .unwrap_or(u64::MAX)
        .clamp(1, MAX_NS)
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    // Values are clamped into the histogram's range, so this cannot fail.
    let _ = h.record(ns(d));
}

impl Window {
    pub(crate) fn new(window: Duration, epoch: Instant) -> Self {
        let slot_ns = u64::try_from(window.as_nanos() / u128::from(SLOTS))
            .unwrap_or(u64::MAX)
            .max(1);
        Window {
            epoch,
            slot_ns,
            window,
            slots: Vec::new(),
        }
    }

    fn slot(&mut self, now: Instant) -> &mut Slot {
        let index = ns_since(self.epoch, now) / self.slot_ns;
        self.slots.retain(|s| s.index + SLOTS > index);
        let pos = match self.slots.iter().position(|s| s.index == index) {
            Some(p) => p,
            None => {
                self.slots.push(Slot::new(index));
                self.slots.len() - 1
            }
        };
        &mut self.slots[pos]
    }

    pub(crate) fn record_tokens(&mut self, now: Instant, tokens: u64, itl: &[(u64, u64)]) {
        let slot = self.slot(now);
        slot.tokens = slot.tokens.saturating_add(tokens);
        for &(mean_ns, count) in itl {
            let _ = slot.itl.record_n(mean_ns.clamp(1, MAX_NS), count);
        }
    }

    pub(crate) fn record_end(&mut self, now: Instant, e: &RequestSummary, outcome: Outcome) {
        let slot = self.slot(now);
        slot.ended += 1;
        match outcome {
            Outcome::Succeeded => slot.succeeded += 1,
            Outcome::Failed => slot.failed += 1,
            Outcome::Cancelled => slot.cancelled += 1,
        }
        if e.goodput {
            slot.goodput += 1;
        }
        if let Some(t) = e.ttft {
            record(&mut slot.ttft, t);
        }
        if let Some(t) = e.tpot {
            record(&mut slot.tpot, t);
        }
        if let Some(t) = e.queue {
            record(&mut slot.queue, t);
        }
        record(&mut slot.e2e, e.e2e);
    }

    pub(crate) fn snapshot(
        &mut self,
        now: Instant,
        uptime: Duration,
        model: &str,
        totals: Totals,
        running: u64,
        waiting: u64,
    ) -> Snapshot {
        let now_ns = ns_since(self.epoch, now);
        let index = now_ns / self.slot_ns;
        // The window is the current (partial) slot and the SLOTS - 1 full slots before it.
        let oldest = index.saturating_sub(SLOTS - 1);
        let covered_ns = now_ns - oldest * self.slot_ns;
        let live: Vec<&Slot> = self
            .slots
            .iter()
            .filter(|s| s.index >= oldest && s.index <= index)
            .collect();
        let merge = |f: fn(&Slot) -> &Histogram<u64>| {
            let mut h = hist();
            for s in &live {
                let _ = h.add(f(s));
            }
            summary(&h)
        };
        let sum = |f: fn(&Slot) -> u64| live.iter().map(|s| f(s)).sum::<u64>();
        let covered = (covered_ns as f64 / 1e9).max(1e-9);
        let succeeded = sum(|s| s.succeeded);
        let goodput = sum(|s| s.goodput);
        let ended = sum(|s| s.ended);
        let tokens = sum(|s| s.tokens);
        Snapshot {
            model: model.to_owned(),
            window_seconds: self.window.as_secs_f64(),
            covered_seconds: covered,
            uptime_seconds: uptime.as_secs_f64(),
            running,
            waiting,
            requests_ended: ended,
            requests_succeeded: succeeded,
            requests_failed: sum(|s| s.failed),
            requests_cancelled: sum(|s| s.cancelled),
            goodput_requests: goodput,
            goodput_ratio: (succeeded > 0).then(|| goodput as f64 / succeeded as f64),
            output_tokens: tokens,
            tokens_per_second: tokens as f64 / covered,
            requests_per_second: ended as f64 / covered,
            ttft: merge(|s| &s.ttft),
            tpot: merge(|s| &s.tpot),
            itl: merge(|s| &s.itl),
            e2e: merge(|s| &s.e2e),
            queue: merge(|s| &s.queue),
            totals,
        }
    }
}

fn ns_since(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_nanos()).unwrap_or(u64::MAX)
}

fn summary(h: &Histogram<u64>) -> LatencySummary {
    if h.is_empty() {
        return LatencySummary::default();
    }
    let s = |v: u64| v as f64 / 1e9;
    LatencySummary {
        count: h.len(),
        mean: h.mean() / 1e9,
        p50: s(h.value_at_quantile(0.5)),
        p90: s(h.value_at_quantile(0.9)),
        p99: s(h.value_at_quantile(0.99)),
        p999: s(h.value_at_quantile(0.999)),
        max: s(h.max()),
    }
}
