//! The sampler: reads the GPU source and the host once per interval, emits metrics, derives
//! energy and cost per token, and keeps the latest [`GpuSnapshot`].

use std::collections::{HashSet, VecDeque};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::Serialize;
use tokenmeter_core::Meter;
use tokenmeter_core::clock::Instant;

use crate::emit::{CounterSlot, GaugeSlot, labels};
use crate::host::{HostSample, HostSampler};
use crate::nvml::NvmlSource;
use crate::source::{
    DeviceError, Field, FieldError, GpuIdentity, GpuReading, GpuSource, THROTTLE_REASONS,
};

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

/// How a GPU's energy figure is obtained.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EnergySource {
    /// The GPU's own total-energy counter.
    Counter,
    /// Power draw integrated over time (trapezoids between samples).
    IntegratedPower,
}

/// The latest reading of one GPU. `None` fields were not available (never a stand-in zero).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GpuSample {
    /// NVML index.
    pub index: u32,
    /// GPU UUID.
    pub uuid: String,
    /// Product name.
    pub name: String,
    /// True once the GPU stopped answering; every reading below is then `None`.
    pub lost: bool,
    /// Kernel-busy fraction (0..=1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub utilization: Option<f64>,
    /// Memory-controller busy fraction (0..=1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_controller_utilization: Option<f64>,
    /// Memory used, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_used_bytes: Option<u64>,
    /// Memory free, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_free_bytes: Option<u64>,
    /// Memory total, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_total_bytes: Option<u64>,
    /// Used / total.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_utilization: Option<f64>,
    /// Highest memory used since the sampler started, bytes (kept after the GPU is lost).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub memory_peak_bytes: Option<u64>,
    /// Memory used by this process, bytes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_memory_bytes: Option<u64>,
    /// Power draw, watts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_w: Option<f64>,
    /// Enforced power limit, watts.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub power_limit_w: Option<f64>,
    /// Energy since the sampler started, joules (kept after the GPU is lost).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy_j: Option<f64>,
    /// Where `energy_j` comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub energy_source: Option<EnergySource>,
    /// Core temperature, °C.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub temperature_c: Option<f64>,
    /// SM clock, Hz.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_sm_hz: Option<f64>,
    /// Memory clock, Hz.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_memory_hz: Option<f64>,
    /// Active throttle reasons (label values of [`THROTTLE_REASONS`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub throttle_reasons: Option<Vec<&'static str>>,
    /// Corrected ECC errors over the GPU's lifetime.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ecc_corrected: Option<u64>,
    /// Uncorrected ECC errors over the GPU's lifetime.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ecc_uncorrected: Option<u64>,
    /// PCIe transmit (GPU to host), bytes/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcie_tx_bytes_per_s: Option<f64>,
    /// PCIe receive (host to GPU), bytes/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pcie_rx_bytes_per_s: Option<f64>,
}

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
    /// Energy and cost per token over the window.
    pub derived: Derived,
}

/// Configures a [`Sampler`].
pub struct SamplerBuilder {
    meter: Meter,
    interval: Duration,
    window: Duration,
    selection: GpuSelection,
    price_per_gpu_hour: Option<f64>,
    host: bool,
    source: Option<Box<dyn GpuSource>>,
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
    derived: DerivedState,
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
    /// Starts configuring a sampler for `meter` (whose clock times the samples and whose
    /// output-token total feeds the per-token figures). GPUs are read through NVML unless
    /// [`SamplerBuilder::source`] or [`SamplerBuilder::without_gpu`] says otherwise.
    pub fn builder(meter: &Meter) -> SamplerBuilder {
        SamplerBuilder {
            meter: meter.clone(),
            interval: Duration::from_secs(1),
            window: Duration::from_secs(60),
            selection: GpuSelection::All,
            price_per_gpu_hour: None,
            host: true,
            source: Some(Box::new(NvmlSource::new())),
        }
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
        let derived = self.derived.update(
            &self.meter,
            now,
            self.window,
            &self.gpus,
            self.price_per_gpu_hour,
        );
        let snap = GpuSnapshot {
            sample: self.samples,
            elapsed_s: now.saturating_duration_since(started).as_secs_f64(),
            gpu_availability: self.availability,
            gpus,
            host,
            derived,
        };
        *lock(&self.shared) = Some(snap.clone());
        snap
    }

