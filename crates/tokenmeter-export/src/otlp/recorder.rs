//! A `metrics::Recorder` that forwards to an OpenTelemetry SDK meter, mapping emitted names
//! back to OTel names, units and bucket bounds through the catalog.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{BoundCounter, BoundGauge, BoundHistogram, Meter};
use tokenmeter_core::catalog::MetricKind;

use crate::names::{NameMap, sanitize_otel_name};

/// Forwards `metrics` counters, gauges and histograms to an OpenTelemetry [`Meter`].
///
/// Names found in the catalog (under any preset or configured prefix) are exported with their
/// OTel name, UCUM unit, description and bucket bounds; label keys go back to OTel attribute
/// keys (`model_name` and `gen_ai_request_model` → `gen_ai.request.model`). Other names are
/// exported as they are, with `:` replaced. Each handle is bound to its attribute set once,
/// at registration, so recording does no attribute lookup.
///
/// Counters and gauges keep state per series (a gauge's current value for
/// `increment`/`decrement`, a counter's last `absolute` value), so registering the same key
/// again (the core resolving handles past its cache, two meters with the same labels) hands
/// back the same series object rather than a fresh one starting at 0.
#[derive(Clone)]
pub struct OtlpRecorder {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for OtlpRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpRecorder").finish_non_exhaustive()
    }
}

struct Shared {
    meter: Meter,
    names: NameMap,
    instruments: Mutex<HashMap<(MetricKind, String), Instrument>>,
    descriptions: Mutex<HashMap<String, (Option<Unit>, SharedString)>>,
    /// One series object per key, shared by every registration of that key.
    counters: Mutex<HashMap<Key, Arc<OtlpCounter>>>,
    gauges: Mutex<HashMap<Key, Arc<OtlpGauge>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[derive(Clone)]
enum Instrument {
    Counter(opentelemetry::metrics::Counter<u64>),
    Gauge(opentelemetry::metrics::Gauge<f64>),
    Histogram(opentelemetry::metrics::Histogram<f64>),
}

impl OtlpRecorder {
    pub(crate) fn new(meter: Meter, names: NameMap) -> Self {
        OtlpRecorder {
            shared: Arc::new(Shared {
                meter,
                names,
                instruments: Mutex::new(HashMap::new()),
                descriptions: Mutex::new(HashMap::new()),
                counters: Mutex::new(HashMap::new()),
                gauges: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn instrument(&self, kind: MetricKind, name: &str) -> Instrument {
        let s = &self.shared;
        let mut map = lock(&s.instruments);
        if let Some(i) = map.get(&(kind, name.to_owned())) {
            return i.clone();
        }
        let described = lock(&s.descriptions).get(name).cloned();
        let (otel_name, unit, description, buckets) = match s.names.get(name) {
            Some(info) => (
                info.otel_name.clone(),
                info.def.unit.to_owned(),
                info.def.description.to_owned(),
                info.buckets.clone(),
            ),
            None => (
                sanitize_otel_name(name),
                described
                    .as_ref()
                    .and_then(|(u, _)| *u)
                    .map_or(String::new(), |u| ucum(u).to_owned()),
                described
                    .as_ref()
                    .map_or(String::new(), |(_, d)| d.to_string()),
                None,
            ),
        };
        let m = &s.meter;
        let inst = match kind {
            MetricKind::Counter => Instrument::Counter(
                m.u64_counter(otel_name)
                    .with_unit(unit)
                    .with_description(description)
                    .build(),
            ),
            MetricKind::Gauge => Instrument::Gauge(
                m.f64_gauge(otel_name)
                    .with_unit(unit)
                    .with_description(description)
                    .build(),
            ),
            MetricKind::Histogram => {
                let mut b = m
                    .f64_histogram(otel_name)
                    .with_unit(unit)
                    .with_description(description);
                if let Some(bounds) = buckets {
                    b = b.with_boundaries(bounds);
                }
                Instrument::Histogram(b.build())
            }
        };
        map.insert((kind, name.to_owned()), inst.clone());
        inst
    }

    fn attributes(&self, key: &Key) -> Vec<KeyValue> {
        key.labels()
            .map(|l| {
                KeyValue::new(
                    self.shared.names.otel_label(l.key()).to_owned(),
                    l.value().to_owned(),
                )
            })
            .collect()
    }

    fn describe(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        lock(&self.shared.descriptions).insert(key.as_str().to_owned(), (unit, description));
    }
}

fn ucum(unit: Unit) -> &'static str {
    match unit {
        Unit::Seconds => "s",
        Unit::Milliseconds => "ms",
        Unit::Microseconds => "us",
        Unit::Nanoseconds => "ns",
        Unit::Bytes => "By",
        Unit::Percent => "%",
        Unit::Count => "1",
        _ => "",
    }
}

impl Recorder for OtlpRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(key, unit, description);
    }

    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> Counter {
        let mut counters = lock(&self.shared.counters);
        if let Some(c) = counters.get(key) {
            return Counter::from_arc(Arc::clone(c));
        }
        let Instrument::Counter(c) = self.instrument(MetricKind::Counter, key.name()) else {
            return Counter::noop();
        };
        let series = Arc::new(OtlpCounter {
            bound: c.bind(&self.attributes(key)),
            last: AtomicU64::new(0),
        });
        counters.insert(key.clone(), Arc::clone(&series));
        Counter::from_arc(series)
    }

    fn register_gauge(&self, key: &Key, _metadata: &Metadata<'_>) -> Gauge {
        let mut gauges = lock(&self.shared.gauges);
        if let Some(g) = gauges.get(key) {
            return Gauge::from_arc(Arc::clone(g));
        }
        let Instrument::Gauge(g) = self.instrument(MetricKind::Gauge, key.name()) else {
            return Gauge::noop();
        };
        let series = Arc::new(OtlpGauge {
            bound: g.bind(&self.attributes(key)),
            value: AtomicU64::new(0),
        });
        gauges.insert(key.clone(), Arc::clone(&series));
        Gauge::from_arc(series)
    }

    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        let Instrument::Histogram(h) = self.instrument(MetricKind::Histogram, key.name()) else {
            return Histogram::noop();
        };
        Histogram::from_arc(Arc::new(OtlpHistogram {
            bound: h.bind(&self.attributes(key)),
        }))
    }
}

struct OtlpCounter {
    bound: BoundCounter<u64>,
    /// Highest absolute value seen, so `absolute` forwards only increases.
    last: AtomicU64,
}

impl CounterFn for OtlpCounter {
    fn increment(&self, value: u64) {
        self.bound.add(value);
    }

