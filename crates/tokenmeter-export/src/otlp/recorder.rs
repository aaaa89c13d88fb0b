//! A `metrics::Recorder` that forwards to an OpenTelemetry SDK meter, mapping emitted names
//! back to OTel names, units and bucket bounds through the catalog.
//!
//! Histogram observations are batched ahead of the SDK: recording appends `(value, count)` to
//! the series' pending list (one uncontended lock, no SDK call), and the batches are replayed
//! into the SDK off the caller's thread, by a drain every [`DRAIN_INTERVAL`] on the export
//! runtime and at every collection (an SDK callback that runs before the SDK reads its
//! aggregates, so each export holds everything recorded before it). The SDK has no weighted
//! record, so a guard's flush of `n` inter-token latencies in one bucket would otherwise cost
//! the generation loop `n` SDK records.
//!
//! If the drain falls behind (more than [`MAX_PENDING`] batches waiting), further batches are
//! folded into a count and sum per explicit bucket and replayed as the bucket's mean: bucket
//! counts and the sum stay exact, only min/max (and exponential histograms' resolution) coarsen,
//! and memory stays fixed. Nothing is dropped and the caller never replays.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokenmeter_core::emit::lock;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};
use opentelemetry::KeyValue;
use opentelemetry::metrics::{BoundCounter, BoundGauge, BoundHistogram, Meter, ObservableGauge};
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
    /// Shared with the drains, which must reach every series for as long as the SDK can
    /// collect, even after the recorder itself is dropped (handles outlive it in meters).
    histograms: Arc<HistogramSet>,
    /// Kept alive for its callback, which drains the pending histogram batches at collection.
    _drain_at_collect: ObservableGauge<u64>,
}

/// Every histogram series, by key.
#[derive(Default)]
struct HistogramSet(Mutex<HashMap<Key, Arc<OtlpHistogram>>>);

impl HistogramSet {
    fn drain(&self) {
        let series: Vec<Arc<OtlpHistogram>> = lock(&self.0).values().cloned().collect();
        for h in series {
            h.drain();
        }
    }
}

/// How often pending histogram batches are replayed into the SDK between collections.
pub(crate) const DRAIN_INTERVAL: Duration = Duration::from_millis(100);

/// Pending batches per series past which new ones are folded into per-bucket totals, so
/// memory stays bounded when the drain falls behind (or none runs: the exporter dropped).
const MAX_PENDING: usize = 4096;

/// The SDK's default explicit bounds, used for histograms outside the catalog (kept in step
/// with `opentelemetry_sdk`'s default aggregation, which such instruments get).
const SDK_DEFAULT_BOUNDS: &[f64] = &[
    0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0, 2500.0, 5000.0, 7500.0,
    10000.0,
];

#[derive(Clone)]
enum Instrument {
    Counter(opentelemetry::metrics::Counter<u64>),
    Gauge(opentelemetry::metrics::Gauge<f64>),
    /// The instrument and its explicit bucket bounds.
    Histogram(opentelemetry::metrics::Histogram<f64>, Arc<[f64]>),
}

impl OtlpRecorder {
    pub(crate) fn new(meter: Meter, names: NameMap) -> Self {
        let histograms = Arc::new(HistogramSet::default());
        let set = Arc::clone(&histograms);
        // An observable instrument that observes nothing (so it is never exported); the SDK
        // runs its callback at each collection, before reading the aggregates.
        let drain = meter
            .u64_observable_gauge("tokenmeter.internal.histogram_drain")
            .with_callback(move |_| set.drain())
            .build();
        OtlpRecorder {
            shared: Arc::new(Shared {
                meter,
                names,
                instruments: Mutex::new(HashMap::new()),
                descriptions: Mutex::new(HashMap::new()),
                counters: Mutex::new(HashMap::new()),
                gauges: Mutex::new(HashMap::new()),
                histograms,
                _drain_at_collect: drain,
            }),
        }
    }

    /// The periodic drain's work: replays pending histogram batches into the SDK; false once
    /// nothing can record or collect any more. Holds no reference that keeps them alive.
    pub(crate) fn drainer(&self) -> impl Fn() -> bool + Send + 'static {
        let set = Arc::downgrade(&self.shared.histograms);
        move || match set.upgrade() {
            Some(set) => {
                set.drain();
                true
            }
            None => false,
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
                let bounds: Arc<[f64]> = match buckets {
                    Some(bounds) => {
                        b = b.with_boundaries(bounds.clone());
                        bounds.into()
                    }
                    None => SDK_DEFAULT_BOUNDS.into(),
                };
                Instrument::Histogram(b.build(), bounds)
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
        let mut histograms = lock(&self.shared.histograms.0);
        if let Some(h) = histograms.get(key) {
            return Histogram::from_arc(Arc::clone(h));
        }
        let Instrument::Histogram(h, bounds) = self.instrument(MetricKind::Histogram, key.name())
        else {
            return Histogram::noop();
        };
        let series = Arc::new(OtlpHistogram {
            bound: h.bind(&self.attributes(key)),
            pending: Mutex::new(Pending {
                batches: Vec::new(),
                folded: Vec::new(),
                bounds,
            }),
        });
        histograms.insert(key.clone(), Arc::clone(&series));
        Histogram::from_arc(series)
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
    pending: Mutex<Pending>,
}

/// Observations not yet replayed into the SDK.
struct Pending {
    /// `(value, count)` as recorded.
    batches: Vec<(f64, usize)>,
    /// Past [`MAX_PENDING`] batches: `(count, sum)` per bucket of `bounds` (the last one is
    /// the overflow bucket); empty until first needed.
    folded: Vec<(u64, f64)>,
    bounds: Arc<[f64]>,
}

impl OtlpHistogram {
    fn drain(&self) {
        let (batches, folded) = {
            let mut p = lock(&self.pending);
            let folded = if p.folded.iter().any(|(n, _)| *n > 0) {
                let empty = vec![(0, 0.0); p.folded.len()];
                std::mem::replace(&mut p.folded, empty)
            } else {
                Vec::new()
            };
            (std::mem::take(&mut p.batches), folded)
        };
        for (value, count) in batches {
            self.replay(value, count as u64);
        }
        for (count, sum) in folded {
            if count > 0 {
                // The mean of values in one bucket lies in that bucket.
                self.replay(sum / count as f64, count);
            }
        }
    }

