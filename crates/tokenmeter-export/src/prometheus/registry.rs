//! The Prometheus recorder's storage: one family per metric name, one series per label set.
//!
//! Every series is plain atomics, so recording never locks and memory is fixed per series
//! (no sample buffers to drain between scrapes). A histogram series is one counter per bucket
//! of its fixed bounds plus a sum: `record_many(v, n)` is one bucket lookup and two atomic
//! adds whatever `n` is, which is what lets the guard flush a whole bucket of inter-token
//! latencies at once. With native histograms on, the series also keeps sparse exponential
//! buckets (see `native`), and each classic bucket an exemplar slot (see `exemplar`).

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata, Recorder,
    SharedString, Unit,
};

use tokenmeter_core::emit::lock;

use super::exemplar::{ExemplarSlot, ExemplarValue, now_ms};
use super::native::{Layout, NativeBuckets};
use super::{proto, text};

/// Bucket upper bounds of one histogram family, with their `le` label values rendered once.
#[derive(Debug)]
pub(crate) struct Bounds {
    pub(crate) upper: Vec<f64>,
    /// `le="…"` for each bound, then `le="+Inf"`.
    pub(crate) le: Vec<String>,
}

impl Bounds {
    /// Sorted, deduplicated, finite bounds (the caller validated them).
    pub(crate) fn new(mut upper: Vec<f64>) -> Self {
        upper.retain(|b| b.is_finite());
        upper.sort_by(f64::total_cmp);
        upper.dedup();
        let mut le: Vec<String> = upper.iter().map(|b| format!("le=\"{b}\"")).collect();
        le.push("le=\"+Inf\"".to_owned());
        Bounds { upper, le }
    }
}

/// A counter series.
#[derive(Debug, Default)]
pub(crate) struct CounterCell(pub(crate) AtomicU64);

impl CounterCell {
    pub(crate) fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
}

impl CounterFn for CounterCell {
    fn increment(&self, value: u64) {
        self.0.fetch_add(value, Relaxed);
    }

    fn absolute(&self, value: u64) {
        self.0.fetch_max(value, Relaxed);
    }
}

/// A gauge series: the f64's bits.
#[derive(Debug, Default)]
pub(crate) struct GaugeCell(pub(crate) AtomicU64);

/// Adds `delta` to the f64 stored as bits in `cell`.
fn add_f64(cell: &AtomicU64, delta: f64) {
    let _ = cell.fetch_update(Relaxed, Relaxed, |bits| {
        Some((f64::from_bits(bits) + delta).to_bits())
    });
}

impl GaugeCell {
    pub(crate) fn get(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }
}

impl GaugeFn for GaugeCell {
    fn increment(&self, value: f64) {
        add_f64(&self.0, value);
    }

    fn decrement(&self, value: f64) {
        add_f64(&self.0, -value);
    }

    fn set(&self, value: f64) {
        self.0.store(value.to_bits(), Relaxed);
    }
}

/// A histogram series: a count per bucket (not cumulative; the last is the `+Inf` overflow)
/// and the sum of the observations; with native histograms on, the native buckets too. Each
/// bucket gets an exemplar slot once an observation with trace ids lands in it.
#[derive(Debug)]
pub(crate) struct HistogramCell {
    pub(crate) bounds: Arc<Bounds>,
    pub(crate) buckets: Box<[AtomicU64]>,
    pub(crate) sum: AtomicU64,
    native: Option<(Arc<Layout>, NativeBuckets)>,
    exemplars: OnceLock<Box<[ExemplarSlot]>>,
    keep_exemplars: bool,
}

impl HistogramCell {
    fn new(bounds: Arc<Bounds>, native: Option<&Arc<Layout>>, keep_exemplars: bool) -> Self {
        let buckets = (0..=bounds.upper.len())
            .map(|_| AtomicU64::new(0))
            .collect();
        HistogramCell {
            bounds,
            buckets,
            sum: AtomicU64::new(0f64.to_bits()),
            native: native.map(|l| (Arc::clone(l), NativeBuckets::new(l))),
            exemplars: OnceLock::new(),
            keep_exemplars,
        }
    }

