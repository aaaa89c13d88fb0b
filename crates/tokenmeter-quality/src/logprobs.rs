//! Per-request logprob statistics: perplexity, mean entropy and the share of low-confidence
//! tokens.
//!
//! ```
//! use tokenmeter_quality::LogprobStats;
//! let mut s = LogprobStats::new(0.5);
//! s.observe(0.0);                 // certain
//! s.observe((0.25f32).ln());      // p = 0.25: low confidence
//! let r = s.summary();
//! assert_eq!(r.tokens, 2);
//! assert!((r.perplexity.unwrap() - 2.0).abs() < 1e-6); // exp(-(0 + ln 0.25) / 2) = 2
//! assert_eq!(r.low_confidence_share, Some(0.5));
//! ```

/// The floor applied to chosen-token logprobs (`e^-100`, far below any sampled token's).
pub const MIN_LOGPROB: f32 = -100.0;

/// Accumulates one request's logprob statistics; no allocation.
#[derive(Clone, Debug)]
pub struct LogprobStats {
    /// ln of the threshold, in f32 like the logprobs it is compared with.
    threshold_ln: f32,
    n: u64,
    sum_logprob: f64,
    low: u64,
    entropy_n: u64,
    entropy_sum: f64,
    invalid: u64,
}

/// What [`LogprobStats`] accumulated for one request.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct LogprobSummary {
    /// Finite chosen-token logprobs observed.
    pub tokens: u64,
    /// `exp(-mean logprob)`; `None` without any finite logprob.
    pub perplexity: Option<f64>,
    /// Mean entropy in nats over the steps that handed in a distribution.
    pub mean_entropy: Option<f64>,
    /// Share of chosen tokens with probability below the threshold.
    pub low_confidence_share: Option<f64>,
    /// Logprobs or distributions ignored because they were NaN, positive, or empty.
    pub invalid: u64,
}

impl LogprobStats {
    /// New, empty statistics; a chosen token whose probability is below `low_confidence`
    /// (e.g. 0.5) counts as low-confidence. Out-of-range thresholds are clamped to [0, 1].
    pub fn new(low_confidence: f64) -> Self {
        let p = if low_confidence.is_nan() {
            0.5
        } else {
            low_confidence.clamp(0.0, 1.0)
        };
        LogprobStats {
            threshold_ln: p.ln() as f32,
            n: 0,
            sum_logprob: 0.0,
            low: 0,
            entropy_n: 0,
            entropy_sum: 0.0,
            invalid: 0,
        }
    }

    /// Clears the statistics, keeping the threshold.
    pub fn reset(&mut self) {
        *self = LogprobStats {
            threshold_ln: self.threshold_ln,
            ..LogprobStats::new(0.5)
        };
    }

    /// Adds the chosen token's natural-log probability. NaN and positive values are ignored
    /// (counted as invalid); values below [`MIN_LOGPROB`] (including `-inf`, a token the model
    /// gave zero probability) are clamped to it, so that one such token does not make the
    /// perplexity infinite; they count as low-confidence.
    #[inline]
    pub fn observe(&mut self, logprob: f32) {
        // Tolerate rounding just above zero (p = 1 written as +1e-7).
        if logprob.is_nan() || logprob > 1e-4 {
            self.invalid += 1;
            return;
        }
        let lp = logprob.clamp(MIN_LOGPROB, 0.0);
        self.n += 1;
        self.sum_logprob += f64::from(lp);
        self.low += u64::from(lp < self.threshold_ln);
    }

    /// Adds the chosen token's logprob and the entropy of the step's top-k distribution, given
    /// as natural-log probabilities; see [`entropy_top_k`] for how the tail is treated.
    pub fn observe_top_k(&mut self, logprob: f32, top_k: &[f32]) {
        self.observe(logprob);
        self.observe_entropy(entropy_top_k(top_k));
    }

    /// Adds the chosen token's logprob and the entropy of the full distribution given as raw
    /// logits (softmax applied here, numerically stable).
    pub fn observe_logits(&mut self, logprob: f32, logits: &[f32]) {
        self.observe(logprob);
        self.observe_entropy(entropy_from_logits(logits));
    }

    /// Adds one step's entropy (nats) computed elsewhere; `None` or non-finite is invalid.
    #[inline]
    pub fn observe_entropy(&mut self, entropy: Option<f64>) {
        match entropy {
            Some(h) if h.is_finite() && h >= 0.0 => {
                self.entropy_n += 1;
                self.entropy_sum += h;
            }
            _ => self.invalid += 1,
        }
    }

    /// The statistics so far.
    pub fn summary(&self) -> LogprobSummary {
        let n = self.n as f64;
        LogprobSummary {
            tokens: self.n,
            perplexity: (self.n > 0).then(|| (-self.sum_logprob / n).exp()),
            mean_entropy: (self.entropy_n > 0).then(|| self.entropy_sum / self.entropy_n as f64),
            low_confidence_share: (self.n > 0).then(|| self.low as f64 / n),
            invalid: self.invalid,
        }
    }
}

