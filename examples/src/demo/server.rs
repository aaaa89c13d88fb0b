//! The OpenAI-compatible HTTP server (axum): `POST /v1/chat/completions`, `POST /v1/completions`
//! (streaming over server-sent events with `stream_options.include_usage`, or not),
//! `GET /v1/models`, `GET /metrics`, `GET /health`, `GET /v1/tokenmeter/snapshot`, `GET /drift`.
//!
//! With the meter on, tokenmeter's tower layer (`HttpMetricsLayer`) records the HTTP server
//! metrics of every route and marks each request's arrival before the body is read; every
//! generation request goes through a tokenmeter guard started at that arrival, as a child of the
//! layer's span (which joined the caller's `traceparent`). A request that is rejected fails its
//! guard with the error type it is counted under (`invalid_request`, `model_not_found`,
//! `context_length_exceeded`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Extension;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokenmeter::export::http::{Arrival as HttpArrival, HttpMetricsLayer};
use tokenmeter_core::clock::Instant;
use tokenmeter_core::{ErrorKind, Meter, RequestBuilder, RequestGuard};
use tokio::sync::mpsc;

use super::VariantB;
use super::chat::Message;
use super::drift::TrafficDrift;
use super::engine::{EngineHandle, Event, GenRequest, Sampling, ServerTiming};
use super::model::Model;

/// Largest request body read, bytes. Larger bodies are rejected (413) and counted.
pub const MAX_BODY_BYTES: usize = 8 << 20;

/// Renders the Prometheus exposition.
pub type MetricsRender = Arc<dyn Fn() -> String + Send + Sync>;

/// Shared server state.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    meter: Meter,
    meter_on: bool,
    engine: EngineHandle,
    model: Model,
    render: MetricsRender,
    drift: Option<Arc<TrafficDrift>>,
    variant_b: Option<(VariantB, EngineHandle)>,
    next_id: AtomicU64,
}

impl AppState {
    /// Builds the state. With `meter_on` false no guard is created (the overhead baseline).
    pub fn new(
        meter: Meter,
        meter_on: bool,
        engine: EngineHandle,
        model: Model,
        render: MetricsRender,
        drift: Option<Arc<TrafficDrift>>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                meter,
                meter_on,
                engine,
                model,
                render,
                drift,
                variant_b: None,
                next_id: AtomicU64::new(1),
            }),
        }
    }
}

impl AppState {
    /// Serves variant B on `engine` to its share of the requests (before the state is shared).
    #[must_use]
    pub fn with_variant_b(mut self, b: Option<(VariantB, EngineHandle)>) -> Self {
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.variant_b = b;
        }
        self
    }
}

/// The header a client (the golden-set probe) sets to pick the variant: `a` or `b`.
pub const VARIANT_HEADER: &str = "x-tokenmeter-variant";

/// The router; with the meter on, wrapped in tokenmeter's HTTP layer (route = axum's matched
/// template). With the meter off (the overhead baseline) there is no layer either.
pub fn router(state: AppState) -> Router {
    let routes = Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/v1/tokenmeter/snapshot", get(snapshot))
        .route("/drift", get(drift));
    let routes = if state.inner.meter_on {
        routes.layer(
            HttpMetricsLayer::new(&state.inner.meter)
                .route(|p| p.extensions.get::<MatchedPath>().map(MatchedPath::as_str)),
        )
    } else {
        routes
    };
    routes.with_state(state)
}

/// Binds `addr` and serves until the future is dropped.
///
/// # Errors
/// When the address cannot be bound.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serves `state` on `listener` (runs until the process ends or the task is aborted).
///
/// # Errors
/// On accept-loop I/O errors.
pub async fn serve(listener: tokio::net::TcpListener, state: AppState) -> std::io::Result<()> {
    axum::serve(listener, router(state)).await
}

/// An OpenAI-style error.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    code: &'static str,
    param: Option<&'static str>,
    kind: ErrorKind,
}

