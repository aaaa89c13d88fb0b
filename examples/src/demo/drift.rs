//! Drift on the demo's live traffic: the server compares a sliding window of its requests with
//! a saved baseline, serves the window on `GET /drift`, and `scripts/demo` captures a baseline
//! from one run (`--capture-baseline FILE`) and compares a later run with it
//! (`--drift-baseline FILE`).
//!
//! Prompt length, output length and output token ids are tokenmeter's
//! [`DriftMonitor`] (fed by the quality monitor when a
//! request finishes; it exports the `tokenmeter_quality_drift_*` gauges). The library has no
//! feature for the prompt's token ids, the perplexity or the refusal rate, so this module keeps
//! those next to it, in the same window length, and compares them with the library's
//! [`psi`] and [`jsd`]. They belong in the library's monitor; until then this is their one home.

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokenmeter::quality::QualityReport;
use tokenmeter::quality::drift::{
    Baseline, BaselineError, BaselineRecorder, DEFAULT_TOKEN_BUCKETS, Divergence, DriftMonitor,
    jsd, psi, token_bucket,
};
use tokenmeter_core::Meter;

use super::model::BoxError;

/// Requests in the live window by default: more than a demo run of a few minutes serves, so the
/// window is the whole run and a capture describes all of it.
pub const DEFAULT_WINDOW: u64 = 4096;

/// Perplexity bin upper bounds (inclusive); one overflow bin follows. Perplexity is
/// `exp(-mean logprob)` of a request's sampled tokens: about 1.5-4 for the real model at
/// temperature 0.7, far higher for a damaged one.
pub const PERPLEXITY_BOUNDS: [f64; 12] = [
    1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 6.0, 8.0, 16.0, 64.0, 1024.0,
];

/// The conventional PSI threshold of a significant shift (< 0.1 stable, 0.1-0.25 moderate).
pub const PSI_SIGNIFICANT: f64 = 0.25;

/// Observations per occupied bin each side needs before a feature gets a verdict. PSI over
/// few observations is biased upwards (about (k − 1)(1/n_e + 1/n_a) for k bins by chance
/// alone, as for a chi-square), so a sparse histogram would "drift" against itself: the usual
/// rule of at least 5 expected counts per bin keeps that bias under ~0.4 · 1/5 per bin pair.
pub const MIN_PER_BIN: u64 = 5;

/// The window features this module adds to the library's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExtraCounts {
    /// Prompt token ids per hashed bucket (the library's [`token_bucket`] hash).
    pub prompt_tokens: Vec<u64>,
    /// Requests per perplexity bin ([`PERPLEXITY_BOUNDS`] + overflow); requests without a
    /// perplexity (no token) are not counted.
    pub perplexity: Vec<u64>,
    /// Requests that were not / were refusals.
    pub refusal: [u64; 2],
}

impl Default for ExtraCounts {
    fn default() -> Self {
        ExtraCounts {
            prompt_tokens: vec![0; DEFAULT_TOKEN_BUCKETS],
            perplexity: vec![0; PERPLEXITY_BOUNDS.len() + 1],
            refusal: [0; 2],
        }
    }
}

/// The live window (or a baseline captured from one): the file format of
/// `--capture-baseline` / `--drift-baseline`, and the body of `GET /drift`'s `window`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrafficWindow {
    /// Prompt length, output length and output token ids (tokenmeter's baseline format).
    pub traffic: Baseline,
    /// Prompt token ids, perplexity and refusals.
    pub extra: ExtraCounts,
}

impl TrafficWindow {
    /// An empty window (what a server without a baseline compares against: every divergence
    /// is then `None`).
    pub fn empty() -> Self {
        TrafficWindow {
            traffic: BaselineRecorder::new().baseline(),
            extra: ExtraCounts::default(),
        }
    }

    /// Reads and validates a file written by [`save`](Self::save).
    ///
    /// # Errors
    /// When the file cannot be read, is not this format, or is inconsistent (the error names
    /// the file).
    pub fn load(path: &Path) -> Result<Self, BoxError> {
        let bytes = std::fs::read(path)
            .map_err(|e| format!("cannot read drift baseline {}: {e}", path.display()))?;
        let w: TrafficWindow = serde_json::from_slice(&bytes)
            .map_err(|e| format!("drift baseline {} is not valid: {e}", path.display()))?;
        w.traffic
            .validate()
            .map_err(|reason| BaselineError::Invalid {
                path: path.to_owned(),
                reason,
            })?;
        let e = &w.extra;
        if e.prompt_tokens.len() != DEFAULT_TOKEN_BUCKETS
            || e.perplexity.len() != PERPLEXITY_BOUNDS.len() + 1
        {
            return Err(format!(
                "drift baseline {} has other bins than this demo ({} prompt token buckets, {} perplexity bins)",
                path.display(),
                DEFAULT_TOKEN_BUCKETS,
                PERPLEXITY_BOUNDS.len() + 1
            )
            .into());
        }
        Ok(w)
    }

