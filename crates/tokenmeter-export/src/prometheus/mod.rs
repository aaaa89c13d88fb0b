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

use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokenmeter_core::Meter;
use tokenmeter_core::catalog;

use crate::Error;
use crate::names::NameMap;

mod listener;
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
        for (name, info) in names.iter() {
            let name = text::metric_name(name).into_owned();
            if let Some(b) = &info.buckets {
                buckets.insert(name.clone(), bounds(&name, b)?);
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
            let mut escaped = String::new();
            text::escape_label_value(&mut escaped, v);
            global_labels.push((key, escaped));
        }
        Ok(Config {
            buckets,
            fallback,
            help,
            global_labels,
            idle_timeout: self.idle_timeout,
        })
    }

    /// Builds the recorder and starts the listener thread, without installing the recorder
    /// globally (compose it with [`crate::Exporters`] or install it yourself).
    ///
    /// # Errors
    ///
    /// [`Error::Bind`] when the listen address cannot be bound (port already taken, address
    /// not local); [`Error::Config`] for an empty bucket list, a non-finite bound, an out-of-range
    /// [`max_connections`](Self::max_connections) or a zero
    /// [`request_timeout`](Self::request_timeout); [`Error::Io`] when the listener thread or
    /// its runtime cannot be started.
    pub fn build(self) -> Result<PrometheusExporter, Error> {
        self.limits.check()?;
        let registry = Arc::new(Registry::new(self.config()?));
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
        let families = self.registry.view();
        let mut out = String::with_capacity(self.last_len.load(Ordering::Relaxed) + 1024);
        text::render(&families, &mut out);
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
}
