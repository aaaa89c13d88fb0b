//! The request's tracing span (OpenTelemetry GenAI attributes) and its request-log event.
//!
//! `tracing-opentelemetry` reads `otel.name`, `otel.kind` and `otel.status_code` to set the
//! exported span's name, kind and status; the rest become attributes. Fields filled later are
//! declared `Empty` here, since tracing only records declared fields.
//!
//! Prompt and output text reach the span and the event only when the meter opted in to text
//! capture, and only after the user's redactor ran on them (see `redact.rs`).

use std::sync::OnceLock;

use tracing::Span;
use tracing::field::Empty;

use crate::names::{REQUEST_TARGET as TARGET, attr};
use crate::summary::RequestSummary;

/// Records a string-array attribute on a span: `(span, attribute name, values)`.
pub type StringArrayRecorder = fn(&Span, &'static str, &[&str]);

static STRING_ARRAY_RECORDER: OnceLock<StringArrayRecorder> = OnceLock::new();

/// Sets how string-array span attributes (`gen_ai.response.finish_reasons`, a `string[]` in
/// the GenAI conventions) are recorded. `tracing` field values are scalars, so without a
/// recorder the array is recorded as its single string; an OpenTelemetry bridge installs one
/// that sets a real array attribute (tokenmeter-export's OTLP trace layer does). The first
/// call wins; returns whether this one did.
///
/// ```
/// fn as_array(span: &tracing::Span, key: &'static str, values: &[&str]) {
///     // e.g. tracing_opentelemetry::OpenTelemetrySpanExt::set_attribute(span, key, ...)
///     let _ = (span, key, values);
/// }
/// let _first = tokenmeter_core::set_string_array_recorder(as_array);
/// ```
pub fn set_string_array_recorder(recorder: StringArrayRecorder) -> bool {
    STRING_ARRAY_RECORDER.set(recorder).is_ok()
}

/// OpenTelemetry attributes are signed: `tracing-opentelemetry` exports a `u64` as a string.
fn as_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// What every request span of one meter says about the service.
#[derive(Debug)]
pub(crate) struct Identity {
    pub(crate) operation: String,
    pub(crate) provider: String,
    pub(crate) model: String,
}

pub(crate) fn request_span(inner: &Identity, request_id: &str, parent: Option<&Span>) -> Span {
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
                gen_ai.usage.input_tokens = Empty,
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
                gen_ai.usage.cache_read.input_tokens = Empty,
                gen_ai.request.max_tokens = Empty,
                gen_ai.request.choice.count = Empty,
                tokenmeter.inference_time = Empty,
                tokenmeter.preemptions = Empty,
                tokenmeter.spec_decode.draft_tokens = Empty,
                tokenmeter.spec_decode.accepted_tokens = Empty,
                tokenmeter.adapter = Empty,
                tokenmeter.energy = Empty,
                tokenmeter.cost = Empty,
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
    pub(crate) summary: &'a RequestSummary,
    pub(crate) finish_reason: &'static str,
    pub(crate) error_type: Option<&'a str>,
    /// Redacted text, when the meter captures text.
    pub(crate) text: Option<EndText<'a>>,
    /// The request's `n`, when it set one.
    pub(crate) n: Option<u32>,
    pub(crate) max_tokens: Option<u64>,
}

/// Records the request's parameters on its span at start (the request log reads `n` and
/// `max_tokens` at the end; the adapter it finds on the span).
pub(crate) fn record_params(
    span: &Span,
    n: Option<u32>,
    max_tokens: Option<u64>,
    adapter: Option<&str>,
) {
    if span.is_disabled() {
        return;
    }
    if let Some(m) = max_tokens {
        span.record(attr::MAX_TOKENS, as_i64(m));
    }
    if let Some(n) = n {
        span.record(attr::CHOICE_COUNT, i64::from(n));
    }
    if let Some(a) = adapter {
        span.record(attr::ADAPTER, a);
    }
}

/// Captured text after the redactor ran, and whether the byte cap cut it.
pub(crate) struct EndText<'a> {
    pub(crate) prompt: Option<&'a str>,
    pub(crate) output: Option<&'a str>,
    pub(crate) prompt_truncated: bool,
    pub(crate) output_truncated: bool,
}

