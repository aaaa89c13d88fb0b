//! Per-request energy and cost (issue 16): each sampler interval's energy and GPU time split
//! across the requests in flight by the output tokens each flushed in it; the request's summary
//! holds what was measured by its end, the next sample settles the rest. Invariant: over any
//! run, Σ request energy + idle energy = the GPUs' measured energy. Mock clock, fake GPUs.
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Exported;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokenmeter_core::clock::Clock;
use tokenmeter_core::{Finish, Meter};
use tokenmeter_gpu::{FakeGpuSource, Sampler};

/// One settlement line of the request log: request id -> (energy J, late energy J, cost).
type Settled = BTreeMap<String, (Option<f64>, Option<f64>, Option<f64>)>;

/// Runs `f` with a subscriber that keeps the request log's settlement events.
fn settlements<T>(f: impl FnOnce() -> T) -> (T, Settled) {
    use tracing::field::{Field, Visit};
    use tracing::{Event, Metadata, Subscriber, span};

    #[derive(Default)]
    struct Line {
        message: String,
        id: String,
        energy: Option<f64>,
        late: Option<f64>,
        cost: Option<f64>,
    }
    impl Visit for Line {
        fn record_f64(&mut self, field: &Field, value: f64) {
            match field.name() {
                "energy_j" => self.energy = Some(value),
                "late_energy_j" => self.late = Some(value),
                "cost" => self.cost = Some(value),
                _ => {}
            }
        }
        fn record_str(&mut self, field: &Field, value: &str) {
            if field.name() == "request_id" {
                self.id = value.to_owned();
            }
        }
        fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
            if field.name() == "message" {
                self.message = format!("{value:?}");
            }
        }
    }
    struct Capture(Arc<Mutex<Settled>>);
    impl Subscriber for Capture {
        fn enabled(&self, _: &Metadata<'_>) -> bool {
            true
        }
        fn new_span(&self, _: &span::Attributes<'_>) -> span::Id {
            span::Id::from_u64(1)
        }
        fn record(&self, _: &span::Id, _: &span::Record<'_>) {}
        fn record_follows_from(&self, _: &span::Id, _: &span::Id) {}
        fn event(&self, e: &Event<'_>) {
            let mut line = Line::default();
            e.record(&mut line);
            if line.message == "request energy settled" {
                let old = self
                    .0
                    .lock()
                    .unwrap()
                    .insert(line.id.clone(), (line.energy, line.late, line.cost));
                assert!(old.is_none(), "{} settled twice", line.id);
            }
        }
        fn enter(&self, _: &span::Id) {}
        fn exit(&self, _: &span::Id) {}
    }
    let lines = Arc::new(Mutex::new(Settled::new()));
    let out = tracing::subscriber::with_default(Capture(lines.clone()), || {
        tracing::callsite::rebuild_interest_cache();
        f()
    });
    let lines = lines.lock().unwrap().clone();
    (out, lines)
}

fn uj(joules: f64) -> u64 {
    (joules * 1e6).round() as u64
}

/// The values a histogram received, per label value of `key` (or "" without it).
fn histogram(ex: &Exported, name: &str, key: &str) -> BTreeMap<String, Vec<f64>> {
    let mut out: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for (n, labels, v) in &ex.series {
        if n != name {
            continue;
        }
        let DebugValue::Histogram(values) = v else {
            panic!("{name} is not a histogram")
        };
        let label = labels
            .iter()
            .find(|(k, _)| k == key)
            .map_or(String::new(), |(_, v)| v.clone());
        out.entry(label)
            .or_default()
            .extend(values.iter().map(|x| x.0));
    }
    out
}

