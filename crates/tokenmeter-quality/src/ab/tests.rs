//! The monitor end to end with the mock clock: windows, bounds, the variant cap, and a readout
//! of a degraded variant.

use std::collections::BTreeMap;
use std::time::Duration;

use tokenmeter_core::{ErrorKind, Finish, Meter, Slo};

use super::*;
use crate::logprobs::LogprobSummary;

fn report(refusal: bool, perplexity: f64) -> QualityReport {
    QualityReport {
        refusal,
        logprobs: LogprobSummary {
            perplexity: Some(perplexity),
            ..LogprobSummary::default()
        },
        ..QualityReport::default()
    }
}

/// A request of `tokens` tokens, `ttft_ms` to the first and `gap_ms` between the others.
fn request(
    meter: &Meter,
    mock: &quanta::Mock,
    ttft_ms: u64,
    gap_ms: u64,
    tokens: u32,
) -> tokenmeter_core::RequestGuard {
    let mut req = meter.request().start();
    mock.increment(Duration::from_millis(ttft_ms));
    req.token();
    for _ in 1..tokens {
        mock.increment(Duration::from_millis(gap_ms));
        req.token();
    }
    req
}

#[test]
fn a_window_holds_what_was_recorded() {
    let (clock, mock) = quanta::Clock::mock();
    let meter = Meter::builder()
        .clock(clock)
        .slo(Slo::new().ttft(Duration::from_millis(100)))
        .build();
    let ab = AbMonitor::new(&meter, AbConfig::default()).expect("valid config");
    let mut fast = request(&meter, &mock, 50, 10, 3);
    let s = fast.finish(Finish::Stop);
    ab.record("a", &s, Some(&report(true, 2.5)));
    let mut slow = request(&meter, &mock, 150, 10, 1);
    let s = slow.finish(Finish::Length);
    ab.record("a", &s, None);
    let mut failed = meter.request().start();
    let s = failed.fail(ErrorKind::Oom);
    ab.record("a", &s, None);
    let mut gone = request(&meter, &mock, 20, 10, 2);
    let s = gone.finish(Finish::Cancelled);
    ab.record("a", &s, Some(&report(false, 4.0)));
    ab.record_golden("a", 0.75);
    ab.record_golden("a", f64::NAN);

    let w = ab.window("a");
    assert_eq!(w.ttft, vec![0.05, 0.15, 0.02]);
    assert_eq!(w.tpot, vec![0.01, 0.01]);
    assert_eq!(
        (w.succeeded, w.failed, w.cancelled, w.ended()),
        (2, 1, 1, 4)
    );
    assert_eq!(w.goodput, 1, "only the fast success met the 100 ms TTFT");
    assert_eq!((w.quality_requests, w.refusals), (2, 1));
    assert_eq!(w.perplexity, vec![2.5, 4.0]);
    assert_eq!(w.golden, vec![0.75], "the NaN score is not kept");
    assert_eq!(
        ab.window("z"),
        VariantWindow {
            variant: "z".into(),
            ..VariantWindow::default()
        }
    );
    assert_eq!(ab.variants(), vec!["a".to_owned()]);
}

#[test]
fn old_requests_leave_the_window_and_capacity_drops_the_oldest() {
    let (clock, mock) = quanta::Clock::mock();
    let meter = Meter::builder().clock(clock).build();
    let config = AbConfig::default()
        .window(Duration::from_secs(60))
        .capacity(3);
    let ab = AbMonitor::new(&meter, config).expect("valid config");
    for i in 0..5 {
        ab.record_golden("a", f64::from(i));
    }
    let w = ab.window("a");
    assert_eq!(w.golden, vec![2.0, 3.0, 4.0]);
    assert_eq!(w.truncated, 2);
    mock.increment(Duration::from_secs(59));
    ab.record_golden("a", 5.0);
    assert_eq!(ab.window("a").golden, vec![3.0, 4.0, 5.0]);
    mock.increment(Duration::from_secs(1));
    assert_eq!(
        ab.window("a").golden,
        vec![5.0],
        "60 s old: out of the window"
    );
}

#[test]
fn variants_past_the_cap_share_other_and_idle_ones_give_their_slot_back() {
    let (clock, mock) = quanta::Clock::mock();
    let meter = Meter::builder().clock(clock).build();
    let config = AbConfig::default()
        .max_variants(2)
        .window(Duration::from_secs(60));
    let ab = AbMonitor::new(&meter, config).expect("valid config");
    ab.record_golden("a", 1.0);
    ab.record_golden("b", 2.0);
    ab.record_golden("c", 3.0);
    ab.record_golden("d", 4.0);
    assert_eq!(ab.variants(), ["a", "b", "other"]);
    assert_eq!(ab.window(OTHER_VARIANT).golden, vec![3.0, 4.0]);
    mock.increment(Duration::from_secs(60));
    ab.record_golden("a", 5.0); // renews `a`; `b` has been idle for the window
    ab.record_golden("e", 6.0);
    assert_eq!(ab.variants(), ["a", "e", "other"]);
    assert_eq!(ab.window("a").golden, vec![5.0]);
}

