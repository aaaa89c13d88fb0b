//! A/B and canary readouts: two variants of a deployment (model versions, quantizations,
//! engine settings) compared on live traffic, on what tokenmeter already measures.
//!
//! The server tags each request with its variant (the [`VARIANT_LABEL`] request label, so the
//! Prometheus series carry it too) and, when the request ends, hands its
//! [`RequestSummary`] and [`QualityReport`] to an [`AbMonitor`] with [`AbMonitor::record`];
//! golden-set probes add their scores with [`AbMonitor::record_golden`]. A [`Readout`]
//! ([`AbMonitor::readout`], or [`compare`] over two [`VariantWindow`]s) then says, per metric,
//! the difference B − A, its confidence interval, the p-value where the test has one, and
//! whether the difference is significant at the configured level, or that the data are
//! insufficient for a verdict.
//!
//! | metric | test | minimum samples (defaults) |
//! |---|---|---|
//! | TTFT, TPOT p50 | percentile bootstrap of the quantile difference | 30 per variant |
//! | TTFT, TPOT p99 | percentile bootstrap of the quantile difference | 1000 per variant (10 beyond the p99) |
//! | goodput, error, refusal ratio | pooled two-proportion z-test, Newcombe interval | 30 per variant and 5 expected events and non-events in each |
//! | mean perplexity, golden score | Welch's t | 30 per variant |
//!
//! Memory: each variant keeps the latest [`AbConfig::capacity`] requests (default 10 000,
//! 40 bytes each) and golden scores (16 bytes each) of the last [`AbConfig::window`];
//! older ones leave the window, and when the capacity is reached the oldest go first (the
//! window then covers less time, and [`VariantWindow::truncated`] counts them). At most
//! [`AbConfig::max_variants`] variants are kept (core's cardinality limit: the rest are
//! merged under `other` and counted in `labels.overflow{label="ab_variant"}`, the
//! [`OVERFLOW_LABEL`]; the meter counts its own `variant` request label's overflows under
//! `label="variant"`, once per request). By default the cap is the meter's cap for the
//! `variant` request label ([`Meter::request_label_cap`]), so that the monitor's `other` and
//! the latency series' `other` hold the same variants.
//!
//! Metrics: core's latency and request series carry the variant as a request label; the monitor
//! exports what core does not have per label, under the same `variant` label:
//! `quality.ab.requests`, `quality.ab.refusals`, `quality.ab.perplexity` and
//! `quality.ab.golden_score`. `docs/deploy/prometheus/ab-recording-rules.yml` computes the same
//! comparison from them in Prometheus (without the bootstrap and Welch intervals, which need
//! raw values).
//!
//! Cost: `record` runs once per request after it ended, never per token: one short lock and an
//! O(1) push. A readout copies the two windows under the lock and computes outside it (the
//! bootstrap costs `resamples` × (n_a + n_b) work), so it never holds up `record`.
//!
//! ```
//! use tokenmeter_core::{Finish, Meter};
//! use tokenmeter_quality::ab::{AbConfig, AbMonitor, VARIANT_LABEL, Verdict};
//!
//! let meter = Meter::builder().request_labels([VARIANT_LABEL], 4).build();
//! let ab = AbMonitor::new(&meter, AbConfig::default())?;
//! for i in 0..40 {
//!     let variant = if i % 2 == 0 { "a" } else { "b" };
//!     let mut req = meter.request().label(VARIANT_LABEL, variant).start();
//!     req.token();
//!     let summary = req.finish(Finish::Stop);
//!     ab.record(variant, &summary, None);
//! }
//! let readout = ab.readout("a", "b");
//! println!("{readout}");
//! let errors = readout.row(tokenmeter_quality::ab::AbMetric::ErrorRatio);
//! // No request failed: too few events for the z-test's normal approximation.
//! assert_eq!(errors.map(|r| r.verdict), Some(Verdict::InsufficientData));
//! # Ok::<(), tokenmeter_quality::ab::AbError>(())
//! ```