impl ApiError {
    fn invalid(message: impl Into<String>, param: Option<&'static str>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            code: "invalid_request",
            param,
            kind: ErrorKind::InvalidRequest,
        }
    }

    fn response(&self) -> Response {
        let body = json!({
            "error": {
                "message": self.message,
                "type": if self.status == StatusCode::NOT_FOUND { "not_found_error" } else { "invalid_request_error" },
                "param": self.param,
                "code": self.code,
            }
        });
        (self.status, axum::Json(body)).into_response()
    }
}

#[derive(Debug, Deserialize, Default)]
struct StreamOptions {
    #[serde(default)]
    include_usage: bool,
}

#[derive(Debug, Deserialize)]
struct ChatBody {
    model: Option<String>,
    messages: Option<Vec<Message>>,
    prompt: Option<Value>,
    max_tokens: Option<i64>,
    max_completion_tokens: Option<i64>,
    temperature: Option<f64>,
    top_p: Option<f64>,
    seed: Option<u64>,
    #[serde(default)]
    stream: bool,
    stream_options: Option<StreamOptions>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Chat,
    Completion,
}

struct Parsed {
    prompt: Vec<u32>,
    max_tokens: usize,
    sampling: Sampling,
    stream: bool,
    include_usage: bool,
}

fn parse(model: &Model, kind: Kind, body: &[u8], seed: u64) -> Result<Parsed, ApiError> {
    let b: ChatBody = serde_json::from_slice(body)
        .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}"), None))?;
    let Some(name) = b.model.as_deref() else {
        return Err(ApiError::invalid(
            "you must provide a model parameter",
            Some("model"),
        ));
    };
    if name != model.id {
        return Err(ApiError {
            status: StatusCode::NOT_FOUND,
            message: format!(
                "the model `{name}` does not exist; this server serves `{}`",
                model.id
            ),
            code: "model_not_found",
            param: Some("model"),
            kind: ErrorKind::Other("model_not_found"),
        });
    }
    let text = match kind {
        Kind::Chat => {
            let msgs = b
                .messages
                .ok_or_else(|| ApiError::invalid("`messages` is required", Some("messages")))?;
            if msgs.is_empty() || msgs.iter().all(|m| m.content.trim().is_empty()) {
                return Err(ApiError::invalid(
                    "`messages` must contain a non-empty message",
                    Some("messages"),
                ));
            }
            for m in &msgs {
                if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
                    return Err(ApiError::invalid(
                        format!("unknown role `{}`", m.role),
                        Some("messages"),
                    ));
                }
            }
            let bytes: usize = msgs.iter().map(|m| m.content.len()).sum();
            check_prompt_bytes(model, bytes)?;
            model.template.render(&msgs)
        }
        Kind::Completion => {
            let p = match b.prompt {
                Some(Value::String(s)) => s,
                Some(_) => {
                    return Err(ApiError::invalid(
                        "`prompt` must be a string",
                        Some("prompt"),
                    ));
                }
                None => return Err(ApiError::invalid("`prompt` is required", Some("prompt"))),
            };
            if p.is_empty() {
                return Err(ApiError::invalid(
                    "`prompt` must not be empty",
                    Some("prompt"),
                ));
            }
            check_prompt_bytes(model, p.len())?;
            p
        }
    };
    let (prompt, param) = match kind {
        Kind::Chat => (model.tokenizer.encode_with_specials(&text), "messages"),
        Kind::Completion => (model.tokenizer.encode(&text), "prompt"),
    };
    let prompt = prompt
        .map_err(|e| ApiError::invalid(format!("cannot tokenize the prompt: {e}"), Some(param)))?;
    if prompt.is_empty() {
        return Err(ApiError::invalid(
            "the prompt has no tokens",
            Some("prompt"),
        ));
    }
    let ctx = model.context_len;
    if prompt.len() >= ctx {
        return Err(context_exceeded(ctx, prompt.len(), 1));
    }
    let room = ctx - prompt.len();
    let max_tokens = match b.max_completion_tokens.or(b.max_tokens) {
        None => room.min(256),
        Some(n) if n < 1 => {
            return Err(ApiError::invalid(
                format!("max_tokens must be at least 1, got {n}"),
                Some("max_tokens"),
            ));
        }
        Some(n) if n as u64 > room as u64 => {
            return Err(context_exceeded(ctx, prompt.len(), n as u64));
        }
        Some(n) => n as usize,
    };
    let temperature = b.temperature.unwrap_or(0.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature must be between 0 and 2",
            Some("temperature"),
        ));
    }
    let top_p = b.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid("top_p must be in (0, 1]", Some("top_p")));
    }
    Ok(Parsed {
        prompt,
        max_tokens,
        sampling: Sampling {
            temperature,
            top_p,
            seed: b.seed.unwrap_or(seed),
        },
        stream: b.stream,
        include_usage: b.stream_options.unwrap_or_default().include_usage,
    })
}

