//! An OpenAI-compatible streaming chat server on the [mistral.rs](https://github.com/EricLBuehler/mistral.rs)
//! library (`mistralrs` 0.8.1), metered with tokenmeter from **outside** the engine, through
//! tokenmeter's public API only:
//!
//! - the tower layer ([`HttpMetricsLayer`]) gives the HTTP server metrics and each request's
//!   arrival, so TTFT and E2E count from when the request came in;
//! - one [`RequestGuard`](tokenmeter::RequestGuard) per chat request, started at that arrival
//!   and driven by the stream adapter ([`StreamMeterExt::metered`]) over mistral.rs's response
//!   chunks ([`MistralCounter`] says what each carries);
//! - a per-request mistral.rs logits processor ([`Probe`]) counts the sampled tokens and scans
//!   every logits row for NaN/Inf into the guard's lock-free [`NonFiniteHandle`];
//! - late input tokens: mistral.rs applies the chat template and tokenizes inside the engine,
//!   so the prompt length arrives only with the last chunk's `usage` (see [`MistralCounter`]);
//! - the request's measured values ([`RequestSummary`]) go back to the client in the last
//!   chunk's `usage.tokenmeter`.
//!
//! Routes: `POST /v1/chat/completions` (streamed as server-sent events with `"stream": true`,
//! one JSON response otherwise), `GET /metrics` (Prometheus, content-negotiated), `GET /health`.
//!
//! What this way of metering cannot see (queue time, prefill time, per-step batching) is in
//! `docs/integrations.md`, "A real server from outside: mistral.rs".

use std::convert::Infallible;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{MatchedPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response as HttpResponse};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use futures_util::{Stream, StreamExt};
use mistralrs::core::TokenSource;
use mistralrs::{
    CustomLogitsProcessor, DType, GgufModelBuilder, Model, NormalRequest, Request, RequestBuilder,
    RequestLike, Response, Tensor, TextMessageRole,
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokenmeter::export::PrometheusRender;
use tokenmeter::export::http::{Arrival, HttpMetricsLayer};
use tokenmeter::export::stream::{ChunkCounter, MeteredStream};
use tokenmeter::prelude::*;
use tokenmeter::quality::count_non_finite;
use tokenmeter::{NonFiniteHandle, RequestSummary};

/// A logits processor a request may get besides the [`Probe`] (a grammar, a bias, a test's
/// fault injection): chosen per request from its parsed body, applied before the probe scans.
pub type LogitsHook =
    Arc<dyn Fn(&ChatRequest) -> Option<Arc<dyn CustomLogitsProcessor>> + Send + Sync>;

/// Everything the handlers share. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    model: Arc<Model>,
    meter: Meter,
    model_name: String,
    metrics: PrometheusRender,
    hook: Option<LogitsHook>,
}

impl AppState {
    /// A server for `model` (its responses name `model_name`), metered on `meter`, serving
    /// `metrics` on `/metrics`.
    pub fn new(
        model: Arc<Model>,
        meter: Meter,
        model_name: impl Into<String>,
        metrics: PrometheusRender,
    ) -> Self {
        AppState {
            model,
            meter,
            model_name: model_name.into(),
            metrics,
            hook: None,
        }
    }

    /// Adds `hook`'s logits processor to the requests it picks.
    #[must_use]
    pub fn logits_hook(mut self, hook: LogitsHook) -> Self {
        self.hook = Some(hook);
        self
    }
}

/// Loads a GGUF model from a local file on the CPU, with no network: mistral.rs lists the
/// file's directory instead of the Hugging Face hub when the model id is a local directory,
/// and takes the tokenizer and the chat template from the GGUF metadata when that directory
/// has no `tokenizer.json` / `tokenizer_config.json`.
///
/// # Errors
/// When the path has no file name or parent directory, or mistral.rs cannot load the model.
pub async fn load_gguf(path: &Path, max_num_seqs: usize) -> anyhow::Result<Model> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file = path
        .file_name()
        .and_then(|f| f.to_str())
        .ok_or_else(|| anyhow::anyhow!("not a model file: {}", path.display()))?;
    GgufModelBuilder::new(dir.to_string_lossy(), vec![file])
        .with_token_source(TokenSource::None)
        .with_force_cpu()
        .with_max_num_seqs(max_num_seqs)
        .build()
        .await
}

