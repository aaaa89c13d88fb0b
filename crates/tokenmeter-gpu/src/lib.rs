//! GPU and host sampling for tokenmeter.
//!
//! A [`Sampler`] runs on its own thread (default interval 1 s) and, per interval:
//! - reads every GPU through a [`GpuSource`] — NVML by default ([`NvmlSource`], with
//!   `libnvidia-ml` loaded at run time, so a binary built with this crate starts on machines
//!   without the NVIDIA driver);
//! - reads this process and the machine (CPU, memory, peak RSS, threads, open files, disk and
//!   network I/O) through `sysinfo`;
//! - splits the GPUs' energy and GPU time across every meter (model) attached to it, by the
//!   output tokens each generated in each interval, so the parts add up exactly to the whole,
//!   and derives each model's energy per output token, output tokens per joule and cost per 1k
//!   output tokens over a sliding window;
//! - splits the same energy and GPU time across the requests in flight, by the output tokens
//!   each flushed in the interval, so that each request ends with its own joules and cost
//!   (see [`RequestEnergy`] and `docs/gpu.md`): Σ request energy + idle energy = the GPUs'
//!   measured energy, to the micro-joule;
//! - emits everything through the `metrics` facade under the names in
//!   `tokenmeter_core::catalog::gpu` (GPU and host series without a model label: one sampler
//!   serves the whole process), and keeps the latest [`GpuSnapshot`] for in-process use.
//!
//! It never touches the generation loop: the only shared state it reads is the meters'
//! cumulative totals and each request's flushed token count (atomic loads), and what it
//! writes is each request's energy and cost cell (atomic adds), never per token.
//!
//! Anything the source cannot read — no driver, no GPU, a call the GPU does not support — is
//! logged once with `tracing::warn!` and left absent: the metric is never registered, or reads
//! NaN while its source stops answering; no zero poses as a reading, and nothing panics.
//! Counters survive failed reads, resets and stalls (a stuck energy counter is bridged with
//! integrated power). A GPU lost mid-run is marked `hw.status{hw.state="failed"}` and its
//! gauges are set to 0 once, so node sums stay finite (see `docs/gpu.md`).
//!
//! ```
//! use std::time::Duration;
//! use tokenmeter_gpu::Sampler;
//!
//! let meter = tokenmeter_core::Meter::default();
//! let sampler = Sampler::builder(&meter)
//!     .interval(Duration::from_secs(1))
//!     .price_per_gpu_hour(2.50)
//!     .start()
//!     .expect("start the sampler thread");
//! // ... serve requests ...
//! if let Some(snap) = sampler.latest() {
//!     println!("{}", serde_json::to_string(&snap).unwrap_or_default());
//! }
//! sampler.stop();
//! ```

mod emit;
mod fake;
mod host;
mod nvml;
mod sampler;
mod source;

pub use fake::FakeGpuSource;
pub use host::HostSample;
pub use nvml::NvmlSource;
pub use sampler::{
    Derived, EnergySource, GpuAvailability, GpuSample, GpuSelection, GpuSnapshot, ModelShare,
    RequestEnergy, Sampler, SamplerBuilder, SamplerHandle,
};
pub use source::{
    DeviceError, Field, FieldError, GpuIdentity, GpuReading, GpuSource, MemoryReading, SourceError,
    THROTTLE_REASONS,
};
