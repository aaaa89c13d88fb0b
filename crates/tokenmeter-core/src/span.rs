//! The request's tracing span (OpenTelemetry GenAI attributes) and its request-log event.
//!
//! `tracing-opentelemetry` reads `otel.name`, `otel.kind` and `otel.status_code` to set the
//! exported span's name, kind and status; the rest become attributes. Fields filled later are
//! declared `Empty` here, since tracing only records declared fields.
//!
//! Prompt and output text reach the span and the event only when the meter opted in to text
//! capture, and only after the user's redactor ran on them (see `redact.rs`).

use tracing::Span;
use tracing::field::Empty;

use crate::meter::Meter;
use crate::redact::{self, TextBuf, TextKind};

/// Target of the span and of the per-request log event; filter on it with
/// `tracing_subscriber::EnvFilter` (`tokenmeter=info`).
pub(crate) const TARGET: &str = "tokenmeter::request";

/// OpenTelemetry attributes are signed: `tracing-opentelemetry` exports a `u64` as a string.
fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub(crate) fn request_span(
    meter: &Meter,
    request_id: &str,
    prompt_tokens: u64,
    parent: Option<&Span>,
) -> Span {
    let inner = &meter.inner;
    let name = format!("{} {}", inner.operation, inner.model);
    macro_rules! span {
        ($($parent:expr)?) => {
            tracing::info_span!(
                target: TARGET,
                $(parent: $parent,)?
                "gen_ai.request",
                otel.name = %name,
                otel.kind = "server",
                otel.status_code = Empty,
                gen_ai.operation.name = %inner.operation,
                gen_ai.provider.name = %inner.provider,
                gen_ai.request.model = %inner.model,
                gen_ai.response.model = %inner.model,
                gen_ai.response.id = %request_id,
                gen_ai.usage.input_tokens = as_i64(prompt_tokens),
                gen_ai.usage.output_tokens = Empty,
                gen_ai.response.finish_reasons = Empty,
                gen_ai.response.time_to_first_chunk = Empty,
                error.type = Empty,
                tokenmeter.time_per_output_token = Empty,
                tokenmeter.queue_time = Empty,
                tokenmeter.prefill_time = Empty,
                tokenmeter.decode_time = Empty,
                tokenmeter.logits.nan = Empty,
                tokenmeter.logits.pos_inf = Empty,
                tokenmeter.logits.neg_inf = Empty,
                tokenmeter.perplexity = Empty,
                tokenmeter.mean_entropy = Empty,
                tokenmeter.low_confidence_share = Empty,
                tokenmeter.refusal = Empty,
                tokenmeter.repetition = Empty,
                tokenmeter.output_chars = Empty,
                gen_ai.input.messages = Empty,
                gen_ai.output.messages = Empty,
                tokenmeter.text_truncated = Empty,
            )
        };
    }
    match parent {
        Some(p) => span!(p),
        None => span!(),
    }
}

/// What the request log and the span carry when a request ends.
pub(crate) struct EndRecord<'a> {
    pub(crate) request_id: &'a str,
    pub(crate) prompt_tokens: u64,
    pub(crate) output_tokens: u64,
    pub(crate) ttft_s: Option<f64>,
    pub(crate) tpot_s: Option<f64>,
    pub(crate) e2e_s: f64,
    pub(crate) queue_s: Option<f64>,
    pub(crate) prefill_s: Option<f64>,
    pub(crate) decode_s: Option<f64>,
    pub(crate) finish_reason: &'static str,
    pub(crate) error_type: Option<&'a str>,
    pub(crate) nan: u64,
    pub(crate) pos_inf: u64,
    pub(crate) neg_inf: u64,
    /// The buffered text, when the meter captures text.
    pub(crate) text: Option<&'a TextBuf>,
}

pub(crate) fn record_end(span: &Span, meter: &Meter, r: &EndRecord<'_>) {
    let model = meter.inner.model.as_str();
    // Each text goes through the redactor once; the result feeds both the span and the log.
    let (mut prompt, mut output, mut prompt_cut, mut output_cut) = (None, None, None, None);
    if let Some(t) = r.text {
        prompt = redact::redact(meter, TextKind::Prompt, &t.prompt);
        output = redact::redact(meter, TextKind::Output, &t.output);
        prompt_cut = t.prompt.truncated.then_some(true);
        output_cut = t.output.truncated.then_some(true);
    }
    if !span.is_disabled() {
        span.record("gen_ai.usage.output_tokens", as_i64(r.output_tokens));
        span.record("gen_ai.response.finish_reasons", r.finish_reason);
        if let Some(t) = r.ttft_s {
            span.record("gen_ai.response.time_to_first_chunk", t);
        }
        if let Some(t) = r.tpot_s {
            span.record("tokenmeter.time_per_output_token", t);
        }
        if let Some(t) = r.queue_s {
            span.record("tokenmeter.queue_time", t);
        }
        if let Some(t) = r.prefill_s {
            span.record("tokenmeter.prefill_time", t);
        }
        if let Some(t) = r.decode_s {
            span.record("tokenmeter.decode_time", t);
        }
        span.record("tokenmeter.logits.nan", as_i64(r.nan));
        span.record("tokenmeter.logits.pos_inf", as_i64(r.pos_inf));
        span.record("tokenmeter.logits.neg_inf", as_i64(r.neg_inf));
        if let Some(e) = r.error_type {
            span.record("error.type", e);
            span.record("otel.status_code", "ERROR");
        }
        if let Some(p) = &prompt {
            span.record(
                "gen_ai.input.messages",
                redact::messages_json("user", p).as_str(),
            );
        }
        if let Some(o) = &output {
            span.record(
                "gen_ai.output.messages",
                redact::messages_json("assistant", o).as_str(),
            );
        }
        if prompt_cut.is_some() || output_cut.is_some() {
            span.record("tokenmeter.text_truncated", true);
        }
    }
    let ms = |s: Option<f64>| s.map(|s| s * 1e3);
    tracing::info!(
        target: TARGET,
        parent: span,
        request_id = r.request_id,
        model,
        prompt_tokens = r.prompt_tokens,
        output_tokens = r.output_tokens,
        ttft_ms = ms(r.ttft_s),
        tpot_ms = ms(r.tpot_s),
        e2e_ms = r.e2e_s * 1e3,
        queue_ms = ms(r.queue_s),
        finish_reason = r.finish_reason,
        error_type = r.error_type,
        nan = r.nan,
        pos_inf = r.pos_inf,
        neg_inf = r.neg_inf,
        prompt = prompt.as_deref(),
        output = output.as_deref(),
        prompt_truncated = prompt_cut,
        output_truncated = output_cut,
        "request finished"
    );
}
