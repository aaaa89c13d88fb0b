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
//!   the `x86` module for why bf16 can use the binary16 instruction, and when that fires
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

/// Splits `row` into a head, a middle that starts on a 64-byte boundary and holds whole 64-byte
/// lines, and a tail, so that the vector kernels never load across a cache line (a split load
/// costs a second L1 access; on a misaligned row it is every other 32-byte load, or every
/// 64-byte one). The head and the tail are shorter than a line each.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
#[inline(always)]
fn split_aligned<T>(row: &[T]) -> (&[T], &[T], &[T]) {
    let lane = LINE_BYTES / core::mem::size_of::<T>();
    // `align_offset` may answer `usize::MAX` ("cannot align"): then all of the row is the head.
    let pre = row.as_ptr().align_offset(LINE_BYTES).min(row.len());
    let (head, rest) = row.split_at(pre);
    let (mid, tail) = rest.split_at(rest.len() / lane * lane);
    (head, mid, tail)
}

/// The level-0 test of a 512-bit path: `kernel` on the row's line-aligned middle, the
/// portable `any_int` on its ends. `None` when `supported` (the CPU and OS run the kernel's
/// instructions) is false; else whether some value may be non-finite.
#[cfg(target_arch = "x86_64")]
#[inline]
fn wide_first_pass<T>(
    row: &[T],
    supported: bool,
    kernel: unsafe fn(*const u8, usize) -> bool,
    any_int: fn(&[T]) -> bool,
) -> Option<bool> {
    if !supported {
        return None;
    }
    let (head, mid, tail) = split_aligned(row);
    // SAFETY: the CPU and OS support the kernel's instructions (`supported`); `mid` is a live
    // slice of `size_of_val(mid)` readable bytes, a whole number of 64-byte lines
    // (`split_aligned`), and the kernel reads exactly those lines.
    let any = unsafe {
        kernel(
            mid.as_ptr().cast::<u8>(),
            core::mem::size_of_val(mid) / LINE_BYTES,
        )
    };
    Some(any || any_int(head) || any_int(tail))
}

/// Bytes per cache line, the unit of the vector kernels.
const LINE_BYTES: usize = 64;

