//! The tokenmeter demo: an instrumented OpenAI-compatible LLM server (SmolLM2-135M on candle)
//! under load from a built-in client that checks every timing from the outside.
//!
//! `scripts/demo`, or `cargo run --release -p tokenmeter-examples --example demo -- [FLAGS]`;
//! `--help` lists the flags and their defaults, docs/demo.md describes the run.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tokenmeter_core::Naming;
use tokenmeter_examples::demo::loadgen::{LoadOptions, PromptMix};
use tokenmeter_examples::demo::{self, ServerOptions, loadgen, report};

/// The tokenmeter demo: an instrumented OpenAI-compatible LLM server (SmolLM2-135M on candle)
/// under load from a built-in client that checks every timing from the outside.
#[derive(Debug, Parser)]
// Later flags override earlier ones (scripts/demo passes --model before the user's flags).
#[command(name = "demo", args_override_self = true)]
struct Cli {
    /// GGUF file [default: $TOKENMETER_DEMO_MODEL, else
    /// .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf here or in a parent directory; missing: a
    /// random-weight model of the same architecture]
    #[arg(long, value_name = "PATH")]
    model: Option<PathBuf>,
    /// Port on 127.0.0.1, 0 for any free port [default: 0; 8000 with --serve-only]
    #[arg(long, value_name = "N")]
    port: Option<u16>,
    /// Serve until Ctrl-C, no load
    #[arg(long)]
    serve_only: bool,
    /// Concurrent client streams (0 counts as 1)
    #[arg(long, value_name = "N", default_value_t = LoadOptions::default().concurrency)]
    concurrency: usize,
    /// Load duration in seconds
    #[arg(long, value_name = "S", value_parser = seconds,
          default_value_t = LoadOptions::default().duration.as_secs_f64())]
    duration: f64,
    /// max_tokens per request (0 counts as 1)
    #[arg(long, value_name = "N", default_value_t = LoadOptions::default().max_tokens)]
    max_tokens: u32,
    /// Which prompts the clients send
    #[arg(long, value_name = "MIX", value_enum, default_value_t = LoadOptions::default().mix)]
    prompt_mix: PromptMix,
    /// Sequences the engine decodes together (0 counts as 1)
    #[arg(long, value_name = "N", default_value_t = ServerOptions::default().max_batch)]
    max_batch: usize,
    /// Where the report goes
    #[arg(long, value_name = "DIR", default_value = "target/demo-report")]
    report_dir: PathBuf,
    /// Also export metrics and traces over OTLP to URL (HTTP/protobuf, or
    /// $OTEL_EXPORTER_OTLP_PROTOCOL)
    #[arg(long, value_name = "URL")]
    otlp: Option<String>,
    /// Use gRPC for --otlp
    #[arg(long)]
    otlp_grpc: bool,
    /// Measure meter on vs off: ROUNDS interleaved pairs of runs (0 counts as 1)
    #[arg(long, value_name = "ROUNDS")]
    overhead: Option<usize>,
    /// Serve without any guard (the overhead baseline)
    #[arg(long)]
    no_meter: bool,
    /// Metric names: OpenTelemetry's, or vLLM's (vLLM's Grafana dashboard then works as is)
    #[arg(long, value_name = "NAMING", value_enum, default_value_t = NamingArg::Otel)]
    naming: NamingArg,
    /// The engine's KV budget in tokens; past it the youngest sequence is preempted (its KV
    /// dropped and recomputed at re-admission) [default: max-batch full contexts]
    #[arg(long, value_name = "TOKENS")]
    kv_budget: Option<usize>,
    /// Do not reuse the KV of the prompt prefix requests share (the system prompt)
    #[arg(long)]
    no_prefix_cache: bool,
    /// After the load, save the drift monitor's live window (prompt length and token ids,
    /// output length and token ids, perplexity, refusals) as a drift baseline to FILE
    #[arg(long, value_name = "FILE")]
    capture_baseline: Option<PathBuf>,
    /// Compare the live traffic with this drift baseline (from --capture-baseline): served on
    /// GET /drift and printed in the report
    #[arg(long, value_name = "FILE")]
    drift_baseline: Option<PathBuf>,
    /// Serve a degraded variant B (the same model, its layer matrices perturbed by seeded
    /// noise of up to half a quantization step and requantized: a poor quantization) to SHARE of
    /// the requests, on an engine of its own; KIND: noise | noise=STEPS
    #[arg(long, value_name = "SHARE[:KIND]", value_parser = demo::VariantB::parse)]
    variant_b: Option<demo::VariantB>,
    /// Golden set (JSONL: id, prompt, references, scoring) run through the server during the
    /// load, on each variant [default: examples/golden/smollm2.jsonl]
    #[arg(long, value_name = "FILE")]
    golden: Option<PathBuf>,
    /// Seconds between the end of a golden-set pass and the start of the next
    #[arg(long, value_name = "S", value_parser = seconds, default_value_t = 10.0)]
    golden_every: f64,
    /// Do not run the golden set
    #[arg(long)]
    no_golden: bool,
    /// Requests in the drift monitor's live window
    #[arg(long, value_name = "N", default_value_t = ServerOptions::default().drift_window)]
    drift_window: u64,
    /// No live view
    #[arg(long)]
    quiet: bool,
}

