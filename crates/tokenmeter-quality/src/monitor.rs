//! The per-request quality monitor: streaming text monitors, repetition, logprob statistics,
//! scorers and drift, recorded once when the request finishes.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aho_corasick::automaton::StateID;
use metrics::{Counter, Histogram, Label};
use tokenmeter_core::catalog::{self, MetricDef};
use tokenmeter_core::emit::{lock, recorder_id};
use tokenmeter_core::names::attr;
use tokenmeter_core::{Meter, RequestGuard};

use crate::drift::{DriftMonitor, TokenHistogram};
use crate::labels::{CappedLabel, NAME_IDLE_TIMEOUT};
use crate::logprobs::{LogprobStats, LogprobSummary};
use crate::repetition::Repetition;
use crate::scorer::Scorer;
use crate::text::{
    CharCounts, DEFAULT_REFUSAL_PHRASES, PhraseError, PhraseSet, Utf8Stats, with_curly_apostrophes,
};

/// A set of allowed token ids (a bitset over `0..=max id`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TokenSet {
    bits: Vec<u64>,
}

impl TokenSet {
    /// The set of the given ids.
    pub fn from_ids(ids: impl IntoIterator<Item = u32>) -> Self {
        let mut s = TokenSet::default();
        for id in ids {
            s.insert(id);
        }
        s
    }

    /// The set of every id in the given half-open ranges (e.g. a vocabulary minus reserved
    /// ids: `[0..32000, 32010..32064]`).
    pub fn from_ranges(ranges: impl IntoIterator<Item = std::ops::Range<u32>>) -> Self {
        TokenSet::from_ids(ranges.into_iter().flatten())
    }

    /// Adds an id.
    pub fn insert(&mut self, id: u32) {
        let w = (id / 64) as usize;
        if w >= self.bits.len() {
            self.bits.resize(w + 1, 0);
        }
        self.bits[w] |= 1 << (id % 64);
    }

    /// Whether `id` is in the set.
    #[inline]
    pub fn contains(&self, id: u32) -> bool {
        self.bits
            .get((id / 64) as usize)
            .is_some_and(|w| w & (1 << (id % 64)) != 0)
    }
}

/// What the quality monitor watches; a consuming builder. The defaults: English refusal
/// phrases, seq-rep-4 with a loop flag at 32 consecutive repeated 4-grams, low confidence
/// below p = 0.5, no allowed-token set, no keywords (cap 32), no scorer, no drift.
///
/// ```
/// use std::sync::Arc;
/// use tokenmeter_quality::{LexiconSentiment, QualityConfig, TokenSet};
/// let config = QualityConfig::default()
///     .add_refusal_phrases(["that is not something i can do"])
///     .repetition(3, 24)
///     .allowed_tokens(TokenSet::from_ranges([0..32_000, 32_010..32_064]))
///     .keywords(["paris", "london"])
///     .scorer(Arc::new(LexiconSentiment::default()));
/// # let _ = config;
/// ```
#[derive(Clone)]
pub struct QualityConfig {
    refusal_phrases: Vec<String>,
    repetition_n: usize,
    loop_run: u64,
    low_confidence: f64,
    allowed: Option<Arc<TokenSet>>,
    keywords: Vec<String>,
    keyword_cap: usize,
    scorers: Vec<Arc<dyn Scorer>>,
    keep_text_bytes: usize,
    drift: Option<Arc<DriftMonitor>>,
    name_cap: usize,
    expected_tokens: usize,
}

impl Default for QualityConfig {
    fn default() -> Self {
        QualityConfig {
            refusal_phrases: DEFAULT_REFUSAL_PHRASES
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
            repetition_n: 4,
            loop_run: 32,
            low_confidence: 0.5,
            allowed: None,
            keywords: Vec::new(),
            keyword_cap: 32,
            scorers: Vec::new(),
            keep_text_bytes: 16 * 1024,
            drift: None,
            name_cap: 32,
            expected_tokens: 1024,
        }
    }
}

impl std::fmt::Debug for QualityConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QualityConfig")
            .field("refusal_phrases", &self.refusal_phrases.len())
            .field("repetition_n", &self.repetition_n)
            .field("loop_run", &self.loop_run)
            .field("keywords", &self.keywords.len())
            .field("scorers", &self.scorers.len())
            .finish_non_exhaustive()
    }
}

