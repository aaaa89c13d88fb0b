//! One-call setup ([`init`]) and the composing builder ([`Exporters`]).

use metrics::Recorder;
use tracing_subscriber::Layer;
use tracing_subscriber::Registry;
use tracing_subscriber::layer::SubscriberExt;

use tokenmeter_core::Meter;

use crate::fanout::Fanout;
use crate::log::RequestLogWriter;
use crate::{Error, LogDestination, RequestLog};

#[cfg(feature = "otlp")]
use crate::otlp::{Otlp, OtlpExporter};
#[cfg(feature = "prometheus")]
use crate::prometheus::{Prometheus, PrometheusExporter};

type BoxedRecorder = Box<dyn Recorder + Send + Sync + 'static>;

/// Composes the exporters: Prometheus and OTLP side by side through a [`Fanout`],
/// plus any recorders of yours, installed as the global `metrics` recorder; the OTLP trace
/// layer and the JSON request log installed as the global `tracing` subscriber.
///
/// Pass every [`Meter`] built with a custom `.prefix(..)` or `.buckets(..)` override to
/// [`meter`](Self::meter): the exporters learn names and bucket bounds from it (without it, a
/// custom prefix's histograms get fallback buckets in Prometheus and generic names over OTLP).
///
/// ```no_run
/// use tokenmeter_export::{Exporters, Prometheus, RequestLog};
/// let meter = tokenmeter_core::Meter::builder().model("m").prefix("acme").build();
/// let exporters = Exporters::new()
///     .meter(&meter)
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
    meters: Vec<Meter>,
    tracing: bool,
}

