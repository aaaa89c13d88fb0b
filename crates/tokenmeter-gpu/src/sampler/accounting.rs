//! Energy and cost accounting across models: one sampler serves every meter (model) of the
//! process, and each interval's GPU energy and GPU time are split across the attached meters
//! in proportion to the output tokens each generated in that interval.
//!
//! The split is done in integers (whole joules, as the per-GPU energy counters export them,
//! and nanoseconds of GPU time) with the largest-remainder method, so the models' parts add up
//! exactly to the node's whole: Σ `energy.attributed` = Σ `hw.energy` at every sample. An
//! interval in which no attached meter generated a token (idle GPUs still draw power, and a
//! rented GPU is still paid for) is split equally.

use std::time::Duration;

use metrics::Label;
use serde::Serialize;
use tokenmeter_core::Meter;
use tokenmeter_core::attribution::Subscription;
use tokenmeter_core::catalog;
use tokenmeter_core::clock::Instant;

use crate::emit::{CounterSlot, GaugeSlot, labels};

use super::window::{Point, Window, per_token};

/// One model's share of the node's GPU energy and cost, and its per-token figures.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelShare {
    /// The meter's model name.
    pub model: String,
    /// Output tokens of this meter since the sampler's first sample after it was attached
    /// ("since attached" below).
    pub output_tokens_since_start: u64,
    /// GPU energy attributed to this model since attached, whole joules (the value of its
    /// `energy.attributed` counter). Absent until the GPUs' energy is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy_j: Option<u64>,
    /// GPU-seconds attributed to this model since attached (the basis of its cost).
    pub gpu_seconds: f64,
    /// Cost attributed to this model since attached, in the currency of the configured price
    /// per GPU-hour; absent without a price.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
    /// Output tokens of this meter in the window.
    pub window_output_tokens: u64,
    /// Attributed joules per output token over the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub joules_per_output_token: Option<f64>,
    /// Output tokens per attributed joule over the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output_tokens_per_joule: Option<f64>,
    /// Attributed cost of 1000 output tokens over the window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_per_1k_output_tokens: Option<f64>,
}

/// Splits `whole` into parts proportional to `weights` that add up to exactly `whole`
/// (largest remainder; ties go to the earlier part). All-zero weights split equally.
pub(super) fn split(whole: u64, weights: &[u64]) -> Vec<u64> {
    let equal = weights.iter().all(|w| *w == 0);
    let w = |x: u64| if equal { 1 } else { u128::from(x) };
    let sum: u128 = weights.iter().map(|x| w(*x)).sum();
    if sum == 0 {
        return Vec::new();
    }
    let whole_wide = u128::from(whole);
    let mut parts: Vec<(u64, u128)> = weights
        .iter()
        .map(|x| {
            let exact = whole_wide * w(*x);
            // Each part is at most `whole`, so it fits in u64.
            (u64::try_from(exact / sum).unwrap_or(whole), exact % sum)
        })
        .collect();
    let mut left = whole - parts.iter().map(|(p, _)| *p).sum::<u64>();
    let mut order: Vec<usize> = (0..parts.len()).collect();
    order.sort_by(|a, b| parts[*b].1.cmp(&parts[*a].1).then(a.cmp(b)));
    for i in order {
        if left == 0 {
            break;
        }
        parts[i].0 += 1;
        left -= 1;
    }
    parts.into_iter().map(|(p, _)| p).collect()
}

/// One attached meter and what it has been charged.
struct Account {
    meter: Meter,
    labels: Vec<Label>,
    /// Output-token total at the first sample after attaching (the baseline), and at the
    /// latest sample.
    first_tokens: Option<u64>,
    last_tokens: u64,
    energy_j: Option<u64>,
    gpu_ns: u64,
    window: Window<u64>,
    energy: CounterSlot,
    j_per_token: GaugeSlot,
    tokens_per_j: GaugeSlot,
    cost: GaugeSlot,
    /// Its requests, for the per-request split (`super::requests`); `None` once the sampler
    /// found no GPU to split.
    requests: Option<Subscription>,
}

impl Account {
    fn new(meter: &Meter) -> Self {
        let l = labels(meter, &[]);
        Account {
            energy: CounterSlot::new(meter, catalog::gpu::ENERGY_ATTRIBUTED, l.clone()),
            j_per_token: GaugeSlot::new(meter, catalog::gpu::ENERGY_PER_OUTPUT_TOKEN, l.clone()),
            tokens_per_j: GaugeSlot::new(meter, catalog::gpu::OUTPUT_TOKENS_PER_JOULE, l.clone()),
            cost: GaugeSlot::new(meter, catalog::gpu::COST_PER_1K_OUTPUT_TOKENS, l.clone()),
            requests: Some(meter.subscribe_requests()),
            labels: l,
            meter: meter.clone(),
            first_tokens: None,
            last_tokens: 0,
            energy_j: None,
            gpu_ns: 0,
            window: Window::default(),
        }
    }
}

/// Every attached meter's account, and the node totals split at the previous sample.
#[derive(Default)]
pub(super) struct Accounts {
    accounts: Vec<Account>,
    /// Σ whole joules of the reported GPUs at the previous sample.
    last_energy_j: Option<u64>,
    last_gpu_time: Duration,
    /// Set by [`without_gpus`](Self::without_gpus).
    without_gpus: bool,
}

