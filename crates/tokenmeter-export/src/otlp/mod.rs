//! OTLP export of metrics and traces through the OpenTelemetry SDK and `opentelemetry-otlp`,
//! over gRPC or HTTP/protobuf, off the caller's threads and bounded.

mod pipeline;
mod recorder;

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{
    Aggregation, Instrument, InstrumentKind, PeriodicReader, SdkMeterProvider, Stream,
};
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanExporter as _};
use tokenmeter_core::Meter;

pub use opentelemetry_sdk::metrics::Temporality;
pub use recorder::OtlpRecorder;

use crate::Error;
use crate::names::NameMap;
use crate::stats::{
    ExportStats, ExportStatsSnapshot, dropped_metric_name, dropped_metric_name_for,
};
use pipeline::{BoundedSpanProcessor, GuardedMetricExporter, SpanQueue};

/// The OTLP transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC (default port 4317).
    Grpc,
    /// HTTP with protobuf bodies (default port 4318; the specification's default).
    HttpProtobuf,
}

impl Protocol {
    fn from_env(var: &str) -> Option<Self> {
        match std::env::var(var).ok()?.trim() {
            "grpc" => Some(Protocol::Grpc),
            "http/protobuf" => Some(Protocol::HttpProtobuf),
            _ => None,
        }
    }

    fn resolve(configured: Option<Self>, signal_var: &str) -> Self {
        configured
            .or_else(|| Self::from_env(signal_var))
            .or_else(|| Self::from_env("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .unwrap_or(Protocol::HttpProtobuf)
    }

    fn otlp(self) -> opentelemetry_otlp::Protocol {
        match self {
            Protocol::Grpc => opentelemetry_otlp::Protocol::Grpc,
            Protocol::HttpProtobuf => opentelemetry_otlp::Protocol::HttpBinary,
        }
    }
}

/// How histograms are aggregated for OTLP.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum HistogramAggregation {
    /// Explicit bucket bounds from the catalog (the same bounds the Prometheus exposition has).
    Explicit,
    /// Base-2 exponential histograms.
    Exponential {
        /// Maximum number of buckets (160 is the SDK default).
        max_size: u32,
        /// Maximum scale, -10..=20 (20 is the SDK default).
        max_scale: i8,
    },
}

/// Builder of the OTLP exporter (metrics and traces).
///
/// Unset options fall back to the standard environment variables, then to the
/// specification's defaults:
///
/// | option | environment | default |
/// |---|---|---|
/// | [`endpoint`](Self::endpoint) | `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_{METRICS,TRACES}_ENDPOINT` | `http://localhost:4318` (HTTP), `http://localhost:4317` (gRPC) |
/// | [`protocol`](Self::protocol) | `OTEL_EXPORTER_OTLP_PROTOCOL`, `OTEL_EXPORTER_OTLP_{METRICS,TRACES}_PROTOCOL` | `http/protobuf` |
/// | [`timeout`](Self::timeout) | `OTEL_EXPORTER_OTLP_{METRICS,TRACES}_TIMEOUT`, then `OTEL_EXPORTER_OTLP_TIMEOUT` (ms) | 10 s |
/// | [`header`](Self::header) | `OTEL_EXPORTER_OTLP_HEADERS` | none |
/// | [`temporality`](Self::temporality) | `OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE` | cumulative |
/// | [`interval`](Self::interval) | `OTEL_METRIC_EXPORT_INTERVAL` (ms) | 60 s |
/// | [`service_name`](Self::service_name) | `OTEL_SERVICE_NAME` | `unknown_service` |
/// | [`resource_attribute`](Self::resource_attribute) | `OTEL_RESOURCE_ATTRIBUTES` | none |
///
/// ```no_run
/// use std::time::Duration;
/// use tokenmeter_export::otlp::{Otlp, Protocol, Temporality};
/// let otlp = Otlp::new()
///     .endpoint("http://127.0.0.1:4317")
///     .protocol(Protocol::Grpc)
///     .temporality(Temporality::Delta)
///     .interval(Duration::from_secs(10))
///     .service_name("my-llm-server")
///     .build()?;
/// # drop(otlp);
/// # Ok::<(), tokenmeter_export::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct Otlp {
    endpoint: Option<String>,
    protocol: Option<Protocol>,
    timeout: Option<Duration>,
    headers: Vec<(String, String)>,
    temporality: Option<Temporality>,
    histograms: HistogramAggregation,
    interval: Option<Duration>,
    service_name: Option<String>,
    resource: Vec<(String, String)>,
    metrics: bool,
    traces: bool,
    span_queue: usize,
    span_batch: usize,
    span_interval: Duration,
    prefixes: Vec<String>,
    meters: Vec<Meter>,
}

