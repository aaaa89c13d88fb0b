//! Small shared types at the bottom of the crate: how a request ended (finish reasons, error
//! kinds), non-finite counts, cumulative totals and the goodput SLO. They depend on nothing else
//! in the crate.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

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
}

/// Serialized as its label value ([`Finish::as_str`]).
impl serde::Serialize for Finish {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

/// A finish reason string that [`Finish`]'s `FromStr` does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown finish reason `{0}` (an error ends a request through `fail`, not `finish`)")]
pub struct UnknownFinishReason(pub String);

impl std::str::FromStr for Finish {
    type Err = UnknownFinishReason;

    /// Parses the finish reasons servers and engines spell, case-insensitively: OpenAI's
    /// (`stop`, `length`, `tool_calls`, `function_call`, `content_filter`), both spellings of
    /// cancelled (`cancelled`, `canceled`) and vLLM's `abort`, and common engine ones
    /// (`eos`, `eos_token`, `stop_sequence`, `end_turn` → stop; `max_tokens`, `max_length`,
    /// `model_length` → length; `tool_use` → tool calls; `safety`, `recitation` → content
    /// filter).
    ///
    /// # Errors
    /// [`UnknownFinishReason`] for anything else, `error` included.
    ///
    /// ```
    /// use tokenmeter_core::Finish;
    /// assert_eq!("stop".parse(), Ok(Finish::Stop));
    /// assert_eq!("canceled".parse(), Ok(Finish::Cancelled));
    /// assert_eq!("TOOL_CALLS".parse(), Ok(Finish::ToolCalls));
    /// assert!("error".parse::<Finish>().is_err());
    /// ```
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "stop" | "eos" | "eos_token" | "stop_sequence" | "end_turn" => Finish::Stop,
            "length" | "max_tokens" | "max_length" | "model_length" => Finish::Length,
            "tool_calls" | "function_call" | "tool_use" => Finish::ToolCalls,
            "content_filter" | "safety" | "recitation" => Finish::ContentFilter,
            "cancelled" | "canceled" | "abort" | "aborted" => Finish::Cancelled,
            _ => return Err(UnknownFinishReason(s.to_owned())),
        })
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

/// Serialized as its `error.type` value ([`ErrorKind::as_str`]).
impl serde::Serialize for ErrorKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
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

/// Service-level objective for goodput: a successful request meets it when its TTFT and its
/// TPOT are both at or under these bounds (an unset bound always holds; TPOT holds trivially
/// for requests of fewer than 2 tokens).
///
/// ```
/// use std::time::Duration;
/// let slo = tokenmeter_core::Slo::new().ttft(Duration::from_millis(500)).tpot(Duration::from_millis(50));
/// assert_eq!(slo.ttft_bound(), Some(Duration::from_millis(500)));
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Slo {
    ttft: Option<Duration>,
    tpot: Option<Duration>,
}

impl Slo {
    /// An SLO with no bounds: every successful request counts as goodput.
    pub fn new() -> Self {
        Self::default()
    }
    /// Sets the time-to-first-token bound.
    pub fn ttft(mut self, bound: Duration) -> Self {
        self.ttft = Some(bound);
        self
    }
    /// Sets the time-per-output-token bound.
    pub fn tpot(mut self, bound: Duration) -> Self {
        self.tpot = Some(bound);
        self
    }
    /// The TTFT bound, if set.
    pub fn ttft_bound(&self) -> Option<Duration> {
        self.ttft
    }
    /// The TPOT bound, if set.
    pub fn tpot_bound(&self) -> Option<Duration> {
        self.tpot
    }
    pub(crate) fn met(&self, ttft: Option<Duration>, tpot: Option<Duration>) -> bool {
        let ttft_ok = self.ttft.is_none_or(|b| ttft.is_some_and(|t| t <= b));
        let tpot_ok = self.tpot.is_none_or(|b| tpot.is_none_or(|t| t <= b));
        ttft_ok && tpot_ok
    }
}

/// Cumulative counts since the meter was built.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    /// Requests started.
    pub requests_started: u64,
    /// Requests ended (finished, failed or cancelled).
    pub requests_ended: u64,
    /// Prompt tokens of started requests.
    pub input_tokens: u64,
    /// Output tokens flushed from guards (exact once no request is in flight).
    pub output_tokens: u64,
}

/// The live counterpart of [`Totals`] plus the in-flight gauges, shared by a meter's guards.
#[derive(Default)]
pub(crate) struct AtomicTotals {
    pub(crate) requests_started: AtomicU64,
    pub(crate) requests_ended: AtomicU64,
    pub(crate) input_tokens: AtomicU64,
    pub(crate) output_tokens: AtomicU64,
    pub(crate) running: AtomicU64,
    pub(crate) waiting: AtomicU64,
}

impl AtomicTotals {
    pub(crate) fn load(&self) -> Totals {
        Totals {
            requests_started: self.requests_started.load(Relaxed),
            requests_ended: self.requests_ended.load(Relaxed),
            input_tokens: self.input_tokens.load(Relaxed),
            output_tokens: self.output_tokens.load(Relaxed),
        }
    }

    /// Requests (running, waiting) now.
    pub(crate) fn in_flight(&self) -> (u64, u64) {
        (self.running.load(Relaxed), self.waiting.load(Relaxed))
    }
}

/// How a request ended, as the window and goodput see it.
#[derive(Default, Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Outcome {
    #[default]
    Succeeded,
    Failed,
    Cancelled,
}

impl Outcome {
    /// The outcome of a request that ended with `finish_reason` (`None`: it failed).
    pub(crate) fn of(finish_reason: Option<Finish>) -> Self {
        match finish_reason {
            Some(Finish::Cancelled) => Outcome::Cancelled,
            Some(_) => Outcome::Succeeded,
            None => Outcome::Failed,
        }
    }
}
