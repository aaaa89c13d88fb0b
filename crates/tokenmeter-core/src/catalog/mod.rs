//! The one catalog of every metric tokenmeter emits.
//!
//! Each [`MetricDef`] carries the OpenTelemetry name, the vLLM-preset name where vLLM has one,
//! the instrument kind, the UCUM unit, the labels, the bucket bounds and when the metric is
//! recorded. Exposition names are derived from it by [`prometheus_name`], except where
//! Prometheus has a name of its own for the metric ([`MetricDef::prometheus_override`]: the
//! process metrics every Prometheus client library exports); [`MetricDef::prometheus_name`]
//! applies both. `docs/metrics.md` is generated from it (and a test keeps the two equal).
//!
//! ```
//! use tokenmeter_core::catalog;
//! let ttft = catalog::by_id("ttft").unwrap();
//! assert_eq!(ttft.otel_name, "gen_ai.server.time_to_first_token");
//! assert_eq!(
//!     catalog::prometheus_name(ttft.otel_name, ttft.kind, ttft.unit),
//!     "gen_ai_server_time_to_first_token_seconds"
//! );
//! ```

/// Builds a [`MetricDef`] from every field; each catalog file's `def!` fills in its defaults.
macro_rules! metric_def {
    (id: $id:expr, otel: $name:expr, own: $own:expr, vllm: $vllm:expr, prometheus: $prom:expr,
     kind: $kind:ident, unit: $unit:expr, labels: $labels:expr, buckets: $b:expr,
     vllm_buckets: $vb:expr, description: $desc:expr, recorded: $rec:expr) => {
        $crate::catalog::MetricDef {
            id: $id,
            otel_name: $name,
            own: $own,
            vllm_name: $vllm,
            prometheus_override: $prom,
            kind: $crate::catalog::MetricKind::$kind,
            unit: $unit,
            description: $desc,
            labels: $labels,
            buckets: $b,
            vllm_buckets: $vb,
            recorded: $rec,
        }
    };
}

pub mod core;
pub mod gpu;
pub mod http;
pub mod quality;

/// The instrument a metric is exported as.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// A monotonic sum (`_total` in Prometheus).
    Counter,
    /// A value that goes up and down, set or adjusted.
    Gauge,
    /// A distribution with fixed bucket bounds.
    Histogram,
}

impl MetricKind {
    /// The lowercase name used in docs and exposition `# TYPE` lines.
    pub fn as_str(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// One metric in the catalog.
#[derive(Debug, serde::Serialize)]
pub struct MetricDef {
    /// Stable identifier, e.g. `"ttft"`; used by bucket overrides and tests.
    pub id: &'static str,
    /// The OpenTelemetry name. When [`own`](Self::own) is true it is relative to the meter's
    /// prefix (`"requests.goodput"` becomes `"tokenmeter.requests.goodput"`).
    pub otel_name: &'static str,
    /// Whether the name lives under our configurable prefix (true) or is a semantic-convention
    /// name (false).
    pub own: bool,
    /// The exact exposed name under the vLLM naming preset, where vLLM defines the metric.
    pub vllm_name: Option<&'static str>,
    /// The exact Prometheus name under both presets, where Prometheus's own client libraries
    /// already export the metric under a conventional name (`process_open_fds`,
    /// `process_resident_memory_bytes`, ...), so that existing process dashboards work. Only
    /// for convention (`own: false`) names: it ignores the prefix. `None` elsewhere: the name
    /// is derived by [`prometheus_name`].
    pub prometheus_override: Option<&'static str>,
    /// Instrument kind.
    pub kind: MetricKind,
    /// UCUM unit: `"s"`, `"By"`, `"J"`, `"W"`, `"Cel"`, `"1"`, `"{token}"`, or `""` for none.
    pub unit: &'static str,
    /// One-line description (the exposition `# HELP`).
    pub description: &'static str,
    /// Metric-specific label keys in OpenTelemetry spelling (dots), besides the constant labels.
    pub labels: &'static [&'static str],
    /// Default bucket upper bounds (histograms only; every histogram has them).
    pub buckets: Option<&'static [f64]>,
    /// Bucket bounds under the vLLM preset, where vLLM's differ from ours.
    pub vllm_buckets: Option<&'static [f64]>,
    /// When the metric is recorded.
    pub recorded: &'static str,
}

impl MetricDef {
    /// The full OpenTelemetry name under a prefix (own metrics get `prefix.`; convention
    /// names are kept).
    ///
    /// ```
    /// let d = tokenmeter_core::catalog::by_id("goodput").unwrap();
    /// assert_eq!(d.full_otel_name("acme"), "acme.requests.goodput");
    /// ```
    pub fn full_otel_name(&self, prefix: &str) -> String {
        if self.own {
            format!("{prefix}.{}", self.otel_name)
        } else {
            self.otel_name.to_owned()
        }
    }

