//! The per-request guard: the hot path.
//!
//! `token()` reads the clock once and touches only the guard's own memory: the gap since the
//! previous token goes into a per-bucket count and nanosecond sum aligned with the exported ITL
//! bounds. What is flushed to the shared handles (at the end, and about once a second during a
//! long generation) is therefore exact in bucket counts and in sum.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use metrics::Label;
use quanta::Instant;
use tracing::Span;

use crate::attribution::{Cell, Taken};
use crate::catalog::core as id;
use crate::handles::Handles;
use crate::itl::{ItlAccumulator, nanos};
use crate::liveness::Slot;
use crate::meter::{ADAPTER_LABEL, Meter};
use crate::names::REQUEST_TARGET;
use crate::redact::{self, TextBuf, TextKind};
use crate::span::{self, EndRecord, EndText};
use crate::summary::{RequestSummary, Timeline};
use crate::types::{ErrorKind, Finish, NonFinite, Outcome};

/// Most tokens one step may deliver; more is a caller bug (a cumulative count passed as a
/// delta, say), clamped and counted as misuse `tokens_too_many`.
pub const MAX_TOKENS_PER_STEP: u32 = 1 << 16;

impl Meter {
    /// Starts describing a new request; [`RequestBuilder::start`] marks its arrival.
    pub fn request(&self) -> RequestBuilder {
        RequestBuilder::new(self.clone())
    }
}

/// Describes a request before it starts; from [`Meter::request`].
///
/// ```
/// let meter = tokenmeter_core::Meter::builder().request_labels(["tenant"], 50).build();
/// let req = meter.request().prompt_tokens(42).label("tenant", "acme").request_id("r-1").start();
/// assert_eq!(req.prompt_tokens(), 42);
/// assert_eq!(req.request_id(), "r-1");
/// ```
#[must_use = "call start() to begin the request"]
pub struct RequestBuilder {
    meter: Meter,
    prompt_tokens: u64,
    labels: Vec<Label>,
    request_id: Option<String>,
    parent: Option<Span>,
    params: Params,
}

/// The request's parameters, as the client asked.
#[derive(Debug, Default)]
struct Params {
    /// Sequences generated for the request (`None`: 1).
    n: Option<u32>,
    max_tokens: Option<u64>,
    adapter: Option<String>,
}

/// What the guard knows besides tokens and instants: the request's parameters, what the
/// engine told it (preemptions, prefix-cache hits, speculative decoding, sequence lengths), and
/// the non-finite counts of other threads. Boxed on first use, so a guard that needs none stays
/// small.
#[derive(Default)]
struct Facts {
    n: Option<u32>,
    max_tokens: Option<u64>,
    preemptions: u64,
    prefix_hits: u64,
    spec_draft_tokens: u64,
    spec_accepted_tokens: u64,
    /// The longest finished sequence, when the server reported sequences (n > 1).
    longest_sequence: Option<u64>,
    /// Counts from other threads ([`non_finite_handle`](RequestGuard::non_finite_handle)),
    /// folded in at the end.
    shared_non_finite: Option<Arc<SharedNonFinite>>,
    /// Its energy and cost cell, when a sampler subscribed to the meter.
    cell: Option<Arc<Cell>>,
    /// What the cell held at the end.
    energy: Option<Taken>,
    /// The error type, when the request failed.
    error: Option<ErrorKind>,
}

impl RequestBuilder {
    pub(crate) fn new(meter: Meter) -> Self {
        RequestBuilder {
            meter,
            prompt_tokens: 0,
            labels: Vec::new(),
            request_id: None,
            parent: None,
            params: Params::default(),
        }
    }

    /// The request's `n`: how many sequences the engine generates for it (default 1).
    /// Recorded in `request.params.n` (vLLM's `request_params_n`). With `n > 1`, report each
    /// sequence's length with [`RequestGuard::sequence_finished`] so the longest one is known.
    pub fn n(mut self, n: u32) -> Self {
        self.params.n = Some(n);
        self
    }

    /// The request's `max_tokens` (its output budget), recorded in
    /// `request.params.max_tokens` (vLLM's `request_params_max_tokens`) and on the span as
    /// `gen_ai.request.max_tokens`.
    pub fn max_tokens(mut self, max_tokens: u64) -> Self {
        self.params.max_tokens = Some(max_tokens);
        self
    }

    /// The adapter (e.g. a LoRA) that serves this request: the [`ADAPTER_LABEL`] label of its
    /// series, capped like any request label (declare it with
    /// [`MeterBuilder::adapters`](crate::MeterBuilder::adapters); otherwise the label is dropped
    /// and counted as misuse `unknown_label`), and the span's `tokenmeter.adapter`, uncapped.
    pub fn adapter(mut self, name: impl Into<String>) -> Self {
        let name: String = name.into();
        self.params.adapter = Some(name.clone());
        self.label(ADAPTER_LABEL, name)
    }

    /// The prompt length in tokens.
    pub fn prompt_tokens(mut self, n: usize) -> Self {
        self.prompt_tokens = u64::try_from(n).unwrap_or(u64::MAX);
        self
    }

    /// Sets a per-request label. The key must be one the meter declared with
    /// [`MeterBuilder::request_labels`](crate::MeterBuilder::request_labels) (others are
    /// ignored and counted as misuse); values past the key's cap become `other`.
    pub fn label(mut self, key: &str, value: impl Into<String>) -> Self {
        if let Some(l) = self.meter.capped_label(key, value.into()) {
            self.labels.retain(|x| x.key() != l.key());
            self.labels.push(l);
        }
        self
    }

