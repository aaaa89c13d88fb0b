//! Test and bench hooks (cargo feature `bench-internals`, off by default; not public API): the
//! naive reference counter, each path by itself whatever the dispatch picks on this machine, and
//! the name of the kernels it picks. The unit tests always have them.

use half::{bf16, f16};
use tokenmeter_core::NonFinite;

use super::Logit;
#[cfg(target_arch = "x86_64")]
use super::x86;

/// The obvious reference: classify each value with the standard library's predicates. Slow
/// (about half the read bandwidth).
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

/// The portable (non-AVX2) kernels, for tests that check both paths agree.
pub mod portable {
    use super::*;
    use crate::nonfinite::portable as path;
    /// Portable f32 kernel.
    pub fn f32(row: &[f32]) -> NonFinite {
        path::count_f32(row)
    }
    /// Portable f64 kernel.
    pub fn f64(row: &[f64]) -> NonFinite {
        path::count_f64(row)
    }
    /// Portable f16 kernel.
    pub fn f16(row: &[f16]) -> NonFinite {
        path::count_f16(row)
    }
    /// Portable bf16 kernel.
    pub fn bf16(row: &[bf16]) -> NonFinite {
        path::count_bf16(row)
    }
}

/// AVX2 + FMA paths by themselves: one function per element type, `None` where the CPU lacks
/// them (used for the raw and the masked kernels).
macro_rules! avx2_paths {
    ($($name:ident: $t:ty => $kernel:ident),*) => {$(
        /// The AVX2 + FMA kernel, if the CPU has them.
        pub fn $name(row: &[$t]) -> Option<NonFinite> {
            #[cfg(target_arch = "x86_64")]
            {
                if x86::avx2() {
                    // SAFETY: the CPU supports AVX2 and FMA, checked just above.
                    return Some(unsafe { x86::$kernel(row) });
                }
            }
            let _ = row;
            None
        }
    )*};
}

/// The AVX2 + FMA kernels alone (x86-64), `None` where the CPU lacks them: for tests that check
/// every path agrees on machines whose dispatch picks a wider one, and for the bench's fallback
/// figures.
pub mod avx2 {
    use super::*;

    avx2_paths!(f32: f32 => avx2_f32, f64: f64 => avx2_f64, f16: f16 => avx2_f16, bf16: bf16 => avx2_bf16);
}

/// One 512-bit path by itself: `None` off x86-64 (and, from the path, where the CPU lacks it).
macro_rules! wide {
    ($kernel:ident($row:expr)) => {{
        #[cfg(target_arch = "x86_64")]
        {
            x86::$kernel($row)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = $row;
            None
        }
    }};
}

/// The AVX-512 kernels alone (x86-64), `None` where the CPU lacks them (AVX-512F for f32 and
/// f64, AVX512-FP16 too for f16 and bf16).
pub mod avx512 {
    use super::*;
    /// The AVX-512F kernel, if the CPU has it.
    pub fn f32(row: &[f32]) -> Option<NonFinite> {
        wide!(avx512_f32(row))
    }
    /// The AVX-512F kernel, if the CPU has it.
    pub fn f64(row: &[f64]) -> Option<NonFinite> {
        wide!(avx512_f64(row))
    }
    /// The AVX512-FP16 kernel, if the CPU has it.
    pub fn f16(row: &[f16]) -> Option<NonFinite> {
        wide!(avx512_f16(row))
    }
    /// The AVX512-FP16 kernel (bf16 through the binary16 view), if the CPU has it.
    pub fn bf16(row: &[bf16]) -> Option<NonFinite> {
        wide!(avx512_bf16(row))
    }
}

/// The AVX-512BW kernels alone (x86-64), `None` where the CPU lacks AVX-512BW: the f16 and bf16
/// path of CPUs without AVX512-FP16, for tests and the bench on machines whose dispatch picks the
/// FP16 one.
pub mod avx512bw {
    use super::*;
    /// The AVX-512BW kernel, if the CPU has it.
    pub fn f16(row: &[f16]) -> Option<NonFinite> {
        wide!(avx512bw_f16(row))
    }
    /// The AVX-512BW kernel, if the CPU has it.
    pub fn bf16(row: &[bf16]) -> Option<NonFinite> {
        wide!(avx512bw_bf16(row))
    }
}

/// The masked-row paths by themselves (what [`count_faults`](super::count_faults) runs for
/// [`LogitsKind::Masked`](super::LogitsKind::Masked)).
pub mod masked {
    use super::*;

    /// The portable masked-row kernels.
    pub mod portable {
        use super::*;
        use crate::nonfinite::portable as path;
        /// Portable f32 kernel.
        pub fn f32(row: &[f32]) -> NonFinite {
            path::count_masked_f32(row)
        }
        /// Portable f64 kernel.
        pub fn f64(row: &[f64]) -> NonFinite {
            path::count_masked_f64(row)
        }
        /// Portable f16 kernel.
        pub fn f16(row: &[f16]) -> NonFinite {
            path::count_masked_f16(row)
        }
        /// Portable bf16 kernel.
        pub fn bf16(row: &[bf16]) -> NonFinite {
            path::count_masked_bf16(row)
        }
    }

    /// The AVX2 + FMA masked-row kernels, `None` where the CPU lacks them.
    pub mod avx2 {
        use super::*;

        avx2_paths!(
            f32: f32 => avx2_masked_f32,
            f64: f64 => avx2_masked_f64,
            f16: f16 => avx2_masked_f16,
            bf16: bf16 => avx2_masked_bf16
        );
    }

    /// The 512-bit masked-row kernels, `None` where the CPU lacks them (AVX-512F for f32 and
    /// f64, AVX-512BW for f16 and bf16).
    pub mod avx512 {
        use super::*;
        /// The AVX-512F kernel, if the CPU has it.
        pub fn f32(row: &[f32]) -> Option<NonFinite> {
            wide!(avx512_masked_f32(row))
        }
        /// The AVX-512F kernel, if the CPU has it.
        pub fn f64(row: &[f64]) -> Option<NonFinite> {
            wide!(avx512_masked_f64(row))
        }
        /// The AVX-512BW kernel, if the CPU has it.
        pub fn f16(row: &[f16]) -> Option<NonFinite> {
            wide!(avx512_masked_f16(row))
        }
        /// The AVX-512BW kernel, if the CPU has it.
        pub fn bf16(row: &[bf16]) -> Option<NonFinite> {
            wide!(avx512_masked_bf16(row))
        }
    }
}

/// Which kernels [`count_non_finite`](super::count_non_finite) uses on this machine, per element
/// type, in words (for benches and logs).
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

/// Which kernels [`count_faults`](super::count_faults) uses for masked rows on this machine, in
/// words.
pub fn masked_kernels() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        match (x86::avx512bw(), x86::avx512(), x86::avx2()) {
            (true, _, _) => "AVX-512 signed + unsigned max (all types)",
            (false, true, _) => "AVX-512 signed + unsigned max (f32, f64), AVX2 (f16, bf16)",
            (false, false, true) => "AVX2 signed + unsigned max",
            _ => "portable (SSE2)",
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        "portable"
    }
}
