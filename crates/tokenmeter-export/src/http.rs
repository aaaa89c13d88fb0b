//! HTTP server metrics and request arrival as a `tower` layer (feature `http`), for axum, hyper
//! and any other tower-based server.
//!
//! [`HttpMetricsLayer`] records, for every request, the OpenTelemetry HTTP server metrics
//! (`http.server.request.duration`, `http.server.active_requests`,
//! `http.server.request.body.size`, `http.server.response.body.size`, by method, route and
//! status code; see `docs/metrics.md`), and counts in `tokenmeter.http.server.rejected` the
//! requests answered with 4xx/5xx before the handler started a generation request: those never
//! reach a `gen_ai` metric.
//!
//! It also marks the request's **arrival**: it reads the meter's clock once when the request
//! comes in and puts an [`Arrival`] into the request's extensions, so the handler starts its
//! [`RequestGuard`] from that instant (TTFT and E2E then include body reading, parsing and
//! tokenizing, as the client sees them) and as a child of the layer's span, which joined the
//! caller's W3C `traceparent` (with feature `otlp`).
//!
//! A response counts as ended when its body yields its last frame or is dropped, so a streamed
//! (SSE) response is in flight, and its duration runs, until its last chunk.
//!
//! # Routes
//!
//! `http.route` must stay bounded, so it is never the raw path: give the layer a function that
//! returns the matched route template ([`HttpMetricsLayer::route`]); with axum, read
//! `MatchedPath`, which axum puts into the extensions when the layer is added with
//! `Router::layer`. A request it returns `None` for gets [`UNMATCHED_ROUTE`]; distinct templates
//! past [`HttpMetricsLayer::max_routes`] get `other` (and count in `tokenmeter.labels.overflow`).
//!
//! ```
//! use axum::{Extension, Router, extract::MatchedPath, routing::post};
//! use tokenmeter_core::{Finish, Meter};
//! use tokenmeter_export::http::{Arrival, HttpMetricsLayer};
//!
//! async fn complete(Extension(arrival): Extension<Arrival>, body: String) -> Result<String, axum::http::StatusCode> {
//!     if body.is_empty() {
//!         // Rejected before any guard: counted in the HTTP metrics and http.server.rejected only.
//!         return Err(axum::http::StatusCode::BAD_REQUEST);
//!     }
//!     let mut guard = arrival.start_with(|r| r.prompt_tokens(body.len()));
//!     guard.token();
//!     guard.finish(Finish::Stop);
//!     Ok("ok".into())
//! }
//!
//! let meter = Meter::builder().model("smollm2-135m").build();
//! let app: Router = Router::new()
//!     .route("/v1/completions", post(complete))
//!     .layer(HttpMetricsLayer::new(&meter).route(|p| {
//!         p.extensions.get::<MatchedPath>().map(|m| m.as_str())
//!     }));
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use ::http::request::Parts;
use ::http::{Method, Request, Response};
use bytes::Buf;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokenmeter_core::cardinality::{Admission, CardinalityLimit};
use tokenmeter_core::catalog::{core as core_id, http as id};
use tokenmeter_core::clock::Instant;
use tokenmeter_core::emit::lock;
use tokenmeter_core::{Meter, RequestBuilder, RequestGuard};
use tracing::Instrument;
use tracing::instrument::Instrumented;

/// The `http.route` value of a request no route matched (a 404 from the router's fallback).
pub const UNMATCHED_ROUTE: &str = "unmatched";
/// Default cap on distinct `http.route` values ([`HttpMetricsLayer::max_routes`]).
pub const DEFAULT_MAX_ROUTES: usize = 64;
/// A route value unused this long gives its slot back (as request labels do by default).
const ROUTE_IDLE: Duration = Duration::from_secs(600);

type RouteFn = dyn for<'a> Fn(&'a Parts) -> Option<&'a str> + Send + Sync;

struct Shared {
    meter: Meter,
    route: Option<Arc<RouteFn>>,
    routes: Mutex<CardinalityLimit>,
    scheme: &'static str,
}

/// The tower layer: wraps a service in [`HttpMetrics`]. Cheap to clone.
#[derive(Clone)]
pub struct HttpMetricsLayer {
    shared: Arc<Shared>,
}

