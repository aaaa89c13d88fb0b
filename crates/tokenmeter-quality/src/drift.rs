//! Drift of the live traffic against a captured baseline: prompt length, output length and
//! token-id frequencies (hashed into a fixed number of buckets), compared with the population
//! stability index (PSI) and the Jensen-Shannon divergence (JSD), exported as gauges.
//!
//! Capture a baseline from a reference window, save it, and compare later traffic with it:
//!
//! ```
//! use tokenmeter_quality::drift::{Baseline, BaselineRecorder, DriftMonitor};
//! let mut rec = BaselineRecorder::new();
//! for i in 0..200u64 {
//!     rec.observe_request(100 + i % 50, 20 + i % 10);
//!     rec.observe_tokens(&[1, 2, 3, (i % 7) as u32]);
//! }
//! let path = std::env::temp_dir().join(format!("tm-doc-baseline-{}.json", std::process::id()));
//! rec.baseline().save(&path)?;
//!
//! let meter = tokenmeter_core::Meter::default();
//! let drift = DriftMonitor::new(&meter, Baseline::load(&path)?, 100);
//! for i in 0..100u64 {
//!     drift.record(4000 + i, 500, None); // much longer prompts and outputs than the baseline
//! }
//! let report = drift.evaluate();
//! assert!(report.prompt_length.psi.unwrap() > 1.0);
//! assert!(report.prompt_length.jsd.unwrap() > 0.9);
//! # std::fs::remove_file(&path).ok();
//! # Ok::<(), tokenmeter_quality::drift::BaselineError>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use metrics::{Gauge, Label};
use tokenmeter_core::Meter;
use tokenmeter_core::catalog::{self, MetricDef};
use tokenmeter_core::emit::{lock, recorder_id};

/// The baseline file format version this crate writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// The token-id hash, recorded in the baseline so that files stay comparable.
pub const TOKEN_HASH: &str = "fib64-v1";
/// Default number of token-id buckets.
pub const DEFAULT_TOKEN_BUCKETS: usize = 256;
/// Default length bin upper bounds (inclusive): 0, 1, 2, 4, ... 2^20; one overflow bin follows.
pub fn default_length_bounds() -> Vec<u64> {
    std::iter::once(0)
        .chain((0..=20).map(|i| 1u64 << i))
        .collect()
}
/// Proportions below this are raised to it in PSI (a bin empty on one side would be infinite).
pub const PSI_FLOOR: f64 = 1e-4;

/// A reference distribution of the traffic features, saved as JSON.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Baseline {
    /// File format version ([`FORMAT_VERSION`]).
    pub version: u32,
    /// Requests observed.
    pub requests: u64,
    /// Output token ids observed.
    pub tokens: u64,
    /// Length bin upper bounds (inclusive, increasing); the count vectors have one more bin
    /// for values above the last bound.
    pub length_bounds: Vec<u64>,
    /// Requests per prompt-length bin.
    pub prompt_length: Vec<u64>,
    /// Requests per output-length bin.
    pub output_length: Vec<u64>,
    /// The token-id hash ([`TOKEN_HASH`]).
    pub token_hash: String,
    /// Output token ids per hashed bucket.
    pub token_buckets: Vec<u64>,
}

/// A baseline that could not be read, parsed or written; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    /// The file could not be read.
    #[error("cannot read baseline file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The file is not valid baseline JSON.
    #[error("baseline file {} is not valid baseline JSON: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The JSON error (with line and column).
        source: serde_json::Error,
    },
    /// The file parsed but its contents are inconsistent.
    #[error("baseline file {} is inconsistent: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The file could not be written.
    #[error("cannot write baseline file {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

