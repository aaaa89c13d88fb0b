//! Metric handles resolved once per label set and shared by every request that carries it,
//! cached per `metrics` recorder.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use metrics::{Counter, Gauge, Histogram, Label};

use crate::catalog::{self, MetricDef, MetricKind, core as id};
use crate::emit::{RecorderScoped, lock};
use crate::names::{MetricNames, finish_reason_label};
use crate::types::Finish;

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
    fn resolve(names: &MetricNames, labels: Vec<Label>) -> Self {
        let hist = |def: &'static MetricDef| {
            metrics::histogram!(names.name(def).to_owned(), labels.clone())
        };
        let counter =
            |def: &'static MetricDef| metrics::counter!(names.name(def).to_owned(), labels.clone());
        let gauge =
            |def: &'static MetricDef| metrics::gauge!(names.name(def).to_owned(), labels.clone());
        let with = |def: &'static MetricDef, key: String, value: &'static str| {
            let mut l = labels.clone();
            l.push(Label::new(key, value));
            metrics::counter!(names.name(def).to_owned(), l)
        };
        let reason_key = names.label_key("finish_reason");
        let ended = Finish::ALL.map(|f| {
            with(
                id::REQUESTS,
                reason_key.clone(),
                finish_reason_label(names.naming(), f),
            )
        });
        let nonfinite = ["nan", "pos_inf", "neg_inf"]
            .map(|kind| with(id::NONFINITE_VALUES, "kind".into(), kind));
        Handles {
            ttft: hist(id::TTFT),
            tpot: hist(id::TPOT),
            itl: hist(id::ITL),
            e2e: hist(id::E2E),
            queue: hist(id::QUEUE),
            prefill: hist(id::PREFILL),
            decode: hist(id::DECODE),
            request_input_tokens: hist(id::REQUEST_INPUT_TOKENS),
            request_output_tokens: hist(id::REQUEST_OUTPUT_TOKENS),
            input_tokens: counter(id::INPUT_TOKENS),
            output_tokens: counter(id::OUTPUT_TOKENS),
            goodput: counter(id::GOODPUT),
            running: gauge(id::REQUESTS_RUNNING),
            waiting: gauge(id::REQUESTS_WAITING),
            ended,
            nonfinite,
            nonfinite_requests: counter(id::NONFINITE_REQUESTS),
            labels,
        }
    }
}

/// The series a meter sets once per recorder: the info and start-time gauges, and the
/// catalog's descriptions.
#[derive(Debug)]
pub(crate) struct StaticSeries {
    pub(crate) model_version: String,
    /// Unix time the meter was built, seconds.
    pub(crate) start_unix: f64,
}

impl StaticSeries {
    fn emit(&self, names: &MetricNames) {
        for r in names.metrics() {
            let unit = catalog::metrics_unit(r.def.unit);
            let desc = r.def.description;
            let name = r.name.clone();
            match (r.def.kind, unit) {
                (MetricKind::Counter, Some(u)) => metrics::describe_counter!(name, u, desc),
                (MetricKind::Counter, None) => metrics::describe_counter!(name, desc),
                (MetricKind::Gauge, Some(u)) => metrics::describe_gauge!(name, u, desc),
                (MetricKind::Gauge, None) => metrics::describe_gauge!(name, desc),
                (MetricKind::Histogram, Some(u)) => metrics::describe_histogram!(name, u, desc),
                (MetricKind::Histogram, None) => metrics::describe_histogram!(name, desc),
            }
        }
        let mut info = names.constant_labels().to_vec();
        info.push(Label::new("model_version", self.model_version.clone()));
        info.push(Label::new("version", env!("CARGO_PKG_VERSION")));
        metrics::gauge!(names.name(id::INFO).to_owned(), info).set(1.0);
        metrics::gauge!(
            names.name(id::START_TIME).to_owned(),
            names.constant_labels().to_vec()
        )
        .set(self.start_unix);
    }
}

/// Upper bound on cached label sets; past it, handles are resolved per request (still correct,
/// just slower), so a flood of label combinations cannot grow memory without bound.
const MAX_CACHED_LABEL_SETS: usize = 4096;

/// Handles per request-label set, for the current recorder. When another recorder is current
/// (an exporter installed after the meter was built), the cache starts afresh and the static
/// series are emitted to the new recorder.
#[derive(Default)]
pub(crate) struct HandleCache {
    sets: Mutex<RecorderScoped<HashMap<Vec<Label>, Arc<Handles>>>>,
}

impl HandleCache {
    /// The handles for a request carrying `request_labels` (already capped), after the
    /// constant labels.
    pub(crate) fn get(
        &self,
        names: &MetricNames,
        statics: &StaticSeries,
        request_labels: Vec<Label>,
    ) -> Arc<Handles> {
        let mut scoped = lock(&self.sets);
        let mut new_recorder = false;
        let sets = scoped.get_or_make(|| {
            new_recorder = true;
            HashMap::new()
        });
        if new_recorder {
            statics.emit(names);
        }
        if let Some(h) = sets.get(&request_labels) {
            return Arc::clone(h);
        }
        let mut labels = names.constant_labels().to_vec();
        labels.extend(request_labels.iter().cloned());
        let h = Arc::new(Handles::resolve(names, labels));
        if sets.len() < MAX_CACHED_LABEL_SETS {
            sets.insert(request_labels, Arc::clone(&h));
        }
        h
    }
}
