//! The load generator: concurrent clients that stream chat completions over real HTTP (SSE),
//! measure TTFT, TPOT and E2E on their side, and compare with what the server reports.

use std::collections::BTreeMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokenmeter_core::Snapshot;

use super::engine::ServerTiming;
use super::golden::{self, GoldenProbe};
use super::model::BoxError;
use super::monitor::looks_like_refusal;
use tokenmeter::quality::probe::PassReport;

/// Which prompts the clients send (also the demo's `--prompt-mix` values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PromptMix {
    /// One-line questions.
    Short,
    /// A paragraph of context and a question.
    Long,
    /// Both, alternating.
    Mixed,
}

/// Load settings.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Concurrent client streams.
    pub concurrency: usize,
    /// How long new requests are started.
    pub duration: Duration,
    /// `max_tokens` of each request.
    pub max_tokens: u32,
    /// Prompt mix.
    pub mix: PromptMix,
    /// Show the live terminal view.
    pub live: bool,
    /// Sampling temperature.
    pub temperature: f64,
    /// The golden set, run during the load.
    pub golden: Option<GoldenProbe>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            concurrency: 4,
            duration: Duration::from_secs(60),
            max_tokens: 64,
            mix: PromptMix::Mixed,
            live: true,
            temperature: 0.7,
            golden: None,
        }
    }
}

const SHORT: &[&str] = &[
    "What is the capital of France?",
    "Give me three tips for staying focused.",
    "Explain what a neural network is in two sentences.",
    "Write a haiku about the sea.",
    "What is 12 times 7?",
    "Name three planets of the solar system.",
    "How do I boil an egg?",
    "What does a compiler do?",
];

const LONG_CONTEXT: &str = "The Rust programming language focuses on performance, reliability and productivity. \
It has no garbage collector; memory safety comes from its ownership model, checked at compile time by the borrow checker. \
Rust is used for command line tools, network services, embedded devices and web assembly. \
Its package manager, Cargo, builds code, downloads dependencies and runs tests. \
Many companies use Rust in production for systems where crashes and memory bugs are expensive.";

const LONG_QUESTIONS: &[&str] = &[
    "Summarize the text above in one sentence.",
    "According to the text, how does Rust achieve memory safety?",
    "List two uses of Rust mentioned above.",
    "What is Cargo, according to the text?",
];

/// The `i`-th prompt a client of `mix` sends (clients take every `concurrency`-th).
pub fn prompt(mix: PromptMix, i: usize) -> String {
    let long = match mix {
        PromptMix::Short => false,
        PromptMix::Long => true,
        PromptMix::Mixed => i % 2 == 1,
    };
    if long {
        format!(
            "{LONG_CONTEXT}\n\n{}",
            LONG_QUESTIONS[(i / 2) % LONG_QUESTIONS.len()]
        )
    } else {
        SHORT[(i / 2) % SHORT.len()].to_string()
    }
}

/// Token chunks received by every client in this process (the live view's rate).
static TOKEN_CHUNKS: AtomicU64 = AtomicU64::new(0);

/// One request as the client saw it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClientRecord {
    /// Seconds since the load started, when the request was sent.
    pub sent_at: f64,
    /// Client-measured time to first token, seconds.
    pub ttft: Option<f64>,
    /// Client-measured time per output token after the first, seconds.
    pub tpot: Option<f64>,
    /// Client-measured end to end, seconds.
    pub e2e: f64,
    /// Token chunks received.
    pub tokens: u64,
    /// `usage.completion_tokens`.
    pub usage_completion: Option<u64>,
    /// `usage.prompt_tokens`.
    pub usage_prompt: Option<u64>,
    /// The server's own timings of this request.
    pub server: Option<ServerTiming>,
    /// Finish reason.
    pub finish_reason: Option<String>,
    /// Whether the text looks like a refusal.
    pub refusal: bool,
    /// An error, if the request failed.
    pub error: Option<String>,
    /// Seconds since the load started of each token chunk.
    #[serde(skip)]
    pub token_times: Vec<f64>,
    /// The generated text.
    #[serde(skip)]
    pub text: String,
}

/// Streams one chat completion and measures it. `origin` is the load's time zero.
///
/// # Errors
/// Only on client errors before the response (connection refused...); HTTP errors are recorded.
pub async fn stream_chat(
    client: &reqwest::Client,
    base: &str,
    body: &Value,
    origin: Instant,
) -> Result<ClientRecord, BoxError> {
    stream_chat_as(client, base, body, origin, None).await
}

