//! The scanner's paths against the naive reference and hand-counted rows.

use half::{bf16, f16};
use tokenmeter_core::NonFinite;

use super::internals::{
    Class, NaiveClassify, avx2, avx512, avx512bw, count_non_finite_naive, masked, portable,
};
#[cfg(target_arch = "x86_64")]
use super::x86::{self, split_aligned, zmm};
use super::{CHUNK_BYTES, LINE_BYTES, Logit, LogitsKind, count_faults, count_non_finite};

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

/// Every kernel this machine can run: the dispatched one and each path by itself, for raw rows
/// and for masked ones.
trait Paths: Logit + NaiveClassify + core::fmt::Debug {
    fn paths(row: &[Self]) -> [(&'static str, Option<NonFinite>); 5];
    fn masked_paths(row: &[Self]) -> [(&'static str, Option<NonFinite>); 4];
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
            fn masked_paths(row: &[Self]) -> [(&'static str, Option<NonFinite>); 4] {
                [
                    ("masked dispatch", Some(count_faults(row, LogitsKind::Masked))),
                    ("masked portable", Some(masked::portable::$t(row))),
                    ("masked avx2", masked::avx2::$t(row)),
                    ("masked avx512", masked::avx512::$t(row)),
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

/// Every path counts `want` in `row` read as raw logits, and `want` without its -Inf read as
/// masked logits.
fn assert_all_paths<T: Paths>(row: &[T], want: NonFinite, ctx: impl core::fmt::Debug) {
    assert_eq!(count_faults(row, LogitsKind::Raw), want, "raw, {ctx:?}");
    for (path, got) in T::paths(row) {
        if let Some(got) = got {
            assert_eq!(got, want, "{path} path, {ctx:?}, len {}", row.len());
        }
    }
    let want = NonFinite { neg_inf: 0, ..want };
    for (path, got) in T::masked_paths(row) {
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
    // The masked-row kernels: silent on -Inf and finite lines, firing for NaN and +Inf.
    check(x86::avx512(), zmm::masked_ps, f32::NEG_INFINITY, f32::NAN);
    check(x86::avx512(), zmm::masked_ps, f32::NEG_INFINITY, -f32::NAN);
    check(x86::avx512(), zmm::masked_ps, f32::MAX, f32::INFINITY);
    check(
        x86::avx512(),
        zmm::masked_ps,
        -0.0f32,
        f32::from_bits(0xFF80_0001),
    );
    check(
        x86::avx512(),
        zmm::masked_pd,
        f64::NEG_INFINITY,
        f64::INFINITY,
    );
    check(x86::avx512(), zmm::masked_pd, f64::MIN, -f64::NAN);
    check(
        x86::avx512(),
        zmm::masked_pd,
        f64::MAX,
        f64::from_bits(0x7FF0_0000_0000_0001),
    );
    check(
        x86::avx512bw(),
        zmm::masked_w_f16,
        f16::NEG_INFINITY,
        f16::INFINITY,
    );
    check(
        x86::avx512bw(),
        zmm::masked_w_bf16,
        bf16::NEG_INFINITY,
        -bf16::NAN,
    );
    check(x86::avx512(), zmm::any_ps, f32::MIN, f32::NAN);
    check(x86::avx512(), zmm::any_ps, -0.0f32, f32::NEG_INFINITY);
    check(x86::avx512(), zmm::any_pd, f64::MAX, f64::INFINITY);
    check(x86::avx512fp16(), zmm::any_ph, f16::MIN, f16::NEG_INFINITY);
    check(x86::avx512fp16(), zmm::any_ph, f16::from_bits(1), f16::NAN);
    check(
        x86::avx512fp16(),
        zmm::any_ph,
        bf16::from_f32(-87.5),
        bf16::INFINITY,
    );
    check(x86::avx512bw(), zmm::any_w_f16, f16::MIN, f16::NEG_INFINITY);
    check(x86::avx512bw(), zmm::any_w_f16, f16::MAX, f16::NAN);
    check(
        x86::avx512bw(),
        zmm::any_w_f16,
        f16::from_bits(1),
        f16::INFINITY,
    );
    // The integer test has no false alarms: bf16::MIN and MAX lines stay silent.
    check(x86::avx512bw(), zmm::any_w_bf16, bf16::MIN, bf16::INFINITY);
    check(
        x86::avx512bw(),
        zmm::any_w_bf16,
        bf16::MAX,
        bf16::NEG_INFINITY,
    );
    check(
        x86::avx512bw(),
        zmm::any_w_bf16,
        bf16::from_f32(-87.5),
        bf16::from_bits(0x7F81),
    );
}

/// The AVX-512BW level-0 kernels are exact on their own: on a line of one 16-bit pattern
/// (in every lane), and on a line of a filler with the pattern in one lane, they fire exactly
/// for the non-finite patterns (the masked-row kernels: for NaN and +Inf, with finite and with
/// -Inf fillers), for all 65,536.
#[cfg(target_arch = "x86_64")]
#[test]
fn zmm_integer_kernels_are_exact_for_every_pattern() {
    if !x86::avx512bw() {
        return;
    }
    type Kernel = unsafe fn(*const u8, usize) -> bool;
    type FiresOn = fn(u16) -> bool;
    let f16_fault: FiresOn = |b| f16::from_bits(b).is_nan() || f16::from_bits(b) == f16::INFINITY;
    let bf16_fault: FiresOn =
        |b| bf16::from_bits(b).is_nan() || bf16::from_bits(b) == bf16::INFINITY;
    // (kernel, the patterns it fires on, a pattern it never fires on, to fill the rest with)
    let kernels: [(Kernel, FiresOn, u16); 6] = [
        (zmm::any_w_f16, |b| !f16::from_bits(b).is_finite(), 0x3C00),
        (zmm::any_w_bf16, |b| !bf16::from_bits(b).is_finite(), 0x3C00),
        (zmm::masked_w_f16, f16_fault, 0x3C00),
        (zmm::masked_w_f16, f16_fault, f16::NEG_INFINITY.to_bits()),
        (zmm::masked_w_bf16, bf16_fault, 0x3C00),
        (zmm::masked_w_bf16, bf16_fault, bf16::NEG_INFINITY.to_bits()),
    ];
    // Two lines plus room to align the start.
    let mut buf = vec![0u16; 3 * 32];
    let skip = split_aligned(&buf).0.len();
    for (kernel, fires_on, fill) in kernels {
        for bits in 0..=u16::MAX {
            let want = fires_on(bits);
            let line = &mut buf[skip..skip + 64];
            line[..32].fill(bits);
            line[32..].fill(fill);
            // SAFETY: the CPU has AVX-512BW (checked above); `line` holds two 64-byte
            // lines (aligned by `skip`) and the kernel reads the first one or both.
            let (one, two) = unsafe {
                (
                    kernel(line.as_ptr().cast(), 1),
                    kernel(line.as_ptr().cast(), 2),
                )
            };
            assert_eq!((one, two), (want, want), "all lanes {bits:#06x}");
            line[..32].fill(fill);
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

/// Rows of a JSON-mode step (-Inf but for a few allowed tokens) and of a half-masked one, at a
/// few alignments: as raw logits every -Inf counts, as masked ones nothing does, until a NaN or
/// a +Inf appears at one of the interesting positions (the ends, a line boundary, the middle).
#[test]
fn masked_rows_count_only_nan_and_pos_inf() {
    fn check<T: Paths>(mask: T, allowed: T, faults: &[(T, NonFinite)]) {
        let n = 3 * CHUNK_BYTES / core::mem::size_of::<T>() + 77;
        let lane = LINE_BYTES / core::mem::size_of::<T>();
        for every in [37, 2] {
            let mut buf = vec![mask; n + lane];
            for x in buf.iter_mut().step_by(every) {
                *x = allowed;
            }
            for offset in [0, 1, lane / 2 + 1] {
                let row = &mut buf[offset..offset + n];
                let masked = count_non_finite_naive(row).neg_inf;
                assert!(masked > n as u64 / 3);
                assert_all_paths(row, nf(0, 0, masked), (every, offset));
                for pos in [0, 1, lane - 1, lane, n / 2, n - lane, n - 1] {
                    for &(fault, adds) in faults {
                        let keep = std::mem::replace(&mut row[pos], fault);
                        let mut want = nf(
                            0,
                            0,
                            masked - u64::from(keep.classify_naive() == Some(Class::NegInf)),
                        );
                        want.add(adds);
                        assert_all_paths(row, want, (every, offset, pos, fault));
                        row[pos] = keep;
                    }
                }
            }
        }
    }
    check(
        f32::NEG_INFINITY,
        0.5,
        &[
            (f32::NAN, nf(1, 0, 0)),
            (-f32::NAN, nf(1, 0, 0)),
            (f32::from_bits(0xFF80_0001), nf(1, 0, 0)),
            (f32::INFINITY, nf(0, 1, 0)),
        ],
    );
    check(
        f64::NEG_INFINITY,
        -3.0,
        &[
            (f64::from_bits(0xFFF0_0000_0000_0001), nf(1, 0, 0)),
            (f64::INFINITY, nf(0, 1, 0)),
        ],
    );
    check(
        f16::NEG_INFINITY,
        f16::MAX,
        &[
            (f16::from_bits(0xFC01), nf(1, 0, 0)),
            (f16::from_bits(0x7C01), nf(1, 0, 0)),
            (f16::INFINITY, nf(0, 1, 0)),
        ],
    );
    check(
        bf16::NEG_INFINITY,
        bf16::MIN,
        &[
            (bf16::from_bits(0xFF81), nf(1, 0, 0)),
            (bf16::NAN, nf(1, 0, 0)),
            (bf16::INFINITY, nf(0, 1, 0)),
        ],
    );
}
