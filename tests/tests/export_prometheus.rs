//! Prometheus export against a real Prometheus (from Debian's package, installed by
//! scripts/install-test-deps) scraping our listener on 127.0.0.1, plus promtool on the
//! exposition, the rules and their unit tests, and every dashboard query.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokenmeter_core::catalog;
use tokenmeter_core::clock::Clock;
use tokenmeter_core::{ErrorKind, Finish, Meter, Naming};
use tokenmeter_export::{Exporters, Prometheus};
use tokenmeter_tests::bins;
use tokenmeter_tests::prom::PromServer;

use tokenmeter_tests::exporter::installed;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy")
}

/// Runs `n` requests on `meter` with mock time: TTFT = 10 ms * (i % 10 + 1), `tokens` tokens
/// 20 ms apart, a failure every 7th.
fn workload(meter: &Meter, mock: &quanta::Mock, n: u64, tokens: u32) {
    for i in 0..n {
        let mut req = meter.request().prompt_tokens(16).start();
        mock.increment(Duration::from_millis(2));
        req.scheduled();
        mock.increment(Duration::from_millis(10 * (i % 10 + 1)));
        req.token();
        for _ in 1..tokens {
            mock.increment(Duration::from_millis(20));
            req.token();
        }
        if i % 7 == 6 {
            req.fail(ErrorKind::Timeout);
        } else {
            req.finish(Finish::Stop);
        }
    }
}

fn bucket_index(bounds: &[f64], v: f64) -> usize {
    bounds
        .iter()
        .position(|b| v <= *b + 1e-12)
        .unwrap_or(bounds.len())
}

