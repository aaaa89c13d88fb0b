//! The engine: one thread that serves every admitted request step by step.
//!
//! Each step feeds every active sequence once (the whole prompt for a newly admitted one, one
//! token afterwards; each sequence has its own KV cache on a cheap clone of the shared weights),
//! samples the next tokens, then reads the clock **once** with [`Meter::now`] and records that
//! instant for every sequence that produced a token with [`RequestGuard::token_at`] before the
//! tokens are sent to the clients. So the server's timestamps of a token are never later than the
//! moment it leaves for the client.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokenmeter_core::clock::Instant;
use tokenmeter_core::{EngineStep, ErrorKind, Finish, Meter, RequestGuard};
use tokio::sync::mpsc;

use super::llama::KvCache;
use super::model::Model;
use super::monitor::{SeqMonitor, ServerQuality};
use super::tokenizer::{StreamDecoder, Tokenizer};

/// Sampling parameters.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    /// 0 = greedy.
    pub temperature: f64,
    /// Nucleus sampling mass (1 = off).
    pub top_p: f64,
    /// RNG seed.
    pub seed: u64,
}

/// Server-side timings of one request, from the same instants the guard recorded, and its
/// variant and perplexity.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct ServerTiming {
    /// Time to first token, seconds (None when no token).
    pub ttft_s: Option<f64>,
    /// Time per output token after the first, seconds (None below 2 tokens).
    pub tpot_s: Option<f64>,
    /// Queue time (arrival to admission), seconds.
    pub queue_s: f64,
    /// Arrival to the end of the request, seconds.
    pub e2e_s: f64,
    /// The variant that served it (`a`, or `b` for the degraded one; empty without variants).
    #[serde(default)]
    pub variant: String,
    /// Perplexity of its sampled tokens (`exp(-mean logprob)`; None without a meter or token).
    #[serde(default)]
    pub perplexity: Option<f64>,
}

/// What the engine sends back for one request.
#[derive(Debug)]
pub enum Event {
    /// One output token and the text it completed (may be empty: an incomplete UTF-8 sequence).
    Token {
        /// The text.
        text: String,
    },
    /// The request ended.
    Done {
        /// "stop" or "length".
        finish_reason: &'static str,
        /// Prompt tokens.
        prompt_tokens: usize,
        /// Output tokens (one per `Token` event).
        completion_tokens: usize,
        /// Server-side timings.
        timing: ServerTiming,
    },
    /// The engine failed on this request.
    Error(String),
}

/// A request handed to the engine.
#[derive(Debug)]
pub struct GenRequest {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Most output tokens.
    pub max_tokens: usize,
    /// Sampling parameters.
    pub sampling: Sampling,
    /// The request's guard (None when the server runs with the meter off).
    pub guard: Option<RequestGuard>,
    /// Arrival instant (the guard's start).
    pub arrival: Instant,
    /// Where tokens go; closed when the client went away.
    pub events: mpsc::UnboundedSender<Event>,
}

/// Engine settings.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Most sequences decoded together.
    pub max_batch: usize,
    /// Most new sequences prefilled per step while others are decoding (prefill stalls every
    /// running sequence's next token; admitting a few at a time keeps their TPOT even).
    pub prefill_per_step: usize,
    /// KV budget in tokens: the sequences' KV storage may hold at most this many (rounded down
    /// to whole blocks of [`KV_BLOCK`] tokens). Past it the youngest sequence is preempted.
    /// `None`: `max_batch` full contexts (no preemption).
    pub kv_budget: Option<usize>,
    /// Reuse the KV of a prompt prefix shared with earlier requests (the chat template's system
    /// prompt).
    pub prefix_cache: bool,
    /// Report engine steps (batch, iteration tokens, KV, waiting) to the meter; off for the
    /// overhead baseline.
    pub report_steps: bool,
    /// The variant this engine serves (`a`, or `b` for the degraded one; empty when the
    /// server has no variants).
    pub variant: &'static str,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            max_batch: 8,
            prefill_per_step: 1,
            kv_budget: None,
            prefix_cache: true,
            report_steps: true,
            variant: "",
        }
    }
}

