//! Issue 12 §9: docs/deploy's recording and alert rules, loaded into a real Prometheus that
//! scrapes a live meter, give the right value for series as a real scrape first sees them: the
//! model load and the first errors and NaN happen before the first scrape (their series start
//! at their first count, not 0), and a healthy model has no error series at all.
//!
//! The rule files are used as they are, except that their group interval (30 s) becomes 1 s so
//! that the test takes seconds; every wait polls with a deadline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokenmeter_core::clock::Clock;
use tokenmeter_core::{ErrorKind, Finish, Meter, NonFinite, Slo};
use tokenmeter_export::{Exporters, Prometheus};
use tokenmeter_tests::bins;
use tokenmeter_tests::prom::PromServer;

const DEADLINE: Duration = Duration::from_secs(60);

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy/prometheus")
}

/// Copies of the default-naming rule files with a 1 s group interval.
fn fast_rules(dir: &Path) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).expect("rules dir");
    ["recording-rules.yml", "alert-rules.yml"]
        .iter()
        .map(|name| {
            let text = std::fs::read_to_string(deploy().join(name)).expect("rule file");
            let path = dir.join(name);
            std::fs::write(&path, text.replace("interval: 30s", "interval: 1s"))
                .expect("write rules");
            path
        })
        .collect()
}

fn meter(model: &str) -> (Meter, std::sync::Arc<quanta::Mock>) {
    let (clock, mock) = Clock::mock();
    let slo = Slo::new()
        .ttft(Duration::from_millis(500))
        .tpot(Duration::from_millis(50));
    let meter = Meter::builder().model(model).slo(slo).clock(clock).build();
    (meter, mock)
}

/// One request: first token after 100 ms, then 4 more `gap_ms` apart.
fn request(meter: &Meter, mock: &quanta::Mock, gap_ms: u64, end: Result<Finish, ErrorKind>) {
    let mut req = meter.request().prompt_tokens(8).start();
    mock.increment(Duration::from_millis(100));
    req.token();
    for _ in 0..4 {
        mock.increment(Duration::from_millis(gap_ms));
        req.token();
    }
    match end {
        Ok(reason) => req.finish(reason),
        Err(kind) => req.fail(kind),
    };
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * b.abs().max(1.0)
}

