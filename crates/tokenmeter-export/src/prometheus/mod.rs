//! Prometheus exposition: every histogram with its catalog bucket bounds (so no summary is
//! ever rendered), a scrape listener on 127.0.0.1:9464 by default (hyper on a thread and
//! runtime of the exporter's own, bounded and with deadlines: see `listener`), or a
//! [`PrometheusRender`] to mount `/metrics` in the server's own router.
//!
//! The storage and the text format are our own ([`PrometheusRecorder`]): counters and gauges
//! are single atomics and a histogram is one atomic count per bucket of fixed bounds, so a
//! guard flushing `n` inter-token latencies of one bucket costs one bucket lookup and two
//! atomic adds, not `n` recorded samples, memory is fixed per series with no upkeep between
//! scrapes, and a render only formats numbers into label sets escaped once, at registration.
//! `metrics-exporter-prometheus`, which stores every sample until an upkeep pass, took
//! 26 ms to render the benchmark's 3750 series and records a weighted sample one at a time;
//! the tests compare our exposition with its output for the same operations.
//!
//! `GET /metrics` answers in the format its `Accept` header prefers ([`Format`]): the classic
//! text format (the default), OpenMetrics 1.0 text (exemplars, units), or the protobuf format
//! that carries native histograms ([`NativeHistograms`]) beside the classic buckets.

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokenmeter_core::Meter;
use tokenmeter_core::catalog;

use crate::Error;
use crate::names::NameMap;

mod exemplar;
mod listener;
mod native;
mod proto;
mod registry;
mod text;

use listener::{Limits, Listener};

pub use registry::PrometheusRecorder;
use registry::{Bounds, Config, Registry};

/// The default scrape address: loopback only, port 9464 (the OpenTelemetry Prometheus
/// exporter's registered default).
pub const DEFAULT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

/// The Content-Type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";
/// The Content-Type of the OpenMetrics 1.0 text format.
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// The Content-Type of the protobuf format: length-delimited `io.prometheus.client.MetricFamily`
/// messages.
pub const PROTOBUF_CONTENT_TYPE: &str =
    "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited";

/// An exposition format, chosen per scrape from the `Accept` header.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Format {
    /// Prometheus text format 0.0.4 ([`CONTENT_TYPE`]): classic histograms, no exemplars.
    Text,
    /// OpenMetrics 1.0 text ([`OPENMETRICS_CONTENT_TYPE`]): `# UNIT` metadata, the trace id
    /// of a request as the exemplar of the bucket its latency fell in, `# EOF`.
    OpenMetrics,
    /// Prometheus protobuf ([`PROTOBUF_CONTENT_TYPE`]): classic buckets, native histograms
    /// (when on) and exemplars. Prometheus asks for it with `--enable-feature=native-histograms`.
    Protobuf,
}

impl Format {
    /// The format an `Accept` header value prefers among those we serve: the media range with
    /// the highest `q` (the first of equals) that names the protobuf format
    /// (`application/vnd.google.protobuf` with `proto=io.prometheus.client.MetricFamily` and
    /// `encoding=delimited`), OpenMetrics text (`application/openmetrics-text`) or the text
    /// format (`text/plain`); [`Format::Text`] when none does, or without a header.
    ///
    /// ```
    /// use tokenmeter_export::prometheus::Format;
    /// // What Prometheus sends with native histograms enabled.
    /// let accept = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;\
    ///               encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2";
    /// assert_eq!(Format::from_accept(Some(accept)), Format::Protobuf);
    /// assert_eq!(Format::from_accept(Some("application/openmetrics-text;version=1.0.0")), Format::OpenMetrics);
    /// assert_eq!(Format::from_accept(None), Format::Text);
    /// ```
    pub fn from_accept(accept: Option<&str>) -> Format {
        let mut best = (Format::Text, 0.0f32);
        for range in accept.unwrap_or("").split(',') {
            let Ok(mime) = range.trim().parse::<mime::Mime>() else {
                continue;
            };
            let param = |name: &str| mime.get_param(name).map(|v| v.as_str().to_owned());
            let q = param("q")
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let format = match (mime.type_().as_str(), mime.subtype().as_str()) {
                ("application", "vnd.google.protobuf")
                    if param("proto").as_deref() == Some("io.prometheus.client.MetricFamily")
                        && param("encoding").as_deref() == Some("delimited") =>
                {
                    Format::Protobuf
                }
                ("application", "openmetrics-text") => Format::OpenMetrics,
                ("text", "plain") => Format::Text,
                _ => continue,
            };
            if q > best.1 {
                best = (format, q);
            }
        }
        best.0
    }

    /// The Content-Type of a response in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => CONTENT_TYPE,
            Format::OpenMetrics => OPENMETRICS_CONTENT_TYPE,
            Format::Protobuf => PROTOBUF_CONTENT_TYPE,
        }
    }
}

/// One rendered exposition: its format (whose [`Format::content_type`] goes in the
/// response's `Content-Type`) and its body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exposition {
    /// The format of `body`.
    pub format: Format,
    /// The body: UTF-8 text for the text formats, protobuf bytes for [`Format::Protobuf`].
    pub body: Vec<u8>,
}

impl Exposition {
    /// The Content-Type header value of the body.
    pub fn content_type(&self) -> &'static str {
        self.format.content_type()
    }
}

