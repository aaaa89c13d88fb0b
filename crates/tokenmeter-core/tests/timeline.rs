//! Exact values on hand-built timelines with the mock clock.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Captured, assert_close, capture};
use metrics_util::debugging::DebuggingRecorder;
use tokenmeter_core::clock::{Clock, Mock};
use tokenmeter_core::{ErrorKind, Finish, Meter, MeterBuilder, Naming, NonFinite, Slo};

const MS: Duration = Duration::from_millis(1);

fn mock_meter(b: MeterBuilder) -> (Meter, Arc<Mock>) {
    let (clock, mock) = Clock::mock();
    (b.clock(clock).build(), mock)
}

/// Runs `f` with a fresh local recorder and returns what it captured.
fn recorded(f: impl FnOnce()) -> Captured {
    let rec = DebuggingRecorder::new();
    let snap = rec.snapshotter();
    metrics::with_local_recorder(&rec, f);
    capture(&snap)
}

const TTFT: &str = "gen_ai_server_time_to_first_token_seconds";
const TPOT: &str = "gen_ai_server_time_per_output_token_seconds";
const E2E: &str = "gen_ai_server_request_duration_seconds";
const ITL: &str = "tokenmeter_inter_token_latency_seconds";

#[test]
fn every_metric_of_one_request_is_exact() {
    let slo = Slo::new()
        .ttft(Duration::from_millis(400))
        .tpot(Duration::from_millis(60));
    let (meter, mock) = mock_meter(Meter::builder().model("m").slo(slo));
    let c = recorded(|| {
        let mut g = meter.request().prompt_tokens(7).start(); // t = 0
        mock.increment(100 * MS);
        g.scheduled(); // queue 100 ms
        mock.increment(200 * MS);
        g.token(); // t = 300: TTFT 300 ms, prefill 200 ms
        mock.increment(50 * MS);
        g.token(); // gap 50
        mock.increment(70 * MS);
        g.tokens(2); // gap 70 over 2 tokens: 35 + 35
        mock.increment(80 * MS);
        g.token(); // gap 80, t = 500
        mock.increment(10 * MS);
        g.finish(Finish::Stop); // t = 510
    });
    let m = ["gen_ai_request_model=m"];
    assert_eq!(c.hist(TTFT, &m), vec![0.3]);
    assert_eq!(
        c.hist("tokenmeter_request_queue_time_seconds", &m),
        vec![0.1]
    );
    assert_eq!(
        c.hist("tokenmeter_request_prefill_time_seconds", &m),
        vec![0.2]
    );
    assert_eq!(
        c.hist("tokenmeter_request_decode_time_seconds", &m),
        vec![0.2]
    );
    assert_eq!(c.hist(TPOT, &m), vec![0.05]); // (500 - 300) / (5 - 1)
    assert_eq!(c.hist(E2E, &m), vec![0.51]);
    // ITL: n - 1 = 4 observations summing to last - first = 200 ms.
    let itl = c.hist(ITL, &m);
    assert_eq!(itl, vec![0.035, 0.035, 0.05, 0.08]);
    assert_close(itl.iter().sum(), 0.2);
    assert_eq!(c.hist("tokenmeter_request_input_tokens", &m), vec![7.0]);
    assert_eq!(c.hist("tokenmeter_request_output_tokens", &m), vec![5.0]);
    assert_eq!(c.counter("tokenmeter_input_tokens_total", &m), 7);
    assert_eq!(c.counter("tokenmeter_output_tokens_total", &m), 5);
    assert_eq!(
        c.counter("tokenmeter_requests_total", &["finish_reason=stop"]),
        1
    );
    assert_eq!(
        c.counter("tokenmeter_requests_total", &["finish_reason=length"]),
        0
    );
    assert_eq!(c.counter("tokenmeter_requests_goodput_total", &m), 1); // 300 <= 400, 50 <= 60
    assert_eq!(c.gauge("tokenmeter_requests_running", &m), Some(0.0));
    assert_eq!(c.gauge("tokenmeter_requests_waiting", &m), Some(0.0));
    assert_eq!(
        c.gauge("tokenmeter_build_info", &["version=", "model_version="]),
        Some(1.0)
    );
    assert!(
        c.counters
            .keys()
            .all(|k| !k.starts_with("tokenmeter_misuse")),
        "{:?}",
        c.counters
    );
    let t = meter.totals();
    assert_eq!(
        (
            t.requests_started,
            t.requests_ended,
            t.input_tokens,
            t.output_tokens
        ),
        (1, 1, 7, 5)
    );
}