/// The router: the routes above, wrapped in tokenmeter's HTTP layer.
pub fn router(state: AppState) -> Router {
    let layer = HttpMetricsLayer::new(&state.meter)
        .route(|p| p.extensions.get::<MatchedPath>().map(|m| m.as_str()));
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(state)
        .layer(layer)
}

async fn health(State(s): State<AppState>) -> Json<Value> {
    Json(json!({ "status": "ok", "model": s.model_name }))
}

async fn metrics(State(s): State<AppState>, headers: HeaderMap) -> HttpResponse {
    let accept = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok());
    let exposition = s.metrics.negotiate(accept);
    (
        [(header::CONTENT_TYPE, exposition.format.content_type())],
        exposition.body,
    )
        .into_response()
}

/// The body of `POST /v1/chat/completions`: the OpenAI fields this server honours.
#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    /// The conversation so far.
    pub messages: Vec<ChatMessage>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// At most this many output tokens (`max_completion_tokens` is the newer name).
    #[serde(alias = "max_completion_tokens")]
    pub max_tokens: Option<usize>,
    /// Sampling temperature; 0 (or absent) samples greedily.
    pub temperature: Option<f64>,
    /// Nucleus sampling mass.
    pub top_p: Option<f64>,
    /// Choices per request; only 1 is served.
    pub n: Option<usize>,
    /// The caller's end-user id (OpenAI's `user`); never a label.
    pub user: Option<String>,
}

/// One chat message.
#[derive(Debug, Deserialize)]
pub struct ChatMessage {
    /// `system`, `user`, `assistant` or `tool`.
    pub role: String,
    /// Its text: a string, or OpenAI's list of `{"type": "text", "text": ...}` parts.
    pub content: Content,
}

/// A message's content.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    /// Plain text.
    Text(String),
    /// Content parts; the text parts are joined.
    Parts(Vec<Part>),
}

/// One content part.
#[derive(Debug, Deserialize)]
pub struct Part {
    /// Only `text` parts are served.
    #[serde(rename = "type")]
    pub kind: String,
    /// The part's text.
    #[serde(default)]
    pub text: String,
}

fn bad_request(msg: impl std::fmt::Display) -> HttpResponse {
    error_response(StatusCode::BAD_REQUEST, "invalid_request_error", msg)
}

fn error_response(status: StatusCode, kind: &str, msg: impl std::fmt::Display) -> HttpResponse {
    let body = json!({ "error": { "message": msg.to_string(), "type": kind } });
    (status, Json(body)).into_response()
}

/// The mistral.rs request for a validated body, or the reason it is invalid.
fn build_request(req: &ChatRequest) -> Result<RequestBuilder, String> {
    if req.messages.is_empty() {
        return Err("`messages` is empty".into());
    }
    if req.n.is_some_and(|n| n != 1) {
        return Err("only `n` = 1 is served".into());
    }
    let mut b = RequestBuilder::new();
    for m in &req.messages {
        let role = match m.role.as_str() {
            "system" | "developer" => TextMessageRole::System,
            "user" => TextMessageRole::User,
            "assistant" => TextMessageRole::Assistant,
            "tool" => TextMessageRole::Tool,
            other => return Err(format!("unknown role `{other}`")),
        };
        let text = match &m.content {
            Content::Text(t) => t.clone(),
            Content::Parts(parts) => {
                if let Some(p) = parts.iter().find(|p| p.kind != "text") {
                    return Err(format!("content part type `{}` is not served", p.kind));
                }
                parts.iter().map(|p| p.text.as_str()).collect()
            }
        };
        b = b.add_message(role, text);
    }
    match req.temperature {
        None | Some(0.0) => b = b.set_deterministic_sampler(),
        Some(t) if t.is_finite() && t > 0.0 => b = b.set_sampler_temperature(t),
        Some(t) => return Err(format!("`temperature` {t} is not a positive number")),
    }
    if let Some(p) = req.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(format!("`top_p` {p} is not in (0, 1]"));
        }
        b = b.set_sampler_topp(p);
    }
    if let Some(n) = req.max_tokens {
        if n == 0 {
            return Err("`max_tokens` is 0".into());
        }
        b = b.set_sampler_max_len(n);
    }
    Ok(b)
}

