//! NaN/Inf scanning of logits against the memory-read floor, measured in the same run, per type
//! (f32, f16, bf16, f64) for one 128k-vocabulary row and for a batch of 64 such rows:
//!
//! - floor: a plain summing pass over the same bytes (wrapping `u64` adds, 8 accumulators),
//!   compiled with AVX2 when the CPU has it, like the scanner, so the floor is the fastest read
//!   of the buffer this build can do;
//! - naive: `is_nan()` / `is_infinite()` / sign per element (the obvious exact counter), and
//!   `iter().filter(|x| !x.is_finite()).count()` (the obvious filter, total only);
//! - scan: `tokenmeter_quality::count_non_finite`.
//!
//! Target: scan >= 90% of the floor's GB/s for f32, f16 and bf16.

// criterion_group! generates undocumented public functions.
#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use half::{bf16, f16};
use tokenmeter_benches::ns_per_op;
use tokenmeter_quality::count_non_finite;
use tokenmeter_quality::nonfinite::{Logit, NaiveClassify, count_non_finite_naive};

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

/// The floor: sums the buffer's bytes as u64 words (plus the unaligned ends as bytes).
fn floor_sum<T: Copy>(row: &[T]) -> u64 {
    // SAFETY: any initialized bytes are valid u64 and u8 values; align_to only reinterprets.
    let (head, words, tail) = unsafe { row.align_to::<u64>() };
    let ends = head.iter().chain(tail).fold(0u64, |a, &x| {
        // SAFETY: as above, for the unaligned ends, read bytewise.
        let bytes =
            unsafe { std::slice::from_raw_parts((&x as *const T).cast::<u8>(), size_of::<T>()) };
        bytes.iter().fold(a, |a, &b| a.wrapping_add(u64::from(b)))
    });
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: AVX2 is present, checked just above.
        return unsafe { sum_words_avx2(words) }.wrapping_add(ends);
    }
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

fn measure<T: Logit + NaiveClassify + Finite>(
    name: &str,
    from_f32: impl Fn(f32) -> T,
    targeted: bool,
) {
    for (shape, rows) in [("1 row of 128k", 1), ("64 rows of 128k", BATCH)] {
        let data = logits(VOCAB * rows, &from_f32);
        let bytes = std::mem::size_of_val(data.as_slice());
        assert_eq!(count_non_finite(&data), count_non_finite_naive(&data));
        let floor = ns_per_op(1, || {
            black_box(floor_sum(black_box(&data)));
        });
        let scan = ns_per_op(1, || {
            black_box(count_non_finite(black_box(&data)));
        });
        let naive = ns_per_op(1, || {
            black_box(count_non_finite_naive(black_box(&data)));
        });
        let filter = ns_per_op(1, || {
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
            floor / naive,
            floor / filter,
        );
    }
}

fn ratios() {
    #[cfg(target_arch = "x86_64")]
    println!(
        "nonfinite scan: avx2={} fma={} (runtime detection; built for the default target)",
        std::arch::is_x86_feature_detected!("avx2"),
        std::arch::is_x86_feature_detected!("fma")
    );
    measure("f32", |x| x, true);
    measure("f16", f16::from_f32, true);
    measure("bf16", bf16::from_f32, true);
    measure("f64", f64::from, false);
}

fn criterion_benches(c: &mut Criterion) {
    ratios();
    let f32s = logits(VOCAB, |x| x);
    let f16s = logits(VOCAB, f16::from_f32);
    let bf16s = logits(VOCAB, bf16::from_f32);
    c.bench_function("nonfinite/floor f32 128k", |b| {
        b.iter(|| floor_sum(black_box(&f32s)))
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