/// [`stream_chat`], asking for a variant (`a` / `b`) with the server's variant header.
///
/// # Errors
/// Only on client errors before the response (connection refused...); HTTP errors are recorded.
pub async fn stream_chat_as(
    client: &reqwest::Client,
    base: &str,
    body: &Value,
    origin: Instant,
    variant: Option<&str>,
) -> Result<ClientRecord, BoxError> {
    let t0 = Instant::now();
    let since = |t: Instant| t.saturating_duration_since(origin).as_secs_f64();
    let mut rec = ClientRecord {
        sent_at: since(t0),
        ttft: None,
        tpot: None,
        e2e: 0.0,
        tokens: 0,
        usage_completion: None,
        usage_prompt: None,
        server: None,
        finish_reason: None,
        refusal: false,
        error: None,
        token_times: Vec::new(),
        text: String::new(),
    };
    let mut req = client
        .post(format!("{base}/v1/chat/completions"))
        .json(body);
    if let Some(v) = variant {
        req = req.header(super::server::VARIANT_HEADER, v);
    }
    let resp = req.send().await?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        rec.error = Some(format!("HTTP {status}: {text}"));
        rec.e2e = t0.elapsed().as_secs_f64();
        return Ok(rec);
    }
    let mut stream = resp.bytes_stream();
    let mut buf: Vec<u8> = Vec::new();
    let (mut first, mut last): (Option<Instant>, Option<Instant>) = (None, None);
    'read: while let Some(chunk) = stream.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                rec.error = Some(e.to_string());
                break;
            }
        };
        let now = Instant::now();
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..pos + 2).collect();
            let text = String::from_utf8_lossy(&event);
            for line in text.lines() {
                let Some(data) = line.strip_prefix("data:") else {
                    continue;
                };
                let data = data.trim_start();
                if data == "[DONE]" {
                    break 'read;
                }
                let Ok(v) = serde_json::from_str::<Value>(data) else {
                    continue;
                };
                if let Some(err) = v.get("error") {
                    rec.error = Some(err.to_string());
                    continue;
                }
                if let Some(choice) = v.get("choices").and_then(|c| c.get(0)) {
                    match choice.get("finish_reason").and_then(Value::as_str) {
                        None => {
                            rec.tokens += 1;
                            TOKEN_CHUNKS.fetch_add(1, Ordering::Relaxed);
                            first.get_or_insert(now);
                            last = Some(now);
                            rec.token_times.push(since(now));
                            if let Some(t) =
                                choice.pointer("/delta/content").and_then(Value::as_str)
                            {
                                rec.text.push_str(t);
                            }
                        }
                        Some(r) => rec.finish_reason = Some(r.to_string()),
                    }
                }
                if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
                    rec.usage_completion = u.get("completion_tokens").and_then(Value::as_u64);
                    rec.usage_prompt = u.get("prompt_tokens").and_then(Value::as_u64);
                }
                if let Some(t) = v.get("tokenmeter") {
                    rec.server = serde_json::from_value(t.clone()).ok();
                }
            }
        }
    }
    rec.e2e = t0.elapsed().as_secs_f64();
    if let Some(f) = first {
        rec.ttft = Some(f.saturating_duration_since(t0).as_secs_f64());
        if let Some(l) = last
            && rec.tokens >= 2
        {
            rec.tpot = Some(l.saturating_duration_since(f).as_secs_f64() / (rec.tokens - 1) as f64);
        }
    }
    rec.refusal = looks_like_refusal(&rec.text);
    Ok(rec)
}

/// The body of a streaming chat request.
pub fn chat_body(model: &str, prompt: &str, max_tokens: u32, temperature: f64, seed: u64) -> Value {
    json!({
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": temperature,
        "seed": seed,
        "stream": true,
        "stream_options": {"include_usage": true},
    })
}

/// What a load run measured.
#[derive(Debug, Clone)]
pub struct LoadResult {
    /// Every request.
    pub records: Vec<ClientRecord>,
    /// Wall time from the first request to the last response, seconds.
    pub wall: f64,
    /// The settings.
    pub opts: LoadOptions,
    /// The golden-set passes run during the load (one report per pass and variant; the
    /// report's `model_version` is the variant).
    pub golden: Vec<Arc<PassReport>>,
}

impl LoadResult {
    /// Output tokens per second over the run, as the clients counted them.
    pub fn tokens_per_second(&self) -> f64 {
        let n: u64 = self.records.iter().map(|r| r.tokens).sum();
        if self.wall > 0.0 {
            n as f64 / self.wall
        } else {
            0.0
        }
    }

