//! Metric handles resolved once per label set and shared by every request that carries it.

use std::collections::HashMap;
use std::sync::Arc;

use metrics::{Counter, Gauge, Histogram, Label, Recorder};

use crate::guard::Finish;
use crate::meter::{Meter, lock};

/// Every handle a request touches outside its error path.
pub(crate) struct Handles {
    pub(crate) labels: Vec<Label>,
    pub(crate) ttft: Histogram,
    pub(crate) tpot: Histogram,
    pub(crate) itl: Histogram,
    pub(crate) e2e: Histogram,
    pub(crate) queue: Histogram,
    pub(crate) prefill: Histogram,
    pub(crate) decode: Histogram,
    pub(crate) request_input_tokens: Histogram,
    pub(crate) request_output_tokens: Histogram,
    pub(crate) input_tokens: Counter,
    pub(crate) output_tokens: Counter,
    pub(crate) goodput: Counter,
    pub(crate) running: Gauge,
    pub(crate) waiting: Gauge,
    /// Indexed by [`Finish::index`].
    pub(crate) ended: [Counter; Finish::COUNT],
    pub(crate) nonfinite: [Counter; 3],
    pub(crate) nonfinite_requests: Counter,
}

impl Handles {
    fn resolve(meter: &Meter, labels: Vec<Label>) -> Self {
        let name = |id: &str| meter.resolved_by_id(id).name.clone();
        let hist = |id: &str| metrics::histogram!(name(id), labels.clone());
        let counter = |id: &str| metrics::counter!(name(id), labels.clone());
        let gauge = |id: &str| metrics::gauge!(name(id), labels.clone());
        let reason_key = meter.label_key("finish_reason");
        let ended = Finish::ALL.map(|f| {
            let mut l = labels.clone();
            l.push(Label::new(reason_key.clone(), f.label(meter.naming())));
            metrics::counter!(name("requests"), l)
        });
        let nonfinite = ["nan", "pos_inf", "neg_inf"].map(|kind| {
            let mut l = labels.clone();
            l.push(Label::new("kind", kind));
            metrics::counter!(name("nonfinite_values"), l)
        });
        Handles {
            ttft: hist("ttft"),
            tpot: hist("tpot"),
            itl: hist("itl"),
            e2e: hist("e2e"),
            queue: hist("queue"),
            prefill: hist("prefill"),
            decode: hist("decode"),
            request_input_tokens: hist("request_input_tokens"),
            request_output_tokens: hist("request_output_tokens"),
            input_tokens: counter("input_tokens"),
            output_tokens: counter("output_tokens"),
            goodput: counter("goodput"),
            running: gauge("requests_running"),
            waiting: gauge("requests_waiting"),
            ended,
            nonfinite,
            nonfinite_requests: counter("nonfinite_requests"),
            labels,
        }
    }
}

/// Upper bound on cached label sets; past it, handles are resolved per request (still correct,
/// just slower), so a flood of label combinations cannot grow memory without bound.
const MAX_CACHED_LABEL_SETS: usize = 4096;

/// Handles per request-label set, valid for one recorder.
///
/// A handle is bound to the recorder that was current when it was registered. The cache
/// remembers which recorder that was (by address) and starts afresh when another one is
/// current, so building the meter before installing an exporter works.
#[derive(Default)]
pub(crate) struct HandleCache {
    recorder: usize,
    sets: HashMap<Vec<Label>, Arc<Handles>>,
}

/// Identifies the `metrics` recorder current on this thread (the global one, a local one, or
/// the no-op). A handle registered under one recorder is dead under another, so anything that
/// caches handles compares this before reusing them (the core's handle cache does).
///
/// ```
/// let before = tokenmeter_core::recorder_id();
/// assert_eq!(before, tokenmeter_core::recorder_id());
/// ```
pub fn recorder_id() -> usize {
    metrics::with_recorder(|r: &dyn Recorder| r as *const dyn Recorder as *const () as usize)
}

impl Meter {
    /// The handles for a request carrying `request_labels` (already capped).
    pub(crate) fn handles(&self, request_labels: Vec<Label>) -> Arc<Handles> {
        let recorder = recorder_id();
        let mut cache = lock(&self.inner.handles);
        if cache.recorder != recorder {
            cache.sets.clear();
            cache.recorder = recorder;
            self.emit_static();
        }
        if let Some(h) = cache.sets.get(&request_labels) {
            return Arc::clone(h);
        }
        let mut labels = self.inner.constant_labels.clone();
        labels.extend(request_labels.iter().cloned());
        let h = Arc::new(Handles::resolve(self, labels));
        if cache.sets.len() < MAX_CACHED_LABEL_SETS {
            cache.sets.insert(request_labels, Arc::clone(&h));
        }
        h
    }

    /// The info and start-time gauges and the catalog's descriptions, emitted to each recorder
    /// the meter meets.
    fn emit_static(&self) {
        for r in self.metrics() {
            let unit = crate::catalog::metrics_unit(r.def.unit);
            let desc = r.def.description;
            let name = r.name.clone();
            match (r.def.kind, unit) {
                (crate::catalog::MetricKind::Counter, Some(u)) => {
                    metrics::describe_counter!(name, u, desc)
                }
                (crate::catalog::MetricKind::Counter, None) => {
                    metrics::describe_counter!(name, desc)
                }
                (crate::catalog::MetricKind::Gauge, Some(u)) => {
                    metrics::describe_gauge!(name, u, desc)
                }
                (crate::catalog::MetricKind::Gauge, None) => metrics::describe_gauge!(name, desc),
                (crate::catalog::MetricKind::Histogram, Some(u)) => {
                    metrics::describe_histogram!(name, u, desc)
                }
                (crate::catalog::MetricKind::Histogram, None) => {
                    metrics::describe_histogram!(name, desc)
                }
            }
        }
        let mut info = self.inner.constant_labels.clone();
        info.push(Label::new(
            "model_version",
            self.inner.model_version.clone(),
        ));
        info.push(Label::new("version", env!("CARGO_PKG_VERSION")));
        metrics::gauge!(self.resolved_by_id("info").name.clone(), info).set(1.0);
        metrics::gauge!(
            self.resolved_by_id("start_time").name.clone(),
            self.inner.constant_labels.clone()
        )
        .set(self.inner.start_unix);
    }
}