impl QualityConfig {
    /// Replaces the refusal phrases (ASCII-case-insensitive substrings; an apostrophe also
    /// matches `’`). An empty list turns refusal detection off.
    pub fn refusal_phrases<S: Into<String>>(
        mut self,
        phrases: impl IntoIterator<Item = S>,
    ) -> Self {
        self.refusal_phrases = phrases.into_iter().map(Into::into).collect();
        self
    }
    /// Adds refusal phrases to the current list.
    pub fn add_refusal_phrases<S: Into<String>>(
        mut self,
        phrases: impl IntoIterator<Item = S>,
    ) -> Self {
        self.refusal_phrases
            .extend(phrases.into_iter().map(Into::into));
        self
    }
    /// seq-rep-`n` (1..=32) and the run of consecutive repeated n-grams that flags a loop.
    pub fn repetition(mut self, n: usize, loop_run: u64) -> Self {
        self.repetition_n = n;
        self.loop_run = loop_run;
        self
    }
    /// Chosen tokens with probability below `p` count as low-confidence.
    pub fn low_confidence(mut self, p: f64) -> Self {
        self.low_confidence = p;
        self
    }
    /// Token ids outside this set are counted as disallowed.
    pub fn allowed_tokens(mut self, set: TokenSet) -> Self {
        self.allowed = Some(Arc::new(set));
        self
    }
    /// Keywords (or entity names) to count in outputs, case-insensitive.
    pub fn keywords<S: Into<String>>(mut self, words: impl IntoIterator<Item = S>) -> Self {
        self.keywords = words.into_iter().map(Into::into).collect();
        self
    }
    /// At most `cap` distinct keywords get their own label value; the rest count under
    /// `other` (and once each in the core's `label_overflow{label="keyword"}`).
    pub fn keyword_cap(mut self, cap: usize) -> Self {
        self.keyword_cap = cap;
        self
    }
    /// At most `cap` distinct safety-filter names, and as many scorer names, get their own
    /// label value; the rest count under `other` (and once each in the core's
    /// `label_overflow{label="filter"|"scorer"}`).
    pub fn name_cap(mut self, cap: usize) -> Self {
        self.name_cap = cap;
        self
    }
    /// Adds a scorer run on each finished output (on up to `keep_text_bytes` of it), on the
    /// thread that calls [`RequestQuality::finish`]. A slow scorer (a model) belongs off that
    /// thread: run it on a worker and report with [`QualityMonitor::record_score`].
    pub fn scorer(mut self, scorer: Arc<dyn Scorer>) -> Self {
        self.scorers.push(scorer);
        self
    }
    /// How much of each output is kept for the scorers (default 16 KiB; reserved once per
    /// request, only when a scorer is configured).
    pub fn keep_text_bytes(mut self, bytes: usize) -> Self {
        self.keep_text_bytes = bytes;
        self
    }
    /// Outputs up to this many tokens (default 1024) never allocate while they are fed: the
    /// repetition set is sized for them when the request starts (16 bytes per token). Longer
    /// outputs grow it by doubling, O(log n) times per request.
    pub fn expected_tokens(mut self, tokens: usize) -> Self {
        self.expected_tokens = tokens;
        self
    }
    /// Feeds each finished request to a drift monitor.
    pub fn drift(mut self, drift: Arc<DriftMonitor>) -> Self {
        self.drift = Some(drift);
        self
    }
}

