//! [`SamplerBuilder`]: the sampler's configuration.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokenmeter_core::Meter;

use crate::source::GpuSource;

use super::host::HostState;
use super::window::DerivedState;
use super::{GpuAvailability, Sampler, SamplerHandle};

/// Which GPUs the sampler reports.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum GpuSelection {
    /// Every GPU the source lists (the default).
    #[default]
    All,
    /// Only these GPUs, each given as its NVML index (`"0"`) or UUID (`"GPU-..."`).
    Only(Vec<String>),
    /// Only GPUs on which this process has a compute context (it appears in NVML's process
    /// list). A GPU joins the set the first time the process is seen on it.
    UsedByThisProcess,
}

/// Configures a [`Sampler`].
pub struct SamplerBuilder {
    pub(super) meter: Meter,
    pub(super) interval: Duration,
    pub(super) window: Duration,
    pub(super) selection: GpuSelection,
    pub(super) price_per_gpu_hour: Option<f64>,
    pub(super) host: bool,
    pub(super) source: Option<Box<dyn GpuSource>>,
}

impl std::fmt::Debug for SamplerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SamplerBuilder")
            .field("interval", &self.interval)
            .field("window", &self.window)
            .field("selection", &self.selection)
            .field("price_per_gpu_hour", &self.price_per_gpu_hour)
            .field("host", &self.host)
            .field("gpu", &self.source.is_some())
            .finish()
    }
}

impl SamplerBuilder {
    /// Time between samples (default 1 s). Zero is raised to 1 ms.
    pub fn interval(mut self, interval: Duration) -> Self {
        self.interval = interval.max(Duration::from_millis(1));
        self
    }

    /// Window of the derived figures (J/token, tokens/J, cost per 1k tokens); default 60 s.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Which GPUs to report (default: all).
    pub fn gpus(mut self, selection: GpuSelection) -> Self {
        self.selection = selection;
        self
    }

    /// Price of one GPU-hour (any currency, e.g. USD); enables cost per 1k output tokens.
    /// Non-finite or negative prices are ignored.
    pub fn price_per_gpu_hour(mut self, price: f64) -> Self {
        self.price_per_gpu_hour = (price.is_finite() && price >= 0.0).then_some(price);
        self
    }

    /// Whether to sample this process and the machine (default true).
    pub fn host(mut self, on: bool) -> Self {
        self.host = on;
        self
    }

    /// Reads GPUs from `source` instead of NVML (a fake in tests, another vendor's library).
    pub fn source(mut self, source: impl GpuSource + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Turns GPU sampling off (host sampling only).
    pub fn without_gpu(mut self) -> Self {
        self.source = None;
        self
    }

    /// Builds the sampler without starting a thread; drive it with [`Sampler::sample_once`].
    pub fn build(self) -> Sampler {
        let availability = if self.source.is_some() {
            GpuAvailability::Pending
        } else {
            GpuAvailability::Disabled
        };
        Sampler {
            interval: self.interval,
            window: self.window,
            selection: self.selection,
            price_per_gpu_hour: self.price_per_gpu_hour,
            host: self.host.then(|| HostState::new(&self.meter)),
            source: self.source,
            availability,
            gpus: Vec::new(),
            derived: DerivedState::new(&self.meter),
            meter: self.meter,
            started: None,
            samples: 0,
            shared: Arc::new(Mutex::new(None)),
        }
    }

    /// Builds the sampler and starts its thread.
    ///
    /// # Errors
    /// When the operating system cannot start a thread.
    pub fn start(self) -> std::io::Result<SamplerHandle> {
        self.build().spawn()
    }
}