/// Generates, for one element type: the exact chunked counter (`#[inline(always)]`, written so
/// that LLVM vectorizes both of its loops), a whole-row "any non-finite?" test, the portable
/// kernel, the AVX2 kernels, the AVX-512 kernel (x86-64 only; `None` where the CPU lacks what it
/// needs) and the `Logit` impl that dispatches between them.
macro_rules! scanner {
    ($t:ty, $u:ty, $abs:expr, $inf:expr, $sign:expr,
     $exact:ident, $any_int:ident, $portable:ident,
     $avx2:ident, $avx2_exact:ident, $avx2_any:expr,
     $avx512:ident, $avx512_ok:path, $zmm_any:path
     $(, $bw:ident, $bw_ok:path, $bw_any:path)?) => {
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
            // Exact counts for one chunk of at most N elements, into per-lane counters as
            // wide as the element (one compare and one subtract per test and vector, no
            // widening): a lane counts at most N / L elements, lane 0 up to L - 1 more from
            // the remainder, at most 96 in all, which fits any of them.
            #[inline(always)]
            fn exact(chunk: &[$t], out: &mut NonFinite) {
                const L: usize = LINE_BYTES / core::mem::size_of::<$t>();
                const _: () = assert!(N / L + L <= u16::MAX as usize);
                debug_assert!(chunk.len() <= N);
                let mut nan = [0 as $u; L];
                let mut pos = [0 as $u; L];
                let mut neg = [0 as $u; L];
                let mut lanes = chunk.chunks_exact(L);
                for c in &mut lanes {
                    for j in 0..L {
                        let b = c[j].to_bits();
                        nan[j] += ((b & ABS) > INF) as $u;
                        pos[j] += (b == INF) as $u;
                        neg[j] += (b == NEG_INF) as $u;
                    }
                }
                for &x in lanes.remainder() {
                    let b = x.to_bits();
                    nan[0] += ((b & ABS) > INF) as $u;
                    pos[0] += (b == INF) as $u;
                    neg[0] += (b == NEG_INF) as $u;
                }
                let total = |lanes: [$u; L]| lanes.iter().fold(0u64, |s, &n| s + n as u64);
                out.nan += total(nan);
                out.pos_inf += total(pos);
                out.neg_inf += total(neg);
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

        /// The level-0 test on the line-aligned middle (the ends by the portable test), then
        /// the exact pass, all compiled for AVX2 + FMA.
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn $avx2(row: &[$t]) -> NonFinite {
            let any: fn(&[$t]) -> bool = $avx2_any;
            let (head, mid, tail) = split_aligned(row);
            if any(mid) || $any_int(head) || $any_int(tail) {
                $exact(row)
            } else {
                NonFinite::default()
            }
        }

        /// The exact pass alone, compiled for AVX2 + FMA (the AVX-512 path's slow path).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2,fma")]
        fn $avx2_exact(row: &[$t]) -> NonFinite {
            $exact(row)
        }

        /// The AVX-512 path: one fused multiply-add per 64-byte line as the level-0 test (see
        /// [`x86`]), then, only if it fires, the AVX2 exact pass. `None` where the CPU or the
        /// OS lacks what it needs.
        #[cfg(target_arch = "x86_64")]
        #[inline]
        fn $avx512(row: &[$t]) -> Option<NonFinite> {
            let maybe = wide_first_pass(row, $avx512_ok(), $zmm_any, $any_int)?;
            Some(if maybe {
                // SAFETY: `$avx512_ok` implies AVX2 and FMA.
                unsafe { $avx2_exact(row) }
            } else {
                NonFinite::default()
            })
        }

        $(
        /// The AVX-512BW path (16-bit types, for CPUs without AVX512-FP16): the unsigned
        /// maximum of `bits & !SIGN` per 64-byte line as the level-0 test (see [`x86`]), then,
        /// only if it fires, the AVX2 exact pass. `None` where the CPU or the OS lacks what it
        /// needs.
        #[cfg(target_arch = "x86_64")]
        #[inline]
        fn $bw(row: &[$t]) -> Option<NonFinite> {
            let maybe = wide_first_pass(row, $bw_ok(), $bw_any, $any_int)?;
            Some(if maybe {
                // SAFETY: `$bw_ok` implies AVX2 and FMA.
                unsafe { $avx2_exact(row) }
            } else {
                NonFinite::default()
            })
        }
        )?

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

/// Level 0 for f16 and bf16 with AVX2 (the row's line-aligned middle, from the `avx2_*` paths):
/// `acc = max_u16(acc, bits & 0x7FFF)` per 32 bytes into four accumulators, with a software
/// prefetch 2 KiB ahead (worth 10% on a row in L2: the two vector instructions per load keep
/// the ports busy enough that the hardware prefetchers fall behind).
macro_rules! ymm_max_any {
    ($name:ident, $t:ty, $inf:expr, $any_int:ident) => {
        /// # Safety
        ///
        /// The CPU must support AVX2, and `mid` must start on a 64-byte boundary and hold
        /// whole 64-byte lines (the `split_aligned` middle).
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = "avx2")]
        #[inline]
        unsafe fn $name(mid: &[$t]) -> bool {
            use core::arch::x86_64::*;
            const LANE: usize = LINE_BYTES / 2;
            debug_assert_eq!(mid.len() % LANE, 0);
            debug_assert_eq!(mid.as_ptr().align_offset(LINE_BYTES), 0);
            let abs = _mm256_set1_epi16(0x7FFF);
            let mut acc = [_mm256_setzero_si256(); 4];
            let mut blocks = mid.chunks_exact(2 * LANE);
            for b in &mut blocks {
                let p = b.as_ptr().cast::<__m256i>();
                // `_mm_prefetch` is an unsafe fn in older Rust and a safe one in newer.
                #[allow(unused_unsafe)]
                // `_mm_prefetch` is an unsafe fn in older Rust and a safe one in newer.
                #[allow(unused_unsafe)]
                // SAFETY: a prefetch is a hint, not a memory access: it never faults and reads
                // nothing into the program, for any address (`wrapping_add` computes one
                // without the in-bounds requirement of `add`).
                unsafe {
                    _mm_prefetch::<_MM_HINT_T0>(b.as_ptr().cast::<i8>().wrapping_add(2048))
                };
                for (j, a) in acc.iter_mut().enumerate() {
                    // SAFETY: `b` is 128 readable bytes starting on a 64-byte boundary (the
                    // caller passes whole aligned lines, and blocks are pairs of them), so each
                    // of the four 32-byte loads is in bounds and aligned.
                    let x = unsafe { _mm256_load_si256(p.add(j)) };
                    *a = _mm256_max_epu16(*a, _mm256_and_si256(x, abs));
                }
            }
            let m = _mm256_max_epu16(
                _mm256_max_epu16(acc[0], acc[1]),
                _mm256_max_epu16(acc[2], acc[3]),
            );
            let mut lanes = [0u16; 16];
            // SAFETY: `lanes` is 32 writable bytes; `storeu` has no alignment requirement.
            unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), m) };
            let max = lanes.iter().fold(0, |m, &x| m.max(x));
            max >= $inf || $any_int(blocks.remainder())
        }
    };
}
ymm_max_any!(ymm_any_f16, f16, 0x7C00, any_f16);
ymm_max_any!(ymm_any_bf16, bf16, 0x7F80, any_bf16);