    fn absolute(&self, value: u64) {
        let prev = self.last.fetch_max(value, Ordering::AcqRel);
        if value > prev {
            self.bound.add(value - prev);
        }
    }
}

struct OtlpGauge {
    bound: BoundGauge<f64>,
    /// f64 bits of the current value, for increment/decrement.
    value: AtomicU64,
}

impl OtlpGauge {
    fn adjust(&self, delta: f64) {
        let mut cur = self.value.load(Ordering::Acquire);
        loop {
            let next = (f64::from_bits(cur) + delta).to_bits();
            match self
                .value
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => {
                    self.bound.record(f64::from_bits(next));
                    return;
                }
                Err(actual) => cur = actual,
            }
        }
    }
}

impl GaugeFn for OtlpGauge {
    fn increment(&self, value: f64) {
        self.adjust(value);
    }

    fn decrement(&self, value: f64) {
        self.adjust(-value);
    }

    fn set(&self, value: f64) {
        self.value.store(value.to_bits(), Ordering::Release);
        self.bound.record(value);
    }
}

struct OtlpHistogram {
    bound: BoundHistogram<f64>,
}

impl HistogramFn for OtlpHistogram {
    fn record(&self, value: f64) {
        self.bound.record(value);
    }

    fn record_many(&self, value: f64, count: usize) {
        for _ in 0..count {
            self.bound.record(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider as _;

    fn value(r: &OtlpRecorder, key: &Key) -> f64 {
        let gauges = lock(&r.shared.gauges);
        f64::from_bits(
            gauges
                .get(key)
                .expect("gauge")
                .value
                .load(Ordering::Acquire),
        )
    }

    #[test]
    fn re_registering_a_key_shares_the_series() {
        let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder().build();
        let r = OtlpRecorder::new(provider.meter("t"), NameMap::new(&[], &[]));
        let meta = Metadata::new("t", metrics::Level::INFO, None);
        let key = Key::from_parts(
            "tokenmeter_requests_running",
            vec![metrics::Label::new("model", "a")],
        );
        let first = r.register_gauge(&key, &meta);
        let second = r.register_gauge(&key, &meta);
        first.increment(2.0);
        second.increment(3.0);
        first.decrement(1.0);
        assert_eq!(value(&r, &key), 4.0);
        // Another label set is another series.
        let other = Key::from_parts(
            "tokenmeter_requests_running",
            vec![metrics::Label::new("model", "b")],
        );
        r.register_gauge(&other, &meta).increment(1.0);
        assert_eq!(value(&r, &other), 1.0);
        assert_eq!(value(&r, &key), 4.0);

        let counter_key = Key::from_name("tokenmeter_output_tokens_total");
        r.register_counter(&counter_key, &meta).absolute(5);
        r.register_counter(&counter_key, &meta).absolute(7);
        let counters = lock(&r.shared.counters);
        assert_eq!(counters.len(), 1);
        assert_eq!(
            counters
                .get(&counter_key)
                .expect("counter")
                .last
                .load(Ordering::Acquire),
            7
        );
    }
}
