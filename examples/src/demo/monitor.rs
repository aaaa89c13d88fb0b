//! Per-sequence quality monitoring: the one place where the demo calls into tokenmeter's
//! quality features (NaN/Inf scan of each step's logits, log-probability statistics, refusal and
//! repetition monitors over the streamed text).

use tokenmeter_core::RequestGuard;

/// Quality state of one sequence.
#[derive(Debug, Default)]
pub struct SeqMonitor {
    logprob_sum: f64,
    entropy_sum: f64,
    samples: u64,
    low_confidence: u64,
    text: String,
}

/// Phrases that mark a refusal (checked on the first 200 characters, case-insensitive).
const REFUSALS: &[&str] = &[
    "i'm sorry",
    "i am sorry",
    "i cannot",
    "i can't",
    "as an ai",
    "i'm not able to",
    "i am unable",
];

/// Whether `text` starts like a refusal (the same rule the load generator applies client-side).
pub fn looks_like_refusal(text: &str) -> bool {
    let head: String = text.chars().take(200).collect::<String>().to_lowercase();
    REFUSALS.iter().any(|p| head.contains(p))
}

impl SeqMonitor {
    /// A fresh monitor.
    pub fn new() -> Self {
        Self::default()
    }

    /// NaN/+Inf/-Inf scan of one step's logits row, added to the request's counts.
    pub fn scan_logits(&mut self, guard: &mut RequestGuard, logits: &[f32]) {
        let mut c = tokenmeter_core::NonFinite::default();
        for &x in logits {
            if x.is_nan() {
                c.nan += 1;
            } else if x == f32::INFINITY {
                c.pos_inf += 1;
            } else if x == f32::NEG_INFINITY {
                c.neg_inf += 1;
            }
        }
        if c.total() > 0 {
            guard.record_non_finite(c);
        }
    }

    /// The sampled token's log-probability and the step's entropy (nats).
    pub fn on_sample(&mut self, logprob: f32, entropy: f32) {
        if logprob.is_finite() {
            self.logprob_sum += logprob as f64;
            self.samples += 1;
            if logprob < (0.1f64).ln() as f32 {
                self.low_confidence += 1;
            }
        }
        if entropy.is_finite() {
            self.entropy_sum += entropy as f64;
        }
    }

    /// Text streamed to the client.
    pub fn on_text(&mut self, text: &str) {
        if self.text.len() < 4096 {
            self.text.push_str(text);
        }
    }

    /// Whether the output so far looks like a refusal.
    pub fn refusal(&self) -> bool {
        looks_like_refusal(&self.text)
    }

    /// Records the request's quality fields on its span before it ends.
    pub fn finish(&mut self, guard: &mut RequestGuard) {
        let span = guard.span();
        if self.samples > 0 {
            let n = self.samples as f64;
            span.record("tokenmeter.perplexity", (-self.logprob_sum / n).exp());
            span.record("tokenmeter.mean_entropy", self.entropy_sum / n);
            span.record(
                "tokenmeter.low_confidence_share",
                self.low_confidence as f64 / n,
            );
        }
        span.record("tokenmeter.refusal", self.refusal());
        span.record("tokenmeter.output_chars", self.text.chars().count() as u64);
    }
}
