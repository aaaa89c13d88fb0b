//! The quality monitor and the guard wiring, against a debugging recorder: exact metric values,
//! span fields, and bad input.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use half::{bf16, f16};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokenmeter_core::{Finish, Meter, NonFinite, catalog};
use tokenmeter_quality::drift::{BaselineRecorder, DriftMonitor};
use tokenmeter_quality::{
    LexiconSentiment, LogitsExt, LogitsKind, QualityConfig, QualityMonitor, TokenSet,
};

/// (name, sorted labels) -> value
type Values = HashMap<(String, Vec<(String, String)>), DebugValue>;

fn values(s: &Snapshotter) -> Values {
    s.snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, _, _, v)| {
            let key = k.key();
            let mut labels: Vec<(String, String)> = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            labels.sort();
            ((key.name().to_owned(), labels), v)
        })
        .collect()
}

/// The value of a metric whose labels include `extra` (besides the constant labels).
fn get<'a>(
    v: &'a Values,
    meter: &Meter,
    id: &str,
    extra: &[(&str, &str)],
) -> Option<&'a DebugValue> {
    let def = catalog::by_id(id).expect("catalog id");
    let name = meter.metric_names().name(def);
    v.iter()
        .find(|((n, labels), _)| {
            n == name
                && extra
                    .iter()
                    .all(|(k, val)| labels.iter().any(|(lk, lv)| lk == k && lv == val))
                && labels.len() == meter.metric_names().constant_labels().len() + extra.len()
        })
        .map(|(_, d)| d)
}

fn counter(v: &Values, meter: &Meter, id: &str, extra: &[(&str, &str)]) -> u64 {
    match get(v, meter, id, extra) {
        Some(DebugValue::Counter(c)) => *c,
        None => 0,
        other => panic!("{id} is not a counter: {other:?}"),
    }
}

fn hist(v: &Values, meter: &Meter, id: &str, extra: &[(&str, &str)]) -> Vec<f64> {
    match get(v, meter, id, extra) {
        Some(DebugValue::Histogram(h)) => h.iter().map(|x| x.0).collect(),
        None => Vec::new(),
        other => panic!("{id} is not a histogram: {other:?}"),
    }
}

fn gauge(v: &Values, meter: &Meter, id: &str, extra: &[(&str, &str)]) -> Option<f64> {
    match get(v, meter, id, extra) {
        Some(DebugValue::Gauge(g)) => Some(g.0),
        _ => None,
    }
}

fn mock_meter() -> Meter {
    let (clock, _mock) = tokenmeter_core::clock::Clock::mock();
    Meter::builder().model("m").clock(clock).build()
}

