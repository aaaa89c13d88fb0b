//! Core request metrics: latency, tokens, requests, queue, goodput, model load, self-metrics.

use super::MetricDef;

// Default latency bounds follow Prometheus's 1-2.5-5 ladder (its client libraries' default
// buckets; ITL adds finer steps), at most 2.5x apart, from the smallest value a real server
// produces to the largest it waits for: PromQL's `histogram_quantile` (linear inside the
// bucket) then lands in the true quantile's bucket, within 2.5x, and never saturates at the
// top bound inside that range. Where this departs from the OTel advisory bounds (kept below for
// reference and the docs), `OTEL_ADVISORY` says so, and docs/metrics.md shows both.

/// Our TTFT bounds: 5 ms (a cached prompt on a GPU) to 10 min (a long queue).
pub const TTFT_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 600.0,
];
/// Our TPOT bounds: 0.1 ms (speculative or batched multi-token steps) to 5 s (CPU inference
/// of a large model).
pub const TPOT_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];
/// Our inter-token latency bounds: 0.1 ms to 5 s like TPOT's, but finer (at most 1.5x apart)
/// between 5 ms and 1 s, where GPU decode steps live: the guard flushes each bucket's mean, so
/// these bounds are also the resolution of `meter.snapshot()`'s ITL percentiles. At most
/// `MAX_ITL_BOUNDS` (24), the guard's fixed accumulator size.
pub const ITL_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04,
    0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0,
];
/// Our end-to-end request duration bounds: 5 ms to 1 h.
pub const E2E_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 600.0,
    1500.0, 3600.0,
];
/// Our bounds for request phases (queue, prefill, decode): 1 ms to 10 min.
pub const PHASE_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0,
    100.0, 250.0, 600.0,
];

/// OTel GenAI advised bounds for `gen_ai.server.time_to_first_token` (not our default: they
/// stop at 10 s, so a slower TTFT saturates PromQL's quantiles there).
pub const GENAI_TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// OTel GenAI advised bounds for `gen_ai.server.time_per_output_token` (not our default: they
/// start at 10 ms, below which GPU decode steps live).
pub const GENAI_TPOT_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
];
/// OTel GenAI advised bounds for `gen_ai.server.request.duration` and other GenAI durations
/// (not our default for request durations: they stop at 81.92 s). The Prometheus exporter's
/// fallback for histograms outside the catalog.
pub const GENAI_DURATION_BUCKETS: &[f64] = &[
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
];
/// OTel GenAI advised bounds for token-count histograms.
pub const GENAI_TOKEN_BUCKETS: &[f64] = &[
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0,
    16777216.0, 67108864.0,
];

/// The OTel advisory bounds of the metrics whose default bounds depart from them, by metric
/// id, with the reason (shown in docs/metrics.md).
pub const OTEL_ADVISORY: &[(&str, &[f64], &str)] = &[
    (
        "ttft",
        GENAI_TTFT_BUCKETS,
        "they stop at 10 s, so PromQL quantiles of slower first tokens (long queues, long prompts) saturate at 10 s",
    ),
    (
        "tpot",
        GENAI_TPOT_BUCKETS,
        "they start at 10 ms, so every faster decode (most GPU serving) falls in the first bucket and reads as 5 ms at p50",
    ),
    (
        "e2e",
        GENAI_DURATION_BUCKETS,
        "they stop at 81.92 s, so PromQL quantiles of longer answers saturate there",
    ),
];

/// Bounds for model load (cold start) durations.
pub const LOAD_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
];

/// vLLM's TTFT bounds.
pub const VLLM_TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// vLLM's ITL / TPOT bounds.
pub const VLLM_ITL_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// vLLM's request-latency bounds (e2e, queue, prefill, decode).
pub const VLLM_REQUEST_LATENCY_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];
/// vLLM's 1-2-5 token-count bounds (vLLM caps them at `max_model_len`; we stop at 100k).
pub const VLLM_TOKEN_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0, 20000.0,
    50000.0, 100000.0,
];

