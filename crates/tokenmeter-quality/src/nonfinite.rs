//! Exact NaN / +Inf / -Inf counting over logits rows, at memory-read speed.
//!
//! Every supported type is IEEE-754 style: a value is non-finite exactly when its exponent field
//! is all ones; then a zero mantissa is an infinity (its sign bit tells which) and any other
//! mantissa is a NaN (quiet or signaling, either sign, any payload). The scan works on the raw
//! bits only, so it is exact for every bit pattern and never traps or canonicalizes NaNs.
//!
//! The scan runs in two levels. A fast pass over fixed 4 KiB chunks keeps the running unsigned
//! maximum of `bits & !SIGN` (two vector instructions per vector of lanes, which LLVM
//! autovectorizes); only a chunk whose maximum reaches the exponent mask holds a non-finite
//! value, and only such a chunk is counted exactly (branch-free, also vectorized). On x86-64 the
//! kernels are compiled a second time with AVX2 enabled and chosen at run time with
//! `is_x86_feature_detected!`, so the default target (SSE2) gets the wide path on any machine
//! that has it; other targets use the portable kernels (NEON is baseline on aarch64).
//!
//! ```
//! use tokenmeter_quality::count_non_finite;
//! let row = [1.0f32, f32::NAN, f32::INFINITY, -f32::INFINITY, f32::MAX, -0.0];
//! let c = count_non_finite(&row);
//! assert_eq!((c.nan, c.pos_inf, c.neg_inf), (1, 1, 1));
//! ```

use half::{bf16, f16};
use tokenmeter_core::NonFinite;

/// Bytes per first-level chunk: small enough that the exact re-count of a flagged chunk hits L1.
const CHUNK_BYTES: usize = 4096;

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for f64 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// A floating-point element type whose non-finite values can be counted: `f32`, `f64`,
/// [`half::f16`] and [`half::bf16`]. Sealed.
pub trait Logit: Copy + sealed::Sealed {
    /// Counts NaN, +Inf and -Inf in `row` (use [`count_non_finite`]).
    fn count(row: &[Self]) -> NonFinite;
}

/// Counts NaN, +Inf and -Inf in `row`, exactly, for every bit pattern. An empty row gives zeros.
///
/// ```
/// use half::f16;
/// use tokenmeter_quality::count_non_finite;
/// let row = [f16::NAN, f16::MAX, f16::NEG_INFINITY, f16::from_bits(0xFE01)];
/// let c = count_non_finite(&row);
/// assert_eq!((c.nan, c.pos_inf, c.neg_inf), (2, 0, 1));
/// ```
#[inline]
pub fn count_non_finite<T: Logit>(row: &[T]) -> NonFinite {
    T::count(row)
}

/// The obvious reference: classify each value with the standard library's predicates. Slow
/// (about half the read bandwidth); exported for tests and benches.
pub fn count_non_finite_naive<T: Logit + NaiveClassify>(row: &[T]) -> NonFinite {
    let mut c = NonFinite::default();
    for &x in row {
        match x.classify_naive() {
            Some(Class::Nan) => c.nan += 1,
            Some(Class::PosInf) => c.pos_inf += 1,
            Some(Class::NegInf) => c.neg_inf += 1,
            None => {}
        }
    }
    c
}

/// A non-finite class, as the naive reference sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// Not a number (any sign, any payload).
    Nan,
    /// Positive infinity.
    PosInf,
    /// Negative infinity.
    NegInf,
}

/// Classification through the types' own `is_nan` / `is_infinite` / `is_sign_negative`.
pub trait NaiveClassify: Copy {
    /// `None` for finite values.
    fn classify_naive(self) -> Option<Class>;
}

macro_rules! naive {
    ($($t:ty),*) => {$(
        impl NaiveClassify for $t {
            #[inline]
            fn classify_naive(self) -> Option<Class> {
                if self.is_nan() {
                    Some(Class::Nan)
                } else if self.is_infinite() {
                    Some(if self.is_sign_negative() { Class::NegInf } else { Class::PosInf })
                } else {
                    None
                }
            }
        }
    )*};
}
naive!(f32, f64, f16, bf16);

