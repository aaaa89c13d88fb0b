//! Sampled outputs for human review: deterministic weighted sampling, the text-capture gate,
//! bounded queues and files, counted I/O errors, redaction, and the join with feedback.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokenmeter_core::{Finish, MaskEmailsAndNumbers, Meter, TextKind, Verbatim, catalog};
use tokenmeter_quality::review::{
    FeedbackValue, JsonlFiles, Offer, ReviewConfig, ReviewEntry, ReviewError, ReviewSink,
    ReviewText, SampleReason, join, join_entries,
};
use tokenmeter_quality::{LogprobSummary, QualityReport};

fn capturing_meter() -> Meter {
    let (clock, _mock) = tokenmeter_core::clock::Clock::mock();
    Meter::builder()
        .model("m")
        .clock(clock)
        .capture_text(Verbatim)
        .build()
}

fn refused() -> QualityReport {
    QualityReport {
        refusal: true,
        ..QualityReport::default()
    }
}

/// Offers one finished request with id `id`.
fn offer(
    sink: &ReviewSink,
    meter: &Meter,
    id: &str,
    q: &QualityReport,
    text: ReviewText<'_>,
) -> Offer {
    let mut req = meter.request().request_id(id).start();
    req.token();
    let o = sink.offer(&req, q, text);
    req.finish(Finish::Stop);
    o
}

/// A fresh, empty directory under the target's temp dir.
fn temp_dir(name: &str) -> PathBuf {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("review-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let _ = std::fs::remove_file(&base);
    base
}

fn counter(
    s: &Snapshotter,
    meter: &Meter,
    def: &'static catalog::MetricDef,
    extra: &[(&str, &str)],
) -> u64 {
    let name = meter.metric_names().name(def).to_owned();
    let want = meter.metric_names().labels(extra);
    s.snapshot()
        .into_vec()
        .into_iter()
        .find_map(|(k, _, _, v)| {
            let key = k.key();
            let labels: Vec<_> = key.labels().cloned().collect();
            (key.name() == name && labels == want).then_some(v)
        })
        .map_or(0, |v| match v {
            DebugValue::Counter(c) => c,
            other => panic!("not a counter: {other:?}"),
        })
}

fn review_files(dir: &Path) -> Vec<(String, u64)> {
    let mut v: Vec<(String, u64)> = std::fs::read_dir(dir)
        .expect("dir")
        .map(|e| {
            let e = e.expect("entry");
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().expect("meta").len(),
            )
        })
        .collect();
    v.sort();
    v
}