#[test]
fn each_request_gets_its_share_by_tokens_and_the_interval_it_ended_in_at_the_next_sample() {
    let rec = DebuggingRecorder::new();
    let mut ex = Exported::new(&rec);
    let (clock, mock) = Clock::mock();
    let meter = Meter::builder()
        .model("m")
        .clock(clock)
        .request_labels(["tenant"], 10)
        .flush_interval(Duration::from_millis(1))
        .build();
    let fake = FakeGpuSource::new().with_gpu("A", FakeGpuSource::typical_reading());
    let control = fake.clone();
    let mut s = Sampler::builder(&meter)
        .source(fake)
        .host(false)
        .price_per_gpu_hour(3.6) // 0.001 per GPU-second
        .build();
    let ms = |n: u64| Duration::from_millis(n);
    let ((sa, sb, snap), settled) = settlements(|| {
        metrics::with_local_recorder(&rec, || {
            let mut a = meter
                .request()
                .label("tenant", "acme")
                .request_id("a")
                .start();
            let mut b = meter
                .request()
                .label("tenant", "beta")
                .request_id("b")
                .start();
            s.sample_once(); // t=0, 1000 J: the baseline
            mock.increment(ms(100));
            a.token();
            b.token();
            mock.increment(ms(100));
            a.tokens(29); // flushed: a 30, b 10
            b.tokens(9);
            control.set_energy_counter(0, 1400.0);
            mock.increment(ms(800));
            let snap = s.sample_once(); // t=1: 400 J, 1 GPU-s over 30 : 10 tokens
            assert_eq!(snap.requests.tracked, 2);
            mock.increment(ms(500));
            b.tokens(10);
            let sb = b.finish(Finish::Stop); // t=1.5: what was measured by now
            mock.increment(ms(100));
            a.tokens(10);
            control.set_energy_counter(0, 1800.0);
            mock.increment(ms(400));
            s.sample_once(); // t=2: 400 J over a 10 : b 10; b ended before: settled
            mock.increment(ms(500));
            let sa = a.finish(Finish::Stop); // t=2.5, no token since t=1.6
            control.set_energy_counter(0, 1900.5);
            mock.increment(ms(500));
            let snap = s.sample_once(); // t=3: 100.5 J, no token flushed: idle; a settled
            (sa, sb, snap)
        })
    });
    ex.read();
    // By their ends: a had its 300 J of the first interval and 200 J of the second; b only
    // its 100 J of the first (it ended inside the second).
    assert_eq!(
        (sa.energy_joules, sb.energy_joules),
        (Some(500.0), Some(100.0))
    );
    let (ca, cb) = (sa.cost.unwrap(), sb.cost.unwrap());
    assert!(
        (ca - 0.00125).abs() < 1e-15 && (cb - 0.00025).abs() < 1e-15,
        "{ca} {cb}"
    );
    // The next sample settled b's last interval: 200 J late, 300 J in all.
    let (e, late, cost) = settled["b"];
    assert_eq!((e, late), (Some(300.0), Some(200.0)));
    assert!((cost.unwrap() - 0.00075).abs() < 1e-15);
    assert_eq!(settled["a"].0, Some(500.0));
    assert_eq!(settled["a"].1, Some(0.0));
    // Per-request histograms (the settled totals) and per-tenant counters.
    let energy = histogram(&ex, "tokenmeter_request_energy_joules", "tenant");
    assert_eq!(energy["acme"], vec![500.0]);
    assert_eq!(energy["beta"], vec![300.0]);
    let cost = histogram(&ex, "tokenmeter_request_cost", "tenant");
    assert!((cost["beta"][0] - 0.00075).abs() < 1e-15);
    let tenant = |t: &str| ex.counter("tokenmeter_requests_energy_joules_total", &[("tenant", t)]);
    assert_eq!((tenant("acme"), tenant("beta")), (Some(500), Some(300)));
    assert_eq!(
        ex.counter("tokenmeter_energy_idle_joules_total", &[]),
        Some(100)
    );
    // The invariant, to the micro-joule: 500 + 300 + 100.5 = 900.5 J measured.
    let r = &snap.requests;
    assert_eq!(r.measured_uj, uj(900.5));
    assert_eq!((r.requests_uj, r.idle_uj), (uj(800.0), uj(100.5)));
    assert_eq!(r.gpu_ns, 3_000_000_000);
    assert_eq!(
        (r.requests_gpu_ns, r.idle_gpu_ns),
        (2_000_000_000, 1_000_000_000)
    );
    assert_eq!(r.tracked, 0);
    assert_eq!(snap.gpus[0].energy_j, Some(900.5));
}

