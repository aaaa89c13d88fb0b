//! The vectorized scanner, for raw and for masked rows, against the naive reference over random
//! bit patterns, with the interesting patterns (every NaN kind, infinities, subnormals, the
//! largest finite values) over-represented, at lengths that cross the scanner's chunk and lane
//! boundaries.

use half::{bf16, f16};
use proptest::prelude::*;
use tokenmeter_quality::nonfinite::internals::{
    NaiveClassify, count_non_finite_naive, masked, portable,
};
use tokenmeter_quality::{Logit, LogitsKind, NonFinite, count_faults, count_non_finite};

fn f32_bits() -> impl Strategy<Value = u32> {
    prop_oneof![
        4 => any::<u32>(),
        1 => Just(0x7F80_0000u32),                        // +inf
        1 => Just(0xFF80_0000u32),                        // -inf
        1 => 0x7F80_0001u32..=0x7FFF_FFFF,              // NaN: signaling and quiet, any payload
        1 => 0xFF80_0001u32..=0xFFFF_FFFF,              // negative NaN
        1 => prop_oneof![Just(0x7F7F_FFFFu32), Just(0xFF7F_FFFF)], // ±MAX
        1 => (0u32..0x0080_0000).prop_map(|m| m | (u32::from(m & 1 == 0) << 31)), // subnormals, ±0
        8 => (-1000.0f32..1000.0).prop_map(f32::to_bits), // ordinary logits
    ]
}

fn f64_bits() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => any::<u64>(),
        1 => Just(0x7FF0_0000_0000_0000u64),
        1 => Just(0xFFF0_0000_0000_0000u64),
        1 => 0x7FF0_0000_0000_0001u64..=0x7FFF_FFFF_FFFF_FFFF,
        1 => 0xFFF0_0000_0000_0001u64..=0xFFFF_FFFF_FFFF_FFFF,
        1 => Just(f64::MAX.to_bits()),
        1 => 0u64..0x0010_0000_0000_0000,
        8 => (-1000.0f64..1000.0).prop_map(f64::to_bits),
    ]
}

fn u16_bits(exp: u16) -> impl Strategy<Value = u16> {
    prop_oneof![
        4 => any::<u16>(),
        1 => Just(exp),
        1 => Just(exp | 0x8000),
        1 => exp + 1..=0x7FFF,
        1 => (exp | 0x8000) + 1..=0xFFFF,
        1 => Just(exp - 1),
        1 => 0u16..(!exp & 0x7FFF).min(0x3FF),
    ]
}

/// Rows of lengths around the 4 KiB chunk and the 64/128-lane blocks.
fn rows<T: std::fmt::Debug + 'static>(element: BoxedStrategy<T>) -> impl Strategy<Value = Vec<T>> {
    prop_oneof![
        0usize..300,
        1000usize..1100,
        2000usize..2100,
        4090usize..4200
    ]
    .prop_flat_map(move |n| proptest::collection::vec(element.clone(), n))
}

/// The dispatched scanner and the portable path agree with the naive reference, for the row read
/// as raw logits and as masked ones (where -Inf does not count).
fn agrees<T: Logit + NaiveClassify>(
    row: &[T],
    portable: fn(&[T]) -> NonFinite,
    masked_portable: fn(&[T]) -> NonFinite,
) -> Result<(), TestCaseError> {
    let want = count_non_finite_naive(row);
    prop_assert_eq!(count_non_finite(row), want);
    prop_assert_eq!(portable(row), want);
    let want = NonFinite { neg_inf: 0, ..want };
    prop_assert_eq!(count_faults(row, LogitsKind::Masked), want);
    prop_assert_eq!(masked_portable(row), want);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn f32_matches_naive(bits in rows(f32_bits().boxed())) {
        let row: Vec<f32> = bits.into_iter().map(f32::from_bits).collect();
        agrees(&row, portable::f32, masked::portable::f32)?;
    }

    #[test]
    fn f64_matches_naive(bits in rows(f64_bits().boxed())) {
        let row: Vec<f64> = bits.into_iter().map(f64::from_bits).collect();
        agrees(&row, portable::f64, masked::portable::f64)?;
    }

    #[test]
    fn f16_matches_naive(bits in rows(u16_bits(0x7C00).boxed())) {
        let row: Vec<f16> = bits.into_iter().map(f16::from_bits).collect();
        agrees(&row, portable::f16, masked::portable::f16)?;
    }

    #[test]
    fn bf16_matches_naive(bits in rows(u16_bits(0x7F80).boxed())) {
        let row: Vec<bf16> = bits.into_iter().map(bf16::from_bits).collect();
        agrees(&row, portable::bf16, masked::portable::bf16)?;
    }

    /// A single special value hidden anywhere in an otherwise finite row.
    #[test]
    fn a_single_value_anywhere(pos in 0usize..5000, bits in f32_bits()) {
        let mut row = vec![f32::MAX; 5000];
        row[pos] = f32::from_bits(bits);
        agrees(&row, portable::f32, masked::portable::f32)?;
    }
}
