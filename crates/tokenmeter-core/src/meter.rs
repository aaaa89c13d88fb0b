//! The [`Meter`]: configuration, shared state and the entry points for requests.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::Label;
use quanta::{Clock, Instant};

use crate::catalog::{self, MetricDef};
use crate::guard::{ITL_SLOTS, MAX_ITL_BOUNDS, RequestBuilder};
use crate::handles::HandleCache;
use crate::names::{self, Naming, ResolvedMetric};
use crate::redact::{DEFAULT_TEXT_MAX_BYTES, Redact, TextCapture};
use crate::window::{Snapshot, Window};

/// Service-level objective for goodput: a successful request meets it when its TTFT and its
/// TPOT are both at or under these bounds (an unset bound always holds; TPOT holds trivially
/// for requests of fewer than 2 tokens).
///
/// ```
/// use std::time::Duration;
/// let slo = tokenmeter_core::Slo::new().ttft(Duration::from_millis(500)).tpot(Duration::from_millis(50));
/// assert_eq!(slo.ttft_bound(), Some(Duration::from_millis(500)));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slo {
    ttft: Option<Duration>,
    tpot: Option<Duration>,
}

impl Slo {
    /// An SLO with no bounds: every successful request counts as goodput.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the time-to-first-token bound.
    pub fn ttft(mut self, bound: Duration) -> Self {
        self.ttft = Some(bound);
        self
    }
    /// Sets the time-per-output-token bound.
    pub fn tpot(mut self, bound: Duration) -> Self {
        self.tpot = Some(bound);
        self
    }
    /// The TTFT bound, if set.
    pub fn ttft_bound(&self) -> Option<Duration> {
        self.ttft
    }
    /// The TPOT bound, if set.
    pub fn tpot_bound(&self) -> Option<Duration> {
        self.tpot
    }
    pub(crate) fn met(&self, ttft: Option<Duration>, tpot: Option<Duration>) -> bool {
        let ttft_ok = self.ttft.is_none_or(|b| ttft.is_some_and(|t| t <= b));
        let tpot_ok = self.tpot.is_none_or(|b| tpot.is_none_or(|t| t <= b));
        ttft_ok && tpot_ok
    }
}

/// A configuration the builder rejected.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// A bucket override named a metric id the catalog does not have, or one that is no histogram.
    #[error("bucket override for `{0}`: no histogram with that id in the catalog")]
    UnknownHistogram(String),
    /// Bucket bounds must be finite and strictly increasing (and not negative for durations
    /// and token counts).
    #[error("bucket override for `{0}`: bounds must be finite and strictly increasing")]
    BadBuckets(String),
    /// The guard accumulates inter-token latency in a fixed array.
    #[error("bucket override for `itl`: at most {MAX_ITL_BOUNDS} bounds are supported, got {0}")]
    TooManyItlBuckets(usize),
    /// The metric prefix must be a valid metric name segment.
    #[error("metric prefix `{0}` must match [a-zA-Z_][a-zA-Z0-9_]*")]
    BadPrefix(String),
    /// The window must be at least one second long.
    #[error("snapshot window {0:?} is shorter than 1 s")]
    BadWindow(Duration),
}

/// Cumulative counts since the meter was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    /// Requests started.
    pub requests_started: u64,
    /// Requests ended (finished, failed or cancelled).
    pub requests_ended: u64,
    /// Prompt tokens of started requests.
    pub input_tokens: u64,
    /// Output tokens flushed from guards (exact once no request is in flight).
    pub output_tokens: u64,
}

#[derive(Default)]
pub(crate) struct AtomicTotals {
    pub(crate) requests_started: AtomicU64,
    pub(crate) requests_ended: AtomicU64,
    pub(crate) input_tokens: AtomicU64,
    pub(crate) output_tokens: AtomicU64,
    pub(crate) running: AtomicU64,
    pub(crate) waiting: AtomicU64,
}