/// Generates, for one element type: the exact chunked counter (`#[inline(always)]`, written so
/// that LLVM vectorizes both of its loops), a whole-row "any non-finite?" test, and the `Logit`
/// impl that dispatches between the portable build and an AVX2 build on x86-64.
macro_rules! scanner {
    ($t:ty, $u:ty, $abs:expr, $inf:expr, $sign:expr,
     $exact:ident, $any_int:ident, $portable:ident, $avx2:ident, $avx2_any:expr) => {
        /// Level 0: the largest magnitude pattern in the row reaches the exponent mask exactly
        /// when the row holds a non-finite value (`and` + unsigned `max` per vector, into four
        /// vectors of independent accumulators).
        #[inline(always)]
        fn $any_int(row: &[$t]) -> bool {
            const ABS: $u = $abs;
            const INF: $u = $inf;
            // Four vectors of independent accumulators (integer max has a 1-cycle latency).
            const L: usize = 128 / core::mem::size_of::<$t>();
            let mut acc = [0 as $u; L];
            let mut lanes = row.chunks_exact(L);
            for c in &mut lanes {
                for j in 0..L {
                    acc[j] = acc[j].max(c[j].to_bits() & ABS);
                }
            }
            let mut max = acc.iter().fold(0 as $u, |m, &a| m.max(a));
            for &x in lanes.remainder() {
                max = max.max(x.to_bits() & ABS);
            }
            max >= INF
        }

        /// Levels 1 and 2: per 4 KiB chunk, the same max test; only a flagged chunk is
        /// counted exactly, branch-free.
        #[inline(always)]
        fn $exact(row: &[$t]) -> NonFinite {
            const ABS: $u = $abs;
            const INF: $u = $inf;
            const NEG_INF: $u = $inf | $sign;
            const N: usize = CHUNK_BYTES / core::mem::size_of::<$t>();

            #[inline(always)]
            fn max_abs(chunk: &[$t]) -> $u {
                let mut max: $u = 0;
                for &x in chunk {
                    max = max.max(x.to_bits() & ABS);
                }
                max
            }
            // Exact counts for one chunk (its length is below 2^32).
            #[inline(always)]
            fn exact(chunk: &[$t], out: &mut NonFinite) {
                let (mut nan, mut pos, mut neg) = (0u32, 0u32, 0u32);
                for &x in chunk {
                    let b = x.to_bits();
                    nan += ((b & ABS) > INF) as u32;
                    pos += (b == INF) as u32;
                    neg += (b == NEG_INF) as u32;
                }
                out.nan += u64::from(nan);
                out.pos_inf += u64::from(pos);
                out.neg_inf += u64::from(neg);
            }

            let mut out = NonFinite::default();
            let mut chunks = row.chunks_exact(N);
            for chunk in &mut chunks {
                // A fixed-size view gives LLVM a constant trip count: no prologue or epilogue.
                let Ok(fixed) = <&[$t; N]>::try_from(chunk) else {
                    continue;
                };
                if max_abs(fixed) >= INF {
                    exact(fixed, &mut out);
                }
            }
            let rest = chunks.remainder();
            if max_abs(rest) >= INF {
                exact(rest, &mut out);
            }
            out
        }

        #[inline(always)]
        fn $portable(row: &[$t]) -> NonFinite {
            if $any_int(row) {
                $exact(row)
            } else {
                NonFinite::default()
            }
        }

        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn $avx2(row: &[$t]) -> NonFinite {
            let any: fn(&[$t]) -> bool = $avx2_any;
            if any(row) {
                $exact(row)
            } else {
                NonFinite::default()
            }
        }

        impl Logit for $t {
            #[inline]
            fn count(row: &[Self]) -> NonFinite {
                #[cfg(target_arch = "x86_64")]
                {
                    if std::arch::is_x86_feature_detected!("avx2")
                        && std::arch::is_x86_feature_detected!("fma")
                    {
                        // SAFETY: the CPU supports AVX2 and FMA, checked just above; the
                        // function has no other safety requirement.
                        return unsafe { $avx2(row) };
                    }
                }
                $portable(row)
            }
        }
    };
}

/// Level 0 for f32 and f64 with FMA: `acc = x * 0 + acc` stays zero for finite `x` and turns
/// NaN for any NaN or infinity (IEEE 754: `inf * 0` and anything with a NaN operand are NaN),
/// one fused instruction per vector. 64 independent lanes hide the FMA latency. No false
/// negatives; the exact pass decides the counts.
macro_rules! fma_any {
    ($name:ident, $t:ty) => {
        // Only the x86-64 AVX2+FMA build uses it (without hardware FMA, mul_add is a libm call).
        #[cfg(target_arch = "x86_64")]
        #[inline(always)]
        fn $name(row: &[$t]) -> bool {
            const L: usize = 64;
            let mut acc = [0.0 as $t; L];
            let mut lanes = row.chunks_exact(L);
            for c in &mut lanes {
                for j in 0..L {
                    acc[j] = c[j].mul_add(0.0, acc[j]);
                }
            }
            let mut nan = acc.iter().fold(false, |n, a| n | a.is_nan());
            for x in lanes.remainder() {
                nan |= !x.is_finite();
            }
            nan
        }
    };
}
fma_any!(fma_any_f32, f32);
fma_any!(fma_any_f64, f64);