#[test]
fn slo_miss_is_not_goodput_and_errors_carry_error_type() {
    let slo = Slo::new().ttft(Duration::from_millis(100));
    let (meter, mock) = mock_meter(Meter::builder().slo(slo));
    let c = recorded(|| {
        let mut slow = meter.request().start();
        mock.increment(150 * MS);
        slow.token();
        slow.finish(Finish::Length);
        let mut failed = meter.request().start();
        mock.increment(10 * MS);
        failed.token();
        mock.increment(10 * MS);
        failed.fail(ErrorKind::Oom);
    });
    assert_eq!(c.counter("tokenmeter_requests_goodput_total", &[]), 0);
    assert_eq!(
        c.counter("tokenmeter_requests_total", &["finish_reason=length"]),
        1
    );
    assert_eq!(
        c.counter(
            "tokenmeter_requests_total",
            &["finish_reason=error", "error_type=oom"]
        ),
        1
    );
    assert_eq!(c.hist(E2E, &["error_type=oom"]), vec![0.02]);
    assert_eq!(
        e2e_without_error(&c),
        vec![0.15],
        "the successful request's e2e has no error_type label"
    );
}

fn e2e_without_error(c: &Captured) -> Vec<f64> {
    c.histograms
        .iter()
        .filter(|(k, _)| k.starts_with(E2E) && !k.contains("error_type"))
        .flat_map(|(_, v)| v.clone())
        .collect()
}

#[test]
fn drop_is_cancelled_and_tokens_without_schedule_still_count() {
    let (meter, mock) = mock_meter(Meter::builder());
    let c = recorded(|| {
        let mut g = meter.request().start();
        mock.increment(5 * MS);
        g.token();
        mock.increment(5 * MS);
        g.token();
        drop(g);
    });
    assert_eq!(
        c.counter("tokenmeter_requests_total", &["finish_reason=cancelled"]),
        1
    );
    assert_eq!(c.counter("tokenmeter_requests_goodput_total", &[]), 0);
    assert_eq!(e2e_without_error(&c), vec![0.01]);
    assert_eq!(c.hist(TPOT, &[]), vec![0.005]);
    assert!(
        c.hist("tokenmeter_request_queue_time_seconds", &[])
            .is_empty(),
        "no scheduled(): no queue time"
    );
    assert_eq!(c.gauge("tokenmeter_requests_running", &[]), Some(0.0));
}

#[test]
fn panic_in_the_loop_is_recorded_and_not_hidden() {
    let (meter, _mock) = mock_meter(Meter::builder());
    let c = recorded(|| {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let mut g = meter.request().start();
            g.token();
            panic!("engine exploded");
        }));
        assert!(result.is_err(), "the panic propagates");
    });
    assert_eq!(
        c.counter("tokenmeter_requests_total", &["error_type=panic"]),
        1
    );
}

#[test]
fn the_summary_says_how_the_request_ended_and_a_second_end_repeats_it() {
    let (meter, _mock) = mock_meter(Meter::builder());
    let mut ok = meter.request().start();
    let s = ok.finish(Finish::Length);
    assert_eq!((s.finish_reason, s.error), (Some(Finish::Length), None));
    // the second end is misuse: it returns the first's values, not its own
    let again = ok.fail(ErrorKind::Timeout);
    assert_eq!(
        (again.finish_reason, again.error),
        (Some(Finish::Length), None)
    );

    let mut failed = meter.request().start();
    let s = failed.fail(ErrorKind::Oom);
    assert_eq!((s.finish_reason, s.error), (None, Some(ErrorKind::Oom)));
    let again = failed.finish(Finish::Stop);
    assert_eq!(
        (again.finish_reason, again.error),
        (None, Some(ErrorKind::Oom))
    );
    assert_eq!(
        serde_json::to_value(s).expect("serializes")["error"],
        serde_json::json!("oom")
    );

    let mut cancelled = meter.request().start();
    let s = cancelled.finish(Finish::Cancelled);
    assert_eq!(s.finish_reason, Some(Finish::Cancelled));
    assert_eq!(
        serde_json::to_value(s).expect("serializes")["finish_reason"],
        serde_json::json!("cancelled")
    );
}

