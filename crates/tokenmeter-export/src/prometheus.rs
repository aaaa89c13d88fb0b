//! Prometheus exposition through `metrics-exporter-prometheus`, with every histogram given its
//! catalog bucket bounds (so no summary is ever rendered), a small scrape listener of our own on
//! 127.0.0.1:9464 by default, and an upkeep thread that keeps memory bounded between scrapes.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use metrics::{Recorder, SharedString};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use metrics_util::MetricKindMask;
use tokenmeter_core::Meter;
use tokenmeter_core::catalog::{self, MetricKind};

use crate::Error;
use crate::names::NameMap;

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
    upkeep: Duration,
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
            upkeep: Duration::from_secs(5),
            idle_timeout: None,
            prefixes: Vec::new(),
            meters: Vec::new(),
            buckets: Vec::new(),
            global_labels: Vec::new(),
        }
    }
}

impl Prometheus {
    /// The defaults: listener on 127.0.0.1:9464, upkeep every 5 s, no idle timeout.
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

    /// How often histogram data is drained into the exposition state (default 5 s). This
    /// keeps memory bounded however rarely Prometheus scrapes.
    pub fn upkeep_interval(mut self, every: Duration) -> Self {
        self.upkeep = every.max(Duration::from_millis(10));
        self
    }

    /// Drops series not updated for `timeout` from the exposition (default: never). Bounds
    /// memory when label values churn (e.g. many short-lived models).
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

    /// A label added to every series (e.g. `replica`).
    pub fn global_label(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.global_labels.push((key.into(), value.into()));
        self
    }

