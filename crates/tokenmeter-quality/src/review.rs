//! Sampled outputs for human review: a share of finished requests, with their quality proxies
//! and their prompt and output text after a redactor, goes to a bounded sink (rotating JSONL
//! files, or a channel the server drains); feedback recorded later joins them by request id.
//!
//! - **Who is sampled.** Request `r` is sampled when `u(r) < p(r)`, where `u(r)` is a
//!   uniform number in [0, 1) hashed from the request id and the configured seed (so the
//!   decision is deterministic: the same id, seed and proxies always give the same answer, in
//!   any process), and `p(r)` is the uniform share times every weight that applies to the
//!   request (refused, low-confidence, low score), capped at 1. Because `u(r)` does not
//!   depend on the weights, a weighted request is sampled exactly when an unweighted one would
//!   be at the share `p(r)`.
//! - **Nothing without text capture.** [`ReviewSink::offer`] samples nothing when the
//!   request's meter does not capture text
//!   ([`Meter::captures_text`](tokenmeter_core::Meter::captures_text), i.e. the server did not
//!   opt in with [`MeterBuilder::capture_text`](tokenmeter_core::MeterBuilder::capture_text)):
//!   the sink asks the guard's meter on every offer, and returns [`Offer::NoTextCapture`].
//!   Creating a sink on a meter that does not capture text logs a warning (`tracing::warn!`,
//!   once per sink), since every offer through that meter would return it.
//! - **Privacy.** Text reaches the sink only through the [`Redact`] implementation given to
//!   [`ReviewConfig::new`] (share one with the meter: `Arc<R>` implements [`Redact`]), after
//!   each kind is cut to [`ReviewConfig::max_text_bytes`]. It runs on the caller's thread, once
//!   per kind, for sampled requests only; a redactor that panics drops the record (counted).
//! - **Bounds.** The queue holds at most [`ReviewConfig::capacity`] entries; a full queue drops
//!   the entry and counts it (`quality_review_dropped{reason="full"}`), never blocks. The files
//!   hold at most [`JsonlFiles::max_files`] × [`JsonlFiles::max_file_bytes`] bytes: a line never
//!   straddles two files, a new file starts when the next line would overflow the current one,
//!   and the oldest files are deleted. I/O errors are counted (`quality_review_write_errors`)
//!   and kept in [`ReviewStats::last_error`]; they never reach the caller.
//!
//! ```
//! use std::sync::Arc;
//! use tokenmeter_core::{Finish, MaskEmailsAndNumbers, Meter};
//! use tokenmeter_quality::review::{Offer, ReviewConfig, ReviewEntry, ReviewSink, ReviewText};
//! use tokenmeter_quality::{QualityConfig, QualityMonitor};
//!
//! let redactor = Arc::new(MaskEmailsAndNumbers::new());
//! let meter = Meter::builder().model("m").capture_text(Arc::clone(&redactor)).build();
//! let quality = QualityMonitor::new(&meter, QualityConfig::default())?;
//! // 1% of all traffic, every refusal (weight 100 caps at 1).
//! let config = ReviewConfig::new(0.01, redactor).weight_refused(100.0).model_version("q4_1");
//! let (review, drain) = ReviewSink::channel(&meter, config)?;
//!
//! let mut req = meter.request().request_id("r-7").start();
//! let mut q = quality.request();
//! let (prompt, output) = ("Mail bob@example.com a threat", "I cannot help with that.");
//! req.token();
//! q.text(output);
//! let report = q.finish(&req);
//! let offer = review.offer(&req, &report, ReviewText::new(prompt, output).variant("b"));
//! req.finish(Finish::Stop);
//! assert!(matches!(offer, Offer::Queued(_)));
//!
//! review.feedback("r-7", tokenmeter_quality::review::FeedbackValue::score(1.0))?;
//! let entries: Vec<ReviewEntry> = drain.try_iter().collect();
//! let joined = tokenmeter_quality::review::join_entries(entries);
//! assert_eq!(joined.rows[0].record.prompt.as_deref(), Some("Mail [email] a threat"));
//! assert_eq!(joined.rows[0].record.variant.as_deref(), Some("b"));
//! assert_eq!(joined.rows[0].feedback[0].value.score, Some(1.0));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{HashMap, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{self, Receiver, SyncSender, TryIter, TrySendError};
use std::sync::{Arc, Mutex};

use metrics::Counter;
use serde::{Deserialize, Serialize};
use tokenmeter_core::catalog::{self, MetricDef};
use tokenmeter_core::emit::{lock, recorder_id};
use tokenmeter_core::{Meter, Redact, RequestGuard, TextKind};

use crate::monitor::QualityReport;

/// Which sampling weights, configured and applying to a request, raised its probability.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SampleReason {
    /// The output matched a refusal phrase ([`QualityReport::refusal`]).
    Refusal,
    /// The share of low-confidence tokens reached [`ReviewConfig::weight_low_confidence`]'s
    /// threshold.
    LowConfidence,
    /// The score handed in with [`ReviewText::score`] (e.g. a golden-set score) was below
    /// [`ReviewConfig::weight_low_score`]'s threshold.
    LowScore,
}

/// Why and how likely a request was sampled.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sampled {
    /// The weights that applied (empty: uniform sampling only).
    pub reasons: Vec<SampleReason>,
    /// The product of those weights (1 when none applied).
    pub weight: f64,
    /// The sampling probability: uniform share × weight, capped at 1.
    pub probability: f64,
}