/// The monitor could not be built.
#[derive(Debug, thiserror::Error)]
pub enum QualityError {
    /// The refusal phrases and keywords could not be compiled.
    #[error(transparent)]
    Phrases(#[from] PhraseError),
}

#[derive(Clone, Copy, Debug)]
enum Pattern {
    Refusal,
    Keyword(usize),
}

/// Every handle the monitor records through, registered under one `metrics` recorder.
struct Handles {
    /// The recorder they were registered under ([`recorder_id`]).
    recorder: usize,
    perplexity: Histogram,
    entropy: Histogram,
    low_confidence: Histogram,
    requests: Counter,
    refusals: Counter,
    repetition: Histogram,
    degenerate: Counter,
    output_chars: Histogram,
    empty: Counter,
    replacement: Counter,
    control: Counter,
    disallowed: Counter,
    /// One per configured keyword (the ones past the cap share the `other` handle, and say so).
    keywords: Vec<(Counter, bool)>,
    /// `labels.overflow{label="keyword"}`: one per match counted under `other`.
    keyword_overflow: Counter,
    feedback: Histogram,
    /// One per configured scorer (through the same cap as [`QualityMonitor::record_score`]).
    scorers: Vec<Histogram>,
}

impl Handles {
    /// Registers every handle under the current recorder.
    fn resolve(
        meter: &Meter,
        config: &QualityConfig,
        scores: &Mutex<CappedLabel<Histogram>>,
    ) -> Handles {
        // The keyword list is configuration: no slot is ever idle.
        let mut keyword = CappedLabel::new(config.keyword_cap, Duration::MAX);
        let keywords = config
            .keywords
            .iter()
            .map(|k| {
                let mut overflowed = false;
                let c = keyword
                    .get(
                        k,
                        meter.now(),
                        |v| {
                            counter(
                                meter,
                                catalog::quality::KEYWORDS,
                                Some(("keyword", v.to_owned())),
                            )
                        },
                        || overflowed = true,
                    )
                    .clone();
                (c, overflowed)
            })
            .collect();
        let scorers = {
            let mut scores = lock(scores);
            config
                .scorers
                .iter()
                .map(|s| scorer_histogram(meter, &mut scores, s.name()).clone())
                .collect()
        };
        Handles {
            recorder: recorder_id(),
            perplexity: histogram(meter, catalog::quality::PERPLEXITY, None),
            entropy: histogram(meter, catalog::quality::ENTROPY, None),
            low_confidence: histogram(meter, catalog::quality::LOW_CONFIDENCE, None),
            requests: counter(meter, catalog::quality::REQUESTS, None),
            refusals: counter(meter, catalog::quality::REFUSALS, None),
            repetition: histogram(meter, catalog::quality::REPETITION, None),
            degenerate: counter(meter, catalog::quality::DEGENERATE, None),
            output_chars: histogram(meter, catalog::quality::OUTPUT_CHARS, None),
            empty: counter(meter, catalog::quality::EMPTY, None),
            replacement: counter(meter, catalog::quality::REPLACEMENT_CHARS, None),
            control: counter(meter, catalog::quality::CONTROL_CHARS, None),
            disallowed: counter(meter, catalog::quality::DISALLOWED_TOKENS, None),
            keywords,
            keyword_overflow: overflow_counter(meter, "keyword"),
            feedback: histogram(meter, catalog::quality::FEEDBACK, None),
            scorers,
        }
    }
}

struct Shared {
    totals: [AtomicU64; 4],
    meter: Meter,
    config: QualityConfig,
    phrases: PhraseSet,
    patterns: Vec<Pattern>,
    /// The handles for the recorder they were last resolved under.
    handles: Mutex<Arc<Handles>>,
    safety: Mutex<CappedLabel<Counter>>,
    scores: Mutex<CappedLabel<Histogram>>,
}

impl Shared {
    /// The handles for the current recorder, resolved again when it is not the one they were
    /// registered under (a monitor built before the exporter was installed). Once per request.
    fn handles(&self) -> Arc<Handles> {
        let recorder = recorder_id();
        let mut h = lock(&self.handles);
        if h.recorder != recorder {
            *h = Arc::new(Handles::resolve(&self.meter, &self.config, &self.scores));
        }
        Arc::clone(&h)
    }
}

/// Builds per-request [`RequestQuality`] monitors and records what they saw; shared by all
/// requests (cheap to clone). Every metric handle is resolved here, and again (once) when
/// another `metrics` recorder is current, so the monitor may be built before the exporter is
/// installed.
///
/// ```
/// use tokenmeter_core::{Finish, Meter};
/// use tokenmeter_quality::{QualityConfig, QualityMonitor};
///
/// let meter = Meter::default();
/// let quality = QualityMonitor::new(&meter, QualityConfig::default())?;
/// let mut req = meter.request().prompt_tokens(5).start();
/// let mut q = quality.request();
/// for (id, piece) in [(40u32, "I'm sorry, but"), (41, " I can"), (42, "not help with that.")] {
///     req.token();
///     q.token(id);
///     q.text(piece);
///     q.logprob(-0.1);
/// }
/// let report = q.finish(&req); // before req.finish, so the span is still open
/// req.finish(Finish::Stop);
/// assert!(report.refusal);
/// assert_eq!(report.chars.chars, 39);
/// # Ok::<(), tokenmeter_quality::QualityError>(())
/// ```
#[derive(Clone)]
pub struct QualityMonitor {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for QualityMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QualityMonitor")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

fn counter(meter: &Meter, def: &'static MetricDef, extra: Option<(&str, String)>) -> Counter {
    let names = meter.metric_names();
    let mut labels = names.constant_labels().to_vec();
    if let Some((k, v)) = extra {
        labels.push(Label::new(names.label_key(k), v));
    }
    metrics::counter!(names.name(def).to_owned(), labels)
}

fn histogram(meter: &Meter, def: &'static MetricDef, extra: Option<(&str, String)>) -> Histogram {
    let names = meter.metric_names();
    let mut labels = names.constant_labels().to_vec();
    if let Some((k, v)) = extra {
        labels.push(Label::new(names.label_key(k), v));
    }
    metrics::histogram!(names.name(def).to_owned(), labels)
}

fn overflow_counter(meter: &Meter, label: &str) -> Counter {
    let key = meter.metric_names().label_key(label);
    counter(meter, catalog::core::LABEL_OVERFLOW, Some(("label", key)))
}

fn overflow(meter: &Meter, label: &str) {
    overflow_counter(meter, label).increment(1);
}

/// The `quality_score` histogram for a scorer name, through the scorer-name cap.
fn scorer_histogram<'a>(
    meter: &Meter,
    scores: &'a mut CappedLabel<Histogram>,
    name: &str,
) -> &'a Histogram {
    scores.get(
        name,
        meter.now(),
        |v| {
            histogram(
                meter,
                catalog::quality::SCORE,
                Some(("scorer", v.to_owned())),
            )
        },
        || overflow(meter, "scorer"),
    )
}