/// `--naming`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum NamingArg {
    /// OpenTelemetry names (`gen_ai_server_time_to_first_token_seconds`, ...)
    Otel,
    /// vLLM's names and labels (`vllm:time_to_first_token_seconds{model_name=...}`, ...)
    Vllm,
}

/// Seconds as a `Duration` can hold them (not negative, not NaN).
fn seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    Duration::try_from_secs_f64(v)
        .map(|_| v)
        .map_err(|e| format!("{v} seconds: {e}"))
}

struct Args {
    golden: Option<(PathBuf, Duration)>,
    server: ServerOptions,
    serve_only: bool,
    load: LoadOptions,
    report_dir: PathBuf,
    overhead_rounds: usize,
    capture_baseline: Option<PathBuf>,
}

impl From<Cli> for Args {
    fn from(c: Cli) -> Self {
        let load = LoadOptions {
            concurrency: c.concurrency.max(1),
            // `seconds` accepted it, so this cannot fall back.
            duration: Duration::try_from_secs_f64(c.duration)
                .unwrap_or(LoadOptions::default().duration),
            max_tokens: c.max_tokens.max(1),
            mix: c.prompt_mix,
            live: !c.quiet,
            ..LoadOptions::default()
        };
        let server = ServerOptions {
            model_path: Some(c.model.unwrap_or_else(|| {
                demo::model::find_cached_model()
                    .unwrap_or_else(|| PathBuf::from(demo::model::DEFAULT_MODEL_PATH))
            })),
            port: c.port.unwrap_or(if c.serve_only { 8000 } else { 0 }),
            meter_on: !c.no_meter,
            max_batch: c.max_batch.max(1),
            window: load.duration + Duration::from_secs(60),
            otlp: c.otlp,
            otlp_grpc: c.otlp_grpc,
            gpu_sampler: true,
            naming: match c.naming {
                NamingArg::Otel => Naming::OpenTelemetry,
                NamingArg::Vllm => Naming::Vllm,
            },
            kv_budget: c.kv_budget,
            prefix_cache: !c.no_prefix_cache,
            drift_baseline: c.drift_baseline,
            drift_window: c.drift_window,
            variant_b: c.variant_b,
            ..ServerOptions::default()
        };
        let golden = (!c.no_golden).then(|| {
            (
                c.golden.unwrap_or_else(demo::golden::default_path),
                Duration::try_from_secs_f64(c.golden_every).unwrap_or(Duration::from_secs(10)),
            )
        });
        Self {
            golden,
            server,
            serve_only: c.serve_only,
            load,
            report_dir: c.report_dir,
            overhead_rounds: c.overhead.map_or(0, |n| n.max(1)),
            capture_baseline: c.capture_baseline,
        }
    }
}