/// Native histograms: sparse exponential buckets kept beside every histogram's classic
/// buckets and exposed in the protobuf format, so that `histogram_quantile` needs no bucket
/// configuration and stays within one bucket's relative width (`2^(2^-schema) - 1`: 2.2 % at
/// the default schema 5) of the exact value, from microseconds to hours.
///
/// A series reports at most [`max_buckets`](Self::max_buckets) populated buckets (default
/// 160, OpenTelemetry's default for exponential histograms); past that a render merges
/// neighbouring buckets, lowering the schema (and halving the resolution) one step at a time.
///
/// ```
/// use tokenmeter_export::Prometheus;
/// use tokenmeter_export::prometheus::NativeHistograms;
/// let prom = Prometheus::new()
///     .without_listener()
///     .native_histograms(Some(NativeHistograms::new().schema(3).max_buckets(100)))
///     .build()?;
/// # drop(prom);
/// # Ok::<(), tokenmeter_export::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub struct NativeHistograms {
    schema: i8,
    max_buckets: usize,
}

impl Default for NativeHistograms {
    fn default() -> Self {
        NativeHistograms {
            schema: 5,
            max_buckets: 160,
        }
    }
}

impl NativeHistograms {
    /// Schema 5 (32 buckets an octave), at most 160 buckets per series.
    pub fn new() -> Self {
        Self::default()
    }

    /// The resolution: `2^schema` buckets an octave, from 0 (one per power of two) to 8
    /// (Prometheus's highest); else [`Error::Config`] at [`Prometheus::build`]. Memory per
    /// histogram series: a pointer per 64 buckets of the 128 octaves covered, plus 512 bytes
    /// per 64 buckets in use.
    pub fn schema(mut self, schema: i8) -> Self {
        self.schema = schema;
        self
    }

    /// The most buckets one series reports (at least 1, else [`Error::Config`] at
    /// [`Prometheus::build`]).
    pub fn max_buckets(mut self, n: usize) -> Self {
        self.max_buckets = n;
        self
    }
}

/// Builder of the Prometheus exporter.
///
/// ```no_run
/// use tokenmeter_export::Prometheus;
/// // Serves http://127.0.0.1:9464/metrics until the returned exporter is dropped.
/// let prom = Prometheus::new().install()?;
/// println!("scrape {}", prom.local_addr().unwrap());
/// # Ok::<(), tokenmeter_export::Error>(())
/// ```
///
/// Without a listener, mount [`PrometheusExporter::render`] in your own router:
///
/// ```
/// use tokenmeter_export::Prometheus;
/// let prom = Prometheus::new().without_listener().build()?;
/// let render = prom.renderer();
/// let body: String = render.render(); // serve with Content-Type tokenmeter_export::prometheus::CONTENT_TYPE
/// # let _ = body;
/// # Ok::<(), tokenmeter_export::Error>(())
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct Prometheus {
    addr: Option<SocketAddr>,
    limits: Limits,
    idle_timeout: Option<Duration>,
    prefixes: Vec<String>,
    meters: Vec<Meter>,
    buckets: Vec<(String, Vec<f64>)>,
    global_labels: Vec<(String, String)>,
    native: Option<NativeHistograms>,
    exemplars: bool,
}

impl Default for Prometheus {
    fn default() -> Self {
        Prometheus {
            addr: Some(DEFAULT_ADDR),
            limits: Limits {
                max_connections: listener::DEFAULT_MAX_CONNECTIONS,
                request_timeout: listener::DEFAULT_REQUEST_TIMEOUT,
            },
            idle_timeout: None,
            prefixes: Vec::new(),
            meters: Vec::new(),
            buckets: Vec::new(),
            global_labels: Vec::new(),
            native: Some(NativeHistograms::default()),
            exemplars: true,
        }
    }
}

