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

pub mod catalog;
mod guard;
mod handles;
mod meter;
mod names;
mod redact;
mod span;
mod window;

pub use guard::{
    ErrorKind, Finish, MAX_ITL_BOUNDS, MAX_TOKENS_PER_STEP, NonFinite, RequestBuilder, RequestGuard,
};
pub use handles::recorder_id;
pub use meter::{ConfigError, LoadGuard, Meter, MeterBuilder, Slo, Totals};
pub use names::{Naming, ResolvedMetric};
pub use quanta::{Clock, Instant, Mock};
pub use redact::{
    DEFAULT_TEXT_MAX_BYTES, MaskEmailsAndNumbers, Redact, TextKind, Then, Truncate, Verbatim,
};
pub use window::{LatencySummary, Snapshot};