    /// Starts the sampling thread: one sample now, then one per interval until the handle is
    /// stopped or dropped.
    ///
    /// # Errors
    /// When the operating system cannot start a thread.
    pub fn spawn(self) -> std::io::Result<SamplerHandle> {
        let (tx, rx) = mpsc::channel::<()>();
        let shared = Arc::clone(&self.shared);
        let thread = std::thread::Builder::new()
            .name("tokenmeter-gpu".into())
            .spawn(move || run(self, rx))?;
        Ok(SamplerHandle {
            stop: Some(tx),
            thread: Some(thread),
            shared,
        })
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
                let chosen: Vec<GpuIdentity> = list
                    .into_iter()
                    .filter(|d| match &self.selection {
                        GpuSelection::Only(keys) => keys
                            .iter()
                            .any(|k| k.trim() == d.uuid || k.trim() == d.index.to_string()),
                        _ => true,
                    })
                    .collect();
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

fn run(mut sampler: Sampler, stop: mpsc::Receiver<()>) {
    let interval = sampler.interval;
    let mut next = std::time::Instant::now();
    loop {
        sampler.sample_once();
        next += interval;
        let now = std::time::Instant::now();
        if next < now {
            // Fell behind (a slow sample or a suspended machine): skip the missed ticks.
            next = now;
        }
        match stop.recv_timeout(next - now) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// A running sampler thread. Stopping (or dropping) it wakes the thread at once and joins it.
///
/// ```
/// use tokenmeter_gpu::{FakeGpuSource, Sampler};
/// let meter = tokenmeter_core::Meter::default();
/// let handle = Sampler::builder(&meter)
///     .source(FakeGpuSource::new().with_gpu("H100", FakeGpuSource::typical_reading()))
///     .start()
///     .expect("thread");
/// handle.stop(); // returns at once, not after the 1 s interval
/// ```
#[derive(Debug)]
pub struct SamplerHandle {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Mutex<Option<GpuSnapshot>>>,
}

impl SamplerHandle {
    /// The latest snapshot, or `None` before the first sample completes.
    pub fn latest(&self) -> Option<GpuSnapshot> {
        lock(&self.shared).clone()
    }

    /// Stops the thread and waits for it (at most the duration of one sample in progress).
    /// The latest snapshot stays readable until the handle is dropped.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(tx) = self.stop.take() {
            // The thread may already be gone; either way it stops.
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            // A panic on the sampler thread stays there: the caller's thread goes on.
            let _ = t.join();
        }
    }
}

impl Drop for SamplerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Per-GPU state

struct GpuMetrics {
    utilization: GaugeSlot,
    memory_utilization: GaugeSlot,
    memory_controller: GaugeSlot,
    memory_used: GaugeSlot,
    memory_limit: GaugeSlot,
    memory_free: GaugeSlot,
    memory_peak: GaugeSlot,
    process_memory: GaugeSlot,
    power: GaugeSlot,
    power_limit: GaugeSlot,
    temperature: GaugeSlot,
    clock_sm: GaugeSlot,
    clock_memory: GaugeSlot,
    throttle: Vec<GaugeSlot>,
    pcie_tx: GaugeSlot,
    pcie_rx: GaugeSlot,
    status_ok: GaugeSlot,
    status_failed: GaugeSlot,
    energy: CounterSlot,
    ecc_corrected: CounterSlot,
    ecc_uncorrected: CounterSlot,
}

impl GpuMetrics {
    fn new(meter: &Meter, id: &GpuIdentity) -> Self {
        let index = id.index.to_string();
        let base = [
            ("hw.id", index.as_str()),
            ("hw.name", id.name.as_str()),
            ("gpu.uuid", id.uuid.as_str()),
        ];
        let with = |extra: &[(&str, &str)]| {
            let mut all: Vec<(&str, &str)> = base.to_vec();
            all.extend_from_slice(extra);
            labels(meter, &all)
        };
        let g = |metric: &str| GaugeSlot::new(meter, metric, with(&[]));
        let gpu = ("hw.type", "gpu");
        GpuMetrics {
            utilization: GaugeSlot::new(
                meter,
                "gpu.utilization",
                with(&[("hw.gpu.task", "general")]),
            ),
            memory_utilization: g("gpu.memory.utilization"),
            memory_controller: g("gpu.memory_controller.utilization"),
            memory_used: g("gpu.memory.usage"),
            memory_limit: g("gpu.memory.limit"),
            memory_free: g("gpu.memory.free"),
            memory_peak: g("gpu.memory.peak"),
            process_memory: g("gpu.process.memory.usage"),
            power: GaugeSlot::new(meter, "gpu.power", with(&[gpu])),
            power_limit: g("gpu.power.limit"),
            temperature: g("gpu.temperature"),
            clock_sm: g("gpu.clock.sm"),
            clock_memory: g("gpu.clock.memory"),
            throttle: THROTTLE_REASONS
                .iter()
                .map(|(_, r)| GaugeSlot::new(meter, "gpu.throttle", with(&[("reason", r)])))
                .collect(),
            pcie_tx: GaugeSlot::new(
                meter,
                "gpu.pcie.throughput",
                with(&[("network.io.direction", "transmit")]),
            ),
            pcie_rx: GaugeSlot::new(
                meter,
                "gpu.pcie.throughput",
                with(&[("network.io.direction", "receive")]),
            ),
            status_ok: GaugeSlot::new(meter, "gpu.status", with(&[gpu, ("hw.state", "ok")])),
            status_failed: GaugeSlot::new(
                meter,
                "gpu.status",
                with(&[gpu, ("hw.state", "failed")]),
            ),
            energy: CounterSlot::new(meter, "gpu.energy", with(&[gpu])),
            ecc_corrected: CounterSlot::new(
                meter,
                "gpu.errors",
                with(&[gpu, ("error.type", "corrected")]),
            ),
            ecc_uncorrected: CounterSlot::new(
                meter,
                "gpu.errors",
                with(&[gpu, ("error.type", "uncorrected")]),
            ),
        }
    }
}

struct GpuState {
    id: GpuIdentity,
    metrics: GpuMetrics,
    /// Reported (selection satisfied). With `UsedByThisProcess` it turns true on first use.
    active: bool,
    lost: bool,
    reads: u64,
    warned: HashSet<&'static str>,
    peak_memory: Option<u64>,
    energy_j: Option<f64>,
    energy_source: Option<EnergySource>,
    last_counter_j: Option<f64>,
    last_power: Option<(Instant, f64)>,
    gpu_seconds: f64,
    last_active_at: Option<Instant>,
}

impl GpuState {
    fn new(meter: &Meter, id: GpuIdentity, active: bool) -> Self {
        GpuState {
            metrics: GpuMetrics::new(meter, &id),
            id,
            active,
            lost: false,
            reads: 0,
            warned: HashSet::new(),
            peak_memory: None,
            energy_j: None,
            energy_source: None,
            last_counter_j: None,
            last_power: None,
            gpu_seconds: 0.0,
            last_active_at: None,
        }
    }

    fn sample(
        &mut self,
        source: &mut dyn GpuSource,
        now: Instant,
        selection: &GpuSelection,
    ) -> Option<GpuSample> {
        if self.lost {
            return self.active.then(|| self.lost_sample());
        }
        let reading = match source.read(&self.id) {
            Ok(r) => r,
            Err(DeviceError::Lost(msg)) => {
                self.lost = true;
                tracing::warn!(
                    gpu = self.id.index, uuid = %self.id.uuid,
                    "tokenmeter-gpu: GPU {} ({}, {}) lost: {msg}; its metrics are now absent",
                    self.id.index, self.id.name, self.id.uuid
                );
                self.mark_lost();
                return self.active.then(|| self.lost_sample());
            }
        };
        self.reads += 1;
        if !self.active
            && *selection == GpuSelection::UsedByThisProcess
            && matches!(reading.process_memory, Ok(Some(_)))
        {
            self.active = true;
        }
        if !self.active {
            return None;
        }
        self.log_missing(&reading);
        if let Some(t0) = self.last_active_at {
            self.gpu_seconds += now.saturating_duration_since(t0).as_secs_f64();
        }
        self.last_active_at = Some(now);
        Some(self.apply(reading, now))
    }

    /// One log line for the first read (listing every missing field), then one per field that
    /// starts failing later.
    fn log_missing(&mut self, r: &GpuReading) {
        let missing = missing_fields(r);
        let new: Vec<String> = missing
            .into_iter()
            .filter(|(name, _)| self.warned.insert(name))
            .map(|(name, e)| format!("{name} ({e})"))
            .collect();
        if !new.is_empty() {
            tracing::warn!(
                gpu = self.id.index, uuid = %self.id.uuid,
                "tokenmeter-gpu: GPU {} ({}): unavailable: {}; those metrics are absent",
                self.id.index, self.id.name, new.join(", ")
            );
        }
    }

    fn apply(&mut self, r: GpuReading, now: Instant) -> GpuSample {
        let m = &mut self.metrics;
        let utilization = r.utilization.ok();
        m.utilization.set(utilization);
        let memctl = r.memory_controller_utilization.ok();
        m.memory_controller.set(memctl);
        let mem = r.memory.ok();
        m.memory_used.set(mem.map(|x| x.used as f64));
        m.memory_free.set(mem.map(|x| x.free as f64));
        m.memory_limit.set(mem.map(|x| x.total as f64));
        let mem_util = mem
            .filter(|x| x.total > 0)
            .map(|x| x.used as f64 / x.total as f64);
        m.memory_utilization.set(mem_util);
        if let Some(x) = mem {
            self.peak_memory = Some(self.peak_memory.map_or(x.used, |p| p.max(x.used)));
        }
        m.memory_peak.set(self.peak_memory.map(|p| p as f64));
        let process_memory = r.process_memory.ok().flatten();
        m.process_memory.set(process_memory.map(|b| b as f64));
        let power = r.power_w.ok();
        m.power.set(power);
        let power_limit = r.power_limit_w.ok();
        m.power_limit.set(power_limit);
        let temperature = r.temperature_c.ok();
        m.temperature.set(temperature);
        let clock_sm = r.clock_sm_hz.ok();
        m.clock_sm.set(clock_sm);
        let clock_memory = r.clock_memory_hz.ok();
        m.clock_memory.set(clock_memory);
        let throttle = r.throttle_reasons.ok();
        for (slot, (bit, _)) in m.throttle.iter_mut().zip(THROTTLE_REASONS) {
            slot.set(throttle.map(|t| if t & bit != 0 { 1.0 } else { 0.0 }));
        }
        let throttle_names = throttle.map(|t| {
            THROTTLE_REASONS
                .iter()
                .filter(|(b, _)| t & b != 0)
                .map(|(_, n)| *n)
                .collect()
        });
        let ecc_corrected = r.ecc_corrected.ok();
        if let Some(v) = ecc_corrected {
            m.ecc_corrected.advance_to(v);
        }
        let ecc_uncorrected = r.ecc_uncorrected.ok();
        if let Some(v) = ecc_uncorrected {
            m.ecc_uncorrected.advance_to(v);
        }
        let pcie_tx = r.pcie_tx_bytes_per_s.ok();
        m.pcie_tx.set(pcie_tx);
        let pcie_rx = r.pcie_rx_bytes_per_s.ok();
        m.pcie_rx.set(pcie_rx);
        m.status_ok.set(Some(1.0));
        m.status_failed.set(Some(0.0));

        self.update_energy(r.energy_counter_j.ok(), power, now);
        if let Some(e) = self.energy_j {
            // Whole joules: `metrics` counters are integers.
            self.metrics.energy.advance_to(e.max(0.0).floor() as u64);
        }

        GpuSample {
            index: self.id.index,
            uuid: self.id.uuid.clone(),
            name: self.id.name.clone(),
            lost: false,
            utilization,
            memory_controller_utilization: memctl,
            memory_used_bytes: mem.map(|x| x.used),
            memory_free_bytes: mem.map(|x| x.free),
            memory_total_bytes: mem.map(|x| x.total),
            memory_utilization: mem_util,
            memory_peak_bytes: self.peak_memory,
            process_memory_bytes: process_memory,
            power_w: power,
            power_limit_w: power_limit,
            energy_j: self.energy_j,
            energy_source: self.energy_source,
            temperature_c: temperature,
            clock_sm_hz: clock_sm,
            clock_memory_hz: clock_memory,
            throttle_reasons: throttle_names,
            ecc_corrected,
            ecc_uncorrected,
            pcie_tx_bytes_per_s: pcie_tx,
            pcie_rx_bytes_per_s: pcie_rx,
        }
    }

    /// Energy since start: deltas of the GPU's counter where it has one; otherwise trapezoids
    /// of power between consecutive samples. Unknown until one of the two has been read.
    fn update_energy(&mut self, counter: Option<f64>, power: Option<f64>, now: Instant) {
        match counter {
            Some(c) => {
                let total = self.energy_j.get_or_insert(0.0);
                if let Some(prev) = self.last_counter_j
                    && c >= prev
                {
                    *total += c - prev;
                }
                // c < prev: the counter was reset (driver reload); it restarts from c.
                self.last_counter_j = Some(c);
                self.energy_source = Some(EnergySource::Counter);
            }
            None => {
                self.last_counter_j = None;
                if let Some(p) = power {
                    let total = self.energy_j.get_or_insert(0.0);
                    if let Some((t0, p0)) = self.last_power {
                        let dt = now.saturating_duration_since(t0).as_secs_f64();
                        *total += (p0 + p) / 2.0 * dt;
                    }
                    self.energy_source = Some(EnergySource::IntegratedPower);
                }
            }
        }
        self.last_power = power.map(|p| (now, p));
    }

    fn mark_lost(&mut self) {
        let m = &mut self.metrics;
        for slot in [
            &mut m.utilization,
            &mut m.memory_utilization,
            &mut m.memory_controller,
            &mut m.memory_used,
            &mut m.memory_limit,
            &mut m.memory_free,
            &mut m.process_memory,
            &mut m.power,
            &mut m.power_limit,
            &mut m.temperature,
            &mut m.clock_sm,
            &mut m.clock_memory,
            &mut m.pcie_tx,
            &mut m.pcie_rx,
        ] {
            slot.set(None);
        }
        for slot in &mut m.throttle {
            slot.set(None);
        }
        if self.active {
            m.status_ok.set(Some(0.0));
            m.status_failed.set(Some(1.0));
        }
        self.last_power = None;
        self.last_counter_j = None;
        self.last_active_at = None;
    }

    fn lost_sample(&self) -> GpuSample {
        GpuSample {
            index: self.id.index,
            uuid: self.id.uuid.clone(),
            name: self.id.name.clone(),
            lost: true,
            utilization: None,
            memory_controller_utilization: None,
            memory_used_bytes: None,
            memory_free_bytes: None,
            memory_total_bytes: None,
            memory_utilization: None,
            memory_peak_bytes: self.peak_memory,
            process_memory_bytes: None,
            power_w: None,
            power_limit_w: None,
            energy_j: self.energy_j,
            energy_source: self.energy_source,
            temperature_c: None,
            clock_sm_hz: None,
            clock_memory_hz: None,
            throttle_reasons: None,
            ecc_corrected: None,
            ecc_uncorrected: None,
            pcie_tx_bytes_per_s: None,
            pcie_rx_bytes_per_s: None,
        }
    }
}

fn missing_fields(r: &GpuReading) -> Vec<(&'static str, FieldError)> {
    fn chk<T>(out: &mut Vec<(&'static str, FieldError)>, name: &'static str, f: &Field<T>) {
        if let Err(e) = f {
            out.push((name, e.clone()));
        }
    }
    let mut out = Vec::new();
    chk(&mut out, "utilization", &r.utilization);
    chk(
        &mut out,
        "memory_controller_utilization",
        &r.memory_controller_utilization,
    );
    chk(&mut out, "memory", &r.memory);
    chk(&mut out, "process_memory", &r.process_memory);
    chk(&mut out, "power", &r.power_w);
    chk(&mut out, "power_limit", &r.power_limit_w);
    chk(&mut out, "energy_counter", &r.energy_counter_j);
    chk(&mut out, "temperature", &r.temperature_c);
    chk(&mut out, "clock_sm", &r.clock_sm_hz);
    chk(&mut out, "clock_memory", &r.clock_memory_hz);
    chk(&mut out, "throttle_reasons", &r.throttle_reasons);
    chk(&mut out, "ecc_corrected", &r.ecc_corrected);
    chk(&mut out, "ecc_uncorrected", &r.ecc_uncorrected);
    chk(&mut out, "pcie_tx", &r.pcie_tx_bytes_per_s);
    chk(&mut out, "pcie_rx", &r.pcie_rx_bytes_per_s);
    out
}

// ---------------------------------------------------------------------------------------------
// Derived figures

#[derive(Clone, Copy)]
struct WindowPoint {
    at: Instant,
    energy_j: Option<f64>,
    tokens: u64,
    gpu_seconds: f64,
}

struct DerivedState {
    points: VecDeque<WindowPoint>,
    first_tokens: Option<u64>,
    j_per_token: GaugeSlot,
    tokens_per_j: GaugeSlot,
    cost: GaugeSlot,
}

impl DerivedState {
    fn new(meter: &Meter) -> Self {
        let l = labels(meter, &[]);
        DerivedState {
            points: VecDeque::new(),
            first_tokens: None,
            j_per_token: GaugeSlot::new(meter, "gpu.energy_per_output_token", l.clone()),
            tokens_per_j: GaugeSlot::new(meter, "gpu.output_tokens_per_joule", l.clone()),
            cost: GaugeSlot::new(meter, "gpu.cost_per_1k_output_tokens", l),
        }
    }

    fn update(
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
            .filter_map(|g| g.energy_j)
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

// ---------------------------------------------------------------------------------------------
// Host

struct HostState {
    sampler: HostSampler,
    cpu: GaugeSlot,
    rss: GaugeSlot,
    virt: GaugeSlot,
    peak_rss: GaugeSlot,
    threads: GaugeSlot,
    open_files: GaugeSlot,
    disk_read: CounterSlot,
    disk_write: CounterSlot,
    sys_cpu: GaugeSlot,
    sys_mem_used: GaugeSlot,
    sys_mem_free: GaugeSlot,
    sys_mem_total: GaugeSlot,
    sys_disk_read: CounterSlot,
    sys_disk_write: CounterSlot,
    net_rx: CounterSlot,
    net_tx: CounterSlot,
}

impl HostState {
    fn new(meter: &Meter) -> Self {
        let none = || labels(meter, &[]);
        let g = |id: &str| GaugeSlot::new(meter, id, none());
        let dir =
            |id: &str, k: &str, v: &str| CounterSlot::new(meter, id, labels(meter, &[(k, v)]));
        HostState {
            sampler: HostSampler::new(),
            cpu: g("process.cpu.utilization"),
            rss: g("process.memory.usage"),
            virt: g("process.memory.virtual"),
            peak_rss: g("process.memory.peak"),
            threads: g("process.thread.count"),
            open_files: g("process.open_files"),
            disk_read: dir("process.disk.io", "disk.io.direction", "read"),
            disk_write: dir("process.disk.io", "disk.io.direction", "write"),
            sys_cpu: g("system.cpu.utilization"),
            sys_mem_used: GaugeSlot::new(
                meter,
                "system.memory.usage",
                labels(meter, &[("system.memory.state", "used")]),
            ),
            sys_mem_free: GaugeSlot::new(
                meter,
                "system.memory.usage",
                labels(meter, &[("system.memory.state", "free")]),
            ),
            sys_mem_total: g("system.memory.limit"),
            sys_disk_read: dir("system.disk.io", "disk.io.direction", "read"),
            sys_disk_write: dir("system.disk.io", "disk.io.direction", "write"),
            net_rx: dir("system.network.io", "network.io.direction", "receive"),
            net_tx: dir("system.network.io", "network.io.direction", "transmit"),
        }
    }

    fn sample(&mut self) -> HostSample {
        let s = self.sampler.sample();
        let f = |v: Option<u64>| v.map(|v| v as f64);
        self.cpu.set(s.process_cpu_utilization);
        self.rss.set(f(s.process_rss_bytes));
        self.virt.set(f(s.process_virtual_bytes));
        self.peak_rss.set(f(s.process_peak_rss_bytes));
        self.threads.set(f(s.process_threads));
        self.open_files.set(f(s.process_open_files));
        self.sys_cpu.set(s.system_cpu_utilization);
        self.sys_mem_used.set(f(s.system_memory_used_bytes));
        self.sys_mem_free.set(f(s.system_memory_free_bytes));
        self.sys_mem_total.set(f(s.system_memory_total_bytes));
        for (slot, v) in [
            (&mut self.disk_read, s.process_disk_read_bytes),
            (&mut self.disk_write, s.process_disk_written_bytes),
            (&mut self.sys_disk_read, s.system_disk_read_bytes),
            (&mut self.sys_disk_write, s.system_disk_written_bytes),
            (&mut self.net_rx, s.system_network_received_bytes),
            (&mut self.net_tx, s.system_network_transmitted_bytes),
        ] {
            if let Some(v) = v {
                slot.advance_to(v);
            }
        }
        s
    }
}
