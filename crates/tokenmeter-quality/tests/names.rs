//! The exposition names docs/quality.md uses, under the default naming and prefix.

use tokenmeter_core::{Meter, catalog};

#[test]
fn quality_metric_names_are_the_documented_ones() {
    let meter = Meter::default();
    let names: Vec<(&str, &str)> = catalog::quality::DEFS
        .iter()
        .map(|d| (d.id, meter.metric_names().name(d)))
        .collect();
    let want = [
        ("quality_perplexity", "tokenmeter_quality_perplexity"),
        ("quality_entropy", "tokenmeter_quality_entropy"),
        (
            "quality_low_confidence",
            "tokenmeter_quality_low_confidence_share",
        ),
        ("quality_requests", "tokenmeter_quality_requests_total"),
        ("quality_refusals", "tokenmeter_quality_refusals_total"),
        ("quality_repetition", "tokenmeter_quality_repetition"),
        (
            "quality_degenerate",
            "tokenmeter_quality_degenerate_loops_total",
        ),
        ("quality_output_chars", "tokenmeter_quality_output_chars"),
        ("quality_empty", "tokenmeter_quality_output_empty_total"),
        (
            "quality_replacement_chars",
            "tokenmeter_quality_output_replacement_chars_total",
        ),
        (
            "quality_control_chars",
            "tokenmeter_quality_output_control_chars_total",
        ),
        (
            "quality_disallowed_tokens",
            "tokenmeter_quality_output_disallowed_tokens_total",
        ),
        (
            "quality_keywords",
            "tokenmeter_quality_keyword_matches_total",
        ),
        ("quality_score", "tokenmeter_quality_score"),
        (
            "quality_safety_triggers",
            "tokenmeter_quality_safety_filter_triggers_total",
        ),
        ("quality_feedback", "tokenmeter_quality_feedback_score"),
        ("quality_drift_psi", "tokenmeter_quality_drift_psi"),
        (
            "quality_drift_jsd",
            "tokenmeter_quality_drift_js_divergence",
        ),
        (
            "quality_drift_window",
            "tokenmeter_quality_drift_window_requests",
        ),
        (
            "quality_review_sampled",
            "tokenmeter_quality_review_sampled_total",
        ),
        (
            "quality_review_dropped",
            "tokenmeter_quality_review_dropped_total",
        ),
        (
            "quality_review_write_errors",
            "tokenmeter_quality_review_write_errors_total",
        ),
        (
            "quality_review_bytes",
            "tokenmeter_quality_review_written_bytes_total",
        ),
        (
            "quality_review_feedback",
            "tokenmeter_quality_review_feedback_total",
        ),
        (
            "quality_golden_score",
            "tokenmeter_quality_golden_score_ratio",
        ),
        (
            "quality_golden_baseline",
            "tokenmeter_quality_golden_baseline_score_ratio",
        ),
        (
            "quality_golden_prompts",
            "tokenmeter_quality_golden_prompts_total",
        ),
        (
            "quality_golden_passes",
            "tokenmeter_quality_golden_passes_total",
        ),
        (
            "quality_golden_ttft",
            "tokenmeter_quality_golden_time_to_first_token_seconds",
        ),
        (
            "quality_golden_tpot",
            "tokenmeter_quality_golden_time_per_output_token_seconds",
        ),
        (
            "quality_golden_e2e",
            "tokenmeter_quality_golden_duration_seconds",
        ),
        (
            "quality_ab_requests",
            "tokenmeter_quality_ab_requests_total",
        ),
        (
            "quality_ab_refusals",
            "tokenmeter_quality_ab_refusals_total",
        ),
        ("quality_ab_perplexity", "tokenmeter_quality_ab_perplexity"),
        (
            "quality_ab_golden_score",
            "tokenmeter_quality_ab_golden_score",
        ),
    ];
    assert_eq!(names, want);
    for d in catalog::quality::DEFS {
        assert!(
            d.own && !d.recorded.is_empty() && !d.description.is_empty(),
            "{}",
            d.id
        );
        assert_eq!(
            d.buckets.is_some(),
            d.kind == catalog::MetricKind::Histogram,
            "{}",
            d.id
        );
    }
    let docs = include_str!("../../../docs/quality.md");
    for (_, name) in want {
        assert!(
            docs.contains(name),
            "docs/quality.md does not mention {name}"
        );
    }
}
