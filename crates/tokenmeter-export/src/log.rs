//! The JSON request log: one line per finished request, from the core's
//! `tokenmeter::request` event, through `tracing-subscriber`'s JSON formatter and
//! `tracing-appender`'s non-blocking writer (so a stalled stdout never blocks the caller).

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokenmeter_core::Meter;
use tracing::Subscriber;
use tracing_appender::non_blocking::{ErrorCounter, NonBlocking, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::registry::LookupSpan;

use crate::Error;
use crate::stats::{dropped_metric_name, dropped_metric_name_for, publish};

/// The target of the core's request span and request-log event.
pub use tokenmeter_core::names::REQUEST_TARGET;

/// Default capacity of the request log's line queue (see [`RequestLog::buffer_lines`]).
pub const DEFAULT_BUFFER_LINES: usize = 8192;

/// How often the drop counter is published by default.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Where the request log goes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogDestination {
    /// Standard output (default).
    #[default]
    Stdout,
    /// Standard error.
    Stderr,
}

/// Builder of the JSON request log.
///
/// It passes only the core's INFO-level `tokenmeter::request` events (one per finished
/// request); the DEBUG phase events on the request span (scheduled, first token) go to the
/// trace, not the log.
///
/// Each finished request gives one JSON object per line with the fields `request_id`,
/// `model`, `prompt_tokens`, `output_tokens`, `ttft_ms`, `tpot_ms`, `e2e_ms`, `queue_ms`,
/// `finish_reason`, `error_type`, `nan`, `pos_inf`, `neg_inf`, plus `timestamp`, `level`,
/// `target` and `message`. With a GPU sampler attached to the meter, the line also carries the
/// request's `energy_j` and `cost` measured by its end, and the next sample adds a second
/// line, message `"request energy settled"`, with the same `request_id` and its totals
/// `energy_j`, `cost`, and the part of them measured after its end, `late_energy_j`,
/// `late_cost` (docs/gpu.md, "Energy and cost per request"). No prompt or output text is logged unless the meter opts in with
/// `MeterBuilder::capture_text` (a redaction hook); then the redacted text comes as `prompt`
/// and `output`, with `prompt_truncated` / `output_truncated` when the size cap cut it.
///
/// The line is formatted on the caller's thread and handed to a bounded queue; a writer
/// thread (`tokenmeter-request-log`) writes it out. When the destination stalls (a full stdout
/// pipe) and the queue is full, new lines are dropped, never waited for, and counted in
/// the self-metric `tokenmeter_export_dropped_total{signal="logs", reason="queue_full"}`
/// (under the meter's prefix when [`meter`](Self::meter) is given).
///
/// ```
/// use tracing_subscriber::layer::SubscriberExt;
/// let log = tokenmeter_export::RequestLog::new().build()?; // keep it: dropping it flushes
/// let subscriber = tracing_subscriber::registry().with(log.layer());
/// # drop(subscriber);
/// # Ok::<(), tokenmeter_export::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct RequestLog {
    destination: LogDestination,
    buffer_lines: usize,
    drop_metric: Option<String>,
    publish_every: Duration,
}

impl Default for RequestLog {
    fn default() -> Self {
        RequestLog {
            destination: LogDestination::Stdout,
            buffer_lines: DEFAULT_BUFFER_LINES,
            drop_metric: None,
            publish_every: PUBLISH_EVERY,
        }
    }
}

impl RequestLog {
    /// To standard output, queue of [`DEFAULT_BUFFER_LINES`] lines.
    pub fn new() -> Self {
        Self::default()
    }

    /// Chooses standard output or standard error.
    pub fn destination(mut self, destination: LogDestination) -> Self {
        self.destination = destination;
        self
    }

    /// Capacity of the line queue (default [`DEFAULT_BUFFER_LINES`], at least 1). Bounds the
    /// memory a stalled destination can hold; lines beyond it are dropped and counted.
    pub fn buffer_lines(mut self, lines: usize) -> Self {
        self.buffer_lines = lines.max(1);
        self
    }

    /// Counts dropped lines under this meter's drop self-metric (its prefix), instead of the
    /// default prefix's.
    pub fn meter(mut self, meter: &Meter) -> Self {
        self.drop_metric = Some(dropped_metric_name_for(meter));
        self
    }

    #[cfg(test)]
    pub(crate) fn publish_every(mut self, every: Duration) -> Self {
        self.publish_every = every;
        self
    }

