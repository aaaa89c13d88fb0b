//! Captures a drift baseline from a running server's live-window snapshot.
//!
//! A server that runs a `DriftMonitor` serves `drift.window_baseline()` as JSON on some route
//! (`serde_json::to_vec(&drift.window_baseline())`). This CLI fetches that snapshot from one or
//! more replicas (or reads saved snapshots), merges them, validates the result and writes it as
//! the baseline file the `DriftMonitor` later loads with `Baseline::load`:
//!
//! ```text
//! cargo run --example capture_baseline -- --from http://127.0.0.1:8080/quality/window \
//!     [--from http://127.0.0.1:8081/quality/window | --from snapshot.json ...] --out baseline.json
//! cargo run --example capture_baseline -- --from http://127.0.0.1:8080/quality/window \
//!     --compare baseline.json          # print PSI / JSD of the live window against a baseline
//! cargo run --example capture_baseline   # demo: starts a simulated server on 127.0.0.1 first
//! ```
//!
//! Only loopback URLs are fetched (plain HTTP/1.1, no TLS).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokenmeter::Finish;
use tokenmeter::quality::drift::{Baseline, BaselineRecorder, DriftMonitor};
use tokenmeter::quality::{QualityConfig, QualityMonitor};

type Error = Box<dyn std::error::Error>;

struct Args {
    from: Vec<String>,
    out: PathBuf,
    compare: Option<PathBuf>,
}

fn parse_args() -> Result<Args, Error> {
    let mut args = Args {
        from: Vec::new(),
        out: PathBuf::from("baseline.json"),
        compare: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "--from" => args.from.push(value()?),
            "--out" => args.out = PathBuf::from(value()?),
            "--compare" => args.compare = Some(PathBuf::from(value()?)),
            "-h" | "--help" => {
                println!(
                    "usage: capture_baseline [--from URL|FILE]... [--out FILE] [--compare BASELINE]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?} (try --help)").into()),
        }
    }
    Ok(args)
}

/// GET a loopback URL with std only: `http://127.0.0.1:PORT/path` (or `localhost`).
fn http_get(url: &str) -> Result<Vec<u8>, Error> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
        return Err(format!("refusing to fetch {url}: only loopback addresses are allowed").into());
    }
    let mut stream = TcpStream::connect(authority)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("malformed HTTP response")?;
    let head = String::from_utf8_lossy(&response[..split]).to_ascii_lowercase();
    let body = &response[split + 4..];
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("GET {url}: HTTP status {status}").into());
    }
    if head.contains("transfer-encoding: chunked") {
        return dechunk(body);
    }
    Ok(body.to_vec())
}

fn dechunk(mut body: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    loop {
        let line_end = body
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("malformed chunk")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        let chunk = body.get(..size).ok_or("truncated chunk")?;
        out.extend_from_slice(chunk);
        body = body.get(size + 2..).ok_or("truncated chunk")?;
    }
}

fn fetch(source: &str) -> Result<Baseline, Error> {
    let bytes = if source.starts_with("http://") {
        http_get(source)?
    } else {
        std::fs::read(source)?
    };
    Ok(Baseline::from_json_slice(&bytes, source)?)
}

/// The demo: a simulated server whose drift monitor's live window is served on 127.0.0.1.
fn start_demo_server() -> Result<String, Error> {
    let meter = tokenmeter::Meter::builder().model("demo").build();
    // The server needs some baseline to run a DriftMonitor; a first deployment starts from an
    // empty one and captures a real one from its live window, as this example does.
    let drift = Arc::new(DriftMonitor::new(
        &meter,
        BaselineRecorder::new().baseline(),
        400,
    ));
    let quality = QualityMonitor::new(&meter, QualityConfig::default().drift(Arc::clone(&drift)))?;
    let mut x: u64 = 42;
    let mut next = move |m: u64| {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (x >> 33) % m
    };
    for _ in 0..400 {
        let mut req = meter
            .request()
            .prompt_tokens(50 + next(400) as usize)
            .start();
        let mut q = quality.request();
        for _ in 0..(10 + next(200)) {
            req.token();
            q.token(next(32_000) as u32);
        }
        q.finish(&req);
        req.finish(Finish::Stop);
    }
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let url = format!("http://{}/quality/window", listener.local_addr()?);
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            let body = serde_json::to_vec(&drift.window_baseline()).unwrap_or_default();
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn
                .write_all(head.as_bytes())
                .and_then(|()| conn.write_all(&body));
        }
    });
    Ok(url)
}

fn main() -> Result<(), Error> {
    let mut args = parse_args()?;
    if args.from.is_empty() {
        let url = start_demo_server()?;
        println!("demo: a simulated server serves its live window at {url}");
        args.from.push(url);
        if args.out == Path::new("baseline.json") {
            args.out = std::env::temp_dir().join("tokenmeter-demo-baseline.json");
        }
    }
    let mut merged: Option<Baseline> = None;
    for source in &args.from {
        let b = fetch(source).map_err(|e| format!("{source}: {e}"))?;
        println!(
            "{source}: {} requests, {} output tokens",
            b.requests, b.tokens
        );
        match &mut merged {
            None => merged = Some(b),
            Some(m) => m.merge(&b).map_err(|e| format!("{source}: {e}"))?,
        }
    }
    let live = merged.ok_or("no snapshot")?;
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
        return Err("the snapshot holds no request yet; capture later".into());
    }
    live.save(&args.out)?;
    let reloaded = Baseline::load(&args.out)?;
    println!(
        "wrote {} ({} requests, {} length bins, {} token buckets)",
        args.out.display(),
        reloaded.requests,
        reloaded.prompt_length.len(),
        reloaded.token_buckets.len()
    );
    Ok(())
}

fn fmt(v: Option<f64>) -> String {
    v.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.4}"))
}
