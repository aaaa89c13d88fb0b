//! The probe: a golden set, the server's callback, the schedule, the pass loop and its
//! exports, and the thread that drives it in production.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use metrics::Label;
use tokenmeter_core::Meter;
use tokenmeter_core::catalog::{self, MetricDef};
use tokenmeter_core::clock::Instant;
use tokenmeter_core::emit::lock;

use super::baseline::GoldenBaseline;
use super::golden::{GoldenItem, GoldenSet};
use super::report::{ItemResult, Outcome, PassReport};
use super::schedule::Schedule;

/// One golden prompt, as the callback receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbePrompt {
    /// The item's id.
    pub id: String,
    /// The prompt text.
    pub prompt: String,
    /// The item's output-length cap, if it has one.
    pub max_tokens: Option<u32>,
}

/// The callback's answer: the text and the timings it measured on its serving path.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProbeAnswer {
    /// The generated text (scored, never exported or logged).
    pub text: String,
    /// Time to first token, if the serving path measured it.
    pub ttft: Option<Duration>,
    /// Time per output token, if the serving path measured it.
    pub tpot: Option<Duration>,
    /// End-to-end duration; `None` lets the probe time the call on the meter's clock.
    pub e2e: Option<Duration>,
}

impl ProbeAnswer {
    /// An answer with no timings of its own (the probe times the call for E2E).
    pub fn new(text: impl Into<String>) -> Self {
        ProbeAnswer {
            text: text.into(),
            ..ProbeAnswer::default()
        }
    }
    /// Sets the time to first token.
    pub fn ttft(mut self, d: Duration) -> Self {
        self.ttft = Some(d);
        self
    }
    /// Sets the time per output token.
    pub fn tpot(mut self, d: Duration) -> Self {
        self.tpot = Some(d);
        self
    }
    /// Sets the end-to-end duration.
    pub fn e2e(mut self, d: Duration) -> Self {
        self.e2e = Some(d);
        self
    }
}

/// How and when a probe runs.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeConfig {
    /// The model version probed: the `model_version` label and the reports' field. Default
    /// empty: the meter's [`model_version`](Meter::model_version) (when that is empty too, the
    /// label is absent in Prometheus).
    pub model_version: String,
    /// Time between passes (default 5 minutes), scaled per pass by the jitter.
    pub interval: Duration,
    /// Each interval is scaled by a uniform factor in [1 − jitter, 1 + jitter], so replicas
    /// started together do not probe together; in [0, 1), default 0.1.
    pub jitter: f64,
    /// The jitter's random seed (default 0; give replicas different ones, e.g. a hash of the
    /// host name).
    pub seed: u64,
    /// Budget: at most this many prompts per hour (a token bucket holding one hour's worth;
    /// default 600). A pass runs only when the bucket holds the whole set; otherwise it is
    /// skipped and its prompts count as `budget`. Must be at least the set's size.
    pub prompts_per_hour: u32,
    /// Wall-clock limit per prompt (default 60 s). A call past it counts as `timeout` and the
    /// pass moves on; the call's thread cannot be killed, so it is left to finish on its own
    /// and its late answer is dropped. Until it finishes, later prompts are skipped as `hung`
    /// (the next pass first gives it one more timeout), so at most one abandoned thread
    /// exists and probes never run two at a time. Wall-clock rather than the meter's clock: a
    /// hung call has to be abandoned in real time.
    pub timeout: Duration,
    /// The capacity-share guard: a prompt is skipped as `busy` when the meter's running plus
    /// waiting requests exceed this. `None` (default): no limit.
    pub max_in_flight: Option<u64>,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig {
            model_version: String::new(),
            interval: Duration::from_secs(300),
            jitter: 0.1,
            seed: 0,
            prompts_per_hour: 600,
            timeout: Duration::from_secs(60),
            max_in_flight: None,
        }
    }
}

/// A probe configuration that cannot work.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProbeError {
    /// The configuration is invalid; the message says which field and why.
    #[error("invalid probe configuration: {0}")]
    Config(String),
    /// A baseline for another golden set.
    #[error("baseline is for golden set {baseline:?}, the probe runs {probe:?}")]
    BaselineSet {
        /// The baseline's set.
        baseline: String,
        /// The probe's set.
        probe: String,
    },
}

type Callback = dyn Fn(&ProbePrompt) -> Result<ProbeAnswer, String> + Send + Sync;
type Busy = dyn Fn() -> bool + Send + Sync;
/// What a call's thread sends back: the callback's result (or the panic message) and when it
/// returned.
type CallResult = (Result<Result<ProbeAnswer, String>, String>, Instant);

