//! Lazily registered metric handles: a series is created on its first real value, so a metric
//! the source cannot read never shows up as a zero.
//!
//! A handle belongs to the `metrics` recorder that was current when it was registered; each slot
//! keeps it in a [`tokenmeter_core::emit::RecorderScoped`] and registers again when another
//! one is current, so a sampler started before the exporter is installed still exports.

use metrics::{Counter, Gauge, Label};
use tokenmeter_core::Meter;
use tokenmeter_core::catalog::MetricDef;
use tokenmeter_core::emit::RecorderScoped;

/// Builds `constant labels + (key, value)*` with the meter's label-key spelling.
pub(crate) fn labels(meter: &Meter, extra: &[(&str, &str)]) -> Vec<Label> {
    meter.metric_names().labels(extra)
}

/// Builds the labels of a node series (per GPU, host): the meter's constant labels without the
/// model-scoped ones, since one sampler reads the GPUs for every model of the process. A label
/// the server added with `constant_label` (a region, a replica) stays.
pub(crate) fn node_labels(meter: &Meter, extra: &[(&str, &str)]) -> Vec<Label> {
    meter.metric_names().node_labels(extra)
}

/// A gauge that is registered on its first value and reads NaN once its source stops answering.
pub(crate) struct GaugeSlot {
    name: Option<String>,
    labels: Vec<Label>,
    gauge: RecorderScoped<Gauge>,
}

impl GaugeSlot {
    pub(crate) fn new(meter: &Meter, def: &'static MetricDef, labels: Vec<Label>) -> Self {
        GaugeSlot {
            name: Some(meter.metric_names().name(def).to_owned()),
            labels,
            gauge: RecorderScoped::new(),
        }
    }

    /// `Some(v)`: set (registering on first use). `None`: NaN if it was ever set, else nothing.
    pub(crate) fn set(&mut self, v: Option<f64>) {
        let v = match v {
            Some(v) => v,
            None if self.gauge.is_made() => f64::NAN,
            None => return,
        };
        let Some(name) = &self.name else {
            return;
        };
        let labels = &self.labels;
        self.gauge
            .get_or_make(|| metrics::gauge!(name.clone(), labels.clone()))
            .set(v);
    }

    /// The source is gone for good: sets `v` once if the series exists, then drops the handle
    /// and never registers again, so an exporter that evicts series no handle can update
    /// (tokenmeter's Prometheus exporter with an idle timeout) can drop it.
    pub(crate) fn retire(&mut self, v: f64) {
        if self.gauge.is_made() {
            self.set(Some(v));
        }
        self.gauge.clear();
        self.name = None;
    }
}

/// A counter fed with a running total: it is incremented by the growth of the total, so any
/// recorder (not only those that support `absolute`) ends at the same value.
pub(crate) struct CounterSlot {
    name: Option<String>,
    labels: Vec<Label>,
    /// The handle, and what it holds, for the current recorder.
    counter: RecorderScoped<(Counter, u64)>,
}

impl CounterSlot {
    pub(crate) fn new(meter: &Meter, def: &'static MetricDef, labels: Vec<Label>) -> Self {
        CounterSlot {
            name: Some(meter.metric_names().name(def).to_owned()),
            labels,
            counter: RecorderScoped::new(),
        }
    }

    /// Advances the counter to `total` (registering on first use). A total below what was
    /// emitted (a reset at the source) is ignored until it grows past it. Under a recorder
    /// other than the one the counter was registered under, it registers again and starts from
    /// zero, so the new recorder also ends at `total`.
    pub(crate) fn advance_to(&mut self, total: u64) {
        let Some(name) = &self.name else {
            return;
        };
        let labels = &self.labels;
        let (counter, emitted) = self
            .counter
            .get_or_make(|| (metrics::counter!(name.clone(), labels.clone()), 0));
        if total > *emitted {
            counter.increment(total - *emitted);
            *emitted = total;
        }
    }
}
