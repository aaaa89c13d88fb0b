//! The x86-64 tiers, picked at run time (see the parent module): CPU detection, the AVX2 + FMA
//! path, the AVX-512 paths, and the level-0 kernels they run on a row's line-aligned middle.
//! Every `unsafe` block of the scanner lives here or in [`zmm`].

use core::sync::atomic::{AtomicU8, Ordering};

use half::{bf16, f16};
use tokenmeter_core::NonFinite;

use super::portable::{
    any_bf16, any_f16, any_f32, any_f64, any_masked_bf16, any_masked_f16, any_masked_f32,
    any_masked_f64, exact_bf16, exact_f16, exact_f32, exact_f64,
};
use super::{LINE_BYTES, faults_of_masked};

pub(super) mod zmm;

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

/// Splits `row` into a head, a middle that starts on a 64-byte boundary and holds whole 64-byte
/// lines, and a tail, so that the vector kernels never load across a cache line (a split load
/// costs a second L1 access; on a misaligned row it is every other 32-byte load, or every
/// 64-byte one). The head and the tail are shorter than a line each.
#[inline(always)]
pub(super) fn split_aligned<T>(row: &[T]) -> (&[T], &[T], &[T]) {
    let lane = LINE_BYTES / core::mem::size_of::<T>();
    // `align_offset` may answer `usize::MAX` ("cannot align"): then all of the row is the head.
    let pre = row.as_ptr().align_offset(LINE_BYTES).min(row.len());
    let (head, rest) = row.split_at(pre);
    let (mid, tail) = rest.split_at(rest.len() / lane * lane);
    (head, mid, tail)
}

/// The level-0 test of a 512-bit path: `kernel` on the row's line-aligned middle, the portable
/// test `any_int` (the same question) on its ends. `None` when `supported` (the CPU and OS run
/// the kernel's instructions) is false; else whether either test fired.
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