fn main() {
    let args = Args::from(Cli::parse());
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("demo: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = rt.block_on(run(args));
    std::process::exit(code);
}

async fn run(args: Args) -> i32 {
    if args.overhead_rounds > 0 {
        return match loadgen::overhead(&args.server, &args.load, args.overhead_rounds).await {
            Ok(r) => {
                println!("{r}");
                0
            }
            Err(e) => {
                eprintln!("demo: overhead run failed: {e}");
                1
            }
        };
    }
    let server = match demo::start_server(&args.server).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("demo: cannot start the server: {e}");
            return 1;
        }
    };
    eprintln!(
        "demo: serving {} on {} (model loaded in {:.2} s{})",
        server.model_id,
        server.base_url(),
        server.load_time.as_secs_f64(),
        if server.random {
            ", random weights"
        } else {
            ""
        }
    );
    eprintln!(
        "demo: endpoints POST /v1/chat/completions /v1/completions, GET /metrics /health /v1/tokenmeter/snapshot /drift"
    );
    if let Some(url) = &args.server.otlp {
        eprintln!("demo: exporting OTLP metrics and traces to {url}");
    }
    if args.serve_only {
        let _ = tokio::signal::ctrl_c().await;
        demo::telemetry::flush();
        return 0;
    }
    let mut load = args.load.clone();
    if let Some((path, every)) = &args.golden {
        match tokenmeter::quality::probe::GoldenSet::load(path) {
            Ok(set) => {
                load.golden = Some(demo::golden::GoldenProbe {
                    set,
                    meter: server.meter.clone(),
                    ab: server.ab.clone(),
                    every: *every,
                    variants: if args.server.variant_b.is_some() {
                        vec!["a".into(), "b".into()]
                    } else {
                        Vec::new()
                    },
                })
            }
            Err(e) => eprintln!("demo: golden set not run: {e}"),
        }
    }
    let result = match loadgen::run(&server.base_url(), &server.model_id, &load).await {
        Ok(r) => r,
        Err(e) => {
            eprintln!("demo: load generator failed: {e}");
            return 1;
        }
    };
    let server_view = match loadgen::ServerView::fetch(&server.base_url(), &server.model_id).await {
        Ok(v) => v,
        Err(e) => {
            eprintln!("demo: cannot read the server's metrics: {e}");
            return 1;
        }
    };
    let mut table = report::table(&result, &server_view, &server.meter);
    if let Some(v) = report::variants(&result) {
        table.push('\n');
        table.push_str(&v);
    }
    if let Some(ab) = &server.ab {
        table.push_str(&format!("\n{}\n", ab.readout("a", "b")));
    }
    if let Some(d) = &server.drift {
        if let Some(r) = d.evaluate() {
            table.push_str(&format!("\n{r}\n"));
        }
        if let Some(path) = &args.capture_baseline {
            let w = d.window();
            match w.save(path) {
                Ok(()) => table.push_str(&format!(
                    "\ndrift baseline: {} requests, {} output tokens -> {}\n",
                    w.traffic.requests,
                    w.traffic.tokens,
                    path.display()
                )),
                Err(e) => eprintln!("demo: {e}"),
            }
        }
    }
    println!("{table}");
    match report::write(&args.report_dir, &result, &server_view, &table) {
        Ok(paths) => {
            for p in paths {
                println!("report: {}", p.display());
            }
        }
        Err(e) => eprintln!("demo: cannot write the report: {e}"),
    }
    if let Some(g) = server.gpu.as_ref().and_then(|h| h.latest()) {
        println!(
            "gpu sampler: {:?} ({} GPU(s) read)",
            g.gpu_availability,
            g.gpus.len()
        );
    }
    demo::telemetry::flush();
    0
}