    /// Starts the writer thread on the chosen destination.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the drop-counting thread cannot be spawned.
    pub fn build(self) -> Result<RequestLogWriter, Error> {
        match self.destination {
            LogDestination::Stdout => self.build_with_writer(std::io::stdout()),
            LogDestination::Stderr => self.build_with_writer(std::io::stderr()),
        }
    }

    /// Starts the writer thread on any writer (a file, a socket); the destination option is
    /// ignored. The writer is only ever called from the writer thread.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the drop-counting thread cannot be spawned.
    pub fn build_with_writer<W: Write + Send + 'static>(
        self,
        writer: W,
    ) -> Result<RequestLogWriter, Error> {
        let (non_blocking, guard) = NonBlockingBuilder::default()
            .lossy(true)
            .buffered_lines_limit(self.buffer_lines)
            .thread_name("tokenmeter-request-log")
            .finish(writer);
        let drops = Arc::new(Drops {
            counter: non_blocking.error_counter(),
            published: AtomicUsize::new(0),
            metric: self
                .drop_metric
                .unwrap_or_else(|| dropped_metric_name(crate::DEFAULT_PREFIX)),
        });
        let stop = Arc::new(AtomicBool::new(false));
        let (d, s, every) = (drops.clone(), stop.clone(), self.publish_every);
        let monitor = std::thread::Builder::new()
            .name("tokenmeter-request-log-drops".into())
            .spawn(move || {
                while !s.load(Ordering::Acquire) {
                    let start = Instant::now();
                    // Park until the period is over (or the writer is dropped); a spurious
                    // wake-up parks again.
                    while !s.load(Ordering::Acquire) {
                        let elapsed = start.elapsed();
                        if elapsed >= every {
                            d.publish();
                            break;
                        }
                        std::thread::park_timeout(every - elapsed);
                    }
                }
            })
            .map_err(Error::Io)?;
        Ok(RequestLogWriter {
            writer: non_blocking,
            guard: Some(guard),
            drops,
            stop,
            monitor: Some(monitor),
        })
    }

    /// A layer writing synchronously to any `MakeWriter` (a buffer in tests, your own
    /// non-blocking writer). The writer is called on the thread that finishes the request,
    /// so it must not block; [`build`](Self::build) gives a non-blocking one.
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

/// Lost lines, and how many of them the self-metric already carries.
struct Drops {
    counter: ErrorCounter,
    published: AtomicUsize,
    metric: String,
}

impl Drops {
    fn publish(&self) {
        let total = self.counter.dropped_lines();
        let before = self.published.swap(total, Ordering::AcqRel);
        publish(
            &self.metric,
            "logs",
            "queue_full",
            total.saturating_sub(before) as u64,
        );
    }
}

/// A running request log: the non-blocking writer, its writer thread and the thread that
/// publishes the drop count. Dropping it writes out what is queued (waiting at most about
/// a second for the destination, as `tracing-appender`'s guard does) and publishes the
/// final drop count.
pub struct RequestLogWriter {
    writer: NonBlocking,
    guard: Option<WorkerGuard>,
    drops: Arc<Drops>,
    stop: Arc<AtomicBool>,
    monitor: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for RequestLogWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestLogWriter")
            .field("dropped_lines", &self.dropped_lines())
            .finish_non_exhaustive()
    }
}

impl RequestLogWriter {
    /// The JSON layer, writing to the non-blocking queue. May be called more than once (the
    /// layers share the queue).
    pub fn layer<S>(&self) -> Box<dyn Layer<S> + Send + Sync>
    where
        S: Subscriber + for<'a> LookupSpan<'a>,
    {
        RequestLog::layer_with_writer(self.writer.clone())
    }

    /// Lines dropped so far because the queue was full.
    pub fn dropped_lines(&self) -> u64 {
        self.drops.counter.dropped_lines() as u64
    }
}

