//! The map from emitted (Prometheus exposition) names back to catalog metrics: their OTel
//! names, units, descriptions and bucket bounds. Built once at install time.

// Parts serve only one of the two exporters; with a single feature the rest is unused.
#![cfg_attr(not(all(feature = "prometheus", feature = "otlp")), allow(dead_code))]

use std::collections::HashMap;

use tokenmeter_core::Meter;
use tokenmeter_core::catalog::{self, MetricDef};
use tokenmeter_core::names::{DEFAULT_PREFIX, otel_label_key};

/// What an exporter knows about one emitted name.
#[derive(Clone, Debug)]
pub(crate) struct MetricInfo {
    /// Full OpenTelemetry name (own metrics carry the prefix).
    pub(crate) otel_name: String,
    pub(crate) def: &'static MetricDef,
    /// Bucket bounds in use under that name.
    pub(crate) buckets: Option<Vec<f64>>,
}

/// Emitted name -> catalog metric.
#[derive(Clone, Debug, Default)]
pub(crate) struct NameMap {
    by_name: HashMap<String, MetricInfo>,
}

impl NameMap {
    /// A map covering the default prefix under both presets, plus `prefixes` and `meters`.
    pub(crate) fn new(prefixes: &[String], meters: &[Meter]) -> Self {
        let mut map = NameMap::default();
        let mut all_prefixes = vec![DEFAULT_PREFIX.to_owned()];
        all_prefixes.extend(prefixes.iter().cloned());
        for prefix in &all_prefixes {
            for def in catalog::all() {
                let otel = def.full_otel_name(prefix);
                let prom = def.prometheus_name(prefix);
                map.insert(prom, otel.clone(), def, def.buckets.map(<[f64]>::to_vec));
                if let Some(v) = def.vllm_name {
                    map.insert(
                        v.to_owned(),
                        otel,
                        def,
                        def.vllm_buckets.or(def.buckets).map(<[f64]>::to_vec),
                    );
                }
            }
        }
        // Meters last: their bucket overrides win.
        for meter in meters {
            for r in meter.metric_names().metrics() {
                map.by_name.insert(
                    r.name.clone(),
                    MetricInfo {
                        otel_name: r.otel_name.clone(),
                        def: r.def,
                        buckets: r.buckets.clone(),
                    },
                );
            }
        }
        map
    }

    fn insert(
        &mut self,
        name: String,
        otel_name: String,
        def: &'static MetricDef,
        buckets: Option<Vec<f64>>,
    ) {
        self.by_name.entry(name).or_insert(MetricInfo {
            otel_name,
            def,
            buckets,
        });
    }

    /// The catalog entry for an emitted name.
    pub(crate) fn get(&self, name: &str) -> Option<&MetricInfo> {
        self.by_name.get(name)
    }

    /// Every (emitted name, info) pair.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&String, &MetricInfo)> {
        self.by_name.iter()
    }

    /// The OTel attribute key for an emitted label key (unknown keys pass through).
    pub(crate) fn otel_label<'a>(&self, key: &'a str) -> &'a str {
        otel_label_key(key).unwrap_or(key)
    }
}

/// The OTel name for an emitted name that is not in the catalog: OTel names allow
/// `[A-Za-z][A-Za-z0-9_./-]*`, so other characters (`:` in vLLM-style names) become `_`.
pub(crate) fn sanitize_otel_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '/') {
                c
            } else {
                '_'
            }
        })
        .collect();
    if !out.starts_with(|c: char| c.is_ascii_alphabetic()) {
        out.insert(0, 'm');
    }
    out.truncate(255);
    out
}

/// Whether the kind is a histogram.
#[cfg(test)]
pub(crate) fn is_histogram(def: &MetricDef) -> bool {
    def.kind == catalog::MetricKind::Histogram
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_default_and_vllm_names_back_to_the_catalog() {
        let map = NameMap::new(&[], &[]);
        let ttft = map
            .get("gen_ai_server_time_to_first_token_seconds")
            .expect("ttft");
        assert_eq!(ttft.otel_name, "gen_ai.server.time_to_first_token");
        assert_eq!(ttft.def.id, "ttft");
        let v = map
            .get("vllm:time_to_first_token_seconds")
            .expect("vllm ttft");
        assert_eq!(v.otel_name, "gen_ai.server.time_to_first_token");
        assert_eq!(v.buckets.as_deref(), ttft.def.vllm_buckets);
        let goodput = map
            .get("tokenmeter_requests_goodput_total")
            .expect("goodput");
        assert_eq!(goodput.otel_name, "tokenmeter.requests.goodput");
        assert_eq!(map.otel_label("model_name"), "gen_ai.request.model");
        assert_eq!(
            map.otel_label("gen_ai_request_model"),
            "gen_ai.request.model"
        );
        assert_eq!(map.otel_label("custom"), "custom");
    }

    #[test]
    fn process_metrics_map_back_from_their_prometheus_client_names() {
        let map = NameMap::new(&["acme".to_owned()], &[]);
        for (name, otel) in [
            ("process_open_fds", "process.unix.file_descriptor.count"),
            ("process_threads", "process.thread.count"),
            ("process_resident_memory_bytes", "process.memory.usage"),
            ("process_virtual_memory_bytes", "process.memory.virtual"),
        ] {
            let info = map.get(name).unwrap_or_else(|| panic!("{name} unmapped"));
            assert_eq!(info.otel_name, otel, "{name}");
        }
        // The OpenTelemetry mapping's names are not emitted, so they are not mapped either.
        assert!(map.get("process_unix_file_descriptor_count").is_none());
        assert!(map.get("process_thread_count").is_none());
    }

    #[test]
    fn default_prefix_is_the_cores() {
        let meter = Meter::builder().build();
        let metrics = meter.metric_names().metrics();
        for r in metrics.iter().filter(|r| r.def.own) {
            assert_eq!(r.otel_name, r.def.full_otel_name(DEFAULT_PREFIX));
        }
        assert!(metrics.iter().any(|r| r.def.own));
    }

    #[test]
    fn custom_prefixes_are_covered() {
        let map = NameMap::new(&["acme".to_owned()], &[]);
        assert_eq!(
            map.get("acme_requests_goodput_total")
                .map(|m| m.otel_name.as_str()),
            Some("acme.requests.goodput")
        );
    }

    #[test]
    fn every_histogram_has_buckets_under_every_name() {
        let map = NameMap::new(&[], &[]);
        for (name, info) in map.iter() {
            if is_histogram(info.def) {
                assert!(
                    info.buckets.as_ref().is_some_and(|b| !b.is_empty()),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn sanitizes_unknown_names() {
        assert_eq!(sanitize_otel_name("vllm:foo_total"), "vllm_foo_total");
        assert_eq!(sanitize_otel_name("9lives"), "m9lives");
    }
}
