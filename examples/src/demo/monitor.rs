//! Per-sequence quality monitoring: the one place where the demo calls tokenmeter's quality
//! features (`tokenmeter::quality`): the NaN/Inf scan of each step's logits
//! ([`LogitsExt::logits`]), log-probability statistics and the streaming refusal / repetition
//! monitors of [`RequestQuality`], recorded when the request ends, and the drift of the live
//! traffic ([`TrafficDrift`]).

use std::sync::Arc;

use tokenmeter::quality::text::DEFAULT_REFUSAL_PHRASES;
use tokenmeter::quality::{
    LogitsExt, QualityConfig, QualityMonitor, QualityReport, RequestQuality,
};
use tokenmeter_core::{Meter, RequestGuard, RequestSummary};

use super::drift::TrafficDrift;

/// Called once per request when it ended: its variant, its summary (which says how it ended)
/// and quality report (the A/B readout's input).
pub type EndSink = Arc<dyn Fn(&str, &RequestSummary, Option<&QualityReport>) + Send + Sync>;

/// The server's quality monitoring: tokenmeter's quality monitor (default refusal phrases,
/// seq-rep-4) feeding the drift monitor, the drift of the live traffic, and where ended
/// requests go. Shared by the engines (cloning copies `Arc`s).
#[derive(Clone)]
pub struct ServerQuality {
    monitor: QualityMonitor,
    /// The live traffic's drift.
    pub drift: Arc<TrafficDrift>,
    /// Where each ended request goes (the A/B readout).
    pub on_end: Option<EndSink>,
}

impl std::fmt::Debug for ServerQuality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerQuality")
            .field("drift", &self.drift)
            .field("on_end", &self.on_end.is_some())
            .finish_non_exhaustive()
    }
}

impl ServerQuality {
    /// Builds the quality monitor, feeding `drift`.
    ///
    /// # Errors
    /// When the monitor's configuration cannot be compiled.
    pub fn new(meter: &Meter, drift: Arc<TrafficDrift>) -> Result<Self, super::model::BoxError> {
        let monitor = QualityMonitor::new(meter, QualityConfig::default().drift(drift.monitor()))?;
        Ok(ServerQuality {
            monitor,
            drift,
            on_end: None,
        })
    }
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
    q: Option<(RequestQuality, ServerQuality)>,
    variant: &'static str,
}

impl std::fmt::Debug for SeqMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeqMonitor")
            .field("on", &self.q.is_some())
            .finish()
    }
}

impl SeqMonitor {
    /// A monitor for one request of `variant`.
    pub fn new(quality: Option<&ServerQuality>, variant: &'static str) -> Self {
        Self {
            q: quality.map(|s| (s.monitor.request(), s.clone())),
            variant,
        }
    }

    /// NaN/+Inf/-Inf scan of one step's logits row, added to the request's counts.
    pub fn scan_logits(&mut self, guard: &mut RequestGuard, logits: &[f32]) {
        guard.logits(logits);
    }

    /// The sampled token's log-probability; the entropy comes from the step's logits.
    pub fn on_sample(&mut self, logprob: f32, logits: &[f32]) {
        if let Some((q, _)) = self.q.as_mut() {
            q.logprob_logits(logprob, logits);
        }
    }

    /// One output token and its raw bytes (refusal phrases match across token boundaries).
    pub fn on_token(&mut self, id: u32, bytes: &[u8]) {
        if let Some((q, _)) = self.q.as_mut() {
            q.piece(id, bytes);
        }
    }

    /// Records the request's quality metrics and span fields and its traffic features (drift);
    /// call before `guard.finish`. Returns the request's quality report (None without a meter).
    pub fn finish(&mut self, guard: &RequestGuard, prompt: &[u32]) -> Option<QualityReport> {
        let (q, s) = self.q.as_mut()?;
        let report = q.finish(guard);
        s.drift.record(prompt, &report);
        Some(report)
    }

    /// The variant this request is served by.
    pub fn variant(&self) -> &'static str {
        self.variant
    }

    /// Hands the ended request to the server's [`EndSink`], if any.
    pub fn ended(&self, summary: &RequestSummary, report: Option<&QualityReport>) {
        if let Some(sink) = self.q.as_ref().and_then(|(_, s)| s.on_end.as_ref()) {
            sink(self.variant, summary, report);
        }
    }
}
