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
use tokenmeter_export::Prometheus;
use tokenmeter_tests::prom::PromServer;
use tokenmeter_tests::{bins, exporter};

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
    let target = exporter::installed().addr;

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

/// Issue 17: the golden-set rules pass promtool's check and unit tests, and the alert fires on
/// the series a live probe exports: the exposition of a probe whose score fell below its
/// baseline, fed to promtool as the input series, raises `TokenmeterGoldenScoreBelowBaseline`
/// with exactly the exported labels.
#[test]
fn golden_rules_pass_promtool_and_fire_on_a_live_probes_series() {
    use tokenmeter::quality::probe::{
        GOLDEN_FORMAT_VERSION, GoldenBaseline, GoldenSet, Probe, ProbeAnswer, ProbeConfig, Scoring,
    };
    let Some(promtool) = bins::require("promtool") else {
        return;
    };
    let promtool_in = |dir: &Path, args: &[&str]| {
        let out = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(dir)
            .output()
            .expect("promtool");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    };
    let (ok, text) = promtool_in(&deploy(), &["check", "rules", "golden-rules.yml"]);
    assert!(ok, "{text}");
    let (ok, text) = promtool_in(&deploy(), &["test", "rules", "golden-rules-test.yml"]);
    assert!(ok, "{text}");

    // A live probe: v2 answers half the set right; the v1 baseline was 0.95.
    let mut local = Prometheus::new()
        .without_listener()
        .build()
        .expect("exporter");
    let recorder = local.take_recorder().expect("recorder");
    let render = local.renderer();
    metrics::with_local_recorder(&recorder, || {
        let (meter, _mock) = meter("golden");
        let set = GoldenSet::parse(
            "facts",
            "{\"id\": \"fr\", \"prompt\": \"Capital of France?\", \"references\": [\"Paris\"], \"scoring\": \"contains\"}\n\
             {\"id\": \"de\", \"prompt\": \"Capital of Germany?\", \"references\": [\"Berlin\"], \"scoring\": \"contains\"}",
            "facts.jsonl",
        )
        .expect("set");
        let config = ProbeConfig {
            model_version: "v2".into(),
            ..ProbeConfig::default()
        };
        let probe = Probe::new(&meter, set, config, |_| {
            Ok::<_, String>(ProbeAnswer::new("Paris"))
        })
        .expect("probe");
        probe
            .set_baseline(GoldenBaseline {
                version: GOLDEN_FORMAT_VERSION,
                golden_set: "facts".into(),
                model_version: "v1".into(),
                prompts: 2,
                scores: [(Scoring::Contains, 0.95)].into(),
            })
            .expect("baseline");
        assert_eq!(probe.run_pass().score_of(Scoring::Contains), Some(0.5));
    });
    let text = render.render();
    bins::check_metrics(&promtool, &text);
    let line = |name: &str| -> String {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{")))
            .unwrap_or_else(|| panic!("no {name} in\n{text}"))
            .to_owned()
    };
    let score = line("tokenmeter_quality_golden_score_ratio");
    let baseline = line("tokenmeter_quality_golden_baseline_score_ratio");
    assert!(line("tokenmeter_quality_golden_prompts_total").contains("outcome="));
    let series = |l: &str| l.rsplit_once(' ').expect("value").0.to_owned();
    let labels = score
        .split_once('{')
        .and_then(|(_, rest)| rest.split_once('}'))
        .expect("labels")
        .0;
    assert!(labels.contains("golden_set=\"facts\"") && labels.contains("model_version=\"v2\""));
    let exp_labels: Vec<String> = labels
        .split("\",")
        .map(|kv| {
            let (k, v) = kv.split_once("=\"").expect("k=\"v\"");
            format!("{k}: \"{}\"", v.trim_end_matches('"'))
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("tokenmeter-golden-rules-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::copy(
        deploy().join("golden-rules.yml"),
        dir.join("golden-rules.yml"),
    )
    .expect("copy");
    let test = format!(
        "rule_files: [golden-rules.yml]\n\
         evaluation_interval: 30s\n\
         tests:\n\
         \x20 - interval: 1m\n\
         \x20   input_series:\n\
         \x20     - series: '{}'\n\
         \x20       values: '0.5x30'\n\
         \x20     - series: '{}'\n\
         \x20       values: '0.95x30'\n\
         \x20   alert_rule_test:\n\
         \x20     - eval_time: 15m\n\
         \x20       alertname: TokenmeterGoldenScoreBelowBaseline\n\
         \x20       exp_alerts:\n\
         \x20         - exp_labels: {{severity: warning, {}}}\n\
         \x20           exp_annotations:\n\
         \x20             summary: \"golden set facts (contains) on golden v2 scores 0.50, more than 0.05 below its baseline\"\n",
        series(&score),
        series(&baseline),
        exp_labels.join(", ")
    );
    std::fs::write(dir.join("live-test.yml"), &test).expect("write test");
    let (ok, out) = promtool_in(&dir, &["test", "rules", "live-test.yml"]);
    std::fs::remove_dir_all(&dir).ok();
    assert!(ok, "{out}\n{test}");
}
