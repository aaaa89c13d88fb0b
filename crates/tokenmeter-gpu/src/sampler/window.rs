//! The energy window: energy, tokens and GPU-seconds over the sliding window, and the
//! per-token figures derived from them.

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;
use tokenmeter_core::{Instant, Meter};

use crate::emit::{GaugeSlot, labels};

use super::gpu::GpuState;

/// Figures derived over the sampler window from GPU energy and the meter's output-token total.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Derived {
    /// Span of the window actually covered, seconds (grows to the configured window).
    pub window_s: f64,
    /// Output tokens in the window (from `meter.totals().output_tokens`).
    pub window_output_tokens: u64,
    /// Energy of the reported GPUs in the window, joules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window_energy_j: Option<f64>,
    /// Joules per output token over the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub joules_per_output_token: Option<f64>,
    /// Output tokens per joule over the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens_per_joule: Option<f64>,
    /// Cost of 1000 output tokens over the window, in the currency of the configured price.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_per_1k_output_tokens: Option<f64>,
    /// Output tokens since the sampler started.
    pub output_tokens_since_start: u64,
    /// Energy of the reported GPUs since the sampler started, joules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy_since_start_j: Option<f64>,
    /// GPU-seconds of the reported GPUs since the sampler started (the basis of cost).
    pub gpu_seconds_since_start: f64,
}

#[derive(Clone, Copy)]
struct WindowPoint {
    at: Instant,
    energy_j: Option<f64>,
    tokens: u64,
    gpu_seconds: f64,
}

pub(super) struct DerivedState {
    points: VecDeque<WindowPoint>,
    first_tokens: Option<u64>,
    j_per_token: GaugeSlot,
    tokens_per_j: GaugeSlot,
    cost: GaugeSlot,
}

impl DerivedState {
    pub(super) fn new(meter: &Meter) -> Self {
        let l = labels(meter, &[]);
        DerivedState {
            points: VecDeque::new(),
            first_tokens: None,
            j_per_token: GaugeSlot::new(meter, "gpu.energy_per_output_token", l.clone()),
            tokens_per_j: GaugeSlot::new(meter, "gpu.output_tokens_per_joule", l.clone()),
            cost: GaugeSlot::new(meter, "gpu.cost_per_1k_output_tokens", l),
        }
    }

    pub(super) fn update(
        &mut self,
        meter: &Meter,
        now: Instant,
        window: Duration,
        gpus: &[GpuState],
        price: Option<f64>,
    ) -> Derived {
        let tokens = meter.totals().output_tokens;
        let first_tokens = *self.first_tokens.get_or_insert(tokens);
        let active = gpus.iter().filter(|g| g.active);
        let energy = active
            .clone()
            .filter_map(|g| g.energy.total_j)
            .fold(None, |acc: Option<f64>, e| Some(acc.unwrap_or(0.0) + e));
        let gpu_seconds: f64 = active.clone().map(|g| g.gpu_seconds).sum();
        let any_gpu = active.count() > 0;
        let point = WindowPoint {
            at: now,
            energy_j: energy,
            tokens,
            gpu_seconds,
        };
        self.points.push_back(point);
        while self.points.len() >= 2 && now.saturating_duration_since(self.points[1].at) >= window {
            self.points.pop_front();
        }
        let oldest = self.points.front().copied().unwrap_or(point);
        let window_s = now.saturating_duration_since(oldest.at).as_secs_f64();
        let d_tokens = tokens.saturating_sub(oldest.tokens);
        // Energy over the window: needs a figure at both ends (a GPU whose energy became known
        // mid-window would otherwise count from zero).
        let d_energy = match (energy, oldest.energy_j) {
            (Some(e1), Some(e0)) if e1 >= e0 => Some(e1 - e0),
            _ => None,
        };
        let j_per_token = match d_energy {
            Some(e) if d_tokens > 0 => Some(e / d_tokens as f64),
            _ => None,
        };
        let tokens_per_j = match d_energy {
            Some(e) if e > 0.0 && d_tokens > 0 => Some(d_tokens as f64 / e),
            _ => None,
        };
        let d_gpu_s = gpu_seconds - oldest.gpu_seconds;
        let cost = match price {
            Some(p) if any_gpu && d_tokens > 0 && window_s > 0.0 => {
                Some(p * d_gpu_s / 3600.0 / d_tokens as f64 * 1000.0)
            }
            _ => None,
        };
        self.j_per_token.set(j_per_token);
        self.tokens_per_j.set(tokens_per_j);
        self.cost.set(cost);
        Derived {
            window_s,
            window_output_tokens: d_tokens,
            window_energy_j: d_energy,
            joules_per_output_token: j_per_token,
            output_tokens_per_joule: tokens_per_j,
            cost_per_1k_output_tokens: cost,
            output_tokens_since_start: tokens.saturating_sub(first_tokens),
            energy_since_start_j: energy,
            gpu_seconds_since_start: gpu_seconds,
        }
    }
}