impl QualityMonitor {
    /// Compiles the phrase matcher and resolves every handle on `meter`'s names and constant
    /// labels (through the `metrics` recorder current now; again under a later one).
    ///
    /// # Errors
    ///
    /// [`QualityError::Phrases`] when the phrase lists cannot be compiled (size limits).
    pub fn new(meter: &Meter, config: QualityConfig) -> Result<Self, QualityError> {
        let mut patterns = Vec::new();
        let mut texts = Vec::new();
        for (_, p) in with_curly_apostrophes(&config.refusal_phrases) {
            patterns.push(Pattern::Refusal);
            texts.push(p);
        }
        for (i, p) in with_curly_apostrophes(&config.keywords) {
            patterns.push(Pattern::Keyword(i));
            texts.push(p);
        }
        let phrases = PhraseSet::new(&texts)?;

        let scores = Mutex::new(CappedLabel::new(config.name_cap, NAME_IDLE_TIMEOUT));
        let handles = Handles::resolve(meter, &config, &scores);
        Ok(QualityMonitor {
            shared: Arc::new(Shared {
                totals: Default::default(),
                meter: meter.clone(),
                safety: Mutex::new(CappedLabel::new(config.name_cap, NAME_IDLE_TIMEOUT)),
                config,
                phrases,
                patterns,
                handles: Mutex::new(Arc::new(handles)),
                scores,
            }),
        })
    }

    /// A fresh per-request monitor (allocates its buffers and takes the metric handles now,
    /// never per token).
    pub fn request(&self) -> RequestQuality {
        let s = &self.shared;
        let c = &s.config;
        RequestQuality {
            shared: Arc::clone(s),
            handles: s.handles(),
            utf8: Utf8Stats::default(),
            state: s.phrases.start(),
            refusal: false,
            keyword_hits: vec![0; c.keywords.len()],
            repetition: Repetition::with_capacity(c.repetition_n, c.loop_run, c.expected_tokens),
            tokens: 0,
            text_seen: false,
            disallowed: 0,
            logprobs: LogprobStats::new(c.low_confidence),
            token_hist: c
                .drift
                .as_ref()
                .map(|d| TokenHistogram::new(d.token_buckets())),
            text: if c.scorers.is_empty() {
                Vec::new()
            } else {
                Vec::with_capacity(c.keep_text_bytes)
            },
            finished: None,
        }
    }