#[test]
fn a_request_is_recorded_once_with_exact_values() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let meter = mock_meter();
        let config = QualityConfig::default()
            .keywords(["Paris", "London"])
            .keyword_cap(1)
            .allowed_tokens(TokenSet::from_ids(0..100))
            .repetition(2, 3)
            .scorer(Arc::new(LexiconSentiment::default()));
        let quality = QualityMonitor::new(&meter, config).expect("monitor");
        let mut req = meter.request().prompt_tokens(7).start();
        let mut q = quality.request();
        let pieces: [(u32, &[u8]); 7] = [
            (1, b"I'm sorry, bu"),
            (2, b"t I CAN"),
            (150, b"not go to paris or PARIS"),
            (3, b" or london \xEF\xBF"), // U+FFFD split over two pieces
            (4, b"\xBD\x07 "),
            (5, b"\xC3"), // truncated: one more U+FFFD at the end
            (5, b""),
        ];
        for (id, piece) in pieces {
            req.token();
            q.piece(id, piece);
            q.logprob((0.25f32).ln());
        }
        let report = q.finish(&req);
        let again = q.finish(&req);
        req.finish(Finish::Stop);
        assert_eq!(report, again);
        assert!(report.refusal);
        assert_eq!(report.tokens, 7);
        assert_eq!(report.disallowed_tokens, 1);
        assert_eq!(report.keyword_matches, vec![2, 1]);
        assert_eq!(report.chars.replacement, 2);
        assert_eq!(report.chars.control, 1);
        let text = "I'm sorry, but I CANnot go to paris or PARIS or london \u{FFFD}\u{7} \u{FFFD}";
        assert_eq!(report.chars.chars, text.chars().count() as u64);
        // bigrams: 12 2,150 150,3 34 45 55: none repeats
        assert_eq!(report.repetition, Some(0.0));
        assert!(!report.degenerate && !report.empty);
        // "sorry" and "cannot" are negative lexicon words; "not" before "go" flips nothing.
        assert_eq!(report.scores, vec![Some(-1.0)]);

        let t = quality.totals();
        assert_eq!(
            (t.requests, t.refusals, t.empty, t.degenerate),
            (1, 1, 0, 0)
        );
        assert_eq!(t.refusal_rate(), Some(1.0));
        let v = values(&snap);
        assert_eq!(counter(&v, &meter, "quality_requests", &[]), 1);
        assert_eq!(counter(&v, &meter, "quality_refusals", &[]), 1);
        assert_eq!(counter(&v, &meter, "quality_disallowed_tokens", &[]), 1);
        assert_eq!(counter(&v, &meter, "quality_replacement_chars", &[]), 2);
        assert_eq!(counter(&v, &meter, "quality_control_chars", &[]), 1);
        assert_eq!(counter(&v, &meter, "quality_empty", &[]), 0);
        assert_eq!(counter(&v, &meter, "quality_degenerate", &[]), 0);
        assert_eq!(
            counter(&v, &meter, "quality_keywords", &[("keyword", "Paris")]),
            2
        );
        assert_eq!(
            counter(&v, &meter, "quality_keywords", &[("keyword", "other")]),
            1
        );
        assert_eq!(
            counter(&v, &meter, "label_overflow", &[("label", "keyword")]),
            1
        );
        assert_eq!(
            hist(&v, &meter, "quality_output_chars", &[]),
            vec![report.chars.chars as f64]
        );
        assert_eq!(hist(&v, &meter, "quality_repetition", &[]), vec![0.0]);
        assert_eq!(hist(&v, &meter, "quality_low_confidence", &[]), vec![1.0]);
        let ppl = hist(&v, &meter, "quality_perplexity", &[]);
        assert_eq!(ppl.len(), 1);
        assert!((ppl[0] - 4.0).abs() < 1e-5, "{ppl:?}");
        assert_eq!(hist(&v, &meter, "quality_entropy", &[]), Vec::<f64>::new());
        assert_eq!(
            hist(
                &v,
                &meter,
                "quality_score",
                &[("scorer", "lexicon_sentiment")]
            ),
            vec![-1.0]
        );
        // The exposition name of one of them, spelled out.
        assert_eq!(
            meter
                .metric_names()
                .name(catalog::by_id("quality_refusals").expect("id")),
            "tokenmeter_quality_refusals_total"
        );
    });
}

#[test]
fn logits_are_scanned_into_the_guard_and_sampling_skips_steps() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let meter = mock_meter();
        let mut req = meter.request().start();
        let mut row = vec![0.0f32; 128 * 1024];
        row[5] = f32::NAN;
        row[70_000] = f32::from_bits(0xFF80_0001); // negative signaling NaN
        row[128 * 1024 - 1] = f32::NEG_INFINITY;
        req.token();
        assert_eq!(
            req.logits(&row),
            NonFinite {
                nan: 2,
                pos_inf: 0,
                neg_inf: 1
            }
        );
        assert_eq!(
            req.logits(&[f16::INFINITY, f16::MAX]),
            NonFinite {
                nan: 0,
                pos_inf: 1,
                neg_inf: 0
            }
        );
        assert_eq!(
            req.logits(&[bf16::NAN]),
            NonFinite {
                nan: 1,
                pos_inf: 0,
                neg_inf: 0
            }
        );
        assert_eq!(
            req.logits(&[f64::NEG_INFINITY]),
            NonFinite {
                nan: 0,
                pos_inf: 0,
                neg_inf: 1
            }
        );
        // Empty rows of every type add nothing.
        assert_eq!(req.logits::<f32>(&[]), NonFinite::default());
        assert_eq!(req.logits::<f64>(&[]), NonFinite::default());
        assert_eq!(req.logits::<f16>(&[]), NonFinite::default());
        assert_eq!(req.logits::<bf16>(&[]), NonFinite::default());
        assert_eq!(
            req.non_finite(),
            NonFinite {
                nan: 3,
                pos_inf: 1,
                neg_inf: 2
            }
        );

        // Every 3rd step: scans at output_tokens() = 3 and 6 of steps 2..=7.
        let mut scanned = 0;
        for _ in 2..=7 {
            req.token();
            if req.logits_every(&[f32::INFINITY], 3).is_some() {
                scanned += 1;
            }
        }
        assert_eq!(scanned, 2);
        assert!(req.logits_every(&[f32::INFINITY], 0).is_some());
        assert!(req.logits_every(&[f32::INFINITY], 1).is_some());
        assert_eq!(
            req.non_finite(),
            NonFinite {
                nan: 3,
                pos_inf: 5,
                neg_inf: 2
            }
        );
        req.finish(Finish::Stop);
        let v = values(&snap);
        assert_eq!(
            counter(&v, &meter, "nonfinite_values", &[("kind", "nan")]),
            3
        );
        assert_eq!(
            counter(&v, &meter, "nonfinite_values", &[("kind", "pos_inf")]),
            5
        );
        assert_eq!(counter(&v, &meter, "nonfinite_requests", &[]), 1);
    });
}