/// Entropy (nats) of a distribution given by natural-log probabilities of its top k outcomes.
/// The probability mass the k values leave out (`1 - Σp`, if positive) is counted as one more
/// outcome, which makes the result a lower bound of the true entropy (exact when k is the whole
/// vocabulary). Non-finite entries (`-inf` is probability zero) contribute nothing; returns
/// `None` for an empty slice, a NaN entry, or entries summing to more than 1 + 1e-3.
pub fn entropy_top_k(logprobs: &[f32]) -> Option<f64> {
    if logprobs.is_empty() {
        return None;
    }
    let mut mass = 0.0f64;
    let mut h = 0.0f64;
    for &lp in logprobs {
        if lp.is_nan() {
            return None;
        }
        if lp == f32::NEG_INFINITY {
            continue;
        }
        let lp = f64::from(lp.min(0.0));
        let p = lp.exp();
        mass += p;
        h -= p * lp;
    }
    if mass > 1.0 + 1e-3 {
        return None;
    }
    let rest = 1.0 - mass;
    if rest > 1e-12 {
        h -= rest * rest.ln();
    }
    Some(h.max(0.0))
}

/// Entropy (nats) of `softmax(logits)`, computed stably as `ln Z - Σ p_i (x_i - max)`.
/// `-inf` logits are probability zero; returns `None` for an empty slice or one holding NaN or
/// `+inf`, or no finite logit.
pub fn entropy_from_logits(logits: &[f32]) -> Option<f64> {
    let mut max = f32::NEG_INFINITY;
    for &x in logits {
        if x.is_nan() || x == f32::INFINITY {
            return None;
        }
        max = max.max(x);
    }
    if max == f32::NEG_INFINITY {
        return None;
    }
    let max = f64::from(max);
    let (mut z, mut s) = (0.0f64, 0.0f64);
    for &x in logits {
        let d = f64::from(x) - max;
        let e = d.exp(); // exp(-inf) = 0
        if e > 0.0 {
            z += e;
            s += e * d;
        }
    }
    Some((z.ln() - s / z).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn perplexity_is_exp_of_minus_mean_logprob() {
        let mut s = LogprobStats::new(0.5);
        for lp in [(0.5f32).ln(), (0.25f32).ln(), (0.125f32).ln()] {
            s.observe(lp);
        }
        let r = s.summary();
        // mean = ln(1/64)/3 = -ln 4  =>  perplexity 4
        assert!(close(r.perplexity.unwrap_or(0.0), 4.0));
        // p = 0.5 is not below 0.5; 0.25 and 0.125 are.
        assert_eq!(r.low_confidence_share, Some(2.0 / 3.0));
        assert_eq!(r.tokens, 3);
        assert_eq!(r.mean_entropy, None);
    }

    #[test]
    fn empty_and_invalid_input() {
        let mut s = LogprobStats::new(0.5);
        assert_eq!(s.summary(), LogprobSummary::default());
        s.observe(f32::NAN);
        s.observe(0.7);
        s.observe_top_k(f32::NAN, &[]);
        let r = s.summary();
        assert_eq!(r.tokens, 0);
        assert_eq!(r.perplexity, None);
        assert_eq!(r.invalid, 4);
        s.observe(f32::NEG_INFINITY);
        let r = s.summary();
        assert_eq!(r.tokens, 1);
        assert!(close(r.perplexity.unwrap_or(0.0).ln(), 100.0));
        assert_eq!(r.low_confidence_share, Some(1.0));
        s.reset();
        assert_eq!(s.summary(), LogprobSummary::default());
    }

    #[test]
    fn entropy_of_known_distributions() {
        let half = (0.5f32).ln();
        assert!(close(
            entropy_top_k(&[half, half]).unwrap_or(-1.0),
            std::f64::consts::LN_2
        ));
        // Top-1 of a fair coin: the other half is the lumped tail, same result.
        assert!(close(
            entropy_top_k(&[half]).unwrap_or(-1.0),
            std::f64::consts::LN_2
        ));
        assert!(close(entropy_top_k(&[0.0]).unwrap_or(-1.0), 0.0));
        assert!(close(
            entropy_top_k(&[0.0, f32::NEG_INFINITY]).unwrap_or(-1.0),
            0.0
        ));
        assert_eq!(entropy_top_k(&[]), None);
        assert_eq!(entropy_top_k(&[f32::NAN]), None);
        assert_eq!(entropy_top_k(&[0.0, 0.0]), None); // sums to 2
        let uniform = vec![3.0f32; 1000];
        assert!(close(
            entropy_from_logits(&uniform).unwrap_or(-1.0),
            (1000f64).ln()
        ));
        assert!(close(
            entropy_from_logits(&[1e30, 0.0]).unwrap_or(-1.0),
            0.0
        ));
        assert!(close(
            entropy_from_logits(&[0.0, 0.0, f32::NEG_INFINITY]).unwrap_or(-1.0),
            std::f64::consts::LN_2
        ));
        assert_eq!(entropy_from_logits(&[]), None);
        assert_eq!(entropy_from_logits(&[f32::NEG_INFINITY]), None);
        assert_eq!(entropy_from_logits(&[0.0, f32::INFINITY]), None);
        let mut s = LogprobStats::new(0.5);
        s.observe_logits(half, &[0.0, 0.0]);
        s.observe_top_k(0.0, &[0.0]);
        assert!(close(
            s.summary().mean_entropy.unwrap_or(-1.0),
            std::f64::consts::LN_2 / 2.0
        ));
    }
}
