//! Per-request attribution of sampled resources: each in-flight request's share of the GPU
//! energy and GPU time (hence cost) that a sampler measures per interval.
//!
//! A sampler (in `tokenmeter-gpu`) [subscribes](crate::Meter::subscribe_requests) to a meter.
//! From then on every request the meter starts registers one shared cell with each
//! subscription (at start, under a short lock, as other start work does). The guard writes
//! into its cell only where it already flushes (about once a second and at the end): the
//! cumulative output tokens it flushed. Nothing per token.
//!
//! Once per interval, off the generation loop, the sampler reads each tracked cell's tokens
//! flushed since the previous interval ([`Subscription::begin_interval`]), splits the
//! interval's energy and GPU time across them in proportion ([`Subscription::charge`]), and
//! settles requests that had ended before the interval began.
//!
//! The rule for the end of a request: the guard takes what its cell was charged so far into
//! the [`RequestSummary`](crate::RequestSummary) it returns (and the span and the request
//! log). The interval in which the request ended is measured only at the next sample; its
//! share (the *late* part) is still charged to the cell at that sample: it goes into the
//! per-label energy counter and the per-request histograms, which are recorded once the
//! request is settled (its total: summary part + late part), and into a settlement event of
//! the request log. Nothing is lost, and each joule goes to exactly one request or to idle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};

use metrics::{Counter, Label};

use crate::catalog::gpu as def;
use crate::emit::{RecorderScoped, lock};
use crate::names::{MetricNames, REQUEST_TARGET};

/// Micro-joules per joule: cells count energy in integer micro-joules, so the parts of an
/// interval add up exactly to its whole.
pub const MICROJOULES_PER_JOULE: u64 = 1_000_000;

/// Nanoseconds per hour, for the cost of GPU time at a price per GPU-hour.
const NS_PER_HOUR: f64 = 3_600e9;

type Inbox = Mutex<Vec<Arc<Cell>>>;

/// A request's labels (its handles), shared with its cell.
type Labels = Arc<dyn AsRef<[Label]> + Send + Sync>;

/// A meter's subscriptions: where its guards register their cells.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// Live subscriptions, read without the lock: with none, a start costs one atomic load.
    live: Arc<AtomicUsize>,
    inboxes: Mutex<Vec<Weak<Inbox>>>,
}

impl Registry {
    /// A cell for a request starting now, registered with every live subscription; `None`
    /// when no sampler subscribed (nothing is allocated then).
    pub(crate) fn register<L: AsRef<[Label]> + Send + Sync + 'static>(
        &self,
        request_id: &Arc<str>,
        labels: &Arc<L>,
    ) -> Option<Arc<Cell>> {
        if self.live.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut inboxes = lock(&self.inboxes);
        inboxes.retain(|w| w.strong_count() > 0);
        if inboxes.is_empty() {
            return None;
        }
        let cell = Arc::new(Cell {
            tokens: AtomicU64::new(0),
            charged: Amounts::default(),
            settled: Amounts::default(),
            ended: AtomicBool::new(false),
            readers: AtomicUsize::new(inboxes.len()),
            request_id: Arc::clone(request_id),
            labels: Arc::clone(labels) as Labels,
        });
        for inbox in inboxes.iter().filter_map(Weak::upgrade) {
            lock(&inbox).push(Arc::clone(&cell));
        }
        Some(cell)
    }

    pub(crate) fn subscribe(&self, names: MetricNames) -> Subscription {
        let inbox = Arc::new(Mutex::new(Vec::new()));
        lock(&self.inboxes).push(Arc::downgrade(&inbox));
        self.live.fetch_add(1, Ordering::AcqRel);
        Subscription {
            live: Arc::clone(&self.live),
            names,
            inbox,
            tracked: Vec::new(),
            per_labels: HashMap::new(),
        }
    }
}

