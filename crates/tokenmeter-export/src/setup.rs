//! One-call setup ([`init`]) and the composing builder ([`Exporters`]).

use metrics::Recorder;
use metrics_util::layers::FanoutBuilder;
use tracing_subscriber::Layer;
use tracing_subscriber::Registry;
use tracing_subscriber::layer::SubscriberExt;

use crate::{Error, LogDestination, RequestLog};

#[cfg(feature = "otlp")]
use crate::otlp::{Otlp, OtlpExporter};
#[cfg(feature = "prometheus")]
use crate::prometheus::{Prometheus, PrometheusExporter};

type BoxedRecorder = Box<dyn Recorder + Send + Sync + 'static>;

/// Composes the exporters: Prometheus and OTLP side by side through `metrics-util`'s fanout,
/// plus any recorders of yours, installed as the global `metrics` recorder; the OTLP trace
/// layer and the JSON request log installed as the global `tracing` subscriber.
///
/// ```no_run
/// use tokenmeter_export::{Exporters, Prometheus, RequestLog};
/// let exporters = Exporters::new()
///     .prometheus(Prometheus::new().listen("127.0.0.1:9464".parse().unwrap()))
///     .request_log(RequestLog::new());
/// // With the `otlp` feature:
/// // let exporters = exporters.otlp(Otlp::new().endpoint("http://127.0.0.1:4318"));
/// let guard = exporters.install()?;
/// # drop(guard);
/// # Ok::<(), tokenmeter_export::Error>(())
/// ```
#[must_use]
#[derive(Default)]
pub struct Exporters {
    #[cfg(feature = "prometheus")]
    prometheus: Option<Prometheus>,
    #[cfg(feature = "otlp")]
    otlp: Option<Otlp>,
    request_log: Option<RequestLog>,
    recorders: Vec<BoxedRecorder>,
    tracing: bool,
}

impl std::fmt::Debug for Exporters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporters")
            .field("recorders", &self.recorders.len())
            .finish_non_exhaustive()
    }
}

impl Exporters {
    /// Nothing enabled yet; global tracing subscriber installed by [`install`](Self::install).
    pub fn new() -> Self {
        Exporters {
            tracing: true,
            ..Default::default()
        }
    }

    /// What [`init`] installs, from the environment: Prometheus unless
    /// `TOKENMETER_PROMETHEUS=off` (address from `TOKENMETER_PROMETHEUS_ADDR`); OTLP when an
    /// `OTEL_EXPORTER_OTLP_*ENDPOINT` is set and `OTEL_SDK_DISABLED` is not `true`; the request
    /// log to `TOKENMETER_REQUEST_LOG` (`stdout` by default, `stderr`, or `off`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an unparsable `TOKENMETER_PROMETHEUS_ADDR`.
    pub fn from_env() -> Result<Self, Error> {
        #[allow(unused_mut)]
        let mut ex = Exporters::new();
        let var = |k: &str| std::env::var(k).ok().map(|v| v.trim().to_ascii_lowercase());
        #[cfg(feature = "prometheus")]
        if !matches!(
            var("TOKENMETER_PROMETHEUS").as_deref(),
            Some("off" | "false" | "0")
        ) {
            let mut p = Prometheus::new();
            if let Ok(addr) = std::env::var("TOKENMETER_PROMETHEUS_ADDR") {
                let addr = addr.trim().parse().map_err(|e| {
                    Error::Config(format!("TOKENMETER_PROMETHEUS_ADDR={addr:?}: {e}"))
                })?;
                p = p.listen(addr);
            }
            ex = ex.prometheus(p);
        }
        #[cfg(feature = "otlp")]
        if Otlp::endpoint_in_env() && var("OTEL_SDK_DISABLED").as_deref() != Some("true") {
            ex = ex.otlp(Otlp::new());
        }
        match var("TOKENMETER_REQUEST_LOG").as_deref() {
            Some("off" | "false" | "0") => {}
            Some("stderr") => {
                ex = ex.request_log(RequestLog::new().destination(LogDestination::Stderr))
            }
            _ => ex = ex.request_log(RequestLog::new()),
        }
        Ok(ex)
    }

    /// Adds the Prometheus exporter.
    #[cfg(feature = "prometheus")]
    pub fn prometheus(mut self, p: Prometheus) -> Self {
        self.prometheus = Some(p);
        self
    }

    /// Adds the OTLP exporter (metrics and traces).
    #[cfg(feature = "otlp")]
    pub fn otlp(mut self, o: Otlp) -> Self {
        self.otlp = Some(o);
        self
    }

    /// Adds the JSON request log.
    pub fn request_log(mut self, log: RequestLog) -> Self {
        self.request_log = Some(log);
        self
    }