struct RunState {
    schedule: Schedule,
    passes: u64,
    /// The receiver of a call that timed out and has not returned yet.
    hung: Option<Receiver<CallResult>>,
}

/// A golden-set probe: runs a [`GoldenSet`] through the server's own serving path (the
/// callback), scores the answers, and exports the results.
///
/// Drive it with [`Probe::start`] in production (its own thread, never the generation loop),
/// or with [`Probe::tick`] / [`Probe::run_pass`] from a loop of your own or a test.
///
/// ```
/// use std::time::Duration;
/// use tokenmeter_quality::probe::{GoldenSet, Probe, ProbeAnswer, ProbeConfig, Scoring};
///
/// let set = GoldenSet::parse(
///     "facts",
///     r#"{"id": "fr", "prompt": "Capital of France?", "references": ["Paris"], "scoring": "contains"}"#,
///     "inline",
/// )?;
/// let meter = tokenmeter_core::Meter::default();
/// let config = ProbeConfig { model_version: "v1".into(), ..ProbeConfig::default() };
/// let probe = Probe::new(&meter, set, config, |p| {
///     // The server's own path: here a canned answer.
///     Ok::<_, std::io::Error>(ProbeAnswer::new(format!("It is Paris. ({})", p.id)))
/// })?;
/// let pass = probe.run_pass();
/// assert_eq!(pass.score_of(Scoring::Contains), Some(1.0));
/// assert_eq!(probe.latest().map(|p| p.ok), Some(1));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct Probe {
    meter: Meter,
    set: GoldenSet,
    config: ProbeConfig,
    callback: Arc<Callback>,
    is_busy: Option<Box<Busy>>,
    created: Instant,
    run: Mutex<RunState>,
    latest: Mutex<Option<Arc<PassReport>>>,
    baseline: Mutex<Option<GoldenBaseline>>,
    /// Whether a [`ProbeRunner`] of this probe is running (one thread per probe).
    running: AtomicBool,
}

