//! The sampler: reads the GPU source and the host once per interval, emits metrics, derives
//! energy and cost per token, and keeps the latest [`GpuSnapshot`].
//!
//! One-way stack: [`energy`] (one GPU's energy figure), [`gpu`] (per-GPU state and series) and
//! [`host`] (host series) are leaves; [`window`] derives the per-token figures over the window
//! and [`accounting`] splits energy and cost across the attached meters; this module holds the
//! [`Sampler`] that drives them; [`builder`] configures it and [`thread`] runs it.

mod accounting;
mod builder;
mod claim;
mod energy;
mod gpu;
mod host;
mod requests;
mod thread;
mod window;

use std::sync::{Arc, Mutex};

use std::time::Duration;
use tokenmeter_core::emit::lock;

use serde::Serialize;
use tokenmeter_core::Meter;
use tokenmeter_core::clock::Instant;

use crate::host::HostSample;
use crate::nvml::NvmlSource;
use crate::source::{GpuIdentity, GpuSource};

pub use accounting::ModelShare;
pub use builder::{GpuSelection, SamplerBuilder};
pub use energy::EnergySource;
pub use gpu::GpuSample;
pub use requests::RequestEnergy;
pub use thread::SamplerHandle;
pub use window::Derived;

use accounting::Accounts;
use claim::Claims;
use gpu::GpuState;
use host::HostState;
use requests::RequestAccounts;
use window::NodeWindow;

/// Whether GPU metrics are being read, and if not, why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuAvailability {
    /// GPU sampling was turned off in the builder.
    Disabled,
    /// The source has not been initialized yet (before the first sample).
    Pending,
    /// The driver or its library is missing.
    NoDriver,
    /// The source failed to initialize or enumerate GPUs.
    Failed,
    /// The source works but lists no GPU (or none matches the selection).
    NoGpu,
    /// GPUs are being read.
    Ok,
}

/// One sample of everything: what [`SamplerHandle::latest`] returns.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GpuSnapshot {
    /// Sample number, from 1.
    pub sample: u64,
    /// Seconds since the first sample, on the meter's clock.
    pub elapsed_s: f64,
    /// Whether GPU metrics are read, and if not, why.
    pub gpu_availability: GpuAvailability,
    /// One entry per reported GPU.
    pub gpus: Vec<GpuSample>,
    /// This process and the machine (`None` when host sampling is off).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<HostSample>,
    /// Energy and cost per token over the window, for the whole node (every reported GPU,
    /// every attached meter).
    pub derived: Derived,
    /// Each attached meter's share of the node's energy and cost, in attachment order; the
    /// shares add up to the node's whole (see [`SamplerBuilder::meter`]).
    pub models: Vec<ModelShare>,
    /// The split of the node's energy and GPU time across the attached meters' requests and
    /// idle time (docs/gpu.md, "Energy and cost per request").
    pub requests: RequestEnergy,
}

/// Reads GPUs and the host, emits their metrics and keeps the latest [`GpuSnapshot`].
///
/// Usually started on its own thread with [`SamplerBuilder::start`]; [`sample_once`]
/// (what that thread calls each interval) can also be driven directly, e.g. by tests with a mock
/// clock and a [`FakeGpuSource`](crate::FakeGpuSource).
///
/// ```
/// use tokenmeter_gpu::{FakeGpuSource, Sampler};
/// let meter = tokenmeter_core::Meter::default();
/// let fake = FakeGpuSource::new().with_gpu("H100", FakeGpuSource::typical_reading());
/// let mut sampler = Sampler::builder(&meter).source(fake).host(false).build();
/// let snap = sampler.sample_once();
/// assert_eq!(snap.gpus[0].power_w, Some(300.0));
/// ```
///
/// [`sample_once`]: Sampler::sample_once
pub struct Sampler {
    meter: Meter,
    interval: Duration,
    window: Duration,
    selection: GpuSelection,
    price_per_gpu_hour: Option<f64>,
    host: Option<HostState>,
    source: Option<Box<dyn GpuSource>>,
    availability: GpuAvailability,
    gpus: Vec<GpuState>,
    node: NodeWindow,
    accounts: Accounts,
    requests: RequestAccounts,
    /// Meters attached through a [`SamplerHandle`] since the last sample.
    inbox: Arc<Mutex<Vec<Meter>>>,
    claims: Claims,
    started: Option<Instant>,
    samples: u64,
    shared: Arc<Mutex<Option<GpuSnapshot>>>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("interval", &self.interval)
            .field("availability", &self.availability)
            .field("gpus", &self.gpus.len())
            .field("samples", &self.samples)
            .finish()
    }
}

impl Sampler {
    /// Starts configuring the process's sampler with `meter` attached: its clock times the
    /// samples, its naming and non-model constant labels name the GPU and host series, and its
    /// output tokens earn it a share of the energy and cost. Attach the process's other meters
    /// with [`SamplerBuilder::meter`] or [`attach`](Self::attach). GPUs are read through NVML
    /// unless [`SamplerBuilder::source`] or [`SamplerBuilder::without_gpu`] says otherwise.
    pub fn builder(meter: &Meter) -> SamplerBuilder {
        SamplerBuilder {
            meter: meter.clone(),
            meters: Vec::new(),
            interval: Duration::from_secs(1),
            window: Duration::from_secs(60),
            selection: GpuSelection::All,
            price_per_gpu_hour: None,
            host: true,
            source: Some(Box::new(NvmlSource::new())),
        }
    }

