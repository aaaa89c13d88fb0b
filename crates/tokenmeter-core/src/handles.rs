//! Metric handles resolved once per label set and shared by every request that carries it,
//! cached per `metrics` recorder.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use metrics::{Counter, Gauge, Histogram, Label};

use crate::catalog::{self, MetricDef, MetricKind, core as id};
use crate::emit::{RecorderScoped, lock};
use crate::names::{MetricNames, finish_reason_label};
use crate::types::Finish;

/// A request's labels, for its energy cell to share without a copy.
impl AsRef<[Label]> for Handles {
    fn as_ref(&self) -> &[Label] {
        &self.labels
    }
}

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
    pub(crate) preemptions: Counter,
    pub(crate) request_preemptions: Histogram,
    pub(crate) prefix_queries: Counter,
    pub(crate) prefix_hits: Counter,
    pub(crate) params_n: Histogram,
    pub(crate) params_max_tokens: Histogram,
    pub(crate) max_generation_tokens: Histogram,
    pub(crate) inference: Histogram,
    /// Present when the meter declared speculative decoding.
    pub(crate) spec: Option<SpecHandles>,
}

/// Speculative-decoding counters, resolved when the meter declared draft positions.
pub(crate) struct SpecHandles {
    pub(crate) drafts: Counter,
    pub(crate) draft_tokens: Counter,
    pub(crate) accepted_tokens: Counter,
    /// One per draft position, 0-based.
    pub(crate) accepted_per_position: Vec<Counter>,
}

impl Handles {
    fn resolve(names: &MetricNames, labels: Vec<Label>, spec_positions: usize) -> Self {
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
        let spec = (spec_positions > 0).then(|| SpecHandles {
            drafts: counter(id::SPEC_DRAFTS),
            draft_tokens: counter(id::SPEC_DRAFT_TOKENS),
            accepted_tokens: counter(id::SPEC_ACCEPTED_TOKENS),
            accepted_per_position: (0..spec_positions)
                .map(|p| {
                    let mut l = labels.clone();
                    l.push(Label::new("position", p.to_string()));
                    metrics::counter!(names.name(id::SPEC_ACCEPTED_PER_POSITION).to_owned(), l)
                })
                .collect(),
        });
        Handles {
            preemptions: counter(id::PREEMPTIONS),
            request_preemptions: hist(id::REQUEST_PREEMPTIONS),
            prefix_queries: counter(id::PREFIX_CACHE_QUERIES),
            prefix_hits: counter(id::PREFIX_CACHE_HITS),
            params_n: hist(id::REQUEST_PARAMS_N),
            params_max_tokens: hist(id::REQUEST_PARAMS_MAX_TOKENS),
            max_generation_tokens: hist(id::REQUEST_MAX_GENERATION_TOKENS),
            inference: hist(id::INFERENCE),
            spec,
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
pub(crate) struct HandleCache {
    sets: Mutex<RecorderScoped<HashMap<Vec<Label>, Arc<Handles>>>>,
    /// Speculative-decoding draft positions the meter declared (0: none).
    spec_positions: usize,
}

impl HandleCache {
    pub(crate) fn new(spec_positions: usize) -> Self {
        HandleCache {
            sets: Mutex::default(),
            spec_positions,
        }
    }

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
        let h = Arc::new(Handles::resolve(names, labels, self.spec_positions));
        if sets.len() < MAX_CACHED_LABEL_SETS {
            sets.insert(request_labels, Arc::clone(&h));
        }
        h
    }
}

/// The per-engine series ([`Meter::engine_step`](crate::Meter::engine_step)), resolved once
/// per recorder under the meter's constant labels. The KV and waiting-by-reason series are made
/// when an engine first reports them, so an engine that has no KV cache shows none (not 0).
pub(crate) struct EngineHandles {
    pub(crate) batch_sequences: Gauge,
    pub(crate) iteration_tokens: Histogram,
    pub(crate) last_step: Gauge,
    kv_usage: Option<Gauge>,
    /// (used, total).
    kv_blocks: Option<(Gauge, Gauge)>,
    /// `reason` = (capacity, deferred).
    waiting: Option<(Gauge, Gauge)>,
}

impl EngineHandles {
    pub(crate) fn resolve(names: &MetricNames) -> Self {
        let labels = names.constant_labels();
        EngineHandles {
            batch_sequences: metrics::gauge!(
                names.name(id::BATCH_SEQUENCES).to_owned(),
                labels.to_vec()
            ),
            iteration_tokens: metrics::histogram!(
                names.name(id::ITERATION_TOKENS).to_owned(),
                labels.to_vec()
            ),
            last_step: metrics::gauge!(
                names.name(id::ENGINE_LAST_STEP).to_owned(),
                labels.to_vec()
            ),
            kv_usage: None,
            kv_blocks: None,
            waiting: None,
        }
    }

    fn gauge(names: &MetricNames, def: &'static MetricDef) -> Gauge {
        metrics::gauge!(names.name(def).to_owned(), names.constant_labels().to_vec())
    }

    pub(crate) fn kv_usage(&mut self, names: &MetricNames) -> &Gauge {
        self.kv_usage
            .get_or_insert_with(|| Self::gauge(names, id::KV_CACHE_USAGE))
    }

    pub(crate) fn kv_blocks(&mut self, names: &MetricNames) -> &(Gauge, Gauge) {
        self.kv_blocks.get_or_insert_with(|| {
            (
                Self::gauge(names, id::KV_CACHE_BLOCKS_USED),
                Self::gauge(names, id::KV_CACHE_BLOCKS_TOTAL),
            )
        })
    }

    pub(crate) fn waiting(&mut self, names: &MetricNames) -> &(Gauge, Gauge) {
        self.waiting.get_or_insert_with(|| {
            let by = |reason: &'static str| {
                metrics::gauge!(
                    names.name(id::REQUESTS_WAITING_BY_REASON).to_owned(),
                    names.labels(&[("reason", reason)])
                )
            };
            (by("capacity"), by("deferred"))
        })
    }
}

/// The stalled-requests gauge under the meter's constant labels (set rarely: at a health check,
/// at most once a second from engine steps).
pub(crate) fn stalled_gauge(names: &MetricNames) -> Gauge {
    metrics::gauge!(
        names.name(id::REQUESTS_STALLED).to_owned(),
        names.constant_labels().to_vec()
    )
}
