//! Issue 12 §4: the default bucket bounds keep PromQL's p50 and p99 within one bucket of the
//! truth over the range real servers see (TTFT 5 ms to 10 min, TPOT and ITL 0.1 ms to 5 s,
//! E2E to 1 h, queue time to 10 min). Meters run on the mock clock into our Prometheus
//! recorder; quantiles are computed from its exposition exactly as PromQL's
//! `histogram_quantile` does (linear interpolation inside the bucket, the highest finite bound
//! once the rank falls in `+Inf`).

use std::time::Duration;

use tokenmeter_core::clock::Clock;
use tokenmeter_core::{Finish, Meter, catalog};
use tokenmeter_export::{Prometheus, PrometheusExporter};

const TTFT: &str = "gen_ai_server_time_to_first_token_seconds";
const TPOT: &str = "gen_ai_server_time_per_output_token_seconds";
const ITL: &str = "tokenmeter_inter_token_latency_seconds";
const E2E: &str = "gen_ai_server_request_duration_seconds";
const QUEUE: &str = "tokenmeter_request_queue_time_seconds";

/// Our Prometheus recorder, local to the test, and its renderer.
fn exporter() -> (PrometheusExporter, impl metrics::Recorder) {
    let mut exp = Prometheus::new()
        .without_listener()
        .build()
        .expect("prometheus recorder");
    let recorder = exp.take_recorder().expect("recorder");
    (exp, recorder)
}

/// The `(le, cumulative count)` pairs of `name` for `model`, in exposition order.
fn buckets(text: &str, name: &str, model: &str) -> Vec<(f64, f64)> {
    let prefix = format!("{name}_bucket{{");
    let model = format!("gen_ai_request_model=\"{model}\"");
    text.lines()
        .filter(|l| l.starts_with(&prefix) && l.contains(&model))
        .map(|l| {
            let le = l.split("le=\"").nth(1).and_then(|r| r.split('"').next());
            let le = match le.expect("le label") {
                "+Inf" => f64::INFINITY,
                v => v.parse().expect("le value"),
            };
            let count = l.rsplit(' ').next().expect("value").parse().expect("count");
            (le, count)
        })
        .collect()
}

/// PromQL's `histogram_quantile` (promql/quantile.go `BucketQuantile`) over cumulative buckets.
fn histogram_quantile(q: f64, buckets: &[(f64, f64)]) -> f64 {
    let n = buckets.len();
    assert!(n >= 2 && buckets[n - 1].0.is_infinite(), "{buckets:?}");
    let total = buckets[n - 1].1;
    assert!(total > 0.0, "no observations");
    let rank = q * total;
    let b = buckets
        .iter()
        .position(|(_, c)| *c >= rank)
        .expect("rank within total");
    if b == n - 1 {
        return buckets[n - 2].0;
    }
    let (start, below) = if b == 0 {
        (0.0, 0.0)
    } else {
        (buckets[b - 1].0, buckets[b - 1].1)
    };
    let (end, count) = (buckets[b].0, buckets[b].1 - below);
    start + (end - start) * ((rank - below) / count)
}

/// The index of the bucket holding `v` (`bounds.len()` for `+Inf`).
fn bucket_of(bounds: &[f64], v: f64) -> usize {
    bounds.iter().position(|b| v <= *b).unwrap_or(bounds.len())
}

/// The nearest-rank quantile of `values` (what the meter's snapshot reports).
fn true_quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.max(1) - 1]
}

/// Asserts PromQL's estimate is within one bucket of the truth, inside the finite bounds (no
/// saturation), and within the 2.5x that adjacent default bounds are apart.
fn assert_within_one_bucket(what: &str, bounds: &[f64], estimate: f64, truth: f64) {
    let (e, t) = (bucket_of(bounds, estimate), bucket_of(bounds, truth));
    assert!(
        t < bounds.len(),
        "{what}: truth {truth} beyond the last bound"
    );
    assert!(
        e.abs_diff(t) <= 1,
        "{what}: PromQL {estimate} (bucket {e}) vs truth {truth} (bucket {t})"
    );
    let ratio = estimate.max(truth) / estimate.min(truth);
    assert!(
        ratio <= 2.5,
        "{what}: PromQL {estimate} vs truth {truth} ({ratio:.2}x)"
    );
}

