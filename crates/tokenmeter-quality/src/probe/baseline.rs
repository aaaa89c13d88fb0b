//! The golden-set baseline: the per-method scores of a pass after a good deployment, saved as
//! JSON in the drift baseline's format family (a `version` field, load/validate/save with
//! errors naming the file, written to a temporary file renamed into place).
//!
//! ```json
//! {"version": 1, "golden_set": "facts", "model_version": "v1", "prompts": 20,
//!  "scores": {"contains": 0.95, "f1": 0.81}}
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use super::report::PassReport;
use super::score::Scoring;
use crate::drift::{BaselineError, parse_validated, read_validated, write_json};

/// The golden baseline file format version this crate writes and reads.
pub const GOLDEN_FORMAT_VERSION: u32 = 1;

/// Per-method scores captured from a good pass; exported as `quality_golden_baseline_score`
/// so an alert can compare the live score with it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenBaseline {
    /// File format version ([`GOLDEN_FORMAT_VERSION`]).
    pub version: u32,
    /// The golden set's name.
    pub golden_set: String,
    /// The model version the baseline was captured on.
    pub model_version: String,
    /// Items answered in the captured pass.
    pub prompts: usize,
    /// Mean score in [0, 1] per method.
    pub scores: BTreeMap<Scoring, f64>,
}

impl GoldenBaseline {
    /// The baseline of one pass: its per-method means. `None` when the pass answered nothing.
    pub fn from_pass(pass: &PassReport) -> Option<GoldenBaseline> {
        (pass.ok > 0).then(|| GoldenBaseline {
            version: GOLDEN_FORMAT_VERSION,
            golden_set: pass.golden_set.clone(),
            model_version: pass.model_version.clone(),
            prompts: pass.ok,
            scores: pass.scores.iter().map(|s| (s.scoring, s.mean)).collect(),
        })
    }

    /// Reads and validates a baseline file.
    ///
    /// # Errors
    ///
    /// [`BaselineError::Read`], [`BaselineError::Parse`] or [`BaselineError::Invalid`], each
    /// naming the file.
    pub fn load(path: impl AsRef<Path>) -> Result<GoldenBaseline, BaselineError> {
        read_validated(path.as_ref(), GoldenBaseline::validate)
    }

    /// Parses and validates baseline JSON; `origin` names the source in errors.
    ///
    /// # Errors
    ///
    /// [`BaselineError::Parse`] or [`BaselineError::Invalid`].
    pub fn from_json_slice(
        json: &[u8],
        origin: impl AsRef<Path>,
    ) -> Result<GoldenBaseline, BaselineError> {
        parse_validated(json, origin.as_ref(), GoldenBaseline::validate)
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
        if self.version != GOLDEN_FORMAT_VERSION {
            return Err(format!(
                "format version {} (expected {GOLDEN_FORMAT_VERSION})",
                self.version
            ));
        }
        if self.golden_set.is_empty() {
            return Err("golden_set is empty".into());
        }
        if self.scores.is_empty() {
            return Err("scores is empty".into());
        }
        if let Some((m, s)) = self.scores.iter().find(|(_, s)| !(0.0..=1.0).contains(*s)) {
            return Err(format!("score {s} of {} is outside [0, 1]", m.as_str()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn baseline() -> GoldenBaseline {
        GoldenBaseline {
            version: GOLDEN_FORMAT_VERSION,
            golden_set: "facts".into(),
            model_version: "v1".into(),
            prompts: 20,
            scores: [(Scoring::Contains, 0.95), (Scoring::F1, 0.5)].into(),
        }
    }

    #[test]
    fn saves_and_loads_the_same_baseline() {
        let path = std::env::temp_dir().join(format!("tm-golden-bl-{}.json", std::process::id()));
        baseline().save(&path).expect("save");
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains("\"contains\": 0.95"), "{text}");
        assert_eq!(GoldenBaseline::load(&path).expect("load"), baseline());
        std::fs::remove_file(&path).ok();
    }

    #[test]
    fn bad_files_name_the_file_and_reason() {
        let err = |json: &str| {
            GoldenBaseline::from_json_slice(json.as_bytes(), "bl.json")
                .expect_err("must fail")
                .to_string()
        };
        let mut b = baseline();
        b.scores.insert(Scoring::Bleu, 1.5);
        let json = serde_json::to_string(&b).expect("json");
        assert_eq!(
            err(&json),
            "baseline file bl.json is inconsistent: score 1.5 of bleu is outside [0, 1]"
        );
        b.scores.clear();
        assert_eq!(
            err(&serde_json::to_string(&b).expect("json")),
            "baseline file bl.json is inconsistent: scores is empty"
        );
        assert!(err("{").starts_with("baseline file bl.json is not valid baseline JSON"));
        let other = r#"{"version": 2, "golden_set": "s", "model_version": "", "prompts": 1, "scores": {"f1": 1.0}}"#;
        assert_eq!(
            err(other),
            "baseline file bl.json is inconsistent: format version 2 (expected 1)"
        );
        assert!(matches!(
            GoldenBaseline::load("/nonexistent/bl.json"),
            Err(BaselineError::Read { .. })
        ));
    }
}