#[test]
fn without_a_sampler_a_request_has_no_energy_never_zero() {
    let meter = Meter::default();
    let mut req = meter.request().start();
    req.token();
    let s = req.finish(Finish::Stop);
    assert_eq!((s.energy_joules, s.cost), (None, None));
    // A sampler without a price: energy, but no cost.
    let (clock, mock) = Clock::mock();
    let meter = Meter::builder()
        .clock(clock)
        .flush_interval(Duration::from_millis(1))
        .build();
    let fake = FakeGpuSource::new().with_gpu("A", FakeGpuSource::typical_reading());
    let control = fake.clone();
    let mut sampler = Sampler::builder(&meter).source(fake).host(false).build();
    let mut req = meter.request().start();
    sampler.sample_once();
    mock.increment(Duration::from_secs(1));
    req.token();
    mock.increment(Duration::from_millis(1));
    req.token(); // a flush interval after the first: flushed, the sample splits by them
    control.set_energy_counter(0, 1300.0);
    sampler.sample_once();
    let s = req.finish(Finish::Stop);
    assert_eq!((s.energy_joules, s.cost), (Some(300.0), None));
    // Charged nothing by its end (the share of its only interval comes at the next sample):
    // unknown, never a free 0.
    let mut req = meter.request().start();
    mock.increment(Duration::from_secs(1));
    req.token();
    let s = req.finish(Finish::Stop);
    assert_eq!((s.energy_joules, s.cost), (None, None));
    // Once the sampler is gone, new requests are not tracked.
    drop(sampler);
    let s = meter.request().start().finish(Finish::Stop);
    assert_eq!(s.energy_joules, None);
    // A sampler without GPUs (turned off, or none found) tracks no request, even with a price.
    for builder in [
        Sampler::builder(&meter).without_gpu(),
        Sampler::builder(&meter).source(FakeGpuSource::new()),
    ] {
        let mut sampler = builder.host(false).price_per_gpu_hour(2.0).build();
        sampler.sample_once();
        let mut req = meter.request().start();
        req.token();
        sampler.sample_once();
        let s = req.finish(Finish::Stop);
        assert_eq!((s.energy_joules, s.cost), (None, None));
    }
}

