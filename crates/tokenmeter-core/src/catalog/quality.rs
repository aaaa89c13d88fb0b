//! Quality-proxy metrics, recorded by `tokenmeter-quality`: logprob statistics, streaming text
//! monitors (refusals, repetition, output length, unusual output, keywords), pluggable scorers,
//! safety-filter triggers, user feedback, drift against a captured baseline and golden-set probes.
//!
//! Per-request values are recorded once, when the request's quality monitor finishes, never per
//! token. NaN/Inf counts of logits live in the core catalog (`nonfinite_values`,
//! `nonfinite_requests`), since the guard owns them. All names are ours (`own: true`), under
//! the meter's prefix.

use super::MetricDef;

/// Bounds for perplexity (exp of minus the mean chosen-token logprob; 1 = certain).
pub const PERPLEXITY_BUCKETS: &[f64] = &[
    1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0, 8.0, 13.0, 20.0, 50.0, 100.0, 1000.0,
];
/// Bounds for mean entropy in nats (ln 2 = 0.69 is a fair coin; ln 32000 = 10.4 is uniform over
/// a 32k vocabulary).
pub const ENTROPY_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0,
];
/// Bounds for shares in [0, 1] (low-confidence share, seq-rep-n).
pub const SHARE_BUCKETS: &[f64] = &[
    0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0,
];
/// Bounds for output length in characters.
pub const CHAR_BUCKETS: &[f64] = &[
    0.0, 1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
];
/// Bounds for scorer outputs: scorers report in [-1, 1] (sentiment) or [0, 1] (probabilities).
pub const SCORE_BUCKETS: &[f64] = &[
    -1.0, -0.75, -0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0,
];
/// Bounds for user feedback: thumbs (-1, 0, 1) and 1-5 star ratings both land on a bound.
pub const FEEDBACK_BUCKETS: &[f64] = &[-1.0, -0.5, 0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0];

macro_rules! def {
    ($id:literal, $name:literal, $kind:ident, $unit:literal, labels: $labels:expr,
     buckets: $b:expr, $desc:literal, recorded: $rec:expr) => {
        metric_def!(id: $id, otel: $name, own: true, vllm: None, prometheus: None,
            kind: $kind, unit: $unit, labels: $labels, buckets: $b, vllm_buckets: None,
            description: $desc, recorded: $rec)
    };
}

const AT_FINISH: &str = "Once per request, when its quality monitor finishes.";

