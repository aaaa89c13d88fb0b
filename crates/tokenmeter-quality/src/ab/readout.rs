//! The readout: one row per metric comparing variant B against variant A, and its table form.

use std::fmt;

use super::stats::{self, Estimate};
use super::{AbTests, VariantWindow};

/// A compared metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AbMetric {
    /// Median time to first token, seconds.
    TtftP50,
    /// 99th-percentile time to first token, seconds.
    TtftP99,
    /// Median time per output token, seconds.
    TpotP50,
    /// 99th-percentile time per output token, seconds.
    TpotP99,
    /// Successful requests that met the SLO / successful requests.
    GoodputRatio,
    /// Failed requests / ended requests.
    ErrorRatio,
    /// Refusals / requests with a quality report.
    RefusalRate,
    /// Mean per-request perplexity.
    MeanPerplexity,
    /// Mean golden-set score.
    GoldenScore,
}

impl AbMetric {
    /// Every metric, in readout order.
    pub const ALL: [AbMetric; 9] = [
        AbMetric::TtftP50,
        AbMetric::TtftP99,
        AbMetric::TpotP50,
        AbMetric::TpotP99,
        AbMetric::GoodputRatio,
        AbMetric::ErrorRatio,
        AbMetric::RefusalRate,
        AbMetric::MeanPerplexity,
        AbMetric::GoldenScore,
    ];

    /// The snake_case name (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            AbMetric::TtftP50 => "ttft_p50",
            AbMetric::TtftP99 => "ttft_p99",
            AbMetric::TpotP50 => "tpot_p50",
            AbMetric::TpotP99 => "tpot_p99",
            AbMetric::GoodputRatio => "goodput_ratio",
            AbMetric::ErrorRatio => "error_ratio",
            AbMetric::RefusalRate => "refusal_rate",
            AbMetric::MeanPerplexity => "mean_perplexity",
            AbMetric::GoldenScore => "golden_score",
        }
    }
}

/// The test behind a row.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum AbTest {
    /// Percentile bootstrap of the quantile difference (no p-value; significant when the
    /// interval excludes 0).
    Bootstrap,
    /// Pooled two-proportion z-test; Newcombe's hybrid score interval.
    TwoProportionZ,
    /// Welch's unequal-variance t-test and interval.
    WelchT,
}

/// A row's conclusion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Below the row's minimum samples: no verdict.
    InsufficientData,
    /// No significant difference at the level (which is not evidence of no difference).
    NotSignificant,
    /// Significant at the level; the sign of the difference says which way.
    Significant,
}

impl Verdict {
    fn as_str(self) -> &'static str {
        match self {
            Verdict::InsufficientData => "insufficient data",
            Verdict::NotSignificant => "not significant",
            Verdict::Significant => "significant",
        }
    }
}

/// One metric compared: A's and B's values, the difference B − A with its 1 − α interval,
/// the p-value where the test gives one, the sample sizes and the verdict.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Row {
    /// The metric.
    pub metric: AbMetric,
    /// The test.
    pub test: AbTest,
    /// A's value (`None` without data).
    pub a: Option<f64>,
    /// B's value.
    pub b: Option<f64>,
    /// B − A.
    pub difference: Option<f64>,
    /// The 1 − α interval of B − A, `[low, high]`; `None` with insufficient data.
    pub interval: Option<[f64; 2]>,
    /// The two-sided p-value (rates and means; `None` for the bootstrap and with insufficient
    /// data).
    pub p_value: Option<f64>,
    /// A's sample size: the values or the rate's denominator.
    pub n_a: u64,
    /// B's sample size.
    pub n_b: u64,
    /// The sample size each variant needs for a verdict; `None` for a rate whose events have
    /// not happened in either variant yet (no size suffices then).
    pub min_samples: Option<u64>,
    /// The conclusion at the readout's level.
    pub verdict: Verdict,
}

/// Variant B compared against variant A: one [`Row`] per [`AbMetric`], in [`AbMetric::ALL`]
/// order. Serializes to JSON; `Display` prints a table.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Readout {
    /// Variant A's label value (the baseline).
    pub a: String,
    /// Variant B's label value (the candidate).
    pub b: String,
    /// The significance level α of each row.
    pub level: f64,
    /// The window compared, seconds (0 when the windows came from elsewhere).
    pub window_seconds: f64,
    /// Bootstrap resamples behind the quantile rows.
    pub resamples: usize,
    /// The rows.
    pub rows: Vec<Row>,
}

impl Readout {
    /// The row of `metric`.
    pub fn row(&self, metric: AbMetric) -> Option<&Row> {
        self.rows.iter().find(|r| r.metric == metric)
    }
}

fn len(v: &[f64]) -> u64 {
    v.len() as u64
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
}

fn ratio(x: u64, n: u64) -> Option<f64> {
    (n > 0).then(|| x as f64 / n as f64)
}