    /// Output tokens per second inside the load window [0, duration] only: the tail after the
    /// deadline (requests still finishing) is left out, so runs of equal duration compare fairly.
    pub fn tokens_per_second_in_window(&self) -> f64 {
        let d = self.opts.duration.as_secs_f64();
        let n = self
            .records
            .iter()
            .flat_map(|r| r.token_times.iter())
            .filter(|&&t| t <= d)
            .count();
        if d > 0.0 { n as f64 / d } else { 0.0 }
    }

    /// Requests that completed without error.
    pub fn ok(&self) -> impl Iterator<Item = &ClientRecord> {
        self.records
            .iter()
            .filter(|r| r.error.is_none() && r.finish_reason.is_some())
    }
}

/// Percentile (nearest rank) of `v` (sorted in place); None when empty.
pub fn percentile(v: &mut [f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil().max(1.0) as usize;
    Some(v[rank.min(v.len()) - 1])
}

/// Runs the load against `base` for `opts.duration` and returns what the clients measured.
///
/// # Errors
/// When the HTTP client cannot be built.
pub async fn run(base: &str, model: &str, opts: &LoadOptions) -> Result<LoadResult, BoxError> {
    let client = reqwest::Client::builder().no_proxy().build()?;
    let records: Arc<Mutex<Vec<ClientRecord>>> = Arc::new(Mutex::new(Vec::new()));
    let origin = Instant::now();
    let deadline = origin + opts.duration;
    let bar = live_bar(opts);
    let mut workers = Vec::new();
    for w in 0..opts.concurrency {
        let (client, base, model, records, opts) = (
            client.clone(),
            base.to_string(),
            model.to_string(),
            records.clone(),
            opts.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut i = w;
            while Instant::now() < deadline {
                let body = chat_body(
                    &model,
                    &prompt(opts.mix, i),
                    opts.max_tokens,
                    opts.temperature,
                    i as u64,
                );
                let rec = match stream_chat(&client, &base, &body, origin).await {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("demo: request failed: {e}");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        continue;
                    }
                };
                if let Ok(mut v) = records.lock() {
                    v.push(rec);
                }
                i += opts.concurrency;
            }
        }));
    }
    let ticker = bar.clone().map(|bar| {
        let records = records.clone();
        tokio::spawn(async move {
            // (seconds, token chunks so far), the last 5 s of them: a live rate that includes
            // requests still streaming.
            let mut history: VecDeque<(f64, u64)> = VecDeque::new();
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let el = origin.elapsed().as_secs_f64();
                let n = TOKEN_CHUNKS.load(Ordering::Relaxed);
                history.push_back((el, n));
                while history.front().is_some_and(|(t, _)| *t < el - 5.0) {
                    history.pop_front();
                }
                let rate = match history.front() {
                    Some((t0, n0)) if el > *t0 => (n - n0) as f64 / (el - t0),
                    _ => 0.0,
                };
                bar.set_position(el.min(bar.length().unwrap_or(0) as f64) as u64);
                bar.set_message(live_line(&records, rate));
            }
        })
    });
    let probe = opts.golden.clone().map(|g| {
        tokio::spawn(golden::run(
            g,
            client.clone(),
            base.to_string(),
            model.to_string(),
            origin,
            deadline,
            records.clone(),
        ))
    });
    for w in workers {
        let _ = w.await;
    }
    let golden = match probe {
        Some(p) => match p.await {
            Ok(Ok(passes)) => passes,
            Ok(Err(e)) => {
                eprintln!("demo: golden set not run: {e}");
                Vec::new()
            }
            Err(e) => {
                eprintln!("demo: golden set stopped: {e}");
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    if let Some(t) = ticker {
        t.abort();
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let wall = origin.elapsed().as_secs_f64();
    let records = records.lock().map(|v| v.clone()).unwrap_or_default();
    Ok(LoadResult {
        records,
        wall,
        opts: opts.clone(),
        golden,
    })
}

fn live_bar(opts: &LoadOptions) -> Option<indicatif::ProgressBar> {
    if !opts.live {
        return None;
    }
    let bar = indicatif::ProgressBar::new(opts.duration.as_secs().max(1));
    let style = indicatif::ProgressStyle::with_template("{bar:30} {pos:>3}/{len}s  {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
    bar.set_style(style);
    bar.enable_steady_tick(Duration::from_millis(250));
    Some(bar)
}

fn live_line(records: &Mutex<Vec<ClientRecord>>, rate: f64) -> String {
    let Ok(v) = records.lock() else {
        return String::new();
    };
    let done = v.len();
    let mut ttft: Vec<f64> = v.iter().filter_map(|r| r.ttft).collect();
    let mut tpot: Vec<f64> = v.iter().filter_map(|r| r.tpot).collect();
    let errors = v.iter().filter(|r| r.error.is_some()).count();
    format!(
        "requests {done} (errors {errors})  {rate:.1} tok/s  p99 TTFT {}  p99 TPOT {}",
        fmt_s(percentile(&mut ttft, 99.0)),
        fmt_s(percentile(&mut tpot, 99.0)),
    )
}

/// Formats seconds as milliseconds.
pub fn fmt_s(v: Option<f64>) -> String {
    match v {
        Some(s) => format!("{:.1} ms", s * 1e3),
        None => "-".into(),
    }
}

/// Samples of one metric: (labels, value) per series.
pub type Series = Vec<(BTreeMap<String, String>, f64)>;

/// What the server says about the run: its snapshot and the counters in `/metrics`.
#[derive(Debug, Clone)]
pub struct ServerView {
    /// `GET /v1/tokenmeter/snapshot`.
    pub snapshot: Snapshot,
    /// The snapshot as served (JSON).
    pub snapshot_json: Value,
    /// `/metrics` samples of this model: name -> (labels -> value).
    pub samples: BTreeMap<String, Series>,
}

impl ServerView {
    /// Fetches the snapshot and `/metrics`.
    ///
    /// # Errors
    /// On HTTP or parse errors.
    pub async fn fetch(base: &str, model: &str) -> Result<Self, BoxError> {
        let client = reqwest::Client::builder().no_proxy().build()?;
        let snapshot_json: Value = client
            .get(format!("{base}/v1/tokenmeter/snapshot"))
            .send()
            .await?
            .json()
            .await?;
        let snapshot: Snapshot = serde_json::from_value(snapshot_json.clone())?;
        let text = client
            .get(format!("{base}/metrics"))
            .send()
            .await?
            .text()
            .await?;
        Ok(Self {
            snapshot,
            snapshot_json,
            samples: parse_exposition(&text, Some(model)),
        })
    }

    /// Sum of the samples of `name` whose labels include all of `want`.
    pub fn sum(&self, name: &str, want: &[(&str, &str)]) -> f64 {
        self.samples
            .get(name)
            .map(|v| {
                v.iter()
                    .filter(|(l, _)| {
                        want.iter()
                            .all(|(k, val)| l.get(*k).map(String::as_str) == Some(*val))
                    })
                    .map(|(_, x)| *x)
                    .sum()
            })
            .unwrap_or(0.0)
    }
}

/// Parses a Prometheus text exposition into name -> [(labels, value)], keeping only samples with
/// some label equal to `model` when given (series without labels are kept too).
pub fn parse_exposition(text: &str, model: Option<&str>) -> BTreeMap<String, Series> {
    let mut out: BTreeMap<String, Series> = BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (head, value) = match line.rfind(' ') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => continue,
        };
        let Ok(value) = value.parse::<f64>() else {
            continue;
        };
        let (name, labels) = match head.find('{') {
            Some(i) => (
                &head[..i],
                parse_labels(&head[i + 1..head.len().saturating_sub(1)]),
            ),
            None => (head, BTreeMap::new()),
        };
        if let Some(m) = model
            && !labels.is_empty()
            && !labels.values().any(|v| v == m)
        {
            continue;
        }
        out.entry(name.to_string())
            .or_default()
            .push((labels, value));
    }
    out
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = s;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim().trim_start_matches(',').trim().to_string();
        let after = &rest[eq + 1..];
        let Some(stripped) = after.strip_prefix('"') else {
            break;
        };
        let mut val = String::new();
        let mut end = stripped.len();
        let mut chars = stripped.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        val.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = i + 1;
                    break;
                }
                c => val.push(c),
            }
        }
        out.insert(key, val);
        rest = &stripped[end.min(stripped.len())..];
    }
    out
}