#[test]
fn misuse_is_ignored_and_counted() {
    let (meter, mock) = mock_meter(Meter::builder());
    let c = recorded(|| {
        let mut g = meter.request().start();
        g.tokens(0); // nothing
        mock.increment(10 * MS);
        g.token();
        mock.increment(10 * MS);
        g.token(); // t = 20
        mock.decrement(15 * MS);
        g.token(); // t = 5: earlier than the previous token -> gap 0
        g.finish(Finish::Stop);
        g.finish(Finish::Length);
        g.fail(ErrorKind::Internal);
        g.token();
        g.record_non_finite(NonFinite {
            nan: 1,
            ..Default::default()
        });
    });
    assert_eq!(
        c.counter("tokenmeter_misuse_total", &["kind=clock_backwards"]),
        2,
        "token and finish"
    );
    assert_eq!(
        c.counter("tokenmeter_misuse_total", &["kind=finish_twice"]),
        2
    );
    assert_eq!(
        c.counter("tokenmeter_misuse_total", &["kind=token_after_end"]),
        1
    );
    assert_eq!(
        c.counter("tokenmeter_misuse_total", &["kind=non_finite_after_end"]),
        1
    );
    assert_eq!(c.counter("tokenmeter_requests_total", &[]), 1);
    assert_eq!(c.counter("tokenmeter_output_tokens_total", &[]), 3);
    let itl = c.hist(ITL, &[]);
    assert_eq!(
        itl,
        vec![0.0, 0.01],
        "the backwards token is a zero gap; sum = last - first"
    );
    assert_eq!(c.hist(TPOT, &[]), vec![0.005]);
    assert!(
        c.hist(E2E, &[]).iter().all(|v| *v >= 0.02),
        "e2e never ends before the last token"
    );
}

#[test]
fn absurd_step_sizes_are_clamped_and_counted() {
    use tokenmeter_core::MAX_TOKENS_PER_STEP;
    let (meter, mock) = mock_meter(Meter::builder());
    let c = recorded(|| {
        let mut g = meter.request().start();
        g.tokens(u32::MAX);
        for _ in 0..3 {
            mock.increment(MS);
            g.tokens(u32::MAX);
        }
        assert_eq!(g.output_tokens(), 4 * u64::from(MAX_TOKENS_PER_STEP));
        g.finish(Finish::Stop);
    });
    let n = 4 * u64::from(MAX_TOKENS_PER_STEP);
    assert_eq!(meter.totals().output_tokens, n);
    assert_eq!(
        c.counter("tokenmeter_misuse_total", &["kind=tokens_too_many"]),
        4
    );
    assert_eq!(
        c.hist(ITL, &[]).len() as u64,
        n - 1,
        "the ITL identity still holds"
    );
}

#[test]
fn a_full_bucket_is_flushed_early() {
    let (meter, _mock) = mock_meter(Meter::builder());
    let c = recorded(|| {
        let mut g = meter.request().start();
        // 2^16 zero gaps land in one bucket within one flush interval.
        for _ in 0..(1u32 << 16) / 1024 + 1 {
            g.tokens(1024);
        }
        assert!(
            meter.totals().output_tokens > 0,
            "flushed before the interval"
        );
        std::mem::forget(g);
    });
    assert!(c.counter("tokenmeter_output_tokens_total", &[]) >= 1 << 16);
}

