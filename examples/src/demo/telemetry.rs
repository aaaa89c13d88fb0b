//! Exporter setup: the Prometheus exposition served on the demo's own `/metrics`.

use std::sync::{Arc, OnceLock};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokenmeter_core::Meter;
use tokenmeter_core::catalog;

use super::model::BoxError;
use super::server::MetricsRender;

static HANDLE: OnceLock<Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the process-wide Prometheus recorder once (with every catalog histogram given its
/// bucket bounds, so nothing renders as a summary) and returns its renderer. Later servers in the
/// same process (tests) share it; their series differ by the model label.
///
/// # Errors
/// When another global `metrics` recorder was installed first.
pub fn prometheus(meter: &Meter) -> Result<MetricsRender, BoxError> {
    let h = HANDLE.get_or_init(|| {
        let mut b = PrometheusBuilder::new();
        for def in catalog::all() {
            if let Some(bounds) = meter.buckets(def)
                && !bounds.is_empty()
            {
                b = match b.set_buckets_for_metric(
                    Matcher::Full(meter.metric_name(def).to_string()),
                    bounds,
                ) {
                    Ok(b) => b,
                    Err(e) => return Err(e.to_string()),
                };
            }
        }
        b.install_recorder().map_err(|e| e.to_string())
    });
    match h {
        Ok(h) => {
            let h = h.clone();
            Ok(Arc::new(move || h.render()))
        }
        Err(e) => Err(format!("prometheus recorder: {e}").into()),
    }
}

/// Starts OTLP export of metrics and traces to `endpoint`.
///
/// # Errors
/// Always, until tokenmeter's OTLP exporter is wired in here.
pub fn otlp(endpoint: &str) -> Result<(), BoxError> {
    Err(format!("OTLP export to {endpoint} is not available in this build").into())
}

/// Starts the GPU sampler when there is a GPU; returns a guard that stops it.
pub fn gpu_sampler() -> Option<()> {
    eprintln!("demo: no GPU sampler in this build (CPU only)");
    None
}
