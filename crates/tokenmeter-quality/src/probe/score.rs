//! Reference-based scorers for golden-set answers, each in [0, 1], the best over an item's
//! references.
//!
//! Written here rather than taken from a crate: crates.io has no maintained Rust crate for
//! SQuAD F1, ROUGE-L or sentence BLEU (the established implementations are Python: the SQuAD
//! v1.1 evaluation script, Google's `rouge-score`, `sacrebleu`), and each is a few lines over a
//! shared tokenizer. The definitions follow those implementations; differences are stated.
//!
//! Two normalizations:
//!
//! - [`normalize`] (exact match, contains, F1): the SQuAD v1.1 `normalize_answer`: lowercase,
//!   drop punctuation (here every character that is neither alphanumeric nor whitespace, so
//!   Unicode punctuation and symbols too, where SQuAD drops ASCII punctuation only), drop the
//!   articles `a`, `an`, `the`, and collapse whitespace.
//! - [`tokens`] (ROUGE-L, BLEU): `rouge-score`'s default tokenizer without stemming: lowercase,
//!   every non-alphanumeric character a separator. sacreBLEU's `13a` tokenizer keeps
//!   punctuation as tokens; here it is dropped, so BLEU here is a little lower on answers whose
//!   punctuation matched and equal otherwise.

use std::collections::HashMap;

/// How a golden item's answer is scored against its references.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum Scoring {
    /// SQuAD exact match: 1 when the [`normalize`]d answer equals a normalized reference.
    Exact,
    /// 1 when a normalized reference occurs in the normalized answer as a run of whole words
    /// (`4` is in `it is 4.` but not in `14`).
    Contains,
    /// SQuAD token-level F1 of the normalized words (bag of words, counts clipped).
    F1,
    /// ROUGE-L F-measure (β = 1): from the longest common subsequence of [`tokens`], as
    /// `rouge-score` computes it.
    RougeL,
    /// Sentence BLEU-4 on [`tokens`]: uniform weights, clipped n-gram counts over all
    /// references, brevity penalty against the closest reference length, effective order and
    /// sacreBLEU's default `exp` smoothing (Chen & Cherry 2014, method 3).
    Bleu,
}

impl Scoring {
    /// Every method, in label order.
    pub const ALL: [Scoring; 5] = [
        Scoring::Exact,
        Scoring::Contains,
        Scoring::F1,
        Scoring::RougeL,
        Scoring::Bleu,
    ];

    /// The method's name: its `scoring` value in the golden file and its `scorer` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Scoring::Exact => "exact",
            Scoring::Contains => "contains",
            Scoring::F1 => "f1",
            Scoring::RougeL => "rouge_l",
            Scoring::Bleu => "bleu",
        }
    }

    /// The answer's score in [0, 1]: the best over `references` (0 when there is none).
    ///
    /// ```
    /// use tokenmeter_quality::probe::Scoring;
    /// assert_eq!(Scoring::Exact.score("The Paris!", &["paris"]), 1.0);
    /// assert_eq!(Scoring::Contains.score("It is Paris.", &["paris"]), 1.0);
    /// assert_eq!(Scoring::F1.score("Paris France", &["Paris"]), 2.0 / 3.0);
    /// ```
    pub fn score<S: AsRef<str>>(self, answer: &str, references: &[S]) -> f64 {
        let one = |r: &str| match self {
            Scoring::Exact => exact(answer, r),
            Scoring::Contains => contains(answer, r),
            Scoring::F1 => f1(answer, r),
            Scoring::RougeL => rouge_l(answer, r),
            Scoring::Bleu => bleu(answer, std::slice::from_ref(&r)),
        };
        match self {
            // BLEU pools n-gram counts over references rather than taking a maximum.
            Scoring::Bleu if !references.is_empty() => {
                let refs: Vec<&str> = references.iter().map(AsRef::as_ref).collect();
                bleu(answer, &refs)
            }
            _ => references
                .iter()
                .map(|r| one(r.as_ref()))
                .fold(0.0, f64::max),
        }
    }
}

/// SQuAD v1.1 answer normalization (see the module docs): the normalized words.
///
/// ```
/// assert_eq!(tokenmeter_quality::probe::normalize("The  U.S. is  a Country!"), ["us", "is", "country"]);
/// ```
pub fn normalize(text: &str) -> Vec<String> {
    let cleaned: String = text
        .chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace())
        .flat_map(char::to_lowercase)
        .collect();
    cleaned
        .split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(str::to_owned)
        .collect()
}

/// The ROUGE/BLEU tokenizer (see the module docs): lowercase alphanumeric runs.
///
/// ```
/// assert_eq!(tokenmeter_quality::probe::tokens("It's 4, the answer."), ["it", "s", "4", "the", "answer"]);
/// ```
pub fn tokens(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .collect()
}

/// SQuAD exact match against one reference: 1 or 0.
pub fn exact(answer: &str, reference: &str) -> f64 {
    f64::from(u8::from(normalize(answer) == normalize(reference)))
}