impl Default for Otlp {
    fn default() -> Self {
        Otlp {
            endpoint: None,
            protocol: None,
            timeout: None,
            headers: Vec::new(),
            temporality: None,
            histograms: HistogramAggregation::Explicit,
            interval: None,
            service_name: None,
            resource: Vec::new(),
            metrics: true,
            traces: true,
            span_queue: 2048,
            span_batch: 512,
            span_interval: Duration::from_secs(5),
            prefixes: Vec::new(),
            meters: Vec::new(),
        }
    }
}

/// The export timeout in effect for one signal, resolved as `opentelemetry-otlp` resolves it:
/// the explicit [`Otlp::timeout`], else the per-signal variable (`signal_var`), else
/// `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds), else 10 s. Used to bound our own waits; the
/// exporter itself is only given a timeout when one was set explicitly, so that the per-signal
/// variables keep working.
fn effective_timeout(
    explicit: Option<Duration>,
    signal_var: &str,
    env: impl Fn(&str) -> Option<String>,
) -> Duration {
    let ms = |var: &str| {
        env(var)
            .and_then(|v| v.trim().parse().ok())
            .map(Duration::from_millis)
    };
    explicit
        .or_else(|| ms(signal_var))
        .or_else(|| ms("OTEL_EXPORTER_OTLP_TIMEOUT"))
        .unwrap_or(DEFAULT_TIMEOUT)
}

/// The specification's default export timeout.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// What one signal's exporter is built with (the transport options shared by both signals).
struct ExporterConfig<'a> {
    protocol: Protocol,
    endpoint: Option<String>,
    /// Only an explicit [`Otlp::timeout`]; `None` leaves the exporter to the environment.
    timeout: Option<Duration>,
    headers: &'a [(String, String)],
}

impl ExporterConfig<'_> {
    fn common<B: WithExportConfig>(&self, mut b: B) -> B {
        b = b.with_protocol(self.protocol.otlp());
        if let Some(t) = self.timeout {
            b = b.with_timeout(t);
        }
        if let Some(e) = &self.endpoint {
            b = b.with_endpoint(e.clone());
        }
        b
    }

    fn http<B: WithExportConfig + WithHttpConfig>(&self, b: B) -> B {
        let b = self.common(b);
        if self.headers.is_empty() {
            b
        } else {
            b.with_headers(self.headers.iter().cloned().collect())
        }
    }
}

/// Builds a metric or span exporter (`$builder` is `MetricExporter::builder()` or
/// `SpanExporter::builder()`) over the configured transport: one place for both signals; a
/// macro because the two builders share no trait that `build()` belongs to.
macro_rules! build_exporter {
    ($builder:expr, $config:expr) => {{
        let config: &ExporterConfig<'_> = $config;
        match config.protocol {
            Protocol::Grpc => config.common($builder.with_tonic()).build(),
            Protocol::HttpProtobuf => config.http($builder.with_http()).build(),
        }
    }};
}

