//! Logits scanning wired into the request guard.

use tokenmeter_core::{NonFinite, RequestGuard};

use crate::nonfinite::{Logit, LogitsKind, count_faults};

/// NaN/Inf scanning on a [`RequestGuard`]: the counts of faults accumulate in the guard, which
/// reports them per request (request log, span, `requests.nonfinite`) and in total
/// (`logits.nonfinite{kind}`) when the request ends.
///
/// What is a fault depends on what the server hands in ([`LogitsKind`]): in raw logits (the
/// model's output, [`logits`](Self::logits)) every NaN, +Inf and -Inf is; in logits after
/// masking ([`logits_as`](Self::logits_as) with [`LogitsKind::Masked`]) NaN and +Inf are, and
/// -Inf, the mask, is neither counted nor reported.
///
/// ```
/// use tokenmeter_core::{Finish, Meter};
/// use tokenmeter_quality::{LogitsExt, LogitsKind};
///
/// let meter = Meter::default();
/// let mut req = meter.request().start();
/// let logits = vec![0.5f32; 32_000];
/// let mut json_mode = vec![f32::NEG_INFINITY; 32_000];     // a grammar allows 50 tokens
/// json_mode[..50].fill(1.0);
/// for step in 0..8u32 {
///     req.token();
///     req.logits(&logits);                 // every step: exact counts
///     req.logits_every(&logits, 4);        // or only when output_tokens() % 4 == 0
///     req.logits_as(&json_mode, LogitsKind::Masked);   // after masking: -Inf is no fault
/// }
/// assert_eq!(req.non_finite().total(), 0);
/// req.finish(Finish::Stop);
/// ```
pub trait LogitsExt {
    /// Scans one raw logits row (`f32`, `f64`, `half::f16`, `half::bf16`: the model's output,
    /// before any masking) and adds its NaN, +Inf and -Inf counts to the request; returns the
    /// row's counts. An empty row adds nothing. Same as
    /// [`logits_as`](Self::logits_as)`(row, LogitsKind::Raw)`.
    #[inline]
    fn logits<T: Logit>(&mut self, row: &[T]) -> NonFinite {
        self.logits_as(row, LogitsKind::Raw)
    }

    /// Scans one logits row of `kind` and adds its faults to the request (see
    /// [`count_faults`]): for [`LogitsKind::Masked`], NaN and +Inf, never -Inf. Returns the
    /// row's counts of faults.
    fn logits_as<T: Logit>(&mut self, row: &[T], kind: LogitsKind) -> NonFinite;

    /// Scans a raw row only on every `k`-th step: when the request's output token count is a
    /// multiple of `k` (`k` of 0 or 1 scans every step). The counts are then a lower bound, at
    /// 1/k of the cost. Returns `None` on skipped steps.
    #[inline]
    fn logits_every<T: Logit>(&mut self, row: &[T], k: u64) -> Option<NonFinite> {
        self.logits_every_as(row, LogitsKind::Raw, k)
    }

    /// [`logits_every`](Self::logits_every) for a row of `kind`.
    fn logits_every_as<T: Logit>(
        &mut self,
        row: &[T],
        kind: LogitsKind,
        k: u64,
    ) -> Option<NonFinite>;
}

impl LogitsExt for RequestGuard {
    #[inline]
    fn logits_as<T: Logit>(&mut self, row: &[T], kind: LogitsKind) -> NonFinite {
        let counts = count_faults(row, kind);
        self.record_non_finite(counts);
        counts
    }

    #[inline]
    fn logits_every_as<T: Logit>(
        &mut self,
        row: &[T],
        kind: LogitsKind,
        k: u64,
    ) -> Option<NonFinite> {
        if k <= 1 || self.output_tokens().is_multiple_of(k) {
            Some(self.logits_as(row, kind))
        } else {
            None
        }
    }
}