/// Sends `b` to the engine as a streaming request; the receiver owns the responses (unlike
/// `Model::stream_chat_request`, whose stream borrows the model, so it can become a response
/// body). Dropping the receiver makes mistral.rs cancel the sequence at its next chunk.
async fn send_streaming(
    model: &Model,
    mut b: RequestBuilder,
) -> anyhow::Result<tokio::sync::mpsc::Receiver<Response>> {
    // mistral.rs's own buffer between the engine and a request's stream (as in `Model`).
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let (tools, tool_choice) = b
        .take_tools()
        .map_or((None, None), |(a, c)| (Some(a), Some(c)));
    let request = Request::Normal(Box::new(NormalRequest {
        messages: b.take_messages(),
        sampling_params: b.take_sampling_params(),
        response: tx,
        return_logprobs: RequestLike::return_logprobs(&b),
        is_streaming: true,
        id: 0,
        constraint: b.take_constraint(),
        suffix: None,
        tools,
        tool_choice,
        logits_processors: b.take_logits_processors(),
        return_raw_logits: false,
        web_search_options: b.take_web_search_options(),
        model_id: None,
        truncate_sequence: b.truncate_sequence(),
    }));
    model
        .inner()
        .get_sender(None)?
        .send(request)
        .await
        .map_err(|_| anyhow::anyhow!("the mistral.rs engine stopped"))?;
    Ok(rx)
}

/// A per-request mistral.rs logits processor that only observes: it counts NaN/Inf in each
/// logits row into the request's [`NonFiniteHandle`] (lock-free, from the engine's sampling
/// threads) and returns the logits unchanged. Added last, it sees what the sampler samples
/// from.
///
/// It does not read the prompt length from its `context`: on a prefix-cache hit mistral.rs
/// passes only the uncached suffix of the prompt at the first step.
pub struct Probe {
    non_finite: NonFiniteHandle,
    sampled: AtomicU64,
    max_tokens: Option<usize>,
}

impl Probe {
    /// A probe recording into `non_finite` (from
    /// [`RequestGuard::non_finite_handle`](tokenmeter::RequestGuard::non_finite_handle)), for
    /// a request of at most `max_tokens` output tokens.
    pub fn new(non_finite: NonFiniteHandle, max_tokens: Option<usize>) -> Self {
        Probe {
            non_finite,
            sampled: AtomicU64::new(0),
            max_tokens,
        }
    }

    /// Tokens sampled so far: the processor runs once per sampled token, the end-of-sequence
    /// token included, whether or not a chunk was sent for it.
    pub fn sampled(&self) -> u64 {
        self.sampled.load(Ordering::Relaxed)
    }

    /// Why a request whose channel closed without a finishing chunk ended: `length` at its
    /// token limit, else `stop`.
    pub fn closed_finish(&self) -> Finish {
        let limit = self.max_tokens.and_then(|m| u64::try_from(m).ok());
        if limit.is_some_and(|m| self.sampled() >= m) {
            Finish::Length
        } else {
            Finish::Stop
        }
    }
}

impl CustomLogitsProcessor for Probe {
    fn apply(&self, logits: &Tensor, _context: &[u32]) -> mistralrs::Result<Tensor> {
        self.sampled.fetch_add(1, Ordering::Relaxed);
        // mistral.rs hands processors one f32 row on the host; the copy costs a vocabulary's
        // floats per step, next to a whole forward pass.
        let row: Vec<f32> = logits.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        let counts = count_non_finite(&row);
        if counts.total() > 0 {
            self.non_finite.record(counts);
        }
        Ok(logits.clone())
    }
}

/// One item of a request's stream from the engine: a mistral.rs response, then `Closed` when
/// mistral.rs drops the request's channel.
pub enum EngineItem {
    /// A response (a chunk, or an error).
    Response(Box<Response>),
    /// The channel closed: the sequence is gone.
    Closed,
}

