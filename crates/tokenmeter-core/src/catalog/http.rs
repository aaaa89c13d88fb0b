//! HTTP server metrics, recorded by `tokenmeter-export`'s tower layer (feature `http`).
//!
//! Names, units, attributes and duration buckets are the OpenTelemetry HTTP semantic
//! conventions' (`http.server.*`, stable); the one metric the conventions lack (requests
//! rejected before a generation request started) is ours. These series are server-scoped, not
//! model-scoped: they carry the meter's own constant labels but not the model, operation and
//! provider labels, since a request may fail before anyone knows which model it was for.
//! `http.route` is the matched route template (`/v1/chat/completions`, `/users/{id}`), never
//! the raw path; a request no route matched gets `unmatched`, and distinct templates past the
//! layer's cap get `other`.

use super::MetricDef;

/// OTel HTTP semconv advised bounds for `http.server.request.duration`.
pub const HTTP_DURATION_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// Our bounds for HTTP body sizes (the conventions advise none): 0, then powers of 4 from
/// 64 B to 64 MiB.
pub const BODY_SIZE_BUCKETS: &[f64] = &[
    0.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 4194304.0, 16777216.0,
    67108864.0,
];

/// Labels of the per-request HTTP metrics (`error.type` only on failed requests).
const REQ: &[&str] = &[
    "http.request.method",
    "url.scheme",
    "http.route",
    "http.response.status_code",
    "error.type",
];

const AT_END: &str = "When the response ends: its body's last frame was sent, or the body was dropped (the client went away), or the service failed without a response.";

macro_rules! def {
    ($id:literal, $name:literal, own: $own:literal, $kind:ident, $unit:literal, labels: $labels:expr,
     buckets: $b:expr, $desc:literal, recorded: $rec:expr) => {
        metric_def!(id: $id, otel: $name, own: $own, vllm: None, prometheus: None,
            kind: $kind, unit: $unit, labels: $labels, buckets: $b, vllm_buckets: None,
            description: $desc, recorded: $rec)
    };
}

/// Every HTTP server metric.
pub static DEFS: &[MetricDef] = &[
    def!("http.duration", "http.server.request.duration", own: false, Histogram, "s", labels: REQ,
        buckets: Some(HTTP_DURATION_BUCKETS),
        "Duration of HTTP server requests, from the layer receiving the request to the end of the response body (so a streamed response counts until its last chunk). 4xx and 5xx are told apart by `http.response.status_code`; `error.type` is the status code for 5xx, and `_OTHER` when the service failed without a response.",
        recorded: AT_END),
    def!("http.active_requests", "http.server.active_requests", own: false, Gauge, "{request}",
        labels: &["http.request.method", "url.scheme"], buckets: None,
        "HTTP server requests in flight: received and not yet answered to the end of the response body.",
        recorded: "Incremented when the layer receives a request, decremented when its response ends."),
    def!("http.request.body.size", "http.server.request.body.size", own: false, Histogram, "By", labels: REQ,
        buckets: Some(BODY_SIZE_BUCKETS),
        "Size of HTTP request bodies, from the body's exact size hint (its Content-Length, or 0 for a request without a body); a chunked request body of unknown length is not recorded.",
        recorded: AT_END),
    def!("http.response.body.size", "http.server.response.body.size", own: false, Histogram, "By", labels: REQ,
        buckets: Some(BODY_SIZE_BUCKETS),
        "Size of HTTP response bodies: the bytes of the data frames the body yielded (a body dropped early counts what was sent).",
        recorded: AT_END),
    def!("http.rejected", "http.server.rejected", own: true, Counter, "{request}",
        labels: &["http.request.method", "http.route", "http.response.status_code"], buckets: None,
        "HTTP requests answered with a status of 400 or more whose handler never started a generation request (validation, authentication, overload rejections): counted here and in the HTTP metrics, in no gen_ai metric.",
        recorded: AT_END),
];

/// The `http.duration` metric.
pub static HTTP_DURATION: &MetricDef = &DEFS[0];
/// The `http.active_requests` metric.
pub static HTTP_ACTIVE_REQUESTS: &MetricDef = &DEFS[1];
/// The `http.request.body.size` metric.
pub static HTTP_REQUEST_BODY_SIZE: &MetricDef = &DEFS[2];
/// The `http.response.body.size` metric.
pub static HTTP_RESPONSE_BODY_SIZE: &MetricDef = &DEFS[3];
/// The `http.rejected` metric.
pub static HTTP_REJECTED: &MetricDef = &DEFS[4];
