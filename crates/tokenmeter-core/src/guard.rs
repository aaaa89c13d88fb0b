//! The per-request guard: the hot path.
//!
//! `token()` reads the clock once and touches only the guard's own memory: the gap since the
//! previous token goes into a per-bucket count and nanosecond sum aligned with the exported ITL
//! bounds. What is flushed to the shared handles (at the end, and about once a second during a
//! long generation) is therefore exact in bucket counts and in sum.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use metrics::Label;
use quanta::Instant;
use tracing::Span;

use crate::handles::Handles;
use crate::meter::{Meter, lock};
use crate::names::Naming;
use crate::redact::{TextBuf, TextKind};
use crate::span::{self, EndRecord};
use crate::window::{Ended, Outcome};

/// Most ITL bucket bounds the guard can accumulate (it keeps a fixed array, so a guard's size
/// does not depend on configuration).
pub const MAX_ITL_BOUNDS: usize = 24;
pub(crate) const ITL_SLOTS: usize = MAX_ITL_BOUNDS + 1;
/// Most tokens one step may deliver; more is a caller bug (a cumulative count passed as a
/// delta, say), clamped and counted as misuse `tokens_too_many`.
pub const MAX_TOKENS_PER_STEP: u32 = 1 << 16;
/// A bucket this full is flushed at once: exporters' `record_many` costs grow with the
/// count, and a bounded count keeps each flush short.
const FLUSH_AT_COUNT: u32 = 1 << 16;

/// How a request ended without error.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Finish {
    /// The model produced a stop token or a stop sequence.
    Stop,
    /// The request hit its token limit.
    Length,
    /// A content filter ended the output.
    ContentFilter,
    /// The model called a tool.
    ToolCalls,
    /// The client went away or the server aborted the request (also what a dropped guard
    /// records).
    Cancelled,
}

impl Finish {
    pub(crate) const COUNT: usize = 5;
    pub(crate) const ALL: [Finish; Self::COUNT] = [
        Finish::Stop,
        Finish::Length,
        Finish::ContentFilter,
        Finish::ToolCalls,
        Finish::Cancelled,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The `finish_reason` label value (OpenAI's spelling; `cancelled`).
    pub fn as_str(self) -> &'static str {
        match self {
            Finish::Stop => "stop",
            Finish::Length => "length",
            Finish::ContentFilter => "content_filter",
            Finish::ToolCalls => "tool_calls",
            Finish::Cancelled => "cancelled",
        }
    }

    /// The label value under a naming preset (vLLM calls a cancelled request `abort`).
    pub(crate) fn label(self, naming: Naming) -> &'static str {
        match (naming, self) {
            (Naming::Vllm, Finish::Cancelled) => "abort",
            _ => self.as_str(),
        }
    }
}

/// Why a request failed; becomes the `error.type` attribute (OpenTelemetry: a low-cardinality
/// identifier of the error class).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A deadline passed.
    Timeout,
    /// Out of memory (host or device).
    Oom,
    /// The request was invalid (an HTTP 4xx).
    InvalidRequest,
    /// An internal error (an HTTP 5xx).
    Internal,
    /// Another class; keep the set of values small and fixed.
    Other(&'static str),
}

impl ErrorKind {
    /// The `error.type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Timeout => "timeout",
            ErrorKind::Oom => "oom",
            ErrorKind::InvalidRequest => "invalid_request",
            ErrorKind::Internal => "internal",
            ErrorKind::Other(s) => s,
        }
    }
}

/// Counts of non-finite values seen in logits, each one a fault: NaN and +Inf anywhere, -Inf
/// in raw logits (the quality crate never reports the -Inf of masked logits, which is intended).
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct NonFinite {
    /// NaN values (any sign, any payload, quiet or signaling).
    pub nan: u64,
    /// `+Inf` values.
    pub pos_inf: u64,
    /// `-Inf` values.
    pub neg_inf: u64,
}

