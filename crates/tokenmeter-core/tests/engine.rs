//! Engine state (issue 13): preemption, prefix cache, speculative decoding, request
//! parameters, adapters, engine steps and liveness, with exact values on the mock clock.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Captured, assert_close, capture};
use metrics_util::debugging::{DebuggingRecorder, Snapshotter};
use tokenmeter_core::clock::{Clock, Mock};
use tokenmeter_core::{EngineStep, Finish, Meter, MeterBuilder, Naming};

const MS: Duration = Duration::from_millis(1);

fn mock_meter(b: MeterBuilder) -> (Meter, Arc<Mock>) {
    let (clock, mock) = Clock::mock();
    (b.clock(clock).build(), mock)
}

/// Runs `f` with a fresh local recorder; `f` gets the snapshotter to scrape mid-way.
fn recorded(f: impl FnOnce(&Snapshotter)) -> Captured {
    let rec = DebuggingRecorder::new();
    let snap = rec.snapshotter();
    metrics::with_local_recorder(&rec, || f(&snap));
    capture(&snap)
}

fn misuse(c: &Captured, kind: &str) -> u64 {
    c.counter("tokenmeter_misuse_total", &[&format!("kind={kind}")])
}

#[test]
fn preemption_the_issue_case() {
    let (meter, mock) = mock_meter(Meter::builder().model("m"));
    let mut mid = None;
    let mut summary = None;
    let c = recorded(|snap| {
        let mut g = meter.request().prompt_tokens(4).start(); // t = 0
        mock.increment(10 * MS);
        g.scheduled(); // 10 ms
        for _ in 0..3 {
            mock.increment(if g.output_tokens() == 0 { 40 } else { 10 } * MS);
            g.token(); // 50, 60, 70
        }
        mock.increment(5 * MS);
        g.preempted(); // 75 ms
        assert!(g.is_preempted());
        mock.increment(125 * MS); // a scrape at 200 ms
        mid = Some((capture(snap), meter.snapshot()));
        mock.increment(200 * MS);
        g.scheduled(); // re-scheduled at 400 ms
        mock.increment(50 * MS);
        g.token(); // 450
        mock.increment(10 * MS);
        g.token(); // 460
        summary = Some(g.finish(Finish::Stop));
    });
    let (at200, snap200) = mid.expect("scraped");
    assert_eq!(at200.counter("tokenmeter_output_tokens_total", &[]), 0); // flushed at the end
    assert_eq!(at200.gauge("tokenmeter_requests_running", &[]), Some(0.0));
    assert_eq!(at200.gauge("tokenmeter_requests_waiting", &[]), Some(1.0));
    assert_eq!((snap200.running, snap200.waiting), (0, 1));
    assert_eq!(
        at200.counter("tokenmeter_requests_preemptions_total", &[]),
        1
    );

    // The debugging recorder's scrape drains histograms: the two scrapes together hold all.
    let hist = |name: &str| {
        let mut v = at200.hist(name, &[]);
        v.extend(c.hist(name, &[]));
        v
    };
    assert_eq!(
        hist("gen_ai_server_time_to_first_token_seconds"),
        vec![0.05]
    );
    let itl = hist("tokenmeter_inter_token_latency_seconds");
    assert_eq!(itl, vec![0.01, 0.01, 0.01, 0.38]);
    assert_close(itl.iter().sum(), 0.41);
    // counters too: 1 before the scrape at 200 ms, none after
    assert_eq!(c.counter("tokenmeter_requests_preemptions_total", &[]), 0);
    assert_eq!(hist("tokenmeter_request_preemptions"), vec![1.0]);
    assert_eq!(hist("tokenmeter_request_queue_time_seconds"), vec![0.01]);
    assert_eq!(hist("tokenmeter_request_prefill_time_seconds"), vec![0.04]);
    assert_eq!(hist("tokenmeter_request_decode_time_seconds"), vec![0.41]);
    assert_eq!(
        hist("tokenmeter_request_inference_time_seconds"),
        vec![0.45]
    );
    let end = meter.snapshot();
    assert_eq!((end.running, end.waiting), (0, 0));
    assert_eq!(c.counter("tokenmeter_output_tokens_total", &[]), 5);
    assert!(
        c.counters
            .keys()
            .chain(at200.counters.keys())
            .all(|k| !k.contains("misuse")),
        "{:?}",
        c.counters
    );
    let s = summary.expect("finished");
    assert_eq!(s.preemptions, 1);
    assert_eq!(s.ttft, Some(50 * MS));
    assert_eq!(s.decode, Some(410 * MS));
    assert_eq!(s.inference, Some(450 * MS));
    assert_eq!(s.tpot, Some(Duration::from_nanos(410_000_000 / 4)));
}