/// Issue 12: a constrained (JSON-mode) request hands rows that are -Inf but for the allowed
/// tokens. Scanned as masked logits they count nothing and the request is no non-finite
/// request; a +Inf or a NaN among them still is, and so is a -Inf in raw logits.
#[test]
fn masked_logits_count_only_nan_and_pos_inf() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let meter = mock_meter();
        let mut json = vec![f32::NEG_INFINITY; 32_000];
        json[100..150].fill(2.0);
        let json_bf16: Vec<bf16> = json.iter().map(|&x| bf16::from_f32(x)).collect();
        let nf = |nan, pos_inf, neg_inf| NonFinite {
            nan,
            pos_inf,
            neg_inf,
        };

        // A constrained request: 31,950 masked values per step, none of them a fault.
        let mut req = meter.request().start();
        for _ in 0..20 {
            req.token();
            assert_eq!(req.logits_as(&json, LogitsKind::Masked), nf(0, 0, 0));
            assert_eq!(req.logits_as(&json_bf16, LogitsKind::Masked), nf(0, 0, 0));
            req.logits_every_as(&json, LogitsKind::Masked, 2);
        }
        assert_eq!(req.non_finite(), nf(0, 0, 0));
        req.finish(Finish::Stop);
        let v = values(&snap);
        assert_eq!(counter(&v, &meter, "nonfinite_requests", &[]), 0);
        for kind in ["nan", "pos_inf", "neg_inf"] {
            assert_eq!(
                counter(&v, &meter, "nonfinite_values", &[("kind", kind)]),
                0
            );
        }

        // A constrained request whose model overflowed once: the +Inf and the NaN count.
        let mut req = meter.request().start();
        req.token();
        req.logits_as(&json, LogitsKind::Masked);
        let mut bad = json.clone();
        bad[120] = f32::INFINITY;
        bad[31_999] = f32::NAN;
        req.token();
        assert_eq!(req.logits_as(&bad, LogitsKind::Masked), nf(1, 1, 0));
        let mut bad_bf16 = json_bf16.clone();
        bad_bf16[7] = bf16::INFINITY;
        assert_eq!(
            req.logits_every_as(&bad_bf16, LogitsKind::Masked, 1),
            Some(nf(0, 1, 0))
        );
        req.finish(Finish::Stop);

        // Raw logits: every -Inf is a fault (and `logits` is `logits_as(.., Raw)`).
        let mut req = meter.request().start();
        req.token();
        assert_eq!(req.logits_as(&json, LogitsKind::Raw), nf(0, 0, 31_950));
        assert_eq!(req.logits(&[f16::NEG_INFINITY, f16::ONE]), nf(0, 0, 1));
        req.finish(Finish::Stop);

        let v = values(&snap);
        assert_eq!(counter(&v, &meter, "nonfinite_requests", &[]), 2);
        assert_eq!(
            counter(&v, &meter, "nonfinite_values", &[("kind", "nan")]),
            1
        );
        assert_eq!(
            counter(&v, &meter, "nonfinite_values", &[("kind", "pos_inf")]),
            2
        );
        assert_eq!(
            counter(&v, &meter, "nonfinite_values", &[("kind", "neg_inf")]),
            31_951
        );
    });
}

