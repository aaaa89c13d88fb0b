//! Every name tokenmeter emits, in one place: metric names under each naming preset, label keys
//! in both directions (OpenTelemetry attribute key ⇄ emitted label key), the default prefix, the
//! tracing target of the request span and log, and the span attribute names.
//!
//! Exporters reach a meter's names through [`Meter::metric_names`](crate::Meter::metric_names);
//! the reverse map (emitted label key → OpenTelemetry key) is [`otel_label_key`].

use metrics::Label;

use crate::catalog::{self, MetricDef};
use crate::types::Finish;

/// The default prefix of tokenmeter's own metrics ([`MeterBuilder::prefix`](crate::MeterBuilder::prefix)).
pub const DEFAULT_PREFIX: &str = "tokenmeter";

/// The `tracing` target of the request span and of the per-request log event; filter on it with
/// `tracing_subscriber::EnvFilter` (`tokenmeter::request=info`).
pub const REQUEST_TARGET: &str = "tokenmeter::request";

/// Attribute names of the request span. The OpenTelemetry GenAI conventions define the
/// `gen_ai.*` and `error.type` names (shared/reference/otel-genai.md); `tokenmeter.*` are ours.
/// Every name here is declared on the span, so `span.record(attr::X, v)` always lands.
pub mod attr {
    /// `gen_ai.usage.input_tokens` (int).
    pub const INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
    /// `gen_ai.usage.output_tokens` (int).
    pub const OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
    /// `gen_ai.response.finish_reasons` (string array).
    pub const FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
    /// `gen_ai.response.time_to_first_chunk` (double, seconds).
    pub const TIME_TO_FIRST_CHUNK: &str = "gen_ai.response.time_to_first_chunk";
    /// `error.type` (string).
    pub const ERROR_TYPE: &str = "error.type";
    /// Mean time per output token after the first (double, seconds).
    pub const TIME_PER_OUTPUT_TOKEN: &str = "tokenmeter.time_per_output_token";
    /// Queue time (double, seconds).
    pub const QUEUE_TIME: &str = "tokenmeter.queue_time";
    /// Prefill time (double, seconds).
    pub const PREFILL_TIME: &str = "tokenmeter.prefill_time";
    /// Decode time (double, seconds).
    pub const DECODE_TIME: &str = "tokenmeter.decode_time";
    /// NaN values in the request's scanned logits (int).
    pub const LOGITS_NAN: &str = "tokenmeter.logits.nan";
    /// `+Inf` values in the request's scanned logits (int).
    pub const LOGITS_POS_INF: &str = "tokenmeter.logits.pos_inf";
    /// `-Inf` values in the request's scanned logits (int).
    pub const LOGITS_NEG_INF: &str = "tokenmeter.logits.neg_inf";
    /// Perplexity of the output under the model's own logprobs (double).
    pub const PERPLEXITY: &str = "tokenmeter.perplexity";
    /// Mean per-token entropy (double, nats).
    pub const MEAN_ENTROPY: &str = "tokenmeter.mean_entropy";
    /// Share of low-confidence tokens (double, 0..1).
    pub const LOW_CONFIDENCE_SHARE: &str = "tokenmeter.low_confidence_share";
    /// Whether the output reads as a refusal (bool).
    pub const REFUSAL: &str = "tokenmeter.refusal";
    /// Repetition score of the output (double, 0..1).
    pub const REPETITION: &str = "tokenmeter.repetition";
    /// Output length in characters (int).
    pub const OUTPUT_CHARS: &str = "tokenmeter.output_chars";
    /// `gen_ai.input.messages` (JSON, only with text capture).
    pub const INPUT_MESSAGES: &str = "gen_ai.input.messages";
    /// `gen_ai.output.messages` (JSON, only with text capture).
    pub const OUTPUT_MESSAGES: &str = "gen_ai.output.messages";
    /// Whether the captured text was cut at the byte cap (bool).
    pub const TEXT_TRUNCATED: &str = "tokenmeter.text_truncated";
    /// `gen_ai.usage.cache_read.input_tokens` (int): prompt tokens served from the prefix cache.
    pub const CACHED_INPUT_TOKENS: &str = "gen_ai.usage.cache_read.input_tokens";
    /// `gen_ai.request.max_tokens` (int), when the request set it.
    pub const MAX_TOKENS: &str = "gen_ai.request.max_tokens";
    /// `gen_ai.request.choice.count` (int): the request's `n`, when it set one.
    pub const CHOICE_COUNT: &str = "gen_ai.request.choice.count";
    /// Inference time: first scheduling to the last token (double, seconds).
    pub const INFERENCE_TIME: &str = "tokenmeter.inference_time";
    /// Times the engine preempted the request (int).
    pub const PREEMPTIONS: &str = "tokenmeter.preemptions";
    /// Speculative-decoding draft tokens proposed (int).
    pub const SPEC_DRAFT_TOKENS: &str = "tokenmeter.spec_decode.draft_tokens";
    /// Speculative-decoding draft tokens accepted (int).
    pub const SPEC_ACCEPTED_TOKENS: &str = "tokenmeter.spec_decode.accepted_tokens";
    /// The adapter (LoRA) that served the request (string).
    pub const ADAPTER: &str = "tokenmeter.adapter";
    /// GPU energy attributed to the request by its end (double, joules; docs/gpu.md).
    pub const ENERGY: &str = "tokenmeter.energy";
    /// Cost attributed to the request by its end (double, the sampler's price currency).
    pub const COST: &str = "tokenmeter.cost";
}

