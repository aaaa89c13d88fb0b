//! Locating `prometheus` and `promtool`: `TOKENMETER_PROMETHEUS` / `TOKENMETER_PROMTOOL`
//! (set by `scripts/test` from `scripts/install-test-deps`), then the project's `.cache/`,
//! then `PATH`. When missing, tests fail under `CI=true` and skip with a notice otherwise.

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

fn works(p: &Path) -> bool {
    std::process::Command::new(p)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Finds a binary (`prometheus` or `promtool`).
pub fn find(name: &str) -> Option<PathBuf> {
    let var = format!("TOKENMETER_{}", name.to_ascii_uppercase());
    if let Some(p) = std::env::var_os(&var).map(PathBuf::from)
        && works(&p)
    {
        return Some(p);
    }
    let cached = repo_root()
        .join(".cache/test-deps/prometheus/usr/bin")
        .join(name);
    if works(&cached) {
        return Some(cached);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| works(p))
}

/// Finds a binary or, when it is missing: panics under `CI=true`, else prints a skip notice
/// and returns `None` (the caller returns early).
///
/// # Panics
///
/// When the binary is missing and `CI` is `true`.
pub fn require(name: &str) -> Option<PathBuf> {
    if let Some(p) = find(name) {
        return Some(p);
    }
    let msg = format!(
        "{name} not found (TOKENMETER_{}, .cache/test-deps, PATH): run scripts/install-test-deps",
        name.to_ascii_uppercase()
    );
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{msg}");
    eprintln!("SKIPPED: {msg}");
    None
}

/// Runs `promtool check metrics` on `exposition` and asserts that it parses. promtool also
/// exits non-zero for lint findings, some about names inherited from the OTel and vLLM
/// conventions; parse errors are what matter.
///
/// # Panics
///
/// When promtool cannot run or reports a parse error.
pub fn check_metrics(promtool: &Path, exposition: &str) {
    use std::io::Write as _;
    use std::process::{Command, Stdio};
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs");
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(exposition.as_bytes())
        .expect("exposition written to promtool");
    let out = child.wait_with_output().expect("promtool output");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !report.contains("error while linting") && !report.contains("text format parsing error"),
        "{report}"
    );
}
