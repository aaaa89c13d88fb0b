//! Issue 13, the demo engine's state for real: served with the vLLM preset under a small KV
//! budget, the demo preempts sequences and reuses its prefix cache, and a real Prometheus
//! scraping it answers every one of the 27 queries of vLLM's published Grafana dashboard.

use std::time::{Duration, Instant};

use tokenmeter_core::Naming;
use tokenmeter_examples::demo::loadgen::{self, ClientRecord};
use tokenmeter_examples::demo::{RunningServer, ServerOptions, start_server};
use tokenmeter_tests::prom::PromServer;
use tokenmeter_tests::{bins, wait_for};

/// The 27 PromQL expressions of vLLM's dashboard, in file order: `grafana.json` of
/// vllm-project/vllm `examples/observability/prometheus_grafana/` at
/// 4b5c627c23e6690b8987100d1cbf78e34ac14bf9 (`$model_name` and `$__rate_interval` are Grafana
/// variables, substituted below).
const VLLM_DASHBOARD: [&str; 27] = [
    r#"histogram_quantile(0.99, sum by(le) (rate(vllm:e2e_request_latency_seconds_bucket{model_name="$model_name"}[$__rate_interval])))"#,
    r#"histogram_quantile(0.95, sum by(le) (rate(vllm:e2e_request_latency_seconds_bucket{model_name="$model_name"}[$__rate_interval])))"#,
    r#"histogram_quantile(0.9, sum by(le) (rate(vllm:e2e_request_latency_seconds_bucket{model_name="$model_name"}[$__rate_interval])))"#,
    r#"histogram_quantile(0.5, sum by(le) (rate(vllm:e2e_request_latency_seconds_bucket{model_name="$model_name"}[$__rate_interval])))"#,
    r#"rate(vllm:e2e_request_latency_seconds_sum{model_name="$model_name"}[$__rate_interval]) / rate(vllm:e2e_request_latency_seconds_count{model_name="$model_name"}[$__rate_interval])"#,
    r#"rate(vllm:prompt_tokens_total{model_name="$model_name"}[$__rate_interval])"#,
    r#"rate(vllm:generation_tokens_total{model_name="$model_name"}[$__rate_interval])"#,
    r#"histogram_quantile(0.99, sum by(le) (rate(vllm:inter_token_latency_seconds_bucket{model_name="$model_name"}[$__rate_interval])))"#,
    r#"histogram_quantile(0.95, sum by(le) (rate(vllm:inter_token_latency_seconds_bucket{model_name="$model_name"}[$__rate_interval])))"#,
    r#"histogram_quantile(0.9, sum by(le) (rate(vllm:inter_token_latency_seconds_bucket{model_name="$model_name"}[$__rate_interval])))"#,
    r#"histogram_quantile(0.5, sum by(le) (rate(vllm:inter_token_latency_seconds_bucket{model_name="$model_name"}[$__rate_interval])))"#,
    r#"rate(vllm:inter_token_latency_seconds_sum{model_name="$model_name"}[$__rate_interval]) / rate(vllm:inter_token_latency_seconds_count{model_name="$model_name"}[$__rate_interval])"#,
    r#"vllm:num_requests_running{model_name="$model_name"}"#,
    r#"vllm:num_requests_waiting{model_name="$model_name"}"#,
    r#"histogram_quantile(0.99, sum by(le) (rate(vllm:time_to_first_token_seconds_bucket{model_name="$model_name"}[$__rate_interval])))"#,
    r#"histogram_quantile(0.95, sum by(le) (rate(vllm:time_to_first_token_seconds_bucket{model_name="$model_name"}[$__rate_interval])))"#,
    r#"histogram_quantile(0.9, sum by(le) (rate(vllm:time_to_first_token_seconds_bucket{model_name="$model_name"}[$__rate_interval])))"#,
    r#"histogram_quantile(0.5, sum by(le) (rate(vllm:time_to_first_token_seconds_bucket{model_name="$model_name"}[$__rate_interval])))"#,
    r#"rate(vllm:time_to_first_token_seconds_sum{model_name="$model_name"}[$__rate_interval]) / rate(vllm:time_to_first_token_seconds_count{model_name="$model_name"}[$__rate_interval])"#,
    r#"vllm:kv_cache_usage_perc{model_name="$model_name"}"#,
    r#"sum by(le) (increase(vllm:request_prompt_tokens_bucket{model_name="$model_name"}[$__rate_interval]))"#,
    r#"sum by(le) (increase(vllm:request_generation_tokens_bucket{model_name="$model_name"}[$__rate_interval]))"#,
    r#"sum by(finished_reason) (increase(vllm:request_success_total{model_name="$model_name"}[$__rate_interval]))"#,
    r#"rate(vllm:request_queue_time_seconds_sum{model_name="$model_name"}[$__rate_interval])"#,
    r#"rate(vllm:request_prefill_time_seconds_sum{model_name="$model_name"}[$__rate_interval])"#,
    r#"rate(vllm:request_decode_time_seconds_sum{model_name="$model_name"}[$__rate_interval])"#,
    r#"rate(vllm:request_max_num_generation_tokens_sum{model_name="$model_name"}[$__rate_interval])"#,
];

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
}

