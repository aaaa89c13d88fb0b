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
/// records it. [`OtlpExporter::tracing_layer`](crate::otlp::OtlpExporter::tracing_layer)
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
}