/// Says what each [`EngineItem`] carries, for the stream adapter:
///
/// - A chunk carries one token per choice: mistral.rs sends a chunk per sampled token, the
///   end-of-sequence token included (an empty delta with the finish reason).
/// - Except for tokens ending inside a UTF-8 character, which send no chunk: the last chunk's
///   `usage.completion_tokens` is the exact total, so that chunk counts what is left.
/// - When the last token leaves a character incomplete, mistral.rs sends no last chunk at all
///   (and no usage): the channel just closes. Then `Closed` counts what the [`Probe`] saw
///   sampled and not yet counted, and ends the request ([`Probe::closed_finish`]).
/// - The prompt length comes with the last chunk's `usage.prompt_tokens` (mistral.rs
///   tokenizes the prompt inside the engine): reported with [`ChunkCount::prompt_tokens`],
///   the stream sets it on the guard before the request ends. A request that ends without it
///   (cancelled, failed, closed without a last chunk) records no input tokens.
/// - An error response fails the request (`invalid_request` for a validation error,
///   `internal` otherwise); an unknown finish reason too.
pub struct MistralCounter {
    probe: Arc<Probe>,
    seen: u64,
}

impl MistralCounter {
    /// A counter for the request `probe` observes.
    pub fn new(probe: Arc<Probe>) -> Self {
        MistralCounter { probe, seen: 0 }
    }

    fn add(&mut self, k: u64) -> ChunkCount {
        self.seen = self.seen.saturating_add(k);
        ChunkCount::tokens(u32::try_from(k).unwrap_or(u32::MAX))
    }
}

impl ChunkCounter<EngineItem> for MistralCounter {
    fn count(&mut self, item: &EngineItem) -> ChunkCount {
        let r = match item {
            EngineItem::Response(r) => &**r,
            EngineItem::Closed => {
                let k = self.probe.sampled().saturating_sub(self.seen);
                return self.add(k).finished(self.probe.closed_finish());
            }
        };
        match r {
            Response::Chunk(c) => {
                let k = match &c.usage {
                    Some(u) => u64::try_from(u.completion_tokens)
                        .unwrap_or(u64::MAX)
                        .saturating_sub(self.seen),
                    None => u64::try_from(c.choices.len()).unwrap_or(u64::MAX),
                };
                let mut n = self.add(k);
                let prompt = c.usage.as_ref().map(|u| u.prompt_tokens);
                if let Some(p) = prompt.and_then(|p| u64::try_from(p).ok()) {
                    n = n.prompt_tokens(p);
                }
                match c.choices.iter().find_map(|ch| ch.finish_reason.as_deref()) {
                    None => n,
                    Some(f) => match f.parse::<Finish>() {
                        Ok(f) => n.finished(f),
                        Err(_) => ChunkCount::failed(ErrorKind::Internal),
                    },
                }
            }
            Response::ValidationError(_) => ChunkCount::failed(ErrorKind::InvalidRequest),
            Response::InternalError(_) | Response::ModelError(..) => {
                ChunkCount::failed(ErrorKind::Internal)
            }
            _ => ChunkCount::NONE,
        }
    }
}

/// The request's measured values as they go into `usage.tokenmeter` (seconds, tokens).
pub fn summary_json(s: &RequestSummary) -> Value {
    let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64());
    json!({
        "input_tokens": s.input_tokens,
        "output_tokens": s.output_tokens,
        "ttft_seconds": secs(s.ttft),
        "tpot_seconds": secs(s.tpot),
        "decode_seconds": secs(s.decode),
        "e2e_seconds": s.e2e.as_secs_f64(),
        "goodput": s.goodput,
        "non_finite": { "nan": s.non_finite.nan, "pos_inf": s.non_finite.pos_inf, "neg_inf": s.non_finite.neg_inf },
    })
}

fn engine_error(r: &Response) -> Option<String> {
    match r {
        Response::ValidationError(e) | Response::InternalError(e) => Some(e.to_string()),
        Response::ModelError(e, _) => Some(e.clone()),
        _ => None,
    }
}

/// A chunk as JSON, naming the served model (mistral.rs names the model's directory), with the
/// summary in `usage.tokenmeter` on the chunk that ended the request.
fn chunk_json(
    c: &mistralrs::ChatCompletionChunkResponse,
    model_name: &str,
    summary: Option<&RequestSummary>,
) -> Value {
    let mut v = serde_json::to_value(c).unwrap_or(Value::Null);
    if let Some(obj) = v.as_object_mut() {
        obj.insert("model".into(), json!(model_name));
    }
    if let (Some(s), Some(obj)) = (summary, v.as_object_mut()) {
        let usage = obj.entry("usage").or_insert_with(|| json!({}));
        if !usage.is_object() {
            *usage = json!({});
        }
        if let Some(u) = usage.as_object_mut() {
            u.insert("tokenmeter".into(), summary_json(s));
        }
    }
    v
}