fn bounds(id: &str) -> &'static [f64] {
    catalog::by_id(id)
        .and_then(|d| d.buckets)
        .unwrap_or_else(|| panic!("{id} buckets"))
}

/// The request shape that puts `v` into the metric under test.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// First token `v` after arrival, then finish.
    Ttft,
    /// Two tokens `v` apart: TPOT = ITL = `v`.
    Gap,
    /// Finish `v` after arrival.
    E2e,
    /// Scheduled `v` after arrival.
    Queue,
}

fn run(meter: &Meter, mock: &quanta::Mock, shape: Shape, v: Duration) {
    let mut req = meter.request().prompt_tokens(8).start();
    match shape {
        Shape::Ttft | Shape::E2e => {
            mock.increment(v);
            req.token();
        }
        Shape::Gap => {
            req.token();
            mock.increment(v);
            req.token();
        }
        Shape::Queue => {
            mock.increment(v);
            req.scheduled();
            req.token();
        }
    }
    req.finish(Finish::Stop);
}

/// Runs `f` on a new mock-clock meter for `name` that records into `recorder`.
fn model(recorder: &dyn metrics::Recorder, name: &str, f: impl FnOnce(&Meter, &quanta::Mock)) {
    let (clock, mock) = Clock::mock();
    metrics::with_local_recorder(recorder, || {
        let meter = Meter::builder().model(name).clock(clock).build();
        f(&meter, &mock);
    });
}

#[test]
fn the_issues_cases_read_right_in_promql() {
    let (exp, rec) = exporter();
    // 100 requests with a 45 s TTFT; 300 s answers.
    model(&rec, "slow", |m, mock| {
        for _ in 0..100 {
            run(m, mock, Shape::E2e, Duration::from_secs(45));
        }
        for _ in 0..100 {
            let mut req = m.request().start();
            mock.increment(Duration::from_secs(1));
            req.token();
            mock.increment(Duration::from_secs(299));
            req.token();
            req.finish(Finish::Stop);
        }
    });
    // Two models with TPOT 3 ms and 8 ms.
    for (name, ms) in [("tpot3", 3), ("tpot8", 8)] {
        model(&rec, name, |m, mock| {
            for _ in 0..100 {
                let mut req = m.request().start();
                req.token();
                for _ in 0..10 {
                    mock.increment(Duration::from_millis(ms));
                    req.token();
                }
                req.finish(Finish::Stop);
            }
        });
    }
    // 4 tokens per 1 ms engine step: ITL 0.25 ms.
    model(&rec, "spec", |m, mock| {
        for _ in 0..10 {
            let mut req = m.request().start();
            req.token();
            for _ in 0..50 {
                mock.increment(Duration::from_millis(1));
                req.tokens(4);
            }
            req.finish(Finish::Stop);
        }
    });
    let text = exp.render();

    let ttft_p99 = histogram_quantile(0.99, &buckets(&text, TTFT, "slow"));
    assert_within_one_bucket("TTFT p99 of 45 s", bounds("ttft"), ttft_p99, 45.0);
    // 100 requests at 45 s and 100 at 1 s: p99 is in the 45 s bucket, not saturated at 10 s.
    assert!(ttft_p99 > 25.0 && ttft_p99 <= 50.0, "{ttft_p99}");
    let e2e_p99 = histogram_quantile(0.99, &buckets(&text, E2E, "slow"));
    assert_within_one_bucket("E2E p99 of 300 s", bounds("e2e"), e2e_p99, 300.0);
    assert!(e2e_p99 > 250.0 && e2e_p99 <= 600.0, "{e2e_p99}");

    let p3 = histogram_quantile(0.5, &buckets(&text, TPOT, "tpot3"));
    let p8 = histogram_quantile(0.5, &buckets(&text, TPOT, "tpot8"));
    assert_within_one_bucket("TPOT p50 of 3 ms", bounds("tpot"), p3, 0.003);
    assert_within_one_bucket("TPOT p50 of 8 ms", bounds("tpot"), p8, 0.008);
    // Exact: (2.5, 5] ms and (5, 10] ms, rank at the middle of each bucket.
    assert!((p3 - 0.00375).abs() < 1e-12, "{p3}");
    assert!((p8 - 0.0075).abs() < 1e-12, "{p8}");

    let itl_p50 = histogram_quantile(0.5, &buckets(&text, ITL, "spec"));
    assert_within_one_bucket("ITL p50 of 0.25 ms", bounds("itl"), itl_p50, 0.00025);
    // All 2000 observations in (0.1, 0.25] ms.
    assert!((itl_p50 - 0.000175).abs() < 1e-12, "{itl_p50}");
}

