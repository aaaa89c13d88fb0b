//! The golden set: a JSONL file of prompts with reference answers and a scoring method.
//!
//! One JSON object per line (blank lines are ignored):
//!
//! ```text
//! {"id": "capital-fr", "prompt": "What is the capital of France?", "references": ["Paris"], "scoring": "contains"}
//! {"id": "sum", "prompt": "2+2=", "references": ["4", "four"], "scoring": "exact", "max_tokens": 4}
//! ```
//!
//! `id` must be unique and non-empty, `prompt` non-empty, `references` non-empty; `scoring` is
//! one of [`Scoring`]'s names; `max_tokens` (optional, at least 1) is handed to the callback.
//! Unknown fields are an error (a misspelt `max_tokens` should not be silently ignored).

use std::path::{Path, PathBuf};

use super::score::Scoring;

/// One golden-set item.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GoldenItem {
    /// Unique id within the set (goes to the per-item results, never to a label).
    pub id: String,
    /// The prompt handed to the probe callback.
    pub prompt: String,
    /// Acceptable answers; an answer's score is its best score over them.
    pub references: Vec<String>,
    /// How answers are scored.
    pub scoring: Scoring,
    /// An output-length cap for this prompt, handed to the callback.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
}

/// A non-empty list of [`GoldenItem`]s with a name (the `golden_set` label).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct GoldenSet {
    name: String,
    items: Vec<GoldenItem>,
}

/// A golden-set file that could not be read or is not a valid set; every variant names the
/// file.
#[derive(Debug, thiserror::Error)]
pub enum GoldenError {
    /// The file could not be read.
    #[error("cannot read golden set {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line is not a valid item.
    #[error("golden set {} line {line}: {reason}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The file has no item.
    #[error("golden set {} has no item", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The set's name is empty.
    #[error("golden set {}: the set name is empty", path.display())]
    EmptyName {
        /// The file.
        path: PathBuf,
    },
}

impl GoldenSet {
    /// Reads a JSONL golden set; its name is the file stem (`golden/facts.jsonl` is `facts`).
    ///
    /// # Errors
    ///
    /// [`GoldenError::Read`], [`GoldenError::Line`] (with the line number and reason) or
    /// [`GoldenError::Empty`], each naming the file.
    pub fn load(path: impl AsRef<Path>) -> Result<GoldenSet, GoldenError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| GoldenError::Read {
            path: path.to_owned(),
            source,
        })?;
        let name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        GoldenSet::parse(&name, &text, path)
    }

    /// Parses JSONL text; `origin` names the source in errors. A leading UTF-8 byte order mark
    /// (as some Windows editors write) is skipped. A line that is not valid JSON or not an item
    /// gives serde's reason and the column in that line (`line 2: unknown variant ... (column
    /// 68)`).
    ///
    /// ```
    /// use tokenmeter_quality::probe::{GoldenSet, Scoring};
    /// let set = GoldenSet::parse(
    ///     "facts",
    ///     r#"{"id": "fr", "prompt": "Capital of France?", "references": ["Paris"], "scoring": "contains"}"#,
    ///     "inline",
    /// )?;
    /// assert_eq!(set.items()[0].scoring, Scoring::Contains);
    /// let err = GoldenSet::parse("facts", "{\"id\": 1}\n", "facts.jsonl").expect_err("must fail");
    /// assert!(err.to_string().starts_with("golden set facts.jsonl line 1: "));
    /// # Ok::<(), tokenmeter_quality::probe::GoldenError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`GoldenError::Line`], [`GoldenError::Empty`] or [`GoldenError::EmptyName`].
    pub fn parse(
        name: &str,
        text: &str,
        origin: impl AsRef<Path>,
    ) -> Result<GoldenSet, GoldenError> {
        let path = origin.as_ref();
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let items = text
            .lines()
            .enumerate()
            .filter(|(_, raw)| !raw.trim().is_empty())
            .map(|(i, raw)| {
                serde_json::from_str(raw)
                    .map(|item| (i + 1, item))
                    .map_err(|e| GoldenError::Line {
                        path: path.to_owned(),
                        line: i + 1,
                        reason: json_reason(&e),
                    })
            });
        GoldenSet::build(name, items, path)
    }

    /// Validates numbered items (ids unique, fields non-empty) into a set; the first bad line
    /// is the error.
    fn build(
        name: &str,
        items: impl IntoIterator<Item = Result<(usize, GoldenItem), GoldenError>>,
        path: &Path,
    ) -> Result<GoldenSet, GoldenError> {
        let line_err = |line: usize, reason: String| GoldenError::Line {
            path: path.to_owned(),
            line,
            reason,
        };
        if name.is_empty() {
            return Err(GoldenError::EmptyName {
                path: path.to_owned(),
            });
        }
        let mut out: Vec<GoldenItem> = Vec::new();
        let mut ids = std::collections::HashMap::new();
        for r in items {
            let (line, item) = r?;
            item.validate().map_err(|r| line_err(line, r))?;
            if let Some(first) = ids.insert(item.id.clone(), line) {
                return Err(line_err(
                    line,
                    format!("duplicate id {:?} (first on line {first})", item.id),
                ));
            }
            out.push(item);
        }
        if out.is_empty() {
            return Err(GoldenError::Empty {
                path: path.to_owned(),
            });
        }
        Ok(GoldenSet {
            name: name.to_owned(),
            items: out,
        })
    }

    /// A set built in code (tests, sets generated by the server).
    ///
    /// # Errors
    ///
    /// As [`parse`](Self::parse), with `line` the 1-based index of the offending item and
    /// `<memory>` as the file.
    pub fn from_items(name: &str, items: Vec<GoldenItem>) -> Result<GoldenSet, GoldenError> {
        let numbered = items
            .into_iter()
            .enumerate()
            .map(|(i, item)| Ok((i + 1, item)));
        GoldenSet::build(name, numbered, Path::new("<memory>"))
    }

    /// The set's name (the `golden_set` label).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The items, in file order (never empty).
    pub fn items(&self) -> &[GoldenItem] {
        &self.items
    }

    /// The number of items (at least 1).
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Always false: an empty set is an error at parse time. For clippy's `len_without_is_empty`.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

