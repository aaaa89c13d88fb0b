//! Shared helpers: read what a `DebuggingRecorder` captured by name and labels.
#![allow(dead_code, missing_docs)]

use std::collections::BTreeMap;

use metrics_util::debugging::{DebugValue, Snapshotter};

#[derive(Debug, Default)]
pub struct Captured {
    pub counters: BTreeMap<String, u64>,
    pub gauges: BTreeMap<String, f64>,
    pub histograms: BTreeMap<String, Vec<f64>>,
}

/// Keys look like `name{k1=v1,k2=v2}` with labels sorted by key; `name` alone when unlabeled.
pub fn capture(snapshotter: &Snapshotter) -> Captured {
    let mut out = Captured::default();
    for (ck, _unit, _desc, value) in snapshotter.snapshot().into_vec() {
        let key = ck.key();
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        let id = if labels.is_empty() {
            key.name().to_string()
        } else {
            format!("{}{{{}}}", key.name(), labels.join(","))
        };
        match value {
            DebugValue::Counter(v) => {
                out.counters.insert(id, v);
            }
            DebugValue::Gauge(v) => {
                out.gauges.insert(id, v.into_inner());
            }
            DebugValue::Histogram(v) => {
                out.histograms
                    .insert(id, v.into_iter().map(|x| x.into_inner()).collect());
            }
        }
    }
    out
}

impl Captured {
    /// The series of `name` whose labels include every `k=v` in `with`.
    fn find<'a, T>(map: &'a BTreeMap<String, T>, name: &str, with: &[&str]) -> Vec<&'a T> {
        map.iter()
            .filter(|(k, _)| {
                let base = k.split('{').next().unwrap_or("");
                base == name && with.iter().all(|w| k.contains(w))
            })
            .map(|(_, v)| v)
            .collect()
    }
    /// Sum over the matching series.
    pub fn counter(&self, name: &str, with: &[&str]) -> u64 {
        Self::find(&self.counters, name, with).into_iter().sum()
    }
    /// The one matching series.
    pub fn gauge(&self, name: &str, with: &[&str]) -> Option<f64> {
        let hits = Self::find(&self.gauges, name, with);
        assert!(hits.len() <= 1, "{name} {with:?} matches several gauges");
        hits.first().map(|v| **v)
    }
    /// All observations of the matching series, sorted.
    pub fn hist(&self, name: &str, with: &[&str]) -> Vec<f64> {
        let mut v: Vec<f64> = Self::find(&self.histograms, name, with)
            .into_iter()
            .flatten()
            .copied()
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }
}

pub fn assert_close(got: f64, want: f64) {
    assert!(
        (got - want).abs() <= 1e-12 * want.abs().max(1.0),
        "got {got}, want {want}"
    );
}