/// Which family of names the meter emits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Naming {
    /// OpenTelemetry semantic-convention names where they exist (`gen_ai.server.*`, `hw.*`),
    /// our prefix elsewhere; exposed under the OTel → Prometheus mapping
    /// (`gen_ai_server_time_to_first_token_seconds`).
    #[default]
    OpenTelemetry,
    /// vLLM's exposed names and labels where vLLM defines the metric
    /// (`vllm:time_to_first_token_seconds{model_name=..}`), so vLLM dashboards work unchanged;
    /// our prefix elsewhere.
    Vllm,
}

/// OpenTelemetry attribute keys that vLLM spells differently, as (OTel key, vLLM label key).
const VLLM_LABEL_KEYS: &[(&str, &str)] = &[
    ("gen_ai.request.model", "model_name"),
    ("finish_reason", "finished_reason"),
];

/// OpenTelemetry attribute keys that may appear as labels besides the catalog's metric-specific
/// ones (constant labels and the hardware identity).
const CONSTANT_KEYS: &[&str] = &[
    "gen_ai.request.model",
    "gen_ai.response.model",
    "gen_ai.provider.name",
    "gen_ai.operation.name",
    "gen_ai.token.modality",
    "error.type",
    "finish_reason",
    "server.address",
    "server.port",
    "model.version",
    "hw.id",
    "hw.type",
    "hw.name",
    "hw.vendor",
];

/// The label key emitted for an OpenTelemetry attribute key under a naming preset
/// (`hw.id` → `hw_id`; under the vLLM preset `gen_ai.request.model` → `model_name`).
///
/// ```
/// use tokenmeter_core::names::{Naming, label_key};
/// assert_eq!(label_key(Naming::OpenTelemetry, "gen_ai.request.model"), "gen_ai_request_model");
/// assert_eq!(label_key(Naming::Vllm, "gen_ai.request.model"), "model_name");
/// ```
pub fn label_key(naming: Naming, otel_key: &str) -> String {
    if naming == Naming::Vllm
        && let Some((_, v)) = VLLM_LABEL_KEYS.iter().find(|(o, _)| *o == otel_key)
    {
        return (*v).to_owned();
    }
    catalog::prometheus_label(otel_key)
}