/// Many requests on two meters and two GPUs over many intervals: overlapping, some idle
/// intervals, a failed energy read, requests ending between samples. Every joule measured goes
/// to exactly one request or to idle, and the same holds for GPU time (hence cost).
#[test]
fn request_energy_plus_idle_energy_equals_the_measured_energy() {
    let rec = DebuggingRecorder::new();
    let mut ex = Exported::new(&rec);
    let (clock, mock) = Clock::mock();
    let chat = Meter::builder()
        .model("chat")
        .clock(clock.clone())
        .request_labels(["tenant"], 2) // a third tenant overflows to "other"
        .flush_interval(Duration::from_millis(300))
        .build();
    let embed = Meter::builder()
        .model("embed")
        .clock(clock)
        .flush_interval(Duration::from_millis(300))
        .build();
    let fake = FakeGpuSource::new()
        .with_gpu("A", FakeGpuSource::typical_reading())
        .with_gpu("B", FakeGpuSource::typical_reading());
    let control = fake.clone();
    // B's counter grows 72.5 J a second at 72.5 W, so the power bridging its failed read
    // agrees with the counter when it comes back.
    control.set_power(1, 72.5);
    let mut s = Sampler::builder(&chat)
        .meter(&embed)
        .source(fake)
        .host(false)
        .price_per_gpu_hour(2.5)
        .build();
    let tenants = ["t0", "t1", "t2"];
    let mut summaries = BTreeMap::new();
    let mut counters = [1000.0_f64, 1000.0];
    let ((), settled) = settlements(|| {
        metrics::with_local_recorder(&rec, || {
            let mut live: Vec<(String, tokenmeter_core::RequestGuard)> = Vec::new();
            s.sample_once();
            for tick in 0..120u64 {
                // 100 ms steps, a sample every 10 steps.
                let step = tick % 10;
                let interval = tick / 10;
                // Intervals 3 and 7 end every request; 4 and 8 are then idle.
                let idle = matches!(interval, 3 | 4 | 7 | 8);
                if !idle && step % 3 == 0 && live.len() < 6 {
                    let id = format!("r{tick}");
                    let g = if tick % 2 == 0 {
                        chat.request()
                            .label("tenant", tenants[(tick as usize / 3) % 3])
                            .request_id(id.clone())
                            .start()
                    } else {
                        embed.request().request_id(id.clone()).start()
                    };
                    live.push((id, g));
                }
                for (i, (_, g)) in live.iter_mut().enumerate() {
                    g.tokens(1 + ((tick as u32 + i as u32) % 4));
                }
                // Requests end at various points (some right before a sample).
                let ending = |n: u64| !live.is_empty() && (tick % 7 == n || idle);
                if ending(2) || ending(5) {
                    let (id, mut g) = live.remove(0);
                    let summary = if tick % 5 == 0 {
                        g.fail(tokenmeter_core::ErrorKind::Timeout)
                    } else {
                        g.finish(Finish::Stop)
                    };
                    summaries.insert(id, summary);
                }
                // Energy flows on both GPUs, unevenly; binary fractions keep float sums exact.
                counters[0] += 12.5 + (tick % 3) as f64;
                counters[1] += 7.25;
                control.set_energy_counter(0, counters[0]);
                if interval == 5 && step == 9 {
                    // GPU B's counter read fails for this sample; the next covers the gap.
                    control.fail_field(1, |r, e| r.energy_counter_j = Err(e));
                } else {
                    control.update(1, |r| r.energy_counter_j = Ok(counters[1]));
                }
                mock.increment(Duration::from_millis(100));
                if step == 9 {
                    s.sample_once();
                }
            }
            for (id, mut g) in live.drain(..) {
                summaries.insert(id, g.finish(Finish::Length));
            }
            // Two more samples: the last interval is measured, and every request settled.
            for _ in 0..2 {
                counters[0] += 3.0;
                counters[1] += 72.5;
                control.set_energy_counter(0, counters[0]);
                control.update(1, |r| r.energy_counter_j = Ok(counters[1]));
                mock.increment(Duration::from_secs(1));
                s.sample_once();
            }
        })
    });
    ex.read();
    let snap = s.latest().unwrap();
    let r = &snap.requests;
    assert_eq!(r.tracked, 0, "every request settled");
    let measured = counters[0] + counters[1] - 2000.0;
    assert_eq!(r.measured_uj, uj(measured));
    assert_eq!(
        snap.gpus.iter().map(|g| g.energy_j.unwrap()).sum::<f64>(),
        measured
    );
    assert!(r.idle_uj > 0, "idle intervals were measured");
    // Each request's total = its summary (by its end) + its late part (settled later).
    assert_eq!(settled.len(), summaries.len());
    let mut requests_uj = 0;
    for (id, summary) in &summaries {
        let (total, late, _) = settled[id];
        let (total, late) = (uj(total.unwrap()), uj(late.unwrap()));
        // None: it ended before a sample measured an interval of it; all of it is late.
        assert_eq!(summary.energy_joules.map_or(0, uj) + late, total, "{id}");
        requests_uj += total;
    }
    assert!(summaries.len() >= 20, "{}", summaries.len());
    let late_parts = settled.values().filter(|(_, late, _)| late.unwrap() > 0.0);
    assert!(late_parts.count() > 10, "late parts were settled");
    assert!(
        summaries
            .values()
            .filter(|s| s.energy_joules > Some(0.0))
            .count()
            > 5
    );
    // The invariant: Σ request energy + idle energy = measured energy, to the micro-joule.
    assert_eq!(requests_uj, r.requests_uj);
    assert_eq!(requests_uj + r.idle_uj, r.measured_uj);
    // The same for GPU time, the basis of cost: parts add up exactly, and so do the costs.
    assert_eq!(r.requests_gpu_ns + r.idle_gpu_ns, r.gpu_ns);
    assert_eq!(r.gpu_ns, 2 * 14_000_000_000);
    let request_cost: f64 = settled.values().map(|(_, _, c)| c.unwrap()).sum();
    let expected = 2.5 * r.requests_gpu_ns as f64 / 3.6e12;
    assert!(
        (request_cost - expected).abs() < 1e-12,
        "{request_cost} {expected}"
    );
    // The histograms hold the same totals; the per-tenant counters are their whole joules.
    let hist = histogram(&ex, "tokenmeter_request_energy_joules", "tenant");
    let hist_uj: u64 = hist.values().flatten().map(|j| uj(*j)).sum();
    assert_eq!(hist_uj, requests_uj);
    assert_eq!(hist.values().map(Vec::len).sum::<usize>(), summaries.len());
    assert!(hist.contains_key("other"), "{:?}", hist.keys());
    for (tenant, values) in hist.iter().filter(|(t, _)| !t.is_empty()) {
        let total: u64 = values.iter().map(|j| uj(*j)).sum();
        assert_eq!(
            ex.counter(
                "tokenmeter_requests_energy_joules_total",
                &[("tenant", tenant)]
            ),
            Some(total / 1_000_000),
            "{tenant}"
        );
    }
    assert_eq!(
        ex.counter("tokenmeter_energy_idle_joules_total", &[]),
        Some(r.idle_uj / 1_000_000)
    );
}