/// Energy, GPU time and cost, as atomics: charged by samplers, taken by the guard.
#[derive(Debug, Default)]
struct Amounts {
    energy_uj: AtomicU64,
    gpu_ns: AtomicU64,
    /// `f64` bits of the cost (samplers with different prices may add to it).
    cost: AtomicU64,
    /// Whether any energy / any cost figure was known when a sampler charged.
    energy_known: AtomicBool,
    cost_known: AtomicBool,
}

impl Amounts {
    fn add(&self, c: &Charge) {
        if let Some(e) = c.energy_uj {
            self.energy_uj.fetch_add(e, Ordering::AcqRel);
            self.energy_known.store(true, Ordering::Release);
        }
        self.gpu_ns.fetch_add(c.gpu_ns, Ordering::AcqRel);
        if let Some(cost) = c.cost {
            add_f64(&self.cost, cost);
            self.cost_known.store(true, Ordering::Release);
        }
    }

    /// Takes everything out (each figure exactly once, whoever adds concurrently).
    fn take(&self) -> Taken {
        Taken {
            energy_uj: self.energy_uj.swap(0, Ordering::AcqRel),
            gpu_ns: self.gpu_ns.swap(0, Ordering::AcqRel),
            cost: f64::from_bits(self.cost.swap(0, Ordering::AcqRel)),
            energy_known: self.energy_known.load(Ordering::Acquire),
            cost_known: self.cost_known.load(Ordering::Acquire),
        }
    }

    fn store(&self, t: &Taken) {
        self.energy_uj.store(t.energy_uj, Ordering::Release);
        self.gpu_ns.store(t.gpu_ns, Ordering::Release);
        self.cost.store(t.cost.to_bits(), Ordering::Release);
        self.energy_known.store(t.energy_known, Ordering::Release);
        self.cost_known.store(t.cost_known, Ordering::Release);
    }
}

fn add_f64(cell: &AtomicU64, v: f64) {
    // Off the hot path (samplers only): a compare-and-swap loop on the bits.
    let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |b| {
        Some((f64::from_bits(b) + v).to_bits())
    });
}

/// What was taken out of a cell's amounts.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Taken {
    pub(crate) energy_uj: u64,
    pub(crate) gpu_ns: u64,
    pub(crate) cost: f64,
    pub(crate) energy_known: bool,
    pub(crate) cost_known: bool,
}

impl Taken {
    fn plus(self, o: Taken) -> Taken {
        Taken {
            energy_uj: self.energy_uj.saturating_add(o.energy_uj),
            gpu_ns: self.gpu_ns.saturating_add(o.gpu_ns),
            cost: self.cost + o.cost,
            energy_known: self.energy_known || o.energy_known,
            cost_known: self.cost_known || o.cost_known,
        }
    }

    /// Joules, when a sampler knew the energy.
    pub(crate) fn energy_joules(&self) -> Option<f64> {
        self.energy_known
            .then(|| self.energy_uj as f64 / MICROJOULES_PER_JOULE as f64)
    }

    /// Cost, when a sampler had a price.
    pub(crate) fn cost(&self) -> Option<f64> {
        self.cost_known.then_some(self.cost)
    }
}

/// One request as the samplers see it. Shared between its guard and each subscription.
pub(crate) struct Cell {
    /// Output tokens the guard flushed so far (cumulative).
    tokens: AtomicU64,
    /// Charged by samplers since the guard last took (at its end).
    charged: Amounts,
    /// What the guard took at its end.
    settled: Amounts,
    ended: AtomicBool,
    /// Subscriptions that still have to settle it; the last one records its histograms.
    readers: AtomicUsize,
    request_id: Arc<str>,
    labels: Labels,
}

impl std::fmt::Debug for Cell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cell")
            .field("request_id", &self.request_id)
            .field("tokens", &self.tokens)
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

impl Cell {
    /// The guard flushed: `total` output tokens so far.
    pub(crate) fn flushed(&self, total: u64) {
        self.tokens.store(total, Ordering::Release);
    }

    /// The request ended (after its last flush): takes what was charged so far. What samplers
    /// charge from now on is the late part.
    pub(crate) fn close(&self) -> Taken {
        let taken = self.charged.take();
        self.settled.store(&taken);
        self.ended.store(true, Ordering::Release);
        taken
    }
}