fn verdict(e: &Estimate, alpha: f64) -> Verdict {
    let significant = match e.p_value {
        Some(p) => p < alpha,
        None => e.low > 0.0 || e.high < 0.0,
    };
    if significant {
        Verdict::Significant
    } else {
        Verdict::NotSignificant
    }
}

fn finish(mut row: Row, estimate: Option<Estimate>, enough: bool, alpha: f64) -> Row {
    if let (true, Some(e)) = (enough, estimate) {
        row.interval = Some([e.low, e.high]);
        row.p_value = e.p_value;
        row.verdict = verdict(&e, alpha);
    }
    row
}

/// Compares window `b` against window `a` with `tests`: every row of a [`Readout`].
///
/// ```
/// use tokenmeter_quality::ab::{AbMetric, AbTests, VariantWindow, Verdict, compare};
/// let a = VariantWindow { variant: "a".into(), succeeded: 500, failed: 5, ..Default::default() };
/// let b = VariantWindow { variant: "b".into(), succeeded: 500, failed: 30, ..Default::default() };
/// let r = compare(&a, &b, &AbTests::default());
/// let errors = r.row(AbMetric::ErrorRatio).unwrap();
/// assert_eq!(errors.verdict, Verdict::Significant);
/// assert!(errors.difference.unwrap() > 0.0);
/// ```
pub fn compare(a: &VariantWindow, b: &VariantWindow, tests: &AbTests) -> Readout {
    let alpha = tests.level;
    let mut rows = Vec::with_capacity(AbMetric::ALL.len());
    for (p50, p99, xa, xb) in [
        (AbMetric::TtftP50, AbMetric::TtftP99, &a.ttft, &b.ttft),
        (AbMetric::TpotP50, AbMetric::TpotP99, &a.tpot, &b.tpot),
    ] {
        let (sa, sb) = (stats::sorted(xa), stats::sorted(xb));
        let n = len(xa).min(len(xb));
        let need = [(p50, 0.5, tests.min_p50), (p99, 0.99, tests.min_p99)];
        let qs: Vec<f64> = need
            .iter()
            .filter(|(_, _, min)| n >= (*min).max(1))
            .map(|(_, q, _)| *q)
            .collect();
        // One bootstrap serves both quantiles of a metric.
        let estimates = if qs.is_empty() {
            Vec::new()
        } else {
            stats::bootstrap_quantile_diffs(xa, xb, &qs, alpha, tests.resamples, tests.seed)
        };
        for (metric, q, min) in need {
            let (va, vb) = (
                stats::quantile_sorted(&sa, q),
                stats::quantile_sorted(&sb, q),
            );
            let row = Row {
                metric,
                test: AbTest::Bootstrap,
                a: va,
                b: vb,
                difference: va.zip(vb).map(|(x, y)| y - x),
                interval: None,
                p_value: None,
                n_a: len(xa),
                n_b: len(xb),
                min_samples: Some(min.max(1)),
                verdict: Verdict::InsufficientData,
            };
            let e = qs
                .iter()
                .position(|x| *x == q)
                .and_then(|i| estimates.get(i).copied());
            rows.push(finish(row, e, e.is_some(), alpha));
        }
    }
    for (metric, xa, na, xb, nb) in [
        (
            AbMetric::GoodputRatio,
            a.goodput,
            a.succeeded,
            b.goodput,
            b.succeeded,
        ),
        (
            AbMetric::ErrorRatio,
            a.failed,
            a.ended(),
            b.failed,
            b.ended(),
        ),
        (
            AbMetric::RefusalRate,
            a.refusals,
            a.quality_requests,
            b.refusals,
            b.quality_requests,
        ),
    ] {
        rows.push(rate_row(metric, (xa, na), (xb, nb), tests));
    }
    for (metric, xa, xb) in [
        (AbMetric::MeanPerplexity, &a.perplexity, &b.perplexity),
        (AbMetric::GoldenScore, &a.golden, &b.golden),
    ] {
        let min = tests.min_mean.max(2);
        let (ma, mb) = (mean(xa), mean(xb));
        let row = Row {
            metric,
            test: AbTest::WelchT,
            a: ma,
            b: mb,
            difference: ma.zip(mb).map(|(x, y)| y - x),
            interval: None,
            p_value: None,
            n_a: len(xa),
            n_b: len(xb),
            min_samples: Some(min),
            verdict: Verdict::InsufficientData,
        };
        let enough = len(xa).min(len(xb)) >= min;
        let e = enough.then(|| stats::welch(xa, xb, alpha));
        rows.push(finish(row, e, enough, alpha));
    }
    Readout {
        a: a.variant.clone(),
        b: b.variant.clone(),
        level: alpha,
        window_seconds: 0.0,
        resamples: tests.resamples,
        rows,
    }
}