impl std::fmt::Debug for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probe")
            .field("golden_set", &self.set.name())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Probe {
    /// A probe of `set` through `callback`, timed on `meter`'s clock and exported with its
    /// names and constant labels. The first pass is due one (jittered) interval from now.
    /// Registers the prompt counters at zero, so `rate()` sees them before the first pass.
    ///
    /// The callback runs on a thread of its own per prompt; an `Err` counts as `error` with
    /// its `Display` text in the report, a panic as `panic` (caught; the panic hook still
    /// prints it, as for any panic).
    ///
    /// # Errors
    ///
    /// [`ProbeError::Config`] when the interval or timeout is zero, the jitter is outside
    /// [0, 1), or the budget is smaller than the set (no pass could ever run).
    pub fn new<F, E>(
        meter: &Meter,
        set: GoldenSet,
        mut config: ProbeConfig,
        callback: F,
    ) -> Result<Probe, ProbeError>
    where
        F: Fn(&ProbePrompt) -> Result<ProbeAnswer, E> + Send + Sync + 'static,
        E: std::fmt::Display,
    {
        if config.model_version.is_empty() {
            config.model_version = meter.model_version().to_owned();
        }
        let bad = |m: String| Err(ProbeError::Config(m));
        if config.interval.is_zero() {
            return bad("interval is zero".into());
        }
        if config.timeout.is_zero() {
            return bad("timeout is zero".into());
        }
        if !(0.0..1.0).contains(&config.jitter) {
            return bad(format!("jitter {} is outside [0, 1)", config.jitter));
        }
        if (config.prompts_per_hour as usize) < set.len() {
            return bad(format!(
                "prompts_per_hour {} is smaller than the golden set ({} prompts): no pass could run",
                config.prompts_per_hour,
                set.len()
            ));
        }
        let now = meter.now();
        let schedule = Schedule::new(
            now,
            config.interval,
            config.jitter,
            config.seed,
            config.prompts_per_hour,
        );
        let probe = Probe {
            meter: meter.clone(),
            callback: Arc::new(move |p: &ProbePrompt| callback(p).map_err(|e| e.to_string())),
            is_busy: None,
            created: now,
            run: Mutex::new(RunState {
                schedule,
                passes: 0,
                hung: None,
            }),
            latest: Mutex::new(None),
            baseline: Mutex::new(None),
            running: AtomicBool::new(false),
            set,
            config,
        };
        for o in Outcome::ALL {
            probe
                .counter(catalog::quality::GOLDEN_PROMPTS, Some(o))
                .absolute(0);
        }
        probe
            .counter(catalog::quality::GOLDEN_PASSES, None)
            .absolute(0);
        Ok(probe)
    }

    /// Adds a busy predicate: when it returns true (or panics) before a prompt, the prompt is
    /// skipped as `busy`. Called on the probe's thread, once per prompt; keep it cheap.
    pub fn is_busy(mut self, busy: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.is_busy = Some(Box::new(busy));
        self
    }

    /// The golden set.
    pub fn golden_set(&self) -> &GoldenSet {
        &self.set
    }

    /// The configuration.
    pub fn config(&self) -> &ProbeConfig {
        &self.config
    }

    /// The latest pass that ran at least one prompt (passes skipped whole do not replace it).
    pub fn latest(&self) -> Option<Arc<PassReport>> {
        lock(&self.latest).clone()
    }

    /// When the next scheduled pass is due, on the meter's clock.
    pub fn next_due(&self) -> Instant {
        lock(&self.run).schedule.next_due()
    }

    /// Sets the baseline the alert compares with and exports it as
    /// `quality_golden_baseline_score` (again at each pass, so a recorder installed later sees
    /// it too).
    ///
    /// # Errors
    ///
    /// [`ProbeError::BaselineSet`] when the baseline is for another golden set.
    pub fn set_baseline(&self, baseline: GoldenBaseline) -> Result<(), ProbeError> {
        if baseline.golden_set != self.set.name() {
            return Err(ProbeError::BaselineSet {
                baseline: baseline.golden_set,
                probe: self.set.name().to_owned(),
            });
        }
        self.export_baseline(&baseline);
        *lock(&self.baseline) = Some(baseline);
        Ok(())
    }

    /// Runs a pass when one is due at `now` (and schedules the next); `None` otherwise.
    pub fn tick(&self, now: Instant) -> Option<Arc<PassReport>> {
        let due = lock(&self.run).schedule.take_due(now);
        due.then(|| self.run_pass())
    }

    /// Runs one pass now, whatever the schedule: every item in order, one at a time, each
    /// skipped when the server is busy or an earlier call hangs; the whole pass is skipped
    /// when the budget cannot cover it. Records the metrics and one `tracing` event
    /// (target `tokenmeter::probe`), and returns the report. Blocks for as long as the calls
    /// take (at most the timeout each); concurrent calls wait for each other.
    pub fn run_pass(&self) -> Arc<PassReport> {
        let mut st = lock(&self.run);
        let start = self.meter.now();
        st.passes += 1;
        let budget_ok = st.schedule.take_budget(start, self.set.len());
        if budget_ok {
            // A call abandoned in an earlier pass gets one more timeout to return.
            wait_hung(&mut st.hung, self.config.timeout);
        }
        let mut items = Vec::with_capacity(self.set.len());
        for item in self.set.items() {
            let result = if !budget_ok {
                skipped(item, Outcome::Budget)
            } else if still_hung(&mut st.hung) {
                st.schedule.refund(1);
                skipped(item, Outcome::Hung)
            } else if self.busy() {
                st.schedule.refund(1);
                skipped(item, Outcome::Busy)
            } else {
                self.call(item, &mut st.hung)
            };
            items.push(result);
        }
        let end = self.meter.now();
        let report = Arc::new(PassReport::new(
            self.set.name(),
            &self.config.model_version,
            st.passes,
            start.saturating_duration_since(self.created).as_secs_f64(),
            end.saturating_duration_since(start).as_secs_f64(),
            items,
        ));
        drop(st);
        self.export(&report);
        if report.items.iter().any(|i| i.outcome.ran()) {
            *lock(&self.latest) = Some(report.clone());
        }
        report
    }

    /// Starts the probe's thread: it runs each pass when due ([`tick`](Self::tick) on the
    /// meter's clock) and sleeps until the next. Stop it by dropping or
    /// [`stop`](ProbeRunner::stop)ping the runner, which waits for the pass in progress: at
    /// most two timeouts longer than its answered prompts take, since once a call hangs the
    /// pass skips the rest.
    ///
    /// One runner per probe: while one runs, `start` returns an error rather than a second
    /// thread (the runner is owned, so there is no handle to share); once it is stopped,
    /// `start` may be called again.
    ///
    /// # Errors
    ///
    /// [`std::io::ErrorKind::AlreadyExists`] when a runner of this probe is running; the OS
    /// error when the thread cannot be spawned.
    pub fn start(self: &Arc<Self>) -> std::io::Result<ProbeRunner> {
        if self.running.swap(true, Ordering::AcqRel) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "this golden-set probe's runner is already started (stop it first)",
            ));
        }
        let (stop, stopped) = mpsc::channel::<()>();
        let probe = Arc::clone(self);
        let spawned = std::thread::Builder::new()
            .name("tokenmeter-probe".into())
            .spawn(move || {
                loop {
                    probe.tick(probe.meter.now());
                    let wait = probe
                        .next_due()
                        .saturating_duration_since(probe.meter.now());
                    match stopped.recv_timeout(wait) {
                        Err(RecvTimeoutError::Timeout) => {}
                        Ok(()) | Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            });
        match spawned {
            Ok(thread) => Ok(ProbeRunner {
                probe: Arc::clone(self),
                stop: Some(stop),
                thread: Some(thread),
            }),
            Err(e) => {
                self.running.store(false, Ordering::Release);
                Err(e)
            }
        }
    }

    /// Whether the server is too busy for a probe prompt now. The in-flight count comes from
    /// the meter's snapshot (a short lock, once per probe prompt: far off any hot path).
    fn busy(&self) -> bool {
        if let Some(max) = self.config.max_in_flight {
            let s = self.meter.snapshot();
            if s.running.saturating_add(s.waiting) > max {
                return true;
            }
        }
        self.is_busy
            .as_ref()
            .is_some_and(|f| catch_unwind(AssertUnwindSafe(f)).unwrap_or(true))
    }

    /// Runs one prompt on a thread of its own and waits at most the timeout for it.
    fn call(&self, item: &GoldenItem, hung: &mut Option<Receiver<CallResult>>) -> ItemResult {
        let mut result = skipped(item, Outcome::Timeout);
        let prompt = ProbePrompt {
            id: item.id.clone(),
            prompt: item.prompt.clone(),
            max_tokens: item.max_tokens,
        };
        let (tx, rx) = mpsc::sync_channel::<CallResult>(1);
        let callback = Arc::clone(&self.callback);
        let clock = self.meter.clock().clone();
        let start = self.meter.now();
        let spawned = std::thread::Builder::new()
            .name("tokenmeter-probe-call".into())
            .spawn(move || {
                let r = catch_unwind(AssertUnwindSafe(|| callback(&prompt))).map_err(panic_text);
                // The receiver is gone when the call timed out and a later one replaced it.
                let _ = tx.send((r, clock.now()));
            });
        if let Err(e) = spawned {
            result.outcome = Outcome::Error;
            result.error = Some(format!("cannot start the probe call's thread: {e}"));
            return result;
        }
        match rx.recv_timeout(self.config.timeout) {
            Ok((Ok(Ok(answer)), end)) => {
                let e2e = answer.e2e.unwrap_or(end.saturating_duration_since(start));
                result.outcome = Outcome::Ok;
                result.score = Some(item.scoring.score(&answer.text, &item.references));
                result.ttft_seconds = answer.ttft.map(|d| d.as_secs_f64());
                result.tpot_seconds = answer.tpot.map(|d| d.as_secs_f64());
                result.e2e_seconds = Some(e2e.as_secs_f64());
            }
            Ok((Ok(Err(e)), _)) => {
                result.outcome = Outcome::Error;
                result.error = Some(e);
            }
            Ok((Err(p), _)) => {
                result.outcome = Outcome::Panic;
                result.error = Some(p);
            }
            Err(RecvTimeoutError::Timeout) => *hung = Some(rx),
            Err(RecvTimeoutError::Disconnected) => {
                // Only if the thread died without sending, which catch_unwind rules out
                // except for a panic while formatting the panic message.
                result.outcome = Outcome::Panic;
            }
        }
        result
    }

    fn labels(&self, extra: &[(&str, &str)]) -> Vec<Label> {
        let mut kv = vec![
            ("golden.set", self.set.name()),
            ("model.version", self.config.model_version.as_str()),
        ];
        kv.extend_from_slice(extra);
        self.meter.metric_names().labels(&kv)
    }

    fn counter(&self, def: &'static MetricDef, outcome: Option<Outcome>) -> metrics::Counter {
        let extra: Vec<(&str, &str)> = outcome
            .map(|o| ("outcome", o.as_str()))
            .into_iter()
            .collect();
        metrics::counter!(
            self.meter.metric_names().name(def).to_owned(),
            self.labels(&extra)
        )
    }

    fn histogram(&self, def: &'static MetricDef) -> metrics::Histogram {
        metrics::histogram!(
            self.meter.metric_names().name(def).to_owned(),
            self.labels(&[])
        )
    }

    fn export_baseline(&self, b: &GoldenBaseline) {
        let names = self.meter.metric_names();
        let name = names.name(catalog::quality::GOLDEN_BASELINE).to_owned();
        for (m, s) in &b.scores {
            let labels = names.labels(&[
                ("golden.set", b.golden_set.as_str()),
                ("model.version", b.model_version.as_str()),
                ("scorer", m.as_str()),
            ]);
            metrics::gauge!(name.clone(), labels).set(*s);
        }
    }

    /// Metrics and the `tracing` event of one pass. Handles are looked up per pass, not kept:
    /// a pass is rare, and a recorder installed later then sees every series.
    fn export(&self, r: &PassReport) {
        for o in Outcome::ALL {
            let n = r.count(o);
            if n > 0 {
                self.counter(catalog::quality::GOLDEN_PROMPTS, Some(o))
                    .increment(n as u64);
            }
        }
        if r.items.iter().any(|i| i.outcome.ran()) {
            self.counter(catalog::quality::GOLDEN_PASSES, None)
                .increment(1);
        }
        let (ttft, tpot, e2e) = (
            self.histogram(catalog::quality::GOLDEN_TTFT),
            self.histogram(catalog::quality::GOLDEN_TPOT),
            self.histogram(catalog::quality::GOLDEN_E2E),
        );
        for i in &r.items {
            i.ttft_seconds.into_iter().for_each(|v| ttft.record(v));
            i.tpot_seconds.into_iter().for_each(|v| tpot.record(v));
            i.e2e_seconds.into_iter().for_each(|v| e2e.record(v));
        }
        let score = self
            .meter
            .metric_names()
            .name(catalog::quality::GOLDEN_SCORE)
            .to_owned();
        for s in &r.scores {
            metrics::gauge!(
                score.clone(),
                self.labels(&[("scorer", s.scoring.as_str())])
            )
            .set(s.mean);
        }
        if let Some(b) = lock(&self.baseline).as_ref() {
            self.export_baseline(b);
        }
        let scores: std::collections::BTreeMap<&str, f64> = r
            .scores
            .iter()
            .map(|s| (s.scoring.as_str(), s.mean))
            .collect();
        tracing::info!(
            target: "tokenmeter::probe",
            golden_set = %r.golden_set,
            model_version = %r.model_version,
            pass = r.pass,
            prompts = r.prompts,
            ok = r.ok,
            errors = r.errors,
            panics = r.panics,
            timeouts = r.timeouts,
            skipped = r.skipped,
            score = r.score,
            scores = %serde_json::to_string(&scores).unwrap_or_default(),
            duration_s = r.duration_seconds,
            "golden-set probe pass"
        );
    }
}