/// What [`ReviewSink::offer`] did with a request.
#[derive(Clone, Debug, PartialEq)]
pub enum Offer {
    /// The meter does not capture text: nothing is sampled.
    NoTextCapture,
    /// The request was not drawn.
    NotSampled,
    /// Sampled and queued to the sink.
    Queued(Sampled),
    /// Sampled, but dropped and counted: the queue was full, or the redactor panicked.
    Dropped(Sampled),
}

/// How requests are sampled for review and how records are bounded; a consuming builder.
///
/// Defaults besides the share and the redactor: no weights, seed 0, no model version, a queue
/// of 1024 entries, 16 KiB of text per kind.
///
/// ```
/// use tokenmeter_core::Verbatim;
/// use tokenmeter_quality::review::ReviewConfig;
/// let config = ReviewConfig::new(0.02, Verbatim)   // 2% of traffic ...
///     .weight_refused(10.0)                        // ... 20% of refusals
///     .weight_low_confidence(0.3, 5.0)             // 10% of answers with >= 30% unsure tokens
///     .weight_low_score(0.5, 25.0)                 // 50% of answers scored below 0.5
///     .seed(7)
///     .capacity(256);
/// # let _ = config;
/// ```
#[derive(Clone)]
pub struct ReviewConfig {
    rate: f64,
    refused: f64,
    low_confidence: Option<(f64, f64)>,
    low_score: Option<(f64, f64)>,
    seed: u64,
    model_version: Option<String>,
    capacity: usize,
    max_text_bytes: usize,
    redactor: Arc<dyn Redact>,
}

impl std::fmt::Debug for ReviewConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReviewConfig")
            .field("rate", &self.rate)
            .field("refused", &self.refused)
            .field("low_confidence", &self.low_confidence)
            .field("low_score", &self.low_score)
            .field("seed", &self.seed)
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl ReviewConfig {
    /// Samples a share `rate` (in [0, 1]) of all requests, uniformly, and records their text
    /// through `redactor` (pass the meter's own, shared through an `Arc`, or
    /// [`Verbatim`](tokenmeter_core::Verbatim) to record text as is).
    pub fn new(rate: f64, redactor: impl Redact + 'static) -> Self {
        ReviewConfig {
            rate,
            refused: 1.0,
            low_confidence: None,
            low_score: None,
            seed: 0,
            model_version: None,
            capacity: 1024,
            max_text_bytes: 16 * 1024,
            redactor: Arc::new(redactor),
        }
    }

    /// Multiplies the probability of refused requests by `weight` (finite, >= 0).
    pub fn weight_refused(mut self, weight: f64) -> Self {
        self.refused = weight;
        self
    }

    /// Multiplies the probability of requests whose low-confidence share
    /// ([`LogprobSummary::low_confidence_share`](crate::LogprobSummary::low_confidence_share))
    /// is at least `min_share` by `weight`.
    pub fn weight_low_confidence(mut self, min_share: f64, weight: f64) -> Self {
        self.low_confidence = Some((min_share, weight));
        self
    }

    /// Multiplies the probability of requests whose [`ReviewText::score`] is below `below` by
    /// `weight` (a golden-set score, or any scorer's output where lower is worse).
    pub fn weight_low_score(mut self, below: f64, weight: f64) -> Self {
        self.low_score = Some((below, weight));
        self
    }

    /// The seed mixed into the request-id hash: another seed draws another sample.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The model version written in every record; by default the meter's
    /// [`model_version`](tokenmeter_core::Meter::model_version) (absent when that is empty).
    pub fn model_version(mut self, version: impl Into<String>) -> Self {
        self.model_version = Some(version.into());
        self
    }

    /// Entries the queue holds (at least 1; default 1024); past it, entries are dropped.
    pub fn capacity(mut self, entries: usize) -> Self {
        self.capacity = entries;
        self
    }

    /// Bytes of prompt, of output and of a feedback comment kept per record (default 16 KiB),
    /// cut at a character boundary before the redactor runs.
    pub fn max_text_bytes(mut self, bytes: usize) -> Self {
        self.max_text_bytes = bytes;
        self
    }

    fn validate(&self) -> Result<(), ReviewError> {
        let bad = |what: &str, v: f64| {
            ReviewError::Config(format!("{what} {v} is not a finite number >= 0"))
        };
        if !(0.0..=1.0).contains(&self.rate) {
            return Err(ReviewError::Config(format!(
                "rate {} is not in [0, 1]",
                self.rate
            )));
        }
        for (what, w) in [
            ("refused weight", Some(self.refused)),
            ("low-confidence weight", self.low_confidence.map(|x| x.1)),
            ("low-score weight", self.low_score.map(|x| x.1)),
        ] {
            if let Some(w) = w.filter(|w| !(w.is_finite() && *w >= 0.0)) {
                return Err(bad(what, w));
            }
        }
        for (what, t) in [
            ("low-confidence threshold", self.low_confidence.map(|x| x.0)),
            ("low-score threshold", self.low_score.map(|x| x.0)),
        ] {
            if let Some(t) = t.filter(|t| !t.is_finite()) {
                return Err(ReviewError::Config(format!("{what} {t} is not finite")));
            }
        }
        if self.capacity == 0 {
            return Err(ReviewError::Config("capacity must be at least 1".into()));
        }
        Ok(())
    }

    /// The sampling decision for a request (see the [module](self) docs): `Some` when drawn.
    /// Deterministic and free of I/O; [`ReviewSink::offer`] calls it.
    ///
    /// ```
    /// use tokenmeter_core::Verbatim;
    /// use tokenmeter_quality::QualityReport;
    /// use tokenmeter_quality::review::{ReviewConfig, SampleReason};
    /// let refused = QualityReport { refusal: true, ..QualityReport::default() };
    /// let all_refusals = ReviewConfig::new(0.1, Verbatim).weight_refused(10.0);
    /// let s = all_refusals.decide("any-id", &refused, None).expect("p = 1");
    /// assert_eq!((s.reasons, s.weight, s.probability), (vec![SampleReason::Refusal], 10.0, 1.0));
    /// assert!(ReviewConfig::new(0.0, Verbatim).decide("any-id", &refused, None).is_none());
    /// ```
    pub fn decide(
        &self,
        request_id: &str,
        quality: &QualityReport,
        score: Option<f64>,
    ) -> Option<Sampled> {
        let mut reasons = Vec::new();
        let mut weight = 1.0;
        if quality.refusal && self.refused != 1.0 {
            reasons.push(SampleReason::Refusal);
            weight *= self.refused;
        }
        if let (Some((min, w)), Some(share)) =
            (self.low_confidence, quality.logprobs.low_confidence_share)
            && share >= min
        {
            reasons.push(SampleReason::LowConfidence);
            weight *= w;
        }
        if let (Some((below, w)), Some(s)) = (self.low_score, score)
            && s < below
        {
            reasons.push(SampleReason::LowScore);
            weight *= w;
        }
        let probability = (self.rate * weight).clamp(0.0, 1.0);
        (unit_hash(self.seed, request_id) < probability).then_some(Sampled {
            reasons,
            weight,
            probability,
        })
    }
}