impl Otlp {
    /// Metrics and traces, everything else from the environment or the defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether an OTLP endpoint is configured in the environment
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT` or a per-signal endpoint); [`crate::init`] turns OTLP on
    /// only then.
    pub fn endpoint_in_env() -> bool {
        [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.trim().is_empty()))
    }

    /// The collector's base URL, e.g. `http://127.0.0.1:4318`. For HTTP the signal paths
    /// `/v1/metrics` and `/v1/traces` are appended when the URL has no path, as for
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// gRPC or HTTP/protobuf.
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = Some(protocol);
        self
    }

    /// Hard limit on one export (connect + send + response), for both signals. A collector that
    /// accepts and never reads costs at most this much of the export thread's time per batch,
    /// never the caller's. Unset, each signal takes `OTEL_EXPORTER_OTLP_{METRICS,TRACES}_TIMEOUT`,
    /// then `OTEL_EXPORTER_OTLP_TIMEOUT` (milliseconds), then 10 s.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// A header sent with every export (e.g. an API key); HTTP only; for gRPC use
    /// `OTEL_EXPORTER_OTLP_HEADERS`.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((key.into(), value.into()));
        self
    }

    /// Cumulative or delta temporality for metrics.
    pub fn temporality(mut self, temporality: Temporality) -> Self {
        self.temporality = Some(temporality);
        self
    }

    /// Explicit catalog buckets (default) or base-2 exponential histograms.
    pub fn histograms(mut self, aggregation: HistogramAggregation) -> Self {
        self.histograms = aggregation;
        self
    }

    /// How often metrics are pushed.
    pub fn interval(mut self, every: Duration) -> Self {
        self.interval = Some(every);
        self
    }

    /// The `service.name` resource attribute (overrides `OTEL_SERVICE_NAME`).
    pub fn service_name(mut self, name: impl Into<String>) -> Self {
        self.service_name = Some(name.into());
        self
    }

    /// A resource attribute (e.g. `service.version`, `deployment.environment.name`); added to
    /// those of `OTEL_RESOURCE_ATTRIBUTES`.
    pub fn resource_attribute(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.resource.push((key.into(), value.into()));
        self
    }

    /// Export metrics (default true).
    pub fn metrics(mut self, on: bool) -> Self {
        self.metrics = on;
        self
    }

    /// Export traces (default true); the spans reach the SDK through
    /// [`OtlpExporter::tracing_layer`].
    pub fn traces(mut self, on: bool) -> Self {
        self.traces = on;
        self
    }

    /// Capacity of the span queue (default 2048); a full queue drops and counts spans.
    pub fn span_queue(mut self, capacity: usize) -> Self {
        self.span_queue = capacity.max(1);
        self
    }

    /// Spans per export (default 512) and the longest a span waits in the queue (default 5 s).
    pub fn span_batch(mut self, max: usize, every: Duration) -> Self {
        self.span_batch = max.max(1);
        self.span_interval = every.max(Duration::from_millis(1));
        self
    }

    /// Also maps names under this prefix back to OTel names (meters built with `.prefix(..)`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefixes.push(prefix.into());
        self
    }

    /// Uses this meter's names and bucket overrides, and counts drops under its prefix (the
    /// first meter's, when several are given).
    pub fn meter(mut self, meter: &Meter) -> Self {
        self.meters.push(meter.clone());
        self
    }

    fn resource(&self) -> Resource {
        let mut b = Resource::builder();
        if let Some(name) = &self.service_name {
            b = b.with_service_name(name.clone());
        }
        b.with_attributes(
            self.resource
                .iter()
                .map(|(k, v)| KeyValue::new(k.clone(), v.clone())),
        )
        .build()
    }

    fn exporter_config(&self, path: &str, protocol: Protocol) -> ExporterConfig<'_> {
        ExporterConfig {
            protocol,
            endpoint: self.signal_endpoint(path, protocol),
            timeout: self.timeout,
            headers: &self.headers,
        }
    }

    /// The drop self-metric's name: the first meter's, else under the first prefix, else under
    /// the default prefix.
    fn drop_metric(&self) -> String {
        match (self.meters.first(), self.prefixes.first()) {
            (Some(m), _) => dropped_metric_name_for(m),
            (None, Some(p)) => dropped_metric_name(p),
            (None, None) => dropped_metric_name(crate::DEFAULT_PREFIX),
        }
    }

    fn signal_endpoint(&self, path: &str, protocol: Protocol) -> Option<String> {
        let url = self.endpoint.as_ref()?;
        if protocol == Protocol::Grpc {
            return Some(url.clone());
        }
        let after_scheme = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        if after_scheme.trim_end_matches('/').contains('/') {
            Some(url.clone())
        } else {
            Some(format!("{}{path}", url.trim_end_matches('/')))
        }
    }

    /// Builds the pipelines: a metrics recorder (not installed; see [`crate::Exporters`]) and a
    /// tracer provider whose layer you add to your subscriber.
    ///
    /// # Errors
    ///
    /// [`Error::Otlp`] when an exporter cannot be built (bad endpoint URL, bad env values);
    /// [`Error::Io`] when the export runtime or threads cannot be started. An unreachable
    /// collector is not an error: exports fail later, off-thread, and are counted.
    pub fn build(self) -> Result<OtlpExporter, Error> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("tokenmeter-otlp")
            .enable_all()
            .build()
            .map_err(Error::Io)?;
        let _enter = rt.enter();
        let stats = Arc::new(ExportStats::default());
        let drop_metric = self.drop_metric();
        let env = |var: &str| std::env::var(var).ok();
        let metrics_timeout =
            effective_timeout(self.timeout, "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", env);
        let traces_timeout =
            effective_timeout(self.timeout, "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", env);
        let resource = self.resource();

        let mut meter_provider = None;
        let mut recorder = None;
        if self.metrics {
            let protocol = Protocol::resolve(self.protocol, "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL");
            let mut b = opentelemetry_otlp::MetricExporter::builder();
            if let Some(t) = self.temporality {
                b = b.with_temporality(t);
            }
            let exporter = build_exporter!(b, &self.exporter_config("/v1/metrics", protocol))
                .map_err(|e| Error::Otlp(format!("metric exporter: {e}")))?;
            let guarded = GuardedMetricExporter {
                inner: exporter,
                rt: rt.handle().clone(),
                timeout: metrics_timeout + Duration::from_millis(100),
                stats: stats.clone(),
                drop_metric: drop_metric.clone(),
            };
            let mut reader = PeriodicReader::builder(guarded);
            if let Some(every) = self.interval {
                reader = reader.with_interval(every);
            }
            let mut mp = SdkMeterProvider::builder()
                .with_resource(resource.clone())
                .with_reader(reader.build());
            if let HistogramAggregation::Exponential {
                max_size,
                max_scale,
            } = self.histograms
            {
                mp = mp.with_view(move |i: &Instrument| {
                    (i.kind() == InstrumentKind::Histogram)
                        .then(|| {
                            Stream::builder()
                                .with_aggregation(Aggregation::Base2ExponentialHistogram {
                                    max_size,
                                    max_scale,
                                    record_min_max: true,
                                })
                                .build()
                                .ok()
                        })
                        .flatten()
                });
            }
            let provider = mp.build();
            let meter = opentelemetry::metrics::MeterProvider::meter(&provider, "tokenmeter");
            let r = OtlpRecorder::new(meter, NameMap::new(&self.prefixes, &self.meters));
            // Replays batched histogram observations into the SDK off the caller's thread;
            // ends with the runtime or once the recorder is gone.
            let drain = r.drainer();
            rt.spawn(async move {
                let mut every = tokio::time::interval(recorder::DRAIN_INTERVAL);
                every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    every.tick().await;
                    if !drain() {
                        return;
                    }
                }
            });
            recorder = Some(r);
            meter_provider = Some(provider);
        }

        let mut tracer_provider = None;
        if self.traces {
            let protocol = Protocol::resolve(self.protocol, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL");
            let b = opentelemetry_otlp::SpanExporter::builder();
            let mut exporter = build_exporter!(b, &self.exporter_config("/v1/traces", protocol))
                .map_err(|e| Error::Otlp(format!("span exporter: {e}")))?;
            exporter.set_resource(&resource);
            let processor = BoundedSpanProcessor::new(
                exporter,
                rt.handle().clone(),
                SpanQueue {
                    capacity: self.span_queue,
                    max_batch: self.span_batch,
                    interval: self.span_interval,
                    timeout: traces_timeout + Duration::from_millis(100),
                },
                stats.clone(),
                drop_metric,
            )
            .map_err(Error::Io)?;
            tracer_provider = Some(
                SdkTracerProvider::builder()
                    .with_span_processor(processor)
                    .with_resource(resource)
                    .build(),
            );
        }
        drop(_enter);
        Ok(OtlpExporter {
            recorder,
            meter_provider,
            tracer_provider,
            stats,
            timeout: metrics_timeout.max(traces_timeout),
            rt: Some(rt),
        })
    }
}

