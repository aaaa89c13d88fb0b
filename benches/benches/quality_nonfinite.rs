//! NaN/Inf scanning of logits against the memory-read floor, measured in the same run, per type
//! (f32, f16, bf16, f64) for one 128k-vocabulary row and for a batch of 64 such rows:
//!
//! - floor: a plain summing pass over the same bytes (wrapping `u64` adds over the 64-byte
//!   aligned middle, bytewise over the ends), with AVX-512F when the CPU has it (one `vpaddq` per
//!   64-byte line), else AVX2, like the scanner, so the floor is the fastest plain read of the
//!   buffer this build can do;
//! - naive: `is_nan()` / `is_infinite()` / sign per element (the obvious exact counter), and
//!   `iter().filter(|x| !x.is_finite()).count()` (the obvious filter, total only);
//! - scan: `tokenmeter_quality::count_non_finite`.
//!
//! Each operation is timed in alternating batches with its floor (`ns_per_call_pair`), so that
//! on a shared machine both see the same disturbances.
//!
//! Target: scan >= 90% of the floor's GB/s for f32, f16 and bf16.
//!
//! Masked logits (`count_faults(row, LogitsKind::Masked)`, where -Inf is the mask and not
//! counted), one 128k row, clean and half -Inf, next to each other. Target: the half -Inf row
//! >= 80% of the floor for f32, f16 and bf16 (issue 12).
//!
//! Also printed, without a target: the AVX2 fallback (what a CPU without AVX-512, or without
//! AVX-512BW/AVX512-FP16 for f16/bf16, runs) against the AVX2 floor; the AVX-512BW path for
//! f16/bf16 (what a CPU with AVX-512 but without AVX512-FP16, such as AMD Zen 4, runs) against
//! the widest floor; and single rows that the fast test sends through the exact pass: rows
//! half -inf read as raw logits (where every -Inf is a fault), and bf16 rows masked with `bf16::MIN` (finite, but a false
//! alarm for the AVX512-FP16 test; the AVX-512BW test is exact and skips the exact pass).

// criterion_group! generates undocumented public functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use half::{bf16, f16};
use tokenmeter_benches::ns_per_call_pair;
use tokenmeter_core::NonFinite;
use tokenmeter_quality::nonfinite::Logit;
use tokenmeter_quality::nonfinite::internals::{
    self as nonfinite, NaiveClassify, count_non_finite_naive,
};
use tokenmeter_quality::{LogitsKind, count_faults, count_non_finite};

const VOCAB: usize = 128 * 1024;
const BATCH: usize = 64;

