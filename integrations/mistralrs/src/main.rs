//! `tokenmeter-mistralrs`: the OpenAI-compatible server of this crate on a local GGUF model.
//!
//! ```text
//! cargo run --release -- --model ../../.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf --addr 127.0.0.1:8080
//! curl -N localhost:8080/v1/chat/completions -d '{"messages":[{"role":"user","content":"Hi"}],"stream":true}'
//! curl localhost:8080/metrics
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Parser;
use tokenmeter::Meter;
use tokenmeter::export::Prometheus;
use tokenmeter_mistralrs::{AppState, load_gguf, router};

/// An OpenAI-compatible streaming chat server on mistral.rs, metered with tokenmeter.
#[derive(Parser)]
struct Args {
    /// The GGUF model file (its tokenizer and chat template come from its metadata).
    #[arg(long, default_value = ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")]
    model: PathBuf,
    /// Where to listen.
    #[arg(long, default_value = "127.0.0.1:8080")]
    addr: SocketAddr,
    /// The model name in responses and in the metrics' model label (default: the file stem).
    #[arg(long)]
    model_name: Option<String>,
    /// Sequences mistral.rs runs at once.
    #[arg(long, default_value_t = 16)]
    max_num_seqs: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let name = args.model_name.clone().unwrap_or_else(|| {
        args.model
            .file_stem()
            .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned())
    });
    let meter = Meter::builder().model(name.clone()).build();
    // Served on this server's own /metrics, not on a listener of its own.
    let prometheus = Prometheus::new()
        .without_listener()
        .meter(&meter)
        .install()?;
    let load = meter.model_load();
    let model = load_gguf(&args.model, args.max_num_seqs).await?;
    let took = load.done();
    let app = router(AppState::new(
        Arc::new(model),
        meter,
        name,
        prometheus.renderer(),
    ));
    let listener = tokio::net::TcpListener::bind(args.addr).await?;
    eprintln!(
        "model loaded in {took:.1?}; listening on http://{}",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