mod readout;
mod stats;

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use metrics::{Counter, Histogram, Label};
use tokenmeter_core::cardinality::{Admission, CardinalityLimit, OTHER};
use tokenmeter_core::catalog::{self, prometheus_label};
use tokenmeter_core::clock::Instant;
use tokenmeter_core::emit::{RecorderScoped, lock};
use tokenmeter_core::{Finish, Meter, RequestSummary};

use crate::monitor::QualityReport;

pub use readout::{AbMetric, AbTest, Readout, Row, Verdict, compare};

/// The request label that carries a request's variant (declare it with
/// [`MeterBuilder::request_labels`](tokenmeter_core::MeterBuilder::request_labels) and set it
/// with [`RequestBuilder::label`](tokenmeter_core::RequestBuilder::label)); the recording rules
/// in `docs/deploy/prometheus/ab-recording-rules.yml` group by it.
pub const VARIANT_LABEL: &str = "variant";

/// The variant that variants past [`AbConfig::max_variants`] are merged under.
pub const OTHER_VARIANT: &str = OTHER;

/// The `label` value under which the monitor counts variants it merged under `other` in core's
/// `labels.overflow` counter (`tokenmeter_labels_overflow_total{label="ab_variant"}`): its own
/// cap, distinct from the meter's `variant` request label (`label="variant"`), so that neither
/// counts the other's overflows.
pub const OVERFLOW_LABEL: &str = "ab_variant";

/// [`AbConfig::max_variants`] when neither the config nor the meter sets it.
const DEFAULT_MAX_VARIANTS: usize = 8;

/// A bad [`AbConfig`] or [`AbTests`] value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AbError {
    /// The significance level is not strictly between 0 and 1.
    #[error("significance level must be in (0, 1), got {0}")]
    Level(f64),
    /// A count of the A/B config that must be positive is zero (capacity, max_variants,
    /// resamples).
    #[error("the A/B config's {0} must be at least 1")]
    Zero(&'static str),
    /// The window is zero.
    #[error("the window must be longer than zero")]
    Window,
}

/// How the readout tests differences: the significance level, the bootstrap, and the minimum
/// samples below which a row says [`Verdict::InsufficientData`].
///
/// ```
/// use tokenmeter_quality::ab::AbTests;
/// let tests = AbTests::default().level(0.01).resamples(2000).seed(7);
/// assert_eq!(tests.significance_level(), 0.01);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AbTests {
    pub(crate) level: f64,
    pub(crate) resamples: usize,
    pub(crate) seed: u64,
    pub(crate) min_p50: u64,
    pub(crate) min_p99: u64,
    pub(crate) min_rate: u64,
    pub(crate) min_rate_events: u64,
    pub(crate) min_mean: u64,
}

impl Default for AbTests {
    fn default() -> Self {
        AbTests {
            level: 0.05,
            resamples: 1000,
            seed: 0x5eed,
            min_p50: 30,
            min_p99: 1000,
            min_rate: 30,
            min_rate_events: 5,
            min_mean: 30,
        }
    }
}

impl AbTests {
    /// The significance level α of every test (default 0.05): a row is significant when its
    /// p-value is below α (or, for the bootstrap, when its 1 − α interval excludes 0), and the
    /// intervals are 1 − α intervals. The level applies to each row by itself: with nine rows,
    /// some "significant" rows are expected by chance (docs/quality.md).
    pub fn level(mut self, alpha: f64) -> Self {
        self.level = alpha;
        self
    }

    /// Bootstrap resamples for the quantile rows (default 1000).
    pub fn resamples(mut self, n: usize) -> Self {
        self.resamples = n;
        self
    }

    /// The bootstrap's random seed (default fixed): the same windows give the same readout.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Minimum requests per variant for the p50 rows (default 30) and the p99 rows (default
    /// 1000: ten observations beyond the 99th percentile; the bootstrap of an extreme quantile
    /// from fewer is too narrow).
    pub fn min_quantile_samples(mut self, p50: u64, p99: u64) -> Self {
        self.min_p50 = p50;
        self.min_p99 = p99;
        self
    }