/// A running OTLP pipeline. Dropping it flushes what is pending (bounded by the export
/// timeout) and stops the export threads.
pub struct OtlpExporter {
    recorder: Option<OtlpRecorder>,
    meter_provider: Option<SdkMeterProvider>,
    tracer_provider: Option<SdkTracerProvider>,
    stats: Arc<ExportStats>,
    timeout: Duration,
    rt: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for OtlpExporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpExporter")
            .field("metrics", &self.meter_provider.is_some())
            .field("traces", &self.tracer_provider.is_some())
            .field("stats", &self.stats.snapshot())
            .finish_non_exhaustive()
    }
}

impl OtlpExporter {
    /// Takes the metrics recorder out to install or compose it; `None` when metrics are off or
    /// it was taken.
    pub fn take_recorder(&mut self) -> Option<OtlpRecorder> {
        self.recorder.take()
    }

    /// A `tracing` layer that ships spans (the request spans included) over OTLP; `None` when
    /// traces are off.
    ///
    /// The request span's own phase events (scheduled, first token) become span events; the
    /// per-request log event (INFO, target `tokenmeter::request`) is left to the
    /// [`RequestLog`](crate::RequestLog): its fields are already the span's attributes, and
    /// skipping it keeps `finish()` cheap.
    ///
    /// It also installs the process's exemplar resolver (see [`tokenmeter_core::exemplar`]),
    /// so the Prometheus exporter's latency buckets carry the request spans' trace ids.
    pub fn tracing_layer<S>(&self) -> Option<Box<dyn tracing_subscriber::Layer<S> + Send + Sync>>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
    {
        use tracing_subscriber::Layer as _;
        let tracer = self.tracer_provider.as_ref()?.tracer("tokenmeter");
        // `gen_ai.response.finish_reasons` is a string array in the GenAI conventions; tracing
        // fields are scalars, so the core hands arrays to this recorder.
        tokenmeter_core::set_string_array_recorder(record_string_array);
        // Request spans now have trace ids: let them reach the latency exemplars.
        tokenmeter_core::exemplar::set_resolver(crate::trace_context::trace_ids_of);
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_threads(false)
            .with_location(false)
            .with_tracked_inactivity(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                !(meta.is_event()
                    && meta.target() == crate::REQUEST_TARGET
                    && *meta.level() == tracing::Level::INFO)
            }));
        Some(Box::new(layer))
    }

    /// The tracer provider, to build other tracers from.
    pub fn tracer_provider(&self) -> Option<&SdkTracerProvider> {
        self.tracer_provider.as_ref()
    }

    /// The meter provider, to create other OTel instruments on the same pipeline.
    pub fn meter_provider(&self) -> Option<&SdkMeterProvider> {
        self.meter_provider.as_ref()
    }

    /// What was exported and dropped so far.
    pub fn stats(&self) -> ExportStatsSnapshot {
        self.stats.snapshot()
    }

    /// Exports pending metrics and spans now; blocks the calling thread up to about twice the
    /// export timeout.
    ///
    /// # Errors
    ///
    /// [`Error::Otlp`] when an export failed or timed out (the items are counted as dropped).
    pub fn flush(&self) -> Result<(), Error> {
        let mut errors = Vec::new();
        if let Some(tp) = &self.tracer_provider
            && let Err(e) = tp.force_flush()
        {
            errors.push(format!("traces: {e}"));
        }
        if let Some(mp) = &self.meter_provider
            && let Err(e) = mp.force_flush()
        {
            errors.push(format!("metrics: {e}"));
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::Otlp(errors.join("; ")))
        }
    }
}