/// The OpenTelemetry attribute key behind an emitted label key, for every key tokenmeter emits
/// under either preset (the inverse of [`label_key`]); `None` for a key it does not know (a
/// user's constant label, which exporters keep as it is).
///
/// ```
/// use tokenmeter_core::names::otel_label_key;
/// assert_eq!(otel_label_key("model_name"), Some("gen_ai.request.model"));
/// assert_eq!(otel_label_key("gen_ai_request_model"), Some("gen_ai.request.model"));
/// assert_eq!(otel_label_key("region"), None);
/// ```
pub fn otel_label_key(emitted: &str) -> Option<&'static str> {
    if let Some((o, _)) = VLLM_LABEL_KEYS.iter().find(|(_, v)| *v == emitted) {
        return Some(o);
    }
    catalog::all()
        .flat_map(|d| d.labels.iter().copied())
        .chain(CONSTANT_KEYS.iter().copied())
        .find(|k| catalog::prometheus_label(k) == emitted)
}

/// Whether an emitted label key is one a user label (constant, request or exporter-global) must
/// not take: Prometheus's own (`le`, `quantile`, `__`-prefixed, empty), the info metric's
/// (`model_version`, `version`), or a metric-specific label of the catalog under `naming`
/// (`finish_reason`, `error_type`, `kind`, `hw_id`, ...). A series carrying such a key twice is
/// rejected by Prometheus with the whole scrape.
///
/// ```
/// use tokenmeter_core::names::{Naming, is_reserved_label};
/// assert!(is_reserved_label(Naming::OpenTelemetry, "le"));
/// assert!(is_reserved_label(Naming::Vllm, "finished_reason"));
/// assert!(!is_reserved_label(Naming::OpenTelemetry, "region"));
/// ```
pub fn is_reserved_label(naming: Naming, emitted: &str) -> bool {
    emitted.is_empty()
        || emitted.starts_with("__")
        || matches!(emitted, "le" | "quantile" | "model_version" | "version")
        || catalog::all()
            .flat_map(|d| d.labels.iter())
            .any(|k| label_key(naming, k) == emitted)
}

/// The `finish_reason` label value of a finish under a naming preset (vLLM calls a cancelled
/// request `abort`).
pub(crate) fn finish_reason_label(naming: Naming, finish: Finish) -> &'static str {
    match (naming, finish) {
        (Naming::Vllm, Finish::Cancelled) => "abort",
        _ => finish.as_str(),
    }
}

/// A catalog metric as one meter emits it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ResolvedMetric {
    /// The catalog entry.
    pub def: &'static MetricDef,
    /// The name emitted through the `metrics` facade: the Prometheus exposition name.
    pub name: String,
    /// The full OpenTelemetry name (own metrics carry the prefix).
    pub otel_name: String,
    /// Bucket bounds in use (overrides and preset applied); `None` for non-histograms.
    pub buckets: Option<Vec<f64>>,
}

/// A catalog metric's names and buckets under a preset, prefix and optional bucket override.
pub(crate) fn resolve(
    def: &'static MetricDef,
    naming: Naming,
    prefix: &str,
    bucket_override: Option<&[f64]>,
) -> ResolvedMetric {
    let otel_name = def.full_otel_name(prefix);
    let vllm = naming == Naming::Vllm;
    let name = match def.vllm_name {
        Some(v) if vllm => v.to_owned(),
        _ => def.prometheus_name(prefix),
    };
    let preset = if vllm {
        def.vllm_buckets.or(def.buckets)
    } else {
        def.buckets
    };
    let buckets = bucket_override.or(preset).map(<[f64]>::to_vec);
    ResolvedMetric {
        def,
        name,
        otel_name,
        buckets,
    }
}