/// Builds a [`Meter`]. Consuming: each call returns the builder.
///
/// ```
/// use std::time::Duration;
/// use tokenmeter_core::{Meter, Naming};
/// let meter = Meter::builder()
///     .model("llama-3-8b")
///     .model_version("q4_k_m")
///     .naming(Naming::Vllm)
///     .constant_label("region", "eu-west-1")
///     .request_labels(["tenant"], 100)
///     .window(Duration::from_secs(30))
///     .try_build()
///     .expect("valid configuration");
/// assert_eq!(meter.model(), "llama-3-8b");
/// ```
#[must_use]
pub struct MeterBuilder {
    model: String,
    model_version: String,
    provider: String,
    operation: String,
    naming: Naming,
    prefix: String,
    constant_labels: Vec<(String, String)>,
    request_label_keys: Vec<String>,
    label_cap: usize,
    slo: Slo,
    buckets: Vec<(String, Vec<f64>)>,
    clock: Option<Clock>,
    window: Duration,
    flush_interval: Duration,
    text_redactor: Option<Box<dyn Redact>>,
    text_max_bytes: usize,
}

impl Default for MeterBuilder {
    fn default() -> Self {
        Self {
            model: "unknown".into(),
            model_version: String::new(),
            provider: "tokenmeter".into(),
            operation: "chat".into(),
            naming: Naming::OpenTelemetry,
            prefix: "tokenmeter".into(),
            constant_labels: Vec::new(),
            request_label_keys: Vec::new(),
            label_cap: 100,
            slo: Slo::default(),
            buckets: Vec::new(),
            clock: None,
            window: Duration::from_secs(60),
            flush_interval: Duration::from_secs(1),
            text_redactor: None,
            text_max_bytes: DEFAULT_TEXT_MAX_BYTES,
        }
    }
}