    /// The request id carried by the span and the request log (default: a per-meter sequence).
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.request_id = Some(id.into());
        self
    }

    /// Makes the request span a child of `parent` (e.g. the HTTP handler's span that joined
    /// the caller's W3C trace context) instead of the current span.
    pub fn parent(mut self, parent: &Span) -> Self {
        self.parent = Some(parent.clone());
        self
    }

    /// Starts the request now: its arrival, from which queue time, TTFT and E2E are measured.
    pub fn start(self) -> RequestGuard {
        let now = self.meter.now();
        self.start_at(now)
    }

    /// Starts the request at an arrival instant read earlier from [`Meter::now`] (e.g. when
    /// the HTTP request came in, before parsing).
    pub fn start_at(mut self, arrival: Instant) -> RequestGuard {
        self.labels.sort_by(|a, b| a.key().cmp(b.key()));
        let meter = self.meter;
        let handles = meter.handles(self.labels);
        let id = match self.request_id {
            Some(id) => id,
            None => meter.next_request_id().to_string(),
        };
        let span = span::request_span(meter.identity(), &id, self.parent.as_ref());
        let p = self.params;
        span::record_params(&span, p.n, p.max_tokens, p.adapter.as_deref());
        let request_id: Arc<str> = Arc::from(id);
        let cell = meter.attribution().register(&request_id, &handles);
        let facts = (p.n.is_some() || p.max_tokens.is_some() || cell.is_some()).then(|| {
            Box::new(Facts {
                n: p.n,
                max_tokens: p.max_tokens,
                cell,
                ..Facts::default()
            })
        });
        let totals = meter.live_totals();
        totals.requests_started.fetch_add(1, Relaxed);
        totals.input_tokens.fetch_add(self.prompt_tokens, Relaxed);
        totals.waiting.fetch_add(1, Relaxed);
        handles.input_tokens.increment(self.prompt_tokens);
        handles.waiting.increment(1.0);
        let slot = meter.liveness().register();
        let next_flush = arrival + meter.flush_interval();
        let text = meter.text_capture().map(|c| TextBuf::new(c.max_bytes));
        RequestGuard {
            meter,
            handles,
            span,
            request_id,
            arrival,
            scheduled_at: arrival,
            first: arrival,
            last: arrival,
            next_flush,
            n: 0,
            flushed: 0,
            prompt: self.prompt_tokens,
            prompt_known: self.prompt_tokens > 0,
            itl: ItlAccumulator::new(),
            non_finite: NonFinite::default(),
            phase: Phase::Waiting,
            scheduled: false,
            text,
            enqueued_at: arrival,
            finish_reason: None,
            slot,
            facts,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Started, not scheduled, no token yet.
    Waiting,
    /// Scheduled, no token yet.
    Running,
    /// At least one token: the per-token fast path.
    Decoding,
    /// Sent back to the waiting queue by the engine (counts as waiting); `scheduled()`
    /// re-admits it.
    Preempted,
    Ended,
}

/// One request in flight. Created by [`RequestBuilder::start`]; ended by
/// [`finish`](Self::finish), [`fail`](Self::fail), or by being dropped (recorded as
/// [`Finish::Cancelled`], or as error type `panic` while the thread is panicking).
///
/// ```
/// use tokenmeter_core::{ErrorKind, Finish, Meter};
/// let meter = Meter::default();
///
/// // a batch engine reads the clock once per step for all its sequences
/// let mut batch: Vec<_> = (0..4).map(|_| meter.request().prompt_tokens(8).start()).collect();
/// for g in &mut batch { g.scheduled(); }
/// for _step in 0..10 {
///     let now = meter.now();
///     for g in &mut batch { g.token_at(now); }
/// }
/// batch[0].finish(Finish::Stop);
/// batch[1].fail(ErrorKind::Timeout);
/// drop(batch); // the other two are cancelled
/// assert_eq!(meter.totals().requests_ended, 4);
/// assert_eq!(meter.totals().output_tokens, 40);
/// ```
// Fields the per-token path touches come first, so they share the guard's first cache line.
#[repr(C)]
pub struct RequestGuard {
    meter: Meter,
    /// Valid when `n > 0`.
    last: Instant,
    /// The next flush; once the request ended, the end instant (there is no next flush).
    next_flush: Instant,
    n: u64,
    phase: Phase,
    scheduled: bool,
    /// How the request ended, valid when `phase` is `Ended`: its finish reason, `None` when it
    /// failed (the error type, rarer and larger, is in `facts`).
    finish_reason: Option<Finish>,
    /// Whether the prompt length is known (given at start, or set once later).
    prompt_known: bool,
    /// Its liveness slot (last progress, stored when scheduled, at flushes, at preemption);
    /// here, with the flags above, it fills the padding before `itl`.
    slot: Slot,
    /// Inter-token latencies since the last flush, per exported bucket.
    itl: ItlAccumulator,
    handles: Arc<Handles>,
    span: Span,
    /// Shared with its energy cell, when it has one.
    request_id: Arc<str>,
    arrival: Instant,
    /// Valid when `scheduled`.
    scheduled_at: Instant,
    /// Valid when `n > 0`.
    first: Instant,
    flushed: u64,
    prompt: u64,
    non_finite: NonFinite,
    /// Buffered text when the meter captures text (opt-in); taken at the end.
    text: Option<Box<TextBuf>>,
    /// When it entered the engine's queue (arrival unless [`enqueued`](Self::enqueued) said).
    enqueued_at: Instant,
    facts: Option<Box<Facts>>,
}

impl std::fmt::Debug for RequestGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequestGuard")
            .field("request_id", &self.request_id)
            .field("output_tokens", &self.n)
            .field("phase", &self.phase)
            .finish()
    }
}