    /// Counts a safety-filter trigger (input or output moderation, a blocked tool call...)
    /// under the filter's name; past [`QualityConfig::name_cap`] distinct names, the rest
    /// count under `other`.
    pub fn safety_filter_triggered(&self, filter: &str) {
        let s = &self.shared;
        lock(&s.safety)
            .get(
                filter,
                s.meter.now(),
                |v| {
                    counter(
                        &s.meter,
                        catalog::quality::SAFETY_TRIGGERS,
                        Some(("filter", v.to_owned())),
                    )
                },
                || overflow(&s.meter, "filter"),
            )
            .increment(1);
    }

    /// Cumulative outcomes of the requests finished through this monitor.
    ///
    /// ```
    /// # use tokenmeter_quality::{QualityConfig, QualityMonitor};
    /// # let meter = tokenmeter_core::Meter::default();
    /// let quality = QualityMonitor::new(&meter, QualityConfig::default())?;
    /// for text in ["Sure: 4.", "I cannot help with that."] {
    ///     let req = meter.request().start();
    ///     let mut q = quality.request();
    ///     q.text(text);
    ///     q.finish(&req);
    /// }
    /// assert_eq!(quality.totals().refusal_rate(), Some(0.5));
    /// # Ok::<(), tokenmeter_quality::QualityError>(())
    /// ```
    pub fn totals(&self) -> QualityTotals {
        let t = &self.shared.totals;
        QualityTotals {
            requests: t[0].load(Relaxed),
            refusals: t[1].load(Relaxed),
            empty: t[2].load(Relaxed),
            degenerate: t[3].load(Relaxed),
        }
    }

    /// Records user feedback for a request after the fact (a thumbs value in -1..=1 or a
    /// 1-5 rating): the score goes to the feedback histogram, the request id only to a
    /// `tracing` event (target `tokenmeter::feedback`) that joins it with the request log.
    /// Non-finite scores are ignored.
    pub fn record_feedback(&self, request_id: &str, score: f64) {
        if !score.is_finite() {
            return;
        }
        self.shared.handles().feedback.record(score);
        tracing::info!(target: "tokenmeter::feedback", request_id, score, "user feedback");
    }

    /// Records a score computed outside the monitor (e.g. a classifier run off the
    /// generation thread: the place for any scorer too slow for [`RequestQuality::finish`])
    /// under a scorer name; past [`QualityConfig::name_cap`] distinct names (configured
    /// scorers included), the rest count under `other`. Non-finite scores are ignored.
    pub fn record_score(&self, scorer: &str, score: f64) {
        if !score.is_finite() {
            return;
        }
        let s = &self.shared;
        scorer_histogram(&s.meter, &mut lock(&s.scores), scorer).record(score);
    }
}

/// Cumulative per-request outcomes of one [`QualityMonitor`], for in-process use (the same
/// numbers are exported as counters; a dashboard computes rates from those).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct QualityTotals {
    /// Requests finished through the monitor.
    pub requests: u64,
    /// Of which matched a refusal phrase.
    pub refusals: u64,
    /// Of which were empty.
    pub empty: u64,
    /// Of which were flagged as degenerate loops.
    pub degenerate: u64,
}

impl QualityTotals {
    /// Refusals / requests since the monitor was built; `None` before the first request.
    pub fn refusal_rate(&self) -> Option<f64> {
        (self.requests > 0).then(|| self.refusals as f64 / self.requests as f64)
    }
}

/// What one request's monitors saw.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct QualityReport {
    /// Token ids handed in.
    pub tokens: u64,
    /// Character counts of the text handed in.
    pub chars: CharCounts,
    /// Whether text was handed in at all.
    pub text_seen: bool,
    /// No non-whitespace character; when no text was handed in, no output token (from
    /// [`RequestQuality::finish`]: as counted by the request guard, or the ids handed in if
    /// more).
    pub empty: bool,
    /// A refusal phrase matched.
    pub refusal: bool,
    /// seq-rep-n, once there was a full n-gram.
    pub repetition: Option<f64>,
    /// The longest run of consecutive repeated n-grams.
    pub longest_repeat_run: u64,
    /// The run reached the loop threshold.
    pub degenerate: bool,
    /// Token ids outside the allowed set.
    pub disallowed_tokens: u64,
    /// Matches per configured keyword, in configuration order.
    pub keyword_matches: Vec<u32>,
    /// Logprob statistics.
    pub logprobs: LogprobSummary,
    /// Scores per configured scorer, in configuration order.
    pub scores: Vec<Option<f64>>,
}

