//! The [`Meter`]: configuration, shared state and the entry points for requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use metrics::Label;
use quanta::{Clock, Instant};

use crate::attribution::{Registry, Subscription};
use crate::cardinality::{Admission, CardinalityLimit};
use crate::catalog::{self, core as id};
use crate::emit::RecorderScoped;
use crate::emit::lock;
use crate::handles::{EngineHandles, HandleCache, Handles, StaticSeries};
use crate::itl::{ItlLayout, MAX_ITL_BOUNDS};
use crate::liveness::{DEFAULT_STALL_THRESHOLD, Liveness};
use crate::names::{self, MetricNames, Naming};
use crate::redact::{DEFAULT_TEXT_MAX_BYTES, Redact, TextCapture};
use crate::span::Identity;
use crate::summary::RequestSummary;
use crate::types::{AtomicTotals, Outcome, Slo, Totals};
use crate::window::{Snapshot, Window};

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
    /// A constant or request label would give a series the same label name twice (after the
    /// OpenTelemetry → Prometheus mapping, e.g. `gen_ai.request.model` and
    /// `gen_ai_request_model`), or one the meter or Prometheus reserves (`le`, `quantile`,
    /// `__`-prefixed names, the preset's own labels such as vLLM's `engine`). Prometheus rejects
    /// a whole scrape that holds such a series.
    #[error("label `{0}` collides with a label the meter already emits, or is reserved")]
    LabelCollision(String),
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
    label_idle_timeout: Duration,
    slo: Slo,
    buckets: Vec<(String, Vec<f64>)>,
    clock: Option<Clock>,
    window: Duration,
    flush_interval: Duration,
    text_redactor: Option<Box<dyn Redact>>,
    text_max_bytes: usize,
    stall_threshold: Duration,
    spec_positions: usize,
    adapter_cap: Option<usize>,
}

/// The request label key that carries the adapter (LoRA) that served a request; see
/// [`MeterBuilder::adapters`].
pub const ADAPTER_LABEL: &str = "adapter";

/// Most speculative-decoding draft positions [`MeterBuilder::speculative_tokens`] accepts.
pub const MAX_SPEC_POSITIONS: usize = 64;