impl Prometheus {
    /// The defaults: listener on 127.0.0.1:9464 serving up to 128 connections at once with a
    /// 10 s deadline each, no idle timeout.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves `/metrics` on `addr` (port 0 picks a free port; see
    /// [`PrometheusExporter::local_addr`]). Binding a non-loopback address exposes the metrics
    /// to the network: do it deliberately.
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.addr = Some(addr);
        self
    }

    /// No listener: serve [`PrometheusExporter::render`] from your own HTTP router.
    pub fn without_listener(mut self) -> Self {
        self.addr = None;
        self
    }

    /// The listener serves at most `n` connections at once (default 128); further peers wait
    /// in the kernel's accept queue until a connection ends, each of which ends within the
    /// [`request_timeout`](Self::request_timeout). Must be at least 1 and at most
    /// `usize::MAX >> 3` (tokio's semaphore bound), else [`Error::Config`] at
    /// [`build`](Self::build).
    pub fn max_connections(mut self, n: usize) -> Self {
        self.limits.max_connections = n;
        self
    }

    /// The deadline of one scrape connection, from accept to the response's last byte
    /// (default 10 s, Prometheus's default `scrape_timeout`); past it the connection is
    /// closed. The request head must also arrive within 5 s, or within `timeout` when that is
    /// shorter. Raise it with Prometheus's `scrape_timeout` for very large expositions. Must
    /// be non-zero (else [`Error::Config`] at [`build`](Self::build)).
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.limits.request_timeout = timeout;
        self
    }

    /// Drops a series from the exposition once nothing can update it any more (every handle
    /// to it is dropped) and its value has not changed for `timeout` (default: never).
    /// Checked at each render. Bounds memory when label values churn, e.g. many short-lived
    /// models; series whose handles are still held (the meter caches them) are kept.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = Some(timeout);
        self
    }

    /// Also covers the catalog under this prefix (meters built with `.prefix(..)`); the
    /// default prefix and both naming presets are always covered.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefixes.push(prefix.into());
        self
    }

    /// Uses this meter's names and bucket bounds (including its bucket overrides).
    pub fn meter(mut self, meter: &Meter) -> Self {
        self.meters.push(meter.clone());
        self
    }

    /// Bucket bounds for a metric emitted under `name` that is not in the catalog (for
    /// instance a server's own histogram). Histograms without bounds fall back to the
    /// catalog's GenAI duration bounds, never to a summary.
    pub fn buckets(mut self, name: impl Into<String>, bounds: &[f64]) -> Self {
        self.buckets.push((name.into(), bounds.to_vec()));
        self
    }

    /// A label added to every series (e.g. `replica`), unless the series sets that label
    /// itself.
    pub fn global_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.global_labels.push((key.into(), value.into()));
        self
    }

    /// Native histograms beside every histogram's classic buckets, served in the protobuf
    /// format (default: on, [`NativeHistograms::default`]); `None` turns them off. The classic
    /// buckets, and the text formats, are the same either way.
    pub fn native_histograms(mut self, native: Option<NativeHistograms>) -> Self {
        self.native = native;
        self
    }

    /// Whether latency buckets keep the request's trace id as an exemplar (default: on).
    /// Finding a request span's ids through the OpenTelemetry layer costs about 0.5 us per
    /// request at `finish()` (the layer builds the span's context early); off, the guard
    /// skips it unless another recorder asks for exemplars.
    pub fn exemplars(mut self, on: bool) -> Self {
        self.exemplars = on;
        self
    }

    fn config(&self) -> Result<Config, Error> {
        let names = NameMap::new(&self.prefixes, &self.meters);
        let bounds = |name: &str, b: &[f64]| {
            if b.is_empty() || b.iter().any(|v| !v.is_finite()) {
                Err(Error::Config(format!(
                    "{name}: bucket bounds must be a non-empty list of finite numbers, got {b:?}"
                )))
            } else {
                Ok(Arc::new(Bounds::new(b.to_vec())))
            }
        };
        let mut buckets = HashMap::new();
        let mut help = HashMap::new();
        let mut units = HashMap::new();
        for (name, info) in names.iter() {
            let name = text::metric_name(name).into_owned();
            if let Some(b) = &info.buckets {
                buckets.insert(name.clone(), bounds(&name, b)?);
            }
            if let Some(unit) = catalog::unit_word(info.def.unit) {
                units.insert(name.clone(), unit);
            }
            help.insert(name, info.def.description.to_owned());
        }
        for (name, b) in &self.buckets {
            let name = text::metric_name(name).into_owned();
            buckets.insert(name.clone(), bounds(&name, b)?);
        }
        let fallback = bounds("fallback", catalog::core::GENAI_DURATION_BUCKETS)?;
        let mut global_labels: Vec<(String, String)> = Vec::new();
        for (k, v) in &self.global_labels {
            let key = text::label_key(k).into_owned();
            if text::is_reserved_label(&key) || global_labels.iter().any(|(g, _)| *g == key) {
                return Err(Error::Config(format!(
                    "global label `{k}`: reserved (`le`, `quantile`, `__*`) or given twice"
                )));
            }
            global_labels.push((key, v.clone()));
        }
        let native = match self.native {
            None => None,
            Some(n) if (0..=native::MAX_SCHEMA).contains(&n.schema) && n.max_buckets > 0 => {
                Some(Arc::new(native::Layout::new(n.schema, n.max_buckets)))
            }
            Some(n) => {
                return Err(Error::Config(format!(
                    "native histograms need a schema from 0 to {} and max_buckets >= 1, got {n:?}",
                    native::MAX_SCHEMA
                )));
            }
        };
        Ok(Config {
            buckets,
            fallback,
            help,
            units,
            global_labels,
            idle_timeout: self.idle_timeout,
            native,
            exemplars: self.exemplars,
        })
    }

    /// Builds the recorder and starts the listener thread, without installing the recorder
    /// globally (compose it with [`crate::Exporters`] or install it yourself).
    ///
    /// # Errors
    ///
    /// [`Error::Bind`] when the listen address cannot be bound (port already taken, address
    /// not local); [`Error::Config`] for an empty bucket list, a non-finite bound, an out-of-range
    /// [`max_connections`](Self::max_connections), a zero
    /// [`request_timeout`](Self::request_timeout) or out-of-range
    /// [`native_histograms`](Self::native_histograms) settings; [`Error::Io`] when the listener
    /// thread or its runtime cannot be started.
    pub fn build(self) -> Result<PrometheusExporter, Error> {
        self.limits.check()?;
        let registry = Arc::new(Registry::new(self.config()?));
        if self.exemplars {
            tokenmeter_core::exemplar::set_wanted();
        }
        let render = PrometheusRender {
            registry: Arc::clone(&registry),
            last_len: Arc::new(AtomicUsize::new(0)),
        };
        let mut listener = None;
        let mut local_addr = None;
        if let Some(addr) = self.addr {
            let socket = TcpListener::bind(addr).map_err(|source| Error::Bind { addr, source })?;
            local_addr = Some(socket.local_addr().map_err(Error::Io)?);
            listener = Some(Listener::spawn(socket, render.clone(), self.limits)?);
        }
        Ok(PrometheusExporter {
            recorder: Some(PrometheusRecorder { registry }),
            render,
            local_addr,
            _listener: listener,
        })
    }

    /// [`build`](Self::build), then installs the recorder as the global `metrics` recorder.
    /// Keep the returned exporter alive: dropping it stops the listener.
    ///
    /// # Errors
    ///
    /// As [`build`](Self::build), plus [`Error::RecorderAlreadySet`] when a global recorder is
    /// already installed (compose with [`crate::Exporters`] instead).
    pub fn install(self) -> Result<PrometheusExporter, Error> {
        let meters = self.meters.clone();
        let mut exporter = self.build()?;
        if let Some(recorder) = exporter.recorder.take() {
            metrics::set_global_recorder(recorder).map_err(|_| Error::RecorderAlreadySet)?;
        }
        // Meters built before the recorder existed show their series at zero from now on.
        meters.iter().for_each(Meter::register_series);
        Ok(exporter)
    }
}

