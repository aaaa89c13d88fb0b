//! Golden-set probes end to end against a debugging recorder and the mock clock: exact scores,
//! timings and counters, and the bad input of issue 17 (a hung probe, a panicking probe, an
//! overloaded server, the budget).

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokenmeter_core::clock::{Clock, Mock};
use tokenmeter_core::{Finish, Meter, catalog};
use tokenmeter_quality::probe::{
    GoldenBaseline, GoldenSet, Outcome, Probe, ProbeAnswer, ProbeConfig, ProbeError, Scoring,
};

const SET: &str = r#"{"id": "fr", "prompt": "Capital of France?", "references": ["Paris"], "scoring": "contains"}
{"id": "sum", "prompt": "2+2=", "references": ["4", "four"], "scoring": "exact", "max_tokens": 4}
{"id": "fox", "prompt": "Say the fox line.", "references": ["the quick brown fox"], "scoring": "f1"}
"#;

fn set() -> GoldenSet {
    GoldenSet::parse("facts", SET, "facts.jsonl").expect("valid set")
}

fn mock_meter() -> (Meter, Arc<Mock>) {
    let (clock, mock) = Clock::mock();
    (Meter::builder().model("m").clock(clock).build(), mock)
}

fn config() -> ProbeConfig {
    ProbeConfig {
        model_version: "v1".into(),
        interval: Duration::from_secs(60),
        jitter: 0.0,
        prompts_per_hour: 30,
        timeout: Duration::from_secs(5),
        ..ProbeConfig::default()
    }
}

/// Canned answers: `fr` right, `sum` wrong, `fox` half right; each takes 2 s of mock time.
fn answers(
    mock: Arc<Mock>,
) -> impl Fn(&tokenmeter_quality::probe::ProbePrompt) -> Result<ProbeAnswer, String> {
    move |p| {
        mock.increment(Duration::from_secs(2));
        let text = match p.id.as_str() {
            "fr" => "It is Paris.",
            "sum" => "5",
            _ => "the quick dog",
        };
        Ok(ProbeAnswer::new(text).ttft(Duration::from_millis(250)))
    }
}

/// One snapshot of the recorder (the debugging recorder drains on each: counters read as the
/// increase since the last snapshot).
struct Seen(Vec<(String, Labels, DebugValue)>);

/// Sorted (key, value) pairs.
type Labels = Vec<(String, String)>;

impl Seen {
    fn take(s: &Snapshotter) -> Seen {
        Seen(
            s.snapshot()
                .into_vec()
                .into_iter()
                .map(|(k, _, _, v)| {
                    let mut labels: Labels = k
                        .key()
                        .labels()
                        .map(|l| (l.key().to_owned(), l.value().to_owned()))
                        .collect();
                    labels.sort();
                    (k.key().name().to_owned(), labels, v)
                })
                .collect(),
        )
    }

    fn get(
        &self,
        meter: &Meter,
        def: &'static catalog::MetricDef,
        extra: &[(&str, &str)],
    ) -> Option<&DebugValue> {
        let name = meter.metric_names().name(def);
        let mut want: Labels = meter
            .metric_names()
            .labels(extra)
            .iter()
            .map(|l| (l.key().to_owned(), l.value().to_owned()))
            .collect();
        want.sort();
        self.0
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|(_, _, v)| v)
    }

    fn prompts(&self, meter: &Meter, outcome: &str) -> u64 {
        let labels = [
            ("golden.set", "facts"),
            ("model.version", "v1"),
            ("outcome", outcome),
        ];
        match self.get(meter, catalog::quality::GOLDEN_PROMPTS, &labels) {
            Some(DebugValue::Counter(c)) => *c,
            other => panic!("prompts{{outcome={outcome}}}: {other:?}"),
        }
    }
}