#[test]
fn bad_input_is_handled() {
    let meter = mock_meter();
    let quality = QualityMonitor::new(&meter, QualityConfig::default().keywords(["needle"]))
        .expect("monitor");

    // Nothing handed in: empty (no token), no text-derived values.
    let req = meter.request().start();
    let mut q = quality.request();
    let r = q.finish(&req);
    assert!(r.empty && !r.text_seen && r.repetition.is_none() && r.logprobs.perplexity.is_none());

    // Empty pieces and whitespace only: empty.
    let req = meter.request().start();
    let mut q = quality.request();
    q.piece(1, "");
    q.piece(2, " \n\t");
    q.bytes(&[]);
    let r = q.finish(&req);
    assert!(r.empty && r.text_seen);
    assert_eq!((r.chars.chars, r.tokens), (3, 2));

    // Invalid UTF-8 only: not empty, all replacement characters, no panic.
    let req = meter.request().start();
    let mut q = quality.request();
    q.bytes(&[0xFF, 0xFE, 0x80]);
    q.bytes(&[0xF0, 0x9F]);
    let r = q.finish(&req);
    assert_eq!((r.chars.chars, r.chars.replacement), (4, 4));
    assert!(!r.empty);

    // One enormous token (8 MiB) with a refusal and the keyword at its very end.
    let req = meter.request().start();
    let mut q = quality.request();
    let mut big = vec![b'a'; 8 << 20];
    big.extend_from_slice(b" I cannot help with NEEDLE");
    q.piece(7, &big);
    let r = q.finish(&req);
    assert!(r.refusal);
    assert_eq!(r.keyword_matches, vec![1]);
    assert_eq!(r.chars.chars, big.len() as u64);

    // Non-finite logprobs and empty distributions are ignored, not propagated.
    let req = meter.request().start();
    let mut q = quality.request();
    q.logprob(f32::NAN);
    q.logprob_top_k(-0.1, &[]);
    q.logprob_logits(-0.1, &[f32::NAN]);
    let r = q.finish(&req);
    assert_eq!(r.logprobs.tokens, 2);
    assert_eq!(r.logprobs.invalid, 3);
    assert_eq!(r.logprobs.mean_entropy, None);
}

#[test]
fn degenerate_loops_are_flagged() {
    let meter = mock_meter();
    let quality = QualityMonitor::new(&meter, QualityConfig::default()).expect("monitor");
    let req = meter.request().start();
    let mut q = quality.request();
    for i in 0..200u32 {
        q.token(i % 7);
    }
    let r = q.finish(&req);
    assert!(r.degenerate);
    // 197 4-grams; the first 7 are new, the other 190 repeat.
    assert_eq!(r.repetition, Some(190.0 / 197.0));
    assert_eq!(r.longest_repeat_run, 190);
    q.reset();
    assert_eq!(q.report().tokens, 0);
}

#[test]
fn safety_feedback_and_external_scores_are_capped() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let meter = mock_meter();
        let quality =
            QualityMonitor::new(&meter, QualityConfig::default().name_cap(2)).expect("monitor");
        for f in [
            "input_moderation",
            "output_moderation",
            "pii",
            "jailbreak",
            "input_moderation",
        ] {
            quality.safety_filter_triggered(f);
        }
        quality.record_feedback("req-1", 1.0);
        quality.record_feedback("req-2", -1.0);
        quality.record_feedback("req-3", f64::NAN);
        quality.record_score("toxicity", 0.25);
        quality.record_score("toxicity", f64::INFINITY);
        let v = values(&snap);
        assert_eq!(
            counter(
                &v,
                &meter,
                "quality_safety_triggers",
                &[("filter", "input_moderation")]
            ),
            2
        );
        assert_eq!(
            counter(
                &v,
                &meter,
                "quality_safety_triggers",
                &[("filter", "output_moderation")]
            ),
            1
        );
        assert_eq!(
            counter(
                &v,
                &meter,
                "quality_safety_triggers",
                &[("filter", "other")]
            ),
            2
        );
        assert_eq!(
            counter(&v, &meter, "label_overflow", &[("label", "filter")]),
            2
        );
        assert_eq!(hist(&v, &meter, "quality_feedback", &[]), vec![1.0, -1.0]);
        assert_eq!(
            hist(&v, &meter, "quality_score", &[("scorer", "toxicity")]),
            vec![0.25]
        );
    });
}

