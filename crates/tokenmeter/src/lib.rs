#![doc = include_str!("../../../README.md")]
//!
//! # Crate layout
//!
//! This facade re-exports [`tokenmeter_core`] at its root and, behind features, the
//! exporters ([`export`], features `prometheus` and `otlp`; the chunk-stream adapter
//! `export::stream` with `stream` and the tower layer `export::http` with `http`), the GPU and host sampler
//! ([`gpu`], feature `gpu`) and the quality proxies ([`quality`], feature `quality`).

pub use tokenmeter_core::*;

/// Exporters: Prometheus, OTLP metrics and traces, the JSON request log, and [`init`]; the
/// chunk-stream adapter (feature `stream`) and the tower layer (feature `http`).
#[cfg(any(
    feature = "prometheus",
    feature = "otlp",
    feature = "stream",
    feature = "http"
))]
pub use tokenmeter_export as export;
/// One-call setup: Prometheus on 127.0.0.1:9464, OTLP when an endpoint is set in the
/// environment, the JSON request log. See [`export::init`].
#[cfg(any(feature = "prometheus", feature = "otlp"))]
pub use tokenmeter_export::init;
/// [`init`] for a meter with a custom prefix or bucket overrides, so the exporters use its
/// names and bounds. See [`export::init_for`].
#[cfg(any(feature = "prometheus", feature = "otlp"))]
pub use tokenmeter_export::init_for;

/// GPU (NVML) and host sampler, energy and cost per token.
#[cfg(feature = "gpu")]
pub use tokenmeter_gpu as gpu;

/// Quality proxies: NaN/Inf scanning of logits, logprob statistics, text monitors, drift, and
/// golden-set probes ([`quality::probe`]).
#[cfg(feature = "quality")]
pub use tokenmeter_quality as quality;

/// The names a generation loop needs: `use tokenmeter::prelude::*;`.
pub mod prelude {
    pub use tokenmeter_core::{ErrorKind, Finish, Meter, RequestGuard, Slo};
    #[cfg(feature = "stream")]
    pub use tokenmeter_export::stream::{ChunkCount, StreamMeterExt};
    #[cfg(feature = "quality")]
    pub use tokenmeter_quality::{LogitsExt, LogitsKind};
}

/// `docs/integrations.md`, compiled and run as doctests.
#[cfg(all(doctest, feature = "stream", feature = "http"))]
#[doc = include_str!("../../../docs/integrations.md")]
pub struct IntegrationsDoc;

/// `docs/quality.md`, compiled and run as doctests.
#[cfg(all(doctest, feature = "quality"))]
#[doc = include_str!("../../../docs/quality.md")]
pub struct QualityDoc;

/// `docs/gpu.md`, compiled and run as doctests.
#[cfg(all(doctest, feature = "gpu"))]
#[doc = include_str!("../../../docs/gpu.md")]
pub struct GpuDoc;