impl MeterBuilder {
    /// The served model name (`gen_ai.request.model`, or `model_name` under the vLLM preset).
    pub fn model(mut self, name: impl Into<String>) -> Self {
        self.model = name.into();
        self
    }
    /// The model version (weights revision, quantization), carried by the info metric.
    pub fn model_version(mut self, version: impl Into<String>) -> Self {
        self.model_version = version.into();
        self
    }
    /// `gen_ai.provider.name`: the serving engine (default `tokenmeter`).
    pub fn provider(mut self, name: impl Into<String>) -> Self {
        self.provider = name.into();
        self
    }
    /// `gen_ai.operation.name` (default `chat`).
    pub fn operation(mut self, name: impl Into<String>) -> Self {
        self.operation = name.into();
        self
    }
    /// The naming preset (default [`Naming::OpenTelemetry`]).
    pub fn naming(mut self, naming: Naming) -> Self {
        self.naming = naming;
        self
    }
    /// The prefix of our own metrics (default `tokenmeter`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
    /// A label every model-scoped metric carries (e.g. region, replica).
    pub fn constant_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.constant_labels.push((key.into(), value.into()));
        self
    }
    /// Label keys that requests may set with [`RequestBuilder::label`], and the number of
    /// distinct values kept per key; later values become `other` and are counted.
    pub fn request_labels<I, S>(mut self, keys: I, cap_per_key: usize) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.request_label_keys = keys.into_iter().map(Into::into).collect();
        self.label_cap = cap_per_key;
        self
    }
    /// The SLO that defines goodput.
    pub fn slo(mut self, slo: Slo) -> Self {
        self.slo = slo;
        self
    }
    /// Overrides the bucket bounds of the histogram with catalog id `id` (e.g. `"ttft"`).
    pub fn buckets(mut self, id: impl Into<String>, bounds: &[f64]) -> Self {
        self.buckets.push((id.into(), bounds.to_vec()));
        self
    }
    /// The clock (default: quanta's). Tests pass `quanta::Clock::mock()`'s clock.
    pub fn clock(mut self, clock: Clock) -> Self {
        self.clock = Some(clock);
        self
    }
    /// The sliding window of [`Meter::snapshot`] (default 60 s).
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }
    /// How often a long generation flushes its tokens to the shared counters (default 1 s).
    pub fn flush_interval(mut self, interval: Duration) -> Self {
        self.flush_interval = interval;
        self
    }

    /// Opts in to recording prompt and output text, passed through `redactor`. Off by
    /// default: without this call no text is kept, and
    /// [`RequestGuard::prompt_text`](crate::RequestGuard::prompt_text) and
    /// [`output_text`](crate::RequestGuard::output_text) do nothing.
    ///
    /// With it, each guard buffers the text it is handed (at most
    /// [`text_max_bytes`](Self::text_max_bytes) per kind), and when the request ends runs
    /// the redactor once per kind and records the result on the request-log event (fields
    /// `prompt`, `output`, and `prompt_truncated` / `output_truncated` when the cap cut the
    /// text) and on the request span (`gen_ai.input.messages`, `gen_ai.output.messages` in
    /// the OpenTelemetry GenAI JSON message shape, `tokenmeter.text_truncated`).
    ///
    /// ```
    /// use tokenmeter_core::{MaskEmailsAndNumbers, Meter, Redact, Truncate};
    /// let meter = Meter::builder()
    ///     .capture_text(MaskEmailsAndNumbers::new().then(Truncate::chars(2000)))
    ///     .text_max_bytes(8 * 1024)
    ///     .build();
    /// assert!(meter.captures_text());
    /// assert!(!Meter::default().captures_text());
    /// ```
    pub fn capture_text(mut self, redactor: impl Redact + 'static) -> Self {
        self.text_redactor = Some(Box::new(redactor));
        self
    }

    /// The most bytes of prompt text, and separately of output text, a request buffers when
    /// [`capture_text`](Self::capture_text) is on (default
    /// [`DEFAULT_TEXT_MAX_BYTES`](crate::DEFAULT_TEXT_MAX_BYTES), 16 KiB). Text past it is
    /// dropped (cut on a character boundary) and the text is marked truncated, so a guard's
    /// memory stays bounded. Has no effect without `capture_text`.
    ///
    /// ```
    /// use tokenmeter_core::{Finish, Meter, Verbatim};
    /// let meter = Meter::builder().capture_text(Verbatim).text_max_bytes(4).build();
    /// let mut req = meter.request().start();
    /// req.prompt_text("hello"); // "hell" is kept, the prompt is marked truncated
    /// req.finish(Finish::Stop);
    /// ```
    pub fn text_max_bytes(mut self, bytes: usize) -> Self {
        self.text_max_bytes = bytes;
        self
    }

    /// Builds the meter, or says which option is invalid.
    ///
    /// # Errors
    /// A [`ConfigError`] for a bad prefix, window or bucket override.
    pub fn try_build(self) -> Result<Meter, ConfigError> {
        self.validate()?;
        Ok(self.build_unchecked())
    }

    /// Builds the meter; an invalid option is reported with `tracing::warn!` and replaced by
    /// its default, so this never fails.
    pub fn build(mut self) -> Meter {
        if let Err(e) = self.validate() {
            tracing::warn!(error = %e, "tokenmeter: invalid option ignored");
            let defaults = MeterBuilder::default();
            match e {
                ConfigError::BadPrefix(_) => self.prefix = defaults.prefix,
                ConfigError::BadWindow(_) => self.window = defaults.window,
                _ => self
                    .buckets
                    .retain(|(id, b)| validate_buckets(id, b).is_ok()),
            }
            return self.build();
        }
        self.build_unchecked()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let p = self.prefix.as_bytes();
        let prefix_ok = !p.is_empty()
            && (p[0].is_ascii_alphabetic() || p[0] == b'_')
            && p.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
        if !prefix_ok {
            return Err(ConfigError::BadPrefix(self.prefix.clone()));
        }
        if self.window < Duration::from_secs(1) {
            return Err(ConfigError::BadWindow(self.window));
        }
        self.buckets
            .iter()
            .try_for_each(|(id, b)| validate_buckets(id, b))
    }

    fn build_unchecked(self) -> Meter {
        let meter = self.assemble();
        // Describe the catalog and set the info and start-time gauges for the recorder
        // installed now; a recorder installed later gets them at the first request.
        drop(meter.handles(Vec::new()));
        meter
    }

    fn assemble(self) -> Meter {
        let clock = self.clock.unwrap_or_default();
        let naming = self.naming;
        let resolved: Vec<ResolvedMetric> = catalog::all()
            .map(|def| {
                let o = self
                    .buckets
                    .iter()
                    .rev()
                    .find(|(id, _)| id == def.id)
                    .map(|(_, b)| b.as_slice());
                names::resolve(def, naming, &self.prefix, o)
            })
            .collect();
        // Unused slots hold u64::MAX, which no gap is below, so a search over the whole
        // fixed-size array lands where a search over the real bounds would.
        let mut itl_bounds_ns = [u64::MAX; MAX_ITL_BOUNDS];
        let itl = resolved
            .iter()
            .find(|r| r.def.id == "itl")
            .and_then(|r| r.buckets.as_ref());
        for (slot, bound) in itl_bounds_ns.iter_mut().zip(itl.into_iter().flatten()) {
            *slot = (bound * 1e9).round() as u64;
        }
        let mut itl_ranges = [(0, u64::MAX); ITL_SLOTS];
        for (i, range) in itl_ranges.iter_mut().enumerate() {
            let lo = if i == 0 {
                0
            } else {
                itl_bounds_ns[i - 1].saturating_add(1)
            };
            *range = (lo, itl_bounds_ns.get(i).copied().unwrap_or(u64::MAX));
        }
        let mut constant_labels = match naming {
            Naming::OpenTelemetry => vec![
                ("gen_ai_operation_name".to_owned(), self.operation.clone()),
                ("gen_ai_provider_name".to_owned(), self.provider.clone()),
                ("gen_ai_request_model".to_owned(), self.model.clone()),
            ],
            Naming::Vllm => vec![
                ("model_name".to_owned(), self.model.clone()),
                ("engine".to_owned(), "0".to_owned()),
            ],
        };
        constant_labels.extend(
            self.constant_labels
                .iter()
                .map(|(k, v)| (catalog::prometheus_label(k), v.clone())),
        );
        let now = clock.now();
        let start_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        Meter {
            inner: Arc::new(Inner {
                window: Mutex::new(Window::new(self.window, now)),
                clock,
                model: self.model,
                model_version: self.model_version,
                operation: self.operation,
                provider: self.provider,
                naming,
                constant_labels: constant_labels
                    .into_iter()
                    .map(|(k, v)| Label::new(k, v))
                    .collect(),
                request_label_keys: self.request_label_keys,
                label_cap: self.label_cap,
                label_values: Mutex::new(HashMap::new()),
                resolved,
                itl_bounds_ns,
                itl_ranges,
                slo: self.slo,
                totals: AtomicTotals::default(),
                handles: Mutex::new(HandleCache::default()),
                next_request_id: AtomicU64::new(1),
                built_at: now,
                start_unix,
                flush_interval: self.flush_interval.max(Duration::from_millis(1)),
                text: self
                    .text_redactor
                    .map(|r| TextCapture::new(r, self.text_max_bytes)),
            }),
        }
    }
}

