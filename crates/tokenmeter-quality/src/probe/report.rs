//! What one probe pass found: per item, per scoring method and in total; serializable.

use super::score::Scoring;

/// How one golden prompt of a pass ended (its `outcome` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The callback answered; the answer was scored.
    Ok,
    /// The callback returned an error.
    Error,
    /// The callback panicked (caught; the scheduler goes on).
    Panic,
    /// The callback did not answer within the timeout; its thread is abandoned (see
    /// [`ProbeConfig::timeout`](super::ProbeConfig::timeout)).
    Timeout,
    /// Skipped: the server was busy (in-flight limit or the `is_busy` predicate).
    Busy,
    /// Skipped: the prompts-per-hour budget could not cover the pass.
    Budget,
    /// Skipped: an earlier timed-out call is still running (one probe at a time).
    Hung,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 7] = [
        Outcome::Ok,
        Outcome::Error,
        Outcome::Panic,
        Outcome::Timeout,
        Outcome::Busy,
        Outcome::Budget,
        Outcome::Hung,
    ];

    /// The `outcome` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Error => "error",
            Outcome::Panic => "panic",
            Outcome::Timeout => "timeout",
            Outcome::Busy => "busy",
            Outcome::Budget => "budget",
            Outcome::Hung => "hung",
        }
    }

    /// Whether the prompt was sent to the callback (every outcome but the skips).
    pub fn ran(self) -> bool {
        matches!(
            self,
            Outcome::Ok | Outcome::Error | Outcome::Panic | Outcome::Timeout
        )
    }
}

/// One golden item in a pass. No prompt or answer text: only the id, the outcome and numbers
/// (and the callback's error message, which is the server's own text).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ItemResult {
    /// The item's id in the golden set.
    pub id: String,
    /// The item's scoring method.
    pub scoring: Scoring,
    /// How it ended.
    pub outcome: Outcome,
    /// Its score in [0, 1] when answered.
    pub score: Option<f64>,
    /// Time to first token in seconds, when the callback reported it.
    pub ttft_seconds: Option<f64>,
    /// Time per output token in seconds, when the callback reported it.
    pub tpot_seconds: Option<f64>,
    /// End-to-end seconds when answered: the callback's own, else the probe's timing of the
    /// call on the meter's clock.
    pub e2e_seconds: Option<f64>,
    /// The callback's error or panic message, for [`Outcome::Error`] and [`Outcome::Panic`].
    pub error: Option<String>,
}

/// The mean score of one scoring method over the answered items that use it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ScorerResult {
    /// The method.
    pub scoring: Scoring,
    /// Answered items scored with it.
    pub items: usize,
    /// Their mean score in [0, 1].
    pub mean: f64,
}

/// One pass over a golden set.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PassReport {
    /// The set's name.
    pub golden_set: String,
    /// The model version probed (the probe's configuration).
    pub model_version: String,
    /// 1 for the probe's first pass, then counting up (passes skipped whole count too).
    pub pass: u64,
    /// Seconds from the probe's creation to the pass's start, on the meter's clock.
    pub started_seconds: f64,
    /// Seconds the pass took, on the meter's clock.
    pub duration_seconds: f64,
    /// Items in the set.
    pub prompts: usize,
    /// Prompts answered and scored.
    pub ok: usize,
    /// Prompts whose callback returned an error.
    pub errors: usize,
    /// Prompts whose callback panicked.
    pub panics: usize,
    /// Prompts that timed out.
    pub timeouts: usize,
    /// Prompts skipped (busy, budget or hung).
    pub skipped: usize,
    /// Mean score over all answered items, whatever their method; `None` when none was
    /// answered. Compare it only between passes over the same items (see `skipped`).
    pub score: Option<f64>,
    /// Mean score per method that had at least one answered item, in [`Scoring::ALL`] order.
    pub scores: Vec<ScorerResult>,
    /// Every item, in set order.
    pub items: Vec<ItemResult>,
}

impl PassReport {
    /// Builds the summary fields from the per-item results.
    pub(crate) fn new(
        golden_set: &str,
        model_version: &str,
        pass: u64,
        started_seconds: f64,
        duration_seconds: f64,
        items: Vec<ItemResult>,
    ) -> PassReport {
        let count = |o: Outcome| items.iter().filter(|i| i.outcome == o).count();
        let scored: Vec<(Scoring, f64)> = items
            .iter()
            .filter_map(|i| i.score.map(|s| (i.scoring, s)))
            .collect();
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let all: Vec<f64> = scored.iter().map(|(_, s)| *s).collect();
        let scores = Scoring::ALL
            .iter()
            .filter_map(|&m| {
                let v: Vec<f64> = scored
                    .iter()
                    .filter(|(k, _)| *k == m)
                    .map(|(_, s)| *s)
                    .collect();
                (!v.is_empty()).then(|| ScorerResult {
                    scoring: m,
                    items: v.len(),
                    mean: mean(&v),
                })
            })
            .collect();
        PassReport {
            golden_set: golden_set.to_owned(),
            model_version: model_version.to_owned(),
            pass,
            started_seconds,
            duration_seconds,
            prompts: items.len(),
            ok: count(Outcome::Ok),
            errors: count(Outcome::Error),
            panics: count(Outcome::Panic),
            timeouts: count(Outcome::Timeout),
            skipped: items.iter().filter(|i| !i.outcome.ran()).count(),
            score: (!all.is_empty()).then(|| mean(&all)),
            scores,
            items,
        }
    }

    /// The mean score of one method in this pass, if any item of it was answered.
    pub fn score_of(&self, scoring: Scoring) -> Option<f64> {
        self.scores
            .iter()
            .find(|s| s.scoring == scoring)
            .map(|s| s.mean)
    }

    /// Prompts with this outcome.
    pub fn count(&self, outcome: Outcome) -> usize {
        self.items.iter().filter(|i| i.outcome == outcome).count()
    }
}