    /// Minimum denominator per variant for the rate rows (default 30), and minimum expected
    /// events and non-events per variant under the pooled rate (default 5, the textbook
    /// condition for the z-test's normal approximation).
    pub fn min_rate_samples(mut self, n: u64, expected_events: u64) -> Self {
        self.min_rate = n;
        self.min_rate_events = expected_events;
        self
    }

    /// Minimum values per variant for the mean rows (perplexity, golden score; default 30,
    /// and never under 2, which Welch's variance needs).
    pub fn min_mean_samples(mut self, n: u64) -> Self {
        self.min_mean = n;
        self
    }

    /// The significance level α.
    pub fn significance_level(&self) -> f64 {
        self.level
    }

    fn validate(&self) -> Result<(), AbError> {
        if !(self.level > 0.0 && self.level < 1.0) {
            return Err(AbError::Level(self.level));
        }
        if self.resamples == 0 {
            return Err(AbError::Zero("resamples"));
        }
        Ok(())
    }
}

/// An [`AbMonitor`]'s window, bounds and tests.
///
/// ```
/// use std::time::Duration;
/// use tokenmeter_quality::ab::{AbConfig, AbTests};
/// let config = AbConfig::default()
///     .window(Duration::from_secs(3600))
///     .capacity(50_000)
///     .tests(AbTests::default().level(0.01));
/// # let _ = config;
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct AbConfig {
    window: Duration,
    capacity: usize,
    /// `None`: the meter's cap for [`VARIANT_LABEL`], else [`DEFAULT_MAX_VARIANTS`].
    max_variants: Option<usize>,
    tests: AbTests,
}

impl Default for AbConfig {
    fn default() -> Self {
        AbConfig {
            window: Duration::from_secs(30 * 60),
            capacity: 10_000,
            max_variants: None,
            tests: AbTests::default(),
        }
    }
}

impl AbConfig {
    /// How far back a readout looks (default 30 minutes). A variant unused this long also
    /// gives its slot back.
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Most requests (and, separately, golden scores) kept per variant (default 10 000).
    pub fn capacity(mut self, n: usize) -> Self {
        self.capacity = n;
        self
    }

    /// Most variants kept at once; the rest are merged under `other` (counted under
    /// [`OVERFLOW_LABEL`]). Default: the meter's cap for the [`VARIANT_LABEL`] request label
    /// when it declares one ([`Meter::request_label_cap`], the `cap_per_key` of
    /// [`MeterBuilder::request_labels`](tokenmeter_core::MeterBuilder::request_labels)), so the
    /// monitor merges the same variants as the meter's series; else 8. A different value makes
    /// the two disagree: `quality_ab_*{variant="c"}` with no latency series of `c`, or the
    /// reverse.
    pub fn max_variants(mut self, n: usize) -> Self {
        self.max_variants = Some(n);
        self
    }

    /// The tests' level, bootstrap and minimum samples.
    pub fn tests(mut self, tests: AbTests) -> Self {
        self.tests = tests;
        self
    }
}

/// How a request recorded with [`AbMonitor::record`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ended {
    Succeeded,
    Failed,
    Cancelled,
}

/// One ended request, as the readout needs it (its instant is kept beside it, in the ring).
/// Latencies in seconds, NaN when absent.
#[derive(Clone, Copy, Debug)]
struct Obs {
    ttft: f64,
    tpot: f64,
    perplexity: f64,
    ended: Ended,
    goodput: bool,
    /// `None`: no quality report.
    refusal: Option<bool>,
}

/// A ring of timestamped values, bounded in count and age.
#[derive(Debug)]
struct Ring<T> {
    items: VecDeque<(Instant, T)>,
    truncated: u64,
}

impl<T> Ring<T> {
    fn new() -> Self {
        Ring {
            items: VecDeque::new(),
            truncated: 0,
        }
    }