impl GoldenItem {
    fn validate(&self) -> Result<(), String> {
        if self.id.trim().is_empty() {
            return Err("`id` is empty".into());
        }
        if self.prompt.trim().is_empty() {
            return Err(format!("item {:?}: `prompt` is empty", self.id));
        }
        if self.references.is_empty() {
            return Err(format!("item {:?}: `references` is empty", self.id));
        }
        if self.references.iter().any(|r| r.trim().is_empty()) {
            return Err(format!("item {:?}: a reference is empty", self.id));
        }
        if self.max_tokens == Some(0) {
            return Err(format!("item {:?}: `max_tokens` is 0", self.id));
        }
        Ok(())
    }
}

/// serde's message with the column in the line instead of its own location: each line is
/// parsed alone, so serde's "at line 1" would contradict the file's line number.
fn json_reason(e: &serde_json::Error) -> String {
    let full = e.to_string();
    let location = format!(" at line {} column {}", e.line(), e.column());
    match full.strip_suffix(&location) {
        Some(message) => format!("{message} (column {})", e.column()),
        None => full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"id": "a", "prompt": "Capital of France?", "references": ["Paris"], "scoring": "contains"}

{"id": "b", "prompt": "2+2=", "references": ["4", "four"], "scoring": "exact", "max_tokens": 4}
"#;

    fn err(text: &str) -> String {
        match GoldenSet::parse("s", text, "set.jsonl") {
            Ok(_) => panic!("parsed: {text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn parses_items_skipping_blank_lines() {
        let set = GoldenSet::parse("s", GOOD, "set.jsonl").expect("valid");
        assert_eq!(set.name(), "s");
        assert_eq!(set.len(), 2);
        assert_eq!(set.items()[1].references, ["4", "four"]);
        assert_eq!(set.items()[1].max_tokens, Some(4));
        assert_eq!(set.items()[0].max_tokens, None);
    }

    #[test]
    fn a_bad_line_gives_its_column_not_serdes_line_and_a_bom_is_skipped() {
        let text = format!(
            "{}\n{}",
            r#"{"id": "a", "prompt": "x", "references": ["y"], "scoring": "f1"}"#,
            r#"{"id": "b", "prompt": "x", "references": ["y"], "scoring": "contans"}"#
        );
        let e = err(&text);
        assert!(
            e.starts_with("golden set set.jsonl line 2: unknown variant `contans`, expected"),
            "{e}"
        );
        assert!(e.ends_with(" (column 68)"), "{e}");
        assert!(!e.contains("at line"), "{e}");
        let set = GoldenSet::parse("s", &format!("\u{feff}{GOOD}"), "set.jsonl").expect("valid");
        assert_eq!(set.len(), 2);
    }

    #[test]
    fn malformed_lines_name_file_line_and_reason() {
        let bad_json = format!("{GOOD}{{\"id\": \"c\", \"prompt\": \"x\"\n");
        let e = err(&bad_json);
        assert!(e.starts_with("golden set set.jsonl line 4: "), "{e}");
        assert!(e.contains("EOF"), "{e}");
        let e = err(r#"{"id": "c", "prompt": "x", "references": ["y"], "scoring": "meteor"}"#);
        assert!(
            e.starts_with("golden set set.jsonl line 1: unknown variant `meteor`"),
            "{e}"
        );
        let e = err(r#"{"id": "c", "prompt": "x", "references": [], "scoring": "f1"}"#);
        assert_eq!(
            e,
            "golden set set.jsonl line 1: item \"c\": `references` is empty"
        );
        let e = err(r#"{"id": "c", "prompt": " ", "references": ["y"], "scoring": "f1"}"#);
        assert_eq!(
            e,
            "golden set set.jsonl line 1: item \"c\": `prompt` is empty"
        );
        let e = err(
            r#"{"id": "c", "prompt": "x", "references": ["y"], "scoring": "f1", "max_tokns": 3}"#,
        );
        assert!(e.contains("unknown field `max_tokns`"), "{e}");
        let e = err(
            r#"{"id": "c", "prompt": "x", "references": ["y"], "scoring": "f1", "max_tokens": 0}"#,
        );
        assert_eq!(
            e,
            "golden set set.jsonl line 1: item \"c\": `max_tokens` is 0"
        );
        let dup = format!(
            "{GOOD}{{\"id\": \"a\", \"prompt\": \"x\", \"references\": [\"y\"], \"scoring\": \"bleu\"}}"
        );
        assert_eq!(
            err(&dup),
            "golden set set.jsonl line 4: duplicate id \"a\" (first on line 1)"
        );
    }

    #[test]
    fn the_first_bad_line_is_the_error() {
        let text = "{\"id\": \"c\", \"prompt\": \"x\", \"references\": [], \"scoring\": \"f1\"}\n{";
        assert_eq!(
            err(text),
            "golden set set.jsonl line 1: item \"c\": `references` is empty"
        );
        let item = |id: &str| GoldenItem {
            id: id.into(),
            prompt: "p".into(),
            references: vec!["r".into()],
            scoring: Scoring::Exact,
            max_tokens: None,
        };
        let dup = GoldenSet::from_items("s", vec![item("a"), item("b"), item("a")]);
        assert_eq!(
            dup.expect_err("duplicate").to_string(),
            "golden set <memory> line 3: duplicate id \"a\" (first on line 1)"
        );
        assert_eq!(
            GoldenSet::from_items("s", vec![item("a")])
                .map(|s| s.len())
                .ok(),
            Some(1)
        );
    }

    #[test]
    fn empty_set_is_an_error() {
        assert_eq!(err(""), "golden set set.jsonl has no item");
        assert_eq!(err("\n  \n"), "golden set set.jsonl has no item");
        assert!(matches!(
            GoldenSet::from_items("s", Vec::new()),
            Err(GoldenError::Empty { .. })
        ));
    }

    #[test]
    fn load_reads_the_file_and_names_the_set_after_its_stem() {
        let dir = std::env::temp_dir().join(format!("tm-golden-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("facts.jsonl");
        std::fs::write(&path, GOOD).expect("write");
        let set = GoldenSet::load(&path).expect("load");
        assert_eq!(set.name(), "facts");
        let missing = GoldenSet::load(dir.join("none.jsonl")).expect_err("must fail");
        assert!(matches!(missing, GoldenError::Read { .. }));
        assert!(missing.to_string().contains("none.jsonl"));
        std::fs::remove_dir_all(&dir).ok();
    }
}