/// Level 0 for f32 and f64 with FMA: `acc = x * 0 + acc` stays zero for finite `x` and turns
/// NaN for any NaN or infinity (IEEE 754: `inf * 0` and anything with a NaN operand are NaN),
/// one fused instruction per vector. 64 independent lanes hide the FMA latency. No false
/// negatives; the exact pass decides the counts.
macro_rules! fma_any {
    ($name:ident, $t:ty) => {
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

/// Masked-row level 0 for f64 with AVX2 + FMA, which has no 64-bit integer maximum (LLVM's
/// stand-in for the portable test reads at a fifth of the floor): per vector, `y = max(+0, x)`,
/// which is ±0 for -Inf and any other negative `x`, and `x` itself when it is NaN (`vmaxpd`
/// returns its second operand when either is NaN); then `acc = y * 0 + acc` as in `fma_any`,
/// which turns NaN exactly when `x` is NaN or +Inf. Two instructions per vector, four
/// accumulators. Exact: the final test asks for a NaN lane, not for nonzero bits.
///
/// # Safety
///
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn ymm_masked_any_f64(row: &[f64]) -> bool {
    use core::arch::x86_64::*;
    let zero = _mm256_setzero_pd();
    let mut acc = [zero; 4];
    let mut blocks = row.chunks_exact(16);
    for b in &mut blocks {
        for (j, a) in acc.iter_mut().enumerate() {
            // SAFETY: `b` holds 16 values, so values 4j..4j+4 are in bounds; `loadu` has no
            // alignment requirement.
            let x = unsafe { _mm256_loadu_pd(b.as_ptr().add(4 * j)) };
            *a = _mm256_fmadd_pd(_mm256_max_pd(zero, x), zero, *a);
        }
    }
    let m = _mm256_or_pd(_mm256_or_pd(acc[0], acc[1]), _mm256_or_pd(acc[2], acc[3]));
    _mm256_movemask_pd(_mm256_cmp_pd::<_CMP_UNORD_Q>(m, m)) != 0
        || any_masked_f64(blocks.remainder())
}
ymm_max_any!(ymm_any_bf16, bf16, 0x7F80, any_bf16);

/// Generates, for one element type, the x86 paths: AVX2 + FMA (the level-0 test on the
/// line-aligned middle, then the exact pass, compiled for them), the exact pass alone under
/// AVX2 + FMA, the AVX-512 path and, for the 16-bit types, the AVX-512BW path. The 512-bit
/// paths answer `None` where the CPU or the OS lacks what they need.
macro_rules! tiers {
    ($t:ty, $any_int:ident, $exact:ident,
     $avx2:ident, $avx2_exact:ident, $avx2_any:expr,
     $avx512:ident, $avx512_ok:path, $zmm_any:path
     $(, $bw:ident, $bw_ok:path, $bw_any:path)?) => {
        /// The level-0 test on the line-aligned middle (the ends by the portable test), then
        /// the exact pass, all compiled for AVX2 + FMA.
        #[target_feature(enable = "avx2,fma")]
        pub(super) fn $avx2(row: &[$t]) -> NonFinite {
            let any: fn(&[$t]) -> bool = $avx2_any;
            let (head, mid, tail) = split_aligned(row);
            if any(mid) || $any_int(head) || $any_int(tail) {
                $exact(row)
            } else {
                NonFinite::default()
            }
        }

        /// The exact pass alone, compiled for AVX2 + FMA (the AVX-512 path's slow path).
        #[target_feature(enable = "avx2,fma")]
        fn $avx2_exact(row: &[$t]) -> NonFinite {
            $exact(row)
        }

        /// The AVX-512 path: one fused multiply-add per 64-byte line as the level-0 test (see
        /// [`zmm`]), then, only if it fires, the AVX2 exact pass. `None` where the CPU or the
        /// OS lacks what it needs.
        #[inline]
        pub(super) fn $avx512(row: &[$t]) -> Option<NonFinite> {
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
        /// maximum of `bits & !SIGN` per 64-byte line as the level-0 test (see [`zmm`]), then,
        /// only if it fires, the AVX2 exact pass. `None` where the CPU or the OS lacks what it
        /// needs.
        #[inline]
        pub(super) fn $bw(row: &[$t]) -> Option<NonFinite> {
            let maybe = wide_first_pass(row, $bw_ok(), $bw_any, $any_int)?;
            Some(if maybe {
                // SAFETY: `$bw_ok` implies AVX2 and FMA.
                unsafe { $avx2_exact(row) }
            } else {
                NonFinite::default()
            })
        }
        )?
    };
}

tiers!(
    f32,
    any_f32,
    exact_f32,
    avx2_f32,
    avx2_exact_f32,
    fma_any_f32,
    avx512_f32,
    avx512,
    zmm::any_ps
);
tiers!(
    f64,
    any_f64,
    exact_f64,
    avx2_f64,
    avx2_exact_f64,
    fma_any_f64,
    avx512_f64,
    avx512,
    zmm::any_pd
);
tiers!(
    f16,
    any_f16,
    exact_f16,
    avx2_f16,
    avx2_exact_f16,
    |mid| {
        // SAFETY: only the AVX2 path calls it, on the `split_aligned` middle.
        unsafe { ymm_any_f16(mid) }
    },
    avx512_f16,
    avx512fp16,
    zmm::any_ph,
    avx512bw_f16,
    avx512bw,
    zmm::any_w_f16
);
tiers!(
    bf16,
    any_bf16,
    exact_bf16,
    avx2_bf16,
    avx2_exact_bf16,
    |mid| {
        // SAFETY: only the AVX2 path calls it, on the `split_aligned` middle.
        unsafe { ymm_any_bf16(mid) }
    },
    avx512_bf16,
    avx512fp16,
    zmm::any_ph,
    avx512bw_bf16,
    avx512bw,
    zmm::any_w_bf16
);

/// Generates, for one element type, the x86 paths of masked rows (see the portable
/// `any_masked_*`): AVX2 + FMA (`$avx2_any` on the line-aligned middle, the portable test,
/// compiled for them, on the ends) and the 512-bit one (`$zmm` where `$zmm_ok`), each followed, only if the test
/// fires, by the AVX2 exact pass of `tiers!` without its -Inf count.
macro_rules! masked_tiers {
    ($t:ty, $any_masked:ident, $exact:ident, $avx2_exact:ident,
     $avx2:ident, $avx2_any:expr, $wide:ident, $zmm_ok:path, $zmm:path) => {
        /// The masked-row path compiled for AVX2 + FMA.
        #[target_feature(enable = "avx2,fma")]
        pub(super) fn $avx2(row: &[$t]) -> NonFinite {
            let any: fn(&[$t]) -> bool = $avx2_any;
            let (head, mid, tail) = split_aligned(row);
            if any(mid) || $any_masked(head) || $any_masked(tail) {
                faults_of_masked($exact(row))
            } else {
                NonFinite::default()
            }
        }

        /// The 512-bit masked-row path: a signed and an unsigned maximum per 64-byte line (see
        /// [`zmm`]), then, only if a NaN or a +Inf is there, the AVX2 exact pass. `None` where
        /// the CPU or the OS lacks what it needs.
        #[inline]
        pub(super) fn $wide(row: &[$t]) -> Option<NonFinite> {
            let fault = wide_first_pass(row, $zmm_ok(), $zmm, $any_masked)?;
            Some(if fault {
                // SAFETY: `$zmm_ok` implies AVX2 and FMA.
                faults_of_masked(unsafe { $avx2_exact(row) })
            } else {
                NonFinite::default()
            })
        }
    };
}

masked_tiers!(
    f32,
    any_masked_f32,
    exact_f32,
    avx2_exact_f32,
    avx2_masked_f32,
    any_masked_f32,
    avx512_masked_f32,
    avx512,
    zmm::masked_ps
);
masked_tiers!(
    f64,
    any_masked_f64,
    exact_f64,
    avx2_exact_f64,
    avx2_masked_f64,
    |mid| {
        // SAFETY: only the AVX2 + FMA path calls it.
        unsafe { ymm_masked_any_f64(mid) }
    },
    avx512_masked_f64,
    avx512,
    zmm::masked_pd
);
masked_tiers!(
    f16,
    any_masked_f16,
    exact_f16,
    avx2_exact_f16,
    avx2_masked_f16,
    any_masked_f16,
    avx512_masked_f16,
    avx512bw,
    zmm::masked_w_f16
);
masked_tiers!(
    bf16,
    any_masked_bf16,
    exact_bf16,
    avx2_exact_bf16,
    avx2_masked_bf16,
    any_masked_bf16,
    avx512_masked_bf16,
    avx512bw,
    zmm::masked_w_bf16
);