/// Result of the overhead measurement.
#[derive(Debug, Clone, Default)]
pub struct Overhead {
    /// Output tokens/s inside the window of each meter-on run.
    pub on: Vec<f64>,
    /// Output tokens/s inside the window of each meter-off run.
    pub off: Vec<f64>,
    /// Process CPU seconds per output token of each meter-on run (None where /proc is missing).
    pub on_cpu: Vec<Option<f64>>,
    /// Process CPU seconds per output token of each meter-off run.
    pub off_cpu: Vec<Option<f64>>,
}

fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}

impl Overhead {
    /// mean(on tokens/s) / mean(off tokens/s).
    pub fn ratio(&self) -> f64 {
        mean(&self.on) / mean(&self.off)
    }

    /// mean(on CPU per token) / mean(off CPU per token), when measured.
    pub fn cpu_ratio(&self) -> Option<f64> {
        let on: Option<Vec<f64>> = self.on_cpu.iter().copied().collect();
        let off: Option<Vec<f64>> = self.off_cpu.iter().copied().collect();
        Some(mean(&on?) / mean(&off?))
    }
}

impl std::fmt::Display for Overhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "overhead: meter on vs no meter, interleaved runs")?;
        writeln!(
            f,
            "  (tokens/s: output tokens inside each run's window; CPU: process CPU ms per output token)"
        )?;
        let ms = |v: Option<f64>| {
            v.map(|x| format!("{:.3}", x * 1e3))
                .unwrap_or_else(|| "-".into())
        };
        for i in 0..self.on.len().min(self.off.len()) {
            writeln!(
                f,
                "  round {}: tokens/s on {:.2} off {:.2} ratio {:.4} | CPU ms/token on {} off {}",
                i + 1,
                self.on[i],
                self.off[i],
                self.on[i] / self.off[i],
                ms(self.on_cpu.get(i).copied().flatten()),
                ms(self.off_cpu.get(i).copied().flatten()),
            )?;
        }
        write!(
            f,
            "  throughput ratio on/off = {:.4} ({:+.2}%)",
            self.ratio(),
            (self.ratio() - 1.0) * 100.0
        )?;
        if let Some(c) = self.cpu_ratio() {
            write!(
                f,
                "\n  CPU per token ratio on/off = {c:.4} ({:+.2}%)",
                (c - 1.0) * 100.0
            )?;
        }
        Ok(())
    }
}