    fn push(&mut self, at: Instant, v: T, capacity: usize) {
        if self.items.len() >= capacity {
            self.items.pop_front();
            self.truncated += 1;
        }
        self.items.push_back((at, v));
    }

    /// Drops what is older than `window` at `now`.
    fn expire(&mut self, now: Instant, window: Duration) {
        while let Some((at, _)) = self.items.front() {
            if now.saturating_duration_since(*at) >= window {
                self.items.pop_front();
            } else {
                break;
            }
        }
    }
}

#[derive(Debug)]
struct Variant {
    requests: Ring<Obs>,
    golden: Ring<f64>,
    /// The variant's series, for the current `metrics` recorder.
    handles: RecorderScoped<VariantHandles>,
}

/// The series [`AbMonitor`] exports per variant, beside core's request series (which carry the
/// variant as a request label): what core does not measure per request label.
#[derive(Debug)]
struct VariantHandles {
    requests: Counter,
    refusals: Counter,
    perplexity: Histogram,
    golden: Histogram,
}

impl VariantHandles {
    /// Resolved like core's request series: the constant labels, then the variant label.
    fn resolve(meter: &Meter, variant: &str) -> Self {
        let names = meter.metric_names();
        let key = prometheus_label(VARIANT_LABEL);
        let mut labels = names.constant_labels().to_vec();
        // A meter per variant may carry it as a constant label already: one `variant` label,
        // the monitor's.
        labels.retain(|l| l.key() != key);
        labels.push(Label::new(key, variant.to_owned()));
        VariantHandles {
            requests: metrics::counter!(
                names.name(catalog::quality::AB_REQUESTS).to_owned(),
                labels.clone()
            ),
            refusals: metrics::counter!(
                names.name(catalog::quality::AB_REFUSALS).to_owned(),
                labels.clone()
            ),
            perplexity: metrics::histogram!(
                names.name(catalog::quality::AB_PERPLEXITY).to_owned(),
                labels.clone()
            ),
            golden: metrics::histogram!(
                names.name(catalog::quality::AB_GOLDEN_SCORE).to_owned(),
                labels
            ),
        }
    }
}

#[derive(Debug)]
struct State {
    limit: CardinalityLimit,
    variants: HashMap<String, Variant>,
}

/// Per-variant windows of ended requests and golden scores, and the readout comparing two of
/// them. Cheap to share (`Arc` it); every method takes `&self`.
#[derive(Debug)]
pub struct AbMonitor {
    meter: Meter,
    config: AbConfig,
    /// The variant cap in force: the config's, the meter's, or the default.
    max_variants: usize,
    state: Mutex<State>,
}

/// What one variant's window holds: the values each row of a [`Readout`] is computed from.
/// Serializable, so windows can be saved, shipped and compared elsewhere with [`compare`].
/// Latencies in seconds.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct VariantWindow {
    /// The variant's label value.
    pub variant: String,
    /// TTFT of each request that produced a token, seconds.
    pub ttft: Vec<f64>,
    /// TPOT of each request with at least 2 tokens, seconds.
    pub tpot: Vec<f64>,
    /// Requests that finished successfully (the goodput ratio's denominator).
    pub succeeded: u64,
    /// Requests that failed.
    pub failed: u64,
    /// Requests cancelled (finished as [`Finish::Cancelled`]).
    pub cancelled: u64,
    /// Successful requests that met the meter's SLO.
    pub goodput: u64,
    /// Requests recorded with a quality report (the refusal rate's denominator).
    pub quality_requests: u64,
    /// Of those, refusals.
    pub refusals: u64,
    /// Per-request perplexity, where the request reported logprobs.
    pub perplexity: Vec<f64>,
    /// Golden-set scores.
    pub golden: Vec<f64>,
    /// Requests and golden scores that left the window early because it was at capacity.
    pub truncated: u64,
}