/// The values of `expr` by their `model` label.
fn by_model(prom: &PromServer, expr: &str) -> Vec<(String, f64)> {
    let data = prom.query(expr).unwrap_or_else(|e| panic!("`{expr}`: {e}"));
    let mut out: Vec<(String, f64)> = data["result"]
        .as_array()
        .expect("vector")
        .iter()
        .map(|s| {
            let model = s["metric"]["model"].as_str().unwrap_or_default().to_owned();
            let v = s["value"][1].as_str().and_then(|v| v.parse().ok());
            (model, v.expect("sample value"))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

#[test]
fn every_recorded_series_is_right_for_series_as_a_real_scrape_first_sees_them() {
    let Some(prom_bin) = bins::require("prometheus") else {
        return;
    };
    let guard = Exporters::new()
        .prometheus(Prometheus::new().listen("127.0.0.1:0".parse().expect("addr")))
        .install_tracing(false)
        .install()
        .expect("install exporters");
    let target = guard
        .prometheus()
        .and_then(|p| p.local_addr())
        .expect("listener");

    // Before the first scrape: both models load; `faulty` fails 2 of 10 requests (timeouts),
    // sees 3 NaN, and 4 of its 8 successful requests miss the TPOT SLO.
    let (healthy, hmock) = meter("healthy");
    let (faulty, fmock) = meter("faulty");
    healthy.record_model_load(Duration::from_secs(42));
    faulty.record_model_load(Duration::from_secs(300));
    for _ in 0..20 {
        request(&healthy, &hmock, 20, Ok(Finish::Stop));
    }
    for i in 0..10 {
        let end = if i < 2 {
            Err(ErrorKind::Timeout)
        } else {
            Ok(Finish::Stop)
        };
        let gap = if i >= 6 { 100 } else { 20 };
        if i == 5 {
            let mut req = faulty.request().start();
            mock_token(&fmock, &mut req);
            req.record_non_finite(NonFinite {
                nan: 3,
                ..NonFinite::default()
            });
            req.finish(Finish::Stop);
            continue;
        }
        request(&faulty, &fmock, gap, end);
    }

    let dir = std::env::temp_dir().join(format!("tokenmeter-deploy-rules-{}", std::process::id()));
    let prom = PromServer::start(&prom_bin, target, "1s", &fast_rules(&dir));
    let wait = |expr: &str, want: f64| {
        let got = prom.wait_value(expr, DEADLINE, |v| close(v, want));
        assert!(
            close(got, want),
            "`{expr}`: {got} != {want}\n{}",
            prom.log()
        );
    };

    // One-shot events before the first scrape.
    wait(
        r#"tokenmeter:model_load_seconds:avg1h{model="healthy"}"#,
        42.0,
    );
    wait(
        r#"tokenmeter:model_load_seconds:avg1h{model="faulty"}"#,
        300.0,
    );
    wait(r#"tokenmeter:model_loads:increase1h{model="faulty"}"#, 1.0);
    wait(
        r#"tokenmeter:model_load_seconds:increase1h{model="faulty"}"#,
        300.0,
    );
    wait(
        r#"tokenmeter:nonfinite_values:increase5m{model="faulty"}"#,
        3.0,
    );
    // Request counts: the meters started within 5 minutes, so all of them are in the window.
    wait(
        r#"tokenmeter:requests:rate5m{model="healthy"}"#,
        20.0 / 300.0,
    );
    wait(
        r#"tokenmeter:requests:rate5m{model="faulty"}"#,
        10.0 / 300.0,
    );
    wait(
        r#"tokenmeter:requests_succeeded:rate5m{model="faulty"}"#,
        8.0 / 300.0,
    );
    wait(
        r#"tokenmeter:requests_errors:rate5m{model="faulty"}"#,
        2.0 / 300.0,
    );
    wait(r#"tokenmeter:goodput:rate5m{model="faulty"}"#, 4.0 / 300.0);
    // No error series exists for `healthy`: its ratios are 0, not empty.
    wait(r#"tokenmeter:requests_errors:rate5m{model="healthy"}"#, 0.0);
    wait(
        r#"tokenmeter:requests_errors:ratio_5m{model="healthy"}"#,
        0.0,
    );
    wait(
        r#"tokenmeter:requests_timeouts:ratio_5m{model="healthy"}"#,
        0.0,
    );
    wait(
        r#"tokenmeter:requests_errors:ratio_5m{model="faulty"}"#,
        0.2,
    );
    wait(
        r#"tokenmeter:requests_timeouts:ratio_5m{model="faulty"}"#,
        0.2,
    );
    wait(r#"tokenmeter:goodput:ratio_5m{model="healthy"}"#, 1.0);
    wait(r#"tokenmeter:goodput:ratio_5m{model="faulty"}"#, 0.5);
    // `healthy` saw no NaN: no value or 0, never a positive one.
    assert!(
        by_model(
            &prom,
            r#"tokenmeter:nonfinite_values:increase5m{model="healthy"}"#
        )
        .iter()
        .all(|(_, v)| *v == 0.0)
    );

    // The alerts that read them.
    for (alert, state) in [
        ("TokenmeterColdStartSlow", "firing"),
        ("TokenmeterNonFiniteLogits", "firing"),
        ("TokenmeterErrorRatioHigh", "pending"),
        ("TokenmeterTimeoutRatioHigh", "pending"),
        ("TokenmeterGoodputLow", "pending"),
    ] {
        wait(
            &format!(r#"ALERTS{{alertname="{alert}",alertstate="{state}",model="faulty"}}"#),
            1.0,
        );
        assert_eq!(
            by_model(
                &prom,
                &format!(r#"ALERTS{{alertname="{alert}",model="healthy"}}"#)
            ),
            vec![],
            "{alert} for a healthy model"
        );
    }

    // Rates and quantiles need traffic between scrapes: 20 more requests on `healthy` once
    // Prometheus has scraped it.
    wait(
        r#"sum(tokenmeter_requests_total{gen_ai_request_model="healthy"})"#,
        20.0,
    );
    for _ in 0..20 {
        request(&healthy, &hmock, 20, Ok(Finish::Stop));
    }
    wait(
        r#"tokenmeter:requests:rate5m{model="healthy"}"#,
        40.0 / 300.0,
    );
    // Every TTFT is 100 ms, in (50, 100] ms; every TPOT 20 ms, in (10, 25] ms.
    wait(
        r#"tokenmeter:ttft_seconds:p99_5m{model="healthy"}"#,
        0.05 + 0.05 * 0.99,
    );
    wait(
        r#"tokenmeter:tpot_seconds:p99_5m{model="healthy"}"#,
        0.01 + 0.015 * 0.99,
    );
    let tokens = prom.wait_value(
        r#"tokenmeter:output_tokens:rate5m{model="healthy"}"#,
        DEADLINE,
        |v| v > 0.0,
    );
    assert!(tokens.is_finite(), "{tokens}");
    prom.wait_value(
        r#"tokenmeter:output_tokens:rate5m_avg1d{model="healthy"}"#,
        DEADLINE,
        |v| v > 0.0,
    );
    drop(prom);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The first token of a request, 100 ms after its start.
fn mock_token(mock: &quanta::Mock, req: &mut tokenmeter_core::RequestGuard) {
    mock.increment(Duration::from_millis(100));
    req.token();
}