/// Tokens per KV block: the unit the engine accounts its KV storage in (vLLM's default block
/// size).
pub const KV_BLOCK: usize = 16;

/// Fewest tokens a prefix-cache hit must cover to be used.
const MIN_PREFIX: usize = 8;

/// Counters the engine keeps for the demo's own report.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Engine steps run.
    pub steps: AtomicU64,
    /// Tokens produced.
    pub tokens: AtomicU64,
    /// Requests waiting for admission.
    pub waiting: AtomicU64,
    /// Requests being decoded.
    pub running: AtomicU64,
    /// Sequences preempted (their KV dropped, recomputed at re-admission).
    pub preemptions: AtomicU64,
    /// Prompt tokens whose KV came from the prefix cache.
    pub prefix_hits: AtomicU64,
    /// Prompt tokens looked up in the prefix cache.
    pub prefix_queries: AtomicU64,
}

/// A handle to the engine thread.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    tx: mpsc::UnboundedSender<GenRequest>,
    /// The engine's counters.
    pub stats: Arc<EngineStats>,
}

impl EngineHandle {
    /// Queues a request. Returns it back if the engine is gone.
    #[allow(clippy::result_large_err)]
    pub fn submit(&self, req: GenRequest) -> Result<(), GenRequest> {
        self.stats.waiting.fetch_add(1, Ordering::Relaxed);
        self.tx.send(req).map_err(|e| {
            self.stats.waiting.fetch_sub(1, Ordering::Relaxed);
            e.0
        })
    }
}

struct Active<'t> {
    req: GenRequest,
    cache: KvCache,
    rng: StdRng,
    decoder: StreamDecoder<'t>,
    monitor: SeqMonitor,
    generated: usize,
    last: u32,
    /// Tokens to prefill at the next step (the prompt past a prefix-cache hit; after a
    /// preemption, the prompt and the output so far); empty once decoding.
    pending: Vec<u32>,
    /// Output token ids so far (recomputed after a preemption).
    output: Vec<u32>,
    /// Admission order, to preempt the youngest.
    admitted: u64,
    /// This sequence's prefill should seed the prefix cache.
    seeds_prefix: bool,
    scheduled: Instant,
    first: Option<Instant>,
    last_at: Option<Instant>,
    /// What this step produced.
    outcome: StepOutcome,
}

enum StepOutcome {
    Token(u32),
    Error(String),
    Gone,
}

/// Starts the engine thread.
pub fn spawn(
    model: Model,
    meter: Meter,
    quality: Option<ServerQuality>,
    cfg: EngineConfig,
) -> EngineHandle {
    let (tx, rx) = mpsc::unbounded_channel();
    let stats = Arc::new(EngineStats::default());
    let st = stats.clone();
    let spawned = std::thread::Builder::new()
        .name("demo-engine".into())
        .spawn(move || run(model, meter, quality, cfg, rx, st));
    if let Err(e) = spawned {
        // The receiver was moved into the failed closure and dropped: submits fail cleanly.
        eprintln!("demo: could not start the engine thread: {e}");
    }
    EngineHandle { tx, stats }
}