/// One request's quality monitors; from [`QualityMonitor::request`]. Feed it token ids, text
/// pieces and logprobs as they are generated (each call is O(piece) and allocates nothing up
/// to [`QualityConfig::expected_tokens`] tokens), then call [`finish`](Self::finish) once.
/// Dropping it without `finish` records nothing.
pub struct RequestQuality {
    shared: Arc<Shared>,
    /// Taken at start; checked against the current recorder at finish, never per token.
    handles: Arc<Handles>,
    utf8: Utf8Stats,
    state: StateID,
    refusal: bool,
    keyword_hits: Vec<u32>,
    repetition: Repetition,
    tokens: u64,
    text_seen: bool,
    disallowed: u64,
    logprobs: LogprobStats,
    token_hist: Option<TokenHistogram>,
    text: Vec<u8>,
    /// The report of the first `finish`.
    finished: Option<QualityReport>,
}

impl std::fmt::Debug for RequestQuality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestQuality")
            .field("tokens", &self.tokens)
            .finish_non_exhaustive()
    }
}

impl RequestQuality {
    /// The next output token id: repetition, allowed set, drift frequencies.
    #[inline]
    pub fn token(&mut self, id: u32) {
        self.tokens += 1;
        self.repetition.push(id);
        if let Some(allowed) = &self.shared.config.allowed {
            self.disallowed += u64::from(!allowed.contains(id));
        }
        if let Some(h) = &mut self.token_hist {
            h.add(id);
        }
    }

    /// The next decoded text piece.
    #[inline]
    pub fn text(&mut self, piece: &str) {
        self.bytes(piece.as_bytes());
    }

    /// The next decoded piece as raw bytes: it may hold part of a multi-byte character, or
    /// invalid UTF-8 (counted as U+FFFD, as a lossy decoder would).
    #[inline]
    pub fn bytes(&mut self, piece: &[u8]) {
        self.text_seen = true;
        self.utf8.feed(piece);
        let shared = &*self.shared;
        let (refusal, hits) = (&mut self.refusal, &mut self.keyword_hits);
        self.state = shared
            .phrases
            .feed(self.state, piece, |i| match shared.patterns.get(i) {
                Some(Pattern::Refusal) => *refusal = true,
                Some(Pattern::Keyword(k)) => {
                    if let Some(h) = hits.get_mut(*k) {
                        *h = h.saturating_add(1);
                    }
                }
                None => {}
            });
        if self.text.capacity() > self.text.len() {
            let room = self.text.capacity() - self.text.len();
            self.text.extend_from_slice(&piece[..piece.len().min(room)]);
        }
    }

    /// A token id and its text piece together.
    #[inline]
    pub fn piece(&mut self, id: u32, piece: impl AsRef<[u8]>) {
        self.token(id);
        self.bytes(piece.as_ref());
    }

    /// The chosen token's natural-log probability.
    #[inline]
    pub fn logprob(&mut self, logprob: f32) {
        self.logprobs.observe(logprob);
    }

    /// The chosen token's logprob and the step's top-k logprobs (for the entropy).
    #[inline]
    pub fn logprob_top_k(&mut self, logprob: f32, top_k: &[f32]) {
        self.logprobs.observe_top_k(logprob, top_k);
    }

    /// The chosen token's logprob and the step's full logits row (for the exact entropy).
    #[inline]
    pub fn logprob_logits(&mut self, logprob: f32, logits: &[f32]) {
        self.logprobs.observe_logits(logprob, logits);
    }

    /// What the monitors saw so far (scorers are not run here; without text, `empty` goes by
    /// the token ids handed in).
    pub fn report(&self) -> QualityReport {
        self.report_with(self.tokens)
    }

    /// The report, with `output_tokens` deciding `empty` when no text was handed in.
    fn report_with(&self, output_tokens: u64) -> QualityReport {
        let mut utf8 = self.utf8;
        let chars = utf8.finish();
        let empty = if self.text_seen {
            chars.non_whitespace == 0
        } else {
            output_tokens == 0
        };
        QualityReport {
            tokens: self.tokens,
            chars,
            text_seen: self.text_seen,
            empty,
            refusal: self.refusal,
            repetition: self.repetition.seq_rep(),
            longest_repeat_run: self.repetition.longest_run(),
            degenerate: self.repetition.is_degenerate(),
            disallowed_tokens: self.disallowed,
            keyword_matches: self.keyword_hits.clone(),
            logprobs: self.logprobs.summary(),
            scores: Vec::new(),
        }
    }

