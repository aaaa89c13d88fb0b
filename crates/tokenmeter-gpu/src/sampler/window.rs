//! The energy window: energy, tokens and GPU time of the node over the sliding window, and
//! the per-token figures derived from them (one formula, shared with the per-model shares).

use std::collections::VecDeque;
use std::time::Duration;

use serde::Serialize;
use tokenmeter_core::clock::Instant;

/// Figures derived over the sampler window for the whole node: the energy of every reported
/// GPU and the output tokens of every attached meter.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Derived {
    /// Span of the window actually covered, seconds (grows to the configured window).
    pub window_s: f64,
    /// Output tokens in the window (from `meter.totals().output_tokens` of every attached meter).
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
    /// Output tokens of the attached meters since the sampler started (a meter attached later
    /// counts from its attachment).
    pub output_tokens_since_start: u64,
    /// Energy of the reported GPUs since the sampler started, joules.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy_since_start_j: Option<f64>,
    /// GPU-seconds of the reported GPUs since the sampler started (the basis of cost).
    pub gpu_seconds_since_start: f64,
}

/// The per-token figures of one window: `(J per token, tokens per J, cost per 1k tokens)`.
/// Each is absent, never 0 or infinite, when its denominator or its numerator is zero: no
/// token, no energy (a GPU that served tokens used energy; zero means the figure is unknown),
/// no GPU time.
pub(super) fn per_token(
    energy_j: Option<f64>,
    tokens: u64,
    gpu_time: Duration,
    price_per_gpu_hour: Option<f64>,
) -> (Option<f64>, Option<f64>, Option<f64>) {
    if tokens == 0 {
        return (None, None, None);
    }
    let t = tokens as f64;
    let energy = energy_j.filter(|e| *e > 0.0);
    let gpu_s = gpu_time.as_secs_f64();
    let cost = price_per_gpu_hour
        .filter(|_| gpu_s > 0.0)
        .map(|p| p * gpu_s / 3600.0 / t * 1000.0);
    (energy.map(|e| e / t), energy.map(|e| t / e), cost)
}

/// One end of the window.
#[derive(Clone, Copy, Debug)]
pub(super) struct Point<E> {
    pub(super) at: Instant,
    pub(super) energy_j: Option<E>,
    pub(super) tokens: u64,
    pub(super) gpu_time: Duration,
}

/// Points over the sliding window; the oldest one kept is at most `window` before the newest.
#[derive(Debug, Default)]
pub(super) struct Window<E> {
    points: VecDeque<Point<E>>,
}

impl<E: Copy> Window<E> {
    /// Adds `point` and returns the oldest point still in the window (maybe `point` itself).
    pub(super) fn push(&mut self, point: Point<E>, window: Duration) -> Point<E> {
        self.points.push_back(point);
        while self.points.len() >= 2
            && point.at.saturating_duration_since(self.points[1].at) >= window
        {
            self.points.pop_front();
        }
        self.points.front().copied().unwrap_or(point)
    }
}

/// The node's window.
#[derive(Debug, Default)]
pub(super) struct NodeWindow {
    window: Window<f64>,
}

impl NodeWindow {
    /// Adds this sample's node totals and derives the figures over the window.
    /// `tokens_since_start` is the output tokens of the attached meters since each attached.
    pub(super) fn update(
        &mut self,
        now: Instant,
        window: Duration,
        energy_j: Option<f64>,
        tokens_since_start: u64,
        gpu_time: Duration,
        price: Option<f64>,
    ) -> Derived {
        let point = Point {
            at: now,
            energy_j,
            tokens: tokens_since_start,
            gpu_time,
        };
        let oldest = self.window.push(point, window);
        let d_tokens = tokens_since_start.saturating_sub(oldest.tokens);
        // Energy over the window needs a figure at both ends (a GPU whose energy became known
        // mid-window would otherwise count from zero).
        let d_energy = match (energy_j, oldest.energy_j) {
            (Some(e1), Some(e0)) if e1 >= e0 => Some(e1 - e0),
            _ => None,
        };
        let d_gpu = gpu_time.saturating_sub(oldest.gpu_time);
        let (j_per_token, tokens_per_j, cost) = per_token(d_energy, d_tokens, d_gpu, price);
        Derived {
            window_s: now.saturating_duration_since(oldest.at).as_secs_f64(),
            window_output_tokens: d_tokens,
            window_energy_j: d_energy,
            joules_per_output_token: j_per_token,
            output_tokens_per_joule: tokens_per_j,
            cost_per_1k_output_tokens: cost,
            output_tokens_since_start: tokens_since_start,
            energy_since_start_j: energy_j,
            gpu_seconds_since_start: gpu_time.as_secs_f64(),
        }
    }
}