/// A uniform number in [0, 1) from a seed and a request id: FNV-1a over the bytes, then the
/// SplitMix64 finalizer (FNV alone spreads short, similar ids such as `r-1`, `r-2` poorly).
/// Written here rather than taken from `std`'s `DefaultHasher`, whose output may change between
/// Rust releases: a decision must be reproducible offline from the id and the seed.
fn unit_hash(seed: u64, id: &str) -> f64 {
    let mut h = 0xcbf2_9ce4_8422_2325_u64 ^ seed;
    for &b in id.as_bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    // The top 53 bits: exactly representable, uniform on a 2^-53 grid.
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// The text and facts of a finished request that the guard does not hold: its prompt and
/// output (the same text handed to the guard), its A/B variant, and an optional score.
#[derive(Clone, Copy, Debug, Default)]
pub struct ReviewText<'a> {
    prompt: &'a str,
    output: &'a str,
    variant: Option<&'a str>,
    score: Option<f64>,
}

impl<'a> ReviewText<'a> {
    /// The request's prompt and output text (read only when the request is sampled).
    pub fn new(prompt: &'a str, output: &'a str) -> Self {
        ReviewText {
            prompt,
            output,
            variant: None,
            score: None,
        }
    }

    /// The variant the request was served by (the value of its `variant` label).
    pub fn variant(mut self, variant: &'a str) -> Self {
        self.variant = Some(variant);
        self
    }

    /// A score of the output where lower is worse (a golden-set score, a classifier's
    /// probability of a good answer); weighs sampling through
    /// [`ReviewConfig::weight_low_score`] and is written in the record. Non-finite scores are
    /// ignored.
    pub fn score(mut self, score: f64) -> Self {
        self.score = score.is_finite().then_some(score);
        self
    }
}

/// The quality proxies of a sampled request, as written in its record (from its
/// [`QualityReport`]).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ReviewProxies {
    /// A refusal phrase matched.
    pub refusal: bool,
    /// The output was empty.
    pub empty: bool,
    /// A degenerate loop was flagged.
    pub degenerate: bool,
    /// seq-rep-n.
    pub repetition: Option<f64>,
    /// Per-request perplexity.
    pub perplexity: Option<f64>,
    /// Mean entropy (nats).
    pub mean_entropy: Option<f64>,
    /// Share of low-confidence tokens.
    pub low_confidence_share: Option<f64>,
    /// Output characters.
    pub output_chars: u64,
    /// U+FFFD characters in the output.
    pub replacement_chars: u64,
    /// Configured scorers' scores, in configuration order.
    pub scores: Vec<Option<f64>>,
    /// The score handed in with [`ReviewText::score`].
    pub score: Option<f64>,
}

impl ReviewProxies {
    fn new(q: &QualityReport, score: Option<f64>) -> Self {
        ReviewProxies {
            refusal: q.refusal,
            empty: q.empty,
            degenerate: q.degenerate,
            repetition: q.repetition,
            perplexity: q.logprobs.perplexity,
            mean_entropy: q.logprobs.mean_entropy,
            low_confidence_share: q.logprobs.low_confidence_share,
            output_chars: q.chars.chars,
            replacement_chars: q.chars.replacement,
            scores: q.scores.clone(),
            score,
        }
    }
}

/// One sampled request, as a JSON line (`"type":"review"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReviewRecord {
    /// The request id ([`RequestGuard::request_id`]).
    pub request_id: String,
    /// When the record was made: milliseconds since the Unix epoch (the system clock).
    pub time_ms: u64,
    /// The served model ([`Meter::model`]).
    pub model: String,
    /// [`ReviewConfig::model_version`].
    pub model_version: Option<String>,
    /// [`ReviewText::variant`].
    pub variant: Option<String>,
    /// The quality proxies.
    pub quality: ReviewProxies,
    /// The prompt after the redactor (`None` when empty).
    pub prompt: Option<String>,
    /// The output after the redactor (`None` when empty).
    pub output: Option<String>,
    /// The prompt was cut to [`ReviewConfig::max_text_bytes`] before the redactor.
    pub prompt_truncated: bool,
    /// The output was cut likewise.
    pub output_truncated: bool,
    /// Why and how likely it was sampled.
    pub sampled: Sampled,
}