impl std::fmt::Debug for Exporters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporters")
            .field("recorders", &self.recorders.len())
            .field("meters", &self.meters.len())
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
        // OTLP is not a default feature: say so rather than ignore an endpoint silently.
        #[cfg(not(feature = "otlp"))]
        if var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some_and(|v| !v.is_empty()) {
            tracing::warn!(
                "OTEL_EXPORTER_OTLP_ENDPOINT is set but tokenmeter was built without its `otlp` \
                 feature: nothing is sent to the collector"
            );
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

    /// Tells every exporter (added before or after this call) about a meter: its prefix and
    /// naming preset (so its names map back to the catalog), its bucket overrides (so
    /// Prometheus and OTLP use the meter's bounds), and its drop self-metric name. Needed for
    /// meters built with `.prefix(..)` or `.buckets(..)`; harmless for the others. Call once
    /// per meter.
    pub fn meter(mut self, meter: &Meter) -> Self {
        self.meters.push(meter.clone());
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

    /// Builds everything and returns the guard and the [`Fanout`] of the metric recorders
    /// (`None` when there is none), without installing anything globally.
    ///
    /// # Errors
    ///
    /// Whatever building an exporter returns (e.g. [`Error::Bind`]).
    pub fn build(self) -> Result<(ExportGuard, Option<Fanout>), Error> {
        let mut fanout = Fanout::new();
        let meters = self.meters;
        #[cfg(feature = "prometheus")]
        let prometheus = match self.prometheus {
            Some(p) => {
                let p = meters.iter().fold(p, Prometheus::meter);
                let mut built = p.build()?;
                if let Some(r) = built.take_recorder() {
                    fanout = fanout.with(r);
                }
                Some(built)
            }
            None => None,
        };
        #[cfg(feature = "otlp")]
        let otlp = match self.otlp {
            Some(o) => {
                let o = meters.iter().fold(o, Otlp::meter);
                let mut built = o.build()?;
                if let Some(r) = built.take_recorder() {
                    fanout = fanout.with(r);
                }
                Some(built)
            }
            None => None,
        };
        for r in self.recorders {
            fanout = fanout.with_boxed(r);
        }
        let request_log = match self.request_log {
            Some(log) => {
                let log = match meters.first() {
                    Some(m) => log.meter(m),
                    None => log,
                };
                Some(log.build()?)
            }
            None => None,
        };
        let guard = ExportGuard {
            #[cfg(feature = "prometheus")]
            prometheus,
            #[cfg(feature = "otlp")]
            otlp,
            request_log,
            tracing_installed: false,
        };
        Ok((guard, (!fanout.is_empty()).then_some(fanout)))
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
        let meters = self.meters.clone();
        let (mut guard, fanout) = self.build()?;
        if let Some(f) = fanout {
            metrics::set_global_recorder(f).map_err(|_| Error::RecorderAlreadySet)?;
        }
        // Meters built before the recorder existed show their series at zero from now on.
        meters.iter().for_each(Meter::register_series);
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

/// Keeps the exporters running; dropping it flushes OTLP (bounded by the export timeout),
/// writes out the queued request-log lines (bounded, about a second) and stops the
/// Prometheus listener.
#[must_use = "dropping the guard stops the exporters"]
pub struct ExportGuard {
    #[cfg(feature = "prometheus")]
    prometheus: Option<PrometheusExporter>,
    #[cfg(feature = "otlp")]
    otlp: Option<OtlpExporter>,
    request_log: Option<RequestLogWriter>,
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

    /// The request log, if enabled (e.g. for [`RequestLogWriter::dropped_lines`]).
    pub fn request_log(&self) -> Option<&RequestLogWriter> {
        self.request_log.as_ref()
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
        if let Some(log) = &self.request_log {
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
/// `init()` knows only the default prefix and the catalog's buckets. For a meter built with
/// `.prefix(..)` or `.buckets(..)`, use [`init_for`] (or [`Exporters::meter`]): otherwise its
/// histograms get fallback buckets in Prometheus and its names are not mapped back to OTel
/// names over OTLP.
///
/// # Errors
///
/// As [`Exporters::install`], plus [`Error::Config`] for bad `TOKENMETER_*` values.
pub fn init() -> Result<ExportGuard, Error> {
    Exporters::from_env()?.install()
}

/// [`init`] for a meter with a custom prefix or bucket overrides: the same environment, with
/// the meter's names, bucket bounds and drop self-metric name.
///
/// ```no_run
/// let meter = tokenmeter_core::Meter::builder()
///     .model("m")
///     .prefix("acme")
///     .buckets("itl", &[0.001, 0.01, 0.1])
///     .build();
/// let _exporters = tokenmeter_export::init_for(&meter)?;
/// # Ok::<(), tokenmeter_export::Error>(())
/// ```
///
/// # Errors
///
/// As [`init`].
pub fn init_for(meter: &Meter) -> Result<ExportGuard, Error> {
    Exporters::from_env()?.meter(meter).install()
}

#[cfg(all(test, feature = "prometheus"))]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokenmeter_core::Finish;
    use tokenmeter_core::clock::Clock;

    /// One request: TTFT 30 ms, then three more tokens 10 ms apart.
    fn run(ex: Exporters, meter: &Meter, mock: &tokenmeter_core::clock::Mock) -> String {
        let (guard, fanout) = ex.install_tracing(false).build().expect("build");
        let fanout = fanout.expect("fanout");
        metrics::with_local_recorder(&fanout, || {
            let mut req = meter.request().prompt_tokens(4).start();
            mock.increment(Duration::from_millis(30));
            req.token();
            for _ in 0..3 {
                mock.increment(Duration::from_millis(10));
                req.token();
            }
            req.finish(Finish::Stop);
        });
        guard.prometheus().expect("prometheus").render()
    }

    fn sample(body: &str, name: &str, le: &str) -> Option<u64> {
        let le = format!("le=\"{le}\"");
        body.lines()
            .find(|l| l.starts_with(&format!("{name}_bucket{{")) && l.contains(&le))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn exporters_meter_brings_the_meters_prefix_and_bucket_overrides() {
        let (clock, mock) = Clock::mock();
        let meter = Meter::builder()
            .model("m")
            .prefix("acme")
            .buckets("itl", &[0.004, 0.04])
            .buckets("ttft", &[0.123])
            .clock(clock)
            .build();
        let itl = meter
            .metric_names()
            .name(tokenmeter_core::catalog::by_id("itl").expect("itl"));
        assert_eq!(itl, "acme_inter_token_latency_seconds");
        let ttft = meter
            .metric_names()
            .name(tokenmeter_core::catalog::by_id("ttft").expect("ttft"));
        let prom = || Prometheus::new().without_listener();

        let body = run(
            Exporters::new().prometheus(prom()).meter(&meter),
            &meter,
            &mock,
        );
        assert_eq!(sample(&body, itl, "0.004"), Some(0), "{body}");
        assert_eq!(sample(&body, itl, "0.04"), Some(3), "{body}");
        assert_eq!(sample(&body, ttft, "0.123"), Some(1), "{body}");

        // Without the meter, the custom prefix's histogram falls back to other bounds.
        let body = run(Exporters::new().prometheus(prom()), &meter, &mock);
        assert_eq!(sample(&body, itl, "0.004"), None, "{body}");
        assert_eq!(sample(&body, ttft, "0.123"), None, "{body}");
    }
}