fn run(
    model: Model,
    meter: Meter,
    quality: Option<ServerQuality>,
    cfg: EngineConfig,
    mut rx: mpsc::UnboundedReceiver<GenRequest>,
    stats: Arc<EngineStats>,
) {
    let tok: &Tokenizer = &model.tokenizer;
    let eos = tok.eos();
    let stop_ids: Vec<u32> = ["<|im_end|>", "<|endoftext|>"]
        .iter()
        .filter_map(|s| tok.special_id(s))
        .chain([eos])
        .collect();
    let mut waiting: VecDeque<GenRequest> = VecDeque::new();
    // Preempted sequences wait ahead of new requests, as in vLLM.
    let mut preempted: VecDeque<Active<'_>> = VecDeque::new();
    let mut active: Vec<Active<'_>> = Vec::new();
    let kv = KvBudget::new(
        cfg.kv_budget
            .unwrap_or(cfg.max_batch.max(1) * model.context_len),
    );
    let mut prefix: Option<Prefix> = None;
    let mut admissions = 0u64;
    loop {
        if active.is_empty() && waiting.is_empty() && preempted.is_empty() {
            match rx.blocking_recv() {
                Some(r) => waiting.push_back(r),
                None => return,
            }
        }
        while let Ok(r) = rx.try_recv() {
            waiting.push_back(r);
        }
        // Admission: one clock read for every request admitted in this step; only what fits
        // in the batch and the KV budget (one sequence always runs).
        if active.len() < cfg.max_batch && !(waiting.is_empty() && preempted.is_empty()) {
            let now = meter.now();
            let mut admitted = 0;
            let decoding = !active.is_empty();
            while active.len() < cfg.max_batch
                && !(decoding && admitted >= cfg.prefill_per_step.max(1))
            {
                let used = kv.blocks_after_step(&active);
                if let Some(a) = preempted.front() {
                    if !active.is_empty() && used + kv.blocks(a.pending.len()) > kv.total {
                        break;
                    }
                    if let Some(mut a) = preempted.pop_front() {
                        // Re-admitted: its KV is recomputed from the prompt and its output.
                        if let Some(g) = a.req.guard.as_mut() {
                            g.scheduled_at_instant(now);
                        }
                        admissions += 1;
                        a.admitted = admissions;
                        admitted += 1;
                        active.push(a);
                    }
                    continue;
                }
                let Some(front) = waiting.front() else {
                    break;
                };
                if !active.is_empty() && used + kv.blocks(front.prompt.len()) > kv.total {
                    break;
                }
                let Some(mut req) = waiting.pop_front() else {
                    break;
                };
                stats.waiting.fetch_sub(1, Ordering::Relaxed);
                if req.events.is_closed() {
                    // The client left while queued: dropping the guard counts it as cancelled.
                    if let Some(g) = req.guard.as_mut() {
                        g.finish(Finish::Cancelled);
                    }
                    continue;
                }
                let (cache, hit) = match prefix.as_mut().filter(|_| cfg.prefix_cache) {
                    Some(p) => p.lookup(&req.prompt),
                    None => (None, 0),
                };
                stats
                    .prefix_queries
                    .fetch_add(req.prompt.len() as u64, Ordering::Relaxed);
                stats.prefix_hits.fetch_add(hit as u64, Ordering::Relaxed);
                if let Some(g) = req.guard.as_mut() {
                    g.scheduled_at_instant(now);
                    if cfg.prefix_cache {
                        g.prefix_cache(req.prompt.len() as u64, hit as u64);
                    }
                }
                let seed = req.sampling.seed;
                admitted += 1;
                admissions += 1;
                active.push(Active {
                    seeds_prefix: cfg.prefix_cache && cache.is_none(),
                    cache: cache.unwrap_or_else(|| model.llama.cache()),
                    pending: req.prompt[hit..].to_vec(),
                    output: Vec::new(),
                    admitted: admissions,
                    rng: StdRng::seed_from_u64(seed),
                    decoder: tok.decode_stream(),
                    monitor: SeqMonitor::new(quality.as_ref(), cfg.variant),
                    generated: 0,
                    last: 0,
                    scheduled: now,
                    first: None,
                    last_at: None,
                    outcome: StepOutcome::Gone,
                    req,
                });
            }
        }
        // Past the KV budget: preempt the youngest sequences (vLLM's recompute mode: drop the
        // KV, recompute it at re-admission), keeping at least one running.
        while active.len() > 1 && kv.blocks_after_step(&active) > kv.total {
            let youngest = active
                .iter()
                .enumerate()
                .max_by_key(|(_, a)| a.admitted)
                .map(|(i, _)| i)
                .unwrap_or(0);
            let mut a = active.swap_remove(youngest);
            if let Some(g) = a.req.guard.as_mut() {
                g.preempted();
            }
            stats.preemptions.fetch_add(1, Ordering::Relaxed);
            a.cache = model.llama.cache();
            a.pending = [a.req.prompt.as_slice(), a.output.as_slice()].concat();
            a.seeds_prefix = false;
            preempted.push_front(a);
        }
        stats.running.store(active.len() as u64, Ordering::Relaxed);
        // Compute: prefill each newly admitted sequence, then one batched decode pass for all
        // the others (their matmuls share each weight read).
        let mut logits: Vec<Option<Result<Vec<f32>, String>>> = Vec::with_capacity(active.len());
        let mut decode: Vec<usize> = Vec::new();
        let mut step_tokens = 0usize;
        for (i, a) in active.iter_mut().enumerate() {
            if a.req.events.is_closed() {
                logits.push(None);
            } else if !a.pending.is_empty() {
                step_tokens += a.pending.len();
                let pending = std::mem::take(&mut a.pending);
                logits.push(Some(
                    model
                        .llama
                        .prefill(&pending, &mut a.cache)
                        .map_err(|e| e.to_string()),
                ));
                if std::mem::take(&mut a.seeds_prefix) && a.cache.pos() == a.req.prompt.len() {
                    prefix = Some(Prefix {
                        tokens: a.req.prompt.clone(),
                        cache: a.cache.clone(),
                    });
                }
            } else {
                logits.push(None);
                decode.push(i);
            }
        }
        step_tokens += decode.len();
        if !decode.is_empty() {
            let tokens: Vec<u32> = decode.iter().map(|&i| active[i].last).collect();
            let mut caches: Vec<&mut KvCache> = active
                .iter_mut()
                .enumerate()
                .filter(|(i, _)| decode.binary_search(i).is_ok())
                .map(|(_, a)| &mut a.cache)
                .collect();
            match model.llama.decode(&tokens, &mut caches) {
                Ok(rows) => {
                    for (&i, row) in decode.iter().zip(rows) {
                        logits[i] = Some(Ok(row));
                    }
                }
                Err(e) => {
                    for &i in &decode {
                        logits[i] = Some(Err(e.to_string()));
                    }
                }
            }
        }
        for (a, l) in active.iter_mut().zip(logits) {
            a.outcome = match l {
                None => StepOutcome::Gone,
                Some(Err(e)) => StepOutcome::Error(e),
                Some(Ok(logits)) => {
                    if let Some(g) = a.req.guard.as_mut() {
                        a.monitor.scan_logits(g, &logits);
                    }
                    let (id, logprob) = sample(&logits, &a.req.sampling, &mut a.rng);
                    a.monitor.on_sample(logprob, &logits);
                    StepOutcome::Token(id)
                }
            };
        }
        // One clock read for the whole step.
        let now = meter.now();
        stats.steps.fetch_add(1, Ordering::Relaxed);
        let sequences = active.len();
        active.retain_mut(|a| step_done(a, now, &stop_ids, model.context_len, tok, &stats));
        stats.running.store(active.len() as u64, Ordering::Relaxed);
        if cfg.report_steps {
            // A lone sequence may outgrow the budget (nothing left to preempt): report it full.
            let used: usize = active.iter().map(|a| kv.blocks(a.cache.pos())).sum();
            let used = used.min(kv.total);
            let waits = (waiting.len() + preempted.len()) as u64;
            meter.engine_step_at(
                now,
                &EngineStep::new(sequences as u64, step_tokens as u64)
                    .kv_blocks(used as u64, kv.total as u64)
                    .waiting_by_reason(waits, 0),
            );
        }
    }
}