/// This process's user + system CPU time, seconds (Linux `/proc/self/stat`, clock ticks of
/// 10 ms); None elsewhere.
pub fn process_cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Runs the same load `rounds` times against a metered server and a server with no guard,
/// interleaved (on, off, off, on, ...) so that drift on a shared machine hits both alike.
/// Greedy sampling, so both sides generate the same tokens.
///
/// # Errors
/// When a server cannot start.
pub async fn overhead(
    server: &super::ServerOptions,
    load: &LoadOptions,
    rounds: usize,
) -> Result<Overhead, BoxError> {
    let mut on_opts = server.clone();
    on_opts.meter_on = true;
    let mut off_opts = server.clone();
    off_opts.meter_on = false;
    off_opts.model_id = Some(format!(
        "{}-nometer",
        on_opts.model_id.clone().unwrap_or_else(|| "demo".into())
    ));
    let on = super::start_server(&on_opts).await?;
    let off = super::start_server(&off_opts).await?;
    let mut load = load.clone();
    load.live = false;
    load.temperature = 0.0;
    let mut res = Overhead::default();
    for r in 0..rounds {
        let order: [bool; 2] = if r % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for meter_on in order {
            let s = if meter_on { &on } else { &off };
            let cpu0 = process_cpu_seconds();
            let out = run(&s.base_url(), &s.model_id, &load).await?;
            let tokens: u64 = out.records.iter().map(|r| r.tokens).sum();
            let cpu = match (cpu0, process_cpu_seconds()) {
                (Some(a), Some(b)) if tokens > 0 => Some((b - a) / tokens as f64),
                _ => None,
            };
            let tps = out.tokens_per_second_in_window();
            eprintln!(
                "demo: overhead round {} meter {}: {tps:.2} tokens/s",
                r + 1,
                if meter_on { "on" } else { "off" }
            );
            if meter_on {
                res.on.push(tps);
                res.on_cpu.push(cpu);
            } else {
                res.off.push(tps);
                res.off_cpu.push(cpu);
            }
        }
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_exposition() {
        let t = "# TYPE x counter\nx_total{model=\"m\",reason=\"stop\"} 3\nx_total{model=\"other\",reason=\"stop\"} 5\nup 1\n";
        let s = parse_exposition(t, Some("m"));
        assert_eq!(s["x_total"].len(), 1);
        assert_eq!(s["x_total"][0].1, 3.0);
        assert_eq!(s["up"][0].1, 1.0);
    }

    #[test]
    fn nearest_rank_percentile() {
        let mut v = vec![5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(percentile(&mut v, 50.0), Some(3.0));
        assert_eq!(percentile(&mut v, 99.0), Some(5.0));
        assert_eq!(percentile(&mut [], 50.0), None);
    }
}