/// A cheap, cloneable handle that renders the exposition.
#[derive(Clone, Debug)]
pub struct PrometheusRender {
    registry: Arc<Registry>,
    /// The last render's length, to allocate the next one at once.
    last_len: Arc<AtomicUsize>,
}

impl PrometheusRender {
    /// The text exposition (Content-Type [`CONTENT_TYPE`]): families sorted by name, series
    /// in registration order.
    pub fn render(&self) -> String {
        self.render_text(text::Flavor::Prometheus)
    }

    /// The exposition in the format the request's `Accept` header value prefers (see
    /// [`Format::from_accept`]), for a `/metrics` route in the server's own router: send
    /// `body` with `Content-Type: content_type()`.
    ///
    /// ```
    /// use tokenmeter_export::Prometheus;
    /// use tokenmeter_export::prometheus::Format;
    /// let prom = Prometheus::new().without_listener().build()?;
    /// let exposition = prom.renderer().negotiate(Some("application/openmetrics-text; version=1.0.0"));
    /// assert_eq!(exposition.format, Format::OpenMetrics);
    /// assert!(exposition.body.ends_with(b"# EOF\n"));
    /// # Ok::<(), tokenmeter_export::Error>(())
    /// ```
    pub fn negotiate(&self, accept: Option<&str>) -> Exposition {
        let format = Format::from_accept(accept);
        Exposition {
            format,
            body: self.render_format(format),
        }
    }

    /// The exposition in `format`.
    pub fn render_format(&self, format: Format) -> Vec<u8> {
        match format {
            Format::Text => self.render().into_bytes(),
            Format::OpenMetrics => self.render_text(text::Flavor::OpenMetrics).into_bytes(),
            Format::Protobuf => {
                let families = self.registry.view();
                let mut out = Vec::with_capacity(self.last_len.load(Ordering::Relaxed) + 1024);
                proto::render(&families, &mut out);
                out
            }
        }
    }

    fn render_text(&self, flavor: text::Flavor) -> String {
        let families = self.registry.view();
        let mut out = String::with_capacity(self.last_len.load(Ordering::Relaxed) + 1024);
        text::render(&families, &mut out, flavor);
        self.last_len.store(out.len(), Ordering::Relaxed);
        out
    }
}

/// A running Prometheus exporter: the recorder (until installed or taken), a renderer, and the
/// listener, stopped on drop (its open connections are closed and its thread joined).
#[derive(Debug)]
pub struct PrometheusExporter {
    recorder: Option<PrometheusRecorder>,
    render: PrometheusRender,
    local_addr: Option<SocketAddr>,
    /// Held for its drop, which stops the listener.
    _listener: Option<Listener>,
}

impl PrometheusExporter {
    /// The text exposition as the listener serves it.
    pub fn render(&self) -> String {
        self.render.render()
    }

    /// The exposition in the format `accept` prefers (see [`PrometheusRender::negotiate`]).
    pub fn negotiate(&self, accept: Option<&str>) -> Exposition {
        self.render.negotiate(accept)
    }

    /// A cloneable renderer for an HTTP handler (see the axum example).
    pub fn renderer(&self) -> PrometheusRender {
        self.render.clone()
    }