    /// The native buckets now into `buckets` (see `NativeBuckets::read_into`): returns the
    /// schema and zero count, or `None` with native histograms off.
    pub(crate) fn native_into(&self, buckets: &mut Vec<(i32, u64)>) -> Option<(i8, u64)> {
        self.native
            .as_ref()
            .map(|(layout, b)| b.read_into(layout, buckets))
    }

    /// The exemplar of classic bucket `i` (the last is `+Inf`), if one was recorded.
    pub(crate) fn exemplar(&self, i: usize) -> Option<ExemplarValue> {
        self.exemplars.get()?.get(i)?.read()
    }

    /// The bucket counts and the sum as they are now. The `+Inf` count and `_count` are the
    /// total of the buckets read, so the two always agree in the exposition.
    pub(crate) fn read(&self, counts: &mut Vec<u64>) -> f64 {
        counts.clear();
        counts.extend(self.buckets.iter().map(|b| b.load(Relaxed)));
        f64::from_bits(self.sum.load(Relaxed))
    }
}

impl HistogramFn for HistogramCell {
    fn record(&self, value: f64) {
        self.record_many(value, 1);
    }

    fn record_many(&self, value: f64, count: usize) {
        // A NaN would turn the sum into NaN for good and belongs in no bucket: it is dropped
        // (the core never records one; it counts bad durations as misuse instead).
        if value.is_nan() || count == 0 {
            return;
        }
        // Prometheus buckets are inclusive (`le`): the first bound >= value.
        let i = self.bounds.upper.partition_point(|b| *b < value);
        let n = count as u64;
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(n, Relaxed);
        }
        add_f64(&self.sum, value * count as f64);
        if let Some((layout, native)) = &self.native {
            native.add(layout, value, n);
        }
        // Set only while the guard records a request's latencies: never per token.
        if let Some(ids) = tokenmeter_core::exemplar::current().filter(|_| self.keep_exemplars) {
            let slots = self.exemplars.get_or_init(|| {
                (0..self.buckets.len())
                    .map(|_| ExemplarSlot::default())
                    .collect()
            });
            if let Some(slot) = slots.get(i) {
                slot.write(&ExemplarValue {
                    ids,
                    value,
                    timestamp_ms: now_ms(),
                });
            }
        }
    }
}

/// The series of one family, in registration order.
#[derive(Debug)]
pub(crate) enum Cells {
    Counter(Vec<Series<CounterCell>>),
    Gauge(Vec<Series<GaugeCell>>),
    Histogram(Vec<Series<HistogramCell>>),
}

/// A series type and where its family keeps it.
pub(crate) trait Cell: Sized {
    fn empty() -> Cells;
    fn of(cells: &Cells) -> Option<&Vec<Series<Self>>>;
    fn of_mut(cells: &mut Cells) -> Option<&mut Vec<Series<Self>>>;
}

