//! The tower layer on a real axum router, driven with `oneshot`: exact HTTP metrics by route and
//! status, the in-flight gauge back to zero, exact body sizes, rejections before any guard kept
//! out of the gen_ai metrics, and the guard started at the HTTP arrival.
#![cfg(feature = "http")]
#![allow(missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::MatchedPath;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use axum::{Extension, Router};
use http_body_util::BodyExt;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokenmeter_core::clock::{Clock, Mock};
use tokenmeter_core::{ErrorKind, Finish, Meter, RequestSummary};
use tokenmeter_export::http::{Arrival, HttpMetricsLayer, UNMATCHED_ROUTE};
use tower::ServiceExt;

const DURATION: &str = "http_server_request_duration_seconds";
const REQ_SIZE: &str = "http_server_request_body_size_bytes";
const RESP_SIZE: &str = "http_server_response_body_size_bytes";
const ACTIVE: &str = "http_server_active_requests";
const REJECTED: &str = "tokenmeter_http_server_rejected_total";

/// What the recorder saw, (name, sorted `k=v` labels) -> value, accumulated over reads: the
/// debugging recorder's snapshot drains counters, gauges and histograms, so each read adds what
/// came since the last (gauges are only incremented and decremented here, so the sum of
/// drained values is the gauge).
struct Metrics(Vec<(String, Vec<String>, DebugValue)>);

impl Metrics {
    fn new() -> Self {
        Metrics(Vec::new())
    }
    fn read(&mut self, s: &Snapshotter) -> &Self {
        for (ck, _, _, v) in s.snapshot().into_vec() {
            let key = ck.key();
            let mut l: Vec<String> = key
                .labels()
                .map(|l| format!("{}={}", l.key(), l.value()))
                .collect();
            l.sort();
            let name = key.name().to_owned();
            match self.0.iter_mut().find(|(n, ls, _)| *n == name && *ls == l) {
                None => self.0.push((name, l, v)),
                Some((_, _, old)) => match (old, v) {
                    (DebugValue::Counter(a), DebugValue::Counter(b)) => *a += b,
                    (DebugValue::Gauge(a), DebugValue::Gauge(b)) => {
                        *a = (a.into_inner() + b.into_inner()).into()
                    }
                    (DebugValue::Histogram(a), DebugValue::Histogram(b)) => a.extend(b),
                    (old, v) => *old = v,
                },
            }
        }
        self
    }
    fn matching<'a>(
        &'a self,
        name: &'a str,
        with: &'a [&str],
    ) -> impl Iterator<Item = &'a DebugValue> {
        self.0
            .iter()
            .filter(move |(n, l, _)| n == name && with.iter().all(|w| l.iter().any(|x| x == w)))
            .map(|(_, _, v)| v)
    }
    fn hist(&self, name: &str, with: &[&str]) -> Vec<f64> {
        let mut out: Vec<f64> = self
            .matching(name, with)
            .flat_map(|v| match v {
                DebugValue::Histogram(h) => h.iter().map(|x| x.into_inner()).collect(),
                _ => Vec::new(),
            })
            .collect();
        out.sort_by(f64::total_cmp);
        out
    }
    fn counter(&self, name: &str, with: &[&str]) -> u64 {
        self.matching(name, with)
            .map(|v| match v {
                DebugValue::Counter(c) => *c,
                _ => 0,
            })
            .sum()
    }
    fn gauge(&self, name: &str, with: &[&str]) -> Vec<f64> {
        self.matching(name, with)
            .filter_map(|v| match v {
                DebugValue::Gauge(g) => Some(g.into_inner()),
                _ => None,
            })
            .collect()
    }
    /// Every label set of `name`.
    fn series(&self, name: &str) -> Vec<Vec<String>> {
        self.0
            .iter()
            .filter(|(n, ..)| n == name)
            .map(|(_, l, _)| l.clone())
            .collect()
    }
}

fn secs(ms: u64) -> f64 {
    Duration::from_millis(ms).as_secs_f64()
}

struct App {
    router: Router,
    meter: Meter,
    summaries: Arc<Mutex<Vec<RequestSummary>>>,
}