#[test]
fn long_generations_flush_about_once_a_second() {
    let (meter, mock) = mock_meter(Meter::builder());
    let c = recorded(|| {
        let mut g = meter.request().start();
        g.token();
        for _ in 0..15 {
            mock.increment(100 * MS);
            g.token();
        }
        // 1.5 s in: one flush happened at t = 1.0 s (10 tokens after the first) ...
        assert_eq!(meter.totals().output_tokens, 11);
        std::mem::forget(g); // ... and nothing else without finish (forgotten: no drop)
    });
    assert_eq!(c.counter("tokenmeter_output_tokens_total", &[]), 11);
    assert_eq!(c.hist(ITL, &[]).len(), 10);
}

#[test]
fn first_multi_token_step_gives_zero_gaps() {
    let (meter, mock) = mock_meter(Meter::builder());
    let c = recorded(|| {
        let mut g = meter.request().start();
        mock.increment(40 * MS);
        g.tokens(3);
        mock.increment(30 * MS);
        g.tokens(3); // gap 30 ms over 3 tokens
        g.finish(Finish::Stop);
    });
    assert_eq!(c.hist(TTFT, &[]), vec![0.04]);
    assert_eq!(c.hist(ITL, &[]), vec![0.0, 0.0, 0.01, 0.01, 0.01]);
    assert_eq!(c.hist(TPOT, &[]), vec![0.006]); // 30 ms / 5
}

#[test]
fn batch_steps_share_one_clock_read() {
    let (meter, mock) = mock_meter(Meter::builder());
    let c = recorded(|| {
        let mut batch: Vec<_> = (0..3).map(|_| meter.request().start()).collect();
        for step in 1..=4u64 {
            mock.increment(Duration::from_millis(20 * step));
            let now = meter.now();
            for g in &mut batch {
                g.token_at(now);
            }
        }
        for g in &mut batch {
            g.finish(Finish::Stop);
        }
    });
    assert_eq!(c.hist(TTFT, &[]), vec![0.02; 3]);
    // gaps 40, 60, 80 ms per sequence
    assert_eq!(
        c.hist(ITL, &[]),
        vec![0.04, 0.04, 0.04, 0.06, 0.06, 0.06, 0.08, 0.08, 0.08]
    );
    assert_eq!(c.counter("tokenmeter_output_tokens_total", &[]), 12);
}

#[test]
fn label_cap_sends_overflow_to_other() {
    let (meter, _mock) = mock_meter(Meter::builder().request_labels(["tenant"], 2));
    let c = recorded(|| {
        for t in ["a", "b", "c", "d", "a"] {
            meter
                .request()
                .label("tenant", t)
                .start()
                .finish(Finish::Stop);
        }
        meter
            .request()
            .label("nope", "x")
            .start()
            .finish(Finish::Stop);
    });
    assert_eq!(c.counter("tokenmeter_requests_total", &["tenant=a"]), 2);
    assert_eq!(c.counter("tokenmeter_requests_total", &["tenant=b"]), 1);
    assert_eq!(c.counter("tokenmeter_requests_total", &["tenant=other"]), 2);
    assert_eq!(
        c.counter("tokenmeter_labels_overflow_total", &["label=tenant"]),
        2
    );
    assert_eq!(
        c.counter("tokenmeter_misuse_total", &["kind=unknown_label"]),
        1
    );
}

#[test]
fn a_million_distinct_label_values_stay_capped() {
    let (meter, _mock) = mock_meter(Meter::builder().request_labels(["user"], 10));
    let c = recorded(|| {
        for i in 0..1_000_000u32 {
            // Only the label path: starting 10^6 requests would test something else.
            let _ = meter.request().label("user", i.to_string());
        }
        meter
            .request()
            .label("user", "fresh")
            .start()
            .finish(Finish::Stop);
    });
    assert_eq!(
        c.counter("tokenmeter_labels_overflow_total", &[]),
        1_000_000 - 10 + 1
    );
    assert_eq!(c.counter("tokenmeter_requests_total", &["user=other"]), 1);
}