impl VariantWindow {
    /// Requests that ended (any way): the error ratio's denominator.
    pub fn ended(&self) -> u64 {
        self.succeeded + self.failed + self.cancelled
    }
}

fn secs(d: Option<Duration>) -> f64 {
    d.map_or(f64::NAN, |d| d.as_secs_f64())
}

impl AbMonitor {
    /// A monitor reading time from `meter`'s clock and emitting through its names.
    ///
    /// # Errors
    ///
    /// [`AbError`] for a level outside (0, 1), a zero capacity, variant count (given to
    /// [`AbConfig::max_variants`]), resample count or window.
    pub fn new(meter: &Meter, config: AbConfig) -> Result<Self, AbError> {
        config.tests.validate()?;
        if config.capacity == 0 {
            return Err(AbError::Zero("capacity"));
        }
        if config.max_variants == Some(0) {
            return Err(AbError::Zero("max_variants"));
        }
        if config.window.is_zero() {
            return Err(AbError::Window);
        }
        let max_variants = config
            .max_variants
            .or_else(|| meter.request_label_cap(VARIANT_LABEL))
            .unwrap_or(DEFAULT_MAX_VARIANTS);
        Ok(AbMonitor {
            meter: meter.clone(),
            state: Mutex::new(State {
                limit: CardinalityLimit::new(max_variants, config.window),
                variants: HashMap::new(),
            }),
            max_variants,
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &AbConfig {
        &self.config
    }

    /// The variant cap in force: [`AbConfig::max_variants`] when set, else the meter's cap
    /// for the [`VARIANT_LABEL`] request label, else 8.
    ///
    /// ```
    /// use tokenmeter_core::Meter;
    /// use tokenmeter_quality::ab::{AbConfig, AbMonitor, VARIANT_LABEL};
    /// let meter = Meter::builder().request_labels([VARIANT_LABEL], 3).build();
    /// let ab = AbMonitor::new(&meter, AbConfig::default())?;
    /// assert_eq!(ab.max_variants(), 3);
    /// # Ok::<(), tokenmeter_quality::ab::AbError>(())
    /// ```
    pub fn max_variants(&self) -> usize {
        self.max_variants
    }

    /// Records an ended request of `variant`: `summary` is what
    /// [`RequestGuard::finish`](tokenmeter_core::RequestGuard::finish) or
    /// [`fail`](tokenmeter_core::RequestGuard::fail) returned (it says how the request ended:
    /// a finish reason, `cancelled`, or an error), and `quality` the request's
    /// [`QualityReport`] when the quality monitor ran (refusal, perplexity). Call it after the
    /// request ended, off the generation loop.
    pub fn record(&self, variant: &str, summary: &RequestSummary, quality: Option<&QualityReport>) {
        let ended = match summary.finish_reason {
            Some(Finish::Cancelled) => Ended::Cancelled,
            Some(_) => Ended::Succeeded,
            None => Ended::Failed,
        };
        let now = self.meter.now();
        let obs = Obs {
            ttft: secs(summary.ttft),
            tpot: secs(summary.tpot),
            perplexity: quality
                .and_then(|q| q.logprobs.perplexity)
                .filter(|p| p.is_finite())
                .unwrap_or(f64::NAN),
            ended,
            goodput: ended == Ended::Succeeded && summary.goodput,
            refusal: quality.map(|q| q.refusal),
        };
        let capacity = self.config.capacity;
        self.with_variant(variant, now, |requests, _, h| {
            requests.push(now, obs, capacity);
            if let Some(refusal) = obs.refusal {
                h.requests.increment(1);
                h.refusals.increment(u64::from(refusal));
            }
            if obs.perplexity.is_finite() {
                h.perplexity.record(obs.perplexity);
            }
        });
    }

    /// Records a golden-set score of `variant` (e.g. one prompt's score from a golden-set
    /// probe, in the probe's own scale). A non-finite score is ignored and counted as misuse
    /// `ab_score_not_finite`.
    pub fn record_golden(&self, variant: &str, score: f64) {
        if !score.is_finite() {
            self.misuse("ab_score_not_finite");
            return;
        }
        let now = self.meter.now();
        let capacity = self.config.capacity;
        self.with_variant(variant, now, |_, golden, h| {
            golden.push(now, score, capacity);
            h.golden.record(score);
        });
    }

    fn misuse(&self, kind: &str) {
        let names = self.meter.metric_names();
        metrics::counter!(
            names.name(catalog::core::MISUSE).to_owned(),
            names.labels(&[("kind", kind)])
        )
        .increment(1);
    }

    /// Runs `f` on the window and series of `variant` (or `other`, past the variant cap, counted
    /// under [`OVERFLOW_LABEL`]), creating them.
    fn with_variant(
        &self,
        variant: &str,
        now: Instant,
        f: impl FnOnce(&mut Ring<Obs>, &mut Ring<f64>, &VariantHandles),
    ) {
        let mut s = lock(&self.state);
        let admission = s.limit.admit(variant, now);
        if let Admission::Own {
            evicted: Some(evicted),
        } = &admission
        {
            s.variants.remove(evicted);
        }
        if admission == Admission::Overflow {
            let names = self.meter.metric_names();
            metrics::counter!(
                names.name(catalog::core::LABEL_OVERFLOW).to_owned(),
                names.labels(&[("label", OVERFLOW_LABEL)])
            )
            .increment(1);
        }
        let key = admission.label(variant);
        let v = s.variants.entry(key.to_owned()).or_insert_with(|| Variant {
            requests: Ring::new(),
            golden: Ring::new(),
            handles: RecorderScoped::new(),
        });
        v.requests.expire(now, self.config.window);
        v.golden.expire(now, self.config.window);
        let Variant {
            requests,
            golden,
            handles,
        } = v;
        let handles = handles.get_or_make(|| VariantHandles::resolve(&self.meter, key));
        f(requests, golden, handles);
    }

    /// The variants holding a window now (`other` among them once the cap overflowed).
    pub fn variants(&self) -> Vec<String> {
        let mut v: Vec<String> = lock(&self.state).variants.keys().cloned().collect();
        v.sort();
        v
    }

    /// A copy of `variant`'s window as of now (empty when the variant has none).
    pub fn window(&self, variant: &str) -> VariantWindow {
        let now = self.meter.now();
        let window = self.config.window;
        let mut w = VariantWindow {
            variant: variant.to_owned(),
            ..VariantWindow::default()
        };
        let mut s = lock(&self.state);
        let Some(v) = s.variants.get_mut(variant) else {
            return w;
        };
        v.requests.expire(now, window);
        v.golden.expire(now, window);
        w.truncated = v.requests.truncated + v.golden.truncated;
        w.golden = v.golden.items.iter().map(|(_, s)| *s).collect();
        let n = v.requests.items.len();
        w.ttft.reserve(n);
        w.tpot.reserve(n);
        for (_, o) in &v.requests.items {
            match o.ended {
                Ended::Succeeded => w.succeeded += 1,
                Ended::Failed => w.failed += 1,
                Ended::Cancelled => w.cancelled += 1,
            }
            w.goodput += u64::from(o.goodput);
            if let Some(r) = o.refusal {
                w.quality_requests += 1;
                w.refusals += u64::from(r);
            }
            if o.ttft.is_finite() {
                w.ttft.push(o.ttft);
            }
            if o.tpot.is_finite() {
                w.tpot.push(o.tpot);
            }
            if o.perplexity.is_finite() {
                w.perplexity.push(o.perplexity);
            }
        }
        w
    }

    /// Compares variant `b` against variant `a` over the window, with the configured tests.
    pub fn readout(&self, a: &str, b: &str) -> Readout {
        let (wa, wb) = (self.window(a), self.window(b));
        let mut r = compare(&wa, &wb, &self.config.tests);
        r.window_seconds = self.config.window.as_secs_f64();
        r
    }
}

#[cfg(test)]
mod tests;
