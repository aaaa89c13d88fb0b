//! An axum server instrumented with tokenmeter: `/metrics` mounted in the server's own router
//! through `negotiate()` (no second port), OTLP metrics and traces when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set, the JSON request log on stdout, and each request's
//! span joining the caller's trace from its W3C `traceparent` header.
//!
//! ```text
//! cargo run --example axum_server                 # serves 127.0.0.1:3000 until Ctrl-C
//! curl -s -X POST 127.0.0.1:3000/v1/completions \
//!      -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' -d 'hello'
//! curl -s 127.0.0.1:3000/metrics | grep time_to_first_token
//! cargo run --example axum_server -- --once       # one request to itself, prints, exits
//! ```
//!
//! The "engine" is a stand-in that emits one token every 5 ms; swap in a real one.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use tokenmeter::export::otlp::Otlp;
use tokenmeter::export::{Exporters, Prometheus, PrometheusRender, RequestLog, trace_context};
use tokenmeter::{Finish, Meter};

#[derive(Clone)]
struct App {
    meter: Meter,
    metrics: PrometheusRender,
}

/// The exposition in the format the scraper's `Accept` prefers: text, OpenMetrics (with
/// exemplars) or protobuf (with native histograms).
async fn metrics(State(app): State<App>, headers: HeaderMap) -> impl IntoResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let exposition = app.metrics.negotiate(accept);
    (
        [(header::CONTENT_TYPE, exposition.content_type())],
        exposition.body,
    )
}

/// Liveness for the orchestrator's probe: 503 when the engine has work in flight but stopped
/// stepping (or every running request stalled), though this handler still answers.
async fn health(State(app): State<App>) -> impl IntoResponse {
    let h = app.meter.health();
    let status = StatusCode::from_u16(h.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    (status, format!("{h:?}\n"))
}

async fn completions(
    State(app): State<App>,
    headers: HeaderMap,
    prompt: String,
) -> impl IntoResponse {
    // The server's own span for this HTTP request joins the caller's trace; the meter's
    // request span is its child, so the whole request shows up under the caller's trace.
    let http_span = tracing::info_span!("POST /v1/completions", otel.kind = "server");
    if let Some(tp) = headers.get("traceparent").and_then(|v| v.to_str().ok()) {
        let ts = headers.get("tracestate").and_then(|v| v.to_str().ok());
        if let Err(e) = trace_context::join_traceparent(&http_span, tp, ts) {
            return (StatusCode::BAD_REQUEST, format!("{e}\n"));
        }
    }
    let prompt_tokens = prompt.split_whitespace().count();
    let mut req = app
        .meter
        .request()
        .prompt_tokens(prompt_tokens)
        .parent(&http_span)
        .start();
    // Queueing, then prefill; a real engine calls scheduled() when the request gets a slot.
    req.scheduled();
    let mut text = String::new();
    for i in 0..8 {
        tokio::time::sleep(Duration::from_millis(5)).await; // the engine's decode step
        req.token();
        text.push_str(&format!("tok{i} "));
    }
    req.finish(Finish::Stop);
    let trace = trace_context::traceparent_of(&http_span).unwrap_or_default();
    (
        StatusCode::OK,
        format!("{}\ntraceparent: {trace}\n", text.trim_end()),
    )
}

async fn once(addr: SocketAddr) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let send = |req: String| async move {
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        s.write_all(req.as_bytes()).await?;
        let mut out = String::new();
        s.read_to_string(&mut out).await?;
        Ok::<_, std::io::Error>(out)
    };
    let body = "tell me a story";
    let resp = send(format!(
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    ))
    .await?;
    println!(
        "--- POST /v1/completions\n{}",
        resp.split("\r\n\r\n").nth(1).unwrap_or(&resp)
    );
    let scrape = send(format!(
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    ))
    .await?;
    println!("--- GET /metrics (excerpt)");
    for line in scrape.lines().filter(|l| {
        l.starts_with("gen_ai_server_time_to_first_token_seconds_count")
            || l.starts_with("tokenmeter_output_tokens_total")
    }) {
        println!("{line}");
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let meter = Meter::builder().model("stand-in-8tok").build();
    // Prometheus without its own listener: /metrics is served by this router. `.meter()`
    // tells the exporters the meter's prefix and bucket overrides (needed when it has any).
    let mut exporters = Exporters::new()
        .prometheus(Prometheus::new().without_listener())
        .request_log(RequestLog::new())
        .meter(&meter);
    if Otlp::endpoint_in_env() {
        exporters = exporters.otlp(Otlp::new().service_name("axum-llm-server"));
    }
    let guard = exporters.install()?;
    let render = guard
        .prometheus()
        .map(|p| p.renderer())
        .ok_or("prometheus exporter missing")?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/v1/completions", post(completions))
        .with_state(App {
            meter,
            metrics: render,
        });

    let addr: SocketAddr = std::env::var("ADDR")
        .unwrap_or_else(|_| "127.0.0.1:3000".into())
        .parse()?;
    let once_mode = std::env::args().any(|a| a == "--once");
    let listener = tokio::net::TcpListener::bind(if once_mode {
        "127.0.0.1:0".parse()?
    } else {
        addr
    })
    .await?;
    let local = listener.local_addr()?;
    if once_mode {
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        once(local).await?;
        server.abort();
    } else {
        eprintln!("listening on http://{local} (POST /v1/completions, GET /metrics /health)");
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await?;
    }
    drop(guard); // flushes OTLP
    Ok(())
}