#[test]
fn a_pass_scores_times_and_exports_exactly() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let (meter, mock) = mock_meter();
        let probe = Probe::new(&meter, set(), config(), answers(mock.clone())).expect("probe");
        let seen = Seen::take(&snap);
        for o in Outcome::ALL {
            assert_eq!(seen.prompts(&meter, o.as_str()), 0, "registered at zero");
        }
        assert!(probe.latest().is_none());
        mock.increment(Duration::from_secs(10));
        let pass = probe.run_pass();
        assert_eq!(pass.pass, 1);
        assert_eq!(pass.started_seconds, 10.0);
        assert_eq!(pass.duration_seconds, 6.0);
        assert_eq!(
            (
                pass.prompts,
                pass.ok,
                pass.errors,
                pass.panics,
                pass.timeouts,
                pass.skipped
            ),
            (3, 3, 0, 0, 0, 0)
        );
        assert_eq!(pass.score_of(Scoring::Contains), Some(1.0));
        assert_eq!(pass.score_of(Scoring::Exact), Some(0.0));
        // "quick dog" vs "quick brown fox" (articles dropped): common 1, P 1/2, R 1/3: F1 0.4.
        let f1 = pass.score_of(Scoring::F1).expect("f1");
        assert!((f1 - 0.4).abs() < 1e-12, "{f1}");
        assert!((pass.score.expect("score") - 1.4 / 3.0).abs() < 1e-12);
        assert_eq!(pass.items[0].e2e_seconds, Some(2.0));
        assert_eq!(pass.items[0].ttft_seconds, Some(0.25));
        assert_eq!(pass.items[0].tpot_seconds, None);

        let seen = Seen::take(&snap);
        assert_eq!(seen.prompts(&meter, "ok"), 3);
        assert_eq!(seen.prompts(&meter, "error"), 0);
        let labels = |scorer| {
            [
                ("golden.set", "facts"),
                ("model.version", "v1"),
                ("scorer", scorer),
            ]
        };
        let g = seen.get(&meter, catalog::quality::GOLDEN_SCORE, &labels("contains"));
        assert_eq!(g, Some(&DebugValue::Gauge(1.0.into())));
        let g = seen.get(&meter, catalog::quality::GOLDEN_SCORE, &labels("exact"));
        assert_eq!(g, Some(&DebugValue::Gauge(0.0.into())));
        let base = [("golden.set", "facts"), ("model.version", "v1")];
        match seen.get(&meter, catalog::quality::GOLDEN_E2E, &base) {
            Some(DebugValue::Histogram(h)) => {
                assert_eq!(h.iter().map(|x| x.0).collect::<Vec<_>>(), [2.0; 3])
            }
            other => panic!("e2e: {other:?}"),
        }
        match seen.get(&meter, catalog::quality::GOLDEN_TTFT, &base) {
            Some(DebugValue::Histogram(h)) => assert_eq!(h.len(), 3),
            other => panic!("ttft: {other:?}"),
        }
        assert_eq!(
            seen.get(&meter, catalog::quality::GOLDEN_PASSES, &base),
            Some(&DebugValue::Counter(1))
        );
        assert_eq!(probe.latest().as_deref(), Some(&*pass));
        // The report is serializable, without prompt or answer text.
        let json = serde_json::to_string(&*pass).expect("json");
        assert!(
            json.contains("\"outcome\":\"ok\"") && !json.contains("Paris"),
            "{json}"
        );
    });
}

#[test]
fn the_schedule_runs_a_pass_each_interval_on_the_meters_clock() {
    let (meter, mock) = mock_meter();
    let probe = Probe::new(&meter, set(), config(), answers(mock.clone())).expect("probe");
    assert!(probe.tick(meter.now()).is_none());
    mock.increment(Duration::from_secs(60));
    let first = probe.tick(meter.now()).expect("due");
    assert_eq!(first.ok, 3);
    // The pass took 6 s of mock time; the next is due 60 s after the tick that ran it.
    assert!(probe.tick(meter.now()).is_none());
    mock.increment(Duration::from_secs(53));
    assert!(probe.tick(meter.now()).is_none());
    mock.increment(Duration::from_secs(1));
    assert_eq!(probe.tick(meter.now()).map(|p| p.pass), Some(2));
}