#[test]
fn vllm_preset_uses_vllm_names_labels_and_buckets() {
    let (meter, mock) = mock_meter(Meter::builder().model("llama").naming(Naming::Vllm));
    let c = recorded(|| {
        let mut g = meter.request().prompt_tokens(3).start();
        mock.increment(10 * MS);
        g.token();
        mock.increment(10 * MS);
        g.token();
        drop(g);
    });
    let m = ["model_name=llama", "engine=0"];
    assert_eq!(c.hist("vllm:time_to_first_token_seconds", &m), vec![0.01]);
    assert_eq!(
        c.hist("vllm:request_time_per_output_token_seconds", &m),
        vec![0.01]
    );
    assert_eq!(c.hist("vllm:inter_token_latency_seconds", &m), vec![0.01]);
    assert_eq!(c.counter("vllm:generation_tokens_total", &m), 2);
    assert_eq!(c.counter("vllm:prompt_tokens_total", &m), 3);
    assert_eq!(
        c.counter("vllm:request_success_total", &["finished_reason=abort"]),
        1
    );
    let ttft = tokenmeter_core::catalog::by_id("ttft").expect("ttft");
    assert_eq!(
        meter.metric_names().buckets(ttft).map(<[f64]>::len),
        Some(22),
        "vLLM's TTFT buckets"
    );
}

#[test]
fn non_finite_counts_reach_counters() {
    let (meter, _mock) = mock_meter(Meter::builder());
    let c = recorded(|| {
        let mut g = meter.request().start();
        g.record_non_finite(NonFinite {
            nan: 2,
            pos_inf: 1,
            neg_inf: 0,
        });
        g.record_non_finite(NonFinite {
            nan: 1,
            pos_inf: 0,
            neg_inf: 4,
        });
        g.finish(Finish::Stop);
        meter.request().start().finish(Finish::Stop);
    });
    assert_eq!(
        c.counter("tokenmeter_logits_nonfinite_total", &["kind=nan"]),
        3
    );
    assert_eq!(
        c.counter("tokenmeter_logits_nonfinite_total", &["kind=pos_inf"]),
        1
    );
    assert_eq!(
        c.counter("tokenmeter_logits_nonfinite_total", &["kind=neg_inf"]),
        4
    );
    assert_eq!(c.counter("tokenmeter_requests_nonfinite_total", &[]), 1);
}

#[test]
fn model_load_and_start_time() {
    let (meter, mock) = mock_meter(Meter::builder());
    let c = recorded(|| {
        let load = meter.model_load();
        mock.increment(Duration::from_millis(2500));
        assert_eq!(load.done(), Duration::from_millis(2500));
        meter.request().start().finish(Finish::Stop); // meets the recorder: info + start time
    });
    assert_eq!(
        c.hist("tokenmeter_model_load_duration_seconds", &[]),
        vec![2.5]
    );
    assert!(
        c.gauge("tokenmeter_process_start_time_seconds", &[])
            .is_some_and(|v| v > 1.6e9)
    );
}

#[test]
fn bad_configuration_is_a_clear_error() {
    use tokenmeter_core::ConfigError;
    let err = |b: MeterBuilder| b.try_build().expect_err("must be rejected");
    assert_eq!(
        err(Meter::builder().buckets("nope", &[1.0])),
        ConfigError::UnknownHistogram("nope".into())
    );
    assert_eq!(
        err(Meter::builder().buckets("ttft", &[1.0, 0.5])),
        ConfigError::BadBuckets("ttft".into())
    );
    assert_eq!(
        err(Meter::builder().buckets("ttft", &[f64::NAN])),
        ConfigError::BadBuckets("ttft".into())
    );
    assert_eq!(
        err(Meter::builder().buckets("itl", &[1.0; 0])),
        ConfigError::BadBuckets("itl".into())
    );
    let many: Vec<f64> = (1..=30).map(f64::from).collect();
    assert_eq!(
        err(Meter::builder().buckets("itl", &many)),
        ConfigError::TooManyItlBuckets(30)
    );
    assert_eq!(
        err(Meter::builder().prefix("9x")),
        ConfigError::BadPrefix("9x".into())
    );
    assert!(matches!(
        err(Meter::builder().window(Duration::ZERO)),
        ConfigError::BadWindow(_)
    ));
    // build() keeps going with defaults
    let m = Meter::builder()
        .buckets("ttft", &[2.0, 1.0])
        .prefix("ok_prefix")
        .build();
    let ttft = tokenmeter_core::catalog::by_id("ttft").expect("ttft");
    assert_eq!(m.metric_names().buckets(ttft).map(<[f64]>::len), Some(16));
    let goodput = tokenmeter_core::catalog::by_id("goodput").expect("goodput");
    assert_eq!(
        m.metric_names().name(goodput),
        "ok_prefix_requests_goodput_total"
    );
}

