//! `tokenmeter_export::init_for(&meter)`: a meter with its own prefix and bucket overrides gets
//! its bounds in the Prometheus exposition, and the request log runs through the non-blocking
//! writer. One test in this binary: init_for() installs process-global state.

use std::time::Duration;

use tokenmeter_core::catalog;
use tokenmeter_core::clock::Clock;
use tokenmeter_core::{Finish, Meter};

#[test]
fn init_for_uses_the_meters_prefix_and_buckets() {
    let vars = [
        ("TOKENMETER_PROMETHEUS_ADDR", "127.0.0.1:0"),
        ("TOKENMETER_REQUEST_LOG", "stderr"),
    ];
    for (k, v) in vars {
        // SAFETY: this test binary has one test, and no other thread reads the environment
        // while it is set (init_for() below reads it on this thread).
        unsafe { std::env::set_var(k, v) };
    }
    let (clock, mock) = Clock::mock();
    let meter = Meter::builder()
        .model("init-for")
        .prefix("acme")
        .buckets("itl", &[0.004, 0.04])
        .clock(clock)
        .build();
    let guard = tokenmeter_export::init_for(&meter).expect("init_for");
    let addr = guard
        .prometheus()
        .and_then(|p| p.local_addr())
        .expect("listener");
    for _ in 0..2 {
        let mut req = meter.request().prompt_tokens(2).start();
        mock.increment(Duration::from_millis(20));
        req.token();
        for _ in 0..2 {
            mock.increment(Duration::from_millis(10));
            req.token();
        }
        req.finish(Finish::Stop);
    }
    let (status, body) = tokenmeter_tests::http::get(addr, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    let itl = meter
        .metric_names()
        .name(catalog::by_id("itl").expect("itl"));
    assert_eq!(itl, "acme_inter_token_latency_seconds");
    let bucket = |le: &str| {
        body.lines()
            .find(|l| {
                l.starts_with(&format!("{itl}_bucket{{")) && l.contains(&format!("le=\"{le}\""))
            })
            .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
    };
    assert_eq!(bucket("0.004"), Some(0), "{body}");
    assert_eq!(bucket("0.04"), Some(4), "{body}");
    assert_eq!(bucket("+Inf"), Some(4), "{body}");
    let log = guard.request_log().expect("request log on stderr");
    assert_eq!(log.dropped_lines(), 0);
}