impl RequestGuard {
    /// Marks the moment the engine admits the request (prefill begins): ends its queue time.
    /// After a [`preempted`](Self::preempted) it re-admits the request (it counts as running
    /// again; queue time stays the first admission's, as in vLLM). Other later calls are
    /// ignored.
    pub fn scheduled(&mut self) {
        let now = self.meter.now();
        self.scheduled_at_instant(now);
    }

    /// [`scheduled`](Self::scheduled) at an instant read with [`Meter::now`].
    pub fn scheduled_at_instant(&mut self, now: Instant) {
        if self.phase == Phase::Preempted {
            self.readmit(now);
            return;
        }
        if self.phase != Phase::Waiting {
            if self.phase == Phase::Ended {
                self.meter.misuse("scheduled_after_end");
            }
            return;
        }
        let now = self.not_before(now, self.enqueued_at);
        self.scheduled = true;
        self.scheduled_at = now;
        self.enter_running();
        self.meter.liveness().progress(self.slot, now);
        self.handles.queue.record(
            now.saturating_duration_since(self.enqueued_at)
                .as_secs_f64(),
        );
        tracing::debug!(target: REQUEST_TARGET, parent: &self.span, "gen_ai.request.scheduled");
    }

    /// Marks the moment the request entered the engine's queue, when that is later than its
    /// arrival (e.g. the HTTP server tokenizes first). Queue time then counts from here, as
    /// vLLM's `request_queue_time_seconds` does, while TTFT and E2E still count from arrival.
    /// Without this call the queue starts at arrival. Ignored (misuse `enqueued_late`) once the
    /// request was scheduled or produced a token; an instant before arrival is clamped to it.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokenmeter_core::{Finish, Meter};
    /// let (clock, mock) = quanta::Clock::mock();
    /// let meter = Meter::builder().clock(clock).build();
    /// let mut req = meter.request().start(); // HTTP arrival
    /// mock.increment(Duration::from_millis(40));
    /// req.enqueued(); // tokenized, handed to the engine
    /// mock.increment(Duration::from_millis(20));
    /// req.scheduled();
    /// mock.increment(Duration::from_millis(40));
    /// req.token();
    /// let s = req.finish(Finish::Stop);
    /// assert_eq!(s.queue, Some(Duration::from_millis(20)));
    /// assert_eq!(s.ttft, Some(Duration::from_millis(100)));
    /// ```
    pub fn enqueued(&mut self) {
        let now = self.meter.now();
        self.enqueued_at_instant(now);
    }

    /// [`enqueued`](Self::enqueued) at an instant read with [`Meter::now`].
    pub fn enqueued_at_instant(&mut self, now: Instant) {
        if self.phase != Phase::Waiting {
            self.meter.misuse("enqueued_late");
            return;
        }
        self.enqueued_at = self.not_before(now, self.arrival);
    }

    /// Records one output token now: one clock read.
    #[inline]
    pub fn token(&mut self) {
        let now = self.meter.now();
        self.tokens_at(1, now);
    }

    /// Records `k` output tokens delivered now by one step (speculative or multi-token
    /// decoding). `tokens(0)` does nothing.
    #[inline]
    pub fn tokens(&mut self, k: u32) {
        if k == 0 {
            return;
        }
        let now = self.meter.now();
        self.tokens_at(k, now);
    }

    /// Records one output token at `now`, read once per engine step with [`Meter::now`].
    #[inline]
    pub fn token_at(&mut self, now: Instant) {
        self.tokens_at(1, now);
    }

    /// Records `k` output tokens at `now`. After a gap `g` since the previous token this adds
    /// `k` inter-token latencies of `g / k`. An instant earlier than the previous token counts
    /// as a gap of zero (and as misuse `clock_backwards`).
    #[inline]
    pub fn tokens_at(&mut self, k: u32, now: Instant) {
        if k == 0 {
            return;
        }
        let k = if k > MAX_TOKENS_PER_STEP {
            self.too_many_tokens()
        } else {
            k
        };
        if self.phase != Phase::Decoding {
            self.first_tokens(k, now);
            return;
        }
        let gap = match now.checked_duration_since(self.last) {
            Some(d) => {
                self.last = now;
                nanos(d)
            }
            None => {
                self.meter.misuse("clock_backwards");
                0
            }
        };
        let full = self.itl.add(self.meter.itl_layout(), k, gap);
        self.n = self.n.saturating_add(u64::from(k));
        if now >= self.next_flush || full {
            self.flush(now);
        }
    }

    #[cold]
    #[inline(never)]
    fn too_many_tokens(&self) -> u32 {
        self.meter.misuse("tokens_too_many");
        MAX_TOKENS_PER_STEP
    }