#[test]
fn weights_raise_the_probability_exactly_and_are_deterministic() {
    let ids: Vec<String> = (0..10_000).map(|i| format!("req-{i}")).collect();
    let uniform = ReviewConfig::new(0.05, Verbatim);
    let weighted = ReviewConfig::new(0.05, Verbatim).weight_refused(4.0);
    let at_20 = ReviewConfig::new(0.2, Verbatim);
    let plain = QualityReport::default();
    let drawn = |c: &ReviewConfig, q: &QualityReport| -> Vec<&str> {
        ids.iter()
            .filter(|id| c.decide(id, q, None).is_some())
            .map(String::as_str)
            .collect()
    };
    let base = drawn(&uniform, &plain);
    // Deterministic: the same ids every time; binomial(10000, 0.05) is 500 ± 66 at 3 sigma.
    assert_eq!(base, drawn(&uniform, &plain));
    assert!((434..=566).contains(&base.len()), "{}", base.len());
    // Unrefused requests are unaffected by the refusal weight.
    assert_eq!(drawn(&weighted, &plain), base);
    // A refused request at 0.05 × 4 is drawn exactly when one at a share of 0.2 would be.
    let refusals = drawn(&weighted, &refused());
    assert_eq!(refusals, drawn(&at_20, &plain));
    assert!(
        (1880..=2120).contains(&refusals.len()),
        "{}",
        refusals.len()
    );
    // ... and the uniform sample is a subset of it.
    assert!(base.iter().all(|id| refusals.contains(id)));
    let s = weighted
        .decide(refusals[0], &refused(), None)
        .expect("drawn");
    assert_eq!(s.reasons, vec![SampleReason::Refusal]);
    assert_eq!((s.weight, s.probability), (4.0, 0.2));

    // Weights multiply and the probability caps at 1: every such request is drawn.
    let unsure = QualityReport {
        refusal: true,
        logprobs: LogprobSummary {
            low_confidence_share: Some(0.4),
            ..LogprobSummary::default()
        },
        ..QualityReport::default()
    };
    let all = ReviewConfig::new(0.05, Verbatim)
        .weight_refused(4.0)
        .weight_low_confidence(0.3, 2.0)
        .weight_low_score(0.5, 3.0);
    assert_eq!(
        ids.iter()
            .filter(|id| all.decide(id, &unsure, Some(0.1)).is_some())
            .count(),
        10_000
    );
    let s = all.decide("x", &unsure, Some(0.1)).expect("p = 1");
    assert_eq!(
        s.reasons,
        vec![
            SampleReason::Refusal,
            SampleReason::LowConfidence,
            SampleReason::LowScore
        ]
    );
    assert_eq!((s.weight, s.probability), (24.0, 1.0));
    // Thresholds: a share below 0.3 and a score at 0.5 do not weigh.
    let sure = QualityReport {
        logprobs: LogprobSummary {
            low_confidence_share: Some(0.29),
            ..LogprobSummary::default()
        },
        ..QualityReport::default()
    };
    let by_score = ReviewConfig::new(0.05, Verbatim)
        .weight_low_confidence(0.3, 4.0)
        .weight_low_score(0.5, 4.0);
    assert_eq!(drawn(&by_score, &sure), base);
    assert_eq!(
        ids.iter()
            .filter(|id| by_score.decide(id, &sure, Some(0.5)).is_some())
            .count(),
        base.len()
    );
    assert_eq!(
        ids.iter()
            .filter(|id| by_score.decide(id, &sure, Some(0.49)).is_some())
            .count(),
        refusals.len()
    );
    // Another seed, another sample; a share of 0 draws nothing.
    assert_ne!(
        drawn(&ReviewConfig::new(0.05, Verbatim).seed(1), &plain),
        base
    );
    assert!(
        drawn(
            &ReviewConfig::new(0.0, Verbatim).weight_refused(1e9),
            &refused()
        )
        .is_empty()
    );
}

#[test]
fn offers_count_what_decide_draws() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let meter = capturing_meter();
        let config = ReviewConfig::new(0.1, Verbatim)
            .weight_refused(5.0)
            .capacity(2_000);
        let (sink, rx) = ReviewSink::channel(&meter, config.clone()).expect("sink");
        let mut want = 0;
        for i in 0..1_000 {
            let q = if i % 2 == 0 {
                refused()
            } else {
                QualityReport::default()
            };
            let id = format!("r-{i}");
            want += usize::from(config.decide(&id, &q, None).is_some());
            let o = offer(&sink, &meter, &id, &q, ReviewText::new("p", "o"));
            assert_eq!(
                matches!(o, Offer::Queued(_)),
                config.decide(&id, &q, None).is_some()
            );
        }
        let got = rx.try_iter().count();
        assert_eq!(got, want);
        assert_eq!(sink.stats().sampled, want as u64);
        assert_eq!(
            counter(&snap, &meter, catalog::quality::REVIEW_SAMPLED, &[]),
            want as u64
        );
    });
}

