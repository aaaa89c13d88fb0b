//! One GPU's energy figure: deltas of its energy counter, or power integrated over time.

use std::time::Duration;

use serde::Serialize;
use tokenmeter_core::clock::Instant;

/// How a GPU's energy figure is obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnergySource {
    /// The GPU's own total-energy counter.
    Counter,
    /// Power draw integrated over time (trapezoids between samples).
    IntegratedPower,
}

/// How long the energy counter may stand still while the power draw says energy flows before
/// the sampler counts integrated power instead (a stuck counter must not read as free energy).
pub(super) const STALL: Duration = Duration::from_secs(1);

/// One GPU's energy since the sampler started. Unknown until the counter or the power draw has
/// been read.
///
/// With a counter, energy is the sum of its deltas, and the last good reading is kept across
/// failed reads (the next good read covers the gap). A counter that goes backwards was reset
/// (driver reload) and counts from zero, as Prometheus's `rate()` does. A counter that stands
/// still (or cannot be read) for [`STALL`] while power is drawn is bridged with integrated
/// power; when it moves again its delta is reconciled with what was bridged, so no joule is
/// counted twice.
#[derive(Debug, Default)]
pub(super) struct GpuEnergy {
    /// Joules since start.
    pub(super) total_j: Option<f64>,
    /// Where the latest growth of `total_j` came from.
    pub(super) source: Option<EnergySource>,
    counter: Option<CounterState>,
    last_power: Option<(Instant, f64)>,
}

/// The counter as last seen: its value and what happened since it last moved.
#[derive(Debug)]
struct CounterState {
    last_j: f64,
    moved_at: Instant,
    /// Power integral since the counter last moved, not counted yet.
    pending_j: f64,
    /// Power integral counted while the counter stood still or failed (the bridge).
    bridged_j: f64,
    /// A read failed since the counter last moved: its next delta covers the whole gap.
    failed: bool,
}

/// What [`GpuEnergy::update`] noticed, for the caller's log.
#[derive(Debug, PartialEq)]
pub(super) enum EnergyEvent {
    /// The counter stood still for [`STALL`] while power was drawn; power is integrated now.
    Stalled { counter_j: f64 },
}

impl GpuEnergy {
    /// Takes one sample: the counter and the power draw as read (`None`: the read failed or the
    /// GPU has no such call).
    pub(super) fn update(
        &mut self,
        counter: Option<f64>,
        power: Option<f64>,
        now: Instant,
    ) -> Option<EnergyEvent> {
        // Power integral since the last good power reading, across failed reads.
        let power_j = match (self.last_power, power) {
            (Some((t0, p0)), Some(p)) => {
                Some((p0 + p) / 2.0 * now.saturating_duration_since(t0).as_secs_f64())
            }
            _ => None,
        };
        if let Some(p) = power {
            self.last_power = Some((now, p));
        }
        let Some(state) = self.counter.as_mut() else {
            if let Some(c) = counter {
                self.counter = Some(CounterState::at(c, now));
                self.total_j.get_or_insert(0.0);
                self.source = Some(EnergySource::Counter);
            } else if power.is_some() {
                // No counter on this GPU (yet): trapezoids of power.
                *self.total_j.get_or_insert(0.0) += power_j.unwrap_or(0.0);
                self.source = Some(EnergySource::IntegratedPower);
            }
            return None;
        };
        let total = self.total_j.get_or_insert(0.0);
        match counter {
            Some(c) if c < state.last_j => {
                // Reset: the counter restarted from zero within the interval.
                *total += c;
                *state = CounterState::at(c, now);
                self.source = Some(EnergySource::Counter);
                None
            }
            Some(c) if c > state.last_j => {
                let d = c - state.last_j;
                *total += state.reconcile(d, power_j);
                *state = CounterState::at(c, now);
                self.source = Some(EnergySource::Counter);
                None
            }
            // Stood still, or failed to read.
            _ => {
                state.failed |= counter.is_none();
                let e = power_j.unwrap_or(0.0);
                if state.bridged_j > 0.0 {
                    *total += e;
                    state.bridged_j += e;
                    return None;
                }
                state.pending_j += e;
                let stalled = now.saturating_duration_since(state.moved_at) >= STALL;
                if stalled && state.pending_j > 0.0 {
                    *total += state.pending_j;
                    state.bridged_j = state.pending_j;
                    state.pending_j = 0.0;
                    self.source = Some(EnergySource::IntegratedPower);
                    return (!state.failed).then_some(EnergyEvent::Stalled {
                        counter_j: state.last_j,
                    });
                }
                None
            }
        }
    }

    /// The GPU stopped answering: the total is kept, nothing is integrated across the gap.
    pub(super) fn lost(&mut self) {
        self.last_power = None;
        self.counter = None;
    }
}

impl CounterState {
    fn at(c: f64, now: Instant) -> Self {
        CounterState {
            last_j: c,
            moved_at: now,
            pending_j: 0.0,
            bridged_j: 0.0,
            failed: false,
        }
    }

    /// Joules to add for a counter delta `d` after a bridge of `bridged_j`, given the power
    /// integral of the last interval. Two readings are possible: the counter kept counting
    /// through the gap and `d` covers it (always so after failed reads), or it stood still and
    /// resumed from where it stopped, so `d` covers only the last interval. The one whose
    /// prediction is nearer `d` wins; without a power figure, the first (nothing is counted
    /// twice).
    fn reconcile(&self, d: f64, last_interval_j: Option<f64>) -> f64 {
        let caught_up = (d - self.bridged_j).max(0.0);
        match last_interval_j {
            Some(e) if !self.failed && self.bridged_j > 0.0 => {
                let resumed = (d - e).abs() < (d - (self.bridged_j + e)).abs();
                if resumed { d } else { caught_up }
            }
            _ => caught_up,
        }
    }
}