    fn replay(&self, value: f64, count: u64) {
        for _ in 0..count {
            self.bound.record(value);
        }
    }
}

impl HistogramFn for OtlpHistogram {
    fn record(&self, value: f64) {
        self.record_many(value, 1);
    }

    fn record_many(&self, value: f64, count: usize) {
        if count == 0 || value.is_nan() {
            return;
        }
        let mut p = lock(&self.pending);
        if p.batches.len() < MAX_PENDING {
            p.batches.push((value, count));
            return;
        }
        if p.folded.is_empty() {
            p.folded = vec![(0, 0.0); p.bounds.len() + 1];
        }
        // OTel buckets are (previous, bound]: the first bound >= value.
        let i = p.bounds.partition_point(|b| *b < value);
        if let Some(cell) = p.folded.get_mut(i) {
            cell.0 += count as u64;
            cell.1 += value * count as f64;
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

    #[derive(Debug)]
    struct Discard;

    impl opentelemetry_sdk::metrics::exporter::PushMetricExporter for Discard {
        async fn export(
            &self,
            _: &opentelemetry_sdk::metrics::data::ResourceMetrics,
        ) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }
        fn force_flush(&self) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }
        fn shutdown_with_timeout(
            &self,
            _: std::time::Duration,
        ) -> opentelemetry_sdk::error::OTelSdkResult {
            Ok(())
        }
        fn temporality(&self) -> opentelemetry_sdk::metrics::Temporality {
            opentelemetry_sdk::metrics::Temporality::Cumulative
        }
    }

    #[test]
    fn histogram_batches_wait_for_a_drain_and_stay_bounded() {
        // A reader, so the SDK keeps the collection callback (and can collect).
        let reader = opentelemetry_sdk::metrics::PeriodicReader::builder(Discard)
            .with_interval(std::time::Duration::from_secs(3600))
            .build();
        let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder()
            .with_reader(reader)
            .build();
        let r = OtlpRecorder::new(provider.meter("t"), NameMap::new(&[], &[]));
        let meta = Metadata::new("t", metrics::Level::INFO, None);
        let key = Key::from_name("tokenmeter_inter_token_latency_seconds");
        let h = r.register_histogram(&key, &meta);
        let pending = || {
            let set = lock(&r.shared.histograms.0);
            let series = set.get(&key).expect("series");
            lock(&series.pending).batches.len()
        };
        h.record_many(0.01, 1_000_000);
        h.record(0.02);
        h.record_many(0.03, 0);
        assert_eq!(pending(), 2, "one batch per call, none for count 0");
        // Registering again hands back the same series.
        r.register_histogram(&key, &meta).record(0.5);
        assert_eq!(pending(), 3);
        let drain = r.drainer();
        assert!(drain());
        assert_eq!(pending(), 0);
        // Past the cap, batches fold into per-bucket totals over the ITL bounds: nothing is
        // replayed on this thread and nothing is lost.
        for _ in 0..MAX_PENDING {
            h.record(0.1);
        }
        assert_eq!(pending(), MAX_PENDING);
        h.record_many(0.1, 5);
        h.record_many(0.3, 2);
        {
            let set = lock(&r.shared.histograms.0);
            let p = lock(&set.get(&key).expect("series").pending);
            assert_eq!(p.batches.len(), MAX_PENDING);
            let folded: Vec<_> = p.folded.iter().filter(|(n, _)| *n > 0).collect();
            assert_eq!(folded.len(), 2, "0.1 and 0.3 lie in different ITL buckets");
            assert_eq!(folded.iter().map(|(n, _)| n).sum::<u64>(), 7);
            assert!((folded.iter().map(|(_, s)| s).sum::<f64>() - 1.1).abs() < 1e-12);
        }
        assert!(drain());
        assert_eq!(pending(), 0);
        // The drain outlives the recorder while the SDK can collect, and stops after.
        drop(r);
        assert!(drain());
        drop(provider);
        assert!(!drain());
        h.record(0.1); // a handle left in a meter stays harmless
    }
}