impl NonFinite {
    /// All non-finite values.
    pub fn total(&self) -> u64 {
        self.nan
            .saturating_add(self.pos_inf)
            .saturating_add(self.neg_inf)
    }
    /// Adds `other` into `self`, saturating.
    pub fn add(&mut self, other: NonFinite) {
        self.nan = self.nan.saturating_add(other.nan);
        self.pos_inf = self.pos_inf.saturating_add(other.pos_inf);
        self.neg_inf = self.neg_inf.saturating_add(other.neg_inf);
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
}

impl RequestBuilder {
    pub(crate) fn new(meter: Meter) -> Self {
        RequestBuilder {
            meter,
            prompt_tokens: 0,
            labels: Vec::new(),
            request_id: None,
            parent: None,
        }
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
            None => meter
                .inner
                .next_request_id
                .fetch_add(1, Relaxed)
                .to_string(),
        };
        let span = span::request_span(&meter, &id, self.prompt_tokens, self.parent.as_ref());
        let totals = &meter.inner.totals;
        totals.requests_started.fetch_add(1, Relaxed);
        totals.input_tokens.fetch_add(self.prompt_tokens, Relaxed);
        totals.waiting.fetch_add(1, Relaxed);
        handles.input_tokens.increment(self.prompt_tokens);
        handles.waiting.increment(1.0);
        let next_flush = arrival + meter.inner.flush_interval;
        let text = meter.inner.text.as_ref().map(|c| TextBuf::new(c.max_bytes));
        RequestGuard {
            meter,
            handles,
            span,
            request_id: id.into_boxed_str(),
            arrival,
            scheduled_at: arrival,
            first: arrival,
            last: arrival,
            next_flush,
            n: 0,
            flushed: 0,
            prompt: self.prompt_tokens,
            itl_counts: [0; ITL_SLOTS],
            itl_sums: [0; ITL_SLOTS],
            non_finite: NonFinite::default(),
            phase: Phase::Waiting,
            scheduled: false,
            last_bucket: 0,
            text,
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
    next_flush: Instant,
    n: u64,
    phase: Phase,
    scheduled: bool,
    /// The ITL bucket of the previous token, tried first.
    last_bucket: u8,
    /// Per ITL bucket (the last slot is +Inf): observations and their sum in nanoseconds.
    itl_counts: [u32; ITL_SLOTS],
    itl_sums: [u64; ITL_SLOTS],
    handles: Arc<Handles>,
    span: Span,
    request_id: Box<str>,
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

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl RequestGuard {
    /// Marks the moment the engine admits the request (prefill begins): ends its queue time.
    /// Later calls are ignored.
    pub fn scheduled(&mut self) {
        let now = self.meter.now();
        self.scheduled_at_instant(now);
    }

    /// [`scheduled`](Self::scheduled) at an instant read with [`Meter::now`].
    pub fn scheduled_at_instant(&mut self, now: Instant) {
        if self.phase != Phase::Waiting {
            if self.phase == Phase::Ended {
                self.meter.misuse("scheduled_after_end");
            }
            return;
        }
        let now = self.not_before(now, self.arrival);
        self.scheduled = true;
        self.scheduled_at = now;
        self.enter_running();
        self.handles
            .queue
            .record(now.saturating_duration_since(self.arrival).as_secs_f64());
        tracing::debug!(target: span::TARGET, parent: &self.span, "gen_ai.request.scheduled");
    }

    /// Records one output token now: one clock read.
    #[inline]
    pub fn token(&mut self) {
        let now = self.meter.inner.clock.now();
        self.tokens_at(1, now);
    }

    /// Records `k` output tokens delivered now by one step (speculative or multi-token
    /// decoding). `tokens(0)` does nothing.
    #[inline]
    pub fn tokens(&mut self, k: u32) {
        if k == 0 {
            return;
        }
        let now = self.meter.inner.clock.now();
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
        let per_token = if k == 1 { gap } else { gap / u64::from(k) };
        let inner = &*self.meter.inner;
        // Decode gaps are steady, so the previous token's bucket usually fits again.
        let mut b = usize::from(self.last_bucket);
        let fits = inner
            .itl_ranges
            .get(b)
            .is_some_and(|&(lo, hi)| lo <= per_token && per_token <= hi);
        if !fits {
            b = inner
                .itl_bounds_ns
                .partition_point(|&bound| bound < per_token);
            self.last_bucket = b as u8; // b <= MAX_ITL_BOUNDS < 256
        }
        // `b <= MAX_ITL_BOUNDS`, so it is in range; `get_mut` keeps that promise checked
        // without a panic path.
        let mut full = false;
        if let (Some(c), Some(s)) = (self.itl_counts.get_mut(b), self.itl_sums.get_mut(b)) {
            *c += k; // at most FLUSH_AT_COUNT + MAX_TOKENS_PER_STEP: no overflow
            // A bucket's sum never exceeds the time since the request's first token.
            *s = s.wrapping_add(gap);
            full = *c >= FLUSH_AT_COUNT;
        }
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
            self.itl_counts[0] = k - 1;
        }
        self.handles
            .ttft
            .record(now.saturating_duration_since(self.arrival).as_secs_f64());
        if self.scheduled {
            self.handles.prefill.record(
                now.saturating_duration_since(self.scheduled_at)
                    .as_secs_f64(),
            );
        }
        tracing::debug!(target: span::TARGET, parent: &self.span, "gen_ai.first_token");
        self.next_flush = now + self.meter.inner.flush_interval;
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
        self.phase = Phase::Running;
        let t = &self.meter.inner.totals;
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
        let mut itl = [(0u64, 0u64); ITL_SLOTS];
        let mut used = 0;
        for (c, s) in self.itl_counts.iter_mut().zip(self.itl_sums.iter_mut()) {
            if *c > 0 {
                let count = u64::from(*c);
                // The mean of the values in a bucket lies inside the bucket, so recording it
                // `count` times keeps both the bucket counts and the sum exact.
                let mean_ns = *s / count;
                self.handles
                    .itl
                    .record_many(*s as f64 / count as f64 / 1e9, *c as usize);
                itl[used] = (mean_ns, count);
                used += 1;
                *c = 0;
                *s = 0;
            }
        }
        self.handles.output_tokens.increment(tokens);
        self.meter
            .inner
            .totals
            .output_tokens
            .fetch_add(tokens, Relaxed);
        lock(&self.meter.inner.window).record_tokens(now, tokens, &itl[..used]);
        self.next_flush = now + self.meter.inner.flush_interval;
    }

    /// Ends the request successfully. A second end is ignored and counted as misuse
    /// `finish_twice`.
    pub fn finish(&mut self, reason: Finish) {
        let outcome = if reason == Finish::Cancelled {
            Outcome::Cancelled
        } else {
            Outcome::Succeeded
        };
        self.end(outcome, Some(reason), None);
    }

    /// Ends the request with an error. A second end is ignored and counted as misuse
    /// `finish_twice`.
    pub fn fail(&mut self, kind: ErrorKind) {
        self.end(Outcome::Failed, None, Some(kind.as_str()));
    }

    /// Ends the request: `reason` is `None` for a failure, whose `error` names its type.
    fn end(&mut self, outcome: Outcome, reason: Option<Finish>, error: Option<&'static str>) {
        if self.phase == Phase::Ended {
            self.meter.misuse("finish_twice");
            return;
        }
        let floor = if self.n > 0 { self.last } else { self.arrival };
        let now = self.meter.now();
        let now = self.not_before(now, floor);
        self.flush(now);
        let h = Arc::clone(&self.handles);
        let secs = |d: Duration| d.as_secs_f64();
        let e2e = now.saturating_duration_since(self.arrival);
        let ttft = (self.n > 0).then(|| self.first.saturating_duration_since(self.arrival));
        let decode = (self.n > 0).then(|| self.last.saturating_duration_since(self.first));
        let tpot = (self.n >= 2).then(|| {
            Duration::from_nanos(
                nanos(self.last.saturating_duration_since(self.first)) / (self.n - 1),
            )
        });
        let queue = self
            .scheduled
            .then(|| self.scheduled_at.saturating_duration_since(self.arrival));
        let prefill = (self.scheduled && self.n > 0)
            .then(|| self.first.saturating_duration_since(self.scheduled_at));

        if let Some(t) = tpot {
            h.tpot.record(secs(t));
        }
        if let Some(d) = decode {
            h.decode.record(secs(d));
        }
        h.request_input_tokens.record(self.prompt as f64);
        h.request_output_tokens.record(self.n as f64);
        match reason {
            Some(f) => {
                h.e2e.record(secs(e2e));
                h.ended[f.index()].increment(1);
            }
            None => {
                // Failures are rare and their error types open-ended: resolved here, not at start.
                let e2e_name = self.meter.resolved_by_id("e2e").name.clone();
                let req_name = self.meter.resolved_by_id("requests").name.clone();
                let mut l = h.labels.clone();
                l.push(Label::new("error_type", error.unwrap_or("unknown")));
                metrics::histogram!(e2e_name, l.clone()).record(secs(e2e));
                l.push(Label::new(self.meter.label_key("finish_reason"), "error"));
                metrics::counter!(req_name, l).increment(1);
            }
        }
        let goodput = outcome == Outcome::Succeeded && self.meter.inner.slo.met(ttft, tpot);
        if goodput {
            h.goodput.increment(1);
        }
        let nf = self.non_finite;
        for (c, v) in h.nonfinite.iter().zip([nf.nan, nf.pos_inf, nf.neg_inf]) {
            if v > 0 {
                c.increment(v);
            }
        }
        if nf.total() > 0 {
            h.nonfinite_requests.increment(1);
        }
        let t = &self.meter.inner.totals;
        match self.phase {
            Phase::Waiting => {
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
        self.phase = Phase::Ended;
        let ended = Ended {
            ttft,
            tpot,
            e2e,
            queue,
            outcome,
            goodput,
        };
        lock(&self.meter.inner.window).record_end(now, &ended);
        let text = self.text.take();
        let record = EndRecord {
            request_id: &self.request_id,
            prompt_tokens: self.prompt,
            output_tokens: self.n,
            ttft_s: ttft.map(secs),
            tpot_s: tpot.map(secs),
            e2e_s: secs(e2e),
            queue_s: queue.map(secs),
            prefill_s: prefill.map(secs),
            decode_s: decode.map(secs),
            finish_reason: reason.map_or("error", Finish::as_str),
            error_type: error,
            nan: nf.nan,
            pos_inf: nf.pos_inf,
            neg_inf: nf.neg_inf,
            text: text.as_deref(),
        };
        span::record_end(&self.span, &self.meter, &record);
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

    /// The prompt length given at start.
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

    /// The arrival instant.
    pub fn arrival(&self) -> Instant {
        self.arrival
    }

    /// Time to first token, once there is one.
    pub fn ttft(&self) -> Option<Duration> {
        (self.n > 0).then(|| self.first.saturating_duration_since(self.arrival))
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.phase != Phase::Ended {
            if std::thread::panicking() {
                // Recorded, never swallowed: the panic goes on unwinding.
                self.end(Outcome::Failed, None, Some("panic"));
            } else {
                self.finish(Finish::Cancelled);
            }
        }
    }
}