#[test]
fn itl_bucket_override_is_used_by_the_guard() {
    let (clock, mock) = Clock::mock();
    let meter = Meter::builder()
        .clock(clock)
        .buckets("itl", &[0.01, 0.1])
        .build();
    let c = recorded(|| {
        let mut g = meter.request().start();
        g.token();
        for gap in [5u32, 7, 50, 60, 200] {
            mock.increment(gap * MS);
            g.token();
        }
        g.finish(Finish::Stop);
    });
    // bucket means: (5+7)/2 = 6 ms, (50+60)/2 = 55 ms, 200 ms
    assert_eq!(c.hist(ITL, &[]), vec![0.006, 0.006, 0.055, 0.055, 0.2]);
}

#[test]
fn snapshot_percentiles_rates_and_goodput() {
    let slo = Slo::new().ttft(Duration::from_millis(250));
    let (meter, mock) = mock_meter(Meter::builder().slo(slo).window(Duration::from_secs(60)));
    // 10 requests, TTFT 100..=1000 ms, 3 tokens each 10 ms apart, one every 2 s.
    for i in 1..=10u64 {
        let mut g = meter.request().start();
        mock.increment(Duration::from_millis(100 * i));
        g.token();
        mock.increment(10 * MS);
        g.token();
        mock.increment(10 * MS);
        g.token();
        g.finish(Finish::Stop);
        mock.increment(Duration::from_millis(2000 - 100 * i - 20));
    }
    let s = meter.snapshot();
    assert_eq!(s.requests_ended, 10);
    assert_eq!(s.requests_succeeded, 10);
    assert_eq!(s.output_tokens, 30);
    assert_eq!(s.ttft.count, 10);
    assert!((s.ttft.p50 - 0.5).abs() < 0.001, "{}", s.ttft.p50);
    assert!((s.ttft.max - 1.0).abs() < 0.001, "{}", s.ttft.max);
    assert!((s.ttft.mean - 0.55).abs() < 0.001, "{}", s.ttft.mean);
    assert_eq!(s.tpot.count, 10);
    assert!((s.tpot.p99 - 0.01).abs() < 0.00001);
    assert_eq!(s.itl.count, 20);
    assert_eq!(s.goodput_requests, 2); // 100 and 200 ms
    assert_eq!(s.goodput_ratio, Some(0.2));
    assert!((s.uptime_seconds - 20.0).abs() < 1e-9);
    assert!(
        (s.tokens_per_second - 1.5).abs() < 1e-9,
        "{}",
        s.tokens_per_second
    );
    assert!((s.requests_per_second - 0.5).abs() < 1e-9);
    // 70 s later everything has left the window; totals remain.
    mock.increment(Duration::from_secs(70));
    let s = meter.snapshot();
    assert_eq!(
        (s.requests_ended, s.ttft.count, s.goodput_ratio),
        (0, 0, None)
    );
    assert_eq!(s.totals.output_tokens, 30);
    let json = serde_json::to_string(&s).expect("snapshot serializes");
    assert!(json.contains("\"tokens_per_second\""));
}

#[test]
fn gauges_track_waiting_and_running() {
    let (meter, _mock) = mock_meter(Meter::builder());
    let mut a = meter.request().start();
    let mut b = meter.request().start();
    let _c = meter.request().start();
    a.scheduled();
    b.token();
    let s = meter.snapshot();
    assert_eq!((s.waiting, s.running), (1, 2));
    a.finish(Finish::Stop);
    b.fail(ErrorKind::Timeout);
    let s = meter.snapshot();
    assert_eq!((s.waiting, s.running, s.requests_failed), (1, 0, 1));
}