/// Every quality metric.
pub static DEFS: &[MetricDef] = &[
    def!("quality_perplexity", "quality.perplexity", Histogram, "1", labels: &[],
        buckets: Some(PERPLEXITY_BUCKETS),
        "Per-request perplexity: exp of minus the mean logprob of the chosen tokens.",
        recorded: "Once per request that reported at least one finite logprob, when its quality monitor finishes."),
    def!("quality_entropy", "quality.entropy", Histogram, "1", labels: &[],
        buckets: Some(ENTROPY_BUCKETS),
        "Per-request mean entropy (nats) of the next-token distribution, from the top-k or full distribution handed in.",
        recorded: "Once per request that handed in at least one distribution, when its quality monitor finishes."),
    def!("quality_low_confidence", "quality.low_confidence.share", Histogram, "1", labels: &[],
        buckets: Some(SHARE_BUCKETS),
        "Per-request share of chosen tokens whose probability was below the low-confidence threshold (default 0.5).",
        recorded: "Once per request that reported at least one finite logprob, when its quality monitor finishes."),
    def!("quality_requests", "quality.requests", Counter, "{request}", labels: &[],
        buckets: None,
        "Requests whose output went through the text monitors: the denominator of the refusal, empty and loop rates.",
        recorded: AT_FINISH),
    def!("quality_refusals", "quality.refusals", Counter, "{request}", labels: &[],
        buckets: None,
        "Requests whose output matched a refusal phrase (case-insensitive, across token boundaries).",
        recorded: AT_FINISH),
    def!("quality_repetition", "quality.repetition", Histogram, "1", labels: &[],
        buckets: Some(SHARE_BUCKETS),
        "Per-request seq-rep-n: the share of the output's token n-grams that repeat an earlier n-gram of the same output.",
        recorded: "Once per request with at least n output token ids, when its quality monitor finishes."),
    def!("quality_degenerate", "quality.degenerate_loops", Counter, "{request}", labels: &[],
        buckets: None,
        "Requests flagged as a degenerate loop: a run of consecutive repeated n-grams at least the configured length.",
        recorded: AT_FINISH),
    def!("quality_output_chars", "quality.output.chars", Histogram, "{char}", labels: &[],
        buckets: Some(CHAR_BUCKETS),
        "Per-request output length in Unicode scalar values (invalid UTF-8 counted as U+FFFD, as a lossy decoder would).",
        recorded: "Once per request that handed in text, when its quality monitor finishes."),
    def!("quality_empty", "quality.output.empty", Counter, "{request}", labels: &[],
        buckets: None,
        "Requests whose output had no non-whitespace character (or no token at all when no text was handed in).",
        recorded: AT_FINISH),
    def!("quality_replacement_chars", "quality.output.replacement_chars", Counter, "{char}", labels: &[],
        buckets: None,
        "U+FFFD replacement characters in outputs: literal ones plus one per invalid or truncated UTF-8 sequence.",
        recorded: AT_FINISH),
    def!("quality_control_chars", "quality.output.control_chars", Counter, "{char}", labels: &[],
        buckets: None,
        "Control characters in outputs (C0 other than tab, LF and CR; DEL; C1).",
        recorded: AT_FINISH),
    def!("quality_disallowed_tokens", "quality.output.disallowed_tokens", Counter, "{token}", labels: &[],
        buckets: None,
        "Output token ids outside the configured allowed set.",
        recorded: AT_FINISH),
    def!("quality_keywords", "quality.keyword.matches", Counter, "{match}", labels: &["keyword"],
        buckets: None,
        "Matches of configured keywords in outputs (case-insensitive); keywords past the cardinality cap count under `other`.",
        recorded: "Once per request and matched keyword, when its quality monitor finishes."),
    def!("quality_score", "quality.score", Histogram, "1", labels: &["scorer"],
        buckets: Some(SCORE_BUCKETS),
        "Scores from pluggable scorers (sentiment, toxicity, safety classifiers) on whole outputs.",
        recorded: "Once per request and scorer at finish, or when the server records a score it computed elsewhere."),
    def!("quality_safety_triggers", "quality.safety_filter.triggers", Counter, "{trigger}", labels: &["filter"],
        buckets: None,
        "Safety-filter triggers reported by the server, by filter name (capped; the rest count under `other`).",
        recorded: "When the server reports a trigger."),
    def!("quality_feedback", "quality.feedback.score", Histogram, "1", labels: &[],
        buckets: Some(FEEDBACK_BUCKETS),
        "User feedback scores, recorded after the fact per request id (the request id goes to the log, never a label).",
        recorded: "When the server reports feedback for a request."),
    def!("quality_drift_psi", "quality.drift.psi", Gauge, "", labels: &["feature"],
        buckets: None,
        "Population stability index of the live window against the baseline, per feature (prompt_length, output_length, token_id).",
        recorded: "Each time the drift monitor evaluates (every window step, or on demand)."),
    def!("quality_drift_jsd", "quality.drift.js_divergence", Gauge, "", labels: &["feature"],
        buckets: None,
        "Jensen-Shannon divergence (base 2, in [0, 1]) of the live window against the baseline, per feature.",
        recorded: "Each time the drift monitor evaluates (every window step, or on demand)."),
    def!("quality_drift_window", "quality.drift.window_requests", Gauge, "{request}", labels: &[],
        buckets: None,
        "Requests in the drift monitor's live window (drift values over a small window are noise).",
        recorded: "Each time the drift monitor evaluates."),
    def!("quality_review_sampled", "quality.review.sampled", Counter, "{request}", labels: &[],
        buckets: None,
        "Requests sampled for human review and queued to the review sink (uniform share times the weights that applied, capped at 1).",
        recorded: "When a sampled request is queued to the review sink."),
    def!("quality_review_dropped", "quality.review.dropped", Counter, "{record}", labels: &["reason"],
        buckets: None,
        "Review records and feedback dropped instead of written: full (the bounded queue was full), oversize (one line over the file cap), redactor_panic.",
        recorded: "When a record is dropped; never blocks the caller."),
    def!("quality_review_write_errors", "quality.review.write_errors", Counter, "{error}", labels: &[],
        buckets: None,
        "I/O errors of the review sink's file writer (creating, writing or deleting a file); the record in hand is lost.",
        recorded: "On the writer thread, per failed operation."),
    def!("quality_review_bytes", "quality.review.written", Counter, "By", labels: &[],
        buckets: None,
        "Bytes of JSON lines the review sink's file writer wrote (records and feedback).",
        recorded: "On the writer thread, per line written."),
    def!("quality_review_feedback", "quality.review.feedback", Counter, "{feedback}", labels: &[],
        buckets: None,
        "Feedback entries queued to the review sink, joined to review records by request id later.",
        recorded: "When the server records feedback through the review sink."),
    def!("quality_golden_score", "quality.golden.score", Gauge, "1", labels: &["golden.set", "model.version", "scorer"],
        buckets: None,
        "Mean score in [0, 1] of the latest golden-set probe pass, per set, model version and scoring method (exact, contains, f1, rouge_l, bleu).",
        recorded: "At the end of each probe pass that scored at least one prompt of that method."),
    def!("quality_golden_baseline", "quality.golden.baseline_score", Gauge, "1", labels: &["golden.set", "model.version", "scorer"],
        buckets: None,
        "The golden-set score captured after a good deployment (the baseline file), per set, the baseline's model version and scoring method.",
        recorded: "When the server hands the probe a baseline (and again at each pass, so a new recorder sees it)."),
    def!("quality_golden_prompts", "quality.golden.prompts", Counter, "{prompt}", labels: &["golden.set", "model.version", "outcome"],
        buckets: None,
        "Golden-set probe prompts by outcome: ok, error (the callback returned an error), panic, timeout, or skipped as busy, budget or hung.",
        recorded: "At the end of each probe pass, and for each skipped pass."),
    def!("quality_golden_passes", "quality.golden.passes", Counter, "{pass}", labels: &["golden.set", "model.version"],
        buckets: None,
        "Golden-set probe passes that ran at least one prompt.",
        recorded: "At the end of each probe pass."),
    def!("quality_golden_ttft", "quality.golden.time_to_first_token", Histogram, "s", labels: &["golden.set", "model.version"],
        buckets: Some(super::core::TTFT_BUCKETS),
        "Time to first token of golden-set probe prompts, as the probe callback measured it.",
        recorded: "At the end of each probe pass, once per answered prompt whose callback reported it."),
    def!("quality_golden_tpot", "quality.golden.time_per_output_token", Histogram, "s", labels: &["golden.set", "model.version"],
        buckets: Some(super::core::TPOT_BUCKETS),
        "Time per output token of golden-set probe prompts, as the probe callback measured it.",
        recorded: "At the end of each probe pass, once per answered prompt whose callback reported it."),
    def!("quality_golden_e2e", "quality.golden.duration", Histogram, "s", labels: &["golden.set", "model.version"],
        buckets: Some(super::core::E2E_BUCKETS),
        "End-to-end duration of golden-set probe prompts: the callback's own measure, or the probe's timing of the call.",
        recorded: "At the end of each probe pass, once per answered prompt."),
    // The A/B series carry `variant` the way request series carry a request label (the same
    // key, which a meter may declare as one), so it is not listed as a catalog label: those are
    // reserved against request labels.
    def!("quality_ab_requests", "quality.ab.requests", Counter, "{request}", labels: &[],
        buckets: None,
        "Requests of an A/B variant (label `variant`, added by the A/B monitor) recorded with a quality report: the denominator of the variant's refusal rate.",
        recorded: "Once per request the server records on its A/B monitor with a quality report."),
    def!("quality_ab_refusals", "quality.ab.refusals", Counter, "{request}", labels: &[],
        buckets: None,
        "Of those, requests whose output matched a refusal phrase (label `variant`).",
        recorded: "Once per request the server records on its A/B monitor with a quality report."),
    def!("quality_ab_perplexity", "quality.ab.perplexity", Histogram, "1", labels: &[],
        buckets: Some(PERPLEXITY_BUCKETS),
        "Per-request perplexity by A/B variant (label `variant`; sum / count is the variant's mean perplexity).",
        recorded: "Once per request recorded on the A/B monitor whose quality report has a perplexity."),
    def!("quality_ab_golden_score", "quality.ab.golden_score", Histogram, "1", labels: &[],
        buckets: Some(SHARE_BUCKETS),
        "Golden-set scores by A/B variant (label `variant`; one per scored prompt; sum / count is the mean score).",
        recorded: "When the server records a golden score on the A/B monitor."),
];