impl Drop for RequestLogWriter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.monitor.take() {
            t.thread().unpark();
            let _ = t.join();
        }
        // Flushes the queue (bounded by tracing-appender's own timeouts).
        drop(self.guard.take());
        self.drops.publish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::mpsc;
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

    impl Buf {
        fn lines(&self) -> Vec<String> {
            let out = String::from_utf8(self.0.lock().expect("lock").clone()).expect("utf8");
            out.lines().map(str::to_owned).collect()
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
        let lines = buf.lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        let v: serde_json::Value = serde_json::from_str(&lines[0]).expect("json");
        assert_eq!(v["request_id"], "r1");
        assert_eq!(v["output_tokens"], 3);
        assert_eq!(v["ttft_ms"], 1.5);
        assert_eq!(v["target"], REQUEST_TARGET);
    }

    #[test]
    fn energy_and_cost_by_the_end_then_the_settled_totals() {
        use tokenmeter_core::Finish;
        use tokenmeter_core::attribution::Charge;
        let buf = Buf::default();
        let b2 = buf.clone();
        let sub =
            tracing_subscriber::registry().with(RequestLog::layer_with_writer(move || b2.clone()));
        let meter = Meter::default();
        let mut sampler = meter.subscribe_requests();
        tracing::subscriber::with_default(sub, || {
            let mut req = meter.request().request_id("r1").start();
            assert!(sampler.begin_interval().iter().all(|t| *t == 0));
            // 2.5 J and 1 GPU-second at 3.6 per GPU-hour, measured while it ran.
            sampler.charge(&[Charge::new(Some(2_500_000), 1_000_000_000, Some(3.6))]);
            req.token();
            req.finish(Finish::Stop);
            // The interval it ended in, measured at the next sample: 0.5 J more.
            assert_eq!(sampler.begin_interval(), vec![1]);
            sampler.charge(&[Charge::new(Some(500_000), 0, Some(3.6))]);
        });
        let lines: Vec<serde_json::Value> = buf
            .lines()
            .iter()
            .map(|l| serde_json::from_str(l).expect("json"))
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["message"], "request finished");
        assert_eq!(lines[0]["energy_j"], 2.5);
        let cost = |v: &serde_json::Value| v.as_f64().expect("a number");
        assert!((cost(&lines[0]["cost"]) - 0.001).abs() < 1e-15);
        assert_eq!(lines[1]["message"], "request energy settled");
        assert_eq!(lines[1]["request_id"], "r1");
        assert_eq!(lines[1]["energy_j"], 3.0);
        assert_eq!(lines[1]["late_energy_j"], 0.5);
        assert!((cost(&lines[1]["cost"]) - 0.001).abs() < 1e-15);
        assert_eq!(lines[1]["late_cost"], 0.0);
        assert_eq!(sampler.tracked(), 0);
    }

    /// A destination that stalls: the first write signals `entered` and waits for `release`.
    struct Stalled {
        buf: Buf,
        entered: Option<mpsc::Sender<()>>,
        release: mpsc::Receiver<()>,
    }
    impl Write for Stalled {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            if let Some(tx) = self.entered.take() {
                let _ = tx.send(());
                let _ = self.release.recv();
            }
            self.buf.write(b)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_destination_drops_and_counts_lines_instead_of_blocking() {
        let buf = Buf::default();
        let (entered_tx, entered) = mpsc::channel();
        let (release_tx, release) = mpsc::channel();
        let stalled = Stalled {
            buf: buf.clone(),
            entered: Some(entered_tx),
            release,
        };
        let meter = Meter::builder().prefix("acme").build();
        let log = RequestLog::new()
            .buffer_lines(2)
            .meter(&meter)
            // The test publishes on drop, on its own thread, so the periodic publisher must
            // not take the count first.
            .publish_every(Duration::from_secs(86_400))
            .build_with_writer(stalled)
            .expect("build");
        let sub = tracing_subscriber::registry().with(log.layer());
        let recorder = metrics_util::debugging::DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            tracing::subscriber::with_default(sub, || {
                tracing::info!(target: REQUEST_TARGET, request_id = "r0", "request finished");
                // The writer thread now holds r0 and is stuck in the destination.
                entered.recv().expect("writer entered");
                for i in 1..=10 {
                    tracing::info!(target: REQUEST_TARGET, request_id = i, "request finished");
                }
            });
            // Two lines fit in the queue, eight were dropped without waiting.
            assert_eq!(log.dropped_lines(), 8);
            release_tx.send(()).expect("release");
            drop(log);
        });
        let lines = buf.lines();
        assert_eq!(lines.len(), 3, "{lines:?}");
        let ids: Vec<serde_json::Value> = lines
            .iter()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).expect("json")["request_id"].clone()
            })
            .collect();
        assert_eq!(ids, vec![serde_json::json!("r0"), 1.into(), 2.into()]);
        let published: Vec<_> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(k, ..)| k.key().name() == "acme_export_dropped_total")
            .collect();
        assert_eq!(published.len(), 1, "{published:?}");
        let (key, _, _, value) = &published[0];
        let labels: Vec<(&str, &str)> = key.key().labels().map(|l| (l.key(), l.value())).collect();
        assert_eq!(labels, vec![("signal", "logs"), ("reason", "queue_full")]);
        assert_eq!(
            *value,
            metrics_util::debugging::DebugValue::Counter(8),
            "{published:?}"
        );
    }
}