fn validate_buckets(id: &str, bounds: &[f64]) -> Result<(), ConfigError> {
    let Some(def) = catalog::by_id(id).filter(|d| d.kind == catalog::MetricKind::Histogram) else {
        return Err(ConfigError::UnknownHistogram(id.to_owned()));
    };
    // Durations and counts are never negative; scores and shares may be.
    let non_negative = matches!(def.unit, "s" | "{token}");
    let ok = !bounds.is_empty()
        && bounds
            .iter()
            .all(|b| b.is_finite() && (!non_negative || *b >= 0.0))
        && bounds.windows(2).all(|w| w[0] < w[1]);
    if !ok {
        return Err(ConfigError::BadBuckets(id.to_owned()));
    }
    if id == "itl" && bounds.len() > MAX_ITL_BOUNDS {
        return Err(ConfigError::TooManyItlBuckets(bounds.len()));
    }
    Ok(())
}

pub(crate) struct Inner {
    pub(crate) clock: Clock,
    pub(crate) model: String,
    pub(crate) model_version: String,
    pub(crate) operation: String,
    pub(crate) provider: String,
    pub(crate) naming: Naming,
    pub(crate) constant_labels: Vec<Label>,
    pub(crate) request_label_keys: Vec<String>,
    pub(crate) label_cap: usize,
    pub(crate) label_values: Mutex<HashMap<String, HashSet<String>>>,
    pub(crate) resolved: Vec<ResolvedMetric>,
    /// ITL bucket bounds in nanoseconds, padded with `u64::MAX` (a fixed size lets the
    /// per-token search unroll).
    pub(crate) itl_bounds_ns: [u64; MAX_ITL_BOUNDS],
    /// Per ITL bucket, the inclusive nanosecond range it holds (for the guard's fast path).
    pub(crate) itl_ranges: [(u64, u64); ITL_SLOTS],
    pub(crate) slo: Slo,
    pub(crate) window: Mutex<Window>,
    pub(crate) totals: AtomicTotals,
    pub(crate) handles: Mutex<HandleCache>,
    pub(crate) next_request_id: AtomicU64,
    pub(crate) built_at: Instant,
    pub(crate) start_unix: f64,
    pub(crate) flush_interval: Duration,
    /// Present when the user opted in to text capture.
    pub(crate) text: Option<TextCapture>,
}

