//! A small, strict OTLP receiver for tests, on the official protobuf definitions
//! (`opentelemetry-proto`): gRPC through tonic, HTTP/protobuf through axum. It keeps every
//! request it accepted; it can be told to refuse (gRPC `UNAVAILABLE`, HTTP 503). [`Stalled`]
//! accepts TCP connections and never reads them.

use std::net::{SocketAddr, TcpListener as StdListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use opentelemetry_proto::tonic::collector::metrics::v1::metrics_service_server::{
    MetricsService, MetricsServiceServer,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    ExportMetricsServiceRequest, ExportMetricsServiceResponse,
};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::metrics::v1::Metric;
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;

/// Which OTLP transport a receiver speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// gRPC (tonic).
    Grpc,
    /// HTTP/protobuf (`POST /v1/metrics`, `POST /v1/traces`).
    Http,
}

#[derive(Default)]
struct State {
    metrics: Mutex<Vec<ExportMetricsServiceRequest>>,
    traces: Mutex<Vec<ExportTraceServiceRequest>>,
    refuse: AtomicBool,
    /// Requests rejected as malformed (wrong content type, undecodable body).
    malformed: Mutex<Vec<String>>,
}

/// A running receiver; stops on drop.
pub struct OtlpReceiver {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its transport.
    pub transport: Transport,
    state: Arc<State>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    rt: Option<tokio::runtime::Runtime>,
}

#[derive(Clone)]
struct Svc(Arc<State>);

#[tonic::async_trait]
impl MetricsService for Svc {
    async fn export(
        &self,
        request: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        if self.0.refuse.load(Ordering::SeqCst) {
            return Err(tonic::Status::unavailable("refusing (test)"));
        }
        lock(&self.0.metrics).push(request.into_inner());
        Ok(tonic::Response::new(ExportMetricsServiceResponse {
            partial_success: None,
        }))
    }
}

#[tonic::async_trait]
impl TraceService for Svc {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        if self.0.refuse.load(Ordering::SeqCst) {
            return Err(tonic::Status::unavailable("refusing (test)"));
        }
        lock(&self.0.traces).push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn check_content_type(state: &State, headers: &HeaderMap, path: &str) -> Result<(), StatusCode> {
    let ct = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct != "application/x-protobuf" {
        lock(&state.malformed).push(format!("{path}: content-type {ct:?}"));
        return Err(StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }
    if state.refuse.load(Ordering::SeqCst) {
        return Err(StatusCode::SERVICE_UNAVAILABLE);
    }
    Ok(())
}

async fn http_metrics(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<([(&'static str, &'static str); 1], Vec<u8>), StatusCode> {
    check_content_type(&state, &headers, "/v1/metrics")?;
    let req = ExportMetricsServiceRequest::decode(body).map_err(|e| {
        lock(&state.malformed).push(format!("/v1/metrics: {e}"));
        StatusCode::BAD_REQUEST
    })?;
    lock(&state.metrics).push(req);
    Ok((
        [("content-type", "application/x-protobuf")],
        ExportMetricsServiceResponse {
            partial_success: None,
        }
        .encode_to_vec(),
    ))
}

async fn http_traces(
    axum::extract::State(state): axum::extract::State<Arc<State>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<([(&'static str, &'static str); 1], Vec<u8>), StatusCode> {
    check_content_type(&state, &headers, "/v1/traces")?;
    let req = ExportTraceServiceRequest::decode(body).map_err(|e| {
        lock(&state.malformed).push(format!("/v1/traces: {e}"));
        StatusCode::BAD_REQUEST
    })?;
    lock(&state.traces).push(req);
    Ok((
        [("content-type", "application/x-protobuf")],
        ExportTraceServiceResponse {
            partial_success: None,
        }
        .encode_to_vec(),
    ))
}

impl OtlpReceiver {
    /// Starts a receiver on `addr` (port 0 for a free one).
    ///
    /// # Panics
    ///
    /// When the address cannot be bound or the runtime cannot start.
    pub fn start(transport: Transport, addr: SocketAddr) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-receiver")
            .enable_all()
            .build()
            .expect("receiver runtime");
        let std_listener = StdListener::bind(addr).expect("bind receiver");
        std_listener.set_nonblocking(true).expect("nonblocking");
        let addr = std_listener.local_addr().expect("local addr");
        let state = Arc::new(State::default());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let st = state.clone();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
            let signal = async {
                let _ = rx.await;
            };
            match transport {
                Transport::Grpc => {
                    let svc = Svc(st);
                    let _ = tonic::transport::Server::builder()
                        .add_service(MetricsServiceServer::new(svc.clone()))
                        .add_service(TraceServiceServer::new(svc))
                        .serve_with_incoming_shutdown(
                            tonic::transport::server::TcpIncoming::from(listener),
                            signal,
                        )
                        .await;
                }
                Transport::Http => {
                    let app = axum::Router::new()
                        .route("/v1/metrics", axum::routing::post(http_metrics))
                        .route("/v1/traces", axum::routing::post(http_traces))
                        .with_state(st);
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(signal)
                        .await;
                }
            }
        });
        OtlpReceiver {
            addr,
            transport,
            state,
            shutdown: Some(tx),
            rt: Some(rt),
        }
    }

    /// The base URL to give the exporter (`http://127.0.0.1:PORT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Makes it refuse (or accept again) every export.
    pub fn set_refuse(&self, refuse: bool) {
        self.state.refuse.store(refuse, Ordering::SeqCst);
    }

    /// Every metrics request accepted so far.
    pub fn metric_requests(&self) -> Vec<ExportMetricsServiceRequest> {
        lock(&self.state.metrics).clone()
    }

    /// Every trace request accepted so far.
    pub fn trace_requests(&self) -> Vec<ExportTraceServiceRequest> {
        lock(&self.state.traces).clone()
    }

    /// Every span accepted so far.
    pub fn spans(&self) -> Vec<Span> {
        self.trace_requests()
            .into_iter()
            .flat_map(|r| r.resource_spans)
            .flat_map(|rs| rs.scope_spans)
            .flat_map(|ss| ss.spans)
            .collect()
    }

    /// Every metric (with its request's resource attributes flattened away) accepted so far,
    /// in arrival order.
    pub fn metrics(&self) -> Vec<Metric> {
        self.metric_requests()
            .into_iter()
            .flat_map(|r| r.resource_metrics)
            .flat_map(|rm| rm.scope_metrics)
            .flat_map(|sm| sm.metrics)
            .collect()
    }

    /// Requests rejected as malformed (should stay empty).
    pub fn malformed(&self) -> Vec<String> {
        lock(&self.state.malformed).clone()
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// A "collector" that accepts TCP connections and never reads or answers.
pub struct Stalled {
    /// Where it listens.
    pub addr: SocketAddr,
    held: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Stalled {
    /// Starts it on a free 127.0.0.1 port.
    ///
    /// # Panics
    ///
    /// When it cannot bind.
    pub fn start() -> Self {
        let listener = StdListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let held = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (h, s) = (held.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for conn in listener.incoming() {
                if s.load(Ordering::SeqCst) {
                    return;
                }
                if let Ok(c) = conn {
                    lock(&h).push(c);
                }
            }
        });
        Stalled {
            addr,
            held,
            stop,
            thread: Some(thread),
        }
    }

    /// Connections accepted and held.
    pub fn connections(&self) -> usize {
        lock(&self.held).len()
    }

    /// The base URL.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Stalled {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
