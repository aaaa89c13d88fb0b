//! Logits scanning wired into the request guard.

use tokenmeter_core::{NonFinite, RequestGuard};

use crate::nonfinite::{Logit, count_non_finite};

/// NaN/Inf scanning on a [`RequestGuard`]: the counts accumulate in the guard, which reports
/// them per request (request log, span, `requests.nonfinite`) and in total
/// (`logits.nonfinite{kind}`) when the request ends.
///
/// ```
/// use tokenmeter_core::{Finish, Meter};
/// use tokenmeter_quality::LogitsExt;
///
/// let meter = Meter::default();
/// let mut req = meter.request().start();
/// let logits = vec![0.5f32; 32_000];
/// for step in 0..8u32 {
///     req.token();
///     req.logits(&logits);                 // every step: exact counts
///     req.logits_every(&logits, 4);        // or only when output_tokens() % 4 == 0
/// }
/// assert_eq!(req.non_finite().total(), 0);
/// req.finish(Finish::Stop);
/// ```
pub trait LogitsExt {
    /// Scans one logits row (`f32`, `f64`, `half::f16`, `half::bf16`) and adds its NaN, +Inf
    /// and -Inf counts to the request; returns the row's counts. An empty row adds nothing.
    fn logits<T: Logit>(&mut self, row: &[T]) -> NonFinite;

    /// Scans only on every `k`-th step: when the request's output token count is a multiple
    /// of `k` (`k` of 0 or 1 scans every step). The counts are then a lower bound, at 1/k of
    /// the cost. Returns `None` on skipped steps.
    fn logits_every<T: Logit>(&mut self, row: &[T], k: u64) -> Option<NonFinite>;
}

impl LogitsExt for RequestGuard {
    #[inline]
    fn logits<T: Logit>(&mut self, row: &[T]) -> NonFinite {
        let counts = count_non_finite(row);
        self.record_non_finite(counts);
        counts
    }

    #[inline]
    fn logits_every<T: Logit>(&mut self, row: &[T], k: u64) -> Option<NonFinite> {
        if k <= 1 || self.output_tokens().is_multiple_of(k) {
            Some(self.logits(row))
        } else {
            None
        }
    }
}