    #[cold]
    #[inline(never)]
    fn first_tokens(&mut self, k: u32, now: Instant) {
        if self.phase == Phase::Ended {
            self.meter.misuse("token_after_end");
            return;
        }
        if self.phase == Phase::Preempted {
            // A token means the engine runs it again: re-admitted without saying so.
            self.meter.misuse("token_while_preempted");
            self.readmit(now);
            if self.phase == Phase::Decoding {
                self.tokens_at(k, now);
                return;
            }
        }
        let now = self.not_before(now, self.arrival);
        if self.phase == Phase::Waiting {
            self.enter_running();
        }
        self.phase = Phase::Decoding;
        self.first = now;
        self.last = now;
        self.n = u64::from(k);
        if k > 1 {
            // The other k - 1 tokens arrived together with the first: gaps of zero.
            self.itl.add_zero_gaps(k - 1);
        }
        // Once per request, off the per-token path: the span's trace ids for the exemplar.
        let ids = crate::exemplar::resolve(&self.span);
        crate::exemplar::scope(ids, || {
            self.handles
                .ttft
                .record(now.saturating_duration_since(self.arrival).as_secs_f64());
        });
        if self.scheduled {
            self.handles.prefill.record(
                now.saturating_duration_since(self.scheduled_at)
                    .as_secs_f64(),
            );
        }
        tracing::debug!(target: REQUEST_TARGET, parent: &self.span, "gen_ai.first_token");
        self.next_flush = now + self.meter.flush_interval();
        self.meter.liveness().progress(self.slot, now);
    }

    /// The engine preempted the running request now (e.g. its KV blocks were reclaimed):
    /// it goes back to the waiting queue until [`scheduled`](Self::scheduled) re-admits it.
    /// Counted in `requests.preemptions` (vLLM's `num_preemptions`) and per request.
    /// TTFT is still recorded once, at the first token; the stall shows in ITL, decode and
    /// inference time (vLLM's recompute mode: the tokens are not lost, only delayed).
    /// A request that is not running (waiting, already preempted, ended) is left as it is and
    /// counted as misuse `preempted_not_running`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tokenmeter_core::{Finish, Meter};
    /// let (clock, mock) = quanta::Clock::mock();
    /// let meter = Meter::builder().clock(clock).build();
    /// let mut req = meter.request().start();
    /// req.scheduled();
    /// mock.increment(Duration::from_millis(10));
    /// req.token();
    /// req.preempted();
    /// mock.increment(Duration::from_millis(100));
    /// req.scheduled(); // re-admitted: recompute its KV
    /// mock.increment(Duration::from_millis(10));
    /// req.token();
    /// let s = req.finish(Finish::Stop);
    /// assert_eq!(s.preemptions, 1);
    /// assert_eq!(s.decode, Some(Duration::from_millis(110)));
    /// ```
    ///
    /// It reads no clock: the preemption's instant does not enter any measured value.
    pub fn preempted(&mut self) {
        if !matches!(self.phase, Phase::Running | Phase::Decoding) {
            self.meter.misuse("preempted_not_running");
            return;
        }
        self.phase = Phase::Preempted;
        self.facts().preemptions += 1;
        let t = self.meter.live_totals();
        t.running.fetch_sub(1, Relaxed);
        t.waiting.fetch_add(1, Relaxed);
        self.handles.running.decrement(1.0);
        self.handles.waiting.increment(1.0);
        self.handles.preemptions.increment(1);
        self.meter.liveness().idle(self.slot);
        tracing::debug!(target: REQUEST_TARGET, parent: &self.span, "gen_ai.preempted");
    }

    /// Back from preemption to running (decoding when it already has tokens).
    #[cold]
    fn readmit(&mut self, now: Instant) {
        self.enter_running();
        if self.n > 0 {
            self.phase = Phase::Decoding;
        }
        self.meter.liveness().progress(self.slot, now);
        tracing::debug!(target: REQUEST_TARGET, parent: &self.span, "gen_ai.rescheduled");
    }

    /// The engine looked `queried` prompt tokens up in its prefix cache and found `hits` of
    /// them (their KV is reused, not computed): vLLM's `prefix_cache_queries` and
    /// `prefix_cache_hits` (hit rate = hits / queries), and the request's cached prompt
    /// tokens (`gen_ai.usage.cache_read.input_tokens` on the span and `cached_tokens` in the
    /// request log). Call it at admission; calls add up. `hits > queried` is clamped to
    /// `queried` and counted as misuse `prefix_hits_above_queries`; a call after the end is
    /// ignored (misuse `prefix_cache_after_end`).
    ///
    /// ```
    /// use tokenmeter_core::{Finish, Meter};
    /// let meter = Meter::default();
    /// let mut req = meter.request().prompt_tokens(100).start();
    /// req.prefix_cache(100, 64); // the 64-token system prompt was cached
    /// req.scheduled();
    /// req.token();
    /// assert_eq!(req.finish(Finish::Stop).cached_prompt_tokens, 64);
    /// ```
    pub fn prefix_cache(&mut self, queried: u64, hits: u64) {
        if self.phase == Phase::Ended {
            self.meter.misuse("prefix_cache_after_end");
            return;
        }
        let hits = if hits > queried {
            self.meter.misuse("prefix_hits_above_queries");
            queried
        } else {
            hits
        };
        let f = self.facts();
        f.prefix_hits = f.prefix_hits.saturating_add(hits);
        self.handles.prefix_queries.increment(queried);
        self.handles.prefix_hits.increment(hits);
    }

