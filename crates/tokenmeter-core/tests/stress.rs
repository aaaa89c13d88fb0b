//! 8 threads, thousands of requests: every counter reconciles exactly afterwards.

mod common;

use std::sync::Arc;

use metrics_util::debugging::DebuggingRecorder;
use tokenmeter_core::{ErrorKind, Finish, Meter};

#[test]
fn counters_reconcile_under_concurrency() {
    let rec = DebuggingRecorder::new();
    let snap = rec.snapshotter();
    metrics::set_global_recorder(rec).expect("the only global recorder in this test binary");
    let meter = Arc::new(
        Meter::builder()
            .model("stress")
            .request_labels(["tenant"], 3)
            .build(),
    );
    let threads = 8;
    let per_thread = 2_000u64;
    std::thread::scope(|s| {
        for t in 0..threads {
            let meter = Arc::clone(&meter);
            s.spawn(move || {
                for i in 0..per_thread {
                    let tenant = format!("t{}", (t as u64 + i) % 5);
                    let mut g = meter
                        .request()
                        .prompt_tokens(3)
                        .label("tenant", tenant)
                        .start();
                    g.scheduled();
                    let n = i % 7;
                    for _ in 0..n {
                        g.token();
                    }
                    match i % 4 {
                        0 => {
                            g.finish(Finish::Stop);
                        }
                        1 => {
                            g.finish(Finish::Length);
                        }
                        2 => {
                            g.fail(ErrorKind::Internal);
                        }
                        _ => drop(g),
                    }
                }
            });
        }
    });
    let c = common::capture(&snap);
    let total = threads as u64 * per_thread;
    let tokens: u64 = (0..per_thread).map(|i| i % 7).sum::<u64>() * threads as u64;
    assert_eq!(c.counter("tokenmeter_requests_total", &[]), total);
    assert_eq!(
        c.counter("tokenmeter_requests_total", &["finish_reason=stop"]),
        total / 4
    );
    assert_eq!(
        c.counter("tokenmeter_requests_total", &["finish_reason=length"]),
        total / 4
    );
    assert_eq!(
        c.counter("tokenmeter_requests_total", &["finish_reason=error"]),
        total / 4
    );
    assert_eq!(
        c.counter("tokenmeter_requests_total", &["finish_reason=cancelled"]),
        total / 4
    );
    assert_eq!(c.counter("tokenmeter_output_tokens_total", &[]), tokens);
    assert_eq!(c.counter("tokenmeter_input_tokens_total", &[]), 3 * total);
    let per_request_tokens: f64 = c.hist("tokenmeter_request_output_tokens", &[]).iter().sum();
    assert_eq!(per_request_tokens as u64, tokens);
    assert_eq!(
        c.hist("tokenmeter_inter_token_latency_seconds", &[]).len() as u64,
        (0..per_thread)
            .map(|i| (i % 7).saturating_sub(1))
            .sum::<u64>()
            * threads as u64
    );
    let running: f64 = c
        .gauges
        .iter()
        .filter(|(k, _)| k.starts_with("tokenmeter_requests_running"))
        .map(|(_, v)| v)
        .sum();
    let waiting: f64 = c
        .gauges
        .iter()
        .filter(|(k, _)| k.starts_with("tokenmeter_requests_waiting"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!((running, waiting), (0.0, 0.0));
    assert!(c.counter("tokenmeter_requests_total", &["tenant=other"]) > 0);
    assert_eq!(
        c.counter("tokenmeter_labels_overflow_total", &[]),
        c.counter("tokenmeter_requests_total", &["tenant=other"])
    );
    let t = meter.totals();
    assert_eq!(
        (t.requests_started, t.requests_ended, t.output_tokens),
        (total, total, tokens)
    );
}