/// Reads a baseline file (drift or golden-set) and validates it, naming the file in errors.
pub(crate) fn read_validated<T: serde::de::DeserializeOwned>(
    path: &Path,
    validate: impl FnOnce(&T) -> Result<(), String>,
) -> Result<T, BaselineError> {
    let text = std::fs::read(path).map_err(|source| BaselineError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse_validated(&text, path, validate)
}

/// Parses baseline JSON and validates it; `origin` names the source in errors.
pub(crate) fn parse_validated<T: serde::de::DeserializeOwned>(
    json: &[u8],
    origin: &Path,
    validate: impl FnOnce(&T) -> Result<(), String>,
) -> Result<T, BaselineError> {
    let b: T = serde_json::from_slice(json).map_err(|source| BaselineError::Parse {
        path: origin.to_owned(),
        source,
    })?;
    validate(&b).map_err(|reason| BaselineError::Invalid {
        path: origin.to_owned(),
        reason,
    })?;
    Ok(b)
}

/// Writes a baseline as pretty JSON to a temporary file renamed into place, so a reader never
/// sees half a file.
pub(crate) fn write_json<T: serde::Serialize>(value: &T, path: &Path) -> Result<(), BaselineError> {
    let werr = |source| BaselineError::Write {
        path: path.to_owned(),
        source,
    };
    let json = serde_json::to_vec_pretty(value).map_err(|e| werr(std::io::Error::other(e)))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, json).map_err(werr)?;
    std::fs::rename(&tmp, path).map_err(werr)
}

impl Baseline {
    /// Reads and validates a baseline file.
    ///
    /// # Errors
    ///
    /// [`BaselineError::Read`], [`BaselineError::Parse`] or [`BaselineError::Invalid`], each
    /// naming the file.
    pub fn load(path: impl AsRef<Path>) -> Result<Baseline, BaselineError> {
        read_validated(path.as_ref(), Baseline::validate)
    }

    /// Parses and validates baseline JSON; `origin` names the source in errors (a file name,
    /// or a URL).
    ///
    /// # Errors
    ///
    /// [`BaselineError::Parse`] or [`BaselineError::Invalid`].
    pub fn from_json_slice(
        json: &[u8],
        origin: impl AsRef<Path>,
    ) -> Result<Baseline, BaselineError> {
        parse_validated(json, origin.as_ref(), Baseline::validate)
    }

    /// Writes the baseline as pretty JSON (to a temporary file renamed into place).
    ///
    /// # Errors
    ///
    /// [`BaselineError::Write`] naming the file.
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), BaselineError> {
        write_json(self, path.as_ref())
    }

    /// Checks the invariants [`load`](Self::load) relies on.
    ///
    /// # Errors
    ///
    /// A description of the first inconsistency.
    pub fn validate(&self) -> Result<(), String> {
        if self.version != FORMAT_VERSION {
            return Err(format!(
                "format version {} (expected {FORMAT_VERSION})",
                self.version
            ));
        }
        if self.token_hash != TOKEN_HASH {
            return Err(format!(
                "token hash {:?} (expected {TOKEN_HASH:?})",
                self.token_hash
            ));
        }
        if self.length_bounds.is_empty() || self.length_bounds.windows(2).any(|w| w[0] >= w[1]) {
            return Err("length_bounds must be non-empty and strictly increasing".into());
        }
        let bins = self.length_bounds.len() + 1;
        if self.prompt_length.len() != bins || self.output_length.len() != bins {
            return Err(format!(
                "length histograms must have {bins} bins (length_bounds + 1)"
            ));
        }
        if self.token_buckets.is_empty() || self.token_buckets.len() > 1 << 20 {
            return Err("token_buckets must have between 1 and 2^20 buckets".into());
        }
        let sum = |v: &[u64]| v.iter().try_fold(0u64, |a, &x| a.checked_add(x));
        if sum(&self.prompt_length) != Some(self.requests)
            || sum(&self.output_length) != Some(self.requests)
        {
            return Err("length histograms must each sum to `requests`".into());
        }
        if sum(&self.token_buckets) != Some(self.tokens) {
            return Err("token_buckets must sum to `tokens`".into());
        }
        Ok(())
    }

    /// Compares `live` (e.g. a server's [`DriftMonitor::window_baseline`]) with this
    /// baseline, as the drift monitor does.
    ///
    /// # Errors
    ///
    /// When the two have different bins or bucket counts.
    pub fn compare(&self, live: &Baseline) -> Result<DriftReport, String> {
        self.check_same_bins(live)?;
        Ok(DriftReport {
            window_requests: live.requests,
            prompt_length: divergence(&self.prompt_length, &live.prompt_length),
            output_length: divergence(&self.output_length, &live.output_length),
            token_id: divergence(&self.token_buckets, &live.token_buckets),
        })
    }

    fn check_same_bins(&self, other: &Baseline) -> Result<(), String> {
        if self.length_bounds != other.length_bounds
            || self.token_buckets.len() != other.token_buckets.len()
            || self.token_hash != other.token_hash
        {
            return Err("baselines have different bins".into());
        }
        Ok(())
    }

    /// Adds another baseline's counts (e.g. from another replica).
    ///
    /// # Errors
    ///
    /// When the two have different bins or bucket counts.
    pub fn merge(&mut self, other: &Baseline) -> Result<(), String> {
        self.check_same_bins(other)?;
        let add = |a: &mut Vec<u64>, b: &[u64]| {
            a.iter_mut()
                .zip(b)
                .for_each(|(x, y)| *x = x.saturating_add(*y))
        };
        add(&mut self.prompt_length, &other.prompt_length);
        add(&mut self.output_length, &other.output_length);
        add(&mut self.token_buckets, &other.token_buckets);
        self.requests = self.requests.saturating_add(other.requests);
        self.tokens = self.tokens.saturating_add(other.tokens);
        Ok(())
    }
}

