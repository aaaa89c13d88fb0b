//! A fleet on existing engines (issue 15 §4): three replicas (three meters, each with its own
//! Prometheus exporter and listener, labelled `replica`), each scraped by Prometheus agents
//! that remote-write to one central Prometheus, all on 127.0.0.1, with the agent
//! configurations of docs/deploy/fleet/. The central server loads docs/deploy's recording and
//! alert rules unchanged.
//!
//! Prometheus 2.42 (Debian's) ingests a histogram either as native or as classic buckets, so
//! each replica has two agents: one with native histograms that forwards only the histogram
//! families, one without that forwards everything else (classic buckets included). From
//! Prometheus 2.45, one agent with `scrape_classic_histograms: true` does both.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokenmeter_core::catalog::core::TTFT;
use tokenmeter_core::catalog::{self, MetricKind};
use tokenmeter_core::clock::Clock;
use tokenmeter_core::{Finish, Meter};
use tokenmeter_export::{Prometheus, PrometheusExporter};
use tokenmeter_tests::bins;
use tokenmeter_tests::prom::PromServer;

const REPLICAS: usize = 3;
/// Requests per replica, in two halves (so the rules' rates see an increase).
const PER_REPLICA: u64 = 100;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/deploy")
}

/// The regex of histogram family names the native agents forward: every catalog histogram
/// under the default naming.
fn histogram_families() -> String {
    let meter = Meter::builder().model("names").build();
    let names = meter.metric_names();
    let mut hist: Vec<&str> = catalog::all()
        .filter(|d| d.kind == MetricKind::Histogram)
        .map(|d| names.name(d))
        .collect();
    hist.sort_unstable();
    hist.join("|")
}

/// One replica: its exporter (listener on a random port, `replica` label) and meter.
struct Replica {
    exporter: PrometheusExporter,
    recorder: tokenmeter_export::prometheus::PrometheusRecorder,
    meter: Meter,
    mock: std::sync::Arc<quanta::Mock>,
    /// Mean TTFT of its requests, seconds.
    base: f64,
}

impl Replica {
    fn new(i: usize) -> Self {
        let mut exporter = Prometheus::new()
            .listen("127.0.0.1:0".parse().expect("addr"))
            .global_label("replica", format!("r{i}"))
            .build()
            .expect("exporter");
        let recorder = exporter.take_recorder().expect("recorder");
        let (clock, mock) = Clock::mock();
        let meter = metrics::with_local_recorder(&recorder, || {
            Meter::builder().model("fleet").clock(clock).build()
        });
        Replica {
            exporter,
            recorder,
            meter,
            mock,
            base: [0.2, 0.5, 1.5][i],
        }
    }

    /// Runs requests `from..to` (TTFT spread ±10 % around `base`, 5 tokens 20 ms apart);
    /// returns their TTFTs and output tokens.
    fn run(&self, from: u64, to: u64) -> (Vec<f64>, u64) {
        metrics::with_local_recorder(&self.recorder, || {
            let mut ttfts = Vec::new();
            let mut tokens = 0;
            for i in from..to {
                let mut req = self.meter.request().prompt_tokens(8).start();
                let f = 0.9 + 0.2 * i as f64 / (PER_REPLICA - 1) as f64;
                self.mock
                    .increment(Duration::from_nanos((self.base * f * 1e9).round() as u64));
                req.token();
                for _ in 1..5 {
                    self.mock.increment(Duration::from_millis(20));
                    req.token();
                }
                let s = req.finish(Finish::Stop);
                ttfts.push(s.ttft.expect("ttft").as_secs_f64());
                tokens += s.output_tokens;
            }
            (ttfts, tokens)
        })
    }
}

fn agent_config(file: &str, target: std::net::SocketAddr, central: std::net::SocketAddr) -> String {
    let text = std::fs::read_to_string(deploy().join("fleet").join(file)).expect("agent config");
    assert!(text.contains("replica-0:9464") && text.contains("central-prometheus:9090"));
    text.replace("replica-0:9464", &target.to_string())
        .replace("central-prometheus:9090", &central.to_string())
        .replace("scrape_interval: 15s", "scrape_interval: 1s")
}