async fn chat_completions(
    State(s): State<AppState>,
    Extension(arrival): Extension<Arrival>,
    body: axum::body::Bytes,
) -> HttpResponse {
    // Validation errors answer before any guard: the layer counts them as rejected.
    let req: ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let mut b = match build_request(&req) {
        Ok(b) => b,
        Err(e) => return bad_request(e),
    };
    // The prompt length is not known yet: the engine tokenizes it.
    let mut guard = arrival.start_with(|r| r);
    let probe = Arc::new(Probe::new(guard.non_finite_handle(), req.max_tokens));
    if let Some(p) = s.hook.as_ref().and_then(|h| h(&req)) {
        b = b.add_logits_processor(p);
    }
    b = b.add_logits_processor(probe.clone());
    let rx = match send_streaming(&s.model, b).await {
        Ok(rx) => rx,
        Err(e) => {
            guard.fail(ErrorKind::Internal);
            return error_response(StatusCode::SERVICE_UNAVAILABLE, "engine_unavailable", e);
        }
    };
    let metered = engine_stream(rx).metered(guard, MistralCounter::new(probe.clone()));
    if req.stream {
        Sse::new(sse_events(metered, probe, s.model_name.clone())).into_response()
    } else {
        collect(metered, probe, &s.model_name).await
    }
}

fn engine_stream(
    mut rx: tokio::sync::mpsc::Receiver<Response>,
) -> impl Stream<Item = EngineItem> + Send + Unpin + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(|r| EngineItem::Response(Box::new(r)))
        .chain(futures_util::stream::once(std::future::ready(
            EngineItem::Closed,
        )))
}

/// The closing chunk this server sends when mistral.rs sent none (the channel closed with a
/// character incomplete): the finish reason and the output tokens the probe saw sampled.
fn closing_chunk(finish: Finish, model_name: &str, summary: Option<&RequestSummary>) -> Value {
    let mut usage = json!({});
    if let Some(s) = summary {
        usage = json!({ "completion_tokens": s.output_tokens, "tokenmeter": summary_json(s) });
    }
    json!({
        "object": "chat.completion.chunk",
        "model": model_name,
        "choices": [{ "index": 0, "delta": {}, "finish_reason": finish.as_str() }],
        "usage": usage,
    })
}