/// The bucket of a token id (a Fibonacci hash: stable across versions, see [`TOKEN_HASH`]).
#[inline]
pub fn token_bucket(id: u32, buckets: usize) -> usize {
    let h = u64::from(id).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    (h % buckets.max(1) as u64) as usize
}

fn length_bin(bounds: &[u64], v: u64) -> usize {
    bounds.partition_point(|&b| b < v)
}

/// Per-request token-id bucket counts, filled per token without allocation and handed to
/// [`DriftMonitor::record`] at the end.
#[derive(Clone, Debug)]
pub struct TokenHistogram {
    counts: Vec<u32>,
    total: u64,
}

impl TokenHistogram {
    /// Zeroed counts over `buckets` buckets.
    pub fn new(buckets: usize) -> Self {
        TokenHistogram {
            counts: vec![0; buckets.max(1)],
            total: 0,
        }
    }
    /// Counts one token id.
    #[inline]
    pub fn add(&mut self, id: u32) {
        let b = token_bucket(id, self.counts.len());
        self.counts[b] = self.counts[b].saturating_add(1);
        self.total += 1;
    }
    /// Token ids counted.
    pub fn total(&self) -> u64 {
        self.total
    }
    /// Zeroes the counts, keeping the allocation.
    pub fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.total = 0;
    }
}

/// Feature counts over some requests: the shared core of capture and of the live window.
#[derive(Clone, Debug, PartialEq)]
struct Counts {
    requests: u64,
    tokens: u64,
    prompt: Vec<u64>,
    output: Vec<u64>,
    buckets: Vec<u64>,
}