#[test]
fn finished_requests_feed_the_drift_monitor() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let meter = mock_meter();
        let mut rec = BaselineRecorder::new();
        for _ in 0..8 {
            rec.observe_request(10, 3);
            rec.observe_tokens(&[1, 2, 3]);
        }
        let drift = Arc::new(DriftMonitor::new(&meter, rec.baseline(), 8));
        let quality =
            QualityMonitor::new(&meter, QualityConfig::default().drift(Arc::clone(&drift)))
                .expect("monitor");
        for _ in 0..8 {
            let mut req = meter.request().prompt_tokens(10).start();
            let mut q = quality.request();
            for id in [1, 2, 3] {
                req.token();
                q.token(id);
            }
            q.finish(&req);
            req.finish(Finish::Stop);
        }
        let live = drift.window_baseline();
        assert_eq!((live.requests, live.tokens), (8, 24));
        let r = drift.evaluate();
        assert_eq!(r.window_requests, 8);
        for d in [r.prompt_length, r.output_length, r.token_id] {
            assert_eq!(d.psi, Some(0.0));
            assert_eq!(d.jsd, Some(0.0));
        }
        let v = values(&snap);
        assert_eq!(
            gauge(&v, &meter, "quality_drift_psi", &[("feature", "token_id")]),
            Some(0.0)
        );
        assert_eq!(
            gauge(
                &v,
                &meter,
                "quality_drift_jsd",
                &[("feature", "prompt_length")]
            ),
            Some(0.0)
        );
        assert_eq!(gauge(&v, &meter, "quality_drift_window", &[]), Some(8.0));
    });
}

/// A subscriber that keeps every value recorded on spans, by field name.
#[derive(Clone, Default)]
struct Fields(Arc<Mutex<HashMap<String, String>>>);

struct Visit<'a>(&'a mut HashMap<String, String>);
impl tracing::field::Visit for Visit<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
}