impl fmt::Debug for HttpMetricsLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpMetricsLayer")
            .field("routes", &lock(&self.shared.routes).len())
            .field("scheme", &self.shared.scheme)
            .finish_non_exhaustive()
    }
}

impl HttpMetricsLayer {
    /// A layer recording through `meter`'s names, clock and constant labels (the HTTP series
    /// carry the builder's constant labels, not the model-scoped ones). Without
    /// [`route`](Self::route), every request's route is [`UNMATCHED_ROUTE`].
    pub fn new(meter: &Meter) -> Self {
        HttpMetricsLayer {
            shared: Arc::new(Shared {
                meter: meter.clone(),
                route: None,
                routes: Mutex::new(CardinalityLimit::new(DEFAULT_MAX_ROUTES, ROUTE_IDLE)),
                scheme: "http",
            }),
        }
    }

    fn with(self, f: impl FnOnce(&mut Shared)) -> Self {
        let mut shared = match Arc::try_unwrap(self.shared) {
            Ok(s) => s,
            // Configured after a clone: configure a copy.
            Err(a) => Shared {
                meter: a.meter.clone(),
                route: a.route.clone(),
                routes: Mutex::new(CardinalityLimit::new(lock(&a.routes).limit(), ROUTE_IDLE)),
                scheme: a.scheme,
            },
        };
        f(&mut shared);
        HttpMetricsLayer {
            shared: Arc::new(shared),
        }
    }

    /// How to find a request's route template (`http.route`): e.g. axum's `MatchedPath` from
    /// the extensions, or your router's own match on `parts.uri`. Return a template, never a
    /// raw path; `None` gives [`UNMATCHED_ROUTE`].
    pub fn route<F>(self, f: F) -> Self
    where
        F: for<'a> Fn(&'a Parts) -> Option<&'a str> + Send + Sync + 'static,
    {
        self.with(|s| s.route = Some(Arc::new(f)))
    }

    /// At most `n` distinct route values get series of their own (default
    /// [`DEFAULT_MAX_ROUTES`]); more go to `other`, and a value unused for 10 minutes gives
    /// its slot back.
    pub fn max_routes(self, n: usize) -> Self {
        self.with(|s| s.routes = Mutex::new(CardinalityLimit::new(n, ROUTE_IDLE)))
    }

    /// The `url.scheme` of requests whose URI has none (a server request's URI is usually
    /// just a path): `"http"` by default, `"https"` behind your own TLS.
    pub fn scheme(self, scheme: &'static str) -> Self {
        self.with(|s| s.scheme = scheme)
    }
}

impl<S> tower_layer::Layer<S> for HttpMetricsLayer {
    type Service = HttpMetrics<S>;