impl Counts {
    fn new(bins: usize, buckets: usize) -> Self {
        Counts {
            requests: 0,
            tokens: 0,
            prompt: vec![0; bins],
            output: vec![0; bins],
            buckets: vec![0; buckets],
        }
    }
    fn add_request(&mut self, bounds: &[u64], prompt: u64, output: u64) {
        self.requests += 1;
        self.prompt[length_bin(bounds, prompt)] += 1;
        self.output[length_bin(bounds, output)] += 1;
    }
    fn add_token(&mut self, id: u32) {
        let b = token_bucket(id, self.buckets.len());
        self.buckets[b] += 1;
        self.tokens += 1;
    }
    fn add_hist(&mut self, h: &TokenHistogram) {
        if h.counts.len() == self.buckets.len() {
            self.buckets
                .iter_mut()
                .zip(&h.counts)
                .for_each(|(a, &c)| *a += u64::from(c));
            self.tokens += h.total;
        } else {
            // Different bucket counts: cannot remap hashed counts; ignored (documented).
        }
    }
    fn subtract(&mut self, other: &Counts) {
        let f = |a: &mut u64, b: u64| *a = a.saturating_sub(b);
        f(&mut self.requests, other.requests);
        f(&mut self.tokens, other.tokens);
        self.prompt
            .iter_mut()
            .zip(&other.prompt)
            .for_each(|(a, &b)| f(a, b));
        self.output
            .iter_mut()
            .zip(&other.output)
            .for_each(|(a, &b)| f(a, b));
        self.buckets
            .iter_mut()
            .zip(&other.buckets)
            .for_each(|(a, &b)| f(a, b));
    }
    fn clear(&mut self) {
        self.requests = 0;
        self.tokens = 0;
        for v in [&mut self.prompt, &mut self.output, &mut self.buckets] {
            v.iter_mut().for_each(|c| *c = 0);
        }
    }
    fn to_baseline(&self, bounds: &[u64]) -> Baseline {
        Baseline {
            version: FORMAT_VERSION,
            requests: self.requests,
            tokens: self.tokens,
            length_bounds: bounds.to_vec(),
            prompt_length: self.prompt.clone(),
            output_length: self.output.clone(),
            token_hash: TOKEN_HASH.to_owned(),
            token_buckets: self.buckets.clone(),
        }
    }
}

/// Captures a [`Baseline`] from a reference window of traffic.
#[derive(Clone, Debug)]
pub struct BaselineRecorder {
    bounds: Vec<u64>,
    counts: Counts,
}

impl Default for BaselineRecorder {
    fn default() -> Self {
        BaselineRecorder::new()
    }
}

impl BaselineRecorder {
    /// Default bins: [`default_length_bounds`] and [`DEFAULT_TOKEN_BUCKETS`].
    pub fn new() -> Self {
        BaselineRecorder::with_bins(default_length_bounds(), DEFAULT_TOKEN_BUCKETS)
    }
    /// Custom length bounds (sorted and deduplicated here; empty means the defaults) and
    /// token bucket count (at least 1, at most 2^20).
    pub fn with_bins(mut bounds: Vec<u64>, token_buckets: usize) -> Self {
        bounds.sort_unstable();
        bounds.dedup();
        if bounds.is_empty() {
            bounds = default_length_bounds();
        }
        let n = bounds.len() + 1;
        BaselineRecorder {
            bounds,
            counts: Counts::new(n, token_buckets.clamp(1, 1 << 20)),
        }
    }
    /// Adds one request's prompt and output lengths (in tokens).
    pub fn observe_request(&mut self, prompt_tokens: u64, output_tokens: u64) {
        self.counts
            .add_request(&self.bounds, prompt_tokens, output_tokens);
    }
    /// Adds output token ids.
    pub fn observe_tokens(&mut self, ids: &[u32]) {
        for &id in ids {
            self.counts.add_token(id);
        }
    }
    /// The baseline captured so far.
    pub fn baseline(&self) -> Baseline {
        self.counts.to_baseline(&self.bounds)
    }
}

/// PSI and JSD of one feature; `None` when either side has no observation.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Divergence {
    /// Population stability index, `Σ (a - e) ln(a / e)` over bins of proportions (each at
    /// least [`PSI_FLOOR`]).
    pub psi: Option<f64>,
    /// Jensen-Shannon divergence in bits, in [0, 1].
    pub jsd: Option<f64>,
}

/// The live window compared with the baseline.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct DriftReport {
    /// Requests in the live window.
    pub window_requests: u64,
    /// Prompt length.
    pub prompt_length: Divergence,
    /// Output length.
    pub output_length: Divergence,
    /// Output token-id frequencies.
    pub token_id: Divergence,
}

/// Population stability index of `actual` against `expected` (counts over the same bins).
pub fn psi(expected: &[u64], actual: &[u64]) -> Option<f64> {
    let (te, ta) = (total(expected)?, total(actual)?);
    let mut s = 0.0;
    for (&e, &a) in expected.iter().zip(actual) {
        let e = (e as f64 / te).max(PSI_FLOOR);
        let a = (a as f64 / ta).max(PSI_FLOOR);
        s += (a - e) * (a / e).ln();
    }
    Some(s.max(0.0))
}

