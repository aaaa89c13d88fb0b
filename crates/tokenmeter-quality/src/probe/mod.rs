//! Golden-set probes: the deployed model answers a curated set of prompts with known answers,
//! through the server's own serving path, on a schedule; the answers are scored and the scores
//! exported, so a quality regression that latency metrics do not show (a bad quantization, a
//! kernel change, a new model version) shows up as a falling score.
//!
//! - [`GoldenSet`]: the set, a JSONL file of prompts, references and a [`Scoring`] method
//!   (exact match, normalized contains, token F1, ROUGE-L, BLEU; see [`score`]).
//! - [`Probe`]: the set plus the server's callback (`Fn(&ProbePrompt) -> Result<ProbeAnswer, E>`),
//!   scheduled off the generation loop ([`Probe::start`]) with an interval and jitter, one
//!   prompt at a time, a prompts-per-hour budget, a timeout per prompt and a capacity guard
//!   (skip when busy), or driven by hand ([`Probe::tick`], [`Probe::run_pass`]).
//! - [`PassReport`]: what a pass found, [`Probe::latest`] in process, and as metrics
//!   (`quality_golden_*`) and one `tracing` event per pass.
//! - [`GoldenBaseline`]: the scores of a good deployment, saved as JSON; exported as
//!   `quality_golden_baseline_score` for the alert in `docs/deploy/prometheus/golden-rules.yml`.
//!
//! `docs/quality.md` ("Golden-set probes") says what the scores mean, what they cost and when
//! they mislead.

mod baseline;
mod golden;
mod report;
mod runner;
mod schedule;
pub mod score;

pub use baseline::{GOLDEN_FORMAT_VERSION, GoldenBaseline};
pub use golden::{GoldenError, GoldenItem, GoldenSet};
pub use report::{ItemResult, Outcome, PassReport, ScorerResult};
pub use runner::{Probe, ProbeAnswer, ProbeConfig, ProbeError, ProbePrompt, ProbeRunner};
pub use score::{Scoring, normalize, tokens};