#[inline(always)]
fn sum_words(words: &[u64]) -> u64 {
    let mut acc = [0u64; 8];
    let mut it = words.chunks_exact(8);
    for c in &mut it {
        for i in 0..8 {
            acc[i] = acc[i].wrapping_add(c[i]);
        }
    }
    let mut s = acc.iter().fold(0u64, |a, &x| a.wrapping_add(x));
    for &x in it.remainder() {
        s = s.wrapping_add(x);
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sum_words_avx2(words: &[u64]) -> u64 {
    sum_words(words)
}

/// Sums the `lines` 64-byte lines at `ptr` as `u64` words with AVX-512F: one `vpaddq` per line
/// (the load folded in), eight lines per iteration into four accumulators, the loop aligned as
/// LLVM aligns its own. Inline assembly, like the scanner's AVX-512 kernels (the workspace's
/// Rust 1.88 has no AVX-512 intrinsics; LLVM's auto-vectorization of `sum_words` for AVX-512
/// emits gathers, at a third of this speed).
///
/// # Safety
///
/// The CPU and the OS must support AVX-512F, and `ptr` must be valid for reads of `64 * lines`
/// bytes.
#[cfg(target_arch = "x86_64")]
unsafe fn sum_lines_avx512(ptr: *const u8, lines: usize) -> u64 {
    let sum: u64;
    // SAFETY: the caller guarantees AVX-512F and that the `64 * lines` bytes at `ptr` are
    // readable; the code reads exactly those, writes no memory and no register but those
    // declared (all 16 vector registers: `vzeroupper` clears their upper halves).
    unsafe {
        std::arch::asm!(
            "vpxor xmm0, xmm0, xmm0",
            "vpxor xmm1, xmm1, xmm1",
            "vpxor xmm2, xmm2, xmm2",
            "vpxor xmm3, xmm3, xmm3",
            "test {blocks}, {blocks}",
            "jz 3f",
            ".p2align 6",
            "2:",
            "vpaddq zmm0, zmm0, zmmword ptr [{p}]",
            "vpaddq zmm1, zmm1, zmmword ptr [{p} + 64]",
            "vpaddq zmm2, zmm2, zmmword ptr [{p} + 128]",
            "vpaddq zmm3, zmm3, zmmword ptr [{p} + 192]",
            "vpaddq zmm0, zmm0, zmmword ptr [{p} + 256]",
            "vpaddq zmm1, zmm1, zmmword ptr [{p} + 320]",
            "vpaddq zmm2, zmm2, zmmword ptr [{p} + 384]",
            "vpaddq zmm3, zmm3, zmmword ptr [{p} + 448]",
            "add {p}, 512",
            "dec {blocks}",
            "jnz 2b",
            "3:",
            "test {rest}, {rest}",
            "jz 5f",
            "4:",
            "vpaddq zmm0, zmm0, zmmword ptr [{p}]",
            "add {p}, 64",
            "dec {rest}",
            "jnz 4b",
            "5:",
            "vpaddq zmm0, zmm0, zmm1",
            "vpaddq zmm2, zmm2, zmm3",
            "vpaddq zmm0, zmm0, zmm2",
            "vextracti64x4 ymm1, zmm0, 1",
            "vpaddq ymm0, ymm0, ymm1",
            "vextracti128 xmm1, ymm0, 1",
            "vpaddq xmm0, xmm0, xmm1",
            "vpshufd xmm1, xmm0, 0x4e",
            "vpaddq xmm0, xmm0, xmm1",
            "vmovq {sum}, xmm0",
            "vzeroupper",
            p = inout(reg) ptr => _,
            blocks = inout(reg) lines / 8 => _,
            rest = inout(reg) lines % 8 => _,
            sum = out(reg) sum,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
            options(pure, readonly, nostack),
        );
    }
    sum
}

/// Which plain read the floor uses.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Width {
    /// The widest this machine has: AVX-512F, else AVX2, else the default target.
    Widest,
    /// AVX2 (else the default target): the floor for the scanner's AVX2 fallback.
    Avx2,
}

/// The floor: sums the buffer's bytes, the 64-byte-aligned middle as u64 words (never a load
/// across a cache line, like the scanner) and the unaligned ends bytewise.
fn floor_sum<T: Copy>(row: &[T], width: Width) -> u64 {
    // SAFETY: the row's bytes are initialized, and any initialized byte is a valid u8; this
    // only reinterprets them, for the row's lifetime.
    let bytes = unsafe {
        std::slice::from_raw_parts(row.as_ptr().cast::<u8>(), std::mem::size_of_val(row))
    };
    let pre = bytes.as_ptr().align_offset(64).min(bytes.len());
    let (head, rest) = bytes.split_at(pre);
    let (mid, tail) = rest.split_at(rest.len() / 64 * 64);
    let ends = head
        .iter()
        .chain(tail)
        .fold(0u64, |a, &b| a.wrapping_add(u64::from(b)));
    #[cfg(target_arch = "x86_64")]
    if width == Width::Widest && std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: AVX-512F is present (std's detection also checks that the OS saves the
        // 512-bit state), and `mid` is `mid.len()` readable bytes, a multiple of 64.
        return unsafe { sum_lines_avx512(mid.as_ptr(), mid.len() / 64) }.wrapping_add(ends);
    }
    // SAFETY: any 8 initialized bytes are a valid u64; align_to only reinterprets.
    let (h, words, t) = unsafe { mid.align_to::<u64>() };
    let ends = h
        .iter()
        .chain(t)
        .fold(ends, |a, &b| a.wrapping_add(u64::from(b)));
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present, checked just above.
        return unsafe { sum_words_avx2(words) }.wrapping_add(ends);
    }
    let _ = width;
    sum_words(words).wrapping_add(ends)
}

/// Deterministic logits in [-20, 20).
fn logits<T>(n: usize, from_f32: impl Fn(f32) -> T) -> Vec<T> {
    let mut x: u32 = 0x1234_5678;
    (0..n)
        .map(|_| {
            x = x.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            from_f32((x >> 8) as f32 / (1u32 << 24) as f32 * 40.0 - 20.0)
        })
        .collect()
}

/// `is_finite` for the filter variant.
trait Finite: Copy {
    fn finite(self) -> bool;
}
impl Finite for f32 {
    fn finite(self) -> bool {
        self.is_finite()
    }
}
impl Finite for f64 {
    fn finite(self) -> bool {
        self.is_finite()
    }
}
impl Finite for f16 {
    fn finite(self) -> bool {
        self.is_finite()
    }
}
impl Finite for bf16 {
    fn finite(self) -> bool {
        self.is_finite()
    }
}

fn gbs(bytes: usize, ns: f64) -> f64 {
    bytes as f64 / ns
}

