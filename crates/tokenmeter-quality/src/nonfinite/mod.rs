//! Exact NaN / +Inf / -Inf counting over logits rows, at memory-read speed.
//!
//! Every supported type is IEEE-754 style: a value is non-finite exactly when its exponent field
//! is all ones; then a zero mantissa is an infinity (its sign bit tells which) and any other
//! mantissa is a NaN (quiet or signaling, either sign, any payload). The scan works on the raw
//! bits only, so it is exact for every bit pattern and never traps or canonicalizes NaNs.
//!
//! The scan runs in two levels. Level 0 asks, over the whole row, "is any value possibly
//! non-finite?" with one or two vector instructions per vector and no branch; a clean row (the
//! common case) costs that one read. Only when it fires does the exact pass run: per 4 KiB
//! chunk, the running unsigned maximum of `bits & !SIGN` tells whether the chunk holds a
//! non-finite value, and only such a chunk is counted exactly (branch-free compares into
//! per-lane counters, vectorized). Level 0 may fire without cause (see below); the exact pass
//! then counts nothing, so the counts are exact either way.
//!
//! Level 0, by machine, chosen at run time so that the default target (SSE2) gets the wide
//! kernels on any machine that has them:
//!
//! - x86-64 with AVX-512F (f32, f64) or AVX512-FP16 (f16, bf16): one fused multiply-add per
//!   64-byte line, `acc = x * 0 + acc`, which stays zero for finite `x` and turns NaN for any
//!   NaN or infinity, as many instructions as a plain summing read needs (inline assembly; see
//!   the `x86::zmm` module for why bf16 can use the binary16 instruction, and when that fires
//!   without cause).
//! - x86-64 with AVX-512BW but not AVX512-FP16 (AMD Zen 4, Intel Skylake-SP to Ice Lake), f16
//!   and bf16: the unsigned maximum of `bits & !SIGN`, two integer instructions per 64-byte line
//!   (`vpandd`, `vpmaxuw`), exact on its own, with a software prefetch 2 KiB ahead.
//! - x86-64 with AVX2 + FMA: the same FMA test with 256-bit vectors for f32 and f64; for f16 and
//!   bf16, the maximum of `bits & !SIGN` with a software prefetch (two instructions per 32 bytes,
//!   which makes the AVX2 path slower than a plain read when the row sits in L2).
//! - Elsewhere: the maximum test, which LLVM autovectorizes (NEON is baseline on aarch64).
//!
//! The x86 kernels read the row's 64-byte-aligned middle as whole lines (a vector load never
//! straddles two cache lines) and test the unaligned ends with the portable code.
//!
//! The modules follow those seams: this one holds the API and the dispatch; `portable` the
//! level-0 test and the exact counter in plain Rust (the exact pass of every path); `x86` the
//! CPU detection and the AVX2 and AVX-512 paths with all of their `unsafe` code (the assembly
//! kernels in `x86::zmm`); `internals`, behind the cargo feature `bench-internals` (off by
//! default, not public API), the naive reference and each path by itself, for tests and benches.
//!
//! ```
//! use tokenmeter_quality::count_non_finite;
//! let row = [1.0f32, f32::NAN, f32::INFINITY, -f32::INFINITY, f32::MAX, -0.0];
//! let c = count_non_finite(&row);
//! assert_eq!((c.nan, c.pos_inf, c.neg_inf), (1, 1, 1));
//! ```

use half::{bf16, f16};
use tokenmeter_core::NonFinite;

#[cfg(any(test, feature = "bench-internals"))]
#[doc(hidden)]
pub mod internals;
mod portable;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

/// Bytes per first-level chunk: small enough that the exact re-count of a flagged chunk hits L1.
const CHUNK_BYTES: usize = 4096;

/// Bytes per cache line, the unit of the vector kernels.
const LINE_BYTES: usize = 64;

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
    /// Counts NaN and +Inf in `row`, not -Inf (use [`count_faults`] with
    /// [`LogitsKind::Masked`]).
    fn count_masked(row: &[Self]) -> NonFinite;
}

