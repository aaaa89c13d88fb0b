//! Generation from the real SmolLM2-135M-Instruct (Q4_1 GGUF) through the demo server. Runs when
//! the model is cached (`scripts/demo --fetch-only`, which scripts/test calls first); otherwise it
//! says so and passes, except under CI (`CI=true`), where scripts/test has fetched it and a
//! missing model is a failure.

use serde_json::{Value, json};
use tokenmeter_examples::demo::model::find_cached_model;
use tokenmeter_examples::demo::{ServerOptions, start_server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_real_smollm2_knows_the_capital_of_france() {
    let Some(path) = find_cached_model() else {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "SmolLM2 GGUF not cached under CI: scripts/demo --fetch-only should have fetched it"
        );
        eprintln!("skipped: SmolLM2 GGUF not cached; run scripts/demo --fetch-only");
        return;
    };
    let opts = ServerOptions {
        model_path: Some(path),
        model_id: Some("smollm2-real-test".into()),
        ..ServerOptions::default()
    };
    let s = start_server(&opts).await.expect("server");
    assert!(!s.random);
    let c = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let body = json!({
        "model": s.model_id,
        "messages": [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "What is the capital of France?"}
        ],
        "max_tokens": 24,
        "temperature": 0,
    });
    let v: Value = c
        .post(format!("{}/v1/chat/completions", s.base_url()))
        .json(&body)
        .send()
        .await
        .expect("send")
        .json()
        .await
        .expect("json");
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .expect("content")
        .to_string();
    eprintln!("SmolLM2: {text:?}");
    assert!(text.contains("Paris"), "{text:?}");
    assert_eq!(v["choices"][0]["finish_reason"], "stop", "{v}");
    assert!(v["usage"]["prompt_tokens"].as_u64().is_some_and(|n| n > 10));
}