    /// The Prometheus exposition name under a prefix with the default (OpenTelemetry) naming:
    /// [`prometheus_override`](Self::prometheus_override) where set, else the
    /// [`prometheus_name`] mapping of [`full_otel_name`](Self::full_otel_name). Under the vLLM
    /// preset, [`vllm_name`](Self::vllm_name) replaces it where set.
    ///
    /// ```
    /// use tokenmeter_core::catalog::by_id;
    /// let fds = by_id("process.open_files").unwrap();
    /// assert_eq!(fds.otel_name, "process.unix.file_descriptor.count");
    /// assert_eq!(fds.prometheus_name("tokenmeter"), "process_open_fds");
    /// let goodput = by_id("goodput").unwrap();
    /// assert_eq!(goodput.prometheus_name("acme"), "acme_requests_goodput_total");
    /// ```
    pub fn prometheus_name(&self, prefix: &str) -> String {
        match self.prometheus_override {
            Some(name) => name.to_owned(),
            None => prometheus_name(&self.full_otel_name(prefix), self.kind, self.unit),
        }
    }
}

/// The `metrics` unit for a UCUM unit, where `metrics` has one (`{token}` and other
/// annotations are counts; `1` and the rest have none).
pub fn metrics_unit(ucum: &str) -> Option<metrics::Unit> {
    Some(match ucum {
        "s" => metrics::Unit::Seconds,
        "ms" => metrics::Unit::Milliseconds,
        "By" => metrics::Unit::Bytes,
        u if u.starts_with('{') && u.ends_with('}') => metrics::Unit::Count,
        _ => return None,
    })
}

/// Every metric, core first, then GPU, then quality, then HTTP.
pub fn all() -> impl Iterator<Item = &'static MetricDef> {
    core::DEFS
        .iter()
        .chain(gpu::DEFS)
        .chain(quality::DEFS)
        .chain(http::DEFS)
}

/// Looks a metric up by its [`MetricDef::id`].
pub fn by_id(id: &str) -> Option<&'static MetricDef> {
    all().find(|d| d.id == id)
}

/// The Prometheus unit word for a UCUM unit, per the OpenTelemetry → Prometheus mapping.
/// Annotations in braces (`{token}`) and the empty unit give no word; `"1"` gives none here
/// (gauges get `_ratio` in [`prometheus_name`]).
pub fn unit_word(unit: &str) -> Option<&'static str> {
    Some(match unit {
        "s" => "seconds",
        "ms" => "milliseconds",
        "us" => "microseconds",
        "ns" => "nanoseconds",
        "By" => "bytes",
        "J" => "joules",
        "W" => "watts",
        "Cel" => "celsius",
        "Hz" => "hertz",
        "%" => "percent",
        "By/s" => "bytes_per_second",
        _ => return None,
    })
}