impl Default for MeterBuilder {
    fn default() -> Self {
        Self {
            model: "unknown".into(),
            model_version: String::new(),
            provider: "tokenmeter".into(),
            operation: "chat".into(),
            naming: Naming::OpenTelemetry,
            prefix: names::DEFAULT_PREFIX.into(),
            constant_labels: Vec::new(),
            request_label_keys: Vec::new(),
            label_cap: 100,
            label_idle_timeout: Duration::from_secs(600),
            slo: Slo::default(),
            buckets: Vec::new(),
            clock: None,
            window: Duration::from_secs(60),
            flush_interval: Duration::from_secs(1),
            text_redactor: None,
            text_max_bytes: DEFAULT_TEXT_MAX_BYTES,
            stall_threshold: DEFAULT_STALL_THRESHOLD,
            spec_positions: 0,
            adapter_cap: None,
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
    /// Label keys that requests may set with [`RequestBuilder::label`](crate::RequestBuilder::label), and each key's
    /// cardinality limit: the number of distinct values that get a series of their own. Values
    /// past it are emitted as `other` and counted in `labels.overflow` (one per request); a
    /// value unused for the [`label_idle_timeout`](Self::label_idle_timeout) gives its slot back.
    pub fn request_labels<I, S>(mut self, keys: I, cap_per_key: usize) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.request_label_keys = keys.into_iter().map(Into::into).collect();
        self.label_cap = cap_per_key;
        self
    }
    /// How long a request label value may go unused before its slot under the cardinality
    /// limit goes to another value (default 10 minutes; `Duration::MAX`: never).
    pub fn label_idle_timeout(mut self, timeout: Duration) -> Self {
        self.label_idle_timeout = timeout;
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

    /// How long a running request may go without progress (a token, or being scheduled)
    /// before it counts as stalled, and the engine without a step (while work is in flight)
    /// before [`Meter::health`] calls it frozen (default 30 s). Progress is seen at the
    /// guard's flushes, so keep it well above the
    /// [`flush_interval`](Self::flush_interval).
    ///
    /// ```
    /// use std::time::Duration;
    /// let meter = tokenmeter_core::Meter::builder().stall_threshold(Duration::from_secs(10)).build();
    /// assert_eq!(meter.health().stall_threshold, Duration::from_secs(10));
    /// ```
    pub fn stall_threshold(mut self, threshold: Duration) -> Self {
        self.stall_threshold = threshold;
        self
    }

    /// Declares speculative decoding with up to `k` draft tokens per step: the meter then
    /// emits the speculative-decoding counters (drafts, draft and accepted tokens, and
    /// accepted tokens per position `0..k`) that
    /// [`RequestGuard::spec_decode`](crate::RequestGuard::spec_decode) feeds. Without it
    /// (`k = 0`, the default) those series do not exist, as in vLLM without a speculative
    /// config. `k` above [`MAX_SPEC_POSITIONS`] is clamped to it.
    ///
    /// ```
    /// let meter = tokenmeter_core::Meter::builder().speculative_tokens(4).build();
    /// let mut req = meter.request().start();
    /// req.spec_decode(4, 3); // 4 drafted, 3 accepted
    /// req.tokens(4);         // the 3 accepted plus the bonus token
    /// ```
    pub fn speculative_tokens(mut self, k: usize) -> Self {
        self.spec_positions = k.min(MAX_SPEC_POSITIONS);
        self
    }

    /// Declares the [`ADAPTER_LABEL`] request label (the LoRA adapter that served a request,
    /// set with [`RequestBuilder::adapter`](crate::RequestBuilder::adapter)) with its own
    /// cardinality cap: adapters past `cap` distinct names are emitted as `other`.
    ///
    /// ```
    /// let meter = tokenmeter_core::Meter::builder().adapters(8).build();
    /// let mut req = meter.request().adapter("sql-lora").start();
    /// req.token(); // counted under adapter="sql-lora"
    /// ```
    pub fn adapters(mut self, cap: usize) -> Self {
        self.adapter_cap = Some(cap);
        self
    }

    /// Builds the meter, or says which option is invalid.
    ///
    /// # Errors
    /// A [`ConfigError`] for a bad prefix, window, bucket override, or a label that collides
    /// with another or is reserved.
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
                ConfigError::LabelCollision(key) => self.drop_label(&key),
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
            .try_for_each(|(id, b)| validate_buckets(id, b))?;
        self.validate_labels()
    }

    /// Every label key a series of this meter can carry must be unique and unreserved.
    fn validate_labels(&self) -> Result<(), ConfigError> {
        let mut taken: Vec<String> = self.preset_labels().into_iter().map(|(k, _)| k).collect();
        let keys = self
            .constant_labels
            .iter()
            .map(|(k, _)| k.as_str())
            .chain(self.request_label_keys.iter().map(String::as_str))
            .chain(self.adapter_cap.map(|_| ADAPTER_LABEL));
        for key in keys {
            let emitted = catalog::prometheus_label(key);
            if names::is_reserved_label(self.naming, &emitted) || taken.contains(&emitted) {
                return Err(ConfigError::LabelCollision(key.to_owned()));
            }
            taken.push(emitted);
        }
        Ok(())
    }

    /// Removes the last label (constant or request key) spelled `key`.
    fn drop_label(&mut self, key: &str) {
        if key == ADAPTER_LABEL && self.adapter_cap.is_some() {
            self.adapter_cap = None;
        } else if let Some(i) = self.request_label_keys.iter().rposition(|k| k == key) {
            self.request_label_keys.remove(i);
        } else if let Some(i) = self.constant_labels.iter().rposition(|(k, _)| k == key) {
            self.constant_labels.remove(i);
        }
    }

    /// The labels the naming preset puts on every model-scoped series.
    fn preset_labels(&self) -> Vec<(String, String)> {
        match self.naming {
            Naming::OpenTelemetry => vec![
                ("gen_ai_operation_name".to_owned(), self.operation.clone()),
                ("gen_ai_provider_name".to_owned(), self.provider.clone()),
                ("gen_ai_request_model".to_owned(), self.model.clone()),
            ],
            Naming::Vllm => vec![
                ("model_name".to_owned(), self.model.clone()),
                ("engine".to_owned(), "0".to_owned()),
            ],
        }
    }

    fn build_unchecked(self) -> Meter {
        let meter = self.assemble();
        // For the recorder installed now; a recorder installed later gets them from its
        // exporter, or at the first request.
        meter.register_series();
        meter
    }

    fn assemble(self) -> Meter {
        let mut constant_labels = self.preset_labels();
        let preset_len = constant_labels.len();
        let clock = self.clock.unwrap_or_default();
        let naming = self.naming;
        let resolved = catalog::all()
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
        constant_labels.extend(
            self.constant_labels
                .iter()
                .map(|(k, v)| (catalog::prometheus_label(k), v.clone())),
        );
        let names = MetricNames::new(
            naming,
            resolved,
            constant_labels
                .into_iter()
                .map(|(k, v)| Label::new(k, v))
                .collect(),
            preset_len,
        );
        let itl = ItlLayout::new(names.buckets(id::ITL).unwrap_or_default());
        let now = clock.now();
        let start_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let mut label_limits: HashMap<String, CardinalityLimit> = self
            .request_label_keys
            .iter()
            .map(|k| {
                let limit = CardinalityLimit::new(self.label_cap, self.label_idle_timeout);
                (k.clone(), limit)
            })
            .collect();
        if let Some(cap) = self.adapter_cap {
            label_limits.insert(
                ADAPTER_LABEL.to_owned(),
                CardinalityLimit::new(cap, self.label_idle_timeout),
            );
        }
        Meter {
            inner: Arc::new(Inner {
                window: Mutex::new(Window::new(self.window, now)),
                clock,
                identity: Identity {
                    operation: self.operation,
                    provider: self.provider,
                    model: self.model,
                },
                statics: StaticSeries {
                    model_version: self.model_version,
                    start_unix,
                },
                names,
                label_limits: Mutex::new(label_limits),
                itl,
                slo: self.slo,
                totals: AtomicTotals::default(),
                handles: HandleCache::new(self.spec_positions),
                liveness: Liveness::new(now, self.stall_threshold),
                attribution: Registry::default(),
                engine: Mutex::new(RecorderScoped::new()),
                next_request_id: AtomicU64::new(1),
                built_at: now,
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

struct Inner {
    clock: Clock,
    identity: Identity,
    statics: StaticSeries,
    names: MetricNames,
    /// Per declared request label key, its cardinality limit.
    label_limits: Mutex<HashMap<String, CardinalityLimit>>,
    itl: ItlLayout,
    slo: Slo,
    window: Mutex<Window>,
    totals: AtomicTotals,
    handles: HandleCache,
    next_request_id: AtomicU64,
    built_at: Instant,
    flush_interval: Duration,
    /// Present when the user opted in to text capture.
    text: Option<TextCapture>,
    liveness: Liveness,
    /// Samplers' subscriptions to its requests (per-request energy and cost).
    attribution: Registry,
    /// Per-engine series, made at the first engine step.
    engine: Mutex<RecorderScoped<EngineHandles>>,
}

/// The entry point: one per served model. Cheap to clone (an `Arc` inside) and `Send + Sync`.
///
/// See the [crate documentation](crate) for a complete request.
#[derive(Clone)]
pub struct Meter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("model", &self.inner.identity.model)
            .field("naming", &self.inner.names.naming())
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

    /// The served model name.
    pub fn model(&self) -> &str {
        &self.inner.identity.model
    }

    /// The model version given to [`MeterBuilder::model_version`]; empty when none was.
    pub fn model_version(&self) -> &str {
        &self.inner.statics.model_version
    }

    /// The naming preset in use.
    pub fn naming(&self) -> Naming {
        self.inner.names.naming()
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

    /// The cardinality cap of request label `key` (declared with
    /// [`MeterBuilder::request_labels`] or [`MeterBuilder::adapters`]); `None` for a key the
    /// meter does not cap. Monitors that keep their own per-value state (the quality crate's
    /// A/B monitor) follow it, so that their `other` is the meter's.
    ///
    /// ```
    /// use tokenmeter_core::Meter;
    /// let meter = Meter::builder().request_labels(["variant"], 2).build();
    /// assert_eq!(meter.request_label_cap("variant"), Some(2));
    /// assert_eq!(meter.request_label_cap("tenant"), None);
    /// ```
    pub fn request_label_cap(&self, key: &str) -> Option<usize> {
        lock(&self.inner.label_limits)
            .get(key)
            .map(CardinalityLimit::limit)
    }

    /// Cumulative totals since the meter was built.
    pub fn totals(&self) -> Totals {
        self.inner.totals.load()
    }

    /// Percentiles, rates and goodput over the sliding window, computed in process.
    pub fn snapshot(&self) -> Snapshot {
        let now = self.now();
        let uptime = now.saturating_duration_since(self.inner.built_at);
        let (running, waiting) = self.inner.totals.in_flight();
        lock(&self.inner.window).snapshot(
            now,
            uptime,
            self.model(),
            self.totals(),
            running,
            waiting,
        )
    }

    /// The names, label keys and buckets this meter emits: what exporters and the GPU and
    /// quality crates need to emit series that sit beside the meter's own.
    ///
    /// ```
    /// use tokenmeter_core::{Meter, Naming, catalog};
    /// let meter = Meter::builder().naming(Naming::Vllm).build();
    /// let names = meter.metric_names();
    /// assert_eq!(names.name(catalog::core::TTFT), "vllm:time_to_first_token_seconds");
    /// assert_eq!(names.label_key("gen_ai.request.model"), "model_name");
    /// ```
    pub fn metric_names(&self) -> &MetricNames {
        &self.inner.names
    }

    /// Registers the meter's request series (counters, gauges and histograms of its constant
    /// label set), its info and start-time gauges and the catalog's descriptions with the
    /// `metrics` recorder current now, at zero, so dashboards and `rate()`/`absent()` rules see
    /// them before the first request. The meter does this when it is built; exporters installed
    /// later call it for the meters handed to them (`Exporters::meter`, `init_for`), and a
    /// server that installs its own recorder after building the meter can call it too.
    /// Idempotent.
    pub fn register_series(&self) {
        drop(self.handles(Vec::new()));
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
        let names = &self.inner.names;
        metrics::histogram!(
            names.name(id::MODEL_LOAD).to_owned(),
            names.constant_labels().to_vec()
        )
        .record(duration.as_secs_f64());
    }

    /// Subscribes a resource sampler (`tokenmeter-gpu`'s) to this meter's requests: every
    /// request started from now on is tracked until the subscription settles it, so that the
    /// sampler can charge it its share of each interval's energy and cost. See
    /// [`attribution`](crate::attribution).
    pub fn subscribe_requests(&self) -> Subscription {
        self.inner.attribution.subscribe(self.inner.names.clone())
    }

    /// Counts an ignored API misuse in the `misuse` self-metric.
    pub(crate) fn misuse(&self, kind: &'static str) {
        let names = &self.inner.names;
        metrics::counter!(
            names.name(id::MISUSE).to_owned(),
            names.labels(&[("kind", kind)])
        )
        .increment(1);
    }

    /// Maps a request label value through its key's cardinality limit; an overflow is counted
    /// once per request. An undeclared key is misuse, and the label is dropped.
    pub(crate) fn capped_label(&self, key: &str, value: String) -> Option<Label> {
        let now = self.now();
        let admission = match lock(&self.inner.label_limits).get_mut(key) {
            Some(limit) => limit.admit(&value, now),
            None => {
                self.misuse("unknown_label");
                return None;
            }
        };
        let emitted_key = catalog::prometheus_label(key);
        if admission == Admission::Overflow {
            let names = &self.inner.names;
            metrics::counter!(
                names.name(id::LABEL_OVERFLOW).to_owned(),
                names.labels(&[("label", &emitted_key)])
            )
            .increment(1);
        }
        let value = match admission {
            Admission::Own { .. } => value,
            _ => admission.label("").to_owned(),
        };
        Some(Label::new(emitted_key, value))
    }

    // What the guard, one layer up, reads and updates.

    pub(crate) fn handles(&self, request_labels: Vec<Label>) -> Arc<Handles> {
        let inner = &*self.inner;
        inner
            .handles
            .get(&inner.names, &inner.statics, request_labels)
    }

    pub(crate) fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    #[inline]
    pub(crate) fn itl_layout(&self) -> &ItlLayout {
        &self.inner.itl
    }

    #[inline]
    pub(crate) fn flush_interval(&self) -> Duration {
        self.inner.flush_interval
    }

    pub(crate) fn live_totals(&self) -> &AtomicTotals {
        &self.inner.totals
    }

    pub(crate) fn next_request_id(&self) -> u64 {
        self.inner.next_request_id.fetch_add(1, Relaxed)
    }

    pub(crate) fn text_capture(&self) -> Option<&TextCapture> {
        self.inner.text.as_ref()
    }

    pub(crate) fn liveness(&self) -> &Liveness {
        &self.inner.liveness
    }

    pub(crate) fn attribution(&self) -> &Registry {
        &self.inner.attribution
    }

    /// Runs `f` on the per-engine handles (made for the current recorder on first use).
    pub(crate) fn with_engine_handles<R>(
        &self,
        f: impl FnOnce(&mut EngineHandles, &MetricNames) -> R,
    ) -> R {
        let names = &self.inner.names;
        let mut scoped = lock(&self.inner.engine);
        f(scoped.get_or_make(|| EngineHandles::resolve(names)), names)
    }

    /// Unix time, in seconds, of an instant of the meter's clock: the wall time the meter was
    /// built plus the clock's time since then (so a mock clock gives exact timestamps).
    pub fn unix_seconds(&self, at: Instant) -> f64 {
        let since_built = at.saturating_duration_since(self.inner.built_at);
        self.inner.statics.start_unix + since_built.as_secs_f64()
    }

    /// Adds a flush's tokens and ITL buckets (mean ns, count) to the window.
    pub(crate) fn window_tokens(&self, now: Instant, tokens: u64, itl: &[(u64, u64)]) {
        lock(&self.inner.window).record_tokens(now, tokens, itl);
    }

    /// Adds an ended request to the window.
    pub(crate) fn window_end(&self, now: Instant, summary: &RequestSummary, outcome: Outcome) {
        lock(&self.inner.window).record_end(now, summary, outcome);
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