/// A rate row: enough data when both denominators reach `min_rate` and, under the pooled rate
/// p, each variant expects at least `min_rate_events` events and non-events (n·p and n·(1 − p)).
fn rate_row(metric: AbMetric, (xa, na): (u64, u64), (xb, nb): (u64, u64), t: &AbTests) -> Row {
    let (ra, rb) = (ratio(xa, na), ratio(xb, nb));
    let pooled = ratio(xa + xb, na + nb);
    let rarer = pooled.map(|p| p.min(1.0 - p));
    // The smallest n with n·min(p, 1 − p) ≥ min_rate_events, under the rate seen so far.
    let min_samples = match rarer {
        Some(r) if r > 0.0 => {
            let need = (t.min_rate_events as f64 / r).ceil();
            Some(t.min_rate.max(1).max(need.min(u64::MAX as f64) as u64))
        }
        Some(_) => None,
        None => Some(t.min_rate.max(1)),
    };
    let row = Row {
        metric,
        test: AbTest::TwoProportionZ,
        a: ra,
        b: rb,
        difference: ra.zip(rb).map(|(x, y)| y - x),
        interval: None,
        p_value: None,
        n_a: na,
        n_b: nb,
        min_samples,
        verdict: Verdict::InsufficientData,
    };
    let enough = min_samples.is_some_and(|m| na.min(nb) >= m);
    let e = enough.then(|| stats::two_proportions(xa, na, xb, nb, t.level));
    finish(row, e, enough, t.level)
}

/// Seconds to 3 significant digits in the unit that keeps them readable (s, ms, µs, ns): a
/// sub-millisecond TPOT prints `850µs`, where a fixed `{:.1}ms` printed `0.0ms`. The value is
/// rounded first (by the formatter's `{:.2e}`), so that 0.9996 s prints `1.00s`, not `1000ms`.
pub(super) fn fmt_seconds(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}s");
    }
    let sci = format!("{v:.2e}");
    let (mantissa, exp) = sci
        .split_once('e')
        .and_then(|(m, e)| Some((m.parse::<f64>().ok()?, e.parse::<i32>().ok()?)))
        .unwrap_or((v, 0));
    let (unit_exp, unit) = match exp {
        0.. => (0, "s"),
        -3..=-1 => (-3, "ms"),
        -6..=-4 => (-6, "µs"),
        _ => (-9, "ns"),
    };
    let shift = exp - unit_exp;
    let decimals = usize::try_from(2 - shift).unwrap_or(0);
    format!("{:.decimals$}{unit}", mantissa * 10f64.powi(shift))
}

/// A p-value: 4 decimals, scientific below 1e-4, and `< 1e-300` for what rounds to 0 in f64
/// (e.g. Welch's t on two constant samples with different means).
fn fmt_p(p: f64) -> String {
    if p < 1e-300 {
        "< 1e-300".to_owned()
    } else if p < 1e-4 {
        format!("{p:.1e}")
    } else {
        format!("{p:.4}")
    }
}

fn fmt_value(metric: AbMetric, v: Option<f64>) -> String {
    match (metric, v) {
        (_, None) => "-".to_owned(),
        (
            AbMetric::TtftP50 | AbMetric::TtftP99 | AbMetric::TpotP50 | AbMetric::TpotP99,
            Some(v),
        ) => fmt_seconds(v),
        (AbMetric::GoodputRatio | AbMetric::ErrorRatio | AbMetric::RefusalRate, Some(v)) => {
            format!("{:.2}%", v * 100.0)
        }
        (_, Some(v)) => format!("{v:.3}"),
    }
}

impl fmt::Display for Readout {
    /// A fixed-width table: a header naming A and B, then one line per metric, B − A with its
    /// interval, the p-value and the verdict. Latencies print to 3 significant digits in s, ms,
    /// µs or ns.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "A/B readout: {} (A) vs {} (B), differences B - A (alpha {}, {}% intervals)",
            self.a,
            self.b,
            self.level,
            (1.0 - self.level) * 100.0
        )?;
        writeln!(
            f,
            "{:<16} {:>10} {:>10} {:>10} {:>23} {:>8} {:>7} {:>7}  verdict",
            "metric", "a", "b", "b-a", "interval", "p", "n_a", "n_b"
        )?;
        for r in &self.rows {
            let interval = r.interval.map_or("-".to_owned(), |[lo, hi]| {
                format!(
                    "[{}, {}]",
                    fmt_value(r.metric, Some(lo)),
                    fmt_value(r.metric, Some(hi))
                )
            });
            let p = r.p_value.map_or("-".to_owned(), fmt_p);
            let verdict = match (r.verdict, r.min_samples) {
                (Verdict::InsufficientData, Some(m)) => format!("insufficient data (< {m})"),
                (Verdict::InsufficientData, None) => "insufficient data (no events yet)".to_owned(),
                (v, _) => v.as_str().to_owned(),
            };
            writeln!(
                f,
                "{:<16} {:>10} {:>10} {:>10} {:>23} {:>8} {:>7} {:>7}  {}",
                r.metric.as_str(),
                fmt_value(r.metric, r.a),
                fmt_value(r.metric, r.b),
                fmt_value(r.metric, r.difference),
                interval,
                p,
                r.n_a,
                r.n_b,
                verdict
            )?;
        }
        Ok(())
    }
}