/// Jensen-Shannon divergence (base 2, in [0, 1]) of two count vectors over the same bins.
pub fn jsd(p: &[u64], q: &[u64]) -> Option<f64> {
    let (tp, tq) = (total(p)?, total(q)?);
    let mut s = 0.0;
    for (&a, &b) in p.iter().zip(q) {
        let (a, b) = (a as f64 / tp, b as f64 / tq);
        let m = 0.5 * (a + b);
        if a > 0.0 {
            s += 0.5 * a * (a / m).log2();
        }
        if b > 0.0 {
            s += 0.5 * b * (b / m).log2();
        }
    }
    Some(s.clamp(0.0, 1.0))
}

fn total(v: &[u64]) -> Option<f64> {
    let t: u64 = v.iter().fold(0u64, |a, &x| a.saturating_add(x));
    (t > 0).then_some(t as f64)
}

fn divergence(e: &[u64], a: &[u64]) -> Divergence {
    Divergence {
        psi: psi(e, a),
        jsd: jsd(e, a),
    }
}

/// Number of segments the sliding window is made of.
const SEGMENTS: usize = 4;

struct Window {
    segments: Vec<Counts>,
    current: usize,
    sum: Counts,
    /// Registered on the first export (no series reads a reassuring zero before it).
    gauges: Option<Gauges>,
}

/// The drift gauges, registered under one `metrics` recorder.
struct Gauges {
    /// The recorder they were registered under ([`recorder_id`]).
    recorder: usize,
    psi: [Gauge; 3],
    jsd: [Gauge; 3],
    window: Gauge,
}

impl Gauges {
    fn resolve(meter: &Meter) -> Gauges {
        let gauge = |def: &'static MetricDef, feature: Option<&'static str>| -> Gauge {
            let names = meter.metric_names();
            let mut labels: Vec<Label> = names.constant_labels().to_vec();
            if let Some(f) = feature {
                labels.push(Label::new(names.label_key("feature"), f));
            }
            metrics::gauge!(names.name(def).to_owned(), labels)
        };
        Gauges {
            recorder: recorder_id(),
            psi: FEATURES.map(|f| gauge(catalog::quality::DRIFT_PSI, Some(f))),
            jsd: FEATURES.map(|f| gauge(catalog::quality::DRIFT_JSD, Some(f))),
            window: gauge(catalog::quality::DRIFT_WINDOW, None),
        }
    }
}

/// Compares a sliding window of live requests with a [`Baseline`]; shared by all requests
/// (`Arc` it, or hand it to a [`QualityConfig`](crate::QualityConfig)).
///
/// The window is made of four segments of `window_requests / 4` requests; when the current
/// segment fills, the oldest is dropped and the comparison is evaluated and exported. Recording
/// takes a short lock once per request, never per token.
pub struct DriftMonitor {
    baseline: Baseline,
    segment_len: u64,
    window: Mutex<Window>,
    meter: Meter,
}

impl std::fmt::Debug for DriftMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DriftMonitor")
            .field("segment_len", &self.segment_len)
            .finish_non_exhaustive()
    }
}

const FEATURES: [&str; 3] = ["prompt_length", "output_length", "token_id"];

impl DriftMonitor {
    /// A monitor comparing the last `window_requests` requests (at least 4) with `baseline`.
    /// Its gauges, on `meter`'s names and constant labels, are registered at the first export
    /// and again at an export under another `metrics` recorder (so the monitor may be built
    /// before the exporter is installed).
    pub fn new(meter: &Meter, baseline: Baseline, window_requests: u64) -> Self {
        let bins = baseline.length_bounds.len() + 1;
        let buckets = baseline.token_buckets.len();
        let segment_len = (window_requests / SEGMENTS as u64).max(1);
        DriftMonitor {
            segment_len,
            window: Mutex::new(Window {
                segments: (0..SEGMENTS).map(|_| Counts::new(bins, buckets)).collect(),
                current: 0,
                sum: Counts::new(bins, buckets),
                gauges: None,
            }),
            meter: meter.clone(),
            baseline,
        }
    }

