//! Captures a drift baseline from running servers' live windows, merging replicas.
//!
//! A server that runs a `DriftMonitor` serves `drift.window_baseline()` as JSON on some route;
//! the demo server serves it inside `GET /drift` (`{"window": {"traffic": ..}}`). This CLI
//! fetches that window from one or more replicas (or reads saved ones), merges them, validates
//! the result and writes it as the baseline file the `DriftMonitor` later loads with
//! `Baseline::load`:
//!
//! ```text
//! cargo run --example capture_baseline -- --from http://127.0.0.1:8000/drift \
//!     [--from http://127.0.0.1:8001/drift | --from window.json ...] --out baseline.json
//! cargo run --example capture_baseline -- --from http://127.0.0.1:8000/drift \
//!     --compare baseline.json          # print PSI / JSD of the live window against a baseline
//! cargo run --example capture_baseline   # starts the demo server (random weights) and loads it
//! ```
//!
//! One server capturing its own window is `scripts/demo --capture-baseline FILE`; this is the
//! fleet version (several replicas, any server that serves its window).

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use serde_json::Value;
use tokenmeter::quality::drift::Baseline;
use tokenmeter_examples::demo::loadgen::{self, PromptMix};
use tokenmeter_examples::demo::{ServerOptions, start_server};

type Error = Box<dyn std::error::Error + Send + Sync>;

/// Captures a drift baseline from running servers' live windows.
#[derive(Debug, Parser)]
struct Args {
    /// A live window: a URL (a server's window route, or the demo's /drift) or a saved file;
    /// several are merged. None: start the demo server, load it, and use its /drift
    #[arg(long, value_name = "URL|FILE")]
    from: Vec<String>,
    /// Where the baseline goes
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// Instead of saving, print PSI / JSD of the live window against this baseline
    #[arg(long, value_name = "BASELINE")]
    compare: Option<PathBuf>,
}

/// The library baseline in a window document: the demo's `/drift` wraps it in
/// `window.traffic`; other servers serve it as is.
fn parse(bytes: &[u8], source: &str) -> Result<Baseline, Error> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("{source}: {e}"))?;
    let inner = v.pointer("/window/traffic").unwrap_or(&v);
    Ok(Baseline::from_json_slice(
        &serde_json::to_vec(inner)?,
        source,
    )?)
}

async fn fetch(client: &reqwest::Client, source: &str) -> Result<Baseline, Error> {
    let bytes = if source.starts_with("http://") || source.starts_with("https://") {
        let resp = client.get(source).send().await?.error_for_status()?;
        resp.bytes().await?.to_vec()
    } else {
        std::fs::read(source).map_err(|e| format!("{source}: {e}"))?
    };
    parse(&bytes, source)
}

/// Starts the demo server on the random-weight model, sends it the load generator's `mixed`
/// prompts, and returns its `/drift` URL.
async fn start_demo() -> Result<(tokenmeter_examples::demo::RunningServer, String), Error> {
    let server = start_server(&ServerOptions::default()).await?;
    let client = reqwest::Client::builder().no_proxy().build()?;
    for i in 0..40 {
        let body = loadgen::chat_body(
            &server.model_id,
            &loadgen::prompt(PromptMix::Mixed, i),
            16,
            0.7,
            i as u64,
        );
        loadgen::stream_chat(&client, &server.base_url(), &body, Instant::now()).await?;
    }
    let url = format!("{}/drift", server.base_url());
    Ok((server, url))
}

async fn run(mut args: Args) -> Result<(), Error> {
    let mut _demo = None;
    if args.from.is_empty() {
        let (server, url) = start_demo().await?;
        println!("demo: the demo server serves its live window at {url}");
        args.from.push(url);
        _demo = Some(server);
        if args.out.is_none() {
            args.out = Some(std::env::temp_dir().join("tokenmeter-demo-baseline.json"));
        }
    }
    let client = reqwest::Client::builder().no_proxy().build()?;
    let mut merged: Option<Baseline> = None;
    for source in &args.from {
        let b = fetch(&client, source).await?;
        println!(
            "{source}: {} requests, {} output tokens",
            b.requests, b.tokens
        );
        match &mut merged {
            None => merged = Some(b),
            Some(m) => m.merge(&b).map_err(|e| format!("{source}: {e}"))?,
        }
    }
    let live = merged.ok_or("no window")?;
    if let Some(path) = &args.compare {
        let r = Baseline::load(path)?.compare(&live)?;
        println!(
            "live window: {} requests, against {}",
            r.window_requests,
            path.display()
        );
        for (name, d) in [
            ("prompt_length", r.prompt_length),
            ("output_length", r.output_length),
            ("token_id", r.token_id),
        ] {
            println!("{name:>14}: PSI {:>8}  JSD {:>8}", fmt(d.psi), fmt(d.jsd));
        }
        return Ok(());
    }
    if live.requests == 0 {
        return Err("the window holds no request yet; capture later".into());
    }
    let out = args.out.unwrap_or_else(|| PathBuf::from("baseline.json"));
    live.save(&out)?;
    let reloaded = Baseline::load(&out)?;
    println!(
        "wrote {} ({} requests, {} length bins, {} token buckets)",
        out.display(),
        reloaded.requests,
        reloaded.prompt_length.len(),
        reloaded.token_buckets.len()
    );
    Ok(())
}

fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.4}"))
}

fn main() {
    let args = Args::parse();
    let result = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Error::from)
        .and_then(|rt| rt.block_on(run(args)));
    if let Err(e) = result {
        eprintln!("capture_baseline: {e}");
        std::process::exit(1);
    }
}