#[test]
fn a_guard_is_small() {
    let (meter, _mock) = mock_meter(Meter::builder());
    let g = meter.request().request_id("req-0123456789").start();
    let heap = g.request_id().len();
    let total = std::mem::size_of::<tokenmeter_core::RequestGuard>() + heap;
    assert!(total <= 512, "a guard holds {total} bytes");
}

/// Issue 12 §5: three one-off tenants at start-up; an hour later `acme` sends 100 requests.
#[test]
fn an_idle_label_value_gives_its_slot_back() {
    let (meter, mock) = mock_meter(Meter::builder().request_labels(["tenant"], 3));
    let c = recorded(|| {
        for t in ["t1", "t2", "t3"] {
            meter
                .request()
                .label("tenant", t)
                .start()
                .finish(Finish::Stop);
        }
        meter
            .request()
            .label("tenant", "acme")
            .start()
            .finish(Finish::Stop);
        mock.increment(Duration::from_secs(3600));
        for _ in 0..100 {
            meter
                .request()
                .label("tenant", "acme")
                .start()
                .finish(Finish::Stop);
        }
    });
    let requests = "tokenmeter_requests_total";
    assert_eq!(c.counter(requests, &["tenant=acme"]), 100);
    assert_eq!(c.counter(requests, &["tenant=other"]), 1);
    // One overflow: the one request `acme` sent while the three held their slots.
    assert_eq!(
        c.counter("tokenmeter_labels_overflow_total", &["label=tenant"]),
        1
    );
}

/// Issue 12 §1: every way a label can collide or be reserved is a `ConfigError` naming it,
/// and `build` drops it, so no series carries a label name twice.
#[test]
fn colliding_and_reserved_labels_are_rejected_by_name() {
    let collides = |b: MeterBuilder, key: &str| {
        assert_eq!(
            b.try_build().err(),
            Some(tokenmeter_core::ConfigError::LabelCollision(key.to_owned())),
            "{key}"
        );
    };
    let vllm = || Meter::builder().naming(Naming::Vllm);
    collides(vllm().constant_label("engine", "replica-7"), "engine");
    collides(vllm().constant_label("model_name", "x"), "model_name");
    collides(
        vllm().constant_label("finished_reason", "x"),
        "finished_reason",
    );
    collides(Meter::builder().constant_label("le", "1"), "le");
    collides(Meter::builder().constant_label("quantile", "1"), "quantile");
    collides(Meter::builder().constant_label("__name__", "x"), "__name__");
    collides(
        Meter::builder().constant_label("gen_ai.request.model", "x"),
        "gen_ai.request.model",
    );
    collides(
        Meter::builder().constant_label("gen_ai_request_model", "x"),
        "gen_ai_request_model",
    );
    collides(
        Meter::builder().constant_label("error.type", "x"),
        "error.type",
    );
    collides(
        Meter::builder()
            .constant_label("region", "a")
            .constant_label("region", "b"),
        "region",
    );
    collides(
        Meter::builder()
            .constant_label("tenant", "a")
            .request_labels(["tenant"], 10),
        "tenant",
    );
    collides(Meter::builder().request_labels(["kind"], 10), "kind");
    assert!(vllm().constant_label("region", "eu").try_build().is_ok());

    // `build` keeps the meter and drops the label: every series' label names stay unique.
    let c = recorded(|| {
        let meter = vllm()
            .constant_label("engine", "replica-7")
            .constant_label("region", "eu")
            .build();
        meter.request().start().finish(Finish::Stop);
    });
    for key in c
        .counters
        .keys()
        .chain(c.gauges.keys())
        .chain(c.histograms.keys())
    {
        let labels: Vec<&str> = key
            .split_once('{')
            .map(|(_, l)| l.trim_end_matches('}'))
            .unwrap_or("")
            .split(',')
            .filter(|l| !l.is_empty())
            .map(|l| l.split('=').next().unwrap_or(""))
            .collect();
        let mut unique = labels.clone();
        unique.sort_unstable();
        unique.dedup();
        assert_eq!(labels.len(), unique.len(), "{key}");
        assert!(!key.contains("replica-7"), "{key}");
    }
    assert_eq!(
        c.counter("vllm:request_success_total", &["engine=0", "region=eu"]),
        1
    );
}