    /// The baseline compared against.
    pub fn baseline(&self) -> &Baseline {
        &self.baseline
    }

    /// The number of token buckets a [`TokenHistogram`] must have to be counted.
    pub fn token_buckets(&self) -> usize {
        self.baseline.token_buckets.len()
    }

    fn lock(&self) -> MutexGuard<'_, Window> {
        lock(&self.window)
    }

    /// Adds one finished request: its prompt and output lengths in tokens and, optionally,
    /// its output token ids' bucket counts (ignored if their bucket count differs from the
    /// baseline's). Evaluates and exports when a window segment fills.
    pub fn record(&self, prompt_tokens: u64, output_tokens: u64, tokens: Option<&TokenHistogram>) {
        let mut w = self.lock();
        let w = &mut *w;
        if w.segments[w.current].requests >= self.segment_len {
            // Slide: the oldest segment leaves the window and is reused for new requests.
            w.current = (w.current + 1) % SEGMENTS;
            let old = &mut w.segments[w.current];
            w.sum.subtract(old);
            old.clear();
        }
        let bounds = &self.baseline.length_bounds;
        for c in [&mut w.segments[w.current], &mut w.sum] {
            c.add_request(bounds, prompt_tokens, output_tokens);
            if let Some(h) = tokens {
                c.add_hist(h);
            }
        }
        if w.segments[w.current].requests == self.segment_len {
            let report = self.report(&w.sum);
            self.export(&mut w.gauges, &report);
        }
    }

    fn report(&self, sum: &Counts) -> DriftReport {
        let b = &self.baseline;
        DriftReport {
            window_requests: sum.requests,
            prompt_length: divergence(&b.prompt_length, &sum.prompt),
            output_length: divergence(&b.output_length, &sum.output),
            token_id: divergence(&b.token_buckets, &sum.buckets),
        }
    }

    fn export(&self, g: &mut Option<Gauges>, r: &DriftReport) {
        let recorder = recorder_id();
        let g = match g {
            Some(g) if g.recorder == recorder => g,
            _ => g.insert(Gauges::resolve(&self.meter)),
        };
        g.window.set(r.window_requests as f64);
        for (i, d) in [r.prompt_length, r.output_length, r.token_id]
            .into_iter()
            .enumerate()
        {
            // No data is NaN, not a reassuring zero.
            g.psi[i].set(d.psi.unwrap_or(f64::NAN));
            g.jsd[i].set(d.jsd.unwrap_or(f64::NAN));
        }
    }

    /// Compares the current window with the baseline now and exports the gauges.
    pub fn evaluate(&self) -> DriftReport {
        let mut w = self.lock();
        let report = self.report(&w.sum);
        self.export(&mut w.gauges, &report);
        report
    }

    /// The live window as a baseline (same bins): what a running server serves so that a
    /// baseline can be captured from it (see the `capture_baseline` example).
    pub fn window_baseline(&self) -> Baseline {
        self.lock().sum.to_baseline(&self.baseline.length_bounds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-9)
    }

    #[test]
    fn psi_and_jsd_known_values() {
        assert!(close(psi(&[50, 50], &[50, 50]), 0.0));
        assert!(close(jsd(&[50, 50], &[5, 5]), 0.0));
        // (0.9-0.5)ln(0.9/0.5) + (0.1-0.5)ln(0.1/0.5)
        let want = 0.4 * (1.8f64).ln() + (-0.4) * (0.2f64).ln();
        assert!(close(psi(&[1, 1], &[9, 1]), want));
        assert!(close(jsd(&[1, 0], &[0, 1]), 1.0));
        assert_eq!(psi(&[0, 0], &[1, 1]), None);
        assert_eq!(jsd(&[1, 1], &[]), None);
        // Empty bin on one side: floored, finite.
        assert!(psi(&[10, 0], &[0, 10]).is_some_and(f64::is_finite));
    }

    #[test]
    fn bins() {
        let b = default_length_bounds();
        assert_eq!(length_bin(&b, 0), 0);
        assert_eq!(length_bin(&b, 1), 1);
        assert_eq!(length_bin(&b, 2), 2);
        assert_eq!(length_bin(&b, 3), 3);
        assert_eq!(length_bin(&b, 4), 3);
        assert_eq!(length_bin(&b, u64::MAX), b.len());
        assert!(token_bucket(u32::MAX, 256) < 256);
        assert_eq!(token_bucket(7, 0), 0);
    }

    #[test]
    fn baseline_roundtrip_and_corrupt_files() {
        let dir = std::env::temp_dir().join(format!("tm-quality-drift-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut rec = BaselineRecorder::new();
        rec.observe_request(10, 3);
        rec.observe_tokens(&[1, 2, 3]);
        let b = rec.baseline();
        let good = dir.join("good.json");
        b.save(&good).expect("save");
        assert_eq!(Baseline::load(&good).expect("load"), b);

        let corrupt = dir.join("corrupt.json");
        std::fs::write(&corrupt, b"{\"version\": 1, \"requests\": ").expect("write");
        let e = Baseline::load(&corrupt).expect_err("corrupt");
        assert!(matches!(e, BaselineError::Parse { .. }));
        assert!(e.to_string().contains("corrupt.json"), "{e}");

        let mut bad = b.clone();
        bad.requests += 1;
        let inconsistent = dir.join("inconsistent.json");
        std::fs::write(&inconsistent, serde_json::to_vec(&bad).expect("json")).expect("write");
        let e = Baseline::load(&inconsistent).expect_err("inconsistent");
        assert!(matches!(e, BaselineError::Invalid { .. }));
        assert!(e.to_string().contains("inconsistent.json"), "{e}");

        let missing = dir.join("missing.json");
        let e = Baseline::load(&missing).expect_err("missing");
        assert!(matches!(e, BaselineError::Read { .. }) && e.to_string().contains("missing.json"));

        let e = b
            .save(dir.join("no-such-dir").join("x.json"))
            .expect_err("unwritable");
        assert!(matches!(e, BaselineError::Write { .. }) && e.to_string().contains("x.json"));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn window_slides_and_matches_identical_traffic() {
        let mut rec = BaselineRecorder::new();
        for i in 0..40u64 {
            rec.observe_request(i, 2 * i);
        }
        let meter = Meter::default();
        let drift = DriftMonitor::new(&meter, rec.baseline(), 40);
        assert_eq!(drift.evaluate().prompt_length.psi, None);
        for i in 0..40u64 {
            drift.record(i, 2 * i, None);
        }
        // The fourth segment filled: the window rotated and the oldest (empty) segment went.
        let r = drift.evaluate();
        assert_eq!(r.window_requests, 40);
        assert!(close(r.prompt_length.psi, 0.0) && close(r.output_length.jsd, 0.0));
        assert_eq!(r.token_id, Divergence::default());
        // Ten more requests push the first segment out.
        for _ in 0..10 {
            drift.record(5, 5, None);
        }
        assert_eq!(drift.evaluate().window_requests, 40);
        assert_eq!(drift.window_baseline().requests, 40);
        assert!(drift.window_baseline().validate().is_ok());
    }

    #[test]
    fn merge_checks_bins() {
        let mut a = BaselineRecorder::new().baseline();
        let mut rec = BaselineRecorder::new();
        rec.observe_request(1, 1);
        a.merge(&rec.baseline()).expect("same bins");
        assert_eq!(a.requests, 1);
        let other = BaselineRecorder::with_bins(vec![1, 2], 8).baseline();
        assert!(a.merge(&other).is_err());
        assert!(a.compare(&other).is_err());
        let r = a.compare(&a.clone()).expect("same bins");
        assert_eq!(
            (r.window_requests, r.prompt_length.psi, r.token_id.psi),
            (1, Some(0.0), None)
        );
    }
}
