//! Native (sparse, exponential) histogram buckets, kept beside a series' classic buckets.
//!
//! At schema `s`, bucket `i` holds the observations in `(2^((i-1)/2^s), 2^(i/2^s)]`, so each
//! bucket is `2^(2^-s)` times wider than the one below: at the default schema 5, 32 buckets an
//! octave and a relative width of 2.2 %. Observations at or below the zero threshold (2^-64,
//! and any negative value: tokenmeter's histograms are durations and sizes) are counted in
//! the zero bucket; those above 2^64 in the highest bucket.
//!
//! Storage is lock-free: the index range of 128 octaves is cut into chunks of 64 atomic
//! counts, each allocated on first use, so a series costs a pointer per chunk until values
//! land, and recording is one index computation and one atomic add. A render reports the
//! populated buckets; when there are more than the configured maximum it merges neighbours
//! (lowering the schema one step at a time, which is exact: each bucket of schema `s - 1` is
//! two buckets of schema `s`).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Octaves covered on each side of 1: values in `(2^-64, 2^64]` get their own buckets.
const OCTAVES: i32 = 64;
/// Counts per lazily allocated chunk.
const CHUNK: usize = 64;
/// The zero bucket's upper bound.
pub(crate) const ZERO_THRESHOLD: f64 = 5.421_010_862_427_522e-20; // 2^-64
/// The lowest schema a render merges down to (Prometheus's lowest).
const MIN_SCHEMA: i8 = -4;
/// The highest schema Prometheus accepts.
pub(crate) const MAX_SCHEMA: i8 = 8;

/// The native-histogram settings of the exporter (see `Prometheus::native_histograms`).
#[derive(Clone, Debug)]
pub(crate) struct Layout {
    /// Schema of the stored buckets, 0..=8.
    pub(crate) schema: i8,
    /// Most buckets a render reports per series before merging neighbours.
    pub(crate) max_buckets: usize,
    /// For schema `s > 0`: the `2^s` fractions `2^(j/2^s) / 2` that split an octave
    /// (mantissas in `[0.5, 1)`), as the official client libraries compute the index.
    bounds: Box<[f64]>,
}

impl Layout {
    /// `schema` must be in 0..=8 and `max_buckets` at least 1 (the builder checks).
    pub(crate) fn new(schema: i8, max_buckets: usize) -> Self {
        let n = if schema > 0 { 1usize << schema } else { 0 };
        let bounds = (0..n).map(|j| (j as f64 / n as f64).exp2() / 2.0).collect();
        Layout {
            schema,
            max_buckets,
            bounds,
        }
    }

    /// Buckets per octave at the stored schema.
    fn per_octave(&self) -> i32 {
        1 << self.schema
    }

    /// The bucket index of `v` (`ZERO_THRESHOLD < v`, finite) at the stored schema.
    fn index(&self, v: f64) -> i32 {
        // v = frac * 2^exp with frac in [0.5, 1); v is normal (it is above 2^-64).
        let bits = v.to_bits();
        let exp = ((bits >> 52) & 0x7ff) as i32 - 1022;
        let frac = f64::from_bits((bits & !(0x7ff << 52)) | (1022 << 52));
        if self.schema == 0 {
            return if frac == 0.5 { exp - 1 } else { exp };
        }
        let j = self.bounds.partition_point(|b| *b < frac) as i32; // <= 2^schema
        j + (exp - 1) * self.per_octave()
    }

    /// The bucket index of `v` at the stored schema, as a render reports it (tests).
    #[cfg(test)]
    pub(crate) fn index_of(&self, v: f64) -> i32 {
        self.index(v)
    }

    /// The lowest index stored (that of values just above 2^-64).
    fn first_index(&self) -> i32 {
        -OCTAVES * self.per_octave() + 1
    }

    fn slots(&self) -> usize {
        (2 * OCTAVES * self.per_octave()) as usize
    }
}

/// One series' native buckets.
#[derive(Debug)]
pub(crate) struct NativeBuckets {
    zero: AtomicU64,
    chunks: Box<[OnceLock<Box<[AtomicU64; CHUNK]>>]>,
}

/// The native buckets as a render reads them (tests).
#[cfg(test)]
#[derive(Debug, PartialEq)]
pub(crate) struct NativeView {
    pub(crate) schema: i8,
    pub(crate) zero_threshold: f64,
    pub(crate) zero_count: u64,
    /// Populated buckets in increasing index order: (index, count).
    pub(crate) buckets: Vec<(i32, u64)>,
}