/// What one tracked request is charged for one interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Charge {
    /// Energy in micro-joules; `None` while the sampler does not know the GPUs' energy.
    pub energy_uj: Option<u64>,
    /// GPU time in nanoseconds (the basis of cost).
    pub gpu_ns: u64,
    /// Cost of that GPU time; `None` without a price.
    pub cost: Option<f64>,
}

impl Charge {
    /// The charge for `energy_uj` and `gpu_ns` at `price_per_gpu_hour`.
    pub fn new(energy_uj: Option<u64>, gpu_ns: u64, price_per_gpu_hour: Option<f64>) -> Self {
        Charge {
            energy_uj,
            gpu_ns,
            cost: price_per_gpu_hour.map(|p| p * gpu_ns as f64 / NS_PER_HOUR),
        }
    }
}

/// A tracked request and what this subscription has seen of it.
#[derive(Debug)]
struct Tracked {
    cell: Arc<Cell>,
    seen_tokens: u64,
    /// It had ended when the current interval began: settled by this interval's charge.
    ended: bool,
}

/// The energy counter of one label set (per model and request labels, e.g. per tenant): the
/// exact total, and the counter with the whole joules it was given under the current recorder
/// (under a new recorder it is registered again and brought to the total).
#[derive(Debug, Default)]
struct LabelTotal {
    energy_uj: u64,
    counter: RecorderScoped<(Counter, u64)>,
}

/// A sampler's view of one meter's requests; from [`Meter::subscribe_requests`]. Dropping it
/// unsubscribes: requests started afterwards no longer register.
///
/// ```
/// use tokenmeter_core::attribution::Charge;
/// use tokenmeter_core::{Finish, Meter};
/// let meter = Meter::default();
/// let mut sub = meter.subscribe_requests();
/// let mut req = meter.request().start();
/// req.tokens(3);
/// req.finish(Finish::Stop); // flushes its 3 tokens
/// assert_eq!(sub.begin_interval(), &[3]);
/// // the sampler split 1.5 J and 2 s of GPU time at 3.6 per GPU-hour
/// sub.charge(&[Charge::new(Some(1_500_000), 2_000_000_000, Some(3.6))]);
/// assert_eq!(sub.tracked(), 0); // ended before the interval began: settled
/// ```
///
/// [`Meter::subscribe_requests`]: crate::Meter::subscribe_requests
#[derive(Debug)]
pub struct Subscription {
    live: Arc<AtomicUsize>,
    names: MetricNames,
    inbox: Arc<Inbox>,
    tracked: Vec<Tracked>,
    per_labels: HashMap<Vec<Label>, LabelTotal>,
}

impl Subscription {
    /// Starts an interval: takes in the requests started since the previous one and returns,
    /// for each tracked request (in the order [`charge`](Self::charge) expects), the output
    /// tokens it flushed since the previous interval.
    pub fn begin_interval(&mut self) -> Vec<u64> {
        let new = std::mem::take(&mut *lock(&self.inbox));
        self.tracked.extend(new.into_iter().map(|cell| Tracked {
            cell,
            seen_tokens: 0,
            ended: false,
        }));
        self.tracked
            .iter_mut()
            .map(|t| {
                // `ended` first: a cell seen ended has flushed its last tokens.
                t.ended = t.cell.ended.load(Ordering::Acquire);
                let total = t.cell.tokens.load(Ordering::Acquire);
                let d = total.saturating_sub(t.seen_tokens);
                t.seen_tokens = total.max(t.seen_tokens);
                d
            })
            .collect()
    }

    /// Requests tracked now.
    pub fn tracked(&self) -> usize {
        self.tracked.len()
    }

    /// Of the requests tracked, those still in flight when the current interval began (not
    /// ended): the ones whose next tokens may still come.
    pub fn in_flight(&self) -> usize {
        self.tracked.iter().filter(|t| !t.ended).count()
    }