// Typed ids: a lookup by one of these cannot name a metric that does not exist. The test in
// catalog/mod.rs checks that each names the entry of its own id.
/// The `quality_perplexity` metric.
pub static PERPLEXITY: &MetricDef = &DEFS[0];
/// The `quality_entropy` metric.
pub static ENTROPY: &MetricDef = &DEFS[1];
/// The `quality_low_confidence` metric.
pub static LOW_CONFIDENCE: &MetricDef = &DEFS[2];
/// The `quality_requests` metric.
pub static REQUESTS: &MetricDef = &DEFS[3];
/// The `quality_refusals` metric.
pub static REFUSALS: &MetricDef = &DEFS[4];
/// The `quality_repetition` metric.
pub static REPETITION: &MetricDef = &DEFS[5];
/// The `quality_degenerate` metric.
pub static DEGENERATE: &MetricDef = &DEFS[6];
/// The `quality_output_chars` metric.
pub static OUTPUT_CHARS: &MetricDef = &DEFS[7];
/// The `quality_empty` metric.
pub static EMPTY: &MetricDef = &DEFS[8];
/// The `quality_replacement_chars` metric.
pub static REPLACEMENT_CHARS: &MetricDef = &DEFS[9];
/// The `quality_control_chars` metric.
pub static CONTROL_CHARS: &MetricDef = &DEFS[10];
/// The `quality_disallowed_tokens` metric.
pub static DISALLOWED_TOKENS: &MetricDef = &DEFS[11];
/// The `quality_keywords` metric.
pub static KEYWORDS: &MetricDef = &DEFS[12];
/// The `quality_score` metric.
pub static SCORE: &MetricDef = &DEFS[13];
/// The `quality_safety_triggers` metric.
pub static SAFETY_TRIGGERS: &MetricDef = &DEFS[14];
/// The `quality_feedback` metric.
pub static FEEDBACK: &MetricDef = &DEFS[15];
/// The `quality_drift_psi` metric.
pub static DRIFT_PSI: &MetricDef = &DEFS[16];
/// The `quality_drift_jsd` metric.
pub static DRIFT_JSD: &MetricDef = &DEFS[17];
/// The `quality_drift_window` metric.
pub static DRIFT_WINDOW: &MetricDef = &DEFS[18];
/// The `quality_review_sampled` metric.
pub static REVIEW_SAMPLED: &MetricDef = &DEFS[19];
/// The `quality_review_dropped` metric.
pub static REVIEW_DROPPED: &MetricDef = &DEFS[20];
/// The `quality_review_write_errors` metric.
pub static REVIEW_WRITE_ERRORS: &MetricDef = &DEFS[21];
/// The `quality_review_bytes` metric.
pub static REVIEW_BYTES: &MetricDef = &DEFS[22];
/// The `quality_review_feedback` metric.
pub static REVIEW_FEEDBACK: &MetricDef = &DEFS[23];
/// The `quality_golden_score` metric.
pub static GOLDEN_SCORE: &MetricDef = &DEFS[24];
/// The `quality_golden_baseline` metric.
pub static GOLDEN_BASELINE: &MetricDef = &DEFS[25];
/// The `quality_golden_prompts` metric.
pub static GOLDEN_PROMPTS: &MetricDef = &DEFS[26];
/// The `quality_golden_passes` metric.
pub static GOLDEN_PASSES: &MetricDef = &DEFS[27];
/// The `quality_golden_ttft` metric.
pub static GOLDEN_TTFT: &MetricDef = &DEFS[28];
/// The `quality_golden_tpot` metric.
pub static GOLDEN_TPOT: &MetricDef = &DEFS[29];
/// The `quality_golden_e2e` metric.
pub static GOLDEN_E2E: &MetricDef = &DEFS[30];
/// The `quality_ab_requests` metric.
pub static AB_REQUESTS: &MetricDef = &DEFS[31];
/// The `quality_ab_refusals` metric.
pub static AB_REFUSALS: &MetricDef = &DEFS[32];
/// The `quality_ab_perplexity` metric.
pub static AB_PERPLEXITY: &MetricDef = &DEFS[33];
/// The `quality_ab_golden_score` metric.
pub static AB_GOLDEN_SCORE: &MetricDef = &DEFS[34];