    /// One speculative-decoding step of this request: `proposed` draft tokens, of which the
    /// first `accepted` were accepted. Feeds vLLM's `spec_decode_num_drafts` (one per call
    /// with `proposed > 0`), `_num_draft_tokens`, `_num_accepted_tokens` and
    /// `_num_accepted_tokens_per_pos` (positions `0..accepted`). The tokens the step emits
    /// (the accepted ones plus the bonus token) still go through
    /// [`tokens_at`](Self::tokens_at), so ITL stays per token.
    ///
    /// The meter must declare the draft length
    /// ([`MeterBuilder::speculative_tokens`](crate::MeterBuilder::speculative_tokens));
    /// without it the call counts as misuse `spec_decode_undeclared` (the request's own
    /// counts still add up). `accepted > proposed` is clamped to `proposed` (misuse
    /// `spec_accepted_above_proposed`); positions at or past the declared length are not
    /// counted per position (misuse `spec_position_undeclared`).
    ///
    /// ```
    /// use tokenmeter_core::{Finish, Meter};
    /// let meter = Meter::builder().speculative_tokens(3).build();
    /// let mut req = meter.request().start();
    /// req.scheduled();
    /// req.token();
    /// let now = meter.now();
    /// req.spec_decode(3, 2);
    /// req.tokens_at(3, now); // 2 accepted + the bonus token
    /// let s = req.finish(Finish::Stop);
    /// assert_eq!((s.spec_draft_tokens, s.spec_accepted_tokens), (3, 2));
    /// ```
    pub fn spec_decode(&mut self, proposed: u32, accepted: u32) {
        if self.phase == Phase::Ended {
            self.meter.misuse("spec_decode_after_end");
            return;
        }
        let accepted = if accepted > proposed {
            self.meter.misuse("spec_accepted_above_proposed");
            proposed
        } else {
            accepted
        };
        let f = self.facts();
        f.spec_draft_tokens = f.spec_draft_tokens.saturating_add(u64::from(proposed));
        f.spec_accepted_tokens = f.spec_accepted_tokens.saturating_add(u64::from(accepted));
        let Some(spec) = &self.handles.spec else {
            self.meter.misuse("spec_decode_undeclared");
            return;
        };
        if proposed > 0 {
            spec.drafts.increment(1);
        }
        spec.draft_tokens.increment(u64::from(proposed));
        spec.accepted_tokens.increment(u64::from(accepted));
        let accepted = usize::try_from(accepted).unwrap_or(usize::MAX);
        for c in spec.accepted_per_position.iter().take(accepted) {
            c.increment(1);
        }
        if accepted > spec.accepted_per_position.len() {
            self.meter.misuse("spec_position_undeclared");
        }
    }

    /// With `n > 1`: one of the request's sequences finished with `output_tokens` tokens. The
    /// longest is recorded in `request.max_generation_tokens` (vLLM's
    /// `request_max_num_generation_tokens`); without this call that is the request's output
    /// tokens (right for `n = 1`).
    pub fn sequence_finished(&mut self, output_tokens: u64) {
        let longest = self.facts().longest_sequence.get_or_insert(0);
        *longest = (*longest).max(output_tokens);
    }

    fn facts(&mut self) -> &mut Facts {
        self.facts.get_or_insert_with(Box::default)
    }

    /// Clamps an instant that lies before `floor` (a caller's clock gone backwards).
    fn not_before(&self, now: Instant, floor: Instant) -> Instant {
        if now < floor {
            self.meter.misuse("clock_backwards");
            floor
        } else {
            now
        }
    }

    fn enter_running(&mut self) {
        // From waiting, or back from preemption (both count as waiting).
        self.phase = Phase::Running;
        let t = self.meter.live_totals();
        t.waiting.fetch_sub(1, Relaxed);
        t.running.fetch_add(1, Relaxed);
        self.handles.waiting.decrement(1.0);
        self.handles.running.increment(1.0);
    }

    /// Moves what the guard accumulated to the shared handles and the window.
    #[cold]
    #[inline(never)]
    fn flush(&mut self, now: Instant) {
        let tokens = self.n - self.flushed;
        self.flushed = self.n;
        let mut itl = [(0u64, 0u64); crate::itl::MAX_ITL_BOUNDS + 1];
        let mut used = 0;
        let handles = &self.handles;
        self.itl.drain(|mean_ns, count| {
            // The mean of the values in a bucket lies inside the bucket, so recording it
            // `count` times keeps both the bucket counts and the sum exact.
            handles
                .itl
                .record_many(mean_ns as f64 / 1e9, count as usize);
            itl[used] = (mean_ns, u64::from(count));
            used += 1;
        });
        self.handles.output_tokens.increment(tokens);
        self.meter
            .live_totals()
            .output_tokens
            .fetch_add(tokens, Relaxed);
        self.meter.window_tokens(now, tokens, &itl[..used]);
        if let Some(cell) = self.facts.as_deref().and_then(|f| f.cell.as_deref()) {
            cell.flushed(self.n);
        }
        self.next_flush = now + self.meter.flush_interval();
        if self.phase == Phase::Decoding {
            self.meter.liveness().progress(self.slot, self.last);
        }
    }

    /// Ends the request successfully and returns its measured values. A second end is
    /// ignored, counted as misuse `finish_twice`, and returns the values of the first.
    pub fn finish(&mut self, reason: Finish) -> RequestSummary {
        self.end(Some(reason), None)
    }

    /// Ends the request with an error and returns its measured values. A second end is
    /// ignored, counted as misuse `finish_twice`, and returns the values of the first.
    pub fn fail(&mut self, kind: ErrorKind) -> RequestSummary {
        self.end(None, Some(kind))
    }