#[test]
fn a_hung_probe_times_out_is_counted_and_the_scheduler_moves_on() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let (meter, _mock) = mock_meter();
        let (release, gate) = mpsc::channel::<()>();
        let gate = Mutex::new(gate);
        let cfg = ProbeConfig {
            timeout: Duration::from_millis(500),
            ..config()
        };
        let probe = Probe::new(&meter, set(), cfg, move |p| {
            if p.id == "fr" {
                // Hangs until the test releases it (or drops the sender).
                let _ = gate.lock().map(|g| g.recv());
            }
            Ok::<_, String>(ProbeAnswer::new("4"))
        })
        .expect("probe");
        let pass = probe.run_pass();
        assert_eq!(pass.items[0].outcome, Outcome::Timeout);
        // One probe at a time: while the hung call runs, the rest are skipped as hung.
        assert_eq!(pass.items[1].outcome, Outcome::Hung);
        assert_eq!(pass.items[2].outcome, Outcome::Hung);
        assert_eq!((pass.timeouts, pass.skipped, pass.ok), (1, 2, 0));
        assert_eq!(pass.score, None);
        let seen = Seen::take(&snap);
        assert_eq!(seen.prompts(&meter, "timeout"), 1);
        assert_eq!(seen.prompts(&meter, "hung"), 2);
        // The hung call returns: the next pass gives it one more timeout, drops its late
        // answer and runs every prompt.
        drop(release);
        let pass = probe.run_pass();
        assert_eq!(pass.items[0].outcome, Outcome::Ok);
        assert_eq!(pass.items[1].outcome, Outcome::Ok);
        assert_eq!(pass.score_of(Scoring::Exact), Some(1.0));
    });
}

#[test]
fn a_panicking_or_failing_probe_is_counted_and_the_scheduler_survives() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let (meter, mock) = mock_meter();
        let probe = Probe::new(&meter, set(), config(), move |p| match p.id.as_str() {
            "fr" => panic!("engine exploded"),
            "sum" => Err("queue full".to_owned()),
            _ => {
                mock.increment(Duration::from_secs(1));
                Ok(ProbeAnswer::new("the quick brown fox").e2e(Duration::from_millis(700)))
            }
        })
        .expect("probe");
        for n in 1..=2u64 {
            let pass = probe.run_pass();
            assert_eq!(pass.items[0].outcome, Outcome::Panic);
            assert_eq!(pass.items[0].error.as_deref(), Some("engine exploded"));
            assert_eq!(pass.items[1].outcome, Outcome::Error);
            assert_eq!(pass.items[1].error.as_deref(), Some("queue full"));
            assert_eq!(pass.items[2].outcome, Outcome::Ok);
            // The callback's own E2E wins over the probe's timing.
            assert_eq!(pass.items[2].e2e_seconds, Some(0.7));
            assert_eq!(pass.score, Some(1.0));
            // Counters read as the increase since the last snapshot: one each per pass.
            let seen = Seen::take(&snap);
            assert_eq!(seen.prompts(&meter, "panic"), 1, "pass {n}");
            assert_eq!(seen.prompts(&meter, "error"), 1);
            assert_eq!(seen.prompts(&meter, "ok"), 1);
        }
    });
}