/// The WARN events' messages logged while `f` runs.
fn warnings<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    use std::sync::Mutex;
    use tracing::field::{Field, Visit};
    use tracing::{Event, Level, Metadata, Subscriber, span};
    struct Message(String);
    impl Visit for Message {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }
    struct Warnings(Arc<Mutex<Vec<String>>>);
    impl Subscriber for Warnings {
        fn enabled(&self, m: &Metadata<'_>) -> bool {
            *m.level() == Level::WARN
        }
        fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
            span::Id::from_u64(1)
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, e: &Event<'_>) {
            let mut m = Message(String::new());
            e.record(&mut m);
            self.0.lock().expect("not poisoned").push(m.0);
        }
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    }
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = tracing::subscriber::with_default(Warnings(seen.clone()), || {
        tracing::callsite::rebuild_interest_cache();
        f()
    });
    let seen = seen.lock().expect("not poisoned").clone();
    (out, seen)
}

#[test]
fn nothing_is_sampled_without_text_capture() {
    let meter = Meter::default();
    let ((sink, rx), warned) =
        warnings(|| ReviewSink::channel(&meter, ReviewConfig::new(1.0, Verbatim)).expect("sink"));
    // The sink says so once, when it is created on a meter that does not capture text.
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(warned[0].contains("does not capture text"), "{warned:?}");
    let (_, warned) = warnings(|| {
        ReviewSink::channel(&capturing_meter(), ReviewConfig::new(1.0, Verbatim)).expect("sink")
    });
    assert_eq!(warned, Vec::<String>::new());
    for i in 0..10 {
        let o = offer(
            &sink,
            &meter,
            &format!("r-{i}"),
            &refused(),
            ReviewText::new("p", "o"),
        );
        assert_eq!(o, Offer::NoTextCapture);
    }
    assert_eq!(rx.try_iter().count(), 0);
    assert_eq!(sink.stats().sampled, 0);
}

#[test]
fn a_full_queue_drops_and_counts_without_blocking() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let meter = capturing_meter();
        let (sink, rx) = ReviewSink::channel(&meter, ReviewConfig::new(1.0, Verbatim).capacity(2))
            .expect("sink");
        let offers: Vec<Offer> = (0..5)
            .map(|i| {
                offer(
                    &sink,
                    &meter,
                    &format!("r-{i}"),
                    &QualityReport::default(),
                    ReviewText::new("p", "o"),
                )
            })
            .collect();
        assert_eq!(
            offers
                .iter()
                .filter(|o| matches!(o, Offer::Queued(_)))
                .count(),
            2
        );
        assert_eq!(
            offers
                .iter()
                .filter(|o| matches!(o, Offer::Dropped(_)))
                .count(),
            3
        );
        assert!(matches!(
            sink.feedback("r-0", FeedbackValue::score(1.0)),
            Err(ReviewError::Full)
        ));
        let st = sink.stats();
        assert_eq!((st.sampled, st.dropped_full, st.feedback), (2, 4, 0));
        let full = [("reason", "full")];
        assert_eq!(
            counter(&snap, &meter, catalog::quality::REVIEW_DROPPED, &full),
            4
        );
        // Draining makes room again.
        let ids: Vec<String> = rx
            .try_iter()
            .map(|e| match e {
                ReviewEntry::Review(r) => r.request_id,
                ReviewEntry::Feedback(f) => f.request_id,
            })
            .collect();
        assert_eq!(ids, ["r-0", "r-1"]);
        sink.feedback("r-0", FeedbackValue::score(1.0))
            .expect("room");
        assert_eq!(
            counter(&snap, &meter, catalog::quality::REVIEW_FEEDBACK, &[]),
            1
        );
    });
}

