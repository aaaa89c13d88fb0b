//! Joining the caller's W3C trace context (`traceparent` / `tracestate` headers).

use std::collections::HashMap;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::{OpenTelemetrySpanExt, SetParentError};

use crate::Error;

/// Parses W3C `traceparent` (and optional `tracestate`) header values into an OpenTelemetry
/// context.
///
/// # Errors
///
/// [`Error::TraceParent`] when the value is not a valid, non-zero `traceparent`.
///
/// ```
/// let cx = tokenmeter_export::trace_context::parse_traceparent(
///     "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None).unwrap();
/// use opentelemetry::trace::TraceContextExt;
/// assert_eq!(cx.span().span_context().trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
/// ```
pub fn parse_traceparent(
    traceparent: &str,
    tracestate: Option<&str>,
) -> Result<opentelemetry::Context, Error> {
    let mut carrier = HashMap::with_capacity(2);
    carrier.insert("traceparent".to_owned(), traceparent.trim().to_owned());
    if let Some(ts) = tracestate {
        carrier.insert("tracestate".to_owned(), ts.trim().to_owned());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        Ok(cx)
    } else {
        Err(Error::TraceParent(traceparent.chars().take(80).collect()))
    }
}

/// Makes `span` a child of the remote parent in `traceparent`, so the request span joins the
/// caller's trace. Call it on a span that has not been entered yet (for instance the server's
/// own request span, inside which the meter's request starts, or `guard.span()` right after
/// `start()`).
///
/// Returns `Ok(true)` when the span joined the trace, `Ok(false)` when no OpenTelemetry layer
/// records the span (tracing export is off: nothing to join).
///
/// # Errors
///
/// [`Error::TraceParent`] for an invalid header, or when the span was already started.
///
/// ```
/// let span = tracing::info_span!("http.request");
/// let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
/// // Without an OpenTelemetry layer there is nothing to join.
/// assert_eq!(tokenmeter_export::trace_context::join_traceparent(&span, tp, None).unwrap(), false);
/// assert!(tokenmeter_export::trace_context::join_traceparent(&span, "garbage", None).is_err());
/// ```
pub fn join_traceparent(
    span: &tracing::Span,
    traceparent: &str,
    tracestate: Option<&str>,
) -> Result<bool, Error> {
    let cx = parse_traceparent(traceparent, tracestate)?;
    match span.set_parent(cx) {
        Ok(()) => Ok(true),
        Err(SetParentError::LayerNotFound | SetParentError::SpanDisabled) => Ok(false),
        Err(e) => Err(Error::TraceParent(format!("cannot set parent: {e}"))),
    }
}

/// The `traceparent` header value of `span` (to pass downstream), if it is recorded by an
/// OpenTelemetry layer.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// The trace and span ids of `span` as an exemplar carries them, if an OpenTelemetry layer
/// records it. The OTLP exporter's tracing layer (`OtlpExporter::tracing_layer`)
/// installs it as the core's exemplar resolver
/// ([`tokenmeter_core::exemplar::set_resolver`]), so the request latencies the Prometheus
/// exporter keeps carry their request's trace id.
pub fn trace_ids_of(span: &tracing::Span) -> Option<tokenmeter_core::exemplar::TraceIds> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| tokenmeter_core::exemplar::TraceIds {
        trace_id: u128::from_be_bytes(sc.trace_id().to_bytes()),
        span_id: u64::from_be_bytes(sc.span_id().to_bytes()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_garbage_and_zero_ids() {
        assert!(parse_traceparent("nonsense", None).is_err());
        assert!(
            parse_traceparent(
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                None
            )
            .is_err()
        );
        let cx = parse_traceparent(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            Some("k=v"),
        )
        .expect("ok");
        let sc = cx.span().span_context().clone();
        assert!(sc.is_remote());
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert_eq!(sc.trace_state().header(), "k=v");
    }

    /// With the OTel layer installed, a request's latencies carry its span's trace id as
    /// their exemplar, and a joined `traceparent` makes that the caller's trace.
    #[cfg(feature = "prometheus")]
    #[test]
    fn request_latency_exemplars_carry_the_request_span_s_trace_id() {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::layer::SubscriberExt as _;
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("t")));
        tokenmeter_core::exemplar::set_resolver(trace_ids_of);
        let mut prom = crate::Prometheus::new()
            .without_listener()
            .build()
            .expect("build");
        let rec = prom.take_recorder().expect("recorder");
        let (clock, mock) = tokenmeter_core::clock::Clock::mock();
        let meter = tokenmeter_core::Meter::builder()
            .model("m")
            .clock(clock)
            .build();
        tracing::subscriber::with_default(subscriber, || {
            metrics::with_local_recorder(&rec, || {
                let parent = tracing::info_span!("http");
                let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
                assert_eq!(join_traceparent(&parent, tp, None).ok(), Some(true));
                let mut req = meter.request().parent(&parent).start();
                let ids = trace_ids_of(req.span()).expect("the request span has ids");
                assert_eq!(ids.trace_id, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
                mock.increment(std::time::Duration::from_millis(30));
                req.token();
                mock.increment(std::time::Duration::from_millis(10));
                req.token();
                req.finish(tokenmeter_core::Finish::Stop);
                let text =
                    String::from_utf8(prom.negotiate(Some("application/openmetrics-text")).body)
                        .expect("utf-8");
                let (trace, span) = ids.hex();
                let tag = format!("# {{trace_id=\"{trace}\",span_id=\"{span}\"}}");
                for family in [
                    "gen_ai_server_time_to_first_token_seconds_bucket",
                    "gen_ai_server_time_per_output_token_seconds_bucket",
                    "gen_ai_server_request_duration_seconds_bucket",
                    "tokenmeter_inter_token_latency_seconds_bucket",
                ] {
                    let lines: Vec<&str> = text
                        .lines()
                        .filter(|l| l.starts_with(family) && l.contains(&tag))
                        .collect();
                    assert_eq!(lines.len(), 1, "{family}:\n{text}");
                }
            });
        });
    }
}
