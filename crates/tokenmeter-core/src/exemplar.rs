//! The trace context that exemplars carry, handed to recorders beside a recorded value.
//!
//! The `metrics` facade has no room for an exemplar, so the guard passes the request's trace
//! and span ids through a thread-local while it records the request's latency histograms
//! (TTFT at the first token; TPOT, E2E and the last ITL flush when the request ends), and a
//! recorder that keeps exemplars (the Prometheus exporter's) reads [`current`] in its
//! `record`. Nothing of this runs per token.
//!
//! The ids come from a [`Resolver`] installed once per process (the OTLP trace layer installs
//! one that reads the request span's OpenTelemetry context), or from the caller, who wraps the
//! guard's calls in [`with_trace_ids`] (e.g. with the ids of an incoming `traceparent`).
//!
//! ```
//! use tokenmeter_core::exemplar::{self, TraceIds};
//! let ids = TraceIds::from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
//!     .expect("valid traceparent");
//! assert_eq!(exemplar::current(), None);
//! exemplar::with_trace_ids(ids, || assert_eq!(exemplar::current(), Some(ids)));
//! assert_eq!(exemplar::current(), None);
//! ```

use std::cell::Cell;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// A W3C trace id and span id (the request span's), as an exemplar carries them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TraceIds {
    /// The 16-byte trace id, big-endian (its hex spelling reads the same).
    pub trace_id: u128,
    /// The 8-byte span id, big-endian.
    pub span_id: u64,
}

impl TraceIds {
    /// The ids of a W3C `traceparent` header value (`00-<32 hex>-<16 hex>-<2 hex>`), or
    /// `None` when it is malformed or either id is all zeros (invalid per the W3C spec).
    pub fn from_traceparent(traceparent: &str) -> Option<TraceIds> {
        let mut parts = traceparent.trim().split('-');
        let (_version, trace, span, _flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        if trace.len() != 32 || span.len() != 16 {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let span_id = u64::from_str_radix(span, 16).ok()?;
        (trace_id != 0 && span_id != 0).then_some(TraceIds { trace_id, span_id })
    }

    /// The ids in lowercase hex: 32 digits for the trace id, 16 for the span id.
    pub fn hex(&self) -> (String, String) {
        (
            format!("{:032x}", self.trace_id),
            format!("{:016x}", self.span_id),
        )
    }
}

/// Finds the trace ids of a request span (`None` when it has none, e.g. no OpenTelemetry
/// layer records it).
pub type Resolver = fn(&tracing::Span) -> Option<TraceIds>;

static RESOLVER: OnceLock<Resolver> = OnceLock::new();
/// Whether some recorder keeps exemplars: resolving a span's ids is not free (the
/// OpenTelemetry layer builds the span's context), so without one the guard skips it.
static WANTED: AtomicBool = AtomicBool::new(false);

thread_local! {
    static CURRENT: Cell<Option<TraceIds>> = const { Cell::new(None) };
}

/// Installs the process's resolver; the first one set stays. Returns whether this one was set.
pub fn set_resolver(resolver: Resolver) -> bool {
    RESOLVER.set(resolver).is_ok()
}

/// Declares that a recorder keeps exemplars, so the guard resolves request spans' trace ids
/// from now on (the Prometheus exporter calls it when built with exemplars on).
pub fn set_wanted() {
    WANTED.store(true, Ordering::Relaxed);
}

/// The trace ids of the request whose values are being recorded on this thread, if any.
/// Recorders call it inside `record`.
#[inline]
pub fn current() -> Option<TraceIds> {
    CURRENT.with(Cell::get)
}

/// Runs `f` with `ids` as the [`current`] trace ids on this thread (restored after, even if
/// `f` panics). Wrap a guard's first `token()` and its `finish()` in it to attach the ids of
/// a trace context the meter's span does not know (for instance a `traceparent` header
/// without an OpenTelemetry layer installed).
pub fn with_trace_ids<R>(ids: TraceIds, f: impl FnOnce() -> R) -> R {
    set_current(Some(ids), f)
}

/// The ids the installed resolver finds for `span` (`None` without a resolver, or when no
/// recorder wants exemplars).
pub(crate) fn resolve(span: &tracing::Span) -> Option<TraceIds> {
    if !WANTED.load(Ordering::Relaxed) {
        return None;
    }
    RESOLVER.get().and_then(|resolve| resolve(span))
}

/// Runs `f` with `ids` as [`current`] when there are some; else with whatever the caller set.
pub(crate) fn scope<R>(ids: Option<TraceIds>, f: impl FnOnce() -> R) -> R {
    match ids {
        Some(ids) => set_current(Some(ids), f),
        None => f(),
    }
}

fn set_current<R>(ids: Option<TraceIds>, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<TraceIds>);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.replace(ids)));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_ids_parse_and_invalid_ones_do_not() {
        let ids =
            TraceIds::from_traceparent(" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ")
                .expect("valid");
        assert_eq!(ids.trace_id, 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736);
        assert_eq!(ids.span_id, 0x00f0_67aa_0ba9_02b7);
        assert_eq!(
            ids.hex(),
            (
                "4bf92f3577b34da6a3ce929d0e0e4736".to_owned(),
                "00f067aa0ba902b7".to_owned()
            )
        );
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceIds::from_traceparent(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_current_ids_are_restored_after_a_panic() {
        let ids = TraceIds {
            trace_id: 1,
            span_id: 2,
        };
        let caught = std::panic::catch_unwind(|| with_trace_ids(ids, || panic!("boom")));
        assert!(caught.is_err());
        assert_eq!(current(), None);
        // Nested: the inner scope restores the outer ids.
        with_trace_ids(ids, || {
            let inner = TraceIds {
                trace_id: 3,
                span_id: 4,
            };
            with_trace_ids(inner, || assert_eq!(current(), Some(inner)));
            assert_eq!(current(), Some(ids));
        });
    }
}
