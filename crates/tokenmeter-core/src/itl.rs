//! The inter-token latency bucket layout and the guard's per-token accumulator.
//!
//! The guard does not record each gap: it adds it to a per-bucket count and nanosecond sum
//! aligned with the exported ITL bounds. The mean of the values in a bucket lies inside that
//! bucket, so recording the mean `count` times at a flush keeps both the exported bucket counts
//! and the sum exact.

use std::time::Duration;

/// Most ITL bucket bounds the guard can accumulate (it keeps a fixed array, so a guard's size
/// does not depend on configuration).
pub const MAX_ITL_BOUNDS: usize = 24;
/// Buckets: the bounds plus `+Inf`.
const SLOTS: usize = MAX_ITL_BOUNDS + 1;
/// A bucket this full is flushed at once: exporters' `record_many` costs grow with the count,
/// and a bounded count keeps each flush short.
const FLUSH_AT_COUNT: u32 = 1 << 16;

/// Saturating nanoseconds of a duration.
pub(crate) fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// The ITL bounds in nanoseconds, in the shape the per-token search wants.
#[derive(Debug)]
pub(crate) struct ItlLayout {
    /// Bounds padded with `u64::MAX`, which no gap is below, so a search over the whole
    /// fixed-size array (which the compiler unrolls) lands where a search over the real bounds
    /// would.
    bounds_ns: [u64; MAX_ITL_BOUNDS],
    /// Per bucket, the inclusive nanosecond range it holds (for the "same bucket as last
    /// time" check).
    ranges: [(u64, u64); SLOTS],
}

impl ItlLayout {
    /// The layout of `bounds` (seconds, strictly increasing, at most [`MAX_ITL_BOUNDS`]; the
    /// builder validated them, and extra bounds are ignored).
    pub(crate) fn new(bounds: &[f64]) -> Self {
        let mut bounds_ns = [u64::MAX; MAX_ITL_BOUNDS];
        for (slot, bound) in bounds_ns.iter_mut().zip(bounds) {
            *slot = (bound * 1e9).round() as u64;
        }
        let mut ranges = [(0, u64::MAX); SLOTS];
        for (i, range) in ranges.iter_mut().enumerate() {
            let lo = match i.checked_sub(1) {
                Some(p) => bounds_ns[p].saturating_add(1),
                None => 0,
            };
            *range = (lo, bounds_ns.get(i).copied().unwrap_or(u64::MAX));
        }
        ItlLayout { bounds_ns, ranges }
    }

    /// The bucket of a gap, trying `hint` (the previous token's bucket) first: decode gaps are
    /// steady, so it usually fits again.
    #[inline]
    fn bucket(&self, gap_ns: u64, hint: usize) -> usize {
        let fits = self
            .ranges
            .get(hint)
            .is_some_and(|&(lo, hi)| lo <= gap_ns && gap_ns <= hi);
        if fits {
            hint
        } else {
            self.bounds_ns.partition_point(|&bound| bound < gap_ns)
        }
    }
}

/// One request's ITL observations since the last flush, per bucket.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct ItlAccumulator {
    /// The bucket of the previous token, tried first.
    last_bucket: u8,
    /// Per bucket (the last is +Inf): observations, and their sum in nanoseconds.
    counts: [u32; SLOTS],
    sums: [u64; SLOTS],
}

impl ItlAccumulator {
    pub(crate) const fn new() -> Self {
        ItlAccumulator {
            last_bucket: 0,
            counts: [0; SLOTS],
            sums: [0; SLOTS],
        }
    }

    /// Adds `k` observations of `gap_ns / k` (one step that delivered `k` tokens after a gap).
    /// Returns whether a bucket is full enough to flush now.
    #[inline]
    pub(crate) fn add(&mut self, layout: &ItlLayout, k: u32, gap_ns: u64) -> bool {
        let per_token = if k == 1 {
            gap_ns
        } else {
            gap_ns / u64::from(k)
        };
        let hint = usize::from(self.last_bucket);
        let b = layout.bucket(per_token, hint);
        if b != hint {
            self.last_bucket = b as u8; // b <= MAX_ITL_BOUNDS < 256
        }
        // `b <= MAX_ITL_BOUNDS`, so it is in range; `get_mut` keeps that promise checked
        // without a panic path.
        match (self.counts.get_mut(b), self.sums.get_mut(b)) {
            (Some(c), Some(s)) => {
                *c += k; // at most FLUSH_AT_COUNT + MAX_TOKENS_PER_STEP: no overflow
                // A bucket's sum never exceeds the time since the request's first token.
                *s = s.wrapping_add(gap_ns);
                *c >= FLUSH_AT_COUNT
            }
            _ => false,
        }
    }

    /// Adds `k` gaps of zero: tokens that arrived together with the first one.
    pub(crate) fn add_zero_gaps(&mut self, k: u32) {
        self.counts[0] += k;
    }

    /// Hands each non-empty bucket to `out` as (mean gap in ns, count) and empties it.
    pub(crate) fn drain(&mut self, mut out: impl FnMut(u64, u32)) {
        for (c, s) in self.counts.iter_mut().zip(self.sums.iter_mut()) {
            if *c > 0 {
                out(*s / u64::from(*c), *c);
                *c = 0;
                *s = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_bounds_are_inclusive_and_k_token_steps_split_the_gap() {
        let layout = ItlLayout::new(&[0.001, 0.01]);
        let mut acc = ItlAccumulator::new();
        acc.add(&layout, 1, 1_000_000); // exactly 1 ms: the first bucket
        acc.add(&layout, 4, 4_000_004); // 4 tokens after 4 ms: 4 × ~1 ms, second bucket
        acc.add(&layout, 1, 20_000_000); // +Inf
        acc.add_zero_gaps(2);
        let mut seen = Vec::new();
        acc.drain(|mean, count| seen.push((mean, count)));
        assert_eq!(seen, [(1_000_000 / 3, 3), (1_000_001, 4), (20_000_000, 1)]);
        acc.drain(|_, _| panic!("drained buckets are empty"));
    }
}
