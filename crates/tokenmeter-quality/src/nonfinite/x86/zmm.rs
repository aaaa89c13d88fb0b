//! The AVX-512 level-0 kernels, in inline assembly: each reads whole 64-byte lines and answers
//! whether some value in them may be non-finite.
//!
//! The FMA kernels are one fused multiply-add per 64-byte line, `acc = x * 0 + acc`, into eight
//! independent 512-bit accumulators (the FMA latency is 4 cycles at two per cycle): `x * 0` is
//! ±0 for every finite `x` (subnormals and the largest values included), and `+0 + ±0 = +0`, so
//! the accumulators stay all-zero bits until a NaN or an infinity comes by (`inf * 0` and
//! anything with a NaN operand are NaN, and NaN sticks). The kernel answers "some accumulator
//! bit is set". That is one instruction per line, as many as the floor's one add per line; the
//! AVX2 integer test for 16-bit types needs two per 32 bytes, four times as many.
//!
//! - f32, f64: `vfmadd231ps` / `vfmadd231pd` (AVX-512F).
//! - f16: `vfmadd231ph` (AVX512-FP16), the exact IEEE binary16 test.
//! - bf16: the same `vfmadd231ph` on the same bits. A bf16 value is non-finite when its eight
//!   exponent bits (14..7) are all ones; then bits 14..10, the binary16 exponent, are all ones
//!   too, so the binary16 view of the same bits is NaN or infinite and the test fires: no false
//!   negatives. It also fires for finite bf16 values with bits 14..10 set, |x| >= 2^121; then
//!   the exact pass finds nothing to count and returns zeros, so the counts stay exact and
//!   only such rows (for example rows masked with `bf16::MIN` instead of -inf) pay for a second
//!   pass.
//!
//! The AVX-512BW kernels (f16 and bf16 on CPUs without AVX512-FP16) take the unsigned maximum
//! of `bits & !SIGN` per line, two integer instructions, and are exact on their own.
//!
//! The masked-row kernels (any NaN or +Inf, -Inf allowed) take a signed and an unsigned maximum
//! of the bits per line, two integer instructions (AVX-512F for f32 and f64, AVX-512BW for f16
//! and bf16), and are exact on their own too.
//!
//! A rounding mode other than to-nearest could leave a -0 in an accumulator (in round-down,
//! `+0 + -0 = -0`); that only sends the row through the exact pass.
//!
//! The kernels are inline assembly rather than `core::arch` intrinsics, which need Rust 1.89
//! for AVX-512 (the workspace's `rust-version` is 1.88); the assembler needs no target feature.