/// A reviewer's or user's verdict on a request; [`ReviewSink::feedback`].
///
/// ```
/// use tokenmeter_quality::review::FeedbackValue;
/// let v = FeedbackValue::score(-1.0).label("hallucination").comment("wrong year");
/// assert_eq!(v.score, Some(-1.0));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FeedbackValue {
    /// A number (thumbs -1/0/1, a 1-5 rating, a grade); finite.
    pub score: Option<f64>,
    /// A category (`correct`, `hallucination`, ...).
    pub label: Option<String>,
    /// Free text; goes through the redactor (as [`TextKind::Prompt`]: it is a person's text).
    pub comment: Option<String>,
}

impl FeedbackValue {
    /// A numeric verdict.
    pub fn score(score: f64) -> Self {
        FeedbackValue {
            score: Some(score),
            ..FeedbackValue::default()
        }
    }

    /// Adds a category.
    pub fn label(mut self, label: impl Into<String>) -> Self {
        self.label = Some(label.into());
        self
    }

    /// Adds free text.
    pub fn comment(mut self, comment: impl Into<String>) -> Self {
        self.comment = Some(comment.into());
        self
    }
}

/// Feedback on one request, as a JSON line (`"type":"feedback"`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Feedback {
    /// The request it is about.
    pub request_id: String,
    /// When it was recorded: milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The verdict.
    #[serde(flatten)]
    pub value: FeedbackValue,
}

/// One line of the review stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ReviewEntry {
    /// A sampled request (boxed: a record is several times the size of feedback).
    Review(Box<ReviewRecord>),
    /// Feedback on a request.
    Feedback(Feedback),
}

/// The sink could not be built, or an entry was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReviewError {
    /// A configuration value is out of range.
    #[error("review sink configuration: {0}")]
    Config(String),
    /// The directory could not be created or read, or the writer thread not started.
    #[error("review sink: {what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The queue was full: the entry was dropped and counted.
    #[error("review sink queue full: entry dropped")]
    Full,
    /// Feedback with a non-finite score.
    #[error("feedback score {0} is not finite")]
    NonFiniteScore(f64),
    /// The file writer is gone (it stopped after a panic); entries are dropped.
    #[error("review sink writer thread is gone")]
    WriterGone,
}

/// Where [`ReviewSink::jsonl`] writes: `review-NNNNNN.jsonl` files in a directory, numbered
/// in order. Defaults: 8 MiB per file, 8 files.
///
/// ```
/// use tokenmeter_quality::review::JsonlFiles;
/// let files = JsonlFiles::new("/var/lib/server/review").max_file_bytes(1 << 20).max_files(4);
/// assert_eq!(files.disk_bound(), 4 << 20);
/// ```
#[derive(Clone, Debug)]
pub struct JsonlFiles {
    dir: PathBuf,
    max_file_bytes: u64,
    max_files: usize,
}

impl JsonlFiles {
    /// Files in `dir` (created if missing).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        JsonlFiles {
            dir: dir.into(),
            max_file_bytes: 8 << 20,
            max_files: 8,
        }
    }

    /// Bytes per file (at least 1); a line longer than this is dropped and counted
    /// (`reason="oversize"`).
    pub fn max_file_bytes(mut self, bytes: u64) -> Self {
        self.max_file_bytes = bytes;
        self
    }

    /// Files kept, the one being written included (at least 1); the oldest are deleted.
    pub fn max_files(mut self, files: usize) -> Self {
        self.max_files = files;
        self
    }

    /// The most bytes the files take on disk: `max_files × max_file_bytes`.
    pub fn disk_bound(&self) -> u64 {
        self.max_file_bytes.saturating_mul(self.max_files as u64)
    }
}

/// Counts of what a sink did, since it was built (the same numbers as its metrics).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReviewStats {
    /// Requests sampled and queued.
    pub sampled: u64,
    /// Feedback entries queued.
    pub feedback: u64,
    /// Entries dropped because the queue was full.
    pub dropped_full: u64,
    /// Lines dropped because one was longer than a file.
    pub dropped_oversize: u64,
    /// Records dropped because the redactor panicked.
    pub dropped_redactor_panic: u64,
    /// Entries written to files.
    pub written: u64,
    /// Bytes written to files.
    pub bytes: u64,
    /// Failed file operations.
    pub write_errors: u64,
    /// The last I/O error, if any.
    pub last_error: Option<String>,
}

/// The sink's metric handles, registered under one `metrics` recorder.
struct Handles {
    recorder: usize,
    sampled: Counter,
    full: Counter,
    oversize: Counter,
    redactor_panic: Counter,
    write_errors: Counter,
    bytes: Counter,
    feedback: Counter,
}

impl Handles {
    fn resolve(meter: &Meter) -> Handles {
        let names = meter.metric_names();
        let c = |def: &'static MetricDef, extra: &[(&str, &str)]| {
            metrics::counter!(names.name(def).to_owned(), names.labels(extra))
        };
        let dropped = |reason| c(catalog::quality::REVIEW_DROPPED, &[("reason", reason)]);
        Handles {
            recorder: recorder_id(),
            sampled: c(catalog::quality::REVIEW_SAMPLED, &[]),
            full: dropped("full"),
            oversize: dropped("oversize"),
            redactor_panic: dropped("redactor_panic"),
            write_errors: c(catalog::quality::REVIEW_WRITE_ERRORS, &[]),
            bytes: c(catalog::quality::REVIEW_BYTES, &[]),
            feedback: c(catalog::quality::REVIEW_FEEDBACK, &[]),
        }
    }
}

