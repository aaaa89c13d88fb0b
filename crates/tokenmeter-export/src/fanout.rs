//! A `metrics` recorder that forwards to several recorders, passing weighted histogram
//! records through as they are.
//!
//! `metrics-util`'s fanout forwards `record_many(v, n)` as `n` separate records, which turns
//! the guard's one flush per bucket of inter-token latencies back into one record per token
//! in every exporter. This one forwards `record_many` whole.

use std::sync::Arc;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

/// Forwards every registration, description and update to each of its recorders.
///
/// [`crate::Exporters`] builds one for the exporters it composes; build your own to put
/// tokenmeter's exporters beside a recorder you already run:
///
/// ```
/// use tokenmeter_export::{Fanout, Prometheus};
/// let mut prom = Prometheus::new().without_listener().build()?;
/// let fanout = Fanout::new()
///     .with(prom.take_recorder().expect("recorder"))
///     .with(metrics::NoopRecorder);
/// metrics::with_local_recorder(&fanout, || {
///     metrics::histogram!("my_step_seconds").record_many(0.02, 64);
/// });
/// assert!(prom.render().contains("my_step_seconds_count 64"));
/// # Ok::<(), tokenmeter_export::Error>(())
/// ```
#[derive(Default)]
pub struct Fanout {
    recorders: Vec<Box<dyn Recorder + Send + Sync>>,
}

impl std::fmt::Debug for Fanout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fanout")
            .field("recorders", &self.recorders.len())
            .finish()
    }
}

impl Fanout {
    /// A fanout to no recorder yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a recorder.
    #[must_use]
    pub fn with<R: Recorder + Send + Sync + 'static>(mut self, recorder: R) -> Self {
        self.recorders.push(Box::new(recorder));
        self
    }

    /// Adds a boxed recorder.
    #[must_use]
    pub fn with_boxed(mut self, recorder: Box<dyn Recorder + Send + Sync>) -> Self {
        self.recorders.push(recorder);
        self
    }

    /// How many recorders it forwards to.
    pub fn len(&self) -> usize {
        self.recorders.len()
    }

    /// True when it forwards to no recorder.
    pub fn is_empty(&self) -> bool {
        self.recorders.is_empty()
    }
}

struct Many<T>(Vec<T>);

impl CounterFn for Many<Counter> {
    fn increment(&self, value: u64) {
        self.0.iter().for_each(|c| c.increment(value));
    }

    fn absolute(&self, value: u64) {
        self.0.iter().for_each(|c| c.absolute(value));
    }
}

impl GaugeFn for Many<Gauge> {
    fn increment(&self, value: f64) {
        self.0.iter().for_each(|g| g.increment(value));
    }

    fn decrement(&self, value: f64) {
        self.0.iter().for_each(|g| g.decrement(value));
    }

    fn set(&self, value: f64) {
        self.0.iter().for_each(|g| g.set(value));
    }
}

impl HistogramFn for Many<Histogram> {
    fn record(&self, value: f64) {
        self.0.iter().for_each(|h| h.record(value));
    }

    fn record_many(&self, value: f64, count: usize) {
        self.0.iter().for_each(|h| h.record_many(value, count));
    }
}

impl Recorder for Fanout {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        for r in &self.recorders {
            r.describe_counter(key.clone(), unit, description.clone());
        }
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        for r in &self.recorders {
            r.describe_gauge(key.clone(), unit, description.clone());
        }
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        for r in &self.recorders {
            r.describe_histogram(key.clone(), unit, description.clone());
        }
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        let all = self
            .recorders
            .iter()
            .map(|r| r.register_counter(key, metadata))
            .collect();
        Counter::from_arc(Arc::new(Many(all)))
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        let all = self
            .recorders
            .iter()
            .map(|r| r.register_gauge(key, metadata))
            .collect();
        Gauge::from_arc(Arc::new(Many(all)))
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        let all = self
            .recorders
            .iter()
            .map(|r| r.register_histogram(key, metadata))
            .collect();
        Histogram::from_arc(Arc::new(Many(all)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// Logs what reaches a histogram, to see weighted records arrive whole.
    #[derive(Clone, Default)]
    struct Log(Arc<Mutex<Vec<String>>>);

    impl HistogramFn for Log {
        fn record(&self, value: f64) {
            self.0.lock().expect("log").push(format!("record {value}"));
        }
        fn record_many(&self, value: f64, count: usize) {
            self.0
                .lock()
                .expect("log")
                .push(format!("record_many {value} x{count}"));
        }
    }

    impl CounterFn for Log {
        fn increment(&self, value: u64) {
            self.0.lock().expect("log").push(format!("inc {value}"));
        }
        fn absolute(&self, value: u64) {
            self.0.lock().expect("log").push(format!("abs {value}"));
        }
    }

    impl GaugeFn for Log {
        fn increment(&self, value: f64) {
            self.0.lock().expect("log").push(format!("gauge+ {value}"));
        }
        fn decrement(&self, value: f64) {
            self.0.lock().expect("log").push(format!("gauge- {value}"));
        }
        fn set(&self, value: f64) {
            self.0.lock().expect("log").push(format!("set {value}"));
        }
    }

    impl Recorder for Log {
        fn describe_counter(&self, k: KeyName, _: Option<Unit>, _: SharedString) {
            self.0
                .lock()
                .expect("log")
                .push(format!("describe {}", k.as_str()));
        }
        fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
        fn register_counter(&self, _: &Key, _: &Metadata<'_>) -> Counter {
            Counter::from_arc(Arc::new(self.clone()))
        }
        fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
            Gauge::from_arc(Arc::new(self.clone()))
        }
        fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
            Histogram::from_arc(Arc::new(self.clone()))
        }
    }

    #[test]
    fn forwards_everything_to_each_recorder_and_weighted_records_whole() {
        let (a, b) = (Log::default(), Log::default());
        let fanout = Fanout::new().with(a.clone()).with(b.clone());
        assert_eq!(fanout.len(), 2);
        let meta = Metadata::new("t", metrics::Level::INFO, None);
        fanout.describe_counter("c".into(), None, "d".into());
        fanout
            .register_counter(&Key::from_name("c"), &meta)
            .increment(2);
        fanout
            .register_counter(&Key::from_name("c"), &meta)
            .absolute(9);
        let g = fanout.register_gauge(&Key::from_name("g"), &meta);
        g.set(1.5);
        g.increment(1.0);
        g.decrement(0.5);
        let h = fanout.register_histogram(&Key::from_name("h"), &meta);
        h.record(0.25);
        h.record_many(0.5, 1_000_000);
        let want = [
            "describe c",
            "inc 2",
            "abs 9",
            "set 1.5",
            "gauge+ 1",
            "gauge- 0.5",
            "record 0.25",
            "record_many 0.5 x1000000",
        ];
        for log in [a, b] {
            assert_eq!(*log.0.lock().expect("log"), want);
        }
        assert!(Fanout::new().is_empty());
    }
}
