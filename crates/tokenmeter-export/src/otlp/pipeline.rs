//! Off-thread, bounded export: a metric exporter wrapper that runs each push on our runtime
//! with a hard timeout and counts what failed, and a span processor with a bounded queue that
//! never blocks `on_end` (a full queue drops the span and counts it).

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, bounded};

use opentelemetry::Context;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::metrics::Temporality;
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData, ResourceMetrics};
use opentelemetry_sdk::metrics::exporter::PushMetricExporter;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use tokio::runtime::Handle;

use crate::stats::ExportStats;

/// Wraps a push exporter: each export runs on `rt` (so tonic and async HTTP clients have their
/// reactor) from the SDK's reader thread, bounded by `timeout`; failures are counted.
pub(crate) struct GuardedMetricExporter<E> {
    pub(crate) inner: E,
    pub(crate) rt: Handle,
    pub(crate) timeout: Duration,
    pub(crate) stats: Arc<ExportStats>,
    pub(crate) drop_metric: String,
}

impl<E> std::fmt::Debug for GuardedMetricExporter<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuardedMetricExporter")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn points<T>(d: &MetricData<T>) -> usize {
    match d {
        MetricData::Gauge(g) => g.data_points().count(),
        MetricData::Sum(s) => s.data_points().count(),
        MetricData::Histogram(h) => h.data_points().count(),
        MetricData::ExponentialHistogram(h) => h.data_points().count(),
    }
}

pub(crate) fn count_points(m: &ResourceMetrics) -> u64 {
    m.scope_metrics()
        .flat_map(|s| s.metrics())
        .map(|m| match m.data() {
            AggregatedMetrics::F64(d) => points(d),
            AggregatedMetrics::U64(d) => points(d),
            AggregatedMetrics::I64(d) => points(d),
        })
        .sum::<usize>() as u64
}

impl<E: PushMetricExporter> PushMetricExporter for GuardedMetricExporter<E> {
    async fn export(&self, metrics: &ResourceMetrics) -> OTelSdkResult {
        let fut = self.inner.export(metrics);
        let result = match Handle::try_current() {
            // Called on a thread that is already inside a runtime (the async-runtime reader):
            // just await with the timeout.
            Ok(_) => tokio::time::timeout(self.timeout, fut).await,
            Err(_) => self
                .rt
                .block_on(async { tokio::time::timeout(self.timeout, fut).await }),
        };
        match result {
            Ok(Ok(())) => {
                self.stats.metric_export_ok();
                Ok(())
            }
            Ok(Err(e)) => {
                self.stats
                    .metric_export_failed(count_points(metrics), &self.drop_metric);
                Err(e)
            }
            Err(_) => {
                self.stats
                    .metric_export_failed(count_points(metrics), &self.drop_metric);
                Err(OTelSdkError::Timeout(self.timeout))
            }
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn temporality(&self) -> Temporality {
        self.inner.temporality()
    }
}

enum Msg {
    Span(Box<SpanData>),
    Flush(Sender<()>),
    Shutdown(Sender<()>),
}

/// Settings of the bounded span processor.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpanQueue {
    pub(crate) capacity: usize,
    pub(crate) max_batch: usize,
    pub(crate) interval: Duration,
    pub(crate) timeout: Duration,
}

/// A batch span processor whose `on_end` never blocks: spans go into a bounded queue
/// (`try_send`), a full queue drops and counts; one worker thread batches and exports with a
/// hard timeout on our runtime.
pub(crate) struct BoundedSpanProcessor {
    tx: Sender<Msg>,
    stats: Arc<ExportStats>,
    worker: std::sync::Mutex<Option<JoinHandle<()>>>,
    timeout: Duration,
}

impl std::fmt::Debug for BoundedSpanProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundedSpanProcessor")
            .finish_non_exhaustive()
    }
}

impl BoundedSpanProcessor {
    pub(crate) fn new<E: SpanExporter + 'static>(
        exporter: E,
        rt: Handle,
        cfg: SpanQueue,
        stats: Arc<ExportStats>,
        drop_metric: String,
    ) -> std::io::Result<Self> {
        let (tx, rx) = bounded(cfg.capacity.max(1));
        let st = stats.clone();
        let worker = std::thread::Builder::new()
            .name("tokenmeter-otlp-spans".into())
            .spawn(move || span_worker(&exporter, &rt, &rx, cfg, &st, &drop_metric))?;
        Ok(BoundedSpanProcessor {
            tx,
            stats,
            worker: std::sync::Mutex::new(Some(worker)),
            timeout: cfg.timeout,
        })
    }

    fn control(&self, make: impl FnOnce(Sender<()>) -> Msg, wait: Duration) -> OTelSdkResult {
        let (ack_tx, ack_rx) = bounded(1);
        let deadline = Instant::now() + wait;
        // Control messages wait for queue space, but never past the deadline.
        match self.tx.send_timeout(make(ack_tx), wait) {
            Ok(()) => {}
            Err(SendTimeoutError::Timeout(_)) => return Err(OTelSdkError::Timeout(wait)),
            Err(SendTimeoutError::Disconnected(_)) => return Err(OTelSdkError::AlreadyShutdown),
        }
        ack_rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| OTelSdkError::Timeout(wait))
    }
}

fn span_worker<E: SpanExporter>(
    exporter: &E,
    rt: &Handle,
    rx: &Receiver<Msg>,
    cfg: SpanQueue,
    stats: &ExportStats,
    drop_metric: &str,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(cfg.max_batch);
    let mut next = Instant::now() + cfg.interval;
    let export = |batch: &mut Vec<SpanData>| {
        if batch.is_empty() {
            return;
        }
        let spans = std::mem::take(batch);
        let n = spans.len() as u64;
        let result =
            rt.block_on(async { tokio::time::timeout(cfg.timeout, exporter.export(spans)).await });
        match result {
            Ok(Ok(())) => stats.spans_ok(n),
            _ => stats.spans_failed(n, drop_metric),
        }
    };
    loop {
        stats.publish_queue_full(drop_metric);
        let wait = next.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Msg::Span(s)) => {
                batch.push(*s);
                if batch.len() >= cfg.max_batch {
                    export(&mut batch);
                    next = Instant::now() + cfg.interval;
                }
            }
            Ok(Msg::Flush(ack)) => {
                export(&mut batch);
                let _ = ack.send(());
            }
            Ok(Msg::Shutdown(ack)) => {
                export(&mut batch);
                let _ = exporter.shutdown_with_timeout(cfg.timeout);
                let _ = ack.send(());
                return;
            }
            Err(RecvTimeoutError::Timeout) => {
                export(&mut batch);
                next = Instant::now() + cfg.interval;
            }
            Err(RecvTimeoutError::Disconnected) => {
                export(&mut batch);
                return;
            }
        }
    }
}

impl SpanProcessor for BoundedSpanProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.tx.try_send(Msg::Span(Box::new(span))).is_err() {
            self.stats.span_queue_full();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.control(Msg::Flush, self.timeout * 2)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let r = self.control(Msg::Shutdown, timeout);
        if r.is_ok()
            && let Some(w) = tokenmeter_core::emit::lock(&self.worker).take()
        {
            let _ = w.join();
        }
        r
    }
}