    /// Writes the window as pretty JSON (to a temporary file renamed into place).
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn save(&self, path: &Path) -> Result<(), BoxError> {
        let json = serde_json::to_vec_pretty(self)?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| format!("cannot write drift baseline {}: {e}", path.display()).into())
    }

    /// Compares `live` with this baseline, feature by feature.
    ///
    /// # Errors
    /// When the two have different bins.
    pub fn compare(&self, live: &TrafficWindow) -> Result<DriftResult, BoxError> {
        // The library's comparison checks that the bins agree; the divergences are the same
        // `psi` / `jsd` it uses.
        self.traffic.compare(&live.traffic)?;
        let (bt, lt, b, l) = (&self.traffic, &live.traffic, &self.extra, &live.extra);
        Ok(DriftResult {
            baseline_requests: bt.requests,
            window_requests: lt.requests,
            features: vec![
                FeatureDrift::new("prompt_length", &bt.prompt_length, &lt.prompt_length),
                FeatureDrift::new("prompt_tokens", &b.prompt_tokens, &l.prompt_tokens),
                FeatureDrift::new("output_length", &bt.output_length, &lt.output_length),
                FeatureDrift::new("output_tokens", &bt.token_buckets, &lt.token_buckets),
                FeatureDrift::new("perplexity", &b.perplexity, &l.perplexity),
                FeatureDrift::new("refusal", &b.refusal, &l.refusal),
            ],
        })
    }
}

/// One feature of a live window compared with the baseline.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FeatureDrift {
    /// The feature.
    pub feature: &'static str,
    /// PSI and JSD (`None` when a side has no observation).
    #[serde(flatten)]
    pub divergence: Divergence,
    /// Observations (requests, or tokens for the token features) in the baseline and the window.
    pub observations: [u64; 2],
    /// Observations each side needs for a verdict: [`MIN_PER_BIN`] per bin occupied on
    /// either side.
    pub min_observations: u64,
}

impl FeatureDrift {
    fn new(feature: &'static str, e: &[u64], a: &[u64]) -> Self {
        let sum = |v: &[u64]| v.iter().fold(0u64, |t, &x| t.saturating_add(x));
        let occupied = e.iter().zip(a).filter(|(x, y)| **x > 0 || **y > 0).count() as u64;
        FeatureDrift {
            feature,
            divergence: Divergence {
                psi: psi(e, a),
                jsd: jsd(e, a),
            },
            observations: [sum(e), sum(a)],
            min_observations: MIN_PER_BIN * occupied,
        }
    }

    /// Both sides have enough observations for a verdict.
    pub fn enough(&self) -> bool {
        self.observations
            .iter()
            .all(|&n| n > 0 && n >= self.min_observations)
    }

    /// Enough observations and a PSI past [`PSI_SIGNIFICANT`].
    pub fn drifted(&self) -> bool {
        self.enough() && self.divergence.psi.is_some_and(|p| p > PSI_SIGNIFICANT)
    }
}

/// A live window compared with a baseline.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftResult {
    /// Requests in the baseline.
    pub baseline_requests: u64,
    /// Requests in the live window.
    pub window_requests: u64,
    /// The features, in a fixed order.
    pub features: Vec<FeatureDrift>,
}

impl DriftResult {
    /// The features that drifted ([`FeatureDrift::drifted`]).
    pub fn drifted(&self) -> Vec<&'static str> {
        self.features
            .iter()
            .filter(|f| f.drifted())
            .map(|f| f.feature)
            .collect()
    }

    /// The feature named `name`.
    pub fn feature(&self, name: &str) -> Option<&FeatureDrift> {
        self.features.iter().find(|f| f.feature == name)
    }
}

impl std::fmt::Display for DriftResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = |x: Option<f64>| x.map_or_else(|| "n/a".to_string(), |x| format!("{x:.4}"));
        writeln!(
            f,
            "drift: live window of {} requests vs a baseline of {} (PSI > {PSI_SIGNIFICANT} = significant shift,\n  given {MIN_PER_BIN} observations per occupied bin on each side)",
            self.window_requests, self.baseline_requests
        )?;
        for x in &self.features {
            let mark = if x.drifted() {
                "DRIFT".to_string()
            } else if !x.enough() {
                format!("too few to tell (< {})", x.min_observations)
            } else {
                String::new()
            };
            writeln!(
                f,
                "  {:<14} PSI {:>8}  JSD {:>7}  n {:>6} / {:<6} {mark}",
                x.feature,
                v(x.divergence.psi),
                v(x.divergence.jsd),
                x.observations[0],
                x.observations[1],
            )?;
        }
        let drifted = self.drifted();
        if drifted.is_empty() {
            write!(f, "  verdict: no drift")
        } else {
            write!(f, "  verdict: DRIFT in {}", drifted.join(", "))
        }
    }
}

/// One request's entry in the extra window.
struct Entry {
    prompt_buckets: Vec<u16>,
    perplexity: Option<usize>,
    refusal: bool,
}