#[test]
fn real_prometheus_scrape_matches_the_in_process_numbers() {
    let Some(prom_bin) = bins::require("prometheus") else {
        return;
    };
    let inst = installed();
    let (clock, mock) = Clock::mock();
    let meter = Meter::builder()
        .model("prom-e2e")
        .constant_label("tenant", "a \"quoted\"\nvalue\\x \\\"")
        .clock(clock)
        .build();
    workload(&meter, &mock, 50, 5);
    let totals = meter.totals();
    let snap = meter.snapshot();
    // The vLLM preset too, so that its dashboard queries hit data.
    let (vclock, vmock) = Clock::mock();
    let vmeter = Meter::builder()
        .model("prom-vllm")
        .naming(Naming::Vllm)
        .clock(vclock)
        .build();
    workload(&vmeter, &vmock, 20, 3);

    let rules = vec![
        deploy().join("prometheus/recording-rules.yml"),
        deploy().join("prometheus/alert-rules.yml"),
        deploy().join("prometheus/ab-recording-rules.yml"),
    ];
    let prom = PromServer::start(&prom_bin, inst.addr, "250ms", &rules);
    let sel = r#"gen_ai_request_model="prom-e2e""#;
    let deadline = Duration::from_secs(60);

    // Exact counters, read back through a real scrape and PromQL.
    let out = prom.wait_value(
        &format!("tokenmeter_output_tokens_total{{{sel}}}"),
        deadline,
        |v| v > 0.0,
    );
    assert_eq!(out as u64, totals.output_tokens, "{}", prom.log());
    assert_eq!(totals.output_tokens, 250);
    let input = prom.wait_value(
        &format!("tokenmeter_input_tokens_total{{{sel}}}"),
        deadline,
        |_| true,
    );
    assert_eq!(input as u64, totals.input_tokens);
    let ended = prom.wait_value(
        &format!("sum(tokenmeter_requests_total{{{sel}}})"),
        deadline,
        |_| true,
    );
    assert_eq!(ended as u64, 50);
    let timeouts = prom.wait_value(
        &format!(r#"sum(tokenmeter_requests_total{{{sel},error_type="timeout"}})"#),
        deadline,
        |_| true,
    );
    assert_eq!(timeouts as u64, 7);
    let ttft_count = prom.wait_value(
        &format!("gen_ai_server_time_to_first_token_seconds_count{{{sel}}}"),
        deadline,
        |_| true,
    );
    assert_eq!(ttft_count as u64, snap.ttft.count);

    // Label values with quotes, a newline, a backslash and a backslash before a quote survive
    // exposition and parsing.
    let escaped =
        prom.scalar(r#"sum(tokenmeter_output_tokens_total{tenant="a \"quoted\"\nvalue\\x \\\""})"#);
    assert_eq!(escaped, Some(250.0));

    // histogram_quantile within one bucket of the in-process snapshot.
    let ttft_def = catalog::by_id("ttft").expect("ttft");
    let bounds = meter
        .metric_names()
        .buckets(ttft_def)
        .expect("buckets")
        .to_vec();
    for (q, want) in [
        (0.5, snap.ttft.p50),
        (0.9, snap.ttft.p90),
        (0.99, snap.ttft.p99),
    ] {
        let got = prom
            .scalar(&format!(
                "histogram_quantile({q}, sum by (le) (gen_ai_server_time_to_first_token_seconds_bucket{{{sel}}}))"
            ))
            .expect("quantile");
        let (a, b) = (bucket_index(&bounds, got), bucket_index(&bounds, want));
        assert!(
            a.abs_diff(b) <= 1,
            "p{q}: prometheus {got} (bucket {a}) vs snapshot {want} (bucket {b})"
        );
    }

    // No summary anywhere in what Prometheus scraped.
    let types = prom
        .query(r#"count by (__name__) ({__name__=~".+_quantile|.+", quantile!=""})"#)
        .expect("query");
    assert_eq!(
        types["result"].as_array().map(Vec::len),
        Some(0),
        "a summary was exposed: {types}"
    );

    // The recording rules evaluate against our real series.
    prom.wait_value(
        r#"tokenmeter:requests:rate5m{model="prom-e2e"}"#,
        deadline,
        |v| v >= 0.0,
    );

    // Every dashboard query runs without error on the live Prometheus.
    for file in [
        "grafana/tokenmeter.json",
        "grafana/tokenmeter-vllm.json",
        "grafana/tokenmeter-ab.json",
    ] {
        let text = std::fs::read_to_string(deploy().join(file)).expect("dashboard");
        let dash: serde_json::Value = serde_json::from_str(&text).expect("dashboard json");
        let mut n = 0;
        for panel in dash["panels"].as_array().expect("panels") {
            for target in panel["targets"].as_array().expect("targets") {
                let expr = target["expr"].as_str().expect("expr");
                let expr = expr
                    .replace("$__rate_interval", "1m")
                    .replace("$model", ".*");
                assert!(
                    !expr.contains('$'),
                    "unsubstituted variable in {file}: {expr}"
                );
                prom.query(&expr)
                    .unwrap_or_else(|e| panic!("{file}: `{expr}` failed: {e}"));
                // Latency quantiles show exemplars (issue 15 §3); Grafana asks for them with
                // the panel's query, which the live Prometheus must accept.
                if expr.starts_with("histogram_quantile(") {
                    assert_eq!(target["exemplar"], true, "{file}: {expr}");
                    let path = format!(
                        "/api/v1/query_exemplars?query={}&start=0&end=4102444800",
                        tokenmeter_tests::http::encode(&expr)
                    );
                    prom.api(&path)
                        .unwrap_or_else(|e| panic!("{file}: exemplars of `{expr}`: {e}"));
                }
                n += 1;
            }
        }
        assert!(n >= 20, "{file}: only {n} queries");
    }
    // And the vLLM preset's series made it, under vLLM's names and labels.
    let v = prom.wait_value(
        r#"vllm:generation_tokens_total{model_name="prom-vllm"}"#,
        deadline,
        |_| true,
    );
    assert_eq!(v as u64, vmeter.totals().output_tokens);
}

#[test]
fn exposition_has_buckets_for_every_histogram_and_passes_promtool() {
    let inst = installed();
    let (clock, mock) = Clock::mock();
    let meter = Meter::builder()
        .model("promtool-check")
        .constant_label("note", "line1\nline2 \"q\"")
        .clock(clock)
        .build();
    workload(&meter, &mock, 10, 3);
    let text = inst.render.render();
    assert!(!text.contains("quantile=\""), "summary rendered");
    for d in catalog::all().filter(|d| d.kind == catalog::MetricKind::Histogram) {
        let name = meter.metric_names().name(d);
        if text.contains(&format!("{name}_count")) {
            assert!(
                text.contains(&format!("# TYPE {name} histogram")),
                "{name} not a histogram"
            );
        }
    }
    // The scrape endpoint serves the same text.
    let (status, body) = tokenmeter_tests::http::get(inst.addr, "/metrics").expect("scrape");
    assert_eq!(status, 200);
    assert!(body.contains("promtool-check"));
    let Some(promtool) = bins::require("promtool") else {
        return;
    };
    bins::check_metrics(&promtool, &body);
}

#[test]
fn promtool_checks_and_unit_tests_every_rule() {
    let Some(promtool) = bins::require("promtool") else {
        return;
    };
    let dir = deploy().join("prometheus");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {args:?}:\n{text}");
        text
    };
    run(&[
        "check",
        "rules",
        "recording-rules.yml",
        "vllm-recording-rules.yml",
        "alert-rules.yml",
        "ab-recording-rules.yml",
    ]);
    run(&[
        "test",
        "rules",
        "alert-rules-test.yml",
        "vllm-alert-rules-test.yml",
        "ab-recording-rules-test.yml",
    ]);
    // Every alert has at least one firing unit test in each test file.
    let alerts = std::fs::read_to_string(dir.join("alert-rules.yml")).expect("rules");
    for test_file in ["alert-rules-test.yml", "vllm-alert-rules-test.yml"] {
        let tests = std::fs::read_to_string(dir.join(test_file)).expect("tests");
        for line in alerts
            .lines()
            .filter_map(|l| l.trim().strip_prefix("- alert: "))
        {
            let firing = tests
                .split("alertname: ")
                .skip(1)
                .any(|chunk| chunk.starts_with(line) && chunk.contains("exp_labels"));
            assert!(firing, "{test_file}: no firing test for {line}");
        }
    }
}

#[test]
fn cardinality_cap_holds_under_a_million_distinct_label_values() {
    let inst = installed();
    let cap = 50;
    let meter = Meter::builder()
        .model("cardinality")
        .request_labels(["tenant"], cap)
        .build();
    let n = 1_000_000u64;
    for i in 0..n {
        let mut req = meter.request().label("tenant", format!("t{i}")).start();
        req.token();
        req.finish(Finish::Stop);
    }
    let text = inst.render.render();
    let series: std::collections::HashSet<&str> = text
        .lines()
        .filter(|l| {
            l.starts_with("tokenmeter_output_tokens_total{")
                && l.contains("gen_ai_request_model=\"cardinality\"")
        })
        .collect();
    // The meter also registers its label-less series at build (value 0); the tenant-labelled
    // ones are capped.
    let tenants = series.iter().filter(|l| l.contains("tenant=\"")).count();
    assert_eq!(tenants, cap + 1, "cap distinct values plus `other`");
    assert!(series.len() <= cap + 2, "{series:?}");
    assert!(series.iter().any(|l| l.contains("tenant=\"other\"")));
    let total: f64 = series
        .iter()
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(total as u64, n, "no token lost to the cap");
    let overflow = text
        .lines()
        .find(|l| l.starts_with("tokenmeter_labels_overflow_total{") && l.contains("cardinality"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok());
    assert_eq!(overflow, Some((n - cap as u64) as f64));
    assert!(
        text.len() < 4 << 20,
        "exposition stays small: {} bytes",
        text.len()
    );
}

#[test]
fn a_taken_port_is_a_clear_error_not_a_panic() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let Err(err) = Exporters::new()
        .prometheus(Prometheus::new().listen(addr))
        .install_tracing(false)
        .build()
    else {
        panic!("binding a taken port must fail");
    };
    let msg = err.to_string();
    assert!(
        msg.contains(&addr.to_string()) && msg.contains("Prometheus"),
        "{msg}"
    );
}