#[test]
fn preemption_before_the_first_token_and_under_vllm_names() {
    let (meter, mock) = mock_meter(Meter::builder().model("m").naming(Naming::Vllm));
    let c = recorded(|_| {
        let mut g = meter.request().start();
        mock.increment(10 * MS);
        g.scheduled();
        mock.increment(5 * MS);
        g.preempted(); // during prefill
        mock.increment(100 * MS);
        g.scheduled(); // 115 ms
        mock.increment(20 * MS);
        g.token(); // 135 ms
        g.preempted();
        mock.increment(30 * MS);
        g.token(); // a token while preempted: re-admitted, misuse
        g.finish(Finish::Length);
    });
    assert_eq!(c.hist("vllm:time_to_first_token_seconds", &[]), vec![0.135]);
    // prefill: first scheduled (10 ms) to the first token, the preemption included
    assert_eq!(
        c.hist("vllm:request_prefill_time_seconds", &[]),
        vec![0.125]
    );
    assert_eq!(c.hist("vllm:request_queue_time_seconds", &[]), vec![0.01]);
    assert_eq!(c.counter("vllm:num_preemptions_total", &[]), 2);
    assert_eq!(c.hist("vllm:request_num_preemptions", &[]), vec![2.0]);
    assert_eq!(c.hist("vllm:inter_token_latency_seconds", &[]), vec![0.03]);
    assert_eq!(misuse(&c, "token_while_preempted"), 1);
    assert_eq!(c.gauge("vllm:num_requests_running", &[]), Some(0.0));
    assert_eq!(c.gauge("vllm:num_requests_waiting", &[]), Some(0.0));
}

#[test]
fn preempting_a_request_that_is_not_running_is_misuse() {
    let (meter, _mock) = mock_meter(Meter::builder());
    let c = recorded(|_| {
        let mut g = meter.request().start();
        g.preempted(); // waiting
        g.scheduled();
        g.preempted();
        g.preempted(); // already preempted
        g.finish(Finish::Stop); // ends while waiting
        g.preempted(); // ended
    });
    assert_eq!(misuse(&c, "preempted_not_running"), 3);
    assert_eq!(c.counter("tokenmeter_requests_preemptions_total", &[]), 1);
    assert_eq!(c.gauge("tokenmeter_requests_running", &[]), Some(0.0));
    assert_eq!(c.gauge("tokenmeter_requests_waiting", &[]), Some(0.0));
    assert_eq!(meter.snapshot().waiting, 0);
}

#[test]
fn prefix_cache_counts_hits_and_queries() {
    let (meter, _mock) = mock_meter(Meter::builder());
    let mut sums = Vec::new();
    let c = recorded(|_| {
        let mut a = meter.request().prompt_tokens(100).start();
        a.prefix_cache(100, 64);
        a.token();
        sums.push(a.finish(Finish::Stop));
        let mut b = meter.request().prompt_tokens(50).start();
        b.prefix_cache(50, 80); // more hits than queries: clamped
        b.token();
        sums.push(b.finish(Finish::Stop));
        b.prefix_cache(1, 1); // after the end: ignored
    });
    assert_eq!(c.counter("tokenmeter_prefix_cache_queries_total", &[]), 150);
    assert_eq!(c.counter("tokenmeter_prefix_cache_hits_total", &[]), 114);
    assert_eq!(sums[0].cached_prompt_tokens, 64);
    assert_eq!(sums[1].cached_prompt_tokens, 50);
    assert_eq!(misuse(&c, "prefix_hits_above_queries"), 1);
    assert_eq!(misuse(&c, "prefix_cache_after_end"), 1);
}