/// POST /v1/completions: empty body -> 400 before any guard; "boom" -> a guard, then 500;
/// otherwise a guard, two tokens, 200 "hello". The handler spends 10 ms before starting the
/// guard (parsing, tokenizing) and 20 ms generating. GET /health -> "ok"; anything else 404.
fn app(mock: Arc<Mock>, clock: Clock) -> App {
    let meter = Meter::builder()
        .model("m")
        .clock(clock)
        .constant_label("region", "eu")
        .build();
    let summaries = Arc::new(Mutex::new(Vec::new()));
    let (s, m) = (Arc::clone(&summaries), Arc::clone(&mock));
    let complete = move |Extension(arrival): Extension<Arrival>, body: String| {
        let (s, m) = (Arc::clone(&s), Arc::clone(&m));
        async move {
            m.increment(Duration::from_millis(10));
            if body.is_empty() {
                return Err(StatusCode::BAD_REQUEST);
            }
            let mut guard = arrival.start_with(|r| r.prompt_tokens(body.len()));
            if body == "boom" {
                let sum = guard.fail(ErrorKind::Internal);
                s.lock().expect("lock").push(sum);
                return Err(StatusCode::INTERNAL_SERVER_ERROR);
            }
            m.increment(Duration::from_millis(5));
            guard.token();
            m.increment(Duration::from_millis(15));
            guard.token();
            s.lock().expect("lock").push(guard.finish(Finish::Stop));
            Ok("hello")
        }
    };
    let router = Router::new()
        .route("/v1/completions", post(complete))
        .route("/health", get(|| async { "ok" }))
        .layer(
            HttpMetricsLayer::new(&meter)
                .route(|p| p.extensions.get::<MatchedPath>().map(|m| m.as_str())),
        );
    App {
        router,
        meter,
        summaries,
    }
}

fn post_req(path: &str, body: &'static str) -> Request<Body> {
    Request::post(path).body(Body::from(body)).expect("request")
}

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn http_metrics_by_route_and_status_exact() {
    let rec = DebuggingRecorder::new();
    let snap = rec.snapshotter();
    let (clock, mock) = Clock::mock();
    metrics::with_local_recorder(&rec, || {
        let a = app(Arc::clone(&mock), clock);
        run(async {
            for (req, want) in [
                (post_req("/v1/completions", "prompt"), StatusCode::OK),
                (post_req("/v1/completions", ""), StatusCode::BAD_REQUEST),
                (
                    post_req("/v1/completions", "boom"),
                    StatusCode::INTERNAL_SERVER_ERROR,
                ),
                (
                    Request::get("/health").body(Body::empty()).expect("r"),
                    StatusCode::OK,
                ),
                (
                    Request::get("/nope/123").body(Body::empty()).expect("r"),
                    StatusCode::NOT_FOUND,
                ),
            ] {
                let resp = a.router.clone().oneshot(req).await.expect("infallible");
                assert_eq!(resp.status(), want);
                resp.into_body().collect().await.expect("body");
            }
        });
        let mut m = Metrics::new();
        let m = m.read(&snap);
        let route = "http_route=/v1/completions";
        // Durations: the handler's mock-clock time, to the end of the body.
        assert_eq!(
            m.hist(DURATION, &[route, "http_response_status_code=200"]),
            [secs(30)]
        );
        assert_eq!(
            m.hist(DURATION, &[route, "http_response_status_code=400"]),
            [secs(10)]
        );
        assert_eq!(
            m.hist(
                DURATION,
                &[route, "http_response_status_code=500", "error_type=500"]
            ),
            [secs(10)]
        );
        assert_eq!(
            m.hist(DURATION, &["http_route=/health", "http_request_method=GET"]),
            [0.0]
        );
        assert_eq!(
            m.hist(
                DURATION,
                &[
                    &format!("http_route={UNMATCHED_ROUTE}"),
                    "http_response_status_code=404"
                ]
            ),
            [0.0]
        );
        // 5 requests: 2xx 2, 4xx 2, 5xx 1; error.type only on the 5xx.
        assert_eq!(m.hist(DURATION, &[]).len(), 5);
        for labels in m.series(DURATION) {
            let status = labels
                .iter()
                .find(|l| l.starts_with("http_response_status_code="))
                .expect("status");
            let has_error = labels.iter().any(|l| l.starts_with("error_type="));
            assert_eq!(has_error, status.ends_with("=500"), "{labels:?}");
            // Server-scoped: the meter's own constant label, no model label.
            assert!(labels.contains(&"region=eu".to_owned()), "{labels:?}");
            assert!(labels.contains(&"url_scheme=http".to_owned()), "{labels:?}");
            assert!(
                !labels.iter().any(|l| l.starts_with("gen_ai_request_model")),
                "{labels:?}"
            );
        }
        // Body sizes, exact.
        assert_eq!(
            m.hist(REQ_SIZE, &[route, "http_response_status_code=200"]),
            [6.0]
        );
        assert_eq!(
            m.hist(RESP_SIZE, &[route, "http_response_status_code=200"]),
            [5.0]
        );
        assert_eq!(m.hist(REQ_SIZE, &["http_route=/health"]), [0.0]);
        assert_eq!(m.hist(RESP_SIZE, &["http_route=/health"]), [2.0]);
        // In flight: back to zero.
        assert_eq!(
            m.gauge(ACTIVE, &["http_request_method=POST", "url_scheme=http"]),
            [0.0]
        );
        assert_eq!(m.gauge(ACTIVE, &["http_request_method=GET"]), [0.0]);
        // Rejected before any guard: the 400 and the 404, not the 500 (its guard had started).
        assert_eq!(
            m.counter(REJECTED, &[route, "http_response_status_code=400"]),
            1
        );
        assert_eq!(
            m.counter(REJECTED, &[&format!("http_route={UNMATCHED_ROUTE}")]),
            1
        );
        assert_eq!(m.counter(REJECTED, &[]), 2);
        // ... and not in the gen_ai request metrics: two generation requests, both ended.
        let t = a.meter.totals();
        assert_eq!(
            (t.requests_started, t.requests_ended, t.output_tokens),
            (2, 2, 2)
        );
        assert_eq!(m.counter("gen_ai_server_request_duration_seconds", &[]), 0);
        assert_eq!(
            m.hist("gen_ai_server_request_duration_seconds", &[]).len(),
            2
        );
        // The guard started at the HTTP arrival: TTFT includes the 10 ms before start_with.
        let sums = a.summaries.lock().expect("lock");
        let ok = sums.iter().find(|s| s.output_tokens == 2).expect("the 200");
        assert_eq!(ok.ttft, Some(Duration::from_millis(15)));
        assert_eq!(ok.e2e, Duration::from_millis(30));
        assert_eq!(ok.input_tokens, 6);
    });
}