/// A prompt of `bytes` bytes has at least `bytes / max_token_bytes` tokens: reject it before
/// tokenizing when that is already past the context.
fn check_prompt_bytes(model: &Model, bytes: usize) -> Result<(), ApiError> {
    let min_tokens = bytes / model.tokenizer.max_token_bytes();
    if min_tokens >= model.context_len {
        return Err(context_exceeded(model.context_len, min_tokens, 1));
    }
    Ok(())
}

fn context_exceeded(ctx: usize, prompt: usize, max_tokens: u64) -> ApiError {
    ApiError {
        status: StatusCode::BAD_REQUEST,
        message: format!(
            "this model's maximum context length is {ctx} tokens; the request needs at least {prompt} prompt tokens + {max_tokens} output tokens"
        ),
        code: "context_length_exceeded",
        param: Some("max_tokens"),
        kind: ErrorKind::InvalidRequest,
    }
}

async fn chat_completions(
    State(s): State<AppState>,
    arrival: Option<Extension<HttpArrival>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let v = variant_asked(&headers);
    generate(s, Kind::Chat, arrival.map(|Extension(a)| a), v, body).await
}

async fn completions(
    State(s): State<AppState>,
    arrival: Option<Extension<HttpArrival>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let v = variant_asked(&headers);
    generate(s, Kind::Completion, arrival.map(|Extension(a)| a), v, body).await
}

/// The variant a client asked for with [`VARIANT_HEADER`] (`Some(true)`: b).
fn variant_asked(headers: &HeaderMap) -> Option<bool> {
    match headers.get(VARIANT_HEADER)?.to_str().ok()? {
        "a" => Some(false),
        "b" => Some(true),
        _ => None,
    }
}