#[test]
fn speculative_decoding_counts_like_vllm() {
    let (meter, mock) = mock_meter(Meter::builder().naming(Naming::Vllm).speculative_tokens(3));
    let mut summary = None;
    let c = recorded(|_| {
        let mut g = meter.request().start();
        g.scheduled();
        mock.increment(10 * MS);
        g.token(); // the first token, from prefill
        for (proposed, accepted) in [(3, 3), (3, 1), (3, 0), (2, 5)] {
            mock.increment(12 * MS);
            let now = meter.now();
            g.spec_decode(proposed, accepted);
            g.tokens_at(accepted.min(proposed) + 1, now); // accepted + the bonus token
        }
        g.spec_decode(0, 0); // no draft this step: not a draft
        summary = Some(g.finish(Finish::Stop));
    });
    assert_eq!(c.counter("vllm:spec_decode_num_drafts_total", &[]), 4);
    assert_eq!(
        c.counter("vllm:spec_decode_num_draft_tokens_total", &[]),
        11
    );
    assert_eq!(
        c.counter("vllm:spec_decode_num_accepted_tokens_total", &[]),
        6
    );
    let per_pos = |p: &str| {
        c.counter(
            "vllm:spec_decode_num_accepted_tokens_per_pos_total",
            &[&format!("position={p}")],
        )
    };
    assert_eq!((per_pos("0"), per_pos("1"), per_pos("2")), (3, 2, 1));
    assert_eq!(misuse(&c, "spec_accepted_above_proposed"), 1);
    // ITL stays per token: 4 + 2 + 1 + 3 tokens after the first, 12 ms steps split evenly
    let itl = c.hist("vllm:inter_token_latency_seconds", &[]);
    assert_eq!(itl.len(), 10);
    assert_close(itl.iter().sum(), 0.048);
    let s = summary.expect("finished");
    assert_eq!((s.spec_draft_tokens, s.spec_accepted_tokens), (11, 6));
    assert_eq!(s.output_tokens, 11);
}

#[test]
fn speculative_decoding_without_declaring_it_is_misuse() {
    let (meter, _mock) = mock_meter(Meter::builder().speculative_tokens(1));
    let undeclared = Meter::builder().build();
    let c = recorded(|_| {
        let mut g = meter.request().start();
        g.spec_decode(3, 2); // position 1 is past the declared length
        g.finish(Finish::Stop);
        let mut h = undeclared.request().start();
        h.spec_decode(1, 1);
        assert_eq!(h.finish(Finish::Stop).spec_accepted_tokens, 1);
    });
    assert_eq!(misuse(&c, "spec_position_undeclared"), 1);
    assert_eq!(misuse(&c, "spec_decode_undeclared"), 1);
    assert_eq!(
        c.counter(
            "tokenmeter_spec_decode_accepted_tokens_per_position_total",
            &["position=0"]
        ),
        1
    );
    assert_eq!(
        c.counter("tokenmeter_spec_decode_accepted_tokens_total", &[]),
        2
    );
}

#[test]
fn request_parameters_and_max_generation_tokens() {
    let (meter, _mock) = mock_meter(Meter::builder().naming(Naming::Vllm));
    let c = recorded(|_| {
        let mut one = meter.request().max_tokens(256).start();
        one.tokens(7);
        one.finish(Finish::Stop);
        let mut three = meter.request().n(3).start();
        three.tokens(30);
        for len in [8, 12, 10] {
            three.sequence_finished(len);
        }
        three.finish(Finish::Length);
    });
    assert_eq!(c.hist("vllm:request_params_n", &[]), vec![1.0, 3.0]);
    assert_eq!(c.hist("vllm:request_params_max_tokens", &[]), vec![256.0]);
    assert_eq!(
        c.hist("vllm:request_max_num_generation_tokens", &[]),
        vec![7.0, 12.0]
    );
    assert_eq!(
        c.hist("vllm:request_generation_tokens", &[]),
        vec![7.0, 30.0]
    );
}