/// Stops the probe's thread when dropped (see [`Probe::start`]).
#[derive(Debug)]
pub struct ProbeRunner {
    probe: Arc<Probe>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ProbeRunner {
    /// Stops the thread and waits for it (the pass in progress finishes first).
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            // The loop catches every panic of user code; a join error cannot carry one.
            let _ = t.join();
            self.probe.running.store(false, Ordering::Release);
        }
    }
}

impl Drop for ProbeRunner {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn skipped(item: &GoldenItem, outcome: Outcome) -> ItemResult {
    ItemResult {
        id: item.id.clone(),
        scoring: item.scoring,
        outcome,
        score: None,
        ttft_seconds: None,
        tpot_seconds: None,
        e2e_seconds: None,
        error: None,
    }
}

/// Waits at most `timeout` for an abandoned call to return (and drops its late answer).
fn wait_hung(hung: &mut Option<Receiver<CallResult>>, timeout: Duration) {
    if let Some(rx) = hung.as_ref()
        && !matches!(rx.recv_timeout(timeout), Err(RecvTimeoutError::Timeout))
    {
        *hung = None;
    }
}

/// Whether a timed-out call is still running; clears it once it has returned (its late answer
/// is dropped).
fn still_hung(hung: &mut Option<Receiver<CallResult>>) -> bool {
    let running = hung
        .as_ref()
        .is_some_and(|rx| matches!(rx.try_recv(), Err(TryRecvError::Empty)));
    if !running {
        *hung = None;
    }
    running
}

fn panic_text(p: Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".into())
}
