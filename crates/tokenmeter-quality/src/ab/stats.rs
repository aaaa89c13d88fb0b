//! The tests behind an A/B readout: a bootstrap interval for quantile differences, a
//! two-proportion z-test with Newcombe's interval for rate differences, and Welch's t interval
//! for mean differences. The normal and Student t distributions come from `statrs`; the rest is
//! a few lines of textbook formulas (docs/definitions.md states them), kept here because no
//! well-kept crate ships these two-sample tests on plain slices.

use rand::Rng;
use rand_xoshiro::Xoshiro256PlusPlus;
use rand_xoshiro::rand_core::SeedableRng;
use statrs::distribution::{ContinuousCDF, Normal, StudentsT};

/// The q-quantile (q in [0, 1]) of sorted values, linearly interpolated between order
/// statistics: Hyndman and Fan's type 7, the default of NumPy, R and spreadsheet `PERCENTILE`.
/// `None` when empty.
pub(crate) fn quantile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    let h = q.clamp(0.0, 1.0) * last as f64;
    let lo = h.floor() as usize;
    let hi = h.ceil() as usize;
    Some(sorted[lo] + (h - lo as f64) * (sorted[hi] - sorted[lo]))
}

/// Sorts a copy with a total order (NaN never reaches here: inputs are filtered finite).
pub(crate) fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

/// The q-quantile of unsorted values, reordering them (O(n) selection, no full sort).
fn quantile_select(values: &mut [f64], q: f64) -> f64 {
    let last = values.len() - 1;
    let h = q.clamp(0.0, 1.0) * last as f64;
    let lo = h.floor() as usize;
    let (_, &mut x_lo, above) = values.select_nth_unstable_by(lo, f64::total_cmp);
    let frac = h - lo as f64;
    if frac == 0.0 {
        return x_lo;
    }
    // The next order statistic is the smallest value above position `lo`.
    let x_hi = above.iter().copied().fold(f64::INFINITY, f64::min);
    x_lo + frac * (x_hi - x_lo)
}

/// A two-sided interval and, where the test gives one, its p-value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Estimate {
    pub(crate) difference: f64,
    pub(crate) low: f64,
    pub(crate) high: f64,
    pub(crate) p_value: Option<f64>,
}

/// Percentile-bootstrap intervals for `quantile(b, q) - quantile(a, q)`, one per q in `qs`,
/// from `resamples` resamples of both samples (with replacement, each its own size), drawn
/// from a xoshiro256++ stream seeded with `seed` (deterministic for a given input). The
/// interval is the `alpha/2` and `1 - alpha/2` quantiles of the resampled differences. Both
/// samples must be non-empty.
pub(crate) fn bootstrap_quantile_diffs(
    a: &[f64],
    b: &[f64],
    qs: &[f64],
    alpha: f64,
    resamples: usize,
    seed: u64,
) -> Vec<Estimate> {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    let (sa, sb) = (sorted(a), sorted(b));
    let mut diffs = vec![Vec::with_capacity(resamples); qs.len()];
    let (mut ra, mut rb) = (vec![0.0; a.len()], vec![0.0; b.len()]);
    for _ in 0..resamples {
        for x in &mut ra {
            *x = a[rng.random_range(0..a.len())];
        }
        for x in &mut rb {
            *x = b[rng.random_range(0..b.len())];
        }
        for (d, &q) in diffs.iter_mut().zip(qs) {
            d.push(quantile_select(&mut rb, q) - quantile_select(&mut ra, q));
        }
    }
    qs.iter()
        .zip(diffs)
        .map(|(&q, d)| {
            let d = sorted(&d);
            let point = quantile_sorted(&sb, q).unwrap_or(f64::NAN)
                - quantile_sorted(&sa, q).unwrap_or(f64::NAN);
            Estimate {
                difference: point,
                low: quantile_sorted(&d, alpha / 2.0).unwrap_or(f64::NAN),
                high: quantile_sorted(&d, 1.0 - alpha / 2.0).unwrap_or(f64::NAN),
                p_value: None,
            }
        })
        .collect()
}

fn std_normal() -> Normal {
    // Mean 0, standard deviation 1 are valid parameters.
    Normal::standard()
}

