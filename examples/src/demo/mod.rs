//! The demo server: SmolLM2-135M-Instruct (Q4_1 GGUF) on candle, served over an OpenAI-compatible
//! HTTP API with every request measured by tokenmeter, plus a load generator that checks the
//! server's numbers from the client side. `scripts/demo` runs it; see docs/demo.md.

pub mod chat;
pub mod drift;
pub mod engine;
pub mod golden;
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

use llama::Perturb;
use model::{BoxError, Model};

pub use tokenmeter::quality::ab::VARIANT_LABEL;

/// `--variant-b SHARE[:KIND]`: a degraded copy of the model serving a share of the traffic.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VariantB {
    /// Share of requests served by B, in (0, 1].
    pub share: f64,
    /// How B's weights are degraded.
    pub perturb: Perturb,
}

impl VariantB {
    /// The default noise of `noise`, in quantization steps.
    pub const DEFAULT_STEPS: f32 = 0.5;
    /// The noise seed.
    pub const SEED: u64 = 0xB;

    /// Parses `SHARE[:KIND]`: SHARE in (0, 1]; KIND `noise` (the default: seeded noise of up
    /// to half a quantization step on every layer matrix, requantized) or `noise=STEPS`.
    ///
    /// # Errors
    /// A message saying what is wrong.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (share, kind) = s.split_once(':').unwrap_or((s, "noise"));
        let share: f64 = share.parse().map_err(|e| format!("share {share:?}: {e}"))?;
        if !(share > 0.0 && share <= 1.0) {
            return Err(format!("share {share} is not in (0, 1]"));
        }
        let steps = match kind.split_once('=') {
            None if kind == "noise" => Self::DEFAULT_STEPS,
            Some(("noise", v)) => v
                .parse::<f32>()
                .ok()
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| format!("noise={v}: not a positive number of steps"))?,
            _ => return Err(format!("unknown kind {kind:?} (noise or noise=STEPS)")),
        };
        Ok(VariantB {
            share,
            perturb: Perturb {
                seed: Self::SEED,
                steps,
            },
        })
    }

    /// Whether request number `n` (1, 2, ...) goes to B: exactly `share` of every run of
    /// requests, spread evenly.
    pub fn takes(&self, n: u64) -> bool {
        let f = |n: u64| (n as f64 * self.share).floor();
        f(n) > f(n.saturating_sub(1))
    }
}

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
    /// A drift baseline (`--capture-baseline` wrote it) to compare the live traffic with.
    pub drift_baseline: Option<PathBuf>,
    /// Requests in the drift monitor's live window.
    pub drift_window: u64,
    /// Serve a degraded variant B to a share of the traffic (a second engine on perturbed
    /// weights); requests carry `variant="a"|"b"`.
    pub variant_b: Option<VariantB>,
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
            drift_baseline: None,
            drift_window: drift::DEFAULT_WINDOW,
            variant_b: None,
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
    /// The live traffic's drift (None with the meter off).
    pub drift: Option<std::sync::Arc<drift::TrafficDrift>>,
    /// The A/B readout of variants `a` and `b` (with `--variant-b` and the meter on): every
    /// ended request, and the golden-set scores.
    pub ab: Option<std::sync::Arc<tokenmeter::quality::AbMonitor>>,
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
    let mut builder = Meter::builder();
    if opts.variant_b.is_some() {
        builder = builder.request_labels([VARIANT_LABEL], 2);
    }
    let meter = builder
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
    let mut quality = if opts.meter_on {
        let baseline = match &opts.drift_baseline {
            Some(p) => Some(drift::TrafficWindow::load(p)?),
            None => None,
        };
        let d = drift::TrafficDrift::new(&meter, baseline, opts.drift_window);
        Some(monitor::ServerQuality::new(&meter, std::sync::Arc::new(d))?)
    } else {
        None
    };
    let drift = quality.as_ref().map(|q| q.drift.clone());
    let ab = match (&mut quality, opts.variant_b) {
        (Some(q), Some(_)) => {
            let ab = std::sync::Arc::new(tokenmeter::quality::AbMonitor::new(
                &meter,
                tokenmeter::quality::AbConfig::default().window(opts.window),
            )?);
            let sink = std::sync::Arc::clone(&ab);
            q.on_end = Some(std::sync::Arc::new(move |variant, summary, report| {
                sink.record(variant, summary, report);
            }));
            Some(ab)
        }
        _ => None,
    };
    let engine_cfg = engine::EngineConfig {
        max_batch: opts.max_batch.max(1),
        kv_budget: opts.kv_budget,
        prefix_cache: opts.prefix_cache,
        report_steps: opts.meter_on,
        variant: if opts.variant_b.is_some() { "a" } else { "" },
        ..engine::EngineConfig::default()
    };
    // Variant B runs on an engine thread of its own, as a second replica would: each engine
    // batches its own sequences over its own weights (a batched pass needs one weight set), and
    // the two share the cores alike, so their latencies compare.
    let engine_b = match opts.variant_b {
        Some(v) => {
            let b = match &opts.model_path {
                Some(p) if p.is_file() => Model::load_perturbed(p, &model_id, Some(v.perturb))?,
                _ => Model::random_perturbed(&model_id, "variant b", 42, Some(v.perturb))?,
            };
            let cfg = engine::EngineConfig {
                variant: "b",
                ..engine_cfg
            };
            Some((v, engine::spawn(b, meter.clone(), quality.clone(), cfg)))
        }
        None => None,
    };
    let engine = engine::spawn(model.clone(), meter.clone(), quality, engine_cfg);
    let listener = server::bind(SocketAddr::from(([127, 0, 0, 1], opts.port))).await?;
    let addr = listener.local_addr()?;
    let state = server::AppState::new(
        meter.clone(),
        opts.meter_on,
        engine,
        model,
        render,
        drift.clone(),
    )
    .with_variant_b(engine_b);
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
        drift,
        ab,
        addr,
        meter,
        model_id,
        random,
        load_time,
        task,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variant_b_parses_and_takes_its_share() {
        let v = VariantB::parse("0.5").expect("share");
        assert_eq!((v.share, v.perturb.steps), (0.5, VariantB::DEFAULT_STEPS));
        assert_eq!(
            VariantB::parse("0.25:noise=2").expect("kind").perturb.steps,
            2.0
        );
        for bad in ["0", "1.5", "x", "0.5:int2", "0.5:noise=-1", "0.5:noise=nan"] {
            assert!(VariantB::parse(bad).is_err(), "{bad}");
        }
        let b = |share| {
            let v = VariantB::parse(share).expect("share");
            (1..=100).filter(|&n| v.takes(n)).count()
        };
        assert_eq!((b("0.5"), b("0.25"), b("1"), b("0.1")), (50, 25, 100, 10));
        // Spread evenly: a half takes every other request.
        let half = VariantB::parse("0.5").expect("share");
        assert_eq!(
            (1..=4).map(|n| half.takes(n)).collect::<Vec<_>>(),
            [false, true, false, true]
        );
    }
}
