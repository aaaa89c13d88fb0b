//! The core of tokenmeter: the clock, the [`Meter`], the per-request [`RequestGuard`], the metric
//! [`catalog`] and the in-process sliding-window [`Snapshot`].
//!
//! Everything is emitted through the [`metrics`] facade (so whatever recorder the server
//! installed receives it) and through [`tracing`] (one span per request and one structured event
//! when it ends). With no recorder and no subscriber installed, all of it is a cheap no-op.
//!
//! ```
//! use std::time::Duration;
//! use tokenmeter_core::{Finish, Meter, Slo};
//!
//! let meter = Meter::builder()
//!     .model("smollm2-135m")
//!     .slo(Slo::new().ttft(Duration::from_millis(500)).tpot(Duration::from_millis(50)))
//!     .build();
//! let mut req = meter.request().prompt_tokens(12).start(); // arrival: the queue clock starts
//! req.scheduled();                                         // prefill begins
//! for _ in 0..3 {
//!     req.token();                                         // one clock read per token
//! }
//! req.finish(Finish::Stop);
//! assert_eq!(meter.totals().output_tokens, 3);
//! ```
//!
//! Time comes from [`quanta`]; tests inject its mock clock through [`MeterBuilder::clock`] and
//! get exact values.
//!
//! No prompt or output text is recorded unless the server opts in with
//! [`MeterBuilder::capture_text`] and a [`Redact`] implementation, through which every text
//! passes before it reaches a log or a span.

//! # Layout
//!
//! The modules form a one-way stack (a module uses only those listed before it):
//! [`catalog`] and `types` (finish reasons, error kinds, non-finite counts, totals, SLO) at the
//! bottom; then the leaves [`names`], [`emit`], [`attribution`] (per-request energy and cost cells), [`exemplar`], [`cardinality`], `itl` (the ITL bucket layout
//! and accumulator), `summary` (a request's derived values), `window`, `handles`, `redact`,
//! `span` and `liveness` (engine steps, per-request progress, [`Health`]), none of which knows
//! the meter; then `meter`; then `guard` and `engine` (per-engine state: [`EngineStep`],
//! [`Meter::health`]) on top.

pub mod attribution;
pub mod cardinality;
pub mod catalog;
pub mod emit;
mod engine;
pub mod exemplar;
mod guard;
mod handles;
mod itl;
mod liveness;
mod meter;
pub mod names;
mod redact;
mod span;
mod summary;
mod types;
mod window;

/// The clock: [`quanta`]'s, re-exported so that servers and tests need no direct dependency.
/// Tests build a meter on [`Clock::mock`](quanta::Clock::mock) and get exact values.
pub mod clock {
    pub use quanta::{Clock, Instant, Mock};
}

pub use engine::EngineStep;
pub use guard::{MAX_TOKENS_PER_STEP, NonFiniteHandle, RequestBuilder, RequestGuard};
pub use itl::MAX_ITL_BOUNDS;
pub use liveness::{DEFAULT_STALL_THRESHOLD, Health};
pub use meter::{ADAPTER_LABEL, ConfigError, LoadGuard, MAX_SPEC_POSITIONS, Meter, MeterBuilder};
pub use names::{MetricNames, Naming, ResolvedMetric};
pub use redact::{
    DEFAULT_TEXT_MAX_BYTES, MaskEmailsAndNumbers, Redact, TextKind, Then, Truncate, Verbatim,
};
pub use span::{StringArrayRecorder, set_string_array_recorder};
pub use summary::RequestSummary;
pub use types::{ErrorKind, Finish, NonFinite, Slo, Totals, UnknownFinishReason};
pub use window::{LatencySummary, Snapshot};