/// A poisoned lock only means another thread panicked mid-update of plain counters; the data
/// is still usable, and the generation loop must not panic because of it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The entry point: one per served model. Cheap to clone (an `Arc` inside) and `Send + Sync`.
///
/// See the [crate documentation](crate) for a complete request.
#[derive(Clone)]
pub struct Meter {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("model", &self.inner.model)
            .field("naming", &self.inner.naming)
            .finish()
    }
}

impl Default for Meter {
    fn default() -> Self {
        Self::builder().build()
    }
}

impl Meter {
    /// Starts configuring a meter.
    pub fn builder() -> MeterBuilder {
        MeterBuilder::default()
    }

    /// Reads the meter's clock once. Batch engines call this once per step and hand the
    /// instant to every sequence's [`RequestGuard::token_at`](crate::RequestGuard::token_at).
    #[inline]
    pub fn now(&self) -> Instant {
        self.inner.clock.now()
    }

    /// The meter's clock.
    pub fn clock(&self) -> &Clock {
        &self.inner.clock
    }

    /// Starts describing a new request; [`RequestBuilder::start`] marks its arrival.
    pub fn request(&self) -> RequestBuilder {
        RequestBuilder::new(self.clone())
    }

    /// The served model name.
    pub fn model(&self) -> &str {
        &self.inner.model
    }

    /// The naming preset in use.
    pub fn naming(&self) -> Naming {
        self.inner.naming
    }

    /// The SLO that defines goodput.
    pub fn slo(&self) -> Slo {
        self.inner.slo
    }

    /// Whether this meter records prompt and output text (opted in with
    /// [`MeterBuilder::capture_text`]). A server can skip decoding text it would only hand
    /// to the guard when this is `false`.
    pub fn captures_text(&self) -> bool {
        self.inner.text.is_some()
    }

    /// Cumulative totals since the meter was built.
    pub fn totals(&self) -> Totals {
        let t = &self.inner.totals;
        Totals {
            requests_started: t.requests_started.load(Relaxed),
            requests_ended: t.requests_ended.load(Relaxed),
            input_tokens: t.input_tokens.load(Relaxed),
            output_tokens: t.output_tokens.load(Relaxed),
        }
    }

    /// Percentiles, rates and goodput over the sliding window, computed in process.
    pub fn snapshot(&self) -> Snapshot {
        let now = self.now();
        let uptime = now.saturating_duration_since(self.inner.built_at);
        let (running, waiting) = self.in_flight();
        lock(&self.inner.window).snapshot(
            now,
            uptime,
            self.model(),
            self.totals(),
            running,
            waiting,
        )
    }

    fn in_flight(&self) -> (u64, u64) {
        let t = &self.inner.totals;
        (t.running.load(Relaxed), t.waiting.load(Relaxed))
    }

    /// Every catalog metric as this meter emits it (names, OTel names, buckets), for exporters.
    pub fn metrics(&self) -> &[ResolvedMetric] {
        &self.inner.resolved
    }

    /// The name emitted through the `metrics` facade for a catalog metric: its Prometheus
    /// exposition name under this meter's naming preset and prefix.
    ///
    /// ```
    /// let meter = tokenmeter_core::Meter::default();
    /// let goodput = tokenmeter_core::catalog::by_id("goodput").unwrap();
    /// assert_eq!(meter.metric_name(goodput), "tokenmeter_requests_goodput_total");
    /// ```
    pub fn metric_name(&self, def: &'static MetricDef) -> &str {
        self.resolved(def)
            .map_or(def.otel_name, |r| r.name.as_str())
    }