#[test]
fn bad_configs_are_errors() {
    let meter = Meter::default();
    let bad = |c: AbConfig| AbMonitor::new(&meter, c).err();
    assert_eq!(
        bad(AbConfig::default().tests(AbTests::default().level(1.0))),
        Some(AbError::Level(1.0))
    );
    assert_eq!(
        bad(AbConfig::default().tests(AbTests::default().level(f64::NAN))).map(|e| e.to_string()),
        Some("significance level must be in (0, 1), got NaN".to_owned())
    );
    assert_eq!(
        bad(AbConfig::default().capacity(0)),
        Some(AbError::Zero("capacity"))
    );
    assert_eq!(
        AbError::Zero("capacity").to_string(),
        "the A/B config's capacity must be at least 1"
    );
    assert_eq!(
        bad(AbConfig::default().max_variants(0)),
        Some(AbError::Zero("max_variants"))
    );
    assert_eq!(
        bad(AbConfig::default().tests(AbTests::default().resamples(0))),
        Some(AbError::Zero("resamples"))
    );
    assert_eq!(
        bad(AbConfig::default().window(Duration::ZERO)),
        Some(AbError::Window)
    );
}

/// The scenario: B's answers get worse (higher perplexity, lower golden score, more
/// refusals) while its latency stays the same.
#[test]
fn a_degraded_variant_is_significant_on_quality_and_not_on_latency() {
    let (clock, mock) = quanta::Clock::mock();
    let meter = Meter::builder()
        .clock(clock)
        .slo(Slo::new().ttft(Duration::from_millis(400)))
        .build();
    let ab = AbMonitor::new(&meter, AbConfig::default()).expect("valid config");
    for i in 0..200u64 {
        for (variant, ppl_base, refuse_every) in [("a", 3.0, 50), ("b", 4.0, 8)] {
            // The same latencies in both variants: 200..=590 ms TTFT, 20..=29 ms gaps.
            let mut req = request(&meter, &mock, 200 + (i * 7) % 40 * 10, 20 + i % 10, 4);
            let s = req.finish(Finish::Stop);
            let q = report(i % refuse_every == 0, ppl_base + (i % 9) as f64 * 0.1);
            ab.record(variant, &s, Some(&q));
        }
    }
    for i in 0..40 {
        ab.record_golden("a", if i % 10 == 0 { 0.0 } else { 1.0 });
        ab.record_golden("b", if i % 2 == 0 { 0.0 } else { 1.0 });
    }
    let r = ab.readout("a", "b");
    let row = |m| r.row(m).expect("every metric has a row").clone();
    let v = |m| row(m).verdict;
    assert_eq!(v(AbMetric::TtftP50), Verdict::NotSignificant);
    assert_eq!(v(AbMetric::TpotP50), Verdict::NotSignificant);
    assert_eq!(row(AbMetric::TtftP50).difference, Some(0.0));
    assert_eq!(
        v(AbMetric::TtftP99),
        Verdict::InsufficientData,
        "200 < 1000"
    );
    assert_eq!(row(AbMetric::TtftP99).min_samples, Some(1000));
    assert_eq!(row(AbMetric::TtftP99).a, row(AbMetric::TtftP99).b);
    assert_eq!(
        v(AbMetric::ErrorRatio),
        Verdict::InsufficientData,
        "no errors anywhere"
    );
    assert_eq!(row(AbMetric::ErrorRatio).min_samples, None);
    // The same TTFTs on both sides: 21 of each 40 (200..=400 ms) meet the 400 ms SLO.
    let goodput = row(AbMetric::GoodputRatio);
    assert_eq!(
        (goodput.a, goodput.b, goodput.difference),
        (Some(0.525), Some(0.525), Some(0.0))
    );
    assert_eq!(goodput.p_value, Some(1.0));
    assert_eq!(goodput.verdict, Verdict::NotSignificant);

    let refusals = row(AbMetric::RefusalRate);
    assert_eq!(
        (refusals.a, refusals.b),
        (Some(4.0 / 200.0), Some(25.0 / 200.0))
    );
    assert_eq!(refusals.verdict, Verdict::Significant);
    let ppl = row(AbMetric::MeanPerplexity);
    assert!(
        (ppl.difference.unwrap_or(0.0) - 1.0).abs() < 1e-9,
        "{ppl:?}"
    );
    assert_eq!(ppl.verdict, Verdict::Significant);
    let golden = row(AbMetric::GoldenScore);
    assert_eq!((golden.a, golden.b), (Some(0.9), Some(0.5)));
    assert_eq!(golden.verdict, Verdict::Significant);
    let [lo, hi] = golden.interval.unwrap_or_default();
    assert!(lo < -0.4 && -0.4 < hi && hi < 0.0, "{lo} {hi}");

    // Serializable, and the table names every row.
    let json = serde_json::to_value(&r).expect("serializable");
    assert_eq!(json["rows"][8]["metric"], "golden_score");
    assert_eq!(json["rows"][8]["verdict"], "significant");
    assert_eq!(json["rows"][1]["verdict"], "insufficient_data");
    let back: Readout = serde_json::from_value(json).expect("round trip");
    assert_eq!(back, r);
    let table = r.to_string();
    assert_eq!(table.lines().count(), 2 + AbMetric::ALL.len());
    assert!(table.contains("insufficient data (< 1000)"), "{table}");
    assert!(
        table.contains("insufficient data (no events yet)"),
        "{table}"
    );
}