/// The OpenTelemetry GenAI message shape for one text part: `[{"role":ROLE,"parts":
/// [{"type":"text","content":TEXT}]}]` (the `gen_ai.input.messages` and
/// `gen_ai.output.messages` schemas).
fn messages_json(role: &str, text: &str) -> String {
    #[derive(serde::Serialize)]
    struct Message<'a> {
        role: &'a str,
        parts: [Part<'a>; 1],
    }
    #[derive(serde::Serialize)]
    struct Part<'a> {
        r#type: &'static str,
        content: &'a str,
    }
    let message = Message {
        role,
        parts: [Part {
            r#type: "text",
            content: text,
        }],
    };
    // Strings and a fixed shape: serializing cannot fail.
    serde_json::to_string(&[message]).unwrap_or_default()
}

pub(crate) fn record_end(span: &Span, model: &str, r: &EndRecord<'_>) {
    let s = r.summary;
    let secs = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64());
    let text = r.text.as_ref();
    let prompt = text.and_then(|t| t.prompt);
    let output = text.and_then(|t| t.output);
    let prompt_cut = text.and_then(|t| t.prompt_truncated.then_some(true));
    let output_cut = text.and_then(|t| t.output_truncated.then_some(true));
    if !span.is_disabled() {
        // Input tokens at the end: a server may learn them after start (`set_prompt_tokens`).
        span.record(attr::INPUT_TOKENS, as_i64(s.input_tokens));
        span.record(attr::OUTPUT_TOKENS, as_i64(s.output_tokens));
        match STRING_ARRAY_RECORDER.get() {
            Some(record) => record(span, attr::FINISH_REASONS, &[r.finish_reason]),
            None => {
                span.record(attr::FINISH_REASONS, r.finish_reason);
            }
        }
        let timings = [
            (attr::TIME_TO_FIRST_CHUNK, s.ttft),
            (attr::TIME_PER_OUTPUT_TOKEN, s.tpot),
            (attr::QUEUE_TIME, s.queue),
            (attr::PREFILL_TIME, s.prefill),
            (attr::DECODE_TIME, s.decode),
            (attr::INFERENCE_TIME, s.inference),
        ];
        for (name, t) in timings {
            if let Some(t) = secs(t) {
                span.record(name, t);
            }
        }
        span.record(attr::CACHED_INPUT_TOKENS, as_i64(s.cached_prompt_tokens));
        span.record(attr::PREEMPTIONS, as_i64(s.preemptions));
        if s.spec_draft_tokens > 0 {
            span.record(attr::SPEC_DRAFT_TOKENS, as_i64(s.spec_draft_tokens));
            span.record(attr::SPEC_ACCEPTED_TOKENS, as_i64(s.spec_accepted_tokens));
        }
        if let Some(j) = s.energy_joules {
            span.record(attr::ENERGY, j);
        }
        if let Some(c) = s.cost {
            span.record(attr::COST, c);
        }
        let nf = s.non_finite;
        span.record(attr::LOGITS_NAN, as_i64(nf.nan));
        span.record(attr::LOGITS_POS_INF, as_i64(nf.pos_inf));
        span.record(attr::LOGITS_NEG_INF, as_i64(nf.neg_inf));
        if let Some(e) = r.error_type {
            span.record(attr::ERROR_TYPE, e);
            span.record("otel.status_code", "ERROR");
        }
        if let Some(p) = prompt {
            span.record(attr::INPUT_MESSAGES, messages_json("user", p).as_str());
        }
        if let Some(o) = output {
            span.record(
                attr::OUTPUT_MESSAGES,
                messages_json("assistant", o).as_str(),
            );
        }
        if prompt_cut.is_some() || output_cut.is_some() {
            span.record(attr::TEXT_TRUNCATED, true);
        }
    }
    let ms = |d: Option<std::time::Duration>| d.map(|d| d.as_secs_f64() * 1e3);
    let nf = s.non_finite;
    tracing::info!(
        target: TARGET,
        parent: span,
        request_id = r.request_id,
        model,
        prompt_tokens = s.input_tokens,
        output_tokens = s.output_tokens,
        ttft_ms = ms(s.ttft),
        tpot_ms = ms(s.tpot),
        e2e_ms = s.e2e.as_secs_f64() * 1e3,
        queue_ms = ms(s.queue),
        inference_ms = ms(s.inference),
        cached_tokens = s.cached_prompt_tokens,
        preemptions = s.preemptions,
        spec_draft_tokens = (s.spec_draft_tokens > 0).then_some(s.spec_draft_tokens),
        spec_accepted_tokens = (s.spec_draft_tokens > 0).then_some(s.spec_accepted_tokens),
        max_tokens = r.max_tokens,
        n = r.n,
        finish_reason = r.finish_reason,
        error_type = r.error_type,
        energy_j = s.energy_joules,
        cost = s.cost,
        nan = nf.nan,
        pos_inf = nf.pos_inf,
        neg_inf = nf.neg_inf,
        prompt,
        output,
        prompt_truncated = prompt_cut,
        output_truncated = output_cut,
        "request finished"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_escaped() {
        assert_eq!(
            messages_json("user", "a\"b\\c\nd\u{1}é"),
            r#"[{"role":"user","parts":[{"type":"text","content":"a\"b\\c\nd\u0001é"}]}]"#
        );
    }

    #[test]
    fn the_span_declares_every_attribute_name() {
        let id = Identity {
            operation: "chat".into(),
            provider: "p".into(),
            model: "m".into(),
        };
        let subscriber = tracing_subscriber_stub::Everything;
        tracing::subscriber::with_default(subscriber, || {
            let span = request_span(&id, "r", None);
            let meta = span.metadata().expect("enabled");
            for name in [
                attr::INPUT_TOKENS,
                attr::OUTPUT_TOKENS,
                attr::FINISH_REASONS,
                attr::TIME_TO_FIRST_CHUNK,
                attr::ERROR_TYPE,
                attr::TIME_PER_OUTPUT_TOKEN,
                attr::QUEUE_TIME,
                attr::PREFILL_TIME,
                attr::DECODE_TIME,
                attr::LOGITS_NAN,
                attr::LOGITS_POS_INF,
                attr::LOGITS_NEG_INF,
                attr::PERPLEXITY,
                attr::MEAN_ENTROPY,
                attr::LOW_CONFIDENCE_SHARE,
                attr::REFUSAL,
                attr::REPETITION,
                attr::OUTPUT_CHARS,
                attr::INPUT_MESSAGES,
                attr::OUTPUT_MESSAGES,
                attr::TEXT_TRUNCATED,
                attr::CACHED_INPUT_TOKENS,
                attr::MAX_TOKENS,
                attr::CHOICE_COUNT,
                attr::INFERENCE_TIME,
                attr::PREEMPTIONS,
                attr::SPEC_DRAFT_TOKENS,
                attr::SPEC_ACCEPTED_TOKENS,
                attr::ADAPTER,
                attr::ENERGY,
                attr::COST,
            ] {
                assert!(
                    meta.fields().field(name).is_some(),
                    "{name} is not declared"
                );
            }
        });
    }

    /// A subscriber that enables every span, so its metadata can be read.
    mod tracing_subscriber_stub {
        use tracing::span::{Attributes, Id, Record};
        use tracing::{Event, Metadata};

        pub(super) struct Everything;

        impl tracing::Subscriber for Everything {
            fn enabled(&self, _: &Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, _: &Attributes<'_>) -> Id {
                Id::from_u64(1)
            }
            fn record(&self, _: &Id, _: &Record<'_>) {}
            fn record_follows_from(&self, _: &Id, _: &Id) {}
            fn event(&self, _: &Event<'_>) {}
            fn enter(&self, _: &Id) {}
            fn exit(&self, _: &Id) {}
        }
    }
}
