//! Per-sequence quality monitoring: the one place where the demo calls tokenmeter's quality
//! features (`tokenmeter::quality`): the NaN/Inf scan of each step's logits
//! ([`LogitsExt::logits`]), log-probability statistics and the streaming refusal / repetition
//! monitors of [`RequestQuality`], recorded when the request ends.

use tokenmeter::quality::text::DEFAULT_REFUSAL_PHRASES;
use tokenmeter::quality::{LogitsExt, QualityConfig, QualityMonitor, RequestQuality};
use tokenmeter_core::{Meter, RequestGuard};

/// Builds the server's quality monitor (default refusal phrases, seq-rep-4).
///
/// # Errors
/// When the monitor's configuration cannot be compiled.
pub fn quality_monitor(meter: &Meter) -> Result<QualityMonitor, super::model::BoxError> {
    Ok(QualityMonitor::new(meter, QualityConfig::default())?)
}

/// Whether `text` contains one of the quality crate's default refusal phrases (the rule the load
/// generator applies client-side, case-insensitive, on the first 4 KiB).
pub fn looks_like_refusal(text: &str) -> bool {
    let head: String = text
        .chars()
        .take(4096)
        .collect::<String>()
        .to_lowercase()
        .replace('\u{2019}', "'");
    DEFAULT_REFUSAL_PHRASES
        .iter()
        .any(|p| head.contains(&p.to_lowercase()))
}

/// Quality state of one sequence (None when the server runs without a meter).
pub struct SeqMonitor {
    q: Option<RequestQuality>,
}

impl std::fmt::Debug for SeqMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeqMonitor")
            .field("on", &self.q.is_some())
            .finish()
    }
}

impl SeqMonitor {
    /// A monitor for one request.
    pub fn new(monitor: Option<&QualityMonitor>) -> Self {
        Self {
            q: monitor.map(QualityMonitor::request),
        }
    }

    /// NaN/+Inf/-Inf scan of one step's logits row, added to the request's counts.
    pub fn scan_logits(&mut self, guard: &mut RequestGuard, logits: &[f32]) {
        guard.logits(logits);
    }

    /// The sampled token's log-probability; the entropy comes from the step's logits.
    pub fn on_sample(&mut self, logprob: f32, logits: &[f32]) {
        if let Some(q) = self.q.as_mut() {
            q.logprob_logits(logprob, logits);
        }
    }

    /// One output token and its raw bytes (refusal phrases match across token boundaries).
    pub fn on_token(&mut self, id: u32, bytes: &[u8]) {
        if let Some(q) = self.q.as_mut() {
            q.piece(id, bytes);
        }
    }

    /// Records the request's quality metrics and span fields; call before `guard.finish`.
    pub fn finish(&mut self, guard: &RequestGuard) {
        if let Some(q) = self.q.as_mut() {
            q.finish(guard);
        }
    }
}
