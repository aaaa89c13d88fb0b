//! Exporter setup through `tokenmeter::export`: the Prometheus exposition served on the demo's
//! own `/metrics`, optional OTLP metrics and traces, and the GPU/host sampler.

use std::sync::{Arc, Mutex, OnceLock};

use tokenmeter::export::{ExportGuard, Exporters, Prometheus};
use tokenmeter::gpu::{Sampler, SamplerHandle};
use tokenmeter_core::Meter;

use super::model::BoxError;
use super::server::MetricsRender;

static EXPORTERS: OnceLock<Result<Mutex<ExportGuard>, String>> = OnceLock::new();

/// Installs the process-wide exporters once: Prometheus without a listener of its own (the demo
/// serves `render()` on `/metrics`; every catalog histogram gets its buckets), and OTLP metrics
/// and traces to `otlp` when given (gRPC with `grpc`, else `OTEL_EXPORTER_OTLP_PROTOCOL` or
/// HTTP/protobuf). Later servers in the same process (tests) share them; their
/// series differ by the model label. Returns the `/metrics` renderer.
///
/// # Errors
/// When another global `metrics` recorder was installed first, or OTLP cannot be configured.
pub fn install(meter: &Meter, otlp: Option<&str>, grpc: bool) -> Result<MetricsRender, BoxError> {
    let guard = EXPORTERS.get_or_init(|| {
        let mut ex = Exporters::new()
            .prometheus(Prometheus::new().without_listener().meter(meter))
            .install_tracing(otlp.is_some());
        if let Some(url) = otlp {
            let mut o = tokenmeter::export::otlp::Otlp::new()
                .endpoint(url)
                .service_name("tokenmeter-demo")
                .meter(meter);
            if grpc {
                o = o.protocol(tokenmeter::export::otlp::Protocol::Grpc);
            }
            ex = ex.otlp(o);
        }
        ex.install().map(Mutex::new).map_err(|e| e.to_string())
    });
    let guard = guard.as_ref().map_err(|e| format!("exporters: {e}"))?;
    let render = guard
        .lock()
        .map_err(|_| "exporters: lock poisoned")?
        .prometheus()
        .map(|p| p.renderer())
        .ok_or("exporters: no Prometheus exporter")?;
    Ok(Arc::new(move || render.render()))
}

/// Exports pending OTLP data now (bounded by the export timeout).
///
/// # Errors
/// When an export failed (e.g. no collector listens).
pub fn try_flush() -> Result<(), BoxError> {
    if let Some(Ok(g)) = EXPORTERS.get() {
        let g = g.lock().map_err(|_| "exporters: lock poisoned")?;
        g.flush()?;
    }
    Ok(())
}

/// [`try_flush`], reporting a failure on stderr; call before the process exits.
pub fn flush() {
    if let Err(e) = try_flush() {
        eprintln!("demo: OTLP flush: {e}");
    }
}

/// Starts the GPU (NVML) and host sampler for `meter`, once a second. Without a GPU it keeps
/// sampling the host and reports why GPU metrics are absent.
pub fn gpu_sampler(meter: &Meter) -> Option<SamplerHandle> {
    match Sampler::builder(meter).start() {
        Ok(h) => Some(h),
        Err(e) => {
            eprintln!("demo: GPU/host sampler not started: {e}");
            None
        }
    }
}