#[test]
fn the_table_names_a_and_b_and_prints_sub_ms_latencies_and_zero_p_values() {
    let a = VariantWindow {
        variant: "base".into(),
        ttft: vec![0.0005; 40],
        golden: vec![1.0; 30],
        ..VariantWindow::default()
    };
    let b = VariantWindow {
        variant: "cand".into(),
        ttft: vec![0.0004; 40],
        golden: vec![0.5; 30],
        ..VariantWindow::default()
    };
    let table = compare(&a, &b, &AbTests::default()).to_string();
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(
        lines[0],
        "A/B readout: base (A) vs cand (B), differences B - A (alpha 0.05, 95% intervals)"
    );
    let row = |metric: &str| -> Vec<&str> {
        let line = lines.iter().find(|l| l.starts_with(metric));
        line.map(|l| l.split_whitespace().collect())
            .unwrap_or_default()
    };
    assert_eq!(
        row("ttft_p50"),
        [
            "ttft_p50",
            "500µs",
            "400µs",
            "-100µs",
            "[-100µs,",
            "-100µs]",
            "-",
            "40",
            "40",
            "significant"
        ],
        "{table}"
    );
    // Two constant samples with different means: Welch's p is exactly 0.
    assert_eq!(
        row("golden_score"),
        [
            "golden_score",
            "1.000",
            "0.500",
            "-0.500",
            "[-0.500,",
            "-0.500]",
            "<",
            "1e-300",
            "30",
            "30",
            "significant"
        ],
        "{table}"
    );
    assert_eq!(super::readout::fmt_seconds(1.5), "1.50s");
    assert_eq!(super::readout::fmt_seconds(0.6289), "629ms");
    assert_eq!(super::readout::fmt_seconds(0.0000123), "12.3µs");
    assert_eq!(super::readout::fmt_seconds(0.0), "0s");
    assert_eq!(super::readout::fmt_seconds(0.9996), "1.00s");
    assert_eq!(super::readout::fmt_seconds(-0.0021), "-2.10ms");
    assert_eq!(super::readout::fmt_seconds(1234.0), "1230s");
}

#[test]
fn empty_windows_give_insufficient_data_everywhere() {
    let r = compare(
        &VariantWindow::default(),
        &VariantWindow::default(),
        &AbTests::default(),
    );
    assert_eq!(r.rows.len(), AbMetric::ALL.len());
    for row in &r.rows {
        assert_eq!(row.verdict, Verdict::InsufficientData, "{row:?}");
        assert_eq!((row.a, row.b, row.interval), (None, None, None));
    }
}