impl tracing::Subscriber for Fields {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        values.record(&mut Visit(&mut map));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

#[test]
fn span_fields_are_recorded() {
    let fields = Fields::default();
    tracing::subscriber::with_default(fields.clone(), || {
        let meter = mock_meter();
        let quality = QualityMonitor::new(&meter, QualityConfig::default()).expect("monitor");
        let mut req = meter.request().start();
        let mut q = quality.request();
        for id in 0..5u32 {
            req.token();
            q.piece(id, "ab");
            q.logprob_top_k(0.0, &[0.0]);
        }
        q.finish(&req);
        req.finish(Finish::Stop);
    });
    let map = fields
        .0
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    assert_eq!(
        map.get("tokenmeter.refusal").map(String::as_str),
        Some("false")
    );
    assert_eq!(
        map.get("tokenmeter.output_chars").map(String::as_str),
        Some("10")
    );
    assert_eq!(
        map.get("tokenmeter.repetition").map(String::as_str),
        Some("0.0")
    );
    assert_eq!(
        map.get("tokenmeter.perplexity").map(String::as_str),
        Some("1.0")
    );
    assert_eq!(
        map.get("tokenmeter.mean_entropy").map(String::as_str),
        Some("0.0")
    );
    assert_eq!(
        map.get("tokenmeter.low_confidence_share")
            .map(String::as_str),
        Some("0.0")
    );
}

#[test]
fn refusal_phrases_defaults_typographic_apostrophes_and_custom_lists() {
    let meter = mock_meter();
    let run = |quality: &QualityMonitor, pieces: &[&str]| {
        let req = meter.request().start();
        let mut q = quality.request();
        for p in pieces {
            q.text(p);
        }
        q.finish(&req).refusal
    };
    let default = QualityMonitor::new(&meter, QualityConfig::default()).expect("monitor");
    assert!(run(&default, &["I can\u{2019}t ", "help with ", "that."]));
    assert!(run(&default, &["AS AN AI LANGUAGE", " MODEL, ..."]));
    assert!(!run(
        &default,
        &["Here is how to help with that: ", "first, ..."]
    ));
    let custom = QualityMonitor::new(&meter, QualityConfig::default().refusal_phrases(["nope"]))
        .expect("monitor");
    assert!(run(&custom, &["No", "PE"]));
    assert!(!run(&custom, &["I cannot help with that."]));
    let off = QualityMonitor::new(
        &meter,
        QualityConfig::default().refusal_phrases(Vec::<String>::new()),
    )
    .expect("monitor");
    assert!(!run(&off, &["I cannot help with that."]));
    assert_eq!(default.totals().refusals, 2);
}

#[test]
fn output_length_comes_from_the_guard_when_only_text_is_fed() {
    let meter = mock_meter();
    let mut rec = BaselineRecorder::new();
    rec.observe_request(4, 3);
    let drift = Arc::new(DriftMonitor::new(&meter, rec.baseline(), 4));
    let quality = QualityMonitor::new(&meter, QualityConfig::default().drift(Arc::clone(&drift)))
        .expect("monitor");

    // Text only, no ids: the guard's three tokens are the output length.
    let mut req = meter.request().prompt_tokens(4).start();
    let mut q = quality.request();
    for piece in ["Par", "is", "."] {
        req.token();
        q.text(piece);
    }
    let r = q.finish(&req);
    req.finish(Finish::Stop);
    assert_eq!((r.tokens, r.empty), (0, false));

    // Neither text nor ids (logprobs only): not empty, the guard saw two tokens.
    let mut req = meter.request().prompt_tokens(4).start();
    let mut q = quality.request();
    for _ in 0..2 {
        req.token();
        q.logprob(-0.1);
    }
    let r = q.finish(&req);
    req.finish(Finish::Stop);
    assert!(!r.empty);
    assert_eq!(quality.totals().empty, 0);

    let live = drift.window_baseline();
    let mut want = BaselineRecorder::new();
    want.observe_request(4, 3);
    want.observe_request(4, 2);
    assert_eq!(live.output_length, want.baseline().output_length);
    assert_eq!(live.prompt_length, want.baseline().prompt_length);
}

/// Counts its calls.
struct Counting(std::sync::atomic::AtomicU64);

impl tokenmeter_quality::Scorer for Counting {
    fn name(&self) -> &str {
        "counting"
    }
    fn score(&self, _: &str) -> Option<f64> {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(0.5)
    }
}

#[test]
fn a_second_finish_runs_no_scorer_and_returns_the_first_report() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let meter = mock_meter();
        let scorer = Arc::new(Counting(0.into()));
        let quality = QualityMonitor::new(
            &meter,
            QualityConfig::default().scorer(Arc::clone(&scorer) as _),
        )
        .expect("monitor");
        let mut req = meter.request().start();
        let mut q = quality.request();
        req.token();
        q.piece(1, "I cannot.");
        let first = q.finish(&req);
        q.piece(2, " Sure!"); // after finish: not part of the report
        let second = q.finish(&req);
        req.finish(Finish::Stop);
        assert_eq!(first, second);
        assert_eq!(first.scores, vec![Some(0.5)]);
        assert_eq!(scorer.0.load(std::sync::atomic::Ordering::Relaxed), 1);
        let v = values(&snap);
        assert_eq!(counter(&v, &meter, "quality_requests", &[]), 1);
        assert_eq!(
            hist(&v, &meter, "quality_score", &[("scorer", "counting")]),
            vec![0.5]
        );
        // After reset the monitor finishes (and scores) again.
        q.reset();
        let req = meter.request().start();
        q.finish(&req);
        assert_eq!(scorer.0.load(std::sync::atomic::Ordering::Relaxed), 2);
    });
}

#[test]
fn overflow_is_counted_once_per_measurement_that_went_to_other() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let meter = mock_meter();
        let quality = QualityMonitor::new(
            &meter,
            QualityConfig::default()
                .name_cap(2)
                .keywords(["a", "b", "c", "c", "d"])
                .keyword_cap(2),
        )
        .expect("monitor");
        for f in ["pii", "jailbreak", "x", "x", "y", "x", "pii"] {
            quality.safety_filter_triggered(f);
        }
        // A scorer named `other` below the cap is an ordinary name; past the cap, every
        // record that lands in `other` counts once (the meaning `labels.overflow` has
        // everywhere, core's request labels included).
        for (name, score) in [
            ("other", 0.1),
            ("toxicity", 0.2),
            ("x", 0.3),
            ("x", 0.4),
            ("y", 0.5),
            ("toxicity", 0.6),
            ("other", 0.7),
        ] {
            quality.record_score(name, score);
        }
        let v = values(&snap);
        let safety = |f| counter(&v, &meter, "quality_safety_triggers", &[("filter", f)]);
        assert_eq!(
            (safety("pii"), safety("jailbreak"), safety("other")),
            (2, 1, 4)
        );
        let overflow = |l| counter(&v, &meter, "label_overflow", &[("label", l)]);
        assert_eq!(overflow("filter"), 4); // x, x, y, x
        assert_eq!(overflow("scorer"), 3); // x, x, y
        assert_eq!(overflow("keyword"), 0); // c and d are past the cap, but never matched
        assert_eq!(
            hist(&v, &meter, "quality_score", &[("scorer", "toxicity")]),
            vec![0.2, 0.6]
        );
        assert_eq!(
            hist(&v, &meter, "quality_score", &[("scorer", "other")]),
            vec![0.1, 0.3, 0.4, 0.5, 0.7]
        );
    });
}