#[test]
fn records_carry_redacted_text_proxies_and_identity() {
    let redactor = Arc::new(MaskEmailsAndNumbers::new());
    // The model version comes from the meter when the config names none.
    let meter = Meter::builder()
        .model("m")
        .model_version("q4_1")
        .capture_text(Arc::clone(&redactor))
        .build();
    let config = ReviewConfig::new(1.0, redactor).max_text_bytes(24);
    let (sink, rx) = ReviewSink::channel(&meter, config).expect("sink");
    let q = QualityReport {
        refusal: true,
        repetition: Some(0.25),
        scores: vec![Some(0.5), None],
        logprobs: LogprobSummary {
            perplexity: Some(1.5),
            low_confidence_share: Some(0.2),
            ..LogprobSummary::default()
        },
        ..QualityReport::default()
    };
    let text = ReviewText::new(
        "mail ann@example.com please, and more words",
        "call 555-123-4567",
    )
    .variant("b")
    .score(0.75);
    assert!(matches!(
        offer(&sink, &meter, "r-1", &q, text),
        Offer::Queued(_)
    ));
    sink.feedback(
        "r-1",
        FeedbackValue::score(-1.0)
            .label("wrong")
            .comment("ask me at 555 123 4567"),
    )
    .expect("queued");
    assert!(matches!(
        sink.feedback("r-1", FeedbackValue::score(f64::NAN)),
        Err(ReviewError::NonFiniteScore(_))
    ));
    let joined = join_entries(rx.try_iter());
    let row = &joined.rows[0];
    let r = &row.record;
    assert_eq!(r.request_id, "r-1");
    assert_eq!(
        (
            r.model.as_str(),
            r.model_version.as_deref(),
            r.variant.as_deref()
        ),
        ("m", Some("q4_1"), Some("b"))
    );
    // Cut to 24 bytes first, then redacted.
    assert_eq!(r.prompt.as_deref(), Some("mail [email] ple"));
    assert!(r.prompt_truncated && !r.output_truncated);
    assert_eq!(r.output.as_deref(), Some("call [number]"));
    assert!(r.quality.refusal);
    assert_eq!(r.quality.repetition, Some(0.25));
    assert_eq!(r.quality.perplexity, Some(1.5));
    assert_eq!(r.quality.low_confidence_share, Some(0.2));
    assert_eq!(r.quality.scores, vec![Some(0.5), None]);
    assert_eq!(r.quality.score, Some(0.75));
    assert_eq!((r.sampled.probability, r.sampled.weight), (1.0, 1.0));
    assert!(r.time_ms > 1_600_000_000_000);
    assert_eq!(row.feedback.len(), 1);
    assert_eq!(
        row.feedback[0].value.comment.as_deref(),
        Some("ask me at [number]")
    );
    assert_eq!(row.feedback[0].value.label.as_deref(), Some("wrong"));
}

#[test]
fn a_panicking_redactor_drops_the_record_and_counts_it() {
    let meter = capturing_meter();
    let boom = |_: TextKind, _: &str| -> String { panic!("redactor bug") };
    let (sink, rx) = ReviewSink::channel(&meter, ReviewConfig::new(1.0, boom)).expect("sink");
    let o = offer(
        &sink,
        &meter,
        "r-1",
        &QualityReport::default(),
        ReviewText::new("p", "o"),
    );
    assert!(matches!(o, Offer::Dropped(_)));
    assert_eq!(rx.try_iter().count(), 0);
    assert_eq!(sink.stats().dropped_redactor_panic, 1);
}