/// Issue 12 §7: arrival at 0, engine queue at 40 ms, scheduled at 60 ms, first token at 100 ms:
/// TTFT 0.100 s from arrival, queue time 0.020 s from the engine queue, as vLLM reports them.
#[test]
fn queue_time_counts_from_the_engine_queue_when_the_server_says_so() {
    let (meter, mock) = mock_meter(Meter::builder().naming(Naming::Vllm));
    let c = recorded(|| {
        let mut req = meter.request().start();
        mock.increment(40 * MS);
        req.enqueued();
        mock.increment(20 * MS);
        req.scheduled();
        mock.increment(40 * MS);
        req.token();
        req.enqueued(); // too late: ignored and counted
        let s = req.finish(Finish::Stop);
        assert_eq!((s.ttft, s.queue), (Some(100 * MS), Some(20 * MS)));
    });
    assert_eq!(c.hist("vllm:time_to_first_token_seconds", &[]), [0.1]);
    assert_eq!(c.hist("vllm:request_queue_time_seconds", &[]), [0.02]);
    assert_eq!(
        c.counter("tokenmeter_misuse_total", &["kind=enqueued_late"]),
        1
    );
}

/// `finish` returns the measured values; a second end returns the same ones and is misuse.
#[test]
fn finish_returns_the_measured_values_once_and_again_on_a_second_end() {
    let (meter, mock) = mock_meter(Meter::builder().slo(Slo::new().ttft(50 * MS)));
    let mut req = meter.request().prompt_tokens(7).start();
    mock.increment(10 * MS);
    req.scheduled();
    for _ in 0..4 {
        mock.increment(10 * MS);
        req.token();
    }
    mock.increment(5 * MS);
    let first = req.finish(Finish::Stop);
    assert_eq!(first.ttft, Some(20 * MS));
    assert_eq!(first.tpot, Some(10 * MS));
    assert_eq!(first.e2e, 55 * MS);
    assert_eq!(first.queue, Some(10 * MS));
    assert_eq!(first.prefill, Some(10 * MS));
    assert_eq!(first.decode, Some(30 * MS));
    assert_eq!((first.input_tokens, first.output_tokens), (7, 4));
    assert!(first.goodput);
    mock.increment(100 * MS);
    assert_eq!(req.fail(ErrorKind::Internal), first);
}

/// Issue 14: input tokens learned after start are counted once; a logits handle used from
/// another thread is folded in at the end, and a record after the end is misuse.
#[test]
fn late_prompt_tokens_and_the_logits_handle_are_counted_once() {
    let (meter, _mock) = mock_meter(Meter::builder());
    let c = recorded(|| {
        let mut req = meter.request().start();
        let logits = req.non_finite_handle();
        let remote = logits.clone();
        std::thread::spawn(move || {
            remote.record(NonFinite {
                nan: 1,
                pos_inf: 2,
                neg_inf: 0,
            })
        })
        .join()
        .expect("scanner thread");
        req.token();
        req.set_prompt_tokens(30);
        req.set_prompt_tokens(31); // twice: ignored
        let s = req.finish(Finish::Stop);
        assert_eq!(
            (s.input_tokens, s.non_finite.nan, s.non_finite.pos_inf),
            (30, 1, 2)
        );
        logits.record(NonFinite {
            nan: 5,
            ..NonFinite::default()
        }); // after the end: dropped
        let mut given = meter.request().prompt_tokens(8).start();
        given.set_prompt_tokens(9); // known at start: ignored
        given.finish(Finish::Stop);
    });
    assert_eq!(c.counter("tokenmeter_input_tokens_total", &[]), 38);
    assert_eq!(meter.totals().input_tokens, 38);
    assert_eq!(
        c.counter("tokenmeter_logits_nonfinite_total", &["kind=nan"]),
        1
    );
    assert_eq!(
        c.counter("tokenmeter_misuse_total", &["kind=prompt_tokens_twice"]),
        2
    );
    assert_eq!(
        c.counter("tokenmeter_misuse_total", &["kind=non_finite_after_end"]),
        1
    );
}
