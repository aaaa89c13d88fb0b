//! The tokenmeter demo: an instrumented OpenAI-compatible LLM server (SmolLM2-135M on candle)
//! under load from a built-in client that checks every timing from the outside.
//!
//! ```text
//! cargo run --release -p tokenmeter-examples --example demo -- [FLAGS]
//!   --model PATH          GGUF file (default .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf;
//!                         missing -> a random-weight model of the same architecture)
//!   --port N              port on 127.0.0.1 (default 0: any free port; 8000 with --serve-only)
//!   --serve-only          serve until Ctrl-C, no load
//!   --concurrency N       concurrent client streams (default 4)
//!   --duration S          load duration in seconds (default 60)
//!   --max-tokens N        max_tokens per request (default 64)
//!   --prompt-mix MIX      short | long | mixed (default mixed)
//!   --max-batch N         sequences the engine decodes together (default 8)
//!   --report-dir DIR      where the report goes (default target/demo-report)
//!   --otlp URL            also export metrics and traces over OTLP to URL (HTTP/protobuf,
//!                         or OTEL_EXPORTER_OTLP_PROTOCOL)
//!   --otlp-grpc           use gRPC for --otlp
//!   --overhead ROUNDS     measure meter on vs off: ROUNDS interleaved pairs of runs
//!   --no-meter            serve without any guard (the overhead baseline)
//!   --quiet               no live view
//! ```

use std::path::PathBuf;
use std::time::Duration;

use tokenmeter_examples::demo::{self, ServerOptions, loadgen, report};

fn usage() -> ! {
    eprintln!(
        "usage: demo [--model PATH] [--port N] [--serve-only] [--concurrency N] [--duration S] \
         [--max-tokens N] [--prompt-mix short|long|mixed] [--max-batch N] [--report-dir DIR] \
         [--otlp URL] [--otlp-grpc] [--overhead ROUNDS] [--no-meter] [--quiet]"
    );
    std::process::exit(2)
}

struct Args {
    server: ServerOptions,
    serve_only: bool,
    load: loadgen::LoadOptions,
    report_dir: PathBuf,
    overhead_rounds: usize,
}

fn parse_args() -> Args {
    let mut a = Args {
        server: ServerOptions {
            model_path: Some(
                demo::model::find_cached_model()
                    .unwrap_or_else(|| PathBuf::from(demo::model::DEFAULT_MODEL_PATH)),
            ),
            gpu_sampler: true,
            ..ServerOptions::default()
        },
        serve_only: false,
        load: loadgen::LoadOptions::default(),
        report_dir: PathBuf::from("target/demo-report"),
        overhead_rounds: 0,
    };
    let mut port_set = false;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| usage());
        fn num<T: std::str::FromStr>(s: String) -> T {
            s.parse().unwrap_or_else(|_| usage())
        }
        match flag.as_str() {
            "--model" => a.server.model_path = Some(PathBuf::from(val())),
            "--port" => {
                a.server.port = num(val());
                port_set = true;
            }
            "--serve-only" => a.serve_only = true,
            "--concurrency" => a.load.concurrency = num::<usize>(val()).max(1),
            "--duration" => a.load.duration = Duration::from_secs_f64(num(val())),
            "--max-tokens" => a.load.max_tokens = num::<u32>(val()).max(1),
            "--prompt-mix" => {
                a.load.mix = match val().as_str() {
                    "short" => loadgen::PromptMix::Short,
                    "long" => loadgen::PromptMix::Long,
                    "mixed" => loadgen::PromptMix::Mixed,
                    _ => usage(),
                }
            }
            "--max-batch" => a.server.max_batch = num::<usize>(val()).max(1),
            "--report-dir" => a.report_dir = PathBuf::from(val()),
            "--otlp" => a.server.otlp = Some(val()),
            "--otlp-grpc" => a.server.otlp_grpc = true,
            "--overhead" => a.overhead_rounds = num::<usize>(val()).max(1),
            "--no-meter" => a.server.meter_on = false,
            "--quiet" => a.load.live = false,
            "-h" | "--help" => usage(),
            _ => usage(),
        }
    }
    a.server.window = a.load.duration + Duration::from_secs(60);
    if a.serve_only && !port_set {
        a.server.port = 8000;
    }
    a
}

fn main() {
    let args = parse_args();
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
        "demo: endpoints POST /v1/chat/completions /v1/completions, GET /metrics /health /v1/tokenmeter/snapshot"
    );
    if let Some(url) = &args.server.otlp {
        eprintln!("demo: exporting OTLP metrics and traces to {url}");
    }
    if args.serve_only {
        let _ = tokio::signal::ctrl_c().await;
        demo::telemetry::flush();
        return 0;
    }
    let result = match loadgen::run(&server.base_url(), &server.model_id, &args.load).await {
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
    let table = report::table(&result, &server_view, &server.meter);
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