/// Converts an OpenTelemetry metric name to its Prometheus exposition name, following the
/// specification's "OTLP Metric points to Prometheus" rules (the same result as Prometheus's own
/// OTLP receiver with the default `UnderscoreEscapingWithSuffixes`):
/// invalid characters become `_`, runs of `_` collapse, the unit word is appended unless the name
/// already ends with it, gauges of unit `1` get `_ratio`, counters get `_total`.
///
/// ```
/// use tokenmeter_core::catalog::{prometheus_name, MetricKind};
/// assert_eq!(prometheus_name("hw.gpu.utilization", MetricKind::Gauge, "1"), "hw_gpu_utilization_ratio");
/// assert_eq!(prometheus_name("hw.energy", MetricKind::Counter, "J"), "hw_energy_joules_total");
/// assert_eq!(prometheus_name("tokenmeter.output_tokens", MetricKind::Counter, "{token}"), "tokenmeter_output_tokens_total");
/// ```
pub fn prometheus_name(otel_name: &str, kind: MetricKind, unit: &str) -> String {
    let mut out = String::with_capacity(otel_name.len() + 16);
    for (i, c) in otel_name.chars().enumerate() {
        let ok = c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit());
        let c = if ok { c } else { '_' };
        if c == '_' && out.ends_with('_') {
            continue;
        }
        out.push(c);
    }
    let suffix = match (unit_word(unit), kind, unit) {
        (Some(word), _, _) => Some(word),
        (None, MetricKind::Gauge, "1") => Some("ratio"),
        _ => None,
    };
    if let Some(word) = suffix
        && !(out == word || out.ends_with(&format!("_{word}")))
    {
        out.push('_');
        out.push_str(word);
    }
    if kind == MetricKind::Counter && !out.ends_with("_total") {
        out.push_str("_total");
    }
    out
}