    /// Attaches another meter (another model served on the same GPUs) from the next sample
    /// on; see [`SamplerBuilder::meter`].
    pub fn attach(&mut self, meter: &Meter) {
        self.accounts.attach(meter);
    }

    /// The configured interval.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The latest snapshot, if a sample was taken.
    pub fn latest(&self) -> Option<GpuSnapshot> {
        lock(&self.shared).clone()
    }

    /// Takes one sample now (at `meter.now()`): initializes the source on first use, reads
    /// every GPU and the host, updates all metrics and the derived figures, and returns the new
    /// snapshot. Never panics on source failures: they are logged once and leave the affected
    /// metrics absent.
    pub fn sample_once(&mut self) -> GpuSnapshot {
        let now = self.meter.now();
        let started = *self.started.get_or_insert(now);
        self.samples += 1;
        if self.availability == GpuAvailability::Pending {
            self.init_source();
            if self.availability != GpuAvailability::Ok {
                self.accounts.without_gpus();
            }
        }
        let mut gpus = Vec::with_capacity(self.gpus.len());
        if let Some(source) = self.source.as_mut() {
            for g in &mut self.gpus {
                if let Some(s) = g.sample(source.as_mut(), now, &self.selection) {
                    gpus.push(s);
                }
            }
        }
        let host = self.host.as_mut().map(|h| h.sample());
        let attached = std::mem::take(&mut *lock(&self.inbox));
        for meter in &attached {
            self.accounts.attach(meter);
        }
        let reported = || self.gpus.iter().filter(|g| g.active);
        let sum = |a: Option<f64>, e: f64| Some(a.unwrap_or(0.0) + e);
        let energy = reported().filter_map(|g| g.energy.total_j).fold(None, sum);
        let whole_joules = reported()
            .filter_map(GpuState::energy_whole_j)
            .fold(None, |a: Option<u64>, e| {
                Some(a.unwrap_or(0).saturating_add(e))
            });
        let gpu_time: Duration = reported().map(|g| g.gpu_time).sum();
        let price = self.price_per_gpu_hour;
        let models = self
            .accounts
            .update(now, self.window, whole_joules, gpu_time, price);
        let energy_uj = reported()
            .filter_map(GpuState::energy_uj)
            .fold(None, |a: Option<u64>, e| {
                Some(a.unwrap_or(0).saturating_add(e))
            });
        // No cost while no GPU is reported (GPU time is then zero, not free).
        let request_price = price.filter(|_| reported().next().is_some());
        let requests = self.requests.update(
            self.accounts.subscriptions(),
            energy_uj,
            gpu_time,
            request_price,
        );
        let tokens = self.accounts.tokens_since_start();
        let derived = self
            .node
            .update(now, self.window, energy, tokens, gpu_time, price);
        let snap = GpuSnapshot {
            sample: self.samples,
            elapsed_s: now.saturating_duration_since(started).as_secs_f64(),
            gpu_availability: self.availability,
            gpus,
            host,
            derived,
            models,
            requests,
        };
        *lock(&self.shared) = Some(snap.clone());
        snap
    }

    fn init_source(&mut self) {
        let Some(source) = self.source.as_mut() else {
            self.availability = GpuAvailability::Disabled;
            return;
        };
        let devices = source.init().and_then(|()| source.devices());
        match devices {
            Err(e) => {
                self.availability = match e {
                    crate::SourceError::NoDriver(_) => GpuAvailability::NoDriver,
                    crate::SourceError::Failed(_) => GpuAvailability::Failed,
                };
                tracing::warn!(error = %e, "tokenmeter-gpu: {e}; GPU metrics are disabled, host metrics continue");
            }
            Ok(list) => {
                let mut chosen: Vec<GpuIdentity> = list
                    .into_iter()
                    .filter(|d| match &self.selection {
                        GpuSelection::Only(keys) => keys
                            .iter()
                            .any(|k| k.trim() == d.uuid || k.trim() == d.index.to_string()),
                        _ => true,
                    })
                    .collect();
                if source.process_wide() {
                    let taken = self.claims.claim(&mut chosen);
                    if !taken.is_empty() {
                        let list: Vec<String> = taken
                            .iter()
                            .map(|g| format!("{} ({})", g.index, g.uuid))
                            .collect();
                        tracing::warn!(
                            "tokenmeter-gpu: GPU {} already reported by another sampler of this process; this one leaves them out (attach this meter to that sampler with SamplerHandle::attach or SamplerBuilder::meter, so each GPU is exported and billed once)",
                            list.join(", ")
                        );
                    }
                }
                if chosen.is_empty() {
                    self.availability = GpuAvailability::NoGpu;
                    tracing::warn!(
                        "tokenmeter-gpu: no GPU found (or none matches the selection); GPU metrics are disabled, host metrics continue"
                    );
                } else {
                    self.availability = GpuAvailability::Ok;
                    let used_only = self.selection == GpuSelection::UsedByThisProcess;
                    self.gpus = chosen
                        .into_iter()
                        .map(|id| GpuState::new(&self.meter, id, !used_only))
                        .collect();
                }
            }
        }
    }
}