fn samples(v: &Value) -> Vec<(Value, f64)> {
    v["result"]
        .as_array()
        .map(|r| {
            r.iter()
                .map(|s| {
                    let val = s["value"][1].as_str().and_then(|x| x.parse().ok());
                    (s["metric"].clone(), val.unwrap_or(f64::NAN))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn three_replicas_through_agents_to_one_central_prometheus() {
    let Some(prom_bin) = bins::require("prometheus") else {
        return;
    };
    // The docs' native-agent config forwards exactly the catalog's histogram families.
    let native_cfg =
        std::fs::read_to_string(deploy().join("fleet/agent-native.yml")).expect("agent-native.yml");
    assert!(
        native_cfg.contains(&format!("regex: '{}'", histogram_families())),
        "docs/deploy/fleet/agent-native.yml must keep exactly: {}",
        histogram_families()
    );

    let replicas: Vec<Replica> = (0..REPLICAS).map(Replica::new).collect();
    let mut ttfts = Vec::new();
    let mut tokens = 0;
    for r in &replicas {
        let (t, n) = r.run(0, PER_REPLICA / 2);
        ttfts.extend(t);
        tokens += n;
    }

    let central_cfg = format!(
        "global:\n  evaluation_interval: 1s\nrule_files:\n  - {}\n  - {}\n",
        deploy().join("prometheus/recording-rules.yml").display(),
        deploy().join("prometheus/alert-rules.yml").display()
    );
    let central = PromServer::start_config(
        &prom_bin,
        &central_cfg,
        &[
            "--web.enable-remote-write-receiver",
            "--enable-feature=native-histograms",
        ],
        false,
    );
    let mut agents = Vec::new();
    for r in &replicas {
        let target = r.exporter.local_addr().expect("listener");
        agents.push(PromServer::start_config(
            &prom_bin,
            &agent_config("agent-native.yml", target, central.addr),
            &["--enable-feature=agent,native-histograms"],
            true,
        ));
        agents.push(PromServer::start_config(
            &prom_bin,
            &agent_config("agent-classic.yml", target, central.addr),
            &["--enable-feature=agent"],
            true,
        ));
    }
    let deadline = Duration::from_secs(90);
    let sel = r#"gen_ai_request_model="fleet""#;
    // Every replica has reached the central server, then the second half of the traffic.
    central.wait_value(
        &format!("count(count by (replica) (tokenmeter_requests_total{{{sel}}}))"),
        deadline,
        |v| v == REPLICAS as f64,
    );
    for r in &replicas {
        let (t, n) = r.run(PER_REPLICA / 2, PER_REPLICA);
        ttfts.extend(t);
        tokens += n;
    }
    let total = (REPLICAS as u64 * PER_REPLICA) as f64;

    // Fleet totals are the sums of the replicas' exact totals.
    let requests = central.wait_value(
        &format!("sum(tokenmeter_requests_total{{{sel}}})"),
        deadline,
        |v| v >= total,
    );
    assert_eq!(requests, total);
    let out = central.wait_value(
        &format!("sum(tokenmeter_output_tokens_total{{{sel}}})"),
        deadline,
        |v| v >= tokens as f64,
    );
    assert_eq!(out, tokens as f64);

    // Fleet quantiles from the replicas' native histograms, summed across replicas.
    let ttft = Meter::builder()
        .build()
        .metric_names()
        .name(TTFT)
        .to_owned();
    let native_sel = format!("{ttft}{{{sel}}}");
    central.wait_value(
        &format!("sum(histogram_count({native_sel}))"),
        deadline,
        |v| v >= total,
    );
    ttfts.sort_by(f64::total_cmp);
    for q in [0.5, 0.99] {
        let exact = ttfts[((q * total).ceil() as usize).max(1) - 1];
        let fleet = central
            .scalar(&format!(
                "histogram_quantile({q}, sum by (gen_ai_request_model) ({native_sel}))"
            ))
            .expect("fleet quantile");
        let err = (fleet - exact).abs() / exact;
        println!(
            "fleet p{}: {fleet} vs exact {exact} ({:.2} % off)",
            q * 100.0,
            err * 100.0
        );
        assert!(
            err <= 0.05,
            "fleet p{}: {fleet} vs exact {exact}",
            q * 100.0
        );
    }

    // The deploy rules, unchanged, aggregate the fleet by model: one series per model, no
    // replica label, equal to the sum of the replicas' rates at the same instant. The rule is
    // the exact 5-minute increase / 300, counted from zero for a meter younger than 5 minutes
    // (all of them here), so each replica's rate is its total / 300.
    let rate = central.wait_value(
        r#"tokenmeter:requests:rate5m{model="fleet"}"#,
        deadline,
        |v| v > 0.0,
    );
    let recorded = central
        .query(r#"tokenmeter:requests:rate5m{model="fleet"}"#)
        .expect("query");
    let rows = samples(&recorded);
    assert_eq!(rows.len(), 1, "{recorded}");
    assert!(rows[0].0.get("replica").is_none(), "{recorded}");
    let at = recorded["result"][0]["value"][0]
        .as_f64()
        .expect("timestamp");
    let path = format!(
        "/api/v1/query?query={}&time={at}",
        tokenmeter_tests::http::encode(&format!(
            "sum by (replica) (tokenmeter_requests_total{{{sel}}}) / 300"
        ))
    );
    let replica_rates = samples(&central.api(&path).expect("per-replica rates"));
    assert_eq!(replica_rates.len(), REPLICAS, "{replica_rates:?}");
    let sum: f64 = replica_rates.iter().map(|(_, v)| v).sum();
    // Not to the last digit: the agents' remote writes can land samples older than the
    // rule's evaluation after it ran, which the later query sees.
    let rule = rows[0].1;
    assert!(
        rate > 0.0 && (sum - rule).abs() <= 0.01 * rule,
        "rule {rule} vs Σ replicas {sum}"
    );
    // The classic-bucket p99 rule and the TTFT alert see the fleet too (p99 > 0.5 s SLO).
    let p99 = central.wait_value(
        r#"tokenmeter:ttft_seconds:p99_5m{model="fleet"}"#,
        deadline,
        f64::is_finite,
    );
    assert!(p99 > 0.5, "{p99}");
    tokenmeter_tests::wait_for("TTFT alert on the fleet", deadline, || {
        let alerts = central.api("/api/v1/alerts").ok()?;
        alerts["alerts"]
            .as_array()?
            .iter()
            .any(|a| {
                a["labels"]["alertname"] == "TokenmeterTTFTP99OverSLO"
                    && a["labels"]["model"] == "fleet"
            })
            .then_some(())
    });
    // Every rule evaluates without error on the fleet view.
    tokenmeter_tests::wait_for("every rule evaluated", deadline, || {
        let rules = central.api("/api/v1/rules").ok()?;
        let all: Vec<Value> = rules["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        assert!(all.iter().all(|r| r["health"] != "err"), "{all:?}");
        (!all.is_empty() && all.iter().all(|r| r["health"] == "ok")).then_some(())
    });
    drop(agents);
}