/// Starts a request's guard at its arrival: the HTTP layer's, when it is there (the meter is on),
/// else now.
fn start_guard(
    meter: &Meter,
    arrival: Option<&HttpArrival>,
    at: Instant,
    configure: impl FnOnce(RequestBuilder) -> RequestBuilder,
) -> RequestGuard {
    match arrival {
        Some(a) => a.start_with(configure),
        None => configure(meter.request()).start_at(at),
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn generate(
    s: AppState,
    kind: Kind,
    http: Option<HttpArrival>,
    asked_b: Option<bool>,
    body: Body,
) -> Response {
    let st = &s.inner;
    // Arrival: read by the HTTP layer before the body, so TTFT includes reading, parsing and
    // tokenizing (read here when there is no layer).
    let arrival = http
        .as_ref()
        .map_or_else(|| st.meter.now(), HttpArrival::instant);
    let n = st.next_id.fetch_add(1, Ordering::Relaxed);
    let id = match kind {
        Kind::Chat => format!("chatcmpl-{n}"),
        Kind::Completion => format!("cmpl-{n}"),
    };
    let fail = |e: ApiError| -> Response {
        if st.meter_on {
            let mut g = start_guard(&st.meter, http.as_ref(), arrival, |r| {
                r.request_id(id.clone())
            });
            g.fail(e.kind);
        }
        e.response()
    };
    let bytes: Bytes = match axum::body::to_bytes(body, MAX_BODY_BYTES).await {
        Ok(b) => b,
        Err(_) => {
            return fail(ApiError {
                status: StatusCode::PAYLOAD_TOO_LARGE,
                message: format!("request body larger than {MAX_BODY_BYTES} bytes"),
                code: "request_too_large",
                param: None,
                kind: ErrorKind::InvalidRequest,
            });
        }
    };
    let parsed = match parse(&st.model, kind, &bytes, n) {
        Ok(p) => p,
        Err(e) => return fail(e),
    };
    // Variant B takes its share of the requests (or those that asked for it).
    let (engine, variant) = match &st.variant_b {
        Some((v, b)) if asked_b.unwrap_or_else(|| v.takes(n)) => (b, Some("b")),
        Some(_) => (&st.engine, Some("a")),
        None => (&st.engine, None),
    };
    let guard: Option<RequestGuard> = st.meter_on.then(|| {
        start_guard(&st.meter, http.as_ref(), arrival, |r| {
            let r = r
                .prompt_tokens(parsed.prompt.len())
                .max_tokens(parsed.max_tokens as u64)
                .request_id(id.clone());
            match variant {
                Some(v) => r.label(super::VARIANT_LABEL, v),
                None => r,
            }
        })
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let req = GenRequest {
        prompt: parsed.prompt,
        max_tokens: parsed.max_tokens,
        sampling: parsed.sampling,
        guard,
        arrival,
        events: tx,
    };
    if let Err(mut req) = engine.submit(req) {
        if let Some(g) = req.guard.as_mut() {
            g.fail(ErrorKind::Internal);
        }
        let body = json!({"error": {"message": "the engine is not running", "type": "server_error", "param": null, "code": "engine_down"}});
        return (StatusCode::SERVICE_UNAVAILABLE, axum::Json(body)).into_response();
    }
    let meta = RespMeta {
        id: id.clone(),
        created: unix_now(),
        model: st.model.id.clone(),
        kind,
    };
    let mut resp = if parsed.stream {
        stream_response(rx, meta, parsed.include_usage).into_response()
    } else {
        collect_response(rx, meta).await
    };
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert("x-request-id", v);
    }
    resp
}

#[derive(Clone)]
struct RespMeta {
    id: String,
    created: u64,
    model: String,
    kind: Kind,
}

impl RespMeta {
    fn chunk(&self, text: Option<&str>, first: bool, finish: Option<&str>) -> Value {
        match self.kind {
            Kind::Chat => {
                let delta = match (text, first) {
                    (Some(t), true) => json!({"role": "assistant", "content": t}),
                    (Some(t), false) => json!({"content": t}),
                    (None, _) => json!({}),
                };
                json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                       "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]})
            }
            Kind::Completion => {
                json!({"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                       "choices": [{"index": 0, "text": text.unwrap_or(""), "logprobs": null, "finish_reason": finish}]})
            }
        }
    }

    fn usage_value(prompt: usize, completion: usize) -> Value {
        json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
    }
}

fn timing_value(t: &ServerTiming) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

fn stream_response(
    rx: mpsc::UnboundedReceiver<Event>,
    meta: RespMeta,
    include_usage: bool,
) -> impl IntoResponse {
    struct St {
        rx: mpsc::UnboundedReceiver<Event>,
        meta: RespMeta,
        include_usage: bool,
        first: bool,
        pending: std::collections::VecDeque<String>,
        done: bool,
    }
    let st = St {
        rx,
        meta,
        include_usage,
        first: true,
        pending: Default::default(),
        done: false,
    };
    let stream = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(data) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(SseEvent::default().data(data)), st));
            }
            if st.done {
                return None;
            }
            match st.rx.recv().await {
                Some(Event::Token { text }) => {
                    let v = st.meta.chunk(Some(&text), st.first, None);
                    st.first = false;
                    st.pending.push_back(v.to_string());
                }
                Some(Event::Done {
                    finish_reason,
                    prompt_tokens,
                    completion_tokens,
                    timing,
                }) => {
                    st.pending
                        .push_back(st.meta.chunk(None, false, Some(finish_reason)).to_string());
                    if st.include_usage {
                        let v = json!({"id": st.meta.id, "object": match st.meta.kind { Kind::Chat => "chat.completion.chunk", Kind::Completion => "text_completion" },
                            "created": st.meta.created, "model": st.meta.model, "choices": [],
                            "usage": RespMeta::usage_value(prompt_tokens, completion_tokens),
                            "tokenmeter": timing_value(&timing)});
                        st.pending.push_back(v.to_string());
                    }
                    st.pending.push_back("[DONE]".into());
                    st.done = true;
                }
                Some(Event::Error(msg)) => {
                    st.pending.push_back(json!({"error": {"message": msg, "type": "server_error", "param": null, "code": "internal"}}).to_string());
                    st.pending.push_back("[DONE]".into());
                    st.done = true;
                }
                None => return None,
            }
        }
    });
    Sse::new(stream)
}