#[test]
fn adapters_are_a_capped_label() {
    let (meter, _mock) = mock_meter(Meter::builder().adapters(1));
    let plain = Meter::builder().build();
    let c = recorded(|_| {
        for name in ["sql", "sql", "chat"] {
            let mut g = meter.request().adapter(name).start();
            g.token();
            g.finish(Finish::Stop);
        }
        plain.request().adapter("x").start().finish(Finish::Stop);
    });
    assert_eq!(
        c.counter("tokenmeter_output_tokens_total", &["adapter=sql"]),
        2
    );
    assert_eq!(
        c.counter("tokenmeter_output_tokens_total", &["adapter=other"]),
        1
    );
    assert_eq!(
        c.counter("tokenmeter_labels_overflow_total", &["label=adapter"]),
        1
    );
    assert_eq!(misuse(&c, "unknown_label"), 1);
}

#[test]
fn engine_steps_report_batch_kv_and_waiting() {
    let (meter, mock) = mock_meter(Meter::builder().naming(Naming::Vllm));
    let mut first = None;
    let c = recorded(|snap| {
        // nothing is reported before the engine's first step
        let before = capture(snap);
        assert_eq!(before.gauge("vllm:kv_cache_usage_perc", &[]), None);
        assert_eq!(
            before.gauge("tokenmeter_engine_last_step_seconds", &[]),
            None
        );
        meter.engine_step(&EngineStep::new(3, 130).kv_blocks(30, 120));
        first = Some(capture(snap));
        mock.increment(20 * MS);
        meter.engine_step(&EngineStep::new(4, 4).kv_usage(0.3).waiting_by_reason(2, 1));
        meter.engine_step(&EngineStep::new(9, 9).kv_usage(0.9)); // same instant: ignored
        mock.increment(20 * MS);
        meter.engine_step(&EngineStep::new(4, 4).kv_usage(f64::NAN)); // KV not recorded
        mock.increment(20 * MS);
        meter.engine_step(&EngineStep::new(4, 4).kv_usage(1.5));
        mock.increment(20 * MS);
        meter.engine_step(&EngineStep::new(4, 4).kv_blocks(200, 120));
    });
    let first = first.expect("scraped");
    assert_eq!(first.gauge("vllm:kv_cache_usage_perc", &[]), Some(0.25));
    assert_eq!(first.hist("vllm:iteration_tokens_total", &[]), vec![130.0]);
    assert_eq!(c.gauge("tokenmeter_engine_batch_sequences", &[]), Some(4.0));
    assert_eq!(
        c.hist("vllm:iteration_tokens_total", &[]),
        vec![4.0, 4.0, 4.0, 4.0]
    );
    assert_eq!(c.gauge("vllm:kv_cache_usage_perc", &[]), Some(0.3));
    assert_eq!(
        first.gauge("tokenmeter_kv_cache_blocks_used", &[]),
        Some(30.0)
    );
    assert_eq!(
        first.gauge("tokenmeter_kv_cache_blocks_total", &[]),
        Some(120.0)
    );
    assert_eq!(
        c.gauge("vllm:num_requests_waiting_by_reason", &["reason=capacity"]),
        Some(2.0)
    );
    assert_eq!(
        c.gauge("vllm:num_requests_waiting_by_reason", &["reason=deferred"]),
        Some(1.0)
    );
    assert_eq!(misuse(&c, "step_repeated"), 1);
    assert_eq!(misuse(&c, "kv_usage_out_of_range"), 3); // NaN, 1.5, 200/120
    assert_eq!(misuse(&c, "kv_blocks_above_total"), 1);
    let start = first
        .gauge("tokenmeter_engine_last_step_seconds", &[])
        .expect("first step");
    let last = c
        .gauge("tokenmeter_engine_last_step_seconds", &[])
        .expect("last step");
    // Unix seconds near 1.8e9 keep about 0.2 µs in an f64.
    assert!((last - start - 0.08).abs() < 1e-6, "{}", last - start);
}