#[derive(Default)]
struct Counts {
    sampled: AtomicU64,
    feedback: AtomicU64,
    full: AtomicU64,
    oversize: AtomicU64,
    redactor_panic: AtomicU64,
    written: AtomicU64,
    bytes: AtomicU64,
    write_errors: AtomicU64,
}

struct Shared {
    meter: Meter,
    config: ReviewConfig,
    counts: Counts,
    handles: Mutex<Arc<Handles>>,
    last_error: Mutex<Option<String>>,
    warned: AtomicBool,
}

impl Shared {
    /// The handles, registered again when another recorder is current on the calling thread
    /// (a sink built before the exporter was installed). Callers' threads only: the writer
    /// thread takes whatever the callers last resolved.
    fn handles(&self) -> Arc<Handles> {
        let mut h = lock(&self.handles);
        if h.recorder != recorder_id() {
            *h = Arc::new(Handles::resolve(&self.meter));
        }
        Arc::clone(&h)
    }

    fn writer_handles(&self) -> Arc<Handles> {
        Arc::clone(&lock(&self.handles))
    }

    fn io_error(&self, what: &str, path: &Path, e: &io::Error) {
        self.counts.write_errors.fetch_add(1, Relaxed);
        self.writer_handles().write_errors.increment(1);
        let msg = format!("{what} {}: {e}", path.display());
        if !self.warned.swap(true, Relaxed) {
            tracing::warn!(error = %msg, "tokenmeter: review sink I/O error; the entry was lost \
                 (counted in quality_review_write_errors; warned once per sink)");
        }
        *lock(&self.last_error) = Some(msg);
    }
}

/// What travels to the file writer.
enum Msg {
    Entry(ReviewEntry),
    /// Everything sent before is written; answer on the channel.
    Flush(SyncSender<()>),
}

enum Tx {
    Files(SyncSender<Msg>),
    Channel(SyncSender<ReviewEntry>),
}

/// The review sink: samples finished requests and queues their records, and queues feedback,
/// without ever blocking (a full queue drops and counts). Cheap to clone; every clone feeds the
/// same queue. See the [module](self) docs.
#[derive(Clone)]
pub struct ReviewSink {
    shared: Arc<Shared>,
    tx: Arc<Tx>,
}

impl std::fmt::Debug for ReviewSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReviewSink")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// The server's end of a [`ReviewSink::channel`]: entries in the order they were queued.
#[derive(Debug)]
pub struct ReviewReceiver {
    rx: Receiver<ReviewEntry>,
}

impl ReviewReceiver {
    /// The entries queued now, without waiting.
    pub fn try_iter(&self) -> TryIter<'_, ReviewEntry> {
        self.rx.try_iter()
    }

    /// The next entry, waiting for one; `None` once every sink clone is dropped and the queue
    /// is empty.
    pub fn recv(&self) -> Option<ReviewEntry> {
        self.rx.recv().ok()
    }
}

impl ReviewSink {
    fn build(meter: &Meter, config: ReviewConfig, tx: Tx) -> ReviewSink {
        if !meter.captures_text() {
            tracing::warn!(
                model = meter.model(),
                "tokenmeter: review sink created on a meter that does not capture text \
                 (MeterBuilder::capture_text); its requests' offers will sample nothing \
                 (Offer::NoTextCapture)"
            );
        }
        let shared = Shared {
            meter: meter.clone(),
            config,
            counts: Counts::default(),
            handles: Mutex::new(Arc::new(Handles::resolve(meter))),
            last_error: Mutex::new(None),
            warned: AtomicBool::new(false),
        };
        ReviewSink {
            shared: Arc::new(shared),
            tx: Arc::new(tx),
        }
    }

    /// A sink whose entries the server drains itself from the returned receiver (at most
    /// [`ReviewConfig::capacity`] waiting). Warns once (`tracing::warn!`) when `meter` does
    /// not capture text: offers of its requests return [`Offer::NoTextCapture`].
    ///
    /// # Errors
    ///
    /// [`ReviewError::Config`] for a share outside [0, 1], a negative or non-finite weight, a
    /// non-finite threshold, or a capacity of 0.
    pub fn channel(
        meter: &Meter,
        config: ReviewConfig,
    ) -> Result<(ReviewSink, ReviewReceiver), ReviewError> {
        config.validate()?;
        let (tx, rx) = mpsc::sync_channel(config.capacity);
        Ok((
            ReviewSink::build(meter, config, Tx::Channel(tx)),
            ReviewReceiver { rx },
        ))
    }