/// Wilson's score interval for a proportion `x / n` (n > 0) at two-sided level `alpha`.
pub(crate) fn wilson(x: u64, n: u64, alpha: f64) -> (f64, f64) {
    let z = std_normal().inverse_cdf(1.0 - alpha / 2.0);
    let (x, n) = (x as f64, n as f64);
    let p = x / n;
    let z2 = z * z;
    let centre = (p + z2 / (2.0 * n)) / (1.0 + z2 / n);
    let half = z / (1.0 + z2 / n) * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    ((centre - half).max(0.0), (centre + half).min(1.0))
}

/// `x_b / n_b - x_a / n_a` with Newcombe's hybrid score interval (his method 10, built from the
/// two Wilson intervals) and the pooled two-proportion z-test's two-sided p-value. Both `n`
/// must be positive.
pub(crate) fn two_proportions(x_a: u64, n_a: u64, x_b: u64, n_b: u64, alpha: f64) -> Estimate {
    let (pa, pb) = (x_a as f64 / n_a as f64, x_b as f64 / n_b as f64);
    let d = pb - pa;
    let (la, ua) = wilson(x_a, n_a, alpha);
    let (lb, ub) = wilson(x_b, n_b, alpha);
    let low = d - ((pb - lb).powi(2) + (ua - pa).powi(2)).sqrt();
    let high = d + ((ub - pb).powi(2) + (pa - la).powi(2)).sqrt();
    let pooled = (x_a + x_b) as f64 / (n_a + n_b) as f64;
    let se = (pooled * (1.0 - pooled) * (1.0 / n_a as f64 + 1.0 / n_b as f64)).sqrt();
    // Both samples all successes or all failures: no evidence of a difference.
    let p_value = if se > 0.0 {
        2.0 * std_normal().sf((d / se).abs())
    } else {
        1.0
    };
    Estimate {
        difference: d,
        low,
        high,
        p_value: Some(p_value),
    }
}

/// Mean and unbiased (n − 1) variance; n ≥ 2.
fn mean_var(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var)
}