/// Normalized containment against one reference: 1 when the reference's normalized words occur
/// contiguously in the answer's; 0 otherwise (also for a reference that normalizes to nothing).
pub fn contains(answer: &str, reference: &str) -> f64 {
    let (a, r) = (normalize(answer), normalize(reference));
    let hit = !r.is_empty() && a.windows(r.len()).any(|w| w == r.as_slice());
    f64::from(u8::from(hit))
}

/// SQuAD token F1 against one reference: 2PR/(P+R) over the bag of normalized words. When both
/// normalize to nothing it is 1, when only one does it is 0 (SQuAD v2's convention).
pub fn f1(answer: &str, reference: &str) -> f64 {
    let (a, r) = (normalize(answer), normalize(reference));
    if a.is_empty() || r.is_empty() {
        return f64::from(u8::from(a.is_empty() && r.is_empty()));
    }
    let mut counts: HashMap<&str, i64> = HashMap::new();
    for w in &r {
        *counts.entry(w).or_default() += 1;
    }
    let mut common = 0u64;
    for w in &a {
        if let Some(c) = counts.get_mut(w.as_str())
            && *c > 0
        {
            *c -= 1;
            common += 1;
        }
    }
    f_measure(common, a.len(), r.len())
}

/// ROUGE-L F-measure against one reference: P = LCS/|answer|, R = LCS/|reference| over
/// [`tokens`], F = 2PR/(P+R); 0 when either is empty.
pub fn rouge_l(answer: &str, reference: &str) -> f64 {
    let (a, r) = (tokens(answer), tokens(reference));
    if a.is_empty() || r.is_empty() {
        return 0.0;
    }
    // One row of the LCS table at a time: O(|a|·|r|) time, O(|r|) memory.
    let mut prev = vec![0usize; r.len() + 1];
    let mut row = vec![0usize; r.len() + 1];
    for x in &a {
        for (j, y) in r.iter().enumerate() {
            row[j + 1] = if x == y {
                prev[j] + 1
            } else {
                row[j].max(prev[j + 1])
            };
        }
        std::mem::swap(&mut prev, &mut row);
    }
    f_measure(prev[r.len()] as u64, a.len(), r.len())
}

fn f_measure(common: u64, answer_len: usize, reference_len: usize) -> f64 {
    if common == 0 {
        return 0.0;
    }
    let p = common as f64 / answer_len as f64;
    let r = common as f64 / reference_len as f64;
    2.0 * p * r / (p + r)
}

/// Maximum n-gram order of [`bleu`].
pub const BLEU_MAX_ORDER: usize = 4;

