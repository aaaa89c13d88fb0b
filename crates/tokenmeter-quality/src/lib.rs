//! Quality proxies for LLM serving, wired into tokenmeter's request guard:
//!
//! - **Numeric stability**: exact NaN / +Inf / -Inf counts of logits rows (`f32`, `f64`,
//!   `half::f16`, `half::bf16`) at memory-read speed, accumulated in the guard with
//!   [`LogitsExt::logits`] (or every k-th step with [`LogitsExt::logits_every`]); rows after
//!   masking (grammars, samplers, logit bias) go through [`LogitsExt::logits_as`] with
//!   [`LogitsKind::Masked`], where -Inf is the mask, not a fault.
//! - **Logprobs**: per-request perplexity, mean entropy and the share of low-confidence tokens
//!   ([`LogprobStats`]).
//! - **Streaming text monitors** ([`QualityMonitor`] / [`RequestQuality`]): refusal phrases
//!   matched across token boundaries, seq-rep-n repetition and a degenerate-loop flag, output
//!   length, empty outputs, U+FFFD / control characters / disallowed token ids, keyword
//!   counters, pluggable [`Scorer`]s, safety-filter triggers and user feedback.
//! - **Drift** ([`drift`]): a [`Baseline`] captured from reference traffic and a
//!   [`DriftMonitor`] exporting PSI and Jensen-Shannon divergence per feature.
//! - **Golden-set probes** ([`probe`]): a curated set of prompts with known answers run
//!   through the server's own path on a schedule, scored (exact, contains, F1, ROUGE-L,
//!   BLEU) and compared with a saved baseline.
//!
//! Nothing here allocates per token; every metric handle is resolved once per monitor, and
//! per-request values are recorded once, at the request's end. `docs/quality.md` explains what
//! each proxy means, when it misleads and how to alert on it.
//!
//! ```
//! use tokenmeter_core::{Finish, Meter};
//! use tokenmeter_quality::{LogitsExt, QualityConfig, QualityMonitor};
//!
//! let meter = Meter::default();
//! let quality = QualityMonitor::new(&meter, QualityConfig::default())?;
//!
//! let mut req = meter.request().prompt_tokens(3).start();
//! let mut q = quality.request();
//! let logits = vec![0.25f32; 1024];
//! for (id, piece) in [(17u32, "Paris"), (4, " is"), (99, " lovely.")] {
//!     req.token();
//!     req.logits(&logits);
//!     q.piece(id, piece);
//!     q.logprob(-0.2);
//! }
//! let report = q.finish(&req);
//! req.finish(Finish::Stop);
//! assert_eq!(report.chars.chars, 16);
//! assert!(!report.refusal);
//! # Ok::<(), tokenmeter_quality::QualityError>(())
//! ```

pub mod ab;
pub mod drift;
mod guard_ext;
mod labels;
mod logprobs;
mod monitor;
pub mod nonfinite;
pub mod probe;
mod repetition;
pub mod review;
mod scorer;
pub mod text;

pub use ab::{AbConfig, AbMonitor, Readout, VariantWindow};
pub use drift::{Baseline, BaselineError, BaselineRecorder, DriftMonitor, DriftReport};
pub use guard_ext::LogitsExt;
pub use logprobs::{LogprobStats, LogprobSummary, MIN_LOGPROB, entropy_from_logits, entropy_top_k};
pub use monitor::{
    QualityConfig, QualityError, QualityMonitor, QualityReport, RequestQuality, TokenSet,
};
pub use nonfinite::{Logit, LogitsKind, count_faults, count_non_finite};
pub use repetition::Repetition;
pub use review::{ReviewConfig, ReviewSink};
pub use scorer::{LexiconSentiment, Scorer};
pub use tokenmeter_core::NonFinite;
