//! The server on the real SmolLM2-135M-Instruct Q4_1 GGUF, driven over HTTP on 127.0.0.1 by a
//! real client parsing server-sent events. One test (one model load, one global recorder):
//!
//! - concurrent streaming requests: input and output tokens equal mistral.rs's own `usage` for
//!   every request that got one (mistral.rs sends none when the output ends inside a UTF-8
//!   character; then the output tokens are the ones the logits probe saw sampled); the
//!   server's TPOT is (last - first token) / (n - 1) exactly, and the client's
//!   (last - first chunk) / (n - 1) agrees with it up to the chunks' delivery;
//! - a NaN injected through a mistral.rs logits processor is counted, per request and in
//!   `/metrics` (mistral.rs then fails the request);
//! - a client that goes away mid-stream is `cancelled`, and the server serves the next request;
//! - an invalid body is rejected before any generation request.
//!
//! The model: `scripts/demo --fetch-only` (or `TOKENMETER_MISTRALRS_MODEL=path`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use mistralrs::{CustomLogitsProcessor, Tensor};
use serde_json::{Value, json};
use tokenmeter::Meter;
use tokenmeter::export::Prometheus;
use tokenmeter_mistralrs::{AppState, ChatRequest, LogitsHook, load_gguf, router};

fn model_path() -> PathBuf {
    std::env::var_os("TOKENMETER_MISTRALRS_MODEL").map_or_else(
        || {
            PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                .join("../../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
        },
        PathBuf::from,
    )
}

/// Puts one NaN into the logits of the request's second sampling step (index 0, which greedy
/// sampling then passes over: the output stays valid).
#[derive(Default)]
struct InjectNan {
    calls: AtomicUsize,
}

impl CustomLogitsProcessor for InjectNan {
    fn apply(&self, logits: &Tensor, _context: &[u32]) -> mistralrs::Result<Tensor> {
        if self.calls.fetch_add(1, Ordering::Relaxed) != 1 {
            return Ok(logits.clone());
        }
        let mut row: Vec<f32> = logits.flatten_all()?.to_vec1()?;
        row[0] = f32::NAN;
        Tensor::from_vec(row, logits.dims().to_vec(), logits.device())
    }
}

/// One streamed request as the client saw it.
struct Streamed {
    /// Data events with choices, with their arrival.
    chunks: Vec<(Instant, Value)>,
    /// From sending the request to the first chunk.
    ttft: Duration,
    /// From sending the request to `[DONE]`.
    e2e: Duration,
    finish_reason: String,
    /// mistral.rs's usage on the last chunk, with tokenmeter's values in `usage.tokenmeter`.
    usage: Value,
    /// An error event's `error`, if the engine failed the request.
    error: Option<Value>,
    done: bool,
}

fn chat_body(prompt: &str, max_tokens: usize, user: Option<&str>) -> Value {
    let mut b = json!({
        "messages": [{ "role": "user", "content": prompt }],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": true,
    });
    if let Some(u) = user {
        b["user"] = json!(u);
    }
    b
}

/// Streams one chat completion to its end, parsing the server-sent events.
async fn stream_chat(client: &reqwest::Client, addr: SocketAddr, body: Value) -> Streamed {
    let sent = Instant::now();
    let resp = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .expect("request sent");
    assert_eq!(resp.status(), 200);
    let mut bytes = resp.bytes_stream();
    let mut buf = String::new();
    let mut out = Streamed {
        chunks: Vec::new(),
        ttft: Duration::ZERO,
        e2e: Duration::ZERO,
        finish_reason: String::new(),
        usage: Value::Null,
        error: None,
        done: false,
    };
    while let Some(piece) = bytes.next().await {
        let at = Instant::now();
        buf.push_str(std::str::from_utf8(&piece.expect("body chunk")).expect("UTF-8 events"));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            for data in event.lines().filter_map(|l| l.strip_prefix("data: ")) {
                if data == "[DONE]" {
                    out.done = true;
                    out.e2e = at - sent;
                    continue;
                }
                let v: Value = serde_json::from_str(data).expect("JSON chunk");
                if let Some(e) = v.get("error") {
                    out.error = Some(e.clone());
                    out.usage = v["usage"].clone();
                    continue;
                }
                if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
                    out.finish_reason = f.to_owned();
                }
                if !v["usage"].is_null() {
                    out.usage = v["usage"].clone();
                }
                if v["choices"].as_array().is_some_and(|c| !c.is_empty()) {
                    if out.chunks.is_empty() {
                        out.ttft = at - sent;
                    }
                    out.chunks.push((at, v));
                }
            }
        }
    }
    out
}

fn secs(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not seconds: {v}"))
}

