//! Lazily registered metric handles: a series is created on its first real value, so a metric
//! the source cannot read never shows up as a zero.
//!
//! A handle belongs to the `metrics` recorder that was current when it was registered; each slot
//! remembers that recorder ([`tokenmeter_core::recorder_id`]) and registers again when another
//! one is current, so a sampler started before the exporter is installed still exports.

use metrics::{Counter, Gauge, Label};
use tokenmeter_core::catalog::{MetricDef, by_id};
use tokenmeter_core::{Meter, Naming, recorder_id};

/// Looks a catalog entry of `catalog/gpu.rs` up by id.
pub(crate) fn def(id: &str) -> Option<&'static MetricDef> {
    by_id(id)
}

/// Builds `constant labels + (key, value)*` with the meter's label-key spelling.
pub(crate) fn labels(meter: &Meter, extra: &[(&str, &str)]) -> Vec<Label> {
    let mut out = meter.constant_labels();
    for (k, v) in extra {
        out.push(Label::new(meter.label_key(k), (*v).to_owned()));
    }
    out
}

/// Builds the labels of a node series (per GPU, host): the meter's constant labels without the
/// model-scoped ones (model, operation and provider; vLLM's `model_name` and `engine`), since
/// one sampler reads the GPUs for every model of the process. A label the server added with
/// `constant_label` (a region, a replica) stays.
pub(crate) fn node_labels(meter: &Meter, extra: &[(&str, &str)]) -> Vec<Label> {
    let mut model_scoped = [
        "gen_ai.request.model",
        "gen_ai.operation.name",
        "gen_ai.provider.name",
    ]
    .map(|k| meter.label_key(k))
    .to_vec();
    if meter.naming() == Naming::Vllm {
        model_scoped.push("engine".to_owned());
    }
    let mut out = labels(meter, extra);
    out.retain(|l| !model_scoped.iter().any(|k| k == l.key()));
    out
}

/// A gauge that is registered on its first value and reads NaN once its source stops answering.
pub(crate) struct GaugeSlot {
    name: Option<String>,
    labels: Vec<Label>,
    /// The handle and the recorder it was registered under.
    gauge: Option<(usize, Gauge)>,
}

impl GaugeSlot {
    pub(crate) fn new(meter: &Meter, id: &str, labels: Vec<Label>) -> Self {
        GaugeSlot {
            name: def(id).map(|d| meter.metric_name(d).to_owned()),
            labels,
            gauge: None,
        }
    }

    /// The handle for the current recorder, registering it if there is none yet or if it was
    /// registered under another recorder.
    fn handle(&mut self) -> Option<&Gauge> {
        let name = self.name.as_ref()?;
        let recorder = recorder_id();
        if self.gauge.as_ref().is_none_or(|(r, _)| *r != recorder) {
            self.gauge = Some((recorder, metrics::gauge!(name.clone(), self.labels.clone())));
        }
        self.gauge.as_ref().map(|(_, g)| g)
    }

    /// `Some(v)`: set (registering on first use). `None`: NaN if it was ever set, else nothing.
    pub(crate) fn set(&mut self, v: Option<f64>) {
        let v = match v {
            Some(v) => v,
            None if self.gauge.is_some() => f64::NAN,
            None => return,
        };
        if let Some(g) = self.handle() {
            g.set(v);
        }
    }
}

impl GaugeSlot {
    /// The source is gone for good: sets `v` once if the series exists, then drops the handle
    /// and never registers again, so an exporter that evicts series no handle can update
    /// (tokenmeter's Prometheus exporter with an idle timeout) can drop it.
    pub(crate) fn retire(&mut self, v: f64) {
        if self.gauge.is_some()
            && let Some(g) = self.handle()
        {
            g.set(v);
        }
        self.gauge = None;
        self.name = None;
    }
}

/// A counter fed with a running total: it is incremented by the growth of the total, so any
/// recorder (not only those that support `absolute`) ends at the same value.
pub(crate) struct CounterSlot {
    name: Option<String>,
    labels: Vec<Label>,
    /// The handle and the recorder it was registered under.
    counter: Option<(usize, Counter)>,
    /// What the current recorder's counter holds.
    emitted: u64,
}

impl CounterSlot {
    pub(crate) fn new(meter: &Meter, id: &str, labels: Vec<Label>) -> Self {
        CounterSlot {
            name: def(id).map(|d| meter.metric_name(d).to_owned()),
            labels,
            counter: None,
            emitted: 0,
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
        let recorder = recorder_id();
        if self.counter.as_ref().is_none_or(|(r, _)| *r != recorder) {
            self.counter = Some((
                recorder,
                metrics::counter!(name.clone(), self.labels.clone()),
            ));
            self.emitted = 0;
        }
        if total > self.emitted {
            if let Some((_, c)) = &self.counter {
                c.increment(total - self.emitted);
            }
            self.emitted = total;
        }
    }
}
