//! Random timelines checked against a plain reference implementation of the definitions in
//! docs/definitions.md.

mod common;

use std::time::Duration;

use common::capture;
use metrics_util::debugging::DebuggingRecorder;
use proptest::prelude::*;
use tokenmeter_core::catalog::core::ITL_BUCKETS;
use tokenmeter_core::clock::Clock;
use tokenmeter_core::{ErrorKind, Finish, Meter, Slo};

#[derive(Clone, Debug)]
enum End {
    Finish(Finish),
    Fail,
    Drop,
}

#[derive(Clone, Debug)]
struct Req {
    prompt: usize,
    /// Queue time in µs, when the server calls scheduled().
    queue_us: Option<u64>,
    /// (gap in µs since the previous event, tokens in the step)
    steps: Vec<(u64, u32)>,
    tail_us: u64,
    end: End,
    idle_us: u64,
}

fn req() -> impl Strategy<Value = Req> {
    let end = prop_oneof![
        Just(End::Finish(Finish::Stop)),
        Just(End::Finish(Finish::Length)),
        Just(End::Finish(Finish::Cancelled)),
        Just(End::Fail),
        Just(End::Drop),
    ];
    (
        0usize..5000,
        proptest::option::of(0u64..2_000_000),
        proptest::collection::vec((0u64..300_000, 1u32..5), 0..40),
        0u64..50_000,
        end,
        0u64..1_000_000,
    )
        .prop_map(|(prompt, queue_us, steps, tail_us, end, idle_us)| Req {
            prompt,
            queue_us,
            steps,
            tail_us,
            end,
            idle_us,
        })
}

/// The definitions, written plainly, for one request. Times in ns from arrival.
#[derive(Default)]
struct Expected {
    n: u64,
    ttft_ns: Option<u64>,
    tpot_ns: Option<u64>,
    e2e_ns: u64,
    queue_ns: Option<u64>,
    /// raw ITL observations (per-token gap, count)
    itl: Vec<(u64, u64)>,
    itl_sum_ns: u64,
}

fn reference(r: &Req) -> Expected {
    let mut e = Expected::default();
    let mut t = 0u64;
    if let Some(q) = r.queue_us {
        t += q * 1000;
        e.queue_ns = Some(t);
    }
    let (mut first, mut last) = (None::<u64>, 0u64);
    for &(gap_us, k) in &r.steps {
        t += gap_us * 1000;
        match first {
            None => {
                first = Some(t);
                if k > 1 {
                    e.itl.push((0, u64::from(k - 1)));
                }
            }
            Some(_) => {
                let gap = t - last;
                e.itl.push((gap / u64::from(k), u64::from(k)));
                e.itl_sum_ns += gap;
            }
        }
        last = t;
        e.n += u64::from(k);
    }
    t += r.tail_us * 1000;
    e.e2e_ns = t;
    e.ttft_ns = first;
    if let Some(f) = first
        && e.n >= 2
    {
        e.tpot_ns = Some((last - f) / (e.n - 1));
    }
    e
}

/// What the exporter receives for ITL: per exported bucket, its mean repeated `count` times.
fn exported_itl(raw: &[(u64, u64)]) -> Vec<f64> {
    let bounds: Vec<u64> = ITL_BUCKETS
        .iter()
        .map(|b| (b * 1e9).round() as u64)
        .collect();
    let mut count = vec![0u64; bounds.len() + 1];
    let mut sum = vec![0u64; bounds.len() + 1];
    for &(per, k) in raw {
        let b = bounds.partition_point(|&x| x < per);
        count[b] += k;
        sum[b] += per * k; // per-token gaps sum to the step's gap up to integer division
    }
    let mut out = Vec::new();
    for (c, s) in count.iter().zip(&sum) {
        out.extend(std::iter::repeat_n(
            *s as f64 / *c as f64 / 1e9,
            *c as usize,
        ));
    }
    out
}