#[test]
fn rotation_keeps_disk_bounded_to_whole_lines() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let dir = temp_dir("rotate");
        let meter = capturing_meter();
        let q = QualityReport::default();
        // One record first, to learn a line's length (every id below has the same length).
        let probe = temp_dir("rotate-probe");
        let sink = ReviewSink::jsonl(
            &meter,
            ReviewConfig::new(1.0, Verbatim),
            JsonlFiles::new(&probe),
        )
        .expect("sink");
        offer(
            &sink,
            &meter,
            "r-00",
            &q,
            ReviewText::new("prompt", "output"),
        );
        sink.flush().expect("flush");
        let line = review_files(&probe)[0].1;
        assert_eq!(sink.stats().bytes, line);

        // Three lines fit a file, not four; two files are kept.
        let files = JsonlFiles::new(&dir)
            .max_file_bytes(3 * line + line / 2)
            .max_files(2);
        let sink = ReviewSink::jsonl(&meter, ReviewConfig::new(1.0, Verbatim), files.clone())
            .expect("sink");
        for i in 0..20 {
            offer(
                &sink,
                &meter,
                &format!("r-{i:02}"),
                &q,
                ReviewText::new("prompt", "output"),
            );
        }
        sink.flush().expect("flush");
        // 20 lines: files 1..=6 hold 3 each, file 7 holds 2; files 1..=5 were deleted.
        assert_eq!(
            review_files(&dir),
            vec![
                ("review-000006.jsonl".to_owned(), 3 * line),
                ("review-000007.jsonl".to_owned(), 2 * line),
            ]
        );
        assert!(5 * line <= files.disk_bound());
        let st = sink.stats();
        assert_eq!((st.written, st.bytes, st.write_errors), (20, 20 * line, 0));
        // The counter is the meter's: the probe sink's line counts too.
        assert_eq!(
            counter(&snap, &meter, catalog::quality::REVIEW_BYTES, &[]),
            21 * line
        );
        let kept: Vec<String> = join(&dir)
            .expect("join")
            .rows
            .into_iter()
            .map(|r| r.record.request_id)
            .collect();
        assert_eq!(kept, ["r-15", "r-16", "r-17", "r-18", "r-19"]);

        // A new sink on the same directory continues the numbering and keeps the bound.
        drop(sink);
        let sink =
            ReviewSink::jsonl(&meter, ReviewConfig::new(1.0, Verbatim), files).expect("sink");
        offer(
            &sink,
            &meter,
            "r-20",
            &q,
            ReviewText::new("prompt", "output"),
        );
        sink.flush().expect("flush");
        assert_eq!(
            review_files(&dir),
            vec![
                ("review-000007.jsonl".to_owned(), 2 * line),
                ("review-000008.jsonl".to_owned(), line),
            ]
        );

        // A line longer than a file is dropped and counted, not written.
        let tiny = temp_dir("rotate-tiny");
        let sink = ReviewSink::jsonl(
            &meter,
            ReviewConfig::new(1.0, Verbatim),
            JsonlFiles::new(&tiny).max_file_bytes(line - 1),
        )
        .expect("sink");
        offer(
            &sink,
            &meter,
            "r-00",
            &q,
            ReviewText::new("prompt", "output"),
        );
        sink.flush().expect("flush");
        assert_eq!(sink.stats().dropped_oversize, 1);
        assert!(review_files(&tiny).is_empty());
        assert_eq!(
            counter(
                &snap,
                &meter,
                catalog::quality::REVIEW_DROPPED,
                &[("reason", "oversize")]
            ),
            1
        );
    });
}

#[test]
fn write_errors_are_counted_and_the_caller_is_unaffected() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let dir = temp_dir("errors");
        let meter = capturing_meter();
        let sink = ReviewSink::jsonl(
            &meter,
            ReviewConfig::new(1.0, Verbatim),
            JsonlFiles::new(&dir),
        )
        .expect("sink");
        // The directory is replaced by a plain file: no review file can be created in it.
        std::fs::remove_dir(&dir).expect("rmdir");
        std::fs::write(&dir, b"not a directory").expect("file");
        for i in 0..3 {
            let o = offer(
                &sink,
                &meter,
                &format!("r-{i}"),
                &QualityReport::default(),
                ReviewText::new("p", "o"),
            );
            assert!(matches!(o, Offer::Queued(_)));
        }
        sink.flush().expect("the writer survives");
        let st = sink.stats();
        assert_eq!((st.sampled, st.written, st.write_errors), (3, 0, 3));
        assert!(
            st.last_error
                .as_deref()
                .is_some_and(|e| e.contains("review-000001.jsonl")),
            "{st:?}"
        );
        assert_eq!(
            counter(&snap, &meter, catalog::quality::REVIEW_WRITE_ERRORS, &[]),
            3
        );
        // Once the directory is back, the next entry is written.
        std::fs::remove_file(&dir).expect("rm");
        std::fs::create_dir(&dir).expect("mkdir");
        offer(
            &sink,
            &meter,
            "r-3",
            &QualityReport::default(),
            ReviewText::new("p", "o"),
        );
        sink.flush().expect("flush");
        assert_eq!(sink.stats().written, 1);
        assert_eq!(join(&dir).expect("join").rows[0].record.request_id, "r-3");
    });
}