/// What one meter emits: every catalog metric resolved under its preset and prefix, and the
/// labels every model-scoped series carries. The one accessor exporters and the sibling crates
/// (GPU, quality) use, from [`Meter::metric_names`](crate::Meter::metric_names).
#[derive(Clone, Debug)]
pub struct MetricNames {
    naming: Naming,
    resolved: Vec<ResolvedMetric>,
    /// The preset's labels (model, operation, provider; vLLM's `model_name`, `engine`), then
    /// the builder's constant labels.
    constant_labels: Vec<Label>,
    preset_labels: usize,
}

impl MetricNames {
    pub(crate) fn new(
        naming: Naming,
        resolved: Vec<ResolvedMetric>,
        constant_labels: Vec<Label>,
        preset_labels: usize,
    ) -> Self {
        MetricNames {
            naming,
            resolved,
            constant_labels,
            preset_labels,
        }
    }

    /// The naming preset.
    pub fn naming(&self) -> Naming {
        self.naming
    }

    /// Every catalog metric as this meter emits it, in catalog order.
    pub fn metrics(&self) -> &[ResolvedMetric] {
        &self.resolved
    }

    /// One catalog metric as this meter emits it. Every catalog entry is resolved when the
    /// meter is built, so this finds one for any `&'static MetricDef` of [`catalog`].
    pub fn metric(&self, def: &'static MetricDef) -> Option<&ResolvedMetric> {
        self.resolved.iter().find(|r| std::ptr::eq(r.def, def))
    }

    /// The name emitted through the `metrics` facade for a catalog metric: its Prometheus
    /// exposition name under this meter's naming preset and prefix.
    ///
    /// ```
    /// use tokenmeter_core::{Meter, catalog};
    /// let meter = Meter::default();
    /// assert_eq!(meter.metric_names().name(&catalog::core::GOODPUT), "tokenmeter_requests_goodput_total");
    /// ```
    pub fn name(&self, def: &'static MetricDef) -> &str {
        self.metric(def).map_or(def.otel_name, |r| r.name.as_str())
    }

    /// The bucket bounds this meter uses for a histogram; `None` for other kinds.
    pub fn buckets(&self, def: &'static MetricDef) -> Option<&[f64]> {
        self.metric(def).and_then(|r| r.buckets.as_deref())
    }

    /// The label key emitted for an OpenTelemetry attribute key under this meter's preset.
    pub fn label_key(&self, otel_key: &str) -> String {
        label_key(self.naming, otel_key)
    }

    /// The labels every model-scoped metric carries: model, operation and provider (or vLLM's
    /// `model_name` and `engine`), plus the builder's constant labels.
    pub fn constant_labels(&self) -> &[Label] {
        &self.constant_labels
    }

    /// The constant labels followed by `extra` (OpenTelemetry keys, spelled for this preset).
    pub fn labels(&self, extra: &[(&str, &str)]) -> Vec<Label> {
        self.with_extra(&self.constant_labels, extra)
    }

    /// The labels of a node series (a GPU, the host), shared by every model of the process:
    /// the builder's constant labels (a region, a replica) without the model-scoped ones the
    /// preset adds, followed by `extra`.
    pub fn node_labels(&self, extra: &[(&str, &str)]) -> Vec<Label> {
        let own = self
            .constant_labels
            .get(self.preset_labels..)
            .unwrap_or_default();
        self.with_extra(own, extra)
    }

    fn with_extra(&self, base: &[Label], extra: &[(&str, &str)]) -> Vec<Label> {
        let mut out = base.to_vec();
        out.extend(
            extra
                .iter()
                .map(|(k, v)| Label::new(self.label_key(k), (*v).to_owned())),
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_round_trip_under_both_presets() {
        let keys = catalog::all()
            .flat_map(|d| d.labels.iter().copied())
            .chain(CONSTANT_KEYS.iter().copied());
        for k in keys {
            for naming in [Naming::OpenTelemetry, Naming::Vllm] {
                assert_eq!(otel_label_key(&label_key(naming, k)), Some(k), "{k}");
            }
        }
    }
}