#[test]
fn a_monitor_built_under_one_recorder_records_to_the_next() {
    let (first, second) = (DebuggingRecorder::new(), DebuggingRecorder::new());
    let (snap1, snap2) = (first.snapshotter(), second.snapshotter());
    let meter = mock_meter();
    let mut rec = BaselineRecorder::new();
    for _ in 0..4 {
        rec.observe_request(5, 1);
    }
    let (quality, drift) = metrics::with_local_recorder(&first, || {
        let drift = Arc::new(DriftMonitor::new(&meter, rec.baseline(), 4));
        let config = QualityConfig::default()
            .keywords(["paris", "london"])
            .keyword_cap(1)
            .scorer(Arc::new(LexiconSentiment::default()))
            .drift(Arc::clone(&drift));
        let quality = QualityMonitor::new(&meter, config).expect("monitor");
        quality.safety_filter_triggered("pii");
        (quality, drift)
    });
    let one = |q: &QualityMonitor| {
        let mut req = meter.request().prompt_tokens(5).start();
        let mut r = q.request();
        req.token();
        r.piece(1, "paris, london: great");
        r.finish(&req);
        req.finish(Finish::Stop);
    };
    metrics::with_local_recorder(&second, || {
        for _ in 0..4 {
            one(&quality);
        }
        quality.safety_filter_triggered("pii");
        quality.record_score("toxicity", 0.25);
        quality.record_feedback("r1", 1.0);
    });
    let v2 = values(&snap2);
    assert_eq!(counter(&v2, &meter, "quality_requests", &[]), 4);
    assert_eq!(
        counter(&v2, &meter, "quality_keywords", &[("keyword", "paris")]),
        4
    );
    assert_eq!(
        counter(&v2, &meter, "quality_keywords", &[("keyword", "other")]),
        4
    );
    assert_eq!(
        counter(&v2, &meter, "label_overflow", &[("label", "keyword")]),
        4
    );
    assert_eq!(
        hist(
            &v2,
            &meter,
            "quality_score",
            &[("scorer", "lexicon_sentiment")]
        ),
        vec![1.0; 4]
    );
    assert_eq!(
        counter(&v2, &meter, "quality_safety_triggers", &[("filter", "pii")]),
        1
    );
    assert_eq!(
        hist(&v2, &meter, "quality_score", &[("scorer", "toxicity")]),
        vec![0.25]
    );
    assert_eq!(hist(&v2, &meter, "quality_feedback", &[]), vec![1.0]);
    assert_eq!(gauge(&v2, &meter, "quality_drift_window", &[]), Some(4.0));
    assert_eq!(
        gauge(
            &v2,
            &meter,
            "quality_drift_psi",
            &[("feature", "prompt_length")]
        ),
        Some(0.0)
    );
    // The first recorder kept only what happened under it.
    let v1 = values(&snap1);
    assert_eq!(counter(&v1, &meter, "quality_requests", &[]), 0);
    assert_eq!(
        counter(&v1, &meter, "quality_safety_triggers", &[("filter", "pii")]),
        1
    );
    // No request was monitored under it, so no keyword match went to `other`.
    assert_eq!(
        counter(&v1, &meter, "label_overflow", &[("label", "keyword")]),
        0
    );
    assert_eq!(gauge(&v1, &meter, "quality_drift_window", &[]), None);
    assert_eq!(drift.evaluate().window_requests, 4);
}