#[test]
fn an_overloaded_server_skips_probes_and_nothing_queues() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let (meter, mock) = mock_meter();
        let calls = Arc::new(Mutex::new(0u32));
        let c = calls.clone();
        let cfg = ProbeConfig {
            max_in_flight: Some(1),
            ..config()
        };
        let probe = Probe::new(&meter, set(), cfg, move |_| {
            *c.lock().expect("calls") += 1;
            Ok::<_, String>(ProbeAnswer::new("Paris"))
        })
        .expect("probe");
        // Two user requests in flight: over the limit of 1.
        let mut a = meter.request().start();
        let mut b = meter.request().start();
        for _ in 0..3 {
            let pass = probe.run_pass();
            assert!(pass.items.iter().all(|i| i.outcome == Outcome::Busy));
        }
        assert_eq!(*calls.lock().expect("calls"), 0);
        assert_eq!(Seen::take(&snap).prompts(&meter, "busy"), 9);
        assert!(
            probe.latest().is_none(),
            "a pass skipped whole does not replace the latest"
        );
        // Busy skips refund the budget (30 per hour, 9 skipped): a pass still runs.
        a.finish(Finish::Stop);
        let pass = probe.run_pass();
        assert_eq!(pass.ok, 3);
        assert_eq!(*calls.lock().expect("calls"), 3);
        b.finish(Finish::Stop);
        drop(mock);
    });

    // The user's predicate, and one that panics (taken as busy).
    let (meter, _mock) = mock_meter();
    let busy = Arc::new(Mutex::new(true));
    let flag = busy.clone();
    let probe = Probe::new(&meter, set(), config(), |_| {
        Ok::<_, String>(ProbeAnswer::new("x"))
    })
    .expect("probe")
    .is_busy(move || *flag.lock().expect("flag"));
    assert_eq!(probe.run_pass().count(Outcome::Busy), 3);
    *busy.lock().expect("flag") = false;
    assert_eq!(probe.run_pass().ok, 3);
    let probe = Probe::new(&meter, set(), config(), |_| {
        Ok::<_, String>(ProbeAnswer::new("x"))
    })
    .expect("probe")
    .is_busy(|| panic!("predicate bug"));
    assert_eq!(probe.run_pass().count(Outcome::Busy), 3);
}

#[test]
fn the_budget_skips_whole_passes_until_it_refills() {
    let (meter, mock) = mock_meter();
    // 6 prompts per hour, 3 per pass: two passes, then one per 30 minutes.
    let cfg = ProbeConfig {
        prompts_per_hour: 6,
        ..config()
    };
    let probe = Probe::new(&meter, set(), cfg, |_| {
        Ok::<_, String>(ProbeAnswer::new("x"))
    })
    .expect("probe");
    assert_eq!(probe.run_pass().ok, 3);
    assert_eq!(probe.run_pass().ok, 3);
    let skipped = probe.run_pass();
    assert_eq!(skipped.count(Outcome::Budget), 3);
    assert_eq!(probe.latest().map(|p| p.pass), Some(2));
    mock.increment(Duration::from_secs(29 * 60));
    assert_eq!(probe.run_pass().count(Outcome::Budget), 3);
    mock.increment(Duration::from_secs(60));
    assert_eq!(probe.run_pass().ok, 3);
}

#[test]
fn bad_configurations_are_errors() {
    let (meter, _mock) = mock_meter();
    let make = |cfg: ProbeConfig| {
        Probe::new(&meter, set(), cfg, |_| {
            Ok::<_, String>(ProbeAnswer::new("x"))
        })
        .map(|_| ())
    };
    let err = |cfg| make(cfg).expect_err("invalid").to_string();
    assert_eq!(
        err(ProbeConfig {
            prompts_per_hour: 2,
            ..config()
        }),
        "invalid probe configuration: prompts_per_hour 2 is smaller than the golden set (3 prompts): no pass could run"
    );
    assert_eq!(
        err(ProbeConfig {
            jitter: 1.0,
            ..config()
        }),
        "invalid probe configuration: jitter 1 is outside [0, 1)"
    );
    assert_eq!(
        err(ProbeConfig {
            interval: Duration::ZERO,
            ..config()
        }),
        "invalid probe configuration: interval is zero"
    );
    assert_eq!(
        err(ProbeConfig {
            timeout: Duration::ZERO,
            ..config()
        }),
        "invalid probe configuration: timeout is zero"
    );
    assert!(make(config()).is_ok());
}