#[test]
fn variant_series_are_exported_under_the_variant_label() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let (clock, _mock) = quanta::Clock::mock();
        let meter = Meter::builder()
            .clock(clock)
            .model("m")
            .request_labels([VARIANT_LABEL], 4)
            .build();
        let ab = AbMonitor::new(&meter, AbConfig::default().max_variants(1)).expect("valid");
        // The meter takes `variant` as a request label (the A/B series do not reserve it).
        let mut req = meter.request().label(VARIANT_LABEL, "b").start();
        req.token();
        let s = req.finish(Finish::Stop);
        ab.record("b", &s, Some(&report(true, 2.0)));
        ab.record("b", &s, Some(&report(false, 4.0)));
        ab.record("b", &s, None);
        ab.record_golden("b", 0.5);
        ab.record_golden("c", 1.0); // past the cap of 1: under `other`
        ab.record_golden("c", f64::INFINITY); // ignored before the cap: no second overflow
        let names = meter.metric_names();
        let mut got = std::collections::BTreeMap::new();
        for (k, _, _, v) in snap.snapshot().into_vec() {
            let key = k.key();
            let labels: Vec<String> = key
                .labels()
                .filter(|l| l.key() == "variant" || l.key() == "label" || l.key() == "kind")
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            let value = match v {
                DebugValue::Counter(c) => vec![c as f64],
                DebugValue::Histogram(h) => h.into_iter().map(|x| x.into_inner()).collect(),
                DebugValue::Gauge(g) => vec![g.into_inner()],
            };
            got.insert(format!("{}{{{}}}", key.name(), labels.join(",")), value);
        }
        let name = |def| names.name(def).to_owned();
        use tokenmeter_core::catalog::{core, quality};
        let expect = [
            (
                format!("{}{{variant=b}}", name(quality::AB_REQUESTS)),
                vec![2.0],
            ),
            (
                format!("{}{{variant=b}}", name(quality::AB_REFUSALS)),
                vec![1.0],
            ),
            (
                format!("{}{{variant=b}}", name(quality::AB_PERPLEXITY)),
                vec![2.0, 4.0],
            ),
            (
                format!("{}{{variant=b}}", name(quality::AB_GOLDEN_SCORE)),
                vec![0.5],
            ),
            (
                format!("{}{{variant=other}}", name(quality::AB_GOLDEN_SCORE)),
                vec![1.0],
            ),
            (
                format!("{}{{label=ab_variant}}", name(core::LABEL_OVERFLOW)),
                vec![1.0],
            ),
            (
                format!("{}{{kind=ab_score_not_finite}}", name(core::MISUSE)),
                vec![1.0],
            ),
            (
                format!("{}{{variant=b}}", name(core::OUTPUT_TOKENS)),
                vec![1.0],
            ),
        ];
        for (k, v) in expect {
            assert_eq!(got.get(&k), Some(&v), "{k} in {got:?}");
        }
        let unknown = format!("{}{{kind=unknown_label}}", name(core::MISUSE));
        assert_eq!(got.get(&unknown), None, "{got:?}");
    });
}

/// 60 requests over variants a..e on a meter capping `variant` at 2: the overflows each cap
/// counted (by `label`), and the variants the monitor kept.
fn overflows(config: AbConfig) -> (BTreeMap<String, u64>, Vec<String>, usize) {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let (clock, _mock) = quanta::Clock::mock();
        let meter = Meter::builder()
            .clock(clock)
            .request_labels([VARIANT_LABEL], 2)
            .build();
        assert_eq!(meter.request_label_cap(VARIANT_LABEL), Some(2));
        assert_eq!(meter.request_label_cap("tenant"), None);
        let ab = AbMonitor::new(&meter, config).expect("valid");
        for i in 0..60 {
            let variant = ["a", "b", "c", "d", "e"][i % 5];
            let mut req = meter.request().label(VARIANT_LABEL, variant).start();
            req.token();
            let s = req.finish(Finish::Stop);
            ab.record(variant, &s, None);
        }
        let overflow = meter
            .metric_names()
            .name(tokenmeter_core::catalog::core::LABEL_OVERFLOW)
            .to_owned();
        let mut counted = BTreeMap::new();
        for (k, _, _, v) in snap.snapshot().into_vec() {
            let key = k.key();
            if let (true, DebugValue::Counter(c)) = (key.name() == overflow, v) {
                let label = key.labels().find(|l| l.key() == "label");
                counted.insert(label.map(|l| l.value().to_owned()).unwrap_or_default(), c);
            }
        }
        (counted, ab.variants(), ab.max_variants())
    })
}

#[test]
fn the_monitor_counts_its_own_overflows_and_follows_the_meters_cap() {
    // An explicit cap differing from the meter's: each cap counts under its own label.
    let (counted, variants, cap) = overflows(AbConfig::default().max_variants(3));
    assert_eq!(cap, 3);
    let expect = BTreeMap::from([("ab_variant".to_owned(), 24), ("variant".to_owned(), 36)]);
    assert_eq!(
        counted, expect,
        "c, d, e (36) for the meter; d, e (24) for the monitor"
    );
    assert_eq!(variants, ["a", "b", "c", "other"]);
    // By default the monitor takes the meter's cap: the same `other` as the latency series.
    let (counted, variants, cap) = overflows(AbConfig::default());
    assert_eq!(cap, 2);
    let expect = BTreeMap::from([("ab_variant".to_owned(), 36), ("variant".to_owned(), 36)]);
    assert_eq!(counted, expect);
    assert_eq!(variants, ["a", "b", "other"]);
    // No `variant` request label on the meter: the default of 8.
    let ab = AbMonitor::new(&Meter::default(), AbConfig::default()).expect("valid");
    assert_eq!(ab.max_variants(), 8);
}

#[test]
fn the_window_costs_what_the_docs_say() {
    // Module docs and docs/quality.md: 40 bytes per request, 16 per golden score.
    assert_eq!(std::mem::size_of::<(Instant, Obs)>(), 40);
    assert_eq!(std::mem::size_of::<(Instant, f64)>(), 16);
}