    /// A sink that writes JSON lines to rotating files on a writer thread of its own (named
    /// `tokenmeter-review`), fed through a queue of [`ReviewConfig::capacity`] entries. The
    /// thread ends when every clone of the sink is dropped and the queue is written. Existing
    /// `review-*.jsonl` files in the directory are kept (and count against
    /// [`JsonlFiles::max_files`]); writing continues in a new file. Warns once, as
    /// [`channel`](Self::channel) does, when `meter` does not capture text.
    ///
    /// # Errors
    ///
    /// [`ReviewError::Config`] as for [`channel`](Self::channel), and for a file size or count
    /// of 0; [`ReviewError::Io`] when the directory cannot be created or listed, or the thread
    /// not started. Later I/O errors are counted, never returned.
    pub fn jsonl(
        meter: &Meter,
        config: ReviewConfig,
        files: JsonlFiles,
    ) -> Result<ReviewSink, ReviewError> {
        config.validate()?;
        if files.max_file_bytes == 0 || files.max_files == 0 {
            return Err(ReviewError::Config(
                "max_file_bytes and max_files must be at least 1".into(),
            ));
        }
        let io = |what, path: &Path| {
            let path = path.to_owned();
            move |source| ReviewError::Io { what, path, source }
        };
        fs::create_dir_all(&files.dir).map_err(io("creating", &files.dir))?;
        let existing = list_files(&files.dir).map_err(io("listing", &files.dir))?;
        let (tx, rx) = mpsc::sync_channel(config.capacity);
        let sink = ReviewSink::build(meter, config, Tx::Files(tx));
        let shared = Arc::clone(&sink.shared);
        let dir = files.dir.clone();
        let mut writer = Rotator {
            files,
            existing: existing.into(),
            current: None,
            shared,
        };
        std::thread::Builder::new()
            .name("tokenmeter-review".into())
            .spawn(move || writer.run(&rx))
            .map_err(io("starting the writer for", &dir))?;
        Ok(sink)
    }

    /// Offers a finished request: call it with the report of
    /// [`RequestQuality::finish`](crate::RequestQuality::finish), before or after the guard's
    /// own `finish`. When the guard's meter captures text and the request is drawn
    /// ([`ReviewConfig::decide`]), redacts its text and queues its record. Never blocks and
    /// never panics (a panicking redactor is caught); the text is read only when the request
    /// is drawn, so an unsampled request costs one hash of its id.
    pub fn offer(
        &self,
        req: &RequestGuard,
        quality: &QualityReport,
        text: ReviewText<'_>,
    ) -> Offer {
        let s = &*self.shared;
        if !req.meter().captures_text() {
            return Offer::NoTextCapture;
        }
        let c = &s.config;
        let Some(sampled) = c.decide(req.request_id(), quality, text.score) else {
            return Offer::NotSampled;
        };
        let h = s.handles();
        let redacted = |kind, t: &str| {
            let (cut, truncated) = cut(t, c.max_text_bytes);
            let r = catch_unwind(AssertUnwindSafe(|| redact(&*c.redactor, kind, cut)));
            r.map(|r| (r, truncated))
        };
        let (Ok((prompt, prompt_truncated)), Ok((output, output_truncated))) = (
            redacted(TextKind::Prompt, text.prompt),
            redacted(TextKind::Output, text.output),
        ) else {
            s.counts.redactor_panic.fetch_add(1, Relaxed);
            h.redactor_panic.increment(1);
            return Offer::Dropped(sampled);
        };
        let record = ReviewRecord {
            request_id: req.request_id().to_owned(),
            time_ms: unix_ms(&s.meter),
            model: req.meter().model().to_owned(),
            model_version: c.model_version.clone().or_else(|| {
                let v = req.meter().model_version();
                (!v.is_empty()).then(|| v.to_owned())
            }),
            variant: text.variant.map(str::to_owned),
            quality: ReviewProxies::new(quality, text.score),
            prompt,
            output,
            prompt_truncated,
            output_truncated,
            sampled: sampled.clone(),
        };
        match self.send(ReviewEntry::Review(Box::new(record)), &h) {
            Ok(()) => {
                s.counts.sampled.fetch_add(1, Relaxed);
                h.sampled.increment(1);
                Offer::Queued(sampled)
            }
            Err(_) => Offer::Dropped(sampled),
        }
    }

    /// Queues feedback on a request, to be joined with its record by request id ([`join`]).
    /// The comment goes through the redactor. Never blocks.
    ///
    /// # Errors
    ///
    /// [`ReviewError::NonFiniteScore`] (nothing queued); [`ReviewError::Full`] when the queue
    /// was full (dropped and counted); [`ReviewError::WriterGone`] when the writer stopped.
    pub fn feedback(&self, request_id: &str, mut value: FeedbackValue) -> Result<(), ReviewError> {
        if let Some(v) = value.score.filter(|v| !v.is_finite()) {
            return Err(ReviewError::NonFiniteScore(v));
        }
        let s = &*self.shared;
        let h = s.handles();
        if let Some(comment) = value.comment.take() {
            let (text, _) = cut(&comment, s.config.max_text_bytes);
            let c = &s.config;
            match catch_unwind(AssertUnwindSafe(|| {
                redact(&*c.redactor, TextKind::Prompt, text)
            })) {
                Ok(r) => value.comment = r,
                Err(_) => {
                    s.counts.redactor_panic.fetch_add(1, Relaxed);
                    h.redactor_panic.increment(1);
                }
            }
        }
        let entry = ReviewEntry::Feedback(Feedback {
            request_id: request_id.to_owned(),
            time_ms: unix_ms(&s.meter),
            value,
        });
        self.send(entry, &h)?;
        s.counts.feedback.fetch_add(1, Relaxed);
        h.feedback.increment(1);
        Ok(())
    }

