//! The tower layer joins an incoming `traceparent`: the layer's span and the request span
//! inside it carry the caller's trace. Its own test binary: a scoped `tracing` subscriber
//! (`with_default`) races the callsite interest cache with tests on other threads of the same
//! process, which made this test fail now and then next to the others in `http_layer.rs`.
#![cfg(all(feature = "http", feature = "otlp"))]
#![allow(missing_docs)]

use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::post;
use axum::{Extension, Router};
use tokenmeter_core::{Finish, Meter};
use tokenmeter_export::http::{Arrival, HttpMetricsLayer};
use tower::ServiceExt;

fn run<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn the_handler_spans_join_the_incoming_traceparent() {
    use opentelemetry::trace::TracerProvider as _;
    use tokenmeter_export::trace_context::traceparent_of;
    use tracing_subscriber::layer::SubscriberExt as _;

    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    tracing::subscriber::with_default(subscriber, || {
        let meter = Meter::default();
        let seen: Arc<Mutex<Vec<String>>> = Arc::default();
        let s = Arc::clone(&seen);
        let router = Router::new()
            .route(
                "/v1/chat/completions",
                post(move |Extension(arrival): Extension<Arrival>| {
                    let s = Arc::clone(&s);
                    async move {
                        let mut guard = arrival.start_with(|r| r);
                        let mut s = s.lock().expect("lock");
                        s.extend(traceparent_of(arrival.span()));
                        s.extend(traceparent_of(guard.span()));
                        guard.finish(Finish::Stop);
                        "ok"
                    }
                }),
            )
            .layer(HttpMetricsLayer::new(&meter));
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        run(async {
            for tp in [
                format!("00-{trace}-00f067aa0ba902b7-01"),
                "garbage".to_owned(),
            ] {
                let req = Request::post("/v1/chat/completions")
                    .header("traceparent", tp)
                    .body(Body::empty())
                    .expect("r");
                let resp = router.clone().oneshot(req).await.expect("infallible");
                assert_eq!(resp.status(), StatusCode::OK);
            }
        });
        let seen = seen.lock().expect("lock");
        assert_eq!(seen.len(), 4, "{seen:?}");
        // The layer's span and the request span inside it: the caller's trace, new span ids.
        for tp in &seen[..2] {
            assert!(tp.starts_with(&format!("00-{trace}-")), "{tp}");
            assert!(!tp.contains("00f067aa0ba902b7"), "{tp}");
        }
        assert_ne!(seen[0], seen[1]);
        // An invalid header is ignored: a trace of its own, both spans in it.
        assert!(!seen[2].contains(trace));
        assert_eq!(seen[2][..35], seen[3][..35]);
    });
}