fn secs(ns: u64) -> f64 {
    Duration::from_nanos(ns).as_secs_f64()
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(f64::total_cmp);
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn exported_values_match_the_definitions(reqs in proptest::collection::vec(req(), 1..12)) {
        let (clock, mock) = Clock::mock();
        let slo = Slo::new().ttft(Duration::from_millis(800)).tpot(Duration::from_millis(100));
        let meter = Meter::builder()
            .clock(clock)
            .slo(slo)
            .window(Duration::from_secs(24 * 3600))
            .flush_interval(Duration::from_secs(24 * 3600))
            .build();
        let rec = DebuggingRecorder::new();
        let snap = rec.snapshotter();
        metrics::with_local_recorder(&rec, || {
            for r in &reqs {
                let mut g = meter.request().prompt_tokens(r.prompt).start();
                if let Some(q) = r.queue_us {
                    mock.increment(Duration::from_micros(q));
                    g.scheduled();
                }
                for &(gap, k) in &r.steps {
                    mock.increment(Duration::from_micros(gap));
                    g.tokens(k);
                }
                mock.increment(Duration::from_micros(r.tail_us));
                match &r.end {
                    End::Finish(f) => {
g.finish(*f);
},
                    End::Fail => {
g.fail(ErrorKind::Timeout);
},
                    End::Drop => drop(g),
                }
                mock.increment(Duration::from_micros(r.idle_us));
            }
        });
        let c = capture(&snap);
        let exp: Vec<Expected> = reqs.iter().map(reference).collect();

        let want_ttft = sorted(exp.iter().filter_map(|e| e.ttft_ns.map(secs)).collect());
        prop_assert_eq!(c.hist("gen_ai_server_time_to_first_token_seconds", &[]), want_ttft);
        let want_tpot = sorted(exp.iter().filter_map(|e| e.tpot_ns.map(secs)).collect());
        prop_assert_eq!(c.hist("gen_ai_server_time_per_output_token_seconds", &[]), want_tpot);
        let want_e2e = sorted(exp.iter().map(|e| secs(e.e2e_ns)).collect());
        prop_assert_eq!(c.hist("gen_ai_server_request_duration_seconds", &[]), want_e2e);
        let want_queue = sorted(exp.iter().filter_map(|e| e.queue_ns.map(secs)).collect());
        prop_assert_eq!(c.hist("tokenmeter_request_queue_time_seconds", &[]), want_queue);

        // ITL: exact bucket placement; count n - 1 and sum last - first per request.
        let itl = c.hist("tokenmeter_inter_token_latency_seconds", &[]);
        let mut want_itl = Vec::new();
        for e in &exp {
            want_itl.extend(exported_itl(&e.itl));
        }
        let want_itl = sorted(want_itl);
        prop_assert_eq!(itl.len(), want_itl.len());
        let want_count: u64 = exp.iter().map(|e| e.n.saturating_sub(1)).sum();
        prop_assert_eq!(itl.len() as u64, want_count);
        for (got, want) in itl.iter().zip(&want_itl) {
            prop_assert!((got - want).abs() <= 1e-9, "itl {} vs {}", got, want);
        }
        let want_sum: u64 = exp.iter().map(|e| e.itl_sum_ns).sum();
        let got_sum: f64 = itl.iter().sum();
        prop_assert!((got_sum - secs(want_sum)).abs() < 1e-6, "itl sum {} vs {}", got_sum, secs(want_sum));

        // Counters reconcile exactly.
        let n_total: u64 = exp.iter().map(|e| e.n).sum();
        prop_assert_eq!(c.counter("tokenmeter_output_tokens_total", &[]), n_total);
        prop_assert_eq!(meter.totals().output_tokens, n_total);
        let prompts: u64 = reqs.iter().map(|r| r.prompt as u64).sum();
        prop_assert_eq!(c.counter("tokenmeter_input_tokens_total", &[]), prompts);
        prop_assert_eq!(c.counter("tokenmeter_requests_total", &[]), reqs.len() as u64);
        let count = |pred: fn(&End) -> bool| reqs.iter().filter(|r| pred(&r.end)).count() as u64;
        prop_assert_eq!(c.counter("tokenmeter_requests_total", &["finish_reason=cancelled"]),
            count(|e| matches!(e, End::Drop | End::Finish(Finish::Cancelled))));
        prop_assert_eq!(c.counter("tokenmeter_requests_total", &["error_type=timeout"]), count(|e| matches!(e, End::Fail)));
        let goodput = reqs.iter().zip(&exp).filter(|(r, e)| {
            matches!(r.end, End::Finish(Finish::Stop | Finish::Length))
                && e.ttft_ns.is_some_and(|t| t <= 800_000_000)
                && e.tpot_ns.is_none_or(|t| t <= 100_000_000)
        }).count() as u64;
        prop_assert_eq!(c.counter("tokenmeter_requests_goodput_total", &[]), goodput);

        // The snapshot agrees.
        let s = meter.snapshot();
        prop_assert_eq!(s.requests_ended, reqs.len() as u64);
        prop_assert_eq!(s.output_tokens, n_total);
        prop_assert_eq!(s.goodput_requests, goodput);
        prop_assert_eq!(s.itl.count, want_count);
        prop_assert_eq!(s.ttft.count, exp.iter().filter(|e| e.ttft_ns.is_some()).count() as u64);
        prop_assert_eq!((s.running, s.waiting), (0, 0));
    }
}