/// The per-request series in the Prometheus exposition: catalog buckets, the tenant label,
/// and a text `promtool check metrics` accepts (run when `TOKENMETER_PROMTOOL` names it, as
/// `scripts/install-test-deps` sets it).
#[test]
fn the_exposition_carries_the_per_request_series_and_passes_promtool() {
    let mut prom = tokenmeter_export::Prometheus::new()
        .without_listener()
        .build()
        .unwrap();
    let rec = prom.take_recorder().unwrap();
    let (clock, mock) = Clock::mock();
    let meter = Meter::builder()
        .model("m")
        .clock(clock)
        .request_labels(["tenant"], 10)
        .build();
    let fake = FakeGpuSource::new().with_gpu("A", FakeGpuSource::typical_reading());
    let control = fake.clone();
    let mut s = Sampler::builder(&meter)
        .source(fake)
        .host(false)
        .price_per_gpu_hour(2.5)
        .build();
    settlements(|| {
        metrics::with_local_recorder(&rec, || {
            s.sample_once();
            let mut req = meter.request().label("tenant", "acme").start();
            req.tokens(4);
            req.finish(Finish::Stop);
            control.set_energy_counter(0, 1012.5);
            mock.increment(Duration::from_secs(1));
            s.sample_once(); // 12.5 J to the request
            control.set_energy_counter(0, 1020.0);
            mock.increment(Duration::from_secs(1));
            s.sample_once(); // 7.5 J idle
        })
    });
    let text = prom.render();
    let line = |prefix: &str| {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .to_owned()
    };
    assert!(line("tokenmeter_request_energy_joules_bucket{").contains("le=\"0.1\""));
    assert!(line("tokenmeter_request_energy_joules_sum{").ends_with(" 12.5"));
    assert!(line("tokenmeter_request_cost_bucket{").contains("tenant=\"acme\""));
    assert!(line("tokenmeter_requests_energy_joules_total{").ends_with(" 12"));
    assert!(line("tokenmeter_energy_idle_joules_total").ends_with(" 7"));
    let Ok(promtool) = std::env::var("TOKENMETER_PROMTOOL") else {
        return;
    };
    let mut child = std::process::Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // promtool also lints names we inherit from the conventions; parse errors are what matter.
    assert!(
        !report.contains("error while linting") && !report.contains("text format parsing error"),
        "{report}"
    );
    for name in [
        "tokenmeter_request_energy_joules",
        "tokenmeter_request_cost",
        "tokenmeter_requests_energy_joules_total",
        "tokenmeter_energy_idle_joules_total",
    ] {
        assert!(!report.contains(name), "{report}");
    }
}

/// A sampler faster than the guards' flushes (100 ms against the default 1 s): intervals with
/// a request in flight and no token flushed yet carry their energy to the next flush instead
/// of reading as idle, so a GPU busy with one request charges that request all of it.
#[test]
fn intervals_shorter_than_the_flush_carry_their_energy_to_the_next_flush() {
    let (clock, mock) = Clock::mock();
    let meter = Meter::builder().clock(clock).build(); // flush interval 1 s
    let fake = FakeGpuSource::new().with_gpu("A", FakeGpuSource::typical_reading());
    let control = fake.clone();
    let mut sampler = Sampler::builder(&meter)
        .source(fake)
        .host(false)
        .price_per_gpu_hour(3.6)
        .build();
    let (_, settled) = settlements(|| {
        let mut req = meter.request().request_id("r").start();
        let mut energy = 1000.0;
        sampler.sample_once(); // t=0: the baseline
        for _ in 0..15 {
            // 100 ms at 300 W: 30 J per interval, one token per 10 ms
            for _ in 0..10 {
                mock.increment(Duration::from_millis(10));
                req.token();
            }
            energy += 30.0;
            control.set_energy_counter(0, energy);
            let snap = sampler.sample_once();
            assert_eq!(snap.requests.idle_uj, 0, "busy intervals are never idle");
        }
        // t=1.5 s: the first flush, at 1.01 s (1 s after the first token), published the
        // tokens so far, and the sample at 1.1 s split the 11 intervals up to then (330 J);
        // the last 4 (120 J) are carried
        let s = req.finish(Finish::Stop);
        assert_eq!(s.energy_joules, Some(330.0));
        mock.increment(Duration::from_millis(100));
        energy += 30.0;
        control.set_energy_counter(0, energy);
        let snap = sampler.sample_once(); // the end's flush takes the carried 120 J and 30 J
        let r = &snap.requests;
        assert_eq!((r.measured_uj, r.requests_uj), (uj(480.0), uj(480.0)));
        assert_eq!((r.idle_uj, r.carried_uj, r.tracked), (0, 0, 0));
    });
    let (total, late, cost) = settled["r"];
    assert_eq!((total, late), (Some(480.0), Some(150.0)));
    // 1.6 GPU-seconds at 0.001 per GPU-second
    assert!((cost.expect("priced") - 0.0016).abs() < 1e-12);
}