/// Whether a logits row may hold -Inf on purpose. Which one a server hands decides whether
/// -Inf is a fault ([`count_faults`], [`LogitsExt::logits_as`](crate::LogitsExt::logits_as)).
///
/// A model's forward pass produces no NaN and no infinity when it is healthy; samplers, grammar
/// (JSON-mode) constraints, logit bias, banned tokens and vocabulary padding then set the logits
/// of the tokens they exclude to -Inf, on purpose. NaN and +Inf are faults wherever they
/// appear (no masking step produces them), -Inf only in raw logits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum LogitsKind {
    /// The model's own output, before any masking: NaN, +Inf and -Inf are all faults, and all
    /// counted.
    #[default]
    Raw,
    /// Logits after masking (samplers, grammars, logit bias): -Inf is the mask and is not
    /// counted at all, so a constrained request whose rows are -Inf but for 50 allowed tokens
    /// reports nothing; NaN and +Inf are counted. The count of masked values is not kept: it
    /// would cost an exact pass over every masked row (a sixth of the read speed) for a number
    /// the server already knows (the size of its mask).
    Masked,
}

/// The fault counts of a masked row, from its exact counts: -Inf dropped.
#[inline]
fn faults_of_masked(counts: NonFinite) -> NonFinite {
    NonFinite {
        neg_inf: 0,
        ..counts
    }
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

/// Counts the non-finite values of `row` that are faults for a row of `kind`, exactly: for
/// [`LogitsKind::Raw`], NaN, +Inf and -Inf (as [`count_non_finite`]); for
/// [`LogitsKind::Masked`], NaN and +Inf, with `neg_inf` always 0. A masked row costs one read
/// whatever share of it is -Inf (the exact pass runs only when a NaN or a +Inf is there).
///
/// ```
/// use tokenmeter_quality::{LogitsKind, count_faults};
/// // A JSON-mode step: everything masked but the allowed tokens.
/// let mut row = vec![f32::NEG_INFINITY; 1000];
/// row[17] = 3.5;
/// assert_eq!(count_faults(&row, LogitsKind::Masked).total(), 0);
/// assert_eq!(count_faults(&row, LogitsKind::Raw).neg_inf, 999);
/// row[40] = f32::INFINITY;
/// assert_eq!(count_faults(&row, LogitsKind::Masked).pos_inf, 1);
/// ```
#[inline]
pub fn count_faults<T: Logit>(row: &[T], kind: LogitsKind) -> NonFinite {
    match kind {
        LogitsKind::Raw => T::count(row),
        LogitsKind::Masked => T::count_masked(row),
    }
}

/// Generates the `Logit` impl of one element type: the widest path this CPU runs (AVX-512,
/// then AVX-512BW for the 16-bit types, then AVX2 + FMA), else the portable one; and the same
/// for masked rows.
macro_rules! dispatch {
    ($t:ty, $portable:path, $avx2:path, $avx512:path $(, bw: $bw:path)?,
     masked: $masked_portable:path, $masked_avx2:path, $masked_wide:path) => {
        impl Logit for $t {
            #[inline]
            fn count(row: &[Self]) -> NonFinite {
                #[cfg(target_arch = "x86_64")]
                {
                    if let Some(c) = $avx512(row) {
                        return c;
                    }
                    $(
                    if let Some(c) = $bw(row) {
                        return c;
                    }
                    )?
                    if x86::avx2() {
                        // SAFETY: the CPU supports AVX2 and FMA, checked just above; the
                        // function has no other safety requirement.
                        return unsafe { $avx2(row) };
                    }
                }
                $portable(row)
            }

            #[inline]
            fn count_masked(row: &[Self]) -> NonFinite {
                #[cfg(target_arch = "x86_64")]
                {
                    if let Some(c) = $masked_wide(row) {
                        return c;
                    }
                    if x86::avx2() {
                        // SAFETY: as in `count`.
                        return unsafe { $masked_avx2(row) };
                    }
                }
                $masked_portable(row)
            }
        }
    };
}

dispatch!(
    f32,
    portable::count_f32,
    x86::avx2_f32,
    x86::avx512_f32,
    masked: portable::count_masked_f32,
    x86::avx2_masked_f32,
    x86::avx512_masked_f32
);
dispatch!(
    f64,
    portable::count_f64,
    x86::avx2_f64,
    x86::avx512_f64,
    masked: portable::count_masked_f64,
    x86::avx2_masked_f64,
    x86::avx512_masked_f64
);
dispatch!(
    f16,
    portable::count_f16,
    x86::avx2_f16,
    x86::avx512_f16,
    bw: x86::avx512bw_f16,
    masked: portable::count_masked_f16,
    x86::avx2_masked_f16,
    x86::avx512_masked_f16
);
dispatch!(
    bf16,
    portable::count_bf16,
    x86::avx2_bf16,
    x86::avx512_bf16,
    bw: x86::avx512bw_bf16,
    masked: portable::count_masked_bf16,
    x86::avx2_masked_bf16,
    x86::avx512_masked_bf16
);