/// A path the dispatch may not pick on this machine, measured by itself: its name in the RATIO
/// line, the kernel (`None` where the CPU lacks it) and the floor to compare it with.
type Path<'a, T> = (&'a str, fn(&[T]) -> Option<NonFinite>, Width);

/// A kernel by itself, `None` where the CPU lacks it.
type Kernel<T> = fn(&[T]) -> Option<NonFinite>;

fn measure<T: Logit + NaiveClassify + Finite>(
    name: &str,
    from_f32: impl Fn(f32) -> T,
    targeted: bool,
    paths: &[Path<'_, T>],
    masks: &[(&str, T)],
    masked_avx2: Kernel<T>,
) {
    for (shape, rows) in [("1 row of 128k", 1), ("64 rows of 128k", BATCH)] {
        let data = logits(VOCAB * rows, &from_f32);
        let bytes = std::mem::size_of_val(data.as_slice());
        assert_eq!(count_non_finite(&data), count_non_finite_naive(&data));
        // Each operation in alternating batches with its floor: this machine is shared.
        let widest = || {
            black_box(floor_sum(black_box(&data), Width::Widest));
        };
        let (floor, scan) = ns_per_call_pair(widest, || {
            black_box(count_non_finite(black_box(&data)));
        });
        let (naive_floor, naive) = ns_per_call_pair(widest, || {
            black_box(count_non_finite_naive(black_box(&data)));
        });
        let (filter_floor, filter) = ns_per_call_pair(widest, || {
            black_box(black_box(&data).iter().filter(|x| !x.finite()).count());
        });
        let ratio = floor / scan;
        let verdict = match (targeted, ratio >= 0.9) {
            (false, _) => "no target",
            (true, true) => "target >= 0.90: met",
            (true, false) => "target >= 0.90: NOT met",
        };
        println!(
            "RATIO nonfinite scan {name} {shape} ({:.0} KiB): floor {:.1} GB/s, scan {:.1} GB/s, naive {:.1} GB/s, !is_finite filter {:.1} GB/s; scan/floor = {ratio:.2} ({verdict}), naive/floor = {:.2}, filter/floor = {:.2}",
            bytes as f64 / 1024.0,
            gbs(bytes, floor),
            gbs(bytes, scan),
            gbs(bytes, naive),
            gbs(bytes, filter),
            naive_floor / naive,
            filter_floor / filter,
        );
        for &(path, kernel, width) in paths {
            let Some(got) = kernel(&data) else {
                continue;
            };
            assert_eq!(got, count_non_finite_naive(&data));
            let (floor, scan) = ns_per_call_pair(
                || {
                    black_box(floor_sum(black_box(&data), width));
                },
                || {
                    black_box(kernel(black_box(&data)));
                },
            );
            let floor_name = match width {
                Width::Widest => "widest",
                Width::Avx2 => "AVX2",
            };
            println!(
                "RATIO nonfinite scan {name} {shape}, {path} vs {floor_name} floor: floor {:.1} GB/s, scan {:.1} GB/s; scan/floor = {:.2} (no target: not this machine's path)",
                gbs(bytes, floor),
                gbs(bytes, scan),
                floor / scan,
            );
        }
        if rows != 1 {
            continue;
        }
        // Masked logits (`LogitsKind::Masked`, issue 12): -Inf is the mask, not a fault, and is
        // not counted, so a row half -Inf should cost the one read a clean row does.
        let half_masked: Vec<T> = data
            .iter()
            .enumerate()
            .map(|(i, &x)| {
                if i % 2 == 0 {
                    from_f32(f32::NEG_INFINITY)
                } else {
                    x
                }
            })
            .collect();
        assert_eq!(
            count_faults(&half_masked, LogitsKind::Masked),
            NonFinite::default()
        );
        for (what, row) in [("clean", &data), ("half of it -inf", &half_masked)] {
            let (floor, scan) = ns_per_call_pair(
                || {
                    black_box(floor_sum(black_box(row), Width::Widest));
                },
                || {
                    black_box(count_faults(black_box(row), LogitsKind::Masked));
                },
            );
            let ratio = floor / scan;
            let verdict = match (targeted, ratio >= 0.8) {
                (false, _) => "no target",
                (true, true) => "target >= 0.80: met",
                (true, false) => "target >= 0.80: NOT met",
            };
            println!(
                "RATIO nonfinite masked scan {name} {shape}, {what}: floor {:.1} GB/s, scan {:.1} GB/s; scan/floor = {ratio:.2} ({verdict})",
                gbs(bytes, floor),
                gbs(bytes, scan),
            );
            if masked_avx2(row).is_none() {
                continue;
            }
            let (floor, scan) = ns_per_call_pair(
                || {
                    black_box(floor_sum(black_box(row), Width::Avx2));
                },
                || {
                    black_box(masked_avx2(black_box(row)));
                },
            );
            println!(
                "RATIO nonfinite masked scan {name} {shape}, {what}, AVX2 fallback vs AVX2 floor: floor {:.1} GB/s, scan {:.1} GB/s; scan/floor = {:.2} (no target: not this machine's path)",
                gbs(bytes, floor),
                gbs(bytes, scan),
                floor / scan,
            );
        }
        for &(what, mask) in masks {
            // Every other value masked: the fast test fires (unless the mask is finite and the
            // test exact), and the exact pass runs.
            let mut masked = data.clone();
            for x in masked.iter_mut().step_by(2) {
                *x = mask;
            }
            assert_eq!(count_non_finite(&masked), count_non_finite_naive(&masked));
            let widest = || {
                black_box(floor_sum(black_box(&masked), Width::Widest));
            };
            let (floor, scan) = ns_per_call_pair(widest, || {
                black_box(count_non_finite(black_box(&masked)));
            });
            println!(
                "RATIO nonfinite scan {name} {shape}, half of it {what} (raw logits): floor {:.1} GB/s, scan {:.1} GB/s; scan/floor = {:.2} (no target: the exact pass)",
                gbs(bytes, floor),
                gbs(bytes, scan),
                floor / scan,
            );
            for &(path, kernel, width) in paths {
                if width != Width::Widest || kernel(&masked).is_none() {
                    continue;
                }
                let (floor, scan) = ns_per_call_pair(widest, || {
                    black_box(kernel(black_box(&masked)));
                });
                println!(
                    "RATIO nonfinite scan {name} {shape}, half of it {what}, {path}: floor {:.1} GB/s, scan {:.1} GB/s; scan/floor = {:.2} (no target)",
                    gbs(bytes, floor),
                    gbs(bytes, scan),
                    floor / scan,
                );
            }
        }
    }
}

fn ratios() {
    #[cfg(target_arch = "x86_64")]
    println!(
        "nonfinite scan: avx2={} fma={} avx512f={} avx512bw={} (runtime detection; built for the default target); kernels: {}",
        std::arch::is_x86_feature_detected!("avx2"),
        std::arch::is_x86_feature_detected!("fma"),
        std::arch::is_x86_feature_detected!("avx512f"),
        std::arch::is_x86_feature_detected!("avx512bw"),
        nonfinite::kernels(),
    );
    println!(
        "nonfinite masked scan: kernels: {}",
        nonfinite::masked_kernels()
    );
    const AVX2: &str = "AVX2 fallback";
    const BW: &str = "AVX-512BW path (no AVX512-FP16)";
    measure(
        "f32",
        |x| x,
        true,
        &[(AVX2, nonfinite::avx2::f32, Width::Avx2)],
        &[("-inf", f32::NEG_INFINITY)],
        nonfinite::masked::avx2::f32,
    );
    measure(
        "f16",
        f16::from_f32,
        true,
        &[
            (AVX2, nonfinite::avx2::f16, Width::Avx2),
            (BW, nonfinite::avx512bw::f16, Width::Widest),
        ],
        &[("-inf", f16::NEG_INFINITY)],
        nonfinite::masked::avx2::f16,
    );
    measure(
        "bf16",
        bf16::from_f32,
        true,
        &[
            (AVX2, nonfinite::avx2::bf16, Width::Avx2),
            (BW, nonfinite::avx512bw::bf16, Width::Widest),
        ],
        &[("-inf", bf16::NEG_INFINITY), ("bf16::MIN", bf16::MIN)],
        nonfinite::masked::avx2::bf16,
    );
    measure(
        "f64",
        f64::from,
        false,
        &[(AVX2, nonfinite::avx2::f64, Width::Avx2)],
        &[],
        nonfinite::masked::avx2::f64,
    );
}

fn criterion_benches(c: &mut Criterion) {
    ratios();
    let f32s = logits(VOCAB, |x| x);
    let f16s = logits(VOCAB, f16::from_f32);
    let bf16s = logits(VOCAB, bf16::from_f32);
    c.bench_function("nonfinite/floor f32 128k", |b| {
        b.iter(|| floor_sum(black_box(&f32s), Width::Widest))
    });
    c.bench_function("nonfinite/scan f32 128k", |b| {
        b.iter(|| count_non_finite(black_box(&f32s)))
    });
    c.bench_function("nonfinite/scan f16 128k", |b| {
        b.iter(|| count_non_finite(black_box(&f16s)))
    });
    c.bench_function("nonfinite/scan bf16 128k", |b| {
        b.iter(|| count_non_finite(black_box(&bf16s)))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    targets = criterion_benches
}
criterion_main!(benches);