/// Sanitizes an OpenTelemetry attribute key into a Prometheus label name (`hw.id` → `hw_id`).
pub fn prometheus_label(otel_key: &str) -> String {
    otel_key
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Renders the catalog as the Markdown of `docs/metrics.md` (a test keeps that file equal to
/// this output; regenerate it with `TOKENMETER_BLESS=1 cargo test -p tokenmeter-core --test docs`).
pub fn render_markdown() -> String {
    use std::fmt::Write as _;
    let mut out = String::from(
        "# Metrics\n\n\
         Generated from the catalog in `crates/tokenmeter-core/src/catalog/` by\n\
         `catalog::render_markdown()`; a test fails when this file and the code disagree.\n\n\
         Names are shown for the default prefix `tokenmeter`. The Prometheus name is the\n\
         OpenTelemetry name under the specification's OTLP → Prometheus mapping (dots become\n\
         underscores, the unit word is appended, `_total` on counters, `_ratio` on gauges of unit\n\
         `1`), except for process metrics that Prometheus client libraries already export under\n\
         a conventional name (`process_open_fds`, `process_threads`, ...), which keep that name\n\
         under both presets so that existing process dashboards work. The vLLM column is the name\n\
         used instead under `Naming::Vllm`, where vLLM defines the metric; elsewhere the default\n\
         name is kept.\n\n\
         ## Labels every model-scoped metric carries\n\n\
         | naming | labels |\n|---|---|\n\
         | OpenTelemetry (default) | `gen_ai_operation_name`, `gen_ai_provider_name`, `gen_ai_request_model` |\n\
         | vLLM | `model_name`, `engine` (`\"0\"`) |\n\n\
         plus the meter's constant labels and the per-request labels it declared (each capped; see\n\
         `tokenmeter_labels_overflow_total`). Label keys below are in OpenTelemetry spelling; the\n\
         exposition uses underscores (`error.type` → `error_type`; `finish_reason` is\n\
         `finished_reason` under the vLLM preset).\n\n\
         ## Default buckets\n\n\
         Latency histograms use Prometheus's 1-2.5-5 ladder (inter-token latency adds finer\n\
         steps between 5 ms and 1 s), each bound at most 2.5x the one below, over the range\n\
         real servers see: TTFT 5 ms to 10 min, TPOT and inter-token latency 0.1 ms to 5 s,\n\
         request duration 5 ms to 1 h, queue, prefill and decode time 1 ms to 10 min. Within\n\
         that range PromQL's `histogram_quantile` lands in the bucket of the true quantile\n\
         (within 2.5x of it) and never saturates at the top bound. Where this departs from the\n\
         OpenTelemetry GenAI advisory bounds, the metric below shows them and why. The vLLM\n\
         preset keeps vLLM's bounds, so its dashboards read the same; bounds are overridable\n\
         per metric (`MeterBuilder::buckets`).\n",
    );
    let fmt_buckets = |b: Option<&[f64]>| match b {
        None => String::new(),
        Some(b) => b
            .iter()
            .map(|x| format!("{x}"))
            .collect::<Vec<_>>()
            .join(", "),
    };
    for (title, defs) in [
        ("Requests and tokens", core::DEFS),
        ("GPU and host", gpu::DEFS),
        ("Quality", quality::DEFS),
        ("HTTP server", http::DEFS),
    ] {
        let _ = write!(out, "\n## {title}\n\n");
        if defs.is_empty() {
            out.push_str("(none)\n");
            continue;
        }
        for d in defs {
            let otel = d.full_otel_name("tokenmeter");
            let prom = d.prometheus_name("tokenmeter");
            let _ = writeln!(out, "### `{prom}`\n");
            let _ = writeln!(out, "{}\n", d.description);
            let _ = writeln!(out, "| | |\n|---|---|");
            let _ = writeln!(out, "| OpenTelemetry name | `{otel}` |");
            if d.prometheus_override.is_some() {
                let mapped = prometheus_name(&otel, d.kind, d.unit);
                let _ = writeln!(
                    out,
                    "| Prometheus name | the client libraries' name under both presets (the OpenTelemetry mapping would give `{mapped}`) |"
                );
            }
            if let Some(v) = d.vllm_name {
                let _ = writeln!(out, "| vLLM preset name | `{v}` |");
            }
            let _ = writeln!(out, "| type | {} |", d.kind.as_str());
            let unit = if d.unit.is_empty() { "none" } else { d.unit };
            let _ = writeln!(out, "| unit | `{unit}` |");
            let labels = if d.labels.is_empty() {
                "constant labels only".to_owned()
            } else {
                d.labels
                    .iter()
                    .map(|l| format!("`{l}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let _ = writeln!(out, "| labels | {labels} |");
            if d.buckets.is_some() {
                let _ = writeln!(out, "| buckets | {} |", fmt_buckets(d.buckets));
            }
            if let Some((_, advisory, why)) = core::OTEL_ADVISORY.iter().find(|a| a.0 == d.id) {
                let _ = writeln!(
                    out,
                    "| OTel advisory buckets | {} (not the default: {why}) |",
                    fmt_buckets(Some(advisory))
                );
            }
            if d.vllm_buckets.is_some() {
                let _ = writeln!(
                    out,
                    "| vLLM preset buckets | {} |",
                    fmt_buckets(d.vllm_buckets)
                );
            }
            let _ = writeln!(out, "| recorded | {} |\n", d.recorded);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_ids_name_their_own_entries() {
        let typed = [
            (core::TTFT, "ttft"),
            (core::TPOT, "tpot"),
            (core::ITL, "itl"),
            (core::E2E, "e2e"),
            (core::QUEUE, "queue"),
            (core::PREFILL, "prefill"),
            (core::DECODE, "decode"),
            (core::REQUEST_INPUT_TOKENS, "request_input_tokens"),
            (core::REQUEST_OUTPUT_TOKENS, "request_output_tokens"),
            (core::INPUT_TOKENS, "input_tokens"),
            (core::OUTPUT_TOKENS, "output_tokens"),
            (core::REQUESTS, "requests"),
            (core::REQUESTS_RUNNING, "requests_running"),
            (core::REQUESTS_WAITING, "requests_waiting"),
            (core::GOODPUT, "goodput"),
            (core::NONFINITE_VALUES, "nonfinite_values"),
            (core::NONFINITE_REQUESTS, "nonfinite_requests"),
            (core::MODEL_LOAD, "model_load"),
            (core::START_TIME, "start_time"),
            (core::INFO, "info"),
            (core::LABEL_OVERFLOW, "label_overflow"),
            (core::MISUSE, "misuse"),
            (core::EXPORT_DROPPED, "export_dropped"),
            (core::PREEMPTIONS, "preemptions"),
            (core::REQUEST_PREEMPTIONS, "request_preemptions"),
            (core::PREFIX_CACHE_QUERIES, "prefix_cache_queries"),
            (core::PREFIX_CACHE_HITS, "prefix_cache_hits"),
            (core::SPEC_DRAFTS, "spec_drafts"),
            (core::SPEC_DRAFT_TOKENS, "spec_draft_tokens"),
            (core::SPEC_ACCEPTED_TOKENS, "spec_accepted_tokens"),
            (
                core::SPEC_ACCEPTED_PER_POSITION,
                "spec_accepted_per_position",
            ),
            (core::REQUEST_PARAMS_N, "request_params_n"),
            (core::REQUEST_PARAMS_MAX_TOKENS, "request_params_max_tokens"),
            (
                core::REQUEST_MAX_GENERATION_TOKENS,
                "request_max_generation_tokens",
            ),
            (core::INFERENCE, "inference"),
            (core::BATCH_SEQUENCES, "batch_sequences"),
            (core::ITERATION_TOKENS, "iteration_tokens"),
            (core::KV_CACHE_USAGE, "kv_cache_usage"),
            (core::KV_CACHE_BLOCKS_USED, "kv_cache_blocks_used"),
            (core::KV_CACHE_BLOCKS_TOTAL, "kv_cache_blocks_total"),
            (
                core::REQUESTS_WAITING_BY_REASON,
                "requests_waiting_by_reason",
            ),
            (core::ENGINE_LAST_STEP, "engine_last_step"),
            (core::REQUESTS_STALLED, "requests_stalled"),
        ];
        assert_eq!(typed.len(), core::DEFS.len());
        for (def, id) in typed {
            assert_eq!(def.id, id);
        }
        let gpu = [
            (gpu::UTILIZATION, "gpu.utilization"),
            (gpu::MEMORY_UTILIZATION, "gpu.memory.utilization"),
            (
                gpu::MEMORY_CONTROLLER_UTILIZATION,
                "gpu.memory_controller.utilization",
            ),
            (gpu::MEMORY_USAGE, "gpu.memory.usage"),
            (gpu::MEMORY_LIMIT, "gpu.memory.limit"),
            (gpu::MEMORY_FREE, "gpu.memory.free"),
            (gpu::MEMORY_PEAK, "gpu.memory.peak"),
            (gpu::GPU_PROCESS_MEMORY_USAGE, "gpu.process.memory.usage"),
            (gpu::POWER, "gpu.power"),
            (gpu::POWER_LIMIT, "gpu.power.limit"),
            (gpu::ENERGY, "gpu.energy"),
            (gpu::TEMPERATURE, "gpu.temperature"),
            (gpu::CLOCK_SM, "gpu.clock.sm"),
            (gpu::CLOCK_MEMORY, "gpu.clock.memory"),
            (gpu::THROTTLE, "gpu.throttle"),
            (gpu::ERRORS, "gpu.errors"),
            (gpu::PCIE_THROUGHPUT, "gpu.pcie.throughput"),
            (gpu::STATUS, "gpu.status"),
            (gpu::ENERGY_PER_OUTPUT_TOKEN, "gpu.energy_per_output_token"),
            (gpu::OUTPUT_TOKENS_PER_JOULE, "gpu.output_tokens_per_joule"),
            (gpu::ENERGY_ATTRIBUTED, "gpu.energy.attributed"),
            (
                gpu::COST_PER_1K_OUTPUT_TOKENS,
                "gpu.cost_per_1k_output_tokens",
            ),
            (gpu::PROCESS_CPU_UTILIZATION, "process.cpu.utilization"),
            (gpu::PROCESS_MEMORY_USAGE, "process.memory.usage"),
            (gpu::PROCESS_MEMORY_VIRTUAL, "process.memory.virtual"),
            (gpu::PROCESS_MEMORY_PEAK, "process.memory.peak"),
            (gpu::PROCESS_THREAD_COUNT, "process.thread.count"),
            (gpu::PROCESS_OPEN_FILES, "process.open_files"),
            (gpu::PROCESS_DISK_IO, "process.disk.io"),
            (gpu::SYSTEM_CPU_UTILIZATION, "system.cpu.utilization"),
            (gpu::SYSTEM_MEMORY_USAGE, "system.memory.usage"),
            (gpu::SYSTEM_MEMORY_LIMIT, "system.memory.limit"),
            (gpu::SYSTEM_DISK_IO, "system.disk.io"),
            (gpu::SYSTEM_NETWORK_IO, "system.network.io"),
            (gpu::REQUEST_ENERGY, "gpu.request.energy"),
            (gpu::REQUEST_COST, "gpu.request.cost"),
            (gpu::REQUESTS_ENERGY, "gpu.requests.energy"),
            (gpu::ENERGY_IDLE, "gpu.energy.idle"),
        ];
        assert_eq!(gpu.len(), gpu::DEFS.len());
        let quality = [
            (quality::PERPLEXITY, "quality_perplexity"),
            (quality::ENTROPY, "quality_entropy"),
            (quality::LOW_CONFIDENCE, "quality_low_confidence"),
            (quality::REQUESTS, "quality_requests"),
            (quality::REFUSALS, "quality_refusals"),
            (quality::REPETITION, "quality_repetition"),
            (quality::DEGENERATE, "quality_degenerate"),
            (quality::OUTPUT_CHARS, "quality_output_chars"),
            (quality::EMPTY, "quality_empty"),
            (quality::REPLACEMENT_CHARS, "quality_replacement_chars"),
            (quality::CONTROL_CHARS, "quality_control_chars"),
            (quality::DISALLOWED_TOKENS, "quality_disallowed_tokens"),
            (quality::KEYWORDS, "quality_keywords"),
            (quality::SCORE, "quality_score"),
            (quality::SAFETY_TRIGGERS, "quality_safety_triggers"),
            (quality::FEEDBACK, "quality_feedback"),
            (quality::DRIFT_PSI, "quality_drift_psi"),
            (quality::DRIFT_JSD, "quality_drift_jsd"),
            (quality::DRIFT_WINDOW, "quality_drift_window"),
            (quality::REVIEW_SAMPLED, "quality_review_sampled"),
            (quality::REVIEW_DROPPED, "quality_review_dropped"),
            (quality::REVIEW_WRITE_ERRORS, "quality_review_write_errors"),
            (quality::REVIEW_BYTES, "quality_review_bytes"),
            (quality::REVIEW_FEEDBACK, "quality_review_feedback"),
            (quality::GOLDEN_SCORE, "quality_golden_score"),
            (quality::GOLDEN_BASELINE, "quality_golden_baseline"),
            (quality::GOLDEN_PROMPTS, "quality_golden_prompts"),
            (quality::GOLDEN_PASSES, "quality_golden_passes"),
            (quality::GOLDEN_TTFT, "quality_golden_ttft"),
            (quality::GOLDEN_TPOT, "quality_golden_tpot"),
            (quality::GOLDEN_E2E, "quality_golden_e2e"),
            (quality::AB_REQUESTS, "quality_ab_requests"),
            (quality::AB_REFUSALS, "quality_ab_refusals"),
            (quality::AB_PERPLEXITY, "quality_ab_perplexity"),
            (quality::AB_GOLDEN_SCORE, "quality_ab_golden_score"),
        ];
        assert_eq!(quality.len(), quality::DEFS.len());
        let http = [
            (http::HTTP_DURATION, "http.duration"),
            (http::HTTP_ACTIVE_REQUESTS, "http.active_requests"),
            (http::HTTP_REQUEST_BODY_SIZE, "http.request.body.size"),
            (http::HTTP_RESPONSE_BODY_SIZE, "http.response.body.size"),
            (http::HTTP_REJECTED, "http.rejected"),
        ];
        assert_eq!(http.len(), http::DEFS.len());
        for (def, id) in gpu.into_iter().chain(quality).chain(http) {
            assert_eq!(def.id, id);
        }
    }

    #[test]
    fn names_match_the_reference_table() {
        // shared/reference/otel-genai.md §4.4, default settings.
        let cases = [
            (
                "gen_ai.server.request.duration",
                MetricKind::Histogram,
                "s",
                "gen_ai_server_request_duration_seconds",
            ),
            (
                "gen_ai.server.time_to_first_token",
                MetricKind::Histogram,
                "s",
                "gen_ai_server_time_to_first_token_seconds",
            ),
            (
                "gen_ai.client.inference.usage.input_tokens",
                MetricKind::Counter,
                "{token}",
                "gen_ai_client_inference_usage_input_tokens_total",
            ),
            (
                "gen_ai.client.inference.operation.output_tokens",
                MetricKind::Histogram,
                "{token}",
                "gen_ai_client_inference_operation_output_tokens",
            ),
            (
                "hw.gpu.utilization",
                MetricKind::Gauge,
                "1",
                "hw_gpu_utilization_ratio",
            ),
            (
                "hw.gpu.memory.usage",
                MetricKind::Gauge,
                "By",
                "hw_gpu_memory_usage_bytes",
            ),
            (
                "hw.gpu.io",
                MetricKind::Counter,
                "By",
                "hw_gpu_io_bytes_total",
            ),
            (
                "hw.energy",
                MetricKind::Counter,
                "J",
                "hw_energy_joules_total",
            ),
            ("hw.power", MetricKind::Gauge, "W", "hw_power_watts"),
            (
                "hw.temperature",
                MetricKind::Gauge,
                "Cel",
                "hw_temperature_celsius",
            ),
            (
                "http.server.request.duration",
                MetricKind::Histogram,
                "s",
                "http_server_request_duration_seconds",
            ),
            (
                "http.server.response.body.size",
                MetricKind::Histogram,
                "By",
                "http_server_response_body_size_bytes",
            ),
            (
                "http.server.active_requests",
                MetricKind::Gauge,
                "{request}",
                "http_server_active_requests",
            ),
            (
                "hw.errors",
                MetricKind::Counter,
                "{error}",
                "hw_errors_total",
            ),
        ];
        for (otel, kind, unit, want) in cases {
            assert_eq!(prometheus_name(otel, kind, unit), want, "{otel}");
        }
    }

    #[test]
    fn default_latency_buckets_cover_the_range_real_servers_see() {
        // Issue 12 §4: PromQL's p50/p99 within one bucket of the truth over these ranges (s).
        for (id, lo, hi) in [
            ("ttft", 0.005, 600.0),
            ("tpot", 0.0001, 5.0),
            ("itl", 0.0001, 5.0),
            ("e2e", 0.005, 3600.0),
            ("queue", 0.001, 600.0),
            ("prefill", 0.001, 600.0),
            ("decode", 0.001, 600.0),
        ] {
            let b = by_id(id).and_then(|d| d.buckets).expect(id);
            assert!(b[0] <= lo, "{id}: first bound {} above {lo}", b[0]);
            assert!(b[b.len() - 1] >= hi, "{id}: last bound below {hi}");
            for w in b.windows(2) {
                assert!(
                    w[1] / w[0] <= 2.5 + 1e-9,
                    "{id}: {} to {} is too wide",
                    w[0],
                    w[1]
                );
            }
        }
        // The guard accumulates ITL in a fixed array.
        assert!(core::ITL_BUCKETS.len() <= crate::MAX_ITL_BOUNDS);
        // Departures from the OTel advisory bounds are documented only where they depart.
        for (id, advisory, _) in core::OTEL_ADVISORY {
            assert_ne!(by_id(id).and_then(|d| d.buckets), Some(*advisory), "{id}");
        }
    }

    #[test]
    fn catalog_is_well_formed() {
        let mut ids = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for d in all() {
            assert!(ids.insert(d.id), "duplicate id {}", d.id);
            assert!(
                names.insert((d.own, d.otel_name)),
                "duplicate name {}",
                d.otel_name
            );
            assert!(
                !d.description.is_empty() && !d.recorded.is_empty(),
                "{} undocumented",
                d.id
            );
            if let Some(name) = d.prometheus_override {
                assert!(!d.own, "{}: an override ignores the prefix", d.id);
                assert!(names.insert((false, name)), "{name} is emitted twice");
            }
            // promtool reserves these suffixes for histograms and summaries.
            let prom = d.prometheus_name("tokenmeter");
            if d.kind != MetricKind::Histogram {
                for suffix in ["_count", "_sum", "_bucket"] {
                    assert!(!prom.ends_with(suffix), "{prom}: {suffix} is reserved");
                }
            }
            if d.kind == MetricKind::Histogram {
                let b = d
                    .buckets
                    .unwrap_or_else(|| panic!("{} has no buckets", d.id));
                assert!(
                    b.windows(2).all(|w| w[0] < w[1]),
                    "{} buckets not increasing",
                    d.id
                );
            } else {
                assert!(
                    d.buckets.is_none() && d.vllm_buckets.is_none(),
                    "{} is not a histogram",
                    d.id
                );
            }
        }
    }
}