#[test]
fn the_baseline_is_captured_saved_and_exported() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let (meter, mock) = mock_meter();
        let probe = Probe::new(&meter, set(), config(), answers(mock)).expect("probe");
        let pass = probe.run_pass();
        let baseline = GoldenBaseline::from_pass(&pass).expect("answered");
        assert_eq!(baseline.scores.get(&Scoring::Contains), Some(&1.0));
        let path = std::env::temp_dir().join(format!("tm-probe-bl-{}.json", std::process::id()));
        baseline.save(&path).expect("save");
        let loaded = GoldenBaseline::load(&path).expect("load");
        std::fs::remove_file(&path).ok();
        assert_eq!(loaded, baseline);
        probe.set_baseline(loaded).expect("same set");
        let seen = Seen::take(&snap);
        let g = seen.get(
            &meter,
            catalog::quality::GOLDEN_BASELINE,
            &[
                ("golden.set", "facts"),
                ("model.version", "v1"),
                ("scorer", "exact"),
            ],
        );
        assert_eq!(g, Some(&DebugValue::Gauge(0.0.into())));
        let mut other = baseline.clone();
        other.golden_set = "other".into();
        assert_eq!(
            probe.set_baseline(other),
            Err(ProbeError::BaselineSet {
                baseline: "other".into(),
                probe: "facts".into()
            })
        );
    });
}

#[test]
fn the_thread_runs_passes_and_stops() {
    // The real clock: the thread sleeps until each pass is due. The test waits for events,
    // not for time: the callback reports each call.
    let meter = Meter::builder().model("m").build();
    let (tx, rx) = mpsc::channel::<String>();
    let tx = Mutex::new(tx);
    let cfg = ProbeConfig {
        interval: Duration::from_millis(5),
        prompts_per_hour: 100_000,
        ..config()
    };
    let probe = Arc::new(
        Probe::new(&meter, set(), cfg, move |p| {
            let _ = tx.lock().map(|t| t.send(p.id.clone()));
            Ok::<_, String>(ProbeAnswer::new("Paris"))
        })
        .expect("probe"),
    );
    let runner = probe.start().expect("thread");
    // One runner per probe: a second start is an error, not a second thread.
    let again = probe.start().map(drop).map_err(|e| e.kind());
    assert_eq!(again, Err(std::io::ErrorKind::AlreadyExists));
    let ids: Vec<String> = (0..6)
        .map(|_| rx.recv_timeout(Duration::from_secs(30)).expect("a call"))
        .collect();
    assert_eq!(ids, ["fr", "sum", "fox", "fr", "sum", "fox"]);
    runner.stop();
    // Stopped: it may start again.
    probe
        .start()
        .expect("a runner after the first stopped")
        .stop();
    let latest = probe.latest().expect("a pass ran");
    assert!(latest.pass >= 2);
    let seen: HashMap<_, _> = latest
        .items
        .iter()
        .map(|i| (i.id.as_str(), i.outcome))
        .collect();
    assert_eq!(seen.get("fr"), Some(&Outcome::Ok));
}

#[test]
fn the_model_version_defaults_to_the_meters() {
    let (clock, mock) = Clock::mock();
    let meter = Meter::builder()
        .model("m")
        .model_version("q4_1")
        .clock(clock)
        .build();
    let unnamed = ProbeConfig {
        model_version: String::new(),
        ..config()
    };
    let probe = Probe::new(&meter, set(), unnamed, answers(mock)).expect("valid probe");
    assert_eq!(probe.run_pass().model_version, "q4_1");
    let named = Probe::new(&meter, set(), config(), |_: &_| {
        Ok::<_, String>(ProbeAnswer::new(""))
    })
    .expect("valid probe");
    assert_eq!(named.run_pass().model_version, "v1");
}
