//! Drift on the demo's live traffic, end to end over HTTP with the random-weight model (the
//! real model gives the same verdicts but is too slow for CI; docs/demo.md has its numbers):
//! a baseline captured from `GET /drift` after `short` prompts, then a server started with
//! that baseline sees no drift from more `short` traffic and drift from `long` traffic. The
//! prompts are the load generator's own mixes.

use std::time::{Duration, Instant};

use serde_json::Value;
use tokenmeter_examples::demo::drift::{PSI_SIGNIFICANT, TrafficWindow};
use tokenmeter_examples::demo::loadgen::{self, PromptMix};
use tokenmeter_examples::demo::{RunningServer, ServerOptions, start_server};

async fn server(id: &str, baseline: Option<std::path::PathBuf>) -> RunningServer {
    let opts = ServerOptions {
        model_id: Some(id.to_string()),
        window: Duration::from_secs(600),
        drift_baseline: baseline,
        ..ServerOptions::default()
    };
    start_server(&opts).await.expect("server starts")
}

/// Sends the load generator's requests `range` of `mix`, one at a time, as its clients do
/// (temperature 0.7, seed = request index).
async fn load(s: &RunningServer, mix: PromptMix, range: std::ops::Range<usize>) {
    let c = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    for i in range {
        let body = loadgen::chat_body(&s.model_id, &loadgen::prompt(mix, i), 16, 0.7, i as u64);
        let r = loadgen::stream_chat(&c, &s.base_url(), &body, Instant::now())
            .await
            .expect("request");
        assert!(r.error.is_none(), "{:?}", r.error);
    }
}

async fn drift(s: &RunningServer) -> Value {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("{}/drift", s.base_url()))
        .send()
        .await
        .expect("GET /drift")
        .json()
        .await
        .expect("json")
}

/// PSI per feature from `GET /drift`'s comparison.
fn psi(v: &Value) -> Vec<(String, f64)> {
    v["drift"]["features"]
        .as_array()
        .expect("a comparison")
        .iter()
        .map(|f| {
            (
                f["feature"].as_str().expect("name").to_string(),
                f["psi"].as_f64().expect("psi"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_prompt_mix_drifts_from_a_short_baseline_and_the_same_mix_does_not() {
    // Capture: 16 short requests (each short prompt twice).
    let s = server("demo-drift-capture", None).await;
    load(&s, PromptMix::Short, 0..16).await;
    let v = drift(&s).await;
    assert!(v["drift"].is_null(), "no baseline, no comparison: {v}");
    let window: TrafficWindow = serde_json::from_value(v["window"].clone()).expect("window");
    assert_eq!(window.traffic.requests, 16);
    assert_eq!(window.extra.refusal.iter().sum::<u64>(), 16);
    let dir = std::env::temp_dir().join(format!("tm-demo-drift-it-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("short.json");
    window.save(&path).expect("save");

    // The same requests again (same prompts and seeds, so the same outputs): every feature
    // of the window matches the saved baseline exactly.
    let same = server("demo-drift-same", Some(path.clone())).await;
    load(&same, PromptMix::Short, 0..16).await;
    let same = psi(&drift(&same).await);
    let names: Vec<&str> = same.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "prompt_length",
            "prompt_tokens",
            "output_length",
            "output_tokens",
            "perplexity",
            "refusal"
        ]
    );
    assert!(same.iter().all(|(_, p)| *p == 0.0), "{same:?}");

    // The same mix, other requests (other seeds): the prompts are the same eight, each twice,
    // so the prompt features match exactly. (The random weights' outputs are noise, so the
    // output features of 16 requests are not compared here; the real model's are in
    // docs/demo.md.)
    let other = server("demo-drift-other", Some(path.clone())).await;
    load(&other, PromptMix::Short, 16..32).await;
    let other = psi(&drift(&other).await);
    assert_eq!(other[0], ("prompt_length".into(), 0.0));
    assert_eq!(other[1], ("prompt_tokens".into(), 0.0));

    // The long mix: the prompt features move far past the threshold.
    let long = server("demo-drift-long", Some(path)).await;
    load(&long, PromptMix::Long, 0..16).await;
    let v = drift(&long).await;
    let long = psi(&v);
    eprintln!("long vs short: {long:?}");
    for (name, p) in &long[..2] {
        assert!(*p > PSI_SIGNIFICANT, "{name} did not drift: {long:?}");
    }
    assert_eq!(v["drift"]["window_requests"], 16);
    assert_eq!(v["drift"]["baseline_requests"], 16);
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_baseline_file_stops_the_server_with_its_name() {
    let dir = std::env::temp_dir().join(format!("tm-demo-drift-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let path = dir.join("not-a-baseline.json");
    std::fs::write(&path, b"{\"traffic\": 1}").expect("write");
    let opts = ServerOptions {
        model_id: Some("demo-drift-bad".into()),
        drift_baseline: Some(path),
        ..ServerOptions::default()
    };
    let e = start_server(&opts).await.expect_err("bad baseline");
    assert!(e.to_string().contains("not-a-baseline.json"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}
