//! Exporters for tokenmeter: Prometheus, OTLP metrics and traces, the JSON request log.
//!
//! The core emits every metric through the [`metrics`] facade under its final exposition name
//! and one span plus one event per request through [`tracing`]. This crate provides the
//! recorders and layers that ship them:
//!
//! - [`Prometheus`]: our own atomic storage and text exposition, with the catalog's bucket
//!   bounds for every histogram (never a summary), served on 127.0.0.1:9464 by default or
//!   rendered into your own router.
//! - [`otlp::Otlp`]: a `metrics::Recorder` forwarding to the OpenTelemetry SDK, plus a
//!   `tracing-opentelemetry` layer for the request spans, exported over gRPC or HTTP/protobuf,
//!   off-thread and bounded: a dead or stalled collector never blocks the generation loop,
//!   and what is dropped is counted.
//! - [`RequestLog`]: one JSON line per finished request, through a bounded non-blocking
//!   writer (a stalled stdout drops and counts lines, never blocks `finish()`).
//! - [`Exporters`] composes them (with any recorder of yours) through a [`Fanout`] that passes
//!   weighted histogram records through whole;
//!   [`init`] is the one-call setup that reads the environment.
//! - `stream::MeteredStream` (feature `stream`) meters a stream of response chunks from
//!   outside the engine; `http::HttpMetricsLayer` (feature `http`) is a tower layer with the
//!   HTTP server metrics that marks each request's arrival for its handler.
//!
//! **A meter with a custom prefix or bucket overrides must be passed in**: [`init`] knows only
//! the default prefix and the catalog's buckets, so use [`init_for`]`(&meter)` or
//! [`Exporters::meter`] for a meter built with `.prefix(..)` or `.buckets(..)`; otherwise its
//! histograms get fallback bounds in Prometheus and its names are not mapped back over OTLP.
//!
//! ```no_run
//! // Prometheus on 127.0.0.1:9464; OTLP too when OTEL_EXPORTER_OTLP_ENDPOINT is set.
//! let _exporters = tokenmeter_export::init()?;
//! let meter = tokenmeter_core::Meter::builder().model("smollm2-135m").build();
//! let mut req = meter.request().prompt_tokens(5).start();
//! req.token();
//! req.finish(tokenmeter_core::Finish::Stop);
//! # Ok::<(), tokenmeter_export::Error>(())
//! ```
//!
//! Environment read by [`init`] (besides the standard `OTEL_*` variables, see [`otlp::Otlp`]):
//!
//! | variable | effect | default |
//! |---|---|---|
//! | `TOKENMETER_PROMETHEUS` | `off` disables the Prometheus listener | on |
//! | `TOKENMETER_PROMETHEUS_ADDR` | scrape address | `127.0.0.1:9464` |
//! | `TOKENMETER_REQUEST_LOG` | `stdout`, `stderr` or `off` | `stdout` |
//! | `OTEL_SDK_DISABLED` | `true` disables OTLP | OTLP on when an endpoint is set |

use std::net::SocketAddr;

mod fanout;
mod log;
mod names;
mod stats;

#[cfg(feature = "http")]
pub mod http;
#[cfg(feature = "otlp")]
pub mod otlp;
#[cfg(feature = "prometheus")]
pub mod prometheus;
#[cfg(feature = "stream")]
pub mod stream;
#[cfg(feature = "otlp")]
pub mod trace_context;

pub use fanout::Fanout;
pub use log::{DEFAULT_BUFFER_LINES, LogDestination, REQUEST_TARGET, RequestLog, RequestLogWriter};
#[cfg(feature = "prometheus")]
pub use prometheus::{Prometheus, PrometheusExporter, PrometheusRender};
pub use stats::{ExportStats, ExportStatsSnapshot, dropped_metric_name};
pub use tokenmeter_core::names::DEFAULT_PREFIX;

/// Errors from building or installing exporters.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Prometheus listener could not bind its address.
    #[error(
        "cannot listen for Prometheus scrapes on {addr}: {source}; another process (or another \
         exporter) may hold the port: pick another with Prometheus::listen or TOKENMETER_PROMETHEUS_ADDR"
    )]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// A global `metrics` recorder is already installed.
    #[error(
        "a global metrics recorder is already installed; add yours with Exporters::recorder, or \
         build the exporters and compose their recorders yourself"
    )]
    RecorderAlreadySet,
    /// A global `tracing` subscriber is already installed.
    #[error(
        "a global tracing subscriber is already installed; add the layers from \
         OtlpExporter::tracing_layer and RequestLog::layer to it instead"
    )]
    SubscriberAlreadySet,
    /// An option or environment value is invalid.
    #[error("invalid exporter configuration: {0}")]
    Config(String),
    /// The OTLP pipeline failed to build, or a flush failed.
    #[error("OTLP: {0}")]
    Otlp(String),
    /// An invalid W3C `traceparent`, or a span that cannot take a parent.
    #[error("invalid traceparent: {0}")]
    TraceParent(String),
    /// A thread or runtime could not be started.
    #[error("I/O: {0}")]
    Io(std::io::Error),
}

mod setup;
pub use setup::{ExportGuard, Exporters, init, init_for};