impl Accounts {
    /// Attaches `meter` from the next interval on. A meter whose series would be the same as
    /// an attached one's (same model and constant labels, e.g. the same meter twice) is not
    /// attached again: it would be charged twice.
    pub(super) fn attach(&mut self, meter: &Meter) {
        let l = labels(meter, &[]);
        if self.accounts.iter().any(|a| a.labels == l) {
            tracing::debug!(
                model = meter.model(),
                "tokenmeter-gpu: meter already attached"
            );
            return;
        }
        let mut account = Account::new(meter);
        if self.without_gpus {
            account.requests = None;
        }
        self.accounts.push(account);
    }

    /// Each attached meter's requests, in attachment order.
    pub(super) fn subscriptions(&mut self) -> impl Iterator<Item = &mut Subscription> {
        self.accounts.iter_mut().filter_map(|a| a.requests.as_mut())
    }

    /// The sampler reads no GPU (disabled, no driver, none found): its meters' requests are
    /// no longer tracked (no cell per request), and their summaries carry no energy or cost.
    pub(super) fn without_gpus(&mut self) {
        self.without_gpus = true;
        for a in &mut self.accounts {
            a.requests = None;
        }
    }

    /// Output tokens of the attached meters since each was attached.
    pub(super) fn tokens_since_start(&self) -> u64 {
        self.accounts.iter().map(Account::tokens_since_start).sum()
    }

    /// Splits the growth of the node's energy (whole joules, `None` while unknown) and GPU
    /// time since the previous sample across the attached meters, by each one's output tokens
    /// in the interval, and updates their figures over the window.
    pub(super) fn update(
        &mut self,
        now: Instant,
        window: Duration,
        energy_j: Option<u64>,
        gpu_time: Duration,
        price: Option<f64>,
    ) -> Vec<ModelShare> {
        let tokens: Vec<u64> = self
            .accounts
            .iter_mut()
            .map(|a| {
                let t = a.meter.totals().output_tokens;
                let first = *a.first_tokens.get_or_insert(t);
                let d = t.saturating_sub(a.last_tokens.max(first));
                a.last_tokens = t;
                d
            })
            .collect();
        let d_energy = match (energy_j, self.last_energy_j) {
            (Some(e), Some(e0)) => e.saturating_sub(e0),
            _ => 0,
        };
        let d_gpu = gpu_time.saturating_sub(self.last_gpu_time);
        let d_gpu_ns = u64::try_from(d_gpu.as_nanos()).unwrap_or(u64::MAX);
        self.last_energy_j = energy_j.or(self.last_energy_j);
        self.last_gpu_time = gpu_time;
        let energy_parts = split(d_energy, &tokens);
        let gpu_parts = split(d_gpu_ns, &tokens);
        self.accounts
            .iter_mut()
            .zip(energy_parts.iter().zip(&gpu_parts))
            .map(|(a, (e, g))| {
                if energy_j.is_some() {
                    let total = a.energy_j.get_or_insert(0).saturating_add(*e);
                    a.energy_j = Some(total);
                    a.energy.advance_to(total);
                }
                a.gpu_ns = a.gpu_ns.saturating_add(*g);
                a.share(now, window, price)
            })
            .collect()
    }
}

impl Account {
    fn tokens_since_start(&self) -> u64 {
        self.first_tokens
            .map_or(0, |f| self.last_tokens.saturating_sub(f))
    }

    fn share(&mut self, now: Instant, window: Duration, price: Option<f64>) -> ModelShare {
        let tokens = self.tokens_since_start();
        let gpu_time = Duration::from_nanos(self.gpu_ns);
        let oldest = self.window.push(
            Point {
                at: now,
                energy_j: self.energy_j,
                tokens,
                gpu_time,
            },
            window,
        );
        let d_tokens = tokens.saturating_sub(oldest.tokens);
        let d_energy = match (self.energy_j, oldest.energy_j) {
            (Some(e1), Some(e0)) => Some(e1.saturating_sub(e0) as f64),
            _ => None,
        };
        let d_gpu = gpu_time.saturating_sub(oldest.gpu_time);
        let (j_per_token, tokens_per_j, cost_1k) = per_token(d_energy, d_tokens, d_gpu, price);
        self.j_per_token.set(j_per_token);
        self.tokens_per_j.set(tokens_per_j);
        self.cost.set(cost_1k);
        ModelShare {
            model: self.meter.model().to_owned(),
            output_tokens_since_start: tokens,
            energy_j: self.energy_j,
            gpu_seconds: gpu_time.as_secs_f64(),
            cost: price.map(|p| p * gpu_time.as_secs_f64() / 3600.0),
            window_output_tokens: d_tokens,
            joules_per_output_token: j_per_token,
            output_tokens_per_joule: tokens_per_j,
            cost_per_1k_output_tokens: cost_1k,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn split_adds_up_exactly_and_follows_the_weights() {
        assert_eq!(split(1000, &[1, 1, 1]), vec![334, 333, 333]);
        assert_eq!(split(3000, &[100, 400]), vec![600, 2400]);
        assert_eq!(split(7, &[0, 0]), vec![4, 3]);
        assert_eq!(split(5, &[0, 3]), vec![0, 5]);
        assert_eq!(split(0, &[2, 5]), vec![0, 0]);
        assert_eq!(
            split(u64::MAX, &[u64::MAX, 1]).iter().sum::<u64>(),
            u64::MAX
        );
        assert!(split(10, &[]).is_empty());
        // Largest remainder: 10 x (1, 2) / 3 = 3.33, 6.67: the spare unit goes to the larger rest.
        assert_eq!(split(10, &[5, 3, 2]), vec![5, 3, 2]);
        assert_eq!(split(10, &[1, 2]), vec![3, 7]);
    }
}