    /// Ends the request's monitoring: runs the scorers, records every metric once, records the
    /// span fields on the guard's span, and feeds the drift monitor (output length: the
    /// guard's [`output_tokens`](RequestGuard::output_tokens), or the ids handed in here if
    /// more). Call it before `guard.finish(..)`. A second call records and runs nothing and
    /// returns the first call's report.
    ///
    /// The configured scorers run here, on the caller's thread; a slow one (a model) belongs
    /// on a worker that reports through [`QualityMonitor::record_score`].
    pub fn finish(&mut self, guard: &RequestGuard) -> QualityReport {
        if let Some(report) = &self.finished {
            return report.clone();
        }
        let output_tokens = guard.output_tokens().max(self.tokens);
        let mut report = self.report_with(output_tokens);
        let shared = Arc::clone(&self.shared);
        let c = &shared.config;
        let text = String::from_utf8_lossy(&self.text);
        report.scores = c
            .scorers
            .iter()
            .map(|s| s.score(&text).filter(|v| v.is_finite()))
            .collect();
        if self.handles.recorder != recorder_id() {
            self.handles = shared.handles();
        }
        for (i, yes) in [true, report.refusal, report.empty, report.degenerate]
            .into_iter()
            .enumerate()
        {
            shared.totals[i].fetch_add(u64::from(yes), Relaxed);
        }
        let h = &*self.handles;
        h.requests.increment(1);
        h.refusals.increment(u64::from(report.refusal));
        h.degenerate.increment(u64::from(report.degenerate));
        h.empty.increment(u64::from(report.empty));
        h.replacement.increment(report.chars.replacement);
        h.control.increment(report.chars.control);
        h.disallowed.increment(report.disallowed_tokens);
        for ((counter, overflowed), &n) in h.keywords.iter().zip(&report.keyword_matches) {
            if n > 0 {
                counter.increment(u64::from(n));
                if *overflowed {
                    h.keyword_overflow.increment(u64::from(n));
                }
            }
        }
        let span = guard.span();
        span.record(attr::REFUSAL, report.refusal);
        if let Some(r) = report.repetition {
            h.repetition.record(r);
            span.record(attr::REPETITION, r);
        }
        if report.text_seen {
            h.output_chars.record(report.chars.chars as f64);
            // OpenTelemetry ints are signed: a `u64` would reach OTLP as a string.
            span.record(
                attr::OUTPUT_CHARS,
                i64::try_from(report.chars.chars).unwrap_or(i64::MAX),
            );
        }
        let lp = report.logprobs;
        if let Some(p) = lp.perplexity {
            h.perplexity.record(p);
            span.record(attr::PERPLEXITY, p);
        }
        if let Some(e) = lp.mean_entropy {
            h.entropy.record(e);
            span.record(attr::MEAN_ENTROPY, e);
        }
        if let Some(l) = lp.low_confidence_share {
            h.low_confidence.record(l);
            span.record(attr::LOW_CONFIDENCE_SHARE, l);
        }
        for (hist, score) in h.scorers.iter().zip(&report.scores) {
            if let Some(s) = score {
                hist.record(*s);
            }
        }
        if let Some(d) = &c.drift {
            d.record(
                guard.prompt_tokens(),
                output_tokens,
                self.token_hist.as_ref(),
            );
        }
        self.finished = Some(report.clone());
        report
    }

    /// Clears the monitor for another request, keeping its buffers.
    pub fn reset(&mut self) {
        self.utf8 = Utf8Stats::default();
        self.state = self.shared.phrases.start();
        self.refusal = false;
        self.keyword_hits.iter_mut().for_each(|h| *h = 0);
        self.repetition.reset();
        self.tokens = 0;
        self.text_seen = false;
        self.disallowed = 0;
        self.logprobs.reset();
        if let Some(h) = &mut self.token_hist {
            h.clear();
        }
        self.text.clear();
        self.finished = None;
        if self.handles.recorder != recorder_id() {
            self.handles = self.shared.handles();
        }
    }
}