/// Run-time CPU detection and the AVX-512 level-0 kernels (x86-64).
///
/// The kernels are one fused multiply-add per 64-byte line, `acc = x * 0 + acc`, into eight
/// independent 512-bit accumulators (the FMA latency is 4 cycles at two per cycle): `x * 0` is
/// ±0 for every finite `x` (subnormals and the largest values included), and `+0 + ±0 = +0`, so
/// the accumulators stay all-zero bits until a NaN or an infinity comes by (`inf * 0` and
/// anything with a NaN operand are NaN, and NaN sticks). The kernel answers "some accumulator
/// bit is set". That is one instruction per line, as many as the floor's one add per line; the
/// AVX2 integer test for 16-bit types needs two per 32 bytes, four times as many.
///
/// - f32, f64: `vfmadd231ps` / `vfmadd231pd` (AVX-512F).
/// - f16: `vfmadd231ph` (AVX512-FP16), the exact IEEE binary16 test.
/// - bf16: the same `vfmadd231ph` on the same bits. A bf16 value is non-finite when its eight
///   exponent bits (14..7) are all ones; then bits 14..10, the binary16 exponent, are all ones
///   too, so the binary16 view of the same bits is NaN or infinite and the test fires: no false
///   negatives. It also fires for finite bf16 values with bits 14..10 set, |x| >= 2^121; then
///   the exact pass finds nothing to count and returns zeros, so the counts stay exact and
///   only such rows (for example rows masked with `bf16::MIN` instead of -inf) pay for a second
///   pass.
///
/// A rounding mode other than to-nearest could leave a -0 in an accumulator (in round-down,
/// `+0 + -0 = -0`); that only sends the row through the exact pass.
///
/// The kernels are inline assembly rather than `core::arch` intrinsics, which need Rust 1.89
/// for AVX-512 (the workspace's `rust-version` is 1.88); the assembler needs no target feature.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use core::arch::asm;
    use core::sync::atomic::{AtomicU8, Ordering};

    /// AVX2 and FMA: the 256-bit kernels.
    #[inline]
    pub(super) fn avx2() -> bool {
        std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
    }

    /// AVX2, FMA and AVX-512F with the OS saving the 512-bit state (std's detection checks
    /// XCR0): the f32 and f64 kernels.
    #[inline]
    pub(super) fn avx512() -> bool {
        avx2() && std::arch::is_x86_feature_detected!("avx512f")
    }

    /// [`avx512`] and AVX-512BW: the f16 and bf16 integer kernels, for CPUs without
    /// AVX512-FP16 (AMD Zen 4 and later, Intel from Skylake-SP to Ice Lake).
    #[inline]
    pub(super) fn avx512bw() -> bool {
        avx512() && std::arch::is_x86_feature_detected!("avx512bw")
    }

    /// [`avx512`] and AVX512-FP16: the f16 and bf16 kernel.
    #[inline]
    pub(super) fn avx512fp16() -> bool {
        // 0: not yet known, 1: absent, 2: present. CPUID can trap to the hypervisor under
        // virtualization, so it runs once.
        static FP16: AtomicU8 = AtomicU8::new(0);
        match FP16.load(Ordering::Relaxed) {
            2 => true,
            1 => false,
            _ => {
                // AVX-512F implies CPUID leaf 7. AVX512-FP16 is leaf 7, sub-leaf 0, EDX bit
                // 23 (std's detection macro names it only from Rust 1.89).
                let has = avx512() && {
                    // `__cpuid_count` is an unsafe fn before Rust 1.94 and a safe one after.
                    #[allow(unused_unsafe)]
                    // SAFETY: CPUID exists on every x86-64 CPU and leaf 7 exists where
                    // AVX-512F does (checked first); it has no other effect.
                    let leaf7 = unsafe { core::arch::x86_64::__cpuid_count(7, 0) };
                    leaf7.edx & (1 << 23) != 0
                };
                FP16.store(1 + u8::from(has), Ordering::Relaxed);
                has
            }
        }
    }

    /// Generates one level-0 kernel: `$fma` is the fused multiply-add mnemonic.
    macro_rules! zmm_fma_any {
        ($(#[$doc:meta])* $name:ident, $fma:literal) => {
            $(#[$doc])*
            ///
            /// True when some value in the `lines` 64-byte lines at `ptr` may be non-finite
            /// (never false when one is).
            ///
            /// # Safety
            ///
            /// The CPU and the OS must support the instruction (see [`avx512`] and
            /// [`avx512fp16`]), and `ptr` must be valid for reads of `64 * lines` bytes.
            #[inline]
            pub(super) unsafe fn $name(ptr: *const u8, lines: usize) -> bool {
                let hit: u8;
                // SAFETY: the caller guarantees the instruction set and that the `64 * lines`
                // bytes at `ptr` are readable; the code reads exactly those bytes (eight lines
                // per iteration, then the rest one by one), writes no memory and no register
                // but those declared (all 16 vector registers, as `vzeroupper` clears the upper
                // halves of all of them), and leaves the upper vector state clean, so SSE code
                // after it pays no transition penalty.
                unsafe {
                    asm!(
                        "vpxor xmm0, xmm0, xmm0",
                        "vpxor xmm1, xmm1, xmm1",
                        "vpxor xmm2, xmm2, xmm2",
                        "vpxor xmm3, xmm3, xmm3",
                        "vpxor xmm4, xmm4, xmm4",
                        "vpxor xmm5, xmm5, xmm5",
                        "vpxor xmm6, xmm6, xmm6",
                        "vpxor xmm7, xmm7, xmm7",
                        "vpxor xmm8, xmm8, xmm8",
                        "test {blocks}, {blocks}",
                        "jz 3f",
                        ".p2align 6",
                        "2:",
                        concat!($fma, " zmm0, zmm8, zmmword ptr [{p}]"),
                        concat!($fma, " zmm1, zmm8, zmmword ptr [{p} + 64]"),
                        concat!($fma, " zmm2, zmm8, zmmword ptr [{p} + 128]"),
                        concat!($fma, " zmm3, zmm8, zmmword ptr [{p} + 192]"),
                        concat!($fma, " zmm4, zmm8, zmmword ptr [{p} + 256]"),
                        concat!($fma, " zmm5, zmm8, zmmword ptr [{p} + 320]"),
                        concat!($fma, " zmm6, zmm8, zmmword ptr [{p} + 384]"),
                        concat!($fma, " zmm7, zmm8, zmmword ptr [{p} + 448]"),
                        "add {p}, 512",
                        "dec {blocks}",
                        "jnz 2b",
                        "3:",
                        "test {rest}, {rest}",
                        "jz 5f",
                        "4:",
                        concat!($fma, " zmm0, zmm8, zmmword ptr [{p}]"),
                        "add {p}, 64",
                        "dec {rest}",
                        "jnz 4b",
                        "5:",
                        "vpord zmm0, zmm0, zmm1",
                        "vpord zmm2, zmm2, zmm3",
                        "vpord zmm4, zmm4, zmm5",
                        "vpord zmm6, zmm6, zmm7",
                        "vpord zmm0, zmm0, zmm2",
                        "vpord zmm4, zmm4, zmm6",
                        "vpord zmm0, zmm0, zmm4",
                        "vextracti64x4 ymm1, zmm0, 1",
                        "vpor ymm0, ymm0, ymm1",
                        "vptest ymm0, ymm0",
                        "setnz {hit}",
                        "vzeroupper",
                        p = inout(reg) ptr => _,
                        blocks = inout(reg) lines / 8 => _,
                        rest = inout(reg) lines % 8 => _,
                        hit = out(reg_byte) hit,
                        out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
                        out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
                        out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
                        out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
                        options(pure, readonly, nostack),
                    );
                }
                hit != 0
            }
        };
    }

    zmm_fma_any!(
        /// f32 level 0 (AVX-512F).
        any_ps,
        "vfmadd231ps"
    );
    zmm_fma_any!(
        /// f64 level 0 (AVX-512F).
        any_pd,
        "vfmadd231pd"
    );
    zmm_fma_any!(
        /// f16 level 0, and bf16's superset test (AVX512-FP16).
        any_ph,
        "vfmadd231ph"
    );

    /// Generates one AVX-512BW level-0 kernel for a 16-bit type whose infinity pattern is
    /// `$inf`: per 64-byte line, `acc = max_u16(acc, bits & 0x7FFF)` (`vpandd` with the load
    /// folded in, then `vpmaxuw`), into four independent accumulators; at the end the maximum
    /// is compared with `$inf`, which it reaches exactly when some value is NaN or infinite.
    macro_rules! zmm_max_any {
        ($(#[$doc:meta])* $name:ident, $inf:literal) => {
            $(#[$doc])*
            ///
            /// True exactly when some value in the `lines` 64-byte lines at `ptr` is
            /// non-finite (this test has no false alarms).
            ///
            /// # Safety
            ///
            /// The CPU and the OS must support AVX-512BW (see [`avx512bw`]), and `ptr` must be
            /// valid for reads of `64 * lines` bytes.
            #[inline]
            pub(super) unsafe fn $name(ptr: *const u8, lines: usize) -> bool {
                const INF: u16 = $inf;
                let hit: u8;
                // SAFETY: the caller guarantees AVX-512BW and that the `64 * lines` bytes at
                // `ptr` are readable; the code reads exactly those bytes (eight lines per
                // iteration, then the rest one by one), writes no memory and no register but
                // those declared (all 16 vector registers, as `vzeroupper` clears the upper
                // halves of all of them; no mask register), and leaves the upper vector state
                // clean. The `prefetcht0` hints name addresses up to 2.5 KiB past the lines;
                // a prefetch is not a memory access (it never faults, on any address, and
                // changes no architectural state), so that reads nothing outside the row.
                unsafe {
                    asm!(
                        "vpbroadcastd zmm8, {abs:e}",
                        "vpbroadcastd zmm9, {below:e}",
                        "vpxor xmm0, xmm0, xmm0",
                        "vpxor xmm1, xmm1, xmm1",
                        "vpxor xmm2, xmm2, xmm2",
                        "vpxor xmm3, xmm3, xmm3",
                        "test {blocks}, {blocks}",
                        "jz 3f",
                        ".p2align 6",
                        "2:",
                        "prefetcht0 [{p} + 2048]",
                        "prefetcht0 [{p} + 2112]",
                        "prefetcht0 [{p} + 2176]",
                        "prefetcht0 [{p} + 2240]",
                        "prefetcht0 [{p} + 2304]",
                        "prefetcht0 [{p} + 2368]",
                        "prefetcht0 [{p} + 2432]",
                        "prefetcht0 [{p} + 2496]",
                        "vpandd zmm4, zmm8, zmmword ptr [{p}]",
                        "vpandd zmm5, zmm8, zmmword ptr [{p} + 64]",
                        "vpandd zmm6, zmm8, zmmword ptr [{p} + 128]",
                        "vpandd zmm7, zmm8, zmmword ptr [{p} + 192]",
                        "vpmaxuw zmm0, zmm0, zmm4",
                        "vpmaxuw zmm1, zmm1, zmm5",
                        "vpmaxuw zmm2, zmm2, zmm6",
                        "vpmaxuw zmm3, zmm3, zmm7",
                        "vpandd zmm10, zmm8, zmmword ptr [{p} + 256]",
                        "vpandd zmm11, zmm8, zmmword ptr [{p} + 320]",
                        "vpandd zmm12, zmm8, zmmword ptr [{p} + 384]",
                        "vpandd zmm13, zmm8, zmmword ptr [{p} + 448]",
                        "vpmaxuw zmm0, zmm0, zmm10",
                        "vpmaxuw zmm1, zmm1, zmm11",
                        "vpmaxuw zmm2, zmm2, zmm12",
                        "vpmaxuw zmm3, zmm3, zmm13",
                        "add {p}, 512",
                        "dec {blocks}",
                        "jnz 2b",
                        "3:",
                        "test {rest}, {rest}",
                        "jz 5f",
                        "4:",
                        "vpandd zmm4, zmm8, zmmword ptr [{p}]",
                        "vpmaxuw zmm0, zmm0, zmm4",
                        "add {p}, 64",
                        "dec {rest}",
                        "jnz 4b",
                        "5:",
                        "vpmaxuw zmm0, zmm0, zmm1",
                        "vpmaxuw zmm2, zmm2, zmm3",
                        "vpmaxuw zmm0, zmm0, zmm2",
                        // Saturating `max - (INF - 1)`: nonzero in a lane iff max >= INF.
                        "vpsubusw zmm0, zmm0, zmm9",
                        "vextracti64x4 ymm1, zmm0, 1",
                        "vpor ymm0, ymm0, ymm1",
                        "vptest ymm0, ymm0",
                        "setnz {hit}",
                        "vzeroupper",
                        abs = in(reg) 0x7FFF_7FFFu32,
                        below = in(reg) u32::from(INF - 1) * 0x0001_0001,
                        p = inout(reg) ptr => _,
                        blocks = inout(reg) lines / 8 => _,
                        rest = inout(reg) lines % 8 => _,
                        hit = out(reg_byte) hit,
                        out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
                        out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
                        out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
                        out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
                        options(pure, readonly, nostack),
                    );
                }
                hit != 0
            }
        };
    }

    zmm_max_any!(
        /// f16 level 0 without AVX512-FP16 (AVX-512BW).
        any_w_f16,
        0x7C00
    );
    zmm_max_any!(
        /// bf16 level 0 without AVX512-FP16 (AVX-512BW).
        any_w_bf16,
        0x7F80
    );
}

/// The AVX-512 paths exist on x86-64 only.
#[cfg(not(target_arch = "x86_64"))]
macro_rules! no_wide {
    ($($name:ident: $t:ty),*) => {$(
        #[inline]
        fn $name(_row: &[$t]) -> Option<NonFinite> {
            None
        }
    )*};
}
#[cfg(not(target_arch = "x86_64"))]
no_wide!(
    avx512_f32: f32,
    avx512_f64: f64,
    avx512_f16: f16,
    avx512_bf16: bf16,
    avx512bw_f16: f16,
    avx512bw_bf16: bf16
);

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
    avx2_exact_f32,
    fma_any_f32,
    avx512_f32,
    x86::avx512,
    x86::any_ps
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
    avx2_exact_f64,
    fma_any_f64,
    avx512_f64,
    x86::avx512,
    x86::any_pd
);
scanner!(
    f16,
    u16,
    0x7FFF,
    0x7C00,
    0x8000,
    exact_f16,
    any_f16,
    kernel_f16,
    avx2_f16,
    avx2_exact_f16,
    |mid| {
        // SAFETY: only the AVX2 path calls it, on the `split_aligned` middle.
        unsafe { ymm_any_f16(mid) }
    },
    avx512_f16,
    x86::avx512fp16,
    x86::any_ph,
    avx512bw_f16,
    x86::avx512bw,
    x86::any_w_f16
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
    avx2_exact_bf16,
    |mid| {
        // SAFETY: only the AVX2 path calls it, on the `split_aligned` middle.
        unsafe { ymm_any_bf16(mid) }
    },
    avx512_bf16,
    x86::avx512fp16,
    x86::any_ph,
    avx512bw_bf16,
    x86::avx512bw,
    x86::any_w_bf16
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

/// The AVX2 + FMA kernels alone (x86-64), `None` where the CPU lacks them: for tests that check
/// every path agrees on machines whose dispatch picks a wider one, and for the bench's fallback
/// figures.
#[doc(hidden)]
pub mod avx2 {
    use super::*;

    macro_rules! path {
        ($($name:ident: $t:ty => $kernel:ident),*) => {$(
            /// The AVX2 + FMA kernel, if the CPU has them.
            pub fn $name(row: &[$t]) -> Option<NonFinite> {
                #[cfg(target_arch = "x86_64")]
                {
                    if x86::avx2() {
                        // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                        return Some(unsafe { $kernel(row) });
                    }
                }
                let _ = row;
                None
            }
        )*};
    }
    path!(f32: f32 => avx2_f32, f64: f64 => avx2_f64, f16: f16 => avx2_f16, bf16: bf16 => avx2_bf16);
}

/// The AVX-512 kernels alone (x86-64), `None` where the CPU lacks them (AVX-512F for f32 and
/// f64, AVX512-FP16 too for f16 and bf16).
#[doc(hidden)]
pub mod avx512 {
    use super::*;
    /// The AVX-512F kernel, if the CPU has it.
    pub fn f32(row: &[f32]) -> Option<NonFinite> {
        avx512_f32(row)
    }
    /// The AVX-512F kernel, if the CPU has it.
    pub fn f64(row: &[f64]) -> Option<NonFinite> {
        avx512_f64(row)
    }
    /// The AVX512-FP16 kernel, if the CPU has it.
    pub fn f16(row: &[f16]) -> Option<NonFinite> {
        avx512_f16(row)
    }
    /// The AVX512-FP16 kernel (bf16 through the binary16 view), if the CPU has it.
    pub fn bf16(row: &[bf16]) -> Option<NonFinite> {
        avx512_bf16(row)
    }
}

/// The AVX-512BW kernels alone (x86-64), `None` where the CPU lacks AVX-512BW: the f16 and bf16
/// path of CPUs without AVX512-FP16, for tests and the bench on machines whose dispatch picks the
/// FP16 one.
#[doc(hidden)]
pub mod avx512bw {
    use super::*;
    /// The AVX-512BW kernel, if the CPU has it.
    pub fn f16(row: &[f16]) -> Option<NonFinite> {
        avx512bw_f16(row)
    }
    /// The AVX-512BW kernel, if the CPU has it.
    pub fn bf16(row: &[bf16]) -> Option<NonFinite> {
        avx512bw_bf16(row)
    }
}

#[doc(hidden)]
/// Which kernels [`count_non_finite`] uses on this machine, per element type, in words (for
/// benches and logs).
pub fn kernels() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        match (
            x86::avx512fp16(),
            x86::avx512bw(),
            x86::avx512(),
            x86::avx2(),
        ) {
            (true, _, _, _) => "AVX-512 FMA (f32, f64), AVX512-FP16 FMA (f16, bf16)",
            (false, true, _, _) => "AVX-512 FMA (f32, f64), AVX-512BW max (f16, bf16)",
            (false, false, true, _) => "AVX-512 FMA (f32, f64), AVX2 (f16, bf16)",
            (false, false, false, true) => "AVX2 + FMA",
            _ => "portable (SSE2)",
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        "portable"
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
        assert_all_paths(&row, nf(5, 1, 1), "f32 specials");
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
        assert_all_paths(&row, nf(3, 1, 2), "f64 specials");
    }

    #[test]
    fn f16_and_bf16_every_bit_pattern() {
        // All 65536 patterns, each once: 2 infinities and 2 * (2^m - 1) NaNs.
        let f16s: Vec<f16> = (0..=u16::MAX).map(f16::from_bits).collect();
        assert_all_paths(&f16s, nf(2 * 1023, 1, 1), "f16 patterns");
        assert_eq!(count_non_finite_naive(&f16s), nf(2 * 1023, 1, 1));
        let bf16s: Vec<bf16> = (0..=u16::MAX).map(bf16::from_bits).collect();
        assert_all_paths(&bf16s, nf(2 * 127, 1, 1), "bf16 patterns");
        assert_eq!(count_non_finite_naive(&bf16s), nf(2 * 127, 1, 1));
        // Each pattern alone in a row of 100 ordinary values, so that a pattern the fast
        // test missed could not hide behind another one that fires.
        let mut f16_row = vec![f16::from_f32(-3.5); 100];
        let mut bf16_row = vec![bf16::from_f32(7.25); 100];
        for bits in 0..=u16::MAX {
            f16_row[37] = f16::from_bits(bits);
            assert_all_paths(&f16_row, count_non_finite_naive(&f16_row), bits);
            bf16_row[64] = bf16::from_bits(bits);
            assert_all_paths(&bf16_row, count_non_finite_naive(&bf16_row), bits);
        }
    }

    /// Every kernel this machine can run: the dispatched one and each path by itself.
    trait Paths: Logit + NaiveClassify + core::fmt::Debug {
        fn paths(row: &[Self]) -> [(&'static str, Option<NonFinite>); 5];
    }
    macro_rules! paths {
        ($($t:ident: $bw:expr),*) => {$(
            impl Paths for $t {
                fn paths(row: &[Self]) -> [(&'static str, Option<NonFinite>); 5] {
                    let bw: fn(&[$t]) -> Option<NonFinite> = $bw;
                    [
                        ("dispatch", Some(count_non_finite(row))),
                        ("portable", Some(portable::$t(row))),
                        ("avx2", avx2::$t(row)),
                        ("avx512", avx512::$t(row)),
                        ("avx512bw", bw(row)),
                    ]
                }
            }
        )*};
    }
    paths!(
        f32: |_| None,
        f64: |_| None,
        f16: avx512bw::f16,
        bf16: avx512bw::bf16
    );

    fn assert_all_paths<T: Paths>(row: &[T], want: NonFinite, ctx: impl core::fmt::Debug) {
        for (path, got) in T::paths(row) {
            if let Some(got) = got {
                assert_eq!(got, want, "{path} path, {ctx:?}, len {}", row.len());
            }
        }
    }

    /// One value at every position of rows that start at every element offset within a
    /// 64-byte line: the unaligned head, the eight-line blocks, the single lines after them
    /// and the tail all see it.
    fn every_position<T: Paths>(fill: &[T], specials: &[(T, NonFinite)]) {
        let lane = LINE_BYTES / core::mem::size_of::<T>();
        // Two 8-line blocks, five single lines, and a few elements, plus room for the offset.
        let len = 2 * 8 * lane + 5 * lane + 3;
        let mut buf: Vec<T> = (0..len + lane).map(|i| fill[i % fill.len()]).collect();
        for offset in 0..lane {
            for n in [len, lane - 1, lane, 8 * lane, 8 * lane + lane + 1] {
                let range = offset..offset + n;
                assert_all_paths(&buf[range.clone()], NonFinite::default(), (offset, n));
                for pos in 0..n {
                    let (x, want) = specials[pos % specials.len()];
                    let keep = std::mem::replace(&mut buf[offset + pos], x);
                    assert_all_paths(&buf[range.clone()], want, (offset, n, pos, x));
                    buf[offset + pos] = keep;
                }
            }
        }
    }

    /// The AVX-512 level-0 kernels by themselves, at every line count around their eight-line
    /// blocks: silent on finite lines (no false alarm would show in the counts), firing for a
    /// value in any line and lane.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn zmm_kernels_fire_exactly_on_non_finite_lines() {
        fn check<T: Copy>(ok: bool, kernel: unsafe fn(*const u8, usize) -> bool, fill: T, bad: T) {
            if !ok {
                return;
            }
            let lane = LINE_BYTES / core::mem::size_of::<T>();
            let mut buf = vec![fill; 20 * lane + lane];
            let skip = split_aligned(&buf).0.len();
            for lines in 0..=19 {
                let run = |buf: &[T]| {
                    let mid = &buf[skip..skip + lines * lane];
                    assert_eq!(split_aligned(mid).1.len(), mid.len());
                    // SAFETY: the CPU has the instructions (`ok`); `mid` holds `lines` lines.
                    unsafe { kernel(mid.as_ptr().cast(), lines) }
                };
                assert!(!run(&buf), "{lines} finite lines");
                for line in 0..lines {
                    let i = skip + line * lane + (line * 7) % lane;
                    buf[i] = bad;
                    assert!(run(&buf), "{lines} lines, line {line}");
                    buf[i] = fill;
                }
            }
        }
        check(x86::avx512(), x86::any_ps, f32::MIN, f32::NAN);
        check(x86::avx512(), x86::any_ps, -0.0f32, f32::NEG_INFINITY);
        check(x86::avx512(), x86::any_pd, f64::MAX, f64::INFINITY);
        check(x86::avx512fp16(), x86::any_ph, f16::MIN, f16::NEG_INFINITY);
        check(x86::avx512fp16(), x86::any_ph, f16::from_bits(1), f16::NAN);
        check(
            x86::avx512fp16(),
            x86::any_ph,
            bf16::from_f32(-87.5),
            bf16::INFINITY,
        );
        check(x86::avx512bw(), x86::any_w_f16, f16::MIN, f16::NEG_INFINITY);
        check(x86::avx512bw(), x86::any_w_f16, f16::MAX, f16::NAN);
        check(
            x86::avx512bw(),
            x86::any_w_f16,
            f16::from_bits(1),
            f16::INFINITY,
        );
        // The integer test has no false alarms: bf16::MIN and MAX lines stay silent.
        check(x86::avx512bw(), x86::any_w_bf16, bf16::MIN, bf16::INFINITY);
        check(
            x86::avx512bw(),
            x86::any_w_bf16,
            bf16::MAX,
            bf16::NEG_INFINITY,
        );
        check(
            x86::avx512bw(),
            x86::any_w_bf16,
            bf16::from_f32(-87.5),
            bf16::from_bits(0x7F81),
        );
    }

    /// The AVX-512BW level-0 kernels are exact on their own: on a line of one 16-bit pattern
    /// (in every lane), and on a finite line with the pattern in one lane, they fire exactly
    /// for the non-finite patterns, for all 65,536.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn zmm_integer_kernels_are_exact_for_every_pattern() {
        if !x86::avx512bw() {
            return;
        }
        type Kernel = unsafe fn(*const u8, usize) -> bool;
        type NonFiniteBits = fn(u16) -> bool;
        let kernels: [(Kernel, NonFiniteBits); 2] = [
            (x86::any_w_f16, |b| !f16::from_bits(b).is_finite()),
            (x86::any_w_bf16, |b| !bf16::from_bits(b).is_finite()),
        ];
        // Two lines plus room to align the start.
        let mut buf = vec![0u16; 3 * 32];
        let skip = split_aligned(&buf).0.len();
        for (kernel, non_finite) in kernels {
            for bits in 0..=u16::MAX {
                let want = non_finite(bits);
                let line = &mut buf[skip..skip + 64];
                line[..32].fill(bits);
                line[32..].fill(0x3C00);
                // SAFETY: the CPU has AVX-512BW (checked above); `line` holds two 64-byte
                // lines (aligned by `skip`) and the kernel reads the first one or both.
                let (one, two) = unsafe {
                    (
                        kernel(line.as_ptr().cast(), 1),
                        kernel(line.as_ptr().cast(), 2),
                    )
                };
                assert_eq!((one, two), (want, want), "all lanes {bits:#06x}");
                line[..32].fill(0x3C00);
                let lane = usize::from(bits) % 64;
                line[lane] = bits;
                // SAFETY: as above.
                let got = unsafe { kernel(line.as_ptr().cast(), 2) };
                assert_eq!(got, want, "lane {lane}, {bits:#06x}");
            }
        }
    }

    #[test]
    fn every_position_of_lines_blocks_and_ends() {
        every_position(
            &[1.5f32, -2.0, f32::MAX, f32::MIN, -0.0, f32::from_bits(1)],
            &[
                (f32::NAN, nf(1, 0, 0)),
                (f32::INFINITY, nf(0, 1, 0)),
                (f32::NEG_INFINITY, nf(0, 0, 1)),
                (f32::from_bits(0xFF80_0001), nf(1, 0, 0)),
            ],
        );
        every_position(
            &[1.5f64, -2.0, f64::MAX, f64::MIN, -0.0, f64::from_bits(1)],
            &[
                (f64::NAN, nf(1, 0, 0)),
                (f64::INFINITY, nf(0, 1, 0)),
                (f64::NEG_INFINITY, nf(0, 0, 1)),
                (f64::from_bits(0x7FF0_0000_0000_0001), nf(1, 0, 0)),
            ],
        );
        every_position(
            &[
                f16::ONE,
                f16::NEG_ONE,
                f16::MAX,
                f16::MIN,
                f16::from_bits(1),
            ],
            &[
                (f16::NAN, nf(1, 0, 0)),
                (f16::INFINITY, nf(0, 1, 0)),
                (f16::NEG_INFINITY, nf(0, 0, 1)),
                (f16::from_bits(0xFC01), nf(1, 0, 0)),
            ],
        );
        // bf16::MAX and MIN set the binary16 exponent bits: the AVX-512 test fires on them
        // (a false alarm) and the exact pass must still count nothing for them.
        every_position(
            &[
                bf16::ONE,
                bf16::NEG_ONE,
                bf16::MAX,
                bf16::MIN,
                bf16::from_bits(1),
            ],
            &[
                (bf16::NAN, nf(1, 0, 0)),
                (bf16::INFINITY, nf(0, 1, 0)),
                (bf16::NEG_INFINITY, nf(0, 0, 1)),
                (bf16::from_bits(0xFF81), nf(1, 0, 0)),
            ],
        );
    }

    #[test]
    fn bf16_values_that_look_non_finite_as_binary16() {
        // Finite bf16 values whose bits 14..10 are all ones: |x| >= 2^121.
        let big = [0x7C00u16, 0xFC00, 0x7F7F, 0xFF7F, 0x7E00, 0x7D55];
        let mut row: Vec<bf16> = (0..5000)
            .map(|i| bf16::from_bits(big[i % big.len()]))
            .collect();
        assert!(row.iter().all(|x| x.is_finite()));
        assert_all_paths(&row, nf(0, 0, 0), "large finite bf16");
        row[4321] = bf16::NEG_INFINITY;
        assert_all_paths(&row, nf(0, 0, 1), "large finite bf16 and -inf");
    }

    #[test]
    fn non_finite_in_every_position_of_a_chunk_boundary() {
        // Rows of odd length straddling chunk boundaries, with one value at each position.
        let n = 2 * (CHUNK_BYTES / 4) + 37;
        for pos in [0, 1, 1023, 1024, 1025, 2047, 2048, n - 1] {
            let mut row = vec![f32::MAX; n];
            row[pos] = f32::NEG_INFINITY;
            assert_all_paths(&row, nf(0, 0, 1), pos);
            row[pos] = f32::from_bits(0xFF80_0001);
            assert_all_paths(&row, nf(1, 0, 0), pos);
        }
    }

    #[test]
    fn all_non_finite_row() {
        let mut row = vec![f32::NAN; 100_000];
        row[3] = f32::INFINITY;
        assert_all_paths(&row, nf(99_999, 1, 0), "NaN row");
        let row = vec![bf16::NEG_INFINITY; 70_001];
        assert_all_paths(&row, nf(0, 0, 70_001), "-inf row");
        let row = vec![f16::INFINITY; 70_001];
        assert_all_paths(&row, nf(0, 70_001, 0), "+inf row");
        let row = vec![-f64::NAN; 30_001];
        assert_all_paths(&row, nf(30_001, 0, 0), "NaN row");
    }
}