    /// Ends the request: `reason` is `None` for a failure, whose `error` names its type.
    /// Derives the measured values once, records them, then reports them.
    fn end(&mut self, reason: Option<Finish>, error: Option<ErrorKind>) -> RequestSummary {
        if self.phase == Phase::Ended {
            self.meter.misuse("finish_twice");
            return self.derive(self.next_flush);
        }
        self.finish_reason = reason;
        if error.is_some() {
            self.facts().error = error;
        }
        let floor = if self.n > 0 { self.last } else { self.arrival };
        let now = self.meter.now();
        let now = self.not_before(now, floor);
        let ids = crate::exemplar::resolve(&self.span);
        let summary = crate::exemplar::scope(ids, || {
            self.flush(now);
            if let Some(shared) = self
                .facts
                .as_deref()
                .and_then(|f| f.shared_non_finite.as_deref())
            {
                self.non_finite.add(shared.close());
            }
            if let Some(f) = self.facts.as_deref_mut() {
                f.energy = f.cell.take().map(|c| c.close());
            }
            let summary = self.derive(now);
            self.record(now, &summary);
            summary
        });
        self.report(&summary);
        summary
    }

    fn derive(&self, now: Instant) -> RequestSummary {
        let timeline = Timeline {
            arrival: self.arrival,
            enqueued: self.enqueued_at,
            scheduled: self.scheduled.then_some(self.scheduled_at),
            tokens: (self.n > 0).then_some((self.first, self.last)),
            output_tokens: self.n,
        };
        let mut s = RequestSummary::derive(&timeline, now, self.prompt);
        s.goodput = Outcome::of(self.finish_reason) == Outcome::Succeeded
            && self.meter.slo().met(s.ttft, s.tpot);
        s.non_finite = self.non_finite;
        s.finish_reason = self.finish_reason;
        if let Some(f) = &self.facts {
            s.error = f.error;
            s.preemptions = f.preemptions;
            s.cached_prompt_tokens = f.prefix_hits;
            s.spec_draft_tokens = f.spec_draft_tokens;
            s.spec_accepted_tokens = f.spec_accepted_tokens;
            // Nothing charged by the end reads as unknown (its share comes late), never free.
            s.energy_joules = f
                .energy
                .and_then(|e| e.energy_joules())
                .filter(|j| *j > 0.0);
            s.cost = f.energy.and_then(|e| e.cost()).filter(|c| *c > 0.0);
        }
        s
    }

    /// Records the ended request in the metrics, the in-flight gauges and the window.
    fn record(&mut self, now: Instant, s: &RequestSummary) {
        let h = &*self.handles;
        let secs = |d: Duration| d.as_secs_f64();
        if let Some(t) = s.tpot {
            h.tpot.record(secs(t));
        }
        if let Some(d) = s.decode {
            h.decode.record(secs(d));
        }
        if let Some(d) = s.inference {
            h.inference.record(secs(d));
        }
        let f = self.facts.as_deref();
        h.request_preemptions.record(s.preemptions as f64);
        h.params_n
            .record(f64::from(f.and_then(|f| f.n).unwrap_or(1)));
        if let Some(m) = f.and_then(|f| f.max_tokens) {
            h.params_max_tokens.record(m as f64);
        }
        let longest = f.and_then(|f| f.longest_sequence);
        h.max_generation_tokens
            .record(longest.unwrap_or(s.output_tokens) as f64);
        h.request_input_tokens.record(s.input_tokens as f64);
        h.request_output_tokens.record(s.output_tokens as f64);
        match s.finish_reason {
            Some(f) => {
                h.e2e.record(secs(s.e2e));
                h.ended[f.index()].increment(1);
            }
            None => {
                // Failures are rare and their error types open-ended: resolved here, not at start.
                let names = self.meter.metric_names();
                let mut l = h.labels.clone();
                l.push(Label::new(
                    "error_type",
                    s.error.map_or("unknown", ErrorKind::as_str),
                ));
                metrics::histogram!(names.name(id::E2E).to_owned(), l.clone()).record(secs(s.e2e));
                l.push(Label::new(names.label_key("finish_reason"), "error"));
                metrics::counter!(names.name(id::REQUESTS).to_owned(), l).increment(1);
            }
        }
        if s.goodput {
            h.goodput.increment(1);
        }
        let nf = s.non_finite;
        for (c, v) in h.nonfinite.iter().zip([nf.nan, nf.pos_inf, nf.neg_inf]) {
            if v > 0 {
                c.increment(v);
            }
        }
        if nf.total() > 0 {
            h.nonfinite_requests.increment(1);
        }
        let t = self.meter.live_totals();
        match self.phase {
            Phase::Waiting | Phase::Preempted => {
                t.waiting.fetch_sub(1, Relaxed);
                h.waiting.decrement(1.0);
            }
            Phase::Running | Phase::Decoding => {
                t.running.fetch_sub(1, Relaxed);
                h.running.decrement(1.0);
            }
            Phase::Ended => {}
        }
        t.requests_ended.fetch_add(1, Relaxed);
        self.meter.liveness().unregister(self.slot);
        self.phase = Phase::Ended;
        self.next_flush = now;
        self.meter.window_end(now, s, Outcome::of(s.finish_reason));
    }

