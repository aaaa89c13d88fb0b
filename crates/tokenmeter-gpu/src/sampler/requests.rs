//! Per-request energy and cost: each interval's GPU energy and GPU time split across the
//! requests in flight on every attached meter, by the output tokens each flushed in the
//! interval (see [`tokenmeter_core::attribution`] for the cells and the end-of-request rule).
//!
//! The split is done in integers (micro-joules and nanoseconds) with the largest-remainder
//! method, so the requests' parts plus the idle part add up exactly to the node's whole at
//! every sample: Σ request energy + idle energy + carried energy = the GPUs' measured energy.
//!
//! Guards publish their token counts when they flush (about once a second, the meter's flush
//! interval), not per token, so an interval can pass with requests in flight and no token
//! flushed, most often when the sampler's interval is shorter than the flush interval. Such an
//! interval's energy and GPU time are *carried*: split with the next interval in which tokens
//! are flushed, by those tokens. Only an interval with no tracked request is idle (it also
//! takes what was carried when the last tracked request is gone): all of its energy and GPU
//! time go to `energy.idle` (unlike the per-model split, which shares idle intervals equally).

use std::time::Duration;

use serde::Serialize;
use tokenmeter_core::Meter;
use tokenmeter_core::attribution::{Charge, Subscription};
use tokenmeter_core::catalog;

use crate::emit::{CounterSlot, node_labels};

use super::accounting::split;

/// The sampler's running totals of the per-request split, since its first energy reading:
/// `requests_uj + idle_uj + carried_uj == measured_uj` and
/// `requests_gpu_ns + idle_gpu_ns + carried_gpu_ns == gpu_ns` after every sample.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RequestEnergy {
    /// Growth of the reported GPUs' energy (Σ of each GPU's energy since start, in whole
    /// micro-joules) since the first sample that knew it, micro-joules.
    pub measured_uj: u64,
    /// Of that, charged to requests (whether before or after they ended), micro-joules.
    pub requests_uj: u64,
    /// Of that, idle: intervals with no tracked request, micro-joules.
    pub idle_uj: u64,
    /// Of that, carried: intervals with requests in flight and no token flushed since the
    /// last split, waiting for the next one, micro-joules.
    pub carried_uj: u64,
    /// Reported GPU time since the first sample, nanoseconds (the basis of cost).
    pub gpu_ns: u64,
    /// Of that, charged to requests, nanoseconds.
    pub requests_gpu_ns: u64,
    /// Of that, idle, nanoseconds.
    pub idle_gpu_ns: u64,
    /// Of that, carried to the next split, nanoseconds.
    pub carried_gpu_ns: u64,
    /// Requests tracked after the sample (in flight, or ended and not yet settled).
    pub tracked: usize,
}

/// The per-request split and its idle counter.
pub(super) struct RequestAccounts {
    last_energy_uj: Option<u64>,
    last_gpu_time: Duration,
    totals: RequestEnergy,
    idle: CounterSlot,
}

impl RequestAccounts {
    pub(super) fn new(meter: &Meter) -> Self {
        RequestAccounts {
            last_energy_uj: None,
            last_gpu_time: Duration::ZERO,
            totals: RequestEnergy::default(),
            idle: CounterSlot::new(meter, catalog::gpu::ENERGY_IDLE, node_labels(meter, &[])),
        }
    }

    /// Splits the growth of the node's energy (micro-joules, `None` while unknown) and GPU
    /// time since the previous sample across the requests tracked by `subs`.
    pub(super) fn update<'a>(
        &mut self,
        subs: impl Iterator<Item = &'a mut Subscription>,
        energy_uj: Option<u64>,
        gpu_time: Duration,
        price: Option<f64>,
    ) -> RequestEnergy {
        let mut subs: Vec<&mut Subscription> = subs.collect();
        let tokens: Vec<Vec<u64>> = subs.iter_mut().map(|s| s.begin_interval()).collect();
        let flat: Vec<u64> = tokens.iter().flatten().copied().collect();
        let in_flight: usize = subs.iter().map(|s| s.in_flight()).sum();
        let d_energy = match (energy_uj, self.last_energy_uj) {
            (Some(e), Some(e0)) => Some(e.saturating_sub(e0)),
            (Some(_), None) => Some(0),
            (None, _) => None,
        };
        self.last_energy_uj = energy_uj.or(self.last_energy_uj);
        let d_gpu = gpu_time.saturating_sub(self.last_gpu_time);
        self.last_gpu_time = gpu_time;
        let d_gpu_ns = u64::try_from(d_gpu.as_nanos()).unwrap_or(u64::MAX);

        let t = &mut self.totals;
        // Whether the parts charged now carry energy: this interval's, or carried earlier.
        let energy_known = d_energy.is_some() || t.carried_uj > 0;
        let (energy_parts, gpu_parts) = if flat.iter().all(|n| *n == 0) {
            if in_flight > 0 {
                // Requests in flight, no token flushed yet: carried to the next split.
                t.carried_uj = t.carried_uj.saturating_add(d_energy.unwrap_or(0));
                t.carried_gpu_ns = t.carried_gpu_ns.saturating_add(d_gpu_ns);
            } else {
                // Nobody left to carry for: this interval and what was carried are idle.
                let carried_uj = std::mem::take(&mut t.carried_uj);
                let carried_gpu_ns = std::mem::take(&mut t.carried_gpu_ns);
                t.idle_uj = t.idle_uj.saturating_add(d_energy.unwrap_or(0) + carried_uj);
                t.idle_gpu_ns = t.idle_gpu_ns.saturating_add(d_gpu_ns + carried_gpu_ns);
            }
            (vec![0; flat.len()], vec![0; flat.len()])
        } else {
            let energy = d_energy.unwrap_or(0) + std::mem::take(&mut t.carried_uj);
            let gpu_ns = d_gpu_ns + std::mem::take(&mut t.carried_gpu_ns);
            t.requests_uj = t.requests_uj.saturating_add(energy);
            t.requests_gpu_ns = t.requests_gpu_ns.saturating_add(gpu_ns);
            (split(energy, &flat), split(gpu_ns, &flat))
        };
        t.measured_uj = t.measured_uj.saturating_add(d_energy.unwrap_or(0));
        t.gpu_ns = t.gpu_ns.saturating_add(d_gpu_ns);
        if d_energy.is_some() {
            self.idle.advance_to(t.idle_uj / 1_000_000);
        }

        let charges: Vec<Charge> = energy_parts
            .iter()
            .zip(&gpu_parts)
            .map(|(e, g)| Charge::new(energy_known.then_some(*e), *g, price))
            .collect();
        let mut from = 0;
        for (sub, n) in subs.iter_mut().zip(tokens.iter().map(Vec::len)) {
            sub.charge(&charges[from..from + n]);
            from += n;
        }
        t.tracked = subs.iter().map(|s| s.tracked()).sum();
        t.clone()
    }
}