    fn layer(&self, inner: S) -> HttpMetrics<S> {
        HttpMetrics {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

/// The service [`HttpMetricsLayer`] wraps around yours.
#[derive(Clone)]
pub struct HttpMetrics<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: fmt::Debug> fmt::Debug for HttpMetrics<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpMetrics")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// A request's arrival, put into its extensions by [`HttpMetricsLayer`]: continue it in the
/// handler (axum: `Extension<Arrival>`) with [`start_with`](Self::start_with).
#[derive(Clone, Debug)]
pub struct Arrival {
    meter: Meter,
    at: Instant,
    span: tracing::Span,
    started: Arc<AtomicBool>,
}

impl Arrival {
    /// When the layer received the request (the meter's clock).
    pub fn instant(&self) -> Instant {
        self.at
    }

    /// The layer's span for the request: a child of the caller's `traceparent` when one came
    /// in and the `otlp` tracing layer is installed.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Starts the generation request on the layer's meter, arrived when the HTTP request did,
    /// with its span a child of the layer's span; `configure` sets prompt tokens, labels, an
    /// id. From then on an error response no longer counts as rejected.
    ///
    /// ```
    /// # let meter = tokenmeter_core::Meter::default();
    /// # let arrival = tokenmeter_export::http::Arrival::detached(&meter);
    /// let guard = arrival.start_with(|r| r.prompt_tokens(12).request_id("r-7"));
    /// assert_eq!(guard.arrival(), arrival.instant());
    /// ```
    pub fn start_with(
        &self,
        configure: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> RequestGuard {
        self.start_on(&self.meter, configure)
    }

    /// [`start_with`](Self::start_with) on another meter (a server with one meter per model
    /// and one layer for all of them). Both meters must read the same clock.
    pub fn start_on(
        &self,
        meter: &Meter,
        configure: impl FnOnce(RequestBuilder) -> RequestBuilder,
    ) -> RequestGuard {
        self.started.store(true, Ordering::Relaxed);
        configure(meter.request().parent(&self.span)).start_at(self.at)
    }

    /// An arrival now on `meter`, outside any layer (tests, handlers called directly). Its
    /// span is a fresh `http.server.request` span.
    pub fn detached(meter: &Meter) -> Self {
        Arrival {
            meter: meter.clone(),
            at: meter.now(),
            span: tracing::info_span!("http.server.request"),
            started: Arc::new(AtomicBool::new(false)),
        }
    }
}

/// A semantic-convention method value: the nine standard methods, `_OTHER` for the rest.
fn method_label(m: &Method) -> &'static str {
    const KNOWN: [Method; 9] = [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::CONNECT,
        Method::OPTIONS,
        Method::TRACE,
        Method::PATCH,
    ];
    KNOWN
        .iter()
        .find(|k| *k == m)
        .map_or("_OTHER", |k| match *k {
            Method::GET => "GET",
            Method::HEAD => "HEAD",
            Method::POST => "POST",
            Method::PUT => "PUT",
            Method::DELETE => "DELETE",
            Method::CONNECT => "CONNECT",
            Method::OPTIONS => "OPTIONS",
            Method::TRACE => "TRACE",
            _ => "PATCH",
        })
}

impl Shared {
    /// The bounded `http.route` value of a request.
    fn route_label(&self, parts: &Parts) -> String {
        let Some(route) = self.route.as_ref().and_then(|f| f(parts)) else {
            return UNMATCHED_ROUTE.to_owned();
        };
        let admission = lock(&self.routes).admit(route, self.meter.now());
        if admission == Admission::Overflow {
            let names = self.meter.metric_names();
            metrics::counter!(
                names.name(core_id::LABEL_OVERFLOW).to_owned(),
                names.labels(&[("label", "http_route")])
            )
            .increment(1);
        }
        admission.label(route).to_owned()
    }

    fn active(&self, method: &'static str, scheme: &'static str) -> metrics::Gauge {
        let names = self.meter.metric_names();
        metrics::gauge!(
            names.name(id::HTTP_ACTIVE_REQUESTS).to_owned(),
            names.node_labels(&[("http.request.method", method), ("url.scheme", scheme)])
        )
    }
}

impl<S, B, RB> tower_service::Service<Request<B>> for HttpMetrics<S>
where
    S: tower_service::Service<Request<B>, Response = Response<RB>>,
    B: Body,
    RB: Body,
{
    type Response = Response<MeteredBody<RB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let shared = &self.shared;
        let at = shared.meter.now();
        let (mut parts, body) = req.into_parts();
        let method = method_label(&parts.method);
        let scheme = match parts.uri.scheme_str() {
            Some("https") => "https",
            Some("http") => "http",
            _ => shared.scheme,
        };
        let route = shared.route_label(&parts);
        let request_bytes = body.size_hint().exact();
        let span = tracing::info_span!(
            "http.server.request",
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "server",
            http.request.method = method,
            http.route = %route,
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        join_trace(&span, &parts.headers);
        let started = Arc::new(AtomicBool::new(false));
        parts.extensions.insert(Arrival {
            meter: shared.meter.clone(),
            at,
            span: span.clone(),
            started: Arc::clone(&started),
        });
        shared.active(method, scheme).increment(1.0);
        let pending = Pending {
            shared: Arc::clone(shared),
            at,
            method,
            scheme,
            route,
            request_bytes,
            response_bytes: 0,
            status: None,
            error: None,
            started,
            span: span.clone(),
        };
        let fut = self
            .inner
            .call(Request::from_parts(parts, body))
            .instrument(span);
        ResponseFuture {
            fut,
            pending: Some(pending),
        }
    }
}

/// Makes `span` a child of the request's `traceparent`, when OTLP tracing is compiled in. An
/// invalid header is the caller's: the span then starts a trace of its own.
#[cfg(feature = "otlp")]
fn join_trace(span: &tracing::Span, headers: &::http::HeaderMap) {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(tp) = header("traceparent") {
        let _ = crate::trace_context::join_traceparent(span, tp, header("tracestate"));
    }
}

#[cfg(not(feature = "otlp"))]
fn join_trace(_: &tracing::Span, _: &::http::HeaderMap) {}

/// One request between arrival and the end of its response; records it when dropped.
struct Pending {
    shared: Arc<Shared>,
    at: Instant,
    method: &'static str,
    scheme: &'static str,
    route: String,
    request_bytes: Option<u64>,
    response_bytes: u64,
    status: Option<u16>,
    error: Option<&'static str>,
    started: Arc<AtomicBool>,
    span: tracing::Span,
}

impl Drop for Pending {
    fn drop(&mut self) {
        let shared = &*self.shared;
        let meter = &shared.meter;
        let secs = meter.now().saturating_duration_since(self.at).as_secs_f64();
        shared.active(self.method, self.scheme).decrement(1.0);
        let names = meter.metric_names();
        let status = self.status.map(|s| s.to_string());
        let error = match (self.error, self.status) {
            (Some(e), _) => Some(e.to_owned()),
            (None, Some(s)) if s >= 500 => status.clone(),
            // The response future was dropped before a response (the client went away).
            (None, None) => Some("cancelled".to_owned()),
            (None, Some(_)) => None,
        };
        if let Some(e) = &error {
            self.span.record("error.type", e.as_str());
        }
        let mut extra: Vec<(&str, &str)> = vec![
            ("http.request.method", self.method),
            ("url.scheme", self.scheme),
            ("http.route", &self.route),
        ];
        if let Some(s) = &status {
            extra.push(("http.response.status_code", s));
        }
        if let Some(e) = &error {
            extra.push(("error.type", e));
        }
        let labels = names.node_labels(&extra);
        metrics::histogram!(names.name(id::HTTP_DURATION).to_owned(), labels.clone()).record(secs);
        if let Some(b) = self.request_bytes {
            metrics::histogram!(
                names.name(id::HTTP_REQUEST_BODY_SIZE).to_owned(),
                labels.clone()
            )
            .record(b as f64);
        }
        metrics::histogram!(names.name(id::HTTP_RESPONSE_BODY_SIZE).to_owned(), labels)
            .record(self.response_bytes as f64);
        if let Some(s) = &status
            && self.status.is_some_and(|s| s >= 400)
            && !self.started.load(Ordering::Relaxed)
        {
            metrics::counter!(
                names.name(id::HTTP_REJECTED).to_owned(),
                names.node_labels(&[
                    ("http.request.method", self.method),
                    ("http.route", &self.route),
                    ("http.response.status_code", s),
                ])
            )
            .increment(1);
        }
    }
}

pin_project! {
    /// The response future of [`HttpMetrics`].
    pub struct ResponseFuture<F> {
        #[pin]
        fut: Instrumented<F>,
        pending: Option<Pending>,
    }
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl<F, RB, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<RB>, E>>,
{
    type Output = Result<Response<MeteredBody<RB>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = match this.fut.poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(out) => out,
        };
        let mut pending = this.pending.take();
        Poll::Ready(match out {
            Ok(resp) => {
                let status = resp.status().as_u16();
                if let Some(p) = &mut pending {
                    p.status = Some(status);
                    p.span.record("http.response.status_code", status);
                }
                Ok(resp.map(|inner| MeteredBody { inner, pending }))
            }
            Err(e) => {
                if let Some(p) = &mut pending {
                    p.error = Some("_OTHER");
                }
                Err(e)
            }
        })
    }
}

pin_project! {
    /// A response body that counts the bytes it yields; the request is recorded when it ends
    /// or is dropped.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        pending: Option<Pending>,
    }
}

impl<B> fmt::Debug for MeteredBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MeteredBody").finish_non_exhaustive()
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let out = match this.inner.poll_frame(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(out) => out,
        };
        match &out {
            Some(Ok(frame)) => {
                if let (Some(p), Some(d)) = (this.pending.as_mut(), frame.data_ref()) {
                    p.response_bytes = p.response_bytes.saturating_add(d.remaining() as u64);
                }
            }
            Some(Err(_)) => {
                if let Some(p) = this.pending.as_mut() {
                    p.error = Some("response_body");
                }
                // Recorded now: the body failed.
                drop(this.pending.take());
            }
            // The last frame was sent: the response ended.
            None => drop(this.pending.take()),
        }
        Poll::Ready(out)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