    fn send(&self, entry: ReviewEntry, h: &Handles) -> Result<(), ReviewError> {
        let full = match &*self.tx {
            Tx::Files(tx) => match tx.try_send(Msg::Entry(entry)) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(_)) => true,
                Err(TrySendError::Disconnected(_)) => false,
            },
            Tx::Channel(tx) => match tx.try_send(entry) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(_)) => true,
                Err(TrySendError::Disconnected(_)) => false,
            },
        };
        // A receiver the server dropped, or a writer gone, drops like a full queue.
        self.shared.counts.full.fetch_add(1, Relaxed);
        h.full.increment(1);
        Err(if full {
            ReviewError::Full
        } else {
            ReviewError::WriterGone
        })
    }

    /// Waits until every entry queued before the call is written to its file (a no-op for a
    /// channel sink). Blocks: for shutdown and tests, never the generation loop.
    ///
    /// # Errors
    ///
    /// [`ReviewError::WriterGone`] when the writer thread stopped.
    pub fn flush(&self) -> Result<(), ReviewError> {
        let Tx::Files(tx) = &*self.tx else {
            return Ok(());
        };
        let (ack, done) = mpsc::sync_channel(1);
        tx.send(Msg::Flush(ack))
            .map_err(|_| ReviewError::WriterGone)?;
        done.recv().map_err(|_| ReviewError::WriterGone)
    }

    /// What the sink did so far.
    pub fn stats(&self) -> ReviewStats {
        let c = &self.shared.counts;
        ReviewStats {
            sampled: c.sampled.load(Relaxed),
            feedback: c.feedback.load(Relaxed),
            dropped_full: c.full.load(Relaxed),
            dropped_oversize: c.oversize.load(Relaxed),
            dropped_redactor_panic: c.redactor_panic.load(Relaxed),
            written: c.written.load(Relaxed),
            bytes: c.bytes.load(Relaxed),
            write_errors: c.write_errors.load(Relaxed),
            last_error: lock(&self.shared.last_error).clone(),
        }
    }
}

/// The redacted text, owned; `None` for empty text.
fn redact(r: &dyn Redact, kind: TextKind, text: &str) -> Option<String> {
    if text.is_empty() {
        return None;
    }
    Some(r.redact(kind, text).into_owned())
}