impl NativeBuckets {
    pub(crate) fn new(layout: &Layout) -> Self {
        NativeBuckets {
            zero: AtomicU64::new(0),
            chunks: (0..layout.slots().div_ceil(CHUNK))
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// Counts `n` observations of `v` (not NaN).
    pub(crate) fn add(&self, layout: &Layout, v: f64, n: u64) {
        if v <= ZERO_THRESHOLD {
            self.zero.fetch_add(n, Relaxed);
            return;
        }
        let last = layout.first_index() + layout.slots() as i32 - 1;
        let index = if v.is_finite() {
            layout.index(v).min(last)
        } else {
            last
        };
        let slot = (index - layout.first_index()).max(0) as usize;
        let Some(chunk) = self.chunks.get(slot / CHUNK) else {
            return; // unreachable: the slot is in range
        };
        let chunk = chunk.get_or_init(|| Box::new(std::array::from_fn(|_| AtomicU64::new(0))));
        chunk[slot % CHUNK].fetch_add(n, Relaxed);
    }

    /// The buckets now, merged down until at most `layout.max_buckets` are populated.
    #[cfg(test)]
    pub(crate) fn read(&self, layout: &Layout) -> NativeView {
        let mut buckets = Vec::new();
        let (schema, zero_count) = self.read_into(layout, &mut buckets);
        NativeView {
            schema,
            zero_threshold: ZERO_THRESHOLD,
            zero_count,
            buckets,
        }
    }

    /// Fills `buckets` with the populated buckets now, in increasing index order as
    /// (index, count), merged down until at most `layout.max_buckets` remain; returns their
    /// schema and the zero bucket's count. `buckets` is reused from render to render.
    pub(crate) fn read_into(&self, layout: &Layout, buckets: &mut Vec<(i32, u64)>) -> (i8, u64) {
        buckets.clear();
        let first = layout.first_index();
        for (c, chunk) in self.chunks.iter().enumerate() {
            let Some(chunk) = chunk.get() else { continue };
            for (k, count) in chunk.iter().enumerate() {
                let count = count.load(Relaxed);
                if count > 0 {
                    buckets.push((first + (c * CHUNK + k) as i32, count));
                }
            }
        }
        let mut schema = layout.schema;
        while buckets.len() > layout.max_buckets && schema > MIN_SCHEMA {
            *buckets = downscale(buckets);
            schema -= 1;
        }
        (schema, self.zero.load(Relaxed))
    }
}

/// The same buckets one schema lower: bucket `i` goes to `ceil(i / 2)`.
fn downscale(buckets: &[(i32, u64)]) -> Vec<(i32, u64)> {
    let mut out: Vec<(i32, u64)> = Vec::with_capacity(buckets.len() / 2 + 1);
    for &(i, count) in buckets {
        let j = (i + 1).div_euclid(2);
        match out.last_mut() {
            Some((last, c)) if *last == j => *c += count,
            _ => out.push((j, count)),
        }
    }
    out
}

/// The upper bound of bucket `i` at `schema`: `2^(i / 2^schema)`.
#[cfg(test)]
pub(crate) fn upper_bound(schema: i8, i: i32) -> f64 {
    (f64::from(i) / f64::from(schema).exp2()).exp2()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upper(schema: i8, i: i32) -> f64 {
        upper_bound(schema, i)
    }

    #[test]
    fn every_value_lands_in_the_bucket_whose_bounds_hold_it() {
        for schema in 0..=MAX_SCHEMA {
            let layout = Layout::new(schema, 160);
            for v in [
                1e-9, 2.5e-4, 0.003, 0.3, 1.0, 1.5, 2.0, 3.0, 45.0, 600.0, 1e6, 1e18,
            ] {
                let i = layout.index(v);
                let (lo, hi) = (upper(schema, i - 1), upper(schema, i));
                assert!(
                    lo < v && v <= hi * (1.0 + 1e-15),
                    "schema {schema}: {v} in bucket {i} ({lo}, {hi}]"
                );
            }
        }
    }

    #[test]
    fn powers_of_two_are_upper_bounds_inclusive() {
        let layout = Layout::new(3, 160);
        assert_eq!(layout.index(1.0), 0);
        assert_eq!(layout.index(2.0), 8);
        assert_eq!(layout.index(0.5), -8);
        assert_eq!(layout.index(1.0 + 1e-12), 1);
        assert_eq!(Layout::new(0, 160).index(4.0), 2);
        assert_eq!(Layout::new(0, 160).index(4.1), 3);
    }

    #[test]
    fn zero_negative_huge_and_infinite_values_are_kept_at_the_edges() {
        let layout = Layout::new(2, 160);
        let b = NativeBuckets::new(&layout);
        b.add(&layout, 0.0, 2);
        b.add(&layout, -3.0, 1);
        b.add(&layout, 1e30, 1);
        b.add(&layout, f64::INFINITY, 1);
        let view = b.read(&layout);
        assert_eq!(view.zero_count, 3);
        assert_eq!(view.buckets, vec![(64 * 4, 2)]);
    }

    #[test]
    fn too_many_buckets_merge_exactly_into_a_lower_schema() {
        let layout = Layout::new(4, 8);
        let b = NativeBuckets::new(&layout);
        // 16 buckets at schema 4 across one octave (1, 2]: one observation each.
        for i in 1..=16 {
            b.add(&layout, upper(4, i), 1);
        }
        let view = b.read(&layout);
        assert_eq!(view.schema, 3);
        assert_eq!(view.buckets, (1..=8).map(|j| (j, 2)).collect::<Vec<_>>());
        assert_eq!(
            downscale(&[(-1, 1), (0, 2), (1, 3), (2, 4)]),
            vec![(0, 3), (1, 7)]
        );
    }
}
