//! A request's measured values, derived once when it ends from the instants the guard kept, and
//! then recorded (metrics, window), reported (span, log) and returned to the caller.
//!
//! Definitions (docs/definitions.md): arrival t0 is `start()`; TTFT = first token − t0;
//! TPOT = (last − first) / (n − 1) for n ≥ 2; queue = `scheduled()` − engine-queue entry
//! (`enqueued()`, else t0); prefill = first token −
//! `scheduled()`; decode = last − first; inference = last − first `scheduled()`; E2E = end − t0.

use std::time::Duration;

use quanta::Instant;

use crate::itl::nanos;
use crate::types::{ErrorKind, Finish, NonFinite};

/// What [`RequestGuard::finish`](crate::RequestGuard::finish) and
/// [`fail`](crate::RequestGuard::fail) return: the request's measured values, the same ones its
/// metrics, span and log line carry. Servers put them in their responses (e.g. in `usage`).
///
/// ```
/// use std::time::Duration;
/// use tokenmeter_core::{Finish, Meter};
/// let (clock, mock) = quanta::Clock::mock();
/// let meter = Meter::builder().clock(clock).build();
/// let mut req = meter.request().prompt_tokens(5).start();
/// mock.increment(Duration::from_millis(10));
/// req.scheduled();
/// for _ in 0..3 {
///     mock.increment(Duration::from_millis(20));
///     req.token();
/// }
/// let s = req.finish(Finish::Stop);
/// assert_eq!(s.ttft, Some(Duration::from_millis(30)));
/// assert_eq!(s.tpot, Some(Duration::from_millis(20)));
/// assert_eq!(s.queue, Some(Duration::from_millis(10)));
/// assert_eq!((s.input_tokens, s.output_tokens), (5, 3));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct RequestSummary {
    /// Prompt (input) tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Time to first token (arrival to first token); `None` without a token.
    pub ttft: Option<Duration>,
    /// Time per output token after the first; `None` under 2 tokens.
    pub tpot: Option<Duration>,
    /// Arrival to end.
    pub e2e: Duration,
    /// Entry into the engine queue (arrival, or `enqueued()`) to `scheduled()`; `None` when the
    /// request was never scheduled explicitly.
    pub queue: Option<Duration>,
    /// `scheduled()` to the first token; `None` without both.
    pub prefill: Option<Duration>,
    /// First to last token; `None` without a token.
    pub decode: Option<Duration>,
    /// How it ended without error: the reason given to `finish`, or
    /// [`Finish::Cancelled`](crate::Finish::Cancelled) for a dropped guard; `None` when it
    /// failed. Serialized as the OpenAI spelling (`"stop"`, `"cancelled"`, ...).
    pub finish_reason: Option<Finish>,
    /// The error type when it failed (`fail`; `ErrorKind::Other("panic")` for a guard dropped
    /// while its thread panicked); `None` otherwise. Serialized as the `error.type` value.
    pub error: Option<ErrorKind>,
    /// Whether the request succeeded and met the meter's SLO (goodput).
    pub goodput: bool,
    /// Non-finite values seen in its logits.
    pub non_finite: NonFinite,
    /// First `scheduled()` to the last token (prefill + decode, preemptions included: vLLM's
    /// inference time); `None` without both.
    pub inference: Option<Duration>,
    /// Times the engine preempted it.
    pub preemptions: u64,
    /// Prompt tokens found in the prefix cache (their KV was reused).
    pub cached_prompt_tokens: u64,
    /// Speculative-decoding draft tokens proposed for it.
    pub spec_draft_tokens: u64,
    /// Of those, accepted.
    pub spec_accepted_tokens: u64,
    /// GPU energy attributed to the request by its end, joules: its shares of the sampler
    /// intervals measured while it ran (docs/gpu.md, "Energy and cost per request"). The share
    /// of the interval in which it ended is measured at the next sample and reaches the
    /// per-request histogram, the per-label counter and the request log's settlement line,
    /// not this value. `None` when no sample measured an interval of the request by its end:
    /// no sampler attached, the GPUs' energy unknown, or it ended before the first sample
    /// after its start (then all of it is settled at the next sample).
    pub energy_joules: Option<f64>,
    /// Cost attributed to the request by its end (price per GPU-hour x its share of GPU
    /// time), on the same terms as `energy_joules`; `None` without a sampler with a price.
    pub cost: Option<f64>,
}

/// The instants a guard keeps, from which [`RequestSummary`] is derived.
pub(crate) struct Timeline {
    pub(crate) arrival: Instant,
    /// Entry into the engine's queue (the arrival unless the server said otherwise).
    pub(crate) enqueued: Instant,
    pub(crate) scheduled: Option<Instant>,
    /// First and last token, when there was one.
    pub(crate) tokens: Option<(Instant, Instant)>,
    pub(crate) output_tokens: u64,
}

impl RequestSummary {
    /// The measured values of a request that ended at `end` (not before its last token).
    pub(crate) fn derive(t: &Timeline, end: Instant, input_tokens: u64) -> Self {
        let since = |later: Instant, earlier: Instant| later.saturating_duration_since(earlier);
        let n = t.output_tokens;
        RequestSummary {
            input_tokens,
            output_tokens: n,
            ttft: t.tokens.map(|(first, _)| since(first, t.arrival)),
            tpot: t
                .tokens
                .filter(|_| n >= 2)
                .map(|(first, last)| Duration::from_nanos(nanos(since(last, first)) / (n - 1))),
            e2e: since(end, t.arrival),
            queue: t.scheduled.map(|s| since(s, t.enqueued)),
            prefill: t
                .scheduled
                .zip(t.tokens)
                .map(|(s, (first, _))| since(first, s)),
            decode: t.tokens.map(|(first, last)| since(last, first)),
            inference: t
                .scheduled
                .zip(t.tokens)
                .map(|(s, (_, last))| since(last, s)),
            ..RequestSummary::default()
        }
    }
}