macro_rules! cell_kind {
    ($cell:ty, $variant:ident) => {
        impl Cell for $cell {
            fn empty() -> Cells {
                Cells::$variant(Vec::new())
            }
            fn of(cells: &Cells) -> Option<&Vec<Series<Self>>> {
                match cells {
                    Cells::$variant(v) => Some(v),
                    _ => None,
                }
            }
            fn of_mut(cells: &mut Cells) -> Option<&mut Vec<Series<Self>>> {
                match cells {
                    Cells::$variant(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}
cell_kind!(CounterCell, Counter);
cell_kind!(GaugeCell, Gauge);
cell_kind!(HistogramCell, Histogram);

/// A series' label set (global labels included), encoded once at registration for each
/// exposition format.
#[derive(Debug, Default)]
pub(crate) struct SeriesLabels {
    /// `k="v",…`, escaped for the text formats.
    pub(crate) text: String,
    /// The `LabelPair`s as encoded `Metric.label` fields (field 1) of the protobuf format.
    pub(crate) proto: Vec<u8>,
}

/// One series: its label set and cell.
#[derive(Debug)]
pub(crate) struct Series<C> {
    pub(crate) key: Key,
    pub(crate) labels: Arc<SeriesLabels>,
    pub(crate) cell: Arc<C>,
    /// For the idle timeout: the value last seen by an upkeep pass, and since when.
    seen: Mutex<(u64, Instant)>,
}

impl<C> Series<C> {
    fn new(key: Key, labels: SeriesLabels, cell: Arc<C>) -> Self {
        Series {
            key,
            labels: Arc::new(labels),
            cell,
            seen: Mutex::new((u64::MAX, Instant::now())),
        }
    }

    /// True when nothing outside the registry holds the series (so it can never change
    /// again) and its value has not changed for `timeout`.
    fn idle(&self, fingerprint: u64, now: Instant, timeout: Duration) -> bool {
        let mut seen = lock(&self.seen);
        if seen.0 != fingerprint {
            *seen = (fingerprint, now);
            return false;
        }
        Arc::strong_count(&self.cell) == 1 && now.duration_since(seen.1) >= timeout
    }
}

/// One metric name: its kind, help text, and series.
#[derive(Debug)]
pub(crate) struct Family {
    pub(crate) help: Option<String>,
    /// The OpenMetrics unit (`seconds`, `bytes`, …) of catalog metrics whose name ends in it.
    pub(crate) unit: Option<&'static str>,
    pub(crate) cells: Cells,
    index: HashMap<Key, usize>,
    /// Whether registering this name as another kind was logged (once per family).
    kind_conflict_logged: bool,
}

impl Family {
    fn len(&self) -> usize {
        match &self.cells {
            Cells::Counter(v) => v.len(),
            Cells::Gauge(v) => v.len(),
            Cells::Histogram(v) => v.len(),
        }
    }
}

/// How the recorder is configured: names and bounds resolved at build time.
#[derive(Debug)]
pub(crate) struct Config {
    /// Bucket bounds per sanitized metric name (catalog, meters, user).
    pub(crate) buckets: HashMap<String, Arc<Bounds>>,
    /// Bounds of histograms named nowhere else (never a summary).
    pub(crate) fallback: Arc<Bounds>,
    /// Help text per sanitized metric name from the catalog.
    pub(crate) help: HashMap<String, String>,
    /// Unit word per sanitized metric name from the catalog (`seconds`, `bytes`, …).
    pub(crate) units: HashMap<String, &'static str>,
    /// `(sanitized key, value)` added to every series unless it has that key.
    pub(crate) global_labels: Vec<(String, String)>,
    pub(crate) idle_timeout: Option<Duration>,
    /// Native buckets beside the classic ones (`None`: off).
    pub(crate) native: Option<Arc<Layout>>,
    /// Whether histogram buckets keep exemplars.
    pub(crate) exemplars: bool,
}

/// The storage behind a [`PrometheusRecorder`](super::PrometheusRecorder) and its renders.
#[derive(Debug)]
pub(crate) struct Registry {
    pub(crate) config: Config,
    /// Sorted by name, so the exposition is stable from scrape to scrape.
    families: RwLock<BTreeMap<String, Family>>,
    /// `describe_*` help text for names outside the catalog (the last one wins).
    described: RwLock<HashMap<String, String>>,
}

/// What a render needs of one family, copied out so the render holds no lock.
pub(crate) struct FamilyView {
    pub(crate) name: String,
    pub(crate) help: Option<String>,
    pub(crate) unit: Option<&'static str>,
    pub(crate) cells: CellsView,
}

/// Shared references to a family's series.
pub(crate) enum CellsView {
    Counter(Vec<(Arc<SeriesLabels>, Arc<CounterCell>)>),
    Gauge(Vec<(Arc<SeriesLabels>, Arc<GaugeCell>)>),
    Histogram(Vec<(Arc<SeriesLabels>, Arc<HistogramCell>)>),
}

fn view<C>(series: &[Series<C>]) -> Vec<(Arc<SeriesLabels>, Arc<C>)> {
    series
        .iter()
        .map(|s| (Arc::clone(&s.labels), Arc::clone(&s.cell)))
        .collect()
}

impl Registry {
    pub(crate) fn new(config: Config) -> Self {
        Registry {
            config,
            families: RwLock::new(BTreeMap::new()),
            described: RwLock::new(HashMap::new()),
        }
    }

    fn describe(&self, key: &KeyName, description: &SharedString) {
        let name = text::metric_name(key.as_str());
        self.described
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.into_owned(), description.to_string());
    }

    fn help(&self, name: &str) -> Option<String> {
        if let Some(h) = self.config.help.get(name) {
            return Some(h.clone());
        }
        self.described
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    /// The series of `key` in its family, created on first use. A name already taken by
    /// another kind yields `None` (the caller hands out a no-op handle).
    fn series<C: Cell>(&self, key: &Key, make: impl FnOnce(&str) -> C) -> Option<Arc<C>> {
        let name = text::metric_name(key.name());
        {
            let families = self.families.read().unwrap_or_else(PoisonError::into_inner);
            if let Some(f) = families.get(name.as_ref()) {
                match (C::of(&f.cells), f.index.get(key)) {
                    (Some(series), Some(&i)) => return Some(Arc::clone(&series[i].cell)),
                    (None, _) if f.kind_conflict_logged => return None,
                    _ => {}
                }
            }
        }
        let help = self.help(&name);
        let unit = self.config.units.get(name.as_ref()).copied();
        let mut families = self
            .families
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let family = families
            .entry(name.clone().into_owned())
            .or_insert_with(|| Family {
                help,
                unit,
                cells: C::empty(),
                index: HashMap::new(),
                kind_conflict_logged: false,
            });
        if C::of(&family.cells).is_none() {
            if !family.kind_conflict_logged {
                family.kind_conflict_logged = true;
                tracing::warn!(
                    target: "tokenmeter::export",
                    metric = %name,
                    "a metric name is registered as two kinds; the second one is not exported"
                );
            }
            return None;
        }
        let labels = self.labels(key);
        let index = &mut family.index;
        let series = C::of_mut(&mut family.cells)?;
        if let Some(&i) = index.get(key) {
            return Some(Arc::clone(&series[i].cell));
        }
        let cell = Arc::new(make(&name));
        index.insert(key.clone(), series.len());
        series.push(Series::new(key.clone(), labels, Arc::clone(&cell)));
        Some(cell)
    }

    /// The label set of `key`, encoded for each format: its labels, then the global labels
    /// it does not set. No series can carry a label name twice, which would make Prometheus
    /// reject the whole scrape: of labels that map to the same name (`a.b` and `a_b`, or a key
    /// given twice) the first is kept, and reserved names (`le`, `quantile`, `__`-prefixed) are
    /// dropped, each with a warning when the series is registered.
    fn labels(&self, key: &Key) -> SeriesLabels {
        let mut seen: Vec<Cow<'_, str>> = Vec::with_capacity(key.labels().len());
        let mut own = Vec::with_capacity(key.labels().len());
        for l in key.labels() {
            let k = text::label_key(l.key());
            if text::is_reserved_label(&k) || seen.contains(&k) {
                tracing::warn!(
                    target: "tokenmeter::export",
                    metric = %key.name(),
                    label = %l.key(),
                    "a label is reserved or repeats another label of the series; dropped"
                );
                continue;
            }
            seen.push(k.clone());
            own.push((k, l.value()));
        }
        let global = self
            .config
            .global_labels
            .iter()
            .filter(|(k, _)| !seen.iter().any(|s| s == k))
            .map(|(k, v)| (Cow::Borrowed(k.as_str()), v.as_str()));
        let mut out = SeriesLabels::default();
        for (k, v) in own.into_iter().chain(global) {
            let sep = if out.text.is_empty() { "" } else { "," };
            let _ = write!(out.text, "{sep}{k}=\"");
            text::escape_label_value(&mut out.text, v);
            out.text.push('"');
            proto::encode_label(&mut out.proto, &k, v);
        }
        out
    }

    fn bounds(&self, name: &str) -> Arc<Bounds> {
        Arc::clone(
            self.config
                .buckets
                .get(name)
                .unwrap_or(&self.config.fallback),
        )
    }

    /// Copies out what a render needs (after evicting idle series when an idle timeout is
    /// set), so that formatting runs without holding the lock registrations take.
    pub(crate) fn view(&self) -> Vec<FamilyView> {
        if self.config.idle_timeout.is_some() {
            self.evict_idle();
        }
        let families = self.families.read().unwrap_or_else(PoisonError::into_inner);
        families
            .iter()
            .filter(|(_, f)| f.len() > 0)
            .map(|(name, f)| FamilyView {
                name: name.clone(),
                help: f.help.clone(),
                unit: f.unit,
                cells: match &f.cells {
                    Cells::Counter(v) => CellsView::Counter(view(v)),
                    Cells::Gauge(v) => CellsView::Gauge(view(v)),
                    Cells::Histogram(v) => CellsView::Histogram(view(v)),
                },
            })
            .collect()
    }

    /// Drops series that nobody can update any more (no handle held outside the registry)
    /// and whose value has not changed for the idle timeout.
    pub(crate) fn evict_idle(&self) {
        let Some(timeout) = self.config.idle_timeout else {
            return;
        };
        let now = Instant::now();
        let mut families = self
            .families
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        for family in families.values_mut() {
            let changed = match &mut family.cells {
                Cells::Counter(v) => retain(v, now, timeout, |c| c.0.load(Relaxed)),
                Cells::Gauge(v) => retain(v, now, timeout, |c| c.0.load(Relaxed)),
                Cells::Histogram(v) => retain(v, now, timeout, |c| {
                    c.buckets.iter().map(|b| b.load(Relaxed)).sum::<u64>()
                }),
            };
            if changed {
                family.index = match &family.cells {
                    Cells::Counter(v) => index(v),
                    Cells::Gauge(v) => index(v),
                    Cells::Histogram(v) => index(v),
                };
            }
        }
        families.retain(|_, f| f.len() > 0);
    }
}

fn retain<C>(
    series: &mut Vec<Series<C>>,
    now: Instant,
    timeout: Duration,
    fingerprint: impl Fn(&C) -> u64,
) -> bool {
    let before = series.len();
    series.retain(|s| !s.idle(fingerprint(&s.cell), now, timeout));
    series.len() != before
}

fn index<C>(series: &[Series<C>]) -> HashMap<Key, usize> {
    series
        .iter()
        .enumerate()
        .map(|(i, s)| (s.key.clone(), i))
        .collect()
}

/// The `metrics` recorder of the Prometheus exporter (see [`super::Prometheus`]).
///
/// Counters and gauges are single atomics; histograms are atomic bucket counts over fixed
/// bounds, so recording never locks or allocates and a scrape reads the current values.
/// Compose it with other recorders through a [`crate::Fanout`] or install it globally.
#[derive(Clone, Debug)]
pub struct PrometheusRecorder {
    pub(crate) registry: Arc<Registry>,
}

impl Recorder for PrometheusRecorder {
    fn describe_counter(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.registry.describe(&key, &description);
    }

    fn describe_gauge(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.registry.describe(&key, &description);
    }

    fn describe_histogram(&self, key: KeyName, _unit: Option<Unit>, description: SharedString) {
        self.registry.describe(&key, &description);
    }

    fn register_counter(&self, key: &Key, _metadata: &Metadata<'_>) -> Counter {
        self.registry
            .series(key, |_| CounterCell::default())
            .map_or_else(Counter::noop, Counter::from_arc)
    }

    fn register_gauge(&self, key: &Key, _metadata: &Metadata<'_>) -> Gauge {
        self.registry
            .series(key, |_| GaugeCell::default())
            .map_or_else(Gauge::noop, Gauge::from_arc)
    }

    fn register_histogram(&self, key: &Key, _metadata: &Metadata<'_>) -> Histogram {
        self.registry
            .series(key, |name| {
                HistogramCell::new(
                    self.registry.bounds(name),
                    self.registry.config.native.as_ref(),
                    self.registry.config.exemplars,
                )
            })
            .map_or_else(Histogram::noop, Histogram::from_arc)
    }
}