#[test]
fn join_by_request_id_from_files() {
    let dir = temp_dir("join");
    let meter = capturing_meter();
    let sink = ReviewSink::jsonl(
        &meter,
        ReviewConfig::new(1.0, Verbatim),
        JsonlFiles::new(&dir),
    )
    .expect("sink");
    for id in ["a", "b", "c"] {
        offer(
            &sink,
            &meter,
            id,
            &QualityReport::default(),
            ReviewText::new("p", id),
        );
    }
    sink.feedback("b", FeedbackValue::score(1.0))
        .expect("queued");
    sink.feedback("b", FeedbackValue::default().label("correct"))
        .expect("queued");
    sink.feedback("zz", FeedbackValue::score(0.0))
        .expect("queued");
    sink.flush().expect("flush");
    // A line cut short by a crash is reported, not fatal.
    let file = dir.join("review-000001.jsonl");
    let mut text = std::fs::read_to_string(&file).expect("read");
    text.push_str("{\"type\":\"review\",\"request_");
    std::fs::write(&file, text).expect("write");

    let j = join(&dir).expect("join");
    let rows: Vec<(&str, usize)> = j
        .rows
        .iter()
        .map(|r| (r.record.request_id.as_str(), r.feedback.len()))
        .collect();
    assert_eq!(rows, [("a", 0), ("b", 2), ("c", 0)]);
    assert_eq!(j.rows[1].feedback[0].value.score, Some(1.0));
    assert_eq!(
        j.rows[1].feedback[1].value.label.as_deref(),
        Some("correct")
    );
    assert_eq!(j.rows[2].record.output.as_deref(), Some("c"));
    assert_eq!(j.unmatched_feedback.len(), 1);
    assert_eq!(j.unmatched_feedback[0].request_id, "zz");
    assert_eq!(j.bad_lines.len(), 1);
    assert_eq!(
        (j.bad_lines[0].path.as_path(), j.bad_lines[0].line),
        (file.as_path(), 7)
    );
    assert!(matches!(
        join(dir.join("missing")),
        Err(ReviewError::Io { .. })
    ));
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let meter = capturing_meter();
    let err = |c: ReviewConfig| ReviewSink::channel(&meter, c).err().map(|e| e.to_string());
    assert_eq!(
        err(ReviewConfig::new(1.5, Verbatim)).as_deref(),
        Some("review sink configuration: rate 1.5 is not in [0, 1]")
    );
    assert!(err(ReviewConfig::new(f64::NAN, Verbatim)).is_some());
    assert!(err(ReviewConfig::new(0.1, Verbatim).weight_refused(-1.0)).is_some());
    assert!(err(ReviewConfig::new(0.1, Verbatim).weight_low_score(0.5, f64::INFINITY)).is_some());
    assert!(err(ReviewConfig::new(0.1, Verbatim).capacity(0)).is_some());
    assert_eq!(
        err(ReviewConfig::new(0.1, Verbatim).weight_low_confidence(f64::NAN, 2.0)).as_deref(),
        Some("review sink configuration: low-confidence threshold NaN is not finite")
    );
    assert!(err(ReviewConfig::new(0.1, Verbatim)).is_none());
    let dir = temp_dir("config");
    let files = JsonlFiles::new(&dir).max_files(0);
    assert!(matches!(
        ReviewSink::jsonl(&meter, ReviewConfig::new(0.1, Verbatim), files),
        Err(ReviewError::Config(_))
    ));
    // A directory that cannot be created: a path under a plain file.
    std::fs::write(&dir, b"x").expect("file");
    let under = JsonlFiles::new(dir.join("sub"));
    assert!(matches!(
        ReviewSink::jsonl(&meter, ReviewConfig::new(0.1, Verbatim), under),
        Err(ReviewError::Io { .. })
    ));
}