async fn collect_response(mut rx: mpsc::UnboundedReceiver<Event>, meta: RespMeta) -> Response {
    let mut text = String::new();
    while let Some(ev) = rx.recv().await {
        match ev {
            Event::Token { text: t } => text.push_str(&t),
            Event::Done {
                finish_reason,
                prompt_tokens,
                completion_tokens,
                timing,
            } => {
                let choice = match meta.kind {
                    Kind::Chat => {
                        json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": finish_reason})
                    }
                    Kind::Completion => {
                        json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason})
                    }
                };
                let body = json!({"id": meta.id, "object": match meta.kind { Kind::Chat => "chat.completion", Kind::Completion => "text_completion" },
                    "created": meta.created, "model": meta.model, "choices": [choice],
                    "usage": RespMeta::usage_value(prompt_tokens, completion_tokens),
                    "tokenmeter": timing_value(&timing)});
                return axum::Json(body).into_response();
            }
            Event::Error(msg) => {
                let body = json!({"error": {"message": msg, "type": "server_error", "param": null, "code": "internal"}});
                return (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response();
            }
        }
    }
    let body = json!({"error": {"message": "the engine dropped the request", "type": "server_error", "param": null, "code": "internal"}});
    (StatusCode::INTERNAL_SERVER_ERROR, axum::Json(body)).into_response()
}

async fn models(State(s): State<AppState>) -> Response {
    axum::Json(json!({"object": "list", "data": [{"id": s.inner.model.id, "object": "model", "owned_by": "tokenmeter-demo"}]})).into_response()
}

async fn metrics(State(s): State<AppState>) -> Response {
    let text = (s.inner.render)();
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn health(State(s): State<AppState>) -> Response {
    let st = &s.inner;
    let source = match &st.model.source {
        super::model::ModelSource::Gguf(p) => json!({"gguf": p}),
        super::model::ModelSource::Random(why) => json!({"random": why}),
    };
    // The meter's liveness: a frozen engine fails the probe (503) while this handler answers.
    let health = st.meter_on.then(|| st.meter.health());
    let status = health.map_or(StatusCode::OK, |h| {
        StatusCode::from_u16(h.http_status()).unwrap_or(StatusCode::SERVICE_UNAVAILABLE)
    });
    let body = json!({
        "status": if status == StatusCode::OK { "ok" } else { "engine frozen" },
        "model": st.model.id,
        "source": source,
        "meter": st.meter_on,
        "waiting": st.engine.stats.waiting.load(Ordering::Relaxed),
        "running": st.engine.stats.running.load(Ordering::Relaxed),
        "engine": health,
    });
    (status, axum::Json(body)).into_response()
}

async fn snapshot(State(s): State<AppState>) -> Response {
    axum::Json(s.inner.meter.snapshot()).into_response()
}

/// The drift monitor's live window and, with a baseline, its comparison:
/// `{"window": TrafficWindow, "drift": DriftResult | null}` (404 with the meter off).
async fn drift(State(s): State<AppState>) -> Response {
    let Some(d) = &s.inner.drift else {
        let body = json!({"error": {"message": "this server runs without a meter", "type": "not_found_error", "param": null, "code": "no_drift_monitor"}});
        return (StatusCode::NOT_FOUND, axum::Json(body)).into_response();
    };
    let result = d.evaluate();
    axum::Json(json!({"window": d.window(), "drift": result})).into_response()
}

/// The arrival instant type, re-exported for tests.
pub type Arrival = Instant;
