//! The portable path: the level-0 test and the exact chunked counter as plain Rust that LLVM
//! vectorizes for whatever target the crate is built for (SSE2 on default x86-64, NEON on
//! aarch64). The x86 tiers reuse both pieces: the exact pass, and the level-0 test on the
//! ends of a row that their kernels read as whole 64-byte lines.

use half::{bf16, f16};
use tokenmeter_core::NonFinite;

use super::{CHUNK_BYTES, LINE_BYTES, faults_of_masked};

/// Generates, for one element type (`$u` and `$i` its bits as unsigned and signed integers): the
/// whole-row "any non-finite?" test, the exact chunked counter and the portable path that chains
/// them; and for masked rows, the "any NaN or +Inf?" test and the path that chains it with the
/// exact counter. All `#[inline(always)]`, written so that LLVM vectorizes their loops.
macro_rules! portable {
    ($t:ty, $u:ty, $i:ty, $abs:expr, $inf:expr, $sign:expr,
     $any_int:ident, $exact:ident, $count:ident, $any_masked:ident, $count_masked:ident) => {
        /// Level 0: the largest magnitude pattern in the row reaches the exponent mask exactly
        /// when the row holds a non-finite value (`and` + unsigned `max` per vector, into four
        /// vectors of independent accumulators).
        #[inline(always)]
        pub(super) fn $any_int(row: &[$t]) -> bool {
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
        pub(super) fn $exact(row: &[$t]) -> NonFinite {
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
        pub(super) fn $count(row: &[$t]) -> NonFinite {
            if $any_int(row) {
                $exact(row)
            } else {
                NonFinite::default()
            }
        }

        /// Level 0 of a masked row: whether it holds a NaN or a +Inf; -Inf, the mask, does not
        /// count. Exact. Read as signed integers, +Inf and the positive NaNs are the largest
        /// patterns; read as unsigned ones, the negative NaNs are, just above -Inf. So one
        /// signed and one unsigned `max` per vector (two instructions, as in `$any_int`), into
        /// accumulators that start at the largest pattern that is no fault.
        #[inline(always)]
        pub(super) fn $any_masked(row: &[$t]) -> bool {
            const INF: $u = $inf;
            const NEG_INF: $u = $inf | $sign;
            const BELOW_INF: $i = (INF - 1) as $i;
            const L: usize = 128 / core::mem::size_of::<$t>();
            let mut pos = [BELOW_INF; L];
            let mut neg = [NEG_INF; L];
            let mut lanes = row.chunks_exact(L);
            for c in &mut lanes {
                for j in 0..L {
                    let b = c[j].to_bits();
                    pos[j] = pos[j].max(b as $i);
                    neg[j] = neg[j].max(b);
                }
            }
            let mut pos = pos.iter().fold(BELOW_INF, |m, &p| m.max(p));
            let mut neg = neg.iter().fold(NEG_INF, |m, &n| m.max(n));
            for &x in lanes.remainder() {
                let b = x.to_bits();
                pos = pos.max(b as $i);
                neg = neg.max(b);
            }
            pos > BELOW_INF || neg > NEG_INF
        }

        /// The portable path of a masked row: NaN and +Inf counted exactly, -Inf not at all.
        #[inline(always)]
        pub(super) fn $count_masked(row: &[$t]) -> NonFinite {
            if $any_masked(row) {
                faults_of_masked($exact(row))
            } else {
                NonFinite::default()
            }
        }
    };
}

portable!(
    f32,
    u32,
    i32,
    0x7FFF_FFFF,
    0x7F80_0000,
    0x8000_0000,
    any_f32,
    exact_f32,
    count_f32,
    any_masked_f32,
    count_masked_f32
);
portable!(
    f64,
    u64,
    i64,
    0x7FFF_FFFF_FFFF_FFFF,
    0x7FF0_0000_0000_0000,
    0x8000_0000_0000_0000,
    any_f64,
    exact_f64,
    count_f64,
    any_masked_f64,
    count_masked_f64
);
portable!(
    f16,
    u16,
    i16,
    0x7FFF,
    0x7C00,
    0x8000,
    any_f16,
    exact_f16,
    count_f16,
    any_masked_f16,
    count_masked_f16
);
portable!(
    bf16,
    u16,
    i16,
    0x7FFF,
    0x7F80,
    0x8000,
    any_bf16,
    exact_bf16,
    count_bf16,
    any_masked_bf16,
    count_masked_bf16
);