/// The engine's KV storage in blocks of [`KV_BLOCK`] tokens.
struct KvBudget {
    total: usize,
}

impl KvBudget {
    fn new(tokens: usize) -> Self {
        KvBudget {
            total: (tokens / KV_BLOCK).max(1),
        }
    }

    fn blocks(&self, tokens: usize) -> usize {
        tokens.div_ceil(KV_BLOCK)
    }

    /// Blocks the active sequences hold once this step ran (a prefill adds its pending
    /// tokens, a decode one token).
    fn blocks_after_step(&self, active: &[Active<'_>]) -> usize {
        active
            .iter()
            .map(|a| self.blocks(a.cache.pos() + a.pending.len().max(1)))
            .sum()
    }
}

/// The prefix cache: the KV of the longest prompt prefix that recent requests shared (it
/// settles on the chat template's system prompt), reused by each request that starts with it.
struct Prefix {
    tokens: Vec<u32>,
    cache: KvCache,
}

impl Prefix {
    /// A cache holding the KV of the longest shared prefix of `prompt` (at least
    /// [`MIN_PREFIX`] tokens, and one token short of the whole prompt, which must be computed
    /// to give logits) and its length; `(None, 0)` on a miss. A hit shorter than the entry
    /// shrinks the entry to the shared part.
    fn lookup(&mut self, prompt: &[u32]) -> (Option<KvCache>, usize) {
        let shared = self
            .tokens
            .iter()
            .zip(prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len().saturating_sub(1));
        if shared < MIN_PREFIX {
            return (None, 0);
        }
        let Ok(cache) = self.cache.truncated(shared) else {
            return (None, 0);
        };
        if shared < self.tokens.len() {
            self.tokens.truncate(shared);
            self.cache = cache.clone();
        }
        (Some(cache), shared)
    }
}

/// Records and sends what one sequence produced this step; false when it ended.
fn step_done(
    a: &mut Active<'_>,
    now: Instant,
    stop_ids: &[u32],
    ctx: usize,
    tok: &Tokenizer,
    stats: &EngineStats,
) -> bool {
    let outcome = std::mem::replace(&mut a.outcome, StepOutcome::Gone);
    match outcome {
        StepOutcome::Gone => {
            if let Some(g) = a.req.guard.as_mut() {
                let report = a.monitor.finish(g, &a.req.prompt);
                let summary = g.finish(Finish::Cancelled);
                a.monitor.ended(&summary, report.as_ref());
            }
            false
        }
        StepOutcome::Error(msg) => {
            if let Some(g) = a.req.guard.as_mut() {
                let summary = g.fail(ErrorKind::Internal);
                a.monitor.ended(&summary, None);
            }
            let _ = a.req.events.send(Event::Error(msg));
            false
        }
        StepOutcome::Token(id) if stop_ids.contains(&id) => {
            end(a, now, Finish::Stop, "stop");
            false
        }
        StepOutcome::Token(id) => {
            if let Some(g) = a.req.guard.as_mut() {
                g.token_at(now);
            }
            stats.tokens.fetch_add(1, Ordering::Relaxed);
            a.generated += 1;
            a.last = id;
            a.output.push(id);
            a.first.get_or_insert(now);
            a.last_at = Some(now);
            let text = a.decoder.push(id);
            a.monitor.on_token(id, tok.token_bytes(id));
            if a.req.events.send(Event::Token { text }).is_err() {
                // Noticed at the next step as well; end it now.
                if let Some(g) = a.req.guard.as_mut() {
                    g.finish(Finish::Cancelled);
                }
                return false;
            }
            if a.generated >= a.req.max_tokens || a.cache.pos() + 1 >= ctx {
                end(a, now, Finish::Length, "length");
                return false;
            }
            true
        }
    }
}

fn end(a: &mut Active<'_>, now: Instant, reason: Finish, reason_str: &'static str) {
    let mut timing = ServerTiming {
        variant: a.monitor.variant().to_string(),
        queue_s: a
            .scheduled
            .saturating_duration_since(a.req.arrival)
            .as_secs_f64(),
        ..ServerTiming::default()
    };
    if let Some(first) = a.first {
        timing.ttft_s = Some(first.saturating_duration_since(a.req.arrival).as_secs_f64());
        if a.generated >= 2
            && let Some(last) = a.last_at
        {
            timing.tpot_s = Some(
                last.saturating_duration_since(first).as_secs_f64() / (a.generated - 1) as f64,
            );
        }
    }
    if let Some(g) = a.req.guard.as_mut() {
        let report = a.monitor.finish(g, &a.req.prompt);
        let summary = g.finish(reason);
        a.monitor.ended(&summary, report.as_ref());
        timing.perplexity = report.and_then(|r| r.logprobs.perplexity);
        if let Some(t) = g.ttft() {
            timing.ttft_s = Some(t.as_secs_f64());
        }
        timing.e2e_s = g
            .meter()
            .now()
            .saturating_duration_since(a.req.arrival)
            .as_secs_f64();
    } else {
        timing.e2e_s = now.saturating_duration_since(a.req.arrival).as_secs_f64();
    }
    let _ = a.req.events.send(Event::Done {
        finish_reason: reason_str,
        prompt_tokens: a.req.prompt.len(),
        completion_tokens: a.generated,
        timing,
    });
}

/// Samples a token; returns (id, its log-probability under the temperature-1 softmax).
fn sample(logits: &[f32], s: &Sampling, rng: &mut StdRng) -> (u32, f32) {
    // Softmax at temperature 1 for the stats (non-finite logits are skipped).
    let max = logits
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .fold(f32::NEG_INFINITY, f32::max);
    let mut z = 0f64;
    for &x in logits {
        if x.is_finite() {
            z += ((x - max) as f64).exp();
        }
    }
    let logz = max as f64 + z.ln();
    let argmax = logits
        .iter()
        .enumerate()
        .filter(|(_, x)| x.is_finite())
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(i, _)| i)
        .unwrap_or(0);
    let id = if s.temperature <= 0.0 {
        argmax
    } else {
        let t = s.temperature;
        let mut probs: Vec<(usize, f64)> = logits
            .iter()
            .enumerate()
            .filter(|(_, x)| x.is_finite())
            .map(|(i, &x)| (i, ((x - max) as f64 / t).exp()))
            .collect();
        let total: f64 = probs.iter().map(|p| p.1).sum();
        let mut chosen = argmax;
        if total > 0.0 {
            if s.top_p < 1.0 {
                probs.sort_by(|a, b| b.1.total_cmp(&a.1));
                let mut acc = 0.0;
                let mut keep = probs.len();
                for (k, p) in probs.iter().enumerate() {
                    acc += p.1 / total;
                    if acc >= s.top_p {
                        keep = k + 1;
                        break;
                    }
                }
                probs.truncate(keep);
            }
            let total: f64 = probs.iter().map(|p| p.1).sum();
            let mut r = rng.random::<f64>() * total;
            for (i, p) in &probs {
                r -= p;
                if r <= 0.0 {
                    chosen = *i;
                    break;
                }
            }
        }
        chosen
    };
    let lp = logits
        .get(id)
        .map(|&x| x as f64 - logz)
        .unwrap_or(f64::NEG_INFINITY);
    (id as u32, lp as f32)
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use candle_core::quantized::gguf_file;