/// The server's drift state: tokenmeter's monitor, this module's extra features over the same
/// number of requests, and the baseline both compare against. Shared by the engines.
pub struct TrafficDrift {
    monitor: Arc<DriftMonitor>,
    baseline: Option<TrafficWindow>,
    window: u64,
    extra: Mutex<VecDeque<Entry>>,
}

impl std::fmt::Debug for TrafficDrift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrafficDrift")
            .field("window", &self.window)
            .field("baseline", &self.baseline.is_some())
            .finish_non_exhaustive()
    }
}

fn perplexity_bin(p: f64) -> Option<usize> {
    p.is_finite()
        .then(|| PERPLEXITY_BOUNDS.partition_point(|&b| b < p))
}

impl TrafficDrift {
    /// Drift over the last `window` requests (at least 4) against `baseline` (`None`: an empty
    /// one; the window is still served, so that a baseline can be captured).
    pub fn new(meter: &Meter, baseline: Option<TrafficWindow>, window: u64) -> Self {
        let window = window.max(4);
        let lib = baseline
            .as_ref()
            .map_or_else(|| BaselineRecorder::new().baseline(), |b| b.traffic.clone());
        TrafficDrift {
            monitor: Arc::new(DriftMonitor::new(meter, lib, window)),
            baseline,
            window,
            extra: Mutex::new(VecDeque::new()),
        }
    }

    /// The library monitor, for [`QualityConfig::drift`](tokenmeter::quality::QualityConfig::drift).
    pub fn monitor(&self) -> Arc<DriftMonitor> {
        Arc::clone(&self.monitor)
    }

    /// Adds one finished request's extra features (its prompt ids and quality report); the
    /// library features reach the monitor through the quality monitor's `finish`.
    pub fn record(&self, prompt: &[u32], report: &QualityReport) {
        let entry = Entry {
            prompt_buckets: prompt
                .iter()
                .map(|&id| token_bucket(id, DEFAULT_TOKEN_BUCKETS) as u16)
                .collect(),
            perplexity: report.logprobs.perplexity.and_then(perplexity_bin),
            refusal: report.refusal,
        };
        let Ok(mut w) = self.extra.lock() else {
            return;
        };
        if w.len() as u64 >= self.window {
            w.pop_front();
        }
        w.push_back(entry);
    }

    /// The live window.
    pub fn window(&self) -> TrafficWindow {
        let mut extra = ExtraCounts::default();
        if let Ok(w) = self.extra.lock() {
            for e in w.iter() {
                for &b in &e.prompt_buckets {
                    extra.prompt_tokens[usize::from(b)] += 1;
                }
                if let Some(p) = e.perplexity {
                    extra.perplexity[p] += 1;
                }
                extra.refusal[usize::from(e.refusal)] += 1;
            }
        }
        TrafficWindow {
            traffic: self.monitor.window_baseline(),
            extra,
        }
    }

    /// The live window compared with the baseline (`None` without one). Also exports the
    /// library's drift gauges.
    pub fn evaluate(&self) -> Option<DriftResult> {
        self.monitor.evaluate();
        let b = self.baseline.as_ref()?;
        b.compare(&self.window()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn perplexity_bins() {
        assert_eq!(perplexity_bin(1.0), Some(0));
        assert_eq!(perplexity_bin(1.25), Some(0));
        assert_eq!(perplexity_bin(1.3), Some(1));
        assert_eq!(perplexity_bin(1e9), Some(PERPLEXITY_BOUNDS.len()));
        assert_eq!(perplexity_bin(f64::NAN), None);
    }

    #[test]
    fn window_roundtrips_and_compares() {
        let meter = Meter::default();
        let d = TrafficDrift::new(&meter, None, 8);
        let mut report = QualityReport::default();
        report.logprobs.perplexity = Some(2.2);
        for i in 0..10u32 {
            d.record(&[i, i + 1, 7], &report);
        }
        let w = d.window();
        // The extra window keeps the last 8 requests.
        assert_eq!(w.extra.refusal, [8, 0]);
        assert_eq!(w.extra.perplexity[4], 8);
        assert_eq!(w.extra.prompt_tokens.iter().sum::<u64>(), 24);
        assert!(d.evaluate().is_none());
        let dir = std::env::temp_dir().join(format!("tm-demo-drift-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("b.json");
        w.save(&path).expect("save");
        let back = TrafficWindow::load(&path).expect("load");
        assert_eq!(back, w);
        let r = back.compare(&w).expect("same bins");
        let p = r.feature("prompt_tokens").expect("feature");
        assert_eq!(p.divergence.psi, Some(0.0));
        // 24 prompt tokens in 9 buckets: under 5 per bucket, no verdict.
        assert_eq!((p.observations, p.min_observations), ([24, 24], 45));
        assert!(!p.enough());
        assert!(r.drifted().is_empty());
        std::fs::write(&path, b"{}").expect("write");
        let e = TrafficWindow::load(&path).expect_err("not a baseline");
        assert!(e.to_string().contains("b.json"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