/// vLLM's bounds for `iteration_tokens_total` (tokens scheduled in one engine step); ours too.
pub const ITERATION_TOKEN_BUCKETS: &[f64] = &[
    1.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0, 8192.0, 16384.0,
];
/// vLLM's bounds for `request_params_n` (parallel sequences per request); ours too.
pub const N_BUCKETS: &[f64] = &[1.0, 2.0, 5.0, 10.0, 20.0];
/// vLLM's bounds for `request_num_preemptions` (preemptions per finished request); ours too.
pub const PREEMPTION_BUCKETS: &[f64] = &[1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 20.0];

const FIN: &[&str] = &["finish_reason", "error.type"];

macro_rules! def {
    ($id:literal, $name:literal, own: $own:literal, vllm: $vllm:expr, $kind:ident, $unit:literal,
     labels: $labels:expr, buckets: $b:expr, vllm_buckets: $vb:expr, $desc:literal, recorded: $rec:literal) => {
        metric_def!(id: $id, otel: $name, own: $own, vllm: $vllm, prometheus: None,
            kind: $kind, unit: $unit, labels: $labels, buckets: $b, vllm_buckets: $vb,
            description: $desc, recorded: $rec)
    };
}

/// Every core metric.
pub static DEFS: &[MetricDef] = &[
    def!("ttft", "gen_ai.server.time_to_first_token", own: false, vllm: Some("vllm:time_to_first_token_seconds"),
        Histogram, "s", labels: &[], buckets: Some(TTFT_BUCKETS), vllm_buckets: Some(VLLM_TTFT_BUCKETS),
        "Time from request arrival to its first output token (includes queueing and prefill).",
        recorded: "Once per request, when its first output token is recorded."),
    def!("tpot", "gen_ai.server.time_per_output_token", own: false, vllm: Some("vllm:request_time_per_output_token_seconds"),
        Histogram, "s", labels: &[], buckets: Some(TPOT_BUCKETS), vllm_buckets: Some(VLLM_ITL_BUCKETS),
        "Mean time per output token after the first: (last token - first token) / (n - 1).",
        recorded: "Once per request at finish, fail or drop, when it produced at least 2 tokens."),
    def!("itl", "inter_token_latency", own: true, vllm: Some("vllm:inter_token_latency_seconds"),
        Histogram, "s", labels: &[], buckets: Some(ITL_BUCKETS), vllm_buckets: Some(VLLM_ITL_BUCKETS),
        "Gap between consecutive output tokens; a k-token step after gap g counts k gaps of g/k.",
        recorded: "Accumulated per token in the guard; flushed at the end of the request and about once a second during it."),
    def!("e2e", "gen_ai.server.request.duration", own: false, vllm: Some("vllm:e2e_request_latency_seconds"),
        Histogram, "s", labels: &["error.type"], buckets: Some(E2E_BUCKETS), vllm_buckets: Some(VLLM_REQUEST_LATENCY_BUCKETS),
        "Time from request arrival to its end (finish, failure or cancellation).",
        recorded: "Once per request at finish, fail or drop; error.type is set on failures."),
    def!("queue", "request.queue_time", own: true, vllm: Some("vllm:request_queue_time_seconds"),
        Histogram, "s", labels: &[], buckets: Some(PHASE_BUCKETS), vllm_buckets: Some(VLLM_REQUEST_LATENCY_BUCKETS),
        "Time from arrival to scheduled() (waiting for the engine).",
        recorded: "Once per request, when scheduled() is called."),
    def!("prefill", "request.prefill_time", own: true, vllm: Some("vllm:request_prefill_time_seconds"),
        Histogram, "s", labels: &[], buckets: Some(PHASE_BUCKETS), vllm_buckets: Some(VLLM_REQUEST_LATENCY_BUCKETS),
        "Time from scheduled() to the first output token.",
        recorded: "Once per request at its first token, when scheduled() was called."),
    def!("decode", "request.decode_time", own: true, vllm: Some("vllm:request_decode_time_seconds"),
        Histogram, "s", labels: &[], buckets: Some(PHASE_BUCKETS), vllm_buckets: Some(VLLM_REQUEST_LATENCY_BUCKETS),
        "Time from the first to the last output token.",
        recorded: "Once per request at its end, when it produced at least 1 token."),
    def!("request_input_tokens", "request.input_tokens", own: true, vllm: Some("vllm:request_prompt_tokens"),
        Histogram, "{token}", labels: &[], buckets: Some(GENAI_TOKEN_BUCKETS), vllm_buckets: Some(VLLM_TOKEN_BUCKETS),
        "Prompt (input) tokens per request.",
        recorded: "Once per request at its end."),
    def!("request_output_tokens", "request.output_tokens", own: true, vllm: Some("vllm:request_generation_tokens"),
        Histogram, "{token}", labels: &[], buckets: Some(GENAI_TOKEN_BUCKETS), vllm_buckets: Some(VLLM_TOKEN_BUCKETS),
        "Output tokens per request.",
        recorded: "Once per request at its end."),
    def!("input_tokens", "input_tokens", own: true, vllm: Some("vllm:prompt_tokens_total"),
        Counter, "{token}", labels: &[], buckets: None, vllm_buckets: None,
        "Prompt (input) tokens of all requests.",
        recorded: "At request start (the prompt is known then)."),
    def!("output_tokens", "output_tokens", own: true, vllm: Some("vllm:generation_tokens_total"),
        Counter, "{token}", labels: &[], buckets: None, vllm_buckets: None,
        "Output tokens of all requests.",
        recorded: "Flushed from the guard at the end of each request and about once a second during it."),
    def!("requests", "requests", own: true, vllm: Some("vllm:request_success_total"),
        Counter, "{request}", labels: FIN, buckets: None, vllm_buckets: None,
        "Ended requests by finish reason (stop, length, content_filter, tool_calls, cancelled, error); error.type on errors.",
        recorded: "Once per request at finish, fail or drop (drop = cancelled)."),
    def!("requests_running", "requests.running", own: true, vllm: Some("vllm:num_requests_running"),
        Gauge, "{request}", labels: &[], buckets: None, vllm_buckets: None,
        "Requests scheduled and not yet ended.",
        recorded: "Adjusted at scheduled() (or first token) and at the end."),
    def!("requests_waiting", "requests.waiting", own: true, vllm: Some("vllm:num_requests_waiting"),
        Gauge, "{request}", labels: &[], buckets: None, vllm_buckets: None,
        "Requests started and not yet scheduled.",
        recorded: "Adjusted at start and at scheduled() (or first token, or the end)."),
    def!("goodput", "requests.goodput", own: true, vllm: None,
        Counter, "{request}", labels: &[], buckets: None, vllm_buckets: None,
        "Successful requests (not cancelled, not failed) whose TTFT and TPOT both met the SLO.",
        recorded: "Once per successful request at finish."),
    def!("nonfinite_values", "logits.nonfinite", own: true, vllm: None,
        Counter, "{value}", labels: &["kind"], buckets: None, vllm_buckets: None,
        "Faults seen in scanned logits (kind = nan, pos_inf, neg_inf): NaN and +Inf anywhere, -Inf in raw logits only (the -Inf of logits scanned as masked, after samplers, grammars or logit bias, is the mask and is not counted).",
        recorded: "Once per request at its end, from the guard's counts."),
    def!("nonfinite_requests", "requests.nonfinite", own: true, vllm: None,
        Counter, "{request}", labels: &[], buckets: None, vllm_buckets: None,
        "Requests whose scanned logits held a fault: a NaN or a +Inf, or a -Inf in raw logits.",
        recorded: "Once per request at its end."),
    def!("model_load", "model.load.duration", own: true, vllm: None,
        Histogram, "s", labels: &[], buckets: Some(LOAD_BUCKETS), vllm_buckets: None,
        "Model load (cold start) duration.",
        recorded: "When a load guard from Meter::model_load() completes, or Meter::record_model_load() is called."),
    def!("start_time", "process.start_time", own: true, vllm: None,
        Gauge, "s", labels: &[], buckets: None, vllm_buckets: None,
        "Unix time at which the meter was built; uptime = time() - this.",
        recorded: "Once, when the meter is built."),
    def!("info", "build.info", own: true, vllm: None,
        Gauge, "", labels: &["model.version", "version"], buckets: None, vllm_buckets: None,
        "Always 1; carries the model, its version and the tokenmeter version as labels.",
        recorded: "Once, when the meter is built."),
    def!("label_overflow", "labels.overflow", own: true, vllm: None,
        Counter, "{value}", labels: &["label"], buckets: None, vllm_buckets: None,
        "Label values replaced by `other` because the label's cardinality cap was reached: per-request labels (label = the key), the quality monitor's capped names, the A/B monitor's variants (label = ab_variant).",
        recorded: "When a value goes to `other`: at request start for request labels, when recorded for the quality and A/B monitors."),
    def!("misuse", "misuse", own: true, vllm: None,
        Counter, "{event}", labels: &["kind"], buckets: None, vllm_buckets: None,
        "Ignored API misuse: kind = finish_twice, token_after_end, clock_backwards, scheduled_after_end, enqueued_late, non_finite_after_end, prompt_tokens_twice, prompt_tokens_after_end, unknown_label, tokens_too_many, redactor_panic (a text redactor panicked; that text was dropped), preempted_not_running, token_while_preempted (re-admitted), prefix_hits_above_queries, prefix_cache_after_end, spec_accepted_above_proposed, spec_decode_undeclared, spec_position_undeclared, spec_decode_after_end, step_repeated (an engine step at the same instant as the last, ignored), kv_usage_out_of_range (outside 0-1 or NaN, not recorded), kv_blocks_above_total.",
        recorded: "When the misuse happens."),
    def!("export_dropped", "export.dropped", own: true, vllm: None,
        Counter, "{item}", labels: &["signal", "reason"], buckets: None, vllm_buckets: None,
        "Telemetry the exporters dropped instead of blocking (signal = metrics, traces, logs; reason = queue_full, export_failed).",
        recorded: "By the export threads, when a batch or span is dropped."),
    // Engine state (issue 13): appended so the indexes above stay.
    def!("preemptions", "requests.preemptions", own: true, vllm: Some("vllm:num_preemptions_total"),
        Counter, "{preemption}", labels: &[], buckets: None, vllm_buckets: None,
        "Preemptions: a running request sent back to the waiting queue (e.g. its KV blocks were reclaimed).",
        recorded: "At each RequestGuard::preempted() of a running request."),
    def!("request_preemptions", "request.preemptions", own: true, vllm: Some("vllm:request_num_preemptions"),
        Histogram, "{preemption}", labels: &[], buckets: Some(PREEMPTION_BUCKETS), vllm_buckets: Some(PREEMPTION_BUCKETS),
        "Preemptions per ended request (0 lands in the first bucket).",
        recorded: "Once per request at its end."),
    def!("prefix_cache_queries", "prefix_cache.queries", own: true, vllm: Some("vllm:prefix_cache_queries_total"),
        Counter, "{token}", labels: &[], buckets: None, vllm_buckets: None,
        "Prompt tokens looked up in the prefix cache; hit rate = rate(hits) / rate(queries).",
        recorded: "At each RequestGuard::prefix_cache() call (at admission)."),
    def!("prefix_cache_hits", "prefix_cache.hits", own: true, vllm: Some("vllm:prefix_cache_hits_total"),
        Counter, "{token}", labels: &[], buckets: None, vllm_buckets: None,
        "Prompt tokens looked up in the prefix cache and found there (their KV was reused, not computed).",
        recorded: "At each RequestGuard::prefix_cache() call (at admission)."),
    def!("spec_drafts", "spec_decode.drafts", own: true, vllm: Some("vllm:spec_decode_num_drafts_total"),
        Counter, "{draft}", labels: &[], buckets: None, vllm_buckets: None,
        "Speculative-decoding drafts: one per request per step that proposed draft tokens.",
        recorded: "At each RequestGuard::spec_decode() call with proposed > 0."),
    def!("spec_draft_tokens", "spec_decode.draft_tokens", own: true, vllm: Some("vllm:spec_decode_num_draft_tokens_total"),
        Counter, "{token}", labels: &[], buckets: None, vllm_buckets: None,
        "Draft tokens proposed; acceptance rate = rate(accepted_tokens) / rate(draft_tokens).",
        recorded: "At each RequestGuard::spec_decode() call."),
    def!("spec_accepted_tokens", "spec_decode.accepted_tokens", own: true, vllm: Some("vllm:spec_decode_num_accepted_tokens_total"),
        Counter, "{token}", labels: &[], buckets: None, vllm_buckets: None,
        "Draft tokens accepted; mean acceptance length = 1 + rate(accepted_tokens) / rate(drafts).",
        recorded: "At each RequestGuard::spec_decode() call."),
    def!("spec_accepted_per_position", "spec_decode.accepted_tokens_per_position", own: true, vllm: Some("vllm:spec_decode_num_accepted_tokens_per_pos_total"),
        Counter, "{token}", labels: &["position"], buckets: None, vllm_buckets: None,
        "Drafts whose token at position (0-based) was accepted; per-position acceptance = this / drafts.",
        recorded: "At each RequestGuard::spec_decode() call, positions 0 .. accepted - 1, for positions below MeterBuilder::speculative_tokens."),
    def!("request_params_n", "request.params.n", own: true, vllm: Some("vllm:request_params_n"),
        Histogram, "{sequence}", labels: &[], buckets: Some(N_BUCKETS), vllm_buckets: Some(N_BUCKETS),
        "The request's n (sequences generated in parallel for it).",
        recorded: "Once per request at its end (n = 1 unless RequestBuilder::n said otherwise)."),
    def!("request_params_max_tokens", "request.params.max_tokens", own: true, vllm: Some("vllm:request_params_max_tokens"),
        Histogram, "{token}", labels: &[], buckets: Some(GENAI_TOKEN_BUCKETS), vllm_buckets: Some(VLLM_TOKEN_BUCKETS),
        "The request's max_tokens (output budget).",
        recorded: "Once per request at its end, when RequestBuilder::max_tokens was given."),
    def!("request_max_generation_tokens", "request.max_generation_tokens", own: true, vllm: Some("vllm:request_max_num_generation_tokens"),
        Histogram, "{token}", labels: &[], buckets: Some(GENAI_TOKEN_BUCKETS), vllm_buckets: Some(VLLM_TOKEN_BUCKETS),
        "Output tokens of the request's longest sequence (its output tokens when n = 1).",
        recorded: "Once per request at its end."),
    def!("inference", "request.inference_time", own: true, vllm: Some("vllm:request_inference_time_seconds"),
        Histogram, "s", labels: &[], buckets: Some(PHASE_BUCKETS), vllm_buckets: Some(VLLM_REQUEST_LATENCY_BUCKETS),
        "Time from the first scheduled() to the last output token (prefill + decode, preemptions included).",
        recorded: "Once per request at its end, when it was scheduled and produced at least 1 token."),
    def!("batch_sequences", "engine.batch.sequences", own: true, vllm: None,
        Gauge, "{sequence}", labels: &[], buckets: None, vllm_buckets: None,
        "Sequences in the engine's last step (its batch size).",
        recorded: "At each Meter::engine_step()."),
    def!("iteration_tokens", "engine.iteration.tokens", own: true, vllm: Some("vllm:iteration_tokens_total"),
        Histogram, "{token}", labels: &[], buckets: Some(ITERATION_TOKEN_BUCKETS), vllm_buckets: Some(ITERATION_TOKEN_BUCKETS),
        "Tokens scheduled in one engine step (prompt tokens prefilled plus tokens decoded).",
        recorded: "At each Meter::engine_step()."),
    def!("kv_cache_usage", "kv_cache.usage", own: true, vllm: Some("vllm:kv_cache_usage_perc"),
        Gauge, "1", labels: &[], buckets: None, vllm_buckets: None,
        "Fraction (0-1) of the engine's KV cache in use (1 = full).",
        recorded: "At each Meter::engine_step() that reports it."),
    def!("kv_cache_blocks_used", "kv_cache.blocks.used", own: true, vllm: None,
        Gauge, "{block}", labels: &[], buckets: None, vllm_buckets: None,
        "KV cache blocks in use, where the engine has blocks.",
        recorded: "At each Meter::engine_step() that reports blocks."),
    def!("kv_cache_blocks_total", "kv_cache.blocks.total", own: true, vllm: None,
        Gauge, "{block}", labels: &[], buckets: None, vllm_buckets: None,
        "KV cache blocks the engine has, where it has blocks.",
        recorded: "At each Meter::engine_step() that reports blocks."),
    def!("requests_waiting_by_reason", "requests.waiting_by_reason", own: true, vllm: Some("vllm:num_requests_waiting_by_reason"),
        Gauge, "{request}", labels: &["reason"], buckets: None, vllm_buckets: None,
        "Waiting requests by reason: capacity (no room in the batch or the KV cache) or deferred (blocked on something else, e.g. an adapter or a KV transfer).",
        recorded: "At each Meter::engine_step() that reports them."),
    def!("engine_last_step", "engine.last_step", own: true, vllm: None,
        Gauge, "s", labels: &[], buckets: None, vllm_buckets: None,
        "Unix time of the engine's last step; time since it = time() - this (a frozen engine stops moving it).",
        recorded: "At each Meter::engine_step()."),
    def!("requests_stalled", "requests.stalled", own: true, vllm: None,
        Gauge, "{request}", labels: &[], buckets: None, vllm_buckets: None,
        "Running requests with no output token (or, before the first, no progress since scheduled()) for longer than the meter's stall threshold.",
        recorded: "At Meter::health(), and at Meter::engine_step() at most once per second."),
];
// Typed ids: a lookup by one of these cannot name a metric that does not exist. The test in
// catalog/mod.rs checks that each names the entry of its own id.
/// The `ttft` metric.
pub static TTFT: &MetricDef = &DEFS[0];
/// The `tpot` metric.
pub static TPOT: &MetricDef = &DEFS[1];
/// The `itl` metric.
pub static ITL: &MetricDef = &DEFS[2];
/// The `e2e` metric.
pub static E2E: &MetricDef = &DEFS[3];
/// The `queue` metric.
pub static QUEUE: &MetricDef = &DEFS[4];
/// The `prefill` metric.
pub static PREFILL: &MetricDef = &DEFS[5];
/// The `decode` metric.
pub static DECODE: &MetricDef = &DEFS[6];
/// The `request_input_tokens` metric.
pub static REQUEST_INPUT_TOKENS: &MetricDef = &DEFS[7];
/// The `request_output_tokens` metric.
pub static REQUEST_OUTPUT_TOKENS: &MetricDef = &DEFS[8];
/// The `input_tokens` metric.
pub static INPUT_TOKENS: &MetricDef = &DEFS[9];
/// The `output_tokens` metric.
pub static OUTPUT_TOKENS: &MetricDef = &DEFS[10];
/// The `requests` metric.
pub static REQUESTS: &MetricDef = &DEFS[11];
/// The `requests_running` metric.
pub static REQUESTS_RUNNING: &MetricDef = &DEFS[12];
/// The `requests_waiting` metric.
pub static REQUESTS_WAITING: &MetricDef = &DEFS[13];
/// The `goodput` metric.
pub static GOODPUT: &MetricDef = &DEFS[14];
/// The `nonfinite_values` metric.
pub static NONFINITE_VALUES: &MetricDef = &DEFS[15];
/// The `nonfinite_requests` metric.
pub static NONFINITE_REQUESTS: &MetricDef = &DEFS[16];
/// The `model_load` metric.
pub static MODEL_LOAD: &MetricDef = &DEFS[17];
/// The `start_time` metric.
pub static START_TIME: &MetricDef = &DEFS[18];
/// The `info` metric.
pub static INFO: &MetricDef = &DEFS[19];
/// The `label_overflow` metric.
pub static LABEL_OVERFLOW: &MetricDef = &DEFS[20];
/// The `misuse` metric.
pub static MISUSE: &MetricDef = &DEFS[21];
/// The `export_dropped` metric.
pub static EXPORT_DROPPED: &MetricDef = &DEFS[22];
/// The `preemptions` metric.
pub static PREEMPTIONS: &MetricDef = &DEFS[23];
/// The `request_preemptions` metric.
pub static REQUEST_PREEMPTIONS: &MetricDef = &DEFS[24];
/// The `prefix_cache_queries` metric.
pub static PREFIX_CACHE_QUERIES: &MetricDef = &DEFS[25];
/// The `prefix_cache_hits` metric.
pub static PREFIX_CACHE_HITS: &MetricDef = &DEFS[26];
/// The `spec_drafts` metric.
pub static SPEC_DRAFTS: &MetricDef = &DEFS[27];
/// The `spec_draft_tokens` metric.
pub static SPEC_DRAFT_TOKENS: &MetricDef = &DEFS[28];
/// The `spec_accepted_tokens` metric.
pub static SPEC_ACCEPTED_TOKENS: &MetricDef = &DEFS[29];
/// The `spec_accepted_per_position` metric.
pub static SPEC_ACCEPTED_PER_POSITION: &MetricDef = &DEFS[30];
/// The `request_params_n` metric.
pub static REQUEST_PARAMS_N: &MetricDef = &DEFS[31];
/// The `request_params_max_tokens` metric.
pub static REQUEST_PARAMS_MAX_TOKENS: &MetricDef = &DEFS[32];
/// The `request_max_generation_tokens` metric.
pub static REQUEST_MAX_GENERATION_TOKENS: &MetricDef = &DEFS[33];
/// The `inference` metric.
pub static INFERENCE: &MetricDef = &DEFS[34];
/// The `batch_sequences` metric.
pub static BATCH_SEQUENCES: &MetricDef = &DEFS[35];
/// The `iteration_tokens` metric.
pub static ITERATION_TOKENS: &MetricDef = &DEFS[36];
/// The `kv_cache_usage` metric.
pub static KV_CACHE_USAGE: &MetricDef = &DEFS[37];
/// The `kv_cache_blocks_used` metric.
pub static KV_CACHE_BLOCKS_USED: &MetricDef = &DEFS[38];
/// The `kv_cache_blocks_total` metric.
pub static KV_CACHE_BLOCKS_TOTAL: &MetricDef = &DEFS[39];
/// The `requests_waiting_by_reason` metric.
pub static REQUESTS_WAITING_BY_REASON: &MetricDef = &DEFS[40];
/// The `engine_last_step` metric.
pub static ENGINE_LAST_STEP: &MetricDef = &DEFS[41];
/// The `requests_stalled` metric.
pub static REQUESTS_STALLED: &MetricDef = &DEFS[42];