    /// Reports the ended request on its span and in the request log, with its captured text
    /// after the redactor ran.
    fn report(&mut self, s: &RequestSummary) {
        let buf = self.text.take();
        let capture = self.meter.text_capture();
        let redacted = |kind: TextKind| {
            let (capture, buf) = (capture?, buf.as_deref()?);
            let piece = match kind {
                TextKind::Prompt => &buf.prompt,
                TextKind::Output => &buf.output,
            };
            redact::redact(capture, kind, piece).unwrap_or_else(|_| {
                self.meter.misuse("redactor_panic");
                None
            })
        };
        let prompt = redacted(TextKind::Prompt);
        let output = redacted(TextKind::Output);
        let text = buf.as_deref().map(|b| EndText {
            prompt: prompt.as_deref(),
            output: output.as_deref(),
            prompt_truncated: b.prompt.truncated,
            output_truncated: b.output.truncated,
        });
        let record = EndRecord {
            request_id: &self.request_id,
            summary: s,
            finish_reason: s.finish_reason.map_or("error", Finish::as_str),
            error_type: s.error.map(ErrorKind::as_str),
            text,
            n: self.facts.as_ref().and_then(|f| f.n),
            max_tokens: self.facts.as_ref().and_then(|f| f.max_tokens),
        };
        span::record_end(&self.span, self.meter.model(), &record);
    }

    /// Adds NaN/+Inf/-Inf counts seen in this request's logits (the quality crate's scanner
    /// calls this). Every count is a fault: pass -Inf only from raw logits, never the mask of
    /// masked ones; any count makes the request a non-finite one at its end. Counts after the
    /// end are ignored and counted as misuse.
    pub fn record_non_finite(&mut self, counts: NonFinite) {
        if self.phase == Phase::Ended {
            self.meter.misuse("non_finite_after_end");
            return;
        }
        self.non_finite.add(counts);
    }

    /// Sets the prompt length when it is known only after start (servers that tokenize inside
    /// the engine report it later, e.g. in the last chunk's usage). Counted once: a second
    /// call, or a call when a non-zero length was given at start, is ignored and counted as
    /// misuse `prompt_tokens_twice`; after the end, as `prompt_tokens_after_end`.
    ///
    /// ```
    /// use tokenmeter_core::{Finish, Meter};
    /// let meter = Meter::default();
    /// let mut req = meter.request().start();
    /// req.token();
    /// req.set_prompt_tokens(42); // from the engine's usage report
    /// assert_eq!(req.finish(Finish::Stop).input_tokens, 42);
    /// assert_eq!(meter.totals().input_tokens, 42);
    /// ```
    pub fn set_prompt_tokens(&mut self, n: usize) {
        if self.phase == Phase::Ended {
            self.meter.misuse("prompt_tokens_after_end");
            return;
        }
        if self.prompt_known {
            self.meter.misuse("prompt_tokens_twice");
            return;
        }
        let n = u64::try_from(n).unwrap_or(u64::MAX);
        self.prompt = n;
        self.prompt_known = true;
        self.meter.live_totals().input_tokens.fetch_add(n, Relaxed);
        self.handles.input_tokens.increment(n);
    }

    /// A handle through which other threads add this request's non-finite logit counts
    /// without a lock: `Send + Sync`, cheap to clone (an `Arc`), three relaxed adds per
    /// record. For servers whose logits are seen on the engine thread while the guard lives in
    /// the request's task. The guard folds the counts in when the request ends; counts recorded
    /// through the handle after that are dropped and counted as misuse `non_finite_after_end`.
    ///
    /// ```
    /// use tokenmeter_core::{Finish, Meter, NonFinite};
    /// let meter = Meter::default();
    /// let mut req = meter.request().start();
    /// let logits = req.non_finite_handle();
    /// std::thread::spawn(move || logits.record(NonFinite { nan: 2, ..NonFinite::default() }))
    ///     .join()
    ///     .unwrap();
    /// req.token();
    /// assert_eq!(req.finish(Finish::Stop).non_finite.nan, 2);
    /// ```
    pub fn non_finite_handle(&mut self) -> NonFiniteHandle {
        let meter = self.meter.clone();
        let shared = self
            .facts()
            .shared_non_finite
            .get_or_insert_with(|| Arc::new(SharedNonFinite::new(meter)));
        NonFiniteHandle(Arc::clone(shared))
    }

    /// Appends prompt text, when the meter captures text
    /// ([`MeterBuilder::capture_text`](crate::MeterBuilder::capture_text)); otherwise does
    /// nothing (one branch, no allocation). Call it once with the whole prompt, or once per
    /// piece (e.g. per chat message, in order). Text past the meter's
    /// [`text_max_bytes`](crate::MeterBuilder::text_max_bytes) is dropped and the prompt
    /// marked truncated; text handed in after the request ended is ignored.
    ///
    /// ```
    /// use tokenmeter_core::{Finish, Meter, Verbatim};
    /// let meter = Meter::builder().capture_text(Verbatim).build();
    /// let mut req = meter.request().start();
    /// req.prompt_text("What is 2 + 2?");
    /// req.token();
    /// req.output_text("4");
    /// req.finish(Finish::Stop); // the request log carries prompt="What is 2 + 2?", output="4"
    /// ```
    #[inline]
    pub fn prompt_text(&mut self, text: &str) {
        if let Some(buf) = &mut self.text {
            buf.push(TextKind::Prompt, text);
        }
    }