scanner!(
    f32,
    u32,
    0x7FFF_FFFF,
    0x7F80_0000,
    0x8000_0000,
    exact_f32,
    any_f32,
    kernel_f32,
    avx2_f32,
    fma_any_f32
);
scanner!(
    f64,
    u64,
    0x7FFF_FFFF_FFFF_FFFF,
    0x7FF0_0000_0000_0000,
    0x8000_0000_0000_0000,
    exact_f64,
    any_f64,
    kernel_f64,
    avx2_f64,
    fma_any_f64
);
scanner!(
    f16, u16, 0x7FFF, 0x7C00, 0x8000, exact_f16, any_f16, kernel_f16, avx2_f16, any_f16
);
scanner!(
    bf16,
    u16,
    0x7FFF,
    0x7F80,
    0x8000,
    exact_bf16,
    any_bf16,
    kernel_bf16,
    avx2_bf16,
    any_bf16
);

/// The portable (non-AVX2) kernels, for tests that check both paths agree.
#[doc(hidden)]
pub mod portable {
    use super::*;
    /// Portable f32 kernel.
    pub fn f32(row: &[f32]) -> NonFinite {
        kernel_f32(row)
    }
    /// Portable f64 kernel.
    pub fn f64(row: &[f64]) -> NonFinite {
        kernel_f64(row)
    }
    /// Portable f16 kernel.
    pub fn f16(row: &[f16]) -> NonFinite {
        kernel_f16(row)
    }
    /// Portable bf16 kernel.
    pub fn bf16(row: &[bf16]) -> NonFinite {
        kernel_bf16(row)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nf(nan: u64, pos_inf: u64, neg_inf: u64) -> NonFinite {
        NonFinite {
            nan,
            pos_inf,
            neg_inf,
        }
    }

    #[test]
    fn empty_rows_count_nothing() {
        assert_eq!(count_non_finite::<f32>(&[]), NonFinite::default());
        assert_eq!(count_non_finite::<f64>(&[]), NonFinite::default());
        assert_eq!(count_non_finite::<f16>(&[]), NonFinite::default());
        assert_eq!(count_non_finite::<bf16>(&[]), NonFinite::default());
    }

    #[test]
    fn f32_special_patterns() {
        let row = [
            f32::NAN,
            -f32::NAN,
            f32::from_bits(0x7F80_0001), // signaling NaN, smallest payload
            f32::from_bits(0xFFBF_FFFF), // negative signaling NaN, largest payload
            f32::from_bits(0x7FFF_FFFF),
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::MAX,
            f32::MIN,
            f32::MIN_POSITIVE,
            f32::from_bits(1), // smallest subnormal
            f32::from_bits(0x807F_FFFF),
            0.0,
            -0.0,
        ];
        assert_eq!(count_non_finite(&row), nf(5, 1, 1));
        assert_eq!(portable::f32(&row), nf(5, 1, 1));
    }

    #[test]
    fn f64_special_patterns() {
        let row = [
            f64::NAN,
            f64::from_bits(0xFFF0_0000_0000_0001),
            f64::from_bits(0x7FF7_FFFF_FFFF_FFFF),
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            f64::MIN,
            f64::from_bits(1),
            f64::from_bits(0x800F_FFFF_FFFF_FFFF),
        ];
        assert_eq!(count_non_finite(&row), nf(3, 1, 2));
        assert_eq!(portable::f64(&row), nf(3, 1, 2));
    }

    #[test]
    fn f16_and_bf16_every_bit_pattern() {
        // All 65536 patterns, each once: 2 infinities and 2 * (2^m - 1) NaNs.
        let f16s: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        assert_eq!(count_non_finite(&f16s), nf(2 * 1023, 1, 1));
        assert_eq!(portable::f16(&f16s), nf(2 * 1023, 1, 1));
        assert_eq!(count_non_finite_naive(&f16s), nf(2 * 1023, 1, 1));
        let bf16s: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
        assert_eq!(count_non_finite(&bf16s), nf(2 * 127, 1, 1));
        assert_eq!(portable::bf16(&bf16s), nf(2 * 127, 1, 1));
        assert_eq!(count_non_finite_naive(&bf16s), nf(2 * 127, 1, 1));
    }

    #[test]
    fn non_finite_in_every_position_of_a_chunk_boundary() {
        // Rows of odd length straddling chunk boundaries, with one value at each position.
        let n = 2 * (CHUNK_BYTES / 4) + 37;
        for pos in [0, 1, 1023, 1024, 1025, 2047, 2048, n - 1] {
            let mut row = vec![f32::MAX; n];
            row[pos] = f32::NEG_INFINITY;
            assert_eq!(count_non_finite(&row), nf(0, 0, 1), "pos {pos}");
            row[pos] = f32::from_bits(0xFF80_0001);
            assert_eq!(count_non_finite(&row), nf(1, 0, 0), "pos {pos}");
        }
    }

    #[test]
    fn all_non_finite_row() {
        let mut row = vec![f32::NAN; 100_000];
        row[3] = f32::INFINITY;
        assert_eq!(count_non_finite(&row), nf(99_999, 1, 0));
        let row = vec![bf16::NEG_INFINITY; 70_001];
        assert_eq!(count_non_finite(&row), nf(0, 0, 70_001));
    }
}