use core::arch::asm;

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
        /// The CPU and the OS must support the instruction (see [`avx512`](super::avx512) and
        /// [`avx512fp16`](super::avx512fp16)), and `ptr` must be valid for reads of
        /// `64 * lines` bytes.
        #[inline]
        pub(in crate::nonfinite) unsafe fn $name(ptr: *const u8, lines: usize) -> bool {
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
        /// The CPU and the OS must support AVX-512BW (see [`avx512bw`](super::avx512bw)), and
        /// `ptr` must be valid for reads of `64 * lines` bytes.
        #[inline]
        pub(in crate::nonfinite) unsafe fn $name(ptr: *const u8, lines: usize) -> bool {
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

/// Generates one masked-row level-0 kernel (see the portable `any_masked_*`): per 64-byte line,
/// one aligned load and a signed and an unsigned maximum of the bits (`$maxs`, `$maxu`; folding
/// the load into both would read each line twice, and with the prefetch that is one load more
/// than the two per cycle the core issues), into four accumulators each, which start at the largest patterns that are no fault
/// (`$below_inf` = +Inf - 1 and `$neg_inf`, each repeated over 64 bits); at the end, an
/// accumulator moved above its start (`$sub` leaves a lane nonzero) means a NaN or a +Inf.
macro_rules! zmm_masked_any {
    ($(#[$doc:meta])* $name:ident, $maxs:literal, $maxu:literal, $sub:literal,
     $below_inf:literal, $neg_inf:literal) => {
        $(#[$doc])*
        ///
        /// True exactly when some value in the `lines` 64-byte lines at `ptr` is a NaN or a
        /// +Inf (-Inf does not count; this test has no false alarms).
        ///
        /// # Safety
        ///
        /// The CPU and the OS must support the instructions (see [`avx512`](super::avx512) and
        /// [`avx512bw`](super::avx512bw)), and `ptr` must be valid for reads of `64 * lines`
        /// bytes.
        #[inline]
        pub(in crate::nonfinite) unsafe fn $name(ptr: *const u8, lines: usize) -> bool {
            let hit: u8;
            // SAFETY: the caller guarantees the instruction set and that the `64 * lines`
            // bytes at `ptr` are readable; the code reads exactly those bytes (eight lines per
            // iteration, then the rest one by one), writes no memory and no register but
            // those declared (all 16 vector registers, as `vzeroupper` clears the upper halves
            // of all of them; no mask register), and leaves the upper vector state clean. The
            // `prefetcht0` hints name addresses up to 2.5 KiB past the lines; a prefetch is
            // not a memory access (it never faults, on any address, and changes no
            // architectural state), so that reads nothing outside the row.
            unsafe {
                asm!(
                    "vpbroadcastq zmm8, {below_inf}",
                    "vpbroadcastq zmm9, {neg_inf}",
                    "vmovdqa64 zmm0, zmm8",
                    "vmovdqa64 zmm1, zmm8",
                    "vmovdqa64 zmm2, zmm8",
                    "vmovdqa64 zmm3, zmm8",
                    "vmovdqa64 zmm4, zmm9",
                    "vmovdqa64 zmm5, zmm9",
                    "vmovdqa64 zmm6, zmm9",
                    "vmovdqa64 zmm7, zmm9",
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
                    "vmovdqa64 zmm10, zmmword ptr [{p}]",
                    "vmovdqa64 zmm11, zmmword ptr [{p} + 64]",
                    "vmovdqa64 zmm12, zmmword ptr [{p} + 128]",
                    "vmovdqa64 zmm13, zmmword ptr [{p} + 192]",
                    concat!($maxs, " zmm0, zmm0, zmm10"),
                    concat!($maxu, " zmm4, zmm4, zmm10"),
                    concat!($maxs, " zmm1, zmm1, zmm11"),
                    concat!($maxu, " zmm5, zmm5, zmm11"),
                    concat!($maxs, " zmm2, zmm2, zmm12"),
                    concat!($maxu, " zmm6, zmm6, zmm12"),
                    concat!($maxs, " zmm3, zmm3, zmm13"),
                    concat!($maxu, " zmm7, zmm7, zmm13"),
                    "vmovdqa64 zmm10, zmmword ptr [{p} + 256]",
                    "vmovdqa64 zmm11, zmmword ptr [{p} + 320]",
                    "vmovdqa64 zmm12, zmmword ptr [{p} + 384]",
                    "vmovdqa64 zmm13, zmmword ptr [{p} + 448]",
                    concat!($maxs, " zmm0, zmm0, zmm10"),
                    concat!($maxu, " zmm4, zmm4, zmm10"),
                    concat!($maxs, " zmm1, zmm1, zmm11"),
                    concat!($maxu, " zmm5, zmm5, zmm11"),
                    concat!($maxs, " zmm2, zmm2, zmm12"),
                    concat!($maxu, " zmm6, zmm6, zmm12"),
                    concat!($maxs, " zmm3, zmm3, zmm13"),
                    concat!($maxu, " zmm7, zmm7, zmm13"),
                    "add {p}, 512",
                    "dec {blocks}",
                    "jnz 2b",
                    "3:",
                    "test {rest}, {rest}",
                    "jz 5f",
                    "4:",
                    "vmovdqa64 zmm10, zmmword ptr [{p}]",
                    concat!($maxs, " zmm0, zmm0, zmm10"),
                    concat!($maxu, " zmm4, zmm4, zmm10"),
                    "add {p}, 64",
                    "dec {rest}",
                    "jnz 4b",
                    "5:",
                    concat!($maxs, " zmm0, zmm0, zmm1"),
                    concat!($maxs, " zmm2, zmm2, zmm3"),
                    concat!($maxs, " zmm0, zmm0, zmm2"),
                    concat!($maxu, " zmm4, zmm4, zmm5"),
                    concat!($maxu, " zmm6, zmm6, zmm7"),
                    concat!($maxu, " zmm4, zmm4, zmm6"),
                    // The accumulators never go below their start: nonzero iff above it.
                    concat!($sub, " zmm0, zmm0, zmm8"),
                    concat!($sub, " zmm4, zmm4, zmm9"),
                    "vpord zmm0, zmm0, zmm4",
                    "vextracti64x4 ymm1, zmm0, 1",
                    "vpor ymm0, ymm0, ymm1",
                    "vptest ymm0, ymm0",
                    "setnz {hit}",
                    "vzeroupper",
                    below_inf = in(reg) $below_inf,
                    neg_inf = in(reg) $neg_inf,
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

zmm_masked_any!(
    /// f32 masked-row level 0 (AVX-512F).
    masked_ps,
    "vpmaxsd",
    "vpmaxud",
    "vpsubd",
    0x7F7F_FFFF_7F7F_FFFFu64,
    0xFF80_0000_FF80_0000u64
);
zmm_masked_any!(
    /// f64 masked-row level 0 (AVX-512F).
    masked_pd,
    "vpmaxsq",
    "vpmaxuq",
    "vpsubq",
    0x7FEF_FFFF_FFFF_FFFFu64,
    0xFFF0_0000_0000_0000u64
);
zmm_masked_any!(
    /// f16 masked-row level 0 (AVX-512BW).
    masked_w_f16,
    "vpmaxsw",
    "vpmaxuw",
    "vpsubw",
    0x7BFF_7BFF_7BFF_7BFFu64,
    0xFC00_FC00_FC00_FC00u64
);
zmm_masked_any!(
    /// bf16 masked-row level 0 (AVX-512BW).
    masked_w_bf16,
    "vpmaxsw",
    "vpmaxuw",
    "vpsubw",
    0x7F7F_7F7F_7F7F_7F7Fu64,
    0xFF80_FF80_FF80_FF80u64
);