    /// Builds the recorder and starts the listener and upkeep threads, without installing the
    /// recorder globally (compose it with [`crate::Exporters`] or install it yourself).
    ///
    /// # Errors
    ///
    /// [`Error::Bind`] when the listen address cannot be bound (port already taken, address
    /// not local); [`Error::Config`] for empty bucket lists; [`Error::Io`] when a thread cannot
    /// be spawned.
    pub fn build(self) -> Result<PrometheusExporter, Error> {
        let names = NameMap::new(&self.prefixes, &self.meters);
        let fallback: &[f64] = catalog::core::GENAI_DURATION_BUCKETS;
        let mut builder = PrometheusBuilder::new()
            .upkeep_timeout(self.upkeep)
            .set_buckets(fallback)
            .map_err(|e| Error::Config(e.to_string()))?;
        if let Some(idle) = self.idle_timeout {
            builder = builder.idle_timeout(MetricKindMask::ALL, Some(idle));
        }
        for (name, info) in names.iter() {
            if let Some(b) = &info.buckets {
                builder = builder
                    .set_buckets_for_metric(Matcher::Full(name.clone()), b)
                    .map_err(|e| Error::Config(format!("{name}: {e}")))?;
            }
        }
        for (name, b) in &self.buckets {
            builder = builder
                .set_buckets_for_metric(Matcher::Full(name.clone()), b)
                .map_err(|e| Error::Config(format!("{name}: {e}")))?;
        }
        for (k, v) in &self.global_labels {
            builder = builder.add_global_label(k, v);
        }
        let recorder = builder.build_recorder();
        for (name, info) in names.iter() {
            let key = metrics::KeyName::from(name.clone());
            let unit = catalog::metrics_unit(info.def.unit);
            let desc = SharedString::const_str(info.def.description);
            match info.def.kind {
                MetricKind::Counter => recorder.describe_counter(key, unit, desc),
                MetricKind::Gauge => recorder.describe_gauge(key, unit, desc),
                MetricKind::Histogram => recorder.describe_histogram(key, unit, desc),
            }
        }
        let handle = recorder.handle();
        let shutdown = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        let mut local_addr = None;
        if let Some(addr) = self.addr {
            let listener =
                TcpListener::bind(addr).map_err(|source| Error::Bind { addr, source })?;
            let bound = listener.local_addr().map_err(Error::Io)?;
            local_addr = Some(bound);
            let (h, stop) = (handle.clone(), shutdown.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(LISTENER_THREAD.into())
                    .spawn(move || serve(&listener, &h, &stop))
                    .map_err(Error::Io)?,
            );
        }
        let (h, stop, every) = (handle.clone(), shutdown.clone(), self.upkeep);
        threads.push(
            std::thread::Builder::new()
                .name("tokenmeter-prometheus-upkeep".into())
                .spawn(move || upkeep(&h, &stop, every))
                .map_err(Error::Io)?,
        );
        Ok(PrometheusExporter {
            recorder: Some(recorder),
            handle,
            local_addr,
            shutdown,
            threads,
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
        let mut exporter = self.build()?;
        if let Some(recorder) = exporter.recorder.take() {
            metrics::set_global_recorder(recorder).map_err(|_| Error::RecorderAlreadySet)?;
        }
        Ok(exporter)
    }
}

/// A cheap, cloneable handle that renders the exposition.
#[derive(Clone, Debug)]
pub struct PrometheusRender {
    handle: PrometheusHandle,
}

impl PrometheusRender {
    /// The text exposition (Content-Type [`CONTENT_TYPE`]).
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

/// A running Prometheus exporter: the recorder (until installed or taken), a renderer, and the
/// listener and upkeep threads, stopped on drop.
#[derive(Debug)]
pub struct PrometheusExporter {
    recorder: Option<PrometheusRecorder>,
    handle: PrometheusHandle,
    local_addr: Option<SocketAddr>,
    shutdown: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl PrometheusExporter {
    /// The text exposition as the listener serves it.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// A cloneable renderer for an HTTP handler (see the axum example).
    pub fn renderer(&self) -> PrometheusRender {
        PrometheusRender {
            handle: self.handle.clone(),
        }
    }

    /// The address the listener is bound to (`None` without a listener).
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.local_addr
    }

    /// Takes the recorder out to compose it (e.g. in a `metrics_util` fanout); `None` once
    /// installed or taken.
    pub fn take_recorder(&mut self) -> Option<PrometheusRecorder> {
        self.recorder.take()
    }

    /// Drains histogram data now (the upkeep thread does it periodically).
    pub fn run_upkeep(&self) {
        self.handle.run_upkeep();
    }
}

impl Drop for PrometheusExporter {
    fn drop(&mut self) {
        self.shutdown.store(true, Ordering::SeqCst);
        // Wake the accept loop; it sees the flag and exits. If the wake-up connection cannot
        // be made, the accept thread is left blocked (detached) rather than hanging the drop.
        let woke = self.local_addr.is_none_or(|addr| {
            TcpStream::connect_timeout(&wake_addr(addr), Duration::from_millis(500)).is_ok()
        });
        for t in self.threads.drain(..) {
            let is_listener = t.thread().name() == Some(LISTENER_THREAD);
            t.thread().unpark();
            if !is_listener || woke {
                let _ = t.join();
            }
        }
    }
}

const LISTENER_THREAD: &str = "tokenmeter-prometheus";

fn wake_addr(addr: SocketAddr) -> SocketAddr {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(IpAddr::V6(Ipv6Addr::LOCALHOST), addr.port())
        }
        _ => addr,
    }
}

fn upkeep(handle: &PrometheusHandle, stop: &AtomicBool, every: Duration) {
    while !stop.load(Ordering::SeqCst) {
        std::thread::park_timeout(every);
        handle.run_upkeep();
    }
}

fn serve(listener: &TcpListener, handle: &PrometheusHandle, stop: &AtomicBool) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(mut stream) = conn else { continue };
        // A stalled client holds the listener for at most these timeouts.
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = stream.set_write_timeout(Some(Duration::from_secs(5)));
        let _ = respond(&mut stream, handle);
    }
}

fn respond(stream: &mut TcpStream, handle: &PrometheusHandle) -> std::io::Result<()> {
    let mut buf = [0u8; 8192];
    let mut len = 0;
    while len < buf.len() {
        let n = stream.read(&mut buf[len..])?;
        if n == 0 {
            break;
        }
        len += n;
        if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..len]);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    let (status, ctype, body) = match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", CONTENT_TYPE, handle.render()),
        ("GET" | "HEAD", "/") => (
            "200 OK",
            "text/plain; charset=utf-8",
            "tokenmeter: see /metrics\n".to_owned(),
        ),
        ("GET" | "HEAD", _) => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "not found\n".to_owned(),
        ),
        _ => (
            "405 Method Not Allowed",
            "text/plain; charset=utf-8",
            "method not allowed\n".to_owned(),
        ),
    };
    let header = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(header.as_bytes())?;
    if method != "HEAD" {
        stream.write_all(body.as_bytes())?;
    }
    stream.flush()
}

#[cfg(test)]
mod tests {
    use super::*;
    use metrics::Key;

    fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = TcpStream::connect(addr).expect("connect");
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
        let mut out = String::new();
        s.read_to_string(&mut out).expect("read");
        out
    }

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
        assert!(
            resp.contains("gen_ai_server_time_to_first_token_seconds_bucket{le=\"0.001\"} 0"),
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
}