#[test]
fn liveness_finds_stalled_requests_and_a_frozen_engine() {
    let (meter, mock) = mock_meter(
        Meter::builder()
            .stall_threshold(Duration::from_secs(5))
            .flush_interval(Duration::from_secs(1)),
    );
    let c = recorded(|_| {
        let mut a = meter.request().start();
        let mut b = meter.request().start();
        let mut waiting = meter.request().start();
        a.scheduled();
        b.scheduled();
        assert!(meter.health().healthy); // no steps reported, nothing stalled
        for _ in 0..8 {
            mock.increment(Duration::from_secs(1));
            meter.engine_step(&EngineStep::new(2, 1));
            a.token(); // b gets none
        }
        // t = 8 s: b has had no progress since scheduled at 0
        let h = meter.health();
        assert!(h.healthy);
        assert_eq!((h.running, h.waiting, h.stalled), (2, 1, 1));
        assert_eq!(h.longest_silence, Some(Duration::from_secs(8)));
        assert_eq!(h.since_last_step, Some(Duration::ZERO));
        // preempting b makes it waiting: not stalled
        b.preempted();
        assert_eq!(meter.health().stalled, 0);
        // the engine freezes: no steps, no tokens for 6 s
        mock.increment(Duration::from_secs(6));
        let h = meter.health();
        assert!(!h.healthy);
        assert_eq!(h.http_status(), 503);
        assert_eq!(h.since_last_step, Some(Duration::from_secs(6)));
        assert_eq!(h.stalled, 1); // a: its last flush was at 8 s
        a.finish(Finish::Stop);
        b.finish(Finish::Stop);
        waiting.finish(Finish::Stop);
        // nothing in flight: a quiet engine is healthy
        let h = meter.health();
        assert!(h.healthy);
        assert_eq!((h.running, h.stalled), (0, 0));
    });
    assert_eq!(c.gauge("tokenmeter_requests_stalled", &[]), Some(0.0));
}

#[test]
fn without_engine_steps_all_running_requests_stalled_is_frozen() {
    let (meter, mock) = mock_meter(Meter::builder().stall_threshold(Duration::from_secs(2)));
    let mut g = meter.request().start();
    g.scheduled();
    mock.increment(Duration::from_secs(1));
    g.token();
    mock.increment(Duration::from_secs(3));
    let h = meter.health();
    assert_eq!((h.healthy, h.stalled, h.since_last_step), (false, 1, None));
    assert_eq!(h.longest_silence, Some(Duration::from_secs(3)));
    g.finish(Finish::Stop);
    assert!(meter.health().healthy);
}

#[test]
fn the_stalled_gauge_refreshes_from_steps_at_most_once_a_second() {
    let (meter, mock) = mock_meter(Meter::builder().stall_threshold(Duration::from_millis(500)));
    let c = recorded(|snap| {
        let mut g = meter.request().start();
        g.scheduled();
        meter.engine_step(&EngineStep::new(1, 1)); // t = 0: refreshed, 0 stalled
        mock.increment(Duration::from_millis(600));
        meter.engine_step(&EngineStep::new(1, 1)); // within the second: not refreshed
        assert_eq!(
            capture(snap).gauge("tokenmeter_requests_stalled", &[]),
            Some(0.0)
        );
        mock.increment(Duration::from_millis(400));
        meter.engine_step(&EngineStep::new(1, 1)); // 1 s: refreshed
        g.finish(Finish::Stop);
    });
    assert_eq!(c.gauge("tokenmeter_requests_stalled", &[]), Some(1.0));
}