    /// The address the listener is bound to (`None` without a listener).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Takes the recorder out to compose it (e.g. in a [`crate::Fanout`]); `None` once
    /// installed or taken.
    pub fn take_recorder(&mut self) -> Option<PrometheusRecorder> {
        self.recorder.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use listener::tests::get;
    use metrics::{Key, Label, Recorder};
    use std::collections::BTreeMap;
    use std::io::Write;

    #[test]
    fn serves_metrics_with_catalog_buckets_and_no_summary() {
        let mut prom = Prometheus::new()
            .listen("127.0.0.1:0".parse().expect("addr"))
            .build()
            .expect("build");
        let rec = prom.take_recorder().expect("recorder");
        let meta = metrics::Metadata::new("t", metrics::Level::INFO, None);
        let h = rec.register_histogram(
            &Key::from_name("gen_ai_server_time_to_first_token_seconds"),
            &meta,
        );
        h.record(0.003);
        let other = rec.register_histogram(&Key::from_name("somebody_elses_histogram"), &meta);
        other.record(1.0);
        let c = rec.register_counter(
            &Key::from_parts(
                "tokenmeter_output_tokens_total",
                vec![metrics::Label::new("model", "a\"b\nc\\d")],
            ),
            &meta,
        );
        c.increment(7);
        let addr = prom.local_addr().expect("addr");
        let resp = get(addr, "/metrics");
        assert!(resp.starts_with("HTTP/1.1 200 OK"), "{resp}");
        assert!(
            resp.contains("gen_ai_server_time_to_first_token_seconds_bucket{le=\"0.005\"} 1"),
            "{resp}"
        );
        // The catalog's TTFT bounds, up to 10 min.
        assert!(
            resp.contains("gen_ai_server_time_to_first_token_seconds_bucket{le=\"600\"} 1"),
            "{resp}"
        );
        assert!(resp.contains("somebody_elses_histogram_bucket"), "{resp}");
        assert!(!resp.contains("quantile="), "no summaries: {resp}");
        assert!(
            resp.contains(r#"tokenmeter_output_tokens_total{model="a\"b\nc\\d"} 7"#),
            "{resp}"
        );
        assert!(
            resp.contains("# TYPE gen_ai_server_time_to_first_token_seconds histogram"),
            "{resp}"
        );
        assert!(get(addr, "/nope").starts_with("HTTP/1.1 404"));
    }

    #[test]
    fn port_taken_is_a_clear_error() {
        let taken = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = Prometheus::new()
            .listen(addr)
            .build()
            .expect_err("must fail");
        let msg = err.to_string();
        assert!(matches!(err, Error::Bind { .. }), "{msg}");
        assert!(msg.contains(&addr.to_string()), "{msg}");
    }

    #[test]
    fn render_without_listener() {
        let mut prom = Prometheus::new().without_listener().build().expect("build");
        assert_eq!(prom.local_addr(), None);
        let rec = prom.take_recorder().expect("recorder");
        let meta = metrics::Metadata::new("t", metrics::Level::INFO, None);
        rec.register_gauge(&Key::from_name("tokenmeter_requests_running"), &meta)
            .set(3.0);
        assert!(prom.render().contains("tokenmeter_requests_running 3"));
    }

    /// Issue 12 §8: a meter's request series exist at zero before its first request, even
    /// when the meter was built before the recorder.
    #[test]
    fn request_series_exist_at_zero_before_any_traffic() {
        let meter = Meter::builder().model("m").build();
        let mut prom = Prometheus::new().without_listener().build().expect("build");
        let rec = prom.take_recorder().expect("recorder");
        metrics::with_local_recorder(&rec, || meter.register_series());
        let text = prom.render();
        let m = r#"gen_ai_operation_name="chat",gen_ai_provider_name="tokenmeter",gen_ai_request_model="m""#;
        for line in [
            format!("gen_ai_server_time_to_first_token_seconds_count{{{m}}} 0"),
            format!("tokenmeter_requests_total{{{m},finish_reason=\"stop\"}} 0"),
            format!("tokenmeter_requests_running{{{m}}} 0"),
            format!("tokenmeter_output_tokens_total{{{m}}} 0"),
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
    }

    fn meta() -> metrics::Metadata<'static> {
        metrics::Metadata::new("t", metrics::Level::INFO, None)
    }

    /// Sample lines as `name{sorted labels}` -> value.
    fn samples(exposition: &str) -> BTreeMap<String, f64> {
        exposition
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .map(|l| {
                let (series, value) = l.rsplit_once(' ').expect("sample line");
                let (name, labels) = match series.split_once('{') {
                    Some((n, rest)) => {
                        let mut ls: Vec<&str> = rest.trim_end_matches('}').split(',').collect();
                        ls.sort_unstable();
                        (n, ls.join(","))
                    }
                    None => (series, String::new()),
                };
                let v = match value {
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    v => v.parse().expect("value"),
                };
                (format!("{name}{{{labels}}}"), v)
            })
            .collect()
    }

    #[test]
    fn exposition_matches_metrics_exporter_prometheus_for_the_same_operations() {
        let bounds = [0.01, 0.1, 1.0, 10.0];
        let mut ours = Prometheus::new()
            .without_listener()
            .buckets("lat_seconds", &bounds)
            .global_label("replica", "r1")
            .build()
            .expect("build");
        let reference = metrics_exporter_prometheus::PrometheusBuilder::new()
            .set_buckets_for_metric(
                metrics_exporter_prometheus::Matcher::Full("lat_seconds".into()),
                &bounds,
            )
            .expect("buckets")
            .add_global_label("replica", "r1")
            .build_recorder();
        let rec = ours.take_recorder().expect("recorder");
        let recorders: [&dyn Recorder; 2] = [&rec, &reference];
        for r in recorders {
            for model in ["a", "b c", "é"] {
                let labels = vec![Label::new("model", model)];
                let c = r.register_counter(&Key::from_parts("reqs_total", labels.clone()), &meta());
                c.increment(3);
                c.increment(4);
                let g = r.register_gauge(&Key::from_parts("running", labels.clone()), &meta());
                g.set(5.0);
                g.increment(2.5);
                g.decrement(1.0);
                let h = r.register_histogram(&Key::from_parts("lat_seconds", labels), &meta());
                for v in [0.001, 0.01, 0.05, 0.5, 0.5, 3.0, 100.0] {
                    h.record(v);
                }
                h.record_many(0.2, 5);
            }
            r.register_counter(&Key::from_name("bare_total"), &meta())
                .absolute(9);
        }
        reference.handle().run_upkeep();
        let (a, b) = (
            samples(&ours.render()),
            samples(&reference.handle().render()),
        );
        assert_eq!(a.len(), 3 * (1 + 1 + 7) + 1, "{a:?}");
        assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
        for (k, v) in &a {
            let w = b[k];
            assert!(
                (v - w).abs() <= 1e-12 * w.abs().max(1.0),
                "{k}: ours {v}, reference {w}"
            );
        }
    }

    #[test]
    fn record_many_is_one_bucket_update_with_an_exact_sum() {
        let mut prom = Prometheus::new()
            .without_listener()
            .buckets("itl_seconds", &[0.01, 0.1])
            .build()
            .expect("build");
        let rec = prom.take_recorder().expect("recorder");
        let h = rec.register_histogram(&Key::from_name("itl_seconds"), &meta());
        h.record_many(0.05, 1_000_000);
        h.record_many(0.25, 3);
        h.record(f64::NAN);
        h.record_many(0.5, 0);
        let s = samples(&prom.render());
        assert_eq!(s[r#"itl_seconds_bucket{le="0.01"}"#], 0.0);
        assert_eq!(s[r#"itl_seconds_bucket{le="0.1"}"#], 1e6);
        assert_eq!(s[r#"itl_seconds_bucket{le="+Inf"}"#], 1e6 + 3.0);
        assert_eq!(s["itl_seconds_count{}"], 1e6 + 3.0);
        assert_eq!(s["itl_seconds_sum{}"], 0.05 * 1e6 + 0.75);
    }

    #[test]
    fn bounds_are_inclusive_and_histograms_without_bounds_get_the_fallback() {
        let mut prom = Prometheus::new()
            .without_listener()
            .buckets("x", &[1.0, 2.0])
            .build()
            .expect("build");
        let rec = prom.take_recorder().expect("recorder");
        let h = rec.register_histogram(&Key::from_name("x"), &meta());
        for v in [1.0, 2.0, f64::INFINITY, -5.0] {
            h.record(v);
        }
        rec.register_histogram(&Key::from_name("unknown_seconds"), &meta())
            .record(0.3);
        let text = prom.render();
        let s = samples(&text);
        assert_eq!(s[r#"x_bucket{le="1"}"#], 2.0);
        assert_eq!(s[r#"x_bucket{le="2"}"#], 3.0);
        assert_eq!(s[r#"x_bucket{le="+Inf"}"#], 4.0);
        assert_eq!(s["x_sum{}"], f64::INFINITY);
        let fallback = catalog::core::GENAI_DURATION_BUCKETS;
        assert_eq!(
            text.matches("unknown_seconds_bucket").count(),
            fallback.len() + 1
        );
        assert!(!text.contains("quantile="));
    }

    #[test]
    fn a_name_registered_as_two_kinds_keeps_the_first() {
        let mut prom = Prometheus::new().without_listener().build().expect("build");
        let rec = prom.take_recorder().expect("recorder");
        rec.register_counter(&Key::from_name("dual"), &meta())
            .increment(2);
        // The conflict is logged once, however often the other kind is registered.
        #[derive(Clone, Default)]
        struct Buf(Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().expect("buf").extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let log = Buf::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            for labels in [vec![], vec![Label::new("a", "b")], vec![]] {
                let key = Key::from_parts("dual", labels);
                rec.register_gauge(&key, &meta()).set(7.0);
                rec.register_histogram(&key, &meta()).record(1.0);
            }
        });
        let logged = String::from_utf8_lossy(&log.0.lock().expect("buf")).into_owned();
        assert_eq!(logged.matches("two kinds").count(), 1, "{logged}");
        let text = prom.render();
        assert!(text.contains("# TYPE dual counter\ndual 2\n"), "{text}");
        assert_eq!(text.matches("dual").count(), 2, "{text}");
    }

    #[test]
    fn idle_series_go_only_once_no_handle_can_update_them() {
        let mut prom = Prometheus::new()
            .without_listener()
            .idle_timeout(Duration::ZERO)
            .build()
            .expect("build");
        let rec = prom.take_recorder().expect("recorder");
        let held = rec.register_counter(&Key::from_name("held_total"), &meta());
        held.increment(1);
        rec.register_counter(&Key::from_name("dropped_total"), &meta())
            .increment(1);
        // The first pass notes each value; a value unchanged since, with no handle left,
        // is evicted at the next.
        assert!(prom.render().contains("dropped_total 1"));
        let text = prom.render();
        assert!(!text.contains("dropped_total"), "{text}");
        assert!(text.contains("held_total 1"), "{text}");
        held.increment(1);
        assert!(prom.render().contains("held_total 2"));
        // Registering the evicted key again starts a fresh series.
        rec.register_counter(&Key::from_name("dropped_total"), &meta())
            .increment(5);
        assert!(prom.render().contains("dropped_total 5"));
    }

    #[test]
    fn concurrent_updates_all_land() {
        let mut prom = Prometheus::new()
            .without_listener()
            .buckets("h", &[1.0])
            .build()
            .expect("build");
        let rec = prom.take_recorder().expect("recorder");
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    let c = rec.register_counter(&Key::from_name("c_total"), &meta());
                    let g = rec.register_gauge(&Key::from_name("g"), &meta());
                    let h = rec.register_histogram(&Key::from_name("h"), &meta());
                    for _ in 0..10_000 {
                        c.increment(1);
                        g.increment(1.0);
                        h.record_many(0.5, 2);
                    }
                });
            }
        });
        let s = samples(&prom.render());
        assert_eq!(s["c_total{}"], 40_000.0);
        assert_eq!(s["g{}"], 40_000.0);
        assert_eq!(s["h_count{}"], 80_000.0);
        assert_eq!(s["h_sum{}"], 40_000.0);
    }

    #[test]
    fn bad_bounds_are_a_config_error() {
        for bad in [&[][..], &[1.0, f64::NAN][..], &[f64::INFINITY][..]] {
            let err = Prometheus::new()
                .without_listener()
                .buckets("x", bad)
                .build()
                .expect_err("must fail");
            assert!(matches!(err, Error::Config(_)), "{err}");
        }
    }

    #[test]
    fn accept_headers_pick_the_preferred_format() {
        let cases = [
            (None, Format::Text),
            (Some(""), Format::Text),
            (Some("*/*"), Format::Text),
            (Some("text/plain;version=0.0.4"), Format::Text),
            // Prometheus's defaults, without and with native histograms.
            (
                Some(
                    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
                ),
                Format::OpenMetrics,
            ),
            (
                Some(
                    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
                ),
                Format::Protobuf,
            ),
            // q decides, not order; a protobuf range for another message or encoding is not ours.
            (
                Some("text/plain;q=0.2, application/openmetrics-text;q=0.9"),
                Format::OpenMetrics,
            ),
            (
                Some(
                    "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text",
                ),
                Format::Text,
            ),
            (
                Some("application/vnd.google.protobuf;encoding=delimited"),
                Format::Text,
            ),
            (
                Some("application/openmetrics-text;q=0, garbage;;, text/plain"),
                Format::Text,
            ),
        ];
        for (accept, want) in cases {
            assert_eq!(Format::from_accept(accept), want, "{accept:?}");
        }
    }

    /// A recorder with native histograms at `schema` and one TTFT series holding `values`.
    fn ttft_exporter(schema: i8, values: &[f64]) -> (PrometheusExporter, PrometheusRecorder) {
        let mut prom = Prometheus::new()
            .without_listener()
            .native_histograms(Some(NativeHistograms::new().schema(schema)))
            .global_label("replica", "r\"1")
            .build()
            .expect("build");
        let rec = prom.take_recorder().expect("recorder");
        let h = rec.register_histogram(
            &Key::from_parts(
                "gen_ai_server_time_to_first_token_seconds",
                vec![Label::new("model", "m")],
            ),
            &meta(),
        );
        for v in values {
            h.record(*v);
        }
        (prom, rec)
    }

    fn decode(body: &[u8]) -> Vec<proto::MetricFamily> {
        use prost::Message;
        let mut buf = body;
        let mut out = Vec::new();
        while !buf.is_empty() {
            out.push(proto::MetricFamily::decode_length_delimited(&mut buf).expect("decode"));
        }
        out
    }

    #[test]
    fn protobuf_carries_labels_classic_buckets_and_native_spans() {
        // Schema 0: buckets (2^(i-1), 2^i]. 3 and 4 share bucket 2; 16 is bucket 4 (a gap at 3).
        let (prom, rec) = ttft_exporter(0, &[3.0, 4.0, 16.0, 0.0]);
        rec.register_counter(&Key::from_name("tokenmeter_requests_total"), &meta())
            .increment(5);
        let exposition = prom.negotiate(Some(PROTOBUF_CONTENT_TYPE));
        assert_eq!(exposition.content_type(), PROTOBUF_CONTENT_TYPE);
        let families = decode(&exposition.body);
        let names: Vec<_> = families.iter().map(|f| f.name().to_owned()).collect();
        assert_eq!(
            names,
            [
                "gen_ai_server_time_to_first_token_seconds",
                "tokenmeter_requests_total"
            ]
        );
        let ttft = &families[0];
        assert_eq!(ttft.r#type, Some(proto::MetricType::Histogram as i32));
        assert_eq!(ttft.unit.as_deref(), Some("seconds"));
        assert!(
            ttft.help().contains("first output token"),
            "{:?}",
            ttft.help
        );
        let m = &ttft.metric[0];
        let labels: Vec<_> = m.label.iter().map(|l| (l.name(), l.value())).collect();
        assert_eq!(labels, [("model", "m"), ("replica", "r\"1")]);
        let h = m.histogram.as_ref().expect("histogram");
        assert_eq!(h.sample_count, Some(4));
        assert_eq!(h.sample_sum, Some(23.0));
        // Classic buckets: the catalog's TTFT bounds, cumulative, no +Inf (implied).
        let bounds = catalog::core::TTFT.buckets.unwrap_or_default();
        assert_eq!(h.bucket.len(), bounds.len());
        for (b, upper) in h.bucket.iter().zip(bounds) {
            let want = [3.0, 4.0, 16.0, 0.0]
                .iter()
                .filter(|v| **v <= *upper)
                .count() as u64;
            assert_eq!(
                (b.upper_bound, b.cumulative_count),
                (Some(*upper), Some(want))
            );
        }
        assert_eq!(h.schema, Some(0));
        assert_eq!(h.zero_count, Some(1));
        assert_eq!(h.zero_threshold, Some(native::ZERO_THRESHOLD));
        let spans: Vec<_> = h
            .positive_span
            .iter()
            .map(|s| (s.offset(), s.length()))
            .collect();
        assert_eq!(spans, [(2, 1), (1, 1)]);
        assert_eq!(h.positive_delta, [2, -1]);
        let requests = &families[1].metric[0];
        assert_eq!(requests.counter.as_ref().and_then(|c| c.value), Some(5.0));
        assert_eq!(requests.label.len(), 1); // the global label only
    }

    #[test]
    fn an_empty_native_histogram_is_still_marked_native_and_native_can_be_off() {
        let (prom, _rec) = ttft_exporter(5, &[]);
        let h = decode(&prom.negotiate(Some(PROTOBUF_CONTENT_TYPE)).body)[0].metric[0]
            .histogram
            .clone()
            .expect("histogram");
        assert_eq!(h.schema, Some(5));
        assert_eq!(h.positive_span.len(), 1);
        assert_eq!(h.positive_span[0].length(), 0);
        let mut off = Prometheus::new()
            .without_listener()
            .native_histograms(None)
            .build()
            .expect("build");
        let rec = off.take_recorder().expect("recorder");
        rec.register_histogram(&Key::from_name("x_seconds"), &meta())
            .record(1.0);
        let h = decode(&off.negotiate(Some(PROTOBUF_CONTENT_TYPE)).body)[0].metric[0]
            .histogram
            .clone()
            .expect("histogram");
        assert_eq!(
            (h.schema, h.zero_threshold, h.positive_span.len()),
            (None, None, 0)
        );
        for bad in [
            NativeHistograms::new().schema(9),
            NativeHistograms::new().schema(-1),
            NativeHistograms::new().max_buckets(0),
        ] {
            let err = Prometheus::new()
                .without_listener()
                .native_histograms(Some(bad))
                .build()
                .expect_err("bad");
            assert!(matches!(err, Error::Config(_)), "{err}");
        }
    }

    #[test]
    fn openmetrics_has_units_exemplars_counter_families_and_eof() {
        use tokenmeter_core::exemplar::{TraceIds, with_trace_ids};
        let (prom, rec) = ttft_exporter(5, &[0.3]);
        let ids = TraceIds {
            trace_id: 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736,
            span_id: 0x00f0_67aa_0ba9_02b7,
        };
        let slow = rec.register_histogram(
            &Key::from_parts(
                "gen_ai_server_time_to_first_token_seconds",
                vec![Label::new("model", "m")],
            ),
            &meta(),
        );
        with_trace_ids(ids, || slow.record(7.0));
        rec.register_counter(&Key::from_name("tokenmeter_requests_total"), &meta())
            .increment(2);
        rec.register_counter(&Key::from_name("no_suffix"), &meta())
            .increment(1);
        let text = String::from_utf8(prom.negotiate(Some("application/openmetrics-text")).body)
            .expect("utf-8");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(text.contains("# TYPE gen_ai_server_time_to_first_token_seconds histogram\n# UNIT gen_ai_server_time_to_first_token_seconds seconds\n"), "{text}");
        assert!(
            text.contains("# TYPE tokenmeter_requests counter\n"),
            "{text}"
        );
        assert!(
            text.contains("\ntokenmeter_requests_total{replica=\"r\\\"1\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE no_suffix unknown\nno_suffix{replica=\"r\\\"1\"} 1\n"),
            "{text}"
        );
        // The exemplar sits on the bucket 7 s fell in (le=10), and only there.
        let exemplar_lines: Vec<&str> = text.lines().filter(|l| l.contains(" # {")).collect();
        assert_eq!(exemplar_lines.len(), 1, "{text}");
        let line = exemplar_lines[0];
        assert!(line.starts_with("gen_ai_server_time_to_first_token_seconds_bucket{model=\"m\",replica=\"r\\\"1\",le=\"10\"} 2 # {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\",span_id=\"00f067aa0ba902b7\"} 7 "), "{line}");
        let ts: f64 = line
            .rsplit(' ')
            .next()
            .expect("ts")
            .parse()
            .expect("timestamp");
        assert!(ts > 1.6e9, "{line}");
        // The classic text format has no exemplars, units or EOF; protobuf has the exemplar.
        let classic = prom.render();
        assert!(
            !classic.contains(" # {") && !classic.contains("# UNIT") && !classic.contains("# EOF")
        );
        let h = decode(&prom.negotiate(Some(PROTOBUF_CONTENT_TYPE)).body)[0].metric[0]
            .histogram
            .clone()
            .expect("histogram");
        let with: Vec<_> = h
            .bucket
            .iter()
            .filter_map(|b| b.exemplar.as_ref().map(|e| (b.upper_bound, e.value)))
            .collect();
        assert_eq!(with, [(Some(10.0), Some(7.0))]);
    }

    /// ITL reaches the recorder as `record_many(mean, count)` per classic bucket at each guard
    /// flush, so its native buckets hold each flush's per-bucket mean: exact when a request's
    /// gaps within one classic bucket are equal, and otherwise off by at most the width of
    /// the classic bucket the gaps share (the bound docs/exporters.md states).
    #[test]
    fn itl_native_buckets_hold_each_flush_s_classic_bucket_mean() {
        use tokenmeter_core::catalog::core::ITL;
        use tokenmeter_core::clock::Clock;
        let mut prom = Prometheus::new()
            .without_listener()
            .native_histograms(Some(NativeHistograms::new().schema(5)))
            .build()
            .expect("build");
        let rec = prom.take_recorder().expect("recorder");
        let (clock, mock) = Clock::mock();
        let meter = Meter::builder().model("m").clock(clock).build();
        metrics::with_local_recorder(&rec, || {
            // Equal gaps of 0.25 ms: exact. Then gaps of 1.1, 1.5, 2.0 and 2.4 ms, all in the
            // classic ITL bucket (1 ms, 2.5 ms]: recorded as four of their mean, 1.75 ms.
            for gaps in [
                &[250_000u64; 4][..],
                &[1_100_000, 1_500_000, 2_000_000, 2_400_000][..],
            ] {
                let mut req = meter.request().start();
                mock.increment(Duration::from_millis(5));
                req.token();
                for g in gaps {
                    mock.increment(Duration::from_nanos(*g));
                    req.token();
                }
                req.finish(tokenmeter_core::Finish::Stop);
            }
        });
        let families = decode(&prom.negotiate(Some(PROTOBUF_CONTENT_TYPE)).body);
        let name = meter.metric_names().name(ITL).to_owned();
        let h = families
            .iter()
            .find(|f| f.name() == name)
            .and_then(|f| f.metric[0].histogram.clone())
            .expect("itl");
        let layout = native::Layout::new(5, 160);
        let (exact, mean) = (layout.index_of(0.00025), layout.index_of(0.00175));
        assert!(exact < mean);
        assert_eq!(h.sample_count, Some(8));
        assert_eq!(
            h.positive_span
                .iter()
                .map(|s| (s.offset(), s.length()))
                .collect::<Vec<_>>(),
            [(exact, 1), (mean - exact - 1, 1)]
        );
        assert_eq!(h.positive_delta, [4, 0]);
        // The bound: every reported bucket lies inside the classic bucket (1 ms, 2.5 ms] that
        // held the gaps; the sum stays exact.
        assert!(native::upper_bound(5, mean) <= 0.0025);
        assert!(native::upper_bound(5, mean - 1) >= 0.001);
        assert!((h.sample_sum.expect("sum") - (0.001 + 0.007)).abs() < 1e-12);
    }

    #[test]
    fn exemplars_can_be_turned_off() {
        use tokenmeter_core::exemplar::{TraceIds, with_trace_ids};
        let mut prom = Prometheus::new()
            .without_listener()
            .exemplars(false)
            .build()
            .expect("build");
        let rec = prom.take_recorder().expect("recorder");
        let h = rec.register_histogram(&Key::from_name("x_seconds"), &meta());
        let ids = TraceIds {
            trace_id: 1,
            span_id: 2,
        };
        with_trace_ids(ids, || h.record(0.5));
        let text =
            String::from_utf8(prom.negotiate(Some(OPENMETRICS_CONTENT_TYPE)).body).expect("utf-8");
        assert!(text.contains("x_seconds_count 1\n"), "{text}");
        assert!(!text.contains(" # {"), "{text}");
    }
}
