//! The JSON request log: one line per finished request, from the core's
//! `tokenmeter::request` event, through `tracing-subscriber`'s JSON formatter.

use tracing::Subscriber;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::registry::LookupSpan;

/// The target of the core's request span and request-log event.
pub const REQUEST_TARGET: &str = "tokenmeter::request";

/// Where the request log goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogDestination {
    /// Standard output (default).
    #[default]
    Stdout,
    /// Standard error.
    Stderr,
}

/// Builder of the JSON request-log layer.
///
/// It passes only the core's INFO-level `tokenmeter::request` events (one per finished
/// request); the DEBUG phase events on the request span (scheduled, first token) go to the
/// trace, not the log.
///
/// Each finished request gives one JSON object per line with the fields `request_id`,
/// `model`, `prompt_tokens`, `output_tokens`, `ttft_ms`, `tpot_ms`, `e2e_ms`, `queue_ms`,
/// `finish_reason`, `error_type`, `nan`, `pos_inf`, `neg_inf`, plus `timestamp`, `level`,
/// `target` and `message`. No prompt or output text is ever logged by tokenmeter.
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt;
/// let subscriber = tracing_subscriber::registry().with(tokenmeter_export::RequestLog::new().layer());
/// # drop(subscriber);
/// ```
#[derive(Clone, Copy, Debug, Default)]
#[must_use]
pub struct RequestLog {
    destination: LogDestination,
}

impl RequestLog {
    /// To standard output.
    pub fn new() -> Self {
        Self::default()
    }

    /// Chooses standard output or standard error.
    pub fn destination(mut self, destination: LogDestination) -> Self {
        self.destination = destination;
        self
    }

    /// The layer, writing to the chosen destination.
    pub fn layer<S>(self) -> Box<dyn Layer<S> + Send + Sync>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        match self.destination {
            LogDestination::Stdout => Self::layer_with_writer(std::io::stdout),
            LogDestination::Stderr => Self::layer_with_writer(std::io::stderr),
        }
    }

    /// The layer, writing to any `MakeWriter` (a file, a buffer in tests).
    pub fn layer_with_writer<S, W>(writer: W) -> Box<dyn Layer<S> + Send + Sync>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
        W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
    {
        Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_target(true)
                .with_writer(writer)
                .with_filter(filter_fn(|meta| {
                    meta.is_event()
                        && meta.target() == REQUEST_TARGET
                        && *meta.level() == tracing::Level::INFO
                })),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::{Arc, Mutex};
    use tracing_subscriber::layer::SubscriberExt;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| std::io::Error::other("poisoned"))?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn logs_only_request_events_as_json() {
        let buf = Buf::default();
        let b2 = buf.clone();
        let sub =
            tracing_subscriber::registry().with(RequestLog::layer_with_writer(move || b2.clone()));
        tracing::subscriber::with_default(sub, || {
            tracing::info!(target: "other", "ignored");
            tracing::debug!(target: REQUEST_TARGET, "gen_ai.first_token");
            tracing::info!(target: REQUEST_TARGET, request_id = "r1", output_tokens = 3u64, ttft_ms = 1.5, "request finished");
        });
        let out = String::from_utf8(buf.0.lock().expect("lock").clone()).expect("utf8");
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1, "{out}");
        let v: serde_json::Value = serde_json::from_str(lines[0]).expect("json");
        assert_eq!(v["request_id"], "r1");
        assert_eq!(v["output_tokens"], 3);
        assert_eq!(v["ttft_ms"], 1.5);
        assert_eq!(v["target"], REQUEST_TARGET);
    }
}