#[test]
fn a_streamed_response_is_in_flight_until_its_last_chunk() {
    let rec = DebuggingRecorder::new();
    let snap = rec.snapshotter();
    let (clock, mock) = Clock::mock();
    metrics::with_local_recorder(&rec, || {
        let meter = Meter::builder().clock(clock).build();
        let router = Router::new()
            .route(
                "/stream/{id}",
                get(|| async {
                    let chunks = ["data: a\n\n", "data: bc\n\n", "data: [DONE]\n\n"]
                        .map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c.as_bytes())));
                    Body::from_stream(futures_util::stream::iter(chunks))
                }),
            )
            .layer(
                HttpMetricsLayer::new(&meter)
                    .route(|p| p.extensions.get::<MatchedPath>().map(|m| m.as_str())),
            );
        run(async {
            let resp = router
                .clone()
                .oneshot(Request::get("/stream/42").body(Body::empty()).expect("r"))
                .await
                .expect("infallible");
            let mut body = resp.into_body();
            let mut m = Metrics::new();
            let mut active = || m.read(&snap).gauge(ACTIVE, &["http_request_method=GET"]);
            assert_eq!(active(), [1.0]);
            let first = body.frame().await.expect("frame").expect("ok");
            assert_eq!(first.data_ref().map(|d| d.len()), Some(9));
            mock.increment(Duration::from_millis(250));
            assert_eq!(active(), [1.0]);
            while body.frame().await.is_some() {}
            assert_eq!(active(), [0.0]);
            let seen = m.read(&snap);
            // The template, never the raw path.
            assert_eq!(
                seen.hist(DURATION, &["http_route=/stream/{id}"]),
                [secs(250)]
            );
            assert_eq!(
                seen.hist(RESP_SIZE, &["http_route=/stream/{id}"]),
                [(9 + 10 + 14) as f64]
            );

            // A client that goes away mid-stream: recorded when the body is dropped, with
            // what was sent.
            let resp = router
                .oneshot(Request::get("/stream/7").body(Body::empty()).expect("r"))
                .await
                .expect("infallible");
            let mut body = resp.into_body();
            body.frame().await.expect("frame").expect("ok");
            mock.increment(Duration::from_millis(40));
            drop(body);
            let m = m.read(&snap);
            assert_eq!(
                m.hist(DURATION, &["http_route=/stream/{id}"]),
                [secs(40), secs(250)]
            );
            assert_eq!(m.hist(RESP_SIZE, &["http_route=/stream/{id}"]), [9.0, 33.0]);
            assert_eq!(m.gauge(ACTIVE, &["http_request_method=GET"]), [0.0]);
        });
    });
}