/// `mean(b) - mean(a)` with Welch's t interval and two-sided p-value (unequal variances,
/// Welch-Satterthwaite degrees of freedom). Both samples need at least 2 values.
pub(crate) fn welch(a: &[f64], b: &[f64], alpha: f64) -> Estimate {
    let (ma, va) = mean_var(a);
    let (mb, vb) = mean_var(b);
    let (sa, sb) = (va / a.len() as f64, vb / b.len() as f64);
    let d = mb - ma;
    let se = (sa + sb).sqrt();
    if se == 0.0 || !se.is_finite() {
        // Two constant samples: equal means are no difference, different ones are certain.
        let p_value = if d == 0.0 { 1.0 } else { 0.0 };
        return Estimate {
            difference: d,
            low: d,
            high: d,
            p_value: Some(p_value),
        };
    }
    let df = (sa + sb).powi(2)
        / (sa.powi(2) / (a.len() as f64 - 1.0) + sb.powi(2) / (b.len() as f64 - 1.0));
    match StudentsT::new(0.0, 1.0, df) {
        Ok(t) => {
            let crit = t.inverse_cdf(1.0 - alpha / 2.0);
            Estimate {
                difference: d,
                low: d - crit * se,
                high: d + crit * se,
                p_value: Some(2.0 * t.sf((d / se).abs())),
            }
        }
        // df is positive and finite whenever se is; kept total rather than unwrapped.
        Err(_) => Estimate {
            difference: d,
            low: f64::NAN,
            high: f64::NAN,
            p_value: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, tol: f64) {
        assert!((a - b).abs() <= tol, "{a} vs {b}");
    }

    #[test]
    fn quantiles_interpolate_like_numpy() {
        // numpy.quantile([1, 2, 3, 4, 10], [0.5, 0.99, 0.25]) == [3.0, 9.76, 2.0]
        let v = [1.0, 2.0, 3.0, 4.0, 10.0];
        close(quantile_sorted(&v, 0.5).unwrap_or(0.0), 3.0, 1e-12);
        close(quantile_sorted(&v, 0.99).unwrap_or(0.0), 9.76, 1e-12);
        close(quantile_sorted(&v, 0.25).unwrap_or(0.0), 2.0, 1e-12);
        let mut shuffled = [10.0, 3.0, 1.0, 4.0, 2.0];
        close(quantile_select(&mut shuffled, 0.99), 9.76, 1e-12);
        assert_eq!(quantile_sorted(&[], 0.5), None);
    }

    // The constants below were computed at test-writing time with SciPy 1.17.1 (Python, from
    // /tmp/abref.py in the A/B work): scipy.stats.ttest_ind(b, a, equal_var=False) and its
    // confidence_interval(0.95); the rates by the same formulas on scipy.stats.norm, cross-checked
    // against scipy.stats.chi2_contingency(correction=False) (the pooled z-test's z² is that
    // chi-square) and against Newcombe (1998), Statistics in Medicine 17:873, example (56/70 vs
    // 48/80: 0.0524 to 0.3339).

    fn samples(n: usize, base: f64, step: f64, mult: usize, modulo: usize) -> Vec<f64> {
        (0..n)
            .map(|i| base + step * ((i * mult) % modulo) as f64)
            .collect()
    }

    #[test]
    fn welch_matches_scipy() {
        let a = samples(40, 1.0, 0.01, 37, 101);
        let b = samples(35, 1.1, 0.013, 53, 97);
        let e = welch(&a, &b, 0.05);
        close(e.difference, 0.18167142857142893, 1e-12);
        close(e.p_value.unwrap_or(0.0), 0.02404694155375204, 1e-9);
        close(e.low, 0.024634695959659364, 1e-9);
        close(e.high, 0.33870816118319846, 1e-9);
    }

    #[test]
    fn two_proportions_match_scipy_and_newcombe() {
        let e = two_proportions(12, 400, 31, 410, 0.05);
        close(e.difference, 0.045609756097560974, 1e-12);
        close(e.low, 0.014827062133308158, 1e-9);
        close(e.high, 0.07794582397457275, 1e-9);
        close(e.p_value.unwrap_or(0.0), 0.0037962813570484606, 1e-9);
        let (lo, hi) = wilson(12, 400, 0.05);
        close(lo, 0.017243020965143054, 1e-9);
        close(hi, 0.05169853570909567, 1e-9);
        let e = two_proportions(48, 80, 56, 70, 0.05);
        close(e.low, 0.052431472402365065, 1e-9);
        close(e.high, 0.333872654036906, 1e-9);
        close(e.p_value.unwrap_or(0.0), 0.00804508136819656, 1e-9);
        // All failures on both sides: no difference, no evidence.
        let e = two_proportions(0, 50, 0, 60, 0.05);
        assert_eq!((e.difference, e.p_value), (0.0, Some(1.0)));
    }

    #[test]
    fn welch_of_constant_samples_is_total() {
        let e = welch(&[2.0, 2.0], &[2.0, 2.0, 2.0], 0.05);
        assert_eq!(
            (e.difference, e.low, e.high, e.p_value),
            (0.0, 0.0, 0.0, Some(1.0))
        );
        let e = welch(&[2.0, 2.0], &[3.0, 3.0], 0.05);
        assert_eq!((e.difference, e.p_value), (1.0, Some(0.0)));
    }

    #[test]
    fn bootstrap_is_seeded_and_agrees_with_scipy() {
        let a = samples(300, 0.2, 0.001, 37, 211);
        let b = samples(280, 0.23, 0.001, 53, 199);
        let run = |seed| bootstrap_quantile_diffs(&a, &b, &[0.5], 0.05, 4000, seed);
        let e = run(1)[0];
        assert_eq!(run(1)[0], e, "same seed, same interval");
        // scipy.stats.bootstrap((b, a), median(b) - median(a), n_resamples=20000,
        // method='percentile', random_state=1): 0.026 with [0.0085, 0.0415]. Another
        // generator and 4000 resamples, so the ends agree to Monte Carlo error, not exactly.
        close(e.difference, 0.026, 1e-12);
        close(e.low, 0.0085, 0.003);
        close(e.high, 0.0415, 0.003);
        // Identical samples: the interval straddles 0.
        let same = bootstrap_quantile_diffs(&a, &a, &[0.5, 0.99], 0.05, 500, 3);
        for e in same {
            assert_eq!(e.difference, 0.0);
            assert!(e.low <= 0.0 && e.high >= 0.0, "{e:?}");
        }
    }
}
