//! Resolution of catalog metrics to the names, label keys and buckets a meter emits.

use crate::catalog::{self, MetricDef};

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

/// The label key emitted for an OpenTelemetry attribute key under a naming preset.
pub(crate) fn label_key(naming: Naming, otel_key: &str) -> String {
    match (naming, otel_key) {
        (Naming::Vllm, "gen_ai.request.model") => "model_name".to_owned(),
        (Naming::Vllm, "finish_reason") => "finished_reason".to_owned(),
        _ => catalog::prometheus_label(otel_key),
    }
}
