//! [`SamplerBuilder`]: the sampler's configuration.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokenmeter_core::Meter;

use crate::source::GpuSource;

use super::accounting::Accounts;
use super::host::HostState;
use super::requests::RequestAccounts;
use super::window::NodeWindow;
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
    pub(super) meters: Vec<Meter>,
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
            .field("meters", &(1 + self.meters.len()))
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
    /// Also attaches `meter`: another model served in this process on the same GPUs.
    ///
    /// One sampler reads the GPUs for every meter of the process, so each GPU is read and
    /// exported once (its series carry no model label) and never billed twice. Each interval's
    /// GPU energy and GPU time are split across the attached meters in proportion to the output
    /// tokens each generated in that interval (equally when none generated any), in integers
    /// with the largest-remainder method, so the parts add up exactly to the whole. Each meter
    /// gets its own per-token figures and `energy.attributed` counter, under its own labels.
    /// A meter whose labels equal an attached one's (the same meter twice) is attached once.
    ///
    /// ```
    /// use tokenmeter_gpu::{FakeGpuSource, Sampler};
    /// let chat = tokenmeter_core::Meter::builder().model("chat-8b").build();
    /// let embed = tokenmeter_core::Meter::builder().model("embed-1b").build();
    /// let fake = FakeGpuSource::new().with_gpu("H100", FakeGpuSource::typical_reading());
    /// let mut sampler = Sampler::builder(&chat).meter(&embed).source(fake).host(false).build();
    /// let snap = sampler.sample_once();
    /// assert_eq!(snap.models.len(), 2);
    /// ```
    pub fn meter(mut self, meter: &Meter) -> Self {
        self.meters.push(meter.clone());
        self
    }

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
        let mut accounts = Accounts::default();
        if self.source.is_none() {
            accounts.without_gpus();
        }
        for meter in std::iter::once(&self.meter).chain(&self.meters) {
            accounts.attach(meter);
        }
        Sampler {
            interval: self.interval,
            window: self.window,
            selection: self.selection,
            price_per_gpu_hour: self.price_per_gpu_hour,
            host: self.host.then(|| HostState::new(&self.meter)),
            source: self.source,
            availability,
            gpus: Vec::new(),
            node: NodeWindow::default(),
            accounts,
            requests: RequestAccounts::new(&self.meter),
            inbox: Arc::new(Mutex::new(Vec::new())),
            claims: Default::default(),
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
