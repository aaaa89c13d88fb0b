//! The demo server: SmolLM2-135M-Instruct (Q4_1 GGUF) on candle, served over an OpenAI-compatible
//! HTTP API with every request measured by tokenmeter, plus a load generator that checks the
//! server's numbers from the client side. `scripts/demo` runs it; see docs/demo.md.

pub mod chat;
pub mod engine;
pub mod llama;
pub mod loadgen;
pub mod model;
pub mod monitor;
pub mod report;
pub mod server;
pub mod telemetry;
pub mod tokenizer;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokenmeter_core::{Meter, Naming, Slo};

use model::{BoxError, Model};

/// The model id the real model is served under.
pub const SMOLLM2_ID: &str = "smollm2-135m-instruct-q4_1";
/// The model id of the random-weight fallback.
pub const RANDOM_ID: &str = "smollm2-arch-random";

/// How to start the server.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The GGUF file; `None` or a missing file -> the random-weight model.
    pub model_path: Option<PathBuf>,
    /// Overrides the served model id (tests use one per server: metrics carry it as a label).
    pub model_id: Option<String>,
    /// Port on 127.0.0.1 (0 = any free port).
    pub port: u16,
    /// false: no guard at all (the overhead baseline).
    pub meter_on: bool,
    /// Sequences decoded together.
    pub max_batch: usize,
    /// TTFT SLO for goodput.
    pub slo_ttft: Duration,
    /// TPOT SLO for goodput.
    pub slo_tpot: Duration,
    /// The snapshot's sliding window (the demo sets it to cover the whole run).
    pub window: Duration,
    /// OTLP endpoint for metrics and traces (first server in the process decides).
    pub otlp: Option<String>,
    /// Send OTLP over gRPC instead of HTTP/protobuf.
    pub otlp_grpc: bool,
    /// Start the GPU/host sampler.
    pub gpu_sampler: bool,
    /// Metric names: OpenTelemetry (default) or vLLM's, so vLLM's dashboard works unchanged.
    pub naming: Naming,
    /// The engine's KV budget in tokens (`None`: room for `max_batch` full contexts); past
    /// it the youngest sequence is preempted and recomputed later.
    pub kv_budget: Option<usize>,
    /// Reuse the KV of the prompt prefix requests share (the chat template's system prompt).
    pub prefix_cache: bool,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            model_path: None,
            model_id: None,
            port: 0,
            meter_on: true,
            max_batch: 8,
            slo_ttft: Duration::from_secs(2),
            slo_tpot: Duration::from_millis(250),
            window: Duration::from_secs(120),
            otlp: None,
            otlp_grpc: false,
            gpu_sampler: false,
            naming: Naming::OpenTelemetry,
            kv_budget: None,
            prefix_cache: true,
        }
    }
}

/// A running server.
pub struct RunningServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its meter.
    pub meter: Meter,
    /// The served model id.
    pub model_id: String,
    /// Whether the weights are random (the real model was not found).
    pub random: bool,
    /// Model load time.
    pub load_time: Duration,
    /// The GPU/host sampler, when started.
    pub gpu: Option<tokenmeter::gpu::SamplerHandle>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for RunningServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningServer")
            .field("addr", &self.addr)
            .field("model_id", &self.model_id)
            .field("random", &self.random)
            .finish_non_exhaustive()
    }
}

impl RunningServer {
    /// `http://addr`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting connections.
    pub fn abort(&self) {
        self.task.abort();
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Loads the model (or the random fallback, saying why in one line on stderr), starts the
/// engine thread and the HTTP server on 127.0.0.1. Must be called inside a tokio runtime.
///
/// # Errors
/// When the port cannot be bound or the random model cannot be built.
pub async fn start_server(opts: &ServerOptions) -> Result<RunningServer, BoxError> {
    let model_id_default = match &opts.model_path {
        Some(p) if p.is_file() => SMOLLM2_ID,
        _ => RANDOM_ID,
    };
    let model_id = opts
        .model_id
        .clone()
        .unwrap_or_else(|| model_id_default.to_string());
    let meter = Meter::builder()
        .model(model_id.clone())
        .provider("tokenmeter-demo")
        .naming(opts.naming)
        .slo(Slo::new().ttft(opts.slo_ttft).tpot(opts.slo_tpot))
        .window(opts.window.max(Duration::from_secs(1)))
        .build();
    let render = telemetry::install(&meter, opts.otlp.as_deref(), opts.otlp_grpc)?;
    let load = meter.model_load();
    let started = std::time::Instant::now();
    let model = match &opts.model_path {
        Some(p) if p.is_file() => Model::load(p, &model_id)?,
        other => {
            let why = match other {
                Some(p) => format!(
                    "model file {} not found (run scripts/demo --fetch-only)",
                    p.display()
                ),
                None => "no model file given".to_string(),
            };
            eprintln!("demo: using a small random-weight model of the same architecture: {why}");
            Model::random(&model_id, &why, 42)?
        }
    };
    let load_time = if opts.meter_on {
        load.done()
    } else {
        started.elapsed()
    };
    let random = matches!(model.source, model::ModelSource::Random(_));
    let quality = if opts.meter_on {
        Some(monitor::quality_monitor(&meter)?)
    } else {
        None
    };
    let engine = engine::spawn(
        model.clone(),
        meter.clone(),
        quality,
        engine::EngineConfig {
            max_batch: opts.max_batch.max(1),
            kv_budget: opts.kv_budget,
            prefix_cache: opts.prefix_cache,
            report_steps: opts.meter_on,
            ..engine::EngineConfig::default()
        },
    );
    let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], opts.port))).await?;
    let addr = listener.local_addr()?;
    let state = server::AppState::new(meter.clone(), opts.meter_on, engine, model, render);
    let task = tokio::spawn(async move {
        if let Err(e) = server::serve(listener, state).await {
            eprintln!("demo: server stopped: {e}");
        }
    });
    let gpu = if opts.gpu_sampler && opts.meter_on {
        telemetry::gpu_sampler(&meter)
    } else {
        None
    };
    Ok(RunningServer {
        gpu,
        addr,
        meter,
        model_id,
        random,
        load_time,
        task,
    })
}