/// The value of the first sample of `family` whose labels contain every one of `labels`.
fn sample(exposition: &str, family: &str, labels: &[&str]) -> Option<f64> {
    exposition
        .lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with('{'))
        .find(|l| labels.iter().all(|want| l.contains(want)))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_model_streams_are_metered_exactly() {
    let path = model_path();
    assert!(
        path.exists(),
        "the model {} is missing: run `scripts/demo --fetch-only` (or set TOKENMETER_MISTRALRS_MODEL)",
        path.display()
    );
    // The window covers the whole test, so the snapshot's request counts are all of them.
    let meter = Meter::builder()
        .model("smollm2-135m")
        .window(Duration::from_secs(3600))
        .build();
    let prometheus = Prometheus::new()
        .without_listener()
        .meter(&meter)
        .install()
        .expect("the only recorder in this test binary");
    let model = load_gguf(&path, 8)
        .await
        .expect("mistral.rs loads the GGUF offline");
    let hook: LogitsHook = Arc::new(|req: &ChatRequest| {
        (req.user.as_deref() == Some("inject-nan"))
            .then(|| Arc::new(InjectNan::default()) as Arc<dyn CustomLogitsProcessor>)
    });
    let state = AppState::new(
        Arc::new(model),
        meter.clone(),
        "smollm2-135m",
        prometheus.renderer(),
    )
    .logits_hook(hook);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, router(state)).await });
    let client = reqwest::Client::new();

    let health: Value = client
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .expect("health")
        .json()
        .await
        .expect("health JSON");
    assert_eq!(health["status"], "ok");

    // Concurrent streams: every count equals mistral.rs's usage.
    let prompts = [
        "What is the capital of France?",
        "Write a haiku about the sea.",
        "List three prime numbers.",
        "Explain what a CPU does in one sentence.",
        "Say hello in Spanish.",
        "What colour is the sky on a clear day?",
    ];
    let runs = futures_util::future::join_all(
        prompts
            .iter()
            .map(|p| stream_chat(&client, addr, chat_body(p, 24, None))),
    )
    .await;
    let (mut sum_in, mut sum_out, mut with_engine_usage) = (0u64, 0u64, 0);
    for (p, r) in prompts.iter().zip(&runs) {
        assert!(r.done, "{p}: no [DONE]");
        assert!(r.error.is_none(), "{p}: {:?}", r.error);
        assert!(
            r.chunks.iter().all(|c| c.1["model"] == "smollm2-135m"),
            "{p}: model name"
        );
        let u = &r.usage;
        let tm = &u["tokenmeter"];
        let n = u["completion_tokens"].as_u64().expect("completion_tokens");
        assert_eq!(tm["output_tokens"].as_u64(), Some(n), "{p}: output tokens");
        assert!(
            ["stop", "length"].contains(&r.finish_reason.as_str()),
            "{p}: {}",
            r.finish_reason
        );
        if let Some(prompt) = u["prompt_tokens"].as_u64() {
            // mistral.rs's own usage on its last chunk.
            assert_eq!(
                tm["input_tokens"].as_u64(),
                Some(prompt),
                "{p}: input tokens"
            );
            assert!(prompt > 0, "{p}: a prompt has tokens");
            with_engine_usage += 1;
            sum_in += prompt;
        } else {
            // mistral.rs sent no last chunk (the output ended inside a UTF-8 character): the
            // server's closing chunk has the tokens its logits probe saw sampled, at least one
            // per chunk before it.
            assert!(
                n as usize >= r.chunks.len(),
                "{p}: {n} tokens, {} chunks",
                r.chunks.len()
            );
            assert_eq!(tm["input_tokens"], 0, "{p}: no prompt length without usage");
        }
        assert!(n >= 2, "{p}: {n} tokens; TPOT needs two");
        sum_out += n;

        // The server's TPOT is (last - first token) / (n - 1) exactly (to the nanosecond of
        // its Duration, which JSON carries in f64 seconds).
        let (tpot, decode) = (secs(&tm["tpot_seconds"]), secs(&tm["decode_seconds"]));
        assert!(
            (tpot * (n - 1) as f64 - decode).abs() < 1e-6,
            "{p}: {tpot} * {} != {decode}",
            n - 1
        );
        // The client's (last - first chunk) / (n - 1), from the same chunks one hop later:
        // with the same n (checked above), the two differ only by how much later the last
        // chunk reached the client than the first did. That delivery jitter is the only
        // tolerance: 250 ms over the whole span, generous for a loaded 2-core machine where
        // the engine's threads and the server's tasks share the cores.
        let first = r.chunks.first().expect("chunks").0;
        let last = r.chunks.last().expect("chunks").0;
        let client_span = (last - first).as_secs_f64();
        let client_tpot = client_span / (n - 1) as f64;
        assert!(
            (client_span - decode).abs() < 0.25,
            "{p}: client TPOT {client_tpot} s over {} chunks vs server {tpot} s (decode {decode} s, client {client_span} s)",
            r.chunks.len()
        );
        // Causality: the client sent before the server's arrival and received after the
        // server's first token and end (1 ms for the two clocks' calibration).
        let ttft = secs(&tm["ttft_seconds"]);
        assert!(
            ttft > 0.0 && ttft <= r.ttft.as_secs_f64() + 1e-3,
            "{p}: TTFT {ttft} vs client {:?}",
            r.ttft
        );
        assert!(
            secs(&tm["e2e_seconds"]) <= r.e2e.as_secs_f64() + 1e-3,
            "{p}: E2E"
        );
        assert_eq!(tm["non_finite"]["nan"], 0, "{p}: clean logits");
    }
    assert!(
        with_engine_usage > 0,
        "no request ended with mistral.rs's usage"
    );
    let totals = meter.totals();
    assert_eq!(
        (totals.input_tokens, totals.output_tokens),
        (sum_in, sum_out)
    );
    assert_eq!(totals.requests_ended, prompts.len() as u64);

    // Not streamed: one JSON answer with the same usage and values.
    let one: Value = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&json!({ "messages": [{ "role": "user", "content": "Name a fruit." }], "max_tokens": 6 }))
        .send()
        .await
        .expect("sent")
        .json()
        .await
        .expect("JSON answer");
    let u = &one["usage"];
    assert_eq!(
        u["tokenmeter"]["output_tokens"], u["completion_tokens"],
        "{one}"
    );
    assert_eq!(u["tokenmeter"]["input_tokens"], u["prompt_tokens"], "{one}");
    assert_eq!(one["choices"][0]["message"]["role"], "assistant");

    // A NaN injected through a logits processor is counted. mistral.rs then fails the request
    // (its sampler rejects a NaN probability): an error event carrying the counts.
    let r = stream_chat(
        &client,
        addr,
        chat_body("Count to five.", 8, Some("inject-nan")),
    )
    .await;
    assert!(r.done);
    let e = r
        .error
        .as_ref()
        .expect("mistral.rs fails a request with NaN logits");
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("NaN")),
        "{e}"
    );
    assert_eq!(
        r.usage["tokenmeter"]["non_finite"],
        json!({ "nan": 1, "pos_inf": 0, "neg_inf": 0 })
    );
    let text = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert_eq!(
        sample(
            &text,
            "tokenmeter_logits_nonfinite_total",
            &["kind=\"nan\""]
        ),
        Some(1.0),
        "{text}"
    );

    // A client that goes away mid-stream: cancelled; the server serves the next request.
    let resp = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&chat_body(
            "Tell me a long story about a dragon.",
            400,
            None,
        ))
        .send()
        .await
        .expect("request sent");
    let mut bytes = resp.bytes_stream();
    let mut seen = String::new();
    while seen.matches("data: ").count() < 3 {
        let piece = bytes.next().await.expect("a chunk").expect("body");
        seen.push_str(&String::from_utf8_lossy(&piece));
    }
    drop(bytes); // closes the connection
    let deadline = Instant::now() + Duration::from_secs(120);
    while meter.snapshot().requests_cancelled < 1 {
        assert!(
            Instant::now() < deadline,
            "the dropped stream was never cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let next = stream_chat(&client, addr, chat_body("Say yes.", 4, None)).await;
    assert!(next.done && !next.chunks.is_empty());
    let snap = meter.snapshot();
    assert_eq!(
        (
            snap.requests_succeeded,
            snap.requests_cancelled,
            snap.requests_failed
        ),
        (prompts.len() as u64 + 2, 1, 1)
    );

    // An invalid body is answered before any generation request.
    let bad = client
        .post(format!("http://{addr}/v1/chat/completions"))
        .json(&json!({ "messages": [] }))
        .send()
        .await
        .expect("sent");
    assert_eq!(bad.status(), 400);
    let text = client
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text");
    assert_eq!(
        sample(
            &text,
            "tokenmeter_http_server_rejected_total",
            &[
                "http_route=\"/v1/chat/completions\"",
                "http_response_status_code=\"400\""
            ]
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(meter.totals().requests_started, prompts.len() as u64 + 4);
    assert_eq!(
        sample(
            &text,
            "tokenmeter_requests_total",
            &["finish_reason=\"cancelled\""]
        ),
        Some(1.0),
        "{text}"
    );
}