    /// Appends a decoded piece of output text (a token's text, or a streamed chunk), when
    /// the meter captures text; otherwise does nothing (one branch, no allocation). Pieces
    /// are concatenated in order, so hand in whole UTF-8 strings as the detokenizer yields
    /// them. The same cap as [`prompt_text`](Self::prompt_text) applies.
    ///
    /// ```
    /// use tokenmeter_core::{Finish, Meter};
    /// let meter = Meter::default(); // no capture: output_text is a no-op
    /// let mut req = meter.request().start();
    /// for piece in ["Hel", "lo"] {
    ///     req.token();
    ///     req.output_text(piece);
    /// }
    /// assert!(!req.captures_text());
    /// req.finish(Finish::Stop);
    /// ```
    #[inline]
    pub fn output_text(&mut self, piece: &str) {
        if let Some(buf) = &mut self.text {
            buf.push(TextKind::Output, piece);
        }
    }

    /// Whether text handed to [`prompt_text`](Self::prompt_text) and
    /// [`output_text`](Self::output_text) is kept: the meter captures text and the request
    /// has not ended. Check it to skip detokenizing text only wanted for the log.
    ///
    /// ```
    /// use tokenmeter_core::{Finish, Meter, Verbatim};
    /// let meter = Meter::builder().capture_text(Verbatim).build();
    /// let mut req = meter.request().start();
    /// assert!(req.captures_text());
    /// req.finish(Finish::Stop);
    /// assert!(!req.captures_text()); // ended: later text is ignored
    /// assert!(!Meter::default().request().start().captures_text());
    /// ```
    pub fn captures_text(&self) -> bool {
        self.text.is_some()
    }

    /// The non-finite counts recorded so far.
    pub fn non_finite(&self) -> NonFinite {
        self.non_finite
    }

    /// Output tokens recorded so far.
    pub fn output_tokens(&self) -> u64 {
        self.n
    }

    /// The prompt length (given at start, or set later with
    /// [`set_prompt_tokens`](Self::set_prompt_tokens)).
    pub fn prompt_tokens(&self) -> u64 {
        self.prompt
    }

    /// Whether the request has ended (finished, failed or cancelled).
    pub fn is_finished(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// The request id (given, or a per-meter sequence number).
    pub fn request_id(&self) -> &str {
        &self.request_id
    }

    /// The meter this request belongs to.
    pub fn meter(&self) -> &Meter {
        &self.meter
    }

    /// The request's span; enter it around work done for the request, or record the
    /// quality fields it declares.
    pub fn span(&self) -> &Span {
        &self.span
    }

    /// Preemptions so far.
    pub fn preemptions(&self) -> u64 {
        self.facts.as_ref().map_or(0, |f| f.preemptions)
    }

    /// Whether the request is preempted now (waiting to be re-admitted).
    pub fn is_preempted(&self) -> bool {
        self.phase == Phase::Preempted
    }

    /// The arrival instant.
    pub fn arrival(&self) -> Instant {
        self.arrival
    }

    /// Time to first token, once there is one.
    pub fn ttft(&self) -> Option<Duration> {
        (self.n > 0).then(|| self.first.saturating_duration_since(self.arrival))
    }
}

/// Non-finite counts shared between a guard and the threads that scan its logits.
struct SharedNonFinite {
    nan: AtomicU64,
    pos_inf: AtomicU64,
    neg_inf: AtomicU64,
    ended: AtomicBool,
    /// For the misuse count of a record after the end.
    meter: Meter,
}

impl SharedNonFinite {
    fn new(meter: Meter) -> Self {
        SharedNonFinite {
            nan: AtomicU64::new(0),
            pos_inf: AtomicU64::new(0),
            neg_inf: AtomicU64::new(0),
            ended: AtomicBool::new(false),
            meter,
        }
    }

    /// Marks the request ended and takes what was recorded.
    fn close(&self) -> NonFinite {
        self.ended.store(true, Relaxed);
        NonFinite {
            nan: self.nan.swap(0, Relaxed),
            pos_inf: self.pos_inf.swap(0, Relaxed),
            neg_inf: self.neg_inf.swap(0, Relaxed),
        }
    }
}

/// Adds non-finite logit counts to one request from any thread; from
/// [`RequestGuard::non_finite_handle`].
#[derive(Clone)]
pub struct NonFiniteHandle(Arc<SharedNonFinite>);

impl std::fmt::Debug for NonFiniteHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NonFiniteHandle").finish_non_exhaustive()
    }
}

impl NonFiniteHandle {
    /// Adds `counts` (e.g. one scanned row's). Lock-free: three relaxed adds. After the request
    /// ended the counts are dropped and counted as misuse `non_finite_after_end`.
    pub fn record(&self, counts: NonFinite) {
        let s = &*self.0;
        if s.ended.load(Relaxed) {
            s.meter.misuse("non_finite_after_end");
            return;
        }
        for (cell, v) in [
            (&s.nan, counts.nan),
            (&s.pos_inf, counts.pos_inf),
            (&s.neg_inf, counts.neg_inf),
        ] {
            if v > 0 {
                cell.fetch_add(v, Relaxed);
            }
        }
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.phase != Phase::Ended {
            if std::thread::panicking() {
                // Recorded, never swallowed: the panic goes on unwinding.
                let _ = self.end(None, Some(ErrorKind::Other("panic")));
            } else {
                let _ = self.finish(Finish::Cancelled);
            }
        }
    }
}