impl Drop for OtlpExporter {
    fn drop(&mut self) {
        let wait = self.timeout + Duration::from_millis(500);
        if let Some(tp) = self.tracer_provider.take() {
            let _ = tp.shutdown_with_timeout(wait);
        }
        if let Some(mp) = self.meter_provider.take() {
            let _ = mp.shutdown_with_timeout(wait);
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Sets a string-array attribute on the span's OpenTelemetry counterpart (a no-op for a span
/// the OpenTelemetry layer does not see).
fn record_string_array(span: &tracing::Span, key: &'static str, values: &[&str]) {
    use opentelemetry::{Array, StringValue, Value};
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    let values = values
        .iter()
        .map(|v| StringValue::from((*v).to_owned()))
        .collect();
    span.set_attribute(key, Value::Array(Array::String(values)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn timeout_resolves_explicit_then_signal_then_general_then_default() {
        const M: &str = "OTEL_EXPORTER_OTLP_METRICS_TIMEOUT";
        let both = [(M, "3000"), ("OTEL_EXPORTER_OTLP_TIMEOUT", "2000")];
        assert_eq!(
            effective_timeout(Some(Duration::from_millis(700)), M, env(&both)),
            Duration::from_millis(700)
        );
        assert_eq!(
            effective_timeout(None, M, env(&both)),
            Duration::from_millis(3000)
        );
        let general = [("OTEL_EXPORTER_OTLP_TIMEOUT", " 2000 ")];
        assert_eq!(
            effective_timeout(None, M, env(&general)),
            Duration::from_millis(2000)
        );
        let bad = [(M, "soon")];
        assert_eq!(effective_timeout(None, M, env(&bad)), DEFAULT_TIMEOUT);
        assert_eq!(effective_timeout(None, M, env(&[])), DEFAULT_TIMEOUT);
    }

    #[test]
    fn exporter_gets_a_timeout_only_when_set_explicitly() {
        let unset = Otlp::new();
        assert_eq!(
            unset
                .exporter_config("/v1/metrics", Protocol::HttpProtobuf)
                .timeout,
            None
        );
        let set = Otlp::new().timeout(Duration::from_secs(2));
        assert_eq!(
            set.exporter_config("/v1/traces", Protocol::Grpc).timeout,
            Some(Duration::from_secs(2))
        );
    }

    #[test]
    fn drop_metric_follows_meter_then_prefix() {
        assert_eq!(Otlp::new().drop_metric(), "tokenmeter_export_dropped_total");
        assert_eq!(
            Otlp::new().prefix("acme").drop_metric(),
            "acme_export_dropped_total"
        );
        let meter = tokenmeter_core::Meter::builder().prefix("zeta").build();
        assert_eq!(
            Otlp::new().prefix("acme").meter(&meter).drop_metric(),
            "zeta_export_dropped_total"
        );
    }
}