/// At most `max` bytes of `s`, cut at a character boundary; and whether it cut.
fn cut(s: &str, max: usize) -> (&str, bool) {
    if s.len() <= max {
        return (s, false);
    }
    let end = (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    (s.get(..end).unwrap_or_default(), true)
}

/// Now, as Unix milliseconds on the meter's clock.
fn unix_ms(meter: &Meter) -> u64 {
    // A float to integer `as` saturates (NaN gives 0).
    (meter.unix_seconds(meter.now()) * 1e3) as u64
}

const FILE_PREFIX: &str = "review-";
const FILE_SUFFIX: &str = ".jsonl";

/// The sequence number of a review file name.
fn file_seq(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(FILE_PREFIX)?.strip_suffix(FILE_SUFFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The review files in `dir`, oldest first.
fn list_files(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(seq) = entry.file_name().to_str().and_then(file_seq) {
            out.push((seq, entry.path()));
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The writer thread's state: size-bounded files, the oldest deleted. Our own rather than a
/// log-rotation crate's: the bound must count whole JSON lines (a line never split across
/// files, which byte-limited rotators do) and an I/O error must lose one entry, counted,
/// without stopping the writer.
struct Rotator {
    files: JsonlFiles,
    /// The files on disk, oldest first, the current one last.
    existing: VecDeque<(u64, PathBuf)>,
    /// The file being written and its size.
    current: Option<(File, u64)>,
    shared: Arc<Shared>,
}

impl Rotator {
    fn run(&mut self, rx: &Receiver<Msg>) {
        while let Ok(msg) = rx.recv() {
            match msg {
                Msg::Entry(entry) => self.write(&entry),
                Msg::Flush(ack) => {
                    if let Some((f, _)) = &mut self.current
                        && let Err(e) = f.flush()
                    {
                        let path = self.current_path();
                        self.shared.io_error("flushing", &path, &e);
                    }
                    let _ = ack.try_send(());
                }
            }
        }
    }

    fn current_path(&self) -> PathBuf {
        self.existing
            .back()
            .map_or_else(|| self.files.dir.clone(), |(_, p)| p.clone())
    }

    fn write(&mut self, entry: &ReviewEntry) {
        let shared = Arc::clone(&self.shared);
        let mut line = match serde_json::to_vec(entry) {
            Ok(l) => l,
            // Our own types always serialize; a failure would be a bug, counted as lost.
            Err(e) => {
                let e = io::Error::other(e);
                shared.io_error("serializing for", &self.files.dir, &e);
                return;
            }
        };
        line.push(b'\n');
        let len = line.len() as u64;
        if len > self.files.max_file_bytes {
            shared.counts.oversize.fetch_add(1, Relaxed);
            shared.writer_handles().oversize.increment(1);
            return;
        }
        if self
            .current
            .as_ref()
            .is_some_and(|(_, size)| size + len > self.files.max_file_bytes)
        {
            self.current = None;
        }
        if self.current.is_none() {
            match self.open_next() {
                Ok(f) => self.current = Some((f, 0)),
                Err((path, e)) => {
                    shared.io_error("creating", &path, &e);
                    return;
                }
            }
        }
        let Some((file, size)) = &mut self.current else {
            return;
        };
        match file.write_all(&line) {
            Ok(()) => {
                *size += len;
                shared.counts.written.fetch_add(1, Relaxed);
                shared.counts.bytes.fetch_add(len, Relaxed);
                shared.writer_handles().bytes.increment(len);
            }
            Err(e) => {
                // A partial line may be on disk: start a new file for the next entry.
                self.current = None;
                let path = self.current_path();
                shared.io_error("writing", &path, &e);
            }
        }
    }

    /// Creates the next file and deletes the oldest past the count.
    fn open_next(&mut self) -> Result<File, (PathBuf, io::Error)> {
        let seq = self.existing.back().map_or(1, |(s, _)| s + 1);
        let path = self
            .files
            .dir
            .join(format!("{FILE_PREFIX}{seq:06}{FILE_SUFFIX}"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| (path.clone(), e))?;
        self.existing.push_back((seq, path));
        while self.existing.len() > self.files.max_files {
            let Some((_, old)) = self.existing.pop_front() else {
                break;
            };
            if let Err(e) = fs::remove_file(&old)
                && e.kind() != io::ErrorKind::NotFound
            {
                self.shared.io_error("deleting", &old, &e);
            }
        }
        Ok(file)
    }
}

/// A review record and the feedback on its request, in the order recorded.
#[derive(Clone, Debug, PartialEq)]
pub struct Joined {
    /// The sampled request.
    pub record: ReviewRecord,
    /// Feedback with the same request id (empty: none yet).
    pub feedback: Vec<Feedback>,
}

/// A line [`join`] could not read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadLine {
    /// The file.
    pub path: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// Why.
    pub reason: String,
}

/// What [`join`] and [`join_entries`] found.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Join {
    /// One row per review record, in the order written.
    pub rows: Vec<Joined>,
    /// Feedback whose request has no record (not sampled, or its file was rotated out).
    pub unmatched_feedback: Vec<Feedback>,
    /// Lines that are not review entries (a line cut short by a crash, a foreign file).
    pub bad_lines: Vec<BadLine>,
}

/// Joins review records with the feedback on their requests, by request id (the server's own
/// store of a [`ReviewSink::channel`]'s entries, or what [`join`] read).
pub fn join_entries(entries: impl IntoIterator<Item = ReviewEntry>) -> Join {
    let mut rows = Vec::new();
    let mut feedback: Vec<Feedback> = Vec::new();
    for e in entries {
        match e {
            ReviewEntry::Review(r) => rows.push(*r),
            ReviewEntry::Feedback(f) => feedback.push(f),
        }
    }
    let mut by_id: HashMap<&str, usize> = HashMap::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        by_id.entry(r.request_id.as_str()).or_insert(i);
    }
    let mut matched: Vec<Vec<Feedback>> = vec![Vec::new(); rows.len()];
    let mut unmatched_feedback = Vec::new();
    for f in feedback {
        match by_id.get(f.request_id.as_str()) {
            Some(&i) => matched[i].push(f),
            None => unmatched_feedback.push(f),
        }
    }
    let rows = rows
        .into_iter()
        .zip(matched)
        .map(|(record, feedback)| Joined { record, feedback })
        .collect();
    Join {
        rows,
        unmatched_feedback,
        bad_lines: Vec::new(),
    }
}

/// Reads every `review-*.jsonl` file of a [`ReviewSink::jsonl`] directory, oldest first, and
/// joins records with feedback by request id ([`join_entries`]); unreadable lines are listed,
/// not fatal. Reads everything into memory: at most the files' [`JsonlFiles::disk_bound`].
///
/// # Errors
///
/// [`ReviewError::Io`] when the directory or a file cannot be read.
pub fn join(dir: impl AsRef<Path>) -> Result<Join, ReviewError> {
    let dir = dir.as_ref();
    let io = |what, path: &Path| {
        let path = path.to_owned();
        move |source| ReviewError::Io { what, path, source }
    };
    let mut entries = Vec::new();
    let mut bad_lines = Vec::new();
    for (_, path) in list_files(dir).map_err(io("listing", dir))? {
        let text = fs::read(&path).map_err(io("reading", &path))?;
        let text = String::from_utf8_lossy(&text);
        for (i, line) in text
            .lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
        {
            match serde_json::from_str::<ReviewEntry>(line) {
                Ok(e) => entries.push(e),
                Err(e) => bad_lines.push(BadLine {
                    path: path.clone(),
                    line: i + 1,
                    reason: e.to_string(),
                }),
            }
        }
    }
    let mut join = join_entries(entries);
    join.bad_lines = bad_lines;
    Ok(join)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_hash_is_stable_and_uniform_enough() {
        // Pinned (computed independently, in Python): a decision must be reproducible from
        // the id and the seed in any build.
        let grid = |u: f64| (u * (1u64 << 53) as f64) as u64;
        assert_eq!(grid(unit_hash(0, "r-1")), 7_279_226_515_986_539);
        assert_eq!(grid(unit_hash(7, "r-1")), 2_500_807_300_337_501);
        let below_half = (0..10_000)
            .filter(|i| unit_hash(0, &format!("r-{i}")) < 0.5)
            .count();
        // 10k fair draws: 5000 ± 150 is 3 sigma.
        assert!((4850..=5150).contains(&below_half), "{below_half}");
    }

    #[test]
    fn cut_keeps_char_boundaries() {
        assert_eq!(cut("héllo", 2), ("h", true));
        assert_eq!(cut("héllo", 3), ("hé", true));
        assert_eq!(cut("hé", 10), ("hé", false));
    }

    #[test]
    fn file_names_parse() {
        assert_eq!(file_seq("review-000012.jsonl"), Some(12));
        assert_eq!(file_seq("review-.jsonl"), None);
        assert_eq!(file_seq("review-1x.jsonl"), None);
        assert_eq!(file_seq("other-1.jsonl"), None);
    }
}
