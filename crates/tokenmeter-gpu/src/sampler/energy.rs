//! One GPU's energy figure: deltas of its energy counter, or power integrated over time.

use serde::Serialize;
use tokenmeter_core::Instant;

/// How a GPU's energy figure is obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnergySource {
    /// The GPU's own total-energy counter.
    Counter,
    /// Power draw integrated over time (trapezoids between samples).
    IntegratedPower,
}

/// One GPU's energy since the sampler started. Unknown until the counter or the power draw has
/// been read.
#[derive(Debug, Default)]
pub(super) struct GpuEnergy {
    /// Joules since start.
    pub(super) total_j: Option<f64>,
    /// Where `total_j` comes from.
    pub(super) source: Option<EnergySource>,
    last_counter_j: Option<f64>,
    last_power: Option<(Instant, f64)>,
}

impl GpuEnergy {
    /// Energy since start: deltas of the GPU's counter where it has one; otherwise trapezoids
    /// of power between consecutive samples. Unknown until one of the two has been read.
    pub(super) fn update(&mut self, counter: Option<f64>, power: Option<f64>, now: Instant) {
        match counter {
            Some(c) => {
                let total = self.total_j.get_or_insert(0.0);
                if let Some(prev) = self.last_counter_j
                    && c >= prev
                {
                    *total += c - prev;
                }
                // c < prev: the counter was reset (driver reload); it restarts from c.
                self.last_counter_j = Some(c);
                self.source = Some(EnergySource::Counter);
            }
            None => {
                self.last_counter_j = None;
                if let Some(p) = power {
                    let total = self.total_j.get_or_insert(0.0);
                    if let Some((t0, p0)) = self.last_power {
                        let dt = now.saturating_duration_since(t0).as_secs_f64();
                        *total += (p0 + p) / 2.0 * dt;
                    }
                    self.source = Some(EnergySource::IntegratedPower);
                }
            }
        }
        self.last_power = power.map(|p| (now, p));
    }

    /// The GPU stopped answering: the total is kept, nothing is integrated across the gap.
    pub(super) fn lost(&mut self) {
        self.last_power = None;
        self.last_counter_j = None;
    }
}