/// The server-sent events of one request: each chunk as mistral.rs sends it (the last one
/// with `usage.tokenmeter`), an error event for an engine error, then `[DONE]`. It ends as
/// soon as the request has ended rather than waiting for the engine to close the channel.
fn sse_events<S>(
    metered: MeteredStream<S, MistralCounter>,
    probe: Arc<Probe>,
    model_name: String,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static
where
    S: Stream<Item = EngineItem> + Send + Unpin + 'static,
{
    enum Phase<M> {
        Running(M),
        Closing,
        Closed,
    }
    futures_util::stream::unfold(Phase::Running(metered), move |phase| {
        let (probe, model_name) = (probe.clone(), model_name.clone());
        async move {
            let done = || Ok(Event::default().data("[DONE]"));
            let mut m = match phase {
                Phase::Running(m) => m,
                Phase::Closing => return Some((done(), Phase::Closed)),
                Phase::Closed => return None,
            };
            let data = match m.next().await {
                None => return Some((done(), Phase::Closed)),
                Some(EngineItem::Closed) => {
                    closing_chunk(probe.closed_finish(), &model_name, m.summary().as_ref())
                        .to_string()
                }
                Some(EngineItem::Response(r)) => match (&*r, engine_error(&r)) {
                    (Response::Chunk(c), _) => {
                        chunk_json(c, &model_name, m.summary().as_ref()).to_string()
                    }
                    (_, Some(e)) => {
                        // The failed request's values too (its NaN/Inf counts tell why).
                        let usage = m
                            .summary()
                            .map(|s| json!({ "tokenmeter": summary_json(&s) }));
                        json!({ "error": { "message": e, "type": "engine_error" }, "usage": usage })
                            .to_string()
                    }
                    // Nothing a chat stream sends: a comment keeps the stream going.
                    _ => return Some((Ok(Event::default().comment("")), Phase::Running(m))),
                },
            };
            let next = if m.summary().is_some() {
                Phase::Closing // dropping `m` drops the engine's receiver; the guard has ended
            } else {
                Phase::Running(m)
            };
            Some((Ok(Event::default().data(data)), next))
        }
    })
}

/// A non-streaming answer: the chunks' text joined, with `usage` and `usage.tokenmeter`.
async fn collect<S>(
    mut metered: MeteredStream<S, MistralCounter>,
    probe: Arc<Probe>,
    model_name: &str,
) -> HttpResponse
where
    S: Stream<Item = EngineItem> + Unpin,
{
    let mut text = String::new();
    let mut finish = None;
    let mut usage = None;
    let mut id = String::new();
    while let Some(item) = metered.next().await {
        let r = match item {
            EngineItem::Response(r) => *r,
            EngineItem::Closed => {
                finish = Some(probe.closed_finish().as_str().to_owned());
                let out = metered.summary().map(|s| s.output_tokens);
                usage = Some(json!({ "completion_tokens": out }));
                break;
            }
        };
        if let Some(e) = engine_error(&r) {
            return error_response(StatusCode::INTERNAL_SERVER_ERROR, "engine_error", e);
        }
        if let Response::Chunk(c) = &r {
            id.clone_from(&c.id);
            for ch in &c.choices {
                text.push_str(ch.delta.content.as_deref().unwrap_or(""));
                if ch.finish_reason.is_some() {
                    finish.clone_from(&ch.finish_reason);
                }
            }
            if c.usage.is_some() {
                usage = c.usage.as_ref().and_then(|u| serde_json::to_value(u).ok());
            }
        }
        if metered.summary().is_some() {
            break;
        }
    }
    let mut usage = usage.unwrap_or_else(|| json!({}));
    if let (Some(s), Some(u)) = (metered.summary(), usage.as_object_mut()) {
        u.insert("tokenmeter".into(), summary_json(&s));
    }
    Json(json!({
        "id": id,
        "object": "chat.completion",
        "model": model_name,
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": finish }],
        "usage": usage,
    }))
    .into_response()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mistralrs::{ChatCompletionChunkResponse, ChunkChoice, Delta, Device, Usage};
    use tokenmeter::clock::Clock;

    use super::*;

    fn chunk(text: &str, finish: Option<&str>, usage: Option<(usize, usize)>) -> EngineItem {
        EngineItem::Response(Box::new(Response::Chunk(ChatCompletionChunkResponse {
            id: "1".into(),
            choices: vec![ChunkChoice {
                finish_reason: finish.map(Into::into),
                index: 0,
                delta: Delta {
                    content: Some(text.into()),
                    role: "assistant".into(),
                    tool_calls: None,
                    reasoning_content: None,
                },
                logprobs: None,
            }],
            created: 0,
            model: "dir".into(),
            system_fingerprint: "local".into(),
            object: "chat.completion.chunk".into(),
            usage: usage.map(|(completion, prompt)| Usage {
                completion_tokens: completion,
                prompt_tokens: prompt,
                total_tokens: completion + prompt,
                avg_tok_per_sec: 0.0,
                avg_prompt_tok_per_sec: 0.0,
                avg_compl_tok_per_sec: 0.0,
                total_time_sec: 0.0,
                total_prompt_time_sec: 0.0,
                total_completion_time_sec: 0.0,
            }),
        })))
    }

    /// One sampling step through the probe, with `row` as the logits.
    fn sample(probe: &Probe, row: &[f32]) {
        let t = Tensor::new(row, &Device::Cpu).expect("tensor");
        let out = probe.apply(&t, &[]).expect("apply");
        assert_eq!(out.to_vec1::<f32>().expect("row").len(), row.len());
    }

    #[test]
    fn last_chunk_usage_counts_tokens_that_sent_no_chunk_and_sets_the_prompt() {
        let (clock, mock) = Clock::mock();
        let meter = Meter::builder().clock(clock).build();
        let mut guard = meter.request().start();
        let probe = Arc::new(Probe::new(guard.non_finite_handle(), Some(16)));
        // "a", then an emoji of three tokens (two sent no chunk), then EOS with the usage.
        let items = vec![
            chunk("a", None, None),
            chunk("🌍", None, None),
            chunk("", Some("stop"), Some((5, 31))),
        ];
        let mut s = futures_util::stream::iter(items).metered(guard, MistralCounter::new(probe));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for gap in [100, 50, 30] {
            mock.increment(Duration::from_millis(gap));
            assert!(matches!(
                std::pin::Pin::new(&mut s).poll_next(&mut cx),
                std::task::Poll::Ready(Some(_))
            ));
        }
        let sum = s.summary().expect("finished at the last chunk");
        assert_eq!((sum.input_tokens, sum.output_tokens), (31, 5));
        assert_eq!(sum.ttft, Some(Duration::from_millis(100)));
        assert_eq!(sum.tpot, Some(Duration::from_millis(80) / 4));
    }

    #[test]
    fn a_closed_channel_counts_what_the_probe_saw_sampled_and_its_non_finite_values() {
        let meter = Meter::default();
        let mut guard = meter.request().start();
        let probe = Arc::new(Probe::new(guard.non_finite_handle(), Some(3)));
        let mut counter = MistralCounter::new(probe.clone());
        sample(&probe, &[0.5, 1.0]);
        assert_eq!(
            counter.count(&chunk("a", None, None)),
            ChunkCount::tokens(1)
        );
        sample(
            &probe,
            &[f32::NAN, f32::INFINITY, f32::NEG_INFINITY, f32::NAN],
        );
        sample(&probe, &[0.0, 1.0]);
        // The last two tokens ended inside a character: no chunk, the channel closed.
        assert_eq!(probe.sampled(), 3);
        assert_eq!(
            counter.count(&EngineItem::Closed),
            ChunkCount::tokens(2).finished(Finish::Length)
        );
        guard.tokens(3);
        let sum = guard.finish(Finish::Length);
        assert_eq!(
            (
                sum.non_finite.nan,
                sum.non_finite.pos_inf,
                sum.non_finite.neg_inf
            ),
            (2, 1, 1)
        );
        // Under the token limit, a closed channel is a stop.
        let probe = Probe::new(meter.request().start().non_finite_handle(), None);
        sample(&probe, &[0.0]);
        assert_eq!(probe.closed_finish(), Finish::Stop);
    }

    #[test]
    fn engine_errors_fail_the_request_and_unknown_reasons_too() {
        let meter = Meter::default();
        let mut guard = meter.request().start();
        let mut c = MistralCounter::new(Arc::new(Probe::new(guard.non_finite_handle(), None)));
        let err = EngineItem::Response(Box::new(Response::ValidationError("too long".into())));
        assert_eq!(c.count(&err), ChunkCount::failed(ErrorKind::InvalidRequest));
        let err = EngineItem::Response(Box::new(Response::InternalError("boom".into())));
        assert_eq!(c.count(&err), ChunkCount::failed(ErrorKind::Internal));
        assert_eq!(
            c.count(&chunk("", Some("generated_image"), None)),
            ChunkCount::failed(ErrorKind::Internal)
        );
    }

    #[test]
    fn invalid_bodies_are_rejected_with_a_reason() {
        let parse = |v: Value| serde_json::from_value::<ChatRequest>(v).expect("body");
        let ok = parse(
            json!({ "messages": [{ "role": "user", "content": [{ "type": "text", "text": "hi" }] }] }),
        );
        assert!(build_request(&ok).is_ok());
        for (body, why) in [
            (json!({ "messages": [] }), "empty"),
            (
                json!({ "messages": [{ "role": "robot", "content": "x" }] }),
                "role",
            ),
            (
                json!({ "messages": [{ "role": "user", "content": "x" }], "n": 2 }),
                "`n`",
            ),
            (
                json!({ "messages": [{ "role": "user", "content": "x" }], "temperature": -1 }),
                "temperature",
            ),
            (
                json!({ "messages": [{ "role": "user", "content": "x" }], "max_tokens": 0 }),
                "max_tokens",
            ),
        ] {
            let err = build_request(&parse(body)).err().expect("rejected");
            assert!(err.contains(why), "{err}");
        }
    }
}