#[test]
fn p50_and_p99_stay_within_one_bucket_over_the_whole_range() {
    let (exp, rec) = exporter();
    let cases = [
        ("ttft", TTFT, Shape::Ttft, 0.005, 600.0),
        ("tpot", TPOT, Shape::Gap, 0.0001, 5.0),
        ("itl", ITL, Shape::Gap, 0.0001, 5.0),
        ("e2e", E2E, Shape::E2e, 0.005, 3600.0),
        ("queue", QUEUE, Shape::Queue, 0.001, 600.0),
    ];
    // For each metric, 16 models whose 100 values spread over a factor of 3, sliding from the
    // bottom of the range to its top.
    const STEPS: u32 = 16;
    let mut checked = Vec::new();
    for (id, name, shape, lo, hi) in cases {
        let span: f64 = hi / lo / 3.0;
        for step in 0..STEPS {
            let base = lo * span.powf(f64::from(step) / f64::from(STEPS - 1));
            let values: Vec<f64> = (0..100)
                .map(|j| {
                    let v = base * 3f64.powf(f64::from(j) / 99.0);
                    // What the mock clock records: whole nanoseconds.
                    Duration::from_secs_f64(v).as_secs_f64()
                })
                .collect();
            let label = format!("{id}-{step}");
            model(&rec, &label, |m, mock| {
                for v in &values {
                    run(m, mock, shape, Duration::from_secs_f64(*v));
                }
            });
            checked.push((id, name, label, values));
        }
    }
    let text = exp.render();
    for (id, name, label, values) in &checked {
        let b = buckets(&text, name, label);
        assert_eq!(b.len(), bounds(id).len() + 1, "{label}");
        for q in [0.5, 0.99] {
            let estimate = histogram_quantile(q, &b);
            let truth = true_quantile(values, q);
            assert_within_one_bucket(&format!("{label} p{q}"), bounds(id), estimate, truth);
        }
    }
}

#[test]
fn one_model_with_default_labels_stays_a_few_hundred_series() {
    let (exp, rec) = exporter();
    model(&rec, "size", |m, mock| {
        let mut req = m.request().prompt_tokens(8).start();
        mock.increment(Duration::from_millis(3));
        req.scheduled();
        mock.increment(Duration::from_millis(40));
        req.token();
        mock.increment(Duration::from_millis(20));
        req.tokens(2);
        req.finish(Finish::Stop);
        let mut failed = m.request().start();
        failed.fail(tokenmeter_core::ErrorKind::Timeout);
        m.record_model_load(Duration::from_secs(2));
    });
    let text = exp.render();
    let series = text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .count();
    eprintln!(
        "one model, default labels: {series} series, {} bytes",
        text.len()
    );
    // Every histogram bound is a series: the defaults must not blow this up.
    assert!(series <= 400, "{series} series");
}
