//! Pluggable scorers for what needs a model (sentiment, toxicity, a safety classifier), and a
//! small lexicon-based sentiment scorer as the example implementation.
//!
//! ```
//! use tokenmeter_quality::{LexiconSentiment, Scorer};
//! let s = LexiconSentiment::default();
//! assert_eq!(s.score("This is great, thanks!"), Some(1.0));
//! assert_eq!(s.score("terrible and useless"), Some(-1.0));
//! assert_eq!(s.score("The capital of France is Paris."), Some(0.0));
//! ```

use std::collections::HashSet;

/// Scores a finished output. Implementations must be cheap enough to run at request end on
/// the server's thread, or the server runs them elsewhere and reports the result with
/// [`QualityMonitor::record_score`](crate::QualityMonitor::record_score).
pub trait Scorer: Send + Sync {
    /// The scorer's name: the `scorer` label value (keep it short and fixed).
    fn name(&self) -> &str;
    /// The score of `text`, by convention in [-1, 1] (sentiment) or [0, 1] (probabilities);
    /// `None` when the text cannot be scored. Non-finite scores are dropped.
    fn score(&self, text: &str) -> Option<f64>;
}

/// Sentiment in [-1, 1] as `(positive - negative) / (positive + negative)` word counts over a
/// small English lexicon (0 when no lexicon word occurs); a negator (`not`, `no`, `never`,
/// ...) directly before a word flips it. A toy baseline that shows the plumbing, not a model.
#[derive(Clone, Debug)]
pub struct LexiconSentiment {
    positive: HashSet<String>,
    negative: HashSet<String>,
}

const POSITIVE: &[&str] = &[
    "good",
    "great",
    "excellent",
    "amazing",
    "awesome",
    "helpful",
    "happy",
    "glad",
    "love",
    "like",
    "nice",
    "perfect",
    "wonderful",
    "fantastic",
    "thanks",
    "thank",
    "correct",
    "clear",
    "useful",
    "best",
    "pleasure",
    "enjoy",
    "success",
    "successful",
    "works",
    "well",
];
const NEGATIVE: &[&str] = &[
    "bad",
    "terrible",
    "awful",
    "horrible",
    "useless",
    "hate",
    "wrong",
    "poor",
    "worst",
    "sorry",
    "unfortunately",
    "fail",
    "failed",
    "failure",
    "broken",
    "error",
    "angry",
    "sad",
    "annoying",
    "stupid",
    "disappointing",
    "problem",
    "unable",
    "cannot",
    "can't",
    "refuse",
];
const NEGATORS: &[&str] = &[
    "not", "no", "never", "don't", "isn't", "wasn't", "aren't", "won't",
];

impl Default for LexiconSentiment {
    fn default() -> Self {
        LexiconSentiment::new(POSITIVE.iter().copied(), NEGATIVE.iter().copied())
    }
}

impl LexiconSentiment {
    /// A scorer over custom word lists (matched lowercase, whole words).
    pub fn new<'a>(
        positive: impl IntoIterator<Item = &'a str>,
        negative: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        LexiconSentiment {
            positive: positive.into_iter().map(str::to_lowercase).collect(),
            negative: negative.into_iter().map(str::to_lowercase).collect(),
        }
    }
}

impl Scorer for LexiconSentiment {
    fn name(&self) -> &str {
        "lexicon_sentiment"
    }

    fn score(&self, text: &str) -> Option<f64> {
        let (mut pos, mut neg) = (0u32, 0u32);
        let mut negated = false;
        let mut word = String::new();
        let words = text
            .split(|c: char| !(c.is_alphanumeric() || c == '\'' || c == '\u{2019}'))
            .filter(|w| !w.is_empty());
        for raw in words {
            word.clear();
            word.extend(
                raw.chars()
                    .map(|c| if c == '\u{2019}' { '\'' } else { c })
                    .flat_map(char::to_lowercase),
            );
            let (p, n) = (self.positive.contains(&word), self.negative.contains(&word));
            match (p, n, negated) {
                (true, _, false) | (_, true, true) => pos += 1,
                (true, _, true) | (_, true, false) => neg += 1,
                _ => {}
            }
            negated = NEGATORS.contains(&word.as_str());
        }
        let total = pos + neg;
        Some(if total == 0 {
            0.0
        } else {
            (f64::from(pos) - f64::from(neg)) / f64::from(total)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexicon_scores() {
        let s = LexiconSentiment::default();
        assert_eq!(s.name(), "lexicon_sentiment");
        assert_eq!(s.score(""), Some(0.0));
        assert_eq!(s.score("GOOD good bad"), Some(1.0 / 3.0));
        assert_eq!(s.score("not good"), Some(-1.0));
        assert_eq!(s.score("never bad, great"), Some(1.0));
        assert_eq!(s.score("I can\u{2019}t"), Some(-1.0));
        let custom = LexiconSentiment::new(["Yay"], ["boo"]);
        assert_eq!(custom.score("yay yay boo"), Some(1.0 / 3.0));
    }
}
