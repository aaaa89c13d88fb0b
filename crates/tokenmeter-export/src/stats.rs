//! What the exporters delivered and dropped, kept in relaxed atomics and published as the
//! self-metric `tokenmeter_export_dropped_total{signal, reason}` from the export threads (never
//! from the caller's thread).

// Parts serve only one of the two exporters; with a single feature the rest is unused.
#![cfg_attr(not(all(feature = "prometheus", feature = "otlp")), allow(dead_code))]

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokenmeter_core::Meter;
use tokenmeter_core::catalog;

/// Counters of what the OTLP exporters sent and dropped, shared with the export threads.
///
/// A drop is an item that will never reach the collector: a span that found the bounded
/// queue full, or the items of an export that failed or timed out. Metric points dropped by a
/// failed push under cumulative temporality are sent again (with the new totals) by the next
/// successful push, so no count is lost there; under delta temporality they are lost.
#[derive(Debug, Default)]
pub struct ExportStats {
    metric_exports: AtomicU64,
    metric_export_failures: AtomicU64,
    metric_points_dropped: AtomicU64,
    spans_exported: AtomicU64,
    spans_dropped_queue_full: AtomicU64,
    spans_dropped_export_failed: AtomicU64,
    queue_full_unpublished: AtomicU64,
}

/// A copy of [`ExportStats`] at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExportStatsSnapshot {
    /// Metric pushes that the collector accepted.
    pub metric_exports: u64,
    /// Metric pushes that failed (refused, unreachable or timed out).
    pub metric_export_failures: u64,
    /// Data points in the failed metric pushes.
    pub metric_points_dropped: u64,
    /// Spans the collector accepted.
    pub spans_exported: u64,
    /// Spans dropped because the bounded span queue was full.
    pub spans_dropped_queue_full: u64,
    /// Spans in exports that failed or timed out.
    pub spans_dropped_export_failed: u64,
}

impl ExportStatsSnapshot {
    /// Every dropped item, spans and metric points.
    pub fn dropped(&self) -> u64 {
        self.metric_points_dropped
            + self.spans_dropped_queue_full
            + self.spans_dropped_export_failed
    }
}

impl ExportStats {
    /// Reads all counters.
    pub fn snapshot(&self) -> ExportStatsSnapshot {
        ExportStatsSnapshot {
            metric_exports: self.metric_exports.load(Relaxed),
            metric_export_failures: self.metric_export_failures.load(Relaxed),
            metric_points_dropped: self.metric_points_dropped.load(Relaxed),
            spans_exported: self.spans_exported.load(Relaxed),
            spans_dropped_queue_full: self.spans_dropped_queue_full.load(Relaxed),
            spans_dropped_export_failed: self.spans_dropped_export_failed.load(Relaxed),
        }
    }

    pub(crate) fn metric_export_ok(&self) {
        self.metric_exports.fetch_add(1, Relaxed);
    }

    pub(crate) fn metric_export_failed(&self, points: u64, metric_name: &str) {
        self.metric_export_failures.fetch_add(1, Relaxed);
        self.metric_points_dropped.fetch_add(points, Relaxed);
        publish(metric_name, "metrics", "export_failed", points);
    }

    pub(crate) fn spans_ok(&self, n: u64) {
        self.spans_exported.fetch_add(n, Relaxed);
    }

    pub(crate) fn span_queue_full(&self) {
        self.spans_dropped_queue_full.fetch_add(1, Relaxed);
        self.queue_full_unpublished.fetch_add(1, Relaxed);
    }

    /// Publishes queue-full drops counted on callers' threads (called by the export worker).
    pub(crate) fn publish_queue_full(&self, metric_name: &str) {
        let n = self.queue_full_unpublished.swap(0, Relaxed);
        publish(metric_name, "traces", "queue_full", n);
    }

    pub(crate) fn spans_failed(&self, n: u64, metric_name: &str) {
        self.spans_dropped_export_failed.fetch_add(n, Relaxed);
        publish(metric_name, "traces", "export_failed", n);
    }
}

/// Publishes the drop self-metric through the `metrics` facade. Called from export threads.
pub(crate) fn publish(metric_name: &str, signal: &'static str, reason: &'static str, n: u64) {
    if n > 0 && !metric_name.is_empty() {
        metrics::counter!(metric_name.to_owned(), "signal" => signal, "reason" => reason)
            .increment(n);
    }
}

/// The exposition name of the drop self-metric under `prefix`
/// (`tokenmeter_export_dropped_total` under [`DEFAULT_PREFIX`](crate::DEFAULT_PREFIX)),
/// derived from its catalog entry (`export_dropped`). Empty only if the catalog lacked that
/// entry (the catalog's tests rule it out); nothing is published under an empty name.
pub fn dropped_metric_name(prefix: &str) -> String {
    let d = catalog::core::EXPORT_DROPPED;
    catalog::prometheus_name(&d.full_otel_name(prefix), d.kind, d.unit)
}

/// The exposition name of the drop self-metric as `meter` emits it (its prefix).
pub(crate) fn dropped_metric_name_for(meter: &Meter) -> String {
    meter
        .metric_names()
        .name(catalog::core::EXPORT_DROPPED)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_metric_name_follows_the_prefix() {
        assert_eq!(
            dropped_metric_name("tokenmeter"),
            "tokenmeter_export_dropped_total"
        );
        assert_eq!(dropped_metric_name("acme"), "acme_export_dropped_total");
    }

    #[test]
    fn drop_metric_name_follows_the_meter() {
        let meter = Meter::builder().prefix("acme").build();
        assert_eq!(dropped_metric_name_for(&meter), "acme_export_dropped_total");
        let default = Meter::builder().build();
        assert_eq!(
            dropped_metric_name_for(&default),
            dropped_metric_name(crate::DEFAULT_PREFIX)
        );
    }

    #[test]
    fn snapshot_sums_drops() {
        let s = ExportStats::default();
        s.span_queue_full();
        s.spans_failed(3, "x_total");
        s.metric_export_failed(5, "x_total");
        s.metric_export_ok();
        let snap = s.snapshot();
        assert_eq!(snap.dropped(), 9);
        assert_eq!(snap.metric_exports, 1);
        assert_eq!(snap.metric_export_failures, 1);
    }
}