    /// The bucket bounds this meter uses for a histogram.
    pub fn buckets(&self, def: &'static MetricDef) -> Option<&[f64]> {
        self.resolved(def).and_then(|r| r.buckets.as_deref())
    }

    pub(crate) fn resolved(&self, def: &'static MetricDef) -> Option<&ResolvedMetric> {
        self.inner.resolved.iter().find(|r| r.def.id == def.id)
    }

    pub(crate) fn resolved_by_id(&self, id: &str) -> &ResolvedMetric {
        // Core ids are fixed in catalog/core.rs and resolved at build; a miss is a bug in the
        // catalog, caught by the catalog tests, so fall back to the first entry rather than panic.
        self.inner
            .resolved
            .iter()
            .find(|r| r.def.id == id)
            .unwrap_or(&self.inner.resolved[0])
    }

    /// The label key emitted for an OpenTelemetry attribute key (`hw.id` → `hw_id`; under the
    /// vLLM preset `gen_ai.request.model` → `model_name`).
    pub fn label_key(&self, otel_key: &str) -> String {
        names::label_key(self.inner.naming, otel_key)
    }

    /// The labels every model-scoped metric carries: model, operation and provider (or vLLM's
    /// `model_name` and `engine`), plus the builder's constant labels.
    pub fn constant_labels(&self) -> Vec<Label> {
        self.inner.constant_labels.clone()
    }

    /// Starts timing a model load (cold start); [`LoadGuard::done`] records it.
    pub fn model_load(&self) -> LoadGuard {
        LoadGuard {
            meter: self.clone(),
            start: self.now(),
        }
    }

    /// Records a model load (cold start) that took `duration`.
    pub fn record_model_load(&self, duration: Duration) {
        let name = self.resolved_by_id("model_load").name.clone();
        metrics::histogram!(name, self.inner.constant_labels.clone())
            .record(duration.as_secs_f64());
    }

    /// Counts an ignored API misuse in the `misuse` self-metric.
    pub(crate) fn misuse(&self, kind: &'static str) {
        let name = self.resolved_by_id("misuse").name.clone();
        let mut labels = self.inner.constant_labels.clone();
        labels.push(Label::new("kind", kind));
        metrics::counter!(name, labels).increment(1);
    }

    /// Maps a request label value through the cardinality cap, counting overflows.
    pub(crate) fn capped_label(&self, key: &str, value: String) -> Option<Label> {
        if !self.inner.request_label_keys.iter().any(|k| k == key) {
            self.misuse("unknown_label");
            return None;
        }
        let emitted_key = catalog::prometheus_label(key);
        let mut values = lock(&self.inner.label_values);
        let set = values.entry(key.to_owned()).or_default();
        if set.contains(&value) || set.len() < self.inner.label_cap {
            set.insert(value.clone());
            return Some(Label::new(emitted_key, value));
        }
        drop(values);
        let name = self.resolved_by_id("label_overflow").name.clone();
        let mut labels = self.inner.constant_labels.clone();
        labels.push(Label::new("label", emitted_key.clone()));
        metrics::counter!(name, labels).increment(1);
        Some(Label::new(emitted_key, "other"))
    }
}

/// Times a model load; see [`Meter::model_load`]. Dropping it without [`done`](Self::done)
/// records nothing (a load that failed is not a cold-start time).
///
/// ```
/// let meter = tokenmeter_core::Meter::default();
/// let load = meter.model_load();
/// // ... load the weights ...
/// let took = load.done();
/// assert!(took >= std::time::Duration::ZERO);
/// ```
#[must_use = "call done() when the model is loaded"]
pub struct LoadGuard {
    meter: Meter,
    start: Instant,
}

impl LoadGuard {
    /// Records the load duration and returns it.
    pub fn done(self) -> Duration {
        let took = self.meter.now().saturating_duration_since(self.start);
        self.meter.record_model_load(took);
        took
    }
}
