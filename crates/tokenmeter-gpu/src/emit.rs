//! Lazily registered metric handles: a series is created on its first real value, so a metric
//! the source cannot read never shows up as a zero.

use metrics::{Counter, Gauge, Label};
use tokenmeter_core::Meter;
use tokenmeter_core::catalog::{MetricDef, by_id};

/// Looks a catalog entry of `catalog/gpu.rs` up by id.
pub(crate) fn def(id: &str) -> Option<&'static MetricDef> {
    by_id(id)
}

/// Builds `constant labels + (key, value)*` with the meter's label-key spelling.
pub(crate) fn labels(meter: &Meter, extra: &[(&str, &str)]) -> Vec<Label> {
    let mut out = meter.constant_labels();
    for (k, v) in extra {
        out.push(Label::new(meter.label_key(k), (*v).to_owned()));
    }
    out
}

/// A gauge that is registered on its first value and reads NaN once its source stops answering.
pub(crate) struct GaugeSlot {
    name: Option<String>,
    labels: Vec<Label>,
    gauge: Option<Gauge>,
}

impl GaugeSlot {
    pub(crate) fn new(meter: &Meter, id: &str, labels: Vec<Label>) -> Self {
        GaugeSlot {
            name: def(id).map(|d| meter.metric_name(d).to_owned()),
            labels,
            gauge: None,
        }
    }

    /// `Some(v)`: set (registering on first use). `None`: NaN if it was ever set, else nothing.
    pub(crate) fn set(&mut self, v: Option<f64>) {
        match v {
            Some(v) => {
                if self.gauge.is_none()
                    && let Some(name) = &self.name
                {
                    self.gauge = Some(metrics::gauge!(name.clone(), self.labels.clone()));
                }
                if let Some(g) = &self.gauge {
                    g.set(v);
                }
            }
            None => {
                if let Some(g) = &self.gauge {
                    g.set(f64::NAN);
                }
            }
        }
    }
}

/// A counter fed with a running total: it is incremented by the growth of the total, so any
/// recorder (not only those that support `absolute`) ends at the same value.
pub(crate) struct CounterSlot {
    name: Option<String>,
    labels: Vec<Label>,
    counter: Option<Counter>,
    emitted: u64,
}

impl CounterSlot {
    pub(crate) fn new(meter: &Meter, id: &str, labels: Vec<Label>) -> Self {
        CounterSlot {
            name: def(id).map(|d| meter.metric_name(d).to_owned()),
            labels,
            counter: None,
            emitted: 0,
        }
    }

    /// Advances the counter to `total` (registering on first use). A total below what was
    /// emitted (a reset at the source) is ignored until it grows past it.
    pub(crate) fn advance_to(&mut self, total: u64) {
        if self.counter.is_none()
            && let Some(name) = &self.name
        {
            self.counter = Some(metrics::counter!(name.clone(), self.labels.clone()));
        }
        if total > self.emitted {
            if let Some(c) = &self.counter {
                c.increment(total - self.emitted);
            }
            self.emitted = total;
        }
    }
}
