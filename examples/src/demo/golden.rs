//! The demo's golden set: short factual questions SmolLM2-135M-Instruct answers correctly with
//! greedy decoding (`examples/golden/smollm2.jsonl`), run through the server's own HTTP path
//! every few seconds during the load, once per variant, and scored by normalized containment.
//!
//! TEMPORARY stand-in: the file parser and the `contains` scorer here are placeholders for
//! `tokenmeter_quality::probe` (golden set, scorers and probe scheduler, being built on the
//! `probes` branch); the pass loop is a placeholder for its scheduler.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::loadgen::{ClientRecord, chat_body, stream_chat_as};
use super::model::BoxError;

/// The golden set the demo runs by default.
pub fn default_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/smollm2.jsonl")
}

/// `max_tokens` of a golden request: the answers are one short sentence.
pub const MAX_TOKENS: u32 = 32;

/// One golden item: `{"id", "prompt", "references": [..], "scoring": "contains"}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenItem {
    /// Unique id.
    pub id: String,
    /// The user message.
    pub prompt: String,
    /// Accepted answers.
    pub references: Vec<String>,
    /// Scoring method (only `contains` here).
    pub scoring: String,
}

/// Reads a golden JSONL file (blank lines ignored).
///
/// # Errors
/// A line that is not a valid item (with its number), an unknown scoring, or an empty set.
pub fn load(path: &Path) -> Result<Vec<GoldenItem>, BoxError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read golden set {}: {e}", path.display()))?;
    let mut items = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let item: GoldenItem =
            serde_json::from_str(line).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1))?;
        if item.scoring != "contains" || item.references.is_empty() {
            return Err(format!(
                "{}:{}: needs scoring \"contains\" and at least one reference",
                path.display(),
                i + 1
            )
            .into());
        }
        items.push(item);
    }
    if items.is_empty() {
        return Err(format!("golden set {} is empty", path.display()).into());
    }
    Ok(items)
}

/// SQuAD-style normalization: lowercase, punctuation dropped, articles dropped, words.
fn normalize(s: &str) -> Vec<String> {
    let kept: String = s
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || c.is_whitespace())
        .collect();
    kept.split_whitespace()
        .filter(|w| !matches!(*w, "a" | "an" | "the"))
        .map(str::to_string)
        .collect()
}

/// 1 when some reference's normalized words occur contiguously in the answer's, else 0.
pub fn contains(answer: &str, references: &[String]) -> f64 {
    let a = normalize(answer);
    let hit = references.iter().any(|r| {
        let r = normalize(r);
        !r.is_empty() && a.windows(r.len()).any(|w| w == r.as_slice())
    });
    f64::from(u8::from(hit))
}

/// One pass of the golden set on one variant.
#[derive(Debug, Clone, Serialize)]
pub struct GoldenPass {
    /// The variant asked for (`a` / `b`), or empty without variants.
    pub variant: String,
    /// Seconds since the load started, when the pass began.
    pub started: f64,
    /// (item id, score in [0, 1]) per item answered.
    pub scores: Vec<(String, f64)>,
    /// Items whose request failed.
    pub failures: u64,
}

impl GoldenPass {
    /// Mean score of the items answered.
    pub fn score(&self) -> Option<f64> {
        (!self.scores.is_empty())
            .then(|| self.scores.iter().map(|s| s.1).sum::<f64>() / self.scores.len() as f64)
    }
}

/// The golden probe of a load run.
#[derive(Debug, Clone)]
pub struct GoldenProbe {
    /// The items.
    pub items: Arc<Vec<GoldenItem>>,
    /// A pass starts this long after the previous one ended.
    pub every: Duration,
    /// The variants each pass runs on (empty: whatever the server picks).
    pub variants: Vec<String>,
}

/// Runs passes until `deadline` (a pass in progress stops there), one request at a time (greedy, streamed like any client);
/// every request also goes to `records`, so the run's counters reconcile with the server's.
pub async fn run(
    probe: GoldenProbe,
    client: reqwest::Client,
    base: String,
    model: String,
    origin: Instant,
    deadline: Instant,
    records: Arc<Mutex<Vec<ClientRecord>>>,
) -> Vec<GoldenPass> {
    let mut passes = Vec::new();
    let variants: Vec<Option<String>> = if probe.variants.is_empty() {
        vec![None]
    } else {
        probe.variants.iter().cloned().map(Some).collect()
    };
    while Instant::now() < deadline {
        // Each item on every variant before the next item: the variants see the same load
        // over time, so their latencies compare.
        let started = origin.elapsed().as_secs_f64();
        let mut round: Vec<GoldenPass> = variants
            .iter()
            .map(|v| GoldenPass {
                variant: v.clone().unwrap_or_default(),
                started,
                scores: Vec::new(),
                failures: 0,
            })
            .collect();
        'items: for item in probe.items.iter() {
            for (v, pass) in variants.iter().zip(round.iter_mut()) {
                if Instant::now() >= deadline {
                    break 'items; // the load is over: a partial pass, scored on what it answered
                }
                let body = chat_body(&model, &item.prompt, MAX_TOKENS, 0.0, 0);
                match stream_chat_as(&client, &base, &body, origin, v.as_deref()).await {
                    Ok(rec) => {
                        if rec.error.is_none() {
                            pass.scores
                                .push((item.id.clone(), contains(&rec.text, &item.references)));
                        } else {
                            pass.failures += 1;
                        }
                        if let Ok(mut r) = records.lock() {
                            r.push(rec);
                        }
                    }
                    Err(_) => pass.failures += 1,
                }
            }
        }
        passes.extend(round);
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(probe.every.min(left)).await;
    }
    passes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contains_normalizes_words() {
        let refs = vec!["Paris".to_string(), "the blue whale".to_string()];
        assert_eq!(contains("The capital of France is PARIS.", &refs), 1.0);
        assert_eq!(contains("It is the Blue-whale", &refs), 0.0);
        assert_eq!(contains("A blue whale!", &refs), 1.0);
        assert_eq!(contains("Parisian", &refs), 0.0);
        assert_eq!(contains("", &refs), 0.0);
    }

    #[test]
    fn the_committed_golden_set_loads() {
        let items = load(&default_path()).expect("golden set");
        assert!(items.len() >= 20, "{}", items.len());
        let mut ids: Vec<_> = items.iter().map(|i| i.id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), items.len(), "ids are unique");
    }

    #[test]
    fn bad_lines_are_named() {
        let dir = std::env::temp_dir().join(format!("tm-demo-golden-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let p = dir.join("g.jsonl");
        std::fs::write(
            &p,
            "{\"id\":\"a\",\"prompt\":\"q\",\"references\":[\"x\"],\"scoring\":\"contains\"}\n\n{\"id\":\"b\"}\n",
        )
        .expect("write");
        let e = load(&p).expect_err("bad line").to_string();
        assert!(e.contains("g.jsonl:3"), "{e}");
        std::fs::write(&p, "\n").expect("write");
        assert!(load(&p).expect_err("empty").to_string().contains("empty"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