#[test]
fn routes_past_the_cap_go_to_other_and_methods_are_bounded() {
    let rec = DebuggingRecorder::new();
    let snap = rec.snapshotter();
    metrics::with_local_recorder(&rec, || {
        let meter = Meter::default();
        let router = Router::new()
            .route("/a", get(|| async { "" }).patch(|| async { "" }))
            .route("/b", get(|| async { "" }))
            .layer(
                HttpMetricsLayer::new(&meter)
                    .max_routes(1)
                    .route(|p| p.extensions.get::<MatchedPath>().map(|m| m.as_str())),
            );
        run(async {
            for (method, path) in [
                ("GET", "/a"),
                ("GET", "/b"),
                ("PATCH", "/a"),
                ("BREW", "/a"),
            ] {
                let req = Request::builder()
                    .method(method)
                    .uri(path)
                    .body(Body::empty())
                    .expect("r");
                let resp = router.clone().oneshot(req).await.expect("infallible");
                resp.into_body().collect().await.expect("body");
            }
        });
        let mut m = Metrics::new();
        let m = m.read(&snap);
        assert_eq!(m.hist(DURATION, &["http_route=/a"]).len(), 3);
        assert_eq!(m.hist(DURATION, &["http_route=other"]).len(), 1);
        assert_eq!(
            m.counter("tokenmeter_labels_overflow_total", &["label=http_route"]),
            1
        );
        assert_eq!(
            m.hist(
                DURATION,
                &[
                    "http_request_method=_OTHER",
                    "http_response_status_code=405"
                ]
            )
            .len(),
            1
        );
        assert_eq!(m.hist(DURATION, &["http_request_method=PATCH"]).len(), 1);
    });
}

#[cfg(feature = "prometheus")]
#[test]
fn the_prometheus_exposition_uses_the_semconv_buckets() {
    use tokenmeter_core::catalog::http::{BODY_SIZE_BUCKETS, HTTP_DURATION_BUCKETS};
    let mut exporter = tokenmeter_export::Prometheus::new()
        .without_listener()
        .build()
        .expect("exporter");
    let recorder = exporter.take_recorder().expect("recorder");
    let (clock, mock) = Clock::mock();
    metrics::with_local_recorder(&recorder, || {
        let a = app(mock, clock);
        run(async {
            for body in ["prompt", ""] {
                let resp = a
                    .router
                    .clone()
                    .oneshot(post_req("/v1/completions", body))
                    .await;
                resp.expect("infallible")
                    .into_body()
                    .collect()
                    .await
                    .expect("body");
            }
        });
    });
    let text = exporter.render();
    let bounds = |name: &str, status: &str| -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}_bucket{{")) && l.contains(status))
            .filter_map(|l| {
                l.split("le=\"")
                    .nth(1)?
                    .split('"')
                    .next()
                    .map(str::to_owned)
            })
            .collect()
    };
    let want = |b: &[f64]| -> Vec<String> {
        b.iter()
            .map(|x| format!("{x}"))
            .chain(["+Inf".to_owned()])
            .collect()
    };
    let ok = "http_response_status_code=\"200\"";
    assert_eq!(bounds(DURATION, ok), want(HTTP_DURATION_BUCKETS), "{text}");
    assert_eq!(bounds(RESP_SIZE, ok), want(BODY_SIZE_BUCKETS), "{text}");
    assert!(
        text.contains("# TYPE http_server_active_requests gauge"),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with(REJECTED)
            && l.contains("http_response_status_code=\"400\"")
            && l.ends_with(" 1")),
        "{text}"
    );
    // promtool's lint, where scripts/install-test-deps provided it.
    if let Some(promtool) = std::env::var_os("TOKENMETER_PROMTOOL") {
        use std::io::Write as _;
        let mut child = std::process::Command::new(promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("promtool");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
        let out = child.wait_with_output().expect("promtool output");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