    use super::super::llama::Llama;
    use super::*;

    fn llama() -> Llama {
        let bytes = super::super::model::random_gguf(3).expect("gguf");
        let mut r = Cursor::new(bytes);
        let ct = gguf_file::Content::read(&mut r).expect("content");
        Llama::from_gguf(&ct, &mut r).expect("llama")
    }

    #[test]
    fn the_prefix_cache_settles_on_the_shared_prefix() {
        let m = llama();
        let system: Vec<u32> = (1..=12).collect();
        let first = [system.as_slice(), &[40, 41, 42]].concat();
        let mut cache = m.cache();
        m.prefill(&first, &mut cache).expect("prefill");
        let mut p = Prefix {
            tokens: first.clone(),
            cache,
        };
        // Shares the 12 system tokens: a hit of 12, and the entry shrinks to them.
        let (c, hit) = p.lookup(&[system.as_slice(), &[50, 51]].concat());
        assert_eq!((c.map(|c| c.pos()), hit), (Some(12), 12));
        assert_eq!(p.tokens, system);
        assert_eq!(p.cache.pos(), 12);
        // The whole prompt cached: all but its last token are reused (it must be computed).
        let (c, hit) = p.lookup(&system);
        assert_eq!((c.map(|c| c.pos()), hit), (Some(11), 11));
        assert_eq!(p.tokens.len(), 11);
        // Under MIN_PREFIX shared tokens: a miss, the entry stays.
        let (c, hit) = p.lookup(&[1, 2, 3, 99, 100, 101, 102, 103, 104, 105]);
        assert!(c.is_none());
        assert_eq!(hit, 0);
        assert_eq!(p.tokens.len(), 11);
    }

    #[test]
    fn kv_is_accounted_in_whole_blocks() {
        let kv = KvBudget::new(100);
        assert_eq!(kv.total, 6); // 100 tokens hold 6 whole blocks of 16
        assert_eq!(
            (kv.blocks(0), kv.blocks(1), kv.blocks(16), kv.blocks(17)),
            (0, 1, 1, 2)
        );
        assert_eq!(KvBudget::new(3).total, 1);
    }
}