/// Streams `n` chat requests, `concurrency` at a time, each asking for `max_tokens`.
async fn load(s: &RunningServer, n: usize, max_tokens: u32) -> Vec<ClientRecord> {
    let origin = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (c, base, model) = (client(), s.base_url(), s.model_id.clone());
        tasks.push(tokio::spawn(async move {
            let body = loadgen::chat_body(
                &model,
                &format!("Request {i}: write a long story about the sea."),
                max_tokens,
                0.0,
                i as u64,
            );
            loadgen::stream_chat(&c, &base, &body, origin)
                .await
                .expect("stream")
        }));
    }
    let mut recs = Vec::new();
    for t in tasks {
        recs.push(t.await.expect("task"));
    }
    recs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vllm_dashboard_answers_every_query_from_the_demo_under_load() {
    let Some(prom_bin) = bins::require("prometheus") else {
        return;
    };
    // Six sequences of ~40 prompt + 48 output tokens want ~33 blocks of 16; the budget has 16.
    let s = start_server(&ServerOptions {
        model_path: None,
        model_id: Some("demo-vllm-dashboard".to_owned()),
        max_batch: 6,
        naming: Naming::Vllm,
        kv_budget: Some(256),
        window: Duration::from_secs(600),
        ..ServerOptions::default()
    })
    .await
    .expect("server starts");
    let prom = PromServer::start(&prom_bin, s.addr, "250ms", &[]);
    let recs = load(&s, 12, 48).await;
    for r in &recs {
        assert!(r.error.is_none(), "{:?}", r.error);
        assert_eq!(r.usage_completion, Some(r.tokens));
    }
    let model = &s.model_id;
    // What the engine did, through Prometheus: real preemptions and prefix-cache hits.
    let sel = format!(r#"{{model_name="{model}"}}"#);
    let preemptions = prom.wait_value(
        &format!("vllm:num_preemptions_total{sel}"),
        Duration::from_secs(60),
        |v| v > 0.0,
    );
    let hits = prom.wait_value(
        &format!("vllm:prefix_cache_hits_total{sel}"),
        Duration::from_secs(60),
        |v| v > 0.0,
    );
    let queries = prom.wait_value(
        &format!("vllm:prefix_cache_queries_total{sel}"),
        Duration::from_secs(60),
        |v| v > 0.0,
    );
    assert!(hits < queries, "hits {hits} of {queries}");
    eprintln!("preemptions {preemptions}, prefix-cache hits {hits} of {queries} prompt tokens");
    assert!(preemptions >= 1.0);
    // Every query of the dashboard returns at least one series.
    for q in VLLM_DASHBOARD {
        let expr = q
            .replace("$model_name", model)
            .replace("$__rate_interval", "1m");
        wait_for(
            &format!("data from `{expr}`"),
            Duration::from_secs(60),
            || {
                let data = prom.query(&expr).ok()?;
                let n = data["result"].as_array().map_or(0, Vec::len);
                (n > 0).then_some(())
            },
        );
    }
    let kv = prom
        .scalar(&format!("vllm:kv_cache_usage_perc{sel}"))
        .expect("kv usage");
    assert!((0.0..=1.0).contains(&kv), "{kv}");
    let health = s.meter.health();
    assert!(health.healthy, "{health:?}");
}
