//! The demo's golden set: short factual questions SmolLM2-135M-Instruct answers correctly with
//! greedy decoding (`examples/golden/smollm2.jsonl`, normalized-contains scoring), run by
//! tokenmeter's golden-set probe ([`tokenmeter::quality::probe`]) through the server's own
//! HTTP path every few seconds during the load, on each variant.
//!
//! One [`Probe`] per variant (its `model_version` is the variant), their passes run side by
//! side, so both variants answer the same item at about the same time and see the same load.
//! The passes are driven by the load (a pass, then `every` seconds, until the load ends), not by
//! the probe's own thread, so a short demo run gets passes from its first second. Each answer's
//! request also goes to the load's records, so the run's counters reconcile with the server's;
//! each answered item's score goes to the A/B readout.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokenmeter::quality::AbMonitor;
use tokenmeter::quality::probe::{
    GoldenSet, PassReport, Probe, ProbeAnswer, ProbeConfig, ProbePrompt,
};
use tokenmeter_core::Meter;

use super::loadgen::{ClientRecord, chat_body, stream_chat_as};
use super::model::BoxError;

/// The golden set the demo runs by default.
pub fn default_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("golden/smollm2.jsonl")
}

/// `max_tokens` of a golden request without its own: the answers are one short sentence.
pub const MAX_TOKENS: u32 = 32;

/// The golden probe of a load run.
#[derive(Debug, Clone)]
pub struct GoldenProbe {
    /// The set.
    pub set: GoldenSet,
    /// The server's meter (the probe's metrics go under its names and labels).
    pub meter: Meter,
    /// A pass starts this long after the previous one ended.
    pub every: Duration,
    /// The variants each pass runs on (empty: whatever the server picks).
    pub variants: Vec<String>,
    /// Where each answered item's score goes, by variant.
    pub ab: Option<Arc<AbMonitor>>,
}

/// Everything a probe's callback needs to send one prompt through the server.
#[derive(Clone)]
struct Target {
    handle: tokio::runtime::Handle,
    client: reqwest::Client,
    base: String,
    model: String,
    origin: Instant,
    variant: Option<String>,
    records: Arc<Mutex<Vec<ClientRecord>>>,
}

impl Target {
    /// Streams one golden prompt (greedy) as any client would; runs on the probe's thread.
    fn ask(&self, p: &ProbePrompt) -> Result<ProbeAnswer, String> {
        let body = chat_body(
            &self.model,
            &p.prompt,
            p.max_tokens.unwrap_or(MAX_TOKENS),
            0.0,
            0,
        );
        let rec = self
            .handle
            .block_on(stream_chat_as(
                &self.client,
                &self.base,
                &body,
                self.origin,
                self.variant.as_deref(),
            ))
            .map_err(|e| e.to_string())?;
        let result = match &rec.error {
            Some(e) => Err(e.clone()),
            None => {
                let secs = Duration::from_secs_f64;
                let mut a = ProbeAnswer::new(rec.text.clone()).e2e(secs(rec.e2e));
                if let Some(t) = rec.ttft {
                    a = a.ttft(secs(t));
                }
                if let Some(t) = rec.tpot {
                    a = a.tpot(secs(t));
                }
                Ok(a)
            }
        };
        if let Ok(mut r) = self.records.lock() {
            r.push(rec);
        }
        result
    }
}

/// Runs passes on every variant side by side until `deadline`; prompts still due after it are
/// skipped (as `busy`: the probe's capacity guard). Returns every pass's report.
///
/// # Errors
/// When a probe cannot be configured (an empty set cannot happen: [`GoldenSet`] refuses it).
pub async fn run(
    probe: GoldenProbe,
    client: reqwest::Client,
    base: String,
    model: String,
    origin: Instant,
    deadline: Instant,
    records: Arc<Mutex<Vec<ClientRecord>>>,
) -> Result<Vec<Arc<PassReport>>, BoxError> {
    let variants: Vec<Option<String>> = if probe.variants.is_empty() {
        vec![None]
    } else {
        probe.variants.iter().cloned().map(Some).collect()
    };
    let mut probes = Vec::new();
    for v in &variants {
        let target = Target {
            handle: tokio::runtime::Handle::current(),
            client: client.clone(),
            base: base.clone(),
            model: model.clone(),
            origin,
            variant: v.clone(),
            records: Arc::clone(&records),
        };
        let config = ProbeConfig {
            model_version: v.clone().unwrap_or_default(),
            interval: probe.every.max(Duration::from_millis(1)),
            // The passes are driven here; the budget only has to cover them.
            prompts_per_hour: u32::MAX,
            timeout: Duration::from_secs(120),
            ..ProbeConfig::default()
        };
        let p = Probe::new(
            &probe.meter,
            probe.set.clone(),
            config,
            move |p: &ProbePrompt| target.ask(p),
        )?
        .is_busy(move || Instant::now() >= deadline);
        probes.push(Arc::new(p));
    }
    let mut passes = Vec::new();
    while Instant::now() < deadline {
        let running: Vec<_> = probes
            .iter()
            .map(|p| {
                let p = Arc::clone(p);
                tokio::task::spawn_blocking(move || p.run_pass())
            })
            .collect();
        for r in running {
            let report = r.await?;
            if let Some(ab) = &probe.ab {
                for item in &report.items {
                    if let Some(s) = item.score {
                        ab.record_golden(&report.model_version, s);
                    }
                }
            }
            passes.push(report);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(probe.every.min(left)).await;
    }
    Ok(passes)
}

/// Mean score of the answered items of the passes on `variant`, and how many were answered.
pub fn score(passes: &[Arc<PassReport>], variant: &str) -> Option<(f64, usize)> {
    let scores: Vec<f64> = passes
        .iter()
        .filter(|p| p.model_version == variant)
        .flat_map(|p| p.items.iter().filter_map(|i| i.score))
        .collect();
    (!scores.is_empty()).then(|| {
        (
            scores.iter().sum::<f64>() / scores.len() as f64,
            scores.len(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_golden_set_loads() {
        let set = GoldenSet::load(default_path()).expect("golden set");
        assert!(set.len() >= 20, "{}", set.len());
        assert_eq!(set.name(), "smollm2");
    }
}