    /// Adds a recorder of yours to the fanout (it sees every metric the others see).
    pub fn recorder<R: Recorder + Send + Sync + 'static>(mut self, recorder: R) -> Self {
        self.recorders.push(Box::new(recorder));
        self
    }

    /// Whether [`install`](Self::install) sets the global `tracing` subscriber (default true).
    /// With false, add [`ExportGuard::tracing_layers`] to your own subscriber.
    pub fn install_tracing(mut self, on: bool) -> Self {
        self.tracing = on;
        self
    }

    /// Builds everything and returns the guard, without installing anything globally.
    ///
    /// # Errors
    ///
    /// Whatever building an exporter returns (e.g. [`Error::Bind`]).
    pub fn build(self) -> Result<(ExportGuard, Option<metrics_util::layers::Fanout>), Error> {
        let mut fanout = FanoutBuilder::default();
        let mut any = false;
        #[cfg(feature = "prometheus")]
        let prometheus = match self.prometheus {
            Some(p) => {
                let mut built = p.build()?;
                if let Some(r) = built.take_recorder() {
                    fanout = fanout.add_recorder(r);
                    any = true;
                }
                Some(built)
            }
            None => None,
        };
        #[cfg(feature = "otlp")]
        let otlp = match self.otlp {
            Some(o) => {
                let mut built = o.build()?;
                if let Some(r) = built.take_recorder() {
                    fanout = fanout.add_recorder(r);
                    any = true;
                }
                Some(built)
            }
            None => None,
        };
        for r in self.recorders {
            fanout = fanout.add_recorder(r);
            any = true;
        }
        let guard = ExportGuard {
            #[cfg(feature = "prometheus")]
            prometheus,
            #[cfg(feature = "otlp")]
            otlp,
            request_log: self.request_log,
            tracing_installed: false,
        };
        Ok((guard, any.then(|| fanout.build())))
    }

    /// Builds everything, installs the fanout as the global `metrics` recorder and (unless
    /// turned off) the layers as the global `tracing` subscriber.
    ///
    /// # Errors
    ///
    /// [`Error::Bind`] when the Prometheus port is taken, [`Error::Otlp`] for a bad OTLP
    /// configuration, [`Error::RecorderAlreadySet`] when a global `metrics` recorder exists.
    /// A global tracing subscriber that already exists is not an error: check
    /// [`ExportGuard::tracing_installed`] and add [`ExportGuard::tracing_layers`] to yours.
    pub fn install(self) -> Result<ExportGuard, Error> {
        let tracing = self.tracing;
        let (mut guard, fanout) = self.build()?;
        if let Some(f) = fanout {
            metrics::set_global_recorder(f).map_err(|_| Error::RecorderAlreadySet)?;
        }
        if tracing {
            let layers = guard.tracing_layers();
            if !layers.is_empty() {
                guard.tracing_installed = tracing::subscriber::set_global_default(
                    tracing_subscriber::registry().with(layers),
                )
                .is_ok();
            }
        }
        Ok(guard)
    }
}

/// Keeps the exporters running; dropping it flushes OTLP (bounded by the export timeout) and
/// stops the Prometheus listener.
#[must_use = "dropping the guard stops the exporters"]
pub struct ExportGuard {
    #[cfg(feature = "prometheus")]
    prometheus: Option<PrometheusExporter>,
    #[cfg(feature = "otlp")]
    otlp: Option<OtlpExporter>,
    request_log: Option<RequestLog>,
    tracing_installed: bool,
}

impl std::fmt::Debug for ExportGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportGuard")
            .field("tracing_installed", &self.tracing_installed)
            .finish_non_exhaustive()
    }
}

impl ExportGuard {
    /// The Prometheus exporter, if enabled.
    #[cfg(feature = "prometheus")]
    pub fn prometheus(&self) -> Option<&PrometheusExporter> {
        self.prometheus.as_ref()
    }

    /// The OTLP exporter, if enabled.
    #[cfg(feature = "otlp")]
    pub fn otlp(&self) -> Option<&OtlpExporter> {
        self.otlp.as_ref()
    }

    /// Whether [`Exporters::install`] set the global tracing subscriber.
    pub fn tracing_installed(&self) -> bool {
        self.tracing_installed
    }

    /// The tracing layers (OTLP traces, request log) for a subscriber built on
    /// `tracing_subscriber::registry()`.
    pub fn tracing_layers(&self) -> Vec<Box<dyn Layer<Registry> + Send + Sync>> {
        let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = Vec::new();
        #[cfg(feature = "otlp")]
        if let Some(l) = self
            .otlp
            .as_ref()
            .and_then(OtlpExporter::tracing_layer::<Registry>)
        {
            layers.push(Box::new(l));
        }
        if let Some(log) = self.request_log {
            layers.push(log.layer());
        }
        layers
    }

    /// Exports pending OTLP data now.
    ///
    /// # Errors
    ///
    /// [`Error::Otlp`] when an export failed (what it carried is counted as dropped).
    pub fn flush(&self) -> Result<(), Error> {
        #[cfg(feature = "otlp")]
        if let Some(o) = &self.otlp {
            return o.flush();
        }
        Ok(())
    }
}

/// One-call setup from the environment: Prometheus on 127.0.0.1:9464, OTLP metrics and traces
/// when an `OTEL_EXPORTER_OTLP_*ENDPOINT` is set, the JSON request log on stdout. See
/// [`Exporters::from_env`] for the variables. Keep the guard alive for the process's life.
///
/// # Errors
///
/// As [`Exporters::install`], plus [`Error::Config`] for bad `TOKENMETER_*` values.
pub fn init() -> Result<ExportGuard, Error> {
    Exporters::from_env()?.install()
}
