//! Helpers shared by the sampler tests: a meter on the mock clock, token generation, the
//! emitted series as a recorder holds them, and the warnings a closure logs.
#![allow(clippy::unwrap_used, dead_code)]

use std::sync::{Arc, Mutex};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokenmeter_core::clock::{Clock, Mock};
use tokenmeter_core::{Finish, Meter};

pub fn meter() -> (Meter, Arc<Mock>) {
    let (clock, mock) = Clock::mock();
    (Meter::builder().model("m").clock(clock).build(), mock)
}

/// Adds `n` output tokens to the meter's totals through a real request.
pub fn generate(meter: &Meter, n: u32) {
    let mut g = meter.request().start();
    g.tokens(n);
    g.finish(Finish::Stop);
}

/// Exported series: (name, labels, value). Counters accumulate across reads (the debugging
/// recorder hands out deltas); gauges hold the last read.
pub type Series = (String, Vec<(String, String)>, DebugValue);

pub struct Exported {
    snap: Snapshotter,
    pub series: Vec<Series>,
}

impl Exported {
    pub fn new(rec: &DebuggingRecorder) -> Self {
        Exported {
            snap: rec.snapshotter(),
            series: Vec::new(),
        }
    }

    pub fn read(&mut self) {
        for (ck, _, _, v) in self.snap.snapshot().into_vec() {
            let name = ck.key().name().to_string();
            let mut labels: Vec<(String, String)> = ck
                .key()
                .labels()
                .map(|l| (l.key().to_string(), l.value().to_string()))
                .collect();
            labels.sort();
            match self
                .series
                .iter_mut()
                .find(|(n, l, _)| *n == name && *l == labels)
            {
                Some((_, _, old)) => {
                    *old = match (&*old, v) {
                        (DebugValue::Counter(a), DebugValue::Counter(b)) => {
                            DebugValue::Counter(a + b)
                        }
                        (_, v) => v,
                    }
                }
                None => self.series.push((name, labels, v)),
            }
        }
    }

    pub fn find(&self, name: &str, labels: &[(&str, &str)]) -> Option<&DebugValue> {
        self.series
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, _, v)| v)
    }

    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        match self.find(name, labels) {
            Some(DebugValue::Gauge(v)) => Some(v.0),
            Some(other) => panic!("{name} is not a gauge: {other:?}"),
            None => None,
        }
    }

    pub fn counter(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        match self.find(name, labels) {
            Some(DebugValue::Counter(v)) => Some(*v),
            Some(other) => panic!("{name} is not a counter: {other:?}"),
            None => None,
        }
    }

    pub fn names_starting(&self, prefix: &str) -> Vec<&str> {
        self.series
            .iter()
            .map(|(n, _, _)| n.as_str())
            .filter(|n| n.starts_with(prefix))
            .collect()
    }
}

/// Warnings (and errors) logged while `f` runs on this thread.
pub fn warnings<T>(f: impl FnOnce() -> T) -> (T, Vec<String>) {
    use tracing::field::{Field, Visit};
    use tracing::{Event, Level, Metadata, Subscriber, span};

    struct Capture(Arc<Mutex<Vec<String>>>);
    struct Msg(String);
    impl Visit for Msg {
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.0 = format!("{value:?}");
            }
        }
    }
    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
            span::Id::from_u64(1)
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, e: &Event<'_>) {
            if *e.metadata().level() <= Level::WARN {
                let mut m = Msg(String::new());
                e.record(&mut m);
                self.0.lock().unwrap().push(m.0);
            }
        }
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    }
    let lines = Arc::new(Mutex::new(Vec::new()));
    let out = tracing::subscriber::with_default(Capture(lines.clone()), f);
    let lines = lines.lock().unwrap().clone();
    (out, lines)
}

pub const GIB: u64 = 1 << 30;