    /// Charges each request of the current interval its part (`charges` in the order of
    /// [`begin_interval`](Self::begin_interval); missing entries charge nothing), advances
    /// the energy counter of its labels, and settles the requests that had ended when the
    /// interval began: records their per-request energy and cost histograms and a settlement
    /// event in the request log, and stops tracking them.
    pub fn charge(&mut self, charges: &[Charge]) {
        let energy_name = self.names.name(def::REQUESTS_ENERGY).to_owned();
        for (i, t) in self.tracked.iter().enumerate() {
            let Some(c) = charges.get(i) else { break };
            t.cell.charged.add(c);
            let Some(e) = c.energy_uj.filter(|e| *e > 0) else {
                continue;
            };
            let labels = (*t.cell.labels).as_ref();
            if !self.per_labels.contains_key(labels) {
                self.per_labels
                    .insert(labels.to_vec(), LabelTotal::default());
            }
            let Some(total) = self.per_labels.get_mut(labels) else {
                continue;
            };
            total.energy_uj = total.energy_uj.saturating_add(e);
            let whole = total.energy_uj / MICROJOULES_PER_JOULE;
            let (counter, emitted) = total
                .counter
                .get_or_make(|| (metrics::counter!(energy_name.clone(), labels.to_vec()), 0));
            if whole > *emitted {
                counter.increment(whole - *emitted);
                *emitted = whole;
            }
        }
        let names = &self.names;
        self.tracked.retain(|t| {
            if t.ended {
                settle(names, &t.cell);
            }
            !t.ended
        });
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
        // Requests it tracked are settled by nobody else: release them as settled by it.
        for t in self.tracked.drain(..) {
            if t.cell.ended.load(Ordering::Acquire) {
                settle(&self.names, &t.cell);
            } else {
                t.cell.readers.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// An ended request was charged its last interval by one subscription; the last one to do so
/// records its totals.
fn settle(names: &MetricNames, cell: &Cell) {
    if cell.readers.fetch_sub(1, Ordering::AcqRel) != 1 {
        return;
    }
    let late = cell.charged.take();
    let settled = cell.settled.take();
    let total = settled.plus(late);
    if let Some(j) = total.energy_joules() {
        metrics::histogram!(
            names.name(def::REQUEST_ENERGY).to_owned(),
            (*cell.labels).as_ref().to_vec()
        )
        .record(j);
    }
    if let Some(c) = total.cost() {
        metrics::histogram!(
            names.name(def::REQUEST_COST).to_owned(),
            (*cell.labels).as_ref().to_vec()
        )
        .record(c);
    }
    let late_j = late.energy_joules();
    tracing::info!(
        target: REQUEST_TARGET,
        request_id = &*cell.request_id,
        energy_j = total.energy_joules(),
        cost = total.cost(),
        late_energy_j = late_j,
        late_cost = late.cost(),
        "request energy settled"
    );
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::Charge;
    use crate::{Finish, Meter};

    fn joules(j: u64) -> Charge {
        Charge::new(Some(j * super::MICROJOULES_PER_JOULE), 0, None)
    }

    /// The energy histogram's values, as the recorder got them.
    fn histogram(rec: &DebuggingRecorder) -> Vec<f64> {
        rec.snapshotter()
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(k, ..)| k.key().name() == "tokenmeter_request_energy_joules")
            .flat_map(|(.., v)| match v {
                DebugValue::Histogram(v) => v.into_iter().map(|x| x.0).collect::<Vec<f64>>(),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_charge_after_the_end_is_late_and_settled_once_with_the_total() {
        let rec = DebuggingRecorder::new();
        let meter = Meter::default();
        let mut sub = meter.subscribe_requests();
        metrics::with_local_recorder(&rec, || {
            let mut req = meter.request().start();
            req.tokens(2);
            assert_eq!(sub.begin_interval(), vec![0]);
            sub.charge(&[joules(5)]);
            // The sampler began an interval while it ran; it ends before the charge.
            assert_eq!(sub.begin_interval(), vec![0]);
            let s = req.finish(Finish::Stop);
            assert_eq!(s.energy_joules, Some(5.0));
            sub.charge(&[joules(3)]); // late, not yet settled: it had not ended at the begin
            assert_eq!(sub.tracked(), 1);
            assert_eq!(sub.begin_interval(), vec![2]);
            sub.charge(&[joules(4)]);
            assert_eq!(sub.tracked(), 0);
        });
        assert_eq!(histogram(&rec), vec![12.0]);
    }

    #[test]
    fn two_samplers_on_one_meter_both_charge_and_the_last_one_settles() {
        let rec = DebuggingRecorder::new();
        let meter = Meter::default();
        let (mut a, mut b) = (meter.subscribe_requests(), meter.subscribe_requests());
        metrics::with_local_recorder(&rec, || {
            let mut req = meter.request().start();
            req.token();
            a.begin_interval();
            b.begin_interval();
            a.charge(&[joules(1)]);
            b.charge(&[joules(2)]);
            assert_eq!(req.finish(Finish::Stop).energy_joules, Some(3.0));
            a.begin_interval();
            a.charge(&[joules(10)]);
            assert!(histogram(&rec).is_empty(), "b has not settled it yet");
            b.begin_interval();
            b.charge(&[joules(20)]);
        });
        assert_eq!(histogram(&rec), vec![33.0]);
    }

    #[test]
    fn the_span_carries_the_energy_and_cost_by_the_end() {
        use std::sync::{Arc, Mutex};
        use tracing::field::{Field, Visit};
        use tracing::span::{Attributes, Id, Record};
        use tracing::{Event, Metadata};

        type Seen = Arc<Mutex<Vec<(String, f64)>>>;
        struct Spans(Seen);
        struct Values<'a>(&'a Seen);
        impl Visit for Values<'_> {
            fn record_f64(&mut self, field: &Field, value: f64) {
                self.0
                    .lock()
                    .unwrap()
                    .push((field.name().to_owned(), value));
            }
            fn record_debug(&mut self, _: &Field, _: &dyn std::fmt::Debug) {}
        }
        impl tracing::Subscriber for Spans {
            fn enabled(&self, _: &Metadata<'_>) -> bool {
                true
            }
            fn new_span(&self, _: &Attributes<'_>) -> Id {
                Id::from_u64(1)
            }
            fn record(&self, _: &Id, values: &Record<'_>) {
                values.record(&mut Values(&self.0));
            }
            fn record_follows_from(&self, _: &Id, _: &Id) {}
            fn event(&self, _: &Event<'_>) {}
            fn enter(&self, _: &Id) {}
            fn exit(&self, _: &Id) {}
        }
        let seen = Seen::default();
        let meter = Meter::default();
        let mut sub = meter.subscribe_requests();
        tracing::subscriber::with_default(Spans(seen.clone()), || {
            tracing::callsite::rebuild_interest_cache();
            let mut req = meter.request().start();
            req.token();
            sub.begin_interval();
            sub.charge(&[Charge::new(Some(1_250_000), 3_600_000_000, Some(1.0))]);
            req.finish(Finish::Stop);
        });
        let seen = seen.lock().unwrap();
        let get = |name: &str| seen.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        assert_eq!(get(crate::names::attr::ENERGY), Some(1.25));
        assert_eq!(get(crate::names::attr::COST), Some(0.001));
    }

    #[test]
    fn without_a_subscription_nothing_is_tracked_and_a_dropped_one_lets_go() {
        let meter = Meter::default();
        let mut req = meter.request().start();
        let mut sub = meter.subscribe_requests();
        assert!(
            sub.begin_interval().is_empty(),
            "started before: not tracked"
        );
        let _tracked = meter.request().start();
        assert_eq!(sub.begin_interval().len(), 1);
        drop(sub);
        let labels: std::sync::Arc<Vec<metrics::Label>> = std::sync::Arc::default();
        assert!(meter.attribution().register(&"x".into(), &labels).is_none());
        assert_eq!(req.finish(Finish::Stop).energy_joules, None);
    }
}