/// Sentence BLEU in [0, 1] against one or more references (see [`Scoring::Bleu`]); 0 for an
/// empty answer or no reference.
pub fn bleu<S: AsRef<str>>(answer: &str, references: &[S]) -> f64 {
    let hyp = tokens(answer);
    let refs: Vec<Vec<String>> = references.iter().map(|r| tokens(r.as_ref())).collect();
    if hyp.is_empty() || refs.is_empty() {
        return 0.0;
    }
    // Closest reference length; ties go to the shorter (sacreBLEU's `closest`).
    let ref_len = refs
        .iter()
        .map(Vec::len)
        .min_by_key(|&l| (l.abs_diff(hyp.len()), l))
        .unwrap_or(0);
    let mut log_sum = 0.0;
    let mut order = 0;
    let mut smooth = 1.0;
    for n in 1..=BLEU_MAX_ORDER {
        let total = (hyp.len() + 1).saturating_sub(n);
        if total == 0 {
            break; // effective order: no n-gram of this length in the answer
        }
        order = n;
        let mut max_ref: HashMap<&[String], usize> = HashMap::new();
        for r in &refs {
            let mut c: HashMap<&[String], usize> = HashMap::new();
            r.windows(n).for_each(|g| *c.entry(g).or_default() += 1);
            for (g, k) in c {
                let m = max_ref.entry(g).or_default();
                *m = (*m).max(k);
            }
        }
        let mut hyp_counts: HashMap<&[String], usize> = HashMap::new();
        hyp.windows(n)
            .for_each(|g| *hyp_counts.entry(g).or_default() += 1);
        let correct: usize = hyp_counts
            .iter()
            .map(|(g, &k)| k.min(max_ref.get(g).copied().unwrap_or(0)))
            .sum();
        let precision = if correct == 0 {
            smooth *= 2.0;
            1.0 / (smooth * total as f64)
        } else {
            correct as f64 / total as f64
        };
        log_sum += precision.ln();
    }
    let bp = if hyp.len() < ref_len {
        (1.0 - ref_len as f64 / hyp.len() as f64).exp()
    } else {
        1.0
    };
    bp * (log_sum / order as f64).exp()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn normalization_is_squads() {
        assert_eq!(
            normalize("An Apple, the PIE; a\tcake"),
            ["apple", "pie", "cake"]
        );
        assert_eq!(normalize("Hello-world"), ["helloworld"]); // dropped, not split, as SQuAD
        assert_eq!(normalize("¡Olé!"), ["olé"]);
        assert!(normalize("The.").is_empty());
    }

    #[test]
    fn exact_match() {
        assert_eq!(exact("  The Eiffel Tower. ", "eiffel tower"), 1.0);
        assert_eq!(exact("Eiffel Tower in Paris", "eiffel tower"), 0.0);
        assert_eq!(Scoring::Exact.score("four", &["4", "Four"]), 1.0);
        assert_eq!(Scoring::Exact.score("five", &["4", "Four"]), 0.0);
    }

    #[test]
    fn contains_matches_whole_words_only() {
        assert_eq!(contains("The answer is 4.", "4"), 1.0);
        assert_eq!(contains("The answer is 14.", "4"), 0.0);
        assert_eq!(contains("It's New  York City!", "new york"), 1.0);
        assert_eq!(contains("York, New", "new york"), 0.0);
        assert_eq!(contains("anything", "the"), 0.0); // normalizes to nothing
    }

    #[test]
    fn f1_hand_computed() {
        // answer {paris, is, capital}, reference {paris}: P = 1/3, R = 1, F1 = 0.5.
        assert!(close(f1("Paris is the capital", "Paris"), 0.5));
        // answer {w x y z} vs {x y q}: common 2, P = 2/4, R = 2/3, F1 = 2·(1/2)(2/3)/(7/6) = 4/7.
        assert!(close(f1("w x y z", "x y q"), 4.0 / 7.0));
        // counts are clipped: answer "x x x", reference "x": common 1, P = 1/3, R = 1: 0.5.
        assert!(close(f1("x x x", "x"), 0.5));
        assert_eq!(f1("nothing here", "Paris"), 0.0);
        assert_eq!(f1("the", "a"), 1.0);
        assert_eq!(f1("the", "Paris"), 0.0);
        assert!(close(
            Scoring::F1.score("Paris is the capital", &["Lyon", "Paris capital"]),
            2.0 * (2.0 / 3.0) / (1.0 + 2.0 / 3.0)
        ));
    }

    #[test]
    fn rouge_l_hand_computed() {
        // rouge-score's README example: "The quick brown fox jumps over the lazy dog" vs
        // "The quick brown dog jumps on the log.": LCS = the quick brown jumps the = 5,
        // P = 5/8 (answer), R = 5/9, F = 2·(5/8)(5/9)/(5/8 + 5/9) = 10/17.
        let f = rouge_l(
            "The quick brown dog jumps on the log.",
            "The quick brown fox jumps over the lazy dog",
        );
        assert!(close(f, 10.0 / 17.0), "{f}");
        // Order matters: "b a" vs "a b": LCS 1, P = R = 1/2.
        assert!(close(rouge_l("b a", "a b"), 0.5));
        assert_eq!(rouge_l("", "a b"), 0.0);
        assert_eq!(rouge_l("x y", "a b"), 0.0);
        assert_eq!(rouge_l("A, b!", "a b"), 1.0);
    }

    #[test]
    fn bleu_hand_computed() {
        // Identical 4-token sentences: every precision 1, BP 1.
        assert!(close(bleu("the cat sat down", &["the cat sat down"]), 1.0));
        // hyp "the cat sat" (3 tokens) vs ref "the cat sat down" (4): effective order 3,
        // precisions 1, 1, 1; BP = exp(1 - 4/3).
        assert!(close(
            bleu("the cat sat", &["the cat sat down"]),
            (-1.0f64 / 3.0).exp()
        ));
        // hyp "a b c d" vs ref "a b x d": 1-grams 3/4, 2-grams 1/3 (a b), 3-grams 0 of 2
        // (smoothed 1/(2·2)), 4-grams 0 of 1 (smoothed 1/(4·1)); BP 1.
        let want = ((0.75f64).ln() + (1.0f64 / 3.0).ln() + 0.25f64.ln() + 0.25f64.ln()) / 4.0;
        assert!(close(bleu("a b c d", &["a b x d"]), want.exp()));
        // Clipping over references: hyp "a a a a" vs refs "a b" and "a a c": 1-grams clipped to
        // 2 of 4; 2-grams "a a" clipped to 1 of 3; 3- and 4-grams 0 (smoothed 1/(2·2), 1/(4·1));
        // closest ref length 3 (|4-3| = 1 < |4-2|), BP 1.
        let want = (0.5f64.ln() + (1.0f64 / 3.0).ln() + 0.25f64.ln() + 0.25f64.ln()) / 4.0;
        assert!(close(
            Scoring::Bleu.score("a a a a", &["a b", "a a c"]),
            want.exp()
        ));
        assert_eq!(bleu("", &["a"]), 0.0);
        assert_eq!(bleu::<&str>("a", &[]), 0.0);
        // A one-token answer missing the reference: order 1, precision 1/(2·1).
        assert!(close(bleu("x", &["x"]), 1.0));
        assert!(close(bleu("y", &["x"]), 0.5));
    }

    #[test]
    fn names_round_trip_through_serde() {
        for s in Scoring::ALL {
            let json = serde_json::to_string(&s).expect("serialize");
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<Scoring>(&json).expect("parse"), s);
        }
    }
}
